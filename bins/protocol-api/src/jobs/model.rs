//! Provisioning jobs: the status values and step texts, and the record that is
//! persisted after every transition.

use std::fmt;

use chrono::{DateTime, Utc};
use delibera_deploy::{AgentRole, AgentSpec, DeploymentName};
use delibera_identity::{AccountId, Did};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job's status: the API's status values, in the order a job moves through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Creating the Ed25519 key pair.
    GeneratingIdentity,
    /// Creating the Storacha UCAN delegation.
    CreatingSpace,
    /// Creating the Ensue org (coordinators only).
    ProvisioningEnsue,
    /// Building the deployment config.
    PreparingPhala,
    /// Submitting to Phala Cloud.
    DeployingPhala,
    /// Waiting for the TEE container to be healthy.
    WaitingForUrl,
    /// Ready for the wallet transaction; secrets become visible.
    AwaitingNearSignature,
    /// Checking the registration the wallet signed.
    Registering,
    /// Fully provisioned and registered.
    Complete,
    /// Ended with an error (see the job's `error`).
    Failed,
}

impl JobStatus {
    /// Every status, in order.
    pub const ALL: [JobStatus; 10] = [
        JobStatus::GeneratingIdentity,
        JobStatus::CreatingSpace,
        JobStatus::ProvisioningEnsue,
        JobStatus::PreparingPhala,
        JobStatus::DeployingPhala,
        JobStatus::WaitingForUrl,
        JobStatus::AwaitingNearSignature,
        JobStatus::Registering,
        JobStatus::Complete,
        JobStatus::Failed,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::GeneratingIdentity => "generating_identity",
            JobStatus::CreatingSpace => "creating_space",
            JobStatus::ProvisioningEnsue => "provisioning_ensue",
            JobStatus::PreparingPhala => "preparing_phala",
            JobStatus::DeployingPhala => "deploying_phala",
            JobStatus::WaitingForUrl => "waiting_for_url",
            JobStatus::AwaitingNearSignature => "awaiting_near_signature",
            JobStatus::Registering => "registering",
            JobStatus::Complete => "complete",
            JobStatus::Failed => "failed",
        }
    }

    /// Parses the wire string.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// The human-readable step the status response shows.
    pub fn step(self) -> &'static str {
        match self {
            JobStatus::GeneratingIdentity => "Generating Ed25519 identity",
            JobStatus::CreatingSpace => "Creating Storacha UCAN delegation",
            JobStatus::ProvisioningEnsue => "Creating Ensue org",
            JobStatus::PreparingPhala => "Building deployment config",
            JobStatus::DeployingPhala => "Deploying to Phala TEE",
            JobStatus::WaitingForUrl => "Waiting for TEE container to be healthy",
            JobStatus::AwaitingNearSignature => "Waiting for NEAR wallet signature",
            JobStatus::Registering => "Processing registration",
            JobStatus::Complete => "Fully provisioned and registered",
            JobStatus::Failed => "Deployment failed",
        }
    }

    /// Whether the status response may carry the job's secrets: only once the
    /// agent is deployed and healthy, so nothing is shown for a job that fails.
    pub fn reveals_secrets(self) -> bool {
        matches!(self, JobStatus::AwaitingNearSignature | JobStatus::Complete)
    }

    /// Whether the job has stopped moving.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Complete | JobStatus::Failed)
    }

    /// Whether the background runner owns the job in this status (it is
    /// resumed after a restart); the others wait for a person or are done.
    pub fn is_runner_owned(self) -> bool {
        !matches!(
            self,
            JobStatus::AwaitingNearSignature
                | JobStatus::Registering
                | JobStatus::Complete
                | JobStatus::Failed
        )
    }

    /// Whether a process works on the job in this status: the runner's
    /// steps, or finishing a registration. Where replicas share the store,
    /// that process holds the job's lease.
    pub fn is_worked_on(self) -> bool {
        self.is_runner_owned() || self == JobStatus::Registering
    }
}

/// The secrets a job produces. Persisted only sealed with the server key, and
/// shown only while [`JobStatus::reveals_secrets`] holds.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobSecrets {
    /// The agent's ucanto private key (`STORACHA_AGENT_PRIVATE_KEY`).
    pub storacha_private_key: Option<String>,
    /// The coordinator's Ensue org API key. When the Ensue lets the server
    /// choose a new org's credentials (the embedded one), these three are
    /// chosen and kept before the org exists, so a registration whose
    /// answer was lost can be repeated and adopts the same org.
    pub ensue_api_key: Option<String>,
    /// Where the org owner claims the Ensue org.
    pub ensue_claim_url: Option<String>,
    /// The code that proves the claim.
    pub ensue_verification_code: Option<String>,
    /// What `preparing_phala` built, and exactly what is deployed: the
    /// agent's env holds its keys, so the spec is kept sealed.
    #[serde(default)]
    pub spec: Option<AgentSpec>,
}

