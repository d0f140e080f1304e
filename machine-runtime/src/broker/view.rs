//! The broker's input: a snapshot of the machine that the supervisor keeps current through a watch channel.

use std::time::Instant;

/// The machine as the supervisor sees it; every change sent through the watch is one state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineView {
    /// `MACHINE_ID` exactly as configured (no random suffix).
    pub machine_id: String,
    /// Where the machine is in its life.
    pub phase: Phase,
    /// When the runtime started; `uptime_ms` is measured from here.
    pub started_at: Instant,
    /// GPUs this machine serves.
    pub gpu_count: u32,
    /// `http://<host>:<MACHINE_HEALTH_PORT>/health`.
    pub health_url: String,
    /// One entry per worker app, in plan order.
    pub workers: Vec<WorkerView>,
    /// One entry per service app (ComfyUI per GPU, simulation, ...).
    pub services: Vec<ServiceView>,
}

/// The machine phase reported in `status.machine.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Installing, starting services, waiting for readiness.
    Starting,
    /// Every app is up.
    Ready,
    /// Stopping.
    Shutdown,
}

impl Phase {
    /// The protocol's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Shutdown => "shutdown",
        }
    }
}

/// One worker app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    /// `WORKER_ID` = `<MACHINE_ID>-worker-<connector>-<index>`.
    pub worker_id: String,
    /// The app (process) name, e.g. `comfyui-worker-0`; reported as `pm2_name`.
    pub app_name: String,
    /// The connector it runs (`comfyui`, `simulation`, `openai`, ...); reported as `worker_type`.
    pub connector: String,
    /// How the worker is tied to hardware.
    pub binding: ResourceBinding,
    /// The GPU index it is pinned to, if any; reported as `gpu_id`.
    pub gpu: Option<u32>,
    /// Service types it advertises (usually just its connector's service).
    pub services: Vec<String>,
    /// The service app it talks to (`comfyui-gpu0`), if any; without one the worker is its own
    /// provider (API connectors).
    pub service_app: Option<String>,
    /// What the supervisor knows about the process.
    pub process_state: ProcessState,
    /// Why its process is held back while it waits for the apps it depends on (its service), in
    /// words; `None` when it is not waiting.
    pub waiting_reason: Option<String>,
}

/// How a worker is tied to hardware; reported as `resource_binding` (the worker spec's word).
pub use machine_model::catalog::Binding as ResourceBinding;

/// One service app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    /// The app name, e.g. `comfyui-gpu0`; reported as `pm2_name`.
    pub app_name: String,
    /// The GPU index it is pinned to, if any; matches the worker on the same GPU.
    pub gpu: Option<u32>,
    /// The port it listens on, if any.
    pub port: Option<u16>,
    /// What the supervisor knows about the process.
    pub process_state: ProcessState,
    /// Whether its readiness probe passed (true when it has none and is running).
    pub ready: bool,
}

/// A supervised process's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// Not started yet (waiting for the apps it depends on).
    Waiting,
    /// Spawned, readiness not yet confirmed.
    Starting,
    /// Running (no readiness probe, or not yet probed again).
    Running,
    /// Running and its readiness probe passed.
    Ready,
    /// Exited; waiting out the restart delay.
    Restarting,
    /// Being stopped.
    Stopping,
    /// Stopped on purpose.
    Stopped,
    /// Gave up after too many quick restarts.
    Errored,
}

impl ProcessState {
    /// Whether a process of this app exists and is not being stopped.
    pub(crate) fn is_alive(self) -> bool {
        matches!(self, Self::Starting | Self::Running | Self::Ready)
    }

    /// PM2's word for this state, reported as `pm2_status` (the monitor knows PM2's vocabulary).
    pub fn pm2_status(self) -> &'static str {
        match self {
            Self::Waiting | Self::Starting => "launching",
            Self::Running | Self::Ready => "online",
            Self::Restarting => "waiting restart",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Errored => "errored",
        }
    }
}
