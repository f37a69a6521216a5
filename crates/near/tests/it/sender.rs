//! `TransactionSender`: nonce refresh, and never sending twice after a timeout.

use std::time::Duration;

use delibera_near::{Action, Error, FunctionCall, NearRpc, SignedTransaction, TransactionSender};
use serde_json::json;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

fn call() -> FunctionCall {
    FunctionCall::json("ping", &json!({"n": 1}), 30_000_000_000_000, 0)
}

/// What the sender must sign for `nonce`, to match `send_tx` bodies exactly.
fn expected(nonce: u64) -> SignedTransaction {
    signer()
        .sign(
            account("app.testnet"),
            nonce,
            block_hash(),
            vec![Action::FunctionCall(call())],
        )
        .unwrap()
}

fn send_params(signed: &SignedTransaction) -> serde_json::Value {
    json!({"signed_tx_base64": signed.to_base64(), "wait_until": "EXECUTED_OPTIMISTIC"})
}

fn tx_params(signed: &SignedTransaction) -> serde_json::Value {
    json!({"tx_hash": signed.hash().to_base58(), "sender_account_id": "server.testnet", "wait_until": "EXECUTED_OPTIMISTIC"})
}

fn timeout_error() -> ResponseTemplate {
    err(
        408,
        json!({"name": "HANDLER_ERROR", "cause": {"name": "TIMEOUT_ERROR", "info": {}}, "code": -32000, "message": "Server error", "data": "Timeout"}),
    )
}

fn invalid_nonce(tx_nonce: u64, ak_nonce: u64) -> ResponseTemplate {
    err(
        200,
        json!({
            "name": "HANDLER_ERROR",
            "cause": {"name": "INVALID_TRANSACTION", "info": {}},
            "data": {"TxExecutionError": {"InvalidTxError": {"InvalidNonce": {"tx_nonce": tx_nonce, "ak_nonce": ak_nonce}}}}
        }),
    )
}

fn sender(server: &MockServer) -> TransactionSender {
    TransactionSender::new(client(server), signer())
}

async fn mount_access_key(server: &MockServer, nonce: u64, times: u64) {
    Mock::given(rpc("query", access_key_params()))
        .respond_with(access_key(nonce))
        .expect(times)
        .mount(server)
        .await;
}

#[tokio::test]
async fn signs_with_the_access_key_nonce_plus_one_and_its_block_hash() {
    let server = MockServer::start().await;
    mount_access_key(&server, 41, 1).await;
    let signed = expected(42);
    Mock::given(rpc("send_tx", send_params(&signed)))
        .respond_with(ok(success_outcome(&signed.hash(), b"7")))
        .expect(1)
        .mount(&server)
        .await;
    let outcome = sender(&server)
        .function_call(&account("app.testnet"), call())
        .await
        .unwrap();
    assert_eq!(outcome.json::<u32>().unwrap(), 7);
}

