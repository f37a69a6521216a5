//! The outside services of a production server, served by the benchmark
//! itself: a NEAR JSON-RPC node answering the registry's and the roster's
//! views from fixed answers, a Phala Cloud whose provisioning call fails at
//! once (so a worker job runs every step up to the deploy and fails fast),
//! and the real `delibera-ensue-local` as hosted Ensue.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use delibera_identity::Keypair;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The registry contract the fake node serves.
pub(crate) const REGISTRY_CONTRACT: &str = "registry.bench.testnet";
/// The coordinator contract holding the roster.
pub(crate) const ROSTER_CONTRACT: &str = "roster.bench.testnet";
/// Workers on the roster (and in the small registry).
pub(crate) const ROSTER_WORKERS: usize = 10;
/// Agents in the large registry, coordinators and workers together.
pub(crate) const LARGE_REGISTRY_AGENTS: usize = 1_000;
/// Coordinators among them.
const LARGE_REGISTRY_COORDINATORS: usize = 10;

/// Which registry the fake node answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegistrySize {
    /// The bench's coordinator and the roster's workers: 11 agents.
    Small,
    /// [`LARGE_REGISTRY_AGENTS`] agents, the roster's workers among them.
    Large,
}

impl RegistrySize {
    /// Agents `GET /api/agents/endpoints` lists with this registry.
    pub(crate) fn agents(self) -> usize {
        match self {
            RegistrySize::Small => 1 + ROSTER_WORKERS,
            RegistrySize::Large => LARGE_REGISTRY_AGENTS,
        }
    }
}

/// The view results of one registry, each already encoded as NEAR sends
/// it (`result` is the JSON text's bytes as an array of numbers), so that
/// answering costs the benchmark almost nothing.
struct Answers {
    list_active_coordinators: String,
    list_active_workers: String,
}

/// The agents the fake chain knows.
struct Chain {
    coordinator_did: String,
    coordinator_record: String,
    roster: String,
    small: Arc<Answers>,
    large: Arc<Answers>,
    current: Mutex<Arc<Answers>>,
    calls: AtomicU64,
    unexpected: AtomicU64,
}

fn agent_url(index: usize) -> String {
    format!("https://{index:040x}-3000.dstack-prod5.phala.network")
}

fn coordinator(did: &str, index: usize) -> Value {
    json!({
        "account_id": format!("dao{index}.testnet"),
        "coordinator_did": did,
        "endpoint_url": agent_url(index),
        "cvm_id": format!("{index:08x}-cvm"),
        "min_workers": 1,
        "max_workers": 10,
        "registered_at": "1760000000000000000",
        "is_active": true,
    })
}

fn worker(did: &str, coordinator_did: &str, index: usize) -> Value {
    json!({
        "account_id": format!("owner{index}.testnet"),
        "coordinator_did": coordinator_did,
        "worker_did": did,
        "endpoint_url": agent_url(10_000 + index),
        "cvm_id": format!("{index:08x}-cvm"),
        "registered_at": "1760000000000000000",
        "is_active": true,
    })
}

/// A view's `result` field: the JSON text's bytes, as a list of numbers.
fn view_result(value: &Value) -> String {
    let bytes = serde_json::to_vec(value).expect("JSON encodes");
    json!({
        "result": bytes,
        "logs": [],
        "block_height": 1,
        "block_hash": "11111111111111111111111111111111",
    })
    .to_string()
}

fn dids(count: usize) -> Vec<String> {
    (0..count)
        .map(|_| Keypair::generate().did().to_string())
        .collect()
}

impl Chain {
    fn new() -> Self {
        let coordinator_did = Keypair::generate().did().to_string();
        let roster_dids = dids(ROSTER_WORKERS);
        let other_coordinators = dids(LARGE_REGISTRY_COORDINATORS - 1);
        let other_workers =
            dids(LARGE_REGISTRY_AGENTS - LARGE_REGISTRY_COORDINATORS - ROSTER_WORKERS);

        let workers = |dids: &[&String]| -> Value {
            dids.iter()
                .enumerate()
                .map(|(index, did)| worker(did, &coordinator_did, index))
                .collect()
        };
        let small = Answers {
            list_active_coordinators: view_result(&json!([coordinator(&coordinator_did, 0)])),
            list_active_workers: view_result(&workers(&roster_dids.iter().collect::<Vec<_>>())),
        };
        let large_coordinators: Value = std::iter::once(&coordinator_did)
            .chain(&other_coordinators)
            .enumerate()
            .map(|(index, did)| coordinator(did, index))
            .collect();
        let large = Answers {
            list_active_coordinators: view_result(&large_coordinators),
            list_active_workers: view_result(&workers(
                &roster_dids.iter().chain(&other_workers).collect::<Vec<_>>(),
            )),
        };
        let roster: Value = roster_dids
            .iter()
            .enumerate()
            .map(|(index, did)| {
                json!({
                    "worker_id": did,
                    "account_id": format!("owner{index}.testnet"),
                    "registered_at": "1760000000000000000",
                    "registered_by": "protocol-api.bench.testnet",
                    "active": true,
                })
            })
            .collect();
        let small = Arc::new(small);
        Self {
            coordinator_record: view_result(&coordinator(&coordinator_did, 0)),
            coordinator_did,
            roster: view_result(&roster),
            current: Mutex::new(small.clone()),
            small,
            large: Arc::new(large),
            calls: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
        }
    }
}

