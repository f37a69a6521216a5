//! Server configuration: command-line flags, each also read from the
//! environment, parsed into their types by clap; and [`ProductionConfig`],
//! every production setting present and typed, or the names of all that are
//! missing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use delibera_deploy::{ImageRef, Url};
use delibera_identity::AccountId;
use delibera_near::NearSigner;
use zeroize::Zeroizing;

/// Where the server's outside services come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Everything embedded: local Ensue, local registry, local Storacha space,
    /// in-process agents. Needs no account or network.
    Local,
    /// Phala Cloud, hosted Ensue, NEAR RPC and a configured Storacha agent.
    Production,
}

/// The protocol-api server's configuration.
// No `Debug`: the config holds keys and tokens, and nothing should print it whole.
#[derive(Clone, Parser)]
#[command(name = "protocol-api", version, about = "Delibera Protocol API server")]
pub struct Config {
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 3005)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Where jobs, keys and local state live.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// `local` (default, offline) or `production`.
    #[arg(long, env = "DELIBERA_MODE", value_enum, default_value_t = Mode::Local)]
    pub mode: Mode,
    /// Bearer token for the routes that sign with the server's NEAR key. In
    /// local mode one is generated into the data dir when unset; an empty
    /// token is refused (it would lock those routes for everyone).
    #[arg(long, env = "PROTOCOL_API_ADMIN_TOKEN", hide_env_values = true, value_parser = admin_token)]
    pub admin_token: Option<String>,
    /// The name wallet-signed requests must be addressed to (NEP-413's
    /// `recipient`): a signature made for another service is refused.
    #[arg(long, env = "NEP413_RECIPIENT", default_value = crate::auth::DEFAULT_NEP413_RECIPIENT)]
    pub nep413_recipient: String,
    /// Local mode only: lets anyone call the routes that sign with the
    /// server's key, with no credential at all (for a frontend that sends
    /// none). Refused in production.
    #[arg(long, env = "UNAUTHENTICATED_WRITES", default_value_t = false, action = clap::ArgAction::Set)]
    pub unauthenticated_writes: bool,
    /// Keeps the jobs in this PostgreSQL database
    /// (`postgres://user:password@host:5432/name`) instead of the SQLite
    /// file in DATA_DIR, so several replicas (production mode) can share
    /// them. Needs PROTOCOL_API_SECRET_KEY: every replica seals with it.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// With DATABASE_URL: how long a replica holds a job it works on
    /// without renewing its lease (it renews every third of it). A replica
    /// that dies holds its jobs this long; set the same on every replica.
    #[arg(long, env = "JOB_LEASE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub job_lease_seconds: u64,
    /// 64 hex characters sealing secrets at rest; generated into the data dir when unset.
    #[arg(long, env = "PROTOCOL_API_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Address of the embedded Ensue server in local mode (port 0 picks a free port).
    #[arg(long, env = "ENSUE_LOCAL_ADDR", default_value = "127.0.0.1:3006")]
    pub ensue_local_addr: SocketAddr,
    /// How long an agent may take to become healthy before its job fails and
    /// its deployment is torn down.
    #[arg(long, env = "HEALTH_TIMEOUT_SECS", default_value_t = 600)]
    pub health_timeout_secs: u64,
    /// How long a job may wait at `awaiting_near_signature` for its wallet
    /// signature before it expires: it fails, saying so, and its deployment
    /// (local agent or CVM) is torn down. A number and a unit (`24h`, `90m`,
    /// `30s`, `2d`; a bare number is seconds).
    #[arg(long, env = "JOB_EXPIRY", default_value = "24h", value_parser = parse_duration)]
    pub job_expiry: Duration,
    /// Finished jobs are purged after this many hours.
    #[arg(long, env = "JOB_RETENTION_HOURS", default_value_t = 168)]
    pub job_retention_hours: u64,
    /// Web origins allowed to call the API from a browser, comma-separated
    /// (e.g. the frontend's `https://app.example.com`); `*` allows any, `none`
    /// none. Unset: any in local mode, none in production.
    #[arg(long, env = "CORS_ORIGINS")]
    pub cors_origins: Option<String>,
    /// Provisioning requests allowed per client IP per minute.
    #[arg(long, env = "PROVISION_RATE_PER_MINUTE", default_value_t = 10)]
    pub provision_rate_per_minute: u32,
    /// How many proxies in front of the server append to `X-Forwarded-For`
    /// (1 behind one load balancer or a platform's router): the rate limit
    /// then counts per address the outermost one saw, not per proxy. 0: per
    /// TCP peer (anything more lets clients choose their own address).
    #[arg(long, env = "TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: u8,
    /// Largest accepted request body, in bytes; a larger declared
    /// `Content-Length` is refused (413) before the body is read.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Local mode: the most keys one organization may hold in the embedded Ensue (0: no limit).
    #[arg(long, env = "ENSUE_LOCAL_MAX_KEYS_PER_ORG", default_value_t = delibera_ensue_local::DEFAULT_MAX_KEYS_PER_ORG)]
    pub ensue_local_max_keys_per_org: u64,
    /// Local mode: the most bytes one organization may store in the embedded Ensue (0: no limit).
    #[arg(long, env = "ENSUE_LOCAL_MAX_BYTES_PER_ORG", default_value_t = delibera_ensue_local::DEFAULT_MAX_BYTES_PER_ORG)]
    pub ensue_local_max_bytes_per_org: u64,
    /// Local mode: organizations the embedded Ensue registers per minute, all callers together (0: no limit).
    #[arg(long, env = "ENSUE_LOCAL_REGISTRATIONS_PER_MINUTE", default_value_t = delibera_ensue_local::DEFAULT_REGISTRATIONS_PER_MINUTE)]
    pub ensue_local_registrations_per_minute: u32,
    /// Seconds a client may take to send a request's head, from connecting
    /// or from its first byte after an idle pause (applies to every HTTP
    /// server of this process: the API, the embedded Ensue, local agents).
    /// Each of these timeouts is 1 to 86400 (a day).
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = delibera_serve::DEFAULT_HEADER_READ_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=delibera_serve::LONGEST_TIMEOUT.as_secs()))]
    pub header_read_timeout_secs: u64,
    /// Seconds a keep-alive connection may stay idle between requests.
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value_t = delibera_serve::DEFAULT_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=delibera_serve::LONGEST_TIMEOUT.as_secs()))]
    pub idle_timeout_secs: u64,
    /// Seconds a client may take to send a request's body (408 after that).
    #[arg(long, env = "BODY_READ_TIMEOUT_SECS", default_value_t = delibera_serve::DEFAULT_BODY_READ_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=delibera_serve::LONGEST_TIMEOUT.as_secs()))]
    pub body_read_timeout_secs: u64,
    /// Connection cap of the API server; 0 derives it from the
    /// file-descriptor limit less FD_RESERVE (logged at start-up). Every
    /// server of the process stays under that limit together.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// File descriptors the connection caps leave free for database files,
    /// outgoing HTTP and listeners.
    #[arg(long, env = "FD_RESERVE", default_value_t = delibera_serve::DEFAULT_FD_RESERVE)]
    pub fd_reserve: u64,
    /// Milliseconds a registry read (the roster, the endpoint lists, one
    /// agent's record) is answered from memory: about one NEAR block. The
    /// server's own writes are seen at once; 0 turns the cache off (reads
    /// that arrive together still share one call).
    #[arg(long, env = "REGISTRY_CACHE_TTL_MS", default_value_t = 1000)]
    pub registry_cache_ttl_ms: u64,

    /// Production: Phala Cloud API key.
    #[arg(long, env = "PHALA_API_KEY", hide_env_values = true)]
    pub phala_api_key: Option<String>,
    /// Production: Phala Cloud API base URL (default `https://cloud-api.phala.com/api/v1`).
    #[arg(long, env = "PHALA_CLOUD_API_PREFIX")]
    pub phala_api_url: Option<Url>,
    /// Production: how the Phala gateway names a CVM's public URL
    /// (`{app_id}` and `{port}` are filled in); sealed into each agent's env.
    #[arg(long, env = "PHALA_PUBLIC_URL_TEMPLATE", default_value = delibera_phala::DEFAULT_PUBLIC_URL_TEMPLATE)]
    pub phala_public_url_template: String,
    /// Production: the server's own Ensue API key (used for workers without a coordinator org).
    #[arg(long, env = "ENSUE_API_KEY", hide_env_values = true)]
    pub ensue_api_key: Option<String>,
    /// Production: Ensue base URL (default the hosted service).
    #[arg(long, env = "ENSUE_URL")]
    pub ensue_url: Option<Url>,
    /// Production: NEAR RPC URLs, comma-separated (tried in order).
    #[arg(long, env = "NEAR_RPC_URL", value_delimiter = ',')]
    pub near_rpc_url: Vec<Url>,
    /// Production: the NEAR account the server signs with.
    #[arg(long, env = "NEAR_ACCOUNT_ID")]
    pub near_account_id: Option<AccountId>,
    /// Production: that account's secret key (`ed25519:…`).
    #[arg(long, env = "NEAR_PRIVATE_KEY", hide_env_values = true)]
    pub near_private_key: Option<String>,
    /// Production: the registry contract.
    #[arg(long, env = "REGISTRY_CONTRACT_ID")]
    pub registry_contract_id: Option<AccountId>,
    /// Production: the coordinator contract holding the worker roster.
    #[arg(long, env = "COORDINATOR_CONTRACT_ID")]
    pub coordinator_contract_id: Option<AccountId>,
    /// The worker container image. Production needs it pinned by digest
    /// (`name@sha256:…`); local mode runs agents in process and ignores it.
    #[arg(long, env = "WORKER_IMAGE")]
    pub worker_image: Option<ImageRef>,
    /// The coordinator container image, pinned by digest in production.
    #[arg(long, env = "COORDINATOR_IMAGE")]
    pub coordinator_image: Option<ImageRef>,
    /// Production: the Storacha agent key that issues delegations.
    #[arg(long, env = "STORACHA_AGENT_PRIVATE_KEY", hide_env_values = true)]
    pub storacha_agent_private_key: Option<String>,
    /// Production: the agent's delegation from the Storacha space.
    #[arg(long, env = "STORACHA_DELEGATION_PROOF", hide_env_values = true)]
    pub storacha_delegation_proof: Option<String>,
}

