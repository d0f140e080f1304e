//! The installer: puts each needed internal service on disk once, from its recipe, and swaps atomically.
//!
//! `install` resolves each recipe's placeholders from the environment, hashes the result and compares it
//! with the service's marker. Same hash and an intact symlink: skipped, without starting any process.
//! Otherwise the steps run in a fresh version directory and the service's symlink is switched to it only
//! after every step succeeded (see `marker` for the layout and why the versions never move).

mod cli;
mod hash;
mod marker;
pub mod packages;
mod placeholder;
mod process;
mod recipe;
mod steps;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use cli::{InstallArgs, run as run_cli, run_with as run_cli_with};
pub use machine_model::install::InstallRecipe;
pub use marker::{
    CheckoutRecord, FetchRecord, Freshness, MARKER_DIR, Marker, PERSIST_DIR, RequirementsRecord,
    VERSIONS_DIR,
};
pub use placeholder::PlaceholderError;
pub use process::{abort_running_step, kill_running_step_on_signals};

use machine_model::components::Masker;

/// The workspace used when `WORKSPACE_DIR` is not set.
pub(crate) const DEFAULT_WORKSPACE: &str = machine_model::catalog::DEFAULT_WORKSPACE;
/// The time limit of a step that sets none.
pub(crate) const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How often a running step reports that it is still running.
pub(crate) const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

/// A snapshot of environment variables: placeholder values and the children's environment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The current process's environment (variables that are not UTF-8 are left out).
    pub fn from_process() -> Self {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Sets `name` to `value`.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(name.into(), value.into());
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) {
        self.vars.remove(name);
    }

    /// All variables, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Only names: values may be secrets.
impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Env {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Env {
            vars: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

/// Something happening during an install; `Display` gives the line shown to people.
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    /// The marker matched: nothing was done.
    Skipped {
        service: String,
        hash: String,
        elapsed: Duration,
    },
    /// An install starts, and why.
    Installing {
        service: String,
        dir: String,
        reason: String,
    },
    /// A step starts.
    StepStarted {
        service: String,
        step: usize,
        total: usize,
        kind: &'static str,
        summary: String,
    },
    /// A step is still running.
    StepRunning {
        service: String,
        step: usize,
        total: usize,
        kind: &'static str,
        summary: String,
        elapsed: Duration,
    },
    /// Something worth knowing inside a step (e.g. a fallback).
    StepNote {
        service: String,
        step: usize,
        total: usize,
        kind: &'static str,
        message: String,
    },
    /// A step succeeded.
    StepFinished {
        service: String,
        step: usize,
        total: usize,
        kind: &'static str,
        summary: String,
        elapsed: Duration,
    },
    /// The install is active.
    Installed {
        service: String,
        dir: String,
        version_dir: String,
        elapsed: Duration,
    },
    /// A problem that did not fail the install (e.g. an old version could not be removed).
    Warning { service: String, message: String },
}

impl fmt::Display for ProgressEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProgressEvent::Skipped {
                service,
                hash,
                elapsed,
            } => {
                write!(
                    f,
                    "install {service}: up to date ({hash}), skipped in {:.2}ms",
                    elapsed.as_secs_f64() * 1e3
                )
            }
            ProgressEvent::Installing {
                service,
                dir,
                reason,
            } => write!(f, "install {service}: installing {dir} ({reason})"),
            ProgressEvent::StepStarted {
                service,
                step,
                total,
                kind,
                summary,
            } => {
                write!(
                    f,
                    "install {service}: step {step}/{total} {kind} ({summary}) …"
                )
            }
            ProgressEvent::StepRunning {
                service,
                step,
                total,
                kind,
                summary,
                elapsed,
            } => {
                write!(
                    f,
                    "install {service}: step {step}/{total} {kind} ({summary}) … {:.1}s",
                    elapsed.as_secs_f64()
                )
            }
            ProgressEvent::StepNote {
                service,
                step,
                total,
                kind,
                message,
            } => {
                write!(
                    f,
                    "install {service}: step {step}/{total} {kind}: {message}"
                )
            }
            ProgressEvent::StepFinished {
                service,
                step,
                total,
                kind,
                summary,
                elapsed,
            } => {
                write!(
                    f,
                    "install {service}: step {step}/{total} {kind} ({summary}) done in {:.1}s",
                    elapsed.as_secs_f64()
                )
            }
            ProgressEvent::Installed {
                service,
                dir,
                version_dir,
                elapsed,
            } => {
                write!(
                    f,
                    "install {service}: installed {dir} -> {version_dir} in {:.1}s",
                    elapsed.as_secs_f64()
                )
            }
            ProgressEvent::Warning { service, message } => {
                write!(f, "install {service}: warning: {message}")
            }
        }
    }
}

