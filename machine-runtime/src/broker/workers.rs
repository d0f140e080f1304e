//! What the workers themselves say: their heartbeat key, their `machine:<m>:worker:<w>` events, and
//! the queue's record of the jobs they hold.
//!
//! Where each answer comes from (worker contract §5, §6):
//!
//! - **Connected**: the worker's process is alive and its `worker:<id>:heartbeat` key exists (the
//!   worker `SETEX`es it every `WORKER_HEARTBEAT_INTERVAL_MS`, 60 s TTL, in every mode); before the
//!   first read of that key, the `is_connected` of its last status event.
//! - **Busy, with which job**: the queue's own record of an assignment, `jobs:active:<worker>`
//!   (written by `findMatchingJob` when it hands out a job, emptied by the worker when the job ends
//!   and by the machine's hand-back), and the worker's events (`job_started`, `worker_status_changed`
//!   busy, until `job_completed`/`job_failed`/`worker_status_changed` idle). Whichever the machine
//!   learnt last wins: a read of `jobs:active` made after the last event decides over that event.
//!   Only while `jobs:active` was never read (Redis down since start) does the hash's `status=busy`
//!   and `current_job_id` count, which `findMatchingJob` writes in the same call.
//! - **May it be stopped now** (the drain on stop and restart, the hand-back; [`WorkerTruth::busy_with`]):
//!   busy as above, or the hash's `status` is `busy` (the assignment as `findMatchingJob` wrote it,
//!   or the worker not yet done with its bookkeeping of a finished job). Erring towards busy only
//!   delays a stop; our own `offline` echo is never `busy`.
//! - **Idle**: connected and not busy.
//! - **Offline**: the process is down, or the heartbeat key is gone.
//!
//! The `status`, `current_job_id`, `last_activity` and `connector_statuses` fields of `worker:<id>`
//! are never read as the worker's word: in unified mode (`UNIFIED_MACHINE_STATUS=true`) the worker
//! writes no `status` there at start, and the API copies this machine's own last status message into
//! that hash (`handleUnifiedMachineStatus`), so reading them would echo our earlier word back (an idle
//! worker reported `offline` until its first job). Only the fields the worker writes itself are read
//! from the hash: `last_heartbeat`, `last_status_change`, `version`, `build_timestamp`, `build_info`.
//!
//! **Health**: a connector the worker reports failed (`connector_status_changed` with status
//! `error`, `failed` or `offline`, or health `unhealthy`) makes the worker unhealthy, with the reason,
//! until the worker reports that connector well again (the real worker sends `idle`/`healthy` after
//! its next successful job). A connector that does not load at start is only in the worker's output
//! (`Failed to load connector <name>: ...`, `Loaded 0 connectors successfully`; no event in unified
//! mode): [`ConnectorLoadScan`] reads it there and the machine records the verdict as its own
//! [`WORKER_LOG_EVENT`], which also makes the worker unhealthy until a later start loads them.
//! A connector that loads but fails its own start-up (`<service_type> connector <id> initialization
//! failed but connector will be registered: <why>`: its service was offline, or its validation
//! failed) is likewise only in the output (the worker publishes it on `connector_status:<type>`, not
//! as a machine event): the scan reports it too, and the worker is unhealthy (not ready; `/health`
//! stays 200, as the worker meant to serve once the connector comes up) until that connector
//! reports `idle` or `active` (`... connector <id> reported changed status: idle`).

use std::collections::HashMap;

use serde_json::Value;

use super::time::parse_epoch_ms;

/// `status` of a worker as the protocol spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Connected and waiting for a job.
    Idle,
    /// Working on a job.
    Busy,
    /// Not connected (process down, heartbeat expired, or said so itself).
    Offline,
    /// Process up but the worker has not registered yet.
    Unknown,
}

impl WorkerState {
    fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "idle" => Some(Self::Idle),
            "busy" => Some(Self::Busy),
            "offline" => Some(Self::Offline),
            _ => None,
        }
    }
}

/// The latest worker-reported facts about one worker.
#[derive(Debug, Clone, Default)]
pub struct WorkerTruth {
    /// Fields of `worker:<id>` at the last refresh (empty: the hash does not exist).
    pub hash: HashMap<String, String>,
    /// TTL of `worker:<id>:heartbeat` at the last refresh: `None` never read, `-2` missing, `-1` no expiry.
    pub heartbeat_ttl: Option<i64>,
    /// What the worker's own events said last.
    pub event: EventFacts,
    /// Epoch ms (the machine's clock) when the machine last received an event of this worker.
    pub event_seen_ms: Option<u64>,
    /// Epoch ms (the machine's clock) when an event last said whether the worker is busy.
    pub status_event_ms: Option<u64>,
    /// Fields of `jobs:active:<id>` (job ids the queue assigned to the worker and the worker has not
    /// finished) at the last read; `None`: never read.
    pub active_jobs: Option<Vec<String>>,
    /// Epoch ms (the machine's clock) of that read.
    pub active_read_ms: Option<u64>,
}

