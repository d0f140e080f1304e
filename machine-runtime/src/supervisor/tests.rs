//! Unit tests of the supervisor's policy: the real [`Supervisor`] and its app tasks, with the fake
//! spawner behind the spawn call and tokio's paused clock, so every start and signal has an exact
//! time. The end-to-end tests (`tests/it/up_supervise.rs`, `pm2_compat.rs`) keep what needs real
//! processes: process groups, grandchildren, orphans, the binary's exit status.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::fake::{Fake, FakeBusy, Life, Seen};
use super::{AppState, AppStatus, RunError, Supervisor, SupervisorHandle, SupervisorOptions};
use crate::command::Context;
use crate::ecosystem::{AppSpec, Role};

const INT: i32 = libc::SIGINT;
const KILL: i32 = libc::SIGKILL;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// An app with PM2's defaults; the fake never runs its script.
fn app(name: &str, set: impl FnOnce(&mut AppSpec)) -> AppSpec {
    let mut app = AppSpec::new(name, "/bin/true");
    set(&mut app);
    app
}

/// A supervisor of `apps` running on `fake`, and its handle.
struct Machine {
    handle: SupervisorHandle,
    run: JoinHandle<Result<(), RunError>>,
}

fn start(apps: Vec<AppSpec>, fake: &Arc<Fake>) -> Machine {
    start_with(apps, fake, None)
}

/// [`start`], the workers drained through `busy` where given (as with a broker).
fn start_with(apps: Vec<AppSpec>, fake: &Arc<Fake>, busy: Option<Arc<FakeBusy>>) -> Machine {
    // An empty runtime environment: no PM2_KILL_SIGNAL, so PM2's default SIGINT stops the apps.
    let context = Context {
        runtime_env: BTreeMap::new(),
        gpu_uuids: Vec::new(),
        mig_uuids: Vec::new(),
        current_exe: PathBuf::from("/machine-runtime"),
    };
    let mut supervisor = Supervisor::new(
        apps,
        SupervisorOptions {
            context,
            handle_signals: false,
        },
    )
    .expect("the test apps pass the preflight");
    supervisor.use_fake(fake.clone());
    if let Some(busy) = busy {
        supervisor.drain_with(busy);
    }
    let handle = supervisor.handle();
    Machine {
        handle,
        run: tokio::spawn(supervisor.run()),
    }
}

impl Machine {
    /// Waits (on the paused clock, at most an hour of it) until app `name` matches `want`.
    async fn until(&self, name: &str, want: impl Fn(&AppStatus) -> bool) -> AppStatus {
        let mut snapshot = self.handle.watch();
        let wait = snapshot.wait_for(|s| s.apps.iter().any(|a| a.name == name && want(a)));
        match tokio::time::timeout(secs(3600), wait).await {
            Ok(Ok(s)) => s.apps.iter().find(|a| a.name == name).cloned().unwrap(),
            _ => panic!("{name} never got there: {:?}", self.status(name)),
        }
    }

    async fn state(&self, name: &str, state: AppState) -> AppStatus {
        self.until(name, |a| a.state == state).await
    }

    fn status(&self, name: &str) -> AppStatus {
        let snapshot = self.handle.snapshot();
        snapshot
            .apps
            .iter()
            .find(|a| a.name == name)
            .cloned()
            .unwrap()
    }

    /// Asks for a stop (as SIGTERM does) and returns what `run` returned.
    async fn stop(self) -> Result<(), RunError> {
        self.handle.request_stop(libc::SIGTERM);
        self.finished().await
    }

    /// What `run` returned, once it has (at most an hour of the paused clock).
    async fn finished(self) -> Result<(), RunError> {
        tokio::time::timeout(secs(3600), self.run)
            .await
            .expect("the supervisor stops")
            .expect("the supervisor does not panic")
    }
}

/// Where `what` first happened to app `app` among everything the fake saw.
fn position(fake: &Fake, app: &str, what: &Seen) -> usize {
    first(fake, app, |seen| seen == what)
}

