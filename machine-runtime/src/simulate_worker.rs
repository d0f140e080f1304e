//! `machine-runtime simulate-worker`: a job-worker stand-in that stays up while its service answers and,
//! given Redis, registers and heartbeats exactly like a real worker, so a simulation machine looks alive.
//!
//! Environment:
//! - `WORKER_ID` (required), `MACHINE_ID` (required with Redis);
//! - `SIMULATION_BASE_URL`, else `COMFYUI_BASE_URL` (required): an `http://` URL polled with `GET`
//!   every second; any HTTP answer below 500 counts as up, 5 failures in a row end the process
//!   with a non-zero status;
//! - `HUB_REDIS_URL` (optional): without it there is no Redis at all, only the service check;
//! - `WORKER_CONNECTORS` or `CONNECTORS` (default: the connector in `WORKER_ID`), `WORKER_GPU_ID`;
//! - `WORKER_HEARTBEAT_INTERVAL_MS` (default and maximum 30000, as the heartbeat key lives 60 s).
//!
//! With Redis it writes `worker:<id>` (`worker_id`, `machine_id`, `status`=`idle`, `capabilities`
//! JSON, `connectors`, `version`, `last_heartbeat`, `current_job_id`=""), sets
//! `worker:<id>:heartbeat` with a 60 s TTL at once and every interval, and publishes
//! `worker_status_changed` on `machine:<MACHINE_ID>:worker:<WORKER_ID>` whenever it (re)registers.
//! On SIGTERM or SIGINT it deletes both keys, publishes `offline` and exits 0.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, Link, LinkError, LinkSettings, RedisUrl};

/// TTL of `worker:<id>:heartbeat`, as real workers set it.
pub const HEARTBEAT_TTL_SECONDS: u64 = 60;
/// Longest heartbeat interval: half the TTL, so one late beat never expires the key.
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

/// Everything the stand-in needs.
#[derive(Debug, Clone)]
pub struct SimulateWorkerConfig {
    /// `WORKER_ID`.
    pub worker_id: String,
    /// `MACHINE_ID` (present whenever `redis` is).
    pub machine_id: Option<String>,
    /// `HUB_REDIS_URL`, if set.
    pub redis: Option<RedisUrl>,
    /// The service to watch.
    pub service_url: String,
    /// Connector names written to `connectors` and `capabilities`.
    pub connectors: Vec<String>,
    /// `WORKER_GPU_ID`.
    pub gpu: Option<u32>,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Time between service checks.
    pub check_interval: Duration,
    /// Consecutive failed checks before giving up.
    pub max_failures: u32,
}

/// Why the stand-in stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SimulateWorkerError {
    /// The environment is incomplete or wrong (every problem, one per line).
    #[error("{}", .0.join("\n"))]
    Config(Vec<String>),
    /// Redis refused the credentials.
    #[error(transparent)]
    Redis(#[from] LinkError),
    /// The watched service stopped answering.
    #[error(
        "the service at {url} did not answer {failures} checks in a row (last: {last_error}); stopping so the supervisor restarts this worker"
    )]
    ServiceDown {
        /// The URL polled.
        url: String,
        /// Failures in a row.
        failures: u32,
        /// The last failure.
        last_error: String,
    },
}

