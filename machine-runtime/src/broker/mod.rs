//! The job broker link: tells the existing API about this machine over Redis, in its exact protocol.
//!
//! What goes out (reference part f): `PUBLISH machine:status:<MACHINE_ID> <json>` with
//! `update_type` in this order:
//! - `initial` once at start (phase `starting`);
//! - `machine_ready` when the view's phase becomes ready, immediately followed by a `periodic`
//!   (the API re-broadcasts `periodic` but not `machine_ready`);
//! - `periodic` every `MACHINE_STATUS_UPDATE_INTERVAL_SECONDS` (default 10; above 25 is clamped to 25
//!   with a warning, because the API marks a machine silent for 30 s as disconnected);
//! - `event_driven` for every change of the supervisor's view and every worker event, at most one per
//!   100 ms (changes in between are merged; the last state is always sent);
//! - `shutdown` (phase `shutdown`) from [`Broker::shutdown`], which the supervisor calls before it
//!   signals the children; bounded, so a dead Redis cannot hold up the stop.
//!
//! And, for a worker the machine had to kill mid-job (stop or restart past its `kill_timeout`),
//! [`Broker::hand_back`] puts its job back into `jobs:pending` as the API's orphan clean-up does and
//! publishes `job_handed_back` on `machine:<MACHINE_ID>:worker:<WORKER_ID>` ([`handback`]).
//!
//! What comes in: before each message, `HGETALL worker:<id>` and `TTL worker:<id>:heartbeat` for every
//! worker in one pipeline, and `PSUBSCRIBE machine:<MACHINE_ID>:worker:*` events. A worker is connected
//! only while its process runs and its heartbeat key exists; a worker whose process is down is
//! `offline` whatever it last said.
//!
//! Outages: the runtime's processes never wait for Redis. The link reconnects with capped
//! exponential backoff (250 ms doubling to 5 s, so status resumes within 5 s of Redis returning,
//! well inside the API's 30 s); while it is down nothing is published and [`Broker::status`]
//! says `unreachable` since when and why. On reconnection the broker catches up
//! (`initial`/`machine_ready` if they were missed, else a `periodic` at once) and resubscribes.
//!
//! Settings (environment):
//! - `HUB_REDIS_URL`: `redis://[user][:password]@host[:port][/db]`, or `rediss://` for TLS. The
//!   password never appears in logs, errors or the health endpoint (`***`).
//! - `MACHINE_STATUS_UPDATE_INTERVAL_SECONDS`: whole seconds, 1 to 25 (default 10).
//! - `BROKER_PREFLIGHT`: at start the broker checks that Redis is 7 or later and that the job broker's
//!   function `findMatchingJob` is loaded (`FUNCTION LIST`). Without it idle workers would never
//!   claim a job.
//!   - `warn` (default): a loud multi-line warning, then carry on; if Redis is unreachable at start,
//!     the check runs at the first connection.
//!   - `require`: refuse to start when the check fails or Redis cannot be reached to run it.
//!   - `off`: no check.

/// `log!(...)`: the broker's lines, `broker: ` first, through the one log front end ([`crate::log::part`]).
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::part("broker", &format!($($arg)*))
    };
}
pub(crate) use log;

pub(crate) mod bridge;
mod config;
pub mod handback;
pub mod lease;
pub(crate) mod leftover;
mod link;
mod message;
mod preflight;
mod tally;
mod time;
pub mod tls;
mod view;
mod workers;

pub use config::{
    BrokerConfig, ConfigError, ConfigErrors, DEFAULT_STATUS_INTERVAL_SECONDS,
    MAX_STATUS_INTERVAL_SECONDS, PreflightMode, RedisUrl, install_tls_provider,
};
pub use link::{Conn, ConnectionState, Link, LinkError, LinkSettings};
pub use message::{StatusMessage, UpdateType, build as build_status_message};
pub use preflight::{MATCH_FUNCTION, PreflightReport, run as run_preflight};
pub use tally::JobTally;
pub use time::{epoch_ms, iso8601, now_iso8601, now_ms};
pub use view::{MachineView, Phase, ProcessState, ResourceBinding, ServiceView, WorkerView};
pub use workers::{
    ConnectorLoadScan, ConnectorVerdict, WorkerEvent, WorkerState, WorkerStatus, WorkerTruth,
};

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::Stream;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// The longest one hand-back of a killed worker's jobs may take
/// ([`machine_model::catalog::JOB_HANDBACK_TIMEOUT_MS`]; Compose's stop budget includes it).
pub(crate) const JOB_HANDBACK_TIMEOUT: Duration =
    Duration::from_millis(machine_model::catalog::JOB_HANDBACK_TIMEOUT_MS as u64);

/// The channel the API listens to for this machine.
pub(crate) fn status_channel(machine_id: &str) -> String {
    format!("machine:status:{machine_id}")
}

/// The broker's side of `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerStatus {
    /// `HUB_REDIS_URL` with the password replaced by `***`.
    pub url: String,
    /// Connected, or unreachable since when and why.
    pub connection: ConnectionState,
    /// What the start-up check found.
    pub preflight: PreflightState,
    /// Status messages published so far.
    pub published: u64,
    /// Epoch ms of the last published message.
    pub last_published_ms: Option<u64>,
    /// Type of the last published message.
    pub last_update_type: Option<UpdateType>,
}

