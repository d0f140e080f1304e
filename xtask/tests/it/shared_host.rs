//! Several machines on one multi-GPU host (`docker.host`): one Compose service per machine with its own
//! GPUs by index, its own machine id and its own published ports; the bad inputs (more machines × GPUs
//! than the host has, a host or fleet of zero) refused with one located error each and nothing written;
//! `cargo xtask check` warning against `--scale` where GPUs are reserved by count.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::{read, run, temp_root, xtask_in};

/// Four 2-GPU machines on an 8-GPU host, ports published (the checked-in example publishes none).
const SHARED: &str = r#"{
  "$schema": "../schemas/profile.schema.json",
  "description": "test: four 2-GPU machines on one 8-GPU host",
  "components": {"redis": ["default", "remote"], "api": "remote", "machine": ["default", "prod"],
                 "worker": "default", "comfyui": "default", "monitor": "remote"},
  "workers": "comfyui:2:gpu",
  "machine": {"gpus": 2, "ram_gb": 64},
  "docker": {"expose_ports": true, "host": {"gpus": 8, "machines": 4}}
}
"#;

fn write_profile(root: &Path, name: &str, text: &str) {
    std::fs::write(root.join("profiles").join(format!("{name}.json")), text).unwrap();
}

#[test]
fn machines_sharing_a_host_get_their_own_gpus_ids_and_ports() {
    let dir = temp_root();
    write_profile(dir.path(), "host-test", SHARED);
    let out = run(xtask_in(dir.path()).args(["env-build", "host-test"]));
    assert!(out.ok(), "{out}");
    let text = read(&dir.path().join("generated/host-test/docker-compose.yaml"));
    assert!(
        !text.contains("--scale"),
        "no scale warning with docker.host:\n{text}"
    );
    let compose: Value = serde_yaml::from_str(&text).unwrap();
    let services = compose["services"].as_object().unwrap();
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(names, ["machine-0", "machine-1", "machine-2", "machine-3"]);

    let mut gpus = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut published = BTreeSet::new();
    let mut targets = BTreeSet::new();
    for (n, name) in names.iter().enumerate() {
        let service = &services[*name];
        let device = &service["deploy"]["resources"]["reservations"]["devices"][0];
        let first = 2 * n;
        assert_eq!(
            device["device_ids"],
            serde_json::json!([first.to_string(), (first + 1).to_string()]),
            "{name}: {device}"
        );
        assert!(device.get("count").is_none(), "{name}: {device}");
        for id in device["device_ids"].as_array().unwrap() {
            assert!(gpus.insert(id.to_string()), "GPU {id} given twice");
        }
        let env = service["environment"].as_array().unwrap();
        let id: Vec<&str> = env
            .iter()
            .filter_map(|e| e.as_str()?.strip_prefix("MACHINE_ID="))
            .collect();
        assert_eq!(id, [format!("host-test-{n}")], "{name}");
        ids.insert(id[0].to_owned());
        let ports: Vec<(u16, u16)> = service["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                // "127.0.0.1:PUBLISHED:TARGET/tcp"
                let p = p.as_str().unwrap().strip_suffix("/tcp").unwrap();
                let mut parts = p.rsplitn(3, ':');
                let target = parts.next().unwrap().parse().unwrap();
                let host_port = parts.next().unwrap().parse().unwrap();
                assert_eq!(parts.next(), Some("127.0.0.1"));
                (host_port, target)
            })
            .collect();
        // The health port and one ComfyUI per GPU.
        assert_eq!(ports.len(), 3, "{name}: {ports:?}");
        let these: BTreeSet<u16> = ports.iter().map(|(_, t)| *t).collect();
        if n == 0 {
            targets = these.clone();
            assert!(
                ports.iter().all(|(p, t)| p == t),
                "machine-0 publishes as is: {ports:?}"
            );
        }
        assert_eq!(
            these, targets,
            "{name}: same container ports on every machine"
        );
        for (host_port, _) in ports {
            assert!(
                published.insert(host_port),
                "host port {host_port} published twice"
            );
        }
    }
    assert_eq!(gpus.len(), 8);
    assert_eq!(ids.len(), 4);
}

#[test]
fn too_many_gpus_for_the_host_and_zero_machines_are_located_errors_and_nothing_is_written() {
    let dir = temp_root();
    let over = SHARED
        .replace(r#""machines": 4"#, r#""machines": 5"#)
        .replace(
            r#""machine": {"gpus": 2, "ram_gb": 64},"#,
            r#""machine": {"gpus": 2, "ram_gb": 64}, "replicas": 0,"#,
        );
    write_profile(dir.path(), "host-over", &over);
    let zero = SHARED.replace(r#""machines": 4"#, r#""machines": 0"#);
    write_profile(dir.path(), "host-zero", &zero);
    // Every profile is loaded before anything is written: all three problems in one run.
    let out = run(xtask_in(dir.path()).args(["env-build", "host-over"]));
    assert_eq!(out.code, Some(1), "{out}");
    for line in [
        "profiles/host-over.json:7:53: /replicas: replicas is 0; a fleet has 1 to 1000 machines",
        "profiles/host-over.json:8:53: /docker/host/gpus: 5 machines × 2 GPUs (machine.gpus) need 10 GPUs but the host has 8; run at most 4 machine(s) of 2 GPUs on it (docker.host.machines)",
        "profiles/host-zero.json:8:68: /docker/host/machines: docker.host.machines is 0; a host runs 1 to 64 machines",
    ] {
        assert!(out.stderr.contains(line), "missing {line:?} in {out}");
    }
    assert_eq!(out.stderr.matches("profiles/host-").count(), 3, "{out}");
    for name in ["host-over", "host-zero"] {
        assert!(
            !dir.path().join("generated").join(name).exists(),
            "{name}: something was written"
        );
    }
}

#[test]
fn check_warns_against_scale_where_gpus_are_reserved_by_count() {
    let dir = temp_root();
    let out = run(xtask_in(dir.path()).arg("check"));
    assert!(out.ok(), "{out}");
    assert!(
        out.stderr.contains(
            "warning: generated/prod-gpu/docker-compose.yaml: do not `--scale machine=N`: the reservation of 4 GPU(s) is per container"
        ),
        "{out}"
    );
    // Mock GPUs reserve nothing, and machines sharing a host have their own GPUs already.
    for quiet in ["full-local", "gpu-host-4x2", "api-only"] {
        assert!(
            !out.stderr.contains(&format!("generated/{quiet}/")),
            "{quiet}: {out}"
        );
    }
    let compose = read(&dir.path().join("generated/prod-gpu/docker-compose.yaml"));
    assert!(
        compose
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("# do not `--scale machine=N`")),
        "{compose}"
    );
}
