//! Wallet-signed owner writes (`Authorization: NEP413 …`): a valid signature
//! by the owner is accepted on each signing route, and every way a signature
//! can be wrong is refused with 401 (a bad credential) or 403 (not the owner).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use delibera_identity::Keypair;
use delibera_near::{
    AccountId, CoordinatorRegistration, KeyPermission, SignedMessage, SignedRequest,
    WorkerRegistration,
};
use protocol_api::compose::LOCAL_SERVER_ACCOUNT;
use serde_json::{Value, json};

use crate::common::{Options, TestApp, TestDeployer};

const COORDINATOR: &str = "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH";
const WORKER: &str = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";
const RECIPIENT: &str = "delibera-protocol-api";

fn account(text: &str) -> AccountId {
    AccountId::parse(text).unwrap()
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis() as u64
}

/// A signer: an account and a key, as a wallet holds them.
struct Wallet {
    account: AccountId,
    key: Keypair,
}

impl Wallet {
    fn new(account_id: &str, seed: u8) -> Self {
        Self {
            account: account(account_id),
            key: Keypair::from_seed(&[seed; 32]),
        }
    }

    /// Gives the wallet's key to its account on the (local) chain.
    fn register(&self, app: &TestApp, permission: KeyPermission) -> &Self {
        app.registry
            .add_access_key(&self.account, &self.key.public_key(), permission)
            .unwrap();
        self
    }

    /// The header for `method path body`, signed at `unix_ms` with `nonce`.
    fn sign(&self, method: &str, path: &str, body: &str, unix_ms: u64, nonce: u8) -> String {
        let message = SignedRequest::new(method, path, body.as_bytes(), unix_ms).message();
        SignedMessage::sign(
            &self.key,
            self.account.clone(),
            message,
            [nonce; 32],
            RECIPIENT,
        )
        .to_authorization()
    }
}

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    body: &str,
    auth: &str,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", auth);
    if !body.is_empty() {
        request = request.header("content-type", "application/json");
    }
    app.send(request.body(Body::from(body.to_owned())).unwrap())
        .await
}

/// A coordinator and a worker on the local registry, the worker owned by alice.
fn seed_registry(app: &TestApp) {
    app.registry
        .register_coordinator_as(
            &account("mydao.testnet"),
            &CoordinatorRegistration {
                coordinator_did: COORDINATOR.into(),
                endpoint_url: "https://coordinator.example".into(),
                cvm_id: "cvm-c".into(),
                min_workers: 1,
                max_workers: 3,
            },
        )
        .unwrap();
    app.registry
        .register_worker_as(
            &account("alice.testnet"),
            &WorkerRegistration {
                coordinator_did: COORDINATOR.into(),
                worker_did: WORKER.into(),
                endpoint_url: "https://old.example".into(),
                cvm_id: "cvm-w".into(),
            },
        )
        .unwrap();
}

fn refused_because(body: &Value, words: &str) -> bool {
    body["error"]
        .as_str()
        .is_some_and(|error| error.contains(words))
}

#[tokio::test]
async fn the_owner_signs_each_write_with_a_wallet_and_it_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    seed_registry(&app);
    let alice = Wallet::new("alice.testnet", 1);
    alice.register(&app, KeyPermission::FullAccess);
    // The local roster is the server's: its owner signs roster changes.
    let owner = Wallet::new(LOCAL_SERVER_ACCOUNT, 2);
    owner.register(&app, KeyPermission::FullAccess);

    let path = format!("/api/agents/{WORKER}/endpoint");
    let body = json!({ "endpoint": "https://new.example" }).to_string();
    let auth = alice.sign("PUT", &path, &body, now_ms(), 1);
    let (code, answer) = send(&app, "PUT", &path, &body, &auth).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let record = app.registry.worker(WORKER).unwrap().unwrap();
    assert_eq!(record.endpoint_url, "https://new.example");

    let body = json!({ "workerId": WORKER, "accountId": "alice.testnet" }).to_string();
    let auth = owner.sign("POST", "/api/workers/register", &body, now_ms(), 2);
    let (code, answer) = send(&app, "POST", "/api/workers/register", &body, &auth).await;
    assert_eq!(code, StatusCode::OK, "{answer}");

    let path = format!("/api/workers/{WORKER}");
    let auth = owner.sign("DELETE", &path, "", now_ms(), 3);
    let (code, answer) = send(&app, "DELETE", &path, "", &auth).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let (_, roster) = app.call("GET", "/api/workers/registered", None).await;
    assert_eq!(roster["activeCount"], 0, "{roster}");

    // Every key is a full-access key of its implicit account, with nothing
    // registered: such an account is simply not the owner here.
    let implicit = Wallet {
        account: delibera_near::implicit_account(&Keypair::from_seed(&[9; 32]).public_key()),
        key: Keypair::from_seed(&[9; 32]),
    };
    let path = format!("/api/agents/{WORKER}/endpoint");
    let body = json!({ "endpoint": "https://implicit.example" }).to_string();
    let (code, answer) = send(
        &app,
        "PUT",
        &path,
        &body,
        &implicit.sign("PUT", &path, &body, now_ms(), 4),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{answer}");
}

