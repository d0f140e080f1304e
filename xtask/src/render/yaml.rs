//! A small YAML writer for JSON-shaped values: block style, every string double-quoted (JSON escapes are
//! valid YAML), so nothing is re-typed by YAML 1.1 readers (`22:22`, `yes`, `on`) or 1.2 readers alike.

use serde_json::Value;

/// Renders `value` (an object) as a YAML document body.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    block(&mut out, value, 0);
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => serde_json::to_string(s).expect("strings serialise"),
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(o) if o.is_empty() => "{}".into(),
        _ => unreachable!("collections are written as blocks"),
    }
}

fn is_block(v: &Value) -> bool {
    matches!(v, Value::Array(a) if !a.is_empty()) || matches!(v, Value::Object(o) if !o.is_empty())
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && k.as_bytes()[0].is_ascii_alphabetic()
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    if plain {
        k.to_string()
    } else {
        serde_json::to_string(k).expect("strings serialise")
    }
}

fn block(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                if is_block(child) {
                    out.push_str(&format!("{pad}{}:\n", key(k)));
                    block(out, child, indent + 2);
                } else {
                    out.push_str(&format!("{pad}{}: {}\n", key(k), scalar(child)));
                }
            }
        }
        Value::Array(a) => {
            for child in a {
                if is_block(child) {
                    // The first line of the child block goes after "- ".
                    let mut inner = String::new();
                    block(&mut inner, child, indent + 2);
                    let inner = inner.trim_start();
                    out.push_str(&format!("{pad}- {inner}"));
                } else {
                    out.push_str(&format!("{pad}- {}\n", scalar(child)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_yaml_reader_with_traps_quoted() {
        let value = serde_json::json!({
            "name": "x",
            "ports": [{"target": 22, "published": 22}],
            "trap": ["22:22", "yes", "on", "0755", "", "a\"b\\c\n"],
            "yes": true,
            "empty": {}, "none": [], "null": null,
            "nested": [[1, 2], {"a": {"b": [3]}}]
        });
        let text = to_string(&value);
        assert!(
            text.contains("- \"22:22\"\n") && text.contains("\"yes\": true\n"),
            "{text}"
        );
        let back: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, value, "{text}");
    }
}
