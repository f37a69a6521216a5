//! The one error type of this crate, and how Phala Cloud error bodies map onto it.

use std::time::Duration;

use serde_json::Value;

/// Everything that can go wrong while encrypting, rendering or deploying.
///
/// Messages never contain secrets: env values, the API key and private keys
/// are never echoed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The env-encryption public key is not 32 bytes of hex, or is a low-order point.
    #[error("invalid env-encryption public key: {reason}")]
    InvalidEncryptionKey {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An encrypted env blob could not be decrypted (too short, bad hex, wrong key, tampered).
    #[error("cannot decrypt the encrypted env: {reason}")]
    Decrypt {
        /// What failed.
        reason: &'static str,
    },
    /// An env list is malformed (bad or duplicate key name, too large).
    #[error("invalid env: {reason}")]
    InvalidEnv {
        /// What is wrong; names the key, never the value.
        reason: String,
    },
    /// Client configuration is unusable (bad base URL, missing `PHALA_API_KEY`, …).
    #[error("invalid Phala client configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// 422: the request failed validation; every `detail` entry is kept.
    #[error("Phala rejected the request as invalid (HTTP {}): {}", .0.status, .0.summary())]
    Validation(ApiError),
    /// 401/403: the API key is missing, wrong or lacks access.
    #[error("Phala refused the API key (HTTP {}): {}", .0.status, .0.summary())]
    Unauthorized(ApiError),
    /// 404 or `ERR-03-001`: the CVM (or other resource) does not exist.
    #[error("not found at Phala (HTTP {}): {}", .0.status, .0.summary())]
    NotFound(ApiError),
    /// 409, `ERR-03-007` (app id reused with another compose) or `ERR-01-004` (duplicate name).
    #[error("conflict at Phala (HTTP {}): {}", .0.status, .0.summary())]
    Conflict(ApiError),
    /// Quota or balance exhausted: `ERR-04-xxx` or `ERR-02-015`.
    #[error("Phala quota or balance exhausted (HTTP {}): {}", .0.status, .0.summary())]
    Quota(ApiError),
    /// 429 or `ERR-05-xxx`: token limits or rate limiting; retry later.
    #[error("rate limited by Phala (HTTP {}): {}", .0.status, .0.summary())]
    RateLimited(ApiError),
    /// Any other 4xx (a business rule such as insufficient resources or an unknown node).
    #[error("Phala rejected the request (HTTP {}): {}", .0.status, .0.summary())]
    Rejected(ApiError),
    /// 5xx: the service failed.
    #[error("Phala server error (HTTP {}): {}", .0.status, .0.summary())]
    Server(ApiError),
    /// The request did not complete within the client timeout.
    #[error("Phala request timed out: {operation}")]
    Timeout {
        /// The call, e.g. `GET /cvms/{id}`.
        operation: String,
    },
    /// The request never got an HTTP answer (connection refused, DNS, TLS).
    #[error("cannot reach Phala for {operation}: {message}")]
    Transport {
        /// The call, e.g. `POST /cvms`.
        operation: String,
        /// The transport's description (it never contains headers).
        message: String,
    },
    /// A 3xx answer. Redirects are not followed: the next request would
    /// carry the `X-API-Key` header, which HTTP clients strip on a redirect
    /// to another host only for the standard credential headers.
    #[error(
        "Phala answered {operation} with a redirect (HTTP {status}) to {location}; \
         it is not followed, since it would carry the API key: set the API URL to the address it names"
    )]
    Redirected {
        /// The call, e.g. `POST /cvms/provision`.
        operation: String,
        /// The 3xx status.
        status: u16,
        /// Where it pointed, without credentials or query (it may name a secret).
        location: String,
    },
    /// A 2xx answer whose body is not what the API documents.
    #[error("unexpected Phala response to {operation}: {reason}")]
    UnexpectedResponse {
        /// The call, e.g. `POST /cvms/provision`.
        operation: String,
        /// What was missing or malformed.
        reason: String,
    },
    /// The CVM reported an error or stopped while we waited for it.
    #[error("CVM {cvm_id} failed: {reason}")]
    CvmFailed {
        /// The CVM.
        cvm_id: String,
        /// The error text or status it reported.
        reason: String,
    },
    /// No public URL could be found for the CVM before the deadline.
    #[error("no public URL for CVM {cvm_id} after {elapsed:?}")]
    NoEndpoint {
        /// The CVM.
        cvm_id: String,
        /// How long we waited.
        elapsed: Duration,
    },
    /// A deploy failed after Phala may have made its CVM, which may still run
    /// (and bill): `cvm_id` when known (its cleanup failed too), else only
    /// the name (the commit was never answered and no CVM was found under it).
    #[error("{source}; a CVM may be left running under {name}")]
    LeftBehind {
        /// The deployment's name.
        name: String,
        /// The CVM, when Phala gave its id.
        cvm_id: Option<String>,
        /// Why the deploy failed.
        #[source]
        source: Box<Error>,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for delibera_deploy::Error {
    /// A Phala failure as the `Deployer` port reports it.
    fn from(error: Error) -> Self {
        match error {
            Error::LeftBehind {
                name,
                cvm_id,
                source,
            } => delibera_deploy::Error::LeftBehind {
                name,
                id: cvm_id,
                source: Box::new((*source).into()),
            },
            error => delibera_deploy::Error::backend("Phala Cloud", error.is_retryable(), error),
        }
    }
}

/// One entry of a 422 `detail` list, or of a structured error's `details`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field, dotted from FastAPI's `loc` (e.g. `body.name`) or the structured `field`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// FastAPI's `type` (e.g. `value_error`), when given.
    pub kind: Option<String>,
}

