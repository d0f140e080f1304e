//! PM2 patterns real apps rely on (issue 20), each run under `pm2-runtime` 7 and under
//! `machine-runtime up --ecosystem` with the same file, comparing what each did: the stop signal
//! the app received, the kill after `kill_timeout`, `process.send('ready')` with `wait_ready`, the
//! restart of a leaking app by `max_memory_restart`, a command line in `script`, and the processes
//! left once the runtime is gone.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::up_support::{Runtime, kill_pm2_apps, pids_with, token, wait_for, wait_line};

/// A `pm2-runtime start <file>` in its own process group and `PM2_HOME`.
struct Pm2 {
    child: Child,
    home: PathBuf,
    log: PathBuf,
}

impl Pm2 {
    fn start(dir: &Path, file: &Path, env: &[(&str, &str)]) -> Pm2 {
        let home = dir.join("pm2-home");
        let log = dir.join("pm2-runtime.log");
        let child = Command::new("pm2-runtime")
            .arg("start")
            .arg(file)
            .env("PM2_HOME", &home)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("pm2-runtime is installed (npm install -g pm2@7)");
        Pm2 { child, home, log }
    }

    /// `pm2 jlist` against this runtime: name → (status, restart_time); `None` while it does not
    /// answer yet.
    fn jlist(&self) -> Option<Vec<(String, String, u64)>> {
        let out = Command::new("pm2")
            .arg("jlist")
            .env("PM2_HOME", &self.home)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let list: Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            list.as_array()?
                .iter()
                .map(|app| {
                    (
                        app["name"].as_str().unwrap_or_default().to_owned(),
                        app["pm2_env"]["status"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        app["pm2_env"]["restart_time"].as_u64().unwrap_or(0),
                    )
                })
                .collect(),
        )
    }

