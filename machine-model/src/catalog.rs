//! The service catalog: one data entry per connector and per internal service; nothing about a
//! particular service is hard-coded anywhere else. Adding a connector is adding one entry here.
//!
//! Templates in commands and environment values: `{port}` (the service instance's port), `{gpu}` (its
//! GPU index, empty when it has none), `{workspace}` (the install root, `WORKSPACE_DIR`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::worker_bundle::{WORKER_BUNDLE_ENTRY, WORKER_BUNDLE_INSTALL};

/// How a worker uses the machine's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Binding {
    /// Pinned to one GPU (round-robin across the machine's GPUs), talks to that GPU's service instance.
    Gpu,
    /// Runs on the CPU next to one per-machine service instance.
    Cpu,
    /// No local resource of its own: an API client sharing the machine.
    Shared,
}

impl Binding {
    /// The spec spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Binding::Gpu => "gpu",
            Binding::Cpu => "cpu",
            Binding::Shared => "shared",
        }
    }

    /// Parses the spec spelling (exact, lowercase).
    pub(crate) fn from_name(s: &str) -> Option<Binding> {
        match s {
            "gpu" => Some(Binding::Gpu),
            "cpu" => Some(Binding::Cpu),
            "shared" => Some(Binding::Shared),
            _ => None,
        }
    }
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A program to run: the executable and its arguments (templates allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandTemplate {
    /// The executable; `machine-runtime` means the runtime binary itself, [`SIMULATION_PROGRAM`] the binary
    /// next to it. With an interpreter, the script file, relative to `cwd` (PM2's rule).
    pub script: &'static str,
    /// PM2's `interpreter`: `none` runs `script` directly, `node` runs `node <script>`.
    pub interpreter: &'static str,
    /// Its arguments.
    pub args: &'static [&'static str],
    /// Working directory.
    pub cwd: &'static str,
}

/// How the supervisor decides that a service instance is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeTemplate {
    /// `GET http://127.0.0.1:{port}<path>` answers 2xx.
    Http { path: &'static str },
    /// A TCP connection to `127.0.0.1:{port}` succeeds.
    Tcp,
}

/// A readiness probe with its cadence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// What is probed.
    pub probe: ProbeTemplate,
    /// Time between attempts.
    pub interval_ms: u32,
    /// Time one attempt may take.
    pub timeout_ms: u32,
}

/// Restart and stop behaviour of a process, in PM2's terms (the plan serialises it as is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lifecycle {
    /// An exit sooner than this after start counts as unstable.
    pub min_uptime_ms: u32,
    /// Consecutive unstable restarts before the app is `errored`.
    pub max_restarts: u32,
    /// First restart delay; grows ×1.5 per restart, capped at 15 s, reset after 30 s up.
    pub exp_backoff_restart_delay_ms: u32,
    /// Grace between the stop signal and SIGKILL of the process group.
    pub kill_timeout_ms: u32,
    /// The signal that asks the process to stop (the ecosystem's `kill_signal`), chosen by what the
    /// program handles: the worker stops the same way on SIGINT and SIGTERM and names SIGTERM a
    /// container shutdown ([`WORKER_KILL_SIGNAL`]); Python services (ComfyUI) clean up only on SIGINT,
    /// which raises `KeyboardInterrupt`, while SIGTERM kills them at once ([`SERVICE_KILL_SIGNAL`]).
    pub kill_signal: &'static str,
}

/// The stop signal of every worker: the worker's handler treats SIGINT and SIGTERM alike and reports
/// SIGTERM as "Docker container shutdown", which is what a machine stop is.
pub const WORKER_KILL_SIGNAL: &str = "SIGTERM";
/// The stop signal of every service: PM2's own default, and the one Python services handle
/// (`KeyboardInterrupt`: ComfyUI logs "Stopped server" and empties its temp folder; on SIGTERM Python
/// dies without cleanup). `machine-simulate` handles both.
pub const SERVICE_KILL_SIGNAL: &str = "SIGINT";

/// An internal service: a supervised process workers talk to (one per GPU or one per machine).
#[derive(Debug, Clone, Copy)]
pub struct ServiceEntry {
    /// The service name (`comfyui`); instance names are `<name>-gpu<i>` or `<name>-service`.
    pub name: &'static str,
    /// One line for people.
    pub description: &'static str,
    /// Port of instance 0 when the setting [`ServiceEntry::base_port_setting`] is not given.
    pub base_port: u16,
    /// The machine setting (component variable, or the environment at `up --profile`) that moves
    /// the base port, e.g. `SIMULATION_BASE_PORT`.
    pub base_port_setting: Option<&'static str>,
    /// Port increment per GPU instance.
    pub port_step: u16,
    /// The service's command.
    pub command: CommandTemplate,
    /// Extra environment of the service.
    pub env: &'static [(&'static str, &'static str)],
    /// When it counts as ready.
    pub readiness: Readiness,
    /// Restart and stop behaviour.
    pub lifecycle: Lifecycle,
    /// The install recipe (run once per machine, whatever the number of instances); `None` when the
    /// service needs nothing installed.
    pub install: Option<fn() -> crate::install::InstallRecipe>,
    /// The argument that runs an instance on the CPU (ComfyUI: `--cpu`), added after the command's own
    /// when the machine's GPUs are simulated (`machine.gpu_mode: mock`) or the profile asks for it.
    pub cpu_arg: Option<&'static str>,
    /// Folders (templates) the runtime creates, with their parents, before an instance starts: each
    /// instance's own output and temp folders, so that instances never write into each other's.
    pub dirs: &'static [&'static str],
    /// The variable of the runtime's environment whose words (split like a shell would) are appended to
    /// every instance's arguments at start (ComfyUI: `COMFY_ARGS`, the existing machine's name).
    pub extra_args_env: Option<&'static str>,
    /// The profile's options for this service (`cpu`, `args`), when the profile has a section for it.
    pub profile_options: Option<fn(&crate::profile::Profile) -> &crate::profile::ComfyuiOptions>,
}

