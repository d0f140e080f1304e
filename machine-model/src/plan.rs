//! The plan: derived from a profile (plus optional overrides of the worker spec and GPU count), the one
//! typed description of what a machine installs and runs. Every artifact and the runtime use it.
//!
//! Rules:
//! - gpu-bound workers are pinned round-robin across *all* gpu-bound workers of the machine, in spec order;
//! - an internal service gets one instance per GPU that has a worker of it (`<service>-gpu<i>`, port
//!   `base + step·i`), or one per machine for cpu-bound workers (`<service>-service`, port `base`);
//! - each internal service that needs installing is listed once in `install`, in first-use order;
//! - ports must not collide with each other or with the health endpoint;
//! - machine settings ([`Overrides::settings`]: the profile's component values in the xtask, the
//!   environment in the runtime) give the services' base ports (`SIMULATION_BASE_PORT`, ...) and the
//!   workers' tunables ([`catalog::WORKER_SETTINGS`]); a setting not given takes the catalog's default;
//! - every worker runs the worker bundle, so a plan with workers installs it ([`Plan::worker_bundle`]).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::{self, Binding, ConnectorKind, Lifecycle, ProbeTemplate};
use crate::profile::{GpuMode, Profile, WorkerBundle};
use crate::readiness::Readiness;
use crate::spec::{Count, SpecErrors, WorkerSpec};
use crate::worker_bundle;

/// The most GPUs a plan may have.
pub const MAX_GPUS: u32 = 64;

/// What may override a profile when planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Another worker spec instead of the profile's `workers`.
    pub workers: Option<String>,
    /// Another GPU count instead of the profile's `machine.gpus`.
    pub gpus: Option<u32>,
    /// Another machine id instead of the profile's (or its name).
    pub machine_id: Option<String>,
    /// Another install root instead of `/workspace`.
    pub workspace: Option<String>,
    /// Machine settings by name (see [`catalog::plan_setting_names`]); names the plan does not read are
    /// ignored, so a whole environment may be passed.
    pub settings: BTreeMap<String, String>,
}

/// The plan of one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The profile it was derived from.
    pub profile: String,
    /// `MACHINE_ID`.
    pub machine_id: String,
    /// The normalised worker spec.
    pub worker_spec: String,
    /// GPUs planned for.
    pub gpus: u32,
    /// Port of the health endpoint.
    pub health_port: u16,
    /// Install root inside the container.
    pub workspace: String,
    /// Unique internal services the workers need, in first-use order.
    pub services_needed: Vec<&'static str>,
    /// The subset of `services_needed` that has something to install.
    pub install: Vec<&'static str>,
    /// Service instances, in start order.
    pub services: Vec<ServiceInstance>,
    /// Workers, in spec order.
    pub workers: Vec<WorkerInstance>,
    /// Variables the workers need at start (secrets and others), sorted by name.
    pub secrets: Vec<SecretNeed>,
    /// Where the worker bundle comes from (`None` when the plan has no worker).
    pub worker_bundle: Option<WorkerBundle>,
    /// What the profile adds to ComfyUI's install (packages, custom nodes, models), when the plan
    /// installs ComfyUI and the profile declares any ([`crate::install::comfyui_recipe_for`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comfyui_install: Option<crate::profile::ComfyuiOptions>,
    /// What the plan made of the spec's names, one sentence each: an alias planned as its connector
    /// ([`catalog::ALIASES`]), a connector the studied worker bundle lacks
    /// ([`catalog::NOT_IN_STUDIED_BUNDLE`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One running instance of an internal service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceInstance {
    /// Process name, e.g. `comfyui-gpu0`.
    pub name: String,
    /// Catalog service name.
    pub service: &'static str,
    /// GPU index, or `None` for a per-machine instance.
    pub gpu: Option<u32>,
    /// Listening port.
    pub port: Option<u16>,
    /// Executable.
    pub script: String,
    /// PM2's `interpreter` (`none`: run `script` itself).
    pub interpreter: &'static str,
    /// Arguments: the catalog's, then the CPU flag when the machine's GPUs are simulated
    /// (`machine.gpu_mode: mock`) or the profile asks for it (`comfyui.cpu`), then the profile's own
    /// (`comfyui.args`). The runtime appends the operator's `COMFY_ARGS` at start.
    pub args: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// Folders created (with their parents) before it starts: its own output and temp folders.
    pub dirs: Vec<String>,
    /// Environment (besides the machine's).
    pub env: BTreeMap<String, String>,
    /// When it counts as ready.
    pub readiness: Readiness,
    /// Restart and stop behaviour.
    pub restart: Lifecycle,
}

