//! The job queue's side of a job's life, with real parts: the test `findMatchingJob` function
//! (tests/fixtures/redis/job-matching.lua) in a real redis-server, jobs pushed the way the API pushes them,
//! and the stand-in worker bundle (tests/fixtures/worker-bundle) run by real node.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::redis_server::RedisServer;

/// Generous: the machine running the tests has two busy cores.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The stand-in worker bundle folder (entry, package.json, src/config/service-mapping.json).
pub fn bundle_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/worker-bundle")
}

/// The test `findMatchingJob` library source.
pub fn job_matching_source() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/redis/job-matching.lua");
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Loads the `jobMatching` library as the broker's tooling does (`FUNCTION LOAD REPLACE`).
pub async fn load_job_matching(conn: &mut redis::aio::MultiplexedConnection) {
    let name: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(job_matching_source())
        .query_async(conn)
        .await
        .expect("FUNCTION LOAD REPLACE job-matching.lua");
    assert_eq!(name, "jobMatching");
}

/// A job as the API stores it (`lightweight-api-server.ts`, spec §6.3/§6.4).
pub struct NewJob<'a> {
    pub id: &'a str,
    pub service_required: &'a str,
    pub priority: i64,
    pub payload: Value,
    /// JSON, or "" for none.
    pub requirements: &'a str,
}

impl<'a> NewJob<'a> {
    pub fn new(id: &'a str, service_required: &'a str, payload: Value) -> Self {
        Self {
            id,
            service_required,
            priority: 50,
            payload,
            requirements: "",
        }
    }
}

/// Writes `job:<id>` and adds it to `jobs:pending` with the API's score,
/// `priority·10^15 − floor(created_ms/1000)`.
pub async fn push_job(conn: &mut redis::aio::MultiplexedConnection, job: &NewJob<'_>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let created_at = iso_now();
    let fields: Vec<(&str, String)> = vec![
        ("id", job.id.to_owned()),
        ("service_required", job.service_required.to_owned()),
        ("priority", job.priority.to_string()),
        ("payload", job.payload.to_string()),
        ("requirements", job.requirements.to_owned()),
        ("customer_id", String::new()),
        ("created_at", created_at),
        ("status", "pending".to_owned()),
        ("retry_count", "0".to_owned()),
        ("max_retries", "3".to_owned()),
        ("workflow_id", String::new()),
        ("workflow_priority", String::new()),
        ("workflow_datetime", String::new()),
        ("current_step", String::new()),
        ("total_steps", String::new()),
        ("ctx", String::new()),
    ];
    let _: () = conn
        .hset_multiple(format!("job:{}", job.id), &fields)
        .await
        .unwrap();
    #[allow(clippy::cast_precision_loss)]
    let score = job.priority as f64 * 1e15 - now.as_secs() as f64;
    let _: () = conn.zadd("jobs:pending", job.id, score).await.unwrap();
}

/// The current time as ISO 8601 UTC with milliseconds (what the API writes to `created_at`).
pub fn iso_now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Capabilities as the worker sends them to `findMatchingJob` (spec §6.6).
pub fn capabilities(worker_id: &str, services: &[&str], gpu_memory_gb: u32) -> String {
    json!({
        "worker_id": worker_id,
        "machine_id": "m1",
        "services": services,
        "job_service_required_map": services,
        "hardware": {"ram_gb": 8, "gpu_memory_gb": gpu_memory_gb, "gpu_model": "unknown"},
        "models": {},
        "customer_access": {"isolation": "loose", "max_concurrent_customers": 10},
        "performance": {"concurrent_jobs": 1, "quality_levels": ["fast"], "max_processing_time_minutes": 30},
    })
    .to_string()
}

pub async fn fcall(
    conn: &mut redis::aio::MultiplexedConnection,
    caps: &str,
) -> redis::RedisResult<Option<String>> {
    redis::cmd("FCALL")
        .arg("findMatchingJob")
        .arg(0)
        .arg(caps)
        .arg(100)
        .query_async(conn)
        .await
}