/// Parses `PROTOCOL_API_ADMIN_TOKEN`: anything but blank.
fn admin_token(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err(
            "the admin token is empty: set PROTOCOL_API_ADMIN_TOKEN to a secret, or \
             unset it (local mode then makes one in the data dir; production mode then \
             disables the signing routes)"
                .into(),
        );
    }
    Ok(text.to_owned())
}

impl Config {
    /// The address to bind.
    pub fn bind_addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The health-gate deadline.
    pub fn health_timeout(&self) -> Duration {
        Duration::from_secs(self.health_timeout_secs)
    }

    /// The edges of every HTTP server this process runs (the API's own
    /// connection cap, `MAX_CONNECTIONS`, is added by [`Config::api_edges`]).
    pub fn edges(&self) -> delibera_serve::Edges {
        delibera_serve::Edges::default()
            .with_header_read_timeout(Duration::from_secs(self.header_read_timeout_secs))
            .with_idle_timeout(Duration::from_secs(self.idle_timeout_secs))
            .with_body_read_timeout(Duration::from_secs(self.body_read_timeout_secs))
            .with_fd_reserve(self.fd_reserve)
    }

    /// How long a registry read is answered from memory.
    pub fn registry_cache_ttl(&self) -> Duration {
        Duration::from_millis(self.registry_cache_ttl_ms)
    }

