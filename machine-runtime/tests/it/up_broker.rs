//! `machine-runtime up` reporting to a real redis-server: what a subscriber on `machine:status:*` sees
//! for a fake-GPU simulation machine (ready, periodic, a worker crash, Ctrl-C), a Redis outage, and
//! the start-up refusals.

use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::broker::{assert_shape, update_type};
use crate::redis_server::RedisServer;
use crate::up_support::{PATIENCE, Runtime, wait_for, wait_line};

/// A blocking subscriber on a pattern, on its own thread, that resubscribes after a redis restart.
pub(crate) struct StatusTap {
    rx: mpsc::Receiver<Value>,
}

impl StatusTap {
    pub(crate) fn start(url: &str, pattern: &str) -> StatusTap {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let client = redis::Client::open(url).unwrap();
        let pattern = pattern.to_owned();
        // Not joined: it ends when the test drops the receiver or its redis-server goes away for good.
        std::thread::spawn(move || {
            let deadline = Instant::now() + PATIENCE * 3;
            while Instant::now() < deadline {
                let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1))
                else {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                let mut pubsub = conn.as_pubsub();
                if pubsub.psubscribe(&pattern).is_err() {
                    continue;
                }
                let _ = ready_tx.send(());
                while let Ok(message) = pubsub.get_message() {
                    let payload: String = message.get_payload().unwrap_or_default();
                    let value = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
                    if tx.send(value).is_err() {
                        return;
                    }
                }
            }
        });
        ready_rx
            .recv_timeout(PATIENCE)
            .expect("the test subscriber did not subscribe");
        StatusTap { rx }
    }

    /// Skips messages until one satisfies `want`; the failure names `what`, the messages seen and
    /// the runtime's output.
    pub(crate) fn next_where(
        &self,
        rt: &Runtime,
        what: &str,
        want: impl Fn(&Value) -> bool,
    ) -> Value {
        crate::up_support::next_where(&self.rx, what, want)
            .unwrap_or_else(|e| panic!("{e}\n--- runtime output ---\n{}", rt.output()))
    }

    /// The very next message.
    pub(crate) fn next(&self, rt: &Runtime) -> Value {
        self.next_where(rt, "any content", |_| true)
    }
}

fn worker_status<'a>(message: &'a Value, worker: &str) -> &'a Value {
    &message["status"]["workers"][worker]
}

fn connected_and_idle(message: &Value, worker: &str) -> bool {
    let w = worker_status(message, worker);
    w["is_connected"] == true && w["status"] == "idle"
}

/// The profile's simulation services listen on fixed ports (8399, 8400), so machines of the baked
/// `full-local` profile run one at a time; hold this while one runs.
static ONE_MACHINE: Mutex<()> = Mutex::new(());

fn one_machine() -> MutexGuard<'static, ()> {
    ONE_MACHINE
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
}

/// A fake-GPU simulation machine: profile `full-local` (4 simulation-websocket workers of the stand-in
/// bundle over 2 GPUs).
fn simulation_machine(redis: &RedisServer, machine: &str, extra: &[(&str, &str)]) -> Runtime {
    let url = redis.url();
    let mut env = vec![
        ("MACHINE_FAKE_GPUS", "2"),
        ("MACHINE_ID", machine),
        ("HUB_REDIS_URL", url.as_str()),
        ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "1"),
    ];
    env.extend_from_slice(extra);
    Runtime::start_profile("full-local", &env)
}

fn worker_id(machine: &str, i: u32) -> String {
    format!("{machine}-worker-simulation-websocket-{i}")
}

/// Publishes a marker on the machine's channel once the runtime has exited: the next message the
/// tap sees must be the marker, so nothing came after `shutdown`.
fn assert_nothing_after(redis: &RedisServer, tap: &StatusTap, rt: &Runtime, machine: &str) {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("machine:status:{machine}"))
        .arg(r#"{"marker":true}"#)
        .query(&mut conn)
        .unwrap();
    let after = tap.next(rt);
    assert_eq!(
        after["marker"], true,
        "a message came after shutdown: {after}"
    );
}

