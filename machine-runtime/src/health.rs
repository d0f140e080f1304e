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
//! docs/health-endpoint.md); its answers carry that origin in `Access-Control-Allow-Origin`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::health_limits::{AcceptBackoff, Caps, Gate};
use crate::http::{self, HttpUrl, Limits, Request, write_json};
use crate::origins::{ALLOWED_ORIGINS_VAR, AllowedOrigins};
use crate::supervisor::logs::{LogLine, LogStream, MAX_LINES};
use crate::supervisor::{RestartError, Snapshot, SupervisorHandle};
use crate::time::now_ms;

mod ops;

use crate::env::CONTROL_TOKEN_VAR;
/// Lines `/pm2/logs` returns without `lines`.
const DEFAULT_PM2_LINES: usize = 50;
/// Lines `/comfyui/logs` returns without `lines`.
const DEFAULT_COMFYUI_LINES: usize = 100;
/// Longest request head read.
const MAX_HEAD: usize = 8192;
/// Longest request body read (and ignored).
const MAX_BODY: usize = 64 * 1024;

/// The health port when neither `--health-port` nor `MACHINE_HEALTH_PORT` says otherwise.
pub const DEFAULT_PORT: u16 = machine_model::catalog::DEFAULT_HEALTH_PORT;

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
        "cannot listen on health port {port}: {source}; choose another with --health-port or MACHINE_HEALTH_PORT"
    )]
    Bind {
        port: u16,
        // In the message, not a `#[source]`: printed with its chain it would say the cause twice.
        source: std::io::Error,
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

/// Binds `0.0.0.0:port` and serves on the supervisor's tracker until shutdown begins.
/// Returns the bound address (useful with port 0).
pub async fn serve(
    port: u16,
    handle: SupervisorHandle,
    source: Arc<dyn StatusSource>,
    control: Control,
) -> Result<SocketAddr, HealthError> {
    let listener = TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|source| HealthError::Bind { port, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| HealthError::Bind { port, source })?;
    crate::log::runtime(&format!("health endpoint on http://{addr}/health"));
    if control.token.is_none() && control.allowed_origins.is_empty() {
        crate::log::runtime(&format!(
            "the control routes (POST /restart/..., /refresh-status) are off: {CONTROL_TOKEN_VAR} is not set"
        ));
    }
    if !control.allowed_origins.is_empty() {
        crate::log::runtime(&format!(
            "the control routes also answer browser pages from {} without the token ({ALLOWED_ORIGINS_VAR}); a client that is not a browser can claim any origin, so keep this port off untrusted networks",
            control.allowed_origins.as_slice().join(", ")
        ));
    }
    let control = Arc::new(control);
    let open_files = crate::limits::open_files().map_or(1024, |limit| limit.soft);
    let caps = Caps::for_open_files(open_files, handle.snapshot().apps.len());
    let gates = Arc::new(Gates {
        connections: Gate::new("connections", caps.connections),
        followers: Gate::new("log followers", caps.followers),
    });
    let shutdown = handle.shutdown_token();
    let tracker = handle.tracker();
    tracker.spawn(async move {
        let mut backoff = AcceptBackoff::default();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.cancelled() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors (EMFILE) lasts until some close: retrying at once
                    // would spin.
                    let pause = backoff.failed(&error);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        () = shutdown.cancelled() => return,
                    }
                }
            };
            backoff.succeeded();
            let Some(permit) = gates.connections.enter() else {
                refuse_now(stream, gates.connections.cap());
                continue;
            };
            let handle = handle.clone();
            let source = source.clone();
            let control = control.clone();
            let gates = gates.clone();
            // Connections are short (log streams end at shutdown); they are not tracked so a
            // stuck client cannot hold up shutdown.
            tokio::spawn(async move {
                answer(stream, handle, source, control, &gates).await;
                drop(permit);
            });
        }
    });
    Ok(addr)
}

/// The endpoint's two caps ([`crate::health_limits`]).
struct Gates {
    connections: Gate,
    followers: Gate,
}

