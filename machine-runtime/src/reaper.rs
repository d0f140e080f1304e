//! The one place that waits for children: a SIGCHLD-driven `waitpid(-1)` loop that hands the exit
//! status of every child we track to whoever spawned it, and silently reaps everything else
//! (orphans re-parented to us as PID 1 or as a subreaper).
//!
//! Because this loop reaps *any* child, nothing else in the process may wait for children:
//! every child must be started through [`Reaper::spawn`], never `tokio::process` or
//! `std::process::Child::wait`.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Hands out exit statuses of tracked children and reaps the rest.
#[derive(Clone, Default)]
pub struct Reaper {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Tracked children by pid. The lock is held across spawn and across `waitpid`, so a child is
    /// always registered before its status can be collected.
    waiting: Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>,
    orphans_reaped: AtomicU64,
}

/// A child started through the reaper.
pub struct Spawned {
    pub pid: u32,
    /// The std handle, only for taking the stdio pipes; never wait on it.
    pub child: Child,
    /// Resolves with the exit status once the reaper collects it.
    pub exit: oneshot::Receiver<ExitStatus>,
}

/// How the runtime relates to orphans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaperRole {
    /// We are PID 1 of a PID namespace: every orphan comes to us.
    Pid1,
    /// `PR_SET_CHILD_SUBREAPER` took effect: orphans of our descendants come to us.
    Subreaper,
    /// Neither; orphans go to an ancestor (the error says why).
    Neither,
}

/// Makes the current process a child subreaper unless it is PID 1 already.
pub fn become_subreaper() -> (ReaperRole, Option<std::io::Error>) {
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

    /// Spawns `cmd` and registers its pid before anyone can reap it.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<Spawned> {
        let mut waiting = self.lock();
        // std may itself wait for a child whose exec failed; holding the lock keeps our
        // waitpid(-1) from stealing that status in the meantime.
        let child = cmd.spawn()?;
        let pid = child.id();
        let (tx, rx) = oneshot::channel();
        waiting.insert(pid as i32, tx);
        Ok(Spawned {
            pid,
            child,
            exit: rx,
        })
    }

    /// Collects every child that has ended; returns how many were collected.
    pub fn reap_now(&self) -> usize {
        let mut waiting = self.lock();
        let mut count = 0;
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid writes only into `status`, which outlives the call.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                // 0: children remain but none has ended; -1: ECHILD (no children) or EINTR.
                if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                break;
            }
            count += 1;
            match waiting.remove(&pid) {
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

    /// How many children we reaped that nobody was tracking (orphans).
    pub fn orphans_reaped(&self) -> u64 {
        self.inner.orphans_reaped.load(Ordering::Relaxed)
    }

    /// How many tracked children have not been collected yet.
    pub fn tracked(&self) -> usize {
        self.lock().len()
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, oneshot::Sender<ExitStatus>>> {
        // A panic while holding the lock cannot leave the map inconsistent, so poisoning is ignored.
        self.inner.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}
