//! Wall-clock helpers for the broker protocol: epoch milliseconds and ISO 8601 UTC timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the unit of every `timestamp` in the protocol.
pub fn epoch_ms(at: SystemTime) -> u64 {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// The current time in epoch milliseconds.
pub fn now_ms() -> u64 {
    epoch_ms(SystemTime::now())
}

/// `2024-05-06T07:08:09.123Z`, the format JavaScript's `Date.toISOString()` writes, which workers use
/// for `last_heartbeat` and the heartbeat key's value.
pub fn iso8601(at: SystemTime) -> String {
    let ms = epoch_ms(at);
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The current time as ISO 8601 UTC.
pub fn now_iso8601() -> String {
    iso8601(SystemTime::now())
}

/// Reads a time a worker wrote as epoch milliseconds: a number (`1717000000000`) or an ISO 8601 UTC
/// timestamp as JavaScript's `Date.toISOString()` writes it (`2024-05-06T07:08:09.123Z`, the fraction
/// optional, `+00:00` accepted for `Z`). `None` for anything else.
pub fn parse_epoch_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<u64>() {
        return Some(ms);
    }
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock = clock.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let millis = if fraction.is_empty() {
        0
    } else {
        if !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits: String = fraction.chars().chain("000".chars()).take(3).collect();
        digits.parse::<u64>().ok()?
    };
    let days = u64::try_from(days_from_civil(year, month as u32, day as u32)).ok()?;
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date; the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Converts days since 1970-01-01 into a proleptic Gregorian (year, month, day).
///
/// Uses 400-year eras so the arithmetic stays in integers (the well-known "civil from days" method).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

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
