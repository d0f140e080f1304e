//! The supervisor's observable state: a snapshot of every app (a `watch` channel) and a broadcast
//! of state changes, each logged once in words.

use std::time::Instant;

use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::command::GpuPin;
use crate::ecosystem::{AppSpec, Role};

/// Where an app is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppState {
    /// Waiting for the apps in `machine_wait_for` to be ready.
    Waiting,
    /// Started; its readiness probe has not passed yet.
    Starting,
    /// Started, and it has no readiness probe (so it counts as ready).
    Running,
    /// Started, and its readiness probe passed.
    Ready,
    /// Being stopped (signal sent, grace period running).
    Stopping,
    /// Ended and not coming back: stopped on request, or ended with autorestart off.
    Stopped,
    /// Ended too often before `min_uptime`; not restarted (PM2's `errored`).
    Errored,
    /// Ended; will be started again after the restart delay.
    Restarting,
}

impl AppState {
    pub fn as_str(self) -> &'static str {
        match self {
            AppState::Waiting => "waiting",
            AppState::Starting => "starting",
            AppState::Running => "running",
            AppState::Ready => "ready",
            AppState::Stopping => "stopping",
            AppState::Stopped => "stopped",
            AppState::Errored => "errored",
            AppState::Restarting => "restarting",
        }
    }

    /// Running and ready.
    pub(crate) fn is_ready(self) -> bool {
        matches!(self, AppState::Running | AppState::Ready)
    }

    /// PM2's word for this state, as the monitor knows them: `launching`, `online`, `stopping`,
    /// `stopped`, `errored`, `waiting restart`.
    pub fn pm2_status(self) -> &'static str {
        match self {
            AppState::Waiting | AppState::Starting => "launching",
            AppState::Running | AppState::Ready => "online",
            AppState::Restarting => "waiting restart",
            AppState::Stopping => "stopping",
            AppState::Stopped => "stopped",
            AppState::Errored => "errored",
        }
    }
}

impl std::fmt::Display for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an app's last process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastExit {
    /// Exit code when it exited normally.
    pub code: Option<i32>,
    /// Signal number when a signal ended it.
    pub signal: Option<i32>,
    /// How long it ran.
    pub uptime_ms: u64,
    /// `status 1` or `signal 9 (SIGKILL)`, or why it could not start.
    pub description: String,
}

/// One app as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppStatus {
    pub name: String,
    pub role: Option<Role>,
    pub state: AppState,
    pub pid: Option<u32>,
    /// Restarts so far (every restart counts).
    pub restarts: u32,
    /// Consecutive exits before `min_uptime` (what `max_restarts` limits).
    pub unstable_restarts: u32,
    /// Restarts because its process tree used more than `max_memory_restart` (counted in
    /// `restarts` too).
    pub memory_restarts: u32,
    pub max_restarts: u32,
    pub gpu: Option<u32>,
    pub gpu_uuid: Option<String>,
    pub port: Option<u16>,
    pub essential: bool,
    pub autorestart: bool,
    pub connector: Option<String>,
    pub index: Option<u32>,
    /// The apps it still waits for (state `waiting`).
    pub waiting_for: Vec<String>,
    pub last_exit: Option<LastExit>,
    /// Why it is in this state, in words (the last probe error, why it errored).
    pub detail: Option<String>,
    /// Milliseconds since the runtime started, when the app entered this state.
    pub since_ms: u64,
    /// Milliseconds since the runtime started, when its current process started (`None` before
    /// the first start).
    pub started_ms: Option<u64>,
    /// The app's `min_uptime`: a process counts as having stayed up once it has run this long.
    pub min_uptime_ms: u64,
    /// Held stopped by an operator's stop (`machine-runtime stop`, `POST /stop/service`) until it is
    /// started. Such an app, and a worker that only waits for such apps, keeps the machine from
    /// being ready but not from being healthy: a liveness probe must not undo the operator's stop.
    pub stopped_on_request: bool,
}

impl AppStatus {
    pub(crate) fn new(spec: &AppSpec, pin: Option<&GpuPin>) -> AppStatus {
        AppStatus {
            name: spec.name.clone(),
            role: spec.role,
            state: if spec.wait_for.is_empty() {
                AppState::Starting
            } else {
                AppState::Waiting
            },
            pid: None,
            restarts: 0,
            unstable_restarts: 0,
            memory_restarts: 0,
            max_restarts: spec.restart.max_restarts,
            gpu: pin.map(|p| p.index),
            gpu_uuid: pin.map(|p| p.uuid.clone()),
            port: spec.port,
            essential: spec.essential,
            autorestart: spec.restart.autorestart,
            connector: spec.connector.clone(),
            index: spec.index,
            waiting_for: spec.wait_for.clone(),
            last_exit: None,
            detail: None,
            since_ms: 0,
            started_ms: None,
            min_uptime_ms: u64::try_from(spec.restart.min_uptime.as_millis()).unwrap_or(u64::MAX),
            stopped_on_request: false,
        }
    }

