//! The on-disk state of installs: markers, version directories, the active symlink and the install lock.
//!
//! Layout under the workspace (`/workspace` by default):
//!
//! ```text
//! ComfyUI -> .versions/ComfyUI/3f2a…      the service's directory: a symlink to the active version
//! .versions/ComfyUI/3f2a…/                 one directory per install, named by its hash, never moved
//! .installed/comfyui.json                  the marker: hash, version directory, commits, requirements
//! .installed/.lock                         flock(2) held while installing
//! .persist/ComfyUI/models/                 kept across versions (`persist` step); ComfyUI/models links here
//! ```
//!
//! Virtual environments hard-code their absolute path, so a version is built where it will live and
//! never moved; switching versions is `rename(2)` of a fresh symlink over the old one, which is atomic.
//! The marker is written after the switch: a crash in between leaves an old or missing marker, which
//! only means a reinstall, never a skip of a broken install.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Directory of markers under the workspace.
pub const MARKER_DIR: &str = ".installed";
/// Directory of the directories kept across reinstalls (`persist` steps) under the workspace.
pub const PERSIST_DIR: &str = ".persist";
/// Directory of version directories under the workspace.
pub const VERSIONS_DIR: &str = ".versions";

/// What an install left behind, recorded for `install --check` and for people reading the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    /// Installer format the marker was written by.
    pub format: u32,
    /// Service name (the marker's file name).
    pub service: String,
    /// FNV-1a 64 of the resolved recipe (see `recipe::install_hash`).
    pub hash: String,
    /// The service's directory under the workspace (the symlink).
    pub dir: String,
    /// The active version directory, relative to the workspace (the symlink's target).
    pub version_dir: String,
    /// Seconds since the Unix epoch when the install finished.
    pub installed_at_unix: u64,
    /// How long the install took, in milliseconds.
    pub duration_ms: u64,
    /// Every git checkout made, with the commit it resolved to.
    pub checkouts: Vec<CheckoutRecord>,
    /// Every requirements file installed, with a hash of its content at install time.
    pub requirements: Vec<RequirementsRecord>,
    /// Every tarball or folder fetched (the worker bundle), with its checksum.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fetches: Vec<FetchRecord>,
    /// The install-time variables (names only) whose values the recipe's placeholders took, e.g.
    /// `WORKER_BUNDLE_URL` passed to an image build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configured_by: Vec<String>,
    /// The hash the same recipe has with none of `configured_by` set: an environment that leaves them
    /// unset (an image built with `WORKER_BUNDLE_URL`, run without it) finds this install current, in
    /// `up`, `install --check` and `install` alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfigured_hash: Option<String>,
}

/// A tarball or folder put in place by a `fetch` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRecord {
    /// Destination relative to the install directory.
    pub dest: String,
    /// The source with any credentials removed.
    pub source: String,
    /// SHA-256 of the tarball (absent for a folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Files the source lacked and the machine wrote, each with where its content came from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provided: Vec<ProvidedRecord>,
}

/// A file a `fetch` step wrote because the fetched content lacked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidedRecord {
    /// Path relative to the fetch's destination.
    pub path: String,
    /// Where the content came from (the recipe's `origin`).
    pub origin: String,
    /// FNV-1a 64 of the content written.
    pub fnv1a64: String,
}

/// A checkout made by an install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRecord {
    /// Checkout directory relative to the install directory.
    pub dest: String,
    /// Repository URL with any credentials removed.
    pub repo: String,
    /// The revision asked for.
    pub rev: String,
    /// The commit checked out.
    pub commit: String,
}

/// A requirements file installed by an install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequirementsRecord {
    /// Path relative to the install directory.
    pub path: String,
    /// FNV-1a 64 of the file's content.
    pub fnv1a64: String,
}

/// Whether a service's install is current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// The marker matches the recipe and the symlink points at the marker's version directory.
    Current(Box<Marker>),
    /// Something differs; the reason says what.
    Stale(String),
}

