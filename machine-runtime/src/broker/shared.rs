//! What the broker's tasks share: the link, the publishing counters and the workers' last known
//! state, read by `/health`, `/metrics` and the drain.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::link::{ConnectionState, Link};
use super::message::UpdateType;
use super::status::{BrokerStatus, PreflightState};
use super::tally::JobTally;
use super::workers::WorkerStatus;

pub(super) struct Stats {
    pub(super) preflight: PreflightState,
    pub(super) published: u64,
    pub(super) last_published_ms: Option<u64>,
    pub(super) last_update_type: Option<UpdateType>,
}

pub(super) struct Shared {
    pub(super) link: Arc<Link>,
    pub(super) stats: Mutex<Stats>,
    /// What each worker (by `WORKER_ID`) was doing at the last refresh or event: `Some(job)` busy.
    pub(super) busy: Mutex<HashMap<String, Option<String>>>,
    /// `status.workers` of the last status message built, by `WORKER_ID`, for `/health`.
    pub(super) workers: Mutex<BTreeMap<String, WorkerStatus>>,
    /// Each worker's job counts from its own events, by `WORKER_ID`, for `/metrics`.
    pub(super) jobs: Mutex<BTreeMap<String, JobTally>>,
    /// Background tasks that ended while the broker was meant to run (a panic is a bug), with when.
    pub(super) dead: Mutex<Vec<(u64, String)>>,
    /// Set by [`super::Broker::shutdown`]: tasks ending from now on end on purpose.
    pub(super) stopping: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Nothing published or seen yet, on `link`, with the preflight's verdict.
    pub(super) fn new(link: Arc<Link>, preflight: PreflightState) -> Shared {
        Shared {
            link,
            stats: Mutex::new(Stats {
                preflight,
                published: 0,
                last_published_ms: None,
                last_update_type: None,
            }),
            busy: Mutex::new(HashMap::new()),
            workers: Mutex::new(BTreeMap::new()),
            jobs: Mutex::new(BTreeMap::new()),
            dead: Mutex::new(Vec::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(super) fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        // A poisoned lock only means a panic elsewhere; the numbers are still good to show.
        self.stats
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The status as `/health` shows it: a background task that died turns the connection into
/// `unreachable` with the reason, whatever the link last said (its task may be the dead one).
pub(super) fn status_of(shared: &Shared) -> BrokerStatus {
    let stats = shared.stats();
    let dead = shared
        .dead
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .clone();
    let connection = match dead.first() {
        None => shared.link.state(),
        Some((since_ms, _)) => ConnectionState::Unreachable {
            since_ms: *since_ms,
            last_error: format!(
                "{} (a bug); status is no longer published, restart the machine",
                dead.iter()
                    .map(|(_, what)| what.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    BrokerStatus {
        url: shared.link.url().redacted().to_owned(),
        connection,
        preflight: stats.preflight.clone(),
        published: stats.published,
        last_published_ms: stats.last_published_ms,
        last_update_type: stats.last_update_type,
    }
}