    /// Whether the app has stayed up at `now_ms` (milliseconds since the runtime started): healthy
    /// (a one-shot app that finished cleanly counts) and, when running, up for at least its
    /// `min_uptime`, the time PM2 uses to tell a stable process from a crash loop. `Err` carries how
    /// many more milliseconds a healthy process needs; `None` inside means it is not healthy at all.
    pub(crate) fn stayed_up(&self, now_ms: u64) -> Result<(), Option<u64>> {
        if !self.is_healthy() {
            return Err(None);
        }
        if self.state == AppState::Stopped {
            return Ok(());
        }
        let up = now_ms.saturating_sub(self.started_ms.unwrap_or(now_ms));
        match self.min_uptime_ms.checked_sub(up) {
            Some(left) if left > 0 => Err(Some(left)),
            _ => Ok(()),
        }
    }

    /// Running and ready, or a one-shot app (autorestart off) that finished successfully: done,
    /// not broken.
    pub(crate) fn is_healthy(&self) -> bool {
        match self.state {
            AppState::Running | AppState::Ready => true,
            AppState::Stopped => {
                !self.autorestart && self.last_exit.as_ref().is_some_and(|e| e.code == Some(0))
            }
            _ => false,
        }
    }

    /// Why this app keeps the machine from being healthy, or `None` when it is fine.
    pub(crate) fn unhealthy_reason(&self) -> Option<String> {
        if self.is_healthy() {
            return None;
        }
        match self.state {
            // The detail says why: "simulation-gpu0 is not ready (restarting after status 1)".
            AppState::Waiting => Some(match &self.detail {
                Some(detail) => format!(
                    "{} is waiting for {}: {detail}",
                    self.name,
                    self.waiting_for.join(", ")
                ),
                None => format!(
                    "{} is waiting for {}",
                    self.name,
                    self.waiting_for.join(", ")
                ),
            }),
            state => Some(match &self.detail {
                Some(detail) => format!("{} is {state}: {detail}", self.name),
                None => format!("{} is {state}", self.name),
            }),
        }
    }
}

/// The whole machine's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Apps are being started; not every app has been ready yet.
    Starting,
    /// Every app has been ready at least once (the broker message's word, `ready`).
    Ready,
    /// A stop was requested or an essential app ended; apps are being stopped.
    Stopping,
    /// Every app is stopped and reaped.
    Stopped,
}

/// Everything the supervisor knows, as one value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub phase: Phase,
    /// Apps in ecosystem order.
    pub apps: Vec<AppStatus>,
    /// Processes reaped that no app was tracking (orphans re-parented to us).
    pub orphans_reaped: u64,
}

impl Snapshot {
    /// Reasons the apps are not all up and ready; empty means healthy. Apps an operator holds
    /// stopped ([`Snapshot::held_by_operator`]) do not count here; they count against readiness.
    pub(crate) fn unhealthy_reasons(&self) -> Vec<String> {
        let mut reasons: Vec<String> = Vec::new();
        match self.phase {
            Phase::Stopping => reasons.push("the machine is stopping".to_string()),
            Phase::Stopped => reasons.push("the machine has stopped".to_string()),
            _ => {}
        }
        reasons.extend(
            self.apps
                .iter()
                .filter(|a| !self.held_by_operator(a))
                .filter_map(AppStatus::unhealthy_reason),
        );
        reasons
    }

    /// Whether `app` is down only by an operator's choice: stopped on request, or waiting only for
    /// apps stopped on request.
    pub(crate) fn held_by_operator(&self, app: &AppStatus) -> bool {
        app.stopped_on_request
            || (app.state == AppState::Waiting
                && !app.waiting_for.is_empty()
                && app
                    .waiting_for
                    .iter()
                    .all(|name| self.app(name).is_some_and(|dep| dep.stopped_on_request)))
    }

