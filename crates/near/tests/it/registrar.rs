//! `Registrar`: the chain registrar verifies what the owner's wallet signed
//! (the local registry plays the contract's state, wiremock the `tx` method).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use delibera_near::{
    AccountId, ChainRegistrar, CoordinatorClaim, CoordinatorRecord, CoordinatorRegistration,
    CryptoHash, EndpointUpdate, Error, LocalRegistry, RegisteredWorker, Registrar, Registry,
    Unconfirmed, WorkerClaim, WorkerRecord, WorkerRegistration,
};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

const OWNER: &str = "alice.testnet";
const REGISTRY_ID: &str = "registry.agents-coordinator.testnet";
const ROSTER_ID: &str = "coordinator.agents-coordinator.testnet";
const COORDINATOR: &str = "did:key:z6MkCoordinatorA";
const WORKER: &str = "did:key:z6MkWorkerA";
const CONTRACT: &str = "mydao.coord-factory.agents-coordinator.testnet";

fn chain() -> Arc<LocalRegistry> {
    Arc::new(LocalRegistry::in_memory(account("admin.testnet")).unwrap())
}

fn coordinator_registration() -> CoordinatorRegistration {
    CoordinatorRegistration {
        coordinator_did: COORDINATOR.into(),
        endpoint_url: "https://c.example".into(),
        cvm_id: "cvm-c".into(),
        min_workers: 1,
        max_workers: 5,
    }
}

fn worker_registration() -> WorkerRegistration {
    WorkerRegistration {
        coordinator_did: COORDINATOR.into(),
        worker_did: WORKER.into(),
        endpoint_url: "https://w.example".into(),
        cvm_id: "cvm-w".into(),
    }
}

fn worker_claim(tx_hash: Option<&CryptoHash>) -> WorkerClaim {
    WorkerClaim {
        owner: account(OWNER),
        registration: worker_registration(),
        tx_hash: tx_hash.map(CryptoHash::to_base58),
    }
}

fn registrar(chain: &Arc<LocalRegistry>, rpc: &MockServer) -> ChainRegistrar {
    ChainRegistrar::new(
        chain.clone(),
        client(rpc),
        vec![account(REGISTRY_ID), account(ROSTER_ID)],
    )
    .with_settle_time(Duration::ZERO)
}

fn tx(hash: &CryptoHash, signer: &str, receiver: &str, status: Value) -> Value {
    json!({
        "final_execution_status": "EXECUTED_OPTIMISTIC",
        "status": status,
        "transaction": {"hash": hash.to_base58(), "signer_id": signer, "receiver_id": receiver},
        "transaction_outcome": {"id": hash.to_base58(), "outcome": {"logs": []}},
        "receipts_outcome": []
    })
}

fn success() -> Value {
    json!({"SuccessValue": base64::engine::general_purpose::STANDARD.encode(b"")})
}

async fn mount_tx(rpc: &MockServer, hash: &CryptoHash, answer: ResponseTemplate) {
    Mock::given(support_tx(hash))
        .respond_with(answer)
        .mount(rpc)
        .await;
}

fn support_tx(hash: &CryptoHash) -> Rpc {
    rpc(
        "tx",
        json!({"tx_hash": hash.to_base58(), "sender_account_id": OWNER, "wait_until": "EXECUTED_OPTIMISTIC"}),
    )
}

/// The chain state after the owner's wallet signed both registrations.
fn signed_chain(worker_owner: &str, worker_endpoint: &str) -> Arc<LocalRegistry> {
    let chain = chain();
    chain
        .register_coordinator_as(&account(OWNER), &coordinator_registration())
        .unwrap();
    let mut registration = worker_registration();
    registration.endpoint_url = worker_endpoint.into();
    chain
        .register_worker_as(&account(worker_owner), &registration)
        .unwrap();
    chain
}