impl SimulateWorkerConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<(Self, Vec<String>), SimulateWorkerError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads any variable source; returns warnings to log, or every problem at once.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<String>), SimulateWorkerError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let worker_id = get("WORKER_ID").unwrap_or_else(|| {
            problems.push("WORKER_ID is not set; the supervisor sets it for every worker (<MACHINE_ID>-worker-<connector>-<index>)".to_owned());
            String::new()
        });
        let machine_id = get("MACHINE_ID");
        let redis = match get("HUB_REDIS_URL") {
            None => None,
            Some(raw) => match RedisUrl::parse("HUB_REDIS_URL", &raw) {
                Ok(url) => Some(url),
                Err(err) => {
                    problems.push(err.to_string());
                    None
                }
            },
        };
        if redis.is_some() && machine_id.is_none() {
            problems.push("MACHINE_ID is not set; it is needed with HUB_REDIS_URL to name the worker event channel".to_owned());
        }
        let service_url = match get("SIMULATION_BASE_URL").or_else(|| get("COMFYUI_BASE_URL")) {
            Some(url) => {
                if let Err(err) = HttpTarget::parse(&url) {
                    problems.push(format!("SIMULATION_BASE_URL/COMFYUI_BASE_URL {err}"));
                }
                url
            }
            None => {
                problems.push("neither SIMULATION_BASE_URL nor COMFYUI_BASE_URL is set; set one to the service this worker uses, e.g. http://127.0.0.1:8299".to_owned());
                String::new()
            }
        };
        let connectors: Vec<String> = get("WORKER_CONNECTORS")
            .or_else(|| get("CONNECTORS"))
            .map(|list| {
                list.split(',')
                    .map(|c| c.trim().to_owned())
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .filter(|list: &Vec<String>| !list.is_empty())
            .or_else(|| connector_from_worker_id(&worker_id).map(|c| vec![c]))
            .unwrap_or_else(|| vec!["simulation".to_owned()]);
        let gpu = match get("WORKER_GPU_ID") {
            None => None,
            Some(text) => match text.parse::<u32>() {
                Ok(gpu) => Some(gpu),
                Err(_) => {
                    problems.push(format!("WORKER_GPU_ID=\"{text}\" is not a GPU index; use a whole number like 0, or leave it empty"));
                    None
                }
            },
        };
        let mut heartbeat_interval = MAX_HEARTBEAT_INTERVAL;
        if let Some(text) = get("WORKER_HEARTBEAT_INTERVAL_MS") {
            match text.parse::<u64>() {
                Ok(ms) if ms > 0 => {
                    heartbeat_interval = Duration::from_millis(ms);
                    if heartbeat_interval > MAX_HEARTBEAT_INTERVAL {
                        warnings.push(format!("WORKER_HEARTBEAT_INTERVAL_MS={ms} is above 30000; using 30000 so the 60 s heartbeat key never expires between beats"));
                        heartbeat_interval = MAX_HEARTBEAT_INTERVAL;
                    }
                }
                _ => problems.push(format!("WORKER_HEARTBEAT_INTERVAL_MS=\"{text}\" is not a positive whole number of milliseconds (default 30000)")),
            }
        }
        if !problems.is_empty() {
            return Err(SimulateWorkerError::Config(problems));
        }
        Ok((
            Self {
                worker_id,
                machine_id,
                redis,
                service_url,
                connectors,
                gpu,
                heartbeat_interval,
                check_interval: Duration::from_secs(1),
                max_failures: 5,
            },
            warnings,
        ))
    }
}

/// `m1-worker-comfyui-0` → `comfyui` (connector names may contain `-`).
fn connector_from_worker_id(worker_id: &str) -> Option<String> {
    let (_, rest) = worker_id.rsplit_once("-worker-")?;
    let (connector, index) = rest.rsplit_once('-')?;
    (index.parse::<u32>().is_ok() && !connector.is_empty()).then(|| connector.to_owned())
}

macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("machine-runtime simulate-worker: {}", format_args!($($arg)*))
    };
}

/// The subcommand's entry point: reads the environment, runs until a signal or a dead service.
pub fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            say!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Handlers first: a SIGTERM that arrives while Redis is slow must still mean a clean exit.
        let shutdown = match stop_signal() {
            Ok(signal) => signal,
            Err(err) => {
                say!("error: cannot install signal handlers: {err}");
                return ExitCode::FAILURE;
            }
        };
        let config = match SimulateWorkerConfig::from_env() {
            Ok((config, warnings)) => {
                for warning in warnings {
                    say!("warning: {warning}");
                }
                config
            }
            Err(err) => {
                say!("error: {err}");
                return ExitCode::from(2);
            }
        };
        match run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                say!("error: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => say!("SIGTERM received; unregistering"),
            _ = int.recv() => say!("SIGINT received; unregistering"),
        }
    })
}

