//! The connection to Redis: one multiplexed connection, kept alive with capped exponential backoff.
//!
//! A connector task owns reconnecting; users take the current connection (with its generation) and
//! report failures back, so a dead link is noticed by whoever touches it first and nobody blocks on a
//! reconnect in progress.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::config::RedisUrl;
use super::time::epoch_ms;

/// Timeouts and backoff of a [`Link`].
#[derive(Debug, Clone, Copy)]
pub struct LinkSettings {
    /// Limit for one connection attempt (TCP, TLS, AUTH, PING).
    pub connect_timeout: Duration,
    /// Limit for one reply.
    pub response_timeout: Duration,
    /// First reconnection delay.
    pub backoff_min: Duration,
    /// Reconnection delay cap.
    pub backoff_max: Duration,
}

/// The connection's state, as shown by the health endpoint (`since_epoch_ms`: an epoch time, unlike
/// the apps' `since_ms`, which counts from the runtime's start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ConnectionState {
    /// No attempt finished yet.
    Connecting {
        /// Epoch ms of the start.
        #[serde(rename = "since_epoch_ms")]
        since_ms: u64,
    },
    /// Connected.
    Connected {
        /// Epoch ms of the connection.
        #[serde(rename = "since_epoch_ms")]
        since_ms: u64,
    },
    /// The last attempt or command failed; retrying with backoff.
    Unreachable {
        /// Epoch ms of the first failure of this outage.
        #[serde(rename = "since_epoch_ms")]
        since_ms: u64,
        /// The latest error, without the password.
        last_error: String,
    },
}

/// A failed connection attempt.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// Redis refused the credentials (or wants some and got none).
    #[error(
        "redis at {url} refused authentication: {detail}; check the user and password in HUB_REDIS_URL"
    )]
    AuthRefused {
        /// The redacted URL.
        url: String,
        /// The server's reason.
        detail: String,
    },
    /// The TLS handshake failed: a certificate was refused on either side (unknown CA, expired,
    /// wrong host name, client certificate missing or refused).
    #[error("redis at {url} refused the TLS connection: {reason} ({detail})")]
    TlsRefused {
        /// The redacted URL.
        url: String,
        /// The cause in words, with the fix ([`super::tls::explain_handshake_failure`]).
        reason: String,
        /// rustls's words.
        detail: String,
    },
    /// Redis could not be reached or did not answer in time.
    #[error("redis at {url} is unreachable: {detail}")]
    Unreachable {
        /// The redacted URL.
        url: String,
        /// The reason.
        detail: String,
    },
}

impl LinkError {
    /// Whether retrying cannot help, so a start must fail on it: refused credentials or certificates.
    pub fn is_fatal_at_start(&self) -> bool {
        matches!(self, Self::AuthRefused { .. } | Self::TlsRefused { .. })
    }
}

/// A live connection with the generation that identifies it.
#[derive(Clone)]
pub struct Conn {
    /// Increases with each new connection.
    pub generation: u64,
    /// The connection (cheap to clone; all clones share one socket).
    pub conn: MultiplexedConnection,
}

/// The shared connection to Redis.
pub struct Link {
    url: RedisUrl,
    client: redis::Client,
    settings: LinkSettings,
    current: watch::Sender<Option<Conn>>,
    state: watch::Sender<ConnectionState>,
    broken: Notify,
    generations: AtomicU64,
}

impl Link {
    /// Prepares a link; nothing is connected until [`Link::connect_now`] or [`Link::run`].
    pub fn new(url: RedisUrl, settings: LinkSettings) -> Result<Arc<Self>, LinkError> {
        let client = url.client().map_err(|err| LinkError::Unreachable {
            url: url.redacted().to_owned(),
            detail: url.redact(&err.to_string()),
        })?;
        Ok(Arc::new(Self {
            url,
            client,
            settings,
            current: watch::channel(None).0,
            state: watch::channel(ConnectionState::Connecting {
                since_ms: epoch_ms(SystemTime::now()),
            })
            .0,
            broken: Notify::new(),
            generations: AtomicU64::new(0),
        }))
    }

    /// The redacted URL.
    pub fn url(&self) -> &RedisUrl {
        &self.url
    }

    /// The client, for connections of another kind (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The timeouts and backoff.
    pub fn settings(&self) -> LinkSettings {
        self.settings
    }

    /// The current connection, if connected.
    pub fn current(&self) -> Option<Conn> {
        self.current.borrow().clone()
    }

    /// Watches connections come and go.
    pub(crate) fn watch_current(&self) -> watch::Receiver<Option<Conn>> {
        self.current.subscribe()
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        self.state.borrow().clone()
    }

    /// One connection attempt; on success the connection becomes current.
    pub(crate) async fn connect_now(&self) -> Result<Conn, LinkError> {
        match self.connect_once().await {
            Ok(conn) => Ok(self.install(conn)),
            Err(err) => {
                self.mark_unreachable(&err);
                Err(err)
            }
        }
    }

    fn install(&self, conn: MultiplexedConnection) -> Conn {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let conn = Conn { generation, conn };
        self.current.send_replace(Some(conn.clone()));
        self.state.send_replace(ConnectionState::Connected {
            since_ms: epoch_ms(SystemTime::now()),
        });
        conn
    }

