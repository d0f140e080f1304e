//! The profile: `profiles/<name>.json`, one machine's description. Doc comments here become the JSON
//! Schema descriptions (the editor's tooltips), so every public field has one.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The one `$schema` a profile may give: the generated schema, relative to `profiles/` (where every profile
/// lives), so an editor finds it. Any other value is refused by [`crate::load::check`]: a wrong path silently
/// turns off the editor's completion and checking.
pub const SCHEMA_REF: &str = "../schemas/profile.schema.json";

/// A machine profile: components, workers, expected hardware, Docker options and extra environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The JSON Schema this file is completed and checked against (`../schemas/profile.schema.json`).
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// What this machine is for, in one sentence; shown by `cargo xtask list` and in generated files.
    pub description: String,
    /// Components and the section (or ordered list of sections, later wins) selected for each, merged in this order.
    #[serde(default)]
    pub components: Components,
    /// The worker spec: `connector:count[:binding]` items separated by commas, e.g. `comfyui:2:gpu,openai:4:shared`.
    pub workers: String,
    /// Where the worker bundle comes from; the latest release of the existing job queue when absent.
    /// `WORKER_BUNDLE_URL` in the environment overrides it at install time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_bundle: Option<WorkerBundle>,
    /// The hardware this machine is planned for and its identity.
    pub machine: MachineSpec,
    /// How many machines of this profile make up the fleet: the StatefulSet's replicas in the generated
    /// kubernetes.yaml (machine ids `<profile>-0` … `<profile>-<replicas-1>`); Compose runs one.
    #[serde(default = "default_replicas")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000)))]
    pub replicas: u32,
    /// What the generated docker-compose.yaml contains besides the machine itself.
    #[serde(default)]
    pub docker: DockerOptions,
    /// Extra variables written into the generated .env (values are literal strings).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// ComfyUI's command line, extra Python packages, custom nodes and models; used when a connector of the
    /// profile runs on the `comfyui` service.
    #[serde(default, skip_serializing_if = "ComfyuiOptions::is_default")]
    pub comfyui: ComfyuiOptions,
}

/// ComfyUI options of a profile: the command line of every instance and what the install adds to
/// ComfyUI (venv packages, custom nodes, models), all pinned so an image builds the same way next year.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ComfyuiOptions {
    /// Run every instance on the CPU (`--cpu`) even on real GPUs; implied by `machine.gpu_mode: mock`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cpu: bool,
    /// Extra arguments for every instance, after the machine's own (`--listen`, `--port`, `--cpu` and the
    /// per-instance folders may not be repeated here); `COMFY_ARGS` at start adds more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra Python requirements for ComfyUI's venv, pinned as `name==version` (pip's requirement syntax);
    /// installed with the constraints of ComfyUI's commit, so a version they pin must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// Custom nodes checked out into `ComfyUI/custom_nodes/<name>`, in `install_order`, then as listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_nodes: Vec<ComfyuiCustomNode>,
    /// Model files downloaded into `ComfyUI/models/<folder>/`, each checked against its SHA-256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ComfyuiModel>,
}

impl ComfyuiOptions {
    /// Whether nothing is set (the field is then left out when a profile is written).
    pub(crate) fn is_default(&self) -> bool {
        *self == ComfyuiOptions::default()
    }
}

/// A ComfyUI custom node, pinned to a commit (the old machine's per-deployment node list, spec §4.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ComfyuiCustomNode {
    /// Folder name under `custom_nodes/` (letters, digits, `_`, `-`, `.`; not starting with `.` or `-`).
    #[cfg_attr(
        feature = "schema",
        schemars(regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"))
    )]
    pub name: String,
    /// The node's git repository (`https://`, `http://`, `ssh://`, `git@host:path`, `file://` or an absolute path).
    pub url: String,
    /// The full 40-hex commit to check out (branches and tags move, so they are refused).
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^[0-9a-fA-F]{40}$")))]
    pub commit: String,
    /// Whether to `pip install -r requirements.txt` of the node into ComfyUI's venv.
    #[serde(default = "default_true")]
    pub requirements: bool,
    /// Lower numbers install first; nodes without one install after those with one, as listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_order: Option<u32>,
    /// Extra environment variables for the node's git and pip commands (literal strings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// A model file for ComfyUI, downloaded once and checked against its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ComfyuiModel {
    /// Where to download it from (`https://`, `http://` or `file://`).
    pub url: String,
    /// The file's SHA-256 (64 hex digits); a download that differs is deleted and the install fails.
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^[0-9a-fA-F]{64}$")))]
    pub sha256: String,
    /// The folder under `ComfyUI/models/` (e.g. `checkpoints`, `loras`, `vae`).
    pub folder: String,
    /// The file name in that folder; the last segment of the URL's path when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

