//! The `machine:status:<MACHINE_ID>` message in exactly the shape the existing API parses (reference part f).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::view::{MachineView, Phase, ProcessState, ServiceView, WorkerView};
use super::workers::{WorkerStatus, WorkerTruth, resolve};

/// Why a status message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateType {
    /// The first message after start.
    Initial,
    /// Once, when the machine phase becomes ready (always followed by a `periodic`).
    MachineReady,
    /// The heartbeat of the machine, every status interval.
    Periodic,
    /// An app changed state or a worker sent an event.
    EventDriven,
    /// The last message, before the children are signalled.
    Shutdown,
}

impl UpdateType {
    /// The protocol's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::MachineReady => "machine_ready",
            Self::Periodic => "periodic",
            Self::EventDriven => "event_driven",
            Self::Shutdown => "shutdown",
        }
    }
}

/// The whole message.
#[derive(Debug, Clone, Serialize)]
pub struct StatusMessage {
    /// `MACHINE_ID`.
    pub machine_id: String,
    /// Epoch milliseconds.
    pub timestamp: u64,
    /// Why it is sent.
    pub update_type: UpdateType,
    /// Where the machine's health endpoint is.
    pub health_url: String,
    /// What the machine consists of.
    pub structure: Structure,
    /// How each part is doing.
    pub status: Status,
}

/// `structure`.
#[derive(Debug, Clone, Serialize)]
pub struct Structure {
    /// GPUs served.
    pub gpu_count: u32,
    /// Service types offered by the workers, deduplicated, in plan order.
    pub capabilities: Vec<String>,
    /// Keyed by `WORKER_ID`.
    pub workers: BTreeMap<String, WorkerStructure>,
    /// Keyed by `<WORKER_ID>.<service type>`.
    pub services: BTreeMap<String, ServiceStructure>,
}

/// `structure.workers.<WORKER_ID>`.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStructure {
    /// `WORKER_ID`.
    pub worker_id: String,
    /// The worker's app name.
    pub pm2_name: String,
    /// The GPU index; always a number, as in the old messages (the monitor reads it as one), so a
    /// worker without a GPU reports 0 and says `shared`/`cpu` in `resource_binding`.
    pub gpu_id: u32,
    /// The connector.
    pub worker_type: String,
    /// `gpu|cpu|shared`.
    pub resource_binding: String,
    /// Service types.
    pub services: Vec<String>,
    /// Connectors (one per worker here).
    pub connectors: Vec<String>,
}

/// `structure.services.<WORKER_ID>.<service>`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStructure {
    /// The worker that uses the service.
    pub worker_id: String,
    /// The service type.
    pub service_type: String,
    /// The app that provides it (the worker itself for API connectors without a local service).
    pub pm2_name: String,
    /// `active|inactive|unknown`.
    pub status: ServiceActivity,
    /// `healthy|unhealthy|unknown`.
    pub health: ServiceHealth,
}

/// `status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The machine as a whole.
    pub machine: MachineStatus,
    /// Keyed by `WORKER_ID`.
    pub workers: BTreeMap<String, WorkerStatus>,
    /// Keyed by `<WORKER_ID>.<service type>`.
    pub services: BTreeMap<String, ServiceStatus>,
}

/// `status.machine`.
#[derive(Debug, Clone, Serialize)]
pub struct MachineStatus {
    /// `starting|ready|shutdown`.
    pub phase: &'static str,
    /// Milliseconds since the runtime started.
    pub uptime_ms: u64,
}

/// `status.services.<WORKER_ID>.<service>`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// The worker that uses the service.
    pub worker_id: String,
    /// The service type.
    pub service_type: String,
    /// The app that provides it.
    pub pm2_name: String,
    /// PM2's word for the process state (`online`, `errored`, ...).
    pub pm2_status: &'static str,
    /// `active|inactive|unknown`.
    pub status: ServiceActivity,
    /// `healthy|unhealthy|unknown`.
    pub health: ServiceHealth,
}

/// Whether a service's process is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceActivity {
    /// Process alive.
    Active,
    /// Process not alive.
    Inactive,
    /// Not known.
    Unknown,
}

/// Whether a service answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceHealth {
    /// Readiness passed.
    Healthy,
    /// Down, or the worker's connector says it cannot use it.
    Unhealthy,
    /// Still starting.
    Unknown,
}

