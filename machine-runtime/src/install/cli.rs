//! `machine-runtime install`: the command-line face of the installer.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::{
    Env, Freshness, InstallOptions, InstallRecipe, Outcome, builtin_recipes, check, install,
    plan_recipes,
};

/// Arguments of `machine-runtime install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Install what this baked-in profile's plan needs (each internal service once, and the worker bundle).
    #[arg(
        long,
        value_name = "NAME",
        required_unless_present = "services",
        conflicts_with = "services"
    )]
    pub profile: Option<String>,
    /// Services to install, comma-separated (built-in recipes: comfyui, playwright); empty installs nothing.
    #[arg(long, value_delimiter = ',')]
    pub services: Option<Vec<String>>,
    /// Root of the installs [default: $WORKSPACE_DIR, else /workspace].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Reinstall even when the markers match.
    #[arg(long)]
    pub force: bool,
    /// Only verify that every service is installed and current; exit 1 naming those that are not.
    #[arg(long, conflicts_with = "force")]
    pub check: bool,
    /// Print the Debian packages the install needs beyond `ca-certificates` and `nodejs` (one line,
    /// space-separated; `curl` only while installing), install nothing, and exit: what the image's
    /// Dockerfile installs before `install`.
    #[arg(long, conflicts_with_all = ["force", "check"])]
    pub system_packages: bool,
    /// Time limit in seconds of a step whose recipe sets none.
    #[arg(long, value_name = "SECS", default_value_t = super::DEFAULT_STEP_TIMEOUT.as_secs())]
    pub step_timeout: u64,
}

/// What a baked-in profile's plan installs (its `install` list, the worker bundle from the profile's
/// source; overrides from the environment such as `WORKER_CONNECTORS` apply, GPUs are not checked:
/// images are built without them).
fn profile_recipes(name: &str) -> Result<Vec<(String, InstallRecipe)>, String> {
    let baked = crate::profiles::by_name(name).ok_or_else(|| crate::profiles::unknown(name))?;
    let profile = baked
        .profile()
        .map_err(|e| format!("reading profile {name}: {e}"))?;
    let workers = crate::env::lookup("WORKER_CONNECTORS").filter(|v| !v.trim().is_empty());
    let overrides = machine_model::Overrides {
        workers,
        ..machine_model::Overrides::default()
    };
    let plan = machine_model::Plan::build(name, &profile, &overrides)
        .map_err(|e| format!("planning profile {name}: {e}"))?;
    plan_recipes(&plan).map_err(|e| e.to_string())
}

/// Runs `install` (or `install --check`) for `--profile`'s plan or the built-in recipes named by `--services`.
pub fn run(args: InstallArgs) -> ExitCode {
    super::kill_running_step_on_signals();
    let recipes = match (&args.profile, &args.services) {
        (Some(profile), _) => profile_recipes(profile),
        (None, services) => {
            builtin_recipes(&services.clone().unwrap_or_default()).map_err(|e| e.to_string())
        }
    };
    let recipes = match recipes {
        Ok(r) => r,
        Err(e) => {
            crate::log::runtime(&format!("error: {e}"));
            return ExitCode::FAILURE;
        }
    };
    if args.system_packages {
        let lookup = |name: &str| crate::env::lookup(name).filter(|v| !v.is_empty());
        let packages: Vec<&str> = super::packages::needed(&recipes, &lookup)
            .into_iter()
            .collect();
        println!("{}", packages.join(" "));
        return ExitCode::SUCCESS;
    }
    let names: Vec<&str> = recipes.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(profile) = &args.profile {
        crate::log::runtime(&format!(
            "install: profile {profile} needs {}",
            if names.is_empty() {
                "nothing installed".to_string()
            } else {
                names.join(", ")
            }
        ));
    }
    let services: Vec<(&str, &InstallRecipe)> =
        recipes.iter().map(|(n, r)| (n.as_str(), r)).collect();
    let mut opts = InstallOptions::from_env(Env::from_process());
    if let Some(workspace) = args.workspace.clone() {
        opts.workspace_dir = workspace;
    }
    opts.force = args.force;
    opts.default_step_timeout = Duration::from_secs(args.step_timeout);
    let fix = install_command(&args, &opts, &services, crate::env::lookup);
    run_with(&services, &opts, args.check, &fix)
}

