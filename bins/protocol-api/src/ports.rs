//! The outside services the server composes, each behind a port, and the
//! settings the provisioning steps read. Nothing here knows which
//! implementation sits behind a port; `compose.rs` chooses.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use delibera_backoff::Backoff;
use delibera_deploy::{AgentRole, Deployer, HealthGate, ImageRef, Url};
use delibera_ensue::{EnsueClient, EnsueConfig, Memory};
use delibera_identity::AccountId;
use delibera_near::{Accounts, Registrar, Registry};
use delibera_storacha::Delegator;
use zeroize::Zeroizing;

/// A new Ensue org's credentials (returned once by the service).
#[derive(Clone)]
pub struct OrgCredentials {
    /// The org's API key.
    pub api_key: Zeroizing<String>,
    /// Where the owner claims the org.
    pub claim_url: String,
    /// The code that proves the claim.
    pub verification_code: String,
}

impl std::fmt::Debug for OrgCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrgCredentials(<redacted>)")
    }
}

/// Ensue as the server uses it: creating orgs, and memory access under a key.
#[async_trait]
pub trait EnsueAccess: Send + Sync {
    /// The base URL agents are given (`ENSUE_URL`).
    fn base_url(&self) -> &Url;

    /// Credentials for a new org, when this Ensue lets the server choose
    /// them before the org exists. A job keeps them before registering, so a
    /// registration whose answer was lost (a crash, a dropped connection) is
    /// repeated under the same name and adopts the org it made. `None` (the
    /// default) when the service issues the key itself, as hosted Ensue
    /// does: a lost answer then leaves an org nobody holds the key of.
    fn choose_org_credentials(&self) -> Option<OrgCredentials> {
        None
    }

    /// Creates the org `name` (`POST /auth/agent-register` on a service).
    /// With `chosen` credentials (from [`choose_org_credentials`](Self::choose_org_credentials)),
    /// an org of that name that already answers to them was made by an
    /// earlier attempt and is adopted; any other holder of the name is
    /// [`delibera_ensue::Error::OrgNameTaken`].
    async fn register_org(
        &self,
        name: &str,
        chosen: Option<&OrgCredentials>,
    ) -> delibera_ensue::Result<OrgCredentials>;

    /// Memory as seen with `api_key`.
    fn memory(&self, api_key: &str) -> delibera_ensue::Result<Arc<dyn Memory>>;
}

/// Ensue over HTTP at a base URL (the hosted service, or the embedded one).
pub struct HttpEnsue {
    base_url: Url,
}

impl HttpEnsue {
    /// Ensue at `base_url`.
    pub fn new(base_url: Url) -> Self {
        Self { base_url }
    }
}

#[async_trait]
impl EnsueAccess for HttpEnsue {
    fn base_url(&self) -> &Url {
        &self.base_url
    }

    async fn register_org(
        &self,
        name: &str,
        chosen: Option<&OrgCredentials>,
    ) -> delibera_ensue::Result<OrgCredentials> {
        if chosen.is_some() {
            return Err(delibera_ensue::Error::Config {
                reason:
                    "an Ensue service issues org keys itself; chosen credentials cannot be used"
                        .into(),
            });
        }
        let org = delibera_ensue::register_org(self.base_url.as_str(), name).await?;
        Ok(OrgCredentials {
            api_key: Zeroizing::new(org.api_key.expose_secret().to_owned()),
            claim_url: org.claim_url,
            verification_code: org.verification_code,
        })
    }

    fn memory(&self, api_key: &str) -> delibera_ensue::Result<Arc<dyn Memory>> {
        let config = EnsueConfig::new(api_key).with_base_url(self.base_url.as_str())?;
        Ok(Arc::new(EnsueClient::new(config)?))
    }
}

/// The Ensue server embedded in this process (local mode): orgs are created
/// in its store directly, under credentials the server chooses, so a
/// repeated registration adopts the org instead of leaking it. Memory goes
/// over HTTP, as the agents reach it.
pub struct EmbeddedEnsue {
    http: HttpEnsue,
    store: delibera_ensue_local::Store,
}

