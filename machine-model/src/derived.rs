//! The variables a plan derives from the profile's typed fields (`MACHINE_ID`, `WORKERS`, GPU count and
//! mode, health port, …): the first section of every generated `.env`, and the names no component or
//! profile `env` may override (the profile validator checks that).

use crate::plan::Plan;
use crate::profile::{GpuMode, Profile};

/// The variables derived from `plan` and `profile`'s typed fields, as `(name, value)` in a fixed order
/// (the order of the `.env`'s first section).
pub fn env_vars(profile: &Profile, plan: &Plan) -> Vec<(String, String)> {
    let m = &profile.machine;
    let mut v: Vec<(String, String)> = vec![
        ("MACHINE_PROFILE".into(), plan.profile.clone()),
        ("MACHINE_ID".into(), plan.machine_id.clone()),
        ("WORKER_CONNECTORS".into(), plan.worker_spec.clone()),
        // The existing runtime reads WORKERS; same value, one source.
        ("WORKERS".into(), plan.worker_spec.clone()),
        ("MACHINE_GPU_COUNT".into(), plan.gpus.to_string()),
        ("NUM_GPUS".into(), plan.gpus.to_string()),
        ("MACHINE_HAS_GPU".into(), (plan.gpus > 0).to_string()),
        ("MACHINE_RAM_GB".into(), m.ram_gb.to_string()),
        (
            "MACHINE_ALLOW_FEWER_GPUS".into(),
            m.allow_fewer_gpus.to_string(),
        ),
        ("MACHINE_HEALTH_PORT".into(), plan.health_port.to_string()),
        (
            crate::catalog::WORKSPACE_DIR_VAR.into(),
            plan.workspace.clone(),
        ),
    ];
    if let Some(model) = &m.gpu_model {
        v.push(("MACHINE_GPU_MODEL".into(), model.clone()));
    }
    // The GPU mode is the profile's typed field; mock GPUs are the runtime's fake inventory of the planned count.
    v.push(("MACHINE_GPU_MODE".into(), m.gpu_mode.as_str().into()));
    if m.gpu_mode == GpuMode::Mock {
        v.push(("MACHINE_FAKE_GPUS".into(), plan.gpus.to_string()));
    } else if plan.gpus > 0 {
        // NVML needs `utility`, CUDA `compute`; the toolkit's default changed across versions.
        v.push((
            "NVIDIA_DRIVER_CAPABILITIES".into(),
            "compute,utility".into(),
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Overrides;

    #[test]
    fn mock_gpus_are_faked_and_real_ones_get_driver_capabilities() {
        let profile = |mode: &str| -> Profile {
            serde_json::from_value(serde_json::json!({
                "description": "d",
                "workers": "comfyui:1",
                "machine": { "gpus": 2, "ram_gb": 8, "gpu_mode": mode },
            }))
            .unwrap()
        };
        let names = |mode: &str| {
            let p = profile(mode);
            let plan = Plan::build("p", &p, &Overrides::default()).unwrap();
            env_vars(&p, &plan)
        };
        let mock = names("mock");
        assert!(mock.contains(&("MACHINE_FAKE_GPUS".into(), "2".into())));
        assert!(!mock.iter().any(|(k, _)| k == "NVIDIA_DRIVER_CAPABILITIES"));
        let actual = names("actual");
        assert!(actual.contains(&(
            "NVIDIA_DRIVER_CAPABILITIES".into(),
            "compute,utility".into()
        )));
        assert_eq!(actual[0], ("MACHINE_PROFILE".into(), "p".into()));
        assert_eq!(actual[1], ("MACHINE_ID".into(), "p".into()));
    }
}
