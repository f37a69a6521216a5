//! What keeps one caller from filling the server: per-organisation quotas on
//! keys and bytes (both dialects, and what the `delibera-ensue` client makes
//! of them), the registration rate limit, and `list_keys` pages capped at the
//! hosted service's 100.

use std::net::SocketAddr;
use std::time::Duration;

use delibera_backoff::Backoff;
use delibera_ensue::{Dialect, EnsueClient, EnsueConfig, Error, Memory, register_org};
use delibera_ensue_local::axum::body::{Body, to_bytes};
use delibera_ensue_local::axum::extract::ConnectInfo;
use delibera_ensue_local::axum::http::Request;
use delibera_ensue_local::{AppState, Config, Limits, LocalEnsue, RegistrationLimit, Store, app};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::{create, direct, tool};

const DIALECTS: [Dialect; 2] = [Dialect::Mcp, Dialect::Direct];

fn client(server: &LocalEnsue, api_key: &str, dialect: Dialect) -> EnsueClient {
    let config = EnsueConfig::new(api_key)
        .with_base_url(server.url())
        .unwrap()
        .with_dialect(dialect)
        .with_retry(Backoff::none());
    EnsueClient::new(config).unwrap()
}

/// A server whose organisations may hold 3 keys and 200 bytes.
fn small_quota() -> Config {
    Config::default().with_limits(Limits::default().with_org_quota(3, 200))
}

fn starts_with_quota_message(text: &Value) -> bool {
    text.as_str()
        .is_some_and(|text| text.starts_with("organization quota exceeded: "))
}

