//! Wall-clock helpers for the broker protocol: epoch milliseconds and ISO 8601 UTC timestamps.

use std::time::SystemTime;

pub use crate::time::{epoch_ms, now_ms};

/// `2024-05-06T07:08:09.123Z`, the format JavaScript's `Date.toISOString()` writes, which workers use
/// for `last_heartbeat` and the heartbeat key's value (RFC 3339, UTC, milliseconds; `humantime`).
pub fn iso8601(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// The current time as ISO 8601 UTC.
pub fn now_iso8601() -> String {
    iso8601(SystemTime::now())
}

/// Reads a time a worker wrote as epoch milliseconds: a number (`1717000000000`) or an ISO 8601 UTC
/// timestamp as JavaScript's `Date.toISOString()` writes it (`2024-05-06T07:08:09.123Z`, the fraction
/// optional, `+00:00` accepted for `Z`). `None` for anything else (other offsets included).
pub(crate) fn parse_epoch_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Some(ms);
    }
    let utc = match text.strip_suffix("+00:00") {
        Some(stem) => format!("{stem}Z"),
        None => text.to_owned(),
    };
    humantime::parse_rfc3339(&utc).ok().map(epoch_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(iso8601(at(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(at(951_782_400_000)), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(at(1_700_000_000_123)), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso8601(at(4_107_542_399_999)), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn parses_what_it_formats_and_plain_numbers() {
        for ms in [0, 951_782_400_000, 1_700_000_000_123, 4_107_542_399_999] {
            assert_eq!(parse_epoch_ms(&iso8601(at(ms))), Some(ms));
        }
        assert_eq!(parse_epoch_ms("1700000000123"), Some(1_700_000_000_123));
        assert_eq!(
            parse_epoch_ms("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_epoch_ms("2023-11-14T22:13:20.1+00:00"),
            Some(1_700_000_000_100)
        );
        for bad in [
            "",
            "soon",
            "2023-11-14 22:13:20Z",
            "2023-13-14T22:13:20Z",
            "2023-11-14T22:13:20.x1Z",
        ] {
            assert_eq!(parse_epoch_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn epoch_ms_of_the_epoch_is_zero() {
        assert_eq!(epoch_ms(UNIX_EPOCH), 0);
        assert_eq!(epoch_ms(at(42)), 42);
    }
}
