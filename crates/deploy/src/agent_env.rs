//! [`AgentEnv`]: every variable a deployed agent reads, written by the server
//! ([`AgentEnv::to_vars`]) and read by the agent ([`AgentEnv::from_lookup`]) in
//! this one file, so the two sides cannot drift apart.

use std::sync::LazyLock;
use std::time::Duration;

use delibera_identity::{AccountId, Did, Keypair};
use delibera_serve::CorsPolicy;
use serde::{Deserialize, Serialize};
use url::Url;
use zeroize::Zeroizing;

use crate::{AgentRole, EnvVar, Error, Result};

/// The variable names, each spelled once.
pub mod vars {
    /// `worker` or `coordinator`.
    pub const AGENT_ROLE: &str = "AGENT_ROLE";
    /// The agent's DID; must match the one its private key derives.
    pub const AGENT_DID: &str = "AGENT_DID";
    /// The agent's ucanto Ed25519 private key (`Mg…`): its identity, and the
    /// key material of its encrypted Ensue values.
    pub const PRIVATE_KEY: &str = "STORACHA_AGENT_PRIVATE_KEY";
    /// The agent's Storacha UCAN delegation.
    pub const DELEGATION_PROOF: &str = "STORACHA_DELEGATION_PROOF";
    /// The Storacha space the delegation grants access to.
    pub const SPACE_DID: &str = "STORACHA_SPACE_DID";
    /// The human-readable name published under `agent/{did}/display_name`.
    pub const DISPLAY_NAME: &str = "AGENT_DISPLAY_NAME";
    /// The NEAR account that owns the agent.
    pub const NEAR_ACCOUNT: &str = "NEAR_ACCOUNT_ID";
    /// A worker's coordinator (a coordinator's is its own DID).
    pub const COORDINATOR_DID: &str = "COORDINATOR_DID";
    /// The Ensue memory endpoint.
    pub const ENSUE_URL: &str = "ENSUE_URL";
    /// The Ensue API key.
    pub const ENSUE_API_KEY: &str = "ENSUE_API_KEY";
    /// NEAR RPC URLs, comma-separated, tried in order.
    pub const NEAR_RPC_URL: &str = "NEAR_RPC_URL";
    /// The registry contract listing agents and their endpoints.
    pub const REGISTRY_CONTRACT: &str = "REGISTRY_CONTRACT_ID";
    /// The coordinator contract (a factory-made one, or the shared roster).
    pub const COORDINATOR_CONTRACT: &str = "COORDINATOR_CONTRACT_ID";
    /// The URL the agent is reachable at from outside, published under `agent/{did}/endpoint`.
    pub const PUBLIC_URL: &str = "AGENT_PUBLIC_URL";
    /// `local` when the agent runs on the operator's machine (loopback URLs allowed).
    pub const MODE: &str = "DELIBERA_MODE";
    /// The port to listen on.
    pub const PORT: &str = "PORT";
    /// A coordinator's quorum: the fewest workers a round needs.
    pub const MIN_WORKERS: &str = "MIN_WORKERS";
    /// A coordinator's cap on the workers of a round.
    pub const MAX_WORKERS: &str = "MAX_WORKERS";
    /// A worker's base polling interval, in milliseconds.
    pub const POLL_INTERVAL_MS: &str = "POLL_INTERVAL_MS";
    /// How long a coordinator's round waits for its workers, in seconds.
    pub const ROUND_DEADLINE_SECS: &str = "ROUND_DEADLINE_SECS";
    /// `rules` or `llm`: how a worker decides its vote.
    pub const TASK_HANDLER: &str = "TASK_HANDLER";
    /// The OpenAI-compatible endpoint of the `llm` voter.
    pub const LLM_BASE_URL: &str = "LLM_BASE_URL";
    /// The model of the `llm` voter.
    pub const LLM_MODEL: &str = "LLM_MODEL";
    /// The bearer token of the `llm` voter's endpoint.
    pub const LLM_API_KEY: &str = "LLM_API_KEY";
    /// A coordinator's fixed worker list (comma-separated DIDs) instead of the registry.
    pub const STATIC_WORKERS: &str = "DELIBERA_WORKERS";
    /// `delibera` or `reference`: the family of coordination documents the
    /// agent writes (it reads both).
    pub const DOCUMENTS: &str = "AGENT_DOCUMENTS";
    /// Which web origins may call the agent from a browser: `*` (the
    /// default: its dashboards are served from another origin), `none`, or
    /// comma-separated origins.
    pub const CORS_ORIGINS: &str = "CORS_ORIGINS";