impl EmbeddedEnsue {
    /// The embedded server at `base_url`, whose store is `store`. Its claim
    /// policy must activate keys at once (local mode's), as the orgs made
    /// here need no claim.
    pub fn new(base_url: Url, store: delibera_ensue_local::Store) -> Self {
        Self {
            http: HttpEnsue::new(base_url),
            store,
        }
    }
}

#[async_trait]
impl EnsueAccess for EmbeddedEnsue {
    fn base_url(&self) -> &Url {
        self.http.base_url()
    }

    fn choose_org_credentials(&self) -> Option<OrgCredentials> {
        let api_key = delibera_ensue_local::ApiKey::generate();
        // Keys work at once here; the ticket has the hosted service's shape
        // and leads to the page saying there is nothing to claim.
        let ticket = delibera_ensue_local::ClaimTicket::generate();
        Some(OrgCredentials {
            api_key: Zeroizing::new(api_key.expose().to_owned()),
            claim_url: format!("{}claim?token={}", self.base_url(), ticket.token()),
            verification_code: ticket.verification_code().to_owned(),
        })
    }

    async fn register_org(
        &self,
        name: &str,
        chosen: Option<&OrgCredentials>,
    ) -> delibera_ensue::Result<OrgCredentials> {
        let Some(chosen) = chosen else {
            return self.http.register_org(name, None).await;
        };
        let key = delibera_ensue_local::ApiKey::new(chosen.api_key.as_str()).map_err(|error| {
            delibera_ensue::Error::Config {
                reason: format!("the chosen org key is unusable: {error}"),
            }
        })?;
        match self.store.register_org_with_key(name, &key).await {
            Ok(created) => {
                if !created {
                    tracing::info!(org = name, "adopted the Ensue org an earlier attempt made");
                }
                Ok(chosen.clone())
            }
            Err(delibera_ensue_local::Error::OrgNameTaken { name }) => {
                Err(delibera_ensue::Error::OrgNameTaken { name })
            }
            Err(delibera_ensue_local::Error::InvalidOrgName { .. }) => {
                Err(delibera_ensue::Error::InvalidOrgName {
                    name: name.to_owned(),
                })
            }
            Err(error) => {
                // The cause names files of this host; a job's error, which
                // its client reads, says only where to look.
                tracing::error!(org = name, %error, "the embedded Ensue store failed to register an org");
                Err(delibera_ensue::Error::Server {
                    status: 500,
                    body: "the embedded Ensue store failed; the server log has the cause".into(),
                })
            }
        }
    }

    fn memory(&self, api_key: &str) -> delibera_ensue::Result<Arc<dyn Memory>> {
        self.http.memory(api_key)
    }
}

/// Every port the server uses.
pub struct Ports {
    /// Storacha delegations.
    pub delegator: Arc<dyn Delegator>,
    /// Ensue orgs and memory.
    pub ensue: Arc<dyn EnsueAccess>,
    /// Where agents run.
    pub deployer: Arc<dyn Deployer>,
    /// The health gate between deploy and the wallet step.
    pub health_gate: HealthGate,
    /// The registry and the worker roster.
    pub registry: Arc<dyn Registry>,
    /// Which keys speak for an account, and who owns the roster (for
    /// wallet-signed requests).
    pub accounts: Arc<dyn Accounts>,
    /// Finishes registrations after the wallet step.
    pub registrar: Arc<dyn Registrar>,
    /// HTTP client for health checks.
    pub http: reqwest::Client,
}

/// What deployed agents are told about the chain.
#[derive(Debug, Clone, Default)]
pub struct AgentChain {
    /// NEAR RPC URLs (empty: the agents need no chain, as in local mode).
    pub near_rpc_urls: Vec<Url>,
    /// The registry contract coordinators read their workers from.
    pub registry_contract: Option<AccountId>,
    /// The coordinator contract holding the roster, for coordinators without
    /// a factory-made contract of their own.
    pub coordinator_contract: Option<AccountId>,
}