#[test]
fn simulation_machine_reports_ready_periodic_crash_and_shutdown() {
    let _machine = one_machine();
    let redis = RedisServer::start();
    let machine = "sim-report";
    let tap = StatusTap::start(&redis.url(), "machine:status:*");
    let mut rt = simulation_machine(&redis, machine, &[]);
    let health_port = rt.health_port();

    // `initial` first, while the apps are still starting.
    let initial = tap.next(&rt);
    assert_eq!(update_type(&initial), "initial", "{initial}");
    assert_shape(&initial);
    assert_eq!(initial["machine_id"], machine);
    assert_eq!(initial["status"]["machine"]["phase"], "starting");
    assert_eq!(
        initial["health_url"],
        format!("http://localhost:{health_port}/health")
    );

    // Once every app is ready: `machine_ready`, and a `periodic` straight after it.
    let ready = tap.next_where(&rt, "update_type machine_ready", |m| {
        update_type(m) == "machine_ready"
    });
    assert_eq!(ready["status"]["machine"]["phase"], "ready");
    let after_ready = tap.next(&rt);
    assert_eq!(
        update_type(&after_ready),
        "periodic",
        "the message after machine_ready: {after_ready}"
    );

    // Structure: the real WORKER_IDs, each with the GPU the plan pinned it to (round-robin).
    let structure = &after_ready["structure"];
    assert_eq!(structure["gpu_count"], 2);
    assert_eq!(
        structure["capabilities"],
        serde_json::json!(["simulation-websocket"])
    );
    let workers = structure["workers"].as_object().unwrap();
    let mut ids: Vec<&String> = workers.keys().collect();
    ids.sort();
    assert_eq!(
        ids,
        (0..4)
            .map(|i| worker_id(machine, i))
            .collect::<Vec<_>>()
            .iter()
            .collect::<Vec<_>>()
    );
    for i in 0..4 {
        let worker = &workers[&worker_id(machine, i)];
        assert_eq!(worker["gpu_id"], i % 2, "{worker}");
        assert_eq!(
            worker["pm2_name"],
            format!("simulation-websocket-worker-{i}")
        );
        assert_eq!(worker["resource_binding"], "gpu");
        assert_eq!(worker["worker_type"], "simulation-websocket");
        let service =
            &structure["services"][format!("{}.simulation-websocket", worker_id(machine, i))];
        assert_eq!(
            service["pm2_name"],
            format!("simulation-gpu{}", i % 2),
            "{service}"
        );
    }

    // The stand-ins register and heartbeat, and the status says so (worker truth, not processes).
    let all_idle = tap.next_where(&rt, "every worker connected and idle", |m| {
        (0..4).all(|i| connected_and_idle(m, &worker_id(machine, i)))
    });
    assert_shape(&all_idle);

    // `periodic` keeps coming, one per interval.
    let first = tap.next_where(&rt, "a periodic", |m| update_type(m) == "periodic");
    let second = tap.next_where(&rt, "another periodic", |m| update_type(m) == "periodic");
    let gap = second["timestamp"].as_u64().unwrap() - first["timestamp"].as_u64().unwrap();
    assert!(
        gap >= 250,
        "two periodic messages {gap} ms apart with a 1 s interval"
    );

    // Kill one worker: an `event_driven` says it is offline, a later one that it is back.
    let victim = worker_id(machine, 1);
    let pid = rt.app_status("simulation-websocket-worker-1")["pid"]
        .as_u64()
        .unwrap() as i32;
    // SAFETY: plain kill(2) on a process of this test's runtime.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let down = tap.next_where(&rt, "an event_driven with the killed worker offline", |m| {
        update_type(m) == "event_driven" && worker_status(m, &victim)["status"] == "offline"
    });
    assert_eq!(worker_status(&down, &victim)["is_connected"], false);
    tap.next_where(
        &rt,
        "an event_driven with the restarted worker idle again",
        |m| update_type(m) == "event_driven" && connected_and_idle(m, &victim),
    );
    let app = rt.app_status("simulation-websocket-worker-1");
    assert_eq!(app["restarts"], 1, "{app}");

    // Ctrl-C: `shutdown` goes out before any worker is signalled. One subscriber sees the status
    // channel and the workers' own channels in Redis's order: the stand-ins publish `offline` when
    // they get the signal, so none of those may come before `shutdown`.
    let both = StatusTap::start(&redis.url(), "machine:*");
    rt.signal(libc::SIGINT);
    let first = both.next_where(&rt, "shutdown or a worker going offline", |m| {
        update_type(m) == "shutdown" || m["data"]["status"] == "offline"
    });
    assert_eq!(
        update_type(&first),
        "shutdown",
        "a worker stopped before shutdown was published: {first}"
    );
    let shutdown = tap.next_where(&rt, "update_type shutdown", |m| {
        update_type(m) == "shutdown"
    });
    assert_shape(&shutdown);
    assert_eq!(shutdown["status"]["machine"]["phase"], "shutdown");
    for (key, service) in shutdown["status"]["services"].as_object().unwrap() {
        assert_eq!(
            service["pm2_status"], "online",
            "{key} in the shutdown message: {service}"
        );
    }
    let offline = both.next_where(&rt, "a worker going offline after shutdown", |m| {
        m["data"]["status"] == "offline"
    });
    assert_eq!(offline["event_type"], "worker_status_changed", "{offline}");
    assert!(rt.wait_exit().success(), "{}", rt.output());
    assert_nothing_after(&redis, &tap, &rt, machine);
    let out = rt.output();
    let published = out.find("published the final shutdown status").expect(&out);
    let first_stop = out
        .find("stopping simulation-websocket-worker-")
        .expect(&out);
    assert!(
        published < first_stop,
        "shutdown published after the first stop signal:\n{out}"
    );
}