/// Receives progress events.
pub trait Progress: Send + Sync {
    /// Called for each event, in order.
    fn report(&self, event: &ProgressEvent);
}

/// Writes each event as a runtime log line on stderr ([`crate::log`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StderrProgress;

impl Progress for StderrProgress {
    fn report(&self, event: &ProgressEvent) {
        crate::log::runtime(&event.to_string());
    }
}

/// How to install.
#[derive(Clone)]
pub struct InstallOptions {
    /// Root of all installs (`WORKSPACE_DIR`, default `/workspace`); made absolute before use.
    pub workspace_dir: PathBuf,
    /// Placeholder values and the children's environment.
    pub env: Env,
    /// Where progress goes.
    pub progress: Arc<dyn Progress>,
    /// Time limit of a step that sets none.
    pub default_step_timeout: Duration,
    /// How often a running step reports progress.
    pub heartbeat: Duration,
    /// Reinstall even when the marker matches.
    pub force: bool,
}

impl fmt::Debug for InstallOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallOptions")
            .field("workspace_dir", &self.workspace_dir)
            .field("env", &self.env)
            .field("default_step_timeout", &self.default_step_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("force", &self.force)
            .finish_non_exhaustive()
    }
}

impl InstallOptions {
    /// Defaults from `env`: workspace from `WORKSPACE_DIR` (else `/workspace`), progress on stderr.
    pub fn from_env(env: Env) -> Self {
        let workspace_dir = PathBuf::from(
            env.get(machine_model::catalog::WORKSPACE_DIR_VAR)
                .filter(|w| !w.is_empty())
                .unwrap_or(DEFAULT_WORKSPACE),
        );
        InstallOptions {
            workspace_dir,
            env,
            progress: Arc::new(StderrProgress),
            default_step_timeout: DEFAULT_STEP_TIMEOUT,
            heartbeat: DEFAULT_HEARTBEAT,
            force: false,
        }
    }
}

/// What happened to one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The marker matched; nothing ran.
    Skipped,
    /// The recipe ran and the new version is active.
    Installed,
}

/// The result for one service.
#[derive(Debug, Clone)]
pub struct ServiceReport {
    /// Service name.
    pub service: String,
    /// Skipped or installed.
    pub outcome: Outcome,
    /// The install hash.
    pub hash: String,
    /// The service's directory (`<workspace>/<dir>`, the symlink).
    pub path: PathBuf,
    /// Time spent on this service.
    pub elapsed: Duration,
}

/// The result of an install run, one entry per unique service in request order.
#[derive(Debug, Clone, Default)]
pub struct InstallReport {
    /// Per service.
    pub services: Vec<ServiceReport>,
}

/// Why a step failed.
#[derive(Debug)]
pub enum FailureCause {
    /// The command ended unsuccessfully (`exited with status 128`).
    Exit(String),
    /// The step ran past its time limit; its process group was killed.
    Timeout(Duration),
    /// The command could not be started.
    Spawn(std::io::Error),
    /// A failure that is not a command's (a missing file, a commit mismatch).
    Problem(String),
}

/// A failed step: service, step n/m and kind, command (secrets masked), cause and last lines of output.
#[derive(Debug)]
pub struct StepFailure {
    /// Service name.
    pub service: String,
    /// 1-based step number.
    pub step: usize,
    /// Number of steps.
    pub total: usize,
    /// Step kind (`git-checkout`, ...).
    pub kind: &'static str,
    /// What inside the step failed, when it handles several things (`custom node "x"`, `model …`).
    pub subject: Option<String>,
    /// The command line that failed, secrets masked.
    pub command: Option<String>,
    /// What went wrong.
    pub cause: FailureCause,
    /// The last lines of the command's output (stdout and stderr), secrets masked.
    pub tail: Vec<String>,
}

