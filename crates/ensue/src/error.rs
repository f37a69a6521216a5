//! The one error type of this crate.

use std::time::Duration;

pub(crate) use delibera_jsonrpc::excerpt;

/// Everything that can go wrong talking to Ensue, sealing values or building keys.
///
/// Messages never contain secrets: API keys and private keys are never echoed,
/// and response bodies are only kept (truncated) where they cannot carry one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key does not exist (e.g. `update` of a missing key).
    #[error("key not found: {key}")]
    NotFound {
        /// The key that was asked for.
        key: String,
    },
    /// The key already exists (a `create` of a present key).
    #[error("key already exists: {key}")]
    AlreadyExists {
        /// The key that was written.
        key: String,
    },
    /// The organisation's storage quota (keys or bytes) would be exceeded by
    /// this write; the service's message says which and what to do.
    #[error("quota exceeded writing {key}: {message}")]
    QuotaExceeded {
        /// The key that was written.
        key: String,
        /// The service's explanation, truncated.
        message: String,
    },
    /// `agent-register` answered 409: an organization with this name exists.
    #[error("an organization named {name} already exists")]
    OrgNameTaken {
        /// The name asked for.
        name: String,
    },
    /// HTTP 401 or 403: a bad, expired or not-yet-claimed API key.
    #[error("unauthorized (HTTP {status}): {body}")]
    Unauthorized {
        /// The HTTP status (401 or 403).
        status: u16,
        /// The response body, truncated.
        body: String,
    },
    /// HTTP 429: the service asks us to slow down.
    #[error("rate limited (HTTP 429){}", retry_after.map(|d| format!(", retry after {d:?}")).unwrap_or_default())]
    RateLimited {
        /// The delay the service asked for in `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// HTTP 5xx: the service failed.
    #[error("server error (HTTP {status}): {body}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The response body, truncated.
        body: String,
    },
    /// Any other non-success HTTP status.
    #[error("unexpected HTTP status {status}: {body}")]
    UnexpectedStatus {
        /// The HTTP status.
        status: u16,
        /// The response body, truncated.
        body: String,
    },
    /// A JSON-RPC protocol error (top-level `error` member).
    #[error("JSON-RPC error {code}: {message}")]
    JsonRpc {
        /// The JSON-RPC error code, e.g. -32602.
        code: i64,
        /// The error message.
        message: String,
    },
    /// A tool execution error (`result.isError: true`).
    #[error("tool error: {message}")]
    Tool {
        /// The text the tool returned.
        message: String,
    },
    /// One item of a batch result did not succeed (`results[].status` is not `success`).
    #[error("item {key} failed with status {status:?}: {message}")]
    ItemFailed {
        /// The item's key.
        key: String,
        /// The `status` the service reported.
        status: String,
        /// The item's `error` text, or empty.
        message: String,
    },
    /// The response could not be understood.
    #[error("malformed response: {reason}: {body}")]
    Malformed {
        /// What was wrong.
        reason: String,
        /// The offending text, truncated (empty where it could hold a secret).
        body: String,
    },
    /// The request never got an HTTP answer (connection, timeout, TLS, body read).
    #[error("transport error: {0}")]
    Transport(#[source] reqwest::Error),
    /// The client configuration is invalid (bad URL, missing environment variable, …).
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// An organisation name outside 1–64 characters of `[A-Za-z0-9_-]`.
    #[error(
        "invalid organisation name {name:?}: use 1-64 characters of A-Z, a-z, 0-9, '_' and '-'"
    )]
    InvalidOrgName {
        /// The rejected name.
        name: String,
    },
    /// The encryption key string decodes to no bytes at all.
    #[error("the encryption key material is empty")]
    EmptyEncryptionKey,
    /// A value given to unseal that does not start with `aes256gcm:`.
    #[error("value is not encrypted (no `aes256gcm:` prefix)")]
    NotSealed,
    /// An `aes256gcm:` value whose payload is not base64.
    #[error("encrypted value is not base64")]
    CiphertextNotBase64,
    /// An `aes256gcm:` value too short to hold an IV and a tag.
    #[error("encrypted value too short: {len} bytes, need at least 28")]
    CiphertextTooShort {
        /// The decoded payload length.
        len: usize,
    },
    /// The value is too large for AES-GCM (over 64 GiB).
    #[error("value too large to encrypt")]
    PlaintextTooLarge,
    /// AES-GCM authentication failed: wrong key or tampered value.
    #[error("decryption failed: wrong key or tampered value")]
    DecryptionFailed,
    /// The decrypted bytes are not UTF-8 text.
    #[error("decrypted value is not UTF-8")]
    PlaintextNotUtf8,
    /// A status string that is not one of the known values.
    #[error("unknown {kind} status {value:?}")]
    UnknownStatus {
        /// Which status enum, e.g. `worker`.
        kind: &'static str,
        /// The rejected text.
        value: String,
    },
}

impl Error {
    /// Whether retrying the same request may succeed: transport failures,
    /// rate limiting and server errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(error) => {
                error.is_timeout() || error.is_connect() || error.is_request() || error.is_body()
            }
            Error::RateLimited { .. } | Error::Server { .. } => true,
            _ => false,
        }
    }

    /// Whether this is [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// Whether this is [`Error::AlreadyExists`].
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::AlreadyExists { .. })
    }

    /// Whether this is [`Error::QuotaExceeded`].
    pub fn is_quota_exceeded(&self) -> bool {
        matches!(self, Error::QuotaExceeded { .. })
    }

    /// Whether a stored `aes256gcm:` value could not be opened (not base64,
    /// too short, sealed under another key or tampered with, not UTF-8): the
    /// value is unreadable, the store itself answered.
    pub fn is_unreadable_value(&self) -> bool {
        matches!(
            self,
            Error::CiphertextNotBase64
                | Error::CiphertextTooShort { .. }
                | Error::DecryptionFailed
                | Error::PlaintextNotUtf8
        )
    }

    /// Whether this is [`Error::Unauthorized`].
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Error::Unauthorized { .. })
    }

    /// The delay the service asked for, when rate limited.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// The error for a non-2xx HTTP answer; `body` is already an excerpt and
    /// `retry_after` comes from [`retry_after_header`].
    pub(crate) fn from_http_status(
        status: u16,
        retry_after: Option<Duration>,
        body: String,
    ) -> Self {
        match status {
            401 | 403 => Error::Unauthorized { status, body },
            429 => Error::RateLimited { retry_after },
            500..=599 => Error::Server { status, body },
            _ => Error::UnexpectedStatus { status, body },
        }
    }
}

/// A `Retry-After` header, in seconds (the form the service sends) or as an HTTP-date.
pub(crate) fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(delibera_backoff::parse_retry_after)
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
