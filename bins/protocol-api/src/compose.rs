//! Building the server from its configuration: which implementation sits
//! behind each port in local and in production mode. This is the only place
//! that knows the mode.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use delibera_agent::{LocalDeployer, RegistryWorkers};
use delibera_deploy::{Deployer, HealthGate, Url};
use delibera_ensue_local::LocalEnsue;
use delibera_identity::AccountId;
use delibera_near::{
    BlockReference, ChainRegistrar, CoordinatorContract, LocalRegistry, NearRpc, Registrar,
    Registry, RegistryContract, RpcRegistry, TransactionSender,
};
use delibera_phala::{PhalaClient, PhalaDeployer, PhalaDeployerOptions};
use delibera_storacha::{ConfiguredDelegator, Delegator, LocalSpaceDelegator};
use zeroize::Zeroizing;

use crate::AppState;
use crate::config::{Config, Mode, ProductionConfig};
use crate::ports::{AgentChain, HttpEnsue, Ports, Settings};
use crate::seal::{SecretBox, write_private_file};
use crate::store::Database;

/// The account the local registry treats as its admin and owner of the roster.
pub const LOCAL_SERVER_ACCOUNT: &str = "protocol-api.local";

/// A running server's parts: the state for [`crate::app`], and the embedded
/// services that must live as long as it.
pub struct Composition {
    /// The handlers' state.
    pub state: AppState,
    /// Local mode's embedded Ensue server.
    pub local_ensue: Option<LocalEnsue>,
}

/// The server `config` describes, in its mode.
pub async fn compose(config: &Config) -> anyhow::Result<Composition> {
    match config.mode {
        Mode::Local => compose_local(config).await,
        Mode::Production => {
            let production = ProductionConfig::from_config(config)?;
            compose_production(config, production).await
        }
    }
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

fn open_database(config: &Config) -> anyhow::Result<Database> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data dir {}", config.data_dir.display()))?;
    let secrets = SecretBox::open_or_create(&config.data_dir, config.secret_key.as_deref())?;
    Ok(Database::open(
        &config.data_dir.join("jobs.sqlite"),
        secrets,
    )?)
}

fn cors_origins(config: &Config) -> Vec<String> {
    config
        .cors_origins
        .split(',')
        .map(|origin| origin.trim().to_owned())
        .collect()
}

/// Local mode: embedded Ensue, local registry, local Storacha space and
/// in-process agents; needs no account or network. The agents of an earlier
/// run are started again (their env is kept sealed in the job database), so a
/// restart leaves every registered endpoint answering.
pub async fn compose_local(config: &Config) -> anyhow::Result<Composition> {
    let database = open_database(config)?;
    let data_dir = &config.data_dir;
    let admin_token = match &config.admin_token {
        Some(token) => Zeroizing::new(token.clone()),
        None => {
            let path = data_dir.join("admin-token");
            tracing::info!(path = %path.display(), "admin token for the signing routes is in this file");
            read_or_create_secret(&path, random_token)?
        }
    };
    let ensue_key = read_or_create_secret(&data_dir.join("ensue-bootstrap.key"), || {
        delibera_ensue_local::ApiKey::generate().expose().to_owned()
    })?;
    let local_ensue = LocalEnsue::start(
        delibera_ensue_local::Config::default()
            .with_addr(config.ensue_local_addr)
            .with_data_dir(data_dir.join("ensue"))
            .with_bootstrap_key(delibera_ensue_local::ApiKey::new(ensue_key.as_str())?)
            .with_edges(config.edges()),
    )
    .await
    .with_context(|| format!("starting the embedded Ensue on {}", config.ensue_local_addr))?;
    let server_account = AccountId::parse(LOCAL_SERVER_ACCOUNT)?;
    let registry = Arc::new(LocalRegistry::open(
        data_dir.join("registry.sqlite"),
        server_account,
    )?);
    let delegator: Arc<dyn Delegator> = Arc::new(LocalSpaceDelegator::open(data_dir)?);
    // Local coordinators find their workers in the local registry, as
    // production ones do on NEAR.
    let deployer = Arc::new(
        LocalDeployer::new(Arc::new(RegistryWorkers(registry.clone())))
            .with_journal(Arc::new(database.deployments()))
            .with_edges(config.edges()),
    );
    let restored = deployer
        .restore()
        .await
        .context("restarting the local agents")?;
    if restored > 0 {
        tracing::info!(restored, "local agents started again");
    }
    let ensue_url = Url::parse(local_ensue.url()).context("the embedded Ensue's URL")?;
    let ports = Ports {
        delegator,
        ensue: Arc::new(HttpEnsue::new(ensue_url)),
        deployer,
        health_gate: HealthGate::default(),
        registry: registry.clone(),
        // No wallet locally: the local registry registers the agent itself.
        registrar: registry,
        http: reqwest::Client::new(),
    };
    let mut settings = Settings::new(ensue_key);
    settings.health_timeout = config.health_timeout();
    settings.allow_loopback_endpoints = true;
    let state = AppState::builder(&database, ports, settings)
        .admin_token(Some(admin_token))
        .provision_rate_per_minute(config.provision_rate_per_minute)
        .mode_label("local")
        .embedded_ensue_url(local_ensue.url())
        .cors_origins(cors_origins(config))
        .max_body_bytes(config.max_body_bytes)
        .edges(config.api_edges())
        .build();
    Ok(Composition {
        state,
        local_ensue: Some(local_ensue),
    })
}

