//! `EnsueClient` against wiremock: exact request bodies in both dialects,
//! every error class, retries, SSE framings, batching, paging, LIKE escaping.

use std::time::Duration;

use delibera_backoff::Backoff;
use delibera_ensue::{Dialect, EnsueClient, EnsueConfig, Error, Memory};
use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, headers, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const API_KEY: &str = "lmn_0123456789abcdef";

fn fast_retry() -> Backoff {
    Backoff::new(Duration::from_millis(1), Duration::from_millis(20)).with_max_attempts(3)
}

fn client(server: &MockServer, dialect: Dialect) -> EnsueClient {
    let config = EnsueConfig::new(API_KEY)
        .with_base_url(&format!("{}/", server.uri()))
        .unwrap()
        .with_dialect(dialect)
        .with_retry(fast_retry());
    EnsueClient::new(config).unwrap()
}

/// A tool result as the hosted service sends it: structured, and the same as text.
fn tool_result(structured: Value) -> Value {
    json!({
        "structuredContent": structured,
        "content": [{ "type": "text", "text": structured.to_string() }],
    })
}

fn rpc(id: u64, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// One SSE event carrying `message`, as the hosted service answers.
fn sse(message: &Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(format!("data: {message}\n\n"), "text/event-stream")
}

fn ok(id: u64, structured: Value) -> ResponseTemplate {
    sse(&rpc(id, tool_result(structured)))
}

fn mcp_call(id: u64, tool: &str, arguments: Value) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": { "name": tool, "arguments": arguments },
    })
}

fn direct_call(id: u64, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

/// A mock of `POST /` with the headers every call must carry and this exact body.
fn expect_call(body: Value) -> wiremock::MockBuilder {
    Mock::given(method("POST"))
        .and(path("/"))
        .and(header(
            "authorization",
            format!("Bearer {API_KEY}").as_str(),
        ))
        // wiremock splits header values at commas.
        .and(headers(
            "accept",
            vec!["application/json", "text/event-stream"],
        ))
        .and(header("content-type", "application/json"))
        .and(body_json(body))
}

fn tool_error(id: u64, text: &str) -> ResponseTemplate {
    sse(&rpc(
        id,
        json!({ "isError": true, "content": [{ "type": "text", "text": text }] }),
    ))
}

fn rpc_error(id: u64, code: i64, message: &str) -> ResponseTemplate {
    sse(&json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }))
}

// ---------------------------------------------------------------- MCP dialect

#[tokio::test]
async fn mcp_create_sends_one_item_with_a_description() {
    let server = MockServer::start().await;
    expect_call(mcp_call(
        1,
        "create_memory",
        json!({ "items": [{ "key_name": "a/b", "value": "idle", "description": "Memory at a/b" }] }),
    ))
    .respond_with(ok(1, json!({ "results": [{ "key_name": "a/b", "status": "success" }] })))
    .expect(1)
    .mount(&server)
    .await;
    client(&server, Dialect::Mcp)
        .create("a/b", "idle")
        .await
        .unwrap();
}

#[tokio::test]
async fn mcp_update_sends_key_name_and_value() {
    let server = MockServer::start().await;
    expect_call(mcp_call(
        1,
        "update_memory",
        json!({ "key_name": "a/b", "value": "done" }),
    ))
    .respond_with(ok(
        1,
        json!({ "results": [{ "key_name": "a/b", "status": "success" }] }),
    ))
    .expect(1)
    .mount(&server)
    .await;
    client(&server, Dialect::Mcp)
        .update("a/b", "done")
        .await
        .unwrap();
}

