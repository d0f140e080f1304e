//! Validates every `profiles/*.json` with the one profile validator (`machine-profile-check`: the JSON
//! Schema `schemas/profile.schema.json`, the model, the plan and the component files, exactly as
//! `cargo xtask check` does) and bakes them into typed constants in `OUT_DIR/profiles.rs`, included by
//! `src/profiles.rs`.
//!
//! Every problem in every profile is collected first; the build then fails once, with one
//! `cargo::error=profiles/x.json:LINE:COL: /pointer: what is wrong; allowed: …` line per problem.
//! `MACHINE_PROFILES_DIR` replaces the profiles directory (the broken-profile test uses it).
//!
//! It also stamps the build with its git commit for `--version` (`MACHINE_BUILD_COMMIT`): the
//! `MACHINE_GIT_COMMIT` environment variable when set (an image build without `.git`: `docker build
//! --build-arg MACHINE_GIT_COMMIT=$(git rev-parse --short=12 HEAD)`), else `git rev-parse` of the
//! checkout, else `unknown`.

use std::path::{Path, PathBuf};

use machine_profile_check::{Diagnostic, Schema, bake, input_files, validate_profiles};

/// The environment variable that replaces `<workspace>/profiles`.
const PROFILES_DIR_ENV: &str = "MACHINE_PROFILES_DIR";
/// The environment variable that names the commit when the build has no git checkout.
const COMMIT_ENV: &str = "MACHINE_GIT_COMMIT";

fn main() {
    println!("cargo::rustc-env=MACHINE_BUILD_COMMIT={}", commit());
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

/// The commit being built: `MACHINE_GIT_COMMIT`, else the checkout's `HEAD` (12 hex digits), else
/// `unknown`. Reruns when `HEAD` or the branch it names moves.
fn commit() -> String {
    println!("cargo::rerun-if-env-changed={COMMIT_ENV}");
    if let Some(commit) = std::env::var(COMMIT_ENV)
        .ok()
        .filter(|c| !c.trim().is_empty())
    {
        return commit.trim().to_owned();
    }
    // The build script runs git at build time, not a supervised child: the runtime's rule is not for it.
    #[allow(clippy::disallowed_methods)]
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".to_owned();
    };
    // Only files that exist: a missing one would make Cargo rerun this script on every build.
    let watch = [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--symbolic-full-name", "HEAD"])
            .and_then(|branch| git(&["rev-parse", "--git-path", &branch])),
        git(&["rev-parse", "--git-path", "packed-refs"]),
    ];
    for path in watch.into_iter().flatten() {
        if Path::new(&path).exists() {
            println!("cargo::rerun-if-changed={path}");
        }
    }
    head
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
