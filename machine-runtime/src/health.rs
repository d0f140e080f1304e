//! The machine's HTTP endpoint on the health port, on plain tokio, and the client behind
//! `machine-runtime health` (for Docker's HEALTHCHECK, so the image needs no curl).
//!
//! One request per connection (`Connection: close`), read and answered with [`crate::http`], which
//! is all the health check, the API and the monitor's machine card need. Routes (worker contract §5):
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
//!   app's output, `{service, lines: [{at_ms, stream, text}]}`; with `stream=true` a
//!   `text/event-stream` of the same lines as JSON, then each new one as it comes. 400 without
//!   `service`.
//! - `GET /comfyui/logs?gpu=I&type=server|output|error&lines=N[&stream=false]`: the output of
//!   app `comfyui-gpu<I>`, streamed by default as the old `tail -f` was. The old server tailed three
//!   files; each maps to the process's pipes: `server` (ComfyUI's own log) = both pipes, `output`
//!   (PM2's out file) = stdout, `error` (PM2's error file) = stderr.
//! - `POST /refresh-status`: publish a status message now.
//! - `POST /restart/service?service=NAME`: restart one app as `pm2 restart` does.
//! - `POST /stop/service`, `POST /start/service`, `GET /logs`: an operator's `machine-runtime
//!   stop|start|logs` (module `ops`).
//! - `POST /restart/machine`: stop the machine cleanly (final `shutdown` status, busy workers
//!   drained, every app stopped); the runtime exits 0 and the container's restart policy starts it
//!   again.
//!
//! Reading routes answer with `Access-Control-Allow-Origin: *`, and nothing they show holds a secret
//! (log lines are masked when stored). The POST routes need the control token `MACHINE_CONTROL_TOKEN`
//! as `Authorization: Bearer <token>` or `?token=<token>`, compared in constant time: unset, they
//! answer 403 saying how to enable them; missing 401, wrong 403. So a web page that a browser on
//! the machine's network opens cannot restart the machine.

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

use crate::broker::now_ms;
use crate::http::{self, HttpUrl, Limits, Request, write_json};
use crate::supervisor::logs::{LogLine, LogStream, MAX_LINES};
use crate::supervisor::{RestartError, Snapshot, SupervisorHandle};

mod ops;

/// The environment variable holding the token of the POST routes.
pub(crate) const CONTROL_TOKEN_VAR: &str = "MACHINE_CONTROL_TOKEN";
/// Lines `/pm2/logs` returns without `lines`.
const DEFAULT_PM2_LINES: usize = 50;
/// Lines `/comfyui/logs` returns without `lines`.
const DEFAULT_COMFYUI_LINES: usize = 100;
/// Longest request head read.
const MAX_HEAD: usize = 8192;
/// Longest request body read (and ignored).
const MAX_BODY: usize = 64 * 1024;

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
        #[source]
        source: std::io::Error,
    },
}

/// Settings of the POST routes.
#[derive(Clone, Default)]
pub struct Control {
    /// `MACHINE_CONTROL_TOKEN`; `None` (or empty) disables the POST routes.
    pub token: Option<String>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Control {
    /// Reads `MACHINE_CONTROL_TOKEN` through `lookup` (surrounding blanks ignored; empty is unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Control {
        Control {
            token: lookup(CONTROL_TOKEN_VAR)
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
        }
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
    crate::supervisor::state::log(&format!("health endpoint on http://{addr}/health"));
    if control.token.is_none() {
        crate::supervisor::state::log(&format!(
            "the control routes (POST /restart/..., /refresh-status) are off: {CONTROL_TOKEN_VAR} is not set"
        ));
    }
    let control = Arc::new(control);
    let shutdown = handle.shutdown_token();
    let tracker = handle.tracker();
    tracker.spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let handle = handle.clone();
                        let source = source.clone();
                        let control = control.clone();
                        // Connections are short (log streams end at shutdown); they are not tracked
                        // so a stuck client cannot hold up shutdown.
                        tokio::spawn(answer(stream, handle, source, control));
                    }
                }
                _ = shutdown.cancelled() => return,
            }
        }
    });
    Ok(addr)
}

/// What to send back.
#[derive(Debug)]
enum Reply {
    /// A JSON body with this status.
    Json(u16, Value),
    /// 401 with `WWW-Authenticate: Bearer`.
    Unauthorized(Value),
    /// A `text/event-stream` of log lines: these first, then every new one `keep` accepts.
    Stream {
        first: Vec<LogLine>,
        follow: broadcast::Receiver<LogLine>,
        keep: fn(&LogLine) -> bool,
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
            let _ = write_json(&mut stream, bad.status, &body, COMMON_HEADERS, false).await;
            let _ = stream.shutdown().await;
            return;
        }
        Ok(Ok(request)) => request,
    };
    let reply = route(&request, &handle, source.as_ref(), &control).await;
    let head_only = request.method == "HEAD";
    match reply {
        Reply::Json(status, body) => {
            let _ = write_json(&mut stream, status, &body, COMMON_HEADERS, head_only).await;
        }
        Reply::Unauthorized(body) => {
            let mut headers = COMMON_HEADERS.to_vec();
            headers.push("WWW-Authenticate: Bearer realm=\"machine\"");
            let _ = write_json(&mut stream, 401, &body, &headers, head_only).await;
        }
        Reply::ThenStop(status, body) => {
            let _ = write_json(&mut stream, status, &body, COMMON_HEADERS, false).await;
            crate::supervisor::state::log("stop requested through POST /restart/machine");
            handle.request_stop(libc::SIGTERM);
        }
        Reply::Stream {
            first,
            follow,
            keep,
        } => {
            stream_lines(&mut stream, first, follow, keep, handle.shutdown_token()).await;
        }
        Reply::Feed(feed) => ops::write_feed(&mut stream, feed, handle.shutdown_token()).await,
    }
    let _ = stream.shutdown().await;
}

