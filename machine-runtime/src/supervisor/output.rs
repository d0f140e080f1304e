//! Forwards a child's stdout and stderr to ours, line by line, each line prefixed `[app-name] ` (with
//! `--log-format json`, one [`crate::log::app_line`] object per line instead),
//! and keeps each line in the app's in-memory log ([`super::logs`]); both copies have the values
//! of secret variables masked.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::net::unix::pipe;

use super::logs::{AppLog, LogStream};

/// Longest line forwarded in one piece; longer lines are split so memory stays bounded.
const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// Starts forwarding `fd` (the read end of a child's pipe). The task ends at end of file, i.e.
/// when the child and every grandchild holding the pipe are gone.
pub(crate) fn forward(name: &str, fd: OwnedFd, stream: Stream, log: Arc<AppLog>) {
    let prefix = format!("[{name}] ").into_bytes();
    let receiver = match pipe::Receiver::from_owned_fd(fd) {
        Ok(r) => r,
        Err(e) => {
            crate::log::runtime(&format!("cannot forward the output of {name}: {e}"));
            return;
        }
    };
    let json = crate::log::is_json().then(|| name.to_owned());
    tokio::spawn(pump(receiver, prefix, json, stream, log));
}

async fn pump(
    receiver: pipe::Receiver,
    prefix: Vec<u8>,
    json: Option<String>,
    stream: Stream,
    log: Arc<AppLog>,
) {
    let kept = match stream {
        Stream::Stdout => LogStream::Stdout,
        Stream::Stderr => LogStream::Stderr,
    };
    // Keeps the line and forwards it, masked when it holds a secret.
    let keep = |out: &mut Vec<u8>, line: &[u8]| {
        let masked = log.push(kept, line.strip_suffix(b"\r").unwrap_or(line));
        let text = masked.as_deref().map_or(line, str::as_bytes);
        match &json {
            Some(app) => crate::log::app_line(out, app, kept, text),
            None => push_line(out, &prefix, text),
        }
    };
    let mut pending: Vec<u8> = Vec::new();
    loop {
        if receiver.readable().await.is_err() {
            break;
        }
        // The read buffer lives only between awaits, so an idle app costs no buffer memory.
        let mut chunk = [0u8; 8192];
        let n = match receiver.try_read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            keep(&mut out, &pending[start..end]);
            start = end + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE {
            keep(&mut out, &pending[..MAX_LINE]);
            pending.drain(..MAX_LINE);
        }
        emit(stream, &out);
        if pending.is_empty() {
            // Give back the memory of a burst of output.
            pending.shrink_to(0);
        }
    }
    if !pending.is_empty() {
        let mut out = Vec::new();
        keep(&mut out, &pending);
        emit(stream, &out);
    }
}

/// Forwards one line the runtime says on the app's behalf (an IPC message), as if the app had
/// written it: kept in its log, masked, prefixed.
pub(crate) fn line(name: &str, stream: Stream, log: &AppLog, text: &str) {
    let kept = match stream {
        Stream::Stdout => LogStream::Stdout,
        Stream::Stderr => LogStream::Stderr,
    };
    let masked = log.push(kept, text.as_bytes());
    let mut out = Vec::new();
    push_line(
        &mut out,
        format!("[{name}] ").as_bytes(),
        masked.as_deref().unwrap_or(text).as_bytes(),
    );
    emit(stream, &out);
}

fn push_line(out: &mut Vec<u8>, prefix: &[u8], line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    out.extend_from_slice(prefix);
    out.extend_from_slice(line);
    out.push(b'\n');
}

fn emit(stream: Stream, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // One queued chunk per batch of whole lines, so lines of different apps never mix; the sink
    // never blocks, so a reader that stops reading cannot stall this task or the child.
    match stream {
        Stream::Stdout => crate::sink::out(bytes),
        Stream::Stderr => crate::sink::err(bytes),
    }
}
