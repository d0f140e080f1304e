//! The unmodified monitor's machine card (`apps/monitor/src/components/MachineCard.tsx` of the
//! queue, worker contract §5) against a real `up` reporting to a real redis-server: each call made
//! the way the card makes it (method, path, headers a browser's `fetch` sends, no token), with the
//! process names it takes from the status message's `status.services`, answering 2xx with what the
//! card reads; and `MACHINE_CONTROL_ALLOWED_ORIGINS` allowed, refused and off.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::broker::update_type;
use crate::redis_server::RedisServer;
use crate::up_broker::StatusTap;
use crate::up_support::{PATIENCE, Runtime, http_request, wait_for, wait_line};

/// The monitor's origin in these tests (a Next.js dev server).
const MONITOR: &str = "http://localhost:3333";
/// A page the machine's owner never allowed.
const OTHER: &str = "http://attacker.example";

/// A machine with a chatty ComfyUI stand-in on GPU 0, a ComfyUI worker waiting for it and a
/// worker of its own (no service app), both known by their WORKER_ID; no control token.
fn machine(redis: &RedisServer, extra: &[(&str, &str)]) -> Runtime {
    let url = redis.url();
    let mut env = vec![
        ("HUB_REDIS_URL", url.as_str()),
        ("MACHINE_ID", "card"),
        ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "25"),
    ];
    env.extend_from_slice(extra);
    Runtime::start(
        json!({"apps": [
            {"name": "comfyui-gpu0", "script": "sh", "args": ["-c",
                "i=0; while true; do i=$((i+1)); echo \"comfy out $i\"; echo \"comfy err $i\" >&2; sleep 0.1; done"],
             "machine_role": "service"},
            {"name": "comfyui-worker-0", "script": "sleep", "args": ["1000"],
             "machine_wait_for": ["comfyui-gpu0"],
             "env": {"WORKER_ID": "card-worker-comfyui-0", "MACHINE_ID": "card", "WORKERS": "comfyui:1"}},
            {"name": "mock-worker-0", "script": "sh", "args": ["-c",
                "i=0; while true; do i=$((i+1)); echo \"mock line $i\"; sleep 0.1; done"],
             "env": {"WORKER_ID": "card-worker-mock-0", "MACHINE_ID": "card", "WORKERS": "mock:1"}},
        ]}),
        &env,
    )
}

