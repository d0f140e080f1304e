//! The built-in `simulation` inference service: the simulation-websocket protocol (worker contract §4) and a
//! few HTTP endpoints on one port.
//!
//! A WebSocket upgrade on any path opens a simulation-websocket session (see [`session`]): the worker's
//! `simulation-websocket` connector sends `simulation_job`s and gets `simulation_started`,
//! `simulation_progress` and `simulation_complete` back. Plain HTTP: `GET /` (who am I: port, GPU,
//! `CUDA_VISIBLE_DEVICES`), `GET /health` (the readiness probe), `GET /system_stats` (roughly ComfyUI's
//! shape) and `POST /prompt` (accepts JSON, answers `{"prompt_id": ...}` after a simulated delay). Every
//! HTTP response closes its connection, which keeps the server small and is all probes and tests need;
//! requests are read and answered with [`crate::http`].

pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{self, Limits, Request};
use crate::log::LogStream;

pub use session::JobDefaults;

/// Largest request head (request line and headers) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long in-flight requests may take to finish after a stop was requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest WebSocket message accepted from a worker.
const MAX_WS_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How to run the simulation service.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// Address to listen on, such as `127.0.0.1`.
    pub host: String,
    /// Port to listen on; 0 picks a free one (the log line says which).
    pub port: u16,
    /// Wait before listening, to imitate a slow-starting service.
    pub startup_delay: Duration,
    /// Simulated time one `POST /prompt` takes.
    pub job_delay: Duration,
    /// Steps and step time of a simulation-websocket job whose `config` leaves them out.
    pub defaults: JobDefaults,
}

/// What the service reports about its environment; read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `WORKER_GPU_ID`, when set.
    pub gpu: Option<String>,
    /// `CUDA_VISIBLE_DEVICES`, when set.
    pub cuda_visible_devices: Option<String>,
}

impl Identity {
    /// Reads `WORKER_GPU_ID` and `CUDA_VISIBLE_DEVICES` from the process environment.
    pub fn from_env() -> Identity {
        Identity {
            gpu: crate::env::lookup("WORKER_GPU_ID"),
            cuda_visible_devices: crate::env::lookup("CUDA_VISIBLE_DEVICES"),
        }
    }
}

/// Errors of the simulation service.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The listening socket could not be opened.
    #[error("simulation service cannot listen on {addr}: {source}; choose a free port with --port")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The operating system's answer.
        source: std::io::Error,
    },
}

/// Waits `startup_delay` (saying so first, when it is not zero), listens, logs `simulation service listening on HOST:PORT`, and serves until
/// `shutdown` is cancelled; then drains in-flight requests and returns.
pub async fn run(
    options: SimulateOptions,
    identity: Identity,
    shutdown: CancellationToken,
) -> Result<(), SimulateError> {
    if !options.startup_delay.is_zero() {
        let delay = options.startup_delay.as_millis();
        crate::log::app_output(
            LogStream::Stdout,
            &format!(
                "simulation service starting on {}:{} after a {delay} ms startup delay",
                options.host, options.port
            ),
        );
        tokio::select! {
            () = tokio::time::sleep(options.startup_delay) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
    let addr = format_addr(&options.host, options.port);
    let listener =
        TcpListener::bind(addr.as_str())
            .await
            .map_err(|source| SimulateError::Bind {
                addr: addr.clone(),
                source,
            })?;
    let local = listener
        .local_addr()
        .map_err(|source| SimulateError::Bind { addr, source })?;
    crate::log::app_output(
        LogStream::Stdout,
        &format!("simulation service listening on {local}"),
    );
    serve(listener, local, &options, identity, shutdown).await;
    crate::log::app_output(
        LogStream::Stdout,
        &format!("simulation service on {local} stopped"),
    );
    Ok(())
}

fn format_addr(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

struct Shared {
    local: SocketAddr,
    job_delay: Duration,
    identity: Identity,
    jobs: AtomicU64,
    sessions: Arc<session::Service>,
}

async fn serve(
    listener: TcpListener,
    local: SocketAddr,
    options: &SimulateOptions,
    identity: Identity,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared {
        local,
        job_delay: options.job_delay,
        identity: identity.clone(),
        jobs: AtomicU64::new(0),
        sessions: Arc::new(session::Service {
            port: local.port(),
            identity,
            defaults: options.defaults,
            registry: session::Registry::default(),
        }),
    });
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = Arc::clone(&shared);
                    let shutdown = shutdown.clone();
                    tracker.spawn(async move { handle(stream, &shared, &shutdown).await });
                }
                // Transient (e.g. too many open files): back off briefly instead of spinning.
                Err(err) => {
                    crate::log::app_output(
                        LogStream::Stderr,
                        &format!("simulation service on {local}: accept failed: {err}"),
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    tracker.close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await;
}

struct Response {
    status: u16,
    body: Value,
}

async fn handle(mut stream: TcpStream, shared: &Shared, shutdown: &CancellationToken) {
    let limits = Limits {
        max_head: MAX_HEAD_BYTES,
        max_body: MAX_BODY_BYTES,
    };
    let read = http::read_request(&mut stream, limits);
    let response = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(request)) if request.header_has("upgrade", "websocket") => {
            match upgrade(stream, request, shared, shutdown).await {
                Ok(()) => return,
                Err((returned, response)) => {
                    stream = returned;
                    response
                }
            }
        }
        Ok(Ok(request)) => route(request, shared, shutdown).await,
        Ok(Err(bad)) => bad_request(bad.status, &bad.message),
        Err(_) => Response {
            status: 408,
            body: json!({"error": "request not received in time"}),
        },
    };
    // The client may have gone away; nothing useful to do about a failed write.
    let _ = http::write_json(&mut stream, response.status, &response.body, &[], false).await;
    let _ = stream.shutdown().await;
}

fn bad_request(status: u16, message: &str) -> Response {
    Response {
        status,
        body: json!({"error": message}),
    }
}

/// Answers a WebSocket handshake (RFC 6455 §4.2) and serves the session; gives the stream back with an
/// error response when the request is not a valid upgrade.
async fn upgrade(
    mut stream: TcpStream,
    request: Request,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Result<(), (TcpStream, Response)> {
    let head = match http::websocket_accept(&request) {
        Ok(head) => head,
        Err((status, problems)) => return Err((stream, bad_request(status, &problems))),
    };
    if stream.write_all(head.as_bytes()).await.is_err() {
        return Ok(());
    }
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "an unknown peer".to_owned(), |a| a.to_string());
    crate::log::app_output(
        LogStream::Stdout,
        &format!("simulation service: websocket session from {peer}"),
    );
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_WS_MESSAGE_BYTES));
    let ws = WebSocketStream::from_partially_read(stream, request.rest, Role::Server, Some(config))
        .await;
    session::serve(ws, Arc::clone(&shared.sessions), peer, shutdown.clone()).await;
    Ok(())
}

