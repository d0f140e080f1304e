//! The runtime's clock and how it writes durations for people: epoch milliseconds (the unit of every
//! `*_ms` wall-clock field and of the broker protocol's `timestamp`) and `250ms` / `1.5s` / `2m 5s`.
//! A leaf: it names no other module of the crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch of `at` (0 before the epoch, `u64::MAX` past its range).
pub fn epoch_ms(at: SystemTime) -> u64 {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// The current time in epoch milliseconds.
pub fn now_ms() -> u64 {
    epoch_ms(SystemTime::now())
}

/// Formats a duration for people: `250ms`, `1.5s`, `2m 5s`.
pub(crate) fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 && ms > 0 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        let secs = d.as_secs();
        format!("{}m {}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations() {
        assert_eq!(human_duration(Duration::from_millis(400)), "400ms");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m 5s");
        assert_eq!(human_duration(Duration::ZERO), "0.0s");
    }
}
