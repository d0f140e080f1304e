//! Starts an app's process directly inside its cgroup: `clone3(CLONE_INTO_CGROUP)` (Linux 5.7+),
//! then the same steps std's `Command::spawn` takes between fork and exec, so the child is in its
//! cgroup from its first instruction without moving itself there. Moving a process between cgroups
//! (a write to `cgroup.procs`) takes a lock every fork in the system waits for; for 64 apps that was
//! about 15 ms of a 75 ms start (docs/development.md, Benchmarks).
//!
//! The child's steps, in std's order: stdin from `/dev/null`, stdout and stderr to pipes, working
//! folder, own process group, SIGPIPE back to its default, then [`crate::command`]'s hygiene (empty
//! signal mask, `PR_SET_PDEATHSIG`, exits if the runtime is already gone), the IPC channel at its
//! fd, and `execvpe` with exactly the command's environment. A failure before exec reaches the
//! parent as the errno, as std reports it, and the child is collected before the error returns.
//!
//! Where the kernel refuses `clone3` or `CLONE_INTO_CGROUP` (older than 5.7, or a seccomp profile
//! that answers ENOSYS) the caller falls back to std's spawn with the child moving itself
//! ([`super::AppCgroup::attach`]); that answer is remembered for the rest of the run.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// `CLONE_INTO_CGROUP` of `<linux/sched.h>` (libc's constant is a 32-bit int, too narrow for it).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// Set once the kernel has refused `clone3` with `CLONE_INTO_CGROUP`.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Node's IPC channel for the child: its end in the parent, the fd it must have in the child, and
/// the variables that name it (they replace any of the same name in the command's environment).
#[derive(Clone, Copy)]
pub(crate) struct ChildChannel<'a> {
    pub fd: RawFd,
    pub at: RawFd,
    pub env: &'a [(&'static str, String)],
}

/// What to run: the parts of the runtime's child command ([`crate::command::ChildCommand`]), passed
/// as plain data so that this module depends on no other.
pub(crate) struct Exec<'a> {
    /// The program as a path (`ChildCommand::resolved_program`).
    pub program: OsString,
    /// `argv[0]`: the program as the app names it.
    pub arg0: &'a OsStr,
    pub args: &'a [OsString],
    /// The child's complete environment.
    pub env: &'a BTreeMap<OsString, OsString>,
    pub cwd: Option<&'a Path>,
    /// The runtime's steps for every child before exec, after std's (`command::hygiene_in_child`):
    /// async-signal-safe, given the runtime's pid.
    pub hygiene: unsafe fn(libc::pid_t) -> std::io::Result<()>,
}

/// A started child: its pid and the read ends of its stdout and stderr pipes.
pub(crate) struct Forked {
    pub pid: u32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Why [`spawn`] started nothing.
pub(crate) enum SpawnError {
    /// The kernel cannot start this process inside the cgroup now (or at all): use std's spawn,
    /// with the child moving itself, instead.
    Fallback,
    /// The command could not be started (as std would have reported it).
    Io(std::io::Error),
}

/// Starts `cmd` (its program already a path, see [`ChildCommand::resolved_program`]) inside the
/// cgroup `dir`. `channel`: the child's end of Node's IPC channel, the fd it must have in the
/// child, and the variables that name it (they replace any of the same name in `cmd.env`).
pub(crate) fn spawn(
    cmd: &Exec<'_>,
    dir: &Path,
    channel: Option<ChildChannel<'_>>,
) -> Result<Forked, SpawnError> {
    if UNSUPPORTED.load(Ordering::Relaxed) {
        return Err(SpawnError::Fallback);
    }
    let io = SpawnError::Io;
    // Everything the child needs is made here: between clone and exec nothing may allocate.
    let strings = ExecStrings::new(cmd, channel).map_err(io)?;
    let argv = null_terminated(&strings.argv);
    let envp = null_terminated(&strings.envp);

    // A folder that is gone: std's spawn leaves such a child where it is; so does the fallback.
    let cgroup = open_dir(dir).map_err(|_| SpawnError::Fallback)?;
    let null = std::fs::File::open("/dev/null").map_err(io)?;
    let (out_r, out_w) = pipe().map_err(io)?;
    let (err_r, err_w) = pipe().map_err(io)?;
    // The child writes its errno here when a step fails; exec closes it (close-on-exec).
    let (report_r, report_w) = pipe().map_err(io)?;
    let fds = ChildFds {
        stdin: null.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        report: report_w.as_raw_fd(),
        channel: channel.map(|c| (c.fd, c.at)),
    };
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };

