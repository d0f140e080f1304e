//! The runtime's one log front end: every line the runtime itself logs (supervisor, health
//! endpoint, broker, installer, start-up warnings) gets a level and an RFC 3339 UTC timestamp with
//! milliseconds, and goes out through the non-blocking [`crate::sink`].
//!
//! Two formats ([`LogFormat`]), chosen once by [`init`] from `up --log-format` or `MACHINE_LOG_FORMAT`:
//!
//! - `text` (default): `2026-12-06T04:55:33.123Z machine-runtime: <message>`; on a terminal the
//!   time is dimmed and warnings and errors are coloured, unless `NO_COLOR` is set (no-color.org).
//! - `json`, one object per line for log shippers (Loki, Fluent Bit, Vector):
//!   `{"time": "<RFC 3339>", "level": "info|warn|error", "source": "machine-runtime", "message": "..."}`.
//!
//! With `json`, the apps' own output lines are objects too ([`app_line`]): `source` is the app's name
//! and `stream` says `stdout` or `stderr`.
//!
//! The message text is what the call site wrote; only the prefix before it is this module's. A line
//! whose message starts with `warning:` or `error:` is logged at that level by [`runtime`].
//!
//! Two writers beside the log lines, so that nothing else in the crate writes to stderr for itself:
//! [`command_error`], a command's final `error:` line (a JSON log line with `json`), and
//! [`app_output`], the plain output of the programs that run as apps (their supervisor stamps it).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::env::LOG_FORMAT_VAR as FORMAT_VAR;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `<time> <source>: <message>`, for people.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// `MACHINE_LOG_FORMAT` read through `lookup`: unset or empty is `None`; the error names the
    /// allowed values.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<LogFormat>, String> {
        match lookup(FORMAT_VAR).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) if v == "text" => Ok(Some(LogFormat::Text)),
            Some(v) if v == "json" => Ok(Some(LogFormat::Json)),
            Some(v) => Err(format!(
                "{FORMAT_VAR} is \"{v}\", which is not a log format; use text or json"
            )),
        }
    }
}

/// Which of the app's pipes a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output (PM2's `out` log).
    Stdout,
    /// Standard error (PM2's `error` log).
    Stderr,
}