/// Answers a connection past the cap with 503 at once, without a task or a wait: reads what has
/// arrived of the request (so closing does not reset the connection and lose the answer), writes
/// the answer if the socket takes it whole, and closes.
fn refuse_now(stream: TcpStream, cap: usize) {
    let mut sink = [0u8; 8192];
    while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
    let body = format!(
        "{}\n",
        json!({"error": format!("the health endpoint has {cap} connections open, its cap; try again shortly")})
    );
    let length = format!("Content-Length: {}", body.len());
    let head = http::head(
        503,
        &[
            "Content-Type: application/json",
            &length,
            "Connection: close",
            "Retry-After: 1",
            "Access-Control-Allow-Origin: *",
            "Cache-Control: no-store",
        ],
    );
    let _ = stream.try_write(format!("{head}{body}").as_bytes());
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

async fn answer(
    mut stream: TcpStream,
    handle: SupervisorHandle,
    source: Arc<dyn StatusSource>,
    control: Arc<Control>,
    gates: &Gates,
) {
    let limits = Limits {
        max_head: MAX_HEAD,
        max_body: MAX_BODY,
    };
    // The body is read (and dropped: the routes take parameters from the query), so closing the
    // socket does not reset the connection before the client has read the answer.
    let request = match tokio::time::timeout(
        Duration::from_secs(5),
        http::read_request(&mut stream, limits),
    )
    .await
    {
        Err(_) => return,
        Ok(Err(bad)) => {
            let body = json!({"error": bad.message});
            let headers = headers_for(None, &control);
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            let _ = write_json(&mut stream, bad.status, &body, &headers, false).await;
            let _ = stream.shutdown().await;
            return;
        }
        Ok(Ok(request)) => request,
    };
    let reply = route(&request, &handle, source.as_ref(), &control).await;
    let head_only = request.method == "HEAD";
    let owned = headers_for(Some(&request), &control);
    let mut headers: Vec<&str> = owned.iter().map(String::as_str).collect();
    match reply {
        Reply::Json(status, body) => {
            let _ = write_json(&mut stream, status, &body, &headers, head_only).await;
        }
        Reply::Text(status, kind, body) => {
            let body = if head_only { "" } else { body.as_str() };
            let _ =
                http::write_body(&mut stream, status, kind, body.as_bytes(), COMMON_HEADERS).await;
        }
        Reply::Unauthorized(body) => {
            headers.push("WWW-Authenticate: Bearer realm=\"machine\"");
            let _ = write_json(&mut stream, 401, &body, &headers, head_only).await;
        }
        Reply::ThenStop(status, body) => {
            let _ = write_json(&mut stream, status, &body, &headers, false).await;
            crate::log::runtime("stop requested through POST /restart/machine");
            handle.request_stop(libc::SIGTERM);
        }
        Reply::Stream {
            first,
            follow,
            keep,
            events,
        } => {
            let Some(_following) = gates.followers.enter() else {
                let cap = gates.followers.cap();
                let body = json!({"error": format!("{cap} log streams are open on this machine, the most it serves; close one, or ask without stream=true (stream=false for /comfyui/logs)")});
                let _ = write_json(&mut stream, 503, &body, &headers, false).await;
                let _ = stream.shutdown().await;
                return;
            };
            let format = if events {
                StreamFormat::Events
            } else {
                StreamFormat::Text
            };
            let out = LineStream {
                first,
                follow,
                keep,
                format,
            };
            stream_lines(&mut stream, out, &headers, handle.shutdown_token()).await;
        }
        Reply::Feed(feed) => ops::write_feed(&mut stream, feed, handle.shutdown_token()).await,
    }
    let _ = stream.shutdown().await;
}

/// Headers every answer carries besides [`http::write_json`]'s. Reads are open to any origin (the
/// monitor is a web page on another origin); the POST routes are guarded by the token or the
/// allowed origins, checked on the request itself, not by CORS.
const COMMON_HEADERS: &[&str] = &[
    "Access-Control-Allow-Methods: GET, POST, OPTIONS",
    "Access-Control-Allow-Headers: Authorization, Content-Type",
    "Cache-Control: no-store",
];

/// How long a browser may keep a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE_S: u32 = 600;

/// The headers of an answer to `request` (`None`: one that could not be read): CORS and
/// [`COMMON_HEADERS`]. A request from an allowed origin gets that origin back (with `Vary:
/// Origin`); any other gets `*`. A preflight (`OPTIONS`) gets `Access-Control-Max-Age`, and from an
/// allowed origin also `Access-Control-Allow-Private-Network: true` when it asks for it (Chrome's
/// Private Network Access, for a public monitor calling a machine on a private address).
fn headers_for(request: Option<&Request>, control: &Control) -> Vec<String> {
    let allowed = request.filter(|r| control.origin_allowed(r));
    let mut headers = vec![match allowed.and_then(|r| r.header("origin")) {
        Some(origin) => format!("Access-Control-Allow-Origin: {origin}"),
        None => "Access-Control-Allow-Origin: *".to_owned(),
    }];
    if !control.allowed_origins.is_empty() {
        headers.push("Vary: Origin".to_owned());
    }
    headers.extend(COMMON_HEADERS.iter().map(|h| (*h).to_owned()));
    if let Some(request) = request.filter(|r| r.method == "OPTIONS") {
        headers.push(format!("Access-Control-Max-Age: {PREFLIGHT_MAX_AGE_S}"));
        if allowed.is_some() && request.header_has("access-control-request-private-network", "true")
        {
            headers.push("Access-Control-Allow-Private-Network: true".to_owned());
        }
    }
    headers
}

/// How a log stream is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamFormat {
    /// `text/plain`: each line's text and `\n`, what the monitor's log viewer
    /// (`@melloware/react-logviewer`, `LazyLog url stream`) reads: it splits the raw bytes on line
    /// ends (worker contract §5).
    Text,
    /// `text/event-stream` (asked for with `Accept: text/event-stream`, as `EventSource` does): one
    /// `data:` event per line, the line as JSON (`{at_ms, stream, text}`).
    Events,
}

