//! Runs one install command: own process group, deadline, output tail, heartbeat progress.
//!
//! The child leads its own process group so a timeout kills everything it started (pip's and git's
//! helpers included). Exit is observed with `waitid(WNOWAIT)`, which leaves the child a zombie: its pid,
//! and so its process group id, cannot be reused until we reap it, so killing the group afterwards can
//! never hit a stranger.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use machine_model::components::Masker;

/// Lines of output kept for error messages.
pub(crate) const TAIL_LINES: usize = 20;
/// Longer lines are cut in the tail.
const MAX_LINE_CHARS: usize = 400;
/// Captured stdout beyond this is dropped (only small outputs such as `git rev-parse` are read).
const MAX_STDOUT_BYTES: usize = 64 * 1024;
/// How long to wait for the output pipes to close after the process group is gone.
const PIPE_DRAIN: Duration = Duration::from_secs(2);

/// A command to run: program, arguments, working directory and environment added to the base.
#[derive(Debug, Clone)]
pub(crate) struct Cmd {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// Keep stdout apart (returned in [`Finished::stdout`]); otherwise stdout and stderr share one pipe so
    /// the tail keeps their order.
    pub capture_stdout: bool,
    /// Give the child this process's stderr (a terminal: curl draws its progress bar there) instead of
    /// the tail's pipe; its error lines are then on the terminal, not in the tail.
    pub inherit_stderr: bool,
}

impl Cmd {
    pub(crate) fn new(program: impl Into<PathBuf>, cwd: &Path) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            cwd: cwd.to_owned(),
            env: Vec::new(),
            capture_stdout: false,
            inherit_stderr: false,
        }
    }

    pub(crate) fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub(crate) fn capture_stdout(mut self) -> Self {
        self.capture_stdout = true;
        self
    }

    pub(crate) fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The command line as a user would type it, quoted where needed, secrets masked.
    pub(crate) fn display(&self, masker: &Masker) -> String {
        let words = std::iter::once(self.program.to_string_lossy().into_owned())
            .chain(self.args.iter().cloned());
        let line = words.map(|w| shell_quote(&w)).collect::<Vec<_>>().join(" ");
        masker.mask(&line).into_owned()
    }
}

fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,^{}*".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// How a command ended, when it ran to the end.
#[derive(Debug)]
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub tail: Vec<String>,
}

/// Why a command did not run to the end.
#[derive(Debug)]
pub(crate) enum Interrupted {
    /// The program could not be started.
    Spawn(std::io::Error),
    /// The deadline passed; the process group was killed.
    Timeout { tail: Vec<String> },
}

/// What the runner needs besides the command.
pub(crate) struct RunCtx<'a> {
    /// The complete base environment of the child (the runtime's environment snapshot).
    pub env: &'a super::Env,
    pub deadline: Instant,
    /// Called every `heartbeat` while the command runs.
    pub heartbeat: Duration,
    pub on_heartbeat: &'a dyn Fn(),
}

/// Runs `cmd` to the end or to the deadline.
pub(crate) fn run(ctx: &RunCtx<'_>, cmd: &Cmd) -> Result<Finished, Interrupted> {
    // Stdin closed, its own process group, killed if the installer dies (crate::command).
    let mut command = crate::command::new_child(&cmd.program);
    command
        .args(&cmd.args)
        .current_dir(&cmd.cwd)
        .env_clear()
        .envs(ctx.env.iter())
        .envs(cmd.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let (merged, writer) = std::io::pipe().map_err(Interrupted::Spawn)?;
    match (cmd.capture_stdout, cmd.inherit_stderr) {
        (true, true) => {
            command.stdout(Stdio::piped()).stderr(Stdio::inherit());
            drop(writer);
        }
        (true, false) => {
            command.stdout(Stdio::piped()).stderr(writer);
        }
        (false, true) => {
            command.stdout(writer).stderr(Stdio::inherit());
        }
        (false, false) => {
            command
                .stdout(writer.try_clone().map_err(Interrupted::Spawn)?)
                .stderr(writer);
        }
    }
    let spawned = command.spawn();
    // `command` holds our copies of the pipe's write end; the reader sees end-of-file only once they are gone.
    drop(command);
    let mut child = spawned.map_err(Interrupted::Spawn)?;
    let pid = child.id() as libc::pid_t;
    ACTIVE_GROUP.store(pid, Ordering::SeqCst);

    let tail = Arc::new(Mutex::new(Tail::default()));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let stdout_buf = Arc::new(Mutex::new(Vec::new()));
    if let Some(out) = child.stdout.take() {
        spawn_reader(
            out,
            Arc::clone(&tail),
            Some(Arc::clone(&stdout_buf)),
            done_tx.clone(),
        );
    }
    spawn_reader(merged, Arc::clone(&tail), None, done_tx);

    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        wait_exited_without_reaping(pid);
        let _ = exit_tx.send(());
    });

    let mut next_beat = Instant::now() + ctx.heartbeat;
    let timed_out = loop {
        let now = Instant::now();
        if now >= ctx.deadline {
            break true;
        }
        match exit_rx.recv_timeout(ctx.deadline.min(next_beat).saturating_duration_since(now)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break false,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= next_beat {
                    (ctx.on_heartbeat)();
                    next_beat += ctx.heartbeat;
                }
            }
        }
    };
    // The child is alive or a zombie (not reaped), so `pid` still names its group: kill what is left of it,
    // the whole group on timeout, stray background helpers after a normal exit.
    crate::signals::kill_group(pid as u32, libc::SIGKILL);
    // Cleared before reaping: once reaped, the number may name someone else's group.
    ACTIVE_GROUP.store(0, Ordering::SeqCst);
    let status = child.wait();
    let drain_deadline = Instant::now() + PIPE_DRAIN;
    while done_rx
        .recv_timeout(drain_deadline.saturating_duration_since(Instant::now()))
        .is_ok()
    {}

    let tail = tail.lock().map(|t| t.lines()).unwrap_or_default();
    if timed_out {
        return Err(Interrupted::Timeout { tail });
    }
    let status = status.map_err(Interrupted::Spawn)?;
    let stdout = stdout_buf
        .lock()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Ok(Finished {
        status,
        stdout,
        tail,
    })
}

