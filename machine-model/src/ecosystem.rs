//! The PM2 ecosystem file (`ecosystem.config.json`): one wire type, [`Ecosystem`] with its [`App`]s
//! and [`Readiness`], that the xtask's renderer serialises (`From<&Plan>`) and the runtime's reader
//! deserialises. What PM2 has no field for travels in `machine_*` fields, which PM2 ignores.
//!
//! Reading is lenient the way PM2 is: `args` as a list or one shell-like string, env values of any
//! JSON type, durations as milliseconds or strings like `"10s"`, `instances` as a number or `"max"`.
//! Each field's reader names what it wants in its error (`must be true or false, found "yes"`);
//! [`read_app`] reads every field of an app on its own, so all wrong fields are reported at once.
//! The fields we know are the type's own ([`App::FIELDS`]), never a list kept by hand.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::catalog::Binding;
use crate::plan::Plan;

/// An ecosystem file: `{"x_generated": "...", "apps": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ecosystem {
    /// A JSON Schema reference an editor may use; not read.
    #[serde(rename = "$schema", skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Our generator's provenance line (JSON has no comments); PM2 ignores it.
    #[serde(skip_serializing_if = "is_none")]
    pub x_generated: Option<String>,
    /// Processes in start order.
    pub apps: Vec<App>,
}

/// Whether an app is a service or a worker; decides stop order (workers stop first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An inference service workers depend on.
    Service,
    /// A job worker.
    Worker,
}

/// A readiness check as written in the ecosystem file (`machine_readiness`), tagged by `kind`.
/// Times are milliseconds; an absent `interval_ms`/`timeout_ms` takes the runtime's default, an
/// absent tcp `host` is `127.0.0.1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Readiness {
    /// `GET url` answers 2xx.
    Http {
        /// A plain `http://` URL.
        url: String,
        /// Time between the starts of two attempts (ms).
        #[serde(skip_serializing_if = "is_none")]
        interval_ms: Option<u64>,
        /// Time one attempt may take (ms).
        #[serde(skip_serializing_if = "is_none")]
        timeout_ms: Option<u64>,
    },
    /// A TCP connection succeeds.
    Tcp {
        /// Host name or address.
        #[serde(skip_serializing_if = "is_none")]
        host: Option<String>,
        /// Port, 1-65535.
        port: u16,
        /// Time between the starts of two attempts (ms).
        #[serde(skip_serializing_if = "is_none")]
        interval_ms: Option<u64>,
        /// Time one attempt may take (ms).
        #[serde(skip_serializing_if = "is_none")]
        timeout_ms: Option<u64>,
    },
    /// The command (program and arguments, no shell) exits 0.
    Command {
        /// Program and arguments, at least the program.
        command: Vec<String>,
        /// Time between the starts of two attempts (ms).
        #[serde(skip_serializing_if = "is_none")]
        interval_ms: Option<u64>,
        /// Time one attempt may take (ms).
        #[serde(skip_serializing_if = "is_none")]
        timeout_ms: Option<u64>,
    },
}

/// A time in milliseconds; read from a number or a string like `"500ms"`, `"10s"`, `"2m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Millis(pub u64);

/// PM2's `instances`: a count, or one per CPU (`"max"`, `0`, `-N` for all but N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instances {
    /// `"max"`.
    Max,
    /// A number as written (0 and negatives count CPUs, as in PM2).
    Count(i64),
}

impl Serialize for Instances {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Instances::Max => s.serialize_str("max"),
            Instances::Count(n) => s.serialize_i64(*n),
        }
    }
}