/// Headers every answer carries besides [`http::write_json`]'s: reads are open to any origin (the
/// monitor is a web page on another origin); the POST routes are guarded by the token, not by CORS.
const COMMON_HEADERS: &[&str] = &[
    "Access-Control-Allow-Origin: *",
    "Access-Control-Allow-Methods: GET, POST, OPTIONS",
    "Access-Control-Allow-Headers: Authorization, Content-Type",
    "Cache-Control: no-store",
];

/// Writes a server-sent event stream: `first`, then what `follow` brings, one `data:` event per
/// line (the line as JSON); an `event: skipped` when this client fell behind; ends with
/// `event: end` when the machine stops, or when the client goes away.
async fn stream_lines(
    stream: &mut TcpStream,
    first: Vec<LogLine>,
    mut follow: broadcast::Receiver<LogLine>,
    keep: fn(&LogLine) -> bool,
    shutdown: CancellationToken,
) {
    let mut headers = vec!["Content-Type: text/event-stream", "X-Accel-Buffering: no"];
    headers.extend_from_slice(COMMON_HEADERS);
    headers.push("Connection: close");
    let head = http::head(200, &headers);
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let event = |line: &LogLine| format!("data: {}\n\n", json!(line));
    let mut out = String::new();
    for line in &first {
        out.push_str(&event(line));
    }
    if stream.write_all(out.as_bytes()).await.is_err() {
        return;
    }
    let mut probe = [0u8; 64];
    loop {
        let text = tokio::select! {
            () = shutdown.cancelled() => "event: end\ndata: {\"reason\":\"the machine is stopping\"}\n\n".to_owned(),
            // A read returns only when the client closes (or sends junk): stop following then.
            _ = stream.read(&mut probe) => return,
            next = follow.recv() => match next {
                Ok(line) if keep(&line) => event(&line),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => format!("event: skipped\ndata: {{\"skipped\":{n}}}\n\n"),
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

/// Checks the control token of a POST request.
fn authorize(request: &Request, control: &Control) -> Result<(), Reply> {
    let Some(expected) = control.token.as_deref() else {
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

fn unknown_app(name: &str, snapshot: &Snapshot) -> Reply {
    let hint =
        machine_model::suggest::did_you_mean(name, snapshot.apps.iter().map(|a| a.name.as_str()))
            .map(|s| format!("; did you mean \"{s}\"?"))
            .unwrap_or_default();
    let names: Vec<&str> = snapshot.apps.iter().map(|a| a.name.as_str()).collect();
    error(
        404,
        format!("no app named \"{name}\"{hint} (apps: {})", names.join(", ")),
    )
}

/// The recent lines of app `name` that `keep` accepts: as JSON, or as a stream.
fn logs_reply(
    handle: &SupervisorHandle,
    name: &str,
    lines: usize,
    stream: bool,
    keep: fn(&LogLine) -> bool,
    extra: Map<String, Value>,
) -> Reply {
    let Some(log) = handle.logs().get(name) else {
        return unknown_app(name, &handle.snapshot());
    };
    if stream {
        let (first, follow) = log.tail_and_follow(lines, keep);
        return Reply::Stream {
            first,
            follow,
            keep,
        };
    }
    let mut body = Map::new();
    body.insert("service".into(), name.into());
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
            let Some(name) = request.param("service").filter(|s| !s.is_empty()) else {
                return error(
                    400,
                    "the service parameter is missing: /pm2/logs?service=<app name>&lines=<count>",
                );
            };
            let lines = match lines_param(request, DEFAULT_PM2_LINES) {
                Ok(n) => n,
                Err(reply) => return reply,
            };
            let stream = match flag_param(request, "stream", false) {
                Ok(b) => b,
                Err(reply) => return reply,
            };
            logs_reply(handle, name, lines, stream, |_| true, Map::new())
        }
        "/comfyui/logs" => comfyui_logs(request, handle),
        "/logs" => ops::logs(request, handle),
        _ => error(
            404,
            format!(
                "no endpoint {path}; try /health, /ready, /status, /pm2/list, /pm2/logs or /comfyui/logs"
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
    logs_reply(handle, &name, lines, stream, keep, extra)
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
            let Some(name) = request.param("service").filter(|s| !s.is_empty()) else {
                return error(
                    400,
                    "the service parameter is missing: POST /restart/service?service=<app name>",
                );
            };
            match handle.restart(name) {
                Ok(was) => {
                    crate::supervisor::state::log(&format!(
                        "restart of {name} requested through POST /restart/service"
                    ));
                    Reply::Json(
                        202,
                        json!({"restarting": name, "was": was.pm2_status(), "state": was}),
                    )
                }
                Err(RestartError::UnknownApp { name, .. }) => {
                    unknown_app(&name, &handle.snapshot())
                }
                Err(err) => error(409, err.to_string()),
            }
        }
        "/stop/service" | "/start/service" => ops::stop_or_start(path, request, handle),
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
