//! The monitor's routes on the health port, over real HTTP against a real `up` reporting to a real
//! redis-server: `/pm2/list`, `/pm2/logs` (plain and streamed), `/comfyui/logs`, the control POSTs
//! and their token, and what the status messages say about a hand-written worker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::broker::update_type;
use crate::redis_server::RedisServer;
use crate::up_broker::StatusTap;
use crate::up_support::{PATIENCE, Runtime, http_get, http_request, wait_for, wait_line};

const TOKEN: &str = "control-token-6f1c2a";
const SECRET: &str = "sk-test-secret-9a8b7c";

/// Asks for a `text/event-stream` answer (`Accept: text/event-stream`, as `EventSource` does) and
/// reads it until `done` accepts the `data:` events seen (as JSON).
fn read_events(port: u16, path: &str, done: impl Fn(&[Value]) -> bool) -> (String, Vec<Value>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect();
        if done(&events) {
            return (text, events);
        }
        assert!(
            Instant::now() < deadline,
            "the stream {path} did not bring what was expected; got:\n{text}"
        );
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    panic!("the stream {path} ended early:\n{text}");
}

fn texts(lines: &Value) -> Vec<String> {
    lines
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {lines}"))
        .iter()
        .map(|l| l["text"].as_str().unwrap().to_owned())
        .collect()
}

/// A machine with a chatty ComfyUI stand-in on GPU 0 and a worker known only by its WORKER_ID.
fn machine(redis: &RedisServer, extra: &[(&str, &str)]) -> Runtime {
    let url = redis.url();
    let mut env = vec![
        ("HUB_REDIS_URL", url.as_str()),
        ("MACHINE_ID", "mon"),
        ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "25"),
        ("MACHINE_CONTROL_TOKEN", TOKEN),
    ];
    env.extend_from_slice(extra);
    Runtime::start(
        json!({"apps": [
            {"name": "comfyui-gpu0", "script": "sh", "args": ["-c",
                "echo \"key $OPENAI_API_KEY token $SERVICE_AUTH_TOKEN control [$MACHINE_CONTROL_TOKEN]\"; i=0; while true; do i=$((i+1)); echo \"out $i\"; echo \"err $i\" >&2; sleep 0.1; done"],
             "env": {"OPENAI_API_KEY": SECRET, "SERVICE_AUTH_TOKEN": "svc-auth-4d5e6f"},
             "machine_role": "service"},
            {"name": "hand-worker", "script": "sleep", "args": ["1000"],
             "env": {"WORKER_ID": "mon-worker-mock-0", "MACHINE_ID": "mon", "WORKERS": "mock:1"}},
        ]}),
        &env,
    )
}

