//! The Delibera Protocol API server as a library: [`app`] builds the router
//! over an [`AppState`], [`run`] serves it until a shutdown signal. `main.rs`
//! only reads the config and composes the ports (see [`compose`]).

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod api_types;
pub mod auth;
pub mod compose;
pub mod config;
pub mod error;
pub mod jobs;
pub mod logging;
pub mod metrics;
pub mod openapi;
pub mod ports;
pub mod request_layer;
pub mod routes;
pub mod seal;
pub mod store;
pub mod validation;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderName;
use axum::middleware;
use axum::routing::{get, post, put};
use delibera_near::{CoordinatorRecord, RegisteredWorker, WorkerRecord};
use zeroize::Zeroizing;
// Used by `main.rs` only, which shares this package's dependencies.
use mimalloc as _;

use crate::config::CorsPolicy;
use crate::jobs::JobMachine;
use crate::ports::{Ports, Settings};
use crate::store::Database;
use delibera_serve::{CorsLayer, PerMinuteLimiter};

use crate::auth::WalletAuth;

/// What every handler can reach. Cloning it (axum does, for every handler
/// call) copies one pointer; a field assigned through it is changed in this
/// state's own copy.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<AppStateFields>,
}

impl std::ops::Deref for AppState {
    type Target = AppStateFields;

    fn deref(&self) -> &AppStateFields {
        &self.shared
    }
}

impl std::ops::DerefMut for AppState {
    fn deref_mut(&mut self) -> &mut AppStateFields {
        Arc::make_mut(&mut self.shared)
    }
}

/// The fields of an [`AppState`].
#[derive(Clone)]
pub struct AppStateFields {
    /// Every job and its transitions.
    pub jobs: JobMachine,
    /// The outside services.
    pub ports: Arc<Ports>,
    /// What the steps and routes read.
    pub settings: Arc<Settings>,
    /// The operator's credential for the signing routes; `None`: only
    /// wallet-signed requests are accepted there.
    pub admin_token: Option<Arc<Zeroizing<String>>>,
    /// Checks wallet-signed (NEP-413) requests to the signing routes.
    pub wallet_auth: Arc<WalletAuth>,
    /// Local mode's opt-in: the signing routes take no credential at all.
    pub unauthenticated_writes: bool,
    /// Per-IP limit on provisioning.
    pub rate_limiter: Arc<PerMinuteLimiter>,
    /// How many proxies in front of the server append to `X-Forwarded-For`
    /// (0: the client is the TCP peer).
    pub trusted_proxy_hops: u8,
    /// `local` or `production`, for `GET /`.
    pub mode_label: &'static str,
    /// Local mode's embedded Ensue URL, for `GET /`.
    pub ensue_url: Option<String>,
    /// Which web origins may call the API from a browser.
    pub cors: CorsPolicy,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Timeouts and the connection cap [`run`] serves with.
    pub edges: delibera_serve::Edges,
    /// The last `GET /api/workers/registered` body and its registry answers.
    pub rendered_roster: Arc<routes::Rendered<Vec<RegisteredWorker>, Vec<WorkerRecord>>>,
    /// The last `GET /api/agents/endpoints` agents and their registry answers.
    pub rendered_endpoints: Arc<routes::Rendered<Vec<CoordinatorRecord>, Vec<WorkerRecord>>>,
    /// The last `GET /` body, kept for the millisecond its timestamp names.
    pub rendered_health: Arc<routes::RenderedHealth>,
}

impl AppState {
    /// A state over `database`, `ports` and `settings`; the rest has defaults
    /// (no admin token, no rate limit, no cross-origin access, 64 KiB bodies,
    /// the default [`Edges`](delibera_serve::Edges)).
    pub fn builder(database: &Database, ports: Ports, settings: Settings) -> AppStateBuilder {
        AppStateBuilder {
            database: database.clone(),
            ports,
            settings,
            admin_token: None,
            nep413_recipient: auth::DEFAULT_NEP413_RECIPIENT.to_owned(),
            unauthenticated_writes: false,
            provision_rate_per_minute: 0,
            trusted_proxy_hops: 0,
            mode_label: "local",
            ensue_url: None,
            cors: CorsPolicy::SameOriginOnly,
            max_body_bytes: 64 * 1024,
            edges: delibera_serve::Edges::default(),
        }
    }
}

