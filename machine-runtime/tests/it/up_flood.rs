//! The health endpoint under a flood (issue 19): a real `up` with a small open-file limit, flooded
//! from loopback with connections that send half a request and hold it (a bounded count, for a
//! bounded time) while the supervisor keeps restarting a crashing app; the apps still start and
//! restart, the connections past the cap get 503, logged once per episode, and `/health` answers
//! afterwards.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::json;

use crate::up_support::{Runtime, http_get, http_request, wait_for, wait_line};

/// The runtime's open-file limit: room for its apps and its own share, not for the flood.
const OPEN_FILES: u32 = 256;
/// Connections the flood holds open at once: more than the limit.
const HELD: usize = 300;
/// Connections the flood opens in all, at most.
const MAX_OPENED: usize = 20_000;
const TOKEN: &str = "flood-control-token";

/// What the flood saw, shared with the test while it runs.
#[derive(Default)]
struct Counts {
    opened: AtomicUsize,
    refused_503: AtomicUsize,
    connect_errors: AtomicUsize,
}

struct Flood {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    thread: JoinHandle<()>,
}

/// Keeps [`HELD`] connections to `port` open, each having sent half a request head; counts the
/// 503 answers and opens a new connection for each one the endpoint answers or closes; stops when
/// told, or after [`MAX_OPENED`] connections.
fn flood(port: u16) -> Flood {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let thread = std::thread::spawn({
        let stop = stop.clone();
        let counts = counts.clone();
        move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !stop.load(Ordering::SeqCst) && counts.opened.load(Ordering::SeqCst) < MAX_OPENED
            {
                while held.len() < HELD && counts.opened.load(Ordering::SeqCst) < MAX_OPENED {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                        Ok(mut stream) => {
                            counts.opened.fetch_add(1, Ordering::SeqCst);
                            if stream
                                .write_all(b"GET /health HTTP/1.1\r\nHost: flood\r\n")
                                .is_ok()
                            {
                                stream.set_nonblocking(true).unwrap();
                                held.push(stream);
                            }
                        }
                        Err(_) => {
                            counts.connect_errors.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                    }
                }
                held.retain_mut(|stream| {
                    let mut buf = [0u8; 512];
                    match stream.read(&mut buf) {
                        Ok(0) => false,
                        Ok(n) => {
                            if buf[..n].starts_with(b"HTTP/1.1 503") {
                                counts.refused_503.fetch_add(1, Ordering::SeqCst);
                            }
                            false
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => true,
                        Err(_) => false,
                    }
                });
                // Pacing, not synchronisation: the flood keeps going until told to stop.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    Flood {
        stop,
        counts,
        thread,
    }
}

/// How many times the crashing app has started, by its own output.
fn starts(rt: &Runtime) -> usize {
    rt.output().matches("[crasher] crasher up").count()
}

#[test]
fn a_flood_on_the_health_port_leaves_the_supervisor_its_files() {
    let ulimit = format!("ulimit -n {OPEN_FILES} && exec \"$@\"");
    let rt = Runtime::start_with(
        json!({"apps": [
            {"name": "crasher", "script": "sh", "args": ["-c", "echo crasher up; sleep 0.3; exit 3"],
             "restart_delay": 100, "min_uptime": 100},
            {"name": "steady", "script": "sleep", "args": ["1000"]},
        ]}),
        &[("MACHINE_CONTROL_TOKEN", TOKEN)],
        &["sh", "-c", &ulimit, "sh"],
    );
    let port = rt.health_port();
    wait_for(
        "the crasher to start twice",
        || rt.output(),
        || (starts(&rt) >= 2).then_some(()),
    );

    let flood = flood(port);
    let counts = flood.counts.clone();
    wait_for(
        "the endpoint to refuse connections past its cap",
        || rt.output(),
        || (counts.refused_503.load(Ordering::SeqCst) >= 50).then_some(()),
    );
    // While the flood goes on, the supervisor still starts the crashing app again and again.
    let before = starts(&rt);
    wait_for(
        "three more starts of the crasher during the flood",
        || rt.output(),
        || (starts(&rt) >= before + 3).then_some(()),
    );
    assert!(
        counts.refused_503.load(Ordering::SeqCst) > 0,
        "the flood was still refused"
    );
    flood.stop.store(true, Ordering::SeqCst);
    flood.thread.join().unwrap();
    let opened = counts.opened.load(Ordering::SeqCst);
    let refused = counts.refused_503.load(Ordering::SeqCst);
    eprintln!(
        "flood: {opened} connections opened ({HELD} held at once), {refused} refused with 503, {} connect errors; the crasher started {} times",
        counts.connect_errors.load(Ordering::SeqCst),
        starts(&rt)
    );

    // /health answers again, with the apps.
    let health = wait_for(
        "/health to answer",
        || rt.output(),
        || {
            let (code, body, _) = http_get(port, "/health");
            (matches!(code, 200 | 503) && body["services"]["steady"].is_object()).then_some(body)
        },
    );
    assert_eq!(health["services"]["steady"]["status"], "online", "{health}");
    // And the supervisor starts an app on request.
    let pid = rt.app_status("steady")["pid"].clone();
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (code, body, _) = http_request(port, "POST", "/restart/service?service=steady", &[&auth]);
    assert_eq!(code, 202, "{body}");
    wait_for(
        "steady to run again",
        || rt.output(),
        || {
            let app = rt.app_status("steady");
            (app["pid"].is_u64() && app["pid"] != pid && app["state"] == "running").then_some(())
        },
    );
    let crasher = rt.app_status("crasher");
    assert_ne!(crasher["state"], "errored", "{crasher}");

    // Refusals are logged once per episode, not once per connection; no descriptor ran out. (The
    // flood saw its 503s before the runtime's line about them necessarily reached the test.)
    let output = wait_line(&rt, "connections open, its cap; refusing more with 503");
    let episodes = output
        .matches("connections open, its cap; refusing more with 503")
        .count();
    assert!(
        episodes >= 1 && episodes * 10 <= refused,
        "{episodes} episodes logged for {refused} refusals:\n{output}"
    );
    assert!(!output.contains("Too many open files"), "{output}");
    assert!(!output.contains("cannot accept a connection"), "{output}");
}

/// Opens a log stream of `app` and reads its head: the status and the stream (to hold it open).
fn follow(port: u16, app: &str) -> (u16, String, TcpStream) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(crate::up_support::PATIENCE))
        .unwrap();
    write!(
        stream,
        "GET /pm2/logs?service={app}&lines=1&stream=true HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, stream)
}

#[test]
fn log_followers_past_their_cap_get_503_until_one_closes() {
    let ulimit = format!("ulimit -n {OPEN_FILES} && exec \"$@\"");
    let rt = Runtime::start_with(
        json!({"apps": [
            {"name": "talker", "script": "sh", "args": ["-c", "while true; do echo hi; sleep 0.2; done"]},
            {"name": "steady", "script": "sleep", "args": ["1000"]},
        ]}),
        &[],
        &["sh", "-c", &ulimit, "sh"],
    );
    let port = rt.health_port();
    // 256 files, 2 apps: 86 connections, 21 followers (health_limits::Caps).
    let held: Vec<TcpStream> = (0..21)
        .map(|i| {
            let (status, head, stream) = follow(port, "talker");
            assert_eq!(status, 200, "follower {i}: {head}");
            stream
        })
        .collect();
    let (status, head, mut refused) = follow(port, "talker");
    assert_eq!(status, 503, "{head}");
    let mut body = String::new();
    refused.read_to_string(&mut body).unwrap();
    assert!(
        body.contains("21 log streams are open on this machine"),
        "{body}"
    );
    let (status, _, _) = follow(port, "talker");
    assert_eq!(status, 503);
    // A plain read still answers.
    assert_eq!(http_get(port, "/pm2/logs?service=talker&lines=1").0, 200);
    drop(held);
    wait_for(
        "a follower to be let in again",
        || rt.output(),
        || {
            let (status, _, stream) = follow(port, "talker");
            (status == 200).then_some(stream)
        },
    );
    // The end of the episode is logged once the close is noticed, through the non-blocking sink.
    let marker = "below its cap of 21 log followers again; ";
    let output = wait_for(
        "the end of the refusal episode in the log",
        || rt.output(),
        || {
            let output = rt.output();
            output.contains(marker).then_some(output)
        },
    );
    assert_eq!(
        output
            .matches("21 log followers open, its cap; refusing more with 503")
            .count(),
        1,
        "{output}"
    );
    // Two refused above, and any that raced the closes.
    let at = output.find(marker).expect(&output) + marker.len();
    let refused: usize = output[at..].split(' ').next().unwrap().parse().unwrap();
    assert!(refused >= 2, "{output}");
}
