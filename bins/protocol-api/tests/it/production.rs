//! Production-mode registration: the server never takes the wallet's word.
//! The registry record must match the job, and a `txHash` must name a
//! successful transaction by the job's account to the registry, looked up at
//! a NEAR RPC (here a wiremock fake of the `tx` method). The local registry
//! stands in for the chain's contract state.

use axum::http::StatusCode;
use base64::Engine;
use delibera_near::{AccountId, CoordinatorRegistration, CryptoHash, Registry, WorkerRegistration};
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{Options, REGISTRY_CONTRACT, TestApp, TestDeployer};

const OWNER: &str = "alice.testnet";
const COORDINATOR_OWNER: &str = "mydao.testnet";

fn tx_ok(hash: &CryptoHash, signer: &str, receiver: &str) -> Value {
    json!({
        "final_execution_status": "EXECUTED_OPTIMISTIC",
        "status": {"SuccessValue": base64::engine::general_purpose::STANDARD.encode(b"")},
        "transaction": {"hash": hash.to_base58(), "signer_id": signer, "receiver_id": receiver},
        "transaction_outcome": {"id": hash.to_base58(), "outcome": {"logs": [], "status": {"SuccessReceiptId": "r"}}},
        "receipts_outcome": []
    })
}

fn tx_failed(hash: &CryptoHash) -> Value {
    json!({
        "final_execution_status": "EXECUTED_OPTIMISTIC",
        "status": {"Failure": {"ActionError": {"index": 0, "kind": {"FunctionCallError": {"ExecutionError": "Smart contract panicked: Worker already registered"}}}}},
        "transaction": {"hash": hash.to_base58(), "signer_id": OWNER, "receiver_id": REGISTRY_CONTRACT},
        "transaction_outcome": {"id": hash.to_base58(), "outcome": {"logs": []}},
        "receipts_outcome": []
    })
}

