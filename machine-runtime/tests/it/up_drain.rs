//! Graceful stop with jobs in flight, against a real redis-server: idle workers are signalled at
//! once, a busy worker is signalled when it is idle again, and one still busy at its
//! `kill_timeout` is killed (SIGKILL: on SIGTERM the real worker fails its job permanently, contract
//! §6) and its job is handed back to the queue as the API's orphan clean-up does.

use std::collections::HashMap;

use redis::Commands;
use serde_json::{Value, json};

use crate::redis_server::RedisServer;
use crate::up_support::{Runtime, wait_for, wait_line};

/// A worker stand-in in sh + redis-cli that keeps the queue's keys as the real worker and
/// `findMatchingJob` do: idle at start; once `go-<name>` exists it claims `job-<name>` (out of
/// `jobs:pending`, `status assigned` with its `worker_id` and `assigned_at`, recorded in the hash
/// `jobs:active:<worker>`, its own hash busy with it), then starts it (`in_progress`,
/// `started_at`); once `finish-<name>` exists it completes it (`completed`, out of
/// `jobs:active:<worker>`) and is idle again. With `LATE` set it completes the job at once but
/// still says it is busy (the worker finishing in the last moment before the machine acts). On
/// SIGTERM it fails the job in flight permanently (the real worker's behaviour) or, idle, just
/// leaves; each step is appended to `events`. A SIGKILL leaves its keys as they are.
const WORKER: &str = r#"
R="redis-cli -p $REDIS_PORT"
log() { echo "$1" >> "$D/events"; }
on_term() {
  if [ "$($R HGET "worker:$WORKER_ID" status)" = busy ]; then
    job=$($R HGET "worker:$WORKER_ID" current_job_id)
    $R HSET "job:$job" status failed >/dev/null
    log "$NAME failed $job on SIGTERM"
  else
    log "$NAME stopped idle"
  fi
  $R DEL "worker:$WORKER_ID" >/dev/null
  exit 0
}
trap on_term TERM
$R HSET "worker:$WORKER_ID" status idle current_job_id "" >/dev/null
log "$NAME up"
while [ ! -f "$D/go-$NAME" ]; do sleep 0.05; done
job="job-$NAME"
$R ZREM jobs:pending "$job" >/dev/null
$R HSET "job:$job" status assigned worker_id "$WORKER_ID" assigned_at "$(date +%s).000000" >/dev/null
$R HSET "jobs:active:$WORKER_ID" "$job" "{\"id\":\"$job\"}" >/dev/null
$R HSET "worker:$WORKER_ID" status busy current_job_id "$job" >/dev/null
$R HSET "job:$job" status in_progress started_at "$(date -u +%Y-%m-%dT%H:%M:%S.000Z)" >/dev/null
log "$NAME started $job"
if [ -n "$LATE" ]; then
  $R HSET "job:$job" status completed >/dev/null
  $R HDEL "jobs:active:$WORKER_ID" "$job" >/dev/null
  log "$NAME completed $job but still says busy"
fi
while [ ! -f "$D/finish-$NAME" ]; do sleep 0.05; done
$R HSET "job:$job" status completed >/dev/null
$R HDEL "jobs:active:$WORKER_ID" "$job" >/dev/null
log "$NAME completed $job"
$R HSET "worker:$WORKER_ID" status idle current_job_id "" >/dev/null
while true; do sleep 0.05; done
"#;

/// A hand-written worker app (known as a worker by its WORKER_ID alone), stopped with SIGTERM as
/// the generated worker apps are (`kill_signal`; PM2's default would be SIGINT).
fn worker(name: &str, kill_timeout: &str, port: u16) -> Value {
    json!({"name": name, "script": "sh", "args": ["-c", WORKER], "kill_timeout": kill_timeout,
           "kill_signal": "SIGTERM",
           "env": {"WORKER_ID": worker_id(name), "MACHINE_ID": "drain",
                   "WORKERS": "mock", "NAME": name, "D": "@DIR@", "REDIS_PORT": port.to_string()}})
}

fn worker_id(name: &str) -> String {
    format!("drain-worker-mock-{name}")
}