#[tokio::test]
async fn mcp_get_reads_results_value() {
    let server = MockServer::start().await;
    expect_call(mcp_call(1, "get_memory", json!({ "key_names": ["a/b"] })))
        .respond_with(ok(
            1,
            json!({ "results": [{ "key_name": "a/b", "value": "completed", "status": "success" }] }),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let value = client(&server, Dialect::Mcp).get("a/b").await.unwrap();
    assert_eq!(value.as_deref(), Some("completed"));
}

#[tokio::test]
async fn mcp_get_many_batches_by_100_and_skips_missing_keys() {
    let server = MockServer::start().await;
    let keys: Vec<String> = (0..250).map(|i| format!("k/{i:03}")).collect();
    for (index, chunk) in keys.chunks(100).enumerate() {
        let id = index as u64 + 1;
        // Every key is there except the first of each chunk.
        let results: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(position, key)| {
                if position == 0 {
                    json!({ "key_name": key, "status": "not_found" })
                } else {
                    json!({ "key_name": key, "value": format!("v{key}"), "status": "success" })
                }
            })
            .collect();
        expect_call(mcp_call(id, "get_memory", json!({ "key_names": chunk })))
            .respond_with(ok(id, json!({ "results": results })))
            .expect(1)
            .mount(&server)
            .await;
    }
    let found = client(&server, Dialect::Mcp).get_many(&keys).await.unwrap();
    assert_eq!(found.len(), 250 - 3);
    assert_eq!(found.get("k/001").map(String::as_str), Some("vk/001"));
    assert!(
        !found.contains_key("k/000")
            && !found.contains_key("k/100")
            && !found.contains_key("k/200")
    );
}

#[tokio::test]
async fn mcp_list_keys_pages_through_offsets_and_escapes_like_wildcards() {
    let server = MockServer::start().await;
    let prefix = "tasks/a_b%c\\/";
    let escaped = "tasks/a\\_b\\%c\\\\/";
    // Page one: 100 plain strings, in reverse order. Page two: 30 objects.
    let first: Vec<Value> = (0..100)
        .rev()
        .map(|i| json!(format!("{prefix}{i:03}")))
        .collect();
    let second: Vec<Value> = (100..130)
        .map(|i| json!({ "key_name": format!("{prefix}{i:03}"), "size": 1 }))
        .collect();
    expect_call(mcp_call(
        1,
        "list_keys",
        json!({ "prefix": escaped, "limit": 100, "offset": 0 }),
    ))
    .respond_with(ok(1, json!({ "keys": first, "count": 100 })))
    .expect(1)
    .mount(&server)
    .await;
    expect_call(mcp_call(
        2,
        "list_keys",
        json!({ "prefix": escaped, "limit": 100, "offset": 100 }),
    ))
    .respond_with(ok(2, json!({ "keys": second })))
    .expect(1)
    .mount(&server)
    .await;
    let keys = client(&server, Dialect::Mcp)
        .list_keys(prefix)
        .await
        .unwrap();
    let expected: Vec<String> = (0..130).map(|i| format!("{prefix}{i:03}")).collect();
    assert_eq!(keys, expected);
}

#[tokio::test]
async fn mcp_list_keys_drops_like_false_positives_and_stops_on_a_repeated_page() {
    let server = MockServer::start().await;
    // A server that ignores both the escape and the offset.
    let page: Vec<Value> = (0..100)
        .map(|i| {
            json!(if i % 2 == 0 {
                format!("a_b/{i:03}")
            } else {
                format!("aXb/{i:03}")
            })
        })
        .collect();
    Mock::given(method("POST"))
        .respond_with(sse(&rpc(1, tool_result(json!({ "keys": page.clone() })))))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(sse(&rpc(2, tool_result(json!({ "keys": page })))))
        .expect(1)
        .mount(&server)
        .await;
    let keys = client(&server, Dialect::Mcp)
        .list_keys("a_b/")
        .await
        .unwrap();
    assert_eq!(keys.len(), 50);
    assert!(keys.iter().all(|key| key.starts_with("a_b/")));
}

#[tokio::test]
async fn mcp_delete_and_delete_many_batch_by_100() {
    let server = MockServer::start().await;
    expect_call(mcp_call(
        1,
        "delete_memory",
        json!({ "key_names": ["a/b"] }),
    ))
    .respond_with(ok(
        1,
        json!({ "results": [{ "key_name": "a/b", "status": "success" }] }),
    ))
    .expect(1)
    .mount(&server)
    .await;
    let keys: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    expect_call(mcp_call(
        2,
        "delete_memory",
        json!({ "key_names": keys[..100] }),
    ))
    .respond_with(ok(2, json!({ "results": [] })))
    .expect(1)
    .mount(&server)
    .await;
    expect_call(mcp_call(
        3,
        "delete_memory",
        json!({ "key_names": ["k100"] }),
    ))
    // A missing key is not an error.
    .respond_with(ok(
        3,
        json!({ "results": [{ "key_name": "k100", "status": "not_found" }] }),
    ))
    .expect(1)
    .mount(&server)
    .await;
    let client = client(&server, Dialect::Mcp);
    client.delete("a/b").await.unwrap();
    client.delete_many(&keys).await.unwrap();
}

// ------------------------------------------------------------- direct dialect

#[tokio::test]
async fn direct_create_and_update_send_key_and_value() {
    let server = MockServer::start().await;
    expect_call(direct_call(
        1,
        "create_memory",
        json!({ "key": "a/b", "value": "idle" }),
    ))
    .respond_with(ok(
        1,
        json!({ "results": [{ "key": "a/b", "value": "idle" }] }),
    ))
    .expect(1)
    .mount(&server)
    .await;
    expect_call(direct_call(
        2,
        "update_memory",
        json!({ "key": "a/b", "value": "done" }),
    ))
    .respond_with(ok(
        2,
        json!({ "results": [{ "key": "a/b", "value": "done" }] }),
    ))
    .expect(1)
    .mount(&server)
    .await;
    let client = client(&server, Dialect::Direct);
    client.create("a/b", "idle").await.unwrap();
    client.update("a/b", "done").await.unwrap();
}

#[tokio::test]
async fn direct_get_reads_results_zero_value() {
    let server = MockServer::start().await;
    expect_call(direct_call(1, "get_memory", json!({ "key": "a/b" })))
        // The direct dialect's answer: no key_name, no status.
        .respond_with(ok(1, json!({ "results": [{ "value": "completed" }] })))
        .expect(1)
        .mount(&server)
        .await;
    let value = client(&server, Dialect::Direct).get("a/b").await.unwrap();
    assert_eq!(value.as_deref(), Some("completed"));
}

#[tokio::test]
async fn direct_get_many_asks_key_by_key() {
    let server = MockServer::start().await;
    for (id, key) in [(1, "x"), (2, "y")] {
        expect_call(direct_call(id, "get_memory", json!({ "key": key })))
            .respond_with(ok(
                id,
                json!({ "results": [{ "key": key, "value": key.to_uppercase() }] }),
            ))
            .expect(1)
            .mount(&server)
            .await;
    }
    let found = client(&server, Dialect::Direct)
        .get_many(&["x".to_owned(), "y".to_owned()])
        .await
        .unwrap();
    assert_eq!(found.get("x").map(String::as_str), Some("X"));
    assert_eq!(found.get("y").map(String::as_str), Some("Y"));
}

#[tokio::test]
async fn direct_list_keys_sends_the_raw_prefix() {
    let server = MockServer::start().await;
    expect_call(direct_call(
        1,
        "list_keys",
        json!({ "prefix": "coordination/tasks/" }),
    ))
    .respond_with(ok(
        1,
        json!({ "keys": ["coordination/tasks/w2/status", "coordination/tasks/w1/status"] }),
    ))
    .expect(1)
    .mount(&server)
    .await;
    let keys = client(&server, Dialect::Direct)
        .list_keys("coordination/tasks/")
        .await
        .unwrap();
    assert_eq!(
        keys,
        [
            "coordination/tasks/w1/status",
            "coordination/tasks/w2/status"
        ]
    );
}

#[tokio::test]
async fn direct_delete_sends_the_key() {
    let server = MockServer::start().await;
    expect_call(direct_call(1, "delete_memory", json!({ "key": "a/b" })))
        .respond_with(ok(1, json!({ "results": [{ "key": "a/b" }] })))
        .expect(1)
        .mount(&server)
        .await;
    client(&server, Dialect::Direct)
        .delete("a/b")
        .await
        .unwrap();
}

#[tokio::test]
async fn direct_upsert_falls_back_to_create() {
    let server = MockServer::start().await;
    expect_call(direct_call(
        1,
        "update_memory",
        json!({ "key": "k", "value": "v" }),
    ))
    .respond_with(tool_error(1, "Key 'k' not found"))
    .expect(1)
    .mount(&server)
    .await;
    expect_call(direct_call(
        2,
        "create_memory",
        json!({ "key": "k", "value": "v" }),
    ))
    .respond_with(ok(2, json!({ "results": [{ "key": "k", "value": "v" }] })))
    .expect(1)
    .mount(&server)
    .await;
    client(&server, Dialect::Direct)
        .upsert("k", "v")
        .await
        .unwrap();
}

#[tokio::test]
async fn upsert_creates_a_key_whose_update_was_answered_404() {
    let server = MockServer::start().await;
    expect_call(Call::Update.request())
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    expect_call(mcp_call(
        2,
        "create_memory",
        json!({ "items": [{ "key_name": "k", "value": "v", "description": "Memory at k" }] }),
    ))
    .respond_with(ok(
        2,
        json!({ "results": [{ "key_name": "k", "status": "success" }] }),
    ))
    .expect(1)
    .mount(&server)
    .await;
    client(&server, Dialect::Mcp)
        .upsert("k", "v")
        .await
        .unwrap();
}

// ----------------------------------------------------- not found / exists

/// A call of the client, as a table case names it.
#[derive(Clone, Copy, Debug)]
enum Call {
    Get,
    Create,
    Update,
    Delete,
}

impl Call {
    /// The exact MCP request this call makes for key `k` (value `v`).
    fn request(self) -> Value {
        match self {
            Call::Get => mcp_call(1, "get_memory", json!({ "key_names": ["k"] })),
            Call::Create => mcp_call(
                1,
                "create_memory",
                json!({ "items": [{ "key_name": "k", "value": "v", "description": "Memory at k" }] }),
            ),
            Call::Update => mcp_call(1, "update_memory", json!({ "key_name": "k", "value": "v" })),
            Call::Delete => mcp_call(1, "delete_memory", json!({ "key_names": ["k"] })),
        }
    }

    /// Makes the call on key `k`: a read's value, `None` for the others.
    async fn run(self, client: &EnsueClient) -> Result<Option<String>, Error> {
        match self {
            Call::Get => client.get("k").await,
            Call::Create => client.create("k", "v").await.map(|()| None),
            Call::Update => client.update("k", "v").await.map(|()| None),
            Call::Delete => client.delete("k").await.map(|()| None),
        }
    }
}

/// Each way the service says a key is missing or already there, per call.
#[tokio::test]
async fn missing_and_existing_keys_are_understood_in_every_form() {
    let missing = |outcome: &Result<Option<String>, Error>| matches!(outcome, Ok(None));
    let not_found = |outcome: &Result<Option<String>, Error>| matches!(outcome, Err(Error::NotFound { key }) if key == "k");
    let exists = |outcome: &Result<Option<String>, Error>| matches!(outcome, Err(Error::AlreadyExists { key }) if key == "k");
    type Expected = fn(&Result<Option<String>, Error>) -> bool;
    let cases: [(&str, Call, ResponseTemplate, Expected); 14] = [
        (
            "get: item status not_found",
            Call::Get,
            ok(
                1,
                json!({ "results": [{ "key_name": "k", "status": "not_found" }] }),
            ),
            missing,
        ),
        (
            "get: item error `Key not found`",
            Call::Get,
            ok(
                1,
                json!({ "results": [{ "key_name": "k", "status": "error", "error": "Key not found" }] }),
            ),
            missing,
        ),
        (
            "get: no results",
            Call::Get,
            ok(1, json!({ "results": [] })),
            missing,
        ),
        (
            "get: tool error `not found`",
            Call::Get,
            tool_error(1, "Memory 'k' not found"),
            missing,
        ),
        (
            "get: JSON-RPC error `does not exist`",
            Call::Get,
            rpc_error(1, -32602, "key does not exist"),
            missing,
        ),
        (
            "update: tool error `does not exist`",
            Call::Update,
            tool_error(1, "Key 'k' does not exist"),
            not_found,
        ),
        (
            "update: JSON-RPC error `not found`",
            Call::Update,
            rpc_error(1, -32602, "Memory not found: k"),
            not_found,
        ),
        (
            "update: item status not_found",
            Call::Update,
            ok(
                1,
                json!({ "results": [{ "key_name": "k", "status": "not_found" }] }),
            ),
            not_found,
        ),
        (
            "create: item error `already exists`",
            Call::Create,
            ok(
                1,
                json!({ "results": [{ "key_name": "k", "status": "error", "error": "Key already exists" }] }),
            ),
            exists,
        ),
        (
            "create: item status already_exists",
            Call::Create,
            ok(
                1,
                json!({ "results": [{ "key_name": "k", "status": "already_exists" }] }),
            ),
            exists,
        ),
        (
            "create: tool error UNIQUE constraint",
            Call::Create,
            tool_error(1, "UNIQUE constraint failed: memories.key_name"),
            exists,
        ),
        (
            "create: JSON-RPC error `already exists`",
            Call::Create,
            rpc_error(1, -32000, "memory k already exists"),
            exists,
        ),
        (
            "delete: tool error `not found`",
            Call::Delete,
            tool_error(1, "key not found"),
            missing,
        ),
        (
            "delete: JSON-RPC error `No such key`",
            Call::Delete,
            rpc_error(1, -32000, "No such key"),
            missing,
        ),
    ];
    for (name, call, answer, expected) in cases {
        let server = MockServer::start().await;
        expect_call(call.request())
            .respond_with(answer)
            .expect(1)
            .named(name)
            .mount(&server)
            .await;
        let outcome = call.run(&client(&server, Dialect::Mcp)).await;
        assert!(expected(&outcome), "{name}: got {outcome:?}");
    }
}

#[tokio::test]
async fn upsert_that_loses_the_create_race_updates_again() {
    let server = MockServer::start().await;
    let update = mcp_call(1, "update_memory", json!({ "key_name": "k", "value": "v" }));
    expect_call(update)
        .respond_with(tool_error(1, "not found"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_json(mcp_call(
            2,
            "create_memory",
            json!({ "items": [{ "key_name": "k", "value": "v", "description": "Memory at k" }] }),
        )))
        .respond_with(tool_error(2, "already exists"))
        .expect(1)
        .mount(&server)
        .await;
    expect_call(mcp_call(
        3,
        "update_memory",
        json!({ "key_name": "k", "value": "v" }),
    ))
    .respond_with(ok(
        3,
        json!({ "results": [{ "key_name": "k", "status": "success" }] }),
    ))
    .expect(1)
    .mount(&server)
    .await;
    client(&server, Dialect::Mcp)
        .upsert("k", "v")
        .await
        .unwrap();
}

// ----------------------------------------------------------- error classes

/// Every class of error answer, what the client makes of it, and how many
/// times it asks (retries included) before giving up.
#[tokio::test]
async fn every_error_answer_is_classified() {
    struct Case {
        name: &'static str,
        call: Call,
        answer: ResponseTemplate,
        calls: u64,
        expected: fn(&Error) -> bool,
    }
    let malformed = |error: &Error| {
        matches!(error, Error::Malformed { body, .. } if !body.is_empty()) && !error.is_retryable()
    };
    let sse_body =
        |body: &str| ResponseTemplate::new(200).set_body_raw(body.to_owned(), "text/event-stream");
    let cases = [
        Case {
            name: "HTTP 401: unauthorized, not retried",
            call: Call::Get,
            answer: ResponseTemplate::new(401)
                .set_body_string("{\"error\":\"API key not claimed\"}"),
            calls: 1,
            expected: |error| {
                matches!(error, Error::Unauthorized { status: 401, body } if body.contains("not claimed"))
                    && error.is_unauthorized()
                    && !error.is_retryable()
            },
        },
        Case {
            name: "HTTP 403: unauthorized",
            call: Call::Get,
            answer: ResponseTemplate::new(403),
            calls: 1,
            expected: |error| matches!(error, Error::Unauthorized { status: 403, .. }),
        },
        Case {
            name: "HTTP 429, Retry-After 0: retried, then rate limited",
            call: Call::Get,
            answer: ResponseTemplate::new(429).insert_header("retry-after", "0"),
            calls: 3,
            expected: |error| matches!(error, Error::RateLimited { retry_after: Some(wait) } if *wait == Duration::ZERO),
        },
        Case {
            name: "HTTP 429, Retry-After 120: returned at once",
            call: Call::Get,
            answer: ResponseTemplate::new(429).insert_header("retry-after", "120"),
            calls: 1,
            expected: |error| error.retry_after() == Some(Duration::from_secs(120)),
        },
        Case {
            name: "HTTP 429, Retry-After a past date: retried at once",
            call: Call::Get,
            answer: ResponseTemplate::new(429)
                .insert_header("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"),
            calls: 3,
            expected: |error| error.retry_after() == Some(Duration::ZERO),
        },
        Case {
            name: "HTTP 502: retried, then a server error keeping the body",
            call: Call::Get,
            answer: ResponseTemplate::new(502).set_body_string("bad gateway"),
            calls: 3,
            expected: |error| matches!(error, Error::Server { status: 502, body } if body == "bad gateway"),
        },
        Case {
            name: "HTTP 400: unexpected status",
            call: Call::Get,
            answer: ResponseTemplate::new(400).set_body_string("nope"),
            calls: 1,
            expected: |error| matches!(error, Error::UnexpectedStatus { status: 400, .. }),
        },
        Case {
            name: "HTTP 404: an unexpected status, not a missing key",
            call: Call::Get,
            answer: ResponseTemplate::new(404),
            calls: 1,
            expected: |error| matches!(error, Error::UnexpectedStatus { status: 404, .. }),
        },
        Case {
            name: "HTTP 404 to an update: the key is missing, as the reference reads it",
            call: Call::Update,
            answer: ResponseTemplate::new(404),
            calls: 1,
            expected: |error| matches!(error, Error::NotFound { key } if key == "k"),
        },
        Case {
            name: "JSON-RPC error: code and message kept",
            call: Call::Get,
            answer: rpc_error(1, -32601, "Unknown tool: get_memory"),
            calls: 1,
            expected: |error| matches!(error, Error::JsonRpc { code: -32601, message } if message == "Unknown tool: get_memory"),
        },
        Case {
            name: "tool error: text kept",
            call: Call::Get,
            answer: tool_error(1, "the service is busy"),
            calls: 1,
            expected: |error| matches!(error, Error::Tool { message } if message == "the service is busy"),
        },
        Case {
            name: "per-item failure: key, status and text kept",
            call: Call::Create,
            answer: ok(
                1,
                json!({ "results": [{ "key_name": "k", "status": "error", "error": "value too large" }] }),
            ),
            calls: 1,
            expected: |error| {
                matches!(error, Error::ItemFailed { key, status, message }
                    if key == "k" && status == "error" && message == "value too large")
            },
        },
        Case {
            name: "malformed: an HTML page",
            call: Call::Get,
            answer: sse_body("<html>gateway</html>"),
            calls: 1,
            expected: malformed,
        },
        Case {
            name: "malformed: an SSE event that is not JSON",
            call: Call::Get,
            answer: sse_body("data: {not json\n\n"),
            calls: 1,
            expected: malformed,
        },
        Case {
            name: "malformed: a tool result of plain words",
            call: Call::Get,
            answer: sse_body(
                "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"plain words\"}]}}",
            ),
            calls: 1,
            expected: malformed,
        },
        Case {
            name: "malformed: structured content without results",
            call: Call::Get,
            answer: sse_body(
                "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"structuredContent\":{\"nothing\":1}}}",
            ),
            calls: 1,
            expected: malformed,
        },
        Case {
            name: "malformed: a huge body, truncated in the error",
            call: Call::Get,
            answer: ResponseTemplate::new(200).set_body_string("x".repeat(100_000)),
            calls: 1,
            expected: |error| matches!(error, Error::Malformed { body, .. } if body.len() < 1_000),
        },
    ];
    for case in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(case.answer)
            .expect(case.calls)
            .named(case.name)
            .mount(&server)
            .await;
        let outcome = case.call.run(&client(&server, Dialect::Mcp)).await;
        match outcome {
            Err(error) => assert!((case.expected)(&error), "{}: got {error:?}", case.name),
            Ok(value) => panic!("{}: succeeded with {value:?}", case.name),
        }
        // Checks the number of calls, naming the case.
        server.verify().await;
    }
}

#[tokio::test]
async fn a_timeout_is_a_retryable_transport_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok(1, json!({ "results": [] })).set_delay(Duration::from_millis(500)))
        .expect(3)
        .mount(&server)
        .await;
    let config = EnsueConfig::new(API_KEY)
        .with_base_url(&server.uri())
        .unwrap()
        .with_timeout(Duration::from_millis(50))
        .with_retry(fast_retry());
    let error = EnsueClient::new(config)
        .unwrap()
        .get("k")
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Transport(_)) && error.is_retryable(),
        "{error:?}"
    );
}

