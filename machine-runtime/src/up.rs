//! `machine-runtime up`: the supervisor, the health endpoint and the job broker link, wired together.
//!
//! Order: every start-up problem (apps, secrets, GPUs, broker settings, worker identities) is
//! collected and reported at once; then the health endpoint binds, the broker starts connecting in
//! the background and the apps start: at once, or after at most [`BROKER_HEAD_START`] when Redis
//! answers that fast (so `initial` goes out first). Only `BROKER_PREFLIGHT=require` makes them wait
//! for Redis. On stop, the broker's final `shutdown` message goes out before any app is signalled.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::broker::bridge::{Identity, ViewTemplate};
use crate::broker::{self, Broker, BrokerConfig, BrokerError};
use crate::ecosystem::AppSpec;
use crate::health::{Control, HealthError, StatusSource};
use crate::log::runtime as log;
use crate::supervisor::{BusyProbe, PreflightError, RunError, Supervisor, SupervisorOptions};

pub(crate) use crate::env::REQUIRES_BROKER_VAR;

/// The refusal of a `HUB_REDIS_URL` that is set but empty: what an unfilled `.env.secrets` (a copy of
/// `.env.secrets.example`) passes through Compose. The bundle's workers read the same variable (contract §3)
/// and exit at once without it, so starting would only crash-loop them (issue 21, api-only).
pub(crate) const EMPTY_URL: &str = "HUB_REDIS_URL is set but empty; the workers reach the job broker through it and would exit at once and restart forever. Set it to the broker's redis://[user][:password]@host[:port][/db] (e.g. in generated/<profile>/.env.secrets, which docker-compose --env-file reads), or unset it to run without a broker";

/// Whether and how the machine reports to the job broker.
#[derive(Debug, Clone)]
pub enum BrokerSetting {
    /// Not reporting, and why (shown in `/health` and `/status`).
    Off {
        /// For example "HUB_REDIS_URL is not set".
        reason: String,
    },
    /// Reporting with these settings.
    On {
        /// Connection, interval, preflight.
        config: Box<BrokerConfig>,
        /// Whether an unreachable broker makes the machine unhealthy.
        required_for_health: bool,
    },
}

impl BrokerSetting {
    /// Reads `HUB_REDIS_URL` (unset: off; set but empty: refused, see [`EMPTY_URL`]),
    /// `MACHINE_STATUS_UPDATE_INTERVAL_SECONDS`,
    /// `BROKER_PREFLIGHT` and `MACHINE_HEALTH_REQUIRES_BROKER`. Warnings come back for the caller to
    /// log; every problem is returned, one line each.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(BrokerSetting, Vec<String>), Vec<String>> {
        let mut problems = Vec::new();
        let required_for_health =
            match lookup(REQUIRES_BROKER_VAR).map(|v| crate::env::parse_bool(&v)) {
                None | Some(Ok(None | Some(false))) => false,
                Some(Ok(Some(true))) => true,
                Some(Err(())) => {
                    problems.push(format!(
                        "{REQUIRES_BROKER_VAR}=\"{}\" is not a boolean; expected true or false",
                        lookup(REQUIRES_BROKER_VAR).unwrap_or_default()
                    ));
                    false
                }
            };
        if lookup("HUB_REDIS_URL").is_some_and(|v| v.trim().is_empty()) {
            problems.push(EMPTY_URL.to_owned());
            return Err(problems);
        }
        if lookup("HUB_REDIS_URL").is_none() {
            if !problems.is_empty() {
                return Err(problems);
            }
            let reason =
                "HUB_REDIS_URL is not set, so this machine does not report to the job broker"
                    .to_owned();
            return Ok((
                BrokerSetting::Off {
                    reason: reason.clone(),
                },
                vec![reason],
            ));
        }
        match BrokerConfig::from_lookup(lookup) {
            Ok((config, warnings)) if problems.is_empty() => Ok((
                BrokerSetting::On {
                    config: Box::new(config),
                    required_for_health,
                },
                warnings,
            )),
            Ok(_) => Err(problems),
            Err(errors) => {
                problems.extend(errors.0.iter().map(ToString::to_string));
                Err(problems)
            }
        }
    }

    /// Like [`BrokerSetting::from_lookup`] on the process environment.
    pub fn from_env() -> Result<(BrokerSetting, Vec<String>), Vec<String>> {
        Self::from_lookup(crate::env::lookup)
    }
}

pub(crate) use crate::env::HEALTH_URL_VAR;

