//! One live machine per `MACHINE_ID`: a lease on `machine:lease:<MACHINE_ID>` in the job broker's Redis.
//!
//! - Take: at start, `SET machine:lease:<id> <holder> NX PX <ttl>`, where the holder is
//!   `host=<hostname> pid=<pid> started=<ISO 8601>`. If another live machine holds it, the start is refused
//!   with one error naming that holder and when its lease expires.
//! - A lease left by this machine's previous run (same host name, and its pid is ours or no longer alive:
//!   a restarted container, a rescheduled pod) is taken over at once instead of waiting out its TTL.
//! - Renew: every status interval, compare-and-renew in one Lua script (`PEXPIRE` only while the value is
//!   still ours; taken again if it vanished, e.g. Redis restarted empty). The TTL is three intervals, so two
//!   missed renewals are survived.
//! - Release: after every app has stopped, delete it only if it is still ours.
//! - Redis unreachable at start: the machine starts anyway (its workers must not wait on Redis, the same
//!   rule as status publishing) and takes the lease at the first renewal that reaches Redis. If another
//!   machine holds it then, or takes it over while this one runs, this machine logs the holder and stops;
//!   when it is restarted it is refused at start with the same error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;

use super::config::BrokerConfig;
use super::link::{Conn, Link, LinkError};
use super::time::{iso8601, now_ms};
use crate::supervisor::{Phase, SupervisorHandle};

/// The longest the start waits for Redis to take the lease (connect and `SET NX`): a Redis that
/// answers does so in milliseconds; one that accepts connections and never answers is treated as
/// unreachable (start anyway, take the lease at the first renewal that reaches it).
pub(crate) const LEASE_AT_START_LIMIT: Duration = Duration::from_millis(500);

/// The key of a machine id's lease.
pub fn key(machine_id: &str) -> String {
    format!("machine:lease:{machine_id}")
}

/// The lease's time to live for a status interval: three intervals, so two missed renewals are survived.
pub(crate) fn ttl_for(status_interval: Duration) -> Duration {
    status_interval * 3
}

/// Who holds a lease: a process on a host, started at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    /// The host name (the container's or pod's).
    pub host: String,
    /// The runtime's process id on that host.
    pub pid: u32,
    /// When that runtime started, epoch ms.
    pub started_ms: u64,
}

impl Holder {
    /// This process on `host`, started now.
    pub(crate) fn this_process(host: &str) -> Holder {
        Holder {
            host: host.to_owned(),
            pid: std::process::id(),
            started_ms: now_ms(),
        }
    }

    /// The value stored in Redis: `host=<host> pid=<pid> started=<ISO 8601>`.
    pub fn value(&self) -> String {
        format!(
            "host={} pid={} started={}",
            self.host,
            self.pid,
            iso8601(std::time::UNIX_EPOCH + Duration::from_millis(self.started_ms))
        )
    }

    /// Reads a value written by [`Holder::value`]; `None` for anything else.
    pub fn parse(value: &str) -> Option<Holder> {
        let mut host = None;
        let mut pid = None;
        let mut started: Option<&str> = None;
        for field in value.split(' ') {
            match field.split_once('=')? {
                ("host", v) => host = Some(v.to_owned()),
                ("pid", v) => pid = v.parse().ok(),
                ("started", v) => started = Some(v),
                _ => return None,
            }
        }
        // The start time is only shown, never compared: it must be there, its value is not read back.
        started?;
        Some(Holder {
            host: host?,
            pid: pid?,
            started_ms: 0,
        })
    }

    /// Whether a lease held by `self` was left by an earlier run of `me` (same host name, and its process
    /// is `me`'s pid or gone): such a lease is taken over, not waited out.
    pub(crate) fn is_earlier_run_of(&self, me: &Holder) -> bool {
        self.host == me.host && (self.pid == me.pid || !process_alive(self.pid))
    }
}

/// Whether a process with `pid` exists on this host (`kill(pid, 0)`).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission check.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Why the lease cannot be held.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    /// Another live machine holds the id.
    #[error(
        "machine id \"{machine_id}\" is already in use by another machine: {key} is held by {holder}, and its lease expires in {expires_in_s} s unless that machine renews it (a machine killed outright renews nothing: this one can start once the lease has expired, and hands back the jobs the killed one left); give each machine its own MACHINE_ID (Kubernetes: the pod name does it; `docker compose up --scale`: set MACHINE_ID_APPEND_HOSTNAME=true) or stop the other machine"
    )]
    Held {
        /// The contested id.
        machine_id: String,
        /// Its lease key.
        key: String,
        /// The other holder, as stored.
        holder: String,
        /// Seconds until its lease expires (rounded up).
        expires_in_s: u64,
    },
    /// Redis refused the credentials.
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// What a compare-and-renew found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Renewal {
    /// Still ours; the TTL is reset.
    Renewed,
    /// It had vanished; taken again.
    Retaken,
    /// Someone else holds it.
    HeldBy { holder: String, pttl_ms: i64 },
}

