//! Derives the broker's [`MachineView`] from the supervisor: identities once from the apps and the exact
//! commands they run, states from every snapshot.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::view::{MachineView, Phase, ProcessState, ResourceBinding, ServiceView, WorkerView};
use crate::command::ChildCommand;
use crate::ecosystem::{AppSpec, Role};
use crate::supervisor::{self, AppState, Snapshot};

/// What a view is made of that never changes while the machine runs.
#[derive(Debug, Clone)]
pub(crate) struct ViewTemplate {
    base: MachineView,
    /// Snapshot index of each worker in `base.workers`.
    worker_apps: Vec<usize>,
    /// Snapshot index of each service in `base.services`.
    service_apps: Vec<usize>,
}

/// The machine's identity as the runtime knows it before looking at the apps.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `MACHINE_ID` from the runtime's environment or the plan; `None` takes the workers' own.
    pub machine_id: Option<String>,
    /// GPUs the machine serves.
    pub gpu_count: u32,
    /// What `health_url` says.
    pub health_url: String,
    /// When the runtime started (for `uptime_ms`).
    pub started_at: Instant,
}

/// A template, and what was left out of it on the way.
#[derive(Debug)]
pub(crate) struct Built {
    /// The template.
    pub template: ViewTemplate,
    /// One line per worker that cannot be reported (no `WORKER_ID`).
    pub warnings: Vec<String>,
}

fn env_of<'a>(command: &'a ChildCommand, name: &str) -> Option<&'a str> {
    command
        .env
        .get(OsStr::new(name))
        .and_then(|v| v.to_str())
        .filter(|v| !v.is_empty())
}

/// The machine's id: the identity's, else the first worker's `MACHINE_ID` (none at all is the one
/// problem returned). A worker running with another id is a problem pushed to `problems`.
fn machine_id_of(
    identity: &Identity,
    apps: &[(&AppSpec, &ChildCommand)],
    problems: &mut Vec<String>,
) -> Result<String, Vec<String>> {
    let workers_ids: Vec<(&str, &str)> = apps
        .iter()
        .filter(|(spec, _)| spec.role == Some(Role::Worker))
        .filter_map(|(spec, cmd)| Some((spec.name.as_str(), env_of(cmd, "MACHINE_ID")?)))
        .collect();
    let machine_id = match &identity.machine_id {
        Some(id) => Some(id.clone()),
        None => workers_ids.first().map(|(_, id)| (*id).to_owned()),
    };
    let Some(machine_id) = machine_id else {
        return Err(vec![
            "no MACHINE_ID: the job broker needs one to know this machine; set MACHINE_ID (it must stay the same across restarts)".to_owned(),
        ]);
    };
    for (app, id) in &workers_ids {
        if *id != machine_id {
            problems.push(format!(
                "worker app \"{app}\" runs with MACHINE_ID \"{id}\" but the machine reports as \"{machine_id}\"; its events would go unheard. Set MACHINE_ID for the whole machine"
            ));
        }
    }
    Ok(machine_id)
}

/// One worker app as the broker sees it: its `WORKER_ID` (given, or derived from its connector and
/// index), connector, binding, services and the service app it waits for. `Err` is the warning for a
/// worker that cannot be reported.
fn worker_view(
    spec: &AppSpec,
    cmd: &ChildCommand,
    gpu: Option<u32>,
    machine_id: &str,
    service_names: &[&str],
) -> Result<WorkerView, String> {
    let connector = spec.connector.clone().or_else(|| connector_from_env(cmd));
    let worker_id = env_of(cmd, "WORKER_ID").map(str::to_owned).or_else(|| {
        let (c, i) = (connector.as_ref()?, spec.index?);
        Some(format!("{machine_id}-worker-{c}-{i}"))
    });
    let Some(worker_id) = worker_id else {
        return Err(format!(
            "worker app \"{}\" has no WORKER_ID (nor machine_connector and machine_index to derive one); it is not reported to the job broker",
            spec.name
        ));
    };
    let entry = connector
        .as_deref()
        .and_then(machine_model::catalog::connector);
    let binding = spec.binding.unwrap_or(match (gpu, entry) {
        (Some(_), _) => ResourceBinding::Gpu,
        (None, Some(entry)) if entry.default_binding != ResourceBinding::Gpu => {
            entry.default_binding
        }
        (None, _) => ResourceBinding::Shared,
    });
    let services = if !spec.services.is_empty() {
        spec.services.clone()
    } else if let Some(entry) = entry {
        entry.advertises.iter().map(|s| (*s).to_owned()).collect()
    } else {
        vec![connector.clone().unwrap_or_else(|| spec.name.clone())]
    };
    Ok(WorkerView {
        worker_id,
        app_name: spec.name.clone(),
        connector: connector.unwrap_or_else(|| spec.name.clone()),
        binding,
        gpu,
        services,
        service_app: spec
            .wait_for
            .iter()
            .find(|name| service_names.contains(&name.as_str()))
            .cloned(),
        process_state: ProcessState::Waiting,
        waiting_reason: None,
    })
}

