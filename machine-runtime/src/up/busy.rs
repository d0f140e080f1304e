//! The drain's question to the broker: which workers are busy (by app name), and the hand-back of a
//! killed worker's job ([`BusyProbe`]).

use std::sync::Arc;

use super::status::MachineStatus;
use crate::log::runtime as log;
use crate::supervisor::BusyProbe;

/// The broker's answer to "which workers are busy", by app name, for the drain on stop and
/// restart, and its hand-back of a killed worker's job.
pub(super) struct BrokerBusy {
    /// Where the broker appears once it has connected; until then no worker is known to be busy.
    pub(super) status: Arc<MachineStatus>,
    /// App name → `WORKER_ID`, for the workers the broker knows.
    pub(super) worker_ids: std::collections::HashMap<String, String>,
}

impl BusyProbe for BrokerBusy {
    fn busy<'a>(
        &'a self,
        apps: &'a [String],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Option<String>>> + Send + 'a>> {
        Box::pin(async move {
            let known: Vec<(usize, String)> = apps
                .iter()
                .enumerate()
                .filter_map(|(i, app)| Some((i, self.worker_ids.get(app)?.clone())))
                .collect();
            let ids: Vec<String> = known.iter().map(|(_, id)| id.clone()).collect();
            let mut out = vec![None; apps.len()];
            let Some(broker) = self.status.broker.get() else {
                return out;
            };
            for ((i, _), busy) in known.iter().zip(broker.busy_workers(&ids).await) {
                out[*i] = busy;
            }
            out
        })
    }

    fn hand_back<'a>(
        &'a self,
        app: &'a str,
        job: &'a str,
        why: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let Some(worker_id) = self.worker_ids.get(app) else {
                return;
            };
            match self.status.broker.get() {
                Some(broker) => {
                    broker.hand_back(worker_id, job, why).await;
                }
                None => log(&format!(
                    "cannot hand the job of {app} back to the queue: the broker link never connected; it stays assigned to worker {worker_id} until the API's orphan clean-up"
                )),
            }
        })
    }
}