/// Every message published on channels matching a pattern, with its channel.
pub struct Tap {
    rx: mpsc::UnboundedReceiver<(String, Value)>,
    task: JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    /// Subscribes (PSUBSCRIBE) and returns once the subscription is in place.
    pub async fn start(url: &str, patterns: &[&str]) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = redis::Client::open(url).unwrap();
        let mut pubsub = client.get_async_pubsub().await.expect("test subscriber");
        for pattern in patterns {
            pubsub.psubscribe(*pattern).await.expect("PSUBSCRIBE");
        }
        let task = tokio::spawn(async move {
            let mut stream = Box::pin(pubsub.into_on_message());
            while let Some(message) =
                std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx))
                    .await
            {
                let payload: String = message.get_payload().unwrap_or_default();
                let value = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
                if tx
                    .send((message.get_channel_name().to_owned(), value))
                    .is_err()
                {
                    return;
                }
            }
        });
        Self { rx, task }
    }

    /// Waits for the next message, or None at the deadline.
    pub async fn next_within(&mut self, within: Duration) -> Option<(String, Value)> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}

/// The stand-in worker (`node redis-direct-worker.js`) with a clean environment plus `envs`, run in `dir`.
pub fn spawn_worker(dir: &Path, envs: &[(&str, &str)]) -> tokio::process::Child {
    let mut command = tokio::process::Command::new("node");
    command
        .arg("redis-direct-worker.js")
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in envs {
        command.env(key, value);
    }
    command
        .spawn()
        .expect("node runs (install nodejs ≥ 18; these tests need the real node)")
}

/// Waits for the child to exit; returns its status, stdout and stderr.
pub async fn wait_output(
    child: &mut tokio::process::Child,
) -> (std::process::ExitStatus, String, String) {
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("worker did not exit within the deadline")
        .unwrap();
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_string(&mut stdout).await.unwrap();
    }
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).await.unwrap();
    }
    (status, stdout, stderr)
}

pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("child still running");
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped); no memory is involved.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill -TERM {pid}");
}

