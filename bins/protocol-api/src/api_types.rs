//! The JSON bodies of every route, as typed structs: the handlers return them
//! and the OpenAPI document is generated from them, so the two cannot drift.
//! Field names are the API's (camelCase, except the roster's snake_case
//! contract fields).

use std::collections::BTreeMap;

use delibera_deploy::AgentRole;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::jobs::Job;

/// `{"error": "…"}`: every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, and for a 4xx what to fix.
    pub error: String,
}

/// `GET /`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `Delibera Protocol API`.
    pub message: String,
    /// `ok`.
    pub status: String,
    /// ISO-8601 time of the answer.
    pub timestamp: String,
    /// `local` or `production`.
    pub mode: String,
    /// Local mode: the embedded Ensue server agents use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensue_url: Option<String>,
}

/// A provisioning job was accepted and runs in the background.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionAccepted {
    /// Poll `/api/provision/status/{jobId}`.
    pub job_id: Uuid,
    /// Always `provisioning`.
    pub status: String,
}

/// `POST /api/provision/external-worker`: shown once, never stored.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalWorkerIdentity {
    /// The new worker's DID.
    pub worker_did: String,
    /// Its ucanto private key (`STORACHA_AGENT_PRIVATE_KEY`). Store it now.
    pub private_key_string: String,
}

/// `GET /api/provision/status/{jobId}`. Secret fields appear only at
/// `awaiting_near_signature` and `complete`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStatusView {
    /// The job.
    pub job_id: Uuid,
    /// `coordinator` or `worker`.
    pub role: String,
    /// One of the status values of [`JobStatus`](crate::jobs::JobStatus).
    pub status: String,
    /// Human-readable step, with progress while waiting.
    pub step: String,
    /// The new agent's DID (for a coordinator job, the coordinator's: frontends read this field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_did: Option<String>,
    /// The coordinator a worker joins, or the coordinator job's new DID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordinator_did: Option<String>,
    /// Human-readable name.
    pub display_name: String,
    /// The NEAR account that signs the registry transaction.
    pub near_account: String,
    /// Coordinator quorum bounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_workers: Option<u8>,
    /// Coordinator quorum bounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_workers: Option<u8>,
    /// Factory-created coordinator contract.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract_address: Option<String>,
    /// The coordinator's Ensue org.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensue_org_name: Option<String>,
    /// The Storacha space the agent may use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub space_did: Option<String>,
    /// The agent's public URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phala_endpoint: Option<String>,
    /// The deployment id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cvm_id: Option<String>,
    /// The container image the agent is deployed from (pinned by digest in
    /// production), once the deployment is prepared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Where to see the deployment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dashboard_url: Option<String>,
    /// The wallet's registry transaction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_hash: Option<String>,
    /// Why the job failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the job started.
    pub created_at: String,
    /// When the job last changed.
    pub updated_at: String,
    /// Secret: the agent's ucanto private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storacha_private_key: Option<String>,
    /// The agent's UCAN delegation to the space (identity-CID form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storacha_delegation: Option<String>,
    /// Secret: the coordinator's Ensue org API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensue_api_key: Option<String>,
    /// Secret: where to claim the Ensue org.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensue_claim_url: Option<String>,
    /// Secret: the claim's verification code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensue_verification_code: Option<String>,
}

