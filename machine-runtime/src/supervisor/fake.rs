//! A scripted stand-in for the apps' processes (unit tests only): each start of an app follows the
//! next [`Life`] given for it, and every start, signal and exit is recorded with its time on
//! tokio's clock (paused in the tests), for the tests to assert on.

use std::collections::{HashMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::spawn::Child;

/// What one started process does.
#[derive(Debug, Clone, Default)]
pub(crate) struct Life {
    /// Exits by itself this long after its start, with this exit code.
    pub exits: Option<(Duration, i32)>,
    /// Signals it ignores (SIGKILL cannot be ignored).
    pub ignores: Vec<i32>,
    /// The exit code it ends with on a signal it handles; `None`: the signal ends it.
    pub code_on_signal: Option<i32>,
    /// The start fails with this error instead.
    pub fails: Option<String>,
}

impl Life {
    /// Runs until a signal ends it.
    pub fn runs() -> Life {
        Life::default()
    }

    /// Exits with `code` after `after`.
    pub fn exits(after: Duration, code: i32) -> Life {
        Life {
            exits: Some((after, code)),
            ..Life::default()
        }
    }

    /// Cannot be started: the spawn fails with `why`.
    pub fn fails(why: &str) -> Life {
        Life {
            fails: Some(why.to_owned()),
            ..Life::default()
        }
    }

    /// The same, ignoring `signal`.
    pub fn ignoring(mut self, signal: i32) -> Life {
        self.ignores.push(signal);
        self
    }

    /// The same, exiting with `code` on a signal it does not ignore (but SIGKILL).
    pub fn code_on_signal(mut self, code: i32) -> Life {
        self.code_on_signal = Some(code);
        self
    }
}

/// One thing the fake saw, at `at` after the fake was made (tokio's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub at: Duration,
    pub app: String,
    pub what: Seen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A process started with this pid.
    Started(u32),
    /// A start failed.
    Failed,
    /// A signal sent to a process group (0 is never sent: [`Fake::group_alive`] answers that).
    Signal(i32),
    /// The process ended: `Ok(code)` exited, `Err(signal)` ended by a signal.
    Ended(Result<i32, i32>),
}

/// The scripted processes of every app.
pub(crate) struct Fake {
    epoch: Instant,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Per app, the lives of its next starts; the last one repeats.
    lives: HashMap<String, VecDeque<Life>>,
    next_pid: u32,
    running: HashMap<u32, Running>,
    events: Vec<Event>,
}

struct Running {
    app: String,
    life: Life,
    exit: oneshot::Sender<ExitStatus>,
    timer: Option<tokio::task::AbortHandle>,
}

impl Fake {
    /// A fake whose clock starts now; an app with no life given runs until signalled.
    pub fn new() -> Arc<Fake> {
        Arc::new(Fake {
            epoch: Instant::now(),
            inner: Mutex::new(Inner {
                next_pid: 10_000,
                ..Inner::default()
            }),
        })
    }

    /// The lives of app `app`'s next starts, in order; the last one repeats.
    pub fn lives(&self, app: &str, lives: impl IntoIterator<Item = Life>) {
        self.lock()
            .lives
            .insert(app.to_owned(), lives.into_iter().collect());
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, inner: &mut Inner, app: &str, what: Seen) {
        inner.events.push(Event {
            at: self.epoch.elapsed(),
            app: app.to_owned(),
            what,
        });
    }

