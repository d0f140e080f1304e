//! A worker's status as the machine reports it comes from what the worker itself says (its
//! heartbeat key, its events, the queue's `jobs:active`), never from the `worker:<id>` hash that
//! the API fills with our own earlier message: end to end with a real redis-server, the test
//! `findMatchingJob`, `machine-runtime up` and one worker of the stand-in bundle (node) in unified
//! mode, with the test playing the API's echo (`handleUnifiedMachineStatus`, contract §5).

use serde_json::{Value, json};

use crate::job_queue::{NewJob, bundle_dir, load_job_matching, push_job};
use crate::redis_server::RedisServer;
use crate::up_broker::StatusTap;
use crate::up_support::{Runtime, wait_for};

const MACHINE: &str = "wst";
const WORKER: &str = "wst-worker-mock-0";
const APP: &str = "mock-worker";

/// A machine with one mock worker of the stand-in bundle (not restarted when it dies, so the test
/// sees it offline) and an app that keeps the machine up, reporting every second to `redis`.
fn machine(redis: &RedisServer) -> Runtime {
    machine_of(redis, "mock", WORKER)
}

fn machine_of(redis: &RedisServer, workers: &str, worker_id: &str) -> Runtime {
    let url = redis.url();
    Runtime::start(
        json!({"apps": [
            // Keeps the machine running once the worker is killed.
            {"name": "keeper", "script": "sleep", "args": ["1000"]},
            {"name": APP, "script": "redis-direct-worker.js", "interpreter": "node",
             "cwd": bundle_dir(), "autorestart": false,
             "env": {"WORKER_ID": worker_id, "MACHINE_ID": MACHINE, "HUB_REDIS_URL": url,
                     "WORKERS": workers, "UNIFIED_MACHINE_STATUS": "true",
                     "NODE_ENV": "production", "POLL_INTERVAL_MS": "100"}},
        ]}),
        &[
            ("HUB_REDIS_URL", url.as_str()),
            ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "1"),
        ],
    )
}

/// What the API does with each status message: writes the worker's entry into `worker:<id>`
/// (`status`, `is_connected`, `current_job_id`, `last_activity`), so the machine would read its
/// own word back if it read that hash.
fn echo_as_api(client: &redis::Client, message: &Value) {
    let worker = &message["status"]["workers"][WORKER];
    if worker.is_null() {
        return;
    }
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut conn = client.get_connection().unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("worker:{WORKER}"))
        .arg("status")
        .arg(text(&worker["status"]))
        .arg("is_connected")
        .arg(text(&worker["is_connected"]))
        .arg("current_job_id")
        .arg(text(&worker["current_job_id"]))
        .arg("last_activity")
        .arg(text(&worker["last_activity"]))
        .query(&mut conn)
        .unwrap();
}

