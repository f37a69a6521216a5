//! Typed clients of the registry contract and the coordinator contract's
//! worker roster. Record field names are the contracts' JSON names.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{AccountId, BlockReference, Error, FunctionCall, NearRpc, Result, TransactionSender};

/// The registry contract on testnet.
pub const TESTNET_REGISTRY_CONTRACT_ID: &str = "registry.agents-coordinator.testnet";
/// The registry contract on mainnet.
pub const MAINNET_REGISTRY_CONTRACT_ID: &str = "registry.agents-coordinator.near";
/// The coordinator contract on testnet.
pub const TESTNET_COORDINATOR_CONTRACT_ID: &str = "coordinator.agents-coordinator.testnet";
/// The coordinator contract on mainnet.
pub const MAINNET_COORDINATOR_CONTRACT_ID: &str = "coordinator.agents-coordinator.near";
/// The public FastNEAR RPC on testnet (what the TypeScript agents use).
pub const TESTNET_RPC_URL: &str = "https://test.rpc.fastnear.com";
/// The public FastNEAR RPC on mainnet (what the TypeScript agents use).
pub const MAINNET_RPC_URL: &str = "https://rpc.fastnear.com";

/// Gas for the registry's and roster's change methods (30 Tgas; they only touch storage).
pub const CHANGE_CALL_GAS: u64 = 30_000_000_000_000;

/// A worker in the registry, keyed by `worker_did`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// The account that registered it (its owner).
    pub account_id: AccountId,
    /// The coordinator it works for.
    pub coordinator_did: String,
    /// The worker's DID.
    pub worker_did: String,
    /// Where the worker is reachable.
    pub endpoint_url: String,
    /// Its Phala CVM id (may be empty).
    pub cvm_id: String,
    /// Block timestamp of the (last) registration, in nanoseconds.
    #[serde(deserialize_with = "crate::serde_u64::number_or_string")]
    pub registered_at: u64,
    /// Whether it is active.
    pub is_active: bool,
}

/// A coordinator in the registry, keyed by `coordinator_did`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorRecord {
    /// The account that registered it (its owner).
    pub account_id: AccountId,
    /// The coordinator's DID.
    pub coordinator_did: String,
    /// Where the coordinator is reachable.
    pub endpoint_url: String,
    /// Its Phala CVM id (may be empty).
    pub cvm_id: String,
    /// Workers needed for a quorum.
    pub min_workers: u8,
    /// Workers it will use at most.
    pub max_workers: u8,
    /// Block timestamp of the (last) registration, in nanoseconds.
    #[serde(deserialize_with = "crate::serde_u64::number_or_string")]
    pub registered_at: u64,
    /// Whether it is active.
    pub is_active: bool,
}

/// `get_stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryStats {
    /// Coordinators ever registered.
    pub total_coordinators: u64,
    /// Active coordinators.
    pub active_coordinators: u64,
    /// Workers ever registered.
    pub total_workers: u64,
    /// Active workers.
    pub active_workers: u64,
}

/// The arguments of `register_coordinator` (an upsert keyed by the DID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorRegistration {
    /// Must start with `did:`.
    pub coordinator_did: String,
    /// Where the coordinator is reachable.
    pub endpoint_url: String,
    /// Its Phala CVM id.
    pub cvm_id: String,
    /// At most `max_workers`.
    pub min_workers: u8,
    /// Above 0.
    pub max_workers: u8,
}

/// The arguments of `register_worker` (an upsert keyed by the worker DID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRegistration {
    /// An existing, active coordinator.
    pub coordinator_did: String,
    /// Must start with `did:`.
    pub worker_did: String,
    /// Where the worker is reachable.
    pub endpoint_url: String,
    /// Its Phala CVM id.
    pub cvm_id: String,
}

/// A worker on a coordinator contract's roster (`get_registered_workers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredWorker {
    /// The worker's id (its DID in Delibera).
    pub worker_id: String,
    /// The worker's NEAR account, if given.
    pub account_id: Option<AccountId>,
    /// Block timestamp of the registration, in nanoseconds.
    #[serde(deserialize_with = "crate::serde_u64::number_or_string")]
    pub registered_at: u64,
    /// The owner or coordinator account that registered it.
    pub registered_by: AccountId,
    /// Whether it may take part.
    pub active: bool,
}