/// The URL `getLogUrl(serviceName)` builds (the default tab of each service), without the host.
fn log_url(service: &str) -> String {
    if service.contains(".comfyui") {
        // `serviceName.match(/worker-(\d+)\.comfyui/)`, else GPU "0".
        let gpu = service
            .match_indices("worker-")
            .find_map(|(at, _)| {
                let rest = &service[at + "worker-".len()..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                (!digits.is_empty() && rest[digits.len()..].starts_with(".comfyui"))
                    .then_some(digits)
            })
            .unwrap_or_else(|| "0".to_owned());
        return format!("/comfyui/logs?gpu={gpu}&type=server&lines=1000");
    }
    format!("/pm2/logs?service={service}&lines=1000&stream=true")
}

/// What a browser's `fetch` sends for a cross-origin request from `origin`, besides the request
/// line and `Host`.
fn browser(origin: &str) -> Vec<String> {
    vec![
        format!("Origin: {origin}"),
        "Accept: */*".to_owned(),
        "Sec-Fetch-Mode: cors".to_owned(),
        format!("Referer: {origin}/"),
    ]
}

/// Reads a streamed answer as `LazyLog` does (raw bytes split on line ends) until `done` accepts
/// the lines seen; returns the head and the lines.
fn read_log_stream(
    port: u16,
    path: &str,
    headers: &[String],
    done: impl Fn(&[String]) -> bool,
) -> (String, Vec<String>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = stream.read(&mut buf) {
            assert!(
                n > 0,
                "the stream {path} ended early:\n{}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            // Only whole lines: the last piece may still be arriving.
            let mut lines: Vec<String> = body.split(['\n', '\r']).map(str::to_owned).collect();
            lines.pop();
            lines.retain(|l| !l.is_empty());
            if done(&lines) {
                return (head.to_owned(), lines);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the stream {path} did not bring what was expected; got:\n{text}"
        );
    }
}

/// The number at the end of `line`.
fn counter(line: &str) -> u64 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn the_machine_card_reads_logs_restarts_and_refreshes_from_an_allowed_origin() {
    let redis = RedisServer::start();
    let tap = StatusTap::start(&redis.url(), "machine:status:*");
    let rt = machine(&redis, &[("MACHINE_CONTROL_ALLOWED_ORIGINS", MONITOR)]);
    let port = rt.health_port();
    // Logged right after the line health_port() waits for; not necessarily read with it.
    let line =
        format!("the control routes also answer browser pages from {MONITOR} without the token");
    wait_line(&rt, &line);
    // The card's tabs are the keys of the machine's own status.services.
    let ready = tap.next_where(&rt, "machine_ready", |m| update_type(m) == "machine_ready");
    let services = ready["status"]["services"].as_object().unwrap().clone();
    let keys: Vec<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "card-worker-comfyui-0.comfyui",
            "card-worker-mock-0.mock_test"
        ],
        "{ready}"
    );
    let allowed = format!("Access-Control-Allow-Origin: {MONITOR}");

    // The log viewer: LazyLog fetches the URL and splits the bytes on line ends.
    for (key, row) in &services {
        let app = row["pm2_name"].as_str().unwrap();
        let path = log_url(key);
        let (head, lines) =
            read_log_stream(port, &path, &browser(MONITOR), |lines| lines.len() >= 3);
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{path}: {head}");
        assert!(
            head.contains("Content-Type: text/plain; charset=utf-8"),
            "{head}"
        );
        assert!(head.contains(&allowed), "{head}");
        let prefix = if app == "comfyui-gpu0" {
            "comfy "
        } else {
            "mock line "
        };
        assert!(
            lines.iter().all(|l| l.starts_with(prefix)),
            "{path} (app {app}): {lines:?}"
        );
        // Lines printed after the request follow the tail (the apps print every 0.1 s): with a
        // tail of one line, the next three came later.
        let one = path.replace("lines=1000", "lines=1");
        let (_, later) = read_log_stream(port, &one, &browser(MONITOR), |lines| lines.len() >= 4);
        assert!(later.iter().all(|l| l.starts_with(prefix)), "{later:?}");
        assert!(counter(&later[3]) > counter(&later[0]), "{later:?}");
    }
    // Without `Accept: text/event-stream` even a stream asked for by app name is plain text;
    // with it, the events of before.
    let (_, plain) = read_log_stream(
        port,
        "/pm2/logs?service=mock-worker-0&lines=2&stream=true",
        &browser(MONITOR),
        |lines| lines.len() >= 2,
    );
    assert!(
        plain.iter().all(|l| l.starts_with("mock line ")),
        "{plain:?}"
    );
    let mut sse = browser(MONITOR);
    sse.push("Accept: text/event-stream".to_owned());
    sse.retain(|h| h != "Accept: */*");
    let (head, events) = read_log_stream(
        port,
        "/pm2/logs?service=card-worker-mock-0.mock_test&lines=2&stream=true",
        &sse,
        |lines| lines.len() >= 2,
    );
    assert!(head.contains("Content-Type: text/event-stream"), "{head}");
    let event: Value = serde_json::from_str(events[0].strip_prefix("data: ").unwrap()).unwrap();
    assert!(
        event["text"].as_str().unwrap().starts_with("mock line "),
        "{event}"
    );
    // The JSON form answers by key too, naming the app.
    let (code, body, _) = rt.get("/pm2/logs?service=card-worker-comfyui-0.comfyui&lines=2");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (&body["service"], &body["app"]),
        (
            &json!("card-worker-comfyui-0.comfyui"),
            &json!("comfyui-gpu0")
        )
    );

    // The restart button: `fetch(url, {method: 'POST'})`, no body, no token.
    let origin = format!("Origin: {MONITOR}");
    for (key, row) in &services {
        let app = row["pm2_name"].as_str().unwrap();
        let before = rt.app_status(app);
        let path = format!("/restart/service?service={key}");
        let (code, body, raw) = http_request(port, "POST", &path, &[&origin, "Accept: */*"]);
        assert_eq!(code, 202, "{raw}");
        assert!(raw.contains(&allowed), "{raw}");
        assert_eq!(
            (&body["service"], &body["restarting"]),
            (&json!(key), &json!(app))
        );
        wait_for(
            &format!("{app} to run again"),
            || rt.output(),
            || {
                let now = rt.app_status(app);
                (now["pid"] != before["pid"]
                    && now["pid"].is_u64()
                    && now["restarts"] == before["restarts"].as_u64().unwrap() + 1)
                    .then_some(())
            },
        );
    }

    // The refresh button sends `Content-Type: application/json`: a preflight first.
    let (code, _, raw) = http_request(
        port,
        "OPTIONS",
        "/refresh-status",
        &[
            &origin,
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: content-type",
        ],
    );
    assert_eq!(code, 204, "{raw}");
    assert!(raw.contains(&allowed), "{raw}");
    assert!(
        raw.contains("Access-Control-Allow-Methods: GET, POST, OPTIONS")
            && raw.contains("Content-Type")
            && raw.contains("Access-Control-Max-Age: "),
        "{raw}"
    );
    let (code, body, raw) = http_request(
        port,
        "POST",
        "/refresh-status",
        &[&origin, "Content-Type: application/json"],
    );
    assert_eq!((code, &body), (200, &json!({"published": true})), "{raw}");
    assert!(raw.contains(&allowed), "{raw}");

    // Another page, or no page at all (curl without the origin): refused, nothing restarted.
    let before = rt.app_status("mock-worker-0");
    let path = "/restart/service?service=card-worker-mock-0.mock_test";
    let (code, body, raw) = http_request(port, "POST", path, &[&format!("Origin: {OTHER}")]);
    assert_eq!(code, 403, "{raw}");
    assert!(raw.contains("Access-Control-Allow-Origin: *"), "{raw}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("MACHINE_CONTROL_ALLOWED_ORIGINS") && message.contains(OTHER),
        "{message}"
    );
    assert_eq!(http_request(port, "POST", path, &[]).0, 403);
    assert_eq!(http_request(port, "POST", "/restart/machine", &[]).0, 403);
    let after = rt.app_status("mock-worker-0");
    assert_eq!(
        (&after["pid"], &after["restarts"]),
        (&before["pid"], &before["restarts"])
    );
    // An unknown name lists the apps and the keys.
    let (code, body, _) = http_request(
        port,
        "POST",
        "/restart/service?service=card-worker-mock-0.mock_tst",
        &[&origin],
    );
    assert_eq!(code, 404, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("did you mean \"card-worker-mock-0.mock_test\"?")
            && message.contains("status.services keys: card-worker-comfyui-0.comfyui"),
        "{message}"
    );
}

