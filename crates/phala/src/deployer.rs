//! The `Deployer` port and its Phala Cloud implementation.

use std::time::Duration;

use async_trait::async_trait;
use delibera_identity::Did;
use tokio::time::Instant;

use crate::client::{
    CommitRequest, ComposeFile, Cvm, DEFAULT_INSTANCE_TYPE, PhalaClient, ProvisionRequest,
};
use crate::compose::{AgentRole, CvmName, ImageRef, render_compose};
use crate::env::{EnvVar, encrypt_env, env_keys, validate_env_list};
use crate::error::{Error, Result};
use crate::health::{HealthGate, OnHealthProgress};

/// Everything needed to deploy one agent. `Debug` never shows env values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    /// Worker or coordinator.
    pub role: AgentRole,
    /// The human name; its slug goes into the CVM name.
    pub display_name: String,
    /// The container image (pin it by digest for reproducible compose hashes).
    pub image: ImageRef,
    /// The port the agent listens on and the gateway exposes.
    pub port: u16,
    /// The secrets, sealed to the TEE and passed to the container as `KEY=${KEY}`.
    pub env: Vec<EnvVar>,
    /// The Phala instance type, e.g. `tdx.small`.
    pub instance_type: String,
    /// A region to place the CVM in; Phala picks when `None`.
    pub region: Option<String>,
}

impl AgentSpec {
    /// A spec with the role's default image and port, `tdx.small` and no env.
    pub fn new(role: AgentRole, display_name: impl Into<String>) -> Self {
        AgentSpec {
            role,
            display_name: display_name.into(),
            image: role.default_image(),
            port: role.default_port(),
            env: Vec::new(),
            instance_type: DEFAULT_INSTANCE_TYPE.to_owned(),
            region: None,
        }
    }

    /// The same spec with this image.
    pub fn with_image(mut self, image: ImageRef) -> Self {
        self.image = image;
        self
    }

    /// The same spec with this port.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The same spec with this env (replacing any before).
    pub fn with_env(mut self, env: Vec<EnvVar>) -> Self {
        self.env = env;
        self
    }
}

/// A deployed agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// The id to pass to [`Deployer::status`] and [`Deployer::teardown`].
    pub cvm_id: String,
    /// The app id (40 hex) for Phala; backend-specific otherwise.
    pub app_id: String,
    /// Where the agent answers (not yet known to be healthy: see [`HealthGate`]).
    pub endpoint_url: String,
    /// Where a human can watch it.
    pub dashboard_url: String,
}

/// What [`Deployer::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentStatus {
    /// The deployment.
    pub cvm_id: String,
    /// The backend's status text, e.g. `running`, `stopped`, `starting`.
    pub status: String,
    /// Whether the status is `running`.
    pub running: bool,
    /// A listed public URL, when the backend lists one.
    pub endpoint_url: Option<String>,
}

/// Deploys agents and removes them again; held by the server as `Arc<dyn Deployer>`.
#[async_trait]
pub trait Deployer: Send + Sync {
    /// Starts the agent and returns where it will answer. Does not wait for it
    /// to be healthy; see [`deploy_until_healthy`].
    async fn deploy(&self, spec: &AgentSpec) -> Result<Deployment>;

    /// The deployment's current status.
    async fn status(&self, cvm_id: &str) -> Result<DeploymentStatus>;

    /// Removes the deployment so it stops costing money. Removing one that is
    /// already gone succeeds.
    async fn teardown(&self, cvm_id: &str) -> Result<()>;
}

/// The server's deploy policy: deploy, wait until the agent is healthy and
/// names `expected_did`, and tear the deployment down if it never gets there.
///
/// The health URL is the deployment's `endpoint_url`.
pub async fn deploy_until_healthy(
    deployer: &dyn Deployer,
    spec: &AgentSpec,
    gate: &HealthGate,
    http: &reqwest::Client,
    expected_did: &Did,
    deadline: Duration,
    on_progress: OnHealthProgress<'_>,
) -> Result<Deployment> {
    let deployment = deployer.deploy(spec).await?;
    match gate
        .wait(
            http,
            &deployment.endpoint_url,
            expected_did,
            deadline,
            on_progress,
        )
        .await
    {
        Ok(_) => Ok(deployment),
        Err(error) => {
            if let Err(teardown_error) = deployer.teardown(&deployment.cvm_id).await {
                tracing::warn!(cvm_id = %deployment.cvm_id, %teardown_error, "teardown after a failed health gate failed");
            }
            Err(error)
        }
    }
}

/// When [`PhalaDeployer`] calls `POST /cvms/{id}/start` after the commit.
///
/// Whether a committed CVM starts by itself is not settled (the SDK and the
/// reference imply it does; one third party says it stays `stopped`), so the
/// default starts it only if it is seen `stopped` with nothing under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPolicy {
    /// Start once when a poll shows `stopped` and nothing in progress.
    #[default]
    IfStopped,
    /// Always start once right after the commit.
    Always,
    /// Never call start.
    Never,
}

/// Settings of [`PhalaDeployer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhalaDeployerOptions {
    /// The pause between `GET /cvms/{id}` polls while waiting for a URL.
    pub url_poll_interval: Duration,
    /// How long to wait for a listed URL or a gateway domain.
    pub url_deadline: Duration,
    /// When to call start.
    pub start_policy: StartPolicy,
    /// The dashboard URL prefix; the CVM id is appended after a `/`.
    pub dashboard_base: String,
}

