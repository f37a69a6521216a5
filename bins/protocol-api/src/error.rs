//! Every error the API answers with, mapped to HTTP in one place.
//!
//! The body is always `{"error": "…"}`. 4xx messages say what to fix. A 500
//! says only that something failed (the detail goes to the log, never to the
//! caller). A 502 names the outside service and its error so the caller knows
//! what to retry; those messages never carry credentials. A full disk is a
//! 503 with `Retry-After`: nothing is lost, the caller only has to come back.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::jobs::JobError;
use crate::store::StoreError;

/// What a 503 for a full disk tells the caller to wait, in seconds.
pub const STORAGE_RETRY_AFTER_SECS: u64 = 30;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or fails validation.
    #[error("{0}")]
    BadRequest(String),
    /// No credential, or a wrong admin token.
    #[error(
        "missing or invalid credential (send Authorization: Bearer <PROTOCOL_API_ADMIN_TOKEN>, \
         or NEP413 <a NEAR wallet's signature of this request>)"
    )]
    Unauthorized,
    /// A bearer token was sent but the server has none configured.
    #[error(
        "this server has no PROTOCOL_API_ADMIN_TOKEN configured; sign the request with a NEAR \
         wallet instead (Authorization: NEP413 …)"
    )]
    Forbidden,
    /// A wallet-signed credential was refused, and why.
    #[error("wallet signature refused: {0}")]
    BadSignature(String),
    /// The signing account does not own what it asks to change.
    #[error("{0}")]
    NotOwner(String),
    /// The thing named in the path does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (e.g. a job in the wrong status).
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but cannot be processed as sent (an
    /// idempotency key reused for a different request).
    #[error("{0}")]
    Unprocessable(String),
    /// The route exists but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The body is larger than the server accepts.
    #[error("request body too large")]
    PayloadTooLarge,
    /// The body did not arrive within the body-read timeout.
    #[error("{0}")]
    BodyTimeout(String),
    /// Every connection slot is busy; the client should retry shortly.
    #[error("{message}")]
    Overloaded {
        /// What to tell the client.
        message: String,
        /// Seconds until a retry is worth it.
        retry_after_secs: u64,
    },
    /// The body is not `application/json`.
    #[error("expected a JSON body with Content-Type: application/json")]
    UnsupportedMediaType,
    /// Too many requests from this client.
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until a new request is accepted.
        retry_after_secs: u64,
    },
    /// An outside service (registry, Ensue, Phala) failed.
    #[error("upstream service failed: {0}")]
    Upstream(String),
    /// A change was sent and its outcome is not known yet: sending the
    /// request again could make it twice.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// The server cannot store anything until its storage takes writes
    /// again (a full disk, an I/O error, a database restarting).
    #[error("the server cannot store new work right now; retry in {retry_after_secs} s")]
    StorageFull {
        /// Seconds the caller should wait.
        retry_after_secs: u64,
    },
    /// A stored record cannot be read; the detail is logged only.
    #[error("the stored record of {id} is damaged and cannot be read; the server's log says why")]
    DamagedRecord {
        /// What the record is of (a job id, a DID).
        id: String,
        /// What is wrong with it (logged, not shown).
        detail: String,
    },
    /// A bug or an unexpected local failure; the detail is logged only.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::BadSignature(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotOwner(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::OutcomeUnknown(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::StorageFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DamagedRecord { .. } | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// An internal error from anything displayable (logged, not shown).
    pub fn internal(error: impl std::fmt::Display) -> Self {
        ApiError::Internal(error.to_string())
    }

    /// A full disk: the caller is told to come back in
    /// [`STORAGE_RETRY_AFTER_SECS`].
    pub fn storage_full() -> Self {
        ApiError::StorageFull {
            retry_after_secs: STORAGE_RETRY_AFTER_SECS,
        }
    }
}

/// Every error body: `{"error": "…"}`.
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        match &self {
            ApiError::Internal(detail) => tracing::error!(%detail, "internal error"),
            ApiError::DamagedRecord { id, detail } => {
                tracing::error!(record = %id, %detail, "a stored record is damaged")
            }
            ApiError::Upstream(detail) | ApiError::OutcomeUnknown(detail) => {
                tracing::warn!(%detail, "upstream error")
            }
            _ => tracing::debug!(%status, error = %self, "request rejected"),
        }
        // Most errors carry their message whole: it is written as it is.
        let message = match &self {
            ApiError::BadRequest(message)
            | ApiError::BodyTimeout(message)
            | ApiError::NotFound(message)
            | ApiError::Conflict(message)
            | ApiError::Unprocessable(message)
            | ApiError::OutcomeUnknown(message)
            | ApiError::NotOwner(message) => std::borrow::Cow::Borrowed(message.as_str()),
            other => std::borrow::Cow::Owned(other.to_string()),
        };
        let mut response = (status, Json(ErrorBody { error: &message })).into_response();
        if let ApiError::RateLimited { retry_after_secs }
        | ApiError::StorageFull { retry_after_secs }
        | ApiError::Overloaded {
            retry_after_secs, ..
        } = self
            && let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::BytesRejection(ref inner)
                if inner.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                ApiError::PayloadTooLarge
            }
            // serde's message names the field and the problem ("missing field
            // `displayName`", "invalid type: integer, expected a string").
            JsonRejection::JsonDataError(error) => {
                ApiError::BadRequest(format!("invalid request body: {}", error.body_text()))
            }
            JsonRejection::JsonSyntaxError(error) => {
                ApiError::BadRequest(format!("malformed JSON: {}", error.body_text()))
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

/// The largest error body [`json_error_body`] reads to keep its text.
const MAX_REWRITTEN_ERROR_BYTES: usize = 4 * 1024;

/// Whether `response` is an error without the `{"error": "…"}` envelope.
pub fn lacks_error_envelope(response: &Response) -> bool {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return false;
    }
    !response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"))
}