/// Where the first event of app `app` that `keep` accepts is among everything the fake saw.
fn first(fake: &Fake, app: &str, keep: impl Fn(&Seen) -> bool) -> usize {
    fake.events()
        .iter()
        .position(|e| e.app == app && keep(&e.what))
        .unwrap_or_else(|| panic!("{app} never saw that: {:?}", fake.events()))
}

#[tokio::test(start_paused = true)]
async fn backs_off_exponentially_then_errors_after_max_restarts() {
    let fake = Fake::new();
    fake.lives("flaky", [Life::exits(ms(0), 1)]);
    let m = start(
        vec![
            app("flaky", |a| {
                a.restart.exp_backoff_restart_delay = Some(ms(200));
                a.restart.max_restarts = 4;
                a.restart.min_uptime = secs(10);
            }),
            app("steady", |_| {}),
        ],
        &fake,
    );
    let status = m.state("flaky", AppState::Errored).await;
    // Four starts, 200 ms then ×1.5 apart; the fourth unstable exit is the last.
    assert_eq!(fake.starts("flaky"), [ms(0), ms(200), ms(500), ms(950)]);
    assert_eq!((status.restarts, status.unstable_restarts), (3, 4));
    assert_eq!(status.last_exit.as_ref().and_then(|e| e.code), Some(1));
    assert_eq!(
        status.detail.as_deref(),
        Some("errored after 4 consecutive exits before min_uptime 10.0s; last exit: status 1")
    );
    // An errored app stays down, and one that is not essential leaves the rest running.
    tokio::time::sleep(secs(60)).await;
    assert_eq!(fake.starts("flaky").len(), 4);
    assert_eq!(m.status("steady").state, AppState::Running);
    m.stop().await.unwrap();
    assert_eq!(fake.signals("steady"), [(ms(60_950), INT)]);
}

#[tokio::test(start_paused = true)]
async fn a_run_past_min_uptime_resets_the_count_of_unstable_exits() {
    let fake = Fake::new();
    fake.lives(
        "app",
        [
            Life::exits(ms(0), 1),
            Life::exits(secs(2), 1),
            Life::exits(ms(0), 1),
        ],
    );
    let m = start(
        vec![app("app", |a| {
            a.restart.max_restarts = 2;
            a.restart.min_uptime = secs(1);
            a.restart.restart_delay = ms(100);
        })],
        &fake,
    );
    let status = m.state("app", AppState::Errored).await;
    // Unstable, stable (2 s ≥ min_uptime: the count starts over), unstable, unstable: errored.
    assert_eq!(
        fake.starts("app"),
        [ms(0), ms(100), ms(2200), ms(2300)],
        "{:?}",
        fake.events()
    );
    assert_eq!((status.restarts, status.unstable_restarts), (3, 2));
    let Err(RunError::AllEnded { summary }) = m.finished().await else {
        panic!("the only app errored: run must fail");
    };
    assert_eq!(summary, "app did not end cleanly");
}

#[tokio::test(start_paused = true)]
async fn the_backoff_starts_over_only_after_30_seconds_of_uptime() {
    let fake = Fake::new();
    let lives = |long: Duration| {
        [
            Life::exits(ms(0), 1),
            Life::exits(ms(0), 1),
            Life::exits(long, 1),
            Life::exits(ms(0), 1),
            Life::runs(),
        ]
    };
    fake.lives("short", lives(secs(29)));
    fake.lives("long", lives(secs(31)));
    let policy = |a: &mut AppSpec| {
        a.restart.exp_backoff_restart_delay = Some(ms(100));
        a.restart.min_uptime = secs(1);
    };
    let m = start(vec![app("short", policy), app("long", policy)], &fake);
    m.until("short", |a| a.restarts == 4 && a.state == AppState::Running)
        .await;
    m.until("long", |a| a.restarts == 4 && a.state == AppState::Running)
        .await;
    // Delays 100, 150, then after a 29 s run 225 (still growing), 337 (floored to whole ms).
    assert_eq!(
        fake.starts("short"),
        [ms(0), ms(100), ms(250), ms(29_475), ms(29_812)]
    );
    // After a 31 s run the backoff is back at 100, then 150.
    assert_eq!(
        fake.starts("long"),
        [ms(0), ms(100), ms(250), ms(31_350), ms(31_500)]
    );
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_essential_app_that_errors_stops_everything() {
    let fake = Fake::new();
    fake.lives("comfyui-gpu0", [Life::exits(ms(0), 7)]);
    let m = start(
        vec![
            app("other", |a| a.role = Some(Role::Service)),
            app("comfyui-gpu0", |a| {
                a.role = Some(Role::Service);
                a.essential = true;
                a.restart.max_restarts = 2;
                a.restart.min_uptime = secs(60);
            }),
        ],
        &fake,
    );
    let err = m.finished().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "essential app \"comfyui-gpu0\" errored after 2 consecutive exits before min_uptime 1m 0s (last exit: status 7); stopped everything"
    );
    assert_eq!(fake.starts("comfyui-gpu0"), [ms(0), ms(0)]);
    // The other app got PM2's stop signal and ended by it.
    assert_eq!(fake.signals("other"), [(ms(0), INT)]);
    position(&fake, "other", &Seen::Ended(Err(INT)));
}

