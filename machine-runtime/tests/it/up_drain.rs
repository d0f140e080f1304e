//! Graceful stop with jobs in flight, against a real redis-server: idle workers are signalled at
//! once, a busy worker is signalled when it is idle again, and one still busy at its
//! `kill_timeout` gets SIGTERM and fails its job as the real worker does (contract §6).

use serde_json::{Value, json};

use crate::redis_server::RedisServer;
use crate::up_support::{Runtime, wait_for};

/// A worker stand-in in sh + redis-cli that keeps the `worker:<id>` hash as the real worker does:
/// idle at start; busy with `job-<name>` once `go-<name>` exists; completed and idle once
/// `finish-<name>` exists. On SIGTERM it fails the job in flight permanently (the real worker's
/// behaviour) or, idle, just leaves; each step is appended to `events`.
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
$R HSET "job:job-$NAME" status in_progress >/dev/null
$R HSET "worker:$WORKER_ID" status busy current_job_id "job-$NAME" >/dev/null
log "$NAME started job-$NAME"
while [ ! -f "$D/finish-$NAME" ]; do sleep 0.05; done
$R HSET "job:job-$NAME" status completed >/dev/null
$R HSET "worker:$WORKER_ID" status idle current_job_id "" >/dev/null
log "$NAME completed job-$NAME"
while true; do sleep 0.05; done
"#;

/// A hand-written worker app (known as a worker by its WORKER_ID alone).
fn worker(name: &str, kill_timeout: &str, port: u16) -> Value {
    json!({"name": name, "script": "sh", "args": ["-c", WORKER], "kill_timeout": kill_timeout,
           "env": {"WORKER_ID": format!("drain-worker-mock-{name}"), "MACHINE_ID": "drain",
                   "WORKERS": "mock", "NAME": name, "D": "@DIR@", "REDIS_PORT": port.to_string()}})
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
}

#[test]
fn a_job_still_in_flight_at_kill_timeout_is_failed_by_the_worker() {
    let redis = RedisServer::start();
    let mut rt = start(&redis, vec![worker("stuck", "1500ms", redis.port())]);
    wait_event(&rt, "stuck up");
    std::fs::write(rt.path("go-stuck"), "").unwrap();
    wait_event(&rt, "stuck started job-stuck");

    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
    let out = rt.output();
    assert!(
        out.contains(
            "stuck is still busy with job job-stuck after its kill_timeout 1.5s; sending SIGTERM: the worker fails the job permanently (it is not requeued)"
        ),
        "{out}"
    );
    assert!(
        events(&rt).contains(&"stuck failed job-stuck on SIGTERM".to_owned()),
        "{:?}",
        events(&rt)
    );
    assert_eq!(job_status(&redis, "job-stuck").as_deref(), Some("failed"));
    // It exited on SIGTERM: no SIGKILL was needed.
    assert!(!out.contains("sending SIGKILL"), "{out}");
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
                 "cwd": bundle, "env": worker_env, "kill_timeout": "2m",
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
