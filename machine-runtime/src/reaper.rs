//! The one place that waits for children: a SIGCHLD-driven `waitpid(-1)` loop that hands the exit
//! status of every child we track to whoever spawned it, and silently reaps everything else
//! (orphans re-parented to us as PID 1 or as a subreaper).
//!
//! Because this loop reaps *any* child, nothing else in the process may wait for children:
//! every child must be started through [`Reaper::spawn`], never `tokio::process` or
//! `std::process::Child::wait`. It peeks with `waitid(WNOWAIT)` first and leaves an unknown
//! child alone while a spawn is in flight, so neither a child that ends before it is registered
//! nor one that std waits for itself (after a failed exec) has its status stolen.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Hands out exit statuses of tracked children and reaps the rest.
#[derive(Clone, Default)]
pub(crate) struct Reaper {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    table: Mutex<Table>,
    orphans_reaped: AtomicU64,
}

#[derive(Default)]
struct Table {
    /// Tracked children by pid.
    waiting: HashMap<i32, oneshot::Sender<ExitStatus>>,
    /// Spawns between fork and registration. While any is in flight, an ended child we do not
    /// know yet may be one of them (or one std itself waits for after a failed exec), so it is
    /// left alone until the spawn has finished.
    in_flight: usize,
    /// An ended child was left alone because of a spawn in flight.
    deferred: bool,
}

/// A child started through the reaper.
pub(crate) struct Spawned {
    pub pid: u32,
    /// The read ends of its stdout and stderr pipes, where it has them.
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// Resolves with the exit status once the reaper collects it.
    pub exit: oneshot::Receiver<ExitStatus>,
}

/// A child just forked, before the reaper knows it: its pid and the read ends of its output pipes.
pub(crate) struct Forked {
    pub pid: u32,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Spawns `cmd` with std (which collects the child itself when exec fails); the handle is dropped,
/// never waited on.
pub(crate) fn std_spawn(cmd: &mut Command) -> std::io::Result<Forked> {
    let mut child = cmd.spawn()?;
    Ok(Forked {
        pid: child.id(),
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
    })
}

/// How the runtime relates to orphans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReaperRole {
    /// We are PID 1 of a PID namespace: every orphan comes to us.
    Pid1,
    /// `PR_SET_CHILD_SUBREAPER` took effect: orphans of our descendants come to us.
    Subreaper,
    /// Neither; orphans go to an ancestor (the error says why).
    Neither,
}

/// Makes the current process a child subreaper unless it is PID 1 already.
pub(crate) fn become_subreaper() -> (ReaperRole, Option<std::io::Error>) {
    if std::process::id() == 1 {
        return (ReaperRole::Pid1, None);
    }
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only changes a flag of the calling process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        (ReaperRole::Subreaper, None)
    } else {
        (ReaperRole::Neither, Some(std::io::Error::last_os_error()))
    }
}

impl Reaper {
    pub fn new() -> Reaper {
        Reaper::default()
    }

