//! `${VAR}` placeholders in recipe values, resolved from the runtime's environment with the one
//! `${VAR}` grammar of the workspace, [`machine_model::components::interpolate`]: `${VAR}`,
//! `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `$$` for a literal `$`.
//! Installer-only rule: `${INSTALL_DIR}` is reserved and stays literal until a step runs.

use machine_model::components::interpolate::{self, ExpandError};

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
    /// `${NAME:?message}` and `NAME` is unset or empty.
    #[error("{name} is not set: {message}; set {name}")]
    Required {
        /// The variable's name.
        name: String,
        /// The message written in the placeholder.
        message: String,
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
    /// Another mistake in the grammar (`$NAME` without braces, nesting too deep).
    #[error("{message} in {value:?}{}", .help.as_deref().map(|h| format!("; {h}")).unwrap_or_default())]
    Syntax {
        /// The whole value.
        value: String,
        /// What is wrong.
        message: String,
        /// How to fix it.
        help: Option<String>,
    },
}

/// Resolves every placeholder in `input`. `lookup` returns a variable's value; `${INSTALL_DIR}` is left as
/// written. Substituted values are not scanned again, so a value containing `${` stays literal.
pub(crate) fn resolve(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, PlaceholderError> {
    interpolate::expand(input, lookup, &[INSTALL_DIR_VAR]).map_err(|err| match err {
        ExpandError::Missing {
            name,
            message: None,
        } => PlaceholderError::Unset { name },
        ExpandError::Missing {
            name,
            message: Some(message),
        } => PlaceholderError::Required { name, message },
        ExpandError::Reserved { name, .. } => PlaceholderError::BadName {
            name: format!("{name} (reserved; takes no default)"),
        },
        ExpandError::Syntax(e) if e.message.starts_with("unterminated") => {
            PlaceholderError::Unterminated {
                value: input.to_owned(),
            }
        }
        ExpandError::Syntax(e) => match placeholder_at(input, e.column) {
            // A mistake inside `${...}`: show what stands between the braces.
            Some(name) => PlaceholderError::BadName { name },
            None => PlaceholderError::Syntax {
                value: input.to_owned(),
                message: e.message,
                help: e.help,
            },
        },
    })
}

/// The text of the `${...}` that holds the 1-based character `column` of `input` (after `${`, up to
/// `}` or the end), if the column is inside one.
fn placeholder_at(input: &str, column: u32) -> Option<String> {
    let chars: Vec<char> = input.chars().collect();
    let at = usize::try_from(column).ok()?.checked_sub(1)?;
    let start = (0..=at.min(chars.len().saturating_sub(1)))
        .rev()
        .find(|&i| chars.get(i) == Some(&'$') && chars.get(i + 1) == Some(&'{'))?;
    // Only when no `}` closes it before the error.
    if chars[start..at].contains(&'}') {
        return None;
    }
    Some(
        chars[start + 2..]
            .iter()
            .take_while(|c| **c != '}')
            .collect(),
    )
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
        // One grammar (components::interpolate): `$$` is a literal `$` everywhere, and `$b` without
        // braces is refused (the installer's own copy kept both as written).
        check("a$$b $ c$", &[], Ok("a$b $ c$"));
        assert!(matches!(
            resolve("a$b", &|_| None),
            Err(PlaceholderError::Syntax { .. })
        ));
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
        check(
            "${INSTALL_DIR:-/x}",
            &[],
            Err(PlaceholderError::BadName {
                name: "INSTALL_DIR (reserved; takes no default)".into(),
            }),
        );
        check(
            "${V:?pick a version}",
            &[("V", "")],
            Err(PlaceholderError::Required {
                name: "V".into(),
                message: "pick a version".into(),
            }),
        );
        check("${V-d} ${V?x}", &[("V", "")], Ok(" "));
        let msg = PlaceholderError::Unset { name: "X".into() }.to_string();
        assert_eq!(msg, "`${X}` is not set; set X or write `${X:-default}`");
    }
}
