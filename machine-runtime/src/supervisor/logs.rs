//! The recent output of every app, kept in memory for `/pm2/logs` and `/comfyui/logs`: a bounded
//! ring of lines per app, secrets masked before a line is stored, and a broadcast for followers.
//!
//! Bounds: at most [`MAX_LINES`] lines and [`MAX_BYTES`] bytes of text per app (the oldest lines go
//! first); a line is at most the output forwarder's 16 KiB. So a chatty app costs at most
//! `MAX_BYTES` plus the per-line overhead, whatever it prints.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::time::now_ms;
use machine_model::components::Masker;

/// Most lines kept per app.
pub(crate) const MAX_LINES: usize = 2000;
/// Most bytes of line text kept per app.
pub(crate) const MAX_BYTES: usize = 512 * 1024;
/// Lines a follower may fall behind before it misses some (it is told how many).
const FOLLOW_BACKLOG: usize = 512;

/// Which of the app's pipes a line came from (defined with the log front end).
pub use crate::log::LogStream;

/// One line of an app's output, secrets already masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Epoch milliseconds when the runtime read it.
    pub at_ms: u64,
    /// Which pipe it came from.
    pub stream: LogStream,
    /// The text, without the line end; secret values replaced by `***`.
    pub text: String,
}

struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
}

/// The recent output of one app.
pub struct AppLog {
    ring: Mutex<Ring>,
    /// Made by the first follower: a channel's [`FOLLOW_BACKLOG`] slots cost about 50 KB, which
    /// every app would pay whether anyone follows its log or not.
    follow: std::sync::OnceLock<broadcast::Sender<LogLine>>,
    masker: Masker,
}

impl std::fmt::Debug for AppLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppLog")
            .field("lines", &self.lock().lines.len())
            .finish()
    }
}

impl AppLog {
    /// An empty log that masks what [`Masker::for_env`] masks for `env` (the values of the variables
    /// the plan marks secret or named like secrets, URL passwords) and the credentials of any URL.
    pub fn new(env: &BTreeMap<OsString, OsString>) -> AppLog {
        AppLog::with_masker(Masker::for_env(utf8(env.iter())))
    }

    /// As [`AppLog::new`] for a child's environment `env`, most of it inherited from `runtime_env`
    /// (the runtime's environment, whose masker `runtime_masker` is made once for every app): masks
    /// what `runtime_masker` masks and what [`Masker::for_env`] finds in the variables `env` sets
    /// otherwise than the runtime. A runtime secret the child lacks (a worker's environment leaves
    /// out other connectors' keys) is masked in its output all the same.
    pub(crate) fn for_child(
        env: &BTreeMap<OsString, OsString>,
        runtime_env: &BTreeMap<OsString, OsString>,
        runtime_masker: &Masker,
    ) -> AppLog {
        // Both maps are sorted by name: one walk through each.
        let mut runtime = runtime_env.iter().peekable();
        let own = env.iter().filter(|(name, value)| {
            while runtime.next_if(|(r, _)| r < name).is_some() {}
            runtime.peek() != Some(&(*name, *value))
        });
        let values = machine_model::components::mask::secret_values(utf8(own));
        AppLog::with_masker(runtime_masker.and(values))
    }

    fn with_masker(masker: Masker) -> AppLog {
        AppLog {
            ring: Mutex::new(Ring {
                lines: VecDeque::new(),
                bytes: 0,
            }),
            follow: std::sync::OnceLock::new(),
            masker,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A poisoned lock only means a panic elsewhere; the lines are still good to show.
        self.ring
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Stores one line (bytes as read, invalid UTF-8 replaced), masked, dropping the oldest lines
    /// beyond the bounds, and hands it to followers. Returns the masked text when masking changed
    /// the line, so the forwarded copy can be masked too.
    pub fn push(&self, stream: LogStream, bytes: &[u8]) -> Option<String> {
        let read = String::from_utf8_lossy(bytes);
        let text = self.masker.mask(&read).into_owned();
        let masked = (text != read).then(|| text.clone());
        let line = LogLine {
            at_ms: now_ms(),
            stream,
            text,
        };
        let mut ring = self.lock();
        ring.bytes += line.text.len();
        ring.lines.push_back(line.clone());
        while ring.lines.len() > MAX_LINES || (ring.bytes > MAX_BYTES && ring.lines.len() > 1) {
            if let Some(old) = ring.lines.pop_front() {
                ring.bytes -= old.text.len();
            }
        }
        // Sent under the lock so a new follower sees each line once: in its tail or from here.
        // No follower is fine.
        if let Some(follow) = self.follow.get() {
            let _ = follow.send(line);
        }
        masked
    }

    /// The last `n` lines that `keep` accepts, oldest first.
    pub fn tail(&self, n: usize, keep: impl Fn(&LogLine) -> bool) -> Vec<LogLine> {
        tail_of(&self.lock(), n, keep)
    }

    /// The last `n` lines (as [`AppLog::tail`]) and a receiver of every line stored after them,
    /// taken together so no line falls between the two.
    pub(crate) fn tail_and_follow(
        &self,
        n: usize,
        keep: impl Fn(&LogLine) -> bool,
    ) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let ring = self.lock();
        // Pushes take the lock before sending, so nothing is sent between the tail and the subscription.
        let follow = self
            .follow
            .get_or_init(|| broadcast::channel(FOLLOW_BACKLOG).0);
        (tail_of(&ring, n, keep), follow.subscribe())
    }
}

fn tail_of(ring: &Ring, n: usize, keep: impl Fn(&LogLine) -> bool) -> Vec<LogLine> {
    let mut out: Vec<LogLine> = ring
        .lines
        .iter()
        .rev()
        .filter(|l| keep(l))
        .take(n)
        .cloned()
        .collect();
    out.reverse();
    out
}

/// Every app's log, by app name.
#[derive(Debug, Clone, Default)]
pub struct Logs {
    apps: Arc<HashMap<String, Arc<AppLog>>>,
}

impl Logs {
    /// One log per app.
    pub fn new(apps: impl IntoIterator<Item = (String, Arc<AppLog>)>) -> Logs {
        Logs {
            apps: Arc::new(apps.into_iter().collect()),
        }
    }

