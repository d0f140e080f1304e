//! Every generated `ecosystem.config.json` loads in real PM2 (`pm2 start <file>`, then `pm2 jlist`), each in
//! its own daemon under a temporary `PM2_HOME` that a guard always kills.
//!
//! The apps' programs are not installed here. PM2 refuses, before registering, an app whose `script` path
//! does not exist ("Script not found"), and runs the rest (they crash and restart, which is fine). So each
//! file is loaded twice:
//! - unchanged: every app whose script exists (or is on `PATH`, as PM2 resolves it) is registered, and PM2
//!   complains about nothing but the missing scripts;
//! - with only the missing absolute `script` paths replaced by a stub that sleeps: every app is registered, in
//!   the file's order, with the file's fields and env as PM2 read them.
//!
//! `PM2_CONCURRENT_ACTIONS=1` makes PM2 register apps one at a time (its default starts two at once, so the
//! ids, hence `jlist`'s order, could interleave).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{assert_no_problems, generated, profiles, read_json, run, tool, try_run};

fn pm2() -> PathBuf {
    tool("pm2", "install PM2 from npm (`npm install -g pm2`)")
}

/// A PM2 daemon in a temporary home; dropping it kills the daemon (and its apps) even when a test panics.
struct Pm2Daemon {
    /// The `pm2` program, found before anything starts (so `Drop` never has to look for it).
    pm2: PathBuf,
    home: tempfile::TempDir,
    killed: bool,
}

impl Pm2Daemon {
    fn new() -> Self {
        Pm2Daemon {
            pm2: pm2(),
            home: tempfile::tempdir().expect("a temporary PM2_HOME"),
            killed: false,
        }
    }

    /// A `pm2` command bound to this daemon's home.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.pm2);
        cmd.args(args)
            .env("PM2_HOME", self.home.path())
            .env("PM2_CONCURRENT_ACTIONS", "1")
            // The apps must get these from the file, not from the test's environment.
            .env_remove("CUDA_VISIBLE_DEVICES")
            .env_remove("WORKER_GPU_ID");
        cmd
    }

    /// The daemon's pid, once it has written its pid file.
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.home.path().join("pm2.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// `pm2 kill`, then waits (with a generous deadline) until the daemon process is gone; falls back to
    /// SIGKILL on the pid it recorded. Returns what went wrong, if anything; never panics (it runs in `Drop`).
    fn kill(&mut self) -> Result<(), String> {
        if self.killed {
            return Ok(());
        }
        self.killed = true;
        let Some(pid) = self.pid() else {
            // No daemon was started.
            return Ok(());
        };
        let out = try_run(&mut self.command(&["kill"]));
        let alive = || Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid);
        let deadline = Instant::now() + Duration::from_secs(60);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            return Err(format!(
                "pm2 kill left daemon {pid} running (killed it with SIGKILL): {out:?}"
            ));
        }
        match out {
            Ok(out) if out.ok() => Ok(()),
            Ok(out) => Err(format!("pm2 kill failed: {out}")),
            Err(e) => Err(e),
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

impl Drop for Pm2Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("{e}");
        }
    }
}

/// Whether PM2 finds `script` from `cwd` as it does: the path resolved against `cwd`, else a `PATH` lookup.
fn pm2_resolves(script: &str, cwd: &str) -> bool {
    if Path::new(cwd).join(script).exists() {
        return true;
    }
    !script.contains('/')
        && std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| d.join(script).is_file())
}

/// `pm2 jlist`, sorted by pm_id (registration order).
fn jlist(daemon: &Pm2Daemon) -> Result<Vec<Value>, String> {
    let out = run(&mut daemon.command(&["jlist"]));
    if !out.ok() {
        return Err(format!("pm2 jlist failed: {out}"));
    }
    // PM2 may print a banner before the JSON on its first run; the list is the last line.
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('['))
        .unwrap_or("");
    let mut list: Vec<Value> = serde_json::from_str(line)
        .map_err(|e| format!("pm2 jlist printed no JSON list ({e}): {out}"))?;
    list.sort_by_key(|p| p["pm_id"].as_u64());
    Ok(list)
}

