//! Building the server from its configuration: which implementation sits
//! behind each port in local and in production mode. This is the only place
//! that knows the mode.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use delibera_agent::{DeploymentJournal, JournalEntry, LocalDeployer, LostAgent, RegistryWorkers};
use delibera_deploy::{Deployer, HealthGate, Url};
use delibera_ensue_local::LocalEnsue;
use delibera_identity::AccountId;
use delibera_near::{
    Accounts, BlockReference, CachedRegistry, ChainRegistrar, CoordinatorContract, LocalRegistry,
    NearRpc, Registrar, Registry, RegistryContract, RpcAccounts, RpcRegistry, TransactionSender,
};
use delibera_phala::{PhalaClient, PhalaDeployer, PhalaDeployerOptions};
use delibera_storacha::{ConfiguredDelegator, Delegator, LocalSpaceDelegator};
use zeroize::Zeroizing;

use crate::AppState;
use crate::config::{Config, CorsPolicy, Mode, ProductionConfig, cors_policy as parse_cors_policy};
use crate::jobs::{Job, JobStatus, JobTag};
use crate::ports::{AgentChain, EmbeddedEnsue, HttpEnsue, Ports, Settings};
use crate::seal::SecretBox;
use crate::store::{Database, DatabaseFile, PostgresConfig};

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
            if config.unauthenticated_writes {
                anyhow::bail!(
                    "UNAUTHENTICATED_WRITES is for local mode only: in production anyone could \
                     sign registry and roster changes with the server's NEAR key. Remove it; the \
                     frontend signs those requests with the user's wallet (Authorization: NEP413)"
                );
            }
            let production = ProductionConfig::from_config(config)?;
            compose_production(config, production).await
        }
    }
}

