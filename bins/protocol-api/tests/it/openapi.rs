//! The OpenAPI document is valid OpenAPI 3, lists every route, and every
//! listed route is served.

use axum::http::StatusCode;
use serde_json::Value;

use crate::common::{Options, TestApp, TestDeployer};

const ROUTES: [(&str, &str); 14] = [
    ("get", "/"),
    ("post", "/api/provision/coordinator"),
    ("post", "/api/provision/worker"),
    ("post", "/api/provision/external-worker"),
    ("get", "/api/provision/status/{jobId}"),
    ("get", "/api/provision/status/{jobId}/events"),
    ("post", "/api/provision/register"),
    ("post", "/api/provision/coordinator-register"),
    ("get", "/api/agents/endpoints"),
    ("get", "/api/agents/{agentId}/endpoint"),
    ("put", "/api/agents/{agentId}/endpoint"),
    ("get", "/api/workers/registered"),
    ("post", "/api/workers/register"),
    ("delete", "/api/workers/{workerId}"),
];

#[tokio::test]
async fn the_document_lists_every_route_with_schemas_and_each_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let (code, doc) = app.call("GET", "/api/openapi.json", None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Delibera Protocol API");

    let mut listed: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            listed.push((method.clone(), path.clone()));
        }
    }
    listed.sort();
    let mut expected: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);

    // Every $ref resolves to a component schema.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut refs = Vec::new();
    collect_refs(&doc["paths"], &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let name = reference.trim_start_matches("#/components/schemas/");
        assert!(schemas.contains_key(name), "dangling {reference}");
    }
    assert!(schemas["JobStatusView"]["properties"]["storachaPrivateKey"].is_object());

    // The answers any route may give are listed on every operation: 500 and
    // 503 everywhere, 408 and 413 where there is a request body.
    for (method, path) in ROUTES {
        let operation = &doc["paths"][path][method];
        let responses = operation["responses"].as_object().unwrap();
        let mut expected = vec!["500", "503"];
        if operation.get("requestBody").is_some() {
            expected.extend(["408", "413"]);
        }
        for code in expected {
            assert_eq!(
                responses[code]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{method} {path} {code}"
            );
        }
    }
    assert!(
        doc["paths"]["/api/provision/worker"]["post"]["responses"]["413"].is_object(),
        "a POST with a body lists 413"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_token"]["scheme"],
        "bearer"
    );

    // Each documented route is served: called with an empty body it answers
    // exactly this (never the fallback's `no such route`). The worker is
    // registered first, so removing it has one answer.
    let (code, body) = app
        .admin(
            "POST",
            "/api/workers/register",
            Some(serde_json::json!({ "workerId": DID, "accountId": "alice.testnet" })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    for (method, path) in ROUTES {
        let concrete = path
            .replace("{jobId}", JOB_ID)
            .replace("{agentId}", DID)
            .replace("{workerId}", DID);
        let body = (method != "get" && method != "delete").then(|| serde_json::json!({}));
        let (code, response) = app.admin(&method.to_uppercase(), &concrete, body).await;
        let (expected_code, expected) = served(method, path);
        assert_eq!(code, expected_code, "{method} {path}: {response}");
        match expected {
            Answer::Exactly(expected) => assert_eq!(response, expected, "{method} {path}"),
            Answer::Fields(fields) => {
                let mut keys: Vec<&str> = response
                    .as_object()
                    .unwrap_or_else(|| panic!("{method} {path}: {response}"))
                    .keys()
                    .map(String::as_str)
                    .collect();
                keys.sort_unstable();
                assert_eq!(keys, fields, "{method} {path}: {response}");
            }
        }
    }
}

const DID: &str = "did:key:z6MktnLCM9uGL4j8VSMinpV13BUYwss4R1fjcq2DiLmyjF7M";
const JOB_ID: &str = "00000000-0000-4000-8000-000000000000";

/// What a route answers to an empty call.
enum Answer {
    /// Exactly this JSON.
    Exactly(Value),
    /// A JSON object with exactly these fields (sorted).
    Fields(&'static [&'static str]),
}

fn error(message: String) -> Answer {
    Answer::Exactly(serde_json::json!({ "error": message }))
}

/// The answer of each documented route to an empty call (`{}` as the body
/// of those that take one, the admin token, unknown ids).
fn served(method: &str, path: &str) -> (StatusCode, Answer) {
    let missing = |field: &str| {
        error(format!(
            "invalid request body: Failed to deserialize the JSON body into the target type: \
             missing field `{field}` at line 1 column 2"
        ))
    };
    match (method, path) {
        ("get", "/") => (
            StatusCode::OK,
            Answer::Fields(&["ensueUrl", "message", "mode", "status", "timestamp"]),
        ),
        ("post", "/api/provision/coordinator" | "/api/provision/external-worker") => {
            (StatusCode::BAD_REQUEST, missing("displayName"))
        }
        ("post", "/api/provision/worker") => (StatusCode::BAD_REQUEST, missing("coordinatorDid")),
        ("get", "/api/provision/status/{jobId}" | "/api/provision/status/{jobId}/events") => {
            (StatusCode::NOT_FOUND, error(format!("no job \"{JOB_ID}\"")))
        }
        ("post", "/api/provision/register" | "/api/provision/coordinator-register") => {
            (StatusCode::BAD_REQUEST, missing("jobId"))
        }
        ("get", "/api/agents/endpoints") => {
            (StatusCode::OK, Answer::Fields(&["agents", "timestamp"]))
        }
        ("get", "/api/agents/{agentId}/endpoint") => (
            StatusCode::NOT_FOUND,
            error(format!("agent {DID} is not registered")),
        ),
        ("put", "/api/agents/{agentId}/endpoint") => (StatusCode::BAD_REQUEST, missing("endpoint")),
        ("get", "/api/workers/registered") => {
            (StatusCode::OK, Answer::Fields(&["activeCount", "workers"]))
        }
        ("post", "/api/workers/register") => (StatusCode::BAD_REQUEST, missing("workerId")),
        ("delete", "/api/workers/{workerId}") => (
            StatusCode::OK,
            Answer::Exactly(serde_json::json!({ "message": format!("Worker {DID} removed") })),
        ),
        _ => panic!("no expected answer for {method} {path}"),
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key == "$ref" {
                    out.push(inner.as_str().unwrap_or_default().to_owned());
                } else {
                    collect_refs(inner, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, out)),
        _ => {}
    }
}