impl JobStatusView {
    /// The status document. Secrets appear only while the status reveals them.
    pub fn of(job: &Job) -> Self {
        let coordinator_only =
            |value: Option<String>| value.filter(|_| job.role == AgentRole::Coordinator);
        let secret =
            |value: &Option<String>| value.clone().filter(|_| job.status.reveals_secrets());
        JobStatusView {
            job_id: job.id,
            role: job.role.as_str().into(),
            status: job.status.as_str().into(),
            step: job.step_text(),
            worker_did: job.agent_did.as_ref().map(ToString::to_string),
            coordinator_did: job.coordinator_did.as_ref().map(ToString::to_string),
            display_name: job.display_name.clone(),
            near_account: job.near_account.to_string(),
            min_workers: job
                .min_workers
                .filter(|_| job.role == AgentRole::Coordinator),
            max_workers: job
                .max_workers
                .filter(|_| job.role == AgentRole::Coordinator),
            contract_address: coordinator_only(
                job.contract_address.as_ref().map(ToString::to_string),
            ),
            ensue_org_name: coordinator_only(job.ensue_org_name.clone()),
            space_did: job.space_did.as_ref().map(ToString::to_string),
            phala_endpoint: job.endpoint.clone(),
            cvm_id: job.cvm_id.clone(),
            image: job.secrets.spec.as_ref().map(|spec| spec.image.to_string()),
            dashboard_url: job.dashboard_url.clone(),
            tx_hash: job.tx_hash.clone(),
            error: job.error.clone(),
            created_at: crate::iso(job.created_at),
            updated_at: crate::iso(job.updated_at),
            storacha_private_key: secret(&job.secrets.storacha_private_key),
            storacha_delegation: secret(&job.delegation),
            ensue_api_key: secret(&job.secrets.ensue_api_key),
            ensue_claim_url: secret(&job.secrets.ensue_claim_url),
            ensue_verification_code: secret(&job.secrets.ensue_verification_code),
        }
    }
}

/// `POST /api/provision/register`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerRegistered {
    /// `complete`.
    pub status: String,
    /// The worker.
    pub worker_did: Option<String>,
    /// Its endpoint.
    pub phala_endpoint: Option<String>,
    /// The transaction given.
    pub tx_hash: Option<String>,
}

/// `POST /api/provision/coordinator-register`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorRegistered {
    /// `complete`.
    pub status: String,
    /// The coordinator.
    pub coordinator_did: Option<String>,
    /// Its endpoint.
    pub phala_endpoint: Option<String>,
    /// Factory-created contract.
    pub contract_address: Option<String>,
    /// The transaction given.
    pub tx_hash: Option<String>,
    /// Its Ensue org.
    pub ensue_org_name: Option<String>,
    /// Where to claim the org.
    pub ensue_claim_url: Option<String>,
    /// The claim's code.
    pub ensue_verification_code: Option<String>,
}

/// One agent in `GET /api/agents/endpoints`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentEndpoint {
    /// Public URL.
    pub endpoint: String,
    /// `coordinator` or `worker`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Deployment id.
    pub cvm_id: String,
}

/// `GET /api/agents/endpoints`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentEndpoints {
    /// By DID.
    pub agents: BTreeMap<String, AgentEndpoint>,
    /// ISO-8601 time of the answer.
    pub timestamp: String,
}

/// `GET /api/agents/{agentId}/endpoint`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentEndpointView {
    /// The DID asked for.
    pub agent_id: String,
    /// Public URL.
    pub endpoint: String,
    /// Deployment id.
    pub cvm_id: String,
}

/// `PUT /api/agents/{agentId}/endpoint`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointUpdated {
    /// `true`.
    pub success: bool,
    /// The agent.
    pub agent_id: String,
    /// Its new endpoint.
    pub endpoint: String,
}

/// One roster entry (the contract's snake_case names).
#[derive(Debug, Serialize, ToSchema)]
pub struct RosterWorker {
    /// The worker's DID.
    pub worker_did: String,
    /// Its NEAR account (or who registered it).
    pub account_id: String,
    /// From the registry, when the worker is registered there.
    pub endpoint_url: Option<String>,
    /// Active on the roster.
    pub is_active: bool,
    /// Milliseconds since the epoch.
    pub registered_at: u64,
}

/// `GET /api/workers/registered`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Roster {
    /// Every roster entry.
    pub workers: Vec<RosterWorker>,
    /// How many are active.
    pub active_count: usize,
}

/// `POST /api/workers/register`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RosterRegistered {
    /// `Worker <did> registered`.
    pub message: String,
    /// The worker.
    pub worker_id: String,
    /// Its account, when given.
    pub account_id: Option<String>,
}

/// `{"message": …}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    /// What happened.
    pub message: String,
}
