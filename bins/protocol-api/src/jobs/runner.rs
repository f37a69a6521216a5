//! The background runner: moves a job through the seed's steps, persisting
//! each transition before the next step starts, so a restart resumes from the
//! last finished step.
//!
//! Paid or irreversible steps are guarded: before the deploy call the job is
//! marked (`deployment_name`), so a job interrupted *during* the deploy fails
//! with an explicit error instead of deploying a second time, and a job with a
//! CVM id is re-polled, never redeployed.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use delibera_identity::{Did, Keypair};
use delibera_phala::{AgentRole, AgentSpec};
use uuid::Uuid;

use super::model::{Job, JobStatus, Role};
use super::store::JobStore;
use crate::ports::{AgentEnv, Ports};

/// How often, at most, health-gate progress is written to the job.
const PROGRESS_SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// Runs provisioning jobs in the background.
#[derive(Clone)]
pub struct Runner {
    store: JobStore,
    ports: Arc<Ports>,
}

impl Runner {
    /// A runner over a store and the outside services.
    pub fn new(store: JobStore, ports: Arc<Ports>) -> Self {
        Self { store, ports }
    }

    /// Starts (or resumes) a job in the background.
    pub fn spawn(&self, id: Uuid) {
        let runner = self.clone();
        tokio::spawn(async move {
            if let Err(error) = runner.drive(id).await {
                tracing::error!(job = %id, %error, "provisioning runner stopped");
            }
        });
    }

    /// Resumes every job a previous process left in a runner-owned status.
    pub async fn resume_all(&self) -> Result<usize, super::StoreError> {
        // A registration runs inside its request; one the process did not
        // finish goes back to the wallet step so the caller can simply retry
        // (local registration is an upsert, production only reads).
        for mut job in self.store.in_status(vec![JobStatus::Registering]).await? {
            tracing::info!(job = %job.id, "registration was interrupted; back to awaiting_near_signature");
            job.status = JobStatus::AwaitingNearSignature;
            job.updated_at = Utc::now();
            self.store.save(&job).await?;
        }
        let jobs = self.store.resumable().await?;
        for job in &jobs {
            tracing::info!(job = %job.id, status = job.status.as_str(), "resuming provisioning job");
            self.spawn(job.id);
        }
        Ok(jobs.len())
    }