impl std::fmt::Debug for JobSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobSecrets(<redacted>)")
    }
}

/// Everything known about a job. Non-secret fields are stored as JSON; the
/// [`JobSecrets`] are stored sealed beside them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// The job id (a random v4 UUID: knowing it is what lets a caller poll it).
    pub id: Uuid,
    /// Coordinator or worker.
    pub role: AgentRole,
    /// Where the job is.
    pub status: JobStatus,
    /// Progress detail shown after the step text (e.g. the wait so far).
    #[serde(default)]
    pub progress: Option<String>,
    /// When the job was created.
    pub created_at: DateTime<Utc>,
    /// When the job last changed.
    pub updated_at: DateTime<Utc>,
    /// Human-readable agent name.
    pub display_name: String,
    /// The NEAR account that signs the registry transaction.
    pub near_account: AccountId,
    /// The new agent's DID (set by `generating_identity`).
    pub agent_did: Option<Did>,
    /// For a worker: the coordinator it joins. For a coordinator: its own DID.
    pub coordinator_did: Option<Did>,
    /// Coordinator quorum bounds.
    pub min_workers: Option<u8>,
    /// Coordinator quorum bounds.
    pub max_workers: Option<u8>,
    /// The factory-created coordinator contract, when given.
    pub contract_address: Option<AccountId>,
    /// The Storacha space the delegation grants access to.
    pub space_did: Option<Did>,
    /// The UCAN delegation for the agent (identity-CID text form).
    pub delegation: Option<String>,
    /// The coordinator's Ensue org name.
    pub ensue_org_name: Option<String>,
    /// Ensue org names tried so far (the first is the base name, the n-th
    /// `<base>-n`), each counted and saved before the first registration
    /// under it. With a hosted Ensue, which shows the key only in its
    /// answer, a registration whose answer was lost may still have made its
    /// org, so a new attempt takes the next name; where the server chose the
    /// credentials first (the embedded Ensue), a repeat registers the same
    /// name again and adopts that org, without counting.
    #[serde(default)]
    pub ensue_org_attempts: u32,
    /// Set by the first release of this server before its deploy call; a
    /// job that has it and no `cvm_id` was interrupted inside a deploy whose
    /// deployment cannot be found by name.
    #[serde(
        default,
        rename = "deployment_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub legacy_deployment_mark: Option<String>,
    /// The deployment's id (Phala CVM id, or the local agent id).
    pub cvm_id: Option<String>,
    /// A failed job whose deployment still has to be torn down (set with
    /// the failure, cleared once the teardown succeeded), so a restart in
    /// between finishes the teardown instead of leaving the agent running.
    #[serde(default)]
    pub deployment_teardown_pending: bool,
    /// The agent's public URL.
    pub endpoint: Option<String>,
    /// Where the operator sees the deployment.
    pub dashboard_url: Option<String>,
    /// The wallet's registry transaction.
    pub tx_hash: Option<String>,
    /// A complete job whose agent is not yet announced in Ensue (its org is
    /// not claimed yet, or Ensue was down); the machine keeps retrying.
    #[serde(default)]
    pub announce_pending: bool,
    /// Why the job failed.
    pub error: Option<String>,
    /// Sealed at rest; see [`JobSecrets`].
    #[serde(skip)]
    pub secrets: JobSecrets,
    /// The secrets as last sealed for the store, so a save that left them
    /// unchanged does not seal them again.
    #[serde(skip)]
    pub(crate) sealed_secrets: crate::seal::SealCache<JobSecrets>,
}

/// What a caller supplies to start a job.
#[derive(Debug, Clone, Serialize)]
pub struct NewJob {
    /// Coordinator or worker.
    pub role: AgentRole,
    /// Human-readable agent name.
    pub display_name: String,
    /// The NEAR account that signs the registry transaction.
    pub near_account: AccountId,
    /// For a worker: the coordinator it joins.
    pub coordinator_did: Option<Did>,
    /// Coordinator quorum bounds.
    pub min_workers: Option<u8>,
    /// Coordinator quorum bounds.
    pub max_workers: Option<u8>,
    /// The factory-created coordinator contract, when given.
    pub contract_address: Option<AccountId>,
}

impl NewJob {
    /// A digest of the request, to tell a retry (same digest) from a
    /// different request under the same idempotency key.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest;
        // The validated fields, so a retry that spells the same request
        // differently (spacing, field order) is still the same request.
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        sha2::Sha256::digest(canonical).into()
    }
}