/// Answers the `tx` method for `hash` with `result` (or the node's
/// `UNKNOWN_TRANSACTION` error when `result` is `None`).
async fn mount_tx(server: &MockServer, hash: &CryptoHash, result: Option<Value>) {
    let body = match result {
        Some(result) => json!({"jsonrpc": "2.0", "id": "1", "result": result}),
        None => json!({"jsonrpc": "2.0", "id": "1", "error": {
            "name": "HANDLER_ERROR",
            "cause": {"name": "UNKNOWN_TRANSACTION", "info": {"requested_transaction_hash": hash.to_base58()}},
            "code": -32000, "message": "Server error", "data": "unknown"
        }}),
    };
    Mock::given(method("POST"))
        .and(body_partial_json(json!({
            "method": "tx",
            "params": {"tx_hash": hash.to_base58(), "sender_account_id": OWNER}
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(server)
        .await;
}

/// A production server with a registered coordinator and a worker job
/// waiting for its wallet signature; returns the app, the job id and its status.
async fn worker_awaiting_signature(
    dir: &std::path::Path,
    rpc: &MockServer,
) -> (TestApp, String, Value) {
    let options = Options {
        production_rpc: Some(rpc.uri()),
        ..Options::default()
    };
    let app = TestApp::start(dir, TestDeployer::healthy(), options).await;
    let coordinator = delibera_identity::Keypair::generate().did();
    app.registry
        .register_coordinator_as(
            &AccountId::parse(COORDINATOR_OWNER).unwrap(),
            &CoordinatorRegistration {
                coordinator_did: coordinator.to_string(),
                endpoint_url: "https://coordinator.example.com".into(),
                cvm_id: "cvm-coordinator".into(),
                min_workers: 1,
                max_workers: 5,
            },
        )
        .unwrap();
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/worker",
            Some(json!({ "coordinatorDid": coordinator.to_string(), "displayName": "Worker Alpha", "nearAccount": OWNER })),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let job_id = body["jobId"].as_str().unwrap().to_owned();
    let ready = app
        .wait_for(&job_id, &["awaiting_near_signature", "failed"])
        .await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    (app, job_id, ready)
}

/// What the user's wallet does on chain: `register_worker` signed by `owner`.
async fn sign_registration(app: &TestApp, ready: &Value, owner: &str, endpoint: &str) {
    app.registry
        .register_worker_as(
            &AccountId::parse(owner).unwrap(),
            &WorkerRegistration {
                coordinator_did: ready["coordinatorDid"].as_str().unwrap().into(),
                worker_did: ready["workerDid"].as_str().unwrap().into(),
                endpoint_url: endpoint.into(),
                cvm_id: ready["cvmId"].as_str().unwrap().into(),
            },
        )
        .unwrap();
}

async fn register(app: &TestApp, job_id: &str, tx_hash: Option<&str>) -> (StatusCode, Value) {
    let mut body = json!({ "jobId": job_id });
    if let Some(hash) = tx_hash {
        body["txHash"] = json!(hash);
    }
    app.call("POST", "/api/provision/register", Some(body))
        .await
}

async fn status(app: &TestApp, job_id: &str) -> String {
    let (_, body) = app
        .call("GET", &format!("/api/provision/status/{job_id}"), None)
        .await;
    body["status"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn register_before_the_wallet_signed_is_a_conflict_and_the_job_waits() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = MockServer::start().await;
    let (app, job_id, _) = worker_awaiting_signature(dir.path(), &rpc).await;

    let (code, body) = register(&app, &job_id, None).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not on the registry yet"),
        "{body}"
    );
    assert_eq!(status(&app, &job_id).await, "awaiting_near_signature");
    // The server did not register on the user's behalf.
    let did = app
        .state
        .jobs
        .get(&job_id)
        .await
        .unwrap()
        .agent_did
        .unwrap();
    assert!(
        app.registry
            .worker_by_did(did.as_str())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_record_pointing_elsewhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = MockServer::start().await;
    let (app, job_id, ready) = worker_awaiting_signature(dir.path(), &rpc).await;
    sign_registration(&app, &ready, OWNER, "https://somewhere-else.example.com").await;

    let (code, body) = register(&app, &job_id, None).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("endpoint"),
        "{body}"
    );
    assert_eq!(status(&app, &job_id).await, "awaiting_near_signature");
}

#[tokio::test]
async fn a_record_signed_by_another_account_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = MockServer::start().await;
    let (app, job_id, ready) = worker_awaiting_signature(dir.path(), &rpc).await;
    let endpoint = ready["phalaEndpoint"].as_str().unwrap().to_owned();
    sign_registration(&app, &ready, "mallory.testnet", &endpoint).await;

    let (code, body) = register(&app, &job_id, None).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("owner"), "{body}");
}

#[tokio::test]
async fn a_malformed_tx_hash_is_a_bad_request() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = MockServer::start().await;
    let (app, job_id, _) = worker_awaiting_signature(dir.path(), &rpc).await;

    let (code, body) = register(&app, &job_id, Some("ABC123...")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("txHash"), "{body}");
    assert_eq!(status(&app, &job_id).await, "awaiting_near_signature");
}

#[tokio::test]
async fn each_bad_transaction_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = MockServer::start().await;
    let (app, job_id, ready) = worker_awaiting_signature(dir.path(), &rpc).await;
    let endpoint = ready["phalaEndpoint"].as_str().unwrap().to_owned();
    sign_registration(&app, &ready, OWNER, &endpoint).await;

    let unknown = CryptoHash([1; 32]);
    let failed = CryptoHash([2; 32]);
    let other_signer = CryptoHash([3; 32]);
    let other_contract = CryptoHash([4; 32]);
    mount_tx(&rpc, &unknown, None).await;
    mount_tx(&rpc, &failed, Some(tx_failed(&failed))).await;
    mount_tx(
        &rpc,
        &other_signer,
        Some(tx_ok(&other_signer, "mallory.testnet", REGISTRY_CONTRACT)),
    )
    .await;
    mount_tx(
        &rpc,
        &other_contract,
        Some(tx_ok(&other_contract, OWNER, "token.testnet")),
    )
    .await;

    for (hash, reason) in [
        (unknown, "not on chain"),
        (failed, "failed on chain"),
        (other_signer, "signed by \"mallory.testnet\""),
        (other_contract, "sent to \"token.testnet\""),
    ] {
        let (code, body) = register(&app, &job_id, Some(&hash.to_base58())).await;
        assert_eq!(code, StatusCode::CONFLICT, "{reason}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(reason), "expected {reason:?} in {error:?}");
        // Each refusal leaves the job at the wallet step, ready for a retry.
        assert_eq!(status(&app, &job_id).await, "awaiting_near_signature");
    }
}

#[tokio::test]
async fn an_unreachable_rpc_is_a_bad_gateway_and_the_job_can_retry() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = MockServer::start().await;
    let (app, job_id, ready) = worker_awaiting_signature(dir.path(), &rpc).await;
    let endpoint = ready["phalaEndpoint"].as_str().unwrap().to_owned();
    sign_registration(&app, &ready, OWNER, &endpoint).await;
    let hash = CryptoHash([5; 32]);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&rpc)
        .await;

    let (code, body) = register(&app, &job_id, Some(&hash.to_base58())).await;
    assert_eq!(code, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(status(&app, &job_id).await, "awaiting_near_signature");
}

