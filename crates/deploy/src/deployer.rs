//! The `Deployer` port: where agents run.

use async_trait::async_trait;

use crate::{AgentSpec, Deployment, DeploymentName, DeploymentStatus, Result};

/// Runs agents and removes them again; held by the server as `Arc<dyn Deployer>`.
///
/// A deployment's [`DeploymentName`](crate::DeploymentName) is its
/// idempotency key: a caller that does not know whether an earlier `deploy`
/// went through (it crashed, or the call timed out) asks
/// [`find`](Deployer::find) first and adopts what it finds, so an agent is
/// never paid for twice.
#[async_trait]
pub trait Deployer: Send + Sync {
    /// Starts the agent of `spec` under `spec.name` and returns where it will
    /// answer. Does not wait for it to be healthy (see [`HealthGate`](crate::HealthGate)).
    async fn deploy(&self, spec: &AgentSpec) -> Result<Deployment>;

    /// The deployment made under `spec.name`, if there is one, with its
    /// endpoint for `spec`'s port.
    async fn find(&self, spec: &AgentSpec) -> Result<Option<Deployment>>;

    /// A deployment's current status.
    async fn status(&self, id: &str) -> Result<DeploymentStatus>;

    /// Removes a deployment so it stops running (and costing money). Removing
    /// one that is already gone succeeds.
    async fn teardown(&self, id: &str) -> Result<()>;

    /// Removes the deployment made under `name`, if there is one, and says
    /// whether there was: the teardown of a deploy that failed after the
    /// backend may have made it, its id unknown
    /// ([`Error::LeftBehind`](crate::Error::LeftBehind) without an id).
    async fn teardown_named(&self, name: &DeploymentName) -> Result<bool>;
}
