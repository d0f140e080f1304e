//! The supervisor: starts services first and workers once their services are ready, restarts by
//! PM2's rules, and stops everything (workers first, then services) on SIGTERM/SIGINT or when an
//! essential app ends. Busy workers are drained on stop and restart: a worker finishes its job
//! within its `kill_timeout`, or is killed and its job handed back to the queue ([`BusyProbe`]).
//!
//! Shutdown follows detect → tell → wait: one [`CancellationToken`] says "stopping" to every
//! task (health endpoint, broker), a [`TaskTracker`] is closed and awaited before `run` returns.

mod app;
#[cfg(test)]
mod fake;
mod follow;
mod host;
mod ipc;
pub mod logs;
pub(crate) mod memory;
mod output;
pub(crate) mod policy;
mod spawn;
pub mod state;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::command::{self, ChildCommand, Context};
use crate::ecosystem::{AppSpec, Role};
use crate::reaper::Reaper;
use crate::signals::{StopSignals, signal_name};
use crate::time::human_duration;
use app::{AppEnd, AppTask};
use host::Host;
use logs::{AppLog, Logs};
use machine_model::components::Masker;
use spawn::Spawner;
use state::Board;
pub use state::{AppState, AppStatus, LastExit, Phase, Snapshot, StateEvent};
// Every runtime line goes through the one log front end.
use crate::log::runtime as log;

/// Why the supervisor refuses to start; every problem is listed.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the machine:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct PreflightError {
    pub problems: Vec<String>,
}

/// Why the supervisor stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("essential app \"{app}\" {reason}; stopped everything")]
    EssentialEnded { app: String, reason: String },
    #[error("every app has ended and at least one failed: {summary}")]
    AllEnded { summary: String },
    #[error("cannot set up the supervisor: {0}")]
    Setup(#[from] std::io::Error),
}

/// Options for [`Supervisor::new`].
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// Runtime environment, GPU UUIDs (by index) and the runtime binary, for child commands.
    pub context: Context,
    /// Listen for SIGTERM/SIGINT and forward them (true for `up`).
    pub handle_signals: bool,
}

impl SupervisorOptions {
    /// The current process's environment, pinning to `gpu_uuids` (ordered by GPU index).
    pub fn new(gpu_uuids: Vec<String>) -> SupervisorOptions {
        SupervisorOptions {
            context: Context::from_process(gpu_uuids),
            handle_signals: true,
        }
    }
}

/// Why [`SupervisorHandle::restart`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestartError {
    #[error("no app named \"{name}\"{}", .suggestion.as_ref().map(|s| format!("; did you mean \"{s}\"?")).unwrap_or_default())]
    UnknownApp {
        name: String,
        suggestion: Option<String>,
    },
    #[error("the machine is stopping; \"{name}\" is not restarted")]
    Stopping { name: String },
    #[error("\"{name}\" is waiting for {waiting_for}; it starts by itself once they are ready")]
    Waiting { name: String, waiting_for: String },
}

/// A cheap, cloneable view of a supervisor for other tasks (health endpoint, broker).
#[derive(Clone)]
pub struct SupervisorHandle {
    snapshot: watch::Receiver<Snapshot>,
    events: broadcast::Sender<StateEvent>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    stop_requests: mpsc::UnboundedSender<i32>,
    started: Instant,
    logs: Logs,
    /// Per app (by index): a counter bumped by each restart request.
    restarts: Arc<Vec<watch::Sender<u64>>>,
    /// Per app (by index): `true` while an operator's stop holds it stopped ([`SupervisorHandle::stop_app`]).
    paused: Arc<Vec<watch::Sender<bool>>>,
}

impl SupervisorHandle {
    /// The current state of every app.
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// A receiver that sees every new snapshot (`changed().await`).
    pub fn watch(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.clone()
    }

    /// State-change events, one per transition, in order. A slow receiver gets `Lagged` and
    /// should re-read [`SupervisorHandle::snapshot`].
    pub fn subscribe(&self) -> broadcast::Receiver<StateEvent> {
        self.events.subscribe()
    }

    /// Cancelled when the machine starts stopping. Tasks on [`SupervisorHandle::tracker`] must
    /// finish after it fires; `run` waits for them (after every app is stopped) before returning.
    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Spawn long-running helper tasks (health, broker) here so shutdown waits for them.
    pub(crate) fn tracker(&self) -> TaskTracker {
        self.tracker.clone()
    }

    /// Asks the supervisor to stop everything, forwarding `signal` (SIGTERM, SIGINT) to the apps.
    pub(crate) fn request_stop(&self, signal: i32) {
        let _ = self.stop_requests.send(signal);
    }

    /// The recent output of every app.
    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    /// Restarts app `name` as `pm2 restart` does: a running process gets its stop signal (its `kill_signal`,
    /// `kill_timeout`, then SIGKILL) and is started again at once; one waiting out a restart delay
    /// starts at once; an `errored` or `stopped` app is started again with a fresh restart count
    /// of unstable exits. A busy worker (on a machine that reports to the broker) first gets its
    /// `kill_timeout` to finish its job; one still busy then is killed and its job handed back to
    /// the queue before it starts again. Returns the state it was in.
    pub fn restart(&self, name: &str) -> Result<AppState, RestartError> {
        let (idx, snapshot) = self.operable(name)?;
        let app = &snapshot.apps[idx];
        if app.state == AppState::Waiting {
            return Err(RestartError::Waiting {
                name: name.to_owned(),
                waiting_for: app.waiting_for.join(", "),
            });
        }
        // `pm2 restart` of a stopped app starts it: an operator's stop ends here.
        self.paused[idx].send_replace(false);
        self.restarts[idx].send_modify(|n| *n += 1);
        Ok(app.state)
    }