/// Builds the message for `view` at `now_ms`; `Shutdown` messages report phase `shutdown`.
pub fn build(
    view: &MachineView,
    truths: &HashMap<String, WorkerTruth>,
    update_type: UpdateType,
    now_ms: u64,
) -> StatusMessage {
    let phase = if update_type == UpdateType::Shutdown {
        Phase::Shutdown
    } else {
        view.phase
    };
    let mut capabilities: Vec<String> = Vec::new();
    let mut structure_workers = BTreeMap::new();
    let mut structure_services = BTreeMap::new();
    let mut status_workers = BTreeMap::new();
    let mut status_services = BTreeMap::new();
    for worker in &view.workers {
        let truth = truths.get(&worker.worker_id);
        for service in &worker.services {
            if !capabilities.contains(service) {
                capabilities.push(service.clone());
            }
            let key = service_key(&worker.worker_id, service);
            let provider = service_for(view, worker);
            let connector = truth.and_then(|t| t.event.connectors.get(service));
            let (pm2_name, state, ready) = match provider {
                Some(s) => (s.app_name.clone(), s.process_state, Some(s.ready)),
                None => (worker.app_name.clone(), worker.process_state, None),
            };
            let activity = if state.is_alive() {
                ServiceActivity::Active
            } else {
                ServiceActivity::Inactive
            };
            let health = health(state, ready, connector.and_then(|(_, h)| h.as_deref()));
            structure_services.insert(
                key.clone(),
                ServiceStructure {
                    worker_id: worker.worker_id.clone(),
                    service_type: service.clone(),
                    pm2_name: pm2_name.clone(),
                    status: activity,
                    health,
                },
            );
            status_services.insert(
                key,
                ServiceStatus {
                    worker_id: worker.worker_id.clone(),
                    service_type: service.clone(),
                    pm2_name,
                    pm2_status: state.pm2_status(),
                    status: activity,
                    health,
                },
            );
        }
        structure_workers.insert(
            worker.worker_id.clone(),
            WorkerStructure {
                worker_id: worker.worker_id.clone(),
                pm2_name: worker.app_name.clone(),
                gpu_id: worker.gpu.unwrap_or(0),
                worker_type: worker.connector.clone(),
                resource_binding: worker.binding.as_str().to_owned(),
                services: worker.services.clone(),
                connectors: vec![worker.connector.clone()],
            },
        );
        let mut status = resolve(worker.process_state.is_alive(), truth);
        if let Some(waiting) = &worker.waiting_reason {
            status.reason = Some(match status.reason.take() {
                Some(problem) => format!("{waiting}; {problem}"),
                None => waiting.clone(),
            });
        }
        status_workers.insert(worker.worker_id.clone(), status);
    }
    StatusMessage {
        machine_id: view.machine_id.clone(),
        timestamp: now_ms,
        update_type,
        health_url: view.health_url.clone(),
        structure: Structure {
            gpu_count: view.gpu_count,
            capabilities,
            workers: structure_workers,
            services: structure_services,
        },
        status: Status {
            machine: MachineStatus {
                phase: phase.as_str(),
                uptime_ms: u64::try_from(view.started_at.elapsed().as_millis()).unwrap_or(u64::MAX),
            },
            workers: status_workers,
            services: status_services,
        },
    }
}

/// The service app a worker talks to, when it has one.
/// The key of `status.services` for a worker's service: `<WORKER_ID>.<service type>`.
pub(crate) fn service_key(worker_id: &str, service: &str) -> String {
    format!("{worker_id}.{service}")
}

/// Every key of `status.services` in `view` with the app its row reports as `pm2_name` (the
/// service app the worker talks to, or the worker itself without one), in message order.
pub(crate) fn service_apps(view: &MachineView) -> Vec<(String, String)> {
    let mut keys = Vec::new();
    for worker in &view.workers {
        let app = service_for(view, worker).map_or(&worker.app_name, |s| &s.app_name);
        for service in &worker.services {
            keys.push((service_key(&worker.worker_id, service), app.clone()));
        }
    }
    keys.sort();
    keys
}

fn service_for<'a>(view: &'a MachineView, worker: &WorkerView) -> Option<&'a ServiceView> {
    let name = worker.service_app.as_deref()?;
    view.services.iter().find(|s| s.app_name == name)
}

