//! machine-runtime: the container entrypoint; parses the command line and dispatches to the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "machine-runtime",
    version,
    about = "Detect GPUs, install, launch and supervise a GPU worker machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the GPU inventory as the runtime sees it (NVML, or MACHINE_FAKE_GPUS=N).
    Gpus {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Run the built-in `simulation` inference service (a ComfyUI stand-in).
    Simulate {
        /// Port to listen on (0 picks a free one; the start line says which).
        #[arg(long)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Wait this long before listening, to imitate a slow-starting service.
        #[arg(long, default_value_t = 0)]
        startup_delay_ms: u64,
        /// Simulated duration of one POST /prompt job.
        #[arg(long, default_value_t = 100)]
        job_ms: u64,
    },
    /// Install the internal services' software once (skipped when the markers match).
    Install(machine_runtime::install::InstallArgs),
    /// Stand in for a job worker: register and heartbeat in redis while the service at SIMULATION_BASE_URL answers.
    SimulateWorker,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Gpus { format } => gpus(format),
        Command::Simulate {
            port,
            host,
            startup_delay_ms,
            job_ms,
        } => simulate(port, host, startup_delay_ms, job_ms),
        Command::SimulateWorker => return machine_runtime::simulate_worker::main(),
        Command::Install(args) => return machine_runtime::install::run_cli(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("machine-runtime: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn gpus(format: Format) -> anyhow::Result<ExitCode> {
    let inventory = machine_runtime::gpu::Inventory::detect()?;
    match format {
        Format::Text => print!("{}", inventory.to_text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&inventory)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn simulate(
    port: u16,
    host: String,
    startup_delay_ms: u64,
    job_ms: u64,
) -> anyhow::Result<ExitCode> {
    use machine_runtime::simulate::{Identity, SimulateOptions};
    use std::time::Duration;
    use tokio::signal::unix::{SignalKind, signal};

    let options = SimulateOptions {
        host,
        port,
        startup_delay: Duration::from_millis(startup_delay_ms),
        job_delay: Duration::from_millis(job_ms),
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
