//! The simulation-websocket protocol (worker contract §4) on one WebSocket connection: jobs that report
//! progress and complete, status queries, cancellation, ping/pong, and an `error` for every bad message.
//!
//! Messages are JSON text frames with a `type`. From the worker: `simulation_job` (`job_id`, `job_type`,
//! `payload`, `config{processing_time_ms, steps, progress_interval_ms}`), `ping`, `query_status`,
//! `cancel_simulation`. From the service: `simulation_ready` (on connect), `simulation_started`,
//! `simulation_progress` (`progress` 0–100, `current_step`, `total_steps`), `simulation_complete`,
//! `simulation_cancelled`, `simulation_status`, `pong`, `error`. A job is named by `job_id` (also
//! accepted: `jobId`, `id`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Identity;

/// Most steps one job may have.
pub const MAX_STEPS: u64 = 10_000;
/// Longest simulated processing time of one job (one hour), in milliseconds.
pub(crate) const MAX_PROCESSING_TIME_MS: u64 = 3_600_000;
/// Shortest progress interval a job may ask for, in milliseconds (keeps a job from flooding its worker).
pub(crate) const MIN_PROGRESS_INTERVAL_MS: u64 = 10;
/// How many finished jobs `query_status` still knows.
const FINISHED_KEPT: usize = 1_000;
/// Messages queued for one connection before its jobs wait for the writer.
const OUTBOX: usize = 256;

/// What a job's `config` leaves out: `steps` (`SIMULATION_STEP_COUNT`) and the time per step
/// (`SIMULATION_STEP_DELAY_MS`); a job's processing time defaults to `steps × step_delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobDefaults {
    /// Steps of a job, 1 to [`MAX_STEPS`].
    pub steps: u32,
    /// Simulated time of one step.
    pub step_delay: Duration,
}

impl Default for JobDefaults {
    /// The values of `profiles/components/simulation.env`: 10 steps of 200 ms.
    fn default() -> Self {
        Self {
            steps: 10,
            step_delay: Duration::from_millis(200),
        }
    }
}

/// One accepted `simulation_job`, its config resolved against the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPlan {
    /// The worker's job id (`job_id`, `jobId` or `id`), as a string.
    pub job_id: String,
    /// `job_type`, when given (the worker sends the job's `service_required`).
    pub job_type: Option<String>,
    /// Steps reported as `current_step`/`total_steps`.
    pub steps: u32,
    /// Total simulated time.
    pub processing_time: Duration,
    /// Time between two `simulation_progress` messages.
    pub progress_interval: Duration,
}

/// A message from the worker, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// `simulation_job`.
    Job(JobPlan),
    /// `ping`.
    Ping,
    /// `query_status`, for one job or (without an id) for the service.
    QueryStatus(Option<String>),
    /// `cancel_simulation`.
    Cancel(String),
}

/// Why a message was refused: answered with an `error` message carrying `job_id` when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The job the message named, if it named one.
    pub job_id: Option<String>,
    /// What is wrong and what is allowed (lowercase, no trailing period).
    pub message: String,
}

/// The job id of a message: `job_id`, else `jobId`, else `id`; a string or a number.
fn job_id_of(message: &Map<String, Value>) -> Result<Option<String>, String> {
    for key in ["job_id", "jobId", "id"] {
        match message.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if !s.is_empty() => return Ok(Some(s.clone())),
            Some(Value::Number(n)) => return Ok(Some(n.to_string())),
            Some(other) => {
                return Err(format!(
                    "{key} must be a non-empty string or a number, not {other}"
                ));
            }
        }
    }
    Ok(None)
}

