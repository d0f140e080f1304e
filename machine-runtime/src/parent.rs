//! The one thread every child of the runtime is created from, so that all of them die at the same
//! instant when the runtime dies.
//!
//! Each child asks for `SIGKILL` when its parent dies (`PR_SET_PDEATHSIG`, see
//! [`crate::command::hygiene_in_child`]). The kernel sends that signal when the *thread* that created
//! the child ends, not when the process does (prctl(2)). Killed outright (`docker kill`, `kill -9`, the
//! OOM killer), the runtime's threads end one after the other, and under load milliseconds apart: a
//! simulation service created from one thread died while the worker created from another still ran,
//! saw the service's socket close, and failed its job for a retry — a job the machine's comeback would
//! have handed back untouched (seen once in the Swarm test, reproduced with `kill -9` on a host). With
//! one parent thread, every child gets its `SIGKILL` in the same pass of the kernel's loop over that
//! thread's children (under the task list lock), before any of them can run again.
//!
//! [`run`] hands a closure to that thread and blocks until it has run there; spawns are short (the
//! child leaves the parent's memory at its `exec`, see [`crate::cgroup::spawn`]), and they are
//! serialised either way by the kernel's `vfork`. The thread is started at the first call and never
//! ends: a job that panics is caught and its panic resumed in the caller. Where the thread cannot be
//! started (no more threads), [`run`] runs the closure on the calling thread, as before this module.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::OnceLock;
use std::sync::mpsc::{Sender, channel, sync_channel};
use std::thread::ThreadId;

/// A closure for the parent thread, its borrows erased (see the SAFETY note in [`run`]).
type Job = Box<dyn FnOnce() + Send + 'static>;

/// The parent thread's queue and id, or `None` when it could not be started.
struct Parent {
    queue: Sender<Job>,
    id: ThreadId,
}

static PARENT: OnceLock<Option<Parent>> = OnceLock::new();

/// The thread's name, as `ps -T` and `/proc/<pid>/task/*/comm` show it.
const THREAD_NAME: &str = "child-parent";

fn parent() -> Option<&'static Parent> {
    PARENT
        .get_or_init(|| {
            let (queue, jobs) = channel::<Job>();
            let thread = std::thread::Builder::new()
                .name(THREAD_NAME.into())
                // Spawns run on their own child stack (cgroup::spawn) or in std's fork; this thread's
                // own frames are small.
                .stack_size(256 * 1024)
                .spawn(move || {
                    // Ends only when every sender is gone, which the static never is.
                    while let Ok(job) = jobs.recv() {
                        job();
                    }
                })
                .ok()?;
            Some(Parent {
                queue,
                id: thread.thread().id(),
            })
        })
        .as_ref()
}

/// Runs `f` on the parent thread and returns what it returned (a panic in `f` is resumed here).
/// Blocks the calling thread meanwhile. On the parent thread itself, or where that thread could not
/// be started, `f` runs on the calling thread.
pub(crate) fn run<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let Some(parent) = parent() else {
        return f();
    };
    if std::thread::current().id() == parent.id {
        return f();
    }
    let (done, result) = sync_channel::<std::thread::Result<R>>(1);
    let job = move || {
        let _ = done.send(catch_unwind(AssertUnwindSafe(f)));
    };
    let job: Box<dyn FnOnce() + Send + '_> = Box::new(job);
    // SAFETY: only the lifetime is erased (same layout). The job borrows from this frame, and this
    // function does not return before the job is gone: `result.recv()` below returns once the job has
    // sent its result (it has finished with `f`) or once its sender was dropped, which happens only
    // when the job itself was dropped (run or not). A job that cannot be queued comes back in the
    // error and runs here.
    let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
    if let Err(returned) = parent.queue.send(job) {
        (returned.0)();
    }
    match result.recv() {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => resume_unwind(panic),
        // The job was dropped unrun: only if the parent thread were gone with jobs queued, which its
        // loop never allows.
        Err(_) => panic!("the {THREAD_NAME} thread dropped a job without running it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid() -> libc::pid_t {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    }

    #[test]
    fn every_call_runs_on_one_thread_that_is_not_the_callers() {
        let caller = tid();
        let tids: Vec<libc::pid_t> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..8).map(|_| run(tid)).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(tids.len(), 32);
        assert!(tids.iter().all(|t| *t == tids[0]), "{tids:?}");
        assert_ne!(tids[0], caller);
        let name = std::fs::read_to_string(format!("/proc/self/task/{}/comm", tids[0])).unwrap();
        assert_eq!(name.trim(), THREAD_NAME);
    }

    #[test]
    fn borrows_and_results_cross_and_a_panic_comes_back_to_the_caller() {
        let text = String::from("borrowed");
        let mut seen = Vec::new();
        let len = run(|| {
            seen.push(text.as_str());
            text.len()
        });
        assert_eq!((len, seen), (8, vec!["borrowed"]));
        let panicked = catch_unwind(|| run(|| panic!("in the job")));
        let message = panicked.unwrap_err();
        assert_eq!(message.downcast_ref::<&str>(), Some(&"in the job"));
        // The thread survived the panic.
        assert_eq!(run(|| 2 + 2), 4);
    }

    #[test]
    fn a_child_of_the_parent_thread_outlives_the_thread_that_asked_for_it() {
        // A child with PR_SET_PDEATHSIG made from a thread that then ends gets SIGKILL at that
        // thread's end; made through run(), it does not.
        let (asker, pid) = std::thread::spawn(|| {
            let pid = run(|| {
                let mut cmd = crate::command::new_child("sleep");
                cmd.arg("30");
                cmd.spawn().unwrap().id()
            });
            (tid(), pid)
        })
        .join()
        .unwrap();
        // join() returns before the kernel has finished the thread (and sent any parent-death
        // signal); the thread's entry in /proc goes only after that.
        while std::fs::metadata(format!("/proc/self/task/{asker}")).is_ok() {
            std::thread::yield_now();
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        // SAFETY: kill and waitpid on our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
            libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
        }
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap_or_else(|| panic!("no {name} in {status}"))
        };
        let sigkill = 1u64 << (libc::SIGKILL - 1);
        assert!(
            !status.is_empty() && !status.contains("State:\tZ"),
            "{status}"
        );
        assert_eq!(field("ShdPnd:") & sigkill, 0, "{status}");
        assert_eq!(field("SigPnd:") & sigkill, 0, "{status}");
    }
}
