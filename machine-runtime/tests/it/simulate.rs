//! `machine-runtime simulate`: answers its endpoints on a real port and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous: the machine running the tests is small and shared.
const DEADLINE: Duration = Duration::from_secs(60);

/// Kills the service if a test fails before stopping it.
struct Service {
    child: Child,
    addr: String,
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
fn start(env: &[(&str, &str)], extra: &[&str]) -> Service {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_machine-runtime"));
    cmd.args(["simulate", "--port", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .env_remove("CUDA_VISIBLE_DEVICES");
    cmd.env_remove("WORKER_GPU_ID");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn().expect("machine-runtime starts");
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
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "simulate did not exit within {DEADLINE:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_machine-runtime"))
        .args(["simulate", "--port", "0", "--startup-delay-ms", "600000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("machine-runtime starts");
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
