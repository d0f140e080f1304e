//! machine-runtime: the container entrypoint; parses the command line and dispatches to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use machine_runtime::supervisor::{self, SupervisorOptions, UpOptions};
use machine_runtime::{ecosystem, health};

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
    /// Start every app, supervise them, serve the health endpoint; stop on SIGTERM/SIGINT.
    Up(UpArgs),
    /// Exit 0 when the running machine's /health answers 200 (for Docker's HEALTHCHECK).
    Health(HealthArgs),
}

#[derive(Args)]
struct UpArgs {
    /// A PM2-compatible ecosystem JSON file to run.
    #[arg(long, value_name = "FILE")]
    ecosystem: Option<PathBuf>,
    /// Port of the health endpoint [default: $MACHINE_HEALTH_PORT, else 9090; 0 picks a free one].
    #[arg(long, value_name = "PORT")]
    health_port: Option<u16>,
}

#[derive(Args)]
struct HealthArgs {
    /// Port of the health endpoint [default: $MACHINE_HEALTH_PORT, else 9090].
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// Seconds to wait for an answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    timeout: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up(args),
        Command::Health(args) => health_check(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("machine-runtime: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The health port from the flag, else `MACHINE_HEALTH_PORT`, else the default.
fn health_port(flag: Option<u16>) -> anyhow::Result<u16> {
    if let Some(port) = flag {
        return Ok(port);
    }
    match std::env::var("MACHINE_HEALTH_PORT") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .with_context(|| format!("MACHINE_HEALTH_PORT is \"{v}\", which is not a port number")),
        _ => Ok(health::DEFAULT_PORT),
    }
}

/// GPU UUIDs ordered by index.
// TODO(lead): replace with `gpu::Inventory::detect()` when the GPU inventory is merged.
fn gpu_uuids() -> Vec<String> {
    let count = std::env::var("MACHINE_FAKE_GPUS")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0);
    (0..count)
        .map(|i| format!("GPU-00000000-0000-0000-0000-{i:012}"))
        .collect()
}

fn up(args: UpArgs) -> anyhow::Result<()> {
    let path = args
        .ecosystem
        .context("nothing to run; pass --ecosystem FILE")?;
    let eco = ecosystem::read_file(&path)?;
    for warning in &eco.warnings {
        eprintln!("machine-runtime: warning: {warning}");
    }
    let options = UpOptions {
        supervisor: SupervisorOptions::new(gpu_uuids()),
        health_port: health_port(args.health_port)?,
        status: Arc::new(()),
    };
    supervisor::up(eco.apps, options, |_| {})?;
    Ok(())
}

fn health_check(args: HealthArgs) -> anyhow::Result<()> {
    let port = health_port(args.port)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(health::check(port, Duration::from_secs(args.timeout)))
        .map_err(|e| anyhow::anyhow!("unhealthy: {e}"))
}
