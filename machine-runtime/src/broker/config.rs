//! Broker settings from the environment: `HUB_REDIS_URL` (kept secret), its TLS files
//! (`HUB_REDIS_TLS_*`, see [`super::tls`]), the status interval and the preflight mode.

use std::fmt;
use std::time::Duration;

use machine_model::components::Masker;
use machine_model::components::mask::{mask_url, url_password, userinfo_is_ambiguous};
use redis::IntoConnectionInfo;

use super::tls::{TlsConfigError, TlsSettings};

/// Default `MACHINE_STATUS_UPDATE_INTERVAL_SECONDS`.
pub const DEFAULT_STATUS_INTERVAL_SECONDS: u64 = 10;
/// The API marks a machine silent for 30 s as disconnected; 25 s leaves room for one slow publish.
pub const MAX_STATUS_INTERVAL_SECONDS: u64 = 25;

/// A validated `redis://` or `rediss://` URL whose password never leaves this type.
///
/// `Debug` and `Display` show the redacted form (`redis://user:***@host:6379/0`).
#[derive(Clone)]
pub struct RedisUrl {
    info: redis::ConnectionInfo,
    redacted: String,
    /// Masks the password (as written and as decoded) in text from lower layers.
    masker: Masker,
    tls: bool,
    /// `#insecure` at the end of the URL (the redis crate's spelling of the insecure switch).
    insecure_fragment: bool,
    /// CA, client certificate and insecure switch; empty until [`RedisUrl::with_tls`].
    tls_settings: TlsSettings,
}

impl RedisUrl {
    /// Parses a URL given in the environment variable `var` (named in every error).
    pub fn parse(var: &str, raw: &str) -> Result<Self, ConfigError> {
        let raw = raw.trim();
        let redacted = mask_url(raw);
        if raw.is_empty() {
            return Err(ConfigError::MissingUrl {
                var: var.to_owned(),
            });
        }
        let bad = |reason: String| ConfigError::BadUrl {
            var: var.to_owned(),
            redacted: redacted.clone(),
            reason,
        };
        let scheme = match raw.find("://") {
            Some(end) => raw[..end].to_ascii_lowercase(),
            None => return Err(bad("it has no scheme".to_owned())),
        };
        let tls = match scheme.as_str() {
            "redis" => false,
            "rediss" => true,
            other => return Err(bad(format!("scheme \"{other}\" is not accepted"))),
        };
        // A `#` with no `@` after it ends the URL in a fragment (a `#` in a password has the `@` after
        // it); `#insecure` is the only fragment, the redis crate's spelling of the insecure switch.
        let (raw, insecure_fragment) = match raw.find('#') {
            Some(hash) if !raw[hash..].contains('@') => {
                let fragment = &raw[hash + 1..];
                if fragment != "insecure" {
                    return Err(bad(format!(
                        "the fragment \"#{fragment}\" is not accepted; the only one is #insecure (certificate checks off, same as HUB_REDIS_TLS_INSECURE=true)"
                    )));
                }
                if !tls {
                    return Err(bad(
                        "#insecure only applies to rediss:// (TLS); remove it".to_owned()
                    ));
                }
                (&raw[..hash], true)
            }
            _ => (raw, false),
        };
        // Masked without the fragment, which would make the user-info look ambiguous.
        let redacted = if insecure_fragment {
            format!("{}#insecure", mask_url(raw))
        } else {
            redacted.clone()
        };
        if userinfo_is_ambiguous(raw) {
            return Err(bad(
                "a `#`, `/`, `?` or `@` in the password ends it early (the host would be read from the password); percent-encode the password (`#` → `%23`, `/` → `%2F`, `?` → `%3F`, `@` → `%40`)".to_owned(),
            ));
        }
        let mut secrets: Vec<String> = url_password(raw).map(str::to_owned).into_iter().collect();
        let info = raw.into_connection_info().map_err(|err| {
            let detail = err.detail().map(|d| format!(": {d}")).unwrap_or_default();
            bad(masker_for(&secrets)
                .mask(&format!("{}{detail}", err.category()))
                .into_owned())
        })?;
        if let Some(password) = info.redis_settings().password() {
            secrets.push(password.to_owned());
        }
        let masker = masker_for(&secrets);
        if tls {
            install_tls_provider();
        }
        Ok(Self {
            info,
            redacted,
            masker,
            tls,
            insecure_fragment,
            tls_settings: TlsSettings::default(),
        })
    }

