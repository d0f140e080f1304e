//! A fleet on a real engine: `generated/full-local/stack.yaml` deployed with `docker stack deploy` on the
//! local engine's Swarm, [`REPLICAS`] machines against one broker, proving what issue 23 asks of a fleet:
//!
//! - each replica reports under its own machine id (`full-local-<slot>`), none clashing;
//! - jobs pushed the way the API does (`job:<id>` + `ZADD jobs:pending`, claimed through the
//!   `findMatchingJob` stand-in) spread across every replica and all complete;
//! - a replica killed outright (`docker kill`, SIGKILL: nothing inside can react) comes back in its slot,
//!   under the same id, and hands back the jobs its killed run held (a `job_handed_back` event from it);
//!   they complete; jobs lost: 0;
//! - a rolling update (`docker service update --force`, the stack's stop-first `update_config`) while jobs
//!   keep coming completes with no job lost or failed.
//!
//! The broker is a redis-server this test starts on the host, bound to loopback and to what
//! `host.docker.internal:host-gateway` resolves to in a container (the default bridge's gateway); the stack's own
//! Redis is scaled to 0 by the test's override file, the only other change to the generated file
//! (`HUB_REDIS_*`, the replica count, the Redis image that needs no registry, and the machine image: the
//! test-private tag `docker.rs` builds without a registry, never the user's `machine-runtime:full-local`).
//! The test leaves the engine as it found it: the stack, its network and the test image are removed, and the Swarm is left (and its `docker_gwbridge`
//! removed) when the test initialised it.
//! Skipped only with `MACHINE_SKIP_DOCKER_TEST=1` (CI never sets it). Figures are printed, not asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::Value;

use crate::docker::{REDIS_IMAGE, docker, must, repo, run};
use crate::up_support::wait_for_within;

/// Machines in the fleet.
const REPLICAS: u32 = 3;
/// Simulation workers per machine (full-local: `simulation-websocket:4:gpu`).
const WORKERS: u32 = 4;
/// The stack's name (its services are `<stack>_machine`, `<stack>_redis`).
const STACK: &str = "machine-swarm-test";
/// The bridge `docker swarm init` creates for the tasks' traffic out of their overlay networks.
const GWBRIDGE: &str = "docker_gwbridge";
/// How long one phase may take before the test fails naming what did not happen.
const PATIENCE: Duration = Duration::from_secs(120);

/// The Swarm stack, and the Swarm itself when this test initialised it: removed on drop.
struct Fleet {
    /// This test ran `docker swarm init`.
    initialised: bool,
    /// `docker swarm init` made the `docker_gwbridge` network (it outlives `docker swarm leave`).
    made_gwbridge: bool,
}

impl Fleet {
    fn service(&self) -> String {
        format!("{STACK}_machine")
    }

    /// The running container of a slot's current task, if any.
    fn container_of(&self, slot: u32) -> Option<String> {
        let out = must(docker().args([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={}", self.service()),
            "--filter",
            &format!("name={}.{slot}.", self.service()),
        ]))
        .stdout;
        out.lines().next().map(str::to_owned)
    }

    fn logs(&self) -> String {
        let ran = run(docker().args(["service", "logs", "--raw", "--tail", "80", &self.service()]));
        format!("{}\n{}", ran.stdout, ran.stderr)
    }

    fn tasks(&self) -> String {
        run(docker().args(["service", "ps", "--no-trunc", &self.service()])).stdout
    }

    /// Whatever of the stack is left: services, networks, containers.
    fn leftovers() -> Vec<String> {
        let label = format!("label=com.docker.stack.namespace={STACK}");
        let mut left = Vec::new();
        for what in [
            vec!["service", "ls", "-q", "--filter", &label],
            vec!["network", "ls", "-q", "--filter", &label],
            vec!["ps", "-aq", "--filter", &label],
        ] {
            left.extend(
                run(docker().args(&what))
                    .stdout
                    .lines()
                    .map(|l| format!("{} {l}", what[0])),
            );
        }
        left
    }