#[tokio::test]
async fn the_key_quota_refuses_creates_in_both_dialects_until_keys_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = LocalEnsue::start(small_quota().with_data_dir(dir.path()))
        .await
        .unwrap();
    let key = server.api_key().expose().to_owned();

    // A batch that overflows: the items that fit are created, the rest say why.
    let items: Vec<Value> = (0..4)
        .map(|i| json!({ "key_name": format!("k{i}"), "value": "v", "description": "d" }))
        .collect();
    let batch = tool(&server, &key, "create_memory", json!({ "items": items })).await;
    assert_eq!(batch["isError"], false, "{batch}");
    let results = &batch["structuredContent"]["results"];
    for i in 0..3 {
        assert_eq!(results[i]["status"], "success", "{batch}");
    }
    assert_eq!(results[3]["key_name"], "k3");
    assert_eq!(results[3]["status"], "quota_exceeded");
    assert!(
        results[3]["error"]
            .as_str()
            .unwrap()
            .contains("it already holds 3 keys"),
        "{batch}"
    );

    // The count is durable: a restart on the same file still sees 3 keys.
    server.stop().await.unwrap();
    let server = LocalEnsue::start(
        small_quota()
            .with_data_dir(dir.path())
            .with_bootstrap_key(delibera_ensue_local::ApiKey::new(key.clone()).unwrap()),
    )
    .await
    .unwrap();

    // A create where every item fails is a tool error too.
    let refused = create(&server, &key, "k9", "v").await;
    assert_eq!(refused["isError"], true, "{refused}");
    assert!(starts_with_quota_message(&refused["content"][0]["text"]));
    assert_eq!(
        refused["structuredContent"]["results"][0]["status"],
        "quota_exceeded"
    );
    let refused = direct(
        &server,
        &key,
        "create_memory",
        json!({ "key": "k9", "value": "v" }),
    )
    .await;
    assert_eq!(refused["isError"], true, "{refused}");
    assert!(starts_with_quota_message(&refused["content"][0]["text"]));
    // An existing key is still reported as existing, not as over quota.
    let exists = create(&server, &key, "k0", "v").await;
    assert_eq!(
        exists["structuredContent"]["results"][0]["status"],
        "already_exists"
    );

    // Our client names the error, in both dialects, and does not retry it.
    for dialect in DIALECTS {
        let error = client(&server, &key, dialect)
            .create("k9", "v")
            .await
            .unwrap_err();
        assert!(
            matches!(&error, Error::QuotaExceeded { key, .. } if key == "k9"),
            "{dialect}: {error:?}"
        );
        assert!(!error.is_retryable());
    }

    // Another organisation has its own quota.
    let other = server.store().register_org("team-b").await.unwrap();
    client(&server, other.expose(), Dialect::Mcp)
        .create("k9", "v")
        .await
        .unwrap();

    // Deleting makes room again.
    let memory = client(&server, &key, Dialect::Mcp);
    memory.delete("k0").await.unwrap();
    memory.create("k9", "v").await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_byte_quota_refuses_growing_writes_but_never_shrinking_ones() {
    let server = LocalEnsue::start(small_quota()).await.unwrap();
    let key = server.api_key().expose().to_owned();
    // "big" (3 bytes) + 150 bytes of value + "test" (4 bytes) = 157 of 200 bytes.
    create(&server, &key, "big", &"x".repeat(150)).await;

    let grown = tool(
        &server,
        &key,
        "update_memory",
        json!({ "key_name": "big", "value": "x".repeat(194) }),
    )
    .await;
    assert_eq!(grown["isError"], true, "{grown}");
    assert!(
        grown["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("would store 201 bytes, over the limit of 200 bytes"),
        "{grown}"
    );
    assert_eq!(
        grown["structuredContent"]["results"][0]["status"],
        "quota_exceeded"
    );
    let grown = direct(
        &server,
        &key,
        "update_memory",
        json!({ "key": "big", "value": "x".repeat(194) }),
    )
    .await;
    assert!(starts_with_quota_message(&grown["content"][0]["text"]));
    let second = create(&server, &key, "more", &"y".repeat(50)).await;
    assert_eq!(
        second["structuredContent"]["results"][0]["status"],
        "quota_exceeded"
    );

    // Exactly at the limit fits; shrinking always does.
    let fits = tool(
        &server,
        &key,
        "update_memory",
        json!({ "key_name": "big", "value": "x".repeat(193) }),
    )
    .await;
    assert_eq!(fits["isError"], false, "{fits}");

    for dialect in DIALECTS {
        let memory = client(&server, &key, dialect);
        let error = memory.upsert("big", &"x".repeat(500)).await.unwrap_err();
        assert!(error.is_quota_exceeded(), "{dialect}: {error:?}");
        memory.upsert("big", "small").await.unwrap();
        memory.upsert("big", &"x".repeat(193)).await.unwrap();
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn registrations_beyond_the_limit_get_429_with_retry_after() {
    let server =
        LocalEnsue::start(Config::default().with_registration_limit(RegistrationLimit::global(2)))
            .await
            .unwrap();
    // Malformed requests are refused before they are counted.
    for body in ["not json", "{\"nam\": \"team-1\"}"] {
        let response = reqwest::Client::new()
            .post(format!("{}auth/agent-register", server.url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    register_org(server.url(), "team-1").await.unwrap();
    register_org(server.url(), "team-2").await.unwrap();

    let response = reqwest::Client::new()
        .post(format!("{}auth/agent-register", server.url()))
        .json(&json!({ "name": "team-3" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "the error shape of every other refusal"
    );
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({ "error": format!("too many organization registrations; retry in {retry_after} s") })
    );

    // Our client reads it as a rate limit with the delay asked for.
    let error = register_org(server.url(), "team-3").await.unwrap_err();
    assert!(
        matches!(error, Error::RateLimited { retry_after: Some(delay) }
            if (Duration::from_secs(1)..=Duration::from_secs(60)).contains(&delay)),
        "{error:?}"
    );
    assert!(error.is_retryable());
    // Nothing was created by the refused calls.
    assert!(
        server.store().register_org("team-3").await.is_ok(),
        "a refused registration must not take the name"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn per_client_ip_budgets_are_separate() {
    let state = AppState::new(Store::in_memory().unwrap())
        .with_registration_limit(RegistrationLimit::per_client_ip(1))
        .with_public_url("http://ensue.test/");
    let router = app(state);
    let register = |client: SocketAddr, name: &str| {
        let mut request = Request::post("/auth/agent-register")
            .body(Body::from(json!({ "name": name }).to_string()))
            .unwrap();
        // What `into_make_service_with_connect_info` puts on each request.
        request.extensions_mut().insert(ConnectInfo(client));
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let body = to_bytes(response.into_body(), 4096).await.unwrap();
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    let a: SocketAddr = "10.0.0.1:50000".parse().unwrap();
    let a_again: SocketAddr = "10.0.0.1:50001".parse().unwrap();
    let b: SocketAddr = "10.0.0.2:50000".parse().unwrap();

    assert_eq!(register(a, "from-a").await.0, StatusCode::OK);
    let (status, body) = register(a_again, "from-a-2").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["error"].is_string());
    assert_eq!(register(b, "from-b").await.0, StatusCode::OK);
}

#[tokio::test]
async fn list_keys_answers_at_most_one_page_and_clients_get_every_key() {
    let server = LocalEnsue::start(Config::default()).await.unwrap();
    let key = server.api_key().expose().to_owned();
    for batch in 0..3 {
        let items: Vec<Value> = (0..80)
            .map(|i| json!({ "key_name": format!("p/{:03}", batch * 80 + i), "value": "v", "description": "d" }))
            .collect();
        tool(&server, &key, "create_memory", json!({ "items": items })).await;
    }

    // Asking for more than a page gets a page, and says more follow.
    for arguments in [json!({ "limit": 1000 }), json!({}), json!({ "limit": 100 })] {
        let page = tool(&server, &key, "list_keys", arguments.clone()).await;
        let page = &page["structuredContent"];
        assert_eq!(page["keys"].as_array().unwrap().len(), 100, "{arguments}");
        assert_eq!(
            (&page["count"], &page["limit"], &page["total"]),
            (&json!(100), &json!(100), &json!(240))
        );
        assert_eq!(
            (&page["has_more"], &page["next_offset"]),
            (&json!(true), &json!(100))
        );
    }
    let last = tool(
        &server,
        &key,
        "list_keys",
        json!({ "limit": 1000, "offset": 200 }),
    )
    .await;
    assert_eq!(last["structuredContent"]["count"], 40);
    assert_eq!(last["structuredContent"]["has_more"], false);
    let direct_page = direct(&server, &key, "list_keys", json!({ "prefix": "p/" })).await;
    assert_eq!(direct_page["structuredContent"]["count"], 100);

    let expected: Vec<String> = (0..240).map(|i| format!("p/{i:03}")).collect();
    for dialect in DIALECTS {
        let listed = client(&server, &key, dialect)
            .list_keys("p/")
            .await
            .unwrap();
        assert_eq!(listed, expected, "{dialect}");
    }
    server.stop().await.unwrap();
}
