//! `NearRpc` against wiremock: every method, every error shape, failover.

use std::time::Duration;

use delibera_near::{
    BlockReference, CryptoHash, Error, ExecutionStatus, NearRpc, TxExecutionStatus,
};
use serde_json::json;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

fn view_params(method: &str, args_base64: &str) -> serde_json::Value {
    json!({
        "request_type": "call_function",
        "finality": "final",
        "account_id": "registry.testnet",
        "method_name": method,
        "args_base64": args_base64,
    })
}

#[tokio::test]
async fn call_function_sends_the_exact_query_and_decodes_the_byte_array() {
    let server = MockServer::start().await;
    // {"worker_did":"did:key:z6Mk"} in base64.
    Mock::given(rpc(
        "query",
        view_params(
            "get_worker_by_did",
            "eyJ3b3JrZXJfZGlkIjoiZGlkOmtleTp6Nk1rIn0=",
        ),
    ))
    .respond_with(ok(view_result(&json!({"answer": 42}))))
    .expect(1)
    .mount(&server)
    .await;

    let value: serde_json::Value = client(&server)
        .view(
            &account("registry.testnet"),
            "get_worker_by_did",
            &json!({"worker_did": "did:key:z6Mk"}),
        )
        .await
        .unwrap();
    assert_eq!(value, json!({"answer": 42}));
}

#[tokio::test]
async fn call_function_by_height_sends_block_id_and_returns_raw_bytes() {
    let server = MockServer::start().await;
    Mock::given(rpc(
        "query",
        json!({
            "request_type": "call_function",
            "block_id": 1234,
            "account_id": "registry.testnet",
            "method_name": "raw",
            "args_base64": "",
        }),
    ))
    .respond_with(ok(
        json!({"result": [0, 1, 255], "logs": [], "block_height": 1234, "block_hash": "x"}),
    ))
    .expect(1)
    .mount(&server)
    .await;

    let bytes = client(&server)
        .call_function(
            &account("registry.testnet"),
            "raw",
            b"",
            &BlockReference::Height(1234),
        )
        .await
        .unwrap();
    assert_eq!(bytes, [0, 1, 255]);
}

