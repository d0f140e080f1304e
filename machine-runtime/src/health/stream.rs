//! Log streams: an app's recent lines, then each new one, as plain text lines or as server-sent
//! events, until the client goes or the machine stops.

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::http::{self, Request};
use crate::supervisor::logs::LogLine;

/// How a log stream is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamFormat {
    /// `text/plain`: each line's text and `\n`, what the monitor's log viewer
    /// (`@melloware/react-logviewer`, `LazyLog url stream`) reads: it splits the raw bytes on line
    /// ends (worker contract §5).
    Text,
    /// `text/event-stream` (asked for with `Accept: text/event-stream`, as `EventSource` does): one
    /// `data:` event per line, the line as JSON (`{at_ms, stream, text}`).
    Events,
}

/// A log stream to write: `first`, then every line `follow` brings that `keep` accepts.
pub(super) struct LineStream {
    pub(super) first: Vec<LogLine>,
    pub(super) follow: broadcast::Receiver<LogLine>,
    pub(super) keep: fn(&LogLine) -> bool,
    pub(super) format: StreamFormat,
}

impl StreamFormat {
    fn content_type(self) -> &'static str {
        match self {
            Self::Text => "Content-Type: text/plain; charset=utf-8",
            Self::Events => "Content-Type: text/event-stream",
        }
    }

    pub(super) fn line(self, line: &LogLine) -> String {
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
pub(super) async fn stream_lines(
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

/// Whether the client asked for server-sent events (`Accept: text/event-stream`, as `EventSource`
/// sends); any other client gets plain text lines.
pub(super) fn wants_events(request: &Request) -> bool {
    request.header("accept").is_some_and(|v| {
        v.split(',').any(|part| {
            part.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
    })
}
