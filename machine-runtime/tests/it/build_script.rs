//! A broken profile breaks the build: `cargo check` with `MACHINE_PROFILES_DIR` pointing at a valid
//! profile and two broken ones fails with one located `file:line:col: /pointer: message` per problem.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

const SPEC_TYPO: &str = r#"{
  "$schema": "../schemas/profile.schema.json",
  "description": "a worker spec typo",
  "workers": "comfyu:2",
  "machine": { "gpus": 1, "ram_gb": 8 }
}
"#;

const SCHEMA_VIOLATIONS: &str = r#"{
  "$schema": "../schemas/profile.schema.json",
  "description": "schema violations, and a worker spec the model rejects",
  "workers": "openai:0",
  "machine": { "gpus": -1, "ram_gb": 8 },
  "docker": { "restart": "sometimes" },
  "dockr": {}
}
"#;

#[test]
fn broken_profiles_fail_the_build_with_located_errors() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("profiles");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(
        workspace.join("profiles/gpu-mixed.json"),
        dir.join("gpu-mixed.json"),
    )
    .unwrap();
    // The profiles' component files, which the validator resolves as `cargo xtask check` does.
    copy_components(workspace, &dir);
    std::fs::write(dir.join("spec-typo.json"), SPEC_TYPO).unwrap();
    std::fs::write(dir.join("schema-violations.json"), SCHEMA_VIOLATIONS).unwrap();

    // A target directory of its own: the outer `cargo test` holds the lock of the main one. It is kept
    // between runs, so only the first run compiles the build script's dependencies.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("broken-profile-check");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let output = Command::new(cargo)
        .args(["check", "--quiet", "--package", "machine-runtime", "--lib"])
        .current_dir(workspace)
        .env("MACHINE_PROFILES_DIR", &dir)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .output()
        .unwrap();
    eprintln!(
        "cargo check with broken profiles took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the build succeeded:\n{stderr}");

    let shown = dir.display();
    let expected = [
        format!(
            "{shown}/schema-violations.json:4:14: /workers: worker spec item 1 \"openai:0\" (column 8): count is 0; expected a positive integer or \"auto\" (remove the item to run no such workers)\n"
        ),
        format!(
            "{shown}/schema-violations.json:5:24: /machine/gpus: -1 is below the minimum 0; allowed: an integer from 0 to 64\n"
        ),
        format!(
            "{shown}/schema-violations.json:6:26: /docker/restart: \"sometimes\" matches none of the allowed forms; allowed: one of \"no\", \"always\", \"on-failure\", \"unless-stopped\"\n"
        ),
        format!(
            "{shown}/schema-violations.json:7:12: /dockr: unknown field \"dockr\" (did you mean \"docker\"?); allowed: $schema, description, components, workers, worker_bundle, machine, replicas, docker, env, comfyui\n"
        ),
        format!(
            "{shown}/spec-typo.json:4:14: /workers: worker spec item 1 \"comfyu:2\" (column 1): unknown connector \"comfyu\"; did you mean \"comfyui\"?"
        ),
    ]
    .map(|problem| format!("error: machine-runtime@0.0.0: {problem}"));
    for line in &expected {
        assert!(
            stderr.contains(line.as_str()),
            "missing {line:?} in:\n{stderr}"
        );
    }
    // One line per problem, all of them in one run: serde's own "invalid value: integer `-1`" is
    // folded into the schema's line, the worker spec is checked although serde gave up, and the valid
    // profile says nothing.
    let problems = stderr
        .lines()
        .filter(|l| l.starts_with("error: machine-runtime@"))
        .count();
    assert_eq!(problems, expected.len(), "{stderr}");
    assert!(!stderr.contains("gpu-mixed.json"), "{stderr}");
}

/// Copies the workspace's `profiles/components/*.env` into `<dir>/components`.
fn copy_components(workspace: &Path, dir: &Path) {
    let components = dir.join("components");
    std::fs::create_dir_all(&components).unwrap();
    for entry in std::fs::read_dir(workspace.join("profiles/components")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, components.join(path.file_name().unwrap())).unwrap();
    }
}
