//! The one error type of this crate.

/// Why the server or its store could not do what was asked.
///
/// Protocol-level failures (bad JSON-RPC, unknown tool, missing key) are not
/// errors of this type: they are answered to the client on the wire. This type
/// covers starting, stopping and provisioning the server, and claiming
/// organisations. Messages never contain API keys, claim tokens or
/// verification codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite failed (opening the file, a statement, a transaction).
    #[error("storage error: {0}")]
    Storage(#[from] rusqlite::Error),
    /// Creating the data directory, binding the listener or serving failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The data directory or the store's file could not be made owner-only.
    #[error(transparent)]
    DataDir(#[from] delibera_data_dir::Error),
    /// The HTTP server could not start (an unusable edge setting).
    #[error("HTTP server: {0}")]
    Serve(#[from] delibera_serve::Error),
    /// The database file was written by a newer version of this crate.
    #[error("unsupported database schema version {found}: this build knows version {supported}")]
    UnsupportedSchema {
        /// The `user_version` found in the file.
        found: i64,
        /// The newest version this build can read.
        supported: i64,
    },
    /// An organisation name outside 1–64 characters of `[A-Za-z0-9_-]`.
    #[error(
        "invalid organization name {name:?}: use 1-64 characters of A-Z, a-z, 0-9, '_' and '-'"
    )]
    InvalidOrgName {
        /// The rejected name (names are not secret).
        name: String,
    },
    /// An organisation with this name already exists.
    #[error("an organization named {name:?} already exists")]
    OrgNameTaken {
        /// The name that is taken.
        name: String,
    },
    /// A configured API key is unusable (empty, too long, or with spaces or control characters).
    #[error("invalid API key: {reason}")]
    InvalidApiKey {
        /// What is wrong with it (the key itself is never shown).
        reason: &'static str,
    },
    /// No organisation has this claim token.
    #[error("unknown claim token")]
    UnknownClaimToken,
    /// The verification code is not the one of this claim token.
    #[error("wrong verification code for organization {org:?}")]
    WrongVerificationCode {
        /// The organisation the token belongs to (names are not secret).
        org: String,
    },
    /// A blocking storage task panicked or was cancelled.
    #[error("a storage task did not finish: {0}")]
    TaskFailed(#[from] tokio::task::JoinError),
}

impl Error {
    /// Whether the caller's input was at fault (a bad name, key, claim token
    /// or verification code), as opposed
    /// to the machine (storage, I/O).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidOrgName { .. }
                | Error::OrgNameTaken { .. }
                | Error::InvalidApiKey { .. }
                | Error::UnknownClaimToken
                | Error::WrongVerificationCode { .. }
        )
    }

    /// Whether this is [`Error::OrgNameTaken`].
    pub fn is_org_name_taken(&self) -> bool {
        matches!(self, Error::OrgNameTaken { .. })
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