/// One PM2 app plus our `machine_*` extension fields. Fields are in the order the file has them and
/// the reader reports them; fields PM2 gives a default are `Option`s here (the runtime applies PM2's
/// default: `autorestart` true, `max_restarts` 16, `min_uptime` 1000 ms, `kill_timeout` 1600 ms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct App {
    /// Process name, unique in the file.
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::string")]
    pub name: Option<String>,
    /// How many processes to start (PM2); several are named `name-0`, `name-1`, ...
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::instances")]
    pub instances: Option<Instances>,
    /// Executable (`machine-runtime` means the runtime binary itself), or the script file an
    /// interpreter runs.
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::string")]
    pub script: Option<String>,
    /// Arguments; read from a list, or one string split like a shell would.
    #[serde(deserialize_with = "read::args")]
    pub args: Vec<String>,
    /// `none`: run `script` directly; a program (`node`): run `<program> <script>`; absent or
    /// empty: chosen from the script's extension, as PM2 does.
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::string")]
    pub interpreter: Option<String>,
    /// PM2's older name of `interpreter`, read when `interpreter` is absent.
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::string")]
    pub exec_interpreter: Option<String>,
    /// Arguments for the interpreter, before the script.
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::some_args")]
    pub interpreter_args: Option<Vec<String>>,
    /// PM2's older name of `interpreter_args`, read when that is absent.
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::some_args")]
    pub node_args: Option<Vec<String>>,
    /// Working directory; a relative one is relative to the file's folder.
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::string")]
    pub cwd: Option<String>,
    /// Environment added to the machine's; values of any JSON type are read as PM2 passes them.
    #[serde(deserialize_with = "read::env")]
    pub env: BTreeMap<String, String>,
    /// Restart when it exits (PM2 default true).
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::bool")]
    pub autorestart: Option<bool>,
    /// Consecutive unstable exits before the app is `errored` (PM2 default 16).
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::uint")]
    pub max_restarts: Option<u32>,
    /// Exits sooner than this are unstable (PM2 default 1000 ms).
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::millis")]
    pub min_uptime: Option<Millis>,
    /// Fixed delay before a restart (PM2 default 0).
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::millis")]
    pub restart_delay: Option<Millis>,
    /// First restart delay, ×1.5 per restart, capped at 15 s; overrides `restart_delay`.
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::millis")]
    pub exp_backoff_restart_delay: Option<Millis>,
    /// Grace between the stop signal and SIGKILL (PM2 default 1600 ms).
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::millis")]
    pub kill_timeout: Option<Millis>,
    /// Exit codes after which the app is not restarted; read from one code or a list.
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::exit_codes")]
    pub stop_exit_codes: Option<Vec<i32>>,
    /// The signal that asks the app to stop (`"SIGINT"`, `"SIGTERM"`, ... see [`SIGNAL_NAMES`]).
    /// PM2 7 has no per-app field: it sends its `KILL_SIGNAL` (`PM2_KILL_SIGNAL`, default SIGINT)
    /// to every app; the runtime reads this field first, then `PM2_KILL_SIGNAL`, then SIGINT.
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::signal")]
    pub kill_signal: Option<String>,
    /// PM2's `wait_ready`: the app is ready when it sends `"ready"` on its IPC channel
    /// (`process.send('ready')`), or once `listen_timeout` has passed without it.
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::bool")]
    pub wait_ready: Option<bool>,
    /// PM2's `listen_timeout` (ms): how long `wait_ready` waits for the message (PM2 default 3000;
    /// 0 also means the default, as in PM2).
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::millis")]
    pub listen_timeout: Option<Millis>,
    /// PM2's `max_memory_restart` in bytes: read from a number of bytes or a string `"150M"`,
    /// `"1G"`, `"512K"`, `"1048576"` (PM2's `^\d+(G|M|K)?$`, powers of 1024).
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::bytes")]
    pub max_memory_restart: Option<u64>,
    /// Service or worker.
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::role")]
    pub machine_role: Option<Role>,
    /// GPU index the app is pinned to.
    #[serde(deserialize_with = "read::uint_or_null")]
    pub machine_gpu: Option<u32>,
    /// Port a service listens on.
    #[serde(deserialize_with = "read::port")]
    pub machine_port: Option<u16>,
    /// When a service counts as ready.
    #[serde(deserialize_with = "read::readiness")]
    pub machine_readiness: Option<Readiness>,
    /// Apps that must be ready before this one starts.
    #[serde(deserialize_with = "read::string_list")]
    pub machine_wait_for: Vec<String>,
    /// If it ends for good, the machine stops with an error.
    #[serde(deserialize_with = "read::bool_or_false")]
    pub machine_essential: bool,
    /// Secrets the app needs from the environment, by name.
    #[serde(deserialize_with = "read::string_list")]
    pub machine_required_env: Vec<String>,
    /// Connector of a worker.
    #[serde(
        skip_serializing_if = "is_none",
        deserialize_with = "read::string_or_null"
    )]
    pub machine_connector: Option<String>,
    /// Index of a worker within its connector.
    #[serde(
        skip_serializing_if = "is_none",
        deserialize_with = "read::uint_or_null"
    )]
    pub machine_index: Option<u32>,
    /// How a worker is tied to hardware (`gpu`, `cpu` or `shared`), as reported to the job broker.
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::binding")]
    pub machine_binding: Option<Binding>,
    /// Service types a worker advertises to the job broker.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "read::string_list"
    )]
    pub machine_services: Vec<String>,
    /// The catalog service a service app runs (`comfyui`): the runtime appends that service's extra
    /// arguments variable (`COMFY_ARGS`) at start, refusing words that repeat the flags the machine sets.
    #[serde(
        skip_serializing_if = "is_none",
        deserialize_with = "read::string_or_null"
    )]
    pub machine_service: Option<String>,
    /// Folders the runtime creates (with their parents) before the app starts (absolute, or relative
    /// to `cwd`): a ComfyUI instance's own output and temp folders.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "read::string_list"
    )]
    pub machine_dirs: Vec<String>,
    /// PM2's `port`: the process gets `PORT`.
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::port")]
    pub port: Option<u16>,
    /// PM2's `exec_mode`: `fork` (or `fork_mode`), or `cluster` (or `cluster_mode`).
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::string")]
    pub exec_mode: Option<String>,
    /// Variable holding the instance number (default `NODE_APP_INSTANCE`).
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::string")]
    pub instance_var: Option<String>,
    /// Variable counted up from its `env` value, one per instance (`PORT`: a port each).
    #[serde(skip_serializing_if = "is_none", deserialize_with = "read::string")]
    pub increment_var: Option<String>,
}

