//! The PM2 ecosystem file (`ecosystem.config.json`): one wire type, [`Ecosystem`] with its [`App`]s
//! and [`Readiness`] (its own module, [`crate::readiness`]), that the xtask's renderer serialises
//! (`From<&Plan>`) and the runtime's reader deserialises. What PM2 has no field for travels in
//! `machine_*` fields, which PM2 ignores.
//!
//! Reading is lenient the way PM2 is: `args` as a list or one shell-like string, env values of any
//! JSON type, durations as milliseconds or strings like `"10s"`, `instances` as a number or `"max"`.
//! Each field's reader names what it wants in its error (`must be true or false, found "yes"`);
//! [`read_app`] reads every field of an app on its own, so all wrong fields are reported at once.
//! The fields we know are the type's own ([`App::fields`]), never a list kept by hand.
//!
//! This file holds the wire types; `read.rs` the lenient readers, `render.rs` the rendering of a plan,
//! `text.rs` PM2's text forms of values (sizes, durations, argument strings, env text).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::catalog::Binding;

mod read;
mod render;
mod text;

pub use crate::lenient::describe;
pub use crate::readiness::Readiness;
pub use read::{FieldProblem, read_app};
pub use text::{env_text, parse_bytes, parse_millis, split_args};

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

/// The stop signals an app may name in `kill_signal` (and the runtime's `PM2_KILL_SIGNAL`), as
/// Node's `process.kill` names them.
pub const SIGNAL_NAMES: &[&str] = &[
    "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGABRT", "SIGALRM", "SIGKILL",
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

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
}
