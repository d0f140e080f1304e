//! `GET /metrics`: what the machine knows, in the Prometheus text exposition format (version 0.0.4),
//! for a Prometheus, a Grafana agent or a Kubernetes scrape.
//!
//! The format is Prometheus' own (<https://prometheus.io/docs/instrumenting/exposition_formats/>):
//! per family a `# HELP` and a `# TYPE` line, then one sample per line, `name{label="value"} number`.
//! It is written here rather than with the `prometheus-client` crate, which writes only OpenMetrics
//! 1.0 (a `# EOF` line, `# UNIT` lines, counters typed without their `_total`), a format Prometheus
//! reads only when it asks for it and `promtool check metrics` does not read at all. Names follow
//! Prometheus' rules: prefix `machine_`, base units (seconds, bytes, ratios from 0 to 1), `_total` on
//! counters, an enum as one 0/1 sample per value (`machine_app_state{state=...}`).
//!
//! What is exposed (every value is read at the scrape, nothing is kept between scrapes):
//!
//! - the runtime: `machine_build_info{version}`, `machine_uptime_seconds`;
//! - per app (`app`, `role` labels; the supervisor's snapshot, the same facts as `/pm2/list`):
//!   `machine_app_state`, `machine_app_healthy`, `machine_app_restarts_total`,
//!   `machine_app_uptime_seconds`, and while its process runs `machine_app_cpu_seconds_total` and
//!   `machine_app_resident_memory_bytes`, read from `/proc/<pid>/stat` for the app's own process as
//!   PM2's `monit` does (its children are not added);
//! - per GPU (`gpu` index label; the GPU inventory, read live from NVML by UUID; the fake inventory of
//!   `MACHINE_FAKE_GPUS` gives fixed fake figures): `machine_gpu_info{uuid,name}`,
//!   `machine_gpu_utilization_ratio`, `machine_gpu_memory_used_bytes`, `machine_gpu_memory_total_bytes`,
//!   `machine_gpu_temperature_celsius` (a reading NVML refuses is left out, not reported as 0);
//! - what the caller's [`crate::health::StatusSource::metrics`] adds: per worker and the broker link
//!   ([`write_broker`]).
//!
//! No label holds a secret: app names, roles, worker ids, GPU indices, UUIDs and product names only
//! (the broker's URL is not exposed at all). The route is unauthenticated, like `/health`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

/// The lease facts the broker link gives the metrics (defined with the lease).
pub use crate::broker::lease::LeaseFacts;
use crate::broker::{Broker, JobTally};
use crate::gpu::{Inventory, Source};
use crate::supervisor::{AppState, Snapshot};
use crate::time::now_ms;

/// `Content-Type` of the answer: the text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every state an app can be in, for `machine_app_state`'s one sample per state.
const APP_STATES: [AppState; 8] = [
    AppState::Waiting,
    AppState::Starting,
    AppState::Running,
    AppState::Ready,
    AppState::Stopping,
    AppState::Stopped,
    AppState::Errored,
    AppState::Restarting,
];

/// A metric family's type, as the `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when its process restarts); the name ends in `_total`.
    Counter,
    /// Any value at the scrape.
    Gauge,
}

/// A document in the text format, written family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty document.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts family `name` (a valid metric name; a counter's ends in `_total`) with its `# HELP`
    /// (one line of text; `\` and newlines are escaped) and `# TYPE` lines. Each name once per document.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(is_metric_name(name), "bad metric name {name:?}");
        debug_assert!(kind != Kind::Counter || name.ends_with("_total"), "{name}");
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of family `name` (the one started last): `labels` as `(name, value)`, the values
    /// escaped (`\\`, `\"`, `\n`); `value` written as Go's `strconv` would read it (`NaN`, `+Inf`).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                debug_assert!(is_label_name(label), "bad label name {label:?}");
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                for c in text.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&number(value));
        self.out.push('\n');
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The document.
    pub fn finish(self) -> String {
        self.out
    }
}

/// `value` in the text format: integers without a fraction, `NaN`, `+Inf`, `-Inf`.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, Prometheus' metric name rule.
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}

