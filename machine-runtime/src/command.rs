//! The one place that builds every child command: program and arguments (PM2's interpreter
//! rules), working directory, and environment (runtime env + app env, GPU pin by UUID,
//! `WORKER_ID` for the runtime's `MACHINE_ID`).
//!
//! A worker (an app with a connector, a `WORKER_ID` or the worker role) inherits the runtime's
//! environment minus what is not its own: the machine-wide `WORKERS`/`WORKER_CONNECTORS`/`CONNECTORS`
//! (the worker would load every connector they name) and every variable another connector needs
//! (`machine_model::catalog::all_connector_env`) unless its own `machine_required_env` lists it. Then
//! the machine's worker settings (`machine_model::catalog::WORKER_SETTINGS`) set in the runtime's
//! environment win over the ecosystem's values under the names the worker reads
//! (`WORKER_POLL_INTERVAL_MS` → `POLL_INTERVAL_MS`), which is also how the secret
//! `WORKER_WEBSOCKET_AUTH_TOKEN` reaches it without ever being written to a generated file.
//!
//! [`new_child`] is the one constructor of a `std::process::Command` in the runtime (apps, readiness
//! probe commands, install steps): `Command::new` elsewhere is refused by clippy
//! (`disallowed-methods` in the repository's `clippy.toml`).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::ecosystem::{AppSpec, Interpreter, SELF_SCRIPT};

/// The GPU a child is pinned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuPin {
    /// The index in the GPU inventory (NVML order), as written in the ecosystem.
    pub index: u32,
    /// The UUID that goes into `CUDA_VISIBLE_DEVICES`.
    pub uuid: String,
}

/// A fully resolved child command, ready to spawn any number of times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildCommand {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    /// The complete environment of the child (nothing else is inherited).
    pub env: BTreeMap<OsString, OsString>,
    /// The GPU the child is pinned to, when it is exactly one (whole GPU or MIG slice).
    pub gpu: Option<GpuPin>,
    /// Every GPU or MIG slice the child may use, in `CUDA_VISIBLE_DEVICES` order (empty: none).
    pub visible: Vec<GpuPin>,
    /// Folders created (with their parents) before the child starts.
    pub dirs: Vec<PathBuf>,
    /// Give the child Node's IPC channel (`process.send`): its interpreter is Node (PM2's test:
    /// the interpreter's name ends with `node`), or it has `wait_ready`.
    pub ipc: bool,
}

/// Why a child command could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(
        "app \"{app}\" is pinned to GPU {index}, but {found}; start on a machine with that GPU or re-plan for the GPUs present"
    )]
    GpuMissing {
        app: String,
        index: u32,
        found: String,
    },
    #[error("app \"{app}\": {field} is \"{value}\", which is not a GPU index")]
    BadGpuIndex {
        app: String,
        field: &'static str,
        value: String,
    },
    #[error("app \"{app}\": machine_gpu is {gpu} but WORKER_GPU_ID is \"{env}\"; make them agree")]
    GpuDisagrees { app: String, gpu: u32, env: String },
    /// The service's extra arguments variable (`COMFY_ARGS`) cannot be used: one line per problem,
    /// naming the variable and the word's position (the same for every instance of the service).
    #[error("{}", problems.join("\n"))]
    ExtraArgs { problems: Vec<String> },
    #[error("app \"{app}\": {source_} is \"{value}\": {why}")]
    BadPin {
        app: String,
        /// Where the pin is written: `env CUDA_VISIBLE_DEVICES`, `args --cuda-device`, ...
        source_: String,
        value: String,
        why: String,
    },
}

/// Everything outside the ecosystem that shapes a child command.
#[derive(Debug, Clone)]
pub struct Context {
    /// The runtime's own environment, inherited by every child.
    pub runtime_env: BTreeMap<OsString, OsString>,
    /// GPU UUIDs ordered by inventory index (`gpu_uuids[i]` is GPU `i`).
    pub gpu_uuids: Vec<String>,
    /// MIG slices in the inventory: (index of the parent GPU, `MIG-...` UUID).
    pub mig_uuids: Vec<(u32, String)>,
    /// The runtime binary, used for the script `machine-runtime`.
    pub current_exe: PathBuf,
}

impl Context {
    /// The current process's environment and executable, with the given GPU UUIDs. The control
    /// token of the health port's POST routes stays with the runtime: no app needs it.
    pub fn from_process(gpu_uuids: Vec<String>) -> Context {
        Context {
            runtime_env: std::env::vars_os()
                .filter(|(name, _)| name != crate::env::CONTROL_TOKEN_VAR)
                .collect(),
            gpu_uuids,
            mig_uuids: Vec::new(),
            current_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from(SELF_SCRIPT)),
        }
    }
}

