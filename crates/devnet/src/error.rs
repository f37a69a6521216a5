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
    /// The devnet's data directory or a state file could not be made owner-only.
    #[error(transparent)]
    DataDir(#[from] delibera_data_dir::Error),
    /// The configuration cannot work.
    #[error("devnet configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The NEAR devnet's contract state (a `LocalRegistry`) failed.
    #[error("NEAR devnet contract state: {0}")]
    Near(#[from] delibera_near::Error),
    /// The faucet was asked for an account that already exists.
    #[error("NEAR account {account_id} already exists")]
    AccountExists {
        /// The account that was asked for.
        account_id: String,
    },
    /// A container image could not be unpacked or started.
    #[error("devnet image: {reason}")]
    Image {
        /// What is wrong with it.
        reason: String,
    },
    /// A background task of a stand-in stopped abnormally.
    #[error("devnet task failed: {reason}")]
    Task {
        /// What happened to it.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