/// The problems of PM2 reading the unchanged file: apps with a resolvable script registered in order, and
/// "Script not found" for exactly the others.
fn load_unchanged(label: &str, file: &Path, apps: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut daemon = Pm2Daemon::new();
    let out = run(&mut daemon.command(&["start", &file.to_string_lossy()]));
    let printed = format!("{}{}", out.stdout, out.stderr);
    let mut expected = Vec::new();
    for app in apps {
        let name = app["name"].as_str().unwrap_or("");
        let script = app["script"].as_str().unwrap_or("");
        let cwd = app["cwd"].as_str().unwrap_or(".");
        if pm2_resolves(script, cwd) {
            expected.push(name.to_string());
        } else {
            // PM2 names the path it resolved against the app's cwd.
            let resolved = Path::new(cwd).join(script);
            if !printed.contains(&format!("Script not found: {}", resolved.display())) {
                problems.push(format!(
                    "{label}: app {name}: PM2 did not report its missing script {}: {out}",
                    resolved.display()
                ));
            }
        }
    }
    for line in printed
        .lines()
        .filter(|l| l.contains("[ERROR]") || l.contains("Error"))
    {
        if !line.contains("Script not found: ") {
            problems.push(format!("{label}: PM2 complained: {line}"));
        }
    }
    match jlist(&daemon) {
        Ok(list) => {
            let got: Vec<String> = list
                .iter()
                .map(|p| p["name"].as_str().unwrap_or("").to_string())
                .collect();
            if got != expected {
                problems.push(format!(
                    "{label} (unchanged): PM2 registered {got:?}, expected {expected:?}"
                ));
            }
        }
        Err(e) => problems.push(format!("{label}: {e}")),
    }
    if let Err(e) = daemon.kill() {
        problems.push(format!("{label}: {e}"));
    }
    problems
}

/// The problems of PM2 reading the file with missing scripts stubbed: every app registered in file order,
/// with the file's env (CUDA_VISIBLE_DEVICES, WORKER_GPU_ID, …) and fields.
fn load_stubbed(label: &str, eco: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut daemon = Pm2Daemon::new();
    let stub = daemon.home.path().join("stub-service");
    std::fs::write(&stub, "#!/bin/sh\nexec sleep 300\n").expect("writing the stub");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the stub");
    }
    let mut eco = eco.clone();
    for app in eco["apps"].as_array_mut().expect("apps is a list") {
        let script = app["script"].as_str().unwrap_or("").to_string();
        let cwd = app["cwd"].as_str().unwrap_or(".").to_string();
        if !pm2_resolves(&script, &cwd) {
            app["script"] = Value::String(stub.to_string_lossy().into_owned());
        }
    }
    let file = daemon.home.path().join("ecosystem.config.json");
    std::fs::write(&file, serde_json::to_string_pretty(&eco).expect("json"))
        .expect("writing the copy");
    let out = run(&mut daemon.command(&["start", &file.to_string_lossy()]));
    if !out.ok() {
        problems.push(format!("{label} (stubbed): pm2 start failed: {out}"));
    }
    let apps = eco["apps"].as_array().cloned().unwrap_or_default();
    match jlist(&daemon) {
        Ok(list) => {
            let got: Vec<&str> = list
                .iter()
                .map(|p| p["name"].as_str().unwrap_or(""))
                .collect();
            let expected: Vec<&str> = apps
                .iter()
                .map(|a| a["name"].as_str().unwrap_or(""))
                .collect();
            if got != expected {
                problems.push(format!(
                    "{label}: PM2 registered {got:?}, expected the file's order {expected:?}"
                ));
            }
            for (app, proc) in apps.iter().zip(&list) {
                problems.extend(compare_app(label, app, &proc["pm2_env"]));
            }
        }
        Err(e) => problems.push(format!("{label}: {e}")),
    }
    if let Err(e) = daemon.kill() {
        problems.push(format!("{label}: {e}"));
    }
    problems
}