    /// `docker stack rm`, then waits (bounded) until nothing of it is left.
    fn remove(&self) -> Vec<String> {
        let _ = run(docker().args(["stack", "rm", STACK]));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = Fleet::leftovers();
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.remove();
        if self.initialised {
            let _ = run(docker().args(["swarm", "leave", "--force"]));
            if self.made_gwbridge {
                let _ = run(docker().args(["network", "rm", GWBRIDGE]));
            }
        }
    }
}

/// The engine's Swarm state (`inactive`, `active`, ...).
fn swarm_state() -> String {
    must(docker().args(["info", "--format", "{{.Swarm.LocalNodeState}}"]))
        .stdout
        .trim()
        .to_owned()
}

/// Messages on channels matching `pattern` (PSUBSCRIBE), on their own thread.
fn tap(url: &str, pattern: &'static str) -> mpsc::Receiver<Value> {
    let client = redis::Client::open(url).unwrap();
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut conn = client.get_connection().expect("the test Redis");
        let mut pubsub = conn.as_pubsub();
        pubsub.psubscribe(pattern).expect("psubscribe");
        let _ = ready_tx.send(());
        while let Ok(message) = pubsub.get_message() {
            let payload: String = message.get_payload().unwrap_or_default();
            let value = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
            if tx.send(value).is_err() {
                return;
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the test subscriber did not subscribe");
    rx
}

/// The worker ids of slot `slot`'s machine.
fn workers_of(slot: u32) -> Vec<String> {
    (0..WORKERS)
        .map(|i| format!("full-local-{slot}-worker-simulation-websocket-{i}"))
        .collect()
}

/// The machine id of a worker id (`<machine>-worker-<connector>-<index>`).
fn machine_of(worker_id: &str) -> String {
    worker_id
        .split_once("-worker-")
        .map_or_else(String::new, |(m, _)| m.to_owned())
}

/// Pushes a simulation job the way the API does (on a thread of its own runtime).
fn push(url: &str, id: &str, processing_ms: u64) {
    let rt = crate::docker::tokio_runtime();
    rt.block_on(async {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let payload =
            serde_json::json!({"steps": 2, "processing_time_ms": processing_ms, "prompt": id});
        crate::job_queue::push_job(
            &mut conn,
            &crate::job_queue::NewJob::new(id, "simulation", payload),
        )
        .await;
    });
}

/// For a failure message: each job's hash, the worker failure records that name it (a worker that
/// failed it and put it back for a retry writes one), and the events seen about it.
fn job_trace(
    conn: &mut redis::Connection,
    jobs: &[String],
    events: &[serde_json::Value],
) -> String {
    let mut out = String::from("--- the jobs in Redis now");
    for id in jobs {
        let hash: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("job:{id}"))
            .query(conn)
            .unwrap_or_default();
        let failures: Vec<String> = redis::cmd("KEYS")
            .arg(format!("worker:failure:*{id}*"))
            .query(conn)
            .unwrap_or_default();
        out.push_str(&format!(
            "\njob:{id} {hash:?}\nfailure records: {failures:?}"
        ));
    }
    out.push_str("\n--- events about them (any machine)");
    for event in events {
        out.push_str(&format!("\n{event}"));
    }
    out
}

/// Each job's `status` and `worker_id`.
fn states(conn: &mut redis::Connection, jobs: &[String]) -> BTreeMap<String, (String, String)> {
    jobs.iter()
        .map(|id| {
            let (status, worker): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(format!("job:{id}"))
                .arg("status")
                .arg("worker_id")
                .query(conn)
                .unwrap();
            (
                id.clone(),
                (status.unwrap_or_default(), worker.unwrap_or_default()),
            )
        })
        .collect()
}

/// Jobs completed (status `completed` and in `jobs:completed`), failed, and neither.
fn tally(conn: &mut redis::Connection, jobs: &[String]) -> (usize, usize, Vec<String>) {
    let mut completed = 0;
    let mut failed = 0;
    let mut open = Vec::new();
    for (id, (status, _)) in states(conn, jobs) {
        let settled: bool = conn.hexists("jobs:completed", &id).unwrap();
        match status.as_str() {
            "completed" if settled => completed += 1,
            "failed" => failed += 1,
            _ => open.push(id),
        }
    }
    (completed, failed, open)
}

/// Waits until every job is completed or failed; returns (failed, lost = still open at the deadline).
fn settle(conn: &mut redis::Connection, jobs: &[String], fleet: &Fleet) -> (usize, Vec<String>) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, failed, open) = tally(conn, jobs);
        if open.is_empty() || Instant::now() > deadline {
            if !open.is_empty() {
                eprintln!(
                    "still open: {:?}\n{}\n{}",
                    states(conn, &open),
                    fleet.tasks(),
                    fleet.logs()
                );
            }
            return (failed, open);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_swarm_fleet_spreads_jobs_survives_a_killed_replica_and_a_rolling_update() {
    let _one = crate::docker::one_project();
    if crate::docker::engine().is_none() {
        return;
    }
    let started = Instant::now();
    crate::docker::prepare();
    // The image under the docker test's own tag (never the user's `machine-runtime:full-local`), removed
    // when `project` goes, after the stack (declared later, dropped first).
    let project = crate::docker::Project::new("full-local");
    project.build(true);
    let build_time = started.elapsed();

    let had_gwbridge = run(docker().args(["network", "inspect", GWBRIDGE])).ok;
    let initialised = match swarm_state().as_str() {
        "inactive" => {
            must(docker().args(["swarm", "init", "--advertise-addr", "127.0.0.1"]));
            true
        }
        "active" => false,
        other => panic!("the engine's Swarm is {other:?}; expected inactive or active"),
    };
    let fleet = Fleet {
        initialised,
        made_gwbridge: initialised && !had_gwbridge,
    };
    // Leftovers of an interrupted run.
    let left = fleet.remove();
    assert!(
        left.is_empty(),
        "an earlier run's stack is still there: {left:?}"
    );

    let gateway = crate::docker::host_gateway();
    let redis = crate::redis_server::RedisServer::start_with(&[
        "--bind",
        "127.0.0.1",
        &gateway,
        "--protected-mode",
        "no",
    ]);
    let url = redis.url();
    crate::docker::tokio_runtime().block_on(async {
        let mut conn = redis.conn().await;
        crate::job_queue::load_job_matching(&mut conn).await;
    });
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let events = tap(&url, "machine:*:worker:*");

    // The generated stack file as is, plus the test's override.
    let broker = format!("redis://host.docker.internal:{}", redis.port());
    let override_text = format!(
        "services:\n  machine:\n    image: \"{}\"\n    environment:\n      - \"HUB_REDIS_URL={broker}\"\n      - \"HUB_REDIS_HOST=host.docker.internal\"\n      - \"HUB_REDIS_PORT={}\"\n    deploy:\n      replicas: {REPLICAS}\n  redis:\n    image: \"{REDIS_IMAGE}\"\n    deploy:\n      replicas: 0\n",
        project.image(),
        redis.port()
    );
    let mut override_file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("an override file");
    std::io::Write::write_all(&mut override_file, override_text.as_bytes()).unwrap();
    let stack_file = repo().join("generated/full-local/stack.yaml");
    let deployed = Instant::now();
    must(
        docker()
            .args(["stack", "deploy", "--resolve-image", "never", "-c"])
            .arg(&stack_file)
            .arg("-c")
            .arg(override_file.path())
            .arg(STACK)
            .env("WORKER_WEBSOCKET_AUTH_TOKEN", "dummy-token"),
    );

    // Every replica up under its own id: each slot's four workers registered in the broker.
    let all_workers: Vec<String> = (1..=REPLICAS).flat_map(workers_of).collect();
    wait_for_within(
        PATIENCE,
        "every replica's workers registering",
        || format!("{}\n{}", fleet.tasks(), fleet.logs()),
        || {
            let n: usize = all_workers
                .iter()
                .filter(|w| conn.exists::<_, bool>(format!("worker:{w}")).unwrap())
                .count();
            (n == all_workers.len()).then_some(())
        },
    );
    let up_time = deployed.elapsed();
    let leases: Vec<String> = conn.keys("machine:lease:*").unwrap();
    let leases: BTreeSet<String> = leases.into_iter().collect();
    let want: BTreeSet<String> = (1..=REPLICAS)
        .map(|s| format!("machine:lease:full-local-{s}"))
        .collect();
    assert_eq!(leases, want, "one id lease per replica, no clash");

    // Phase 1: spread. Three jobs per worker at once.
    let spread: Vec<String> = (0..REPLICAS * WORKERS * 3)
        .map(|i| format!("swarm-spread-{i}"))
        .collect();
    let phase = Instant::now();
    for id in &spread {
        push(&url, id, 800);
    }
    let (failed, lost) = settle(&mut conn, &spread, &fleet);
    let spread_time = phase.elapsed();
    let by_machine: BTreeMap<String, usize> =
        states(&mut conn, &spread)
            .values()
            .fold(BTreeMap::new(), |mut m, (_, w)| {
                *m.entry(machine_of(w)).or_default() += 1;
                m
            });
    println!(
        "swarm spread: {} jobs, jobs lost: {}, failed: {failed}, per machine {by_machine:?}",
        spread.len(),
        lost.len()
    );
    assert!(
        lost.is_empty() && failed == 0,
        "spread phase: lost {lost:?}, failed {failed}"
    );
    let machines: BTreeSet<&String> = by_machine.keys().collect();
    assert_eq!(
        machines.len(),
        REPLICAS as usize,
        "jobs did not spread across all {REPLICAS} replicas: {by_machine:?}"
    );

    // Phase 2: a replica killed with a job in flight comes back and hands it back. Jobs go in one at a
    // time until one runs on the victim, so the other replicas keep idle workers to take it over.
    let victim = 2;
    let victim_id = format!("full-local-{victim}");
    let mut kill: Vec<String> = Vec::new();
    let mut in_flight: Vec<String> = Vec::new();
    for i in 0..REPLICAS * WORKERS {
        let id = format!("swarm-kill-{i}");
        push(&url, &id, 6000);
        kill.push(id.clone());
        let mut worker = String::new();
        wait_for_within(
            PATIENCE,
            &format!("{id} in progress"),
            || format!("{}\n{}", fleet.tasks(), fleet.logs()),
            || {
                let (status, w) = states(&mut conn, std::slice::from_ref(&id))
                    .remove(&id)
                    .unwrap_or_default();
                worker = w;
                (status == "in_progress").then_some(())
            },
        );
        if machine_of(&worker) == victim_id {
            in_flight.push(id);
            break;
        }
    }
    assert!(
        !in_flight.is_empty(),
        "none of {} jobs ran on {victim_id}: {:?}",
        kill.len(),
        states(&mut conn, &kill)
    );
    let container = fleet
        .container_of(victim)
        .unwrap_or_else(|| panic!("no container for slot {victim}\n{}", fleet.tasks()));
    let phase = Instant::now();
    must(docker().args(["kill", &container]));
    // The handed-back events of the comeback, from the same machine id.
    let mut handed_back: BTreeSet<String> = BTreeSet::new();
    // Every event that names an in-flight job, from any machine: what the failure message shows.
    let mut about_them: Vec<serde_json::Value> = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while !in_flight.iter().all(|j| handed_back.contains(j)) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| {
                panic!(
                    "the killed replica's jobs {in_flight:?} were not handed back (got {handed_back:?})\n{}\n{}\n{}",
                    job_trace(&mut conn, &in_flight, &about_them),
                    fleet.tasks(),
                    fleet.logs()
                )
            });
        let Ok(event) = events.recv_timeout(left) else {
            continue;
        };
        let job = event["data"]["job_id"].as_str().unwrap_or("").to_owned();
        if in_flight.contains(&job) {
            about_them.push(event.clone());
        }
        if event["event_type"] == "job_handed_back" && event["machine_id"] == victim_id.as_str() {
            handed_back.insert(job);
        }
    }
    let comeback_time = phase.elapsed();
    let replaced = fleet.container_of(victim);
    assert!(
        replaced.as_deref().is_some_and(|c| c != container),
        "slot {victim} has no new container after the kill: {replaced:?}\n{}",
        fleet.tasks()
    );
    let (failed, lost) = settle(&mut conn, &kill, &fleet);
    let finishers: BTreeMap<String, String> = states(&mut conn, &in_flight)
        .into_iter()
        .map(|(id, (_, w))| (id, w))
        .collect();
    println!(
        "swarm kill: replica {victim_id} killed with {} job(s) in flight, handed back by its comeback after {:.1} s, completed by {finishers:?}; jobs lost: {}, failed: {failed}",
        in_flight.len(),
        comeback_time.as_secs_f64(),
        lost.len()
    );
    assert!(
        lost.is_empty() && failed == 0,
        "kill phase: lost {lost:?}, failed {failed}"
    );

    // Phase 3: a rolling update while jobs keep coming.
    let before: Vec<Option<String>> = (1..=REPLICAS).map(|s| fleet.container_of(s)).collect();
    while events.try_recv().is_ok() {}
    let update_jobs: Vec<String> = (0..60).map(|i| format!("swarm-update-{i}")).collect();
    let pusher = {
        let url = url.clone();
        let jobs = update_jobs.clone();
        std::thread::spawn(move || {
            for id in &jobs {
                push(&url, id, 1000);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let phase = Instant::now();
    let updated = run(docker().args([
        "service",
        "update",
        "--force",
        "--detach=false",
        "--quiet",
        &fleet.service(),
    ]));
    let update_time = phase.elapsed();
    pusher.join().expect("the job pusher");
    assert!(
        updated.ok,
        "the rolling update failed: {}\n{}",
        updated.stdout, updated.stderr
    );
    let state = must(docker().args([
        "service",
        "inspect",
        "--format",
        "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
        &fleet.service(),
    ]))
    .stdout;
    assert_eq!(
        state.trim(),
        "completed",
        "the update did not complete\n{}",
        fleet.tasks()
    );
    let after: Vec<Option<String>> = (1..=REPLICAS).map(|s| fleet.container_of(s)).collect();
    for (slot, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            b.is_some() && a.is_some() && a != b,
            "slot {} was not replaced by the update: {b:?} → {a:?}\n{}",
            slot + 1,
            fleet.tasks()
        );
    }
    let (failed, lost) = settle(&mut conn, &update_jobs, &fleet);
    let handed_back = events
        .try_iter()
        .filter(|e| e["event_type"] == "job_handed_back")
        .count();
    println!(
        "swarm rolling update: {} jobs pushed during it, {handed_back} handed back by a draining machine, jobs lost: {}, failed: {failed}",
        update_jobs.len(),
        lost.len()
    );
    assert!(
        lost.is_empty() && failed == 0,
        "rolling update: lost {lost:?}, failed {failed}\n{}",
        fleet.logs()
    );

    let phase = Instant::now();
    let left = fleet.remove();
    assert!(left.is_empty(), "docker stack rm left {left:?}");
    println!(
        "swarm figures ({REPLICAS} replicas of full-local): build {:.1} s, deploy to all workers registered {:.1} s, spread phase {:.1} s, kill to hand-back {:.1} s, rolling update {:.1} s, stack rm {:.1} s, total {:.1} s",
        build_time.as_secs_f64(),
        up_time.as_secs_f64(),
        spread_time.as_secs_f64(),
        comeback_time.as_secs_f64(),
        update_time.as_secs_f64(),
        phase.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
