//! The health endpoint and `machine-runtime health` in each state of a machine: starting,
//! healthy, an app restarting, an app errored.

use std::process::Command;

use serde_json::json;

use crate::up_support::{BIN, Runtime, http_get, pid_in, wait_for};

/// Runs `machine-runtime health --port P`; true when it exits 0.
fn health_command(port: u16) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["health", "--port", &port.to_string()])
        .env_remove("MACHINE_HEALTH_PORT")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn health_follows_the_apps_through_their_states() {
    let mut rt = Runtime::start(
        json!({"apps": [
            {"name": "svc", "script": "sh", "args": ["-c", "echo $$ > \"$D/svc.pid\"; exec sleep 1000"],
             "env": {"D": "@DIR@"}, "machine_role": "service", "restart_delay": 600000,
             "machine_readiness": {"kind": "command", "command": ["test", "-f", "@DIR@/go"], "interval_ms": 50}},
            {"name": "wrk", "script": "sleep", "args": "1000", "machine_role": "worker", "machine_wait_for": ["svc"]},
        ]}),
        &[],
    );
    let port = rt.health_port();

    // Starting: the service's probe fails, the worker waits.
    rt.wait_state("svc", "starting");
    // The worker's task says why it waits once it has looked at svc (until then its reason is only
    // "wrk is waiting for svc"): wait for that, not for an instant.
    let (code, body, raw) = wait_for(
        "wrk's reason to name svc's state",
        || rt.output(),
        || {
            let (code, body, raw) = http_get(port, "/health");
            let reasons = body["reasons"].as_array()?;
            reasons
                .iter()
                .any(|r| {
                    r.as_str()
                        .is_some_and(|r| r.starts_with("wrk is waiting for svc: "))
                })
                .then_some((code, body, raw))
        },
    );
    assert_eq!(code, 503, "{raw}");
    assert_eq!(body["healthy"], false);
    let reasons: Vec<String> = serde_json::from_value(body["reasons"].clone()).unwrap();
    assert!(
        reasons.iter().any(|r| r.starts_with("svc is starting")),
        "{reasons:?}"
    );
    // Why, in words: the worker waits for svc, which is still starting.
    let waiting = reasons
        .iter()
        .find(|r| r.starts_with("wrk is waiting for svc: svc is not ready (starting"))
        .unwrap_or_else(|| panic!("{reasons:?}"))
        .clone();
    // PM2's words in `status` (the monitor's vocabulary), ours in `state`.
    assert_eq!(
        body["services"]["wrk"],
        json!({"healthy": false, "status": "launching", "state": "waiting", "pid": null, "restarts": 0,
               "reason": waiting})
    );
    assert!(raw.contains("Access-Control-Allow-Origin: *"), "{raw}");
    let (code, ready, _) = http_get(port, "/ready");
    assert_eq!((code, &ready["ready"]), (503, &json!(false)), "{ready}");
    assert!(
        ready["reasons"]
            .to_string()
            .contains("wrk is waiting for svc"),
        "{ready}"
    );
    let (ok, stderr) = health_command(port);
    assert!(
        !ok && stderr.contains("answered 503") && stderr.contains("wrk is waiting for svc"),
        "{stderr}"
    );

    // Healthy: the probe passes, the worker starts.
    std::fs::write(rt.path("go"), "").unwrap();
    let body = wait_for(
        "a healthy /health",
        || rt.output(),
        || {
            let (code, body, _) = http_get(port, "/health");
            (code == 200).then_some(body)
        },
    );
    assert_eq!(body["healthy"], true);
    assert_eq!(body["reasons"], json!([]));
    assert_eq!(body["services"]["svc"]["status"], "online");
    assert_eq!(body["services"]["svc"]["state"], "ready");
    assert_eq!(body["services"]["wrk"]["status"], "online");
    assert_eq!(body["services"]["wrk"]["state"], "running");
    assert!(body["services"]["wrk"]["pid"].as_u64().is_some() && body["uptime"].as_u64().is_some());
    // Ready once both have stayed up for their min_uptime (PM2's default, 1 s).
    wait_for(
        "/ready to answer 200",
        || rt.output(),
        || {
            let (code, body, _) = http_get(port, "/ready");
            (code == 200)
                .then_some(())
                .filter(|()| body == json!({"ready": true, "reasons": []}))
        },
    );
    assert_eq!(health_command(port), (true, String::new()));
    let (code, status, _) = http_get(port, "/status");
    assert_eq!(code, 200);
    assert_eq!(status["phase"], "ready");
    assert_eq!(status["apps"][0]["name"], "svc");
    assert_eq!(status["apps"][1]["role"], "worker");
    assert!(status["version"].is_string() && status["uptime_ms"].is_u64());
    assert_eq!(http_get(port, "/nope").0, 404);

    // Restarting: the service dies and waits out its (long) restart delay.
    // Nothing orders svc's `echo` before its probe passes: wait for the whole pid in its file.
    let pid = pid_in(&rt, "svc.pid");
    // SAFETY: plain kill(2) on the service the runtime started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    rt.wait_state("svc", "restarting");
    let (code, body, _) = http_get(port, "/health");
    assert_eq!(code, 503);
    assert_eq!(body["services"]["svc"]["restarts"], 1);
    assert_eq!(body["services"]["svc"]["status"], "waiting restart");
    let reasons = body["reasons"].to_string();
    assert!(
        reasons.contains("svc is restarting: restarting after signal 9 (SIGKILL)"),
        "{reasons}"
    );
    assert!(!health_command(port).0);
    // Its worker is stopped and waits for it again, saying why (not a crash: no restart counted).
    rt.wait_state("wrk", "waiting");
    let (code, body, _) = http_get(port, "/health");
    assert_eq!(code, 503);
    assert_eq!(body["services"]["wrk"]["status"], "launching");
    assert_eq!(body["services"]["wrk"]["restarts"], 0);
    assert_eq!(
        body["services"]["wrk"]["reason"],
        "wrk is waiting for svc: svc is not ready (restarting after signal 9 (SIGKILL))"
    );
    let (code, ready, _) = http_get(port, "/ready");
    assert_eq!(code, 503);
    assert!(
        ready["reasons"].to_string().contains(
            "wrk is waiting for svc: svc is not ready (restarting after signal 9 (SIGKILL))"
        ),
        "{ready}"
    );

    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
}

