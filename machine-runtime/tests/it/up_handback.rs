//! No job lost on stop or restart, end to end with real parts: a redis-server with the test
//! `findMatchingJob`, machines (`machine-runtime up`) each running the simulation service and one
//! worker of the stand-in bundle (node), and a simulation job longer than the worker's
//! `kill_timeout`. The busy worker is killed at its deadline and its job handed back: `pending`,
//! then completed by another machine (or by the restarted worker), never `failed`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::{Value, json};

use crate::job_queue::{DEADLINE, NewJob, Tap, bundle_dir, load_job_matching, push_job};
use crate::redis_server::RedisServer;
use crate::up_support::{
    Runtime, free_port, http_request, runtime_inside, signal_inside, wait_for,
};

const TOKEN: &str = "handback-control-token-3e9a";

/// A machine: the simulation service and one simulation-websocket worker (app `sim-worker`,
/// `kill_timeout` 1.5 s) of the stand-in bundle, reporting to `redis`.
fn machine(redis: &RedisServer, machine_id: &str) -> Runtime {
    machine_in(redis, machine_id, &[])
}

/// [`machine`] started through `wrapper` (e.g. `unshare` for a PID namespace of its own).
fn machine_in(redis: &RedisServer, machine_id: &str, wrapper: &[&str]) -> Runtime {
    let port = free_port();
    let url = redis.url();
    let worker_env = json!({
        "WORKER_ID": worker_id(machine_id), "MACHINE_ID": machine_id,
        "HUB_REDIS_URL": url, "WORKERS": "simulation-websocket", "CONNECTORS": "simulation-websocket",
        "UNIFIED_MACHINE_STATUS": "true", "NODE_ENV": "production", "POLL_INTERVAL_MS": "100",
        "SIMULATION_WEBSOCKET_URL": format!("ws://127.0.0.1:{port}"),
    });
    Runtime::start_with(
        json!({"apps": [
            {"name": "simulation-gpu0", "script": "machine-simulate",
             "args": ["--port", port.to_string()], "machine_role": "service",
             "machine_readiness": {"kind": "http", "url": format!("http://127.0.0.1:{port}/health"), "interval_ms": 100}},
            {"name": "sim-worker", "script": "redis-direct-worker.js", "interpreter": "node",
             "cwd": bundle_dir(), "env": worker_env, "kill_timeout": "1500ms",
             "machine_wait_for": ["simulation-gpu0"]},
        ]}),
        &[
            ("HUB_REDIS_URL", url.as_str()),
            ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "1"),
            ("MACHINE_CONTROL_TOKEN", TOKEN),
        ],
        wrapper,
    )
}

fn worker_id(machine_id: &str) -> String {
    format!("{machine_id}-worker-simulation-websocket-0")
}

/// A simulation job of about 6 s: longer than the workers' 1.5 s `kill_timeout`.
async fn push_long_job(conn: &mut redis::aio::MultiplexedConnection, id: &str) {
    push_job(
        conn,
        &NewJob::new(
            id,
            "simulation",
            json!({"steps": 12, "processing_time_ms": 6000, "prompt": "long"}),
        ),
    )
    .await;
}

