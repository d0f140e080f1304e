//! Readiness probes: an HTTP GET expecting 2xx, a TCP connect, or a command exiting 0.
//!
//! The HTTP client is deliberately tiny (plain HTTP/1.1 over a tokio `TcpStream`): probes talk to
//! services on the same machine, and the `health` subcommand talks to our own endpoint.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::reaper::Reaper;

/// How often a probe runs when the ecosystem does not say.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);
/// How long one probe attempt may take when the ecosystem does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(2000);

/// A readiness probe with its schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// What to check.
    pub check: Check,
    /// Time between the start of two attempts.
    pub interval: Duration,
    /// Time one attempt may take before it counts as failed.
    pub timeout: Duration,
}

/// The kinds of readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `GET url` answered with a 2xx status.
    Http { url: HttpUrl },
    /// A TCP connection to `host:port` succeeds.
    Tcp { host: String, port: u16 },
    /// The command (program and arguments, no shell) exits with status 0.
    Command { command: Vec<String> },
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Http { url } => write!(f, "http {url}"),
            Check::Tcp { host, port } => write!(f, "tcp {host}:{port}"),
            Check::Command { command } => write!(f, "command `{}`", command.join(" ")),
        }
    }
}

/// A parsed `http://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

impl HttpUrl {
    /// Parses a plain-HTTP URL; the error says what is wrong in lowercase words.
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err(format!(
                "\"{url}\" uses https, which readiness probes do not speak; probe the plain http port or use a tcp probe"
            ));
        } else {
            return Err(format!("\"{url}\" is not an http:// url"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            // An IPv6 literal: [::1]:8080
            let end = bracketed
                .find(']')
                .ok_or_else(|| format!("\"{url}\" has an unclosed ipv6 bracket"))?;
            let host = &bracketed[..end];
            let port = bracketed[end + 1..].strip_prefix(':');
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("\"{url}\" has no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("\"{url}\" has an invalid port \"{p}\""))?,
        };
        Ok(HttpUrl {
            host,
            port,
            path: path.to_string(),
        })
    }
}

/// The answer of a minimal HTTP GET.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// Sends `GET` and reads the whole response (the server closes the connection).
pub async fn http_get(url: &HttpUrl, timeout: Duration) -> Result<HttpResponse, String> {
    let attempt = async {
        let mut stream = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", url.host, url.port))?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: machine-runtime\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            url.path, url.host, url.port
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send the request to {url}: {e}"))?;
        let mut raw = Vec::new();
        // Cap the body: a probe only needs the status line and a short body.
        (&mut stream)
            .take(1 << 20)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("cannot read the answer of {url}: {e}"))?;
        parse_response(&raw).ok_or_else(|| format!("{url} did not answer with http"))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{url} did not answer within {}",
            human_duration(timeout)
        )),
    }
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let status_line = text.lines().next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let body = match text.find("\r\n\r\n") {
        Some(i) => text[i + 4..].to_string(),
        None => String::new(),
    };
    Some(HttpResponse { status, body })
}

/// Runs one attempt of `check`, bounded by `timeout`; `Ok` means ready.
pub async fn probe_once(check: &Check, timeout: Duration, reaper: &Reaper) -> Result<(), String> {
    match check {
        Check::Http { url } => {
            let response = http_get(url, timeout).await?;
            if (200..300).contains(&response.status) {
                Ok(())
            } else {
                Err(format!("{url} answered {}", response.status))
            }
        }
        Check::Tcp { host, port } => {
            match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), *port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("cannot connect to {host}:{port}: {e}")),
                Err(_) => Err(format!(
                    "connecting to {host}:{port} took longer than {}",
                    human_duration(timeout)
                )),
            }
        }
        Check::Command { command } => run_probe_command(command, timeout, reaper).await,
    }
}

async fn run_probe_command(
    command: &[String],
    timeout: Duration,
    reaper: &Reaper,
) -> Result<(), String> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| "the probe command is empty".to_string())?;
    let mut cmd = crate::command::new_child(program);
    cmd.args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let spawned = reaper
        .spawn(&mut cmd)
        .map_err(|e| format!("cannot run probe command \"{program}\": {e}"))?;
    let pid = spawned.pid;
    // If this future is dropped (the app exited, or the machine is stopping) the probe must not
    // linger: the guard kills its group unless it has ended.
    let mut guard = KillGroupOnDrop(Some(pid));
    let result = tokio::time::timeout(timeout, spawned.exit).await;
    if matches!(result, Ok(Ok(_))) {
        guard.0 = None;
    }
    match result {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!(
            "probe command `{}` ended with {}",
            command.join(" "),
            describe_status(status)
        )),
        Ok(Err(_)) => Err("the probe command's exit status was lost".to_string()),
        Err(_) => {
            // The probe hung; the guard kills its whole group so no stray probe piles up.
            Err(format!(
                "probe command `{}` took longer than {}",
                command.join(" "),
                human_duration(timeout)
            ))
        }
    }
}

/// Kills a process group when dropped, unless disarmed (set to `None`).
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            crate::signals::kill_group(pgid, libc::SIGKILL);
        }
    }
}

/// Describes an exit status in words: `status 1` or `signal 9 (SIGKILL)`.
pub fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("status {code}")
    } else if let Some(signal) = status.signal() {
        format!("signal {signal} ({})", crate::signals::signal_name(signal))
    } else {
        "an unknown status".to_string()
    }
}

/// Formats a duration for people: `250ms`, `1.5s`, `2m 5s`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 && ms > 0 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        let secs = d.as_secs();
        format!("{}m {}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls() {
        let url = HttpUrl::parse("http://127.0.0.1:8188/").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("127.0.0.1", 8188, "/")
        );
        let url = HttpUrl::parse("http://localhost/api/tags").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("localhost", 80, "/api/tags")
        );
        let url = HttpUrl::parse("http://[::1]:9/x").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("::1", 9, "/x")
        );
        assert!(HttpUrl::parse("https://x/").unwrap_err().contains("https"));
        assert!(
            HttpUrl::parse("ftp://x/")
                .unwrap_err()
                .contains("not an http")
        );
        assert!(
            HttpUrl::parse("http://x:99999/")
                .unwrap_err()
                .contains("invalid port")
        );
        assert!(
            HttpUrl::parse("http://:80/")
                .unwrap_err()
                .contains("no host")
        );
    }

    #[test]
    fn parses_responses() {
        let r =
            parse_response(b"HTTP/1.1 503 Service Unavailable\r\nA: b\r\n\r\n{\"x\":1}").unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "{\"x\":1}");
        assert!(parse_response(b"SSH-2.0-OpenSSH").is_none());
    }

    #[test]
    fn formats_durations() {
        assert_eq!(human_duration(Duration::from_millis(400)), "400ms");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m 5s");
        assert_eq!(human_duration(Duration::ZERO), "0.0s");
    }
}
