//! `GET /api/openapi.json`: the OpenAPI 3 document, generated from the
//! handlers' annotations and the types in [`crate::api_types`].

use axum::Json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
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
    modifiers(&AdminToken, &EveryRouteAnswers),
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
        components.add_security_scheme(
            "wallet_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`NEP413 <base64url JSON {accountId, publicKey, signature, message, nonce, \
                 recipient}>`: what a NEAR wallet's signMessage returns, for the message \
                 `<METHOD> <path>\\n<hex SHA-256 of the body>\\n<unix milliseconds>` and the \
                 recipient NEP413_RECIPIENT; at most 5 minutes old, each nonce once, signed by a \
                 full-access key of the account that owns what the request changes",
            ))),
        );
    }
}

/// The answers any route may give besides its own, written once instead of
/// on every handler: the server's edge (503 at its connection cap; 408 and
/// 413 for a request body) and the last resort (500).
struct EveryRouteAnswers;

impl EveryRouteAnswers {
    fn error(description: &str) -> RefOr<Response> {
        let body = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build();
        ResponseBuilder::new()
            .description(description)
            .content("application/json", body)
            .build()
            .into()
    }

    fn add(operation: &mut Operation) {
        let mut answers = vec![
            (
                "500",
                "an unexpected failure (the body never says more than this)",
            ),
            (
                "503",
                "every connection is busy, or the data dir's disk is full (with Retry-After)",
            ),
        ];
        if operation.request_body.is_some() {
            answers.push(("408", "the request body did not arrive in time"));
            answers.push(("413", "the request body is too large"));
        }
        for (code, description) in answers {
            // A handler's own description of the same status is kept.
            operation
                .responses
                .responses
                .entry(code.to_owned())
                .or_insert_with(|| Self::error(description));
        }
    }
}

impl Modify for EveryRouteAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                Self::add(operation);
            }
        }
    }
}

/// `GET /api/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
