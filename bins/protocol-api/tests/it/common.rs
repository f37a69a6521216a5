//! A test server built from real local parts — embedded Ensue over HTTP, the
//! SQLite local registry, the local Storacha space — plus a test deployer
//! whose "agents" are real HTTP health endpoints on loopback.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use delibera_deploy::{
    AgentSpec, Deployer, Deployment, DeploymentName, DeploymentStatus, HealthGate,
};
use delibera_ensue_local::LocalEnsue;
use delibera_near::{AccountId, ChainRegistrar, LocalRegistry, Registrar};
use delibera_storacha::LocalSpaceDelegator;
use http_body_util::BodyExt;
use protocol_api::AppState;
use protocol_api::compose::LOCAL_SERVER_ACCOUNT;
use protocol_api::ports::{EmbeddedEnsue, EnsueAccess, HttpEnsue, Ports, Settings};
use protocol_api::seal::SecretBox;
use protocol_api::store::Database;
use serde_json::Value;
use tower::ServiceExt;
use zeroize::Zeroizing;

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Every wait in these tests gives up after this long, so a broken behaviour
/// fails with a message instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Awaits `future`, or fails naming `what` once [`DEADLINE`] has passed.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {DEADLINE:?}"))
}

/// Polls `condition` every 10 ms until it holds, or fails naming `what`.
pub async fn until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    within(what, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// An HTTP client whose every request gives up after [`DEADLINE`].
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .unwrap()
}

/// A deployer whose agents are loopback HTTP servers answering the health
/// check with the DID from their env (or 503 while `healthy` is false).
///
/// The "CVMs" run on the deployer's own runtime, so like real CVMs they
/// outlive a server that crashes (a test that kills the server's runtime).
/// A `deploy` called while `hang_after_deploy` is set makes the deployment and
/// then never returns, as a server killed inside the call would never see its
/// answer.
pub struct TestDeployer {
    pub healthy: Arc<AtomicBool>,
    /// While set, every teardown fails (the deployment stays).
    pub failing_teardowns: AtomicBool,
    pub hang_after_deploy: AtomicBool,
    /// While set, a deploy makes its deployment and then fails as if its
    /// answer was lost ([`delibera_deploy::Error::LeftBehind`], no id).
    pub leaves_behind: AtomicBool,
    /// While set, every lookup by name fails.
    pub failing_finds: AtomicBool,
    /// While set, what a deploy leaves behind is not listed (found by
    /// name) until [`TestDeployer::list_unlisted`].
    pub unlisted_left_behind: AtomicBool,
    unlisted: Mutex<Vec<(Deployment, tokio::sync::oneshot::Sender<()>)>>,
    pub deploys: AtomicUsize,
    pub finds: AtomicUsize,
    pub teardowns: Mutex<Vec<String>>,
    pub envs: Mutex<Vec<HashMap<String, String>>>,
    pub specs: Mutex<Vec<AgentSpec>>,
    servers: Mutex<HashMap<String, (Deployment, tokio::sync::oneshot::Sender<()>)>>,
    cvms: Option<tokio::runtime::Runtime>,
}

