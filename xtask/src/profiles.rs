//! Finding the repository and loading its profiles and component files through the one profile
//! validator (`machine-profile-check`, the same as machine-runtime's build.rs), with every problem of
//! every profile reported in one run.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::bail;
use machine_profile_check::{Schema, validate_profiles};

/// A loaded, checked profile: its source, profile, plan (with component settings) and resolved variables.
pub type Loaded = machine_profile_check::Validated;

/// The checkout found by [`find_root`], once per run.
static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// The repository root the xtask acts on: `XTASK_ROOT` when set (tests run on a copy), else the nearest
/// directory at or above the current directory whose `Cargo.toml` declares `[workspace]`, as cargo finds
/// its workspace. Never a path fixed at compile time: two clones sharing one `CARGO_TARGET_DIR` run one
/// binary, and each must act on its own checkout.
///
/// Errors: the current directory cannot be read, or no `Cargo.toml` with `[workspace]` is at or above it.
pub fn find_root() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XTASK_ROOT") {
        return Ok(PathBuf::from(dir));
    }
    let cwd = std::env::current_dir()
        .map_err(|e| anyhow::anyhow!("reading the current directory: {e}"))?;
    cwd.ancestors()
        .find(|dir| declares_workspace(&dir.join("Cargo.toml")))
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no Cargo.toml with [workspace] at or above {}; run `cargo xtask` inside a checkout of this repository",
                cwd.display()
            )
        })
}

/// Whether a `Cargo.toml` has a `[workspace]` table header on a line of its own (false when unreadable).
fn declares_workspace(manifest: &Path) -> bool {
    std::fs::read_to_string(manifest)
        .is_ok_and(|text| text.lines().any(|line| line.trim() == "[workspace]"))
}

/// The repository root ([`find_root`]), found on first use. `main` calls [`find_root`] first and reports its
/// error, so the exit here is only for a caller that skipped it.
pub fn root() -> PathBuf {
    ROOT.get_or_init(|| {
        find_root().unwrap_or_else(|e| {
            eprintln!("error: {e:#}");
            std::process::exit(1)
        })
    })
    .clone()
}

/// The profile schema as the model renders it now, compiled once. The model's schema rather than the
/// checked-in file: `codegen` must work after a model change that makes the file stale (and `check`
/// reports the file stale); when the file is fresh, as `check` ensures, the build script's schema is
/// this one.
fn schema() -> anyhow::Result<&'static Schema> {
    static SCHEMA: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Schema::from_text(&crate::schema::render(), crate::schema::PATH)
                .map_err(|d| d.one_line())
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Reads every profile under `profiles/` and the component files under `profiles/components/`; fails
/// listing every problem of every profile and component file.
pub fn load_all() -> anyhow::Result<Vec<Loaded>> {
    let dir = root().join("profiles");
    validate_profiles(&dir, "profiles", schema()?).or_else(|problems| {
        bail!(
            "{} problem(s) in profiles:\n{}",
            problems.len(),
            problems
                .iter()
                .map(|d| d.one_line())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

/// Loads one profile by name, suggesting a close name when it does not exist.
pub fn load_one(name: &str) -> anyhow::Result<Loaded> {
    let all = load_all()?;
    let names: Vec<&str> = all.iter().map(|l| l.source.name.as_str()).collect();
    if let Some(i) = names.iter().position(|n| *n == name) {
        return Ok(all.into_iter().nth(i).expect("index is in range"));
    }
    let hint = machine_model::suggest::did_you_mean(name, names.iter().copied())
        .map(|s| format!("; did you mean \"{s}\"?"))
        .unwrap_or_default();
    bail!(
        "unknown profile \"{name}\"{hint} (profiles: {})",
        names.join(", ")
    )
}
