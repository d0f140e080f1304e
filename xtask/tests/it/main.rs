//! Integration tests of the generated artifacts and the xtask CLI, run against the real readers (Compose
//! schemas, docker-compose v1, kubernetes-validate, PM2, node, dotenvy, git). A missing tool fails the test
//! with the command that installs it; nothing is skipped.

// Spawning tools (redis-server, node, docker, git, the runtime binary) is the point here; the
// runtime's own children go through machine_runtime::command::new_child (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod cli;
mod compose_rules;
mod compose_schema;
mod compose_v1;
mod drift;
mod env_readers;
mod gpu_sharing;
mod kubernetes;
mod pm2_load;
mod secrets;
mod shared_host;
mod swarm_stack;
mod validator;
mod worker_env;
mod writer_safety;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one external command may take on a loaded 2-core machine before the test gives up on it.
const COMMAND_DEADLINE: Duration = Duration::from_secs(180);

/// The repository root (the xtask crate's parent directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
}

/// The profile names: file stems of `profiles/*.json`, sorted. Never empty.
pub fn profiles() -> Vec<String> {
    let dir = root().join("profiles");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no profiles under {}", dir.display());
    names
}

/// `generated/<profile>` of the repository.
pub fn generated(profile: &str) -> PathBuf {
    root().join("generated").join(profile)
}

/// Reads a file, naming it when that fails.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Parses a JSON file.
pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The xtask binary of this build, run against the repository (no `XTASK_ROOT` inherited).
pub fn xtask() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.env_remove("XTASK_ROOT");
    cmd
}

/// The xtask binary run against another root (a temporary copy of the repository's inputs).
pub fn xtask_in(root: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.env("XTASK_ROOT", root);
    cmd
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct Output {
    /// The exit code (`None` when a signal ended it).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs a command to completion, polling until it exits or `COMMAND_DEADLINE` passes (then it is killed and
/// the test fails naming it).
pub fn run(cmd: &mut Command) -> Output {
    try_run(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run`] without panicking (for guards that clean up while a test is already failing).
pub fn try_run(cmd: &mut Command) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {shown}: {e}"))?;
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + COMMAND_DEADLINE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{shown} did not finish within {COMMAND_DEADLINE:?}"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {shown}: {e}")),
        }
    };
    Ok(Output {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// The path of an external tool on `PATH`; fails the test with the install command when it is missing.
pub fn tool(name: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not on PATH; this test needs the real tool: {install}")
        })
}

/// `docker-compose` v1 (Debian's package): `config` needs no Docker engine.
pub fn docker_compose() -> PathBuf {
    tool(
        "docker-compose",
        "install Debian's docker-compose package (`apt-get install -y docker-compose`, v1.29)",
    )
}

/// Node.js, 20.6 or newer (`--env-file`); checked once per test run.
pub fn node() -> PathBuf {
    static NODE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    NODE.get_or_init(|| {
        let install =
            "install Node.js 20.6 or newer (`apt-get install -y nodejs` from NodeSource, or nvm)";
        let node = tool("node", install);
        let out = run(Command::new(&node).arg("--version"));
        let version: Vec<u32> = out
            .stdout
            .trim()
            .trim_start_matches('v')
            .split('.')
            .filter_map(|n| n.parse().ok())
            .collect();
        assert!(
            version.len() >= 2 && (version[0], version[1]) >= (20, 6),
            "node {} has no --env-file: {install}",
            out.stdout.trim()
        );
        node
    })
    .clone()
}

/// A `docker-compose` v1 command in `dir` with a clean environment: no inherited `COMPOSE_*` or secrets,
/// and a `DOCKER_HOST` that does not exist, which proves `config` never talks to an engine.
pub fn compose_command(dir: &Path) -> Command {
    let mut cmd = Command::new(docker_compose());
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LANG", "C.UTF-8")
        .env("HOME", dir)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("COMPOSE_PROJECT_NAME", "xtask-it")
        .env("COMPOSE_INTERACTIVE_NO_CLI", "1");
    cmd
}

/// `cargo xtask plan <profile> --format json` (plus extra arguments), parsed.
pub fn plan_json(profile: &str, extra: &[&str]) -> Value {
    let out = run(xtask()
        .args(["plan", profile, "--format", "json"])
        .args(extra));
    assert!(out.ok(), "xtask plan {profile} {extra:?} failed: {out}");
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("xtask plan {profile} printed invalid JSON ({e}):\n{out}"))
}

/// Copies a directory tree (files and folders only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    for entry in
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display()))
    {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copying {}: {e}", entry.path().display()));
        }
    }
}

/// A temporary root holding copies of the repository's `profiles/`, `schemas/` and `generated/`.
pub fn temp_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for sub in ["profiles", "schemas", "generated"] {
        copy_tree(&root().join(sub), &dir.path().join(sub));
    }
    dir
}

/// Fails with every problem at once, or passes when there are none.
pub fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problem(s) with {what}:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