    /// Spawns `cmd` and registers its pid. Spawns run in parallel: the table lock is not held
    /// while the child execs.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<Spawned> {
        self.spawn_with(|| std_spawn(cmd))
    }

    /// Runs `fork`, which starts one child (and, when it returns an error, has collected any
    /// child it made), and registers the child's pid, as [`Reaper::spawn`] does.
    pub fn spawn_with(
        &self,
        fork: impl FnOnce() -> std::io::Result<Forked>,
    ) -> std::io::Result<Spawned> {
        self.lock().in_flight += 1;
        let result = fork();
        let (spawned, deferred) = {
            let mut table = self.lock();
            table.in_flight -= 1;
            let deferred = std::mem::take(&mut table.deferred);
            let spawned = result.map(|forked| {
                let (tx, rx) = oneshot::channel();
                table.waiting.insert(forked.pid as i32, tx);
                Spawned {
                    pid: forked.pid,
                    stdout: forked.stdout,
                    stderr: forked.stderr,
                    exit: rx,
                }
            });
            (spawned, deferred)
        };
        // A child that ended while spawns were in flight was left for now; collect it.
        if deferred {
            self.reap_now();
        }
        spawned
    }

    /// Collects every child that has ended; returns how many were collected.
    pub(crate) fn reap_now(&self) -> usize {
        let mut table = self.lock();
        let mut count = 0;
        loop {
            // Peek (WNOWAIT) at one ended child without collecting it yet.
            // SAFETY: siginfo_t is plain data; all-zero is a valid value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid writes only into `info`, which outlives the call.
            let rc = unsafe {
                libc::waitid(
                    libc::P_ALL,
                    0,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            if rc < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // ECHILD: no children at all.
                break;
            }
            // SAFETY: after a successful waitid, si_pid is set (0 when no child has ended).
            let pid = unsafe { info.si_pid() };
            if pid <= 0 {
                break;
            }
            let tracked = table.waiting.contains_key(&pid);
            if !tracked && table.in_flight > 0 {
                // Possibly a child being spawned right now; the spawn calls us again when done.
                table.deferred = true;
                break;
            }
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid writes only into `status`; the child has ended, so it returns at once.
            let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if reaped != pid {
                break;
            }
            count += 1;
            match table.waiting.remove(&pid) {
                // The receiver may be gone (its app gave up waiting); the status is dropped then.
                Some(tx) => {
                    let _ = tx.send(ExitStatus::from_raw(status));
                }
                None => {
                    self.inner.orphans_reaped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        count
    }

    /// Our living children that no app tracks: orphans re-parented to us (a grandchild that
    /// called `setsid` and so escaped its app's group) once their parent ended. Read from
    /// `/proc/self/task/*/children`; empty where that file does not exist.
    pub(crate) fn strays(&self) -> Vec<i32> {
        let tracked: Vec<i32> = self.lock().waiting.keys().copied().collect();
        let mut pids = Vec::new();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return pids;
        };
        for task in tasks.flatten() {
            let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for pid in children
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let zombie = u32::try_from(pid)
                    .ok()
                    .and_then(crate::procstat::state)
                    .is_none_or(|state| state == 'Z');
                if !zombie && !tracked.contains(&pid) && !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Stops every stray (see [`Reaper::strays`]): SIGTERM to it and its group, up to `grace` to
    /// end, then SIGKILL; repeated while stopping one leaves new orphans (at most 8 rounds).
    /// Returns how many were stopped. Call while [`Reaper::run`] still collects.
    pub(crate) async fn stop_strays(&self, grace: std::time::Duration) -> usize {
        let mut stopped = 0;
        for _ in 0..8 {
            let strays = self.strays();
            if strays.is_empty() {
                break;
            }
            stopped += strays.len();
            for &pid in &strays {
                // SAFETY: kill(2) on our own children (and the groups they lead, if any).
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                    libc::kill(-pid, libc::SIGTERM);
                }
            }
            let deadline = tokio::time::Instant::now() + grace;
            while tokio::time::Instant::now() < deadline
                && strays.iter().any(|p| self.strays().contains(p))
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            for pid in self.strays().into_iter().filter(|p| strays.contains(p)) {
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            self.reap_now();
        }
        stopped
    }

    /// How many children we reaped that nobody was tracking (orphans).
    pub fn orphans_reaped(&self) -> u64 {
        self.inner.orphans_reaped.load(Ordering::Relaxed)
    }

    /// Reaps on every SIGCHLD until `stop` is cancelled, then once more.
    pub async fn run(self, stop: CancellationToken) -> std::io::Result<()> {
        let mut sigchld = signal(SignalKind::child())?;
        // Children may have ended before the handler was installed.
        self.reap_now();
        loop {
            tokio::select! {
                _ = sigchld.recv() => {
                    self.reap_now();
                }
                _ = stop.cancelled() => {
                    self.reap_now();
                    return Ok(());
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table inconsistent, so poisoning is ignored.
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}
