//! What a value resolves to: literal text and references to secrets filled in only at run time,
//! written as a template again or masked for people.

use std::fmt;

/// One piece of a resolved value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// Literal text.
    Text(String),
    /// A reference to a secret, filled in at run time from the environment.
    Secret(String),
}

/// A resolved value: literal text, possibly with references to secrets that only exist at run time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Value {
    pub(super) parts: Vec<Part>,
}

impl Value {
    /// A literal value.
    pub fn text(text: &str) -> Self {
        let mut v = Value::default();
        v.push_text(text);
        v
    }

    /// A value that is exactly the secret `name`.
    pub fn secret(name: &str) -> Self {
        Value {
            parts: vec![Part::Secret(name.to_owned())],
        }
    }

    pub(super) fn push_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if let Some(Part::Text(last)) = self.parts.last_mut() {
            last.push_str(text);
        } else {
            self.parts.push(Part::Text(text.to_owned()));
        }
    }

    pub(super) fn append(&mut self, other: &Value) {
        for part in &other.parts {
            match part {
                Part::Text(t) => self.push_text(t),
                Part::Secret(_) => self.parts.push(part.clone()),
            }
        }
    }

    /// The pieces of the value.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The value when it contains no secret reference.
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// Whether the value contains no secret reference.
    pub(crate) fn is_literal(&self) -> bool {
        self.as_literal().is_some()
    }

    /// The secrets this value needs at run time.
    pub(crate) fn secret_refs(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Secret(name) => Some(name.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Whether the value is known to be empty (a secret reference may be anything).
    pub(super) fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The value in the interpolation syntax Docker Compose and [`super::expand_runtime`] read: literal `$` doubled,
    /// secrets as `${NAME}`.
    pub fn to_template(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(&t.replace('$', "$$")),
                Part::Secret(name) => {
                    out.push_str("${");
                    out.push_str(name);
                    out.push('}');
                }
            }
        }
        out
    }

    /// The value for people: literal text as is, secrets as `<secret NAME>`.
    pub fn masked(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Secret(name) => {
                    out.push_str("<secret ");
                    out.push_str(name);
                    out.push('>');
                }
            }
        }
        out
    }
}

impl fmt::Display for Value {
    /// Displays the masked form: a `Value` never holds a secret's value, and never shows one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}