#[test]
fn health_reports_an_errored_app() {
    let mut rt = Runtime::start(
        json!({"apps": [
            {"name": "crashy", "script": "sh", "args": ["-c", "exit 2"], "max_restarts": 3},
            {"name": "steady", "script": "sleep", "args": ["1000"]},
        ]}),
        &[],
    );
    // steady's task may start it after crashy's three exits: the reasons below are exact.
    rt.wait_state("steady", "running");
    rt.wait_state("crashy", "errored");
    let (code, body, _) = rt.get("/health");
    assert_eq!(code, 503);
    assert_eq!(
        body["reasons"],
        json!([
            "crashy is errored: errored after 3 consecutive exits before min_uptime 1.0s; last exit: status 2"
        ])
    );
    assert_eq!(body["services"]["steady"]["healthy"], true);
    assert_eq!(body["services"]["crashy"]["status"], "errored");
    assert_eq!(rt.get("/ready").0, 503);
    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
}

#[test]
fn health_command_fails_when_nothing_listens() {
    let port = crate::up_support::free_port();
    let (ok, stderr) = health_command(port);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "machine-runtime: error: unhealthy: cannot connect to 127.0.0.1:{port}"
        )),
        "{stderr}"
    );
}

#[test]
fn a_health_port_in_use_is_refused_saying_the_cause_once() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (_dir, file) = crate::up_support::write_ecosystem(
        &json!({"apps": [{"name": "svc", "script": "sleep", "args": "1000"}]}),
    );
    let out = Command::new(BIN)
        .args(["up", "--health-port", &port.to_string(), "--ecosystem"])
        .arg(&file)
        .env_remove("HUB_REDIS_URL")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot listen on health port {port}: Address already in use (os error 98); choose another with --health-port or MACHINE_HEALTH_PORT\n"
        )),
        "{err}"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
}