impl TestDeployer {
    fn new(healthy: bool) -> Arc<Self> {
        Arc::new(Self {
            healthy: Arc::new(AtomicBool::new(healthy)),
            failing_teardowns: AtomicBool::new(false),
            hang_after_deploy: AtomicBool::new(false),
            leaves_behind: AtomicBool::new(false),
            failing_finds: AtomicBool::new(false),
            deploys: AtomicUsize::new(0),
            finds: AtomicUsize::new(0),
            teardowns: Mutex::default(),
            envs: Mutex::default(),
            specs: Mutex::default(),
            servers: Mutex::default(),
            unlisted_left_behind: AtomicBool::new(false),
            unlisted: Mutex::default(),
            cvms: Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap(),
            ),
        })
    }

    pub fn healthy() -> Arc<Self> {
        Self::new(true)
    }

    pub fn unhealthy() -> Arc<Self> {
        Self::new(false)
    }

    /// Lists what deploys left behind unlisted, as a backend's list catches up.
    pub fn list_unlisted(&self) {
        let mut servers = self.servers.lock().unwrap();
        for (deployment, stop) in self.unlisted.lock().unwrap().drain(..) {
            servers.insert(deployment.id.clone(), (deployment, stop));
        }
    }

    pub fn last_env(&self) -> HashMap<String, String> {
        self.envs
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait]
impl Deployer for TestDeployer {
    async fn deploy(&self, spec: &AgentSpec) -> delibera_deploy::Result<Deployment> {
        // Read before the call is counted: a test that clears the flag once
        // it sees its calls counted must not let the last of them through.
        let hangs = self.hang_after_deploy.load(Ordering::SeqCst);
        let n = self.deploys.fetch_add(1, Ordering::SeqCst);
        let env: HashMap<String, String> = spec
            .env
            .to_vars()
            .into_iter()
            .map(|var| (var.key.clone(), var.value.to_string()))
            .collect();
        let did = spec.env.did().to_string();
        let role = spec.env.role.to_string();
        self.envs.lock().unwrap().push(env);
        self.specs.lock().unwrap().push(spec.clone());
        let healthy = self.healthy.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().route(
            "/",
            axum::routing::get(move || {
                let healthy = healthy.load(Ordering::SeqCst);
                let body = serde_json::json!({ "message": format!("Delibera {role} running"), "did": did });
                async move {
                    if healthy {
                        (StatusCode::OK, axum::Json(body))
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "message": "starting" })))
                    }
                }
            }),
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        self.cvms.as_ref().unwrap().spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        let deployment = Deployment {
            id: format!("test-cvm-{n}"),
            name: spec.name.clone(),
            dashboard_url: format!("{url}/dashboard"),
            endpoint_url: url,
        };
        let leaves_behind = self.leaves_behind.load(Ordering::SeqCst);
        if leaves_behind && self.unlisted_left_behind.load(Ordering::SeqCst) {
            self.unlisted
                .lock()
                .unwrap()
                .push((deployment.clone(), stop_tx));
        } else {
            self.servers
                .lock()
                .unwrap()
                .insert(deployment.id.clone(), (deployment.clone(), stop_tx));
        }
        if hangs {
            std::future::pending::<()>().await;
        }
        if leaves_behind {
            return Err(delibera_deploy::Error::LeftBehind {
                name: spec.name.to_string(),
                id: None,
                source: Box::new(delibera_deploy::Error::backend(
                    "test deployer",
                    true,
                    "the commit was never answered",
                )),
            });
        }
        Ok(deployment)
    }

    async fn find(&self, spec: &AgentSpec) -> delibera_deploy::Result<Option<Deployment>> {
        self.finds.fetch_add(1, Ordering::SeqCst);
        if self.failing_finds.load(Ordering::SeqCst) {
            return Err(delibera_deploy::Error::backend(
                "test deployer",
                true,
                "the list is unavailable",
            ));
        }
        Ok(self
            .servers
            .lock()
            .unwrap()
            .values()
            .find(|(deployment, _)| deployment.name == spec.name)
            .map(|(deployment, _)| deployment.clone()))
    }

    async fn status(&self, id: &str) -> delibera_deploy::Result<DeploymentStatus> {
        let running = self.servers.lock().unwrap().contains_key(id);
        Ok(DeploymentStatus {
            id: id.to_owned(),
            status: if running { "running" } else { "stopped" }.to_owned(),
            running,
            endpoint_url: None,
        })
    }

    async fn teardown(&self, id: &str) -> delibera_deploy::Result<()> {
        if self.failing_teardowns.load(Ordering::SeqCst) {
            return Err(delibera_deploy::Error::backend(
                "test deployer",
                true,
                "the backend is unreachable",
            ));
        }
        if let Some((_, stop)) = self.servers.lock().unwrap().remove(id) {
            let _ = stop.send(());
        }
        self.teardowns.lock().unwrap().push(id.to_owned());
        Ok(())
    }

    async fn teardown_named(&self, name: &DeploymentName) -> delibera_deploy::Result<bool> {
        let id = self
            .servers
            .lock()
            .unwrap()
            .values()
            .find(|(deployment, _)| deployment.name == *name)
            .map(|(deployment, _)| deployment.id.clone());
        match id {
            Some(id) => self.teardown(&id).await.map(|()| true),
            None => Ok(false),
        }
    }
}

impl Drop for TestDeployer {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's context would panic.
        if let Some(runtime) = self.cvms.take() {
            runtime.shutdown_background();
        }
    }
}