impl BrokerStatus {
    /// Whether Redis is reachable now.
    pub fn is_connected(&self) -> bool {
        matches!(self.connection, ConnectionState::Connected { .. })
    }

    /// One line for humans: `broker connected` or `broker unreachable since ...: <error>`.
    pub fn summary(&self) -> String {
        match &self.connection {
            ConnectionState::Connecting { .. } => format!("broker connecting to {}", self.url),
            ConnectionState::Connected { .. } => format!("broker connected to {}", self.url),
            ConnectionState::Unreachable {
                since_ms,
                last_error,
            } => format!(
                "broker unreachable for {} s ({}): {last_error}",
                now_ms().saturating_sub(*since_ms) / 1000,
                self.url
            ),
        }
    }
}

/// The preflight's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PreflightState {
    /// `BROKER_PREFLIGHT=off`.
    Off,
    /// Not run yet (Redis unreachable so far).
    Pending,
    /// Redis 7+ with `findMatchingJob`.
    Passed {
        /// `redis_version`.
        redis_version: Option<String>,
    },
    /// Problems found (`BROKER_PREFLIGHT=warn`).
    Problems {
        /// `redis_version`.
        redis_version: Option<String>,
        /// One sentence each.
        problems: Vec<String>,
    },
}

/// Why the broker could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Authentication or TLS refused (or another connection error where it is fatal).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// `BROKER_PREFLIGHT=require` and the check failed.
    #[error(
        "broker preflight failed for redis at {url} and BROKER_PREFLIGHT=require:\n{}\nworkers would never receive jobs; fix the broker, or set BROKER_PREFLIGHT=warn to start anyway",
        .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
    )]
    PreflightFailed {
        /// The redacted URL.
        url: String,
        /// What is wrong.
        problems: Vec<String>,
    },
    /// `BROKER_PREFLIGHT=require` and Redis could not be asked.
    #[error(
        "BROKER_PREFLIGHT=require but the broker preflight could not run: {detail}; start redis, or set BROKER_PREFLIGHT=warn to start without the check"
    )]
    PreflightUnchecked {
        /// Why (with the redacted URL).
        detail: String,
    },
    /// A status asked for by `POST /refresh-status` did not go out.
    #[error("the status was not published: {reason}")]
    RefreshNotPublished {
        /// Why.
        reason: String,
    },
    /// The final `shutdown` message did not go out.
    #[error("the final shutdown status was not published: {reason}")]
    ShutdownNotPublished {
        /// Why.
        reason: String,
    },
    /// The broker task died (a bug); the runtime itself is unaffected.
    #[error("the broker task ended unexpectedly: {reason}")]
    TaskFailed {
        /// The join error.
        reason: String,
    },
}

struct Stats {
    preflight: PreflightState,
    published: u64,
    last_published_ms: Option<u64>,
    last_update_type: Option<UpdateType>,
}

struct Shared {
    link: Arc<Link>,
    stats: Mutex<Stats>,
    /// What each worker (by `WORKER_ID`) was doing at the last refresh or event: `Some(job)` busy.
    busy: Mutex<HashMap<String, Option<String>>>,
    /// `status.workers` of the last status message built, by `WORKER_ID`, for `/health`.
    workers: Mutex<BTreeMap<String, WorkerStatus>>,
    /// Each worker's job counts from its own events, by `WORKER_ID`, for `/metrics`.
    jobs: Mutex<BTreeMap<String, JobTally>>,
    /// Background tasks that ended while the broker was meant to run (a panic is a bug), with when.
    dead: Mutex<Vec<(u64, String)>>,
    /// Set by [`Broker::shutdown`]: tasks ending from now on end on purpose.
    stopping: std::sync::atomic::AtomicBool,
}

/// Records the task in [`Shared::dead`] when it ends (or unwinds) while the broker is meant to run.
struct TaskWatch {
    shared: Arc<Shared>,
    name: &'static str,
    cancel: CancellationToken,
}

impl Drop for TaskWatch {
    fn drop(&mut self) {
        if self.cancel.is_cancelled()
            || self
                .shared
                .stopping
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let how = if std::thread::panicking() {
            "panicked"
        } else {
            "returned"
        };
        log!(
            "the {} task {how}; the machine no longer reports to the job broker",
            self.name
        );
        self.shared
            .dead
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push((now_ms(), format!("the broker's {} task {how}", self.name)));
    }
}

/// Spawns `task`, recording in `shared` if it ends before `cancel` or a shutdown.
fn spawn_watched<F>(
    shared: &Arc<Shared>,
    name: &'static str,
    cancel: &CancellationToken,
    task: F,
) -> JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let watch = TaskWatch {
        shared: shared.clone(),
        name,
        cancel: cancel.clone(),
    };
    tokio::spawn(async move {
        let _watch = watch;
        task.await;
    })
}