/// One worker process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerInstance {
    /// Process name, e.g. `comfyui-worker-0`.
    pub name: String,
    /// `WORKER_ID` as the broker knows it: `<MACHINE_ID>-worker-<connector>-<index>`.
    pub worker_id: String,
    /// Connector name.
    pub connector: &'static str,
    /// Resource binding.
    pub binding: Binding,
    /// Index within its connector.
    pub index: u32,
    /// Pinned GPU index (gpu binding only).
    pub gpu: Option<u32>,
    /// The service instance it talks to and waits for.
    pub service_instance: Option<String>,
    /// Service names it advertises to the broker (the mapping's `services`).
    pub advertises: Vec<&'static str>,
    /// Executable, or with an interpreter the script file relative to `cwd`.
    pub script: String,
    /// PM2's `interpreter` (`node` for the worker bundle).
    pub interpreter: &'static str,
    /// Arguments.
    pub args: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// Environment (besides the machine's).
    pub env: BTreeMap<String, String>,
    /// Variables it needs from the runtime's environment (its connector's `required_env` and
    /// `service_env`); passed by name, never written into its `env`.
    pub secrets: Vec<&'static str>,
    /// Restart and stop behaviour.
    pub restart: Lifecycle,
}

/// A variable the workers need at start, and who needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretNeed {
    /// Variable name.
    pub name: &'static str,
    /// Whether it is a secret ([`catalog::is_secret`]): generated files hold only its name.
    pub secret: bool,
    /// Connectors whose workers need it.
    pub connectors: Vec<&'static str>,
    /// Worker process names that need it.
    pub workers: Vec<String>,
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The worker spec is invalid.
    #[error(transparent)]
    Spec(SpecErrors),
    /// gpu-bound workers on a machine planned with no GPU.
    #[error(
        "gpu-bound workers ({}) on a machine planned with 0 GPUs; set machine.gpus (or --gpus) or bind them to cpu where the connector allows it",
        connectors.join(", ")
    )]
    GpuBindingWithoutGpus {
        /// The connectors asking for GPUs.
        connectors: Vec<&'static str>,
    },
    /// More GPUs than supported.
    #[error("{0} GPUs planned; at most {MAX_GPUS} are supported")]
    TooManyGpus(u32),
    /// Two things want one port.
    #[error(
        "port {port} is wanted by both {first} and {second}; change one of them (e.g. machine.health_port)"
    )]
    PortCollision {
        /// The port.
        port: u16,
        /// Who has it first.
        first: String,
        /// Who wants it too.
        second: String,
    },
    /// An invalid machine id.
    #[error(
        "machine id \"{0}\" is invalid; use letters, digits, '.', '_' and '-', starting with a letter or digit"
    )]
    MachineId(String),
    /// A machine setting with a value the plan cannot use.
    #[error("{name}=\"{value}\" is not usable; expected {expected}")]
    Setting {
        /// The setting, e.g. `SIMULATION_BASE_PORT`.
        name: String,
        /// Its value.
        value: String,
        /// What is allowed.
        expected: String,
    },
}

/// All problems found while planning; shown one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", crate::diag::lines(.0))]
pub struct PlanErrors(pub Vec<PlanError>);