/// A server over `data_dir`, in local mode, with the given deployer.
pub struct TestApp {
    pub api: Api,
    /// The same database the state uses, for tests that plant or inspect records.
    pub database: Database,
    pub deployer: Arc<TestDeployer>,
    pub ensue: LocalEnsue,
    pub registry: Arc<LocalRegistry>,
}

pub struct Options {
    pub health_timeout: Duration,
    pub admin_token: Option<&'static str>,
    pub rate_per_minute: u32,
    /// Proxies in front of the server that append to `X-Forwarded-For`.
    pub trusted_proxy_hops: u8,
    /// Production mode: registration verifies the registry record (the local
    /// registry stands in for the chain) and looks `txHash` up at this NEAR RPC.
    pub production_rpc: Option<String>,
    /// Wraps the Ensue port, to make Ensue misbehave.
    pub wrap_ensue: Option<EnsueWrapper>,
    /// Configures the embedded Ensue server.
    pub ensue_config: fn(delibera_ensue_local::Config) -> delibera_ensue_local::Config,
    /// The pauses between attempts to announce an agent.
    pub announce_retry: delibera_backoff::Backoff,
    /// How long a job may wait for its wallet signature.
    pub job_expiry: Duration,
    /// Registers orgs as local mode does (in the embedded store, adopting a
    /// repeat) instead of over HTTP as with hosted Ensue.
    pub embedded_org_registration: bool,
    /// The pauses while the store cannot be written.
    pub storage_retry: delibera_backoff::Backoff,
    /// Gates that hold a job at the step of each port (all open by default).
    pub holds: Holds,
    /// How often an idle status event stream sends a heartbeat.
    pub events_heartbeat: Duration,
    /// The signing routes take no credential (UNAUTHENTICATED_WRITES).
    pub unauthenticated_writes: bool,
    /// The job store to use instead of a SQLite file in the data dir (a
    /// PostgreSQL database several test servers share).
    pub database: Option<Database>,
    /// How many jobs may be in their first steps at once.
    pub jobs_beginning_at_once: usize,
}

/// Wraps the Ensue port of a test server.
pub type EnsueWrapper = Box<dyn Fn(Arc<dyn EnsueAccess>) -> Arc<dyn EnsueAccess> + Send + Sync>;

/// The registry contract a production test's transactions must reach.
pub const REGISTRY_CONTRACT: &str = "registry.delibera.testnet";

impl Default for Options {
    fn default() -> Self {
        Self {
            health_timeout: Duration::from_secs(10),
            admin_token: Some(ADMIN_TOKEN),
            rate_per_minute: 0,
            trusted_proxy_hops: 0,
            production_rpc: None,
            wrap_ensue: None,
            ensue_config: |config| config,
            announce_retry: delibera_backoff::Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(100),
            ),
            job_expiry: protocol_api::ports::DEFAULT_JOB_EXPIRY,
            embedded_org_registration: false,
            storage_retry: delibera_backoff::Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(100),
            ),
            holds: Holds::open(),
            events_heartbeat: protocol_api::ports::DEFAULT_EVENTS_HEARTBEAT,
            unauthenticated_writes: false,
            database: None,
            jobs_beginning_at_once: protocol_api::ports::DEFAULT_JOBS_BEGINNING_AT_ONCE,
        }
    }
}

