//! Workers follow their service, all real: a redis-server with the test `findMatchingJob`, two fake GPUs
//! each with its simulation service (`machine-simulate`) and two simulation-websocket workers of the
//! stand-in bundle (node). One GPU's service is killed with SIGKILL; while it is down its workers claim
//! nothing, are stopped and wait (saying why in `/health`, `/ready` and the broker status), the other
//! GPU's workers keep working, and after the service is back its workers start again and take jobs.
//!
//! Claims are watched where they happen: Redis keyspace notifications of `jobs:active:<worker>` (the
//! `HSET` of `findMatchingJob`, one per claim), on the same subscription as markers the test publishes
//! right before the kill and right before it brings the service back, so the order of claims and markers
//! is Redis's own. The kill happens with an empty queue and idle workers, so no claim can fall in the
//! moments between the kill and the machine noticing it (the worker cannot know either); jobs are then
//! pushed throughout the outage, so a worker still running would claim them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::job_queue::{
    DEADLINE, NewJob, Tap, bundle_dir, load_job_matching, push_job, wait_job_status,
};
use crate::redis_server::RedisServer;
use crate::up_support::{Runtime, free_port, http_request, wait_for, wait_line};

const MACHINE: &str = "follow-m";
const TOKEN: &str = "follow-token";
const MARKERS: &str = "follow-test:marker";

fn worker_id(i: usize) -> String {
    format!("{MACHINE}-worker-simulation-websocket-{i}")
}

/// Services `simulation-gpu0` and `-gpu1`; workers 0 and 2 on GPU 0, 1 and 3 on GPU 1. GPU 0's
/// service waits 10 minutes before a restart, so it stays down until `/restart/service` asks.
fn ecosystem(url: &str, ports: [u16; 2]) -> Value {
    let mut apps = Vec::new();
    for (gpu, port) in ports.iter().enumerate() {
        apps.push(json!({
            "name": format!("simulation-gpu{gpu}"), "script": "machine-simulate",
            "args": ["--port", port.to_string()], "machine_role": "service", "machine_gpu": gpu,
            "machine_port": port, "restart_delay": if gpu == 0 { 600_000 } else { 100 },
            "env": {"SIMULATION_STEP_COUNT": "3", "SIMULATION_STEP_DELAY_MS": "100"},
            "machine_readiness": {"kind": "http", "url": format!("http://127.0.0.1:{port}/health"), "interval_ms": 100},
        }));
    }
    for i in 0..4 {
        let gpu = i % 2;
        apps.push(json!({
            "name": format!("sim-worker-{i}"), "script": "redis-direct-worker.js", "interpreter": "node",
            "cwd": bundle_dir(), "machine_role": "worker", "machine_gpu": gpu,
            "machine_wait_for": [format!("simulation-gpu{gpu}")],
            "machine_connector": "simulation-websocket", "machine_index": i, "kill_timeout": "10s",
            "env": {
                "WORKER_ID": worker_id(i), "MACHINE_ID": MACHINE, "HUB_REDIS_URL": url,
                "WORKERS": "simulation-websocket", "CONNECTORS": "simulation-websocket",
                "UNIFIED_MACHINE_STATUS": "true", "NODE_ENV": "production", "POLL_INTERVAL_MS": "100",
                "SIMULATION_WEBSOCKET_URL": format!("ws://127.0.0.1:{}", ports[gpu]),
            },
        }));
    }
    json!({ "apps": apps })
}

/// What the subscription saw, in Redis's order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// `findMatchingJob` put a job into `jobs:active:<worker>`.
    Claim(String),
    /// The test's own marker.
    Marker(String),
    /// A status message of the machine.
    Status(Value),
}

/// Drains what `tap` has now (waiting up to `within` for the first item).
async fn drain(tap: &mut Tap, seen: &mut Vec<Seen>, within: Duration) {
    let mut wait = within;
    while let Some((channel, message)) = tap.next_within(wait).await {
        wait = Duration::from_millis(1);
        if let Some(worker) = channel.strip_prefix("__keyspace@0__:jobs:active:") {
            if message == "hset" {
                seen.push(Seen::Claim(worker.to_owned()));
            }
        } else if channel == MARKERS {
            seen.push(Seen::Marker(
                message.as_str().unwrap_or_default().to_owned(),
            ));
        } else {
            seen.push(Seen::Status(message));
        }
    }
}

fn claims_by(seen: &[Seen], worker: &str) -> usize {
    seen.iter()
        .filter(|s| **s == Seen::Claim(worker.to_owned()))
        .count()
}