#[test]
fn origins_are_off_by_default_and_a_bad_list_refuses_to_start() {
    let redis = RedisServer::start();
    let rt = machine(&redis, &[("MACHINE_CONTROL_TOKEN", "t0ken-for-card")]);
    let port = rt.health_port();
    let origin = format!("Origin: {MONITOR}");
    let path = "/restart/service?service=card-worker-mock-0.mock_test";
    let (code, _, raw) = http_request(port, "POST", path, &[&origin]);
    assert_eq!(code, 401, "{raw}");
    assert!(raw.contains("Access-Control-Allow-Origin: *"), "{raw}");
    assert!(!raw.contains("Vary: Origin"), "{raw}");
    // The token still works, by key too.
    let (code, body, _) = http_request(
        port,
        "POST",
        path,
        &[&origin, "Authorization: Bearer t0ken-for-card"],
    );
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["restarting"], "mock-worker-0");
    drop(rt);

    let mut refused = machine(
        &redis,
        &[(
            "MACHINE_CONTROL_ALLOWED_ORIGINS",
            "http://localhost:3333, *, https://m.example/app",
        )],
    );
    let status = refused.wait_exit();
    let output = refused.output();
    assert!(!status.success(), "{output}");
    for words in [
        "MACHINE_CONTROL_ALLOWED_ORIGINS entry 2 \"*\" would let every web page",
        "MACHINE_CONTROL_ALLOWED_ORIGINS entry 3 \"https://m.example/app\" has a path",
    ] {
        assert!(output.contains(words), "{words}\n{output}");
    }
    assert!(!output.contains("health endpoint on"), "{output}");
}