    // SAFETY: clone_args is plain data; all-zero is "no flags".
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = CLONE_INTO_CGROUP;
    args.exit_signal = libc::SIGCHLD as u64;
    args.cgroup = cgroup.as_raw_fd() as u64;
    // SAFETY: clone3 without CLONE_VM is a fork: the child gets a copy of this thread's memory and
    // runs only `child`, which makes async-signal-safe calls on data prepared above and never
    // returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if pid == 0 {
        // SAFETY: we are the new child (see above).
        unsafe {
            child(
                &fds,
                parent,
                cmd.hygiene,
                strings.cwd.as_ref(),
                &strings.program,
                &argv,
                &envp,
            )
        }
    }
    if pid < 0 {
        return Err(refused(std::io::Error::last_os_error()));
    }
    let pid = pid as libc::pid_t;
    drop((null, out_w, err_w, report_w, cgroup));
    exec_result(pid, report_r).map_err(io)?;
    Ok(Forked {
        pid: pid as u32,
        stdout: out_r,
        stderr: err_r,
    })
}

/// The C strings the child execs with, made before the clone: the program, `argv`, the
/// environment as `KEY=value` entries (the channel's variables replacing any of the same name in
/// `cmd.env`) and the working folder. A NUL byte in any of them is `InvalidInput`, as std says.
struct ExecStrings {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
}

impl ExecStrings {
    fn new(cmd: &Exec<'_>, channel: Option<ChildChannel<'_>>) -> std::io::Result<ExecStrings> {
        let program = cstring(cmd.program.as_bytes())?;
        let argv = std::iter::once(cmd.arg0)
            .chain(cmd.args.iter().map(OsString::as_os_str))
            .map(|a| cstring(a.as_bytes()))
            .collect::<std::io::Result<Vec<_>>>()?;
        let extra: &[(&str, String)] = channel.map_or(&[], |c| c.env);
        let envp = cmd
            .env
            .iter()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| OsStr::new(e) == k.as_os_str()))
            .map(|(k, v)| env_entry(k.as_bytes(), v.as_bytes()))
            .chain(
                extra
                    .iter()
                    .map(|(k, v)| env_entry(k.as_bytes(), v.as_bytes())),
            )
            .collect::<std::io::Result<Vec<_>>>()?;
        let cwd = cmd
            .cwd
            .map(|c| cstring(c.as_os_str().as_bytes()))
            .transpose()?;
        Ok(ExecStrings {
            program,
            argv,
            envp,
            cwd,
        })
    }
}

/// What a failed `clone3` (its error `e`) means: always the fallback; a kernel or seccomp profile
/// that does not know the call or the flag is remembered, so later starts go straight to it.
fn refused(e: std::io::Error) -> SpawnError {
    match e.raw_os_error() {
        // No clone3, no CLONE_INTO_CGROUP (E2BIG/EINVAL before 5.7), or seccomp's ENOSYS/EPERM.
        Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EPERM | libc::EOPNOTSUPP) => {
            UNSUPPORTED.store(true, Ordering::Relaxed);
            SpawnError::Fallback
        }
        // A cgroup that cannot take the process now (removed, or a controller's rule): the
        // fallback tries std's fork, whose child stays where it is if it cannot move.
        _ => SpawnError::Fallback,
    }
}

/// Waits for child `pid` to exec or fail: end of file on `report` (closed by exec) is `Ok`; an
/// errno written there is that error, returned once the child, which has exited, is collected
/// (std does the same).
fn exec_result(pid: libc::pid_t, report: OwnedFd) -> std::io::Result<()> {
    let mut errno = [0u8; 4];
    let got = read_full(report.as_raw_fd(), &mut errno);
    if got == errno.len() {
        // The child failed before exec and has exited: collect it before reporting (std does too).
        let mut status = 0;
        // SAFETY: waitpid on our own child, which has exited or is about to.
        while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
        return Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno)));
    }
    Ok(())
}

/// The fds the child arranges before exec.
struct ChildFds {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
    /// The IPC channel's child end and the fd it must have in the child.
    channel: Option<(RawFd, RawFd)>,
}