#[test]
fn monitor_routes_answer_over_http_and_never_show_a_secret() {
    let redis = RedisServer::start();
    let tap = StatusTap::start(&redis.url(), "machine:status:*");
    let rt = machine(&redis, &[]);
    let port = rt.health_port();
    // The hand-written worker (WORKER_ID only) is reported, with a numeric gpu_id and the
    // connector its WORKERS names.
    let ready = tap.next_where(&rt, "machine_ready", |m| update_type(m) == "machine_ready");
    let worker = &ready["structure"]["workers"]["mon-worker-mock-0"];
    assert_eq!(worker["pm2_name"], "hand-worker", "{ready}");
    assert_eq!(worker["worker_type"], "mock", "{worker}");
    assert_eq!(worker["gpu_id"], 0, "{worker}");
    assert_eq!(worker["resource_binding"], "shared", "{worker}");
    // Four lines on each pipe: each pipe is read by its own task, so `out 3` says nothing about
    // the stderr lines; a line in our output is in the app's log already (kept, then forwarded).
    wait_for(
        "some output",
        || rt.output(),
        || {
            let out = rt.output();
            (out.contains("[comfyui-gpu0] out 4") && out.contains("[comfyui-gpu0] err 4"))
                .then_some(())
        },
    );

    // /pm2/list: PM2's words, no environment.
    let (code, list, raw) = http_get(port, "/pm2/list");
    assert_eq!(code, 200, "{raw}");
    assert!(raw.contains("Access-Control-Allow-Origin: *"), "{raw}");
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["comfyui-gpu0", "hand-worker"]);
    assert_eq!(list[1]["pm2_env"]["status"], "online", "{list}");
    assert_eq!(list[1]["role"], "worker", "{list}");
    assert!(list[0]["pid"].as_u64().is_some() && list[0]["pm_uptime"].as_u64().is_some());
    assert!(!raw.contains(SECRET) && !raw.contains(TOKEN), "{raw}");

    // /pm2/logs: the last N lines, masked; bad requests named.
    let (code, logs, raw) = http_get(port, "/pm2/logs?service=comfyui-gpu0&lines=2000");
    assert_eq!(code, 200, "{raw}");
    assert!(raw.contains("Access-Control-Allow-Origin: *"), "{raw}");
    let all = texts(&logs["lines"]);
    // Secret values masked; the control token never reaches an app at all.
    // (stdout and stderr are two pipes: their lines interleave in any order)
    assert!(
        all.iter().any(|l| l == "key *** token *** control []"),
        "{all:?}"
    );
    assert!(!raw.contains(SECRET) && !raw.contains(TOKEN), "{raw}");
    let (_, logs, _) = http_get(port, "/pm2/logs?service=comfyui-gpu0&lines=3");
    assert_eq!(logs["service"], "comfyui-gpu0");
    assert_eq!(logs["lines"].as_array().unwrap().len(), 3, "{logs}");
    let (code, body, _) = http_get(port, "/pm2/logs?lines=3");
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("service"),
        "{body}"
    );
    let (code, body, _) = http_get(port, "/pm2/logs?service=hand-workr");
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("did you mean \"hand-worker\"?"),
        "{body}"
    );
    assert_eq!(
        http_get(port, "/pm2/logs?service=hand-worker&lines=x").0,
        400
    );

    // /comfyui/logs: the pipes of comfyui-gpu<I>, by type.
    let (code, errors, raw) = http_get(port, "/comfyui/logs?gpu=0&type=error&lines=4&stream=false");
    assert_eq!(code, 200, "{raw}");
    assert_eq!(errors["type"], "error");
    let lines = texts(&errors["lines"]);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("err ")), "{lines:?}");
    let (_, output, _) = http_get(port, "/comfyui/logs?gpu=0&type=output&lines=4&stream=false");
    assert!(
        texts(&output["lines"])
            .iter()
            .all(|l| l.starts_with("out ")),
        "{output}"
    );
    assert_eq!(http_get(port, "/comfyui/logs?gpu=0&type=debug").0, 400);
    let (code, body, _) = http_get(port, "/comfyui/logs?gpu=3");
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("comfyui-gpu0"),
        "{body}"
    );

    // Streams: the tail first, then lines printed after the request.
    let (head, events) = read_events(
        port,
        "/pm2/logs?service=comfyui-gpu0&lines=2&stream=true",
        |events| events.len() >= 6,
    );
    assert!(head.contains("Content-Type: text/event-stream"), "{head}");
    let last_of_tail = events[1]["at_ms"].as_u64().unwrap();
    assert!(
        events[2..]
            .iter()
            .all(|e| e["at_ms"].as_u64().unwrap() >= last_of_tail),
        "{events:?}"
    );
    let (_, events) = read_events(port, "/comfyui/logs?gpu=0&type=output&lines=1", |events| {
        events.len() >= 3
    });
    assert!(
        events
            .iter()
            .all(|e| e["stream"] == "stdout" && e["text"].as_str().unwrap().starts_with("out ")),
        "{events:?}"
    );

    // The control routes: a token, compared as a whole, from the header or the query.
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (code, body, raw) = http_request(port, "POST", "/restart/service?service=hand-worker", &[]);
    assert_eq!(code, 401, "{raw}");
    assert!(raw.contains("WWW-Authenticate: Bearer"), "{raw}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("MACHINE_CONTROL_TOKEN"),
        "{body}"
    );
    let wrong = format!("Authorization: Bearer {TOKEN}x");
    assert_eq!(
        http_request(
            port,
            "POST",
            "/restart/service?service=hand-worker",
            &[&wrong]
        )
        .0,
        403
    );
    assert_eq!(
        http_request(
            port,
            "POST",
            "/restart/service?service=hand-worker&token=nope",
            &[]
        )
        .0,
        403
    );
    assert_eq!(
        http_get(port, "/restart/service?service=hand-worker").0,
        405
    );
    assert_eq!(
        http_request(port, "POST", "/restart/service", &[&auth]).0,
        400
    );
    assert_eq!(
        http_request(port, "POST", "/restart/service?service=nope", &[&auth]).0,
        404
    );
    let (code, preflight, raw) = http_request(port, "OPTIONS", "/restart/service", &[]);
    assert_eq!(code, 204, "{raw}");
    assert!(
        raw.contains("Access-Control-Allow-Headers: Authorization"),
        "{raw}{preflight}"
    );

    // Restart one app: a new process, one more restart.
    let before = rt.app_status("hand-worker")["pid"].as_u64().unwrap();
    let (code, body, _) = http_request(
        port,
        "POST",
        "/restart/service?service=hand-worker",
        &[&auth],
    );
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["was"], "online", "{body}");
    let after = wait_for(
        "hand-worker to run again",
        || rt.output(),
        || {
            let app = rt.app_status("hand-worker");
            let pid = app["pid"].as_u64()?;
            (pid != before && app["state"] == "running").then_some(app)
        },
    );
    assert_eq!(after["restarts"], 1, "{after}");

    // Refresh: a status goes out before the answer (the interval is 25 s).
    let published = |rt: &Runtime| rt.get("/status").1["broker"]["published"].as_u64().unwrap();
    let count = published(&rt);
    let token_query = format!("/refresh-status?token={TOKEN}");
    let (code, body, _) = http_request(port, "POST", &token_query, &[]);
    assert_eq!((code, body), (200, json!({"published": true})));
    assert!(published(&rt) > count);
    // A browser's fetch may send a body; it is read and ignored, and the answer arrives whole.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "POST /refresh-status HTTP/1.1\r\nHost: localhost\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{{\"why\":\"ui\"}}"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("{\"published\":true}\n"), "{answer}");

    // last_activity: a number, moved by a worker event the machine sees.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let before_event = machine_runtime::broker::now_ms();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("machine:mon:worker:mon-worker-mock-0")
        .arg(
            json!({"worker_id": "mon-worker-mock-0", "event_type": "connector_status_changed",
                   "data": {"service_type": "mock", "status": "active", "health": "healthy"}})
            .to_string(),
        )
        .query(&mut conn)
        .unwrap();
    let moved = tap.next_where(&rt, "last_activity moved by the event", |m| {
        m["status"]["workers"]["mon-worker-mock-0"]["last_activity"]
            .as_u64()
            .is_some_and(|at| at >= before_event)
    });
    assert_eq!(update_type(&moved), "event_driven", "{moved}");

    // Restart the machine: the final status first, then a clean exit.
    let mut rt = rt;
    let (code, body, _) = http_request(port, "POST", "/restart/machine", &[&auth]);
    assert_eq!(code, 202, "{body}");
    let shutdown = tap.next_where(&rt, "shutdown", |m| update_type(m) == "shutdown");
    assert_eq!(shutdown["status"]["machine"]["phase"], "shutdown");
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
    assert!(!rt.output().contains(SECRET));
}