#[test]
fn redis_outage_changes_only_health_and_publishing_resumes() {
    let _machine = one_machine();
    let mut redis = RedisServer::start();
    let machine = "sim-outage";
    let tap = StatusTap::start(&redis.url(), "machine:status:*");
    let mut rt = simulation_machine(&redis, machine, &[]);
    tap.next_where(&rt, "every worker connected and idle", |m| {
        update_type(m) == "periodic"
            && (0..4).all(|i| connected_and_idle(m, &worker_id(machine, i)))
    });
    let (code, body, _) = rt.get("/health");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["services"]["status-aggregator"]["healthy"], true,
        "{body}"
    );
    let pids_before: Vec<Value> = (0..4)
        .map(|i| rt.app_status(&format!("simulation-websocket-worker-{i}"))["pid"].clone())
        .chain((0..2).map(|g| rt.app_status(&format!("simulation-gpu{g}"))["pid"].clone()))
        .collect();

    redis.kill();
    // Still healthy (an outage is no reason to restart a GPU machine), but it says what is wrong.
    let body = wait_for(
        "/health to say the broker is unreachable",
        || rt.output(),
        || {
            let (code, body, _) = rt.get("/health");
            let warned = body["warnings"].as_array().is_some_and(|w| {
                w.iter()
                    .any(|w| w.as_str().unwrap_or("").contains("broker unreachable"))
            });
            (warned && code == 200).then_some(body)
        },
    );
    assert_eq!(body["healthy"], true, "{body}");
    assert_eq!(
        body["services"]["status-aggregator"]["healthy"], false,
        "{body}"
    );
    assert_eq!(
        body["broker"]["connection"]["state"], "unreachable",
        "{body}"
    );
    // Stay down a few reconnection attempts long.
    std::thread::sleep(Duration::from_secs(3));

    redis.restart();
    // The data is gone (a crash without persistence); the machine introduces itself again and the
    // workers' heartbeats make them connected again.
    tap.next_where(&rt, "a periodic after the restart", |m| {
        update_type(m) == "periodic"
    });
    tap.next_where(&rt, "every worker connected again", |m| {
        (0..4).all(|i| connected_and_idle(m, &worker_id(machine, i)))
    });
    // (This Redis never had the queue's functions, so the preflight's warning stays; that one is
    // `the_preflight_warning_is_current`'s.)
    wait_for(
        "/health without the outage's warning",
        || rt.output(),
        || {
            let (code, body, _) = rt.get("/health");
            let outage = body["warnings"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| !w.to_string().contains("job broker: ")));
            (code == 200 && !outage).then_some(())
        },
    );
    let pids_after: Vec<Value> = (0..4)
        .map(|i| rt.app_status(&format!("simulation-websocket-worker-{i}"))["pid"].clone())
        .chain((0..2).map(|g| rt.app_status(&format!("simulation-gpu{g}"))["pid"].clone()))
        .collect();
    assert_eq!(
        pids_before, pids_after,
        "a process was restarted during the outage"
    );
    let (_, status, _) = rt.get("/status");
    for app in status["apps"].as_array().unwrap() {
        assert_eq!(app["restarts"], 0, "{app}");
    }
    // /health said unreachable before the runtime's line about the loss necessarily reached the test.
    let out = wait_line(&rt, "lost the connection to redis");
    assert!(out.contains("connected to redis at"), "{out}");

    // SIGTERM (docker stop) ends it like Ctrl-C: `shutdown` last.
    rt.signal(libc::SIGTERM);
    tap.next_where(&rt, "update_type shutdown", |m| {
        update_type(m) == "shutdown"
    });
    assert!(rt.wait_exit().success(), "{}", rt.output());
    assert_nothing_after(&redis, &tap, &rt, machine);
}

