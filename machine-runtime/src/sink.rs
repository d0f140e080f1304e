//! The one writer of the runtime's stdout and stderr: every log line and every line of child
//! output goes through [`out`] / [`err`], which never block and never panic.
//!
//! Each stream has a bounded queue ([`BOUND`] bytes) drained by a dedicated writer thread; only
//! that thread ever waits on the file descriptor. When nobody reads our output (`up ... | sleep 30`,
//! a full pipe, a stopped terminal), supervision, the health endpoint, the broker and signal
//! handling carry on: past the bound, whole lines are dropped and counted, and the next line that
//! fits is preceded by `machine-runtime: N lines dropped (stdout not read fast enough)`. A write that
//! fails for good (a closed pipe: `EPIPE`, `EBADF`) makes the stream discard everything from then on,
//! silently: there is nobody left to tell.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Bytes queued per stream before lines are dropped (1 MiB).
pub(crate) const BOUND: usize = 1 << 20;
/// The most bytes the writer joins into one write (whole chunks; a longer chunk goes alone).
const BATCH: usize = 64 << 10;

/// One output stream: its queue and its writer thread.
struct Lane {
    name: &'static str,
    fd: i32,
    state: Mutex<Queue>,
    /// Signalled when there is something to write.
    work: Condvar,
    /// Signalled when the queue becomes empty.
    idle: Condvar,
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Vec<u8>>,
    bytes: usize,
    /// Lines dropped since the last notice went into the queue.
    dropped: u64,
    /// Lines dropped over the process's life.
    dropped_total: u64,
    /// The writer holds a chunk it is writing.
    busy: bool,
    /// The writer thread runs.
    started: bool,
    /// A write failed for good; everything is discarded.
    broken: bool,
}

fn lane(fd: i32) -> &'static Lane {
    static OUT: OnceLock<Lane> = OnceLock::new();
    static ERR: OnceLock<Lane> = OnceLock::new();
    let (cell, name) = if fd == 1 {
        (&OUT, "stdout")
    } else {
        (&ERR, "stderr")
    };
    cell.get_or_init(|| Lane {
        name,
        fd,
        state: Mutex::new(Queue::default()),
        work: Condvar::new(),
        idle: Condvar::new(),
    })
}

/// Queues whole lines (`bytes` should end with `\n`) for stdout; never blocks.
pub fn out(bytes: &[u8]) {
    lane(1).push(bytes);
}

/// Queues whole lines for stderr; never blocks.
pub fn err(bytes: &[u8]) {
    lane(2).push(bytes);
}

/// Queues one line for stderr, adding the newline.
pub fn err_line(line: &str) {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    err(&bytes);
}

/// Waits until both streams are written out, at most `limit` in all; false if something was
/// left (a reader that does not read). Call before the process exits.
pub fn flush(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    lane(1).wait_idle(deadline) & lane(2).wait_idle(deadline)
}

/// Lines dropped on (stdout, stderr) so far because the queue was full.
pub fn dropped() -> (u64, u64) {
    (lane(1).lock().dropped_total, lane(2).lock().dropped_total)
}

impl Lane {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Nothing under this lock can panic halfway through an update; ignore poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&'static self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut q = self.lock();
        if q.broken {
            return;
        }
        if q.bytes + bytes.len() > BOUND {
            let lines = bytes.iter().filter(|&&b| b == b'\n').count().max(1) as u64;
            q.dropped += lines;
            q.dropped_total += lines;
            return;
        }
        self.queue_notice(&mut q);
        q.bytes += bytes.len();
        q.chunks.push_back(bytes.to_vec());
        if !q.started {
            q.started = true;
            let spawned = std::thread::Builder::new()
                .name(format!("{}-writer", self.name))
                .spawn(move || self.write_loop());
            if spawned.is_err() {
                // No thread, no output; never block the caller instead.
                q.started = false;
                q.chunks.clear();
                q.bytes = 0;
                return;
            }
        }
        // A busy writer looks at the queue again before it waits: no wake-up needed.
        let wake = !q.busy;
        drop(q);
        if wake {
            self.work.notify_one();
        }
    }

    /// Queues `N lines dropped` when lines were dropped since the last notice.
    fn queue_notice(&self, q: &mut Queue) {
        if q.dropped == 0 {
            return;
        }
        let notice = format!(
            "machine-runtime: {} line{} dropped ({} not read fast enough)\n",
            q.dropped,
            if q.dropped == 1 { "" } else { "s" },
            self.name
        )
        .into_bytes();
        q.dropped = 0;
        q.bytes += notice.len();
        q.chunks.push_back(notice);
    }

    fn write_loop(&self) {
        // SAFETY: fd 1/2 stay open for the life of the process; ManuallyDrop never closes them.
        let mut file = ManuallyDrop::new(unsafe { File::from_raw_fd(self.fd) });
        loop {
            let chunk = {
                let mut q = self.lock();
                loop {
                    if let Some(mut chunk) = q.chunks.pop_front() {
                        // What queued up meanwhile goes out in the same write (one system call
                        // for a burst, e.g. 64 apps' "started" lines).
                        while q
                            .chunks
                            .front()
                            .is_some_and(|next| chunk.len() + next.len() <= BATCH)
                        {
                            if let Some(next) = q.chunks.pop_front() {
                                chunk.extend_from_slice(&next);
                            }
                        }
                        q.busy = true;
                        break chunk;
                    }
                    q.busy = false;
                    self.idle.notify_all();
                    q = self.work.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            let result = file.write_all(&chunk);
            let mut q = self.lock();
            q.bytes -= chunk.len();
            if result.is_err() {
                // A closed pipe or descriptor: nobody can read us any more.
                q.broken = true;
                q.chunks.clear();
                q.bytes = 0;
            }
        }
    }

    fn wait_idle(&self, deadline: Instant) -> bool {
        let mut q = self.lock();
        if !q.broken && q.started {
            // The count of a last burst of drops goes out even past the bound: it is one line.
            self.queue_notice(&mut q);
            self.work.notify_one();
        }
        while q.started && (q.busy || !q.chunks.is_empty()) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            q = self
                .idle
                .wait_timeout(q, deadline - now)
                .map(|(q, _)| q)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_returns_once_written() {
        err(b"machine-runtime: sink unit test line\n");
        assert!(flush(Duration::from_secs(5)));
    }
}
