//! The machine image and the generated compose files against a real Docker engine, as a user runs them:
//! the project's Dockerfile builds (BuildKit and the classic builder, through docker-compose 1.29), and
//! `docker-compose -f generated/full-local/docker-compose.yaml up -d` gives a healthy machine on a CPU-only
//! host: `/health` 200 and the simulation services on their published ports (bound to 127.0.0.1 only),
//! status messages in the compose Redis, `host.docker.internal` resolving, a job pushed as the API does
//! completed by the stand-in worker bundle baked into the image; `docker-compose down` publishes
//! `shutdown` and leaves no container, network or volume behind. api-only, built by the classic builder,
//! runs its four bundle workers on dummy secrets without a restart.
//!
//! The test builds under its own image tag (`machine-docker-test/machine-runtime:<profile>`, removed
//! afterwards), with its own compose project name, from a copy of the generated folder that publishes on
//! free host ports (the one other change: the build context as an absolute path), so the user's
//! `machine-runtime:<profile>` images, projects and ports are never touched (the image is checked). There is no container registry in CI, so the other overrides are the
//! ones that forces, each named where it is made: the base image comes from `scripts/docker-base-image.sh` (debootstrap, cached as an image
//! between runs), machine-runtime is this build's binary (`MACHINE_RUNTIME_BINARY`, no Rust image), and
//! `redis:7-alpine` is replaced by Debian's redis-server on the same base
//! (`tests/fixtures/docker/redis.Dockerfile`).
//!
//! The engine must be there (`bash scripts/test.sh` installs and starts it); without it the test fails saying so.
//! `MACHINE_SKIP_DOCKER_TEST=1` skips it on purpose, loudly, for developers without Docker; CI never sets it.
//! Figures (image size, time from `up` to healthy, from `/health` 200 to Docker's `healthy`, time to stop)
//! are printed, not asserted, next to the figures before issue 22's smaller image ([`BEFORE`]). The
//! binaries are this build's with their symbols stripped (`strip`, when there), as a release build's are.
//! That a machine without ComfyUI carries no Python, git or curl is asserted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::up_support::{BIN, next_where};

/// Opt-out for developers without a Docker engine; `.ci/run` unsets it.
const SKIP_VAR: &str = "MACHINE_SKIP_DOCKER_TEST";
/// The base image `scripts/docker-base-image.sh` makes (debootstrap, no registry).
pub(crate) const BASE_IMAGE: &str = "machine-base:bookworm";
/// The stand-in of `redis:7-alpine`.
pub(crate) const REDIS_IMAGE: &str = "machine-test-redis:bookworm";
/// Where the test puts this build's machine-runtime inside the build context (git-ignored): a folder of its
/// own, so the binaries `scripts/docker-local.sh` puts in `.docker-prebuilt/` are never replaced.
const PREBUILT: &str = ".docker-prebuilt/test/machine-runtime";
/// The simulation service's binary of this build (full-local runs it).
const SIMULATE_BIN: &str = env!("CARGO_BIN_EXE_machine-simulate");
/// The test stand-in of the worker bundle, as a folder of the build context.
const BUNDLE: &str = "machine-runtime/tests/fixtures/worker-bundle";
/// The longest one docker or docker-compose command may take (a cold base image, apt on a slow mirror).
const COMMAND_LIMIT: Duration = Duration::from_secs(900);
/// The figures of the image before issue 22 (every profile the same apt layer, healthcheck every 30 s).
const BEFORE: &str = "before: 456-498 MB, Docker healthy 37.7 s after up (/health 200 after 7.4 s)";
/// How long the machine may take to answer healthy, and a status message to arrive.
const PATIENCE: Duration = Duration::from_secs(90);

/// The repository root.
pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("machine-runtime lives in the workspace")
        .to_path_buf()
}