#[tokio::test]
async fn every_wrong_signature_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    seed_registry(&app);
    let alice = Wallet::new("alice.testnet", 1);
    alice.register(&app, KeyPermission::FullAccess);
    let bob = Wallet::new("bob.testnet", 3);
    bob.register(&app, KeyPermission::FullAccess);
    let limited = Wallet::new("alice.testnet", 4);
    limited.register(&app, KeyPermission::FunctionCall);
    // Bob's key, claiming to be alice.
    let impostor = Wallet {
        account: account("alice.testnet"),
        key: Keypair::from_seed(&[3; 32]),
    };

    let path = format!("/api/agents/{WORKER}/endpoint");
    let body = json!({ "endpoint": "https://evil.example" }).to_string();
    let now = now_ms();
    let tampered_body = json!({ "endpoint": "https://other.example" }).to_string();
    let cases: Vec<(&str, String, &str, StatusCode, &str)> = vec![
        (
            "wrong account",
            impostor.sign("PUT", &path, &body, now, 10),
            &body,
            StatusCode::UNAUTHORIZED,
            "not an access key of alice.testnet",
        ),
        (
            "function-call-only key",
            limited.sign("PUT", &path, &body, now, 11),
            &body,
            StatusCode::UNAUTHORIZED,
            "function-call key",
        ),
        (
            "expired timestamp",
            alice.sign("PUT", &path, &body, now - 6 * 60 * 1000, 12),
            &body,
            StatusCode::UNAUTHORIZED,
            "more than 5 minutes old",
        ),
        (
            "dated in the future",
            alice.sign("PUT", &path, &body, now + 6 * 60 * 1000, 13),
            &body,
            StatusCode::UNAUTHORIZED,
            "ahead of this server's clock",
        ),
        (
            "body changed after signing",
            alice.sign("PUT", &path, &body, now, 14),
            &tampered_body,
            StatusCode::UNAUTHORIZED,
            "not the one that was signed",
        ),
        (
            "signed for another route",
            alice.sign("PUT", "/api/agents/other/endpoint", &body, now, 15),
            &body,
            StatusCode::UNAUTHORIZED,
            "not this request",
        ),
        (
            "not the owner",
            bob.sign("PUT", &path, &body, now, 16),
            &body,
            StatusCode::FORBIDDEN,
            "bob.testnet does not own",
        ),
        (
            "garbage",
            "NEP413 not-base64-json".to_owned(),
            &body,
            StatusCode::UNAUTHORIZED,
            "wallet signature refused",
        ),
    ];
    for (name, auth, sent_body, expected, words) in cases {
        let (code, answer) = send(&app, "PUT", &path, sent_body, &auth).await;
        assert_eq!(code, expected, "{name}: {answer}");
        assert!(refused_because(&answer, words), "{name}: {answer}");
    }

    // Another recipient's signature.
    let message = SignedRequest::new("PUT", &path, body.as_bytes(), now).message();
    let elsewhere = SignedMessage::sign(
        &alice.key,
        alice.account.clone(),
        message,
        [17; 32],
        "another-service",
    )
    .to_authorization();
    let (code, answer) = send(&app, "PUT", &path, &body, &elsewhere).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(
        refused_because(&answer, "addressed to \"another-service\""),
        "{answer}"
    );

    // Of the refused signatures only bob's (a real key of his, refused as
    // not the owner) holds a nonce: a nonce is spent only once the chain
    // vouches for the key, so keys nobody registered (which anyone can make)
    // cannot fill the server with nonces.
    assert_eq!(app.state.wallet_auth.nonces_held(), 1);

    // A replayed nonce: the first use passes, the replay does not.
    let good_body = json!({ "endpoint": "https://alice.example" }).to_string();
    let auth = alice.sign("PUT", &path, &good_body, now, 18);
    let (code, answer) = send(&app, "PUT", &path, &good_body, &auth).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let (code, answer) = send(&app, "PUT", &path, &good_body, &auth).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(
        refused_because(&answer, "nonce was used before"),
        "{answer}"
    );
    assert_eq!(app.state.wallet_auth.nonces_held(), 2);

    // Only the good request changed the record.
    let record = app.registry.worker(WORKER).unwrap().unwrap();
    assert_eq!(record.endpoint_url, "https://alice.example");

    // A non-owner cannot touch the roster either.
    let body = json!({ "workerId": WORKER }).to_string();
    let auth = alice.sign("POST", "/api/workers/register", &body, now, 19);
    let (code, answer) = send(&app, "POST", "/api/workers/register", &body, &auth).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{answer}");
    assert!(
        refused_because(&answer, "does not own the coordinator contract's roster"),
        "{answer}"
    );
    let (_, roster) = app.call("GET", "/api/workers/registered", None).await;
    assert_eq!(roster["activeCount"], 0, "{roster}");
}

#[tokio::test]
async fn unauthenticated_writes_let_a_local_frontend_write_without_a_credential() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(
        dir.path(),
        TestDeployer::healthy(),
        Options {
            unauthenticated_writes: true,
            ..Options::default()
        },
    )
    .await;
    let (code, answer) = app
        .call(
            "POST",
            "/api/workers/register",
            Some(json!({ "workerId": WORKER })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn production_refuses_unauthenticated_writes_by_name() {
    use clap::Parser;
    let dir = tempfile::tempdir().unwrap();
    // Refused before any other production setting is read, so whatever the
    // environment holds does not matter.
    let config = protocol_api::config::Config::try_parse_from([
        "protocol-api",
        "--mode",
        "production",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--unauthenticated-writes",
        "true",
    ])
    .unwrap();
    let error = match protocol_api::compose::compose(&config).await {
        Ok(_) => panic!("production started with unauthenticated writes"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("UNAUTHENTICATED_WRITES is for local mode only"),
        "{error}"
    );
}
