//! The health endpoint (`/health`, `/ready`, `/status`) on plain tokio, and the client behind
//! `machine-runtime health` (for Docker's HEALTHCHECK, so the image needs no curl).
//!
//! `/health` keeps the shape the existing monitor reads: `{healthy, services: {<app>: {healthy,
//! status, pid, restarts}}, uptime}` (uptime in ms), plus `reasons` saying what is wrong.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::probe::{HttpUrl, http_get};
use crate::supervisor::{Snapshot, SupervisorHandle};

/// The health port when neither `--health-port` nor `MACHINE_HEALTH_PORT` says otherwise.
pub const DEFAULT_PORT: u16 = 9090;

/// Extra information the caller adds to the endpoint: the GPU inventory, the broker's state.
pub trait StatusSource: Send + Sync + 'static {
    /// Fields merged into the top level of `/status` (for example `"gpus"`, `"broker"`).
    fn status_fields(&self) -> Map<String, Value> {
        Map::new()
    }

    /// Reasons the machine is unhealthy beyond its apps (for example "redis is unreachable").
    fn health_reasons(&self) -> Vec<String> {
        Vec::new()
    }

    /// Things worth saying in `/health` that do not make the machine unhealthy (`warnings`).
    fn health_warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Fields merged into the top level of `/health` (for example `"broker"`).
    fn health_fields(&self) -> Map<String, Value> {
        Map::new()
    }

    /// Entries added to `/health`'s `services` besides the apps (`status-aggregator`, as the
    /// existing monitor expects).
    fn health_services(&self) -> Map<String, Value> {
        Map::new()
    }
}

/// No extra information.
impl StatusSource for () {}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(
        "cannot listen on health port {port}: {source}; choose another with --health-port or MACHINE_HEALTH_PORT"
    )]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `0.0.0.0:port` and serves on the supervisor's tracker until shutdown begins.
/// Returns the bound address (useful with port 0).
pub async fn serve(
    port: u16,
    handle: SupervisorHandle,
    source: Arc<dyn StatusSource>,
) -> Result<SocketAddr, HealthError> {
    let listener = TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|source| HealthError::Bind { port, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| HealthError::Bind { port, source })?;
    crate::supervisor::state::log(&format!("health endpoint on http://{addr}/health"));
    let shutdown = handle.shutdown_token();
    let tracker = handle.tracker();
    tracker.spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let handle = handle.clone();
                        let source = source.clone();
                        // Connections are short; they are not tracked so a stuck client cannot
                        // hold up shutdown.
                        tokio::spawn(answer(stream, handle, source));
                    }
                }
                _ = shutdown.cancelled() => return,
            }
        }
    });
    Ok(addr)
}

async fn answer(mut stream: TcpStream, handle: SupervisorHandle, source: Arc<dyn StatusSource>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .is_err()
    {
        return;
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    let (status, body) = route(method, path, &handle, source.as_ref());
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let body = if status == 204 {
        String::new()
    } else {
        format!("{body}\n")
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Allow-Methods: GET, OPTIONS\r\nAccess-Control-Allow-Headers: *\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn route(
    method: &str,
    path: &str,
    handle: &SupervisorHandle,
    source: &dyn StatusSource,
) -> (u16, Value) {
    if method == "OPTIONS" {
        return (204, Value::Null);
    }
    if method != "GET" && method != "HEAD" {
        return (
            405,
            json!({"error": format!("method {method} is not allowed; use GET")}),
        );
    }
    let snapshot = handle.snapshot();
    let uptime_ms = handle.uptime().as_millis() as u64;
    match path.trim_end_matches('/') {
        "" | "/health" => {
            let (healthy, body) = health_body(&snapshot, uptime_ms, source);
            (if healthy { 200 } else { 503 }, body)
        }
        "/ready" => {
            let ready = snapshot.unhealthy_reasons().is_empty();
            (if ready { 200 } else { 503 }, json!({"ready": ready}))
        }
        "/status" => (200, status_body(&snapshot, uptime_ms, source)),
        _ => not_found(path),
    }
}

fn not_found(path: &str) -> (u16, Value) {
    (
        404,
        json!({"error": format!("no endpoint {path}; try /health, /ready or /status")}),
    )
}

/// The `/health` body and whether it is healthy: every app running and ready, nothing stopping,
/// and no reason from the caller's source (its warnings are listed but do not count).
pub fn health_body(
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
                    "status": a.state,
                    "pid": a.pid,
                    "restarts": a.restarts,
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
pub fn status_body(snapshot: &Snapshot, uptime_ms: u64, source: &dyn StatusSource) -> Value {
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

/// `machine-runtime health`: Ok when `GET /health` on `127.0.0.1:port` answers 200; the error
/// carries the reasons the endpoint gave.
pub async fn check(port: u16, timeout: Duration) -> Result<(), String> {
    let url = HttpUrl {
        host: "127.0.0.1".into(),
        port,
        path: "/health".into(),
    };
    let response = http_get(&url, timeout).await?;
    if response.status == 200 {
        return Ok(());
    }
    let reasons = serde_json::from_str::<Value>(&response.body)
        .ok()
        .and_then(|v| v.get("reasons").cloned())
        .and_then(|r| serde_json::from_value::<Vec<String>>(r).ok())
        .unwrap_or_default();
    Err(if reasons.is_empty() {
        format!("{url} answered {}", response.status)
    } else {
        format!("{url} answered {}: {}", response.status, reasons.join("; "))
    })
}
