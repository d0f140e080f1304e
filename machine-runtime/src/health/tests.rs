//! Tests of the endpoint's request handling: the control token, CORS headers, log stream formats
//! and query parameters.

use super::params::{flag_param, lines_param};
use super::routes::authorize;
use super::server::headers_for;
use super::stream::{StreamFormat, wants_events};
use super::*;
use crate::supervisor::logs::{LogStream, MAX_LINES};

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
    let lines = |q: &str| match lines_param(&request(&format!("GET /?{q} HTTP/1.1\r\n\r\n")), 50) {
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