/// Facts carried by `machine:<m>:worker:<w>` events.
#[derive(Debug, Clone, Default)]
pub struct EventFacts {
    /// Whether any event arrived for this worker.
    pub seen: bool,
    /// `status` from the last status or job event.
    pub status: Option<WorkerState>,
    /// `is_connected` from the last status event.
    pub is_connected: Option<bool>,
    /// `current_job_id` (`Some(None)`: explicitly no job).
    pub current_job_id: Option<Option<String>>,
    /// `last_activity` as sent, in epoch ms (ISO strings converted; anything else dropped).
    pub last_activity: Option<u64>,
    /// `version` as sent.
    pub version: Option<Value>,
    /// `build_info` as sent.
    pub build_info: Option<Value>,
    /// `build_timestamp` as sent.
    pub build_timestamp: Option<Value>,
    /// `connector_status_changed` per service type: (status, health).
    pub connectors: HashMap<String, (Option<String>, Option<String>)>,
    /// What the worker's own output said about loading its connectors, when it went wrong (see
    /// [`ConnectorLoadScan`]); carried by the machine's own `machine_worker_log` event.
    pub load_problem: Option<String>,
    /// Connectors that loaded but failed their start-up and have not come up since, one line each
    /// (same source and event, field `init_failures`).
    pub init_failures: Vec<String>,
    /// `job_completed` events received since the machine started.
    pub jobs_completed: u64,
    /// `job_failed` events received since the machine started.
    pub jobs_failed: u64,
}

/// The machine's own event type carrying [`ConnectorLoadScan`]'s verdict on a worker's output
/// (`data.problem`: a string, or `null` when the connectors loaded; `data.init_failures`: the
/// connectors whose start-up failed, one line each).
pub const WORKER_LOG_EVENT: &str = "machine_worker_log";

/// What a worker's output says about its connectors (see [`ConnectorLoadScan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectorVerdict {
    /// None loaded, or some failed to load (`None`: all loaded).
    pub load_problem: Option<String>,
    /// Connectors that loaded but failed their start-up and have not reported `idle`/`active` since.
    pub init_failures: Vec<String>,
}

/// Reads a worker's output for what the real worker says only there (`connector-manager.ts` and
/// `base-connector.ts`; unified mode sends no event for it): `Failed to load connector <name>: ...`
/// per connector that did not load, `<type> connector <id> initialization failed but connector will
/// be registered: <why>` per connector whose start-up failed, then `Loaded <n> connectors
/// successfully` once loading is over; afterwards `<type> connector <id> reported changed status:
/// idle|active` when such a connector comes up.
#[derive(Debug, Default)]
pub struct ConnectorLoadScan {
    failed: Vec<String>,
    /// `<type> connector <id>` → why its start-up failed, in the order seen.
    init_failed: Vec<(String, String)>,
    /// The last `Loaded <n>` line was seen and no loading line since (the current start is over).
    loaded: bool,
    load_problem: Option<String>,
}

/// The marker of a connector whose start-up failed (`base-connector.ts`).
const INIT_FAILED: &str = " initialization failed but connector will be registered:";
/// The marker of a connector's status report (`base-connector.ts`).
const REPORTED_CHANGED: &str = " reported changed status: ";

impl ConnectorLoadScan {
    /// Feeds one line; returns `Some(verdict)` when the verdict changes what the machine should
    /// say: at the end of a load (the `Loaded <n> connectors` line), and afterwards when a
    /// connector whose start-up failed comes up.
    pub fn line(&mut self, text: &str) -> Option<ConnectorVerdict> {
        if let Some(rest) = text.split("Failed to load connector ").nth(1) {
            self.new_start_if_loaded();
            let name = rest
                .split(|c: char| c == ':' || c.is_whitespace())
                .next()
                .unwrap_or_default();
            if !name.is_empty() && !self.failed.iter().any(|f| f == name) {
                self.failed.push(name.to_owned());
            }
            return None;
        }
        if let Some((before, after)) = text.split_once(INIT_FAILED) {
            self.new_start_if_loaded();
            let connector = connector_named_before(before)?;
            let why = after
                .trim_start()
                .split("\",\"")
                .next()
                .unwrap_or_default()
                .trim_end_matches(['"', '}'])
                .chars()
                .take(300)
                .collect::<String>();
            self.init_failed.retain(|(c, _)| *c != connector);
            self.init_failed.push((connector, why));
            return None;
        }
        if let Some((before, after)) = text.split_once(REPORTED_CHANGED) {
            let up = ["idle", "active"].iter().any(|s| after.starts_with(s));
            let connector = connector_named_before(before)?;
            let known = self.init_failed.iter().any(|(c, _)| *c == connector);
            if up && known {
                self.init_failed.retain(|(c, _)| *c != connector);
                return self.loaded.then(|| self.verdict());
            }
            return None;
        }
        let count = text
            .split("Loaded ")
            .nth(1)?
            .split_once(" connectors")?
            .0
            .trim()
            .parse::<u64>()
            .ok()?;
        let failed = std::mem::take(&mut self.failed);
        let mut problems = Vec::new();
        if count == 0 {
            problems
                .push("the worker loaded 0 connectors (its log: Loaded 0 connectors)".to_owned());
        }
        problems.extend(failed.iter().map(|name| {
            format!("connector {name} failed to load (its log: Failed to load connector {name})")
        }));
        self.load_problem = (!problems.is_empty()).then(|| problems.join("; "));
        self.loaded = true;
        Some(self.verdict())
    }

