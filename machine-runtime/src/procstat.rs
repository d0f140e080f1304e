//! CPU and memory of each app's process group, read from Linux's `/proc` for PM2's `monit` figures
//! (`cpu` in percent of one core, `memory` in bytes) in `/pm2/list` and `machine-runtime ps`.
//!
//! An app is its whole process group (the supervisor makes each child a group leader), so a Python
//! service's workers and a shell wrapper's children count with it. Reads `/proc/<pid>/stat`
//! (`proc(5)`: fields 5 `pgrp`, 14 `utime`, 15 `stime`, 24 `rss`); a process that exits mid-read is
//! skipped. `cpu` is over the time since the previous reading of the same group, as `pidusage` (PM2's
//! source) computes it; the first reading is the average since the group's leader started.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// What one process group uses now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// User and system CPU time of the group's live processes, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory of the group's live processes (RSS), in bytes.
    pub memory: u64,
    /// Seconds since the group's leader started (0 when unknown).
    pub leader_age_seconds: f64,
}

/// The previous reading per group leader pid: when, and its CPU seconds.
static LAST: Mutex<Option<HashMap<u32, (Instant, f64)>>> = Mutex::new(None);

/// The usage of each group in `leaders` (leader pids) that has a live process; one pass over `/proc`.
pub fn groups(leaders: &[u32]) -> HashMap<u32, Usage> {
    let mut out: HashMap<u32, Usage> = HashMap::new();
    if leaders.is_empty() {
        return out;
    }
    let ticks = clock_ticks();
    let page = page_size();
    let uptime = system_uptime();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(stat) = Stat::parse(&text) else {
            continue;
        };
        if !leaders.contains(&stat.pgrp) {
            continue;
        }
        let usage = out.entry(stat.pgrp).or_insert(Usage {
            cpu_seconds: 0.0,
            memory: 0,
            leader_age_seconds: 0.0,
        });
        usage.cpu_seconds += (stat.utime + stat.stime) as f64 / ticks;
        usage.memory += stat.rss * page;
        if pid == stat.pgrp
            && let Some(uptime) = uptime
        {
            usage.leader_age_seconds = (uptime - stat.starttime as f64 / ticks).max(0.0);
        }
    }
    out
}

/// PM2's `monit` of the app whose group leader is `pid`: `{cpu, memory}`, `cpu` in percent of one
/// core rounded to a tenth, `memory` in bytes; both 0 when the app runs no process (as PM2 shows a
/// stopped app). Updates the reading `cpu` is measured from.
pub fn monit(pid: Option<u32>, usages: &HashMap<u32, Usage>) -> serde_json::Value {
    let Some(usage) = pid.and_then(|p| usages.get(&p).map(|u| (p, *u))) else {
        return serde_json::json!({"cpu": 0, "memory": 0});
    };
    let (pid, usage) = usage;
    let now = Instant::now();
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let last = last.get_or_insert_with(HashMap::new);
    let percent = match last.insert(pid, (now, usage.cpu_seconds)) {
        Some((at, before)) if now.duration_since(at).as_secs_f64() > 0.0 => {
            (usage.cpu_seconds - before).max(0.0) / now.duration_since(at).as_secs_f64()
        }
        _ if usage.leader_age_seconds > 0.0 => usage.cpu_seconds / usage.leader_age_seconds,
        _ => 0.0,
    } * 100.0;
    // Leaders that are gone: their readings would only grow the map.
    last.retain(|p, _| usages.contains_key(p));
    serde_json::json!({"cpu": (percent * 10.0).round() / 10.0, "memory": usage.memory})
}

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    pgrp: u32,
    utime: u64,
    stime: u64,
    starttime: u64,
    rss: u64,
}

impl Stat {
    /// Parses a stat line; the command name (field 2) may hold spaces and parentheses, so the fields
    /// are counted from its last `)`.
    fn parse(text: &str) -> Option<Stat> {
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] is field 3 (state).
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            pgrp: u32::try_from(field(5)?).ok()?,
            utime: field(14)?,
            stime: field(15)?,
            starttime: field(22)?,
            rss: field(24)?,
        })
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).ok().filter(|p| *p > 0).unwrap_or(4096)
}

/// Seconds since boot (`/proc/uptime`), the clock of `starttime`.
fn system_uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The state letter of process `pid` (`/proc/<pid>/stat` field 3, proc(5): `R`, `S`, `Z` for a
/// zombie, ...); `None` when it cannot be read (the process is gone).
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The parent of process `pid` (`/proc/<pid>/stat` field 4, proc(5)); `None` when it cannot be read
/// (the process is gone).
pub fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The direct children of process `pid`, from every one of its threads (`/proc/<pid>/task/<tid>/children`,
/// proc(5): a child belongs to the thread that started it); empty when `pid` is gone. For the tests and
/// benchmarks, which look at the processes a runtime started.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_of_this_process_is_the_one_the_kernel_names() {
        assert_eq!(
            parent(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
        assert_eq!(parent(u32::MAX), None);
    }

    #[test]
    fn parses_a_stat_line_whose_name_holds_spaces_and_parentheses() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 12345 1000000 321 18446744073709551615";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                pgrp: 4242,
                utime: 250,
                stime: 50,
                starttime: 12345,
                rss: 321
            })
        );
        assert_eq!(Stat::parse("4242 (x) S 1"), None);
    }

    #[test]
    fn reads_this_process_group() {
        // SAFETY: getpgrp has no preconditions.
        let pgrp = unsafe { libc::getpgrp() } as u32;
        let usage = groups(&[pgrp]);
        let ours = usage.get(&pgrp).expect("this test's own group");
        assert!(ours.memory > 0, "{ours:?}");
        let monit = monit(Some(pgrp), &usage);
        assert!(monit["memory"].as_u64().unwrap() > 0, "{monit}");
        assert_eq!(
            super::monit(None, &usage),
            serde_json::json!({"cpu": 0, "memory": 0})
        );
    }
}
