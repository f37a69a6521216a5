//! The wire protocol, spoken by hand over loopback HTTP: every tool in both
//! dialects, the framing, the limits and every class of malformed request.

use delibera_ensue_local::{Config, Limits, LocalEnsue};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{create, direct, get, http, post_raw, rpc, rpc_error, start, stop, tool};

fn keys_of(result: &Value) -> Vec<String> {
    result["structuredContent"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| match key {
            Value::String(key) => key.clone(),
            item => item["key_name"].as_str().unwrap().to_owned(),
        })
        .collect()
}

#[tokio::test]
async fn mcp_tools_create_get_update_list_delete() {
    let server = start().await;
    let key = server.api_key().expose();

    let created = tool(
        &server,
        key,
        "create_memory",
        json!({ "items": [
            { "key_name": "coordination/tasks/w1/status", "value": "idle", "description": "status" },
            { "key_name": "coordination/tasks/w2/status", "value": "pending", "description": "status" },
        ]}),
    )
    .await;
    assert_eq!(created["isError"], false);
    assert_eq!(
        created["structuredContent"],
        json!({ "results": [
            { "key_name": "coordination/tasks/w1/status", "status": "success" },
            { "key_name": "coordination/tasks/w2/status", "status": "success" },
        ]})
    );

    let read = tool(
        &server,
        key,
        "get_memory",
        json!({ "key_names": ["coordination/tasks/w1/status"] }),
    )
    .await;
    let item = &read["structuredContent"]["results"][0];
    assert_eq!(item["key_name"], "coordination/tasks/w1/status");
    assert_eq!(item["status"], "success");
    assert_eq!(item["value"], "idle");
    assert_eq!(item["description"], "status");
    assert!(item["created_at"].as_i64().unwrap() > 1_700_000_000);

    let updated = tool(
        &server,
        key,
        "update_memory",
        json!({ "key_name": "coordination/tasks/w1/status", "value": "completed" }),
    )
    .await;
    assert_eq!(updated["isError"], false);
    assert_eq!(
        get(&server, key, "coordination/tasks/w1/status")
            .await
            .as_deref(),
        Some("completed")
    );
    // An update without a description keeps the old one.
    let read = tool(
        &server,
        key,
        "get_memory",
        json!({ "key_names": ["coordination/tasks/w1/status"] }),
    )
    .await;
    assert_eq!(
        read["structuredContent"]["results"][0]["description"],
        "status"
    );

    let listed = tool(
        &server,
        key,
        "list_keys",
        json!({ "prefix": "coordination/tasks/", "limit": 100 }),
    )
    .await;
    let page = &listed["structuredContent"];
    assert_eq!(page["keys"][0]["key_name"], "coordination/tasks/w1/status");
    assert_eq!(page["keys"][0]["size"], "completed".len());
    assert_eq!(page["count"], 2);
    assert_eq!(page["total"], 2);

    let deleted = tool(
        &server,
        key,
        "delete_memory",
        json!({ "key_names": ["coordination/tasks/w1/status"] }),
    )
    .await;
    assert_eq!(
        deleted["structuredContent"]["results"][0],
        json!({ "key_name": "coordination/tasks/w1/status", "status": "success" })
    );
    assert_eq!(
        get(&server, key, "coordination/tasks/w1/status").await,
        None
    );
    stop(server).await;
}