/// A whole number of milliseconds (or steps) from a config field: a non-negative number or a numeric string.
fn config_number(
    config: &Map<String, Value>,
    field: &str,
    problems: &mut Vec<String>,
) -> Option<u64> {
    let value = config.get(field)?;
    let number = match value {
        Value::Null => return None,
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match number {
        Some(n) if n.is_finite() && n >= 0.0 && n <= u64::MAX as f64 =>
        {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some(n.round() as u64)
        }
        _ => {
            problems.push(format!(
                "config.{field} is {value}, which is not a non-negative number"
            ));
            None
        }
    }
}

/// Parses and checks one text message; every problem of a `simulation_job` is named at once.
pub fn parse(text: &str, defaults: JobDefaults) -> Result<Incoming, Refusal> {
    let refuse = |job_id: Option<String>, message: String| Refusal { job_id, message };
    let value: Value = serde_json::from_str(text).map_err(|err| {
        refuse(
            None,
            format!("message is not JSON ({err}); send a JSON object with a \"type\""),
        )
    })?;
    let Value::Object(message) = value else {
        return Err(refuse(
            None,
            "message must be a JSON object with a \"type\"".to_owned(),
        ));
    };
    let job_id = job_id_of(&message).map_err(|m| refuse(None, m))?;
    let kind = message.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "ping" => Ok(Incoming::Ping),
        "query_status" => Ok(Incoming::QueryStatus(job_id)),
        "cancel_simulation" => job_id.map(Incoming::Cancel).ok_or_else(|| {
            refuse(
                None,
                "cancel_simulation needs the job_id of the simulation to cancel".to_owned(),
            )
        }),
        "simulation_job" => {
            let Some(job_id) = job_id else {
                return Err(refuse(
                    None,
                    "simulation_job needs a job_id (also accepted: jobId, id)".to_owned(),
                ));
            };
            let mut problems = Vec::new();
            let empty = Map::new();
            let config = match message.get("config") {
                None | Some(Value::Null) => &empty,
                Some(Value::Object(config)) => config,
                Some(other) => {
                    problems.push(format!("config must be an object, not {other}"));
                    &empty
                }
            };
            let steps = config_number(config, "steps", &mut problems);
            let processing = config_number(config, "processing_time_ms", &mut problems);
            let interval = config_number(config, "progress_interval_ms", &mut problems);
            if let Some(steps) = steps.filter(|s| !(1..=MAX_STEPS).contains(s)) {
                problems.push(format!("config.steps is {steps}; allowed: 1 to {MAX_STEPS}"));
            }
            if let Some(ms) = processing.filter(|ms| *ms > MAX_PROCESSING_TIME_MS) {
                problems.push(format!(
                    "config.processing_time_ms is {ms}; allowed: 0 to {MAX_PROCESSING_TIME_MS}"
                ));
            }
            let intervals = MIN_PROGRESS_INTERVAL_MS..=MAX_PROCESSING_TIME_MS;
            if let Some(ms) = interval.filter(|ms| !intervals.contains(ms)) {
                problems.push(format!(
                    "config.progress_interval_ms is {ms}; allowed: {MIN_PROGRESS_INTERVAL_MS} to {MAX_PROCESSING_TIME_MS}"
                ));
            }
            let job_type = match message.get("job_type") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    problems.push(format!("job_type must be a string, not {other}"));
                    None
                }
            };
            if !problems.is_empty() {
                return Err(refuse(Some(job_id), problems.join("; ")));
            }
            let steps = steps.map_or(defaults.steps, |s| u32::try_from(s).unwrap_or(u32::MAX));
            let processing_time = processing.map_or_else(
                || defaults.step_delay.saturating_mul(steps),
                Duration::from_millis,
            );
            let progress_interval = interval.map_or_else(
                || processing_time / steps,
                Duration::from_millis,
            );
            Ok(Incoming::Job(JobPlan {
                job_id,
                job_type,
                steps,
                processing_time,
                progress_interval,
            }))
        }
        "" => Err(refuse(
            job_id,
            "message has no \"type\"; expected one of simulation_job, ping, query_status, cancel_simulation"
                .to_owned(),
        )),
        other => Err(refuse(
            job_id,
            format!(
                "unknown message type \"{other}\"; expected one of simulation_job, ping, query_status, cancel_simulation"
            ),
        )),
    }
}