/// `job-<name>` as the API stores it (priority 70, `created_at` in ISO 8601), in `jobs:pending`.
fn push(redis: &RedisServer, name: &str, created_at: &str) {
    let mut conn = sync_conn(redis);
    let id = format!("job-{name}");
    let _: () = conn
        .hset_multiple(
            format!("job:{id}"),
            &[
                ("id", id.as_str()),
                ("service_required", "mock"),
                ("priority", "70"),
                ("payload", "{\"n\":1}"),
                ("created_at", created_at),
                ("status", "pending"),
                ("retry_count", "0"),
                ("max_retries", "3"),
                ("workflow_priority", ""),
                ("workflow_datetime", ""),
            ],
        )
        .unwrap();
    let _: () = conn.zadd("jobs:pending", &id, 1).unwrap();
}

fn sync_conn(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

fn events(rt: &Runtime) -> Vec<String> {
    std::fs::read_to_string(rt.path("events"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_event(rt: &Runtime, line: &str) {
    wait_for(
        &format!("event \"{line}\""),
        || format!("events: {:?}\n{}", events(rt), rt.output()),
        || events(rt).iter().any(|e| e == line).then_some(()),
    );
}

fn job_status(redis: &RedisServer, job: &str) -> Option<String> {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("HGET")
        .arg(format!("job:{job}"))
        .arg("status")
        .query(&mut conn)
        .unwrap()
}

fn start(redis: &RedisServer, apps: Vec<Value>) -> Runtime {
    let url = redis.url();
    Runtime::start(
        json!({ "apps": apps }),
        &[
            ("HUB_REDIS_URL", url.as_str()),
            ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "1"),
        ],
    )
}

#[test]
fn a_busy_worker_finishes_its_job_before_it_is_signalled() {
    let redis = RedisServer::start();
    let mut rt = start(
        &redis,
        vec![
            worker("busy", "60s", redis.port()),
            worker("idle", "60s", redis.port()),
        ],
    );
    wait_event(&rt, "busy up");
    wait_event(&rt, "idle up");
    push(&redis, "busy", "2026-12-06T10:00:00.000Z");
    std::fs::write(rt.path("go-busy"), "").unwrap();
    wait_event(&rt, "busy started job-busy");

    rt.signal(libc::SIGTERM);
    // The idle worker is signalled at once, while the busy one keeps working.
    wait_event(&rt, "idle stopped idle");
    wait_for(
        "the drain to be announced",
        || rt.output(),
        || {
            rt.output()
                .contains(
                    "busy is busy with job job-busy; it gets its kill_timeout 1m 0s to finish",
                )
                .then_some(())
        },
    );
    assert!(
        !events(&rt)
            .iter()
            .any(|e| e.starts_with("busy stopped") || e.contains("failed")),
        "the busy worker was signalled: {:?}",
        events(&rt)
    );
    assert_eq!(
        job_status(&redis, "job-busy").as_deref(),
        Some("in_progress")
    );

    // It finishes: then it is signalled, idle, and the job is completed.
    std::fs::write(rt.path("finish-busy"), "").unwrap();
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
    let seen = events(&rt);
    let at = |line: &str| {
        seen.iter()
            .position(|e| e == line)
            .unwrap_or_else(|| panic!("no \"{line}\" in {seen:?}"))
    };
    assert!(
        at("idle stopped idle") < at("busy completed job-busy"),
        "{seen:?}"
    );
    assert!(
        at("busy completed job-busy") < at("busy stopped idle"),
        "{seen:?}"
    );
    assert_eq!(job_status(&redis, "job-busy").as_deref(), Some("completed"));
    let out = rt.output();
    assert!(
        out.contains("busy finished job job-busy; sending SIGTERM now"),
        "{out}"
    );
    // A job finished in time is not touched: not handed back, not pending again.
    assert!(!out.contains("handed job"), "{out}");
    assert!(!out.contains("SIGKILL"), "{out}");
    let mut conn = sync_conn(&redis);
    let score: Option<f64> = conn.zscore("jobs:pending", "job-busy").unwrap();
    assert_eq!(score, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_still_in_flight_at_kill_timeout_is_handed_back_to_the_queue() {
    use crate::job_queue::Tap;

    let redis = RedisServer::start();
    let id = worker_id("stuck");
    let mut tap = Tap::start(&redis.url(), &[&format!("machine:drain:worker:{id}")]).await;
    let mut rt = tokio::task::block_in_place(|| {
        let rt = start(&redis, vec![worker("stuck", "1500ms", redis.port())]);
        wait_event(&rt, "stuck up");
        // 2026-12-06T10:00:00.250Z: the API's score is 70·10^15 − floor(1796551200.25).
        push(&redis, "stuck", "2026-12-06T10:00:00.250Z");
        std::fs::write(rt.path("go-stuck"), "").unwrap();
        wait_event(&rt, "stuck started job-stuck");
        rt.signal(libc::SIGTERM);
        rt
    });
    let status = tokio::task::block_in_place(|| rt.wait_exit());
    assert_eq!(status.code(), Some(0), "{}", rt.output());
    let out = rt.output();
    assert!(
        out.contains(
            "stuck is still busy with job job-stuck after its kill_timeout 1.5s; killing it (SIGKILL to its process group: on SIGTERM the worker would fail the job permanently), then handing the job back to the queue"
        ),
        "{out}"
    );
    assert!(
        out.contains("handed job job-stuck back to the queue: it was in_progress, now pending in jobs:pending"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "worker {id} was killed: still busy at its kill_timeout 1.5s when the machine stopped"
        )),
        "{out}"
    );
    // It never saw SIGTERM, so it failed nothing.
    assert_eq!(
        events(&rt).last().map(String::as_str),
        Some("stuck started job-stuck")
    );

    // The job as the API's orphan clean-up leaves it: pending, ids and times cleared, the rest kept.
    let mut conn = sync_conn(&redis);
    let job: HashMap<String, String> = conn.hgetall("job:job-stuck").unwrap();
    assert_eq!(job["status"], "pending", "{job:?}");
    for cleared in ["worker_id", "assigned_at", "started_at"] {
        assert_eq!(job[cleared], "", "{cleared} in {job:?}");
    }
    for (field, kept) in [
        ("priority", "70"),
        ("payload", "{\"n\":1}"),
        ("created_at", "2026-12-06T10:00:00.250Z"),
        ("retry_count", "0"),
        ("service_required", "mock"),
    ] {
        assert_eq!(job[field], kept, "{field} in {job:?}");
    }
    assert!(!job.contains_key("failed_at"), "{job:?}");
    let score: Option<f64> = conn.zscore("jobs:pending", "job-stuck").unwrap();
    assert_eq!(score, Some(70.0 * 1e15 - 1_796_551_200.0));
    let active: bool = conn
        .hexists(format!("jobs:active:{id}"), "job-stuck")
        .unwrap();
    assert!(!active, "still in jobs:active:{id}");
    let worker: HashMap<String, String> = conn.hgetall(format!("worker:{id}")).unwrap();
    assert_eq!(
        worker.get("current_job_id").map(String::as_str),
        Some(""),
        "{worker:?}"
    );
    assert_eq!(
        worker.get("status").map(String::as_str),
        Some("idle"),
        "{worker:?}"
    );

    // The broker event, on the worker's machine channel.
    let (channel, event) = loop {
        let Some((channel, event)) = tap.next_within(crate::job_queue::DEADLINE).await else {
            panic!("no job_handed_back event\n{out}");
        };
        if event["event_type"] == "job_handed_back" {
            break (channel, event);
        }
    };
    assert_eq!(channel, format!("machine:drain:worker:{id}"));
    assert_eq!(event["worker_id"], id.as_str());
    assert_eq!(event["machine_id"], "drain");
    assert_eq!(event["data"]["job_id"], "job-stuck");
    assert_eq!(event["data"]["previous_status"], "in_progress");
    assert!(event["timestamp"].is_u64(), "{event}");
    assert!(
        event["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("kill_timeout 1.5s"),
        "{event}"
    );
}

#[test]
fn a_job_the_worker_finished_in_the_last_moment_is_left_alone() {
    let redis = RedisServer::start();
    let mut late = worker("late", "1s", redis.port());
    late["env"]["LATE"] = json!("1");
    let mut rt = start(&redis, vec![late]);
    wait_event(&rt, "late up");
    push(&redis, "late", "2026-12-06T10:00:00.000Z");
    std::fs::write(rt.path("go-late"), "").unwrap();
    wait_event(&rt, "late completed job-late but still says busy");
    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
    let out = rt.output();
    assert!(
        out.contains("late is still busy with job job-late"),
        "{out}"
    );
    assert!(
        out.contains("job job-late was not handed back: it is completed already, nothing to do"),
        "{out}"
    );
    assert_eq!(job_status(&redis, "job-late").as_deref(), Some("completed"));
    let mut conn = sync_conn(&redis);
    let score: Option<f64> = conn.zscore("jobs:pending", "job-late").unwrap();
    assert_eq!(score, None);
    // The dead worker no longer points at it.
    let current: Option<String> = conn
        .hget(format!("worker:{}", worker_id("late")), "current_job_id")
        .unwrap();
    assert_eq!(current.as_deref(), Some(""));
}

#[test]
fn a_restart_waits_for_a_busy_worker_that_finishes_in_time_and_leaves_its_job_alone() {
    use crate::up_support::http_request;

    let redis = RedisServer::start();
    let url = redis.url();
    let rt = Runtime::start(
        json!({ "apps": [worker("slow", "60s", redis.port())] }),
        &[
            ("HUB_REDIS_URL", url.as_str()),
            ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "1"),
            ("MACHINE_CONTROL_TOKEN", "drain-token-51c"),
        ],
    );
    wait_event(&rt, "slow up");
    push(&redis, "slow", "2026-12-06T10:00:00.000Z");
    std::fs::write(rt.path("go-slow"), "").unwrap();
    wait_event(&rt, "slow started job-slow");
    let (code, _, raw) = http_request(
        rt.health_port(),
        "POST",
        "/restart/service?service=slow",
        &["Authorization: Bearer drain-token-51c"],
    );
    assert_eq!(code, 202, "{raw}");
    wait_for(
        "the restart to wait for the job",
        || rt.output(),
        || {
            rt.output()
                .contains("slow is busy with job job-slow; the restart waits up to its kill_timeout 1m 0s")
                .then_some(())
        },
    );
    assert!(
        !events(&rt)
            .iter()
            .any(|e| e.contains("stopped") || e.contains("failed")),
        "{:?}",
        events(&rt)
    );
    // It finishes: then it is signalled idle and started again; the job stays completed. (Without
    // `go-slow` the new process waits for a job instead of claiming this one again.)
    std::fs::remove_file(rt.path("go-slow")).unwrap();
    std::fs::write(rt.path("finish-slow"), "").unwrap();
    wait_for(
        "the worker to be up again",
        || format!("{:?}\n{}", events(&rt), rt.output()),
        || (events(&rt).iter().filter(|e| *e == "slow up").count() == 2).then_some(()),
    );
    let seen = events(&rt);
    assert_eq!(
        seen,
        [
            "slow up",
            "slow started job-slow",
            "slow completed job-slow",
            "slow stopped idle",
            "slow up"
        ],
        "{seen:?}"
    );
    // The new process can write "slow up" before the runtime's line about the restart reaches the test.
    let out = wait_line(&rt, "slow finished job job-slow; restarting it now");
    assert!(
        !out.contains("handed job") && !out.contains("SIGKILL"),
        "{out}"
    );
    assert_eq!(job_status(&redis, "job-slow").as_deref(), Some("completed"));
    let mut conn = sync_conn(&redis);
    let score: Option<f64> = conn.zscore("jobs:pending", "job-slow").unwrap();
    assert_eq!(score, None);
}

#[test]
fn without_a_broker_every_worker_is_signalled_at_once() {
    let redis = RedisServer::start();
    // The workers write to a redis the machine does not report to: it cannot know they are busy.
    let mut rt = Runtime::start(
        json!({"apps": [worker("unknown", "60s", redis.port())]}),
        &[],
    );
    wait_event(&rt, "unknown up");
    std::fs::write(rt.path("go-unknown"), "").unwrap();
    wait_event(&rt, "unknown started job-unknown");
    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
    assert!(
        events(&rt).contains(&"unknown failed job-unknown on SIGTERM".to_owned()),
        "{:?}",
        events(&rt)
    );
}

/// The same with the stand-in worker bundle (node, the real worker's contract) running a
/// simulation job on the built-in simulation service, in a hand-written ecosystem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundle_worker_finishes_its_simulation_job_when_the_machine_stops() {
    use crate::job_queue::{NewJob, bundle_dir, load_job_matching, push_job, wait_job_status};

    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    load_job_matching(&mut conn).await;
    let port = crate::up_support::free_port();
    let url = redis.url();
    let bundle = bundle_dir();
    let worker_env = json!({
        "WORKER_ID": "drain-sim-worker-simulation-websocket-0", "MACHINE_ID": "drain-sim",
        "HUB_REDIS_URL": url, "WORKERS": "simulation-websocket", "CONNECTORS": "simulation-websocket",
        "UNIFIED_MACHINE_STATUS": "true", "NODE_ENV": "production", "POLL_INTERVAL_MS": "100",
        "SIMULATION_WEBSOCKET_URL": format!("ws://127.0.0.1:{port}"),
    });
    let mut rt = tokio::task::block_in_place(|| {
        Runtime::start(
            json!({"apps": [
                {"name": "simulation-gpu0", "script": "machine-simulate",
                 "args": ["--port", port.to_string()], "machine_role": "service",
                 "machine_readiness": {"kind": "http", "url": format!("http://127.0.0.1:{port}/health"), "interval_ms": 100}},
                {"name": "sim-worker", "script": "redis-direct-worker.js", "interpreter": "node",
                 "cwd": bundle, "env": worker_env, "kill_timeout": "2m", "kill_signal": "SIGTERM",
                 "machine_wait_for": ["simulation-gpu0"]},
            ]}),
            &[
                ("HUB_REDIS_URL", url.as_str()),
                ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "1"),
            ],
        )
    });
    let job = "drain-sim-job-1";
    push_job(
        &mut conn,
        &NewJob::new(
            job,
            "simulation",
            json!({"steps": 6, "processing_time_ms": 3000, "prompt": "long"}),
        ),
    )
    .await;
    wait_job_status(&mut conn, job, "in_progress").await;

    rt.signal(libc::SIGTERM);
    wait_job_status(&mut conn, job, "completed").await;
    let status = tokio::task::block_in_place(|| rt.wait_exit());
    assert_eq!(status.code(), Some(0), "{}", rt.output());
    let out = rt.output();
    let busy = out
        .find(&format!("sim-worker is busy with job {job}"))
        .unwrap_or_else(|| panic!("{out}"));
    let finished = out
        .find(&format!(
            "sim-worker finished job {job}; sending SIGTERM now"
        ))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(busy < finished, "{out}");
}

#[test]
fn machine_runtime_stop_waits_for_a_busy_worker_then_keeps_it_stopped() {
    let redis = RedisServer::start();
    let url = redis.url();
    let rt = Runtime::start(
        json!({ "apps": [worker("slow", "60s", redis.port())] }),
        &[
            ("HUB_REDIS_URL", url.as_str()),
            ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "1"),
            ("MACHINE_CONTROL_TOKEN", "drain-token-7d2"),
        ],
    );
    wait_event(&rt, "slow up");
    push(&redis, "slow", "2026-12-06T10:00:00.000Z");
    std::fs::write(rt.path("go-slow"), "").unwrap();
    wait_event(&rt, "slow started job-slow");
    let endpoint = format!("http://127.0.0.1:{}", rt.health_port());
    // `stop` answers once the worker is stopped: here, after its job.
    let stop = std::process::Command::new(crate::up_support::BIN)
        .args(["stop", "--url", &endpoint, "slow"])
        .env("MACHINE_CONTROL_TOKEN", "drain-token-7d2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "the stop to wait for the job",
        || rt.output(),
        || {
            rt.output()
                .contains(
                    "slow is busy with job job-slow; the stop waits up to its kill_timeout 1m 0s",
                )
                .then_some(())
        },
    );
    assert!(
        !events(&rt)
            .iter()
            .any(|e| e.contains("stopped") || e.contains("failed")),
        "{:?}",
        events(&rt)
    );
    std::fs::write(rt.path("finish-slow"), "").unwrap();
    let out = stop.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "slow: stopped (was online)\n"
    );
    assert_eq!(
        events(&rt),
        [
            "slow up",
            "slow started job-slow",
            "slow completed job-slow",
            "slow stopped idle"
        ]
    );
    // Logged before the stop; the stop can be answered before the line reaches the test.
    wait_line(&rt, "slow finished job job-slow; stopping it now");
    assert_eq!(job_status(&redis, "job-slow").as_deref(), Some("completed"));
    assert_eq!(rt.app_status("slow")["state"], "stopped");
}
