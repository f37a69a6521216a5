//! The one error type of this crate.

use std::time::Duration;

/// A boxed error from a deployer's backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why an agent's env, a spec or a deployment was refused or failed.
///
/// Messages never contain secrets: a rejected env value is described, never echoed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A role other than `worker` or `coordinator`.
    #[error("unknown agent role {found:?}: expected `worker` or `coordinator`")]
    InvalidRole {
        /// The text found (cut to 40 characters).
        found: String,
    },
    /// A variable the agent cannot run without is not set.
    #[error("{name} is not set")]
    MissingVar {
        /// The variable's name.
        name: &'static str,
    },
    /// A variable is set to something the agent cannot use.
    #[error("{name}: {reason}")]
    InvalidVar {
        /// The variable's name.
        name: &'static str,
        /// What is wrong with it (never the value of a secret).
        reason: String,
    },
    /// An env list has a name that is not a POSIX env name, or a name twice.
    #[error("invalid env: {reason}")]
    InvalidEnv {
        /// What is wrong.
        reason: String,
    },
    /// A container image reference is malformed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidImage {
        /// The rejected reference.
        reference: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A deployment name breaks the naming rules.
    #[error("invalid deployment name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// The agent never answered a healthy body naming its DID in time.
    #[error("agent at {url} not healthy after {elapsed:?}: {last_problem}")]
    HealthTimeout {
        /// The URL probed.
        url: String,
        /// How long the gate waited.
        elapsed: Duration,
        /// Why the last probe was refused.
        last_problem: String,
    },
    /// The backend that runs agents (Phala Cloud, the local runtime) failed.
    #[error("{backend}: {source}")]
    Backend {
        /// Which backend, e.g. `Phala Cloud`.
        backend: &'static str,
        /// Whether the same call may succeed if repeated.
        retryable: bool,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
    /// A deploy failed after the backend may have made the deployment, which
    /// may still run (and cost money): the caller tears it down, by `id`
    /// when known, else by `name` ([`Deployer::teardown_named`](crate::Deployer::teardown_named)).
    #[error("{source}; a deployment may be left running under {name}")]
    LeftBehind {
        /// The deployment's name.
        name: String,
        /// The deployment's id, when the backend gave one.
        id: Option<String>,
        /// Why the deploy failed.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// A backend failure.
    pub fn backend(backend: &'static str, retryable: bool, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            retryable,
            source: source.into(),
        }
    }

    /// Whether repeating the call may succeed (a backend's transient failure).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Backend { retryable, .. } => *retryable,
            Error::LeftBehind { source, .. } => source.is_retryable(),
            _ => false,
        }
    }

    pub(crate) fn invalid_var(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidVar {
            name,
            reason: reason.into(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