impl Default for PhalaDeployerOptions {
    fn default() -> Self {
        PhalaDeployerOptions {
            url_poll_interval: Duration::from_secs(5),
            url_deadline: Duration::from_secs(300),
            start_policy: StartPolicy::default(),
            dashboard_base: DEFAULT_DASHBOARD_BASE.to_owned(),
        }
    }
}

/// The dashboard prefix the reference reports (`…/dashboard/cvms/{cvmId}`).
pub const DEFAULT_DASHBOARD_BASE: &str = "https://cloud.phala.network/dashboard/cvms";

/// [`Deployer`] on Phala Cloud: provision → encrypt the env → commit → poll for
/// the public URL (starting the CVM per [`StartPolicy`]). A CVM whose URL never
/// appears is deleted before the error is returned.
#[derive(Debug, Clone)]
pub struct PhalaDeployer {
    client: PhalaClient,
    options: PhalaDeployerOptions,
}

impl PhalaDeployer {
    /// A deployer with default options.
    pub fn new(client: PhalaClient) -> Self {
        Self::with_options(client, PhalaDeployerOptions::default())
    }

    /// A deployer with these options.
    pub fn with_options(client: PhalaClient, options: PhalaDeployerOptions) -> Self {
        PhalaDeployer { client, options }
    }

    /// The API client.
    pub fn client(&self) -> &PhalaClient {
        &self.client
    }

    /// Polls the CVM until its URL for `port` is known, starting it per policy.
    async fn await_endpoint(&self, cvm_id: &str, port: u16) -> Result<String> {
        let started = Instant::now();
        let mut start_sent = false;
        if self.options.start_policy == StartPolicy::Always {
            self.client.start(cvm_id).await?;
            start_sent = true;
        }
        loop {
            let cvm: Cvm = self.client.get_cvm(cvm_id).await?;
            if let Some(error) = &cvm.error {
                return Err(Error::CvmFailed {
                    cvm_id: cvm_id.to_owned(),
                    reason: error.clone(),
                });
            }
            if cvm.is_stopped() {
                if self.options.start_policy == StartPolicy::IfStopped && !start_sent {
                    tracing::info!(%cvm_id, "committed CVM is stopped; starting it");
                    self.client.start(cvm_id).await?;
                    start_sent = true;
                    continue;
                }
                // Just after a start the status may still read `stopped`: keep
                // polling until the deadline rather than guessing.
            } else if let Some(url) = cvm.endpoint_url(port) {
                return Ok(url);
            }
            let elapsed = started.elapsed();
            if elapsed >= self.options.url_deadline {
                return Err(Error::NoEndpoint {
                    cvm_id: cvm_id.to_owned(),
                    elapsed,
                });
            }
            tokio::time::sleep(
                self.options
                    .url_poll_interval
                    .min(self.options.url_deadline.saturating_sub(elapsed)),
            )
            .await;
        }
    }
}

#[async_trait]
impl Deployer for PhalaDeployer {
    async fn deploy(&self, spec: &AgentSpec) -> Result<Deployment> {
        validate_env_list(&spec.env)?;
        let keys = env_keys(&spec.env);
        let compose = render_compose(spec.role, &spec.image, spec.port, &keys)?;
        let name = CvmName::unique(spec.role, &spec.display_name);

        let provisioned = self
            .client
            .provision(&ProvisionRequest {
                name: name.to_string(),
                instance_type: spec.instance_type.clone(),
                compose_file: ComposeFile {
                    docker_compose_file: compose,
                    allowed_envs: keys.clone(),
                    name: String::new(),
                },
                region: spec.region.clone(),
                teepod_id: None,
            })
            .await?;
        let missing = |field: &str| Error::UnexpectedResponse {
            operation: "POST /cvms/provision".to_owned(),
            reason: format!("no {field} (only the PHALA KMS is supported)"),
        };
        let app_id = provisioned.app_id.ok_or_else(|| missing("app_id"))?;
        let encrypted_env = if spec.env.is_empty() {
            None
        } else {
            let pubkey = provisioned
                .app_env_encrypt_pubkey
                .ok_or_else(|| missing("app_env_encrypt_pubkey"))?;
            Some(encrypt_env(&pubkey, &spec.env)?)
        };

        let cvm = self
            .client
            .commit(&CommitRequest {
                app_id: app_id.clone(),
                compose_hash: provisioned.compose_hash,
                encrypted_env,
                env_keys: keys,
            })
            .await?;
        let cvm_id = cvm.cvm_id().to_owned();
        tracing::info!(%cvm_id, %name, "CVM committed");

        match self.await_endpoint(&cvm_id, spec.port).await {
            Ok(endpoint_url) => Ok(Deployment {
                dashboard_url: format!(
                    "{}/{cvm_id}",
                    self.options.dashboard_base.trim_end_matches('/')
                ),
                cvm_id,
                app_id,
                endpoint_url,
            }),
            Err(error) => {
                // A CVM we cannot reach still costs money: remove it.
                if let Err(teardown_error) = self.client.delete(&cvm_id).await {
                    tracing::warn!(%cvm_id, %teardown_error, "cleanup of a failed deploy failed");
                }
                Err(error)
            }
        }
    }

    async fn status(&self, cvm_id: &str) -> Result<DeploymentStatus> {
        let cvm = self.client.get_cvm(cvm_id).await?;
        Ok(DeploymentStatus {
            cvm_id: cvm_id.to_owned(),
            running: cvm.is_running(),
            status: cvm.status.clone().unwrap_or_else(|| "unknown".to_owned()),
            endpoint_url: cvm.urls.first().map(|url| url.app.clone()),
        })
    }

    async fn teardown(&self, cvm_id: &str) -> Result<()> {
        self.client.delete(cvm_id).await
    }
}