    /// Every name [`AgentEnv::from_lookup`](crate::AgentEnv::from_lookup) reads.
    pub const ALL: [&str; 27] = [
        AGENT_ROLE,
        AGENT_DID,
        PRIVATE_KEY,
        DELEGATION_PROOF,
        SPACE_DID,
        DISPLAY_NAME,
        NEAR_ACCOUNT,
        COORDINATOR_DID,
        ENSUE_URL,
        ENSUE_API_KEY,
        NEAR_RPC_URL,
        REGISTRY_CONTRACT,
        COORDINATOR_CONTRACT,
        PUBLIC_URL,
        MODE,
        PORT,
        MIN_WORKERS,
        MAX_WORKERS,
        POLL_INTERVAL_MS,
        ROUND_DEADLINE_SECS,
        TASK_HANDLER,
        LLM_BASE_URL,
        LLM_MODEL,
        LLM_API_KEY,
        STATIC_WORKERS,
        DOCUMENTS,
        CORS_ORIGINS,
    ];

    /// The names without which an agent refuses to start.
    pub const REQUIRED: [&str; 3] = [AGENT_ROLE, PRIVATE_KEY, ENSUE_API_KEY];
}

/// The Ensue endpoint an agent uses when `ENSUE_URL` is not set.
pub const DEFAULT_ENSUE_URL: &str = "https://api.ensue-network.ai/";
/// The endpoint of the `llm` voter when `LLM_BASE_URL` is not set.
pub const DEFAULT_LLM_BASE_URL: &str = "https://api.openai.com/v1";
/// A worker's base polling interval when `POLL_INTERVAL_MS` is not set.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(3000);
/// How long a round waits for workers when `ROUND_DEADLINE_SECS` is not set.
pub const DEFAULT_ROUND_DEADLINE: Duration = Duration::from_secs(120);
/// The longest accepted `POLL_INTERVAL_MS`.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(3600);

/// An agent's key and the DID it derives, always consistent with each other.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    private_key: Zeroizing<String>,
    did: Did,
}

impl AgentIdentity {
    /// Reads a ucanto Ed25519 private key (`Mg…`, what `storacha key create` prints).
    pub fn from_ucanto(private_key: &str) -> Result<Self> {
        let private_key = private_key.trim();
        // The error names the variable only: the key itself must never be echoed.
        let did = Keypair::from_ucanto_str(private_key)
            .map_err(|_| Error::invalid_var(vars::PRIVATE_KEY, "not a ucanto Ed25519 private key"))?
            .did();
        Ok(Self {
            private_key: Zeroizing::new(private_key.to_owned()),
            did,
        })
    }

    /// The identity of `keypair`.
    pub fn from_keypair(keypair: &Keypair) -> Self {
        Self {
            private_key: Zeroizing::new(keypair.to_ucanto_string().to_string()),
            did: keypair.did(),
        }
    }

    /// The agent's DID.
    pub fn did(&self) -> &Did {
        &self.did
    }

    /// The ucanto private key string (a secret).
    pub fn private_key(&self) -> &str {
        &self.private_key
    }
}

impl std::fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("did", &self.did)
            .finish_non_exhaustive()
    }
}

/// The agent's Storacha access: a UCAN delegation over a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorachaGrant {
    /// The delegation (identity-CID text form).
    pub delegation: String,
    /// The space it grants access to.
    pub space_did: Did,
}

/// How a worker decides its vote.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Voter {
    /// Deterministic keyword and threshold rules from the task.
    #[default]
    Rules,
    /// An OpenAI-compatible chat-completions endpoint.
    Llm {
        /// Base URL up to the API version, e.g. `https://api.openai.com/v1`.
        base_url: Url,
        /// The model name.
        model: String,
        /// The bearer token, if the endpoint needs one.
        api_key: Option<Zeroizing<String>>,
    },
}

