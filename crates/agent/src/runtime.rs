//! The agent runtime: what runs inside a CVM (or in-process under the local
//! deployer): a worker loop or a coordinator, behind a small HTTP API,
//! configured by its [`AgentEnv`].

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use delibera_backoff::Backoff;
use delibera_coordination::{
    Coordinator, CoordinatorConfig, LlmConfig, LlmVoter, MAX_ROUND_DEADLINE, Proposal, RuleVoter,
    TaskHandler, Worker, WorkerConfig,
};
use delibera_deploy::{AgentEnv, AgentRole, Voter, vars};
use delibera_ensue::keys::{self, AgentField, ProposalField};
use delibera_ensue::{CacheKey, EncryptedMemory, EnsueClient, EnsueConfig, Memory};
use delibera_identity::Did;
use delibera_near::{NearRpc, RegistryContract};
use delibera_serve::{Edges, Server};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::dashboard::{self, RecordDecisions, WorkerDashboard};
use crate::{Error, Result, StaticWorkers, WorkerDirectory};

/// A configured agent, ready to [`serve`](Agent::serve).
pub struct Agent {
    env: AgentEnv,
    memory: Arc<dyn Memory>,
    handler: Arc<dyn TaskHandler>,
    directory: Option<Arc<dyn WorkerDirectory>>,
    edges: Edges,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent as its env describes it: Ensue at `ENSUE_URL`, the voter of
    /// `TASK_HANDLER`, and for a coordinator its workers from
    /// `DELIBERA_WORKERS`, or from the registry contract at `NEAR_RPC_URL`.
    /// A coordinator with neither needs [`with_directory`](Self::with_directory).
    pub fn new(env: AgentEnv) -> Result<Self> {
        if env.round_deadline > MAX_ROUND_DEADLINE {
            return Err(delibera_deploy::Error::InvalidVar {
                name: vars::ROUND_DEADLINE_SECS,
                reason: "must be at most one week".into(),
            }
            .into());
        }
        let ensue =
            EnsueConfig::new(env.ensue_api_key.as_str()).with_base_url(env.ensue_url.as_str())?;
        let memory: Arc<dyn Memory> = Arc::new(EnsueClient::new(ensue)?);
        let handler: Arc<dyn TaskHandler> = match &env.voter {
            Voter::Rules => Arc::new(RuleVoter::new()),
            Voter::Llm {
                base_url,
                model,
                api_key,
            } => {
                let mut config =
                    LlmConfig::new(base_url.as_str().trim_end_matches('/'), model.as_str());
                config.api_key = api_key.as_ref().map(|key| key.to_string());
                Arc::new(LlmVoter::new(config)?)
            }
        };
        let directory: Option<Arc<dyn WorkerDirectory>> = if !env.static_workers.is_empty() {
            Some(Arc::new(StaticWorkers(env.static_workers.clone())))
        } else if let (Some(contract), false) =
            (&env.registry_contract, env.near_rpc_urls.is_empty())
        {
            let rpc = NearRpc::new(env.near_rpc_urls.iter().map(|url| url.as_str()))?;
            Some(Arc::new(RegistryContract::new(rpc, contract.clone())))
        } else {
            None
        };
        Ok(Self {
            env,
            memory,
            handler,
            directory,
            edges: Edges::default(),
        })
    }

    /// Uses `memory` instead of an `EnsueClient`.
    pub fn with_memory(mut self, memory: Arc<dyn Memory>) -> Self {
        self.memory = memory;
        self
    }

    /// Uses `handler` instead of the configured voter.
    pub fn with_handler(mut self, handler: Arc<dyn TaskHandler>) -> Self {
        self.handler = handler;
        self
    }

