//! `GET /api/openapi.json`: the OpenAPI 3 document, generated from the
//! handlers' annotations and the types in [`crate::api_types`].

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api_types::*;
use crate::routes::{agents, provision, workers};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Delibera Protocol API", description = "One-click provisioning of Delibera coordinators and workers, registry reads and writes, the worker roster."),
    paths(
        crate::health,
        provision::coordinator,
        provision::worker,
        provision::external_worker,
        provision::status,
        provision::status_events,
        provision::register,
        provision::coordinator_register,
        agents::endpoints,
        agents::endpoint,
        agents::update_endpoint,
        workers::registered,
        workers::register,
        workers::remove,
    ),
    components(schemas(
        ErrorBody, Health, ProvisionAccepted, ExternalWorkerIdentity, JobStatusView, WorkerRegistered,
        CoordinatorRegistered, AgentEndpoint, AgentEndpoints, AgentEndpointView, EndpointUpdated, RosterWorker,
        Roster, RosterRegistered, Message,
        provision::CoordinatorRequest, provision::WorkerRequest, provision::ExternalWorkerRequest,
        provision::RegisterRequest, provision::CoordinatorRegisterRequest, agents::EndpointRequest,
        workers::RosterRequest,
    )),
    modifiers(&AdminToken),
    tags(
        (name = "provisioning", description = "Provisioning jobs"),
        (name = "agents", description = "Agent endpoints on the registry"),
        (name = "workers", description = "The coordinator contract's worker roster"),
    )
)]
pub struct ApiDoc;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("PROTOCOL_API_ADMIN_TOKEN"))
                    .build(),
            ),
        );
    }
}

/// `GET /api/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
