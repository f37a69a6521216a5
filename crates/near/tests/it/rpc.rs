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

/// A read of the registry, as a table case names it.
#[derive(Clone, Copy)]
enum Read {
    /// `view` of method `m` on `registry.testnet`.
    View,
    /// `view_access_key` of the signer's key.
    AccessKey,
}

/// Every error answer to a read, legacy (in the result) and structured: the
/// error it becomes.
#[tokio::test]
async fn every_read_error_is_classified() {
    struct Case {
        name: &'static str,
        read: Read,
        answer: ResponseTemplate,
        expected: fn(&Error) -> bool,
    }
    let in_result =
        |error: &str| ok(json!({"error": error, "logs": [], "block_height": 1, "block_hash": "x"}));
    let public_key = signer().public_key().to_near_string();
    let cases = [
        Case {
            name: "legacy in-result panic: a contract panic with its message",
            read: Read::View,
            answer: in_result(
                "wasm execution failed with error: HostError(GuestPanic { panic_msg: \"Coordinator not found\" })",
            ),
            expected: |error| error.panic_message() == Some("Coordinator not found"),
        },
        Case {
            name: "older FunctionCallError wrapping: also a panic",
            read: Read::View,
            answer: in_result(
                "wasm execution failed with error: FunctionCallError(HostError(GuestPanic { panic_msg: \"nope\" }))",
            ),
            expected: |error| error.panic_message() == Some("nope"),
        },
        Case {
            name: "legacy in-result method not found: a view failure with the text",
            read: Read::View,
            answer: in_result(
                "wasm execution failed with error: MethodResolveError(MethodNotFound)",
            ),
            expected: |error| {
                matches!(error, Error::ViewFailed { message }
                    if message == "wasm execution failed with error: MethodResolveError(MethodNotFound)")
            },
        },
        Case {
            name: "a result that is not the expected JSON: an invalid response",
            read: Read::View,
            answer: ok(
                json!({"result": [110, 111], "logs": [], "block_height": 1, "block_hash": "x"}),
            ),
            expected: |error| matches!(error, Error::InvalidResponse { method, .. } if method == "m"),
        },
        Case {
            name: "structured UNKNOWN_ACCOUNT: typed",
            read: Read::View,
            answer: err(
                200,
                handler_error(
                    "UNKNOWN_ACCOUNT",
                    json!({"requested_account_id": "registry.testnet", "block_height": 1, "block_hash": "x"}),
                ),
            ),
            expected: |error| matches!(error, Error::UnknownAccount { account_id } if account_id == "registry.testnet"),
        },
        Case {
            name: "structured CONTRACT_EXECUTION_ERROR: a panic",
            read: Read::View,
            answer: err(
                200,
                handler_error(
                    "CONTRACT_EXECUTION_ERROR",
                    json!({"vm_error": "wasm execution failed with error: HostError(GuestPanic { panic_msg: \"max_workers must be > 0\" })", "block_height": 1, "block_hash": "x"}),
                ),
            ),
            expected: |error| error.panic_message() == Some("max_workers must be > 0"),
        },
        Case {
            name: "an unknown cause: keeps its names and the legacy text",
            read: Read::View,
            answer: err(
                200,
                handler_error("GARBAGE_COLLECTED_BLOCK", json!({"block_height": 1})),
            ),
            expected: |error| {
                matches!(error, Error::Rpc { name, cause, message }
                    if name == "HANDLER_ERROR" && cause == "GARBAGE_COLLECTED_BLOCK" && message == "legacy text")
            },
        },
        Case {
            name: "REQUEST_VALIDATION_ERROR on HTTP 400: keeps its message, not retryable",
            read: Read::View,
            answer: err(
                400,
                json!({"name": "REQUEST_VALIDATION_ERROR", "cause": {"name": "PARSE_ERROR", "info": {"error_message": "unknown field `x`"}}, "code": -32700, "message": "Parse error"}),
            ),
            expected: |error| {
                matches!(error, Error::Rpc { name, cause, message }
                    if name == "REQUEST_VALIDATION_ERROR" && cause == "PARSE_ERROR" && message == "unknown field `x`")
                    && !error.is_retryable()
            },
        },
        Case {
            name: "structured UNKNOWN_ACCESS_KEY: typed",
            read: Read::AccessKey,
            answer: err(
                200,
                handler_error(
                    "UNKNOWN_ACCESS_KEY",
                    json!({"public_key": public_key, "block_height": 1, "block_hash": "x"}),
                ),
            ),
            expected: |error| {
                matches!(error, Error::UnknownAccessKey { public_key }
                    if *public_key == signer().public_key().to_near_string())
            },
        },
        Case {
            name: "legacy missing access key: typed",
            read: Read::AccessKey,
            answer: in_result(&format!(
                "access key {public_key} does not exist while viewing"
            )),
            expected: |error| {
                matches!(error, Error::UnknownAccessKey { public_key }
                    if *public_key == signer().public_key().to_near_string())
            },
        },
    ];
    for case in cases {
        let server = MockServer::start().await;
        let request = match case.read {
            Read::View => Mock::given(Method("query")),
            Read::AccessKey => Mock::given(rpc("query", access_key_params())),
        };
        request
            .respond_with(case.answer)
            .expect(1)
            .named(case.name)
            .mount(&server)
            .await;
        let client = client(&server);
        let error = match case.read {
            Read::View => client
                .view::<serde_json::Value>(&account("registry.testnet"), "m", &json!({}))
                .await
                .err(),
            Read::AccessKey => client
                .view_access_key(
                    signer().account_id(),
                    &signer().public_key(),
                    &BlockReference::Optimistic,
                )
                .await
                .err(),
        };
        match error {
            Some(error) => assert!((case.expected)(&error), "{}: got {error:?}", case.name),
            None => panic!("{}: succeeded", case.name),
        }
        server.verify().await;
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

/// Every failure of a sent transaction, in its outcome or as an RPC error:
/// the error it becomes.
#[tokio::test]
async fn every_transaction_failure_is_classified() {
    let data = json!({"TxExecutionError": {"InvalidTxError": {"NotEnoughBalance": {"signer_id": "a", "balance": "1", "cost": "2"}}}});
    type Expected = fn(&Error) -> bool;
    let cases: [(&str, ResponseTemplate, Expected); 5] = [
        (
            "a failure status: the panic message",
            ok(panic_outcome("Only worker owner or admin can deactivate")),
            |error| error.panic_message() == Some("Only worker owner or admin can deactivate"),
        ),
        (
            "another action failure: index and kind kept",
            ok(json!({
                "status": {"Failure": {"ActionError": {"index": 0, "kind": {"AccountDoesNotExist": {"account_id": "bob.testnet"}}}}}
            })),
            |error| {
                matches!(error, Error::ActionFailed { index: Some(0), kind }
                    if *kind == json!({"AccountDoesNotExist": {"account_id": "bob.testnet"}}))
            },
        ),
        (
            "InvalidNonce in the legacy data: both nonces",
            err(
                200,
                json!({
                    "name": "HANDLER_ERROR",
                    "cause": {"name": "INVALID_TRANSACTION", "info": {}},
                    "code": -32000, "message": "Server error",
                    "data": {"TxExecutionError": {"InvalidTxError": {"InvalidNonce": {"tx_nonce": 5, "ak_nonce": 7}}}}
                }),
            ),
            |error| {
                matches!(
                    error,
                    Error::InvalidNonce {
                        tx_nonce: 5,
                        ak_nonce: 7
                    }
                )
            },
        ),
        (
            "another invalid transaction: the details kept",
            err(
                200,
                json!({"name": "HANDLER_ERROR", "cause": {"name": "INVALID_TRANSACTION", "info": {}}, "data": data}),
            ),
            |error| {
                matches!(error, Error::InvalidTransaction { details }
                    if *details == json!({"TxExecutionError": {"InvalidTxError": {"NotEnoughBalance": {"signer_id": "a", "balance": "1", "cost": "2"}}}}))
            },
        ),
        (
            "TIMEOUT_ERROR on HTTP 408: a timeout",
            err(
                408,
                json!({"name": "HANDLER_ERROR", "cause": {"name": "TIMEOUT_ERROR", "info": {}}, "code": -32000, "message": "Server error", "data": "Timeout"}),
            ),
            |error| error.is_timeout(),
        ),
    ];
    for (name, answer, expected) in cases {
        let server = MockServer::start().await;
        Mock::given(Method("send_tx"))
            .respond_with(answer)
            .expect(1)
            .named(name)
            .mount(&server)
            .await;
        let sent = client(&server)
            .send_tx(&signed_transfer(5), TxExecutionStatus::ExecutedOptimistic)
            .await
            .and_then(|outcome| outcome.into_result());
        match sent {
            Err(error) => assert!(expected(&error), "{name}: got {error:?}"),
            Ok(outcome) => panic!("{name}: succeeded with {outcome:?}"),
        }
        server.verify().await;
    }
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

/// Each answer after which a read tries the next URL.
#[tokio::test]
async fn a_read_fails_over_to_the_second_url() {
    let cases = [
        (
            "on a 5xx",
            ResponseTemplate::new(502).set_body_string("bad gateway"),
        ),
        ("on a 429", ResponseTemplate::new(429)),
        (
            "on a node's internal error",
            err(
                500,
                json!({"name": "INTERNAL_ERROR", "cause": {"name": "INTERNAL_ERROR", "info": {"error_message": "boom"}}}),
            ),
        ),
    ];
    for (name, first) in cases {
        let first_server = MockServer::start().await;
        let second_server = MockServer::start().await;
        Mock::given(Method("block"))
            .respond_with(first)
            .expect(1)
            .named(format!("first URL, {name}"))
            .mount(&first_server)
            .await;
        Mock::given(Method("block"))
            .respond_with(ok(
                json!({"header": {"height": 5, "hash": block_hash().to_base58(), "timestamp": 7}}),
            ))
            .expect(1)
            .named(format!("second URL, {name}"))
            .mount(&second_server)
            .await;
        let rpc = NearRpc::new([first_server.uri(), second_server.uri()]).unwrap();
        let header = rpc.block(&BlockReference::Final).await;
        assert!(
            matches!(&header, Ok(header) if (header.height, header.timestamp_nanosec) == (5, 7)),
            "{name}: {header:?}"
        );
        first_server.verify().await;
        second_server.verify().await;
    }
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