/// A line's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    /// The level a message announces by its first word (`warning:`, `error:`, any case), else info.
    pub fn of_message(message: &str) -> Level {
        let starts = |word: &str| {
            message
                .get(..word.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(word))
        };
        if starts("warning:") {
            Level::Warn
        } else if starts("error:") {
            Level::Error
        } else {
            Level::Info
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    format: LogFormat,
    colour: bool,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Chooses the format for the rest of the process; colours only for text on a terminal stderr with
/// `NO_COLOR` unset or empty. A second call changes nothing. Without a call, lines are plain text.
pub fn init(format: LogFormat) {
    use std::io::IsTerminal as _;
    let colour = format == LogFormat::Text
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = SETTINGS.set(Settings { format, colour });
}

fn settings() -> Settings {
    SETTINGS.get().copied().unwrap_or(Settings {
        format: LogFormat::Text,
        colour: false,
    })
}

/// Logs `message` from `source` at `level`, stamped now, on stderr (never blocks, never panics).
pub fn emit(level: Level, source: &str, message: &str) {
    let s = settings();
    crate::sink::err_line(&render(
        level,
        source,
        message,
        SystemTime::now(),
        s.format,
        s.colour,
    ));
}

/// Logs one of the runtime's own lines (`machine-runtime: <message>`), at the level its first word
/// announces ([`Level::of_message`]).
pub fn runtime(message: &str) {
    emit(Level::of_message(message), "machine-runtime", message);
}

/// Logs one line of a part of the runtime (`machine-runtime: <part>: <message>`, e.g. the broker's), at
/// the level the message's own first word announces.
pub fn part(part: &str, message: &str) {
    emit(
        Level::of_message(message),
        "machine-runtime",
        &format!("{part}: {message}"),
    );
}

/// A command's final error on stderr, through the non-blocking sink. In `text`, as command-line
/// tools write it: `<program>: error: <message>`, with no time (it is the command's answer, and
/// scripts match it). In `json`, a log line like every other (`level` `error`, `source` the program,
/// `message` `error: <message>`, newlines kept inside the string), so that a log shipper reading a
/// machine that failed to start gets the reason as one object, not a line it cannot parse.
pub fn command_error(program: &str, message: &str) {
    if is_json() {
        emit(Level::Error, program, &format!("error: {message}"));
    } else {
        crate::sink::err_line(&format!("{program}: error: {message}"));
    }
}

/// One line a program the supervisor runs as an app (the simulation service, the ComfyUI stand-in)
/// writes on its own stdout or stderr: the text as is, with no time or level (the supervisor stamps
/// its apps' lines, see [`app_line`]), through the non-blocking sink, so a closed pipe never panics.
pub fn app_output(stream: LogStream, line: &str) {
    match stream {
        LogStream::Stdout => crate::sink::out(format!("{line}\n").as_bytes()),
        LogStream::Stderr => crate::sink::err_line(line),
    }
}

/// Whether lines are written as JSON (then the apps' output is too, through [`app_line`]).
pub fn is_json() -> bool {
    settings().format == LogFormat::Json
}

/// Appends one line of app `app`'s output as a JSON log line (with its newline) to `out`: `{time,
/// level: "info", source: <app>, stream, message}`; invalid UTF-8 is replaced.
pub fn app_line(out: &mut Vec<u8>, app: &str, stream: LogStream, text: &[u8]) {
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let line = serde_json::json!({
        "time": rfc3339(SystemTime::now()),
        "level": Level::Info.as_str(),
        "source": app,
        "stream": stream,
        "message": String::from_utf8_lossy(text),
    });
    out.extend_from_slice(line.to_string().as_bytes());
    out.push(b'\n');
}

/// `at` as RFC 3339 in UTC with milliseconds: `2026-12-06T04:55:33.123Z`.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Epoch milliseconds as [`rfc3339`].
pub fn rfc3339_ms(epoch_ms: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(epoch_ms))
}

/// One rendered line, without the newline.
fn render(
    level: Level,
    source: &str,
    message: &str,
    at: SystemTime,
    format: LogFormat,
    colour: bool,
) -> String {
    let time = rfc3339(at);
    match format {
        LogFormat::Json => serde_json::json!({
            "time": time,
            "level": level.as_str(),
            "source": source,
            "message": message,
        })
        .to_string(),
        LogFormat::Text if colour => {
            let (on, off) = match level {
                Level::Info => ("", ""),
                Level::Warn => ("\x1b[33m", "\x1b[0m"),
                Level::Error => ("\x1b[31m", "\x1b[0m"),
            };
            format!("\x1b[2m{time}\x1b[0m {on}{source}: {message}{off}")
        }
        LogFormat::Text => format!("{time} {source}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_796_532_933_123)
    }

    #[test]
    fn renders_text_json_and_colours() {
        assert_eq!(
            render(
                Level::Info,
                "machine-runtime",
                "svc is ready",
                at(),
                LogFormat::Text,
                false
            ),
            "2026-12-06T04:55:33.123Z machine-runtime: svc is ready"
        );
        let json: serde_json::Value = serde_json::from_str(&render(
            Level::Warn,
            "machine-runtime",
            "warning: \"quoted\"",
            at(),
            LogFormat::Json,
            false,
        ))
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"time": "2026-12-06T04:55:33.123Z", "level": "warn",
                               "source": "machine-runtime", "message": "warning: \"quoted\""})
        );
        assert_eq!(
            render(
                Level::Error,
                "machine-runtime",
                "error: x",
                at(),
                LogFormat::Text,
                true
            ),
            "\x1b[2m2026-12-06T04:55:33.123Z\x1b[0m \x1b[31mmachine-runtime: error: x\x1b[0m"
        );
    }

    #[test]
    fn reads_the_level_and_the_format_setting() {
        assert_eq!(Level::of_message("warning: x"), Level::Warn);
        assert_eq!(Level::of_message("error: x"), Level::Error);
        assert_eq!(Level::of_message("WARNING: the redis"), Level::Warn);
        assert_eq!(Level::of_message("é"), Level::Info);
        assert_eq!(Level::of_message("broker: warning: x"), Level::Info);
        let env = |v: &'static str| move |_: &str| Some(v.to_owned());
        assert_eq!(
            LogFormat::from_lookup(env("JSON")),
            Ok(Some(LogFormat::Json))
        );
        assert_eq!(LogFormat::from_lookup(env(" ")), Ok(None));
        assert_eq!(LogFormat::from_lookup(|_| None), Ok(None));
        assert_eq!(
            LogFormat::from_lookup(env("yaml")),
            Err(
                "MACHINE_LOG_FORMAT is \"yaml\", which is not a log format; use text or json"
                    .into()
            )
        );
        assert_eq!(rfc3339_ms(1_796_532_933_123), "2026-12-06T04:55:33.123Z");
    }
}