impl ViewTemplate {
    /// Builds the template from every app and the command it runs (which carries the final
    /// `MACHINE_ID`, `WORKER_ID` and GPU pin). Every problem is returned, one line each.
    pub fn build<'a>(
        identity: &Identity,
        apps: impl IntoIterator<Item = (&'a AppSpec, &'a ChildCommand)>,
    ) -> Result<Built, Vec<String>> {
        let apps: Vec<(&AppSpec, &ChildCommand)> = apps.into_iter().collect();
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let machine_id = machine_id_of(identity, &apps, &mut problems)?;
        let mut base = MachineView {
            machine_id: machine_id.clone(),
            phase: Phase::Starting,
            started_at: identity.started_at,
            gpu_count: identity.gpu_count,
            health_url: identity.health_url.clone(),
            workers: Vec::new(),
            services: Vec::new(),
        };
        let mut worker_apps = Vec::new();
        let mut service_apps = Vec::new();
        let service_names: Vec<&str> = apps
            .iter()
            .filter(|(spec, _)| spec.role == Some(Role::Service))
            .map(|(spec, _)| spec.name.as_str())
            .collect();
        for (idx, (spec, cmd)) in apps.iter().enumerate() {
            let gpu = cmd.gpu.as_ref().map(|pin| pin.index).or_else(|| {
                // A hand-written app pinned by index in its own environment.
                env_of(cmd, "CUDA_VISIBLE_DEVICES").and_then(|v| v.trim().parse().ok())
            });
            match spec.role {
                Some(Role::Service) => {
                    service_apps.push(idx);
                    base.services.push(ServiceView {
                        app_name: spec.name.clone(),
                        gpu,
                        port: spec.port,
                        process_state: ProcessState::Waiting,
                        ready: false,
                    });
                }
                Some(Role::Worker) => {
                    match worker_view(spec, cmd, gpu, &machine_id, &service_names) {
                        Ok(worker) => {
                            worker_apps.push(idx);
                            base.workers.push(worker);
                        }
                        Err(warning) => warnings.push(warning),
                    }
                }
                None => {}
            }
        }
        let mut seen = std::collections::HashSet::new();
        for worker in &base.workers {
            if !seen.insert(worker.worker_id.as_str()) {
                problems.push(format!(
                    "two worker apps report as WORKER_ID \"{}\"; the job broker would see one worker",
                    worker.worker_id
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Built {
            template: ViewTemplate {
                base,
                worker_apps,
                service_apps,
            },
            warnings,
        })
    }

    /// The same template with another `health_url` (known once the endpoint is bound).
    pub(crate) fn with_health_url(mut self, url: String) -> Self {
        self.base.health_url = url;
        self
    }

    /// App name → `WORKER_ID` of every worker the view reports.
    pub(crate) fn worker_ids(&self) -> std::collections::HashMap<String, String> {
        self.base
            .workers
            .iter()
            .map(|w| (w.app_name.clone(), w.worker_id.clone()))
            .collect()
    }

    /// Every key of the status message's `status.services` with the app its row names
    /// (`pm2_name`), for the health endpoint's routes that take the monitor's names.
    pub(crate) fn service_apps(&self) -> Vec<(String, String)> {
        super::message::service_apps(&self.base)
    }

    /// The machine id the view reports.
    pub fn machine_id(&self) -> &str {
        &self.base.machine_id
    }

    /// The view for one supervisor snapshot at `now_ms` (milliseconds since the supervisor
    /// started). The phase is `ready` only while every app has stayed up, i.e. run at least its
    /// `min_uptime` (PM2's line between a stable process and a crash loop): a crash-looping,
    /// restarting or errored app makes it `starting` again.
    pub fn view(&self, snapshot: &Snapshot, now_ms: u64) -> MachineView {
        let mut view = self.base.clone();
        view.phase = match snapshot.phase {
            supervisor::Phase::Starting | supervisor::Phase::Ready => {
                if snapshot.not_ready_reasons(now_ms).is_empty() {
                    Phase::Ready
                } else {
                    Phase::Starting
                }
            }
            supervisor::Phase::Stopping | supervisor::Phase::Stopped => Phase::Shutdown,
        };
        for (worker, &idx) in view.workers.iter_mut().zip(&self.worker_apps) {
            if let Some(app) = snapshot.apps.get(idx) {
                worker.process_state = process_state(app.state);
                worker.waiting_reason = (app.state == AppState::Waiting)
                    .then(|| app.unhealthy_reason())
                    .flatten();
            }
        }
        for (service, &idx) in view.services.iter_mut().zip(&self.service_apps) {
            if let Some(app) = snapshot.apps.get(idx) {
                service.process_state = process_state(app.state);
                service.ready = app.state.is_ready();
            }
        }
        view
    }

    /// Keeps `view` equal to the view of the supervisor's latest snapshot until `cancel`; only
    /// real changes are sent, so every message the receiver sees is one state change.
    ///
    /// `started` is the supervisor's start (the clock of the snapshot's `*_ms` fields); the view is
    /// also recomputed when an app reaches its `min_uptime`, since that alone can make it ready.
    pub(crate) async fn follow(
        self,
        mut snapshots: watch::Receiver<Snapshot>,
        view: watch::Sender<MachineView>,
        cancel: CancellationToken,
        started: Instant,
    ) {
        let now_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        loop {
            let (next, settles_in) = {
                let snapshot = snapshots.borrow_and_update();
                let now = now_ms();
                (self.view(&snapshot, now), snapshot.settles_in(now))
            };
            view.send_if_modified(|current| {
                let changed = *current != next;
                if changed {
                    *current = next;
                }
                changed
            });
            let settle = tokio::time::sleep(Duration::from_millis(settles_in));
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = snapshots.changed() => if changed.is_err() { return },
                () = settle, if settles_in > 0 => {}
            }
        }
    }
}

/// The connector a worker loads, read as the worker reads it (contract §2): the first non-empty of
/// `WORKERS`, `WORKER_CONNECTORS`, `CONNECTORS`, its first item, the part before `:`.
fn connector_from_env(cmd: &ChildCommand) -> Option<String> {
    let list = ["WORKERS", "WORKER_CONNECTORS", "CONNECTORS"]
        .iter()
        .find_map(|name| env_of(cmd, name).filter(|v| !v.trim().is_empty()))?;
    let first = list.split(',').next()?.split(':').next()?.trim();
    (!first.is_empty()).then(|| first.to_owned())
}

fn process_state(state: AppState) -> ProcessState {
    match state {
        AppState::Waiting => ProcessState::Waiting,
        AppState::Starting => ProcessState::Starting,
        AppState::Running => ProcessState::Running,
        AppState::Ready => ProcessState::Ready,
        AppState::Stopping => ProcessState::Stopping,
        AppState::Stopped => ProcessState::Stopped,
        AppState::Errored => ProcessState::Errored,
        AppState::Restarting => ProcessState::Restarting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Context, build};
    use crate::supervisor::AppStatus;
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::path::PathBuf;

    fn ctx(machine_id: Option<&str>) -> Context {
        let mut runtime_env = BTreeMap::new();
        if let Some(id) = machine_id {
            runtime_env.insert(OsString::from("MACHINE_ID"), OsString::from(id));
        }
        Context {
            runtime_env,
            gpu_uuids: vec!["GPU-a".into(), "GPU-b".into()],
            mig_uuids: Vec::new(),
            current_exe: PathBuf::from("/bin/true"),
        }
    }

    fn service(name: &str, gpu: u32) -> AppSpec {
        let mut app = AppSpec::new(name, "sleep");
        app.role = Some(Role::Service);
        app.gpu = Some(gpu);
        app.port = Some(8188 + gpu as u16);
        app
    }

    fn worker(name: &str, connector: &str, index: u32, gpu: Option<u32>) -> AppSpec {
        let mut app = AppSpec::new(name, "sleep");
        app.role = Some(Role::Worker);
        app.gpu = gpu;
        app.connector = Some(connector.into());
        app.index = Some(index);
        app.env.insert("MACHINE_ID".into(), "built".into());
        app.env.insert(
            "WORKER_ID".into(),
            format!("built-worker-{connector}-{index}"),
        );
        if let Some(g) = gpu {
            app.wait_for = vec![format!("comfyui-gpu{g}")];
        }
        app
    }

    fn identity(machine_id: Option<&str>) -> Identity {
        Identity {
            machine_id: machine_id.map(str::to_owned),
            gpu_count: 2,
            health_url: "http://localhost:9090/health".into(),
            started_at: Instant::now(),
        }
    }

    fn template(apps: &[AppSpec], machine_id: Option<&str>) -> Result<Built, Vec<String>> {
        let context = ctx(machine_id);
        let commands: Vec<ChildCommand> =
            apps.iter().map(|a| build(a, &context).unwrap()).collect();
        ViewTemplate::build(&identity(machine_id), apps.iter().zip(&commands))
    }

    fn snapshot(apps: &[AppSpec], states: &[AppState], phase: supervisor::Phase) -> Snapshot {
        Snapshot {
            phase,
            apps: apps
                .iter()
                .zip(states)
                .map(|(spec, state)| {
                    let mut status = AppStatus::new(spec, None);
                    status.state = *state;
                    status.started_ms = Some(0);
                    status
                })
                .collect(),
            orphans_reaped: 0,
        }
    }

    /// A moment long after every app started.
    const LATER: u64 = 100_000;

    fn machine() -> Vec<AppSpec> {
        let mut remote = worker("comfyui-remote-worker-0", "comfyui-remote", 0, None);
        remote.wait_for.clear();
        vec![
            service("comfyui-gpu0", 0),
            service("comfyui-gpu1", 1),
            worker("comfyui-worker-0", "comfyui", 0, Some(0)),
            worker("comfyui-worker-1", "comfyui", 1, Some(1)),
            worker("openai-worker-0", "openai", 0, None),
            remote,
        ]
    }

    #[test]
    fn identities_follow_the_commands_the_workers_run() {
        let apps = machine();
        let built = template(&apps, Some("m7")).unwrap();
        assert!(built.warnings.is_empty(), "{:?}", built.warnings);
        let view = built.template.view(
            &snapshot(&apps, &[AppState::Ready; 6], supervisor::Phase::Ready),
            LATER,
        );
        assert_eq!(view.machine_id, "m7");
        assert_eq!(view.phase, Phase::Ready);
        let ids: Vec<(&str, Option<u32>, ResourceBinding)> = view
            .workers
            .iter()
            .map(|w| (w.worker_id.as_str(), w.gpu, w.binding))
            .collect();
        // The runtime's MACHINE_ID wins over the one baked into the ecosystem, as for the process.
        assert_eq!(
            ids,
            [
                ("m7-worker-comfyui-0", Some(0), ResourceBinding::Gpu),
                ("m7-worker-comfyui-1", Some(1), ResourceBinding::Gpu),
                ("m7-worker-openai-0", None, ResourceBinding::Shared),
                ("m7-worker-comfyui-remote-0", None, ResourceBinding::Shared),
            ]
        );
        assert_eq!(view.workers[1].service_app.as_deref(), Some("comfyui-gpu1"));
        // A remote ComfyUI worker is its own provider, never the local GPU's service.
        assert_eq!(view.workers[3].service_app, None);
        assert_eq!(view.workers[3].services, ["comfyui-remote"]);
        assert_eq!(
            view.workers[2].services,
            machine_model::catalog::connector("openai")
                .unwrap()
                .advertises
        );
        assert_eq!(view.services[1].gpu, Some(1));
    }

    #[test]
    fn states_and_phase_come_from_each_snapshot() {
        let apps = machine();
        let template = template(&apps, Some("m7")).unwrap().template;
        let mut states = [AppState::Ready; 6];
        states[1] = AppState::Starting;
        states[3] = AppState::Waiting;
        states[4] = AppState::Restarting;
        let view = template.view(
            &snapshot(&apps, &states, supervisor::Phase::Starting),
            LATER,
        );
        assert_eq!(view.phase, Phase::Starting);
        assert_eq!(
            (view.services[1].process_state, view.services[1].ready),
            (ProcessState::Starting, false)
        );
        assert!(view.services[0].ready);
        assert_eq!(view.workers[1].process_state, ProcessState::Waiting);
        assert_eq!(view.workers[2].process_state, ProcessState::Restarting);
        let stopping = template.view(
            &snapshot(&apps, &states, supervisor::Phase::Stopping),
            LATER,
        );
        assert_eq!(stopping.phase, Phase::Shutdown);
    }

    #[test]
    fn ready_only_once_every_app_has_stayed_up_for_its_min_uptime() {
        let apps = machine();
        let template = template(&apps, Some("m7")).unwrap().template;
        let mut up = snapshot(&apps, &[AppState::Ready; 6], supervisor::Phase::Ready);
        // A worker restarted 400 ms ago with a min_uptime of 1 s: a crash loop looks like this.
        up.apps[2].started_ms = Some(LATER - 400);
        let view = template.view(&up, LATER);
        assert_eq!(view.phase, Phase::Starting);
        assert_eq!(up.settles_in(LATER), 600);
        assert!(
            up.not_ready_reasons(LATER)[0]
                .contains("comfyui-worker-0 has been up less than its min_uptime 1000 ms"),
            "{:?}",
            up.not_ready_reasons(LATER)
        );
        assert_eq!(template.view(&up, LATER + 600).phase, Phase::Ready);
        // An errored worker keeps the machine from being ready, however long the others run.
        up.apps[4].state = AppState::Errored;
        assert_eq!(template.view(&up, LATER * 10).phase, Phase::Starting);
    }

    #[test]
    fn an_app_with_a_worker_id_is_a_worker_without_machine_fields() {
        let eco = crate::ecosystem::from_value(&serde_json::json!({"apps": [
            {"name": "hand-0", "script": "node", "args": ["redis-direct-worker.js"],
             "env": {"WORKER_ID": "m7-worker-mock-0", "MACHINE_ID": "m7",
                     "WORKERS": "mock:1", "CONNECTORS": "mock", "CUDA_VISIBLE_DEVICES": "1"}},
            {"name": "helper", "script": "sleep", "args": ["1"]},
        ]}))
        .unwrap();
        assert_eq!(eco.apps[0].role, Some(Role::Worker));
        assert_eq!(eco.apps[1].role, None);
        let built = template(&eco.apps, None).unwrap();
        let view = built.template.view(
            &snapshot(&eco.apps, &[AppState::Running; 2], supervisor::Phase::Ready),
            LATER,
        );
        assert_eq!(view.machine_id, "m7");
        assert_eq!(view.workers.len(), 1);
        let worker = &view.workers[0];
        assert_eq!(worker.worker_id, "m7-worker-mock-0");
        assert_eq!(worker.connector, "mock");
        assert_eq!(worker.gpu, Some(1));
        assert_eq!(worker.binding, ResourceBinding::Gpu);
    }

    #[test]
    fn without_a_runtime_machine_id_the_workers_one_is_used() {
        let apps = machine();
        let built = template(&apps, None).unwrap();
        assert_eq!(built.template.machine_id(), "built");
    }

    #[test]
    fn every_identity_problem_is_reported() {
        let mut apps = machine();
        apps[4].env.insert("MACHINE_ID".into(), "other".into());
        apps[5]
            .env
            .insert("WORKER_ID".into(), "built-worker-comfyui-0".into());
        let problems = template(&apps, None).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].contains("\"openai-worker-0\" runs with MACHINE_ID \"other\""));
        assert!(problems[1].contains("WORKER_ID \"built-worker-comfyui-0\""));

        let mut anonymous = AppSpec::new("helper", "sleep");
        anonymous.role = Some(Role::Worker);
        let built = template(&[anonymous.clone()], Some("m7")).unwrap();
        assert_eq!(built.warnings.len(), 1);
        assert!(built.warnings[0].contains("\"helper\" has no WORKER_ID"));
        let problems = template(&[anonymous], None).unwrap_err();
        assert!(problems[0].starts_with("no MACHINE_ID"), "{problems:?}");
    }
}
