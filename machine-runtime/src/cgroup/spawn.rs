//! Starts an app's process directly inside its cgroup, the way glibc's `posix_spawn` starts a
//! process: `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP)` (Linux 5.7+) with the child on a
//! stack of its own, then the same steps std's `Command::spawn` takes between fork and exec. The
//! child is in its cgroup from its first instruction without moving itself there (a write to
//! `cgroup.procs` takes a lock every fork in the system waits for), and nothing of the runtime's
//! memory is copied for it (a fork copies the page tables of the whole multi-threaded runtime, and
//! both sides then fault on every page they write before the exec). Figures: docs/development.md,
//! Benchmarks.
//!
//! The child's steps: every signal handler of the runtime back to its default (the child shares the
//! runtime's memory until exec, and every signal is blocked on the spawning thread around the
//! clone), then in std's order stdin from `/dev/null`, stdout and stderr to pipes, working folder,
//! own process group, SIGPIPE back to its default, then [`crate::command`]'s hygiene (empty signal
//! mask; outside PID 1 `PR_SET_PDEATHSIG` and an exit if the runtime is already gone), the IPC channel at its fd, and
//! `execvpe` with exactly the command's environment. A failure before exec reaches the parent as
//! the errno, as std reports it, and the child is collected before the error returns.
//!
//! Where the kernel refuses `clone3` or `CLONE_INTO_CGROUP` (older than 5.7, or a seccomp profile
//! that answers ENOSYS), and on other architectures than x86_64 (the clone onto a new stack is a few
//! lines of assembly written for x86_64 only), the caller falls back to std's spawn with the child
//! moving itself ([`super::AppCgroup::attach`]); that answer is remembered for the rest of the run.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

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
/// cgroup `dir` (`None`: where the runtime is). `channel`: the child's end of Node's IPC channel, the fd it must have in the
/// child, and the variables that name it (they replace any of the same name in `cmd.env`).
pub(crate) fn spawn(
    cmd: &Exec<'_>,
    dir: Option<&Path>,
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
    let cgroup = dir
        .map(open_dir)
        .transpose()
        .map_err(|_| SpawnError::Fallback)?;
    let null = dev_null().map_err(io)?;
    let (out_r, out_w) = pipe().map_err(io)?;
    let (err_r, err_w) = pipe().map_err(io)?;
    let fds = ChildFds {
        stdin: null,
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        channel: channel.map(|c| (c.fd, c.at)),
    };
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };

    // SAFETY: clone_args is plain data; all-zero is "no flags".
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    if let Some(cgroup) = &cgroup {
        args.flags = CLONE_INTO_CGROUP;
        args.cgroup = cgroup.as_raw_fd() as u64;
    }
    args.exit_signal = libc::SIGCHLD as u64;
    // The child's errno when a step before exec fails (it shares this memory until exec).
    let failure = AtomicI32::new(0);
    let child_args = ChildArgs {
        fds: &fds,
        failure: &failure,
        parent,
        hygiene: cmd.hygiene,
        cwd: strings.cwd.as_ref(),
        program: &strings.program,
        argv: &argv,
        envp: &envp,
    };
    // No stack for the child (or too many arguments for it): std's spawn instead.
    let pid = clone_child(&mut args, &child_args).map_err(|_| SpawnError::Fallback)?;
    if pid < 0 {
        return Err(refused(std::io::Error::from_raw_os_error(-pid as i32)));
    }
    let pid = pid as libc::pid_t;
    drop((out_w, err_w, cgroup));
    exec_result(pid, failure.load(Ordering::Acquire)).map_err(io)?;
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

/// What became of child `pid`, given the errno it left in [`ChildArgs::failure`] (read once the
/// clone has returned, so after its exec or exit): 0 is `Ok`; anything else is that error, returned
/// once the child, which has exited, is collected (std does the same).
fn exec_result(pid: libc::pid_t, errno: i32) -> std::io::Result<()> {
    if errno != 0 {
        let mut status = 0;
        // SAFETY: waitpid on our own child, which has exited.
        while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
        return Err(std::io::Error::from_raw_os_error(errno));
    }
    Ok(())
}