    /// The index of app `name`, or why a restart, stop or start of it is refused (unknown name,
    /// machine stopping).
    fn operable(&self, name: &str) -> Result<(usize, Snapshot), RestartError> {
        let snapshot = self.snapshot();
        let Some(idx) = snapshot.apps.iter().position(|a| a.name == name) else {
            return Err(RestartError::UnknownApp {
                name: name.to_owned(),
                suggestion: machine_model::suggest::did_you_mean(
                    name,
                    snapshot.apps.iter().map(|a| a.name.as_str()),
                )
                .map(str::to_owned),
            });
        };
        if matches!(snapshot.phase, Phase::Stopping | Phase::Stopped)
            || self.shutdown.is_cancelled()
        {
            return Err(RestartError::Stopping {
                name: name.to_owned(),
            });
        }
        Ok((idx, snapshot))
    }

    /// Stops app `name` as `pm2 stop` does: a running process gets its stop signal (SIGTERM,
    /// `kill_timeout`, then SIGKILL; a busy worker first gets its `kill_timeout` to finish its job, as
    /// on restart), and the app stays `stopped` — no restart policy brings it back — until
    /// [`SupervisorHandle::start_app`] or a restart. Returns the state it was in; stopping a stopped
    /// app changes nothing.
    pub fn stop_app(&self, name: &str) -> Result<AppState, RestartError> {
        let (idx, snapshot) = self.operable(name)?;
        self.paused[idx].send_replace(true);
        Ok(snapshot.apps[idx].state)
    }

    /// Starts app `name` as `pm2 start` does for a known app: one stopped by
    /// [`SupervisorHandle::stop_app`] is started again (once the apps it waits for are ready), and one
    /// that ended for good (`errored`, or `stopped` with autorestart off) is started with a fresh count
    /// of unstable exits. An app that is running or about to run is left as it is. Returns the state it
    /// was in.
    pub fn start_app(&self, name: &str) -> Result<AppState, RestartError> {
        let (idx, snapshot) = self.operable(name)?;
        let app = &snapshot.apps[idx];
        let state = app.state;
        let was_held = self.paused[idx].send_replace(false);
        // One that ended for good waits for a restart request. One held stopped by an operator's
        // stop starts once unheld, and stays marked `stopped_on_request` until it has left
        // `stopped`: a second `start` in that moment is the same start, not a restart.
        if !was_held
            && !app.stopped_on_request
            && matches!(state, AppState::Stopped | AppState::Errored)
        {
            self.restarts[idx].send_modify(|n| *n += 1);
        }
        Ok(state)
    }

    /// Whether an operator's stop holds app `name` stopped.
    pub fn is_stopped_by_request(&self, name: &str) -> bool {
        let snapshot = self.snapshot();
        snapshot
            .apps
            .iter()
            .position(|a| a.name == name)
            .is_some_and(|idx| *self.paused[idx].borrow())
    }

    /// Time since the supervisor was created.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// When the supervisor was created: the clock of every `*_ms` field of a [`Snapshot`].
    pub fn started(&self) -> Instant {
        self.started
    }

    /// [`SupervisorHandle::uptime`] in milliseconds, the unit of the snapshot's `*_ms` fields.
    pub fn uptime_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A checked set of apps with their commands, ready to run.
pub(crate) struct Supervisor {
    apps: Vec<Arc<AppSpec>>,
    commands: Vec<ChildCommand>,
    board: Arc<Board>,
    handle: SupervisorHandle,
    stop_requests: mpsc::UnboundedReceiver<i32>,
    handle_signals: bool,
    before_stop: Vec<StopHook>,
    drain: Option<Arc<dyn BusyProbe>>,
    /// Starts the apps' processes: real ones, or the unit tests' fake.
    spawner: Spawner,
    /// The apps' cgroups, being made ahead of their start ([`Supervisor::use_cgroups`]).
    cgroups: Option<crate::cgroup::Preparing>,
}

/// Work that must finish before any app is signalled (the broker's final `shutdown` message).
type StopHook = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// How often busy workers are asked again while the machine waits for them on stop or restart.
pub(crate) const DRAIN_POLL: Duration = Duration::from_millis(50);
/// The longest one busy-probe may take before the workers it asked about count as idle.
pub(crate) const DRAIN_PROBE_LIMIT: Duration = Duration::from_secs(2);

/// Why workers are drained by [`Supervisor::drain_workers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// The machine stops: a busy worker gets its `kill_timeout` to finish its job.
    Stop,
    /// An app they wait for (their service) is no longer up. A busy worker cannot finish its job
    /// without its service, and once idle it claims the next job at once (the worker polls on its
    /// own timer), which would fail too: so it is at its deadline at once, and an idle one gets the
    /// signal at once as on stop. The workers start again once the service is ready.
    Hold,
}

