//! One validator: `cargo build` (machine-runtime's build script, `MACHINE_PROFILES_DIR`) and
//! `cargo xtask check` (`XTASK_ROOT`) give the same verdict, with the same messages in the same order, on
//! a copy of every repository profile, and on that copy plus broken profiles, among them the ones where
//! the two used to disagree (a schema-only violation the xtask let through, a component problem the
//! build let through).

use std::path::Path;
use std::process::Command;

use crate::{run, temp_root, xtask_in};

/// The prefix Cargo puts before each `cargo::error=` line of machine-runtime's build script.
const BUILD_ERROR: &str = "error: machine-runtime@0.0.0: ";

/// `cargo check` of machine-runtime with `MACHINE_PROFILES_DIR=<root>/profiles`: whether it passed, and
/// its problems with the directory shown as `profiles`.
fn build_verdict(root: &Path) -> (bool, Vec<String>) {
    let workspace = crate::root();
    let dir = root.join("profiles");
    // The broken-profile build test's own target directory (the outer `cargo test` holds the lock of
    // the main one); kept between runs, so only the build script and the runtime are checked again.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("broken-profile-check");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["check", "--quiet", "--package", "machine-runtime", "--lib"])
        .current_dir(&workspace)
        .env("MACHINE_PROFILES_DIR", &dir)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .output()
        .expect("running cargo check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let shown = format!("{}/", dir.display());
    let problems = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(BUILD_ERROR))
        .map(|l| l.replace(&shown, "profiles/"))
        .collect();
    (output.status.success(), problems)
}

/// `cargo xtask check` on `root`: whether it passed, and its problems with the profiles.
fn xtask_verdict(root: &Path) -> (bool, Vec<String>) {
    let out = run(xtask_in(root).arg("check"));
    let mut lines = out.stderr.lines();
    let problems = match lines.next() {
        Some(first) if first.ends_with("problem(s) in profiles:") => {
            lines.map(str::to_string).collect()
        }
        _ => Vec::new(),
    };
    (out.ok(), problems)
}

/// The build's and the xtask's verdicts on `root`, which must be the same.
fn agree(root: &Path) -> (bool, Vec<String>) {
    let build = build_verdict(root);
    let xtask = xtask_verdict(root);
    assert_eq!(
        build, xtask,
        "cargo build (left) and cargo xtask check (right) disagree"
    );
    build
}

/// Writes `profiles/<name>.json` under `root`: `profiles/api-only.json` with `edit` applied.
fn broken(root: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut profile: serde_json::Value =
        serde_json::from_str(&crate::read(&root.join("profiles/api-only.json"))).unwrap();
    edit(&mut profile);
    std::fs::write(
        root.join(format!("profiles/{name}.json")),
        serde_json::to_string_pretty(&profile).unwrap(),
    )
    .unwrap();
}

#[test]
fn cargo_build_and_xtask_check_agree_on_every_profile() {
    let dir = temp_root();
    let root = dir.path();
    let (ok, problems) = agree(root);
    assert!(ok && problems.is_empty(), "{problems:#?}");

    // Schema only: the model takes a machine with 0 GiB of memory, the schema does not (the xtask
    // used to let it through).
    broken(root, "ram-zero", |p| p["machine"]["ram_gb"] = 0.into());
    // Components only: the profile's env overrides a derived variable (the build used to let it through).
    broken(root, "env-override", |p| {
        p["env"] = serde_json::json!({ "MACHINE_GPU_COUNT": "4" })
    });
    // Components only: a compose condition names a section the component file does not have.
    broken(root, "variant-typo", |p| {
        p["docker"]["services"] = serde_json::json!({
            "cache": { "image": "redis:7", "when": { "component": "redis", "variant": "remot" } }
        })
    });
    // The schema and the model together: an unknown field, a wrong value, a worker spec typo.
    broken(root, "mixed", |p| {
        p["dockr"] = serde_json::json!({});
        p["docker"]["restart"] = "sometimes".into();
        p["workers"] = "opena:4:shared".into();
    });
    let (ok, problems) = agree(root);
    assert!(!ok, "broken profiles passed");
    for (file, pointer) in [
        ("env-override", "/env/MACHINE_GPU_COUNT"),
        ("mixed", "/docker/restart"),
        ("mixed", "/dockr"),
        ("mixed", "/workers"),
        ("ram-zero", "/machine/ram_gb"),
        ("variant-typo", "/docker/services/cache/when/variant"),
    ] {
        let at = format!("profiles/{file}.json:");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&at) && p.contains(&format!(": {pointer}: "))),
            "no problem at {at} {pointer} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), 6, "{problems:#?}");
}