impl std::fmt::Debug for Voter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Voter::Rules => f.write_str("Rules"),
            Voter::Llm {
                base_url, model, ..
            } => f
                .debug_struct("Llm")
                .field("base_url", &base_url.as_str())
                .field("model", model)
                .finish_non_exhaustive(),
        }
    }
}

/// The family of coordination documents an agent writes (`AGENT_DOCUMENTS`).
///
/// Agents read both families; this picks what they write, so a fleet can move
/// between the two one agent at a time. The agent maps it onto
/// `delibera_coordination::DocumentFamily`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum AgentDocuments {
    /// This implementation's documents (the default).
    #[default]
    Delibera,
    /// The TypeScript reference agents' documents.
    Reference,
}

impl AgentDocuments {
    /// `delibera` or `reference`, as the variable spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentDocuments::Delibera => "delibera",
            AgentDocuments::Reference => "reference",
        }
    }
}

/// A coordinator's bounds on the workers of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerBounds {
    /// The fewest workers a round needs.
    pub min: u8,
    /// The most workers a round takes.
    pub max: u8,
}

/// Everything a deployed agent reads from its environment.
///
/// The server builds one per job and seals [`to_vars`](Self::to_vars) into
/// the deployment; the agent rebuilds it with
/// [`from_lookup`](Self::from_lookup). `Debug` hides every secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEnv {
    /// Worker or coordinator.
    pub role: AgentRole,
    /// The agent's key and DID.
    pub identity: AgentIdentity,
    /// The name published under `agent/{did}/display_name`.
    pub display_name: String,
    /// The NEAR account that owns the agent.
    pub owner: Option<AccountId>,
    /// A worker's coordinator; `None` for a coordinator (it is its own).
    pub coordinator_did: Option<Did>,
    /// The agent's Storacha access.
    pub storacha: Option<StorachaGrant>,
    /// The Ensue memory endpoint.
    pub ensue_url: Url,
    /// The Ensue API key.
    pub ensue_api_key: Zeroizing<String>,
    /// NEAR RPC URLs, tried in order; empty when the agent needs no chain.
    pub near_rpc_urls: Vec<Url>,
    /// The registry contract.
    pub registry_contract: Option<AccountId>,
    /// The coordinator contract.
    pub coordinator_contract: Option<AccountId>,
    /// Where the agent is reachable from outside; `None` publishes no endpoint.
    pub public_url: Option<Url>,
    /// Whether the agent runs on the operator's machine (local mode), the only
    /// place a loopback public URL is acceptable.
    pub local: bool,
    /// The port to listen on.
    pub port: u16,
    /// A coordinator's bounds on the workers of a round.
    pub worker_bounds: Option<WorkerBounds>,
    /// A worker's base polling interval (jitter adds up to two thirds of it).
    pub poll_interval: Duration,
    /// How long a coordinator's round waits for its workers.
    pub round_deadline: Duration,
    /// How a worker decides its vote.
    pub voter: Voter,
    /// A coordinator's fixed workers, used instead of the registry.
    pub static_workers: Vec<Did>,
    /// The family of coordination documents the agent writes.
    pub documents: AgentDocuments,
    /// Which web origins may call the agent's HTTP API from a browser.
    pub cors: CorsPolicy,
}

impl AgentEnv {
    /// An env with the role's defaults: the default port, polling interval,
    /// round deadline and voter, the hosted Ensue, no chain and no public URL.
    pub fn new(
        role: AgentRole,
        identity: AgentIdentity,
        display_name: impl Into<String>,
        ensue_api_key: impl Into<String>,
    ) -> Self {
        Self {
            role,
            identity,
            display_name: display_name.into(),
            owner: None,
            coordinator_did: None,
            storacha: None,
            ensue_url: DEFAULT_ENSUE.clone(),
            ensue_api_key: Zeroizing::new(ensue_api_key.into()),
            near_rpc_urls: Vec::new(),
            registry_contract: None,
            coordinator_contract: None,
            public_url: None,
            local: false,
            port: role.default_port(),
            worker_bounds: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            round_deadline: DEFAULT_ROUND_DEADLINE,
            voter: Voter::Rules,
            static_workers: Vec::new(),
            documents: AgentDocuments::Delibera,
            cors: CorsPolicy::AnyOrigin,
        }
    }

    /// The agent's DID.
    pub fn did(&self) -> &Did {
        self.identity.did()
    }