/// Builds the command for `app`.
pub fn build(app: &AppSpec, ctx: &Context) -> Result<ChildCommand, CommandError> {
    let (program, mut args) = program_and_args(app, ctx);
    args.extend(app.args.iter().map(OsString::from));
    args.extend(extra_args(app, ctx)?.into_iter().map(OsString::from));

    let worker = is_worker(app);
    let mut env = ctx.runtime_env.clone();
    if worker {
        strip_foreign_worker_env(&mut env, app);
    }
    for (key, value) in &app.env {
        env.insert(key.into(), value.into());
    }
    if worker {
        apply_worker_settings(&mut env, app, &ctx.runtime_env);
    }
    let gpu = gpu_pin(app, ctx)?;
    let mut visible = Vec::new();
    match &gpu {
        Some(pin) => {
            // A pin written in the app's env too must name the same GPU.
            for (source, value, pins) in env_pins(app, ctx)? {
                if pins.len() != 1 || pins[0].index != pin.index {
                    return Err(CommandError::BadPin {
                        app: app.name.clone(),
                        source_: source,
                        value,
                        why: format!(
                            "the app is pinned to GPU {} (machine_gpu or WORKER_GPU_ID); make them agree",
                            pin.index
                        ),
                    });
                }
            }
            env.insert("CUDA_VISIBLE_DEVICES".into(), pin.uuid.clone().into());
            env.insert("WORKER_GPU_ID".into(), pin.index.to_string().into());
            visible.push(pin.clone());
        }
        None => match env_pins(app, ctx)?.into_iter().next() {
            // Kept or translated: indices become UUIDs, so the pin survives any reordering.
            Some((_, _, pins)) => {
                let list: Vec<&str> = pins.iter().map(|p| p.uuid.as_str()).collect();
                env.insert("CUDA_VISIBLE_DEVICES".into(), list.join(",").into());
                visible = pins;
            }
            // An empty list means "no GPU" to CUDA; unset would mean "every GPU".
            None => {
                env.insert("CUDA_VISIBLE_DEVICES".into(), OsString::new());
            }
        },
    }
    let gpu = match (gpu, visible.as_slice()) {
        (Some(pin), _) => Some(pin),
        (None, [one]) => Some(one.clone()),
        (None, _) => None,
    };
    // CUDA's default order (fastest first) differs from NVML's; PCI order matches the inventory.
    env.insert("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into());

    // The ecosystem may have been generated with another MACHINE_ID (at build time); the one the
    // runtime was started with wins, and the worker id follows it.
    if let Some(machine_id) = ctx
        .runtime_env
        .get(OsStr::new("MACHINE_ID"))
        .filter(|m| !m.is_empty())
    {
        let differs = app
            .env
            .get("MACHINE_ID")
            .is_some_and(|m| OsStr::new(m) != machine_id);
        if differs || !app.env.contains_key("MACHINE_ID") {
            env.insert("MACHINE_ID".into(), machine_id.clone());
        }
        if let (Some(connector), Some(index)) = (&app.connector, app.index) {
            let mut worker_id = machine_id.clone();
            worker_id.push(format!("-worker-{connector}-{index}"));
            env.insert("WORKER_ID".into(), worker_id);
        }
    }

    let ipc = app.wait_ready || runs_node(&program);
    Ok(ChildCommand {
        program,
        args,
        cwd: app.cwd.clone(),
        env,
        gpu,
        visible,
        dirs: app.dirs.clone(),
        ipc,
    })
}

/// Whether `program` is Node, as PM2 decides it (`interpreter === 'node' || /node$/`).
fn runs_node(program: &OsStr) -> bool {
    program.as_encoded_bytes().ends_with(b"node")
}

/// The words of the app's service's extra arguments variable (`COMFY_ARGS` for a `comfyui` app, read
/// from the runtime's environment), appended after the app's own arguments; unset or empty adds none.
/// Split like a shell would; an unclosed quote or a word repeating a flag the machine sets
/// ([`machine_model::service_args`]) is an error naming the variable and the word's position.
fn extra_args(app: &AppSpec, ctx: &Context) -> Result<Vec<String>, CommandError> {
    let Some(entry) = app
        .catalog_service
        .and_then(machine_model::catalog::service)
    else {
        return Ok(Vec::new());
    };
    let Some(var) = entry.extra_args_env else {
        return Ok(Vec::new());
    };
    let Some(value) = ctx.runtime_env.get(OsStr::new(var)) else {
        return Ok(Vec::new());
    };
    let Some(value) = value.to_str() else {
        return Err(CommandError::ExtraArgs {
            problems: vec![format!(
                "{var} is not valid UTF-8; write its words in UTF-8"
            )],
        });
    };
    machine_model::service_args::from_env(entry, var, value)
        .map_err(|problems| CommandError::ExtraArgs { problems })
}

/// Whether `app` is a job worker: it has a connector, a `WORKER_ID` or the worker role.
pub(crate) fn is_worker(app: &AppSpec) -> bool {
    app.connector.is_some()
        || app.env.contains_key("WORKER_ID")
        || app.role == Some(crate::ecosystem::Role::Worker)
}

/// Removes from a worker's inherited environment the machine-wide worker spec and the variables of
/// other connectors.
fn strip_foreign_worker_env(env: &mut BTreeMap<OsString, OsString>, app: &AppSpec) {
    use machine_model::catalog;
    for var in catalog::MACHINE_WIDE_WORKER_VARS {
        env.remove(OsStr::new(var));
    }
    for var in catalog::all_connector_env() {
        if !app.required_env.iter().any(|own| own == var) {
            env.remove(OsStr::new(var));
        }
    }
}

/// Node's variable for CAs it trusts besides its built-in roots: one PEM file, read at Node's start.
const NODE_EXTRA_CA_CERTS: &str = "NODE_EXTRA_CA_CERTS";

/// `NODE_EXTRA_CA_CERTS` for a worker of a broker whose CA is in `ca`: `ca` itself, or, when the
/// environment already names another file (images often point it at the system bundle), a bundle of
/// both written once to the temporary directory (`machine-runtime-node-ca-<hash>.pem`, temp file +
/// rename). A bundle that cannot be read or written leaves `ca` alone, which still reaches the broker.
fn node_extra_ca_certs(existing: Option<&OsStr>, ca: &OsStr) -> OsString {
    let Some(existing) = existing.filter(|e| !e.is_empty() && *e != ca) else {
        return ca.to_owned();
    };
    let combined = || -> std::io::Result<PathBuf> {
        let mut bytes = std::fs::read(existing)?;
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            bytes.push(b'\n');
        }
        bytes.extend(std::fs::read(ca)?);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&bytes, &mut hasher);
        let hash = std::hash::Hasher::finish(&hasher);
        let path = std::env::temp_dir().join(format!("machine-runtime-node-ca-{hash:016x}.pem"));
        if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
            let temp = path.with_extension(format!("{}.tmp", std::process::id()));
            std::fs::write(&temp, &bytes)?;
            std::fs::rename(&temp, &path)?;
        }
        Ok(path)
    };
    combined().map_or_else(|_| ca.to_owned(), PathBuf::into_os_string)
}