/// Held while a test's compose project exists: the in-process lock, and an exclusive `flock` on
/// `$TMPDIR/machine-docker-test.lock`, released when the file closes.
pub(crate) struct OneProject {
    _in_process: MutexGuard<'static, ()>,
    _across_checkouts: std::fs::File,
}

/// One compose project at a time, in this process and across every checkout using this host's engine:
/// they publish the same host ports and use the same project names (two clones running the test at once
/// took each other's containers down: "Container … is unhealthy").
pub(crate) fn one_project() -> OneProject {
    use std::os::fd::AsRawFd;
    static LOCK: Mutex<()> = Mutex::new(());
    let in_process = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = std::env::temp_dir().join("machine-docker-test.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    // SAFETY: flock(2) on a descriptor this function owns; it blocks until the other holder is done.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        locked,
        0,
        "flock {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    OneProject {
        _in_process: in_process,
        _across_checkouts: file,
    }
}

/// A finished command: success, stdout, stderr, and how it was called (for messages).
pub(crate) struct Ran {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    shown: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout\n{}\n--- stderr\n{}",
            self.shown,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

/// The last 60 lines of a text.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Runs a command under `timeout` (so a stuck engine fails the test instead of hanging it).
pub(crate) fn run(cmd: &mut Command) -> Ran {
    let shown = format!("{cmd:?}");
    let mut wrapped = Command::new("timeout");
    wrapped
        .arg("--kill-after=10")
        .arg(COMMAND_LIMIT.as_secs().to_string())
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null());
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    let out = wrapped
        .output()
        .unwrap_or_else(|e| panic!("starting {shown}: {e}"));
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        shown,
    }
}

/// Runs a command that must succeed.
pub(crate) fn must(cmd: &mut Command) -> Ran {
    let ran = run(cmd);
    assert!(ran.ok, "failed: {ran}");
    ran
}

pub(crate) fn docker() -> Command {
    Command::new("docker")
}

/// Whether the test should run: the engine answers, or the developer opted out (`None`).
pub(crate) fn engine() -> Option<()> {
    if std::env::var_os(SKIP_VAR).is_some_and(|v| v == "1") {
        eprintln!(
            "SKIPPED ON PURPOSE: {SKIP_VAR}=1, so the Docker end-to-end test did not run (CI never sets it)"
        );
        return None;
    }
    let found = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output();
    match found {
        Ok(out) if out.status.success() => Some(()),
        Ok(out) => panic!(
            "the Docker engine does not answer (`docker info`: {}). This test needs a real engine: \
             apt-get install -y docker.io docker-compose debootstrap, start dockerd (bash scripts/test.sh does both), \
             or set {SKIP_VAR}=1 to skip it on purpose",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "`docker` cannot be run ({e}). This test needs a real engine: apt-get install -y docker.io \
             docker-compose debootstrap and start dockerd (bash scripts/test.sh does both), or set {SKIP_VAR}=1 \
             to skip it on purpose"
        ),
    }
}

/// The base image and the Redis stand-in (each skipped when it exists), and this build's binary in the
/// build context.
pub(crate) fn prepare() {
    must(
        Command::new("bash")
            .arg(repo().join("scripts/docker-base-image.sh"))
            .arg(BASE_IMAGE),
    );
    if !run(docker().args(["image", "inspect", REDIS_IMAGE])).ok {
        let empty = tempfile::tempdir().expect("an empty build context");
        must(
            docker()
                .args(["build", "--network", "host", "--build-arg"])
                .arg(format!("BASE_IMAGE={BASE_IMAGE}"))
                .args(["-t", REDIS_IMAGE, "-f"])
                .arg(repo().join("machine-runtime/tests/fixtures/docker/redis.Dockerfile"))
                .arg(empty.path()),
        );
    }
    // Copied atomically: a build may be reading the previous one. The simulation service's binary goes
    // next to the runtime, where the Dockerfile takes it from.
    let target = repo().join(PREBUILT);
    std::fs::create_dir_all(target.parent().unwrap()).expect("creating .docker-prebuilt/test");
    for (bin, target) in [
        (BIN, target.clone()),
        (SIMULATE_BIN, target.with_file_name("machine-simulate")),
    ] {
        let partial = target.with_extension("partial");
        std::fs::copy(bin, &partial)
            .unwrap_or_else(|e| panic!("copying {bin} into the build context: {e}"));
        // Symbols stripped as a release build's are, so the image's size is the size users get; the
        // linker's binutils are there wherever this test builds.
        let _ = Command::new("strip").arg(&partial).status();
        std::fs::rename(&partial, &target)
            .unwrap_or_else(|e| panic!("placing {} in the build context: {e}", target.display()));
    }
}