#[tokio::test]
async fn direct_methods_in_the_seed_form() {
    let server = start().await;
    let key = server.api_key().expose();
    let status_key = "coordination/tasks/did:key:z6Mk1/status";

    let created = direct(
        &server,
        key,
        "create_memory",
        json!({ "key": status_key, "value": "idle" }),
    )
    .await;
    assert_eq!(
        created["structuredContent"]["results"][0],
        json!({ "key": status_key, "value": "idle", "status": "success" })
    );

    let updated = direct(
        &server,
        key,
        "update_memory",
        json!({ "key": status_key, "value": "completed" }),
    )
    .await;
    assert_eq!(
        updated["structuredContent"]["results"][0]["value"],
        "completed"
    );

    for method in ["get_memory", "read_memory"] {
        let read = direct(&server, key, method, json!({ "key": status_key })).await;
        assert_eq!(read["structuredContent"]["results"][0]["key"], status_key);
        assert_eq!(
            read["structuredContent"]["results"][0]["value"],
            "completed"
        );
    }

    let listed = direct(
        &server,
        key,
        "list_keys",
        json!({ "prefix": "coordination/tasks/" }),
    )
    .await;
    // The direct dialect's shape: plain strings under `keys`.
    assert_eq!(listed["structuredContent"]["keys"], json!([status_key]));

    let deleted = direct(&server, key, "delete_memory", json!({ "key": status_key })).await;
    assert_eq!(deleted["isError"], false);
    let missing = direct(&server, key, "get_memory", json!({ "key": status_key })).await;
    assert_eq!(missing["isError"], true);
    assert_eq!(
        missing["content"][0]["text"],
        format!("key not found: {status_key}")
    );
    stop(server).await;
}

#[tokio::test]
async fn direct_method_names_also_take_mcp_arguments() {
    let server = start().await;
    let key = server.api_key().expose();
    let created = direct(
        &server,
        key,
        "create_memory",
        json!({ "items": [{ "key_name": "a", "value": "1", "description": "d" }] }),
    )
    .await;
    assert_eq!(created["structuredContent"]["results"][0]["key_name"], "a");
    let read = direct(&server, key, "get_memory", json!({ "key_names": ["a"] })).await;
    assert_eq!(read["structuredContent"]["results"][0]["value"], "1");
    stop(server).await;
}

#[tokio::test]
async fn direct_failures_are_tool_errors() {
    let server = start().await;
    let key = server.api_key().expose();
    direct(
        &server,
        key,
        "create_memory",
        json!({ "key": "k", "value": "1" }),
    )
    .await;

    let again = direct(
        &server,
        key,
        "create_memory",
        json!({ "key": "k", "value": "2" }),
    )
    .await;
    assert_eq!(again["isError"], true);
    assert_eq!(again["content"][0]["text"], "key already exists: k");

    for method in ["update_memory", "delete_memory", "get_memory"] {
        let missing = direct(&server, key, method, json!({ "key": "nope", "value": "x" })).await;
        assert_eq!(missing["isError"], true, "{method}");
        assert_eq!(
            missing["content"][0]["text"], "key not found: nope",
            "{method}"
        );
    }
    stop(server).await;
}

#[tokio::test]
async fn mcp_failures_per_item_and_as_tool_errors() {
    let server = start().await;
    let key = server.api_key().expose();
    create(&server, key, "taken", "first").await;

    // Partly failed batch: per-item status, no tool error.
    let mixed = tool(
        &server,
        key,
        "create_memory",
        json!({ "items": [
            { "key_name": "taken", "value": "second", "description": "d" },
            { "key_name": "fresh", "value": "v", "description": "d" },
        ]}),
    )
    .await;
    assert_eq!(mixed["isError"], false);
    assert_eq!(
        mixed["structuredContent"]["results"],
        json!([
            { "key_name": "taken", "status": "already_exists", "error": "key already exists: taken" },
            { "key_name": "fresh", "status": "success" },
        ])
    );
    assert_eq!(get(&server, key, "taken").await.as_deref(), Some("first"));

    // Every item failed: a tool error too, with the items kept.
    let failed = create(&server, key, "taken", "third").await;
    assert_eq!(failed["isError"], true);
    assert_eq!(failed["content"][0]["text"], "key already exists: taken");
    assert_eq!(
        failed["structuredContent"]["results"][0]["status"],
        "already_exists"
    );

    // get_memory reports missing keys per item only.
    let read = tool(
        &server,
        key,
        "get_memory",
        json!({ "key_names": ["taken", "missing"] }),
    )
    .await;
    assert_eq!(read["isError"], false);
    assert_eq!(
        read["structuredContent"]["results"][1],
        json!({ "key_name": "missing", "status": "not_found", "error": "key not found: missing" })
    );

    let update = tool(
        &server,
        key,
        "update_memory",
        json!({ "key_name": "missing", "value": "v" }),
    )
    .await;
    assert_eq!(update["isError"], true);
    assert_eq!(update["content"][0]["text"], "key not found: missing");

    let delete = tool(
        &server,
        key,
        "delete_memory",
        json!({ "key_names": ["missing"] }),
    )
    .await;
    assert_eq!(delete["isError"], true);
    assert_eq!(
        delete["structuredContent"]["results"][0]["status"],
        "not_found"
    );
    stop(server).await;
}

