//! The std command for a child: [`new_child`], the one constructor (own process group, parent-death
//! signal unless the runtime is PID 1, empty signal mask), and a [`ChildCommand`] turned into one.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::ChildCommand;

impl ChildCommand {
    /// A std command: exact environment, own process group, stdin closed, stdout/stderr piped.
    pub(crate) fn to_command(&self) -> Command {
        let mut cmd = new_child(self.resolved_program());
        cmd.args(&self.args)
            .env_clear()
            .envs(&self.env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        cmd
    }

    /// The program as a path ([`ChildCommand::find_program`]), or the bare name as given where it
    /// is found nowhere (the start then fails saying so).
    pub(crate) fn resolved_program(&self) -> OsString {
        self.find_program().unwrap_or_else(|_| self.program.clone())
    }

    /// The program as a path: a bare name is looked up on the child's `PATH` (as execvp would; a
    /// relative folder there is taken from the app's `cwd`, as the child's execvp would), then on
    /// the runtime's own `PATH` (as PM2 finds a script with `which` in its own environment). Giving
    /// std a path keeps it on the posix_spawn fast path; with a bare name and a custom `PATH` it
    /// falls back to fork + exec, which costs about a millisecond per child here.
    ///
    /// A name found once is remembered for that `PATH` and `cwd` ([`FOUND`]), as a shell's command
    /// hash and PM2 (which resolves a script once, at start) do: later starts check only that the
    /// path found is still an executable file, instead of one `stat` per `PATH` folder before it. A
    /// program that is gone from there is looked up again; one installed later in an earlier `PATH`
    /// folder is not seen while the first one stays.
    ///
    /// `Err`: found nowhere; `Some` names the first file of that name that is not executable.
    pub(crate) fn find_program(&self) -> Result<OsString, Option<PathBuf>> {
        self.find_program_checked_since(Instant::now())
    }

    /// [`ChildCommand::find_program`], taking a path remembered for it as it is when that path was
    /// found or checked at `since` or later (a start's checks look many apps' programs up at once:
    /// the same program of the same `PATH` is looked at once).
    pub(crate) fn find_program_checked_since(
        &self,
        since: Instant,
    ) -> Result<OsString, Option<PathBuf>> {
        if self.program.as_encoded_bytes().contains(&b'/') {
            return Ok(self.program.clone());
        }
        // execvp's own default when there is no PATH at all.
        const DEFAULT: &str = "/usr/local/bin:/usr/bin:/bin";
        let path = self
            .env
            .get(OsStr::new("PATH"))
            .map_or(OsStr::new(DEFAULT), OsString::as_os_str);
        let key = (path.to_owned(), self.cwd.clone(), self.program.clone());
        let remembered = FOUND.lock().ok().and_then(|f| f.get(&key).cloned());
        if let Some((found, checked)) = remembered {
            if checked >= since {
                return Ok(found.into_os_string());
            }
            if is_executable(&found) {
                remember(key, found.clone());
                return Ok(found.into_os_string());
            }
        }
        let own = std::env::var_os("PATH");
        let folders = std::env::split_paths(path)
            .map(|dir| match &self.cwd {
                Some(cwd) if dir.is_relative() => cwd.join(dir),
                _ => dir,
            })
            .chain(own.iter().flat_map(std::env::split_paths));
        let mut not_executable = None;
        for dir in folders {
            let candidate = dir.join(&self.program);
            match file_mode(&candidate) {
                Some(mode) if mode & 0o111 != 0 => {
                    remember(key, candidate.clone());
                    return Ok(candidate.into_os_string());
                }
                Some(_) if not_executable.is_none() => not_executable = Some(candidate),
                _ => {}
            }
        }
        Err(not_executable)
    }

    /// The command line for log messages (program and arguments, never the environment).
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A command for `program` that the runtime may spawn: stdin closed, the leader of its own process
/// group (signals reach the child and every grandchild, and the terminal's Ctrl-C reaches only us;
/// we forward it), and [`child_hygiene`] (killed when the runtime dies, empty signal mask). The
/// caller adds arguments, environment, working directory and output pipes.
#[allow(clippy::disallowed_methods)] // The one constructor (see the module doc).
pub(crate) fn new_child(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    child_hygiene(&mut cmd);
    cmd
}

/// Makes a child of the supervisor (an app or a probe) safe to start:
/// - it gets SIGKILL when the runtime dies, even by `kill -9` (`PR_SET_PDEATHSIG`), so no app
///   outlives its supervisor. If the runtime died between fork and `prctl`, the child exits at once.
///   Grandchildren are not covered by this (the flag is not inherited); see docs/hostile-input.md
///   for what covers them. Not as PID 1 (a container): there the kernel ends the whole PID namespace
///   when the runtime dies, every process within microseconds, while the parent-death signal fires when the
///   *thread* that spawned the child ends (prctl(2)): the threads of a killed runtime end one after
///   another, milliseconds apart under load, and an app could outlive another it depends on (see
///   [`hygiene_in_child`]);
/// - it starts with an empty signal mask: `up` holds SIGTERM/SIGINT blocked from its first line
///   (see [`crate::signals::hold_stop_signals`]) and std does not reset the mask of a child.
///
/// The pre-exec step moves std from posix_spawn to fork + exec (about a millisecond more per start).
fn child_hygiene(cmd: &mut Command) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: std runs the hook in the child between fork and exec.
    let hook = move || unsafe { hygiene_in_child(parent) };
    // SAFETY: the hook only makes async-signal-safe system calls (see hygiene_in_child).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, hook);
    }
}

/// [`child_hygiene`]'s steps, in the child between fork and exec (also the cgroup spawn's,
/// [`crate::cgroup::AppCgroup::spawn`]): empty signal mask; unless `parent` (the runtime's pid) is 1,
/// `PR_SET_PDEATHSIG` and `_exit(137)` when the runtime is already gone.
///
/// As PID 1 the namespace's end is the apps' end, all at once. With the parent-death signal as well,
/// a `docker kill` took the apps down thread by thread: a worker outlived its simulation service by
/// a few milliseconds, saw the service's socket close and failed its job for a retry, where the
/// machine's comeback would have handed the job back untouched (the Swarm test, once; a job's
/// retries are counted against its `max_retries`).
///
/// # Safety
///
/// Call only in a freshly forked child, before exec.
pub(crate) unsafe fn hygiene_in_child(parent: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: sigemptyset, sigprocmask, prctl, getppid and _exit are async-signal-safe; nothing
    // here allocates or takes a lock, as required between fork and exec.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if parent == 1 {
            return Ok(());
        }
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            libc::_exit(137);
        }
    }
    Ok(())
}

/// The programs [`ChildCommand::find_program`] found, by (the app's `PATH`, its `cwd`, the name),
/// with when the path was last found an executable file there: one entry per program, `PATH` and
/// `cwd` the machine runs.
type Found = HashMap<FoundKey, (PathBuf, Instant)>;
type FoundKey = (OsString, Option<PathBuf>, OsString);
static FOUND: std::sync::LazyLock<std::sync::Mutex<Found>> =
    std::sync::LazyLock::new(Default::default);

/// Remembers `path` for `key`, checked now.
fn remember(key: FoundKey, path: PathBuf) {
    if let Ok(mut found) = FOUND.lock() {
        found.insert(key, (path, Instant::now()));
    }
}

/// The permission bits of `path` when it is a regular file (following links), from one `stat`.
fn file_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.permissions().mode())
}

fn is_executable(path: &Path) -> bool {
    file_mode(path).is_some_and(|mode| mode & 0o111 != 0)
}
