//! Supervisor benchmark: machine-runtime against pm2-runtime and a bare shell loop (the physical
//! limit), on the same generated ecosystem of N `sleep` apps. Prints a side-by-side table.
//!
//! Run: `cargo bench -p machine-runtime --bench supervisor [-- --apps 16,64 --rounds 9 --kills 3 --each]`
//! (the defaults shown). On a shared VM one contender's start of 64 apps varies by ±20% from round to
//! round, so the medians need the rounds.
//! (`--each`: also print every round's time to all running, in the order run).
//!
//! Before each round, the contender's files are read into the page cache ([`warm_up`]), so that a file
//! the machine paged out since its last use does not put disk reads into one contender's start.
//!
//! Figures: time from launch until every app process has exec'd `sleep`; RSS of the supervisor
//! (its process tree without the apps); time from SIGKILL of one app to its replacement being
//! exec'd (restart_delay 0); time from SIGTERM to the supervisor's exit; app processes left
//! running afterwards. Needs `pm2-runtime` on PATH for the PM2 column (`npm i -g pm2`).
//!
//! The execs are timed by the kernel: the bench listens to the process connector's exec events
//! (netlink, CAP_NET_ADMIN in the machine's first PID and user namespaces: run it as root on the
//! host), each stamped with the monotonic clock when it happened, and the start and the restart end
//! at the stamp of the last app's exec. Without the connector it polls `/proc` every 250 µs instead,
//! said in the header (and for a round whose events were lost, said in that round's line): then the
//! figures include up to 250 µs of polling lag, and the polling itself takes CPU from the contender,
//! more from one with more threads (each thread's children are a file of its own).

// Spawning tools (redis-server, node, docker, git, the runtime binary) is the point here; the
// runtime's own children go through machine_runtime::command::new_child (clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod common;
use common::rss_kib;

const RUNTIME: &str = env!("CARGO_BIN_EXE_machine-runtime");
/// Generous bound for any phase; a contender that takes longer has failed.
const LIMIT: Duration = Duration::from_secs(120);
/// The app processes; the argument makes them easy to tell from anything else.
const SLEEP_ARG: &str = "100000";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Contender {
    MachineRuntime,
    Pm2,
    Shell,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::MachineRuntime => "machine-runtime",
            Contender::Pm2 => "pm2-runtime",
            Contender::Shell => "shell loop",
        }
    }
}

#[derive(Default, Clone)]
struct Figures {
    all_running: Vec<Duration>,
    rss_kib: Vec<u64>,
    restart: Vec<Duration>,
    stop: Vec<Duration>,
    leftovers: usize,
}

const USAGE: &str = "usage: cargo bench -p machine-runtime --bench supervisor [-- --apps N[,N...] --rounds N --kills N --each] (defaults: --apps 16,64 --rounds 9 --kills 3)";

fn main() -> anyhow::Result<()> {
    let mut apps = vec![16usize, 64];
    let mut rounds = 9usize;
    let mut kills = 3usize;
    let mut each = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--apps" => {
                apps = args
                    .next()
                    .context("--apps needs a list like 16,64")?
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()
                    .context("--apps needs a list like 16,64")?
            }
            "--rounds" => rounds = args.next().context("--rounds needs a number")?.parse()?,
            "--kills" => kills = args.next().context("--kills needs a number")?.parse()?,
            "--each" => each = true,
            // cargo bench passes --bench.
            "--bench" => {}
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if apps.contains(&0) || rounds == 0 || kills == 0 {
        bail!("--apps, --rounds and --kills need numbers of 1 or more");
    }
    interrupt::install();
    let events = ExecEvents::listen();
    let pm2 = which("pm2-runtime");
    if pm2.is_none() {
        println!(
            "note: pm2-runtime is not on PATH; install it with `npm i -g pm2` for the PM2 column"
        );
    }
    let mut contenders = vec![Contender::MachineRuntime];
    if pm2.is_some() {
        contenders.push(Contender::Pm2);
    }
    contenders.push(Contender::Shell);

    println!(
        "machine-runtime {} (release) vs {} on {} CPU(s); median of {rounds} run(s), restart: median of {kills} kill(s) per run",
        env!("CARGO_PKG_VERSION"),
        pm2.as_deref()
            .map(pm2_version)
            .unwrap_or_else(|| "no pm2".into()),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    match &events {
        Ok(_) => println!("execs timed by the kernel's process connector (exec events)"),
        Err(why) => println!(
            "note: no exec events ({why}); polling /proc every 250 µs instead (run as root on the host, outside any container or namespace, for the kernel's timing)"
        ),
    }
    let mut events = events.ok();
    for &n in &apps {
        let dir = tempfile::tempdir()?;
        let ecosystem = dir.path().join("ecosystem.config.json");
        std::fs::write(&ecosystem, ecosystem_json(n))?;
        // Round by round, each contender in turn, in reverse order every other round: a change of
        // load on a shared machine (or what the previous contender's stop left to the kernel) then
        // moves every column alike instead of one contender's rounds.
        let mut results: Vec<(Contender, Figures)> = contenders
            .iter()
            .map(|&c| (c, Figures::default()))
            .collect();
        for round in 0..rounds {
            let mut order: Vec<&mut (Contender, Figures)> = results.iter_mut().collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for (contender, figures) in order {
                if interrupt::requested() {
                    bail!("interrupted");
                }
                run_once(
                    *contender,
                    n,
                    &ecosystem,
                    dir.path(),
                    kills,
                    figures,
                    &mut events,
                )
                .with_context(|| format!("{} with {n} apps", contender.label()))?;
                if each && let Some(took) = figures.all_running.last() {
                    println!("round {round}: {} {}", contender.label(), ms(Some(*took)));
                }
            }
        }
        print_table(n, &results);
    }
    Ok(())
}

