//! Building the server from its configuration: which implementation sits
//! behind each port in local and in production mode.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use delibera_coordination::{LocalDeployer, RegistryWorkers};
use delibera_ensue::{EnsueClient, EnsueConfig, Memory};
use delibera_ensue_local::LocalEnsue;
use delibera_near::{
    AccountId, CoordinatorContract, LocalRegistry, NearRpc, NearSigner, Registry, RegistryContract,
    RpcRegistry, TransactionSender,
};
use delibera_phala::{Deployer, HealthGate, ImageRef, PhalaClient, PhalaDeployer};
use delibera_storacha::{ConfiguredDelegator, Delegator, LocalSpaceDelegator};
use zeroize::Zeroizing;

use crate::AppState;
use crate::auth::RateLimiter;
use crate::config::{Config, Mode};
use crate::jobs::{JobStore, Runner};
use crate::ports::{EnsueAccess, OrgCredentials, Ports, Settings};
use crate::seal::{SecretBox, write_private_file};

/// The account the local registry treats as its admin and owner of the roster.
pub const LOCAL_SERVER_ACCOUNT: &str = "protocol-api.local";

/// Ensue over HTTP at a base URL (the hosted service, or the embedded one).
pub struct HttpEnsue {
    base_url: String,
}

impl HttpEnsue {
    /// Ensue at `base_url`.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
        }
    }
}

#[async_trait]
impl EnsueAccess for HttpEnsue {
    fn base_url(&self) -> String {
        self.base_url.clone()
    }

    async fn register_org(&self, name: &str) -> Result<OrgCredentials, String> {
        let org = delibera_ensue::register_org(&self.base_url, name)
            .await
            .map_err(|error| error.to_string())?;
        Ok(OrgCredentials {
            api_key: Zeroizing::new(org.api_key.expose_secret().to_owned()),
            claim_url: org.claim_url,
            verification_code: org.verification_code,
        })
    }

    fn memory(&self, api_key: &str) -> Arc<dyn Memory> {
        match EnsueConfig::new(api_key)
            .with_base_url(&self.base_url)
            .and_then(EnsueClient::new)
        {
            Ok(client) => Arc::new(client),
            // The base URL was validated at start-up, so this is unreachable in
            // practice; an always-failing memory keeps it an error, not a panic.
            Err(error) => Arc::new(FailingMemory(error.to_string())),
        }
    }
}

/// A memory whose every call fails with a fixed reason.
struct FailingMemory(String);

#[async_trait]
impl Memory for FailingMemory {
    async fn create(&self, _: &str, _: &str) -> delibera_ensue::Result<()> {
        Err(self.error())
    }
    async fn update(&self, _: &str, _: &str) -> delibera_ensue::Result<()> {
        Err(self.error())
    }
    async fn get(&self, _: &str) -> delibera_ensue::Result<Option<String>> {
        Err(self.error())
    }
    async fn get_many(
        &self,
        _: &[String],
    ) -> delibera_ensue::Result<std::collections::HashMap<String, String>> {
        Err(self.error())
    }
    async fn list_keys(&self, _: &str) -> delibera_ensue::Result<Vec<String>> {
        Err(self.error())
    }
    async fn delete(&self, _: &str) -> delibera_ensue::Result<()> {
        Err(self.error())
    }
}

impl FailingMemory {
    fn error(&self) -> delibera_ensue::Error {
        delibera_ensue::Error::Config {
            reason: self.0.clone(),
        }
    }
}

/// A running server's parts: the state for [`crate::app`], and the embedded
/// services that must live as long as it.
pub struct Composition {
    /// The handlers' state.
    pub state: AppState,
    /// Local mode's embedded Ensue server.
    pub local_ensue: Option<LocalEnsue>,
}

