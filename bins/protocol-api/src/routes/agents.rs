//! `/api/agents/*`: endpoint reads and updates through the registry.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::response::Response;
use delibera_deploy::AgentRole;
use delibera_near::{CoordinatorRecord, EndpointUpdate, WorkerRecord};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::api_types::{
    AgentEndpoint, AgentEndpointView, AgentEndpoints, EndpointUpdated, ErrorBody,
};
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson};
use crate::routes::{json_body, registry_error};
use crate::validation;

/// Every active agent's endpoint from the registry, coordinators and workers.
#[utoipa::path(get, path = "/api/agents/endpoints", tag = "agents",
    responses((status = 200, body = AgentEndpoints), (status = 502, body = ErrorBody)))]
pub async fn endpoints(State(state): State<AppState>) -> Result<Response, ApiError> {
    let registry = &state.ports.registry;
    let (coordinators, workers) = tokio::try_join!(
        registry.active_coordinators_shared(),
        registry.active_workers_shared()
    )
    .map_err(registry_error)?;
    let agents = state.rendered_endpoints.get_or_render(
        &coordinators,
        &workers,
        |coordinators, workers| render_agents(coordinators, workers),
    )?;
    // `AgentEndpoints` as serde writes it: the agents, then the time of
    // this answer, which is all that changes while the registry does not.
    let timestamp = crate::iso_now();
    let mut body = Vec::with_capacity(agents.len() + timestamp.len() + 28);
    body.extend_from_slice(b"{\"agents\":");
    body.extend_from_slice(&agents);
    body.extend_from_slice(b",\"timestamp\":\"");
    body.extend_from_slice(timestamp.as_bytes());
    body.extend_from_slice(b"\"}");
    Ok(json_body(body))
}

/// The `agents` object of [`AgentEndpoints`]: every active agent by DID.
fn render_agents(
    coordinators: &[CoordinatorRecord],
    workers: &[WorkerRecord],
) -> Result<Vec<u8>, ApiError> {
    let mut agents = BTreeMap::new();
    for coordinator in coordinators {
        agents.insert(
            coordinator.coordinator_did.as_str(),
            AgentEndpoint {
                endpoint: coordinator.endpoint_url.clone(),
                kind: "coordinator".into(),
                cvm_id: coordinator.cvm_id.clone(),
            },
        );
    }
    for worker in workers {
        agents.insert(
            worker.worker_did.as_str(),
            AgentEndpoint {
                endpoint: worker.endpoint_url.clone(),
                kind: "worker".into(),
                cvm_id: worker.cvm_id.clone(),
            },
        );
    }
    serde_json::to_vec(&agents).map_err(ApiError::internal)
}

/// One agent's endpoint from the registry.
#[utoipa::path(get, path = "/api/agents/{agentId}/endpoint", tag = "agents",
    params(("agentId" = String, Path, description = "The agent's DID")),
    responses((status = 200, body = AgentEndpointView), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn endpoint(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<AgentEndpointView>, ApiError> {
    let registry = &state.ports.registry;
    if let Some(worker) = registry
        .worker_by_did(&agent_id)
        .await
        .map_err(registry_error)?
    {
        return Ok(Json(AgentEndpointView {
            agent_id,
            endpoint: worker.endpoint_url,
            cvm_id: worker.cvm_id,
        }));
    }
    if let Some(coordinator) = registry
        .coordinator_by_did(&agent_id)
        .await
        .map_err(registry_error)?
    {
        return Ok(Json(AgentEndpointView {
            agent_id,
            endpoint: coordinator.endpoint_url,
            cvm_id: coordinator.cvm_id,
        }));
    }
    Err(ApiError::NotFound(format!(
        "agent {agent_id} is not registered"
    )))
}

/// `PUT /api/agents/:agentId/endpoint` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointRequest {
    endpoint: String,
    cvm_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Accepted as the frontend may send it, and not stored: the registry
    /// has no field for it.
    #[allow(dead_code)]
    dashboard_url: Option<String>,
}

/// Change an agent's endpoint on the registry (signed with the server's NEAR
/// key). The registry changes a coordinator's endpoint, or a worker's CVM
/// id, only by registering the agent again, which makes the signer its owner
/// and switches it on: that is done only for a record the server's account
/// owns and that is active, and refused with 409 otherwise (its owner
/// registers it again from their wallet). For the operator (admin token), or
/// wallet-signed by the account that owns the agent's registry record.
#[utoipa::path(put, path = "/api/agents/{agentId}/endpoint", tag = "agents", request_body = EndpointRequest,
    params(("agentId" = String, Path, description = "The agent's DID")), security(("admin_token" = []), ("wallet_signature" = [])),
    responses((status = 200, body = EndpointUpdated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, description = "a registry rule refused it, or the change would make the server's account the record's owner", body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn update_endpoint(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(agent_id): Path<String>,
    ApiJson(request): ApiJson<EndpointRequest>,
) -> Result<Json<EndpointUpdated>, ApiError> {
    let did = validation::did("agentId", &agent_id)?;
    let endpoint = validation::endpoint_url(
        "endpoint",
        &request.endpoint,
        state.settings.allow_loopback_endpoints,
    )?;
    let role = match request.kind.as_deref() {
        None => AgentRole::Worker,
        Some(text) => text.parse::<AgentRole>().map_err(|_| {
            ApiError::BadRequest(format!(
                "type must be \"worker\" or \"coordinator\", got {text:?}"
            ))
        })?,
    };
    let update = EndpointUpdate {
        did: did.to_string(),
        endpoint_url: endpoint.clone(),
        cvm_id: request.cvm_id.filter(|id| !id.trim().is_empty()),
    };
    let registry = &state.ports.registry;
    if caller != Caller::Operator {
        // A wallet-signed change is the record owner's to make.
        let owner = match role {
            AgentRole::Worker => registry
                .worker_by_did(did.as_str())
                .await
                .map(|record| record.map(|record| record.account_id)),
            AgentRole::Coordinator => registry
                .coordinator_by_did(did.as_str())
                .await
                .map(|record| record.map(|record| record.account_id)),
        }
        .map_err(registry_error)?
        .ok_or_else(|| ApiError::NotFound(format!("{role} {did} is not on the registry")))?;
        caller.must_be(&owner, &format!("the registry record of {did}"))?;
    }
    match role {
        AgentRole::Worker => registry.update_worker_endpoint(&update).await,
        AgentRole::Coordinator => registry.update_coordinator_endpoint(&update).await,
    }
    .map_err(registry_error)?;
    Ok(Json(EndpointUpdated {
        success: true,
        agent_id: did.to_string(),
        endpoint,
    }))
}
