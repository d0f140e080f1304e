//! `codegen`, `check` and `env-build`: one generator, one shared writer. `check` is `codegen` in check mode.

use std::path::Path;

use anyhow::{Context, bail};

use crate::{profiles, render, schema};

/// Write the files, or only compare them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write files whose bytes differ (atomically).
    Overwrite,
    /// Write nothing; fail when anything differs.
    Check,
}

/// Every generated file of the repository: (path relative to the root, contents).
pub fn all_files() -> anyhow::Result<Vec<(String, String)>> {
    let mut files = vec![(schema::PATH.to_string(), schema::render())];
    files.extend(render_all(&profiles::load_all()?)?);
    Ok(files)
}

/// Renders every file of `loaded`, reporting the problems of every profile at once.
fn render_all(loaded: &[profiles::Loaded]) -> anyhow::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for l in loaded {
        match render::profile_files(l) {
            Ok(rendered) => files.extend(rendered),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if !problems.is_empty() {
        bail!("nothing was written:\n{}", problems.join("\n"));
    }
    Ok(files)
}

/// Fails when writing `path` (under the repository root) would go through a symbolic link: a
/// linked `generated/` or `generated/<profile>` would put files outside the tree.
pub fn refuse_links(path: &Path, shown: &str) -> anyhow::Result<()> {
    let root = profiles::root();
    let rel = path
        .strip_prefix(&root)
        .with_context(|| format!("{shown} is outside the repository {}", root.display()))?;
    let mut at = root.clone();
    for part in rel.components() {
        at.push(part);
        if let Ok(meta) = std::fs::symlink_metadata(&at)
            && meta.file_type().is_symlink()
        {
            let target = std::fs::read_link(&at)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            bail!(
                "{shown}: {} is a symbolic link (to {target}); generated files are written only inside the repository, never through a link; replace it with a folder",
                at.strip_prefix(&root).unwrap_or(&at).display()
            );
        }
    }
    Ok(())
}

/// Checks every target before any is written: nothing is written when one would escape the tree.
fn refuse_links_all(files: &[(String, String)]) -> anyhow::Result<()> {
    let problems: Vec<String> = files
        .iter()
        .filter_map(|(path, _)| {
            refuse_links(&profiles::root().join(path), path)
                .err()
                .map(|e| format!("{e:#}"))
        })
        .collect();
    if !problems.is_empty() {
        bail!("nothing was written:\n{}", problems.join("\n"));
    }
    Ok(())
}

/// `cargo xtask codegen` / `cargo xtask check`.
pub fn run(mode: Mode) -> anyhow::Result<()> {
    let files = all_files()?;
    if mode == Mode::Overwrite {
        refuse_links_all(&files)?;
    }
    let mut stale = Vec::new();
    for (path, contents) in &files {
        if let Err(e) = ensure_file_contents(mode, &profiles::root().join(path), path, contents) {
            stale.push(format!("{e:#}"));
        }
    }
    // Folders of profiles that no longer exist are stale too.
    let generated = profiles::root().join("generated");
    if generated.is_dir() {
        for entry in std::fs::read_dir(&generated).context("reading generated/")? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let prefix = format!("generated/{name}/");
            if entry.path().is_dir() && !files.iter().any(|(p, _)| p.starts_with(&prefix)) {
                match mode {
                    Mode::Overwrite => std::fs::remove_dir_all(entry.path())
                        .with_context(|| format!("removing stale generated/{name}"))?,
                    Mode::Check => stale.push(format!(
                        "generated/{name}/ belongs to no profile; run `cargo xtask codegen` and commit the result"
                    )),
                }
            }
        }
    }
    if !stale.is_empty() {
        bail!("{}", stale.join("\n"));
    }
    if mode == Mode::Check {
        println!("{} generated files are fresh", files.len());
        // Not an error (one machine per host is the common case), but `--scale` is the README's old
        // route to several machines and silently shares the GPUs.
        for l in profiles::load_all()? {
            if let Some(warning) = render::compose::scale_warning(&l) {
                eprintln!(
                    "warning: generated/{}/docker-compose.yaml: {warning}",
                    l.source.name
                );
            }
        }
    }
    Ok(())
}

