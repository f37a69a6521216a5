//! The LLM voter against a mock chat-completions endpoint.

use delibera_coordination::{
    Ballot, Error, LlmConfig, LlmVoter, TaskDefinition, TaskHandler, Vote,
};
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

fn task() -> TaskDefinition {
    TaskDefinition {
        proposal_id: "prop-1".into(),
        round_id: "round-1".into(),
        title: "Fund the indexer".into(),
        description: "12 months of hosting".into(),
        parameters: json!({"amount": 5000}),
        voting: Default::default(),
        deadline: chrono::Utc::now(),
    }
}

fn completion(content: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}]
    }))
}

fn voter(server: &MockServer) -> LlmVoter {
    LlmVoter::new(
        LlmConfig::new(format!("{}/v1", server.uri()), "test-model").with_api_key("sk-test"),
    )
    .unwrap()
}

/// Serves `response` once for any chat-completions call.
async fn serve_once(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(response)
        .expect(1)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn sends_the_exact_request_and_parses_the_vote() {
    let server = MockServer::start().await;
    let expected_body = json!({
        "model": "test-model",
        "temperature": 0,
        "response_format": {"type": "json_object"},
        "messages": [
            {"role": "system", "content": "You are a voting agent of a DAO. Read the proposal and decide whether to approve it. Answer with exactly one JSON object and nothing else: {\"vote\": \"Approved\" or \"Rejected\", \"reasoning\": \"one to three sentences\"}."},
            {"role": "user", "content": "{\"description\":\"12 months of hosting\",\"parameters\":{\"amount\":5000},\"proposalId\":\"prop-1\",\"title\":\"Fund the indexer\"}"}
        ]
    });
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", "Bearer sk-test"))
        .and(header("content-type", "application/json"))
        .and(body_json(expected_body))
        .respond_with(completion(
            r#"{"vote": "Approved", "reasoning": "Hosting is cheap and useful."}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;

    let ballot = voter(&server).handle(&task()).await.unwrap();
    assert_eq!(ballot, Ballot::approve("Hosting is cheap and useful."));
}

#[tokio::test]
async fn no_api_key_sends_no_authorization_header() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(|request: &Request| !request.headers.contains_key("authorization"))
        .respond_with(completion(r#"{"vote":"Rejected","reasoning":"No."}"#))
        .expect(1)
        .mount(&server)
        .await;
    let voter = LlmVoter::new(LlmConfig::new(format!("{}/v1/", server.uri()), "m")).unwrap();
    let ballot = voter.handle(&task()).await.unwrap();
    assert_eq!(ballot.vote, Vote::Rejected);
}

async fn error_for(response: ResponseTemplate) -> Error {
    let server = serve_once(response).await;
    voter(&server).handle(&task()).await.unwrap_err()
}

#[tokio::test]
async fn http_500_is_a_retryable_status_error() {
    let error = error_for(ResponseTemplate::new(500).set_body_string("overloaded")).await;
    assert!(
        matches!(&error, Error::LlmStatus { status: 500, body } if body == "overloaded"),
        "{error}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn http_401_is_a_permanent_status_error_without_the_key() {
    let error = error_for(ResponseTemplate::new(401).set_body_string("invalid api key")).await;
    assert!(
        matches!(error, Error::LlmStatus { status: 401, .. }),
        "{error}"
    );
    assert!(!error.is_retryable());
    assert!(!error.to_string().contains("sk-test"));
}

#[tokio::test]
async fn http_429_is_retryable() {
    let error = error_for(ResponseTemplate::new(429)).await;
    assert!(
        matches!(error, Error::LlmStatus { status: 429, .. }),
        "{error}"
    );
    assert!(error.is_retryable());
}

async fn malformed_reason(response: ResponseTemplate) -> String {
    match error_for(response).await {
        Error::LlmMalformed { reason, .. } => reason,
        other => panic!("expected LlmMalformed, got {other}"),
    }
}

#[tokio::test]
async fn prose_instead_of_json_is_malformed() {
    let reason = malformed_reason(completion("I think we should approve it.")).await;
    assert!(
        reason.starts_with("answer is not the JSON vote"),
        "{reason}"
    );
}

#[tokio::test]
async fn an_unknown_vote_is_malformed() {
    let reason = malformed_reason(completion(r#"{"vote":"Abstain","reasoning":"unsure"}"#)).await;
    assert_eq!(reason, "vote must be \"Approved\" or \"Rejected\"");
}

#[tokio::test]
async fn missing_reasoning_is_malformed() {
    let reason = malformed_reason(completion(r#"{"vote":"Approved"}"#)).await;
    assert!(reason.contains("missing field `reasoning`"), "{reason}");
    let reason = malformed_reason(completion(r#"{"vote":"Approved","reasoning":"  "}"#)).await;
    assert_eq!(reason, "empty reasoning");
}

#[tokio::test]
async fn a_body_that_is_not_a_completion_is_malformed() {
    let reason =
        malformed_reason(ResponseTemplate::new(200).set_body_string("<html>gateway</html>")).await;
    assert!(reason.starts_with("not a chat completion"), "{reason}");
    let reason =
        malformed_reason(ResponseTemplate::new(200).set_body_json(json!({"choices": []}))).await;
    assert_eq!(reason, "no message content in the first choice");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_transport_error() {
    // Nothing listens on a port we just released.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let voter = LlmVoter::new(LlmConfig::new(format!("http://{address}/v1"), "m")).unwrap();
    let error = voter.handle(&task()).await.unwrap_err();
    assert!(matches!(error, Error::LlmTransport(_)), "{error}");
    assert!(error.is_retryable());
}