    async fn connect_once(&self) -> Result<MultiplexedConnection, LinkError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(Some(self.settings.response_timeout));
        let attempt = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            // PING proves the credentials: without a password the connection opens and only the first
            // command meets NOAUTH.
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok::<_, RedisError>(conn)
        };
        let limit = self.settings.connect_timeout + self.settings.response_timeout;
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => Err(self.classify(&err)),
            Err(_) => Err(LinkError::Unreachable {
                url: self.url.redacted().to_owned(),
                detail: format!("no connection within {} ms", limit.as_millis()),
            }),
        }
    }

    /// Turns a redis error into a [`LinkError`] whose text has no password.
    pub(crate) fn classify(&self, err: &RedisError) -> LinkError {
        let url = self.url.redacted().to_owned();
        let detail = self.url.redact(&describe(err));
        if is_auth_error(err) {
            LinkError::AuthRefused { url, detail }
        } else if let Some(reason) = super::tls::explain_handshake_failure(&detail) {
            LinkError::TlsRefused {
                url,
                reason,
                detail,
            }
        } else {
            LinkError::Unreachable { url, detail }
        }
    }

    fn mark_unreachable(&self, err: &LinkError) {
        let detail = match err {
            LinkError::AuthRefused { detail, .. } => format!("authentication refused: {detail}"),
            LinkError::TlsRefused { reason, .. } => format!("TLS refused: {reason}"),
            LinkError::Unreachable { detail, .. } => detail.clone(),
        };
        self.state.send_modify(|state| {
            let since_ms = match state {
                ConnectionState::Unreachable { since_ms, .. } => *since_ms,
                _ => epoch_ms(SystemTime::now()),
            };
            *state = ConnectionState::Unreachable {
                since_ms,
                last_error: detail,
            };
        });
    }

    /// Reports a failed command on connection `generation`; a connection-level failure drops the
    /// connection and wakes the connector. Returns whether it was one.
    pub fn report(&self, generation: u64, err: &RedisError) -> bool {
        if !is_link_failure(err) {
            return false;
        }
        let mut dropped = false;
        self.current.send_if_modified(|current| {
            if current.as_ref().is_some_and(|c| c.generation == generation) {
                *current = None;
                dropped = true;
                true
            } else {
                false
            }
        });
        if dropped {
            let err = self.classify(err);
            super::log!(
                "lost the connection to redis at {}: {}",
                self.url,
                detail_of(&err)
            );
            self.mark_unreachable(&err);
            self.broken.notify_one();
        }
        true
    }

    /// Keeps the link connected until `cancel`: reconnects with capped exponential backoff whenever
    /// the connection is lost or was never made.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut delay = self.settings.backoff_min;
        let mut outage_logged_at: Option<std::time::Instant> = None;
        let mut outage_started: Option<std::time::Instant> = None;
        loop {
            if self.current().is_some() {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = self.broken.notified() => {}
                }
                continue;
            }
            let outage = *outage_started.get_or_insert_with(std::time::Instant::now);
            let attempt = tokio::select! {
                () = cancel.cancelled() => return,
                attempt = self.connect_once() => attempt,
            };
            match attempt {
                Ok(conn) => {
                    self.install(conn);
                    if outage_logged_at.is_some() {
                        super::log!(
                            "connected to redis at {} after {} s",
                            self.url,
                            outage.elapsed().as_secs()
                        );
                    }
                    delay = self.settings.backoff_min;
                    outage_logged_at = None;
                    outage_started = None;
                }
                Err(err) => {
                    self.mark_unreachable(&err);
                    // One line when the outage starts, then one every 30 s: an outage must not flood the log.
                    if outage_logged_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(30)) {
                        super::log!(
                            "{}; retrying (processes keep running; status publishing resumes on reconnect)",
                            err
                        );
                        outage_logged_at = Some(std::time::Instant::now());
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(self.settings.backoff_max);
                }
            }
        }
    }
}

fn detail_of(err: &LinkError) -> &str {
    match err {
        LinkError::AuthRefused { detail, .. }
        | LinkError::TlsRefused { detail, .. }
        | LinkError::Unreachable { detail, .. } => detail,
    }
}

/// The error in words: the crate's category and detail, which never include the URL.
fn describe(err: &RedisError) -> String {
    let text = err.to_string();
    if text.is_empty() {
        err.category().to_owned()
    } else {
        text
    }
}

/// WRONGPASS, NOAUTH and an AUTH refusal all mean the credentials are wrong.
pub(crate) fn is_auth_error(err: &RedisError) -> bool {
    err.kind() == ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("NOAUTH" | "WRONGPASS"))
}

/// Whether an error means the connection is unusable (as opposed to a command the server rejected).
pub(crate) fn is_link_failure(err: &RedisError) -> bool {
    if is_auth_error(err) {
        return true;
    }
    !matches!(
        err.kind(),
        ErrorKind::Server(_)
            | ErrorKind::Extension
            | ErrorKind::Parse
            | ErrorKind::UnexpectedReturnType
    )
}

impl Link {
    /// PINGs the current connection and reports it lost if that fails; for callers that saw a hint
    /// (a dropped pub/sub stream) and want the health state to follow at once.
    pub async fn check(&self) {
        let Some(mut current) = self.current() else {
            return;
        };
        if let Err(err) = redis::cmd("PING")
            .query_async::<String>(&mut current.conn)
            .await
        {
            self.report(current.generation, &err);
        }
    }
}
