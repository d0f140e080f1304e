//! One cgroup (v2) per app, so that nothing an app started outlives the runtime, even a process
//! that left the app's process group and session and even after `kill -9` of the runtime on a host.
//!
//! Layout: `<cgroup2 mount>/machine-runtime/<runtime pid>@<PID namespace>/<index>-<app name>`, the
//! namespace by the inode number of `/proc/self/ns/pid` (a pid alone is not unique: every runtime that
//! is PID 1 of a namespace of its own is pid 1, and two such runtimes on one cgroup hierarchy once
//! emptied each other's cgroups; a cgroup emptied that way kills at birth every child started into
//! it). The runtime makes it
//! where it may: at the top of the cgroup2 hierarchy it sees (root on a host, or a container's own
//! namespace), else under its own cgroup (a delegated subtree, e.g. a systemd user scope with
//! `Delegate=yes`). Each app's process is started inside its cgroup (`clone3` with
//! `CLONE_INTO_CGROUP`, [`spawn`]), or, where the kernel refuses that, moves itself there between
//! fork and exec (`echo 0 > cgroup.procs`), so every descendant is in it from the first
//! instruction. No controller is enabled: the cgroups only group processes.
//!
//! - When an app's process has ended or been stopped, its cgroup is emptied (`cgroup.kill`).
//! - When the runtime stops, every app's cgroup is emptied and removed.
//! - At start (while the files are read, so also by a start its checks then refuse), the folders of
//!   runtimes of the same PID namespace that are gone (their pid is not a live process named
//!   `machine-runtime`, the name `up` gives itself whatever its binary is called; a zombie is gone)
//!   are swept: their processes killed, the folders removed, one log line each. So after `kill -9`
//!   of the runtime on a host, what its apps left is ended by the next start on that host. Folders of other PID namespaces are left alone: whether their runtime lives cannot
//!   be seen from here (and when a namespace ends, the kernel has ended its processes). A folder named
//!   by a pid alone (an older runtime) counts as this namespace's.
//!
//! Fallback, said once in the log: no cgroup2 mount, or no folder the runtime may create (not root
//! and no delegated subtree): the apps run without cgroups; process groups, `PR_SET_PDEATHSIG` and
//! the subreaper then cover everything but a grandchild that left its process group after a
//! `kill -9` of the runtime outside a container (in a container, as PID 1, the PID namespace ends
//! with it). Without `cgroup.kill` (Linux before 5.14) each process of the cgroup gets SIGKILL.

mod spawn;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

pub(crate) use spawn::{ChildChannel, Exec, Forked, SpawnError};

/// Starts `cmd` as [`AppCgroup::spawn`] does, where the app has no cgroup (the fallback above): in
/// the runtime's own cgroup, still without copying the runtime. [`SpawnError::Fallback`]: start it
/// with std instead.
pub(crate) fn spawn_outside(
    cmd: &Exec<'_>,
    channel: Option<ChildChannel<'_>>,
) -> Result<Forked, SpawnError> {
    spawn::spawn(cmd, None, channel)
}

/// The folder the runtime's cgroups go in, under the cgroup2 mount (or the runtime's own cgroup).
const TOP: &str = "machine-runtime";
/// The longest an emptied cgroup is waited for before it is left in place.
const EMPTY_WAIT: Duration = Duration::from_secs(2);

/// This runtime's cgroups: `<top>/<pid>`.
#[derive(Debug, Clone)]
pub(crate) struct Cgroups {
    top: PathBuf,
    base: PathBuf,
}

/// The apps' cgroups, made by a task of the async runtime while `up` reads its files and checks
/// them (its worker threads have nothing else to do then): first [`Cgroups::setup`], then each app's
/// cgroup ([`Cgroups::app`]) in the order given to [`Preparing::apps`], the order the apps start
/// in. Making a cgroup costs the kernel about 40 µs; made on the runtime's main thread while the
/// apps start, 64 of them took CPU from the starts (docs/development.md, Benchmarks).
///
/// [`Preparing::finish`] hands over what was made. Dropped instead (a start refused before any app
/// started), it waits for the task, logs what the sweep stopped, and removes what it made.
pub(crate) struct Preparing {
    /// The apps (index, name) to make cgroups for, once they are known.
    names: Option<tokio::sync::oneshot::Sender<Vec<(usize, String)>>>,
    /// `None` once [`Preparing::finish`] has handed it to [`PreparedApps`].
    made: Option<mpsc::Receiver<Made>>,
    stop: StopMaking,
}