/// How long a job waits for its wallet signature before it expires.
pub const DEFAULT_JOB_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// Settings the provisioning steps and routes read.
#[derive(Clone)]
pub struct Settings {
    /// Ensue key for workers whose coordinator has no org on this server.
    pub ensue_api_key: Zeroizing<String>,
    /// How long an agent may take to become healthy.
    pub health_timeout: Duration,
    /// Worker image override.
    pub worker_image: Option<ImageRef>,
    /// Coordinator image override.
    pub coordinator_image: Option<ImageRef>,
    /// Whether `http://localhost` endpoints are acceptable (only when the
    /// agents run on this machine).
    pub allow_loopback_endpoints: bool,
    /// What agents are told about the chain.
    pub agent_chain: AgentChain,
    /// The pauses between attempts to announce a registered agent in Ensue.
    pub announce_retry: Backoff,
    /// How long a job may wait at `awaiting_near_signature` before it
    /// expires: it fails and its deployment is torn down.
    pub job_expiry: Duration,
    /// How long `register` keeps probing an agent that does not answer its
    /// health check before refusing to complete its job.
    pub registration_health_wait: Duration,
    /// The pauses while the job database cannot be written (a full disk):
    /// the runner waits them out and goes on by itself once space returns.
    pub storage_retry: Backoff,
    /// How long a registration call waits for a full store before it is
    /// answered 503 (the registration is saved by itself once it can be).
    pub register_storage_wait: Duration,
    /// How often an idle status event stream sends a heartbeat comment.
    pub events_heartbeat: Duration,
    /// How often a replica looks for jobs nobody holds a lease on (one a
    /// dead replica held, or one an older release stored), to claim and
    /// carry them on (only when replicas share the store).
    pub job_scan_interval: Duration,
    /// How long a process shutting down waits for its drivers to reach a
    /// step's end, handing their jobs over, before aborting the rest.
    pub handover_wait: Duration,
    /// Whether jobs are driven on a runtime of their own, below the
    /// requests' priority (a server process), or on the caller's (tests).
    pub background_drivers: bool,
    /// How many jobs may be in their first steps (identity, delegation,
    /// spec: this machine's CPU) at once. The others wait their turn in
    /// arrival order, holding only their record, so a burst of accepted
    /// jobs is carried through one after another instead of all at once
    /// with every one's working state in memory; a job gives its place up
    /// at its first wait on an outside service.
    pub jobs_beginning_at_once: usize,
}

/// Enough jobs beginning at once to keep the drivers busy while each one's
/// steps wait for their commits (about a millisecond each, batched).
pub const DEFAULT_JOBS_BEGINNING_AT_ONCE: usize = 64;

/// How often an idle status event stream says it is alive, so proxies and
/// browsers keep it open.
pub const DEFAULT_EVENTS_HEARTBEAT: Duration = Duration::from_secs(15);

impl Settings {
    /// Settings with these defaults: a 10-minute health timeout, the default
    /// images, https endpoints only, no chain for agents, announcements
    /// retried every 5 s growing to 5 min, a full disk retried every 1 s
    /// growing to 1 min (a registration call answered 503 after 10 s of it), jobs expiring after 24 h at the wallet step, and 5 s
    /// for an agent to prove healthy at registration; a shared store is
    /// scanned for jobs other replicas started every second, and a
    /// registration another replica left for 2 min is finished by the runner;
    /// at most 64 jobs are in their first steps at once.
    pub fn new(ensue_api_key: Zeroizing<String>) -> Self {
        Self {
            ensue_api_key,
            health_timeout: Duration::from_secs(600),
            worker_image: None,
            coordinator_image: None,
            allow_loopback_endpoints: false,
            agent_chain: AgentChain::default(),
            announce_retry: Backoff::new(Duration::from_secs(5), Duration::from_secs(300)),
            job_expiry: DEFAULT_JOB_EXPIRY,
            registration_health_wait: Duration::from_secs(5),
            storage_retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            register_storage_wait: Duration::from_secs(10),
            events_heartbeat: DEFAULT_EVENTS_HEARTBEAT,
            job_scan_interval: Duration::from_secs(1),
            handover_wait: Duration::from_secs(10),
            background_drivers: false,
            jobs_beginning_at_once: DEFAULT_JOBS_BEGINNING_AT_ONCE,
        }
    }

    /// The image a role's agents run.
    pub fn image_for(&self, role: AgentRole) -> ImageRef {
        match role {
            AgentRole::Coordinator => self.coordinator_image.clone(),
            AgentRole::Worker => self.worker_image.clone(),
        }
        .unwrap_or_else(|| ImageRef::default_for(role))
    }
}