/// Whether an optional field is left out of the file.
fn is_none<T>(value: &Option<T>) -> bool {
    value.is_none()
}

/// PM2 options that are valid for PM2 but that the runtime does not implement: a warning names
/// them as such instead of as unknown. PM2's own names (`lib/API/schema.json`), not ours.
pub const PM2_IGNORED: &[&str] = &[
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
    "namespace",
    "vizion",
    "autostart",
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

static APP_FIELDS: LazyLock<&'static [&'static str]> = LazyLock::new(field_names::<App>);
static ECOSYSTEM_FIELDS: LazyLock<&'static [&'static str]> =
    LazyLock::new(field_names::<Ecosystem>);

impl App {
    /// The app's field names in declaration order, as serde reads them.
    pub fn fields() -> &'static [&'static str] {
        &APP_FIELDS
    }
}

impl Ecosystem {
    /// The top-level field names (`$schema`, `x_generated`, `apps`).
    pub fn fields() -> &'static [&'static str] {
        &ECOSYSTEM_FIELDS
    }
}

/// The field names a `#[derive(Deserialize)]` struct reads, in declaration order: the list serde's
/// derive hands to `deserialize_struct` (renames applied; aliases and flattened fields are not in
/// it). Empty for a type that is not such a struct.
pub(crate) fn field_names<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct Recorder<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Recorder<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("field names only"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Recorder(&mut fields));
    fields
}

/// One field of an app that does not have the shape its reader wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// The field's name (one of [`App::fields`]).
    pub field: &'static str,
    /// What is wrong, starting with a verb (`must be a string, found 1`).
    pub message: String,
}