/// The worker settings the runtime's environment gives, under the worker's names; a worker with a
/// connector but no spec of its own gets its connector in `WORKERS` and `CONNECTORS`; with
/// `HUB_REDIS_TLS_CA_FILE` set, `NODE_EXTRA_CA_CERTS` names that CA ([`node_extra_ca_certs`]).
fn apply_worker_settings(
    env: &mut BTreeMap<OsString, OsString>,
    app: &AppSpec,
    runtime_env: &BTreeMap<OsString, OsString>,
) {
    for setting in machine_model::catalog::WORKER_SETTINGS {
        if let Some(value) = runtime_env
            .get(OsStr::new(setting.setting))
            .filter(|v| !v.is_empty())
        {
            env.insert(setting.worker_var.into(), value.clone());
        }
    }
    // The worker (Node, ioredis) reads the same HUB_REDIS_URL; for rediss:// ioredis uses Node's trust
    // store, which takes a private CA only from NODE_EXTRA_CA_CERTS (read once, at Node's start).
    if let Some(ca) = runtime_env
        .get(OsStr::new(crate::env::CA_FILE_VAR))
        .filter(|v| !v.is_empty())
    {
        let existing = env.get(OsStr::new(NODE_EXTRA_CA_CERTS)).cloned();
        env.insert(
            NODE_EXTRA_CA_CERTS.into(),
            node_extra_ca_certs(existing.as_deref(), ca),
        );
    }
    if let Some(connector) = &app.connector {
        for var in machine_model::catalog::MACHINE_WIDE_WORKER_VARS {
            env.entry(var.into()).or_insert_with(|| connector.into());
        }
    }
}

/// Every way the app's own file places it on GPUs, each checked against the inventory:
/// `env.CUDA_VISIBLE_DEVICES` (indices, GPU UUIDs or unique prefixes, MIG UUIDs; `""` or `-1`
/// for none), `env.NVIDIA_VISIBLE_DEVICES` (read by the container runtime when a container is
/// created, so inside one it pins nothing by itself: translated to `CUDA_VISIBLE_DEVICES`, `all`
/// meaning every GPU, `none`/`void` none), and the arguments `--cuda-device N` (ComfyUI) and
/// `--device cuda:N` (the process picks GPU N among all it sees, so it sees every GPU, in inventory
/// order). Returns (where, value, pins) for each, in that order of precedence; an app with none
/// gets no GPU. A value that names no GPU of this machine is an error naming the app.
fn env_pins(
    app: &AppSpec,
    ctx: &Context,
) -> Result<Vec<(String, String, Vec<GpuPin>)>, CommandError> {
    let bad = |source: &str, value: &str, why: String| CommandError::BadPin {
        app: app.name.clone(),
        source_: source.to_string(),
        value: value.to_string(),
        why,
    };
    let mut found = Vec::new();
    if let Some(value) = app.env.get("CUDA_VISIBLE_DEVICES") {
        let source = "env CUDA_VISIBLE_DEVICES";
        let pins = parse_visible(value, ctx).map_err(|why| bad(source, value, why))?;
        found.push((source.to_string(), value.clone(), pins));
    }
    if let Some(value) = app.env.get("NVIDIA_VISIBLE_DEVICES") {
        let source = "env NVIDIA_VISIBLE_DEVICES";
        let pins = match value.trim() {
            "all" => all_gpus(ctx),
            "none" | "void" => Vec::new(),
            _ => parse_visible(value, ctx).map_err(|why| bad(source, value, why))?,
        };
        found.push((source.to_string(), value.clone(), pins));
    }
    let args: Vec<&str> = app
        .interpreter_args
        .iter()
        .chain(&app.args)
        .map(String::as_str)
        .collect();
    for (i, arg) in args.iter().enumerate() {
        let (flag, value) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value)),
            None => (*arg, args.get(i + 1).copied()),
        };
        match flag {
            "--cuda-device" => {
                let source = "args --cuda-device";
                let value = value.unwrap_or_default();
                let pins = parse_visible(value, ctx).map_err(|why| bad(source, value, why))?;
                found.push((source.to_string(), value.to_string(), pins));
            }
            "--device" => {
                let Some(index) = value.and_then(|v| v.strip_prefix("cuda:")) else {
                    continue;
                };
                let source = "args --device";
                let value = value.unwrap_or_default();
                parse_visible(index, ctx).map_err(|why| bad(source, value, why))?;
                found.push((source.to_string(), value.to_string(), all_gpus(ctx)));
            }
            _ => {}
        }
    }
    Ok(found)
}

