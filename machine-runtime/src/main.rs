//! machine-runtime: the container entrypoint; parses the command line and dispatches to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use machine_runtime::supervisor::SupervisorOptions;
use machine_runtime::up::{self, BrokerSetting, UpOptions};
use machine_runtime::{ecosystem, health, sink};

/// `println!` that never panics: `machine-runtime plan | head -1` closes stdout early, which is
/// nothing to crash about.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `--version`: the crate version and the git commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MACHINE_BUILD_COMMIT"),
    ")"
);

const MAIN_HELP: &str = "Examples:
  machine-runtime up --profile full-local        run a machine (the image's entrypoint)
  machine-runtime plan --profile gpu-mixed       what it would start here
  machine-runtime ps                             the apps of the running machine
  machine-runtime logs -f                        follow every app's output
  machine-runtime restart comfyui-gpu0           (needs MACHINE_CONTROL_TOKEN)
  docker compose exec machine machine-runtime ps
  machine-runtime completions bash > /etc/bash_completion.d/machine-runtime

Each command's --help lists the environment variables it reads.";

const UP_HELP: &str = "Examples:
  machine-runtime up --profile full-local
  machine-runtime up --ecosystem ecosystem.config.json --health-port 0
  MACHINE_LOG_FORMAT=json machine-runtime up --profile api-only

Environment:
  MACHINE_PROFILE        the profile, as --profile
  MACHINE_HEALTH_PORT    the health port, as --health-port (default 9090)
  MACHINE_LOG_FORMAT     text or json, as --log-format
  MACHINE_CONTROL_TOKEN  turns on the POST control routes (restart, stop, start)
  MACHINE_ID             the machine's id (MACHINE_ID_APPEND_HOSTNAME appends the host name)
  HUB_REDIS_URL          the job broker's Redis; unset, the machine runs without a broker
  WORKSPACE_DIR          the root of the installs and the apps' files
  MACHINE_FAKE_GPUS      N fake GPUs instead of NVML (tests, machines without a GPU)
  WORKERS, WORKER_CONNECTORS, MACHINE_GPU_COUNT, MACHINE_ALLOW_FEWER_GPUS
                         override the profile's plan (see `machine-runtime plan`)
  NO_COLOR               any value turns colours off";

const INSTALL_HELP: &str = "Examples:
  machine-runtime install --profile full-local
  machine-runtime install --profile full-local --check
  machine-runtime install --services comfyui --workspace /workspace --force

Environment:
  WORKSPACE_DIR          the root of the installs, as --workspace (default /workspace)
  WORKER_BUNDLE_URL      where the worker bundle comes from, instead of the profile's source
  WORKER_BUNDLE_SHA256   the bundle's expected SHA-256
  WORKER_CONNECTORS      the workers' connectors, instead of the profile's
  COMFYUI_BRANCH         the ComfyUI revision to check out
  PYTHON                 the Python that makes the virtual environments";

const PLAN_HELP: &str = "Examples:
  machine-runtime plan --profile full-local
  MACHINE_FAKE_GPUS=2 machine-runtime plan --profile gpu-mixed --format json

Environment:
  MACHINE_PROFILE        the profile, as --profile
  MACHINE_FAKE_GPUS      N fake GPUs instead of NVML
  WORKERS, WORKER_CONNECTORS, MACHINE_GPU_COUNT, MACHINE_ALLOW_FEWER_GPUS, MACHINE_ID
                         override the profile's plan";

const GPUS_HELP: &str = "Examples:
  machine-runtime gpus
  machine-runtime gpus --format json

Environment:
  MACHINE_FAKE_GPUS      N fake GPUs instead of NVML
  MACHINE_NVML_LIBRARY   the NVML library to load";

const HEALTH_HELP: &str = "Examples:
  machine-runtime health                 (the image's HEALTHCHECK)
  machine-runtime health --port 9092 --timeout 2

Environment:
  MACHINE_HEALTH_PORT    the health port, as --port (default 9090)";

const COMPLETIONS_HELP: &str = "Examples:
  machine-runtime completions bash > /etc/bash_completion.d/machine-runtime
  machine-runtime completions zsh > \"${fpath[1]}/_machine-runtime\"
  machine-runtime completions fish > ~/.config/fish/completions/machine-runtime.fish";

#[derive(Parser)]
#[command(
    name = "machine-runtime",
    version = VERSION,
    about = "Detect GPUs, install, launch and supervise a GPU worker machine",
    after_help = MAIN_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the GPU inventory as the runtime sees it (NVML, or MACHINE_FAKE_GPUS=N).
    #[command(after_help = GPUS_HELP)]
    Gpus {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Install the internal services' software once (skipped when the markers match).
    #[command(after_help = INSTALL_HELP)]
    Install(machine_runtime::install::InstallArgs),
    /// Start every app, supervise them, serve the health endpoint; stop on SIGTERM/SIGINT.
    #[command(after_help = UP_HELP)]
    Up(UpArgs),
    /// Print what `up --profile` would start, given the GPUs found and the environment.
    #[command(after_help = PLAN_HELP)]
    Plan {
        /// The baked-in profile [default: $MACHINE_PROFILE].
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Exit 0 when the running machine's /health answers 200 (for Docker's HEALTHCHECK).
    #[command(after_help = HEALTH_HELP)]
    Health(HealthArgs),
    #[command(flatten)]
    Ctl(machine_runtime::ctl::Command),
    /// Print a shell completion script for machine-runtime.
    #[command(after_help = COMPLETIONS_HELP)]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Push a job as the queue's API does and print its life (README: the first job).
    #[command(subcommand)]
    Job(machine_runtime::job::JobCommand),
}

#[derive(Args)]
struct UpArgs {
    /// A PM2-compatible ecosystem JSON file to run.
    #[arg(long, value_name = "FILE", conflicts_with = "profile")]
    ecosystem: Option<PathBuf>,
    /// A baked-in profile to plan against the GPUs found and run [default: $MACHINE_PROFILE].
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Port of the health endpoint [default: $MACHINE_HEALTH_PORT, else 9090; 0 picks a free one].
    #[arg(long, value_name = "PORT")]
    health_port: Option<u16>,
    /// How the runtime's own log lines are written [default: $MACHINE_LOG_FORMAT, else text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<machine_runtime::log::LogFormat>,
}

#[derive(Args)]
struct HealthArgs {
    /// Port of the health endpoint [default: $MACHINE_HEALTH_PORT, else 9090].
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// Seconds to wait for an answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    timeout: u64,
    /// While the machine is still starting, ask again every 100 ms for up to SECONDS (Docker's
    /// healthcheck: `healthy` the moment /health answers 200).
    #[arg(long, value_name = "SECONDS")]
    wait: Option<f64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    // Before anything else (no thread, no child yet): a SIGTERM during start-up waits for the
    // supervisor's handlers instead of killing the process.
    machine_runtime::signals::hold_stop_signals();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Up(_)) {
        machine_runtime::signals::release_stop_signals();
    }
    let flag = match &cli.command {
        Command::Up(args) => args.log_format,
        _ => None,
    };
    match machine_runtime::log::LogFormat::from_lookup(machine_runtime::env::lookup) {
        Ok(from_env) => machine_runtime::log::init(flag.or(from_env).unwrap_or_default()),
        Err(problem) => {
            machine_runtime::log::command_error("machine-runtime", &problem);
            sink::flush(Duration::from_secs(2));
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Gpus { format } => gpus(format),
        // Its lines go through the log front end's queue: flushed below like every command's.
        Command::Install(args) => Ok(machine_runtime::install::run_cli(args)),
        Command::Up(args) => up(args).map(|()| ExitCode::SUCCESS),
        Command::Plan { profile, format } => plan(profile, format).map(|()| ExitCode::SUCCESS),
        Command::Health(args) => health_check(args).map(|()| ExitCode::SUCCESS),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "machine-runtime",
                &mut out,
            );
            sink::out(&out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ctl(command) => health_port(None).and_then(|port| {
            machine_runtime::ctl::run(command, port)?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Job(command) => machine_runtime::job::run(command),
    };
    let code = match result {
        Ok(code) => code,
        Err(err) => {
            // Through the sink, never a printing macro: stderr may be a closed pipe.
            machine_runtime::log::command_error("machine-runtime", &format!("{err:#}"));
            ExitCode::FAILURE
        }
    };
    // What is still queued goes out, unless nobody reads it.
    sink::flush(Duration::from_secs(2));
    code
}

fn gpus(format: Format) -> anyhow::Result<ExitCode> {
    let inventory = machine_runtime::gpu::Inventory::detect()?;
    match format {
        Format::Text => outln!("{}", inventory.to_text().trim_end()),
        Format::Json => outln!("{}", serde_json::to_string_pretty(&inventory)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// The health port from the flag, else `MACHINE_HEALTH_PORT`, else the default.
fn health_port(flag: Option<u16>) -> anyhow::Result<u16> {
    if let Some(port) = flag {
        return Ok(port);
    }
    let port = machine_runtime::env::port_var(
        machine_runtime::env::lookup,
        machine_runtime::env::HEALTH_PORT_VAR,
    )
    .map_err(anyhow::Error::msg)?;
    Ok(port.unwrap_or(health::DEFAULT_PORT))
}

/// MIG slices: (index of the parent GPU, `MIG-...` UUID).
type MigUuids = Vec<(u32, String)>;

/// GPU UUIDs ordered by index and MIG slices (parent index, UUID), from the inventory (NVML, or
/// MACHINE_FAKE_GPUS).
fn gpu_uuids() -> anyhow::Result<(Vec<String>, MigUuids)> {
    let inventory = machine_runtime::gpu::Inventory::detect()?;
    let mig = inventory
        .gpus
        .iter()
        .flat_map(|g| g.mig.iter().map(|m| (g.index, m.uuid.clone())))
        .collect();
    Ok((
        inventory
            .ordered_uuids()
            .into_iter()
            .map(str::to_string)
            .collect(),
        mig,
    ))
}

/// The baked-in profile named by the flag or `MACHINE_PROFILE`, planned against the GPUs found and the
/// environment (overrides, secrets).
fn real_plan(flag: Option<String>) -> anyhow::Result<machine_runtime::reality::RealPlan> {
    use machine_runtime::profiles;
    let name = flag
        .or_else(|| {
            std::env::var("MACHINE_PROFILE")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .context("no profile; pass --profile NAME or set MACHINE_PROFILE")?;
    let baked = profiles::by_name(&name).with_context(|| profiles::unknown(&name))?;
    let profile = baked.profile().context("reading the baked-in profile")?;
    let inventory = machine_runtime::gpu::Inventory::detect()?;
    // The plan's machine id is the final one (a scaled Compose service's host name appended).
    let default_id = profile.machine.id.as_deref().unwrap_or(baked.name);
    let machine_id = machine_runtime::identity::machine_id(
        machine_runtime::env::lookup,
        Some(default_id),
        &machine_runtime::identity::hostname(),
    )
    .map_err(|problem| anyhow::anyhow!("cannot start profile {name}:\n  {problem}"))?;
    // A machine setting the environment leaves unset or empty takes the profile's own value (what its
    // generated files say), not the catalog default: `up --profile full-local` runs its workers with
    // the profile's `LOG_LEVEL=debug` like its Compose file does.
    let env = |var: &str| match var {
        "MACHINE_ID" => machine_id.clone(),
        _ => std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .or_else(|| baked.setting(var).map(str::to_owned)),
    };
    let real = machine_runtime::reality::plan(baked.name, &profile, &env, &inventory).map_err(
        |refused| {
            anyhow::anyhow!(
                "cannot start profile {name}:\n  {}",
                refused.problems.join("\n  ")
            )
        },
    )?;
    for note in &real.notes {
        machine_runtime::log::runtime(note);
    }
    Ok(real)
}

fn plan(profile: Option<String>, format: Format) -> anyhow::Result<()> {
    let real = real_plan(profile)?;
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&real.plan)?),
        Format::Text => {
            outln!(
                "profile {}  machine {}  gpus {}  workers {}",
                real.plan.profile,
                real.plan.machine_id,
                real.plan.gpus,
                real.plan.worker_spec
            );
            for s in &real.plan.services {
                let uuid = s
                    .gpu
                    .and_then(|g| real.gpu_uuids.get(g as usize))
                    .map_or("-", |u| u.as_str());
                outln!(
                    "service {:<20} port {:<6} gpu {}",
                    s.name,
                    s.port.map_or("-".into(), |p| p.to_string()),
                    uuid
                );
            }
            for w in &real.plan.workers {
                let uuid = w
                    .gpu
                    .and_then(|g| real.gpu_uuids.get(g as usize))
                    .map_or("-", |u| u.as_str());
                outln!(
                    "worker  {:<20} {} gpu {} after {}",
                    w.name,
                    w.worker_id,
                    uuid,
                    w.service_instance.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(())
}

fn up(args: UpArgs) -> anyhow::Result<()> {
    // Before any app: the soft open-file limit up to the hard one (each app holds two pipes).
    if let Err(err) = machine_runtime::limits::raise_open_files() {
        machine_runtime::log::runtime(&format!(
            "warning: cannot read or raise the open-file limit: {err}"
        ));
    }
    let env_machine_id = machine_runtime::identity::machine_id(
        machine_runtime::env::lookup,
        None,
        &machine_runtime::identity::hostname(),
    )?;
    // Read before planning, so a start that fails names every problem at once.
    let broker = BrokerSetting::from_env();
    let planned = plan_apps(args.ecosystem, args.profile, env_machine_id);
    let planned = match (planned, &broker) {
        (Ok(planned), _) => planned,
        (Err(err), Ok(_)) => return Err(err),
        (Err(err), Err(problems)) => {
            anyhow::bail!("{err:#}\n  {}", problems.join("\n  "))
        }
    };
    if let Some(workspace) = &planned.workspace {
        let created = machine_runtime::limits::ensure_workspace(workspace, "WORKSPACE_DIR")
            .map_err(|problem| anyhow::anyhow!("cannot start the machine:\n  - {problem}"))?;
        if created {
            machine_runtime::log::runtime(&format!(
                "created the workspace {} (WORKSPACE_DIR)",
                workspace.display()
            ));
        }
    }
    let mut supervisor = SupervisorOptions::new(planned.gpu_uuids);
    supervisor.context.mig_uuids = planned.mig_uuids;
    if let Some(id) = &planned.machine_id {
        // Every child runs with the final id (the environment's may lack the host name suffix).
        supervisor
            .context
            .runtime_env
            .insert("MACHINE_ID".into(), id.into());
    }
    let options = UpOptions {
        supervisor,
        health_port: health_port(args.health_port)?,
        machine_id: planned.machine_id,
        gpu_count: planned.gpu_count,
        broker,
        control: health::Control::from_lookup(machine_runtime::env::lookup),
        preflight: planned.preflight,
        install_hint: planned.install_hint,
    };
    up::run(planned.apps, options)?;
    Ok(())
}

/// What `up` runs and reports.
struct Planned {
    apps: Vec<ecosystem::AppSpec>,
    /// GPU UUIDs by index, to pin the apps to.
    gpu_uuids: Vec<String>,
    /// MIG slices (parent index, UUID) an app's CUDA_VISIBLE_DEVICES may name.
    mig_uuids: Vec<(u32, String)>,
    /// The workspace folder (`WORKSPACE_DIR`, the plan's install root), created when missing.
    workspace: Option<PathBuf>,
    /// `MACHINE_ID` from the plan or the environment.
    machine_id: Option<String>,
    /// GPUs reported to the broker.
    gpu_count: u32,
    /// The plan's installs as found (profile mode).
    preflight: machine_runtime::preflight::Findings,
    /// The command that installs what is missing.
    install_hint: String,
}

fn plan_apps(
    ecosystem: Option<PathBuf>,
    profile: Option<String>,
    env_machine_id: Option<String>,
) -> anyhow::Result<Planned> {
    Ok(match ecosystem {
        Some(path) => {
            let eco = ecosystem::read_file(&path)?;
            for warning in &eco.warnings {
                machine_runtime::log::runtime(&format!("warning: {warning}"));
            }
            let (uuids, mig_uuids) = gpu_uuids()?;
            Planned {
                apps: eco.apps,
                gpu_count: u32::try_from(uuids.len()).unwrap_or(u32::MAX),
                gpu_uuids: uuids,
                mig_uuids,
                workspace: std::env::var_os("WORKSPACE_DIR")
                    .filter(|w| !w.is_empty())
                    .map(PathBuf::from),
                machine_id: env_machine_id,
                preflight: Default::default(),
                install_hint: "machine-runtime install --services worker-bundle".to_owned(),
            }
        }
        None => {
            let real = real_plan(profile)?;
            let install_hint = format!("machine-runtime install --profile {}", real.plan.profile);
            let preflight = machine_runtime::preflight::check_installs(
                &real.plan,
                machine_runtime::install::Env::from_process(),
                &install_hint,
            );
            let origin = format!("of profile {}", real.plan.profile);
            let eco = ecosystem::resolve((&real.plan).into(), &origin)?;
            for warning in &eco.warnings {
                machine_runtime::log::runtime(&format!("warning: {warning}"));
            }
            let apps = eco.apps;
            Planned {
                apps,
                gpu_uuids: real.gpu_uuids,
                mig_uuids: Vec::new(),
                workspace: Some(PathBuf::from(&real.plan.workspace)),
                machine_id: Some(real.plan.machine_id),
                gpu_count: real.plan.gpus,
                preflight,
                install_hint,
            }
        }
    })
}

fn health_check(args: HealthArgs) -> anyhow::Result<()> {
    let port = health_port(args.port)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = Duration::from_secs(args.timeout);
    let checked = match args.wait {
        Some(wait) => {
            let wait = Duration::try_from_secs_f64(wait).map_err(|_| {
                anyhow::anyhow!("--wait {wait} is not a number of seconds; use e.g. --wait 3")
            })?;
            rt.block_on(machine_runtime::healthcheck::check_waiting(
                port, timeout, wait,
            ))
        }
        None => rt.block_on(health::check(port, timeout)),
    };
    checked.map_err(|e| anyhow::anyhow!("unhealthy: {e}"))
}