pub(crate) fn marker_path(workspace: &Path, service: &str) -> PathBuf {
    workspace.join(MARKER_DIR).join(format!("{service}.json"))
}

/// Compares the marker and the symlink with `hash`, touching nothing and starting no process.
pub(crate) fn freshness(workspace: &Path, service: &str, dir: &str, hash: &str) -> Freshness {
    let path = marker_path(workspace, service);
    let marker: Marker = match fs::read(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Freshness::Stale("not installed yet".to_owned());
        }
        Err(e) => return Freshness::Stale(format!("marker {} unreadable: {e}", path.display())),
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                return Freshness::Stale(format!("marker {} unreadable: {e}", path.display()));
            }
        },
    };
    // An install made with install-time variables (WORKER_BUNDLE_URL) is current where they are unset.
    if marker.hash != hash && marker.unconfigured_hash.as_deref() != Some(hash) {
        return Freshness::Stale(format!("recipe changed: hash {} -> {hash}", marker.hash));
    }
    if marker.dir != dir {
        return Freshness::Stale(format!(
            "install directory changed ({} -> {dir})",
            marker.dir
        ));
    }
    match fs::read_link(workspace.join(dir)) {
        Ok(target) if target == Path::new(&marker.version_dir) => {}
        Ok(target) => {
            return Freshness::Stale(format!(
                "{} points at {} but the marker says {}",
                workspace.join(dir).display(),
                target.display(),
                marker.version_dir
            ));
        }
        Err(e) => {
            return Freshness::Stale(format!(
                "{} is not the install symlink: {e}",
                workspace.join(dir).display()
            ));
        }
    }
    if !workspace.join(&marker.version_dir).is_dir() {
        return Freshness::Stale(format!(
            "{} is missing",
            workspace.join(&marker.version_dir).display()
        ));
    }
    Freshness::Current(Box::new(marker))
}

/// Whether `service` has a readable marker whose symlink points at its existing version directory,
/// whatever recipe it was made from.
pub(crate) fn intact(workspace: &Path, service: &str) -> Result<(), String> {
    let path = marker_path(workspace, service);
    let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let marker: Marker =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    match fs::read_link(workspace.join(&marker.dir)) {
        Ok(target) if target == Path::new(&marker.version_dir) => {}
        _ => return Err(format!("{} is not its install symlink", marker.dir)),
    }
    if workspace.join(&marker.version_dir).is_dir() {
        Ok(())
    } else {
        Err(format!("{} is missing", marker.version_dir))
    }
}

/// The active version directory (relative to the workspace) of `dir`, if it is an install symlink.
pub(crate) fn active_version(workspace: &Path, dir: &str) -> Option<PathBuf> {
    fs::read_link(workspace.join(dir)).ok()
}

