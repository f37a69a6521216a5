//! The web frontend's calls to protocol-api, replayed as it sends them: the
//! exact bodies, only `Content-Type` on requests with a body, and (where it
//! would otherwise send nothing) a wallet's NEP-413 signature on the three
//! writes. Every field the UI reads is checked.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use delibera_identity::Keypair;
use delibera_near::{AccountId, KeyPermission, SignedMessage, SignedRequest};
use protocol_api::compose::LOCAL_SERVER_ACCOUNT;
use serde_json::{Value, json};

use crate::common::{Options, TestApp, TestDeployer};

/// The status values the UI knows; anything else renders as "in progress".
const KNOWN_STATUSES: [&str; 10] = [
    "generating_identity",
    "creating_space",
    "provisioning_ensue",
    "preparing_phala",
    "deploying_phala",
    "waiting_for_url",
    "awaiting_near_signature",
    "registering",
    "complete",
    "failed",
];

/// A frontend request: `body` (JSON text) gets `Content-Type`, nothing else
/// does; `auth` is the wallet's credential for the three writes.
async fn frontend(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<&Value>,
    auth: Option<String>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    app.send(request).await
}

/// What a wallet's `signMessage` gives the frontend for one request.
fn wallet_signature(
    account: &str,
    key: &Keypair,
    method: &str,
    path: &str,
    body: Option<&Value>,
    nonce: u8,
) -> String {
    let body = body.map(Value::to_string).unwrap_or_default();
    let now = chrono::Utc::now().timestamp_millis() as u64;
    let message = SignedRequest::new(method, path, body.as_bytes(), now).message();
    SignedMessage::sign(
        key,
        AccountId::parse(account).unwrap(),
        message,
        [nonce; 32],
        "delibera-protocol-api",
    )
    .to_authorization()
}

/// Polls as the UI does until it would stop (`complete`, `failed` or
/// `awaiting_near_signature`), checking each answer's status is one it knows.
async fn poll(app: &TestApp, job_id: &str) -> Value {
    let stop = ["complete", "failed", "awaiting_near_signature"];
    let body = app.wait_for(job_id, &stop).await;
    assert!(
        KNOWN_STATUSES.contains(&body["status"].as_str().unwrap()),
        "{body}"
    );
    body
}

/// The sign gate: the DID (`workerDid`, else `coordinatorDid`), the endpoint
/// and the CVM id are all non-empty strings.
fn sign_gate_open(status: &Value) -> bool {
    let did = status["workerDid"]
        .as_str()
        .or(status["coordinatorDid"].as_str());
    [
        did,
        status["phalaEndpoint"].as_str(),
        status["cvmId"].as_str(),
    ]
    .iter()
    .all(|field| field.is_some_and(|text| !text.is_empty()))
}

