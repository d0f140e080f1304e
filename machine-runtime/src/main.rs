//! machine-runtime: the container entrypoint; parses the command line and dispatches to the library.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use machine_runtime::{health, sink, up};

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
    Up(up::UpArgs),
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
        Command::Up(args) => up::run_cli(args).map(|()| ExitCode::SUCCESS),
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
        Command::Ctl(command) => health::health_port(None).and_then(|port| {
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

fn plan(profile: Option<String>, format: Format) -> anyhow::Result<()> {
    let real = up::real_plan(profile)?;
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&real.plan)?),
        Format::Text => outln!("{}", up::plan_text(&real)),
    }
    Ok(())
}

fn health_check(args: HealthArgs) -> anyhow::Result<()> {
    let port = health::health_port(args.port)?;
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
