//! The runtime's one small HTTP/1.1 module, on plain tokio: the request reader and response writer
//! of the health endpoint and the simulation service, and the tiny client of readiness probes and
//! `machine-runtime health`.
//!
//! One request per connection (`Connection: close`) both ways: that is all the health check, the
//! monitor, the probes and the simulation's worker need, and it keeps this module small (a general
//! server crate such as hyper would add a dozen crates to the lock file). Request and response
//! heads are parsed by `httparse` (RFC 9112; hyper's parser, already in the tree through
//! tungstenite), URLs by `url::Url` (WHATWG rules; already in the tree through redis and
//! tungstenite).

use std::fmt;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::time::human_duration;

/// Most header lines a request or response head may carry; more answers 431.
pub(crate) const MAX_HEADERS: usize = 64;

/// The most a reader accepts: request head (request line and headers) and body, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request head; longer answers 431.
    pub max_head: usize,
    /// Longest body (`Content-Length`); longer answers 413.
    pub max_body: usize,
}

/// One request as read: the target split into path and decoded query, header names lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// `GET`, `POST`, … as sent.
    pub method: String,
    /// The target up to `?`.
    pub path: String,
    /// The query's `name=value` pairs, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// `(lowercased name, trimmed value)`, in order.
    pub headers: Vec<(String, String)>,
    /// Exactly `Content-Length` bytes.
    pub body: Vec<u8>,
    /// Bytes read past the body (a WebSocket client's first frames).
    pub rest: Vec<u8>,
}

impl Request {
    /// Parses a whole request head (up to and including the blank line); `None` unless it is one
    /// (`METHOD TARGET HTTP/1.x`, then headers), as [`read_request`] reads it.
    #[cfg(test)]
    pub fn parse(head: &str) -> Option<Request> {
        match parse_head(head.as_bytes()) {
            Ok(Some((request, _))) => Some(request),
            _ => None,
        }
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether header `name` (lowercase) lists `token` (comma-separated, any case).
    pub(crate) fn header_has(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
    }

    /// The first value of query parameter `name`.
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request could not be read: the status and message to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRequest {
    /// 400, 413, 431 or 501.
    pub status: u16,
    /// What was wrong, lowercase.
    pub message: String,
}

fn bad(status: u16, message: &str) -> BadRequest {
    BadRequest {
        status,
        message: message.to_owned(),
    }
}

/// Parses the request head at the start of `buf` with `httparse`: `Ok(Some((request, head
/// length in bytes)))` once the head is whole, `Ok(None)` while more may come, `Err` with the
/// status to answer (400, or 431 past [`MAX_HEADERS`] headers) when it cannot be one. Header values
/// that are not UTF-8 are read lossily.
fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, BadRequest> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(bad(
                431,
                &format!("too many request headers; at most {MAX_HEADERS}"),
            ));
        }
        Err(err) => {
            return Err(bad(
                400,
                &format!(
                    "malformed request ({err}); expected an HTTP/1.1 request line and headers"
                ),
            ));
        }
    };
    let target = parsed.path.unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let request = Request {
        method: parsed.method.unwrap_or_default().to_owned(),
        path: path.to_owned(),
        query: form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        headers: parsed
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value);
                (h.name.to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect(),
        body: Vec::new(),
        rest: Vec::new(),
    };
    Ok(Some((request, len)))
}

