//! The machine `up` runs: a baked-in profile planned against the GPUs found and the environment
//! (also what `machine-runtime plan` prints), or a PM2 ecosystem file as it is.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::ecosystem;
use crate::reality::RealPlan;

/// MIG slices: (index of the parent GPU, `MIG-...` UUID).
type MigUuids = Vec<(u32, String)>;

/// GPU UUIDs ordered by index and MIG slices (parent index, UUID), from the inventory (NVML, or
/// MACHINE_FAKE_GPUS).
fn gpu_uuids() -> anyhow::Result<(Vec<String>, MigUuids)> {
    let inventory = crate::gpu::Inventory::detect()?;
    let mig = inventory
        .gpus
        .iter()
        .flat_map(|g| g.mig.iter().map(|m| (g.index, m.uuid.clone())))
        .collect();
    Ok((
        inventory
            .ordered_uuids()
            .into_iter()
            .map(str::to_string)
            .collect(),
        mig,
    ))
}

/// The baked-in profile named by the flag or `MACHINE_PROFILE`, planned against the GPUs found and the
/// environment (overrides, secrets).
pub fn real_plan(flag: Option<String>) -> anyhow::Result<RealPlan> {
    let name = flag
        .or_else(|| {
            std::env::var("MACHINE_PROFILE")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .context("no profile; pass --profile NAME or set MACHINE_PROFILE")?;
    let baked = crate::profiles::by_name(&name).with_context(|| crate::profiles::unknown(&name))?;
    let profile = baked.profile().context("reading the baked-in profile")?;
    let inventory = crate::gpu::Inventory::detect()?;
    // The plan's machine id is the final one (a scaled Compose service's host name appended).
    let default_id = profile.machine.id.as_deref().unwrap_or(baked.name);
    let machine_id = crate::identity::machine_id(
        crate::env::lookup,
        Some(default_id),
        &crate::identity::hostname(),
    )
    .map_err(|problem| anyhow::anyhow!("cannot start profile {name}:\n  {problem}"))?;
    // A machine setting the environment leaves unset or empty takes the profile's own value (what its
    // generated files say), not the catalog default: `up --profile full-local` runs its workers with
    // the profile's `LOG_LEVEL=debug` like its Compose file does.
    let env = |var: &str| match var {
        "MACHINE_ID" => machine_id.clone(),
        _ => std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .or_else(|| baked.setting(var).map(str::to_owned)),
    };
    let real = crate::reality::plan(baked.name, &profile, &env, &inventory).map_err(|refused| {
        anyhow::anyhow!(
            "cannot start profile {name}:\n  {}",
            refused.problems.join("\n  ")
        )
    })?;
    for note in &real.notes {
        crate::log::runtime(note);
    }
    Ok(real)
}

/// What `machine-runtime plan` prints for `real`: one line for the machine, then one per service
/// and per worker, with the GPU UUID each is pinned to (`-` for none); no final newline.
pub fn plan_text(real: &RealPlan) -> String {
    let mut lines = vec![format!(
        "profile {}  machine {}  gpus {}  workers {}",
        real.plan.profile, real.plan.machine_id, real.plan.gpus, real.plan.worker_spec
    )];
    for s in &real.plan.services {
        let uuid = s
            .gpu
            .and_then(|g| real.gpu_uuids.get(g as usize))
            .map_or("-", |u| u.as_str());
        lines.push(format!(
            "service {:<20} port {:<6} gpu {}",
            s.name,
            s.port.map_or("-".into(), |p| p.to_string()),
            uuid
        ));
    }
    for w in &real.plan.workers {
        let uuid = w
            .gpu
            .and_then(|g| real.gpu_uuids.get(g as usize))
            .map_or("-", |u| u.as_str());
        lines.push(format!(
            "worker  {:<20} {} gpu {} after {}",
            w.name,
            w.worker_id,
            uuid,
            w.service_instance.as_deref().unwrap_or("-")
        ));
    }
    lines.join("\n")
}

/// What `up` runs and reports.
pub(super) struct Planned {
    pub(super) apps: Vec<ecosystem::AppSpec>,
    /// GPU UUIDs by index, to pin the apps to.
    pub(super) gpu_uuids: Vec<String>,
    /// MIG slices (parent index, UUID) an app's CUDA_VISIBLE_DEVICES may name.
    pub(super) mig_uuids: Vec<(u32, String)>,
    /// The workspace folder (`WORKSPACE_DIR`, the plan's install root), created when missing.
    pub(super) workspace: Option<PathBuf>,
    /// `MACHINE_ID` from the plan or the environment.
    pub(super) machine_id: Option<String>,
    /// GPUs reported to the broker.
    pub(super) gpu_count: u32,
    /// The plan's installs as found (profile mode).
    pub(super) preflight: crate::preflight::Findings,
    /// The command that installs what is missing.
    pub(super) install_hint: String,
}

pub(super) fn plan_apps(
    ecosystem: Option<PathBuf>,
    profile: Option<String>,
    env_machine_id: Option<String>,
) -> anyhow::Result<Planned> {
    Ok(match ecosystem {
        Some(path) => {
            let eco = ecosystem::read_file(&path)?;
            for warning in &eco.warnings {
                crate::log::runtime(&format!("warning: {warning}"));
            }
            let (uuids, mig_uuids) = gpu_uuids()?;
            Planned {
                apps: eco.apps,
                gpu_count: u32::try_from(uuids.len()).unwrap_or(u32::MAX),
                gpu_uuids: uuids,
                mig_uuids,
                workspace: std::env::var_os(machine_model::catalog::WORKSPACE_DIR_VAR)
                    .filter(|w| !w.is_empty())
                    .map(PathBuf::from),
                machine_id: env_machine_id,
                preflight: Default::default(),
                install_hint: "machine-runtime install --services worker-bundle".to_owned(),
            }
        }
        None => {
            let real = real_plan(profile)?;
            let install_hint = format!("machine-runtime install --profile {}", real.plan.profile);
            let preflight = crate::preflight::check_installs(
                &real.plan,
                crate::install::Env::from_process(),
                &install_hint,
            );
            let origin = format!("of profile {}", real.plan.profile);
            let eco = ecosystem::resolve((&real.plan).into(), &origin)?;
            for warning in &eco.warnings {
                crate::log::runtime(&format!("warning: {warning}"));
            }
            let apps = eco.apps;
            Planned {
                apps,
                gpu_uuids: real.gpu_uuids,
                mig_uuids: Vec::new(),
                workspace: Some(PathBuf::from(&real.plan.workspace)),
                machine_id: Some(real.plan.machine_id),
                gpu_count: real.plan.gpus,
                preflight,
                install_hint,
            }
        }
    })
}
