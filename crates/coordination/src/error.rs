//! The one error type of this crate.

/// How many characters of an offending text an error keeps.
const EXCERPT_CHARS: usize = 300;

/// Keeps at most [`EXCERPT_CHARS`] characters of `text`, marking the cut.
pub(crate) fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], text.len()),
        None => text.to_owned(),
    }
}

/// Everything that can go wrong in a round, a handler or the agent runtime.
///
/// Messages never contain secrets: API keys and private keys are never echoed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Ensue (or any other `Memory`) failed.
    #[error("memory: {0}")]
    Memory(#[from] delibera_ensue::Error),
    /// A value stored in memory is not the JSON document its key should hold.
    #[error("malformed {what} in memory: {reason}: {text}")]
    MalformedValue {
        /// Which document, e.g. `task definition`.
        what: &'static str,
        /// The parser's complaint.
        reason: String,
        /// The offending value, truncated.
        text: String,
    },
    /// A task handler refused or failed to vote.
    #[error("handler failed: {message}")]
    Handler {
        /// Why, in words.
        message: String,
    },
    /// A task handler did not finish before its deadline.
    #[error("handler timed out after {after_ms} ms")]
    HandlerTimeout {
        /// How long it was given.
        after_ms: u64,
    },
    /// A task handler panicked.
    #[error("handler panicked: {message}")]
    HandlerPanicked {
        /// The panic payload, when it was a string.
        message: String,
    },
    /// The worker was shut down before its handler finished.
    #[error("worker shut down before the handler finished")]
    ShutDown,
    /// The LLM endpoint answered with a non-success HTTP status.
    #[error("LLM endpoint returned HTTP {status}: {body}")]
    LlmStatus {
        /// The HTTP status.
        status: u16,
        /// The response body, truncated.
        body: String,
    },
    /// The LLM's answer is not the strict JSON vote asked for.
    #[error("LLM answer is not a valid vote: {reason}: {text}")]
    LlmMalformed {
        /// What is wrong.
        reason: String,
        /// The offending text, truncated.
        text: String,
    },
    /// The LLM endpoint could not be reached.
    #[error("LLM transport error: {0}")]
    LlmTransport(#[source] reqwest::Error),
    /// Configuration is invalid (a URL, a limit).
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong (never a secret value).
        reason: String,
    },
    /// A round was asked for with no workers.
    #[error("no workers to coordinate")]
    NoWorkers,
    /// A round is already running on this coordinator.
    #[error("a round is already running (proposal {proposal_id})")]
    RoundInProgress {
        /// The proposal of the running round.
        proposal_id: String,
    },
}

impl Error {
    /// A handler failure with this message; what custom handlers return.
    pub fn handler(message: impl Into<String>) -> Self {
        Error::Handler {
            message: message.into(),
        }
    }

    /// Whether retrying the same operation may succeed: transient memory
    /// failures and LLM transport errors, 429 and 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Memory(error) => error.is_retryable(),
            Error::LlmTransport(_) => true,
            Error::LlmStatus { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Whether this is a handler failure of any kind (error, timeout, panic).
    pub fn is_handler_failure(&self) -> bool {
        matches!(
            self,
            Error::Handler { .. }
                | Error::HandlerTimeout { .. }
                | Error::HandlerPanicked { .. }
                | Error::LlmStatus { .. }
                | Error::LlmMalformed { .. }
                | Error::LlmTransport(_)
        )
    }

    pub(crate) fn malformed(what: &'static str, error: &serde_json::Error, text: &str) -> Self {
        Error::MalformedValue {
            what,
            reason: error.to_string(),
            text: excerpt(text),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
