//! `/api/workers/*`: the coordinator contract's worker roster.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::response::Response;
use delibera_near::{RegisteredWorker, WorkerRecord};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::api_types::{ErrorBody, Message, Roster, RosterRegistered, RosterWorker};
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson};
use crate::routes::{json_body, registry_error};
use crate::validation;

/// The coordinator contract's worker roster, joined with registry endpoints.
/// `registered_at` is in milliseconds (the contract stores nanoseconds).
#[utoipa::path(get, path = "/api/workers/registered", tag = "workers",
    responses((status = 200, body = Roster), (status = 502, body = ErrorBody)))]
pub async fn registered(State(state): State<AppState>) -> Result<Response, ApiError> {
    let registry = &state.ports.registry;
    let (roster, active) =
        tokio::try_join!(registry.roster_shared(), registry.active_workers_shared())
            .map_err(registry_error)?;
    let body = state
        .rendered_roster
        .get_or_render(&roster, &active, |roster, active| {
            render_roster(roster, active)
        })?;
    Ok(json_body(body))
}

fn render_roster(
    roster: &[RegisteredWorker],
    active: &[WorkerRecord],
) -> Result<Vec<u8>, ApiError> {
    let endpoints: HashMap<&str, &str> = active
        .iter()
        .map(|worker| (worker.worker_did.as_str(), worker.endpoint_url.as_str()))
        .collect();
    let active_count = roster.iter().filter(|worker| worker.active).count();
    let workers = roster
        .iter()
        .map(|worker| RosterWorker {
            account_id: worker
                .account_id
                .as_ref()
                .unwrap_or(&worker.registered_by)
                .to_string(),
            endpoint_url: endpoints
                .get(worker.worker_id.as_str())
                .map(|url| (*url).to_owned()),
            is_active: worker.active,
            registered_at: worker.registered_at / 1_000_000,
            worker_did: worker.worker_id.clone(),
        })
        .collect();
    serde_json::to_vec(&Roster {
        workers,
        active_count,
    })
    .map_err(ApiError::internal)
}

/// `POST /api/workers/register` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RosterRequest {
    worker_id: String,
    account_id: Option<String>,
}

/// Add a worker to the coordinator contract's roster (signed with the server's NEAR key).
/// For the operator (admin token), or wallet-signed by the contract's owner.
#[utoipa::path(post, path = "/api/workers/register", tag = "workers", request_body = RosterRequest, security(("admin_token" = []), ("wallet_signature" = [])),
    responses((status = 200, body = RosterRegistered), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<RosterRequest>,
) -> Result<Json<RosterRegistered>, ApiError> {
    let worker = validation::did("workerId", &request.worker_id)?;
    let account = request
        .account_id
        .as_deref()
        .map(|text| validation::near_account("accountId", text))
        .transpose()?;
    caller.must_own_roster(&state).await?;
    state
        .ports
        .registry
        .roster_register(worker.as_str(), account.as_ref())
        .await
        .map_err(registry_error)?;
    Ok(Json(RosterRegistered {
        message: format!("Worker {worker} registered"),
        worker_id: worker.to_string(),
        account_id: account.map(|account| account.to_string()),
    }))
}

/// Remove a worker from the roster (signed with the server's NEAR key).
/// A worker that is not on the roster is 404, and nothing is signed.
/// For the operator (admin token), or wallet-signed by the contract's owner.
#[utoipa::path(delete, path = "/api/workers/{workerId}", tag = "workers", security(("admin_token" = []), ("wallet_signature" = [])),
    params(("workerId" = String, Path, description = "The worker's DID")),
    responses((status = 200, body = Message), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "the worker is not on the roster", body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(worker_id): Path<String>,
) -> Result<Json<Message>, ApiError> {
    let worker = validation::did("workerId", &worker_id)?;
    caller.must_own_roster(&state).await?;
    let registry = &state.ports.registry;
    // The contract's remove_worker succeeds on an absent worker, so the
    // roster is read first: removing nobody is the caller's mistake, and
    // should not cost a signed transaction.
    let on_roster = registry
        .roster()
        .await
        .map_err(registry_error)?
        .iter()
        .any(|entry| entry.worker_id == worker.as_str());
    if !on_roster {
        return Err(ApiError::NotFound(format!(
            "worker {worker} is not on the roster"
        )));
    }
    registry
        .roster_remove(worker.as_str())
        .await
        .map_err(registry_error)?;
    Ok(Json(Message {
        message: format!("Worker {worker} removed"),
    }))
}