/// Reads one app object: the [`App`] made of every field whose shape is right, and one
/// [`FieldProblem`] per thing wrong (in field order; a field may have several). Keys that are not
/// fields of [`App`] are not read (see [`App::fields`] for the known ones); a value that is not an
/// object reads as an empty app (the caller says what it is).
pub fn read_app(value: &Value) -> (App, Vec<FieldProblem>) {
    // serde's derive would also read a list positionally; an app is an object.
    let Value::Object(obj) = value else {
        return (App::default(), Vec::new());
    };
    if let Ok(app) = App::deserialize(value) {
        return (app, Vec::new());
    }
    let mut problems = Vec::new();
    let mut good = Map::new();
    for &field in App::fields() {
        let Some(v) = obj.get(field) else { continue };
        let one = Value::Object(Map::from_iter([(field.to_string(), v.clone())]));
        match App::deserialize(&one) {
            Ok(_) => {
                good.insert(field.to_string(), v.clone());
            }
            Err(e) => problems.extend(e.to_string().split(SEP).map(|m| FieldProblem {
                field,
                message: m.to_string(),
            })),
        }
    }
    // Fields are read independently, so the good ones together read too.
    let app = App::deserialize(&Value::Object(good)).unwrap_or_default();
    (app, problems)
}

impl Readiness {
    /// Keys a `machine_readiness` object may have for its `kind` (all kinds' keys when the kind is
    /// unknown): the fields the serialiser writes, plus `kind`.
    pub fn keys(kind: Option<&str>) -> &'static [&'static str] {
        match kind {
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
        }
    }

    /// Keys of a `machine_readiness` object that its kind does not read.
    pub fn unknown_keys(value: &Value) -> Vec<&str> {
        let Value::Object(obj) = value else {
            return Vec::new();
        };
        let allowed = Readiness::keys(obj.get("kind").and_then(Value::as_str));
        obj.keys()
            .map(String::as_str)
            .filter(|k| !allowed.contains(k))
            .collect()
    }
}

impl<'de> Deserialize<'de> for Readiness {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        read::readiness_value(&value).map_err(|m| de::Error::custom(m.join(SEP)))
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read::with(d, read::millis_value)
    }
}

impl<'de> Deserialize<'de> for Instances {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read::with(d, read::instances_value)
    }
}

impl From<&Plan> for Ecosystem {
    /// Renders a plan: service apps first, then worker apps.
    fn from(plan: &Plan) -> Ecosystem {
        let mut apps = Vec::with_capacity(plan.services.len() + plan.workers.len());
        for s in &plan.services {
            apps.push(App {
                name: Some(s.name.clone()),
                script: Some(s.script.clone()),
                args: s.args.clone(),
                interpreter: Some(s.interpreter.into()),
                cwd: Some(s.cwd.clone()),
                env: s.env.clone(),
                machine_role: Some(Role::Service),
                machine_gpu: s.gpu,
                machine_port: s.port,
                machine_readiness: Some(s.readiness.clone()),
                machine_service: Some(s.service.to_string()),
                machine_dirs: s.dirs.clone(),
                // A service that gives up leaves its workers useless: the machine must say so.
                machine_essential: true,
                ..restart(s.restart)
            });
        }
        for w in &plan.workers {
            apps.push(App {
                name: Some(w.name.clone()),
                script: Some(w.script.clone()),
                args: w.args.clone(),
                interpreter: Some(w.interpreter.into()),
                cwd: Some(w.cwd.clone()),
                env: w.env.clone(),
                machine_role: Some(Role::Worker),
                machine_gpu: w.gpu,
                machine_wait_for: w.service_instance.iter().cloned().collect(),
                machine_required_env: w.secrets.iter().map(|s| s.to_string()).collect(),
                machine_connector: Some(w.connector.to_string()),
                machine_index: Some(w.index),
                machine_binding: Some(w.binding),
                machine_services: w.advertises.iter().map(|s| s.to_string()).collect(),
                ..restart(w.restart)
            });
        }
        Ecosystem {
            schema: None,
            x_generated: None,
            apps,
        }
    }
}

/// An app holding only a catalog lifecycle, in PM2's restart fields.
fn restart(l: crate::catalog::Lifecycle) -> App {
    App {
        autorestart: Some(true),
        max_restarts: Some(l.max_restarts),
        min_uptime: Some(Millis(l.min_uptime_ms.into())),
        exp_backoff_restart_delay: Some(Millis(l.exp_backoff_restart_delay_ms.into())),
        kill_timeout: Some(Millis(l.kill_timeout_ms.into())),
        kill_signal: Some(l.kill_signal.to_string()),
        ..App::default()
    }
}

