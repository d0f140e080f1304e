//! The endpoint's routes for an operator's command line (`machine-runtime stop|start|logs`), beside
//! the monitor's in `health/routes.rs`:
//!
//! - `POST /stop/service?service=NAME`: stop one app as `pm2 stop` does; it stays `stopped` (no
//!   restart policy starts it) until `POST /start/service` or `POST /restart/service`. 202
//!   `{stopping: NAME, was: <PM2 status before>, state: <state before>}`; 200 with the same shape
//!   when it was already held stopped.
//! - `POST /start/service?service=NAME`: start an app that was stopped on request or ended for good
//!   (`errored`, or `stopped` with autorestart off). 202 `{starting: NAME, was, state}`; 200 with the
//!   same shape when it was running or about to run (nothing done).
//! - `GET /logs[?service=NAME[,NAME…]][&lines=N][&follow=true]`: the last N (default 50) lines of each
//!   app named (every app without `service`), oldest first across apps, as newline-delimited JSON
//!   (`application/x-ndjson`), one object per line: `{name, at_ms, stream, text}` (`at_ms` epoch
//!   milliseconds, `stream` `stdout` or `stderr`, secrets already masked). With `follow=true` every
//!   new line follows as it comes, after one `{following: [NAME…]}` that ends the recent lines;
//!   `{name, skipped: N}` says a slow reader missed N lines of app NAME,
//!   `{end: "..."}` that the machine is stopping.
//!
//! The POST routes need the control token, as every POST route (see `health/routes.rs`); 404 with a
//! did-you-mean for an unknown name, 409 while the machine is stopping.

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::params::{flag_param, lines_param, resolve_app, unknown_app};
use super::{COMMON_HEADERS, DEFAULT_PM2_LINES, Reply, StatusSource, error};
use crate::http::{self, Request};
use crate::supervisor::logs::LogLine;
use crate::supervisor::{AppState, RestartError, SupervisorHandle};

/// The POST routes of this module.
pub(super) const POST_ROUTES: [&str; 2] = ["/stop/service", "/start/service"];

/// Lines a follower of many apps may fall behind before the oldest are skipped.
const FEED_BACKLOG: usize = 1024;

/// Answers `POST /stop/service` and `POST /start/service` (the token is already checked); the
/// name is an app's or a `status.services` key, as for `/restart/service`.
pub(super) fn stop_or_start(
    path: &str,
    request: &Request,
    handle: &SupervisorHandle,
    source: &dyn StatusSource,
) -> Reply {
    let stop = path == "/stop/service";
    let Some(asked) = request.param("service").filter(|s| !s.is_empty()) else {
        return error(
            400,
            format!("the service parameter is missing: POST {path}?service=<app name>"),
        );
    };
    let name = match resolve_app(asked, handle, source) {
        Ok(name) => name,
        Err(reply) => return reply,
    };
    let name = name.as_str();
    let already_stopped = stop && handle.is_stopped_by_request(name);
    let result = if stop {
        handle.stop_app(name)
    } else {
        handle.start_app(name)
    };
    match result {
        Ok(was) => {
            let (key, changed) = if stop {
                ("stopping", !already_stopped)
            } else {
                (
                    "starting",
                    matches!(was, AppState::Stopped | AppState::Errored),
                )
            };
            if changed {
                crate::log::runtime(&format!(
                    "{} of {name} requested through POST {path}",
                    if stop { "stop" } else { "start" }
                ));
            }
            Reply::Json(
                if changed { 202 } else { 200 },
                json!({key: name, "was": was.pm2_status(), "state": was}),
            )
        }
        Err(RestartError::UnknownApp { name, .. }) => {
            unknown_app(&name, &handle.snapshot(), &source.service_apps())
        }
        Err(err) => error(409, err.to_string()),
    }
}

/// What `GET /logs` sends: the recent lines, then (when following) what each app prints next.
#[derive(Debug)]
pub(super) struct Feed {
    first: Vec<(String, LogLine)>,
    follow: Vec<(String, broadcast::Receiver<LogLine>)>,
}

