#![doc = include_str!("../README.md")]

mod accounts;
mod cache;
mod contracts;
mod error;
mod js_json;
mod local;
pub mod messages;
mod nep413;
mod outcome;
mod registrar;
mod registry;
mod rpc;
mod sender;
mod serde_u64;
mod transaction;

pub use accounts::{Accounts, KeyPermission, RpcAccounts, implicit_account};
pub use cache::{
    CachedAccounts, CachedRegistry, DEFAULT_REGISTRY_CACHE_TTL, InvalidatingRegistrar,
};
pub use contracts::{
    CHANGE_CALL_GAS, CoordinatorContract, CoordinatorRecord, CoordinatorRegistration,
    MAINNET_COORDINATOR_CONTRACT_ID, MAINNET_REGISTRY_CONTRACT_ID, MAINNET_RPC_URL,
    RegisteredWorker, RegistryContract, RegistryStats, TESTNET_COORDINATOR_CONTRACT_ID,
    TESTNET_REGISTRY_CONTRACT_ID, TESTNET_RPC_URL, WorkerRecord, WorkerRegistration,
};
pub use delibera_identity::{AccountId, AccountIdRule};
pub use error::{Error, Result};
pub use js_json::js_json_stringify;
pub use local::LocalRegistry;
pub use nep413::{NEP413_SCHEME, NEP413_TAG, SignedMessage, SignedRequest};
pub use outcome::{ExecutionOutcome, ExecutionStatus};
pub use registrar::{
    ChainRegistrar, CoordinatorClaim, DEFAULT_SETTLE_TIME, Registrar, Unconfirmed, WorkerClaim,
};
pub use registry::{EndpointUpdate, Registry, RpcRegistry};
pub use rpc::{
    AccessKeyView, BlockHeaderView, BlockReference, DEFAULT_TIMEOUT, NearRpc, TxExecutionStatus,
};
pub use sender::{NearSigner, TransactionSender};
pub use transaction::{
    AccessKey, AccessKeyPermission, Action, CryptoHash, DelegateAction, FunctionCall,
    GlobalContractDeployMode, GlobalContractIdentifier, SignedDelegateAction, SignedTransaction,
    Transaction,
};