#[tokio::test(start_paused = true)]
async fn a_child_that_ignores_its_stop_signal_is_killed_after_kill_timeout() {
    let fake = Fake::new();
    fake.lives("stubborn", [Life::runs().ignoring(INT)]);
    fake.lives("polite", [Life::runs().code_on_signal(0)]);
    let m = start(
        vec![
            app("stubborn", |a| a.restart.kill_timeout = ms(300)),
            app("polite", |a| a.restart.kill_timeout = ms(300)),
        ],
        &fake,
    );
    m.state("stubborn", AppState::Running).await;
    tokio::time::sleep(secs(1)).await;
    let handle = m.handle.clone();
    m.stop().await.unwrap();
    assert_eq!(fake.signals("stubborn"), [(secs(1), INT), (ms(1300), KILL)]);
    assert_eq!(fake.signals("polite"), [(secs(1), INT)]);
    let snapshot = handle.snapshot();
    let exit = |name: &str| {
        let app = snapshot.apps.iter().find(|a| a.name == name).unwrap();
        assert_eq!(app.state, AppState::Stopped);
        let exit = app.last_exit.clone().unwrap();
        (exit.code, exit.signal, exit.uptime_ms)
    };
    assert_eq!(exit("stubborn"), (None, Some(KILL), 1300));
    assert_eq!(exit("polite"), (Some(0), None, 1000));
}

#[tokio::test(start_paused = true)]
async fn an_app_stops_with_its_own_kill_signal() {
    let fake = Fake::new();
    let m = start(
        vec![app("api", |a| a.restart.kill_signal = Some(libc::SIGTERM))],
        &fake,
    );
    m.state("api", AppState::Running).await;
    m.stop().await.unwrap();
    assert_eq!(fake.signals("api"), [(ms(0), libc::SIGTERM)]);
}

#[tokio::test(start_paused = true)]
async fn services_start_first_and_stop_after_the_workers() {
    let fake = Fake::new();
    // The worker holds out until SIGKILL: the service is not signalled before the worker is gone.
    fake.lives("wrk", [Life::runs().ignoring(INT)]);
    let m = start(
        vec![
            app("wrk", |a| {
                a.role = Some(Role::Worker);
                a.restart.kill_timeout = secs(1);
            }),
            app("api", |_| {}),
            app("svc", |a| a.role = Some(Role::Service)),
        ],
        &fake,
    );
    m.state("wrk", AppState::Running).await;
    m.state("api", AppState::Running).await;
    let started = |app| first(&fake, app, |seen| matches!(seen, Seen::Started(_)));
    assert!(started("svc") < started("wrk") && started("wrk") < started("api"));
    m.stop().await.unwrap();
    assert_eq!(fake.signals("wrk"), [(ms(0), INT), (secs(1), KILL)]);
    // Everything that is not a worker stops once every worker is gone.
    assert_eq!(fake.signals("svc"), [(secs(1), INT)]);
    assert_eq!(fake.signals("api"), [(secs(1), INT)]);
    let wrk_gone = position(&fake, "wrk", &Seen::Ended(Err(KILL)));
    assert!(wrk_gone < position(&fake, "svc", &Seen::Signal(INT)));
    assert!(wrk_gone < position(&fake, "api", &Seen::Signal(INT)));
}

