//! Reads an app leniently, the way PM2 does: [`read_app`] reads every field on its own, so all wrong
//! fields are reported at once; the field readers (named in [`App`]'s `deserialize_with`) each take
//! the JSON value and say what they want when it has another shape (the message starts with a verb;
//! the caller prefixes app and field).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_json::{Map, Value};

use super::text::{env_text, parse_bytes, parse_millis, split_args};
use super::{App, Instances, Millis, Role, SIGNAL_NAMES};
use crate::catalog::Binding;
use crate::lenient::{SEP, describe};
use crate::readiness::{Readiness, readiness_value};

/// One field of an app that does not have the shape its reader wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// The field's name (one of [`App::fields`]).
    pub field: &'static str,
    /// What is wrong, starting with a verb (`must be a string, found 1`).
    pub message: String,
}

/// Reads one app object: the [`App`] made of every field whose shape is right, and one
/// [`FieldProblem`] per thing wrong (in field order; a field may have several). Keys that are not
/// fields of [`App`] are not read (see [`App::fields`] for the known ones); a value that is not an
/// object reads as an empty app (the caller says what it is).
pub fn read_app(value: &Value) -> (App, Vec<FieldProblem>) {
    // serde's derive would also read a list positionally; an app is an object.
    let Value::Object(obj) = value else {
        return (App::default(), Vec::new());
    };
    if let Ok(app) = App::deserialize(value) {
        return (app, Vec::new());
    }
    let mut problems = Vec::new();
    let mut good = Map::new();
    for &field in App::fields() {
        let Some(v) = obj.get(field) else { continue };
        let one = Value::Object(Map::from_iter([(field.to_string(), v.clone())]));
        match App::deserialize(&one) {
            Ok(_) => {
                good.insert(field.to_string(), v.clone());
            }
            Err(e) => problems.extend(e.to_string().split(SEP).map(|m| FieldProblem {
                field,
                message: m.to_string(),
            })),
        }
    }
    // Fields are read independently, so the good ones together read too.
    let app = App::deserialize(&Value::Object(good)).unwrap_or_default();
    (app, problems)
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        with(d, millis_value)
    }
}

impl<'de> Deserialize<'de> for Instances {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        with(d, instances_value)
    }
}

/// Reads a value through `f`, turning its messages into one serde error.
pub fn with<'de, D: Deserializer<'de>, T>(
    d: D,
    f: impl FnOnce(&Value) -> Result<T, String>,
) -> Result<T, D::Error> {
    let value = Value::deserialize(d)?;
    f(&value).map_err(de::Error::custom)
}

pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    with(d, |v| match v {
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(format!("must be a string, found {}", describe(other))),
    })
}

pub(crate) fn string_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    with(d, |v| match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(format!(
            "must be a string or null, found {}",
            describe(other)
        )),
    })
}

fn bool_value(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("must be true or false, found {}", describe(v)))
}

pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    with(d, |v| bool_value(v).map(Some))
}

pub(crate) fn bool_or_false<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    with(d, bool_value)
}

fn uint_value(v: &Value) -> Result<u32, String> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("must be a non-negative integer, found {}", describe(v)))
}

pub(crate) fn uint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    with(d, |v| uint_value(v).map(Some))
}

pub(crate) fn uint_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    with(d, |v| match v {
        Value::Null => Ok(None),
        v => uint_value(v).map(Some),
    })
}

pub(crate) fn signal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    with(d, |v| match v {
        Value::String(s) if SIGNAL_NAMES.contains(&s.as_str()) => Ok(Some(s.clone())),
        other => Err(format!(
            "must be a signal name ({}), found {}",
            SIGNAL_NAMES.join(", "),
            describe(other)
        )),
    })
}

pub(crate) fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    with(d, |v| {
        let parsed = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => parse_bytes(s),
            _ => None,
        };
        parsed.filter(|n| *n > 0).map(Some).ok_or_else(|| {
            format!(
                "must be a size as PM2 writes it: bytes as a number, or a string like \"150M\", \"1G\", \"512K\", \"1048576\" (K, M, G are powers of 1024), found {}",
                describe(v)
            )
        })
    })
}

pub fn port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    with(d, |v| match v {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|p| *p > 0)
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "must be a port number 1-65535 or null, found {}",
                    describe(v)
                )
            }),
    })
}

pub(crate) fn millis_value(v: &Value) -> Result<Millis, String> {
    let parsed = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => parse_millis(s),
        _ => None,
    };
    parsed.map(Millis).ok_or_else(|| {
        format!(
            "must be milliseconds as a number or a string like \"500ms\", \"10s\", \"2m\", found {}",
            describe(v)
        )
    })
}

pub(crate) fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
    with(d, |v| millis_value(v).map(Some))
}