/// What a non-2xx Phala answer said, in whichever of its shapes it came.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// The structured code, e.g. `ERR-03-007`, when the body has one.
    pub code: Option<String>,
    /// The human message (`detail` text or structured `message`), possibly empty.
    pub message: String,
    /// Field-level problems (422 `detail` list or structured `details`).
    pub details: Vec<FieldError>,
    /// The service's suggestions for fixing the problem.
    pub suggestions: Vec<String>,
    /// The wait a 429 or 503 asked for in its `Retry-After` header, in whole
    /// seconds (the header's own resolution; see [`ApiError::retry_after`]).
    pub retry_after_secs: Option<u32>,
}

impl ApiError {
    /// Parses an error body. Never fails: an unreadable body keeps its first bytes as the message.
    pub fn from_body(status: u16, body: &[u8]) -> Self {
        let mut error = ApiError {
            status,
            code: None,
            message: String::new(),
            details: Vec::new(),
            suggestions: Vec::new(),
            retry_after_secs: None,
        };
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            error.message = truncate(&String::from_utf8_lossy(body), 300);
            return error;
        };
        match json.get("detail") {
            Some(Value::String(text)) => error.message = text.clone(),
            Some(Value::Array(items)) => error.details = items.iter().map(fastapi_item).collect(),
            // Structured errors sit under `detail` or at top level.
            Some(structured @ Value::Object(_)) => error.read_structured(structured),
            _ => error.read_structured(&json),
        }
        if error.message.is_empty()
            && let Some(Value::String(text)) = json.get("message").or_else(|| json.get("error"))
        {
            error.message = text.clone();
        }
        error
    }

    fn read_structured(&mut self, object: &Value) {
        if let Some(code) = object.get("error_code").and_then(Value::as_str) {
            self.code = Some(code.to_owned());
        }
        if let Some(message) = object.get("message").and_then(Value::as_str) {
            self.message = message.to_owned();
        }
        if let Some(details) = object.get("details").and_then(Value::as_array) {
            self.details = details
                .iter()
                .map(|item| FieldError {
                    field: text_of(item.get("field")),
                    message: text_of(item.get("message")),
                    kind: None,
                })
                .collect();
        }
        if let Some(suggestions) = object.get("suggestions").and_then(Value::as_array) {
            self.suggestions = suggestions.iter().map(|s| text_of(Some(s))).collect();
        }
    }

    /// Records a `Retry-After` wait, rounded up to whole seconds.
    pub fn set_retry_after(&mut self, wait: Duration) {
        let secs = wait
            .as_secs()
            .saturating_add(u64::from(wait.subsec_nanos() > 0));
        self.retry_after_secs = Some(u32::try_from(secs).unwrap_or(u32::MAX));
    }

    /// The wait the service asked for in `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after_secs
            .map(|secs| Duration::from_secs(u64::from(secs)))
    }

    /// The message, the field errors and the code in one line.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(code) = &self.code {
            parts.push(code.clone());
        }
        if !self.message.is_empty() {
            parts.push(self.message.clone());
        }
        for detail in &self.details {
            parts.push(format!("{}: {}", detail.field, detail.message));
        }
        if parts.is_empty() {
            "no details".to_owned()
        } else {
            parts.join("; ")
        }
    }

    /// Sorts the answer into its [`Error`] class: structured codes first, then the status.
    pub fn into_error(self) -> Error {
        let code = self.code.as_deref().unwrap_or("");
        if code.starts_with("ERR-04-") || code == "ERR-02-015" {
            return Error::Quota(self);
        }
        if code.starts_with("ERR-05-") {
            return Error::RateLimited(self);
        }
        if code == "ERR-03-007" || code == "ERR-01-004" {
            return Error::Conflict(self);
        }
        if code == "ERR-03-001" {
            return Error::NotFound(self);
        }
        match self.status {
            422 => Error::Validation(self),
            401 | 403 => Error::Unauthorized(self),
            404 => Error::NotFound(self),
            409 => Error::Conflict(self),
            429 => Error::RateLimited(self),
            500..=599 => Error::Server(self),
            _ => Error::Rejected(self),
        }
    }
}

