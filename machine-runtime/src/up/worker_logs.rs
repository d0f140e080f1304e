//! What workers say only in their output: whether their connectors loaded, passed on to the broker.

use crate::broker::{self, Broker};

/// Follows the output of each worker (`app name → WORKER_ID`) for what the worker says only there,
/// whether its connectors loaded ([`broker::ConnectorLoadScan`]), and tells `broker` each verdict;
/// the output already kept is read first. Ends with the supervisor.
pub(super) fn follow_worker_logs(
    handle: &crate::supervisor::SupervisorHandle,
    worker_apps: std::collections::HashMap<String, String>,
    broker: &Broker,
) {
    use tokio::sync::broadcast::error::RecvError;
    for (app, worker_id) in worker_apps {
        let Some(log) = handle.logs().get(&app).cloned() else {
            continue;
        };
        let broker = broker.clone();
        let cancel = handle.shutdown_token();
        handle.tracker().spawn(async move {
            let (kept, mut lines) =
                log.tail_and_follow(crate::supervisor::logs::MAX_LINES, |_| true);
            let mut scan = broker::ConnectorLoadScan::default();
            for line in kept {
                if let Some(verdict) = scan.line(&line.text) {
                    broker.worker_log_said(&worker_id, verdict);
                }
            }
            loop {
                let line = tokio::select! {
                    () = cancel.cancelled() => return,
                    line = lines.recv() => line,
                };
                match line {
                    Ok(line) => {
                        if let Some(verdict) = scan.line(&line.text) {
                            broker.worker_log_said(&worker_id, verdict);
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }
}
