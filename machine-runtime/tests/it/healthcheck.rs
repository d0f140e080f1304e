//! `machine-runtime health --wait`, Docker's probe: while the machine starts it keeps asking and succeeds
//! the moment `/health` answers 200; once the machine has been ready, a failing `/health` fails at once.

use std::process::{Child, Command, Stdio};

use serde_json::json;

use crate::up_support::{BIN, Runtime, http_get, pid_in, wait_for};

fn probe(port: u16, wait: &str) -> Child {
    Command::new(BIN)
        .args(["health", "--port", &port.to_string(), "--wait", wait])
        .env_remove("MACHINE_HEALTH_PORT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_waiting_probe_succeeds_when_the_starting_machine_turns_healthy_and_fails_at_once_later() {
    let rt = Runtime::start(
        json!({"apps": [
            {"name": "svc", "script": "sh", "args": ["-c", "echo $$ > \"$D/svc.pid\"; exec sleep 1000"],
             "env": {"D": "@DIR@"}, "machine_role": "service", "restart_delay": 600000,
             "machine_readiness": {"kind": "command", "command": ["test", "-f", "@DIR@/go"], "interval_ms": 50}},
        ]}),
        &[],
    );
    let port = rt.health_port();
    rt.wait_state("svc", "starting");
    assert_eq!(http_get(port, "/health").0, 503);

    // Started while the machine starts: it keeps asking (for up to an hour), through any number of 503s.
    let mut waiting = probe(port, "3600");
    wait_for(
        "the machine to be still starting",
        || rt.output(),
        || {
            let (_, status, _) = http_get(port, "/status");
            (status["phase"] == "starting").then_some(())
        },
    );
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "the probe gave up while the machine was still starting"
    );
    std::fs::write(rt.path("go"), "").unwrap();
    let status = wait_for(
        "the waiting probe to end once /health answers 200",
        || rt.output(),
        || waiting.try_wait().unwrap(),
    );
    assert!(status.success(), "{status}\n{}", rt.output());
    assert_eq!(http_get(port, "/health").0, 200);

    // Ready once, then unhealthy (its service killed, restarting in 10 minutes): no waiting, even with an
    // hour allowed.
    // Nothing orders svc's `echo` before its probe passes: wait for the whole pid in its file.
    let pid = pid_in(&rt, "svc.pid");
    // SAFETY: plain kill(2) of the test's own grandchild.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    rt.wait_state("svc", "restarting");
    let mut failing = probe(port, "3600");
    let status = wait_for(
        "the probe to fail at once on a machine that has been ready",
        || rt.output(),
        || failing.try_wait().unwrap(),
    );
    let mut said = String::new();
    std::io::Read::read_to_string(&mut failing.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!status.success(), "{said}");
    assert!(said.contains("unhealthy") && said.contains("503"), "{said}");
}
