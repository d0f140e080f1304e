//! Who this machine is: the final `MACHINE_ID` (unique in a fleet by construction) and the host it runs on.
//!
//! - Kubernetes: `MACHINE_ID` is the pod's name (downward API in the generated StatefulSet), unique by
//!   construction.
//! - Compose, one container: `MACHINE_ID` from `.env` (the profile's id or name).
//! - Compose, a scaled service (`docker compose up --scale machine=N`): every container gets the same
//!   `.env`, so set `MACHINE_ID_APPEND_HOSTNAME=true` (the generated compose file passes it through from
//!   the shell) and each machine reports as `<MACHINE_ID>-<hostname>`, the container's host name being its
//!   short container id. Without it, the id lease refuses the second container with a clear error.
//! - Docker Swarm (the generated `stack.yaml`): `MACHINE_ID=<id>-{{.Task.Slot}}` and the same host name, so a
//!   task that replaces another in its slot has its id, host name and worker ids (see `broker::leftover`).

pub(crate) use crate::env::APPEND_HOSTNAME_VAR;

/// This host's name (`gethostname(2)`): the container's in Docker, the pod's in Kubernetes. `localhost`
/// when it cannot be read.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_owned();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_owned();
    if name.is_empty() {
        "localhost".to_owned()
    } else {
        name
    }
}

/// A host name made fit for a machine id (letters, digits, '.', '_', '-'; anything else becomes '-').
fn id_safe(host: &str) -> String {
    host.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Why the machine id cannot be derived from the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// `MACHINE_ID_APPEND_HOSTNAME` is neither true nor false.
    #[error("{var}=\"{value}\" is not a boolean; expected true or false", var = APPEND_HOSTNAME_VAR)]
    NotABoolean { value: String },
    /// `MACHINE_ID_APPEND_HOSTNAME` is set, but there is no id to extend.
    #[error(
        "{var} is set but there is no MACHINE_ID to append the host name to; set MACHINE_ID",
        var = APPEND_HOSTNAME_VAR
    )]
    NoMachineId,
}

/// The final `MACHINE_ID`: `MACHINE_ID` from `lookup` (else `default`, the plan's id when there is one),
/// with `-<host>` appended when `MACHINE_ID_APPEND_HOSTNAME` is true. `Ok(None)` when there is no id at
/// all (the workers' own is used). Errors: the flag is not a boolean, or it is set with no id to extend.
pub fn machine_id(
    lookup: impl Fn(&str) -> Option<String>,
    default: Option<&str>,
    host: &str,
) -> Result<Option<String>, IdentityError> {
    let base = lookup("MACHINE_ID")
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .or_else(|| default.map(str::to_owned));
    let append = match lookup(APPEND_HOSTNAME_VAR) {
        None => false,
        Some(v) => match crate::env::parse_bool(&v) {
            Ok(flag) => flag.unwrap_or(false),
            Err(()) => {
                return Err(IdentityError::NotABoolean {
                    value: v.trim().to_ascii_lowercase(),
                });
            }
        },
    };
    match (base, append) {
        (base, false) => Ok(base),
        (Some(base), true) => Ok(Some(format!("{base}-{}", id_safe(host)))),
        (None, true) => Err(IdentityError::NoMachineId),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_id_comes_from_the_environment_then_the_plan() {
        assert_eq!(
            machine_id(env(&[("MACHINE_ID", "m1")]), Some("p"), "h"),
            Ok(Some("m1".into()))
        );
        assert_eq!(
            machine_id(env(&[("MACHINE_ID", " ")]), Some("p"), "h"),
            Ok(Some("p".into()))
        );
        assert_eq!(machine_id(env(&[]), None, "h"), Ok(None));
    }

    #[test]
    fn a_scaled_service_appends_its_host_name() {
        let vars = [
            ("MACHINE_ID", "gpu-mixed"),
            ("MACHINE_ID_APPEND_HOSTNAME", "TRUE"),
        ];
        assert_eq!(
            machine_id(env(&vars), None, "3f2a9c1b7d0e"),
            Ok(Some("gpu-mixed-3f2a9c1b7d0e".into()))
        );
        assert_eq!(
            machine_id(env(&vars[1..]), Some("p"), "a b"),
            Ok(Some("p-a-b".into()))
        );
        assert!(
            machine_id(env(&vars[1..]), None, "h")
                .unwrap_err()
                .to_string()
                .contains("no MACHINE_ID")
        );
        let bad = [("MACHINE_ID_APPEND_HOSTNAME", "maybe")];
        assert!(
            machine_id(env(&bad), Some("p"), "h")
                .unwrap_err()
                .to_string()
                .contains("not a boolean")
        );
    }

    #[test]
    fn this_host_has_a_name() {
        assert!(!hostname().is_empty());
    }
}
