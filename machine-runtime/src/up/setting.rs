//! The broker settings `up` reads from the environment: [`BrokerSetting`] (`HUB_REDIS_URL` and the
//! rest) and the advertised health URL (`MACHINE_HEALTH_URL`).

use crate::broker::BrokerConfig;

pub(crate) use crate::env::REQUIRES_BROKER_VAR;

/// The refusal of a `HUB_REDIS_URL` that is set but empty: what an unfilled `.env.secrets` (a copy of
/// `.env.secrets.example`) passes through Compose. The bundle's workers read the same variable (contract §3)
/// and exit at once without it, so starting would only crash-loop them (issue 21, api-only).
pub(crate) const EMPTY_URL: &str = "HUB_REDIS_URL is set but empty; the workers reach the job broker through it and would exit at once and restart forever. Set it to the broker's redis://[user][:password]@host[:port][/db] (e.g. in generated/<profile>/.env.secrets, which docker-compose --env-file reads), or unset it to run without a broker";

/// Whether and how the machine reports to the job broker.
#[derive(Debug, Clone)]
pub enum BrokerSetting {
    /// Not reporting, and why (shown in `/health` and `/status`).
    Off {
        /// For example "HUB_REDIS_URL is not set".
        reason: String,
    },
    /// Reporting with these settings.
    On {
        /// Connection, interval, preflight.
        config: Box<BrokerConfig>,
        /// Whether an unreachable broker makes the machine unhealthy.
        required_for_health: bool,
    },
}

impl BrokerSetting {
    /// Reads `HUB_REDIS_URL` (unset: off; set but empty: refused, see [`EMPTY_URL`]),
    /// `MACHINE_STATUS_UPDATE_INTERVAL_SECONDS`,
    /// `BROKER_PREFLIGHT` and `MACHINE_HEALTH_REQUIRES_BROKER`. Warnings come back for the caller to
    /// log; every problem is returned, one line each.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(BrokerSetting, Vec<String>), Vec<String>> {
        let mut problems = Vec::new();
        let required_for_health =
            match lookup(REQUIRES_BROKER_VAR).map(|v| crate::env::parse_bool(&v)) {
                None | Some(Ok(None | Some(false))) => false,
                Some(Ok(Some(true))) => true,
                Some(Err(())) => {
                    problems.push(format!(
                        "{REQUIRES_BROKER_VAR}=\"{}\" is not a boolean; expected true or false",
                        lookup(REQUIRES_BROKER_VAR).unwrap_or_default()
                    ));
                    false
                }
            };
        if lookup("HUB_REDIS_URL").is_some_and(|v| v.trim().is_empty()) {
            problems.push(EMPTY_URL.to_owned());
            return Err(problems);
        }
        if lookup("HUB_REDIS_URL").is_none() {
            if !problems.is_empty() {
                return Err(problems);
            }
            let reason =
                "HUB_REDIS_URL is not set, so this machine does not report to the job broker"
                    .to_owned();
            return Ok((
                BrokerSetting::Off {
                    reason: reason.clone(),
                },
                vec![reason],
            ));
        }
        match BrokerConfig::from_lookup(lookup) {
            Ok((config, warnings)) if problems.is_empty() => Ok((
                BrokerSetting::On {
                    config: Box::new(config),
                    required_for_health,
                },
                warnings,
            )),
            Ok(_) => Err(problems),
            Err(errors) => {
                problems.extend(errors.0.iter().map(ToString::to_string));
                Err(problems)
            }
        }
    }

    /// Like [`BrokerSetting::from_lookup`] on the process environment.
    pub fn from_env() -> Result<(BrokerSetting, Vec<String>), Vec<String>> {
        Self::from_lookup(crate::env::lookup)
    }
}

pub(crate) use crate::env::HEALTH_URL_VAR;