async fn route(request: Request, shared: &Shared, shutdown: &CancellationToken) -> Response {
    let ok = |body| Response { status: 200, body };
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/") => ok(json!({
            "service": "simulation",
            "port": shared.local.port(),
            "gpu": shared.identity.gpu,
            "cuda_visible_devices": shared.identity.cuda_visible_devices,
        })),
        ("GET", "/health") => ok(json!({
            "status": "ok",
            "protocol": "simulation-websocket",
            "active_jobs": shared.sessions.registry.active(),
            "completed_jobs": shared.sessions.registry.completed(),
        })),
        ("GET", "/system_stats") => ok(system_stats(&shared.identity)),
        ("POST", "/prompt") => {
            let Ok(prompt) = serde_json::from_slice::<Value>(&request.body) else {
                return bad_request(400, "body must be JSON, such as {\"prompt\": {...}}");
            };
            if !prompt.is_object() {
                return bad_request(
                    400,
                    "body must be a JSON object, such as {\"prompt\": {...}}",
                );
            }
            tokio::select! {
                () = tokio::time::sleep(shared.job_delay) => {}
                () = shutdown.cancelled() => return bad_request(503, "simulation service is stopping"),
            }
            let number = shared.jobs.fetch_add(1, Ordering::Relaxed);
            let prompt_id = format!("{:08x}-0000-4000-8000-{number:012x}", shared.local.port());
            ok(json!({"prompt_id": prompt_id, "number": number, "node_errors": {}}))
        }
        (_, "/" | "/health" | "/system_stats" | "/prompt") => {
            bad_request(405, "method not allowed")
        }
        _ => bad_request(404, "not found"),
    }
}

/// Roughly ComfyUI's `/system_stats`: one CUDA device per `CUDA_VISIBLE_DEVICES` entry, else one CPU device.
pub fn system_stats(identity: &Identity) -> Value {
    let entries: Vec<&str> = identity
        .cuda_visible_devices
        .as_deref()
        .map(|cvd| {
            cvd.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let devices: Vec<Value> = if entries.is_empty() {
        vec![
            json!({"name": "cpu", "type": "cpu", "index": null, "vram_total": 0, "vram_free": 0,
                    "torch_vram_total": 0, "torch_vram_free": 0}),
        ]
    } else {
        entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                json!({"name": format!("cuda:{index} simulation ({entry})"), "type": "cuda", "index": index,
                       "vram_total": 0, "vram_free": 0, "torch_vram_total": 0, "torch_vram_free": 0})
            })
            .collect()
    };
    json!({
        "system": {
            "os": std::env::consts::OS,
            "comfyui_version": "simulation",
            "python_version": null,
            "pytorch_version": null,
            "embedded_python": false,
            "argv": std::env::args().collect::<Vec<_>>(),
            "ram_total": 0,
            "ram_free": 0,
        },
        "devices": devices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_stats_devices_follow_cuda_visible_devices() {
        let pinned = Identity {
            gpu: Some("1".into()),
            cuda_visible_devices: Some("GPU-abc".into()),
        };
        let stats = system_stats(&pinned);
        assert_eq!(stats["devices"].as_array().unwrap().len(), 1);
        assert_eq!(stats["devices"][0]["type"], "cuda");
        assert_eq!(stats["devices"][0]["name"], "cuda:0 simulation (GPU-abc)");

        let none = Identity {
            gpu: None,
            cuda_visible_devices: Some(String::new()),
        };
        assert_eq!(system_stats(&none)["devices"][0]["type"], "cpu");
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(format_addr("::1", 80), "[::1]:80");
        assert_eq!(format_addr("127.0.0.1", 80), "127.0.0.1:80");
    }
}
