//! `CachedRegistry` over an `RpcRegistry` against wiremock: one upstream
//! call per key for concurrent readers, expiry after the TTL, invalidation
//! by its own writes, and no cached errors.

use std::sync::Arc;
use std::time::Duration;

use delibera_near::{
    Action, CHANGE_CALL_GAS, CachedRegistry, CoordinatorContract, CoordinatorRegistration,
    EndpointUpdate, FunctionCall, LocalRegistry, Registrar, Registry, RegistryContract,
    RpcRegistry, TransactionSender, WorkerClaim, WorkerRegistration,
};
use serde_json::{Value, json};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

use crate::support::*;

const REGISTRY: &str = "registry.testnet";
const ROSTER: &str = "coordinator.testnet";
const WORKER: &str = "did:key:z6MkWorker";

/// Matches a view call of this contract method, whatever its arguments.
struct View(&'static str);

impl Match for View {
    fn matches(&self, request: &Request) -> bool {
        serde_json::from_slice::<Value>(&request.body)
            .is_ok_and(|body| body["method"] == "query" && body["params"]["method_name"] == self.0)
    }
}

fn worker_json(endpoint: &str) -> Value {
    json!({
        "account_id": "alice.testnet",
        "coordinator_did": "did:key:z6MkCoordinator",
        "worker_did": WORKER,
        "endpoint_url": endpoint,
        "cvm_id": "cvm-w",
        "registered_at": 1_711_800_000_000_000_000_u64,
        "is_active": true
    })
}

fn answer(value: &Value) -> ResponseTemplate {
    ok(view_result(value))
}

fn cached(server: &MockServer, ttl: Duration) -> CachedRegistry {
    let sender = TransactionSender::new(client(server), signer());
    let upstream = RpcRegistry::new(
        RegistryContract::with_sender(sender.clone(), account(REGISTRY)),
        CoordinatorContract::with_sender(sender, account(ROSTER)),
    );
    CachedRegistry::new(Arc::new(upstream), ttl)
}

async fn calls_of(server: &MockServer, method: &'static str) -> usize {
    let requests = server.received_requests().await.unwrap_or_default();
    requests
        .iter()
        .filter(|request| View(method).matches(request))
        .count()
}

/// Moves the runtime's clock on by `by` without waiting for it, and lets it
/// run on in real time (paused, reqwest's own timeouts would fire at once).
async fn advance_clock(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[tokio::test]
async fn concurrent_misses_of_one_key_make_one_upstream_call() {
    let server = MockServer::start().await;
    Mock::given(View("list_active_workers"))
        .respond_with(answer(&json!([worker_json("https://w.example")])))
        .mount(&server)
        .await;
    let registry = cached(&server, Duration::from_secs(60));
    // Polled in turn by one task: every read misses before the first answer
    // can arrive, so all of them wait on the same call.
    let reads = (0..20).map(|_| registry.active_workers_shared());
    let answers = futures_util::future::join_all(reads).await;
    let first = answers[0].as_ref().unwrap().clone();
    for answer in &answers {
        assert!(Arc::ptr_eq(answer.as_ref().unwrap(), &first));
    }
    assert_eq!(first[0].endpoint_url, "https://w.example");
    assert_eq!(calls_of(&server, "list_active_workers").await, 1);
    // Other keys are their own flights.
    Mock::given(View("get_registered_workers"))
        .respond_with(answer(&json!([])))
        .mount(&server)
        .await;
    assert!(registry.roster().await.unwrap().is_empty());
    assert_eq!(calls_of(&server, "get_registered_workers").await, 1);
    assert_eq!(calls_of(&server, "list_active_workers").await, 1);
}

#[tokio::test]
async fn an_answer_is_served_until_the_ttl_and_fetched_again_after() {
    let server = MockServer::start().await;
    Mock::given(View("get_worker_by_did"))
        .respond_with(answer(&worker_json("https://old.example")))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(View("get_worker_by_did"))
        .respond_with(answer(&worker_json("https://new.example")))
        .mount(&server)
        .await;
    let registry = cached(&server, Duration::from_secs(1));
    let endpoint = |record: Option<delibera_near::WorkerRecord>| record.unwrap().endpoint_url;

    assert_eq!(
        endpoint(registry.worker_by_did(WORKER).await.unwrap()),
        "https://old.example"
    );
    advance_clock(Duration::from_millis(500)).await;
    assert_eq!(
        endpoint(registry.worker_by_did(WORKER).await.unwrap()),
        "https://old.example"
    );
    assert_eq!(calls_of(&server, "get_worker_by_did").await, 1);

    advance_clock(Duration::from_millis(500)).await;
    assert_eq!(
        endpoint(registry.worker_by_did(WORKER).await.unwrap()),
        "https://new.example"
    );
    assert_eq!(calls_of(&server, "get_worker_by_did").await, 2);
    // Another DID is a key of its own.
    assert!(
        registry
            .worker_by_did("did:key:z6MkOther")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(calls_of(&server, "get_worker_by_did").await, 3);
}

#[tokio::test]
async fn a_write_through_the_cache_makes_the_next_read_fetch_again() {
    let server = MockServer::start().await;
    Mock::given(View("get_worker_by_did"))
        .respond_with(answer(&worker_json("https://old.example")))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(View("get_worker_by_did"))
        .respond_with(answer(&worker_json("https://new.example")))
        .mount(&server)
        .await;
    // The signed `update_worker_endpoint` (nonce 2 after the access key's 1).
    Mock::given(rpc("query", access_key_params()))
        .respond_with(access_key(1))
        .expect(1)
        .mount(&server)
        .await;
    let args = json!({"endpoint_url": "https://new.example", "worker_did": WORKER});
    let signed = signer()
        .sign(
            account(REGISTRY),
            2,
            block_hash(),
            vec![Action::FunctionCall(FunctionCall::json(
                "update_worker_endpoint",
                &args,
                CHANGE_CALL_GAS,
                0,
            ))],
        )
        .unwrap();
    Mock::given(rpc(
        "send_tx",
        json!({"signed_tx_base64": signed.to_base64(), "wait_until": "EXECUTED_OPTIMISTIC"}),
    ))
    .respond_with(ok(success_outcome(&signed.hash(), b"null")))
    .expect(1)
    .mount(&server)
    .await;
    let registry = cached(&server, Duration::from_secs(3600));

    let read = || async { registry.worker_by_did(WORKER).await.unwrap().unwrap() };
    assert_eq!(read().await.endpoint_url, "https://old.example");
    assert_eq!(read().await.endpoint_url, "https://old.example");
    assert_eq!(calls_of(&server, "get_worker_by_did").await, 1);

    registry
        .update_worker_endpoint(&EndpointUpdate {
            did: WORKER.into(),
            endpoint_url: "https://new.example".into(),
            cvm_id: None,
        })
        .await
        .unwrap();
    assert_eq!(read().await.endpoint_url, "https://new.example");
    assert_eq!(calls_of(&server, "get_worker_by_did").await, 2);
}

#[tokio::test]
async fn a_failed_read_is_not_cached() {
    let server = MockServer::start().await;
    Mock::given(View("list_active_coordinators"))
        .respond_with(err(
            200,
            handler_error("UNKNOWN_ACCOUNT", json!({"requested_account_id": REGISTRY})),
        ))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(View("list_active_coordinators"))
        .respond_with(answer(&json!([])))
        .mount(&server)
        .await;
    let registry = cached(&server, Duration::from_secs(3600));

    assert!(registry.list_active_coordinators().await.is_err());
    let failed_calls = calls_of(&server, "list_active_coordinators").await;
    assert!(
        registry
            .list_active_coordinators()
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        calls_of(&server, "list_active_coordinators").await,
        failed_calls + 1
    );
    // The answer that succeeded is the one cached.
    assert!(
        registry
            .list_active_coordinators()
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        calls_of(&server, "list_active_coordinators").await,
        failed_calls + 1
    );
}

#[tokio::test]
async fn a_registration_completed_through_the_wrapped_registrar_is_read_at_once() {
    let local = Arc::new(LocalRegistry::in_memory(account("admin.testnet")).unwrap());
    let owner = account("alice.testnet");
    local
        .register_coordinator_as(
            &owner,
            &CoordinatorRegistration {
                coordinator_did: "did:key:z6MkCoordinator".into(),
                endpoint_url: "https://coordinator.example".into(),
                cvm_id: "cvm-c".into(),
                min_workers: 1,
                max_workers: 5,
            },
        )
        .unwrap();
    let registry = CachedRegistry::new(local.clone(), Duration::from_secs(3600));
    let registrar = registry.invalidating(local);
    assert!(registry.list_active_workers().await.unwrap().is_empty());

    registrar
        .complete_worker(&WorkerClaim {
            owner,
            registration: WorkerRegistration {
                coordinator_did: "did:key:z6MkCoordinator".into(),
                worker_did: WORKER.into(),
                endpoint_url: "https://w.example".into(),
                cvm_id: "cvm-w".into(),
            },
            tx_hash: None,
        })
        .await
        .unwrap();
    let workers = registry.list_active_workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].worker_did, WORKER);
}

/// Key checks and the roster owner of wallet-signed requests are read like
/// registry records: once per key while fresh, again after the TTL or an
/// invalidation, never an error kept.
#[tokio::test]
async fn account_reads_are_cached_per_key_and_expire_with_the_registry() {
    use delibera_near::{Accounts, KeyPermission, RpcAccounts};

    let server = MockServer::start().await;
    let key = delibera_identity::Keypair::from_seed(&[9; 32]).public_key();
    Mock::given(wiremock::matchers::body_partial_json(
        json!({ "params": { "request_type": "view_access_key" } }),
    ))
    .respond_with(ok(json!({
        "nonce": 1, "permission": "FullAccess", "block_height": 1,
        "block_hash": block_hash().to_base58(),
    })))
    .mount(&server)
    .await;
    Mock::given(View("get_owner"))
        .respond_with(answer(&json!("mydao.testnet")))
        .mount(&server)
        .await;
    let registry = cached(&server, Duration::from_secs(60));
    let rpc = client(&server);
    let accounts = registry.caching_accounts(Arc::new(RpcAccounts::new(
        rpc.clone(),
        CoordinatorContract::new(rpc, account(ROSTER)),
    )));
    let access_key_calls = || async {
        server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|request| {
                serde_json::from_slice::<Value>(&request.body)
                    .is_ok_and(|body| body["params"]["request_type"] == "view_access_key")
            })
            .count()
    };

    let alice = account("alice.testnet");
    let reads = (0..10).map(|_| accounts.key_permission(&alice, &key));
    for answer in futures_util::future::join_all(reads).await {
        assert_eq!(answer.unwrap(), Some(KeyPermission::FullAccess));
    }
    assert_eq!(access_key_calls().await, 1, "ten checks, one call");
    // Another account is another key of the cache.
    accounts
        .key_permission(&account("bob.testnet"), &key)
        .await
        .unwrap();
    assert_eq!(access_key_calls().await, 2);
    for _ in 0..3 {
        assert_eq!(
            accounts.roster_owner().await.unwrap(),
            account("mydao.testnet")
        );
    }
    assert_eq!(calls_of(&server, "get_owner").await, 1);

    registry.invalidate();
    accounts.key_permission(&alice, &key).await.unwrap();
    assert_eq!(
        access_key_calls().await,
        3,
        "forgotten with the registry's answers"
    );
    advance_clock(Duration::from_secs(61)).await;
    accounts.roster_owner().await.unwrap();
    assert_eq!(
        calls_of(&server, "get_owner").await,
        2,
        "expired after the TTL"
    );
}
