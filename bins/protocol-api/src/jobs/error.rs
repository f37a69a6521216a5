//! Why a job operation was refused or failed; converted to HTTP in `error.rs`.

use uuid::Uuid;

use super::JobStatus;
use crate::store::StoreError;
use delibera_deploy::AgentRole;

/// A refused or failed job operation.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No job has this id.
    #[error("no job {0:?}")]
    NotFound(String),
    /// The job provisions the other role (each role has its own registration route).
    #[error("job {job} provisions a {role}; finish it with {route}")]
    WrongRole {
        /// The job.
        job: Uuid,
        /// The role it provisions.
        role: AgentRole,
        /// The route that finishes it.
        route: &'static str,
    },
    /// The job is not waiting for its wallet signature.
    #[error("job {job} is {}, not awaiting_near_signature", status.as_str())]
    NotAwaitingSignature {
        /// The job.
        job: Uuid,
        /// Where it is.
        status: JobStatus,
    },
    /// Another call is registering the job right now.
    #[error("job {job} is already being registered")]
    AlreadyRegistering {
        /// The job.
        job: Uuid,
    },
    /// An idempotency key already started a job, for a different request.
    #[error(
        "this Idempotency-Key was already used for a different request; send a new key with a new request"
    )]
    IdempotencyKeyReused,
    /// The agent does not answer its health check, so it is not registered.
    #[error(
        "job {job}: the agent does not answer its health check, so it was not registered ({reason}); \
         the job stays at awaiting_near_signature"
    )]
    AgentUnhealthy {
        /// The job.
        job: Uuid,
        /// What the health check saw.
        reason: String,
    },
    /// The registry refused or could not confirm the registration.
    #[error(transparent)]
    Registry(#[from] delibera_near::Error),
    /// Ensue failed while the agent was announced.
    #[error("Ensue: {0}")]
    Ensue(#[from] delibera_ensue::Error),
    /// A job's record lacks what its status promises (a bug, or a damaged record).
    #[error("job {job} has no {what} at the wallet step")]
    Incomplete {
        /// The job.
        job: Uuid,
        /// What is missing.
        what: &'static str,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registration stopped here before it finished: this server lost
    /// the job's lease, or is stopping. Whoever holds the job next finishes it.
    #[error(
        "job {job}'s registration was interrupted on this server; it is finished from its last \
         saved step by whichever server carries the job on: follow the job's status"
    )]
    Interrupted {
        /// The job.
        job: Uuid,
    },
    /// A detached task ended abnormally.
    #[error("registration task failed: {0}")]
    Task(String),
}