/// Polls `HGET job:<id> status` until it is `want` (for `completed`: until the job is also in
/// `jobs:completed`, the last store step of a completion); panics with the hash at the deadline.
pub async fn wait_job_status(conn: &mut redis::aio::MultiplexedConnection, id: &str, want: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status: Option<String> = conn.hget(format!("job:{id}"), "status").await.unwrap();
        // A completion or a permanent failure is several commands (spec §6 "Complete": status, then HDEL
        // jobs:active, then HSET jobs:completed; a failure: status, then HSET jobs:failed); "completed"
        // and "failed" are waited for until the record in jobs:completed / jobs:failed is there too.
        let settled = match want {
            "completed" => conn.hexists("jobs:completed", id).await.unwrap(),
            "failed" => conn.hexists("jobs:failed", id).await.unwrap(),
            _ => true,
        };
        if status.as_deref() == Some(want) && settled {
            return;
        }
        if Instant::now() > deadline {
            let hash: std::collections::HashMap<String, String> =
                conn.hgetall(format!("job:{id}")).await.unwrap();
            panic!("job {id} did not reach status {want}: {hash:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_matching_job_claims_the_first_job_the_worker_serves() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    load_job_matching(&mut conn).await;

    let mut urgent = NewJob::new("job-mock", "mock", json!({}));
    urgent.priority = 90;
    push_job(&mut conn, &urgent).await;
    push_job(
        &mut conn,
        &NewJob::new("job-sim", "simulation", json!({"steps": 3})),
    )
    .await;

    let caps = capabilities("m1-worker-simulation-websocket-0", &["simulation"], 8);
    let reply = fcall(&mut conn, &caps)
        .await
        .unwrap()
        .expect("a simulation job");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["jobId"], "job-sim");
    // The returned hash is the one read before the claim.
    assert_eq!(reply["job"]["status"], "pending");
    assert_eq!(reply["job"]["payload"], "{\"steps\":3}");

    let job: std::collections::HashMap<String, String> = conn.hgetall("job:job-sim").await.unwrap();
    assert_eq!(job["status"], "assigned");
    assert_eq!(job["worker_id"], "m1-worker-simulation-websocket-0");
    let assigned_at = &job["assigned_at"];
    let (secs, micros) = assigned_at.split_once('.').expect("assigned_at is s.µs");
    assert!(
        secs.parse::<u64>().is_ok() && micros.len() == 6,
        "{assigned_at}"
    );
    let active: Option<String> = conn
        .hget("jobs:active:m1-worker-simulation-websocket-0", "job-sim")
        .await
        .unwrap();
    let active: Value = serde_json::from_str(&active.expect("recorded as active")).unwrap();
    assert_eq!(active["status"], "pending");
    let worker: std::collections::HashMap<String, String> = conn
        .hgetall("worker:m1-worker-simulation-websocket-0")
        .await
        .unwrap();
    assert_eq!(worker["status"], "busy");
    assert_eq!(worker["current_job_id"], "job-sim");
    let pending: Vec<String> = conn.zrevrange("jobs:pending", 0, -1).await.unwrap();
    assert_eq!(pending, ["job-mock"]);
    let stream_len: usize = redis::cmd("XLEN")
        .arg("progress:job-sim")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stream_len, 1);

    // Nothing more for this worker; the mock job stays for a mock worker.
    assert_eq!(fcall(&mut conn, &caps).await.unwrap(), None);
    let mock = capabilities("m1-worker-mock-0", &["mock"], 8);
    let reply: Value =
        serde_json::from_str(&fcall(&mut conn, &mock).await.unwrap().unwrap()).unwrap();
    assert_eq!(reply["jobId"], "job-mock");

    // worker_id is required, as in the real function.
    push_job(&mut conn, &NewJob::new("job-late", "mock", json!({}))).await;
    let err = fcall(&mut conn, r#"{"job_service_required_map":["mock"]}"#)
        .await
        .expect_err("no worker_id");
    assert!(err.to_string().contains("worker_id"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_matching_job_honours_hardware_and_custom_requirements() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    load_job_matching(&mut conn).await;

    let mut big = NewJob::new("job-big", "simulation", json!({}));
    big.requirements = r#"{"hardware":{"gpu_memory_gb":16}}"#;
    push_job(&mut conn, &big).await;
    let mut special = NewJob::new("job-special", "simulation", json!({}));
    special.requirements = r#"{"specialization":"video"}"#;
    push_job(&mut conn, &special).await;

    let small = capabilities("small", &["simulation"], 8);
    assert_eq!(fcall(&mut conn, &small).await.unwrap(), None);
    let large = capabilities("large", &["simulation"], 24);
    let reply: Value =
        serde_json::from_str(&fcall(&mut conn, &large).await.unwrap().unwrap()).unwrap();
    assert_eq!(reply["jobId"], "job-big");
    // A key the worker lacks never matches; one it has does.
    assert_eq!(fcall(&mut conn, &large).await.unwrap(), None);
    let mut video: Value = serde_json::from_str(&large).unwrap();
    video["specialization"] = json!("video");
    let reply: Value =
        serde_json::from_str(&fcall(&mut conn, &video.to_string()).await.unwrap().unwrap())
            .unwrap();
    assert_eq!(reply["jobId"], "job-special");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_worker_completes_a_mock_job_and_cleans_up_on_sigterm() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    load_job_matching(&mut conn).await;
    let machine = "jq-m1";
    let worker_id = format!("{machine}-worker-mock-0");
    let mut tap = Tap::start(
        &server.url(),
        &[
            &format!("machine:{machine}:worker:*"),
            "update_job_progress",
            "complete_job",
        ],
    )
    .await;
    let mut worker = spawn_worker(
        &bundle_dir(),
        &[
            // WORKERS wins over CONNECTORS (contract §2).
            ("WORKERS", "mock:1"),
            ("CONNECTORS", "replicate"),
            ("WORKER_ID", &worker_id),
            ("MACHINE_ID", machine),
            ("HUB_REDIS_URL", &server.url()),
            ("UNIFIED_MACHINE_STATUS", "true"),
            ("POLL_INTERVAL_MS", "100"),
        ],
    );
    push_job(
        &mut conn,
        &NewJob::new("mock-1", "mock", json!({"processing_time_ms": 200})),
    )
    .await;
    wait_job_status(&mut conn, "mock-1", "completed").await;

    let job: std::collections::HashMap<String, String> = conn.hgetall("job:mock-1").await.unwrap();
    assert_eq!(job["worker_id"], worker_id);
    assert!(job["completed_at"].ends_with('Z'), "{job:?}");
    let active: usize = conn.hlen(format!("jobs:active:{worker_id}")).await.unwrap();
    assert_eq!(active, 0);
    let progress: Option<String> = conn.hget("job:mock-1:progress", "progress").await.unwrap();
    assert_eq!(progress.as_deref(), Some("100"));
    let heartbeat: Option<String> = conn
        .get(format!("worker:{worker_id}:heartbeat"))
        .await
        .unwrap();
    assert!(heartbeat.is_some(), "heartbeat key");

    // The machine channel: idle at start, busy, job_started, idle, job_completed.
    let channel = format!("machine:{machine}:worker:{worker_id}");
    let mut seen = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while !seen.iter().any(|e: &String| e == "job_completed") && Instant::now() < deadline {
        if let Some((name, message)) = tap.next_within(Duration::from_secs(1)).await
            && name == channel
        {
            let event = message["event_type"].as_str().unwrap_or_default();
            let status = message["data"]["status"].as_str().unwrap_or_default();
            seen.push(if status.is_empty() {
                event.to_owned()
            } else {
                format!("{event}:{status}")
            });
        }
    }
    let order: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|e| !e.starts_with("connector_status_changed"))
        .collect();
    assert_eq!(
        order,
        [
            "worker_status_changed:idle",
            "worker_status_changed:busy",
            "job_started",
            "worker_status_changed:idle",
            "job_completed"
        ]
    );

    sigterm(&worker);
    let (status, stdout, _) = wait_output(&mut worker).await;
    assert!(status.success(), "{status}\n{stdout}");
    assert!(stdout.contains("completed job mock-1"), "{stdout}");
    let left: bool = conn.exists(format!("worker:{worker_id}")).await.unwrap();
    assert!(!left, "worker hash removed on stop");
    let left: bool = conn
        .exists(format!("worker:{worker_id}:heartbeat"))
        .await
        .unwrap();
    assert!(!left, "heartbeat removed on stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_worker_refuses_a_type_its_mapping_lacks() {
    // A bundle whose mapping does not know simulation-websocket (an older worker release).
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle_dir();
    std::fs::copy(
        bundle.join("redis-direct-worker.js"),
        dir.path().join("redis-direct-worker.js"),
    )
    .unwrap();
    std::fs::copy(bundle.join("package.json"), dir.path().join("package.json")).unwrap();
    let mapping_text =
        std::fs::read_to_string(bundle.join("src/config/service-mapping.json")).unwrap();
    let mut mapping: Value = serde_json::from_str(&mapping_text).unwrap();
    assert!(
        mapping["workers"]
            .as_object_mut()
            .unwrap()
            .remove("simulation-websocket")
            .is_some()
    );
    std::fs::create_dir_all(dir.path().join("src/config")).unwrap();
    std::fs::write(
        dir.path().join("src/config/service-mapping.json"),
        mapping.to_string(),
    )
    .unwrap();

    let mut worker = spawn_worker(
        dir.path(),
        &[
            ("WORKERS", "simulation-websocket:1"),
            ("WORKER_ID", "m-worker-simulation-websocket-0"),
            ("HUB_REDIS_URL", "redis://127.0.0.1:1"),
        ],
    );
    let (status, stdout, stderr) = wait_output(&mut worker).await;
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("Worker type 'simulation-websocket' not found in service mapping"),
        "{stderr}"
    );

    // The same bundle knows mock; WORKER_CONNECTORS is read when WORKERS is empty.
    let server = RedisServer::start();
    let mut worker = spawn_worker(
        dir.path(),
        &[
            ("WORKERS", ""),
            ("WORKER_CONNECTORS", "mock"),
            ("CONNECTORS", "simulation-websocket"),
            ("WORKER_ID", "m-worker-mock-0"),
            ("HUB_REDIS_URL", &server.url()),
        ],
    );
    let mut conn = server.conn().await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let beat: bool = conn
            .exists("worker:m-worker-mock-0:heartbeat")
            .await
            .unwrap();
        if beat {
            break;
        }
        assert!(Instant::now() < deadline, "the mock worker never heartbeat");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigterm(&worker);
    let (status, stdout, _) = wait_output(&mut worker).await;
    assert!(status.success(), "{stdout}");
    assert!(
        stdout.contains("types mock (from WORKER_CONNECTORS)"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_worker_completes_simulation_jobs_through_the_simulation_service() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    load_job_matching(&mut conn).await;
    let service = tokio::task::block_in_place(|| {
        crate::simulate::start(&[("CUDA_VISIBLE_DEVICES", "GPU-fa4e0001")], &[])
    });
    let machine = "jq-sim";
    let worker_id = format!("{machine}-worker-simulation-websocket-1");
    let url = format!("ws://{}", service.addr);
    let mut tap = Tap::start(&server.url(), &["update_job_progress", "complete_job"]).await;
    let mut worker = spawn_worker(
        &bundle_dir(),
        &[
            ("WORKERS", "simulation-websocket"),
            ("CONNECTORS", "simulation-websocket"),
            ("WORKER_ID", &worker_id),
            ("MACHINE_ID", machine),
            ("HUB_REDIS_URL", &server.url()),
            ("UNIFIED_MACHINE_STATUS", "true"),
            ("POLL_INTERVAL_MS", "100"),
            ("SIMULATION_WEBSOCKET_URL", &url),
            ("CUDA_VISIBLE_DEVICES", "GPU-fa4e0001"),
        ],
    );
    for id in ["sim-a", "sim-b"] {
        push_job(
            &mut conn,
            &NewJob::new(
                id,
                "simulation",
                json!({"steps": 4, "processing_time_ms": 200}),
            ),
        )
        .await;
    }
    // A job the worker does not serve stays pending.
    push_job(&mut conn, &NewJob::new("other", "comfyui", json!({}))).await;
    wait_job_status(&mut conn, "sim-a", "completed").await;
    wait_job_status(&mut conn, "sim-b", "completed").await;

    for id in ["sim-a", "sim-b"] {
        let done: Option<String> = conn.hget("jobs:completed", id).await.unwrap();
        let done: Value = serde_json::from_str(&done.expect("in jobs:completed")).unwrap();
        assert_eq!(done["success"], true);
        // The result came from the service: its GPU pin and the job's step count.
        assert_eq!(
            done["data"]["results"]["cuda_visible_devices"],
            "GPU-fa4e0001"
        );
        assert_eq!(done["data"]["results"]["steps"], 4);
    }
    let mut progress: Vec<(String, u64)> = Vec::new();
    let mut completed = Vec::new();
    while let Some((channel, message)) = tap.next_within(Duration::from_millis(500)).await {
        let id = message["job_id"].as_str().unwrap_or_default().to_owned();
        match channel.as_str() {
            "update_job_progress" => progress.push((id, message["progress"].as_u64().unwrap_or(0))),
            "complete_job" => completed.push((id, message["worker_id"].clone())),
            _ => {}
        }
    }
    for id in ["sim-a", "sim-b"] {
        let steps: Vec<u64> = progress
            .iter()
            .filter(|(job, _)| job == id)
            .map(|(_, p)| *p)
            .collect();
        // 0 from the claim, then the service's four steps.
        assert_eq!(steps, [0, 25, 50, 75, 100], "{id}");
    }
    // Equal scores (same second, as the API's formula gives) go in reverse member order: any order is fine.
    completed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        completed,
        [
            ("sim-a".to_owned(), json!(worker_id)),
            ("sim-b".to_owned(), json!(worker_id))
        ]
    );
    let pending: Vec<String> = conn.zrange("jobs:pending", 0, -1).await.unwrap();
    assert_eq!(pending, ["other"]);
    sigterm(&worker);
    let (status, stdout, _) = wait_output(&mut worker).await;
    assert!(status.success(), "{stdout}");
}

/// A simulation service and a stand-in simulation-websocket worker polling every 100 ms.
async fn simulation_pair(
    server: &RedisServer,
    worker_id: &str,
) -> (crate::simulate::Service, tokio::process::Child) {
    let service = tokio::task::block_in_place(|| crate::simulate::start(&[], &[]));
    let url = format!("ws://{}", service.addr);
    let worker = spawn_worker(
        &bundle_dir(),
        &[
            ("WORKERS", "simulation-websocket:1"),
            ("WORKER_ID", worker_id),
            ("MACHINE_ID", "jq-fail"),
            ("HUB_REDIS_URL", &server.url()),
            ("UNIFIED_MACHINE_STATUS", "true"),
            ("POLL_INTERVAL_MS", "100"),
            ("SIMULATION_WEBSOCKET_URL", &url),
        ],
    );
    (service, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_worker_retries_a_failing_job_then_fails_it_permanently() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    load_job_matching(&mut conn).await;
    let worker_id = "jq-fail-worker-simulation-websocket-0";
    let (_service, mut worker) = simulation_pair(&server, worker_id).await;
    let mut tap = Tap::start(&server.url(), &["job_failed"]).await;
    // The service refuses steps 0 with an `error` naming the job: a retryable failure each time.
    push_job(
        &mut conn,
        &NewJob::new("bad", "simulation", json!({"steps": 0})),
    )
    .await;
    wait_job_status(&mut conn, "bad", "failed").await;

    let job: std::collections::HashMap<String, String> = conn.hgetall("job:bad").await.unwrap();
    assert_eq!(job["retry_count"], "3", "{job:?}");
    assert_eq!(job["last_failed_worker"], worker_id);
    for key in [
        "worker:failure:step-id:bad:attempt:1",
        "worker:failure:step-id:bad:attempt:2",
        "worker:failure:step-id:bad:permanent",
        "worker:completion:step-id:bad",
    ] {
        let record: Option<String> = conn.get(key).await.unwrap();
        let record: Value =
            serde_json::from_str(&record.unwrap_or_else(|| panic!("{key}"))).unwrap();
        assert!(
            record["error_message"]
                .as_str()
                .unwrap()
                .contains("config.steps is 0"),
            "{key}: {record}"
        );
    }
    let failed: Option<String> = conn.hget("jobs:failed", "bad").await.unwrap();
    assert!(failed.is_some(), "jobs:failed entry");
    let pending: usize = conn.zcard("jobs:pending").await.unwrap();
    assert_eq!(pending, 0);
    // The worker's permanent-failure message, and the unified one per attempt (three in all).
    let mut messages = Vec::new();
    while let Some((_, message)) = tap.next_within(Duration::from_millis(500)).await {
        messages.push(message);
    }
    assert_eq!(
        messages.iter().filter(|m| m["can_retry"] == false).count(),
        1,
        "{messages:?}"
    );
    assert_eq!(
        messages
            .iter()
            .filter(|m| m["service_type"] == "simulation-websocket")
            .count(),
        3,
        "{messages:?}"
    );
    sigterm(&worker);
    let (status, stdout, _) = wait_output(&mut worker).await;
    assert!(status.success(), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_worker_fails_its_job_permanently_when_stopped_mid_job() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    load_job_matching(&mut conn).await;
    let worker_id = "jq-stop-worker-simulation-websocket-0";
    let (_service, mut worker) = simulation_pair(&server, worker_id).await;
    push_job(
        &mut conn,
        &NewJob::new(
            "long",
            "simulation",
            json!({"steps": 10, "processing_time_ms": 600_000}),
        ),
    )
    .await;
    wait_job_status(&mut conn, "long", "in_progress").await;
    sigterm(&worker);
    let (status, stdout, _) = wait_output(&mut worker).await;
    assert!(status.success(), "{stdout}");
    let job: std::collections::HashMap<String, String> = conn.hgetall("job:long").await.unwrap();
    assert_eq!(job["status"], "failed", "{job:?}");
    assert_eq!(job["retry_count"], "1", "{job:?}");
    let permanent: bool = conn
        .exists("worker:failure:step-id:long:permanent")
        .await
        .unwrap();
    assert!(permanent);
    let active: usize = conn.hlen(format!("jobs:active:{worker_id}")).await.unwrap();
    assert_eq!(active, 0);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("worker:{worker_id}"))
        .arg(format!("worker:{worker_id}:heartbeat"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "keys left behind: {stdout}");
}