/// Tells the preparing task to make no further app cgroup. The task holds the lock while it decides
/// and makes one, so once [`StopMaking::now`] returns no folder is made any more: one made after a
/// removal of the runtime's folders would stay.
#[derive(Clone, Default)]
struct StopMaking(Arc<std::sync::Mutex<bool>>);

impl StopMaking {
    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        // A poisoned lock only means a panic while making a folder; the flag is still good.
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    fn now(&self) {
        *self.lock() = true;
    }
}

/// What the preparing task made, in order: the setup, then each app's cgroup.
enum Made {
    Setup(Result<(Cgroups, Vec<String>), String>),
    App(usize, Option<AppCgroup>),
}

impl Preparing {
    /// Starts the task on `runtime`.
    pub(crate) fn start(runtime: &tokio::runtime::Handle) -> Preparing {
        let (names_tx, names_rx) = tokio::sync::oneshot::channel::<Vec<(usize, String)>>();
        let (made_tx, made_rx) = mpsc::channel();
        let stop = StopMaking::default();
        let stopped = stop.clone();
        // Its file-system calls block a worker for a few milliseconds in all, most of them before the
        // first app starts (the rest while the first apps start, ahead of them).
        runtime.spawn(async move {
            let setup = Cgroups::setup();
            let cgroups = setup.as_ref().ok().map(|(cgroups, _)| cgroups.clone());
            if made_tx.send(Made::Setup(setup)).is_err() {
                return;
            }
            let (Some(cgroups), Ok(apps)) = (cgroups, names_rx.await) else {
                return;
            };
            for (idx, name) in apps {
                let made = {
                    let stopped = stopped.lock();
                    if *stopped {
                        return;
                    }
                    cgroups.app(idx, &name)
                };
                if made_tx.send(Made::App(idx, made)).is_err() {
                    return;
                }
            }
        });
        Preparing {
            names: Some(names_tx),
            made: Some(made_rx),
            stop,
        }
    }

    /// The apps to make cgroups for: (index among the apps, name), in the order they start.
    pub(crate) fn apps(&mut self, apps: Vec<(usize, String)>) {
        if let Some(names) = self.names.take() {
            let _ = names.send(apps);
        }
    }

    /// Waits for the setup and hands over what was made: this runtime's cgroups (or why there are
    /// none, the fallback) with the lines of the sweep, and the apps' cgroups as they are made.
    /// Blocks the thread: call it outside the async runtime's workers.
    pub(crate) fn finish(mut self) -> (Result<(Cgroups, Vec<String>), String>, PreparedApps) {
        // Without the names the task stops after the setup: an app's cgroup is then made at its start.
        self.names = None;
        let made = self.made.take();
        let setup = match made.as_ref().map(mpsc::Receiver::recv) {
            Some(Ok(Made::Setup(setup))) => setup,
            // The task is gone (its runtime shut down): the setup here.
            _ => Cgroups::setup(),
        };
        (
            setup,
            PreparedApps {
                made,
                early: Vec::new(),
                stop: self.stop.clone(),
                #[cfg(test)]
                made_at_start: 0,
            },
        )
    }
}

impl Drop for Preparing {
    fn drop(&mut self) {
        // Finished: the task goes on making the apps' cgroups for the PreparedApps.
        let Some(made) = self.made.take() else {
            return;
        };
        // Dropped unused: the task ends after the setup, or at its next app. What it made is
        // removed once it has ended: removed before, a folder it made afterwards would stay.
        self.names = None;
        self.stop.now();
        let mut made_here = None;
        for made in made {
            if let Made::Setup(Ok((cgroups, swept))) = made {
                for line in swept {
                    crate::log::runtime(&line);
                }
                made_here = Some(cgroups);
            }
        }
        if let Some(cgroups) = made_here {
            cgroups.remove_all();
        }
    }
}