/// A log stream to write: `first`, then every line `follow` brings that `keep` accepts.
struct LineStream {
    first: Vec<LogLine>,
    follow: broadcast::Receiver<LogLine>,
    keep: fn(&LogLine) -> bool,
    format: StreamFormat,
}

impl StreamFormat {
    fn content_type(self) -> &'static str {
        match self {
            Self::Text => "Content-Type: text/plain; charset=utf-8",
            Self::Events => "Content-Type: text/event-stream",
        }
    }

    fn line(self, line: &LogLine) -> String {
        match self {
            Self::Text => format!("{}\n", line.text),
            Self::Events => format!("data: {}\n\n", json!(line)),
        }
    }

    fn skipped(self, n: u64) -> String {
        match self {
            Self::Text => {
                format!("[machine-runtime: {n} lines skipped, this reader fell behind]\n")
            }
            Self::Events => format!("event: skipped\ndata: {{\"skipped\":{n}}}\n\n"),
        }
    }

    fn end(self) -> &'static str {
        match self {
            Self::Text => "[machine-runtime: the machine is stopping]\n",
            Self::Events => "event: end\ndata: {\"reason\":\"the machine is stopping\"}\n\n",
        }
    }
}

/// Writes a log stream in its format (no `Content-Length`; the body ends when the connection
/// closes): the kept lines, then each new one; a note when this client fell behind (`event:
/// skipped` as events); a last note (`event: end`) when the machine stops. Ends too when the client
/// goes away.
async fn stream_lines(
    stream: &mut TcpStream,
    out: LineStream,
    headers: &[&str],
    shutdown: CancellationToken,
) {
    let LineStream {
        first,
        mut follow,
        keep,
        format,
    } = out;
    // nosniff: a browser that sniffs a text/plain body would hold back its first bytes.
    let mut all = vec![
        format.content_type(),
        "X-Content-Type-Options: nosniff",
        "X-Accel-Buffering: no",
    ];
    all.extend_from_slice(headers);
    all.push("Connection: close");
    let head = http::head(200, &all);
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut text = String::new();
    for line in &first {
        text.push_str(&format.line(line));
    }
    if stream.write_all(text.as_bytes()).await.is_err() {
        return;
    }
    let mut probe = [0u8; 64];
    loop {
        let text = tokio::select! {
            () = shutdown.cancelled() => format.end().to_owned(),
            // A read returns only when the client closes (or sends junk): stop following then.
            _ = stream.read(&mut probe) => return,
            next = follow.recv() => match next {
                Ok(line) if keep(&line) => format.line(&line),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => format.skipped(n),
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if stream.write_all(text.as_bytes()).await.is_err() || shutdown.is_cancelled() {
            return;
        }
    }
}

fn error(status: u16, message: impl Into<String>) -> Reply {
    Reply::Json(status, json!({"error": message.into()}))
}

/// Checks a POST request: from a browser page on an allowed origin, or with the control token.
fn authorize(request: &Request, control: &Control) -> Result<(), Reply> {
    if control.origin_allowed(request) {
        return Ok(());
    }
    let Some(expected) = control.token.as_deref() else {
        if !control.allowed_origins.is_empty() {
            let origin = request.header("origin").unwrap_or("(none)");
            return Err(error(
                403,
                format!(
                    "this route answers only the browser origins in {ALLOWED_ORIGINS_VAR} on this machine, and the request's origin is {origin}; {CONTROL_TOKEN_VAR} is not set"
                ),
            ));
        }
        return Err(error(
            403,
            format!(
                "control routes are disabled on this machine: {CONTROL_TOKEN_VAR} is not set; set {CONTROL_TOKEN_VAR} in the machine's environment (e.g. .env.secrets) and give the monitor the same token; it sends it as \"Authorization: Bearer <token>\""
            ),
        ));
    };
    let given = request
        .header("authorization")
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .or_else(|| request.param("token"));
    match given {
        None => Err(Reply::Unauthorized(json!({
            "error": format!("this route needs the machine's control token ({CONTROL_TOKEN_VAR}): send \"Authorization: Bearer <token>\" or ?token=<token>")
        }))),
        Some(token) if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) => Ok(()),
        Some(_) => Err(error(403, "the control token is wrong")),
    }
}

/// The `lines` parameter: a count from 1 to the most kept, or `default`.
fn lines_param(request: &Request, default: usize) -> Result<usize, Reply> {
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
fn flag_param(request: &Request, name: &str, default: bool) -> Result<bool, Reply> {
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
fn unknown_app(name: &str, snapshot: &Snapshot, services: &[(String, String)]) -> Reply {
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
fn resolve_app(
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

/// A request for an app's recent output.
struct LogsAsk<'a> {
    /// The name the client gave: the app's, or a `status.services` key.
    asked: &'a str,
    /// The app.
    name: &'a str,
    /// How many recent lines.
    lines: usize,
    /// Follow new lines after those.
    stream: bool,
    /// Follow as server-sent events rather than plain text.
    events: bool,
}

/// The recent lines of the app `ask` names that `keep` accepts: as JSON, or as a stream.
fn logs_reply(
    handle: &SupervisorHandle,
    ask: LogsAsk<'_>,
    keep: fn(&LogLine) -> bool,
    extra: Map<String, Value>,
) -> Reply {
    let LogsAsk {
        asked,
        name,
        lines,
        stream,
        events,
    } = ask;
    let Some(log) = handle.logs().get(name) else {
        return unknown_app(name, &handle.snapshot(), &[]);
    };
    if stream {
        let (first, follow) = log.tail_and_follow(lines, keep);
        return Reply::Stream {
            first,
            follow,
            keep,
            events,
        };
    }
    let mut body = Map::new();
    body.insert("service".into(), asked.into());
    if asked != name {
        body.insert("app".into(), name.into());
    }
    body.extend(extra);
    body.insert("lines".into(), json!(log.tail(lines, keep)));
    Reply::Json(200, Value::Object(body))
}

async fn route(
    request: &Request,
    handle: &SupervisorHandle,
    source: &dyn StatusSource,
    control: &Control,
) -> Reply {
    let method = request.method.as_str();
    let path = match request.path.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    if method == "OPTIONS" {
        return Reply::Json(204, Value::Null);
    }
    let post_route = matches!(
        path,
        "/refresh-status" | "/restart/service" | "/restart/machine"
    ) || ops::POST_ROUTES.contains(&path);
    if post_route {
        if method != "POST" {
            return error(
                405,
                format!(
                    "method {method} is not allowed on {path}; use POST with the control token"
                ),
            );
        }
        if let Err(reply) = authorize(request, control) {
            return reply;
        }
        return control_route(path, request, handle, source).await;
    }
    if method != "GET" && method != "HEAD" {
        return error(
            405,
            format!("method {method} is not allowed on {path}; use GET"),
        );
    }
    let snapshot = handle.snapshot();
    let uptime_ms = handle.uptime_ms();
    match path {
        "/" | "/health" => {
            let (healthy, body) = health_body(&snapshot, uptime_ms, source);
            Reply::Json(if healthy { 200 } else { 503 }, body)
        }
        "/ready" => {
            let mut reasons = snapshot.not_ready_reasons(uptime_ms);
            reasons.extend(source.ready_reasons());
            let ready = reasons.is_empty();
            Reply::Json(
                if ready { 200 } else { 503 },
                json!({"ready": ready, "reasons": reasons}),
            )
        }
        "/status" => Reply::Json(200, status_body(&snapshot, uptime_ms, source)),
        "/pm2/list" => Reply::Json(200, pm2_list(&snapshot, uptime_ms, now_ms())),
        "/pm2/logs" => {
            let Some(asked) = request.param("service").filter(|s| !s.is_empty()) else {
                return error(
                    400,
                    "the service parameter is missing: /pm2/logs?service=<app name>&lines=<count>",
                );
            };
            let name = match resolve_app(asked, handle, source) {
                Ok(name) => name,
                Err(reply) => return reply,
            };
            let lines = match lines_param(request, DEFAULT_PM2_LINES) {
                Ok(n) => n,
                Err(reply) => return reply,
            };
            let stream = match flag_param(request, "stream", false) {
                Ok(b) => b,
                Err(reply) => return reply,
            };
            let ask = LogsAsk {
                asked,
                name: &name,
                lines,
                stream,
                events: wants_events(request),
            };
            logs_reply(handle, ask, |_| true, Map::new())
        }
        "/comfyui/logs" => comfyui_logs(request, handle),
        "/metrics" => Reply::Text(
            200,
            crate::metrics::CONTENT_TYPE,
            crate::metrics::render(&snapshot, uptime_ms, &|out| source.metrics(out)),
        ),
        "/logs" => ops::logs(request, handle, source),
        _ => error(
            404,
            format!(
                "no endpoint {path}; try /health, /ready, /status, /metrics, /pm2/list, /pm2/logs or /comfyui/logs"
            ),
        ),
    }
}

fn comfyui_logs(request: &Request, handle: &SupervisorHandle) -> Reply {
    let gpu = match request.param("gpu").unwrap_or("0").trim().parse::<u32>() {
        Ok(gpu) => gpu,
        Err(_) => {
            return error(
                400,
                format!(
                    "gpu=\"{}\" is not a GPU index; use 0, 1, ...",
                    request.param("gpu").unwrap_or_default()
                ),
            );
        }
    };
    let (kind, keep): (&str, fn(&LogLine) -> bool) = match request.param("type").unwrap_or("server")
    {
        "server" => ("server", |_| true),
        "output" => ("output", |l| l.stream == LogStream::Stdout),
        "error" => ("error", |l| l.stream == LogStream::Stderr),
        other => {
            return error(
                400,
                format!("type=\"{other}\" is not a ComfyUI log; use server, output or error"),
            );
        }
    };
    let lines = match lines_param(request, DEFAULT_COMFYUI_LINES) {
        Ok(n) => n,
        Err(reply) => return reply,
    };
    let stream = match flag_param(request, "stream", true) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let name = format!("comfyui-gpu{gpu}");
    if handle.logs().get(&name).is_none() {
        let comfy: Vec<String> = handle
            .snapshot()
            .apps
            .iter()
            .filter(|a| a.name.starts_with("comfyui-gpu"))
            .map(|a| a.name.clone())
            .collect();
        return error(
            404,
            format!(
                "no ComfyUI instance on GPU {gpu} (app {name}); this machine runs {}",
                if comfy.is_empty() {
                    "none".to_owned()
                } else {
                    comfy.join(", ")
                }
            ),
        );
    }
    let mut extra = Map::new();
    extra.insert("gpu".into(), gpu.into());
    extra.insert("type".into(), kind.into());
    let ask = LogsAsk {
        asked: &name,
        name: &name,
        lines,
        stream,
        events: wants_events(request),
    };
    logs_reply(handle, ask, keep, extra)
}

/// Whether the client asked for server-sent events (`Accept: text/event-stream`, as `EventSource`
/// sends); any other client gets plain text lines.
fn wants_events(request: &Request) -> bool {
    request.header("accept").is_some_and(|v| {
        v.split(',').any(|part| {
            part.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
    })
}

async fn control_route(
    path: &str,
    request: &Request,
    handle: &SupervisorHandle,
    source: &dyn StatusSource,
) -> Reply {
    match path {
        "/refresh-status" => match source.refresh().await {
            Ok(()) => Reply::Json(200, json!({"published": true})),
            Err(reason) => error(503, format!("no status published: {reason}")),
        },
        "/restart/service" => {
            let Some(asked) = request.param("service").filter(|s| !s.is_empty()) else {
                return error(
                    400,
                    "the service parameter is missing: POST /restart/service?service=<app name>",
                );
            };
            let name = match resolve_app(asked, handle, source) {
                Ok(name) => name,
                Err(reply) => return reply,
            };
            match handle.restart(&name) {
                Ok(was) => {
                    let via = if asked == name {
                        String::new()
                    } else {
                        format!(" (as {asked})")
                    };
                    crate::log::runtime(&format!(
                        "restart of {name}{via} requested through POST /restart/service"
                    ));
                    Reply::Json(
                        202,
                        json!({"service": asked, "restarting": name, "was": was.pm2_status(), "state": was}),
                    )
                }
                Err(RestartError::UnknownApp { name, .. }) => {
                    unknown_app(&name, &handle.snapshot(), &[])
                }
                Err(err) => error(409, err.to_string()),
            }
        }
        "/stop/service" | "/start/service" => ops::stop_or_start(path, request, handle, source),
        _ => Reply::ThenStop(
            202,
            json!({
                "stopping": true,
                "message": "publishing the shutdown status, letting busy workers finish, then stopping every app; the container's restart policy starts the machine again"
            }),
        ),
    }
}

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

/// `machine-runtime health`: Ok when `GET /health` on `127.0.0.1:port` answers 200; the error
/// carries the reasons the endpoint gave.
pub async fn check(port: u16, timeout: Duration) -> Result<(), String> {
    let url = HttpUrl::local(port, "/health");
    let response = http::get(&url, timeout).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str) -> Request {
        Request::parse(head).unwrap()
    }

    #[test]
    fn parses_the_request_line_query_and_authorization() {
        let r = request(
            "POST /pm2/logs?service=comfyui-gpu0&lines=5&token=a%20b HTTP/1.1\r\nHost: x\r\nauthorization:  Bearer t0k \r\n\r\n",
        );
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/pm2/logs"));
        assert_eq!(r.param("service"), Some("comfyui-gpu0"));
        assert_eq!(r.param("lines"), Some("5"));
        assert_eq!(r.param("token"), Some("a b"));
        assert_eq!(r.param("stream"), None);
        assert_eq!(r.header("authorization"), Some("Bearer t0k"));
        for bad in [
            "",
            "GET\r\n\r\n",
            "GET / FTP/1\r\n\r\n",
            "GET / HTTP/1.1 extra\r\n\r\n",
        ] {
            assert_eq!(Request::parse(bad), None, "{bad:?}");
        }
    }

    fn status_of(reply: Result<(), Reply>) -> u16 {
        match reply {
            Ok(()) => 200,
            Err(Reply::Json(status, _)) => status,
            Err(Reply::Unauthorized(_)) => 401,
            Err(_) => 0,
        }
    }

    #[test]
    fn the_control_token_is_required_whole_from_the_header_or_the_query() {
        let on = Control {
            token: Some("s3cret-token".into()),
            ..Control::default()
        };
        let off = Control::from_lookup(|_| Some("  ".into()));
        assert_eq!(off.token, None);
        let ask = |head: &str, control: &Control| status_of(authorize(&request(head), control));
        let with = |auth: &str| format!("POST /x HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n");
        assert_eq!(ask(&with("Bearer s3cret-token"), &on), 200);
        assert_eq!(ask(&with("bearer s3cret-token"), &on), 200);
        assert_eq!(ask("POST /x?token=s3cret-token HTTP/1.1\r\n\r\n", &on), 200);
        assert_eq!(ask(&with("Bearer s3cret"), &on), 403);
        assert_eq!(ask(&with("Bearer s3cret-token2"), &on), 403);
        assert_eq!(ask(&with("Basic s3cret-token"), &on), 401);
        assert_eq!(ask("POST /x HTTP/1.1\r\n\r\n", &on), 401);
        assert_eq!(ask(&with("Bearer s3cret-token"), &off), 403);
        assert!(format!("{on:?}").contains("***") && !format!("{on:?}").contains("s3cret"));
    }

    #[test]
    fn an_allowed_origin_needs_no_token_and_gets_itself_back() {
        let monitor = "http://localhost:3333";
        let lookup = |token: Option<&'static str>| {
            move |name: &str| match name {
                ALLOWED_ORIGINS_VAR => Some(format!("{monitor}, https://m.example")),
                CONTROL_TOKEN_VAR => token.map(str::to_owned),
                _ => None,
            }
        };
        let origins_only = Control::from_lookup(lookup(None));
        let both = Control::from_lookup(lookup(Some("s3cret-token")));
        let off = Control::default();
        let from = |origin: &str| format!("POST /x HTTP/1.1\r\nOrigin: {origin}\r\n\r\n");
        let ask = |head: &str, control: &Control| status_of(authorize(&request(head), control));
        assert_eq!(ask(&from(monitor), &origins_only), 200);
        assert_eq!(ask(&from(monitor), &both), 200);
        assert_eq!(ask(&from(monitor), &off), 403);
        assert_eq!(ask(&from("http://localhost:3334"), &origins_only), 403);
        assert_eq!(ask(&from("http://evil.example"), &both), 401);
        assert_eq!(ask("POST /x HTTP/1.1\r\n\r\n", &origins_only), 403);
        let with_token = "POST /x HTTP/1.1\r\nOrigin: http://evil.example\r\nAuthorization: Bearer s3cret-token\r\n\r\n";
        assert_eq!(ask(with_token, &both), 200);

        let headers = |head: &str, control: &Control| headers_for(Some(&request(head)), control);
        let allowed = headers(&from(monitor), &both);
        assert_eq!(
            allowed[0],
            format!("Access-Control-Allow-Origin: {monitor}")
        );
        assert!(allowed.contains(&"Vary: Origin".to_owned()), "{allowed:?}");
        let other = headers(&from("http://evil.example"), &both);
        assert_eq!(other[0], "Access-Control-Allow-Origin: *");
        assert_eq!(
            headers(&from(monitor), &off)[0],
            "Access-Control-Allow-Origin: *"
        );
        assert!(!headers(&from(monitor), &off).contains(&"Vary: Origin".to_owned()));
        let preflight = |origin: &str| {
            format!(
                "OPTIONS /refresh-status HTTP/1.1\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\nAccess-Control-Request-Private-Network: true\r\n\r\n"
            )
        };
        let pna = "Access-Control-Allow-Private-Network: true".to_owned();
        let answer = headers(&preflight(monitor), &both);
        assert!(answer.contains(&pna), "{answer:?}");
        assert!(
            answer
                .iter()
                .any(|h| h.starts_with("Access-Control-Max-Age: "))
        );
        assert!(!headers(&preflight("http://evil.example"), &both).contains(&pna));
        assert!(!headers(&from(monitor), &both).contains(&pna));
    }

    #[test]
    fn events_only_for_a_client_that_asks_for_them() {
        let accepts = |accept: &str| {
            wants_events(&request(&format!(
                "GET /pm2/logs HTTP/1.1\r\nAccept: {accept}\r\n\r\n"
            )))
        };
        assert!(accepts("text/event-stream"));
        assert!(accepts("text/html, Text/Event-Stream;q=0.9"));
        assert!(!accepts("*/*"));
        assert!(!accepts("text/plain"));
        assert!(!wants_events(&request("GET / HTTP/1.1\r\n\r\n")));
        let line = LogLine {
            at_ms: 5,
            stream: LogStream::Stderr,
            text: "a \"b\"".into(),
        };
        assert_eq!(StreamFormat::Text.line(&line), "a \"b\"\n");
        assert_eq!(
            StreamFormat::Events.line(&line),
            "data: {\"at_ms\":5,\"stream\":\"stderr\",\"text\":\"a \\\"b\\\"\"}\n\n"
        );
    }

    #[test]
    fn parameters_are_checked_with_the_allowed_values() {
        let lines =
            |q: &str| match lines_param(&request(&format!("GET /?{q} HTTP/1.1\r\n\r\n")), 50) {
                Ok(n) => Ok(n),
                Err(Reply::Json(status, body)) => Err((status, body["error"].to_string())),
                Err(_) => Err((0, String::new())),
            };
        assert_eq!(lines(""), Ok(50));
        assert_eq!(lines("lines=7"), Ok(7));
        assert_eq!(lines("lines=999999"), Ok(MAX_LINES));
        let (status, message) = lines("lines=0").unwrap_err();
        assert_eq!(status, 400);
        assert!(message.contains("whole number from 1 to"), "{message}");
        assert!(
            flag_param(
                &request("GET /?stream=yes HTTP/1.1\r\n\r\n"),
                "stream",
                false
            )
            .unwrap()
        );
        assert!(
            flag_param(
                &request("GET /?stream=maybe HTTP/1.1\r\n\r\n"),
                "stream",
                false
            )
            .is_err()
        );
    }
}