impl Shared {
    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        // A poisoned lock only means a panic elsewhere; the numbers are still good to show.
        self.stats
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

enum Command {
    Shutdown(oneshot::Sender<Result<(), BrokerError>>),
    /// Publish a `periodic` now; answers whether it went out.
    Refresh(oneshot::Sender<bool>),
}

struct Inner {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    /// Into the publisher's stream of worker events (for the machine's own [`workers::WORKER_LOG_EVENT`]).
    events: mpsc::Sender<WorkerEvent>,
    task: Mutex<Option<JoinHandle<()>>>,
    cancel: CancellationToken,
    shutdown_timeout: Duration,
    /// `MACHINE_ID`, for the channel of the events about its workers.
    machine_id: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The running broker; cheap to clone (all clones drive the same tasks).
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("status", &self.status())
            .finish()
    }
}

impl Broker {
    /// Connects (one attempt), runs the preflight, publishes `initial` and keeps publishing in
    /// background tasks until [`Broker::shutdown`].
    ///
    /// Fails only for refused authentication or TLS (a certificate refused on either side) and, with `BROKER_PREFLIGHT=require`, a failed or
    /// impossible preflight. An unreachable Redis is not an error: the broker keeps retrying.
    pub async fn start(
        config: BrokerConfig,
        view: watch::Receiver<MachineView>,
    ) -> Result<Self, BrokerError> {
        let link = Link::new(config.url.clone(), config.link_settings())?;
        let url = config.url.redacted().to_owned();
        let mut preflight = if config.preflight == PreflightMode::Off {
            PreflightState::Off
        } else {
            PreflightState::Pending
        };
        match link.connect_now().await {
            Ok(mut conn) => {
                log!("connected to redis at {url}");
                if config.preflight != PreflightMode::Off {
                    match preflight::run(&mut conn.conn).await {
                        Ok(report) => {
                            if !report.passed() && config.preflight == PreflightMode::Require {
                                return Err(BrokerError::PreflightFailed {
                                    url,
                                    problems: report.problems,
                                });
                            }
                            preflight = preflight_state(report, &url);
                        }
                        Err(err) => {
                            link.report(conn.generation, &err);
                            if config.preflight == PreflightMode::Require {
                                return Err(BrokerError::PreflightUnchecked {
                                    detail: link.classify(&err).to_string(),
                                });
                            }
                        }
                    }
                }
            }
            Err(err) if err.is_fatal_at_start() => return Err(err.into()),
            Err(err) => {
                if config.preflight == PreflightMode::Require {
                    return Err(BrokerError::PreflightUnchecked {
                        detail: err.to_string(),
                    });
                }
                log!(
                    "{err}; starting anyway: processes run without redis, and status publishing starts when it answers"
                );
            }
        }
        let shared = Arc::new(Shared {
            link: link.clone(),
            stats: Mutex::new(Stats {
                preflight,
                published: 0,
                last_published_ms: None,
                last_update_type: None,
            }),
            busy: Mutex::new(HashMap::new()),
            workers: Mutex::new(BTreeMap::new()),
            jobs: Mutex::new(BTreeMap::new()),
            dead: Mutex::new(Vec::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        let cancel = CancellationToken::new();
        let current = view.borrow().clone();
        let (events_tx, events_rx) = mpsc::channel(1024);
        let (commands_tx, commands_rx) = mpsc::channel(4);
        spawn_watched(
            &shared,
            "connection",
            &cancel,
            link.clone().run(cancel.child_token()),
        );
        spawn_watched(
            &shared,
            "worker events",
            &cancel,
            listen_worker_events(
                link.clone(),
                WorkerChannels::of(&current.machine_id, &current.workers),
                events_tx.clone(),
                cancel.child_token(),
            ),
        );
        let publisher = Publisher {
            channel: status_channel(&current.machine_id),
            shared: shared.clone(),
            status_interval: config.status_interval,
            event_debounce: config.event_debounce,
            shutdown_timeout: config.shutdown_timeout,
            view,
            current,
            truths: HashMap::new(),
            delivered_initial: false,
            delivered_ready: false,
        };
        let machine_id = publisher.current.machine_id.clone();
        let task = spawn_watched(
            &shared,
            "publisher",
            &cancel,
            publisher.run(events_rx, commands_rx, cancel.child_token()),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                commands: commands_tx,
                events: events_tx,
                task: Mutex::new(Some(task)),
                cancel,
                shutdown_timeout: config.shutdown_timeout,
                machine_id,
            }),
        })
    }