fn unconfirmed(result: delibera_near::Result<impl std::fmt::Debug>) -> Unconfirmed {
    match result {
        Err(Error::Unconfirmed(reason)) => reason,
        other => panic!("expected Unconfirmed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_matching_record_completes_without_a_lookup_when_no_hash_is_given() {
    let rpc = MockServer::start().await;
    let chain = signed_chain(OWNER, "https://w.example");
    let record = registrar(&chain, &rpc)
        .complete_worker(&worker_claim(None))
        .await
        .unwrap();
    assert_eq!(record.account_id, account(OWNER));
    assert!(rpc.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn each_record_problem_is_named() {
    let rpc = MockServer::start().await;
    let not_yet = unconfirmed(
        registrar(&chain(), &rpc)
            .complete_worker(&worker_claim(None))
            .await,
    );
    assert!(matches!(
        not_yet,
        Unconfirmed::NotRegistered { kind: "worker", .. }
    ));
    assert!(
        not_yet.to_string().contains("not on the registry yet"),
        "{not_yet}"
    );

    let elsewhere = signed_chain(OWNER, "https://elsewhere.example");
    let wrong_endpoint = unconfirmed(
        registrar(&elsewhere, &rpc)
            .complete_worker(&worker_claim(None))
            .await,
    );
    assert!(
        matches!(
            wrong_endpoint,
            Unconfirmed::Mismatch {
                field: "endpoint",
                ..
            }
        ),
        "{wrong_endpoint}"
    );

    let stranger = signed_chain("mallory.testnet", "https://w.example");
    let wrong_owner = unconfirmed(
        registrar(&stranger, &rpc)
            .complete_worker(&worker_claim(None))
            .await,
    );
    assert!(
        matches!(wrong_owner, Unconfirmed::Mismatch { field: "owner", .. }),
        "{wrong_owner}"
    );
    assert!(wrong_owner.to_string().contains("mallory.testnet"));

    let chain = signed_chain(OWNER, "https://w.example");
    let mut other_coordinator = worker_claim(None);
    other_coordinator.registration.coordinator_did = "did:key:z6MkOther".into();
    let wrong_coordinator = unconfirmed(
        registrar(&chain, &rpc)
            .complete_worker(&other_coordinator)
            .await,
    );
    assert!(matches!(
        wrong_coordinator,
        Unconfirmed::Mismatch {
            field: "coordinator",
            ..
        }
    ));

    chain.deactivate_worker_as(&account(OWNER), WORKER).unwrap();
    let inactive = unconfirmed(
        registrar(&chain, &rpc)
            .complete_worker(&worker_claim(None))
            .await,
    );
    assert!(matches!(
        inactive,
        Unconfirmed::Inactive { kind: "worker", .. }
    ));
}

#[tokio::test]
async fn each_bad_transaction_is_named() {
    let rpc = MockServer::start().await;
    let chain = signed_chain(OWNER, "https://w.example");
    type Expected = fn(&Unconfirmed) -> bool;
    let cases: [(u8, Option<Value>, Expected); 5] = [
        (1, None, |u| {
            matches!(u, Unconfirmed::UnknownTransaction { .. })
        }),
        (
            2,
            Some(
                json!({"Failure": {"ActionError": {"index": 0, "kind": {"FunctionCallError": {"ExecutionError": "Smart contract panicked: no"}}}}}),
            ),
            |u| matches!(u, Unconfirmed::TransactionFailed { failure, .. } if failure.contains("panicked: no")),
        ),
        (3, Some(json!("Started")), |u| {
            matches!(u, Unconfirmed::TransactionPending { .. })
        }),
        (
            4,
            Some(success()),
            |u| matches!(u, Unconfirmed::WrongSigner { signer, .. } if signer == "mallory.testnet"),
        ),
        (
            5,
            Some(success()),
            |u| matches!(u, Unconfirmed::WrongReceiver { receiver, .. } if receiver == "token.testnet"),
        ),
    ];
    for (seed, status, expected) in cases {
        let hash = CryptoHash([seed; 32]);
        let (signer, receiver) = match seed {
            4 => ("mallory.testnet", REGISTRY_ID),
            5 => (OWNER, "token.testnet"),
            _ => (OWNER, REGISTRY_ID),
        };
        let answer = match status {
            Some(status) => ok(tx(&hash, signer, receiver, status)),
            None => err(
                200,
                handler_error(
                    "UNKNOWN_TRANSACTION",
                    json!({"requested_transaction_hash": hash.to_base58()}),
                ),
            ),
        };
        mount_tx(&rpc, &hash, answer).await;
        let reason = unconfirmed(
            registrar(&chain, &rpc)
                .complete_worker(&worker_claim(Some(&hash)))
                .await,
        );
        assert!(expected(&reason), "case {seed}: {reason}");
    }
    // A good one completes.
    let hash = CryptoHash([6; 32]);
    mount_tx(&rpc, &hash, ok(tx(&hash, OWNER, ROSTER_ID, success()))).await;
    registrar(&chain, &rpc)
        .complete_worker(&worker_claim(Some(&hash)))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_malformed_hash_is_bad_input_and_an_unreachable_rpc_is_retryable() {
    let rpc = MockServer::start().await;
    let chain = signed_chain(OWNER, "https://w.example");
    let mut claim = worker_claim(None);
    claim.tx_hash = Some("ABC123...".into());
    let error = registrar(&chain, &rpc)
        .complete_worker(&claim)
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::InvalidInput { what: "txHash", .. }),
        "{error}"
    );

    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&rpc)
        .await;
    let error = registrar(&chain, &rpc)
        .complete_worker(&worker_claim(Some(&CryptoHash([9; 32]))))
        .await
        .unwrap_err();
    assert!(!matches!(error, Error::Unconfirmed(_)), "{error}");
    assert!(error.is_retryable(), "{error}");
}

#[tokio::test]
async fn a_coordinator_may_show_its_factory_transaction_but_not_a_top_level_one() {
    let rpc = MockServer::start().await;
    let chain = signed_chain(OWNER, "https://w.example");
    let claim = |hash: &CryptoHash| CoordinatorClaim {
        owner: account(OWNER),
        registration: coordinator_registration(),
        contract: Some(account(CONTRACT)),
        tx_hash: Some(hash.to_base58()),
    };
    for (seed, receiver, accepted) in [
        (11, "coord-factory.agents-coordinator.testnet", true),
        (12, CONTRACT, true),
        (13, REGISTRY_ID, true),
        (14, "agents-coordinator.testnet", false),
        (15, "testnet", false),
    ] {
        let hash = CryptoHash([seed; 32]);
        mount_tx(&rpc, &hash, ok(tx(&hash, OWNER, receiver, success()))).await;
        let result = registrar(&chain, &rpc)
            .complete_coordinator(&claim(&hash))
            .await;
        assert_eq!(result.is_ok(), accepted, "{receiver}: {result:?}");
    }
}

#[tokio::test]
async fn a_record_that_shows_up_within_the_settle_time_completes() {
    let rpc = MockServer::start().await;
    let chain = signed_chain(OWNER, "https://w.example");
    let mut claim = worker_claim(None);
    claim.registration.endpoint_url = "https://moved.example".into();
    // The node shows the new endpoint only after the registrar first looked
    // and saw the old one, as when the wallet returns a moment early.
    let lagging = Arc::new(CatchesUpAfterFirstRead {
        chain: chain.clone(),
        caught_up: std::sync::Once::new(),
    });
    let settling = ChainRegistrar::new(lagging.clone(), client(&rpc), vec![account(REGISTRY_ID)])
        .with_settle_time(Duration::from_secs(30));
    let record = tokio::time::timeout(Duration::from_secs(60), settling.complete_worker(&claim))
        .await
        .expect("settled within its time")
        .unwrap();
    assert_eq!(record.endpoint_url, "https://moved.example");
    assert!(
        lagging.caught_up.is_completed(),
        "the first read saw the old endpoint"
    );
    // Past the settle time, the refusal stands.
    let mut never = worker_claim(None);
    never.registration.endpoint_url = "https://never.example".into();
    let quick = ChainRegistrar::new(chain, client(&rpc), vec![account(REGISTRY_ID)])
        .with_settle_time(Duration::from_millis(300));
    let refused = unconfirmed(quick.complete_worker(&never).await);
    assert!(matches!(
        refused,
        Unconfirmed::Mismatch {
            field: "endpoint",
            ..
        }
    ));
}

/// The chain as a node that lags: the first read of the worker shows the
/// record as it was; then the wallet's endpoint change lands.
struct CatchesUpAfterFirstRead {
    chain: Arc<LocalRegistry>,
    caught_up: std::sync::Once,
}

#[async_trait::async_trait]
impl Registry for CatchesUpAfterFirstRead {
    async fn list_active_coordinators(&self) -> delibera_near::Result<Vec<CoordinatorRecord>> {
        self.chain.list_active_coordinators().await
    }
    async fn list_active_workers(&self) -> delibera_near::Result<Vec<WorkerRecord>> {
        self.chain.list_active_workers().await
    }
    async fn coordinator_by_did(
        &self,
        coordinator_did: &str,
    ) -> delibera_near::Result<Option<CoordinatorRecord>> {
        self.chain.coordinator_by_did(coordinator_did).await
    }
    async fn worker_by_did(&self, worker_did: &str) -> delibera_near::Result<Option<WorkerRecord>> {
        let seen = self.chain.worker_by_did(worker_did).await;
        self.caught_up.call_once(|| {
            self.chain
                .update_worker_endpoint_as(&account(OWNER), WORKER, "https://moved.example")
                .unwrap();
        });
        seen
    }
    async fn update_worker_endpoint(&self, update: &EndpointUpdate) -> delibera_near::Result<()> {
        self.chain.update_worker_endpoint(update).await
    }
    async fn update_coordinator_endpoint(
        &self,
        update: &EndpointUpdate,
    ) -> delibera_near::Result<()> {
        self.chain.update_coordinator_endpoint(update).await
    }
    async fn roster(&self) -> delibera_near::Result<Vec<RegisteredWorker>> {
        self.chain.roster().await
    }
    async fn roster_register(
        &self,
        worker_id: &str,
        account_id: Option<&AccountId>,
    ) -> delibera_near::Result<()> {
        self.chain.roster_register(worker_id, account_id).await
    }
    async fn roster_remove(&self, worker_id: &str) -> delibera_near::Result<()> {
        self.chain.roster_remove(worker_id).await
    }
}
