//! A small YAML writer for JSON-shaped values: block style, every string double-quoted, so nothing is
//! re-typed by YAML 1.1 readers (`22:22`, `yes`, `on`) or 1.2 readers alike. Inside the quotes every
//! character outside YAML 1.2's printable set (§5.1: tab, LF, CR, U+0020–U+007E, U+0085, U+00A0–U+D7FF,
//! U+E000–U+FFFD, U+10000–U+10FFFF) is escaped, as are the characters YAML 1.1 reads as line breaks
//! (U+0085, U+2028, U+2029) and the byte-order mark, so a reader never folds or rejects a value.

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
        Value::String(s) => quoted(s),
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
    if plain { k.to_string() } else { quoted(k) }
}

/// `text` as a YAML 1.2 double-quoted scalar (§7.3.1): `"` and `\` escaped, the named escapes for tab, LF
/// and CR, `\uXXXX` for every other character a reader must not see raw (module doc).
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{20}'..='\u{7e}' | '\u{a0}'..='\u{2027}' | '\u{202a}'..='\u{d7ff}' => out.push(c),
            '\u{e000}'..='\u{fefe}' | '\u{ff00}'..='\u{fffd}' | '\u{10000}'.. => out.push(c),
            other => out.push_str(&format!("\\u{:04X}", u32::from(other))),
        }
    }
    out.push('"');
    out
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

    #[test]
    fn characters_a_reader_rejects_or_folds_are_escaped() {
        let text = to_string(
            &serde_json::json!({"v": "a\u{7f}\u{85}\u{9f}\u{2028}\u{feff}\u{fffe}\u{ffff}\u{1}z"}),
        );
        assert_eq!(
            text,
            "v: \"a\\u007F\\u0085\\u009F\\u2028\\uFEFF\\uFFFE\\uFFFF\\u0001z\"\n"
        );
    }

    /// Strings of any characters, with the ones YAML treats specially (C0 and C1 controls, DEL, NEL, the
    /// Unicode line and paragraph separators, the byte-order mark, the non-characters U+FFFE/U+FFFF,
    /// quotes and backslashes) drawn far more often than uniform sampling would.
    fn tricky_strings() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let special = prop_oneof![
            proptest::char::range('\u{0}', '\u{a0}'),
            proptest::char::range('\u{2028}', '\u{2029}'),
            Just('\u{feff}'),
            proptest::char::range('\u{fffe}', '\u{ffff}'),
            Just('"'),
            Just('\\'),
        ];
        proptest::collection::vec(prop_oneof![any::<char>(), special], 0..24)
            .prop_map(|chars| chars.into_iter().collect())
    }

    proptest::proptest! {
        /// Any string, as a value and as a key, reads back unchanged through a real YAML reader
        /// (libyaml, which rejects non-printable characters).
        #[test]
        fn any_string_round_trips_through_a_yaml_reader(text in tricky_strings()) {
            let value = serde_json::json!({ "v": text.clone(), "list": [text.clone()], text.clone(): 1 });
            let yaml = to_string(&value);
            let back: Value = serde_yaml::from_str(&yaml)
                .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}: {yaml:?}")))?;
            proptest::prop_assert_eq!(back, value);
        }
    }
}
