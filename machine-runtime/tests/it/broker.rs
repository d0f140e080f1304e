//! The broker against a real redis-server: message shape and order, worker truth, outages, auth,
//! preflight, and the stand-in worker bundle.

use std::time::{Duration, Instant};

use machine_runtime::broker::{
    Broker, BrokerConfig, BrokerError, ConnectionState, LinkError, MachineView, Phase,
    PreflightMode, PreflightState, ProcessState, RedisUrl, ResourceBinding, ServiceView,
    WorkerView,
};
use redis::AsyncCommands;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::redis_server::RedisServer;

/// Generous: the machine running the tests has two busy cores.
const DEADLINE: Duration = Duration::from_secs(60);
const MATCH_LIBRARY: &str = "#!lua name=jobs\nredis.register_function('findMatchingJob', function(keys, args) return nil end)";

fn config(url: &str) -> BrokerConfig {
    let mut config = BrokerConfig::new(RedisUrl::parse("HUB_REDIS_URL", url).unwrap());
    config.status_interval = Duration::from_secs(1);
    config.connect_timeout = Duration::from_secs(2);
    config.response_timeout = Duration::from_secs(2);
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(500);
    config.preflight = PreflightMode::Off;
    config
}

fn worker_id(machine: &str, i: u32) -> String {
    format!("{machine}-worker-simulation-{i}")
}

/// A simulation machine with two fake GPUs: one service and one worker per GPU.
fn two_gpu_view(machine: &str) -> MachineView {
    MachineView {
        machine_id: machine.to_owned(),
        phase: Phase::Starting,
        started_at: std::time::Instant::now(),
        gpu_count: 2,
        health_url: "http://localhost:9090/health".to_owned(),
        workers: (0..2)
            .map(|i| WorkerView {
                worker_id: worker_id(machine, i),
                app_name: format!("simulation-worker-{i}"),
                connector: "simulation".to_owned(),
                binding: ResourceBinding::Gpu,
                gpu: Some(i),
                services: vec!["simulation".to_owned()],
                service_app: Some(format!("simulation-gpu{i}")),
                process_state: ProcessState::Running,
                waiting_reason: None,
            })
            .collect(),
        services: (0..2)
            .map(|i| ServiceView {
                app_name: format!("simulation-gpu{i}"),
                gpu: Some(i),
                port: Some(8299 + i as u16),
                process_state: ProcessState::Ready,
                ready: true,
            })
            .collect(),
    }
}