    /// Starts app `app`'s next life.
    pub(super) fn spawn(self: &Arc<Self>, app: &str) -> Result<Child, String> {
        let mut inner = self.lock();
        let life = match inner.lives.get_mut(app) {
            Some(lives) if lives.len() > 1 => lives.pop_front().unwrap_or_default(),
            Some(lives) => lives.front().cloned().unwrap_or_default(),
            None => Life::runs(),
        };
        if let Some(why) = life.fails {
            self.record(&mut inner, app, Seen::Failed);
            return Err(why);
        }
        inner.next_pid += 1;
        let pid = inner.next_pid;
        let (tx, rx) = oneshot::channel();
        let timer = life.exits.map(|(after, code)| {
            let fake = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                fake.end(pid, Ok(code));
            })
            .abort_handle()
        });
        self.record(&mut inner, app, Seen::Started(pid));
        inner.running.insert(
            pid,
            Running {
                app: app.to_owned(),
                life,
                exit: tx,
                timer,
            },
        );
        Ok(Child {
            pid,
            exit: rx,
            ready: None,
        })
    }

    /// Ends process `pid` now: `Ok(code)` exits with `code`, `Err(signal)` is ended by `signal`.
    fn end(&self, pid: u32, how: Result<i32, i32>) {
        let mut inner = self.lock();
        let Some(running) = inner.running.remove(&pid) else {
            return;
        };
        if let Some(timer) = running.timer {
            timer.abort();
        }
        self.record(&mut inner, &running.app, Seen::Ended(how));
        let status = match how {
            Ok(code) => ExitStatus::from_raw((code & 0xff) << 8),
            Err(signal) => ExitStatus::from_raw(signal & 0x7f),
        };
        let _ = running.exit.send(status);
    }

    /// Makes app `app`'s running process exit with `code` now; false when none runs.
    pub fn exit_now(&self, app: &str, code: i32) -> bool {
        self.end_app(app, Ok(code))
    }

    /// Ends app `app`'s running process by `signal` now, as a `kill` from outside would; false when
    /// none runs.
    pub fn kill_now(&self, app: &str, signal: i32) -> bool {
        self.end_app(app, Err(signal))
    }

    fn end_app(&self, app: &str, how: Result<i32, i32>) -> bool {
        let pid = self
            .lock()
            .running
            .iter()
            .find(|(_, r)| r.app == app)
            .map(|(pid, _)| *pid);
        pid.inspect(|&pid| self.end(pid, how)).is_some()
    }

    /// Delivers `signal` to the group led by `pgid` as the script says; true if it existed.
    pub(super) fn signal_group(&self, pgid: u32, signal: i32) -> bool {
        let mut inner = self.lock();
        let Some(running) = inner.running.get(&pgid) else {
            return false;
        };
        let app = running.app.clone();
        let how = if signal == libc::SIGKILL {
            Some(Err(signal))
        } else if running.life.ignores.contains(&signal) {
            None
        } else {
            Some(running.life.code_on_signal.ok_or(signal))
        };
        self.record(&mut inner, &app, Seen::Signal(signal));
        drop(inner);
        if let Some(how) = how {
            self.end(pgid, how);
        }
        true
    }

    /// True while process `pgid` runs (a fake process leaves no one behind in its group).
    pub(super) fn group_alive(&self, pgid: u32) -> bool {
        self.lock().running.contains_key(&pgid)
    }

    /// Everything seen so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    /// When app `app`'s processes started.
    pub fn starts(&self, app: &str) -> Vec<Duration> {
        self.seen(app, |what| matches!(what, Seen::Started(_)))
            .into_iter()
            .map(|(at, _)| at)
            .collect()
    }

    /// The signals sent to app `app`'s process groups, with when.
    pub fn signals(&self, app: &str) -> Vec<(Duration, i32)> {
        self.seen(app, |what| matches!(what, Seen::Signal(_)))
            .into_iter()
            .filter_map(|(at, what)| match what {
                Seen::Signal(signal) => Some((at, signal)),
                _ => None,
            })
            .collect()
    }

    fn seen(&self, app: &str, keep: impl Fn(&Seen) -> bool) -> Vec<(Duration, Seen)> {
        self.lock()
            .events
            .iter()
            .filter(|e| e.app == app && keep(&e.what))
            .map(|e| (e.at, e.what.clone()))
            .collect()
    }
}

/// A scripted stand-in for the broker's view of the workers ([`super::BusyProbe`]): which worker
/// is busy with which job until when, and the jobs handed back, with when.
#[derive(Default)]
pub(crate) struct FakeBusy {
    inner: Mutex<BusyInner>,
}

#[derive(Default)]
struct BusyInner {
    /// Per app: the job it holds and until when (tokio's clock).
    busy: HashMap<String, (String, Instant)>,
    /// (when, app, job, why), in order.
    handed_back: Vec<(Instant, String, String, String)>,
}

impl FakeBusy {
    /// Worker `app` is busy with `job` until `until`.
    pub fn busy_until(&self, app: &str, job: &str, until: Instant) {
        self.lock()
            .busy
            .insert(app.to_owned(), (job.to_owned(), until));
    }

    /// The jobs handed back so far: (when, app, job, why).
    pub fn handed_back(&self) -> Vec<(Instant, String, String, String)> {
        self.lock().handed_back.clone()
    }

    fn lock(&self) -> MutexGuard<'_, BusyInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl super::BusyProbe for FakeBusy {
    fn busy<'a>(
        &'a self,
        apps: &'a [String],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Option<String>>> + Send + 'a>> {
        let now = Instant::now();
        let inner = self.lock();
        let answer = apps
            .iter()
            .map(|app| {
                inner
                    .busy
                    .get(app)
                    .filter(|(_, until)| *until > now)
                    .map(|(job, _)| job.clone())
            })
            .collect();
        Box::pin(std::future::ready(answer))
    }

    fn hand_back<'a>(
        &'a self,
        app: &'a str,
        job: &'a str,
        why: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        self.lock().handed_back.push((
            Instant::now(),
            app.to_owned(),
            job.to_owned(),
            why.to_owned(),
        ));
        Box::pin(std::future::ready(()))
    }
}