fn ecosystem_json(n: usize) -> String {
    let apps: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "name": format!("app-{i}"), "script": "sleep", "args": [SLEEP_ARG], "interpreter": "none",
                "autorestart": true, "restart_delay": 0, "kill_timeout": 1600,
            })
        })
        .collect();
    serde_json::json!({ "apps": apps }).to_string()
}

fn launch(contender: Contender, n: usize, ecosystem: &Path, dir: &Path) -> anyhow::Result<Child> {
    let mut cmd = match contender {
        Contender::MachineRuntime => {
            let mut c = Command::new(RUNTIME);
            c.args(["up", "--health-port", "0", "--ecosystem"])
                .arg(ecosystem);
            c
        }
        Contender::Pm2 => {
            let mut c = Command::new("pm2-runtime");
            c.arg(ecosystem).env("PM2_HOME", dir.join("pm2-home"));
            c
        }
        Contender::Shell => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(format!(
                "i=0; while [ $i -lt {n} ]; do sleep {SLEEP_ARG} & i=$((i+1)); done; wait"
            ));
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    Ok(cmd.spawn()?)
}

/// Reads the files `contender` runs (its executables, PM2's package, `sleep`) so that they are in the
/// page cache when its round starts. A VM may page out file pages a few seconds after their last use
/// (proactive reclaim: here DAMON's `pageout`, which took 11% of the runtime's binary out within 10 s of
/// its last run); then only the contender whose files were dropped would read from disk during its
/// start, as machine-runtime could after PM2's long round (the shell and `sleep` are in use all the
/// time).
/// Not timed.
fn warm_up(contender: Contender) {
    let mut files: Vec<std::path::PathBuf> = which("sleep").into_iter().map(Into::into).collect();
    match contender {
        Contender::MachineRuntime => files.push(RUNTIME.into()),
        Contender::Pm2 => {
            files.extend(which("node").map(Into::into));
            // PM2's package: pm2-runtime is <package>/bin/pm2-runtime.
            if let Some(package) = which("pm2-runtime")
                .and_then(|bin| std::fs::canonicalize(bin).ok())
                .and_then(|bin| Some(bin.parent()?.parent()?.to_path_buf()))
            {
                files_under(&package, &mut files);
            }
        }
        Contender::Shell => files.extend(which("sh").map(Into::into)),
    }
    for file in files {
        let _ = std::fs::read(file);
    }
}

/// Every regular file under `dir`, at most 20 000.
fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if out.len() >= 20_000 {
            return;
        }
        match entry.file_type() {
            Ok(t) if t.is_dir() => files_under(&entry.path(), out),
            Ok(t) if t.is_file() => out.push(entry.path()),
            _ => {}
        }
    }
}