/// Every `status` a job goes through, read every 10 ms by a task of its own, in order, each once
/// per change.
struct StatusLog {
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusLog {
    async fn start(redis: &RedisServer, job: &str) -> Self {
        let mut conn = redis.conn().await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let key = format!("job:{job}");
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let status: Option<String> = conn.hget(&key, "status").await.unwrap_or(None);
                if let Some(status) = status {
                    let mut log = log.lock().unwrap();
                    if log.last() != Some(&status) {
                        log.push(status);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        StatusLog { seen, task }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// The statuses seen once the last one is `last` (the log's own reads lag the test's).
    async fn seen_until(&self, last: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let seen = self.seen();
            if seen.last().map(String::as_str) == Some(last) {
                return seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{last} never logged: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for StatusLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What each test starts with: a redis-server with the test `findMatchingJob`, a connection, taps on
/// `job_failed` and on machine `machine_id`'s worker events, and the status log of `job`.
struct Scene {
    redis: RedisServer,
    conn: redis::aio::MultiplexedConnection,
    failures: Tap,
    events: Tap,
    log: StatusLog,
}

impl Scene {
    async fn start(machine_id: &str, job: &str) -> Scene {
        let redis = RedisServer::start();
        let mut conn = redis.conn().await;
        load_job_matching(&mut conn).await;
        let failures = Tap::start(&redis.url(), &["job_failed"]).await;
        let events = Tap::start(&redis.url(), &[&format!("machine:{machine_id}:worker:*")]).await;
        let log = StatusLog::start(&redis, job).await;
        Scene {
            redis,
            conn,
            failures,
            events,
            log,
        }
    }
}

/// Polls until the job's status is `want` (for `completed`, until it is in `jobs:completed` too);
/// panics with the job, the statuses seen and the machines' output at the deadline.
async fn wait_status(
    conn: &mut redis::aio::MultiplexedConnection,
    job: &str,
    want: &str,
    log: &StatusLog,
    machines: &[&Runtime],
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let status: Option<String> = conn.hget(format!("job:{job}"), "status").await.unwrap();
        let settled = want != "completed" || conn.hexists("jobs:completed", job).await.unwrap();
        if status.as_deref() == Some(want) && settled {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let hash: HashMap<String, String> = conn.hgetall(format!("job:{job}")).await.unwrap();
            let outputs: Vec<String> = machines.iter().map(|m| m.output()).collect();
            panic!(
                "job {job} did not reach {want}: {hash:?}\nstatuses seen: {:?}\n{}",
                log.seen(),
                outputs.join("\n--- next machine ---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The job was never failed: no `failed` status seen, not in `jobs:failed`, no failure fields,
/// its retry count untouched, no `job_failed` message for it.
async fn assert_never_failed(
    conn: &mut redis::aio::MultiplexedConnection,
    job: &str,
    log: &StatusLog,
    failures: &mut Tap,
) {
    let seen = log.seen();
    assert!(
        !seen.iter().any(|s| s == "failed"),
        "statuses seen: {seen:?}"
    );
    let failed: bool = conn.hexists("jobs:failed", job).await.unwrap();
    assert!(!failed, "{job} is in jobs:failed");
    let hash: HashMap<String, String> = conn.hgetall(format!("job:{job}")).await.unwrap();
    assert!(!hash.contains_key("failed_at"), "{hash:?}");
    assert!(!hash.contains_key("last_failed_worker"), "{hash:?}");
    assert_eq!(hash["retry_count"], "0", "{hash:?}");
    while let Some((_, message)) = failures.next_within(Duration::from_millis(200)).await {
        assert_ne!(message["job_id"], job, "a job_failed message: {message}");
    }
}

/// The next `job_handed_back` event on `tap`.
async fn next_handed_back(tap: &mut Tap, machines: &[&Runtime]) -> (String, Value) {
    loop {
        let Some((channel, event)) = tap.next_within(DEADLINE).await else {
            let outputs: Vec<String> = machines.iter().map(|m| m.output()).collect();
            panic!("no job_handed_back event\n{}", outputs.join("\n---\n"));
        };
        if event["event_type"] == "job_handed_back" {
            return (channel, event);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_mid_job_hands_the_job_back_and_another_machine_completes_it() {
    let job = "handback-job-stop";
    let Scene {
        redis,
        mut conn,
        mut failures,
        mut events,
        log,
    } = Scene::start("handback-a", job).await;
    let mut a = tokio::task::block_in_place(|| machine(&redis, "handback-a"));
    push_long_job(&mut conn, job).await;
    wait_status(&mut conn, job, "in_progress", &log, &[&a]).await;

    a.signal(libc::SIGTERM);
    // Machine a hands the job back and exits; nothing else could have claimed it meanwhile.
    wait_status(&mut conn, job, "pending", &log, &[&a]).await;
    let status = tokio::task::block_in_place(|| a.wait_exit());
    assert_eq!(status.code(), Some(0), "{}", a.output());
    let out = a.output();
    assert!(
        out.contains(&format!(
            "sim-worker is still busy with job {job} after its kill_timeout 1.5s; killing it"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "handed job {job} back to the queue: it was in_progress, now pending in jobs:pending"
        )),
        "{out}"
    );
    let (channel, event) = next_handed_back(&mut events, &[&a]).await;
    assert_eq!(
        channel,
        format!("machine:handback-a:worker:{}", worker_id("handback-a"))
    );
    assert_eq!(event["data"]["job_id"], job, "{event}");
    let hash: HashMap<String, String> = conn.hgetall(format!("job:{job}")).await.unwrap();
    assert_eq!(hash["worker_id"], "", "{hash:?}");
    let active: usize = conn
        .hlen(format!("jobs:active:{}", worker_id("handback-a")))
        .await
        .unwrap();
    assert_eq!(active, 0);

    // Another machine takes it from the queue and completes it.
    let b = tokio::task::block_in_place(|| machine(&redis, "handback-b"));
    wait_status(&mut conn, job, "completed", &log, &[&a, &b]).await;
    let hash: HashMap<String, String> = conn.hgetall(format!("job:{job}")).await.unwrap();
    assert_eq!(hash["worker_id"], worker_id("handback-b"), "{hash:?}");
    // Pushed pending, run, pending again (handed back), then run elsewhere to completion.
    let seen = log.seen_until("completed").await;
    let after = |from: usize, status: &str| {
        seen[from..]
            .iter()
            .position(|s| s == status)
            .map(|at| from + at)
            .unwrap_or_else(|| panic!("no {status} after position {from}: {seen:?}"))
    };
    let ran = after(0, "in_progress");
    let handed_back = after(ran, "pending");
    after(handed_back, "completed");
    assert_never_failed(&mut conn, job, &log, &mut failures).await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_busy_worker_hands_its_job_back_and_the_restarted_worker_completes_it() {
    let job = "handback-job-restart";
    let Scene {
        redis,
        mut conn,
        mut failures,
        mut events,
        log,
    } = Scene::start("handback-r", job).await;
    let rt = tokio::task::block_in_place(|| machine(&redis, "handback-r"));
    push_long_job(&mut conn, job).await;
    wait_status(&mut conn, job, "in_progress", &log, &[&rt]).await;

    let (code, body, raw) = tokio::task::block_in_place(|| {
        http_request(
            rt.health_port(),
            "POST",
            "/restart/service?service=sim-worker",
            &[&format!("Authorization: Bearer {TOKEN}")],
        )
    });
    assert_eq!(code, 202, "{raw}");
    assert_eq!(body["restarting"], "sim-worker", "{body}");

    // Killed at its deadline, its job handed back (the event goes out with the status change).
    let (_, event) = next_handed_back(&mut events, &[&rt]).await;
    assert_eq!(event["data"]["job_id"], job, "{event}");
    assert_eq!(event["data"]["previous_status"], "in_progress", "{event}");
    assert!(
        event["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("when it was restarted"),
        "{event}"
    );
    // Then started again, and the new process takes the job and completes it.
    wait_status(&mut conn, job, "completed", &log, &[&rt]).await;
    // The new process can complete the job before the runtime's lines about the restart reach the
    // test: each is waited for.
    let lines = [
        format!("sim-worker is busy with job {job}; the restart waits up to its kill_timeout 1.5s"),
        format!(
            "sim-worker is still busy with job {job} after its kill_timeout 1.5s; killing it (SIGKILL to its process group"
        ),
        "sim-worker restarting on request".to_owned(),
    ];
    tokio::task::block_in_place(|| {
        wait_for(
            "the runtime's lines about the restart",
            || rt.output(),
            || {
                let out = rt.output();
                lines.iter().all(|l| out.contains(l)).then_some(())
            },
        )
    });
    let seen = log.seen_until("completed").await;
    assert!(
        seen.iter().filter(|s| *s == "in_progress").count() == 2,
        "the job ran twice (killed, then again): {seen:?}"
    );
    let app = tokio::task::block_in_place(|| rt.app_status("sim-worker"));
    assert_eq!(app["restarts"], 1, "{app}");
    assert_never_failed(&mut conn, job, &log, &mut failures).await;
    drop(rt);
}

/// The host pids of the runtime `rt` runs as PID 1 ([`crate::up_support::AS_PID_1`]) and of its apps, once it has
/// `count` of them.
fn inside(rt: &Runtime, count: usize) -> Vec<u32> {
    let runtime = runtime_inside(rt);
    wait_for(
        "the runtime's apps in the PID namespace",
        || rt.output(),
        || {
            let apps = machine_runtime::procstat::children(runtime);
            (apps.len() == count).then(|| [vec![runtime], apps].concat())
        },
    )
}

/// A machine killed outright as a container is (`docker kill`: SIGKILL to the runtime, PID 1 of its
/// namespace) while its worker runs a job: its apps die with it in the same instant, and none of them
/// touches the job on the way down (a worker that outlived its simulation service by a few
/// milliseconds saw the service's socket close and failed the job for a retry). The job stays
/// `in_progress`, held by the worker, until the machine's comeback under the same id hands it back and
/// runs it to completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_leaves_the_job_to_the_comeback() {
    if !crate::up_support::pid_namespace_available(
        "a_killed_container_leaves_the_job_to_the_comeback",
    ) {
        return;
    }
    let job = "handback-job-kill";
    let Scene {
        redis,
        mut conn,
        mut failures,
        mut events,
        log,
    } = Scene::start("handback-k", job).await;
    let mut a = tokio::task::block_in_place(|| {
        machine_in(&redis, "handback-k", &crate::up_support::AS_PID_1)
    });
    push_long_job(&mut conn, job).await;
    wait_status(&mut conn, job, "in_progress", &log, &[&a]).await;
    let processes = tokio::task::block_in_place(|| inside(&a, 2));

    // SAFETY: kill(2) on the runtime inside: docker kill's SIGKILL to the container's PID 1.
    unsafe { libc::kill(processes[0] as i32, libc::SIGKILL) };
    tokio::task::block_in_place(|| {
        a.wait_exit();
        wait_for(
            "the killed machine's processes to be gone",
            || format!("{processes:?}\n{}", a.output()),
            || {
                processes
                    .iter()
                    .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
                    .then_some(())
            },
        )
    });
    // Nothing of the dead machine touched the job.
    let hash: HashMap<String, String> = conn.hgetall(format!("job:{job}")).await.unwrap();
    let seen = log.seen();
    assert_eq!(
        hash["status"], "in_progress",
        "{hash:?}\nstatuses seen: {seen:?}"
    );
    assert_eq!(hash["worker_id"], worker_id("handback-k"), "{hash:?}");
    assert_eq!(hash["retry_count"], "0", "{hash:?}");

    // The comeback (PID 1 again, so the lease its killed run left is taken over at once) hands it
    // back, and its worker completes it.
    let mut b = tokio::task::block_in_place(|| {
        machine_in(&redis, "handback-k", &crate::up_support::AS_PID_1)
    });
    let (_, event) = next_handed_back(&mut events, &[&a, &b]).await;
    assert_eq!(event["data"]["job_id"], job, "{event}");
    assert_eq!(event["data"]["previous_status"], "in_progress", "{event}");
    wait_status(&mut conn, job, "completed", &log, &[&a, &b]).await;
    assert_never_failed(&mut conn, job, &log, &mut failures).await;
    tokio::task::block_in_place(|| signal_inside(&mut b, libc::SIGKILL));
}
