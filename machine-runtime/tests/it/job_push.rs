//! `machine-runtime job push`, the README's first job: on a full-local machine (two fake GPUs, the stand-in
//! worker bundle) and a real redis-server without the queue's functions, the command loads the test
//! stand-in of `findMatchingJob` where asked, pushes a simulation job as the API does, and prints its life:
//! claimed by which worker on which GPU, progress, completed, timings. Bad input: one error, exit 1,
//! nothing pushed.

use std::process::{Command, Output};

use serde_json::Value;

use crate::redis_server::RedisServer;
use crate::up_support::{BIN, Runtime, wait_for};

/// `machine-runtime job push ARGS` with `HUB_REDIS_URL` as given (removed when `None`).
fn push(url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["job", "push"]).args(args);
    match url {
        Some(url) => cmd.env("HUB_REDIS_URL", url),
        None => cmd.env_remove("HUB_REDIS_URL"),
    };
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_pushed_job_completes_and_its_life_is_printed() {
    let redis = RedisServer::start();
    let url = redis.url();
    let rt = Runtime::start_profile(
        "full-local",
        &[
            ("MACHINE_FAKE_GPUS", "2"),
            ("MACHINE_ID", "first-job"),
            ("HUB_REDIS_URL", url.as_str()),
            ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "1"),
        ],
    );
    for i in 0..4 {
        rt.wait_state(&format!("simulation-websocket-worker-{i}"), "running");
    }
    let functions = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/redis/job-matching.lua"
    );
    let out = push(
        Some(&url),
        &[
            "--service",
            "simulation",
            "--payload",
            r#"{"steps": 3, "processing_time_ms": 600}"#,
            "--id",
            "first-job-1",
            "--load-functions",
            functions,
            "--timeout",
            "90",
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{stderr}\n{}",
        rt.output()
    );
    for line in [
        "job: loaded the function library jobMatching from ",
        "job: pushed job:first-job-1 (service simulation, priority 50) to jobs:pending",
        "claimed by first-job-worker-simulation-websocket-",
        "progress 100%",
        "completed by first-job-worker-simulation-websocket-",
        "; queued ",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    // The worker's place comes from the machine's status messages: machine, app and GPU.
    assert!(
        stdout.contains("(machine first-job, app simulation-websocket-worker-")
            && (stdout.contains(", GPU 0)") || stdout.contains(", GPU 1)")),
        "{stdout}"
    );
    assert!(!stdout.contains("warning"), "{stdout}");
    let job: std::collections::HashMap<String, String> = {
        let mut conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("HGETALL")
            .arg("job:first-job-1")
            .query(&mut conn)
            .unwrap()
    };
    assert_eq!(job["status"], "completed", "{job:?}");
    assert_eq!(job["service_required"], "simulation");
    let payload: Value = serde_json::from_str(&job["payload"]).unwrap();
    assert_eq!(payload["steps"], 3);
    // The machine's own warning about the missing functions is gone from /health too.
    wait_for(
        "/health without the preflight warning",
        || rt.output(),
        || {
            let (_, body, _) = rt.get("/health");
            (!body["warnings"].to_string().contains("job broker: ")).then_some(())
        },
    );
}

#[test]
fn bad_input_is_one_error_and_nothing_is_pushed() {
    let redis = RedisServer::start();
    let url = redis.url();
    let cases: [(Option<&str>, Vec<&str>, &str); 4] = [
        (
            None,
            vec!["--service", "simulation"],
            "no job broker: pass --redis redis://HOST:PORT or set HUB_REDIS_URL",
        ),
        (
            Some(&url),
            vec!["--service", "simulation", "--payload", "{steps: 3}"],
            "--payload is not JSON",
        ),
        (
            Some(&url),
            vec!["--service", "simulation", "--payload", "[1]"],
            "--payload must be a JSON object",
        ),
        (
            Some(&url),
            vec![
                "--service",
                "simulation",
                "--load-functions",
                "/nonexistent/queue",
            ],
            "--load-functions: cannot read /nonexistent/queue (give the .lua file, or a checkout of the queue holding packages/core/src/redis-functions/functions/findMatchingJob.lua)",
        ),
    ];
    for (url, args, expected) in cases {
        let out = push(url, &args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let pending: i64 = redis::cmd("ZCARD")
        .arg("jobs:pending")
        .query(&mut conn)
        .unwrap();
    assert_eq!(pending, 0, "a refused push left a job");
}
