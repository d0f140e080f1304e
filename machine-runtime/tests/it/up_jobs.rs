//! End to end, all real: a redis-server with the test `findMatchingJob` loaded, `machine-runtime up
//! --profile full-local` on two fake GPUs (two simulation services, four simulation-websocket workers
//! of the stand-in bundle run by node), and jobs pushed the way the API pushes them. Every job must be
//! completed by a worker whose GPU is the GPU of the service that ran it, with progress, the machine's
//! status showing the worker busy then idle, and `job_completed` on the worker's machine channel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::{Value, json};

use crate::job_queue::{DEADLINE, NewJob, Tap, load_job_matching, push_job, wait_job_status};
use crate::redis_server::RedisServer;
use crate::up_support::{BIN, Runtime};

const JOBS: usize = 8;

/// The UUIDs of the fake GPUs, by index, as the runtime sees them.
fn fake_gpu_uuids() -> Vec<String> {
    let out = std::process::Command::new(BIN)
        .args(["gpus", "--format", "json"])
        .env("MACHINE_FAKE_GPUS", "2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let inventory: Value = serde_json::from_slice(&out.stdout).unwrap();
    inventory["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["uuid"].as_str().unwrap().to_owned())
        .collect()
}

/// One variable of a live process's environment.
fn process_env(pid: u64, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|entry| {
        let entry = String::from_utf8_lossy(entry);
        entry
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::to_owned)
    })
}