impl fmt::Display for StepFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "install {} failed at step {}/{} {}",
            self.service, self.step, self.total, self.kind
        )?;
        match &self.subject {
            Some(subject) => write!(f, " ({subject}): ")?,
            None => write!(f, ": ")?,
        }
        let command = self.command.as_deref().unwrap_or_default();
        match &self.cause {
            FailureCause::Exit(status) => write!(f, "`{command}` {status}")?,
            FailureCause::Timeout(limit) => write!(
                f,
                "`{command}` ran past the step's {}s limit and was killed with its process group; \
                 raise the step's timeout_secs or pass --step-timeout",
                limit.as_secs_f64()
            )?,
            FailureCause::Spawn(e) => write!(
                f,
                "`{command}` could not be started: {e}; is the program installed and on PATH?"
            )?,
            FailureCause::Problem(message) => write!(f, "{message}")?,
        }
        write!(
            f,
            "\nthe previous install of {}, if any, is still active and unchanged",
            self.service
        )?;
        if !self.tail.is_empty() {
            write!(f, "\nlast {} lines of output:", self.tail.len())?;
            for line in &self.tail {
                write!(f, "\n  | {line}")?;
            }
        }
        Ok(())
    }
}

/// Why an install run failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Recipes that cannot run: unresolved placeholders, paths leaving the install directory, conflicts.
    #[error("cannot install: {}", problems.join("; "))]
    Invalid {
        /// Every problem found, each naming the service and field.
        problems: Vec<String>,
    },
    /// A service name without a recipe.
    #[error("no install recipe for service {name:?} (known: {known}){suggestion}")]
    UnknownService {
        /// The name asked for.
        name: String,
        /// `; did you mean "x"?` or empty.
        suggestion: String,
        /// Names that have recipes.
        known: String,
    },
    /// A file-system operation of the installer itself failed.
    #[error("install {service}: cannot {action} {}: {source}", path.display())]
    Io {
        /// Service name (or `workspace`).
        service: String,
        /// What was being done (`create`, `switch`, ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A step failed.
    #[error("{0}")]
    Step(Box<StepFailure>),
}