/// The child's side, between clone and exec: only async-signal-safe calls, no allocation, no lock.
///
/// # Safety
///
/// Call only in the child of a fork-like clone, with pointers to data that outlives the call.
unsafe fn child(
    fds: &ChildFds,
    parent: libc::pid_t,
    hygiene: unsafe fn(libc::pid_t) -> std::io::Result<()>,
    cwd: Option<&CString>,
    program: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    // SAFETY (whole body): each call is async-signal-safe and takes pointers to live data.
    unsafe {
        for (from, to) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)] {
            let ok = if from == to {
                libc::fcntl(from, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(from, to) == to
            };
            if !ok {
                fail(fds.report);
            }
        }
        if let Some(cwd) = cwd
            && libc::chdir(cwd.as_ptr()) != 0
        {
            fail(fds.report);
        }
        if libc::setpgid(0, 0) != 0 {
            fail(fds.report);
        }
        // Rust programs ignore SIGPIPE; the child starts with the default, as std gives it.
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            fail(fds.report);
        }
        // crate::command's hygiene: empty signal mask, killed when the runtime dies, and gone at
        // once if the runtime died before prctl.
        if hygiene(parent).is_err() {
            fail(fds.report);
        }
        if let Some((fd, at)) = fds.channel {
            let ok = if fd == at {
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, at) == at
            };
            if !ok {
                fail(fds.report);
            }
        }
        libc::execvpe(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(fds.report)
    }
}