/// Points `<workspace>/<dir>` at `version_rel` atomically. A real directory found there (an install made
/// by something else) is first renamed to `<dir>.unmanaged-<unix seconds>` and returned, never removed.
pub(crate) fn activate(
    workspace: &Path,
    dir: &str,
    version_rel: &Path,
) -> io::Result<Option<PathBuf>> {
    let link = workspace.join(dir);
    let mut unmanaged = None;
    match fs::symlink_metadata(&link) {
        Ok(meta) if meta.file_type().is_symlink() => {}
        Ok(meta) if meta.is_dir() => {
            // Not ours, so never deleted: it may hold models or outputs someone wants back.
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let aside = workspace.join(format!("{dir}.unmanaged-{secs}"));
            fs::rename(&link, &aside)?;
            unmanaged = Some(aside);
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} is a file, not an install directory; move it away",
                    link.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let tmp = workspace.join(format!(".{dir}.link-tmp"));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(version_rel, &tmp)?;
    fs::rename(&tmp, &link)?;
    sync_dir(workspace);
    Ok(unmanaged)
}

/// Writes the marker atomically (temporary file, fsync, rename).
pub(crate) fn write_marker(workspace: &Path, marker: &Marker) -> io::Result<()> {
    let path = marker_path(workspace, &marker.service);
    let tmp = path.with_extension("json.tmp");
    let mut json = serde_json::to_vec_pretty(marker).map_err(io::Error::other)?;
    json.push(b'\n');
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&json)?;
    file.sync_all()?;
    fs::rename(&tmp, &path)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// Best effort: makes a rename durable. Failure only weakens crash safety, so it is not an error.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes every version of `dir` except `keep` (left-overs of earlier installs and crashed attempts).
pub(crate) fn remove_other_versions(workspace: &Path, dir: &str, keep: &Path) -> io::Result<()> {
    let versions = workspace.join(VERSIONS_DIR).join(dir);
    for entry in fs::read_dir(&versions)? {
        let path = entry?.path();
        if path != keep {
            remove_path(&path)?;
        }
    }
    Ok(())
}

/// Removes a directory tree or file; a missing path is fine.
pub(crate) fn remove_path(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// An exclusive `flock(2)` on `<workspace>/.installed/.lock`, released on drop, so two installers sharing a
/// workspace take turns.
#[derive(Debug)]
pub(crate) struct InstallLock {
    _file: fs::File,
}

impl InstallLock {
    pub(crate) fn acquire(workspace: &Path) -> io::Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(workspace.join(MARKER_DIR).join(".lock"))?;
        loop {
            // SAFETY: `file` owns a valid open descriptor for the duration of the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(InstallLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(hash: &str, version_dir: &str) -> Marker {
        Marker {
            format: 1,
            service: "svc".into(),
            hash: hash.into(),
            dir: "Svc".into(),
            version_dir: version_dir.into(),
            installed_at_unix: 0,
            duration_ms: 0,
            checkouts: vec![],
            requirements: vec![],
            fetches: vec![],
            configured_by: vec![],
            unconfigured_hash: None,
        }
    }

    #[test]
    fn freshness_follows_marker_and_symlink() {
        let ws = tempfile::tempdir().unwrap();
        let ws = ws.path();
        fs::create_dir_all(ws.join(MARKER_DIR)).unwrap();
        assert_eq!(
            freshness(ws, "svc", "Svc", "h1"),
            Freshness::Stale("not installed yet".into())
        );

        fs::create_dir_all(ws.join(".versions/Svc/h1")).unwrap();
        assert_eq!(
            activate(ws, "Svc", Path::new(".versions/Svc/h1")).unwrap(),
            None
        );
        write_marker(ws, &marker("h1", ".versions/Svc/h1")).unwrap();
        assert!(matches!(
            freshness(ws, "svc", "Svc", "h1"),
            Freshness::Current(_)
        ));
        assert!(
            matches!(freshness(ws, "svc", "Svc", "h2"), Freshness::Stale(r) if r.contains("recipe changed"))
        );

        fs::create_dir_all(ws.join(".versions/Svc/h2")).unwrap();
        activate(ws, "Svc", Path::new(".versions/Svc/h2")).unwrap();
        assert!(
            matches!(freshness(ws, "svc", "Svc", "h1"), Freshness::Stale(r) if r.contains("points at"))
        );
    }

    #[test]
    fn activate_moves_an_unmanaged_directory_aside() {
        let ws = tempfile::tempdir().unwrap();
        let ws = ws.path();
        fs::create_dir_all(ws.join("Svc/old")).unwrap();
        fs::create_dir_all(ws.join(".versions/Svc/h1")).unwrap();
        let aside = activate(ws, "Svc", Path::new(".versions/Svc/h1"))
            .unwrap()
            .unwrap();
        assert!(aside.join("old").is_dir());
        assert_eq!(
            fs::read_link(ws.join("Svc")).unwrap(),
            Path::new(".versions/Svc/h1")
        );
        assert_eq!(aside.parent(), Some(ws));
        remove_other_versions(ws, "Svc", &ws.join(".versions/Svc/h1")).unwrap();
        assert!(
            aside.join("old").is_dir(),
            "an unmanaged directory is never deleted"
        );
        assert!(ws.join(".versions/Svc/h1").is_dir());
    }
}
