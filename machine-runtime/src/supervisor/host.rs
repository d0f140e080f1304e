//! What the supervisor sets up on the host around its apps and takes down after them: the reaper's
//! loop, the child-subreaper role, the apps' cgroups and the orphan count in the snapshot. Behind
//! the unit tests' fake spawner there is none of it: the test process stays as it was.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::policy;
use super::spawn::Spawner;
use super::state::Board;
use crate::cgroup::{AppCgroup, Cgroups, PreparedApps, Preparing};
use crate::log::runtime as log;
use crate::reaper::{Reaper, ReaperRole, become_subreaper};
use crate::time::human_duration;

/// The host's side of a run, from [`Host::setup`] to [`Host::take_down`].
pub(super) struct Host {
    /// Collects the apps' exits and the orphans; runs the readiness probes' commands.
    pub reaper: Reaper,
    /// The apps' cgroups, where the runtime may make them.
    pub cgroups: Option<Cgroups>,
    /// The apps' cgroups made ahead of their start ([`crate::cgroup::Preparing`]).
    prepared: Option<PreparedApps>,
    /// The reaper's loop and the orphan counter; none behind the fake spawner.
    tasks: Option<Tasks>,
}

struct Tasks {
    reaper_stop: CancellationToken,
    reaper_task: tokio::task::JoinHandle<std::io::Result<()>>,
    orphan_task: Option<tokio::task::JoinHandle<()>>,
}

impl Host {
    /// Starts the reaper's loop, makes the runtime a child subreaper (unless it is PID 1) and sets
    /// up the cgroups (or takes those being `prepared` ahead of the start); each step that cannot be
    /// done is logged, and the machine runs without it.
    pub(super) fn setup(spawner: &Spawner, prepared: Option<Preparing>) -> Host {
        let reaper = match spawner {
            Spawner::Real(reaper) => reaper.clone(),
            #[cfg(test)]
            Spawner::Fake(_) => {
                return Host {
                    reaper: Reaper::new(),
                    cgroups: None,
                    prepared: None,
                    tasks: None,
                };
            }
        };
        let reaper_stop = CancellationToken::new();
        let reaper_task = tokio::spawn(reaper.clone().run(reaper_stop.clone()));
        match become_subreaper() {
            (ReaperRole::Neither, Some(e)) => log(&format!(
                "cannot become a child subreaper ({e}); orphans of apps will be reaped by init instead"
            )),
            (role, _) => {
                let _ = role;
            }
        }
        let (setup, prepared) = match prepared {
            Some(preparing) => {
                let (setup, apps) = preparing.finish();
                (setup, Some(apps))
            }
            None => (Cgroups::setup(), None),
        };
        let cgroups = match setup {
            Ok((cgroups, swept)) => {
                for line in swept {
                    log(&line);
                }
                Some(cgroups)
            }
            Err(why) => {
                log(&format!(
                    "apps run without cgroups ({why}); a process that leaves its app's process group can outlive a kill -9 of the runtime outside a container"
                ));
                None
            }
        };
        Host {
            reaper,
            cgroups,
            prepared,
            tasks: Some(Tasks {
                reaper_stop,
                reaper_task,
                orphan_task: None,
            }),
        }
    }

    /// App `idx`'s cgroup: the one made ahead of its start, else made now; `None` without cgroups
    /// or where it cannot be made (the app then runs without one).
    pub(super) fn app_cgroup(&mut self, idx: usize, name: &str) -> Option<AppCgroup> {
        let cgroups = self.cgroups.as_ref()?;
        match self.prepared.as_mut() {
            Some(prepared) => prepared.take(cgroups, idx, name),
            None => cgroups.app(idx, name),
        }
    }

    /// Keeps the orphan count in the snapshot current (every 500 ms) until [`Host::take_down`].
    pub(super) fn count_orphans(&mut self, board: &Arc<Board>) {
        let Some(tasks) = self.tasks.as_mut() else {
            return;
        };
        let orphan_board = board.clone();
        let orphan_reaper = self.reaper.clone();
        tasks.orphan_task = Some(tokio::spawn(async move {
            loop {
                orphan_board.set_orphans(orphan_reaper.orphans_reaped());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }

    /// Once every app is stopped: stops what the apps left behind (outside their groups, in their
    /// cgroups), stops the reaper's loop and logs how long the stop took (from `stop_started`).
    pub(super) async fn take_down(self, stop_started: Instant) {
        if let Some(tasks) = self.tasks {
            // What the apps left behind outside their groups (a grandchild that called setsid) was
            // re-parented to us when its parent ended: nothing the machine started outlives the stop.
            let strays = self.reaper.stop_strays(policy::DEFAULT_KILL_TIMEOUT).await;
            if strays > 0 {
                log(&format!(
                    "stopped {strays} process{} the apps left behind outside their process groups",
                    if strays == 1 { "" } else { "es" }
                ));
            }
            // The cgroups of apps that never started: none is made after the removal.
            if let Some(prepared) = &self.prepared {
                prepared.stop();
            }
            if let Some(cgroups) = &self.cgroups {
                let left = cgroups.remove_all();
                if left > 0 {
                    log(&format!(
                        "stopped {left} process{} left in the apps' cgroups",
                        if left == 1 { "" } else { "es" }
                    ));
                }
            }
            if let Some(orphan_task) = tasks.orphan_task {
                orphan_task.abort();
            }
            tasks.reaper_stop.cancel();
            let _ = tasks.reaper_task.await;
        }
        let reaper = &self.reaper;
        log(&format!(
            "stopped in {}; {} orphan{} reaped",
            human_duration(stop_started.elapsed()),
            reaper.orphans_reaped(),
            if reaper.orphans_reaped() == 1 {
                ""
            } else {
                "s"
            }
        ));
    }
}
