//! The JSON bodies of the reading routes: `/health`, `/status` and `/pm2/list`.

use serde_json::{Map, Value, json};

use super::StatusSource;
use crate::supervisor::Snapshot;

/// `/pm2/list`: one entry per app in `pm2 jlist`'s terms, without the environment. `now_ms` is the
/// wall clock (epoch ms) and `uptime_ms` the supervisor's, to turn start times into epoch ms.
pub(crate) fn pm2_list(snapshot: &Snapshot, uptime_ms: u64, now_ms: u64) -> Value {
    let leaders: Vec<u32> = snapshot.apps.iter().filter_map(|a| a.pid).collect();
    let usages = crate::procstat::groups(&leaders);
    let apps: Vec<Value> = snapshot
        .apps
        .iter()
        .enumerate()
        .map(|(pm_id, a)| {
            let alive = a.pid.is_some();
            let pm_uptime = a
                .started_ms
                .filter(|_| alive)
                .map(|started| now_ms.saturating_sub(uptime_ms.saturating_sub(started)));
            let status = a.state.pm2_status();
            json!({
                "name": a.name,
                "pm_id": pm_id,
                "pid": a.pid,
                "status": status,
                "state": a.state,
                "monit": crate::procstat::monit(a.pid, &usages),
                "restart_time": a.restarts,
                "unstable_restarts": a.unstable_restarts,
                "pm_uptime": pm_uptime,
                "role": a.role,
                "gpu": a.gpu,
                "port": a.port,
                "connector": a.connector,
                "pm2_env": {
                    "status": status,
                    "restart_time": a.restarts,
                    "unstable_restarts": a.unstable_restarts,
                    "pm_uptime": pm_uptime,
                    "min_uptime": a.min_uptime_ms,
                    "max_restarts": a.max_restarts,
                    "autorestart": a.autorestart,
                },
            })
        })
        .collect();
    Value::Array(apps)
}

/// The `/health` body and whether it is healthy: every app running and ready, nothing stopping,
/// and no reason from the caller's source (its warnings are listed but do not count).
pub(crate) fn health_body(
    snapshot: &Snapshot,
    uptime_ms: u64,
    source: &dyn StatusSource,
) -> (bool, Value) {
    let mut reasons = snapshot.unhealthy_reasons();
    reasons.extend(source.health_reasons());
    let mut services: Map<String, Value> = snapshot
        .apps
        .iter()
        .map(|a| {
            (
                a.name.clone(),
                json!({
                    "healthy": a.unhealthy_reason().is_none(),
                    "status": a.state.pm2_status(),
                    "state": a.state,
                    "pid": a.pid,
                    "restarts": a.restarts,
                    "reason": a.unhealthy_reason(),
                }),
            )
        })
        .collect();
    services.extend(source.health_services());
    let healthy = reasons.is_empty();
    let mut body = Map::new();
    body.insert("healthy".into(), healthy.into());
    body.insert("services".into(), Value::Object(services));
    body.insert("uptime".into(), uptime_ms.into());
    body.insert("reasons".into(), json!(reasons));
    body.insert("warnings".into(), json!(source.health_warnings()));
    for (key, value) in source.health_fields() {
        body.entry(key).or_insert(value);
    }
    (healthy, Value::Object(body))
}

/// The `/status` body: apps, phase, uptime, version, plus the caller's fields.
pub(crate) fn status_body(snapshot: &Snapshot, uptime_ms: u64, source: &dyn StatusSource) -> Value {
    let mut body = Map::new();
    body.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    body.insert("uptime_ms".into(), uptime_ms.into());
    body.insert("phase".into(), json!(snapshot.phase));
    body.insert(
        "healthy".into(),
        snapshot.unhealthy_reasons().is_empty().into(),
    );
    body.insert("apps".into(), json!(snapshot.apps));
    body.insert("orphans_reaped".into(), snapshot.orphans_reaped.into());
    for (key, value) in source.status_fields() {
        body.insert(key, value);
    }
    Value::Object(body)
}
