//! Component files and secrets: the `.env` builder that the existing sectioned component files move into.
//!
//! # The component file dialect
//!
//! A component is `profiles/components/<name>.env`:
//!
//! ```text
//! # Redis connection.          <- full-line comments start with `#` or `;`
//! NAMESPACE=REDIS              <- required, the first line that is not a comment
//!
//! [default]
//! PORT=6379                    <- the variable REDIS_PORT
//!
//! [local]
//! URL=redis://redis:${REDIS_PORT}
//!
//! [remote]
//! @secret URL                  <- REDIS_URL is a secret when [remote] is selected
//! ```
//!
//! - Lines are `KEY=VALUE`, split at the first `=`; key and value are trimmed. Keys are
//!   `[A-Za-z_][A-Za-z0-9_]*` and become `NAMESPACE_KEY`. A line without `=` is an error (a bare key is not
//!   `true`), and so is an array key `KEY[]`. Values are strings: `true` stays the text `true`.
//! - Comments are full lines only. A value is literal to the end of its line, so `https://x/p#frag` keeps its
//!   fragment; a `#` or `;` after whitespace in an unquoted value is an error, because the old parser cut the
//!   value there (quote the value, or move the comment to its own line).
//! - One matching pair of quotes is removed. In `'single quotes'` everything is literal, `$` included. In
//!   `"double quotes"` the escapes are `\"`, `\\`, `\n`, `\t` and `\$`; any other backslash is an error.
//! - Unquoted and double-quoted values are templates: `${VAR}`, `${VAR:-default}`, `${VAR:?message}`, `$$`
//!   (see [`interpolate`]). They are expanded after all layers are merged, so references see overridden values.
//! - Sections are `[name]` with letters, digits, `_` and `-`; an empty section exists. Dotted names `[a.b]`,
//!   duplicate sections and duplicate keys in a section are errors. CRLF line ends and a BOM are accepted.
//! - `@secret KEY` marks `NAMESPACE_KEY` as a secret: in the header (before the first section) whenever the
//!   component is selected, inside a section when that section is selected. A secret never has a value in a
//!   component file: `@secret KEY=value` is a parse error, and a selected section or profile `env` giving a value to
//!   a secret is a resolve error. The value comes from the environment (or the git-ignored secrets file that
//!   compose reads) at run time; generated files only ever hold the reference `${NAME}`.
//!
//! # Use
//!
//! [`ComponentSet::load_dir_as`] parses every `*.env` of a directory; [`resolve`] merges a profile's selection
//! ([`Selection`]: a component and an ordered list of sections, later wins; components in profile order), its
//! `env` (last, wins) and its secrets into a [`Resolved`] set; [`explain`] tells where one variable came from;
//! [`dotenv_line`] writes a value so that every `.env` reader agrees; [`Masker`] hides secret values in logs.

pub mod explain;
pub mod interpolate;
pub mod layer;
pub mod mask;
pub mod parse;
pub mod quote;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The model's one diagnostic type, shared with the profile loader and validator.
pub use crate::diag::{self, Diagnostic, Position, did_you_mean};
pub use explain::explain;
pub use interpolate::{EnvFallback, ExpandError, Part, Source, Value, expand, expand_runtime};
pub use layer::{
    DefaultVar, EnvVar, Origin, ResolveInput, Resolved, SecretDecls, Selection, resolve,
};
pub use mask::Masker;
pub use parse::{ComponentFile, Entry};
pub use quote::{dotenv_file, dotenv_line};

/// The component files of a directory, by component name (the file stem).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ComponentSet {
    dir: String,
    files: BTreeMap<String, ComponentFile>,
    /// Components whose file exists but could not be used (no namespace, unreadable): selecting them is not
    /// reported again.
    broken: BTreeSet<String>,
}

impl ComponentSet {
    /// Loads every `<dir>/*.env` in name order; file names in messages start with `display_dir` (for example
    /// `profiles/components`, so that messages and generated files carry no absolute path).
    pub fn load_dir_as(dir: &Path, display_dir: &str) -> (ComponentSet, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let mut texts = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                diags.push(Diagnostic::error(
                    display_dir,
                    None,
                    format!("cannot read the components directory: {e}"),
                ));
                return (
                    ComponentSet {
                        dir: display_dir.to_owned(),
                        ..ComponentSet::default()
                    },
                    diags,
                );
            }
        };
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "env"))
            .collect();
        paths.sort();
        let mut unreadable = Vec::new();
        for path in paths {
            let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            let shown = format!("{display_dir}/{name}.env");
            match crate::load::read_utf8(&path, &shown) {
                Ok(text) => texts.push((name, shown, text)),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    // The message already names the file and the position.
                    diags.push(Diagnostic::error(&shown, None, e.to_string()));
                    unreadable.push(name);
                }
                Err(e) => {
                    diags.push(Diagnostic::error(
                        &shown,
                        None,
                        format!("cannot read component file: {e}"),
                    ));
                    unreadable.push(name);
                }
            }
        }
        let (mut set, more) = ComponentSet::from_texts(
            display_dir,
            texts
                .iter()
                .map(|(n, p, t)| (n.as_str(), p.as_str(), t.as_str())),
        );
        set.broken.extend(unreadable);
        diags.extend(more);
        (set, diags)
    }

    /// Builds a set from `(name, path for messages, text)` triples (for build scripts and tests).
    pub fn from_texts<'a, I>(display_dir: &str, files: I) -> (ComponentSet, Vec<Diagnostic>)
    where
        I: IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    {
        let mut set = ComponentSet {
            dir: display_dir.to_owned(),
            ..ComponentSet::default()
        };
        let mut diags = Vec::new();
        for (name, path, text) in files {
            let (file, more) = ComponentFile::parse(path, text);
            diags.extend(more);
            match file {
                Some(file) => {
                    set.files.insert(name.to_owned(), file);
                }
                None => {
                    set.broken.insert(name.to_owned());
                }
            }
        }
        (set, diags)
    }

    /// The component called `name`.
    pub fn get(&self, name: &str) -> Option<&ComponentFile> {
        self.files.get(name)
    }

    /// The names of the usable components, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Whether a component has a file whose errors make it unusable (already reported when loading).
    pub fn is_broken(&self, name: &str) -> bool {
        self.broken.contains(name)
    }

    /// The file a component would be in, for messages.
    pub(crate) fn file_for(&self, name: &str) -> String {
        format!("{}/{name}.env", self.dir)
    }
}
