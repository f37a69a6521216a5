//! Bearer auth, organisation self-registration and isolation between organisations.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{create, get, http, post_raw, start, stop, tool};

const PING: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

async fn register(url: &str, body: &str) -> (StatusCode, Value) {
    let response = http()
        .post(format!("{url}auth/agent-register"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn requests_without_a_valid_bearer_key_get_401() {
    let server = start().await;
    let valid = server.api_key().expose().to_owned();

    let missing = post_raw(server.url(), None, None, PING.to_vec()).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.message(),
        json!({ "error": "missing `Authorization: Bearer <api key>` header" })
    );

    let unknown = post_raw(server.url(), Some("lmn_0000"), None, PING.to_vec()).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.message(), json!({ "error": "invalid API key" }));
    assert!(!unknown.body.contains("lmn_0000"));

    let basic = http()
        .post(server.url())
        .header("authorization", format!("Basic {valid}"))
        .body(PING.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(basic.headers()["www-authenticate"], "Bearer");

    // Auth comes before parsing: garbage from a stranger is still a 401.
    let garbage = post_raw(server.url(), None, None, b"\xff".to_vec()).await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);

    let ok = post_raw(server.url(), Some(&valid), None, PING.to_vec()).await;
    assert_eq!(ok.status, StatusCode::OK);
    stop(server).await;
}

#[tokio::test]
async fn agent_register_returns_a_key_that_works_at_once() {
    let server = start().await;
    let (status, body) = register(server.url(), r#"{"name":"delibera-coord-abc123"}"#).await;
    assert_eq!(status, StatusCode::OK);

    let api_key = body["api_key"].as_str().unwrap();
    assert!(api_key.starts_with("lmn_"));
    let claim_url = body["claim_url"].as_str().unwrap();
    assert!(
        claim_url.starts_with(&format!("{}claim?token=", server.url())),
        "{claim_url}"
    );
    let code = body["verification_code"].as_str().unwrap();
    assert_eq!(code.len(), 8);
    // Both shapes clients of the hosted service read.
    assert_eq!(body["agent"]["api_key"], api_key);
    assert_eq!(body["agent"]["claim_url"], claim_url);
    assert_eq!(body["agent"]["verification_code"], code);
    assert_eq!(body["agent"]["name"], "delibera-coord-abc123");

    let created = create(&server, api_key, "agent/x/display_name", "X").await;
    assert_eq!(created["isError"], false);

    let claim = http().get(claim_url).send().await.unwrap();
    assert_eq!(claim.status(), StatusCode::OK);
    assert_eq!(claim.json::<Value>().await.unwrap()["status"], "active");
    stop(server).await;
}

#[tokio::test]
async fn agent_register_rejects_bad_and_duplicate_names() {
    let server = start().await;
    let (status, _) = register(server.url(), r#"{"name":"team_1"}"#).await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = register(server.url(), r#"{"name":"team_1"}"#).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body["error"],
        "an organization named \"team_1\" already exists"
    );

    let long = format!(r#"{{"name":"{}"}}"#, "a".repeat(65));
    for bad in [r#"{"name":"has space"}"#, r#"{"name":""}"#, long.as_str()] {
        let (status, body) = register(server.url(), bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("invalid organization name")
        );
    }
    for malformed in ["", "{", r#"{"nom":"x"}"#, r#"{"name":7}"#] {
        let (status, body) = register(server.url(), malformed).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{malformed}");
        assert!(body["error"].is_string());
    }
    stop(server).await;
}

#[tokio::test]
async fn each_org_sees_only_its_own_keys() {
    let server = start().await;
    let org_a = server.api_key().expose().to_owned();
    let (_, body) = register(server.url(), r#"{"name":"org-b"}"#).await;
    let org_b = body["api_key"].as_str().unwrap().to_owned();

    create(&server, &org_a, "shared/name", "from A").await;
    create(&server, &org_a, "shared/only-a", "A").await;

    // B neither reads nor lists A's keys...
    assert_eq!(get(&server, &org_b, "shared/name").await, None);
    let listed = tool(&server, &org_b, "list_keys", json!({ "prefix": "shared/" })).await;
    assert_eq!(listed["structuredContent"]["keys"], json!([]));
    assert_eq!(listed["structuredContent"]["total"], 0);
    // ...nor updates or deletes them...
    let update = tool(
        &server,
        &org_b,
        "update_memory",
        json!({ "key_name": "shared/name", "value": "from B" }),
    )
    .await;
    assert_eq!(update["isError"], true);
    let delete = tool(
        &server,
        &org_b,
        "delete_memory",
        json!({ "key_names": ["shared/only-a"] }),
    )
    .await;
    assert_eq!(delete["isError"], true);
    // ...and the same key name is a different memory in B.
    let created = create(&server, &org_b, "shared/name", "from B").await;
    assert_eq!(created["isError"], false);

    assert_eq!(
        get(&server, &org_a, "shared/name").await.as_deref(),
        Some("from A")
    );
    assert_eq!(
        get(&server, &org_a, "shared/only-a").await.as_deref(),
        Some("A")
    );
    assert_eq!(
        get(&server, &org_b, "shared/name").await.as_deref(),
        Some("from B")
    );
    stop(server).await;
}

#[tokio::test]
async fn healthz_needs_no_key() {
    let server = start().await;
    let response = http()
        .get(format!("{}healthz", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    stop(server).await;
}