#[tokio::test(start_paused = true)]
async fn a_worker_waits_for_its_service_and_is_held_while_it_is_down() {
    let fake = Fake::new();
    // The service cannot start at first, then runs; its second process crashes on request.
    fake.lives("svc", [Life::fails("not yet"), Life::runs(), Life::runs()]);
    let m = start(
        vec![
            app("svc", |a| {
                a.role = Some(Role::Service);
                a.restart.restart_delay = ms(500);
            }),
            app("wrk", |a| {
                a.role = Some(Role::Worker);
                a.wait_for = vec!["svc".to_owned()];
            }),
        ],
        &fake,
    );
    m.until("wrk", |a| a.state == AppState::Running).await;
    assert_eq!(fake.starts("svc"), [ms(500)]);
    assert_eq!(fake.starts("wrk"), [ms(500)]);
    tokio::time::sleep(secs(10)).await;
    assert!(fake.exit_now("svc", 1));
    m.until("wrk", |a| {
        a.state == AppState::Running && fake.starts("wrk").len() == 2
    })
    .await;
    // Held (PM2's stop signal) as soon as its service went down; started again once it was back.
    assert_eq!(fake.signals("wrk"), [(ms(10_500), INT)]);
    assert_eq!(fake.starts("svc"), [ms(500), ms(11_000)]);
    assert_eq!(fake.starts("wrk"), [ms(500), ms(11_000)]);
    // A hold is not a crash: nothing counted.
    assert_eq!(m.status("wrk").restarts, 0);
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn autorestart_off_and_stop_exit_codes_leave_the_app_stopped() {
    let fake = Fake::new();
    fake.lives("once", [Life::exits(secs(1), 0)]);
    fake.lives("codes", [Life::exits(secs(2), 4), Life::exits(secs(2), 3)]);
    let m = start(
        vec![
            app("once", |a| a.restart.autorestart = false),
            app("codes", |a| a.restart.stop_exit_codes = vec![3]),
        ],
        &fake,
    );
    let once = m.state("once", AppState::Stopped).await;
    assert_eq!(once.last_exit.and_then(|e| e.code), Some(0));
    let codes = m.state("codes", AppState::Stopped).await;
    assert_eq!(codes.last_exit.and_then(|e| e.code), Some(3));
    assert_eq!(fake.starts("once"), [ms(0)]);
    // Exit code 4 is restarted at once (no delay), 3 is in stop_exit_codes.
    assert_eq!(fake.starts("codes"), [ms(0), secs(2)]);
    // Every app has ended; one with a code other than 0 makes the run fail.
    let Err(RunError::AllEnded { summary }) = m.finished().await else {
        panic!("codes ended with 3: run must fail");
    };
    assert_eq!(summary, "codes did not end cleanly");
}

#[tokio::test(start_paused = true)]
async fn every_app_ending_cleanly_ends_the_run_cleanly() {
    let fake = Fake::new();
    fake.lives("job", [Life::exits(secs(3), 0)]);
    let m = start(vec![app("job", |a| a.restart.autorestart = false)], &fake);
    m.finished().await.unwrap();
    assert_eq!(fake.starts("job"), [ms(0)]);
    assert!(fake.signals("job").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_restart_request_stops_and_starts_the_app_at_once() {
    let fake = Fake::new();
    let m = start(vec![app("svc", |_| {})], &fake);
    m.state("svc", AppState::Running).await;
    tokio::time::sleep(secs(5)).await;
    assert_eq!(m.handle.restart("svc"), Ok(AppState::Running));
    let status = m
        .until("svc", |a| a.restarts == 1 && a.state == AppState::Running)
        .await;
    assert_eq!(status.unstable_restarts, 0);
    assert_eq!(fake.signals("svc"), [(secs(5), INT)]);
    assert_eq!(fake.starts("svc"), [ms(0), secs(5)]);
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_a_restart_delay_starts_nothing_more() {
    let fake = Fake::new();
    let t0 = tokio::time::Instant::now();
    fake.lives("flaky", [Life::exits(ms(0), 1)]);
    let m = start(
        vec![app("flaky", |a| a.restart.restart_delay = secs(10))],
        &fake,
    );
    m.state("flaky", AppState::Restarting).await;
    tokio::time::sleep(secs(1)).await;
    let handle = m.handle.clone();
    m.stop().await.unwrap();
    // The stop came 1 s into the 10 s delay, and took no time.
    assert_eq!(t0.elapsed(), secs(1));
    assert_eq!(fake.starts("flaky"), [ms(0)]);
    assert!(fake.signals("flaky").is_empty());
    assert_eq!(handle.snapshot().apps[0].state, AppState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_start_that_fails_counts_as_an_unstable_exit() {
    let fake = Fake::new();
    fake.lives("missing", [Life::fails("program \"x\" not found")]);
    let m = start(
        vec![
            app("missing", |a| {
                a.restart.max_restarts = 3;
                a.restart.restart_delay = ms(100);
            }),
            app("steady", |_| {}),
        ],
        &fake,
    );
    let status = m.state("missing", AppState::Errored).await;
    assert_eq!(status.unstable_restarts, 3);
    let last = status.last_exit.unwrap();
    assert_eq!(last.description, "program \"x\" not found");
    let failed = fake
        .events()
        .iter()
        .filter(|e| e.app == "missing" && e.what == Seen::Failed)
        .map(|e| e.at)
        .collect::<Vec<_>>();
    assert_eq!(failed, [ms(0), ms(100), ms(200)]);
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_child_killed_from_outside_is_restarted_and_counted() {
    let fake = Fake::new();
    let m = start(vec![app("svc", |_| {})], &fake);
    m.state("svc", AppState::Running).await;
    tokio::time::sleep(secs(5)).await;
    assert!(fake.kill_now("svc", KILL));
    let status = m
        .until("svc", |a| a.restarts == 1 && a.state == AppState::Running)
        .await;
    let exit = status.last_exit.unwrap();
    assert_eq!(
        (exit.code, exit.signal, exit.uptime_ms),
        (None, Some(KILL), 5000)
    );
    // It ran past min_uptime: a stable exit, restarted at once (no restart_delay).
    assert_eq!(status.unstable_restarts, 0);
    assert_eq!(fake.starts("svc"), [ms(0), secs(5)]);
    assert!(fake.signals("svc").is_empty());
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_operators_stop_holds_the_app_stopped_until_it_is_started() {
    let fake = Fake::new();
    let m = start(
        vec![app("svc", |a| a.restart.restart_delay = ms(100))],
        &fake,
    );
    m.state("svc", AppState::Running).await;
    tokio::time::sleep(secs(1)).await;
    assert_eq!(m.handle.stop_app("svc"), Ok(AppState::Running));
    let status = m
        .until("svc", |a| {
            a.state == AppState::Stopped && a.stopped_on_request
        })
        .await;
    assert_eq!(status.restarts, 0);
    // No restart policy brings it back.
    tokio::time::sleep(secs(60)).await;
    assert_eq!(fake.starts("svc"), [ms(0)]);
    assert_eq!(fake.signals("svc"), [(secs(1), INT)]);
    assert_eq!(m.handle.start_app("svc"), Ok(AppState::Stopped));
    m.until("svc", |a| a.state == AppState::Running).await;
    assert_eq!(fake.starts("svc"), [ms(0), secs(61)]);
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_restart_request_brings_back_an_errored_app_with_a_fresh_count() {
    let fake = Fake::new();
    fake.lives(
        "flaky",
        [Life::exits(ms(0), 1), Life::exits(ms(0), 1), Life::runs()],
    );
    let m = start(
        vec![
            app("flaky", |a| a.restart.max_restarts = 2),
            app("steady", |_| {}),
        ],
        &fake,
    );
    let status = m.state("flaky", AppState::Errored).await;
    assert_eq!((status.restarts, status.unstable_restarts), (1, 2));
    tokio::time::sleep(secs(10)).await;
    assert_eq!(m.handle.restart("flaky"), Ok(AppState::Errored));
    let status = m.state("flaky", AppState::Running).await;
    assert_eq!((status.restarts, status.unstable_restarts), (2, 0));
    assert_eq!(fake.starts("flaky"), [ms(0), ms(0), secs(10)]);
    m.stop().await.unwrap();
}

/// A worker and its service, the worker drained through a fake broker view.
fn worker_and_service(kill_timeout: Duration) -> Vec<AppSpec> {
    vec![
        app("svc", |a| a.role = Some(Role::Service)),
        app("wrk", |a| {
            a.role = Some(Role::Worker);
            a.restart.kill_timeout = kill_timeout;
        }),
    ]
}

#[tokio::test(start_paused = true)]
async fn a_busy_worker_finishes_its_job_before_it_is_signalled() {
    let fake = Fake::new();
    let busy = Arc::new(FakeBusy::default());
    let m = start_with(worker_and_service(secs(5)), &fake, Some(busy.clone()));
    m.state("wrk", AppState::Running).await;
    busy.busy_until("wrk", "j-1", tokio::time::Instant::now() + secs(2));
    m.stop().await.unwrap();
    // Signalled once the job is done (2 s, within its 5 s kill_timeout); the service after it.
    assert_eq!(fake.signals("wrk"), [(secs(2), INT)]);
    assert_eq!(fake.signals("svc"), [(secs(2), INT)]);
    assert!(busy.handed_back().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_worker_still_busy_at_kill_timeout_is_killed_and_its_job_handed_back() {
    let fake = Fake::new();
    let busy = Arc::new(FakeBusy::default());
    let t0 = tokio::time::Instant::now();
    let m = start_with(worker_and_service(secs(1)), &fake, Some(busy.clone()));
    m.state("wrk", AppState::Running).await;
    busy.busy_until("wrk", "j-1", t0 + secs(60));
    m.stop().await.unwrap();
    // No SIGINT (the worker would fail the job for good): SIGKILL at its kill_timeout.
    assert_eq!(fake.signals("wrk"), [(secs(1), KILL)]);
    let handed: Vec<_> = busy
        .handed_back()
        .into_iter()
        .map(|(at, app, job, why)| (at - t0, app, job, why))
        .collect();
    assert_eq!(
        handed,
        [(
            secs(1),
            "wrk".to_owned(),
            "j-1".to_owned(),
            "still busy at its kill_timeout 1.0s when the machine stopped".to_owned()
        )]
    );
    // The job went back before the service was told to stop.
    assert_eq!(fake.signals("svc"), [(secs(1), INT)]);
}

#[tokio::test(start_paused = true)]
async fn an_idle_worker_is_signalled_at_once() {
    let fake = Fake::new();
    let busy = Arc::new(FakeBusy::default());
    let m = start_with(worker_and_service(secs(5)), &fake, Some(busy.clone()));
    m.state("wrk", AppState::Running).await;
    tokio::time::sleep(secs(1)).await;
    m.stop().await.unwrap();
    assert_eq!(fake.signals("wrk"), [(secs(1), INT)]);
    assert_eq!(fake.signals("svc"), [(secs(1), INT)]);
}

#[tokio::test(start_paused = true)]
async fn a_restart_waits_for_a_busy_worker_to_finish_its_job() {
    let fake = Fake::new();
    let busy = Arc::new(FakeBusy::default());
    let t0 = tokio::time::Instant::now();
    let m = start_with(worker_and_service(secs(10)), &fake, Some(busy.clone()));
    m.state("wrk", AppState::Running).await;
    busy.busy_until("wrk", "j-1", t0 + secs(3));
    assert_eq!(m.handle.restart("wrk"), Ok(AppState::Running));
    m.until("wrk", |a| a.restarts == 1 && a.state == AppState::Running)
        .await;
    assert_eq!(fake.signals("wrk"), [(secs(3), INT)]);
    assert_eq!(fake.starts("wrk"), [ms(0), secs(3)]);
    assert!(busy.handed_back().is_empty());
    m.stop().await.unwrap();
}
