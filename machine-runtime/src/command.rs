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
    pub gpu: Option<GpuPin>,
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
}

/// Everything outside the ecosystem that shapes a child command.
#[derive(Debug, Clone)]
pub struct Context {
    /// The runtime's own environment, inherited by every child.
    pub runtime_env: BTreeMap<OsString, OsString>,
    /// GPU UUIDs ordered by inventory index (`gpu_uuids[i]` is GPU `i`).
    pub gpu_uuids: Vec<String>,
    /// The runtime binary, used for the script `machine-runtime`.
    pub current_exe: PathBuf,
}

impl Context {
    /// The current process's environment and executable, with the given GPU UUIDs.
    pub fn from_process(gpu_uuids: Vec<String>) -> Context {
        Context {
            runtime_env: std::env::vars_os().collect(),
            gpu_uuids,
            current_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from(SELF_SCRIPT)),
        }
    }
}

/// Builds the command for `app`.
pub fn build(app: &AppSpec, ctx: &Context) -> Result<ChildCommand, CommandError> {
    let (program, mut args) = program_and_args(app, ctx);
    args.extend(app.args.iter().map(OsString::from));

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
    match &gpu {
        Some(pin) => {
            env.insert("CUDA_VISIBLE_DEVICES".into(), pin.uuid.clone().into());
            env.insert("WORKER_GPU_ID".into(), pin.index.to_string().into());
        }
        // An empty list means "no GPU" to CUDA; unset would mean "every GPU".
        None => {
            env.insert("CUDA_VISIBLE_DEVICES".into(), OsString::new());
        }
    }
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

    Ok(ChildCommand {
        program,
        args,
        cwd: app.cwd.clone(),
        env,
        gpu,
    })
}

/// Whether `app` is a job worker: it has a connector, a `WORKER_ID` or the worker role.
pub fn is_worker(app: &AppSpec) -> bool {
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

/// The worker settings the runtime's environment gives, under the worker's names; a worker with a
/// connector but no spec of its own gets its connector in `WORKERS` and `CONNECTORS`.
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
    if let Some(connector) = &app.connector {
        for var in machine_model::catalog::MACHINE_WIDE_WORKER_VARS {
            env.entry(var.into()).or_insert_with(|| connector.into());
        }
    }
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
        // A hand-written PM2 file may pin with a plain index in CUDA_VISIBLE_DEVICES.
        (None, None) => match app.env.get("CUDA_VISIBLE_DEVICES").map(|v| v.trim()) {
            Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                Some(v.parse::<u32>().map_err(|_| CommandError::BadGpuIndex {
                    app: app.name.clone(),
                    field: "CUDA_VISIBLE_DEVICES",
                    value: v.to_string(),
                })?)
            }
            _ => None,
        },
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
    pub fn to_command(&self) -> Command {
        let mut cmd = Command::new(self.resolved_program());
        cmd.args(&self.args)
            .env_clear()
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        // Its own group: signals reach the child and every grandchild, and the terminal's Ctrl-C
        // reaches only us (we forward it). process_group keeps std on the posix_spawn path.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd
    }

    /// The program as a path: a bare name is looked up on the child's `PATH` (as execvp would).
    /// Giving std a path keeps it on the posix_spawn fast path; with a bare name and a custom
    /// `PATH` it falls back to fork + exec, which costs about a millisecond per child here.
    pub fn resolved_program(&self) -> OsString {
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

    fn ctx(env: &[(&str, &str)]) -> Context {
        Context {
            runtime_env: env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
            gpu_uuids: UUIDS.iter().map(|s| s.to_string()).collect(),
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
}
