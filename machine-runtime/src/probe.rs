//! Readiness probes: an HTTP GET expecting 2xx, a TCP connect, or a command exiting 0.
//!
//! The HTTP client is [`crate::http`]'s: probes talk to services on the same machine.

use std::time::Duration;

use tokio::net::TcpStream;

pub use crate::http::HttpUrl;
use crate::reaper::Reaper;
use crate::time::human_duration;

/// The probe settings, read with the rest of an app's spec.
pub use crate::ecosystem::{Check, Readiness};

/// Runs one attempt of `check`, bounded by `timeout`; `Ok` means ready.
pub(crate) async fn probe_once(
    check: &Check,
    timeout: Duration,
    reaper: &Reaper,
) -> Result<(), String> {
    match check {
        Check::Http { url } => {
            let response = crate::http::get(url, timeout).await?;
            if (200..300).contains(&response.status) {
                Ok(())
            } else {
                Err(format!("{url} answered {}", response.status))
            }
        }
        Check::Tcp { host, port } => {
            match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), *port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("cannot connect to {host}:{port}: {e}")),
                Err(_) => Err(format!(
                    "connecting to {host}:{port} took longer than {}",
                    human_duration(timeout)
                )),
            }
        }
        Check::Command { command } => run_probe_command(command, timeout, reaper).await,
    }
}

async fn run_probe_command(
    command: &[String],
    timeout: Duration,
    reaper: &Reaper,
) -> Result<(), String> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| "the probe command is empty".to_string())?;
    let mut cmd = crate::command::new_child(program);
    cmd.args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let spawned = reaper
        .spawn(&mut cmd)
        .map_err(|e| format!("cannot run probe command \"{program}\": {e}"))?;
    let pid = spawned.pid;
    // If this future is dropped (the app exited, or the machine is stopping) the probe must not
    // linger: the guard kills its group unless it has ended.
    let mut guard = KillGroupOnDrop(Some(pid));
    let result = tokio::time::timeout(timeout, spawned.exit).await;
    if matches!(result, Ok(Ok(_))) {
        guard.0 = None;
    }
    match result {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!(
            "probe command `{}` ended with {}",
            command.join(" "),
            describe_status(status)
        )),
        Ok(Err(_)) => Err("the probe command's exit status was lost".to_string()),
        Err(_) => {
            // The probe hung; the guard kills its whole group so no stray probe piles up.
            Err(format!(
                "probe command `{}` took longer than {}",
                command.join(" "),
                human_duration(timeout)
            ))
        }
    }
}

/// Kills a process group when dropped, unless disarmed (set to `None`).
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            crate::signals::kill_group(pgid, libc::SIGKILL);
        }
    }
}

/// Describes an exit status in words: `status 1` or `signal 9 (SIGKILL)`.
pub(crate) fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("status {code}")
    } else if let Some(signal) = status.signal() {
        format!("signal {signal} ({})", crate::signals::signal_name(signal))
    } else {
        "an unknown status".to_string()
    }
}
