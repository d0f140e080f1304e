//! A real `redis-server` per test, on a free port, with no persistence; killed when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::up_support::free_port;

const BINARY: &str = "/usr/bin/redis-server";

/// A running redis-server owned by the test.
pub struct RedisServer {
    port: u16,
    tls: bool,
    extra: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without a password.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server that speaks only TLS, with the self-signed certificate in `fixtures/redis-tls`.
    pub fn start_tls() -> Self {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/fixtures/redis-tls");
        let cert = format!("{fixtures}/cert.pem");
        let key = format!("{fixtures}/key.pem");
        Self::start_with(&[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &cert,
            "--tls-auth-clients",
            "no",
        ])
    }

    /// Starts a server with extra arguments (e.g. `["--requirepass", "pw"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        wait_for_binary();
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let dir = tempfile::tempdir().expect("temporary directory for redis-server");
        let tls = extra.iter().any(|a| a == "--tls-cert-file");
        let mut server = Self {
            port: free_port(),
            tls,
            extra,
            dir,
            child: None,
        };
        // A port picked by the kernel may be taken again before redis binds it; try a few.
        let mut last = String::new();
        for _ in 0..5 {
            match server.spawn() {
                Ok(()) => return server,
                Err(err) => {
                    last = err;
                    server.port = free_port();
                }
            }
        }
        panic!("redis-server did not start: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let ports = if self.tls {
            [
                "--port".to_owned(),
                "0".to_owned(),
                "--tls-port".to_owned(),
                self.port.to_string(),
            ]
        } else {
            [
                "--port".to_owned(),
                self.port.to_string(),
                "--tls-port".to_owned(),
                "0".to_owned(),
            ]
        };
        let mut child = Command::new(BINARY)
            .args(ports)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("cannot run {BINARY}: {err}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}: {}", read_log(&log)));
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && read_log(&log).contains("Ready to accept connections")
            {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!("not ready within 30 s: {}", read_log(&log)))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL, like a crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same arguments (data is gone, as after a crash).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(err) if Instant::now() > deadline => {
                    panic!("redis-server did not restart: {err}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A fresh async connection for test setup and checks (`password` for `--requirepass`).
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.conn_with(&self.url()).await
    }

    /// A connection with an explicit URL.
    pub async fn conn_with(&self, url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .expect("test redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("test connection to redis-server")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The package may still be installing when tests start; wait, then fail (never skip).
fn wait_for_binary() {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !Path::new(BINARY).exists() {
        assert!(
            Instant::now() < deadline,
            "{BINARY} is missing: install it (apt-get install redis-server); these tests need a real redis"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}
