//! `machine-comfyui` (the stand-in for the queue's ComfyUI fork) as a real process on a real port: its
//! command line, the fork's WebSocket protocol message by message, `POST /prompt`, `/history`, `/view`,
//! files on disk; and the stand-in worker's `comfyui` connector against it, including a ComfyUI that is
//! gone ("WebSocket not connected", as the real worker).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::job_queue::{
    DEADLINE, NewJob, bundle_dir, load_job_matching, push_job, sigterm, spawn_worker,
    wait_job_status, wait_output,
};
use crate::redis_server::RedisServer;
use crate::up_support::{http_get, wait_for};

const STANDIN: &str = env!("CARGO_BIN_EXE_machine-comfyui");

/// A running stand-in with its folders and its log.
struct Standin {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

impl Standin {
    /// Starts `machine-comfyui main.py --listen 127.0.0.1 --port 0 --cpu` with its own output and temp
    /// folders, and waits for the line that says where it listens.
    fn start() -> Standin {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(STANDIN)
            .args(["main.py", "--listen", "127.0.0.1", "--port", "0", "--cpu"])
            .arg("--output-directory")
            .arg(dir.path().join("out"))
            .arg("--temp-directory")
            .arg(dir.path().join("tmp"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let marker = "To see the GUI go to: http://127.0.0.1:";
        let port = wait_for(
            "the stand-in to listen",
            || log.lock().unwrap().clone(),
            || {
                let log = log.lock().unwrap();
                let at = log.find(marker)? + marker.len();
                log[at..].lines().next()?.trim().parse().ok()
            },
        );
        Standin {
            child,
            port,
            dir,
            log,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(port: u16) -> Socket {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/ws"), stream)
        .await
        .expect("websocket handshake");
    ws
}

/// The next JSON text message, within the deadline.
async fn next(ws: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket stays open")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

/// Messages up to and including the final `executing` with `node: null`.
async fn until_done(ws: &mut Socket) -> Vec<Value> {
    let mut all = Vec::new();
    loop {
        let message = next(ws).await;
        let done = message["type"] == "executing" && message["data"]["node"].is_null();
        all.push(message);
        if done {
            return all;
        }
    }
}

fn types(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["type"].as_str().unwrap_or("?"))
        .collect()
}

fn workflow(color: u32, prefix: &str) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 6, "height": 3, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    })
}

/// `POST path` with a JSON body: status and JSON answer.
fn post(port: u16, path: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let (status, answer, _) = crate::up_support::http_send(
        port,
        "POST",
        path,
        &["Content-Type: application/json"],
        Some(&body),
    );
    (status, answer)
}

/// `GET path`: the response head as text and the body as bytes.
fn get_bytes(port: u16, path: &str) -> (String, Vec<u8>) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    (
        String::from_utf8_lossy(&raw[..split]).into_owned(),
        raw[split + 4..].to_vec(),
    )
}

fn pngs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".png"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn the_command_line_is_the_forks() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(STANDIN)
        .args(["main.py", "--port", "8188", "--bogus", "--cpu", "--lowvram"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("usage: main.py [-h] [--listen [IP]] [--port PORT]"),
        "{stderr}"
    );
    // argparse stops at the first real mistake: --cpu with --lowvram.
    assert!(
        stderr.ends_with("main.py: error: argument --lowvram: not allowed with argument --cpu\n"),
        "{stderr}"
    );

    // The CI check starts up (the temp folder emptied) and exits 0 without listening.
    let temp = dir.path().join("t");
    std::fs::create_dir_all(temp.join("temp/old")).unwrap();
    let out = Command::new(STANDIN)
        .args([
            "main.py",
            "--quick-test-for-ci",
            "--port",
            "1",
            "--temp-directory",
        ])
        .arg(&temp)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Setting temp directory to: {}/temp",
            temp.display()
        )),
        "{stderr}"
    );
    assert!(
        !temp.join("temp").exists(),
        "the old temp folder was not emptied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_speaks_the_forks_protocol() {
    let standin = tokio::task::block_in_place(Standin::start);
    let port = standin.port;
    let log = standin.log();
    assert!(
        log.contains(&format!(
            "Setting output directory to: {}",
            standin.path("out").display()
        )),
        "{log}"
    );
    assert!(standin.path("tmp/temp").is_dir(), "{log}");

    let mut ws = connect(port).await;
    let hello = next(&mut ws).await;
    assert_eq!(hello["type"], "client_id");
    let sid = hello["data"]["client_id"].as_str().unwrap().to_owned();
    assert_eq!(sid.len(), 32);
    let status = next(&mut ws).await;
    assert_eq!(
        status,
        json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}})
    );
    ws.send(Message::text(json!({"type": "ping"}).to_string()))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, json!({"type": "pong"}));

    // A prompt over the socket, as the worker's connector sends it.
    let submit = |prompt: Value| {
        Message::text(
            json!({"type": "prompt", "data": {"prompt": prompt, "extra_data": {"client_id": "ignored"}}})
                .to_string(),
        )
    };
    ws.send(submit(workflow(0xFF0000, "ci"))).await.unwrap();
    let run = until_done(&mut ws).await;
    assert_eq!(
        types(&run),
        [
            "prompt_queued",
            "status",
            "status",
            "execution_start",
            "execution_cached",
            "node_executing",
            "executing",
            "node_executing",
            "executing",
            "executed",
            "execution_success",
            "status",
            "executing",
        ]
    );
    let prompt_id = run[0]["data"]["prompt_id"].as_str().unwrap().to_owned();
    assert_eq!(run[0]["data"]["number"], 0);
    assert_eq!(run[0]["data"]["node_errors"], json!({}));
    assert_eq!(run[1]["data"]["status"]["exec_info"]["queue_remaining"], 1);
    assert_eq!(run[11]["data"]["status"]["exec_info"]["queue_remaining"], 0);
    assert_eq!(
        run[5]["data"]["progress"],
        json!({"current": 1, "total": 2, "percentage": 50})
    );
    assert_eq!(
        run[6]["data"],
        json!({"node": "1", "display_node": "1", "prompt_id": prompt_id})
    );
    let images = json!([{"filename": "ci_00001_.png", "subfolder": "", "type": "output"}]);
    assert_eq!(run[9]["data"]["output"]["images"], images);
    assert_eq!(
        run[12]["data"],
        json!({"node": null, "prompt_id": prompt_id})
    );
    assert_eq!(pngs(&standin.path("out")), ["ci_00001_.png"]);

    let (status, history, raw) =
        tokio::task::block_in_place(|| http_get(port, &format!("/history/{prompt_id}")));
    assert_eq!(status, 200, "{raw}");
    let entry = &history[&prompt_id];
    assert_eq!(entry["outputs"]["2"]["images"], images);
    assert_eq!(entry["status"]["completed"], true);
    // The fork sets the socket's own id as the prompt's client, whatever the message said.
    assert_eq!(entry["prompt"][3]["client_id"], sid);
    let (head, body) = tokio::task::block_in_place(|| {
        get_bytes(port, "/view?filename=ci_00001_.png&subfolder=&type=output")
    });
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Type: image/png"), "{head}");
    assert_eq!(
        body,
        std::fs::read(standin.path("out/ci_00001_.png")).unwrap()
    );
    let (status, _, _) = tokio::task::block_in_place(|| http_get(port, "/view?filename=../x.png"));
    assert_eq!(status, 400);

    // The same prompt again: answered from the cache, as the fork does, without a new file.
    ws.send(submit(workflow(0xFF0000, "ci"))).await.unwrap();
    let again = until_done(&mut ws).await;
    assert_eq!(
        types(&again),
        [
            "prompt_queued",
            "status",
            "status",
            "execution_start",
            "execution_cached",
            "node_executing",
            "executed",
            "execution_success",
            "status",
            "executing",
        ]
    );
    assert_eq!(again[4]["data"]["nodes"], json!(["1", "2"]));
    assert_eq!(again[6]["data"]["output"]["images"], images);
    assert_eq!(again[0]["data"]["number"], 1);
    assert_eq!(pngs(&standin.path("out")), ["ci_00001_.png"]);

    // A node the stand-in does not know: the fork's `error`, nothing queued.
    let mut unknown = workflow(1, "x");
    unknown["1"]["class_type"] = json!("CheckpointLoaderSimple");
    ws.send(submit(unknown)).await.unwrap();
    let refused = next(&mut ws).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(
        refused["data"]["error"]["message"],
        "Cannot execute because node CheckpointLoaderSimple does not exist."
    );
    assert_eq!(refused["data"]["node_errors"], json!([]));

    // A node that fails while running: execution_error, then the final executing.
    ws.send(submit(workflow(2, "../outside"))).await.unwrap();
    let failed = until_done(&mut ws).await;
    let error = failed
        .iter()
        .find(|m| m["type"] == "execution_error")
        .expect("execution_error");
    assert_eq!(error["data"]["node_id"], "2");
    assert_eq!(error["data"]["node_type"], "SaveImage");
    assert_eq!(error["data"]["executed"], json!(["1"]));
    assert!(!types(&failed).contains(&"execution_success"));

    // HTTP POST /prompt: the answer on HTTP, the execution messages on the socket it names.
    let (status, answer) = tokio::task::block_in_place(|| {
        post(
            port,
            "/prompt",
            &json!({"prompt": workflow(0x00FF00, "ci"), "client_id": sid}),
        )
    });
    assert_eq!(status, 200, "{answer}");
    let http_id = answer["prompt_id"].as_str().unwrap().to_owned();
    assert_eq!(answer["node_errors"], json!({}));
    let over_socket = until_done(&mut ws).await;
    assert_eq!(over_socket.last().unwrap()["data"]["prompt_id"], http_id);
    assert_eq!(
        pngs(&standin.path("out")),
        ["ci_00001_.png", "ci_00002_.png"]
    );
    let (status, answer) = tokio::task::block_in_place(|| {
        post(port, "/prompt", &json!({"prompt": {"1": {"inputs": {}}}}))
    });
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["type"], "invalid_prompt");

    // Ctrl-C: the fork empties its temp folder and exits 0.
    // SAFETY: kill(2) on the child this test started and still owns.
    unsafe { libc::kill(i32::try_from(standin.child.id()).unwrap(), libc::SIGINT) };
    let mut standin = standin;
    let log = Arc::clone(&standin.log);
    let child = &mut standin.child;
    let status = wait_for(
        "the stand-in to stop",
        || log.lock().unwrap().clone(),
        || child.try_wait().unwrap(),
    );
    assert!(status.success(), "{}", standin.log());
    assert!(!standin.path("tmp/temp").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_runs_comfyui_jobs_and_fails_them_while_comfyui_is_gone() {
    let server = RedisServer::start();
    let mut conn = server.conn().await;
    load_job_matching(&mut conn).await;
    let standin = tokio::task::block_in_place(Standin::start);
    let port = standin.port.to_string();
    let worker_id = "cw-machine-worker-comfyui-0";
    let mut worker = spawn_worker(
        &bundle_dir(),
        &[
            ("WORKERS", "comfyui:1"),
            ("WORKER_ID", worker_id),
            ("MACHINE_ID", "cw-machine"),
            ("HUB_REDIS_URL", &server.url()),
            ("UNIFIED_MACHINE_STATUS", "true"),
            ("POLL_INTERVAL_MS", "100"),
            ("COMFYUI_HOST", "127.0.0.1"),
            ("COMFYUI_PORT", &port),
        ],
    );
    push_job(
        &mut conn,
        &NewJob::new(
            "cw-ok",
            "comfyui",
            json!({"workflow": workflow(0x0000FF, "cw")}),
        ),
    )
    .await;
    wait_job_status(&mut conn, "cw-ok", "completed").await;
    let done: Option<String> = conn.hget("jobs:completed", "cw-ok").await.unwrap();
    let done: Value = serde_json::from_str(&done.unwrap()).unwrap();
    let prompt_id = done["data"]["prompt_id"].as_str().unwrap().to_owned();
    assert_eq!(
        done["data"]["result"],
        json!({"node": null, "prompt_id": prompt_id})
    );
    assert_eq!(done["data"]["mime_type"], "image/png");
    assert_eq!(pngs(&standin.path("out")), ["cw_00001_.png"]);

    // A workflow that fails inside ComfyUI fails the job with ComfyUI's message (retried, then permanent).
    push_job(
        &mut conn,
        &NewJob::new(
            "cw-bad",
            "comfyui",
            json!({"workflow": workflow(3, "../escape")}),
        ),
    )
    .await;
    wait_job_status(&mut conn, "cw-bad", "failed").await;
    let failed: Option<String> = conn.hget("jobs:failed", "cw-bad").await.unwrap();
    assert!(
        failed
            .as_deref()
            .unwrap_or_default()
            .contains("Saving image outside the output folder"),
        "{failed:?}"
    );

    // ComfyUI goes away: the worker does not pause, it claims the job and fails it at once, three times.
    let mut standin = standin;
    standin.child.kill().unwrap();
    standin.child.wait().unwrap();
    let started = Instant::now();
    push_job(
        &mut conn,
        &NewJob::new("cw-gone", "comfyui", json!({"workflow": workflow(4, "cw")})),
    )
    .await;
    wait_job_status(&mut conn, "cw-gone", "failed").await;
    let failed: Option<String> = conn.hget("jobs:failed", "cw-gone").await.unwrap();
    let failed: Value = serde_json::from_str(&failed.unwrap()).unwrap();
    assert_eq!(failed["error"], "WebSocket not connected");
    assert_eq!(failed["retry_count"], 3);
    eprintln!(
        "timing: a job for a ComfyUI that is gone failed 3 times in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    sigterm(&worker);
    let (status, stdout, _) = wait_output(&mut worker).await;
    assert!(status.success(), "{stdout}");
    assert!(stdout.contains("comfyui: client_id "), "{stdout}");
}
