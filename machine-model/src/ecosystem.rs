//! The PM2-compatible process ecosystem (`ecosystem.config.json`) rendered from a plan: services first,
//! then workers. What PM2 has no field for travels in `machine_*` fields, which PM2 ignores.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::Binding;
use crate::plan::{Plan, Probe, Restart};

/// An ecosystem file: `{"apps": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ecosystem {
    /// Processes in start order.
    pub apps: Vec<App>,
}

/// Whether an app is a service or a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An inference service workers depend on.
    Service,
    /// A job worker.
    Worker,
}

/// A readiness probe as written in the ecosystem file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Readiness {
    /// `GET url` answers 2xx.
    Http {
        url: String,
        interval_ms: u32,
        timeout_ms: u32,
    },
    /// A TCP connection succeeds.
    Tcp {
        host: String,
        port: u16,
        interval_ms: u32,
        timeout_ms: u32,
    },
    /// The command exits 0.
    Command {
        command: Vec<String>,
        interval_ms: u32,
        timeout_ms: u32,
    },
}

/// One PM2 app plus our extension fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    /// Process name.
    pub name: String,
    /// Executable (`machine-runtime` means the runtime binary itself).
    pub script: String,
    /// Arguments.
    pub args: Vec<String>,
    /// `none`: run `script` directly; `node`: run `node <script>` (the worker bundle).
    pub interpreter: String,
    /// Working directory.
    pub cwd: String,
    /// Environment added to the machine's.
    pub env: BTreeMap<String, String>,
    /// Restart when it exits.
    pub autorestart: bool,
    /// Consecutive unstable restarts before `errored`.
    pub max_restarts: u32,
    /// Exits sooner than this (ms) are unstable.
    pub min_uptime: u32,
    /// First restart delay (ms), ×1.5 per restart, capped at 15 s.
    pub exp_backoff_restart_delay: u32,
    /// Grace (ms) between the stop signal and SIGKILL.
    pub kill_timeout: u32,
    /// Service or worker.
    pub machine_role: Role,
    /// GPU index the app is pinned to.
    pub machine_gpu: Option<u32>,
    /// Port a service listens on.
    pub machine_port: Option<u16>,
    /// When a service counts as ready.
    pub machine_readiness: Option<Readiness>,
    /// Apps that must be ready before this one starts.
    pub machine_wait_for: Vec<String>,
    /// If it ends for good, the machine stops with an error.
    pub machine_essential: bool,
    /// Secrets the app needs from the environment.
    pub machine_required_env: Vec<String>,
    /// Connector of a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_connector: Option<String>,
    /// Index of a worker within its connector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_index: Option<u32>,
    /// How a worker is tied to hardware (`gpu`, `cpu` or `shared`), as reported to the job broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_binding: Option<Binding>,
    /// Service types a worker advertises to the job broker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machine_services: Vec<String>,
}

fn readiness(p: &Probe) -> Readiness {
    match p {
        Probe::Http {
            url,
            interval_ms,
            timeout_ms,
        } => Readiness::Http {
            url: url.clone(),
            interval_ms: *interval_ms,
            timeout_ms: *timeout_ms,
        },
        Probe::Tcp {
            host,
            port,
            interval_ms,
            timeout_ms,
        } => Readiness::Tcp {
            host: host.clone(),
            port: *port,
            interval_ms: *interval_ms,
            timeout_ms: *timeout_ms,
        },
    }
}

fn restart_fields(r: Restart) -> (u32, u32, u32, u32) {
    (
        r.max_restarts,
        r.min_uptime_ms,
        r.exp_backoff_restart_delay_ms,
        r.kill_timeout_ms,
    )
}

impl Ecosystem {
    /// Renders a plan: service apps first, then worker apps.
    pub fn from_plan(plan: &Plan) -> Ecosystem {
        let mut apps = Vec::with_capacity(plan.services.len() + plan.workers.len());
        for s in &plan.services {
            let (max_restarts, min_uptime, delay, kill_timeout) = restart_fields(s.restart);
            apps.push(App {
                name: s.name.clone(),
                script: s.script.clone(),
                args: s.args.clone(),
                interpreter: s.interpreter.into(),
                cwd: s.cwd.clone(),
                env: s.env.clone(),
                autorestart: true,
                max_restarts,
                min_uptime,
                exp_backoff_restart_delay: delay,
                kill_timeout,
                machine_role: Role::Service,
                machine_gpu: s.gpu,
                machine_port: s.port,
                machine_readiness: Some(readiness(&s.readiness)),
                machine_wait_for: Vec::new(),
                // A service that gives up leaves its workers useless: the machine must say so.
                machine_essential: true,
                machine_required_env: Vec::new(),
                machine_connector: None,
                machine_index: None,
                machine_binding: None,
                machine_services: Vec::new(),
            });
        }
        for w in &plan.workers {
            let (max_restarts, min_uptime, delay, kill_timeout) = restart_fields(w.restart);
            apps.push(App {
                name: w.name.clone(),
                script: w.script.clone(),
                args: w.args.clone(),
                interpreter: w.interpreter.into(),
                cwd: w.cwd.clone(),
                env: w.env.clone(),
                autorestart: true,
                max_restarts,
                min_uptime,
                exp_backoff_restart_delay: delay,
                kill_timeout,
                machine_role: Role::Worker,
                machine_gpu: w.gpu,
                machine_port: None,
                machine_readiness: None,
                machine_wait_for: w.service_instance.iter().cloned().collect(),
                machine_essential: false,
                machine_required_env: w.secrets.iter().map(|s| s.to_string()).collect(),
                machine_connector: Some(w.connector.to_string()),
                machine_index: Some(w.index),
                machine_binding: Some(w.binding),
                machine_services: w.advertises.iter().map(|s| s.to_string()).collect(),
            });
        }
        Ecosystem { apps }
    }
}
