//! Job throughput and claim latency through one simulation-websocket worker: a real redis-server with
//! the test `findMatchingJob` loaded, the `simulation` service (`machine-simulate`) and
//! the stand-in worker bundle run by node, with jobs pushed the way the API pushes them.
//!
//! Run: `cargo bench -p machine-runtime --bench jobs [-- --jobs 200 --samples 20 --poll 1000,100 --processing-ms 0]`
//!
//! Figures, per `POLL_INTERVAL_MS`: jobs per second for a batch pushed at once (first submit to the last
//! `completed_at`), and, for jobs submitted one at a time to an idle worker at a random moment of its
//! poll cycle, the claim latency (submit to the Lua claim's `assigned_at`) and the end-to-end latency
//! (submit to `completed_at`), median and 95th percentile. Needs `redis-server` (≥ 7) and `node` on
//! PATH. A benchmark prints figures; it asserts nothing about them.

// Spawning tools (redis-server, node, docker, git, the runtime binary) is the point here; the
// runtime's own children go through machine_runtime::command::new_child (clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

const SIMULATE: &str = env!("CARGO_BIN_EXE_machine-simulate");
/// Longest any one wait may take before the run is declared broken.
const LIMIT: Duration = Duration::from_secs(300);

/// Kills and reaps a child when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Options {
    jobs: usize,
    samples: usize,
    polls: Vec<u64>,
    processing_ms: u64,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut options = Options {
        jobs: 200,
        samples: 20,
        polls: vec![1000, 100],
        processing_ms: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().with_context(|| format!("{arg} needs {what}"));
        match arg.as_str() {
            "--jobs" => options.jobs = value("a count")?.parse()?,
            "--samples" => options.samples = value("a count")?.parse()?,
            "--processing-ms" => options.processing_ms = value("milliseconds")?.parse()?,
            "--poll" => {
                options.polls = value("a list like 1000,100")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            // cargo bench passes --bench.
            "--bench" => {}
            other => bail!(
                "unknown argument {other}; expected --jobs N, --samples N, --poll MS[,MS], --processing-ms MS"
            ),
        }
    }
    Ok(options)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Seconds since the epoch of an ISO 8601 UTC time such as `2026-11-30T17:04:00.903Z`.
fn iso_to_s(text: &str) -> anyhow::Result<f64> {
    let bad = || format!("not an ISO UTC time: {text}");
    let (date, time) = text.split_once('T').with_context(bad)?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(day))) = (d.next(), d.next(), d.next()) else {
        bail!(bad());
    };
    let time = time.trim_end_matches('Z');
    let mut t = time.split(':');
    let (Some(h), Some(min), Some(s)) = (t.next(), t.next(), t.next()) else {
        bail!(bad());
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    #[allow(clippy::cast_precision_loss)]
    Ok(days as f64 * 86_400.0
        + h.parse::<f64>().with_context(bad)? * 3600.0
        + min.parse::<f64>().with_context(bad)? * 60.0
        + s.parse::<f64>().with_context(bad)?)
}

