//! Every route answers malformed input with a 4xx and `{"error": "…"}`:
//! never a 500, never a panic.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use crate::common::{self, Options, TestApp, TestDeployer};

const DID: &str = "did:key:z6MktnLCM9uGL4j8VSMinpV13BUYwss4R1fjcq2DiLmyjF7M";

fn with(base: &Value, key: &str, value: Value) -> Value {
    let mut body = base.clone();
    body[key] = value;
    body
}

fn without(base: &Value, key: &str) -> Value {
    let mut body = base.clone();
    body.as_object_mut().unwrap().remove(key);
    body
}

#[tokio::test]
async fn a_table_of_bad_inputs_gets_4xx_with_an_error_message() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;

    let coordinator =
        json!({ "displayName": "C", "nearAccount": "c.testnet", "minWorkers": 1, "maxWorkers": 3 });
    let worker = json!({ "coordinatorDid": DID, "displayName": "W", "nearAccount": "w.testnet" });
    let external = json!({ "displayName": "E", "nearAccount": "e.testnet", "endpointUrl": "https://e.example", "coordinatorDid": DID });
    let endpoint = json!({ "endpoint": "https://new.example", "cvmId": "x", "type": "worker" });
    let roster = json!({ "workerId": DID, "accountId": "alice.testnet" });
    let long_name = json!("x".repeat(protocol_api::validation::MAX_DISPLAY_NAME_CHARS + 1));
    let agent_endpoint = format!("/api/agents/{DID}/endpoint");

    let cases: Vec<(&str, &str, Value, StatusCode)> = vec![
        (
            "POST",
            "/api/provision/coordinator",
            without(&coordinator, "displayName"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/coordinator",
            without(&coordinator, "nearAccount"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/coordinator",
            with(&coordinator, "displayName", json!(42)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/coordinator",
            with(&coordinator, "displayName", long_name.clone()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/coordinator",
            with(&coordinator, "displayName", json!("")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/coordinator",
            // A right-to-left override disguising the name.
            with(
                &coordinator,
                "displayName",
                json!("My DAO\u{202E}rotanidrooC"),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/coordinator",
            with(&coordinator, "nearAccount", json!("Bad Account")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/coordinator",
            with(&coordinator, "minWorkers", json!(5)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/coordinator",
            with(&coordinator, "minWorkers", json!(0)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/coordinator",
            with(&coordinator, "maxWorkers", json!(256)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/coordinator",
            with(&coordinator, "maxWorkers", json!("ten")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/coordinator",
            with(&coordinator, "maxWorkers", json!(1.5)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/coordinator",
            with(&coordinator, "contractAddress", json!("-bad-")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/coordinator",
            json!([1, 2]),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/worker",
            without(&worker, "coordinatorDid"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/worker",
            with(&worker, "coordinatorDid", json!("did:web:example.com")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/worker",
            with(&worker, "coordinatorDid", json!("not a did")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/worker",
            with(&worker, "nearAccount", json!("a..b")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/worker",
            with(&worker, "displayName", long_name.clone()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/worker",
            with(&worker, "displayName", json!(null)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/external-worker",
            with(&external, "endpointUrl", json!("http://e.example")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/external-worker",
            with(&external, "endpointUrl", json!("not a url")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/external-worker",
            without(&external, "endpointUrl"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/external-worker",
            with(&external, "coordinatorDid", json!("did:key:zBAD")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/external-worker",
            with(&external, "nearAccount", json!("UPPER.testnet")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/external-worker",
            with(&external, "displayName", long_name.clone()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/register",
            json!({ "txHash": "x" }),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/register",
            json!({ "jobId": 7 }),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/register",
            json!({ "jobId": "not-a-uuid" }),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/api/provision/register",
            json!({ "jobId": "6f1c1b9e-3c1d-4e8e-9a53-0d5c8f6b2a10" }),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/api/provision/coordinator-register",
            json!({ "jobId": "6f1c1b9e-3c1d-4e8e-9a53-0d5c8f6b2a10" }),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/api/provision/coordinator-register",
            json!({ "jobId": "6f1c1b9e-3c1d-4e8e-9a53-0d5c8f6b2a10", "contractAddress": "Bad!" }),
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            &agent_endpoint,
            with(&endpoint, "endpoint", json!("http://new.example")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            &agent_endpoint,
            with(&endpoint, "type", json!("robot")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            &agent_endpoint,
            without(&endpoint, "endpoint"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/api/agents/not-a-did/endpoint",
            endpoint.clone(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/workers/register",
            with(&roster, "workerId", json!("did:web:x")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/workers/register",
            with(&roster, "accountId", json!("-x")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/workers/register",
            without(&roster, "workerId"),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, body, expected) in cases {
        let (code, response) = app.admin(method, path, Some(body.clone())).await;
        assert_eq!(code, expected, "{method} {path} {body} → {response}");
        assert!(
            response["error"]
                .as_str()
                .is_some_and(|text| !text.is_empty()),
            "{method} {path}: {response}"
        );
    }
}

#[tokio::test]
async fn malformed_json_wrong_content_type_and_oversized_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let routes = [
        ("POST", "/api/provision/coordinator"),
        ("POST", "/api/provision/worker"),
        ("POST", "/api/provision/external-worker"),
        ("POST", "/api/provision/register"),
        ("POST", "/api/provision/coordinator-register"),
        ("POST", "/api/workers/register"),
        ("PUT", "/api/agents/did:key:z6Mkabc/endpoint"),
    ];
    for (method, route) in routes {
        for (content_type, body, expected) in [
            (
                "application/json",
                Body::from("{not json"),
                StatusCode::BAD_REQUEST,
            ),
            (
                "application/json",
                Body::from(vec![0xff, 0xfe, 0x00]),
                StatusCode::BAD_REQUEST,
            ),
            ("application/json", Body::from(""), StatusCode::BAD_REQUEST),
            (
                "text/plain",
                Body::from("{}"),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                "application/json",
                Body::from(format!("{{\"displayName\":\"{}\"}}", "x".repeat(20_000))),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
        ] {
            let request = Request::builder()
                .method(method)
                .uri(route)
                .header("content-type", content_type)
                .header("authorization", format!("Bearer {}", common::ADMIN_TOKEN))
                .body(body)
                .unwrap();
            let (code, response) = app.send(request).await;
            assert_eq!(code, expected, "{route} {content_type}: {response}");
            assert!(response["error"].is_string(), "{route}: {response}");
        }
    }
    let (code, body) = app.call("GET", "/api/provision/status/nope", None).await;
    assert_eq!(
        (code, body["error"].is_string()),
        (StatusCode::NOT_FOUND, true)
    );
    let (code, body) = app.call("DELETE", "/api/provision/coordinator", None).await;
    assert_eq!(
        (code, body["error"].is_string()),
        (StatusCode::METHOD_NOT_ALLOWED, true)
    );
    let (code, body) = app.call("GET", "/no/such/route", None).await;
    assert_eq!(
        (code, body["error"].is_string()),
        (StatusCode::NOT_FOUND, true)
    );
    let (code, body) = app
        .call("GET", &format!("/api/agents/{DID}/endpoint"), None)
        .await;
    assert_eq!(
        (code, body["error"].is_string()),
        (StatusCode::NOT_FOUND, true)
    );
}

#[tokio::test]
async fn signing_routes_need_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let endpoint_path = format!("/api/agents/{DID}/endpoint");
    let remove_path = format!("/api/workers/{DID}");
    let routes: [(&str, &str, Option<Value>); 3] = [
        (
            "PUT",
            &endpoint_path,
            Some(json!({ "endpoint": "https://x.example" })),
        ),
        (
            "POST",
            "/api/workers/register",
            Some(json!({ "workerId": DID })),
        ),
        ("DELETE", &remove_path, None),
    ];
    for (method, path, body) in &routes {
        let (code, response) = app.call(method, path, body.clone()).await;
        assert_eq!(
            code,
            StatusCode::UNAUTHORIZED,
            "{method} {path}: {response}"
        );
        let (code, _) = app
            .call_with(method, path, body.clone(), Some("wrong"))
            .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{method} {path}");
        // Another scheme carrying the right token is still refused.
        let request = axum::http::Request::builder()
            .method(*method)
            .uri(*path)
            .header("authorization", format!("Basic {}", common::ADMIN_TOKEN))
            .body(axum::body::Body::empty())
            .unwrap();
        let (code, _) = app.send(request).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{method} {path} Basic");
    }
    // With the token the roster round-trips through the local registry; the
    // scheme name is case-insensitive.
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/api/workers/register")
        .header("authorization", format!("bearer {}", common::ADMIN_TOKEN))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            json!({ "workerId": DID, "accountId": "alice.testnet" }).to_string(),
        ))
        .unwrap();
    let (code, body) = app.send(request).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({ "message": format!("Worker {DID} registered"), "workerId": DID, "accountId": "alice.testnet" })
    );
    let (code, roster) = app.call("GET", "/api/workers/registered", None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(roster["activeCount"], 1);
    assert_eq!(roster["workers"][0]["worker_did"], DID);
    assert_eq!(roster["workers"][0]["account_id"], "alice.testnet");
    let registered_at = roster["workers"][0]["registered_at"].as_u64().unwrap();
    let now_ms = chrono::Utc::now().timestamp_millis() as u64;
    assert!(
        registered_at <= now_ms && registered_at > now_ms - 60_000,
        "milliseconds: {registered_at}"
    );
    let (code, body) = app.admin("DELETE", &remove_path, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "message": format!("Worker {DID} removed") }));

    // A server without a token refuses bearer tokens (wallet-signed requests
    // still work: see `wallet_auth`).
    let dir = tempfile::tempdir().unwrap();
    let closed = TestApp::start(
        dir.path(),
        TestDeployer::healthy(),
        Options {
            admin_token: None,
            ..Options::default()
        },
    )
    .await;
    for (method, path, body) in &routes {
        let (code, response) = closed.admin(method, path, body.clone()).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{method} {path}: {response}");
    }
}

#[tokio::test]
async fn provisioning_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(
        dir.path(),
        TestDeployer::healthy(),
        Options {
            rate_per_minute: 2,
            ..Options::default()
        },
    )
    .await;
    let body = json!({ "displayName": "E", "nearAccount": "e.testnet", "endpointUrl": "https://e.example", "coordinatorDid": DID });
    for _ in 0..2 {
        assert_eq!(
            app.call("POST", "/api/provision/external-worker", Some(body.clone()))
                .await
                .0,
            StatusCode::OK
        );
    }
    let (code, response) = app
        .call("POST", "/api/provision/external-worker", Some(body))
        .await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    assert!(response["error"].as_str().unwrap().contains("retry"));
}

/// A server behind one trusted proxy, allowing two provisioning requests
/// per client a minute.
async fn behind_one_proxy_with_a_budget_of_two(dir: &std::path::Path) -> TestApp {
    TestApp::start(
        dir,
        TestDeployer::healthy(),
        Options {
            rate_per_minute: 2,
            trusted_proxy_hops: 1,
            ..Options::default()
        },
    )
    .await
}

/// An external worker's provisioning request, as the proxy forwards it for
/// `forwarded_for`.
fn through_the_proxy(forwarded_for: &str) -> Request<Body> {
    let body = json!({ "displayName": "E", "nearAccount": "e.testnet", "endpointUrl": "https://e.example", "coordinatorDid": DID });
    Request::builder()
        .method("POST")
        .uri("/api/provision/external-worker")
        .header("content-type", "application/json")
        .header("x-forwarded-for", forwarded_for)
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Behind a proxy every request comes from the proxy's address: the limit
/// counts per address the proxy appended to `X-Forwarded-For`, and what the
/// client wrote before it does not buy a new budget.
#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_budget() {
    let dir = tempfile::tempdir().unwrap();
    let app = behind_one_proxy_with_a_budget_of_two(dir.path()).await;
    // Three clients through the proxy: none shares another's budget.
    for client in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        let (code, response) = app.send(through_the_proxy(client)).await;
        assert_eq!(code, StatusCode::OK, "{client}: {response}");
    }
    // One client, forging a different address before the proxy's entry.
    let (code, _) = app
        .send(through_the_proxy("198.51.100.9, 203.0.113.1"))
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, response) = app
        .send(through_the_proxy("198.51.100.10, 203.0.113.1"))
        .await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{response}");
}

/// An IPv6 client holds a whole /64 and can rotate addresses inside it: the
/// limit counts per /64, and an IPv4-mapped IPv6 address as the IPv4 address.
#[tokio::test]
async fn an_ipv6_client_has_one_budget_for_its_whole_64() {
    let dir = tempfile::tempdir().unwrap();
    let app = behind_one_proxy_with_a_budget_of_two(dir.path()).await;
    for (client, expected) in [
        ("2001:db8:1:2::1", StatusCode::OK),
        ("2001:db8:1:2:ffff:1:2:3", StatusCode::OK),
        ("2001:db8:1:2::9", StatusCode::TOO_MANY_REQUESTS),
        ("2001:db8:1:3::1", StatusCode::OK),
        ("::ffff:203.0.113.5", StatusCode::OK),
        ("[::ffff:203.0.113.5]:4711", StatusCode::OK),
        ("203.0.113.5", StatusCode::TOO_MANY_REQUESTS),
    ] {
        let (code, response) = app.send(through_the_proxy(client)).await;
        assert_eq!(code, expected, "{client}: {response}");
    }
}