#[test]
fn health_can_require_the_broker_and_apps_run_without_it() {
    let _machine = one_machine();
    // Nothing listens on this port: redis is away from the start.
    let dead = format!("redis://127.0.0.1:{}", crate::up_support::free_port());
    let env = [
        ("MACHINE_FAKE_GPUS", "2"),
        ("MACHINE_ID", "sim-no-redis"),
        ("HUB_REDIS_URL", dead.as_str()),
        ("MACHINE_HEALTH_REQUIRES_BROKER", "true"),
    ];
    let rt = Runtime::start_profile("full-local", &env);
    for i in 0..4 {
        rt.wait_state(&format!("simulation-websocket-worker-{i}"), "running");
    }
    let body = health_answering(&rt, 503);
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("broker unreachable"), "{body}");
    assert_eq!(body["broker"]["required_for_health"], true, "{body}");
}

#[test]
fn no_redis_url_means_no_broker_and_says_so() {
    let _machine = one_machine();
    let rt = Runtime::start_profile("full-local", &[("MACHINE_FAKE_GPUS", "2")]);
    // The missing broker is a warning, never a reason. (Not "200 once every app is up": the bundle's
    // workers exit at once without HUB_REDIS_URL and crash-loop, so a 200 only races their restarts.)
    let body = wait_for(
        "/health to say the broker is off",
        || rt.output(),
        || {
            let (_, body, _) = rt.get("/health");
            (body["broker"]["enabled"] == false).then_some(body)
        },
    );
    assert!(
        body["warnings"]
            .to_string()
            .contains("HUB_REDIS_URL is not set"),
        "{body}"
    );
    assert!(
        !body["reasons"].to_string().contains("HUB_REDIS_URL")
            && !body["reasons"].to_string().contains("broker"),
        "{body}"
    );
}

/// Waits until `/health` answers `code`; returns that body.
fn health_answering(rt: &Runtime, code: u16) -> Value {
    wait_for(
        &format!("/health to answer {code}"),
        || rt.output(),
        || {
            let (got, body, _) = rt.get("/health");
            (got == code).then_some(body)
        },
    )
}

