//! The HTTP routes, one module per area of the API.

pub mod agents;
pub mod provision;
pub mod workers;

use crate::error::ApiError;

/// Maps a registry failure to HTTP: a contract rule broken, or a registration
/// not (yet) as expected, is the caller's conflict (with the reason); bad
/// input is 400; anything about reaching NEAR is 502.
pub fn registry_error(error: delibera_near::Error) -> ApiError {
    use delibera_near::Error as Near;
    match error {
        Near::ContractPanic { message } => ApiError::Conflict(message),
        Near::Unconfirmed(reason) => ApiError::Conflict(reason.to_string()),
        Near::Identity(delibera_identity::Error::InvalidAccountId { .. })
        | Near::InvalidInput { .. } => ApiError::BadRequest(error.to_string()),
        Near::Storage(_) | Near::NoSigner | Near::Identity(_) => ApiError::internal(error),
        other => ApiError::Upstream(format!("NEAR registry: {other}")),
    }
}