fn run_once(
    contender: Contender,
    n: usize,
    ecosystem: &Path,
    dir: &Path,
    kills: usize,
    figures: &mut Figures,
    events: &mut Option<ExecEvents>,
) -> anyhow::Result<()> {
    warm_up(contender);
    if let Some(events) = events.as_mut() {
        events.drain();
    }
    let start = Instant::now();
    let start_ns = monotonic_ns();
    let mut child = launch(contender, n, ecosystem, dir)?;
    let sup = child.id();
    let result = (|| {
        let waited = events
            .as_mut()
            .map(|e| e.wait_for_apps(sup, n, &[], start_ns))
            .transpose()?;
        let (apps, took) = match waited {
            Some(Some(last_ns)) => (app_pids(sup), nanos_between(start_ns, last_ns)),
            lost_or_none => {
                if lost_or_none.is_some() {
                    println!("note: exec events were lost; this start was timed by polling /proc");
                }
                let mut probe = StartProbe::default();
                let apps = wait_until(|| {
                    let apps = probe.app_pids(sup);
                    (apps.len() == n).then_some(apps)
                })
                .context("not every app came up")?;
                (apps, start.elapsed())
            }
        };
        figures.all_running.push(took);

        // Let start-up allocations settle before reading memory.
        std::thread::sleep(Duration::from_secs(1));
        figures.rss_kib.push(tree_rss_without_apps(sup));

        if contender != Contender::Shell {
            let mut current = apps;
            for k in 0..kills {
                let victim = current[k % current.len()];
                let before = current.clone();
                if let Some(events) = events.as_mut() {
                    events.drain();
                }
                let t0 = Instant::now();
                let t0_ns = monotonic_ns();
                kill(victim as i32, libc::SIGKILL);
                let replaced = match events.as_mut() {
                    Some(events) => {
                        let at = events.wait_for_apps(sup, 1, &before, t0_ns)?;
                        if at.is_none() {
                            println!(
                                "note: exec events were lost; this restart was timed by polling /proc"
                            );
                        }
                        at
                    }
                    None => None,
                };
                current = wait_until(|| {
                    let now = app_pids(sup);
                    (now.len() == n && now.iter().any(|p| !before.contains(p))).then_some(now)
                })
                .context("a killed app was not restarted")?;
                figures.restart.push(match replaced {
                    Some(at_ns) => nanos_between(t0_ns, at_ns),
                    None => t0.elapsed(),
                });
            }
        }
        anyhow::Ok(())
    })();
    let apps = app_pids(sup);
    let t0 = Instant::now();
    match contender {
        // A shell loop has no supervisor that stops anything: signal the group.
        Contender::Shell => kill(-(sup as i32), libc::SIGTERM),
        _ => kill(sup as i32, libc::SIGTERM),
    }
    let status = wait_child(&mut child)?;
    figures.stop.push(t0.elapsed());
    result?;
    if contender != Contender::Shell && !status.success() {
        bail!("exited with {status} after SIGTERM");
    }
    // Orphans go to init, which reaps them quickly; anything still there is a leftover.
    std::thread::sleep(Duration::from_millis(200));
    let left: Vec<u32> = apps.into_iter().filter(|p| alive(*p)).collect();
    figures.leftovers += left.len();
    for pid in left {
        kill(pid as i32, libc::SIGKILL);
    }
    Ok(())
}

/// The exec events of the kernel's process connector ([`proc_connector`]): which process exec'd,
/// and when, by the monotonic clock.
struct ExecEvents {
    connector: proc_connector::ProcConnector,
    buf: Vec<u8>,
}

impl ExecEvents {
    /// Listens to exec events; `Err` says why it cannot: not in the machine's first PID and user
    /// namespaces (the kernel sends events only there, and answers no subscription from elsewhere,
    /// where the subscription would wait for good), or no CAP_NET_ADMIN.
    fn listen() -> Result<ExecEvents, String> {
        // The kernel's inode numbers of the first namespaces (`PROC_PID_INIT_INO`, `PROC_USER_INIT_INO`).
        for (ns, first) in [("pid", 0xEFFF_FFFC_u64), ("user", 0xEFFF_FFFD)] {
            use std::os::unix::fs::MetadataExt as _;
            let own = std::fs::metadata(format!("/proc/self/ns/{ns}")).map_or(0, |m| m.ino());
            if own != first {
                return Err(format!("not in the machine's first {ns} namespace"));
            }
        }
        let connector = proc_connector::ProcConnector::new().map_err(|e| e.to_string())?;
        // Forks and exits of the whole machine are not needed; kernels without the filter (before
        // 6.6) send every event, which the wait skips.
        let _ = connector.subscribe_filtered(proc_connector::EventMask::EXEC);
        // More room for events, as far as `net.core.rmem_max` allows; a round whose events ran over
        // the buffer is timed by polling (and says so).
        let _ = connector.set_recv_buf_size(4 << 20);
        Ok(ExecEvents {
            connector,
            buf: vec![0; 8192],
        })
    }

