//! Workers follow their services: which running workers must be stopped because an app in their
//! `machine_wait_for` is no longer ready, and why, in words.
//!
//! The rule: a worker runs only while every app it waits for is up (running, ready, or a one-shot app
//! that finished cleanly). A worker claims jobs by itself as soon as it is idle, and a job claimed while
//! its service is down fails (contract §7: the real worker does not pause), so a worker whose service
//! exits, crashes, is restarted or stopped is stopped too and waits (state `waiting`) until the service
//! is ready again. Readiness is the start-up probe: it is not repeated once it passed, so a service that
//! hangs with its process alive still counts as ready.

use super::state::{AppState, AppStatus, Snapshot};

/// Whether `app` counts as up for the apps that wait for it: running and ready, or a one-shot app
/// (autorestart off) that finished with status 0.
pub(crate) fn is_up(app: &AppStatus) -> bool {
    app.is_healthy()
}

/// The apps of `deps` (indices into `snapshot.apps`) that are not up, each with why, in words:
/// `("simulation-gpu0", "simulation-gpu0 is not ready (restarting after signal 9 (SIGKILL))")`.
pub(crate) fn not_up(snapshot: &Snapshot, deps: &[usize]) -> Vec<(String, String)> {
    deps.iter()
        .filter_map(|&d| snapshot.apps.get(d))
        .filter(|dep| !is_up(dep))
        .map(|dep| (dep.name.clone(), why_not_ready(dep)))
        .collect()
}

/// Why `app` does not count as up, for the apps that wait for it:
/// `comfyui-gpu0 is not ready (restarting after status 1)`, `... (starting: readiness probe: ...)`.
pub(crate) fn why_not_ready(app: &AppStatus) -> String {
    let what = match (app.state, &app.detail) {
        // Its detail already says it: "restarting after signal 9 (SIGKILL)".
        (AppState::Restarting, Some(detail)) => detail.clone(),
        (AppState::Waiting, _) if !app.waiting_for.is_empty() => {
            format!("waiting for {}", app.waiting_for.join(", "))
        }
        (state, Some(detail)) => format!("{state}: {detail}"),
        (state, None) => state.as_str().to_owned(),
    };
    format!("{} is not ready ({what})", app.name)
}

