//! What the lenient JSON readers (the ecosystem file's fields, its readiness checks) share: how a found
//! value is described in a message, and the separator that carries several messages about one field
//! inside one serde error. Leaf module.

use serde_json::Value;

/// Separates several messages about one field inside one serde error.
pub(crate) const SEP: &str = "\u{1f}";

/// Describes a JSON value for a message: `null`, `true`, `3`, `"text"`, `a list`, `an object`.
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("\"{s}\""),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// [`describe`] for a value that may be absent (`nothing`).
pub(crate) fn describe_opt(value: Option<&Value>) -> String {
    value.map(describe).unwrap_or_else(|| "nothing".to_string())
}