fn all_gpus(ctx: &Context) -> Vec<GpuPin> {
    ctx.gpu_uuids
        .iter()
        .enumerate()
        .map(|(i, uuid)| GpuPin {
            index: i as u32,
            uuid: uuid.clone(),
        })
        .collect()
}

/// Parses a `CUDA_VISIBLE_DEVICES`-style list against the inventory: each entry an index, a GPU
/// UUID (or a unique prefix of one, as CUDA allows) or a MIG UUID. `""` and `-1` mean no GPU.
fn parse_visible(value: &str, ctx: &Context) -> Result<Vec<GpuPin>, String> {
    let value = value.trim();
    if value.is_empty() || value == "-1" {
        return Ok(Vec::new());
    }
    let present = || match ctx.gpu_uuids.len() {
        0 => "this machine has no GPU".to_string(),
        1 => "this machine has 1 GPU (index 0)".to_string(),
        n => format!("this machine has {n} GPUs (indices 0-{})", n - 1),
    };
    let mut pins: Vec<GpuPin> = Vec::new();
    for entry in value.split(',').map(str::trim) {
        let pin = if !entry.is_empty() && entry.bytes().all(|b| b.is_ascii_digit()) {
            let index = entry.parse::<u32>().ok();
            match index.and_then(|i| Some((i, ctx.gpu_uuids.get(i as usize)?))) {
                Some((index, uuid)) => GpuPin {
                    index,
                    uuid: uuid.clone(),
                },
                None => return Err(format!("GPU {entry} does not exist: {}", present())),
            }
        } else if entry.starts_with("GPU-") {
            let matches: Vec<usize> = (0..ctx.gpu_uuids.len())
                .filter(|&i| ctx.gpu_uuids[i].starts_with(entry))
                .collect();
            match matches.as_slice() {
                [i] => GpuPin {
                    index: *i as u32,
                    uuid: ctx.gpu_uuids[*i].clone(),
                },
                [] => {
                    return Err(format!(
                        "no GPU of this machine has the UUID {entry} ({}; `machine-runtime gpus` lists them)",
                        present()
                    ));
                }
                _ => return Err(format!("{entry} is the start of more than one GPU's UUID")),
            }
        } else if entry.starts_with("MIG-") {
            match ctx.mig_uuids.iter().find(|(_, uuid)| uuid == entry) {
                Some((parent, uuid)) => GpuPin {
                    index: *parent,
                    uuid: uuid.clone(),
                },
                None => {
                    return Err(format!(
                        "no MIG device of this machine has the UUID {entry} (`machine-runtime gpus` lists them)"
                    ));
                }
            }
        } else {
            return Err(format!(
                "entry \"{entry}\" is not a GPU index, a GPU UUID (GPU-...) or a MIG UUID (MIG-...)"
            ));
        };
        if pins.iter().any(|p| p.uuid == pin.uuid) {
            return Err(format!("entry \"{entry}\" names a GPU listed earlier"));
        }
        pins.push(pin);
    }
    Ok(pins)
}

fn gpu_pin(app: &AppSpec, ctx: &Context) -> Result<Option<GpuPin>, CommandError> {
    let from_env = match app.env.get("WORKER_GPU_ID").map(|v| v.trim()) {
        None | Some("") => None,
        Some(v) => Some(v.parse::<u32>().map_err(|_| CommandError::BadGpuIndex {
            app: app.name.clone(),
            field: "WORKER_GPU_ID",
            value: v.to_string(),
        })?),
    };
    let index = match (app.gpu, from_env) {
        (Some(gpu), Some(env)) if gpu != env => {
            return Err(CommandError::GpuDisagrees {
                app: app.name.clone(),
                gpu,
                env: env.to_string(),
            });
        }
        (Some(gpu), _) => Some(gpu),
        (None, Some(env)) => Some(env),
        // Pins written in the app's env or args: see env_pins.
        (None, None) => None,
    };
    let Some(index) = index else { return Ok(None) };
    match ctx.gpu_uuids.get(index as usize) {
        Some(uuid) => Ok(Some(GpuPin {
            index,
            uuid: uuid.clone(),
        })),
        None => Err(CommandError::GpuMissing {
            app: app.name.clone(),
            index,
            found: match ctx.gpu_uuids.len() {
                0 => "this machine has no GPU".to_string(),
                1 => "this machine has 1 GPU (index 0)".to_string(),
                n => format!("this machine has {n} GPUs (indices 0-{})", n - 1),
            },
        }),
    }
}

/// PM2's interpreter table, by script extension.
pub(crate) fn interpreter_for(script: &str) -> Option<&'static str> {
    let ext = Path::new(script).extension()?.to_str()?;
    Some(match ext {
        "js" | "cjs" | "mjs" => "node",
        "py" => "python3",
        "sh" => "bash",
        "rb" => "ruby",
        "pl" => "perl",
        "php" => "php",
        "ts" | "tsx" => "bun",
        _ => return None,
    })
}