#[tokio::test]
async fn retries_stop_at_the_first_success() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .expect(2)
        .with_priority(1)
        .mount(&server)
        .await;
    expect_call(mcp_call(1, "get_memory", json!({ "key_names": ["k"] })))
        .respond_with(ok(
            1,
            json!({ "results": [{ "key_name": "k", "value": "v", "status": "success" }] }),
        ))
        .expect(1)
        .mount(&server)
        .await;
    assert_eq!(
        client(&server, Dialect::Mcp)
            .get("k")
            .await
            .unwrap()
            .as_deref(),
        Some("v")
    );
}

#[tokio::test]
async fn no_retries_when_the_policy_says_none() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&server)
        .await;
    let config = EnsueConfig::new(API_KEY)
        .with_base_url(&server.uri())
        .unwrap()
        .with_retry(Backoff::none());
    let error = EnsueClient::new(config)
        .unwrap()
        .get("k")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Server { status: 503, .. }));
}

#[tokio::test]
async fn a_retried_create_that_finds_its_own_value_succeeds() {
    let server = MockServer::start().await;
    let create = mcp_call(
        1,
        "create_memory",
        json!({ "items": [{ "key_name": "k", "value": "v", "description": "Memory at k" }] }),
    );
    // The first attempt lands but its answer is lost (503); the retry then
    // meets the key it wrote itself.
    expect_call(create.clone())
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    expect_call(create)
        .respond_with(ok(1, json!({ "results": [{ "key_name": "k", "status": "error", "error": "already exists" }] })))
        .expect(1)
        .mount(&server)
        .await;
    expect_call(mcp_call(2, "get_memory", json!({ "key_names": ["k"] })))
        .respond_with(ok(
            2,
            json!({ "results": [{ "key_name": "k", "value": "v", "status": "success" }] }),
        ))
        .expect(1)
        .mount(&server)
        .await;
    client(&server, Dialect::Mcp)
        .create("k", "v")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_retried_create_that_finds_another_value_is_already_exists() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_json(mcp_call(
            1,
            "create_memory",
            json!({ "items": [{ "key_name": "k", "value": "v", "description": "Memory at k" }] }),
        )))
        .respond_with(tool_error(1, "key already exists"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_json(mcp_call(
            2,
            "get_memory",
            json!({ "key_names": ["k"] }),
        )))
        .respond_with(ok(
            2,
            json!({ "results": [{ "key_name": "k", "value": "other", "status": "success" }] }),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server, Dialect::Mcp)
        .create("k", "v")
        .await
        .unwrap_err();
    assert!(error.is_already_exists());
}

#[tokio::test]
async fn a_first_create_that_meets_already_exists_does_not_read() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(tool_error(1, "already exists"))
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server, Dialect::Mcp)
        .create("k", "v")
        .await
        .unwrap_err();
    assert!(error.is_already_exists());
}