#[tokio::test]
async fn sse_by_default_and_json_when_only_json_is_accepted() {
    let server = start().await;
    let key = server.api_key().expose();
    let body = br#"{"jsonrpc":"2.0","id":"req-1","method":"ping"}"#.to_vec();

    for accept in [
        None,
        Some("*/*"),
        Some("application/json, text/event-stream"),
    ] {
        let answer = post_raw(server.url(), Some(key), accept, body.clone()).await;
        assert_eq!(answer.content_type, "text/event-stream", "{accept:?}");
        assert_eq!(
            answer.body,
            "data: {\"id\":\"req-1\",\"jsonrpc\":\"2.0\",\"result\":{}}\n\n"
        );
    }
    let answer = post_raw(server.url(), Some(key), Some("application/json"), body).await;
    assert_eq!(answer.content_type, "application/json");
    assert_eq!(
        answer.message(),
        json!({ "jsonrpc": "2.0", "id": "req-1", "result": {} })
    );
    stop(server).await;
}

#[tokio::test]
async fn mcp_handshake_methods_and_notifications() {
    let server = start().await;
    let key = server.api_key().expose();

    let init = rpc(
        &server,
        key,
        "initialize",
        json!({ "protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } }),
    )
    .await;
    assert_eq!(init["result"]["protocolVersion"], "2025-03-26");
    assert_eq!(init["result"]["serverInfo"]["name"], "delibera-ensue-local");

    let notification = post_raw(
        server.url(),
        Some(key),
        None,
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_vec(),
    )
    .await;
    assert_eq!(notification.status, StatusCode::ACCEPTED);
    assert_eq!(notification.body, "");

    let tools = rpc(&server, key, "tools/list", json!({})).await;
    let mut names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| tool["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "create_memory",
            "delete_memory",
            "get_memory",
            "list_keys",
            "search_memories",
            "update_memory"
        ]
    );
    stop(server).await;
}

#[tokio::test]
async fn list_keys_pages_with_offset_in_key_order() {
    let server = start().await;
    let key = server.api_key().expose();
    for batch in 0..3 {
        let items: Vec<Value> = (0..85)
            .map(|i| json!({ "key_name": format!("p/{:03}", batch * 85 + i), "value": "v", "description": "d" }))
            .collect();
        tool(&server, key, "create_memory", json!({ "items": items })).await;
    }
    create(&server, key, "q/outside", "v").await;

    let mut seen = Vec::new();
    let mut offset = 0;
    // Three pages of keys and an empty one; a server that never ends the
    // listing fails here instead of looping.
    for _ in 0..4 {
        let page = tool(
            &server,
            key,
            "list_keys",
            json!({ "prefix": "p/", "limit": 100, "offset": offset }),
        )
        .await;
        assert_eq!(page["structuredContent"]["total"], 255);
        let keys = keys_of(&page);
        assert!(keys.len() <= 100);
        if keys.is_empty() {
            break;
        }
        offset += keys.len();
        seen.extend(keys);
    }
    let expected: Vec<String> = (0..255).map(|i| format!("p/{i:03}")).collect();
    assert_eq!(seen, expected);

    let everything = tool(&server, key, "list_keys", json!({})).await;
    assert_eq!(everything["structuredContent"]["count"], 100);
    assert_eq!(everything["structuredContent"]["total"], 256);
    stop(server).await;
}

#[tokio::test]
async fn list_prefixes_match_like_sql_with_escapes() {
    let server = start().await;
    let key = server.api_key().expose();
    for name in ["a_b/1", "axb/2", "a%b/3", "A_b/4", "a\\b/5"] {
        create(&server, key, name, "v").await;
    }
    let list = |prefix: &'static str| {
        let server = &server;
        async move { keys_of(&tool(server, key, "list_keys", json!({ "prefix": prefix })).await) }
    };
    // `_` and `%` are wildcards unless escaped; matching is case-sensitive.
    assert_eq!(list("a_b").await, ["a%b/3", "a\\b/5", "a_b/1", "axb/2"]);
    assert_eq!(list("a\\_b").await, ["a_b/1"]);
    assert_eq!(list("a\\%b").await, ["a%b/3"]);
    assert_eq!(list("a\\\\b").await, ["a\\b/5"]);
    assert_eq!(list("A").await, ["A_b/4"]);
    // The reference appends its own `%`: still a prefix match.
    assert_eq!(list("a\\_b%").await, ["a_b/1"]);

    let unfinished = rpc_error(
        &server,
        key,
        "tools/call",
        json!({ "name": "list_keys", "arguments": { "prefix": "a\\" } }),
    )
    .await;
    assert_eq!(unfinished["code"], -32602);
    stop(server).await;
}

