//! `${VAR}` / `${VAR:-default}` placeholders in recipe values, resolved from the runtime's environment.

/// The reserved variable naming the version directory being built; kept literal until a step runs.
pub(crate) const INSTALL_DIR_VAR: &str = "INSTALL_DIR";
/// The literal form of [`INSTALL_DIR_VAR`] left in resolved recipes.
pub(crate) const INSTALL_DIR_PLACEHOLDER: &str = "${INSTALL_DIR}";

/// Why a value could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    /// `${NAME}` without a default and `NAME` is not set.
    #[error("`${{{name}}}` is not set; set {name} or write `${{{name}:-default}}`")]
    Unset {
        /// The variable's name.
        name: String,
    },
    /// A `${` without its closing `}`.
    #[error("unterminated placeholder in {value:?}; close it with `}}`")]
    Unterminated {
        /// The whole value.
        value: String,
    },
    /// A placeholder whose name is empty or has characters other than letters, digits and `_`.
    #[error("invalid variable name {name:?} in a placeholder; use letters, digits and `_`")]
    BadName {
        /// The name as written.
        name: String,
    },
}

/// Resolves every placeholder in `input`. `lookup` returns a variable's value; `${INSTALL_DIR}` is left as
/// written. Substituted values are not scanned again, so a value containing `${` stays literal.
pub(crate) fn resolve(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, PlaceholderError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(body) = tail.strip_prefix("${") {
            let (consumed, value) = placeholder(body, input, lookup)?;
            out.push_str(&value);
            rest = &body[consumed..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses the placeholder whose body (after `${`) starts `body`; returns the bytes consumed (through the
/// closing `}`) and the value.
fn placeholder(
    body: &str,
    whole: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(usize, String), PlaceholderError> {
    let unterminated = || PlaceholderError::Unterminated {
        value: whole.to_owned(),
    };
    let name_end = body.find(['}', ':']).ok_or_else(unterminated)?;
    let name = &body[..name_end];
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        let shown = body[..body.find('}').unwrap_or(body.len())].to_owned();
        return Err(PlaceholderError::BadName { name: shown });
    }
    if name == INSTALL_DIR_VAR {
        if body[name_end..].starts_with('}') {
            return Ok((name_end + 1, INSTALL_DIR_PLACEHOLDER.to_owned()));
        }
        return Err(PlaceholderError::BadName {
            name: format!("{name} (reserved; takes no default)"),
        });
    }
    if body[name_end..].starts_with('}') {
        let value = lookup(name).ok_or_else(|| PlaceholderError::Unset {
            name: name.to_owned(),
        })?;
        return Ok((name_end + 1, value));
    }
    let default_start = name_end + ":-".len();
    if !body[name_end..].starts_with(":-") {
        return Err(PlaceholderError::BadName {
            name: body[..body.find('}').unwrap_or(body.len())].to_owned(),
        });
    }
    // The default runs to the `}` that closes this placeholder, skipping nested `${...}`.
    let mut depth = 0usize;
    let bytes = body.as_bytes();
    let mut i = default_start;
    let close = loop {
        match bytes.get(i) {
            None => return Err(unterminated()),
            Some(b'$') if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 2;
                continue;
            }
            Some(b'}') if depth == 0 => break i,
            Some(b'}') => depth -= 1,
            Some(_) => {}
        }
        i += 1;
    };
    let value = match lookup(name) {
        Some(v) if !v.is_empty() => v,
        _ => resolve(&body[default_start..close], lookup)?,
    };
    Ok((close + 1, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, vars: &[(&str, &str)], expected: Result<&str, PlaceholderError>) {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        assert_eq!(
            resolve(input, &lookup).as_deref().map_err(Clone::clone),
            expected,
            "{input}"
        );
    }

    #[test]
    fn plain_text_and_lone_dollars_are_literal() {
        check("abc", &[], Ok("abc"));
        check("a$b $ c$", &[], Ok("a$b $ c$"));
        check("$${HOME}", &[("HOME", "/root")], Ok("${HOME}"));
    }

    #[test]
    fn variables_and_defaults() {
        check("${A}/x", &[("A", "1")], Ok("1/x"));
        check("${A:-d}", &[], Ok("d"));
        check("${A:-d}", &[("A", "")], Ok("d"));
        check("${A}", &[("A", "")], Ok(""));
        check("${A:-}", &[], Ok(""));
        check("x${A:-http://h:1/p}y", &[], Ok("xhttp://h:1/py"));
    }

    #[test]
    fn nested_defaults_resolve_in_order() {
        let v = "${C:-${B:-pin}}";
        check(v, &[], Ok("pin"));
        check(v, &[("B", "main")], Ok("main"));
        check(v, &[("B", "main"), ("C", "abc")], Ok("abc"));
    }

    #[test]
    fn substituted_values_are_not_rescanned() {
        check("${A}", &[("A", "${B}")], Ok("${B}"));
    }

    #[test]
    fn install_dir_stays_literal() {
        check(
            "${INSTALL_DIR}/browsers",
            &[("INSTALL_DIR", "/evil")],
            Ok("${INSTALL_DIR}/browsers"),
        );
    }

    #[test]
    fn errors_name_the_problem() {
        check(
            "${NOPE}",
            &[],
            Err(PlaceholderError::Unset {
                name: "NOPE".into(),
            }),
        );
        check(
            "a${B",
            &[],
            Err(PlaceholderError::Unterminated {
                value: "a${B".into(),
            }),
        );
        check(
            "${B:-x",
            &[],
            Err(PlaceholderError::Unterminated {
                value: "${B:-x".into(),
            }),
        );
        check(
            "${}",
            &[],
            Err(PlaceholderError::BadName { name: "".into() }),
        );
        check(
            "${A B}",
            &[],
            Err(PlaceholderError::BadName { name: "A B".into() }),
        );
        check(
            "${A:x}",
            &[],
            Err(PlaceholderError::BadName { name: "A:x".into() }),
        );
        let msg = PlaceholderError::Unset { name: "X".into() }.to_string();
        assert_eq!(msg, "`${X}` is not set; set X or write `${X:-default}`");
    }
}