#[tokio::test]
async fn every_frontend_call_is_answered_with_the_fields_the_ui_reads() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;

    // #6 /buy/coordinator, after the wallet's first transaction.
    let request = json!({
        "displayName": "My DAO", "nearAccount": "mydao.testnet",
        "minWorkers": 1, "maxWorkers": 3, "contractAddress": "mydao.coord-factory.agents-coordinator.testnet",
    });
    let (code, started) = frontend(
        &app,
        "POST",
        "/api/provision/coordinator",
        Some(&request),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{started}");
    let coordinator_job = started["jobId"].as_str().unwrap().to_owned();

    // #7 polling, coordinator fields.
    let ready = poll(&app, &coordinator_job).await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    assert_eq!(ready["jobId"], coordinator_job.as_str());
    assert_eq!(ready["step"], "Waiting for NEAR wallet signature");
    assert!(sign_gate_open(&ready), "{ready}");
    assert_eq!(ready["displayName"], "My DAO");
    assert_eq!(ready["nearAccount"], "mydao.testnet");
    assert_eq!(ready["minWorkers"], 1);
    assert_eq!(ready["maxWorkers"], 3);
    assert_eq!(
        ready["contractAddress"],
        "mydao.coord-factory.agents-coordinator.testnet"
    );
    for field in [
        "storachaPrivateKey",
        "ensueOrgName",
        "ensueClaimUrl",
        "ensueVerificationCode",
    ] {
        assert!(
            ready[field].as_str().is_some_and(|text| !text.is_empty()),
            "{field}: {ready}"
        );
    }
    assert!(ready.get("error").is_none_or(Value::is_null), "{ready}");
    let coordinator_did = ready["coordinatorDid"].as_str().unwrap().to_owned();
    assert_eq!(
        ready["workerDid"],
        coordinator_did.as_str(),
        "the UI reads workerDid first"
    );

    // #9 after the wallet's registration: no txHash, ever.
    let body = json!({ "jobId": coordinator_job, "contractAddress": "mydao.coord-factory.agents-coordinator.testnet" });
    let (code, answer) = frontend(
        &app,
        "POST",
        "/api/provision/coordinator-register",
        Some(&body),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(poll(&app, &coordinator_job).await["status"], "complete");

    // #5 /buy/worker.
    let request = json!({ "coordinatorDid": coordinator_did, "displayName": "Alpha", "nearAccount": "alice.testnet" });
    let (code, started) =
        frontend(&app, "POST", "/api/provision/worker", Some(&request), None).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{started}");
    let worker_job = started["jobId"].as_str().unwrap().to_owned();
    let ready = poll(&app, &worker_job).await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    assert!(sign_gate_open(&ready), "{ready}");
    assert_eq!(ready["coordinatorDid"], coordinator_did.as_str());
    assert_eq!(ready["displayName"], "Alpha");
    assert_eq!(ready["nearAccount"], "alice.testnet");
    assert!(
        ready["storachaPrivateKey"]
            .as_str()
            .is_some_and(|key| key.starts_with("Mg"))
    );
    let worker_did = ready["workerDid"].as_str().unwrap().to_owned();

    // #8, with the wallet transaction's hash.
    let body = json!({ "jobId": worker_job, "txHash": "ABC123" });
    let (code, answer) = frontend(&app, "POST", "/api/provision/register", Some(&body), None).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(poll(&app, &worker_job).await["status"], "complete");

    // #1 the worker dashboard's URL cache.
    let (code, endpoints) = frontend(&app, "GET", "/api/agents/endpoints", None, None).await;
    assert_eq!(code, StatusCode::OK, "{endpoints}");
    let entry = &endpoints["agents"][&worker_did];
    assert_eq!(entry["endpoint"], ready["phalaEndpoint"]);
    assert_eq!(entry["cvmId"], ready["cvmId"]);

    // #2 "Save", signed by the worker's owner (alice's wallet).
    let alice = Keypair::from_seed(&[1; 32]);
    app.registry
        .add_access_key(
            &AccountId::parse("alice.testnet").unwrap(),
            &alice.public_key(),
            KeyPermission::FullAccess,
        )
        .unwrap();
    let path = format!("/api/agents/{worker_did}/endpoint");
    let body = json!({ "endpoint": "https://alpha.example.com" });
    let auth = wallet_signature("alice.testnet", &alice, "PUT", &path, Some(&body), 1);
    let (code, answer) = frontend(&app, "PUT", &path, Some(&body), Some(auth)).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["success"], true);
    // With the fields the UI could send (it never does), too.
    let body = json!({ "endpoint": "https://alpha2.example.com", "cvmId": ready["cvmId"], "dashboardUrl": "https://alpha2.example.com/ui" });
    let auth = wallet_signature("alice.testnet", &alice, "PUT", &path, Some(&body), 2);
    let (code, answer) = frontend(&app, "PUT", &path, Some(&body), Some(auth)).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["success"], true);
    let (_, endpoints) = frontend(&app, "GET", "/api/agents/endpoints", None, None).await;
    assert_eq!(
        endpoints["agents"][&worker_did]["endpoint"],
        "https://alpha2.example.com"
    );
    // The record keeps its owner: the UI finds alice's agents by it.
    let record = app.registry.worker(&worker_did).unwrap().unwrap();
    assert_eq!(record.account_id.as_str(), "alice.testnet");
    // A coordinator's endpoint changes only by registering it again, which
    // would make the server's account its owner: refused, even when its
    // owner asks (they register it again from their wallet instead).
    let mydao = Keypair::from_seed(&[3; 32]);
    app.registry
        .add_access_key(
            &AccountId::parse("mydao.testnet").unwrap(),
            &mydao.public_key(),
            KeyPermission::FullAccess,
        )
        .unwrap();
    let path = format!("/api/agents/{coordinator_did}/endpoint");
    let body = json!({ "endpoint": "https://c2.example.com", "type": "coordinator" });
    let auth = wallet_signature("mydao.testnet", &mydao, "PUT", &path, Some(&body), 9);
    let (code, answer) = frontend(&app, "PUT", &path, Some(&body), Some(auth)).await;
    assert_eq!(code, StatusCode::CONFLICT, "{answer}");
    let refusal = answer["error"].as_str().unwrap();
    assert!(refusal.contains("mydao.testnet"), "{refusal}");

    // #3 and #4, the WorkerManagementPanel, signed by the roster's owner.
    let owner = Keypair::from_seed(&[2; 32]);
    app.registry
        .add_access_key(
            &AccountId::parse(LOCAL_SERVER_ACCOUNT).unwrap(),
            &owner.public_key(),
            KeyPermission::FullAccess,
        )
        .unwrap();
    let body = json!({ "workerId": worker_did, "accountId": "alice.testnet" });
    let auth = wallet_signature(
        LOCAL_SERVER_ACCOUNT,
        &owner,
        "POST",
        "/api/workers/register",
        Some(&body),
        3,
    );
    let (code, answer) = frontend(
        &app,
        "POST",
        "/api/workers/register",
        Some(&body),
        Some(auth),
    )
    .await;
    assert!(code.is_success(), "{code} {answer}");
    let body = json!({ "workerId": worker_did });
    let auth = wallet_signature(
        LOCAL_SERVER_ACCOUNT,
        &owner,
        "POST",
        "/api/workers/register",
        Some(&body),
        4,
    );
    let (code, answer) = frontend(
        &app,
        "POST",
        "/api/workers/register",
        Some(&body),
        Some(auth),
    )
    .await;
    assert!(code.is_success(), "accountId is optional: {code} {answer}");
    let path = format!("/api/workers/{worker_did}");
    let auth = wallet_signature(LOCAL_SERVER_ACCOUNT, &owner, "DELETE", &path, None, 5);
    let (code, answer) = frontend(&app, "DELETE", &path, None, Some(auth)).await;
    assert!(code.is_success(), "{code} {answer}");

    // The frontend as it is today sends no credential at all: refused with
    // the error shape it shows, not silently.
    let body = json!({ "workerId": worker_did });
    let (code, answer) = frontend(&app, "POST", "/api/workers/register", Some(&body), None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("NEP413"),
        "{answer}"
    );
}

/// A failed job shows `error`, which the UI displays, and ends the polling.
#[tokio::test]
async fn a_failed_job_shows_the_error_the_ui_displays() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    // A worker for a coordinator nobody registered is refused up front, with
    // the `error` the buy page shows.
    let request = json!({
        "coordinatorDid": "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH",
        "displayName": "Alpha", "nearAccount": "alice.testnet",
    });
    let (code, answer) =
        frontend(&app, "POST", "/api/provision/worker", Some(&request), None).await;
    assert!(code.is_client_error(), "{code} {answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|error| !error.is_empty()),
        "{answer}"
    );
}
