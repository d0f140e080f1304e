//! Broker preflight: is this Redis the job broker's (version 7 or later, `findMatchingJob` loaded)?

use redis::Value;
use redis::aio::MultiplexedConnection;

/// The Redis function idle workers call (`FCALL findMatchingJob 0 <capabilities> 100`) to claim jobs.
pub const MATCH_FUNCTION: &str = "findMatchingJob";

/// What the preflight found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PreflightReport {
    /// `redis_version` from `INFO server`, if it could be read.
    pub redis_version: Option<String>,
    /// Each problem in one sentence; empty when the broker is usable.
    pub problems: Vec<String>,
}

impl PreflightReport {
    /// Whether nothing is wrong.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// The loud warning, one line per entry, for the log.
    pub(crate) fn warning_lines(&self, url: &str) -> Vec<String> {
        let rule = "-".repeat(78);
        let mut lines = vec![
            rule.clone(),
            format!("WARNING: the redis at {url} does not look like a working job broker:"),
        ];
        lines.extend(self.problems.iter().map(|p| format!("  - {p}")));
        lines.push(
            "workers on this machine will start and heartbeat, but they would NEVER receive a job."
                .to_owned(),
        );
        lines.push(
            "fix: point HUB_REDIS_URL at the job broker's redis, or let the api load its redis functions there;"
                .to_owned(),
        );
        lines.push(
            "set BROKER_PREFLIGHT=require to refuse to start in this case, or BROKER_PREFLIGHT=off to skip the check"
                .to_owned(),
        );
        lines.push(rule);
        lines
    }
}

/// Runs `INFO server` and `FUNCTION LIST`; errors are connection or protocol failures, while an old
/// version or a missing function are problems in the report.
pub async fn run(conn: &mut MultiplexedConnection) -> Result<PreflightReport, redis::RedisError> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    let redis_version = parse_version_line(&info);
    let mut problems = Vec::new();
    match redis_version.as_deref().map(major_version) {
        Some(Some(major)) if major >= 7 => {}
        Some(_) => problems.push(format!(
            "redis {} is older than 7: the job broker matches jobs with a redis function, which needs redis 7 or later",
            redis_version.as_deref().unwrap_or("?")
        )),
        None => problems.push("INFO server did not report redis_version".to_owned()),
    }
    let listed: Result<Value, _> = redis::cmd("FUNCTION").arg("LIST").query_async(conn).await;
    match listed {
        Ok(value) => {
            if !lists_function(&value, MATCH_FUNCTION) {
                problems.push(format!(
                    "redis function {MATCH_FUNCTION} is not loaded (FUNCTION LIST does not show it): idle workers call FCALL {MATCH_FUNCTION} every second to claim jobs"
                ));
            }
        }
        Err(err) if !super::link::is_link_failure(&err) => problems.push(format!(
            "FUNCTION LIST failed ({err}), so {MATCH_FUNCTION} cannot be present: idle workers call FCALL {MATCH_FUNCTION} to claim jobs"
        )),
        Err(err) => return Err(err),
    }
    Ok(PreflightReport {
        redis_version,
        problems,
    })
}

fn parse_version_line(info: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
}

fn major_version(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

/// Whether a `FUNCTION LIST` reply names function `name`: somewhere a `name` key followed by it.
///
/// The reply is a list of libraries, each a flat key/value list (RESP2) or a map (RESP3), whose
/// `functions` entry is again such a list; walking it generically covers both encodings.
fn lists_function(value: &Value, name: &str) -> bool {
    let is = |v: &Value, text: &str| match v {
        Value::BulkString(bytes) => bytes == text.as_bytes(),
        Value::SimpleString(s) => s == text,
        _ => false,
    };
    match value {
        Value::Array(items) | Value::Set(items) => {
            items
                .windows(2)
                .any(|pair| is(&pair[0], "name") && is(&pair[1], name))
                || items.iter().any(|item| lists_function(item, name))
        }
        Value::Map(pairs) => pairs
            .iter()
            .any(|(k, v)| (is(k, "name") && is(v, name)) || lists_function(v, name)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_versions() {
        assert_eq!(
            parse_version_line("# Server\r\nredis_version:7.0.15\r\nfoo:1\r\n").as_deref(),
            Some("7.0.15")
        );
        assert_eq!(major_version("6.2.1"), Some(6));
        assert_eq!(major_version("x"), None);
    }

    #[test]
    fn finds_the_function_in_resp2_and_resp3_replies() {
        let function = Value::Array(vec![
            bulk("name"),
            bulk("findMatchingJob"),
            bulk("flags"),
            Value::Array(vec![]),
        ]);
        let library = Value::Array(vec![
            bulk("library_name"),
            bulk("jobs"),
            bulk("functions"),
            Value::Array(vec![function]),
        ]);
        assert!(lists_function(
            &Value::Array(vec![library.clone()]),
            MATCH_FUNCTION
        ));
        assert!(!lists_function(&Value::Array(vec![library]), "other"));
        // A library *named* findMatchingJob is not the function.
        let decoy = Value::Array(vec![
            bulk("library_name"),
            bulk("findMatchingJob"),
            bulk("functions"),
            Value::Array(vec![]),
        ]);
        assert!(!lists_function(&Value::Array(vec![decoy]), MATCH_FUNCTION));
        let map = Value::Map(vec![(
            bulk("functions"),
            Value::Array(vec![Value::Map(vec![(
                bulk("name"),
                bulk("findMatchingJob"),
            )])]),
        )]);
        assert!(lists_function(&Value::Array(vec![map]), MATCH_FUNCTION));
        assert!(!lists_function(&Value::Array(vec![]), MATCH_FUNCTION));
    }
}
