//! `machine-simulate` (the simulation service, its own binary): answers its endpoints on a real port and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::up_support::wait_for;

/// Generous: the machine running the tests is small and shared.
const DEADLINE: Duration = Duration::from_secs(60);

/// Kills the service if a test fails before stopping it.
pub(crate) struct Service {
    pub(crate) child: Child,
    pub(crate) addr: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `simulate --port 0` (a free port) and waits for its start line, which names the address.
pub(crate) fn start(env: &[(&str, &str)], extra: &[&str]) -> Service {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_machine-simulate"));
    cmd.args(["--port", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .env_remove("CUDA_VISIBLE_DEVICES");
    cmd.env_remove("WORKER_GPU_ID");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn().expect("machine-simulate starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut service = Service {
        child,
        addr: String::new(),
    };
    let line = rx
        .recv_timeout(DEADLINE)
        .expect("simulate prints its start line");
    let addr = line
        .strip_prefix("simulation service listening on ")
        .unwrap_or_else(|| panic!("start line: {line}"));
    service.addr = addr.to_owned();
    service
}

/// One HTTP request over a fresh connection: (status, JSON body).
fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("response has a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, serde_json::from_str(body).expect("JSON body"))
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    wait_for("simulate to exit after SIGTERM", String::new, || {
        child.try_wait().unwrap()
    })
}

#[test]
fn answers_root_health_stats_and_prompt() {
    let service = start(
        &[
            ("WORKER_GPU_ID", "1"),
            ("CUDA_VISIBLE_DEVICES", "GPU-fa4e0000"),
        ],
        &["--job-ms", "1"],
    );
    let port: u16 = service.addr.rsplit(':').next().unwrap().parse().unwrap();

    let (status, root) = request(&service.addr, "GET", "/", "");
    assert_eq!(status, 200);
    assert_eq!(
        root,
        serde_json::json!({"service": "simulation", "port": port, "gpu": "1", "cuda_visible_devices": "GPU-fa4e0000"})
    );

    assert_eq!(request(&service.addr, "GET", "/health", "").0, 200);

    let (status, stats) = request(&service.addr, "GET", "/system_stats", "");
    assert_eq!(status, 200);
    assert_eq!(stats["devices"][0]["type"], "cuda");
    assert_eq!(
        stats["devices"][0]["name"],
        "cuda:0 simulation (GPU-fa4e0000)"
    );

    let (status, queued) = request(
        &service.addr,
        "POST",
        "/prompt",
        r#"{"prompt": {"1": {"class_type": "x"}}}"#,
    );
    assert_eq!(status, 200);
    assert!(
        queued["prompt_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{queued}"
    );
    let (_, again) = request(&service.addr, "POST", "/prompt", "{}");
    assert_ne!(queued["prompt_id"], again["prompt_id"]);

    assert_eq!(request(&service.addr, "POST", "/prompt", "not json").0, 400);
    assert_eq!(request(&service.addr, "GET", "/nowhere", "").0, 404);
}

#[test]
fn unpinned_service_reports_no_gpu() {
    let service = start(&[], &[]);
    let (status, root) = request(&service.addr, "GET", "/", "");
    assert_eq!(status, 200);
    assert_eq!(root["gpu"], Value::Null);
    assert_eq!(root["cuda_visible_devices"], Value::Null);
}

#[test]
fn sigterm_exits_zero() {
    let mut service = start(&[], &[]);
    assert_eq!(request(&service.addr, "GET", "/health", "").0, 200);
    // SAFETY: plain kill(2) on the child we spawned and have not yet reaped.
    let rc = unsafe { libc::kill(service.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = wait_exit(&mut service.child);
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn sigterm_during_startup_delay_exits_zero_without_listening() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_machine-simulate"))
        .args(["--port", "0", "--startup-delay-ms", "600000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("machine-simulate starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // The delay line is printed after the signal handlers are installed, so SIGTERM is handled from here on.
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(
        line.starts_with(
            "simulation service starting on 127.0.0.1:0 after a 600000 ms startup delay"
        ),
        "{line}"
    );
    // SAFETY: kill(2) on our own unreaped child.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(0), "{status:?}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(
        !rest.contains("listening"),
        "must not listen after being stopped during the delay: {rest}"
    );
}

mod websocket {
    //! The simulation-websocket protocol (worker contract §4) against the real service process.

    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::Message;

    use super::{DEADLINE, request, start};

    type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

    async fn connect(addr: &str) -> Ws {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (ws, response) = tokio_tungstenite::client_async(format!("ws://{addr}"), stream)
            .await
            .expect("websocket handshake");
        assert_eq!(response.status(), 101);
        ws
    }

    async fn send(ws: &mut Ws, message: Value) {
        ws.send(Message::text(message.to_string())).await.unwrap();
    }

    /// The next JSON text message (pings are answered by the library).
    async fn next(ws: &mut Ws) -> Value {
        loop {
            let message = tokio::time::timeout(DEADLINE, ws.next())
                .await
                .expect("a message within the deadline")
                .expect("connection open")
                .expect("a frame");
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => {}
            }
        }
    }

    /// Messages up to and including the first of type `last` for `job_id`.
    async fn until(ws: &mut Ws, job_id: &str, last: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let message = next(ws).await;
            let done = message["type"] == last && message["job_id"] == job_id;
            seen.push(message);
            if done {
                return seen;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_jobs_with_progress_and_answers_ping_status_and_errors() {
        let service = tokio::task::block_in_place(|| {
            start(
                &[
                    ("CUDA_VISIBLE_DEVICES", "GPU-fa4e0001"),
                    ("WORKER_GPU_ID", "1"),
                    ("SIMULATION_STEP_COUNT", "4"),
                    ("SIMULATION_STEP_DELAY_MS", "20"),
                ],
                &[],
            )
        });
        let addr = service.addr.clone();
        let mut ws = connect(&addr).await;
        let ready = next(&mut ws).await;
        assert_eq!(ready["type"], "simulation_ready");
        assert_eq!(ready["cuda_visible_devices"], "GPU-fa4e0001");

        // A job with its own config: started, five progress messages ending at 100, complete.
        send(
            &mut ws,
            json!({"type": "simulation_job", "job_id": "j1", "job_type": "simulation", "payload": {"prompt": "x"},
                   "config": {"steps": 5, "processing_time_ms": 200}, "timestamp": 1}),
        )
        .await;
        let messages = until(&mut ws, "j1", "simulation_complete").await;
        let types: Vec<&str> = messages
            .iter()
            .map(|m| m["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "simulation_started",
                "simulation_progress",
                "simulation_progress",
                "simulation_progress",
                "simulation_progress",
                "simulation_progress",
                "simulation_complete"
            ]
        );
        let progress: Vec<(u64, u64)> = messages[1..6]
            .iter()
            .map(|m| {
                assert_eq!(m["total_steps"], 5);
                (
                    m["progress"].as_u64().unwrap(),
                    m["current_step"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(progress, [(20, 1), (40, 2), (60, 3), (80, 4), (100, 5)]);
        let complete = &messages[6];
        assert!(
            complete["processing_time_ms"].as_u64().unwrap() >= 200,
            "{complete}"
        );
        assert_eq!(complete["results"]["cuda_visible_devices"], "GPU-fa4e0001");
        assert_eq!(complete["results"]["job_type"], "simulation");
        assert_eq!(complete["simulation_id"], messages[0]["simulation_id"]);

        // Defaults from SIMULATION_STEP_COUNT / SIMULATION_STEP_DELAY_MS; the id may be jobId.
        send(
            &mut ws,
            json!({"type": "simulation_job", "jobId": "j2", "payload": {}}),
        )
        .await;
        let messages = until(&mut ws, "j2", "simulation_complete").await;
        assert_eq!(messages[0]["total_steps"], 4);
        assert_eq!(messages[0]["processing_time_ms"], 80);
        assert_eq!(messages.len(), 6);

        send(&mut ws, json!({"type": "ping", "timestamp": 5})).await;
        assert_eq!(next(&mut ws).await["type"], "pong");
        send(&mut ws, json!({"type": "query_status", "job_id": "j1"})).await;
        let status = next(&mut ws).await;
        assert_eq!(
            (
                status["type"].as_str(),
                status["status"].as_str(),
                status["progress"].as_u64()
            ),
            (Some("simulation_status"), Some("completed"), Some(100))
        );

        // Bad messages: an error each, naming the problem; the session stays open.
        ws.send(Message::text("{not json")).await.unwrap();
        let error = next(&mut ws).await;
        assert_eq!(error["type"], "error");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("message is not JSON"),
            "{error}"
        );
        send(
            &mut ws,
            json!({"type": "simulation_job", "job_id": "j3", "config": {"steps": 0}}),
        )
        .await;
        let error = next(&mut ws).await;
        assert_eq!(
            (error["type"].as_str(), error["job_id"].as_str()),
            (Some("error"), Some("j3"))
        );
        assert_eq!(error["error"], "config.steps is 0; allowed: 1 to 10000");
        send(&mut ws, json!({"type": "launch", "id": 9})).await;
        let error = next(&mut ws).await;
        assert_eq!(error["job_id"], "9");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("unknown message type \"launch\"")
        );

        // Cancel a long job; cancelling it again is an error.
        send(
            &mut ws,
            json!({"type": "simulation_job", "id": "long", "config": {"processing_time_ms": 600000, "steps": 10}}),
        )
        .await;
        assert_eq!(next(&mut ws).await["type"], "simulation_started");
        // GET /health answers on the same port while a session is open.
        let (code, health) = tokio::task::block_in_place(|| request(&addr, "GET", "/health", ""));
        assert_eq!(code, 200);
        assert_eq!(health["active_jobs"], 1);
        send(
            &mut ws,
            json!({"type": "cancel_simulation", "job_id": "long"}),
        )
        .await;
        let cancelled = until(&mut ws, "long", "simulation_cancelled").await;
        assert_eq!(cancelled.len(), 1, "{cancelled:?}");
        send(
            &mut ws,
            json!({"type": "cancel_simulation", "job_id": "long"}),
        )
        .await;
        let error = next(&mut ws).await;
        assert_eq!(
            (error["type"].as_str(), error["job_id"].as_str()),
            (Some("error"), Some("long"))
        );
        ws.close(None).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_closes_sessions_and_fails_running_jobs() {
        let mut service = tokio::task::block_in_place(|| start(&[], &[]));
        let mut ws = connect(&service.addr).await;
        assert_eq!(next(&mut ws).await["type"], "simulation_ready");
        send(
            &mut ws,
            json!({"type": "simulation_job", "job_id": "j", "config": {"processing_time_ms": 600000}}),
        )
        .await;
        assert_eq!(next(&mut ws).await["type"], "simulation_started");
        // SAFETY: kill(2) on our own unreaped child.
        let rc = unsafe { libc::kill(service.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let error = next(&mut ws).await;
        assert_eq!(
            (error["type"].as_str(), error["job_id"].as_str()),
            (Some("error"), Some("j"))
        );
        let close = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap();
        match close {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected a close frame, got {other:?}"),
        }
        let status = tokio::task::block_in_place(|| super::wait_exit(&mut service.child));
        assert_eq!(status.code(), Some(0), "{status:?}");
    }

    #[test]
    fn refuses_a_bad_upgrade_and_a_bad_step_count() {
        let service = start(&[], &[]);
        let mut stream = std::net::TcpStream::connect(&service.addr).unwrap();
        std::io::Write::write_all(
            &mut stream,
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n",
        )
        .unwrap();
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 426 "), "{response}");
        assert!(
            response.contains("the Sec-WebSocket-Key header is missing"),
            "{response}"
        );
        assert!(
            response.contains("this service speaks version 13"),
            "{response}"
        );

        let output = std::process::Command::new(env!("CARGO_BIN_EXE_machine-simulate"))
            .args(["--port", "0"])
            .env("SIMULATION_STEP_COUNT", "ten")
            .env("SIMULATION_STEP_DELAY_MS", "-5")
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("SIMULATION_STEP_COUNT is \"ten\", which is not a whole number")
                && stderr
                    .contains("SIMULATION_STEP_DELAY_MS is \"-5\", which is not a whole number"),
            "{stderr}"
        );
    }
}

/// The production binary carries no test double: `simulate` is not one of its subcommands.
#[test]
fn the_production_binary_has_no_simulate_subcommand() {
    let output = Command::new(env!("CARGO_BIN_EXE_machine-runtime"))
        .args(["simulate", "--port", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unrecognized subcommand 'simulate'"),
        "{stderr}"
    );
}