// ------------------------------------------------------------- SSE framings

fn found(id: u64, value: &str) -> Value {
    rpc(
        id,
        tool_result(
            json!({ "results": [{ "key_name": "k", "value": value, "status": "success" }] }),
        ),
    )
}

/// Every framing of a successful answer the client reads: SSE in its forms,
/// plain JSON, a lying content type, and the text fallback.
#[tokio::test]
async fn every_framing_of_an_answer_is_read() {
    let notification = json!({ "jsonrpc": "2.0", "method": "notifications/progress", "params": { "progress": 1 } });
    let text_only = json!({ "content": [{ "type": "text", "text": json!({ "results": [{ "key_name": "k", "value": "text", "status": "success" }] }).to_string() }] });
    let cases: [(&str, String, &str, &str); 9] = [
        (
            "SSE: one event",
            format!("data: {}\n\n", found(1, "one")),
            "text/event-stream",
            "one",
        ),
        (
            "SSE: notifications before the response",
            format!(
                "data: {notification}\n\ndata: {notification}\n\ndata: {}\n\n",
                found(1, "after")
            ),
            "text/event-stream",
            "after",
        ),
        (
            "SSE: event, id, retry and comment lines",
            format!(
                ": ping\nretry: 1000\nevent: message\nid: 0a1b\ndata: {}\n\n: bye\n",
                found(1, "framed")
            ),
            "text/event-stream",
            "framed",
        ),
        (
            "SSE: CRLF line endings",
            format!("event: message\r\ndata: {}\r\n\r\n", found(1, "crlf")),
            "text/event-stream",
            "crlf",
        ),
        (
            "SSE: a response for another id loses to ours",
            format!(
                "data: {}\n\ndata: {}\n\n",
                found(1, "ours"),
                found(99, "theirs")
            ),
            "text/event-stream",
            "ours",
        ),
        (
            "plain JSON",
            found(1, "json").to_string(),
            "application/json",
            "json",
        ),
        (
            "SSE labelled as JSON is sniffed",
            format!("data: {}\n\n", found(1, "sse-as-json")),
            "application/json",
            "sse-as-json",
        ),
        (
            "JSON labelled as SSE is sniffed",
            found(1, "json-as-sse").to_string(),
            "text/event-stream",
            "json-as-sse",
        ),
        (
            "content text is the fallback for structured content",
            format!("data: {}\n\n", rpc(1, text_only)),
            "text/event-stream",
            "text",
        ),
    ];
    for (name, body, content_type, value) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(body, content_type))
            .expect(1)
            .named(name)
            .mount(&server)
            .await;
        let read = client(&server, Dialect::Mcp).get("k").await;
        assert_eq!(
            read.as_ref().ok().and_then(Option::as_deref),
            Some(value),
            "{name}: {read:?}"
        );
    }
}

