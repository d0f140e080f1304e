//! Hands the job of a killed worker back to the queue, the way the queue API's own orphan clean-up
//! does (contract §6; `cleanupOrphanedJobs` in the API's `lightweight-api-server.ts`).
//!
//! The machine kills (SIGKILL) a worker still busy at the end of its stop budget: the real worker
//! would fail its job permanently on SIGTERM, and a killed one cannot touch it, so the job would stay
//! `in_progress` until someone cleaned it up. [`hand_back`] runs after the worker's process group is
//! gone, so nothing races it but another process of the queue (the API, a second clean-up).
//!
//! Which jobs: the worker's `worker:<id>` hash's `current_job_id`, every field of the hash
//! `jobs:active:<id>` (where `findMatchingJob` records a claim: field job id, value the job as JSON;
//! a set is read too, for older brokers), and the job id the caller already knew. For each, one Lua
//! script (atomic) does:
//!
//! - when `job:<id>` is still assigned to that worker (`worker_id`) and still running (`status`
//!   `assigned`, `accepted`, `in_progress`, `active` or `processing`): `HSET job:<id> status pending`
//!   with `worker_id`, `assigned_at`, `started_at` emptied (every other field kept, `retry_count`
//!   included: the job did not fail), `ZADD jobs:pending <score> <id>`, and the event below;
//! - in every case: the job leaves `jobs:active:<worker>`, and a worker hash whose `current_job_id`
//!   names it gets `status idle` and an empty `current_job_id` (what the API's `resetWorker` writes);
//!   a job that is missing, finished (`completed`, `failed`, `cancelled`), already `pending` or
//!   another worker's is otherwise left alone, and the outcome says so.
//!
//! The score is the one the API gave the job at submission, so it goes back to its place in the
//! queue: `priority × 10^15 − floor(time_ms / 1000)`, where `priority` is `workflow_priority` when
//! set (non-zero), else `priority`, else 50, and `time_ms` is `workflow_datetime` when set, else
//! `created_at` (the API writes ISO 8601; epoch milliseconds are read too), else now.
//! (`cleanupOrphanedJobs` itself reads `created_at` with `parseInt`, which turns the ISO text it
//! stores into the year; the submission's formula is the one meant.)
//!
//! The event: `PUBLISH machine:<MACHINE_ID>:worker:<WORKER_ID>` (the channel the worker's own
//! events use, in their shape) `{"event_type": "job_handed_back", "worker_id", "machine_id",
//! "timestamp" (epoch ms), "data": {"job_id", "previous_status", "reason"}}`. The queue has no event
//! for this (the API publishes none after its orphan clean-up; its keyspace notifications on
//! `job:<id>` tell its clients about the new `pending` status), so the name is ours.

use std::collections::HashMap;

use redis::Script;
use serde_json::json;

use super::link::Conn;
use super::time::{now_ms, parse_epoch_ms};

/// The priority the API gives a job that names none.
const DEFAULT_PRIORITY: f64 = 50.0;

/// The event published for each job handed back.
pub const EVENT_TYPE: &str = "job_handed_back";

/// `status` values of a job a worker holds and has not finished.
const RUNNING: [&str; 5] = [
    "assigned",
    "accepted",
    "in_progress",
    "active",
    "processing",
];

/// KEYS: `job:<id>`, `jobs:active:<worker>`, `worker:<worker>`, `jobs:pending`.
/// ARGV: job id, worker id, score, event channel, event JSON, running statuses (comma-separated).
/// Returns `{outcome, status, owner}`; outcome is `handed_back`, `missing`, `other_worker` or `finished`.
const HAND_BACK: &str = r"
local job_id, worker_id = ARGV[1], ARGV[2]
local status = redis.call('HGET', KEYS[1], 'status')
local owner = redis.call('HGET', KEYS[1], 'worker_id')
local running = false
if status then
  for s in string.gmatch(ARGV[6], '[^,]+') do
    if s == status then running = true end
  end
end
local outcome
if not status and redis.call('EXISTS', KEYS[1]) == 0 then
  outcome = 'missing'
elseif owner ~= worker_id then
  outcome = 'other_worker'
elseif not running then
  outcome = 'finished'
