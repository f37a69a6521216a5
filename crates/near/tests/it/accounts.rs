//! Which keys speak for an account, and who owns the roster: over RPC
//! (wiremock, one case per answer) and in the local registry.

use delibera_identity::Keypair;
use delibera_near::{
    Accounts, CoordinatorContract, KeyPermission, LocalRegistry, RpcAccounts, implicit_account,
};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

fn key() -> Keypair {
    Keypair::from_seed(&[9; 32])
}

fn params() -> Value {
    json!({
        "request_type": "view_access_key",
        "finality": "final",
        "account_id": "alice.testnet",
        "public_key": key().public_key().to_near_string(),
    })
}

fn accounts(server: &MockServer) -> RpcAccounts {
    let rpc = client(server);
    RpcAccounts::new(
        rpc.clone(),
        CoordinatorContract::new(rpc, account("coordinator.testnet")),
    )
}

fn permission(permission: Value) -> ResponseTemplate {
    ok(json!({
        "nonce": 5,
        "permission": permission,
        "block_height": 100,
        "block_hash": block_hash().to_base58(),
    }))
}

#[tokio::test]
async fn every_view_access_key_answer_becomes_a_permission_or_an_error() {
    let legacy_missing = ok(json!({
        "error": format!("access key {} does not exist while viewing", key().public_key().to_near_string()),
        "logs": [], "block_height": 1, "block_hash": "x",
    }));
    let unknown_account = err(
        200,
        handler_error(
            "UNKNOWN_ACCOUNT",
            json!({"requested_account_id": "alice.testnet", "block_height": 1, "block_hash": "x"}),
        ),
    );
    type Expect = fn(&delibera_near::Result<Option<KeyPermission>>) -> bool;
    let cases: [(&str, ResponseTemplate, Expect); 6] = [
        ("full access", permission(json!("FullAccess")), |answer| {
            matches!(answer, Ok(Some(KeyPermission::FullAccess)))
        }),
        (
            "function call",
            permission(
                json!({"FunctionCall": {"allowance": null, "receiver_id": "x.testnet", "method_names": []}}),
            ),
            |answer| matches!(answer, Ok(Some(KeyPermission::FunctionCall))),
        ),
        (
            "no such key (legacy in-result error)",
            legacy_missing,
            |answer| matches!(answer, Ok(None)),
        ),
        ("no such account", unknown_account, |answer| {
            matches!(answer, Ok(None))
        }),
        (
            "an unknown permission shape",
            permission(json!(7)),
            |answer| matches!(answer, Err(delibera_near::Error::InvalidResponse { .. })),
        ),
        ("the node fails", ResponseTemplate::new(503), |answer| {
            answer.as_ref().is_err_and(|error| error.is_retryable())
        }),
    ];
    for (name, answer, expected) in cases {
        let server = MockServer::start().await;
        Mock::given(rpc("query", params()))
            .respond_with(answer)
            .mount(&server)
            .await;
        let answer = accounts(&server)
            .key_permission(&account("alice.testnet"), &key().public_key())
            .await;
        assert!(expected(&answer), "{name}: {answer:?}");
    }
}

#[tokio::test]
async fn the_roster_owner_is_the_coordinator_contracts_get_owner() {
    let server = MockServer::start().await;
    Mock::given(rpc(
        "query",
        json!({
            "request_type": "call_function",
            "finality": "final",
            "account_id": "coordinator.testnet",
            "method_name": "get_owner",
            "args_base64": "e30=",
        }),
    ))
    .respond_with(ok(view_result(&json!("mydao.testnet"))))
    .expect(1)
    .mount(&server)
    .await;
    assert_eq!(
        accounts(&server).roster_owner().await.unwrap(),
        account("mydao.testnet")
    );
}

#[tokio::test]
async fn local_accounts_hold_the_keys_given_them_and_their_implicit_account() {
    let registry = LocalRegistry::in_memory(account("protocol-api.local")).unwrap();
    let alice = account("alice.testnet");
    let (full, limited) = (key(), Keypair::from_seed(&[10; 32]));
    assert_eq!(
        registry
            .key_permission(&alice, &full.public_key())
            .await
            .unwrap(),
        None
    );
    registry
        .add_access_key(&alice, &full.public_key(), KeyPermission::FullAccess)
        .unwrap();
    registry
        .add_access_key(&alice, &limited.public_key(), KeyPermission::FunctionCall)
        .unwrap();
    assert_eq!(
        registry
            .key_permission(&alice, &full.public_key())
            .await
            .unwrap(),
        Some(KeyPermission::FullAccess)
    );
    assert_eq!(
        registry
            .key_permission(&alice, &limited.public_key())
            .await
            .unwrap(),
        Some(KeyPermission::FunctionCall)
    );
    assert_eq!(
        registry
            .key_permission(&account("bob.testnet"), &full.public_key())
            .await
            .unwrap(),
        None
    );
    // Every key is a full-access key of its implicit account.
    let implicit = implicit_account(&limited.public_key());
    assert_eq!(implicit.as_str().len(), 64);
    assert_eq!(
        registry
            .key_permission(&implicit, &limited.public_key())
            .await
            .unwrap(),
        Some(KeyPermission::FullAccess)
    );
    assert_eq!(
        registry.roster_owner().await.unwrap(),
        account("protocol-api.local")
    );
}