#[test]
fn control_routes_are_off_without_a_token_and_say_how_to_enable_them() {
    let mut rt = Runtime::start(
        json!({"apps": [{"name": "a", "script": "sleep", "args": ["1000"]}]}),
        &[],
    );
    let port = rt.health_port();
    for path in [
        "/refresh-status",
        "/restart/service?service=a",
        "/restart/machine",
    ] {
        let (code, body, raw) = http_request(port, "POST", path, &["Authorization: Bearer x"]);
        assert_eq!(code, 403, "{path}: {raw}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("set MACHINE_CONTROL_TOKEN"),
            "{body}"
        );
    }
    // Nothing was restarted or stopped.
    assert_eq!(rt.app_status("a")["restarts"], 0);
    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
}

#[test]
fn a_crash_looping_worker_keeps_the_machine_from_ready() {
    let redis = RedisServer::start();
    let url = redis.url();
    let tap = StatusTap::start(&url, "machine:status:*");
    let rt = Runtime::start(
        json!({"apps": [
            {"name": "steady", "script": "sleep", "args": ["1000"], "machine_role": "service"},
            {"name": "crashy", "script": "sh", "args": ["-c", "sleep 0.2; exit 1"],
             "min_uptime": "2s", "max_restarts": 1000, "restart_delay": 100,
             "env": {"WORKER_ID": "loop-worker-mock-0", "MACHINE_ID": "loop", "WORKERS": "mock"}},
        ]}),
        &[
            ("HUB_REDIS_URL", url.as_str()),
            ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "1"),
        ],
    );
    wait_for(
        "crashy to restart 4 times",
        || rt.output(),
        || (rt.app_status("crashy")["restarts"].as_u64()? >= 4).then_some(()),
    );
    // Every periodic since start said `starting`; none said `ready`, and no machine_ready went out.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut periodic = 0;
    while Instant::now() < deadline {
        let message = tap.next(&rt);
        assert_ne!(update_type(&message), "machine_ready", "{message}");
        assert_eq!(
            message["status"]["machine"]["phase"], "starting",
            "{message}"
        );
        periodic += usize::from(update_type(&message) == "periodic");
    }
    assert!(periodic >= 1, "no periodic status in 3 s");
    let (code, body, _) = rt.get("/ready");
    assert_eq!(code, 503, "{body}");
    let (_, health, _) = rt.get("/health");
    let word = health["services"]["crashy"]["status"]
        .as_str()
        .unwrap_or_default();
    assert!(["online", "waiting restart"].contains(&word), "{health}");
}