#[tokio::test]
async fn invalid_nonce_refreshes_the_key_and_retries_once() {
    let server = MockServer::start().await;
    // The first read says 5; by the retry another transaction moved it to 9.
    Mock::given(rpc("query", access_key_params()))
        .respond_with(access_key(5))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    mount_access_key(&server, 9, 1).await;
    Mock::given(rpc("send_tx", send_params(&expected(6))))
        .respond_with(invalid_nonce(6, 9))
        .expect(1)
        .mount(&server)
        .await;
    let second = expected(10);
    Mock::given(rpc("send_tx", send_params(&second)))
        .respond_with(ok(success_outcome(&second.hash(), b"")))
        .expect(1)
        .mount(&server)
        .await;
    sender(&server)
        .function_call(&account("app.testnet"), call())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_second_invalid_nonce_is_returned() {
    let server = MockServer::start().await;
    mount_access_key(&server, 5, 2).await;
    Mock::given(Method("send_tx"))
        .respond_with(invalid_nonce(6, 8))
        .expect(2)
        .mount(&server)
        .await;
    let error = sender(&server)
        .function_call(&account("app.testnet"), call())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::InvalidNonce {
                tx_nonce: 6,
                ak_nonce: 8
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn after_a_timeout_the_transaction_is_looked_up_not_resent() {
    let server = MockServer::start().await;
    mount_access_key(&server, 1, 1).await;
    let signed = expected(2);
    Mock::given(Method("send_tx"))
        .respond_with(timeout_error())
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(rpc("tx", tx_params(&signed)))
        .respond_with(ok(success_outcome(&signed.hash(), b"\"ok\"")))
        .expect(1)
        .mount(&server)
        .await;
    let outcome = sender(&server)
        .function_call(&account("app.testnet"), call())
        .await
        .unwrap();
    assert_eq!(outcome.json::<String>().unwrap(), "ok");
}

#[tokio::test]
async fn a_client_side_timeout_also_looks_up_by_hash() {
    let server = MockServer::start().await;
    mount_access_key(&server, 1, 1).await;
    let signed = expected(2);
    Mock::given(Method("send_tx"))
        .respond_with(
            ok(success_outcome(&signed.hash(), b"")).set_delay(Duration::from_millis(600)),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(rpc("tx", tx_params(&signed)))
        .respond_with(ok(success_outcome(&signed.hash(), b"")))
        .expect(1)
        .mount(&server)
        .await;
    let rpc_client = NearRpc::with_timeout([server.uri()], Duration::from_millis(150)).unwrap();
    TransactionSender::new(rpc_client, signer())
        .function_call(&account("app.testnet"), call())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unknown_transaction_after_a_timeout_is_resent_with_identical_bytes() {
    let server = MockServer::start().await;
    mount_access_key(&server, 1, 1).await;
    let signed = expected(2);
    Mock::given(rpc("send_tx", send_params(&signed)))
        .respond_with(timeout_error())
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(rpc("send_tx", send_params(&signed)))
        .respond_with(ok(success_outcome(&signed.hash(), b"")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(rpc("tx", tx_params(&signed)))
        .respond_with(err(
            200,
            handler_error(
                "UNKNOWN_TRANSACTION",
                json!({"requested_transaction_hash": signed.hash().to_base58()}),
            ),
        ))
        .expect(1)
        .mount(&server)
        .await;
    sender(&server)
        .function_call(&account("app.testnet"), call())
        .await
        .unwrap();
}

#[tokio::test]
async fn when_the_lookup_also_times_out_the_hash_is_reported_pending() {
    let server = MockServer::start().await;
    mount_access_key(&server, 1, 1).await;
    let signed = expected(2);
    Mock::given(Method("send_tx"))
        .respond_with(timeout_error())
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(rpc("tx", tx_params(&signed)))
        .respond_with(timeout_error())
        .expect(1)
        .mount(&server)
        .await;
    let error = sender(&server)
        .function_call(&account("app.testnet"), call())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::TransactionPending { ref tx_hash } if *tx_hash == signed.hash().to_base58()),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_ambiguous_5xx_on_send_looks_up_instead_of_trying_the_next_url() {
    let first = MockServer::start().await;
    let second = MockServer::start().await;
    mount_access_key(&first, 1, 1).await;
    let signed = expected(2);
    Mock::given(Method("send_tx"))
        .respond_with(ResponseTemplate::new(500).set_body_string("oops"))
        .expect(1)
        .mount(&first)
        .await;
    Mock::given(Method("send_tx"))
        .respond_with(ok(json!({})))
        .expect(0)
        .mount(&second)
        .await;
    Mock::given(rpc("tx", tx_params(&signed)))
        .respond_with(ok(success_outcome(&signed.hash(), b"")))
        .expect(1)
        .mount(&first)
        .await;
    let rpc_client = NearRpc::new([first.uri(), second.uri()]).unwrap();
    TransactionSender::new(rpc_client, signer())
        .function_call(&account("app.testnet"), call())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_contract_panic_is_returned_without_any_retry() {
    let server = MockServer::start().await;
    mount_access_key(&server, 1, 1).await;
    Mock::given(Method("send_tx"))
        .respond_with(ok(panic_outcome("Worker not found")))
        .expect(1)
        .mount(&server)
        .await;
    let error = sender(&server)
        .function_call(&account("app.testnet"), call())
        .await
        .unwrap_err();
    assert_eq!(error.panic_message(), Some("Worker not found"));
}

#[test]
fn the_signer_never_shows_its_secret() {
    let secret = signer_secret();
    let signer =
        delibera_near::NearSigner::from_secret_key(account("server.testnet"), &secret).unwrap();
    let shown = format!("{signer:?}");
    assert!(shown.contains("server.testnet"));
    let encoded = secret.trim_start_matches("ed25519:");
    assert!(!shown.contains(encoded), "{shown}");
}

fn signer_secret() -> String {
    delibera_identity::Keypair::from_seed(&[7; 32])
        .to_near_secret_string()
        .to_string()
}

#[tokio::test]
async fn calls_made_at_once_sign_different_nonces() {
    let server = MockServer::start().await;
    // Both calls read the key before either transaction executes.
    Mock::given(rpc("query", access_key_params()))
        .respond_with(access_key(5))
        .expect(3)
        .mount(&server)
        .await;
    Mock::given(Method("send_tx"))
        .respond_with(ok(success_outcome(&expected(6).hash(), b"")))
        .expect(3)
        .mount(&server)
        .await;
    let sender = sender(&server);
    let clone = sender.clone();
    let app = account("app.testnet");
    let (first, second, third) = tokio::join!(
        sender.function_call(&app, call()),
        clone.function_call(&app, call()),
        sender.function_call(&app, call()),
    );
    for outcome in [first, second, third] {
        outcome.unwrap();
    }
    let mut nonces: Vec<u64> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter_map(|request| {
            let body: serde_json::Value = serde_json::from_slice(&request.body).ok()?;
            let signed = body["params"]["signed_tx_base64"].as_str()?;
            Some(
                SignedTransaction::from_base64(signed)
                    .unwrap()
                    .transaction()
                    .nonce,
            )
        })
        .collect();
    nonces.sort_unstable();
    assert_eq!(nonces, [6, 7, 8]);
}
