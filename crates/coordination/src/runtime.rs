//! The agent runtime: what runs inside a CVM (or in-process under the local
//! deployer) — a worker loop or a coordinator, behind a small HTTP API.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use delibera_ensue::keys::{self, AgentField, ProposalField};
use delibera_ensue::{EnsueClient, EnsueConfig, Memory};
use delibera_identity::{Did, Keypair};
pub use delibera_phala::AgentRole;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::coordinator::MAX_ROUND_DEADLINE;
use crate::{
    Coordinator, CoordinatorConfig, Error, LlmConfig, LlmVoter, Proposal, Result, RuleVoter,
    TaskHandler, Worker, WorkerConfig, WorkerDirectory,
};

/// The agent's ucanto private key (`Mg…`); the DID is derived from it.
pub const PRIVATE_KEY_ENV: &str = "STORACHA_AGENT_PRIVATE_KEY";
/// The coordinator a worker belongs to (a coordinator's is its own DID).
pub const COORDINATOR_DID_ENV: &str = "COORDINATOR_DID";
/// The port to listen on (default 3001 for workers, 3000 for coordinators).
pub const PORT_ENV: &str = "PORT";
/// The human-readable name written to `agent/{did}/display_name`.
pub const DISPLAY_NAME_ENV: &str = "AGENT_DISPLAY_NAME";
/// The public URL written to `agent/{did}/endpoint` (default: the bound address).
pub const PUBLIC_URL_ENV: &str = "AGENT_PUBLIC_URL";
/// The worker's base polling interval in milliseconds (default 3000, plus up to 2/3 of it as jitter).
pub const POLL_INTERVAL_ENV: &str = "POLL_INTERVAL_MS";
/// `rules` (default) or `llm` (then `LLM_MODEL`, `LLM_BASE_URL`, `LLM_API_KEY`).
pub const TASK_HANDLER_ENV: &str = "TASK_HANDLER";
/// How long a coordinator's round waits for workers, in seconds (default 120).
pub const ROUND_DEADLINE_ENV: &str = "ROUND_DEADLINE_SECS";

/// The longest accepted `POLL_INTERVAL_MS`.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(3600);

/// Which built-in [`TaskHandler`] a worker uses.
#[derive(Debug, Clone)]
pub enum HandlerChoice {
    /// [`RuleVoter`]: deterministic, offline.
    Rules,
    /// [`LlmVoter`] with this endpoint.
    Llm(LlmConfig),
}

/// An agent's configuration: the env contract a deployer injects.
#[derive(Clone)]
pub struct AgentConfig {
    /// Worker or coordinator.
    pub role: AgentRole,
    /// The agent's DID.
    pub did: Did,
    /// The worker's coordinator; for a coordinator, itself.
    pub coordinator_did: Option<Did>,
    /// The name written to `agent/{did}/display_name`.
    pub display_name: String,
    /// The port to listen on.
    pub port: u16,
    /// The URL written to `agent/{did}/endpoint`; `None` uses the bound address.
    pub public_url: Option<String>,
    /// How to reach Ensue.
    pub ensue: EnsueConfig,
    /// The worker's base polling interval (jitter adds up to 2/3 of it).
    pub poll_interval: Duration,
    /// How long a coordinator's round waits for its workers.
    pub round_deadline: Duration,
    /// The worker's handler.
    pub handler: HandlerChoice,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `EnsueConfig` holds the API key, so it is left out.
        f.debug_struct("AgentConfig")
            .field("role", &self.role)
            .field("did", &self.did)
            .field("coordinator_did", &self.coordinator_did)
            .field("display_name", &self.display_name)
            .field("port", &self.port)
            .field("public_url", &self.public_url)
            .field("poll_interval", &self.poll_interval)
            .field("round_deadline", &self.round_deadline)
            .field("handler", &self.handler)
            .finish_non_exhaustive()
    }
}

fn config_error(reason: impl Into<String>) -> Error {
    Error::Config {
        reason: reason.into(),
    }
}

