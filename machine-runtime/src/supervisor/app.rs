//! One app's life: wait for its dependencies, start, probe, restart by policy, stop on request.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::logs::AppLog;
use super::policy::{Decision, RestartHistory};
use super::spawn::Spawner;
use super::state::{AppState, Board, LastExit};
use super::{BusyProbe, DRAIN_POLL, DRAIN_PROBE_LIMIT};
use crate::command::ChildCommand;
use crate::ecosystem::AppSpec;
use crate::probe::{Readiness, describe_status, probe_once};
use crate::reaper::Reaper;
use crate::signals::signal_name;
use crate::time::human_duration;

/// How long a process group may linger after SIGKILL before we give up waiting for it.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often an emptied-leader group is checked while grandchildren remain.
const GROUP_POLL: Duration = Duration::from_millis(5);
/// How often a slow readiness probe's last error is logged.
const PROBE_LOG_EVERY: Duration = Duration::from_secs(30);

/// How an app's task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AppEnd {
    /// Stopped because the supervisor asked.
    Requested,
    /// Ended for good on its own: `errored`, or stopped by configuration.
    Ended {
        errored: bool,
        code: Option<i32>,
        reason: String,
    },
}

pub(crate) struct AppTask {
    pub idx: usize,
    pub spec: Arc<AppSpec>,
    pub cmd: ChildCommand,
    /// Indices of the apps in `machine_wait_for`.
    pub deps: Vec<usize>,
    pub board: Arc<Board>,
    /// Runs the readiness probes' commands.
    pub reaper: Reaper,
    /// Starts its process and signals its process group.
    pub spawner: Spawner,
    /// `Some(signal)` asks the app to stop with that signal; `Some(SIGKILL)` later escalates.
    pub stop: watch::Receiver<Option<i32>>,
    /// Bumped by each restart request (`/restart/service`).
    pub restart: watch::Receiver<u64>,
    /// `true` while an operator's stop (`machine-runtime stop`) holds the app stopped: its process is
    /// stopped as on restart and no restart policy starts it until this is `false` again.
    pub paused: watch::Receiver<bool>,
    /// `Some(signal)`, sent while the process runs, stops it with that signal because an app it
    /// waits for is no longer up; it then waits for them and starts again (not a crash: no restart
    /// counted, no backoff). A later `SIGKILL` on `stop` escalates as usual.
    pub hold: watch::Receiver<Option<i32>>,
    /// For a worker on a machine that reports to the broker: whether it is busy, and where its job
    /// goes when a restart has to kill it.
    pub busy: Option<Arc<dyn BusyProbe>>,
    /// Where its output lines are kept.
    pub log: Arc<AppLog>,
    /// Its cgroup, where the runtime may make one ([`crate::cgroup`]).
    pub cgroup: Option<Arc<crate::cgroup::AppCgroup>>,
    /// `(idx, Some(end))` when the app ends for good; `(idx, None)` when a restart request brings
    /// it back after that.
    pub ended: mpsc::UnboundedSender<(usize, Option<AppEnd>)>,
}

/// The leader's exit status, received once.
struct ExitWait {
    rx: Option<oneshot::Receiver<ExitStatus>>,
    status: Option<ExitStatus>,
}

impl ExitWait {
    fn done(&self) -> bool {
        self.rx.is_none()
    }

    async fn wait(&mut self) {
        if let Some(rx) = self.rx.as_mut() {
            self.status = rx.await.ok();
            self.rx = None;
        }
    }
}

/// Why a running app is stopped by [`AppTask::stop_for_restart`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum For {
    /// A restart request: it starts again at once.
    Restart,
    /// An operator's stop: it stays stopped.
    Stop,
}

enum Supervised {
    Exited(Option<ExitStatus>),
    StopRequested,
    /// Stopped because a restart was requested; start again at once.
    RestartRequested,
    /// Stopped because an app it waits for is no longer up; start again once it is.
    Held,
    /// Stopped by an operator's stop; start again once started.
    Paused,
    /// Stopped because its process tree used more than `max_memory_restart` (why, in words);
    /// start again at once, counted as one restart.
    MemoryRestart(String),
}

