//! Every generated `stack.yaml` (Docker Swarm) against both vendored Compose schemas, and what it promises
//! beside the compose file of the same plan: only what Swarm reads (an `image`, no `build`, `env_file`,
//! `ports`, `restart`, `depends_on` or `shm_size`), the profile's `replicas`, one task replaced at a time
//! stopping the old one first, the compose file's stop budget and healthcheck, a machine id and host name
//! per task slot, `.env`'s values inline and unquoted, GPUs as Swarm generic resources only when real.
//! The deployment itself is `machine-runtime`'s `tests/it/swarm.rs`.

use serde_json::Value;

use crate::{assert_no_problems, generated, profiles, read, read_json};

fn yaml(profile: &str, file: &str) -> Value {
    let text = read(&generated(profile).join(file));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("generated/{profile}/{file}: {e}"))
}

fn profile_json(profile: &str) -> Value {
    read_json(&crate::root().join(format!("profiles/{profile}.json")))
}

#[test]
fn every_stack_file_is_valid_against_both_vendored_compose_schemas() {
    let validators = crate::compose_schema::validators();
    let mut problems = Vec::new();
    for profile in profiles() {
        let instance = yaml(&profile, "stack.yaml");
        for (file, validator) in &validators {
            for error in validator.iter_errors(&instance) {
                problems.push(format!(
                    "generated/{profile}/stack.yaml: {file}: {}: {error}",
                    error.instance_path().as_str()
                ));
            }
        }
    }
    assert_no_problems("the generated stack files", &problems);
}

#[test]
fn every_stack_file_holds_what_swarm_reads_from_the_same_plan() {
    let mut problems = Vec::new();
    for profile in profiles() {
        let stack = yaml(&profile, "stack.yaml");
        let compose = yaml(&profile, "docker-compose.yaml");
        let m = &stack["services"]["machine"];
        // One `machine` service, or `machine-0` … when several machines share a host (docker.host):
        // Swarm runs each as a replica of the one stack service.
        let c = match &compose["services"]["machine"] {
            Value::Null => &compose["services"]["machine-0"],
            one => one,
        };
        let mut fail =
            |what: String| problems.push(format!("generated/{profile}/stack.yaml: {what}"));
        if m["image"] != c["image"] || !m["image"].is_string() {
            fail(format!(
                "image {} is not the compose file's {}",
                m["image"], c["image"]
            ));
        }
        for key in [
            "build",
            "env_file",
            "ports",
            "restart",
            "depends_on",
            "shm_size",
        ] {
            for (name, service) in stack["services"].as_object().unwrap() {
                if !service[key].is_null() {
                    fail(format!(
                        "service {name} has `{key}`, which Swarm does not read"
                    ));
                }
            }
        }
        let replicas = profile_json(&profile)["replicas"].as_u64().unwrap_or(1);
        if m["deploy"]["replicas"] != replicas {
            fail(format!(
                "deploy.replicas {} is not the profile's {replicas}",
                m["deploy"]["replicas"]
            ));
        }
        for config in ["update_config", "rollback_config"] {
            let c = &m["deploy"][config];
            if c["order"] != "stop-first" || c["parallelism"] != 1 {
                fail(format!(
                    "{config} {c} does not replace one task at a time, stop-first"
                ));
            }
        }
        if m["stop_grace_period"] != c["stop_grace_period"] || m["stop_signal"] != "SIGTERM" {
            fail(format!(
                "stop {} / {} is not the compose file's SIGTERM / {}",
                m["stop_signal"], m["stop_grace_period"], c["stop_grace_period"]
            ));
        }
        if m["healthcheck"]["test"] != c["healthcheck"]["test"] {
            fail("its healthcheck is not the compose file's".into());
        }
        // The environment: `.env`'s values inline, unquoted, MACHINE_ID per slot.
        let env: Vec<&str> = m["environment"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let dotenv = generated(&profile).join(".env");
        let id = dotenvy::from_path_iter(&dotenv)
            .unwrap()
            .map(Result::unwrap)
            .find(|(k, _)| k == "MACHINE_ID")
            .map(|(_, v)| v)
            .unwrap();
        let slot_id = format!("{id}-{{{{.Task.Slot}}}}");
        if m["hostname"] != slot_id.as_str()
            || !env.contains(&format!("MACHINE_ID={slot_id}").as_str())
        {
            fail(format!(
                "machine id and host name are not {slot_id}: {} / {env:?}",
                m["hostname"]
            ));
        }
        for item in dotenvy::from_path_iter(&dotenv).unwrap() {
            let (k, v) = item.unwrap();
            if k == "MACHINE_ID" {
                continue;
            }
            let want = format!("{k}={}", v.replace('$', "$$"));
            if !env.contains(&want.as_str()) {
                fail(format!(
                    "`{want}` from .env is missing from the environment"
                ));
            }
        }
        // GPUs: generic resources for real ones, nothing for mock ones, never Compose's device requests.
        let reservations = &m["deploy"]["resources"]["reservations"];
        if !reservations["devices"].is_null() {
            fail("Swarm does not read device requests".into());
        }
        let device = &c["deploy"]["resources"]["reservations"]["devices"][0];
        let real_gpus = device["count"].as_u64().or_else(|| {
            device["device_ids"]
                .as_array()
                .and_then(|ids| u64::try_from(ids.len()).ok())
        });
        let generic = &reservations["generic_resources"][0]["discrete_resource_spec"];
        match real_gpus {
            Some(n) if generic["kind"] != "NVIDIA-GPU" || generic["value"] != n => {
                fail(format!(
                    "{n} GPUs are not reserved as NVIDIA-GPU generic resources: {reservations}"
                ));
            }
            None if !reservations.is_null() => {
                fail(format!("reserves {reservations} without real GPUs"))
            }
            _ => {}
        }
    }
    assert_no_problems("the generated stack files", &problems);
}

#[test]
fn a_gpu_fleet_stack_reserves_each_replica_its_gpus_and_runs_three() {
    let stack = yaml("gpu-mixed", "stack.yaml");
    let m = &stack["services"]["machine"];
    assert_eq!(m["deploy"]["replicas"], 3);
    assert_eq!(
        m["deploy"]["resources"]["reservations"]["generic_resources"][0]["discrete_resource_spec"]
            ["value"],
        2
    );
    // shm_size becomes a tmpfs of that size on /dev/shm.
    let shm = m["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["target"] == "/dev/shm")
        .expect("a /dev/shm tmpfs");
    assert_eq!(shm["type"], "tmpfs");
    assert_eq!(shm["tmpfs"]["size"], 8u64 << 30);
}