impl ServiceEntry {
    /// The flags the machine sets on every instance and an operator may not repeat: each `--flag` of the
    /// command's arguments, then [`ServiceEntry::cpu_arg`].
    pub fn reserved_flags(&self) -> Vec<&'static str> {
        self.command
            .args
            .iter()
            .copied()
            .filter(|a| a.starts_with("--"))
            .chain(self.cpu_arg)
            .collect()
    }
}

/// The profile's `comfyui` section, the options of the `comfyui` service.
fn comfyui_options(profile: &crate::profile::Profile) -> &crate::profile::ComfyuiOptions {
    &profile.comfyui
}

/// Whether a connector needs a local service or talks to a remote API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectorKind {
    /// Needs an internal service on the machine.
    Internal,
    /// Talks to an external API; installs nothing.
    External,
}

/// A connector: a kind of worker, named as the worker bundle's service mapping names it
/// (`workers.<name>` in `src/config/service-mapping.json`; `data/service-mapping.json` is our copy,
/// and a test keeps every entry here true to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectorEntry {
    /// The name used in worker specs: the mapping's worker type.
    pub name: &'static str,
    /// One line for people.
    pub description: &'static str,
    /// Internal or external.
    pub kind: ConnectorKind,
    /// The internal service it needs (internal connectors only).
    pub service: Option<&'static str>,
    /// Bindings the connector allows (the mapping's `is_gpu_bound`: gpu first; shared when not bound).
    pub bindings: &'static [Binding],
    /// Binding when the spec gives none.
    pub default_binding: Binding,
    /// The mapping's `required_env` of this worker type: variables the worker refuses to start without.
    pub required_env: &'static [&'static str],
    /// Variables the `required_env` of the worker's services adds (the mapping's `services.<s>.required_env`
    /// minus [`ConnectorEntry::required_env`]); needed at start just the same.
    pub service_env: &'static [&'static str],
    /// The mapping's `services` of this worker type: what the worker advertises (status `services`,
    /// `capabilities`).
    pub advertises: &'static [&'static str],
    /// The job kinds it claims (`job_service_required` of the mapping's `job_service_required_map`).
    pub job_kinds: &'static [&'static str],
    /// The worker's command.
    pub worker: CommandTemplate,
    /// Environment the worker gets besides the common worker variables (templates see its service instance).
    pub worker_env: &'static [(&'static str, &'static str)],
    /// Restart and stop behaviour of its workers.
    pub lifecycle: Lifecycle,
}

impl ConnectorEntry {
    /// Every variable a worker of this connector needs at start: `required_env`, then `service_env`.
    pub fn needs(&self) -> impl Iterator<Item = &'static str> + use<> {
        self.required_env
            .iter()
            .chain(self.service_env.iter())
            .copied()
    }
}

/// A name the worker bundle may know but this machine refuses, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedConnector {
    /// The name as written in a spec.
    pub name: &'static str,
    /// Why it is refused and what to use instead.
    pub reason: &'static str,
}

/// Names refused at spec parse, with the reason (shown in place of "unknown connector").
pub(crate) const REFUSED: &[RefusedConnector] = &[
    RefusedConnector {
        name: "replicate",
        reason: "the worker bundle has no such type (its service mapping has no \"replicate\" worker)",
    },
    RefusedConnector {
        name: "simulation-http",
        reason: "the machine runs no HTTP simulation service for it; use \"simulation-websocket\" (it takes the same simulation jobs)",
    },
    RefusedConnector {
        name: "a1111",
        reason: "the machine cannot install or run Automatic1111 (no install recipe, no service); use \"comfyui\"",
    },
    RefusedConnector {
        name: "simulation",
        reason: "the worker's type is \"simulation-websocket\" (it takes jobs with service_required simulation)",
    },
];

/// The refusal of `name`, if the catalog refuses it.
pub fn refused(name: &str) -> Option<&'static RefusedConnector> {
    REFUSED.iter().find(|r| r.name == name)
}

/// A machine setting that a worker reads under another name (contract §3): the machine's
/// `WORKER_POLL_INTERVAL_MS` is the worker's `POLL_INTERVAL_MS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSetting {
    /// The machine's name (a component variable, the `.env`, the runtime's environment).
    pub setting: &'static str,
    /// The name the worker reads.
    pub worker_var: &'static str,
    /// The value when the machine gives none.
    pub default: &'static str,
    /// A secret: never written to generated files; the runtime passes it by name at spawn time.
    pub secret: bool,
}

