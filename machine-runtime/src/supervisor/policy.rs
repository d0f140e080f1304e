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

use machine_model::ecosystem::{App, Millis};

/// PM2's cap on the exponential backoff delay.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_millis(15_000);
/// Uptime after which the exponential backoff starts over (PM2 `EXP_BACKOFF_RESET_TIMER`).
pub(crate) const BACKOFF_RESET_AFTER: Duration = Duration::from_millis(30_000);

/// PM2's default for `max_restarts`.
pub const DEFAULT_MAX_RESTARTS: u32 = 16;
/// PM2's default for `min_uptime`.
pub const DEFAULT_MIN_UPTIME: Duration = Duration::from_millis(1000);
/// PM2's default for `kill_timeout`.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_millis(1600);

/// An app's restart and stop settings, resolved: the runtime form of the ecosystem's PM2 fields
/// `autorestart`, `max_restarts`, `min_uptime`, `restart_delay`, `exp_backoff_restart_delay`,
/// `kill_timeout`, `stop_exit_codes` and `kill_signal` ([`App`]), with PM2's defaults ([`RestartPolicy::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restart when it exits (PM2 default true).
    pub autorestart: bool,
    /// Consecutive unstable exits (before `min_uptime`) after which the app is `errored`.
    pub max_restarts: u32,
    /// Exits sooner than this after start are unstable.
    pub min_uptime: Duration,
    /// Fixed delay before a restart.
    pub restart_delay: Duration,
    /// When set, overrides `restart_delay`: starts here, ×1.5 per restart, capped at 15 s.
    pub exp_backoff_restart_delay: Option<Duration>,
    /// Grace between the stop signal and SIGKILL of the process group.
    pub kill_timeout: Duration,
    /// Exit codes after which the app is not restarted (PM2 `stop_exit_codes`).
    pub stop_exit_codes: Vec<i32>,
    /// The signal that asks the app to stop (`kill_signal`); `None`: PM2's `KILL_SIGNAL`, which
    /// the supervisor reads from the runtime's `PM2_KILL_SIGNAL` (default SIGINT) at start.
    pub kill_signal: Option<i32>,
}

impl Default for RestartPolicy {
    /// PM2's defaults: restart, 16 unstable exits, 1000 ms uptime, no delay, 1600 ms grace.
    fn default() -> Self {
        RestartPolicy {
            autorestart: true,
            max_restarts: DEFAULT_MAX_RESTARTS,
            min_uptime: DEFAULT_MIN_UPTIME,
            restart_delay: Duration::ZERO,
            exp_backoff_restart_delay: None,
            kill_timeout: DEFAULT_KILL_TIMEOUT,
            stop_exit_codes: Vec::new(),
            kill_signal: None,
        }
    }
}

impl From<&App> for RestartPolicy {
    /// The app's restart fields, PM2's default for each one absent.
    fn from(app: &App) -> Self {
        let d = RestartPolicy::default();
        let ms = |m: Millis| Duration::from_millis(m.0);
        RestartPolicy {
            autorestart: app.autorestart.unwrap_or(d.autorestart),
            max_restarts: app.max_restarts.unwrap_or(d.max_restarts),
            min_uptime: app.min_uptime.map_or(d.min_uptime, ms),
            restart_delay: app.restart_delay.map_or(d.restart_delay, ms),
            exp_backoff_restart_delay: app.exp_backoff_restart_delay.map(ms),
            kill_timeout: app.kill_timeout.map_or(d.kill_timeout, ms),
            stop_exit_codes: app.stop_exit_codes.clone().unwrap_or_default(),
            kill_signal: app
                .kill_signal
                .as_deref()
                .and_then(crate::signals::signal_number),
        }
    }
}

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
