//! The HTTP surface: routes, bearer auth, body limits and tracing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use delibera_jsonrpc::{ErrorObject, Id, Incoming, parse_request};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::claim::{self, ClaimPolicy, ClaimTicket};
use crate::registration::{RegistrationLimit, RegistrationLimiter};
use crate::rpc::{self, Framing};
use crate::store::{OrgId, OrgQuota, Store};
use crate::tools;

/// How long one request may take, so a stalled client cannot hold up a
/// graceful shutdown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest `POST /auth/agent-register` or `POST /claim` body (they hold
/// a short name, or a token and a code).
pub(crate) const MAX_FORM_BODY_BYTES: usize = 4 * 1024;

/// The default [`Limits::max_keys_per_org`].
pub const DEFAULT_MAX_KEYS_PER_ORG: u64 = 10_000;

/// The default [`Limits::max_bytes_per_org`] (64 MiB).
pub const DEFAULT_MAX_BYTES_PER_ORG: u64 = 64 * 1024 * 1024;

/// Size limits and per-organisation quotas, enforced with clear errors
/// rather than dropped connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The largest JSON-RPC request body; larger ones get HTTP 413 with error -32600.
    pub max_body_bytes: usize,
    /// The largest stored value, in UTF-8 bytes; larger ones get error -32602.
    pub max_value_bytes: usize,
    /// The most keys one organisation may hold; 0 for no limit. A create
    /// beyond it fails with status `quota_exceeded`.
    pub max_keys_per_org: u64,
    /// The most bytes (key names, values and descriptions, in UTF-8) one
    /// organisation may store; 0 for no limit. A write beyond it fails with
    /// status `quota_exceeded`.
    pub max_bytes_per_org: u64,
}

impl Limits {
    /// Limits with the given body and value sizes, and the default quotas.
    pub fn new(max_body_bytes: usize, max_value_bytes: usize) -> Self {
        Self {
            max_body_bytes,
            max_value_bytes,
            max_keys_per_org: DEFAULT_MAX_KEYS_PER_ORG,
            max_bytes_per_org: DEFAULT_MAX_BYTES_PER_ORG,
        }
    }

    /// Replaces the per-organisation quotas (0 lifts one).
    pub fn with_org_quota(mut self, max_keys: u64, max_bytes: u64) -> Self {
        self.max_keys_per_org = max_keys;
        self.max_bytes_per_org = max_bytes;
        self
    }

    pub(crate) fn org_quota(&self) -> OrgQuota {
        OrgQuota {
            max_keys: self.max_keys_per_org,
            max_bytes: self.max_bytes_per_org,
        }
    }
}

impl Default for Limits {
    /// 8 MiB bodies (a full batch of large values fits), 1 MiB values, and
    /// per organisation [`DEFAULT_MAX_KEYS_PER_ORG`] keys and
    /// [`DEFAULT_MAX_BYTES_PER_ORG`] bytes: room for hundreds of deliberation
    /// rounds, while one runaway organisation cannot fill a developer's disk.
    fn default() -> Self {
        Self::new(8 * 1024 * 1024, 1024 * 1024)
    }
}

/// What every request handler shares: the store, the limits, the claim
/// policy, the registration limit and the server's own URL (for `claim_url`).
#[derive(Clone, Debug)]
pub struct AppState {
    store: Store,
    limits: Limits,
    claim_policy: ClaimPolicy,
    registrations: Arc<RegistrationLimiter>,
    public_url: Option<Arc<str>>,
}

impl AppState {
    /// State over `store`, with default [`Limits`] and [`RegistrationLimit`].
    pub fn new(store: Store) -> Self {
        Self {
            store,
            limits: Limits::default(),
            claim_policy: ClaimPolicy::default(),
            registrations: Arc::new(RegistrationLimiter::new(RegistrationLimit::default())),
            public_url: None,
        }
    }

    /// Replaces the limit on `POST /auth/agent-register`.
    pub fn with_registration_limit(mut self, limit: RegistrationLimit) -> Self {
        self.registrations = Arc::new(RegistrationLimiter::new(limit));
        self
    }

    /// Replaces the size limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether registered organisations must be claimed before their keys
    /// work (default [`ClaimPolicy::Immediate`]).
    pub fn with_claim_policy(mut self, policy: ClaimPolicy) -> Self {
        self.claim_policy = policy;
        self
    }

    /// The claim policy in force.
    pub fn claim_policy(&self) -> ClaimPolicy {
        self.claim_policy
    }

