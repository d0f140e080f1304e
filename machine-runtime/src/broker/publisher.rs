//! The status publisher: one task that publishes `initial`, `machine_ready`, `periodic`,
//! `event_driven` and `shutdown` messages on the machine's status channel (order in [`super`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::error::BrokerError;
use super::link::{Conn, ConnectionState};
use super::message::{self, UpdateType};
use super::preflight::{self, MATCH_FUNCTION};
use super::shared::Shared;
use super::status::{PreflightState, preflight_state};
use super::time::now_ms;
use super::view::{MachineView, Phase};
use super::workers::{WorkerEvent, WorkerTruth};

pub(super) enum Command {
    Shutdown(oneshot::Sender<Result<(), BrokerError>>),
    /// Publish a `periodic` now; answers whether it went out.
    Refresh(oneshot::Sender<bool>),
}

pub(super) struct Publisher {
    pub(super) channel: String,
    pub(super) shared: Arc<Shared>,
    pub(super) status_interval: Duration,
    pub(super) event_debounce: Duration,
    pub(super) shutdown_timeout: Duration,
    pub(super) view: watch::Receiver<MachineView>,
    pub(super) current: MachineView,
    pub(super) truths: HashMap<String, WorkerTruth>,
    pub(super) delivered_initial: bool,
    pub(super) delivered_ready: bool,
}

impl Publisher {
    pub(super) async fn run(
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
                    if self.on_view_change(&mut ticker).await {
                        pending_event = true;
                    }
                }
                Some(event) = events.recv() => {
                    self.on_worker_event(&event);
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

    /// Takes the supervisor's new view; `true` when it calls for an event-driven status (a view that
    /// became ready publishes `machine_ready` at once instead; an unchanged one calls for nothing).
    async fn on_view_change(&mut self, ticker: &mut tokio::time::Interval) -> bool {
        let next = self.view.borrow_and_update().clone();
        if next == self.current {
            return false;
        }
        // `machine_ready` is sent once per run, however often the phase flips.
        let became_ready = self.current.phase != Phase::Ready
            && next.phase == Phase::Ready
            && !self.delivered_ready;
        self.current = next;
        if became_ready {
            self.publish_ready(ticker).await;
            false
        } else {
            true
        }
    }

    /// Records a worker's own event: its state, its job counts, whether it is busy.
    fn on_worker_event(&mut self, event: &WorkerEvent) {
        let truth = self.truths.entry(event.worker_id.clone()).or_default();
        truth.receive(event, now_ms());
        self.shared
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(event.worker_id.clone())
            .or_default()
            .count(event, now_ms());
        let busy = truth.busy_with();
        self.shared
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(event.worker_id.clone(), busy);
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
