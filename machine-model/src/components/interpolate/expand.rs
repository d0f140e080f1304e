//! Run-time expansion of a template with a lookup: [`expand_runtime`] (every missing name at once)
//! and [`expand`] (one error at a time, some names kept as written).

use super::template::{Mode, Op, Piece, Template, TemplateError};

/// Expands `template` (the [`super::Value::to_template`] / unquoted syntax) with `lookup`, for run-time use
/// (see [`expand`] for one error at a time and names kept as written):
/// the runtime fills in secrets from its own environment. Fails with the names that are missing or invalid.
pub fn expand_runtime(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let parsed = Template::parse(template, Mode::Unquoted, 1).map_err(|e| vec![e.message])?;
    let mut missing = Vec::new();
    let out = expand_pieces(&parsed.pieces, lookup, &mut missing);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

/// Why [`expand`] could not expand a template.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// The text is not a template in this module's grammar.
    #[error("{}", .0.message)]
    Syntax(TemplateError),
    /// A name kept as written (`${NAME}`) was given a default or a message.
    #[error("`${{{name}}}` is reserved: it is kept as written and takes no default or message")]
    Reserved {
        /// The reserved name.
        name: String,
        /// The 1-based column of its `$`.
        column: u32,
    },
    /// A `${NAME}` or `${NAME:?message}` had no (usable) value; the first one in the text.
    #[error("{name} is not set{}", .message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Missing {
        /// The variable's name.
        name: String,
        /// The `:?` message, expanded, when the reference had one.
        message: Option<String>,
    },
}

/// Expands `text`, written in this module's grammar (unquoted: `${NAME}`, `${NAME:-word}`,
/// `${NAME-word}`, `${NAME:?message}`, `${NAME?message}`, `$$`), against `lookup`. Each name in
/// `reserved` stays as written (`${NAME}`), for a later stage to fill in. Substituted values are not
/// scanned again, so a value containing `${` stays literal. Fails on the first problem.
pub fn expand(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    reserved: &[&str],
) -> Result<String, ExpandError> {
    let parsed = Template::parse(text, Mode::Unquoted, 1).map_err(ExpandError::Syntax)?;
    check_reserved(&parsed.pieces, reserved)?;
    let mut out = String::new();
    expand_strict(&parsed.pieces, lookup, reserved, &mut out)?;
    Ok(out)
}

fn check_reserved(pieces: &[Piece], reserved: &[&str]) -> Result<(), ExpandError> {
    for piece in pieces {
        let Piece::Ref(r) = piece else { continue };
        let inner = match &r.op {
            Op::Plain => continue,
            Op::Default { word: t, .. } | Op::Required { message: t, .. } => t,
        };
        if reserved.contains(&r.name.as_str()) {
            return Err(ExpandError::Reserved {
                name: r.name.clone(),
                column: r.column,
            });
        }
        check_reserved(&inner.pieces, reserved)?;
    }
    Ok(())
}

fn expand_strict(
    pieces: &[Piece],
    lookup: &dyn Fn(&str) -> Option<String>,
    reserved: &[&str],
    out: &mut String,
) -> Result<(), ExpandError> {
    for piece in pieces {
        let r = match piece {
            Piece::Text(t) => {
                out.push_str(t);
                continue;
            }
            Piece::Ref(r) => r,
        };
        if reserved.contains(&r.name.as_str()) {
            out.push_str("${");
            out.push_str(&r.name);
            out.push('}');
            continue;
        }
        let value = lookup(&r.name);
        let usable = |colon: bool| value.as_deref().is_some_and(|v| !(colon && v.is_empty()));
        match &r.op {
            Op::Default { colon, word } if !usable(*colon) => {
                expand_strict(&word.pieces, lookup, reserved, out)?;
            }
            Op::Required { colon, message } if !usable(*colon) => {
                let mut text = String::new();
                let message = match expand_strict(&message.pieces, lookup, reserved, &mut text) {
                    Ok(()) => text,
                    Err(_) => message.source(),
                };
                return Err(ExpandError::Missing {
                    name: r.name.clone(),
                    message: (!message.is_empty()).then_some(message),
                });
            }
            _ => match value {
                Some(v) => out.push_str(&v),
                None => {
                    return Err(ExpandError::Missing {
                        name: r.name.clone(),
                        message: None,
                    });
                }
            },
        }
    }
    Ok(())
}

fn expand_pieces(
    pieces: &[Piece],
    lookup: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<String>,
) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(r) => {
                let value = lookup(&r.name);
                let usable =
                    |colon: bool| value.as_deref().is_some_and(|v| !(colon && v.is_empty()));
                match &r.op {
                    Op::Default { colon, word } if !usable(*colon) => {
                        out.push_str(&expand_pieces(&word.pieces, lookup, missing));
                    }
                    Op::Required { colon, .. } if !usable(*colon) => missing.push(r.name.clone()),
                    _ => match value {
                        Some(v) => out.push_str(&v),
                        None => missing.push(r.name.clone()),
                    },
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::value::{Part, Value};
    use super::*;

    #[test]
    fn expand_fills_names_keeps_reserved_ones_and_stops_at_the_first_problem() {
        let env = |name: &str| match name {
            "A" => Some("1".to_owned()),
            "E" => Some(String::new()),
            "R" => Some("${B}".to_owned()),
            _ => None,
        };
        let ok = |text: &str| expand(text, &env, &["KEEP"]).unwrap();
        assert_eq!(ok("${A}/x $$ 5$ ${E:-d} ${E-d}"), "1/x $ 5$ d ");
        assert_eq!(ok("${N:-${M:-pin}} ${R}"), "pin ${B}");
        assert_eq!(ok("${KEEP}/browsers"), "${KEEP}/browsers");
        assert_eq!(ok("${A:?never shown}"), "1");
        let err = |text: &str| expand(text, &env, &["KEEP"]).unwrap_err();
        assert_eq!(
            err("${N}${M}"),
            ExpandError::Missing {
                name: "N".into(),
                message: None
            }
        );
        assert_eq!(
            err("${E:?set E to the ${A}st value}").to_string(),
            "E is not set: set E to the 1st value"
        );
        assert_eq!(
            err("x${A:-${KEEP:-d}}"),
            ExpandError::Reserved {
                name: "KEEP".into(),
                column: 7
            }
        );
        assert!(matches!(err("$A"), ExpandError::Syntax(e) if e.column == 1));
    }
    #[test]
    fn runtime_expansion_fills_secrets_and_reports_missing_ones() {
        let env = |name: &str| (name == "KEY").then(|| "s3cr3t".to_owned());
        assert_eq!(
            expand_runtime("Bearer ${KEY} costs 5$$", &env),
            Ok("Bearer s3cr3t costs 5$".to_owned())
        );
        assert_eq!(
            expand_runtime("${NOPE:-fallback}", &env),
            Ok("fallback".to_owned())
        );
        assert_eq!(
            expand_runtime("${NOPE}${NOPE2:?x}", &env),
            Err(vec!["NOPE".to_owned(), "NOPE2".to_owned()])
        );
        let v = Value {
            parts: vec![Part::Text("a$b ".into()), Part::Secret("KEY".into())],
        };
        assert_eq!(
            expand_runtime(&v.to_template(), &env),
            Ok("a$b s3cr3t".to_owned())
        );
        assert_eq!(v.masked(), "a$b <secret KEY>");
        assert!(!v.is_literal());
    }
}
