//! The broker's state as `/health` shows it: [`BrokerStatus`] and the preflight's outcome.

use serde::Serialize;

use super::link::ConnectionState;
use super::message::UpdateType;
use super::preflight::PreflightReport;
use super::time::now_ms;

/// The broker's side of `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerStatus {
    /// `HUB_REDIS_URL` with the password replaced by `***`.
    pub url: String,
    /// Connected, or unreachable since when and why.
    pub connection: ConnectionState,
    /// What the start-up check found.
    pub preflight: PreflightState,
    /// Status messages published so far.
    pub published: u64,
    /// Epoch ms of the last published message.
    pub last_published_ms: Option<u64>,
    /// Type of the last published message.
    pub last_update_type: Option<UpdateType>,
}

impl BrokerStatus {
    /// Whether Redis is reachable now.
    pub fn is_connected(&self) -> bool {
        matches!(self.connection, ConnectionState::Connected { .. })
    }

    /// One line for humans: `broker connected` or `broker unreachable since ...: <error>`.
    pub fn summary(&self) -> String {
        match &self.connection {
            ConnectionState::Connecting { .. } => format!("broker connecting to {}", self.url),
            ConnectionState::Connected { .. } => format!("broker connected to {}", self.url),
            ConnectionState::Unreachable {
                since_ms,
                last_error,
            } => format!(
                "broker unreachable for {} s ({}): {last_error}",
                now_ms().saturating_sub(*since_ms) / 1000,
                self.url
            ),
        }
    }
}

/// The preflight's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PreflightState {
    /// `BROKER_PREFLIGHT=off`.
    Off,
    /// Not run yet (Redis unreachable so far).
    Pending,
    /// Redis 7+ with `findMatchingJob`.
    Passed {
        /// `redis_version`.
        redis_version: Option<String>,
    },
    /// Problems found (`BROKER_PREFLIGHT=warn`).
    Problems {
        /// `redis_version`.
        redis_version: Option<String>,
        /// One sentence each.
        problems: Vec<String>,
    },
}

pub(super) fn preflight_state(report: PreflightReport, url: &str) -> PreflightState {
    if report.passed() {
        PreflightState::Passed {
            redis_version: report.redis_version,
        }
    } else {
        for line in report.warning_lines(url) {
            log!("{line}");
        }
        PreflightState::Problems {
            redis_version: report.redis_version,
            problems: report.problems,
        }
    }
}