/// The one table of worker settings. The plan writes each non-secret one into every worker's
/// environment with the value from the profile's components (or the default); at spawn time the
/// runtime's own environment wins (`machine-runtime/src/command/worker_env.rs`), so an operator's `.env` edit takes
/// effect without regenerating anything, and secrets travel by name only.
pub const WORKER_SETTINGS: &[WorkerSetting] = &[
    WorkerSetting {
        setting: "WORKER_POLL_INTERVAL_MS",
        worker_var: "POLL_INTERVAL_MS",
        default: "1000",
        secret: false,
    },
    WorkerSetting {
        setting: "WORKER_JOB_TIMEOUT_MINUTES",
        worker_var: "JOB_TIMEOUT_MINUTES",
        default: "30",
        secret: false,
    },
    WorkerSetting {
        setting: "WORKER_QUALITY_LEVELS",
        worker_var: "QUALITY_LEVELS",
        default: "fast,balanced,quality",
        secret: false,
    },
    WorkerSetting {
        setting: "WORKER_DEBUGGING_ENABLED",
        worker_var: "DEBUGGING_ENABLED",
        default: "false",
        secret: false,
    },
    WorkerSetting {
        setting: "WORKER_DEVELOPMENT_MODE",
        worker_var: "DEVELOPMENT_MODE",
        default: "false",
        secret: false,
    },
    WorkerSetting {
        setting: "LOG_LEVEL",
        worker_var: "LOG_LEVEL",
        default: "info",
        secret: false,
    },
    WorkerSetting {
        setting: "WORKER_WEBSOCKET_AUTH_TOKEN",
        worker_var: "WEBSOCKET_AUTH_TOKEN",
        default: "",
        secret: true,
    },
];

/// Fixed variables of every bundle worker (contract §3).
pub(crate) const WORKER_FIXED_ENV: &[(&str, &str)] = &[
    // Without it the worker sends no job_started, job_completed or connector_status_changed events.
    ("UNIFIED_MACHINE_STATUS", "true"),
    ("NODE_ENV", "production"),
];

/// Variables that name a machine's whole worker spec; a worker gets its own connector in each instead.
pub const MACHINE_WIDE_WORKER_VARS: &[&str] = &["WORKERS", "WORKER_CONNECTORS", "CONNECTORS"];

/// Required variables that are secrets: generated files hold only their names.
pub const SECRET_ENV: &[&str] = &["OPENAI_API_KEY", "GEMINI_API_KEY"];

/// The existing worker bundle, which every connector runs: `node redis-direct-worker.js` in the bundle
/// folder (the worker finds its service mapping relative to its working directory).
const NODE_WORKER: CommandTemplate = CommandTemplate {
    script: WORKER_BUNDLE_ENTRY,
    interpreter: "node",
    args: &[],
    cwd: "{workspace}/worker-bundled",
};

const WORKER_LIFECYCLE: Lifecycle = Lifecycle {
    min_uptime_ms: 10_000,
    max_restarts: 10,
    exp_backoff_restart_delay_ms: 1_000,
    kill_timeout_ms: 15_000,
    kill_signal: WORKER_KILL_SIGNAL,
};

const SERVICE_LIFECYCLE: Lifecycle = Lifecycle {
    min_uptime_ms: 10_000,
    max_restarts: 10,
    exp_backoff_restart_delay_ms: 2_000,
    kill_timeout_ms: 10_000,
    kill_signal: SERVICE_KILL_SIGNAL,
};

const COMFYUI_WORKER_ENV: &[(&str, &str)] =
    &[("COMFYUI_HOST", "127.0.0.1"), ("COMFYUI_PORT", "{port}")];

