//! machine-runtime: the container entrypoint; parses the command line and dispatches to the library.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "machine-runtime", version, about = "Detect GPUs, install, launch and supervise a GPU worker machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {}
}