    /// Purges finished jobs older than `retention`, now and then every hour.
    pub fn spawn_purger(&self, retention: Duration) {
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let cutoff = Utc::now()
                    - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
                match store.purge_finished(cutoff).await {
                    Ok(0) => {}
                    Ok(purged) => {
                        tracing::info!(purged, "purged finished jobs past their retention")
                    }
                    Err(error) => tracing::warn!(%error, "purging finished jobs failed"),
                }
            }
        });
    }

    /// Drives one job until it waits for a person or ends.
    pub async fn drive(&self, id: Uuid) -> Result<(), super::StoreError> {
        loop {
            let Some(mut job) = self.store.get(id).await? else {
                return Ok(());
            };
            if !job.status.is_runner_owned() {
                return Ok(());
            }
            let from = job.status;
            match self.step(&mut job).await {
                Ok(next) => {
                    job.status = next;
                    job.progress = None;
                }
                Err(message) => {
                    tracing::warn!(job = %id, step = from.as_str(), error = %message, "provisioning step failed");
                    job.status = JobStatus::Failed;
                    job.error = Some(message);
                    job.progress = None;
                }
            }
            job.updated_at = Utc::now();
            self.store.save(&job).await?;
            tracing::info!(job = %id, from = from.as_str(), to = job.status.as_str(), "job transition");
            crate::metrics::job_transition(from, job.status);
        }
    }

    /// Performs the job's current step and returns the next status. The job
    /// may be changed (and saved) along the way; errors are the text shown in
    /// the job's `error`.
    async fn step(&self, job: &mut Job) -> Result<JobStatus, String> {
        match job.status {
            JobStatus::GeneratingIdentity => {
                let keypair = Keypair::generate();
                let did = keypair.did().to_string();
                job.secrets.storacha_private_key = Some(keypair.to_ucanto_string().to_string());
                if job.role == Role::Coordinator {
                    job.coordinator_did = Some(did.clone());
                }
                job.agent_did = Some(did);
                Ok(JobStatus::CreatingSpace)
            }
            JobStatus::CreatingSpace => {
                let did = agent_did(job)?;
                let delegation = self
                    .ports
                    .delegator
                    .delegate_space_access(&did)
                    .await
                    .map_err(|error| format!("Storacha delegation failed: {error}"))?;
                job.space_did = Some(delegation.space_did.to_string());
                job.delegation = Some(delegation.proof);
                Ok(match job.role {
                    Role::Coordinator => JobStatus::ProvisioningEnsue,
                    Role::Worker => JobStatus::PreparingPhala,
                })
            }
            JobStatus::ProvisioningEnsue => {
                let did = agent_did(job)?;
                let org_name = ensue_org_name(&job.display_name, &did);
                let org = self
                    .ports
                    .ensue
                    .register_org(&org_name)
                    .await
                    .map_err(|error| format!("Ensue org registration failed: {error}"))?;
                self.store
                    .put_coordinator_org(did.as_str(), &org_name, &org.api_key)
                    .await
                    .map_err(|error| format!("could not store the Ensue org key: {error}"))?;
                job.ensue_org_name = Some(org_name);
                job.secrets.ensue_api_key = Some(org.api_key.to_string());
                job.secrets.ensue_claim_url = Some(org.claim_url);
                job.secrets.ensue_verification_code = Some(org.verification_code);
                Ok(JobStatus::PreparingPhala)
            }
            JobStatus::PreparingPhala => {
                // The spec is rebuilt from the job when deploying; this step
                // checks that everything it needs is there.
                self.agent_spec(job).await?;
                Ok(JobStatus::DeployingPhala)
            }
            JobStatus::DeployingPhala => {
                if job.cvm_id.is_some() {
                    return Ok(JobStatus::WaitingForUrl);
                }
                if job.deployment_name.is_some() {
                    return Err(format!(
                        "the server stopped while deploying this {} agent; it was not redeployed to avoid \
                         paying twice. Check the deployment dashboard for a {} CVM named after `{}`, remove \
                         any leftover, and provision again",
                        job.role.as_str(),
                        job.role.as_str(),
                        job.display_name
                    ));
                }
                let spec = self.agent_spec(job).await?;
                job.deployment_name = Some(format!("{} ({})", job.display_name, job.id));
                job.updated_at = Utc::now();
                self.store
                    .save(job)
                    .await
                    .map_err(|error| error.to_string())?;
                let deployment = self
                    .ports
                    .deployer
                    .deploy(&spec)
                    .await
                    .map_err(|error| format!("deployment failed: {error}"))?;
                job.cvm_id = Some(deployment.cvm_id);
                job.endpoint = Some(deployment.endpoint_url);
                job.dashboard_url = Some(deployment.dashboard_url);
                Ok(JobStatus::WaitingForUrl)
            }
            JobStatus::WaitingForUrl => self.wait_for_health(job).await,
            JobStatus::AwaitingNearSignature
            | JobStatus::Registering
            | JobStatus::Complete
            | JobStatus::Failed => Ok(job.status),
        }
    }

    async fn wait_for_health(&self, job: &mut Job) -> Result<JobStatus, String> {
        let did = agent_did(job)?;
        let endpoint = job
            .endpoint
            .clone()
            .ok_or("no endpoint was recorded for the deployment")?;
        let cvm_id = job.cvm_id.clone().ok_or("no deployment id was recorded")?;
        // The deadline counts from when the job entered this step, across restarts.
        let waited = (Utc::now() - job.updated_at).to_std().unwrap_or_default();
        let remaining = self.ports.settings.health_timeout.saturating_sub(waited);

        let store = self.store.clone();
        let mut progress_job = job.clone();
        let mut last_save = tokio::time::Instant::now();
        let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let saver = tokio::spawn(async move {
            while let Some(text) = progress_rx.recv().await {
                if last_save.elapsed() >= PROGRESS_SAVE_INTERVAL {
                    progress_job.progress = Some(text);
                    // Progress only; `updated_at` keeps marking when the wait began.
                    let _ = store.save(&progress_job).await;
                    last_save = tokio::time::Instant::now();
                }
            }
        });
        let mut on_progress = move |progress: &delibera_phala::HealthProgress| {
            let _ = progress_tx.send(format_wait(waited + progress.elapsed));
        };
        let result = self
            .ports
            .health_gate
            .wait(
                &self.ports.http,
                &endpoint,
                &did,
                remaining,
                &mut on_progress,
            )
            .await;
        // Dropping the closure drops the sender, which ends the saver.
        drop(on_progress);
        let _ = saver.await;
        match result {
            Ok(_) => Ok(JobStatus::AwaitingNearSignature),
            Err(error) => {
                // Never ask the user to pay for a dead endpoint: tear it down.
                let teardown = match self.ports.deployer.teardown(&cvm_id).await {
                    Ok(()) => "the deployment was torn down".to_owned(),
                    Err(teardown_error) => {
                        format!("tearing the deployment down also failed: {teardown_error}")
                    }
                };
                Err(format!(
                    "the agent never became healthy at {endpoint}: {error}; {teardown}"
                ))
            }
        }
    }

    /// The deployment spec for a job, env included.
    async fn agent_spec(&self, job: &Job) -> Result<AgentSpec, String> {
        let did = agent_did(job)?;
        let private_key = job
            .secrets
            .storacha_private_key
            .clone()
            .ok_or("the agent's key is missing")?;
        let ensue_api_key = match job.role {
            Role::Coordinator => job
                .secrets
                .ensue_api_key
                .clone()
                .ok_or("the Ensue org key is missing")?,
            Role::Worker => {
                let coordinator = job
                    .coordinator_did
                    .as_deref()
                    .ok_or("the coordinator DID is missing")?;
                match self
                    .store
                    .coordinator_org(coordinator)
                    .await
                    .map_err(|error| error.to_string())?
                {
                    Some((_, key)) => key.to_string(),
                    None => self.ports.settings.ensue_api_key.to_string(),
                }
            }
        };
        let env = AgentEnv {
            role: job.role,
            did: &did,
            private_key: &private_key,
            delegation: job.delegation.as_deref(),
            space_did: job.space_did.as_deref(),
            ensue_url: &self.ports.ensue.base_url(),
            ensue_api_key: &ensue_api_key,
            coordinator_did: job.coordinator_did.as_deref(),
            display_name: &job.display_name,
            near_account: &job.near_account,
            min_workers: job.min_workers,
            max_workers: job.max_workers,
        };
        let role = match job.role {
            Role::Coordinator => AgentRole::Coordinator,
            Role::Worker => AgentRole::Worker,
        };
        let mut spec = AgentSpec::new(role, job.display_name.clone()).with_env(env.to_vars());
        if let Some(image) = self.ports.settings.image_for(job.role) {
            spec = spec.with_image(image.clone());
        }
        Ok(spec)
    }
}