/// The app as PM2 holds it (`pm2_env`) against the file's app.
fn compare_app(label: &str, app: &Value, pm2_env: &Value) -> Vec<String> {
    let name = app["name"].as_str().unwrap_or("");
    let mut problems = Vec::new();
    let file_env = app["env"].as_object().cloned().unwrap_or_default();
    for key in ["CUDA_VISIBLE_DEVICES", "WORKER_GPU_ID"] {
        let ours = file_env.get(key);
        let theirs = pm2_env["env"].get(key);
        if ours != theirs {
            problems.push(format!(
                "{label}: {name}: pm2_env.env.{key} is {theirs:?}, the file says {ours:?}"
            ));
        }
    }
    for (key, value) in &file_env {
        if pm2_env["env"].get(key) != Some(value) {
            problems.push(format!(
                "{label}: {name}: pm2_env.env.{key} is {:?}, the file says {value}",
                pm2_env["env"].get(key)
            ));
        }
    }
    // The fields PM2 acts on, as typed in the file (a wrong type would have made PM2 abort or coerce).
    for field in [
        "args",
        "autorestart",
        "max_restarts",
        "min_uptime",
        "kill_timeout",
        "restart_delay",
        "exp_backoff_restart_delay",
    ] {
        if let Some(ours) = app.get(field)
            && pm2_env.get(field) != Some(ours)
        {
            problems.push(format!(
                "{label}: {name}: pm2_env.{field} is {:?}, the file says {ours}",
                pm2_env.get(field)
            ));
        }
    }
    if app.get("cwd") != pm2_env.get("pm_cwd") {
        problems.push(format!(
            "{label}: {name}: pm2_env.pm_cwd is {:?}, the file says {:?}",
            pm2_env.get("pm_cwd"),
            app.get("cwd")
        ));
    }
    if app.get("interpreter").and_then(Value::as_str) == Some("none")
        && pm2_env.get("exec_interpreter").and_then(Value::as_str) != Some("none")
    {
        problems.push(format!(
            "{label}: {name}: pm2_env.exec_interpreter is {:?}, the file says none",
            pm2_env.get("exec_interpreter")
        ));
    }
    problems
}

#[test]
fn every_ecosystem_file_loads_in_real_pm2() {
    let mut problems = Vec::new();
    for profile in profiles() {
        let label = format!("generated/{profile}/ecosystem.config.json");
        let file = generated(&profile).join("ecosystem.config.json");
        let eco = read_json(&file);
        let apps = eco["apps"].as_array().cloned().unwrap_or_default();
        if apps.is_empty() {
            problems.push(format!("{label}: no apps"));
            continue;
        }
        // Services first, then workers.
        let roles: Vec<&str> = apps
            .iter()
            .map(|a| a["machine_role"].as_str().unwrap_or("?"))
            .collect();
        if roles
            .iter()
            .skip_while(|r| **r == "service")
            .any(|r| *r != "worker")
        {
            problems.push(format!(
                "{label}: apps are not services then workers: {roles:?}"
            ));
        }
        problems.extend(load_unchanged(&label, &file, &apps));
        problems.extend(load_stubbed(&label, &eco));
    }
    assert_no_problems("PM2 loading the ecosystem files", &problems);
}

/// The guard really stops the daemon, also when dropped without an explicit kill.
#[test]
fn the_pm2_guard_kills_its_daemon_on_drop() {
    let daemon = Pm2Daemon::new();
    let out = run(&mut daemon.command(&["ping"]));
    assert!(out.ok(), "pm2 ping failed: {out}");
    let pid = daemon
        .pid()
        .expect("pm2 ping starts a daemon that writes its pid");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(daemon);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
        "the PM2 daemon {pid} outlived its guard"
    );
}
