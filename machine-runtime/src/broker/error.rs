//! Why the broker could not start or stop cleanly: [`BrokerError`].

use super::link::LinkError;

/// Why the broker could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Authentication or TLS refused (or another connection error where it is fatal).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// `BROKER_PREFLIGHT=require` and the check failed.
    #[error(
        "broker preflight failed for redis at {url} and BROKER_PREFLIGHT=require:\n{}\nworkers would never receive jobs; fix the broker, or set BROKER_PREFLIGHT=warn to start anyway",
        .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
    )]
    PreflightFailed {
        /// The redacted URL.
        url: String,
        /// What is wrong.
        problems: Vec<String>,
    },
    /// `BROKER_PREFLIGHT=require` and Redis could not be asked.
    #[error(
        "BROKER_PREFLIGHT=require but the broker preflight could not run: {detail}; start redis, or set BROKER_PREFLIGHT=warn to start without the check"
    )]
    PreflightUnchecked {
        /// Why (with the redacted URL).
        detail: String,
    },
    /// A status asked for by `POST /refresh-status` did not go out.
    #[error("the status was not published: {reason}")]
    RefreshNotPublished {
        /// Why.
        reason: String,
    },
    /// The final `shutdown` message did not go out.
    #[error("the final shutdown status was not published: {reason}")]
    ShutdownNotPublished {
        /// Why.
        reason: String,
    },
    /// The broker task died (a bug); the runtime itself is unaffected.
    #[error("the broker task ended unexpectedly: {reason}")]
    TaskFailed {
        /// The join error.
        reason: String,
    },
}