const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, '', 0}
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {2, '', 0}
end
return {0, v, redis.call('PTTL', KEYS[1])}
";

const REPLACE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Whether the lease is held and when it was last taken or renewed, for `/metrics`; shared with the
/// task that keeps it.
#[derive(Debug, Default)]
pub struct LeaseState {
    held: AtomicBool,
    /// Epoch ms of the last take or renewal; 0 before the first.
    renewed_ms: AtomicU64,
}

impl LeaseState {
    /// Held now (taken or renewed at `now_ms`), or not (released, or another machine holds it).
    fn set(&self, held: bool) {
        self.held.store(held, Ordering::Relaxed);
        if held {
            self.renewed_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// What `/metrics` shows.
    pub fn facts(&self) -> LeaseFacts {
        let renewed = self.renewed_ms.load(Ordering::Relaxed);
        LeaseFacts {
            held: self.held.load(Ordering::Relaxed),
            renewed_ms: (renewed > 0).then_some(renewed),
        }
    }
}

/// The most the release may add to a machine's stop (inside the stop budget's margin).
pub(crate) const RELEASE_LIMIT: Duration = Duration::from_secs(2);

/// Takes the lease on `machine_id` (refusing when another live machine holds it) and holds it for the
/// supervisor's life: renewed every status interval, released once every app has stopped (the supervisor
/// waits for that before it returns). Another holder found while running stops the machine (SIGTERM).
/// Returns the lease's state as it changes, for `/metrics`.
pub(crate) async fn take_and_hold(
    config: &BrokerConfig,
    machine_id: &str,
    supervisor: &SupervisorHandle,
) -> Result<Arc<LeaseState>, LeaseError> {
    let me = Holder::this_process(&crate::identity::hostname());
    let lease = Lease::acquire(config, machine_id, me).await?;
    let state = lease.state.clone();
    let handle = supervisor.clone();
    supervisor.tracker().spawn(async move {
        let mut snapshots = handle.watch();
        let stopped = async {
            while snapshots.borrow_and_update().phase != Phase::Stopped {
                if snapshots.changed().await.is_err() {
                    return;
                }
            }
        };
        let stop = handle.clone();
        tokio::select! {
            () = lease.keep(move |_| stop.request_stop(libc::SIGTERM)) => {}
            () = stopped => {}
        }
        lease.release().await;
    });
    Ok(state)
}

/// A machine's lease on its id (held, or to be taken when Redis answers).
pub(crate) struct Lease {
    link: Arc<Link>,
    machine_id: String,
    key: String,
    me: Holder,
    ttl: Duration,
    every: Duration,
    state: Arc<LeaseState>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("holder", &self.me.value())
            .finish()
    }
}

impl Lease {
    /// Takes the lease on `machine_id` for `me` (one connection attempt). Refuses when another live
    /// machine holds it; an unreachable Redis is not an error (see the module doc).
    pub(crate) async fn acquire(
        config: &BrokerConfig,
        machine_id: &str,
        me: Holder,
    ) -> Result<Lease, LeaseError> {
        let link = Link::new(config.url.clone(), config.link_settings())?;
        let lease = Lease {
            link,
            machine_id: machine_id.to_owned(),
            key: key(machine_id),
            me,
            ttl: ttl_for(config.status_interval),
            every: config.status_interval,
            state: Arc::default(),
        };
        let attempt = async {
            let mut conn = match lease.link.connect_now().await {
                Ok(conn) => conn,
                Err(err) if err.is_fatal_at_start() => return Err(err.into()),
                Err(err) => {
                    super::log!(
                        "{err}; starting without the lease on {}: it is taken when redis answers",
                        lease.key
                    );
                    return Ok(());
                }
            };
            match lease.take(&mut conn).await {
                Ok(result) => result,
                Err(err) => {
                    lease.link.report(conn.generation, &err);
                    super::log!(
                        "could not take the lease on {}: {}; it is taken when redis answers",
                        lease.key,
                        lease.link.classify(&err)
                    );
                    Ok(())
                }
            }
        };
        // A Redis that accepts connections and never answers must not hold up the apps.
        match tokio::time::timeout(LEASE_AT_START_LIMIT, attempt).await {
            Ok(Ok(())) => Ok(lease),
            Ok(Err(err)) => Err(err),
            Err(_) => {
                super::log!(
                    "redis did not answer within {} at start; starting without the lease on {}: it is taken when redis answers",
                    crate::time::human_duration(LEASE_AT_START_LIMIT),
                    lease.key
                );
                Ok(lease)
            }
        }
    }

