//! The HTTP routes, one module per area of the API.

pub mod agents;
pub mod provision;
pub mod workers;

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The last body rendered from two shared registry answers, reused while
/// the registry hands out the same answers (the same allocations: a cache
/// keeps them until it fetches again or forgets them on a write), so a large
/// list is not serialised again for every request.
pub struct Rendered<A, B> {
    last: Mutex<Option<RenderedFrom<A, B>>>,
}

/// A body and the answers it was rendered from.
type RenderedFrom<A, B> = (Arc<A>, Arc<B>, Bytes);

impl<A, B> Default for Rendered<A, B> {
    fn default() -> Self {
        Self {
            last: Mutex::new(None),
        }
    }
}

impl<A, B> Rendered<A, B> {
    /// The body for `first` and `second`: the last one if it was rendered
    /// from these very answers, else `render`'s (kept for next time).
    pub fn get_or_render(
        &self,
        first: &Arc<A>,
        second: &Arc<B>,
        render: impl FnOnce(&A, &B) -> Result<Vec<u8>, ApiError>,
    ) -> Result<Bytes, ApiError> {
        if let Some((a, b, body)) = &*self.last.lock().unwrap_or_else(PoisonError::into_inner)
            && Arc::ptr_eq(a, first)
            && Arc::ptr_eq(b, second)
        {
            return Ok(body.clone());
        }
        let body = Bytes::from(render(first, second)?);
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((first.clone(), second.clone(), body.clone()));
        Ok(body)
    }
}

/// The last `GET /` body: it changes only with its timestamp, which counts
/// milliseconds, so the requests of one millisecond share one rendering.
#[derive(Default)]
pub struct RenderedHealth {
    last: Mutex<Option<HealthRendered>>,
}

/// A `GET /` body and what it was rendered from.
struct HealthRendered {
    millisecond: i64,
    mode: &'static str,
    ensue_url: Option<String>,
    body: Bytes,
}

impl RenderedHealth {
    /// The body at `now` for `mode` and `ensue_url`: the last one if it was
    /// rendered in the same millisecond from the same values, else
    /// `render`'s (kept for the next request).
    pub fn get_or_render(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        mode: &'static str,
        ensue_url: Option<&str>,
        render: impl FnOnce() -> Result<Vec<u8>, ApiError>,
    ) -> Result<Bytes, ApiError> {
        let millisecond = now.timestamp_millis();
        if let Some(last) = &*self.last.lock().unwrap_or_else(PoisonError::into_inner)
            && last.millisecond == millisecond
            && last.mode == mode
            && last.ensue_url.as_deref() == ensue_url
        {
            return Ok(last.body.clone());
        }
        let body = Bytes::from(render()?);
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(HealthRendered {
            millisecond,
            mode,
            ensue_url: ensue_url.map(str::to_owned),
            body: body.clone(),
        });
        Ok(body)
    }
}

/// A JSON response of an already serialised body.
pub fn json_body(body: impl Into<axum::body::Body>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.into(),
    )
        .into_response()
}

/// Maps a registry failure to HTTP: a contract rule broken, or a registration
/// not (yet) as expected, is the caller's conflict (with the reason); bad
/// input is 400; a full disk under the local registry is 503; anything about
/// reaching NEAR is 502.
pub fn registry_error(error: delibera_near::Error) -> ApiError {
    use delibera_near::Error as Near;
    match error {
        Near::ContractPanic { message } => ApiError::Conflict(message),
        Near::Unconfirmed(reason) => ApiError::Conflict(reason.to_string()),
        Near::WouldReregister { .. } => ApiError::Conflict(error.to_string()),
        // Not a plain 502: a caller that retried would sign the change again.
        Near::TransactionPending { tx_hash } => ApiError::OutcomeUnknown(format!(
            "the NEAR transaction {tx_hash} was sent and its outcome is not known yet; look it \
             up before sending this request again, or the change may be made twice"
        )),
        Near::Identity(delibera_identity::Error::InvalidAccountId { .. })
        | Near::InvalidInput { .. } => ApiError::BadRequest(error.to_string()),
        // The local registry's file on a full disk, failing I/O or busy:
        // come back later, as for the job store.
        Near::Storage(ref sqlite) if crate::store::sqlite_failure_passes(sqlite) => {
            ApiError::storage_full()
        }
        Near::Storage(_) | Near::DataDir(_) | Near::NoSigner | Near::Identity(_) => {
            ApiError::internal(error)
        }
        other => ApiError::Upstream(format!("NEAR registry: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_of_unknown_outcome_is_504_naming_its_hash() {
        let error = registry_error(delibera_near::Error::TransactionPending {
            tx_hash: "8Ha8aXpvTrp1QAqkbGcqNW7rPp5bLg3QoL1tj7KQ9dt1".into(),
        });
        assert_eq!(error.status_code(), axum::http::StatusCode::GATEWAY_TIMEOUT);
        let message = error.to_string();
        assert!(
            message.contains("8Ha8aXpvTrp1QAqkbGcqNW7rPp5bLg3QoL1tj7KQ9dt1"),
            "{message}"
        );
    }

    #[test]
    fn a_store_fault_under_the_local_registry_that_passes_is_503() {
        let failure = |code| {
            registry_error(delibera_near::Error::Storage(
                rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
            ))
            .status_code()
        };
        for passing in [
            rusqlite::ffi::SQLITE_FULL,
            rusqlite::ffi::SQLITE_IOERR_FSYNC,
            rusqlite::ffi::SQLITE_BUSY,
        ] {
            assert_eq!(
                failure(passing),
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            );
        }
        assert_eq!(
            failure(rusqlite::ffi::SQLITE_CORRUPT),
            axum::http::StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
