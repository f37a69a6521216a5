//! `/api/provision/*`: start jobs, poll them, and finish them after the wallet signs.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use delibera_deploy::AgentRole;
use delibera_identity::Keypair;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::api_types::{
    CoordinatorRegistered, ErrorBody, ExternalWorkerIdentity, JobStatusView, ProvisionAccepted,
    WorkerRegistered,
};
use crate::error::{ApiError, ApiJson};
use crate::jobs::{IdempotencyKey, Job, NewJob, Registration, StartedJob};
use crate::validation;

/// `POST /api/provision/coordinator` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CoordinatorRequest {
    display_name: String,
    near_account: String,
    min_workers: Option<i64>,
    max_workers: Option<i64>,
    contract_address: Option<String>,
}

/// `POST /api/provision/worker` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerRequest {
    coordinator_did: String,
    display_name: String,
    near_account: String,
}

/// `POST /api/provision/external-worker` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalWorkerRequest {
    display_name: String,
    near_account: String,
    endpoint_url: String,
    coordinator_did: String,
}

/// `POST /api/provision/register` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    job_id: String,
    tx_hash: Option<String>,
}

/// `POST /api/provision/coordinator-register` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CoordinatorRegisterRequest {
    job_id: String,
    contract_address: Option<String>,
    tx_hash: Option<String>,
}

/// The header a client sends so that a retried provisioning request gets
/// the job the first one started.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Set on the answer to a retry that got the job an earlier request started.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// What both provisioning routes answer: 202 with the job id.
type Accepted = (StatusCode, HeaderMap, Json<ProvisionAccepted>);

fn accepted(started: &StartedJob) -> Accepted {
    let mut headers = HeaderMap::new();
    if started.replayed {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    (
        StatusCode::ACCEPTED,
        headers,
        Json(ProvisionAccepted {
            job_id: started.job.id,
            status: "provisioning".into(),
        }),
    )
}

/// The request's `Idempotency-Key`, if it sent one.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        ApiError::BadRequest("Idempotency-Key must be visible ASCII characters only".into())
    })?;
    IdempotencyKey::parse(text)
        .map(Some)
        .map_err(ApiError::BadRequest)
}

