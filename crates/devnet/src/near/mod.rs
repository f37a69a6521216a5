//! A NEAR JSON-RPC stand-in: a one-node chain with accounts, access keys,
//! blocks, real signed transactions and the Delibera contracts' rules,
//! which `delibera-near` and near-api-js 7 use unchanged.
//!
//! - A block every [`NearDevnetConfig::block_time`]; `finality: "final"`
//!   reads the state [`NearDevnetConfig::final_lag`] blocks behind the head,
//!   for accounts, keys and contract state alike.
//! - Transactions are checked on arrival (signature, signer, key, nonce,
//!   block hash, function-call key limits, balance) with nearcore's errors,
//!   and executed into the next block.
//! - The registry, the roster and the coordinator factory run natively
//!   (see `delibera_near::LocalRegistry`); gas is not charged.
//! - Genesis holds the admin, registry, roster and factory accounts; the
//!   admin's full-access key is [`NearDevnet::admin_key`].
//! - Everything is kept in SQLite under [`NearDevnetConfig::data_dir`], so a
//!   restart on the same directory continues the same chain.

mod chain;
mod contracts;
mod rpc;
mod wire;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use delibera_jsonrpc::{Incoming, Response, parse_request};
use delibera_near::AccountId;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use self::chain::{Chain, ChainConfig};
use self::wire::RpcFailure;
use crate::{Error, Result};

/// How the NEAR devnet is made.
#[derive(Debug, Clone)]
pub struct NearDevnetConfig {
    /// Where the chain's SQLite database lives.
    pub data_dir: PathBuf,
    /// Time between blocks (1 s by default).
    pub block_time: Duration,
    /// How many blocks `final` lags behind the head (2 by default, as on NEAR).
    pub final_lag: u64,
    /// The registry contract's account.
    pub registry: AccountId,
    /// The worker roster (coordinator contract) account; the admin owns it.
    pub roster: AccountId,
    /// The coordinator factory account.
    pub factory: AccountId,
    /// The registry's admin and the roster's owner.
    pub admin: AccountId,
}

impl NearDevnetConfig {
    /// The defaults: 1 s blocks, `final` 2 blocks behind, and the accounts
    /// `registry.devnet`, `roster.devnet`, `factory.devnet` and `admin.devnet`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Result<Self> {
        let account = |text: &str| {
            AccountId::parse(text).map_err(|error| Error::Config {
                reason: format!("default account {text}: {error}"),
            })
        };
        Ok(Self {
            data_dir: data_dir.into(),
            block_time: Duration::from_secs(1),
            final_lag: 2,
            registry: account("registry.devnet")?,
            roster: account("roster.devnet")?,
            factory: account("factory.devnet")?,
            admin: account("admin.devnet")?,
        })
    }
}

/// An account the faucet made, with its full-access key.
///
/// `Debug` never shows the secret key.
#[derive(Clone)]
pub struct NewAccount {
    /// The account.
    pub account_id: AccountId,
    /// Its full-access secret key, `ed25519:<base58>` (what near-api-js and
    /// `delibera_near::NearSigner::from_secret_key` read).
    pub secret_key: Zeroizing<String>,
}

impl fmt::Debug for NewAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewAccount")
            .field("account_id", &self.account_id.as_str())
            .finish_non_exhaustive()
    }
}

/// What the HTTP handlers and the block producer share.
pub(crate) struct Shared {
    chain: Mutex<Chain>,
    /// The head height, to wake whoever waits for a block.
    head: watch::Sender<u64>,
    addr: SocketAddr,
    started: Instant,
    block_time: Duration,
    final_lag: u64,
}

