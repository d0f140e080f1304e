//! `cargo xtask install-hooks`: a git pre-commit hook that runs the drift check.

use anyhow::Context;
use xshell::{Shell, cmd};

use crate::profiles;

const HOOK: &str = "#!/bin/sh\n# Installed by `cargo xtask install-hooks`: refuse commits whose generated files are stale.\nexec cargo xtask check\n";

pub fn install() -> anyhow::Result<()> {
    let root = profiles::root();
    // xshell runs git with its arguments as written (no shell) and names the command line in its errors.
    let sh = Shell::new().context("starting a shell for git")?;
    sh.change_dir(&root);
    let out = cmd!(sh, "git rev-parse --git-path hooks")
        .quiet()
        .ignore_status()
        .output()
        .context("running git rev-parse (is git installed?)")?;
    anyhow::ensure!(
        out.status.success(),
        "{} is not a git checkout (`git rev-parse --git-path hooks`: {}); run `git init` there or install the hook \
         from a clone",
        root.display(),
        String::from_utf8_lossy(&out.stderr).trim()
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
