//! The HTTP routes, one module per seed section.

pub mod agents;
pub mod provision;
pub mod workers;

use crate::error::ApiError;

/// Maps a registry failure to HTTP: a contract rule broken is the caller's
/// conflict (with the contract's message); bad input is 400; anything about
/// reaching NEAR is 502.
pub fn registry_error(error: delibera_near::Error) -> ApiError {
    use delibera_near::Error as Near;
    match error {
        Near::ContractPanic { message } => ApiError::Conflict(message),
        Near::Identity(delibera_identity::Error::InvalidAccountId { .. })
        | Near::InvalidInput { .. } => ApiError::BadRequest(error.to_string()),
        Near::Storage(_) | Near::NotSigner { .. } | Near::NoSigner | Near::Identity(_) => {
            ApiError::internal(error)
        }
        other => ApiError::Upstream(format!("NEAR registry: {other}")),
    }
}
