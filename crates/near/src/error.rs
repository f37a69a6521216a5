//! The one error type of this crate.

use std::fmt;

/// Everything that can go wrong talking to NEAR or the local registry.
///
/// Messages never contain secret material: no secret keys, no RPC URL paths
/// or query strings (providers put API keys there), only the URL's origin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A registration the caller expects is not (yet) on the registry, or not
    /// as expected; the owner can fix it (sign, wait, retry).
    #[error(transparent)]
    Unconfirmed(#[from] crate::Unconfirmed),
    /// A caller-supplied value (block hash, amount, key…) is malformed.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was being parsed, e.g. `block hash`.
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// An account id, key string or signature was rejected by `delibera-identity`.
    #[error(transparent)]
    Identity(#[from] delibera_identity::Error),
    /// The HTTP request never produced a response (connection refused, reset, timed out…).
    #[error("NEAR RPC {endpoint} unreachable{}: {message}", if *.timed_out { " (timed out)" } else { "" })]
    Transport {
        /// The RPC endpoint's origin (scheme, host and port only).
        endpoint: String,
        /// Whether the client gave up waiting (the request may have been delivered).
        timed_out: bool,
        /// Whether the connection was never established (the request was not delivered).
        connect: bool,
        /// The transport's description, without the URL.
        message: String,
    },
    /// The RPC answered with an HTTP status that carries no JSON-RPC error.
    #[error("NEAR RPC {endpoint} answered HTTP {status}: {body}")]
    HttpStatus {
        /// The RPC endpoint's origin.
        endpoint: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The account does not exist (`UNKNOWN_ACCOUNT`).
    #[error("NEAR account {account_id} does not exist")]
    UnknownAccount {
        /// The account that was asked for.
        account_id: String,
    },
    /// The account has no such access key (`UNKNOWN_ACCESS_KEY`, or the legacy in-result text).
    #[error("access key {public_key} does not exist on the account")]
    UnknownAccessKey {
        /// The public key that was asked for (`ed25519:…`).
        public_key: String,
    },
    /// The transaction nonce is not above the access key's nonce.
    #[error(
        "invalid nonce: transaction nonce {tx_nonce} must be larger than the access key nonce {ak_nonce}"
    )]
    InvalidNonce {
        /// The nonce the transaction carried.
        tx_nonce: u64,
        /// The access key's current nonce.
        ak_nonce: u64,
    },
    /// The node refused the transaction for another reason (`INVALID_TRANSACTION`).
    #[error("invalid transaction: {details}")]
    InvalidTransaction {
        /// The `InvalidTxError` (or whatever the node sent) as JSON.
        details: serde_json::Value,
    },
    /// The node gave up waiting for the transaction (`TIMEOUT_ERROR`); it may still execute.
    #[error("NEAR RPC timed out waiting for the transaction")]
    Timeout,
    /// The node does not know the transaction (`UNKNOWN_TRANSACTION`).
    #[error("transaction {tx_hash} is unknown to the node")]
    UnknownTransaction {
        /// The transaction hash (base58).
        tx_hash: String,
    },
    /// A transaction was sent, but neither its outcome nor its absence could be established.
    #[error(
        "transaction {tx_hash} was sent but its outcome is not known yet; query it by hash, do not re-sign it"
    )]
    TransactionPending {
        /// The transaction hash (base58) to look up later.
        tx_hash: String,
    },
    /// A contract call panicked (a `require!` failed, an `expect` fired…).
    #[error("contract panicked: {message}")]
    ContractPanic {
        /// The panic message, without the `Smart contract panicked: ` prefix.
        message: String,
    },
    /// An action of the transaction failed for a reason other than a panic.
    #[error("transaction action {index:?} failed: {kind}")]
    ActionFailed {
        /// Which action failed, when the node says.
        index: Option<u64>,
        /// The failure as the node described it (JSON).
        kind: serde_json::Value,
    },
    /// A view call failed inside the node (legacy `result.error`, e.g. method not found).
    #[error("view call failed: {message}")]
    ViewFailed {
        /// The node's error text.
        message: String,
    },
    /// Any other JSON-RPC error, by its structured cause.
    #[error("NEAR RPC error {name}/{cause}: {message}")]
    Rpc {
        /// `error.name`, e.g. `HANDLER_ERROR`.
        name: String,
        /// `error.cause.name`, e.g. `UNKNOWN_BLOCK` (empty when absent).
        cause: String,
        /// The most specific message the node gave.
        message: String,
    },
    /// The response does not have the shape the method promises.
    #[error("unexpected response to {method}: {reason}")]
    InvalidResponse {
        /// The RPC or contract method.
        method: String,
        /// What was wrong.
        reason: String,
    },
    /// Changing a record would mean registering it again, which would also
    /// change what the caller did not ask to change: the registration's
    /// signer becomes the record's owner, and the record is switched on.
    #[error("cannot change the registry record of {did}: {reason}")]
    WouldReregister {
        /// The agent's DID.
        did: String,
        /// What registering it again would change, and who can do it instead.
        reason: String,
    },
    /// A change call was made on a client built for views only.
    #[error("this client has no signer: change calls need a TransactionSender")]
    NoSigner,
    /// The local registry's SQLite store failed.
    #[error("local registry storage: {0}")]
    Storage(#[from] rusqlite::Error),
    /// The local registry's file could not be created or made owner-only.
    #[error(transparent)]
    DataDir(#[from] delibera_data_dir::Error),
}

impl Error {
    /// Whether another RPC endpoint (or a later attempt) may succeed where this failed:
    /// transport failures, HTTP 429 and 5xx, and the node's own internal or routing errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::HttpStatus { status, .. } => *status == 429 || *status >= 500,
            Self::Rpc { name, cause, .. } => {
                name == "INTERNAL_ERROR"
                    || matches!(
                        cause.as_str(),
                        "INTERNAL_ERROR"
                            | "NO_SYNCED_BLOCKS"
                            | "UNAVAILABLE_SHARD"
                            | "DOES_NOT_TRACK_SHARD"
                            | "REQUEST_ROUTED"
                    )
            }
            _ => false,
        }
    }

    /// Whether a transaction may have been delivered although no outcome came back
    /// (a node `TIMEOUT_ERROR`, or a client-side timeout): look it up by hash, never re-sign.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::Timeout
                | Self::Transport {
                    timed_out: true,
                    ..
                }
        )
    }

    /// Whether the request certainly never reached a node, so resending it is harmless.
    pub fn is_not_delivered(&self) -> bool {
        match self {
            Self::Transport { connect, .. } => *connect,
            Self::HttpStatus { status, .. } => *status == 429 || *status == 503,
            _ => false,
        }
    }

    /// Whether this is a contract panic.
    pub fn is_contract_panic(&self) -> bool {
        matches!(self, Self::ContractPanic { .. })
    }

    /// The contract's panic message (its `require!` text), if this is a contract panic.
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            Self::ContractPanic { message } => Some(message),
            _ => None,
        }
    }

    /// Whether the node refused the transaction's nonce.
    pub fn is_invalid_nonce(&self) -> bool {
        matches!(self, Self::InvalidNonce { .. })
    }

    pub(crate) fn invalid_response(method: &str, reason: impl fmt::Display) -> Self {
        Self::InvalidResponse {
            method: method.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