/// The advertised health URL from `MACHINE_HEALTH_URL` (unset or empty: `None`, and status messages say
/// `http://localhost:<port>/health`). An `http://` or `https://` URL; anything else is the one problem
/// returned.
pub(crate) fn health_url_from_lookup(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    match lookup(HEALTH_URL_VAR).map(|v| v.trim().to_owned()) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v)
            if (v.starts_with("http://") || v.starts_with("https://"))
                && !v.contains(char::is_whitespace) =>
        {
            Ok(Some(v))
        }
        Some(v) => Err(format!(
            "{HEALTH_URL_VAR}=\"{v}\" is not an http(s) URL; expected e.g. http://10.0.0.5:9090/health (the address other hosts reach this machine's health port on), or leave it unset"
        )),
    }
}

/// Everything [`run`] needs besides the apps.
pub struct UpOptions {
    /// Child commands and signal handling.
    pub supervisor: SupervisorOptions,
    /// Port of the health endpoint (0 picks a free one and logs it).
    pub health_port: u16,
    /// `MACHINE_ID` from the plan or the environment; `None` takes the workers' own.
    pub machine_id: Option<String>,
    /// GPUs the machine serves, as reported to the broker.
    pub gpu_count: u32,
    /// The broker setting read from the environment, or its problems.
    pub broker: Result<(BrokerSetting, Vec<String>), Vec<String>>,
    /// The control routes' token (`MACHINE_CONTROL_TOKEN`).
    pub control: Control,
    /// What the caller already checked (the plan's installs), reported with everything else.
    pub preflight: crate::preflight::Findings,
    /// The command that installs what is missing, for the pre-start checks' messages.
    pub install_hint: String,
}