/// The registry contract: views over RPC, change calls signed in-process.
#[derive(Debug, Clone)]
pub struct RegistryContract {
    contract: Contract,
}

impl RegistryContract {
    /// A view-only client.
    pub fn new(rpc: NearRpc, contract_id: AccountId) -> Self {
        Self {
            contract: Contract::new(rpc, contract_id, None),
        }
    }

    /// A client that can also sign change calls as `sender`'s account.
    pub fn with_sender(sender: TransactionSender, contract_id: AccountId) -> Self {
        Self {
            contract: Contract::new(sender.rpc().clone(), contract_id, Some(sender)),
        }
    }

    /// The contract account.
    pub fn contract_id(&self) -> &AccountId {
        &self.contract.id
    }

    /// The same client, its views reading `block` instead of the latest
    /// final block (e.g. `Optimistic`, to see a transaction that just executed).
    pub fn reading_at(mut self, block: BlockReference) -> Self {
        self.contract.block = block;
        self
    }

    /// The signer's account, if this client can sign.
    pub fn signer_account(&self) -> Option<&AccountId> {
        self.contract
            .sender
            .as_ref()
            .map(|sender| sender.signer().account_id())
    }

    /// `get_worker_by_did`.
    pub async fn get_worker_by_did(&self, worker_did: &str) -> Result<Option<WorkerRecord>> {
        self.contract
            .view("get_worker_by_did", json!({ "worker_did": worker_did }))
            .await
    }

    /// `get_coordinator_by_did`.
    pub async fn get_coordinator_by_did(
        &self,
        coordinator_did: &str,
    ) -> Result<Option<CoordinatorRecord>> {
        self.contract
            .view(
                "get_coordinator_by_did",
                json!({ "coordinator_did": coordinator_did }),
            )
            .await
    }

    /// `get_workers_for_coordinator`: the coordinator's active workers.
    pub async fn get_workers_for_coordinator(
        &self,
        coordinator_did: &str,
    ) -> Result<Vec<WorkerRecord>> {
        self.contract
            .view(
                "get_workers_for_coordinator",
                json!({ "coordinator_did": coordinator_did }),
            )
            .await
    }

    /// `list_active_workers`.
    pub async fn list_active_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.contract.view("list_active_workers", json!({})).await
    }

    /// `list_active_coordinators`.
    pub async fn list_active_coordinators(&self) -> Result<Vec<CoordinatorRecord>> {
        self.contract
            .view("list_active_coordinators", json!({}))
            .await
    }

    /// `get_stats`.
    pub async fn get_stats(&self) -> Result<RegistryStats> {
        self.contract.view("get_stats", json!({})).await
    }

    /// `get_min_deposit`, in yoctoNEAR (the contract returns a decimal string).
    pub async fn get_min_deposit(&self) -> Result<u128> {
        let text: String = self.contract.view("get_min_deposit", json!({})).await?;
        text.parse().map_err(|_| {
            Error::invalid_response("get_min_deposit", format!("not a yocto amount: {text:?}"))
        })
    }

    /// `register_coordinator`, attaching `get_min_deposit`.
    pub async fn register_coordinator(
        &self,
        registration: &CoordinatorRegistration,
    ) -> Result<CoordinatorRecord> {
        let deposit = self.get_min_deposit().await?;
        self.contract
            .change("register_coordinator", to_args(registration)?, deposit)
            .await?
            .json()
    }

    /// `register_worker`, attaching `get_min_deposit`.
    pub async fn register_worker(&self, registration: &WorkerRegistration) -> Result<WorkerRecord> {
        let deposit = self.get_min_deposit().await?;
        self.contract
            .change("register_worker", to_args(registration)?, deposit)
            .await?
            .json()
    }

    /// `update_worker_endpoint` (the worker's owner or the admin only).
    pub async fn update_worker_endpoint(&self, worker_did: &str, endpoint_url: &str) -> Result<()> {
        self.contract
            .change(
                "update_worker_endpoint",
                json!({ "worker_did": worker_did, "endpoint_url": endpoint_url }),
                0,
            )
            .await
            .map(drop)
    }

    /// `deactivate_worker` (the worker's owner or the admin only).
    pub async fn deactivate_worker(&self, worker_did: &str) -> Result<()> {
        self.contract
            .change("deactivate_worker", json!({ "worker_did": worker_did }), 0)
            .await
            .map(drop)
    }

    /// `deactivate_coordinator` (the coordinator's owner or the admin only).
    pub async fn deactivate_coordinator(&self, coordinator_did: &str) -> Result<()> {
        self.contract
            .change(
                "deactivate_coordinator",
                json!({ "coordinator_did": coordinator_did }),
                0,
            )
            .await
            .map(drop)
    }
}