/// Answers `GET /logs`; each name is an app's or a `status.services` key.
pub(super) fn logs(
    request: &Request,
    handle: &SupervisorHandle,
    source: &dyn StatusSource,
) -> Reply {
    let snapshot = handle.snapshot();
    let asked: Vec<&str> = request
        .query
        .iter()
        .filter(|(k, _)| k == "service")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let services = source.service_apps();
    let names: Vec<&str> = if asked.is_empty() {
        snapshot.apps.iter().map(|a| a.name.as_str()).collect()
    } else {
        asked
            .into_iter()
            .map(|n| {
                if handle.logs().get(n).is_some() {
                    return n;
                }
                services
                    .iter()
                    .find(|(key, _)| key == n)
                    .map_or(n, |(_, app)| app.as_str())
            })
            .collect()
    };
    let unknown: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| handle.logs().get(n).is_none())
        .collect();
    if let Some(first) = unknown.first() {
        if unknown.len() == 1 {
            return unknown_app(first, &snapshot, &services);
        }
        let known: Vec<&str> = snapshot.apps.iter().map(|a| a.name.as_str()).collect();
        let each: Vec<String> = unknown
            .iter()
            .map(|n| {
                let hint = machine_model::suggest::did_you_mean(n, known.iter().copied())
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                format!("\"{n}\"{hint}")
            })
            .collect();
        return error(
            404,
            format!(
                "no apps named {} (apps: {})",
                each.join(", "),
                known.join(", ")
            ),
        );
    }
    let lines = match lines_param(request, DEFAULT_PM2_LINES) {
        Ok(n) => n,
        Err(reply) => return reply,
    };
    let follow = match flag_param(request, "follow", false) {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let mut feed = Feed {
        first: Vec::new(),
        follow: Vec::new(),
    };
    for name in names {
        let Some(log) = handle.logs().get(name) else {
            continue;
        };
        let tail = if follow {
            let (tail, rx) = log.tail_and_follow(lines, |_| true);
            feed.follow.push((name.to_owned(), rx));
            tail
        } else {
            log.tail(lines, |_| true)
        };
        feed.first
            .extend(tail.into_iter().map(|line| (name.to_owned(), line)));
    }
    // Stable: one app's lines keep their order when two share a millisecond.
    feed.first.sort_by_key(|(_, line)| line.at_ms);
    Reply::Feed(feed)
}

/// One line of the feed as JSON text with its newline.
fn entry(name: &str, line: &LogLine) -> String {
    format!(
        "{}\n",
        json!({"name": name, "at_ms": line.at_ms, "stream": line.stream, "text": line.text})
    )
}

/// Writes a [`Feed`]: the head, the first lines, then (when following) each new line until the
/// client goes away or the machine stops.
pub(super) async fn write_feed(stream: &mut TcpStream, feed: Feed, shutdown: CancellationToken) {
    let mut headers = vec![
        "Content-Type: application/x-ndjson",
        "X-Accel-Buffering: no",
    ];
    headers.extend_from_slice(COMMON_HEADERS);
    headers.push("Connection: close");
    let mut out = http::head(200, &headers);
    for (name, line) in &feed.first {
        out.push_str(&entry(name, line));
    }
    if !feed.follow.is_empty() {
        let names: Vec<&str> = feed.follow.iter().map(|(n, _)| n.as_str()).collect();
        out.push_str(&format!("{}\n", json!({"following": names})));
    }
    if stream.write_all(out.as_bytes()).await.is_err() || feed.follow.is_empty() {
        return;
    }
    // One forwarder per app into one queue, so the lines go out in the order they came.
    let (tx, mut rx) = mpsc::channel::<Value>(FEED_BACKLOG);
    let stop = CancellationToken::new();
    for (name, mut follow) in feed.follow {
        let tx = tx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    () = stop.cancelled() => return,
                    next = follow.recv() => match next {
                        Ok(line) => json!({"name": name, "at_ms": line.at_ms, "stream": line.stream, "text": line.text}),
                        Err(broadcast::error::RecvError::Lagged(n)) => json!({"name": name, "skipped": n}),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let _stop_forwarders = stop.drop_guard();
    let mut probe = [0u8; 64];
    loop {
        let text = tokio::select! {
            () = shutdown.cancelled() => format!("{}\n", json!({"end": "the machine is stopping"})),
            // A read returns only when the client closes (or sends junk): stop following then.
            _ = stream.read(&mut probe) => return,
            next = rx.recv() => match next {
                Some(item) => format!("{item}\n"),
                None => return,
            },
        };
        if stream.write_all(text.as_bytes()).await.is_err() || shutdown.is_cancelled() {
            return;
        }
    }
}