/// Runs the stand-in until `shutdown` completes (then unregisters and returns `Ok`) or the service
/// stops answering.
pub async fn run(
    config: SimulateWorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SimulateWorkerError> {
    let target = HttpTarget::parse(&config.service_url)
        .map_err(|err| SimulateWorkerError::Config(vec![format!("service url {err}")]))?;
    let cancel = CancellationToken::new();
    let _stop_tasks = cancel.clone().drop_guard();
    let mut registry = match (&config.redis, &config.machine_id) {
        (Some(url), Some(machine_id)) => {
            Some(Registry::connect(url.clone(), machine_id.clone(), &config, &cancel).await?)
        }
        _ => {
            say!("HUB_REDIS_URL is not set: checking the service only, nothing is registered");
            None
        }
    };
    let mut connections = registry.as_ref().map(|r| r.link.watch_current());
    if let Some(registry) = &mut registry {
        registry.heartbeat().await;
    }
    let mut heartbeats = tokio::time::interval(config.heartbeat_interval);
    heartbeats.reset();
    let mut checks = tokio::time::interval(config.check_interval);
    let mut failures = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                if let Some(registry) = &registry {
                    registry.unregister().await;
                }
                return Ok(());
            }
            _ = checks.tick() => {
                match http_status(&target, Duration::from_secs(2)).await {
                    Ok(_) => {
                        if failures > 0 {
                            say!("the service at {} answers again", config.service_url);
                        }
                        failures = 0;
                    }
                    Err(err) => {
                        failures += 1;
                        say!("the service at {} did not answer ({failures}/{}): {err}", config.service_url, config.max_failures);
                        if failures >= config.max_failures {
                            if let Some(registry) = &registry {
                                registry.unregister().await;
                            }
                            return Err(SimulateWorkerError::ServiceDown {
                                url: config.service_url.clone(),
                                failures,
                                last_error: err,
                            });
                        }
                    }
                }
            }
            _ = heartbeats.tick(), if registry.is_some() => {
                if let Some(registry) = &mut registry {
                    registry.heartbeat().await;
                }
            }
            changed = async { connections.as_mut()?.changed().await.ok() }, if connections.is_some() => {
                let reconnected = changed.is_some()
                    && connections.as_mut().is_some_and(|c| c.borrow_and_update().is_some());
                if changed.is_none() {
                    connections = None;
                }
                if reconnected && let Some(registry) = &mut registry {
                    // Redis may have lost everything: register again now, not at the next beat.
                    registry.heartbeat().await;
                }
            }
        }
    }
}

/// The Redis side of the stand-in.
struct Registry {
    link: Arc<Link>,
    worker_id: String,
    machine_id: String,
    channel: String,
    capabilities: String,
    connectors: String,
    registered_on: Option<u64>,
}

const VERSION: &str = concat!(
    "machine-runtime-simulate-worker/",
    env!("CARGO_PKG_VERSION")
);

impl Registry {
    async fn connect(
        url: RedisUrl,
        machine_id: String,
        config: &SimulateWorkerConfig,
        cancel: &CancellationToken,
    ) -> Result<Self, SimulateWorkerError> {
        let link = Link::new(
            url,
            LinkSettings {
                connect_timeout: Duration::from_secs(5),
                response_timeout: Duration::from_secs(5),
                backoff_min: Duration::from_millis(250),
                backoff_max: Duration::from_secs(10),
            },
        )?;
        match link.connect_now().await {
            Ok(_) => {}
            Err(err @ LinkError::AuthRefused { .. }) => return Err(err.into()),
            Err(err) => {
                say!("{err}; checking the service meanwhile and registering once redis answers")
            }
        }
        tokio::spawn(link.clone().run(cancel.child_token()));
        let capabilities = json!({
            "worker_id": config.worker_id,
            "machine_id": machine_id,
            "services": config.connectors,
            "connectors": config.connectors,
            "gpu_id": config.gpu,
            "simulated": true,
        });
        Ok(Self {
            link,
            channel: broker::worker_channel(&machine_id, &config.worker_id),
            worker_id: config.worker_id.clone(),
            machine_id,
            capabilities: capabilities.to_string(),
            connectors: config.connectors.join(","),
            registered_on: None,
        })
    }

