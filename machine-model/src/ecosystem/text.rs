//! PM2's text forms of values: sizes (`"150M"`), durations (`"10s"`), shell-like argument strings and
//! env values of any JSON type as the text a process gets.

use serde_json::Value;

/// Parses PM2's `max_memory_restart` text: digits, then nothing (bytes) or `K`, `M`, `G` (×1024,
/// ×1024², ×1024³), as PM2's schema (`^\d+(G|M|K)?$`). `None` for anything else.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let (digits, factor) = match text.as_bytes().last()? {
        b'K' => (&text[..text.len() - 1], 1u64 << 10),
        b'M' => (&text[..text.len() - 1], 1 << 20),
        b'G' => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(factor)
}

/// Parses `"1500"`, `"500ms"`, `"10s"`, `"1.5s"`, `"2m"`, `"1h"` into milliseconds.
pub fn parse_millis(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    let ms = number * factor;
    (ms.is_finite() && ms >= 0.0).then(|| ms.round() as u64)
}

/// Splits an argument string like a POSIX shell would, without expansions: whitespace separates
/// words; single quotes keep everything literally; double quotes keep spaces and allow `\"` and
/// `\\`; a backslash outside quotes escapes the next character.
pub fn split_args(text: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    args.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("has an unclosed single quote: {text}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("has an unclosed double quote: {text}")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("has an unclosed double quote: {text}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(format!("ends with a lone backslash: {text}")),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        args.push(word);
    }
    Ok(args)
}

/// An env value as PM2 passes it to the process: strings as they are, everything else as its JSON
/// text (`10`, `true`, `null`, `{"enabled":true}`, `[1,"a"]`); a whole-number float such as `10.0`
/// is `10`, as in JavaScript.
pub fn env_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() && f.fract() == 0.0 && f.abs() < 1e15 => {
                format!("{}", f as i64)
            }
            _ => n.to_string(),
        },
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_argument_strings_like_a_shell() {
        assert_eq!(split_args("a  b\tc").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            split_args("--x 'a b' \"c d\" e\\ f").unwrap(),
            ["--x", "a b", "c d", "e f"]
        );
        assert_eq!(split_args("'it'\\''s'").unwrap(), ["it's"]);
        assert_eq!(
            split_args("\"say \\\"hi\\\"\" ''").unwrap(),
            ["say \"hi\"", ""]
        );
        assert_eq!(split_args("").unwrap(), Vec::<String>::new());
        assert!(
            split_args("'open")
                .unwrap_err()
                .contains("unclosed single quote")
        );
        assert!(
            split_args("\"open")
                .unwrap_err()
                .contains("unclosed double quote")
        );
    }

    #[test]
    fn parses_durations_in_milliseconds() {
        assert_eq!(parse_millis("1500"), Some(1500));
        assert_eq!(parse_millis("500ms"), Some(500));
        assert_eq!(parse_millis("10s"), Some(10000));
        assert_eq!(parse_millis("1.5s"), Some(1500));
        assert_eq!(parse_millis("2m"), Some(120000));
        assert_eq!(parse_millis("1h"), Some(3600000));
        assert_eq!(parse_millis("10 s"), Some(10000));
        assert_eq!(parse_millis("ten"), None);
        assert_eq!(parse_millis("5d"), None);
        assert_eq!(parse_millis("-1"), None);
    }
}
