//! The machine's HTTP endpoint on the health port, on plain tokio, and the client behind
//! `machine-runtime health` (for Docker's HEALTHCHECK, so the image needs no curl).
//!
//! One request per connection (`Connection: close`), read and answered with [`crate::http`], which
//! is all the health check, the API and the monitor's machine card need. Open connections and log
//! followers are capped, and a failed `accept` pauses the loop ([`crate::health_limits`]), so a
//! flood cannot take the files the supervisor needs. Routes (worker contract §5):
//!
//! - `GET /health`: 200/503, the shape the monitor reads: `{healthy, services: {<app>: {healthy,
//!   status (PM2's word: online, launching, stopping, stopped, errored, waiting restart), state,
//!   pid, restarts, reason}}, uptime}` (ms), plus `reasons` and `warnings`. `reason` says why an app
//!   is not healthy (`null` when it is), e.g. a worker held back while its service is down.
//! - `GET /ready`: 200/503 `{ready, reasons}`: ready once every app has stayed up for its
//!   `min_uptime`, the same rule as the broker's phase `ready`, and no worker reported a failed
//!   connector.
//! - `GET /status`: every app, the phase, the broker link.
//! - `GET /pm2/list`: the processes as `pm2 jlist` names them (`name`, `pm_id`, `pid`,
//!   `pm2_env.status`, `restart_time`, `pm_uptime`, `monit: {cpu, memory}` (percent of one core,
//!   bytes; [`crate::procstat`]), ...). No environment: it holds secrets.
//! - `GET /pm2/logs?service=NAME&lines=N[&stream=true]`: the last N (default 50) lines of that
//!   app's output, `{service, app, lines: [{at_ms, stream, text}]}` (`app` only when NAME is a
//!   service key); with `stream=true` the same lines, then each new one as it comes, as plain text
//!   lines (`text/plain`, what the monitor's log viewer reads), or as a `text/event-stream` of the
//!   lines as JSON when the client sends `Accept: text/event-stream`. 400 without `service`.
//! - `GET /comfyui/logs?gpu=I&type=server|output|error&lines=N[&stream=false]`: the output of
//!   app `comfyui-gpu<I>`, streamed by default as the old `tail -f` was (text or events as above).
//!   The old server tailed three files; each maps to the process's pipes: `server` (ComfyUI's own
//!   log) = both pipes, `output` (PM2's out file) = stdout, `error` (PM2's error file) = stderr.
//! - `GET /metrics`: the Prometheus text format (version 0.0.4) of apps, GPUs, workers and the
//!   broker link ([`crate::metrics`]).
//! - `POST /refresh-status`: publish a status message now.
//! - `POST /restart/service?service=NAME`: restart one app as `pm2 restart` does.
//! - `POST /stop/service`, `POST /start/service`, `GET /logs`: an operator's `machine-runtime
//!   stop|start|logs` (module `ops`).
//! - `POST /restart/machine`: stop the machine cleanly (final `shutdown` status, busy workers
//!   drained, every app stopped); the runtime exits 0 and the container's restart policy starts it
//!   again.
//!
//! NAME is an app's name or a key of the status message's `status.services`
//! (`<WORKER_ID>.<service>`, which the monitor uses), which stands for the app its row reports
//! as `pm2_name`.
//!
//! Reading routes answer with `Access-Control-Allow-Origin: *`, and nothing they show holds a secret
//! (log lines are masked when stored). The POST routes need the control token `MACHINE_CONTROL_TOKEN`
//! as `Authorization: Bearer <token>` or `?token=<token>`, compared in constant time: unset, they
//! answer 403 saying how to enable them; missing 401, wrong 403. So a web page that a browser on
//! the machine's network opens cannot restart the machine. Opt-in, a request whose `Origin` is
//! in `MACHINE_CONTROL_ALLOWED_ORIGINS` needs no token ([`crate::origins`]; the threat model is in
//! docs/health-endpoint.md); its answers carry that origin in `Access-Control-Allow-Origin`.//!
//! Files: `server` (the listener, the accept loop, one connection's answer and its headers),
//! `routes` (which route answers what, the control token), `params` (query parameters and app
//! names), `stream` (log streams as text or server-sent events), `bodies` (the JSON of `/health`,
//! `/status`, `/pm2/list`), `ops` (the operator's routes), `client` (`machine-runtime health`).

use std::future::Future;
use std::pin::Pin;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::http::Request;
use crate::origins::{ALLOWED_ORIGINS_VAR, AllowedOrigins};
use crate::supervisor::logs::LogLine;

mod bodies;
mod client;
mod ops;
mod params;
mod routes;
mod server;
mod stream;
#[cfg(test)]
mod tests;

pub use client::check;
pub use server::serve;

pub(crate) use crate::env::CONTROL_TOKEN_VAR;
/// Lines `/pm2/logs` returns without `lines`.
const DEFAULT_PM2_LINES: usize = 50;
/// Lines `/comfyui/logs` returns without `lines`.
const DEFAULT_COMFYUI_LINES: usize = 100;
/// Longest request head read.
const MAX_HEAD: usize = 8192;
/// Longest request body read (and ignored).
const MAX_BODY: usize = 64 * 1024;