    /// Drops the events received so far (an overrun is reported once, and then the rest is read).
    fn drain(&mut self) {
        loop {
            match self.connector.recv_timeout(&mut self.buf, Duration::ZERO) {
                Ok(Some(_))
                | Err(proc_connector::Error::Overrun | proc_connector::Error::Interrupted) => {}
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Waits until `n` processes under `sup`, none of them in `skip`, have exec'd the app at
    /// `since_ns` or later (an older event may name a pid reused since); returns when the last of
    /// them did (monotonic nanoseconds), or `None` when events were lost (the socket's buffer ran
    /// over).
    fn wait_for_apps(
        &mut self,
        sup: u32,
        n: usize,
        skip: &[u32],
        since_ns: u64,
    ) -> anyhow::Result<Option<u64>> {
        let deadline = Instant::now() + LIMIT;
        let mut seen = std::collections::HashSet::new();
        let mut last = 0;
        while seen.len() < n {
            if Instant::now() > deadline {
                bail!("gave up after {LIMIT:?}");
            }
            if interrupt::requested() {
                bail!("interrupted");
            }
            let event = match self
                .connector
                .recv_timeout(&mut self.buf, Duration::from_millis(50))
            {
                Ok(event) => event,
                Err(proc_connector::Error::Overrun) => return Ok(None),
                Err(proc_connector::Error::Interrupted) => continue,
                Err(e) => bail!("reading exec events: {e}"),
            };
            if let Some(proc_connector::ProcEvent::Exec {
                tgid, timestamp_ns, ..
            }) = event
                && timestamp_ns >= since_ns
                && !skip.contains(&tgid)
                && is_app(tgid)
                && descends_from(tgid, sup)
                && seen.insert(tgid)
            {
                last = last.max(timestamp_ns);
            }
        }
        Ok(Some(last))
    }
}

/// Whether `pid`'s parent, or its parent's, and so on, is `ancestor`.
fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut pid = pid;
    // A bound against a loop through recycled pids.
    for _ in 0..64 {
        match machine_runtime::procstat::parent(pid) {
            Some(p) if p == ancestor => return true,
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

/// The monotonic clock in nanoseconds, the clock of the connector's timestamps.
fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes the timespec it is given.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn nanos_between(from: u64, to: u64) -> Duration {
    Duration::from_nanos(to.saturating_sub(from))
}

fn wait_until<T>(mut probe: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("gave up after {LIMIT:?}");
        }
        if interrupt::requested() {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_micros(250));
    }
}

fn wait_child(child: &mut Child) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("did not exit within {LIMIT:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_micros(250));
    }
}

/// Ctrl-C or SIGTERM during a round: the round's wait ends there, and its contender is stopped as
/// after any round (its apps with it) before the bench exits, its temporary folder removed.
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static REQUESTED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: libc::c_int) {
        REQUESTED.store(true, Ordering::SeqCst);
    }

    pub fn install() {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
        }
    }

    pub fn requested() -> bool {
        REQUESTED.load(Ordering::SeqCst)
    }
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) };
}

fn is_app(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c == format!("sleep\0{SLEEP_ARG}\0").as_bytes()
                || c.ends_with(format!("/sleep\0{SLEEP_ARG}\0").as_bytes())
        })
        .unwrap_or(false)
}

fn alive(pid: u32) -> bool {
    machine_runtime::procstat::state(pid).is_some_and(|state| state != 'Z') && is_app(pid)
}

/// App processes (exec'd `sleep`) among the descendants of `sup`, sorted.
fn app_pids(sup: u32) -> Vec<u32> {
    let mut apps = Vec::new();
    let mut stack = machine_runtime::procstat::children(sup);
    while let Some(pid) = stack.pop() {
        if is_app(pid) {
            apps.push(pid);
        } else {
            stack.extend(machine_runtime::procstat::children(pid));
        }
    }
    apps.sort_unstable();
    apps
}

