//! What the machine needs from the system before anything starts: enough open files for every
//! app's output pipes, and a workspace folder that exists.
//!
//! Each app holds two pipes' read ends in the runtime (stdout, stderr) for its whole life, and a
//! start briefly needs a few more; the runtime itself needs some for the health endpoint, the
//! broker and its own plumbing. `up` raises the soft `RLIMIT_NOFILE` to the hard one at start and
//! refuses a set of apps that cannot fit, with the numbers, instead of losing apps to `EMFILE`.

use std::path::{Path, PathBuf};

/// Open files the runtime needs besides its apps (health, broker, epoll, signals, logs, starts).
pub(crate) const RUNTIME_FILES: u64 = 80;
/// Open files each app holds in the runtime (the read ends of its stdout and stderr pipes).
pub(crate) const FILES_PER_APP: u64 = 2;

/// The open-file limit after [`raise_open_files`]: (soft, hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard one (capped at the kernel's `nr_open`, since an
/// unlimited hard limit cannot be a soft one). Returns the limit in force afterwards.
pub fn raise_open_files() -> std::io::Result<OpenFiles> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let target = limit.rlim_max.min(nr_open);
    if limit.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = raised.rlim_cur;
        }
    }
    Ok(OpenFiles {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// The limit in force now.
pub(crate) fn open_files() -> std::io::Result<OpenFiles> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OpenFiles {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// `None` when `apps` apps fit in `limit`; else the refusal, with the numbers and the fix.
pub(crate) fn check_open_files(apps: usize, limit: OpenFiles) -> Option<String> {
    let need = apps as u64 * FILES_PER_APP + RUNTIME_FILES;
    (need > limit.soft).then(|| {
        format!(
            "{apps} apps need about {need} open files ({FILES_PER_APP} per app for its output, {RUNTIME_FILES} for the runtime), but the open-file limit is {} (hard limit {}); raise the hard limit (docker run --ulimit nofile={}:{}, or ulimit -Hn) or run fewer apps",
            limit.soft,
            limit.hard,
            need.next_power_of_two(),
            need.next_power_of_two()
        )
    })
}

/// Why the workspace folder cannot be used; each message names the folder, the variable it comes from
/// and the fix.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A file is where the folder should be.
    #[error(
        "the workspace {} ({var}) is a file, not a folder; point {var} at a folder (it is created when missing)",
        path.display()
    )]
    NotAFolder { path: PathBuf, var: String },
    /// The folder is missing and cannot be created.
    #[error(
        "cannot create the workspace {} ({var}): {error}; create it, or point {var} at a folder this user may write",
        path.display()
    )]
    Create {
        path: PathBuf,
        var: String,
        error: std::io::Error,
    },
    /// The folder cannot be looked at (permissions, I/O).
    #[error("cannot use the workspace {} ({var}): {error}", path.display())]
    Unusable {
        path: PathBuf,
        var: String,
        error: std::io::Error,
    },
}

/// Makes sure the workspace folder `path` (named by the variable `var`, for messages) exists: creates it
/// (and its parents) when missing. `Ok(true)` when it was created, `Ok(false)` when it was there; a file in
/// its place is refused.
pub fn ensure_workspace(path: &Path, var: &str) -> Result<bool, WorkspaceError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(false),
        Ok(_) => Err(WorkspaceError::NotAFolder {
            path: path.to_path_buf(),
            var: var.to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(path)
            .map(|()| true)
            .map_err(|error| WorkspaceError::Create {
                path: path.to_path_buf(),
                var: var.to_owned(),
                error,
            }),
        Err(error) => Err(WorkspaceError::Unusable {
            path: path.to_path_buf(),
            var: var.to_owned(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_apps_that_cannot_fit_with_the_numbers() {
        let limit = OpenFiles {
            soft: 1024,
            hard: 4096,
        };
        assert_eq!(check_open_files(100, limit), None);
        let refusal = check_open_files(10_000, limit).unwrap();
        assert!(
            refusal.starts_with("10000 apps need about 20080 open files (2 per app for its output, 80 for the runtime), but the open-file limit is 1024 (hard limit 4096)"),
            "{refusal}"
        );
        assert!(refusal.contains("--ulimit nofile=32768:32768"), "{refusal}");
    }

    #[test]
    fn raising_never_lowers_and_reaches_the_hard_limit_when_allowed() {
        let before = open_files().unwrap();
        let after = raise_open_files().unwrap();
        assert!(after.soft >= before.soft);
        assert_eq!(after.hard, before.hard);
        assert_eq!(open_files().unwrap(), after);
    }

    #[test]
    fn creates_a_missing_workspace_and_refuses_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("a/b/ws");
        assert!(matches!(ensure_workspace(&ws, "WORKSPACE_DIR"), Ok(true)));
        assert!(ws.is_dir());
        assert!(matches!(ensure_workspace(&ws, "WORKSPACE_DIR"), Ok(false)));
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = ensure_workspace(&file, "WORKSPACE_DIR")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "the workspace {} (WORKSPACE_DIR) is a file, not a folder",
                file.display()
            )),
            "{err}"
        );
    }
}