/// Pushes the next job as the API does (a simulation job of 3 steps, 300 ms).
async fn push(conn: &mut redis::aio::MultiplexedConnection, pushed: &mut Vec<String>) {
    let id = format!("follow-job-{}", pushed.len());
    let payload = json!({"steps": 3, "processing_time_ms": 300, "prompt": id});
    push_job(conn, &NewJob::new(&id, "simulation", payload)).await;
    pushed.push(id);
}

/// Claims by `workers` after the marker `marker` (0 before it is seen).
fn claims_after(seen: &[Seen], marker: &str, workers: &[String]) -> usize {
    let Some(start) = seen
        .iter()
        .position(|s| *s == Seen::Marker(marker.to_owned()))
    else {
        return 0;
    };
    workers.iter().map(|w| claims_by(&seen[start..], w)).sum()
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_claim_nothing_while_their_service_is_down_and_come_back_with_it() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    load_job_matching(&mut conn).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("Kh")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut tap = Tap::start(
        &redis.url(),
        &[
            "__keyspace@0__:jobs:active:*",
            MARKERS,
            &format!("machine:status:{MACHINE}"),
        ],
    )
    .await;
    let url = redis.url();
    let ports = [free_port(), free_port()];
    let rt = blocking(|| {
        Runtime::start(
            ecosystem(&url, ports),
            &[
                ("MACHINE_FAKE_GPUS", "2"),
                ("MACHINE_ID", MACHINE),
                ("HUB_REDIS_URL", url.as_str()),
                ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "1"),
                ("MACHINE_CONTROL_TOKEN", TOKEN),
            ],
        )
    });
    let port = blocking(|| rt.health_port());
    let get = |path: &str| blocking(|| http_request(port, "GET", path, &[]));
    let pid_of = |app: &str| blocking(|| rt.app_status(app)["pid"].as_u64());
    let mut seen = Vec::new();
    let mut pushed: Vec<String> = Vec::new();

    // Every worker up; a first batch completes, some of it on GPU 0.
    blocking(|| {
        wait_for(
            "/ready to answer 200",
            || rt.output(),
            || (http_request(port, "GET", "/ready", &[]).0 == 200).then_some(()),
        )
    });
    let gpu1_pids: Vec<Option<u64>> = [1, 3]
        .iter()
        .map(|i| pid_of(&format!("sim-worker-{i}")))
        .collect();
    let deadline = Instant::now() + DEADLINE;
    while claims_by(&seen, &worker_id(0)) + claims_by(&seen, &worker_id(2)) < 2 {
        assert!(
            Instant::now() < deadline,
            "GPU 0's workers claimed nothing: {seen:?}\n{}",
            rt.output()
        );
        push(&mut conn, &mut pushed).await;
        drain(&mut tap, &mut seen, Duration::from_millis(100)).await;
    }
    for id in &pushed {
        wait_job_status(&mut conn, id, "completed").await;
    }

    // Kill GPU 0's service (idle workers, empty queue); once the machine has stopped its workers, push
    // jobs throughout the outage.
    let service_pid = pid_of("simulation-gpu0").expect("simulation-gpu0 has a pid");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(MARKERS)
        .arg("kill")
        .query_async(&mut conn)
        .await
        .unwrap();
    // SAFETY: plain kill(2) on the service the runtime started.
    assert_eq!(unsafe { libc::kill(service_pid as i32, libc::SIGKILL) }, 0);
    let reason = "simulation-gpu0 is not ready (restarting after signal 9 (SIGKILL))";
    for i in [0, 2] {
        let name = format!("sim-worker-{i}");
        let deadline = Instant::now() + DEADLINE;
        loop {
            let app = blocking(|| rt.app_status(&name));
            if app["state"] == "waiting" {
                assert_eq!(app["pid"], Value::Null);
                assert_eq!(app["waiting_for"], json!(["simulation-gpu0"]));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} still runs: {app}\n{}",
                rt.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (code, ready, _) = get("/ready");
    assert_eq!(code, 503, "{ready}");
    for i in [0, 2] {
        assert!(
            ready["reasons"].to_string().contains(&format!(
                "sim-worker-{i} is waiting for simulation-gpu0: {reason}"
            )),
            "{ready}"
        );
    }
    let (code, health, _) = get("/health");
    assert_eq!(code, 503);
    let held = &health["services"]["sim-worker-0"];
    assert_eq!(
        (&held["status"], &held["state"]),
        (&json!("launching"), &json!("waiting")),
        "{health}"
    );
    assert_eq!(
        held["reason"],
        format!("sim-worker-0 is waiting for simulation-gpu0: {reason}"),
        "{health}"
    );
    assert_eq!(health["services"]["sim-worker-1"]["status"], "online");
    // Jobs keep coming while GPU 1's workers take them, until the broker has said why too.
    let deadline = Instant::now() + DEADLINE;
    let mut said_why = false;
    let gpu1 = [worker_id(1), worker_id(3)];
    while !said_why || claims_after(&seen, "kill", &gpu1) < 4 {
        assert!(
            Instant::now() < deadline,
            "no status with the reason, or GPU 1 idle: {seen:?}"
        );
        push(&mut conn, &mut pushed).await;
        drain(&mut tap, &mut seen, Duration::from_millis(150)).await;
        said_why = seen.iter().rev().any(|s| match s {
            Seen::Status(m) => {
                let w = &m["status"]["workers"][worker_id(2)];
                w["status"] == "offline"
                    && w["reason"].as_str().is_some_and(|r| r.ends_with(reason))
            }
            _ => false,
        });
    }
    assert_eq!(
        [1, 3]
            .iter()
            .map(|i| pid_of(&format!("sim-worker-{i}")))
            .collect::<Vec<_>>(),
        gpu1_pids,
        "GPU 1's workers must keep running"
    );
    let _: i64 = redis::cmd("PUBLISH")
        .arg(MARKERS)
        .arg("restart")
        .query_async(&mut conn)
        .await
        .unwrap();
    drain(&mut tap, &mut seen, Duration::from_millis(100)).await;

    // Zero claims by GPU 0's workers between the kill and the restart, while jobs were pending.
    let at = |marker: &str| {
        seen.iter()
            .position(|s| *s == Seen::Marker(marker.to_owned()))
            .unwrap_or_else(|| panic!("marker {marker} not seen: {seen:?}"))
    };
    let outage = &seen[at("kill")..at("restart")];
    let mut claims: BTreeMap<String, usize> = BTreeMap::new();
    for s in outage {
        if let Seen::Claim(w) = s {
            *claims.entry(w.clone()).or_default() += 1;
        }
    }
    assert_eq!(
        (claims.get(&worker_id(0)), claims.get(&worker_id(2))),
        (None, None),
        "GPU 0's workers claimed jobs while its service was down: {claims:?}"
    );
    assert!(
        claims.get(&worker_id(1)).copied().unwrap_or(0)
            + claims.get(&worker_id(3)).copied().unwrap_or(0)
            >= 4,
        "GPU 1's workers took too few jobs for the outage to mean anything: {claims:?}"
    );

    // The service comes back; its workers start again (not counted as restarts) and take jobs.
    let (code, body, _) = blocking(|| {
        http_request(
            port,
            "POST",
            "/restart/service?service=simulation-gpu0",
            &[&format!("Authorization: Bearer {TOKEN}")],
        )
    });
    assert_eq!(code, 202, "{body}");
    let after = seen.len();
    let deadline = Instant::now() + DEADLINE;
    while claims_by(&seen[after..], &worker_id(0)) == 0
        || claims_by(&seen[after..], &worker_id(2)) == 0
    {
        assert!(
            Instant::now() < deadline,
            "GPU 0's workers took no job after the restart: {seen:?}\n{}",
            rt.output()
        );
        push(&mut conn, &mut pushed).await;
        drain(&mut tap, &mut seen, Duration::from_millis(100)).await;
    }
    let ready_at = blocking(|| rt.app_status("simulation-gpu0"))["since_ms"]
        .as_u64()
        .unwrap();
    for i in [0, 2] {
        let app = blocking(|| rt.app_status(&format!("sim-worker-{i}")));
        assert_eq!(app["state"], "running", "{app}");
        assert_eq!(
            (app["restarts"].as_u64(), app["unstable_restarts"].as_u64()),
            (Some(0), Some(0)),
            "{app}"
        );
        assert!(
            app["started_ms"].as_u64().unwrap() >= ready_at,
            "started before its service was ready: {app}"
        );
    }
    for id in &pushed {
        wait_job_status(&mut conn, id, "completed").await;
    }
    let mut workers_of: HashMap<String, usize> = HashMap::new();
    for s in &seen {
        if let Seen::Claim(w) = s {
            *workers_of.entry(w.clone()).or_default() += 1;
        }
    }
    assert_eq!(workers_of.len(), 4, "{workers_of:?}");
    blocking(|| {
        wait_for(
            "/ready to answer 200 again",
            || rt.output(),
            || (http_request(port, "GET", "/ready", &[]).0 == 200).then_some(()),
        )
    });
    // Logged when the service went down; waited for, since nothing above orders that line before
    // the test's reader thread.
    let line = format!("stopping sim-worker-0 until its service is ready again: {reason}");
    blocking(|| wait_line(&rt, &line));
    drop(rt);
}