#[tokio::test]
async fn batch_page_and_value_limits_are_clear_errors() {
    let limits = Limits::new(64 * 1024, 1000);
    let server = LocalEnsue::start(Config::default().with_limits(limits))
        .await
        .unwrap();
    let key = server.api_key().expose();
    let call = |name: &'static str, arguments: Value| {
        let server = &server;
        async move {
            rpc_error(
                server,
                key,
                "tools/call",
                json!({ "name": name, "arguments": arguments }),
            )
            .await
        }
    };

    let error = call("create_memory", json!({ "items": [] })).await;
    assert_eq!(error["code"], -32602);
    assert_eq!(
        error["message"],
        "`items` must hold 1 to 100 entries, got 0"
    );

    let too_many: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    let error = call("get_memory", json!({ "key_names": too_many })).await;
    assert_eq!(
        error["message"],
        "`key_names` must hold 1 to 100 entries, got 101"
    );

    let error = call("list_keys", json!({ "limit": 0 })).await;
    assert_eq!(error["message"], "`limit` must be at least 1, got 0");

    let error = call("list_keys", json!({ "offset": -1 })).await;
    assert_eq!(error["code"], -32602);

    let big = "x".repeat(1001);
    let error = call(
        "create_memory",
        json!({ "items": [{ "key_name": "k", "value": big, "description": "d" }] }),
    )
    .await;
    assert_eq!(
        error["message"],
        "`items[0].value` is 1001 bytes, over the limit of 1000 bytes"
    );
    let error = call("update_memory", json!({ "key_name": "k", "value": big })).await;
    assert_eq!(error["code"], -32602);
    // Exactly at the limit is fine.
    let fits = create(&server, key, "k", &"x".repeat(1000)).await;
    assert_eq!(fits["isError"], false);
    stop(server).await;
}

#[tokio::test]
async fn bad_arguments_are_invalid_params() {
    let server = start().await;
    let key = server.api_key().expose();
    let cases = [
        (json!({ "name": "get_memory" }), "`key_names` is missing"),
        (
            json!({ "name": "get_memory", "arguments": { "key_names": "k" } }),
            "`key_names` must be an array",
        ),
        (
            json!({ "name": "get_memory", "arguments": { "key_names": [1] } }),
            "`key_names[0]` must be a string",
        ),
        (
            json!({ "name": "get_memory", "arguments": { "key_names": [""] } }),
            "`key_names[0]` is empty",
        ),
        (
            json!({ "name": "create_memory", "arguments": { "items": [{ "key_name": "k", "value": "v" }] } }),
            "`items[0].description` is missing",
        ),
        (
            json!({ "name": "create_memory", "arguments": { "items": [{ "key_name": "k", "value": {"a": 1}, "description": "d" }] } }),
            "`items[0].value` must be a string",
        ),
        (
            json!({ "name": "create_memory", "arguments": { "items": ["k"] } }),
            "`items[0]` must be an object",
        ),
        (
            json!({ "name": "update_memory", "arguments": { "value": "v" } }),
            "`arguments.key_name` is missing",
        ),
        (
            json!({ "name": "update_memory", "arguments": { "key_name": "k" } }),
            "`arguments.value` is missing",
        ),
        (
            json!({ "name": "list_keys", "arguments": { "limit": "ten" } }),
            "`limit` must be a number",
        ),
        (
            json!({ "name": "list_keys", "arguments": [] }),
            "`params.arguments` must be an object",
        ),
        (json!({ "arguments": {} }), "`params.name` is missing"),
        (
            json!({ "name": "get_memory", "arguments": { "key_names": ["@other-org/k"] } }),
            "`key_names[0]`: cross-organization keys (`@org/...`) are not supported by the local server",
        ),
    ];
    for (params, message) in cases {
        let error = rpc_error(&server, key, "tools/call", params.clone()).await;
        assert_eq!(error["code"], -32602, "{params}");
        assert_eq!(error["message"], message, "{params}");
    }
    let error = rpc_error(&server, key, "create_memory", json!({ "key": "k" })).await;
    assert_eq!(error["message"], "`params.value` is missing");
    for method in [
        "create_memory",
        "get_memory",
        "update_memory",
        "delete_memory",
    ] {
        let error = rpc_error(&server, key, method, Value::Null).await;
        assert_eq!(error["code"], -32602, "{method}");
        assert_eq!(error["message"], "`params.key` is missing", "{method}");
    }
    let error = rpc_error(&server, key, "tools/call", json!("get_memory")).await;
    assert_eq!(error["message"], "`params` must be an object");
    stop(server).await;
}

