//! The routes' query parameters (`lines`, boolean flags) and app names (an app, or a
//! `status.services` key), each refused with the 400 or 404 that says what is allowed.

use super::{Reply, StatusSource, error};
use crate::http::Request;
use crate::supervisor::logs::MAX_LINES;
use crate::supervisor::{Snapshot, SupervisorHandle};

/// The `lines` parameter: a count from 1 to the most kept, or `default`.
pub(super) fn lines_param(request: &Request, default: usize) -> Result<usize, Reply> {
    match request.param("lines") {
        None | Some("") => Ok(default),
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n.min(MAX_LINES)),
            _ => Err(error(
                400,
                format!(
                    "lines=\"{text}\" is not a count; use a whole number from 1 to {MAX_LINES}"
                ),
            )),
        },
    }
}

/// A boolean parameter (`true|1|yes` / `false|0|no`), or `default`.
pub(super) fn flag_param(request: &Request, name: &str, default: bool) -> Result<bool, Reply> {
    match request.param(name).map(str::to_ascii_lowercase).as_deref() {
        None | Some("") => Ok(default),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(other) => Err(error(
            400,
            format!("{name}=\"{other}\" is not a boolean; use true or false"),
        )),
    }
}

/// 404 for `name`, neither an app nor a key of `services` (`(key, app)`): the apps and keys, and
/// the nearest name when one is close.
pub(super) fn unknown_app(name: &str, snapshot: &Snapshot, services: &[(String, String)]) -> Reply {
    let names: Vec<&str> = snapshot.apps.iter().map(|a| a.name.as_str()).collect();
    let keys: Vec<&str> = services.iter().map(|(key, _)| key.as_str()).collect();
    let hint = machine_model::suggest::did_you_mean(name, names.iter().chain(&keys).copied())
        .map(|s| format!("; did you mean \"{s}\"?"))
        .unwrap_or_default();
    let keys = if keys.is_empty() {
        String::new()
    } else {
        format!("; status.services keys: {}", keys.join(", "))
    };
    error(
        404,
        format!(
            "no app named \"{name}\"{hint} (apps: {}{keys})",
            names.join(", ")
        ),
    )
}

/// The app `name` names: an app of the machine, or a key of the status message's
/// `status.services` (`<WORKER_ID>.<service>`, the monitor's name for a process), which names its
/// row's `pm2_name`. Apps first: a key never hides an app. `Err` is the 404 to answer.
pub(super) fn resolve_app(
    name: &str,
    handle: &SupervisorHandle,
    source: &dyn StatusSource,
) -> Result<String, Reply> {
    let snapshot = handle.snapshot();
    if snapshot.apps.iter().any(|a| a.name == name) {
        return Ok(name.to_owned());
    }
    let services = source.service_apps();
    match services.iter().find(|(key, _)| key == name) {
        Some((_, app)) => Ok(app.clone()),
        None => Err(unknown_app(name, &snapshot, &services)),
    }
}
