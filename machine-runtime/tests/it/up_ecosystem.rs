//! `machine-runtime up --ecosystem` on bad files: every problem reported at once, warnings for
//! unknown fields, nothing started.

use std::process::Command;

use crate::up_support::BIN;

fn up(text: &str) -> (Option<i32>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ecosystem.config.json");
    std::fs::write(&file, text.replace("@DIR@", dir.path().to_str().unwrap())).unwrap();
    let out = Command::new(BIN)
        .args(["up", "--health-port", "0", "--ecosystem"])
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (
        out.status.code(),
        text.replace(dir.path().to_str().unwrap(), "DIR"),
        dir,
    )
}

#[test]
fn reports_every_problem_of_a_bad_file_and_starts_nothing() {
    let (code, out, dir) = up(r#"{"apps": [
        {"name": "a", "script": "touch", "args": ["@DIR@/started"], "max_restarts": "many", "kill_timeout": "soon"},
        {"name": "b", "script": "touch", "args": ["@DIR@/started"], "machine_wait_for": ["c"], "machine_gpu": -1}
    ]}"#);
    assert_eq!(code, Some(1));
    assert_eq!(
        out,
        "machine-runtime: error: ecosystem DIR/ecosystem.config.json has 4 problems:\n  \
         - app \"a\": field \"max_restarts\" must be a non-negative integer, found \"many\"\n  \
         - app \"a\": field \"kill_timeout\" must be milliseconds as a number or a string like \"500ms\", \"10s\", \"2m\", found \"soon\"\n  \
         - app \"b\": field \"machine_gpu\" must be a non-negative integer, found -1\n  \
         - app \"b\": field \"machine_wait_for\" names \"c\", which is not an app of this ecosystem\n"
    );
    assert!(!dir.path().join("started").exists());
}

#[test]
fn names_the_file_when_it_is_missing_or_not_json() {
    let (code, out, _dir) = up("{\"apps\": [");
    assert_eq!(code, Some(1));
    assert!(out.starts_with("machine-runtime: error: ecosystem DIR/ecosystem.config.json is not valid json: EOF while parsing"), "{out}");

    let out = Command::new(BIN)
        .args(["up", "--ecosystem", "/nonexistent/eco.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with(
            "machine-runtime: error: cannot read ecosystem file /nonexistent/eco.json: No such file"
        ),
        "{out:?}"
    );
}

#[test]
fn warns_about_unknown_fields_and_runs_anyway() {
    let (code, out, dir) = up(r#"{"apps": [
        {"name": "once", "script": "touch", "args": "@DIR@/ran", "autorestart": false, "merge_logs": true, "scirpt": "x"}
    ]}"#);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("machine-runtime: warning: app \"once\": field \"merge_logs\" is a PM2 option machine-runtime does not implement; ignored"), "{out}");
    assert!(out.contains("machine-runtime: warning: app \"once\": unknown field \"scirpt\" ignored; did you mean \"script\"?"), "{out}");
    assert!(
        out.contains("every app has ended; nothing left to supervise"),
        "{out}"
    );
    assert!(dir.path().join("ran").exists());
}