/// A compose project on a generated profile, with the test's override; `down -v` and its image removed
/// when dropped.
pub(crate) struct Project {
    name: String,
    /// A copy of `generated/<profile>` ([`Project::new`] says what differs), removed when dropped.
    dir: tempfile::TempDir,
    /// Published ports: the container's port → the free host port the copy publishes it on.
    ports: std::collections::BTreeMap<u16, u16>,
    /// The machine image's test-private tag ([`test_image`]), never the user's `machine-runtime:<profile>`.
    image: String,
    /// The override: the machine image's tag, and for profiles with a local Redis the registry-free Redis.
    override_file: tempfile::NamedTempFile,
    down: bool,
}

/// The tag the test builds a profile's machine image under: private to the test and removed afterwards, so
/// a user's `machine-runtime:<profile>` (what a later `docker-compose up -d` without `--build` runs) is never
/// replaced by a test image.
fn test_image(profile: &str) -> String {
    format!("machine-docker-test/machine-runtime:{profile}")
}

impl Project {
    /// The machine image's test-private tag.
    pub(crate) fn image(&self) -> &str {
        &self.image
    }

    pub(crate) fn new(profile: &str) -> Project {
        let name = format!("machine-docker-test-{profile}");
        // The generated folder as it is, but for two lines: the build context as an absolute path (the
        // copy lives elsewhere), and each published port on a free host port instead of the profile's, so
        // a machine the user runs on 9090 is neither disturbed nor in the way.
        let generated = repo().join("generated").join(profile);
        let dir = tempfile::tempdir().expect("a folder for the compose project");
        std::fs::copy(generated.join(".env"), dir.path().join(".env")).expect("copying .env");
        let mut ports = std::collections::BTreeMap::new();
        let compose: Vec<String> = std::fs::read_to_string(generated.join("docker-compose.yaml"))
            .expect("reading the generated compose file")
            .lines()
            .map(|line| {
                if line.trim() == "context: \"../..\"" {
                    return line.replace("../..", repo().to_str().unwrap());
                }
                // `      - "127.0.0.1:9090:9090/tcp"`
                let Some(spec) = line.trim().strip_prefix("- \"127.0.0.1:") else {
                    return line.to_owned();
                };
                let mut parts = spec.splitn(2, ':');
                let (Some(host), Some(rest)) = (parts.next(), parts.next()) else {
                    return line.to_owned();
                };
                let container: u16 = rest.split('/').next().unwrap().parse().unwrap();
                assert_eq!(host, container.to_string(), "{line}");
                let free = crate::up_support::free_port();
                ports.insert(container, free);
                line.replace(&format!("127.0.0.1:{host}:"), &format!("127.0.0.1:{free}:"))
            })
            .collect();
        std::fs::write(
            dir.path().join("docker-compose.yaml"),
            compose.join("\n") + "\n",
        )
        .expect("writing the compose file");
        let image = test_image(profile);
        // The overrides: the machine image under the test's own tag, and (no registry) the official Redis
        // image replaced by Debian's redis-server.
        let mut text = format!("services:\n  machine:\n    image: \"{image}\"\n");
        if profile == "full-local" {
            text.push_str(&format!("  redis:\n    image: \"{REDIS_IMAGE}\"\n"));
        }
        let mut override_file = tempfile::Builder::new()
            .suffix(".yaml")
            .tempfile()
            .expect("an override file");
        std::io::Write::write_all(&mut override_file, text.as_bytes())
            .expect("writing the override");
        let project = Project {
            name,
            dir,
            ports,
            image,
            override_file,
            down: false,
        };
        // Leftovers of an interrupted run would hold the ports.
        let _ = run(&mut project.compose(&["down", "-v", "--remove-orphans"]));
        project
    }

