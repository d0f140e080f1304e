//! The component file parser: `NAMESPACE=` first, then `[section]` blocks of `KEY=VALUE` lines.
//!
//! See the module documentation of [`crate::components`] for the dialect.

use super::diag::{Diagnostic, Position, quoted_list};
use super::interpolate::{Mode, Template};

/// A parsed component file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentFile {
    /// The file name used in messages.
    pub path: String,
    /// The prefix of every key: `URL` in namespace `REDIS` is the variable `REDIS_URL`.
    pub namespace: String,
    /// Where `NAMESPACE=` is.
    pub namespace_position: Position,
    /// `@secret` markers before the first section: they apply whenever the component is selected.
    pub secrets: Vec<SecretMark>,
    /// The sections in file order.
    pub sections: Vec<Section>,
}

/// One `[section]` of a component file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// The name between the brackets.
    pub name: String,
    /// Where the header is.
    pub position: Position,
    /// The `KEY=VALUE` lines in file order.
    pub entries: Vec<Entry>,
    /// `@secret` markers in this section: they apply when the section is selected.
    pub secrets: Vec<SecretMark>,
    /// Keys whose lines had errors and were left out, so that references to them are not reported again.
    pub rejected: Vec<String>,
}

/// One `KEY=VALUE` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key without the namespace.
    pub key: String,
    /// The value, parsed (quotes removed, escapes applied, references found).
    pub value: Template,
    /// Where the key is.
    pub position: Position,
    /// The column where the value starts.
    pub value_column: u32,
}

/// One `@secret KEY` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretMark {
    /// The key without the namespace.
    pub key: String,
    /// Where the marker is.
    pub position: Position,
}

impl ComponentFile {
    /// Parses `text`; `path` is only used in messages. Returns the file whenever it has a namespace (lines with
    /// errors are left out, so later stages can still report their own problems) and every diagnostic found.
    pub fn parse(path: &str, text: &str) -> (Option<ComponentFile>, Vec<Diagnostic>) {
        let mut p = FileParser {
            path,
            diagnostics: Vec::new(),
            file: None,
            seen_content: false,
            missing_reported: false,
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, line) in text.split('\n').enumerate() {
            let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
            p.line(number, line.strip_suffix('\r').unwrap_or(line));
        }
        if p.file.is_none() && !p.missing_reported {
            p.diagnostics.push(
                Diagnostic::error(path, Some(Position::new(1, 1)), "missing NAMESPACE: a component file starts with NAMESPACE=<NAME>")
                    .with_help("add a first line such as `NAMESPACE=REDIS`; keys are then prefixed, `URL` becomes `REDIS_URL`"),
            );
        }
        (p.file, p.diagnostics)
    }

    /// The section called `name`.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The section names in file order.
    pub fn section_names(&self) -> impl Iterator<Item = &str> {
        self.sections.iter().map(|s| s.name.as_str())
    }

    /// The variable name of `key`: `NAMESPACE_KEY`.
    pub fn variable(&self, key: &str) -> String {
        format!("{}_{key}", self.namespace)
    }
}

struct FileParser<'a> {
    path: &'a str,
    diagnostics: Vec<Diagnostic>,
    file: Option<ComponentFile>,
    /// Whether a non-comment line came before (NAMESPACE must be the first).
    seen_content: bool,
    missing_reported: bool,
}

/// Whether `s` is a valid key or namespace: `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_section_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn col(chars_before: usize) -> u32 {
    u32::try_from(chars_before + 1).unwrap_or(u32::MAX)
}

