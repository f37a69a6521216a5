//! Raw-HTTP helpers shared by the integration tests: they speak the wire
//! protocol by hand, so the tests check the server, not a client library.

use std::time::Duration;

use delibera_ensue_local::{Config, LocalEnsue};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Every wait in these tests gives up after this long, so a broken behaviour
/// fails with a message instead of hanging.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

/// Awaits `future`, or fails naming `what` once [`DEADLINE`] has passed.
pub(crate) async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {DEADLINE:?}"))
}

/// An HTTP client whose every request gives up after [`DEADLINE`].
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .unwrap()
}

/// A server on a free loopback port, in memory.
pub(crate) async fn start() -> LocalEnsue {
    within("the server to start", LocalEnsue::start(Config::default()))
        .await
        .unwrap()
}

/// Stops `server` gracefully, under the deadline.
pub(crate) async fn stop(server: LocalEnsue) {
    within("the server to stop", server.stop()).await.unwrap();
}

/// A raw HTTP answer.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) content_type: String,
    pub(crate) body: String,
}

impl Answer {
    /// The JSON-RPC message in the body: the one `data:` event of an SSE
    /// body (checked to be the exact framing), or the plain JSON body.
    pub(crate) fn message(&self) -> Value {
        if self.content_type.starts_with("text/event-stream") {
            let data = self
                .body
                .strip_prefix("data: ")
                .and_then(|rest| rest.strip_suffix("\n\n"))
                .unwrap_or_else(|| panic!("not one SSE data event: {:?}", self.body));
            assert!(
                !data.contains('\n'),
                "one data line expected: {:?}",
                self.body
            );
            serde_json::from_str(data).unwrap()
        } else {
            serde_json::from_str(&self.body).unwrap()
        }
    }
}

/// POSTs raw bytes to `url` with `key` as bearer token and the given `Accept`.
pub(crate) async fn post_raw(
    url: &str,
    key: Option<&str>,
    accept: Option<&str>,
    body: Vec<u8>,
) -> Answer {
    let mut request = http()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.text().await.unwrap();
    Answer {
        status,
        content_type,
        body,
    }
}

/// Sends a JSON-RPC request with the `Accept` header MCP clients send and
/// returns the response message, checking the HTTP status is 200.
pub(crate) async fn rpc(server: &LocalEnsue, key: &str, method: &str, params: Value) -> Value {
    let body = json!({ "jsonrpc": "2.0", "id": 7, "method": method, "params": params });
    let answer = post_raw(
        server.url(),
        Some(key),
        Some("application/json, text/event-stream"),
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let message = answer.message();
    assert_eq!(message["jsonrpc"], "2.0");
    assert_eq!(message["id"], 7);
    message
}

/// Calls an MCP tool and returns `result`, checking that `structuredContent`
/// and `content[0].text` carry the same JSON on success.
pub(crate) async fn tool(server: &LocalEnsue, key: &str, name: &str, arguments: Value) -> Value {
    let message = rpc(
        server,
        key,
        "tools/call",
        json!({ "name": name, "arguments": arguments }),
    )
    .await;
    let result = message
        .get("result")
        .unwrap_or_else(|| panic!("no result: {message}"))
        .clone();
    check_text_mirror(&result);
    result
}

/// Calls a method of the direct dialect and returns `result`.
pub(crate) async fn direct(server: &LocalEnsue, key: &str, method: &str, params: Value) -> Value {
    let message = rpc(server, key, method, params).await;
    let result = message
        .get("result")
        .unwrap_or_else(|| panic!("no result: {message}"))
        .clone();
    check_text_mirror(&result);
    result
}

fn check_text_mirror(result: &Value) {
    assert_eq!(result["content"][0]["type"], "text");
    if result["isError"] == false {
        let text = result["content"][0]["text"].as_str().unwrap();
        let mirrored: Value = serde_json::from_str(text).unwrap();
        assert_eq!(mirrored, result["structuredContent"]);
    }
}

/// The JSON-RPC error of a call answered with HTTP 200.
pub(crate) async fn rpc_error(
    server: &LocalEnsue,
    key: &str,
    method: &str,
    params: Value,
) -> Value {
    let message = rpc(server, key, method, params).await;
    message
        .get("error")
        .unwrap_or_else(|| panic!("expected an error: {message}"))
        .clone()
}

/// Creates `key` = `value` with the MCP tool.
pub(crate) async fn create(server: &LocalEnsue, api_key: &str, key: &str, value: &str) -> Value {
    tool(
        server,
        api_key,
        "create_memory",
        json!({ "items": [{ "key_name": key, "value": value, "description": "test" }] }),
    )
    .await
}

/// Reads `key` with the MCP tool: `Some(value)` when its item succeeded.
pub(crate) async fn get(server: &LocalEnsue, api_key: &str, key: &str) -> Option<String> {
    let result = tool(server, api_key, "get_memory", json!({ "key_names": [key] })).await;
    let item = &result["structuredContent"]["results"][0];
    assert_eq!(item["key_name"], key);
    (item["status"] == "success").then(|| item["value"].as_str().unwrap().to_owned())
}

/// Update, falling back to create on not-found and to update again when the
/// create loses a race: the protocol's upsert, by hand.
pub(crate) async fn upsert(server: &LocalEnsue, api_key: &str, key: &str, value: &str) {
    for _ in 0..3 {
        let updated = tool(
            server,
            api_key,
            "update_memory",
            json!({ "key_name": key, "value": value }),
        )
        .await;
        if updated["isError"] == false {
            return;
        }
        let created = create(server, api_key, key, value).await;
        if created["isError"] == false {
            return;
        }
    }
    panic!("upsert of {key} did not settle");
}