/// A coordinator contract's worker roster.
#[derive(Debug, Clone)]
pub struct CoordinatorContract {
    contract: Contract,
}

impl CoordinatorContract {
    /// A view-only client.
    pub fn new(rpc: NearRpc, contract_id: AccountId) -> Self {
        Self {
            contract: Contract::new(rpc, contract_id, None),
        }
    }

    /// A client that can also sign change calls as `sender`'s account.
    pub fn with_sender(sender: TransactionSender, contract_id: AccountId) -> Self {
        Self {
            contract: Contract::new(sender.rpc().clone(), contract_id, Some(sender)),
        }
    }

    /// The contract account.
    pub fn contract_id(&self) -> &AccountId {
        &self.contract.id
    }

    /// The same client, its views reading `block` instead of the latest
    /// final block (e.g. `Optimistic`, to see a transaction that just executed).
    pub fn reading_at(mut self, block: BlockReference) -> Self {
        self.contract.block = block;
        self
    }

    /// `register_worker(worker_id, account_id?)` (the owner or a registered coordinator only).
    pub async fn register_worker(
        &self,
        worker_id: &str,
        account_id: Option<&AccountId>,
    ) -> Result<()> {
        self.change(
            "register_worker",
            json!({ "worker_id": worker_id, "account_id": account_id }),
        )
        .await
    }

    /// `remove_worker(worker_id)` (the owner only).
    pub async fn remove_worker(&self, worker_id: &str) -> Result<()> {
        self.change("remove_worker", json!({ "worker_id": worker_id }))
            .await
    }

    /// `get_registered_workers`: the whole roster, active or not.
    pub async fn get_registered_workers(&self) -> Result<Vec<RegisteredWorker>> {
        self.contract
            .view("get_registered_workers", json!({}))
            .await
    }

    /// `get_owner`: the account that owns the contract (and the roster).
    pub async fn get_owner(&self) -> Result<AccountId> {
        self.contract.view("get_owner", json!({})).await
    }

    /// `get_worker_count`: active workers on the roster.
    pub async fn get_worker_count(&self) -> Result<u32> {
        self.contract.view("get_worker_count", json!({})).await
    }

    async fn change(&self, method: &str, args: Value) -> Result<()> {
        self.contract.change(method, args, 0).await.map(drop)
    }
}

/// One contract: views over RPC, and change calls when a sender can sign them.
#[derive(Debug, Clone)]
struct Contract {
    rpc: NearRpc,
    id: AccountId,
    sender: Option<TransactionSender>,
    block: BlockReference,
}

impl Contract {
    fn new(rpc: NearRpc, id: AccountId, sender: Option<TransactionSender>) -> Self {
        Self {
            rpc,
            id,
            sender,
            block: BlockReference::Final,
        }
    }

    async fn view<T: serde::de::DeserializeOwned>(&self, method: &str, args: Value) -> Result<T> {
        self.rpc.view_at(&self.id, method, &args, &self.block).await
    }

    async fn change(
        &self,
        method: &str,
        args: Value,
        deposit: u128,
    ) -> Result<crate::ExecutionOutcome> {
        let sender = self.sender.as_ref().ok_or(Error::NoSigner)?;
        sender
            .function_call(
                &self.id,
                FunctionCall::json(method, &args, CHANGE_CALL_GAS, deposit),
            )
            .await
    }
}

fn to_args<T: Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|error| Error::InvalidInput {
        what: "contract arguments",
        reason: error.to_string(),
    })
}