/// Tells the supervisor, when the machine stops or a worker is restarted, which workers are in the
/// middle of a job (the broker link reads each worker's `worker:<id>` hash), and hands back to the
/// queue the job of a worker it had to kill.
pub(crate) trait BusyProbe: Send + Sync + 'static {
    /// For each app name given, in order: `Some(job id)` while that worker is busy (the id may be
    /// empty when the worker did not name it), `None` when it is idle or not known.
    fn busy<'a>(
        &'a self,
        apps: &'a [String],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Option<String>>> + Send + 'a>>;

    /// Hands back to the queue every job the worker of app `app` still holds, once its processes
    /// are gone (killed mid-job): `job` is the one last seen (may be empty), `why` says why it was
    /// killed. Logs what it did, one line per job; bounded in time; never fails the job.
    fn hand_back<'a>(
        &'a self,
        app: &'a str,
        job: &'a str,
        why: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
}

/// Waits until app `idx` has ended for good on this stop (its process group reaped, or given up on
/// after SIGKILL), then hands back the job its worker still holds.
async fn hand_back_once_stopped(
    board: Arc<Board>,
    idx: usize,
    probe: Arc<dyn BusyProbe>,
    app: String,
    job: String,
    why: String,
) {
    let mut snapshot = board.watch();
    // Gone: stopped, errored, or (held for its service) waiting with no process.
    let _ = snapshot
        .wait_for(|s| {
            let app = &s.apps[idx];
            app.pid.is_none()
                && matches!(
                    app.state,
                    AppState::Stopped | AppState::Errored | AppState::Waiting
                )
        })
        .await;
    probe.hand_back(&app, &job, &why).await;
}

