//! Hostile surroundings and faults (issue 14): a runtime whose output nobody reads, a runtime whose
//! stderr is a closed pipe, signals at start, `kill -9` of the runtime, GPU pins and PM2 fields
//! compared with a real `pm2-runtime` run of the same file.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::redis_server::RedisServer;
use crate::up_support::{BIN, free_port, http_get, wait_for};

/// A runtime started with stdio chosen by the test and a known health port.
struct Raw {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Raw {
    /// Starts `up --ecosystem` on `ecosystem` (with `@DIR@` replaced) in a clean environment.
    fn start(ecosystem: Value, env: &[(&str, &str)], stdout: Stdio, stderr: Stdio) -> Raw {
        let dir = tempfile::tempdir().unwrap();
        let text = ecosystem
            .to_string()
            .replace("@DIR@", dir.path().to_str().unwrap());
        let file = dir.path().join("ecosystem.config.json");
        std::fs::write(&file, text).unwrap();
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.args(["up", "--ecosystem"])
            .arg(&file)
            .args(["--health-port", &port.to_string()])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let child = cmd.spawn().unwrap();
        Raw {
            child,
            port,
            _dir: dir,
        }
    }

    /// GET with a bounded wait: `None` when the endpoint does not answer (yet).
    fn try_get(&self, path: &str) -> Option<(u16, Value)> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let stream =
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
        drop(stream);
        let (code, body, _) = http_get(self.port, path);
        Some((code, body))
    }

    fn get(&self, path: &str) -> (u16, Value) {
        wait_for(&format!("{path} to answer"), String::new, || {
            self.try_get(path)
        })
    }

    fn app(&self, name: &str) -> Value {
        let (_, status) = self.get("/status");
        status["apps"]
            .as_array()
            .and_then(|apps| apps.iter().find(|a| a["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no app {name} in /status: {status}"))
    }

    fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on the group of our own child.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// A pipe: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are new and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Bytes waiting in a pipe (FIONREAD).
fn pending_bytes(read_end: &OwnedFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(read_end.as_raw_fd(), libc::FIONREAD, &mut n) };
    n.max(0) as usize
}

/// Two chatty apps and one that exits every 0.3 s, for runs where nobody reads the output.
fn chatty_ecosystem() -> Value {
    json!({"apps": [
        {"name": "chatty-a", "script": "bash", "args": ["-c", "while :; do seq 1 2000; sleep 0.01; done"], "interpreter": "none"},
        {"name": "chatty-b", "script": "bash", "args": ["-c", "while :; do seq 1 2000 >&2; sleep 0.01; done"], "interpreter": "none"},
        {"name": "crasher", "script": "bash", "args": ["-c", "echo crashing; sleep 0.3; exit 3"], "interpreter": "none",
         "min_uptime": 100, "max_restarts": 1000}
    ]})
}

#[test]
fn output_nobody_reads_stalls_nothing() {
    // `up ... | sleep 30` with stderr stalled too: both pipes are held open and never read.
    let (out_read, out_write) = pipe();
    let (err_read, err_write) = pipe();
    let mut rt = Raw::start(
        chatty_ecosystem(),
        &[],
        Stdio::from(out_write),
        Stdio::from(err_write),
    );
    // Both pipes fill up (64 KiB each on Linux; counted full past 48 000 bytes, the last page may not fit) while the apps keep printing.
    wait_for(
        "both output pipes to be full",
        || {
            format!(
                "stdout pipe {} bytes, stderr pipe {} bytes",
                pending_bytes(&out_read),
                pending_bytes(&err_read)
            )
        },
        || (pending_bytes(&out_read) >= 48_000 && pending_bytes(&err_read) >= 48_000).then_some(()),
    );
    // Health answers, and the crashing app keeps being restarted, while nobody reads.
    let (code, _) = rt.get("/health");
    assert_eq!(code, 200, "health while the output is stalled");
    let before = rt.app("crasher")["restarts"].as_u64().unwrap();
    wait_for(
        "the crashed app to be restarted while the output is stalled",
        String::new,
        || (rt.app("crasher")["restarts"].as_u64().unwrap() >= before + 3).then_some(()),
    );
    assert!(
        pending_bytes(&out_read) >= 48_000,
        "the stdout pipe was read by someone"
    );

    // Someone starts reading: the output resumes with a count of what was dropped.
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let reader = {
        let seen = seen.clone();
        let mut file = std::fs::File::from(out_read);
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = file.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    wait_for(
        "a count of the dropped lines on stdout",
        || {
            String::from_utf8_lossy(&seen.lock().unwrap())
                .chars()
                .rev()
                .take(2000)
                .collect()
        },
        || {
            let text = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
            text.lines()
                .find(|l| l.contains("lines dropped (stdout not read fast enough)"))
                .map(str::to_owned)
        },
    );

    // SIGTERM stops everything while stderr is still stalled.
    rt.signal(libc::SIGTERM);
    let started = Instant::now();
    let status = wait_for(
        "the runtime to stop after SIGTERM with its stderr stalled",
        || format!("{:?} since SIGTERM", started.elapsed()),
        || rt.child.try_wait().unwrap(),
    );
    assert!(status.success(), "stopped with {status:?}");
    drop(err_read);
    reader.join().unwrap();
}

/// Pids of the clients connected to `redis` other than the one asking.
fn client_count(redis: &RedisServer) -> usize {
    let client = redis::Client::open(redis.url()).unwrap();
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
        return 0;
    };
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
    list.lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .count()
}

#[test]
fn closed_stderr_keeps_the_broker_linked() {
    let redis = RedisServer::start();
    let (err_read, err_write) = pipe();
    // Nobody will ever read stderr: every log line meets EPIPE.
    drop(err_read);
    let url = redis.url();
    let rt = Raw::start(
        json!({"apps": [{"name": "idle", "script": "sleep", "args": ["600"]}]}),
        &[
            ("HUB_REDIS_URL", url.as_str()),
            ("MACHINE_ID", "hostile-stderr"),
            ("BROKER_PREFLIGHT", "off"),
        ],
        Stdio::null(),
        Stdio::from(err_write),
    );
    let connected = || {
        let (_, status) = rt.get("/status");
        (status["broker"]["connection"]["state"] == "connected" && client_count(&redis) >= 1)
            .then_some(())
    };
    wait_for("the broker to connect", String::new, connected);
    // Kill its connections: the broker logs the outage and the reconnection into the closed pipe.
    for _ in 0..3 {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        let _: i64 = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
            .query(&mut conn)
            .unwrap();
        let _: i64 = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "pubsub", "SKIPME", "yes"])
            .query(&mut conn)
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        wait_for(
            "the broker to reconnect with its stderr closed",
            || format!("CLIENT LIST count {}", client_count(&redis)),
            connected,
        );
    }
    let (code, health) = rt.get("/health");
    assert_eq!(code, 200, "{health}");
    assert_eq!(
        health["services"]["status-aggregator"]["healthy"], true,
        "{health}"
    );
}
