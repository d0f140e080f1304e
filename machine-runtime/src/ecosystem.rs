//! Resolves a PM2 ecosystem (the wire type [`machine_model::ecosystem`], read from a file or made
//! from a plan) into typed [`AppSpec`]s the supervisor runs.
//!
//! Fields keep PM2's meanings and defaults (`autorestart` true, `max_restarts` 16, `min_uptime`
//! 1000 ms, `kill_timeout` 1600 ms, `restart_delay` 0, `listen_timeout` 3000 ms, stop signal SIGINT),
//! so a file PM2 runs, we run too. A PM2 option we do not implement is refused with the reason when
//! ignoring it would change what the app does (`watch: true`, `treekill: false`, ...), else it is a
//! warning, as are unknown fields; wrong types are errors naming the app, the field and the allowed
//! forms. Every problem is collected and reported at once (docs/ecosystem.md has the field table).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use machine_model::catalog::Binding;
pub use machine_model::ecosystem::Role;
use machine_model::ecosystem::{self as wire, App, Instances, Millis, PM2_IGNORED};
use serde_json::Value;

use crate::http::HttpUrl;

// Moved from probe.rs (readiness settings) and supervisor/policy.rs (restart settings): the spec's
// types live with the spec reader, so the prober and the supervisor depend on it and not back.

/// How often a probe runs when the ecosystem does not say.
pub(crate) const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long one probe attempt may take when the ecosystem does not say.
pub(crate) const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(2000);

/// A readiness probe with its schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// What to check.
    pub check: Check,
    /// Time between the start of two attempts.
    pub interval: Duration,
    /// Time one attempt may take before it counts as failed.
    pub timeout: Duration,
}

/// The kinds of readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `GET url` answered with a 2xx status.
    Http { url: HttpUrl },
    /// A TCP connection to `host:port` succeeds.
    Tcp { host: String, port: u16 },
    /// The command (program and arguments, no shell) exits with status 0.
    Command { command: Vec<String> },
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Http { url } => write!(f, "http {url}"),
            Check::Tcp { host, port } => write!(f, "tcp {host}:{port}"),
            Check::Command { command } => write!(f, "command `{}`", command.join(" ")),
        }
    }
}

/// PM2's default for `max_restarts`.
pub const DEFAULT_MAX_RESTARTS: u32 = 16;
/// PM2's default for `min_uptime`.
pub const DEFAULT_MIN_UPTIME: Duration = Duration::from_millis(1000);
/// PM2's default for `kill_timeout`.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_millis(1600);

/// An app's restart and stop settings, resolved: the runtime form of the ecosystem's PM2 fields
/// `autorestart`, `max_restarts`, `min_uptime`, `restart_delay`, `exp_backoff_restart_delay`,
/// `kill_timeout`, `stop_exit_codes` and `kill_signal` ([`App`]), with PM2's defaults ([`RestartPolicy::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restart when it exits (PM2 default true).
    pub autorestart: bool,
    /// Consecutive unstable exits (before `min_uptime`) after which the app is `errored`.
    pub max_restarts: u32,
    /// Exits sooner than this after start are unstable.
    pub min_uptime: Duration,
    /// Fixed delay before a restart.
    pub restart_delay: Duration,
    /// When set, overrides `restart_delay`: starts here, ×1.5 per restart, capped at 15 s.
    pub exp_backoff_restart_delay: Option<Duration>,
    /// Grace between the stop signal and SIGKILL of the process group.
    pub kill_timeout: Duration,
    /// Exit codes after which the app is not restarted (PM2 `stop_exit_codes`).
    pub stop_exit_codes: Vec<i32>,
    /// The signal that asks the app to stop (`kill_signal`); `None`: PM2's `KILL_SIGNAL`, which
    /// the supervisor reads from the runtime's `PM2_KILL_SIGNAL` (default SIGINT) at start.
    pub kill_signal: Option<i32>,
}

impl Default for RestartPolicy {
    /// PM2's defaults: restart, 16 unstable exits, 1000 ms uptime, no delay, 1600 ms grace.
    fn default() -> Self {
        RestartPolicy {
            autorestart: true,
            max_restarts: DEFAULT_MAX_RESTARTS,
            min_uptime: DEFAULT_MIN_UPTIME,
            restart_delay: Duration::ZERO,
            exp_backoff_restart_delay: None,
            kill_timeout: DEFAULT_KILL_TIMEOUT,
            stop_exit_codes: Vec::new(),
            kill_signal: None,
        }
    }
}

impl From<&App> for RestartPolicy {
    /// The app's restart fields, PM2's default for each one absent.
    fn from(app: &App) -> Self {
        let d = RestartPolicy::default();
        let ms = |m: Millis| Duration::from_millis(m.0);
        RestartPolicy {
            autorestart: app.autorestart.unwrap_or(d.autorestart),
            max_restarts: app.max_restarts.unwrap_or(d.max_restarts),
            min_uptime: app.min_uptime.map_or(d.min_uptime, ms),
            restart_delay: app.restart_delay.map_or(d.restart_delay, ms),
            exp_backoff_restart_delay: app.exp_backoff_restart_delay.map(ms),
            kill_timeout: app.kill_timeout.map_or(d.kill_timeout, ms),
            stop_exit_codes: app.stop_exit_codes.clone().unwrap_or_default(),
            kill_signal: app
                .kill_signal
                .as_deref()
                .and_then(crate::signals::signal_number),
        }
    }
}

/// The script name that means "this runtime binary" (`std::env::current_exe()`).
pub(crate) const SELF_SCRIPT: &str = "machine-runtime";

/// A resolved ecosystem: the apps in file order (services first, then workers) and the warnings
/// found.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub apps: Vec<AppSpec>,
    /// Unknown or ignored fields, one readable line each (`app "x": unknown field "y" ignored`).
    pub warnings: Vec<String>,
}

/// How the script is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interpreter {
    /// Not given: chosen from the script's extension like PM2 (`.js` node, `.py` python3,
    /// `.sh` bash, ...); a script without a known extension is executed directly.
    Auto,
    /// `"none"`: execute the script directly.
    None,
    /// Run the script with this program (`node`, `python3`, `/usr/bin/bash`).
    Program(String),
}

/// One app of the ecosystem, with PM2 defaults applied and times as [`Duration`]s: the resolved
/// form of [`wire::App`].
#[derive(Debug, Clone, PartialEq)]
pub struct AppSpec {
    pub name: String,
    pub script: String,
    pub args: Vec<String>,
    pub interpreter: Interpreter,
    /// Arguments for the interpreter, before the script (`interpreter_args`, PM2's `node_args`).
    pub interpreter_args: Vec<String>,
    /// Working directory; relative paths in a file are resolved against the file's directory.
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    /// Restart and stop settings.
    pub restart: RestartPolicy,
    pub role: Option<Role>,
    pub gpu: Option<u32>,
    pub port: Option<u16>,
    pub readiness: Option<Readiness>,
    pub wait_for: Vec<String>,
    pub essential: bool,
    pub required_env: Vec<String>,
    pub connector: Option<String>,
    pub index: Option<u32>,
    /// How a worker is tied to hardware (`machine_binding`), reported to the job broker.
    pub binding: Option<Binding>,
    /// Service types a worker advertises to the job broker (`machine_services`).
    pub services: Vec<String>,
    /// The catalog service a service app runs (`machine_service`), whose extra arguments variable
    /// (`COMFY_ARGS`) is appended at start.
    pub catalog_service: Option<&'static str>,
    /// Folders created before each start (`machine_dirs`; relative ones are relative to `cwd`).
    pub dirs: Vec<PathBuf>,
    /// PM2's `wait_ready`: the app is ready when it sends `"ready"` on its IPC channel, or once
    /// `listen_timeout` has passed (PM2's rule).
    pub wait_ready: bool,
    /// PM2's `listen_timeout`: the longest `wait_ready` waits (PM2 default 3000 ms).
    pub listen_timeout: Duration,
    /// PM2's `max_memory_restart` in bytes: the RSS of the app's process tree above which it is
    /// restarted gracefully (see [`crate::supervisor::memory`]).
    pub max_memory_restart: Option<u64>,
}