else
  redis.call('HSET', KEYS[1], 'status', 'pending', 'worker_id', '', 'assigned_at', '', 'started_at', '')
  redis.call('ZADD', KEYS[4], ARGV[3], job_id)
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  outcome = 'handed_back'
end
local kind = redis.call('TYPE', KEYS[2]).ok
if kind == 'hash' then
  redis.call('HDEL', KEYS[2], job_id)
elseif kind == 'set' then
  redis.call('SREM', KEYS[2], job_id)
end
if redis.call('HGET', KEYS[3], 'current_job_id') == job_id then
  redis.call('HSET', KEYS[3], 'status', 'idle', 'current_job_id', '')
end
return {outcome, status or '', owner or ''}
";

/// What became of one job of a killed worker.
#[derive(Debug, Clone, PartialEq)]
pub enum HandBack {
    /// Back in `jobs:pending` with `status` pending.
    HandedBack {
        /// The job.
        job: String,
        /// Its status before (`in_progress`, `assigned`, ...).
        previous_status: String,
        /// Its score in `jobs:pending`.
        score: f64,
    },
    /// `job:<id>` does not exist (any more).
    Missing {
        /// The job.
        job: String,
    },
    /// Another worker holds it now.
    OtherWorker {
        /// The job.
        job: String,
        /// Its `worker_id` (empty: none).
        owner: String,
        /// Its `status`.
        status: String,
    },
    /// Not running any more: the worker finished it in time (`completed`, `failed`), it was
    /// cancelled, or it is `pending` already.
    Finished {
        /// The job.
        job: String,
        /// Its `status`.
        status: String,
    },
}

impl std::fmt::Display for HandBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandBack::HandedBack {
                job,
                previous_status,
                score,
            } => write!(
                f,
                "handed job {job} back to the queue: it was {previous_status}, now pending in jobs:pending (score {score})"
            ),
            HandBack::Missing { job } => {
                write!(f, "job {job} was not handed back: job:{job} does not exist")
            }
            HandBack::OtherWorker { job, owner, status } => write!(
                f,
                "job {job} was not handed back: it is {status} with worker \"{owner}\" now"
            ),
            HandBack::Finished { job, status } => write!(
                f,
                "job {job} was not handed back: it is {status} already, nothing to do"
            ),
        }
    }
}

/// The `jobs:pending` score the API gave the job `fields` (the `job:<id>` hash) at submission;
/// `now_ms` when it names no time. See the module documentation.
pub fn pending_score(fields: &HashMap<String, String>, now_ms: u64) -> f64 {
    let number = |key: &str| {
        fields
            .get(key)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|n| n.is_finite() && *n != 0.0)
    };
    let priority = number("workflow_priority")
        .or_else(|| number("priority"))
        .unwrap_or(DEFAULT_PRIORITY);
    let time_ms = number("workflow_datetime")
        .or_else(|| {
            fields
                .get("created_at")
                .and_then(|t| parse_epoch_ms(t))
                .map(|ms| ms as f64)
        })
        .unwrap_or(now_ms as f64);
    priority * 1e15 - (time_ms / 1000.0).floor()
}

/// The jobs `worker_id` may still hold: `known` (when not empty), its hash's `current_job_id` and
/// the members of `jobs:active:<worker_id>`, each once, in that order.
async fn candidates(
    conn: &mut Conn,
    worker_id: &str,
    known: &str,
) -> redis::RedisResult<Vec<String>> {
    let active = format!("jobs:active:{worker_id}");
    let (current, kind): (Option<String>, String) = redis::pipe()
        .cmd("HGET")
        .arg(format!("worker:{worker_id}"))
        .arg("current_job_id")
        .cmd("TYPE")
        .arg(&active)
        .query_async(&mut conn.conn)
        .await?;
    let held: Vec<String> = match kind.as_str() {
        "hash" => {
            redis::cmd("HKEYS")
                .arg(&active)
                .query_async(&mut conn.conn)
                .await?
        }
        "set" => {
            redis::cmd("SMEMBERS")
                .arg(&active)
                .query_async(&mut conn.conn)
                .await?
        }
        _ => Vec::new(),
    };
    let mut out: Vec<String> = Vec::new();
    for job in std::iter::once(known.to_owned()).chain(current).chain(held) {
        if !job.is_empty() && !out.contains(&job) {
            out.push(job);
        }
    }
    Ok(out)
}

