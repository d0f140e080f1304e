//! The developer CLI (`cargo xtask …`): parses arguments and dispatches, one module per command.

// The xtask runs developer tools (git, cargo, docker); clippy.toml's one-constructor rule is the runtime's.
#![allow(clippy::disallowed_methods)]

mod bench;
mod codegen;
mod explain;
mod hooks;
mod list;
mod plan;
mod profiles;
mod render;
mod schema;
mod secrets;
mod tidy;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Profiles → plan → generated files, and the checks that keep them true"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write generated/<profile>/{.env,docker-compose.yaml,ecosystem.config.json,kubernetes.yaml,stack.yaml}.
    EnvBuild {
        /// The profile (file stem under profiles/).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        profile: Option<String>,
        /// Every profile.
        #[arg(long)]
        all: bool,
    },
    /// Print the allocation table: services, GPUs, ports, workers, env, and the fleet.
    Plan {
        /// The profile.
        profile: String,
        /// Another worker spec instead of the profile's.
        #[arg(long)]
        workers: Option<String>,
        /// Another GPU count instead of the profile's.
        #[arg(long)]
        gpus: Option<u32>,
        /// The fleet size to show instead of the profile's `replicas` (machines, GPUs, workers, ids).
        #[arg(long)]
        replicas: Option<u32>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = plan::Format::Text)]
        format: plan::Format,
    },
    /// Regenerate schemas/ and generated/ for every profile.
    Codegen,
    /// Fail with a short diff and the fix when schemas/ or generated/ is stale, then run `tidy` (on a checkout).
    Check,
    /// Check the written conventions (`//!` lines, printing, env booleans, function sizes, import cycles).
    Tidy,
    /// List profiles and their descriptions.
    List,
    /// Install a git pre-commit hook running `cargo xtask check`.
    InstallHooks,
    /// List the secrets a profile needs and who needs them; write generated/<profile>/.env.secrets.example.
    Secrets {
        /// The profile.
        profile: String,
    },
    /// Show a variable's final value (masked if secret) and where it came from.
    Explain {
        /// The profile.
        profile: String,
        /// The variable, e.g. HUB_REDIS_URL.
        var: String,
    },
    /// Print timings (mean and min) of rendering every profile and planning 10 000 workers.
    Bench {
        /// The part to measure.
        #[arg(value_enum, default_value_t = bench::What::All)]
        what: bench::What,
        /// Measured iterations per figure (after one warm-up run).
        #[arg(long, default_value_t = 20)]
        iterations: u32,
    },
    /// Print a shell completion script for the xtask binary (`cargo build -p xtask` puts it in target/debug/xtask).
    #[command(
        after_help = "Examples:\n  cargo xtask completions bash > ~/.local/share/bash-completion/completions/xtask\n  cargo xtask completions zsh > \"${fpath[1]}/_xtask\"\n  cargo xtask completions fish > ~/.config/fish/completions/xtask.fish"
    )]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing to a closed pipe (`cargo xtask plan … | head`) panics; the
    // default action ends the process quietly, as every other Unix filter does.
    // SAFETY: called first thing in main, before any other thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    // The checkout is the one the command runs in (found from the current directory), checked up front so
    // running outside a checkout is one clear error.
    if let Err(e) = profiles::find_root() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::EnvBuild { profile, all } => codegen::env_build(profile.as_deref(), all),
        Command::Plan {
            profile,
            workers,
            gpus,
            replicas,
            format,
        } => plan::run(&profile, workers, gpus, replicas, format),
        Command::Codegen => codegen::run(codegen::Mode::Overwrite),
        Command::Check => codegen::run(codegen::Mode::Check).and_then(|()| check_sources()),
        Command::Tidy => {
            profiles::find_root().and_then(|root| tidy::run(&root, tidy::Show::AllCycles))
        }
        Command::List => list::run(),
        Command::InstallHooks => hooks::install(),
        Command::Secrets { profile } => secrets::run(&profile),
        Command::Explain { profile, var } => explain::run(&profile, &var),
        Command::Bench { what, iterations } => bench::run(what, iterations),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "xtask", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `check`'s second half: `tidy` on the checkout's sources. A root holding only the inputs and outputs
/// (`XTASK_ROOT` pointing at a copy of `profiles/`, `schemas/` and `generated/`, as the tests make) has
/// no sources to check, so there is nothing to run.
fn check_sources() -> anyhow::Result<()> {
    let root = profiles::find_root()?;
    if !root.join("Cargo.toml").is_file() {
        return Ok(());
    }
    tidy::run(&root, tidy::Show::Problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent_and_completions_name_every_command() {
        <Cli as clap::CommandFactory>::command().debug_assert();
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "xtask",
                &mut out,
            );
            let script = String::from_utf8(out).unwrap();
            for command in ["env-build", "codegen", "check", "plan", "completions"] {
                assert!(script.contains(command), "{shell} lacks {command}");
            }
        }
    }
}