    /// `status.workers` of the last status message built (empty before the first), by
    /// `WORKER_ID`; cheap, never blocks on Redis.
    pub fn workers(&self) -> BTreeMap<String, WorkerStatus> {
        self.inner
            .shared
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Each worker's job counts from its own events (empty before the first), by `WORKER_ID`;
    /// cheap, never blocks on Redis.
    pub fn job_tallies(&self) -> BTreeMap<String, JobTally> {
        self.inner
            .shared
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why workers are unhealthy by their own word (a failed connector), one line per worker
    /// (`worker m1-worker-openai-0: connector openai reported error (unhealthy)`), from the last
    /// status message built.
    pub fn worker_problems(&self) -> Vec<String> {
        self.worker_problems_where(|_| true)
    }

    /// [`Broker::worker_problems`] of the workers whose connectors did not load, a fault that lasts
    /// until the worker restarts (what `/health` counts).
    pub fn worker_load_problems(&self) -> Vec<String> {
        self.worker_problems_where(|status| status.connectors_not_loaded)
    }

    fn worker_problems_where(&self, keep: impl Fn(&workers::WorkerStatus) -> bool) -> Vec<String> {
        self.workers()
            .iter()
            .filter(|(_, status)| !status.healthy && keep(status))
            .map(|(id, status)| {
                format!(
                    "worker {id}: {}",
                    status.reason.as_deref().unwrap_or("unhealthy")
                )
            })
            .collect()
    }

    /// Records what worker `worker_id`'s own output said about its connectors (see
    /// [`ConnectorVerdict`]), as the machine's own worker event: the worker is unhealthy while a
    /// problem stands, and an event-driven status goes out. Never blocks; dropped (with a log line)
    /// when the publisher is far behind.
    pub fn worker_log_said(&self, worker_id: &str, verdict: ConnectorVerdict) {
        let event = WorkerEvent {
            worker_id: worker_id.to_owned(),
            event_type: workers::WORKER_LOG_EVENT.to_owned(),
            data: serde_json::json!({
                "problem": verdict.load_problem,
                "init_failures": verdict.init_failures,
            }),
            timestamp: None,
        };
        if self.inner.events.try_send(event).is_err() {
            log!(
                "cannot record what worker {worker_id} said about its connectors: the publisher is behind or stopped"
            );
        }
    }

    /// The broker's state for `/health`; cheap, never blocks on Redis.
    pub fn status(&self) -> BrokerStatus {
        status_of(&self.inner.shared)
    }

    /// Publishes a `periodic` status now (`POST /refresh-status`), the workers' state read fresh.
    /// Fails when Redis is unreachable or the broker has shut down.
    pub async fn refresh(&self) -> Result<(), BrokerError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let not_published = |reason: String| BrokerError::RefreshNotPublished { reason };
        if self
            .inner
            .commands
            .send(Command::Refresh(reply_tx))
            .await
            .is_err()
        {
            return Err(not_published("the broker has shut down".to_owned()));
        }
        let limit = self.inner.shutdown_timeout + Duration::from_millis(500);
        match tokio::time::timeout(limit, reply_rx).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(not_published(self.status().summary())),
            Ok(Err(_)) => Err(not_published("the broker has shut down".to_owned())),
            Err(_) => Err(not_published(format!(
                "no answer within {} ms",
                limit.as_millis()
            ))),
        }
    }

    /// For each `WORKER_ID` given, in order: `Some(job id)` while the worker is busy (the queue's
    /// `jobs:active:<id>` holds a job; only if that cannot be read, its `worker:<id>` hash has the
    /// `status` busy that `findMatchingJob` writes; the id is empty when none was named), else
    /// `None` (rule in [`workers`]). Read fresh from Redis (one pipeline); while Redis is unreachable, what
    /// the last status refresh or worker event said. Works after [`Broker::shutdown`] too, so the
    /// supervisor can wait for busy workers once the final status is out.
    pub(crate) async fn busy_workers(&self, worker_ids: &[String]) -> Vec<Option<String>> {
        let shared = &self.inner.shared;
        let last_known = || {
            let busy = shared.busy.lock().unwrap_or_else(|p| p.into_inner());
            worker_ids
                .iter()
                .map(|id| busy.get(id).cloned().flatten())
                .collect()
        };
        let Some(mut conn) = shared.link.current() else {
            return last_known();
        };
        let mut pipe = redis::pipe();
        for id in worker_ids {
            pipe.cmd("HGETALL").arg(format!("worker:{id}"));
            pipe.cmd("HKEYS").arg(format!("jobs:active:{id}"));
        }
        let limit = shared.link.settings().response_timeout;
        match tokio::time::timeout(limit, pipe.query_async::<Vec<redis::Value>>(&mut conn.conn))
            .await
        {
            Ok(Ok(replies)) if replies.len() == 2 * worker_ids.len() => {
                let read_at = now_ms();
                replies
                    .chunks(2)
                    .map(|pair| {
                        let mut truth = WorkerTruth {
                            hash: redis::from_redis_value_ref(&pair[0]).unwrap_or_default(),
                            ..Default::default()
                        };
                        if let Ok(jobs) = redis::from_redis_value_ref::<Vec<String>>(&pair[1]) {
                            truth.read_active_jobs(jobs, read_at);
                        }
                        truth.busy_with()
                    })
                    .collect()
            }
            _ => last_known(),
        }
    }

