//! Diagnostics: one problem with a file, a position, a lowercase message and an optional help line.

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
}

/// One problem found in a component file, a profile or while resolving values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Whether this fails the build.
    pub severity: Severity,
    /// The file the problem is in, as given by the caller (for example `profiles/components/redis.env`).
    pub file: String,
    /// Where in the file, when known (profile selections from JSON may not carry one).
    pub position: Option<Position>,
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
            message: message.into(),
            help: None,
        }
    }

    /// A warning at a position in `file`.
    pub fn warning(file: &str, position: Option<Position>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, position, message)
        }
    }

    /// The same diagnostic with a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
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

    /// The diagnostic on a single line, for `cargo::error=` and log lines.
    pub fn one_line(&self) -> String {
        match &self.help {
            Some(help) => format!(
                "{}: {}: {} (help: {help})",
                self.location(),
                self.severity,
                self.message
            ),
            None => format!("{}: {}: {}", self.location(), self.severity, self.message),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.location(),
            self.severity,
            self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Whether any of `diagnostics` is an error.
pub fn has_errors(diagnostics: &[Diagnostic]) -> bool {
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
}
