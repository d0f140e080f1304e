//! A real Compose implementation reads every generated compose file: Debian's `docker-compose` 1.29 runs
//! `config -q` (and `config`) in the profile's folder, with no Docker engine. A negative check proves that the
//! same invocation rejects broken files.

use serde_json::Value;

use crate::{assert_no_problems, compose_command, generated, profiles, read, run};

#[test]
fn docker_compose_v1_accepts_every_generated_compose_file() {
    let mut problems = Vec::new();
    for profile in profiles() {
        let dir = generated(&profile);
        let out = run(compose_command(&dir).args(["-f", "docker-compose.yaml", "config", "-q"]));
        if !out.ok() {
            problems.push(format!(
                "generated/{profile}: docker-compose config -q failed: {out}"
            ));
        } else if out.stderr.contains("WARNING") {
            // An unset variable in the file becomes an empty string plus this warning: never acceptable here.
            problems.push(format!(
                "generated/{profile}: docker-compose warned:\n{}",
                out.stderr
            ));
        }
    }
    assert_no_problems("docker-compose v1 reading the generated files", &problems);
}

/// What docker-compose v1 understood (its normalised `config` output) keeps the GPU count and the ports we
/// wrote: YAML 1.1 re-typed nothing.
#[test]
fn docker_compose_v1_reads_gpu_count_and_ports_as_written() {
    let mut problems = Vec::new();
    for profile in profiles() {
        let dir = generated(&profile);
        let ours: Value = serde_yaml::from_str(&read(&dir.join("docker-compose.yaml")))
            .unwrap_or_else(|e| panic!("generated/{profile}/docker-compose.yaml: {e}"));
        let out = run(compose_command(&dir).args(["-f", "docker-compose.yaml", "config"]));
        if !out.ok() {
            problems.push(format!(
                "generated/{profile}: docker-compose config failed: {out}"
            ));
            continue;
        }
        let theirs: Value = match serde_yaml::from_str(&out.stdout) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!(
                    "generated/{profile}: docker-compose printed no YAML ({e}): {out}"
                ));
                continue;
            }
        };
        let services = ours["services"].as_object().cloned().unwrap_or_default();
        for (name, service) in &services {
            let devices = "/deploy/resources/reservations/devices";
            if service.pointer(devices) != theirs["services"][name].pointer(devices) {
                problems.push(format!(
                    "generated/{profile}: services.{name}{devices}: we wrote {:?}, docker-compose read {:?}",
                    service.pointer(devices),
                    theirs["services"][name].pointer(devices)
                ));
            }
            if service.get("ports") != theirs["services"][name].get("ports") {
                problems.push(format!(
                    "generated/{profile}: services.{name}.ports: we wrote {:?}, docker-compose read {:?}",
                    service.get("ports"),
                    theirs["services"][name].get("ports")
                ));
            }
        }
    }
    assert_no_problems(
        "docker-compose v1's reading of the generated files",
        &problems,
    );
}

/// The same invocation fails on files with mistakes a renderer could make, naming the mistake.
#[test]
fn docker_compose_v1_rejects_broken_compose_files() {
    let cases = [
        (
            "a port list under a wrong key",
            "services:\n  machine:\n    image: \"busybox\"\n    portz:\n      - \"22:22\"\n",
            "portz",
        ),
        (
            "the short gpus key (Compose 2.30+ only)",
            "services:\n  machine:\n    image: \"busybox\"\n    gpus: \"all\"\n",
            "gpus",
        ),
        (
            "a top-level name (Compose v2 only)",
            "name: \"x\"\nservices:\n  machine:\n    image: \"busybox\"\n",
            "name",
        ),
    ];
    for (what, text, named) in cases {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("docker-compose.yaml"), text)
            .expect("writing the broken file");
        let out =
            run(compose_command(dir.path()).args(["-f", "docker-compose.yaml", "config", "-q"]));
        assert!(!out.ok(), "docker-compose accepted {what}:\n{text}\n{out}");
        assert!(
            out.stderr.contains(&format!("'{named}'")),
            "docker-compose rejected {what} without naming '{named}': {out}"
        );
    }
}