    /// `docker-compose -p NAME -f docker-compose.yaml [-f OVERRIDE] ARGS` in the profile's folder.
    fn compose(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(self.dir.path())
            .args(["-p", &self.name, "-f", "docker-compose.yaml"]);
        cmd.arg("-f").arg(self.override_file.path());
        cmd.args(args).env("COMPOSE_INTERACTIVE_NO_CLI", "1");
        cmd
    }

    /// The free host port the project publishes the container's `port` on.
    fn port(&self, port: u16) -> u16 {
        *self
            .ports
            .get(&port)
            .unwrap_or_else(|| panic!("port {port} is not published: {:?}", self.ports))
    }

    /// [`Project::compose`] with `--env-file FILE`, a global option (before the command), as the README says.
    fn compose_with_env_file(&self, env_file: &Path, args: &[&str]) -> Command {
        let mut cmd = self.compose(&["--env-file"]);
        cmd.arg(env_file).args(args);
        cmd
    }

    /// `docker-compose build` of the machine image from the project's Dockerfile, with BuildKit or the
    /// classic builder; what it printed.
    pub(crate) fn build(&self, buildkit: bool) -> Ran {
        let mut cmd = self.compose(&["build"]);
        for arg in [
            format!("BASE_IMAGE={BASE_IMAGE}"),
            // With a prebuilt binary the builder stage only copies: the base image serves, no Rust image.
            format!("BUILDER_IMAGE={BASE_IMAGE}"),
            format!("MACHINE_RUNTIME_BINARY={PREBUILT}"),
            // The worker bundle's release is not reachable here: the stand-in bundle, from the context.
            format!("WORKER_BUNDLE_URL={BUNDLE}"),
        ] {
            cmd.arg("--build-arg").arg(arg);
        }
        cmd.arg("machine")
            .env("DOCKER_BUILDKIT", if buildkit { "1" } else { "0" })
            .env("COMPOSE_DOCKER_CLI_BUILD", "1");
        if buildkit {
            // BuildKit without buildx needs the engine package's own CLI (Debian's docker.io ships it);
            // a newer CLI elsewhere on PATH would insist on the buildx plugin.
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("/usr/bin:{path}"));
        }
        let built = must(&mut cmd);
        // The classic builder leaves the builder stage as an untagged image (the build context inside).
        must(docker().args([
            "image",
            "prune",
            "-f",
            "--filter",
            "label=machine-runtime.stage=builder",
        ]));
        built
    }

    /// The id of a service's container.
    fn container(&self, service: &str) -> String {
        let id = must(&mut self.compose(&["ps", "-q", service]))
            .stdout
            .trim()
            .to_string();
        assert!(
            !id.is_empty(),
            "no container for service {service} in {}",
            self.name
        );
        id
    }

    /// The number of times the engine restarted a service's container.
    fn restarts(&self, service: &str) -> u64 {
        must(docker().args([
            "inspect",
            "-f",
            "{{.RestartCount}}",
            &self.container(service),
        ]))
        .stdout
        .trim()
        .parse()
        .expect("a restart count")
    }

    /// `/health` as seen inside the machine's container, through its Node.js (the image has no curl).
    fn health_inside(&self) -> Value {
        let ran = run(&mut self.compose(&[
            "exec",
            "-T",
            "machine",
            "node",
            "-e",
            "fetch('http://127.0.0.1:9090/health').then(r => r.text()).then(t => process.stdout.write(t))",
        ]));
        serde_json::from_str(&ran.stdout).unwrap_or(Value::Null)
    }

    /// Stops and removes everything; how long it took.
    fn down(&mut self) -> Duration {
        let started = Instant::now();
        must(&mut self.compose(&["down", "-v", "--remove-orphans"]));
        self.down = true;
        started.elapsed()
    }

    /// The project's containers, networks and volumes still known to the engine.
    fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let mut left = Vec::new();
        for what in [
            vec!["ps", "-a", "-q", "--filter", &label],
            vec!["network", "ls", "-q", "--filter", &label],
            vec!["volume", "ls", "-q", "--filter", &label],
        ] {
            let out = must(docker().args(&what)).stdout;
            left.extend(out.lines().map(|l| format!("{} {l}", what[0])));
        }
        left
    }

    /// Logs of the project, for failure messages.
    fn logs(&self) -> String {
        tail(&run(&mut self.compose(&["logs", "--no-color"])).stdout)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if !self.down {
            let _ = run(&mut self.compose(&["down", "-v", "--remove-orphans"]));
        }
        // The test's image goes too (its layers stay cached for the next build).
        let _ = run(docker().args(["image", "rm", "-f", &self.image]));
    }
}