    fn verdict(&self) -> ConnectorVerdict {
        ConnectorVerdict {
            load_problem: self.load_problem.clone(),
            init_failures: self
                .init_failed
                .iter()
                .map(|(connector, why)| {
                    format!("{connector} failed to start (its log: initialization failed: {why})")
                })
                .collect(),
        }
    }

    /// A loading line after a finished load: the worker started again, so the last start's facts go.
    fn new_start_if_loaded(&mut self) {
        if self.loaded {
            self.loaded = false;
            self.init_failed.clear();
            self.load_problem = None;
        }
    }
}

/// `<type> connector <id>` from the words just before a marker (the line may be a JSON log record:
/// `{"level":"warn","message":"image_generation connector X`).
fn connector_named_before(before: &str) -> Option<String> {
    let words: Vec<&str> = before.split_whitespace().collect();
    let [.., kind, "connector", id] = words.as_slice() else {
        return None;
    };
    let kind = kind.rsplit(['"', ':', ']']).next().unwrap_or(kind);
    (!kind.is_empty() && !id.is_empty()).then(|| format!("{kind} connector {id}"))
}

/// One event from `machine:<MACHINE_ID>:worker:<WORKER_ID>`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerEvent {
    /// The worker (from the channel name, else the payload).
    pub worker_id: String,
    /// `worker_status_changed`, `job_started`, ...
    pub event_type: String,
    /// The event's `data` object.
    pub data: Value,
    /// The event's `timestamp`, if any.
    pub timestamp: Option<Value>,
}