fn health(state: ProcessState, ready: Option<bool>, connector: Option<&str>) -> ServiceHealth {
    let base = match (state, ready) {
        (_, Some(true)) if state.is_alive() => ServiceHealth::Healthy,
        (ProcessState::Ready, None) => ServiceHealth::Healthy,
        (ProcessState::Running, None) => ServiceHealth::Healthy,
        (ProcessState::Starting | ProcessState::Waiting, _) => ServiceHealth::Unknown,
        _ => ServiceHealth::Unhealthy,
    };
    match (base, connector) {
        (ServiceHealth::Healthy, Some("unhealthy")) => ServiceHealth::Unhealthy,
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::view::ResourceBinding;
    use std::time::Instant;

    fn two_gpu_view() -> MachineView {
        let worker = |i: u32| WorkerView {
            worker_id: format!("m1-worker-comfyui-{i}"),
            app_name: format!("comfyui-worker-{i}"),
            connector: "comfyui".into(),
            binding: ResourceBinding::Gpu,
            gpu: Some(i),
            services: vec!["comfyui".into()],
            service_app: Some(format!("comfyui-gpu{i}")),
            process_state: ProcessState::Running,
            waiting_reason: None,
        };
        let service = |i: u32| ServiceView {
            app_name: format!("comfyui-gpu{i}"),
            gpu: Some(i),
            port: Some(8188 + i as u16),
            process_state: ProcessState::Ready,
            ready: true,
        };
        let mut openai = worker(2);
        openai.worker_id = "m1-worker-openai-0".into();
        openai.app_name = "openai-worker-0".into();
        openai.connector = "openai".into();
        openai.binding = ResourceBinding::Shared;
        openai.gpu = None;
        openai.services = vec!["openai".into()];
        openai.service_app = None;
        MachineView {
            machine_id: "m1".into(),
            phase: Phase::Ready,
            started_at: Instant::now(),
            gpu_count: 2,
            health_url: "http://localhost:9090/health".into(),
            workers: vec![worker(0), worker(1), openai],
            services: vec![service(0), service(1)],
        }
    }

    #[test]
    fn each_worker_gets_its_own_gpu_and_service() {
        let mut view = two_gpu_view();
        view.services[1].process_state = ProcessState::Errored;
        view.services[1].ready = false;
        let message = build(&view, &HashMap::new(), UpdateType::Periodic, 7);
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(
            json["structure"]["capabilities"],
            serde_json::json!(["comfyui", "openai"])
        );
        assert_eq!(
            json["structure"]["workers"]["m1-worker-comfyui-1"]["gpu_id"],
            1
        );
        assert_eq!(
            json["structure"]["workers"]["m1-worker-openai-0"]["gpu_id"],
            0
        );
        assert_eq!(
            json["structure"]["workers"]["m1-worker-openai-0"]["resource_binding"],
            "shared"
        );
        let s1 = &json["status"]["services"]["m1-worker-comfyui-1.comfyui"];
        assert_eq!(s1["pm2_name"], "comfyui-gpu1");
        assert_eq!(s1["pm2_status"], "errored");
        assert_eq!(s1["status"], "inactive");
        assert_eq!(s1["health"], "unhealthy");
        let s0 = &json["status"]["services"]["m1-worker-comfyui-0.comfyui"];
        assert_eq!(
            (s0["pm2_name"].as_str(), s0["health"].as_str()),
            (Some("comfyui-gpu0"), Some("healthy"))
        );
        let api = &json["status"]["services"]["m1-worker-openai-0.openai"];
        assert_eq!(api["pm2_name"], "openai-worker-0");
        assert_eq!(json["status"]["machine"]["phase"], "ready");
        let shutdown = build(&view, &HashMap::new(), UpdateType::Shutdown, 8);
        assert_eq!(shutdown.status.machine.phase, "shutdown");
    }

    #[test]
    fn service_apps_are_the_keys_and_pm2_names_of_the_message() {
        let view = two_gpu_view();
        let message = build(&view, &HashMap::new(), UpdateType::Periodic, 7);
        let from_message: Vec<(String, String)> = message
            .status
            .services
            .iter()
            .map(|(key, row)| (key.clone(), row.pm2_name.clone()))
            .collect();
        assert_eq!(service_apps(&view), from_message);
        assert_eq!(
            from_message[0],
            ("m1-worker-comfyui-0.comfyui".into(), "comfyui-gpu0".into())
        );
    }

    #[test]
    fn a_worker_held_back_for_its_service_says_why() {
        let mut view = two_gpu_view();
        view.services[1].process_state = ProcessState::Restarting;
        view.services[1].ready = false;
        let why = "comfyui-worker-1 is waiting for comfyui-gpu1: comfyui-gpu1 is not ready (restarting after status 1)";
        view.workers[1].process_state = ProcessState::Waiting;
        view.workers[1].waiting_reason = Some(why.into());
        let json =
            serde_json::to_value(build(&view, &HashMap::new(), UpdateType::Periodic, 7)).unwrap();
        let held = &json["status"]["workers"]["m1-worker-comfyui-1"];
        assert_eq!(
            (&held["status"], &held["reason"]),
            (&"offline".into(), &why.into())
        );
        // Absent, not null, for every other worker: the API sees the shape it knows.
        let other = json["status"]["workers"]["m1-worker-comfyui-0"]
            .as_object()
            .unwrap();
        assert!(!other.contains_key("reason"), "{other:?}");
    }
}
