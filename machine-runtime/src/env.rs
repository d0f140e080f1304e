//! Reading the runtime's environment: the one lookup ([`lookup`]), typed readers for booleans, ports,
//! whole numbers and whole seconds, and the names of the variables only the runtime reads. A leaf: it
//! names no other module of the crate.
//!
//! The `*_var` readers take a lookup (`impl Fn(&str) -> Option<String>`), so tests pass a map and the
//! runtime passes [`lookup`]; the `parse_*` functions read a value the caller already holds. A value is
//! trimmed first; set but empty reads as unset. A bad value is `Err`, with a message naming the variable,
//! its value and what is allowed from the `*_var` readers; the caller turns it into its own error or
//! warning.
//!
//! Booleans, everywhere: `true`, `1`, `yes`, `on` and `false`, `0`, `no`, `off`, any case ([`parse_bool`]).

use std::time::Duration;

use machine_model::catalog::BROKER_TLS_VARS;

/// The bearer token that `POST /restart/...` and `POST /stop` require; never passed to the apps.
pub const CONTROL_TOKEN_VAR: &str = "MACHINE_CONTROL_TOKEN";
/// The health port when `--health-port` / `--port` is not given.
pub const HEALTH_PORT_VAR: &str = "MACHINE_HEALTH_PORT";
/// A PEM file of the CA that signs the Redis server's certificate (`rediss://`).
pub const CA_FILE_VAR: &str = BROKER_TLS_VARS[0];
/// A PEM client certificate for Redis (mutual TLS), with [`KEY_FILE_VAR`].
pub const CERT_FILE_VAR: &str = BROKER_TLS_VARS[1];
/// The PEM private key of [`CERT_FILE_VAR`].
pub const KEY_FILE_VAR: &str = BROKER_TLS_VARS[2];
/// A boolean: skip checking the Redis server's certificate.
pub const INSECURE_VAR: &str = BROKER_TLS_VARS[3];

/// Whether an unreachable broker makes `/health` answer 503 (a boolean).
pub const REQUIRES_BROKER_VAR: &str = "MACHINE_HEALTH_REQUIRES_BROKER";
/// The health endpoint's URL as other hosts reach it, advertised in status messages.
pub const HEALTH_URL_VAR: &str = "MACHINE_HEALTH_URL";
/// The browser origins allowed to call the POST routes, comma-separated (`crate::origins`).
pub const ALLOWED_ORIGINS_VAR: &str = "MACHINE_CONTROL_ALLOWED_ORIGINS";
/// Selects the fake GPU backend and its GPU count.
pub const FAKE_GPUS_VAR: &str = "MACHINE_FAKE_GPUS";
/// The NVML library to load (a path, or a name the dynamic loader finds) instead of nvml-wrapper's
/// default `libnvidia-ml.so.1`: for drivers installed in an odd place, and for tests.
pub const NVML_LIBRARY_VAR: &str = "MACHINE_NVML_LIBRARY";
/// Append `-<hostname>` to `MACHINE_ID` (for scaled Compose services; a boolean).
pub const APPEND_HOSTNAME_VAR: &str = "MACHINE_ID_APPEND_HOSTNAME";
/// The log format (`text` or `json`) when `--log-format` is not given.
pub const LOG_FORMAT_VAR: &str = "MACHINE_LOG_FORMAT";
/// The machine's endpoint for the control commands (`http://host:port`).
pub const URL_VAR: &str = "MACHINE_URL";
/// Seconds between the broker's `periodic` status messages.
pub const STATUS_INTERVAL_VAR: &str = "MACHINE_STATUS_UPDATE_INTERVAL_SECONDS";

/// The process environment: `name`'s value, `None` when unset or not UTF-8.
pub fn lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Reads a boolean: `true|1|yes|on` → `Some(true)`, `false|0|no|off` → `Some(false)`, any case,
/// surrounding white space ignored; empty → `Ok(None)` (unset). `Err(())` for anything else.
#[allow(clippy::result_unit_err)]
pub fn parse_bool(text: &str) -> Result<Option<bool>, ()> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "true" | "1" | "yes" | "on" => Ok(Some(true)),
        "false" | "0" | "no" | "off" => Ok(Some(false)),
        _ => Err(()),
    }
}

/// `name` read as a TCP port, 0 to 65535 (0: the system picks a free one); `Ok(None)` when unset or
/// empty. Errors: `NAME is "value", which is not a port number (0 to 65535)`.
pub fn port_var(
    lookup: impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<u16>, String> {
    number_var(&lookup, name).map_err(|_| port_error(name, &lookup(name).unwrap_or_default()))
}

fn port_error(name: &str, value: &str) -> String {
    format!("{name} is \"{value}\", which is not a port number (0 to 65535)")
}

/// `name` read as a whole number of type `T` (`u32`, `u64`, ...); `Ok(None)` when unset or empty.
/// Errors: `NAME is "value", which is not a whole number`.
pub fn number_var<T: std::str::FromStr>(
    lookup: impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<T>, String> {
    match lookup(name) {
        None => Ok(None),
        Some(value) if value.trim().is_empty() => Ok(None),
        Some(value) => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name} is \"{value}\", which is not a whole number")),
    }
}

/// Reads whole seconds within `min..=max`, surrounding white space ignored: empty → `Ok(None)`;
/// `Err(())` for anything else that is not such a number.
#[allow(clippy::result_unit_err)]
pub fn parse_seconds(text: &str, min: u64, max: u64) -> Result<Option<Duration>, ()> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<u64>() {
        Ok(secs) if (min..=max).contains(&secs) => Ok(Some(Duration::from_secs(secs))),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &'static str) -> impl Fn(&str) -> Option<String> {
        move |_| Some(value.to_owned())
    }

    #[test]
    fn one_boolean_vocabulary() {
        for yes in ["true", "1", "yes", "on", " TRUE ", "On"] {
            assert_eq!(parse_bool(yes), Ok(Some(true)), "{yes}");
        }
        for no in ["false", "0", "no", "off", "OFF", " No"] {
            assert_eq!(parse_bool(no), Ok(Some(false)), "{no}");
        }
        assert_eq!(parse_bool("  "), Ok(None));
        for bad in ["2", "y", "enabled", "truee"] {
            assert_eq!(parse_bool(bad), Err(()), "{bad}");
        }
    }

    #[test]
    fn ports_and_seconds() {
        assert_eq!(port_var(with(" 9091 "), "P"), Ok(Some(9091)));
        assert_eq!(port_var(with(""), "P"), Ok(None));
        assert_eq!(port_var(|_| None, "P"), Ok(None));
        assert_eq!(
            port_var(with("70000"), "P"),
            Err("P is \"70000\", which is not a port number (0 to 65535)".into())
        );
        assert_eq!(
            parse_seconds(" 7 ", 1, u64::MAX),
            Ok(Some(Duration::from_secs(7)))
        );
        assert_eq!(parse_seconds("-1", 0, 9), Err(()));
        assert_eq!(number_var::<u32>(with(" 12 "), "N"), Ok(Some(12)));
        assert_eq!(
            number_var::<u32>(with("12.5"), "N"),
            Err("N is \"12.5\", which is not a whole number".into())
        );
    }
}