    /// The API server's edges: [`Config::edges`] with `MAX_CONNECTIONS`.
    pub fn api_edges(&self) -> delibera_serve::Edges {
        self.edges()
            .with_max_connections((self.max_connections > 0).then_some(self.max_connections))
    }

    /// The production settings that are missing, by environment variable name.
    pub fn missing_production_settings(&self) -> Vec<&'static str> {
        let required: [(&'static str, bool); 9] = [
            ("PHALA_API_KEY", self.phala_api_key.is_some()),
            ("ENSUE_API_KEY", self.ensue_api_key.is_some()),
            ("NEAR_RPC_URL", !self.near_rpc_url.is_empty()),
            ("NEAR_ACCOUNT_ID", self.near_account_id.is_some()),
            ("NEAR_PRIVATE_KEY", self.near_private_key.is_some()),
            ("REGISTRY_CONTRACT_ID", self.registry_contract_id.is_some()),
            (
                "COORDINATOR_CONTRACT_ID",
                self.coordinator_contract_id.is_some(),
            ),
            (
                "STORACHA_AGENT_PRIVATE_KEY",
                self.storacha_agent_private_key.is_some(),
            ),
            (
                "STORACHA_DELEGATION_PROOF",
                self.storacha_delegation_proof.is_some(),
            ),
        ];
        required
            .into_iter()
            .filter(|(_, present)| !present)
            .map(|(name, _)| name)
            .collect()
    }
}