/// Every connector, in the order they are listed to users.
pub const CONNECTORS: &[ConnectorEntry] = &[
    ConnectorEntry {
        name: "comfyui",
        description: "ComfyUI image generation through the local ComfyUI instance of the worker's GPU",
        kind: ConnectorKind::Internal,
        service: Some("comfyui"),
        bindings: &[Binding::Gpu],
        default_binding: Binding::Gpu,
        required_env: &[],
        service_env: &[],
        advertises: &["comfyui"],
        job_kinds: &["comfyui"],
        worker: NODE_WORKER,
        worker_env: COMFYUI_WORKER_ENV,
        lifecycle: WORKER_LIFECYCLE,
    },
    ConnectorEntry {
        name: "comfyui-remote",
        description: "A ComfyUI instance elsewhere (WORKER_COMFYUI_REMOTE_HOST/_PORT)",
        kind: ConnectorKind::External,
        service: None,
        bindings: &[Binding::Shared],
        default_binding: Binding::Shared,
        // Its constructor throws without the host (comfyui-remote-connector.ts).
        required_env: &["WORKER_COMFYUI_REMOTE_HOST"],
        service_env: &[],
        advertises: &["comfyui-remote"],
        job_kinds: &["comfyui"],
        worker: NODE_WORKER,
        worker_env: &[],
        lifecycle: WORKER_LIFECYCLE,
    },
    ConnectorEntry {
        name: "emprops-app",
        description: "The EmProps app worker, running its ComfyUI jobs on the local ComfyUI of the worker's GPU",
        kind: ConnectorKind::Internal,
        service: Some("comfyui"),
        bindings: &[Binding::Gpu],
        default_binding: Binding::Gpu,
        required_env: &[],
        service_env: &[],
        advertises: &["comfyui", "a1111"],
        job_kinds: &["comfyui", "a1111"],
        worker: NODE_WORKER,
        worker_env: COMFYUI_WORKER_ENV,
        lifecycle: WORKER_LIFECYCLE,
    },
    ConnectorEntry {
        name: "simulation-websocket",
        description: "Simulation jobs over the simulation-websocket protocol, against the built-in simulation service",
        kind: ConnectorKind::Internal,
        service: Some("simulation"),
        bindings: &[Binding::Gpu, Binding::Cpu],
        default_binding: Binding::Gpu,
        required_env: &[],
        service_env: &[],
        advertises: &["simulation-websocket"],
        job_kinds: &["simulation"],
        worker: NODE_WORKER,
        worker_env: &[("SIMULATION_WEBSOCKET_URL", "ws://127.0.0.1:{port}")],
        lifecycle: Lifecycle {
            min_uptime_ms: 1_000,
            max_restarts: 10,
            exp_backoff_restart_delay_ms: 200,
            kill_timeout_ms: 3_000,
            kill_signal: WORKER_KILL_SIGNAL,
        },
    },
    ConnectorEntry {
        name: "openai",
        description: "OpenAI text, image, image-to-image and responses APIs",
        kind: ConnectorKind::External,
        service: None,
        bindings: &[Binding::Shared],
        default_binding: Binding::Shared,
        required_env: &[
            "OPENAI_API_KEY",
            "OPENAI_IMAGE_MODEL",
            "CLOUD_STORAGE_PROVIDER",
        ],
        service_env: &[],
        advertises: &[
            "openai-text",
            "openai-image",
            "openai-img2img",
            "openai-responses",
        ],
        job_kinds: &[
            "openai_text",
            "openai_image",
            "openai_img2img",
            "openai_responses",
        ],
        worker: NODE_WORKER,
        worker_env: &[],
        lifecycle: WORKER_LIFECYCLE,
    },
    ConnectorEntry {
        name: "openai-response",
        description: "OpenAI Responses API for dynamic JSON payloads",
        kind: ConnectorKind::External,
        service: None,
        bindings: &[Binding::Shared],
        default_binding: Binding::Shared,
        required_env: &[],
        service_env: &["OPENAI_API_KEY", "CLOUD_STORAGE_PROVIDER"],
        advertises: &["openai-responses"],
        job_kinds: &["openai"],
        worker: NODE_WORKER,
        worker_env: &[],
        lifecycle: WORKER_LIFECYCLE,
    },
    ConnectorEntry {
        name: "gemini",
        description: "Google Gemini image API (GEMINI_NANO_BANANA_URL moves its endpoint)",
        kind: ConnectorKind::External,
        service: None,
        bindings: &[Binding::Shared],
        default_binding: Binding::Shared,
        // The connector's constructor throws without either (gemini-connector.ts), and the worker then
        // loads 0 connectors yet stays online: refuse at start instead.
        required_env: &["GEMINI_API_KEY", "GEMINI_NANO_BANANA_URL"],
        service_env: &[],
        advertises: &["gem-nano-banana"],
        job_kinds: &["gem-nano-banana"],
        worker: NODE_WORKER,
        worker_env: &[],
        lifecycle: WORKER_LIFECYCLE,
    },
    ConnectorEntry {
        name: "ollama",
        description: "An Ollama daemon the machine does not run (OLLAMA_HOST, OLLAMA_PORT, OLLAMA_DEFAULT_MODEL)",
        kind: ConnectorKind::External,
        service: None,
        bindings: &[Binding::Shared],
        default_binding: Binding::Shared,
        required_env: &["OLLAMA_HOST", "OLLAMA_PORT", "OLLAMA_DEFAULT_MODEL"],
        service_env: &[],
        advertises: &["ollama"],
        job_kinds: &["ollama", "text_generation", "chat_completion", "embeddings"],
        worker: NODE_WORKER,
        worker_env: &[],
        lifecycle: WORKER_LIFECYCLE,
    },
    ConnectorEntry {
        name: "mock",
        description: "The bundle's mock connector: completes jobs without any service (tests, smoke checks)",
        kind: ConnectorKind::External,
        service: None,
        bindings: &[Binding::Shared],
        default_binding: Binding::Shared,
        required_env: &[],
        service_env: &[],
        advertises: &["mock_test"],
        job_kinds: &["mock"],
        worker: NODE_WORKER,
        worker_env: &[],
        lifecycle: WORKER_LIFECYCLE,
    },
    // Not a type of the bundle we studied (see NOT_IN_STUDIED_BUNDLE): planned as the seed writes it,
    // refused at start unless the installed bundle's own mapping has it.
    ConnectorEntry {
        name: "playwright",
        description: "Browser jobs through the machine's Playwright server (one per machine); needs a worker bundle whose mapping has a playwright type",
        kind: ConnectorKind::Internal,
        service: Some("playwright"),
        bindings: &[Binding::Cpu],
        default_binding: Binding::Cpu,
        required_env: &[],
        service_env: &[],
        advertises: &["playwright"],
        job_kinds: &["playwright"],
        worker: NODE_WORKER,
        worker_env: PLAYWRIGHT_WORKER_ENV,
        lifecycle: WORKER_LIFECYCLE,
    },
];

