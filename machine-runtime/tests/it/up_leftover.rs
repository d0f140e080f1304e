//! The jobs an earlier run left with this machine's workers are handed back at start: a real
//! `machine-runtime up` against a real redis-server, where the machine's worker id still holds a job
//! `in_progress` (the run before was killed outright, as `docker kill` does). Once the id lease is held
//! and before the worker starts, the job is `pending` again in `jobs:pending`, the worker's keys let go
//! of it, and a `job_handed_back` event says why; a job of another worker and a finished job are left
//! alone. A second machine refused by the lease touches nothing of the live one's.

use std::collections::HashMap;

use redis::Commands;
use serde_json::{Value, json};

use crate::redis_server::RedisServer;
use crate::up_support::{Runtime, wait_line};

const MACHINE: &str = "leftover-m";
const WORKER: &str = "leftover-m-worker-simulation-websocket-0";
const OTHER: &str = "leftover-other-worker-simulation-websocket-0";

/// One worker app (a sleeper with the machine's worker id), so the runtime knows the worker id.
fn machine(redis: &RedisServer) -> Runtime {
    Runtime::start(
        json!({"apps": [{"name": "worker", "script": "sleep", "args": ["600"],
                         "env": {"WORKER_ID": WORKER}}]}),
        &[
            ("MACHINE_ID", MACHINE),
            ("HUB_REDIS_URL", redis.url().as_str()),
            ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "1"),
            ("BROKER_PREFLIGHT", "off"),
            ("MACHINE_FAKE_GPUS", "0"),
        ],
    )
}

/// A job `worker` holds with `status`, as `findMatchingJob` leaves a claim (`job:<id>` assigned,
/// `jobs:active:<worker>` field, the worker hash's `current_job_id`).
fn claimed(conn: &mut redis::Connection, id: &str, worker: &str, status: &str) {
    let _: () = conn
        .hset_multiple(
            format!("job:{id}"),
            &[
                ("id", id),
                ("service_required", "simulation"),
                ("priority", "50"),
                ("created_at", "2026-12-06T05:00:00.000Z"),
                ("status", status),
                ("worker_id", worker),
                ("assigned_at", "2026-12-06T05:00:01.000Z"),
                ("retry_count", "0"),
            ],
        )
        .unwrap();
    let _: () = conn
        .hset(
            format!("jobs:active:{worker}"),
            id,
            json!({"id": id}).to_string(),
        )
        .unwrap();
    let _: () = conn
        .hset_multiple(
            format!("worker:{worker}"),
            &[("status", "busy"), ("current_job_id", id)],
        )
        .unwrap();
}

fn job(conn: &mut redis::Connection, id: &str) -> HashMap<String, String> {
    conn.hgetall(format!("job:{id}")).unwrap()
}

#[test]
fn a_job_an_earlier_run_left_with_a_worker_is_handed_back_at_start() {
    let redis = RedisServer::start();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    claimed(&mut conn, "left-1", WORKER, "in_progress");
    claimed(&mut conn, "theirs-1", OTHER, "in_progress");
    let _: () = conn
        .hset_multiple(
            "job:done-1",
            &[("status", "completed"), ("worker_id", WORKER)],
        )
        .unwrap();
    let events = {
        let client = redis::Client::open(redis.url()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut conn = client.get_connection().unwrap();
            let mut pubsub = conn.as_pubsub();
            pubsub.psubscribe("machine:*:worker:*").unwrap();
            let _ = ready_tx.send(());
            while let Ok(m) = pubsub.get_message() {
                let payload: String = m.get_payload().unwrap_or_default();
                if tx
                    .send(serde_json::from_str::<Value>(&payload).unwrap_or(Value::Null))
                    .is_err()
                {
                    return;
                }
            }
        });
        ready_rx.recv().unwrap();
        rx
    };

    let mut rt = machine(&redis);
    rt.wait_state("worker", "running");
    let left = job(&mut conn, "left-1");
    assert_eq!(left["status"], "pending", "{left:?}\n{}", rt.output());
    assert_eq!(left["worker_id"], "", "{left:?}");
    assert_eq!(
        left["retry_count"], "0",
        "a hand-back is not a failure: {left:?}"
    );
    let score: Option<f64> = conn.zscore("jobs:pending", "left-1").unwrap();
    assert!(score.is_some(), "left-1 is not back in jobs:pending");
    let active: bool = conn
        .hexists(format!("jobs:active:{WORKER}"), "left-1")
        .unwrap();
    assert!(!active, "left-1 is still in jobs:active:{WORKER}");
    let current: Option<String> = conn
        .hget(format!("worker:{WORKER}"), "current_job_id")
        .unwrap();
    assert_eq!(current.as_deref(), Some(""));
    let event = events
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("a job_handed_back event");
    assert_eq!(event["event_type"], "job_handed_back", "{event}");
    assert_eq!(event["machine_id"], MACHINE, "{event}");
    assert_eq!(event["worker_id"], WORKER, "{event}");
    assert_eq!(event["data"]["job_id"], "left-1", "{event}");
    assert_eq!(event["data"]["previous_status"], "in_progress", "{event}");
    assert!(
        event["data"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("earlier run")),
        "{event}"
    );
    // Not ours, or finished: untouched.
    let theirs = job(&mut conn, "theirs-1");
    assert_eq!(
        (theirs["status"].as_str(), theirs["worker_id"].as_str()),
        ("in_progress", OTHER)
    );
    assert_eq!(job(&mut conn, "done-1")["status"], "completed");
    // The hand-back is logged; the event can arrive before that line reaches the test.
    wait_line(&rt, "left-1");

    // The live machine's worker claims a job; a twin with the same id is refused and leaves it alone.
    claimed(&mut conn, "live-1", WORKER, "in_progress");
    let mut twin = machine(&redis);
    assert!(!twin.wait_exit().success(), "{}", twin.output());
    assert!(
        twin.output().contains("already in use"),
        "{}",
        twin.output()
    );
    let live = job(&mut conn, "live-1");
    assert_eq!(
        (live["status"].as_str(), live["worker_id"].as_str()),
        ("in_progress", WORKER),
        "a refused twin touched the live machine's job"
    );
    assert!(
        events.try_iter().all(|e| e["data"]["job_id"] != "live-1"),
        "a refused twin handed back the live machine's job"
    );
    rt.signal(libc::SIGTERM);
    assert!(rt.wait_exit().success(), "{}", rt.output());
}