    /// [`RedisUrl::parse`] of `raw` (the value of `var`), with the broker's TLS variables
    /// (`HUB_REDIS_TLS_*`) read through `lookup`; the loud warning when checks are off. Every problem
    /// of the URL or the TLS files at once.
    pub fn parse_with_tls(
        var: &str,
        raw: &str,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, Option<String>), Vec<ConfigError>> {
        let url = Self::parse(var, raw).map_err(|e| vec![e])?;
        let settings = TlsSettings::from_lookup(lookup, url.is_tls(), url.has_insecure_fragment())
            .map_err(|errors| errors.into_iter().map(ConfigError::Tls).collect::<Vec<_>>())?;
        let warning = settings.insecure_warning();
        Ok((url.with_tls(settings), warning))
    }

    /// The URL with its TLS settings (from [`TlsSettings::from_lookup`]).
    pub fn with_tls(mut self, settings: TlsSettings) -> Self {
        self.tls_settings = settings;
        self
    }

    /// Whether the URL ends in `#insecure`.
    pub fn has_insecure_fragment(&self) -> bool {
        self.insecure_fragment
    }

    /// The TLS settings in use.
    pub fn tls_settings(&self) -> &TlsSettings {
        &self.tls_settings
    }

    /// A redis client for this URL with its CA, client certificate and insecure switch.
    pub(crate) fn client(&self) -> redis::RedisResult<redis::Client> {
        let mut info = self.info.clone();
        let insecure = self.insecure_fragment || self.tls_settings.insecure;
        if let redis::ConnectionAddr::TcpTls { host, port, .. } = info.addr().clone() {
            info = info.set_addr(redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                tls_params: None,
            });
        }
        match &self.tls_settings.certificates {
            Some(certificates) if self.tls => {
                redis::Client::build_with_tls(info, certificates.clone())
            }
            _ => redis::Client::open(info),
        }
    }

    /// The URL with its password replaced by `***`, safe for logs and the health endpoint.
    pub(crate) fn redacted(&self) -> &str {
        &self.redacted
    }

    /// Whether the URL asks for TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Removes every occurrence of the password, and the credentials of any URL, from `text`
    /// (errors from lower layers may echo them).
    pub(crate) fn redact(&self, text: &str) -> String {
        self.masker.mask(text).into_owned()
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted)
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// rustls needs one process-wide crypto provider and the redis crate does not pick one; ring is the
/// one already compiled in. Installing twice is harmless (the second call is refused and ignored).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What the broker does when its preflight finds the job broker missing in Redis (`BROKER_PREFLIGHT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreflightMode {
    /// Log a loud warning and keep running (the default).
    Warn,
    /// Refuse to start.
    Require,
    /// Skip the check.
    Off,
}

impl PreflightMode {
    /// The value as written in `BROKER_PREFLIGHT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warn => "warn",
            Self::Require => "require",
            Self::Off => "off",
        }
    }
}

/// Everything the broker needs besides the machine view.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where the job broker's Redis is (`HUB_REDIS_URL`).
    pub url: RedisUrl,
    /// Time between `periodic` status messages (`MACHINE_STATUS_UPDATE_INTERVAL_SECONDS`).
    pub status_interval: Duration,
    /// What to do when the preflight fails (`BROKER_PREFLIGHT`).
    pub preflight: PreflightMode,
    /// Limit for establishing one connection, TLS and AUTH included.
    pub connect_timeout: Duration,
    /// Limit for one command's reply; a late reply counts as a lost connection.
    pub response_timeout: Duration,
    /// First delay between reconnection attempts; doubles per failure.
    pub backoff_min: Duration,
    /// Cap of the reconnection delay.
    pub backoff_max: Duration,
    /// Minimum gap between two `event_driven` messages; changes in between are merged, the last one wins.
    pub event_debounce: Duration,
    /// Bound on [`super::Broker::shutdown`], so a dead Redis cannot hold up the machine's stop.
    pub shutdown_timeout: Duration,
}

impl BrokerConfig {
    /// The connection settings of a [`super::Link`] to this broker (the status link and the id lease
    /// connect alike).
    pub(crate) fn link_settings(&self) -> super::LinkSettings {
        super::LinkSettings {
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
        }
    }