impl AgentConfig {
    /// Reads the process environment (see the `*_ENV` constants, plus
    /// `ENSUE_URL` and `ENSUE_API_KEY`).
    pub fn from_env(role: AgentRole) -> Result<Self> {
        Self::from_lookup(role, |name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`
    /// (the local deployer passes a deployment's env this way).
    pub fn from_lookup(role: AgentRole, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| {
            lookup(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        let private_key = var(PRIVATE_KEY_ENV)
            .ok_or_else(|| config_error(format!("{PRIVATE_KEY_ENV} is not set")))?;
        // The message names the variable only: the key itself must never be echoed.
        let did = Keypair::from_ucanto_str(&private_key)
            .map_err(|_| {
                config_error(format!(
                    "{PRIVATE_KEY_ENV} is not a ucanto Ed25519 private key"
                ))
            })?
            .did();
        let coordinator_did = match var(COORDINATOR_DID_ENV) {
            Some(text) => Some(
                text.parse::<Did>()
                    .map_err(|error| config_error(format!("{COORDINATOR_DID_ENV}: {error}")))?,
            ),
            None if role == AgentRole::Coordinator => Some(did.clone()),
            None => None,
        };
        let parse_number = |name: &str| -> Result<Option<u64>> {
            var(name)
                .map(|text| {
                    text.parse::<u64>().map_err(|_| {
                        config_error(format!("{name} must be a whole number, got {text:?}"))
                    })
                })
                .transpose()
        };
        let port = match parse_number(PORT_ENV)? {
            Some(port) => u16::try_from(port)
                .map_err(|_| config_error(format!("{PORT_ENV} {port} is out of range")))?,
            None => role.default_port(),
        };
        let api_key = var(delibera_ensue::API_KEY_ENV)
            .ok_or_else(|| config_error(format!("{} is not set", delibera_ensue::API_KEY_ENV)))?;
        let mut ensue = EnsueConfig::new(api_key);
        if let Some(url) = var(delibera_ensue::URL_ENV) {
            ensue = ensue.with_base_url(&url)?;
        }
        let poll_interval = Duration::from_millis(parse_number(POLL_INTERVAL_ENV)?.unwrap_or(3000));
        if poll_interval > MAX_POLL_INTERVAL {
            return Err(config_error(format!(
                "{POLL_INTERVAL_ENV} must be at most one hour"
            )));
        }
        let round_deadline = Duration::from_secs(parse_number(ROUND_DEADLINE_ENV)?.unwrap_or(120));
        if round_deadline > MAX_ROUND_DEADLINE {
            return Err(config_error(format!(
                "{ROUND_DEADLINE_ENV} must be at most one week"
            )));
        }
        let handler = match var(TASK_HANDLER_ENV).as_deref() {
            None | Some("rules") => HandlerChoice::Rules,
            Some("llm") => HandlerChoice::Llm(LlmConfig::from_lookup(&lookup)?),
            Some(other) => {
                return Err(config_error(format!(
                    "{TASK_HANDLER_ENV} must be `rules` or `llm`, got {other:?}"
                )));
            }
        };
        Ok(Self {
            role,
            coordinator_did,
            display_name: var(DISPLAY_NAME_ENV).unwrap_or_else(|| format!("Delibera {role}")),
            port,
            public_url: var(PUBLIC_URL_ENV),
            ensue,
            poll_interval,
            round_deadline,
            handler,
            did,
        })
    }
}

/// A configured agent, ready to [`serve`](Agent::serve).
pub struct Agent {
    config: AgentConfig,
    memory: Arc<dyn Memory>,
    handler: Arc<dyn TaskHandler>,
    directory: Option<Arc<dyn WorkerDirectory>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent talking to the Ensue of `config`, with the configured handler.
    /// A coordinator also needs [`with_directory`](Self::with_directory).
    pub fn new(config: AgentConfig) -> Result<Self> {
        let memory: Arc<dyn Memory> = Arc::new(EnsueClient::new(config.ensue.clone())?);
        let handler: Arc<dyn TaskHandler> = match &config.handler {
            HandlerChoice::Rules => Arc::new(RuleVoter::new()),
            HandlerChoice::Llm(llm) => Arc::new(LlmVoter::new(llm.clone())?),
        };
        Ok(Self {
            config,
            memory,
            handler,
            directory: None,
        })
    }

    /// Uses `memory` instead of an `EnsueClient`.
    pub fn with_memory(mut self, memory: Arc<dyn Memory>) -> Self {
        self.memory = memory;
        self
    }

    /// Uses `handler` instead of the configured one.
    pub fn with_handler(mut self, handler: Arc<dyn TaskHandler>) -> Self {
        self.handler = handler;
        self
    }

    /// Where a coordinator finds its workers.
    pub fn with_directory(mut self, directory: Arc<dyn WorkerDirectory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// The agent's DID.
    pub fn did(&self) -> &Did {
        &self.config.did
    }

    /// Serves on `listener` until `shutdown` resolves: writes the agent's
    /// `display_name` and `endpoint`, runs the worker loop (workers), and
    /// answers `GET /` (and the coordinator API for coordinators). On shutdown
    /// the worker finishes or fails the task in hand before this returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let config = self.config;
        // Checked before anything is published (also enforced where the router is built).
        if config.role == AgentRole::Coordinator && self.directory.is_none() {
            return Err(config_error(
                "a coordinator needs a worker directory (registry)",
            ));
        }
        let address = listener
            .local_addr()
            .map_err(|error| config_error(format!("listener has no address: {error}")))?;
        let endpoint = config.public_url.clone().unwrap_or_else(|| {
            // Bound to all interfaces (a container): advertise loopback, which can be dialled.
            let mut dialable = address;
            if dialable.ip().is_unspecified() {
                dialable.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{dialable}")
        });
        for (field, value) in [
            (AgentField::DisplayName, config.display_name.as_str()),
            (AgentField::Endpoint, endpoint.as_str()),
        ] {
            // Ensue may be briefly unavailable at boot; the agent still serves.
            if let Err(error) = self
                .memory
                .upsert(&keys::agent(&config.did, field), value)
                .await
            {
                tracing::warn!(%error, field = field.as_str(), "could not publish agent identity");
            }
        }

        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let wait_for_stop = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };

        let health = Health {
            message: format!("Delibera {} running", config.role),
            did: config.did.clone(),
            role: config.role,
        };
        let mut worker_loop = None;
        let router = match (config.role, self.directory) {
            (AgentRole::Worker, _) => {
                let worker =
                    Worker::new(config.did.clone(), self.memory.clone(), self.handler).with_config(
                        WorkerConfig::polling(config.poll_interval, config.poll_interval * 2 / 3),
                    );
                worker_loop = Some(tokio::spawn(worker.run(wait_for_stop(stopped.clone()))));
                health_router(health)
            }
            (AgentRole::Coordinator, None) => {
                return Err(config_error(
                    "a coordinator needs a worker directory (registry)",
                ));
            }
            (AgentRole::Coordinator, Some(directory)) => {
                let state = Arc::new(CoordinatorState {
                    did: config.did.clone(),
                    coordinator: Arc::new(Coordinator::with_config(
                        self.memory.clone(),
                        CoordinatorConfig::default(),
                    )),
                    memory: self.memory.clone(),
                    directory,
                    round_deadline: config.round_deadline,
                    running: Mutex::new(None),
                    last_error: Mutex::new(None),
                });
                coordinator_router(health, state)
            }
        };
        tracing::info!(did = %config.did, role = %config.role, %address, "agent listening");
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(wait_for_stop(stopped))
            .await;
        if let Some(worker_loop) = worker_loop {
            let _ = worker_loop.await;
        }
        served.map_err(|error| config_error(format!("HTTP server failed: {error}")))
    }
}

#[derive(Clone)]
struct Health {
    message: String,
    did: Did,
    role: AgentRole,
}

fn health_json(health: &Health) -> Json<Value> {
    Json(json!({"message": health.message, "did": health.did, "role": health.role}))
}

fn health_router(health: Health) -> Router {
    Router::new().route("/", get(move || async move { health_json(&health) }))
}

struct CoordinatorState {
    did: Did,
    coordinator: Arc<Coordinator>,
    memory: Arc<dyn Memory>,
    directory: Arc<dyn WorkerDirectory>,
    round_deadline: Duration,
    /// The proposal of the round in progress.
    running: Mutex<Option<String>>,
    /// Why the last round failed, if it did.
    last_error: Mutex<Option<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single assignment, so a poisoned lock holds a whole value.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn coordinator_router(health: Health, state: Arc<CoordinatorState>) -> Router {
    Router::new()
        .route("/", get(move || async move { health_json(&health) }))
        .route("/api/coordinate", post(start_round))
        .route("/api/coordinate/status", get(round_status))
        .route("/api/proposals/{id}", get(proposal))
        .with_state(state)
}

/// An error answer: `{"error": message}` with a status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        tracing::warn!(%error, "coordinator API call failed");
        ApiError(
            StatusCode::BAD_GATEWAY,
            "shared memory or registry unavailable".into(),
        )
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CoordinateRequest {
    proposal_id: String,
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    parameters: Value,
}

async fn start_round(
    State(state): State<Arc<CoordinatorState>>,
    body: std::result::Result<Json<CoordinateRequest>, JsonRejection>,
) -> std::result::Result<(StatusCode, Json<Value>), ApiError> {
    let Json(request) =
        body.map_err(|rejection| ApiError(StatusCode::BAD_REQUEST, rejection.body_text()))?;
    if request.proposal_id.trim().is_empty() || request.proposal_id.contains('/') {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "proposalId must be non-empty and contain no '/'".into(),
        ));
    }
    {
        let mut running = lock(&state.running);
        if let Some(proposal_id) = running.as_ref() {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("a round is already running for proposal {proposal_id}"),
            ));
        }
        *running = Some(request.proposal_id.clone());
    }
    let workers = match state.directory.active_workers(&state.did).await {
        Ok(workers) if !workers.is_empty() => workers,
        outcome => {
            *lock(&state.running) = None;
            return Err(match outcome {
                Err(error) => error.into(),
                Ok(_) => ApiError(
                    StatusCode::CONFLICT,
                    "no active workers are registered for this coordinator".into(),
                ),
            });
        }
    };
    let proposal = Proposal::new(request.proposal_id.clone(), request.title)
        .with_description(request.description)
        .with_parameters(request.parameters);
    let round_state = Arc::clone(&state);
    tokio::spawn(async move {
        let outcome = round_state
            .coordinator
            .run_round(&proposal, &workers, round_state.round_deadline)
            .await;
        *lock(&round_state.last_error) = outcome.err().map(|error| {
            tracing::warn!(%error, proposal = %proposal.proposal_id, "round failed");
            error.to_string()
        });
        *lock(&round_state.running) = None;
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"proposalId": request.proposal_id, "status": "coordinating"})),
    ))
}

async fn round_status(
    State(state): State<Arc<CoordinatorState>>,
) -> std::result::Result<Json<Value>, ApiError> {
    let keys = [keys::coordinator_status(), keys::coordinator_proposal_id()];
    let values = state.memory.get_many(&keys).await.map_err(Error::from)?;
    let [status_key, proposal_key] = &keys;
    let running = lock(&state.running).clone();
    Ok(Json(json!({
        "status": values.get(status_key).map_or("idle", String::as_str),
        "proposalId": running.as_ref().or(values.get(proposal_key)),
        "running": running.is_some(),
        "lastError": lock(&state.last_error).clone(),
    })))
}

async fn proposal(
    State(state): State<Arc<CoordinatorState>>,
    Path(id): Path<String>,
) -> std::result::Result<Json<Value>, ApiError> {
    let status_key = keys::proposal(&id, ProposalField::Status);
    let tally_key = keys::proposal(&id, ProposalField::Tally);
    let values = state
        .memory
        .get_many(&[status_key.clone(), tally_key.clone()])
        .await
        .map_err(Error::from)?;
    let Some(status) = values.get(&status_key) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("unknown proposal {id}"),
        ));
    };
    let tally = match values.get(&tally_key) {
        Some(text) => serde_json::from_str::<Value>(text)
            .map_err(|error| Error::malformed("tally", &error, text))?,
        None => Value::Null,
    };
    Ok(Json(
        json!({"proposalId": id, "status": status, "tally": tally}),
    ))
}

/// Resolves on Ctrl-C (SIGINT), or on SIGTERM on Unix (what `docker stop` and a
/// CVM's shutdown send): the `shutdown` future for [`Agent::serve`] in an agent
/// binary.
///
/// The handlers are installed when this is *called*, not when the future is
/// first polled, so call it before announcing readiness: a signal that arrives
/// in between is then a clean shutdown, not the default kill. Must be called
/// inside a Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        // A handler that cannot be installed just never fires; the other still does.
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async fn received(signal: Option<Signal>) {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        async move {
            tokio::select! {
                () = received(interrupt) => {}
                () = received(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
