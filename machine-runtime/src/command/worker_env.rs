//! A worker's environment: what it does not inherit (the machine-wide worker spec, other
//! connectors' variables) and what the machine gives it (its worker settings, the broker's CA).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use crate::ecosystem::AppSpec;

/// Whether `app` is a job worker: it has a connector, a `WORKER_ID` or the worker role.
pub(crate) fn is_worker(app: &AppSpec) -> bool {
    app.connector.is_some()
        || app.env.contains_key("WORKER_ID")
        || app.role == Some(crate::ecosystem::Role::Worker)
}

/// Removes from a worker's inherited environment the machine-wide worker spec and the variables of
/// other connectors.
pub(super) fn strip_foreign_worker_env(env: &mut BTreeMap<OsString, OsString>, app: &AppSpec) {
    use machine_model::catalog;
    for var in catalog::MACHINE_WIDE_WORKER_VARS {
        env.remove(OsStr::new(var));
    }
    for var in catalog::all_connector_env() {
        if !app.required_env.iter().any(|own| own == var) {
            env.remove(OsStr::new(var));
        }
    }
}

/// Node's variable for CAs it trusts besides its built-in roots: one PEM file, read at Node's start.
const NODE_EXTRA_CA_CERTS: &str = "NODE_EXTRA_CA_CERTS";

/// `NODE_EXTRA_CA_CERTS` for a worker of a broker whose CA is in `ca`: `ca` itself, or, when the
/// environment already names another file (images often point it at the system bundle), a bundle of
/// both written once to the temporary directory (`machine-runtime-node-ca-<hash>.pem`, temp file +
/// rename). A bundle that cannot be read or written leaves `ca` alone, which still reaches the broker.
pub(super) fn node_extra_ca_certs(existing: Option<&OsStr>, ca: &OsStr) -> OsString {
    let Some(existing) = existing.filter(|e| !e.is_empty() && *e != ca) else {
        return ca.to_owned();
    };
    let combined = || -> std::io::Result<PathBuf> {
        let mut bytes = std::fs::read(existing)?;
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            bytes.push(b'\n');
        }
        bytes.extend(std::fs::read(ca)?);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&bytes, &mut hasher);
        let hash = std::hash::Hasher::finish(&hasher);
        let path = std::env::temp_dir().join(format!("machine-runtime-node-ca-{hash:016x}.pem"));
        if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
            let temp = path.with_extension(format!("{}.tmp", std::process::id()));
            std::fs::write(&temp, &bytes)?;
            std::fs::rename(&temp, &path)?;
        }
        Ok(path)
    };
    combined().map_or_else(|_| ca.to_owned(), PathBuf::into_os_string)
}

/// The worker settings the runtime's environment gives, under the worker's names; a worker with a
/// connector but no spec of its own gets its connector in `WORKERS` and `CONNECTORS`; with
/// `HUB_REDIS_TLS_CA_FILE` set, `NODE_EXTRA_CA_CERTS` names that CA ([`node_extra_ca_certs`]).
pub(super) fn apply_worker_settings(
    env: &mut BTreeMap<OsString, OsString>,
    app: &AppSpec,
    runtime_env: &BTreeMap<OsString, OsString>,
) {
    for setting in machine_model::catalog::WORKER_SETTINGS {
        if let Some(value) = runtime_env
            .get(OsStr::new(setting.setting))
            .filter(|v| !v.is_empty())
        {
            env.insert(setting.worker_var.into(), value.clone());
        }
    }
    // The worker (Node, ioredis) reads the same HUB_REDIS_URL; for rediss:// ioredis uses Node's trust
    // store, which takes a private CA only from NODE_EXTRA_CA_CERTS (read once, at Node's start).
    if let Some(ca) = runtime_env
        .get(OsStr::new(crate::env::CA_FILE_VAR))
        .filter(|v| !v.is_empty())
    {
        let existing = env.get(OsStr::new(NODE_EXTRA_CA_CERTS)).cloned();
        env.insert(
            NODE_EXTRA_CA_CERTS.into(),
            node_extra_ca_certs(existing.as_deref(), ca),
        );
    }
    if let Some(connector) = &app.connector {
        for var in machine_model::catalog::MACHINE_WIDE_WORKER_VARS {
            env.entry(var.into()).or_insert_with(|| connector.into());
        }
    }
}
