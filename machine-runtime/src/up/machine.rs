//! [`run`], step by step: check everything, take the machine id's lease, serve the health endpoint,
//! start the broker link, supervise until stopped.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::watch;

use super::busy::BrokerBusy;
use super::setting::{BrokerSetting, health_url_from_lookup};
use super::status::MachineStatus;
use super::worker_logs::follow_worker_logs;
use super::{BROKER_HEAD_START, UpError, UpOptions};
use crate::broker::bridge::{Identity, ViewTemplate};
use crate::broker::{self, Broker, BrokerConfig, BrokerError};
use crate::ecosystem::AppSpec;
use crate::health::Control;
use crate::log::runtime as log;
use crate::supervisor::{PreflightError, Supervisor, SupervisorHandle};

/// What the start-up checks let through: everything the machine starts with.
struct Checked {
    supervisor: Supervisor,
    /// The broker's settings and the view of this machine its messages are built from, when the
    /// machine reports to a broker.
    link: Option<(BrokerConfig, ViewTemplate)>,
    /// `MACHINE_HEALTH_URL`, when set.
    advertised: Option<String>,
    /// Port of the health endpoint (0 picks a free one).
    health_port: u16,
    /// The control routes' token.
    control: Control,
}

/// A refusal from the broker's task in the background (authentication), for the end of [`run`].
type Failed = Arc<Mutex<Option<BrokerError>>>;

/// The async runtime [`run`] runs the machine on: two worker threads.
pub fn async_runtime() -> Result<tokio::runtime::Runtime, UpError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(UpError::Runtime)
}

/// Runs a machine to the end on `runtime` ([`async_runtime`]): checks everything, serves the health
/// endpoint, starts the broker link, supervises until stopped. Blocks the thread.
pub fn run(
    apps: Vec<AppSpec>,
    options: UpOptions,
    runtime: tokio::runtime::Runtime,
) -> Result<(), UpError> {
    let started_at = Instant::now();
    let (setting, checked) = check(apps, options, started_at)?;
    let status = Arc::new(machine_status(setting, &checked.link));
    take_lease(&runtime, &checked, &status)?;
    runtime.block_on(serve(checked, status))
}

/// Collects every start-up problem (installs, apps, control token, broker settings, health URL,
/// worker identities) and reports them at once; else what the machine starts with.
fn check(
    apps: Vec<AppSpec>,
    options: UpOptions,
    started_at: Instant,
) -> Result<(BrokerSetting, Checked), UpError> {
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
        Ok(mut supervisor) => {
            if let Some(cgroups) = options.cgroups {
                supervisor.use_cgroups(cgroups);
            }
            Some(supervisor)
        }
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
    let (Some(setting), Some(supervisor), true) = (setting, supervisor, problems.is_empty()) else {
        return Err(PreflightError { problems }.into());
    };
    Ok((
        setting,
        Checked {
            supervisor,
            link,
            advertised,
            health_port: options.health_port,
            control: options.control,
        },
    ))
}

/// The broker's part of `/health` and `/status` before the broker has started.
fn machine_status(
    setting: BrokerSetting,
    link: &Option<(BrokerConfig, ViewTemplate)>,
) -> MachineStatus {
    let service_apps = link
        .as_ref()
        .map(|(_, template)| template.service_apps())
        .unwrap_or_default();
    match setting {
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
    }
}

/// One live machine per id: a second one is refused here, before anything listens or starts. A
/// lease that was held means an earlier run was killed outright: whatever our worker ids still hold
/// is handed back.
fn take_lease(
    runtime: &tokio::runtime::Runtime,
    checked: &Checked,
    status: &MachineStatus,
) -> Result<(), UpError> {
    let Some((config, template)) = &checked.link else {
        return Ok(());
    };
    let id = template.machine_id();
    let lease = runtime.block_on(broker::lease::take_and_hold(
        config,
        id,
        &checked.supervisor.handle(),
    ))?;
    // Held: whatever our worker ids still hold was left by an earlier run (killed outright).
    if lease.facts().held {
        let mut workers: Vec<String> = template.worker_ids().into_values().collect();
        workers.sort();
        runtime.block_on(broker::leftover::hand_back(config, id, &workers));
    }
    let _ = status.lease.set(lease);
    Ok(())
}

/// Serves the health endpoint, starts the broker link (when there is one) and supervises until
/// stopped.
async fn serve(checked: Checked, status: Arc<MachineStatus>) -> Result<(), UpError> {
    let Checked {
        mut supervisor,
        link,
        advertised,
        health_port,
        control,
    } = checked;
    let handle = supervisor.handle();
    let addr = crate::health::serve(health_port, handle.clone(), status.clone(), control).await?;
    let failed: Failed = Arc::default();
    if let Some((config, template)) = link {
        let template = template.with_health_url(
            advertised.unwrap_or_else(|| format!("http://localhost:{}/health", addr.port())),
        );
        start_broker(&mut supervisor, &handle, config, template, &status, &failed).await?;
    }
    supervisor.run().await?;
    // The broker refused in the background (authentication): the stop it asked for is done.
    if let Some(err) = failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(err.into());
    }
    Ok(())
}

/// Starts the broker link in the background and wires it to the supervisor (the view it reports,
/// the drain, the workers' output, the final `shutdown` message before any app is signalled). The
/// apps wait at most [`BROKER_HEAD_START`] for it, except with `BROKER_PREFLIGHT=require`.
async fn start_broker(
    supervisor: &mut Supervisor,
    handle: &SupervisorHandle,
    config: BrokerConfig,
    template: ViewTemplate,
    status: &Arc<MachineStatus>,
    failed: &Failed,
) -> Result<(), UpError> {
    let (view_tx, view_rx) = watch::channel(template.view(&handle.snapshot(), handle.uptime_ms()));
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
    Ok(())
}
