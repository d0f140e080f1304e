//! Signals: listening for SIGTERM/SIGINT (to forward them), and signalling whole process groups.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Listens for the stop signals the runtime forwards to its children.
pub(crate) struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Installs the handlers. Do this before the first child starts, so that a signal arriving
    /// during startup is not lost (as PID 1, a signal without a handler is ignored by the kernel).
    /// Also unblocks the two signals on the calling thread (see [`hold_stop_signals`]): one that
    /// arrived before is delivered now, to these handlers.
    pub fn install() -> std::io::Result<StopSignals> {
        let signals = StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        };
        change_stop_mask(libc::SIG_UNBLOCK);
        Ok(signals)
    }

    /// Waits for the next SIGTERM or SIGINT and returns its number.
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.int.recv() => libc::SIGINT,
        }
    }
}

/// Blocks SIGTERM and SIGINT on the calling thread (and every thread it starts later), so a stop
/// signal that arrives while the runtime is still starting stays pending instead of killing it
/// (exit 143). Call it first thing in `main`, before any thread or child exists;
/// [`StopSignals::install`] releases them once the handlers are in place. Children start with an
/// empty signal mask whatever ours is (std resets it in the child).
pub fn hold_stop_signals() {
    change_stop_mask(libc::SIG_BLOCK);
}

/// Undoes [`hold_stop_signals`] on the calling thread: for commands that keep the default
/// disposition or install their own handlers.
pub fn release_stop_signals() {
    change_stop_mask(libc::SIG_UNBLOCK);
}

fn change_stop_mask(how: libc::c_int) {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; pthread_sigmask only
    // changes the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Sends `signal` to every process in the group led by `pgid`; true if the group existed.
pub(crate) fn kill_group(pgid: u32, signal: i32) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else {
        return false;
    };
    if pgid <= 1 {
        // Never signal group 0 (our own) or -1 (everything we may signal).
        return false;
    }
    // SAFETY: kill has no memory-safety preconditions; a negative pid addresses a process group.
    unsafe { libc::kill(-pgid, signal) == 0 }
}

/// True while any process (a zombie included) is still in the group led by `pgid`.
pub(crate) fn group_alive(pgid: u32) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else {
        return false;
    };
    if pgid <= 1 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(-pgid, 0) };
    // EPERM means a member exists that we may not signal: still alive.
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// PM2's stop signal when neither the app (`kill_signal`) nor `PM2_KILL_SIGNAL` names one.
pub(crate) const PM2_KILL_SIGNAL_DEFAULT: i32 = libc::SIGINT;

/// The number of a stop-signal name as Node writes it (`"SIGINT"`): one of
/// [`machine_model::ecosystem::SIGNAL_NAMES`]; `None` for anything else.
pub(crate) fn signal_number(name: &str) -> Option<i32> {
    Some(match name {
        "SIGINT" => libc::SIGINT,
        "SIGTERM" => libc::SIGTERM,
        "SIGHUP" => libc::SIGHUP,
        "SIGQUIT" => libc::SIGQUIT,
        "SIGUSR1" => libc::SIGUSR1,
        "SIGUSR2" => libc::SIGUSR2,
        "SIGABRT" => libc::SIGABRT,
        "SIGALRM" => libc::SIGALRM,
        "SIGKILL" => libc::SIGKILL,
        _ => return None,
    })
}

/// PM2's `KILL_SIGNAL` for this runtime: `PM2_KILL_SIGNAL` from `env` when set, else SIGINT. The
/// error names the variable, the value and the allowed names.
pub(crate) fn pm2_kill_signal(
    env: &std::collections::BTreeMap<std::ffi::OsString, std::ffi::OsString>,
) -> Result<i32, String> {
    match env.get(std::ffi::OsStr::new("PM2_KILL_SIGNAL")) {
        None => Ok(PM2_KILL_SIGNAL_DEFAULT),
        Some(value) if value.is_empty() => Ok(PM2_KILL_SIGNAL_DEFAULT),
        Some(value) => value.to_str().and_then(signal_number).ok_or_else(|| {
            format!(
                "environment variable PM2_KILL_SIGNAL is \"{}\", which is not a signal name; use one of {}",
                value.to_string_lossy(),
                machine_model::ecosystem::SIGNAL_NAMES.join(", ")
            )
        }),
    }
}

/// The conventional name of a signal number (`SIGTERM`), or `signal N`.
pub(crate) fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_signals() {
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(64), "signal 64");
    }

    #[test]
    fn every_allowed_signal_name_has_a_number() {
        for name in machine_model::ecosystem::SIGNAL_NAMES {
            let n = signal_number(name).unwrap();
            assert_eq!(signal_name(n), *name);
        }
        assert_eq!(signal_number("INT"), None);
        let env =
            |v: &str| std::collections::BTreeMap::from([("PM2_KILL_SIGNAL".into(), v.into())]);
        assert_eq!(pm2_kill_signal(&Default::default()), Ok(libc::SIGINT));
        assert_eq!(pm2_kill_signal(&env("SIGTERM")), Ok(libc::SIGTERM));
        assert_eq!(
            pm2_kill_signal(&env("TERM")).unwrap_err(),
            "environment variable PM2_KILL_SIGNAL is \"TERM\", which is not a signal name; use one of SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGABRT, SIGALRM, SIGKILL"
        );
    }

    #[test]
    fn refuses_to_signal_special_groups() {
        assert!(!kill_group(0, 0));
        assert!(!kill_group(1, 0));
        assert!(!group_alive(0));
    }
}