fn fastapi_item(item: &Value) -> FieldError {
    let field = match item.get("loc") {
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| text_of(Some(part)))
            .collect::<Vec<_>>()
            .join("."),
        other => text_of(other),
    };
    FieldError {
        field,
        message: text_of(item.get("msg").or_else(|| item.get("message"))),
        kind: item.get("type").and_then(Value::as_str).map(str::to_owned),
    }
}

fn text_of(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

impl Error {
    /// The parsed Phala answer behind an HTTP error, if this is one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Error::Validation(api)
            | Error::Unauthorized(api)
            | Error::NotFound(api)
            | Error::Conflict(api)
            | Error::Quota(api)
            | Error::RateLimited(api)
            | Error::Rejected(api)
            | Error::Server(api) => Some(api),
            _ => None,
        }
    }

    /// The structured `ERR-xx-yyy` code, if the answer had one.
    pub fn error_code(&self) -> Option<&str> {
        self.api_error().and_then(|api| api.code.as_deref())
    }

    /// The HTTP status, if this is an HTTP error.
    pub fn status(&self) -> Option<u16> {
        self.api_error().map(|api| api.status)
    }

    /// The wait the service asked for (`Retry-After` on a 429 or 503), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.api_error().and_then(ApiError::retry_after)
    }

    /// Whether the resource does not exist (404 / `ERR-03-001`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }

    /// Whether this is a conflict (409, duplicate name, app id conflict).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict(_))
    }

    /// Whether the same request may succeed if sent again later: 5xx, 429,
    /// timeouts and transport failures. The caller still decides whether the
    /// request is safe to repeat.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Server(_)
            | Error::RateLimited(_)
            | Error::Timeout { .. }
            | Error::Transport { .. } => true,
            Error::LeftBehind { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}