impl Supervisor {
    /// Checks everything that can be checked before starting: GPU pins against the UUIDs given,
    /// required environment variables (names only; values are never logged).
    pub fn new(
        mut apps: Vec<AppSpec>,
        options: SupervisorOptions,
    ) -> Result<Supervisor, PreflightError> {
        let mut problems = Vec::new();
        // PM2's KILL_SIGNAL for the apps that name none (`PM2_KILL_SIGNAL`, default SIGINT).
        match crate::signals::pm2_kill_signal(&options.context.runtime_env) {
            Ok(signal) => {
                for app in &mut apps {
                    app.restart.kill_signal.get_or_insert(signal);
                }
            }
            Err(problem) => problems.push(problem),
        }
        let mut commands = Vec::new();
        let checking = Instant::now();
        let mut builder = command::Builder::new(&options.context);
        for app in &apps {
            match builder.build(app) {
                Ok(cmd) => {
                    problems.extend(program_problem(app, &cmd, checking));
                    commands.push(cmd)
                }
                // The same variable for every instance of a service: each problem once.
                Err(command::CommandError::ExtraArgs { problems: found }) => {
                    for problem in found {
                        if !problems.contains(&problem) {
                            problems.push(problem);
                        }
                    }
                }
                Err(e) => problems.push(e.to_string()),
            }
            problems.extend(missing_env(app, &options.context.runtime_env));
        }
        if apps.is_empty() {
            problems.push("the ecosystem has no apps".to_string());
        }
        if let Ok(limit) = crate::limits::open_files()
            && let Some(problem) = crate::limits::check_open_files(apps.len(), limit)
        {
            problems.push(problem);
        }
        if !problems.is_empty() {
            return Err(PreflightError { problems });
        }
        let started = Instant::now();
        let statuses = apps
            .iter()
            .zip(&commands)
            .map(|(app, cmd)| AppStatus::new(app, cmd.gpu.as_ref()))
            .collect();
        let board = Arc::new(Board::new(statuses, started));
        let runtime_env = &options.context.runtime_env;
        let runtime_masker = Masker::for_env(logs::utf8(runtime_env.iter()));
        let logs = Logs::new(apps.iter().zip(&commands).map(|(app, cmd)| {
            let log = AppLog::for_child(&cmd.env, runtime_env, &runtime_masker);
            (app.name.clone(), Arc::new(log))
        }));
        let restarts = Arc::new(apps.iter().map(|_| watch::channel(0).0).collect());
        let paused = Arc::new(apps.iter().map(|_| watch::channel(false).0).collect());
        let (stop_tx, stop_rx) = mpsc::unbounded_channel();
        let handle = SupervisorHandle {
            snapshot: board.watch(),
            events: board.events(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            stop_requests: stop_tx,
            started,
            logs,
            restarts,
            paused,
        };
        Ok(Supervisor {
            apps: apps.into_iter().map(Arc::new).collect(),
            commands,
            board,
            handle,
            stop_requests: stop_rx,
            handle_signals: options.handle_signals,
            before_stop: Vec::new(),
            drain: None,
            spawner: Spawner::Real(Reaper::new()),
            cgroups: None,
        })
    }

    /// Starts the apps as `fake` scripts them instead of as real processes.
    #[cfg(test)]
    pub(crate) fn use_fake(&mut self, fake: Arc<fake::Fake>) {
        self.spawner = Spawner::Fake(fake);
    }

    /// Takes the apps' cgroups from `preparing` ([`crate::cgroup::Preparing`], told the apps in
    /// [`start_order`]) instead of making them as the apps start.
    pub(crate) fn use_cgroups(&mut self, preparing: crate::cgroup::Preparing) {
        self.cgroups = Some(preparing);
    }

    pub fn handle(&self) -> SupervisorHandle {
        self.handle.clone()
    }

    /// Every app with the exact command it runs (environment included), in ecosystem order.
    pub fn apps(&self) -> impl Iterator<Item = (&AppSpec, &ChildCommand)> {
        self.apps.iter().map(Arc::as_ref).zip(&self.commands)
    }

    /// Runs `hook` when the machine starts stopping, before any app is signalled; hooks run in the
    /// order added. A hook must bound its own time: the stop waits for it (a second signal skips it).
    pub(crate) fn before_stop(
        &mut self,
        hook: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.before_stop.push(Box::pin(hook));
    }

    /// Lets busy workers finish on stop and restart: a worker that `probe` says is busy is not
    /// signalled until it is idle or its `kill_timeout` has passed. Then it is killed (SIGKILL to
    /// its process group: on SIGTERM the worker would fail its job permanently) and `probe` hands its
    /// job back to the queue. Idle workers are signalled at once. Without a probe every worker is
    /// signalled at once.
    pub(crate) fn drain_with(&mut self, probe: Arc<dyn BusyProbe>) {
        self.drain = Some(probe);
    }

    /// Sends the stop signal to `workers` (through `stops`, by app index): idle ones at once, busy ones
    /// once they are idle or their `kill_timeout` has passed ([`Drain::Stop`]), or at once through the
    /// deadline path ([`Drain::Hold`]). One still busy at its deadline is killed and its job handed
    /// back (a task in `handbacks`, which waits for the worker to be gone). Returns early, with `true`,
    /// when a second signal escalated the stop (every app killed; the jobs of the workers still busy
    /// are handed back as well).
    async fn drain_workers(
        &mut self,
        workers: &[usize],
        stops: &[watch::Sender<Option<i32>>],
        signal: i32,
        signals: &mut Option<StopSignals>,
        why: Drain,
        handbacks: &mut tokio::task::JoinSet<()>,
    ) -> bool {
        let Some(probe) = self.drain.clone() else {
            for &i in workers {
                let _ = stops[i].send(Some(signal));
            }
            return false;
        };
        let mut draining = self
            .first_drain_round(workers, stops, signal, why, &probe)
            .await;
        while !draining.is_empty() {
            let earliest = draining
                .iter()
                .map(|(_, _, deadline)| *deadline)
                .min()
                .unwrap_or_else(tokio::time::Instant::now);
            let second = next_signal(signals);
            tokio::select! {
                () = tokio::time::sleep(DRAIN_POLL) => {
                    draining = self.recheck_busy(draining, stops, signal, &probe, handbacks).await;
                }
                () = tokio::time::sleep_until(earliest) => {
                    self.kill_overdue(&mut draining, stops, why, &probe, handbacks);
                }
                signal = second => {
                    log(&format!("{} received again; not waiting for busy workers: sending SIGKILL to every app now", signal_name(signal)));
                    for stop in stops {
                        let _ = stop.send(Some(libc::SIGKILL));
                    }
                    for (i, job, _) in draining {
                        handbacks.spawn(hand_back_once_stopped(
                            self.board.clone(), i, probe.clone(), self.apps[i].name.clone(), job,
                            format!("killed by a second {}", signal_name(signal)),
                        ));
                    }
                    return true;
                }
                // A stop request during a hold is left for the main loop.
                Some(_) = self.stop_requests.recv(), if why == Drain::Stop => {}
            }
        }
        false
    }

    /// The first round of a drain: signals each of `workers` that is not running or is idle, and
    /// returns the busy ones with their job and deadline (their `kill_timeout` on a stop, now on a
    /// hold), each logged. (`&mut self`: held across an await, and the supervisor is `Send` but not
    /// `Sync`, for its stop hooks.)
    async fn first_drain_round(
        &mut self,
        workers: &[usize],
        stops: &[watch::Sender<Option<i32>>],
        signal: i32,
        why: Drain,
        probe: &Arc<dyn BusyProbe>,
    ) -> Vec<Draining> {
        let mut asked = Vec::new();
        for &i in workers {
            if is_alive(&self.board, i) {
                asked.push(i);
            } else {
                let _ = stops[i].send(Some(signal));
            }
        }
        let now = tokio::time::Instant::now();
        let mut draining = Vec::new();
        for (i, busy) in asked
            .iter()
            .copied()
            .zip(self.ask_busy(probe, &asked).await)
        {
            let Some(job) = busy else {
                let _ = stops[i].send(Some(signal));
                continue;
            };
            let spec = &self.apps[i];
            let job_text = job_words(&job);
            if why == Drain::Hold {
                log(&format!(
                    "{} is busy with {job_text}, but its service is not up: it cannot finish the job, so it is stopped now",
                    spec.name
                ));
                draining.push((i, job, now));
                continue;
            }
            log(&format!(
                "{} is busy with {job_text}; it gets its kill_timeout {} to finish before {}",
                spec.name,
                human_duration(spec.restart.kill_timeout),
                signal_name(stop_signal_of(&self.apps[i]))
            ));
            self.board.update(i, |a| {
                a.detail = Some(format!(
                    "finishing {job_text} before it stops (up to kill_timeout {})",
                    human_duration(spec.restart.kill_timeout)
                ))
            });
            draining.push((i, job, now + spec.restart.kill_timeout));
        }
        draining
    }

    /// Asks `probe` which of the apps `indices` are busy, for at most [`DRAIN_PROBE_LIMIT`]: one
    /// answer per app, all idle when it does not answer in time or answers for other apps.
    fn ask_busy(
        &self,
        probe: &Arc<dyn BusyProbe>,
        indices: &[usize],
    ) -> impl std::future::Future<Output = Vec<Option<String>>> + use<> {
        let names: Vec<String> = indices.iter().map(|&i| self.apps[i].name.clone()).collect();
        let probe = probe.clone();
        async move {
            let count = names.len();
            tokio::time::timeout(DRAIN_PROBE_LIMIT, probe.busy(&names))
                .await
                .ok()
                .filter(|busy| busy.len() == count)
                .unwrap_or_else(|| vec![None; count])
        }
    }

    /// One poll of the busy workers of a drain: one that ended is signalled and its job handed back
    /// once it is stopped; one that finished its job is signalled. Returns those still busy.
    /// (`&mut self` as in [`Supervisor::first_drain_round`].)
    async fn recheck_busy(
        &mut self,
        mut draining: Vec<Draining>,
        stops: &[watch::Sender<Option<i32>>],
        signal: i32,
        probe: &Arc<dyn BusyProbe>,
        handbacks: &mut tokio::task::JoinSet<()>,
    ) -> Vec<Draining> {
        let indices: Vec<usize> = draining.iter().map(|(i, _, _)| *i).collect();
        let busy = self.ask_busy(probe, &indices).await;
        let mut still = Vec::new();
        for ((i, job, deadline), busy) in draining.drain(..).zip(busy) {
            let name = &self.apps[i].name;
            if !is_alive(&self.board, i) {
                log(&format!(
                    "{name} ended while finishing {}; whatever it still holds goes back to the queue once it is stopped",
                    job_words(&job)
                ));
                let _ = stops[i].send(Some(signal));
                handbacks.spawn(hand_back_once_stopped(
                    self.board.clone(),
                    i,
                    probe.clone(),
                    name.clone(),
                    job,
                    "it ended while the machine was stopping".to_owned(),
                ));
            } else if busy.is_none() {
                log(&format!(
                    "{name} finished {}; sending {} now",
                    job_words(&job),
                    signal_name(stop_signal_of(&self.apps[i]))
                ));
                let _ = stops[i].send(Some(signal));
            } else {
                still.push((i, job, deadline));
            }
        }
        still
    }

    /// Kills each busy worker of a drain whose deadline has come (SIGKILL: on its stop signal the
    /// worker would fail the job permanently) and hands its job back once it is gone.
    fn kill_overdue(
        &self,
        draining: &mut Vec<Draining>,
        stops: &[watch::Sender<Option<i32>>],
        why: Drain,
        probe: &Arc<dyn BusyProbe>,
        handbacks: &mut tokio::task::JoinSet<()>,
    ) {
        let now = tokio::time::Instant::now();
        draining.retain(|(i, job, deadline)| {
            if *deadline > now {
                return true;
            }
            let spec = &self.apps[*i];
            let kill_timeout = human_duration(spec.restart.kill_timeout);
            let when = match why {
                Drain::Stop => format!(
                    "still busy with {} after its kill_timeout {kill_timeout}",
                    job_words(job)
                ),
                Drain::Hold => format!("busy with {} while its service is down", job_words(job)),
            };
            log(&format!(
                "{} is {when}; killing it (SIGKILL to its process group: on {} the worker would fail the job permanently), then handing the job back to the queue",
                spec.name,
                signal_name(stop_signal_of(spec))
            ));
            let _ = stops[*i].send(Some(libc::SIGKILL));
            handbacks.spawn(hand_back_once_stopped(
                self.board.clone(),
                *i,
                probe.clone(),
                spec.name.clone(),
                job.clone(),
                match why {
                    Drain::Stop => format!(
                        "still busy at its kill_timeout {kill_timeout} when the machine stopped"
                    ),
                    Drain::Hold => "busy when its service went down".to_owned(),
                },
            ));
            false
        });
    }

    /// Runs until a stop is requested (`Ok` after everything is stopped and reaped), an essential
    /// app ends, or every app has ended.
    pub async fn run(mut self) -> Result<(), RunError> {
        let mut host = Host::setup(&self.spawner, self.cgroups.take());
        let mut signals = if self.handle_signals {
            Some(StopSignals::install()?)
        } else {
            None
        };
        let mut wiring = self.start_apps(&mut host);
        host.count_orphans(&self.board);
        // The hand-backs of workers killed busy, on a hold or on stop; awaited once every worker is gone.
        let mut handbacks = tokio::task::JoinSet::new();
        let (signal, result) = self
            .supervise(&mut wiring, &mut signals, &mut handbacks)
            .await;

        let stop_started = Instant::now();
        self.run_stop_hooks(&mut signals).await;
        self.handle.shutdown.cancel();
        self.board.set_phase(Phase::Stopping);
        self.stop_apps(&mut wiring, signal, &mut signals, &mut handbacks)
            .await;
        self.board.set_phase(Phase::Stopped);
        self.handle.tracker.close();
        self.handle.tracker.wait().await;
        host.take_down(stop_started).await;
        result
    }

    /// Makes each app's channels and starts its task: services first, then everything else, in
    /// file order; workers wait for their services through `machine_wait_for`, not through this order.
    fn start_apps(&mut self, host: &mut Host) -> Wiring {
        let names: HashMap<&str, usize> = self
            .apps
            .iter()
            .enumerate()
            .map(|(i, a)| (a.name.as_str(), i))
            .collect();
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        // One stop channel per app, by index.
        let (stops, mut stop_rxs): (Vec<_>, Vec<_>) = (0..self.apps.len())
            .map(|_| {
                let (tx, rx) = watch::channel(None);
                (tx, Some(rx))
            })
            .unzip();
        // One hold channel per app, by index: stops a worker whose service is no longer up.
        let (holds, mut hold_rxs): (Vec<_>, Vec<_>) = (0..self.apps.len())
            .map(|_| {
                let (tx, rx) = watch::channel(None);
                (tx, Some(rx))
            })
            .unzip();
        let deps: Vec<Vec<usize>> = self
            .apps
            .iter()
            .map(|spec| {
                spec.wait_for
                    .iter()
                    .filter_map(|d| names.get(d.as_str()).copied())
                    .collect()
            })
            .collect();
        let is_worker: Vec<bool> = self
            .apps
            .iter()
            .map(|a| a.role == Some(Role::Worker))
            .collect();
        let mut tasks: Vec<Option<tokio::task::JoinHandle<()>>> =
            (0..self.apps.len()).map(|_| None).collect();
        // Each command moves into its task: a command holds the app's whole environment, and a
        // second copy per app would be most of the supervisor's memory per app.
        let mut commands: Vec<Option<ChildCommand>> = std::mem::take(&mut self.commands)
            .into_iter()
            .map(Some)
            .collect();
        for idx in start_order(&self.apps) {
            let (Some(stop), Some(hold), Some(cmd)) = (
                stop_rxs[idx].take(),
                hold_rxs[idx].take(),
                commands[idx].take(),
            ) else {
                continue;
            };
            let cgroup = host.app_cgroup(idx, &self.apps[idx].name);
            let task = self.app_task(
                idx,
                cmd,
                deps[idx].clone(),
                host,
                cgroup,
                stop,
                hold,
                &ended_tx,
            );
            tasks[idx] = Some(self.handle.tracker.spawn(task.run()));
        }
        Wiring {
            stops,
            holds,
            deps,
            is_worker,
            tasks,
            ended: ended_rx,
        }
    }

    /// The task of app `idx`, which runs `cmd`.
    #[allow(clippy::too_many_arguments)]
    fn app_task(
        &self,
        idx: usize,
        cmd: ChildCommand,
        deps: Vec<usize>,
        host: &Host,
        cgroup: Option<crate::cgroup::AppCgroup>,
        stop: watch::Receiver<Option<i32>>,
        hold: watch::Receiver<Option<i32>>,
        ended: &mpsc::UnboundedSender<(usize, Option<AppEnd>)>,
    ) -> AppTask {
        AppTask {
            idx,
            deps,
            spec: self.apps[idx].clone(),
            log: self
                .handle
                .logs
                .get(&self.apps[idx].name)
                .cloned()
                .unwrap_or_else(|| Arc::new(AppLog::new(&cmd.env))),
            cmd,
            restart: self.handle.restarts[idx].subscribe(),
            paused: self.handle.paused[idx].subscribe(),
            busy: self
                .drain
                .clone()
                .filter(|_| self.apps[idx].role == Some(Role::Worker)),
            cgroup: cgroup.map(Arc::new),
            board: self.board.clone(),
            reaper: host.reaper.clone(),
            spawner: self.spawner.clone(),
            stop,
            hold,
            ended: ended.clone(),
        }
    }

    /// Watches the apps until the machine must stop: a signal, a stop request, an essential app
    /// that ended, or every app ended. Meanwhile holds workers whose service is no longer up.
    /// Returns the signal to forward and what `run` returns.
    async fn supervise(
        &mut self,
        wiring: &mut Wiring,
        signals: &mut Option<StopSignals>,
        handbacks: &mut tokio::task::JoinSet<()>,
    ) -> (i32, Result<(), RunError>) {
        let mut ended: Vec<(usize, AppEnd)> = Vec::new();
        // Workers follow their services: the board is watched for a service that is no longer up
        // while its workers run; `holding` marks those already told to stop for it.
        let mut board = self.board.watch();
        let mut holding = vec![false; self.apps.len()];
        loop {
            let signal = next_signal(signals);
            tokio::select! {
                changed = board.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let hold = self.to_hold(&mut board, &mut holding, wiring);
                    if !hold.is_empty() {
                        for &i in &hold {
                            holding[i] = true;
                        }
                        self.drain_workers(&hold, &wiring.holds, libc::SIGTERM, &mut None, Drain::Hold, handbacks)
                            .await;
                    }
                }
                signal = signal => {
                    log(&format!("{} received; {}", signal_name(signal), self.stop_order()));
                    return (signal, Ok(()));
                }
                Some(signal) = self.stop_requests.recv() => {
                    log(&format!("stop requested ({}); {}", signal_name(signal), self.stop_order()));
                    return (signal, Ok(()));
                }
                Some((idx, end)) = wiring.ended.recv() => {
                    if let Some(stop) = self.on_app_end(idx, end, &mut ended) {
                        return stop;
                    }
                }
            }
        }
    }

