//! `register_org` against wiremock: both answer shapes, name validation
//! before any request, and the error mapping.

use delibera_ensue::{Error, register_org};
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "lmn_00112233445566778899aabbccddeeff";

async fn server_answering(response: ResponseTemplate, calls: u64) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/auth/agent-register"))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({ "name": "delibera-coord-abc123" })))
        .respond_with(response)
        .expect(calls)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn reads_the_top_level_shape() {
    let server = server_answering(
        ResponseTemplate::new(200).set_body_json(json!({
            "api_key": KEY,
            "claim_url": "https://www.ensue-network.ai/claim?token=t1",
            "verification_code": "a1b2c3d4",
        })),
        1,
    )
    .await;
    let registration = register_org(&server.uri(), "delibera-coord-abc123")
        .await
        .unwrap();
    assert_eq!(registration.api_key.expose_secret(), KEY);
    assert_eq!(
        registration.claim_url,
        "https://www.ensue-network.ai/claim?token=t1"
    );
    assert_eq!(registration.verification_code, "a1b2c3d4");
    assert!(!format!("{registration:?}").contains(KEY));
}

#[tokio::test]
async fn reads_the_nested_agent_shape() {
    let server = server_answering(
        ResponseTemplate::new(201).set_body_json(json!({
            "agent": { "api_key": KEY, "claim_url": "https://c/claim?token=t2", "verification_code": "zz99" },
        })),
        1,
    )
    .await;
    // A base URL with a trailing slash joins the same way.
    let registration = register_org(&format!("{}/", server.uri()), "delibera-coord-abc123")
        .await
        .unwrap();
    assert_eq!(registration.api_key.expose_secret(), KEY);
    assert_eq!(registration.claim_url, "https://c/claim?token=t2");
    assert_eq!(registration.verification_code, "zz99");
}

#[tokio::test]
async fn invalid_names_are_rejected_before_any_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    for name in ["", "has space", &"x".repeat(65), "emoji🙂"] {
        let error = register_org(&server.uri(), name).await.unwrap_err();
        assert!(
            matches!(error, Error::InvalidOrgName { .. }),
            "{name}: {error:?}"
        );
    }
}

#[tokio::test]
async fn an_answer_without_a_key_is_malformed_and_quotes_nothing() {
    let server = server_answering(
        ResponseTemplate::new(200).set_body_json(json!({ "claim_url": "x", "secret": KEY })),
        1,
    )
    .await;
    let error = register_org(&server.uri(), "delibera-coord-abc123")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Malformed { .. }));
    assert!(!error.to_string().contains(KEY));
}

#[tokio::test]
async fn a_taken_name_is_named_so_a_caller_can_pick_another() {
    let server = server_answering(
        ResponseTemplate::new(409).set_body_string("{\"error\":\"name taken\"}"),
        1,
    )
    .await;
    let error = register_org(&server.uri(), "delibera-coord-abc123")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::OrgNameTaken { name } if name == "delibera-coord-abc123"),
        "{error}"
    );
}

#[tokio::test]
async fn rate_limits_and_server_errors_map_to_their_classes() {
    let server = server_answering(
        ResponseTemplate::new(429).insert_header("retry-after", "30"),
        1,
    )
    .await;
    let error = register_org(&server.uri(), "delibera-coord-abc123")
        .await
        .unwrap_err();
    assert_eq!(
        error.retry_after(),
        Some(std::time::Duration::from_secs(30))
    );

    let server = server_answering(ResponseTemplate::new(503), 1).await;
    let error = register_org(&server.uri(), "delibera-coord-abc123")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Server { status: 503, .. }));
}