    /// Waits until `pm2 jlist` satisfies `ok`.
    fn wait_list(&self, what: &str, ok: impl Fn(&[(String, String, u64)]) -> bool) {
        wait_for(
            &format!("pm2-runtime: {what}"),
            || format!("{:?}\n{}", self.jlist(), self.log_text()),
            || self.jlist().filter(|l| ok(l)).map(|_| ()),
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to pm2-runtime and waits for it to exit.
    fn stop(&mut self, signal: i32) {
        // SAFETY: kill(2) on the pm2-runtime this test started.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let child = &mut self.child;
        wait_for("pm2-runtime to exit", String::new, || {
            child.try_wait().unwrap()
        });
    }
}

impl Drop for Pm2 {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the group of the pm2-runtime this test started.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        // PM2 starts its apps detached (their own process groups): the group kill leaves them running.
        kill_pm2_apps(&self.home);
    }
}

/// One side of a comparison: a folder the apps write into (`@OUT@`) and the file for it.
struct Side {
    out: PathBuf,
    file: Value,
}

/// The ecosystem `file` for the side writing into `<dir>/<name>` (`@OUT@`), with `@FIX@` the
/// fixtures folder `<dir>/fix`.
fn side(dir: &Path, name: &str, file: &Value) -> Side {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let text = file
        .to_string()
        .replace("@OUT@", out.to_str().unwrap())
        .replace("@FIX@", dir.join("fix").to_str().unwrap());
    Side {
        out,
        file: serde_json::from_str(&text).unwrap(),
    }
}

/// The PM2 side and ours of `file` (see [`side`]).
fn sides(dir: &Path, file: &Value) -> (Side, Side) {
    (side(dir, "pm2", file), side(dir, "ours", file))
}

/// Writes the fixture `name` (mode 755) into `<dir>/fix`.
fn fixture(dir: &Path, name: &str, text: &str) {
    let fix = dir.join("fix");
    std::fs::create_dir_all(&fix).unwrap();
    let path = fix.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// Runs pm2-runtime on `side`'s file (written next to it).
fn pm2_on(side: &Side, env: &[(&str, &str)]) -> Pm2 {
    let file = side.out.join("pm2.config.json");
    std::fs::write(&file, side.file.to_string()).unwrap();
    Pm2::start(side.out.as_path(), &file, env)
}

/// The lines of `<out>/<name>`, once it has at least `n` of them.
fn lines(out: &Path, name: &str, n: usize, context: impl Fn() -> String) -> Vec<String> {
    let path = out.join(name);
    wait_for(
        &format!("{n} lines in {}", path.display()),
        || format!("{:?}\n{}", std::fs::read_to_string(&path).ok(), context()),
        || {
            let text = std::fs::read_to_string(&path).ok()?;
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            (lines.len() >= n).then_some(lines)
        },
    )
}

/// A bash app that records each stop signal it receives in `$OUT/$NAME` and exits on it
/// (`polite`), or records it and keeps running (`stubborn`: only SIGKILL ends it).
const SIGNAL_APP: &str = r#"#!/bin/bash
# token: $2
rec() { echo "$1" >> "$OUT/$NAME"; [ "$MODE" = polite ] && exit 0; }
trap 'rec INT' INT
trap 'rec TERM' TERM
echo "started $$" >> "$OUT/$NAME"
while true; do sleep 0.05; done
"#;

/// The stop-signal file: a polite app and a stubborn one with a short `kill_timeout`.
fn signal_file(tag: &str) -> Value {
    let app = |name: &str, mode: &str| {
        json!({"name": name, "script": "@FIX@/signal.sh", "interpreter": "none",
               "args": ["x", tag], "kill_timeout": 700,
               "env": {"OUT": "@OUT@", "NAME": name, "MODE": mode}})
    };
    json!({"apps": [app("polite", "polite"), app("stubborn", "stubborn")]})
}

/// What an app of [`signal_file`] recorded, without its pid: `["started", "INT"]`.
fn recorded(out: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(out.join(name))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
        .collect()
}

/// Runs the signal file under both: pm2-runtime stopped with `pm2_stop`, ours with each of
/// `our_stops`; `env` for both. Returns what the apps recorded under PM2 and under ours (one per
/// stop), and checks that nothing of the file's apps is left.
fn stop_under_both(
    env: &[(&str, &str)],
    pm2_stop: i32,
    our_stops: &[i32],
) -> (Vec<Vec<String>>, Vec<Vec<Vec<String>>>) {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "signal.sh", SIGNAL_APP);
    let tag = token("pm2sig");
    let (pm2_side, _) = sides(dir.path(), &signal_file(&tag));
    let mut pm2 = pm2_on(&pm2_side, env);
    for name in ["polite", "stubborn"] {
        lines(&pm2_side.out, name, 1, || pm2.log_text());
    }
    pm2.stop(pm2_stop);
    assert_eq!(pids_with(&tag), Vec::<u32>::new(), "left by pm2-runtime");
    let theirs = ["polite", "stubborn"]
        .map(|n| recorded(&pm2_side.out, n))
        .to_vec();

    let mut ours = Vec::new();
    for (k, &signal) in our_stops.iter().enumerate() {
        let side = side(dir.path(), &format!("ours-{k}"), &signal_file(&tag));
        let mut rt = Runtime::start(side.file.clone(), env);
        for name in ["polite", "stubborn"] {
            lines(&side.out, name, 1, || rt.output());
        }
        rt.signal(signal);
        rt.wait_exit();
        assert_eq!(
            pids_with(&tag),
            Vec::<u32>::new(),
            "left by machine-runtime"
        );
        let out = rt.output();
        assert!(
            out.contains("stubborn did not stop within kill_timeout 700ms; sending SIGKILL"),
            "{out}"
        );
        ours.push(
            ["polite", "stubborn"]
                .map(|n| recorded(&side.out, n))
                .to_vec(),
        );
    }
    (theirs, ours)
}

#[test]
fn apps_stop_with_pm2s_sigint_then_sigkill_after_kill_timeout() {
    let (theirs, ours) = stop_under_both(&[], libc::SIGTERM, &[libc::SIGTERM, libc::SIGINT]);
    // PM2 7 sends SIGINT (its KILL_SIGNAL) whatever stopped it; the stubborn app is killed.
    assert_eq!(theirs, [["started", "INT"], ["started", "INT"]]);
    for (ours, stop) in ours.iter().zip(["SIGTERM", "SIGINT"]) {
        assert_eq!(ours, &theirs, "ours, stopped by {stop}, vs pm2-runtime");
    }
}

#[test]
fn pm2_kill_signal_changes_the_stop_signal_under_both() {
    let env = [("PM2_KILL_SIGNAL", "SIGTERM")];
    let (theirs, ours) = stop_under_both(&env, libc::SIGINT, &[libc::SIGINT]);
    assert_eq!(theirs, [["started", "TERM"], ["started", "TERM"]]);
    assert_eq!(ours[0], theirs, "ours vs pm2-runtime");
}

/// A Node app: records `typeof process.send`, sends a message, then (unless `NEVER_READY`)
/// `'ready'`, and stays up.
const NODE_APP: &str = r#"
const fs = require('fs');
fs.appendFileSync(`${process.env.OUT}/${process.env.NAME}`, `send ${typeof process.send}\n`);
setTimeout(() => {
  process.send({ hello: process.env.NAME });
  if (!process.env.NEVER_READY) process.send('ready');
}, 300);
setInterval(() => {}, 1000);
"#;

#[test]
fn wait_ready_apps_get_process_send_and_are_ready_by_pm2s_rule() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "app.js", NODE_APP);
    let file = json!({"apps": [
        {"name": "says-ready", "script": "@FIX@/app.js", "wait_ready": true, "listen_timeout": 20000,
         "env": {"OUT": "@OUT@", "NAME": "says-ready"}},
        {"name": "never-ready", "script": "@FIX@/app.js", "wait_ready": true, "listen_timeout": 1500,
         "env": {"OUT": "@OUT@", "NAME": "never-ready", "NEVER_READY": "1"}},
        {"name": "plain-node", "script": "@FIX@/app.js",
         "env": {"OUT": "@OUT@", "NAME": "plain-node", "NEVER_READY": "1"}}
    ]});
    let (pm2_side, our_side) = sides(dir.path(), &file);
    let names = ["says-ready", "never-ready", "plain-node"];

    let pm2 = pm2_on(&pm2_side, &[]);
    let theirs: Vec<Vec<String>> = names
        .iter()
        .map(|n| lines(&pm2_side.out, n, 1, || pm2.log_text()))
        .collect();
    pm2.wait_list("every app online, none restarted", |list| {
        list.len() == 3 && list.iter().all(|(_, s, r)| s == "online" && *r == 0)
    });
    drop(pm2);

    let rt = Runtime::start(our_side.file.clone(), &[]);
    let ours: Vec<Vec<String>> = names
        .iter()
        .map(|n| lines(&our_side.out, n, 1, || rt.output()))
        .collect();
    assert_eq!(ours, theirs, "what process.send is, ours vs pm2-runtime");
    assert_eq!(theirs[0], ["send function"]);
    // Without wait_ready (and no readiness probe) an app is `running`, as PM2's `online`.
    for (name, state) in names.iter().zip(["ready", "ready", "running"]) {
        let app = rt.wait_state(name, state);
        assert_eq!(app["restarts"], 0, "{app}");
    }
    wait_for(
        "the messages and the listen_timeout in the log",
        || rt.output(),
        || {
            let out = rt.output();
            (out.contains("[says-ready] message: {\"hello\":\"says-ready\"}")
                && out.contains("[plain-node] message: {\"hello\":\"plain-node\"}")
                && out.contains(
                    "never-ready sent no 'ready' message within its listen_timeout 1.5s; counted as ready, as PM2 does",
                ))
            .then_some(())
        },
    );
    let out = rt.output();
    assert!(!out.contains("says-ready sent no 'ready'"), "{out}");
}