/// The progress points of a job: `(elapsed, progress 0–100, current_step)`, one per interval and one at the end.
pub(crate) fn schedule(plan: &JobPlan) -> Vec<(Duration, u8, u32)> {
    let total = plan.processing_time;
    if total.is_zero() {
        return vec![(Duration::ZERO, 100, plan.steps)];
    }
    let interval = plan.progress_interval.max(Duration::from_millis(1));
    let mut points = Vec::new();
    let mut at = interval.min(total);
    loop {
        // Integer nanoseconds: floating point would put 0.2 × 5 steps at step 0.
        let (at_ns, total_ns) = (at.as_nanos(), total.as_nanos());
        let progress = u8::try_from(at_ns * 100 / total_ns).unwrap_or(100).min(100);
        let step = u32::try_from(at_ns * u128::from(plan.steps) / total_ns)
            .unwrap_or(plan.steps)
            .min(plan.steps);
        points.push((at, progress, step));
        if at >= total {
            return points;
        }
        at = (at + interval).min(total);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What `query_status` reports about one job.
#[derive(Debug, Clone)]
struct JobState {
    simulation_id: String,
    status: &'static str,
    progress: u8,
    current_step: u32,
    total_steps: u32,
}

/// The running jobs of the whole service (any connection may query or cancel them) and the last finished ones.
#[derive(Default)]
pub struct Registry {
    running: Mutex<HashMap<String, (JobState, CancellationToken)>>,
    finished: Mutex<VecDeque<(String, JobState)>>,
    started: AtomicU64,
    completed: AtomicU64,
}

impl Registry {
    /// Jobs running now.
    pub fn active(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Jobs completed since start.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    fn status_of(&self, job_id: &str) -> Option<JobState> {
        if let Some((state, _)) = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(job_id)
        {
            return Some(state.clone());
        }
        self.finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .find(|(id, _)| id == job_id)
            .map(|(_, state)| state.clone())
    }

    fn update(&self, job_id: &str, progress: u8, step: u32) {
        if let Some((state, _)) = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(job_id)
        {
            state.progress = progress;
            state.current_step = step;
        }
    }

    fn finish(&self, job_id: &str, status: &'static str) {
        let entry = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(job_id);
        if let Some((mut state, _)) = entry {
            state.status = status;
            let mut finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
            if finished.len() == FINISHED_KEPT {
                finished.pop_front();
            }
            finished.push_back((job_id.to_owned(), state));
        }
        if status == "completed" {
            self.completed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What every session shares.
pub struct Service {
    /// The port the service listens on (in `simulation_id`s and results).
    pub port: u16,
    /// GPU and `CUDA_VISIBLE_DEVICES`, reported in results.
    pub identity: Identity,
    /// Defaults for a job's config.
    pub defaults: JobDefaults,
    /// Running and finished jobs.
    pub registry: Registry,
}

/// Serves one upgraded connection until the peer closes it or `shutdown` is cancelled (then it is closed
/// with 1001 "going away", and each running job of this connection gets an `error`).
pub async fn serve<S>(
    ws: WebSocketStream<S>,
    service: Arc<Service>,
    peer: String,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Value>(OUTBOX);
    let connection = shutdown.child_token();
    let jobs = TaskTracker::new();

    let writer_shutdown = shutdown.clone();
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.send(Message::text(message.to_string())).await.is_err() {
                return;
            }
        }
        let frame = if writer_shutdown.is_cancelled() {
            CloseFrame {
                code: CloseCode::Away,
                reason: "simulation service is stopping".into(),
            }
        } else {
            CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.close().await;
    });

    let _ = tx
        .send(json!({
            "type": "simulation_ready",
            "service": "simulation",
            "port": service.port,
            "gpu": service.identity.gpu,
            "cuda_visible_devices": service.identity.cuda_visible_devices,
            "timestamp": now_ms(),
        }))
        .await;

    loop {
        let next = tokio::select! {
            () = connection.cancelled() => break,
            next = stream.next() => next,
        };
        match next {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Text(text))) => {
                handle(text.as_str(), &service, &tx, &connection, &jobs).await;
            }
            Some(Ok(Message::Binary(_))) => {
                let _ = tx
                    .send(error_message(
                        None,
                        "binary messages are not understood; send JSON text messages",
                    ))
                    .await;
            }
            // tungstenite answers pings itself; pongs and raw frames need nothing.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
        }
    }
    connection.cancel();
    jobs.close();
    jobs.wait().await;
    drop(tx);
    let _ = writer.await;
    crate::log::app_output(
        crate::log::LogStream::Stdout,
        &format!("simulation service: connection from {peer} closed"),
    );
}

fn error_message(job_id: Option<&str>, message: &str) -> Value {
    let mut body = json!({
        "type": "error",
        "error": message,
        "message": message,
        "timestamp": now_ms(),
    });
    if let Some(id) = job_id {
        body["job_id"] = json!(id);
    }
    body
}

async fn handle(
    text: &str,
    service: &Arc<Service>,
    tx: &mpsc::Sender<Value>,
    connection: &CancellationToken,
    jobs: &TaskTracker,
) {
    let reply = match parse(text, service.defaults) {
        Err(refusal) => error_message(refusal.job_id.as_deref(), &refusal.message),
        Ok(Incoming::Ping) => json!({"type": "pong", "timestamp": now_ms()}),
        Ok(Incoming::QueryStatus(None)) => json!({
            "type": "simulation_status",
            "status": "ready",
            "active_jobs": service.registry.active(),
            "completed_jobs": service.registry.completed(),
            "timestamp": now_ms(),
        }),
        Ok(Incoming::QueryStatus(Some(job_id))) => match service.registry.status_of(&job_id) {
            Some(state) => json!({
                "type": "simulation_status",
                "job_id": job_id,
                "simulation_id": state.simulation_id,
                "status": state.status,
                "progress": state.progress,
                "current_step": state.current_step,
                "total_steps": state.total_steps,
                "timestamp": now_ms(),
            }),
            None => json!({
                "type": "simulation_status",
                "job_id": job_id,
                "status": "unknown",
                "timestamp": now_ms(),
            }),
        },
        Ok(Incoming::Cancel(job_id)) => {
            let token = service
                .registry
                .running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&job_id)
                .map(|(_, token)| token.clone());
            match token {
                // The job's task answers with simulation_cancelled.
                Some(token) => {
                    token.cancel();
                    return;
                }
                None => error_message(
                    Some(&job_id),
                    &format!("no running simulation has job_id \"{job_id}\"; nothing to cancel"),
                ),
            }
        }
        Ok(Incoming::Job(plan)) => match start_job(plan, service, tx, connection, jobs) {
            Ok(()) => return,
            Err(reply) => reply,
        },
    };
    let _ = tx.send(reply).await;
}

fn start_job(
    plan: JobPlan,
    service: &Arc<Service>,
    tx: &mpsc::Sender<Value>,
    connection: &CancellationToken,
    jobs: &TaskTracker,
) -> Result<(), Value> {
    let cancel = CancellationToken::new();
    let number = service.registry.started.fetch_add(1, Ordering::Relaxed);
    let simulation_id = format!("sim-{}-{number}", service.port);
    {
        let mut running = service
            .registry
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if running.contains_key(&plan.job_id) {
            return Err(error_message(
                Some(&plan.job_id),
                &format!(
                    "job_id \"{}\" is already running on this service; wait for its simulation_complete or cancel it",
                    plan.job_id
                ),
            ));
        }
        running.insert(
            plan.job_id.clone(),
            (
                JobState {
                    simulation_id: simulation_id.clone(),
                    status: "running",
                    progress: 0,
                    current_step: 0,
                    total_steps: plan.steps,
                },
                cancel.clone(),
            ),
        );
    }
    let service = Arc::clone(service);
    let tx = tx.clone();
    let connection = connection.clone();
    jobs.spawn(async move {
        run_job(plan, simulation_id, &service, &tx, &cancel, &connection).await;
    });
    Ok(())
}

async fn run_job(
    plan: JobPlan,
    simulation_id: String,
    service: &Service,
    tx: &mpsc::Sender<Value>,
    cancel: &CancellationToken,
    connection: &CancellationToken,
) {
    let job_id = plan.job_id.as_str();
    let started = Instant::now();
    let _ = tx
        .send(json!({
            "type": "simulation_started",
            "job_id": job_id,
            "simulation_id": simulation_id,
            "total_steps": plan.steps,
            "processing_time_ms": u64::try_from(plan.processing_time.as_millis()).unwrap_or(u64::MAX),
            "timestamp": now_ms(),
        }))
        .await;
    for (at, progress, step) in schedule(&plan) {
        tokio::select! {
            () = tokio::time::sleep_until((started + at).into()) => {}
            () = cancel.cancelled() => {
                service.registry.finish(job_id, "cancelled");
                let _ = tx.send(json!({
                    "type": "simulation_cancelled",
                    "job_id": job_id,
                    "simulation_id": simulation_id,
                    "progress": service_progress(service, job_id),
                    "timestamp": now_ms(),
                })).await;
                return;
            }
            () = connection.cancelled() => {
                service.registry.finish(job_id, "failed");
                let _ = tx.send(error_message(Some(job_id), "simulation service is stopping; the job did not finish")).await;
                return;
            }
        }
        service.registry.update(job_id, progress, step);
        let _ = tx
            .send(json!({
                "type": "simulation_progress",
                "job_id": job_id,
                "simulation_id": simulation_id,
                "progress": progress,
                "current_step": step,
                "total_steps": plan.steps,
                "message": format!("step {step} of {}", plan.steps),
                "timestamp": now_ms(),
            }))
            .await;
    }
    service.registry.finish(job_id, "completed");
    let _ = tx
        .send(json!({
            "type": "simulation_complete",
            "job_id": job_id,
            "simulation_id": simulation_id,
            "processing_time_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "results": {
                "job_type": plan.job_type,
                "steps": plan.steps,
                "service_port": service.port,
                "gpu": service.identity.gpu,
                "cuda_visible_devices": service.identity.cuda_visible_devices,
            },
            "timestamp": now_ms(),
        }))
        .await;
}