/// Builds an [`AppState`]; shared by the composition and the tests.
pub struct AppStateBuilder {
    database: Database,
    ports: Ports,
    settings: Settings,
    admin_token: Option<Zeroizing<String>>,
    nep413_recipient: String,
    unauthenticated_writes: bool,
    provision_rate_per_minute: u32,
    trusted_proxy_hops: u8,
    mode_label: &'static str,
    ensue_url: Option<String>,
    cors: CorsPolicy,
    max_body_bytes: usize,
    edges: delibera_serve::Edges,
}

impl AppStateBuilder {
    /// The bearer token of the signing routes (`None` disables them).
    pub fn admin_token(mut self, token: Option<Zeroizing<String>>) -> Self {
        self.admin_token = token;
        self
    }

    /// The name wallet-signed requests must be addressed to.
    pub fn nep413_recipient(mut self, recipient: impl Into<String>) -> Self {
        self.nep413_recipient = recipient.into();
        self
    }

    /// Lets the signing routes take no credential (the composition allows
    /// it in local mode only).
    pub fn unauthenticated_writes(mut self, allowed: bool) -> Self {
        self.unauthenticated_writes = allowed;
        self
    }

    /// Provisioning requests allowed per client IP per minute (0: no limit).
    pub fn provision_rate_per_minute(mut self, rate: u32) -> Self {
        self.provision_rate_per_minute = rate;
        self
    }

    /// How many proxies in front of the server append the address they were
    /// called from to `X-Forwarded-For`; the rate limit counts per address
    /// the outermost one saw (0: per TCP peer).
    pub fn trusted_proxy_hops(mut self, hops: u8) -> Self {
        self.trusted_proxy_hops = hops;
        self
    }

    /// What `GET /` says the mode is.
    pub fn mode_label(mut self, label: &'static str) -> Self {
        self.mode_label = label;
        self
    }

    /// The embedded Ensue's URL, shown by `GET /`.
    pub fn embedded_ensue_url(mut self, url: impl Into<String>) -> Self {
        self.ensue_url = Some(url.into());
        self
    }

    /// Which web origins may call the API from a browser.
    pub fn cors(mut self, policy: CorsPolicy) -> Self {
        self.cors = policy;
        self
    }

    /// The largest accepted request body.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Timeouts and the connection cap of the HTTP server ([`run`] adds
    /// the body limit).
    pub fn edges(mut self, edges: delibera_serve::Edges) -> Self {
        self.edges = edges;
        self
    }

    /// The state.
    pub fn build(self) -> AppState {
        let ports = Arc::new(self.ports);
        let settings = Arc::new(self.settings);
        let fields = AppStateFields {
            jobs: JobMachine::new(
                self.database.jobs(),
                self.database.org_keys(),
                ports.clone(),
                settings.clone(),
            ),
            ports,
            settings,
            admin_token: self.admin_token.map(Arc::new),
            wallet_auth: Arc::new(
                WalletAuth::new(self.nep413_recipient).shared_through(&self.database),
            ),
            unauthenticated_writes: self.unauthenticated_writes,
            rate_limiter: Arc::new(PerMinuteLimiter::new(self.provision_rate_per_minute)),
            trusted_proxy_hops: self.trusted_proxy_hops,
            mode_label: self.mode_label,
            ensue_url: self.ensue_url,
            cors: self.cors,
            max_body_bytes: self.max_body_bytes,
            edges: self.edges,
            rendered_roster: Arc::default(),
            rendered_endpoints: Arc::default(),
            rendered_health: Arc::default(),
        };
        AppState {
            shared: Arc::new(fields),
        }
    }
}