/// The whole `/metrics` body: the runtime, the apps, the GPUs, then what `extra` adds (the health
/// endpoint passes its source's `metrics`). `uptime_ms` is the supervisor's (milliseconds since the
/// runtime started).
pub fn render(snapshot: &Snapshot, uptime_ms: u64, extra: &dyn Fn(&mut Exposition)) -> String {
    let mut out = Exposition::new();
    out.family(
        "machine_build_info",
        Kind::Gauge,
        "Always 1; the runtime's version in the label.",
    );
    out.sample(
        "machine_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    out.single(
        "machine_uptime_seconds",
        Kind::Gauge,
        "Seconds since the runtime started.",
        uptime_ms as f64 / 1000.0,
    );
    write_apps(&mut out, snapshot, uptime_ms);
    write_gpus(
        &mut out,
        gpu_inventory(),
        &GpuReader::for_source(gpu_inventory().source),
    );
    extra(&mut out);
    out.finish()
}

/// The per-app families, from the supervisor's snapshot and `/proc`.
pub(crate) fn write_apps(out: &mut Exposition, snapshot: &Snapshot, uptime_ms: u64) {
    let role = |a: &crate::supervisor::AppStatus| {
        a.role
            .and_then(|r| serde_json::to_value(r).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let name = "machine_app_state";
    out.family(
        name,
        Kind::Gauge,
        "1 for the state the app is in, 0 for the others (waiting, starting, running, ready, stopping, stopped, errored, restarting).",
    );
    for a in &snapshot.apps {
        let role = role(a);
        for state in APP_STATES {
            out.sample(
                name,
                &[("app", &a.name), ("role", &role), ("state", state.as_str())],
                flag(a.state == state),
            );
        }
    }
    let name = "machine_app_healthy";
    out.family(
        name,
        Kind::Gauge,
        "1 when the app counts as healthy in /health, else 0.",
    );
    for a in &snapshot.apps {
        out.sample(
            name,
            &[("app", &a.name), ("role", &role(a))],
            flag(a.unhealthy_reason().is_none()),
        );
    }
    let name = "machine_app_restarts_total";
    out.family(
        name,
        Kind::Counter,
        "Restarts of the app since the runtime started (PM2's restart_time).",
    );
    for a in &snapshot.apps {
        out.sample(
            name,
            &[("app", &a.name), ("role", &role(a))],
            f64::from(a.restarts),
        );
    }
    let name = "machine_app_uptime_seconds";
    out.family(
        name,
        Kind::Gauge,
        "Seconds the app's current process has run; 0 while it has none.",
    );
    for a in &snapshot.apps {
        let up_ms = match (a.pid, a.started_ms) {
            (Some(_), Some(started)) => uptime_ms.saturating_sub(started),
            _ => 0,
        };
        out.sample(
            name,
            &[("app", &a.name), ("role", &role(a))],
            up_ms as f64 / 1000.0,
        );
    }
    let usage: Vec<(&crate::supervisor::AppStatus, ProcessUsage)> = snapshot
        .apps
        .iter()
        .filter_map(|a| Some((a, ProcessUsage::read(a.pid?)?)))
        .collect();
    let name = "machine_app_cpu_seconds_total";
    out.family(
        name,
        Kind::Counter,
        "User and system CPU seconds of the app's current process (resets when it restarts).",
    );
    for (a, u) in &usage {
        out.sample(name, &[("app", &a.name), ("role", &role(a))], u.cpu_seconds);
    }
    let name = "machine_app_resident_memory_bytes";
    out.family(
        name,
        Kind::Gauge,
        "Resident memory of the app's current process, in bytes.",
    );
    for (a, u) in &usage {
        out.sample(
            name,
            &[("app", &a.name), ("role", &role(a))],
            u.resident_bytes as f64,
        );
    }
}

/// CPU time and resident memory of one process, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessUsage {
    /// `utime + stime`, in seconds.
    pub cpu_seconds: f64,
    /// `rss` pages times the page size.
    pub resident_bytes: u64,
}

impl ProcessUsage {
    /// Reads `/proc/<pid>/stat`; `None` when the process is gone or the file is not as `proc(5)` says.
    pub(crate) fn read(pid: u32) -> Option<ProcessUsage> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        ProcessUsage::parse(&text, ticks, page)
    }

    /// Parses a `stat` line: fields 14 (`utime`) and 15 (`stime`) in clock ticks of `ticks` per
    /// second, field 24 (`rss`) in pages of `page` bytes. The command name (field 2) may hold spaces
    /// and parentheses, so fields are counted from its last `)`.
    pub(crate) fn parse(stat: &str, ticks: i64, page: i64) -> Option<ProcessUsage> {
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state).
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let (utime, stime, rss) = (field(14)?, field(15)?, field(24)?);
        if ticks <= 0 || page <= 0 {
            return None;
        }
        Some(ProcessUsage {
            cpu_seconds: (utime + stime) as f64 / ticks as f64,
            resident_bytes: rss.saturating_mul(page as u64),
        })
    }
}