    /// The URL clients reach this server at, e.g. `http://127.0.0.1:3006/`.
    /// [`run`](crate::run) fills it in from the listener when unset.
    pub fn with_public_url(mut self, url: impl Into<String>) -> Self {
        self.public_url = Some(Arc::from(url.into()));
        self
    }

    /// The store behind the server.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn has_public_url(&self) -> bool {
        self.public_url.is_some()
    }

    /// An absolute URL on this server for `path_and_query`.
    pub(crate) fn link(&self, path_and_query: &str) -> String {
        let base = self.public_url.as_deref().unwrap_or("http://localhost/");
        format!("{}/{path_and_query}", base.trim_end_matches('/'))
    }
}

/// The organisation an authenticated request acts for.
#[derive(Debug, Clone, Copy)]
struct Org(OrgId);

/// The server's routes:
///
/// - `POST /`: JSON-RPC, MCP `tools/call` or the direct methods (bearer auth);
/// - `POST /auth/agent-register`: create an organisation and its API key;
/// - `GET /claim`: the page `claim_url` points at; under
///   [`ClaimPolicy::RequireClaim`] a form, and `POST /claim` claims the
///   organisation; under [`ClaimPolicy::Immediate`] there is nothing to claim;
/// - `GET /healthz`: `{"status":"ok"}` while the store answers.
pub fn app(state: AppState) -> Router {
    let memory =
        Router::new()
            .route("/", post(rpc_call))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                require_api_key,
            ));
    let claim = match state.claim_policy {
        ClaimPolicy::Immediate => get(claim::nothing_to_claim),
        ClaimPolicy::RequireClaim => get(claim::page).post(claim::submit),
    };
    Router::new()
        .merge(memory)
        .route("/auth/agent-register", post(agent_register))
        .route("/claim", claim)
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(within_request_timeout))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// One span per request; the query string is left out (claim tokens live there).
fn request_span(request: &Request) -> Span {
    tracing::info_span!(
        "request",
        http.method = %request.method(),
        http.path = %request.uri().path(),
        org = tracing::field::Empty,
        rpc.method = tracing::field::Empty,
        rpc.tool = tracing::field::Empty,
    )
}

async fn require_api_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = bearer_token(request.headers()) else {
        return unauthorized("missing `Authorization: Bearer <api key>` header");
    };
    match state.store.org_for_token(token).await {
        Ok(Some(org)) => {
            Span::current().record("org", org);
            if state.claim_policy == ClaimPolicy::RequireClaim {
                match state.store.unclaimed_org_name(org).await {
                    Ok(None) => {}
                    Ok(Some(name)) => {
                        return unauthorized_with(&claim::not_claimed_body(&state, &name));
                    }
                    Err(error) => {
                        tracing::error!(%error, "claim lookup failed");
                        return server_error();
                    }
                }
            }
            request.extensions_mut().insert(Org(org));
            next.run(request).await
        }
        Ok(None) => unauthorized("invalid API key"),
        Err(error) => {
            tracing::error!(%error, "API key lookup failed");
            server_error()
        }
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

async fn rpc_call(
    State(state): State<AppState>,
    axum::Extension(Org(org)): axum::Extension<Org>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let framing = Framing::from_accept(&headers);
    let bytes = match read_body(&headers, body, state.limits.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            let error = ErrorObject::invalid_request(format!(
                "the request body is larger than the limit of {} bytes",
                state.limits.max_body_bytes
            ));
            return rpc::json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &rpc::failure(Id::Null, error),
            );
        }
        Err(BodyError::Unreadable) => {
            let error = ErrorObject::parse_error("the request body could not be read");
            return rpc::json_response(StatusCode::BAD_REQUEST, &rpc::failure(Id::Null, error));
        }
    };
    let call = match parse_request(&bytes) {
        Incoming::Call(call) => call,
        Incoming::Notification(notification) => {
            Span::current().record("rpc.method", notification.method.as_str());
            return StatusCode::ACCEPTED.into_response();
        }
        Incoming::Rejected(rejected) => {
            tracing::debug!(code = rejected.error.code, message = %rejected.error.message, "rejected request");
            // Requests that could not be understood are answered as MCP
            // servers do: a 4xx with a plain JSON error body.
            return rpc::json_response(
                rpc::http_status(&rejected.error),
                &rejected.into_response().to_value(),
            );
        }
    };
    Span::current().record("rpc.method", call.method.as_str());
    let message = match tools::dispatch(&state, org, &call.method, call.params).await {
        Ok(result) => rpc::success(call.id, result),
        Err(error) => {
            tracing::debug!(code = error.code, message = %error.message, "call failed");
            rpc::failure(call.id, error)
        }
    };
    framing.respond(StatusCode::OK, &message)
}