fn io_error(
    service: &str,
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> InstallError {
    let (service, path) = (service.to_owned(), path.to_owned());
    move |source| InstallError::Io {
        service,
        action,
        path,
        source,
    }
}

/// A unique service with its resolved recipe and hash.
struct Prepared {
    service: String,
    recipe: InstallRecipe,
    hash: String,
    /// The [`INSTALL_TIME_VARS`] (set, non-empty) that the recipe's placeholders took, by name.
    configured_by: Vec<String>,
    /// The hash with none of `configured_by` set, when that resolves.
    unconfigured_hash: Option<String>,
}

/// Variables that choose what an install puts on disk and are not expected to be set where it runs: the
/// image build gets `WORKER_BUNDLE_URL` as a build argument, the container never sees it. An install made
/// with them stays current where they are unset ([`marker::Marker::unconfigured_hash`]); setting one to
/// another value (the default release's URL included) asks for another install.
const INSTALL_TIME_VARS: &[&str] = &["WORKER_BUNDLE_URL", "WORKER_BUNDLE_SHA256"];

/// Dedupes by name, resolves and checks every recipe, reporting all problems at once.
fn prepare(
    services: &[(&str, &InstallRecipe)],
    workspace: &Path,
    env: &Env,
) -> Result<Vec<Prepared>, InstallError> {
    let mut problems = Vec::new();
    let mut unique: Vec<(&str, &InstallRecipe)> = Vec::new();
    for &(name, recipe) in services {
        match unique.iter().find(|(n, _)| *n == name) {
            Some((_, first)) if *first != recipe => {
                problems.push(format!(
                    "service {name:?} is listed twice with different recipes"
                ));
            }
            Some(_) => {}
            None => unique.push((name, recipe)),
        }
    }
    let used = std::cell::RefCell::new(Vec::<String>::new());
    let lookup = |name: &str| {
        let value = env.get(name).map(str::to_owned);
        if INSTALL_TIME_VARS.contains(&name) && value.as_deref().is_some_and(|v| !v.is_empty()) {
            let mut used = used.borrow_mut();
            if !used.iter().any(|u| u == name) {
                used.push(name.to_owned());
            }
        }
        value
    };
    let mut prepared: Vec<Prepared> = Vec::new();
    for (name, recipe) in unique {
        if !recipe::valid_service_name(name) {
            problems.push(format!(
                "service name {name:?} must be lowercase letters, digits, `-` and `_`"
            ));
            continue;
        }
        used.borrow_mut().clear();
        match recipe::resolve(recipe, &lookup) {
            Ok(resolved) => {
                let mut configured_by = used.borrow().clone();
                configured_by.sort();
                // What this environment's choices replaced: the same recipe without them.
                let unconfigured = |n: &str| {
                    if configured_by.iter().any(|c| c == n) {
                        None
                    } else {
                        env.get(n).map(str::to_owned)
                    }
                };
                let unconfigured_hash = if configured_by.is_empty() {
                    None
                } else {
                    recipe::resolve(recipe, &unconfigured)
                        .ok()
                        .map(|r| recipe::install_hash(name, workspace, &r))
                };
                if let Some(other) = prepared.iter().find(|p| p.recipe.dir == resolved.dir) {
                    problems.push(format!(
                        "services {:?} and {name:?} both install into {:?}; give one another dir",
                        other.service, resolved.dir
                    ));
                }
                let hash = recipe::install_hash(name, workspace, &resolved);
                prepared.push(Prepared {
                    service: name.to_owned(),
                    recipe: resolved,
                    hash,
                    configured_by,
                    unconfigured_hash,
                });
            }
            Err(found) => {
                problems.extend(found.into_iter().map(|p| format!("service {name}: {p}")))
            }
        }
    }
    if problems.is_empty() {
        Ok(prepared)
    } else {
        Err(InstallError::Invalid { problems })
    }
}

/// The workspace as an absolute path in one spelling ([`recipe::normal_path`]): `/ws/`, `/ws/.` and
/// `/x/../ws` give the same install hash as `/ws` (issue 21: `install --check` called such an install
/// out of date).
fn absolute_workspace(opts: &InstallOptions) -> Result<PathBuf, InstallError> {
    std::path::absolute(&opts.workspace_dir)
        .map(|p| recipe::normal_path(&p))
        .map_err(io_error("workspace", "resolve", &opts.workspace_dir))
}

/// Installs each unique service of `services` (name, recipe) whose marker does not match, in order.
///
/// An empty list does nothing and creates nothing. A service listed twice is installed once. The first
/// failing step stops the run; that service's previous install and marker are left as they were.
pub fn install(
    services: &[(&str, &InstallRecipe)],
    opts: &InstallOptions,
) -> Result<InstallReport, InstallError> {
    if services.is_empty() {
        return Ok(InstallReport::default());
    }
    let workspace = absolute_workspace(opts)?;
    let prepared = prepare(services, &workspace, &opts.env)?;
    let markers = workspace.join(MARKER_DIR);
    fs::create_dir_all(&markers).map_err(io_error("workspace", "create", &markers))?;
    let _lock = marker::InstallLock::acquire(&workspace).map_err(io_error(
        "workspace",
        "lock",
        &markers,
    ))?;
    let masker = Masker::for_env(opts.env.iter());

    let mut report = InstallReport::default();
    for p in &prepared {
        let started = Instant::now();
        let reason = if opts.force {
            "forced".to_owned()
        } else {
            match marker::freshness(&workspace, &p.service, &p.recipe.dir, &p.hash) {
                Freshness::Current(_) => {
                    let elapsed = started.elapsed();
                    opts.progress.report(&ProgressEvent::Skipped {
                        service: p.service.clone(),
                        hash: p.hash.clone(),
                        elapsed,
                    });
                    report.services.push(ServiceReport {
                        service: p.service.clone(),
                        outcome: Outcome::Skipped,
                        hash: p.hash.clone(),
                        path: workspace.join(&p.recipe.dir),
                        elapsed,
                    });
                    continue;
                }
                Freshness::Stale(reason) => reason,
            }
        };
        install_one(&workspace, p, opts, &masker, &reason, started)?;
        report.services.push(ServiceReport {
            service: p.service.clone(),
            outcome: Outcome::Installed,
            hash: p.hash.clone(),
            path: workspace.join(&p.recipe.dir),
            elapsed: started.elapsed(),
        });
    }
    Ok(report)
}

/// Reports whether each unique service is installed and current, without changing or running anything.
pub fn check(
    services: &[(&str, &InstallRecipe)],
    opts: &InstallOptions,
) -> Result<Vec<(String, Freshness)>, InstallError> {
    if services.is_empty() {
        return Ok(Vec::new());
    }
    let workspace = absolute_workspace(opts)?;
    let prepared = prepare(services, &workspace, &opts.env)?;
    Ok(prepared
        .into_iter()
        .map(|p| {
            let freshness = marker::freshness(&workspace, &p.service, &p.recipe.dir, &p.hash);
            (p.service, freshness)
        })
        .collect())
}

/// How an install looks to a machine about to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartState {
    /// The marker matches the recipe as this environment resolves it.
    Current,
    /// Installed and intact, but from another recipe (another source, commit, ...): usable as it is.
    Outdated(String),
    /// Not installed, or its marker, symlink or version directory is broken.
    Missing(String),
}