#[derive(Deserialize)]
struct RpcRequest {
    id: Value,
    method: String,
    #[serde(default)]
    params: Value,
}

fn rpc_result(id: &Value, result: &str) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#),
    )
        .into_response()
}

async fn near_rpc(State(chain): State<Arc<Chain>>, body: Bytes) -> Response {
    chain.calls.fetch_add(1, Ordering::Relaxed);
    let Ok(request) = serde_json::from_slice::<RpcRequest>(&body) else {
        chain.unexpected.fetch_add(1, Ordering::Relaxed);
        return StatusCode::BAD_REQUEST.into_response();
    };
    let params = &request.params;
    let view = (request.method == "query" && params["request_type"] == "call_function")
        .then(|| params["method_name"].as_str())
        .flatten();
    let answers = chain.current.lock().expect("not poisoned").clone();
    let result = match (params["account_id"].as_str(), view) {
        (Some(REGISTRY_CONTRACT), Some("list_active_coordinators")) => {
            answers.list_active_coordinators.as_str()
        }
        (Some(REGISTRY_CONTRACT), Some("list_active_workers")) => {
            answers.list_active_workers.as_str()
        }
        (Some(REGISTRY_CONTRACT), Some("get_coordinator_by_did")) => {
            let args = params["args_base64"]
                .as_str()
                .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
                .unwrap_or_default();
            if args["coordinator_did"] == chain.coordinator_did.as_str() {
                chain.coordinator_record.as_str()
            } else {
                return rpc_result(&request.id, &view_result(&Value::Null));
            }
        }
        (Some(ROSTER_CONTRACT), Some("get_registered_workers")) => chain.roster.as_str(),
        _ => {
            chain.unexpected.fetch_add(1, Ordering::Relaxed);
            let error = json!({"jsonrpc": "2.0", "id": request.id, "error": {
                "name": "REQUEST_VALIDATION_ERROR", "code": -32601,
                "message": "the benchmark's NEAR fake does not answer this", "data": request.method,
            }});
            return (StatusCode::OK, axum::Json(error)).into_response();
        }
    };
    rpc_result(&request.id, result)
}

/// Counts of what the Phala fake was asked.
#[derive(Default)]
struct Phala {
    listed: AtomicU64,
    provisioned: AtomicU64,
    unexpected: AtomicU64,
}

async fn phala_list(State(phala): State<Arc<Phala>>) -> Response {
    phala.listed.fetch_add(1, Ordering::Relaxed);
    axum::Json(json!({"items": [], "total": 0, "page": 1, "page_size": 100, "pages": 1}))
        .into_response()
}

/// A refusal the deployer reports as it is, without retrying: the job fails
/// at its deploy step.
async fn phala_provision(State(phala): State<Arc<Phala>>) -> Response {
    phala.provisioned.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::PAYMENT_REQUIRED,
        axum::Json(json!({"detail": "insufficient balance (the load benchmark never deploys)"})),
    )
        .into_response()
}

async fn phala_unexpected(State(phala): State<Arc<Phala>>) -> Response {
    phala.unexpected.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"detail": "not served by the benchmark's Phala fake"})),
    )
        .into_response()
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for a fake");
    let addr = listener.local_addr().expect("the fake's address");
    tokio::spawn(delibera_serve::Server::new(router).run(listener, std::future::pending()));
    addr
}

/// Upstream calls so far, to count them per scenario.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UpstreamCalls {
    /// NEAR JSON-RPC requests.
    pub(crate) near: u64,
    /// `POST /cvms/provision` requests (one per job that reached its deploy).
    pub(crate) phala_provisions: u64,
    /// Phala requests of any kind.
    pub(crate) phala: u64,
    /// Requests a fake did not expect (a sign the server changed its calls).
    pub(crate) unexpected: u64,
}

impl std::ops::Sub for UpstreamCalls {
    type Output = Self;

    fn sub(self, earlier: Self) -> Self {
        Self {
            near: self.near - earlier.near,
            phala_provisions: self.phala_provisions - earlier.phala_provisions,
            phala: self.phala - earlier.phala,
            unexpected: self.unexpected - earlier.unexpected,
        }
    }
}