    fn hash_key(&self) -> String {
        format!("worker:{}", self.worker_id)
    }

    fn heartbeat_key(&self) -> String {
        format!("worker:{}:heartbeat", self.worker_id)
    }

    fn status_event(&self, status: &str, connected: bool, now: &str) -> String {
        json!({
            "worker_id": self.worker_id,
            "event_type": "worker_status_changed",
            "data": {
                "status": status,
                "is_connected": connected,
                "current_job_id": null,
                "last_activity": now,
                "version": VERSION,
                "capabilities": serde_json::from_str::<serde_json::Value>(&self.capabilities).unwrap_or_default(),
            },
            "timestamp": broker::now_ms(),
        })
        .to_string()
    }

    /// Writes the whole registration with every beat: the hash may have expired or Redis restarted.
    async fn heartbeat(&mut self) {
        let Some(mut conn) = self.link.current() else {
            return;
        };
        let now = broker::now_iso8601();
        let first = self.registered_on != Some(conn.generation);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(self.hash_key())
            .arg(&[
                ("worker_id", self.worker_id.as_str()),
                ("status", "idle"),
                ("capabilities", self.capabilities.as_str()),
                ("connectors", self.connectors.as_str()),
                ("version", VERSION),
                ("last_heartbeat", now.as_str()),
                ("current_job_id", ""),
            ])
            .arg("machine_id")
            .arg(&self.machine_id)
            .ignore();
        if first {
            pipe.cmd("HSET")
                .arg(self.hash_key())
                .arg("last_status_change")
                .arg(&now)
                .ignore();
        }
        pipe.cmd("SETEX")
            .arg(self.heartbeat_key())
            .arg(HEARTBEAT_TTL_SECONDS)
            .arg(&now)
            .ignore();
        if first {
            pipe.cmd("PUBLISH")
                .arg(&self.channel)
                .arg(self.status_event("idle", true, &now))
                .ignore();
        }
        match pipe.query_async::<()>(&mut conn.conn).await {
            Ok(()) => {
                if first {
                    say!(
                        "registered {} in redis at {}",
                        self.worker_id,
                        self.link.url()
                    );
                    self.registered_on = Some(conn.generation);
                }
            }
            Err(err) => {
                self.link.report(conn.generation, &err);
                say!(
                    "heartbeat failed: {}",
                    self.link.url().redact(&err.to_string())
                );
            }
        }
    }

    /// Deletes both keys and says `offline`, within 2 s so a dead Redis cannot delay the exit.
    async fn unregister(&self) {
        let Some(mut conn) = self.link.current() else {
            say!(
                "redis unreachable; the heartbeat key expires by itself within {HEARTBEAT_TTL_SECONDS} s"
            );
            return;
        };
        let now = broker::now_iso8601();
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.hash_key())
            .arg(self.heartbeat_key())
            .ignore()
            .cmd("PUBLISH")
            .arg(&self.channel)
            .arg(self.status_event("offline", false, &now))
            .ignore();
        match tokio::time::timeout(
            Duration::from_secs(2),
            pipe.query_async::<()>(&mut conn.conn),
        )
        .await
        {
            Ok(Ok(())) => say!("unregistered {}", self.worker_id),
            Ok(Err(err)) => say!(
                "unregistering failed: {}",
                self.link.url().redact(&err.to_string())
            ),
            Err(_) => say!("unregistering timed out; the heartbeat key expires by itself"),
        }
    }
}

