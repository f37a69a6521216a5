//! The one error type of this crate.

/// Why an agent could not be configured, started or served, or why the local
/// deployer failed.
///
/// Messages never contain secrets: keys are named by their variable, never echoed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The agent's env is missing a variable or has a bad value.
    #[error(transparent)]
    Env(#[from] delibera_deploy::Error),
    /// The configuration cannot work as a whole (e.g. a coordinator with no
    /// way to find its workers).
    #[error("invalid agent configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The Ensue client could not be built, or Ensue failed.
    #[error("memory: {0}")]
    Memory(#[from] delibera_ensue::Error),
    /// The round, the worker loop or a handler failed.
    #[error(transparent)]
    Coordination(#[from] delibera_coordination::Error),
    /// The NEAR registry could not be reached or read.
    #[error("registry: {0}")]
    Registry(#[from] delibera_near::Error),
    /// The HTTP server could not run.
    #[error("HTTP server: {0}")]
    Serve(#[source] std::io::Error),
    /// The local deployer could not remember or recall its agents.
    #[error("local deployment journal: {reason}")]
    Journal {
        /// What failed (never a secret value).
        reason: String,
    },
    /// One journal entry cannot be read back (damaged, or sealed under
    /// another key); the journal's other entries are unaffected.
    #[error("local deployment {id}: its journal entry cannot be read: {reason}")]
    UnreadableJournalEntry {
        /// The deployment id the entry is stored under.
        id: String,
        /// What is wrong with it (never a secret value).
        reason: String,
    },
}

impl Error {
    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Error::Config {
            reason: reason.into(),
        }
    }

    /// Whether retrying may succeed (a transient memory or registry failure).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Memory(error) => error.is_retryable(),
            Error::Coordination(error) => error.is_retryable(),
            Error::Registry(error) => error.is_retryable(),
            _ => false,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