impl FileParser<'_> {
    fn error(&mut self, line: u32, column: u32, message: impl Into<String>) -> &mut Diagnostic {
        self.diagnostics.push(Diagnostic::error(
            self.path,
            Some(Position::new(line, column)),
            message,
        ));
        self.diagnostics.last_mut().expect("just pushed")
    }

    fn help(
        &mut self,
        line: u32,
        column: u32,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.error(line, column, message).help = Some(help.into());
    }

    fn line(&mut self, number: u32, line: &str) {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            return;
        }
        let indent = line.chars().take_while(|c| c.is_whitespace()).count();
        let at = col(indent);
        let first = !self.seen_content;
        self.seen_content = true;
        if trimmed.starts_with('[') {
            self.require_namespace(number, at);
            self.section_header(number, at, trimmed);
        } else if let Some(directive) = trimmed.strip_prefix('@') {
            self.require_namespace(number, at);
            self.directive(number, at, directive);
        } else {
            self.key_value(number, line, at, first);
        }
    }

    /// Reports, once, a line that needs the namespace to be known.
    fn require_namespace(&mut self, number: u32, at: u32) {
        if self.file.is_none() && !self.missing_reported {
            self.missing_reported = true;
            self.help(
                number,
                at,
                "missing NAMESPACE: a component file starts with NAMESPACE=<NAME>, before any other line",
                "add a first line such as `NAMESPACE=REDIS`; keys are then prefixed, `URL` becomes `REDIS_URL`",
            );
        }
    }

    fn section_header(&mut self, number: u32, at: u32, trimmed: &str) {
        let Some(close) = trimmed.find(']') else {
            self.help(
                number,
                at,
                "section header without a closing `]`",
                "write the header as `[name]`",
            );
            return;
        };
        let after = trimmed[close + 1..].trim();
        if !after.is_empty() {
            self.help(
                number,
                at,
                format!("unexpected text `{after}` after the section header"),
                "comments go on their own line, starting with `#` or `;`",
            );
            return;
        }
        let name = trimmed[1..close].trim();
        if name.is_empty() {
            self.help(
                number,
                at,
                "empty section name `[]`",
                "write the header as `[name]`",
            );
            return;
        }
        if name.contains('.') {
            let suggestion = name.replace('.', "-");
            self.help(
                number,
                at,
                format!("dotted section name `[{name}]`: a profile cannot select it"),
                format!(
                    "rename it to `[{suggestion}]`; section names are letters, digits, `_` and `-`"
                ),
            );
            return;
        }
        if !is_section_name(name) {
            self.help(
                number,
                at,
                format!("invalid section name `[{name}]`"),
                "section names are letters, digits, `_` and `-`, starting with a letter or digit",
            );
            return;
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if let Some(first) = file.sections.iter().find(|s| s.name == name) {
            let first_line = first.position.line;
            // Keep reading into the first block so duplicate keys across both blocks are found too.
            let index = file
                .sections
                .iter()
                .position(|s| s.name == name)
                .expect("found above");
            let section = file.sections.remove(index);
            file.sections.push(section);
            self.help(
                number,
                at,
                format!("duplicate section `[{name}]`, first declared at line {first_line}"),
                "merge the two blocks into one section",
            );
            return;
        }
        file.sections.push(Section {
            name: name.to_owned(),
            position: Position::new(number, at),
            entries: Vec::new(),
            secrets: Vec::new(),
            rejected: Vec::new(),
        });
    }

    fn directive(&mut self, number: u32, at: u32, directive: &str) {
        let (word, rest) = directive
            .split_once(char::is_whitespace)
            .unwrap_or((directive, ""));
        if word != "secret" {
            self.help(
                number,
                at,
                format!("unknown directive `@{word}`"),
                "the only directive is `@secret KEY`",
            );
            return;
        }
        let rest = rest.trim();
        if rest.contains('=') {
            self.help(
                number,
                at,
                "a secret marker takes a name only: `@secret KEY`",
                "secret values never go into component files; put the value in the git-ignored secrets file or the environment",
            );
            return;
        }
        if !is_identifier(rest) {
            self.help(
                number,
                at,
                if rest.is_empty() { "`@secret` needs a key".to_owned() } else { format!("invalid key `{rest}` in `@secret`") },
                "write one `@secret KEY` line per key; keys are letters, digits and `_`, not starting with a digit",
            );
            return;
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let scope_name = file
            .sections
            .last()
            .map(|s| format!("section [{}]", s.name))
            .unwrap_or_else(|| "the file header".to_owned());
        let (marks, entries) = match file.sections.last_mut() {
            Some(s) => (&mut s.secrets, s.entries.as_slice()),
            None => (&mut file.secrets, &[][..]),
        };
        if let Some(first) = marks.iter().find(|m| m.key == rest) {
            let line = first.position.line;
            self.help(
                number,
                at,
                format!("duplicate `@secret {rest}` in {scope_name}, first at line {line}"),
                "remove this line",
            );
            return;
        }
        if let Some(entry) = entries.iter().find(|e| e.key == rest) {
            let line = entry.position.line;
            self.help(
                number,
                at,
                format!("{rest} is marked secret but {scope_name} gives it a value at line {line}"),
                "remove the value from the component file; secrets come from the secrets file or the environment",
            );
            return;
        }
        marks.push(SecretMark {
            key: rest.to_owned(),
            position: Position::new(number, at),
        });
    }

    fn key_value(&mut self, number: u32, line: &str, at: u32, first: bool) {
        let Some((raw_key, raw_value)) = line.split_once('=') else {
            let text = line.trim();
            let help = if text.ends_with("[]") {
                "array keys are not supported; write one `KEY=VALUE` per line with a string value"
            } else {
                "write `KEY=VALUE` (a bare key does not mean `true`; write `KEY=true`), or start a comment with `#`"
            };
            self.help(number, at, format!("line has no `=`: `{text}`"), help);
            return;
        };
        let key = raw_key.trim();
        let eq_chars = raw_key.chars().count();
        let value_indent = raw_value.chars().take_while(|c| c.is_whitespace()).count();
        let value_column = col(eq_chars + 1 + value_indent);
        let value = raw_value.trim();

        if key == "NAMESPACE" {
            self.namespace(number, at, value, value_column, first);
            return;
        }
        if !first {
            self.require_namespace(number, at);
        } else if self.file.is_none() {
            self.missing_reported = true;
            self.help(
                number,
                at,
                format!("missing NAMESPACE: the first line is `{key}=...`, but a component file starts with NAMESPACE=<NAME>"),
                "add a first line such as `NAMESPACE=REDIS`; keys are then prefixed, `URL` becomes `REDIS_URL`",
            );
        }
        if !self.check_key(number, at, key) {
            return;
        }
        let template = match parse_value(value, value_column) {
            Ok(t) => t,
            Err((column, message, help)) => {
                let d = self.error(number, column, message);
                d.help = help;
                if let Some(section) = self.file.as_mut().and_then(|f| f.sections.last_mut()) {
                    section.rejected.push(key.to_owned());
                }
                return;
            }
        };
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let Some(section) = file.sections.last_mut() else {
            self.help(
                number,
                at,
                format!("`{key}` is outside any section"),
                "put `KEY=VALUE` lines under a `[section]` header; only NAMESPACE and `@secret` lines come before the first section",
            );
            return;
        };
        if let Some(previous) = section.entries.iter().find(|e| e.key == key) {
            let message = format!(
                "duplicate key {key} in section [{}], first set at line {}",
                section.name, previous.position.line
            );
            self.help(
                number,
                at,
                message,
                "remove one of the two lines; within a section a key is set once",
            );
            return;
        }
        if let Some(mark) = section.secrets.iter().find(|m| m.key == key) {
            let message = format!(
                "{key} is marked secret at line {} but section [{}] gives it a value",
                mark.position.line, section.name
            );
            self.help(
                number,
                at,
                message,
                "remove the value from the component file; secrets come from the secrets file or the environment",
            );
            return;
        }
        section.entries.push(Entry {
            key: key.to_owned(),
            value: template,
            position: Position::new(number, at),
            value_column,
        });
    }

    fn namespace(&mut self, number: u32, at: u32, value: &str, value_column: u32, first: bool) {
        if let Some(file) = &self.file {
            let line = file.namespace_position.line;
            self.help(
                number,
                at,
                format!("duplicate NAMESPACE, first set at line {line}"),
                "a component file has one NAMESPACE, on its first line",
            );
            return;
        }
        if !is_identifier(value) {
            self.help(
                number,
                value_column,
                format!("invalid NAMESPACE `{value}`"),
                "a namespace is letters, digits and `_`, not starting with a digit, unquoted (for example `NAMESPACE=REDIS`)",
            );
            self.missing_reported = true;
            return;
        }
        if !first {
            self.help(
                number,
                at,
                "NAMESPACE must be the first line of a component file, before any section, key or `@secret`",
                "move `NAMESPACE=...` to the top of the file (only comments may come before it)",
            );
            self.missing_reported = true;
            return;
        }
        self.file = Some(ComponentFile {
            path: self.path.to_owned(),
            namespace: value.to_owned(),
            namespace_position: Position::new(number, at),
            secrets: Vec::new(),
            sections: Vec::new(),
        });
    }

    fn check_key(&mut self, number: u32, at: u32, key: &str) -> bool {
        if is_identifier(key) {
            return true;
        }
        if let Some(base) = key.strip_suffix("[]") {
            self.help(
                number,
                at,
                format!("array key `{key}` is not supported: values are strings"),
                format!("write `{base}=a,b,c` and split the string where it is used"),
            );
        } else if let Some(rest) = key.strip_prefix("export ") {
            self.help(
                number,
                at,
                format!("invalid key `{key}`"),
                format!("remove `export`: write `{}=...`", rest.trim()),
            );
        } else if key.is_empty() {
            self.help(number, at, "missing key before `=`", "write `KEY=VALUE`");
        } else {
            self.help(
                number,
                at,
                format!("invalid key `{key}`"),
                "keys are letters, digits and `_`, not starting with a digit (for example `BASE_URL`)",
            );
        }
        false
    }
}

type ValueError = (u32, String, Option<String>);

/// Parses a trimmed value starting at `column`: one matching pair of quotes is removed; double quotes take escapes;
/// single quotes are literal (no escapes, no references); unquoted values are literal to the end of the line.
fn parse_value(value: &str, column: u32) -> Result<Template, ValueError> {
    for quote in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(quote) {
            let Some(inner) = inner.strip_suffix(quote) else {
                return Err((
                    column,
                    format!("value starts with {quote} but does not end with it"),
                    Some(format!(
                        "close the quote at the end of the line; comments go on their own line, and a value that should \
                         start with {quote} is written inside the other kind of quotes"
                    )),
                ));
            };
            return if quote == '"' {
                Template::parse(inner, Mode::DoubleQuoted, column + 1)
                    .map_err(|e| (e.column, e.message, e.help))
            } else {
                Ok(Template::literal(inner))
            };
        }
    }
    let chars: Vec<char> = value.chars().collect();
    if let Some(i) = chars
        .windows(2)
        .position(|w| w[0].is_whitespace() && (w[1] == '#' || w[1] == ';'))
    {
        let marker = chars[i + 1];
        return Err((
            column + u32::try_from(i + 1).unwrap_or(0),
            format!(
                "`{marker}` after a space in an unquoted value: inline comments are not supported, and the old parser cut the value here"
            ),
            Some(format!(
                "move the comment to its own line, or quote the value ('...') to keep the `{marker}` as text"
            )),
        ));
    }
    Template::parse(value, Mode::Unquoted, column).map_err(|e| (e.column, e.message, e.help))
}