    /// Where a coordinator finds its workers, instead of what its env names.
    pub fn with_directory(mut self, directory: Arc<dyn WorkerDirectory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Serves HTTP with `edges` (timeouts, connection cap) instead of the
    /// default [`Edges`].
    pub fn with_edges(mut self, edges: Edges) -> Self {
        self.edges = edges;
        self
    }

    /// The agent's DID.
    pub fn did(&self) -> &Did {
        self.env.did()
    }

    /// The env it runs with.
    pub fn env(&self) -> &AgentEnv {
        &self.env
    }

    /// Serves on `listener` until `shutdown` resolves: publishes the agent's
    /// `display_name` (and its `endpoint`, when its env names a public URL),
    /// runs the worker loop (workers), and answers `GET /` (and the
    /// coordinator API for coordinators). On shutdown the worker finishes or
    /// fails the task in hand before this returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let env = self.env;
        // Checked before anything is published.
        if env.role == AgentRole::Coordinator && self.directory.is_none() {
            return Err(Error::config(format!(
                "a coordinator needs to find its workers: set {} and {}, or {}",
                vars::NEAR_RPC_URL,
                vars::REGISTRY_CONTRACT,
                vars::STATIC_WORKERS
            )));
        }
        let address = listener.local_addr().map_err(Error::Serve)?;
        let did = env.did().clone();
        // Only the env's public URL is published: the address this process
        // bound is reachable from nowhere else (a container, a TEE).
        let mut published = vec![(AgentField::DisplayName, env.display_name.clone())];
        match &env.public_url {
            Some(url) => published.push((
                AgentField::Endpoint,
                url.as_str().trim_end_matches('/').to_owned(),
            )),
            None => {
                tracing::info!(%did, "no {} set; the endpoint is left to the registration", vars::PUBLIC_URL)
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
        // Published beside serving, never before it: Ensue may be unreachable
        // at boot (a restarted local server starts its agents before its
        // embedded Ensue), and the health check must answer at once.
        tokio::spawn(publish_identity(
            self.memory.clone(),
            did.clone(),
            published,
            wait_for_stop(stopped.clone()),
        ));

        let health = Health {
            message: format!("Delibera {} running", env.role),
            did: did.clone(),
            role: env.role,
            mode: if env.local { "local" } else { "production" },
            contract_id: env
                .coordinator_contract
                .as_ref()
                .map_or_else(|| "N/A".to_owned(), ToString::to_string),
        };
        let mut worker_loop = None;
        let router = match (env.role, self.directory) {
            (AgentRole::Worker, _) => {
                let sealing = CacheKey::from_private_key(env.identity.private_key())?;
                let dashboard = Arc::new(WorkerDashboard {
                    did: did.clone(),
                    display_name: env.display_name.clone(),
                    memory: self.memory.clone(),
                    documents: Arc::new(EncryptedMemory::new(self.memory.clone(), sealing)),
                    space_did: env.storacha.as_ref().map(|grant| grant.space_did.clone()),
                    edits: Arc::default(),
                });
                let handler = Arc::new(RecordDecisions {
                    inner: self.handler,
                    dashboard: dashboard.clone(),
                });
                let worker = Worker::new(did.clone(), self.memory.clone(), handler)
                    .with_config(WorkerConfig::polling(
                        env.poll_interval,
                        env.poll_interval * 2 / 3,
                    ))
                    .with_documents(crate::documents::family(env.documents));
                worker_loop = Some(tokio::spawn(worker.run(wait_for_stop(stopped.clone()))));
                health_router(health).merge(dashboard::worker_routes(dashboard))
            }
            (AgentRole::Coordinator, directory) => {
                let directory = directory
                    .ok_or_else(|| Error::config("a coordinator needs a worker directory"))?;
                let state = Arc::new(CoordinatorState {
                    did: did.clone(),
                    coordinator: Arc::new(
                        Coordinator::with_config(self.memory.clone(), CoordinatorConfig::default())
                            .with_documents(crate::documents::family(env.documents)),
                    ),
                    memory: self.memory.clone(),
                    directory,
                    round_deadline: env.round_deadline,
                    running: Mutex::new(None),
                    last_error: Mutex::new(None),
                });
                coordinator_router(health, state)
            }
        };
        // What no route takes answers in the API's error shape too.
        let router = router
            .fallback(no_such_route)
            .method_not_allowed_fallback(method_not_allowed);
        // The dashboards are served from another origin than the agent's.
        let router = router.layer(env.cors.layer());
        tracing::info!(%did, role = %env.role, %address, "agent listening");
        let served = Server::new(router)
            .with_edges(self.edges)
            .run(listener, wait_for_stop(stopped))
            .await;
        if let Some(worker_loop) = worker_loop {
            let _ = worker_loop.await;
        }
        served.map_err(|error| Error::Serve(error.into()))
    }
}

/// Writes the agent's identity fields to Ensue, retrying until they land or
/// the agent stops (an unclaimed hosted org refuses its key until a person
/// claims it).
async fn publish_identity(
    memory: Arc<dyn Memory>,
    did: Did,
    fields: Vec<(AgentField, String)>,
    stopped: impl Future<Output = ()>,
) {
    let pauses = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let publish = async {
        for attempt in 1.. {
            let mut failure = None;
            for (field, value) in &fields {
                if let Err(error) = memory.upsert(&keys::agent(&did, *field), value).await {
                    failure = Some((field.as_str(), error));
                    break;
                }
            }
            let Some((field, error)) = failure else {
                return;
            };
            if attempt == 1 {
                tracing::warn!(%did, %error, field, "could not publish agent identity yet; retrying");
            } else {
                tracing::debug!(%did, %error, field, attempt, "could not publish agent identity");
            }
            tokio::time::sleep(pauses.delay(attempt)).await;
        }
    };
    tokio::select! {
        () = publish => {}
        () = stopped => {}
    }
}

#[derive(Clone)]
struct Health {
    message: String,
    did: Did,
    role: AgentRole,
    mode: &'static str,
    /// The coordinator contract the dashboards read, or `N/A`.
    contract_id: String,
}

fn health_json(health: &Health) -> Json<Value> {
    Json(json!({
        "message": health.message,
        "did": health.did,
        "role": health.role,
        "status": "healthy",
        "mode": health.mode,
        "contractId": health.contract_id,
        "timestamp": dashboard::iso_now(),
    }))
}

fn health_router(health: Health) -> Router {
    Router::new().route("/", get(move || async move { health_json(&health) }))
}

pub(crate) struct CoordinatorState {
    pub(crate) did: Did,
    coordinator: Arc<Coordinator>,
    pub(crate) memory: Arc<dyn Memory>,
    pub(crate) directory: Arc<dyn WorkerDirectory>,
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
        .merge(dashboard::coordinator_routes())
        .with_state(state)
}

/// An error answer: `{"error": message}` with a status.
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    /// The rejection's own status (413 too large, 415 not declared JSON),
    /// except a body of the wrong shape, which the API documents as 400
    /// (axum's is 422).
    fn from(rejection: JsonRejection) -> Self {
        let status = match rejection {
            JsonRejection::JsonDataError(_) => StatusCode::BAD_REQUEST,
            _ => rejection.status(),
        };
        ApiError(status, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError(rejection.status(), rejection.body_text())
    }
}

async fn no_such_route() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route".into(),
    )
}

