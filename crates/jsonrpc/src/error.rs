//! The one error type of this crate.

/// How many characters of an offending body an error keeps.
pub const BODY_EXCERPT_CHARS: usize = 512;

/// Keeps at most [`BODY_EXCERPT_CHARS`] characters of `text`, marking the cut:
/// what an error message keeps of a body it could not read.
pub fn excerpt(text: &str) -> String {
    match text.char_indices().nth(BODY_EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], text.len()),
        None => text.to_owned(),
    }
}

/// Why a response body could not be read.
///
/// Every variant keeps the offending text, truncated, in `body` (see
/// [`Error::body`]); the message itself does not repeat it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The body is not UTF-8 text.
    #[error("the body is not UTF-8 (invalid byte at offset {valid_up_to})")]
    NotUtf8 {
        /// Where the first invalid byte is.
        valid_up_to: usize,
        /// The body, lossily decoded and truncated.
        body: String,
    },
    /// The body, or the data of one of its events, is not JSON.
    #[error("not JSON: {source}")]
    NotJson {
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
        /// The text, truncated.
        body: String,
    },
    /// JSON that is neither a JSON-RPC message nor a batch of them.
    #[error("not a JSON-RPC message: {source}")]
    NotAMessage {
        /// What is wrong with it.
        #[source]
        source: serde_json::Error,
        /// The text, truncated.
        body: String,
    },
    /// The body holds no response at all (nothing, or only notifications and
    /// server-to-client requests).
    #[error("no JSON-RPC response in the body")]
    NoResponse {
        /// The body, truncated.
        body: String,
    },
}

impl Error {
    /// The offending text, truncated to about 512 characters.
    pub fn body(&self) -> &str {
        match self {
            Error::NotUtf8 { body, .. }
            | Error::NotJson { body, .. }
            | Error::NotAMessage { body, .. }
            | Error::NoResponse { body } => body,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_cut_long_text_on_a_char_boundary() {
        assert_eq!(excerpt("short"), "short");
        let long = "é".repeat(1_000);
        let cut = excerpt(&long);
        assert!(cut.starts_with(&"é".repeat(BODY_EXCERPT_CHARS)));
        assert!(cut.ends_with("(2000 bytes in all)"), "{cut}");
    }
}