fn program_and_args(app: &AppSpec, ctx: &Context) -> (OsString, Vec<OsString>) {
    if app.script == SELF_SCRIPT {
        return (ctx.current_exe.clone().into_os_string(), Vec::new());
    }
    // The simulation service is another binary of this build: the one next to the runtime.
    if app.script == machine_model::catalog::SIMULATION_PROGRAM {
        return (
            ctx.current_exe.with_file_name(&app.script).into(),
            Vec::new(),
        );
    }
    let interpreter = match &app.interpreter {
        Interpreter::None => None,
        Interpreter::Program(p) => Some(p.clone()),
        Interpreter::Auto => interpreter_for(&app.script).map(str::to_string),
    };
    let script = resolve_script(app);
    match interpreter {
        None => (script, Vec::new()),
        Some(interpreter) => {
            let mut args: Vec<OsString> = app.interpreter_args.iter().map(OsString::from).collect();
            args.push(script);
            (interpreter.into(), args)
        }
    }
}

/// A script path relative to `cwd` (PM2 looks there first); a bare name not found there is left
/// for the PATH search at exec time.
fn resolve_script(app: &AppSpec) -> OsString {
    let script = Path::new(&app.script);
    match &app.cwd {
        Some(cwd) if script.is_relative() => {
            let candidate = cwd.join(script);
            if app.script.contains('/') || candidate.is_file() {
                candidate.into_os_string()
            } else {
                script.as_os_str().to_owned()
            }
        }
        _ => script.as_os_str().to_owned(),
    }
}

