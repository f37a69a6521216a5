//! Where a coordinator finds the workers of a round.

use std::sync::Arc;

use delibera_identity::Did;
use delibera_near::{Registry, RegistryContract, WorkerRecord};

use crate::Result;

/// The active workers registered for a coordinator. Held as `Arc<dyn WorkerDirectory>`.
#[async_trait::async_trait]
pub trait WorkerDirectory: Send + Sync {
    /// The DIDs of `coordinator`'s active workers.
    async fn active_workers(&self, coordinator: &Did) -> Result<Vec<Did>>;
}

/// A fixed list of workers (tests, examples, a single-machine setup).
#[derive(Debug, Clone, Default)]
pub struct StaticWorkers(pub Vec<Did>);

#[async_trait::async_trait]
impl WorkerDirectory for StaticWorkers {
    async fn active_workers(&self, _coordinator: &Did) -> Result<Vec<Did>> {
        Ok(self.0.clone())
    }
}

/// Workers from any [`Registry`] (the server's local registry in local mode):
/// its active workers whose `coordinator_did` is this coordinator.
#[derive(Clone)]
pub struct RegistryWorkers(pub Arc<dyn Registry>);

impl std::fmt::Debug for RegistryWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RegistryWorkers").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl WorkerDirectory for RegistryWorkers {
    async fn active_workers(&self, coordinator: &Did) -> Result<Vec<Did>> {
        let records = self.0.list_active_workers().await?;
        Ok(dids_of(records.iter().filter(|record| {
            record.coordinator_did == coordinator.as_str()
        })))
    }
}

/// Workers from the NEAR registry contract's `get_workers_for_coordinator`
/// view (production).
#[async_trait::async_trait]
impl WorkerDirectory for RegistryContract {
    async fn active_workers(&self, coordinator: &Did) -> Result<Vec<Did>> {
        let records = self
            .get_workers_for_coordinator(coordinator.as_str())
            .await?;
        Ok(dids_of(records.iter()))
    }
}

/// Active records' DIDs; a record whose DID is not a `did:key` cannot take
/// part in a round and is skipped with a warning.
fn dids_of<'a>(records: impl Iterator<Item = &'a WorkerRecord>) -> Vec<Did> {
    records
        .filter(|record| record.is_active)
        .filter_map(|record| match record.worker_did.parse::<Did>() {
            Ok(did) => Some(did),
            Err(error) => {
                tracing::warn!(worker = %record.worker_did, %error, "skipping a worker whose DID is not a did:key");
                None
            }
        })
        .collect()
}
