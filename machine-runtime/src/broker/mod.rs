//! The job broker link: tells the existing API about this machine over Redis, in its exact protocol.
//!
//! What goes out (reference part f): `PUBLISH machine:status:<MACHINE_ID> <json>` with
//! `update_type` in this order:
//! - `initial` once at start (phase `starting`);
//! - `machine_ready` when the view's phase becomes ready, immediately followed by a `periodic`
//!   (the API re-broadcasts `periodic` but not `machine_ready`);
//! - `periodic` every `MACHINE_STATUS_UPDATE_INTERVAL_SECONDS` (default 10; above 25 is clamped to 25
//!   with a warning, because the API marks a machine silent for 30 s as disconnected);
//! - `event_driven` for every change of the supervisor's view and every worker event, at most one per
//!   100 ms (changes in between are merged; the last state is always sent);
//! - `shutdown` (phase `shutdown`) from [`Broker::shutdown`], which the supervisor calls before it
//!   signals the children; bounded, so a dead Redis cannot hold up the stop.
//!
//! And, for a worker the machine had to kill mid-job (stop or restart past its `kill_timeout`),
//! [`Broker::hand_back`] puts its job back into `jobs:pending` as the API's orphan clean-up does and
//! publishes `job_handed_back` on `machine:<MACHINE_ID>:worker:<WORKER_ID>` ([`handback`]).
//!
//! What comes in: before each message, `HGETALL worker:<id>` and `TTL worker:<id>:heartbeat` for every
//! worker in one pipeline, and `PSUBSCRIBE machine:<MACHINE_ID>:worker:*` events. A worker is connected
//! only while its process runs and its heartbeat key exists; a worker whose process is down is
//! `offline` whatever it last said.
//!
//! Outages: the runtime's processes never wait for Redis. The link reconnects with capped
//! exponential backoff (250 ms doubling to 5 s, so status resumes within 5 s of Redis returning,
//! well inside the API's 30 s); while it is down nothing is published and [`Broker::status`]
//! says `unreachable` since when and why. On reconnection the broker catches up
//! (`initial`/`machine_ready` if they were missed, else a `periodic` at once) and resubscribes.
//!
//! Settings (environment):
//! - `HUB_REDIS_URL`: `redis://[user][:password]@host[:port][/db]`, or `rediss://` for TLS. The
//!   password never appears in logs, errors or the health endpoint (`***`).
//! - `MACHINE_STATUS_UPDATE_INTERVAL_SECONDS`: whole seconds, 1 to 25 (default 10).
//! - `BROKER_PREFLIGHT`: at start the broker checks that Redis is 7 or later and that the job broker's
//!   function `findMatchingJob` is loaded (`FUNCTION LIST`). Without it idle workers would never
//!   claim a job.
//!   - `warn` (default): a loud multi-line warning, then carry on; if Redis is unreachable at start,
//!     the check runs at the first connection.
//!   - `require`: refuse to start when the check fails or Redis cannot be reached to run it.
//!   - `off`: no check.
//!
//! Files, one job each: `handle` ([`Broker`]: start, queries, hand-back, shutdown), `publisher` (the
//! status messages), `listener` (the worker-event subscription), `watchdog` (a background task that
//! dies shows in `/health`), `shared` (the state those tasks share), `status` and `error` (the types
//! `/health` and callers see); the wire formats, the link and the settings in the files below them.

/// `log!(...)`: the broker's lines, `broker: ` first, through the one log front end ([`crate::log::part`]).
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::part("broker", &format!($($arg)*))
    };
}
pub(crate) use log;

pub(crate) mod bridge;
mod config;
mod error;
pub mod handback;
mod handle;
pub mod lease;
pub(crate) mod leftover;
mod link;
mod listener;
mod message;
mod preflight;
mod publisher;
mod shared;
mod status;
mod tally;
mod time;
pub mod tls;
mod view;
mod watchdog;
mod workers;

pub use config::{
    BrokerConfig, ConfigError, ConfigErrors, DEFAULT_STATUS_INTERVAL_SECONDS,
    MAX_STATUS_INTERVAL_SECONDS, PreflightMode, RedisUrl, install_tls_provider,
};
pub use error::BrokerError;
pub use handle::Broker;
pub use link::{Conn, ConnectionState, Link, LinkError, LinkSettings};
pub use message::{StatusMessage, UpdateType, build as build_status_message};
pub use preflight::{MATCH_FUNCTION, PreflightReport, run as run_preflight};
pub use status::{BrokerStatus, PreflightState};
pub use tally::JobTally;
pub use time::{epoch_ms, iso8601, now_iso8601, now_ms};
pub use view::{MachineView, Phase, ProcessState, ResourceBinding, ServiceView, WorkerView};
pub use workers::{
    ConnectorLoadScan, ConnectorVerdict, WorkerEvent, WorkerState, WorkerStatus, WorkerTruth,
};

use std::time::Duration;

/// The longest one hand-back of a killed worker's jobs may take
/// ([`machine_model::catalog::JOB_HANDBACK_TIMEOUT_MS`]; Compose's stop budget includes it).
pub(crate) const JOB_HANDBACK_TIMEOUT: Duration =
    Duration::from_millis(machine_model::catalog::JOB_HANDBACK_TIMEOUT_MS as u64);

/// The channel the API listens to for this machine.
pub(crate) fn status_channel(machine_id: &str) -> String {
    format!("machine:status:{machine_id}")
}

/// The channel of worker `worker_id`'s events (`machine:<MACHINE_ID>:worker:<WORKER_ID>`, contract §5).
pub(crate) fn worker_channel(machine_id: &str, worker_id: &str) -> String {
    format!("machine:{machine_id}:worker:{worker_id}")
}
