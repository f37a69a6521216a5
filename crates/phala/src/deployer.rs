//! [`PhalaDeployer`]: the `Deployer` port on Phala Cloud.

use std::time::Duration;

use async_trait::async_trait;
use delibera_deploy::{
    AgentSpec, Deployer, Deployment, DeploymentName, DeploymentStatus, env_keys, validate_env_list,
};
use tokio::time::Instant;

use crate::client::{
    CommitRequest, ComposeFile, Cvm, DEFAULT_INSTANCE_TYPE, PhalaClient, ProvisionRequest,
};
use crate::compose::render_compose;
use crate::env::encrypt_env;
use crate::error::{Error, Result};

/// When [`PhalaDeployer`] calls `POST /cvms/{id}/start` after the commit.
///
/// Whether a committed CVM starts by itself is not settled (the SDK implies it
/// does; one third party says it stays `stopped`), so the default starts it
/// only if it is seen `stopped` with nothing under way.
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

/// How many times a deploy looks its CVM up by name after a commit whose
/// every try failed with an unknown outcome, before reporting the failure.
pub const COMMIT_SETTLE_LOOKUPS: u32 = 3;

/// Settings of [`PhalaDeployer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhalaDeployerOptions {
    /// The pause between `GET /cvms/{id}` polls while waiting for a URL, and
    /// between lookups by name after an unanswered commit.
    pub url_poll_interval: Duration,
    /// How long to wait for a listed URL or a gateway domain.
    pub url_deadline: Duration,
    /// When to call start.
    pub start_policy: StartPolicy,
    /// The dashboard URL prefix; the CVM id is appended after a `/`.
    pub dashboard_base: String,
    /// The Phala instance type, e.g. `tdx.small`.
    pub instance_type: String,
    /// How the gateway makes a CVM's public URL from its app id and port
    /// (`{app_id}` and `{port}` are filled in): with it, the agent's public
    /// URL is known once provision returns the app id, before the CVM
    /// exists, and is sealed into the agent's env. `None` seals no public URL.
    pub public_url_template: Option<String>,
}

impl Default for PhalaDeployerOptions {
    fn default() -> Self {
        PhalaDeployerOptions {
            url_poll_interval: Duration::from_secs(5),
            url_deadline: Duration::from_secs(300),
            start_policy: StartPolicy::default(),
            dashboard_base: DEFAULT_DASHBOARD_BASE.to_owned(),
            instance_type: DEFAULT_INSTANCE_TYPE.to_owned(),
            public_url_template: Some(DEFAULT_PUBLIC_URL_TEMPLATE.to_owned()),
        }
    }
}

/// The dashboard prefix the Phala Cloud console uses (`…/dashboard/cvms/{cvmId}`).
pub const DEFAULT_DASHBOARD_BASE: &str = "https://cloud.phala.network/dashboard/cvms";

/// The public URLs of Phala Cloud's `prod5` cluster's gateway.
pub const DEFAULT_PUBLIC_URL_TEMPLATE: &str =
    "https://{app_id}-{port}.dstack-pha-prod5.phala.network";

/// The error code of a name another CVM already carries.
const DUPLICATE_NAME: &str = "ERR-01-004";

/// How many CVMs one `GET /cvms/paginated` page asks for.
const LIST_PAGE_SIZE: u32 = 100;