    /// Why the machine is not ready at `now_ms` (milliseconds since the runtime started): every app
    /// must have stayed up ([`AppStatus::stayed_up`]) and nothing may be stopping. Empty means ready.
    pub(crate) fn not_ready_reasons(&self, now_ms: u64) -> Vec<String> {
        let mut reasons = self.unhealthy_reasons();
        reasons.extend(
            self.apps
                .iter()
                .filter(|a| self.held_by_operator(a))
                .filter_map(AppStatus::unhealthy_reason),
        );
        if !reasons.is_empty() {
            return reasons;
        }
        for app in &self.apps {
            if let Err(Some(left)) = app.stayed_up(now_ms) {
                reasons.push(format!(
                    "{} has been up less than its min_uptime {} ms ({left} ms to go)",
                    app.name, app.min_uptime_ms
                ));
            }
        }
        reasons
    }

    /// Milliseconds until the last healthy app has stayed up for its `min_uptime` (0 when none is
    /// still settling); the moment readiness may change without a new snapshot.
    pub(crate) fn settles_in(&self, now_ms: u64) -> u64 {
        self.apps
            .iter()
            .filter_map(|a| a.stayed_up(now_ms).err().flatten())
            .min()
            .unwrap_or(0)
    }

    pub fn app(&self, name: &str) -> Option<&AppStatus> {
        self.apps.iter().find(|a| a.name == name)
    }
}

/// One state change of one app, as published on the event channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateEvent {
    pub app: String,
    pub from: AppState,
    pub to: AppState,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Milliseconds since the runtime started.
    pub at_ms: u64,
    /// The log line for this change (without the `machine-runtime: ` prefix).
    pub message: String,
}

/// The shared board apps write their state to.
pub(crate) struct Board {
    snapshot: watch::Sender<Snapshot>,
    events: broadcast::Sender<StateEvent>,
    started: Instant,
}

impl Board {
    pub(crate) fn new(apps: Vec<AppStatus>, started: Instant) -> Board {
        let (snapshot, _) = watch::channel(Snapshot {
            phase: Phase::Starting,
            apps,
            orphans_reaped: 0,
        });
        let (events, _) = broadcast::channel(1024);
        Board {
            snapshot,
            events,
            started,
        }
    }

    pub(crate) fn watch(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.subscribe()
    }

    pub(crate) fn events(&self) -> broadcast::Sender<StateEvent> {
        self.events.clone()
    }

    /// Changes fields without a state change (no log line, no event).
    pub(crate) fn update(&self, idx: usize, f: impl FnOnce(&mut AppStatus)) {
        self.snapshot.send_modify(|s| f(&mut s.apps[idx]));
    }

    pub(crate) fn set_orphans(&self, count: u64) {
        self.snapshot.send_if_modified(|s| {
            let changed = s.orphans_reaped != count;
            s.orphans_reaped = count;
            changed
        });
    }

    /// Moves app `idx` to `to`, applies `f`, logs `message` once and publishes the event.
    pub(crate) fn transition(
        &self,
        idx: usize,
        to: AppState,
        message: String,
        f: impl FnOnce(&mut AppStatus),
    ) {
        let at_ms = self.started.elapsed().as_millis() as u64;
        let mut event = None;
        let mut became_running = false;
        self.snapshot.send_modify(|s| {
            let app = &mut s.apps[idx];
            let from = app.state;
            f(app);
            app.state = to;
            app.since_ms = at_ms;
            if to != AppState::Waiting {
                app.waiting_for.clear();
            }
            // An app held stopped by an operator stays so marked until it leaves `stopped` (its
            // start on request has begun): a second `start` meanwhile must not count as a restart.
            if to != AppState::Stopped {
                app.stopped_on_request = false;
            }
            if !matches!(
                to,
                AppState::Starting | AppState::Running | AppState::Ready | AppState::Stopping
            ) {
                app.pid = None;
            }
            event = Some(StateEvent {
                app: app.name.clone(),
                from,
                to,
                pid: app.pid,
                restarts: app.restarts,
                at_ms,
                message: message.clone(),
            });
            if s.phase == Phase::Starting && s.apps.iter().all(AppStatus::is_healthy) {
                s.phase = Phase::Ready;
                became_running = true;
            }
        });
        crate::log::runtime(&message);
        if let Some(event) = event {
            // No subscriber is fine: the broker may not be running.
            let _ = self.events.send(event);
        }
        if became_running {
            let count = self.snapshot.borrow().apps.len();
            crate::log::runtime(&format!(
                "all {count} app{} up and ready after {}",
                if count == 1 { " is" } else { "s are" },
                crate::time::human_duration(self.started.elapsed())
            ));
        }
    }

    /// Milliseconds since the runtime started, the clock of every `*_ms` field.
    pub(crate) fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.snapshot.send_modify(|s| s.phase = phase);
    }
}