/// The GPU inventory, detected once (the same detection as `machine-runtime gpus`); empty when
/// `MACHINE_FAKE_GPUS` is invalid (the runtime refuses to start then anyway).
fn gpu_inventory() -> &'static Inventory {
    static INVENTORY: OnceLock<Inventory> = OnceLock::new();
    INVENTORY.get_or_init(|| {
        Inventory::detect().unwrap_or_else(|err| Inventory {
            gpus: Vec::new(),
            source: Source::None,
            reason: Some(err.to_string()),
            notes: Vec::new(),
        })
    })
}

/// One GPU's live figures; `None` where the backend could not read it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct GpuReading {
    /// Share of the last sample period a kernel ran, 0 to 1.
    pub utilization_ratio: Option<f64>,
    /// Memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Core temperature, degrees Celsius.
    pub temperature_celsius: Option<f64>,
}

/// Where live GPU figures come from.
pub(crate) enum GpuReader {
    /// NVML, opened once per process (`None`: it could not be opened).
    Nvml(Option<&'static nvml_wrapper::Nvml>),
    /// The fake inventory: utilisation 0, 1 GiB used per GPU index + 1, 40 °C + the index.
    Fake,
    /// No backend: no readings.
    Nothing,
}

impl GpuReader {
    fn for_source(source: Source) -> GpuReader {
        match source {
            Source::Fake => GpuReader::Fake,
            Source::None => GpuReader::Nothing,
            Source::Nvml => {
                static NVML: OnceLock<Option<nvml_wrapper::Nvml>> = OnceLock::new();
                GpuReader::Nvml(
                    NVML.get_or_init(|| {
                        let library = std::env::var_os(crate::gpu::NVML_LIBRARY_VAR)
                            .filter(|v| !v.is_empty());
                        match library {
                            Some(path) => nvml_wrapper::Nvml::builder().lib_path(&path).init(),
                            None => nvml_wrapper::Nvml::init(),
                        }
                        .ok()
                    })
                    .as_ref(),
                )
            }
        }
    }