/// Why `up` failed.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Lease(#[from] broker::lease::LeaseError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Follows the output of each worker (`app name → WORKER_ID`) for what the worker says only there,
/// whether its connectors loaded ([`broker::ConnectorLoadScan`]), and tells `broker` each verdict;
/// the output already kept is read first. Ends with the supervisor.
fn follow_worker_logs(
    handle: &crate::supervisor::SupervisorHandle,
    worker_apps: std::collections::HashMap<String, String>,
    broker: &Broker,
) {
    use tokio::sync::broadcast::error::RecvError;
    for (app, worker_id) in worker_apps {
        let Some(log) = handle.logs().get(&app).cloned() else {
            continue;
        };
        let broker = broker.clone();
        let cancel = handle.shutdown_token();
        handle.tracker().spawn(async move {
            let (kept, mut lines) =
                log.tail_and_follow(crate::supervisor::logs::MAX_LINES, |_| true);
            let mut scan = broker::ConnectorLoadScan::default();
            for line in kept {
                if let Some(verdict) = scan.line(&line.text) {
                    broker.worker_log_said(&worker_id, verdict);
                }
            }
            loop {
                let line = tokio::select! {
                    () = cancel.cancelled() => return,
                    line = lines.recv() => line,
                };
                match line {
                    Ok(line) => {
                        if let Some(verdict) = scan.line(&line.text) {
                            broker.worker_log_said(&worker_id, verdict);
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }
}

/// The broker's part of `/health` and `/status`.
struct MachineStatus {
    broker: OnceLock<Broker>,
    /// The lease on the machine id, once taken (`/metrics`).
    lease: OnceLock<Arc<broker::lease::LeaseState>>,
    off: Option<String>,
    required_for_health: bool,
    /// `status.services` keys and their apps (empty without a broker: no message names them).
    service_apps: Vec<(String, String)>,
}

impl MachineStatus {
    /// `None` while reachable (or still connecting for the first time); else why not.
    fn broker_problem(&self) -> Option<String> {
        unreachable(&self.broker.get()?.status())
    }
}

/// The status's one-line summary while Redis is unreachable.
fn unreachable(status: &broker::BrokerStatus) -> Option<String> {
    match status.connection {
        broker::ConnectionState::Unreachable { .. } => Some(status.summary()),
        _ => None,
    }
}

impl StatusSource for MachineStatus {
    fn status_fields(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("broker".into(), self.broker_field());
        if let Some(broker) = self.broker.get() {
            fields.insert("workers".into(), json!(broker.workers()));
        }
        fields
    }

    fn health_reasons(&self) -> Vec<String> {
        let mut reasons = match self.broker_problem() {
            Some(problem) if self.required_for_health => vec![problem],
            _ => Vec::new(),
        };
        // Only what lasts: a connector reported failed after one bad job is for /ready, not for a
        // liveness probe that would restart the machine.
        if let Some(broker) = self.broker.get() {
            reasons.extend(broker.worker_load_problems());
        }
        reasons
    }

    /// Workers unhealthy by their own word (a failed connector).
    fn ready_reasons(&self) -> Vec<String> {
        self.broker
            .get()
            .map(Broker::worker_problems)
            .unwrap_or_default()
    }

    fn health_warnings(&self) -> Vec<String> {
        let mut warnings = match (&self.off, self.broker_problem()) {
            (Some(reason), _) => vec![reason.clone()],
            (None, Some(problem)) if !self.required_for_health => vec![problem],
            _ => Vec::new(),
        };
        // What the log's preflight warning says, for as long as it holds (re-checked every status
        // interval): the workers run but no job reaches them.
        if let Some(broker) = self.broker.get()
            && let broker::PreflightState::Problems { problems, .. } = broker.status().preflight
        {
            warnings.extend(problems.into_iter().map(|p| {
                format!("job broker: {p}; the workers would never receive a job (re-checked every status interval)")
            }));
        }
        warnings
    }

    fn health_fields(&self) -> Map<String, Value> {
        self.status_fields()
    }

    fn refresh(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            match (&self.off, self.broker.get()) {
                (Some(reason), _) => Err(reason.clone()),
                (None, Some(broker)) => broker.refresh().await.map_err(|e| e.to_string()),
                (None, None) => Err("the broker link is starting".to_owned()),
            }
        })
    }

    fn service_apps(&self) -> Vec<(String, String)> {
        self.service_apps.clone()
    }

    fn metrics(&self, out: &mut crate::metrics::Exposition) {
        let lease = self.lease.get().map(|l| l.facts());
        crate::metrics::write_broker(out, self.off.is_none(), self.broker.get(), lease);
    }

    fn health_services(&self) -> Map<String, Value> {
        let entry = match (&self.off, self.broker.get()) {
            (Some(reason), _) => json!({"healthy": false, "error": reason}),
            (None, Some(broker)) => {
                let status = broker.status();
                json!({"healthy": status.is_connected(), "error": unreachable(&status)})
            }
            (None, None) => json!({"healthy": false, "error": "the broker link is starting"}),
        };
        let mut services = Map::new();
        services.insert("status-aggregator".into(), entry);
        services
    }
}

impl MachineStatus {
    fn broker_field(&self) -> Value {
        match (&self.off, self.broker.get()) {
            (Some(reason), _) => json!({"enabled": false, "reason": reason}),
            (None, Some(broker)) => {
                let status = broker.status();
                let mut value = serde_json::to_value(&status).unwrap_or(Value::Null);
                if let Value::Object(map) = &mut value {
                    map.insert("enabled".into(), true.into());
                    map.insert("summary".into(), status.summary().into());
                    map.insert(
                        "required_for_health".into(),
                        self.required_for_health.into(),
                    );
                }
                value
            }
            (None, None) => json!({"enabled": true, "summary": "starting"}),
        }
    }
}

/// The broker's answer to "which workers are busy", by app name, for the drain on stop and
/// restart, and its hand-back of a killed worker's job.
struct BrokerBusy {
    /// Where the broker appears once it has connected; until then no worker is known to be busy.
    status: Arc<MachineStatus>,
    /// App name → `WORKER_ID`, for the workers the broker knows.
    worker_ids: std::collections::HashMap<String, String>,
}

impl BusyProbe for BrokerBusy {
    fn busy<'a>(
        &'a self,
        apps: &'a [String],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Option<String>>> + Send + 'a>> {
        Box::pin(async move {
            let known: Vec<(usize, String)> = apps
                .iter()
                .enumerate()
                .filter_map(|(i, app)| Some((i, self.worker_ids.get(app)?.clone())))
                .collect();
            let ids: Vec<String> = known.iter().map(|(_, id)| id.clone()).collect();
            let mut out = vec![None; apps.len()];
            let Some(broker) = self.status.broker.get() else {
                return out;
            };
            for ((i, _), busy) in known.iter().zip(broker.busy_workers(&ids).await) {
                out[*i] = busy;
            }
            out
        })
    }

    fn hand_back<'a>(
        &'a self,
        app: &'a str,
        job: &'a str,
        why: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let Some(worker_id) = self.worker_ids.get(app) else {
                return;
            };
            match self.status.broker.get() {
                Some(broker) => {
                    broker.hand_back(worker_id, job, why).await;
                }
                None => log(&format!(
                    "cannot hand the job of {app} back to the queue: the broker link never connected; it stays assigned to worker {worker_id} until the API's orphan clean-up"
                )),
            }
        })
    }
}

/// Runs a machine to the end: checks everything, serves the health endpoint, starts the broker
/// link, supervises until stopped. Blocks the thread.
pub fn run(apps: Vec<AppSpec>, options: UpOptions) -> Result<(), UpError> {
    let started_at = Instant::now();
    let mut problems = options.preflight.problems;
    for warning in &options.preflight.warnings {
        log(&format!("warning: {warning}"));
    }
    problems.extend(crate::preflight::check_apps(&apps, &options.install_hint));
    problems.extend(options.control.problems.iter().cloned());
    let setting = match options.broker {
        Ok((setting, warnings)) => {
            for warning in warnings {
                log(&format!("warning: {warning}"));
            }
            Some(setting)
        }
        Err(found) => {
            problems.extend(found);
            None
        }
    };
    let supervisor = match Supervisor::new(apps, options.supervisor) {
        Ok(supervisor) => Some(supervisor),
        Err(err) => {
            problems.extend(err.problems);
            None
        }
    };
    let advertised = match health_url_from_lookup(crate::env::lookup) {
        Ok(url) => url,
        Err(problem) => {
            problems.push(problem);
            None
        }
    };
    let mut link = None;
    if let (Some(BrokerSetting::On { config, .. }), Some(supervisor)) = (&setting, &supervisor) {
        let identity = Identity {
            machine_id: options.machine_id.clone(),
            gpu_count: options.gpu_count,
            health_url: String::new(),
            started_at,
        };
        match ViewTemplate::build(&identity, supervisor.apps()) {
            Ok(built) => {
                for warning in built.warnings {
                    log(&format!("warning: {warning}"));
                }
                link = Some((config.as_ref().clone(), built.template));
            }
            Err(found) => problems.extend(found),
        }
    }
    let (Some(setting), Some(mut supervisor), true) = (setting, supervisor, problems.is_empty())
    else {
        return Err(PreflightError { problems }.into());
    };
    let service_apps = link
        .as_ref()
        .map(|(_, template)| template.service_apps())
        .unwrap_or_default();
    let status = Arc::new(match setting {
        BrokerSetting::Off { reason } => MachineStatus {
            broker: OnceLock::new(),
            lease: OnceLock::new(),
            off: Some(reason),
            required_for_health: false,
            service_apps,
        },
        BrokerSetting::On {
            required_for_health,
            ..
        } => MachineStatus {
            broker: OnceLock::new(),
            lease: OnceLock::new(),
            off: None,
            required_for_health,
            service_apps,
        },
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(UpError::Runtime)?;
    // One live machine per id: a second one is refused here, before anything listens or starts.
    if let Some((config, template)) = &link {
        let id = template.machine_id();
        let lease = runtime.block_on(broker::lease::take_and_hold(
            config,
            id,
            &supervisor.handle(),
        ))?;
        // Held: whatever our worker ids still hold was left by an earlier run (killed outright).
        if lease.facts().held {
            let mut workers: Vec<String> = template.worker_ids().into_values().collect();
            workers.sort();
            runtime.block_on(broker::leftover::hand_back(config, id, &workers));
        }
        let _ = status.lease.set(lease);
    }
    runtime.block_on(async {
        let handle = supervisor.handle();
        let addr = crate::health::serve(
            options.health_port,
            handle.clone(),
            status.clone(),
            options.control.clone(),
        )
        .await?;
        let failed: Arc<std::sync::Mutex<Option<BrokerError>>> = Arc::default();
        if let Some((config, template)) = link {
            let template = template.with_health_url(
                advertised.unwrap_or_else(|| format!("http://localhost:{}/health", addr.port())),
            );
            let (view_tx, view_rx) =
                watch::channel(template.view(&handle.snapshot(), handle.uptime_ms()));
            // The broker connects in the background (below); the drain asks it once it is there.
            let worker_apps = template.worker_ids();
            supervisor.drain_with(Arc::new(BrokerBusy {
                status: status.clone(),
                worker_ids: template.worker_ids(),
            }));
            handle.tracker().spawn(template.follow(
                handle.watch(),
                view_tx,
                handle.shutdown_token(),
                handle.started(),
            ));
            let require = config.preflight == broker::PreflightMode::Require;
            let start = {
                let status = status.clone();
                let failed = failed.clone();
                let handle = handle.clone();
                async move {
                    match Broker::start(config, view_rx).await {
                        Ok(broker) => {
                            follow_worker_logs(&handle, worker_apps, &broker);
                            let _ = status.broker.set(broker);
                        }
                        Err(err) => {
                            *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(err);
                            handle.request_stop(libc::SIGTERM);
                        }
                    }
                }
            };
            let mut connecting = tokio::spawn(start);
            if require {
                // BROKER_PREFLIGHT=require: nothing starts before the check has passed.
                let _ = (&mut connecting).await;
            } else {
                // The apps never wait for Redis: a reachable one gets a short head start (so its
                // `initial` goes out first), one that does not answer keeps connecting meanwhile.
                let _ = tokio::time::timeout(BROKER_HEAD_START, &mut connecting).await;
            }
            if let Some(err) = failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return Err(err.into());
            }
            let status = status.clone();
            supervisor.before_stop(async move {
                match status.broker.get() {
                    Some(broker) => match broker.shutdown().await {
                        Ok(()) => log("broker: published the final shutdown status"),
                        Err(err) => log(&format!("broker: {err}")),
                    },
                    None => connecting.abort(),
                }
            });
        }
        supervisor.run().await?;
        // The broker refused in the background (authentication): the stop it asked for is done.
        if let Some(err) = failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(err.into());
        }
        Ok(())
    })
}

/// How long the apps wait for a broker that answers at once (see [`run`]); never more.
pub(crate) const BROKER_HEAD_START: std::time::Duration = std::time::Duration::from_millis(200);

#[cfg(test)]
mod tests {
    #[test]
    fn the_advertised_health_url_is_an_http_url_or_unset() {
        let with = |v: Option<&str>| {
            let v = v.map(str::to_owned);
            super::health_url_from_lookup(move |_| v.clone())
        };
        assert_eq!(with(None), Ok(None));
        assert_eq!(with(Some("  ")), Ok(None));
        assert_eq!(
            with(Some("http://10.0.0.5:9090/health")),
            Ok(Some("http://10.0.0.5:9090/health".into()))
        );
        let err = with(Some("10.0.0.5:9090")).unwrap_err();
        assert!(
            err.contains("MACHINE_HEALTH_URL") && err.contains("http"),
            "{err}"
        );
    }

    use super::*;

    fn setting(vars: &[(&str, &str)]) -> Result<(BrokerSetting, Vec<String>), Vec<String>> {
        BrokerSetting::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn no_url_turns_the_broker_off_and_says_why() {
        let (off, warnings) = setting(&[]).unwrap();
        assert!(
            matches!(off, BrokerSetting::Off { ref reason } if reason.contains("HUB_REDIS_URL is not set"))
        );
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn an_empty_url_is_refused_with_the_other_problems() {
        for empty in ["", "  "] {
            assert_eq!(
                setting(&[("HUB_REDIS_URL", empty)]).unwrap_err(),
                [EMPTY_URL]
            );
        }
        let problems = setting(&[
            ("HUB_REDIS_URL", ""),
            ("MACHINE_HEALTH_REQUIRES_BROKER", "maybe"),
        ])
        .unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[1], EMPTY_URL);
    }

    #[test]
    fn a_url_turns_it_on_and_health_policy_is_read() {
        let (on, warnings) = setting(&[
            ("HUB_REDIS_URL", "redis://127.0.0.1:6379"),
            ("MACHINE_HEALTH_REQUIRES_BROKER", "Yes"),
            ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "60"),
        ])
        .unwrap();
        let BrokerSetting::On {
            config,
            required_for_health,
        } = on
        else {
            panic!("broker off");
        };
        assert!(required_for_health);
        assert_eq!(config.status_interval.as_secs(), 25);
        assert!(warnings[0].contains("above 25"), "{warnings:?}");
    }

    #[test]
    fn every_problem_is_reported_once() {
        let problems = setting(&[
            ("HUB_REDIS_URL", "redis://:pw@host:notaport"),
            ("MACHINE_HEALTH_REQUIRES_BROKER", "maybe"),
            ("BROKER_PREFLIGHT", "strict"),
        ])
        .unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems.iter().all(|p| !p.contains(":pw@")), "{problems:?}");
        // A password with an unencoded `#` is refused, and none of it shows.
        let problems =
            setting(&[("HUB_REDIS_URL", "redis://:p@ss#w:rd/1@127.0.0.1:16391")]).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("percent-encode the password (`#` → `%23`"),
            "{problems:?}"
        );
        for part in ["p@ss", "ss#w", "w:rd", "rd/1"] {
            assert!(!problems[0].contains(part), "{part} in {problems:?}");
        }
        // A bad health policy is reported even without a broker.
        let problems = setting(&[("MACHINE_HEALTH_REQUIRES_BROKER", "2")]).unwrap_err();
        assert_eq!(problems.len(), 1);
    }
}
