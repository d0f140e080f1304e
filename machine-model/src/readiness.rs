//! The readiness check as the ecosystem file writes it (`machine_readiness`): one wire type,
//! [`Readiness`], that the planner fills, the xtask's renderer serialises and the runtime's reader
//! deserialises, with the keys each kind has and its lenient reader (every problem reported).

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::lenient::{SEP, describe, describe_opt};

/// A readiness check as written in the ecosystem file (`machine_readiness`), tagged by `kind`.
/// Times are milliseconds; an absent `interval_ms`/`timeout_ms` takes the runtime's default, an
/// absent tcp `host` is `127.0.0.1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Readiness {
    /// `GET url` answers 2xx.
    Http {
        /// A plain `http://` URL.
        url: String,
        /// Time between the starts of two attempts (ms).
        #[serde(skip_serializing_if = "Option::is_none")]
        interval_ms: Option<u64>,
        /// Time one attempt may take (ms).
        #[serde(skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// A TCP connection succeeds.
    Tcp {
        /// Host name or address.
        #[serde(skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        /// Port, 1-65535.
        port: u16,
        /// Time between the starts of two attempts (ms).
        #[serde(skip_serializing_if = "Option::is_none")]
        interval_ms: Option<u64>,
        /// Time one attempt may take (ms).
        #[serde(skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// The command (program and arguments, no shell) exits 0.
    Command {
        /// Program and arguments, at least the program.
        command: Vec<String>,
        /// Time between the starts of two attempts (ms).
        #[serde(skip_serializing_if = "Option::is_none")]
        interval_ms: Option<u64>,
        /// Time one attempt may take (ms).
        #[serde(skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
}

impl Readiness {
    /// Keys a `machine_readiness` object may have for its `kind` (all kinds' keys when the kind is
    /// unknown): the fields the serialiser writes, plus `kind`.
    pub fn keys(kind: Option<&str>) -> &'static [&'static str] {
        match kind {
            Some("http") => &["kind", "url", "interval_ms", "timeout_ms"],
            Some("tcp") => &["kind", "host", "port", "interval_ms", "timeout_ms"],
            Some("command") => &["kind", "command", "interval_ms", "timeout_ms"],
            _ => &[
                "kind",
                "url",
                "host",
                "port",
                "command",
                "interval_ms",
                "timeout_ms",
            ],
        }
    }

    /// Keys of a `machine_readiness` object that its kind does not read.
    pub fn unknown_keys(value: &Value) -> Vec<&str> {
        let Value::Object(obj) = value else {
            return Vec::new();
        };
        let allowed = Readiness::keys(obj.get("kind").and_then(Value::as_str));
        obj.keys()
            .map(String::as_str)
            .filter(|k| !allowed.contains(k))
            .collect()
    }
}

impl<'de> Deserialize<'de> for Readiness {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        readiness_value(&value).map_err(|m| de::Error::custom(m.join(SEP)))
    }
}

/// A `machine_readiness` object; every problem, each starting with the key it is about.
pub(crate) fn readiness_value(v: &Value) -> Result<Readiness, Vec<String>> {
    let Value::Object(obj) = v else {
        return Err(vec![format!(
            "must be an object with \"kind\" or null, found {}",
            describe(v)
        )]);
    };
    let mut problems = Vec::new();
    let interval_ms = milliseconds(obj, "interval_ms", &mut problems);
    let timeout_ms = milliseconds(obj, "timeout_ms", &mut problems);
    let readiness = match obj.get("kind") {
        Some(Value::String(k)) if k == "http" => http_readiness(obj, interval_ms, timeout_ms),
        Some(Value::String(k)) if k == "tcp" => tcp_readiness(obj, interval_ms, timeout_ms),
        Some(Value::String(k)) if k == "command" => command_readiness(obj, interval_ms, timeout_ms),
        other => Err(vec![format!(
            "\"kind\" must be \"http\", \"tcp\" or \"command\", found {}",
            describe_opt(other)
        )]),
    };
    match readiness {
        Ok(r) if problems.is_empty() => Ok(r),
        Ok(_) => Err(problems),
        Err(more) => {
            problems.extend(more);
            Err(problems)
        }
    }
}

/// The positive number of milliseconds at `key`, `None` when absent or null; `None` with a problem when
/// it is anything else.
fn milliseconds(obj: &Map<String, Value>, key: &str, problems: &mut Vec<String>) -> Option<u64> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().filter(|n| *n > 0) {
            Some(n) => Some(n),
            None => {
                problems.push(format!(
                    "\"{key}\" must be a positive number of milliseconds, found {}",
                    describe(v)
                ));
                None
            }
        },
    }
}

/// The `http` check of `obj`: its `url`.
fn http_readiness(
    obj: &Map<String, Value>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
) -> Result<Readiness, Vec<String>> {
    match obj.get("url") {
        Some(Value::String(url)) => Ok(Readiness::Http {
            url: url.clone(),
            interval_ms,
            timeout_ms,
        }),
        other => Err(vec![format!(
            "\"url\" must be a string for kind \"http\", found {}",
            describe_opt(other)
        )]),
    }
}

/// The `tcp` check of `obj`: its optional `host` and its `port`; a problem for each that is wrong.
fn tcp_readiness(
    obj: &Map<String, Value>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
) -> Result<Readiness, Vec<String>> {
    let host = match obj.get("host") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(h)) if !h.is_empty() => Ok(Some(h.clone())),
        Some(other) => Err(format!(
            "\"host\" must be a non-empty string, found {}",
            describe(other)
        )),
    };
    let port = obj
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            format!(
                "\"port\" must be a port number 1-65535 for kind \"tcp\", found {}",
                describe_opt(obj.get("port"))
            )
        });
    match (host, port) {
        (Ok(host), Ok(port)) => Ok(Readiness::Tcp {
            host,
            port,
            interval_ms,
            timeout_ms,
        }),
        (host, port) => Err(host.err().into_iter().chain(port.err()).collect()),
    }
}

/// The `command` check of `obj`: its `command`, a non-empty list of strings.
fn command_readiness(
    obj: &Map<String, Value>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
) -> Result<Readiness, Vec<String>> {
    match obj.get("command") {
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => {
            Ok(Readiness::Command {
                command: items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                interval_ms,
                timeout_ms,
            })
        }
        other => Err(vec![format!(
            "\"command\" must be a non-empty list of strings for kind \"command\", found {}",
            describe_opt(other)
        )]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_keys_are_what_each_kind_writes() {
        for r in [
            Readiness::Http {
                url: "http://x/".into(),
                interval_ms: Some(1),
                timeout_ms: Some(1),
            },
            Readiness::Tcp {
                host: Some("h".into()),
                port: 1,
                interval_ms: Some(1),
                timeout_ms: Some(1),
            },
            Readiness::Command {
                command: vec!["true".into()],
                interval_ms: Some(1),
                timeout_ms: Some(1),
            },
        ] {
            let value = serde_json::to_value(&r).unwrap();
            let kind = value["kind"].as_str();
            let written: Vec<&str> = value
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(written, Readiness::keys(kind));
            assert!(Readiness::unknown_keys(&value).is_empty());
            assert_eq!(Readiness::deserialize(&value).unwrap(), r);
        }
    }
}