/// A Python app that grows by 8 MB every 50 ms up to 160 MB, recording each start and the
/// signal that stops it.
const LEAK_APP: &str = r#"
import os, signal, sys, time
out = os.path.join(os.environ["OUT"], "leak")
def rec(word):
    with open(out, "a") as f:
        f.write(word + "\n")
def stop(sig, frame):
    rec(signal.Signals(sig).name)
    sys.exit(0)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
rec("start")
hold = []
while True:
    if len(hold) < 20:
        chunk = bytearray(8 << 20)
        for i in range(0, len(chunk), 4096):
            chunk[i] = 1
        hold.append(chunk)
    time.sleep(0.05)
"#;

#[test]
fn max_memory_restart_restarts_a_leaking_app_gracefully_under_both() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), "leak.py", LEAK_APP);
    let file = json!({"apps": [
        {"name": "leak", "script": "@FIX@/leak.py", "interpreter": "python3",
         "max_memory_restart": "64M", "env": {"OUT": "@OUT@"}}
    ]});
    let (pm2_side, our_side) = sides(dir.path(), &file);
    // PM2 samples every PM2_WORKER_INTERVAL ms (default 30 s); the runtime reads it the same way.
    let env = [("PM2_WORKER_INTERVAL", "500")];

    let pm2 = pm2_on(&pm2_side, &env);
    let theirs = lines(&pm2_side.out, "leak", 3, || pm2.log_text());
    pm2.wait_list("leak restarted", |list| {
        list.iter().any(|(_, _, r)| *r >= 1)
    });
    drop(pm2);

    let rt = Runtime::start(our_side.file.clone(), &env);
    let ours = lines(&our_side.out, "leak", 3, || rt.output());
    assert_eq!(
        ours[..3],
        theirs[..3],
        "start, stop signal, start: ours vs pm2-runtime"
    );
    assert_eq!(theirs[..3], ["start", "SIGINT", "start"]);
    let app = wait_for(
        "the memory restart in /status",
        || rt.output(),
        || {
            let app = rt.app_status("leak");
            (app["memory_restarts"].as_u64() >= Some(1)).then_some(app)
        },
    );
    assert!(app["restarts"].as_u64() >= Some(1), "{app}");
    assert_eq!(app["unstable_restarts"], 0, "{app}");
    // The restart is logged; /status counts it before that line necessarily reaches the test.
    wait_line(
        &rt,
        "over its max_memory_restart 64.0 MiB; restarting it gracefully",
    );
}