    /// Defaults for everything but the URL.
    pub fn new(url: RedisUrl) -> Self {
        Self {
            url,
            status_interval: Duration::from_secs(DEFAULT_STATUS_INTERVAL_SECONDS),
            preflight: PreflightMode::Warn,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(5),
            event_debounce: Duration::from_millis(100),
            shutdown_timeout: Duration::from_millis(u64::from(
                machine_model::catalog::BROKER_SHUTDOWN_TIMEOUT_MS,
            )),
        }
    }

    /// Reads `HUB_REDIS_URL`, the `HUB_REDIS_TLS_*` files, `MACHINE_STATUS_UPDATE_INTERVAL_SECONDS` and
    /// `BROKER_PREFLIGHT` from the process environment; warnings (a clamped interval) are returned for the caller to log.
    pub fn from_env() -> Result<(Self, Vec<String>), ConfigErrors> {
        Self::from_lookup(crate::env::lookup)
    }

    /// Like [`BrokerConfig::from_env`] with any variable source; reports every problem at once.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<String>), ConfigErrors> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let url = match RedisUrl::parse_with_tls(
            "HUB_REDIS_URL",
            &lookup("HUB_REDIS_URL").unwrap_or_default(),
            &lookup,
        ) {
            Ok((url, warning)) => {
                warnings.extend(warning);
                Some(url)
            }
            Err(url_errors) => {
                errors.extend(url_errors);
                None
            }
        };
        let interval = match status_interval(lookup(crate::env::STATUS_INTERVAL_VAR)) {
            Ok((interval, warning)) => {
                warnings.extend(warning);
                interval
            }
            Err(err) => {
                errors.push(err);
                Duration::ZERO
            }
        };
        let preflight = match preflight_mode(lookup("BROKER_PREFLIGHT")) {
            Ok(mode) => mode,
            Err(err) => {
                errors.push(err);
                PreflightMode::Warn
            }
        };
        match url {
            Some(url) if errors.is_empty() => {
                let mut config = Self::new(url);
                config.status_interval = interval;
                config.preflight = preflight;
                Ok((config, warnings))
            }
            _ => Err(ConfigErrors(errors)),
        }
    }
}

fn status_interval(value: Option<String>) -> Result<(Duration, Option<String>), ConfigError> {
    const VAR: &str = crate::env::STATUS_INTERVAL_VAR;
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok((Duration::from_secs(DEFAULT_STATUS_INTERVAL_SECONDS), None));
    };
    let seconds = match crate::env::parse_seconds(&value, 1, u64::MAX) {
        Ok(Some(interval)) => interval.as_secs(),
        Ok(None) | Err(()) => {
            return Err(ConfigError::BadInterval { var: VAR, value });
        }
    };
    if seconds > MAX_STATUS_INTERVAL_SECONDS {
        let warning = format!(
            "{VAR}={seconds} is above {MAX_STATUS_INTERVAL_SECONDS}; using {MAX_STATUS_INTERVAL_SECONDS} s because the api marks a machine silent for 30 s as disconnected"
        );
        return Ok((
            Duration::from_secs(MAX_STATUS_INTERVAL_SECONDS),
            Some(warning),
        ));
    }
    Ok((Duration::from_secs(seconds), None))
}

fn preflight_mode(value: Option<String>) -> Result<PreflightMode, ConfigError> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(PreflightMode::Warn);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "warn" => Ok(PreflightMode::Warn),
        "require" => Ok(PreflightMode::Require),
        "off" => Ok(PreflightMode::Off),
        _ => Err(ConfigError::BadPreflight { value }),
    }
}

/// One problem with the broker's environment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The URL variable is unset or empty.
    #[error(
        "{var} is not set; set it to the job broker's redis, e.g. redis://:password@host:6379 or rediss://user:password@host:6380 for TLS"
    )]
    MissingUrl {
        /// The variable name.
        var: String,
    },
    /// The URL does not parse or has another scheme.
    #[error(
        "{var} ({redacted}) is not a usable redis url: {reason}; accepted schemes are redis:// and rediss:// (TLS), e.g. redis://:password@host:6379/0"
    )]
    BadUrl {
        /// The variable name.
        var: String,
        /// The URL with its password replaced by `***`.
        redacted: String,
        /// What is wrong, without the password.
        reason: String,
    },
    /// A TLS variable is wrong (unreadable or non-PEM file, a certificate without its key, ...).
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// The interval is not a positive whole number.
    #[error(
        "{var}=\"{value}\" is not a whole number of seconds; use a value from 1 to 25 (default 10)"
    )]
    BadInterval {
        /// The variable name.
        var: &'static str,
        /// The value given.
        value: String,
    },
    /// The preflight mode is unknown.
    #[error(
        "BROKER_PREFLIGHT=\"{value}\" is not a preflight mode; use warn (the default), require or off"
    )]
    BadPreflight {
        /// The value given.
        value: String,
    },
}

