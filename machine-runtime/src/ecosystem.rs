//! Reads a PM2 ecosystem JSON file (plus our `machine_*` extension fields) into typed [`AppSpec`]s.
//!
//! Fields keep PM2's meanings and defaults (`autorestart` true, `max_restarts` 16, `min_uptime`
//! 1000 ms, `kill_timeout` 1600 ms, `restart_delay` 0), so a file PM2 runs, we run too. Unknown
//! fields and PM2 options we do not implement become warnings; wrong types are errors naming the
//! app and the field. Every problem is collected and reported at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use machine_model::catalog::Binding;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::probe::{Check, HttpUrl, Readiness};

/// PM2's default for `max_restarts`.
pub const DEFAULT_MAX_RESTARTS: u32 = 16;
/// PM2's default for `min_uptime`.
pub const DEFAULT_MIN_UPTIME: Duration = Duration::from_millis(1000);
/// PM2's default for `kill_timeout`.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_millis(1600);

/// The script name that means "this runtime binary" (`std::env::current_exe()`).
pub const SELF_SCRIPT: &str = "machine-runtime";

/// An ecosystem: the apps in file order (services first, then workers) and the warnings found.
#[derive(Debug, Clone)]
pub struct Ecosystem {
    pub apps: Vec<AppSpec>,
    /// Unknown or ignored fields, one readable line each (`app "x": unknown field "y" ignored`).
    pub warnings: Vec<String>,
}

/// What an app is for; decides stop order (workers stop first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Service,
    Worker,
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