/// A body that really arrives in pieces: a raw HTTP/1.1 server writing a
/// chunked response, split in the middle of a `data:` line.
#[tokio::test]
async fn sse_body_split_across_network_chunks() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let body = format!("event: message\ndata: {}\n\n", found(1, "pieces"));
    let (head, tail) = body.split_at(body.len() / 2);
    let (head, tail) = (head.to_owned(), tail.to_owned());
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        // Read the request up to and including its JSON body.
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        while !request.ends_with(b"}}") {
            let read = socket.read(&mut buffer).await.unwrap();
            assert!(read > 0, "connection closed before the request ended");
            request.extend_from_slice(&buffer[..read]);
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        for piece in [&head, &tail] {
            let chunk = format!("{:x}\r\n{piece}\r\n", piece.len());
            socket.write_all(chunk.as_bytes()).await.unwrap();
            socket.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        socket.write_all(b"0\r\n\r\n").await.unwrap();
        String::from_utf8(request).unwrap()
    });
    let config = EnsueConfig::new(API_KEY)
        .with_base_url(&format!("http://{address}/"))
        .unwrap();
    let value = EnsueClient::new(config).unwrap().get("k").await.unwrap();
    assert_eq!(value.as_deref(), Some("pieces"));
    let request = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("the raw server finished its answer")
        .unwrap();
    assert!(request.starts_with("POST / HTTP/1.1\r\n"));
}