/// A subscriber on a pattern that survives redis restarts; forwards every JSON payload.
struct Tap {
    rx: mpsc::UnboundedReceiver<Value>,
    task: JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    async fn start(url: &str, pattern: &str) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let client = redis::Client::open(url).unwrap();
        let pattern = pattern.to_owned();
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.psubscribe(&pattern).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                if let Ok(pubsub) = subscribed.await {
                    if let Some(ready) = ready_tx.take() {
                        let _ = ready.send(());
                    }
                    let mut stream = Box::pin(pubsub.into_on_message());
                    while let Some(message) = std::future::poll_fn(|cx| {
                        futures_core::Stream::poll_next(stream.as_mut(), cx)
                    })
                    .await
                    {
                        let payload: String = message.get_payload().unwrap();
                        let value =
                            serde_json::from_str(&payload).unwrap_or(Value::String(payload));
                        if tx.send(value).is_err() {
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        tokio::time::timeout(DEADLINE, ready_rx)
            .await
            .expect("test subscriber did not subscribe")
            .unwrap();
        Self { rx, task }
    }

    async fn next(&mut self) -> Value {
        tokio::time::timeout(DEADLINE, self.rx.recv())
            .await
            .expect("no status message within the deadline")
            .expect("subscriber ended")
    }

    /// Skips messages until one satisfies `want`; `what` names it in the failure.
    async fn next_where(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        crate::up_support::next_where_async(&mut self.rx, what, want)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

pub(crate) fn summary(message: &Value) -> String {
    format!(
        "{}/{}",
        message["update_type"].as_str().unwrap_or("?"),
        message["status"]["machine"]["phase"]
            .as_str()
            .unwrap_or("?")
    )
}

pub(crate) fn update_type(message: &Value) -> &str {
    message["update_type"].as_str().unwrap_or("")
}

fn has_keys(value: &Value, keys: &[&str], what: &str) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {value}"));
    for key in keys {
        assert!(object.contains_key(*key), "{what} lacks {key}: {value}");
    }
}

/// Every field the existing API reads (reference part f).
pub(crate) fn assert_shape(message: &Value) {
    has_keys(
        message,
        &[
            "machine_id",
            "timestamp",
            "update_type",
            "health_url",
            "structure",
            "status",
        ],
        "message",
    );
    assert!(
        message["timestamp"].as_u64().unwrap() > 1_600_000_000_000,
        "timestamp is epoch ms"
    );
    let structure = &message["structure"];
    has_keys(
        structure,
        &["gpu_count", "capabilities", "workers", "services"],
        "structure",
    );
    assert!(structure["capabilities"].is_array());
    for (_, worker) in structure["workers"].as_object().unwrap() {
        has_keys(
            worker,
            &[
                "worker_id",
                "pm2_name",
                "gpu_id",
                "worker_type",
                "resource_binding",
                "services",
                "connectors",
            ],
            "structure.workers entry",
        );
    }
    for (_, service) in structure["services"].as_object().unwrap() {
        has_keys(
            service,
            &["worker_id", "service_type", "pm2_name", "status", "health"],
            "structure.services entry",
        );
    }
    let status = &message["status"];
    has_keys(
        &status["machine"],
        &["phase", "uptime_ms"],
        "status.machine",
    );
    assert!(status["machine"]["uptime_ms"].is_u64());
    for (_, worker) in status["workers"].as_object().unwrap() {
        has_keys(
            worker,
            &["is_connected", "status", "current_job_id", "last_activity"],
            "status.workers entry",
        );
        let state = worker["status"].as_str().unwrap();
        assert!(
            ["idle", "busy", "offline", "unknown"].contains(&state),
            "{state}"
        );
    }
    for (_, service) in status["services"].as_object().unwrap() {
        has_keys(
            service,
            &[
                "worker_id",
                "service_type",
                "pm2_name",
                "pm2_status",
                "status",
                "health",
            ],
            "status.services entry",
        );
        assert!(["active", "inactive", "unknown"].contains(&service["status"].as_str().unwrap()));
        assert!(["healthy", "unhealthy", "unknown"].contains(&service["health"].as_str().unwrap()));
    }
}

/// After `shutdown()` returned the broker is gone, so a marker published now must be the next
/// message after `shutdown`: nothing came after it.
async fn assert_shutdown_is_last(server: &RedisServer, tap: &mut Tap, machine: &str) {
    let shutdown = tap
        .next_where("update_type shutdown", |m| update_type(m) == "shutdown")
        .await;
    assert_shape(&shutdown);
    assert_eq!(shutdown["status"]["machine"]["phase"], "shutdown");
    let mut conn = server.conn().await;
    let _: i64 = conn
        .publish(format!("machine:status:{machine}"), r#"{"marker":true}"#)
        .await
        .unwrap();
    let after = tap.next().await;
    assert_eq!(
        after["marker"], true,
        "a message came after shutdown: {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_sequence_and_shape() {
    let server = RedisServer::start();
    let machine = "seq-m1";
    let mut tap = Tap::start(&server.url(), "machine:status:*").await;
    let (view_tx, view_rx) = watch::channel(two_gpu_view(machine));
    let broker = Broker::start(config(&server.url()), view_rx).await.unwrap();

    let initial = tap.next().await;
    assert_eq!(update_type(&initial), "initial", "{initial}");
    assert_shape(&initial);
    assert_eq!(initial["machine_id"], machine);
    assert_eq!(initial["status"]["machine"]["phase"], "starting");
    assert_eq!(initial["health_url"], "http://localhost:9090/health");

    view_tx.send_modify(|v| v.phase = Phase::Ready);
    // Periodic messages while still starting are legitimate (a slow machine may get one in).
    let ready = tap
        .next_where("machine_ready", |m| {
            update_type(m) != "periodic" || m["status"]["machine"]["phase"] != "starting"
        })
        .await;
    assert_eq!(update_type(&ready), "machine_ready", "{ready}");
    assert_eq!(ready["status"]["machine"]["phase"], "ready");
    let right_after = tap.next().await;
    assert_eq!(
        update_type(&right_after),
        "periodic",
        "machine_ready must be followed by periodic"
    );
    let again = tap.next().await;
    assert_eq!(update_type(&again), "periodic", "{}", summary(&again));
    assert_eq!(again["status"]["machine"]["phase"], "ready");
    assert_shape(&again);

    assert!(broker.status().is_connected());
    broker.shutdown().await.unwrap();
    assert_shutdown_is_last(&server, &mut tap, machine).await;
    // A second call is harmless.
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gpus_report_real_worker_ids_and_gpu_ids() {
    let server = RedisServer::start();
    let machine = "gpu-m2";
    let mut tap = Tap::start(&server.url(), "machine:status:*").await;
    let (_view_tx, view_rx) = watch::channel(two_gpu_view(machine));
    let broker = Broker::start(config(&server.url()), view_rx).await.unwrap();
    let message = tap.next().await;
    let structure = &message["structure"];
    assert_eq!(structure["gpu_count"], 2);
    assert_eq!(structure["capabilities"], serde_json::json!(["simulation"]));
    let workers = structure["workers"].as_object().unwrap();
    let ids: Vec<&String> = workers.keys().collect();
    assert_eq!(ids, [&worker_id(machine, 0), &worker_id(machine, 1)]);
    for i in 0..2u32 {
        let id = worker_id(machine, i);
        let worker = &workers[&id];
        assert_eq!(worker["worker_id"], id.as_str());
        assert_eq!(worker["gpu_id"], i);
        assert_eq!(worker["pm2_name"], format!("simulation-worker-{i}"));
        assert_eq!(worker["worker_type"], "simulation");
        assert_eq!(worker["resource_binding"], "gpu");
        assert_eq!(worker["connectors"], serde_json::json!(["simulation"]));
        let key = format!("{id}.simulation");
        assert_eq!(
            structure["services"][&key]["pm2_name"],
            format!("simulation-gpu{i}")
        );
        assert_eq!(message["status"]["services"][&key]["pm2_status"], "online");
        assert_eq!(message["status"]["services"][&key]["health"], "healthy");
        // Nobody registered: the process runs but the worker has not spoken yet.
        assert_eq!(message["status"]["workers"][&id]["status"], "unknown");
        assert_eq!(message["status"]["workers"][&id]["is_connected"], false);
    }
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_changes_and_worker_events_are_event_driven() {
    let server = RedisServer::start();
    let machine = "ev-m3";
    let w0 = worker_id(machine, 0);
    let w1 = worker_id(machine, 1);
    let mut tap = Tap::start(&server.url(), "machine:status:*").await;
    let mut ready_view = two_gpu_view(machine);
    ready_view.phase = Phase::Ready;
    let (view_tx, view_rx) = watch::channel(ready_view);
    let broker = Broker::start(config(&server.url()), view_rx).await.unwrap();
    tap.next_where("machine_ready", |m| update_type(m) == "machine_ready")
        .await;

    // Worker 0 registers and heartbeats like a real worker; then it takes a job: the hash changes
    // first (as findMatchingJob does: the hash and jobs:active), then the worker announces it with
    // details only the event has.
    let mut conn = server.conn().await;
    let hash = format!("worker:{w0}");
    let _: () = conn
        .hset_multiple(
            &hash,
            &[
                ("status", "idle"),
                ("current_job_id", ""),
                ("version", "9.9.9"),
                ("last_heartbeat", "2030-01-01T00:00:00.000Z"),
            ],
        )
        .await
        .unwrap();
    let _: () = conn
        .set_ex(
            format!("worker:{w0}:heartbeat"),
            "2030-01-01T00:00:00.000Z",
            60,
        )
        .await
        .unwrap();
    let _: () = conn
        .hset_multiple(&hash, &[("status", "busy"), ("current_job_id", "job-42")])
        .await
        .unwrap();
    let _: () = conn
        .hset(format!("jobs:active:{w0}"), "job-42", "{}")
        .await
        .unwrap();
    let event = serde_json::json!({
        "worker_id": w0, "event_type": "worker_status_changed",
        "data": {"status": "busy", "is_connected": true, "current_job_id": "job-42", "build_info": {"commit": "abc123"}},
        "timestamp": 1_900_000_000_000u64,
    });
    let _: i64 = conn
        .publish(format!("machine:{machine}:worker:{w0}"), event.to_string())
        .await
        .unwrap();
    let busy = tap
        .next_where("event_driven with worker 0 busy", |m| {
            update_type(m) == "event_driven" && m["status"]["workers"][&w0]["status"] == "busy"
        })
        .await;
    let state = &busy["status"]["workers"][&w0];
    assert_eq!(state["is_connected"], true);
    assert_eq!(state["current_job_id"], "job-42");
    assert_eq!(state["version"], "9.9.9");
    assert_eq!(state["build_info"]["commit"], "abc123");
    assert_shape(&busy);

    // Worker 1 crashes: its process errors out, and so does its service.
    view_tx.send_modify(|v| {
        v.workers[1].process_state = ProcessState::Restarting;
        v.services[1].process_state = ProcessState::Errored;
        v.services[1].ready = false;
    });
    let crashed = tap
        .next_where("event_driven with worker 1 offline", |m| {
            update_type(m) == "event_driven"
                && m["status"]["services"][format!("{w1}.simulation")]["pm2_status"] == "errored"
        })
        .await;
    assert_eq!(crashed["status"]["workers"][&w1]["status"], "offline");
    assert_eq!(crashed["status"]["workers"][&w1]["is_connected"], false);
    assert_eq!(
        crashed["status"]["services"][format!("{w1}.simulation")]["status"],
        "inactive"
    );
    assert_eq!(
        crashed["status"]["services"][format!("{w1}.simulation")]["health"],
        "unhealthy"
    );
    assert_eq!(
        crashed["status"]["workers"][&w0]["status"], "busy",
        "worker 0 is unaffected"
    );

    // ... and comes back.
    view_tx.send_modify(|v| {
        v.workers[1].process_state = ProcessState::Running;
        v.services[1].process_state = ProcessState::Ready;
        v.services[1].ready = true;
    });
    let restarted = tap
        .next_where("event_driven with worker 1 back", |m| {
            update_type(m) == "event_driven"
                && m["status"]["services"][format!("{w1}.simulation")]["pm2_status"] == "online"
        })
        .await;
    assert_eq!(restarted["status"]["workers"][&w1]["status"], "unknown");

    // A view sent again unchanged is not an event.
    view_tx.send_modify(|_| {});
    broker.shutdown().await.unwrap();
    assert_shutdown_is_last(&server, &mut tap, machine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_survived_and_publishing_resumes() {
    let mut server = RedisServer::start();
    let machine = "out-m4";
    let w0 = worker_id(machine, 0);
    let mut ready_view = two_gpu_view(machine);
    ready_view.phase = Phase::Ready;
    let (view_tx, view_rx) = watch::channel(ready_view);
    let mut tap = Tap::start(&server.url(), "machine:status:*").await;
    let broker = Broker::start(config(&server.url()), view_rx).await.unwrap();
    tap.next_where("periodic", |m| update_type(m) == "periodic")
        .await;

    tokio::task::block_in_place(|| server.kill());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = broker.status();
        if let ConnectionState::Unreachable { last_error, .. } = &status.connection {
            assert!(!last_error.is_empty());
            assert!(
                status.summary().starts_with("broker unreachable"),
                "{}",
                status.summary()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "broker never noticed the outage: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The machine keeps changing while redis is away; the last state must come through later.
    view_tx.send_modify(|v| v.workers[1].process_state = ProcessState::Errored);

    tokio::task::block_in_place(|| server.restart());
    let resumed = tap
        .next_where("a periodic after the restart", |m| {
            update_type(m) == "periodic"
        })
        .await;
    assert_eq!(
        resumed["status"]["workers"][worker_id(machine, 1)]["status"],
        "offline"
    );
    let deadline = Instant::now() + DEADLINE;
    while !broker.status().is_connected() {
        assert!(
            Instant::now() < deadline,
            "broker did not reconnect: {:?}",
            broker.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Worker events flow again: the subscription was renewed.
    let mut conn = server.conn().await;
    let _: () = conn
        .set_ex(format!("worker:{w0}:heartbeat"), "now", 60)
        .await
        .unwrap();
    // The queue's record of the assignment, as findMatchingJob writes it before the worker's event.
    let _: () = conn
        .hset(format!("jobs:active:{w0}"), "after-outage", "{}")
        .await
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let event = serde_json::json!({
        "worker_id": w0, "event_type": "job_started", "data": {"job_id": "after-outage"}, "timestamp": 1,
    })
    .to_string();
    loop {
        // Resubscription races with this publish; repeat until the broker reacts.
        let _: i64 = conn
            .publish(format!("machine:{machine}:worker:{w0}"), &event)
            .await
            .unwrap();
        let reacted = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let m = tap.next().await;
                if update_type(&m) == "event_driven"
                    && m["status"]["workers"][&w0]["current_job_id"] == "after-outage"
                {
                    return;
                }
            }
        })
        .await;
        if reacted.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker events did not resume after the outage"
        );
    }
    // Nothing panicked: the task is alive and publishes the final message.
    broker.shutdown().await.unwrap();
    assert_shutdown_is_last(&server, &mut tap, machine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_at_start_is_not_fatal_and_shutdown_is_bounded() {
    let mut server = RedisServer::start();
    let url = server.url();
    tokio::task::block_in_place(|| server.kill());
    let machine = "late-m5";
    let (_view_tx, view_rx) = watch::channel(two_gpu_view(machine));
    let broker = Broker::start(config(&url), view_rx).await.unwrap();
    assert!(!broker.status().is_connected());

    tokio::task::block_in_place(|| server.restart());
    let mut tap = Tap::start(&url, "machine:status:*").await;
    // The first message the api sees once redis is there introduces the machine.
    let first = tap.next_where("a message", |_| true).await;
    assert!(
        ["initial", "periodic"].contains(&update_type(&first)),
        "{}",
        summary(&first)
    );

    tokio::task::block_in_place(|| server.kill());
    let started = Instant::now();
    let err = broker.shutdown().await.unwrap_err();
    assert!(
        matches!(err, BrokerError::ShutdownNotPublished { .. }),
        "{err}"
    );
    // Bounded by the configured shutdown timeout (3 s) plus slack: a dead redis cannot hang a stop.
    assert!(
        started.elapsed() < DEADLINE,
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_url_and_refused_auth_give_one_clear_error_without_the_password() {
    let errors = BrokerConfig::from_lookup(|name| {
        (name == "HUB_REDIS_URL").then(|| "http://:hunter22@localhost:6379".to_owned())
    })
    .unwrap_err();
    assert_eq!(errors.0.len(), 1);
    let text = errors.to_string();
    assert!(
        text.contains("HUB_REDIS_URL") && text.contains("redis://") && text.contains("rediss://"),
        "{text}"
    );
    assert!(!text.contains("hunter22"), "{text}");

    let server = RedisServer::start_with(&["--requirepass", "sesame-open"]);
    let machine = "auth-m6";
    for url in [
        format!("redis://:wrong-hunter22@127.0.0.1:{}", server.port()),
        format!("redis://default:wrong-hunter22@127.0.0.1:{}", server.port()),
        server.url(),
    ] {
        let (_tx, rx) = watch::channel(two_gpu_view(machine));
        let err = Broker::start(config(&url), rx).await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, BrokerError::Link(LinkError::AuthRefused { .. })),
            "{text}"
        );
        assert!(
            text.contains("authentication") && text.contains("HUB_REDIS_URL"),
            "{text}"
        );
        assert!(!text.contains("hunter22"), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
    }
    let good = format!("redis://:sesame-open@127.0.0.1:{}", server.port());
    let mut tap = Tap::start(&good, "machine:status:*").await;
    let (_tx, rx) = watch::channel(two_gpu_view(machine));
    let broker = Broker::start(config(&good), rx).await.unwrap();
    assert_eq!(update_type(&tap.next().await), "initial");
    assert!(!format!("{:?}", broker.status()).contains("sesame"));
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_speaks_tls_and_checks_the_certificate() {
    // The certificate is self-signed, so a correct TLS client must refuse it: reaching that verdict
    // proves the handshake runs (rustls has its crypto provider) and that verification is on. A
    // refused certificate cannot heal by retrying: it is a start-up error naming the cause.
    let server = RedisServer::start_tls();
    let url = format!("rediss://:hunter22@127.0.0.1:{}", server.port());
    let (_tx, rx) = watch::channel(two_gpu_view("tls-m11"));
    let err = Broker::start(config(&url), rx).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, BrokerError::Link(LinkError::TlsRefused { .. })),
        "a self-signed certificate must be refused: {text}"
    );
    assert!(
        text.contains("self-signed") && text.contains("HUB_REDIS_TLS_CA_FILE"),
        "{text}"
    );
    assert!(text.contains("rediss://:***@"), "{text}");
    assert!(!text.contains("hunter22"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_with_and_without_the_matching_function() {
    let server = RedisServer::start();
    let machine = "pre-m7";
    let start = |mode| {
        let mut config = config(&server.url());
        config.preflight = mode;
        let (_tx, rx) = watch::channel(two_gpu_view(machine));
        Broker::start(config, rx)
    };

    let broker = start(PreflightMode::Warn).await.unwrap();
    match broker.status().preflight {
        PreflightState::Problems {
            problems,
            redis_version,
        } => {
            assert!(redis_version.unwrap().starts_with('7'));
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].contains("findMatchingJob"), "{problems:?}");
        }
        other => panic!("expected problems, got {other:?}"),
    }
    broker.shutdown().await.unwrap();

    let err = start(PreflightMode::Require).await.unwrap_err().to_string();
    assert!(
        err.contains("findMatchingJob") && err.contains("BROKER_PREFLIGHT"),
        "{err}"
    );
    assert!(err.contains("never receive jobs"), "{err}");

    let broker = start(PreflightMode::Off).await.unwrap();
    assert_eq!(broker.status().preflight, PreflightState::Off);
    broker.shutdown().await.unwrap();

    let mut conn = server.conn().await;
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(MATCH_LIBRARY)
        .query_async(&mut conn)
        .await
        .unwrap();
    let broker = start(PreflightMode::Require).await.unwrap();
    assert!(
        matches!(broker.status().preflight, PreflightState::Passed { .. }),
        "{:?}",
        broker.status().preflight
    );
    broker.shutdown().await.unwrap();

    // `require` cannot be satisfied without redis.
    let mut dead = RedisServer::start();
    let url = dead.url();
    tokio::task::block_in_place(|| dead.kill());
    let mut config = config(&url);
    config.preflight = PreflightMode::Require;
    let (_tx, rx) = watch::channel(two_gpu_view(machine));
    let err = Broker::start(config, rx).await.unwrap_err();
    assert!(
        matches!(err, BrokerError::PreflightUnchecked { .. }),
        "{err}"
    );
}

/// The stand-in worker bundle (tests/fixtures/worker-bundle) as a `mock` worker: no service needed.
fn stand_in(envs: &[(&str, &str)]) -> tokio::process::Child {
    let mut all = vec![("WORKERS", "mock:1"), ("UNIFIED_MACHINE_STATUS", "true")];
    all.extend_from_slice(envs);
    crate::job_queue::spawn_worker(&crate::job_queue::bundle_dir(), &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_registers_heartbeats_and_cleans_up_on_sigterm() {
    let server = RedisServer::start();
    let machine = "sim-m8";
    let id = worker_id(machine, 1);
    let mut events = Tap::start(&server.url(), &format!("machine:{machine}:worker:*")).await;
    let mut status = Tap::start(&server.url(), "machine:status:*").await;
    let mut view = two_gpu_view(machine);
    view.phase = Phase::Ready;
    let (_view_tx, view_rx) = watch::channel(view);
    let broker = Broker::start(config(&server.url()), view_rx).await.unwrap();

    let mut child = stand_in(&[
        ("WORKER_ID", &id),
        ("MACHINE_ID", machine),
        ("HUB_REDIS_URL", &server.url()),
        ("WORKER_HEARTBEAT_INTERVAL_MS", "200"),
    ]);
    let registered = events.next().await;
    assert_eq!(registered["event_type"], "worker_status_changed");
    assert_eq!(registered["worker_id"], id.as_str());
    assert_eq!(registered["data"]["status"], "idle");
    assert_eq!(registered["data"]["is_connected"], true);
    assert_eq!(
        registered["data"]["capabilities"],
        serde_json::json!(["mock_test"])
    );

    let mut conn = server.conn().await;
    let ttl: i64 = conn.ttl(format!("worker:{id}:heartbeat")).await.unwrap();
    assert!(ttl > 0 && ttl <= 60, "heartbeat ttl {ttl}");
    // The heartbeat repeats: last_heartbeat moves on.
    let first_beat: String = conn
        .hget(format!("worker:{id}"), "last_heartbeat")
        .await
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let beat: String = conn
            .hget(format!("worker:{id}"), "last_heartbeat")
            .await
            .unwrap();
        if beat != first_beat {
            break;
        }
        assert!(Instant::now() < deadline, "no second heartbeat");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The machine status now tells the truth about the worker.
    status
        .next_where("worker 1 connected and idle", |m| {
            m["status"]["workers"][&id]["is_connected"] == true
                && m["status"]["workers"][&id]["status"] == "idle"
        })
        .await;

    crate::job_queue::sigterm(&child);
    let (exit, stdout, stderr) = crate::job_queue::wait_output(&mut child).await;
    assert!(
        exit.success(),
        "stand-in exited with {exit}: {stdout}{stderr}"
    );
    let offline = events
        .next_where("offline event", |e| e["data"]["status"] == "offline")
        .await;
    assert_eq!(offline["data"]["is_connected"], false);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("worker:{id}"))
        .arg(format!("worker:{id}:heartbeat"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "keys left behind after SIGTERM");
    let gone = status
        .next_where("event_driven with worker 1 offline", |m| {
            update_type(m) == "event_driven" && m["status"]["workers"][&id]["status"] == "offline"
        })
        .await;
    assert_eq!(gone["status"]["workers"][&id]["is_connected"], false);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_with_refused_auth_fails_clearly() {
    let server = RedisServer::start_with(&["--requirepass", "sesame-open"]);
    let url = format!("redis://:wrong-hunter22@127.0.0.1:{}", server.port());
    let mut child = stand_in(&[
        ("WORKER_ID", "m10-worker-mock-0"),
        ("MACHINE_ID", "m10"),
        ("HUB_REDIS_URL", &url),
    ]);
    let (exit, stdout, stderr) = crate::job_queue::wait_output(&mut child).await;
    assert!(!exit.success());
    assert!(stderr.contains("WRONGPASS"), "{stderr}");
    assert!(
        !stderr.contains("hunter22") && !stdout.contains("hunter22"),
        "{stdout}{stderr}"
    );
}
