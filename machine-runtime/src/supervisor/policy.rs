//! PM2's restart decision, as a pure function of the app's settings and its exit history.
//!
//! Matches `Unitech/pm2` `lib/God.js` `handleExit` and `lib/Worker.js` where users rely on it:
//! an exit before `min_uptime` is unstable; once `max_restarts` unstable exits have happened in a
//! row the app is `errored` and stays down (PM2 compares `unstable_restarts >= max_restarts`, so
//! `max_restarts: 3` means three starts in a crash loop, `0` means never restart). Unlike PM2,
//! a stable run resets the unstable count, so only *consecutive* unstable exits count.
//! The delay is `restart_delay`, or with `exp_backoff_restart_delay` it starts at that value and
//! grows ×1.5 per restart, capped at 15 s, back to the start after 30 s of uptime.

use std::time::Duration;

pub use crate::ecosystem::{DEFAULT_KILL_TIMEOUT, RestartPolicy};

/// PM2's cap on the exponential backoff delay.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_millis(15_000);
/// Uptime after which the exponential backoff starts over (PM2 `EXP_BACKOFF_RESET_TIMER`).
pub(crate) const BACKOFF_RESET_AFTER: Duration = Duration::from_millis(30_000);

/// What to do after an exit that nobody asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Start again after `delay`; `unstable` is the count of consecutive unstable exits so far.
    Restart { delay: Duration, unstable: u32 },
    /// Too many unstable exits in a row; stay down.
    Errored { unstable: u32 },
    /// Not restarted by configuration (`autorestart: false` or a `stop_exit_codes` match).
    Stop { reason: String },
}

/// The exit history of one app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RestartHistory {
    pub unstable: u32,
    pub restarts: u32,
    prev_backoff: Option<Duration>,
}

impl RestartHistory {
    /// Records an exit after `uptime` with exit `code` (none when a signal ended it) and decides.
    pub(crate) fn on_exit(
        &mut self,
        app: &RestartPolicy,
        uptime: Duration,
        code: Option<i32>,
    ) -> Decision {
        if uptime >= BACKOFF_RESET_AFTER {
            self.prev_backoff = None;
        }
        if uptime < app.min_uptime {
            self.unstable += 1;
        } else {
            self.unstable = 0;
        }
        if !app.autorestart {
            return Decision::Stop {
                reason: "autorestart is off".to_string(),
            };
        }
        if let Some(code) = code.filter(|c| app.stop_exit_codes.contains(c)) {
            return Decision::Stop {
                reason: format!("exit code {code} is in stop_exit_codes"),
            };
        }
        if self.unstable >= app.max_restarts {
            return Decision::Errored {
                unstable: self.unstable,
            };
        }
        let delay = match app.exp_backoff_restart_delay {
            Some(start) => {
                let next = match self.prev_backoff {
                    None => start,
                    Some(prev) => prev.mul_f64(1.5).min(BACKOFF_CAP),
                };
                // PM2 floors to whole milliseconds.
                let next = Duration::from_millis(next.as_millis() as u64);
                self.prev_backoff = Some(next);
                next
            }
            None => app.restart_delay,
        };
        self.restarts += 1;
        Decision::Restart {
            delay,
            unstable: self.unstable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn errors_after_max_restarts_consecutive_unstable_exits() {
        let app = RestartPolicy {
            max_restarts: 3,
            restart_delay: ms(100),
            ..RestartPolicy::default()
        };
        let mut h = RestartHistory::default();
        assert_eq!(
            h.on_exit(&app, ms(10), Some(1)),
            Decision::Restart {
                delay: ms(100),
                unstable: 1
            }
        );
        assert_eq!(
            h.on_exit(&app, ms(10), Some(1)),
            Decision::Restart {
                delay: ms(100),
                unstable: 2
            }
        );
        // A stable run starts the count over.
        assert_eq!(
            h.on_exit(&app, ms(5000), Some(1)),
            Decision::Restart {
                delay: ms(100),
                unstable: 0
            }
        );
        h.on_exit(&app, ms(10), None);
        h.on_exit(&app, ms(10), None);
        assert_eq!(
            h.on_exit(&app, ms(10), None),
            Decision::Errored { unstable: 3 }
        );
        assert_eq!(h.restarts, 5);
    }

    #[test]
    fn max_restarts_zero_never_restarts() {
        let app = RestartPolicy {
            max_restarts: 0,
            ..RestartPolicy::default()
        };
        assert_eq!(
            RestartHistory::default().on_exit(&app, ms(60_000), Some(0)),
            Decision::Errored { unstable: 0 }
        );
    }

    #[test]
    fn backoff_grows_by_half_caps_and_resets() {
        let app = RestartPolicy {
            exp_backoff_restart_delay: Some(ms(4000)),
            restart_delay: ms(1), // ignored when backoff is set, as in PM2
            max_restarts: 100,
            ..RestartPolicy::default()
        };
        let mut h = RestartHistory::default();
        let delays: Vec<u128> = (0..6)
            .map(|_| match h.on_exit(&app, ms(10), Some(1)) {
                Decision::Restart { delay, .. } => delay.as_millis(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(delays, [4000, 6000, 9000, 13500, 15000, 15000]);
        // 30 s up: back to the start.
        assert_eq!(
            h.on_exit(&app, ms(30_000), Some(1)),
            Decision::Restart {
                delay: ms(4000),
                unstable: 0
            }
        );
    }

    #[test]
    fn respects_autorestart_and_stop_exit_codes() {
        let app = RestartPolicy {
            autorestart: false,
            ..RestartPolicy::default()
        };
        assert_eq!(
            RestartHistory::default().on_exit(&app, ms(10), Some(1)),
            Decision::Stop {
                reason: "autorestart is off".into()
            }
        );
        let app = RestartPolicy {
            stop_exit_codes: vec![0],
            ..RestartPolicy::default()
        };
        assert_eq!(
            RestartHistory::default().on_exit(&app, ms(5000), Some(0)),
            Decision::Stop {
                reason: "exit code 0 is in stop_exit_codes".into()
            }
        );
        assert!(matches!(
            RestartHistory::default().on_exit(&app, ms(5000), Some(2)),
            Decision::Restart { .. }
        ));
    }
}