impl TestApp {
    pub async fn start(data_dir: &Path, deployer: Arc<TestDeployer>, options: Options) -> Self {
        let secrets = SecretBox::from_key(&[42; 32]);
        let database = match &options.database {
            Some(database) => database.clone(),
            None => Database::open(&data_dir.join("jobs.sqlite"), secrets).unwrap(),
        };
        let ensue_key =
            delibera_ensue_local::ApiKey::new("ensue-test-bootstrap-key-0123456789").unwrap();
        let ensue = within(
            "the embedded Ensue to start",
            LocalEnsue::start((options.ensue_config)(
                delibera_ensue_local::Config::default()
                    .with_data_dir(data_dir.join("ensue"))
                    .with_bootstrap_key(ensue_key.clone()),
            )),
        )
        .await
        .unwrap();
        let server_account = AccountId::parse(LOCAL_SERVER_ACCOUNT).unwrap();
        let registry = Arc::new(
            LocalRegistry::open(data_dir.join("registry.sqlite"), server_account).unwrap(),
        );
        // Production verifies what the wallet signed (the local registry plays
        // the chain's state, the RPC answers `tx`); locally the registry
        // registers the agent itself.
        let registrar: Arc<dyn Registrar> = match &options.production_rpc {
            Some(url) => Arc::new(
                ChainRegistrar::new(
                    registry.clone(),
                    delibera_near::NearRpc::new([url.as_str()]).unwrap(),
                    vec![AccountId::parse(REGISTRY_CONTRACT).unwrap()],
                )
                .with_settle_time(Duration::ZERO),
            ),
            None => registry.clone(),
        };
        let holds = &options.holds;
        let ports = Ports {
            delegator: Arc::new(Held {
                inner: LocalSpaceDelegator::open(data_dir).unwrap(),
                gate: holds.space.clone(),
            }),
            ensue: {
                let url = ensue.url().parse().unwrap();
                let access: Arc<dyn EnsueAccess> = if options.embedded_org_registration {
                    Arc::new(EmbeddedEnsue::new(url, ensue.store().clone()))
                } else {
                    Arc::new(HttpEnsue::new(url))
                };
                let ensue = match &options.wrap_ensue {
                    Some(wrap) => wrap(access),
                    None => access,
                };
                Arc::new(Held {
                    inner: ensue,
                    gate: holds.ensue.clone(),
                })
            },
            deployer: Arc::new(Held {
                inner: deployer.clone(),
                gate: holds.deploy.clone(),
            }),
            health_gate: HealthGate {
                initial_interval: Duration::from_millis(20),
                max_interval: Duration::from_millis(100),
                request_timeout: Duration::from_secs(2),
            },
            registry: registry.clone(),
            accounts: registry.clone(),
            registrar: Arc::new(Held {
                inner: registrar,
                gate: holds.registration.clone(),
            }),
            http: reqwest::Client::new(),
        };
        let mut settings = Settings::new(Zeroizing::new(ensue_key.expose().to_owned()));
        settings.health_timeout = options.health_timeout;
        settings.allow_loopback_endpoints = options.production_rpc.is_none();
        settings.announce_retry = options.announce_retry;
        settings.job_expiry = options.job_expiry;
        settings.registration_health_wait = Duration::from_millis(300);
        settings.storage_retry = options.storage_retry;
        settings.events_heartbeat = options.events_heartbeat;
        settings.register_storage_wait = Duration::from_millis(200);
        settings.job_scan_interval = Duration::from_millis(50);
        settings.handover_wait = Duration::from_millis(500);
        settings.jobs_beginning_at_once = options.jobs_beginning_at_once;
        let state = AppState::builder(&database, ports, settings)
            .admin_token(
                options
                    .admin_token
                    .map(|token| Zeroizing::new(token.to_owned())),
            )
            .unauthenticated_writes(options.unauthenticated_writes)
            .provision_rate_per_minute(options.rate_per_minute)
            .trusted_proxy_hops(options.trusted_proxy_hops)
            .mode_label(if options.production_rpc.is_none() {
                "local"
            } else {
                "production"
            })
            .embedded_ensue_url(ensue.url())
            .max_body_bytes(16 * 1024)
            .build();
        Self {
            api: Api { state },
            database,
            deployer,
            ensue,
            registry,
        }
    }

    /// Job `job_id`, checked to have registered exactly one Ensue org (its
    /// first name) in this server's Ensue.
    pub async fn job_with_its_one_org(&self, job_id: &str) -> protocol_api::jobs::Job {
        let job = self.state.jobs.get(job_id).await.unwrap();
        assert_eq!(job.ensue_org_attempts, 1, "one org registered");
        let org = job.ensue_org_name.clone().unwrap();
        let mut expected = vec![delibera_ensue_local::BOOTSTRAP_ORG, org.as_str()];
        expected.sort_unstable();
        assert_eq!(self.ensue.store().org_names().await.unwrap(), expected);
        job
    }
}

impl std::ops::Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Calls into a server's router, in process.
#[derive(Clone)]
pub struct Api {
    pub state: AppState,
}

