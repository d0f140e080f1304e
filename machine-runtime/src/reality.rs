//! Plan against reality: the baked profile's plan, re-derived with the environment's overrides
//! (`WORKER_CONNECTORS`, `MACHINE_GPU_COUNT`, `MACHINE_ID`, `WORKSPACE_DIR`, and the machine settings
//! `SIMULATION_BASE_PORT`, `COMFYUI_BASE_PORT`, `WORKER_POLL_INTERVAL_MS`, ...) and checked against the GPUs
//! found and the variables the workers need. "Change the numbers, restart; no rebuild."

use machine_model::{Overrides, Plan, Profile};

use crate::gpu::Inventory;

/// The environment as the runtime sees it (a seam for tests).
pub trait Env {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// A plan the runtime can start, and what it decided on the way.
#[derive(Debug, Clone)]
pub struct RealPlan {
    /// The plan to run.
    pub plan: Plan,
    /// GPU UUIDs by planned GPU index.
    pub gpu_uuids: Vec<String>,
    /// Things worth a log line (re-planning, unused GPUs, overrides).
    pub notes: Vec<String>,
}

fn non_empty(env: &dyn Env, name: &str) -> Option<String> {
    env.var(name).filter(|v| !v.trim().is_empty())
}

/// `v` read by the one boolean parser ([`crate::env::parse_bool`]), empty as false; `None` when it is not
/// a boolean.
fn truthy(v: &str) -> Option<bool> {
    crate::env::parse_bool(v).ok().map(|b| b.unwrap_or(false))
}

/// Every reason a plan cannot start, one message each (overrides, GPUs, missing variables), all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct PlanRefused {
    /// One line each, naming the variable or GPU count and the fix.
    pub problems: Vec<String>,
}

/// Derives the plan to run from the baked profile `name`/`profile`, the environment's overrides and the
/// GPUs found; every problem is returned at once ([`PlanRefused`]).
pub fn plan(
    name: &str,
    profile: &Profile,
    env: &dyn Env,
    inventory: &Inventory,
) -> Result<RealPlan, PlanRefused> {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let workers = non_empty(env, "WORKER_CONNECTORS").or_else(|| non_empty(env, "WORKERS"));
    if let Some(w) = &workers
        && w.trim() != profile.workers.trim()
    {
        notes.push(format!(
            "worker spec from the environment: {w} (profile: {})",
            profile.workers
        ));
    }
    let gpus = fit_gpus(name, profile, env, inventory, &mut problems, &mut notes);
    if !problems.is_empty() {
        return Err(PlanRefused { problems });
    }
    let overrides = Overrides {
        workers,
        gpus: Some(gpus),
        machine_id: non_empty(env, "MACHINE_ID"),
        workspace: non_empty(env, machine_model::catalog::WORKSPACE_DIR_VAR),
        settings: machine_model::catalog::plan_setting_names()
            .into_iter()
            .filter_map(|name| non_empty(env, name).map(|v| (name.to_string(), v)))
            .collect(),
    };
    let plan = match Plan::build(name, profile, &overrides) {
        Ok(p) => p,
        Err(e) => {
            return Err(PlanRefused {
                problems: e.0.iter().map(|e| e.to_string()).collect(),
            });
        }
    };
    missing_variables(&plan, env, &mut problems);
    if !problems.is_empty() {
        return Err(PlanRefused { problems });
    }
    let gpu_uuids = inventory
        .gpus
        .iter()
        .take(gpus as usize)
        .map(|g| g.uuid.clone())
        .collect();
    Ok(RealPlan {
        plan,
        gpu_uuids,
        notes,
    })
}

/// The number of GPUs to plan for: `MACHINE_GPU_COUNT` (else the profile's), checked against the GPUs
/// found. Fewer found is a problem unless `MACHINE_ALLOW_FEWER_GPUS` (or the profile) allows
/// re-planning on them; more found is a note.
fn fit_gpus(
    name: &str,
    profile: &Profile,
    env: &dyn Env,
    inventory: &Inventory,
    problems: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> u32 {
    let planned_gpus = match non_empty(env, "MACHINE_GPU_COUNT") {
        None => profile.machine.gpus,
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                problems.push(format!(
                    "MACHINE_GPU_COUNT=\"{v}\" is not a number of GPUs; expected 0 to {}",
                    machine_model::plan::MAX_GPUS
                ));
                profile.machine.gpus
            }
        },
    };
    let allow_fewer = match non_empty(env, "MACHINE_ALLOW_FEWER_GPUS") {
        None => profile.machine.allow_fewer_gpus,
        Some(v) => truthy(&v).unwrap_or_else(|| {
            problems.push(format!(
                "MACHINE_ALLOW_FEWER_GPUS=\"{v}\" is not a boolean; expected true or false"
            ));
            false
        }),
    };
    let found = inventory.gpus.len() as u32;
    if found < planned_gpus && allow_fewer {
        let reason = inventory
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        notes.push(format!(
            "planned {planned_gpus} GPUs, found {found}{reason}; re-planning on {found} (allowed)"
        ));
        return found;
    }
    if found < planned_gpus {
        problems.push(too_few_gpus(name, profile, env, inventory, planned_gpus));
    } else if found > planned_gpus {
        notes.push(format!(
            "found {found} GPUs, planned {planned_gpus}; GPUs {planned_gpus}..{} stay unused",
            found - 1
        ));
    }
    planned_gpus
}

