//! machine-runtime: the container entrypoint; parses the command line and dispatches to the library.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "machine-runtime", version, about = "Detect GPUs, install, launch and supervise a GPU worker machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stand in for a job worker: register and heartbeat in redis while the service at SIMULATION_BASE_URL answers
    SimulateWorker,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::SimulateWorker => machine_runtime::simulate_worker::main(),
    }
}