impl Shared {
    /// Runs `f` on the chain under its lock (never across an await).
    fn with_chain<T>(&self, f: impl FnOnce(&mut Chain) -> T) -> T {
        // Every chain change is one SQLite transaction, so a panic while the
        // lock was held cannot have left a half-applied change behind.
        let mut chain = self.chain.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut chain)
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// A running NEAR devnet.
pub struct NearDevnet {
    shared: Arc<Shared>,
    url: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
    producer: JoinHandle<()>,
    stop_producer: watch::Sender<bool>,
}

impl fmt::Debug for NearDevnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NearDevnet")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl NearDevnet {
    /// Opens (or makes) the chain in `config.data_dir` and serves JSON-RPC
    /// on `listener` (POST `/`), producing a block every `block_time`.
    pub async fn start(
        listener: tokio::net::TcpListener,
        config: NearDevnetConfig,
    ) -> Result<Self> {
        if config.block_time.is_zero() {
            return Err(Error::Config {
                reason: "the NEAR devnet's block_time must be above zero".to_owned(),
            });
        }
        let accounts = [
            &config.admin,
            &config.registry,
            &config.roster,
            &config.factory,
        ];
        for (index, account) in accounts.iter().enumerate() {
            if accounts[..index].contains(account) {
                return Err(Error::Config {
                    reason: format!("the NEAR devnet account {account} is configured twice"),
                });
            }
        }
        let chain = Chain::open(
            &config.data_dir,
            ChainConfig {
                registry: config.registry.clone(),
                roster: config.roster.clone(),
                factory: config.factory.clone(),
                admin: config.admin.clone(),
                final_lag: config.final_lag,
            },
            now_nanos(),
        )?;
        let addr = listener.local_addr()?;
        let (head, _) = watch::channel(chain.head().height);
        let shared = Arc::new(Shared {
            chain: Mutex::new(chain),
            head,
            addr,
            started: Instant::now(),
            block_time: config.block_time,
            final_lag: config.final_lag,
        });

        let (stop_producer, stopped) = watch::channel(false);
        let producer = tokio::spawn(produce_blocks(shared.clone(), stopped));

        let app = Router::new()
            .route("/", post(rpc_endpoint))
            .route("/status", get(status_endpoint))
            .route("/health", get(|| async { StatusCode::OK }))
            .layer(tower_http::cors::CorsLayer::permissive())
            .with_state(shared.clone());
        let (shutdown, shutdown_signal) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            delibera_serve::Server::new(app)
                .run(listener, async {
                    let _ = shutdown_signal.await;
                })
                .await
                .map_err(std::io::Error::from)
        });
        tracing::info!(%addr, "NEAR devnet serving JSON-RPC");
        Ok(Self {
            shared,
            url: format!("http://{addr}"),
            shutdown: Some(shutdown),
            server,
            producer,
            stop_producer,
        })
    }

    /// The JSON-RPC URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The faucet: makes `account_id` with a fresh full-access ed25519 key
    /// and 100 NEAR. Final and optimistic views see it at once.
    pub fn create_account(&self, account_id: &AccountId) -> Result<NewAccount> {
        let keypair = self
            .shared
            .with_chain(|chain| chain.create_account(account_id))?;
        Ok(NewAccount {
            account_id: account_id.clone(),
            secret_key: keypair.to_near_secret_string(),
        })
    }

    /// The admin account (registry admin, roster owner) and its genesis
    /// full-access key, which is kept in the data directory.
    pub fn admin_key(&self) -> Result<NewAccount> {
        self.shared.with_chain(|chain| {
            Ok(NewAccount {
                account_id: chain.admin().clone(),
                secret_key: chain.admin_secret()?,
            })
        })
    }

    /// The optimistic head's height.
    pub fn height(&self) -> u64 {
        self.shared.with_chain(|chain| chain.head().height)
    }

    /// Stops serving and producing blocks; transactions still in the pool
    /// are executed into one last block first.
    pub async fn stop(mut self) -> Result<()> {
        let _ = self.stop_producer.send(true);
        (&mut self.producer).await.map_err(|error| Error::Task {
            reason: format!("the block producer: {error}"),
        })?;
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.server).await.map_err(|error| Error::Task {
            reason: format!("the JSON-RPC server: {error}"),
        })??;
        Ok(())
    }
}

impl Drop for NearDevnet {
    fn drop(&mut self) {
        // A devnet dropped without `stop` must not keep serving.
        self.producer.abort();
        self.server.abort();
    }
}

/// Produces a block every `block_time` until told to stop; then one last
/// block if transactions are waiting.
async fn produce_blocks(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(shared.block_time);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the genesis (or restored head) is enough.
    ticks.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = ticks.tick() => false,
            _ = stop.changed() => true,
        };
        let produced = shared.with_chain(|chain| {
            if stopping && !chain.has_pending() {
                return None;
            }
            Some(chain.produce_block(now_nanos()))
        });
        match produced {
            Some(Ok(block)) => {
                shared.head.send_replace(block.height);
            }
            Some(Err(error)) => {
                tracing::error!(%error, "the NEAR devnet could not produce a block")
            }
            None => {}
        }
        if stopping {
            return;
        }
    }
}

async fn rpc_endpoint(State(shared): State<Arc<Shared>>, body: Bytes) -> HttpResponse {
    let request = match parse_request(&body) {
        Incoming::Call(request) => request,
        Incoming::Notification(_) => return StatusCode::NO_CONTENT.into_response(),
        Incoming::Rejected(rejection) => {
            // nearcore reports unreadable requests as request validation errors.
            let failure = RpcFailure::parse_error(rejection.error.message);
            let response = Response::failure(rejection.id, failure.error);
            return (StatusCode::BAD_REQUEST, axum::Json(response)).into_response();
        }
    };
    let id = request.id;
    tracing::debug!(method = %request.method, "NEAR devnet request");
    match rpc::handle(&shared, &request.method, request.params).await {
        Ok(result) => axum::Json(Response::success(id, result)).into_response(),
        Err(failure) => {
            let status = failure.status();
            (status, axum::Json(Response::failure(id, failure.error))).into_response()
        }
    }
}

async fn status_endpoint(State(shared): State<Arc<Shared>>) -> HttpResponse {
    match rpc::handle(&shared, "status", serde_json::Value::Null).await {
        Ok(result) => axum::Json(result).into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}