    /// Hands back to the queue every job the killed worker `worker_id` still holds (see
    /// [`handback`]), logging one line per job with `why`, and returns the outcomes. The worker's
    /// processes must be gone. Works after [`Broker::shutdown`] too (the stop kills workers once the
    /// final status is out). Bounded by [`JOB_HANDBACK_TIMEOUT`]; when Redis cannot be reached or
    /// does not answer in time, says so in the log and returns nothing: the job then stays with the
    /// dead worker until the API's orphan clean-up.
    pub(crate) async fn hand_back(
        &self,
        worker_id: &str,
        known: &str,
        why: &str,
    ) -> Vec<handback::HandBack> {
        let link = &self.inner.shared.link;
        let job_words = if known.is_empty() {
            "its job".to_owned()
        } else {
            format!("job {known}")
        };
        let attempt = async {
            let mut conn = match link.current() {
                Some(conn) => conn,
                None => link.connect_now().await.map_err(|e| e.to_string())?,
            };
            handback::hand_back(&mut conn, &self.inner.machine_id, worker_id, known, why)
                .await
                .map_err(|e| link.url().redact(&e.to_string()))
        };
        match tokio::time::timeout(JOB_HANDBACK_TIMEOUT, attempt).await {
            Ok(Ok(outcomes)) => {
                if outcomes.is_empty() {
                    log!("worker {worker_id} held no job to hand back ({why})");
                }
                for outcome in &outcomes {
                    match outcome {
                        handback::HandBack::HandedBack { .. } => {
                            log!("{outcome}; worker {worker_id} was killed: {why}")
                        }
                        _ => log!("{outcome} (worker {worker_id}: {why})"),
                    }
                }
                outcomes
            }
            Ok(Err(err)) => {
                log!(
                    "could not hand {job_words} of worker {worker_id} back to the queue: {err}; it stays assigned to the dead worker until the API's orphan clean-up"
                );
                Vec::new()
            }
            Err(_) => {
                log!(
                    "could not hand {job_words} of worker {worker_id} back to the queue: redis did not answer within {} ms; it stays assigned to the dead worker until the API's orphan clean-up",
                    JOB_HANDBACK_TIMEOUT.as_millis()
                );
                Vec::new()
            }
        }
    }

