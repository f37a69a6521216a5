//! A test server built from real local parts — embedded Ensue over HTTP, the
//! SQLite local registry, the local Storacha space — plus a test deployer
//! whose "agents" are real HTTP health endpoints on loopback.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use delibera_ensue_local::LocalEnsue;
use delibera_near::{AccountId, LocalRegistry, Registry};
use delibera_phala::{AgentSpec, Deployer, Deployment, DeploymentStatus, HealthGate};
use delibera_storacha::LocalSpaceDelegator;
use http_body_util::BodyExt;
use protocol_api::compose::{HttpEnsue, LOCAL_SERVER_ACCOUNT};
use protocol_api::config::Mode;
use protocol_api::jobs::{JobStore, Runner};
use protocol_api::ports::{Ports, Settings};
use protocol_api::seal::SecretBox;
use protocol_api::{AppState, auth::RateLimiter};
use serde_json::Value;
use tower::ServiceExt;
use zeroize::Zeroizing;

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A deployer whose agents are loopback HTTP servers answering the health
/// check with the DID from their env (or 503 while `healthy` is false).
///
/// The "CVMs" run on the deployer's own runtime, so like real CVMs they
/// outlive a server that crashes (a test that kills the server's runtime).
pub struct TestDeployer {
    pub healthy: Arc<AtomicBool>,
    pub deploys: AtomicUsize,
    pub teardowns: Mutex<Vec<String>>,
    pub envs: Mutex<Vec<HashMap<String, String>>>,
    servers: Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    cvms: Option<tokio::runtime::Runtime>,
}

impl TestDeployer {
    fn new(healthy: bool) -> Arc<Self> {
        Arc::new(Self {
            healthy: Arc::new(AtomicBool::new(healthy)),
            deploys: AtomicUsize::new(0),
            teardowns: Mutex::default(),
            envs: Mutex::default(),
            servers: Mutex::default(),
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
    async fn deploy(&self, spec: &AgentSpec) -> delibera_phala::Result<Deployment> {
        let n = self.deploys.fetch_add(1, Ordering::SeqCst);
        let env: HashMap<String, String> = spec
            .env
            .iter()
            .map(|var| (var.key.clone(), var.value.to_string()))
            .collect();
        let did = env.get("AGENT_DID").cloned().unwrap_or_default();
        let role = env.get("AGENT_ROLE").cloned().unwrap_or_default();
        self.envs.lock().unwrap().push(env);
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
        let cvm_id = format!("test-cvm-{n}");
        self.servers.lock().unwrap().insert(cvm_id.clone(), stop_tx);
        Ok(Deployment {
            dashboard_url: format!("{url}/dashboard"),
            app_id: format!("app-{n}"),
            cvm_id,
            endpoint_url: url,
        })
    }

    async fn status(&self, cvm_id: &str) -> delibera_phala::Result<DeploymentStatus> {
        let running = self.servers.lock().unwrap().contains_key(cvm_id);
        Ok(DeploymentStatus {
            cvm_id: cvm_id.to_owned(),
            status: if running { "running" } else { "stopped" }.to_owned(),
            running,
            endpoint_url: None,
        })
    }

    async fn teardown(&self, cvm_id: &str) -> delibera_phala::Result<()> {
        if let Some(stop) = self.servers.lock().unwrap().remove(cvm_id) {
            let _ = stop.send(());
        }
        self.teardowns.lock().unwrap().push(cvm_id.to_owned());
        Ok(())
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
    pub state: AppState,
    pub deployer: Arc<TestDeployer>,
    pub ensue: LocalEnsue,
    pub registry: Arc<LocalRegistry>,
}

pub struct Options {
    pub health_timeout: Duration,
    pub admin_token: Option<&'static str>,
    pub rate_per_minute: u32,
    /// Production mode: registration verifies the registry record (the local
    /// registry stands in for the chain) and looks `txHash` up at this NEAR RPC.
    pub production_rpc: Option<String>,
}

/// The registry contract a production test's transactions must reach.
pub const REGISTRY_CONTRACT: &str = "registry.delibera.testnet";

impl Default for Options {
    fn default() -> Self {
        Self {
            health_timeout: Duration::from_secs(10),
            admin_token: Some(ADMIN_TOKEN),
            rate_per_minute: 0,
            production_rpc: None,
        }
    }
}

impl TestApp {
    pub async fn start(data_dir: &Path, deployer: Arc<TestDeployer>, options: Options) -> Self {
        let secrets = SecretBox::from_key(&[42; 32]);
        let store = JobStore::open(&data_dir.join("jobs.sqlite"), secrets).unwrap();
        let ensue_key =
            delibera_ensue_local::ApiKey::new("ensue-test-bootstrap-key-0123456789").unwrap();
        let ensue = LocalEnsue::start(
            delibera_ensue_local::Config::default()
                .with_data_dir(data_dir.join("ensue"))
                .with_bootstrap_key(ensue_key.clone()),
        )
        .await
        .unwrap();
        let server_account = AccountId::parse(LOCAL_SERVER_ACCOUNT).unwrap();
        let registry = Arc::new(
            LocalRegistry::open(data_dir.join("registry.sqlite"), server_account.clone()).unwrap(),
        );
        let (mode, transactions) = match &options.production_rpc {
            Some(url) => (
                Mode::Production,
                Some(
                    Arc::new(delibera_near::NearRpc::new([url.as_str()]).unwrap())
                        as Arc<dyn protocol_api::ports::TransactionLookup>,
                ),
            ),
            None => (Mode::Local, None),
        };
        let ports = Arc::new(Ports {
            delegator: Arc::new(LocalSpaceDelegator::open(data_dir).unwrap()),
            ensue: Arc::new(HttpEnsue::new(ensue.url())),
            deployer: deployer.clone(),
            health_gate: HealthGate {
                initial_interval: Duration::from_millis(20),
                max_interval: Duration::from_millis(100),
                request_timeout: Duration::from_secs(2),
            },
            registry: registry.clone() as Arc<dyn Registry>,
            transactions,
            http: reqwest::Client::new(),
            settings: Settings {
                mode,
                ensue_api_key: Zeroizing::new(ensue_key.expose().to_owned()),
                health_timeout: options.health_timeout,
                server_account,
                worker_image: None,
                coordinator_image: None,
                registry_contracts: vec![AccountId::parse(REGISTRY_CONTRACT).unwrap()],
            },
        });
        let state = AppState {
            runner: Runner::new(store.clone(), ports.clone()),
            store,
            ports,
            admin_token: options
                .admin_token
                .map(|token| Arc::new(Zeroizing::new(token.to_owned()))),
            rate_limiter: Arc::new(RateLimiter::new(options.rate_per_minute)),
            mode_label: if mode == Mode::Local {
                "local"
            } else {
                "production"
            },
            ensue_url: Some(ensue.url().to_owned()),
            cors_origins: vec!["*".into()],
            max_body_bytes: 16 * 1024,
        };
        Self {
            state,
            deployer,
            ensue,
            registry,
        }
    }

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
        let response = protocol_api::app(self.state.clone())
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json)
    }

    /// Polls a job until its status is one of `statuses` (or panics after 20 s).
    pub async fn wait_for(&self, job_id: &str, statuses: &[&str]) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (code, body) = self
                .call("GET", &format!("/api/provision/status/{job_id}"), None)
                .await;
            assert_eq!(code, StatusCode::OK, "{body}");
            if statuses.contains(&body["status"].as_str().unwrap_or_default()) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job stuck at {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