    /// `SET NX PX`; when taken, either take over an earlier run's lease or name the other holder.
    async fn take(&self, conn: &mut Conn) -> redis::RedisResult<Result<(), LeaseError>> {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        for _ in 0..3 {
            let set: Option<String> = redis::cmd("SET")
                .arg(&self.key)
                .arg(self.me.value())
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn.conn)
                .await?;
            if set.is_some() {
                self.state.set(true);
                super::log!("took the lease on {} as {}", self.key, self.me.value());
                return Ok(Ok(()));
            }
            let (holder, pttl_ms): (Option<String>, i64) = redis::pipe()
                .cmd("GET")
                .arg(&self.key)
                .cmd("PTTL")
                .arg(&self.key)
                .query_async(&mut conn.conn)
                .await?;
            // Expired between the two commands: try again.
            let Some(holder) = holder else { continue };
            if let Some(result) = self.take_over_or_refuse(conn, holder, pttl_ms).await? {
                return Ok(result);
            }
        }
        Ok(Err(self.held("(changing hands)".to_owned(), 0)))
    }

    /// Takes over a lease an earlier run of this machine left, or refuses naming the holder. `None`: the
    /// lease changed meanwhile; try again.
    async fn take_over_or_refuse(
        &self,
        conn: &mut Conn,
        holder: String,
        pttl_ms: i64,
    ) -> redis::RedisResult<Option<Result<(), LeaseError>>> {
        let earlier = Holder::parse(&holder).is_some_and(|h| h.is_earlier_run_of(&self.me));
        if !earlier {
            return Ok(Some(Err(self.held(holder, pttl_ms))));
        }
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let replaced: i64 = Script::new(REPLACE)
            .key(&self.key)
            .arg(&holder)
            .arg(self.me.value())
            .arg(ttl_ms)
            .invoke_async(&mut conn.conn)
            .await?;
        if replaced == 1 {
            self.state.set(true);
            super::log!(
                "took over the lease on {} from an earlier run of this machine ({holder})",
                self.key
            );
            Ok(Some(Ok(())))
        } else {
            Ok(None)
        }
    }

    fn held(&self, holder: String, pttl_ms: i64) -> LeaseError {
        LeaseError::Held {
            machine_id: self.machine_id.clone(),
            key: self.key.clone(),
            holder,
            expires_in_s: u64::try_from(pttl_ms.max(0)).unwrap_or(0).div_ceil(1000),
        }
    }

    async fn renew_once(&self, conn: &mut Conn) -> redis::RedisResult<Renewal> {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let (code, holder, pttl_ms): (i64, String, i64) = Script::new(RENEW)
            .key(&self.key)
            .arg(self.me.value())
            .arg(ttl_ms)
            .invoke_async(&mut conn.conn)
            .await?;
        Ok(match code {
            1 => Renewal::Renewed,
            2 => Renewal::Retaken,
            _ => Renewal::HeldBy { holder, pttl_ms },
        })
    }

    /// A live connection: the current one, or one new attempt.
    async fn connection(&self) -> Option<Conn> {
        match self.link.current() {
            Some(conn) => Some(conn),
            None => self.link.connect_now().await.ok(),
        }
    }

