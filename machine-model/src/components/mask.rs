//! Masking secret values in text before it reaches a log line or a terminal.

use std::borrow::Cow;

/// What a masked secret looks like.
pub const MASK: &str = "***";

/// Replaces every occurrence of known secret values with [`MASK`].
#[derive(Clone, Default)]
pub struct Masker {
    /// Longest first, so a secret that contains another is masked whole.
    values: Vec<String>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} values)", self.values.len())
    }
}

impl Masker {
    /// A masker for `values`; empty values are ignored.
    pub fn new<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut values: Vec<String> = values
            .into_iter()
            .map(Into::into)
            .filter(|v| !v.is_empty())
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Masker { values }
    }

    /// A masker for the current values of `names`, looked up with `lookup` (for example the process environment).
    pub fn from_lookup<'a, I>(names: I, lookup: &dyn Fn(&str) -> Option<String>) -> Self
    where
        I: IntoIterator<Item = &'a str>,
    {
        Masker::new(names.into_iter().filter_map(lookup))
    }

    /// `text` with every secret value replaced by [`MASK`].
    pub fn mask<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = Cow::Owned(out.replace(value.as_str(), MASK));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_longest_first() {
        let m = Masker::new(["abc", "abcdef", ""]);
        assert_eq!(m.mask("x abcdef y abc z"), "x *** y *** z");
        assert!(matches!(m.mask("clean"), Cow::Borrowed("clean")));
        assert_eq!(format!("{m:?}"), "Masker(2 values)");
    }

    #[test]
    fn from_lookup_reads_current_values() {
        let m = Masker::from_lookup(["KEY", "UNSET"], &|n| {
            (n == "KEY").then(|| "hunter2".to_owned())
        });
        assert_eq!(m.mask("password hunter2"), "password ***");
    }
}