/// Hands back every job `worker_id` (of machine `machine_id`) still holds; the worker's processes
/// must be gone. `known` is the job the machine last saw it busy with (may be empty); `reason` goes
/// into each event. One outcome per job found; none when the worker held nothing.
pub async fn hand_back(
    conn: &mut Conn,
    machine_id: &str,
    worker_id: &str,
    known: &str,
    reason: &str,
) -> redis::RedisResult<Vec<HandBack>> {
    let mut outcomes = Vec::new();
    for job in candidates(conn, worker_id, known).await? {
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("job:{job}"))
            .query_async(&mut conn.conn)
            .await?;
        let now = now_ms();
        let score = pending_score(&fields, now);
        let event = json!({
            "event_type": EVENT_TYPE,
            "worker_id": worker_id,
            "machine_id": machine_id,
            "timestamp": now,
            "data": {
                "job_id": job,
                "previous_status": fields.get("status").cloned().unwrap_or_default(),
                "reason": reason,
            },
        });
        let (outcome, status, owner): (String, String, String) = Script::new(HAND_BACK)
            .key(format!("job:{job}"))
            .key(format!("jobs:active:{worker_id}"))
            .key(format!("worker:{worker_id}"))
            .key("jobs:pending")
            .arg(&job)
            .arg(worker_id)
            .arg(score)
            .arg(super::worker_channel(machine_id, worker_id))
            .arg(event.to_string())
            .arg(RUNNING.join(","))
            .invoke_async(&mut conn.conn)
            .await?;
        outcomes.push(match outcome.as_str() {
            "handed_back" => HandBack::HandedBack {
                job,
                previous_status: status,
                score,
            },
            "missing" => HandBack::Missing { job },
            "other_worker" => HandBack::OtherWorker { job, owner, status },
            _ => HandBack::Finished { job, status },
        });
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_score_is_the_one_the_api_gave_at_submission() {
        // 2024-05-06T07:08:09.123Z is 1714979289123 ms: floor(1714979289.123) = 1714979289.
        let iso = job(&[
            ("priority", "50"),
            ("created_at", "2024-05-06T07:08:09.123Z"),
        ]);
        assert_eq!(pending_score(&iso, 0), 50.0 * 1e15 - 1_714_979_289.0);
        let ms = job(&[("priority", "70"), ("created_at", "1714979289999")]);
        assert_eq!(pending_score(&ms, 0), 70.0 * 1e15 - 1_714_979_289.0);
        // The workflow's priority and time win, as at submission.
        let workflow = job(&[
            ("priority", "50"),
            ("created_at", "2024-05-06T07:08:09.123Z"),
            ("workflow_priority", "90"),
            ("workflow_datetime", "1000000000000"),
        ]);
        assert_eq!(pending_score(&workflow, 0), 90.0 * 1e15 - 1_000_000_000.0);
        // Empty workflow fields (the API writes "") are not set.
        let empty = job(&[
            ("priority", "60"),
            ("created_at", "1714979289123"),
            ("workflow_priority", ""),
            ("workflow_datetime", ""),
        ]);
        assert_eq!(pending_score(&empty, 0), 60.0 * 1e15 - 1_714_979_289.0);
    }

    #[test]
    fn a_job_without_priority_or_time_gets_the_defaults() {
        assert_eq!(pending_score(&job(&[]), 5_000), 50.0 * 1e15 - 5.0);
        let garbage = job(&[("priority", "high"), ("created_at", "yesterday")]);
        assert_eq!(pending_score(&garbage, 7_999), 50.0 * 1e15 - 7.0);
    }

    #[test]
    fn outcomes_name_the_job_and_what_was_found() {
        let back = HandBack::HandedBack {
            job: "j-1".into(),
            previous_status: "in_progress".into(),
            score: 5e16,
        };
        assert!(back.to_string().contains("handed job j-1 back"), "{back}");
        let done = HandBack::Finished {
            job: "j-2".into(),
            status: "completed".into(),
        };
        assert!(done.to_string().contains("j-2") && done.to_string().contains("completed"));
    }
}
