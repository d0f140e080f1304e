//! At start, hands back to the queue the jobs an earlier run of this machine left with its workers.
//!
//! A machine killed outright (`docker kill`, the OOM killer, a node lost) cannot hand back its busy
//! workers' jobs: they stay `in_progress`, assigned to worker ids that no process serves any more,
//! until the API's orphan clean-up. When the machine comes back under the same id (a Swarm task keeps
//! its slot, a StatefulSet pod its name, a Compose container its `MACHINE_ID`), its worker ids are the
//! same (`<MACHINE_ID>-worker-<connector>-<index>`): so once it holds the id lease, and before any of its
//! workers starts, whatever those worker ids still hold was left by the earlier run. Each such job is
//! handed back exactly as a killed worker's is ([`super::handback`]: `pending` again, at its submission
//! score, a `job_handed_back` event); a job another worker has taken since, or that finished, is left
//! alone.
//!
//! Only with the lease held: it proves no other live machine uses the id (and so the worker ids). When
//! Redis was unreachable at start, nothing is done here (the API's clean-up remains).

use super::config::BrokerConfig;
use super::handback::{self, HandBack};
use super::link::Link;

/// The reason written into each hand-back event.
pub const REASON: &str = "an earlier run of this machine ended without handing it back";

/// Hands back every job the workers `worker_ids` of machine `machine_id` still hold; call it with
/// the id lease held and before the workers start. Bounded by [`super::JOB_HANDBACK_TIMEOUT`] in all;
/// Redis failing or slow is logged, never an error (the machine starts anyway). Returns the outcomes.
pub(crate) async fn hand_back(
    config: &BrokerConfig,
    machine_id: &str,
    worker_ids: &[String],
) -> Vec<HandBack> {
    let attempt = async {
        let link =
            Link::new(config.url.clone(), config.link_settings()).map_err(|e| e.to_string())?;
        let mut conn = link.connect_now().await.map_err(|e| e.to_string())?;
        let mut all = Vec::new();
        for worker_id in worker_ids {
            let outcomes = handback::hand_back(&mut conn, machine_id, worker_id, "", REASON)
                .await
                .map_err(|e| link.url().redact(&e.to_string()))?;
            for outcome in &outcomes {
                log!("{outcome} (worker {worker_id}: {REASON})");
            }
            all.extend(outcomes);
        }
        Ok::<_, String>(all)
    };
    match tokio::time::timeout(super::JOB_HANDBACK_TIMEOUT, attempt).await {
        Ok(Ok(outcomes)) => outcomes,
        Ok(Err(err)) => {
            log!(
                "could not look for jobs an earlier run of {machine_id} left with its workers: {err}; they stay assigned until the API's orphan clean-up"
            );
            Vec::new()
        }
        Err(_) => {
            log!(
                "could not look for jobs an earlier run of {machine_id} left with its workers: redis did not answer within {} ms; they stay assigned until the API's orphan clean-up",
                super::JOB_HANDBACK_TIMEOUT.as_millis()
            );
            Vec::new()
        }
    }
}