/// Where a playwright worker finds the machine's Playwright server (named like `COMFYUI_HOST`/`_PORT`;
/// no bundle we studied reads them, since none has the type).
const PLAYWRIGHT_WORKER_ENV: &[(&str, &str)] = &[
    ("PLAYWRIGHT_HOST", "127.0.0.1"),
    ("PLAYWRIGHT_PORT", "{port}"),
];

/// Connectors the catalog plans although the worker bundle we studied (`data/service-mapping.json`) has
/// no such worker type, each with why: which bundle runs is decided at install time
/// (`WORKER_BUNDLE_URL`), so the installed bundle's own mapping decides at `up`, which refuses a type it
/// lacks. The plan says so for each worker of these.
pub const NOT_IN_STUDIED_BUNDLE: &[(&str, &str)] = &[(
    "playwright",
    "the seed's Playwright connector; the studied worker bundle has no \"playwright\" type, so `up` refuses these workers unless the installed bundle's mapping has one",
)];

/// A name a worker spec may use for a connector of another name, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectorAlias {
    /// The name as written in a spec.
    pub name: &'static str,
    /// The connector it plans.
    pub connector: &'static str,
    /// Why they are the same, for the plan's notes.
    pub reason: &'static str,
}

/// Names the seed writes for connectors the worker bundle calls otherwise. A spec item under an alias
/// plans workers of its connector; with an item of that connector as well, the counts add up.
pub const ALIASES: &[ConnectorAlias] = &[ConnectorAlias {
    name: "comfyui-websocket",
    connector: "comfyui",
    reason: "the worker's comfyui type is its ComfyUI WebSocket connector (comfyui-websocket-connector.ts, registered as \"comfyui\")",
}];

/// The alias `name`, if it is one.
pub fn alias(name: &str) -> Option<&'static ConnectorAlias> {
    ALIASES.iter().find(|a| a.name == name)
}

/// The simulation service's program: a binary of the runtime's build (`machine-runtime/src/bin/`), started
/// from the folder the runtime itself was started from (`/usr/local/bin` in the image, `target/<profile>`
/// under cargo), so the production `machine-runtime` binary carries no test double.
pub const SIMULATION_PROGRAM: &str = "machine-simulate";

/// Every internal service.
pub const SERVICES: &[ServiceEntry] = &[
    ServiceEntry {
        name: "comfyui",
        description: "ComfyUI (the queue's fork), one instance per GPU, pinned by GPU UUID (never --cuda-device), each with its own output and temp folder",
        base_port: 8188,
        base_port_setting: Some("COMFYUI_BASE_PORT"),
        port_step: 1,
        command: CommandTemplate {
            script: "{workspace}/ComfyUI/venv/bin/python",
            interpreter: "none",
            args: &[
                "main.py",
                "--listen",
                "0.0.0.0",
                "--port",
                "{port}",
                // Under `output/` (persisted across reinstalls), one folder per instance: two GPUs
                // saving with one file name prefix overwrote each other's files in a shared folder.
                "--output-directory",
                "{workspace}/ComfyUI/output/gpu{gpu}",
                "--temp-directory",
                "{workspace}/ComfyUI/temp/gpu{gpu}",
            ],
            cwd: "{workspace}/ComfyUI",
        },
        env: &[("PYTHONUNBUFFERED", "1")],
        readiness: Readiness {
            probe: ProbeTemplate::Http { path: "/" },
            interval_ms: 1_000,
            timeout_ms: 2_000,
        },
        lifecycle: SERVICE_LIFECYCLE,
        install: Some(crate::install::comfyui_recipe),
        cpu_arg: Some("--cpu"),
        dirs: &[
            "{workspace}/ComfyUI/output/gpu{gpu}",
            "{workspace}/ComfyUI/temp/gpu{gpu}",
        ],
        extra_args_env: Some("COMFY_ARGS"),
        profile_options: Some(comfyui_options),
    },
    ServiceEntry {
        name: "simulation",
        description: "The simulation service (the machine-simulate binary, a stand-in for ComfyUI): the simulation-websocket protocol, /health for readiness",
        base_port: 8399,
        base_port_setting: Some("SIMULATION_BASE_PORT"),
        port_step: 1,
        command: CommandTemplate {
            script: SIMULATION_PROGRAM,
            interpreter: "none",
            // All interfaces: in a container the published port reaches the service only this way.
            args: &["--host", "0.0.0.0", "--port", "{port}"],
            cwd: "{workspace}",
        },
        env: &[],
        readiness: Readiness {
            probe: ProbeTemplate::Http { path: "/health" },
            interval_ms: 200,
            timeout_ms: 1_000,
        },
        lifecycle: Lifecycle {
            min_uptime_ms: 1_000,
            max_restarts: 10,
            exp_backoff_restart_delay_ms: 200,
            kill_timeout_ms: 3_000,
            kill_signal: SERVICE_KILL_SIGNAL,
        },
        install: None,
        cpu_arg: None,
        dirs: &[],
        extra_args_env: None,
        profile_options: None,
    },
    ServiceEntry {
        name: "playwright",
        description: "A Playwright browser server, one per machine, for the playwright connector's workers",
        base_port: 3100,
        base_port_setting: None,
        port_step: 1,
        command: CommandTemplate {
            script: "{workspace}/playwright/venv/bin/python",
            interpreter: "none",
            args: &[
                "-m",
                "playwright",
                "run-server",
                "--port",
                "{port}",
                "--host",
                "0.0.0.0",
            ],
            cwd: "{workspace}/playwright",
        },
        env: &[("PYTHONUNBUFFERED", "1")],
        readiness: Readiness {
            probe: ProbeTemplate::Tcp,
            interval_ms: 500,
            timeout_ms: 1_000,
        },
        lifecycle: SERVICE_LIFECYCLE,
        install: Some(crate::install::playwright_recipe),
        cpu_arg: None,
        dirs: &[],
        extra_args_env: None,
        profile_options: None,
    },
];

