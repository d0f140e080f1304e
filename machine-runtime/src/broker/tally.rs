//! Counts of each worker's jobs from its own `machine:<m>:worker:<w>` events, for `/metrics`: jobs
//! completed, jobs failed, time spent busy.

use super::workers::WorkerEvent;

/// One worker's job counts since the runtime started (the machine's clock, epoch ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobTally {
    /// `job_completed` events.
    pub completed: u64,
    /// `job_failed` events.
    pub failed: u64,
    /// Milliseconds busy on jobs that have ended.
    pub busy_ms_done: u64,
    /// When the job in progress started (its `job_started` arrived), if one is.
    pub busy_since_ms: Option<u64>,
}

impl JobTally {
    /// Counts one event received at `now_ms`: `job_started` opens a busy span (a second one while
    /// busy keeps the first start); `job_completed` and `job_failed` count and close it; the
    /// machine's `job_handed_back` and a `worker_status_changed` to `idle` or `offline` close it
    /// without counting (the job ended without the worker's word, or the worker lost it).
    pub fn count(&mut self, event: &WorkerEvent, now_ms: u64) {
        match event.event_type.as_str() {
            "job_started" => {
                self.busy_since_ms.get_or_insert(now_ms);
            }
            "job_completed" => {
                self.completed += 1;
                self.close(now_ms);
            }
            "job_failed" => {
                self.failed += 1;
                self.close(now_ms);
            }
            "job_handed_back" => self.close(now_ms),
            "worker_status_changed" => {
                let status = event.data.get("status").and_then(|s| s.as_str());
                if matches!(status, Some("idle" | "offline")) {
                    self.close(now_ms);
                }
            }
            _ => {}
        }
    }

    fn close(&mut self, now_ms: u64) {
        if let Some(since) = self.busy_since_ms.take() {
            self.busy_ms_done += now_ms.saturating_sub(since);
        }
    }

    /// Milliseconds busy up to `now_ms`, the job in progress included.
    pub fn busy_ms(&self, now_ms: u64) -> u64 {
        self.busy_ms_done
            + self
                .busy_since_ms
                .map_or(0, |since| now_ms.saturating_sub(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(event_type: &str, data: serde_json::Value) -> WorkerEvent {
        WorkerEvent {
            worker_id: "w".into(),
            event_type: event_type.into(),
            data,
            timestamp: None,
        }
    }

    #[test]
    fn jobs_are_counted_and_busy_time_runs_from_start_to_end() {
        let mut t = JobTally::default();
        t.count(&event("job_started", json!({"job_id": "a"})), 1_000);
        assert_eq!(t.busy_ms(1_500), 500);
        t.count(&event("job_started", json!({"job_id": "a"})), 1_200);
        t.count(&event("job_completed", json!({"job_id": "a"})), 3_000);
        t.count(&event("job_started", json!({"job_id": "b"})), 4_000);
        t.count(&event("job_failed", json!({"job_id": "b"})), 4_250);
        t.count(&event("job_started", json!({"job_id": "c"})), 5_000);
        t.count(
            &event("worker_status_changed", json!({"status": "busy"})),
            5_100,
        );
        t.count(&event("job_handed_back", json!({"job_id": "c"})), 5_500);
        t.count(&event("job_started", json!({"job_id": "d"})), 6_000);
        t.count(
            &event("worker_status_changed", json!({"status": "idle"})),
            6_100,
        );
        assert_eq!((t.completed, t.failed), (1, 1));
        assert_eq!(t.busy_ms(99_999), 2_000 + 250 + 500 + 100);
        assert_eq!(t.busy_since_ms, None);
    }
}