/// How a start ended without anyone asking: it ran and exited with `status` (`ran`), or could not
/// start; `description` says it in words (`status 1`, or why it could not start).
struct Exit {
    ran: bool,
    status: Option<ExitStatus>,
    description: String,
}

/// A child just started: its pid (the leader of its process group), its exit, and, with an IPC
/// channel, whether it has sent `"ready"`.
struct Started {
    pid: u32,
    exit: ExitWait,
    ready: Option<watch::Receiver<bool>>,
}

impl AppTask {
    pub(crate) async fn run(mut self) {
        let mut history = RestartHistory::default();
        loop {
            let end = self.life(&mut history).await;
            if end == AppEnd::Requested {
                return;
            }
            let _ = self.ended.send((self.idx, Some(end)));
            // Ended for good: only a restart request brings it back.
            self.restart.borrow_and_update();
            tokio::select! {
                changed = self.restart.changed() => if changed.is_err() { return },
                _ = Self::stop_signal(&mut self.stop) => return,
            }
            if self.stop_requested().is_some() {
                return;
            }
            history.unstable = 0;
            history.restarts += 1;
            let restarts = history.restarts;
            crate::log::runtime(&format!("{} restarted on request", self.name()));
            self.board.update(self.idx, |a| {
                a.restarts = restarts;
                a.unstable_restarts = 0;
            });
            let _ = self.ended.send((self.idx, None));
        }
    }

    fn name(&self) -> &str {
        &self.spec.name
    }

    /// The app's own stop signal (`kill_signal`, resolved with PM2's `KILL_SIGNAL` at start).
    fn kill_signal(&self) -> i32 {
        self.spec
            .restart
            .kill_signal
            .unwrap_or(crate::signals::PM2_KILL_SIGNAL_DEFAULT)
    }

    /// The stop signal, once one was requested.
    fn stop_requested(&self) -> Option<i32> {
        *self.stop.borrow()
    }

    /// Resolves when a stop is requested (at once if one already was).
    async fn stop_signal(stop: &mut watch::Receiver<Option<i32>>) -> i32 {
        let signal = stop
            .wait_for(Option::is_some)
            .await
            .map(|s| s.unwrap_or(libc::SIGTERM));
        match signal {
            Ok(signal) => signal,
            // The supervisor is gone; nobody can ask any more.
            Err(_) => std::future::pending().await,
        }
    }

    /// The app's life until it ends for good or is stopped: start, watch, and start again as its
    /// restart policy and the requests say.
    async fn life(&mut self, history: &mut RestartHistory) -> AppEnd {
        loop {
            if *self.paused.borrow() && !self.wait_while_paused().await {
                return AppEnd::Requested;
            }
            if !self.wait_for_dependencies().await {
                self.stopped_before_start();
                return AppEnd::Requested;
            }
            if self.stop_requested().is_some() {
                self.stopped_before_start();
                return AppEnd::Requested;
            }
            if *self.paused.borrow() {
                continue;
            }
            // The paused clock in the unit tests; the same as std's Instant in production.
            let started = tokio::time::Instant::now();
            // Requests made before this start are answered by it.
            self.restart.borrow_and_update();
            // So is a hold sent while the last process was being stopped.
            self.hold.borrow_and_update();
            let exit = match self.start() {
                Ok(child) => match self.supervise(child, started).await {
                    Supervised::Exited(status) => Exit {
                        ran: true,
                        status,
                        description: status
                            .map(describe_status)
                            .unwrap_or_else(|| "an unknown status".into()),
                    },
                    Supervised::StopRequested => return AppEnd::Requested,
                    _ if self.stop_requested().is_some() => return AppEnd::Requested,
                    // Not a crash: the restart history is left as it was.
                    Supervised::Held | Supervised::Paused => continue,
                    Supervised::RestartRequested => {
                        self.count_restart(history, None);
                        continue;
                    }
                    Supervised::MemoryRestart(why) => {
                        self.count_restart(history, Some(&why));
                        continue;
                    }
                },
                Err(description) => Exit {
                    ran: false,
                    status: None,
                    description,
                },
            };
            if let Some(end) = self.after_exit(exit, started, history).await {
                return end;
            }
        }
    }

