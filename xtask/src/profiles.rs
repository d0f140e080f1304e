//! Finding the repository and loading its profiles, with every problem of every profile reported.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use machine_model::load::{self, ProfileSource};
use machine_model::{Plan, Profile};

/// The repository root: `XTASK_ROOT` when set (tests run the CLI on a temporary copy), else this crate's
/// parent directory.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("XTASK_ROOT").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
}

/// A loaded, checked profile.
pub struct Loaded {
    /// Its name and text.
    pub source: ProfileSource,
    /// The parsed profile.
    pub profile: Profile,
    /// Its plan without overrides.
    pub plan: Plan,
}

/// Reads every profile under `profiles/`; fails listing every problem of every profile.
pub fn load_all() -> anyhow::Result<Vec<Loaded>> {
    let dir = root().join("profiles");
    let sources =
        load::read_dir(&dir, "profiles").with_context(|| format!("reading {}", dir.display()))?;
    let mut loaded = Vec::new();
    let mut problems = Vec::new();
    for source in sources {
        match load::check(&source) {
            Ok((profile, plan)) => loaded.push(Loaded {
                source,
                profile,
                plan,
            }),
            Err(diags) => problems.extend(diags.iter().map(|d| d.to_string())),
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} problem(s) in profiles:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
    Ok(loaded)
}

/// Loads one profile by name, suggesting a close name when it does not exist.
pub fn load_one(name: &str) -> anyhow::Result<Loaded> {
    let all = load_all()?;
    let names: Vec<&str> = all.iter().map(|l| l.source.name.as_str()).collect();
    if let Some(i) = names.iter().position(|n| *n == name) {
        return Ok(all.into_iter().nth(i).expect("index is in range"));
    }
    let hint = machine_model::spec::suggest(name, &names)
        .map(|s| format!("; did you mean \"{s}\"?"))
        .unwrap_or_default();
    bail!(
        "unknown profile \"{name}\"{hint} (profiles: {})",
        names.join(", ")
    )
}