/// Separates several messages about one field inside one serde error.
const SEP: &str = "\u{1f}";

/// Describes a JSON value for a message: `null`, `true`, `3`, `"text"`, `a list`, `an object`.
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("\"{s}\""),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

fn describe_opt(value: Option<&Value>) -> String {
    value.map(describe).unwrap_or_else(|| "nothing".to_string())
}

/// The stop signals an app may name in `kill_signal` (and the runtime's `PM2_KILL_SIGNAL`), as
/// Node's `process.kill` names them.
pub const SIGNAL_NAMES: &[&str] = &[
    "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGABRT", "SIGALRM", "SIGKILL",
];

/// Parses PM2's `max_memory_restart` text: digits, then nothing (bytes) or `K`, `M`, `G` (×1024,
/// ×1024², ×1024³), as PM2's schema (`^\d+(G|M|K)?$`). `None` for anything else.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let (digits, factor) = match text.as_bytes().last()? {
        b'K' => (&text[..text.len() - 1], 1u64 << 10),
        b'M' => (&text[..text.len() - 1], 1 << 20),
        b'G' => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(factor)
}

/// Parses `"1500"`, `"500ms"`, `"10s"`, `"1.5s"`, `"2m"`, `"1h"` into milliseconds.
pub fn parse_millis(text: &str) -> Option<u64> {
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
    (ms.is_finite() && ms >= 0.0).then(|| ms.round() as u64)
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

/// The readers of the app's fields: each takes the JSON value and says what it wants when the
/// value has another shape (the message starts with a verb; the caller prefixes app and field).
mod read {
    use super::*;

    /// Reads a value through `f`, turning its messages into one serde error.
    pub fn with<'de, D: Deserializer<'de>, T>(
        d: D,
        f: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<T, D::Error> {
        let value = Value::deserialize(d)?;
        f(&value).map_err(de::Error::custom)
    }

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        with(d, |v| match v {
            Value::String(s) => Ok(Some(s.clone())),
            other => Err(format!("must be a string, found {}", describe(other))),
        })
    }

    pub(crate) fn string_or_null<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<String>, D::Error> {
        with(d, |v| match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            other => Err(format!(
                "must be a string or null, found {}",
                describe(other)
            )),
        })
    }

    fn bool_value(v: &Value) -> Result<bool, String> {
        v.as_bool()
            .ok_or_else(|| format!("must be true or false, found {}", describe(v)))
    }

    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        with(d, |v| bool_value(v).map(Some))
    }

    pub(crate) fn bool_or_false<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        with(d, bool_value)
    }

    fn uint_value(v: &Value) -> Result<u32, String> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("must be a non-negative integer, found {}", describe(v)))
    }

    pub(crate) fn uint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        with(d, |v| uint_value(v).map(Some))
    }

    pub(crate) fn uint_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        with(d, |v| match v {
            Value::Null => Ok(None),
            v => uint_value(v).map(Some),
        })
    }

    pub(crate) fn signal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        with(d, |v| match v {
            Value::String(s) if SIGNAL_NAMES.contains(&s.as_str()) => Ok(Some(s.clone())),
            other => Err(format!(
                "must be a signal name ({}), found {}",
                SIGNAL_NAMES.join(", "),
                describe(other)
            )),
        })
    }

    pub(crate) fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        with(d, |v| {
            let parsed = match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => parse_bytes(s),
                _ => None,
            };
            parsed.filter(|n| *n > 0).map(Some).ok_or_else(|| {
                format!(
                    "must be a size as PM2 writes it: bytes as a number, or a string like \"150M\", \"1G\", \"512K\", \"1048576\" (K, M, G are powers of 1024), found {}",
                    describe(v)
                )
            })
        })
    }

    pub fn port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
        with(d, |v| match v {
            Value::Null => Ok(None),
            v => v
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|p| *p > 0)
                .map(Some)
                .ok_or_else(|| {
                    format!(
                        "must be a port number 1-65535 or null, found {}",
                        describe(v)
                    )
                }),
        })
    }

    pub(crate) fn millis_value(v: &Value) -> Result<Millis, String> {
        let parsed = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => parse_millis(s),
            _ => None,
        };
        parsed.map(Millis).ok_or_else(|| {
            format!(
                "must be milliseconds as a number or a string like \"500ms\", \"10s\", \"2m\", found {}",
                describe(v)
            )
        })
    }

    pub(crate) fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
        with(d, |v| millis_value(v).map(Some))
    }

    pub(crate) fn instances_value(v: &Value) -> Result<Instances, String> {
        match v {
            Value::String(s) if s == "max" => Ok(Instances::Max),
            Value::String(s) if s.trim().parse::<i64>().is_ok() => {
                Ok(Instances::Count(s.trim().parse::<i64>().unwrap_or(1)))
            }
            Value::Number(n) if n.as_i64().is_some() => {
                Ok(Instances::Count(n.as_i64().unwrap_or(1)))
            }
            other => Err(format!(
                "must be a whole number of processes or \"max\", found {}",
                describe(other)
            )),
        }
    }

    pub fn instances<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Instances>, D::Error> {
        with(d, |v| match v {
            Value::Null => Ok(None),
            v => instances_value(v).map(Some),
        })
    }

    fn args_value(v: &Value) -> Result<Vec<String>, String> {
        match v {
            Value::String(s) => split_args(s),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    // PM2 passes numbers through as their text.
                    Value::Number(n) => Ok(n.to_string()),
                    other => Err(format!(
                        "item {} must be a string, found {}",
                        i + 1,
                        describe(other)
                    )),
                })
                .collect(),
            other => Err(format!(
                "must be a string or a list of strings, found {}",
                describe(other)
            )),
        }
    }

    pub fn args<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        with(d, args_value)
    }

    pub(crate) fn some_args<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<String>>, D::Error> {
        with(d, |v| args_value(v).map(Some))
    }

    pub(crate) fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        with(d, |v| match v {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(format!(
                        "item {} must be a string, found {}",
                        i + 1,
                        describe(other)
                    )),
                })
                .collect(),
            other => Err(format!(
                "must be a list of strings, found {}",
                describe(other)
            )),
        })
    }

    pub(crate) fn exit_codes<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<i32>>, D::Error> {
        let value = Value::deserialize(d)?;
        let items: Vec<&Value> = match &value {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        let mut codes = Vec::new();
        let mut problems = Vec::new();
        for item in items {
            match item.as_i64().and_then(|n| i32::try_from(n).ok()) {
                Some(code) => codes.push(code),
                None => problems.push(format!(
                    "must be an exit code or a list of exit codes, found {}",
                    describe(item)
                )),
            }
        }
        if problems.is_empty() {
            Ok(Some(codes))
        } else {
            Err(de::Error::custom(problems.join(SEP)))
        }
    }

    pub fn env<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
        let value = Value::deserialize(d)?;
        let Value::Object(map) = &value else {
            // Only the type: an env written as one string may hold secrets.
            let found = match &value {
                Value::String(_) => "a string".to_string(),
                other => describe(other),
            };
            return Err(de::Error::custom(format!(
                "must be an object of variables ({{\"NAME\": \"value\"}}), found {found}"
            )));
        };
        let mut out = BTreeMap::new();
        let mut problems = Vec::new();
        for (key, value) in map {
            let text = env_text(value);
            if key.is_empty() || key.contains('=') || key.contains('\0') || text.contains('\0') {
                problems.push(format!(
                    "has an invalid variable name or value for \"{key}\""
                ));
                continue;
            }
            out.insert(key.clone(), text);
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(de::Error::custom(problems.join(SEP)))
        }
    }

    pub fn role<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Role>, D::Error> {
        with(d, |v| match v {
            Value::Null => Ok(None),
            Value::String(s) if s == "service" => Ok(Some(Role::Service)),
            Value::String(s) if s == "worker" => Ok(Some(Role::Worker)),
            Value::String(s) => Err(format!("must be \"service\" or \"worker\", found \"{s}\"")),
            other => Err(format!(
                "must be a string or null, found {}",
                describe(other)
            )),
        })
    }

    pub fn binding<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Binding>, D::Error> {
        with(d, |v| match v {
            Value::Null => Ok(None),
            Value::String(s) => Binding::from_name(s)
                .map(Some)
                .ok_or_else(|| format!("must be \"gpu\", \"cpu\" or \"shared\", found \"{s}\"")),
            other => Err(format!(
                "must be a string or null, found {}",
                describe(other)
            )),
        })
    }

    pub fn readiness<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Readiness>, D::Error> {
        let value = Value::deserialize(d)?;
        match value {
            Value::Null => Ok(None),
            v => readiness_value(&v)
                .map(Some)
                .map_err(|m| de::Error::custom(m.join(SEP))),
        }
    }

    /// A `machine_readiness` object; every problem, each starting with the key it is about.
    pub(crate) fn readiness_value(v: &Value) -> Result<Readiness, Vec<String>> {
        let Value::Object(obj) = v else {
            return Err(vec![format!(
                "must be an object with \"kind\" or null, found {}",
                describe(v)
            )]);
        };
        let mut problems = Vec::new();
        let mut ms = |key: &str| match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64().filter(|n| *n > 0) {
                Some(n) => Some(n),
                None => {
                    problems.push(format!(
                        "\"{key}\" must be a positive number of milliseconds, found {}",
                        describe(v)
                    ));
                    None
                }
            },
        };
        let interval_ms = ms("interval_ms");
        let timeout_ms = ms("timeout_ms");
        let readiness = match obj.get("kind") {
            Some(Value::String(k)) if k == "http" => match obj.get("url") {
                Some(Value::String(url)) => Some(Readiness::Http {
                    url: url.clone(),
                    interval_ms,
                    timeout_ms,
                }),
                other => {
                    problems.push(format!(
                        "\"url\" must be a string for kind \"http\", found {}",
                        describe_opt(other)
                    ));
                    None
                }
            },
            Some(Value::String(k)) if k == "tcp" => {
                let host = match obj.get("host") {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(h)) if !h.is_empty() => Ok(Some(h.clone())),
                    Some(other) => Err(format!(
                        "\"host\" must be a non-empty string, found {}",
                        describe(other)
                    )),
                };
                let port = obj
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| {
                        format!(
                            "\"port\" must be a port number 1-65535 for kind \"tcp\", found {}",
                            describe_opt(obj.get("port"))
                        )
                    });
                match (host, port) {
                    (Ok(host), Ok(port)) => Some(Readiness::Tcp {
                        host,
                        port,
                        interval_ms,
                        timeout_ms,
                    }),
                    (host, port) => {
                        problems.extend(host.err());
                        problems.extend(port.err());
                        None
                    }
                }
            }
            Some(Value::String(k)) if k == "command" => match obj.get("command") {
                Some(Value::Array(items))
                    if !items.is_empty() && items.iter().all(Value::is_string) =>
                {
                    Some(Readiness::Command {
                        command: items
                            .iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect(),
                        interval_ms,
                        timeout_ms,
                    })
                }
                other => {
                    problems.push(format!(
                        "\"command\" must be a non-empty list of strings for kind \"command\", found {}",
                        describe_opt(other)
                    ));
                    None
                }
            },
            other => {
                problems.push(format!(
                    "\"kind\" must be \"http\", \"tcp\" or \"command\", found {}",
                    describe_opt(other)
                ));
                None
            }
        };
        match readiness {
            Some(r) if problems.is_empty() => Ok(r),
            _ => Err(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn parses_durations_in_milliseconds() {
        assert_eq!(parse_millis("1500"), Some(1500));
        assert_eq!(parse_millis("500ms"), Some(500));
        assert_eq!(parse_millis("10s"), Some(10000));
        assert_eq!(parse_millis("1.5s"), Some(1500));
        assert_eq!(parse_millis("2m"), Some(120000));
        assert_eq!(parse_millis("1h"), Some(3600000));
        assert_eq!(parse_millis("10 s"), Some(10000));
        assert_eq!(parse_millis("ten"), None);
        assert_eq!(parse_millis("5d"), None);
        assert_eq!(parse_millis("-1"), None);
    }

    #[test]
    fn the_field_list_is_the_types_own() {
        let fields = App::fields();
        assert_eq!(fields.first(), Some(&"name"));
        for f in [
            "args",
            "machine_readiness",
            "increment_var",
            "exec_interpreter",
        ] {
            assert!(fields.contains(&f), "{f}");
        }
        assert_eq!(Ecosystem::fields(), ["$schema", "x_generated", "apps"]);
        // Every field the writer can write is a field the reader reads.
        let full = App {
            name: Some("a".into()),
            instances: Some(Instances::Max),
            script: Some("x".into()),
            interpreter: Some("none".into()),
            exec_interpreter: Some("none".into()),
            interpreter_args: Some(vec![]),
            node_args: Some(vec![]),
            cwd: Some("/".into()),
            autorestart: Some(true),
            max_restarts: Some(1),
            min_uptime: Some(Millis(1)),
            restart_delay: Some(Millis(1)),
            exp_backoff_restart_delay: Some(Millis(1)),
            kill_timeout: Some(Millis(1)),
            stop_exit_codes: Some(vec![0]),
            kill_signal: Some("SIGTERM".into()),
            wait_ready: Some(true),
            listen_timeout: Some(Millis(1)),
            max_memory_restart: Some(1),
            machine_role: Some(Role::Worker),
            machine_connector: Some("c".into()),
            machine_index: Some(0),
            machine_binding: Some(Binding::Gpu),
            machine_services: vec!["s".into()],
            machine_service: Some("comfyui".into()),
            machine_dirs: vec!["out/gpu0".into()],
            port: Some(1),
            exec_mode: Some("fork".into()),
            instance_var: Some("I".into()),
            increment_var: Some("P".into()),
            ..App::default()
        };
        let Value::Object(written) = serde_json::to_value(&full).unwrap() else {
            panic!("an app serialises to an object")
        };
        let written: Vec<&str> = written.keys().map(String::as_str).collect();
        assert_eq!(written, fields);
        assert_eq!(
            App::deserialize(&serde_json::to_value(&full).unwrap()).unwrap(),
            full
        );
    }

    #[test]
    fn readiness_keys_are_what_each_kind_writes() {
        for r in [
            Readiness::Http {
                url: "http://x/".into(),
                interval_ms: Some(1),
                timeout_ms: Some(1),
            },
            Readiness::Tcp {
                host: Some("h".into()),
                port: 1,
                interval_ms: Some(1),
                timeout_ms: Some(1),
            },
            Readiness::Command {
                command: vec!["true".into()],
                interval_ms: Some(1),
                timeout_ms: Some(1),
            },
        ] {
            let value = serde_json::to_value(&r).unwrap();
            let kind = value["kind"].as_str();
            let written: Vec<&str> = value
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(written, Readiness::keys(kind));
            assert!(Readiness::unknown_keys(&value).is_empty());
            assert_eq!(Readiness::deserialize(&value).unwrap(), r);
        }
    }

    #[test]
    fn read_app_reports_each_wrong_field_and_keeps_the_rest() {
        let (app, problems) = read_app(&json!({
            "name": "a", "script": 1, "autorestart": "yes", "stop_exit_codes": [0, "x", 1.5],
            "machine_gpu": 2
        }));
        assert_eq!(app.name.as_deref(), Some("a"));
        assert_eq!(app.machine_gpu, Some(2));
        assert_eq!((app.script, app.autorestart), (None, None));
        let found: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect();
        assert_eq!(
            found,
            [
                "script: must be a string, found 1",
                "autorestart: must be true or false, found \"yes\"",
                "stop_exit_codes: must be an exit code or a list of exit codes, found \"x\"",
                "stop_exit_codes: must be an exit code or a list of exit codes, found 1.5",
            ]
        );
    }
}