/// Waits for a status message whose entry for the worker satisfies `want` (echoing every message
/// as the API does), then for `/health` to say the same; returns the `/health` entry.
fn wait_worker(
    rt: &Runtime,
    tap: &StatusTap,
    client: &redis::Client,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> (u16, Value) {
    tap.next_where(rt, what, |message| {
        echo_as_api(client, message);
        want(&message["status"]["workers"][WORKER])
    });
    wait_for(
        &format!("/health to say {what}"),
        || format!("{}\n--- /health ---\n{}", rt.output(), rt.get("/health").1),
        || {
            let (code, body, _) = rt.get("/health");
            want(&body["workers"][WORKER]).then_some((code, body))
        },
    )
}

fn status_is(status: &'static str) -> impl Fn(&Value) -> bool {
    move |w: &Value| w["status"] == status
}

#[test]
fn an_idle_worker_is_idle_before_its_first_job_busy_during_it_and_offline_when_killed() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let mut conn = tokio.block_on(redis.conn());
    tokio.block_on(load_job_matching(&mut conn));
    // What the API left from an earlier run of this machine: our own `offline`.
    let mut sync = client.get_connection().unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("worker:{WORKER}"))
        .arg("status")
        .arg("offline")
        .arg("is_connected")
        .arg("false")
        .arg("current_job_id")
        .arg("")
        .query(&mut sync)
        .unwrap();
    let tap = StatusTap::start(&redis.url(), &format!("machine:status:{MACHINE}"));
    let rt = machine(&redis);

    // Connected and no job: idle, though the hash says offline and the worker wrote no status.
    let (code, health) = wait_worker(&rt, &tap, &client, "the worker idle", |w| {
        w["status"] == "idle" && w["is_connected"] == true
    });
    let stale: Option<String> = redis::cmd("HGET")
        .arg(format!("worker:{WORKER}"))
        .arg("status")
        .query(&mut sync)
        .unwrap();
    assert!(stale.is_some(), "the echo wrote the hash");
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["workers"][WORKER]["healthy"], true, "{health}");
    assert!(
        health["workers"][WORKER]["last_activity"].is_u64(),
        "{health}"
    );

    // A job: busy with it while it runs, idle once it completed.
    tokio.block_on(push_job(
        &mut conn,
        &NewJob::new("ws-job-1", "mock", json!({"processing_time_ms": 3000})),
    ));
    wait_worker(&rt, &tap, &client, "the worker busy with ws-job-1", |w| {
        w["status"] == "busy" && w["current_job_id"] == "ws-job-1"
    });
    wait_for(
        "ws-job-1 to complete",
        || rt.output(),
        || {
            let status: Option<String> = redis::cmd("HGET")
                .arg("job:ws-job-1")
                .arg("status")
                .query(&mut client.get_connection().unwrap())
                .unwrap();
            (status.as_deref() == Some("completed")).then_some(())
        },
    );
    let (_, health) = wait_worker(&rt, &tap, &client, "the worker idle again", |w| {
        w["status"] == "idle" && w["current_job_id"].is_null()
    });
    assert_eq!(health["healthy"], true, "{health}");

    // The connector fails a job (the worker says `connector_status_changed` error/unhealthy):
    // unhealthy in the status, /health and /ready, with the reason.
    let mut failing = NewJob::new(
        "ws-job-2",
        "mock",
        json!({"processing_time_ms": 100, "should_fail": "boom"}),
    );
    failing.priority = 60;
    tokio.block_on(push_job(&mut conn, &failing));
    wait_for(
        "ws-job-2 to fail for good",
        || rt.output(),
        || {
            let status: Option<String> = redis::cmd("HGET")
                .arg("job:ws-job-2")
                .arg("status")
                .query(&mut client.get_connection().unwrap())
                .unwrap();
            (status.as_deref() == Some("failed")).then_some(())
        },
    );
    let reason = "connector mock_test reported error (unhealthy)";
    let (code, health) = wait_worker(&rt, &tap, &client, "the worker unhealthy", |w| {
        w["healthy"] == false && w["reason"] == reason
    });
    // A connector reported failed after one bad job is for /ready and the status, not for the
    // liveness probe (/health), which would have the machine restarted for a user's bad workflow.
    assert_eq!(code, 200, "{health}");
    assert!(!health["reasons"].to_string().contains(reason), "{health}");
    let (code, ready, _) = rt.get("/ready");
    assert_eq!(code, 503, "{ready}");
    assert!(ready["reasons"].to_string().contains(reason), "{ready}");

    // Killed: offline, whatever the hash says.
    let pid = rt.app_status(APP)["pid"]
        .as_i64()
        .expect("the worker's pid") as i32;
    // SAFETY: plain kill(2) on the runtime's child, which the test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let (_, health) = wait_worker(
        &rt,
        &tap,
        &client,
        "the worker offline",
        status_is("offline"),
    );
    assert_eq!(health["workers"][WORKER]["is_connected"], false, "{health}");
}

#[test]
fn a_worker_whose_connectors_did_not_load_is_unhealthy_with_the_reason() {
    // The stand-in has no gemini connector: it logs what the real worker logs when the connector
    // cannot load (its URL missing), "Failed to load connector ..." then "Loaded 0 connectors",
    // and stays up, online, sending no event about it.
    let redis = RedisServer::start();
    let worker = "wst-worker-gemini-0";
    let tap = StatusTap::start(&redis.url(), &format!("machine:status:{MACHINE}"));
    let rt = machine_of(&redis, "gemini", worker);
    let message = tap.next_where(&rt, "the gemini worker unhealthy", |m| {
        m["status"]["workers"][worker]["healthy"] == false
    });
    let entry = &message["status"]["workers"][worker];
    let reason = entry["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("the worker loaded 0 connectors"),
        "{entry}"
    );
    assert!(reason.contains("failed to load"), "{entry}");
    assert_eq!(
        entry["status"], "idle",
        "up and connected all the same: {entry}"
    );
    let (code, health) = wait_for(
        "/health to name the worker",
        || rt.output(),
        || {
            let (code, body, _) = rt.get("/health");
            body["reasons"]
                .to_string()
                .contains(&format!("worker {worker}: the worker loaded 0 connectors"))
                .then_some((code, body))
        },
    );
    assert_eq!(code, 503, "{health}");
    let (code, ready, _) = rt.get("/ready");
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready["reasons"].to_string().contains("loaded 0 connectors"),
        "{ready}"
    );
}