#[tokio::test]
async fn a_verified_transaction_and_record_complete_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = MockServer::start().await;
    let (app, job_id, ready) = worker_awaiting_signature(dir.path(), &rpc).await;
    let endpoint = ready["phalaEndpoint"].as_str().unwrap().to_owned();
    sign_registration(&app, &ready, OWNER, &endpoint).await;
    let hash = CryptoHash([6; 32]);
    mount_tx(&rpc, &hash, Some(tx_ok(&hash, OWNER, REGISTRY_CONTRACT))).await;

    let (code, body) = register(&app, &job_id, Some(&hash.to_base58())).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "complete");
    assert_eq!(body["txHash"], hash.to_base58());
    assert_eq!(body["workerDid"], ready["workerDid"]);
    assert_eq!(status(&app, &job_id).await, "complete");
    // A finished job cannot be registered twice.
    let (code, _) = register(&app, &job_id, Some(&hash.to_base58())).await;
    assert_eq!(code, StatusCode::CONFLICT);
}

#[tokio::test]
async fn without_a_tx_hash_the_registry_record_alone_completes_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = MockServer::start().await;
    let (app, job_id, ready) = worker_awaiting_signature(dir.path(), &rpc).await;
    let endpoint = ready["phalaEndpoint"].as_str().unwrap().to_owned();
    sign_registration(&app, &ready, OWNER, &endpoint).await;

    let (code, body) = register(&app, &job_id, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "complete");
    // No lookup was made: nothing to look up.
    assert!(rpc.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_coordinator_may_show_its_factory_deploy_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = MockServer::start().await;
    let options = Options {
        production_rpc: Some(rpc.uri()),
        ..Options::default()
    };
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), options).await;
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/coordinator",
            Some(json!({ "displayName": "My DAO Coordinator", "nearAccount": OWNER, "minWorkers": 1, "maxWorkers": 5 })),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let job_id = body["jobId"].as_str().unwrap().to_owned();
    let ready = app
        .wait_for(&job_id, &["awaiting_near_signature", "failed"])
        .await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    app.registry
        .register_coordinator_as(
            &AccountId::parse(OWNER).unwrap(),
            &CoordinatorRegistration {
                coordinator_did: ready["coordinatorDid"].as_str().unwrap().into(),
                endpoint_url: ready["phalaEndpoint"].as_str().unwrap().into(),
                cvm_id: ready["cvmId"].as_str().unwrap().into(),
                min_workers: 1,
                max_workers: 5,
            },
        )
        .unwrap();
    // The wallet's first transaction deploys the DAO's contract from the factory.
    let hash = CryptoHash([7; 32]);
    mount_tx(
        &rpc,
        &hash,
        Some(tx_ok(
            &hash,
            OWNER,
            "coord-factory.agents-coordinator.testnet",
        )),
    )
    .await;

    let (code, body) = app
        .call(
            "POST",
            "/api/provision/coordinator-register",
            Some(json!({
                "jobId": job_id,
                "contractAddress": "mydao.coord-factory.agents-coordinator.testnet",
                "txHash": hash.to_base58(),
            })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "complete");
    assert_eq!(
        body["contractAddress"],
        "mydao.coord-factory.agents-coordinator.testnet"
    );
}

/// A kill after the wallet signed, while the job was `registering`: on
/// start-up the registration finishes from what the registry shows, and
/// goes back to the wallet step when it shows nothing.
#[tokio::test]
async fn a_registration_cut_off_by_a_kill_finishes_from_the_registry_on_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = MockServer::start().await;
    let (app, signed_job, signed) = worker_awaiting_signature(dir.path(), &rpc).await;
    sign_registration(
        &app,
        &signed,
        OWNER,
        signed["phalaEndpoint"].as_str().unwrap(),
    )
    .await;
    // A second worker of the same coordinator whose owner never signed.
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/worker",
            Some(json!({ "coordinatorDid": signed["coordinatorDid"], "displayName": "Worker Beta", "nearAccount": OWNER })),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let unsigned_job = body["jobId"].as_str().unwrap().to_owned();
    app.wait_for(&unsigned_job, &["awaiting_near_signature"])
        .await;
    // As a kill inside `register` leaves both.
    for id in [&signed_job, &unsigned_job] {
        let mut job = app.state.jobs.get(id).await.unwrap();
        job.status = protocol_api::jobs::JobStatus::Registering;
        app.database.jobs().save(&job).await.unwrap();
    }

    app.state.jobs.resume_all().await.unwrap();
    let done = app
        .wait_for(&signed_job, &["complete", "awaiting_near_signature"])
        .await;
    assert_eq!(done["status"], "complete", "{done}");
    let back = app
        .wait_for(&unsigned_job, &["complete", "awaiting_near_signature"])
        .await;
    assert_eq!(back["status"], "awaiting_near_signature", "{back}");
}