/// Start a coordinator provisioning job: identity, Storacha delegation, Ensue
/// org, deployment. Poll the status route for progress. With an
/// `Idempotency-Key`, a retry of the same request gets the same job.
#[utoipa::path(post, path = "/api/provision/coordinator", tag = "provisioning", request_body = CoordinatorRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "16–255 visible ASCII characters, at least 8 different (a random UUID): a retry of the same request with the same key gets the same job, marked `Idempotent-Replayed: true`; kept as long as the job")),
    responses((status = 202, body = ProvisionAccepted), (status = 400, body = ErrorBody),
        (status = 422, description = "the Idempotency-Key was used for a different request", body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn coordinator(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CoordinatorRequest>,
) -> Result<Accepted, ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    let display_name = validation::display_name("displayName", &request.display_name)?;
    let near_account = validation::near_account("nearAccount", &request.near_account)?;
    let (min_workers, max_workers) =
        validation::worker_bounds(request.min_workers, request.max_workers)?;
    let contract_address = request
        .contract_address
        .as_deref()
        .filter(|text| !text.trim().is_empty())
        .map(|text| validation::near_account("contractAddress", text))
        .transpose()?;
    let new = NewJob {
        role: AgentRole::Coordinator,
        display_name,
        near_account,
        coordinator_did: None,
        min_workers: Some(min_workers),
        max_workers: Some(max_workers),
        contract_address,
    };
    let started = state.jobs.start(new, idempotency_key.as_ref()).await?;
    Ok(accepted(&started))
}

/// Start a managed worker provisioning job for a registered coordinator.
/// With an `Idempotency-Key`, a retry of the same request gets the same job.
#[utoipa::path(post, path = "/api/provision/worker", tag = "provisioning", request_body = WorkerRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "16–255 visible ASCII characters, at least 8 different (a random UUID): a retry of the same request with the same key gets the same job, marked `Idempotent-Replayed: true`; kept as long as the job")),
    responses((status = 202, body = ProvisionAccepted), (status = 400, body = ErrorBody),
        (status = 404, description = "the coordinator is not registered", body = ErrorBody),
        (status = 409, description = "the coordinator is inactive", body = ErrorBody),
        (status = 422, description = "the Idempotency-Key was used for a different request", body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn worker(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<WorkerRequest>,
) -> Result<Accepted, ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    let coordinator_did = validation::did("coordinatorDid", &request.coordinator_did)?;
    let display_name = validation::display_name("displayName", &request.display_name)?;
    let near_account = validation::near_account("nearAccount", &request.near_account)?;
    let new = NewJob {
        role: AgentRole::Worker,
        display_name,
        near_account,
        coordinator_did: Some(coordinator_did.clone()),
        min_workers: None,
        max_workers: None,
        contract_address: None,
    };
    // A retry gets its job even if the coordinator changed since.
    if let Some(key) = &idempotency_key
        && let Some(started) = state.jobs.replay(key, &new).await?
    {
        return Ok(accepted(&started));
    }
    // A deploy costs money: refuse before paying for a worker whose
    // coordinator the registry does not know.
    let coordinator = state
        .ports
        .registry
        .coordinator_by_did(coordinator_did.as_str())
        .await
        .map_err(crate::routes::registry_error)?;
    match coordinator {
        Some(record) if record.is_active => {}
        Some(_) => {
            return Err(ApiError::Conflict(format!(
                "coordinator {coordinator_did} is not active"
            )));
        }
        None => {
            return Err(ApiError::NotFound(format!(
                "coordinator {coordinator_did} is not registered"
            )));
        }
    }
    let started = state.jobs.start(new, idempotency_key.as_ref()).await?;
    Ok(accepted(&started))
}

/// A fresh identity for a self-hosted worker, returned once and never stored.
#[utoipa::path(post, path = "/api/provision/external-worker", tag = "provisioning", request_body = ExternalWorkerRequest,
    responses((status = 200, body = ExternalWorkerIdentity), (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn external_worker(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ExternalWorkerRequest>,
) -> Result<Json<ExternalWorkerIdentity>, ApiError> {
    validation::display_name("displayName", &request.display_name)?;
    validation::near_account("nearAccount", &request.near_account)?;
    validation::endpoint_url(
        "endpointUrl",
        &request.endpoint_url,
        state.settings.allow_loopback_endpoints,
    )?;
    validation::did("coordinatorDid", &request.coordinator_did)?;
    let keypair = Keypair::generate();
    Ok(Json(ExternalWorkerIdentity {
        worker_did: keypair.did().to_string(),
        private_key_string: keypair.to_ucanto_string().to_string(),
    }))
}

/// Poll a provisioning job. Secrets appear only at `awaiting_near_signature` and `complete`.
#[utoipa::path(get, path = "/api/provision/status/{jobId}", tag = "provisioning",
    params(("jobId" = String, Path, description = "The id returned when the job started")),
    responses((status = 200, body = JobStatusView), (status = 404, body = ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Response, ApiError> {
    // Rendered by `JobStatusView::of` when the job's state was committed.
    let document = state.jobs.status(&job_id).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document,
    )
        .into_response())
}

/// Follow a job's progress as Server-Sent Events: the current status
/// document first, then each committed transition, in order. Every event is
/// `event: status`, its `data` the status route's JSON for that moment (the
/// same secret rules), its `id` what `Last-Event-ID` resumes from (a resumed
/// stream sends what it missed, or the current document when that is no
/// longer kept). The stream ends after `complete` or `failed`; a comment
/// line every 15 s keeps an idle one open.
#[utoipa::path(get, path = "/api/provision/status/{jobId}/events", tag = "provisioning",
    params(("jobId" = String, Path, description = "The job id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received, to resume after it")),
    responses((status = 200, content_type = "text/event-stream", description = "`event: status` events whose data is the JobStatusView JSON"),
        (status = 404, body = ErrorBody)))]
pub async fn status_events(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok());
    let follower = state.jobs.follow(&job_id, last_event_id).await?;
    let events = futures_util::stream::unfold(Some(follower), move |follower| async move {
        let mut follower = follower?;
        let event = match follower.next().await? {
            Ok((event_id, document)) => {
                let finished = serde_json::from_slice::<StatusOnly>(&document)
                    .is_ok_and(|doc| doc.status == "complete" || doc.status == "failed");
                let event = Event::default()
                    .event("status")
                    .id(event_id)
                    .data(String::from_utf8_lossy(&document));
                return Some((
                    Ok::<_, std::convert::Infallible>(event),
                    (!finished).then_some(follower),
                ));
            }
            Err(error) => {
                // A damaged record ends the stream with what the status
                // route would answer.
                let body = ApiError::from(crate::jobs::JobError::from(error)).to_string();
                Event::default()
                    .event("error")
                    .data(serde_json::json!({ "error": body }).to_string())
            }
        };
        Some((Ok(event), None))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(state.settings.events_heartbeat))
        .into_response())
}

/// The one field of a status document the event stream reads.
#[derive(Deserialize)]
struct StatusOnly {
    status: String,
}

/// The job once the machine has registered it (both registration routes).
async fn registered(
    state: &AppState,
    job_id: &str,
    role: AgentRole,
    registration: Registration,
) -> Result<Job, ApiError> {
    Ok(state.jobs.register(job_id, role, registration).await?)
}

/// Finish a worker job after the wallet signed the registry transaction.
#[utoipa::path(post, path = "/api/provision/register", tag = "provisioning", request_body = RegisterRequest,
    responses((status = 200, body = WorkerRegistered), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the job is not a worker awaiting its signature, the registry does not show the registration, or the agent does not answer its health check", body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<Json<WorkerRegistered>, ApiError> {
    let registration = Registration {
        tx_hash: request.tx_hash,
        contract_address: None,
    };
    let job = registered(&state, &request.job_id, AgentRole::Worker, registration).await?;
    Ok(Json(WorkerRegistered {
        status: job.status.as_str().into(),
        worker_did: job.agent_did.map(|did| did.to_string()),
        phala_endpoint: job.endpoint,
        tx_hash: job.tx_hash,
    }))
}

/// Finish a coordinator job after the wallet signed (factory deploy + registry register).
#[utoipa::path(post, path = "/api/provision/coordinator-register", tag = "provisioning", request_body = CoordinatorRegisterRequest,
    responses((status = 200, body = CoordinatorRegistered), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the job is not a coordinator awaiting its signature, the registry does not show the registration, or the agent does not answer its health check", body = ErrorBody)))]
pub async fn coordinator_register(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CoordinatorRegisterRequest>,
) -> Result<Json<CoordinatorRegistered>, ApiError> {
    let contract_address = request
        .contract_address
        .as_deref()
        .filter(|text| !text.trim().is_empty())
        .map(|text| validation::near_account("contractAddress", text))
        .transpose()?;
    let registration = Registration {
        tx_hash: request.tx_hash,
        contract_address,
    };
    let job = registered(
        &state,
        &request.job_id,
        AgentRole::Coordinator,
        registration,
    )
    .await?;
    Ok(Json(CoordinatorRegistered {
        status: job.status.as_str().into(),
        coordinator_did: job.agent_did.map(|did| did.to_string()),
        phala_endpoint: job.endpoint,
        contract_address: job.contract_address.map(|account| account.to_string()),
        tx_hash: job.tx_hash,
        ensue_org_name: job.ensue_org_name,
        ensue_claim_url: job.secrets.ensue_claim_url,
        ensue_verification_code: job.secrets.ensue_verification_code,
    }))
}