#[test]
fn restart_service_brings_an_errored_app_back() {
    let mut rt = Runtime::start(
        json!({"apps": [
            {"name": "flaky", "script": "sh",
             "args": ["-c", "if [ -f \"$D/fixed\" ]; then exec sleep 1000; else exit 3; fi"],
             "env": {"D": "@DIR@"}, "max_restarts": 2},
            {"name": "steady", "script": "sleep", "args": ["1000"]},
        ]}),
        &[("MACHINE_CONTROL_TOKEN", TOKEN)],
    );
    let port = rt.health_port();
    let errored = rt.wait_state("flaky", "errored");
    assert_eq!(
        rt.get("/health").1["services"]["flaky"]["status"],
        "errored"
    );
    // Fixed by hand, then restarted from the monitor.
    std::fs::write(rt.path("fixed"), "").unwrap();
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (code, body, _) = http_request(port, "POST", "/restart/service?service=flaky", &[&auth]);
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["was"], "errored", "{body}");
    let running = rt.wait_state("flaky", "running");
    assert_eq!(
        running["restarts"].as_u64(),
        errored["restarts"].as_u64().map(|n| n + 1),
        "{running}"
    );
    // The restart is logged; /status says running before that line necessarily reaches the test.
    wait_line(&rt, "flaky restarted on request");
    // Still supervised: a crash is restarted by the policy again.
    let pid = running["pid"].as_u64().unwrap() as i32;
    // SAFETY: plain kill(2) on a process of this test's runtime.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for(
        "flaky to be restarted after the kill",
        || rt.output(),
        || {
            let app = rt.app_status("flaky");
            (app["state"] == "running" && app["pid"].as_u64()? != pid as u64).then_some(())
        },
    );
    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
}
