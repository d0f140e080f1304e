//! [`Broker`], the running broker's handle: starts the link, the listener and the publisher, and
//! answers `/health`, `/metrics`, the drain (busy workers), hand-backs and the final shutdown.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::{BrokerConfig, PreflightMode};
use super::error::BrokerError;
use super::handback;
use super::link::Link;
use super::listener::{WorkerChannels, listen_worker_events};
use super::preflight;
use super::publisher::{Command, Publisher};
use super::shared::{Shared, status_of};
use super::status::{BrokerStatus, PreflightState, preflight_state};
use super::tally::JobTally;
use super::time::now_ms;
use super::view::MachineView;
use super::watchdog::spawn_watched;
use super::workers::{self, ConnectorVerdict, WorkerEvent, WorkerStatus, WorkerTruth};
use super::{JOB_HANDBACK_TIMEOUT, status_channel};

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
        let preflight = connect_at_start(&link, &config).await?;
        Ok(Self::spawn(link, preflight, &config, view))
    }

    /// Starts the broker's tasks on `link`: the connection, the worker-event listener and the
    /// publisher, each watched ([`spawn_watched`]).
    fn spawn(
        link: Arc<Link>,
        preflight: PreflightState,
        config: &BrokerConfig,
        view: watch::Receiver<MachineView>,
    ) -> Self {
        let shared = Arc::new(Shared::new(link.clone(), preflight));
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
        Self {
            inner: Arc::new(Inner {
                shared,
                commands: commands_tx,
                events: events_tx,
                task: Mutex::new(Some(task)),
                cancel,
                shutdown_timeout: config.shutdown_timeout,
                machine_id,
            }),
        }
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

/// The start's one connection attempt and, unless `BROKER_PREFLIGHT=off`, the preflight on it:
/// what `/health` shows of the preflight until the next check. Fails for refused authentication
/// or TLS and, with `BROKER_PREFLIGHT=require`, a failed or impossible preflight; an unreachable
/// Redis is only logged.
async fn connect_at_start(
    link: &Arc<Link>,
    config: &BrokerConfig,
) -> Result<PreflightState, BrokerError> {
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
    Ok(preflight)
}
