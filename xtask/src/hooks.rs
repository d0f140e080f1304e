//! `cargo xtask install-hooks`: a git pre-commit hook that runs the drift check.

use anyhow::Context;

use crate::profiles;

const HOOK: &str = "#!/bin/sh\n# Installed by `cargo xtask install-hooks`: refuse commits whose generated files are stale.\nexec cargo xtask check\n";

pub fn install() -> anyhow::Result<()> {
    let root = profiles::root();
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--git-path", "hooks"])
        .current_dir(&root)
        .output()
        .context("running git rev-parse (is git installed?)")?;
    anyhow::ensure!(
        out.status.success(),
        "{} is not a git checkout",
        root.display()
    );
    let dir = root.join(String::from_utf8_lossy(&out.stdout).trim());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("pre-commit");
    if let Ok(existing) = std::fs::read_to_string(&path)
        && existing != HOOK
    {
        anyhow::bail!(
            "{} exists and is not ours; add `cargo xtask check` to it by hand",
            path.display()
        );
    }
    std::fs::write(&path, HOOK).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    println!("installed {} (runs `cargo xtask check`)", path.display());
    Ok(())
}
