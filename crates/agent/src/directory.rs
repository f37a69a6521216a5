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

    /// `coordinator`'s workers as its dashboard lists them. By default its
    /// active workers, with nothing known about their registration.
    async fn roster(&self, coordinator: &Did) -> Result<Vec<WorkerListing>> {
        Ok(self
            .active_workers(coordinator)
            .await?
            .into_iter()
            .map(|did| WorkerListing {
                did,
                endpoint_url: None,
                is_active: true,
                registered_at_ms: None,
            })
            .collect())
    }
}

/// A worker as a coordinator's roster shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerListing {
    /// The worker.
    pub did: Did,
    /// Where it is reachable, when the directory records it.
    pub endpoint_url: Option<String>,
    /// Whether it takes part in rounds.
    pub is_active: bool,
    /// When it registered, in Unix milliseconds, when the directory records it.
    pub registered_at_ms: Option<u64>,
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

    async fn roster(&self, coordinator: &Did) -> Result<Vec<WorkerListing>> {
        let records = self.0.list_active_workers().await?;
        Ok(listings_of(records.iter().filter(|record| {
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

    async fn roster(&self, coordinator: &Did) -> Result<Vec<WorkerListing>> {
        let records = self
            .get_workers_for_coordinator(coordinator.as_str())
            .await?;
        Ok(listings_of(records.iter()))
    }
}

/// Every record (active or not) as a listing; the registry's nanosecond
/// timestamps become milliseconds, which a JavaScript number holds exactly.
fn listings_of<'a>(records: impl Iterator<Item = &'a WorkerRecord>) -> Vec<WorkerListing> {
    records
        .filter_map(|record| match record.worker_did.parse::<Did>() {
            Ok(did) => Some(WorkerListing {
                did,
                endpoint_url: Some(record.endpoint_url.clone()),
                is_active: record.is_active,
                registered_at_ms: Some(record.registered_at / 1_000_000),
            }),
            Err(error) => {
                tracing::warn!(worker = %record.worker_did, %error, "skipping a worker whose DID is not a did:key");
                None
            }
        })
        .collect()
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
