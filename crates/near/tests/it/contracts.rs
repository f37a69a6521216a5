//! The registry and roster clients, and `RpcRegistry`, against wiremock.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use delibera_near::{
    Action, CHANGE_CALL_GAS, CoordinatorContract, CoordinatorRegistration, EndpointUpdate, Error,
    FunctionCall, Registry, RegistryContract, RpcRegistry, TransactionSender, WorkerRegistration,
};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer};

use crate::support::*;

const REGISTRY: &str = "registry.testnet";
const ROSTER: &str = "coordinator.testnet";
const MIN_DEPOSIT: u128 = 100_000_000_000_000_000_000_000;

fn view_params(contract: &str, method: &str, args: &Value) -> Value {
    json!({
        "request_type": "call_function",
        "finality": "final",
        "account_id": contract,
        "method_name": method,
        "args_base64": BASE64.encode(args.to_string()),
    })
}

async fn mount_view(server: &MockServer, contract: &str, method: &str, args: Value, answer: Value) {
    Mock::given(rpc("query", view_params(contract, method, &args)))
        .respond_with(ok(view_result(&answer)))
        .expect(1)
        .mount(server)
        .await;
}

/// Mounts the access key (nonce 1) and a `send_tx` that must carry exactly
/// this call, answering `outcome`.
async fn mount_signed_call(
    server: &MockServer,
    contract: &str,
    method: &str,
    args: Value,
    deposit: u128,
    outcome_value: Value,
) {
    Mock::given(rpc("query", access_key_params()))
        .respond_with(access_key(1))
        .expect(1)
        .mount(server)
        .await;
    let signed = signer()
        .sign(
            account(contract),
            2,
            block_hash(),
            vec![Action::FunctionCall(FunctionCall::json(
                method,
                &args,
                CHANGE_CALL_GAS,
                deposit,
            ))],
        )
        .unwrap();
    Mock::given(rpc(
        "send_tx",
        json!({"signed_tx_base64": signed.to_base64(), "wait_until": "EXECUTED_OPTIMISTIC"}),
    ))
    .respond_with(ok(success_outcome(
        &signed.hash(),
        outcome_value.to_string().as_bytes(),
    )))
    .expect(1)
    .mount(server)
    .await;
}

fn worker_json() -> Value {
    json!({
        "account_id": "alice.testnet",
        "coordinator_did": "did:key:z6MkCoordinator",
        "worker_did": "did:key:z6MkWorker",
        "endpoint_url": "https://worker.example",
        "cvm_id": "cvm-w",
        "registered_at": 1_711_800_000_000_000_000_u64,
        "is_active": true
    })
}

fn coordinator_json() -> Value {
    json!({
        "account_id": "server.testnet",
        "coordinator_did": "did:key:z6MkCoordinator",
        "endpoint_url": "https://coordinator.example",
        "cvm_id": "cvm-c",
        "min_workers": 1,
        "max_workers": 5,
        // near-sdk's U64 form: a decimal string.
        "registered_at": "1711800000000000000",
        "is_active": true
    })
}

fn registry(server: &MockServer) -> RegistryContract {
    RegistryContract::with_sender(
        TransactionSender::new(client(server), signer()),
        account(REGISTRY),
    )
}

fn roster(server: &MockServer) -> CoordinatorContract {
    CoordinatorContract::with_sender(
        TransactionSender::new(client(server), signer()),
        account(ROSTER),
    )
}