/// The apps' cgroups the preparing task makes ([`Preparing::finish`]).
pub(crate) struct PreparedApps {
    made: Option<mpsc::Receiver<Made>>,
    /// Made before they were asked for (the task's order differs from the caller's).
    early: Vec<(usize, Option<AppCgroup>)>,
    stop: StopMaking,
    /// How many apps' cgroups [`PreparedApps::take`] made itself (the task had ended).
    #[cfg(test)]
    made_at_start: usize,
}

impl PreparedApps {
    /// App `idx`'s cgroup: the one the task made (waiting for it while the task is on its way),
    /// else made now in `cgroups` (`None`: the app runs without one, as with [`Cgroups::app`]).
    pub(crate) fn take(&mut self, cgroups: &Cgroups, idx: usize, name: &str) -> Option<AppCgroup> {
        if let Some(at) = self.early.iter().position(|(i, _)| *i == idx) {
            return self.early.swap_remove(at).1;
        }
        while let Some(Ok(made)) = self.made.as_ref().map(mpsc::Receiver::recv) {
            match made {
                Made::App(i, cgroup) if i == idx => return cgroup,
                Made::App(i, cgroup) => self.early.push((i, cgroup)),
                Made::Setup(_) => {}
            }
        }
        // The task is done.
        self.made = None;
        #[cfg(test)]
        {
            self.made_at_start += 1;
        }
        cgroups.app(idx, name)
    }

    /// Stops the task: from now on it makes no folder. Call it before the runtime's folders are
    /// removed; the cgroups it made and nobody took are among them.
    pub(crate) fn stop(&self) {
        self.stop.now();
    }
}

impl Drop for PreparedApps {
    fn drop(&mut self) {
        // Nobody takes the folders any more.
        self.stop.now();
    }
}

/// One app's cgroup.
#[derive(Debug)]
pub(crate) struct AppCgroup {
    dir: PathBuf,
    /// `<dir>/cgroup.procs`, for the child to write itself into before exec.
    procs: CString,
    /// Set when the cgroup was emptied with `cgroup.kill` and could not be made anew: from then on
    /// the app starts through std's spawn + [`AppCgroup::attach`] (see [`AppCgroup::kill`]).
    killed_in_place: AtomicBool,
}

impl Cgroups {
    /// Finds the cgroup2 mount, makes `machine-runtime/<our pid>` where allowed and sweeps what
    /// runtimes that are gone left there. `Err` says why there are no cgroups (the fallback).
    pub(crate) fn setup() -> Result<(Cgroups, Vec<String>), String> {
        let mount = cgroup2_mount().ok_or("no cgroup2 file system is mounted")?;
        let own = own_cgroup().unwrap_or_default();
        let candidates = [
            mount.join(TOP),
            mount.join(own.trim_start_matches('/')).join(TOP),
        ];
        let mut last = String::new();
        let namespace = own_pid_namespace();
        let name = format!("{}@{namespace}", std::process::id());
        for top in candidates {
            let base = top.join(&name);
            // Another runtime may remove an empty `top` between our two mkdirs: try again.
            let made = (0..3)
                .map(|_| std::fs::create_dir_all(&base))
                .find(Result::is_ok)
                .unwrap_or_else(|| std::fs::create_dir_all(&base));
            match made {
                Ok(()) => {
                    // Writable for us: moving a process needs write access to cgroup.procs.
                    if let Err(e) = probe_writable(&base) {
                        let _ = std::fs::remove_dir(&base);
                        last = format!("{}: {e}", base.display());
                        continue;
                    }
                    let cgroups = Cgroups { top, base };
                    let swept = cgroups.sweep(namespace);
                    return Ok((cgroups, swept));
                }
                Err(e) => last = format!("cannot create {}: {e}", base.display()),
            }
        }
        Err(last)
    }

