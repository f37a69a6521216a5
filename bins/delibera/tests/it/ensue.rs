//! `delibera ensue …` end to end, through the built binary.

use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{Finish, delibera};

/// Vector `simple-object` of the reference's ensue-crypto vectors.
const PRIVATE_KEY: &str =
    "MgCYBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAe0Biojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=";
const SEALED: &str = "aes256gcm:AAAAAAAAAAAAAAAAzAxIEzUf9c9oAwsOM2Ju5QsEvrt3HIJkNkn3Z4sAgOoP";
const PLAINTEXT: &str = "{\"hello\":\"world\"}";
/// Another ucanto key (the `coordinator` key of the UCAN vectors).
const OTHER_KEY: &str =
    "MgCYCAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAu0BgTl3Dqh9F19Wo1Rmw0x+zMuNipG07jeiXfYPW4/Js5Q=";
const API_KEY: &str = "lmn_feedface";

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn unseal_reads_the_reference_ciphertext() {
    let output = delibera()
        .args(["ensue", "unseal", "--key", PRIVATE_KEY])
        .write_stdin(format!("{SEALED}\n"))
        .finish();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), format!("{PLAINTEXT}\n"));
}

#[test]
fn seal_then_unseal_round_trips_with_a_fresh_iv_each_time() {
    let value = r#"{"vote":"approved","reasoning":"ünïcode ✓","n":[1,2.5,null]}"#;
    let seal = || {
        let output = delibera()
            .args(["ensue", "seal"])
            .env("STORACHA_AGENT_PRIVATE_KEY", PRIVATE_KEY)
            .write_stdin(value)
            .finish();
        assert!(output.status.success(), "{output:?}");
        stdout(&output).trim().to_owned()
    };
    let (first, second) = (seal(), seal());
    assert!(first.starts_with("aes256gcm:"));
    assert_ne!(first, second);
    for sealed in [first, second] {
        let output = delibera()
            .args(["ensue", "unseal", "--key", PRIVATE_KEY])
            .write_stdin(sealed)
            .finish();
        assert_eq!(stdout(&output).trim(), value);
    }
}

#[test]
fn seal_refuses_text_that_is_not_json() {
    let output = delibera()
        .args(["ensue", "seal", "--key", PRIVATE_KEY])
        .write_stdin("not json")
        .finish();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a JSON value"));
}

#[test]
fn unseal_with_the_wrong_key_fails_without_echoing_secrets() {
    let output = delibera()
        .args(["ensue", "unseal", "--key", OTHER_KEY])
        .write_stdin(SEALED)
        .finish();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("wrong key or tampered"), "{stderr}");
    assert!(!stderr.contains(&OTHER_KEY[..20]));
    assert!(output.stdout.is_empty());
}

fn sse(id: u64, structured: Value) -> ResponseTemplate {
    let message = json!({
        "jsonrpc": "2.0", "id": id,
        "result": { "structuredContent": structured, "content": [{ "type": "text", "text": structured.to_string() }] },
    });
    ResponseTemplate::new(200).set_body_raw(format!("data: {message}\n\n"), "text/event-stream")
}

fn call(id: u64, tool: &str, arguments: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": tool, "arguments": arguments } })
}

async fn mock(server: &MockServer, body: Value, response: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(header(
            "authorization",
            format!("Bearer {API_KEY}").as_str(),
        ))
        .and(body_json(body))
        .respond_with(response)
        .expect(1)
        .mount(server)
        .await;
}

fn run_against(server: &MockServer, args: &[&str], stdin: &str) -> std::process::Output {
    delibera()
        .arg("ensue")
        .args(args)
        .env("ENSUE_URL", server.uri())
        .env("ENSUE_API_KEY", API_KEY)
        .write_stdin(stdin)
        .finish()
}

#[tokio::test(flavor = "multi_thread")]
async fn get_prints_the_value_and_exits_1_when_missing() {
    let server = MockServer::start().await;
    mock(
        &server,
        call(1, "get_memory", json!({ "key_names": ["a/status"] })),
        sse(1, json!({ "results": [{ "key_name": "a/status", "value": "idle", "status": "success" }] })),
    )
    .await;
    let output = run_against(&server, &["get", "a/status"], "");
    assert!(output.status.success(), "{output:?}");
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, json!({ "key": "a/status", "value": "idle" }));

    let server = MockServer::start().await;
    mock(
        &server,
        call(1, "get_memory", json!({ "key_names": ["nope"] })),
        sse(1, json!({ "results": [] })),
    )
    .await;
    let output = run_against(&server, &["get", "nope"], "");
    assert_eq!(output.status.code(), Some(1));
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, json!({ "key": "nope", "value": null }));
}

#[tokio::test(flavor = "multi_thread")]
async fn put_reads_stdin_and_upserts() {
    let server = MockServer::start().await;
    mock(
        &server,
        call(
            1,
            "update_memory",
            json!({ "key_name": "k", "value": "{\"a\":1}" }),
        ),
        sse(
            1,
            json!({ "results": [{ "key_name": "k", "status": "success" }] }),
        ),
    )
    .await;
    let output = run_against(&server, &["put", "k", "-"], "{\"a\":1}\n");
    assert!(output.status.success(), "{output:?}");
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, json!({ "key": "k", "written": true }));
}

#[tokio::test(flavor = "multi_thread")]
async fn list_and_delete_in_the_direct_dialect() {
    let server = MockServer::start().await;
    mock(
        &server,
        json!({ "jsonrpc": "2.0", "id": 1, "method": "list_keys", "params": { "prefix": "p/" } }),
        sse(1, json!({ "keys": ["p/b", "p/a"] })),
    )
    .await;
    let output = run_against(&server, &["list", "p/", "--dialect", "direct"], "");
    assert!(output.status.success(), "{output:?}");
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, json!({ "keys": ["p/a", "p/b"] }));

    let server = MockServer::start().await;
    mock(
        &server,
        json!({ "jsonrpc": "2.0", "id": 1, "method": "delete_memory", "params": { "key": "p/a" } }),
        sse(1, json!({ "results": [{ "key": "p/a" }] })),
    )
    .await;
    let output = run_against(&server, &["delete", "p/a", "--dialect", "direct"], "");
    assert!(output.status.success(), "{output:?}");
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, json!({ "key": "p/a", "deleted": true }));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthorized_key_is_a_one_line_error_without_the_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_string("unclaimed"))
        .expect(1)
        .mount(&server)
        .await;
    let output = run_against(&server, &["get", "k"], "");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unauthorized (HTTP 401)"), "{stderr}");
    assert!(!stderr.contains(API_KEY));
    assert_eq!(stderr.lines().count(), 1);
}
