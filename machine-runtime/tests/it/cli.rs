//! `machine-runtime ps|logs|restart|stop|start` against a real running machine (`up` on an
//! ecosystem), and their one-line answers to bad input: an unknown name, no or a wrong token, no
//! machine, an app that has printed nothing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::up_support::{BIN, Runtime, free_port, is_rfc3339_millis, wait_for, wait_line};

const TOKEN: &str = "cli-test-token-7f3a";

/// Runs `machine-runtime ARGS` with `env` (and nothing of the shell's machine variables).
fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in [
        "MACHINE_URL",
        "MACHINE_HEALTH_PORT",
        "MACHINE_CONTROL_TOKEN",
        "NO_COLOR",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the command failed with exactly one stderr line containing `expected`.
fn fails_with(out: &Output, expected: &str) {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "exit 0; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.contains(expected), "{err}");
}

/// A machine with a service, a worker that waits for it, a quiet app and a witness that ends
/// every 100 ms and is restarted by policy (proof that restarts happen while a stopped app stays
/// stopped).
fn machine() -> Runtime {
    Runtime::start(
        json!({"apps": [
            {"name": "svc", "script": "sh",
             "args": ["-c", "echo svc up; while [ ! -f \"$D/more\" ]; do sleep 0.05; done; echo svc more; exec sleep 1000"],
             "env": {"D": "@DIR@"}, "machine_role": "service", "restart_delay": 0},
            {"name": "wrk", "script": "sh", "args": ["-c", "echo wrk up; exec sleep 1000"],
             "machine_role": "worker", "machine_wait_for": ["svc"]},
            {"name": "quiet", "script": "sleep", "args": "1000"},
            {"name": "witness", "script": "sleep", "args": "0.1", "min_uptime": 10, "restart_delay": 0},
        ]}),
        &[("MACHINE_CONTROL_TOKEN", TOKEN)],
    )
}

fn url(rt: &Runtime) -> String {
    format!("http://127.0.0.1:{}", rt.health_port())
}

fn ps_json(url: &str) -> Vec<Value> {
    let out = cli(&["ps", "--json", "--url", url], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

fn entry<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list:?}"))
}

#[test]
fn ps_shows_every_app_as_a_table_and_as_json() {
    let rt = machine();
    for name in ["svc", "wrk", "quiet"] {
        rt.wait_state(name, "running");
    }
    let url = url(&rt);
    let list = ps_json(&url);
    let names: Vec<&str> = list.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["svc", "wrk", "quiet", "witness"]);
    let svc = entry(&list, "svc");
    let status = rt.app_status("svc");
    assert_eq!(svc["pid"], status["pid"]);
    assert_eq!(
        (
            &svc["role"],
            &svc["status"],
            &svc["state"],
            &svc["restarts"]
        ),
        (
            &json!("service"),
            &json!("online"),
            &json!("running"),
            &json!(0)
        )
    );
    assert!(svc["memory"].as_u64().unwrap() > 0, "{svc}");
    assert!(svc["cpu"].as_f64().unwrap() >= 0.0, "{svc}");
    assert!(svc["uptime_ms"].as_u64().is_some(), "{svc}");
    assert_eq!(entry(&list, "quiet")["role"], Value::Null);

    // The table, from the local default URL (MACHINE_HEALTH_PORT), not --url.
    let port = rt.health_port().to_string();
    let out = cli(&["ps"], &[("MACHINE_HEALTH_PORT", &port)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "ROLE", "GPU", "PID", "STATUS", "RESTARTS", "UPTIME", "CPU", "MEMORY"
        ]
    );
    let svc_row: Vec<&str> = lines
        .find(|l| l.starts_with("svc "))
        .unwrap_or_else(|| panic!("{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        &svc_row[..6],
        [
            "svc",
            "service",
            "-",
            &status["pid"].to_string(),
            "online",
            "0"
        ],
        "{table}"
    );
    assert!(svc_row[7].ends_with('%'), "{table}");
    assert!(svc_row[9].ends_with('B'), "{table}");
}

#[test]
fn logs_prints_name_prefixed_timestamped_lines_and_follows_new_ones() {
    let rt = machine();
    rt.wait_state("wrk", "running");
    let url = url(&rt);
    wait_for(
        "the first lines",
        || rt.output(),
        || {
            let out = cli(&["logs", "--url", &url, "svc", "wrk"], &[]);
            let stdout = text(&out.stdout);
            (stdout.contains("svc up") && stdout.contains("wrk up")).then_some(())
        },
    );
    let out = cli(&["logs", "--url", &url, "--lines", "5", "svc", "wrk"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // Compose's shape: the name padded, `|`, the time, the text; oldest first across apps (the two
    // apps start together, so either may have printed first).
    let mut seen = Vec::new();
    let mut last_at = String::new();
    for line in stdout.lines() {
        let (prefix, rest) = line.split_once(" | ").unwrap_or_else(|| panic!("{line}"));
        assert_eq!(prefix.len(), 3, "{stdout}");
        let (at, message) = rest.split_once(' ').unwrap();
        assert!(is_rfc3339_millis(at), "{line}");
        assert!(at >= last_at.as_str(), "oldest first: {stdout}");
        last_at = at.to_owned();
        assert_eq!(message, format!("{} up", prefix.trim_end()), "{stdout}");
        seen.push(prefix.trim_end().to_owned());
    }
    seen.sort();
    assert_eq!(seen, ["svc", "wrk"], "{stdout}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(
        !stdout.contains('\x1b'),
        "no colours off a terminal: {stdout:?}"
    );

    // Every app: one column for the names, as wide as the longest that printed ("svc", "wrk").
    let out = cli(&["logs", "--url", &url], &[]);
    let stdout = text(&out.stdout);
    assert!(stdout.lines().count() >= 2, "{stdout}");
    assert!(stdout.lines().all(|l| l.find(" | ") == Some(3)), "{stdout}");

    // No output yet: said on stderr, not a failure.
    let out = cli(&["logs", "--url", &url, "quiet"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr).trim_end(),
        "machine-runtime: quiet has printed nothing yet"
    );

    // -f: the recent line, then what svc prints next.
    let mut follow = Command::new(BIN)
        .args(["logs", "-f", "--lines", "1", "--url", &url, "svc", "quiet"])
        .env_remove("MACHINE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    for stream in [
        Box::new(follow.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(follow.stderr.take().unwrap()),
    ] {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                seen.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
    }
    let shown = || seen.lock().unwrap().clone();
    wait_for("the recent line and the note", shown, || {
        let s = shown();
        (s.contains("svc up")
            && s.contains("quiet has printed nothing yet; waiting for its first line"))
        .then_some(())
    });
    assert!(!shown().contains("svc more"), "{}", shown());
    std::fs::write(rt.path("more"), "").unwrap();
    let line = wait_for("the followed line", shown, || {
        shown()
            .lines()
            .find(|l| l.ends_with(" svc more"))
            .map(str::to_owned)
    });
    assert!(
        line.starts_with("svc   | "),
        "padded to the longest name: {line}"
    );
    // The follower is still running; ending it is the user's Ctrl-C.
    assert!(follow.try_wait().unwrap().is_none());
    follow.kill().unwrap();
    follow.wait().unwrap();
}

#[test]
fn stop_holds_an_app_stopped_until_start_and_restart_restarts() {
    let rt = machine();
    rt.wait_state("wrk", "running");
    let url = url(&rt);
    let token = [("MACHINE_CONTROL_TOKEN", TOKEN)];
    let old_pid = rt.app_status("svc")["pid"].as_u64().unwrap();

    let out = cli(&["stop", "--url", &url, "svc"], &token);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "svc: stopped (was online)\n");
    let svc = rt.app_status("svc");
    assert_eq!(
        (&svc["state"], &svc["pid"]),
        (&json!("stopped"), &Value::Null)
    );
    // Its worker waits for it, as for any service that is down.
    rt.wait_state("wrk", "waiting");
    // The restart policy keeps running (the witness is restarted three more times) while svc stays
    // stopped: no policy restart brings it back.
    let witness = rt.app_status("witness")["restarts"].as_u64().unwrap();
    wait_for(
        "three witness restarts",
        || rt.output(),
        || (rt.app_status("witness")["restarts"].as_u64().unwrap() >= witness + 3).then_some(()),
    );
    let svc = rt.app_status("svc");
    assert_eq!(
        (&svc["state"], &svc["restarts"]),
        (&json!("stopped"), &json!(0)),
        "{svc}"
    );
    let listed = ps_json(&url);
    assert_eq!(entry(&listed, "svc")["status"], "stopped");
    // The operator's choice keeps the machine from being ready, not from being healthy (a liveness
    // probe must not restart the machine to undo it), its waiting worker included.
    // (The witness crash-loops on purpose, so /health is 503 whenever it is between two runs: wait for
    // a moment it is up. Held apps that counted would keep it 503 for good.)
    let (health, raw) = wait_for(
        "/health 200 with svc held stopped",
        || rt.output(),
        || {
            let (code, health, raw) = rt.get("/health");
            (code == 200).then_some((health, raw))
        },
    );
    assert_eq!(health["healthy"], json!(true), "{raw}");
    assert_eq!(health["services"]["svc"]["healthy"], false, "{raw}");
    assert!(
        health["services"]["svc"]["reason"]
            .as_str()
            .unwrap()
            .contains("svc is stopped: stopped on request; `machine-runtime start svc`"),
        "{raw}"
    );
    let (code, ready, raw) = rt.get("/ready");
    assert_eq!(code, 503, "{raw}");
    let reasons = ready["reasons"].to_string();
    assert!(
        reasons.contains("svc is stopped: stopped on request")
            && reasons.contains("wrk is waiting for svc"),
        "{raw}"
    );
    assert_eq!(rt.app_status("svc")["stopped_on_request"], true);

    let out = cli(&["stop", "--url", &url, "svc"], &token);
    assert_eq!(text(&out.stdout), "svc: already stopped\n");

    let restarts_before = rt.app_status("svc")["restarts"].clone();
    let out = cli(&["start", "--url", &url, "svc"], &token);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "svc: starting (was stopped)\n");
    // A second start right behind the first is the same start, never a restart of the new process
    // (the new user's `start; start` restarted it once).
    let again = cli(&["start", "--url", &url, "svc"], &token);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let svc = rt.wait_state("svc", "running");
    assert_ne!(svc["pid"].as_u64().unwrap(), old_pid);
    assert_eq!(svc["stopped_on_request"], false);
    rt.wait_state("wrk", "running");
    assert_eq!(rt.app_status("svc")["restarts"], restarts_before);
    assert!(
        !rt.output().contains("svc restarting on request"),
        "{}",
        rt.output()
    );
    let out = cli(&["start", "--url", &url, "svc"], &token);
    assert_eq!(text(&out.stdout), "svc: already online\n");

    // restart: a new process, one restart counted; from MACHINE_URL this time.
    let pid = rt.app_status("quiet")["pid"].as_u64().unwrap();
    let out = cli(
        &["restart", "quiet"],
        &[("MACHINE_URL", &url), ("MACHINE_CONTROL_TOKEN", TOKEN)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "quiet: restarting (was online)\n");
    wait_for(
        "quiet restarted",
        || rt.output(),
        || {
            let quiet = rt.app_status("quiet");
            (quiet["restarts"] == 1 && quiet["pid"].as_u64().is_some_and(|p| p != pid))
                .then_some(())
        },
    );
    // Logged when the stop was asked for; nothing since orders it before the test's reader thread.
    wait_line(&rt, "stop of svc requested through POST /stop/service");
}

#[test]
fn bad_input_gets_one_clear_line_and_a_failing_exit() {
    let rt = machine();
    rt.wait_state("wrk", "running");
    let url = url(&rt);
    let token = [("MACHINE_CONTROL_TOKEN", TOKEN)];
    for command in ["restart", "stop", "start"] {
        fails_with(
            &cli(&[command, "--url", &url, "wrkk"], &token),
            "no app named \"wrkk\"; did you mean \"wrk\"? (apps: svc, wrk, quiet, witness)",
        );
    }
    fails_with(
        &cli(&["logs", "--url", &url, "sv"], &[]),
        "did you mean \"svc\"?",
    );
    fails_with(
        &cli(&["restart", "--url", &url, "wrk"], &[]),
        "POST /restart/service needs the machine's control token: set MACHINE_CONTROL_TOKEN",
    );
    fails_with(
        &cli(
            &["stop", "--url", &url, "wrk"],
            &[("MACHINE_CONTROL_TOKEN", "wrong")],
        ),
        "the machine refused the control token: the control token is wrong",
    );
    // Nothing was restarted or stopped by the refused requests.
    let wrk = rt.app_status("wrk");
    assert_eq!(
        (&wrk["state"], &wrk["restarts"]),
        (&json!("running"), &json!(0))
    );
    let nobody = format!("http://127.0.0.1:{}", free_port());
    for args in [
        vec!["ps", "--url", &nobody],
        vec!["logs", "--url", &nobody],
        vec!["restart", "--url", &nobody, "wrk"],
    ] {
        fails_with(
            &cli(&args, &token),
            &format!("no machine answers at {nobody} ("),
        );
    }
    fails_with(
        &cli(&["ps", "--url", "ftp://x"], &[]),
        "--url: \"ftp://x\" is not an http:// url",
    );
    // clap refuses a count out of range with its usage error (exit 2).
    let out = cli(&["logs", "--url", &url, "--lines", "0"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn version_names_the_crate_version_and_the_commit_built() {
    let out = cli(&["--version"], &[]);
    assert!(out.status.success());
    let commit = match option_env!("MACHINE_GIT_COMMIT").filter(|c| !c.trim().is_empty()) {
        Some(commit) => commit.trim().to_owned(),
        None => {
            let head = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .unwrap();
            assert!(head.status.success(), "the tests run in the git checkout");
            text(&head.stdout).trim().to_owned()
        }
    };
    assert_eq!(
        text(&out.stdout),
        format!(
            "machine-runtime {} (commit {commit})\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn every_command_helps_with_examples_and_the_environment_it_reads() {
    let top = text(&cli(&["--help"], &[]).stdout);
    assert!(
        top.contains("Examples:\n  machine-runtime up --profile full-local"),
        "{top}"
    );
    for (command, reads) in [
        (
            "up",
            &[
                "MACHINE_PROFILE",
                "MACHINE_LOG_FORMAT",
                "MACHINE_CONTROL_TOKEN",
                "HUB_REDIS_URL",
                "NO_COLOR",
            ][..],
        ),
        ("plan", &["MACHINE_PROFILE", "MACHINE_FAKE_GPUS"]),
        ("gpus", &["MACHINE_FAKE_GPUS"]),
        ("install", &["WORKSPACE_DIR", "WORKER_BUNDLE_URL"]),
        ("health", &["MACHINE_HEALTH_PORT"]),
        ("ps", &["MACHINE_URL", "MACHINE_HEALTH_PORT"]),
        ("logs", &["MACHINE_URL", "NO_COLOR"]),
        ("restart", &["MACHINE_CONTROL_TOKEN", "MACHINE_URL"]),
        ("stop", &["MACHINE_CONTROL_TOKEN", "MACHINE_URL"]),
        ("start", &["MACHINE_CONTROL_TOKEN", "MACHINE_URL"]),
    ] {
        let out = cli(&[command, "--help"], &[]);
        assert!(out.status.success(), "{command}");
        let help = text(&out.stdout);
        assert!(
            help.contains(&format!("Examples:\n  machine-runtime {command}"))
                || help.contains("Examples:\n  machine-runtime"),
            "{command}: {help}"
        );
        let environment = help
            .split_once("\nEnvironment:\n")
            .unwrap_or_else(|| panic!("{command}: {help}"))
            .1;
        for var in reads {
            assert!(
                environment.contains(&format!("  {var} ")),
                "{command} {var}: {help}"
            );
        }
    }
}

#[test]
fn completions_for_bash_zsh_and_fish_know_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = cli(&["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for command in [
            "up",
            "ps",
            "logs",
            "restart",
            "stop",
            "start",
            "completions",
        ] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
        // The long options (fish writes `-l follow`).
        assert!(
            script.contains("follow") && script.contains("url"),
            "{shell}"
        );
    }
    // Bash reads the script without a syntax error, and it registers the completion.
    let out = cli(&["completions", "bash"], &[]);
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), &out.stdout).unwrap();
    let check = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p machine-runtime",
            script.path().display()
        ))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(
        text(&check.stdout).contains("machine-runtime"),
        "{}",
        text(&check.stdout)
    );
    let refused = cli(&["completions", "tcsh"], &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("[possible values: bash, elvish, fish, powershell, zsh]"),
        "{}",
        text(&refused.stderr)
    );
}

#[test]
fn start_brings_back_an_errored_app_and_stop_ends_a_restart_delay() {
    let rt = Runtime::start(
        json!({"apps": [
            // Fails at once until the file `ok` exists.
            {"name": "flaky", "script": "sh", "args": ["-c", "test -f \"$D/ok\" || exit 3; exec sleep 1000"],
             "env": {"D": "@DIR@"}, "max_restarts": 1, "min_uptime": "60s", "restart_delay": 0},
            // Exits at once and waits out a long restart delay.
            {"name": "slow", "script": "sh", "args": ["-c", "exit 1"], "restart_delay": 600000},
            {"name": "keep", "script": "sleep", "args": "1000"},
        ]}),
        &[("MACHINE_CONTROL_TOKEN", TOKEN)],
    );
    let url = url(&rt);
    let token = [("MACHINE_CONTROL_TOKEN", TOKEN)];
    rt.wait_state("flaky", "errored");
    std::fs::write(rt.path("ok"), "").unwrap();
    let out = cli(&["start", "--url", &url, "flaky"], &token);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "flaky: starting (was errored)\n");
    rt.wait_state("flaky", "running");

    rt.wait_state("slow", "restarting");
    let out = cli(&["stop", "--url", &url, "slow"], &token);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "slow: stopped (was waiting restart)\n");
    let slow = rt.app_status("slow");
    assert_eq!(slow["state"], "stopped", "{slow}");
    // Started again, it runs at once (no delay left to wait out) and ends as before.
    let restarts = slow["restarts"].as_u64().unwrap();
    let out = cli(&["start", "--url", &url, "slow"], &token);
    assert_eq!(text(&out.stdout), "slow: starting (was stopped)\n");
    wait_for(
        "slow to run and end again",
        || rt.output(),
        || {
            let slow = rt.app_status("slow");
            (slow["state"] == "restarting" && slow["restarts"].as_u64() > Some(restarts))
                .then_some(())
        },
    );
}