#[tokio::test]
async fn a_batch_rejected_as_a_whole_for_one_missing_key_is_asked_key_by_key() {
    let server = MockServer::start().await;
    expect_call(mcp_call(
        1,
        "get_memory",
        json!({ "key_names": ["a", "gone"] }),
    ))
    .respond_with(tool_error(1, "key not found: gone"))
    .expect(1)
    .mount(&server)
    .await;
    expect_call(mcp_call(2, "get_memory", json!({ "key_names": ["a"] })))
        .respond_with(ok(
            2,
            json!({ "results": [{ "key_name": "a", "value": "A", "status": "success" }] }),
        ))
        .expect(1)
        .mount(&server)
        .await;
    expect_call(mcp_call(3, "get_memory", json!({ "key_names": ["gone"] })))
        .respond_with(tool_error(3, "key not found: gone"))
        .expect(1)
        .mount(&server)
        .await;
    let found = client(&server, Dialect::Mcp)
        .get_many(&["a".to_owned(), "gone".to_owned()])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found["a"], "A");
}

#[tokio::test]
async fn the_api_key_never_shows_in_debug_output() {
    let server = MockServer::start().await;
    let client = client(&server, Dialect::Mcp);
    let printed = format!("{client:?} {:?}", client.config());
    assert!(printed.contains("<redacted>"));
    assert!(!printed.contains(API_KEY));
}