/// Tells the parent why the child could not exec (its errno) and exits.
///
/// # Safety
///
/// Call only in the child (see [`child`]).
unsafe fn fail(report: RawFd) -> ! {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let bytes = errno.to_ne_bytes();
    // SAFETY: write and _exit are async-signal-safe; `bytes` lives on this stack.
    unsafe {
        libc::write(report, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

fn cstring(bytes: &[u8]) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

fn env_entry(key: &[u8], value: &[u8]) -> std::io::Result<CString> {
    let mut entry = Vec::with_capacity(key.len() + value.len() + 2);
    entry.extend_from_slice(key);
    entry.push(b'=');
    entry.extend_from_slice(value);
    cstring(&entry)
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    let path = cstring(dir.as_os_str().as_bytes())?;
    // SAFETY: open with a valid C string; the fd is owned below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: two fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads until `buf` is full or end of file; returns how many bytes were read.
fn read_full(fd: RawFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: read into the unfilled tail of `buf`.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n > 0 {
            got += n as usize;
        } else if n == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::ChildCommand;
    use std::io::Read;

    /// Opt-out for developers who cannot create a cgroup (as in tests/it/pm2_compat.rs).
    const SKIP_CGROUP_VAR: &str = "MACHINE_SKIP_CGROUP_TEST";

    /// A cgroup of this test's own, outside the runtime's folder (which another runtime's start
    /// would sweep); removed on drop. `None` only with the opt-out set.
    struct TestCgroup(std::path::PathBuf);

    impl TestCgroup {
        fn new(name: &str) -> Option<TestCgroup> {
            let made = super::super::cgroup2_mount()
                .ok_or_else(|| "no cgroup2 mount".to_string())
                .and_then(|mount| {
                    let dir = mount.join(format!(
                        "machine-runtime-test-{}-{name}",
                        std::process::id()
                    ));
                    std::fs::create_dir(&dir)
                        .map(|()| dir.clone())
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
                });
            match made {
                Ok(dir) => Some(TestCgroup(dir)),
                Err(why) if std::env::var_os(SKIP_CGROUP_VAR).is_some_and(|v| v == "1") => {
                    eprintln!("SKIPPED ON PURPOSE: {SKIP_CGROUP_VAR}=1 and {why}");
                    None
                }
                Err(why) => panic!(
                    "this test needs a cgroup (root with cgroup2, or a delegated subtree), or {SKIP_CGROUP_VAR}=1 to skip it on purpose: {why}"
                ),
            }
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            super::super::kill_cgroup(&self.0);
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    fn command(program: &str, args: &[&str], env: &[(&str, &str)]) -> ChildCommand {
        ChildCommand {
            program: program.into(),
            args: args.iter().map(Into::into).collect(),
            cwd: None,
            env: env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect::<BTreeMap<_, _>>(),
            gpu: None,
            visible: Vec::new(),
            dirs: Vec::new(),
            ipc: false,
        }
    }

    fn exec(cmd: &ChildCommand) -> Exec<'_> {
        Exec {
            program: cmd.resolved_program(),
            arg0: &cmd.program,
            args: &cmd.args,
            env: &cmd.env,
            cwd: cmd.cwd.as_deref(),
            hygiene: crate::command::hygiene_in_child,
        }
    }

    /// Waits for `pid` (a child of this test) and returns its raw wait status.
    fn wait(pid: u32) -> i32 {
        let mut status = 0;
        // SAFETY: waitpid on a child this test started.
        let rc = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        assert_eq!(rc, pid as i32, "waitpid");
        status
    }

    fn read_all(fd: OwnedFd) -> String {
        let mut text = String::new();
        std::fs::File::from(fd).read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn the_child_starts_inside_its_cgroup_with_exactly_its_environment() {
        let Some(cgroup) = TestCgroup::new("env") else {
            return;
        };
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let theirs = OwnedFd::from(theirs);
        let extra = [("CHANNEL", "replaced".to_string())];
        let mut cmd = command(
            "/bin/sh",
            &[
                "-c",
                "cat /proc/self/cgroup; echo ---; env | sort; echo err >&2; echo hi >&3",
            ],
            &[("A", "1"), ("CHANNEL", "old"), ("PATH", "/usr/bin:/bin")],
        );
        cmd.cwd = Some("/".into());
        let forked = match spawn(
            &exec(&cmd),
            &cgroup.0,
            Some(ChildChannel {
                fd: theirs.as_raw_fd(),
                at: 3,
                env: &extra,
            }),
        ) {
            Ok(forked) => forked,
            Err(SpawnError::Fallback) => panic!("clone3(CLONE_INTO_CGROUP) was refused here"),
            Err(SpawnError::Io(e)) => panic!("spawn failed: {e}"),
        };
        drop(theirs);
        let out = read_all(forked.stdout);
        let err = read_all(forked.stderr);
        let status = wait(forked.pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status} {err}"
        );
        let name = cgroup.0.file_name().unwrap().to_str().unwrap();
        let (cgroups, env) = out.split_once("---\n").expect("the marker");
        assert!(
            cgroups
                .lines()
                .any(|l| l.starts_with("0::/") && l.ends_with(name)),
            "{out}"
        );
        let env: Vec<&str> = env.lines().collect();
        // sh adds PWD (and SHLVL, _); nothing of the test's own environment gets through.
        let ours_only: Vec<&str> = env
            .iter()
            .copied()
            .filter(|l| {
                !["PWD=", "OLDPWD=", "SHLVL=", "_="]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .collect();
        assert_eq!(ours_only, ["A=1", "CHANNEL=replaced", "PATH=/usr/bin:/bin"]);
        assert!(env.contains(&"PWD=/"), "{out}");
        assert_eq!(err, "err\n");
        let mut line = String::new();
        (&ours).read_to_string(&mut line).unwrap();
        assert_eq!(line, "hi\n");
    }

    #[test]
    fn a_failure_before_exec_is_the_errno_and_the_child_is_collected() {
        let Some(cgroup) = TestCgroup::new("fail") else {
            return;
        };
        let missing = command("/nonexistent/program", &[], &[]);
        match spawn(&exec(&missing), &cgroup.0, None) {
            Err(SpawnError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}"),
            Err(SpawnError::Fallback) => panic!("clone3(CLONE_INTO_CGROUP) was refused here"),
            Ok(f) => panic!("started pid {}", f.pid),
        }
        let mut bad_cwd = command("/bin/true", &[], &[]);
        bad_cwd.cwd = Some("/nonexistent/folder".into());
        match spawn(&exec(&bad_cwd), &cgroup.0, None) {
            Err(SpawnError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}"),
            Err(SpawnError::Fallback) => panic!("clone3(CLONE_INTO_CGROUP) was refused here"),
            Ok(f) => panic!("started pid {}", f.pid),
        }
        let nul = command("/bin/true", &["a\0b"], &[]);
        assert!(matches!(
            spawn(&exec(&nul), &cgroup.0, None),
            Err(SpawnError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidInput
        ));
        // Both failed children were collected: none is left to wait for in this cgroup.
        assert_eq!(super::super::pids_in(&cgroup.0), Vec::<i32>::new());
    }

    #[test]
    fn a_cgroup_folder_that_is_gone_falls_back() {
        let Some(cgroup) = TestCgroup::new("gone") else {
            return;
        };
        let gone = cgroup.0.join("not-made");
        assert!(matches!(
            spawn(&exec(&command("/bin/true", &[], &[])), &gone, None),
            Err(SpawnError::Fallback)
        ));
    }
}