/// One app of the ecosystem, with PM2 defaults applied.
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
    pub autorestart: bool,
    /// Consecutive unstable exits (before `min_uptime`) after which the app is `errored`.
    pub max_restarts: u32,
    pub min_uptime: Duration,
    pub restart_delay: Duration,
    /// When set, overrides `restart_delay`: starts here, ×1.5 per restart, capped at 15 s.
    pub exp_backoff_restart_delay: Option<Duration>,
    pub kill_timeout: Duration,
    /// Exit codes after which the app is not restarted (PM2 `stop_exit_codes`).
    pub stop_exit_codes: Vec<i32>,
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
}

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
            autorestart: true,
            max_restarts: DEFAULT_MAX_RESTARTS,
            min_uptime: DEFAULT_MIN_UPTIME,
            restart_delay: Duration::ZERO,
            exp_backoff_restart_delay: None,
            kill_timeout: DEFAULT_KILL_TIMEOUT,
            stop_exit_codes: Vec::new(),
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
    #[error("cannot read ecosystem file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ecosystem {origin} is not valid json: {source}")]
    Json {
        origin: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("ecosystem {origin} has {} problem{}:\n{}", problems.len(), if problems.len() == 1 { "" } else { "s" }, list(problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
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
pub fn read_file(path: &Path) -> Result<Ecosystem, EcosystemError> {
    let text = std::fs::read_to_string(path).map_err(|source| EcosystemError::Read {
        path: path.to_path_buf(),
        source,
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
) -> Result<Ecosystem, EcosystemError> {
    let value: Value = serde_json::from_str(text).map_err(|source| EcosystemError::Json {
        origin: origin.to_string(),
        source,
    })?;
    from_value_at(&value, origin, base_dir)
}

/// Reads an in-memory ecosystem (`{"apps": [...]}`), e.g. one built from a plan.
pub fn from_value(value: &Value) -> Result<Ecosystem, EcosystemError> {
    from_value_at(value, "(in memory)", None)
}

fn from_value_at(
    value: &Value,
    origin: &str,
    base_dir: Option<&Path>,
) -> Result<Ecosystem, EcosystemError> {
    let mut reader = Reader::default();
    let apps_value = match value {
        Value::Object(top) => {
            for key in top.keys() {
                // `x_generated` is our own generator's provenance header (JSON has no comments).
                if !matches!(key.as_str(), "apps" | "$schema" | "x_generated") {
                    reader.warn(format!("ecosystem: top-level field \"{key}\" ignored"));
                }
            }
            match top.get("apps") {
                Some(Value::Array(apps)) => Some(apps),
                Some(other) => {
                    reader.error(
                        "ecosystem",
                        Some("apps"),
                        format!("must be a list of apps, found {}", kind(other)),
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
                    kind(other)
                ),
            );
            None
        }
    };
    let mut apps = Vec::new();
    for (i, app) in apps_value.into_iter().flatten().enumerate() {
        if let Some(instances) = reader.app(i, app, base_dir) {
            apps.extend(instances);
        }
    }
    // Waiting for an app started as several instances means waiting for every instance.
    for app in &mut apps {
        let mut deps = Vec::new();
        for dep in std::mem::take(&mut app.wait_for) {
            match reader.groups.iter().find(|(base, _)| *base == dep) {
                Some((_, names)) => deps.extend(names.iter().cloned()),
                None => deps.push(dep),
            }
        }
        app.wait_for = deps;
    }
    reader.check_across(&apps);
    if reader.problems.is_empty() {
        Ok(Ecosystem {
            apps,
            warnings: reader.warnings,
        })
    } else {
        Err(EcosystemError::Invalid {
            origin: origin.to_string(),
            problems: reader.problems,
        })
    }
}

/// Fields we read.
const KNOWN: &[&str] = &[
    "name",
    "script",
    "args",
    "interpreter",
    "exec_interpreter",
    "interpreter_args",
    "node_args",
    "cwd",
    "env",
    "autorestart",
    "max_restarts",
    "min_uptime",
    "restart_delay",
    "exp_backoff_restart_delay",
    "kill_timeout",
    "stop_exit_codes",
    "machine_role",
    "machine_gpu",
    "machine_port",
    "machine_readiness",
    "machine_wait_for",
    "machine_essential",
    "machine_required_env",
    "machine_connector",
    "machine_index",
    "machine_binding",
    "machine_services",
    "port",
    "instances",
    "exec_mode",
    "instance_var",
    "increment_var",
];

/// PM2 options that are valid for PM2 but that this runtime does not implement.
const PM2_IGNORED: &[&str] = &[
    "watch",
    "ignore_watch",
    "watch_delay",
    "watch_options",
    "merge_logs",
    "combine_logs",
    "error_file",
    "out_file",
    "log_file",
    "log",
    "output",
    "error",
    "pid_file",
    "log_date_format",
    "log_type",
    "time",
    "disable_logs",
    "max_memory_restart",
    "namespace",
    "vizion",
    "autostart",
    "listen_timeout",
    "wait_ready",
    "shutdown_with_message",
    "source_map_support",
    "filter_env",
    "cron_restart",
    "treekill",
    "force",
    "append_env_to_name",
    "post_update",
    "kill_retry_time",
    "windowsHide",
    "uid",
    "gid",
    "user",
    "version",
];

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

    /// One app of the file: one [`AppSpec`], or one per instance (`instances`).
    fn app(&mut self, i: usize, value: &Value, base_dir: Option<&Path>) -> Option<Vec<AppSpec>> {
        let Value::Object(obj) = value else {
            self.error(
                &format!("app #{}", i + 1),
                None,
                format!("must be an object, found {}", kind(value)),
            );
            return None;
        };
        let name = match obj.get("name") {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(Value::String(_)) => {
                self.error(
                    &format!("app #{}", i + 1),
                    Some("name"),
                    "is empty".to_string(),
                );
                None
            }
            Some(other) => {
                self.error(
                    &format!("app #{}", i + 1),
                    Some("name"),
                    format!("must be a string, found {}", kind(other)),
                );
                None
            }
            None => {
                self.error(
                    &format!("app #{}", i + 1),
                    Some("name"),
                    "is missing".to_string(),
                );
                None
            }
        };
        let location = match &name {
            Some(n) => format!("app \"{n}\""),
            None => format!("app #{}", i + 1),
        };
        let instances = match instance_count(obj.get("instances")) {
            Ok(n) => n,
            Err(message) => {
                self.error(&location, Some("instances"), message);
                None
            }
        };
        if let Some(n) = &name {
            match instances {
                Some(count) if count > 1 => {
                    let names: Vec<String> = (0..count).map(|k| format!("{n}-{k}")).collect();
                    self.names.extend(names.iter().cloned());
                    self.groups.push((n.clone(), names));
                }
                _ => self.names.push(n.clone()),
            }
        }
        let before = self.problems.len();
        let mut f = Fields {
            obj,
            location: &location,
            reader: self,
        };
        let script = f.string("script");
        if script.as_deref().is_some_and(str::is_empty) {
            f.reader
                .error(&location, Some("script"), "is empty".to_string());
        }
        if script.is_none() && !obj.contains_key("script") {
            f.reader
                .error(&location, Some("script"), "is missing".to_string());
        }
        let mut app = AppSpec::new(name.clone().unwrap_or_default(), script.unwrap_or_default());
        if let Some(args) = f.args("args") {
            app.args = args;
        }
        let interpreter = f
            .string("interpreter")
            .or_else(|| f.string("exec_interpreter"));
        app.interpreter = match interpreter.as_deref() {
            None | Some("") => Interpreter::Auto,
            Some("none") => Interpreter::None,
            Some(p) => Interpreter::Program(p.to_string()),
        };
        if let Some(args) = f.args("interpreter_args").or_else(|| f.args("node_args")) {
            app.interpreter_args = args;
        }
        if let Some(cwd) = f.string("cwd") {
            let cwd = PathBuf::from(cwd);
            app.cwd = Some(match base_dir {
                Some(base) if cwd.is_relative() => base.join(cwd),
                _ => cwd,
            });
        } else if let Some(base) = base_dir {
            app.cwd = Some(base.to_path_buf());
        }
        if let Some(env) = f.env("env") {
            app.env = env;
        }
        if let Some(v) = f.bool("autorestart") {
            app.autorestart = v;
        }
        if let Some(v) = f.uint("max_restarts") {
            app.max_restarts = v;
        }
        if let Some(v) = f.duration("min_uptime") {
            app.min_uptime = v;
        }
        if let Some(v) = f.duration("restart_delay") {
            app.restart_delay = v;
        }
        app.exp_backoff_restart_delay = f.duration("exp_backoff_restart_delay");
        if let Some(v) = f.duration("kill_timeout") {
            app.kill_timeout = v;
        }
        app.stop_exit_codes = f.exit_codes("stop_exit_codes");
        app.role = match f.string_or_null("machine_role").as_deref() {
            None => None,
            Some("service") => Some(Role::Service),
            Some("worker") => Some(Role::Worker),
            Some(other) => {
                f.reader.error(
                    &location,
                    Some("machine_role"),
                    format!("must be \"service\" or \"worker\", found \"{other}\""),
                );
                None
            }
        };
        // A process with a WORKER_ID is a job-queue worker even in a hand-written file without
        // machine_* fields: it is reported to the broker, stopped first and drained.
        if app.role.is_none() && app.env.get("WORKER_ID").is_some_and(|id| !id.is_empty()) {
            app.role = Some(Role::Worker);
        }
        app.gpu = f.uint_or_null("machine_gpu");
        app.port = f.port("machine_port");
        app.readiness = f.readiness("machine_readiness");
        app.wait_for = f.string_list("machine_wait_for").unwrap_or_default();
        if let Some(n) = &name {
            f.reader.waits.push((n.clone(), app.wait_for.clone()));
        }
        app.essential = f.bool("machine_essential").unwrap_or(false);
        app.required_env = f.string_list("machine_required_env").unwrap_or_default();
        app.connector = f.string_or_null("machine_connector");
        app.index = f.uint_or_null("machine_index");
        app.binding = match f.string_or_null("machine_binding").as_deref() {
            None => None,
            Some(text) => Binding::from_name(text).or_else(|| {
                f.reader.error(
                    &location,
                    Some("machine_binding"),
                    format!("must be \"gpu\", \"cpu\" or \"shared\", found \"{text}\""),
                );
                None
            }),
        };
        app.services = f.string_list("machine_services").unwrap_or_default();

        for key in obj.keys() {
            if KNOWN.contains(&key.as_str()) {
                continue;
            }
            if PM2_IGNORED.contains(&key.as_str()) {
                self.warn(format!(
                    "{location}: field \"{key}\" is a PM2 option machine-runtime does not implement; ignored"
                ));
            } else if key.starts_with("env_") {
                self.warn(format!(
                    "{location}: field \"{key}\" (a PM2 --env variant) ignored; machine-runtime reads only \"env\""
                ));
            } else {
                let hint = machine_model::suggest::did_you_mean(key, KNOWN.iter().copied())
                    .map(|s| format!("; did you mean \"{s}\"?"))
                    .unwrap_or_default();
                self.warn(format!("{location}: unknown field \"{key}\" ignored{hint}"));
            }
        }
        let instances = self.instances(&location, obj, app, instances);
        (self.problems.len() == before && name.is_some())
            .then_some(instances)
            .flatten()
    }

    /// PM2's `port`, `exec_mode`, `instances`, `instance_var` and `increment_var`: every process
    /// gets `PORT` (from `port`), its instance number in `NODE_APP_INSTANCE` (or `instance_var`),
    /// and `increment_var` counted up from its value; several instances are named `name-0`,
    /// `name-1`, ... (PM2 names them all `name`, which our names, being unique, cannot).
    fn instances(
        &mut self,
        location: &str,
        obj: &Map<String, Value>,
        mut app: AppSpec,
        count: Option<u32>,
    ) -> Option<Vec<AppSpec>> {
        let mut f = Fields {
            obj,
            location,
            reader: self,
        };
        if let Some(port) = f.port("port") {
            app.env.insert("PORT".into(), port.to_string());
        }
        let instance_var = f
            .string("instance_var")
            .unwrap_or_else(|| "NODE_APP_INSTANCE".into());
        let increment_var = f.string("increment_var");
        let count = count.unwrap_or(1);
        match f.string("exec_mode").as_deref() {
            None | Some("fork" | "fork_mode") => {}
            Some("cluster" | "cluster_mode") if count > 1 => {
                f.bad(
                    "exec_mode",
                    format!(
                        "is \"cluster\" with {count} instances: PM2's cluster mode shares one port among node processes, which machine-runtime does not do; use \"fork\" with \"increment_var\": \"PORT\" (a port each), or one instance"
                    ),
                );
                return None;
            }
            Some("cluster" | "cluster_mode") => f.reader.warn(format!(
                "{location}: exec_mode \"cluster\" with one instance runs as \"fork\" (one process)"
            )),
            Some(other) => {
                f.bad(
                    "exec_mode",
                    format!("must be \"fork\" or \"cluster\", found \"{other}\""),
                );
                return None;
            }
        }
        let base = match &increment_var {
            None => None,
            Some(var) => match app.env.get(var).map(|v| v.trim().parse::<i64>()) {
                Some(Ok(n)) => Some(n),
                _ => {
                    f.bad(
                        "increment_var",
                        format!(
                            "names {var}, which has no whole-number value in \"env\" (or \"port\") to count up from"
                        ),
                    );
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
            if let (Some(var), Some(base)) = (&increment_var, base) {
                one.env
                    .insert(var.clone(), (base + i64::from(k)).to_string());
            }
            out.push(one);
        }
        Some(out)
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

/// PM2's `instances`: a positive count; `0`, `"max"` or `-1`... mean "one per CPU" (less N for
/// `-N`), as PM2 counts them. `None` when absent.
fn instance_count(value: Option<&Value>) -> Result<Option<u32>, String> {
    let cpus = || {
        std::thread::available_parallelism()
            .map(|n| n.get() as i64)
            .unwrap_or(1)
    };
    let n = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s == "max" => cpus(),
        Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => {
            s.trim().parse::<i64>().unwrap_or(1)
        }
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or(1),
        Some(other) => {
            return Err(format!(
                "must be a whole number of processes or \"max\", found {}",
                kind(other)
            ));
        }
    };
    let n = match n {
        0 => cpus(),
        n if n < 0 => (cpus() + n).max(1),
        n => n,
    };
    u32::try_from(n)
        .ok()
        .filter(|&n| n <= 10_000)
        .map(Some)
        .ok_or_else(|| format!("is {n}; at most 10000 instances"))
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

struct Fields<'a> {
    obj: &'a Map<String, Value>,
    location: &'a str,
    reader: &'a mut Reader,
}

impl Fields<'_> {
    fn bad(&mut self, field: &str, message: String) {
        self.reader.error(self.location, Some(field), message);
    }

    fn string(&mut self, field: &str) -> Option<String> {
        match self.obj.get(field)? {
            Value::String(s) => Some(s.clone()),
            other => {
                let message = format!("must be a string, found {}", kind(other));
                self.bad(field, message);
                None
            }
        }
    }

    fn string_or_null(&mut self, field: &str) -> Option<String> {
        match self.obj.get(field)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => {
                let message = format!("must be a string or null, found {}", kind(other));
                self.bad(field, message);
                None
            }
        }
    }

    fn bool(&mut self, field: &str) -> Option<bool> {
        match self.obj.get(field)? {
            Value::Bool(b) => Some(*b),
            other => {
                let message = format!("must be true or false, found {}", kind(other));
                self.bad(field, message);
                None
            }
        }
    }

    fn uint(&mut self, field: &str) -> Option<u32> {
        let value = self.obj.get(field)?;
        match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Some(n),
            None => {
                let message = format!("must be a non-negative integer, found {}", kind(value));
                self.bad(field, message);
                None
            }
        }
    }

    fn uint_or_null(&mut self, field: &str) -> Option<u32> {
        match self.obj.get(field)? {
            Value::Null => None,
            _ => self.uint(field),
        }
    }

    fn port(&mut self, field: &str) -> Option<u16> {
        let value = self.obj.get(field)?;
        if value.is_null() {
            return None;
        }
        match value
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|p| *p > 0)
        {
            Some(p) => Some(p),
            None => {
                let message = format!(
                    "must be a port number 1-65535 or null, found {}",
                    kind(value)
                );
                self.bad(field, message);
                None
            }
        }
    }

    /// A time in milliseconds: a number, or a string like `"1500"`, `"500ms"`, `"10s"`, `"2m"`, `"1h"`.
    fn duration(&mut self, field: &str) -> Option<Duration> {
        let value = self.obj.get(field)?;
        let parsed = match value {
            Value::Number(n) => n.as_u64().map(Duration::from_millis),
            Value::String(s) => parse_duration(s),
            _ => None,
        };
        if parsed.is_none() {
            let message = format!(
                "must be milliseconds as a number or a string like \"500ms\", \"10s\", \"2m\", found {}",
                kind(value)
            );
            self.bad(field, message);
        }
        parsed
    }

    /// PM2 `args`: a list of strings, or one string split like a shell would.
    fn args(&mut self, field: &str) -> Option<Vec<String>> {
        match self.obj.get(field)? {
            Value::String(s) => match split_args(s) {
                Ok(args) => Some(args),
                Err(e) => {
                    self.bad(field, e);
                    None
                }
            },
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        // PM2 passes numbers through as their text.
                        Value::Number(n) => out.push(n.to_string()),
                        other => {
                            let message =
                                format!("item {} must be a string, found {}", i + 1, kind(other));
                            self.bad(field, message);
                            return None;
                        }
                    }
                }
                Some(out)
            }
            other => {
                let message = format!(
                    "must be a string or a list of strings, found {}",
                    kind(other)
                );
                self.bad(field, message);
                None
            }
        }
    }

    fn string_list(&mut self, field: &str) -> Option<Vec<String>> {
        match self.obj.get(field)? {
            Value::Null => None,
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => {
                            let message =
                                format!("item {} must be a string, found {}", i + 1, kind(other));
                            self.bad(field, message);
                            return None;
                        }
                    }
                }
                Some(out)
            }
            other => {
                let message = format!("must be a list of strings, found {}", kind(other));
                self.bad(field, message);
                None
            }
        }
    }

    fn exit_codes(&mut self, field: &str) -> Vec<i32> {
        let Some(value) = self.obj.get(field) else {
            return Vec::new();
        };
        let items: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        let mut out = Vec::new();
        for item in items {
            match item.as_i64().and_then(|n| i32::try_from(n).ok()) {
                Some(code) => out.push(code),
                None => {
                    let message = format!(
                        "must be an exit code or a list of exit codes, found {}",
                        kind(item)
                    );
                    self.bad(field, message);
                }
            }
        }
        out
    }

    fn env(&mut self, field: &str) -> Option<BTreeMap<String, String>> {
        match self.obj.get(field)? {
            Value::Object(map) => {
                let mut out = BTreeMap::new();
                for (key, value) in map {
                    let text = env_text(value);
                    if key.is_empty()
                        || key.contains('=')
                        || key.contains('\0')
                        || text.contains('\0')
                    {
                        let message =
                            format!("has an invalid variable name or value for \"{key}\"");
                        self.bad(field, message);
                        continue;
                    }
                    out.insert(key.clone(), text);
                }
                Some(out)
            }
            other => {
                // Only the type: an env written as one string may hold secrets.
                let found = match other {
                    Value::String(_) => "a string".to_string(),
                    other => kind(other),
                };
                let message = format!(
                    "must be an object of variables ({{\"NAME\": \"value\"}}), found {found}"
                );
                self.bad(field, message);
                None
            }
        }
    }

    fn readiness(&mut self, field: &str) -> Option<Readiness> {
        let obj = match self.obj.get(field)? {
            Value::Null => return None,
            Value::Object(obj) => obj,
            other => {
                let message = format!(
                    "must be an object with \"kind\" or null, found {}",
                    kind(other)
                );
                self.bad(field, message);
                return None;
            }
        };
        let get_ms = |this: &mut Self, key: &str, default: Duration| -> Duration {
            match obj.get(key) {
                None | Some(Value::Null) => default,
                Some(v) => match v.as_u64().filter(|n| *n > 0) {
                    Some(n) => Duration::from_millis(n),
                    None => {
                        this.bad(
                            field,
                            format!(
                                "\"{key}\" must be a positive number of milliseconds, found {}",
                                kind(v)
                            ),
                        );
                        default
                    }
                },
            }
        };
        let interval = get_ms(self, "interval_ms", crate::probe::DEFAULT_INTERVAL);
        let timeout = get_ms(self, "timeout_ms", crate::probe::DEFAULT_TIMEOUT);
        let allowed: &[&str] = match obj.get("kind").and_then(Value::as_str) {
            Some("http") => &["kind", "url", "interval_ms", "timeout_ms"],
            Some("tcp") => &["kind", "host", "port", "interval_ms", "timeout_ms"],
            Some("command") => &["kind", "command", "interval_ms", "timeout_ms"],
            _ => &[
                "kind",
                "url",
                "host",
                "port",
                "command",
                "interval_ms",
                "timeout_ms",
            ],
        };
        for key in obj.keys() {
            if !allowed.contains(&key.as_str()) {
                self.reader.warn(format!(
                    "{}: field \"{field}\": unknown key \"{key}\" ignored",
                    self.location
                ));
            }
        }
        let check = match obj.get("kind") {
            Some(Value::String(k)) if k == "http" => match obj.get("url") {
                Some(Value::String(url)) => match HttpUrl::parse(url) {
                    Ok(url) => Some(Check::Http { url }),
                    Err(e) => {
                        self.bad(field, format!("\"url\": {e}"));
                        None
                    }
                },
                other => {
                    self.bad(
                        field,
                        format!(
                            "\"url\" must be a string for kind \"http\", found {}",
                            kind_opt(other)
                        ),
                    );
                    None
                }
            },
            Some(Value::String(k)) if k == "tcp" => {
                let host = match obj.get("host") {
                    None | Some(Value::Null) => Some("127.0.0.1".to_string()),
                    Some(Value::String(h)) if !h.is_empty() => Some(h.clone()),
                    Some(other) => {
                        self.bad(
                            field,
                            format!("\"host\" must be a non-empty string, found {}", kind(other)),
                        );
                        None
                    }
                };
                let port = match obj
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                {
                    Some(p) if p > 0 => Some(p),
                    _ => {
                        self.bad(
                            field,
                            format!(
                                "\"port\" must be a port number 1-65535 for kind \"tcp\", found {}",
                                kind_opt(obj.get("port"))
                            ),
                        );
                        None
                    }
                };
                host.zip(port).map(|(host, port)| Check::Tcp { host, port })
            }
            Some(Value::String(k)) if k == "command" => match obj.get("command") {
                Some(Value::Array(items))
                    if !items.is_empty() && items.iter().all(Value::is_string) =>
                {
                    Some(Check::Command {
                        command: items
                            .iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect(),
                    })
                }
                other => {
                    self.bad(
                        field,
                        format!(
                            "\"command\" must be a non-empty list of strings for kind \"command\", found {}",
                            kind_opt(other)
                        ),
                    );
                    None
                }
            },
            other => {
                self.bad(
                    field,
                    format!(
                        "\"kind\" must be \"http\", \"tcp\" or \"command\", found {}",
                        kind_opt(other)
                    ),
                );
                None
            }
        };
        check.map(|check| Readiness {
            check,
            interval,
            timeout,
        })
    }
}