/// The progress of a finished job, as `query_status` would report it.
fn service_progress(service: &Service, job_id: &str) -> u8 {
    service.registry.status_of(job_id).map_or(0, |s| s.progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> JobDefaults {
        JobDefaults {
            steps: 4,
            step_delay: Duration::from_millis(50),
        }
    }

    fn job(text: &str) -> JobPlan {
        match parse(text, defaults()) {
            Ok(Incoming::Job(plan)) => plan,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn refused(text: &str) -> Refusal {
        parse(text, defaults()).expect_err(text)
    }

    #[test]
    fn job_config_defaults_and_overrides() {
        let plan =
            job(r#"{"type":"simulation_job","job_id":"j1","job_type":"simulation","payload":{}}"#);
        assert_eq!(plan.steps, 4);
        assert_eq!(plan.processing_time, Duration::from_millis(200));
        assert_eq!(plan.progress_interval, Duration::from_millis(50));
        assert_eq!(plan.job_type.as_deref(), Some("simulation"));

        let plan = job(
            r#"{"type":"simulation_job","jobId":7,"config":{"steps":"2","processing_time_ms":1000,"progress_interval_ms":100}}"#,
        );
        assert_eq!(plan.job_id, "7");
        assert_eq!(plan.steps, 2);
        assert_eq!(plan.processing_time, Duration::from_secs(1));
        assert_eq!(plan.progress_interval, Duration::from_millis(100));

        assert_eq!(
            job(r#"{"type":"simulation_job","id":"x","config":null}"#).job_id,
            "x"
        );
    }

    #[test]
    fn bad_messages_name_every_problem() {
        assert!(refused("nope").message.starts_with("message is not JSON"));
        assert_eq!(
            refused("[1]").message,
            "message must be a JSON object with a \"type\""
        );
        let unknown = refused(r#"{"type":"simulate","job_id":"j"}"#);
        assert_eq!(unknown.job_id.as_deref(), Some("j"));
        assert!(
            unknown
                .message
                .starts_with("unknown message type \"simulate\"")
        );
        assert!(
            refused(r#"{"job_id":"j"}"#)
                .message
                .starts_with("message has no \"type\"")
        );
        assert_eq!(
            refused(r#"{"type":"simulation_job"}"#).message,
            "simulation_job needs a job_id (also accepted: jobId, id)"
        );
        let bad = refused(
            r#"{"type":"simulation_job","job_id":"j","config":{"steps":0,"processing_time_ms":-1,"progress_interval_ms":1}}"#,
        );
        assert_eq!(bad.job_id.as_deref(), Some("j"));
        assert_eq!(
            bad.message,
            "config.processing_time_ms is -1, which is not a non-negative number; config.steps is 0; allowed: 1 to 10000; config.progress_interval_ms is 1; allowed: 10 to 3600000"
        );
        assert_eq!(
            refused(r#"{"type":"cancel_simulation"}"#).message,
            "cancel_simulation needs the job_id of the simulation to cancel"
        );
        assert!(
            refused(r#"{"type":"ping","job_id":{}}"#)
                .message
                .starts_with("job_id must be")
        );
    }

    #[test]
    fn schedule_reports_each_interval_and_ends_at_100() {
        let plan = job(r#"{"type":"simulation_job","job_id":"j"}"#);
        let points = schedule(&plan);
        let progress: Vec<(u8, u32)> = points.iter().map(|(_, p, s)| (*p, *s)).collect();
        assert_eq!(progress, [(25, 1), (50, 2), (75, 3), (100, 4)]);
        assert_eq!(points.last().unwrap().0, Duration::from_millis(200));

        let uneven = job(
            r#"{"type":"simulation_job","job_id":"j","config":{"steps":3,"processing_time_ms":250,"progress_interval_ms":100}}"#,
        );
        let progress: Vec<(u64, u8, u32)> = schedule(&uneven)
            .iter()
            .map(|(at, p, s)| (u64::try_from(at.as_millis()).unwrap(), *p, *s))
            .collect();
        assert_eq!(progress, [(100, 40, 1), (200, 80, 2), (250, 100, 3)]);

        let instant =
            job(r#"{"type":"simulation_job","job_id":"j","config":{"processing_time_ms":0}}"#);
        assert_eq!(schedule(&instant), [(Duration::ZERO, 100, 4)]);
    }
}
