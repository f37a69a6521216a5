//! The OpenAPI document is valid OpenAPI 3, lists every route, and every
//! listed route is served.

use axum::http::StatusCode;
use serde_json::Value;

use crate::common::{Options, TestApp, TestDeployer};

const ROUTES: [(&str, &str); 13] = [
    ("get", "/"),
    ("post", "/api/provision/coordinator"),
    ("post", "/api/provision/worker"),
    ("post", "/api/provision/external-worker"),
    ("get", "/api/provision/status/{jobId}"),
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
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_token"]["scheme"],
        "bearer"
    );

    // Each documented route exists in the router (the fallback answers "no such route").
    for (method, path) in ROUTES {
        let concrete = path
            .replace("{jobId}", "00000000-0000-4000-8000-000000000000")
            .replace(
                "{agentId}",
                "did:key:z6MktnLCM9uGL4j8VSMinpV13BUYwss4R1fjcq2DiLmyjF7M",
            )
            .replace(
                "{workerId}",
                "did:key:z6MktnLCM9uGL4j8VSMinpV13BUYwss4R1fjcq2DiLmyjF7M",
            );
        let body = (method != "get" && method != "delete").then(|| serde_json::json!({}));
        let (_, response) = app.admin(&method.to_uppercase(), &concrete, body).await;
        assert_ne!(response["error"], "no such route", "{method} {path}");
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
