//! The service catalog: one data entry per connector and per internal service; nothing about a
//! particular service is hard-coded anywhere else. Adding a connector is adding one entry here.
//!
//! Templates in commands and environment values: `{port}` (the service instance's port), `{gpu}` (its
//! GPU index, empty when it has none), `{workspace}` (the install root, `WORKSPACE_DIR`).

use std::fmt;

use serde::{Deserialize, Serialize};

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
    pub fn from_name(s: &str) -> Option<Binding> {
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
    /// The executable; `machine-runtime` means the runtime binary itself.
    pub script: &'static str,
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

/// Restart and stop behaviour of a process, in PM2's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// An exit sooner than this after start counts as unstable.
    pub min_uptime_ms: u32,
    /// Consecutive unstable restarts before the app is `errored`.
    pub max_restarts: u32,
    /// First restart delay; grows ×1.5 per restart, capped at 15 s, reset after 30 s up.
    pub exp_backoff_restart_delay_ms: u32,
    /// Grace between the stop signal and SIGKILL of the process group.
    pub kill_timeout_ms: u32,
}

/// An internal service: a supervised process workers talk to (one per GPU or one per machine).
#[derive(Debug, Clone, Copy)]
pub struct ServiceEntry {
    /// The service name (`comfyui`); instance names are `<name>-gpu<i>` or `<name>-service`.
    pub name: &'static str,
    /// One line for people.
    pub description: &'static str,
    /// Port of instance 0.
    pub base_port: u16,
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

/// A connector: a kind of worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectorEntry {
    /// The name used in worker specs.
    pub name: &'static str,
    /// One line for people.
    pub description: &'static str,
    /// Internal or external.
    pub kind: ConnectorKind,
    /// The internal service it needs (internal connectors only).
    pub service: Option<&'static str>,
    /// Bindings the connector allows.
    pub bindings: &'static [Binding],
    /// Binding when the spec gives none.
    pub default_binding: Binding,
    /// Secrets the worker needs in its environment.
    pub required_env: &'static [&'static str],
    /// Service types the worker advertises to the job broker (`service_required`).
    pub advertises: &'static [&'static str],
    /// The worker's command.
    pub worker: CommandTemplate,
    /// Environment the worker gets besides the common worker variables (templates see its service instance).
    pub worker_env: &'static [(&'static str, &'static str)],
    /// Restart and stop behaviour of its workers.
    pub lifecycle: Lifecycle,
}

/// The existing worker bundle, which production machines keep.
const NODE_WORKER: CommandTemplate = CommandTemplate {
    script: "node",
    args: &["{workspace}/worker-bundled/redis-direct-worker.cjs"],
    cwd: "{workspace}",
};

const WORKER_LIFECYCLE: Lifecycle = Lifecycle {
    min_uptime_ms: 10_000,
    max_restarts: 10,
    exp_backoff_restart_delay_ms: 1_000,
    kill_timeout_ms: 15_000,
};