#[tokio::test]
async fn worker_lookup_decodes_the_record_and_null_is_none() {
    let server = MockServer::start().await;
    mount_view(
        &server,
        REGISTRY,
        "get_worker_by_did",
        json!({"worker_did": "did:key:z6MkWorker"}),
        worker_json(),
    )
    .await;
    mount_view(
        &server,
        REGISTRY,
        "get_worker_by_did",
        json!({"worker_did": "did:key:z6MkNobody"}),
        Value::Null,
    )
    .await;
    let client = registry(&server);
    let worker = client
        .get_worker_by_did("did:key:z6MkWorker")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(serde_json::to_value(&worker).unwrap(), worker_json());
    assert_eq!(
        client
            .get_worker_by_did("did:key:z6MkNobody")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn coordinator_records_accept_a_string_timestamp() {
    let server = MockServer::start().await;
    mount_view(
        &server,
        REGISTRY,
        "get_coordinator_by_did",
        json!({"coordinator_did": "did:key:z6MkCoordinator"}),
        coordinator_json(),
    )
    .await;
    mount_view(
        &server,
        REGISTRY,
        "list_active_coordinators",
        json!({}),
        json!([coordinator_json()]),
    )
    .await;
    let client = registry(&server);
    let coordinator = client
        .get_coordinator_by_did("did:key:z6MkCoordinator")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(coordinator.registered_at, 1_711_800_000_000_000_000);
    assert_eq!((coordinator.min_workers, coordinator.max_workers), (1, 5));
    assert_eq!(
        client.list_active_coordinators().await.unwrap(),
        [coordinator]
    );
}

#[tokio::test]
async fn list_and_stats_views() {
    let server = MockServer::start().await;
    mount_view(
        &server,
        REGISTRY,
        "list_active_workers",
        json!({}),
        json!([worker_json()]),
    )
    .await;
    mount_view(
        &server,
        REGISTRY,
        "get_workers_for_coordinator",
        json!({"coordinator_did": "did:key:z6MkCoordinator"}),
        json!([worker_json()]),
    )
    .await;
    let stats = json!({"total_coordinators": 2, "active_coordinators": 1, "total_workers": 3, "active_workers": 2});
    mount_view(&server, REGISTRY, "get_stats", json!({}), stats.clone()).await;
    mount_view(
        &server,
        REGISTRY,
        "get_min_deposit",
        json!({}),
        json!(MIN_DEPOSIT.to_string()),
    )
    .await;
    let client = registry(&server);
    assert_eq!(client.list_active_workers().await.unwrap().len(), 1);
    assert_eq!(
        client
            .get_workers_for_coordinator("did:key:z6MkCoordinator")
            .await
            .unwrap()[0]
            .worker_did,
        "did:key:z6MkWorker"
    );
    assert_eq!(
        serde_json::to_value(client.get_stats().await.unwrap()).unwrap(),
        stats
    );
    assert_eq!(client.get_min_deposit().await.unwrap(), MIN_DEPOSIT);
}

#[tokio::test]
async fn register_worker_attaches_the_min_deposit_and_returns_the_record() {
    let server = MockServer::start().await;
    mount_view(
        &server,
        REGISTRY,
        "get_min_deposit",
        json!({}),
        json!(MIN_DEPOSIT.to_string()),
    )
    .await;
    let registration = WorkerRegistration {
        coordinator_did: "did:key:z6MkCoordinator".into(),
        worker_did: "did:key:z6MkWorker".into(),
        endpoint_url: "https://worker.example".into(),
        cvm_id: "cvm-w".into(),
    };
    mount_signed_call(
        &server,
        REGISTRY,
        "register_worker",
        serde_json::to_value(&registration).unwrap(),
        MIN_DEPOSIT,
        worker_json(),
    )
    .await;
    let record = registry(&server)
        .register_worker(&registration)
        .await
        .unwrap();
    assert_eq!(record.worker_did, "did:key:z6MkWorker");
}

#[tokio::test]
async fn register_coordinator_sends_every_argument() {
    let server = MockServer::start().await;
    mount_view(&server, REGISTRY, "get_min_deposit", json!({}), json!("1")).await;
    let registration = CoordinatorRegistration {
        coordinator_did: "did:key:z6MkCoordinator".into(),
        endpoint_url: "https://coordinator.example".into(),
        cvm_id: "cvm-c".into(),
        min_workers: 1,
        max_workers: 5,
    };
    mount_signed_call(
        &server,
        REGISTRY,
        "register_coordinator",
        json!({
            "coordinator_did": "did:key:z6MkCoordinator",
            "cvm_id": "cvm-c",
            "endpoint_url": "https://coordinator.example",
            "max_workers": 5,
            "min_workers": 1
        }),
        1,
        coordinator_json(),
    )
    .await;
    registry(&server)
        .register_coordinator(&registration)
        .await
        .unwrap();
}

#[tokio::test]
async fn update_and_deactivate_calls() {
    for (method, args) in [
        (
            "update_worker_endpoint",
            json!({"endpoint_url": "https://new.example", "worker_did": "did:key:z6MkWorker"}),
        ),
        (
            "deactivate_worker",
            json!({"worker_did": "did:key:z6MkWorker"}),
        ),
        (
            "deactivate_coordinator",
            json!({"coordinator_did": "did:key:z6MkCoordinator"}),
        ),
    ] {
        let server = MockServer::start().await;
        mount_signed_call(&server, REGISTRY, method, args, 0, Value::Null).await;
        let client = registry(&server);
        match method {
            "update_worker_endpoint" => {
                client
                    .update_worker_endpoint("did:key:z6MkWorker", "https://new.example")
                    .await
            }
            "deactivate_worker" => client.deactivate_worker("did:key:z6MkWorker").await,
            _ => {
                client
                    .deactivate_coordinator("did:key:z6MkCoordinator")
                    .await
            }
        }
        .unwrap();
    }
}

#[tokio::test]
async fn a_view_only_client_refuses_change_calls_without_a_request() {
    let server = MockServer::start().await;
    let client = RegistryContract::new(client(&server), account(REGISTRY));
    let error = client
        .deactivate_worker("did:key:z6MkWorker")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NoSigner), "{error:?}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn roster_views_decode_optional_accounts() {
    let server = MockServer::start().await;
    let roster_json = json!([
        {"worker_id": "did:key:z6MkA", "account_id": "alice.testnet", "registered_at": 5, "registered_by": "server.testnet", "active": true},
        {"worker_id": "did:key:z6MkB", "account_id": null, "registered_at": "6", "registered_by": "server.testnet", "active": false}
    ]);
    mount_view(
        &server,
        ROSTER,
        "get_registered_workers",
        json!({}),
        roster_json,
    )
    .await;
    mount_view(&server, ROSTER, "get_worker_count", json!({}), json!(1)).await;
    let client = roster(&server);
    let workers = client.get_registered_workers().await.unwrap();
    assert_eq!(workers[0].account_id, Some(account("alice.testnet")));
    assert_eq!(
        (workers[1].account_id.clone(), workers[1].registered_at),
        (None, 6)
    );
    assert_eq!(client.get_worker_count().await.unwrap(), 1);
}

#[tokio::test]
async fn a_roster_read_optimistically_sees_what_a_write_just_executed() {
    let server = MockServer::start().await;
    let mut optimistic = view_params(ROSTER, "get_registered_workers", &json!({}));
    optimistic["finality"] = json!("optimistic");
    Mock::given(rpc("query", optimistic))
        .respond_with(ok(view_result(&json!([
            {"worker_id": "did:key:z6MkA", "account_id": null, "registered_at": 5, "registered_by": "server.testnet", "active": true}
        ]))))
        .expect(1)
        .mount(&server)
        .await;
    let workers = roster(&server)
        .reading_at(delibera_near::BlockReference::Optimistic)
        .get_registered_workers()
        .await
        .unwrap();
    assert_eq!(workers.len(), 1);
}

#[tokio::test]
async fn roster_register_sends_null_for_a_missing_account() {
    let server = MockServer::start().await;
    mount_signed_call(
        &server,
        ROSTER,
        "register_worker",
        json!({"account_id": null, "worker_id": "did:key:z6MkA"}),
        0,
        Value::Null,
    )
    .await;
    roster(&server)
        .register_worker("did:key:z6MkA", None)
        .await
        .unwrap();
}

#[tokio::test]
async fn roster_remove_by_a_non_owner_is_the_contract_panic() {
    let server = MockServer::start().await;
    Mock::given(rpc("query", access_key_params()))
        .respond_with(access_key(1))
        .expect(1)
        .mount(&server)
        .await;
    let message = delibera_near::messages::only_owner("owner.testnet", "server.testnet");
    Mock::given(Method("send_tx"))
        .respond_with(ok(panic_outcome(&message)))
        .expect(1)
        .mount(&server)
        .await;
    let error = roster(&server)
        .remove_worker("did:key:z6MkA")
        .await
        .unwrap_err();
    assert_eq!(error.panic_message(), Some(message.as_str()));
}

fn rpc_registry(server: &MockServer) -> RpcRegistry {
    RpcRegistry::new(registry(server), roster(server))
}

#[tokio::test]
async fn rpc_registry_updates_a_worker_endpoint_in_place() {
    let server = MockServer::start().await;
    mount_signed_call(
        &server,
        REGISTRY,
        "update_worker_endpoint",
        json!({"endpoint_url": "https://new.example", "worker_did": "did:key:z6MkWorker"}),
        0,
        Value::Null,
    )
    .await;
    rpc_registry(&server)
        .update_worker_endpoint(&EndpointUpdate {
            did: "did:key:z6MkWorker".into(),
            endpoint_url: "https://new.example".into(),
            cvm_id: None,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn rpc_registry_moves_a_coordinator_by_re_registering_it() {
    let server = MockServer::start().await;
    mount_view(
        &server,
        REGISTRY,
        "get_coordinator_by_did",
        json!({"coordinator_did": "did:key:z6MkCoordinator"}),
        coordinator_json(),
    )
    .await;
    mount_view(&server, REGISTRY, "get_min_deposit", json!({}), json!("3")).await;
    mount_signed_call(
        &server,
        REGISTRY,
        "register_coordinator",
        json!({
            "coordinator_did": "did:key:z6MkCoordinator",
            "cvm_id": "cvm-c",
            "endpoint_url": "https://moved.example",
            "max_workers": 5,
            "min_workers": 1
        }),
        3,
        coordinator_json(),
    )
    .await;
    rpc_registry(&server)
        .update_coordinator_endpoint(&EndpointUpdate {
            did: "did:key:z6MkCoordinator".into(),
            endpoint_url: "https://moved.example".into(),
            cvm_id: None,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn rpc_registry_never_re_registers_a_record_it_does_not_own() {
    let server = MockServer::start().await;
    let mut alices = coordinator_json();
    alices["account_id"] = json!("alice.testnet");
    mount_view(
        &server,
        REGISTRY,
        "get_coordinator_by_did",
        json!({"coordinator_did": "did:key:z6MkCoordinator"}),
        alices,
    )
    .await;
    // No change call is mounted: one sent would fail as something else.
    let error = rpc_registry(&server)
        .update_coordinator_endpoint(&EndpointUpdate {
            did: "did:key:z6MkCoordinator".into(),
            endpoint_url: "https://moved.example".into(),
            cvm_id: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&error, delibera_near::Error::WouldReregister { did, reason }
            if did == "did:key:z6MkCoordinator"
                && reason.contains("alice.testnet")
                && reason.contains("server.testnet")),
        "{error:?}"
    );
}

#[tokio::test]
async fn rpc_registry_updates_a_worker_in_place_when_its_cvm_id_is_unchanged() {
    let server = MockServer::start().await;
    mount_view(
        &server,
        REGISTRY,
        "get_worker_by_did",
        json!({"worker_did": "did:key:z6MkWorker"}),
        json!({
            "account_id": "alice.testnet",
            "coordinator_did": "did:key:z6MkCoordinator",
            "worker_did": "did:key:z6MkWorker",
            "endpoint_url": "https://old.example",
            "cvm_id": "cvm-w",
            "registered_at": "1711800000000000000",
            "is_active": true
        }),
    )
    .await;
    mount_signed_call(
        &server,
        REGISTRY,
        "update_worker_endpoint",
        json!({"endpoint_url": "https://new.example", "worker_did": "did:key:z6MkWorker"}),
        0,
        Value::Null,
    )
    .await;
    rpc_registry(&server)
        .update_worker_endpoint(&EndpointUpdate {
            did: "did:key:z6MkWorker".into(),
            endpoint_url: "https://new.example".into(),
            cvm_id: Some("cvm-w".into()),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn rpc_registry_reports_a_missing_coordinator_with_the_contract_text() {
    let server = MockServer::start().await;
    mount_view(
        &server,
        REGISTRY,
        "get_coordinator_by_did",
        json!({"coordinator_did": "did:key:z6MkNobody"}),
        Value::Null,
    )
    .await;
    let error = rpc_registry(&server)
        .update_coordinator_endpoint(&EndpointUpdate {
            did: "did:key:z6MkNobody".into(),
            endpoint_url: "https://x".into(),
            cvm_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        error.panic_message(),
        Some(delibera_near::messages::COORDINATOR_NOT_FOUND)
    );
}