    /// How the apps stop, for the log line of a stop: workers before services when the machine has
    /// both, else simply the apps.
    fn stop_order(&self) -> &'static str {
        let has = |role| self.apps.iter().any(|a| a.role == Some(role));
        if has(Role::Worker) && has(Role::Service) {
            "stopping workers first, then services"
        } else {
            "stopping the apps"
        }
    }

    /// The workers to hold now, after a change on the board: running, not held yet, and one of
    /// their services no longer up (each logged with why).
    fn to_hold(
        &self,
        board: &mut watch::Receiver<Snapshot>,
        holding: &mut [bool],
        wiring: &Wiring,
    ) -> Vec<usize> {
        let snapshot = board.borrow_and_update();
        // Stopped (or never started) since it was told: it may be told again.
        for (i, app) in snapshot.apps.iter().enumerate() {
            if app.pid.is_none() || app.state == AppState::Waiting {
                holding[i] = false;
            }
        }
        let hold = follow::to_hold(&snapshot, &wiring.deps, &wiring.is_worker, holding);
        for &i in &hold {
            let why: Vec<String> = follow::not_up(&snapshot, &wiring.deps[i])
                .into_iter()
                .map(|(_, why)| why)
                .collect();
            log(&format!(
                "stopping {} until its service is ready again: {}",
                self.apps[i].name,
                why.join("; ")
            ));
        }
        hold
    }

    /// Records that app `idx` ended for good (`Some`) or was restarted on request after that
    /// (`None`). Returns the signal to forward and what `run` returns when the machine must stop:
    /// an essential app ended, or every app has.
    fn on_app_end(
        &self,
        idx: usize,
        end: Option<AppEnd>,
        ended: &mut Vec<(usize, AppEnd)>,
    ) -> Option<(i32, Result<(), RunError>)> {
        let Some(end) = end else {
            // Restarted on request after it had ended.
            ended.retain(|(i, _)| *i != idx);
            return None;
        };
        let app = &self.apps[idx];
        if app.essential
            && let AppEnd::Ended { reason, .. } = &end
        {
            log(&format!(
                "essential app {} {reason}; stopping everything",
                app.name
            ));
            return Some((
                libc::SIGTERM,
                Err(RunError::EssentialEnded {
                    app: app.name.clone(),
                    reason: reason.clone(),
                }),
            ));
        }
        ended.push((idx, end));
        if ended.len() < self.apps.len() {
            return None;
        }
        let failed: Vec<String> = ended
            .iter()
            .filter(|(_, e)| {
                !matches!(
                    e,
                    AppEnd::Ended {
                        errored: false,
                        code: Some(0),
                        ..
                    }
                )
            })
            .map(|(i, _)| self.apps[*i].name.clone())
            .collect();
        log("every app has ended; nothing left to supervise");
        let result = if failed.is_empty() {
            Ok(())
        } else {
            Err(RunError::AllEnded {
                summary: format!("{} did not end cleanly", failed.join(", ")),
            })
        };
        Some((libc::SIGTERM, result))
    }

    /// Runs the stop hooks (tell the outside world first: the apps are still up, so what it says
    /// is still true); a second signal skips them.
    async fn run_stop_hooks(&mut self, signals: &mut Option<StopSignals>) {
        let hooks = std::mem::take(&mut self.before_stop);
        if hooks.is_empty() {
            return;
        }
        let all = async {
            for hook in hooks {
                hook.await;
            }
        };
        let second = next_signal(signals);
        tokio::select! {
            () = all => {}
            signal = second => log(&format!(
                "{} received again; not waiting for the stop hooks",
                signal_name(signal)
            )),
        }
    }

    /// Stops workers first (drained: busy ones get their `kill_timeout`), hands back the jobs of
    /// those killed busy, then stops everything else; a second signal sends SIGKILL to every app.
    async fn stop_apps(
        &mut self,
        wiring: &mut Wiring,
        signal: i32,
        signals: &mut Option<StopSignals>,
        handbacks: &mut tokio::task::JoinSet<()>,
    ) {
        let total = self.apps.len();
        let worker_phase: Vec<usize> = (0..total)
            .filter(|&i| self.apps[i].role == Some(Role::Worker))
            .collect();
        let other_phase: Vec<usize> = (0..total)
            .filter(|&i| self.apps[i].role != Some(Role::Worker))
            .collect();
        let escalated = self
            .drain_workers(
                &worker_phase,
                &wiring.stops,
                signal,
                signals,
                Drain::Stop,
                handbacks,
            )
            .await;
        let escalated = self
            .wait_for_phase(&worker_phase, wiring, signals, escalated)
            .await;
        // Every worker is gone: the jobs of the killed ones go back before the services stop.
        await_handbacks(handbacks).await;
        let signal = if escalated { libc::SIGKILL } else { signal };
        for &i in &other_phase {
            let _ = wiring.stops[i].send(Some(signal));
        }
        self.wait_for_phase(&other_phase, wiring, signals, escalated)
            .await;
    }

    /// Waits for the tasks of `phase` to end; a second signal (unless the stop `escalated`
    /// already) sends SIGKILL to every app. Returns whether the stop has escalated.
    async fn wait_for_phase(
        &mut self,
        phase: &[usize],
        wiring: &mut Wiring,
        signals: &mut Option<StopSignals>,
        mut escalated: bool,
    ) -> bool {
        let handles: Vec<_> = phase
            .iter()
            .filter_map(|&i| wiring.tasks[i].take())
            .collect();
        let all = async {
            for handle in handles {
                let _ = handle.await;
            }
        };
        tokio::pin!(all);
        loop {
            let second = next_signal(signals);
            tokio::select! {
                _ = &mut all => return escalated,
                signal = second, if !escalated => {
                    log(&format!("{} received again; sending SIGKILL to every app now", signal_name(signal)));
                    escalated = true;
                    for stop in &wiring.stops {
                        let _ = stop.send(Some(libc::SIGKILL));
                    }
                }
                Some(_) = self.stop_requests.recv(), if !escalated => {}
            }
        }
    }
}

