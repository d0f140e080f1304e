//! Secret values never reach generated/ nor command output: a canary planted in the environment of every
//! command (and in a profile, where it must be refused) is searched for in every file and every output;
//! and `cargo xtask secrets` lists the names the example file it writes asks for.

use std::path::Path;

use crate::{run, temp_root, xtask_in};

const CANARY: &str = "canary-5f1e9c2b-secret-value";

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading a directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn a_canary_secret_never_reaches_generated_files_or_output() {
    let dir = temp_root();
    let secrets = [
        "OPENAI_API_KEY",
        "REPLICATE_API_TOKEN",
        "GEMINI_API_KEY",
        "HUB_REDIS_URL",
    ];
    let mut outputs = Vec::new();
    for args in [
        vec!["codegen"],
        vec!["env-build", "--all"],
        vec!["secrets", "gpu-mixed"],
        vec!["secrets", "api-only"],
        vec!["explain", "gpu-mixed", "OPENAI_API_KEY"],
        vec!["explain", "api-only", "HUB_REDIS_URL"],
        vec!["plan", "api-gateway", "--format", "json"],
        vec!["check"],
    ] {
        let mut cmd = xtask_in(dir.path());
        cmd.args(&args);
        for s in secrets {
            cmd.env(s, format!("redis://user:{CANARY}@host:6379/{s}"));
        }
        let out = run(&mut cmd);
        assert!(out.ok(), "xtask {args:?} failed: {out}");
        outputs.push((args.join(" "), out.stdout + &out.stderr));
    }
    // The commands really ran and said something about the secrets.
    assert!(outputs[2].1.contains("OPENAI_API_KEY"), "{}", outputs[2].1);
    assert!(
        outputs[4].1.contains("<secret OPENAI_API_KEY>"),
        "{}",
        outputs[4].1
    );
    for (what, text) in &outputs {
        assert!(
            !text.contains(CANARY),
            "the canary leaked into the output of xtask {what}:\n{text}"
        );
    }
    let mut files = Vec::new();
    files_under(&dir.path().join("generated"), &mut files);
    assert!(
        files.len() >= 24,
        "expected every profile's files, found {}",
        files.len()
    );
    for f in files {
        let text = std::fs::read_to_string(&f).expect("generated files are text");
        assert!(
            !text.contains(CANARY),
            "the canary leaked into {}",
            f.display()
        );
    }
}

#[test]
fn a_secret_given_a_value_in_a_profile_is_refused_without_echoing_it() {
    let dir = temp_root();
    let path = dir.path().join("profiles/gpu-mixed.json");
    let mut profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    profile["env"] = serde_json::json!({ "OPENAI_API_KEY": CANARY });
    std::fs::write(&path, serde_json::to_string_pretty(&profile).unwrap()).unwrap();
    let out = run(xtask_in(dir.path()).args(["env-build", "gpu-mixed"]));
    assert!(
        !out.ok(),
        "a secret value in a profile must be refused: {out}"
    );
    assert!(
        out.stderr.contains("OPENAI_API_KEY"),
        "the error names the secret: {out}"
    );
    assert!(
        !out.stderr.contains(CANARY) && !out.stdout.contains(CANARY),
        "the error echoes the value: {out}"
    );
}

/// `cargo xtask secrets P` lists exactly the variables, in the same order, that the
/// `.env.secrets.example` it writes asks to fill in (issue 21: it listed 3 names, the file 4), for every
/// profile.
#[test]
fn the_listed_names_are_the_names_of_the_file_written() {
    let dir = crate::temp_root();
    for profile in crate::profiles() {
        let out = crate::run(crate::xtask_in(dir.path()).args(["secrets", &profile]));
        assert!(out.ok(), "{out}");
        let listed: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| l.split_once("  needed by ").map(|(name, _)| name))
            .collect();
        let file = crate::read(
            &dir.path()
                .join(format!("generated/{profile}/.env.secrets.example")),
        );
        let in_file: Vec<&str> = file
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.strip_suffix('='))
            .collect();
        assert_eq!(listed, in_file, "{profile}: {out}\n{file}");
        if profile == "api-only" {
            assert!(listed.contains(&"CLOUD_STORAGE_PROVIDER"), "{out}");
        }
    }
}