    /// Makes app `idx`'s cgroup; `None` (and the app runs without one) when that fails.
    pub(crate) fn app(&self, idx: usize, name: &str) -> Option<AppCgroup> {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let dir = self.base.join(format!("{idx}-{safe}"));
        std::fs::create_dir_all(&dir).ok()?;
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok()?;
        Some(AppCgroup {
            dir,
            procs,
            killed_in_place: AtomicBool::new(false),
        })
    }

    /// Empties and removes every app's cgroup and this runtime's folder; returns how many
    /// processes were still there.
    pub(crate) fn remove_all(&self) -> usize {
        let killed = empty_and_remove(&self.base);
        let _ = std::fs::remove_dir(&self.top);
        killed
    }

    /// Empties and removes the folders of runtimes of PID namespace `namespace` (ours) that are
    /// gone; one line per folder that held processes.
    fn sweep(&self, namespace: u64) -> Vec<String> {
        let mut lines = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.top) else {
            return lines;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some((pid, ns)) = name.to_str().and_then(folder_owner) else {
                continue;
            };
            if ns.is_some_and(|ns| ns != namespace)
                || pid == std::process::id()
                || is_live_runtime(pid)
            {
                continue;
            }
            let killed = empty_and_remove(&entry.path());
            if killed > 0 {
                lines.push(format!(
                    "stopped {killed} process{} left in {} by an earlier runtime (pid {pid}) that did not stop cleanly",
                    if killed == 1 { "" } else { "es" },
                    entry.path().display()
                ));
            }
        }
        lines
    }
}

impl AppCgroup {
    /// Makes the child move itself into this cgroup before it execs (a failed write leaves it
    /// where it is: the fallback, never a failed start).
    pub(crate) fn attach(&self, cmd: &mut std::process::Command) {
        let path = self.procs.clone();
        let hook = move || {
            // SAFETY: open, write and close are async-signal-safe; `path` is a valid C string
            // allocated before fork.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    let _ = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            Ok(())
        };
        // SAFETY: the hook only makes async-signal-safe system calls (see above).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, hook);
        }
    }

    /// Starts `cmd` inside this cgroup with `clone3(CLONE_INTO_CGROUP)` ([`spawn`]); `channel`:
    /// the child's end of its IPC channel, the fd it gets in the child and the variables naming it.
    /// [`SpawnError::Fallback`]: start it with std and [`AppCgroup::attach`] instead.
    pub(crate) fn spawn(
        &self,
        cmd: &Exec<'_>,
        channel: Option<ChildChannel<'_>>,
    ) -> Result<Forked, SpawnError> {
        if self.killed_in_place.load(Ordering::Relaxed) {
            return Err(SpawnError::Fallback);
        }
        spawn::spawn(cmd, Some(&self.dir), channel)
    }

    /// Kills every process still in the cgroup (what the app left outside its process group);
    /// returns how many there were.
    ///
    /// A cgroup that was killed is then made anew (removed and created again, empty): on kernels seen
    /// here (6.18), a child that `clone3(CLONE_INTO_CGROUP)` starts inside a cgroup that `cgroup.kill`
    /// was ever written to is SIGKILLed at birth, so every later start of the app would die at once
    /// (a fresh cgroup, or a child moving itself in through `cgroup.procs`, is not affected). Where the
    /// cgroup cannot be made anew, the app's later starts move themselves in instead.
    pub(crate) fn kill(&self) -> usize {
        let killed = kill_cgroup(&self.dir);
        if killed > 0
            && (std::fs::remove_dir(&self.dir).is_err() || std::fs::create_dir(&self.dir).is_err())
        {
            self.killed_in_place.store(true, Ordering::Relaxed);
        }
        killed
    }
}

/// The mount point of the cgroup2 file system (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// hybrid host), from `/proc/self/mountinfo`.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // `... <mount point> <options> [optional fields] - <fstype> <source> <super options>`
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// This process's cgroup2 path (`0::/path` in `/proc/self/cgroup`).
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .map(drop)
}

/// The inode number of this process's PID namespace (`/proc/self/ns/pid`, namespaces(7)); 0 when it
/// cannot be read (a kernel without it: every runtime then shares namespace 0, as before).
fn own_pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

