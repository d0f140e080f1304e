//! `machine-runtime up`: the supervisor, the health endpoint and the job broker link, wired together.
//!
//! Order: every start-up problem (apps, secrets, GPUs, broker settings, worker identities) is
//! collected and reported at once; then the health endpoint binds, the broker starts connecting in
//! the background and the apps start: at once, or after at most [`BROKER_HEAD_START`] when Redis
//! answers that fast (so `initial` goes out first). Only `BROKER_PREFLIGHT=require` makes them wait
//! for Redis. On stop, the broker's final `shutdown` message goes out before any app is signalled.
//!
//! Before that, `up --profile` plans the machine against the GPUs found and the environment
//! (`plan`, also `machine-runtime plan`); `up --ecosystem` reads a PM2 ecosystem file instead.
//!
//! Files: `cli` (the `up` command: arguments to [`UpOptions`]), `plan` (the profile planned here),
//! `setting` (the broker settings from the environment), `machine` ([`run`], step by step), `status`
//! (the broker's part of `/health` and `/status`), `busy` (the drain's question to the broker) and
//! `worker_logs` (what workers say about their connectors in their output).

mod busy;
mod cli;
mod machine;
mod plan;
mod setting;
mod status;
mod worker_logs;

pub use cli::{UpArgs, run_cli};
pub use machine::{async_runtime, run};
pub use plan::{plan_text, real_plan};
pub use setting::BrokerSetting;

use crate::broker::{self, BrokerError};
use crate::health::{Control, HealthError};
use crate::supervisor::{PreflightError, RunError, SupervisorOptions};

/// Everything [`run`] needs besides the apps.
pub struct UpOptions {
    /// Child commands and signal handling.
    pub supervisor: SupervisorOptions,
    /// Port of the health endpoint (0 picks a free one and logs it).
    pub health_port: u16,
    /// `MACHINE_ID` from the plan or the environment; `None` takes the workers' own.
    pub machine_id: Option<String>,
    /// GPUs the machine serves, as reported to the broker.
    pub gpu_count: u32,
    /// The broker setting read from the environment, or its problems.
    pub broker: Result<(BrokerSetting, Vec<String>), Vec<String>>,
    /// The control routes' token (`MACHINE_CONTROL_TOKEN`).
    pub control: Control,
    /// What the caller already checked (the plan's installs), reported with everything else.
    pub preflight: crate::preflight::Findings,
    /// The command that installs what is missing, for the pre-start checks' messages.
    pub install_hint: String,
    /// The apps' cgroups, being made since the start ([`crate::cgroup::Preparing`]); `None`: made
    /// as the apps start.
    pub(crate) cgroups: Option<crate::cgroup::Preparing>,
}

/// Why `up` failed.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Lease(#[from] broker::lease::LeaseError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// How long the apps wait for a broker that answers at once (see [`run`]); never more.
pub(crate) const BROKER_HEAD_START: std::time::Duration = std::time::Duration::from_millis(200);
