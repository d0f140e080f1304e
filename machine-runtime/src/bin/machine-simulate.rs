//! machine-simulate: the `simulation` service, a stand-in for ComfyUI that the full-local profile and the
//! tests run (catalog service `simulation`). Its own binary, so the production `machine-runtime` carries no
//! test double; the runtime starts it from the folder it was started from (`machine-runtime/src/command/program.rs`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use machine_runtime::simulate::session::MAX_STEPS;
use machine_runtime::simulate::{Identity, JobDefaults, SimulateOptions};
use machine_runtime::sink;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "machine-simulate",
    version,
    about = "The `simulation` service: the simulation-websocket protocol and GET /health on one port (a stand-in for ComfyUI; not part of the production runtime)"
)]
struct Cli {
    /// Port to listen on (0 picks a free one; the start line says which).
    #[arg(long)]
    port: u16,
    /// Address to listen on (0.0.0.0 to answer other hosts, e.g. from a published container port).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Wait this long before listening, to imitate a slow-starting service.
    #[arg(long, default_value_t = 0)]
    startup_delay_ms: u64,
    /// Simulated duration of one POST /prompt job.
    #[arg(long, default_value_t = 100)]
    job_ms: u64,
    /// Steps of a simulation job whose config names none [default: $SIMULATION_STEP_COUNT, else 10].
    #[arg(long, value_name = "N")]
    steps: Option<u32>,
    /// Time per step of a simulation job whose config names no processing_time_ms
    /// [default: $SIMULATION_STEP_DELAY_MS, else 200].
    #[arg(long, value_name = "MS")]
    step_delay_ms: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match simulate(cli) {
        Ok(code) => code,
        Err(err) => {
            machine_runtime::log::command_error("machine-simulate", &format!("{err:#}"));
            ExitCode::FAILURE
        }
    };
    sink::flush(Duration::from_secs(2));
    code
}

/// A number from a flag, else from an environment variable, else the default; a bad variable is named.
fn flag_or_env<T: std::str::FromStr>(
    flag: Option<T>,
    var: &str,
    default: T,
    problems: &mut Vec<String>,
) -> T {
    if let Some(value) = flag {
        return value;
    }
    match machine_runtime::env::number_var(machine_runtime::env::lookup, var) {
        Ok(value) => value.unwrap_or(default),
        Err(problem) => {
            problems.push(problem);
            default
        }
    }
}

fn simulate(args: Cli) -> anyhow::Result<ExitCode> {
    let fallback = JobDefaults::default();
    let mut problems = Vec::new();
    let steps = flag_or_env(
        args.steps,
        "SIMULATION_STEP_COUNT",
        fallback.steps,
        &mut problems,
    );
    let step_delay_ms = flag_or_env(
        args.step_delay_ms,
        "SIMULATION_STEP_DELAY_MS",
        u64::try_from(fallback.step_delay.as_millis()).unwrap_or(u64::MAX),
        &mut problems,
    );
    if steps == 0 || u64::from(steps) > MAX_STEPS {
        problems.push(format!(
            "the step count is {steps}; allowed: 1 to {MAX_STEPS} (--steps or SIMULATION_STEP_COUNT)"
        ));
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "simulation service cannot start:\n  {}",
            problems.join("\n  ")
        );
    }
    let options = SimulateOptions {
        host: args.host,
        port: args.port,
        startup_delay: Duration::from_millis(args.startup_delay_ms),
        job_delay: Duration::from_millis(args.job_ms),
        defaults: JobDefaults {
            steps,
            step_delay: Duration::from_millis(step_delay_ms),
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            on_signal.cancel();
        });
        machine_runtime::simulate::run(options, Identity::from_env(), shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}