/// Each app's channels and task, by app index, from [`Supervisor::start_apps`].
struct Wiring {
    /// `Some(signal)` stops the app; `Some(SIGKILL)` later escalates.
    stops: Vec<watch::Sender<Option<i32>>>,
    /// `Some(signal)` stops a worker until its service is up again.
    holds: Vec<watch::Sender<Option<i32>>>,
    /// The apps each one waits for (`machine_wait_for`).
    deps: Vec<Vec<usize>>,
    is_worker: Vec<bool>,
    /// The app's task, until the stop has awaited it.
    tasks: Vec<Option<tokio::task::JoinHandle<()>>>,
    /// `(idx, Some(end))` when an app ends for good; `(idx, None)` when a restart request brings
    /// it back.
    ended: mpsc::UnboundedReceiver<(usize, Option<AppEnd>)>,
}

/// The problem with `cmd`'s program, where it has one: found nowhere, or only as a file that is not
/// executable ([`ChildCommand::find_program`]). PM2 refuses a script it cannot find ("Script not
/// found") before it starts anything; so does this. `checking`: when the start's checks began (a
/// program found since then is not looked at again for the next app).
fn program_problem(app: &AppSpec, cmd: &ChildCommand, checking: Instant) -> Option<String> {
    match cmd.find_program_checked_since(checking) {
        Ok(_) => None,
        Err(Some(file)) => Some(format!(
            "app \"{}\": {} is not executable; make it executable (chmod +x) or fix the app's script or interpreter",
            app.name,
            file.display()
        )),
        Err(None) => Some(format!(
            "app \"{}\": program \"{}\" is not on the app's PATH nor on the runtime's; install it, or fix the app's script or interpreter",
            app.name,
            cmd.program.to_string_lossy()
        )),
    }
}