/// The job broker's TLS settings, read by the runtime at start (`HUB_REDIS_TLS_CA_FILE`,
/// `HUB_REDIS_TLS_CERT_FILE`, `HUB_REDIS_TLS_KEY_FILE`: PEM files of the broker's CA and of the
/// machine's client certificate and key for mutual TLS; `HUB_REDIS_TLS_INSECURE`: `true` turns
/// certificate checks off). Every profile lists them the same way: commented out in
/// `.env.secrets.example`, passed through by name in Compose, from the profile's Secret (optional
/// keys) in Kubernetes.
pub const BROKER_TLS_VARS: [&str; 4] = [
    "HUB_REDIS_TLS_CA_FILE",
    "HUB_REDIS_TLS_CERT_FILE",
    "HUB_REDIS_TLS_KEY_FILE",
    "HUB_REDIS_TLS_INSECURE",
];

/// Where the Kubernetes manifests mount the Secret `<profile>-redis-tls` (optional; keys `ca.crt`,
/// `tls.crt`, `tls.key`, the shape cert-manager writes), read-only: point the `HUB_REDIS_TLS_*_FILE`
/// variables at files in it.
pub const BROKER_TLS_MOUNT: &str = "/etc/machine/redis-tls";

/// The longest the runtime waits, on stop, for Redis to take the final `shutdown` status before it
/// signals any app (milliseconds); Compose's stop budget includes it.
pub const BROKER_SHUTDOWN_TIMEOUT_MS: u32 = 3000;

/// The longest the runtime spends handing a killed worker's job back to the queue (milliseconds):
/// a worker still busy at its `kill_timeout` on stop or restart is killed, then its job goes back to
/// `jobs:pending`; Compose's stop budget includes it.
pub const JOB_HANDBACK_TIMEOUT_MS: u32 = 2000;

/// The default install root (`WORKSPACE_DIR`).
pub const DEFAULT_WORKSPACE: &str = "/workspace";
/// The variable naming the machine's workspace (models, custom nodes, outputs); [`DEFAULT_WORKSPACE`]
/// when unset.
pub const WORKSPACE_DIR_VAR: &str = "WORKSPACE_DIR";

/// Looks a connector up by its exact name.
pub fn connector(name: &str) -> Option<&'static ConnectorEntry> {
    CONNECTORS.iter().find(|c| c.name == name)
}

/// Looks a service up by its exact name.
pub fn service(name: &str) -> Option<&'static ServiceEntry> {
    SERVICES.iter().find(|s| s.name == name)
}

/// Every connector name, in catalog order.
pub(crate) fn connector_names() -> Vec<&'static str> {
    CONNECTORS.iter().map(|c| c.name).collect()
}

/// Every variable any connector needs (`required_env` and `service_env`), sorted and unique: what a
/// worker must not inherit unless its own connector needs it.
pub fn all_connector_env() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = CONNECTORS.iter().flat_map(|c| c.needs()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Whether a required variable is a secret (its value never goes into a generated file).
pub fn is_secret(name: &str) -> bool {
    SECRET_ENV.contains(&name)
        || WORKER_SETTINGS
            .iter()
            .any(|s| s.secret && s.setting == name)
}

/// Every machine setting the plan reads: the worker settings that are not secrets, then the services'
/// base-port settings.
pub fn plan_setting_names() -> Vec<&'static str> {
    WORKER_SETTINGS
        .iter()
        .filter(|s| !s.secret)
        .map(|s| s.setting)
        .chain(SERVICES.iter().filter_map(|s| s.base_port_setting))
        .collect()
}

/// The placeholders a catalog template may hold, each written in braces: `{port}`, `{gpu}`, `{workspace}`.
pub(crate) const PLACEHOLDERS: [&str; 3] = ["port", "gpu", "workspace"];