impl ChildCommand {
    /// A std command: exact environment, own process group, stdin closed, stdout/stderr piped.
    pub(crate) fn to_command(&self) -> Command {
        let mut cmd = new_child(self.resolved_program());
        cmd.args(&self.args)
            .env_clear()
            .envs(&self.env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        cmd
    }

    /// The program as a path: a bare name is looked up on the child's `PATH` (as execvp would).
    /// Giving std a path keeps it on the posix_spawn fast path; with a bare name and a custom
    /// `PATH` it falls back to fork + exec, which costs about a millisecond per child here.
    pub(crate) fn resolved_program(&self) -> OsString {
        let program = Path::new(&self.program);
        if self.program.as_encoded_bytes().contains(&b'/') {
            return self.program.clone();
        }
        // execvp's own default when there is no PATH at all.
        let default = OsString::from("/usr/local/bin:/usr/bin:/bin");
        let path = self.env.get(OsStr::new("PATH")).unwrap_or(&default);
        std::env::split_paths(path)
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
            .map(PathBuf::into_os_string)
            .unwrap_or_else(|| self.program.clone())
    }

    /// The command line for log messages (program and arguments, never the environment).
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A command for `program` that the runtime may spawn: stdin closed, the leader of its own process
/// group (signals reach the child and every grandchild, and the terminal's Ctrl-C reaches only us;
/// we forward it), and [`child_hygiene`] (killed when the runtime dies, empty signal mask). The
/// caller adds arguments, environment, working directory and output pipes.
#[allow(clippy::disallowed_methods)] // The one constructor (see the module doc).
pub(crate) fn new_child(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    child_hygiene(&mut cmd);
    cmd
}

/// Makes a child of the supervisor (an app or a probe) safe to start:
/// - it gets SIGKILL when the runtime dies, even by `kill -9` (`PR_SET_PDEATHSIG`), so no app
///   outlives its supervisor. The signal fires when the *thread* that spawned the child ends; the
///   runtime spawns from its async worker threads, which live until the runtime stops. If the
///   runtime died between fork and `prctl`, the child exits at once. Grandchildren are not covered
///   by this (the flag is not inherited); see docs/hostile-input.md for what covers them;
/// - it starts with an empty signal mask: `up` holds SIGTERM/SIGINT blocked from its first line
///   (see [`crate::signals::hold_stop_signals`]) and std does not reset the mask of a child.
///
/// The pre-exec step moves std from posix_spawn to fork + exec (about a millisecond more per start).
fn child_hygiene(cmd: &mut Command) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let hook = move || {
        // SAFETY: sigemptyset, sigprocmask, prctl, getppid and _exit are async-signal-safe; nothing
        // here allocates or takes a lock, as required between fork and exec.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(137);
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe system calls (see above).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, hook);
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUIDS: [&str; 2] = [
        "GPU-00000000-0000-0000-0000-000000000000",
        "GPU-00000000-0000-0000-0000-000000000001",
    ];
    const MIG: &str = "MIG-11111111-0000-0000-0000-000000000000";

    fn ctx(env: &[(&str, &str)]) -> Context {
        Context {
            runtime_env: env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
            gpu_uuids: UUIDS.iter().map(|s| s.to_string()).collect(),
            mig_uuids: vec![(1, MIG.to_string())],
            current_exe: PathBuf::from("/usr/local/bin/machine-runtime"),
        }
    }

    fn env_of(cmd: &ChildCommand, key: &str) -> Option<String> {
        cmd.env
            .get(OsStr::new(key))
            .map(|v| v.to_string_lossy().into_owned())
    }

    #[test]
    fn pins_gpu_apps_by_uuid_and_empties_cvd_for_others() {
        let mut svc = AppSpec::new("comfyui-gpu1", "python3");
        svc.gpu = Some(1);
        svc.env.insert("CUDA_VISIBLE_DEVICES".into(), "1".into());
        let cmd = build(&svc, &ctx(&[("CUDA_VISIBLE_DEVICES", "0,1")])).unwrap();
        assert_eq!(
            env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(),
            Some(UUIDS[1])
        );
        assert_eq!(
            env_of(&cmd, "CUDA_DEVICE_ORDER").as_deref(),
            Some("PCI_BUS_ID")
        );
        assert_eq!(env_of(&cmd, "WORKER_GPU_ID").as_deref(), Some("1"));
        assert_eq!(
            cmd.gpu,
            Some(GpuPin {
                index: 1,
                uuid: UUIDS[1].into()
            })
        );

        let mut worker = AppSpec::new("comfyui-worker-0", "node");
        worker.env.insert("WORKER_GPU_ID".into(), "0".into());
        let cmd = build(&worker, &ctx(&[])).unwrap();
        assert_eq!(
            env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(),
            Some(UUIDS[0])
        );

        let mut legacy = AppSpec::new("legacy", "x");
        legacy.env.insert("CUDA_VISIBLE_DEVICES".into(), "1".into());
        assert_eq!(build(&legacy, &ctx(&[])).unwrap().gpu.unwrap().index, 1);

        let api = AppSpec::new("openai-worker-0", "node");
        let cmd = build(&api, &ctx(&[("CUDA_VISIBLE_DEVICES", "0")])).unwrap();
        assert_eq!(env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(), Some(""));
        assert_eq!(
            env_of(&cmd, "CUDA_DEVICE_ORDER").as_deref(),
            Some("PCI_BUS_ID")
        );
        assert_eq!(cmd.gpu, None);
    }

    #[test]
    fn keeps_or_translates_every_pin_written_in_env_or_args() {
        let cvd = |value: &str| {
            let mut app = AppSpec::new("tp", "python3");
            app.env.insert("CUDA_VISIBLE_DEVICES".into(), value.into());
            build(&app, &ctx(&[]))
        };
        let both = format!("{},{}", UUIDS[0], UUIDS[1]);
        let cmd = cvd("0,1").unwrap();
        assert_eq!(env_of(&cmd, "CUDA_VISIBLE_DEVICES"), Some(both.clone()));
        assert_eq!(cmd.visible.len(), 2);
        assert_eq!(cmd.gpu, None);
        assert_eq!(
            env_of(&cvd(UUIDS[1]).unwrap(), "CUDA_VISIBLE_DEVICES").as_deref(),
            Some(UUIDS[1])
        );
        // A prefix, as CUDA allows, must name one GPU (the two here differ in the last digit).
        assert!(
            cvd("GPU-00000000")
                .unwrap_err()
                .to_string()
                .contains("the start of more than one GPU's UUID")
        );
        let cmd = cvd(MIG).unwrap();
        assert_eq!(env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(), Some(MIG));
        assert_eq!(cmd.gpu.unwrap().index, 1);
        for none in ["", "-1"] {
            let cmd = cvd(none).unwrap();
            assert_eq!(env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(), Some(""));
        }
        for (value, why) in [
            (
                "0,7",
                "GPU 7 does not exist: this machine has 2 GPUs (indices 0-1)",
            ),
            ("GPU-ffff", "no GPU of this machine has the UUID GPU-ffff"),
            (
                "MIG-0000",
                "no MIG device of this machine has the UUID MIG-0000",
            ),
            ("cuda0", "entry \"cuda0\" is not a GPU index"),
            ("1,1", "names a GPU listed earlier"),
        ] {
            let err = cvd(value).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!(
                    "app \"tp\": env CUDA_VISIBLE_DEVICES is \"{value}\": "
                )) && err.contains(why),
                "{value}: {err}"
            );
        }

        let mut nvidia = AppSpec::new("n", "x");
        nvidia
            .env
            .insert("NVIDIA_VISIBLE_DEVICES".into(), "all".into());
        let cmd = build(&nvidia, &ctx(&[])).unwrap();
        assert_eq!(env_of(&cmd, "CUDA_VISIBLE_DEVICES"), Some(both.clone()));
        nvidia
            .env
            .insert("NVIDIA_VISIBLE_DEVICES".into(), "1".into());
        let cmd = build(&nvidia, &ctx(&[])).unwrap();
        assert_eq!(
            env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(),
            Some(UUIDS[1])
        );

        let mut comfy = AppSpec::new("comfy", "main.py");
        comfy.args = vec!["--cuda-device".into(), "1".into()];
        let cmd = build(&comfy, &ctx(&[])).unwrap();
        assert_eq!(
            env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(),
            Some(UUIDS[1])
        );
        comfy.args = vec!["--cuda-device=3".into()];
        assert!(
            build(&comfy, &ctx(&[]))
                .unwrap_err()
                .to_string()
                .contains("args --cuda-device is \"3\": GPU 3 does not exist")
        );
        let mut torch = AppSpec::new("torch", "serve.py");
        torch.args = vec!["--device".into(), "cuda:1".into()];
        let cmd = build(&torch, &ctx(&[])).unwrap();
        assert_eq!(env_of(&cmd, "CUDA_VISIBLE_DEVICES"), Some(both));
        torch.args = vec!["--device".into(), "cpu".into()];
        let cmd = build(&torch, &ctx(&[])).unwrap();
        assert_eq!(env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(), Some(""));