/// PM2's default `listen_timeout` (its `GRACEFUL_LISTEN_TIMEOUT`).
pub const DEFAULT_LISTEN_TIMEOUT: Duration = Duration::from_millis(3000);

impl AppSpec {
    /// An app with PM2's defaults and nothing else set.
    pub fn new(name: impl Into<String>, script: impl Into<String>) -> AppSpec {
        AppSpec {
            name: name.into(),
            script: script.into(),
            args: Vec::new(),
            interpreter: Interpreter::Auto,
            interpreter_args: Vec::new(),
            cwd: None,
            env: BTreeMap::new(),
            restart: RestartPolicy::default(),
            role: None,
            gpu: None,
            port: None,
            readiness: None,
            wait_for: Vec::new(),
            essential: false,
            required_env: Vec::new(),
            connector: None,
            index: None,
            binding: None,
            services: Vec::new(),
            catalog_service: None,
            dirs: Vec::new(),
            wait_ready: false,
            listen_timeout: DEFAULT_LISTEN_TIMEOUT,
            max_memory_restart: None,
        }
    }
}

/// One thing wrong with an ecosystem, located by app and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `app "comfyui-gpu0"` or `app #3` (1-based) when the name is missing, or `ecosystem`.
    pub location: String,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: field \"{field}\" {}", self.location, self.message),
            None => write!(f, "{}: {}", self.location, self.message),
        }
    }
}

/// Why an ecosystem could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EcosystemError {
    // The cause is in the message and not a `source`: printed as a chain it said itself twice
    // ("No such file or directory (os error 2): No such file or directory (os error 2)").
    #[error("cannot read ecosystem file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("ecosystem {origin} is not valid json: {cause}")]
    Json {
        origin: String,
        cause: serde_json::Error,
    },
    /// Every problem of the file; its warnings too (an ignored field with a did-you-mean), so that
    /// a typo is not found only in the run after the problems are fixed.
    #[error("ecosystem {origin} has {} problem{}:\n{}{}", problems.len(), if problems.len() == 1 { "" } else { "s" }, list(problems), also_warnings(warnings))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
        warnings: Vec<String>,
    },
}