/// `cargo xtask env-build <profile>` or `--all`.
pub fn env_build(profile: Option<&str>, all: bool) -> anyhow::Result<()> {
    let loaded = if all {
        profiles::load_all()?
    } else {
        vec![profiles::load_one(profile.unwrap_or_default())?]
    };
    // Validate everything, then write: one bad profile leaves every file as it was.
    let files = render_all(&loaded)?;
    refuse_links_all(&files)?;
    for (path, contents) in files {
        let changed = ensure_file_contents(
            Mode::Overwrite,
            &profiles::root().join(&path),
            &path,
            &contents,
        )?;
        println!("{} {path}", if changed { "wrote    " } else { "unchanged" });
    }
    Ok(())
}

/// Makes `path` hold `contents` (LF line endings): writes only when bytes differ, atomically (temp file +
/// rename); in check mode fails with a short diff and the command that fixes it. Returns whether it wrote.
pub fn ensure_file_contents(
    mode: Mode,
    path: &Path,
    shown: &str,
    contents: &str,
) -> anyhow::Result<bool> {
    let contents = contents.replace("\r\n", "\n");
    let old = std::fs::read_to_string(path)
        .ok()
        .map(|s| s.replace("\r\n", "\n"));
    if old.as_deref() == Some(contents.as_str()) {
        return Ok(false);
    }
    match mode {
        Mode::Check => {
            let diff = match &old {
                None => "  (file is missing)".to_string(),
                Some(old) => short_diff(old, &contents),
            };
            bail!("{shown} is stale; run `cargo xtask codegen` and commit the result\n{diff}")
        }
        Mode::Overwrite => {
            refuse_links(path, shown)?;
            let dir = path
                .parent()
                .context("generated files live in a directory")?;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let name = path.file_name().context("a file name")?.to_string_lossy();
            let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
            std::fs::write(&tmp, &contents)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {shown}", tmp.display()))?;
            Ok(true)
        }
    }
}

/// The first few differing lines, `-` for what is there and `+` for what should be.
pub fn short_diff(old: &str, new: &str) -> String {
    let old: Vec<&str> = old.lines().collect();
    let new: Vec<&str> = new.lines().collect();
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while (i < old.len() || j < new.len()) && out.len() < 12 {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (a, b) => {
                // Resynchronise on the next line both sides share, if close.
                if let (Some(a), Some(b)) = (a, b) {
                    if let Some(k) = new[j..].iter().take(8).position(|l| l == a) {
                        for l in &new[j..j + k] {
                            out.push(format!("  +{l}"));
                        }
                        j += k;
                        continue;
                    }
                    if let Some(k) = old[i..].iter().take(8).position(|l| l == b) {
                        for l in &old[i..i + k] {
                            out.push(format!("  -{l}"));
                        }
                        i += k;
                        continue;
                    }
                }
                if let Some(a) = a {
                    out.push(format!("  -{a}"));
                    i += 1;
                }
                if let Some(b) = b {
                    out.push(format!("  +{b}"));
                    j += 1;
                }
            }
        }
    }
    out.truncate(12);
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The drift test: everything under schemas/ and generated/ is what the generator makes now.
    #[test]
    fn generated_files_are_fresh() {
        if let Err(e) = run(Mode::Check) {
            panic!("{e:#}");
        }
    }

    #[test]
    fn check_mode_names_the_file_and_the_fix() {
        // Inside the repository: the writer refuses any path outside it. `target/` (git-ignored) may
        // not exist when CARGO_TARGET_DIR points elsewhere.
        let ignored = profiles::root().join("target");
        std::fs::create_dir_all(&ignored).unwrap();
        let dir = tempfile::tempdir_in(ignored).unwrap();
        let path = dir.path().join("x.env");
        std::fs::write(&path, "A=1\nB=2\nC=3\n").unwrap();
        let err = ensure_file_contents(Mode::Check, &path, "generated/p/.env", "A=1\nB=9\nC=3\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "generated/p/.env is stale; run `cargo xtask codegen` and commit the result\n  -B=2\n  +B=9"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "A=1\nB=2\nC=3\n");
        assert!(ensure_file_contents(Mode::Overwrite, &path, "x", "A=1\nB=9\nC=3\n").unwrap());
        assert!(
            !ensure_file_contents(Mode::Overwrite, &path, "x", "A=1\r\nB=9\r\nC=3\r\n").unwrap()
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left behind"
        );
    }
}