impl From<delibera_coordination::Error> for ApiError {
    fn from(error: delibera_coordination::Error) -> Self {
        Error::from(error).into()
    }
}

impl From<delibera_ensue::Error> for ApiError {
    fn from(error: delibera_ensue::Error) -> Self {
        Error::from(error).into()
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        tracing::warn!(%error, "agent API call failed");
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
    let Json(request) = body?;
    dashboard::check_proposal_id(&request.proposal_id)
        .map_err(|ApiError(status, rule)| ApiError(status, format!("proposalId: {rule}")))?;
    let proposal = Proposal::new(request.proposal_id.clone(), request.title)
        .with_description(request.description)
        .with_parameters(request.parameters);
    begin_round(&state, proposal).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"proposalId": request.proposal_id, "status": "coordinating"})),
    ))
}

/// Starts a round of `proposal` over the active workers in the background;
/// refused (409) while one runs or when there is no active worker.
pub(crate) async fn begin_round(
    state: &Arc<CoordinatorState>,
    proposal: Proposal,
) -> std::result::Result<(), ApiError> {
    {
        let mut running = lock(&state.running);
        if let Some(proposal_id) = running.as_ref() {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("a round is already running for proposal {proposal_id}"),
            ));
        }
        *running = Some(proposal.proposal_id.clone());
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
    let round_state = Arc::clone(state);
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
    Ok(())
}

