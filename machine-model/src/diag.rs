//! The model's one diagnostic type: a problem with a file, a position, a lowercase message and an optional
//! help line; a profile's problems also carry the JSON pointer of the offending value. Used by the
//! component files, the profile loader ([`crate::load`]) and the profile validator alike.

use std::fmt;

/// How bad a diagnostic is: errors fail the build, warnings are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The input cannot be used as written.
    Error,
    /// The input works but probably does not mean what its author thinks.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The 1-based line.
    pub line: u32,
    /// The 1-based column, in characters.
    pub column: u32,
}

impl Position {
    /// A position from a 1-based line and column.
    pub fn new(line: u32, column: u32) -> Self {
        Position { line, column }
    }

    /// A position from a 1-based line and column counted in `usize` (as serde_json and
    /// [`crate::pointer::locate`] give them), saturating at `u32::MAX`.
    pub fn at(line: usize, column: usize) -> Self {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Position::new(clamp(line), clamp(column))
    }
}

/// One problem found in a component file, a profile or while resolving values.
///
/// Shown as `file:line:column: error: message` (with `\n  help: …` when there is a help line); a
/// problem in a profile, which has a [`pointer`](Diagnostic::pointer), shows the pointer in place of
/// the severity: `profiles/x.json:5:24: /machine/gpus: -1 is below the minimum 0; allowed: …`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Whether this fails the build.
    pub severity: Severity,
    /// The file the problem is in, as given by the caller (for example `profiles/components/redis.env`).
    pub file: String,
    /// Where in the file, when known (profile selections from JSON may not carry one).
    pub position: Option<Position>,
    /// In a JSON file, the pointer (RFC 6901) of the offending value (`/machine/gpus`); `Some("")` for
    /// the whole document, `None` for files that are not JSON.
    pub pointer: Option<String>,
    /// What is wrong, lowercase, naming the thing and the allowed form.
    pub message: String,
    /// How to fix it, when there is a clear fix.
    pub help: Option<String>,
}

impl Diagnostic {
    /// An error at a position in `file`.
    pub fn error(file: &str, position: Option<Position>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: file.to_owned(),
            position,
            pointer: None,
            message: message.into(),
            help: None,
        }
    }

    /// An error about the value at `pointer` of the JSON document `text` (the file `file`), located at
    /// the value's first character (or its closest existing ancestor's, see [`crate::pointer::locate`]).
    pub(crate) fn in_json(
        file: &str,
        text: &str,
        pointer: &str,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = crate::pointer::locate(text, pointer);
        Diagnostic::error(file, Some(Position::at(line, column)), message).with_pointer(pointer)
    }

    /// The same diagnostic about the JSON value at `pointer` (`""` for the whole document).
    pub(crate) fn with_pointer(mut self, pointer: impl Into<String>) -> Self {
        self.pointer = Some(pointer.into());
        self
    }

    /// A warning at a position in `file`.
    pub fn warning(file: &str, position: Option<Position>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, position, message)
        }
    }

    /// The same diagnostic with a help line.
    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Whether this is an error (as opposed to a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:column` (or just `file` when the position is unknown).
    pub fn location(&self) -> String {
        match self.position {
            Some(p) => format!("{}:{}:{}", self.file, p.line, p.column),
            None => self.file.clone(),
        }
    }

    /// What follows the location: the JSON pointer (`/` for the whole document) when there is one,
    /// else the severity.
    fn kind(&self) -> String {
        match self.pointer.as_deref() {
            Some("") => "/".to_owned(),
            Some(pointer) => pointer.to_owned(),
            None => self.severity.to_string(),
        }
    }

    /// The diagnostic on a single line, for `cargo::error=` and log lines (a line break inside the
    /// message becomes `; `).
    pub fn one_line(&self) -> String {
        let line = match &self.help {
            Some(help) => format!(
                "{}: {}: {} (help: {help})",
                self.location(),
                self.kind(),
                self.message
            ),
            None => format!("{}: {}: {}", self.location(), self.kind(), self.message),
        };
        line.replace("\r\n", "; ").replace('\n', "; ")
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.location(), self.kind(), self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Whether any of `diagnostics` is an error.
pub(crate) fn has_errors(diagnostics: &[Diagnostic]) -> bool {
    diagnostics.iter().any(Diagnostic::is_error)
}

pub use crate::suggest::did_you_mean;

/// `"a", "b", "c"` for messages that list what exists.
pub(crate) fn quoted_list<'a, I: IntoIterator<Item = &'a str>>(items: I) -> String {
    let items: Vec<String> = items.into_iter().map(|s| format!("\"{s}\"")).collect();
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// `items` shown one per line, for error types that gather every problem of one input.
pub fn lines<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_location_severity_message_and_help() {
        let d =
            Diagnostic::error("a.env", Some(Position::new(3, 5)), "bad thing").with_help("do this");
        assert_eq!(
            d.to_string(),
            "a.env:3:5: error: bad thing\n  help: do this"
        );
        assert_eq!(d.one_line(), "a.env:3:5: error: bad thing (help: do this)");
        let w = Diagnostic::warning("p.json", None, "odd");
        assert_eq!(w.to_string(), "p.json: warning: odd");
    }

    #[test]
    fn a_json_problem_shows_its_pointer_in_place_of_the_severity() {
        let text = "{\n  \"machine\": {\"gpus\": -1}\n}\n";
        let d = Diagnostic::in_json("profiles/x.json", text, "/machine/gpus", "too few\nreally");
        assert_eq!(d.position, Some(Position::new(2, 23)));
        assert_eq!(
            d.to_string(),
            "profiles/x.json:2:23: /machine/gpus: too few\nreally"
        );
        assert_eq!(
            d.one_line(),
            "profiles/x.json:2:23: /machine/gpus: too few; really"
        );
        let whole = Diagnostic::in_json("profiles/x.json", text, "", "not a profile");
        assert_eq!(whole.to_string(), "profiles/x.json:1:1: /: not a profile");
    }
}