/// Every malformed class, answered with the right code; the server answers a
/// valid call afterwards.
#[tokio::test]
async fn malformed_burst_then_a_valid_call() {
    let server = LocalEnsue::start(Config::default().with_limits(Limits::new(4096, 1024)))
        .await
        .unwrap();
    let key = server.api_key().expose();
    let oversized = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(5000)
    );
    let cases: Vec<(&str, Vec<u8>, StatusCode, i64, Value)> = vec![
        ("bad JSON", b"{\"jsonrpc\":".to_vec(), StatusCode::BAD_REQUEST, -32700, Value::Null),
        ("empty body", Vec::new(), StatusCode::BAD_REQUEST, -32700, Value::Null),
        ("non-UTF-8", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}".to_vec(), StatusCode::BAD_REQUEST, -32700, Value::Null),
        ("wrong jsonrpc", br#"{"jsonrpc":"1.0","id":3,"method":"ping"}"#.to_vec(), StatusCode::BAD_REQUEST, -32600, json!(3)),
        ("missing jsonrpc", br#"{"id":4,"method":"ping"}"#.to_vec(), StatusCode::BAD_REQUEST, -32600, json!(4)),
        ("missing method", br#"{"jsonrpc":"2.0","id":5}"#.to_vec(), StatusCode::BAD_REQUEST, -32600, json!(5)),
        ("batch", br#"[{"jsonrpc":"2.0","id":6,"method":"ping"}]"#.to_vec(), StatusCode::BAD_REQUEST, -32600, Value::Null),
        ("not an object", b"42".to_vec(), StatusCode::BAD_REQUEST, -32600, Value::Null),
        ("missing params", br#"{"jsonrpc":"2.0","id":8,"method":"tools/call"}"#.to_vec(), StatusCode::OK, -32602, json!(8)),
        ("missing arguments", br#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"create_memory"}}"#.to_vec(), StatusCode::OK, -32602, json!(9)),
        ("unknown tool", br#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"drop_tables","arguments":{}}}"#.to_vec(), StatusCode::OK, -32601, json!(10)),
        ("unknown method", br#"{"jsonrpc":"2.0","id":"m","method":"memories/nuke"}"#.to_vec(), StatusCode::OK, -32601, json!("m")),
        ("oversized body", oversized.into_bytes(), StatusCode::PAYLOAD_TOO_LARGE, -32600, Value::Null),
    ];
    for (name, body, status, code, id) in cases {
        let answer = post_raw(server.url(), Some(key), None, body).await;
        assert_eq!(answer.status, status, "{name}: {}", answer.body);
        let message = answer.message();
        assert_eq!(message["jsonrpc"], "2.0", "{name}");
        assert_eq!(message["error"]["code"], code, "{name}: {message}");
        assert!(
            message["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
        assert_eq!(message["id"], id, "{name}");
    }
    let created = create(&server, key, "still/up", "yes").await;
    assert_eq!(created["isError"], false);
    assert_eq!(get(&server, key, "still/up").await.as_deref(), Some("yes"));
    stop(server).await;
}

#[tokio::test]
async fn oversized_body_without_content_length_is_refused_too() {
    let server = LocalEnsue::start(Config::default().with_limits(Limits::new(1024, 512)))
        .await
        .unwrap();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b' '; 512])).collect();
    let response = http()
        .post(server.url())
        .bearer_auth(server.api_key().expose())
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32600);
    stop(server).await;
}

#[tokio::test]
async fn health_and_unknown_routes() {
    let server = start().await;
    let client = http();
    let health = client
        .get(format!("{}healthz", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({ "status": "ok" })
    );

    // No server-to-client SSE stream: MCP's answer to GET is 405.
    let get_root = client
        .get(server.url())
        .bearer_auth(server.api_key().expose())
        .send()
        .await
        .unwrap();
    assert_eq!(get_root.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(get_root.headers().contains_key("allow"));
    let answer: Value = get_root.json().await.unwrap();
    assert!(answer["error"].is_string(), "{answer}");
    let nowhere = client
        .post(format!("{}nowhere", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), StatusCode::NOT_FOUND);
    let answer: Value = nowhere.json().await.unwrap();
    assert!(answer["error"].is_string(), "{answer}");
    stop(server).await;
}

/// A request still unanswered after the server's 30 s is answered 408 in
/// the `{"error"}` shape. (Paused time: the 30 s pass at once.)
#[tokio::test(start_paused = true)]
async fn a_request_that_takes_too_long_is_a_408_in_the_error_shape() {
    use delibera_ensue_local::axum::body::{Body, Bytes, to_bytes};
    use delibera_ensue_local::axum::http::Request;
    use delibera_ensue_local::{AppState, Store, app};
    use tower::ServiceExt;

    let router = app(AppState::new(Store::in_memory().unwrap()));
    // A body that never arrives holds the registration until the timeout.
    let never = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
    let register = Request::post("/auth/agent-register")
        .body(Body::from_stream(never))
        .unwrap();
    let response = router.oneshot(register).await.unwrap();
    assert_eq!(response.status().as_u16(), 408);
    let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let answer: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&body)));
    assert!(answer["error"].is_string(), "{answer}");
}

#[tokio::test]
async fn direct_list_keys_pages_as_mcp_does() {
    let server = start().await;
    let key = server.api_key().expose();
    let items: Vec<Value> = (0..100)
        .map(|i| json!({ "key_name": format!("d/{i:03}"), "value": "v", "description": "d" }))
        .collect();
    tool(&server, key, "create_memory", json!({ "items": items })).await;
    create(&server, key, "d/100", "v").await;

    // Without a limit the direct form gets one page, and says where the next starts.
    let first = direct(&server, key, "list_keys", json!({ "prefix": "d/" })).await;
    assert_eq!(keys_of(&first).len(), 100);
    let page = &first["structuredContent"];
    assert_eq!(
        (&page["total"], &page["has_more"], &page["next_offset"]),
        (&json!(101), &json!(true), &json!(100))
    );
    let rest = direct(
        &server,
        key,
        "list_keys",
        json!({ "prefix": "d/", "offset": 100 }),
    )
    .await;
    assert_eq!(keys_of(&rest), ["d/100"]);
    assert_eq!(rest["structuredContent"]["has_more"], false);
    assert_eq!(rest["structuredContent"]["next_offset"], Value::Null);
    let paged = direct(
        &server,
        key,
        "list_keys",
        json!({ "prefix": "d/", "limit": 10, "offset": 95 }),
    )
    .await;
    assert_eq!(
        keys_of(&paged),
        ["d/095", "d/096", "d/097", "d/098", "d/099", "d/100"]
    );
    stop(server).await;
}

#[tokio::test]
async fn the_router_serves_without_a_listener() {
    use delibera_ensue_local::axum::body::{Body, to_bytes};
    use delibera_ensue_local::axum::http::Request;
    use delibera_ensue_local::{ApiKey, AppState, Store, app};
    use tower::ServiceExt;

    let store = Store::in_memory().unwrap();
    store
        .add_key("local", &ApiKey::new("lmn_oneshot").unwrap())
        .await
        .unwrap();
    let router = app(AppState::new(store).with_public_url("http://ensue.test/"));

    let list = Request::post("/")
        .header("authorization", "Bearer lmn_oneshot")
        .header("accept", "application/json")
        .body(Body::from(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_keys","arguments":{}}}"#,
        ))
        .unwrap();
    let response = router.clone().oneshot(list).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let message: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(message["result"]["structuredContent"]["keys"], json!([]));

    let register = Request::post("/auth/agent-register")
        .body(Body::from(r#"{"name":"oneshot-org"}"#))
        .unwrap();
    let response = router.oneshot(register).await.unwrap();
    let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let registered: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        registered["claim_url"]
            .as_str()
            .unwrap()
            .starts_with("http://ensue.test/claim?token=")
    );
}

#[tokio::test]
async fn search_memories_matches_keys_and_values_as_plain_text_in_both_dialects() {
    let server = start().await;
    let key = server.api_key().expose();
    create(
        &server,
        key,
        "coordination/tasks/w1/result",
        r#"{"vote":"Approved"}"#,
    )
    .await;
    create(
        &server,
        key,
        "coordination/tasks/w2/result",
        r#"{"vote":"Rejected"}"#,
    )
    .await;
    create(&server, key, "agent/w1/approved_list", "none").await;
    create(&server, key, "agent/w3/display_name", "100% sure_thing").await;

    // The MCP tool, as the TypeScript client calls it (`{query, limit}`):
    // a key match ranks before a value match, ASCII case is ignored.
    let found = tool(
        &server,
        key,
        "search_memories",
        json!({ "query": "approved", "limit": 10 }),
    )
    .await;
    assert_eq!(found["isError"], false);
    let results = found["structuredContent"]["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|item| item["key_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["agent/w1/approved_list", "coordination/tasks/w1/result"]
    );
    assert_eq!(results[0]["score"], 1.0);
    assert_eq!(results[1]["score"], 0.5);
    assert_eq!(results[1]["value"], r#"{"vote":"Approved"}"#);
    assert_eq!(found["structuredContent"]["count"], 2);

    // `prefix` narrows, `limit` cuts; `%` and `_` in the query are plain text.
    let narrowed = tool(
        &server,
        key,
        "search_memories",
        json!({ "query": "vote", "prefix": "coordination/", "limit": 1 }),
    )
    .await;
    assert_eq!(
        narrowed["structuredContent"]["results"][0]["key_name"],
        "coordination/tasks/w1/result"
    );
    assert_eq!(narrowed["structuredContent"]["count"], 1);
    let literal = tool(&server, key, "search_memories", json!({ "query": "0% s" })).await;
    assert_eq!(literal["structuredContent"]["count"], 1);
    let nothing = tool(&server, key, "search_memories", json!({ "query": "_x%" })).await;
    assert_eq!(
        nothing["structuredContent"],
        json!({ "count": 0, "results": [] })
    );

    // The direct method: the same arguments, results as `{key, value, score}`.
    let direct_found = direct(
        &server,
        key,
        "search_memories",
        json!({ "query": "REJECTED" }),
    )
    .await;
    assert_eq!(
        direct_found["structuredContent"]["results"],
        json!([{ "key": "coordination/tasks/w2/result", "value": r#"{"vote":"Rejected"}"#, "score": 0.5 }])
    );

    // Bad arguments are invalid params in both dialects.
    for params in [
        json!({}),
        json!({ "query": "" }),
        json!({ "query": 7 }),
        json!({ "query": "a", "limit": 0 }),
    ] {
        let error = rpc_error(
            &server,
            key,
            "tools/call",
            json!({ "name": "search_memories", "arguments": params }),
        )
        .await;
        assert_eq!(error["code"], -32602, "{params}");
        let error = rpc_error(&server, key, "search_memories", params.clone()).await;
        assert_eq!(error["code"], -32602, "{params}");
    }
    stop(server).await;
}