/// Reads one request: the head (parsed by `httparse`, at most `limits.max_head` bytes), then
/// exactly `Content-Length` bytes of body. Chunked bodies are refused (501); the caller bounds the
/// time it may take.
pub(crate) async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    limits: Limits,
) -> Result<Request, BadRequest> {
    let mut buf = Vec::with_capacity(1024);
    let (mut request, head_len) = loop {
        if !buf.is_empty()
            && let Some(found) = parse_head(&buf)?
        {
            break found;
        }
        if buf.len() > limits.max_head {
            return Err(bad(431, "request head too large"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| bad(400, "could not read request"))?;
        if n == 0 {
            return Err(bad(
                400,
                "connection closed before the request was complete",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_len > limits.max_head {
        return Err(bad(431, "request head too large"));
    }
    if request.header("transfer-encoding").is_some() {
        return Err(bad(
            501,
            "chunked request bodies are not supported; send content-length",
        ));
    }
    let content_length = match request.header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| bad(400, "content-length is not a number"))?,
    };
    if content_length > limits.max_body {
        return Err(bad(413, "request body too large"));
    }
    let mut body = buf[head_len..].to_vec();
    while body.len() < content_length {
        let mut chunk = vec![0u8; (content_length - body.len()).min(64 * 1024)];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| bad(400, "could not read request body"))?;
        if n == 0 {
            return Err(bad(400, "connection closed before the body was complete"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    request.rest = body.split_off(content_length.min(body.len()));
    request.body = body;
    Ok(request)
}

/// The reason phrase of a status this runtime sends.
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A response head: the status line, each of `headers` (`Name: value`, without CRLF), the blank line.
pub fn head(status: u16, headers: &[&str]) -> String {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for header in headers {
        out.push_str(header);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out
}

/// Writes a JSON answer and its head: `Content-Type: application/json`, `Content-Length`,
/// `Connection: close`, then `extra` headers. The body is the JSON and a newline (none for 204, and
/// none sent when `head_only`, as `HEAD` wants).
pub(crate) async fn write_json<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    body: &Value,
    extra: &[&str],
    head_only: bool,
) -> std::io::Result<()> {
    let body = if status == 204 {
        String::new()
    } else {
        format!("{body}\n")
    };
    let body = if head_only { "" } else { body.as_str() };
    write_body(stream, status, "application/json", body.as_bytes(), extra).await
}

/// Writes an answer of any type: `Content-Type`, `Content-Length`, `Connection: close`, then `extra`
/// headers, then `body` as is.
pub(crate) async fn write_body<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &[&str],
) -> std::io::Result<()> {
    let kind = format!("Content-Type: {content_type}");
    let length = format!("Content-Length: {}", body.len());
    let mut headers = vec![kind.as_str(), length.as_str(), "Connection: close"];
    headers.extend_from_slice(extra);
    let mut response = head(status, &headers).into_bytes();
    response.extend_from_slice(body);
    stream.write_all(&response).await
}

/// Checks a WebSocket upgrade request (RFC 6455 §4.2.1) and returns the `101 Switching Protocols` head
/// to answer it with; otherwise the status (400, or 426 for another protocol version) and every problem.
pub(crate) fn websocket_accept(request: &Request) -> Result<String, (u16, String)> {
    let key = request.header("sec-websocket-key").unwrap_or("").trim();
    let version = request.header("sec-websocket-version").unwrap_or("").trim();
    let mut problems = Vec::new();
    if request.method != "GET" {
        problems.push(format!(
            "a WebSocket upgrade must use GET, not {}",
            request.method
        ));
    }
    if !request.header_has("connection", "upgrade") {
        problems.push("the Connection header must include \"Upgrade\"".to_owned());
    }
    if key.is_empty() {
        problems.push("the Sec-WebSocket-Key header is missing".to_owned());
    }
    if version != "13" {
        problems.push(format!(
            "Sec-WebSocket-Version is \"{version}\"; this service speaks version 13"
        ));
    }
    if !problems.is_empty() {
        let status = if version == "13" || version.is_empty() {
            400
        } else {
            426
        };
        return Err((status, problems.join("; ")));
    }
    let accept = format!(
        "Sec-WebSocket-Accept: {}",
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
    );
    Ok(head(
        101,
        &["Upgrade: websocket", "Connection: Upgrade", &accept],
    ))
}

/// A plain `http://host[:port][/path][?query]` URL, parsed by `url::Url`.
///
/// `Display` shows the port always (`http://[::1]:9/x`), as probe messages did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// The host to connect to: a name or an address, IPv6 without brackets (`::1`).
    pub host: String,
    /// The port, 80 when the URL names none.
    pub port: u16,
    /// The path and query, as sent in the request line (`/` at least); no fragment.
    pub path: String,
}

impl HttpUrl {
    /// Parses a plain-HTTP URL; the error says what is wrong in lowercase words.
    pub fn parse(raw: &str) -> Result<HttpUrl, String> {
        if raw.starts_with("https://") {
            return Err(format!(
                "\"{raw}\" uses https, which readiness probes do not speak; probe the plain http port or use a tcp probe"
            ));
        }
        if !raw.starts_with("http://") {
            return Err(format!("\"{raw}\" is not an http:// url"));
        }
        let url = url::Url::parse(raw).map_err(|err| match err {
            url::ParseError::EmptyHost => format!("\"{raw}\" has no host"),
            url::ParseError::InvalidPort => format!("\"{raw}\" has an invalid port"),
            other => format!("\"{raw}\" is not a valid url: {other}"),
        })?;
        let host = match url.host() {
            Some(url::Host::Ipv6(addr)) => addr.to_string(),
            Some(host) => host.to_string(),
            None => return Err(format!("\"{raw}\" has no host")),
        };
        let port = match url.port_or_known_default() {
            Some(0) => return Err(format!("\"{raw}\" has an invalid port \"0\"")),
            Some(port) => port,
            None => 80,
        };
        Ok(HttpUrl {
            host,
            port,
            path: url[url::Position::BeforePath..url::Position::AfterQuery].to_owned(),
        })
    }

    /// `http://127.0.0.1:port/path`, for our own endpoints.
    pub fn local(port: u16, path: &str) -> HttpUrl {
        HttpUrl {
            host: "127.0.0.1".to_owned(),
            port,
            path: path.to_owned(),
        }
    }

    /// `host:port` as the `Host` header wants it: IPv6 in brackets (`[::1]:9`).
    pub(crate) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

/// The answer of a minimal HTTP GET.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body, invalid UTF-8 replaced; at most about 1 MiB.
    pub body: String,
}

/// The request [`get`] sends.
#[cfg(test)]
fn get_request(url: &HttpUrl) -> String {
    request_head("GET", url, &[])
}

/// A request head without a body: `METHOD path`, `Host`, `User-Agent`, `Accept`, `Connection: close`,
/// then `extra` header lines (`Name: value`), then the blank line; a `POST` says `Content-Length: 0`.
pub fn request_head(method: &str, url: &HttpUrl, extra: &[&str]) -> String {
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: machine-runtime\r\nAccept: */*\r\nConnection: close\r\n",
        url.path,
        url.authority()
    );
    if method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// The most of a response [`get`] reads, head and body, in bytes: a probe only needs the status
/// line and a short body.
const MAX_RESPONSE: usize = 1 << 20;

/// Sends `GET` and reads the response within `timeout`: up to the end of its `Content-Length`
/// body (so a server that keeps the connection open does not hold the caller), or, without one,
/// until the server closes the connection; at most [`MAX_RESPONSE`] bytes.
pub async fn get(url: &HttpUrl, timeout: Duration) -> Result<HttpResponse, String> {
    send("GET", url, &[], timeout).await
}

/// Sends a bodiless request ([`request_head`]) and reads the whole response, within `timeout`. The
/// error says in words what failed; one that could not connect starts with `cannot connect to`.
pub async fn send(
    method: &str,
    url: &HttpUrl,
    extra: &[&str],
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let attempt = async {
        let mut stream = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", url.authority()))?;
        stream
            .write_all(request_head(method, url, extra).as_bytes())
            .await
            .map_err(|e| format!("cannot send the request to {url}: {e}"))?;
        let mut raw = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        while raw.len() < MAX_RESPONSE {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("cannot read the answer of {url}: {e}"))?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n.min(MAX_RESPONSE - raw.len())]);
            if matches!(response_end(&raw), Some(end) if raw.len() >= end) {
                break;
            }
        }
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

/// A response head read by `httparse`: the status, the head's length in bytes, and the body's
/// length when the head fixes it (`Content-Length`; 0 for 1xx, 204 and 304). `None` until the head
/// is whole, or when it is not HTTP.
fn response_head(raw: &[u8]) -> Option<(u16, usize, Option<usize>)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = parsed.parse(raw).ok()? else {
        return None;
    };
    let status = parsed.code?;
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    let length = if matches!(status, 100..=199 | 204 | 304) {
        Some(0)
    } else if header("transfer-encoding").is_some() {
        // Chunked: read until the server closes (the request asked it to).
        None
    } else {
        header("content-length").and_then(|v| v.parse().ok())
    };
    Some((status, len, length))
}

/// Where the response in `raw` ends, once its head says (`None`: not known yet, or at close).
fn response_end(raw: &[u8]) -> Option<usize> {
    let (_, head, length) = response_head(raw)?;
    Some(head + length?)
}

/// The status and body of the response in `raw`: the body cut at its `Content-Length`, else all
/// that followed the head; invalid UTF-8 replaced.
fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let (status, head, length) = response_head(raw)?;
    let body = &raw[head..];
    let body = &body[..length.unwrap_or(body.len()).min(body.len())];
    Some(HttpResponse {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    })
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
            HttpUrl::parse("http://x:0/")
                .unwrap_err()
                .contains("invalid port")
        );
        assert!(
            HttpUrl::parse("http://:80/")
                .unwrap_err()
                .contains("no host")
        );
        let url = HttpUrl::parse("http://h:8/q?a=1&b=2#frag").unwrap();
        assert_eq!(url.path, "/q?a=1&b=2");
        assert_eq!(
            HttpUrl::local(7, "/health").to_string(),
            "http://127.0.0.1:7/health"
        );
    }

    #[test]
    fn the_host_header_brackets_ipv6() {
        // The old hand-written parser sent `Host: ::1:9`, which no server can split.
        let url = HttpUrl::parse("http://[::1]:9/x").unwrap();
        assert_eq!(url.authority(), "[::1]:9");
        assert_eq!(url.to_string(), "http://[::1]:9/x");
        assert!(get_request(&url).starts_with("GET /x HTTP/1.1\r\nHost: [::1]:9\r\n"));
        let url = HttpUrl::parse("http://localhost/api").unwrap();
        assert!(get_request(&url).contains("\r\nHost: localhost:80\r\n"));
    }

    #[tokio::test]
    async fn the_client_and_the_server_halves_talk() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let limits = Limits {
                max_head: 1024,
                max_body: 0,
            };
            let request = read_request(&mut stream, limits).await.unwrap();
            let host = request.header("host").unwrap_or_default().to_owned();
            let body = serde_json::json!({"host": host, "path": request.path});
            write_json(&mut stream, 503, &body, &["X-A: b"], false)
                .await
                .unwrap();
            stream.shutdown().await.unwrap();
        });
        let url = HttpUrl::local(port, "/x?y=1");
        let response = get(&url, Duration::from_secs(5)).await.unwrap();
        server.await.unwrap();
        assert_eq!(response.status, 503);
        let body: Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(body["host"], format!("127.0.0.1:{port}"));
        assert_eq!(body["path"], "/x");
    }

    #[test]
    fn parses_responses() {
        let r =
            parse_response(b"HTTP/1.1 503 Service Unavailable\r\nA: b\r\n\r\n{\"x\":1}").unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "{\"x\":1}");
        assert!(parse_response(b"SSH-2.0-OpenSSH").is_none());
        // Cut at Content-Length; 204 has no body; the end is known once the head is whole.
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        assert_eq!(
            response_end(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
            Some(40)
        );
        assert_eq!(response_end(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(27));
        assert_eq!(response_end(b"HTTP/1.1 200 OK\r\nContent-Len"), None);
        assert_eq!(response_end(b"HTTP/1.1 200 OK\r\n\r\nuntil close"), None);
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(response_end(chunked), None);
    }

    #[tokio::test]
    async fn the_client_stops_at_content_length_on_a_connection_left_open() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let limits = Limits {
                max_head: 1024,
                max_body: 0,
            };
            read_request(&mut stream, limits).await.unwrap();
            // Keeps the connection open, as a keep-alive server that ignores `Connection: close`.
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .await
                .unwrap();
            let _ = done_rx.await;
        });
        // Without Content-Length framing this would wait for the close, past the timeout.
        let response = get(&HttpUrl::local(port, "/"), Duration::from_secs(30)).await;
        let _ = done_tx.send(());
        server.await.unwrap();
        let response = response.unwrap();
        assert_eq!((response.status, response.body.as_str()), (200, "hello"));
    }

    #[tokio::test]
    async fn reads_head_body_and_rest_and_refuses_what_it_cannot_read() {
        let limits = Limits {
            max_head: 64,
            max_body: 8,
        };
        let read = |raw: &'static [u8]| async move {
            let mut stream = raw;
            read_request(&mut stream, limits).await
        };
        let r = read(b"POST /p?a=%20b HTTP/1.1\r\nContent-Length: 3\r\nX-Y:  z \r\n\r\nabcREST")
            .await
            .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/p"));
        assert_eq!(r.param("a"), Some(" b"));
        assert_eq!(r.header("x-y"), Some("z"));
        assert_eq!(
            (r.body.as_slice(), r.rest.as_slice()),
            (&b"abc"[..], &b"REST"[..])
        );
        let status = |r: Result<Request, BadRequest>| r.unwrap_err().status;
        assert_eq!(
            status(read(b"GET / HTTP/1.1\r\nContent-Length: 9\r\n\r\n").await),
            413
        );
        assert_eq!(
            status(read(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").await),
            400
        );
        assert_eq!(
            status(read(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").await),
            501
        );
        assert_eq!(status(read(b"GET /\r\n\r\n").await), 400);
        assert_eq!(
            status(read(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").await),
            400
        );
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        let limits = Limits {
            max_head: 8192,
            max_body: 0,
        };
        assert_eq!(
            read_request(&mut many.as_bytes(), limits)
                .await
                .unwrap_err()
                .status,
            431
        );
        // Bare LF line ends are read too (RFC 9112 §2.2 lets a server accept them).
        let r = read(b"GET /lf?x=1 HTTP/1.1\nHost: h\n\n").await.unwrap();
        assert_eq!((r.path.as_str(), r.header("host")), ("/lf", Some("h")));
        assert_eq!(status(read(b"GET / HTTP/1.1\r\n").await), 400);
        assert_eq!(status(read(&[b'a'; 200]).await), 431);
    }
}
