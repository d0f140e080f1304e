//! Finding the repository and loading its profiles and component files through the one profile
//! validator (`machine-profile-check`, the same as machine-runtime's build.rs), with every problem of
//! every profile reported in one run.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::bail;
use machine_profile_check::{Schema, validate_profiles};

/// A loaded, checked profile: its source, profile, plan (with component settings) and resolved variables.
pub type Loaded = machine_profile_check::Validated;

/// The repository root: `XTASK_ROOT` when set (tests run on a copy), else this crate's parent directory.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("XTASK_ROOT") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
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