async fn round_status(
    State(state): State<Arc<CoordinatorState>>,
) -> std::result::Result<Json<Value>, ApiError> {
    // Read before the memory: a round clears `running` only after its last
    // write, so once it reads as finished the values read next are the
    // round's final ones (read the other way round, a round ending in
    // between showed as finished while still `tallying`).
    let running = lock(&state.running).clone();
    let keys = [
        keys::coordinator_status(),
        keys::coordinator_proposal_id(),
        keys::coordinator_tally(),
    ];
    let values = state.memory.get_many(&keys).await.map_err(Error::from)?;
    let [status_key, proposal_key, _] = &keys;
    Ok(Json(json!({
        "status": values.get(status_key).map_or("idle", String::as_str),
        "proposalId": running.as_ref().or(values.get(proposal_key)),
        "running": running.is_some(),
        "lastError": lock(&state.last_error).clone(),
        "tally": dashboard::last_tally(&values),
        "timestamp": dashboard::iso_now(),
    })))
}

async fn proposal(
    State(state): State<Arc<CoordinatorState>>,
    id: std::result::Result<Path<String>, PathRejection>,
) -> std::result::Result<Json<Value>, ApiError> {
    let Path(id) = id?;
    dashboard::check_proposal_id(&id)?;
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
        Some(text) => serde_json::from_str::<Value>(text).map_err(|error| {
            tracing::warn!(proposal = %id, %error, "the stored tally is not JSON");
            ApiError(
                StatusCode::BAD_GATEWAY,
                format!("the stored tally of proposal {id} is not JSON"),
            )
        })?,
        None => Value::Null,
    };
    Ok(Json(
        json!({"proposalId": id, "status": status, "tally": tally}),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{OnceLock, Weak};

    use delibera_ensue::InMemory;

    use super::*;

    /// A memory over which the round in progress ends while a status read
    /// is answered: `get_many` takes what is stored, then the round writes
    /// `completed` and lets go of `running`, and the read answers what it took.
    struct RoundEndsDuringRead {
        inner: InMemory,
        state: OnceLock<Weak<CoordinatorState>>,
    }

    #[async_trait::async_trait]
    impl Memory for RoundEndsDuringRead {
        async fn create(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
            self.inner.create(key, value).await
        }
        async fn update(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
            self.inner.update(key, value).await
        }
        async fn get(&self, key: &str) -> delibera_ensue::Result<Option<String>> {
            self.inner.get(key).await
        }
        async fn get_many(
            &self,
            keys: &[String],
        ) -> delibera_ensue::Result<HashMap<String, String>> {
            let taken = self.inner.get_many(keys).await?;
            if let Some(state) = self.state.get().and_then(Weak::upgrade)
                && lock(&state.running).is_some()
            {
                self.inner
                    .update(&keys::coordinator_status(), "completed")
                    .await?;
                *lock(&state.running) = None;
            }
            Ok(taken)
        }
        async fn list_keys(&self, prefix: &str) -> delibera_ensue::Result<Vec<String>> {
            self.inner.list_keys(prefix).await
        }
        async fn delete(&self, key: &str) -> delibera_ensue::Result<()> {
            self.inner.delete(key).await
        }
    }

    #[tokio::test]
    async fn a_round_that_ends_during_a_status_read_never_shows_as_ended_mid_tally() {
        let inner = InMemory::new();
        inner
            .create(&keys::coordinator_status(), "tallying")
            .await
            .unwrap();
        let memory = Arc::new(RoundEndsDuringRead {
            inner,
            state: OnceLock::new(),
        });
        let did: Did = "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH"
            .parse()
            .unwrap();
        let state = Arc::new(CoordinatorState {
            did,
            coordinator: Arc::new(Coordinator::new(memory.clone())),
            memory: memory.clone(),
            directory: Arc::new(StaticWorkers(Vec::new())),
            round_deadline: Duration::from_secs(30),
            running: Mutex::new(Some("p-1".into())),
            last_error: Mutex::new(None),
        });
        memory.state.set(Arc::downgrade(&state)).unwrap();

        // Read while the round ran: still running, whatever it had written.
        let Ok(Json(during)) = round_status(State(state.clone())).await else {
            panic!("the status read failed");
        };
        assert_eq!(
            (&during["running"], &during["status"], &during["proposalId"]),
            (&json!(true), &json!("tallying"), &json!("p-1")),
            "{during}"
        );
        // Read after: finished, with what it wrote last.
        let Ok(Json(after)) = round_status(State(state)).await else {
            panic!("the status read failed");
        };
        assert_eq!(
            (&after["running"], &after["status"]),
            (&json!(false), &json!("completed")),
            "{after}"
        );
    }
}
