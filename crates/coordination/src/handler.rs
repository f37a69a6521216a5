//! The `TaskHandler` port: how a worker turns a task into a vote.

use crate::{Ballot, Result, TaskDefinition};

/// Decides a worker's vote on a task.
///
/// The worker loop calls it once per round, under a deadline; an `Err`, a
/// panic or a timeout is reported as `failed` with the error text. Held as
/// `Arc<dyn TaskHandler>`; implement it with
/// [`#[delibera_coordination::async_trait]`](crate::async_trait).
#[async_trait::async_trait]
pub trait TaskHandler: Send + Sync {
    /// Votes on `task`, explaining why.
    async fn handle(&self, task: &TaskDefinition) -> Result<Ballot>;
}
