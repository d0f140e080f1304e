//! The seam between the supervisor and the processes it runs: start an app's process, signal its
//! process group, ask whether the group is still there. Production starts real processes through
//! the [`Reaper`]; the unit tests put a scripted fake behind the same calls (`fake.rs`, tests only).

use std::process::ExitStatus;
use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use super::logs::AppLog;
use super::output::{self, Stream};
use crate::cgroup::AppCgroup;
use crate::command::ChildCommand;
use crate::reaper::Reaper;
use crate::signals::{group_alive, kill_group};

/// Where the apps' processes come from. An enum, not a trait object: production has one variant,
/// so the real path costs what it cost before the seam, and the fake is not in the binary.
#[derive(Clone)]
pub(crate) enum Spawner {
    /// Real processes, each the leader of its own process group, whose exit the reaper collects.
    Real(Reaper),
    /// Scripted processes the unit tests drive.
    #[cfg(test)]
    Fake(Arc<super::fake::Fake>),
}

/// A process just started: the leader of its own process group (its pid is the group's id).
pub(crate) struct Child {
    pub pid: u32,
    /// Resolves with the leader's exit status, once.
    pub exit: oneshot::Receiver<ExitStatus>,
    /// With an IPC channel: `true` once the app has sent `"ready"`.
    pub ready: Option<watch::Receiver<bool>>,
}

impl Spawner {
    /// Starts app `name` running `cmd`, in `cgroup` where there is one; its output goes to `log`
    /// and the runtime's stdout/stderr. On failure the error says why in words.
    pub(crate) fn spawn(
        &self,
        name: &str,
        cmd: &ChildCommand,
        cgroup: Option<&AppCgroup>,
        log: &Arc<AppLog>,
    ) -> Result<Child, String> {
        match self {
            Spawner::Real(reaper) => spawn_real(reaper, name, cmd, cgroup, log),
            #[cfg(test)]
            Spawner::Fake(fake) => fake.spawn(name),
        }
    }

    /// Sends `signal` to every process in the group led by `pgid`; true if the group existed.
    pub(crate) fn signal_group(&self, pgid: u32, signal: i32) -> bool {
        match self {
            Spawner::Real(_) => kill_group(pgid, signal),
            #[cfg(test)]
            Spawner::Fake(fake) => fake.signal_group(pgid, signal),
        }
    }

    /// True while any process (a zombie included) is still in the group led by `pgid`.
    pub(crate) fn group_alive(&self, pgid: u32) -> bool {
        match self {
            Spawner::Real(_) => group_alive(pgid),
            #[cfg(test)]
            Spawner::Fake(fake) => fake.group_alive(pgid),
        }
    }
}

/// Spawns the real child through the reaper: PATH check, the app's folders, its cgroup, its IPC
/// channel, its output forwarded.
fn spawn_real(
    reaper: &Reaper,
    name: &str,
    cmd: &ChildCommand,
    cgroup: Option<&AppCgroup>,
    log: &Arc<AppLog>,
) -> Result<Child, String> {
    let program = cmd.resolved_program();
    if !program.as_encoded_bytes().contains(&b'/') {
        // Not on the child's PATH: fail here rather than let std fall back to fork + exec.
        return Err(format!(
            "program \"{}\" not found (not a file, and not on PATH)",
            cmd.program.to_string_lossy()
        ));
    }
    // The app's own folders (a ComfyUI's output and temp), made at each start: a start refused
    // earlier wrote nothing, and a folder removed while the machine runs is back at the restart.
    // A few directory calls, like the PATH lookup above.
    for dir in &cmd.dirs {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create its folder {}: {e}", dir.display()))?;
    }
    let channel = if cmd.ipc {
        let channel =
            super::ipc::Channel::new().map_err(|e| format!("cannot make its IPC channel: {e}"))?;
        Some(channel)
    } else {
        None
    };
    let forked = || fork(cmd, program, cgroup, channel.as_ref());
    let mut spawned = reaper.spawn_with(forked).map_err(|e| {
        let program = cmd.program.to_string_lossy();
        match e.kind() {
            std::io::ErrorKind::NotFound => match &cmd.cwd {
                Some(cwd) if !cwd.is_dir() => {
                    format!("its cwd {} does not exist", cwd.display())
                }
                _ => format!("program \"{program}\" not found (not a file, and not on PATH)"),
            },
            std::io::ErrorKind::NotADirectory => match &cmd.cwd {
                Some(cwd) if cwd.exists() && !cwd.is_dir() => {
                    format!("its cwd {} is a file, not a folder", cwd.display())
                }
                _ => format!("cannot run \"{program}\": {e}"),
            },
            _ => format!("cannot run \"{program}\": {e}"),
        }
    })?;
    if let Some(stdout) = spawned.stdout.take() {
        output::forward(name, stdout, Stream::Stdout, log.clone());
    }
    if let Some(stderr) = spawned.stderr.take() {
        output::forward(name, stderr, Stream::Stderr, log.clone());
    }
    let ready = channel.map(|channel| {
        let (tx, rx) = watch::channel(false);
        channel.listen(name, log.clone(), tx);
        rx
    });
    Ok(Child {
        pid: spawned.pid,
        exit: spawned.exit,
        ready,
    })
}

/// Starts the child (`program`: `cmd`'s program resolved to a path) without copying the runtime
/// ([`crate::cgroup::spawn`]): straight into its cgroup where there is one
/// ([`crate::cgroup::AppCgroup::spawn`]). Where the kernel cannot, with std (a fork), the child moving
/// itself into its cgroup before exec.
fn fork(
    cmd: &ChildCommand,
    program: std::ffi::OsString,
    cgroup: Option<&AppCgroup>,
    channel: Option<&super::ipc::Channel>,
) -> std::io::Result<crate::reaper::Forked> {
    let parts = channel.map(super::ipc::Channel::for_child);
    let child_channel = parts
        .as_ref()
        .map(|(fd, at, env)| crate::cgroup::ChildChannel {
            fd: *fd,
            at: *at,
            env,
        });
    let exec = crate::cgroup::Exec {
        program,
        arg0: &cmd.program,
        args: &cmd.args,
        env: &cmd.env,
        cwd: cmd.cwd.as_deref(),
        hygiene: crate::command::hygiene_in_child,
    };
    let spawned = match cgroup {
        Some(cgroup) => cgroup.spawn(&exec, child_channel),
        None => crate::cgroup::spawn_outside(&exec, child_channel),
    };
    match spawned {
        Ok(forked) => {
            return Ok(crate::reaper::Forked {
                pid: forked.pid,
                stdout: Some(forked.stdout),
                stderr: Some(forked.stderr),
            });
        }
        Err(crate::cgroup::SpawnError::Io(e)) => return Err(e),
        Err(crate::cgroup::SpawnError::Fallback) => {}
    }
    let mut command = cmd.to_command();
    if let Some(cgroup) = cgroup {
        cgroup.attach(&mut command);
    }
    if let Some(channel) = channel {
        channel.attach(&mut command);
    }
    crate::reaper::std_spawn(&mut command)
}