    /// The live figures of GPU `gpu`.
    pub(crate) fn read(&self, gpu: &crate::gpu::Gpu) -> GpuReading {
        match self {
            GpuReader::Nothing | GpuReader::Nvml(None) => GpuReading::default(),
            GpuReader::Fake => GpuReading {
                utilization_ratio: Some(0.0),
                memory_used_bytes: Some((u64::from(gpu.index) + 1) << 30),
                temperature_celsius: Some(40.0 + f64::from(gpu.index)),
            },
            GpuReader::Nvml(Some(nvml)) => {
                let Ok(device) = nvml.device_by_uuid(gpu.uuid.as_str()) else {
                    return GpuReading::default();
                };
                GpuReading {
                    utilization_ratio: device
                        .utilization_rates()
                        .ok()
                        .map(|u| f64::from(u.gpu) / 100.0),
                    memory_used_bytes: device.memory_info().ok().map(|m| m.used),
                    temperature_celsius: device
                        .temperature(nvml_wrapper::enum_wrappers::device::TemperatureSensor::Gpu)
                        .ok()
                        .map(f64::from),
                }
            }
        }
    }
}

/// The per-GPU families: the inventory's facts and `reader`'s live figures.
pub(crate) fn write_gpus(out: &mut Exposition, inventory: &Inventory, reader: &GpuReader) {
    let readings: Vec<(String, &crate::gpu::Gpu, GpuReading)> = inventory
        .gpus
        .iter()
        .map(|g| (g.index.to_string(), g, reader.read(g)))
        .collect();
    let name = "machine_gpu_info";
    out.family(
        name,
        Kind::Gauge,
        "Always 1 per visible GPU; its UUID and product name in the labels.",
    );
    for (index, g, _) in &readings {
        out.sample(
            name,
            &[("gpu", index), ("uuid", &g.uuid), ("name", &g.name)],
            1.0,
        );
    }
    let name = "machine_gpu_memory_total_bytes";
    out.family(name, Kind::Gauge, "Total memory of the GPU, in bytes.");
    for (index, g, _) in &readings {
        out.sample(name, &[("gpu", index)], g.memory_total_bytes as f64);
    }
    type Pick = fn(&GpuReading) -> Option<f64>;
    let live: [(&str, &str, Pick); 3] = [
        (
            "machine_gpu_memory_used_bytes",
            "Memory in use on the GPU, in bytes (NVML).",
            |r| r.memory_used_bytes.map(|b| b as f64),
        ),
        (
            "machine_gpu_utilization_ratio",
            "Share of the last sample period a kernel ran on the GPU, 0 to 1 (NVML).",
            |r| r.utilization_ratio,
        ),
        (
            "machine_gpu_temperature_celsius",
            "GPU core temperature in degrees Celsius (NVML).",
            |r| r.temperature_celsius,
        ),
    ];
    for (name, help, pick) in live {
        out.family(name, Kind::Gauge, help);
        for (index, _, reading) in &readings {
            if let Some(value) = pick(reading) {
                out.sample(name, &[("gpu", index)], value);
            }
        }
    }
}

/// The per-worker and broker families: `broker` is `None` when the link is off or not started yet
/// (`enabled` says which); `lease` when the link has one.
pub fn write_broker(
    out: &mut Exposition,
    enabled: bool,
    broker: Option<&Broker>,
    lease: Option<LeaseFacts>,
) {
    let now = now_ms();
    let tallies: BTreeMap<String, JobTally> = broker.map(Broker::job_tallies).unwrap_or_default();
    let workers = broker.map(Broker::workers).unwrap_or_default();
    let mut ids: Vec<&String> = workers.keys().chain(tallies.keys()).collect();
    ids.sort();
    ids.dedup();
    let name = "machine_worker_connected";
    out.family(
        name,
        Kind::Gauge,
        "1 while the worker's process runs and its heartbeat key exists, else 0.",
    );
    for id in &ids {
        let connected = workers.get(*id).is_some_and(|w| w.is_connected);
        out.sample(name, &[("worker", id)], flag(connected));
    }
    type Count = fn(&JobTally, u64) -> f64;
    let counters: [(&str, &str, Count); 3] = [
        (
            "machine_worker_jobs_completed_total",
            "Jobs the worker reported completed (its job_completed events) since the runtime started.",
            |t, _| t.completed as f64,
        ),
        (
            "machine_worker_jobs_failed_total",
            "Jobs the worker reported failed (its job_failed events) since the runtime started.",
            |t, _| t.failed as f64,
        ),
        (
            "machine_worker_busy_seconds_total",
            "Seconds the worker spent on jobs (job_started to its end) since the runtime started.",
            |t, now| t.busy_ms(now) as f64 / 1000.0,
        ),
    ];
    for (name, help, count) in counters {
        out.family(name, Kind::Counter, help);
        for id in &ids {
            let tally = tallies.get(*id).copied().unwrap_or_default();
            out.sample(name, &[("worker", id)], count(&tally, now));
        }
    }
    out.single(
        "machine_broker_enabled",
        Kind::Gauge,
        "1 when the machine reports to a job broker (HUB_REDIS_URL is set), else 0.",
        flag(enabled),
    );
    let status = broker.map(Broker::status);
    out.single(
        "machine_broker_connected",
        Kind::Gauge,
        "1 while the job broker's Redis is reachable, else 0.",
        flag(status.as_ref().is_some_and(|s| s.is_connected())),
    );
    out.single(
        "machine_broker_status_messages_published_total",
        Kind::Counter,
        "Status messages published on machine:status:<MACHINE_ID> since the runtime started.",
        status.as_ref().map_or(0.0, |s| s.published as f64),
    );
    let name = "machine_broker_last_publish_timestamp_seconds";
    out.family(
        name,
        Kind::Gauge,
        "Unix time of the last status message published; absent before the first.",
    );
    if let Some(at) = status.as_ref().and_then(|s| s.last_published_ms) {
        out.sample(name, &[], at as f64 / 1000.0);
    }
    let lease = lease.unwrap_or_default();
    out.single(
        "machine_broker_lease_held",
        Kind::Gauge,
        "1 while this machine holds the lease on its MACHINE_ID (machine:lease:<id>), else 0.",
        flag(lease.held),
    );
    let name = "machine_broker_lease_renewed_timestamp_seconds";
    out.family(
        name,
        Kind::Gauge,
        "Unix time the lease was last taken or renewed; absent before that.",
    );
    if let Some(at) = lease.renewed_ms {
        out.sample(name, &[], at as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped_and_numbers_written_as_prometheus_reads_them() {
        let mut out = Exposition::new();
        out.family("machine_x_total", Kind::Counter, "a \\ b\nc");
        out.sample(
            "machine_x_total",
            &[("app", "a\"b\\c\nd"), ("role", "")],
            3.0,
        );
        out.sample("machine_x_total", &[], 0.25);
        out.sample("machine_x_total", &[], f64::NAN);
        out.sample("machine_x_total", &[], f64::INFINITY);
        assert_eq!(
            out.finish(),
            "# HELP machine_x_total a \\\\ b\\nc\n# TYPE machine_x_total counter\n\
             machine_x_total{app=\"a\\\"b\\\\c\\nd\",role=\"\"} 3\n\
             machine_x_total 0.25\nmachine_x_total NaN\nmachine_x_total +Inf\n"
        );
        assert!(is_metric_name("machine_a:b_1") && !is_metric_name("1x") && !is_metric_name("a-b"));
        assert!(is_label_name("gpu") && !is_label_name("__name") && !is_label_name("a.b"));
    }

    #[test]
    fn proc_stat_is_read_after_the_command_name_whatever_it_holds() {
        let line = "42 (we ird) (x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 1000 300 18446744073709551615";
        let usage = ProcessUsage::parse(line, 100, 4096).unwrap();
        assert_eq!(usage.cpu_seconds, 3.0);
        assert_eq!(usage.resident_bytes, 300 * 4096);
        assert_eq!(ProcessUsage::parse("42 (x) S 1", 100, 4096), None);
        // This very process: some CPU time and some memory.
        let me = ProcessUsage::read(std::process::id()).unwrap();
        assert!(me.resident_bytes > 0 && me.cpu_seconds >= 0.0, "{me:?}");
    }

    #[test]
    fn fake_gpus_give_every_family_a_sample_per_gpu() {
        let inventory = Inventory::detect_with(&crate::gpu::FakeBackend::new(2), None);
        let mut out = Exposition::new();
        write_gpus(&mut out, &inventory, &GpuReader::Fake);
        let text = out.finish();
        for line in [
            "machine_gpu_memory_total_bytes{gpu=\"1\"} 25769803776",
            "machine_gpu_memory_used_bytes{gpu=\"1\"} 2147483648",
            "machine_gpu_utilization_ratio{gpu=\"0\"} 0",
            "machine_gpu_temperature_celsius{gpu=\"1\"} 41",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        let mut none = Exposition::new();
        write_gpus(&mut none, &inventory, &GpuReader::Nothing);
        assert!(!none.finish().contains("machine_gpu_temperature_celsius{"));
    }
}
