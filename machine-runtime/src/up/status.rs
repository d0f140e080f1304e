//! The broker's part of `/health`, `/status` and `/metrics`: [`MachineStatus`], the health
//! endpoint's [`StatusSource`].

use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value, json};

use crate::broker::{self, Broker};
use crate::health::StatusSource;

/// The broker's part of `/health` and `/status`.
pub(super) struct MachineStatus {
    pub(super) broker: OnceLock<Broker>,
    /// The lease on the machine id, once taken (`/metrics`).
    pub(super) lease: OnceLock<Arc<broker::lease::LeaseState>>,
    pub(super) off: Option<String>,
    pub(super) required_for_health: bool,
    /// `status.services` keys and their apps (empty without a broker: no message names them).
    pub(super) service_apps: Vec<(String, String)>,
}

impl MachineStatus {
    /// `None` while reachable (or still connecting for the first time); else why not.
    fn broker_problem(&self) -> Option<String> {
        unreachable(&self.broker.get()?.status())
    }
}

/// The status's one-line summary while Redis is unreachable.
fn unreachable(status: &broker::BrokerStatus) -> Option<String> {
    match status.connection {
        broker::ConnectionState::Unreachable { .. } => Some(status.summary()),
        _ => None,
    }
}

impl StatusSource for MachineStatus {
    fn status_fields(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("broker".into(), self.broker_field());
        if let Some(broker) = self.broker.get() {
            fields.insert("workers".into(), json!(broker.workers()));
        }
        fields
    }

    fn health_reasons(&self) -> Vec<String> {
        let mut reasons = match self.broker_problem() {
            Some(problem) if self.required_for_health => vec![problem],
            _ => Vec::new(),
        };
        // Only what lasts: a connector reported failed after one bad job is for /ready, not for a
        // liveness probe that would restart the machine.
        if let Some(broker) = self.broker.get() {
            reasons.extend(broker.worker_load_problems());
        }
        reasons
    }

    /// Workers unhealthy by their own word (a failed connector).
    fn ready_reasons(&self) -> Vec<String> {
        self.broker
            .get()
            .map(Broker::worker_problems)
            .unwrap_or_default()
    }

    fn health_warnings(&self) -> Vec<String> {
        let mut warnings = match (&self.off, self.broker_problem()) {
            (Some(reason), _) => vec![reason.clone()],
            (None, Some(problem)) if !self.required_for_health => vec![problem],
            _ => Vec::new(),
        };
        // What the log's preflight warning says, for as long as it holds (re-checked every status
        // interval): the workers run but no job reaches them.
        if let Some(broker) = self.broker.get()
            && let broker::PreflightState::Problems { problems, .. } = broker.status().preflight
        {
            warnings.extend(problems.into_iter().map(|p| {
                format!("job broker: {p}; the workers would never receive a job (re-checked every status interval)")
            }));
        }
        warnings
    }

    fn health_fields(&self) -> Map<String, Value> {
        self.status_fields()
    }

    fn refresh(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            match (&self.off, self.broker.get()) {
                (Some(reason), _) => Err(reason.clone()),
                (None, Some(broker)) => broker.refresh().await.map_err(|e| e.to_string()),
                (None, None) => Err("the broker link is starting".to_owned()),
            }
        })
    }

    fn service_apps(&self) -> Vec<(String, String)> {
        self.service_apps.clone()
    }

    fn metrics(&self, out: &mut crate::metrics::Exposition) {
        let lease = self.lease.get().map(|l| l.facts());
        crate::metrics::write_broker(out, self.off.is_none(), self.broker.get(), lease);
    }

    fn health_services(&self) -> Map<String, Value> {
        let entry = match (&self.off, self.broker.get()) {
            (Some(reason), _) => json!({"healthy": false, "error": reason}),
            (None, Some(broker)) => {
                let status = broker.status();
                json!({"healthy": status.is_connected(), "error": unreachable(&status)})
            }
            (None, None) => json!({"healthy": false, "error": "the broker link is starting"}),
        };
        let mut services = Map::new();
        services.insert("status-aggregator".into(), entry);
        services
    }
}

impl MachineStatus {
    fn broker_field(&self) -> Value {
        match (&self.off, self.broker.get()) {
            (Some(reason), _) => json!({"enabled": false, "reason": reason}),
            (None, Some(broker)) => {
                let status = broker.status();
                let mut value = serde_json::to_value(&status).unwrap_or(Value::Null);
                if let Value::Object(map) = &mut value {
                    map.insert("enabled".into(), true.into());
                    map.insert("summary".into(), status.summary().into());
                    map.insert(
                        "required_for_health".into(),
                        self.required_for_health.into(),
                    );
                }
                value
            }
            (None, None) => json!({"enabled": true, "summary": "starting"}),
        }
    }
}
