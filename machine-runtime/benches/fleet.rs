//! What a fleet costs its broker: N machines (this runtime, each with the stand-in worker bundle's
//! mock workers) against one redis-server, for N = 1, 10, 50, 200 by default.
//!
//! Run: `cargo bench -p machine-runtime --bench fleet [-- --machines 1,10,50,200 --workers 1 --window-s 30 --jobs-per-s R]`
//!
//! Per N, over a measuring window once every worker heartbeats: Redis commands per second
//! (`INFO stats`), Redis CPU (`INFO cpu`, user + system, as a share of one core), status messages
//! per second (a `PSUBSCRIBE machine:status:*` as the API keeps one), lease renewals per second
//! (`PEXPIRE` calls in `INFO commandstats`: the renewal script's), the commands Redis spent most time
//! in (calls per second and microseconds per call, what an extrapolation needs), claim latency
//! p50/p95 of mock jobs pushed the way the API pushes them at a steady rate well below the fleet's
//! capacity (submit to the claim's `assigned_at`), Redis' memory and connected clients, and each machine's own RSS (the runtime; the node workers apart). Each N gets a
//! fresh redis-server. Needs `redis-server` (≥ 7) and `node` on PATH. A benchmark prints figures;
//! it asserts nothing about them. On a 2-core host the machines themselves compete with Redis for
//! the CPU from N = 50 on: read Redis' own CPU, not the latencies, as the broker's cost there.

// Spawning tools (redis-server, node, the runtime binary) is the point here; the runtime's own
// children go through machine_runtime::command::new_child (clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod common;
use common::{LIMIT, Owned, now_s, p50_p95_ms, push, rss_kib, start_redis};

const RUNTIME: &str = env!("CARGO_BIN_EXE_machine-runtime");

struct Options {
    machines: Vec<usize>,
    workers: usize,
    window: Duration,
    /// Fixed rate; `None`: 0.4 jobs/s per worker (well below what a worker polling every second
    /// can take), at most 10/s, so the latency is the claim's, not a queue's.
    jobs_per_s: Option<f64>,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut options = Options {
        machines: vec![1, 10, 50, 200],
        workers: 1,
        window: Duration::from_secs(30),
        jobs_per_s: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().with_context(|| format!("{arg} needs {what}"));
        match arg.as_str() {
            "--machines" => {
                options.machines = value("a list like 1,10,50")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--workers" => options.workers = value("a count")?.parse()?,
            "--window-s" => options.window = Duration::from_secs(value("seconds")?.parse()?),
            "--jobs-per-s" => options.jobs_per_s = Some(value("a rate")?.parse()?),
            // cargo bench passes --bench.
            "--bench" => {}
            other => bail!(
                "unknown argument {other}; expected --machines N[,N…], --workers N, --window-s S, --jobs-per-s R"
            ),
        }
    }
    if options.machines.is_empty() || options.machines.contains(&0) || options.workers == 0 {
        bail!("--machines needs counts of at least 1, --workers at least 1");
    }
    Ok(options)
}

/// The fields of one `INFO <section>` answer.
fn info(conn: &mut redis::Connection, section: &str) -> anyhow::Result<HashMap<String, String>> {
    let text: String = redis::cmd("INFO").arg(section).query(conn)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

fn number(fields: &HashMap<String, String>, key: &str) -> f64 {
    fields.get(key).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// Per command since the last `CONFIG RESETSTAT` (`cmdstat_<name>:calls=N,usec=T,...`): its calls
/// and the microseconds Redis spent in it, busiest (most time) first.
fn command_calls(conn: &mut redis::Connection) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let field = |stats: &str, key: &str| -> Option<f64> {
        stats
            .split(',')
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|v| v.parse().ok())
    };
    let mut calls: Vec<(String, f64, f64)> = info(conn, "commandstats")?
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("cmdstat_")?.to_owned();
            Some((name, field(&v, "calls=")?, field(&v, "usec=")?))
        })
        .collect();
    calls.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(calls)
}