/// The `Idempotency-Key` a client sends with a provisioning request: a retry
/// with the same key (and the same request) gets the same job back.
#[derive(Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Shortest accepted key: it names a job whose id unlocks secrets, so a
    /// guessable key must not be accepted (a random UUID is the expected form).
    pub const MIN_LEN: usize = 16;
    /// Longest accepted key.
    pub const MAX_LEN: usize = 255;
    /// Fewest distinct characters in a key. Only the client can make its key
    /// unguessable; this refuses the obviously weak ones (`aaaa…`,
    /// `0000…`, `abababab…`), which a random UUID never is.
    pub const MIN_DISTINCT: usize = 8;

    /// A key of 16–255 visible ASCII characters, at least
    /// [`MIN_DISTINCT`](Self::MIN_DISTINCT) of them different, or why not.
    pub fn parse(text: &str) -> Result<Self, String> {
        let length = text.len();
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&length) {
            return Err(format!(
                "Idempotency-Key must be {}–{} characters (a random UUID is a good key); got {length}",
                Self::MIN_LEN,
                Self::MAX_LEN
            ));
        }
        if !text.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err("Idempotency-Key must be visible ASCII characters only".into());
        }
        let mut seen = [false; 128];
        let distinct = text
            .bytes()
            .filter(|&byte| !std::mem::replace(&mut seen[usize::from(byte)], true))
            .count();
        if distinct < Self::MIN_DISTINCT {
            return Err(format!(
                "Idempotency-Key is too easy to guess ({distinct} different characters, at least {} \
                 needed): send a random value such as a UUID",
                Self::MIN_DISTINCT
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// What the store keeps: a digest, so the key itself is never stored.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(self.0.as_bytes()).into()
    }
}

impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdempotencyKey(<redacted>)")
    }
}

impl Job {
    /// A job in its first status.
    pub fn new(new: NewJob, now: DateTime<Utc>) -> Self {
        // A job's id is what reads its status (and its secrets, once shown),
        // so it must not be guessable: 122 random bits from the thread's
        // CSPRNG (seeded from the OS), where `Uuid::new_v4` would make a
        // system call for each job.
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        Self {
            id,
            role: new.role,
            status: JobStatus::GeneratingIdentity,
            progress: None,
            created_at: now,
            updated_at: now,
            display_name: new.display_name,
            near_account: new.near_account,
            agent_did: None,
            coordinator_did: new.coordinator_did,
            min_workers: new.min_workers,
            max_workers: new.max_workers,
            contract_address: new.contract_address,
            space_did: None,
            delegation: None,
            ensue_org_name: None,
            ensue_org_attempts: 0,
            legacy_deployment_mark: None,
            cvm_id: None,
            deployment_teardown_pending: false,
            endpoint: None,
            dashboard_url: None,
            tx_hash: None,
            announce_pending: false,
            error: None,
            secrets: JobSecrets::default(),
            sealed_secrets: Default::default(),
        }
    }

    /// The name its deployment is made under, derived from the job (so it
    /// is the deploy's idempotency key, and names the job's agent in a
    /// deployer's listing or journal).
    pub fn deployment_name(&self) -> DeploymentName {
        DeploymentName::derive(self.role, &self.display_name, &self.id.simple().to_string())
    }

    /// The step text with any progress detail, e.g. `… (2m10s)`.
    pub fn step_text(&self) -> String {
        match &self.progress {
            Some(progress) => format!("{} ({progress})", self.status.step()),
            None => self.status.step().to_owned(),
        }
    }
}

/// A job as logs name it. A job's id is enough to read its secrets from
/// the status route, so logs carry a one-way tag of it instead: the first
/// 12 hex digits of the SHA-256 of the id as text (an operator holding the
/// id finds its lines with `printf %s "$id" | sha256sum | cut -c1-12`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobTag([u8; 6]);

impl JobTag {
    /// The tag of a job id, or of a stored id's text.
    pub fn of(id: impl fmt::Display) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(id.to_string().as_bytes());
        let mut tag = [0; 6];
        tag.copy_from_slice(&digest[..6]);
        JobTag(tag)
    }
}

impl fmt::Display for JobTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_new_job_has_a_fresh_random_uuid() {
        let new = || NewJob {
            role: AgentRole::Coordinator,
            display_name: "My DAO".into(),
            near_account: "alice.testnet".parse().unwrap(),
            coordinator_did: None,
            min_workers: None,
            max_workers: None,
            contract_address: None,
        };
        let ids: HashSet<Uuid> = (0..1_000).map(|_| Job::new(new(), Utc::now()).id).collect();
        assert_eq!(ids.len(), 1_000);
        for id in &ids {
            assert_eq!(id.get_version(), Some(uuid::Version::Random), "{id}");
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
        }
    }
}
