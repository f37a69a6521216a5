//! The one error type of this crate.

/// Why a stand-in could not start or serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A stand-in's state could not be stored or read.
    #[error("devnet state: {0}")]
    Storage(#[from] rusqlite::Error),
    /// A socket could not be bound or served.
    #[error("devnet I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration cannot work.
    #[error("devnet configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