/// [`Deployer`] on Phala Cloud: provision → seal the env → commit → poll for
/// the public URL (starting the CVM per [`StartPolicy`]). A CVM whose URL never
/// appears is deleted before the error is returned. The CVM is named after
/// `spec.name`, so [`Deployer::find`] recognises it after a crash, and a
/// commit refused because the name exists adopts the existing CVM.
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

    fn deployment(&self, name: DeploymentName, cvm_id: String, endpoint_url: String) -> Deployment {
        Deployment {
            dashboard_url: format!(
                "{}/{cvm_id}",
                self.options.dashboard_base.trim_end_matches('/')
            ),
            id: cvm_id,
            name,
            endpoint_url,
        }
    }

    /// The public URL of `port` for `app_id`, when a template is configured.
    fn public_url(&self, app_id: &str, port: u16) -> Option<String> {
        let template = self.options.public_url_template.as_deref()?;
        let app_id = app_id.strip_prefix("0x").unwrap_or(app_id);
        Some(
            template
                .replace("{app_id}", app_id)
                .replace("{port}", &port.to_string()),
        )
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

    /// The endpoint of a committed CVM; a CVM we cannot reach still costs
    /// money, so it is deleted when its URL never appears, and reported
    /// left behind when that fails too.
    async fn endpoint_or_cleanup(
        &self,
        name: &DeploymentName,
        cvm_id: &str,
        port: u16,
    ) -> Result<String> {
        match self.await_endpoint(cvm_id, port).await {
            Ok(url) => Ok(url),
            Err(error) => match self.client.delete(cvm_id).await {
                Ok(()) => Err(error),
                Err(teardown_error) => {
                    tracing::warn!(%cvm_id, %teardown_error, "cleanup of a failed deploy failed");
                    Err(Error::LeftBehind {
                        name: name.to_string(),
                        cvm_id: Some(cvm_id.to_owned()),
                        source: Box::new(error),
                    })
                }
            },
        }
    }

    /// The CVM named `name`, searched page by page.
    async fn find_cvm(&self, name: &DeploymentName) -> Result<Option<Cvm>> {
        let mut page = 1;
        loop {
            let listed = self.client.list_cvms(page, LIST_PAGE_SIZE).await?;
            if let Some(cvm) = listed
                .items
                .into_iter()
                .find(|cvm| cvm.name.as_deref() == Some(name.as_str()))
            {
                return Ok(Some(cvm));
            }
            if page >= listed.pages {
                return Ok(None);
            }
            page += 1;
        }
    }

    async fn deploy_spec(&self, spec: &AgentSpec) -> Result<Deployment> {
        let port = spec.env.port;
        let provisional_keys = env_keys(&spec.env.to_vars());
        let mut env = spec.env.clone();

        // The public URL is sealed into the env, so its name is allowed in the
        // compose even before the app id that completes it is known.
        let public_url_key = delibera_deploy::vars::PUBLIC_URL.to_owned();
        let mut keys = provisional_keys;
        if self.options.public_url_template.is_some() && !keys.contains(&public_url_key) {
            keys.push(public_url_key);
        }
        let compose = render_compose(spec.role(), &spec.image, port, &keys)?;
        let provisioned = self
            .client
            .provision(&ProvisionRequest {
                name: spec.name.to_string(),
                instance_type: self.options.instance_type.clone(),
                compose_file: ComposeFile {
                    docker_compose_file: compose,
                    allowed_envs: keys.clone(),
                    name: String::new(),
                },
                region: None,
                teepod_id: None,
            })
            .await;
        let provisioned = match provisioned {
            Ok(provisioned) => provisioned,
            Err(error) if error.error_code() == Some(DUPLICATE_NAME) => {
                return self.adopt_named(spec, error).await;
            }
            Err(error) => return Err(error),
        };
        let missing = |field: &str| Error::UnexpectedResponse {
            operation: "POST /cvms/provision".to_owned(),
            reason: format!("no {field} (only the PHALA KMS is supported)"),
        };
        let app_id = provisioned.app_id.ok_or_else(|| missing("app_id"))?;
        if env.public_url.is_none()
            && let Some(url) = self.public_url(&app_id, port)
        {
            let url: delibera_deploy::Url = url.parse().map_err(|error| Error::Config {
                reason: format!("the public URL template makes an invalid URL {url:?}: {error}"),
            })?;
            // A gateway on this machine (a rehearsal) is reachable only from
            // it: the agent may publish such a URL only in local mode.
            env.local = delibera_deploy::is_loopback(&url);
            env.public_url = Some(url);
        }
        let mut vars = env.to_vars();
        validate_env_list(&vars).map_err(|error| Error::InvalidEnv {
            reason: error.to_string(),
        })?;
        // Sealed in the order the compose allows them, and nothing it does not allow.
        if let Some(extra) = vars.iter().find(|var| !keys.contains(&var.key)) {
            return Err(Error::InvalidEnv {
                reason: format!("{} is not among the compose's allowed envs", extra.key),
            });
        }
        vars.sort_by_key(|var| keys.iter().position(|key| *key == var.key));
        let pubkey = provisioned
            .app_env_encrypt_pubkey
            .ok_or_else(|| missing("app_env_encrypt_pubkey"))?;
        let encrypted_env = encrypt_env(&pubkey, &vars)?;

        let committed = self
            .client
            .commit(&CommitRequest {
                app_id,
                compose_hash: provisioned.compose_hash,
                encrypted_env: Some(encrypted_env),
                env_keys: env_keys(&vars),
            })
            .await;
        let cvm = match committed {
            Ok(cvm) => cvm,
            Err(error) if error.error_code() == Some(DUPLICATE_NAME) => {
                return self.adopt_named(spec, error).await;
            }
            // Retried and still no answer (a timeout, a reset, a 5xx): a
            // commit may have made the CVM with its answer lost. One under
            // the name is this deploy's. If none is found (or the list fails
            // too), it may still appear: the caller is told to tear it down
            // by name.
            Err(error) if error.is_retryable() => {
                return match self.find_after_unanswered_commit(&spec.name).await {
                    Some(cvm) => self.adopt(&spec.name, &cvm, port).await,
                    None => Err(Error::LeftBehind {
                        name: spec.name.to_string(),
                        cvm_id: None,
                        source: Box::new(error),
                    }),
                };
            }
            Err(error) => return Err(error),
        };
        let cvm_id = cvm.cvm_id().to_owned();
        tracing::info!(%cvm_id, name = %spec.name, "CVM committed");
        let endpoint_url = self.endpoint_or_cleanup(&spec.name, &cvm_id, port).await?;
        Ok(self.deployment(spec.name.clone(), cvm_id, endpoint_url))
    }

    /// The CVM an unanswered commit may have made under `name`: looked up
    /// [`COMMIT_SETTLE_LOOKUPS`] times, `url_poll_interval` apart, since one
    /// whose commit timed out may appear in the list only a little later.
    async fn find_after_unanswered_commit(&self, name: &DeploymentName) -> Option<Cvm> {
        for lookup in 1..=COMMIT_SETTLE_LOOKUPS {
            match self.find_cvm(name).await {
                Ok(Some(cvm)) => return Some(cvm),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%name, %error, "looking for the CVM of an unanswered commit failed");
                }
            }
            if lookup < COMMIT_SETTLE_LOOKUPS {
                tokio::time::sleep(self.options.url_poll_interval).await;
            }
        }
        None
    }

    /// The name is the idempotency key: a CVM that already carries it (the
    /// preflight or the commit says so) is the one an earlier, interrupted
    /// deploy made.
    async fn adopt_named(&self, spec: &AgentSpec, refusal: Error) -> Result<Deployment> {
        match self.find_cvm(&spec.name).await? {
            Some(cvm) => self.adopt(&spec.name, &cvm, spec.env.port).await,
            None => Err(refusal),
        }
    }

    async fn adopt(&self, name: &DeploymentName, cvm: &Cvm, port: u16) -> Result<Deployment> {
        let cvm_id = cvm.cvm_id().to_owned();
        tracing::info!(%cvm_id, %name, "adopting the CVM already deployed under this name");
        let endpoint_url = self.endpoint_or_cleanup(name, &cvm_id, port).await?;
        Ok(self.deployment(name.clone(), cvm_id, endpoint_url))
    }
}