/// The advertised health URL from `MACHINE_HEALTH_URL` (unset or empty: `None`, and status messages say
/// `http://localhost:<port>/health`). An `http://` or `https://` URL; anything else is the one problem
/// returned.
pub(crate) fn health_url_from_lookup(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    match lookup(HEALTH_URL_VAR).map(|v| v.trim().to_owned()) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v)
            if (v.starts_with("http://") || v.starts_with("https://"))
                && !v.contains(char::is_whitespace) =>
        {
            Ok(Some(v))
        }
        Some(v) => Err(format!(
            "{HEALTH_URL_VAR}=\"{v}\" is not an http(s) URL; expected e.g. http://10.0.0.5:9090/health (the address other hosts reach this machine's health port on), or leave it unset"
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_advertised_health_url_is_an_http_url_or_unset() {
        let with = |v: Option<&str>| {
            let v = v.map(str::to_owned);
            super::health_url_from_lookup(move |_| v.clone())
        };
        assert_eq!(with(None), Ok(None));
        assert_eq!(with(Some("  ")), Ok(None));
        assert_eq!(
            with(Some("http://10.0.0.5:9090/health")),
            Ok(Some("http://10.0.0.5:9090/health".into()))
        );
        let err = with(Some("10.0.0.5:9090")).unwrap_err();
        assert!(
            err.contains("MACHINE_HEALTH_URL") && err.contains("http"),
            "{err}"
        );
    }

    use super::*;

    fn setting(vars: &[(&str, &str)]) -> Result<(BrokerSetting, Vec<String>), Vec<String>> {
        BrokerSetting::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn no_url_turns_the_broker_off_and_says_why() {
        let (off, warnings) = setting(&[]).unwrap();
        assert!(
            matches!(off, BrokerSetting::Off { ref reason } if reason.contains("HUB_REDIS_URL is not set"))
        );
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn an_empty_url_is_refused_with_the_other_problems() {
        for empty in ["", "  "] {
            assert_eq!(
                setting(&[("HUB_REDIS_URL", empty)]).unwrap_err(),
                [EMPTY_URL]
            );
        }
        let problems = setting(&[
            ("HUB_REDIS_URL", ""),
            ("MACHINE_HEALTH_REQUIRES_BROKER", "maybe"),
        ])
        .unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[1], EMPTY_URL);
    }

    #[test]
    fn a_url_turns_it_on_and_health_policy_is_read() {
        let (on, warnings) = setting(&[
            ("HUB_REDIS_URL", "redis://127.0.0.1:6379"),
            ("MACHINE_HEALTH_REQUIRES_BROKER", "Yes"),
            ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "60"),
        ])
        .unwrap();
        let BrokerSetting::On {
            config,
            required_for_health,
        } = on
        else {
            panic!("broker off");
        };
        assert!(required_for_health);
        assert_eq!(config.status_interval.as_secs(), 25);
        assert!(warnings[0].contains("above 25"), "{warnings:?}");
    }

    #[test]
    fn every_problem_is_reported_once() {
        let problems = setting(&[
            ("HUB_REDIS_URL", "redis://:pw@host:notaport"),
            ("MACHINE_HEALTH_REQUIRES_BROKER", "maybe"),
            ("BROKER_PREFLIGHT", "strict"),
        ])
        .unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems.iter().all(|p| !p.contains(":pw@")), "{problems:?}");
        // A password with an unencoded `#` is refused, and none of it shows.
        let problems =
            setting(&[("HUB_REDIS_URL", "redis://:p@ss#w:rd/1@127.0.0.1:16391")]).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("percent-encode the password (`#` → `%23`"),
            "{problems:?}"
        );
        for part in ["p@ss", "ss#w", "w:rd", "rd/1"] {
            assert!(!problems[0].contains(part), "{part} in {problems:?}");
        }
        // A bad health policy is reported even without a broker.
        let problems = setting(&[("MACHINE_HEALTH_REQUIRES_BROKER", "2")]).unwrap_err();
        assert_eq!(problems.len(), 1);
    }
}