/// The programs of `tools` an image has on its `PATH`.
fn tools_in(image: &str, tools: &[&str]) -> Vec<String> {
    let script = format!(
        "for t in {}; do command -v \"$t\" >/dev/null && echo \"$t\"; done; true",
        tools.join(" ")
    );
    must(docker().args(["run", "--rm", "--entrypoint", "sh", image, "-c", &script]))
        .stdout
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What `host.docker.internal:host-gateway` resolves to in a container: the engine's host-gateway
/// address (the default bridge's gateway unless the engine is configured otherwise), asked of a
/// container of [`BASE_IMAGE`] because that answer is the one that counts. (An engine started on a fresh
/// machine leaves the gateway out of the default bridge's IPAM settings, so `docker network inspect
/// bridge` is no way to learn it.)
pub(crate) fn host_gateway() -> String {
    let resolved = must(docker().args([
        "run",
        "--rm",
        "--add-host",
        "host.docker.internal:host-gateway",
        BASE_IMAGE,
        "getent",
        "ahostsv4",
        "host.docker.internal",
    ]))
    .stdout;
    let gateway = resolved
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        gateway.parse::<std::net::Ipv4Addr>().is_ok(),
        "host.docker.internal resolved to {resolved:?} in a container, not an IPv4 address"
    );
    gateway
}