pub(crate) fn instances_value(v: &Value) -> Result<Instances, String> {
    match v {
        Value::String(s) if s == "max" => Ok(Instances::Max),
        Value::String(s) if s.trim().parse::<i64>().is_ok() => {
            Ok(Instances::Count(s.trim().parse::<i64>().unwrap_or(1)))
        }
        Value::Number(n) if n.as_i64().is_some() => Ok(Instances::Count(n.as_i64().unwrap_or(1))),
        other => Err(format!(
            "must be a whole number of processes or \"max\", found {}",
            describe(other)
        )),
    }
}

pub fn instances<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Instances>, D::Error> {
    with(d, |v| match v {
        Value::Null => Ok(None),
        v => instances_value(v).map(Some),
    })
}

fn args_value(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::String(s) => split_args(s),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                // PM2 passes numbers through as their text.
                Value::Number(n) => Ok(n.to_string()),
                other => Err(format!(
                    "item {} must be a string, found {}",
                    i + 1,
                    describe(other)
                )),
            })
            .collect(),
        other => Err(format!(
            "must be a string or a list of strings, found {}",
            describe(other)
        )),
    }
}

pub fn args<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    with(d, args_value)
}

pub(crate) fn some_args<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    with(d, |v| args_value(v).map(Some))
}

pub(crate) fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    with(d, |v| match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "item {} must be a string, found {}",
                    i + 1,
                    describe(other)
                )),
            })
            .collect(),
        other => Err(format!(
            "must be a list of strings, found {}",
            describe(other)
        )),
    })
}

pub(crate) fn exit_codes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<i32>>, D::Error> {
    let value = Value::deserialize(d)?;
    let items: Vec<&Value> = match &value {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    let mut codes = Vec::new();
    let mut problems = Vec::new();
    for item in items {
        match item.as_i64().and_then(|n| i32::try_from(n).ok()) {
            Some(code) => codes.push(code),
            None => problems.push(format!(
                "must be an exit code or a list of exit codes, found {}",
                describe(item)
            )),
        }
    }
    if problems.is_empty() {
        Ok(Some(codes))
    } else {
        Err(de::Error::custom(problems.join(SEP)))
    }
}

pub fn env<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let value = Value::deserialize(d)?;
    let Value::Object(map) = &value else {
        // Only the type: an env written as one string may hold secrets.
        let found = match &value {
            Value::String(_) => "a string".to_string(),
            other => describe(other),
        };
        return Err(de::Error::custom(format!(
            "must be an object of variables ({{\"NAME\": \"value\"}}), found {found}"
        )));
    };
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (key, value) in map {
        let text = env_text(value);
        if key.is_empty() || key.contains('=') || key.contains('\0') || text.contains('\0') {
            problems.push(format!(
                "has an invalid variable name or value for \"{key}\""
            ));
            continue;
        }
        out.insert(key.clone(), text);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(de::Error::custom(problems.join(SEP)))
    }
}

pub fn role<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Role>, D::Error> {
    with(d, |v| match v {
        Value::Null => Ok(None),
        Value::String(s) if s == "service" => Ok(Some(Role::Service)),
        Value::String(s) if s == "worker" => Ok(Some(Role::Worker)),
        Value::String(s) => Err(format!("must be \"service\" or \"worker\", found \"{s}\"")),
        other => Err(format!(
            "must be a string or null, found {}",
            describe(other)
        )),
    })
}

pub fn binding<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Binding>, D::Error> {
    with(d, |v| match v {
        Value::Null => Ok(None),
        Value::String(s) => Binding::from_name(s)
            .map(Some)
            .ok_or_else(|| format!("must be \"gpu\", \"cpu\" or \"shared\", found \"{s}\"")),
        other => Err(format!(
            "must be a string or null, found {}",
            describe(other)
        )),
    })
}

pub fn readiness<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Readiness>, D::Error> {
    let value = Value::deserialize(d)?;
    match value {
        Value::Null => Ok(None),
        v => readiness_value(&v)
            .map(Some)
            .map_err(|m| de::Error::custom(m.join(SEP))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn read_app_reports_each_wrong_field_and_keeps_the_rest() {
        let (app, problems) = read_app(&json!({
            "name": "a", "script": 1, "autorestart": "yes", "stop_exit_codes": [0, "x", 1.5],
            "machine_gpu": 2
        }));
        assert_eq!(app.name.as_deref(), Some("a"));
        assert_eq!(app.machine_gpu, Some(2));
        assert_eq!((app.script, app.autorestart), (None, None));
        let found: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect();
        assert_eq!(
            found,
            [
                "script: must be a string, found 1",
                "autorestart: must be true or false, found \"yes\"",
                "stop_exit_codes: must be an exit code or a list of exit codes, found \"x\"",
                "stop_exit_codes: must be an exit code or a list of exit codes, found 1.5",
            ]
        );
    }
}
