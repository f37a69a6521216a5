//! The one error type of this crate.

/// Why a server could not start serving.
///
/// Once serving, nothing a client does is an error of the server: bad
/// clients are answered, timed out or disconnected, and failed `accept`s
/// are logged and retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listener's own address could not be read.
    #[error("the listener's address could not be read: {0}")]
    Listener(#[source] std::io::Error),
    /// A limit is unusable (a zero timeout, one over a day, a zero
    /// connection cap).
    #[error("invalid edge setting: {reason}")]
    InvalidEdges {
        /// Which limit, and what it must be.
        reason: String,
    },
    /// A CORS setting names no usable policy (see `CorsPolicy::parse`).
    #[error("{reason}")]
    InvalidCorsOrigins {
        /// What is wrong, and what to write instead.
        reason: String,
    },
}

impl From<Error> for std::io::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Listener(error) => error,
            other => std::io::Error::new(std::io::ErrorKind::InvalidInput, other),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
