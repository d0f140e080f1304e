//! The health endpoint's bounds, so that a flood on its port cannot take the open files the
//! supervisor needs to start apps: a cap on open connections and one on log followers (503 past
//! them, logged once per episode), and a pause after a failed `accept` instead of a spinning loop.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits::{FILES_PER_APP, RUNTIME_FILES};
use crate::log::runtime as log;

/// The most connections the endpoint keeps open, however many files it may open.
pub(crate) const MAX_CONNECTIONS: usize = 128;
/// The fewest, however few files it may open.
pub(crate) const MIN_CONNECTIONS: usize = 8;
/// The first pause after a failed `accept`.
pub(crate) const FIRST_ACCEPT_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause after failed `accept`s in a row.
pub(crate) const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// How many connections and log followers the endpoint serves at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Connections open at once, followers included.
    pub connections: usize,
    /// Log streams open at once.
    pub followers: usize,
}

impl Caps {
    /// The caps under an open-file limit of `open_files` (the soft `RLIMIT_NOFILE`) with `apps`
    /// apps: half of what is left after the runtime's own share and the apps' pipes
    /// ([`crate::limits`]), between [`MIN_CONNECTIONS`] and [`MAX_CONNECTIONS`]; a quarter of
    /// those (at least 2) may follow logs.
    pub(crate) fn for_open_files(open_files: u64, apps: usize) -> Caps {
        let spare = open_files
            .saturating_sub(RUNTIME_FILES)
            .saturating_sub(apps as u64 * FILES_PER_APP);
        let connections = usize::try_from(spare / 2)
            .unwrap_or(MAX_CONNECTIONS)
            .clamp(MIN_CONNECTIONS, MAX_CONNECTIONS);
        Caps {
            connections,
            followers: (connections / 4).max(2),
        }
    }
}

/// A counted resource (connections, followers): a permit while under its cap; past it, a refusal
/// whose first of an episode is logged, and the episode's end logged with the number refused.
#[derive(Debug)]
pub(crate) struct Gate {
    /// What is counted, for the log (`connections`, `log followers`).
    what: &'static str,
    cap: usize,
    permits: Arc<Semaphore>,
    refusing: AtomicBool,
    refused: AtomicU64,
}

impl Gate {
    /// A gate letting `cap` holders in at once.
    pub(crate) fn new(what: &'static str, cap: usize) -> Gate {
        Gate {
            what,
            cap,
            permits: Arc::new(Semaphore::new(cap)),
            refusing: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        }
    }

    /// The cap.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// A permit (held until dropped), or `None` at the cap.
    pub(crate) fn enter(&self) -> Option<OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                if self.refusing.swap(false, Ordering::SeqCst) {
                    let refused = self.refused.swap(0, Ordering::SeqCst);
                    log(&format!(
                        "health endpoint: below its cap of {} {} again; {refused} refused with 503 meanwhile",
                        self.cap, self.what
                    ));
                }
                Some(permit)
            }
            Err(_) => {
                self.refused.fetch_add(1, Ordering::SeqCst);
                if !self.refusing.swap(true, Ordering::SeqCst) {
                    log(&format!(
                        "health endpoint: {} {} open, its cap; refusing more with 503 until one closes",
                        self.cap, self.what
                    ));
                }
                None
            }
        }
    }
}

/// The pause after failed `accept`s: [`FIRST_ACCEPT_PAUSE`], doubling up to [`MAX_ACCEPT_PAUSE`]
/// while they keep failing (out of file descriptors, `EMFILE`, lasts until some close); the first
/// failure of an episode is logged, and the first success after it.
#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    pause: Option<Duration>,
    failures: u64,
}

impl AcceptBackoff {
    /// After a failed `accept`: how long to wait before the next.
    pub(crate) fn failed(&mut self, error: &io::Error) -> Duration {
        self.failures += 1;
        let pause = match self.pause {
            None => {
                log(&format!(
                    "health endpoint: cannot accept a connection: {error}; pausing before each retry (up to {} ms)",
                    MAX_ACCEPT_PAUSE.as_millis()
                ));
                FIRST_ACCEPT_PAUSE
            }
            Some(pause) => (pause * 2).min(MAX_ACCEPT_PAUSE),
        };
        self.pause = Some(pause);
        pause
    }

    /// After a successful `accept`.
    pub(crate) fn succeeded(&mut self) {
        if self.pause.take().is_some() {
            log(&format!(
                "health endpoint: accepting connections again after {} failed accepts",
                self.failures
            ));
            self.failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_leave_the_apps_their_files() {
        assert_eq!(
            Caps::for_open_files(1 << 20, 10),
            Caps {
                connections: 128,
                followers: 32
            }
        );
        // 256 files, 2 apps: (256 - 80 - 4) / 2 = 86.
        assert_eq!(
            Caps::for_open_files(256, 2),
            Caps {
                connections: 86,
                followers: 21
            }
        );
        assert_eq!(
            Caps::for_open_files(64, 40),
            Caps {
                connections: MIN_CONNECTIONS,
                followers: 2
            }
        );
    }

    #[test]
    fn a_gate_refuses_past_its_cap_and_lets_in_again() {
        let gate = Gate::new("connections", 2);
        let a = gate.enter().unwrap();
        let _b = gate.enter().unwrap();
        assert!(gate.enter().is_none());
        assert!(gate.enter().is_none());
        assert!(gate.refusing.load(Ordering::SeqCst));
        assert_eq!(gate.refused.load(Ordering::SeqCst), 2);
        drop(a);
        let _c = gate.enter().unwrap();
        assert!(!gate.refusing.load(Ordering::SeqCst));
        assert_eq!(gate.refused.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn accept_failures_back_off_doubling_to_a_second_and_reset() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let mut backoff = AcceptBackoff::default();
        let pauses: Vec<u128> = (0..10)
            .map(|_| backoff.failed(&emfile).as_millis())
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(&emfile), FIRST_ACCEPT_PAUSE);
    }
}