/// Like [`check`], telling an intact install made from another recipe ([`StartState::Outdated`]) from
/// one that cannot be used ([`StartState::Missing`]).
pub(crate) fn check_for_start(
    services: &[(&str, &InstallRecipe)],
    opts: &InstallOptions,
) -> Result<Vec<(String, StartState)>, InstallError> {
    if services.is_empty() {
        return Ok(Vec::new());
    }
    let workspace = absolute_workspace(opts)?;
    let prepared = prepare(services, &workspace, &opts.env)?;
    Ok(prepared
        .into_iter()
        .map(|p| {
            let state = match marker::freshness(&workspace, &p.service, &p.recipe.dir, &p.hash) {
                Freshness::Current(_) => StartState::Current,
                Freshness::Stale(reason) => match marker::intact(&workspace, &p.service) {
                    Ok(()) => StartState::Outdated(reason),
                    Err(_) => StartState::Missing(reason),
                },
            };
            (p.service, state)
        })
        .collect())
}

/// The built-in recipes (`machine_model::catalog::builtin_recipe`) for `names`, unknown names reported
/// with a suggestion. Empty names are ignored.
pub(crate) fn builtin_recipes(
    names: &[String],
) -> Result<Vec<(String, InstallRecipe)>, InstallError> {
    use machine_model::catalog::{BUILTIN_RECIPES, builtin_recipe};
    let mut out = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        match builtin_recipe(name) {
            Some(recipe) => out.push((name.to_owned(), recipe)),
            None => {
                let near =
                    machine_model::suggest::did_you_mean(name, BUILTIN_RECIPES.iter().copied());
                return Err(InstallError::UnknownService {
                    name: name.to_owned(),
                    suggestion: near
                        .map(|n| format!("; did you mean {n:?}?"))
                        .unwrap_or_default(),
                    known: BUILTIN_RECIPES.join(", "),
                });
            }
        }
    }
    Ok(out)
}

/// The recipes of a plan's `install` list, in order: the worker bundle from the plan's source
/// ([`machine_model::Plan::worker_bundle`]), ComfyUI with what the profile adds
/// ([`machine_model::Plan::comfyui_install`]), the other services' built-in recipes.
pub(crate) fn plan_recipes(
    plan: &machine_model::Plan,
) -> Result<Vec<(String, InstallRecipe)>, InstallError> {
    let mut out = Vec::new();
    for name in &plan.install {
        if *name == machine_model::worker_bundle::WORKER_BUNDLE_INSTALL {
            let bundle = plan
                .worker_bundle
                .clone()
                .unwrap_or_else(machine_model::profile::WorkerBundle::catalog_default);
            out.push((
                name.to_string(),
                machine_model::install::worker_bundle_recipe(&bundle),
            ));
        } else if *name == "comfyui"
            && let Some(options) = &plan.comfyui_install
        {
            out.push((
                name.to_string(),
                machine_model::install::comfyui_recipe_for(options),
            ));
        } else {
            out.extend(builtin_recipes(&[name.to_string()])?);
        }
    }
    Ok(out)
}

