//! The `Registry` port the Protocol API server uses, and its NEAR implementation.

use std::sync::Arc;

use async_trait::async_trait;

use crate::messages;
use crate::{
    AccountId, CoordinatorContract, CoordinatorRecord, CoordinatorRegistration, Error,
    RegisteredWorker, RegistryContract, Result, WorkerRecord, WorkerRegistration,
};

/// A new endpoint for a registered agent (`PUT /api/agents/:agentId/endpoint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUpdate {
    /// The agent's DID.
    pub did: String,
    /// The new public endpoint URL.
    pub endpoint_url: String,
    /// A new CVM id, or `None` to keep the current one.
    pub cvm_id: Option<String>,
}

impl EndpointUpdate {
    /// The CVM id this update changes a worker's to, when it changes it:
    /// only then must the worker be registered again (the contract's
    /// `update_worker_endpoint` changes the endpoint alone).
    pub(crate) fn new_worker_cvm<'a>(&'a self, current: &WorkerRecord) -> Option<&'a str> {
        self.cvm_id
            .as_deref()
            .filter(|cvm_id| *cvm_id != current.cvm_id)
    }

    /// The worker re-registration this update means for `current`, signed
    /// by `signer`: the new endpoint and CVM id, every other field kept.
    pub(crate) fn reregister_worker(
        &self,
        current: WorkerRecord,
        cvm_id: &str,
        signer: &AccountId,
    ) -> Result<WorkerRegistration> {
        may_register_again(
            &current.worker_did,
            &current.account_id,
            current.is_active,
            signer,
        )?;
        Ok(WorkerRegistration {
            coordinator_did: current.coordinator_did,
            worker_did: current.worker_did,
            endpoint_url: self.endpoint_url.clone(),
            cvm_id: cvm_id.to_owned(),
        })
    }

    /// The coordinator re-registration this update means for `current`,
    /// signed by `signer`: the new endpoint (and CVM id, if given), every
    /// other field kept.
    pub(crate) fn reregister_coordinator(
        &self,
        current: CoordinatorRecord,
        signer: &AccountId,
    ) -> Result<CoordinatorRegistration> {
        may_register_again(
            &current.coordinator_did,
            &current.account_id,
            current.is_active,
            signer,
        )?;
        Ok(CoordinatorRegistration {
            coordinator_did: current.coordinator_did,
            endpoint_url: self.endpoint_url.clone(),
            cvm_id: self.cvm_id.clone().unwrap_or(current.cvm_id),
            min_workers: current.min_workers,
            max_workers: current.max_workers,
        })
    }
}

/// Whether `signer` may register a record again to change it: the contract
/// makes the signer of a registration the record's owner and switches the
/// record on, so registering someone else's record, or a deactivated one,
/// would change more than the caller asked for.
fn may_register_again(
    did: &str,
    owner: &AccountId,
    is_active: bool,
    signer: &AccountId,
) -> Result<()> {
    let reason = if owner != signer {
        format!(
            "registering it again as {signer} would make {signer} its owner instead of \
             {owner}; {owner} can register it again from their wallet"
        )
    } else if !is_active {
        "registering it again would switch it back on, though it was deactivated".to_owned()
    } else {
        return Ok(());
    };
    Err(Error::WouldReregister {
        did: did.to_owned(),
        reason,
    })
}

/// What the Protocol API server needs from the registry and the coordinator
/// contract's worker roster.
///
/// Rule violations come back as [`Error::ContractPanic`] carrying the
/// contract's `require!` text, from either implementation.
#[async_trait]
pub trait Registry: Send + Sync {
    /// Active coordinators (`GET /api/agents/endpoints`).
    async fn list_active_coordinators(&self) -> Result<Vec<CoordinatorRecord>>;

    /// Active workers (`GET /api/agents/endpoints`).
    async fn list_active_workers(&self) -> Result<Vec<WorkerRecord>>;

    /// One coordinator by DID, active or not (`GET /api/agents/:id/endpoint`,
    /// the `coordinator-register` check).
    async fn coordinator_by_did(&self, coordinator_did: &str) -> Result<Option<CoordinatorRecord>>;

    /// One worker by DID, active or not (`GET /api/agents/:id/endpoint`, the
    /// `register` check).
    async fn worker_by_did(&self, worker_did: &str) -> Result<Option<WorkerRecord>>;

    /// Changes a worker's endpoint (and optionally its CVM id), acting as the
    /// server's account. The endpoint alone (or with the CVM id it has) goes
    /// through `update_worker_endpoint`; a new CVM id re-registers the record
    /// with its other fields kept, which the contract's upsert would make the
    /// caller's and switch on, so only a record the server's account owns and
    /// that is active is re-registered: any other is [`Error::WouldReregister`].
    async fn update_worker_endpoint(&self, update: &EndpointUpdate) -> Result<()>;