    /// The coordinator this agent serves: a worker's coordinator, or a
    /// coordinator itself.
    pub fn coordinator(&self) -> Option<&Did> {
        match self.role {
            AgentRole::Coordinator => Some(self.did()),
            AgentRole::Worker => self.coordinator_did.as_ref(),
        }
    }

    /// The variables, secrets included, in a stable order; only what is set
    /// is written, and everything written is read back by [`from_lookup`](Self::from_lookup).
    pub fn to_vars(&self) -> Vec<EnvVar> {
        let mut out = vec![
            EnvVar::new(vars::AGENT_ROLE, self.role.as_str()),
            EnvVar::new(vars::AGENT_DID, self.did().as_str()),
            EnvVar::new(vars::PRIVATE_KEY, self.identity.private_key()),
            EnvVar::new(vars::DISPLAY_NAME, self.display_name.as_str()),
            EnvVar::new(vars::ENSUE_URL, self.ensue_url.as_str()),
            EnvVar::new(vars::ENSUE_API_KEY, self.ensue_api_key.as_str()),
            EnvVar::new(vars::MODE, if self.local { "local" } else { "production" }),
            EnvVar::new(vars::PORT, self.port.to_string()),
        ];
        let mut push = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                out.push(EnvVar::new(name, value));
            }
        };
        push(
            vars::NEAR_ACCOUNT,
            self.owner.as_ref().map(AccountId::to_string),
        );
        push(
            vars::COORDINATOR_DID,
            self.coordinator_did.as_ref().map(Did::to_string),
        );
        if let Some(grant) = &self.storacha {
            push(vars::DELEGATION_PROOF, Some(grant.delegation.clone()));
            push(vars::SPACE_DID, Some(grant.space_did.to_string()));
        }
        push(
            vars::NEAR_RPC_URL,
            (!self.near_rpc_urls.is_empty()).then(|| join(&self.near_rpc_urls, Url::as_str)),
        );
        push(
            vars::REGISTRY_CONTRACT,
            self.registry_contract.as_ref().map(AccountId::to_string),
        );
        push(
            vars::COORDINATOR_CONTRACT,
            self.coordinator_contract.as_ref().map(AccountId::to_string),
        );
        push(
            vars::PUBLIC_URL,
            self.public_url.as_ref().map(Url::to_string),
        );
        if let Some(bounds) = self.worker_bounds {
            push(vars::MIN_WORKERS, Some(bounds.min.to_string()));
            push(vars::MAX_WORKERS, Some(bounds.max.to_string()));
        }
        push(
            vars::POLL_INTERVAL_MS,
            Some(self.poll_interval.as_millis().to_string()),
        );
        push(
            vars::ROUND_DEADLINE_SECS,
            Some(self.round_deadline.as_secs().to_string()),
        );
        match &self.voter {
            Voter::Rules => push(vars::TASK_HANDLER, Some("rules".into())),
            Voter::Llm {
                base_url,
                model,
                api_key,
            } => {
                push(vars::TASK_HANDLER, Some("llm".into()));
                push(vars::LLM_BASE_URL, Some(base_url.to_string()));
                push(vars::LLM_MODEL, Some(model.clone()));
                push(
                    vars::LLM_API_KEY,
                    api_key.as_ref().map(|key| key.to_string()),
                );
            }
        }
        push(
            vars::STATIC_WORKERS,
            (!self.static_workers.is_empty()).then(|| join(&self.static_workers, Did::as_str)),
        );
        push(
            vars::DOCUMENTS,
            (self.documents != AgentDocuments::default())
                .then(|| self.documents.as_str().to_owned()),
        );
        push(
            vars::CORS_ORIGINS,
            (self.cors != CorsPolicy::AnyOrigin).then(|| self.cors.to_setting()),
        );
        out
    }

    /// Reads the process environment (see [`vars`]).
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads every variable through `lookup` (the process environment, or a
    /// deployment's env list). Values are trimmed; an empty value is unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &'static str| {
            lookup(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        let required = |name: &'static str| var(name).ok_or(Error::MissingVar { name });

        let role: AgentRole = required(vars::AGENT_ROLE)?
            .parse()
            .map_err(|error: Error| Error::invalid_var(vars::AGENT_ROLE, error.to_string()))?;
        let identity = AgentIdentity::from_ucanto(&Zeroizing::new(required(vars::PRIVATE_KEY)?))?;
        if let Some(did) = var(vars::AGENT_DID)
            && did != identity.did().as_str()
        {
            return Err(Error::invalid_var(
                vars::AGENT_DID,
                format!(
                    "{did} is not the DID of {} ({})",
                    vars::PRIVATE_KEY,
                    identity.did()
                ),
            ));
        }
        let ensue_api_key = Zeroizing::new(required(vars::ENSUE_API_KEY)?);
        let mut env = Self::new(
            role,
            identity,
            var(vars::DISPLAY_NAME).unwrap_or_else(|| format!("Delibera {role}")),
            String::new(),
        );
        env.ensue_api_key = ensue_api_key;
        env.owner = parse_var(&var, vars::NEAR_ACCOUNT, AccountId::parse)?;
        env.coordinator_did = parse_var(&var, vars::COORDINATOR_DID, str::parse::<Did>)?;
        if role == AgentRole::Coordinator
            && let Some(coordinator) = &env.coordinator_did
            && coordinator != env.did()
        {
            return Err(Error::invalid_var(
                vars::COORDINATOR_DID,
                "a coordinator's coordinator is itself",
            ));
        }
        env.coordinator_did = env.coordinator_did.filter(|_| role == AgentRole::Worker);
        env.storacha = match (var(vars::DELEGATION_PROOF), var(vars::SPACE_DID)) {
            (Some(delegation), Some(space)) => Some(StorachaGrant {
                delegation,
                space_did: space
                    .parse()
                    .map_err(|error| Error::invalid_var(vars::SPACE_DID, format!("{error}")))?,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::MissingVar {
                    name: vars::SPACE_DID,
                });
            }
            (None, Some(_)) => {
                return Err(Error::MissingVar {
                    name: vars::DELEGATION_PROOF,
                });
            }
        };
        if let Some(url) = parse_var(&var, vars::ENSUE_URL, http_url)? {
            env.ensue_url = url;
        }
        env.near_rpc_urls = var(vars::NEAR_RPC_URL)
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|url| !url.is_empty())
                    .map(|url| {
                        http_url(url)
                            .map_err(|reason| Error::invalid_var(vars::NEAR_RPC_URL, reason))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?
            .unwrap_or_default();
        env.registry_contract = parse_var(&var, vars::REGISTRY_CONTRACT, AccountId::parse)?;
        env.coordinator_contract = parse_var(&var, vars::COORDINATOR_CONTRACT, |text| {
            AccountId::parse(text)
        })?;
        env.local = match var(vars::MODE).as_deref() {
            None | Some("production") => false,
            Some("local") => true,
            Some(other) => {
                return Err(Error::invalid_var(
                    vars::MODE,
                    format!("expected `local` or `production`, got {other:?}"),
                ));
            }
        };
        env.public_url = parse_var(&var, vars::PUBLIC_URL, http_url)?;
        if let Some(url) = &env.public_url
            && is_loopback(url)
            && !env.local
        {
            return Err(Error::invalid_var(
                vars::PUBLIC_URL,
                format!(
                    "{url} is a loopback address, which nobody else can reach; it is accepted only with {}=local",
                    vars::MODE
                ),
            ));
        }
        if let Some(port) = parse_var(&var, vars::PORT, str::parse::<u16>)? {
            env.port = port;
        }
        let min = parse_var(&var, vars::MIN_WORKERS, str::parse::<u8>)?;
        let max = parse_var(&var, vars::MAX_WORKERS, str::parse::<u8>)?;
        env.worker_bounds = match (min, max) {
            (None, None) => None,
            (min, max) => {
                let bounds = WorkerBounds {
                    min: min.unwrap_or(1),
                    max: max.unwrap_or(u8::MAX),
                };
                if bounds.min == 0 || bounds.min > bounds.max {
                    return Err(Error::invalid_var(
                        vars::MIN_WORKERS,
                        format!(
                            "must be between 1 and {} ({}), got {}",
                            vars::MAX_WORKERS,
                            bounds.max,
                            bounds.min
                        ),
                    ));
                }
                Some(bounds)
            }
        };
        if let Some(ms) = parse_var(&var, vars::POLL_INTERVAL_MS, str::parse::<u64>)? {
            env.poll_interval = Duration::from_millis(ms);
            if env.poll_interval > MAX_POLL_INTERVAL || ms == 0 {
                return Err(Error::invalid_var(
                    vars::POLL_INTERVAL_MS,
                    "must be between 1 ms and one hour",
                ));
            }
        }
        if let Some(secs) = parse_var(&var, vars::ROUND_DEADLINE_SECS, str::parse::<u64>)? {
            env.round_deadline = Duration::from_secs(secs);
        }
        env.voter = match var(vars::TASK_HANDLER).as_deref() {
            None | Some("rules") => Voter::Rules,
            Some("llm") => Voter::Llm {
                base_url: parse_var(&var, vars::LLM_BASE_URL, http_url)?
                    .unwrap_or_else(|| constant_url(DEFAULT_LLM_BASE_URL)),
                model: required(vars::LLM_MODEL)?,
                api_key: var(vars::LLM_API_KEY).map(Zeroizing::new),
            },
            Some(other) => {
                return Err(Error::invalid_var(
                    vars::TASK_HANDLER,
                    format!("expected `rules` or `llm`, got {other:?}"),
                ));
            }
        };
        env.static_workers = var(vars::STATIC_WORKERS)
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|did| !did.is_empty())
                    .map(|did| {
                        did.parse::<Did>().map_err(|error| {
                            Error::invalid_var(vars::STATIC_WORKERS, error.to_string())
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?
            .unwrap_or_default();
        env.documents = match var(vars::DOCUMENTS).as_deref() {
            None | Some("delibera") => AgentDocuments::Delibera,
            Some("reference") => AgentDocuments::Reference,
            Some(other) => {
                return Err(Error::invalid_var(
                    vars::DOCUMENTS,
                    format!("expected `delibera` or `reference`, got {other:?}"),
                ));
            }
        };
        if let Some(cors) = parse_var(&var, vars::CORS_ORIGINS, CorsPolicy::parse)? {
            env.cors = cors;
        }
        Ok(env)
    }
}

/// Parses an optional variable, naming it in the error (never its value, which may be a secret).
fn parse_var<T, E: std::fmt::Display>(
    var: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
    parse: impl FnOnce(&str) -> std::result::Result<T, E>,
) -> Result<Option<T>> {
    var(name)
        .map(|text| parse(&text).map_err(|error| Error::invalid_var(name, error.to_string())))
        .transpose()
}

/// An absolute `http` or `https` URL.
fn http_url(text: &str) -> std::result::Result<Url, String> {
    let url = Url::parse(text).map_err(|error| format!("not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("expected an http or https URL".to_owned());
    }
    Ok(url)
}

/// Whether `url` points at this machine (`localhost`, `127.0.0.0/8`, `::1`).
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn join<T>(items: &[T], text: impl Fn(&T) -> &str) -> String {
    items.iter().map(text).collect::<Vec<_>>().join(",")
}

/// [`DEFAULT_ENSUE_URL`] parsed once: every new env starts from it, and
/// parsing a host name costs more than copying the parsed URL.
static DEFAULT_ENSUE: LazyLock<Url> = LazyLock::new(|| constant_url(DEFAULT_ENSUE_URL));

/// One of this module's URL constants (a unit test parses each of them).
fn constant_url(text: &'static str) -> Url {
    Url::parse(text).expect("the URL constants are valid URLs")
}

impl Serialize for AgentEnv {
    /// As its variable list, the same form a deployment carries.
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        self.to_vars().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for AgentEnv {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let vars = Vec::<EnvVar>::deserialize(deserializer)?;
        AgentEnv::try_from(vars.as_slice()).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<&[EnvVar]> for AgentEnv {
    type Error = Error;

    /// Reads an env list as the agent would read its environment.
    fn try_from(vars: &[EnvVar]) -> Result<Self> {
        AgentEnv::from_lookup(|name| {
            vars.iter()
                .find(|var| var.key == name)
                .map(|var| var.value.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_constants_parse() {
        for text in [DEFAULT_ENSUE_URL, DEFAULT_LLM_BASE_URL] {
            assert_eq!(
                constant_url(text).as_str().trim_end_matches('/'),
                text.trim_end_matches('/')
            );
        }
    }
}
