//! The HTTP routes, one module per area of the API.

pub mod agents;
pub mod provision;
pub mod workers;

use crate::error::ApiError;

/// Maps a registry failure to HTTP: a contract rule broken, or a registration
/// not (yet) as expected, is the caller's conflict (with the reason); bad
/// input is 400; a full disk under the local registry is 503; anything about
/// reaching NEAR is 502.
pub fn registry_error(error: delibera_near::Error) -> ApiError {
    use delibera_near::Error as Near;
    match error {
        Near::ContractPanic { message } => ApiError::Conflict(message),
        Near::Unconfirmed(reason) => ApiError::Conflict(reason.to_string()),
        Near::Identity(delibera_identity::Error::InvalidAccountId { .. })
        | Near::InvalidInput { .. } => ApiError::BadRequest(error.to_string()),
        // The local registry's file on a full disk: come back later.
        Near::Storage(ref sqlite)
            if sqlite.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) =>
        {
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
    fn a_full_disk_under_the_local_registry_is_503() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let error = registry_error(delibera_near::Error::Storage(full));
        assert_eq!(
            error.status_code(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
