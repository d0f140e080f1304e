//! The IPC channel a Node app gets, as PM2's fork mode gives it one: Node's own child channel
//! (`process.send`, `process.on('message')`), so `process.send('ready')` marks a `wait_ready` app
//! ready and other messages are logged.
//!
//! The wire is Node's: a Unix stream socket whose child end sits at the fd named by
//! `NODE_CHANNEL_FD`, with `NODE_CHANNEL_SERIALIZATION_MODE=json`; each message is one JSON value
//! followed by `\n` (Node's `lib/internal/child_process/serialization.js`, "json" mode). Node starts
//! the channel itself when it sees the variable; it does not keep the process alive unless the app
//! listens for messages.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::watch;

use super::logs::AppLog;
use super::output::{self, Stream};

/// The fd the child's end of the channel has in the child (PM2's fork mode: `stdio[3] = 'ipc'`).
pub(crate) const CHANNEL_FD: i32 = 3;
/// The variables that tell Node where its channel is and how messages are written.
fn child_env() -> [(&'static str, String); 2] {
    [
        ("NODE_CHANNEL_FD", CHANNEL_FD.to_string()),
        ("NODE_CHANNEL_SERIALIZATION_MODE", "json".to_string()),
    ]
}
/// The longest message line read; a longer one is dropped (logged by its length).
const MAX_LINE: usize = 64 * 1024;

/// The supervisor's end of one process's channel, before the process starts.
pub(crate) struct Channel {
    ours: UnixStream,
    theirs: OwnedFd,
}

impl Channel {
    /// A connected pair of Unix stream sockets, both close-on-exec.
    pub(crate) fn new() -> std::io::Result<Channel> {
        let (ours, theirs) = UnixStream::pair()?;
        Ok(Channel {
            ours,
            theirs: theirs.into(),
        })
    }

    /// Puts the child's end at [`CHANNEL_FD`] in the child (without close-on-exec) and names it in
    /// the child's environment as Node reads it.
    pub(crate) fn attach(&self, cmd: &mut Command) {
        cmd.envs(child_env());
        let fd = self.theirs.as_raw_fd();
        let hook = move || {
            // SAFETY: dup2 and fcntl are async-signal-safe; `fd` is open in the child (it was open
            // in the parent at fork).
            unsafe {
                if fd == CHANNEL_FD {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, CHANNEL_FD) != CHANNEL_FD {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        };
        // SAFETY: the hook only makes async-signal-safe system calls (see above).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, hook);
        }
    }

    /// For a spawn without std's `Command` ([`crate::cgroup::AppCgroup::spawn`]): the child's end,
    /// the fd it must have in the child ([`CHANNEL_FD`]) and the variables that name it.
    pub(crate) fn for_child(&self) -> (RawFd, RawFd, [(&'static str, String); 2]) {
        (self.theirs.as_raw_fd(), CHANNEL_FD, child_env())
    }

    /// Once the child runs: closes our copy of its end and reads its messages until it closes the
    /// channel. `"ready"` sets `ready` to true; every other message is logged as the app's output
    /// (`[app] message: {...}`), never fatal.
    pub(crate) fn listen(self, name: &str, log: Arc<AppLog>, ready: watch::Sender<bool>) {
        drop(self.theirs);
        let Ok(()) = self.ours.set_nonblocking(true) else {
            return;
        };
        let Ok(stream) = tokio::net::UnixStream::from_std(self.ours) else {
            return;
        };
        let name = name.to_owned();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut reader)
                    .take(MAX_LINE as u64 + 1)
                    .read_until(b'\n', &mut line)
                    .await
                {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line.len() > MAX_LINE && line.last() != Some(&b'\n') {
                    output::line(
                        &name,
                        Stream::Stdout,
                        &log,
                        &format!("message of more than {MAX_LINE} bytes dropped"),
                    );
                    // Skip the rest of that message.
                    let mut rest = Vec::new();
                    if reader.read_until(b'\n', &mut rest).await.unwrap_or(0) == 0 {
                        return;
                    }
                    continue;
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(serde_json::Value::String(s)) if s == "ready" => {
                        ready.send_replace(true);
                    }
                    _ => output::line(&name, Stream::Stdout, &log, &format!("message: {text}")),
                }
            }
        });
    }
}