/// The section names of `file`, quoted, for messages.
pub(crate) fn section_list(file: &ComponentFile) -> String {
    quoted_list(file.section_names())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let (_, diags) = ComponentFile::parse("t.env", text);
        diags
            .iter()
            .map(|d| format!("{}: {}", d.location(), d.message))
            .collect()
    }

    #[test]
    fn minimal_file() {
        let (file, diags) = ComponentFile::parse("t.env", "NAMESPACE=X\n[a]\nK=v\n");
        assert!(diags.is_empty(), "{diags:?}");
        let file = file.unwrap();
        assert_eq!(file.namespace, "X");
        assert_eq!(file.sections[0].entries[0].key, "K");
        assert_eq!(file.variable("K"), "X_K");
    }

    #[test]
    fn value_rules() {
        assert_eq!(
            parse_value("'a # b'", 1).unwrap(),
            Template::literal("a # b")
        );
        assert_eq!(parse_value("'${X}'", 1).unwrap(), Template::literal("${X}"));
        assert_eq!(
            parse_value("http://x/p#frag", 1).unwrap(),
            Template::literal("http://x/p#frag")
        );
        assert!(
            parse_value("v # note", 1)
                .unwrap_err()
                .1
                .contains("inline comments are not supported")
        );
        assert!(
            parse_value("\"abc", 1)
                .unwrap_err()
                .1
                .contains("does not end with it")
        );
        assert_eq!(parse_value("\"\"", 1).unwrap(), Template::default());
        assert_eq!(parse_value("'it's'", 1).unwrap(), Template::literal("it's"));
    }

    #[test]
    fn errors_carry_line_and_column() {
        assert_eq!(
            errors("NAMESPACE=X\n[a]\n  bad-key = 1\n"),
            vec!["t.env:3:3: invalid key `bad-key`"]
        );
        assert_eq!(
            errors("NAMESPACE=X\n[a]\nK=${Y\n"),
            vec!["t.env:3:3: unterminated reference `${Y`: no closing `}`"]
        );
        assert_eq!(
            errors("NAMESPACE=X\n[a]\nK=  \"a\\qb\"\n"),
            vec!["t.env:3:7: unknown escape `\\q` in a double-quoted value"]
        );
    }
}