fn start_redis(dir: &Path) -> anyhow::Result<(Owned, String)> {
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("redis-server (apt-get install redis-server)")?;
    let child = Owned(child);
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Ok(mut conn) = redis::Client::open(url.as_str())?.get_connection()
            && redis::cmd("PING").query::<String>(&mut conn).is_ok()
        {
            return Ok((child, url));
        }
        if Instant::now() > deadline {
            bail!("redis-server on {port} did not answer");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_service() -> anyhow::Result<(Owned, String)> {
    let mut child = Command::new(SIMULATE)
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("service stdout")?;
    let child = Owned(child);
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next().context("service start line")??;
    let addr = line
        .strip_prefix("simulation service listening on ")
        .with_context(|| format!("unexpected start line {line}"))?
        .to_owned();
    // Keep reading so the service never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((child, addr))
}

fn start_worker(
    bundle: &Path,
    redis_url: &str,
    ws: &str,
    poll_ms: u64,
    id: &str,
) -> anyhow::Result<Owned> {
    let child = Command::new("node")
        .arg("redis-direct-worker.js")
        .current_dir(bundle)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WORKERS", "simulation-websocket")
        .env("CONNECTORS", "simulation-websocket")
        .env("WORKER_ID", id)
        .env("MACHINE_ID", "bench")
        .env("HUB_REDIS_URL", redis_url)
        .env("UNIFIED_MACHINE_STATUS", "true")
        .env("POLL_INTERVAL_MS", poll_ms.to_string())
        .env("SIMULATION_WEBSOCKET_URL", format!("ws://{ws}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("node (install nodejs ≥ 18)")?;
    Ok(Owned(child))
}

/// Pushes one job as the API does (hash, then ZADD with `priority·10^15 − floor(created_s)`); returns the submit time.
fn push(conn: &mut redis::Connection, id: &str, processing_ms: u64) -> anyhow::Result<f64> {
    let submitted = now_s();
    let created = chrono_like(submitted);
    let payload = serde_json::json!({"steps": 1, "processing_time_ms": processing_ms}).to_string();
    let () = redis::pipe()
        .atomic()
        .hset_multiple(
            format!("job:{id}"),
            &[
                ("id", id),
                ("service_required", "simulation"),
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

/// An ISO 8601 UTC string for epoch seconds (what the API writes to `created_at`).
fn chrono_like(epoch_s: f64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(epoch_s.max(0.0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// Waits until `job:<id>` is completed; returns (assigned_at, completed_at) in epoch seconds.
fn wait_completed(conn: &mut redis::Connection, id: &str) -> anyhow::Result<(f64, f64)> {
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
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

fn summary(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        percentile(&values, 50.0) * 1000.0,
        percentile(&values, 95.0) * 1000.0,
    )
}

fn main() -> anyhow::Result<()> {
    let options = parse_args()?;
    let bundle = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/worker-bundle");
    let lua = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/redis/job-matching.lua"),
    )?;
    let dir = tempfile::tempdir()?;
    let (_redis, url) = start_redis(dir.path())?;
    let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&lua)
        .query(&mut conn)?;
    let (_service, addr) = start_service()?;
    println!(
        "one simulation-websocket worker (stand-in bundle, node {}), simulation service on {addr}, jobs of {} ms, 1 step",
        String::from_utf8_lossy(&Command::new("node").arg("--version").output()?.stdout).trim(),
        options.processing_ms
    );
    println!(
        "{:>8} {:>6} {:>8} {:>11} {:>11} {:>10} {:>10}",
        "poll_ms", "jobs", "jobs/s", "claim p50", "claim p95", "e2e p50", "e2e p95"
    );
    // A fixed-seed generator for the submit moments, so runs are comparable.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for (round, &poll) in options.polls.iter().enumerate() {
        let worker_id = format!("bench-worker-simulation-websocket-{round}");
        let _worker = start_worker(&bundle, &url, &addr, poll, &worker_id)?;
        // Warm up: the first job also waits for the worker's start and its WebSocket connection.
        push(&mut conn, &format!("warm-{round}"), options.processing_ms)?;
        wait_completed(&mut conn, &format!("warm-{round}"))?;

        let mut claims = Vec::new();
        let mut e2e = Vec::new();
        for sample in 0..options.samples {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            std::thread::sleep(Duration::from_millis((seed >> 33) % poll.max(1)));
            let id = format!("lat-{round}-{sample}");
            let submitted = push(&mut conn, &id, options.processing_ms)?;
            let (assigned, completed) = wait_completed(&mut conn, &id)?;
            claims.push(assigned - submitted);
            e2e.push(completed - submitted);
        }

        let first = now_s();
        let ids: Vec<String> = (0..options.jobs)
            .map(|i| format!("tp-{round}-{i}"))
            .collect();
        for id in &ids {
            push(&mut conn, id, options.processing_ms)?;
        }
        let mut last = first;
        for id in &ids {
            last = last.max(wait_completed(&mut conn, id)?.1);
        }
        #[allow(clippy::cast_precision_loss)]
        let rate = options.jobs as f64 / (last - first);
        let (claim50, claim95) = summary(claims);
        let (e2e50, e2e95) = summary(e2e);
        println!(
            "{poll:>8} {:>6} {rate:>8.2} {claim50:>8.1} ms {claim95:>8.1} ms {e2e50:>7.1} ms {e2e95:>7.1} ms",
            options.jobs
        );
    }
    Ok(())
}