    /// Counts a restart that is not a crash: a restart request, or `max_memory_restart` (`memory`
    /// says why), which PM2 counts as one restart. The count of unstable exits starts over.
    fn count_restart(&self, history: &mut RestartHistory, memory: Option<&str>) {
        history.restarts += 1;
        history.unstable = 0;
        let restarts = history.restarts;
        let Some(why) = memory else {
            crate::log::runtime(&format!("{} restarting on request", self.name()));
            self.board.update(self.idx, |a| {
                a.restarts = restarts;
                a.unstable_restarts = 0;
            });
            return;
        };
        crate::log::runtime(&format!(
            "{} restarting (restart {restarts}): {why}",
            self.name()
        ));
        self.board.update(self.idx, |a| {
            a.restarts = restarts;
            a.memory_restarts += 1;
            a.unstable_restarts = 0;
            a.detail = Some(format!("restarted: {why}"));
        });
    }

    /// After an exit nobody asked for (or a start that failed), started at `started`: records it
    /// and applies the restart policy. `None` when the app is to start again (after its delay).
    async fn after_exit(
        &mut self,
        exit: Exit,
        started: tokio::time::Instant,
        history: &mut RestartHistory,
    ) -> Option<AppEnd> {
        let uptime = started.elapsed();
        let Exit {
            ran,
            status,
            description,
        } = exit;
        let code = status.and_then(|s| s.code());
        let last_exit = LastExit {
            code,
            signal: status.and_then(|s| s.signal()),
            uptime_ms: uptime.as_millis() as u64,
            description: description.clone(),
        };
        let what = if ran {
            format!(
                "{} exited with {description} after {}",
                self.name(),
                human_duration(uptime)
            )
        } else {
            format!("{} could not start: {description}", self.name())
        };
        if self.stop_requested().is_some() {
            // It ended on its own just as the stop came in; nothing to restart.
            self.board
                .transition(self.idx, AppState::Stopped, what, |a| {
                    a.last_exit = Some(last_exit)
                });
            return Some(AppEnd::Requested);
        }
        match history.on_exit(&self.spec.restart, uptime, code) {
            Decision::Restart { delay, unstable } => {
                self.restart_after(delay, unstable, history.restarts, what, last_exit)
                    .await
            }
            Decision::Errored { unstable } => Some(self.errored(unstable, what, last_exit)),
            Decision::Stop { reason } => {
                Some(self.ended_by_configuration(&reason, what, last_exit))
            }
        }
    }