/// The process group of the command running now (0: none). Commands run one at a time per process.
static ACTIVE_GROUP: AtomicI32 = AtomicI32::new(0);

/// Kills the process group of the install command running now, if any. Async-signal-safe (an atomic
/// load and `kill(2)`), so it may be called from a signal handler or a shutdown path: the children lead
/// their own groups and would otherwise outlive an interrupted installer.
pub fn abort_running_step() {
    let pgid = ACTIVE_GROUP.load(Ordering::SeqCst);
    if pgid > 0 {
        // Async-signal-safe: a conversion and kill(2).
        crate::signals::kill_group(pgid as u32, libc::SIGKILL);
    }
}

/// On SIGINT, SIGTERM or SIGHUP: kill the running step's process group, then die of the same signal.
/// For the `install` command line; a long-running caller (`up`) calls [`abort_running_step`] from its own
/// shutdown path instead.
pub fn kill_running_step_on_signals() {
    extern "C" fn on_signal(signal: libc::c_int) {
        abort_running_step();
        // SAFETY: signal(2) and raise(3) are async-signal-safe; restoring the default action and
        // re-raising makes the process end with the signal, as the sender expects.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `on_signal` only does async-signal-safe work (see above).
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Blocks until `pid` has exited, leaving it unreaped.
fn wait_exited_without_reaping(pid: libc::pid_t) {
    loop {
        // SAFETY: `info` is a valid, zeroed out-parameter; waitid with WNOWAIT only reads process state.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

fn spawn_reader(
    pipe: impl Read + Send + 'static,
    tail: Arc<Mutex<Tail>>,
    capture: Option<Arc<Mutex<Vec<u8>>>>,
    done: mpsc::Sender<()>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Some(capture) = &capture
                        && let Ok(mut buf) = capture.lock()
                        && buf.len() < MAX_STDOUT_BYTES
                    {
                        buf.extend_from_slice(&line);
                    }
                    if let Ok(mut tail) = tail.lock() {
                        // Progress bars redraw with `\r`; keep only what was last drawn.
                        let text = String::from_utf8_lossy(&line);
                        let text = text.trim_end_matches(['\n', '\r']);
                        tail.push(text.rsplit('\r').next().unwrap_or(text));
                    }
                }
            }
        }
        let _ = done.send(());
    });
}

#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
}

impl Tail {
    fn push(&mut self, line: &str) {
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        let mut kept: String = line.chars().take(MAX_LINE_CHARS).collect();
        if kept.len() < line.len() {
            kept.push('…');
        }
        self.lines.push_back(kept);
    }

    fn lines(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }
}

/// Describes an exit status: `exited with status 128` or `was killed by signal 9`.
pub(crate) fn describe_status(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended abnormally".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(env: &super::super::Env, timeout: Duration) -> RunCtx<'_> {
        RunCtx {
            env,
            deadline: Instant::now() + timeout,
            heartbeat: Duration::from_secs(3600),
            on_heartbeat: &|| {},
        }
    }

    fn env() -> super::super::Env {
        super::super::Env::from_process()
    }

    #[test]
    fn keeps_the_ordered_tail_of_both_streams_and_captures_stdout() {
        let env = env();
        let script = "for i in $(seq 1 30); do echo out$i; echo err$i >&2; done; exit 3";
        let cmd = Cmd::new("sh", Path::new("/")).args(["-c", script]);
        let done = run(&ctx(&env, Duration::from_secs(60)), &cmd).unwrap();
        assert_eq!(done.status.code(), Some(3));
        let expected: Vec<String> = (21..=30)
            .flat_map(|i| [format!("out{i}"), format!("err{i}")])
            .collect();
        assert_eq!(done.tail, expected);

        let cmd = Cmd::new("sh", Path::new("/"))
            .args(["-c", "echo out; echo err >&2"])
            .capture_stdout();
        let done = run(&ctx(&env, Duration::from_secs(60)), &cmd).unwrap();
        assert_eq!(done.stdout, "out\n");
        assert!(done.tail.contains(&"err".to_owned()));
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let env = env();
        let cmd = Cmd::new("/nonexistent/program", Path::new("/"));
        assert!(matches!(
            run(&ctx(&env, Duration::from_secs(60)), &cmd),
            Err(Interrupted::Spawn(_))
        ));
    }

    #[test]
    fn display_quotes_and_redacts() {
        let cmd = Cmd::new("git", Path::new("/")).args(["fetch", "https://u:p@h/r", "a b", "it's"]);
        assert_eq!(
            cmd.display(&Masker::default()),
            r"git fetch https://***@h/r 'a b' 'it'\''s'"
        );
    }
}