const SERVICE_LIFECYCLE: Lifecycle = Lifecycle {
    min_uptime_ms: 10_000,
    max_restarts: 10,
    exp_backoff_restart_delay_ms: 2_000,
    kill_timeout_ms: 10_000,
};

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
        advertises: &["comfyui"],
        worker: NODE_WORKER,
        worker_env: &[
            ("COMFYUI_HOST", "127.0.0.1"),
            ("COMFYUI_PORT", "{port}"),
            ("COMFYUI_BASE_URL", "http://127.0.0.1:{port}"),
        ],
        lifecycle: WORKER_LIFECYCLE,
    },
    ConnectorEntry {
        name: "comfyui-websocket",
        description: "ComfyUI over its WebSocket API; the same ComfyUI service as comfyui",
        kind: ConnectorKind::Internal,
        service: Some("comfyui"),
        bindings: &[Binding::Gpu],
        default_binding: Binding::Gpu,
        required_env: &[],
        advertises: &["comfyui"],
        worker: NODE_WORKER,
        worker_env: &[
            ("COMFYUI_HOST", "127.0.0.1"),
            ("COMFYUI_PORT", "{port}"),
            ("COMFYUI_BASE_URL", "http://127.0.0.1:{port}"),
            ("COMFYUI_WS_URL", "ws://127.0.0.1:{port}/ws"),
        ],
        lifecycle: WORKER_LIFECYCLE,
    },
    ConnectorEntry {
        name: "simulation",
        description: "A local stand-in inference service and worker, so GPU-less machines and tests run the full path",
        kind: ConnectorKind::Internal,
        service: Some("simulation"),
        bindings: &[Binding::Gpu, Binding::Cpu],
        default_binding: Binding::Gpu,
        required_env: &[],
        advertises: &["simulation"],
        worker: CommandTemplate {
            script: "machine-runtime",
            args: &["simulate-worker"],
            cwd: "{workspace}",
        },
        worker_env: &[("SIMULATION_BASE_URL", "http://127.0.0.1:{port}")],
        lifecycle: Lifecycle {
            min_uptime_ms: 1_000,
            max_restarts: 10,
            exp_backoff_restart_delay_ms: 200,
            kill_timeout_ms: 3_000,
        },
    },
    ConnectorEntry {
        name: "playwright",
        description: "Browser automation through the machine's Playwright server",
        kind: ConnectorKind::Internal,
        service: Some("playwright"),
        bindings: &[Binding::Cpu],
        default_binding: Binding::Cpu,
        required_env: &[],
        advertises: &["playwright"],
        worker: NODE_WORKER,
        worker_env: &[("PLAYWRIGHT_WS_ENDPOINT", "ws://127.0.0.1:{port}/")],
        lifecycle: WORKER_LIFECYCLE,
    },
    ConnectorEntry {
        name: "openai",
        description: "OpenAI text and image API",
        kind: ConnectorKind::External,
        service: None,
        bindings: &[Binding::Shared],
        default_binding: Binding::Shared,
        required_env: &["OPENAI_API_KEY"],
        advertises: &[
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
        name: "replicate",
        description: "Replicate model API",
        kind: ConnectorKind::External,
        service: None,
        bindings: &[Binding::Shared],
        default_binding: Binding::Shared,
        required_env: &["REPLICATE_API_TOKEN"],
        advertises: &["replicate"],
        worker: NODE_WORKER,
        worker_env: &[],
        lifecycle: WORKER_LIFECYCLE,
    },
    ConnectorEntry {
        name: "gemini",
        description: "Google Gemini image API",
        kind: ConnectorKind::External,
        service: None,
        bindings: &[Binding::Shared],
        default_binding: Binding::Shared,
        required_env: &["GEMINI_API_KEY"],
        advertises: &["gem-nano-banana"],
        worker: NODE_WORKER,
        worker_env: &[],
        lifecycle: WORKER_LIFECYCLE,
    },
    ConnectorEntry {
        name: "comfyui-remote",
        description: "A ComfyUI instance elsewhere (WORKER_COMFYUI_REMOTE_HOST/_PORT)",
        kind: ConnectorKind::External,
        service: None,
        bindings: &[Binding::Shared],
        default_binding: Binding::Shared,
        required_env: &[],
        advertises: &["comfyui"],
        worker: NODE_WORKER,
        worker_env: &[],
        lifecycle: WORKER_LIFECYCLE,
    },
];

/// Every internal service.
pub const SERVICES: &[ServiceEntry] = &[
    ServiceEntry {
        name: "comfyui",
        description: "ComfyUI, one instance per GPU, pinned by GPU UUID (never --cuda-device)",
        base_port: 8188,
        port_step: 1,
        command: CommandTemplate {
            script: "{workspace}/ComfyUI/venv/bin/python",
            args: &["main.py", "--listen", "0.0.0.0", "--port", "{port}"],
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
    },
    ServiceEntry {
        name: "simulation",
        description: "The built-in inference stand-in (machine-runtime simulate)",
        base_port: 8399,
        port_step: 1,
        command: CommandTemplate {
            script: "machine-runtime",
            // All interfaces: in a container the published port reaches the service only this way.
            args: &["simulate", "--host", "0.0.0.0", "--port", "{port}"],
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
        },
        install: None,
    },
    ServiceEntry {
        name: "playwright",
        description: "A Playwright browser server, one per machine (the seed's port 9090 collided with the health endpoint)",
        base_port: 3100,
        port_step: 1,
        command: CommandTemplate {
            script: "{workspace}/playwright/venv/bin/python",
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
    },
];

/// The health endpoint's default port (`MACHINE_HEALTH_PORT`).
pub const DEFAULT_HEALTH_PORT: u16 = 9090;

/// The longest the runtime waits, on stop, for Redis to take the final `shutdown` status before it
/// signals any app (milliseconds); Compose's stop budget includes it.
pub const BROKER_SHUTDOWN_TIMEOUT_MS: u32 = 3000;

/// The default install root (`WORKSPACE_DIR`).
pub const DEFAULT_WORKSPACE: &str = "/workspace";

/// Looks a connector up by its exact name.
pub fn connector(name: &str) -> Option<&'static ConnectorEntry> {
    CONNECTORS.iter().find(|c| c.name == name)
}

/// Looks a service up by its exact name.
pub fn service(name: &str) -> Option<&'static ServiceEntry> {
    SERVICES.iter().find(|s| s.name == name)
}

/// Every connector name, in catalog order.
pub fn connector_names() -> Vec<&'static str> {
    CONNECTORS.iter().map(|c| c.name).collect()
}

/// Every secret any connector may need, sorted and unique.
pub fn all_secret_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = CONNECTORS
        .iter()
        .flat_map(|c| c.required_env.iter().copied())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Expands `{port}`, `{gpu}` and `{workspace}` in a template.
pub fn expand(template: &str, port: Option<u16>, gpu: Option<u32>, workspace: &str) -> String {
    template
        .replace("{port}", &port.map(|p| p.to_string()).unwrap_or_default())
        .replace("{gpu}", &gpu.map(|g| g.to_string()).unwrap_or_default())
        .replace("{workspace}", workspace)
}

#[cfg(test)]
mod tests {
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
}