/// Parses `"1500"`, `"500ms"`, `"10s"`, `"1.5s"`, `"2m"`, `"1h"` into a duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    let ms = number * factor;
    (ms.is_finite() && ms >= 0.0).then(|| Duration::from_millis(ms.round() as u64))
}

/// Splits an argument string like a POSIX shell would, without expansions: whitespace separates
/// words; single quotes keep everything literally; double quotes keep spaces and allow `\"` and
/// `\\`; a backslash outside quotes escapes the next character.
pub fn split_args(text: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    args.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("has an unclosed single quote: {text}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("has an unclosed double quote: {text}")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("has an unclosed double quote: {text}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(format!("ends with a lone backslash: {text}")),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        args.push(word);
    }
    Ok(args)
}

/// An env value as PM2 passes it to the process: strings as they are, everything else as its JSON
/// text (`10`, `true`, `null`, `{"enabled":true}`, `[1,"a"]`); a whole-number float such as `10.0`
/// is `10`, as in JavaScript.
pub fn env_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() && f.fract() == 0.0 && f.abs() < 1e15 => {
                format!("{}", f as i64)
            }
            _ => n.to_string(),
        },
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("\"{s}\""),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

fn kind_opt(value: Option<&Value>) -> String {
    value.map(kind).unwrap_or_else(|| "nothing".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert!(app.autorestart);
        assert_eq!(app.max_restarts, 16);
        assert_eq!(app.min_uptime, Duration::from_millis(1000));
        assert_eq!(app.kill_timeout, Duration::from_millis(1600));
        assert_eq!(app.restart_delay, Duration::ZERO);
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
        assert!(!svc.autorestart);
        assert_eq!(svc.max_restarts, 3);
        assert_eq!(svc.min_uptime, Duration::from_secs(10));
        assert_eq!(svc.restart_delay, Duration::from_millis(250));
        assert_eq!(
            svc.exp_backoff_restart_delay,
            Some(Duration::from_millis(100))
        );
        assert_eq!(svc.kill_timeout, Duration::from_secs(120));
        assert_eq!(svc.stop_exit_codes, [0, 3]);
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
    fn splits_argument_strings_like_a_shell() {
        assert_eq!(split_args("a  b\tc").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            split_args("--x 'a b' \"c d\" e\\ f").unwrap(),
            ["--x", "a b", "c d", "e f"]
        );
        assert_eq!(split_args("'it'\\''s'").unwrap(), ["it's"]);
        assert_eq!(
            split_args("\"say \\\"hi\\\"\" ''").unwrap(),
            ["say \"hi\"", ""]
        );
        assert_eq!(split_args("").unwrap(), Vec::<String>::new());
        assert!(
            split_args("'open")
                .unwrap_err()
                .contains("unclosed single quote")
        );
        assert!(
            split_args("\"open")
                .unwrap_err()
                .contains("unclosed double quote")
        );
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("1500"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("10 s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("5d"), None);
        assert_eq!(parse_duration("-1"), None);
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
