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
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

mod common;
use common::{Owned, now_s, p50_p95_ms, push, start_redis, wait_completed};

const SIMULATE: &str = env!("CARGO_BIN_EXE_machine-simulate");

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

/// A simulation job of one step lasting `processing_ms`.
fn job_payload(processing_ms: u64) -> serde_json::Value {
    serde_json::json!({"steps": 1, "processing_time_ms": processing_ms})
}

fn main() -> anyhow::Result<()> {
    let options = parse_args()?;
    let bundle = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/worker-bundle");
    let dir = tempfile::tempdir()?;
    let (_redis, url) = start_redis(dir.path())?;
    let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
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
        push(
            &mut conn,
            &format!("warm-{round}"),
            "simulation",
            &job_payload(options.processing_ms),
        )?;
        wait_completed(&mut conn, &format!("warm-{round}"))?;

        let mut claims = Vec::new();
        let mut e2e = Vec::new();
        for sample in 0..options.samples {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            std::thread::sleep(Duration::from_millis((seed >> 33) % poll.max(1)));
            let id = format!("lat-{round}-{sample}");
            let submitted = push(
                &mut conn,
                &id,
                "simulation",
                &job_payload(options.processing_ms),
            )?;
            let (assigned, completed) = wait_completed(&mut conn, &id)?;
            claims.push(assigned - submitted);
            e2e.push(completed - submitted);
        }

        let first = now_s();
        let ids: Vec<String> = (0..options.jobs)
            .map(|i| format!("tp-{round}-{i}"))
            .collect();
        for id in &ids {
            push(
                &mut conn,
                id,
                "simulation",
                &job_payload(options.processing_ms),
            )?;
        }
        let mut last = first;
        for id in &ids {
            last = last.max(wait_completed(&mut conn, id)?.1);
        }
        #[allow(clippy::cast_precision_loss)]
        let rate = options.jobs as f64 / (last - first);
        let (claim50, claim95) = p50_p95_ms(claims);
        let (e2e50, e2e95) = p50_p95_ms(e2e);
        println!(
            "{poll:>8} {:>6} {rate:>8.2} {claim50:>8.1} ms {claim95:>8.1} ms {e2e50:>7.1} ms {e2e95:>7.1} ms",
            options.jobs
        );
    }
    Ok(())
}
