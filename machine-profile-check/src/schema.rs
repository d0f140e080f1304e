//! The profile JSON Schema (`schemas/profile.schema.json`, draft-07) and its findings in words: each
//! violation located (`file:line:column`, JSON pointer) with what is wrong and what is allowed
//! (`-1 is below the minimum 0; allowed: an integer from 0 to 64`), unknown fields with a did-you-mean.

use std::fmt::Write as _;
use std::path::Path;

use machine_model::Diagnostic;
use machine_model::load::ProfileSource;
use machine_model::pointer::{escape_pointer, locate};
use serde_json::Value;

/// The profile schema, compiled (JSON Schema draft-07, the draft the schema file pins).
pub struct Schema {
    document: Value,
    validator: jsonschema::Validator,
    /// The schema file as shown to people.
    shown: String,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("shown", &self.shown)
            .finish()
    }
}

/// How a broken schema file is fixed.
const FIX: &str = "run `cargo xtask codegen` to regenerate it";

/// A schema finding and the byte span of the value it is about.
pub(crate) struct Located {
    pub(crate) diag: Diagnostic,
    pub(crate) span: (usize, usize),
}

impl Schema {
    /// Reads and compiles the schema file at `path`, shown in messages as `shown`
    /// (`schemas/profile.schema.json`).
    ///
    /// Errors: one diagnostic naming the file and `cargo xtask codegen` when it cannot be read, is not
    /// JSON or is not a valid draft-07 schema.
    pub fn from_file(path: &Path, shown: &str) -> Result<Schema, Diagnostic> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostic::error(
                shown,
                None,
                format!("cannot read the profile schema ({e}); {FIX}"),
            )
        })?;
        Schema::from_text(&text, shown)
    }

    /// Compiles the schema `text` (the xtask passes the one it renders from the model), shown in
    /// messages as `shown`. Errors: as [`Schema::from_file`].
    pub fn from_text(text: &str, shown: &str) -> Result<Schema, Diagnostic> {
        let document: Value = serde_json::from_str(text).map_err(|e| {
            Diagnostic::error(
                shown,
                Some(machine_model::components::Position::at(
                    e.line(),
                    e.column(),
                )),
                format!("the profile schema is not JSON ({e}); {FIX}"),
            )
        })?;
        let validator = jsonschema::draft7::new(&document).map_err(|e| {
            Diagnostic::error(
                shown,
                None,
                format!("the profile schema is not a valid draft-07 schema ({e}); {FIX}"),
            )
        })?;
        Ok(Schema {
            document,
            validator,
            shown: shown.to_string(),
        })
    }

    /// Every schema violation of one profile, located. Nothing when the text is not JSON (the model's
    /// parser reports that, with its position).
    pub(crate) fn check(&self, source: &ProfileSource) -> Vec<Located> {
        let Ok(instance) = serde_json::from_str::<Value>(&source.text) else {
            return Vec::new();
        };
        // The common case, a valid profile, without collecting errors.
        if self.validator.is_valid(&instance) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for error in self.validator.iter_errors(&instance) {
            self.locate_all(&error, source, &mut out, 0);
        }
        out
    }

    /// Pushes the findings of `error`. A value that fits one of several forms by its type (an object
    /// where the forms are "an object …, or null") is explained by that form's own findings
    /// (`/docker/resources/memory: "48" has the wrong form`), not as matching none of the forms.
    fn locate_all(
        &self,
        error: &jsonschema::ValidationError<'_>,
        source: &ProfileSource,
        out: &mut Vec<Located>,
        depth: usize,
    ) {
        use jsonschema::error::ValidationErrorKind as K;
        if let K::AnyOf { context } | K::OneOfNotValid { context } = error.kind()
            && depth < 8
        {
            let here = error.instance_path().as_str();
            let fitting: Vec<&Vec<jsonschema::ValidationError<'static>>> = context
                .iter()
                .filter(|branch| {
                    !branch.iter().any(|e| {
                        e.instance_path().as_str() == here
                            && matches!(
                                e.kind(),
                                K::Type { .. } | K::Constant { .. } | K::Enum { .. }
                            )
                    })
                })
                .collect();
            if let [branch] = fitting.as_slice()
                && !branch.is_empty()
            {
                for inner in branch.iter() {
                    self.locate_all(inner, source, out, depth + 1);
                }
                return;
            }
        }
        let pointer = error.instance_path().as_str().to_string();
        let node = self.node_of(error);
        for (pointer, message) in self.explain(error, &pointer, node) {
            let span = span_of(&source.text, error.instance_path().as_str());
            out.push(Located {
                diag: source.diagnostic(&pointer, message),
                span,
            });
        }
    }

    /// The subschema holding the keyword that failed (`…/minimum` → the subschema with `minimum`).
    fn node_of(&self, error: &jsonschema::ValidationError<'_>) -> Option<&Value> {
        let location = error.absolute_keyword_location()?;
        let fragment = location.fragment()?.as_str();
        let fragment = percent_decode(fragment);
        let parent = match fragment.rfind('/') {
            Some(i) => &fragment[..i],
            None => "",
        };
        self.document.pointer(parent)
    }

    /// What is wrong and what is allowed, per pointer (one error may name several unknown fields).
    fn explain(
        &self,
        error: &jsonschema::ValidationError<'_>,
        pointer: &str,
        node: Option<&Value>,
    ) -> Vec<(String, String)> {
        use jsonschema::error::ValidationErrorKind as K;
        let allowed = match node {
            Some(node) => self.describe(node, 0),
            None => format!("see {}", self.shown),
        };
        let instance = error.instance();
        let message = match error.kind() {
            K::AdditionalProperties { unexpected } => {
                let known: Vec<&str> = node
                    .and_then(|n| n.get("properties"))
                    .and_then(Value::as_object)
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                return unexpected
                    .iter()
                    .map(|field| {
                        let hint =
                            machine_model::suggest::did_you_mean(field, known.iter().copied())
                                .map(|s| format!(" (did you mean \"{s}\"?)"))
                                .unwrap_or_default();
                        (
                            format!("{pointer}/{}", escape_pointer(field)),
                            format!(
                                "unknown field \"{field}\"{hint}; allowed: {}",
                                if known.is_empty() {
                                    "no fields".to_string()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        )
                    })
                    .collect();
            }
            K::Required { property } => {
                format!("missing required field {property}; allowed: {allowed}")
            }
            K::Type { .. } => format!(
                "wrong type: {instance} is {}; allowed: {allowed}",
                kind_of(instance)
            ),
            K::Minimum { limit } | K::ExclusiveMinimum { limit } => {
                format!("{instance} is below the minimum {limit}; allowed: {allowed}")
            }
            K::Maximum { limit } | K::ExclusiveMaximum { limit } => {
                format!("{instance} is above the maximum {limit}; allowed: {allowed}")
            }
            K::Pattern { .. } | K::Format { .. } => {
                format!("{instance} has the wrong form; allowed: {allowed}")
            }
            K::Enum { .. } | K::Constant { .. } => {
                format!("{instance} is not one of the allowed values; allowed: {allowed}")
            }
            K::AnyOf { .. } | K::OneOfNotValid { .. } | K::OneOfMultipleValid { .. } => {
                format!("{instance} matches none of the allowed forms; allowed: {allowed}")
            }
            K::PropertyNames { error: inner } => {
                let allowed = node
                    .and_then(|n| n.get("propertyNames"))
                    .map_or(allowed, |n| self.describe(n, 0));
                let key = inner.instance();
                let at = match key.as_str() {
                    Some(k) => format!("{pointer}/{}", escape_pointer(k)),
                    None => pointer.to_string(),
                };
                return vec![(at, format!("key {key} is invalid; allowed: keys {allowed}"))];
            }
            _ => format!("{error}; allowed: {allowed}"),
        };
        vec![(pointer.to_string(), message)]
    }

    /// What a subschema allows, in words (`an integer from 0 to 64`, `one of "no", "always"`).
    fn describe(&self, node: &Value, depth: usize) -> String {
        if depth > 6 {
            return format!("see {}", self.shown);
        }
        if let Some(target) = node.get("$ref").and_then(Value::as_str) {
            let target = percent_decode(target.trim_start_matches('#'));
            return match self.document.pointer(&target) {
                Some(t) => self.describe(t, depth + 1),
                None => format!("see {}", self.shown),
            };
        }
        if let Some(c) = node.get("const") {
            return c.to_string();
        }
        if let Some(options) = node.get("enum").and_then(Value::as_array) {
            return one_of(options.iter().map(ToString::to_string).collect());
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            if let Some(branches) = node.get(key).and_then(Value::as_array) {
                let parts: Vec<String> = branches
                    .iter()
                    .map(|b| self.describe(b, depth + 1))
                    .collect();
                if key == "allOf" {
                    return parts.join(" and ");
                }
                // A list of constants reads best as one list.
                if branches.iter().all(|b| b.get("const").is_some()) {
                    return one_of(parts);
                }
                return parts.join(", or ");
            }
        }
        let types: Vec<&str> = match node.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let nullable = types.contains(&"null") && types.len() > 1;
        let main = types.iter().find(|t| **t != "null").copied();
        let mut text = match main {
            Some("integer") | Some("number") => {
                let noun = if main == Some("integer") {
                    "an integer"
                } else {
                    "a number"
                };
                let min = node.get("minimum").map(ToString::to_string);
                let max = node.get("maximum").map(ToString::to_string);
                match (min, max) {
                    (Some(a), Some(b)) => format!("{noun} from {a} to {b}"),
                    (Some(a), None) => format!("{noun} of at least {a}"),
                    (None, Some(b)) => format!("{noun} of at most {b}"),
                    (None, None) => noun.to_string(),
                }
            }
            Some("string") => match (
                node.get("pattern").and_then(Value::as_str),
                node.get("format").and_then(Value::as_str),
            ) {
                (Some(p), _) => format!("a string matching {p}"),
                (None, Some("ipv4")) => "an IPv4 address (e.g. 127.0.0.1)".to_string(),
                (None, Some(f)) => format!("a string in the format {f}"),
                (None, None) => "a string".to_string(),
            },
            Some("boolean") => "true or false".to_string(),
            Some("array") => match node.get("items") {
                Some(items) => match self.describe(items, depth + 1).as_str() {
                    "a string" => "a list of strings".to_string(),
                    "an integer" => "a list of integers".to_string(),
                    other => format!("a list, each item {other}"),
                },
                None => "a list".to_string(),
            },
            Some("object") => self.describe_object(node, depth),
            Some(other) => other.to_string(),
            None if types.contains(&"null") => "null".to_string(),
            None if node.get("pattern").is_some() => {
                format!("matching {}", node["pattern"].as_str().unwrap_or_default())
            }
            None => format!("see {}", self.shown),
        };
        if nullable {
            text.push_str(", or null");
        }
        text
    }

    fn describe_object(&self, node: &Value, depth: usize) -> String {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            let required: Vec<&str> = node
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut text = format!(
                "an object with fields {}",
                props.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            if !required.is_empty() {
                let _ = write!(text, " (required: {})", required.join(", "));
            }
            return text;
        }
        match node.get("additionalProperties") {
            Some(values @ Value::Object(_)) => {
                let keys = node
                    .get("propertyNames")
                    .and_then(|p| p.get("pattern"))
                    .and_then(Value::as_str)
                    .map(|p| format!(" with keys matching {p}"))
                    .unwrap_or_default();
                format!(
                    "an object{keys} whose values are {}",
                    self.describe(values, depth + 1)
                )
            }
            _ => "an object".to_string(),
        }
    }
}

fn one_of(options: Vec<String>) -> String {
    format!("one of {}", options.join(", "))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Decodes `%XX` escapes of a URI fragment (the schema's keys are ASCII, but `$schema` is not a
/// plain identifier and may come back encoded).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if bytes[i] == b'%'
            && let Some(Ok(b)) = hex.map(|h| u8::from_str_radix(h, 16))
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The byte offset of a 1-based line and (character) column.
pub(crate) fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            return offset
                + l.char_indices()
                    .nth(column.saturating_sub(1))
                    .map_or(l.len(), |(o, _)| o);
        }
        offset += l.len();
    }
    text.len()
}

/// The byte span of the value at `pointer` (the whole text when it cannot be found).
fn span_of(text: &str, pointer: &str) -> (usize, usize) {
    let (line, column) = locate(text, pointer);
    let start = offset_of(text, line, column);
    let rest = &text[start..];
    let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
    match values.next() {
        Some(Ok(_)) => (start, start + values.byte_offset()),
        _ => (0, text.len()),
    }
}