/// Why fewer GPUs than `planned_gpus` cannot do, and the fix: the fake count for a profile whose GPUs
/// are simulated, else the GPUs found and the settings that plan for fewer.
fn too_few_gpus(
    name: &str,
    profile: &Profile,
    env: &dyn Env,
    inventory: &Inventory,
    planned_gpus: u32,
) -> String {
    let found = inventory.gpus.len() as u32;
    let reason = inventory
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let mock = profile.machine.gpu_mode == machine_model::profile::GpuMode::Mock
        || non_empty(env, "MACHINE_GPU_MODE").is_some_and(|m| m.trim() == "mock");
    if mock && non_empty(env, crate::gpu::FAKE_GPUS_VAR).is_none() {
        // A profile whose GPUs are simulated: the fix is the fake count its generated .env sets, not
        // fewer GPUs (issue 21: `plan --profile full-local` suggested MACHINE_ALLOW_FEWER_GPUS).
        format!(
            "profile {name} simulates its {planned_gpus} GPU{} (machine.gpu_mode: mock), but {fake} is not set, so real ones were looked for: found {found}{reason}. \
             Set {fake}={planned_gpus} (generated/{name}/.env sets it for docker-compose)",
            if planned_gpus == 1 { "" } else { "s" },
            fake = crate::gpu::FAKE_GPUS_VAR,
        )
    } else {
        format!(
            "planned {planned_gpus} GPU{}, found {found}{reason}; refusing to start. Found: {}. \
             Set MACHINE_ALLOW_FEWER_GPUS=true (or machine.allow_fewer_gpus) to re-plan on what was found, \
             or MACHINE_GPU_COUNT to plan for fewer",
            if planned_gpus == 1 { "" } else { "s" },
            if inventory.gpus.is_empty() {
                "none".to_string()
            } else {
                inventory
                    .gpus
                    .iter()
                    .map(|g| format!("{} {}", g.index, g.uuid))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )
    }
}

/// One problem per variable (secret or not) the plan's workers need that the environment lacks.
fn missing_variables(plan: &Plan, env: &dyn Env, problems: &mut Vec<String>) {
    for need in &plan.secrets {
        if non_empty(env, need.name).is_none() {
            problems.push(format!(
                "{} {} is not set; the {} worker{} need{} it ({}). Put it in the environment (compose passes it through from .env.secrets or the shell)",
                if need.secret { "secret" } else { "variable" },
                need.name,
                need.connectors.join(", "),
                if need.workers.len() == 1 { "" } else { "s" },
                if need.workers.len() == 1 { "s" } else { "" },
                need.workers.join(", ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::gpu::FakeBackend;

    fn profile(workers: &str, gpus: u32) -> Profile {
        serde_json::from_value(serde_json::json!({
            "description": "t", "workers": workers, "machine": {"gpus": gpus, "ram_gb": 8}
        }))
        .unwrap()
    }

    fn inventory(n: u32) -> Inventory {
        Inventory::detect_with(&FakeBackend::new(n), None)
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn a_mock_profile_without_fake_gpus_names_machine_fake_gpus() {
        let mut mock = profile("simulation-websocket:4:gpu", 2);
        mock.machine.gpu_mode = machine_model::profile::GpuMode::Mock;
        let err = plan("full-local", &mock, &env(&[]), &inventory(0))
            .unwrap_err()
            .problems;
        // (The test's inventory is a fake one, so its reason names the fake count.)
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(
            err[0].starts_with("profile full-local simulates its 2 GPUs (machine.gpu_mode: mock), but MACHINE_FAKE_GPUS is not set, so real ones were looked for: found 0")
                && err[0].ends_with(". Set MACHINE_FAKE_GPUS=2 (generated/full-local/.env sets it for docker-compose)")
                && !err[0].contains("MACHINE_ALLOW_FEWER_GPUS"),
            "{err:?}"
        );
        // With real GPUs planned, the fixes stay fewer GPUs or allowing fewer.
        let err = plan(
            "p",
            &profile("simulation-websocket:4:gpu", 2),
            &env(&[]),
            &inventory(0),
        )
        .unwrap_err()
        .problems;
        assert!(err[0].contains("MACHINE_ALLOW_FEWER_GPUS=true"), "{err:?}");
    }

    #[test]
    fn refuses_fewer_gpus_than_planned() {
        let err = plan(
            "p",
            &profile("simulation-websocket:auto", 2),
            &env(&[]),
            &inventory(1),
        )
        .unwrap_err()
        .problems;
        assert_eq!(err.len(), 1);
        assert!(
            err[0].starts_with("planned 2 GPUs, found 1; refusing to start. Found: 0 GPU-"),
            "{}",
            err[0]
        );
        assert!(
            err[0].contains("MACHINE_ALLOW_FEWER_GPUS=true"),
            "{}",
            err[0]
        );
    }

    #[test]
    fn re_plans_when_allowed() {
        let real = plan(
            "p",
            &profile("simulation-websocket:auto", 2),
            &env(&[("MACHINE_ALLOW_FEWER_GPUS", "true")]),
            &inventory(1),
        )
        .unwrap();
        assert_eq!(real.plan.gpus, 1);
        assert_eq!(real.plan.workers.len(), 1);
        assert_eq!(real.gpu_uuids.len(), 1);
        assert!(
            real.notes[0].contains("re-planning on 1"),
            "{:?}",
            real.notes
        );
    }

    #[test]
    fn environment_overrides_spec_gpus_and_id() {
        let e = env(&[
            ("WORKER_CONNECTORS", "simulation-websocket:3"),
            ("MACHINE_GPU_COUNT", "1"),
            ("MACHINE_ID", "box-7"),
        ]);
        let real = plan(
            "p",
            &profile("simulation-websocket:auto", 2),
            &e,
            &inventory(2),
        )
        .unwrap();
        assert_eq!(real.plan.worker_spec, "simulation-websocket:3:gpu");
        assert_eq!(real.plan.gpus, 1);
        assert_eq!(
            real.plan.workers[2].worker_id,
            "box-7-worker-simulation-websocket-2"
        );
        assert_eq!(real.gpu_uuids, vec![inventory(2).gpus[0].uuid.clone()]);
    }

    #[test]
    fn missing_secrets_are_named() {
        let err = plan(
            "p",
            &profile("openai:2,gemini:1", 0),
            &env(&[
                ("GEMINI_API_KEY", "x"),
                (
                    "GEMINI_NANO_BANANA_URL",
                    "https://g.example/v1beta/models/m:generateContent",
                ),
                ("OPENAI_IMAGE_MODEL", "m"),
                ("CLOUD_STORAGE_PROVIDER", "gcs"),
            ]),
            &inventory(0),
        )
        .unwrap_err()
        .problems;
        assert_eq!(err, vec![
            "secret OPENAI_API_KEY is not set; the openai workers need it (openai-worker-0, openai-worker-1). Put it in the environment (compose passes it through from .env.secrets or the shell)".to_string()
        ]);
        // The gemini connector's constructor throws without its URL (the worker would then load 0
        // connectors and fail every job while online): refused at start like a secret.
        let err = plan(
            "p",
            &profile("gemini:2", 0),
            &env(&[("GEMINI_API_KEY", "x")]),
            &inventory(0),
        )
        .unwrap_err()
        .problems;
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(err[0].starts_with("variable GEMINI_NANO_BANANA_URL is not set; the gemini workers need it (gemini-worker-0, gemini-worker-1)"), "{err:?}");
        let err = plan(
            "p",
            &profile("ollama:1", 0),
            &env(&[("OLLAMA_HOST", "h")]),
            &inventory(0),
        )
        .unwrap_err()
        .problems;
        assert_eq!(err.len(), 2, "{err:?}");
        assert!(err[0].starts_with("variable OLLAMA_DEFAULT_MODEL is not set; the ollama worker needs it (ollama-worker-0)"), "{err:?}");
    }

    #[test]
    fn base_ports_come_from_the_environment() {
        let e = env(&[("SIMULATION_BASE_PORT", "18500")]);
        let real = plan(
            "p",
            &profile("simulation-websocket:auto", 2),
            &e,
            &inventory(2),
        )
        .unwrap();
        assert_eq!(real.plan.services[1].port, Some(18501));
        let e = env(&[("SIMULATION_BASE_PORT", "x")]);
        let err = plan(
            "p",
            &profile("simulation-websocket:auto", 2),
            &e,
            &inventory(2),
        )
        .unwrap_err()
        .problems;
        assert!(err[0].starts_with("SIMULATION_BASE_PORT=\"x\""), "{err:?}");
    }

    #[test]
    fn bad_overrides_are_errors() {
        let err = plan(
            "p",
            &profile("openai:1", 0),
            &env(&[
                ("MACHINE_GPU_COUNT", "two"),
                ("MACHINE_ALLOW_FEWER_GPUS", "maybe"),
            ]),
            &inventory(0),
        )
        .unwrap_err()
        .problems;
        assert_eq!(err.len(), 2, "{err:?}");
        let err = plan(
            "p",
            &profile("openai:1", 0),
            &env(&[("WORKER_CONNECTORS", "opena:1")]),
            &inventory(0),
        )
        .unwrap_err()
        .problems;
        assert!(err[0].contains("did you mean \"openai\""), "{err:?}");
    }
}