/// A time as JavaScript's `toISOString()` writes it (`2026-03-30T12:00:00.000Z`).
pub fn iso(time: chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The current time, as [`iso`] writes it.
pub fn iso_now() -> String {
    iso(chrono::Utc::now())
}

/// Health: the server is up.
#[utoipa::path(get, path = "/", tag = "health", responses((status = 200, body = api_types::Health)))]
pub async fn health(
    State(state): State<AppState>,
) -> Result<axum::response::Response, error::ApiError> {
    let now = chrono::Utc::now();
    let body = state.rendered_health.get_or_render(
        now,
        state.mode_label,
        state.ensue_url.as_deref(),
        || {
            serde_json::to_vec(&api_types::Health {
                message: "Delibera Protocol API".into(),
                status: "ok".into(),
                timestamp: iso(now),
                mode: state.mode_label.into(),
                ensue_url: state.ensue_url.clone(),
            })
            .map_err(error::ApiError::internal)
        },
    )?;
    Ok(routes::json_body(body))
}

async fn not_found() -> error::ApiError {
    error::ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> error::ApiError {
    error::ApiError::MethodNotAllowed
}

/// The CORS answers for `policy` ([`CorsPolicy::layer`]), exposing the
/// headers a browser script reads.
fn cors_layer(policy: &CorsPolicy) -> CorsLayer {
    if *policy == CorsPolicy::SameOriginOnly {
        return policy.layer();
    }
    policy
        .layer()
        // A browser script may read only the response headers listed here.
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("idempotent-replayed"),
        ])
}

/// The router.
pub fn app(state: AppState) -> Router {
    use routes::{agents, provision, workers};

    let provisioning = Router::new()
        .route("/api/provision/coordinator", post(provision::coordinator))
        .route("/api/provision/worker", post(provision::worker))
        .route(
            "/api/provision/external-worker",
            post(provision::external_worker),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::rate_limit,
        ));

    let admin = Router::new()
        .route(
            "/api/agents/{agentId}/endpoint",
            put(agents::update_endpoint),
        )
        .route("/api/workers/register", post(workers::register))
        .route(
            "/api/workers/{workerId}",
            axum::routing::delete(workers::remove),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate_write,
        ));

    // Only these routes read a body, so only they carry the body limit
    // (the edge also refuses a declared length above it before reading).
    let writes = Router::new()
        .route("/api/provision/register", post(provision::register))
        .route(
            "/api/provision/coordinator-register",
            post(provision::coordinator_register),
        )
        .merge(provisioning)
        .merge(admin)
        .layer(DefaultBodyLimit::max(state.max_body_bytes));

    let cors = cors_layer(&state.cors);

    Router::new()
        .route("/", get(health))
        .route("/metrics", get(metrics::render))
        .route("/api/openapi.json", get(openapi::document))
        .route("/api/provision/status/{jobId}", get(provision::status))
        .route(
            "/api/provision/status/{jobId}/events",
            get(provision::status_events),
        )
        .route("/api/agents/endpoints", get(agents::endpoints))
        .route("/api/agents/{agentId}/endpoint", get(agents::endpoint))
        .route("/api/workers/registered", get(workers::registered))
        .merge(writes)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Every request gets an `x-request-id` (the caller's, or a new
        // UUID-shaped one), carried in its one tracing span and echoed in the
        // response, is counted, and leaves with `no-store` and, on error,
        // the JSON error envelope.
        .layer(request_layer::RequestLayer)
        .layer(cors)
        .with_state(state)
}

/// Serves `app(state)` on `listener` with `state.edges` until `shutdown`
/// resolves, then lets in-flight requests finish (within the edges'
/// shutdown grace). A body declared larger than `state.max_body_bytes` is
/// refused before it is read.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let edges = state
        .edges
        .clone()
        .with_max_body_bytes(Some(state.max_body_bytes));
    delibera_serve::Server::new(app(state))
        .with_edges(edges)
        .with_rejection_response(error::edge_rejection)
        .run(listener, shutdown)
        .await?;
    Ok(())
}