pub use delibera_serve::CorsPolicy;

/// The policy `CORS_ORIGINS` (`setting`) asks for in `mode`
/// ([`CorsPolicy::parse`]).
///
/// Unset, local mode is open to any origin (a developer's frontend on
/// another port) and production is closed: any web page could otherwise
/// start paid deployments from its visitors' browsers.
pub fn cors_policy(setting: Option<&str>, mode: Mode) -> Result<CorsPolicy, ConfigError> {
    let Some(setting) = setting else {
        return Ok(match mode {
            Mode::Local => CorsPolicy::AnyOrigin,
            Mode::Production => CorsPolicy::SameOriginOnly,
        });
    };
    CorsPolicy::parse(setting).map_err(|error| ConfigError::Invalid {
        name: "CORS_ORIGINS",
        reason: error.to_string(),
    })
}

/// Parses `24h`, `90m`, `30s`, `2d` or a bare number of seconds; at least
/// one second.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 24h, 90m, 30s or 2d"))?;
    let unit_secs = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use s, m, h or d"
            ));
        }
    };
    let seconds = number
        .checked_mul(unit_secs)
        .ok_or_else(|| format!("{text:?} is too long"))?;
    if seconds == 0 {
        return Err("the duration must be at least one second".into());
    }
    Ok(Duration::from_secs(seconds))
}