#[test]
fn a_command_line_in_script_runs_as_under_pm2() {
    let dir = tempfile::tempdir().unwrap();
    fixture(
        dir.path(),
        "main.py",
        "import json, os, sys, time\nopen(os.path.join(os.environ['OUT'], 'argv'), 'w').write(json.dumps(sys.argv) + '\\n')\ntime.sleep(600)\n",
    );
    let file = json!({"apps": [
        {"name": "py", "script": "python3 main.py --port 18926", "cwd": "@FIX@",
         "env": {"OUT": "@OUT@"}}
    ]});
    let (pm2_side, our_side) = sides(dir.path(), &file);
    let pm2 = pm2_on(&pm2_side, &[]);
    let theirs = lines(&pm2_side.out, "argv", 1, || pm2.log_text());
    drop(pm2);
    let rt = Runtime::start(our_side.file.clone(), &[]);
    let ours = lines(&our_side.out, "argv", 1, || rt.output());
    assert_eq!(ours, theirs, "ours vs pm2-runtime");
    assert_eq!(theirs, [r#"["main.py", "--port", "18926"]"#]);
    assert_eq!(rt.wait_state("py", "running")["restarts"], 0);
}

#[test]
fn bad_stop_signal_memory_and_listen_timeout_refuse_the_file_with_one_line_each() {
    let mut rt = Runtime::start(
        json!({"apps": [
            {"name": "a", "script": "sleep", "args": ["600"], "kill_signal": "TERM",
             "max_memory_restart": "lots", "listen_timeout": -1}
        ]}),
        &[],
    );
    let status = rt.wait_exit();
    assert!(!status.success());
    let out = rt.output();
    for line in [
        "app \"a\": field \"kill_signal\" must be a signal name (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGABRT, SIGALRM, SIGKILL), found \"TERM\"",
        "app \"a\": field \"listen_timeout\" must be milliseconds as a number or a string like \"500ms\", \"10s\", \"2m\", found -1",
        "app \"a\": field \"max_memory_restart\" must be a size as PM2 writes it: bytes as a number, or a string like \"150M\", \"1G\", \"512K\", \"1048576\" (K, M, G are powers of 1024), found \"lots\"",
    ] {
        assert_eq!(out.matches(line).count(), 1, "{line}\n{out}");
    }
    assert!(!out.contains("started (pid"), "{out}");
    let mut rt = Runtime::start(
        json!({"apps": [{"name": "a", "script": "sleep", "args": ["600"]}]}),
        &[("PM2_KILL_SIGNAL", "KILLME")],
    );
    assert!(!rt.wait_exit().success());
    let out = rt.output();
    assert!(
        out.contains("environment variable PM2_KILL_SIGNAL is \"KILLME\", which is not a signal name; use one of SIGINT, SIGTERM"),
        "{out}"
    );
}

/// A Redis that accepts connections and never answers (issue 20's fault): the lease at start gives
/// up after its bound and the apps start; the broker keeps connecting in the background.
#[test]
fn a_redis_that_never_answers_delays_no_app() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept every connection and hold it open, answering nothing.
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            holder.lock().unwrap().push(stream);
        }
    });
    let url = format!("redis://127.0.0.1:{port}");
    let rt = Runtime::start(
        json!({"apps": [{"name": "plain", "script": "sleep", "args": ["600"]}]}),
        &[
            ("MACHINE_ID", "silent-redis"),
            ("HUB_REDIS_URL", url.as_str()),
            ("BROKER_PREFLIGHT", "off"),
            ("MACHINE_FAKE_GPUS", "0"),
        ],
    );
    rt.wait_state("plain", "running");
    // /status says running before the runtime's "started" line reaches the test.
    let out = wait_line(&rt, "plain started (pid");
    assert!(
        out.contains("redis did not answer within 500ms at start; starting without the lease on machine:lease:silent-redis"),
        "{out}"
    );
    // It started on that bound, not on the link's 5 s response timeout.
    let started = out.find("plain started (pid").expect(&out);
    assert!(
        !out[..started].contains("timed out"),
        "the app waited for a timeout of the broker link:\n{out}"
    );
    assert!(
        !held.lock().unwrap().is_empty(),
        "the runtime never connected"
    );
}

