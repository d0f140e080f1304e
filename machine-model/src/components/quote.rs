//! Writing `.env` files that dotenvy, Docker Compose `env_file` and `node --env-file` all read back identically.
//!
//! The rule, checked against four readers: dotenvy 0.15, Node 20 `--env-file`, Docker Compose v2 (compose-go
//! `dotenv/parser.go`, read from its source) and Docker Compose v1 (python-dotenv 0.21, run in the tests):
//!
//! 1. A value with no `'`, no `\\` and no trailing `\` is written in single quotes: `KEY='value'`. The readers
//!    take single-quoted text literally: `#`, `=`, `$` and spaces are kept, a newline is kept (the value spans
//!    lines), and Compose v2 does not interpolate `$`. The exceptions are why the other characters are excluded:
//!    Compose v2 reads `\'` as an escaped quote (so no trailing `\`), and Compose v1 turns `\\` into `\`.
//! 2. A value that contains `'` but no `"`, `\` or `$` is written in double quotes, a newline as `\n`, the one
//!    escape all readers share (`\"` and `\\` are not: Node keeps the backslash; Compose interpolates `$`).
//! 3. Anything else cannot be written so that all readers agree, and [`dotenv_line`] returns an error naming the
//!    key and the character: a `'` together with `"`, `\` or `$`; `${` anywhere (Compose v1 interpolates it
//!    even in single quotes); a carriage return; a NUL; `\\`; a trailing `\`.

/// A value that cannot be written to a `.env` file so that every reader sees the same text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// The key is not `[A-Za-z_][A-Za-z0-9_]*`.
    #[error(
        "invalid .env key `{key}`: keys are letters, digits and `_`, not starting with a digit"
    )]
    InvalidKey {
        /// The key.
        key: String,
    },
    /// The value has a character the readers disagree on in every quoting.
    #[error(
        "the value of {key} cannot be written to a .env file that dotenvy, docker compose and node read alike: it contains {what}"
    )]
    Unrepresentable {
        /// The key.
        key: String,
        /// The character or combination, in words.
        what: String,
    },
}

/// The line `KEY='value'` (without a newline) for `key` and `value`, quoted by the rule in the module doc.
pub fn dotenv_line(key: &str, value: &str) -> Result<String, QuoteError> {
    if !super::parse::is_identifier(key) {
        return Err(QuoteError::InvalidKey {
            key: key.to_owned(),
        });
    }
    let unrepresentable = |what: &str| {
        Err(QuoteError::Unrepresentable {
            key: key.to_owned(),
            what: what.to_owned(),
        })
    };
    if value.contains('\r') {
        return unrepresentable("a carriage return (\\r)");
    }
    if value.contains('\0') {
        return unrepresentable("a NUL character");
    }
    if value.contains("${") {
        return unrepresentable("`${` (docker compose v1 interpolates it even in single quotes)");
    }
    if value.contains("\\\\") {
        return unrepresentable("two backslashes in a row (docker compose v1 reads them as one)");
    }
    if !value.contains('\'') {
        if value.ends_with('\\') {
            return unrepresentable(
                "a backslash at the end (docker compose reads `\\'` as an escaped quote)",
            );
        }
        return Ok(format!("{key}='{value}'"));
    }
    for (c, what) in [
        ('"', "both ' and \""),
        ('\\', "both ' and \\"),
        ('$', "both ' and $"),
    ] {
        if value.contains(c) {
            return unrepresentable(what);
        }
    }
    Ok(format!("{key}=\"{}\"", value.replace('\n', "\\n")))
}

/// A whole `.env` file: each line of `header` as a `# ` comment, then one line per entry, with a final newline.
/// Collects every entry that cannot be written.
pub fn dotenv_file<'a, I>(header: &str, entries: I) -> Result<String, Vec<QuoteError>>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut out = String::new();
    for line in header.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    let mut errors = Vec::new();
    for (key, value) in entries {
        match dotenv_line(key, value) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_quotes_unless_the_value_has_one() {
        assert_eq!(dotenv_line("A", "x y # $z=1").unwrap(), "A='x y # $z=1'");
        assert_eq!(dotenv_line("A", "").unwrap(), "A=''");
        assert_eq!(dotenv_line("A", "two\nlines").unwrap(), "A='two\nlines'");
        assert_eq!(dotenv_line("A", "it's\nok").unwrap(), "A=\"it's\\nok\"");
        assert_eq!(dotenv_line("A", "a\\b $x").unwrap(), "A='a\\b $x'");
    }

    #[test]
    fn unrepresentable_values_name_the_key_and_character() {
        let e = dotenv_line("PRICE", "it's $5").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the value of PRICE cannot be written to a .env file that dotenvy, docker compose and node read alike: \
             it contains both ' and $"
        );
        assert!(matches!(
            dotenv_line("A", "x'\"").unwrap_err(),
            QuoteError::Unrepresentable { .. }
        ));
        assert!(matches!(
            dotenv_line("A", "C:\\dir\\").unwrap_err(),
            QuoteError::Unrepresentable { .. }
        ));
        assert!(matches!(
            dotenv_line("A", "a\r\nb").unwrap_err(),
            QuoteError::Unrepresentable { .. }
        ));
        assert!(matches!(
            dotenv_line("1A", "x").unwrap_err(),
            QuoteError::InvalidKey { .. }
        ));
    }

    #[test]
    fn file_has_header_and_final_newline() {
        let text = dotenv_file("@generated\ndo not edit", [("A", "1"), ("B", "2")]).unwrap();
        assert_eq!(text, "# @generated\n# do not edit\nA='1'\nB='2'\n");
        assert_eq!(
            dotenv_file("", [("A", "'\\"), ("B", "ok"), ("C", "'$")])
                .unwrap_err()
                .len(),
            2
        );
    }
}