#[async_trait]
impl Deployer for PhalaDeployer {
    async fn deploy(&self, spec: &AgentSpec) -> delibera_deploy::Result<Deployment> {
        Ok(self.deploy_spec(spec).await?)
    }

    async fn find(&self, spec: &AgentSpec) -> delibera_deploy::Result<Option<Deployment>> {
        let Some(cvm) = self.find_cvm(&spec.name).await? else {
            return Ok(None);
        };
        Ok(Some(self.adopt(&spec.name, &cvm, spec.env.port).await?))
    }

    async fn status(&self, cvm_id: &str) -> delibera_deploy::Result<DeploymentStatus> {
        let cvm = self.client.get_cvm(cvm_id).await?;
        Ok(DeploymentStatus {
            id: cvm_id.to_owned(),
            running: cvm.is_running(),
            status: cvm.status.clone().unwrap_or_else(|| "unknown".to_owned()),
            endpoint_url: cvm.urls.first().map(|url| url.app.clone()),
        })
    }

    async fn teardown(&self, cvm_id: &str) -> delibera_deploy::Result<()> {
        Ok(self.client.delete(cvm_id).await?)
    }

    async fn teardown_named(&self, name: &DeploymentName) -> delibera_deploy::Result<bool> {
        let Some(cvm) = self.find_cvm(name).await? else {
            return Ok(false);
        };
        let cvm_id = cvm.cvm_id();
        tracing::info!(%cvm_id, %name, "tearing down the CVM a failed deploy left behind");
        self.client.delete(cvm_id).await?;
        Ok(true)
    }
}