    /// Renews the lease every status interval, for ever. Calls `conflict` (once) with the error when
    /// another live machine turns out to hold the id.
    pub async fn keep(&self, conflict: impl FnOnce(LeaseError)) {
        let mut conflict = Some(conflict);
        let mut unreachable_logged = false;
        loop {
            tokio::time::sleep(self.every).await;
            let Some(mut conn) = self.connection().await else {
                if !unreachable_logged {
                    super::log!(
                        "cannot renew the lease on {}: redis is unreachable; it lapses {} s after the last renewal",
                        self.key,
                        self.ttl.as_secs()
                    );
                    unreachable_logged = true;
                }
                continue;
            };
            let outcome = match self.renew_once(&mut conn).await {
                Ok(Renewal::HeldBy { holder, pttl_ms }) => {
                    match self.take_over_or_refuse(&mut conn, holder, pttl_ms).await {
                        Ok(Some(Err(err))) => Err(err),
                        Ok(_) => Ok(()),
                        Err(err) => {
                            self.link.report(conn.generation, &err);
                            Ok(())
                        }
                    }
                }
                Ok(Renewal::Retaken) => {
                    self.state.set(true);
                    super::log!("took the lease on {} as {}", self.key, self.me.value());
                    Ok(())
                }
                Ok(Renewal::Renewed) => {
                    self.state.set(true);
                    Ok(())
                }
                Err(err) => {
                    self.link.report(conn.generation, &err);
                    Ok(())
                }
            };
            unreachable_logged = false;
            if let Err(err) = outcome {
                self.state.set(false);
                super::log!("{err}; stopping this machine");
                if let Some(conflict) = conflict.take() {
                    conflict(err);
                }
            }
        }
    }

    /// Deletes the lease if it is still ours, within [`RELEASE_LIMIT`]; logs what happened.
    pub async fn release(&self) {
        self.state.set(false);
        if tokio::time::timeout(RELEASE_LIMIT, self.release_now())
            .await
            .is_err()
        {
            super::log!(
                "could not release the lease on {} within {} ms; it lapses by itself",
                self.key,
                RELEASE_LIMIT.as_millis()
            );
        }
    }

    async fn release_now(&self) {
        let Some(mut conn) = self.connection().await else {
            super::log!(
                "could not release the lease on {}: redis is unreachable; it lapses by itself",
                self.key
            );
            return;
        };
        let result: redis::RedisResult<i64> = Script::new(RELEASE)
            .key(&self.key)
            .arg(self.me.value())
            .invoke_async(&mut conn.conn)
            .await;
        match result {
            Ok(1) => super::log!("released the lease on {}", self.key),
            Ok(_) => super::log!("the lease on {} was no longer ours; left it", self.key),
            Err(err) => super::log!(
                "could not release the lease on {}: {}; it lapses by itself",
                self.key,
                self.link.classify(&err)
            ),
        }
    }
}

/// The broker link's lease, as the metrics see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseFacts {
    /// Whether this machine holds the lease on its id now.
    pub held: bool,
    /// Epoch ms of the last take or renewal.
    pub renewed_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_values_round_trip_and_name_the_process() {
        let me = Holder {
            host: "gpu-box-1".into(),
            pid: 4242,
            started_ms: 1_700_000_000_123,
        };
        assert_eq!(
            me.value(),
            "host=gpu-box-1 pid=4242 started=2023-11-14T22:13:20.123Z"
        );
        let back = Holder::parse(&me.value()).unwrap();
        assert_eq!((back.host.as_str(), back.pid), ("gpu-box-1", 4242));
        assert_eq!(Holder::parse("something else"), None);
        assert_eq!(Holder::parse("host=a pid=x started=y"), None);
    }

    #[test]
    fn an_earlier_run_is_same_host_and_our_pid_or_a_dead_one() {
        let me = Holder::this_process("h");
        let other = |host: &str, pid: u32| Holder {
            host: host.into(),
            pid,
            started_ms: 0,
        };
        // A restarted container: PID 1 again, same host name.
        assert!(other("h", me.pid).is_earlier_run_of(&me));
        // A process that is gone.
        #[allow(clippy::disallowed_methods)] // A bare process to outlive; not a runtime child.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        assert!(other("h", dead).is_earlier_run_of(&me));
        // A live process on this host (our parent) is another machine.
        let parent = std::os::unix::process::parent_id();
        assert!(!other("h", parent).is_earlier_run_of(&me));
        // Another host is another machine.
        assert!(!other("elsewhere", me.pid).is_earlier_run_of(&me));
    }

    #[test]
    fn the_refusal_names_the_holder_and_the_expiry() {
        let err = LeaseError::Held {
            machine_id: "gpu-mixed".into(),
            key: key("gpu-mixed"),
            holder: "host=a pid=1 started=2023-11-14T22:13:20.123Z".into(),
            expires_in_s: 27,
        };
        let text = err.to_string();
        assert!(text.starts_with("machine id \"gpu-mixed\" is already in use by another machine: machine:lease:gpu-mixed is held by host=a pid=1 started=2023-11-14T22:13:20.123Z, and its lease expires in 27 s"), "{text}");
        assert!(text.contains("MACHINE_ID_APPEND_HOSTNAME=true"), "{text}");
        assert_eq!(ttl_for(Duration::from_secs(10)), Duration::from_secs(30));
    }
}