/// The health port when neither `--health-port` nor `MACHINE_HEALTH_PORT` says otherwise.
pub const DEFAULT_PORT: u16 = machine_model::profile::DEFAULT_HEALTH_PORT;

/// The health port from the flag, else `MACHINE_HEALTH_PORT`, else the default.
pub fn health_port(flag: Option<u16>) -> anyhow::Result<u16> {
    if let Some(port) = flag {
        return Ok(port);
    }
    let port = crate::env::port_var(crate::env::lookup, crate::env::HEALTH_PORT_VAR)
        .map_err(anyhow::Error::msg)?;
    Ok(port.unwrap_or(DEFAULT_PORT))
}

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

    /// Reasons the machine is not ready beyond its apps (for example a worker whose connector
    /// failed); `/ready` lists them after the apps' own.
    fn ready_reasons(&self) -> Vec<String> {
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

    /// The keys of the status message's `status.services` (`<WORKER_ID>.<service>`), each with the
    /// app its row names as `pm2_name`: the monitor names processes by these keys, and
    /// `/pm2/logs` and `/restart/service` accept them besides app names. Empty by default.
    fn service_apps(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Families appended to `GET /metrics` after the apps and GPUs (the workers, the broker link).
    fn metrics(&self, _out: &mut crate::metrics::Exposition) {}

    /// `POST /refresh-status`: publish a status now. `Err` says why it could not (no broker,
    /// Redis unreachable); by default there is nothing to publish to.
    fn refresh(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async { Err("this machine does not report to a job broker".to_owned()) })
    }
}

/// No extra information.
impl StatusSource for () {}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(
        "cannot listen on health port {port}: {cause}; choose another with --health-port or MACHINE_HEALTH_PORT"
    )]
    Bind {
        port: u16,
        // In the message, not a source (a field named `source` would be one for thiserror): printed
        // with its chain it would say the cause twice.
        cause: std::io::Error,
    },
}

/// Settings of the POST routes.
#[derive(Clone, Default)]
pub struct Control {
    /// `MACHINE_CONTROL_TOKEN`; `None` (or empty) disables the POST routes (but for
    /// `allowed_origins`).
    pub token: Option<String>,
    /// `MACHINE_CONTROL_ALLOWED_ORIGINS`: browser origins whose requests may use the POST routes
    /// without the token (the unmodified monitor sends none); empty, the default, allows none.
    pub allowed_origins: AllowedOrigins,
    /// One line per invalid entry of `MACHINE_CONTROL_ALLOWED_ORIGINS`; `up` refuses to start with any.
    pub problems: Vec<String>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("allowed_origins", &self.allowed_origins.as_slice())
            .field("problems", &self.problems)
            .finish()
    }
}

impl Control {
    /// Reads `MACHINE_CONTROL_TOKEN` (surrounding blanks ignored; empty is unset) and
    /// `MACHINE_CONTROL_ALLOWED_ORIGINS` ([`AllowedOrigins::parse`]) through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Control {
        let (allowed_origins, problems) =
            AllowedOrigins::parse(&lookup(ALLOWED_ORIGINS_VAR).unwrap_or_default());
        Control {
            token: lookup(CONTROL_TOKEN_VAR)
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
            allowed_origins,
            problems,
        }
    }

    /// Whether `request` comes from a browser page on an allowed origin.
    fn origin_allowed(&self, request: &Request) -> bool {
        request
            .header("origin")
            .is_some_and(|origin| self.allowed_origins.allows(origin))
    }
}

/// What to send back.
#[derive(Debug)]
enum Reply {
    /// A JSON body with this status.
    Json(u16, Value),
    /// A body of this content type with this status (`/metrics`).
    Text(u16, &'static str, String),
    /// 401 with `WWW-Authenticate: Bearer`.
    Unauthorized(Value),
    /// Log lines: these first, then every new one `keep` accepts; as plain text lines, or as a
    /// `text/event-stream` of JSON lines when `events`.
    Stream {
        first: Vec<LogLine>,
        follow: broadcast::Receiver<LogLine>,
        keep: fn(&LogLine) -> bool,
        events: bool,
    },
    /// A JSON body, then stop the machine.
    ThenStop(u16, Value),
    /// `GET /logs`: newline-delimited JSON of many apps' lines ([`ops::Feed`]).
    Feed(ops::Feed),
}

/// Headers every answer carries besides [`crate::http::write_json`]'s. Reads are open to any origin (the
/// monitor is a web page on another origin); the POST routes are guarded by the token or the
/// allowed origins, checked on the request itself, not by CORS.
const COMMON_HEADERS: &[&str] = &[
    "Access-Control-Allow-Methods: GET, POST, OPTIONS",
    "Access-Control-Allow-Headers: Authorization, Content-Type",
    "Cache-Control: no-store",
];

fn error(status: u16, message: impl Into<String>) -> Reply {
    Reply::Json(status, json!({"error": message.into()}))
}