#[tokio::test]
async fn mcp_create_many_batches_by_100_and_answers_per_item() {
    let server = MockServer::start().await;
    let items: Vec<(String, String)> = (0..101)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .collect();
    let described = |items: &[(String, String)]| -> Vec<Value> {
        items
            .iter()
            .map(|(key, value)| {
                json!({ "key_name": key, "value": value, "description": format!("Memory at {key}") })
            })
            .collect()
    };
    let mut results: Vec<Value> = (0..100)
        .map(|i| json!({ "key_name": format!("k{i}"), "status": "success" }))
        .collect();
    results[7] = json!({ "key_name": "k7", "status": "error", "error": "Key already exists" });
    expect_call(mcp_call(
        1,
        "create_memory",
        json!({ "items": described(&items[..100]) }),
    ))
    .respond_with(ok(1, json!({ "results": results })))
    .expect(1)
    .mount(&server)
    .await;
    expect_call(mcp_call(
        2,
        "create_memory",
        json!({ "items": described(&items[100..]) }),
    ))
    .respond_with(ok(
        2,
        json!({ "results": [{ "key_name": "k100", "status": "success" }] }),
    ))
    .expect(1)
    .mount(&server)
    .await;
    let outcomes = client(&server, Dialect::Mcp)
        .create_many(&items)
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 101);
    for (index, outcome) in outcomes.iter().enumerate() {
        match index {
            7 => assert!(
                outcome.as_ref().is_err_and(Error::is_already_exists),
                "{outcome:?}"
            ),
            _ => assert!(outcome.is_ok(), "k{index}: {outcome:?}"),
        }
    }
}