/// Reads a secret from `path`, or creates it with `make` (0600) the first time.
fn read_or_create_secret(
    path: &Path,
    make: impl FnOnce() -> String,
) -> anyhow::Result<Zeroizing<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Zeroizing::new(text.trim().to_owned())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let secret = Zeroizing::new(make());
            write_private_file(path, secret.as_bytes())
                .with_context(|| format!("creating {}", path.display()))?;
            Ok(secret)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn state(
    config: &Config,
    store: JobStore,
    ports: Ports,
    admin_token: Option<Zeroizing<String>>,
) -> AppState {
    let ports = Arc::new(ports);
    AppState {
        runner: Runner::new(store.clone(), ports.clone()),
        store,
        ports,
        admin_token: admin_token.map(Arc::new),
        rate_limiter: Arc::new(RateLimiter::new(config.provision_rate_per_minute)),
        mode_label: match config.mode {
            Mode::Local => "local",
            Mode::Production => "production",
        },
        ensue_url: None,
        cors_origins: config
            .cors_origins
            .split(',')
            .map(|origin| origin.trim().to_owned())
            .collect(),
        max_body_bytes: config.max_body_bytes,
    }
}

fn open_store(config: &Config) -> anyhow::Result<JobStore> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data dir {}", config.data_dir.display()))?;
    let secrets = SecretBox::open_or_create(&config.data_dir, config.secret_key.as_deref())?;
    Ok(JobStore::open(
        &config.data_dir.join("jobs.sqlite"),
        secrets,
    )?)
}

/// Local mode: embedded Ensue, local registry, local Storacha space and
/// in-process agents; needs no account or network. The agents of an earlier
/// run are started again (their env is kept sealed in the job database), so a
/// restart leaves every registered endpoint answering.
pub async fn compose_local(config: &Config) -> anyhow::Result<Composition> {
    let store = open_store(config)?;
    let data_dir = &config.data_dir;
    let admin_token = match &config.admin_token {
        Some(token) => Zeroizing::new(token.clone()),
        None => read_or_create_secret(&data_dir.join("admin-token"), random_token)?,
    };
    let ensue_key = read_or_create_secret(&data_dir.join("ensue-bootstrap.key"), || {
        delibera_ensue_local::ApiKey::generate().expose().to_owned()
    })?;
    let local_ensue = LocalEnsue::start(
        delibera_ensue_local::Config::default()
            .with_addr(config.ensue_local_addr)
            .with_data_dir(data_dir.join("ensue"))
            .with_bootstrap_key(delibera_ensue_local::ApiKey::new(ensue_key.as_str())?),
    )
    .await
    .with_context(|| format!("starting the embedded Ensue on {}", config.ensue_local_addr))?;
    let server_account = AccountId::parse(LOCAL_SERVER_ACCOUNT)?;
    let registry: Arc<dyn Registry> = Arc::new(LocalRegistry::open(
        data_dir.join("registry.sqlite"),
        server_account.clone(),
    )?);
    let delegator: Arc<dyn Delegator> = Arc::new(LocalSpaceDelegator::open(data_dir)?);
    // Local coordinators find their workers in the local registry, as
    // production ones do on NEAR.
    let deployer = Arc::new(
        LocalDeployer::new(Arc::new(RegistryWorkers(registry.clone())))
            .with_journal(Arc::new(store.clone())),
    );
    let restored = deployer
        .restore()
        .await
        .context("restarting the local agents")?;
    if restored > 0 {
        tracing::info!(restored, "local agents started again");
    }
    let ports = Ports {
        delegator,
        ensue: Arc::new(HttpEnsue::new(local_ensue.url())),
        deployer: deployer.clone(),
        health_gate: HealthGate::default(),
        registry,
        transactions: None,
        http: reqwest::Client::new(),
        settings: Settings {
            mode: Mode::Local,
            ensue_api_key: ensue_key,
            health_timeout: config.health_timeout(),
            server_account,
            worker_image: None,
            coordinator_image: None,
            registry_contracts: Vec::new(),
        },
    };
    let mut state = state(config, store, ports, Some(admin_token));
    state.ensue_url = Some(local_ensue.url().to_owned());
    Ok(Composition {
        state,
        local_ensue: Some(local_ensue),
    })
}