/// The complete command that installs what `install --check` found missing or stale: the variables the
/// recipes' placeholders read that are set here (`WORKER_BUNDLE_URL`, `COMFYUI_COMMIT`, …), the same
/// `--profile`/`--services`, and the workspace as `--workspace <absolute dir>`. A value that is an absolute
/// path or hex (a commit, a checksum) is shown; any other as `"$VAR"`, since a URL may carry a token and
/// secrets never go into output.
fn install_command(
    args: &InstallArgs,
    opts: &InstallOptions,
    services: &[(&str, &InstallRecipe)],
    lookup: impl Fn(&str) -> Option<String>,
) -> String {
    let read = std::cell::RefCell::new(Vec::<String>::new());
    let recording = |name: &str| {
        let value = lookup(name);
        if value.as_deref().is_some_and(|v| !v.trim().is_empty()) {
            let mut read = read.borrow_mut();
            if !read.iter().any(|r| r == name) {
                read.push(name.to_owned());
            }
        }
        value
    };
    for (_, recipe) in services {
        let _ = super::recipe::resolve(recipe, &recording);
    }
    let mut words = Vec::new();
    for var in read.into_inner() {
        let value = lookup(&var).unwrap_or_default();
        let value = value.trim();
        let shown = (value.starts_with('/') || value.bytes().all(|b| b.is_ascii_hexdigit()))
            && value
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"'\"\\$`".contains(&b));
        if shown {
            words.push(format!("{var}={value}"));
        } else {
            words.push(format!("{var}=\"${var}\""));
        }
    }
    words.push("machine-runtime install".to_owned());
    match (&args.profile, &args.services) {
        (Some(profile), _) => words.push(format!("--profile {profile}")),
        (None, services) => words.push(format!(
            "--services {}",
            services.clone().unwrap_or_default().join(",")
        )),
    }
    let workspace =
        std::path::absolute(&opts.workspace_dir).unwrap_or_else(|_| opts.workspace_dir.clone());
    words.push(format!("--workspace {}", workspace.display()));
    words.join(" ")
}

/// Installs (or checks) `services` and prints a summary; the exit code says whether all is well. This
/// is what `install --profile` runs with the plan's unique internal services. `fix` is the command a
/// failed check names.
pub fn run_with(
    services: &[(&str, &InstallRecipe)],
    opts: &InstallOptions,
    check_only: bool,
    fix: &str,
) -> ExitCode {
    let started = Instant::now();
    if check_only {
        return match check(services, opts) {
            Ok(states) => {
                let stale: Vec<String> = states
                    .iter()
                    .filter_map(|(service, state)| match state {
                        Freshness::Current(_) => None,
                        Freshness::Stale(reason) => Some(format!("{service} ({reason})")),
                    })
                    .collect();
                if stale.is_empty() {
                    crate::log::runtime(&format!(
                        "install: {} services installed and current",
                        states.len()
                    ));
                    ExitCode::SUCCESS
                } else {
                    crate::log::runtime(&format!(
                        "error: not installed or out of date: {}; install them with: {fix}",
                        stale.join(", ")
                    ));
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                crate::log::runtime(&format!("error: {e}"));
                ExitCode::FAILURE
            }
        };
    }
    match install(services, opts) {
        Ok(report) if report.services.is_empty() => {
            crate::log::runtime("install: no internal services needed, nothing to install");
            ExitCode::SUCCESS
        }
        Ok(report) => {
            let installed = report
                .services
                .iter()
                .filter(|s| s.outcome == Outcome::Installed)
                .count();
            crate::log::runtime(&format!(
                "install: {installed} installed, {} up to date, in {:.1}s",
                report.services.len() - installed,
                started.elapsed().as_secs_f64()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            crate::log::runtime(&format!("error: {e}"));
            ExitCode::FAILURE
        }
    }
}