impl WorkerEvent {
    /// Parses a message published on `channel`; `None` when it is not a JSON object with an `event_type`.
    pub fn parse(channel: &str, payload: &str) -> Option<Self> {
        let value: Value = serde_json::from_str(payload).ok()?;
        let object = value.as_object()?;
        let event_type = object.get("event_type")?.as_str()?.to_owned();
        let from_channel = channel
            .split_once(":worker:")
            .map(|(_, id)| id.to_owned())
            .filter(|id| !id.is_empty());
        let worker_id = from_channel.or_else(|| {
            object
                .get("worker_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })?;
        Some(Self {
            worker_id,
            event_type,
            data: object.get("data").cloned().unwrap_or(Value::Null),
            timestamp: object.get("timestamp").cloned().filter(|t| !t.is_null()),
        })
    }
}

impl WorkerTruth {
    /// Folds one event into the event facts.
    pub fn apply(&mut self, event: &WorkerEvent) {
        let facts = &mut self.event;
        facts.seen = true;
        let data = &event.data;
        let text = |key: &str| data.get(key).and_then(Value::as_str).map(str::to_owned);
        match event.event_type.as_str() {
            "worker_status_changed" | "worker_registered" | "worker_connected" => {
                if let Some(status) = text("status").as_deref().and_then(WorkerState::parse) {
                    facts.status = Some(status);
                }
                match data.get("is_connected").and_then(Value::as_bool) {
                    Some(connected) => facts.is_connected = Some(connected),
                    None if event.event_type == "worker_connected" => {
                        facts.is_connected = Some(true);
                    }
                    None => {}
                }
                if let Some(job) = data.get("current_job_id") {
                    facts.current_job_id = Some(job_id(job));
                }
                if let Some(at) = data.get("last_activity").and_then(epoch_ms_of) {
                    facts.last_activity = Some(at);
                }
                for (key, slot) in [
                    ("version", &mut facts.version),
                    ("build_info", &mut facts.build_info),
                    ("build_timestamp", &mut facts.build_timestamp),
                ] {
                    if let Some(value) = data.get(key).filter(|v| !v.is_null()) {
                        *slot = Some(value.clone());
                    }
                }
            }
            "job_started" => {
                facts.status = Some(WorkerState::Busy);
                facts.current_job_id = Some(data.get("job_id").and_then(job_id));
            }
            // `job_handed_back` is the machine's own word for a killed worker's job (handback.rs).
            "job_completed" | "job_failed" | "job_handed_back" => {
                facts.status = Some(WorkerState::Idle);
                facts.current_job_id = Some(None);
                match event.event_type.as_str() {
                    "job_completed" => facts.jobs_completed += 1,
                    "job_failed" => facts.jobs_failed += 1,
                    _ => {}
                }
            }
            WORKER_LOG_EVENT => {
                facts.load_problem = text("problem");
                facts.init_failures = data
                    .get("init_failures")
                    .and_then(Value::as_array)
                    .map(|list| {
                        list.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
            }
            "connector_status_changed" => {
                if let Some(service) = text("service_type") {
                    facts
                        .connectors
                        .insert(service, (text("status"), text("health")));
                }
            }
            _ => {}
        }
        if matches!(
            event.event_type.as_str(),
            "job_started" | "job_completed" | "job_failed"
        ) && let Some(at) = event.timestamp.as_ref().and_then(epoch_ms_of)
        {
            facts.last_activity = Some(at);
        }
    }

    /// Folds one event received at `now_ms` (the machine's clock): the event's facts, and the
    /// moment the machine last heard from the worker.
    pub fn receive(&mut self, event: &WorkerEvent, now_ms: u64) {
        self.apply(event);
        self.event_seen_ms = Some(now_ms);
        // Only these say whether the worker is busy (`connector_status_changed` also has a
        // `status`: the connector's).
        if matches!(
            event.event_type.as_str(),
            "worker_status_changed"
                | "worker_registered"
                | "worker_connected"
                | "job_started"
                | "job_completed"
                | "job_failed"
                | "job_handed_back"
        ) {
            self.status_event_ms = Some(now_ms);
        }
    }

    /// Records a read of `jobs:active:<id>` made at `now_ms` (the machine's clock).
    pub fn read_active_jobs(&mut self, jobs: Vec<String>, now_ms: u64) {
        self.active_jobs = Some(jobs);
        self.active_read_ms = Some(now_ms);
    }

    /// Why the worker is unhealthy by its own word, one line per failed connector, sorted by
    /// service type (`connector openai reported error (unhealthy)`); empty when none failed.
    pub(crate) fn connector_problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .event
            .connectors
            .iter()
            .filter(|(_, (status, health))| {
                let failed = status.as_deref().is_some_and(|s| {
                    matches!(
                        s.to_ascii_lowercase().as_str(),
                        "error" | "failed" | "offline"
                    )
                });
                failed
                    || health
                        .as_deref()
                        .is_some_and(|h| h.eq_ignore_ascii_case("unhealthy"))
            })
            .map(|(service, (status, health))| {
                format!(
                    "connector {service} reported {} ({})",
                    status.as_deref().unwrap_or("no status"),
                    health.as_deref().unwrap_or("no health")
                )
            })
            .collect();
        problems.extend(self.event.init_failures.iter().cloned());
        problems.sort();
        problems.splice(0..0, self.event.load_problem.clone());
        problems
    }

    /// When the machine last saw the worker do anything, in epoch ms: the latest of an event
    /// received, the hash's `last_heartbeat` and `last_status_change` (the worker writes both; the
    /// hash's `last_activity` is the API's copy of our own message, so it is not read), and the
    /// times the events carried.
    pub(crate) fn last_activity_ms(&self) -> Option<u64> {
        ["last_heartbeat", "last_status_change"]
            .iter()
            .filter_map(|key| self.hash_field(key).and_then(parse_epoch_ms))
            .chain(self.event_seen_ms)
            .chain(self.event.last_activity)
            .max()
    }

    /// For the stop, drain and hand-back question "may this worker be signalled now": the job it
    /// may still be working on (`Some("")` when none was named), `None` when it is surely idle.
    /// Busy when [`WorkerTruth::reported_busy_with`] says so, or when the hash has `status` busy:
    /// `findMatchingJob` writes it with the assignment, the worker itself only after its own
    /// bookkeeping of a finished job (so a worker that already took the job out of `jobs:active`
    /// but has not finished with it is not signalled). Our `offline` echo is never `busy`, so it
    /// cannot hide a busy worker; a stale `busy` echo lasts one status message at most, since the
    /// status itself ([`resolve`]) never reads the hash once `jobs:active` was read.
    pub(crate) fn busy_with(&self) -> Option<String> {
        self.reported_busy_with().or_else(|| self.hash_says_busy())
    }

    /// `worker:<id>` has `status` busy: `Some(current_job_id)` (empty when none).
    fn hash_says_busy(&self) -> Option<String> {
        (self.hash_field("status").and_then(WorkerState::parse) == Some(WorkerState::Busy)).then(
            || {
                self.hash_field("current_job_id")
                    .unwrap_or_default()
                    .to_owned()
            },
        )
    }

    /// The job the worker is working on as the status reports it (`Some("")` when busy with a job
    /// nobody named), `None` when it is not busy; the rule is in the module doc. Our own echo in
    /// `worker:<id>` (`offline`, or a `busy` that outlived its job) decides nothing once
    /// `jobs:active:<id>` was read.
    pub(crate) fn reported_busy_with(&self) -> Option<String> {
        let from_queue = self.active_jobs.as_ref().map(|jobs| jobs.first().cloned());
        let from_events = self.event.status.map(|status| match status {
            WorkerState::Busy => Some(
                self.event
                    .current_job_id
                    .clone()
                    .flatten()
                    .unwrap_or_default(),
            ),
            _ => None,
        });
        match (from_queue, from_events) {
            (Some(queue), Some(events)) => {
                if self.active_read_ms >= self.status_event_ms {
                    queue
                } else {
                    match (events, queue) {
                        (Some(job), Some(named)) if job.is_empty() => Some(named),
                        (events, _) => events,
                    }
                }
            }
            (Some(queue), None) => queue,
            (None, Some(events)) => events,
            // Never read `jobs:active`, no event: what `findMatchingJob` wrote with the assignment.
            (None, None) => self.hash_says_busy(),
        }
    }

    /// Whether the worker ever spoke for itself (an event, or a heartbeat written into its hash).
    fn registered(&self) -> bool {
        self.event.seen || self.hash_field("last_heartbeat").is_some()
    }

    fn hash_field(&self, key: &str) -> Option<&str> {
        self.hash.get(key).map(String::as_str)
    }

    /// Whether the heartbeat key exists; falls back to the worker's own word before the first refresh.
    fn heartbeat(&self) -> bool {
        match self.heartbeat_ttl {
            Some(ttl) => ttl != -2,
            None => self.event.is_connected.unwrap_or(false),
        }
    }
}

/// A time in a JSON value as epoch ms: a number, or a string [`parse_epoch_ms`] reads.
fn epoch_ms_of(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Value::String(s) => parse_epoch_ms(s),
        _ => None,
    }
}

fn job_id(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Numbers stay numbers (epoch ms); anything else is passed on as the worker wrote it.
fn scalar(text: &str) -> Value {
    text.parse::<u64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// JSON stays JSON (`build_info` is usually an object written as a string).
fn json_or_text(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ (Value::Object(_) | Value::Array(_))) => value,
        _ => Value::String(text.to_owned()),
    }
}

/// The per-worker entry of `status.workers`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WorkerStatus {
    /// Heartbeat key present and process alive.
    pub is_connected: bool,
    /// `idle|busy|offline|unknown`.
    pub status: WorkerState,
    /// The job in progress, if any.
    pub current_job_id: Option<String>,
    /// When the machine last saw the worker do something (an event, a heartbeat, a status change),
    /// in epoch ms; `null` before anything was seen. Always a number: the monitor converts only numbers.
    pub last_activity: Option<u64>,
    /// The worker's version, when it reports one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<Value>,
    /// When the worker was built, when it reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_timestamp: Option<Value>,
    /// Build details, when the worker reports them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_info: Option<Value>,
    /// Why the machine holds the worker's process back, in words, while it waits for its service
    /// (`... is waiting for comfyui-gpu0: comfyui-gpu0 is not ready (restarting after status 1)`);
    /// absent otherwise; or why the worker is unhealthy by its own word (`connector openai reported
    /// error (unhealthy)`). The machine's own field: the worker never writes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `false` when the worker reported a connector failed (see `reason`). The machine's own field.
    pub healthy: bool,
    /// Whether the problem is that its connectors did not load (the worker's own log: none loaded or
    /// one failed): it lasts until the worker is restarted, so it counts against `/health`. A connector
    /// reported failed after a job (the real worker says `error`/`unhealthy` after every failed job)
    /// counts against `/ready` and the status only: one bad job must not make a liveness probe restart
    /// the machine. Not sent to the broker.
    #[serde(skip)]
    pub connectors_not_loaded: bool,
    /// Jobs the worker reported completed (`job_completed`) since the machine started; the API
    /// passes it on to the monitor's worker card (`total_jobs_completed`).
    pub total_jobs_completed: u64,
    /// Jobs the worker reported failed (`job_failed`) since the machine started.
    pub total_jobs_failed: u64,
}

/// Combines the process state with what the worker says (the rule is in the module doc); the
/// process state wins when it is down.
pub fn resolve(process_alive: bool, truth: Option<&WorkerTruth>) -> WorkerStatus {
    let empty = WorkerTruth::default();
    let truth = truth.unwrap_or(&empty);
    let facts = &truth.event;
    let last_activity = truth.last_activity_ms();
    let version = truth
        .hash_field("version")
        .map(scalar)
        .or_else(|| facts.version.clone());
    let build_timestamp = truth
        .hash_field("build_timestamp")
        .map(scalar)
        .or_else(|| facts.build_timestamp.clone());
    let build_info = truth
        .hash_field("build_info")
        .map(json_or_text)
        .or_else(|| facts.build_info.clone());
    let is_connected = process_alive && truth.heartbeat();
    let busy = if is_connected {
        truth.reported_busy_with()
    } else {
        None
    };
    let status = if !process_alive {
        WorkerState::Offline
    } else if !is_connected {
        if truth.registered() {
            WorkerState::Offline
        } else {
            WorkerState::Unknown
        }
    } else if busy.is_some() {
        WorkerState::Busy
    } else {
        WorkerState::Idle
    };
    let current_job_id = busy.filter(|job| !job.is_empty());
    let problems = truth.connector_problems();
    let healthy = problems.is_empty();
    WorkerStatus {
        is_connected,
        status,
        current_job_id,
        last_activity,
        version,
        build_timestamp,
        build_info,
        reason: (!healthy).then(|| problems.join("; ")),
        healthy,
        connectors_not_loaded: truth.event.load_problem.is_some(),
        total_jobs_completed: facts.jobs_completed,
        total_jobs_failed: facts.jobs_failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(event_type: &str, data: Value) -> WorkerEvent {
        let payload = json!({"worker_id": "ignored", "event_type": event_type, "data": data, "timestamp": 1234});
        WorkerEvent::parse("machine:m1:worker:m1-worker-sim-0", &payload.to_string()).unwrap()
    }

    #[test]
    fn parses_events_and_takes_the_id_from_the_channel() {
        let e = event("job_started", json!({"job_id": "j1"}));
        assert_eq!(e.worker_id, "m1-worker-sim-0");
        assert_eq!(e.timestamp, Some(json!(1234)));
        assert!(WorkerEvent::parse("c", "not json").is_none());
        assert!(WorkerEvent::parse("c", "{\"data\":{}}").is_none());
        let e = WorkerEvent::parse("other", r#"{"worker_id":"w","event_type":"x"}"#).unwrap();
        assert_eq!(e.worker_id, "w");
    }

    #[test]
    fn dead_process_is_offline_whatever_the_worker_said() {
        let mut truth = WorkerTruth::default();
        truth.hash.insert("status".into(), "busy".into());
        truth.heartbeat_ttl = Some(50);
        let s = resolve(false, Some(&truth));
        assert_eq!((s.is_connected, s.status), (false, WorkerState::Offline));
        assert_eq!(s.current_job_id, None);
    }

    #[test]
    fn unregistered_worker_is_unknown_then_hash_and_heartbeat_decide() {
        assert_eq!(resolve(true, None).status, WorkerState::Unknown);
        let mut truth = WorkerTruth {
            heartbeat_ttl: Some(-2),
            ..Default::default()
        };
        assert_eq!(resolve(true, Some(&truth)).status, WorkerState::Unknown);
        truth.hash.insert("status".into(), "busy".into());
        truth.hash.insert("current_job_id".into(), "job-7".into());
        truth
            .hash
            .insert("last_heartbeat".into(), "2024-01-01T00:00:00.000Z".into());
        truth
            .hash
            .insert("build_info".into(), r#"{"git":"abc"}"#.into());
        // Hash but no heartbeat: the worker stopped heartbeating.
        assert_eq!(resolve(true, Some(&truth)).status, WorkerState::Offline);
        truth.heartbeat_ttl = Some(42);
        let s = resolve(true, Some(&truth));
        assert!(s.is_connected);
        assert_eq!(s.status, WorkerState::Busy);
        assert_eq!(s.current_job_id.as_deref(), Some("job-7"));
        // The worker writes ISO times; the machine reports epoch ms, the unit the monitor converts.
        assert_eq!(s.last_activity, Some(1_704_067_200_000));
        assert_eq!(s.build_info, Some(json!({"git": "abc"})));
    }

    #[test]
    fn events_fill_what_the_hash_lacks() {
        let mut truth = WorkerTruth {
            heartbeat_ttl: Some(30),
            ..Default::default()
        };
        truth.apply(&event(
            "worker_status_changed",
            json!({"status": "idle", "is_connected": true, "version": "1.2"}),
        ));
        truth.apply(&event(
            "job_started",
            json!({"job_id": "j9", "service_type": "comfyui"}),
        ));
        let s = resolve(true, Some(&truth));
        assert_eq!(s.status, WorkerState::Busy);
        assert_eq!(s.current_job_id.as_deref(), Some("j9"));
        assert_eq!(s.version, Some(json!("1.2")));
        assert_eq!(s.last_activity, Some(1234));
        truth.apply(&event("job_completed", json!({"job_id": "j9"})));
        let s = resolve(true, Some(&truth));
        assert_eq!((s.status, s.current_job_id), (WorkerState::Idle, None));
        truth.apply(&event(
            "connector_status_changed",
            json!({"service_type": "comfyui", "status": "active", "health": "unhealthy"}),
        ));
        assert_eq!(
            truth.event.connectors["comfyui"],
            (Some("active".into()), Some("unhealthy".into()))
        );
    }

    #[test]
    fn every_event_and_heartbeat_moves_last_activity() {
        let mut truth = WorkerTruth {
            heartbeat_ttl: Some(30),
            ..Default::default()
        };
        assert_eq!(resolve(true, Some(&truth)).last_activity, None);
        truth
            .hash
            .insert("last_heartbeat".into(), "2024-01-01T00:00:00.000Z".into());
        assert_eq!(
            resolve(true, Some(&truth)).last_activity,
            Some(1_704_067_200_000)
        );
        // An event without a time of its own still counts, at the moment the machine received it.
        truth.receive(
            &event("connector_status_changed", json!({"service_type": "x"})),
            1_704_067_260_000,
        );
        assert_eq!(
            resolve(true, Some(&truth)).last_activity,
            Some(1_704_067_260_000)
        );
        // A later heartbeat moves it again; an older field never moves it back.
        truth
            .hash
            .insert("last_heartbeat".into(), "2024-01-01T00:01:30.000Z".into());
        truth.hash.insert(
            "last_status_change".into(),
            "2023-01-01T00:00:00.000Z".into(),
        );
        assert_eq!(
            resolve(true, Some(&truth)).last_activity,
            Some(1_704_067_290_000)
        );
    }

    #[test]
    fn our_echo_in_the_hash_never_decides_the_status() {
        // The API copied our earlier `offline` into the hash; the worker is heartbeating and idle.
        let mut truth = WorkerTruth {
            heartbeat_ttl: Some(55),
            ..Default::default()
        };
        truth.hash.insert("status".into(), "offline".into());
        truth.hash.insert("last_activity".into(), "99".into());
        truth.read_active_jobs(vec![], 10);
        let s = resolve(true, Some(&truth));
        assert_eq!((s.is_connected, s.status), (true, WorkerState::Idle));
        assert_eq!(
            s.last_activity, None,
            "the API's copy of our last_activity is not read"
        );
        // Our `busy` echo outlived the job: jobs:active, read after the last event, is empty.
        truth.receive(&event("job_started", json!({"job_id": "j1"})), 20);
        assert_eq!(resolve(true, Some(&truth)).status, WorkerState::Busy);
        truth.hash.insert("status".into(), "busy".into());
        truth.hash.insert("current_job_id".into(), "j1".into());
        truth.read_active_jobs(vec![], 30);
        let s = resolve(true, Some(&truth));
        assert_eq!((s.status, s.current_job_id), (WorkerState::Idle, None));
        // ... while a stop still waits for it (one status message later the echo says idle).
        assert_eq!(truth.busy_with().as_deref(), Some("j1"));
        truth.hash.insert("status".into(), "idle".into());
        assert_eq!(truth.busy_with(), None);
        // The queue assigned a job (jobs:active) while the hash still holds our `offline`.
        truth.hash.insert("status".into(), "offline".into());
        truth.read_active_jobs(vec!["j2".into()], 40);
        assert_eq!(truth.busy_with().as_deref(), Some("j2"));
        // An event newer than the read wins: the job ended after the read.
        truth.receive(&event("job_completed", json!({"job_id": "j2"})), 50);
        assert_eq!(truth.busy_with(), None);
        // A connector_status_changed says nothing about busy: the read stays newer.
        truth.read_active_jobs(vec!["j3".into()], 60);
        truth.receive(
            &event(
                "connector_status_changed",
                json!({"service_type": "x", "status": "active"}),
            ),
            70,
        );
        assert_eq!(truth.busy_with().as_deref(), Some("j3"));
    }

    #[test]
    fn a_failed_connector_makes_the_worker_unhealthy_until_it_recovers() {
        let mut truth = WorkerTruth {
            heartbeat_ttl: Some(55),
            ..Default::default()
        };
        let s = resolve(true, Some(&truth));
        assert!(s.healthy && s.reason.is_none());
        truth.apply(&event(
            "connector_status_changed",
            json!({"service_type": "openai", "status": "error", "health": "unhealthy"}),
        ));
        truth.apply(&event(
            "connector_status_changed",
            json!({"service_type": "gemini", "status": "failed"}),
        ));
        let s = resolve(true, Some(&truth));
        assert!(!s.healthy);
        assert_eq!(
            s.reason.as_deref(),
            Some(
                "connector gemini reported failed (no health); \
                 connector openai reported error (unhealthy)"
            )
        );
        assert_eq!(
            serde_json::to_value(&s).unwrap()["healthy"],
            json!(false),
            "the status message says it"
        );
        for service in ["openai", "gemini"] {
            truth.apply(&event(
                "connector_status_changed",
                json!({"service_type": service, "status": "idle", "health": "healthy"}),
            ));
        }
        assert!(resolve(true, Some(&truth)).healthy);
    }

    #[test]
    fn the_worker_log_says_when_its_connectors_did_not_load() {
        let mut scan = ConnectorLoadScan::default();
        assert_eq!(scan.line("2026-12-06 info: starting"), None);
        assert_eq!(
            scan.line(
                "error: Failed to load connector gemini: Error: GEMINI_NANO_BANANA_URL is required"
            ),
            None
        );
        let said = scan
            .line("info: ✅ Loaded 0 connectors successfully")
            .unwrap();
        assert_eq!(
            said.load_problem.as_deref(),
            Some(
                "the worker loaded 0 connectors (its log: Loaded 0 connectors); \
                 connector gemini failed to load (its log: Failed to load connector gemini)"
            )
        );
        assert!(said.init_failures.is_empty());
        // The next start (a restart) loads them: all is well again.
        assert_eq!(
            scan.line("✅ Loaded 2 connectors successfully"),
            Some(ConnectorVerdict::default())
        );
        let mut truth = WorkerTruth {
            heartbeat_ttl: Some(55),
            ..Default::default()
        };
        truth.apply(&event(
            WORKER_LOG_EVENT,
            json!({"problem": said.load_problem, "init_failures": []}),
        ));
        let s = resolve(true, Some(&truth));
        assert!(!s.healthy);
        assert!(s.connectors_not_loaded);
        assert!(
            s.reason
                .unwrap()
                .starts_with("the worker loaded 0 connectors")
        );
        truth.apply(&event(WORKER_LOG_EVENT, json!({"problem": null})));
        assert!(resolve(true, Some(&truth)).healthy);
    }

    /// Lines as the real worker (ceb26d4, openai connectors, no network) printed them.
    const INIT_FAILED_LINE: &str = r#"{"level":"warn","message":"image_generation connector OpenAIText2ImgConnector initialization failed but connector will be registered: Failed to initialize OpenAI Image connector: Cannot read properties of undefined (reading 'info')","service":"emp-redis-js","stack":"Error: Failed"}"#;
    const RESPONSES_FAILED_LINE: &str = r#"{"level":"warn","message":"openai_responses connector OpenAIResponsesConnector initialization failed but connector will be registered: Service validation failed","service":"emp-redis-js"}"#;

    #[test]
    fn a_connector_whose_start_up_failed_makes_the_worker_unready_until_it_comes_up() {
        let mut scan = ConnectorLoadScan::default();
        assert_eq!(scan.line(INIT_FAILED_LINE), None);
        assert_eq!(scan.line(RESPONSES_FAILED_LINE), None);
        let said = scan
            .line(r#"{"level":"info","message":"✅ Loaded 4 connectors successfully"}"#)
            .unwrap();
        assert_eq!(said.load_problem, None);
        assert_eq!(
            said.init_failures,
            [
                "image_generation connector OpenAIText2ImgConnector failed to start (its log: \
                 initialization failed: Failed to initialize OpenAI Image connector: Cannot read \
                 properties of undefined (reading 'info'))",
                "openai_responses connector OpenAIResponsesConnector failed to start (its log: \
                 initialization failed: Service validation failed)"
            ]
        );
        // Another connector of the same type coming up says nothing about this one.
        assert_eq!(
            scan.line(r#"{"message":"image_generation connector OpenAIImg2ImgConnector reported changed status: idle"}"#),
            None
        );
        // An error report of the failed one changes nothing either.
        assert_eq!(
            scan.line(r#"{"message":"image_generation connector OpenAIText2ImgConnector reported changed status: error (x)"}"#),
            None
        );
        let up = scan
            .line(r#"{"message":"image_generation connector OpenAIText2ImgConnector reported changed status: idle"}"#)
            .unwrap();
        assert_eq!(up.init_failures.len(), 1);
        assert!(up.init_failures[0].starts_with("openai_responses connector"));

        // Folded into the worker: unhealthy with the reason, but not a load fault (`/health` stays 200).
        let mut truth = WorkerTruth {
            heartbeat_ttl: Some(55),
            ..Default::default()
        };
        truth.apply(&event(
            WORKER_LOG_EVENT,
            json!({"problem": null, "init_failures": up.init_failures}),
        ));
        let s = resolve(true, Some(&truth));
        assert!(!s.healthy);
        assert!(!s.connectors_not_loaded);
        assert!(
            s.reason
                .unwrap()
                .contains("OpenAIResponsesConnector failed to start")
        );

        // A restart begins a new load: the old start's failures are gone once it loads cleanly.
        assert_eq!(scan.line(INIT_FAILED_LINE), None);
        let again = scan.line("✅ Loaded 4 connectors successfully").unwrap();
        assert_eq!(again.init_failures.len(), 1);
        assert!(again.init_failures[0].contains("OpenAIText2ImgConnector"));
    }

    #[test]
    fn job_totals_count_the_workers_own_completions_and_failures() {
        let mut truth = WorkerTruth {
            heartbeat_ttl: Some(55),
            ..Default::default()
        };
        for kind in [
            "job_completed",
            "job_completed",
            "job_failed",
            "job_handed_back",
        ] {
            truth.apply(&event("job_started", json!({"job_id": "j"})));
            truth.apply(&event(kind, json!({"job_id": "j"})));
        }
        let s = resolve(true, Some(&truth));
        assert_eq!((s.total_jobs_completed, s.total_jobs_failed), (2, 1));
        let sent = serde_json::to_value(&s).unwrap();
        assert_eq!(sent["total_jobs_completed"], 2);
        assert_eq!(sent["total_jobs_failed"], 1);
    }

    #[test]
    fn busy_means_a_job_or_the_word_busy() {
        let mut truth = WorkerTruth::default();
        assert_eq!(truth.busy_with(), None);
        truth.hash.insert("status".into(), "busy".into());
        assert_eq!(truth.busy_with().as_deref(), Some(""));
        truth.hash.insert("current_job_id".into(), "job-3".into());
        assert_eq!(truth.busy_with().as_deref(), Some("job-3"));
        truth.hash.insert("status".into(), "idle".into());
        truth.hash.insert("current_job_id".into(), String::new());
        assert_eq!(truth.busy_with(), None);
    }
}