fn agent_did(job: &Job) -> Result<Did, String> {
    job.agent_did
        .as_deref()
        .ok_or_else(|| "the agent's DID is missing".to_owned())?
        .parse()
        .map_err(|error| format!("stored agent DID is invalid: {error}"))
}

/// `delibera-<slug of the display name>-<4 characters of the DID>`, within
/// Ensue's 1–64 `[A-Za-z0-9_-]` rule.
pub fn ensue_org_name(display_name: &str, did: &Did) -> String {
    let mut slug = String::new();
    for c in display_name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_end_matches('-').chars().take(40).collect();
    let suffix: String = did
        .as_str()
        .chars()
        .rev()
        .take(4)
        .collect::<String>()
        .to_ascii_lowercase();
    if slug.is_empty() {
        format!("delibera-{suffix}")
    } else {
        format!("delibera-{}-{suffix}", slug.trim_end_matches('-'))
    }
}

fn format_wait(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_names_follow_ensue_rules() {
        let did: Did = "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH"
            .parse()
            .unwrap();
        let name = ensue_org_name("My DAO Coordinator!", &did);
        assert_eq!(name, "delibera-my-dao-coordinator-hyib");
        let long = ensue_org_name(&"x".repeat(200), &did);
        assert!(long.len() <= 64);
        assert!(ensue_org_name("日本", &did).starts_with("delibera-"));
        for name in [name, long] {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            );
        }
    }

    #[test]
    fn waits_read_as_minutes_and_seconds() {
        assert_eq!(format_wait(Duration::from_secs(130)), "2m10s");
    }
}