/// [`app_pids`] for the wait until every app runs, polled every 250 µs: a pid once seen running
/// `sleep` stays an app (a process that exec'd `sleep 100000` execs nothing else), so its cmdline is
/// not read again: the probe reads /proc for the processes that appeared since the last poll, not N
/// cmdlines every 250 µs on CPUs the contender being timed needs.
#[derive(Default)]
struct StartProbe {
    apps: std::collections::HashSet<u32>,
}

impl StartProbe {
    fn app_pids(&mut self, sup: u32) -> Vec<u32> {
        let mut apps = Vec::new();
        let mut stack = machine_runtime::procstat::children(sup);
        while let Some(pid) = stack.pop() {
            if self.apps.contains(&pid) || is_app(pid) {
                self.apps.insert(pid);
                apps.push(pid);
            } else {
                stack.extend(machine_runtime::procstat::children(pid));
            }
        }
        apps.sort_unstable();
        apps
    }
}

/// RSS of `sup` and every descendant that is not an app.
fn tree_rss_without_apps(sup: u32) -> u64 {
    let mut total = rss_kib(sup);
    let mut stack = machine_runtime::procstat::children(sup);
    while let Some(pid) = stack.pop() {
        if !is_app(pid) {
            total += rss_kib(pid);
            stack.extend(machine_runtime::procstat::children(pid));
        }
    }
    total
}

fn which(program: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// PM2's version from its package.json (running `pm2 --version` would start a PM2 daemon).
fn pm2_version(pm2_runtime: &str) -> String {
    std::fs::canonicalize(pm2_runtime)
        .ok()
        .and_then(|bin| bin.parent()?.parent().map(|p| p.join("package.json")))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v["version"].as_str().map(|v| format!("pm2 {v}")))
        .unwrap_or_else(|| "pm2 (unknown version)".into())
}

fn median_duration(values: &[Duration]) -> Option<Duration> {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

fn median_u64(values: &[u64]) -> Option<u64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) if d < Duration::from_millis(10) => format!("{:.2} ms", d.as_secs_f64() * 1000.0),
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
        None => "-".into(),
    }
}

fn mb(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MB", k as f64 / 1024.0))
        .unwrap_or_else(|| "-".into())
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.3}x", a / b),
        _ => "-".into(),
    }
}

fn print_table(n: usize, results: &[(Contender, Figures)]) {
    let get = |c: Contender| {
        results
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, f)| f.clone())
    };
    let (ours, pm2, shell) = (
        get(Contender::MachineRuntime),
        get(Contender::Pm2),
        get(Contender::Shell),
    );
    type Row = (&'static str, Box<dyn Fn(&Figures) -> (String, Option<f64>)>);
    let rows: Vec<Row> = vec![
        (
            "time to all running",
            Box::new(|f| {
                let m = median_duration(&f.all_running);
                (ms(m), m.map(|d| d.as_secs_f64()))
            }),
        ),
        (
            "supervisor RSS",
            Box::new(|f| {
                let m = median_u64(&f.rss_kib);
                (mb(m), m.map(|k| k as f64))
            }),
        ),
        (
            "restart of a killed app",
            Box::new(|f| {
                let m = median_duration(&f.restart);
                (ms(m), m.map(|d| d.as_secs_f64()))
            }),
        ),
        (
            "SIGTERM to exit",
            Box::new(|f| {
                let m = median_duration(&f.stop);
                (ms(m), m.map(|d| d.as_secs_f64()))
            }),
        ),
        (
            "apps left running",
            Box::new(|f| (f.leftovers.to_string(), Some(f.leftovers as f64))),
        ),
    ];
    println!();
    println!("N = {n} sleep apps");
    println!(
        "{:<26}{:>17}{:>15}{:>13}{:>13}{:>13}",
        "", "machine-runtime", "pm2-runtime", "shell loop", "mr / pm2", "mr / shell"
    );
    for (label, figure) in rows {
        let cell = |f: &Option<Figures>| f.as_ref().map(&figure).unwrap_or(("-".into(), None));
        let (o, ov) = cell(&ours);
        let (p, pv) = cell(&pm2);
        let (s, sv) = cell(&shell);
        let (s, sv) = if label.starts_with("restart") {
            ("-".to_string(), None)
        } else {
            (s, sv)
        };
        let (r_pm2, r_shell) = if label.starts_with("apps left") {
            ("".to_string(), "".to_string())
        } else {
            (ratio(ov, pv), ratio(ov, sv))
        };
        println!("{label:<26}{o:>17}{p:>15}{s:>13}{r_pm2:>13}{r_shell:>13}");
    }
}