fn default_true() -> bool {
    true
}

/// The worker bundle's source: a release tarball or a local folder (installed into
/// `$WORKSPACE_DIR/worker-bundled` by `machine-runtime install`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct WorkerBundle {
    /// An `https://`, `http://` or `file://` URL of a `.tar.gz` whose one top folder is stripped, or an
    /// absolute path of a local folder (or `.tar.gz`).
    pub source: String,
    /// The bundle's version, for people and the install marker (e.g. `1.4.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The tarball's SHA-256 (64 hex digits); the install fails when the download differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^[0-9a-fA-F]{64}$")))]
    pub sha256: Option<String>,
}

impl WorkerBundle {
    /// The catalog's default: the latest release tarball, no checksum.
    pub fn catalog_default() -> WorkerBundle {
        WorkerBundle {
            source: crate::worker_bundle::DEFAULT_WORKER_BUNDLE_URL.to_string(),
            version: None,
            sha256: None,
        }
    }
}

/// Per component, the sections selected, in merge order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Components(pub Vec<(String, Selection)>);

impl Components {
    /// The selection of a component, if the profile has it.
    pub fn get(&self, component: &str) -> Option<&Selection> {
        self.0.iter().find(|(c, _)| c == component).map(|(_, s)| s)
    }
}

impl Serialize for Components {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Components {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Components;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object mapping component names to a section or a list of sections")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Components, A::Error> {
                let mut out: Vec<(String, Selection)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Selection>()? {
                    if out.iter().any(|(c, _)| *c == k) {
                        return Err(serde::de::Error::custom(format!(
                            "component \"{k}\" is listed twice"
                        )));
                    }
                    out.push((k, v));
                }
                Ok(Components(out))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Components {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Components".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let selection = generator.subschema_for::<Selection>();
        schemars::json_schema!({
            "description": "Component name → the section (or ordered list of sections, later wins) to take from profiles/components/<component>.env. Components merge in the order written.",
            "type": "object",
            "propertyNames": { "pattern": "^[a-z][a-z0-9_-]*$" },
            "additionalProperties": selection,
        })
    }
}

/// One section, or an ordered list of sections where later ones win.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum Selection {
    /// A single section, e.g. `"local"`.
    One(String),
    /// Sections applied in order, e.g. `["default", "local"]`.
    Many(Vec<String>),
}

impl Selection {
    /// The sections in merge order.
    pub fn sections(&self) -> Vec<&str> {
        match self {
            Selection::One(s) => vec![s.as_str()],
            Selection::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// Expected hardware and identity of the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MachineSpec {
    /// The machine id reported to the broker (`MACHINE_ID`); defaults to the profile name. Stable across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"))
    )]
    pub id: Option<String>,
    /// How many GPUs the machine is planned for; 0 for a CPU-only machine.
    #[cfg_attr(feature = "schema", schemars(range(max = 64)))]
    pub gpus: u32,
    /// Memory the machine is expected to have, in GiB.
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub ram_gb: u32,
    /// The GPU model the plan expects, as NVML names it (`nvidia-smi --query-gpu=name`, e.g. `NVIDIA GeForce RTX 4090`):
    /// reported, not enforced by the runtime; in kubernetes.yaml the node selector `nvidia.com/gpu.product`
    /// (GPU Feature Discovery's spelling: spaces become '-').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// Whether the runtime may re-plan on fewer GPUs than planned instead of refusing to start.
    #[serde(default)]
    pub allow_fewer_gpus: bool,
    /// Port of the health endpoint (`MACHINE_HEALTH_PORT`); must not collide with a service port.
    #[serde(default = "default_health_port")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub health_port: u16,
    /// `actual`: the planned GPUs are real NVIDIA GPUs (Compose reserves them). `mock`: they are simulated
    /// (`MACHINE_FAKE_GPUS`, no reservation), so the machine runs on any host; for simulation-only profiles.
    #[serde(default, skip_serializing_if = "GpuMode::is_actual")]
    pub gpu_mode: GpuMode,
    /// How the nodes' GPUs are shared among pods in Kubernetes (the NVIDIA device plugin's sharing,
    /// as GPU Feature Discovery labels it): decides the resource the pod requests and its node selector
    /// in kubernetes.yaml. Default `exclusive`: whole GPUs.
    #[serde(default, skip_serializing_if = "GpuSharing::is_exclusive")]
    pub gpu_sharing: GpuSharing,
}