/// `response` with an error leaving as `{"error": "…"}`. The routes' own
/// errors already do; this catches the rest, such as axum's extractor
/// rejections (a path segment that is not UTF-8) and the plain-text answers
/// of tower layers. A 4xx keeps its text, which says what to fix; a 5xx says
/// only its status, so no internal detail leaks.
pub async fn json_error_body(response: Response) -> Response {
    if !lacks_error_envelope(&response) {
        return response;
    }
    let status = response.status();
    let (mut parts, body) = response.into_parts();
    let text = if status.is_client_error() {
        axum::body::to_bytes(body, MAX_REWRITTEN_ERROR_BYTES)
            .await
            .ok()
            .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
            .map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty())
    } else {
        None
    };
    let message = text.unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_ascii_lowercase()
    });
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = serde_json::to_vec(&ErrorBody { error: &message }).unwrap_or_default();
    Response::from_parts(parts, Body::from(body))
}

impl From<delibera_serve::Rejection> for ApiError {
    fn from(rejection: delibera_serve::Rejection) -> Self {
        use delibera_serve::Rejection;
        match rejection {
            Rejection::BodyTooLarge { .. } => ApiError::PayloadTooLarge,
            Rejection::BodyTimeout { .. } => ApiError::BodyTimeout(rejection.to_string()),
            other => ApiError::Overloaded {
                retry_after_secs: other.retry_after_secs().unwrap_or(1),
                message: other.to_string(),
            },
        }
    }
}

/// What the HTTP server's edge answers by itself (an early 413, a body
/// timeout, the connection cap), in the API's error envelope.
pub fn edge_rejection(rejection: delibera_serve::Rejection) -> Response {
    ApiError::from(rejection).into_response()
}

/// `axum::Json` whose rejections use the API's error envelope.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(ApiJson(value))
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Full { .. } => {
                tracing::warn!(%error, "a write was refused: the disk is full");
                ApiError::storage_full()
            }
            // The shared database is unreachable or restarting: it passes.
            StoreError::Postgres {
                transient: true, ..
            } => {
                tracing::warn!(%error, "the job database is unavailable");
                ApiError::storage_full()
            }
            StoreError::Corrupt { id, reason } => ApiError::DamagedRecord { id, detail: reason },
            StoreError::LeaseLost { .. } => ApiError::Conflict(error.to_string()),
            // A busy database or an I/O error: the same request may pass soon.
            other if other.is_transient() => {
                tracing::warn!(error = %other, "a write was refused for now");
                ApiError::storage_full()
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(error: JobError) -> Self {
        match error {
            JobError::NotFound(_) => ApiError::NotFound(error.to_string()),
            JobError::WrongRole { .. }
            | JobError::NotAwaitingSignature { .. }
            | JobError::AlreadyRegistering { .. }
            | JobError::Interrupted { .. }
            | JobError::AgentUnhealthy { .. } => ApiError::Conflict(error.to_string()),
            JobError::IdempotencyKeyReused => ApiError::Unprocessable(error.to_string()),
            JobError::Registry(error) => crate::routes::registry_error(error),
            JobError::Ensue(error) => ApiError::Upstream(format!("Ensue: {error}")),
            JobError::Store(error) => error.into(),
            JobError::Incomplete { .. } | JobError::Task(_) => ApiError::internal(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `{"error": …}` text of `error`'s answer.
    async fn answered(error: ApiError) -> String {
        let body = axum::body::to_bytes(error.into_response().into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        body["error"].as_str().unwrap().to_owned()
    }

    #[test]
    fn a_store_failure_that_passes_asks_the_caller_to_retry() {
        let sqlite = |code| StoreError::Sqlite {
            path: "/data/jobs.sqlite".into(),
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        };
        for passing in [
            sqlite(rusqlite::ffi::SQLITE_IOERR_FSYNC),
            sqlite(rusqlite::ffi::SQLITE_IOERR_WRITE),
            sqlite(rusqlite::ffi::SQLITE_IOERR_SHMSIZE),
            sqlite(rusqlite::ffi::SQLITE_BUSY),
            StoreError::Full {
                path: "/data/jobs.sqlite".into(),
            },
        ] {
            assert!(passing.is_transient(), "{passing:?}");
            let answer = ApiError::from(passing).into_response();
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                answer
                    .headers()
                    .contains_key(axum::http::header::RETRY_AFTER)
            );
        }
        for lasting in [
            sqlite(rusqlite::ffi::SQLITE_CONSTRAINT),
            sqlite(rusqlite::ffi::SQLITE_READONLY),
        ] {
            assert!(!lasting.is_transient(), "{lasting:?}");
            let answer = ApiError::from(lasting).into_response();
            assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
        }
    }

    #[tokio::test]
    async fn every_answer_says_what_the_error_displays() {
        let text = || "job \"x\" is ünknown\n".to_owned();
        for error in [
            ApiError::BadRequest(text()),
            ApiError::BodyTimeout(text()),
            ApiError::NotFound(text()),
            ApiError::Conflict(text()),
            ApiError::Unprocessable(text()),
            ApiError::OutcomeUnknown(text()),
            ApiError::NotOwner(text()),
            ApiError::BadSignature(text()),
            ApiError::MethodNotAllowed,
            ApiError::PayloadTooLarge,
        ] {
            let shown = error.to_string();
            assert_eq!(answered(error).await, shown);
        }
    }
}