/// Waits until Docker reports the container `healthy`; when it did, or `None` after [`PATIENCE`].
fn docker_healthy(container: &str) -> Option<Instant> {
    let started = Instant::now();
    while started.elapsed() < PATIENCE {
        let status = run(docker().args(["inspect", "-f", "{{.State.Health.Status}}", container]));
        if status.stdout.trim() == "healthy" {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// An image's id, or `None` when there is no such image.
fn image_id(image: &str) -> Option<String> {
    let ran = run(docker().args(["image", "inspect", "-f", "{{.Id}}", image]));
    ran.ok.then(|| ran.stdout.trim().to_string())
}

/// The size of an image in bytes.
fn image_size(image: &str) -> u64 {
    must(docker().args(["image", "inspect", "-f", "{{.Size}}", image]))
        .stdout
        .trim()
        .parse()
        .expect("an image size")
}

/// The IP address of a container on its compose network (the engine's own bridge).
fn container_ip(id: &str) -> String {
    must(docker().args([
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        id,
    ]))
    .stdout
    .trim()
    .to_string()
}

/// A status subscriber on the compose Redis (`machine:status:*`), on its own thread.
fn status_tap(redis_ip: &str) -> mpsc::Receiver<Value> {
    let client = redis::Client::open(format!("redis://{redis_ip}:6379")).unwrap();
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(10))
            .expect("connecting to the compose Redis");
        let mut pubsub = conn.as_pubsub();
        pubsub.psubscribe("machine:status:*").expect("psubscribe");
        let _ = ready_tx.send(());
        while let Ok(message) = pubsub.get_message() {
            let payload: String = message.get_payload().unwrap_or_default();
            let value = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
            if tx.send(value).is_err() {
                return;
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the test subscriber did not subscribe to the compose Redis");
    rx
}

/// `GET http://127.0.0.1:<port><path>`'s status code, or 0 when nothing answers (refused, reset, or the
/// empty reply of a published port whose service listens on the container's loopback only).
fn status_code(port: u16, path: &str) -> u16 {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Whether every one of `workers` is connected and idle in a status message.
fn all_idle(message: &Value, workers: &[String]) -> bool {
    workers.iter().all(|w| {
        message["status"]["workers"][w]["is_connected"] == true
            && message["status"]["workers"][w]["status"] == "idle"
    })
}

/// A tokio runtime for the job queue helpers (async redis).
pub(crate) fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The compose Redis at `ip`, once it answers.
async fn redis_conn(ip: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{ip}:6379")).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match client.get_multiplexed_async_connection().await {
            Ok(mut conn) => {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return conn;
                }
            }
            Err(e) if Instant::now() > deadline => {
                panic!("the compose Redis at {ip} does not answer: {e}")
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn full_local_builds_and_runs_a_job_in_docker_compose_on_a_cpu_only_host() {
    let _one = one_project();
    if engine().is_none() {
        return;
    }
    // The user's own image of the profile (if any) is the same before and after the test.
    let users_image = image_id("machine-runtime:full-local");
    prepare();
    let mut project = Project::new("full-local");

    let started = Instant::now();
    let built = project.build(true);
    let build_time = started.elapsed();
    let size = image_size(&project.image);
    let toolchain = tools_in(&project.image, &["python3", "git", "curl"]);
    assert!(
        toolchain.is_empty(),
        "full-local runs no ComfyUI, yet its image has {toolchain:?}"
    );

    // Redis first, with the job broker's findMatchingJob function, as the API's tooling leaves it.
    must(&mut project.compose(&["up", "-d", "--no-build", "redis"]));
    let redis = project.container("redis");
    let redis_ip = container_ip(&redis);
    let rt = tokio_runtime();
    let mut conn = rt.block_on(async {
        let mut conn = redis_conn(&redis_ip).await;
        crate::job_queue::load_job_matching(&mut conn).await;
        conn
    });
    let tap = status_tap(&redis_ip);

    let started = Instant::now();
    must(&mut project.compose(&["up", "-d", "--no-build"]));
    let mut healthy_after = None;
    while started.elapsed() < PATIENCE {
        if status_code(project.port(9090), "/health") == 200 {
            healthy_after = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(healthy_after) = healthy_after else {
        panic!(
            "the machine did not answer /health 200 on 127.0.0.1:{} within {PATIENCE:?}\n{}",
            project.port(9090),
            project.logs()
        );
    };
    // Docker's own verdict, from its healthcheck (the generated compose file's).
    let Some(docker_healthy_at) = docker_healthy(&project.container("machine")) else {
        panic!(
            "Docker never reported the machine healthy within {PATIENCE:?} although /health answered 200\n{}",
            project.logs()
        );
    };
    let docker_healthy_after = docker_healthy_at.duration_since(started);

    // The simulation services answer on their published ports (they listen on 0.0.0.0 inside).
    for port in [8399, 8400].map(|p| project.port(p)) {
        assert_eq!(
            status_code(port, "/health"),
            200,
            "the simulation service published on 127.0.0.1:{port} does not answer\n{}",
            project.logs()
        );
    }
    // Published on this host only; the Redis not at all.
    let machine = project.container("machine");
    let published = must(docker().args(["port", &machine])).stdout;
    let bindings: Vec<&str> = published.lines().collect();
    assert_eq!(
        bindings.len(),
        3,
        "expected 9090, 8399 and 8400 published: {published}"
    );
    for line in &bindings {
        assert!(
            line.contains("-> 127.0.0.1:"),
            "a port is published beyond this host: {line}"
        );
    }
    let redis_published = must(docker().args(["port", &redis])).stdout;
    assert!(
        redis_published.trim().is_empty(),
        "the compose Redis is published on the host: {redis_published}"
    );
    // host.docker.internal (the local API and monitor) resolves inside the machine container.
    let hosts = run(&mut project.compose(&[
        "exec",
        "-T",
        "machine",
        "getent",
        "hosts",
        "host.docker.internal",
    ]));
    assert!(
        hosts.ok && !hosts.stdout.trim().is_empty(),
        "host.docker.internal does not resolve in the machine container: {hosts}"
    );

    // Status messages in the compose Redis: the profile's 2 simulated GPUs, the bundle's four workers idle.
    let workers: Vec<String> = (0..4)
        .map(|i| format!("full-local-worker-simulation-websocket-{i}"))
        .collect();
    let ready = next_where(&tap, "all four workers connected and idle", |m| {
        m["machine_id"] == "full-local" && all_idle(m, &workers)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", project.logs()));
    assert_eq!(
        ready["structure"]["gpu_count"], 2,
        "the status should report the profile's 2 simulated GPUs: {ready}"
    );

    // A job as the API pushes it: claimed by one of the machine's workers, run on its simulation service.
    let job = "docker-e2e-job";
    let worker = rt.block_on(async {
        let payload =
            serde_json::json!({"steps": 3, "processing_time_ms": 300, "prompt": "docker"});
        crate::job_queue::push_job(
            &mut conn,
            &crate::job_queue::NewJob::new(job, "simulation", payload),
        )
        .await;
        crate::job_queue::wait_job_status(&mut conn, job, "completed").await;
        let worker: Option<String> =
            redis::AsyncCommands::hget(&mut conn, format!("job:{job}"), "worker_id")
                .await
                .unwrap();
        worker.unwrap_or_default()
    });
    assert!(
        workers.contains(&worker),
        "{job} was completed by {worker:?}, not one of the machine's workers {workers:?}"
    );

    // `docker-compose down`: the shutdown status goes out, and nothing is left.
    let logs = project.logs();
    let stop_time = project.down();
    if let Err(e) = next_where(&tap, "update_type shutdown", |m| {
        crate::broker::update_type(m) == "shutdown"
    }) {
        panic!("{e}\n--- logs before down ---\n{logs}");
    }
    let left = project.leftovers();
    assert!(left.is_empty(), "docker-compose down left {left:?}");
    assert_eq!(
        image_id("machine-runtime:full-local"),
        users_image,
        "the test changed the user's machine-runtime:full-local image"
    );

    println!(
        "docker figures (full-local): image {:.0} MB, build {:.1} s (BuildKit{}), up -d to /health 200 {:.2} s, to Docker healthy {:.2} s ({:.2} s after the 200), down {:.2} s; {BEFORE}",
        size as f64 / 1e6,
        build_time.as_secs_f64(),
        if built.stdout.contains("CACHED") || built.stderr.contains("CACHED") {
            ", cached layers"
        } else {
            ""
        },
        healthy_after.as_secs_f64(),
        docker_healthy_after.as_secs_f64(),
        docker_healthy_after
            .saturating_sub(healthy_after)
            .as_secs_f64(),
        stop_time.as_secs_f64()
    );
}

/// api-only, built by the classic builder, with its secrets passed the README's way (`--env-file`): the
/// bundle's four openai workers come up and stay up. Its "remote" Redis is a test redis-server on the host,
/// reached as `host.docker.internal` (so the host-gateway mapping is used for real).
#[test]
fn api_only_with_the_bundle_and_dummy_secrets_runs_its_workers_without_a_crash_loop() {
    let _one = one_project();
    if engine().is_none() {
        return;
    }
    prepare();
    let mut project = Project::new("api-only");
    let started = Instant::now();
    project.build(false);
    let build_time = started.elapsed();
    let toolchain = tools_in(project.image(), &["python3", "git", "curl"]);
    assert!(
        toolchain.is_empty(),
        "api-only runs no ComfyUI, yet its image has {toolchain:?}"
    );

    // The host Redis listens on loopback and where host.docker.internal leads a container.
    let gateway = host_gateway();
    let redis = crate::redis_server::RedisServer::start_with(&[
        "--bind",
        "127.0.0.1",
        &gateway,
        "--protected-mode",
        "no",
    ]);
    let rt = tokio_runtime();
    rt.block_on(async {
        let mut conn = redis.conn().await;
        crate::job_queue::load_job_matching(&mut conn).await;
    });
    let tap = {
        let client = redis::Client::open(redis.url()).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut conn = client.get_connection().expect("the test Redis");
            let mut pubsub = conn.as_pubsub();
            pubsub.psubscribe("machine:status:*").expect("psubscribe");
            while let Ok(message) = pubsub.get_message() {
                let payload: String = message.get_payload().unwrap_or_default();
                if tx
                    .send(serde_json::from_str(&payload).unwrap_or(Value::Null))
                    .is_err()
                {
                    return;
                }
            }
        });
        rx
    };

    // Dummy secrets, in a file passed with the README's one `--env-file`.
    let secrets = tempfile::NamedTempFile::new().expect("a secrets file");
    std::fs::write(
        secrets.path(),
        format!(
            "HUB_REDIS_URL='redis://host.docker.internal:{}'\nOPENAI_API_KEY='sk-dummy-docker-test'\nWORKER_WEBSOCKET_AUTH_TOKEN='dummy-token'\nCLOUD_STORAGE_PROVIDER='none'\n",
            redis.port()
        ),
    )
    .expect("writing the secrets file");
    must(&mut project.compose_with_env_file(secrets.path(), &["up", "-d", "--no-build"]));

    let workers: Vec<String> = (0..4)
        .map(|i| format!("api-only-worker-openai-{i}"))
        .collect();
    next_where(&tap, "all four openai workers connected and idle", |m| {
        m["machine_id"] == "api-only" && all_idle(m, &workers)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", project.logs()));
    // Still up a while later: no app restarted, and the container was never restarted.
    std::thread::sleep(Duration::from_secs(5));
    let health = project.health_inside();
    assert_eq!(
        health["healthy"],
        true,
        "api-only is not healthy: {health}\n{}",
        project.logs()
    );
    let services = health["services"].as_object().cloned().unwrap_or_default();
    for (name, app) in &services {
        if let Some(restarts) = app.get("restarts").and_then(Value::as_u64) {
            assert_eq!(
                restarts,
                0,
                "{name} restarted {restarts} times: {health}\n{}",
                project.logs()
            );
        }
    }
    assert!(
        services
            .keys()
            .filter(|k| k.starts_with("openai-worker-"))
            .count()
            == 4,
        "expected four openai workers in /health: {health}"
    );
    assert_eq!(
        project.restarts("machine"),
        0,
        "the machine container restarted\n{}",
        project.logs()
    );
    let stop_time = project.down();
    let left = project.leftovers();
    assert!(left.is_empty(), "docker-compose down left {left:?}");
    println!(
        "docker figures (api-only): image {:.0} MB, build {:.1} s (classic builder), down {:.2} s; {BEFORE}",
        image_size(&project.image) as f64 / 1e6,
        build_time.as_secs_f64(),
        stop_time.as_secs_f64()
    );
}
