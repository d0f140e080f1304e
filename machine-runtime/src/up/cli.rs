//! `machine-runtime up`'s arguments, turned into the apps and [`UpOptions`] of [`super::run`].

use std::path::PathBuf;

use super::UpOptions;
use super::plan::plan_apps;
use super::setting::BrokerSetting;
use crate::health;
use crate::supervisor::SupervisorOptions;

/// Arguments of `machine-runtime up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// A PM2-compatible ecosystem JSON file to run.
    #[arg(long, value_name = "FILE", conflicts_with = "profile")]
    pub ecosystem: Option<PathBuf>,
    /// A baked-in profile to plan against the GPUs found and run [default: $MACHINE_PROFILE].
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Port of the health endpoint [default: $MACHINE_HEALTH_PORT, else 9090; 0 picks a free one].
    #[arg(long, value_name = "PORT")]
    pub health_port: Option<u16>,
    /// How the runtime's own log lines are written [default: $MACHINE_LOG_FORMAT, else text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<crate::log::LogFormat>,
}

/// Runs `machine-runtime up` to the end: plans (or reads the ecosystem file), checks the settings,
/// creates the workspace and runs the machine ([`super::run`]); every start-up problem is in the
/// error.
pub fn run_cli(args: UpArgs) -> anyhow::Result<()> {
    // First: the sweep of another runtime on this host knows a live one by this name.
    crate::cgroup::name_this_runtime();
    // Before any app: the soft open-file limit up to the hard one (each app holds two pipes).
    if let Err(err) = crate::limits::raise_open_files() {
        crate::log::runtime(&format!(
            "warning: cannot read or raise the open-file limit: {err}"
        ));
    }
    let runtime = super::machine::async_runtime()?;
    // The apps' cgroups, made by the runtime's workers while the files are read and checked.
    let mut cgroups = crate::cgroup::Preparing::start(runtime.handle());
    let env_machine_id =
        crate::identity::machine_id(crate::env::lookup, None, &crate::identity::hostname())?;
    // Read before planning, so a start that fails names every problem at once.
    let broker = BrokerSetting::from_env();
    let planned = plan_apps(args.ecosystem, args.profile, env_machine_id);
    let planned = match (planned, &broker) {
        (Ok(planned), _) => planned,
        (Err(err), Ok(_)) => return Err(err),
        (Err(err), Err(problems)) => {
            anyhow::bail!("{err:#}\n  {}", problems.join("\n  "))
        }
    };
    cgroups.apps(
        crate::supervisor::start_order(&planned.apps)
            .into_iter()
            .map(|i| (i, planned.apps[i].name.clone()))
            .collect(),
    );
    if let Some(workspace) = &planned.workspace {
        let created =
            crate::limits::ensure_workspace(workspace, machine_model::catalog::WORKSPACE_DIR_VAR)
                .map_err(|problem| anyhow::anyhow!("cannot start the machine:\n  - {problem}"))?;
        if created {
            crate::log::runtime(&format!(
                "created the workspace {} (WORKSPACE_DIR)",
                workspace.display()
            ));
        }
    }
    let mut supervisor = SupervisorOptions::new(planned.gpu_uuids);
    supervisor.context.mig_uuids = planned.mig_uuids;
    if let Some(id) = &planned.machine_id {
        // Every child runs with the final id (the environment's may lack the host name suffix).
        supervisor
            .context
            .runtime_env
            .insert("MACHINE_ID".into(), id.into());
    }
    let options = UpOptions {
        supervisor,
        health_port: health::health_port(args.health_port)?,
        machine_id: planned.machine_id,
        gpu_count: planned.gpu_count,
        broker,
        control: health::Control::from_lookup(crate::env::lookup),
        preflight: planned.preflight,
        install_hint: planned.install_hint,
        cgroups: Some(cgroups),
    };
    super::run(planned.apps, options, runtime)?;
    Ok(())
}