fn valid_machine_id(id: &str) -> bool {
    id.as_bytes()
        .first()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Plan {
    /// Derives the plan of profile `name`.
    pub fn build(name: &str, profile: &Profile, overrides: &Overrides) -> Result<Plan, PlanErrors> {
        let spec_text = overrides.workers.as_deref().unwrap_or(&profile.workers);
        let gpus = overrides.gpus.unwrap_or(profile.machine.gpus);
        let machine_id = overrides
            .machine_id
            .clone()
            .or_else(|| profile.machine.id.clone())
            .unwrap_or_else(|| name.to_string());
        let workspace = overrides
            .workspace
            .clone()
            .unwrap_or_else(|| catalog::DEFAULT_WORKSPACE.to_string());
        let mut errors = Vec::new();
        if !valid_machine_id(&machine_id) {
            errors.push(PlanError::MachineId(machine_id.clone()));
        }
        if gpus > MAX_GPUS {
            errors.push(PlanError::TooManyGpus(gpus));
        }
        let spec = match WorkerSpec::parse(spec_text) {
            Ok(s) => s,
            Err(e) => {
                errors.push(PlanError::Spec(e));
                return Err(PlanErrors(errors));
            }
        };
        if gpus == 0 {
            let connectors: Vec<_> = spec
                .items
                .iter()
                .filter(|i| i.binding == Binding::Gpu)
                .map(|i| i.connector)
                .collect();
            if !connectors.is_empty() {
                errors.push(PlanError::GpuBindingWithoutGpus { connectors });
            }
        }
        let settings = match Settings::read(&overrides.settings) {
            Ok(s) => Some(s),
            Err(mut e) => {
                errors.append(&mut e);
                None
            }
        };
        let Some(settings) = settings.filter(|_| errors.is_empty()) else {
            return Err(PlanErrors(errors));
        };
        let mut plan = allocate(
            name,
            profile,
            &machine_id,
            &workspace,
            &spec,
            gpus,
            profile.machine.health_port,
            &settings,
        );
        if !plan.workers.is_empty() {
            plan.worker_bundle = Some(
                profile
                    .worker_bundle
                    .clone()
                    .unwrap_or_else(WorkerBundle::catalog_default),
            );
            plan.install.insert(0, worker_bundle::WORKER_BUNDLE_INSTALL);
        }
        let comfyui = &profile.comfyui;
        let adds_to_comfyui = !(comfyui.packages.is_empty()
            && comfyui.custom_nodes.is_empty()
            && comfyui.models.is_empty());
        if adds_to_comfyui && plan.install.contains(&"comfyui") {
            plan.comfyui_install = Some(comfyui.clone());
        }
        let collisions = port_collisions(&plan);
        if collisions.is_empty() {
            Ok(plan)
        } else {
            Err(PlanErrors(collisions))
        }
    }

    /// Whether any process of the plan uses a GPU.
    pub fn uses_gpus(&self) -> bool {
        self.workers.iter().any(|w| w.gpu.is_some())
    }

    /// Every port the machine listens on, with its owner, health endpoint first.
    pub fn ports(&self) -> Vec<(u16, String)> {
        let mut v = vec![(self.health_port, "health endpoint".to_string())];
        v.extend(
            self.services
                .iter()
                .filter_map(|s| s.port.map(|p| (p, s.name.clone()))),
        );
        v
    }
}

/// The machine settings a plan reads, checked.
struct Settings {
    /// Worker variable → value, for the non-secret worker settings.
    worker: Vec<(&'static str, String)>,
    /// Service name → base port.
    base_ports: BTreeMap<&'static str, u16>,
}

impl Settings {
    fn read(given: &BTreeMap<String, String>) -> Result<Settings, Vec<PlanError>> {
        let value = |name: &str| given.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let mut errors = Vec::new();
        let worker = catalog::WORKER_SETTINGS
            .iter()
            .filter(|s| !s.secret)
            .map(|s| {
                (
                    s.worker_var,
                    value(s.setting).unwrap_or(s.default).to_string(),
                )
            })
            .collect();
        let mut base_ports = BTreeMap::new();
        for service in catalog::SERVICES {
            let port = match service
                .base_port_setting
                .and_then(|n| value(n).map(|v| (n, v)))
            {
                None => service.base_port,
                Some((name, v)) => match v.parse::<u16>() {
                    Ok(p) if p > 0 => p,
                    _ => {
                        errors.push(PlanError::Setting {
                            name: name.to_string(),
                            value: v.to_string(),
                            expected: "a port number from 1 to 65535".to_string(),
                        });
                        service.base_port
                    }
                },
            };
            base_ports.insert(service.name, port);
        }
        if errors.is_empty() {
            Ok(Settings { worker, base_ports })
        } else {
            Err(errors)
        }
    }
}

/// A worker before its service instance is known.
struct Draft {
    connector: &'static catalog::ConnectorEntry,
    binding: Binding,
    index: u32,
    gpu: Option<u32>,
}

#[allow(clippy::too_many_arguments)]
fn allocate(
    profile: &str,
    source: &Profile,
    machine_id: &str,
    workspace: &str,
    spec: &WorkerSpec,
    gpus: u32,
    health_port: u16,
    settings: &Settings,
) -> Plan {
    let drafts = drafts(spec, gpus);
    let (services_needed, services) = service_instances(&drafts, workspace, settings, source);
    let install = services_needed
        .iter()
        .copied()
        .filter(|s| catalog::service(s).is_some_and(|e| e.install.is_some()))
        .collect();

    let workers: Vec<WorkerInstance> = drafts
        .iter()
        .map(|d| {
            let instance = d
                .connector
                .service
                .and_then(|s| services.iter().find(|i| i.service == s && i.gpu == d.gpu));
            worker_instance(d, instance, machine_id, workspace, settings)
        })
        .collect();
    let secrets = secret_needs(&workers);

    Plan {
        profile: profile.to_string(),
        machine_id: machine_id.to_string(),
        worker_spec: spec.to_string(),
        gpus,
        health_port,
        workspace: workspace.to_string(),
        services_needed,
        install,
        services,
        workers,
        secrets,
        worker_bundle: None,
        comfyui_install: None,
        notes: spec_notes(spec),
    }
}

/// The spec's workers in spec order, each gpu-bound one pinned round-robin across the machine's `gpus`
/// (`auto`: one per GPU for a gpu binding, else one).
fn drafts(spec: &WorkerSpec, gpus: u32) -> Vec<Draft> {
    let mut drafts = Vec::new();
    let mut next_gpu = 0u32;
    for item in &spec.items {
        let entry = catalog::connector(item.connector).expect("spec items are catalog connectors");
        let count = match item.count {
            Count::Fixed(n) => n,
            Count::Auto if item.binding == Binding::Gpu => gpus,
            Count::Auto => 1,
        };
        for index in 0..count {
            let gpu = (item.binding == Binding::Gpu).then(|| {
                let g = next_gpu % gpus;
                next_gpu += 1;
                g
            });
            drafts.push(Draft {
                connector: entry,
                binding: item.binding,
                index,
                gpu,
            });
        }
    }
    drafts
}

/// The services the internal workers of `drafts` need, unique in first-use order, and their instances:
/// one per GPU used (or one per machine), in start order (by service first use, then GPU).
fn service_instances(
    drafts: &[Draft],
    workspace: &str,
    settings: &Settings,
    source: &Profile,
) -> (Vec<&'static str>, Vec<ServiceInstance>) {
    let mut services_needed: Vec<&'static str> = Vec::new();
    let mut instance_keys: Vec<(&'static str, Option<u32>)> = Vec::new();
    for d in drafts {
        if d.connector.kind != ConnectorKind::Internal {
            continue;
        }
        let service = d
            .connector
            .service
            .expect("internal connectors name a service");
        if !services_needed.contains(&service) {
            services_needed.push(service);
        }
        let key = (service, d.gpu);
        if !instance_keys.contains(&key) {
            instance_keys.push(key);
        }
    }
    // Start order: by service first use, then GPU.
    instance_keys.sort_by_key(|(s, g)| (services_needed.iter().position(|x| x == s), *g));
    let services = instance_keys
        .iter()
        .map(|(service, gpu)| service_instance(service, *gpu, workspace, settings, source))
        .collect();
    (services_needed, services)
}

/// The variables the workers need, by name, each with the connectors (once each, in worker order) and
/// workers that need it.
fn secret_needs(workers: &[WorkerInstance]) -> Vec<SecretNeed> {
    let mut secrets: BTreeMap<&'static str, SecretNeed> = BTreeMap::new();
    for w in workers {
        for s in &w.secrets {
            let need = secrets.entry(s).or_insert_with(|| SecretNeed {
                name: s,
                secret: catalog::is_secret(s),
                connectors: Vec::new(),
                workers: Vec::new(),
            });
            if !need.connectors.contains(&w.connector) {
                need.connectors.push(w.connector);
            }
            need.workers.push(w.name.clone());
        }
    }
    secrets.into_values().collect()
}

/// The plan's notes on the spec's names (see [`Plan::notes`]).
fn spec_notes(spec: &WorkerSpec) -> Vec<String> {
    let aliases = spec.aliases.iter().map(|a| {
        format!(
            "\"{}\" plans \"{}\" workers: {}",
            a.name, a.connector, a.reason
        )
    });
    let missing = spec.items.iter().filter_map(|item| {
        catalog::NOT_IN_STUDIED_BUNDLE
            .iter()
            .find(|(name, _)| *name == item.connector)
            .map(|(name, why)| format!("\"{name}\" workers: {why}"))
    });
    aliases.chain(missing).collect()
}

fn gpu_env(env: &mut BTreeMap<String, String>, gpu: Option<u32>) {
    env.insert("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into());
    match gpu {
        Some(g) => {
            env.insert("CUDA_VISIBLE_DEVICES".into(), g.to_string());
            env.insert("WORKER_GPU_ID".into(), g.to_string());
        }
        // Empty means no GPU at all; unset would mean every GPU.
        None => {
            env.insert("CUDA_VISIBLE_DEVICES".into(), String::new());
        }
    }
}

fn service_instance(
    service: &'static str,
    gpu: Option<u32>,
    workspace: &str,
    settings: &Settings,
    profile: &Profile,
) -> ServiceInstance {
    let entry = catalog::service(service).expect("planned services are catalog services");
    let base = settings.base_ports[service];
    let port = match gpu {
        Some(g) => base as u32 + entry.port_step as u32 * g,
        None => base as u32,
    };
    // Ports past 65535 cannot happen with MAX_GPUS and catalog bases; saturate rather than wrap.
    let port = u16::try_from(port).unwrap_or(u16::MAX);
    let x = |t: &str| catalog::expand(t, Some(port), gpu, workspace);
    let mut env: BTreeMap<String, String> = entry
        .env
        .iter()
        .map(|(k, v)| (k.to_string(), x(v)))
        .collect();
    env.insert("PORT".into(), port.to_string());
    gpu_env(&mut env, gpu);
    let readiness = match entry.readiness.probe {
        ProbeTemplate::Http { path } => Readiness::Http {
            url: format!("http://127.0.0.1:{port}{path}"),
            interval_ms: Some(entry.readiness.interval_ms.into()),
            timeout_ms: Some(entry.readiness.timeout_ms.into()),
        },
        ProbeTemplate::Tcp => Readiness::Tcp {
            host: Some("127.0.0.1".into()),
            port,
            interval_ms: Some(entry.readiness.interval_ms.into()),
            timeout_ms: Some(entry.readiness.timeout_ms.into()),
        },
    };
    ServiceInstance {
        name: match gpu {
            Some(g) => format!("{service}-gpu{g}"),
            None => format!("{service}-service"),
        },
        service,
        gpu,
        port: Some(port),
        script: x(entry.command.script),
        interpreter: entry.command.interpreter,
        args: service_args(entry, profile, &x),
        cwd: x(entry.command.cwd),
        dirs: entry.dirs.iter().map(|d| x(d)).collect(),
        env,
        readiness,
        restart: entry.lifecycle,
    }
}

/// A service instance's arguments: the catalog's, the CPU flag when the GPUs are simulated or the
/// profile asks for CPU mode, then the profile's extra arguments (checked by [`crate::load::check`]).
fn service_args(
    entry: &catalog::ServiceEntry,
    profile: &Profile,
    x: &dyn Fn(&str) -> String,
) -> Vec<String> {
    let mut args: Vec<String> = entry.command.args.iter().map(|a| x(a)).collect();
    let options = entry.profile_options.map(|options| options(profile));
    let cpu = profile.machine.gpu_mode == GpuMode::Mock || options.is_some_and(|o| o.cpu);
    if let (true, Some(flag)) = (cpu, entry.cpu_arg) {
        args.push(flag.to_string());
    }
    args.extend(options.into_iter().flat_map(|o| o.args.iter().cloned()));
    args
}

fn worker_instance(
    draft: &Draft,
    instance: Option<&ServiceInstance>,
    machine_id: &str,
    workspace: &str,
    settings: &Settings,
) -> WorkerInstance {
    let (entry, binding, index, gpu) = (draft.connector, draft.binding, draft.index, draft.gpu);
    let port = instance.and_then(|i| i.port);
    let x = |t: &str| catalog::expand(t, port, gpu, workspace);
    let worker_id = format!("{machine_id}-worker-{}-{index}", entry.name);
    let mut env: BTreeMap<String, String> = entry
        .worker_env
        .iter()
        .map(|(k, v)| (k.to_string(), x(v)))
        .collect();
    env.insert("WORKER_ID".into(), worker_id.clone());
    env.insert("MACHINE_ID".into(), machine_id.to_string());
    // The worker reads WORKERS first, then WORKER_CONNECTORS, then CONNECTORS: each names its own type.
    for var in catalog::MACHINE_WIDE_WORKER_VARS {
        env.insert(var.to_string(), entry.name.to_string());
    }
    for (k, v) in catalog::WORKER_FIXED_ENV {
        env.insert(k.to_string(), v.to_string());
    }
    for (var, value) in &settings.worker {
        env.insert(var.to_string(), value.clone());
    }
    gpu_env(&mut env, gpu);
    WorkerInstance {
        name: format!("{}-worker-{index}", entry.name),
        worker_id,
        connector: entry.name,
        binding,
        index,
        gpu,
        service_instance: instance.map(|i| i.name.clone()),
        advertises: entry.advertises.to_vec(),
        script: x(entry.worker.script),
        interpreter: entry.worker.interpreter,
        args: entry.worker.args.iter().map(|a| x(a)).collect(),
        cwd: x(entry.worker.cwd),
        env,
        secrets: entry.needs().collect(),
        restart: entry.lifecycle,
    }
}

fn port_collisions(plan: &Plan) -> Vec<PlanError> {
    let mut seen: BTreeMap<u16, String> = BTreeMap::new();
    let mut errors = Vec::new();
    for (port, owner) in plan.ports() {
        match seen.get(&port) {
            Some(first) => errors.push(PlanError::PortCollision {
                port,
                first: first.clone(),
                second: owner,
            }),
            None => {
                seen.insert(port, owner);
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(workers: &str, gpus: u32) -> Profile {
        serde_json::from_value(serde_json::json!({
            "description": "test", "workers": workers, "machine": {"gpus": gpus, "ram_gb": 16}
        }))
        .unwrap()
    }

    /// Plans `workers` on `gpus` GPUs and renders a compact summary (or the errors).
    fn check(workers: &str, gpus: u32, expected: &str) {
        let actual = match Plan::build("m", &profile(workers, gpus), &Overrides::default()) {
            Ok(plan) => summary(&plan),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(actual.trim(), expected.trim(), "{workers} on {gpus} GPUs");
    }

    fn summary(plan: &Plan) -> String {
        let mut s = format!(
            "install:{}\n",
            plan.install
                .iter()
                .map(|i| format!(" {i}"))
                .collect::<String>()
        );
        for i in &plan.services {
            s += &format!(
                "service {} port {} gpu {:?}\n",
                i.name,
                i.port.unwrap_or(0),
                i.gpu
            );
        }
        for w in &plan.workers {
            s += &format!(
                "worker {} {} gpu {:?} -> {}\n",
                w.name,
                w.binding,
                w.gpu,
                w.service_instance.as_deref().unwrap_or("-")
            );
        }
        s
    }

    #[test]
    fn seed_dual_gpu_comfyui() {
        check(
            "comfyui:4:gpu",
            2,
            "
install: worker-bundle comfyui
service comfyui-gpu0 port 8188 gpu Some(0)
service comfyui-gpu1 port 8189 gpu Some(1)
worker comfyui-worker-0 gpu gpu Some(0) -> comfyui-gpu0
worker comfyui-worker-1 gpu gpu Some(1) -> comfyui-gpu1
worker comfyui-worker-2 gpu gpu Some(0) -> comfyui-gpu0
worker comfyui-worker-3 gpu gpu Some(1) -> comfyui-gpu1",
        );
    }

    /// The command line of each comfyui instance of `profile` (JSON), one line per instance.
    fn comfyui_commands(profile: serde_json::Value) -> Vec<String> {
        let profile: Profile = serde_json::from_value(profile).unwrap();
        let plan = Plan::build("m", &profile, &Overrides::default()).unwrap();
        plan.services
            .iter()
            .filter(|s| s.service == "comfyui")
            .map(|s| format!("{} {}", s.script, s.args.join(" ")))
            .collect()
    }

    #[test]
    fn the_comfyui_command_follows_gpu_mode_cpu_and_args() {
        let base = |machine: serde_json::Value, comfyui: serde_json::Value| {
            serde_json::json!({
                "description": "d", "workers": "comfyui:2:gpu",
                "machine": machine, "comfyui": comfyui,
            })
        };
        let real = serde_json::json!({"gpus": 2, "ram_gb": 8});
        let mock = serde_json::json!({"gpus": 2, "ram_gb": 8, "gpu_mode": "mock"});
        let own = |g: u32| {
            format!(
                "/workspace/ComfyUI/venv/bin/python main.py --listen 0.0.0.0 --port {} \
                 --output-directory /workspace/ComfyUI/output/gpu{g} --temp-directory /workspace/ComfyUI/temp/gpu{g}",
                8188 + g
            )
        };
        // Real GPUs, no options: the machine's own arguments, one output and temp folder per GPU.
        assert_eq!(
            comfyui_commands(base(real.clone(), serde_json::json!({}))),
            [own(0), own(1)]
        );
        // Simulated GPUs: --cpu.
        assert_eq!(
            comfyui_commands(base(mock.clone(), serde_json::json!({}))),
            [format!("{} --cpu", own(0)), format!("{} --cpu", own(1))]
        );
        // The profile asks for CPU mode on real GPUs, with extra arguments after the machine's.
        assert_eq!(
            comfyui_commands(base(
                real,
                serde_json::json!({"cpu": true, "args": ["--preview-method", "auto", "a b"]})
            )),
            [
                format!("{} --cpu --preview-method auto a b", own(0)),
                format!("{} --cpu --preview-method auto a b", own(1))
            ]
        );
        // Both: one --cpu.
        assert_eq!(
            comfyui_commands(base(
                mock,
                serde_json::json!({"cpu": true, "args": ["--fast"]})
            ))[1],
            format!("{} --cpu --fast", own(1))
        );
        // The folders the runtime creates are the ones on the command line.
        let profile: Profile = serde_json::from_value(base(
            serde_json::json!({"gpus": 2, "ram_gb": 8}),
            serde_json::json!({}),
        ))
        .unwrap();
        let plan = Plan::build("m", &profile, &Overrides::default()).unwrap();
        assert_eq!(
            plan.services[1].dirs,
            [
                "/workspace/ComfyUI/output/gpu1",
                "/workspace/ComfyUI/temp/gpu1"
            ]
        );
    }

    #[test]
    fn other_services_take_no_comfyui_options() {
        let profile: Profile = serde_json::from_value(serde_json::json!({
            "description": "d", "workers": "simulation-websocket:2:gpu",
            "machine": {"gpus": 2, "ram_gb": 8, "gpu_mode": "mock"},
        }))
        .unwrap();
        let plan = Plan::build("m", &profile, &Overrides::default()).unwrap();
        assert_eq!(
            plan.services[0].args,
            ["--host", "0.0.0.0", "--port", "8399"]
        );
        assert!(plan.services[0].dirs.is_empty());
    }

    #[test]
    fn seed_mixed_workload() {
        check(
            "comfyui:2:gpu,openai:6:shared,simulation-websocket:1:cpu",
            2,
            "
install: worker-bundle comfyui
service comfyui-gpu0 port 8188 gpu Some(0)
service comfyui-gpu1 port 8189 gpu Some(1)
service simulation-service port 8399 gpu None
worker comfyui-worker-0 gpu gpu Some(0) -> comfyui-gpu0
worker comfyui-worker-1 gpu gpu Some(1) -> comfyui-gpu1
worker openai-worker-0 shared gpu None -> -
worker openai-worker-1 shared gpu None -> -
worker openai-worker-2 shared gpu None -> -
worker openai-worker-3 shared gpu None -> -
worker openai-worker-4 shared gpu None -> -
worker openai-worker-5 shared gpu None -> -
worker simulation-websocket-worker-0 cpu gpu None -> simulation-service",
        );
    }

    #[test]
    fn round_robin_spans_connectors_and_services_share_an_install() {
        check(
            "comfyui:1,emprops-app:2,simulation-websocket:auto",
            3,
            "
install: worker-bundle comfyui
service comfyui-gpu0 port 8188 gpu Some(0)
service comfyui-gpu1 port 8189 gpu Some(1)
service comfyui-gpu2 port 8190 gpu Some(2)
service simulation-gpu0 port 8399 gpu Some(0)
service simulation-gpu1 port 8400 gpu Some(1)
service simulation-gpu2 port 8401 gpu Some(2)
worker comfyui-worker-0 gpu gpu Some(0) -> comfyui-gpu0
worker emprops-app-worker-0 gpu gpu Some(1) -> comfyui-gpu1
worker emprops-app-worker-1 gpu gpu Some(2) -> comfyui-gpu2
worker simulation-websocket-worker-0 gpu gpu Some(0) -> simulation-gpu0
worker simulation-websocket-worker-1 gpu gpu Some(1) -> simulation-gpu1
worker simulation-websocket-worker-2 gpu gpu Some(2) -> simulation-gpu2",
        );
    }

    #[test]
    fn oversubscription_and_unused_gpus() {
        // More workers than GPUs share instances; a GPU without workers gets no instance.
        check(
            "comfyui:3",
            4,
            "
install: worker-bundle comfyui
service comfyui-gpu0 port 8188 gpu Some(0)
service comfyui-gpu1 port 8189 gpu Some(1)
service comfyui-gpu2 port 8190 gpu Some(2)
worker comfyui-worker-0 gpu gpu Some(0) -> comfyui-gpu0
worker comfyui-worker-1 gpu gpu Some(1) -> comfyui-gpu1
worker comfyui-worker-2 gpu gpu Some(2) -> comfyui-gpu2",
        );
        check(
            "simulation-websocket:5",
            1,
            "
install: worker-bundle
service simulation-gpu0 port 8399 gpu Some(0)
worker simulation-websocket-worker-0 gpu gpu Some(0) -> simulation-gpu0
worker simulation-websocket-worker-1 gpu gpu Some(0) -> simulation-gpu0
worker simulation-websocket-worker-2 gpu gpu Some(0) -> simulation-gpu0
worker simulation-websocket-worker-3 gpu gpu Some(0) -> simulation-gpu0
worker simulation-websocket-worker-4 gpu gpu Some(0) -> simulation-gpu0",
        );
    }

    #[test]
    fn zero_gpus() {
        check(
            "comfyui:2,openai:1,simulation-websocket:1",
            0,
            "error: gpu-bound workers (comfyui, simulation-websocket) on a machine planned with 0 GPUs; set machine.gpus (or --gpus) or bind them to cpu where the connector allows it",
        );
        check(
            "openai:2,simulation-websocket:auto:cpu",
            0,
            "
install: worker-bundle
service simulation-service port 8399 gpu None
worker openai-worker-0 shared gpu None -> -
worker openai-worker-1 shared gpu None -> -
worker simulation-websocket-worker-0 cpu gpu None -> simulation-service",
        );
    }

    #[test]
    fn bad_spec_and_too_many_gpus_reported_together() {
        check(
            "comfyui:0",
            65,
            "error: 65 GPUs planned; at most 64 are supported\nworker spec item 1 \"comfyui:0\" (column 9): count is 0; expected a positive integer or \"auto\" (remove the item to run no such workers)",
        );
    }

    #[test]
    fn port_collisions() {
        let mut p = profile("comfyui:1", 1);
        p.machine.health_port = 8188;
        let err = Plan::build("m", &p, &Overrides::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "port 8188 is wanted by both health endpoint and comfyui-gpu0; change one of them (e.g. machine.health_port)"
        );
        // simulation on 64 GPUs runs 8399..8462; the health port sits inside that range.
        let mut p = profile("simulation-websocket:auto", 64);
        p.machine.health_port = 8400;
        let err = Plan::build("m", &p, &Overrides::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("port 8400 is wanted by both health endpoint and simulation-gpu1"),
            "{err}"
        );
    }

    #[test]
    fn worker_environment_and_ids() {
        let plan = Plan::build(
            "gpu-mixed",
            &profile("comfyui:2:gpu,openai:1", 2),
            &Overrides {
                machine_id: Some("m1".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        let w = &plan.workers[1];
        let env: Vec<String> = w.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            env,
            [
                "COMFYUI_HOST=127.0.0.1",
                "COMFYUI_PORT=8189",
                "CONNECTORS=comfyui",
                "CUDA_DEVICE_ORDER=PCI_BUS_ID",
                "CUDA_VISIBLE_DEVICES=1",
                "DEBUGGING_ENABLED=false",
                "DEVELOPMENT_MODE=false",
                "JOB_TIMEOUT_MINUTES=30",
                "LOG_LEVEL=info",
                "MACHINE_ID=m1",
                "NODE_ENV=production",
                "POLL_INTERVAL_MS=1000",
                "QUALITY_LEVELS=fast,balanced,quality",
                "UNIFIED_MACHINE_STATUS=true",
                "WORKERS=comfyui",
                "WORKER_CONNECTORS=comfyui",
                "WORKER_GPU_ID=1",
                "WORKER_ID=m1-worker-comfyui-1",
            ]
        );
        assert_eq!(
            (w.script.as_str(), w.interpreter, w.cwd.as_str()),
            (
                "redis-direct-worker.js",
                "node",
                "/workspace/worker-bundled"
            )
        );
        let openai = &plan.workers[2];
        assert_eq!(openai.env["CUDA_VISIBLE_DEVICES"], "");
        assert!(!openai.env.contains_key("WORKER_GPU_ID"));
        assert_eq!(
            openai.secrets,
            [
                "OPENAI_API_KEY",
                "OPENAI_IMAGE_MODEL",
                "CLOUD_STORAGE_PROVIDER"
            ]
        );
        assert_eq!(plan.secrets.len(), 3);
        assert_eq!(plan.secrets[1].name, "OPENAI_API_KEY");
        assert!(plan.secrets[1].secret && !plan.secrets[0].secret);
        assert_eq!(plan.secrets[1].workers, ["openai-worker-0"]);
        // Values of needed variables never go into the plan.
        assert!(!openai.env.contains_key("OPENAI_API_KEY"));
        // ComfyUI is pinned by the environment only, never with --cuda-device.
        assert!(
            !plan.services[0]
                .args
                .iter()
                .any(|a| a.contains("cuda-device"))
        );
    }

    #[test]
    fn settings_move_base_ports_and_reach_the_workers() {
        let settings: BTreeMap<String, String> = [
            ("SIMULATION_BASE_PORT", "18000"),
            ("WORKER_POLL_INTERVAL_MS", "250"),
            ("WORKER_WEBSOCKET_AUTH_TOKEN", "s3cret"),
            ("UNRELATED", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let overrides = Overrides {
            settings,
            ..Overrides::default()
        };
        let plan = Plan::build("p", &profile("simulation-websocket:2", 2), &overrides).unwrap();
        assert_eq!(plan.services[1].port, Some(18001));
        let w = &plan.workers[1];
        assert_eq!(w.env["SIMULATION_WEBSOCKET_URL"], "ws://127.0.0.1:18001");
        assert_eq!(w.env["POLL_INTERVAL_MS"], "250");
        // A secret setting is passed by name at spawn time, never planned.
        assert!(w.env.values().all(|v| v != "s3cret"));
        assert!(!w.env.contains_key("WEBSOCKET_AUTH_TOKEN"));
        assert_eq!(
            plan.worker_bundle.as_ref().unwrap().source,
            worker_bundle::DEFAULT_WORKER_BUNDLE_URL
        );

        let overrides = Overrides {
            settings: [("COMFYUI_BASE_PORT".to_string(), "http".to_string())].into(),
            ..Overrides::default()
        };
        let err = Plan::build("p", &profile("comfyui:1", 1), &overrides).unwrap_err();
        assert_eq!(
            err.to_string(),
            "COMFYUI_BASE_PORT=\"http\" is not usable; expected a port number from 1 to 65535"
        );
    }

    /// The process names of a plan: services, then workers with their GPU.
    fn processes(plan: &Plan) -> (Vec<&str>, Vec<String>) {
        (
            plan.services.iter().map(|s| s.name.as_str()).collect(),
            plan.workers
                .iter()
                .map(|w| match w.gpu {
                    Some(g) => format!("{} (gpu:{g})", w.name),
                    None => format!("{} ({})", w.name, w.binding),
                })
                .collect(),
        )
    }

    #[test]
    fn the_seeds_examples_plan_the_seeds_processes() {
        // seed-plan.md §3.2 "Dual-GPU ComfyUI Machine", written with the seed's comfyui-websocket name.
        let plan = Plan::build(
            "p",
            &profile("comfyui:2:gpu,comfyui-websocket:2:gpu", 2),
            &Overrides::default(),
        )
        .unwrap();
        let (services, workers) = processes(&plan);
        assert_eq!(services, ["comfyui-gpu0", "comfyui-gpu1"]);
        assert_eq!(
            workers,
            [
                "comfyui-worker-0 (gpu:0)",
                "comfyui-worker-1 (gpu:1)",
                "comfyui-worker-2 (gpu:0)",
                "comfyui-worker-3 (gpu:1)"
            ]
        );
        assert_eq!(plan.worker_spec, "comfyui:4:gpu");
        assert_eq!(plan.notes.len(), 1, "{:?}", plan.notes);
        assert!(
            plan.notes[0].starts_with("\"comfyui-websocket\" plans \"comfyui\" workers: "),
            "{:?}",
            plan.notes
        );

        // §3.2 "Mixed Workload Machine".
        let plan = Plan::build(
            "p",
            &profile("comfyui:2:gpu,openai:6:shared,playwright:1:cpu", 2),
            &Overrides::default(),
        )
        .unwrap();
        let (services, workers) = processes(&plan);
        assert_eq!(
            services,
            ["comfyui-gpu0", "comfyui-gpu1", "playwright-service"]
        );
        let mut expected = vec![
            "comfyui-worker-0 (gpu:0)".to_owned(),
            "comfyui-worker-1 (gpu:1)".to_owned(),
        ];
        expected.extend((0..6).map(|i| format!("openai-worker-{i} (shared)")));
        expected.push("playwright-worker-0 (cpu)".to_owned());
        assert_eq!(workers, expected);
        assert_eq!(plan.install, ["worker-bundle", "comfyui", "playwright"]);
        let playwright = plan.workers.last().unwrap();
        assert_eq!(
            playwright.service_instance.as_deref(),
            Some("playwright-service")
        );
        assert_eq!(playwright.env["PLAYWRIGHT_PORT"], "3100");
        assert_eq!(playwright.env["WORKERS"], "playwright");
        assert_eq!(plan.notes.len(), 1, "{:?}", plan.notes);
        assert!(
            plan.notes[0].contains("no \"playwright\" type, so `up` refuses these workers"),
            "{:?}",
            plan.notes
        );
        // A plan without either name has no notes (and its JSON no `notes` field).
        let plain = Plan::build("p", &profile("openai:1", 0), &Overrides::default()).unwrap();
        assert!(plain.notes.is_empty());
        assert!(serde_json::to_value(&plain).unwrap().get("notes").is_none());
    }

    #[test]
    fn overrides_replace_spec_and_gpus() {
        let plan = Plan::build(
            "p",
            &profile("openai:1", 0),
            &Overrides {
                workers: Some("simulation-websocket:auto".into()),
                gpus: Some(2),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(plan.worker_spec, "simulation-websocket:auto:gpu");
        assert_eq!(plan.workers.len(), 2);
    }

    #[test]
    fn plans_ten_thousand_workers() {
        let plan = Plan::build(
            "p",
            &profile("comfyui:5000,openai:5000", 8),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(plan.workers.len(), 10_000);
        assert_eq!(plan.services.len(), 8);
        assert_eq!(plan.workers[4999].gpu, Some(4999 % 8));
    }
}