    /// The log of app `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<AppLog>> {
        self.apps.get(name)
    }
}

/// The UTF-8 variables of an environment (a secret that is not UTF-8 cannot appear in a line).
pub(super) fn utf8<'a>(
    env: impl Iterator<Item = (&'a OsString, &'a OsString)>,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    env.filter_map(|(k, v)| Some((k.to_str()?, v.to_str()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(env: &[(&str, &str)]) -> AppLog {
        AppLog::new(
            &env.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
        )
    }

    #[test]
    fn keeps_the_newest_lines_within_bounds() {
        let log = log_with(&[]);
        for i in 0..MAX_LINES + 10 {
            log.push(LogStream::Stdout, format!("line {i}").as_bytes());
        }
        let all = log.tail(usize::MAX, |_| true);
        assert_eq!(all.len(), MAX_LINES);
        assert_eq!(all[0].text, "line 10");
        assert_eq!(all.last().unwrap().text, format!("line {}", MAX_LINES + 9));
        let big = vec![b'x'; 16 * 1024];
        for _ in 0..100 {
            log.push(LogStream::Stderr, &big);
        }
        let ring = log.lock();
        assert!(ring.bytes <= MAX_BYTES, "{} bytes kept", ring.bytes);
        assert_eq!(
            ring.bytes,
            ring.lines.iter().map(|l| l.text.len()).sum::<usize>()
        );
    }

    #[test]
    fn masks_secret_values_and_url_credentials_before_storing() {
        let log = log_with(&[
            ("OPENAI_API_KEY", "sk-live-abcdef123"),
            ("MACHINE_CONTROL_TOKEN", "control-token-42"),
            ("PATH", "/usr/bin"),
        ]);
        log.push(
            LogStream::Stderr,
            b"key sk-live-abcdef123 token control-token-42 redis://:pw123456@r:6379 /usr/bin",
        );
        let lines = log.tail(10, |_| true);
        assert_eq!(
            lines[0].text,
            "key *** token *** redis://***@r:6379 /usr/bin"
        );
    }

    /// A child's log built from the runtime's masker masks what a log built from the child's whole
    /// environment masks: its own secrets, those it sets otherwise than the runtime, and URL
    /// passwords; and the runtime's secrets it lacks.
    #[test]
    fn a_childs_log_masks_its_own_secrets_and_the_runtimes() {
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<OsString, OsString> {
            pairs
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect()
        };
        let runtime = env(&[
            ("A_TOKEN", "runtime-token-1"),
            ("OPENAI_API_KEY", "sk-runtime-only"),
            ("PATH", "/usr/bin"),
            ("SHARED_PASSWORD", "runtime-pw-2"),
            ("ZZ_SECRET", "last-secret-3"),
        ]);
        let child = env(&[
            ("A_TOKEN", "runtime-token-1"),
            ("B_URL", "redis://u:child-url-pw@h:6379"),
            ("OWN_SECRET", "child-secret-4"),
            ("PATH", "/usr/bin"),
            ("SHARED_PASSWORD", "child-pw-5"),
            ("ZZ_SECRET", "last-secret-3"),
        ]);
        let runtime_masker = Masker::for_env(utf8(runtime.iter()));
        let shared = AppLog::for_child(&child, &runtime, &runtime_masker);
        let whole = AppLog::new(&child);
        let line = "runtime-token-1 sk-runtime-only child-url-pw child-secret-4 child-pw-5 last-secret-3 runtime-pw-2 /usr/bin";
        shared.push(LogStream::Stdout, line.as_bytes());
        whole.push(LogStream::Stdout, line.as_bytes());
        assert_eq!(
            shared.tail(1, |_| true)[0].text,
            "*** *** *** *** *** *** *** /usr/bin"
        );
        // The whole environment's log leaves the runtime's secrets the child lacks.
        assert_eq!(
            whole.tail(1, |_| true)[0].text,
            "*** sk-runtime-only *** *** *** *** runtime-pw-2 /usr/bin"
        );
    }

    #[test]
    fn tail_filters_by_stream_and_followers_see_new_lines() {
        let log = log_with(&[]);
        log.push(LogStream::Stdout, b"out 1");
        log.push(LogStream::Stderr, b"err 1");
        log.push(LogStream::Stdout, b"out 2");
        let errors = log.tail(5, |l| l.stream == LogStream::Stderr);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].text, "err 1");
        let (tail, mut follow) = log.tail_and_follow(1, |_| true);
        assert_eq!(tail[0].text, "out 2");
        log.push(LogStream::Stdout, b"out 3");
        assert_eq!(follow.try_recv().unwrap().text, "out 3");
    }
}
