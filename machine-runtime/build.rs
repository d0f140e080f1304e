//! Validates every `profiles/*.json` with the one profile validator (`machine-profile-check`: the JSON
//! Schema `schemas/profile.schema.json`, the model, the plan and the component files, exactly as
//! `cargo xtask check` does) and bakes them into typed constants in `OUT_DIR/profiles.rs`, included by
//! `src/profiles.rs`.
//!
//! Every problem in every profile is collected first; the build then fails once, with one
//! `cargo::error=profiles/x.json:LINE:COL: /pointer: what is wrong; allowed: …` line per problem.
//! `MACHINE_PROFILES_DIR` replaces the profiles directory (the broken-profile test uses it).

use std::path::{Path, PathBuf};

use machine_profile_check::{Diagnostic, Schema, bake, input_files, validate_profiles};

/// The environment variable that replaces `<workspace>/profiles`.
const PROFILES_DIR_ENV: &str = "MACHINE_PROFILES_DIR";

fn main() {
    if let Err(problems) = run() {
        for problem in &problems {
            // One line per problem: Cargo reads build-script output line by line.
            println!("cargo::error={}", problem.one_line());
        }
    }
}

fn run() -> Result<(), Vec<Diagnostic>> {
    let fail = |message: String| vec![Diagnostic::error("machine-runtime/build.rs", None, message)];
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR").map_err(fail)?);
    let root = manifest_dir.parent().ok_or_else(|| {
        fail(format!(
            "{} has no parent directory",
            manifest_dir.display()
        ))
    })?;
    println!("cargo::rerun-if-env-changed={PROFILES_DIR_ENV}");
    let (dir, shown_dir) = match std::env::var_os(PROFILES_DIR_ENV) {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            let shown = dir.display().to_string();
            (dir, shown)
        }
        _ => (root.join("profiles"), "profiles".to_string()),
    };
    let schema_path = root.join("schemas").join("profile.schema.json");
    println!("cargo::rerun-if-changed={}", dir.display());
    println!(
        "cargo::rerun-if-changed={}",
        dir.join("components").display()
    );
    println!("cargo::rerun-if-changed={}", schema_path.display());
    for file in input_files(&dir) {
        println!("cargo::rerun-if-changed={}", file.display());
    }
    if !dir.is_dir() {
        return Err(fail(format!(
            "{shown_dir}: the profiles directory does not exist; create it or point {PROFILES_DIR_ENV} at one"
        )));
    }

    let schema =
        Schema::from_file(&schema_path, "schemas/profile.schema.json").map_err(|d| vec![d])?;
    let validated = validate_profiles(&dir, &shown_dir, &schema)?;
    let out = PathBuf::from(env("OUT_DIR").map_err(fail)?).join("profiles.rs");
    write_if_changed(&out, &bake::source(&validated))
        .map_err(|e| fail(format!("cannot write {}: {e}", out.display())))
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|e| format!("environment variable {name}: {e}"))
}

fn write_if_changed(path: &Path, contents: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    std::fs::write(path, contents)
}
