//! The runtime's own log lines of a real `up`: an RFC 3339 time on each, `--log-format json` (or
//! `MACHINE_LOG_FORMAT=json`) for log shippers, no colours off a terminal.

use serde_json::{Value, json};

use crate::up_support::{Runtime, is_rfc3339_millis, wait_for, write_ecosystem};

/// An ecosystem with one app that prints a line, and a PM2 key we ignore (a warning).
fn ecosystem() -> Value {
    json!({"apps": [{"name": "svc", "script": "sh", "args": ["-c", "echo hello; exec sleep 1000"],
                     "kill_retry_time": 100}]})
}

/// The runtime's lines (the apps' own output is `[name] text`).
fn runtime_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| !l.starts_with('[')).collect()
}

#[test]
fn text_lines_carry_an_rfc3339_time_before_the_unchanged_message() {
    let rt = Runtime::start(ecosystem(), &[("NO_COLOR", "")]);
    wait_for(
        "the app to be up and its line",
        || rt.output(),
        || {
            let out = rt.output();
            (out.contains("all 1 app is up") && out.contains("[svc] hello")).then_some(())
        },
    );
    let out = rt.output();
    let lines = runtime_lines(&out);
    assert!(lines.len() >= 3, "{out}");
    for line in &lines {
        let (time, rest) = line.split_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(is_rfc3339_millis(time), "{line}");
        assert!(rest.starts_with("machine-runtime: "), "{line}");
    }
    assert!(
        out.contains("Z machine-runtime: warning: app \"svc\": field \"kill_retry_time\""),
        "{out}"
    );
    assert!(out.contains("[svc] hello"), "{out}");
    assert!(!out.contains('\x1b'), "no colours off a terminal: {out:?}");
}

#[test]
fn json_lines_for_log_shippers_from_the_flag_or_the_environment() {
    for by_flag in [true, false] {
        let (dir, file) = write_ecosystem(&ecosystem());
        let file = file.to_str().unwrap().to_owned();
        let mut args = vec!["up", "--ecosystem", file.as_str()];
        let mut env = vec![];
        if by_flag {
            // The flag wins over the environment.
            args.extend(["--log-format", "json"]);
            env.push(("MACHINE_LOG_FORMAT", "text"));
        } else {
            env.push(("MACHINE_LOG_FORMAT", "json"));
        }
        let rt = Runtime::spawn(dir, &args, &env, &[]);
        rt.health_port();
        wait_for(
            "the app to be up",
            || rt.output(),
            || rt.output().contains("all 1 app is up").then_some(()),
        );
        // The app's line is forwarded on its own schedule.
        wait_for(
            "the app's line",
            || rt.output(),
            || rt.output().contains(r#""source":"svc""#).then_some(()),
        );
        let out = rt.output();
        // Every line is JSON, the apps' output included.
        let entries: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        for entry in entries.iter().filter(|e| e["source"] == "machine-runtime") {
            let keys: Vec<&str> = entry
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, ["time", "level", "source", "message"], "{entry}");
            assert!(
                is_rfc3339_millis(entry["time"].as_str().unwrap()),
                "{entry}"
            );
        }
        let warning = entries
            .iter()
            .find(|e| e["message"].as_str().unwrap().contains("kill_retry_time"))
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(warning["level"], "warn", "{warning}");
        assert!(
            warning["message"]
                .as_str()
                .unwrap()
                .starts_with("warning: app \"svc\"")
        );
        let started = entries
            .iter()
            .find(|e| {
                e["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("svc started (pid ")
            })
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(started["level"], "info");
        // The app's own output is a JSON line too, named by its app.
        let hello = entries
            .iter()
            .find(|e| e["source"] == "svc")
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(
            (&hello["stream"], &hello["message"], &hello["level"]),
            (&json!("stdout"), &json!("hello"), &json!("info")),
            "{hello}"
        );
    }
}

#[test]
fn a_log_format_that_does_not_exist_is_refused_naming_the_allowed_ones() {
    let out = std::process::Command::new(crate::up_support::BIN)
        .args(["gpus"])
        .env("MACHINE_LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "machine-runtime: error: MACHINE_LOG_FORMAT is \"yaml\", which is not a log format; use text or json\n"
    );
}

#[test]
fn with_json_a_machine_that_cannot_start_says_why_in_a_json_line() {
    // What a log shipper reading `up --log-format json` gets when the machine does not start: the
    // warnings and the final error, every line an object.
    let out = std::process::Command::new(crate::up_support::BIN)
        .args([
            "up",
            "--ecosystem",
            "/nonexistent/eco.json",
            "--health-port",
            "0",
        ])
        .env("MACHINE_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = lines.last().expect("an error line");
    assert_eq!(
        (&last["level"], &last["source"]),
        (&json!("error"), &json!("machine-runtime"))
    );
    let message = last["message"].as_str().unwrap();
    assert!(
        message.starts_with("error: cannot read ecosystem file /nonexistent/eco.json"),
        "{message}"
    );
    assert!(is_rfc3339_millis(last["time"].as_str().unwrap()), "{last}");
}

#[test]
fn a_stop_names_the_order_only_where_there_are_workers_and_services() {
    // A plain PM2 file has neither: the stop line says what happens, not "workers first".
    let mut rt = Runtime::start(ecosystem(), &[]);
    wait_for(
        "the app to be up",
        || rt.output(),
        || rt.output().contains("all 1 app is up").then_some(()),
    );
    rt.signal(libc::SIGINT);
    assert!(rt.wait_exit().success(), "{}", rt.output());
    let out = rt.output();
    assert!(
        out.contains("machine-runtime: SIGINT received; stopping the apps\n"),
        "{out}"
    );
    assert!(!out.contains("workers first"), "{out}");
}