    /// Publishes the final `shutdown` message and stops the broker's tasks, within the configured
    /// shutdown timeout. Call it before signalling the children. A second call does nothing.
    pub async fn shutdown(&self) -> Result<(), BrokerError> {
        self.inner
            .shared
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        let Some(task) = task else {
            return Ok(());
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        let limit = self.inner.shutdown_timeout;
        let outcome = if self
            .inner
            .commands
            .send(Command::Shutdown(reply_tx))
            .await
            .is_ok()
        {
            match tokio::time::timeout(limit + Duration::from_millis(500), reply_rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(BrokerError::ShutdownNotPublished {
                    reason: "the broker task ended before publishing".to_owned(),
                }),
                Err(_) => Err(BrokerError::ShutdownNotPublished {
                    reason: format!("no answer within {} ms", limit.as_millis()),
                }),
            }
        } else {
            Err(BrokerError::ShutdownNotPublished {
                reason: "the broker task is gone".to_owned(),
            })
        };
        self.inner.cancel.cancel();
        let abort = task.abort_handle();
        match tokio::time::timeout(Duration::from_secs(1), task).await {
            Ok(Err(err)) if err.is_panic() => {
                return Err(BrokerError::TaskFailed {
                    reason: err.to_string(),
                });
            }
            Ok(_) => {}
            Err(_) => abort.abort(),
        }
        outcome
    }
}

/// The status as `/health` shows it: a background task that died turns the connection into
/// `unreachable` with the reason, whatever the link last said (its task may be the dead one).
fn status_of(shared: &Shared) -> BrokerStatus {
    let stats = shared.stats();
    let dead = shared
        .dead
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .clone();
    let connection = match dead.first() {
        None => shared.link.state(),
        Some((since_ms, _)) => ConnectionState::Unreachable {
            since_ms: *since_ms,
            last_error: format!(
                "{} (a bug); status is no longer published, restart the machine",
                dead.iter()
                    .map(|(_, what)| what.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    BrokerStatus {
        url: shared.link.url().redacted().to_owned(),
        connection,
        preflight: stats.preflight.clone(),
        published: stats.published,
        last_published_ms: stats.last_published_ms,
        last_update_type: stats.last_update_type,
    }
}

fn preflight_state(report: PreflightReport, url: &str) -> PreflightState {
    if report.passed() {
        PreflightState::Passed {
            redis_version: report.redis_version,
        }
    } else {
        for line in report.warning_lines(url) {
            log!("{line}");
        }
        PreflightState::Problems {
            redis_version: report.redis_version,
            problems: report.problems,
        }
    }
}

struct Publisher {
    channel: String,
    shared: Arc<Shared>,
    status_interval: Duration,
    event_debounce: Duration,
    shutdown_timeout: Duration,
    view: watch::Receiver<MachineView>,
    current: MachineView,
    truths: HashMap<String, WorkerTruth>,
    delivered_initial: bool,
    delivered_ready: bool,
}

impl Publisher {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<WorkerEvent>,
        mut commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
    ) {
        let link = self.shared.link.clone();
        let mut connections = link.watch_current();
        connections.borrow_and_update();
        self.view.borrow_and_update();
        let mut ticker =
            tokio::time::interval_at(Instant::now() + self.status_interval, self.status_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.catch_up(&mut ticker).await;
        let mut pending_event = false;
        let mut last_event_at: Option<Instant> = None;
        let mut view_open = true;
        let mut connections_open = true;
        loop {
            let event_due = last_event_at.map_or_else(Instant::now, |at| at + self.event_debounce);
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                command = commands.recv() => {
                    match command {
                        Some(Command::Refresh(reply)) => {
                            self.recheck_preflight().await;
                            let published = self.publish(UpdateType::Periodic).await;
                            let _ = reply.send(published);
                        }
                        Some(Command::Shutdown(reply)) => {
                            let _ = reply.send(self.publish_shutdown().await);
                            return;
                        }
                        None => return,
                    }
                }
                changed = self.view.changed(), if view_open => {
                    if changed.is_err() {
                        // The supervisor dropped its sender; keep reporting the last view.
                        view_open = false;
                        continue;
                    }
                    let next = self.view.borrow_and_update().clone();
                    if next == self.current {
                        continue;
                    }
                    // `machine_ready` is sent once per run, however often the phase flips.
                    let became_ready = self.current.phase != Phase::Ready
                        && next.phase == Phase::Ready
                        && !self.delivered_ready;
                    self.current = next;
                    if became_ready {
                        self.publish_ready(&mut ticker).await;
                    } else {
                        pending_event = true;
                    }
                }
                Some(event) = events.recv() => {
                    let truth = self.truths.entry(event.worker_id.clone()).or_default();
                    truth.receive(&event, now_ms());
                    self.shared.jobs.lock().unwrap_or_else(|p| p.into_inner()).entry(event.worker_id.clone()).or_default().count(&event, now_ms());
                    let busy = truth.busy_with();
                    self.shared.busy.lock().unwrap_or_else(|p| p.into_inner()).insert(event.worker_id.clone(), busy);
                    pending_event = true;
                }
                () = tokio::time::sleep_until(event_due), if pending_event => {
                    pending_event = false;
                    last_event_at = Some(Instant::now());
                    self.publish(UpdateType::EventDriven).await;
                }
                _ = ticker.tick() => {
                    self.recheck_preflight().await;
                    if !self.catch_up(&mut ticker).await {
                        self.publish(UpdateType::Periodic).await;
                    }
                }
                changed = connections.changed(), if connections_open => {
                    if changed.is_err() {
                        connections_open = false;
                        continue;
                    }
                    let connected = connections.borrow_and_update().is_some();
                    if connected {
                        self.on_reconnect(&mut ticker).await;
                    }
                }
            }
        }
    }

    /// Sends what was missed: `initial`, then `machine_ready` + `periodic` once ready. Returns
    /// whether it tried to send anything.
    async fn catch_up(&mut self, ticker: &mut tokio::time::Interval) -> bool {
        let mut tried = false;
        if !self.delivered_initial {
            tried = true;
            if !self.publish(UpdateType::Initial).await {
                return true;
            }
            self.delivered_initial = true;
        }
        if self.current.phase == Phase::Ready && !self.delivered_ready {
            tried = true;
            self.publish_ready(ticker).await;
        }
        tried
    }

    async fn publish_ready(&mut self, ticker: &mut tokio::time::Interval) {
        if !self.delivered_initial {
            // The API never saw us: introduce the machine first.
            if !self.publish(UpdateType::Initial).await {
                return;
            }
            self.delivered_initial = true;
        }
        if self.publish(UpdateType::MachineReady).await {
            self.delivered_ready = true;
            self.publish(UpdateType::Periodic).await;
            ticker.reset();
        }
    }

    /// Runs the preflight again while it reports problems (every status interval and on a refresh), so
    /// its warning goes away once the cause does: the queue's functions loaded after the machine
    /// started (issue 21). Logs only a change; a Redis error goes to the link like any other.
    async fn recheck_preflight(&mut self) {
        let before = match &self.shared.stats().preflight {
            PreflightState::Problems { problems, .. } => problems.clone(),
            _ => return,
        };
        let Some(mut conn) = self.shared.link.current() else {
            return;
        };
        match preflight::run(&mut conn.conn).await {
            Ok(report) if report.passed() => {
                log!(
                    "broker preflight: passed now (redis {}, {MATCH_FUNCTION} loaded); its warning is cleared",
                    report.redis_version.as_deref().unwrap_or("?")
                );
                self.shared.stats().preflight = PreflightState::Passed {
                    redis_version: report.redis_version,
                };
            }
            Ok(report) if report.problems != before => {
                let state = preflight_state(report, self.shared.link.url().redacted());
                self.shared.stats().preflight = state;
            }
            Ok(_) => {}
            Err(err) => {
                self.shared.link.report(conn.generation, &err);
            }
        }
    }

    async fn on_reconnect(&mut self, ticker: &mut tokio::time::Interval) {
        let pending = matches!(self.shared.stats().preflight, PreflightState::Pending);
        if pending && let Some(mut conn) = self.shared.link.current() {
            match preflight::run(&mut conn.conn).await {
                Ok(report) => {
                    let state = preflight_state(report, self.shared.link.url().redacted());
                    self.shared.stats().preflight = state;
                }
                Err(err) => {
                    self.shared.link.report(conn.generation, &err);
                    return;
                }
            }
        }
        if !self.catch_up(ticker).await {
            self.publish(UpdateType::Periodic).await;
        }
    }

    async fn publish_shutdown(&mut self) -> Result<(), BrokerError> {
        self.current = self.view.borrow().clone();
        let limit = self.shutdown_timeout;
        match tokio::time::timeout(limit, self.publish(UpdateType::Shutdown)).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(BrokerError::ShutdownNotPublished {
                reason: self
                    .shared
                    .link
                    .url()
                    .redact(&match self.shared.link.state() {
                        ConnectionState::Unreachable { last_error, .. } => {
                            format!("redis unreachable: {last_error}")
                        }
                        _ => "redis not connected".to_owned(),
                    }),
            }),
            Err(_) => Err(BrokerError::ShutdownNotPublished {
                reason: format!("redis did not answer within {} ms", limit.as_millis()),
            }),
        }
    }

    /// Refreshes the workers' own state and publishes one message; `false` when it did not go out.
    async fn publish(&mut self, update_type: UpdateType) -> bool {
        let link = self.shared.link.clone();
        let Some(mut conn) = link.current() else {
            return false;
        };
        // The shutdown message must go out fast; the last refresh is at most one interval old.
        if update_type != UpdateType::Shutdown
            && let Err(err) = self.refresh(&mut conn).await
        {
            if link.report(conn.generation, &err) {
                return false;
            }
            log!(
                "reading worker state from redis failed: {}",
                link.url().redact(&err.to_string())
            );
        }
        let message = message::build(&self.current, &self.truths, update_type, now_ms());
        message.status.workers.clone_into(
            &mut self
                .shared
                .workers
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let payload = match serde_json::to_string(&message) {
            Ok(payload) => payload,
            Err(err) => {
                log!(
                    "cannot encode the {} status message: {err}",
                    update_type.as_str()
                );
                return false;
            }
        };
        let published: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(payload)
            .query_async(&mut conn.conn)
            .await;
        match published {
            Ok(_) => {
                let mut stats = self.shared.stats();
                stats.published += 1;
                stats.last_published_ms = Some(message.timestamp);
                stats.last_update_type = Some(update_type);
                true
            }
            Err(err) => {
                if !link.report(conn.generation, &err) {
                    log!(
                        "publishing the {} status failed: {}",
                        update_type.as_str(),
                        link.url().redact(&err.to_string())
                    );
                }
                false
            }
        }
    }

    async fn refresh(&mut self, conn: &mut Conn) -> Result<(), redis::RedisError> {
        if self.current.workers.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for worker in &self.current.workers {
            pipe.cmd("HGETALL")
                .arg(format!("worker:{}", worker.worker_id));
            pipe.cmd("TTL")
                .arg(format!("worker:{}:heartbeat", worker.worker_id));
            pipe.cmd("HKEYS")
                .arg(format!("jobs:active:{}", worker.worker_id));
        }
        let replies: Vec<redis::Value> = pipe.query_async(&mut conn.conn).await?;
        let read_at = now_ms();
        for (worker, triple) in self.current.workers.iter().zip(replies.chunks(3)) {
            let truth = self.truths.entry(worker.worker_id.clone()).or_default();
            truth.hash = redis::from_redis_value_ref(&triple[0]).unwrap_or_default();
            truth.heartbeat_ttl = triple
                .get(1)
                .and_then(|v| redis::from_redis_value_ref(v).ok());
            if let Some(jobs) = triple
                .get(2)
                .and_then(|v| redis::from_redis_value_ref::<Vec<String>>(v).ok())
            {
                truth.read_active_jobs(jobs, read_at);
            }
        }
        let mut busy = self.shared.busy.lock().unwrap_or_else(|p| p.into_inner());
        for worker in &self.current.workers {
            let now = self
                .truths
                .get(&worker.worker_id)
                .and_then(WorkerTruth::busy_with);
            busy.insert(worker.worker_id.clone(), now);
        }
        Ok(())
    }
}

/// Escapes glob characters so a machine id is matched literally in a PSUBSCRIBE pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The channel of worker `worker_id`'s events (`machine:<MACHINE_ID>:worker:<WORKER_ID>`, contract §5).
pub(crate) fn worker_channel(machine_id: &str, worker_id: &str) -> String {
    format!("machine:{machine_id}:worker:{worker_id}")
}

/// What the worker-event listener subscribes to: each planned worker's own channel (`SUBSCRIBE`), or,
/// for a machine with no planned worker, the pattern `machine:<id>:worker:*` (`PSUBSCRIBE`).
///
/// Exact channels because Redis matches every `PUBLISH` against every pattern subscription on the
/// server: with one pattern per machine a publish costs O(machines) and the fleet's publishes
/// O(machines²) (`cargo bench --bench fleet`: 2.5 µs per publish with 1 machine, 25 µs with 200),
/// while an exact channel is one hash lookup.
#[derive(Debug, Clone)]
enum WorkerChannels {
    Exact(Vec<String>),
    Pattern(String),
}

impl WorkerChannels {
    fn of(machine_id: &str, workers: &[view::WorkerView]) -> Self {
        if workers.is_empty() {
            Self::Pattern(format!("machine:{}:worker:*", glob_escape(machine_id)))
        } else {
            Self::Exact(
                workers
                    .iter()
                    .map(|w| worker_channel(machine_id, &w.worker_id))
                    .collect(),
            )
        }
    }

    async fn subscribe(&self, pubsub: &mut redis::aio::PubSub) -> redis::RedisResult<()> {
        match self {
            Self::Exact(channels) => pubsub.subscribe(channels).await,
            Self::Pattern(pattern) => pubsub.psubscribe(pattern).await,
        }
    }
}

impl std::fmt::Display for WorkerChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(channels) => write!(f, "the {} worker channels", channels.len()),
            Self::Pattern(pattern) => write!(f, "{pattern}"),
        }
    }
}

/// Keeps the subscription to the workers' event channels ([`WorkerChannels`]) open and forwards
/// parsed events.
async fn listen_worker_events(
    link: Arc<Link>,
    channels: WorkerChannels,
    events: mpsc::Sender<WorkerEvent>,
    cancel: CancellationToken,
) {
    let pattern = &channels;
    let settings = link.settings();
    let mut connections = link.watch_current();
    let mut delay = settings.backoff_min;
    loop {
        // Wait for the main link: it owns the view of whether Redis is reachable.
        while connections.borrow_and_update().is_none() {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = connections.changed() => if changed.is_err() { return },
            }
        }
        let subscribe = async {
            let mut pubsub = link.client().get_async_pubsub().await?;
            channels.subscribe(&mut pubsub).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let limit = settings.connect_timeout + settings.response_timeout;
        match tokio::time::timeout(limit, subscribe).await {
            Ok(Ok(pubsub)) => {
                delay = settings.backoff_min;
                let mut stream = Box::pin(pubsub.into_on_message());
                loop {
                    let next = std::future::poll_fn(|cx| Pin::as_mut(&mut stream).poll_next(cx));
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        // Any change of the main link (lost or replaced) means this socket is suspect too.
                        changed = connections.changed() => {
                            if changed.is_err() { return }
                            break;
                        }
                        message = next => {
                            let Some(message) = message else {
                                // The stream ends when the socket does; let the main link notice at once.
                                link.check().await;
                                break;
                            };
                            let payload: String = match message.get_payload() {
                                Ok(payload) => payload,
                                Err(_) => continue,
                            };
                            match WorkerEvent::parse(message.get_channel_name(), &payload) {
                                Some(event) => {
                                    if events.send(event).await.is_err() {
                                        return;
                                    }
                                }
                                None => log!(
                                    "ignoring a malformed worker event on {}",
                                    message.get_channel_name()
                                ),
                            }
                        }
                    }
                }
            }
            Ok(Err(err)) => {
                if !link.report(link.current().map_or(0, |c| c.generation), &err) {
                    log!(
                        "subscribing to {pattern} failed: {}",
                        link.url().redact(&err.to_string())
                    );
                }
            }
            Err(_) => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(settings.backoff_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Arc<Shared> {
        let url = RedisUrl::parse("HUB_REDIS_URL", "redis://:secret@127.0.0.1:1").unwrap();
        let link = Link::new(
            url,
            LinkSettings {
                connect_timeout: Duration::from_millis(100),
                response_timeout: Duration::from_millis(100),
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_millis(100),
            },
        )
        .unwrap();
        Arc::new(Shared {
            link,
            stats: Mutex::new(Stats {
                preflight: PreflightState::Off,
                published: 0,
                last_published_ms: None,
                last_update_type: None,
            }),
            busy: Mutex::new(HashMap::new()),
            workers: Mutex::new(BTreeMap::new()),
            jobs: Mutex::new(BTreeMap::new()),
            dead: Mutex::new(Vec::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    #[tokio::test]
    async fn a_task_that_dies_makes_the_broker_unreachable_with_the_reason() {
        let shared = shared();
        let cancel = CancellationToken::new();
        assert!(!matches!(
            status_of(&shared).connection,
            ConnectionState::Unreachable { .. }
        ));
        let task = spawn_watched(&shared, "publisher", &cancel, async {
            panic!("a bug in a broker task");
        });
        assert!(task.await.unwrap_err().is_panic());
        let status = status_of(&shared);
        let ConnectionState::Unreachable { last_error, .. } = &status.connection else {
            panic!("{status:?}");
        };
        assert!(
            last_error.contains("the broker's publisher task panicked"),
            "{last_error}"
        );
        assert!(!status.is_connected());
        assert!(!status.url.contains("secret"));
    }

    #[tokio::test]
    async fn tasks_ending_on_purpose_are_not_reported() {
        let shared = shared();
        let cancel = CancellationToken::new();
        cancel.cancel();
        spawn_watched(&shared, "connection", &cancel, async {})
            .await
            .unwrap();
        shared
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let live = CancellationToken::new();
        spawn_watched(&shared, "publisher", &live, async {})
            .await
            .unwrap();
        assert!(shared.dead.lock().unwrap().is_empty());
    }
}