async fn view_error(result: serde_json::Value) -> Error {
    let server = MockServer::start().await;
    Mock::given(Method("query"))
        .respond_with(ok(result))
        .expect(1)
        .mount(&server)
        .await;
    client(&server)
        .view::<serde_json::Value>(&account("registry.testnet"), "m", &json!({}))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn legacy_in_result_panic_is_a_contract_panic_with_the_message() {
    let error = view_error(json!({
        "error": "wasm execution failed with error: HostError(GuestPanic { panic_msg: \"Coordinator not found\" })",
        "logs": [], "block_height": 1, "block_hash": "x"
    }))
    .await;
    assert_eq!(error.panic_message(), Some("Coordinator not found"));
}

#[tokio::test]
async fn older_function_call_error_wrapping_is_also_a_panic() {
    let error = view_error(json!({
        "error": "wasm execution failed with error: FunctionCallError(HostError(GuestPanic { panic_msg: \"nope\" }))",
        "logs": [], "block_height": 1, "block_hash": "x"
    }))
    .await;
    assert_eq!(error.panic_message(), Some("nope"));
}

#[tokio::test]
async fn legacy_in_result_method_not_found_is_a_view_failure() {
    let text = "wasm execution failed with error: MethodResolveError(MethodNotFound)";
    let error =
        view_error(json!({"error": text, "logs": [], "block_height": 1, "block_hash": "x"})).await;
    match error {
        Error::ViewFailed { message } => assert_eq!(message, text),
        other => panic!("expected ViewFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_result_that_is_not_the_expected_json_is_an_invalid_response() {
    let error =
        view_error(json!({"result": [110, 111], "logs": [], "block_height": 1, "block_hash": "x"}))
            .await;
    assert!(
        matches!(error, Error::InvalidResponse { ref method, .. } if method == "m"),
        "{error:?}"
    );
}

#[tokio::test]
async fn structured_unknown_account_is_typed() {
    let server = MockServer::start().await;
    Mock::given(Method("query"))
        .respond_with(err(
            200,
            handler_error(
                "UNKNOWN_ACCOUNT",
                json!({"requested_account_id": "registry.testnet", "block_height": 1, "block_hash": "x"}),
            ),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server)
        .view::<serde_json::Value>(&account("registry.testnet"), "m", &json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::UnknownAccount { ref account_id } if account_id == "registry.testnet"),
        "{error:?}"
    );
}

#[tokio::test]
async fn structured_contract_execution_error_is_a_panic() {
    let server = MockServer::start().await;
    Mock::given(Method("query"))
        .respond_with(err(
            200,
            handler_error(
                "CONTRACT_EXECUTION_ERROR",
                json!({"vm_error": "wasm execution failed with error: HostError(GuestPanic { panic_msg: \"max_workers must be > 0\" })", "block_height": 1, "block_hash": "x"}),
            ),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server)
        .view::<serde_json::Value>(&account("registry.testnet"), "m", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(error.panic_message(), Some("max_workers must be > 0"));
}

#[tokio::test]
async fn an_unknown_cause_keeps_its_names() {
    let server = MockServer::start().await;
    Mock::given(Method("query"))
        .respond_with(err(
            200,
            handler_error("GARBAGE_COLLECTED_BLOCK", json!({"block_height": 1})),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server)
        .view::<serde_json::Value>(&account("registry.testnet"), "m", &json!({}))
        .await
        .unwrap_err();
    match error {
        Error::Rpc {
            name,
            cause,
            message,
        } => {
            assert_eq!(
                (name.as_str(), cause.as_str()),
                ("HANDLER_ERROR", "GARBAGE_COLLECTED_BLOCK")
            );
            assert_eq!(message, "legacy text");
        }
        other => panic!("expected Rpc, got {other:?}"),
    }
}

#[tokio::test]
async fn a_structured_unknown_access_key_is_typed() {
    let server = MockServer::start().await;
    let public_key = signer().public_key().to_near_string();
    Mock::given(rpc("query", access_key_params()))
        .respond_with(err(
            200,
            handler_error(
                "UNKNOWN_ACCESS_KEY",
                json!({"public_key": public_key, "block_height": 1, "block_hash": "x"}),
            ),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server)
        .view_access_key(
            signer().account_id(),
            &signer().public_key(),
            &BlockReference::Optimistic,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::UnknownAccessKey { public_key: ref key } if *key == public_key),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_request_validation_error_on_http_400_keeps_its_message() {
    let server = MockServer::start().await;
    Mock::given(Method("query"))
        .respond_with(err(
            400,
            json!({"name": "REQUEST_VALIDATION_ERROR", "cause": {"name": "PARSE_ERROR", "info": {"error_message": "unknown field `x`"}}, "code": -32700, "message": "Parse error"}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server)
        .view::<serde_json::Value>(&account("registry.testnet"), "m", &json!({}))
        .await
        .unwrap_err();
    match error {
        Error::Rpc {
            ref name,
            ref cause,
            ref message,
        } => {
            assert_eq!(
                (name.as_str(), cause.as_str(), message.as_str()),
                (
                    "REQUEST_VALIDATION_ERROR",
                    "PARSE_ERROR",
                    "unknown field `x`"
                )
            );
            assert!(!error.is_retryable());
        }
        other => panic!("expected Rpc, got {other:?}"),
    }
}

#[tokio::test]
async fn view_access_key_sends_the_key_and_reads_nonce_and_block_hash() {
    let server = MockServer::start().await;
    Mock::given(rpc("query", access_key_params()))
        .respond_with(access_key(41))
        .expect(1)
        .mount(&server)
        .await;
    let key = client(&server)
        .view_access_key(
            signer().account_id(),
            &signer().public_key(),
            &BlockReference::Optimistic,
        )
        .await
        .unwrap();
    assert_eq!(key.nonce, 41);
    assert_eq!(key.block_hash, block_hash());
    assert_eq!(key.block_height, 100);
    assert_eq!(key.permission, json!("FullAccess"));
}

#[tokio::test]
async fn a_missing_access_key_in_legacy_form_is_typed() {
    let server = MockServer::start().await;
    let public_key = signer().public_key().to_near_string();
    Mock::given(rpc("query", access_key_params()))
        .respond_with(ok(json!({
            "error": format!("access key {public_key} does not exist while viewing"),
            "logs": [], "block_height": 1, "block_hash": "x"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server)
        .view_access_key(
            signer().account_id(),
            &signer().public_key(),
            &BlockReference::Optimistic,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::UnknownAccessKey { public_key: ref key } if *key == public_key),
        "{error:?}"
    );
}

#[tokio::test]
async fn block_reads_height_hash_and_string_timestamp() {
    let server = MockServer::start().await;
    Mock::given(rpc("block", json!({"finality": "final"})))
        .respond_with(ok(json!({
            "author": "node.testnet",
            "header": {"height": 99, "hash": block_hash().to_base58(), "timestamp": 1, "timestamp_nanosec": "1711800000000000000"},
            "chunks": []
        })))
        .expect(1)
        .mount(&server)
        .await;
    let header = client(&server).block(&BlockReference::Final).await.unwrap();
    assert_eq!(header.height, 99);
    assert_eq!(header.hash, block_hash());
    assert_eq!(header.timestamp_nanosec, 1_711_800_000_000_000_000);
}

fn signed_transfer(nonce: u64) -> delibera_near::SignedTransaction {
    signer()
        .sign(
            account("bob.testnet"),
            nonce,
            block_hash(),
            vec![delibera_near::Action::Transfer { deposit: 5 }],
        )
        .unwrap()
}

#[tokio::test]
async fn send_tx_posts_base64_and_wait_until_and_reads_the_outcome() {
    let server = MockServer::start().await;
    let signed = signed_transfer(1);
    Mock::given(rpc(
        "send_tx",
        json!({"signed_tx_base64": signed.to_base64(), "wait_until": "EXECUTED_OPTIMISTIC"}),
    ))
    .respond_with(ok(success_outcome(&signed.hash(), b"\"done\"")))
    .expect(1)
    .mount(&server)
    .await;
    let outcome = client(&server)
        .send_tx(&signed, TxExecutionStatus::ExecutedOptimistic)
        .await
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(
        outcome.status,
        ExecutionStatus::SuccessValue(b"\"done\"".to_vec())
    );
    assert_eq!(outcome.json::<String>().unwrap(), "done");
    assert_eq!(outcome.transaction_hash, Some(signed.hash()));
    assert_eq!(outcome.logs, ["tx log", "receipt log"]);
}

#[tokio::test]
async fn a_failure_status_carries_the_panic_message() {
    let server = MockServer::start().await;
    Mock::given(Method("send_tx"))
        .respond_with(ok(panic_outcome(
            "Only worker owner or admin can deactivate",
        )))
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server)
        .send_tx(&signed_transfer(1), TxExecutionStatus::ExecutedOptimistic)
        .await
        .unwrap()
        .into_result()
        .unwrap_err();
    assert_eq!(
        error.panic_message(),
        Some("Only worker owner or admin can deactivate")
    );
}

#[tokio::test]
async fn other_action_failures_keep_index_and_kind() {
    let server = MockServer::start().await;
    Mock::given(Method("send_tx"))
        .respond_with(ok(json!({
            "status": {"Failure": {"ActionError": {"index": 0, "kind": {"AccountDoesNotExist": {"account_id": "bob.testnet"}}}}}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server)
        .send_tx(&signed_transfer(1), TxExecutionStatus::ExecutedOptimistic)
        .await
        .unwrap()
        .into_result()
        .unwrap_err();
    match error {
        Error::ActionFailed { index, kind } => {
            assert_eq!(index, Some(0));
            assert_eq!(
                kind,
                json!({"AccountDoesNotExist": {"account_id": "bob.testnet"}})
            );
        }
        other => panic!("expected ActionFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_nonce_carries_both_nonces_from_legacy_data() {
    let server = MockServer::start().await;
    Mock::given(Method("send_tx"))
        .respond_with(err(
            200,
            json!({
                "name": "HANDLER_ERROR",
                "cause": {"name": "INVALID_TRANSACTION", "info": {}},
                "code": -32000, "message": "Server error",
                "data": {"TxExecutionError": {"InvalidTxError": {"InvalidNonce": {"tx_nonce": 5, "ak_nonce": 7}}}}
            }),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server)
        .send_tx(&signed_transfer(5), TxExecutionStatus::ExecutedOptimistic)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::InvalidNonce {
                tx_nonce: 5,
                ak_nonce: 7
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn other_invalid_transactions_keep_the_details() {
    let server = MockServer::start().await;
    let data = json!({"TxExecutionError": {"InvalidTxError": {"NotEnoughBalance": {"signer_id": "a", "balance": "1", "cost": "2"}}}});
    Mock::given(Method("send_tx"))
        .respond_with(err(
            200,
            json!({"name": "HANDLER_ERROR", "cause": {"name": "INVALID_TRANSACTION", "info": {}}, "data": data}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server)
        .send_tx(&signed_transfer(5), TxExecutionStatus::ExecutedOptimistic)
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::InvalidTransaction { ref details } if *details == data),
        "{error:?}"
    );
}

#[tokio::test]
async fn timeout_error_on_http_408_is_a_timeout() {
    let server = MockServer::start().await;
    Mock::given(Method("send_tx"))
        .respond_with(err(
            408,
            json!({"name": "HANDLER_ERROR", "cause": {"name": "TIMEOUT_ERROR", "info": {}}, "code": -32000, "message": "Server error", "data": "Timeout"}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server)
        .send_tx(&signed_transfer(1), TxExecutionStatus::ExecutedOptimistic)
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
}

#[tokio::test]
async fn tx_status_sends_hash_sender_and_wait_until() {
    let server = MockServer::start().await;
    let hash = CryptoHash([9; 32]);
    Mock::given(rpc(
        "tx",
        json!({"tx_hash": hash.to_base58(), "sender_account_id": "server.testnet", "wait_until": "FINAL"}),
    ))
    .respond_with(ok(success_outcome(&hash, b"")))
    .expect(1)
    .mount(&server)
    .await;
    let outcome = client(&server)
        .tx_status(&hash, &account("server.testnet"), TxExecutionStatus::Final)
        .await
        .unwrap();
    assert_eq!(outcome.success_value(), Some(&b""[..]));
}

#[tokio::test]
async fn tx_status_of_an_unknown_transaction_is_typed() {
    let server = MockServer::start().await;
    let hash = CryptoHash([9; 32]);
    Mock::given(Method("tx"))
        .respond_with(err(
            200,
            handler_error(
                "UNKNOWN_TRANSACTION",
                json!({"requested_transaction_hash": hash.to_base58()}),
            ),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server)
        .tx_status(&hash, &account("server.testnet"), TxExecutionStatus::Final)
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::UnknownTransaction { ref tx_hash } if *tx_hash == hash.to_base58()),
        "{error:?}"
    );
}

async fn failover_case(first: ResponseTemplate) {
    let first_server = MockServer::start().await;
    let second_server = MockServer::start().await;
    Mock::given(Method("block"))
        .respond_with(first)
        .expect(1)
        .mount(&first_server)
        .await;
    Mock::given(Method("block"))
        .respond_with(ok(
            json!({"header": {"height": 5, "hash": block_hash().to_base58(), "timestamp": 7}}),
        ))
        .expect(1)
        .mount(&second_server)
        .await;
    let rpc = NearRpc::new([first_server.uri(), second_server.uri()]).unwrap();
    let header = rpc.block(&BlockReference::Final).await.unwrap();
    assert_eq!((header.height, header.timestamp_nanosec), (5, 7));
}

#[tokio::test]
async fn a_read_fails_over_to_the_second_url_on_5xx() {
    failover_case(ResponseTemplate::new(502).set_body_string("bad gateway")).await;
}

#[tokio::test]
async fn a_read_fails_over_on_429() {
    failover_case(ResponseTemplate::new(429)).await;
}

#[tokio::test]
async fn a_read_fails_over_on_a_node_internal_error() {
    failover_case(err(500, json!({"name": "INTERNAL_ERROR", "cause": {"name": "INTERNAL_ERROR", "info": {"error_message": "boom"}}}))).await;
}

#[tokio::test]
async fn a_read_fails_over_when_the_first_url_refuses_connections() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = MockServer::start().await;
    Mock::given(Method("block"))
        .respond_with(ok(
            json!({"header": {"height": 5, "hash": block_hash().to_base58()}}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let rpc = NearRpc::new([dead_url, server.uri()]).unwrap();
    assert_eq!(rpc.block(&BlockReference::Final).await.unwrap().height, 5);
}

#[tokio::test]
async fn a_handler_error_does_not_fail_over() {
    let first_server = MockServer::start().await;
    let second_server = MockServer::start().await;
    Mock::given(Method("block"))
        .respond_with(err(200, handler_error("UNKNOWN_BLOCK", json!({}))))
        .expect(1)
        .mount(&first_server)
        .await;
    Mock::given(Method("block"))
        .respond_with(ok(json!({})))
        .expect(0)
        .mount(&second_server)
        .await;
    let rpc = NearRpc::new([first_server.uri(), second_server.uri()]).unwrap();
    let error = rpc.block(&BlockReference::Height(1)).await.unwrap_err();
    assert!(
        matches!(error, Error::Rpc { ref cause, .. } if cause == "UNKNOWN_BLOCK"),
        "{error:?}"
    );
}

#[tokio::test]
async fn send_tx_fails_over_only_when_the_request_was_not_delivered() {
    // 503: not processed, so the second URL gets the same bytes.
    let first_server = MockServer::start().await;
    let second_server = MockServer::start().await;
    let signed = signed_transfer(1);
    Mock::given(Method("send_tx"))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&first_server)
        .await;
    Mock::given(rpc(
        "send_tx",
        json!({"signed_tx_base64": signed.to_base64(), "wait_until": "EXECUTED_OPTIMISTIC"}),
    ))
    .respond_with(ok(success_outcome(&signed.hash(), b"")))
    .expect(1)
    .mount(&second_server)
    .await;
    let rpc_client = NearRpc::new([first_server.uri(), second_server.uri()]).unwrap();
    rpc_client
        .send_tx(&signed, TxExecutionStatus::ExecutedOptimistic)
        .await
        .unwrap();
}

#[tokio::test]
async fn send_tx_does_not_fail_over_on_an_ambiguous_502() {
    let first_server = MockServer::start().await;
    let second_server = MockServer::start().await;
    Mock::given(Method("send_tx"))
        .respond_with(ResponseTemplate::new(502).set_body_string("upstream reset"))
        .expect(1)
        .mount(&first_server)
        .await;
    Mock::given(Method("send_tx"))
        .respond_with(ok(json!({})))
        .expect(0)
        .mount(&second_server)
        .await;
    let rpc_client = NearRpc::new([first_server.uri(), second_server.uri()]).unwrap();
    let error = rpc_client
        .send_tx(&signed_transfer(1), TxExecutionStatus::ExecutedOptimistic)
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::HttpStatus { status: 502, ref body, .. } if body == "upstream reset"),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_client_timeout_is_a_transport_timeout() {
    let server = MockServer::start().await;
    Mock::given(Method("block"))
        .respond_with(ok(json!({})).set_delay(Duration::from_millis(500)))
        .expect(1)
        .mount(&server)
        .await;
    let rpc_client = NearRpc::with_timeout([server.uri()], Duration::from_millis(50)).unwrap();
    let error = rpc_client.block(&BlockReference::Final).await.unwrap_err();
    assert!(
        error.is_timeout() && error.is_retryable() && !error.is_not_delivered(),
        "{error:?}"
    );
}

#[tokio::test]
async fn errors_show_the_origin_never_the_url_path_or_query() {
    let server = MockServer::start().await;
    Mock::given(Method("block"))
        .respond_with(ResponseTemplate::new(500).set_body_string("down"))
        .expect(1)
        .mount(&server)
        .await;
    let url = format!("{}/v1/secret-api-key?apikey=hunter2", server.uri());
    let rpc_client = NearRpc::new([url]).unwrap();
    let error = rpc_client.block(&BlockReference::Final).await.unwrap_err();
    let text = format!("{error} {error:?} {rpc_client:?}");
    assert!(text.contains(&server.uri()), "{text}");
    assert!(
        !text.contains("secret-api-key") && !text.contains("hunter2"),
        "{text}"
    );
}

#[test]
fn rpc_urls_are_validated() {
    assert!(NearRpc::new(Vec::<String>::new()).is_err());
    assert!(NearRpc::new(["not a url"]).is_err());
    assert!(NearRpc::new(["ftp://example.com"]).is_err());
}