/// All problems found in one read of the environment.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// The masker for a URL's password, as written and as decoded; passwords shorter than 3 characters
/// are left alone (one letter would blank out every such letter of a message).
fn masker_for(secrets: &[String]) -> Masker {
    Masker::new(secrets.iter().filter(|s| s.len() >= 3).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn accepts_redis_and_rediss() {
        let url = RedisUrl::parse("HUB_REDIS_URL", "redis://:s3cret@127.0.0.1:6379/2").unwrap();
        assert_eq!(url.redacted(), "redis://:***@127.0.0.1:6379/2");
        assert!(!url.is_tls());
        assert!(!format!("{url:?} {url}").contains("s3cret"));
        let url = RedisUrl::parse("HUB_REDIS_URL", "rediss://u:s3cret@example.com:6380").unwrap();
        assert!(url.is_tls());
        assert_eq!(url.redact("auth failed for s3cret"), "auth failed for ***");
    }

    #[test]
    fn bad_urls_name_the_variable_and_schemes_without_the_password() {
        for raw in [
            "http://:s3cret@h:6379",
            "redis://:s3cret@h:notaport",
            "s3cret",
            "unix:///tmp/redis.sock",
        ] {
            let err = RedisUrl::parse("HUB_REDIS_URL", raw)
                .unwrap_err()
                .to_string();
            assert!(err.contains("HUB_REDIS_URL"), "{err}");
            assert!(
                err.contains("redis://") && err.contains("rediss://"),
                "{err}"
            );
            assert!(!err.contains("s3cret"), "{err}");
        }
        let err = RedisUrl::parse("HUB_REDIS_URL", " ").unwrap_err();
        assert_eq!(
            err,
            ConfigError::MissingUrl {
                var: "HUB_REDIS_URL".into()
            }
        );
    }

    #[test]
    fn insecure_fragment_is_the_switch_not_a_password() {
        let url = RedisUrl::parse("HUB_REDIS_URL", "rediss://:s3cret@h:6380/#insecure").unwrap();
        assert!(url.has_insecure_fragment() && url.is_tls());
        assert_eq!(url.redacted(), "rediss://:***@h:6380/#insecure");
        // A `#` inside the password (an `@` after it) is still the ambiguity it was.
        let err = RedisUrl::parse("HUB_REDIS_URL", "redis://:pa#ss@h:6379")
            .unwrap_err()
            .to_string();
        assert!(err.contains("percent-encode"), "{err}");
        assert!(!err.contains("pa#ss"), "{err}");
    }

    #[test]
    fn interval_defaults_clamps_and_rejects() {
        let (config, warnings) =
            BrokerConfig::from_lookup(lookup(&[("HUB_REDIS_URL", "redis://h")])).unwrap();
        assert_eq!(config.status_interval, Duration::from_secs(10));
        assert_eq!(config.preflight, PreflightMode::Warn);
        assert!(warnings.is_empty());

        let (config, warnings) = BrokerConfig::from_lookup(lookup(&[
            ("HUB_REDIS_URL", "redis://h"),
            ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "60"),
            ("BROKER_PREFLIGHT", "require"),
        ]))
        .unwrap();
        assert_eq!(config.status_interval, Duration::from_secs(25));
        assert_eq!(config.preflight, PreflightMode::Require);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS=60"));

        let errors = BrokerConfig::from_lookup(lookup(&[
            ("HUB_REDIS_URL", "http://:pw123@h"),
            ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "abc"),
            ("BROKER_PREFLIGHT", "maybe"),
        ]))
        .unwrap_err();
        assert_eq!(errors.0.len(), 3, "{errors}");
        let text = errors.to_string();
        assert!(
            text.contains("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS=\"abc\""),
            "{text}"
        );
        assert!(text.contains("BROKER_PREFLIGHT=\"maybe\""), "{text}");
        assert!(!text.contains("pw123"), "{text}");

        let errors = BrokerConfig::from_lookup(lookup(&[
            ("HUB_REDIS_URL", "redis://h"),
            ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "0"),
        ]))
        .unwrap_err();
        assert!(errors.to_string().contains("from 1 to 25"));
    }
}
