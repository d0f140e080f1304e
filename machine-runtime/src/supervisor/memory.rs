//! PM2's `max_memory_restart`: the resident memory (RSS) of an app's whole process tree, sampled
//! at an interval; over the limit, the app is restarted gracefully (its stop signal, `kill_timeout`,
//! SIGKILL; a busy worker first gets its `kill_timeout` to finish its job), counted as one restart.
//!
//! PM2 7 samples only the app's main process, every `PM2_WORKER_INTERVAL` ms (default 30000;
//! `lib/Worker.js`). Here the tree counts (a Python service's worker processes use the memory, not
//! its launcher): every process in the app's process group, and every descendant of its main
//! process by parent link (one that left the group with `setsid` included). The interval is
//! `PM2_WORKER_INTERVAL` ms from the app's environment when set, else [`DEFAULT_INTERVAL`].
//! RSS is `/proc/<pid>/stat` field 24 (pages) × the page size.

use std::collections::BTreeMap;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::Duration;

/// How often an app with `max_memory_restart` is sampled when `PM2_WORKER_INTERVAL` is not set:
/// often enough that a leak is caught near the limit, and cheap (one pass over `/proc`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest interval `PM2_WORKER_INTERVAL` may set.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The sampling interval for an app whose environment is `env`: `PM2_WORKER_INTERVAL` (ms, at
/// least 100) when it is a number, else [`DEFAULT_INTERVAL`].
pub(crate) fn interval(env: &BTreeMap<OsString, OsString>) -> Duration {
    env.get(OsStr::new("PM2_WORKER_INTERVAL"))
        .and_then(|v| v.to_str()?.trim().parse::<u64>().ok())
        .map_or(DEFAULT_INTERVAL, |ms| {
            Duration::from_millis(ms).max(MIN_INTERVAL)
        })
}

/// One process as `/proc/<pid>/stat` describes it.
struct Proc {
    ppid: u32,
    pgrp: u32,
    rss_pages: u64,
}

fn read_stat(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields restart after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, pgrp 5, rss 24.
    Some(Proc {
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        rss_pages: fields.get(21)?.parse().ok()?,
    })
}

/// The RSS in bytes of the process tree of `root` (the leader of its own process group): the
/// members of group `root` and every descendant of `root`. 0 when none is left.
pub(crate) fn tree_rss(root: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let procs: HashMap<u32, Proc> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .collect();
    let mut tree: HashSet<u32> = procs
        .iter()
        .filter(|(pid, p)| **pid == root || p.pgrp == root)
        .map(|(pid, _)| *pid)
        .collect();
    loop {
        let before = tree.len();
        let children: Vec<u32> = procs
            .iter()
            .filter(|(pid, p)| !tree.contains(pid) && tree.contains(&p.ppid))
            .map(|(pid, _)| *pid)
            .collect();
        tree.extend(children);
        if tree.len() == before {
            break;
        }
    }
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    tree.iter()
        .filter_map(|pid| procs.get(pid))
        .map(|p| p.rss_pages * page)
        .sum()
}

/// `150.0 MiB`: powers of 1024, as PM2's units (`"150M"` is 150 MiB) and as `machine-runtime ps`
/// shows memory.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    format!("{:.1} MiB", bytes as f64 / MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // a plain child of the test, not an app
    fn counts_the_children_of_a_process_tree() {
        // A shell (its own group) whose child holds 64 MB; the tree counts both.
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys,time\nb=bytearray(64<<20)\nfor i in range(0,len(b),4096): b[i]=1\nprint('ok',flush=True)\ntime.sleep(60)",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        // Our own tree includes the child (its parent is us).
        let ours = tree_rss(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(ours > 64 << 20, "{}", human_bytes(ours));
    }

    #[test]
    fn interval_reads_pm2_worker_interval() {
        let env = |v: &str| BTreeMap::from([("PM2_WORKER_INTERVAL".into(), v.into())]);
        assert_eq!(interval(&BTreeMap::new()), DEFAULT_INTERVAL);
        assert_eq!(interval(&env("500")), Duration::from_millis(500));
        assert_eq!(interval(&env("1")), MIN_INTERVAL);
        assert_eq!(interval(&env("soon")), DEFAULT_INTERVAL);
    }
}