/// A secret in the machine's environment, long enough for the worker to show 8 characters of it.
const HF_TOKEN: &str = "hf_e2eSecretValue9876";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_local_completes_simulation_jobs_end_to_end() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    load_job_matching(&mut conn).await;
    let machine = "e2e-jobs";
    let mut status_tap = Tap::start(&redis.url(), &[&format!("machine:status:{machine}")]).await;
    let mut worker_tap = Tap::start(
        &redis.url(),
        &[
            &format!("machine:{machine}:worker:*"),
            "update_job_progress",
        ],
    )
    .await;
    let url = redis.url();
    let rt = tokio::task::block_in_place(|| {
        Runtime::start_profile(
            "full-local",
            &[
                ("MACHINE_FAKE_GPUS", "2"),
                ("MACHINE_ID", machine),
                ("HUB_REDIS_URL", url.as_str()),
                ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "1"),
                ("WORKER_POLL_INTERVAL_MS", "200"),
                // The services' defaults for jobs whose config names no steps.
                ("SIMULATION_STEP_COUNT", "3"),
                ("SIMULATION_STEP_DELAY_MS", "100"),
                // The worker shows it at its start as `hf_e***9876` (contract: its start-up report).
                ("HF_TOKEN", HF_TOKEN),
            ],
        )
    });
    let workers: Vec<String> = (0..4)
        .map(|i| format!("{machine}-worker-simulation-websocket-{i}"))
        .collect();

    // Ready: every worker connected and idle in one status message; the structure pins them.
    let deadline = Instant::now() + DEADLINE;
    let structure = loop {
        let message = status_tap
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
            .map(|(_, m)| m);
        let Some(message) = message else {
            panic!(
                "no status message with all four workers idle\n--- runtime output ---\n{}",
                rt.output()
            );
        };
        if workers.iter().all(|w| {
            message["status"]["workers"][w]["is_connected"] == true
                && message["status"]["workers"][w]["status"] == "idle"
        }) {
            break message["structure"].clone();
        }
    };
    // Every worker has reported its secrets by now: none of the token reaches the machine's output.
    let output = rt.output();
    assert!(
        output.contains("HF_TOKEN: ***") && !output.contains("hf_e***9876"),
        "the worker's report of HF_TOKEN is not masked:\n{output}"
    );
    let uuids = fake_gpu_uuids();
    let mut gpu_of = HashMap::new();
    for (i, worker) in workers.iter().enumerate() {
        let gpu = structure["workers"][worker]["gpu_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no gpu_id for {worker}: {structure}"));
        // The worker process itself is pinned to that GPU (by UUID).
        let pid = tokio::task::block_in_place(|| {
            rt.app_status(&format!("simulation-websocket-worker-{i}"))["pid"]
                .as_u64()
                .unwrap()
        });
        assert_eq!(
            process_env(pid, "CUDA_VISIBLE_DEVICES").as_deref(),
            Some(uuids[usize::try_from(gpu).unwrap()].as_str()),
            "{worker}"
        );
        gpu_of.insert(worker.clone(), gpu);
    }
    assert_eq!(
        gpu_of.values().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([0, 1])
    );

    // Jobs as the API pushes them; half name their steps, half take the services' defaults.
    let ids: Vec<String> = (0..JOBS).map(|i| format!("e2e-job-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let payload = if i % 2 == 0 {
            json!({"steps": 4, "processing_time_ms": 400, "prompt": format!("job {i}")})
        } else {
            json!({"prompt": format!("job {i}")})
        };
        push_job(&mut conn, &NewJob::new(id, "simulation", payload)).await;
    }
    for id in &ids {
        wait_job_status(&mut conn, id, "completed").await;
    }

    // Each job: completed by one of the machine's workers, on the right GPU, with the right steps.
    let mut by_worker: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let job: HashMap<String, String> = conn.hgetall(format!("job:{id}")).await.unwrap();
        let worker = job["worker_id"].clone();
        let gpu = *gpu_of
            .get(&worker)
            .unwrap_or_else(|| panic!("{id} completed by a stranger: {job:?}"));
        for field in ["assigned_at", "started_at", "completed_at"] {
            assert!(!job[field].is_empty(), "{id} lacks {field}: {job:?}");
        }
        let done: Option<String> = conn.hget("jobs:completed", id).await.unwrap();
        let done: Value = serde_json::from_str(&done.expect("in jobs:completed")).unwrap();
        let results = &done["data"]["results"];
        assert_eq!(
            results["cuda_visible_devices"].as_str(),
            Some(uuids[usize::try_from(gpu).unwrap()].as_str()),
            "{id} ran on another GPU's service than its worker's: {done}"
        );
        assert_eq!(results["steps"], if i % 2 == 0 { 4 } else { 3 }, "{done}");
        let progress: Option<String> = conn
            .hget(format!("job:{id}:progress"), "progress")
            .await
            .unwrap();
        assert_eq!(progress.as_deref(), Some("100"), "{id}");
        let active: usize = conn.hlen(format!("jobs:active:{worker}")).await.unwrap();
        assert_eq!(active, 0, "{worker} still has active jobs");
        by_worker.entry(worker).or_default().push(id.clone());
    }

    // Worker channel: progress for every job, and job_completed on the channel of the worker that did it.
    let mut progress: HashMap<String, Vec<u64>> = HashMap::new();
    let mut completed: HashMap<String, String> = HashMap::new();
    while completed.len() < JOBS {
        let Some((channel, message)) = worker_tap.next_within(DEADLINE).await else {
            panic!("job_completed seen for {completed:?} only");
        };
        if channel == "update_job_progress" {
            let id = message["job_id"].as_str().unwrap_or_default().to_owned();
            progress
                .entry(id)
                .or_default()
                .push(message["progress"].as_u64().unwrap_or(0));
        } else if message["event_type"] == "job_completed" {
            let id = message["data"]["job_id"].as_str().unwrap().to_owned();
            assert_eq!(message["data"]["service_type"], "simulation-websocket");
            let from = channel.rsplit(':').next().unwrap().to_owned();
            assert_eq!(message["worker_id"], from.as_str());
            completed.insert(id, from);
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let steps = &progress[id];
        let expected: &[u64] = if i % 2 == 0 {
            &[0, 25, 50, 75, 100]
        } else {
            &[0, 33, 66, 100]
        };
        assert_eq!(steps, expected, "progress of {id}");
        assert!(
            by_worker[&completed[id]].contains(id),
            "job_completed for {id} on {}'s channel",
            completed[id]
        );
    }

    // The machine's status: each worker that took a job was seen busy with it, then idle.
    let mut seen_busy: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut idle_after: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + DEADLINE;
    while idle_after.len() < by_worker.len() && Instant::now() < deadline {
        let Some((_, message)) = status_tap.next_within(Duration::from_secs(5)).await else {
            break;
        };
        for worker in by_worker.keys() {
            let w = &message["status"]["workers"][worker];
            if w["status"] == "busy" {
                if let Some(job) = w["current_job_id"].as_str() {
                    seen_busy
                        .entry(worker.clone())
                        .or_default()
                        .insert(job.to_owned());
                }
            } else if w["status"] == "idle" && seen_busy.contains_key(worker) {
                idle_after.insert(worker.clone());
            }
        }
    }
    for (worker, jobs) in &by_worker {
        let busy = seen_busy.get(worker).cloned().unwrap_or_default();
        assert!(
            !busy.is_empty() && busy.iter().all(|j| jobs.contains(j)),
            "{worker} did {jobs:?}; status showed it busy with {busy:?}"
        );
        assert!(
            idle_after.contains(worker),
            "{worker} never idle again after busy"
        );
    }
    let pending: usize = conn.zcard("jobs:pending").await.unwrap();
    assert_eq!(pending, 0);
    drop(rt);
}
