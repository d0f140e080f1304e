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
    /// Install the internal services' software once (skipped when the markers match)
    Install(machine_runtime::install::InstallArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Install(args) => machine_runtime::install::run_cli(args),
    }
}