/// The workers to stop now because an app they wait for is no longer up: workers (`is_worker`) whose
/// process is alive (starting, running or ready, with a pid) while one of their `deps` is not up, and
/// that are not being stopped for it already (`stopping`). Indices into `snapshot.apps`, in order.
pub(crate) fn to_hold(
    snapshot: &Snapshot,
    deps: &[Vec<usize>],
    is_worker: &[bool],
    stopping: &[bool],
) -> Vec<usize> {
    snapshot
        .apps
        .iter()
        .enumerate()
        .filter(|(i, app)| {
            is_worker.get(*i).copied().unwrap_or(false)
                && !stopping.get(*i).copied().unwrap_or(false)
                && app.pid.is_some()
                && matches!(
                    app.state,
                    AppState::Starting | AppState::Running | AppState::Ready
                )
                && deps
                    .get(*i)
                    .is_some_and(|d| !not_up(snapshot, d).is_empty())
        })
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecosystem::{AppSpec, Role};
    use crate::supervisor::state::LastExit;

    fn app(name: &str, role: Role, state: AppState) -> AppStatus {
        let mut spec = AppSpec::new(name, "x");
        spec.role = Some(role);
        let mut status = AppStatus::new(&spec, None);
        status.state = state;
        if matches!(
            state,
            AppState::Starting | AppState::Running | AppState::Ready | AppState::Stopping
        ) {
            status.pid = Some(100);
        }
        status
    }

    fn snapshot(apps: Vec<AppStatus>) -> Snapshot {
        Snapshot {
            phase: crate::supervisor::state::Phase::Ready,
            apps,
            orphans_reaped: 0,
        }
    }

    #[test]
    fn holds_the_running_workers_of_a_service_that_is_down_only() {
        // Two GPUs: gpu0's service restarts after a crash, gpu1's is ready.
        let mut svc0 = app("simulation-gpu0", Role::Service, AppState::Restarting);
        svc0.detail = Some("restarting after signal 9 (SIGKILL)".into());
        let apps = vec![
            svc0,
            app("simulation-gpu1", Role::Service, AppState::Ready),
            app("worker-0", Role::Worker, AppState::Running),
            app("worker-1", Role::Worker, AppState::Running),
            app("worker-2", Role::Worker, AppState::Starting),
            app("worker-3", Role::Worker, AppState::Waiting),
        ];
        let deps = vec![vec![], vec![], vec![0], vec![1], vec![0], vec![0]];
        let is_worker = [false, false, true, true, true, true];
        let s = snapshot(apps);
        assert_eq!(to_hold(&s, &deps, &is_worker, &[false; 6]), [2, 4]);
        // One already being stopped for it is not asked twice.
        let stopping = [false, false, true, false, false, false];
        assert_eq!(to_hold(&s, &deps, &is_worker, &stopping), [4]);
        assert_eq!(
            not_up(&s, &deps[2]),
            [(
                "simulation-gpu0".to_owned(),
                "simulation-gpu0 is not ready (restarting after signal 9 (SIGKILL))".to_owned()
            )]
        );
        assert!(not_up(&s, &deps[3]).is_empty());
    }

    #[test]
    fn every_state_but_up_holds_and_a_finished_one_shot_does_not() {
        for state in [
            AppState::Waiting,
            AppState::Starting,
            AppState::Stopping,
            AppState::Stopped,
            AppState::Errored,
            AppState::Restarting,
        ] {
            let s = snapshot(vec![
                app("svc", Role::Service, state),
                app("w", Role::Worker, AppState::Running),
            ]);
            assert_eq!(
                to_hold(&s, &[vec![], vec![0]], &[false, true], &[false, false]),
                [1],
                "{state}"
            );
        }
        for state in [AppState::Running, AppState::Ready] {
            let s = snapshot(vec![
                app("svc", Role::Service, state),
                app("w", Role::Worker, AppState::Running),
            ]);
            assert!(to_hold(&s, &[vec![], vec![0]], &[false, true], &[false, false]).is_empty());
        }
        // A one-shot set-up app that finished cleanly does not hold its dependants.
        let mut setup = app("setup", Role::Service, AppState::Stopped);
        setup.autorestart = false;
        setup.last_exit = Some(LastExit {
            code: Some(0),
            signal: None,
            uptime_ms: 5,
            description: "status 0".into(),
        });
        let s = snapshot(vec![setup, app("w", Role::Worker, AppState::Running)]);
        assert!(to_hold(&s, &[vec![], vec![0]], &[false, true], &[false, false]).is_empty());
        // Only workers follow their dependencies; another app that waited keeps running.
        let s = snapshot(vec![
            app("svc", Role::Service, AppState::Restarting),
            app("after", Role::Service, AppState::Running),
        ]);
        assert!(to_hold(&s, &[vec![], vec![0]], &[false, false], &[false, false]).is_empty());
    }

    #[test]
    fn says_why_in_words() {
        let mut errored = app("comfyui-gpu0", Role::Service, AppState::Errored);
        errored.detail = Some("errored after 3 consecutive exits before min_uptime 1.0s".into());
        assert_eq!(
            why_not_ready(&errored),
            "comfyui-gpu0 is not ready (errored: errored after 3 consecutive exits before min_uptime 1.0s)"
        );
        let mut starting = app("comfyui-gpu0", Role::Service, AppState::Starting);
        assert_eq!(
            why_not_ready(&starting),
            "comfyui-gpu0 is not ready (starting)"
        );
        starting.detail = Some("readiness probe: connection refused".into());
        assert_eq!(
            why_not_ready(&starting),
            "comfyui-gpu0 is not ready (starting: readiness probe: connection refused)"
        );
        let mut waiting = app("b", Role::Service, AppState::Waiting);
        waiting.waiting_for = vec!["a".into()];
        assert_eq!(why_not_ready(&waiting), "b is not ready (waiting for a)");
        assert_eq!(
            why_not_ready(&app("s", Role::Service, AppState::Stopping)),
            "s is not ready (stopping)"
        );
    }
}