/// An optional image reference from the environment, checked at start-up.
fn image(value: &Option<String>, name: &str) -> anyhow::Result<Option<ImageRef>> {
    value
        .as_deref()
        .map(|text| ImageRef::new(text.trim()).with_context(|| name.to_owned()))
        .transpose()
}

/// Production mode: every service from the environment. Refuses to start,
/// naming every missing variable, rather than failing jobs later.
pub async fn compose_production(config: &Config) -> anyhow::Result<Composition> {
    let missing = config.missing_production_settings();
    if !missing.is_empty() {
        anyhow::bail!(
            "production mode needs these environment variables: {}",
            missing.join(", ")
        );
    }
    let required = |value: &Option<String>| value.clone().unwrap_or_default();
    let store = open_store(config)?;

    let phala_url = config
        .phala_api_url
        .clone()
        .unwrap_or_else(|| delibera_phala::DEFAULT_BASE_URL.to_owned());
    let phala = PhalaClient::new(&phala_url, required(&config.phala_api_key))?;
    let deployer: Arc<dyn Deployer> = Arc::new(PhalaDeployer::new(phala));

    let rpc_urls: Vec<String> = required(&config.near_rpc_url)
        .split(',')
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .collect();
    let rpc = NearRpc::new(rpc_urls)?;
    let server_account =
        AccountId::parse(&required(&config.near_account_id)).context("NEAR_ACCOUNT_ID")?;
    let signer =
        NearSigner::from_secret_key(server_account.clone(), &required(&config.near_private_key))
            .context("NEAR_PRIVATE_KEY")?;
    let sender = TransactionSender::new(rpc.clone(), signer);
    let registry_id = AccountId::parse(&required(&config.registry_contract_id))
        .context("REGISTRY_CONTRACT_ID")?;
    let roster_id = AccountId::parse(&required(&config.coordinator_contract_id))
        .context("COORDINATOR_CONTRACT_ID")?;
    let registry: Arc<dyn Registry> = Arc::new(RpcRegistry::new(
        RegistryContract::with_sender(sender.clone(), registry_id.clone()),
        CoordinatorContract::with_sender(sender, roster_id.clone()),
    ));

    let delegator: Arc<dyn Delegator> = Arc::new(
        ConfiguredDelegator::from_strings(
            &required(&config.storacha_agent_private_key),
            &required(&config.storacha_delegation_proof),
        )
        .context("STORACHA_AGENT_PRIVATE_KEY / STORACHA_DELEGATION_PROOF")?,
    );
    let ensue_url = config
        .ensue_url
        .clone()
        .unwrap_or_else(|| delibera_ensue::DEFAULT_BASE_URL.to_owned());
    url::Url::parse(&ensue_url).context("ENSUE_URL")?;

    let ports = Ports {
        delegator,
        ensue: Arc::new(HttpEnsue::new(ensue_url)),
        deployer,
        health_gate: HealthGate::default(),
        registry,
        transactions: Some(Arc::new(rpc)),
        http: reqwest::Client::new(),
        settings: Settings {
            mode: Mode::Production,
            ensue_api_key: Zeroizing::new(required(&config.ensue_api_key)),
            health_timeout: config.health_timeout(),
            server_account,
            worker_image: image(&config.worker_image, "WORKER_IMAGE")?,
            coordinator_image: image(&config.coordinator_image, "COORDINATOR_IMAGE")?,
            registry_contracts: vec![registry_id, roster_id],
        },
    };
    let admin_token = config.admin_token.clone().map(Zeroizing::new);
    let state = state(config, store, ports, admin_token);
    Ok(Composition {
        state,
        local_ensue: None,
    })
}