/// Installs one prepared recipe: builds a fresh version directory, runs the steps in it, switches
/// the service's directory to it, writes the marker and removes the other versions. A failed build
/// is removed and the active version stays.
fn install_one(
    workspace: &Path,
    p: &Prepared,
    opts: &InstallOptions,
    masker: &Masker,
    reason: &str,
    started: Instant,
) -> Result<(), InstallError> {
    let service = p.service.as_str();
    let dir = p.recipe.dir.as_str();
    opts.progress.report(&ProgressEvent::Installing {
        service: service.to_owned(),
        dir: dir.to_owned(),
        reason: masker.mask(reason).into_owned(),
    });
    let versions = workspace.join(VERSIONS_DIR).join(dir);
    fs::create_dir_all(&versions).map_err(io_error(service, "create", &versions))?;
    let version_rel = new_version_dir(workspace, p)?;
    let build = workspace.join(&version_rel);

    let persist_root = workspace.join(PERSIST_DIR).join(dir);
    let mut child_env = opts.env.clone();
    child_env.set("GIT_TERMINAL_PROMPT", "0");
    child_env.set("PIP_DISABLE_PIP_VERSION_CHECK", "1");
    child_env.set(placeholder::INSTALL_DIR_VAR, build.to_string_lossy());

    let result = run_steps(
        service,
        &p.recipe,
        &build,
        &persist_root,
        &child_env,
        opts,
        masker,
    )
    .and_then(|records| {
        switch_to(workspace, service, dir, &version_rel, opts)?;
        Ok(records)
    });
    let records = match result {
        Ok(done) => done,
        Err(e) => {
            if let Err(cleanup) = marker::remove_path(&build) {
                opts.progress.report(&ProgressEvent::Warning {
                    service: service.to_owned(),
                    message: format!(
                        "cannot remove the failed build {}: {cleanup}",
                        build.display()
                    ),
                });
            }
            return Err(e);
        }
    };

    let elapsed = started.elapsed();
    let marker = new_marker(p, &version_rel, elapsed, records);
    let marker_file = marker::marker_path(workspace, service);
    marker::write_marker(workspace, &marker).map_err(io_error(
        service,
        "write the marker",
        &marker_file,
    ))?;

    if let Err(e) = marker::remove_other_versions(workspace, dir, &build) {
        opts.progress.report(&ProgressEvent::Warning {
            service: service.to_owned(),
            message: format!("cannot remove old versions in {}: {e}", versions.display()),
        });
    }
    opts.progress.report(&ProgressEvent::Installed {
        service: service.to_owned(),
        dir: dir.to_owned(),
        version_dir: marker.version_dir,
        elapsed,
    });
    Ok(())
}

/// The version directory to build in, relative to the workspace (`<versions>/<dir>/<hash>`), made
/// empty. Never the active version (a forced reinstall of the same hash): that one gets `-b`.
fn new_version_dir(workspace: &Path, p: &Prepared) -> Result<PathBuf, InstallError> {
    let (service, dir) = (p.service.as_str(), p.recipe.dir.as_str());
    let mut version_rel = Path::new(VERSIONS_DIR).join(dir).join(&p.hash);
    if marker::active_version(workspace, dir).as_deref() == Some(version_rel.as_path()) {
        version_rel = Path::new(VERSIONS_DIR)
            .join(dir)
            .join(format!("{}-b", p.hash));
    }
    let build = workspace.join(&version_rel);
    marker::remove_path(&build).map_err(io_error(service, "remove the left-over", &build))?;
    fs::create_dir(&build).map_err(io_error(service, "create", &build))?;
    Ok(version_rel)
}

/// Points `<workspace>/<dir>` at the new version; a directory there that this installer did not make
/// is moved aside, with a warning saying where.
fn switch_to(
    workspace: &Path,
    service: &str,
    dir: &str,
    version_rel: &Path,
    opts: &InstallOptions,
) -> Result<(), InstallError> {
    let moved = marker::activate(workspace, dir, version_rel).map_err(io_error(
        service,
        "switch",
        &workspace.join(dir),
    ))?;
    if let Some(moved) = moved {
        opts.progress.report(&ProgressEvent::Warning {
            service: service.to_owned(),
            message: format!(
                "{} was a directory not made by this installer; moved it to {} \
                 (delete it when it is no longer needed)",
                workspace.join(dir).display(),
                moved.display()
            ),
        });
    }
    Ok(())
}

/// The marker of a finished install: what was installed where, when, in how long, from what.
fn new_marker(
    p: &Prepared,
    version_rel: &Path,
    elapsed: Duration,
    records: steps::Records,
) -> Marker {
    Marker {
        format: recipe::INSTALLER_FORMAT,
        service: p.service.clone(),
        hash: p.hash.clone(),
        dir: p.recipe.dir.clone(),
        version_dir: version_rel.to_string_lossy().into_owned(),
        installed_at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        checkouts: records.checkouts,
        requirements: records.requirements,
        fetches: records.fetches,
        configured_by: p.configured_by.clone(),
        unconfigured_hash: p.unconfigured_hash.clone(),
    }
}