/// The warnings after the problems of [`EcosystemError::Invalid`]: nothing when there are none.
fn also_warnings(warnings: &[String]) -> String {
    warnings
        .iter()
        .map(|w| format!("\n  - warning: {w}"))
        .collect()
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and checks an ecosystem file; relative `cwd`s resolve against the file's directory, and
/// an app without `cwd` runs in that directory (as with `pm2 start ecosystem.json`).
pub fn read_file(path: &Path) -> Result<Resolved, EcosystemError> {
    let text = std::fs::read_to_string(path).map_err(|cause| EcosystemError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    let base = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
    parse(&text, &path.display().to_string(), base.as_deref())
}

/// Parses ecosystem JSON text; `origin` names it in messages, `base_dir` anchors relative `cwd`s.
pub fn parse(
    text: &str,
    origin: &str,
    base_dir: Option<&Path>,
) -> Result<Resolved, EcosystemError> {
    let value: Value = serde_json::from_str(text).map_err(|cause| EcosystemError::Json {
        origin: origin.to_string(),
        cause,
    })?;
    from_value_at(&value, origin, base_dir)
}

/// Reads an in-memory ecosystem JSON value (`{"apps": [...]}` or a bare list of apps).
pub fn from_value(value: &Value) -> Result<Resolved, EcosystemError> {
    from_value_at(value, "(in memory)", None)
}

/// Resolves an ecosystem already in its wire type, e.g. one made from a plan
/// (`wire::Ecosystem::from(&plan)`); `origin` names it in messages.
pub fn resolve(eco: wire::Ecosystem, origin: &str) -> Result<Resolved, EcosystemError> {
    let mut reader = Reader::default();
    let mut apps = Vec::new();
    for (i, app) in eco.apps.into_iter().enumerate() {
        if let Some(instances) = reader.app(i, app, Vec::new(), None) {
            apps.extend(instances);
        }
    }
    reader.finish(apps, origin)
}

fn from_value_at(
    value: &Value,
    origin: &str,
    base_dir: Option<&Path>,
) -> Result<Resolved, EcosystemError> {
    let mut reader = Reader::default();
    let apps_value = match value {
        Value::Object(top) => {
            for key in top.keys() {
                // `x_generated` is our own generator's provenance header (JSON has no comments).
                if !wire::Ecosystem::fields().contains(&key.as_str()) {
                    reader.warn(format!("ecosystem: top-level field \"{key}\" ignored"));
                }
            }
            match top.get("apps") {
                Some(Value::Array(apps)) => Some(apps),
                Some(other) => {
                    reader.error(
                        "ecosystem",
                        Some("apps"),
                        format!("must be a list of apps, found {}", wire::describe(other)),
                    );
                    None
                }
                None => {
                    reader.error(
                        "ecosystem",
                        Some("apps"),
                        "is missing; write {\"apps\": [ ... ]}".to_string(),
                    );
                    None
                }
            }
        }
        // PM2 also accepts a bare list of apps.
        Value::Array(apps) => Some(apps),
        other => {
            reader.error(
                "ecosystem",
                None,
                format!(
                    "must be an object {{\"apps\": [...]}}, found {}",
                    wire::describe(other)
                ),
            );
            None
        }
    };
    let mut apps = Vec::new();
    for (i, value) in apps_value.into_iter().flatten().enumerate() {
        if let Some(instances) = reader.app_value(i, value, base_dir) {
            apps.extend(instances);
        }
    }
    reader.finish(apps, origin)
}

#[derive(Default)]
struct Reader {
    problems: Vec<Problem>,
    warnings: Vec<String>,
    /// Every app name seen, including apps with other problems (so they are not reported twice).
    names: Vec<String>,
    /// `machine_wait_for` of every named app, including apps with other problems.
    waits: Vec<(String, Vec<String>)>,
    /// Apps started as several instances: (name in the file, instance names).
    groups: Vec<(String, Vec<String>)>,
}

impl Reader {
    fn error(&mut self, location: &str, field: Option<&str>, message: String) {
        self.problems.push(Problem {
            location: location.to_string(),
            field: field.map(str::to_string),
            message,
        });
    }

    fn warn(&mut self, message: String) {
        self.warnings.push(message);
    }

    /// One app of a file: its fields read into the wire type, then resolved; keys the wire type
    /// does not have are warned about.
    fn app_value(
        &mut self,
        i: usize,
        value: &Value,
        base_dir: Option<&Path>,
    ) -> Option<Vec<AppSpec>> {
        let Value::Object(obj) = value else {
            self.error(
                &format!("app #{}", i + 1),
                None,
                format!("must be an object, found {}", wire::describe(value)),
            );
            return None;
        };
        let (app, failed) = wire::read_app(value);
        let location = location(i, app.name.as_deref());
        if let Some(readiness) = obj.get("machine_readiness") {
            for key in wire::Readiness::unknown_keys(readiness) {
                self.warn(format!(
                    "{location}: field \"machine_readiness\": unknown key \"{key}\" ignored"
                ));
            }
        }
        for key in obj.keys() {
            if App::fields().contains(&key.as_str()) {
                continue;
            }
            if let Some(reason) = pm2_refusal(key, &obj[key]) {
                self.error(&location, Some(key), reason);
            } else if PM2_IGNORED.contains(&key.as_str()) {
                self.warn(format!(
                    "{location}: field \"{key}\" is a PM2 option machine-runtime does not implement; ignored"
                ));
            } else if key.starts_with("env_") {
                self.warn(format!(
                    "{location}: field \"{key}\" (a PM2 --env variant) ignored; machine-runtime reads only \"env\""
                ));
            } else {
                let hint = machine_model::suggest::did_you_mean(key, App::fields().iter().copied())
                    .map(|s| format!("; did you mean \"{s}\"?"))
                    .unwrap_or_default();
                self.warn(format!("{location}: unknown field \"{key}\" ignored{hint}"));
            }
        }
        let failed = failed.into_iter().map(|p| (p.field, p.message)).collect();
        self.app(i, app, failed, base_dir)
    }

    /// One app in its wire type: one [`AppSpec`], or one per instance (`instances`). `failed`
    /// holds the fields that did not read (field, message); they are reported here, in field
    /// order with the app's other problems.
    fn app(
        &mut self,
        i: usize,
        app: App,
        failed: Vec<(&'static str, String)>,
        base_dir: Option<&Path>,
    ) -> Option<Vec<AppSpec>> {
        let location = location(i, app.name.as_deref());
        let has_failed = |field: &str| failed.iter().any(|(f, _)| *f == field);
        let mut problems = failed.clone();
        let (name, count) = self.name_and_count(&app, has_failed("name"), &mut problems);
        match app.script.as_deref() {
            Some("") => problems.push(("script", "is empty".to_string())),
            None if !has_failed("script") => problems.push(("script", "is missing".to_string())),
            _ => {}
        }
        let pm2 = Pm2Instances {
            port: app.port,
            exec_mode: app.exec_mode.clone(),
            instance_var: app.instance_var.clone(),
            increment_var: app.increment_var.clone(),
        };
        let spec = app_spec(
            app,
            name.clone().unwrap_or_default(),
            base_dir,
            &mut problems,
        );
        if let Some(n) = &name {
            self.waits.push((n.clone(), spec.wait_for.clone()));
        }
        let instances = self.instances(&location, &pm2, spec, count, &mut problems);
        // In the order of the wire type's fields, as a reader going down the app would find them.
        let order = |field: &str| App::fields().iter().position(|f| *f == field);
        problems.sort_by_key(|p| order(p.0));
        let clean = problems.is_empty();
        for (field, message) in problems {
            self.error(&location, Some(field), message);
        }
        (clean && name.is_some()).then_some(instances).flatten()
    }

    /// The app's name (`None` when missing or empty, a problem unless `name_failed` already says
    /// so) and its instance count; records the names it will run under.
    fn name_and_count(
        &mut self,
        app: &App,
        name_failed: bool,
        problems: &mut Vec<(&'static str, String)>,
    ) -> (Option<String>, Option<u32>) {
        let name = match &app.name {
            Some(s) if !s.trim().is_empty() => Some(s.clone()),
            Some(_) => {
                problems.push(("name", "is empty".to_string()));
                None
            }
            None if name_failed => None,
            None => {
                problems.push(("name", "is missing".to_string()));
                None
            }
        };
        let count = match app.instances.map(instance_count).transpose() {
            Ok(n) => n,
            Err(message) => {
                problems.push(("instances", message));
                None
            }
        };
        if let Some(n) = &name {
            match count {
                Some(count) if count > 1 => {
                    let names: Vec<String> = (0..count).map(|k| format!("{n}-{k}")).collect();
                    self.names.extend(names.iter().cloned());
                    self.groups.push((n.clone(), names));
                }
                _ => self.names.push(n.clone()),
            }
        }
        (name, count)
    }

    /// PM2's `port`, `exec_mode`, `instances`, `instance_var` and `increment_var`: every process
    /// gets `PORT` (from `port`), its instance number in `NODE_APP_INSTANCE` (or `instance_var`),
    /// and `increment_var` counted up from its value; several instances are named `name-0`,
    /// `name-1`, ... (PM2 names them all `name`, which our names, being unique, cannot).
    fn instances(
        &mut self,
        location: &str,
        pm2: &Pm2Instances,
        mut app: AppSpec,
        count: Option<u32>,
        problems: &mut Vec<(&'static str, String)>,
    ) -> Option<Vec<AppSpec>> {
        if let Some(port) = pm2.port {
            app.env.insert("PORT".into(), port.to_string());
        }
        let instance_var = pm2
            .instance_var
            .clone()
            .unwrap_or_else(|| "NODE_APP_INSTANCE".into());
        let count = count.unwrap_or(1);
        match pm2.exec_mode.as_deref() {
            None | Some("fork" | "fork_mode") => {}
            Some("cluster" | "cluster_mode") if count > 1 => {
                problems.push((
                    "exec_mode",
                    format!(
                        "is \"cluster\" with {count} instances: PM2's cluster mode shares one port among node processes, which machine-runtime does not do; use \"fork\" with \"increment_var\": \"PORT\" (a port each), or one instance"
                    ),
                ));
                return None;
            }
            Some("cluster" | "cluster_mode") => self.warn(format!(
                "{location}: exec_mode \"cluster\" with one instance runs as \"fork\" (one process)"
            )),
            Some(other) => {
                problems.push((
                    "exec_mode",
                    format!("must be \"fork\" or \"cluster\", found \"{other}\""),
                ));
                return None;
            }
        }
        let base = match &pm2.increment_var {
            None => None,
            Some(var) => match app.env.get(var).map(|v| v.trim().parse::<i64>()) {
                Some(Ok(n)) => Some(n),
                _ => {
                    problems.push((
                        "increment_var",
                        format!(
                            "names {var}, which has no whole-number value in \"env\" (or \"port\") to count up from"
                        ),
                    ));
                    return None;
                }
            },
        };
        let mut out = Vec::new();
        for k in 0..count {
            let mut one = app.clone();
            if count > 1 {
                one.name = format!("{}-{k}", app.name);
            }
            one.env.insert(instance_var.clone(), k.to_string());
            if let (Some(var), Some(base)) = (&pm2.increment_var, base) {
                one.env
                    .insert(var.clone(), (base + i64::from(k)).to_string());
            }
            out.push(one);
        }
        Some(out)
    }

    /// The checks across apps, then the result.
    fn finish(mut self, mut apps: Vec<AppSpec>, origin: &str) -> Result<Resolved, EcosystemError> {
        // Waiting for an app started as several instances means waiting for every instance.
        for app in &mut apps {
            let mut deps = Vec::new();
            for dep in std::mem::take(&mut app.wait_for) {
                match self.groups.iter().find(|(base, _)| *base == dep) {
                    Some((_, names)) => deps.extend(names.iter().cloned()),
                    None => deps.push(dep),
                }
            }
            app.wait_for = deps;
        }
        self.check_across(&apps);
        if self.problems.is_empty() {
            Ok(Resolved {
                apps,
                warnings: self.warnings,
            })
        } else {
            Err(EcosystemError::Invalid {
                origin: origin.to_string(),
                problems: self.problems,
                warnings: self.warnings,
            })
        }
    }

    fn check_across(&mut self, apps: &[AppSpec]) {
        let mut seen = BTreeSet::new();
        let mut reported = BTreeSet::new();
        for name in &self.names {
            if !seen.insert(name.as_str()) && reported.insert(name.as_str()) {
                self.problems.push(Problem {
                    location: format!("app \"{name}\""),
                    field: Some("name".to_string()),
                    message: "is used by more than one app; names must be unique".to_string(),
                });
            }
        }
        let mut names: BTreeSet<String> = self.names.iter().cloned().collect();
        names.extend(self.groups.iter().map(|(base, _)| base.clone()));
        for (app, wait_for) in std::mem::take(&mut self.waits) {
            for dep in &wait_for {
                if dep == &app {
                    self.error(
                        &format!("app \"{app}\""),
                        Some("machine_wait_for"),
                        "names the app itself".to_string(),
                    );
                } else if !names.contains(dep) {
                    let hint =
                        machine_model::suggest::did_you_mean(dep, names.iter().map(String::as_str))
                            .map(|s| format!("; did you mean \"{s}\"?"))
                            .unwrap_or_default();
                    self.error(
                        &format!("app \"{app}\""),
                        Some("machine_wait_for"),
                        format!("names \"{dep}\", which is not an app of this ecosystem{hint}"),
                    );
                }
            }
        }
        if let Some(cycle) = find_cycle(apps) {
            self.error(
                "ecosystem",
                Some("machine_wait_for"),
                format!("forms a cycle: {}", cycle.join(" -> ")),
            );
        }
    }
}

/// Why a PM2 option the runtime does not implement is refused in this value: ignoring it would
/// change what the app does. `None` for values that change nothing (`watch: false`) and for fields
/// that are only ignored (logs, metrics; see `PM2_IGNORED`).
fn pm2_refusal(key: &str, value: &Value) -> Option<String> {
    let set = !matches!(value, Value::Null | Value::Bool(false))
        && !matches!(value, Value::String(s) if s.is_empty())
        && !matches!(value, Value::Array(a) if a.is_empty());
    let reason = match key {
        "watch" if set => {
            "restarts the app when its files change under PM2; machine-runtime does not watch files (restart an app with POST /restart/service); remove it or set it to false"
        }
        "cron_restart" | "cron" if set => {
            "restarts the app on a schedule under PM2; machine-runtime has no cron restarts; remove it"
        }
        "autostart" if *value == Value::Bool(false) => {
            "false keeps the app stopped under PM2 until started by hand; machine-runtime starts every app of the file; remove the app or the field"
        }
        "treekill" if *value == Value::Bool(false) => {
            "false makes PM2 signal only the app's main process and leave its children running; machine-runtime always stops the whole process group, so nothing outlives the app; remove it"
        }
        "uid" | "gid" | "user" if set => {
            "runs the app as another user under PM2; in a machine the container decides the user (docker run --user); remove it"
        }
        "filter_env" if set => {
            "drops variables of the runtime's environment under PM2; machine-runtime passes its whole environment; remove it, or set the variables empty in \"env\""
        }
        "shutdown_with_message" if *value == Value::Bool(true) => {
            "makes PM2 ask the app to stop with process.send('shutdown'); machine-runtime stops apps with a signal: set \"kill_signal\" to the one the app handles"
        }
        _ => return None,
    };
    Some(reason.to_string())
}

/// The process of one app, before PM2's instance fields are applied: command, restart policy,
/// directories, environment and the `machine_*` fields. Problems are pushed as (field, message).
fn app_spec(
    app: App,
    name: String,
    base_dir: Option<&Path>,
    problems: &mut Vec<(&'static str, String)>,
) -> AppSpec {
    let restart = RestartPolicy::from(&app);
    let mut spec = AppSpec::new(name, app.script.clone().unwrap_or_default());
    spec.restart = restart;
    spec.args = app.args;
    spec.wait_ready = app.wait_ready.unwrap_or(false);
    // PM2: `listen_timeout || GRACEFUL_LISTEN_TIMEOUT`, so 0 is the default too.
    spec.listen_timeout = app
        .listen_timeout
        .filter(|m| m.0 > 0)
        .map_or(DEFAULT_LISTEN_TIMEOUT, |m| Duration::from_millis(m.0));
    spec.max_memory_restart = app.max_memory_restart;
    spec.interpreter = match app.interpreter.or(app.exec_interpreter).as_deref() {
        None | Some("") => Interpreter::Auto,
        Some("none") => Interpreter::None,
        Some(p) => Interpreter::Program(p.to_string()),
    };
    if let Some(args) = app.interpreter_args.or(app.node_args) {
        spec.interpreter_args = args;
    }
    if let Some(line) = app.script.as_deref().filter(|s| s.contains(' ')) {
        command_line(&mut spec, line, problems);
    }
    spec.cwd = match app.cwd {
        Some(cwd) => {
            let cwd = PathBuf::from(cwd);
            Some(match base_dir {
                Some(base) if cwd.is_relative() => base.join(cwd),
                _ => cwd,
            })
        }
        None => base_dir.map(Path::to_path_buf),
    };
    spec.env = app.env;
    spec.role = app.machine_role;
    // A process with a WORKER_ID is a job-queue worker even in a hand-written file without
    // machine_* fields: it is reported to the broker, stopped first and drained.
    if spec.role.is_none() && spec.env.get("WORKER_ID").is_some_and(|id| !id.is_empty()) {
        spec.role = Some(Role::Worker);
    }
    spec.gpu = app.machine_gpu;
    spec.port = app.machine_port;
    spec.readiness = match app.machine_readiness.map(Readiness::try_from).transpose() {
        Ok(r) => r,
        Err(message) => {
            problems.push(("machine_readiness", message));
            None
        }
    };
    spec.wait_for = app.machine_wait_for;
    spec.essential = app.machine_essential;
    spec.required_env = app.machine_required_env;
    spec.connector = app.machine_connector;
    spec.index = app.machine_index;
    spec.binding = app.machine_binding;
    spec.services = app.machine_services;
    spec.catalog_service = app
        .machine_service
        .as_deref()
        .and_then(|service| catalog_service(service, problems));
    spec.dirs = app
        .machine_dirs
        .iter()
        .map(|dir| match &spec.cwd {
            Some(cwd) if Path::new(dir).is_relative() => cwd.join(dir),
            _ => PathBuf::from(dir),
        })
        .collect();
    spec
}

/// PM2 7 (lib/Common.js): a script with a space is a command line, run as `bash -c "<script>"`
/// with its args replaced by these two; `args` or an interpreter given beside it are problems.
fn command_line(spec: &mut AppSpec, line: &str, problems: &mut Vec<(&'static str, String)>) {
    if !spec.args.is_empty() {
        problems.push((
            "args",
            format!(
                "is given with a command line in \"script\" (\"{line}\"): PM2 runs such a script as bash -c \"{line}\" and drops \"args\"; put the arguments in \"script\", or name only the program there"
            ),
        ));
    }
    if !matches!(spec.interpreter, Interpreter::Auto | Interpreter::None) {
        problems.push((
            "interpreter",
            format!(
                "is given with a command line in \"script\" (\"{line}\"): PM2 would run bash -c \"{line}\" through this interpreter; write the interpreter into the command line and leave \"interpreter\" out (or \"none\")"
            ),
        ));
    }
    spec.script = "bash".to_string();
    spec.args = vec!["-c".to_string(), line.to_string()];
    spec.interpreter = Interpreter::None;
}

/// `machine_service`: the catalog's name for it, or a problem naming the catalog's services.
fn catalog_service(
    service: &str,
    problems: &mut Vec<(&'static str, String)>,
) -> Option<&'static str> {
    if let Some(entry) = machine_model::catalog::service(service) {
        return Some(entry.name);
    }
    let names = machine_model::catalog::SERVICES.iter().map(|s| s.name);
    let hint = machine_model::suggest::did_you_mean(service, names.clone())
        .map(|s| format!("; did you mean \"{s}\"?"))
        .unwrap_or_default();
    problems.push((
        "machine_service",
        format!(
            "is \"{service}\", which is not a service of the catalog ({}){hint}",
            names.collect::<Vec<_>>().join(", ")
        ),
    ));
    None
}

/// The PM2 fields that decide how many processes an app starts and what each gets.
struct Pm2Instances {
    port: Option<u16>,
    exec_mode: Option<String>,
    instance_var: Option<String>,
    increment_var: Option<String>,
}

/// `app "name"`, or `app #3` (1-based) for an app without a usable name.
fn location(i: usize, name: Option<&str>) -> String {
    match name.filter(|n| !n.trim().is_empty()) {
        Some(n) => format!("app \"{n}\""),
        None => format!("app #{}", i + 1),
    }
}

/// PM2's `instances` as a count: `0`, `"max"` or `-1`... mean "one per CPU" (less N for `-N`), as
/// PM2 counts them; at most 10000.
fn instance_count(instances: Instances) -> Result<u32, String> {
    let cpus = || {
        std::thread::available_parallelism()
            .map(|n| n.get() as i64)
            .unwrap_or(1)
    };
    let n = match instances {
        Instances::Max | Instances::Count(0) => cpus(),
        Instances::Count(n) if n < 0 => (cpus() + n).max(1),
        Instances::Count(n) => n,
    };
    u32::try_from(n)
        .ok()
        .filter(|&n| n <= 10_000)
        .ok_or_else(|| format!("is {n}; at most 10000 instances"))
}

impl TryFrom<wire::Readiness> for Readiness {
    type Error = String;

    /// Applies the defaults (interval 500 ms, timeout 2 s, tcp host `127.0.0.1`) and parses an
    /// http URL; the error is the message for the `machine_readiness` field.
    fn try_from(r: wire::Readiness) -> Result<Readiness, String> {
        let (check, interval_ms, timeout_ms) = match r {
            wire::Readiness::Http {
                url,
                interval_ms,
                timeout_ms,
            } => {
                let url = HttpUrl::parse(&url).map_err(|e| format!("\"url\": {e}"))?;
                (Check::Http { url }, interval_ms, timeout_ms)
            }
            wire::Readiness::Tcp {
                host,
                port,
                interval_ms,
                timeout_ms,
            } => (
                Check::Tcp {
                    host: host.unwrap_or_else(|| "127.0.0.1".to_string()),
                    port,
                },
                interval_ms,
                timeout_ms,
            ),
            wire::Readiness::Command {
                command,
                interval_ms,
                timeout_ms,
            } => (Check::Command { command }, interval_ms, timeout_ms),
        };
        let ms = |ms: Option<u64>, default| ms.map_or(default, Duration::from_millis);
        Ok(Readiness {
            check,
            interval: ms(interval_ms, DEFAULT_PROBE_INTERVAL),
            timeout: ms(timeout_ms, DEFAULT_PROBE_TIMEOUT),
        })
    }
}

/// Finds one wait-for cycle, as the list of names around it.
fn find_cycle(apps: &[AppSpec]) -> Option<Vec<String>> {
    let index: HashMap<&str, usize> = apps
        .iter()
        .enumerate()
        .map(|(i, a)| (a.name.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut mark = vec![0u8; apps.len()];
    fn visit(
        i: usize,
        apps: &[AppSpec],
        index: &HashMap<&str, usize>,
        mark: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        mark[i] = 1;
        stack.push(i);
        for dep in &apps[i].wait_for {
            let Some(&j) = index.get(dep.as_str()) else {
                continue;
            };
            if j == i {
                continue;
            }
            if mark[j] == 1 {
                let start = stack.iter().position(|&k| k == j).unwrap_or(0);
                let mut cycle: Vec<String> = stack[start..]
                    .iter()
                    .map(|&k| apps[k].name.clone())
                    .collect();
                cycle.push(apps[j].name.clone());
                return Some(cycle);
            }
            if mark[j] == 0
                && let Some(cycle) = visit(j, apps, index, mark, stack)
            {
                return Some(cycle);
            }
        }
        stack.pop();
        mark[i] = 2;
        None
    }
    for i in 0..apps.len() {
        if mark[i] == 0 {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(i, apps, &index, &mut mark, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_file_with_problems_also_shows_its_warnings() {
        // The typo is only a warning (PM2 ignores unknown fields); shown with the problems, it is
        // not found only in the run after they are fixed.
        let err = parse(
            r#"{"apps": [{"name": "a", "script": "sleep", "listen_timeout": -1, "autorestrat": false}]}"#,
            "eco.json",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "ecosystem eco.json has 1 problem:\n  - app \"a\": field \"listen_timeout\""
            ),
            "{err}"
        );
        assert!(
            err.ends_with("\n  - warning: app \"a\": unknown field \"autorestrat\" ignored; did you mean \"autorestart\"?"),
            "{err}"
        );
    }

    fn problems(value: Value) -> Vec<String> {
        match from_value(&value) {
            Ok(_) => Vec::new(),
            Err(EcosystemError::Invalid { problems, .. }) => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn machine_service_names_a_catalog_service_and_dirs_follow_cwd() {
        let eco = from_value(&json!({"apps": [{
            "name": "comfyui-gpu0", "script": "python", "cwd": "/w/ComfyUI",
            "machine_service": "comfyui", "machine_dirs": ["output/gpu0", "/tmp/t/gpu0"],
        }]}))
        .unwrap();
        assert_eq!(eco.apps[0].catalog_service, Some("comfyui"));
        assert_eq!(
            eco.apps[0].dirs,
            [
                PathBuf::from("/w/ComfyUI/output/gpu0"),
                PathBuf::from("/tmp/t/gpu0")
            ]
        );
        assert_eq!(
            problems(json!({"apps": [{"name": "a", "script": "x", "machine_service": "comfyu"}]})),
            [
                "app \"a\": field \"machine_service\" is \"comfyu\", which is not a service of the catalog (comfyui, simulation, playwright); did you mean \"comfyui\"?"
            ]
        );
    }

    #[test]
    fn applies_pm2_defaults() {
        let eco =
            from_value(&json!({"apps": [{"name": "a", "script": "sleep", "args": "10"}]})).unwrap();
        let app = &eco.apps[0];
        assert_eq!(app, &{
            let mut expected = AppSpec::new("a", "sleep");
            expected.args = vec!["10".to_string()];
            // PM2 gives every process its instance number, 0 for a single one.
            expected.env.insert("NODE_APP_INSTANCE".into(), "0".into());
            expected
        });
        assert!(app.restart.autorestart);
        assert_eq!(app.restart.max_restarts, 16);
        assert_eq!(app.restart.min_uptime, Duration::from_millis(1000));
        assert_eq!(app.restart.kill_timeout, Duration::from_millis(1600));
        assert_eq!(app.restart.restart_delay, Duration::ZERO);
        assert!(eco.warnings.is_empty());
    }

    #[test]
    fn reads_every_field() {
        let eco = from_value(&json!({"apps": [
            {"name": "svc", "script": "python3", "args": ["-m", "http.server"], "interpreter": "none",
             "cwd": "/tmp", "env": {"A": "1", "N": 2, "B": true}, "autorestart": false, "max_restarts": 3,
             "min_uptime": "10s", "restart_delay": 250, "exp_backoff_restart_delay": "100ms",
             "kill_timeout": "2m", "stop_exit_codes": [0, 3],
             "machine_role": "service", "machine_gpu": 1, "machine_port": 8189,
             "machine_readiness": {"kind": "http", "url": "http://127.0.0.1:8189/", "interval_ms": 50, "timeout_ms": 70},
             "machine_essential": true, "machine_required_env": ["TOKEN"]},
            {"name": "w", "script": "w.js", "interpreter": "node", "interpreter_args": "--inspect",
             "machine_role": "worker", "machine_gpu": null, "machine_wait_for": ["svc"],
             "machine_connector": "comfyui", "machine_index": 0,
             "machine_binding": "shared", "machine_services": ["comfyui", "a1111"],
             "machine_readiness": {"kind": "tcp", "port": 1}},
            {"name": "c", "script": "x", "machine_readiness": {"kind": "command", "command": ["true"]}}
        ]}))
        .unwrap();
        let svc = &eco.apps[0];
        assert_eq!(svc.interpreter, Interpreter::None);
        assert_eq!(svc.args, ["-m", "http.server"]);
        assert_eq!(svc.cwd.as_deref(), Some(Path::new("/tmp")));
        assert_eq!(
            svc.env,
            BTreeMap::from([
                ("NODE_APP_INSTANCE".into(), "0".into()),
                ("A".into(), "1".into()),
                ("B".into(), "true".into()),
                ("N".into(), "2".into())
            ])
        );
        assert!(!svc.restart.autorestart);
        assert_eq!(svc.restart.max_restarts, 3);
        assert_eq!(svc.restart.min_uptime, Duration::from_secs(10));
        assert_eq!(svc.restart.restart_delay, Duration::from_millis(250));
        assert_eq!(
            svc.restart.exp_backoff_restart_delay,
            Some(Duration::from_millis(100))
        );
        assert_eq!(svc.restart.kill_timeout, Duration::from_secs(120));
        assert_eq!(svc.restart.stop_exit_codes, [0, 3]);
        assert_eq!(svc.role, Some(Role::Service));
        assert_eq!((svc.gpu, svc.port), (Some(1), Some(8189)));
        let r = svc.readiness.as_ref().unwrap();
        assert_eq!(
            (r.interval, r.timeout),
            (Duration::from_millis(50), Duration::from_millis(70))
        );
        assert!(matches!(&r.check, Check::Http { url } if url.port == 8189));
        assert!(svc.essential);
        assert_eq!(svc.required_env, ["TOKEN"]);
        let w = &eco.apps[1];
        assert_eq!(w.interpreter, Interpreter::Program("node".into()));
        assert_eq!(w.interpreter_args, ["--inspect"]);
        assert_eq!(w.wait_for, ["svc"]);
        assert_eq!(
            (w.connector.as_deref(), w.index, w.gpu),
            (Some("comfyui"), Some(0), None)
        );
        assert_eq!(
            (w.binding, w.services.as_slice()),
            (
                Some(Binding::Shared),
                ["comfyui", "a1111"].map(String::from).as_slice()
            )
        );
        assert_eq!(
            w.readiness.as_ref().unwrap().check,
            Check::Tcp {
                host: "127.0.0.1".into(),
                port: 1
            }
        );
        assert_eq!(
            eco.apps[2].readiness.as_ref().unwrap().check,
            Check::Command {
                command: vec!["true".into()]
            }
        );
        assert!(eco.warnings.is_empty(), "{:?}", eco.warnings);
    }

    #[test]
    fn reports_every_wrong_type_at_once() {
        let found = problems(json!({"apps": [
            {"name": "a", "script": 1, "autorestart": "yes", "max_restarts": -1, "min_uptime": "soon",
             "env": {"K": null}, "args": {"x": 1}, "machine_role": "boss", "machine_gpu": "0",
             "machine_port": 70000, "machine_wait_for": "b", "machine_binding": "GPU",
             "machine_services": [1]},
            {"script": "x"},
            {"name": "c", "script": "x", "machine_readiness": {"kind": "http", "url": "https://x/"}},
            {"name": "d", "script": "x", "machine_readiness": {"kind": "smoke"}},
            "not an app"
        ]}));
        assert_eq!(
            found,
            [
                "app \"a\": field \"script\" must be a string, found 1",
                "app \"a\": field \"args\" must be a string or a list of strings, found an object",
                "app \"a\": field \"autorestart\" must be true or false, found \"yes\"",
                "app \"a\": field \"max_restarts\" must be a non-negative integer, found -1",
                "app \"a\": field \"min_uptime\" must be milliseconds as a number or a string like \"500ms\", \"10s\", \"2m\", found \"soon\"",
                "app \"a\": field \"machine_role\" must be \"service\" or \"worker\", found \"boss\"",
                "app \"a\": field \"machine_gpu\" must be a non-negative integer, found \"0\"",
                "app \"a\": field \"machine_port\" must be a port number 1-65535 or null, found 70000",
                "app \"a\": field \"machine_wait_for\" must be a list of strings, found \"b\"",
                "app \"a\": field \"machine_binding\" must be \"gpu\", \"cpu\" or \"shared\", found \"GPU\"",
                "app \"a\": field \"machine_services\" item 1 must be a string, found 1",
                "app #2: field \"name\" is missing",
                "app \"c\": field \"machine_readiness\" \"url\": \"https://x/\" uses https, which readiness probes do not speak; probe the plain http port or use a tcp probe",
                "app \"d\": field \"machine_readiness\" \"kind\" must be \"http\", \"tcp\" or \"command\", found \"smoke\"",
                "app #5: must be an object, found \"not an app\"",
            ]
        );
    }

    #[test]
    fn checks_names_and_wait_for_across_apps() {
        let found = problems(json!({"apps": [
            {"name": "a", "script": "x", "machine_wait_for": ["comfyui-gpu1"]},
            {"name": "a", "script": "x"},
            {"name": "comfyui-gpu0", "script": "x", "machine_wait_for": ["comfyui-gpu0"]},
            {"name": "p", "script": "x", "machine_wait_for": ["q"]},
            {"name": "q", "script": "x", "machine_wait_for": ["p"]}
        ]}));
        assert_eq!(
            found,
            [
                "app \"a\": field \"name\" is used by more than one app; names must be unique",
                "app \"a\": field \"machine_wait_for\" names \"comfyui-gpu1\", which is not an app of this ecosystem; did you mean \"comfyui-gpu0\"?",
                "app \"comfyui-gpu0\": field \"machine_wait_for\" names the app itself",
                "ecosystem: field \"machine_wait_for\" forms a cycle: p -> q -> p",
            ]
        );
    }

    #[test]
    fn env_values_of_every_json_type_pass_as_pm2_passes_them() {
        let eco = from_value(&json!({"apps": [{"name": "a", "script": "x", "env": {
            "LIMIT": 10, "DEBUG": true, "CONFIG": {"enabled": true}, "NULLV": null,
            "ARR": [1, "a"], "FLT": 1.50, "WHOLE": 10.0, "S": "text"
        }}]}))
        .unwrap();
        let env = &eco.apps[0].env;
        for (key, value) in [
            ("LIMIT", "10"),
            ("DEBUG", "true"),
            ("CONFIG", r#"{"enabled":true}"#),
            ("NULLV", "null"),
            ("ARR", r#"[1,"a"]"#),
            ("FLT", "1.5"),
            ("WHOLE", "10"),
            ("S", "text"),
        ] {
            assert_eq!(env.get(key).map(String::as_str), Some(value), "{key}");
        }
        assert_eq!(
            problems(json!({"apps": [{"name": "a", "script": "x", "env": "A=1"}]})),
            [
                "app \"a\": field \"env\" must be an object of variables ({\"NAME\": \"value\"}), found a string"
            ]
        );
    }

    #[test]
    fn instances_and_port_start_what_pm2_starts() {
        let eco = from_value(&json!({"apps": [
            {"name": "worker", "script": "./p.sh", "interpreter": "none", "exec_mode": "fork",
             "instances": 3, "port": 3000},
            {"name": "inc", "script": "x", "instances": 2, "port": 4000,
             "increment_var": "PORT", "instance_var": "INSTANCE_ID"},
            {"name": "after", "script": "x", "machine_wait_for": ["worker"]}
        ]}))
        .unwrap();
        let names: Vec<&str> = eco.apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "worker-0", "worker-1", "worker-2", "inc-0", "inc-1", "after"
            ]
        );
        for (k, app) in eco.apps[..3].iter().enumerate() {
            assert_eq!(app.env["NODE_APP_INSTANCE"], k.to_string());
            assert_eq!(app.env["PORT"], "3000");
        }
        assert_eq!(eco.apps[3].env["INSTANCE_ID"], "0");
        assert_eq!(eco.apps[4].env["INSTANCE_ID"], "1");
        assert_eq!(eco.apps[4].env["PORT"], "4001");
        assert!(!eco.apps[4].env.contains_key("NODE_APP_INSTANCE"));
        assert_eq!(eco.apps[5].wait_for, ["worker-0", "worker-1", "worker-2"]);
        assert!(eco.warnings.is_empty(), "{:?}", eco.warnings);

        assert_eq!(
            problems(json!({"apps": [
                {"name": "c", "script": "x.js", "exec_mode": "cluster", "instances": 2},
                {"name": "d", "script": "x", "instances": "many"},
                {"name": "e", "script": "x", "instances": 2, "increment_var": "PORT"},
                {"name": "f", "script": "x", "exec_mode": "threads"}
            ]})),
            [
                "app \"c\": field \"exec_mode\" is \"cluster\" with 2 instances: PM2's cluster mode shares one port among node processes, which machine-runtime does not do; use \"fork\" with \"increment_var\": \"PORT\" (a port each), or one instance",
                "app \"d\": field \"instances\" must be a whole number of processes or \"max\", found \"many\"",
                "app \"e\": field \"increment_var\" names PORT, which has no whole-number value in \"env\" (or \"port\") to count up from",
                "app \"f\": field \"exec_mode\" must be \"fork\" or \"cluster\", found \"threads\"",
            ]
        );
        let max = from_value(&json!({"apps": [{"name": "m", "script": "x", "instances": "max"}]}))
            .unwrap();
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(max.apps.len(), cpus);
    }

    #[test]
    fn pm2_stop_readiness_and_memory_fields_read_as_pm2_writes_them() {
        let eco = from_value(&json!({"apps": [
            {"name": "a", "script": "a.js", "kill_signal": "SIGTERM", "wait_ready": true,
             "listen_timeout": 8000, "max_memory_restart": "150M"},
            {"name": "b", "script": "b.js", "wait_ready": true, "listen_timeout": 0,
             "max_memory_restart": 1048576},
            {"name": "c", "script": "x", "max_memory_restart": "1G"},
            {"name": "d", "script": "x", "max_memory_restart": "512K"}
        ]}))
        .unwrap();
        let a = &eco.apps[0];
        assert_eq!(a.restart.kill_signal, Some(libc::SIGTERM));
        assert!(a.wait_ready);
        assert_eq!(a.listen_timeout, Duration::from_secs(8));
        assert_eq!(a.max_memory_restart, Some(150 << 20));
        let b = &eco.apps[1];
        // PM2: `listen_timeout || 3000`.
        assert_eq!(b.listen_timeout, DEFAULT_LISTEN_TIMEOUT);
        assert_eq!(b.restart.kill_signal, None);
        assert_eq!(b.max_memory_restart, Some(1 << 20));
        assert_eq!(eco.apps[2].max_memory_restart, Some(1 << 30));
        assert_eq!(eco.apps[3].max_memory_restart, Some(512 << 10));
        assert!(eco.warnings.is_empty(), "{:?}", eco.warnings);
    }

    #[test]
    fn a_command_line_in_script_runs_as_pm2_runs_it() {
        let eco = from_value(&json!({"apps": [
            {"name": "py", "script": "python3 main.py --port 18926"},
            {"name": "none", "script": "./run.sh --fast", "interpreter": "none"}
        ]}))
        .unwrap();
        assert_eq!(eco.apps[0].script, "bash");
        assert_eq!(eco.apps[0].args, ["-c", "python3 main.py --port 18926"]);
        assert_eq!(eco.apps[0].interpreter, Interpreter::None);
        assert_eq!(eco.apps[1].args, ["-c", "./run.sh --fast"]);
        assert_eq!(
            problems(json!({"apps": [
                {"name": "a", "script": "python3 main.py", "args": ["--port", "1"]},
                {"name": "b", "script": "main.py --port 1", "interpreter": "python3"}
            ]})),
            [
                "app \"a\": field \"args\" is given with a command line in \"script\" (\"python3 main.py\"): PM2 runs such a script as bash -c \"python3 main.py\" and drops \"args\"; put the arguments in \"script\", or name only the program there",
                "app \"b\": field \"interpreter\" is given with a command line in \"script\" (\"main.py --port 1\"): PM2 would run bash -c \"main.py --port 1\" through this interpreter; write the interpreter into the command line and leave \"interpreter\" out (or \"none\")",
            ]
        );
    }

    #[test]
    fn bad_stop_signal_memory_and_listen_timeout_are_one_located_error_each() {
        assert_eq!(
            problems(json!({"apps": [
                {"name": "a", "script": "x", "kill_signal": "TERM", "max_memory_restart": "lots",
                 "listen_timeout": -1, "wait_ready": "yes"},
                {"name": "b", "script": "x", "max_memory_restart": "1.5G", "watch": true,
                 "treekill": false, "cron_restart": "0 * * * *", "watch_delay": 100}
            ]})),
            [
                "app \"a\": field \"kill_signal\" must be a signal name (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGABRT, SIGALRM, SIGKILL), found \"TERM\"",
                "app \"a\": field \"wait_ready\" must be true or false, found \"yes\"",
                "app \"a\": field \"listen_timeout\" must be milliseconds as a number or a string like \"500ms\", \"10s\", \"2m\", found -1",
                "app \"a\": field \"max_memory_restart\" must be a size as PM2 writes it: bytes as a number, or a string like \"150M\", \"1G\", \"512K\", \"1048576\" (K, M, G are powers of 1024), found \"lots\"",
                "app \"b\": field \"watch\" restarts the app when its files change under PM2; machine-runtime does not watch files (restart an app with POST /restart/service); remove it or set it to false",
                "app \"b\": field \"treekill\" false makes PM2 signal only the app's main process and leave its children running; machine-runtime always stops the whole process group, so nothing outlives the app; remove it",
                "app \"b\": field \"cron_restart\" restarts the app on a schedule under PM2; machine-runtime has no cron restarts; remove it",
                "app \"b\": field \"max_memory_restart\" must be a size as PM2 writes it: bytes as a number, or a string like \"150M\", \"1G\", \"512K\", \"1048576\" (K, M, G are powers of 1024), found \"1.5G\"",
            ]
        );
    }

    #[test]
    fn warns_about_unknown_and_ignored_fields() {
        let eco = from_value(&json!({"apps": [
            {"name": "a", "script": "x", "autorestrat": false, "instances": 2, "env_production": {}}
        ], "deploy": {}}))
        .unwrap();
        assert_eq!(
            eco.warnings,
            [
                "ecosystem: top-level field \"deploy\" ignored",
                "app \"a\": unknown field \"autorestrat\" ignored; did you mean \"autorestart\"?",
                "app \"a\": field \"env_production\" (a PM2 --env variant) ignored; machine-runtime reads only \"env\"",
            ]
        );
    }

    #[test]
    fn rejects_bad_top_level_shapes() {
        assert_eq!(
            problems(json!({"services": []})),
            ["ecosystem: field \"apps\" is missing; write {\"apps\": [ ... ]}"]
        );
        assert_eq!(
            problems(json!(3)),
            ["ecosystem: must be an object {\"apps\": [...]}, found 3"]
        );
        assert!(from_value(&json!([{"name": "a", "script": "x"}])).is_ok());
        let err = parse("{\"apps\": [", "f.json", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("ecosystem f.json is not valid json: "),
            "{err}"
        );
    }

    #[test]
    fn resolves_cwd_against_the_file() {
        let eco = parse(
            r#"{"apps": [{"name": "a", "script": "x", "cwd": "sub"}, {"name": "b", "script": "x"}, {"name": "c", "script": "x", "cwd": "/abs"}]}"#,
            "f",
            Some(Path::new("/etc/machine")),
        )
        .unwrap();
        let cwds: Vec<_> = eco.apps.iter().map(|a| a.cwd.clone().unwrap()).collect();
        assert_eq!(
            cwds,
            [
                PathBuf::from("/etc/machine/sub"),
                "/etc/machine".into(),
                "/abs".into()
            ]
        );
    }

    #[test]
    fn every_profile_plan_resolves_without_a_warning_to_its_generated_apps() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../generated");
        let mut compared = 0;
        for baked in crate::profiles::ALL {
            let plan = baked.plan(&Default::default()).unwrap();
            let from_plan = resolve((&plan).into(), baked.name)
                .unwrap_or_else(|e| panic!("{}: {e}", baked.name));
            assert!(
                from_plan.warnings.is_empty(),
                "{}: {:?}",
                baked.name,
                from_plan.warnings
            );
            let file = root.join(baked.name).join("ecosystem.config.json");
            // The generated file also carries the components' settings (env values); the apps,
            // their order, roles and restart settings are the plan's.
            if file.is_file() {
                let shape = |apps: &[AppSpec]| -> Vec<(String, Option<Role>, RestartPolicy)> {
                    apps.iter()
                        .map(|a| (a.name.clone(), a.role, a.restart.clone()))
                        .collect()
                };
                let from_file = read_file(&file).unwrap();
                assert_eq!(
                    shape(&from_file.apps),
                    shape(&from_plan.apps),
                    "{}",
                    baked.name
                );
                compared += 1;
            }
        }
        assert!(
            compared >= 6,
            "only {compared} profiles have a generated ecosystem"
        );
    }

    #[test]
    fn resolving_reports_the_problems_of_a_wire_ecosystem() {
        let eco = wire::Ecosystem {
            apps: vec![
                App {
                    name: Some("a".into()),
                    ..App::default()
                },
                App {
                    name: Some("a".into()),
                    script: Some("x".into()),
                    machine_readiness: Some(wire::Readiness::Http {
                        url: "https://x/".into(),
                        interval_ms: None,
                        timeout_ms: None,
                    }),
                    ..App::default()
                },
            ],
            ..wire::Ecosystem::default()
        };
        let err = resolve(eco, "of profile p").unwrap_err().to_string();
        assert_eq!(
            err,
            "ecosystem of profile p has 3 problems:\n  - app \"a\": field \"script\" is missing\n  - app \"a\": field \"machine_readiness\" \"url\": \"https://x/\" uses https, which readiness probes do not speak; probe the plain http port or use a tcp probe\n  - app \"a\": field \"name\" is used by more than one app; names must be unique"
        );
    }

    #[test]
    fn every_generated_ecosystem_reads_without_a_warning() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../generated");
        let mut read = 0;
        for entry in std::fs::read_dir(&root).unwrap() {
            let file = entry.unwrap().path().join("ecosystem.config.json");
            if !file.is_file() {
                continue;
            }
            let eco = read_file(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert!(
                eco.warnings.is_empty(),
                "{}: {:?}",
                file.display(),
                eco.warnings
            );
            assert!(!eco.apps.is_empty(), "{}", file.display());
            read += 1;
        }
        assert!(
            read >= 6,
            "only {read} generated ecosystems found under {}",
            root.display()
        );
    }
}