        // machine_gpu and a pin in env must agree.
        let mut pinned = AppSpec::new("svc", "x");
        pinned.gpu = Some(0);
        pinned.env.insert("CUDA_VISIBLE_DEVICES".into(), "1".into());
        assert!(
            build(&pinned, &ctx(&[]))
                .unwrap_err()
                .to_string()
                .contains("the app is pinned to GPU 0")
        );
    }

    #[test]
    fn refuses_missing_or_inconsistent_gpus() {
        let mut app = AppSpec::new("comfyui-gpu2", "x");
        app.gpu = Some(2);
        assert_eq!(
            build(&app, &ctx(&[])).unwrap_err().to_string(),
            "app \"comfyui-gpu2\" is pinned to GPU 2, but this machine has 2 GPUs (indices 0-1); start on a machine with that GPU or re-plan for the GPUs present"
        );
        let none = Context {
            gpu_uuids: Vec::new(),
            ..ctx(&[])
        };
        assert!(
            build(&app, &none)
                .unwrap_err()
                .to_string()
                .contains("this machine has no GPU")
        );
        app.gpu = Some(0);
        app.env.insert("WORKER_GPU_ID".into(), "1".into());
        assert_eq!(
            build(&app, &ctx(&[])).unwrap_err(),
            CommandError::GpuDisagrees {
                app: "comfyui-gpu2".into(),
                gpu: 0,
                env: "1".into()
            }
        );
        app.gpu = None;
        app.env.insert("WORKER_GPU_ID".into(), "one".into());
        assert!(matches!(
            build(&app, &ctx(&[])),
            Err(CommandError::BadGpuIndex { .. })
        ));
    }

    #[test]
    fn merges_env_and_recomputes_worker_id() {
        let mut app = AppSpec::new("comfyui-worker-0", "node");
        app.connector = Some("comfyui".into());
        app.index = Some(0);
        app.env.insert("MACHINE_ID".into(), "built".into());
        app.env
            .insert("WORKER_ID".into(), "built-worker-comfyui-0".into());
        app.env.insert("HUB_REDIS_URL".into(), "redis://x".into());
        let cmd = build(
            &app,
            &ctx(&[
                ("MACHINE_ID", "m7"),
                ("PATH", "/bin"),
                ("HUB_REDIS_URL", "redis://outer"),
            ]),
        )
        .unwrap();
        assert_eq!(env_of(&cmd, "MACHINE_ID").as_deref(), Some("m7"));
        assert_eq!(
            env_of(&cmd, "WORKER_ID").as_deref(),
            Some("m7-worker-comfyui-0")
        );
        assert_eq!(env_of(&cmd, "PATH").as_deref(), Some("/bin"));
        assert_eq!(env_of(&cmd, "HUB_REDIS_URL").as_deref(), Some("redis://x"));

        // Without a MACHINE_ID at runtime the generated ids stay.
        let cmd = build(&app, &ctx(&[])).unwrap();
        assert_eq!(
            env_of(&cmd, "WORKER_ID").as_deref(),
            Some("built-worker-comfyui-0")
        );
    }

    #[test]
    fn a_worker_sees_only_its_own_spec_and_needs_and_the_machine_settings_win() {
        let runtime = ctx(&[
            ("WORKERS", "openai:4,gemini:2"),
            ("WORKER_CONNECTORS", "openai:4,gemini:2"),
            ("OPENAI_API_KEY", "sk-1"),
            ("OPENAI_IMAGE_MODEL", "m"),
            ("GEMINI_API_KEY", "g-1"),
            ("HUB_REDIS_URL", "redis://r"),
            ("WORKER_POLL_INTERVAL_MS", "250"),
            ("WORKER_WEBSOCKET_AUTH_TOKEN", "tok"),
        ]);
        let mut gemini = AppSpec::new("gemini-worker-0", "redis-direct-worker.js");
        gemini.connector = Some("gemini".into());
        gemini.index = Some(0);
        gemini.required_env = vec!["GEMINI_API_KEY".into()];
        gemini.env.insert("WORKERS".into(), "gemini".into());
        gemini.env.insert("POLL_INTERVAL_MS".into(), "1000".into());
        let cmd = build(&gemini, &runtime).unwrap();
        assert_eq!(env_of(&cmd, "WORKERS").as_deref(), Some("gemini"));
        // Not in its own env: derived from the connector, never the machine's spec.
        assert_eq!(env_of(&cmd, "WORKER_CONNECTORS").as_deref(), Some("gemini"));
        assert_eq!(env_of(&cmd, "CONNECTORS").as_deref(), Some("gemini"));
        assert_eq!(env_of(&cmd, "GEMINI_API_KEY").as_deref(), Some("g-1"));
        assert_eq!(env_of(&cmd, "OPENAI_API_KEY"), None);
        assert_eq!(env_of(&cmd, "OPENAI_IMAGE_MODEL"), None);
        assert_eq!(env_of(&cmd, "HUB_REDIS_URL").as_deref(), Some("redis://r"));
        assert_eq!(env_of(&cmd, "POLL_INTERVAL_MS").as_deref(), Some("250"));
        assert_eq!(env_of(&cmd, "WEBSOCKET_AUTH_TOKEN").as_deref(), Some("tok"));

        // A service keeps the runtime's environment as it is.
        let svc = AppSpec::new("comfyui-gpu0", "python3");
        let cmd = build(&svc, &runtime).unwrap();
        assert_eq!(env_of(&cmd, "OPENAI_API_KEY").as_deref(), Some("sk-1"));
        assert_eq!(env_of(&cmd, "POLL_INTERVAL_MS"), None);
    }

    #[test]
    fn looks_bare_programs_up_on_the_childs_path() {
        let mut app = AppSpec::new("a", "sh");
        app.env
            .insert("PATH".into(), "/nonexistent:/bin:/usr/bin".into());
        let cmd = build(&app, &ctx(&[])).unwrap();
        let resolved = PathBuf::from(cmd.resolved_program());
        assert!(
            resolved.is_absolute() && resolved.ends_with("sh"),
            "{resolved:?}"
        );
        let app = AppSpec::new("a", "no-such-program-anywhere");
        let cmd = build(&app, &ctx(&[("PATH", "/bin")])).unwrap();
        assert_eq!(cmd.resolved_program(), "no-such-program-anywhere");
    }

    #[test]
    fn resolves_program_like_pm2() {
        let c = ctx(&[]);
        let mut app = AppSpec::new("a", "server.py");
        app.args = vec!["--port".into(), "1".into()];
        app.cwd = Some("/srv".into());
        let cmd = build(&app, &c).unwrap();
        // Not in /srv here, so it stays relative: python3 resolves it in its cwd, /srv.
        assert_eq!(cmd.display(), "python3 server.py --port 1");
        assert_eq!(cmd.cwd.as_deref(), Some(Path::new("/srv")));

        let mut app = AppSpec::new("a", "./bin/tool");
        app.cwd = Some("/srv".into());
        assert_eq!(build(&app, &c).unwrap().display(), "/srv/./bin/tool");

        let mut app = AppSpec::new("a", "sleep");
        app.cwd = Some("/nonexistent".into());
        app.args = vec!["5".into()];
        assert_eq!(build(&app, &c).unwrap().display(), "sleep 5");

        let mut app = AppSpec::new("a", "worker.js");
        app.interpreter = Interpreter::Program("/usr/bin/node".into());
        app.interpreter_args = vec!["--max-old-space-size=512".into()];
        assert_eq!(
            build(&app, &c).unwrap().display(),
            "/usr/bin/node --max-old-space-size=512 worker.js"
        );

        let mut app = AppSpec::new("a", "run.sh");
        app.interpreter = Interpreter::None;
        assert_eq!(build(&app, &c).unwrap().display(), "run.sh");

        let mut app = AppSpec::new("sim", SELF_SCRIPT);
        app.args = vec!["simulate".into(), "--port".into(), "8299".into()];
        app.interpreter = Interpreter::Program("node".into());
        assert_eq!(
            build(&app, &c).unwrap().display(),
            "/usr/local/bin/machine-runtime simulate --port 8299"
        );
    }

    #[test]
    fn workers_get_the_broker_ca_as_node_extra_ca_certs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nOURS\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(
            &bundle,
            "-----BEGIN CERTIFICATE-----\nTHEIRS\n-----END CERTIFICATE-----",
        )
        .unwrap();
        let (ca, bundle) = (ca.to_str().unwrap(), bundle.to_str().unwrap());
        let mut worker = AppSpec::new("simulation-worker-0", "node");
        worker.env.insert("WORKER_ID".into(), "m-worker-0".into());
        let cmd = build(&worker, &ctx(&[("HUB_REDIS_TLS_CA_FILE", ca)])).unwrap();
        assert_eq!(env_of(&cmd, "NODE_EXTRA_CA_CERTS").as_deref(), Some(ca));
        // A file the environment already names is kept: Node gets one bundle of both.
        let c = ctx(&[
            ("HUB_REDIS_TLS_CA_FILE", ca),
            ("NODE_EXTRA_CA_CERTS", bundle),
        ]);
        let combined = env_of(&build(&worker, &c).unwrap(), "NODE_EXTRA_CA_CERTS").unwrap();
        let text = std::fs::read_to_string(&combined).unwrap();
        assert!(
            text.contains("THEIRS\n-----END CERTIFICATE-----\n-----BEGIN"),
            "{text}"
        );
        assert!(text.contains("OURS"), "{text}");
        // The same inputs give the same file.
        assert_eq!(
            env_of(&build(&worker, &c).unwrap(), "NODE_EXTRA_CA_CERTS").unwrap(),
            combined
        );
        // A service (not a worker) is left alone; no CA, nothing added.
        let service = AppSpec::new("comfyui-gpu0", "python3");
        let cmd = build(&service, &ctx(&[("HUB_REDIS_TLS_CA_FILE", ca)])).unwrap();
        assert_eq!(env_of(&cmd, "NODE_EXTRA_CA_CERTS"), None);
        let cmd = build(&worker, &ctx(&[])).unwrap();
        assert_eq!(env_of(&cmd, "NODE_EXTRA_CA_CERTS"), None);
    }
}
