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
//! (`disallowed-methods` in the repository's `clippy.toml`).//!
//! Files: `program` (program and arguments), `worker_env` (what a worker's environment keeps and
//! gets), `pins` (GPU pins, from the ecosystem and the app's own env and arguments), `spawn` (the
//! std command and its process hygiene); [`build`] puts them together.

mod pins;
mod program;
mod spawn;
#[cfg(test)]
mod tests;
mod worker_env;

pub(crate) use program::interpreter_for;
pub(crate) use spawn::{hygiene_in_child, new_child};
pub(crate) use worker_env::is_worker;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use crate::ecosystem::{AppSpec, SELF_SCRIPT};
use pins::apply_pins;
use program::{FileChecks, extra_args, program_and_args, runs_node};
use worker_env::{apply_worker_settings, strip_foreign_worker_env};

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

/// Builds the command for `app` ([`Builder::build`] for many apps).
pub fn build(app: &AppSpec, ctx: &Context) -> Result<ChildCommand, CommandError> {
    Builder::new(ctx).build(app)
}

/// Builds the commands of many apps at once (a start's): a script path is looked at once for all
/// the apps that name it (PM2 looks for a bare script name in the app's `cwd` first).
pub struct Builder<'a> {
    ctx: &'a Context,
    files: FileChecks,
}

impl<'a> Builder<'a> {
    pub fn new(ctx: &'a Context) -> Builder<'a> {
        Builder {
            ctx,
            files: FileChecks::default(),
        }
    }

    /// The command for `app`, under the builder's context.
    pub fn build(&mut self, app: &AppSpec) -> Result<ChildCommand, CommandError> {
        let ctx = self.ctx;
        let (program, mut args) = program_and_args(app, ctx, &mut self.files);
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
        let (gpu, visible) = apply_pins(&mut env, app, ctx)?;

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
}
