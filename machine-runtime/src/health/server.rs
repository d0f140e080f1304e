//! The endpoint's listener: the accept loop (capped connections, a pause after a failed `accept`),
//! one connection's request read and answered, and the headers every answer carries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::routes::route;
use super::stream::{LineStream, StreamFormat, stream_lines};
use super::{
    COMMON_HEADERS, CONTROL_TOKEN_VAR, Control, HealthError, MAX_BODY, MAX_HEAD, Reply,
    StatusSource, ops,
};
use crate::health_limits::{AcceptBackoff, Caps, Gate};
use crate::http::{self, Limits, Request, write_json};
use crate::origins::ALLOWED_ORIGINS_VAR;
use crate::supervisor::SupervisorHandle;

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
        .map_err(|cause| HealthError::Bind { port, cause })?;
    let addr = listener
        .local_addr()
        .map_err(|cause| HealthError::Bind { port, cause })?;
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

/// How long a browser may keep a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE_S: u32 = 600;

/// The headers of an answer to `request` (`None`: one that could not be read): CORS and
/// [`COMMON_HEADERS`]. A request from an allowed origin gets that origin back (with `Vary:
/// Origin`); any other gets `*`. A preflight (`OPTIONS`) gets `Access-Control-Max-Age`, and from an
/// allowed origin also `Access-Control-Allow-Private-Network: true` when it asks for it (Chrome's
/// Private Network Access, for a public monitor calling a machine on a private address).
pub(super) fn headers_for(request: Option<&Request>, control: &Control) -> Vec<String> {
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