/// Runs `up` expecting a refusal; returns its output.
fn refused(env: &[(&str, &str)]) -> String {
    let mut rt = Runtime::start_profile("full-local", env);
    let status = rt.wait_exit();
    let out = rt.output();
    assert!(!status.success(), "up started anyway:\n{out}");
    assert!(!out.contains(" started (pid"), "an app was started:\n{out}");
    out
}

#[test]
fn bad_broker_settings_are_all_reported_before_anything_starts() {
    let out = refused(&[
        ("MACHINE_FAKE_GPUS", "2"),
        ("HUB_REDIS_URL", "http://user:hunter2-secret@127.0.0.1:6379"),
        ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "soon"),
        ("MACHINE_HEALTH_REQUIRES_BROKER", "maybe"),
    ]);
    assert!(out.contains("HUB_REDIS_URL"), "{out}");
    assert!(
        out.contains("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS"),
        "{out}"
    );
    assert!(
        out.contains("MACHINE_HEALTH_REQUIRES_BROKER=\"maybe\""),
        "{out}"
    );
    assert!(
        !out.contains("hunter2-secret"),
        "the password leaked:\n{out}"
    );
}

#[test]
fn refused_auth_stops_the_start_with_one_clear_error() {
    let redis = RedisServer::start_with(&["--requirepass", "right-secret"]);
    let url = format!("redis://:wrong-secret@127.0.0.1:{}", redis.port());
    let out = refused(&[("MACHINE_FAKE_GPUS", "2"), ("HUB_REDIS_URL", url.as_str())]);
    let errors: Vec<&str> = out.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(errors[0].to_lowercase().contains("auth"), "{out}");
    assert!(!out.contains("wrong-secret"), "the password leaked:\n{out}");
}

#[test]
fn preflight_require_refuses_a_redis_without_the_job_broker() {
    let redis = RedisServer::start();
    let url = redis.url();
    let out = refused(&[
        ("MACHINE_FAKE_GPUS", "2"),
        ("HUB_REDIS_URL", url.as_str()),
        ("BROKER_PREFLIGHT", "require"),
    ]);
    assert!(out.contains("findMatchingJob"), "{out}");
    assert!(out.contains("BROKER_PREFLIGHT"), "{out}");
}

/// The preflight's warning is in `/health` while the Redis lacks the queue's `findMatchingJob`, and goes
/// away, with one log line, once the functions are loaded (issue 21: `/health` said `warnings: []` while
/// the log said the workers would NEVER receive a job). Re-checked every status interval (1 s here).
#[test]
fn the_preflight_warning_is_current() {
    let _machine = one_machine();
    let redis = RedisServer::start();
    let rt = simulation_machine(&redis, "sim-preflight", &[]);
    wait_for(
        "/health to warn that findMatchingJob is missing",
        || rt.output(),
        || {
            let (_, body, _) = rt.get("/health");
            let text = body["warnings"].to_string();
            (text.contains("findMatchingJob is not loaded")
                && text.contains("the workers would never receive a job"))
            .then_some(())
        },
    );
    // The warning is logged too; /health has the preflight's result before that line necessarily
    // reaches the test.
    wait_line(&rt, "would NEVER receive a job");
    let rt_tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt_tokio.block_on(async {
        let mut conn = redis.conn().await;
        crate::job_queue::load_job_matching(&mut conn).await;
    });
    wait_for(
        "/health without the preflight warning",
        || rt.output(),
        || {
            let (_, body, _) = rt.get("/health");
            let text = body["warnings"].to_string();
            (!text.contains("job broker: ") && body["broker"]["preflight"]["state"] == "passed")
                .then_some(())
        },
    );
    wait_for(
        "the log line saying the preflight passed",
        || rt.output(),
        || {
            rt.output()
                .contains("broker preflight: passed now")
                .then_some(())
        },
    );
}