/// The runtime pid and PID namespace a runtime's folder is named by (`<pid>@<namespace>`; a pid alone,
/// from an older runtime: namespace unknown); `None` for any other name.
fn folder_owner(name: &str) -> Option<(u32, Option<u64>)> {
    match name.split_once('@') {
        Some((pid, ns)) => Some((pid.parse().ok()?, Some(ns.parse().ok()?))),
        None => Some((name.parse().ok()?, None)),
    }
}

/// The name `up` gives its main thread ([`name_this_runtime`]), whatever its binary is called: what
/// tells a runtime's pid from another process's in [`Cgroups::sweep`].
const RUNTIME_NAME: &[u8; 16] = b"machine-runtime\0";

/// Names the calling thread (the runtime's main thread, whose name is the process's
/// `/proc/<pid>/comm`) `machine-runtime`, so that the sweep of another runtime on this host sees this one
/// as live even when it was started through a link or a copy with another name. A failure leaves the
/// name as it was.
pub(crate) fn name_this_runtime() {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes, which RUNTIME_NAME is.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            RUNTIME_NAME.as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        )
    };
}

/// Whether `pid` is a runtime that is still running: named as [`name_this_runtime`] names one, and
/// not a zombie (a runtime killed outright stays one until its parent collects it, and what its apps
/// left is to be swept meanwhile).
fn is_live_runtime(pid: u32) -> bool {
    let name = &RUNTIME_NAME[..RUNTIME_NAME.len() - 1];
    std::fs::read(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.strip_suffix(b"\n").unwrap_or(&comm) == name)
        && crate::procstat::state(pid).is_some_and(|state| state != 'Z')
}

fn pids_in(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in the cgroup `dir` (not its children cgroups): `cgroup.kill`, or SIGKILL
/// to each pid where the kernel has no `cgroup.kill`. Returns how many were there.
fn kill_cgroup(dir: &Path) -> usize {
    let pids = pids_in(dir);
    if pids.is_empty() {
        return 0;
    }
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for pid in &pids {
            // SAFETY: kill(2) on a pid listed in our own cgroup.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
    }
    let deadline = Instant::now() + EMPTY_WAIT;
    while !pids_in(dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    pids.len()
}

/// Kills the processes of `dir` and of every cgroup below it, then removes them (deepest first).
fn empty_and_remove(dir: &Path) -> usize {
    let mut killed = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                killed += empty_and_remove(&entry.path());
            }
        }
    }
    killed += kill_cgroup(dir);
    let _ = std::fs::remove_dir(dir);
    killed
}

#[cfg(test)]
mod tests {
    use super::folder_owner;
    use std::time::{Duration, Instant};

    /// Opt-out for developers who cannot create a cgroup (as `MACHINE_SKIP_CGROUP_TEST` in
    /// tests/it); CI runs these tests as root.
    const SKIP_CGROUP_VAR: &str = "MACHINE_SKIP_CGROUP_TEST";

    /// For a test that needs a cgroup and cannot have one (`why`): with the opt-out set, says on
    /// stderr that it skips (the caller then returns); else it panics saying why.
    pub(super) fn skip_without_cgroups(why: &str) {
        if std::env::var_os(SKIP_CGROUP_VAR).is_some_and(|v| v == "1") {
            eprintln!("SKIPPED ON PURPOSE: {SKIP_CGROUP_VAR}=1 and {why}");
            return;
        }
        panic!(
            "this test needs a cgroup (root with cgroup2, or a delegated subtree), or {SKIP_CGROUP_VAR}=1 to skip it on purpose: {why}"
        );
    }

