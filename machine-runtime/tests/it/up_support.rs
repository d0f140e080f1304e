//! Helpers for driving `machine-runtime up` as a real process: write an ecosystem, start the
//! binary, follow its output, poll for conditions, talk HTTP to its health endpoint.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any condition may take before a test fails; generous for a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub const BIN: &str = env!("CARGO_BIN_EXE_machine-runtime");

/// Opt-out of the PID-namespace tests for developers whose kernel or container refuses
/// `unshare --user --pid` (`.ci/run` unsets it before `scripts/test.sh`; CI runs them as root).
pub const SKIP_NAMESPACE_VAR: &str = "MACHINE_SKIP_NAMESPACE_TEST";

/// The wrapper that runs a runtime as PID 1 of a PID namespace of its own, as in a container (user
/// namespace with root mapped, so no privilege is needed), and kills it (SIGKILL) if the wrapper is
/// killed. unshare passes on no other signal: signal the runtime inside ([`runtime_inside`]).
pub const AS_PID_1: [&str; 6] = [
    "unshare",
    "--user",
    "--pid",
    "--fork",
    "--map-root-user",
    "--kill-child",
];

/// Whether the PID-namespace variant of `test` runs: `true` when `unshare --user --pid` works here; `false`
/// (with a loud line) only when [`SKIP_NAMESPACE_VAR`]`=1` says to skip; otherwise the test fails saying
/// why, so a refused `unshare` never passes as if the namespace had been tested.
pub fn pid_namespace_available(test: &str) -> bool {
    let probe = Command::new("unshare")
        .args(["--user", "--pid", "--fork", "--map-root-user", "true"])
        .stdin(Stdio::null())
        .output();
    let refusal = match probe {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!(
            "`unshare --user --pid --fork --map-root-user true` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("`unshare` could not run ({e}); install util-linux"),
    };
    if std::env::var_os(SKIP_NAMESPACE_VAR).is_some_and(|v| v == "1") {
        eprintln!(
            "SKIPPED ON PURPOSE: {SKIP_NAMESPACE_VAR}=1, so {test} did not run ({refusal}; CI never sets it)"
        );
        return false;
    }
    panic!(
        "{test} needs a PID namespace, but {refusal}; run the tests as root or where user namespaces are \
         allowed (sysctl kernel.unprivileged_userns_clone=1, a container with --privileged), or set \
         {SKIP_NAMESPACE_VAR}=1 to skip it on purpose"
    );
}

/// Polls `probe` until it returns `Some`, or panics with `what` and `context()` after `PATIENCE`.
pub fn wait_for<T>(
    what: &str,
    context: impl Fn() -> String,
    probe: impl FnMut() -> Option<T>,
) -> T {
    wait_for_within(PATIENCE, what, context, probe)
}

/// [`wait_for`] with its own bound, for conditions slower than [`PATIENCE`] (a Docker swarm's).
pub fn wait_for_within<T>(
    patience: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}\n--- context ---\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the runtime's output contains `line`; returns the output it was found in. The board
/// publishes a state before the runtime logs the transition, and every line (the runtime's and the
/// apps') reaches the test through the runtime's non-blocking writer thread, a pipe and a reader
/// thread, so a state seen in `/status`, a file an app wrote or a Redis key does not mean a line
/// logged before it has been read yet (the cause of the backoff test's flake, issue 21). Once one line
/// is here, every line logged before it on the same stream (the runtime's own lines are all on
/// stderr) is here too.
pub fn wait_line(rt: &Runtime, line: &str) -> String {
    wait_for(
        &format!("{line:?} in the runtime's output"),
        || rt.output(),
        || {
            let out = rt.output();
            out.contains(line).then_some(out)
        },
    )
}

/// Writes `ecosystem` as `ecosystem.config.json` in a new temporary directory, `@DIR@` in it replaced by
/// that directory's path; returns the directory and the file.
pub fn write_ecosystem(ecosystem: &Value) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let text = ecosystem
        .to_string()
        .replace("@DIR@", dir.path().to_str().unwrap());
    let file = dir.path().join("ecosystem.config.json");
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

/// A running `machine-runtime up` with its own temporary directory.
pub struct Runtime {
    pub child: Child,
    pub dir: tempfile::TempDir,
    output: Arc<Mutex<String>>,
    /// The threads copying stdout and stderr into `output`; each ends at its pipe's end of file.
    readers: Vec<std::thread::JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl Runtime {
    /// Writes `ecosystem` (with `@DIR@` replaced by the temp dir) and starts `up` on it.
    pub fn start(ecosystem: Value, env: &[(&str, &str)]) -> Runtime {
        Self::start_with(ecosystem, env, &[])
    }

    /// Like `start`, with `wrapper` put before the binary (e.g. `unshare ...`).
    pub fn start_with(ecosystem: Value, env: &[(&str, &str)], wrapper: &[&str]) -> Runtime {
        let (dir, file) = write_ecosystem(&ecosystem);
        let file = file.to_str().unwrap().to_owned();
        Self::spawn(dir, &["up", "--ecosystem", &file], env, wrapper)
    }

    /// Starts `up --profile <profile>` (a baked-in profile) in a fresh directory; `WORKSPACE_DIR`
    /// points there unless `env` says otherwise. The test stand-in of the worker bundle is installed
    /// there first, the way a machine gets it (`WORKER_BUNDLE_URL=<fixture> machine-runtime install
    /// --profile <profile>`), and the simulation services get free ports (`SIMULATION_BASE_PORT`)
    /// unless `env` sets them.
    pub fn start_profile(profile: &str, env: &[(&str, &str)]) -> Runtime {
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().to_str().unwrap().to_owned();
        let port = free_port_run(8).to_string();
        let mut all = vec![
            ("WORKSPACE_DIR", workspace.as_str()),
            ("WORKER_BUNDLE_URL", STAND_IN_BUNDLE),
            ("SIMULATION_BASE_PORT", port.as_str()),
        ];
        all.extend_from_slice(env);
        install_profile(profile, &all);
        Self::spawn(dir, &["up", "--profile", profile], &all, &[])
    }

    /// Like [`Runtime::start_profile`] without installing anything first.
    pub fn start_profile_uninstalled(profile: &str, env: &[(&str, &str)]) -> Runtime {
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().to_str().unwrap().to_owned();
        let mut all = vec![("WORKSPACE_DIR", workspace.as_str())];
        all.extend_from_slice(env);
        Self::spawn(dir, &["up", "--profile", profile], &all, &[])
    }

    /// Starts the binary with `args` and the health endpoint on a free port, in a clean environment:
    /// no machine, broker or plan variables leak in from the shell that runs the tests.
    pub fn spawn(
        dir: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Runtime {
        let mut cmd = runtime_command(args, env, wrapper);
        cmd.args(["--health-port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            }));
        }
        Runtime {
            child,
            dir,
            output,
            readers,
            exited: None,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Everything the runtime printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The port of the health endpoint, from the runtime's log line.
    pub fn health_port(&self) -> u16 {
        let marker = "health endpoint on http://0.0.0.0:";
        wait_for(
            "the health endpoint",
            || self.output(),
            || {
                let out = self.output();
                let start = out.find(marker)? + marker.len();
                out[start..].split('/').next()?.parse().ok()
            },
        )
    }

    /// GET a path of the health endpoint: status and JSON body.
    pub fn get(&self, path: &str) -> (u16, Value, String) {
        http_get(self.health_port(), path)
    }

    /// The `/status` entry of one app.
    pub fn app_status(&self, name: &str) -> Value {
        let (_, status, _) = self.get("/status");
        status["apps"]
            .as_array()
            .and_then(|apps| apps.iter().find(|a| a["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no app {name} in /status: {status}"))
    }

    /// Waits until app `name` is in `state` according to `/status`.
    pub fn wait_state(&self, name: &str, state: &str) -> Value {
        wait_for(
            &format!("{name} to be {state}"),
            || self.output(),
            || {
                let app = self.app_status(name);
                (app["state"] == state).then_some(app)
            },
        )
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the runtime to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let status = wait_for(
            "the runtime to exit",
            || self.output.lock().unwrap().clone(),
            || self.child.try_wait().unwrap(),
        );
        // The output is complete once the output threads reached the pipes' end of file; bounded,
        // should a stray process still hold a pipe open.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.readers.iter().all(|r| r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.exited = Some(status);
        status
    }
}

/// The one way tests launch the runtime: `wrapper` (e.g. `unshare ...`, may be empty) then the binary
/// with `args`, stdin closed, in its own process group (a test's Ctrl-C or a failing test never leaves strays behind), in a clean
/// environment: no machine, broker or plan variables leak in from the shell that runs the tests, then
/// `env`. The caller chooses stdout and stderr.
pub fn runtime_command(args: &[&str], env: &[(&str, &str)], wrapper: &[&str]) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.args(args);
    for var in [
        "MACHINE_HEALTH_PORT",
        "MACHINE_FAKE_GPUS",
        "MACHINE_ID",
        "MACHINE_PROFILE",
        "MACHINE_GPU_COUNT",
        "MACHINE_ALLOW_FEWER_GPUS",
        "WORKER_CONNECTORS",
        "WORKERS",
        "HUB_REDIS_URL",
        "MACHINE_STATUS_UPDATE_INTERVAL_SECONDS",
        "BROKER_PREFLIGHT",
        "MACHINE_HEALTH_REQUIRES_BROKER",
        "MACHINE_CONTROL_TOKEN",
        "MACHINE_CONTROL_ALLOWED_ORIGINS",
        "MACHINE_ID_APPEND_HOSTNAME",
        "MACHINE_HEALTH_URL",
        "HUB_REDIS_TLS_CA_FILE",
        "HUB_REDIS_TLS_CERT_FILE",
        "HUB_REDIS_TLS_KEY_FILE",
        "HUB_REDIS_TLS_INSECURE",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::null())
        // Its own group, so a test's Ctrl-C or a failing test never leaves strays behind.
        .process_group(0);
    cmd
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if self.exited.is_none() && self.child.try_wait().ok().flatten().is_none() {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A minimal blocking HTTP GET against 127.0.0.1: status, JSON body (Null if not JSON), raw text.
pub fn http_get(port: u16, path: &str) -> (u16, Value, String) {
    http_request(port, "GET", path, &[])
}

/// A minimal blocking HTTP request against 127.0.0.1 with extra header lines (`"Name: value"`):
/// status, JSON body (Null if not JSON), raw text.
pub fn http_request(port: u16, method: &str, path: &str, headers: &[&str]) -> (u16, Value, String) {
    let body = (method == "POST").then_some("");
    http_send(port, method, path, headers, body)
}

/// [`http_request`] with a body (`Content-Length` set from it).
pub fn http_send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&str>,
) -> (u16, Value, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or(""));
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::Null),
        raw,
    )
}

/// The test stand-in of the worker bundle (a folder, installed like a release tarball would be).
pub const STAND_IN_BUNDLE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/worker-bundle");

/// Runs `machine-runtime install --profile <profile>` with `env` (the last value of a name wins);
/// panics with its output when it fails.
/// `machine-runtime install --profile <profile>` with `env`, pip kept off the network (see
/// [`offline_pip`]) unless `env` names its own `PIP_FIND_LINKS`.
pub fn install_profile(profile: &str, env: &[(&str, &str)]) {
    let wheels = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["install", "--profile", profile])
        .env_remove("WORKER_CONNECTORS");
    if !env.iter().any(|(k, _)| *k == "PIP_FIND_LINKS") {
        offline_pip(&mut cmd, wheels.path());
    }
    let out = cmd.envs(env.iter().copied()).output().unwrap();
    assert!(
        out.status.success(),
        "install --profile {profile} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Keeps pip off the network for a ComfyUI install: no index, no user or site pip config (this
/// machine's own `PIP_FIND_LINKS` included), packages only from `wheels`, which gets `requests` at the
/// version ComfyUI's constraints pin (its recipe always installs it).
pub fn offline_pip(cmd: &mut Command, wheels: &Path) {
    for name in ["PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"] {
        cmd.env_remove(name);
    }
    fake_wheel(wheels, "requests", &pinned_version("requests"));
    cmd.env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_NO_INDEX", "1")
        .env("PIP_FIND_LINKS", wheels);
}

/// The version ComfyUI's constraints file pins for `package`.
pub fn pinned_version(package: &str) -> String {
    let (_, content) = machine_model::install::COMFYUI_CONSTRAINTS[0];
    content
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{package}==")))
        .unwrap_or_else(|| panic!("the constraints pin {package}"))
        .to_owned()
}

/// Writes a minimal pure-Python wheel `<name>-<version>` (a module printing nothing, whose
/// `__version__` is `version`) into `dir`, so pip installs it without an index.
pub fn fake_wheel(dir: &Path, name: &str, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let script = r#"
import sys, zipfile
d, name, version = sys.argv[1:4]
info = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": f"__version__ = {version!r}\n",
    f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: machine-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
files[f"{info}/RECORD"] = "".join(f"{p},,\n" for p in list(files) + [f"{info}/RECORD"])
with zipfile.ZipFile(f"{d}/{name}-{version}-py3-none-any.whl", "w") as z:
    for path, text in files.items():
        z.writestr(path, text)
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .args([name, version])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `git <args>` in `dir` as a fixture author (no user or system config); its stdout, trimmed.
pub fn git_in(dir: &Path, args: &[&str]) -> String {
    git_with(Path::new("git"), dir, args)
}

/// [`git_in`] with the git program named (a test that puts a fake `git` first on PATH names the real one).
pub fn git_with(git: &Path, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(git)
        .args([
            "-c",
            "user.name=fixture",
            "-c",
            "user.email=fixture@example.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A git repository at `dir` with `files` committed on `branch`: its `file://` URL and commit.
pub fn fixture_repo(dir: &Path, branch: &str, files: &[(&str, &str)]) -> (String, String) {
    std::fs::create_dir_all(dir).unwrap();
    git_in(dir, &["init", "-q", "-b", branch]);
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
    git_in(dir, &["add", "-A"]);
    git_in(dir, &["commit", "-q", "-m", "fixture"]);
    (
        format!("file://{}", dir.display()),
        git_in(dir, &["rev-parse", "HEAD"]),
    )
}

/// Ports this test binary has handed out ([`free_port`], [`free_port_run`]): tests run in parallel
/// threads of one process, and a port released by one test's check could otherwise be handed to
/// another before the first test's process binds it.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A TCP port that is free on all interfaces right now and that no other test of this binary got
/// (see [`free_port_run`]).
pub fn free_port() -> u16 {
    free_port_run(1)
}

/// The first of `count` consecutive ports that are all free right now and that no other test of this
/// binary got, for a base port from which a profile numbers one service per GPU
/// (`SIMULATION_BASE_PORT`, `COMFYUI_BASE_PORT`): a test once got a base whose next port another test
/// held, and its second service could not listen. Each candidate is held on all interfaces while the
/// next ones are tried, as the services bind them; the ports are then released for the test's own
/// processes, and recorded so that no later call returns them.
///
/// The ports come from outside the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), from
/// which a process binding port 0 (a runtime's `--health-port 0`) and every outgoing connection get
/// theirs: a port handed out from that range was once taken by a runtime's health endpoint between
/// its release here and the simulation service's bind. The search starts at a place of its own per
/// process, so two test binaries running at once rarely try the same ports. Where that range leaves
/// fewer than [`FEW_PORTS`] (a machine tuned to `1024 65535`), the ports come from the kernel's
/// port 0 as before, with that risk, said once on stderr.
pub fn free_port_run(count: u16) -> u16 {
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let candidates = outside_ephemeral_range();
    if candidates.len() < FEW_PORTS {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            eprintln!(
                "note: only {} ports outside the ephemeral range (net.ipv4.ip_local_port_range); test ports come from port 0, which a process binding port 0 may take first",
                candidates.len()
            )
        });
        return from_port_0(count, &mut handed_out);
    }
    let start = (std::process::id() as usize).wrapping_mul(7919) % candidates.len();
    'search: for i in 0..candidates.len() {
        let base = candidates[(start + i) % candidates.len()];
        let mut held = Vec::new();
        for offset in 0..count {
            let Some(port) = base.checked_add(offset) else {
                continue 'search;
            };
            if handed_out.contains(&port) || candidates.binary_search(&port).is_err() {
                continue 'search;
            }
            match std::net::TcpListener::bind(("0.0.0.0", port)) {
                Ok(listener) => held.push(listener),
                Err(_) => continue 'search,
            }
        }
        handed_out.extend(base..base + count);
        return base;
    }
    panic!("no {count} consecutive free ports outside the ephemeral range");
}

/// Fewer ports than this outside the ephemeral range: [`free_port_run`] takes them from port 0.
const FEW_PORTS: usize = 2000;

/// [`free_port_run`] where the ephemeral range leaves too few ports: a base from port 0.
fn from_port_0(count: u16, handed_out: &mut BTreeSet<u16>) -> u16 {
    'search: for _ in 0..200 {
        let first = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let base = first.local_addr().unwrap().port();
        let mut held = vec![first];
        for offset in 1..count {
            let Some(port) = base.checked_add(offset) else {
                continue 'search;
            };
            if handed_out.contains(&port) {
                continue 'search;
            }
            match std::net::TcpListener::bind(("0.0.0.0", port)) {
                Ok(listener) => held.push(listener),
                Err(_) => continue 'search,
            }
        }
        if handed_out.contains(&base) {
            continue;
        }
        handed_out.extend(base..base + count);
        return base;
    }
    panic!("no {count} consecutive free ports found in 200 tries");
}

/// The ports from 10000 up (below, the usual ports of services a developer runs) outside the ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, Linux's default 32768–60999 when it cannot be read), in
/// order.
fn outside_ephemeral_range() -> Vec<u16> {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((32768, 60999));
    (10_000..=u16::MAX)
        .filter(|p| *p < low || *p > high)
        .collect()
}

/// The first message from `rx` (a test subscriber's channel) that satisfies `want`, waiting up to
/// [`PATIENCE`] in all; the failure names `what` and summarises the messages that came instead.
pub fn next_where(
    rx: &std::sync::mpsc::Receiver<Value>,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> Result<Value, String> {
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(m) if want(&m) => return Ok(m),
            Ok(m) => seen.push(crate::broker::summary(&m)),
            Err(_) => break,
        }
    }
    Err(format!("no status message with {what}; saw {seen:?}"))
}

/// [`next_where`] for a subscriber running as a tokio task (its channel is tokio's).
pub async fn next_where_async(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> Result<Value, String> {
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(m)) if want(&m) => return Ok(m),
            Ok(Some(m)) => seen.push(crate::broker::summary(&m)),
            _ => break,
        }
    }
    Err(format!("no status message with {what}; saw {seen:?}"))
}

/// Reads a file written by a child once it exists and is complete (children write `x.tmp` then
/// rename it).
pub fn read_when_present(rt: &Runtime, name: &str) -> String {
    let path = rt.path(name);
    wait_for(
        &format!("file {name}"),
        || rt.output(),
        || std::fs::read_to_string(&path).ok(),
    )
}

/// The state letter of a process (`R`, `S`, `Z`, ...), or `None` once it no longer exists.
pub fn process_state(pid: u32) -> Option<char> {
    machine_runtime::procstat::state(pid)
}

/// The parent pid of a process.
pub fn parent_pid(pid: u32) -> Option<u32> {
    machine_runtime::procstat::parent(pid)
}

/// True when `pid` no longer names a process (not even a zombie) whose command line contains
/// `token` — a pid reused by an unrelated process counts as gone.
pub fn gone(pid: u32, token: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Err(_) => true,
        Ok(cmdline) => {
            // A zombie has an empty command line but still exists: not gone.
            if cmdline.is_empty() {
                return process_state(pid).is_none();
            }
            !String::from_utf8_lossy(&cmdline).contains(token)
        }
    }
}

/// Kills (SIGKILL) every process a `pm2-runtime` with `PM2_HOME=home` started. PM2 starts its apps
/// detached, each in its own process group, so killing pm2-runtime's group leaves them running (a leak
/// test's app held 177 MB for good, `sleep 600` apps lingered ten minutes); they carry that `PM2_HOME`
/// in their environment, which nothing else here does. Call it after pm2-runtime is gone.
pub fn kill_pm2_apps(home: &Path) {
    let mark = format!("PM2_HOME={}", home.display());
    for pid in pids_where("environ", |environ| {
        environ.split(|b| *b == 0).any(|e| e == mark.as_bytes())
    }) {
        // SAFETY: kill(2) on a process started by the caller's pm2-runtime.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Pids of processes whose command line contains `token`.
pub fn pids_with(token: &str) -> Vec<u32> {
    pids_where("cmdline", |cmdline| {
        String::from_utf8_lossy(cmdline).contains(token)
    })
}

/// Pids of the processes whose `/proc/<pid>/<file>` (`cmdline`, `environ`: NUL-separated) `matches`.
fn pids_where(file: &str, matches: impl Fn(&[u8]) -> bool) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read(entry.path().join(file)).is_ok_and(|bytes| matches(&bytes)) {
            pids.push(pid);
        }
    }
    pids
}

/// The pid an app wrote into `file` in the test's folder, once the whole number is there (`echo $$ >
/// file` empties the file before it writes, and nothing orders that against the runtime's states).
pub fn pid_in(rt: &Runtime, file: &str) -> i32 {
    wait_for(
        &format!("a pid in {file}"),
        || rt.output(),
        || {
            std::fs::read_to_string(rt.path(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        },
    )
}

/// The host pid of the runtime that `rt`'s wrapper (`unshare ... --fork`) started: the wrapper's
/// child. Signal that pid to reach the runtime: unshare passes on no signal, and a runtime killed
/// through the wrapper's `--kill-child` is left as a zombie for the host's init to collect.
pub fn runtime_inside(rt: &Runtime) -> u32 {
    wait_for(
        "the runtime inside the wrapper",
        || rt.output(),
        || {
            machine_runtime::procstat::children(rt.child.id())
                .first()
                .copied()
        },
    )
}

/// Sends `signal` to the runtime that `rt`'s wrapper ([`AS_PID_1`]) started and waits for the
/// wrapper to exit (unshare collects the runtime, then exits with its status).
pub fn signal_inside(rt: &mut Runtime, signal: i32) -> ExitStatus {
    let inner = runtime_inside(rt);
    // SAFETY: plain kill(2) on the runtime inside the namespace, the test's own descendant.
    unsafe { libc::kill(inner as i32, signal) };
    rt.wait_exit()
}

/// A unique token for marking this test's processes.
pub fn token(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}{}", std::process::id(), nanos % 1_000_000_000)
}

/// Whether `s` is an RFC 3339 UTC time with milliseconds, as the runtime writes them
/// (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
pub fn is_rfc3339_millis(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Opt-out of the cgroup tests for developers who cannot create a cgroup (not root, no delegated
/// cgroup2 subtree); CI runs them as root.
pub const SKIP_CGROUP_VAR: &str = "MACHINE_SKIP_CGROUP_TEST";

/// Whether a cgroup test goes on, given the runtime's output up to an app's "started" line (the
/// cgroup line, if any, is logged before any app starts): `true` where the runtime made cgroups;
/// `false`, said on stderr, where it could not and [`SKIP_CGROUP_VAR`] is `1`; else it panics.
pub fn has_cgroups(out: &str) -> bool {
    if !out.contains("apps run without cgroups") {
        return true;
    }
    if std::env::var_os(SKIP_CGROUP_VAR).is_some_and(|v| v == "1") {
        eprintln!("SKIPPED ON PURPOSE: {SKIP_CGROUP_VAR}=1 and no cgroup here:\n{out}");
        return false;
    }
    panic!(
        "this test needs a cgroup the runtime may create (root with cgroup2, or a delegated subtree), or {SKIP_CGROUP_VAR}=1 to skip it on purpose:\n{out}"
    );
}