/// Expands `{port}` (the instance's port; empty without one), `{gpu}` (its GPU index; empty without one)
/// and `{workspace}` (the install root) in a catalog template.
///
/// Templates are the catalog's own `&'static str` data, and every one of them is checked against
/// [`PLACEHOLDERS`] when this crate compiles (see `CATALOG_TEMPLATES_KNOWN` below), so a misspelt
/// `{prot}` is a build error, never a literal `{prot}` in a command line. Three fixed, typed values need
/// no template engine (the README says why minijinja is not used).
pub fn expand(template: &str, port: Option<u16>, gpu: Option<u32>, workspace: &str) -> String {
    debug_assert!(
        placeholders_known(template),
        "catalog template {template:?} has a placeholder outside {PLACEHOLDERS:?}"
    );
    template
        .replace("{port}", &port.map(|p| p.to_string()).unwrap_or_default())
        .replace("{gpu}", &gpu.map(|g| g.to_string()).unwrap_or_default())
        .replace("{workspace}", workspace)
}

/// Whether every `{…}` in `template` names one of [`PLACEHOLDERS`] (an unclosed `{` or a stray `}` does
/// not). A `const fn` so that the catalog is checked at compile time.
const fn placeholders_known(template: &str) -> bool {
    let b = template.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'}' {
            return false;
        }
        if b[i] != b'{' {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end] != b'}' {
            end += 1;
        }
        if end == b.len() {
            return false;
        }
        let mut known = false;
        let mut p = 0;
        while p < PLACEHOLDERS.len() {
            let name = PLACEHOLDERS[p].as_bytes();
            if name.len() == end - start {
                let mut k = 0;
                while k < name.len() && name[k] == b[start + k] {
                    k += 1;
                }
                known |= k == name.len();
            }
            p += 1;
        }
        if !known {
            return false;
        }
        i = end + 1;
    }
    true
}

/// Panics (at compile time, in `CATALOG_TEMPLATES_KNOWN`) with the template that has an unknown placeholder.
const fn check_template(template: &str) {
    if !placeholders_known(template) {
        panic!("{}", template);
    }
}

const fn check_command(command: &CommandTemplate) {
    check_template(command.script);
    check_template(command.interpreter);
    check_template(command.cwd);
    let mut i = 0;
    while i < command.args.len() {
        check_template(command.args[i]);
        i += 1;
    }
}

const fn check_env(env: &[(&str, &str)]) {
    let mut i = 0;
    while i < env.len() {
        check_template(env[i].1);
        i += 1;
    }
}

/// Every template of the catalog (commands, arguments, working directories, environment values) uses only
/// [`PLACEHOLDERS`]; a build that fails here names the template in its "evaluation panicked" message.
const CATALOG_TEMPLATES_KNOWN: () = {
    let mut i = 0;
    while i < CONNECTORS.len() {
        check_command(&CONNECTORS[i].worker);
        check_env(CONNECTORS[i].worker_env);
        i += 1;
    }
    let mut i = 0;
    while i < SERVICES.len() {
        check_command(&SERVICES[i].command);
        check_env(SERVICES[i].env);
        let mut d = 0;
        while d < SERVICES[i].dirs.len() {
            check_template(SERVICES[i].dirs[d]);
            d += 1;
        }
        i += 1;
    }
};
const _: () = CATALOG_TEMPLATES_KNOWN;

/// The built-in recipe for a service name (`comfyui`, `playwright`, `worker-bundle` from its catalog
/// default source), for callers without a catalog.
pub fn builtin_recipe(name: &str) -> Option<crate::install::InstallRecipe> {
    if name == WORKER_BUNDLE_INSTALL {
        return Some(crate::install::worker_bundle_recipe(
            &crate::profile::WorkerBundle::catalog_default(),
        ));
    }
    service(name).and_then(|s| s.install).map(|recipe| recipe())
}

/// Names accepted by [`builtin_recipe`].
pub const BUILTIN_RECIPES: &[&str] = &["comfyui", "playwright", "worker-bundle"];

#[cfg(test)]
mod tests {

    /// Variables a connector's constructor throws without (`apps/worker/src/connectors/*.ts` of the queue at
    /// ceb26d4) that the service mapping's `required_env` does not list: the worker then loads 0 connectors
    /// and stays online, failing every job, so the catalog requires them too.
    const CONNECTOR_ONLY_ENV: &[(&str, &[&str])] = &[
        ("comfyui-remote", &["WORKER_COMFYUI_REMOTE_HOST"]),
        ("gemini", &["GEMINI_NANO_BANANA_URL"]),
    ];
    use super::*;

