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

/// The candidate closest to `wanted` by edit distance, when it is close enough to be a likely typo.
pub fn did_you_mean<'a, I>(wanted: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let limit = (wanted.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&wanted.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance over characters: insertions, deletions, substitutions and swaps of two neighbours (so the
/// typo `redsi` is one edit from `redis`).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between the first i characters of a and the first j of b.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

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
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("local", "local"), 0);
        assert_eq!(edit_distance("localdev", "local"), 3);
        assert_eq!(edit_distance("remotedev", "remote-dev"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("redsi", "redis"), 1);
    }

    #[test]
    fn did_you_mean_picks_the_closest_plausible_candidate() {
        let sections = ["default", "local", "remote"];
        assert_eq!(did_you_mean("locl", sections), Some("local"));
        assert_eq!(did_you_mean("Remote", sections), Some("remote"));
        assert_eq!(did_you_mean("staging", sections), None);
    }

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
