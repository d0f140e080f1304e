//! `machine-runtime health --wait SECONDS`: Docker's healthcheck probe that reports `healthy` the moment
//! a starting machine's `GET /health` answers 200, instead of at the next probe.
//!
//! Docker 20.10 and docker-compose 1.29 have no `start_interval` (Engine 25): a probe runs every
//! `interval` for the container's whole life. With `--wait`, a probe that finds the machine still
//! starting (its endpoint not listening yet, or `GET /status` saying phase `starting`: not every app
//! has been ready yet) asks again every [`RETRY`] until `/health` answers 200 or `SECONDS` have passed.
//! Once the machine has been ready, a failing `/health` is reported at once, as without `--wait`, so the
//! probe keeps its meaning as a liveness check.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::http::{self, HttpUrl};

/// How often a waiting probe asks again.
pub const RETRY: Duration = Duration::from_millis(100);

/// Ok once `GET /health` on `127.0.0.1:port` answers 200, asking again while the machine is starting,
/// for at most `wait`; each request may take `timeout` (less when less of `wait` is left). The error is
/// the last answer's, as [`crate::health::check`] words it.
pub async fn check_waiting(port: u16, timeout: Duration, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let result = crate::health::check(port, timeout.min(left.max(RETRY))).await;
        let Err(problem) = result else {
            return Ok(());
        };
        if Instant::now() + RETRY >= deadline {
            return Err(problem);
        }
        if !starting(port, timeout.min(left)).await {
            // It may have left `starting` between the two requests, turning healthy (the answer
            // that counts is /health's now, not the 503 from just before it was ready).
            return crate::health::check(port, timeout.min(left.max(RETRY))).await;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Whether the machine is still starting: its endpoint does not accept connections yet, or `/status`
/// says phase `starting`. (An endpoint that accepts but does not answer is not starting: it hangs.)
async fn starting(port: u16, timeout: Duration) -> bool {
    match http::get(&HttpUrl::local(port, "/status"), timeout.max(RETRY)).await {
        Err(problem) => problem.starts_with("cannot connect"),
        Ok(answer) => serde_json::from_str::<Value>(&answer.body)
            .is_ok_and(|status| status["phase"] == "starting"),
    }
}
