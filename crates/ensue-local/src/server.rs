//! Serving: `run` on a listener, and `LocalEnsue` to start one in-process.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use delibera_serve::{Edges, Server};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::http::{AppState, Limits, app};
use crate::{ApiKey, ClaimPolicy, RegistrationLimit, Result, Store};

/// The database file's name inside the data directory.
pub const DATABASE_FILE: &str = "ensue-local.sqlite3";

/// The organisation the bootstrap API key acts for.
pub const BOOTSTRAP_ORG: &str = "local";

/// How to start a [`LocalEnsue`].
///
/// The default listens on `127.0.0.1:0` (a free port), keeps data in memory,
/// generates a bootstrap key, activates registered keys at once
/// ([`ClaimPolicy::Immediate`]), applies the default [`Limits`] (quotas
/// included) and [`RegistrationLimit`], and serves with the default [`Edges`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Where the SQLite file lives; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// The key that acts for [`BOOTSTRAP_ORG`]; `None` generates one.
    pub bootstrap_key: Option<ApiKey>,
    /// Body and value size limits, and per-organisation quotas.
    pub limits: Limits,
    /// Whether registered organisations must be claimed before their keys work.
    pub claim_policy: ClaimPolicy,
    /// How fast `POST /auth/agent-register` may create organisations.
    pub registration_limit: RegistrationLimit,
    /// Header-read, idle and body-read timeouts and the connection cap.
    pub edges: Edges,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            data_dir: None,
            bootstrap_key: None,
            limits: Limits::default(),
            claim_policy: ClaimPolicy::default(),
            registration_limit: RegistrationLimit::default(),
            edges: Edges::default(),
        }
    }
}

impl Config {
    /// Listens on `addr` instead.
    pub fn with_addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Keeps the data in `dir`/[`DATABASE_FILE`].
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Uses `key` as the bootstrap key.
    pub fn with_bootstrap_key(mut self, key: ApiKey) -> Self {
        self.bootstrap_key = Some(key);
        self
    }

    /// Replaces the size limits and quotas.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Replaces the limit on organisation registrations.
    pub fn with_registration_limit(mut self, limit: RegistrationLimit) -> Self {
        self.registration_limit = limit;
        self
    }

    /// Chooses whether registered organisations must be claimed before their
    /// keys work; [`ClaimPolicy::RequireClaim`] rehearses the hosted service.
    pub fn with_claim_policy(mut self, policy: ClaimPolicy) -> Self {
        self.claim_policy = policy;
        self
    }

    /// Replaces the HTTP server's timeouts and connection cap.
    pub fn with_edges(mut self, edges: Edges) -> Self {
        self.edges = edges;
        self
    }
}

/// Serves [`app`] on `listener` with `edges` until `shutdown` completes,
/// then finishes the requests in flight (within the edges' shutdown grace).
pub async fn run<F>(listener: TcpListener, state: AppState, edges: Edges, shutdown: F) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr()?;
    let state = if state.has_public_url() {
        state
    } else {
        state.with_public_url(url_of(addr))
    };
    tracing::info!(%addr, "ensue-local listening");
    Server::new(app(state))
        .with_edges(edges)
        .run(listener, shutdown)
        .await?;
    Ok(())
}

/// A server running in this process, for tests, local mode and the CLI.
///
/// Dropping it stops the server too; [`LocalEnsue::stop`] also waits until
/// it has stopped.
///
/// ```
/// use delibera_ensue_local::{Config, LocalEnsue};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> delibera_ensue_local::Result<()> {
/// let server = LocalEnsue::start(Config::default()).await?;
/// assert!(server.url().starts_with("http://127.0.0.1:"));
/// let other_org_key = server.store().register_org("team-b").await?;
/// assert_ne!(other_org_key, *server.api_key());
/// server.stop().await?;
/// # Ok(())
/// # }
/// ```
pub struct LocalEnsue {
    url: String,
    addr: SocketAddr,
    api_key: ApiKey,
    store: Store,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
}

impl LocalEnsue {
    /// Opens the store, makes sure the bootstrap key acts for
    /// [`BOOTSTRAP_ORG`], binds and starts serving in the background.
    pub async fn start(config: Config) -> Result<LocalEnsue> {
        let store = match config.data_dir {
            Some(dir) => {
                tokio::task::spawn_blocking(move || {
                    // The store holds values in the clear: its directory is the owner's only.
                    delibera_data_dir::private_dir(&dir)?;
                    Store::open(dir.join(DATABASE_FILE))
                })
                .await??
            }
            None => Store::in_memory()?,
        };
        let api_key = config.bootstrap_key.unwrap_or_else(ApiKey::generate);
        store.add_key(BOOTSTRAP_ORG, &api_key).await?;
        let listener = TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let url = url_of(addr);
        let state = AppState::new(store.clone())
            .with_limits(config.limits)
            .with_claim_policy(config.claim_policy)
            .with_registration_limit(config.registration_limit)
            .with_public_url(url.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(listener, state, config.edges, async move {
            // A dropped sender stops the server as well.
            let _ = stopped.await;
        }));
        Ok(LocalEnsue {
            url,
            addr,
            api_key,
            store,
            stop: Some(stop),
            task,
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234/` (JSON-RPC goes to this path).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bootstrap key (acts for [`BOOTSTRAP_ORG`]).
    pub fn api_key(&self) -> &ApiKey {
        &self.api_key
    }

    /// The store, e.g. to [`register_org`](Store::register_org) more organisations.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops accepting connections, lets requests in flight finish, and waits.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            // The server may already have stopped on its own; nothing to signal then.
            let _ = stop.send(());
        }
        (&mut self.task).await?
    }
}

impl fmt::Debug for LocalEnsue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEnsue")
            .field("url", &self.url)
            .field("api_key", &self.api_key)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// `http://<addr>/`, with an unspecified address (`0.0.0.0`, `::`) replaced
/// by loopback so the URL can be dialled.
fn url_of(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/", SocketAddr::new(ip, addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_can_be_dialled() {
        let url = |text: &str| url_of(text.parse().unwrap());
        assert_eq!(url("0.0.0.0:3006"), "http://127.0.0.1:3006/");
        assert_eq!(url("[::]:80"), "http://[::1]:80/");
        assert_eq!(url("10.1.2.3:9"), "http://10.1.2.3:9/");
    }
}