/// One problem per variable `app` requires that neither its own environment nor the runtime's
/// sets (names only; values are never logged).
fn missing_env(
    app: &AppSpec,
    runtime_env: &std::collections::BTreeMap<std::ffi::OsString, std::ffi::OsString>,
) -> Vec<String> {
    app.required_env
        .iter()
        .filter(|name| {
            // A hand-written ecosystem may carry the value itself.
            let in_app = app.env.get(name.as_str()).is_some_and(|v| !v.is_empty());
            let in_runtime = runtime_env
                .get(std::ffi::OsStr::new(name.as_str()))
                .is_some_and(|v| !v.is_empty());
            !in_app && !in_runtime
        })
        .map(|name| {
            format!(
                "app \"{}\" needs the environment variable {name}, which is not set; pass it to the container (docker run -e {name}=... or the env file)",
                app.name
            )
        })
        .collect()
}

/// The order the apps start in (indices into `apps`): services first, then everything else, each
/// in file order.
pub(crate) fn start_order<A: std::borrow::Borrow<AppSpec>>(apps: &[A]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..apps.len()).collect();
    order.sort_by_key(|&i| apps[i].borrow().role != Some(Role::Service));
    order
}

/// Waits for the hand-backs of the workers killed busy. Each hand-back bounds its own time (a dead
/// Redis cannot hold up the stop); this bound only guards against a worker task that ended
/// without a final state.
async fn await_handbacks(handbacks: &mut tokio::task::JoinSet<()>) {
    let limit =
        Duration::from_millis(u64::from(machine_model::catalog::JOB_HANDBACK_TIMEOUT_MS) + 1000);
    let all = async { while handbacks.join_next().await.is_some() {} };
    if tokio::time::timeout(limit, all).await.is_err() {
        log(
            "handing back the killed workers' jobs did not finish in time; stopping without waiting for it",
        );
        handbacks.abort_all();
    }
}

/// The signal that stops `app` (its `kill_signal`, resolved with PM2's `KILL_SIGNAL` at start).
fn stop_signal_of(app: &AppSpec) -> i32 {
    app.restart
        .kill_signal
        .unwrap_or(crate::signals::PM2_KILL_SIGNAL_DEFAULT)
}

/// A busy worker being drained: (app index, the job it holds, when it is killed if still busy).
type Draining = (usize, String, tokio::time::Instant);

/// Whether app `i` has a process that has not been told to stop (starting, running or ready).
fn is_alive(board: &Board, i: usize) -> bool {
    let snapshot = board.watch();
    let app = &snapshot.borrow().apps[i];
    app.pid.is_some()
        && matches!(
            app.state,
            AppState::Starting | AppState::Running | AppState::Ready
        )
}

/// `job j-1`, or `a job` when the worker did not name it.
fn job_words(job: &str) -> String {
    if job.is_empty() {
        "a job".to_owned()
    } else {
        format!("job {job}")
    }
}

/// The next SIGTERM/SIGINT, or never when the supervisor does not handle signals.
async fn next_signal(signals: &mut Option<StopSignals>) -> i32 {
    match signals.as_mut() {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