/// An app whose child leaves its process group and session (`setsid`): after `kill -9` of the
/// runtime, pm2-runtime leaves the app and that child running; ours leaves the child until the next
/// start on the host, which ends it (the app's cgroup), and nothing after that.
#[test]
fn after_kill_9_the_next_start_ends_what_the_apps_left() {
    let tag = token("pm2cg");
    let dir = tempfile::tempdir().unwrap();
    fixture(
        dir.path(),
        "family.sh",
        &format!(
            "#!/bin/bash\nsetsid sh -c 'echo $$ > \"$OUT/orphan\"; sleep 600; : {tag}' &\nexec sleep 600\n"
        ),
    );
    let file = json!({"apps": [
        {"name": "family", "script": "@FIX@/family.sh", "interpreter": "none", "args": [tag],
         "env": {"OUT": "@OUT@"}}
    ]});
    let (pm2_side, our_side) = sides(dir.path(), &file);
    let orphan = |out: &Path, context: &dyn Fn() -> String| -> u32 {
        lines(out, "orphan", 1, context)[0].trim().parse().unwrap()
    };

    let mut pm2 = pm2_on(&pm2_side, &[]);
    let theirs = orphan(&pm2_side.out, &|| pm2.log_text());
    // SAFETY: kill(2) on the pm2-runtime process this test started (not its group).
    unsafe { libc::kill(pm2.child.id() as i32, libc::SIGKILL) };
    let _ = pm2.child.wait();
    let pm2_left = pids_with(&tag);
    for pid in &pm2_left {
        // SAFETY: kill(2) on a process of this test's fixture (its unique token).
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    assert!(pm2_left.contains(&theirs), "pm2-runtime left {pm2_left:?}");

    let mut first = Runtime::start(our_side.file.clone(), &[]);
    let ours = orphan(&our_side.out, &|| first.output());
    // The orphan's file can come before the runtime's lines; the cgroup line (if any) is logged
    // before the app starts, so it is in the output once the "started" line is.
    let out = wait_line(&first, "family started (pid");
    if !crate::up_support::has_cgroups(&out) {
        return;
    }
    first.signal(libc::SIGKILL);
    first.wait_exit();
    // The app itself died with the runtime (PR_SET_PDEATHSIG); its setsid child is still there.
    assert_eq!(pids_with(&tag), [ours], "after kill -9 of machine-runtime");

    let second = Runtime::start(
        json!({"apps": [{"name": "next", "script": "sleep", "args": ["600"]}]}),
        &[],
    );
    second.wait_state("next", "running");
    wait_for(
        "the orphan of the killed runtime to be gone",
        || second.output(),
        || pids_with(&tag).is_empty().then_some(()),
    );
    // The sweep is logged before any app starts, so it is in the output once the "started" line is
    // (the orphan can be gone, and `next` running in /status, before the lines reach the test).
    let out = wait_line(&second, "next started (pid");
    // The setsid child and its sleep.
    assert!(
        out.contains("stopped 2 processes left in /sys/fs/cgroup")
            && out.contains(&format!(
                "/machine-runtime/{0}@{1} by an earlier runtime (pid {0}) that did not stop cleanly",
                first.child.id(),
                std::os::unix::fs::MetadataExt::ino(&std::fs::metadata("/proc/self/ns/pid").unwrap())
            )),
        "{out}"
    );
}
