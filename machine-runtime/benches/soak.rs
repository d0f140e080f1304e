//! Soak benchmark: `machine-runtime up` supervising apps that crash as soon as they start, for at
//! least 10 000 crash/restart cycles, printing the supervisor's RSS, open file descriptors and
//! zombie children every 1 000 cycles. Flat columns mean nothing leaks per restart (memory, pipes,
//! pids); the cycle rate is for information only.
//!
//! Run: `cargo bench -p machine-runtime --bench soak [-- --cycles 10000 --apps 4]`

// Spawning tools (redis-server, node, docker, git, the runtime binary) is the point here; the
// runtime's own children go through machine_runtime::command::new_child (clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const RUNTIME: &str = env!("CARGO_BIN_EXE_machine-runtime");

fn main() -> anyhow::Result<()> {
    let mut cycles = 10_000u64;
    let mut apps = 4usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--cycles" => cycles = args.next().context("--cycles N")?.parse()?,
            "--apps" => apps = args.next().context("--apps N")?.parse()?,
            // cargo bench passes --bench; nothing else is ours.
            _ => {}
        }
    }
    let dir = tempfile::tempdir()?;
    let list: Vec<serde_json::Value> = (0..apps)
        .map(|i| {
            serde_json::json!({
                "name": format!("crasher-{i}"), "script": "sh", "interpreter": "none",
                "args": ["-c", "echo crash $SOAK; exit 1"],
                "max_restarts": 100_000_000u64, "min_uptime": 0, "restart_delay": 0,
                // Output on every start, so the log path is soaked too.
                "env": {"SOAK": "1"}
            })
        })
        .collect();
    let file = dir.path().join("soak.json");
    std::fs::write(&file, serde_json::json!({"apps": list}).to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(RUNTIME)
        .args(["up", "--ecosystem"])
        .arg(&file)
        .args(["--health-port", &port.to_string()])
        .env_remove("HUB_REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    println!(
        "soak: {apps} apps running `sh -c 'echo crash; exit 1'` (restart at once), {cycles} crash/restart cycles"
    );
    println!(
        "{:>8} {:>8} {:>10} {:>8} {:>8} {:>10}",
        "cycles", "secs", "rss_kib", "fds", "zombies", "cycles/s"
    );
    let started = Instant::now();
    let mut next = 0u64;
    let mut rows = Vec::new();
    loop {
        let done = restarts(port).unwrap_or(0);
        if done >= next {
            let rss = rss_kib(pid)?;
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
            let zombies = zombies(pid);
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{done:>8} {secs:>8.1} {rss:>10} {fds:>8} {zombies:>8} {:>10.0}",
                done as f64 / secs.max(0.001)
            );
            rows.push((done, rss, fds));
            if done >= cycles {
                break;
            }
            next = (done / 1000 + 1) * 1000;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("fewer than {cycles} cycles in 30 minutes");
        }
        if let Some(status) = child.try_wait()? {
            bail!("the runtime exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the runtime this benchmark started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    child.wait()?;
    let (_, last_rss, last_fds) = rows.last().copied().unwrap_or_default();
    // The baseline is the first sample after the first 1 000 cycles: before that the apps and
    // the runtime's buffers are still being set up.
    let (base_cycles, first_rss, first_fds) =
        rows.get(1).or(rows.first()).copied().unwrap_or_default();
    println!(
        "from {base_cycles} cycles on: rss {first_rss} KiB -> {last_rss} KiB ({:+.1} %), fds {first_fds} -> {last_fds}",
        (last_rss as f64 - first_rss as f64) * 100.0 / first_rss.max(1) as f64
    );
    Ok(())
}

/// Sum of every app's `restarts` in `/status`.
fn restarts(port: u16) -> Option<u64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    std::io::Write::write_all(
        &mut stream,
        b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let body = raw.split_once("\r\n\r\n")?.1;
    let status: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(
        status["apps"]
            .as_array()?
            .iter()
            .filter_map(|a| a["restarts"].as_u64())
            .sum(),
    )
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// Children of `pid` that have ended and were not reaped.
fn zombies(pid: u32) -> usize {
    machine_runtime::procstat::children(pid)
        .into_iter()
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/stat"))
                .ok()
                .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('Z')))
                .unwrap_or(false)
        })
        .count()
}
