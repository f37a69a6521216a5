//! The outside services the server composes, each behind a port, plus the
//! settings the provisioning steps need.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use delibera_ensue::Memory;
use delibera_near::{
    AccountId, CryptoHash, ExecutionOutcome, NearRpc, Registry, TxExecutionStatus,
};
use delibera_phala::{Deployer, EnvVar, HealthGate, ImageRef};
use delibera_storacha::Delegator;
use zeroize::Zeroizing;

use crate::config::Mode;
use crate::jobs::Role;

/// A new Ensue org's credentials (returned once by the service).
pub struct OrgCredentials {
    /// The org's API key.
    pub api_key: Zeroizing<String>,
    /// Where the owner claims the org.
    pub claim_url: String,
    /// The code that proves the claim.
    pub verification_code: String,
}

/// Ensue as the server uses it: creating orgs, and memory access under a key.
#[async_trait]
pub trait EnsueAccess: Send + Sync {
    /// The base URL agents are given (`ENSUE_URL`).
    fn base_url(&self) -> String;
    /// Creates an org (`POST /auth/agent-register`).
    async fn register_org(&self, name: &str) -> Result<OrgCredentials, String>;
    /// Memory as seen with `api_key`.
    fn memory(&self, api_key: &str) -> Arc<dyn Memory>;
}

/// Looks signed transactions up on chain, so production checks the wallet's
/// `txHash` instead of echoing it.
#[async_trait]
pub trait TransactionLookup: Send + Sync {
    /// The outcome of `tx_hash`, sent by `signer` (NEAR indexes transactions by both).
    async fn transaction(
        &self,
        tx_hash: &CryptoHash,
        signer: &AccountId,
    ) -> delibera_near::Result<ExecutionOutcome>;
}

/// The real lookup: the RPC's `tx` method, answered once the transaction executed.
#[async_trait]
impl TransactionLookup for NearRpc {
    async fn transaction(
        &self,
        tx_hash: &CryptoHash,
        signer: &AccountId,
    ) -> delibera_near::Result<ExecutionOutcome> {
        self.tx_status(tx_hash, signer, TxExecutionStatus::ExecutedOptimistic)
            .await
    }
}

/// Settings the provisioning steps and routes read.
#[derive(Clone)]
pub struct Settings {
    /// Local or production.
    pub mode: Mode,
    /// Ensue key for workers whose coordinator has no org on this server.
    pub ensue_api_key: Zeroizing<String>,
    /// How long an agent may take to become healthy.
    pub health_timeout: Duration,
    /// The account the server signs with (and, locally, registers on behalf of users with).
    pub server_account: AccountId,
    /// Worker image override.
    pub worker_image: Option<ImageRef>,
    /// Coordinator image override.
    pub coordinator_image: Option<ImageRef>,
    /// The contracts a registration transaction may call (registry, coordinator
    /// roster); empty in local mode.
    pub registry_contracts: Vec<AccountId>,
}

impl Settings {
    /// The image override for a role.
    pub fn image_for(&self, role: Role) -> Option<&ImageRef> {
        match role {
            Role::Coordinator => self.coordinator_image.as_ref(),
            Role::Worker => self.worker_image.as_ref(),
        }
    }

    /// Whether `http://localhost` endpoints are acceptable.
    pub fn allows_loopback_http(&self) -> bool {
        self.mode == Mode::Local
    }
}

/// Every port the server uses.
pub struct Ports {
    /// Storacha delegations.
    pub delegator: Arc<dyn Delegator>,
    /// Ensue orgs and memory.
    pub ensue: Arc<dyn EnsueAccess>,
    /// Where agents run.
    pub deployer: Arc<dyn Deployer>,
    /// The health gate between deploy and the wallet step.
    pub health_gate: HealthGate,
    /// The NEAR registry (or the local one).
    pub registry: Arc<dyn Registry>,
    /// Transaction lookup; `None` in local mode, which has no chain.
    pub transactions: Option<Arc<dyn TransactionLookup>>,
    /// HTTP client for health checks.
    pub http: reqwest::Client,
    /// Settings.
    pub settings: Settings,
}

/// The env contract between the server and the agent runtime
/// (`delibera agent worker|coordinator` reads exactly these names).
pub struct AgentEnv<'a> {
    /// Coordinator or worker.
    pub role: Role,
    /// The agent's DID (informational; the runtime derives it from the key).
    pub did: &'a delibera_identity::Did,
    /// The agent's ucanto private key.
    pub private_key: &'a str,
    /// The agent's Storacha delegation (identity-CID form).
    pub delegation: Option<&'a str>,
    /// The Storacha space.
    pub space_did: Option<&'a str>,
    /// Ensue base URL.
    pub ensue_url: &'a str,
    /// Ensue API key.
    pub ensue_api_key: &'a str,
    /// The coordinator (workers only; a coordinator's is its own).
    pub coordinator_did: Option<&'a str>,
    /// Display name.
    pub display_name: &'a str,
    /// The NEAR account that owns the agent.
    pub near_account: &'a str,
    /// Coordinator quorum bounds.
    pub min_workers: Option<u8>,
    /// Coordinator quorum bounds.
    pub max_workers: Option<u8>,
}

impl AgentEnv<'_> {
    /// The variables, secrets included (they are sealed to the TEE by the deployer).
    pub fn to_vars(&self) -> Vec<EnvVar> {
        let mut vars = vec![
            EnvVar::new("AGENT_ROLE", self.role.as_str()),
            EnvVar::new("AGENT_DID", self.did.as_str()),
            EnvVar::new("STORACHA_AGENT_PRIVATE_KEY", self.private_key),
            EnvVar::new("ENSUE_URL", self.ensue_url),
            EnvVar::new("ENSUE_API_KEY", self.ensue_api_key),
            EnvVar::new("AGENT_DISPLAY_NAME", self.display_name),
            EnvVar::new("NEAR_ACCOUNT_ID", self.near_account),
        ];
        if let Some(delegation) = self.delegation {
            vars.push(EnvVar::new("STORACHA_DELEGATION_PROOF", delegation));
        }
        if let Some(space) = self.space_did {
            vars.push(EnvVar::new("STORACHA_SPACE_DID", space));
        }
        if let Some(coordinator) = self.coordinator_did {
            vars.push(EnvVar::new("COORDINATOR_DID", coordinator));
        }
        if let Some(min) = self.min_workers {
            vars.push(EnvVar::new("MIN_WORKERS", min.to_string()));
        }
        if let Some(max) = self.max_workers {
            vars.push(EnvVar::new("MAX_WORKERS", max.to_string()));
        }
        vars
    }
}