    /// The tests that set up this process's cgroups, one at a time: they share its folder (one per
    /// runtime pid).
    static ONE_RUNTIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Once finished, the preparation's task goes on making the apps' cgroups: every app takes the
    /// one the task made, none is made at its start. Stopped with apps not yet taken, it makes no
    /// folder after the runtime's folders are removed.
    #[test]
    fn a_finished_preparation_makes_every_apps_cgroup_ahead_and_none_after_a_stop() {
        let _one = ONE_RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
        if super::cgroup2_mount().is_none() {
            skip_without_cgroups("no cgroup2 mount");
            return;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let apps = 200;
        let mut preparing = super::Preparing::start(runtime.handle());
        preparing.apps((0..apps).map(|i| (i, format!("app-{i}"))).collect());
        let (setup, mut prepared) = preparing.finish();
        let cgroups = match setup {
            Ok((cgroups, _)) => cgroups,
            Err(why) => {
                skip_without_cgroups(&why);
                return;
            }
        };
        for i in 0..apps / 2 {
            let cgroup = prepared.take(&cgroups, i, &format!("app-{i}"));
            assert!(
                cgroup.is_some_and(|c| c.dir.is_dir()),
                "app {i} has no cgroup"
            );
        }
        assert_eq!(prepared.made_at_start, 0, "cgroups made at the start");
        prepared.stop();
        cgroups.remove_all();
        // The task has ended when its channel closes.
        while let Some(Ok(_)) = prepared.made.as_ref().map(std::sync::mpsc::Receiver::recv) {}
        assert!(
            !cgroups.base.exists(),
            "{} was made again after the removal",
            cgroups.base.display()
        );
    }

    /// A preparation dropped unused (a start refused by its checks) has swept the folder of a
    /// runtime that is gone, and leaves no folder of its own, even with its apps' cgroups under way.
    #[test]
    fn a_preparation_dropped_unused_sweeps_and_removes_what_it_made() {
        let _one = ONE_RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mount) = super::cgroup2_mount() else {
            skip_without_cgroups("no cgroup2 mount");
            return;
        };
        // A pid that is gone: a child already collected.
        #[allow(clippy::disallowed_methods)] // A stand-in process, not one of the runtime's apps.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let namespace = super::own_pid_namespace();
        let left = mount
            .join(super::TOP)
            .join(format!("{gone}@{namespace}"))
            .join("0-app");
        if let Err(why) = std::fs::create_dir_all(&left) {
            skip_without_cgroups(&format!("cannot create {}: {why}", left.display()));
            return;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let mut preparing = super::Preparing::start(runtime.handle());
        preparing.apps((0..100).map(|i| (i, format!("app-{i}"))).collect());
        drop(preparing);
        assert!(
            !left.parent().unwrap().exists(),
            "{} was not swept",
            left.display()
        );
        let own = mount
            .join(super::TOP)
            .join(format!("{}@{namespace}", std::process::id()));
        assert!(!own.exists(), "{} was left", own.display());
    }

    /// A process named as a runtime is live until it ends, and a zombie (killed, not yet collected)
    /// is not.
    #[test]
    fn a_runtime_is_live_while_it_runs_and_not_as_a_zombie() {
        let dir = tempfile::tempdir().unwrap();
        // Its comm is the name it was exec'd by.
        let named = dir.path().join("machine-runtime");
        std::os::unix::fs::symlink("/bin/sleep", &named).unwrap();
        #[allow(clippy::disallowed_methods)] // A stand-in process, not one of the runtime's apps.
        let mut child = std::process::Command::new(&named)
            .arg("600")
            .spawn()
            .unwrap();
        let pid = child.id();
        let comm = || std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let until = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !done() {
                assert!(Instant::now() < deadline, "no {what} after 10 s");
                std::thread::yield_now();
            }
        };
        until("exec", &|| comm().trim_end() == "machine-runtime");
        assert!(super::is_live_runtime(pid));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        until("zombie", &|| crate::procstat::state(pid) == Some('Z'));
        assert!(!super::is_live_runtime(pid));
        child.wait().unwrap();
        assert!(!super::is_live_runtime(pid));
    }

    #[test]
    fn a_folder_names_its_runtime_and_namespace() {
        assert_eq!(folder_owner("1@4026531836"), Some((1, Some(4026531836))));
        assert_eq!(folder_owner("4242"), Some((4242, None)));
        assert_eq!(folder_owner("1@x"), None);
        assert_eq!(folder_owner("cgroup.procs"), None);
    }
}