impl Api {
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_with(method, path, body, None).await
    }

    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_with(method, path, body, Some(ADMIN_TOKEN)).await
    }

    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        self.send(request).await
    }

    pub async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let (status, _, json) = self.send_full(request).await;
        (status, json)
    }

    /// A JSON POST with extra headers; answers the status, headers and body.
    pub async fn post_with_headers(
        &self,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let mut request = Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send_full(request.body(Body::from(body.to_string())).unwrap())
            .await
    }

    async fn send_full(
        &self,
        request: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let what = format!("{} {}", request.method(), request.uri());
        within(&what, async {
            let response = protocol_api::app(self.state.clone())
                .oneshot(request)
                .await
                .unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (status, headers, json)
        })
        .await
    }

    /// Polls a job until its status is one of `statuses`, or fails with the
    /// last status seen once [`DEADLINE`] has passed.
    pub async fn wait_for(&self, job_id: &str, statuses: &[&str]) -> Value {
        let last = std::sync::Mutex::new(Value::Null);
        let reached = tokio::time::timeout(DEADLINE, async {
            loop {
                let (code, body) = self
                    .call("GET", &format!("/api/provision/status/{job_id}"), None)
                    .await;
                assert_eq!(code, StatusCode::OK, "{body}");
                if statuses.contains(&body["status"].as_str().unwrap_or_default()) {
                    return body;
                }
                *last.lock().unwrap() = body;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        reached.unwrap_or_else(|_| {
            panic!(
                "job {job_id} never reached {statuses:?} within {DEADLINE:?}; last seen: {}",
                last.lock().unwrap()
            )
        })
    }
}

/// An Ensue port whose first org registration is made but its answer lost,
/// as a crash or a dropped connection right after the call would leave it.
pub struct LosesFirstAnswer {
    inner: Arc<dyn EnsueAccess>,
    calls: AtomicUsize,
}

impl LosesFirstAnswer {
    pub fn wrap(inner: Arc<dyn EnsueAccess>) -> Arc<dyn EnsueAccess> {
        Arc::new(Self {
            inner,
            calls: AtomicUsize::new(0),
        })
    }
}

#[async_trait::async_trait]
impl protocol_api::ports::EnsueAccess for LosesFirstAnswer {
    fn base_url(&self) -> &delibera_deploy::Url {
        self.inner.base_url()
    }

    fn choose_org_credentials(&self) -> Option<protocol_api::ports::OrgCredentials> {
        self.inner.choose_org_credentials()
    }

    async fn register_org(
        &self,
        name: &str,
        chosen: Option<&protocol_api::ports::OrgCredentials>,
    ) -> delibera_ensue::Result<protocol_api::ports::OrgCredentials> {
        let org = self.inner.register_org(name, chosen).await?;
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(delibera_ensue::Error::Server {
                status: 504,
                body: "gateway timeout".into(),
            });
        }
        Ok(org)
    }

    fn memory(
        &self,
        api_key: &str,
    ) -> delibera_ensue::Result<std::sync::Arc<dyn delibera_ensue::Memory>> {
        self.inner.memory(api_key)
    }
}

/// Where a held port call goes, once the test decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateState {
    /// The call waits.
    Closed,
    /// The call goes through.
    Open,
    /// The call fails (only the deployer has a failure to give).
    Failing,
}

/// Holds port calls until the test decides where they go.
#[derive(Clone)]
pub struct Gate(Arc<tokio::sync::watch::Sender<GateState>>);

impl Gate {
    pub fn new(state: GateState) -> Self {
        Self(Arc::new(tokio::sync::watch::channel(state).0))
    }

    pub fn set(&self, state: GateState) {
        self.0.send_replace(state);
    }

    /// Waits while the gate is closed; true when the call may go through.
    pub async fn pass(&self) -> bool {
        let mut state = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while waiting.
        let decided = *state
            .wait_for(|state| *state != GateState::Closed)
            .await
            .unwrap();
        decided == GateState::Open
    }
}

/// One gate per port a job waits on: Storacha (`creating_space`), Ensue
/// (`provisioning_ensue`), the deployer (`deploying_phala`) and the
/// registrar (`registering`).
#[derive(Clone)]
pub struct Holds {
    pub space: Gate,
    pub ensue: Gate,
    pub deploy: Gate,
    pub registration: Gate,
}

impl Holds {
    fn with(state: GateState) -> Self {
        Self {
            space: Gate::new(state),
            ensue: Gate::new(state),
            deploy: Gate::new(state),
            registration: Gate::new(state),
        }
    }

    pub fn open() -> Self {
        Self::with(GateState::Open)
    }

    pub fn closed() -> Self {
        Self::with(GateState::Closed)
    }
}

/// A port whose calls wait at `gate` first.
struct Held<P> {
    inner: P,
    gate: Gate,
}