fn run_steps(
    service: &str,
    recipe: &InstallRecipe,
    build: &Path,
    persist_root: &Path,
    env: &Env,
    opts: &InstallOptions,
    masker: &Masker,
) -> Result<steps::Records, InstallError> {
    let mut records = steps::Records::default();
    let total = recipe.steps.len();
    let build_str = build.to_string_lossy();
    for (i, step) in recipe.steps.iter().enumerate() {
        let step = recipe::with_install_dir(step, &build_str);
        let summary = masker.mask(&recipe::describe(&step)).into_owned();
        let timeout = step
            .timeout_secs()
            .map_or(opts.default_step_timeout, Duration::from_secs);
        let started = Instant::now();
        let kind = step.kind();
        opts.progress.report(&ProgressEvent::StepStarted {
            service: service.to_owned(),
            step: i + 1,
            total,
            kind,
            summary: summary.clone(),
        });
        let ctx = steps::StepCtx {
            service,
            index: i + 1,
            total,
            kind,
            summary: &summary,
            root: build,
            persist_root,
            env,
            started,
            deadline: started + timeout,
            timeout,
            heartbeat: opts.heartbeat,
            masker,
            progress: opts.progress.as_ref(),
        };
        steps::run_step(&ctx, &step, &mut records).map_err(InstallError::Step)?;
        opts.progress.report(&ProgressEvent::StepFinished {
            service: service.to_owned(),
            step: i + 1,
            total,
            kind,
            summary,
            elapsed: started.elapsed(),
        });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_services_get_a_suggestion() {
        let err = builtin_recipes(&["playwrite".to_owned()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            r#"no install recipe for service "playwrite" (known: comfyui, playwright, worker-bundle); did you mean "playwright"?"#
        );
        let err = builtin_recipes(&["ollama".to_owned()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            r#"no install recipe for service "ollama" (known: comfyui, playwright, worker-bundle)"#
        );
        assert_eq!(
            builtin_recipes(&[" ".to_owned(), "comfyui".to_owned()])
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_profiles_comfyui_section_reaches_the_recipe_of_its_plan() {
        let profile = |comfyui: &str| -> machine_model::Profile {
            serde_json::from_str(&format!(
                r#"{{"description": "d", "workers": "comfyui:1", "machine": {{"gpus": 1, "ram_gb": 8}}{comfyui}}}"#
            ))
            .unwrap()
        };
        let plain = machine_model::Plan::build("p", &profile(""), &Default::default()).unwrap();
        assert_eq!(plain.comfyui_install, None);
        let recipes = plan_recipes(&plain).unwrap();
        assert_eq!(recipes[1].0, "comfyui");
        assert_eq!(recipes[1].1, machine_model::install::comfyui_recipe());

        let node = format!(
            r#", "comfyui": {{"packages": ["einops==0.8.2"], "custom_nodes": [{{"name": "n", "url": "/srv/n", "commit": "{}"}}]}}"#,
            "a".repeat(40)
        );
        let plan = machine_model::Plan::build("p", &profile(&node), &Default::default()).unwrap();
        let recipes = plan_recipes(&plan).unwrap();
        let kinds: Vec<&str> = recipes[1].1.steps.iter().map(|s| s.kind()).collect();
        assert_eq!(
            kinds,
            [
                "git-checkout",
                "pip-constraints",
                "python-venv",
                "custom-nodes",
                "persist",
                "probe"
            ]
        );
        // Only the command line differs: the install (and its hash) is the plain one.
        let cpu_only = machine_model::Plan::build(
            "p",
            &profile(r#", "comfyui": {"cpu": true}"#),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(cpu_only.comfyui_install, None);
    }

    #[test]
    fn progress_lines_read_as_specified() {
        let event = ProgressEvent::StepRunning {
            service: "comfyui".into(),
            step: 2,
            total: 3,
            kind: "python-venv",
            summary: "venv venv, pip install -r requirements.txt".into(),
            elapsed: Duration::from_millis(12_345),
        };
        assert_eq!(
            event.to_string(),
            "install comfyui: step 2/3 python-venv (venv venv, pip install -r requirements.txt) … 12.3s"
        );
    }
}