/// How a Kubernetes node's GPUs are shared among pods: the NVIDIA device plugin's modes, and what GPU
/// Feature Discovery (GFD) labels such a node with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "mode", deny_unknown_fields)]
pub enum GpuSharing {
    /// Whole GPUs (`nvidia.com/gpu`), on nodes whose `nvidia.com/gpu.product` is the GPU model itself
    /// (a node that shares its GPUs has another product label, so it is never chosen).
    #[default]
    #[serde(rename = "exclusive")]
    Exclusive,
    /// Time-sliced replicas of a GPU (the device plugin's `sharing.timeSlicing`), no memory isolation:
    /// nodes with `nvidia.com/gpu.replicas` above 1. `renamed`: the plugin's `renameByDefault: true`,
    /// so the resource is `nvidia.com/gpu.shared` and the product label keeps its name; otherwise the
    /// resource is `nvidia.com/gpu` and GFD suffixes the product label with `-SHARED`.
    #[serde(rename = "time-slicing")]
    TimeSlicing {
        #[serde(default)]
        renamed: bool,
    },
    /// Multi-Instance GPU slices of one profile (e.g. `1g.10gb`), with the device plugin's MIG strategy:
    /// `single` (every GPU of the node cut alike; the resource is `nvidia.com/gpu`, GFD's product label
    /// `<product>-MIG-<profile>`), or `mixed` (the resource is `nvidia.com/mig-<profile>`).
    #[serde(rename = "mig")]
    Mig {
        strategy: MigStrategy,
        /// The MIG profile: `<compute slices>g.<memory>gb`, optionally `+me` (e.g. `1g.10gb`, `3g.40gb`).
        #[cfg_attr(
            feature = "schema",
            schemars(regex(pattern = r"^[1-9][0-9]?g\.[1-9][0-9]{0,3}gb(\+me)?$"))
        )]
        profile: String,
    },
}

impl GpuSharing {
    /// The default: whole GPUs.
    pub fn is_exclusive(&self) -> bool {
        *self == Self::Exclusive
    }
}

/// The NVIDIA device plugin's `migStrategy`, as GFD's `nvidia.com/mig.strategy` label spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum MigStrategy {
    /// Every GPU of the node is cut into slices of one profile, advertised as `nvidia.com/gpu`.
    Single,
    /// Slices of several profiles, each advertised as `nvidia.com/mig-<profile>`.
    Mixed,
}

/// Whether a machine's planned GPUs are real or simulated (`MACHINE_GPU_MODE`, the existing system's name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum GpuMode {
    /// Real GPUs, detected with NVML and reserved by Compose.
    #[default]
    #[serde(rename = "actual")]
    Actual,
    /// Simulated GPUs: the runtime fakes the planned count, Compose reserves nothing.
    #[serde(rename = "mock")]
    Mock,
}

impl GpuMode {
    /// The spelling in profiles and in `MACHINE_GPU_MODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            GpuMode::Actual => "actual",
            GpuMode::Mock => "mock",
        }
    }

    /// Whether this is the default, real GPUs.
    pub(crate) fn is_actual(&self) -> bool {
        *self == GpuMode::Actual
    }
}

/// The fewest and most machines one profile's fleet may have.
pub const REPLICAS_RANGE: std::ops::RangeInclusive<u32> = 1..=1000;

fn default_replicas() -> u32 {
    1
}

/// The health endpoint's default port (`MACHINE_HEALTH_PORT`).
pub const DEFAULT_HEALTH_PORT: u16 = 9090;

fn default_health_port() -> u16 {
    DEFAULT_HEALTH_PORT
}

/// Docker Compose options for the generated docker-compose.yaml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DockerOptions {
    /// Publish service and health ports on the host (for debugging); off in production.
    #[serde(default)]
    pub expose_ports: bool,
    /// The host address published ports bind to (Compose's `host_ip`): `127.0.0.1`, this host only, by
    /// default; `0.0.0.0` publishes them to every network the host is on.
    #[serde(default = "default_host_ip")]
    pub host_ip: std::net::Ipv4Addr,
    /// The machine container's restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// CPU and memory limits of the machine container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Extra volumes of the machine container, in Compose short syntax (`name:/path` or `./dir:/path[:ro]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Size of /dev/shm for the machine container (e.g. `8g`; PyTorch data loaders need more than Docker's 64m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^[0-9]+[bkmg]?$")))]
    pub shm_size: Option<String>,
    /// Additional services (e.g. a local Redis), each included only when its condition holds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, ExtraService>,
    /// Several machines of this profile on one multi-GPU host: the compose file gets one service per
    /// machine (`machine-0` …), each with its own `machine.gpus` GPUs by index (`device_ids`), its own
    /// machine id (`<MACHINE_ID>-<n>`) and, with `expose_ports`, its own published ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostSharing>,
}