#[tokio::test]
async fn mcp_create_many_refused_as_a_whole_asks_item_by_item() {
    // A service may refuse the whole batch for one present key without
    // saying which items it created: each item is then asked alone.
    let server = MockServer::start().await;
    expect_call(mcp_call(
        1,
        "create_memory",
        json!({ "items": [
            { "key_name": "a", "value": "1", "description": "Memory at a" },
            { "key_name": "b", "value": "2", "description": "Memory at b" },
        ] }),
    ))
    .respond_with(tool_error(1, "Key already exists: a"))
    .expect(1)
    .mount(&server)
    .await;
    expect_call(mcp_call(
        2,
        "create_memory",
        json!({ "items": [{ "key_name": "a", "value": "1", "description": "Memory at a" }] }),
    ))
    .respond_with(tool_error(2, "Key already exists: a"))
    .expect(1)
    .mount(&server)
    .await;
    expect_call(mcp_call(
        3,
        "create_memory",
        json!({ "items": [{ "key_name": "b", "value": "2", "description": "Memory at b" }] }),
    ))
    .respond_with(ok(
        3,
        json!({ "results": [{ "key_name": "b", "status": "success" }] }),
    ))
    .expect(1)
    .mount(&server)
    .await;
    let outcomes = client(&server, Dialect::Mcp)
        .create_many(&[("a".into(), "1".into()), ("b".into(), "2".into())])
        .await
        .unwrap();
    assert!(outcomes[0].as_ref().is_err_and(Error::is_already_exists));
    assert!(outcomes[1].is_ok());
}

#[tokio::test]
async fn mcp_create_many_reads_items_of_a_batch_that_failed_entirely() {
    // Every item failed: a tool error that still lists each item's status.
    let server = MockServer::start().await;
    let structured = json!({ "results": [
        { "key_name": "a", "status": "already_exists", "error": "key already exists: a" },
        { "key_name": "b", "status": "quota_exceeded", "error": "organization quota exceeded" },
    ] });
    expect_call(mcp_call(
        1,
        "create_memory",
        json!({ "items": [
            { "key_name": "a", "value": "1", "description": "Memory at a" },
            { "key_name": "b", "value": "2", "description": "Memory at b" },
        ] }),
    ))
    .respond_with(sse(&rpc(
        1,
        json!({
            "isError": true,
            "content": [{ "type": "text", "text": "key already exists: a" }],
            "structuredContent": structured,
        }),
    )))
    .expect(1)
    .mount(&server)
    .await;
    let outcomes = client(&server, Dialect::Mcp)
        .create_many(&[("a".into(), "1".into()), ("b".into(), "2".into())])
        .await
        .unwrap();
    assert!(outcomes[0].as_ref().is_err_and(Error::is_already_exists));
    assert!(outcomes[1].as_ref().is_err_and(Error::is_quota_exceeded));
}

#[tokio::test]
async fn only_the_mcp_dialect_batches() {
    let server = MockServer::start().await;
    assert_eq!(client(&server, Dialect::Mcp).max_batch(), 100);
    assert_eq!(client(&server, Dialect::Direct).max_batch(), 1);
}
