//! Pieces the job benchmarks share: a throwaway redis-server with the test `findMatchingJob`, jobs
//! pushed as the API pushes them, times and percentiles.

// Spawning tools (redis-server, node, the runtime binary) is the point of a benchmark; the runtime's
// own children go through machine_runtime::command::new_child (clippy.toml).
#![allow(clippy::disallowed_methods, dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

/// Longest any one wait may take before the run is declared broken.
pub const LIMIT: Duration = Duration::from_secs(300);

/// Kills and reaps a child when dropped.
pub struct Owned(pub Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on loopback (the OS's choice; a race with another process is possible but rare).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Seconds since the epoch.
pub fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A redis-server on a free loopback port, no persistence, with the test `findMatchingJob`
/// (`tests/fixtures/redis/job-matching.lua`) loaded; returns it and its URL.
pub fn start_redis(dir: &Path) -> anyhow::Result<(Owned, String)> {
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--maxclients", "20000"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("redis-server (apt-get install redis-server)")?;
    let child = Owned(child);
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + LIMIT;
    let mut conn = loop {
        if let Ok(mut conn) = redis::Client::open(url.as_str())?.get_connection()
            && redis::cmd("PING").query::<String>(&mut conn).is_ok()
        {
            break conn;
        }
        if Instant::now() > deadline {
            bail!("redis-server on {port} did not answer");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let lua = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/redis/job-matching.lua"),
    )?;
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&lua)
        .query(&mut conn)?;
    Ok((child, url))
}

/// Pushes one job as the API does (hash, then ZADD with `priority·10^15 − floor(created_s)`);
/// returns the submit time in epoch seconds.
pub fn push(
    conn: &mut redis::Connection,
    id: &str,
    service_required: &str,
    payload: &serde_json::Value,
) -> anyhow::Result<f64> {
    let submitted = now_s();
    let created = iso_of(submitted);
    let payload = payload.to_string();
    let () = redis::pipe()
        .atomic()
        .hset_multiple(
            format!("job:{id}"),
            &[
                ("id", id),
                ("service_required", service_required),
                ("priority", "50"),
                ("payload", payload.as_str()),
                ("requirements", ""),
                ("customer_id", ""),
                ("created_at", created.as_str()),
                ("status", "pending"),
                ("retry_count", "0"),
                ("max_retries", "3"),
            ],
        )
        .ignore()
        .zadd("jobs:pending", id, 50e15 - submitted.floor())
        .ignore()
        .query(conn)?;
    Ok(submitted)
}

/// An ISO 8601 UTC string with milliseconds for epoch seconds (what the API writes to `created_at`).
pub fn iso_of(epoch_s: f64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs_f64(epoch_s.max(0.0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// Epoch seconds of an RFC 3339 UTC time such as `2026-11-30T17:04:00.903Z`.
pub fn iso_to_s(text: &str) -> anyhow::Result<f64> {
    let at = humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .with_context(|| format!("not an ISO UTC time: {text}"))?;
    Ok(at.duration_since(UNIX_EPOCH)?.as_secs_f64())
}

/// Waits until `job:<id>` is completed; returns (assigned_at, completed_at) in epoch seconds.
pub fn wait_completed(conn: &mut redis::Connection, id: &str) -> anyhow::Result<(f64, f64)> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let (status, assigned, completed): (Option<String>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(format!("job:{id}"))
                .arg("status")
                .arg("assigned_at")
                .arg("completed_at")
                .query(conn)?;
        if status.as_deref() == Some("completed") {
            let assigned: f64 = assigned.context("assigned_at")?.parse()?;
            return Ok((assigned, iso_to_s(&completed.context("completed_at")?)?));
        }
        if status.as_deref() == Some("failed") {
            bail!("job {id} failed");
        }
        if Instant::now() > deadline {
            bail!("job {id} not completed within {LIMIT:?} (status {status:?})");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The `p`th percentile (nearest rank) of sorted values; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// (p50, p95) in milliseconds of values in seconds.
pub fn p50_p95_ms(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        percentile(&values, 50.0) * 1000.0,
        percentile(&values, 95.0) * 1000.0,
    )
}

/// Resident set size of one process in KiB (`VmRSS` of `/proc/<pid>/status`); 0 when it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