/// How several machines share one host in Compose (`docker.host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HostSharing {
    /// GPUs the host has (`nvidia-smi -L` lines); the machines' GPUs must fit in them.
    #[cfg_attr(feature = "schema", schemars(range(max = 64)))]
    pub gpus: u32,
    /// How many machines run on the host; machine `n` gets GPUs `n × machine.gpus` onwards.
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 64)))]
    pub machines: u32,
}

/// The fewest and most machines one host may run (`docker.host.machines`).
pub const HOST_MACHINES_RANGE: std::ops::RangeInclusive<u32> = 1..=64;

impl Default for DockerOptions {
    fn default() -> Self {
        DockerOptions {
            expose_ports: false,
            host_ip: default_host_ip(),
            restart: RestartPolicy::default(),
            resources: None,
            volumes: Vec::new(),
            shm_size: None,
            services: BTreeMap::new(),
            host: None,
        }
    }
}

fn default_host_ip() -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::LOCALHOST
}

/// A Compose restart policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum RestartPolicy {
    /// Never restart the container.
    #[serde(rename = "no")]
    No,
    /// Always restart it.
    #[serde(rename = "always")]
    Always,
    /// Restart it when it exits non-zero.
    #[serde(rename = "on-failure")]
    OnFailure,
    /// Restart it unless it was stopped by hand.
    #[default]
    #[serde(rename = "unless-stopped")]
    UnlessStopped,
}

impl RestartPolicy {
    /// The Compose spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::UnlessStopped => "unless-stopped",
        }
    }
}

/// Resource limits of the machine container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU limit in cores, e.g. `8` or `7.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0.01)))]
    pub cpus: Option<f64>,
    /// Memory limit, e.g. `48g`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^[0-9]+[bkmg]$")))]
    pub memory: Option<String>,
}

/// An additional Compose service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ExtraService {
    /// The image to run, e.g. `redis:7-alpine`.
    pub image: String,
    /// Include the service only when this holds; always included when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// The command, as a list of arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Container ports, published on the host (on `docker.host_ip`) only when `docker.expose_ports` is on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Volumes in Compose short syntax; named volumes are declared automatically.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Environment of the service (literal values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Health check; the machine waits for it (`service_healthy`) when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// Also run this service in the generated kubernetes.yaml (a Deployment and a Service of the same name,
    /// reachable at the same host name); off by default, because a fleet normally uses the central broker.
    /// Needs `ports`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kubernetes: bool,
}

/// A typed inclusion condition, checked at build time against the profile's components.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The component whose selection is tested (a key of `components`).
    pub component: String,
    /// Holds when this section is among the component's selected sections.
    pub variant: String,
}

impl Condition {
    /// Whether the condition holds for a profile's components.
    pub fn holds(&self, components: &Components) -> bool {
        components
            .get(&self.component)
            .is_some_and(|s| s.sections().contains(&self.variant.as_str()))
    }
}

/// A Compose health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    /// The probe command, exec form (`["redis-cli", "ping"]`).
    pub test: Vec<String>,
    /// Seconds between probes.
    #[serde(default = "default_interval")]
    pub interval_s: u32,
    /// Seconds one probe may take.
    #[serde(default = "default_timeout")]
    pub timeout_s: u32,
    /// Failures before the service is unhealthy.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_interval() -> u32 {
    5
}
fn default_timeout() -> u32 {
    3
}
fn default_retries() -> u32 {
    10
}

/// Checks a profile name (the file stem): lowercase letters, digits and dashes.
pub(crate) fn valid_profile_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0].is_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_keep_their_order_and_both_forms() {
        let c: Components =
            serde_json::from_str(r#"{"redis": "local", "machine": ["default", "prod"]}"#).unwrap();
        assert_eq!(c.0[0].0, "redis");
        assert_eq!(
            c.get("machine").unwrap().sections(),
            vec!["default", "prod"]
        );
        let err = serde_json::from_str::<Components>(r#"{"a": "x", "a": "y"}"#).unwrap_err();
        assert!(
            err.to_string().contains("component \"a\" is listed twice"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_str::<Profile>(
            r#"{"description":"d","workers":"openai:1","machine":{"gpus":0,"ram_gb":1},"dockr":{}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `dockr`"), "{err}");
    }

    #[test]
    fn conditions_test_selected_sections() {
        let c: Components = serde_json::from_str(r#"{"redis": ["default", "local"]}"#).unwrap();
        let cond = |component: &str, variant: &str| Condition {
            component: component.into(),
            variant: variant.into(),
        };
        assert!(cond("redis", "local").holds(&c));
        assert!(!cond("redis", "remote").holds(&c));
        assert!(!cond("api", "local").holds(&c));
    }
}