/// A duration as [`parse_duration`] reads it, in its largest whole unit
/// (`24h`, `90m`, `45s`).
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0 => format!("{}ms", duration.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Every production setting, present and typed.
pub struct ProductionConfig {
    /// The Phala Cloud API key.
    pub phala_api_key: Zeroizing<String>,
    /// The Phala Cloud API base URL.
    pub phala_api_url: Url,
    /// How the gateway names a CVM's public URL.
    pub phala_public_url_template: String,
    /// The server's own Ensue key.
    pub ensue_api_key: Zeroizing<String>,
    /// The Ensue base URL.
    pub ensue_url: Url,
    /// NEAR RPC URLs, tried in order.
    pub near_rpc_urls: Vec<Url>,
    /// The server's NEAR account and key.
    pub near_signer: NearSigner,
    /// The registry contract.
    pub registry_contract: AccountId,
    /// The coordinator contract holding the roster.
    pub coordinator_contract: AccountId,
    /// The worker image, pinned by digest.
    pub worker_image: ImageRef,
    /// The coordinator image, pinned by digest.
    pub coordinator_image: ImageRef,
    /// The Storacha agent key that issues delegations.
    pub storacha_agent_private_key: Zeroizing<String>,
    /// That agent's delegation from the Storacha space.
    pub storacha_delegation_proof: Zeroizing<String>,
}

/// Why production mode cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Settings are missing, each named by its environment variable.
    #[error("production mode needs these environment variables: {}", .0.join(", "))]
    Missing(Vec<&'static str>),
    /// A setting is present but unusable.
    #[error("{name}: {reason}")]
    Invalid {
        /// The environment variable.
        name: &'static str,
        /// What is wrong (never the value of a secret).
        reason: String,
    },
}

/// The image `name` sets, refused unless pinned by digest: the compose
/// sealed into a CVM (and the hash its attestation shows) must name the exact
/// image, and a tag can be moved to other bytes after the fact.
fn pinned_image(image: &Option<ImageRef>, name: &'static str) -> Result<ImageRef, ConfigError> {
    match image {
        Some(image) if image.is_pinned() => Ok(image.clone()),
        Some(image) => Err(ConfigError::Invalid {
            name,
            reason: format!(
                "{image} is not pinned by digest: production deploys only images named \
                 `name@sha256:<64 hex>` (a tag can point at other bytes later)"
            ),
        }),
        None => Err(ConfigError::Invalid {
            name,
            reason: "production needs the agent image pinned by digest (`name@sha256:<64 hex>`, \
                     the digest your registry shows for the image you publish)"
                .into(),
        }),
    }
}

impl ProductionConfig {
    /// The production settings of `config`, or every missing one by name.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let missing = config.missing_production_settings();
        if !missing.is_empty() {
            return Err(ConfigError::Missing(missing));
        }
        let secret = |value: &Option<String>| Zeroizing::new(value.clone().unwrap_or_default());
        let account =
            |value: &Option<AccountId>, name| value.clone().ok_or(ConfigError::Missing(vec![name]));
        let near_account = account(&config.near_account_id, "NEAR_ACCOUNT_ID")?;
        let near_signer = NearSigner::from_secret_key(
            near_account,
            config.near_private_key.as_deref().unwrap_or_default(),
        )
        .map_err(|error| ConfigError::Invalid {
            name: "NEAR_PRIVATE_KEY",
            reason: error.to_string(),
        })?;
        let constant = |text: &str, name| {
            Url::parse(text).map_err(|error| ConfigError::Invalid {
                name,
                reason: error.to_string(),
            })
        };
        Ok(Self {
            phala_api_key: secret(&config.phala_api_key),
            phala_api_url: match &config.phala_api_url {
                Some(url) => url.clone(),
                None => constant(delibera_phala::DEFAULT_BASE_URL, "PHALA_CLOUD_API_PREFIX")?,
            },
            phala_public_url_template: config.phala_public_url_template.clone(),
            ensue_api_key: secret(&config.ensue_api_key),
            ensue_url: match &config.ensue_url {
                Some(url) => url.clone(),
                None => constant(delibera_ensue::DEFAULT_BASE_URL, "ENSUE_URL")?,
            },
            near_rpc_urls: config.near_rpc_url.clone(),
            near_signer,
            registry_contract: account(&config.registry_contract_id, "REGISTRY_CONTRACT_ID")?,
            coordinator_contract: account(
                &config.coordinator_contract_id,
                "COORDINATOR_CONTRACT_ID",
            )?,
            worker_image: pinned_image(&config.worker_image, "WORKER_IMAGE")?,
            coordinator_image: pinned_image(&config.coordinator_image, "COORDINATOR_IMAGE")?,
            storacha_agent_private_key: secret(&config.storacha_agent_private_key),
            storacha_delegation_proof: secret(&config.storacha_delegation_proof),
        })
    }
}
