//! What the client makes of a server that bounds it: `list_keys` pages that
//! say whether more follow (in both dialects, whatever the page size), and
//! writes refused by an organisation quota.

use std::time::Duration;

use delibera_backoff::Backoff;
use delibera_ensue::{Dialect, EnsueClient, EnsueConfig, Error, Memory};
use serde_json::{Value, json};
use wiremock::matchers::{body_json, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A client that retries what it deems retryable, at once, up to 3 times.
fn client(server: &MockServer, dialect: Dialect) -> EnsueClient {
    let config = EnsueConfig::new("lmn_0123456789abcdef")
        .with_base_url(&format!("{}/", server.uri()))
        .unwrap()
        .with_dialect(dialect)
        .with_retry(Backoff::new(Duration::ZERO, Duration::ZERO).with_max_attempts(3));
    EnsueClient::new(config).unwrap()
}

/// A tool result in one SSE event, structured and mirrored as text.
fn answer(id: u64, structured: Value) -> ResponseTemplate {
    answer_result(
        id,
        json!({
            "structuredContent": structured,
            "content": [{ "type": "text", "text": structured.to_string() }],
        }),
    )
}

fn answer_result(id: u64, result: Value) -> ResponseTemplate {
    let message = json!({ "jsonrpc": "2.0", "id": id, "result": result });
    ResponseTemplate::new(200).set_body_raw(format!("data: {message}\n\n"), "text/event-stream")
}

fn call(id: u64, dialect: Dialect, tool: &str, arguments: Value) -> Value {
    match dialect {
        Dialect::Mcp => json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": { "name": tool, "arguments": arguments },
        }),
        _ => json!({ "jsonrpc": "2.0", "id": id, "method": tool, "params": arguments }),
    }
}

#[tokio::test]
async fn direct_list_keys_follows_has_more_with_offsets() {
    let server = MockServer::start().await;
    let first: Vec<String> = (0..100).map(|i| format!("k/{i:03}")).collect();
    Mock::given(method("POST"))
        .and(body_json(call(
            1,
            Dialect::Direct,
            "list_keys",
            json!({ "prefix": "k/" }),
        )))
        .respond_with(answer(
            1,
            json!({ "keys": first, "has_more": true, "next_offset": 100 }),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_json(call(
            2,
            Dialect::Direct,
            "list_keys",
            json!({ "prefix": "k/", "offset": 100 }),
        )))
        .respond_with(answer(2, json!({ "keys": ["k/100"], "has_more": false })))
        .expect(1)
        .mount(&server)
        .await;
    let keys = client(&server, Dialect::Direct)
        .list_keys("k/")
        .await
        .unwrap();
    let expected: Vec<String> = (0..=100).map(|i| format!("k/{i:03}")).collect();
    assert_eq!(keys, expected);
}

#[tokio::test]
async fn mcp_list_keys_trusts_has_more_over_the_page_size() {
    // A server whose pages are smaller than the 100 asked for: a short page
    // that says more follow is not the last.
    let server = MockServer::start().await;
    for (id, offset, keys, more) in [
        (
            1,
            0,
            json!(["a", "b"]),
            json!({ "has_more": true, "next_offset": 2 }),
        ),
        (2, 2, json!(["c"]), json!({ "has_more": false })),
    ] {
        let mut page = more;
        page["keys"] = keys;
        Mock::given(method("POST"))
            .and(body_json(call(
                id,
                Dialect::Mcp,
                "list_keys",
                json!({ "prefix": "", "limit": 100, "offset": offset }),
            )))
            .respond_with(answer(id, page))
            .expect(1)
            .mount(&server)
            .await;
    }
    let keys = client(&server, Dialect::Mcp).list_keys("").await.unwrap();
    assert_eq!(keys, ["a", "b", "c"]);
}

#[tokio::test]
async fn quota_refusals_are_quota_exceeded_in_every_form() {
    let message = "organization quota exceeded: it already holds 3 keys, the most allowed";
    let item =
        json!({ "results": [{ "key_name": "k", "status": "quota_exceeded", "error": message }] });
    let cases = [
        // Per item, in a result that is not an error.
        (Dialect::Mcp, answer(1, item.clone())),
        // A tool error with the items kept.
        (
            Dialect::Mcp,
            answer_result(
                1,
                json!({ "isError": true, "content": [{ "type": "text", "text": message }], "structuredContent": item }),
            ),
        ),
        // The direct dialect's tool error.
        (
            Dialect::Direct,
            answer_result(
                1,
                json!({ "isError": true, "content": [{ "type": "text", "text": message }] }),
            ),
        ),
    ];
    for (dialect, response) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(response)
            // Not retried: waiting does not make room.
            .expect(1)
            .mount(&server)
            .await;
        let error = client(&server, dialect).create("k", "v").await.unwrap_err();
        assert!(
            matches!(&error, Error::QuotaExceeded { key, message: text } if key == "k" && text == message),
            "{dialect}: {error:?}"
        );
        assert!(error.is_quota_exceeded() && !error.is_retryable());
        assert!(
            error.to_string().contains("quota exceeded writing k"),
            "{error}"
        );
    }
}