    /// Changes a coordinator's endpoint (and optionally its CVM id), acting as
    /// the server's account: the contract has no endpoint-only method for
    /// coordinators, so the record is re-registered with its other fields
    /// kept, if the server's account owns it and it is active; any other is
    /// [`Error::WouldReregister`], and its owner registers it again instead.
    async fn update_coordinator_endpoint(&self, update: &EndpointUpdate) -> Result<()>;

    /// The coordinator contract's whole roster (`GET /api/workers/registered`).
    async fn roster(&self) -> Result<Vec<RegisteredWorker>>;

    /// Adds (or replaces) a worker on the roster as the server's account
    /// (`POST /api/workers/register`).
    async fn roster_register(&self, worker_id: &str, account_id: Option<&AccountId>) -> Result<()>;

    /// Removes a worker from the roster as the server's account
    /// (`DELETE /api/workers/:workerId`).
    async fn roster_remove(&self, worker_id: &str) -> Result<()>;

    /// [`list_active_coordinators`](Self::list_active_coordinators), shared:
    /// a cache hands out the same allocation for as long as the answer
    /// holds, so a caller may keep what it derived from it while
    /// [`Arc::ptr_eq`] says the answer is the same.
    async fn active_coordinators_shared(&self) -> Result<Arc<Vec<CoordinatorRecord>>> {
        self.list_active_coordinators().await.map(Arc::new)
    }

    /// [`list_active_workers`](Self::list_active_workers), shared (see
    /// [`active_coordinators_shared`](Self::active_coordinators_shared)).
    async fn active_workers_shared(&self) -> Result<Arc<Vec<WorkerRecord>>> {
        self.list_active_workers().await.map(Arc::new)
    }

    /// [`roster`](Self::roster), shared (see
    /// [`active_coordinators_shared`](Self::active_coordinators_shared)).
    async fn roster_shared(&self) -> Result<Arc<Vec<RegisteredWorker>>> {
        self.roster().await.map(Arc::new)
    }
}

/// [`Registry`] over NEAR: view calls, and change calls signed with the
/// server's key.
#[derive(Debug, Clone)]
pub struct RpcRegistry {
    registry: RegistryContract,
    roster: CoordinatorContract,
}

impl RpcRegistry {
    /// A registry over these two contract clients (both need a sender for change calls).
    pub fn new(registry: RegistryContract, roster: CoordinatorContract) -> Self {
        Self { registry, roster }
    }
}

fn not_found(message: &str) -> Error {
    Error::ContractPanic {
        message: message.to_owned(),
    }
}

#[async_trait]
impl Registry for RpcRegistry {
    async fn list_active_coordinators(&self) -> Result<Vec<CoordinatorRecord>> {
        self.registry.list_active_coordinators().await
    }

    async fn list_active_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.registry.list_active_workers().await
    }

    async fn coordinator_by_did(&self, coordinator_did: &str) -> Result<Option<CoordinatorRecord>> {
        self.registry.get_coordinator_by_did(coordinator_did).await
    }

    async fn worker_by_did(&self, worker_did: &str) -> Result<Option<WorkerRecord>> {
        self.registry.get_worker_by_did(worker_did).await
    }

    async fn update_worker_endpoint(&self, update: &EndpointUpdate) -> Result<()> {
        if update.cvm_id.is_some() {
            let current = self
                .registry
                .get_worker_by_did(&update.did)
                .await?
                .ok_or_else(|| not_found(messages::WORKER_NOT_FOUND))?;
            if let Some(cvm_id) = update.new_worker_cvm(&current) {
                let signer = self.registry.signer_account().ok_or(Error::NoSigner)?;
                let registration = update.reregister_worker(current, cvm_id, signer)?;
                return self.registry.register_worker(&registration).await.map(drop);
            }
        }
        self.registry
            .update_worker_endpoint(&update.did, &update.endpoint_url)
            .await
    }

    async fn update_coordinator_endpoint(&self, update: &EndpointUpdate) -> Result<()> {
        let current = self
            .registry
            .get_coordinator_by_did(&update.did)
            .await?
            .ok_or_else(|| not_found(messages::COORDINATOR_NOT_FOUND))?;
        let signer = self.registry.signer_account().ok_or(Error::NoSigner)?;
        let registration = update.reregister_coordinator(current, signer)?;
        self.registry
            .register_coordinator(&registration)
            .await
            .map(drop)
    }

    async fn roster(&self) -> Result<Vec<RegisteredWorker>> {
        self.roster.get_registered_workers().await
    }

    async fn roster_register(&self, worker_id: &str, account_id: Option<&AccountId>) -> Result<()> {
        self.roster.register_worker(worker_id, account_id).await
    }

    async fn roster_remove(&self, worker_id: &str) -> Result<()> {
        self.roster.remove_worker(worker_id).await
    }
}