/// Starts machine `i` (its own workspace, the stand-in bundle installed, `WORKERS=mock:<w>:shared`,
/// no GPUs, a free health port).
fn start_machine(dir: &Path, url: &str, i: usize, workers: usize) -> anyhow::Result<Owned> {
    let ws = dir.join(format!("m{i}"));
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/worker-bundle");
    let machine = |cmd: &mut Command| {
        cmd.env("WORKSPACE_DIR", &ws)
            .env("WORKER_BUNDLE_URL", &bundle)
            .env("HUB_REDIS_URL", url)
            .env("WORKERS", format!("mock:{workers}:shared"))
            .env("MACHINE_FAKE_GPUS", "0")
            .env("MACHINE_GPU_COUNT", "0")
            .env("MACHINE_HEALTH_PORT", "0")
            .env("MACHINE_ID", format!("fleet-{i}"))
            .env_remove("MACHINE_CONTROL_TOKEN");
    };
    let mut install = Command::new(RUNTIME);
    install.args(["install", "--profile", "full-local"]);
    machine(&mut install);
    let out = install.stdout(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "install for machine {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = std::fs::File::create(dir.join(format!("m{i}.log")))?;
    let mut up = Command::new(RUNTIME);
    up.args(["up", "--profile", "full-local"]);
    machine(&mut up);
    let child = up
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("machine-runtime up")?;
    Ok(Owned(child))
}

/// Counts messages on `machine:status:*` until the process ends.
fn count_status_messages(url: &str) -> anyhow::Result<Arc<AtomicU64>> {
    let count = Arc::new(AtomicU64::new(0));
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let counter = Arc::clone(&count);
    std::thread::spawn(move || {
        let mut pubsub = conn.as_pubsub();
        if pubsub.psubscribe("machine:status:*").is_err() {
            return;
        }
        while pubsub.get_message().is_ok() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    Ok(count)
}

struct Row {
    machines: usize,
    commands_per_s: f64,
    cpu_share: f64,
    status_per_s: f64,
    renewals_per_s: f64,
    claim_p50_ms: f64,
    claim_p95_ms: f64,
    jobs: usize,
    machine_rss_mib: (f64, f64),
    worker_rss_mib: f64,
    redis_memory: String,
    /// `connected_clients` at the end of the window (the bench's own two included).
    clients: f64,
    top: String,
}

#[allow(clippy::cast_precision_loss)]
fn run(n: usize, options: &Options) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let (_redis, url) = start_redis(dir.path())?;
    let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
    let mut machines = Vec::with_capacity(n);
    for i in 0..n {
        machines.push(start_machine(dir.path(), &url, i, options.workers)?);
    }
    // Ready: every worker's heartbeat key exists.
    let deadline = Instant::now() + LIMIT;
    loop {
        let mut pipe = redis::pipe();
        for i in 0..n {
            for w in 0..options.workers {
                pipe.exists(format!("worker:fleet-{i}-worker-mock-{w}:heartbeat"));
            }
        }
        let up: Vec<bool> = pipe.query(&mut conn)?;
        if up.iter().all(|b| *b) {
            break;
        }
        if Instant::now() > deadline {
            let missing = up.iter().filter(|b| !**b).count();
            bail!(
                "{missing} of {} workers never heartbeat (logs in {})",
                up.len(),
                dir.path().display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the start-up burst pass: one status interval and a poll.
    std::thread::sleep(Duration::from_secs(3));

    let status = count_status_messages(&url)?;
    let () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut conn)?;
    let cpu_before = info(&mut conn, "cpu")?;
    let commands_before = number(&info(&mut conn, "stats")?, "total_commands_processed");
    let status_before = status.load(Ordering::Relaxed);
    let started = Instant::now();

    // Jobs at a steady rate through the window.
    let rate = options
        .jobs_per_s
        .unwrap_or_else(|| (0.4 * (n * options.workers) as f64).min(10.0));
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let mut submitted = Vec::new();
    let mut next = Instant::now();
    while started.elapsed() < options.window {
        let id = format!("fleet-{n}-{}", submitted.len());
        let at = push(
            &mut conn,
            &id,
            "mock",
            &serde_json::json!({"processing_time_ms": 100}),
        )?;
        submitted.push((id, at));
        next += interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = info(&mut conn, "cpu")?;
    let commands_after = number(&info(&mut conn, "stats")?, "total_commands_processed");
    let status_after = status.load(Ordering::Relaxed);
    let calls = command_calls(&mut conn)?;
    let clients = number(&info(&mut conn, "clients")?, "connected_clients");
    let memory = info(&mut conn, "memory")?
        .get("used_memory_human")
        .cloned()
        .unwrap_or_default();

    let mut rss = Vec::new();
    let mut worker_rss = Vec::new();
    for m in &machines {
        rss.push(rss_kib(m.0.id()) as f64 / 1024.0);
        worker_rss.extend(
            machine_runtime::procstat::children(m.0.id())
                .into_iter()
                .map(|p| rss_kib(p) as f64 / 1024.0),
        );
    }

    // Claims: every job pushed in the window, however long its claim took.
    let mut claims = Vec::new();
    let deadline = Instant::now() + LIMIT;
    for (id, at) in &submitted {
        loop {
            let assigned: Option<String> = redis::cmd("HGET")
                .arg(format!("job:{id}"))
                .arg("assigned_at")
                .query(&mut conn)?;
            if let Some(assigned) = assigned.and_then(|a| a.parse::<f64>().ok()) {
                claims.push(assigned - at);
                break;
            }
            if Instant::now() > deadline {
                bail!("job {id} was never claimed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // Stop the machines the way a container stop does, all at once.
    for m in &machines {
        let _ = Command::new("kill")
            .args(["-TERM", &m.0.id().to_string()])
            .status();
    }
    let stop_deadline = Instant::now() + Duration::from_secs(60);
    for m in &mut machines {
        while m.0.try_wait()?.is_none() && Instant::now() < stop_deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let cpu = |f: &HashMap<String, String>| number(f, "used_cpu_user") + number(f, "used_cpu_sys");
    let renewals = calls
        .iter()
        .find(|(c, _, _)| c == "pexpire")
        .map_or(0.0, |(_, n, _)| *n);
    let top = calls
        .iter()
        .take(5)
        .map(|(c, n, usec)| format!("{c} {:.0}/s {:.1}µs", n / elapsed, usec / n.max(1.0)))
        .collect::<Vec<_>>()
        .join(", ");
    let (claim_p50_ms, claim_p95_ms) = p50_p95_ms(claims);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(Row {
        machines: n,
        commands_per_s: (commands_after - commands_before) / elapsed,
        cpu_share: (cpu(&cpu_after) - cpu(&cpu_before)) / elapsed,
        status_per_s: (status_after - status_before) as f64 / elapsed,
        renewals_per_s: renewals / elapsed,
        claim_p50_ms,
        claim_p95_ms,
        jobs: submitted.len(),
        machine_rss_mib: (mean(&rss), rss.iter().copied().fold(0.0, f64::max)),
        worker_rss_mib: mean(&worker_rss),
        redis_memory: memory,
        clients,
        top,
    })
}

fn main() -> anyhow::Result<()> {
    let options = parse_args()?;
    println!(
        "{} mock worker(s) per machine (stand-in bundle, node {}), poll 1000 ms, status interval as the runtime's default; \
         mock jobs of 100 ms pushed at {} over a {} s window; {} cores here",
        options.workers,
        String::from_utf8_lossy(&Command::new("node").arg("--version").output()?.stdout).trim(),
        options.jobs_per_s.map_or_else(
            || "0.4/s per worker (at most 10/s)".to_owned(),
            |r| format!("{r}/s")
        ),
        options.window.as_secs(),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!(
        "{:>8} {:>8} {:>7} {:>9} {:>9} {:>10} {:>10} {:>5} {:>14} {:>10} {:>8} {:>7}  busiest commands (calls/s, time per call)",
        "machines",
        "redis/s",
        "cpu %",
        "status/s",
        "renew/s",
        "claim p50",
        "claim p95",
        "jobs",
        "machine MiB",
        "worker MiB",
        "memory",
        "clients"
    );
    for &n in &options.machines {
        let started = now_s();
        let row = run(n, &options)?;
        println!(
            "{:>8} {:>8.0} {:>7.1} {:>9.2} {:>9.2} {:>7.0} ms {:>7.0} ms {:>5} {:>6.1} / {:>5.1} {:>10.1} {:>8} {:>7.0}  {}  ({:.0} s)",
            row.machines,
            row.commands_per_s,
            row.cpu_share * 100.0,
            row.status_per_s,
            row.renewals_per_s,
            row.claim_p50_ms,
            row.claim_p95_ms,
            row.jobs,
            row.machine_rss_mib.0,
            row.machine_rss_mib.1,
            row.worker_rss_mib,
            row.redis_memory,
            row.clients,
            row.top,
            now_s() - started,
        );
    }
    Ok(())
}