pub(crate) enum BodyError {
    TooLarge,
    Unreadable,
}

/// Reads at most `limit` bytes, refusing early when `Content-Length` says more.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        if bytes.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// `POST /auth/agent-register {"name"}`: a new organisation and its key.
///
/// The answer carries `api_key`, `claim_url` and `verification_code` both at
/// the top level and under `agent`, the two shapes clients of the hosted
/// service read, and a `status`. Under [`ClaimPolicy::Immediate`] the key
/// works at once (`"active"`; the claim URL and code lead nowhere); under
/// [`ClaimPolicy::RequireClaim`] it is refused until the organisation is
/// claimed with them (`"unclaimed"`).
async fn agent_register(State(state): State<AppState>, request: Request) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let bytes = match read_body(&headers, body, MAX_FORM_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            return error_json(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is too large",
            );
        }
        Err(BodyError::Unreadable) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        }
    };
    let name = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|body| body.get("name").and_then(Value::as_str).map(str::to_owned));
    let Some(name) = name else {
        return error_json(
            StatusCode::BAD_REQUEST,
            "the body must be JSON of the form {\"name\": \"<organization name>\"}",
        );
    };
    // Counted once the request is well formed, so a client's malformed
    // attempts do not spend its budget for real ones.
    if let Err(retry_after) = state.registrations.check(client) {
        tracing::warn!(client = ?client, "organization registration refused: rate limit reached");
        return too_many_registrations(retry_after);
    }
    let registered = match state.claim_policy {
        // Nothing to claim: a ticket of the hosted form that leads nowhere.
        ClaimPolicy::Immediate => (state.store.register_org(&name).await)
            .map(|api_key| (api_key, ClaimTicket::generate(), "active")),
        ClaimPolicy::RequireClaim => (state.store.register_unclaimed_org(&name).await)
            .map(|(api_key, ticket)| (api_key, ticket, "unclaimed")),
    };
    match registered {
        Ok((api_key, ticket, status)) => {
            let claim_url = state.link(&format!("claim?token={}", ticket.token()));
            let verification_code = ticket.verification_code();
            tracing::info!(org = %name, status, "registered organization");
            rpc::json_response(
                StatusCode::OK,
                &json!({
                    "api_key": api_key.expose(),
                    "claim_url": claim_url,
                    "verification_code": verification_code,
                    "status": status,
                    "agent": {
                        "name": name,
                        "api_key": api_key.expose(),
                        "claim_url": claim_url,
                        "verification_code": verification_code,
                    },
                }),
            )
        }
        Err(error @ crate::Error::InvalidOrgName { .. }) => {
            error_json(StatusCode::BAD_REQUEST, &error.to_string())
        }
        Err(error @ crate::Error::OrgNameTaken { .. }) => {
            error_json(StatusCode::CONFLICT, &error.to_string())
        }
        Err(error) => {
            tracing::error!(%error, "registration failed");
            server_error()
        }
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => rpc::json_response(StatusCode::OK, &json!({ "status": "ok" })),
        Err(error) => {
            tracing::error!(%error, "health check failed");
            rpc::json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "status": "unavailable" }),
            )
        }
    }
}

async fn not_found() -> Response {
    error_json(StatusCode::NOT_FOUND, "no such route")
}

/// Also MCP's answer to `GET /`: this server opens no server-to-client stream.
async fn method_not_allowed() -> Response {
    error_json(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

/// Answers 408 in the `{"error"}` shape once a request has taken
/// [`REQUEST_TIMEOUT`] (`tower_http`'s timeout answers with an empty body).
async fn within_request_timeout(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error_json(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the request was not answered within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        ),
    }
}

fn unauthorized(message: &str) -> Response {
    unauthorized_with(&json!({ "error": message }))
}

/// HTTP 401 with `body`, and the `WWW-Authenticate` challenge.
fn unauthorized_with(body: &Value) -> Response {
    let mut response = rpc::json_response(StatusCode::UNAUTHORIZED, body);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// HTTP 429 with `Retry-After` (whole seconds) and the `{"error"}` body.
fn too_many_registrations(retry_after: Duration) -> Response {
    let seconds = retry_after.as_secs();
    let mut response = error_json(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("too many organization registrations; retry in {seconds} s"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

fn server_error() -> Response {
    error_json(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// `{"error": message}` with `status`.
pub(crate) fn error_json(status: StatusCode, message: &str) -> Response {
    rpc::json_response(status, &json!({ "error": message }))
}
