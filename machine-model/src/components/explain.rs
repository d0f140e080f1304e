//! `explain`: the final value of one variable (masked if secret), where it came from and what it overrode.

use std::fmt;

use super::diag::did_you_mean;
use super::interpolate::Source;
use super::layer::{Origin, Resolved, Shadowed};

/// Everything known about how one variable got its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The variable.
    pub name: String,
    /// The final value for display: literal text as is, secrets as `<secret NAME>`.
    pub value: String,
    /// Whether the variable is itself a secret.
    pub secret: bool,
    /// Where the winning value was set.
    pub origin: Origin,
    /// The winning value as written, when it differs from the final value.
    pub raw: Option<String>,
    /// The references expanded, each with where its text came from.
    pub references: Vec<ReferenceTrace>,
    /// The values it overrode, latest first.
    pub overrides: Vec<Shadowed>,
}

/// One reference expanded in a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceTrace {
    /// The referenced name.
    pub name: String,
    /// Where its text came from.
    pub source: Source,
    /// The referenced variable's own origin, for [`Source::Variable`].
    pub origin: Option<Origin>,
}

/// Asked to explain a variable the profile does not define.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the profile defines no variable {name}{}", suggestion.as_ref().map(|s| format!("; did you mean {s}?")).unwrap_or_default())]
pub struct UnknownVariable {
    /// The name asked for.
    pub name: String,
    /// The closest defined name, when there is a likely one.
    pub suggestion: Option<String>,
}

/// Explains `name` in `resolved`.
pub fn explain(resolved: &Resolved, name: &str) -> Result<Explanation, UnknownVariable> {
    let Some(var) = resolved.get(name) else {
        let suggestion =
            did_you_mean(name, resolved.vars().iter().map(|v| v.name.as_str())).map(str::to_owned);
        return Err(UnknownVariable {
            name: name.to_owned(),
            suggestion,
        });
    };
    let value = var.value.masked();
    let raw = var
        .raw
        .clone()
        .filter(|raw| *raw != value.replace('$', "$$"));
    let references = var
        .expansions
        .iter()
        .map(|e| ReferenceTrace {
            name: e.name.clone(),
            source: e.source.clone(),
            origin: match e.source {
                Source::Variable => resolved.get(&e.name).map(|v| v.origin.clone()),
                _ => None,
            },
        })
        .collect();
    Ok(Explanation {
        name: var.name.clone(),
        value,
        secret: var.is_secret(),
        origin: var.origin.clone(),
        raw,
        references,
        overrides: var.shadowed.iter().rev().cloned().collect(),
    })
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}={}", self.name, self.value)?;
        if self.secret {
            writeln!(
                f,
                "  secret: the value is never written to generated files; it is read from the environment at run time"
            )?;
        }
        writeln!(f, "  from {}", self.origin)?;
        if let Some(raw) = &self.raw {
            writeln!(f, "  written as {raw}")?;
        }
        for r in &self.references {
            let how = match (&r.source, &r.origin) {
                (Source::Variable, Some(origin)) => format!("from {origin}"),
                (Source::Variable, None) => "from another variable".to_owned(),
                (Source::Secret, _) => "a secret, filled in at run time".to_owned(),
                (Source::Environment, _) => "from the environment (fallback enabled)".to_owned(),
                (Source::Default, _) => "unset, so the reference's default was used".to_owned(),
            };
            writeln!(f, "  expands ${{{}}}: {how}", r.name)?;
        }
        for o in &self.overrides {
            writeln!(f, "  overrides {} (was {})", o.origin, o.raw)?;
        }
        Ok(())
    }
}