    #[test]
    fn catalog_is_consistent() {
        for c in CONNECTORS {
            assert!(
                c.bindings.contains(&c.default_binding),
                "{}: default binding not allowed",
                c.name
            );
            match c.kind {
                ConnectorKind::Internal => {
                    let s = c
                        .service
                        .unwrap_or_else(|| panic!("{}: internal without service", c.name));
                    assert!(service(s).is_some(), "{}: unknown service {s}", c.name);
                    assert!(
                        !c.bindings.contains(&Binding::Shared),
                        "{}: internal connectors need a placement",
                        c.name
                    );
                }
                ConnectorKind::External => {
                    assert!(c.service.is_none(), "{}: external with a service", c.name);
                    assert_eq!(
                        c.bindings,
                        &[Binding::Shared],
                        "{}: external connectors are shared",
                        c.name
                    );
                }
            }
        }
        let mut names = connector_names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CONNECTORS.len(), "duplicate connector names");
    }

    /// The worker bundle's own table (a byte copy of the reference mapping).
    const MAPPING: &str = include_str!("../data/service-mapping.json");

    fn strings(v: &serde_json::Value) -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn every_connector_matches_the_worker_service_mapping() {
        let mapping: serde_json::Value = serde_json::from_str(MAPPING).unwrap();
        let workers = mapping["workers"].as_object().unwrap();
        let mut problems = Vec::new();
        for c in CONNECTORS {
            let Some(w) = workers.get(c.name) else {
                if !NOT_IN_STUDIED_BUNDLE.iter().any(|(n, _)| *n == c.name) {
                    problems.push(format!("{}: not a worker type of the mapping", c.name));
                }
                continue;
            };
            let gpu_bound = w["is_gpu_bound"].as_bool().unwrap_or(false);
            if gpu_bound != (c.default_binding == Binding::Gpu) {
                problems.push(format!(
                    "{}: is_gpu_bound is {gpu_bound}, default binding {}",
                    c.name, c.default_binding
                ));
            }
            if !gpu_bound && c.bindings != [Binding::Shared] {
                problems.push(format!("{}: not gpu-bound, so shared only", c.name));
            }
            let services = strings(&w["services"]);
            if c.advertises != services {
                problems.push(format!(
                    "{}: advertises {:?}, the mapping's services are {services:?}",
                    c.name, c.advertises
                ));
            }
            let kinds: Vec<String> = w["job_service_required_map"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["job_service_required"].as_str().unwrap().to_owned())
                .collect();
            if c.job_kinds != kinds {
                problems.push(format!(
                    "{}: job kinds {:?}, the mapping's {kinds:?}",
                    c.name, c.job_kinds
                ));
            }
            // The mapping's list, then what the connector's own constructor requires beyond it.
            let mut required = strings(&w["required_env"]);
            for (name, extra) in CONNECTOR_ONLY_ENV {
                if *name == c.name {
                    required.extend(extra.iter().map(|e| e.to_string()));
                }
            }
            if c.required_env != required {
                problems.push(format!(
                    "{}: required_env {:?}, the mapping's plus the connector's own {required:?}",
                    c.name, c.required_env
                ));
            }
            let mut from_services: Vec<String> = Vec::new();
            for s in &services {
                for e in strings(&mapping["services"][s]["required_env"]) {
                    if !required.contains(&e) && !from_services.contains(&e) {
                        from_services.push(e);
                    }
                }
            }
            if c.service_env != from_services {
                problems.push(format!(
                    "{}: service_env {:?}, the mapping's services add {from_services:?}",
                    c.name, c.service_env
                ));
            }
            if c.worker.script != WORKER_BUNDLE_ENTRY {
                problems.push(format!("{}: does not run the bundle's entry", c.name));
            }
        }
        // Every worker type of the mapping is either a connector or refused with a reason.
        for name in workers.keys() {
            if connector(name).is_none() && refused(name).is_none() {
                problems.push(format!(
                    "mapping type {name} is neither a connector nor refused"
                ));
            }
        }
        for (name, _) in NOT_IN_STUDIED_BUNDLE {
            if workers.contains_key(*name) || connector(name).is_none() {
                problems.push(format!(
                    "{name} is listed as missing from the bundle but is a mapping type or no connector"
                ));
            }
        }
        for a in ALIASES {
            if connector(a.connector).is_none()
                || connector(a.name).is_some()
                || refused(a.name).is_some()
            {
                problems.push(format!(
                    "alias {} must name a connector and be no name of its own",
                    a.name
                ));
            }
        }
        for r in REFUSED {
            if connector(r.name).is_some() {
                problems.push(format!("{} is both a connector and refused", r.name));
            }
        }
        for s in SECRET_ENV {
            if !all_connector_env().contains(s) {
                problems.push(format!("secret {s} is needed by no connector"));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn the_vendored_mapping_is_the_bundle_s_entry_file() {
        let mapping: serde_json::Value = serde_json::from_str(MAPPING).unwrap();
        for (name, c) in mapping["connectors"].as_object().unwrap() {
            assert_eq!(c["path"], "./redis-direct-worker.js", "{name}");
        }
    }

    #[test]
    fn templates_expand() {
        assert_eq!(
            expand("http://127.0.0.1:{port}/{gpu}", Some(8189), Some(1), "/w"),
            "http://127.0.0.1:8189/1"
        );
        assert_eq!(
            expand("{workspace}/ComfyUI", None, None, "/workspace"),
            "/workspace/ComfyUI"
        );
    }

    /// The compile-time check of the catalog's templates accepts exactly the three placeholders.
    #[test]
    fn only_known_placeholders_pass() {
        for ok in [
            "",
            "plain",
            "{port}",
            "ws://127.0.0.1:{port}",
            "{workspace}/x/{gpu}",
        ] {
            assert!(placeholders_known(ok), "{ok:?} refused");
        }
        for bad in [
            "{prot}",
            "{Port}",
            "{}",
            "{port",
            "port}",
            "{workspace}/{gpu_id}",
            "${port}x}",
        ] {
            assert!(!placeholders_known(bad), "{bad:?} accepted");
        }
    }
}