/// An `http://host:port/path` to poll.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HttpTarget {
    host: String,
    port: u16,
    host_header: String,
    path: String,
}

impl HttpTarget {
    fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("\"{url}\" is not an http:// url (e.g. http://127.0.0.1:8299)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("\"{url}\" has an unclosed [ in its host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("\"{url}\" has no host"));
        }
        let port = match port {
            None => 80,
            Some(port) => port
                .parse()
                .map_err(|_| format!("\"{url}\" has an invalid port \"{port}\""))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            host_header: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// One `GET`; `Ok(status)` for any HTTP answer below 500, `Err(reason)` otherwise.
async fn http_status(target: &HttpTarget, limit: Duration) -> Result<u16, String> {
    let attempt = async {
        let mut stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|err| format!("cannot connect: {err}"))?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: machine-runtime-simulate-worker\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            target.path, target.host_header
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|err| format!("cannot send the request: {err}"))?;
        let mut head = Vec::with_capacity(128);
        let mut chunk = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
            let read = stream
                .read(&mut chunk)
                .await
                .map_err(|err| format!("cannot read the answer: {err}"))?;
            if read == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..read]);
        }
        let line = String::from_utf8_lossy(&head);
        let status = line
            .lines()
            .next()
            .filter(|l| l.starts_with("HTTP/"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| "the answer is not HTTP".to_owned())?;
        if status >= 500 {
            return Err(format!("HTTP {status}"));
        }
        Ok(status)
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", limit.as_millis())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn parses_http_targets() {
        let t = HttpTarget::parse("http://127.0.0.1:8299").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8299, "/")
        );
        let t = HttpTarget::parse("http://[::1]:81/x").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 81, "/x")
        );
        assert_eq!(HttpTarget::parse("http://h").unwrap().port, 80);
        assert!(HttpTarget::parse("https://h").is_err());
        assert!(HttpTarget::parse("http://h:x").is_err());
    }

    #[test]
    fn connector_comes_from_the_worker_id() {
        assert_eq!(
            connector_from_worker_id("m1-worker-simulation-0").as_deref(),
            Some("simulation")
        );
        assert_eq!(
            connector_from_worker_id("m-1-worker-a1111-sd-12").as_deref(),
            Some("a1111-sd")
        );
        assert_eq!(connector_from_worker_id("nothing"), None);
    }

    #[test]
    fn config_reports_every_problem() {
        let err = SimulateWorkerConfig::from_lookup(lookup(&[
            ("HUB_REDIS_URL", "redis://:pw1234@h"),
            ("WORKER_GPU_ID", "x"),
            ("WORKER_HEARTBEAT_INTERVAL_MS", "0"),
        ]))
        .unwrap_err()
        .to_string();
        for needle in [
            "WORKER_ID",
            "MACHINE_ID",
            "SIMULATION_BASE_URL",
            "WORKER_GPU_ID",
            "WORKER_HEARTBEAT_INTERVAL_MS",
        ] {
            assert!(err.contains(needle), "{needle} missing in {err}");
        }
        assert!(!err.contains("pw1234"));
        let (config, warnings) = SimulateWorkerConfig::from_lookup(lookup(&[
            ("WORKER_ID", "m1-worker-simulation-1"),
            ("COMFYUI_BASE_URL", "http://127.0.0.1:8189"),
            ("WORKER_GPU_ID", "1"),
            ("WORKER_HEARTBEAT_INTERVAL_MS", "45000"),
        ]))
        .unwrap();
        assert!(config.redis.is_none());
        assert_eq!(config.connectors, ["simulation"]);
        assert_eq!(config.gpu, Some(1));
        assert_eq!(config.heartbeat_interval, MAX_HEARTBEAT_INTERVAL);
        assert_eq!(warnings.len(), 1);
    }
}