/// Production mode: Phala Cloud, hosted Ensue, NEAR RPC and a Storacha agent,
/// each from its setting. Agents are told the chain (RPC URLs, registry and
/// coordinator contracts) and get the public URL the gateway gives them.
pub async fn compose_production(
    config: &Config,
    production: ProductionConfig,
) -> anyhow::Result<Composition> {
    let database = open_database(config)?;
    let phala = PhalaClient::new(
        production.phala_api_url.as_str(),
        production.phala_api_key.as_str(),
    )
    .context("PHALA_API_KEY / PHALA_CLOUD_API_PREFIX")?;
    let deployer: Arc<dyn Deployer> = Arc::new(PhalaDeployer::with_options(
        phala,
        PhalaDeployerOptions {
            public_url_template: Some(production.phala_public_url_template.clone()),
            ..PhalaDeployerOptions::default()
        },
    ));

    let rpc =
        NearRpc::new(production.near_rpc_urls.iter().map(Url::as_str)).context("NEAR_RPC_URL")?;
    let sender = TransactionSender::new(rpc.clone(), production.near_signer);
    // The registry is read at the state a wallet's transaction reaches first
    // (optimistic), not the final state a block or two behind it: a user who
    // just registered a coordinator goes on to provision its workers at once.
    let registry: Arc<dyn Registry> = Arc::new(RpcRegistry::new(
        RegistryContract::with_sender(sender.clone(), production.registry_contract.clone())
            .reading_at(BlockReference::Optimistic),
        CoordinatorContract::with_sender(sender, production.coordinator_contract.clone()),
    ));
    let registrar: Arc<dyn Registrar> = Arc::new(ChainRegistrar::new(
        registry.clone(),
        rpc,
        vec![
            production.registry_contract.clone(),
            production.coordinator_contract.clone(),
        ],
    ));
    let delegator: Arc<dyn Delegator> = Arc::new(
        ConfiguredDelegator::from_strings(
            &production.storacha_agent_private_key,
            &production.storacha_delegation_proof,
        )
        .context("STORACHA_AGENT_PRIVATE_KEY / STORACHA_DELEGATION_PROOF")?,
    );
    let ports = Ports {
        delegator,
        ensue: Arc::new(HttpEnsue::new(production.ensue_url)),
        deployer,
        health_gate: HealthGate::default(),
        registry,
        registrar,
        http: reqwest::Client::new(),
    };
    let mut settings = Settings::new(production.ensue_api_key);
    settings.health_timeout = config.health_timeout();
    settings.worker_image = production.worker_image;
    settings.coordinator_image = production.coordinator_image;
    settings.agent_chain = AgentChain {
        near_rpc_urls: production.near_rpc_urls,
        registry_contract: Some(production.registry_contract),
        coordinator_contract: Some(production.coordinator_contract),
    };
    let state = AppState::builder(&database, ports, settings)
        .admin_token(config.admin_token.clone().map(Zeroizing::new))
        .provision_rate_per_minute(config.provision_rate_per_minute)
        .mode_label("production")
        .cors_origins(cors_origins(config))
        .max_body_bytes(config.max_body_bytes)
        .edges(config.api_edges())
        .build();
    Ok(Composition {
        state,
        local_ensue: None,
    })
}