    /// Marks the app `restarting` (the `unstable`-th consecutive unstable exit, `restarts` in all)
    /// and waits out `delay`; a restart request or an operator's stop cuts it short. `Some` when
    /// the machine stops first.
    async fn restart_after(
        &mut self,
        delay: Duration,
        unstable: u32,
        restarts: u32,
        what: String,
        last_exit: LastExit,
    ) -> Option<AppEnd> {
        let why = if unstable > 0 {
            format!(
                "attempt {} of {}",
                unstable + 1,
                self.spec.restart.max_restarts
            )
        } else {
            format!(
                "it ran longer than min_uptime {}; restart {restarts}",
                human_duration(self.spec.restart.min_uptime),
            )
        };
        let detail = format!("restarting after {}", last_exit.description);
        self.board.transition(
            self.idx,
            AppState::Restarting,
            format!("{what}; restarting in {} ({why})", human_duration(delay)),
            |a| {
                a.last_exit = Some(last_exit);
                a.restarts = restarts;
                a.unstable_restarts = unstable;
                a.detail = Some(detail);
            },
        );
        if !delay.is_zero() {
            self.restart.borrow_and_update();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // A restart request skips the delay.
                _ = self.restart.changed() => {}
                // An operator's stop ends it (the loop holds it stopped).
                () = until(&mut self.paused, true) => {}
                _ = Self::stop_signal(&mut self.stop) => {
                    self.stopped_before_start();
                    return Some(AppEnd::Requested);
                }
            }
        }
        None
    }

    /// Marks the app `errored` after `unstable` consecutive unstable exits; it stays down.
    fn errored(&self, unstable: u32, what: String, last_exit: LastExit) -> AppEnd {
        let reason = format!(
            "{unstable} consecutive exit{} before min_uptime {}",
            if unstable == 1 { "" } else { "s" },
            human_duration(self.spec.restart.min_uptime)
        );
        let (code, description) = (last_exit.code, last_exit.description.clone());
        self.board.transition(
            self.idx,
            AppState::Errored,
            format!(
                "{what}; errored after {reason}; not restarting{}",
                self.essential_note()
            ),
            |a| {
                a.last_exit = Some(last_exit);
                a.unstable_restarts = unstable;
                a.detail = Some(format!("errored after {reason}; last exit: {description}"));
            },
        );
        AppEnd::Ended {
            errored: true,
            code,
            reason: format!("errored after {reason} (last exit: {description})"),
        }
    }

    /// Marks the app `stopped` because its configuration says not to restart it (`reason`).
    fn ended_by_configuration(&self, reason: &str, what: String, last_exit: LastExit) -> AppEnd {
        let (code, description) = (last_exit.code, last_exit.description.clone());
        self.board.transition(
            self.idx,
            AppState::Stopped,
            format!("{what}; not restarting: {reason}{}", self.essential_note()),
            |a| {
                a.last_exit = Some(last_exit);
                a.detail = Some(format!("ended with {description}; {reason}"));
            },
        );
        AppEnd::Ended {
            errored: false,
            code,
            reason: format!("ended with {description} and {reason}"),
        }
    }

    /// What the log adds when an essential app ends for good.
    fn essential_note(&self) -> &'static str {
        if self.spec.essential {
            "; it is essential, so the machine stops"
        } else {
            ""
        }
    }

    /// Holds the app stopped while an operator's stop says so; false when the machine stops first.
    async fn wait_while_paused(&mut self) -> bool {
        let name = self.spec.name.clone();
        let detail = format!(
            "stopped on request; `machine-runtime start {name}` (or POST /start/service) starts it again"
        );
        if self.board.watch().borrow().apps[self.idx].state == AppState::Stopped {
            self.board.update(self.idx, |a| {
                a.detail = Some(detail.clone());
                a.stopped_on_request = true;
            });
            crate::log::runtime(&format!(
                "{name} stays stopped until it is started on request"
            ));
        } else {
            self.board.transition(
                self.idx,
                AppState::Stopped,
                format!("{name} stopped on request; it stays stopped until it is started"),
                |a| {
                    a.detail = Some(detail.clone());
                    a.stopped_on_request = true;
                },
            );
        }
        tokio::select! {
            () = until(&mut self.paused, false) => {
                crate::log::runtime(&format!("{name} started on request"));
                // `stopped_on_request` stays until the app leaves `stopped` (Board::transition).
                self.board.update(self.idx, |a| a.detail = None);
                true
            }
            _ = Self::stop_signal(&mut self.stop) => false,
        }
    }

    fn stopped_before_start(&self) {
        self.board.transition(
            self.idx,
            AppState::Stopped,
            format!("{} stopped before it started", self.name()),
            |_| {},
        );
    }

    /// Waits until every dependency is ready; false when a stop came first.
    async fn wait_for_dependencies(&mut self) -> bool {
        if self.deps.is_empty() {
            return true;
        }
        let mut snapshot = self.board.watch();
        let deps = self.deps.clone();
        // (names, why) of the dependencies that are not up.
        let not_ready = |s: &super::state::Snapshot| -> (Vec<String>, String) {
            let (names, why): (Vec<String>, Vec<String>) =
                super::follow::not_up(s, &deps).into_iter().unzip();
            (names, why.join("; "))
        };
        let (missing, why) = not_ready(&snapshot.borrow());
        if missing.is_empty() {
            return true;
        }
        let message = format!(
            "{} waits for {} to be ready: {why}",
            self.name(),
            missing.join(", ")
        );
        let mut shown = (missing.clone(), why.clone());
        self.board
            .transition(self.idx, AppState::Waiting, message, |a| {
                a.waiting_for = missing;
                a.detail = Some(why);
            });
        let idx = self.idx;
        let board = self.board.clone();
        let ready = async {
            loop {
                let (missing, why) = not_ready(&snapshot.borrow_and_update());
                if missing.is_empty() {
                    return true;
                }
                // Only a real change is written back: our own write would wake us again.
                if (&missing, &why) != (&shown.0, &shown.1) {
                    shown = (missing.clone(), why.clone());
                    board.update(idx, |a| {
                        a.waiting_for = missing;
                        a.detail = Some(why);
                    });
                }
                if snapshot.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::select! {
            ready = ready => ready,
            _ = Self::stop_signal(&mut self.stop) => false,
            // The caller sees the stop and holds the app stopped.
            () = until(&mut self.paused, true) => true,
        }
    }

    /// Spawns the child; on failure the error says why in words.
    fn start(&self) -> Result<Started, String> {
        let child =
            self.spawner
                .spawn(self.name(), &self.cmd, self.cgroup.as_deref(), &self.log)?;
        let ready = child.ready;
        let pid = child.pid;
        let started_ms = self.board.elapsed_ms();
        let pin = self
            .cmd
            .gpu
            .as_ref()
            .map(|g| format!(", GPU {} {}", g.index, g.uuid))
            .unwrap_or_default();
        let (state, tail) = match (&self.spec.readiness, self.spec.wait_ready) {
            (_, true) => (
                AppState::Starting,
                format!(
                    "; waiting for its 'ready' message (wait_ready, listen_timeout {})",
                    human_duration(self.spec.listen_timeout)
                ),
            ),
            (Some(r), false) => (
                AppState::Starting,
                format!("; waiting for its readiness probe ({})", r.check),
            ),
            (None, false) => (AppState::Running, String::new()),
        };
        self.board.transition(
            self.idx,
            state,
            format!("{} started (pid {pid}{pin}){tail}", self.name()),
            |a| {
                a.pid = Some(pid);
                a.detail = None;
                a.started_ms = Some(started_ms);
            },
        );
        Ok(Started {
            pid,
            exit: ExitWait {
                rx: Some(child.exit),
                status: None,
            },
            ready,
        })
    }

    /// Watches a running child until it exits or a stop is requested.
    async fn supervise(&mut self, child: Started, started: tokio::time::Instant) -> Supervised {
        let Started {
            pid,
            mut exit,
            ready: message,
        } = child;
        let mut ready = self.spec.readiness.is_none() && !self.spec.wait_ready;
        let probe = self.until_ready(message);
        tokio::pin!(probe);
        let limit = self.spec.max_memory_restart;
        let mut sampler = limit.map(|_| {
            let mut tick = tokio::time::interval(super::memory::interval(&self.cmd.env));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        loop {
            tokio::select! {
                _ = exit.wait() => break,
                () = next_sample(&mut sampler) => {
                    let rss = super::memory::tree_rss(pid);
                    if let Some(limit) = limit.filter(|limit| rss > *limit) {
                        let why = format!(
                            "its process tree uses {} (RSS), over its max_memory_restart {}",
                            super::memory::human_bytes(rss),
                            super::memory::human_bytes(limit)
                        );
                        crate::log::runtime(&format!("{}: {why}; restarting it gracefully", self.name()));
                        return match self.stop_for_restart(pid, &mut exit, started, For::Restart).await {
                            Supervised::RestartRequested => Supervised::MemoryRestart(why),
                            other => other,
                        };
                    }
                }
                _ = &mut probe, if !ready => {
                    ready = true;
                    self.board.transition(
                        self.idx,
                        AppState::Ready,
                        format!("{} is ready after {}", self.name(), human_duration(started.elapsed())),
                        |a| a.detail = None,
                    );
                }
                signal = Self::stop_signal(&mut self.stop) => {
                    self.stop_child(pid, signal, &mut exit, started).await;
                    return Supervised::StopRequested;
                }
                changed = self.restart.changed() => {
                    if changed.is_ok() {
                        return self.stop_for_restart(pid, &mut exit, started, For::Restart).await;
                    }
                    // The supervisor is gone; nobody can ask any more.
                    std::future::pending::<()>().await;
                }
                () = until(&mut self.paused, true) => {
                    return match self.stop_for_restart(pid, &mut exit, started, For::Stop).await {
                        Supervised::RestartRequested => Supervised::Paused,
                        other => other,
                    };
                }
                changed = self.hold.changed() => {
                    if changed.is_err() {
                        // The supervisor is gone; nobody can ask any more.
                        std::future::pending::<()>().await;
                    }
                    let signal = *self.hold.borrow_and_update();
                    if let Some(signal) = signal {
                        self.stop_child(pid, signal, &mut exit, started).await;
                        return Supervised::Held;
                    }
                }
            }
        }
        self.end_leftovers(pid, &mut exit).await;
        Supervised::Exited(exit.status)
    }

    /// Resolves once the app counts as ready: its `"ready"` message (`wait_ready`, at most
    /// `listen_timeout`), then its readiness probe where it has one; never for an app with neither
    /// (it is ready at start). `message` is its IPC channel's ready flag.
    fn until_ready(
        &self,
        message: Option<watch::Receiver<bool>>,
    ) -> impl std::future::Future<Output = ()> + use<> {
        let readiness = self.spec.readiness.clone();
        let wait_ready = self.spec.wait_ready;
        let reaper = self.reaper.clone();
        let board = self.board.clone();
        let idx = self.idx;
        let name = self.spec.name.clone();
        let listen_timeout = self.spec.listen_timeout;
        async move {
            if wait_ready {
                wait_for_ready_message(message, listen_timeout, &name).await;
            }
            match readiness {
                Some(r) => wait_until_ready(&r, &reaper, &board, idx, &name).await,
                None if wait_ready => {}
                None => std::future::pending().await,
            }
        }
    }

    /// Once the leader `pid` has exited by itself: stops what it left behind in its process group
    /// (its `kill_signal`, `kill_timeout`, then SIGKILL) and in its cgroup.
    async fn end_leftovers(&mut self, pid: u32, exit: &mut ExitWait) {
        // The leader is gone; processes it left in its group would hold ports and GPU memory.
        if self.spawner.group_alive(pid) {
            self.board.update(self.idx, |a| {
                a.detail = Some("stopping what its process left behind".into())
            });
            crate::log::runtime(&format!(
                "{} exited but left processes in its group {pid}; sending {} to them",
                self.name(),
                signal_name(self.kill_signal())
            ));
            let spec = self.spec.clone();
            terminate_group(
                &self.spawner,
                &spec.name,
                pid,
                self.kill_signal(),
                spec.restart.kill_timeout,
                exit,
                &mut self.stop,
            )
            .await;
        }
        self.empty_cgroup();
    }

    /// Kills what the app's process left in its cgroup outside its process group (a grandchild
    /// that called `setsid`), once its process is gone.
    fn empty_cgroup(&self) {
        if let Some(cgroup) = &self.cgroup {
            let left = cgroup.kill();
            if left > 0 {
                crate::log::runtime(&format!(
                    "{}: stopped {left} process{} it left outside its process group (its cgroup)",
                    self.name(),
                    if left == 1 { "" } else { "es" }
                ));
            }
        }
    }

    /// Stops the child for a restart request. An idle one (or one nobody can ask about) gets
    /// its stop signal at once. A busy worker gets its `kill_timeout` to finish its job (then SIGTERM); one
    /// still busy then is killed (SIGKILL to its process group: on SIGTERM the worker would fail the
    /// job permanently) and its job is handed back to the queue before it starts again. A machine
    /// stop arriving meanwhile takes over: the supervisor's drain decides, and its signal is obeyed.
    ///
    /// An operator's stop ([`For::Stop`]) drains the same way and returns `RestartRequested` too; the
    /// caller holds the app stopped instead of starting it.
    async fn stop_for_restart(
        &mut self,
        pid: u32,
        exit: &mut ExitWait,
        started: tokio::time::Instant,
        purpose: For,
    ) -> Supervised {
        let (noun, verb, doing, then) = match purpose {
            For::Restart => (
                "restart",
                "restarts",
                "restarting",
                ", then starting it again",
            ),
            For::Stop => ("stop", "stops", "stopping", ""),
        };
        let Some(probe) = self.busy.clone() else {
            self.stop_child(pid, libc::SIGTERM, exit, started).await;
            return Supervised::RestartRequested;
        };
        let apps = [self.spec.name.clone()];
        let ask = || async {
            tokio::time::timeout(DRAIN_PROBE_LIMIT, probe.busy(&apps))
                .await
                .ok()
                .and_then(|busy| busy.into_iter().next())
                .flatten()
        };
        let Some(job) = ask().await else {
            self.stop_child(pid, libc::SIGTERM, exit, started).await;
            return Supervised::RestartRequested;
        };
        let name = self.spec.name.clone();
        let grace = self.spec.restart.kill_timeout;
        let job_text = if job.is_empty() {
            "a job".to_owned()
        } else {
            format!("job {job}")
        };
        crate::log::runtime(&format!(
            "{name} is busy with {job_text}; the {noun} waits up to its kill_timeout {} for it to finish",
            human_duration(grace)
        ));
        self.board.update(self.idx, |a| {
            a.detail = Some(format!(
                "finishing {job_text} before it {verb} (up to kill_timeout {})",
                human_duration(grace)
            ))
        });
        let deadline = tokio::time::Instant::now() + grace;
        let why = loop {
            tokio::select! {
                () = exit.wait(), if !exit.done() => {
                    break format!("it ended while finishing {job_text} before a {noun}");
                }
                signal = Self::stop_signal(&mut self.stop) => {
                    // The machine is stopping; its drain sent this (idle: SIGTERM, deadline: SIGKILL,
                    // and it hands the job back itself).
                    self.stop_child(pid, signal, exit, started).await;
                    return Supervised::StopRequested;
                }
                () = tokio::time::sleep(DRAIN_POLL) => {
                    if ask().await.is_none() {
                        crate::log::runtime(&format!("{name} finished {job_text}; {doing} it now"));
                        self.stop_child(pid, libc::SIGTERM, exit, started).await;
                        return Supervised::RestartRequested;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    let kill_timeout = human_duration(grace);
                    crate::log::runtime(&format!(
                        "{name} is still busy with {job_text} after its kill_timeout {kill_timeout}; killing it (SIGKILL to its process group: on SIGTERM the worker would fail the job permanently), handing the job back to the queue{then}"
                    ));
                    break format!("still busy at its kill_timeout {kill_timeout} when it was {}", if purpose == For::Stop { "stopped" } else { "restarted" });
                }
            }
        };
        self.stop_child(pid, libc::SIGKILL, exit, started).await;
        probe.hand_back(&name, &job, &why).await;
        Supervised::RestartRequested
    }

    /// Stops the child: SIGKILL stays SIGKILL; any other request (the runtime's SIGTERM or SIGINT,
    /// a restart, a hold) sends the app's own stop signal, as PM2 sends its `KILL_SIGNAL` whatever
    /// stopped it. Then `kill_timeout`, then SIGKILL to the group.
    async fn stop_child(
        &mut self,
        pid: u32,
        signal: i32,
        exit: &mut ExitWait,
        started: tokio::time::Instant,
    ) {
        let signal = if signal == libc::SIGKILL {
            libc::SIGKILL
        } else {
            self.kill_signal()
        };
        let grace = self.spec.restart.kill_timeout;
        self.board.transition(
            self.idx,
            AppState::Stopping,
            format!(
                "stopping {}: {} to process group {pid}, kill_timeout {}",
                self.name(),
                signal_name(signal),
                human_duration(grace)
            ),
            |_| {},
        );
        let spec = self.spec.clone();
        let killed = terminate_group(
            &self.spawner,
            &spec.name,
            pid,
            signal,
            grace,
            exit,
            &mut self.stop,
        )
        .await;
        self.empty_cgroup();
        let description = exit
            .status
            .map(describe_status)
            .unwrap_or_else(|| "an unknown status".into());
        let how = if killed { " (after SIGKILL)" } else { "" };
        let last_exit = LastExit {
            code: exit.status.and_then(|s| s.code()),
            signal: exit.status.and_then(|s| s.signal()),
            uptime_ms: started.elapsed().as_millis() as u64,
            description: description.clone(),
        };
        self.board.transition(
            self.idx,
            AppState::Stopped,
            format!("{} stopped with {description}{how}", self.name()),
            |a| a.last_exit = Some(last_exit),
        );
    }
}

/// Resolves once `flag` is `want` (at once if it already is); never when its sender is gone (nobody
/// can ask any more).
async fn until(flag: &mut watch::Receiver<bool>, want: bool) {
    if flag.wait_for(|v| *v == want).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sends `signal` to the group, waits up to `grace` for the leader's status and an empty group,
/// then SIGKILLs the group. A later `SIGKILL` on `stop` cuts the grace short. True if SIGKILL
/// was needed.
async fn terminate_group(
    spawner: &Spawner,
    name: &str,
    pgid: u32,
    signal: i32,
    grace: Duration,
    exit: &mut ExitWait,
    stop: &mut watch::Receiver<Option<i32>>,
) -> bool {
    spawner.signal_group(pgid, signal);
    let grace_end = tokio::time::Instant::now() + grace;
    let mut kill_end: Option<tokio::time::Instant> = None;
    let mut escalate = *stop.borrow() == Some(libc::SIGKILL) && signal != libc::SIGKILL;
    loop {
        if exit.done() && !spawner.group_alive(pgid) {
            return kill_end.is_some();
        }
        if escalate && kill_end.is_none() {
            spawner.signal_group(pgid, libc::SIGKILL);
            kill_end = Some(tokio::time::Instant::now() + KILL_WAIT);
        }
        let poll = async {
            if exit.done() {
                tokio::time::sleep(GROUP_POLL).await;
            } else {
                exit.wait().await;
            }
        };
        tokio::select! {
            _ = poll => {}
            _ = tokio::time::sleep_until(grace_end), if kill_end.is_none() => {
                crate::log::runtime(&format!(
                    "{name} did not stop within kill_timeout {}; sending SIGKILL to process group {pgid}",
                    human_duration(grace)
                ));
                escalate = true;
            }
            _ = tokio::time::sleep_until(kill_end.unwrap_or(grace_end)), if kill_end.is_some() => {
                crate::log::runtime(&format!(
                    "{name}: process group {pgid} is still there {} after SIGKILL; giving up on it",
                    human_duration(KILL_WAIT)
                ));
                return true;
            }
            changed = stop.changed() => {
                if changed.is_ok() && *stop.borrow() == Some(libc::SIGKILL) {
                    escalate = true;
                }
            }
        }
    }
}

/// Waits for the app's `"ready"` message on its IPC channel, at most `listen_timeout`; PM2's rule
/// when none comes: the app counts as ready all the same (`God.js`: the timeout calls the ready
/// callback), said in the log.
async fn wait_for_ready_message(
    message: Option<watch::Receiver<bool>>,
    listen_timeout: Duration,
    name: &str,
) {
    let got = async {
        match message {
            // A channel closed without "ready" (the app closed it, or exited) leaves the timeout.
            Some(mut rx) => {
                if rx.wait_for(|r| *r).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    if tokio::time::timeout(listen_timeout, got).await.is_err() {
        crate::log::runtime(&format!(
            "{name} sent no 'ready' message within its listen_timeout {}; counted as ready, as PM2 does",
            human_duration(listen_timeout)
        ));
    }
}

/// The next tick of the memory sampler; never without one.
async fn next_sample(sampler: &mut Option<tokio::time::Interval>) {
    match sampler {
        Some(tick) => {
            tick.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Probes until the check passes; records the last failure in the app's status.
async fn wait_until_ready(r: &Readiness, reaper: &Reaper, board: &Board, idx: usize, name: &str) {
    let first = Instant::now();
    let mut last_log = Instant::now();
    loop {
        let attempt = tokio::time::Instant::now();
        match probe_once(&r.check, r.timeout, reaper).await {
            Ok(()) => return,
            Err(e) => {
                if last_log.elapsed() >= PROBE_LOG_EVERY {
                    last_log = Instant::now();
                    crate::log::runtime(&format!(
                        "{name} is still not ready after {}: {e}",
                        human_duration(first.elapsed())
                    ));
                }
                board.update(idx, |a| a.detail = Some(format!("readiness probe: {e}")));
            }
        }
        tokio::time::sleep_until(attempt + r.interval).await;
    }
}