/// Reads a secret from `path`, or creates it with `make` (0600) the first
/// time. An empty file is refused: it was damaged, and a secret made anew in
/// its place would silently replace the one in use.
fn read_or_create_secret(
    path: &Path,
    make: impl FnOnce() -> String,
) -> anyhow::Result<Zeroizing<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            delibera_data_dir::tighten_file(path)?;
            let secret = text.trim();
            if secret.is_empty() {
                anyhow::bail!(
                    "{} is empty: write the secret back into it, or delete the file to have a new one made",
                    path.display()
                );
            }
            Ok(Zeroizing::new(secret.to_owned()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let secret = Zeroizing::new(make());
            delibera_data_dir::write_private_file(path, secret.as_bytes())?;
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

/// The job database's file name in the data dir.
pub const DATABASE_FILE: &str = "jobs.sqlite";

/// The local registry's file in the data dir.
const REGISTRY_FILE: &str = "registry.sqlite";
/// The embedded Ensue's directory in the data dir.
const ENSUE_DIR: &str = "ensue";

/// What a data dir holds once a server has run in it, besides the database.
const STATE_FILES: [&str; 7] = [
    "server-secret.key",
    "admin-token",
    "ensue-bootstrap.key",
    REGISTRY_FILE,
    "storacha-space.key",
    "storacha-space.did",
    ENSUE_DIR,
];

/// The job database in the data dir, and the key that seals its secrets.
/// The data dir is made owner-only and must be writable; the database must
/// be whole; a missing key file is made anew only while nothing is sealed;
/// jobs whose records cannot be read are failed, so they stop nothing else.
/// Also says whether the database held any record before this start.
async fn open_database(config: &Config) -> anyhow::Result<(Database, bool)> {
    if let Some(url) = &config.database_url {
        return Ok((open_postgres(config, url).await?, true));
    }
    let data_dir = &config.data_dir;
    delibera_data_dir::private_dir(data_dir)?;
    delibera_data_dir::check_writable(data_dir)?;
    let path = data_dir.join(DATABASE_FILE);
    if !path.exists() {
        let state: Vec<&str> = STATE_FILES
            .into_iter()
            .filter(|name| data_dir.join(name).exists())
            .collect();
        if !state.is_empty() {
            anyhow::bail!(
                "the data dir {} holds {} but no job database {}: it was deleted or moved. Restore \
                 it, or move the data dir away to start with no jobs",
                data_dir.display(),
                state.join(", "),
                path.display()
            );
        }
    }
    let file = DatabaseFile::open(&path)?;
    let held_records = file.holds_records()?;
    let sealed_data = file.holds_sealed_data()?.then(|| file.path().to_owned());
    let secrets = SecretBox::open_or_create(
        data_dir,
        config.secret_key.as_deref(),
        sealed_data.as_deref(),
    )?;
    let database = file.unlock(secrets)?;
    for job in database.jobs().fail_unreadable().await? {
        tracing::warn!(job = %JobTag::of(job.id), reason = %job.reason,
            "a job's stored record cannot be read: the job is marked failed and will not resume");
    }
    Ok((database, held_records))
}

/// The job database on PostgreSQL (`DATABASE_URL`): every replica must
/// seal with the same key, so `PROTOCOL_API_SECRET_KEY` is required (a key
/// file in one replica's data dir would differ from the others').
async fn open_postgres(config: &Config, url: &str) -> anyhow::Result<Database> {
    if config.mode == Mode::Local {
        anyhow::bail!(
            "DATABASE_URL is for production mode: local mode keeps its registry, Ensue store and \
             agents in DATA_DIR and in this process, which replicas cannot share. Unset \
             DATABASE_URL, or set DELIBERA_MODE=production"
        );
    }
    let Some(key) = config.secret_key.as_deref() else {
        anyhow::bail!(
            "DATABASE_URL is set but PROTOCOL_API_SECRET_KEY is not: every replica must seal and \
             open secrets with one key, so set PROTOCOL_API_SECRET_KEY (64 hex characters) to the \
             same value on each"
        );
    };
    let secrets = SecretBox::from_hex(key)?;
    let postgres = PostgresConfig::parse(url)
        .map_err(anyhow::Error::msg)?
        .with_job_lease(std::time::Duration::from_secs(config.job_lease_seconds));
    let database = Database::connect_postgres(&postgres, secrets)
        .await
        .with_context(|| format!("opening the job database {}", postgres.shown()))?;
    tracing::info!(database = postgres.shown(), "jobs are kept in PostgreSQL");
    // Unreadable records are failed by the replica that takes the runner
    // lock (`JobMachine::lead`), not by every replica that starts.
    Ok(database)
}

/// Refuses to start when the job database holds records but a local store
/// beside it is missing or empty (deleted, or truncated by hand).
fn require_local_stores(data_dir: &Path, held_records: bool) -> anyhow::Result<()> {
    if !held_records {
        return Ok(());
    }
    // Made anew, these would silently forget every registered agent and
    // every org key already handed out.
    let stores = [
        data_dir.join(REGISTRY_FILE),
        data_dir
            .join(ENSUE_DIR)
            .join(delibera_ensue_local::DATABASE_FILE),
    ];
    for path in stores {
        let present = std::fs::metadata(&path).is_ok_and(|metadata| metadata.len() > 0);
        if !present {
            anyhow::bail!(
                "the job database in {} holds jobs, but {} is missing or empty: it was deleted or \
                 moved, and starting would forget what it held. Restore it, or move the data dir \
                 away to start with no jobs",
                data_dir.display(),
                path.display()
            );
        }
    }
    Ok(())
}

/// The CORS policy `CORS_ORIGINS` asks for, refusing a contradictory one
/// before anything is opened or started.
fn cors_policy(config: &Config) -> anyhow::Result<CorsPolicy> {
    let policy = parse_cors_policy(config.cors_origins.as_deref(), config.mode)?;
    match (&policy, config.mode) {
        (CorsPolicy::AnyOrigin, Mode::Production) => tracing::warn!(
            "CORS_ORIGINS=* lets any web page call this API from its visitors' browsers; \
             list the frontend's origin instead"
        ),
        (CorsPolicy::SameOriginOnly, Mode::Production) if config.cors_origins.is_none() => {
            tracing::warn!(
                "no cross-origin access: a browser frontend on another origin cannot call \
                 this API until CORS_ORIGINS names its origin"
            )
        }
        _ => tracing::info!(cors = ?policy, "CORS policy"),
    }
    Ok(policy)
}

/// Local mode: embedded Ensue, local registry, local Storacha space and
/// in-process agents; needs no account or network. The agents of an earlier
/// run are started again (their env is kept sealed in the job database), so a
/// restart leaves every registered endpoint answering.
pub async fn compose_local(config: &Config) -> anyhow::Result<Composition> {
    let cors = cors_policy(config)?;
    if config.unauthenticated_writes {
        tracing::warn!(
            "UNAUTHENTICATED_WRITES is on: anyone who can reach this server may change agent \
             endpoints and the worker roster without a credential. Use it only on a machine \
             nobody else can reach"
        );
    }
    let (database, held_records) = open_database(config).await?;
    let data_dir = &config.data_dir;
    require_local_stores(data_dir, held_records)?;
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
    let server_account = AccountId::parse(LOCAL_SERVER_ACCOUNT)?;
    let registry_path = data_dir.join(REGISTRY_FILE);
    let registry = Arc::new(
        LocalRegistry::open(&registry_path, server_account)
            .with_context(|| format!("opening the local registry {}", registry_path.display()))?,
    );
    let delegator: Arc<dyn Delegator> = Arc::new(LocalSpaceDelegator::open(data_dir)?);
    // Local coordinators find their workers in the local registry, as
    // production ones do on NEAR.
    let deployer = Arc::new(
        LocalDeployer::new(Arc::new(RegistryWorkers(registry.clone())))
            .with_journal(Arc::new(database.deployments()))
            .with_edges(config.edges()),
    );
    // The agents come back first, on their journaled ports (their registered
    // endpoints), so the embedded Ensue can never be given one of them.
    let lost_agents = restore_local_agents(&database, &deployer, config.ensue_local_addr).await?;
    let local_ensue = LocalEnsue::start(
        delibera_ensue_local::Config::default()
            .with_addr(config.ensue_local_addr)
            .with_data_dir(data_dir.join(ENSUE_DIR))
            .with_bootstrap_key(delibera_ensue_local::ApiKey::new(ensue_key.as_str())?)
            .with_limits(delibera_ensue_local::Limits::default().with_org_quota(
                config.ensue_local_max_keys_per_org,
                config.ensue_local_max_bytes_per_org,
            ))
            .with_registration_limit(delibera_ensue_local::RegistrationLimit::global(
                config.ensue_local_registrations_per_minute,
            ))
            .with_edges(config.edges()),
    )
    .await
    .with_context(|| {
        format!(
            "starting the embedded Ensue on {} with its data in {}",
            config.ensue_local_addr,
            data_dir.join(ENSUE_DIR).display()
        )
    })?;
    let ensue_url = Url::parse(local_ensue.url()).context("the embedded Ensue's URL")?;
    // The routes read through the cache; the registrar writes (no wallet
    // locally: the local registry registers the agent itself) and the cache
    // forgets its answers when it does.
    let cached = CachedRegistry::new(registry.clone(), config.registry_cache_ttl());
    let ports = Ports {
        delegator,
        // Orgs are made in the embedded store under credentials the job
        // keeps first, so a registration cut off by a crash is adopted.
        ensue: Arc::new(EmbeddedEnsue::new(ensue_url, local_ensue.store().clone())),
        deployer,
        health_gate: HealthGate::default(),
        // Local accounts: the keys given in the local registry, and every
        // key's implicit account; the roster is the server's.
        accounts: Arc::new(cached.caching_accounts(registry.clone())),
        registrar: Arc::new(cached.invalidating(registry)),
        registry: Arc::new(cached),
        http: reqwest::Client::new(),
    };
    let mut settings = Settings::new(ensue_key);
    settings.background_drivers = true;
    settings.health_timeout = config.health_timeout();
    settings.job_expiry = config.job_expiry;
    settings.allow_loopback_endpoints = true;
    let state = AppState::builder(&database, ports, settings)
        .admin_token(Some(admin_token))
        .nep413_recipient(config.nep413_recipient.clone())
        .unauthenticated_writes(config.unauthenticated_writes)
        .provision_rate_per_minute(config.provision_rate_per_minute)
        .trusted_proxy_hops(config.trusted_proxy_hops)
        .mode_label("local")
        .embedded_ensue_url(local_ensue.url())
        .cors(cors)
        .max_body_bytes(config.max_body_bytes)
        .edges(config.api_edges())
        .build();
    for lost in lost_agents {
        state
            .jobs
            .fail_lost_deployment(&lost.id, lost.name.as_ref(), &lost.reason)
            .await
            .context("failing the job of a local agent that could not be restarted")?;
    }
    Ok(Composition {
        state,
        local_ensue: Some(local_ensue),
    })
}

/// Starts again the journaled local agents whose job is alive (not failed,
/// not purged), and removes the others: an agent journaled just before its
/// job recorded it, whose job then failed or vanished, must not run forever.
/// Returns the owned agents that could not be started, for their jobs to
/// fail. Refuses an Ensue address on the port a restored agent keeps.
async fn restore_local_agents(
    database: &Database,
    deployer: &LocalDeployer,
    ensue_addr: SocketAddr,
) -> anyhow::Result<Vec<LostAgent>> {
    // Failed jobs own nothing; a job whose record cannot be read was marked
    // failed when the database was opened, so it is never read here.
    let live_statuses = JobStatus::ALL
        .into_iter()
        .filter(|status| *status != JobStatus::Failed)
        .collect();
    let live: Vec<Job> = database
        .jobs()
        .in_status(live_statuses)
        .await
        .context("reading the jobs that own local agents")?;
    let journaled_ports: HashMap<String, u16> = database
        .deployments()
        .load()
        .await
        .context("reading the local agents' journal")?
        .into_iter()
        .filter_map(|entry| match entry {
            JournalEntry::Record(record) => Some((record.id, record.port)),
            JournalEntry::Unreadable { .. } => None,
        })
        .collect();
    let report = deployer
        .restore(|id, name| {
            live.iter().any(|job| {
                job.cvm_id.as_deref() == Some(id)
                    || name.is_some_and(|name| *name == job.deployment_name())
            })
        })
        .await
        .context("restarting the local agents")?;
    for id in &report.removed {
        tracing::warn!(deployment = %id, "removed a journaled local agent that no live job owns");
    }
    for (id, reason) in &report.not_removed {
        tracing::warn!(deployment = %id, %reason,
            "a journaled local agent that no live job owns was not started, and could not be removed from the journal; the next start tries again");
    }
    if !report.restored.is_empty() {
        tracing::info!(
            restored = report.restored.len(),
            "local agents started again"
        );
    }
    // Whether its agent came back or not (another process may hold its port
    // for now), the port is the one its registered endpoint names.
    if let Some(id) = report
        .restored
        .iter()
        .chain(report.lost.iter().map(|lost| &lost.id))
        .find(|id| journaled_ports.get(*id) == Some(&ensue_addr.port()))
    {
        anyhow::bail!(
            "ENSUE_LOCAL_ADDR {ensue_addr} is on the port local agent {id} keeps (its registered \
             endpoint); choose another port for the embedded Ensue, or 0 for a free one"
        );
    }
    for lost in &report.lost {
        tracing::warn!(deployment = %lost.id, reason = %lost.reason, "a local agent could not be started again");
    }
    Ok(report.lost)
}

/// Production mode: Phala Cloud, hosted Ensue, NEAR RPC and a Storacha agent,
/// each from its setting. Agents are told the chain (RPC URLs, registry and
/// coordinator contracts) and get the public URL the gateway gives them.
pub async fn compose_production(
    config: &Config,
    production: ProductionConfig,
) -> anyhow::Result<Composition> {
    let cors = cors_policy(config)?;
    let (database, _) = open_database(config).await?;
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
    // The roster likewise: the server's own writes return once executed
    // optimistically, and a final read right after would not show them.
    let registry: Arc<dyn Registry> = Arc::new(RpcRegistry::new(
        RegistryContract::with_sender(sender.clone(), production.registry_contract.clone())
            .reading_at(BlockReference::Optimistic),
        CoordinatorContract::with_sender(sender, production.coordinator_contract.clone())
            .reading_at(BlockReference::Optimistic),
    ));
    // Wallet-signed requests are checked against final state: a key just
    // added or removed counts once it is final.
    // The registrar confirms a wallet's registration against the chain's
    // state as of now, so it reads NEAR directly; the routes read through
    // the cache, which forgets its answers when a registration completes.
    let cached = CachedRegistry::new(registry.clone(), config.registry_cache_ttl());
    let accounts: Arc<dyn Accounts> =
        Arc::new(cached.caching_accounts(Arc::new(RpcAccounts::new(
            rpc.clone(),
            CoordinatorContract::new(rpc.clone(), production.coordinator_contract.clone()),
        ))));
    let registrar: Arc<dyn Registrar> =
        Arc::new(cached.invalidating(Arc::new(ChainRegistrar::new(
            registry,
            rpc,
            vec![
                production.registry_contract.clone(),
                production.coordinator_contract.clone(),
            ],
        ))));
    let registry: Arc<dyn Registry> = Arc::new(cached);
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
        accounts,
        registrar,
        http: reqwest::Client::new(),
    };
    let mut settings = Settings::new(production.ensue_api_key);
    settings.background_drivers = true;
    settings.health_timeout = config.health_timeout();
    settings.job_expiry = config.job_expiry;
    settings.worker_image = Some(production.worker_image);
    settings.coordinator_image = Some(production.coordinator_image);
    settings.agent_chain = AgentChain {
        near_rpc_urls: production.near_rpc_urls,
        registry_contract: Some(production.registry_contract),
        coordinator_contract: Some(production.coordinator_contract),
    };
    let state = AppState::builder(&database, ports, settings)
        .admin_token(config.admin_token.clone().map(Zeroizing::new))
        .nep413_recipient(config.nep413_recipient.clone())
        .provision_rate_per_minute(config.provision_rate_per_minute)
        .trusted_proxy_hops(config.trusted_proxy_hops)
        .mode_label("production")
        .cors(cors)
        .max_body_bytes(config.max_body_bytes)
        .edges(config.api_edges())
        .build();
    Ok(Composition {
        state,
        local_ensue: None,
    })
}