/// The three fakes, running on this process's runtime.
pub(crate) struct Fakes {
    chain: Arc<Chain>,
    phala: Arc<Phala>,
    /// Kept running as long as the fakes are.
    _ensue: delibera_ensue_local::LocalEnsue,
    env: Vec<(&'static str, String)>,
}

impl Fakes {
    /// Starts the fakes; `dir` holds Ensue's store and the Storacha space.
    pub(crate) async fn start(dir: &Path) -> Self {
        let chain = Arc::new(Chain::new());
        let near = serve(
            Router::new()
                .route("/", post(near_rpc))
                .with_state(chain.clone()),
        )
        .await;

        let phala = Arc::new(Phala::default());
        let phala_addr = serve(
            Router::new()
                .route("/api/v1/cvms/paginated", get(phala_list))
                .route("/api/v1/cvms/provision", post(phala_provision))
                .fallback(phala_unexpected)
                .with_state(phala.clone()),
        )
        .await;

        let ensue_key = delibera_ensue_local::ApiKey::generate();
        let ensue_env_key = ensue_key.expose().to_owned();
        let ensue = delibera_ensue_local::LocalEnsue::start(
            delibera_ensue_local::Config::default()
                .with_addr(SocketAddr::from(([127, 0, 0, 1], 0)))
                .with_data_dir(dir.join("ensue"))
                .with_bootstrap_key(ensue_key),
        )
        .await
        .expect("the Ensue stand-in starts");

        // A Storacha agent with a delegation from a space, as an operator
        // would configure it.
        use delibera_storacha::Delegator;
        let space = delibera_storacha::LocalSpaceDelegator::open(dir.join("storacha"))
            .expect("a Storacha space");
        let agent = Keypair::generate();
        let proof = space
            .delegate_space_access(&agent.did())
            .await
            .expect("a delegation to the agent")
            .proof;

        let env = vec![
            ("DELIBERA_MODE", "production".to_owned()),
            ("PHALA_API_KEY", "phak_load_benchmark".to_owned()),
            (
                "PHALA_CLOUD_API_PREFIX",
                format!("http://{phala_addr}/api/v1"),
            ),
            ("ENSUE_URL", ensue.url().to_owned()),
            ("ENSUE_API_KEY", ensue_env_key),
            ("NEAR_RPC_URL", format!("http://{near}/")),
            ("NEAR_ACCOUNT_ID", "protocol-api.bench.testnet".to_owned()),
            (
                "NEAR_PRIVATE_KEY",
                Keypair::generate().to_near_secret_string().to_string(),
            ),
            ("REGISTRY_CONTRACT_ID", REGISTRY_CONTRACT.to_owned()),
            ("COORDINATOR_CONTRACT_ID", ROSTER_CONTRACT.to_owned()),
            (
                "STORACHA_AGENT_PRIVATE_KEY",
                agent.to_ucanto_string().to_string(),
            ),
            ("STORACHA_DELEGATION_PROOF", proof),
            // Production deploys only pinned images; the fake Phala pulls none.
            ("WORKER_IMAGE", BENCH_IMAGE.to_owned()),
            ("COORDINATOR_IMAGE", BENCH_IMAGE.to_owned()),
        ];
        Self {
            chain,
            phala,
            _ensue: ensue,
            env,
        }
    }

    /// The production settings pointing a server at these fakes.
    pub(crate) fn env(&self) -> &[(&'static str, String)] {
        &self.env
    }

    /// The DID of the active coordinator the registry holds, for worker
    /// provisioning requests.
    pub(crate) fn coordinator_did(&self) -> &str {
        &self.chain.coordinator_did
    }

    /// Answers every later registry view with the `size` registry.
    pub(crate) fn set_registry(&self, size: RegistrySize) {
        let answers = match size {
            RegistrySize::Small => self.chain.small.clone(),
            RegistrySize::Large => self.chain.large.clone(),
        };
        *self.chain.current.lock().expect("not poisoned") = answers;
    }

    /// The upstream calls made so far.
    pub(crate) fn calls(&self) -> UpstreamCalls {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let phala = &self.phala;
        UpstreamCalls {
            near: load(&self.chain.calls),
            phala_provisions: load(&phala.provisioned),
            phala: load(&phala.listed) + load(&phala.provisioned) + load(&phala.unexpected),
            unexpected: load(&self.chain.unexpected) + load(&phala.unexpected),
        }
    }
}

/// The image the benchmark's deployments name (pinned, as production needs).
const BENCH_IMAGE: &str = "ghcr.io/delibera/delibera-agent@sha256:0000000000000000000000000000000000000000000000000000000000000000";
