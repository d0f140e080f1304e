//! Which route answers what: the reading routes, the app log routes, and the POST routes behind
//! the control token.

use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use super::bodies::{health_body, pm2_list, status_body};
use super::params::{flag_param, lines_param, resolve_app, unknown_app};
use super::stream::wants_events;
use super::{
    CONTROL_TOKEN_VAR, Control, DEFAULT_COMFYUI_LINES, DEFAULT_PM2_LINES, Reply, StatusSource,
    error, ops,
};
use crate::http::Request;
use crate::origins::ALLOWED_ORIGINS_VAR;
use crate::supervisor::logs::{LogLine, LogStream};
use crate::supervisor::{RestartError, SupervisorHandle};
use crate::time::now_ms;

/// Checks a POST request: from a browser page on an allowed origin, or with the control token.
pub(super) fn authorize(request: &Request, control: &Control) -> Result<(), Reply> {
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

pub(super) async fn route(
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
        "/pm2/logs" => pm2_logs(request, handle, source),
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

/// `GET /pm2/logs?service=NAME&lines=N[&stream=true]`: an app's recent output, or a stream of it.
fn pm2_logs(request: &Request, handle: &SupervisorHandle, source: &dyn StatusSource) -> Reply {
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