#[async_trait]
impl<P: std::ops::Deref<Target = dyn EnsueAccess> + Send + Sync> EnsueAccess for Held<P> {
    fn base_url(&self) -> &delibera_deploy::Url {
        self.inner.base_url()
    }

    fn choose_org_credentials(&self) -> Option<protocol_api::ports::OrgCredentials> {
        self.inner.choose_org_credentials()
    }

    async fn register_org(
        &self,
        name: &str,
        chosen: Option<&protocol_api::ports::OrgCredentials>,
    ) -> delibera_ensue::Result<protocol_api::ports::OrgCredentials> {
        self.gate.pass().await;
        self.inner.register_org(name, chosen).await
    }

    fn memory(&self, api_key: &str) -> delibera_ensue::Result<Arc<dyn delibera_ensue::Memory>> {
        self.inner.memory(api_key)
    }
}

#[async_trait]
impl delibera_storacha::Delegator for Held<LocalSpaceDelegator> {
    async fn delegate_space_access(
        &self,
        agent: &delibera_identity::Did,
    ) -> delibera_storacha::Result<delibera_storacha::SpaceDelegation> {
        self.gate.pass().await;
        self.inner.delegate_space_access(agent).await
    }
}

#[async_trait]
impl Deployer for Held<Arc<TestDeployer>> {
    async fn deploy(&self, spec: &AgentSpec) -> delibera_deploy::Result<Deployment> {
        if !self.gate.pass().await {
            return Err(delibera_deploy::Error::backend(
                "test deployer",
                false,
                "no capacity left",
            ));
        }
        self.inner.deploy(spec).await
    }

    async fn find(&self, spec: &AgentSpec) -> delibera_deploy::Result<Option<Deployment>> {
        self.inner.find(spec).await
    }

    async fn status(&self, id: &str) -> delibera_deploy::Result<DeploymentStatus> {
        self.inner.status(id).await
    }

    async fn teardown(&self, id: &str) -> delibera_deploy::Result<()> {
        self.inner.teardown(id).await
    }

    async fn teardown_named(&self, name: &DeploymentName) -> delibera_deploy::Result<bool> {
        self.inner.teardown_named(name).await
    }
}

#[async_trait]
impl Registrar for Held<Arc<dyn Registrar>> {
    async fn complete_worker(
        &self,
        claim: &delibera_near::WorkerClaim,
    ) -> delibera_near::Result<delibera_near::WorkerRecord> {
        self.gate.pass().await;
        self.inner.complete_worker(claim).await
    }

    async fn complete_coordinator(
        &self,
        claim: &delibera_near::CoordinatorClaim,
    ) -> delibera_near::Result<delibera_near::CoordinatorRecord> {
        self.gate.pass().await;
        self.inner.complete_coordinator(claim).await
    }
}

/// Set in a test binary re-run by [`in_clean_env`]: it is the child.
const CLEAN_ENV_CHILD: &str = "PROTOCOL_API_TEST_IN_CLEAN_ENV";

/// Runs the calling test again in a child process whose environment holds
/// nothing but `vars`, and checks that it passed there. Configuration is read
/// from the process environment (clap's `env = …`), so a test of what a
/// config parses to must not depend on what the developer exported.
///
/// Returns true in the child, which then runs the test's body, and false in
/// the parent once the child passed.
pub fn in_clean_env(vars: &[(&str, &str)]) -> bool {
    if std::env::var_os(CLEAN_ENV_CHILD).is_some() {
        return true;
    }
    // libtest runs each test on a thread named after it.
    let test = std::thread::current()
        .name()
        .expect("called from a test thread")
        .to_owned();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env_clear()
        .env(CLEAN_ENV_CHILD, "1")
        .envs(vars.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The child's own waits have deadlines; this one only catches a hang.
    let (status, stdout, stderr) = wait_with_output(child, &test, 3 * DEADLINE);
    assert!(
        status.success() && stdout.contains(&format!("test {test} ... ok")),
        "{test} in a clean environment: {status}\n{stdout}\n{stderr}"
    );
    false
}

/// Waits for `child` and its output, killing it and failing once `deadline`
/// has passed.
pub fn wait_with_output(
    mut child: std::process::Child,
    what: &str,
    deadline: Duration,
) -> (std::process::ExitStatus, String, String) {
    fn drain(mut from: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = from.read_to_string(&mut text);
            text
        })
    }
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: still running after {deadline:?}\n{}\n{}",
                stdout.join().unwrap(),
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}