/// The fds the child arranges before exec.
struct ChildFds {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    /// The IPC channel's child end and the fd it must have in the child.
    channel: Option<(RawFd, RawFd)>,
}

/// What the child needs between clone and exec, all made by the parent before the clone.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // Only the x86_64 clone runs it.
struct ChildArgs<'a> {
    fds: &'a ChildFds,
    /// Where the child leaves its errno when a step before exec fails.
    failure: &'a AtomicI32,
    /// The runtime's pid.
    parent: libc::pid_t,
    hygiene: unsafe fn(libc::pid_t) -> std::io::Result<()>,
    cwd: Option<&'a CString>,
    program: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
}

/// The child's stack in [`clone_child`] (bytes, plus a guard page below it). The child runs a few
/// frames of this module and `execvpe`, whose largest use is its retry through `/bin/sh` for a file
/// without `#!`: a copy of `argv` (8 bytes an argument) on the stack. [`clone_child`] takes up to
/// `CHILD_STACK / 32` arguments (4096, a quarter of the stack); more go to std's spawn.
#[cfg(target_arch = "x86_64")]
const CHILD_STACK: usize = 128 * 1024;

/// Starts the child the way glibc's `posix_spawn` does (`CLONE_VM | CLONE_VFORK`), with
/// `CLONE_INTO_CGROUP` added: the child runs on a stack of its own in this process's memory, and this
/// thread waits until it has exec'd or exited. Nothing is copied: a fork copies the page tables of the
/// whole multi-threaded runtime, and both sides then take a copy-on-write fault for each page they
/// write before the exec (docs/development.md, Benchmarks, has the figures). Every signal is blocked
/// on this thread around the clone and the child resets each handler before it unblocks them, so no
/// handler of the runtime ever runs in the child on the shared memory.
///
/// Returns the child's pid, or `-errno` when the kernel refused the clone; `Err` when there is no
/// stack for the child (it could not be made, or `argv` would not fit on it).
#[cfg(target_arch = "x86_64")]
fn clone_child(
    args: &mut libc::clone_args,
    child: &ChildArgs<'_>,
) -> std::io::Result<libc::c_long> {
    thread_local! {
        /// This thread's child stack, made at its first start and used again for each later one:
        /// a child is done with it when the clone returns (CLONE_VFORK).
        static STACK: std::cell::OnceCell<ChildStack> = const { std::cell::OnceCell::new() };
    }
    // execvpe's retry through /bin/sh (a file without `#!` it cannot exec) copies argv onto the
    // child's stack: more arguments than leave room for that go to std's spawn.
    // (`argv` ends with its null pointer.)
    if child.argv.len() - 1 > CHILD_STACK / 32 {
        return Err(std::io::Error::other(
            "too many arguments for the child's stack",
        ));
    }
    let spawned = STACK.try_with(|cell| {
        let stack = match cell.get() {
            Some(stack) => stack,
            None => {
                let made = ChildStack::new()?;
                cell.get_or_init(|| made)
            }
        };
        args.flags |= (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
        args.stack = stack.low as u64;
        args.stack_size = CHILD_STACK as u64;
        let blocked = BlockedSignals::new();
        // SAFETY: the stack is this thread's and no other child uses it before this one has exec'd
        // or exited (CLONE_VFORK suspends this thread until then); `child` and all it points to live
        // on this thread's frames until then; `child_entry` never returns.
        let pid = unsafe {
            clone3_on_stack(
                args,
                child_entry,
                (child as *const ChildArgs<'_>).cast_mut().cast(),
            )
        };
        drop(blocked);
        Ok(pid)
    });
    // No thread-local left (the thread is ending): std's spawn.
    spawned.map_err(std::io::Error::other)?
}

/// Elsewhere (no assembly for this architecture here): refused as a kernel without `clone3` is
/// ([`refused`]), so every start takes std's spawn with the child moving itself into its cgroup.
#[cfg(not(target_arch = "x86_64"))]
fn clone_child(
    _args: &mut libc::clone_args,
    _child: &ChildArgs<'_>,
) -> std::io::Result<libc::c_long> {
    Ok(-libc::c_long::from(libc::ENOSYS))
}

/// `clone3(args)`; in the child, `entry(arg)` on the stack `args` names.
///
/// # Safety
///
/// `args` names a stack the child may use until it execs or exits, and has `CLONE_VFORK` so that
/// this thread's frames (which `arg` may point into) stay put until then; `entry` never returns.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_on_stack(
    args: &mut libc::clone_args,
    entry: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the syscall instruction clobbers rcx and r11 and returns in rax; the child (rax 0)
    // starts with the kernel's stack pointer at the top of its own stack (16-byte aligned, so the
    // call's frame is as the ABI wants) and never comes back here: `entry` does not return.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut libc::clone_args,
            in("rsi") std::mem::size_of::<libc::clone_args>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// The child's first frame in [`clone_child`].
#[cfg(target_arch = "x86_64")]
extern "C" fn child_entry(arg: *mut libc::c_void) -> ! {
    // SAFETY: `arg` is the `ChildArgs` clone_child passed, alive while this thread's parent waits.
    unsafe { child_main(&*(arg as *const ChildArgs<'_>)) }
}

/// A child stack for [`clone_child`]: [`CHILD_STACK`] bytes above a guard page (a child that ran
/// over its stack faults there instead of writing into the runtime's memory); unmapped on drop.
#[cfg(target_arch = "x86_64")]
struct ChildStack {
    map: *mut libc::c_void,
    map_len: usize,
    /// The lowest address of the usable stack.
    low: *mut libc::c_void,
}

#[cfg(target_arch = "x86_64")]
impl ChildStack {
    fn new() -> std::io::Result<ChildStack> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let map_len = CHILD_STACK + page;
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let stack = ChildStack {
            map,
            map_len,
            // SAFETY: within the mapping (map_len > page).
            low: unsafe { map.cast::<u8>().add(page).cast() },
        };
        // SAFETY: the mapping's first page, ours.
        if unsafe { libc::mprotect(map, page, libc::PROT_NONE) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stack)
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our mapping, no longer used (the child has exec'd or exited).
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// Every signal blocked on this thread until drop (then the mask it had before).
#[cfg(target_arch = "x86_64")]
struct BlockedSignals(libc::sigset_t);

#[cfg(target_arch = "x86_64")]
impl BlockedSignals {
    fn new() -> BlockedSignals {
        // SAFETY: sigset_t is plain data, filled by sigfillset; pthread_sigmask writes the old mask.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut before: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut before);
            BlockedSignals(before)
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in new.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// The child's side, between clone and exec: only async-signal-safe calls, no allocation, no lock,
/// nothing written outside its own stack but the errno report (it may share the runtime's memory).
///
/// # Safety
///
/// Call only in the child of [`clone_child`], with pointers to data that outlives the call.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // Only the x86_64 clone runs it.
unsafe fn child_main(a: &ChildArgs<'_>) -> ! {
    let fds = a.fds;
    // SAFETY (whole body): each call is async-signal-safe and takes pointers to live data.
    unsafe {
        reset_signal_handlers();
        for (from, to) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)] {
            let ok = if from == to {
                libc::fcntl(from, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(from, to) == to
            };
            if !ok {
                fail(a.failure);
            }
        }
        if let Some(cwd) = a.cwd
            && libc::chdir(cwd.as_ptr()) != 0
        {
            fail(a.failure);
        }
        if libc::setpgid(0, 0) != 0 {
            fail(a.failure);
        }
        // Rust programs ignore SIGPIPE; the child starts with the default, as std gives it.
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            fail(a.failure);
        }
        // crate::command's hygiene: empty signal mask and, unless the runtime is PID 1, killed
        // when it dies, and gone at once if it died before prctl.
        if (a.hygiene)(a.parent).is_err() {
            fail(a.failure);
        }
        if let Some((fd, at)) = fds.channel {
            let ok = if fd == at {
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, at) == at
            };
            if !ok {
                fail(a.failure);
            }
        }
        libc::execvpe(a.program.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
        fail(a.failure)
    }
}

/// Every signal the runtime handles back to its default, in the child before it unblocks them (it
/// shares the runtime's memory until exec; exec would reset them, too late). Ignored signals stay
/// ignored, as across a fork and exec.
///
/// # Safety
///
/// Call only in the child (see [`child_main`]).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // Only the x86_64 clone runs it.
unsafe fn reset_signal_handlers() {
    // SAFETY: sigaction is async-signal-safe; the structs are plain data on this stack. The C
    // library's own signals refuse the change (EINVAL), which is fine: they keep their handlers.
    unsafe {
        for signal in 1..=libc::SIGRTMAX() {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction != libc::SIG_DFL
                && current.sa_sigaction != libc::SIG_IGN
            {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
    }
}

/// Tells the parent why the child could not exec (its errno) and exits.
///
/// # Safety
///
/// Call only in the child (see [`child_main`]).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // Only the x86_64 clone runs it.
unsafe fn fail(failure: &AtomicI32) -> ! {
    // Never 0, which would read as success.
    let errno = std::io::Error::last_os_error()
        .raw_os_error()
        .filter(|e| *e != 0)
        .unwrap_or(libc::EIO);
    failure.store(errno, Ordering::Release);
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(127) }
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

/// `/dev/null`, opened (close-on-exec) at the first start and kept: every app's stdin.
fn dev_null() -> std::io::Result<RawFd> {
    static NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd.as_raw_fd());
    }
    let file = std::fs::File::open("/dev/null")?;
    Ok(NULL.get_or_init(|| file.into()).as_raw_fd())
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

// The fast path these tests check is x86_64's (elsewhere every start falls back to std's spawn).
#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::command::ChildCommand;
    use std::io::Read;

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
                Err(why) => {
                    super::super::tests::skip_without_cgroups(&why);
                    None
                }
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
        let forked = started(spawn(
            &exec(&cmd),
            Some(&cgroup.0),
            Some(ChildChannel {
                fd: theirs.as_raw_fd(),
                at: 3,
                env: &extra,
            }),
        ));
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

    /// The started child of `spawned`; a fallback or an error fails the test.
    fn started(spawned: Result<Forked, SpawnError>) -> Forked {
        match spawned {
            Ok(forked) => forked,
            Err(SpawnError::Fallback) => panic!("the clone was refused here (fell back)"),
            Err(SpawnError::Io(e)) => panic!("spawn failed: {e}"),
        }
    }

    /// What `forked` wrote on stdout, once it has exited 0 (its stdout in the failure message).
    fn output_of(forked: Forked) -> String {
        let out = read_all(forked.stdout);
        let status = wait(forked.pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{out}"
        );
        out
    }

    /// Blocks (`how` SIG_BLOCK) or unblocks (SIG_UNBLOCK) SIGTERM on this test thread.
    fn mask_sigterm(how: libc::c_int) {
        // SAFETY: changes only this thread's mask; the set is plain data filled here.
        unsafe {
            let mut term: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut term);
            libc::sigaddset(&mut term, libc::SIGTERM);
            libc::pthread_sigmask(how, &term, std::ptr::null_mut());
        }
    }

    /// This thread's signal mask.
    fn thread_mask() -> libc::sigset_t {
        // SAFETY: pthread_sigmask with no new set only writes the current one.
        unsafe {
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
            mask
        }
    }

    fn is_member(mask: &libc::sigset_t, signal: i32) -> bool {
        // SAFETY: reads a valid set.
        unsafe { libc::sigismember(mask, signal) == 1 }
    }

    #[test]
    fn the_child_starts_with_no_signal_blocked_or_ignored_and_the_spawner_keeps_its_mask() {
        let Some(cgroup) = TestCgroup::new("signals") else {
            return;
        };
        // As in `up`: the spawning thread holds SIGTERM blocked; Rust ignores SIGPIPE.
        mask_sigterm(libc::SIG_BLOCK);
        let cmd = command(
            "/bin/grep",
            &["-E", "^Sig(Blk|Ign)", "/proc/self/status"],
            &[],
        );
        let forked = spawn(&exec(&cmd), Some(&cgroup.0), None);
        let after = thread_mask();
        mask_sigterm(libc::SIG_UNBLOCK);
        let out = output_of(started(forked));
        // Ignored signals stay ignored across fork and exec, but for SIGPIPE (which Rust ignores).
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let own_ignored = own
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:\t"))
            .map(|hex| u64::from_str_radix(hex, 16).unwrap())
            .unwrap();
        assert_ne!(own_ignored & (1 << (libc::SIGPIPE - 1)), 0, "{own}");
        let expected = own_ignored & !(1 << (libc::SIGPIPE - 1));
        assert_eq!(
            out,
            format!("SigBlk:\t0000000000000000\nSigIgn:\t{expected:016x}\n"),
            "the app's mask and ignored signals"
        );
        assert!(
            is_member(&after, libc::SIGTERM),
            "the spawner's mask was not restored"
        );
        assert!(
            !is_member(&after, libc::SIGUSR1),
            "the spawner was left with every signal blocked"
        );
    }

    #[test]
    fn a_failure_before_exec_is_the_errno_and_the_child_is_collected() {
        let Some(cgroup) = TestCgroup::new("fail") else {
            return;
        };
        let missing = command("/nonexistent/program", &[], &[]);
        match spawn(&exec(&missing), Some(&cgroup.0), None) {
            Err(SpawnError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}"),
            Err(SpawnError::Fallback) => panic!("clone3(CLONE_INTO_CGROUP) was refused here"),
            Ok(f) => panic!("started pid {}", f.pid),
        }
        let mut bad_cwd = command("/bin/true", &[], &[]);
        bad_cwd.cwd = Some("/nonexistent/folder".into());
        match spawn(&exec(&bad_cwd), Some(&cgroup.0), None) {
            Err(SpawnError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}"),
            Err(SpawnError::Fallback) => panic!("clone3(CLONE_INTO_CGROUP) was refused here"),
            Ok(f) => panic!("started pid {}", f.pid),
        }
        let nul = command("/bin/true", &["a\0b"], &[]);
        assert!(matches!(
            spawn(&exec(&nul), Some(&cgroup.0), None),
            Err(SpawnError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidInput
        ));
        // Both failed children were collected: none is left to wait for in this cgroup.
        assert_eq!(super::super::pids_in(&cgroup.0), Vec::<i32>::new());
    }

    #[test]
    fn without_a_cgroup_the_child_starts_in_the_spawners() {
        let cmd = command("/bin/cat", &["/proc/self/cgroup"], &[]);
        let out = output_of(started(spawn(&exec(&cmd), None, None)));
        assert_eq!(out, std::fs::read_to_string("/proc/self/cgroup").unwrap());
    }

    #[test]
    fn more_arguments_than_the_child_stack_holds_fall_back() {
        // With argv[0], one more than the stack takes.
        let many: Vec<String> = (0..CHILD_STACK / 32).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let cmd = command("/bin/true", &many, &[]);
        assert!(matches!(
            spawn(&exec(&cmd), None, None),
            Err(SpawnError::Fallback)
        ));
        // One fewer fits.
        let cmd = command("/bin/true", &many[1..], &[]);
        output_of(started(spawn(&exec(&cmd), None, None)));
    }

    #[test]
    fn a_cgroup_folder_that_is_gone_falls_back() {
        let Some(cgroup) = TestCgroup::new("gone") else {
            return;
        };
        let gone = cgroup.0.join("not-made");
        assert!(matches!(
            spawn(&exec(&command("/bin/true", &[], &[])), Some(&gone), None),
            Err(SpawnError::Fallback)
        ));
    }
}
