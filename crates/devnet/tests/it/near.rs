//! The NEAR devnet, driven through `delibera-near`'s real clients (and raw
//! JSON where the wire shape matters).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use delibera_identity::Keypair;
use delibera_near::{
    Action, BlockReference, ChainRegistrar, CoordinatorClaim, CoordinatorContract,
    CoordinatorRegistration, Error, FunctionCall, NearSigner, Registrar, RegistryContract,
    RpcRegistry, TransactionSender, TxExecutionStatus, WorkerClaim, WorkerRegistration, messages,
};
use serde_json::{Value, json};

use crate::support::{account, config, devnet, raw, rpc, start, user, wait_for_height, within};

const COORDINATOR_DID: &str = "did:key:z6MkDevnetCoordinator";
const WORKER_DID: &str = "did:key:z6MkDevnetWorker";

fn coordinator() -> CoordinatorRegistration {
    CoordinatorRegistration {
        coordinator_did: COORDINATOR_DID.into(),
        endpoint_url: "https://coordinator.example".into(),
        cvm_id: "cvm-c".into(),
        min_workers: 1,
        max_workers: 3,
    }
}

fn worker() -> WorkerRegistration {
    WorkerRegistration {
        coordinator_did: COORDINATOR_DID.into(),
        worker_did: WORKER_DID.into(),
        endpoint_url: "https://worker.example".into(),
        cvm_id: "cvm-w".into(),
    }
}

fn registry_id() -> delibera_near::AccountId {
    account("registry.devnet")
}

fn call(method: &str, args: Value) -> FunctionCall {
    FunctionCall::json(method, &args, delibera_near::CHANGE_CALL_GAS, 0)
}

#[tokio::test]
async fn a_user_registers_and_the_chain_registrar_verifies_by_tx_and_views() {
    let (devnet, _dir) = devnet().await;
    let alice = user(&devnet, "alice.devnet");
    let registry = RegistryContract::with_sender(alice.clone(), registry_id());

    let record = within(registry.register_coordinator(&coordinator()))
        .await
        .unwrap();
    assert_eq!(record.account_id, "alice.devnet");
    assert!(record.registered_at > 0);
    let outcome = within(alice.function_call(
        &registry_id(),
        call("register_worker", serde_json::to_value(worker()).unwrap()),
    ))
    .await
    .unwrap();
    let worker_tx = outcome.transaction_hash.unwrap().to_base58();
    assert_eq!(outcome.final_execution_status.as_deref(), Some("FINAL"));

    let found = within(rpc(&devnet).tx_status(
        &outcome.transaction_hash.unwrap(),
        &account("alice.devnet"),
        TxExecutionStatus::ExecutedOptimistic,
    ))
    .await
    .unwrap();
    assert_eq!(found.signer_id, Some(account("alice.devnet")));
    assert_eq!(found.receiver_id, Some(registry_id()));
    let record: delibera_near::WorkerRecord = found.json().unwrap();
    assert_eq!(record.worker_did, WORKER_DID);

    let views = RegistryContract::new(rpc(&devnet), registry_id());
    let roster = CoordinatorContract::new(rpc(&devnet), account("roster.devnet"));
    let registrar = ChainRegistrar::new(
        Arc::new(RpcRegistry::new(views.clone(), roster)),
        rpc(&devnet),
        vec![registry_id()],
    );
    let verified = within(registrar.complete_worker(&WorkerClaim {
        owner: account("alice.devnet"),
        registration: worker(),
        tx_hash: Some(worker_tx.clone()),
    }))
    .await
    .unwrap();
    assert_eq!(verified.endpoint_url, "https://worker.example");
    within(registrar.complete_coordinator(&CoordinatorClaim {
        owner: account("alice.devnet"),
        registration: coordinator(),
        contract: None,
        tx_hash: None,
    }))
    .await
    .unwrap();
    // Someone else cannot claim alice's transaction.
    let error = within(registrar.complete_worker(&WorkerClaim {
        owner: account("bob.devnet"),
        registration: worker(),
        tx_hash: Some(worker_tx),
    }))
    .await
    .unwrap_err();
    assert!(matches!(error, Error::Unconfirmed(_)), "{error}");

    let stats = within(views.get_stats()).await.unwrap();
    assert_eq!((stats.active_coordinators, stats.active_workers), (1, 1));
    assert_eq!(
        within(views.get_workers_for_coordinator(COORDINATOR_DID))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        within(views.list_active_coordinators())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(within(views.list_active_workers()).await.unwrap().len(), 1);
    within(devnet.stop()).await.unwrap();
}

#[tokio::test]
async fn final_views_lag_two_blocks_behind_optimistic() {
    let dir = tempfile::tempdir().unwrap();
    // Slow blocks leave time to look between the two views.
    let devnet = start(config(&dir, 300)).await;
    let alice =
        user(&devnet, "alice.devnet").with_wait_until(TxExecutionStatus::ExecutedOptimistic);
    let outcome = within(alice.function_call(
        &registry_id(),
        call(
            "register_coordinator",
            serde_json::to_value(coordinator()).unwrap(),
        ),
    ))
    .await
    .unwrap();
    let rpc = rpc(&devnet);
    let args = json!({ "coordinator_did": COORDINATOR_DID }).to_string();
    let view = |block: BlockReference| {
        let rpc = rpc.clone();
        let args = args.clone();
        async move {
            let bytes = within(rpc.call_function(
                &registry_id(),
                "get_coordinator_by_did",
                args.as_bytes(),
                &block,
            ))
            .await
            .unwrap();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        }
    };
    let included = outcome.raw["transaction_outcome"]["block_hash"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let height = within(rpc.block(&BlockReference::Hash(included)))
        .await
        .unwrap()
        .height;
    assert!(view(BlockReference::Optimistic).await.is_object());
    assert_eq!(view(BlockReference::Final).await, Value::Null);
    // The account's nonce lags the same way.
    let key = alice.signer().public_key();
    let optimistic =
        within(rpc.view_access_key(&account("alice.devnet"), &key, &BlockReference::Optimistic))
            .await
            .unwrap();
    let final_ =
        within(rpc.view_access_key(&account("alice.devnet"), &key, &BlockReference::Final))
            .await
            .unwrap();
    assert_eq!(optimistic.nonce, final_.nonce + 1);

    wait_for_height(&devnet, height + 2).await;
    assert!(view(BlockReference::Final).await.is_object());
    within(devnet.stop()).await.unwrap();
}

#[tokio::test]
async fn stale_and_replayed_nonces_are_invalid_nonce() {
    let (devnet, _dir) = devnet().await;
    let alice = user(&devnet, "alice.devnet");
    let rpc = rpc(&devnet);
    let key = within(rpc.view_access_key(
        &account("alice.devnet"),
        &alice.signer().public_key(),
        &BlockReference::Optimistic,
    ))
    .await
    .unwrap();
    let sign = |nonce: u64, deposit: u128| {
        alice
            .signer()
            .sign(
                account("bob.devnet"),
                nonce,
                key.block_hash,
                vec![Action::Transfer { deposit }],
            )
            .unwrap()
    };
    devnet.create_account(&account("bob.devnet")).unwrap();
    let stale = within(rpc.send_tx(&sign(key.nonce, 1), TxExecutionStatus::ExecutedOptimistic))
        .await
        .unwrap_err();
    assert!(
        matches!(stale, Error::InvalidNonce { tx_nonce, ak_nonce } if tx_nonce == key.nonce && ak_nonce == key.nonce),
        "{stale}"
    );
    let first = sign(key.nonce + 1, 1);
    within(rpc.send_tx(&first, TxExecutionStatus::ExecutedOptimistic))
        .await
        .unwrap()
        .into_result()
        .unwrap();
    // The same bytes again are the same transaction, not a replay.
    let again = within(rpc.send_tx(&first, TxExecutionStatus::ExecutedOptimistic))
        .await
        .unwrap();
    assert_eq!(again.transaction_hash, Some(first.hash()));
    let replayed = within(rpc.send_tx(
        &sign(key.nonce + 1, 2),
        TxExecutionStatus::ExecutedOptimistic,
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(replayed, Error::InvalidNonce { tx_nonce, ak_nonce } if tx_nonce == key.nonce + 1 && ak_nonce == key.nonce + 1),
        "{replayed}"
    );
    within(devnet.stop()).await.unwrap();
}

#[tokio::test]
async fn unknown_keys_missing_signers_and_bad_signatures_get_nearcore_errors() {
    let (devnet, _dir) = devnet().await;
    let alice = user(&devnet, "alice.devnet");
    let rpc = rpc(&devnet);
    let head = within(rpc.block(&BlockReference::Final)).await.unwrap();
    let details = |error: Error| match error {
        Error::InvalidTransaction { details } => details,
        other => panic!("not an invalid transaction: {other}"),
    };
    let transfer = vec![Action::Transfer { deposit: 1 }];

    let stranger = NearSigner::new(account("alice.devnet"), Keypair::from_seed(&[9; 32]));
    let signed = stranger
        .sign(account("alice.devnet"), 1, head.hash, transfer.clone())
        .unwrap();
    let error = within(rpc.send_tx(&signed, TxExecutionStatus::ExecutedOptimistic))
        .await
        .unwrap_err();
    assert_eq!(
        details(error),
        json!({"TxExecutionError": {"InvalidTxError": {"InvalidAccessKeyError": {"AccessKeyNotFound": {
            "account_id": "alice.devnet",
            "public_key": stranger.public_key().to_near_string(),
        }}}}})
    );

    let ghost = NearSigner::new(account("ghost.devnet"), Keypair::from_seed(&[9; 32]));
    let signed = ghost
        .sign(account("alice.devnet"), 1, head.hash, transfer.clone())
        .unwrap();
    let error = within(rpc.send_tx(&signed, TxExecutionStatus::ExecutedOptimistic))
        .await
        .unwrap_err();
    assert_eq!(
        details(error),
        json!({"TxExecutionError": {"InvalidTxError": {"SignerDoesNotExist": {"signer_id": "ghost.devnet"}}}})
    );

    // Alice's key signing a transaction of bob's.
    devnet.create_account(&account("bob.devnet")).unwrap();
    let impostor = NearSigner::from_secret_key(
        account("bob.devnet"),
        &devnet
            .create_account(&account("carol.devnet"))
            .unwrap()
            .secret_key,
    )
    .unwrap();
    let signed = impostor
        .sign(
            account("alice.devnet"),
            u64::from(u32::MAX),
            head.hash,
            transfer.clone(),
        )
        .unwrap();
    let error = within(rpc.send_tx(&signed, TxExecutionStatus::ExecutedOptimistic))
        .await
        .unwrap_err();
    assert!(
        details(error)
            .pointer("/TxExecutionError/InvalidTxError/InvalidAccessKeyError/AccessKeyNotFound")
            .is_some()
    );

    // A flipped signature bit.
    let signed = alice
        .signer()
        .sign(
            account("bob.devnet"),
            u64::from(u32::MAX),
            head.hash,
            transfer.clone(),
        )
        .unwrap();
    let mut bytes = signed.to_borsh();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let (status, body) = raw(
        &devnet,
        "send_tx",
        json!({"signed_tx_base64": BASE64.encode(&bytes), "wait_until": "EXECUTED_OPTIMISTIC"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["error"]["cause"]["name"], "INVALID_TRANSACTION");
    assert_eq!(
        body["error"]["data"],
        json!({"TxExecutionError": {"InvalidTxError": "InvalidSignature"}})
    );

    // An unknown block hash: the transaction has expired.
    let signed = alice
        .signer()
        .sign(
            account("bob.devnet"),
            u64::from(u32::MAX),
            delibera_near::CryptoHash([7; 32]),
            transfer,
        )
        .unwrap();
    let error = within(rpc.send_tx(&signed, TxExecutionStatus::ExecutedOptimistic))
        .await
        .unwrap_err();
    assert_eq!(
        details(error),
        json!({"TxExecutionError": {"InvalidTxError": "Expired"}})
    );
    within(devnet.stop()).await.unwrap();
}

#[tokio::test]
async fn contract_panics_carry_the_contract_message() {
    let (devnet, _dir) = devnet().await;
    let alice = user(&devnet, "alice.devnet");
    let registry = RegistryContract::with_sender(alice.clone(), registry_id());
    let error = within(registry.register_worker(&worker()))
        .await
        .unwrap_err();
    assert_eq!(error.panic_message(), Some(messages::COORDINATOR_NOT_FOUND));

    let mut bad = coordinator();
    bad.coordinator_did = "no-did".into();
    let outcome = within(
        rpc(&devnet).send_tx(
            &alice
                .signer()
                .sign(
                    registry_id(),
                    within(rpc(&devnet).view_access_key(
                        &account("alice.devnet"),
                        &alice.signer().public_key(),
                        &BlockReference::Optimistic,
                    ))
                    .await
                    .unwrap()
                    .nonce
                        + 1,
                    within(rpc(&devnet).block(&BlockReference::Final))
                        .await
                        .unwrap()
                        .hash,
                    vec![Action::FunctionCall(call(
                        "register_coordinator",
                        serde_json::to_value(&bad).unwrap(),
                    ))],
                )
                .unwrap(),
            // Final, so that the sender below reads the nonce this one used.
            TxExecutionStatus::Final,
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        outcome.raw["status"],
        json!({"Failure": {"ActionError": {"index": 0, "kind": {"FunctionCallError": {
            "ExecutionError": format!("Smart contract panicked: {}", messages::COORDINATOR_DID_PREFIX)
        }}}}})
    );

    // Unknown methods and contract-less accounts, in transactions and views.
    let error = within(alice.function_call(&registry_id(), call("no_such_method", json!({}))))
        .await
        .unwrap_err();
    match error {
        Error::ActionFailed { kind, .. } => assert_eq!(
            kind,
            json!({"FunctionCallError": {"MethodResolveError": "MethodNotFound"}})
        ),
        other => panic!("{other}"),
    }
    let view = within(rpc(&devnet).view::<Value>(&registry_id(), "no_such_method", &json!({})))
        .await
        .unwrap_err();
    assert!(view.to_string().contains("MethodNotFound"), "{view}");
    let view =
        within(rpc(&devnet).view::<Value>(&account("alice.devnet"), "get_stats", &json!({})))
            .await
            .unwrap_err();
    assert!(view.to_string().contains("CodeDoesNotExist"), "{view}");
    let view =
        within(rpc(&devnet).view::<Value>(&account("nobody.devnet"), "get_stats", &json!({})))
            .await
            .unwrap_err();
    assert!(matches!(view, Error::UnknownAccount { .. }), "{view}");
    within(devnet.stop()).await.unwrap();
}

#[tokio::test]
async fn the_factory_creates_a_roster_owned_by_the_caller() {
    let (devnet, _dir) = devnet().await;
    let alice = user(&devnet, "alice.devnet");
    let factory = account("factory.devnet");
    let create = || {
        call(
            "create_coordinator",
            json!({"prefix": "dao", "min_workers": 1, "max_workers": 3}),
        )
    };
    let outcome = within(alice.function_call(&factory, create()))
        .await
        .unwrap();
    let created: String = outcome.json().unwrap();
    assert_eq!(created, "dao.factory.devnet");

    let again = within(alice.function_call(&factory, create()))
        .await
        .unwrap_err();
    assert_eq!(
        again.panic_message(),
        Some("Account dao.factory.devnet already exists")
    );
    let bad = within(alice.function_call(
        &factory,
        call(
            "create_coordinator",
            json!({"prefix": "Bad.Prefix", "min_workers": 1, "max_workers": 3}),
        ),
    ))
    .await
    .unwrap_err();
    assert!(
        bad.panic_message().unwrap().contains("Invalid prefix"),
        "{bad}"
    );

    let roster_id = account(&created);
    let owned = CoordinatorContract::with_sender(alice.clone(), roster_id.clone());
    within(owned.register_worker(WORKER_DID, Some(&account("alice.devnet"))))
        .await
        .unwrap();
    let workers = within(owned.get_registered_workers()).await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].registered_by, "alice.devnet");
    assert_eq!(within(owned.get_worker_count()).await.unwrap(), 1);

    let bob = user(&devnet, "bob.devnet");
    let stranger = CoordinatorContract::with_sender(bob, roster_id);
    let error = within(stranger.remove_worker(WORKER_DID))
        .await
        .unwrap_err();
    assert_eq!(
        error.panic_message(),
        Some(messages::only_owner("alice.devnet", "bob.devnet").as_str())
    );
    within(devnet.stop()).await.unwrap();
}

#[tokio::test]
async fn the_admin_owns_the_configured_roster() {
    let (devnet, _dir) = devnet().await;
    let admin = devnet.admin_key().unwrap();
    let sender = TransactionSender::new(
        rpc(&devnet),
        NearSigner::from_secret_key(admin.account_id, &admin.secret_key).unwrap(),
    )
    .with_wait_until(TxExecutionStatus::Final);
    let roster = CoordinatorContract::with_sender(sender, account("roster.devnet"));
    within(roster.register_worker(WORKER_DID, None))
        .await
        .unwrap();
    within(roster.remove_worker(WORKER_DID)).await.unwrap();
    assert_eq!(within(roster.get_worker_count()).await.unwrap(), 0);
    within(devnet.stop()).await.unwrap();
}

#[tokio::test]
async fn a_restart_on_the_same_directory_keeps_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let devnet = start(config(&dir, 20)).await;
    let alice = devnet.create_account(&account("alice.devnet")).unwrap();
    let sender = TransactionSender::new(
        rpc(&devnet),
        NearSigner::from_secret_key(alice.account_id.clone(), &alice.secret_key).unwrap(),
    )
    .with_wait_until(TxExecutionStatus::Final);
    let registry = RegistryContract::with_sender(sender.clone(), registry_id());
    let before = within(registry.register_coordinator(&coordinator()))
        .await
        .unwrap();
    let height = devnet.height();
    let nonce = within(rpc(&devnet).view_access_key(
        &alice.account_id,
        &sender.signer().public_key(),
        &BlockReference::Final,
    ))
    .await
    .unwrap()
    .nonce;
    within(devnet.stop()).await.unwrap();

    let devnet = start(config(&dir, 20)).await;
    assert!(devnet.height() >= height);
    let views = RegistryContract::new(rpc(&devnet), registry_id());
    assert_eq!(
        within(views.get_coordinator_by_did(COORDINATOR_DID))
            .await
            .unwrap(),
        Some(before)
    );
    let after = within(rpc(&devnet).view_access_key(
        &alice.account_id,
        &sender.signer().public_key(),
        &BlockReference::Final,
    ))
    .await
    .unwrap();
    assert_eq!(after.nonce, nonce);
    let error = devnet.create_account(&alice.account_id).unwrap_err();
    assert!(error.to_string().contains("already exists"), "{error}");
    // The same key keeps working after the restart.
    let sender = TransactionSender::new(rpc(&devnet), sender.signer().clone())
        .with_wait_until(TxExecutionStatus::Final);
    within(RegistryContract::with_sender(sender, registry_id()).register_worker(&worker()))
        .await
        .unwrap();
    within(devnet.stop()).await.unwrap();
}

#[tokio::test]
async fn the_faucet_works_over_rpc() {
    let (devnet, _dir) = devnet().await;
    let (status, body) = raw(
        &devnet,
        "devnet_create_account",
        json!({"account_id": "eve.devnet"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["accountId"], "eve.devnet");
    let secret = body["result"]["privateKey"].as_str().unwrap();
    assert!(secret.starts_with("ed25519:"));
    let signer = NearSigner::from_secret_key(account("eve.devnet"), secret).unwrap();
    let key = within(rpc(&devnet).view_access_key(
        &account("eve.devnet"),
        &signer.public_key(),
        &BlockReference::Final,
    ))
    .await
    .unwrap();
    assert_eq!(key.permission, json!("FullAccess"));

    let (_, again) = raw(
        &devnet,
        "devnet_create_account",
        json!({"account_id": "eve.devnet"}),
    )
    .await;
    assert_eq!(again["error"]["cause"]["name"], "ACCOUNT_ALREADY_EXISTS");
    let (status, invalid) = raw(
        &devnet,
        "devnet_create_account",
        json!({"account_id": "Eve"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(invalid["error"]["cause"]["name"], "PARSE_ERROR");
    within(devnet.stop()).await.unwrap();
}

#[tokio::test]
async fn wire_shapes_match_nearcore() {
    let (devnet, _dir) = devnet().await;
    let alice = user(&devnet, "alice.devnet");
    let rpc = rpc(&devnet);

    let (_, block) = raw(&devnet, "block", json!({"finality": "final"})).await;
    let header = &block["result"]["header"];
    assert!(header["height"].is_u64());
    assert_eq!(
        header["timestamp_nanosec"],
        json!(header["timestamp"].as_u64().unwrap().to_string())
    );
    assert_eq!(header["gas_price"], "100000000");
    let (_, by_height) = raw(&devnet, "block", json!({"block_id": header["height"]})).await;
    assert_eq!(by_height["result"]["header"]["hash"], header["hash"]);
    let (_, missing) = raw(&devnet, "block", json!({"block_id": 1_000_000_000})).await;
    assert_eq!(missing["error"]["cause"]["name"], "UNKNOWN_BLOCK");

    let (_, account_view) = raw(
        &devnet,
        "query",
        json!({"request_type": "view_account", "finality": "final", "account_id": "alice.devnet"}),
    )
    .await;
    assert_eq!(
        account_view["result"]["amount"],
        "100000000000000000000000000"
    );
    let (_, keys) = raw(
        &devnet,
        "query",
        json!({"request_type": "view_access_key_list", "finality": "optimistic", "account_id": "alice.devnet"}),
    )
    .await;
    assert_eq!(
        keys["result"]["keys"][0]["public_key"],
        alice.signer().public_key().to_near_string()
    );
    let (_, no_key) = raw(
        &devnet,
        "query",
        json!({"request_type": "view_access_key", "finality": "final", "account_id": "alice.devnet",
               "public_key": Keypair::from_seed(&[3; 32]).public_key().to_near_string()}),
    )
    .await;
    assert!(
        no_key["result"]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist while viewing")
    );
    let (_, view) = raw(
        &devnet,
        "query",
        json!({"request_type": "call_function", "finality": "final", "account_id": "registry.devnet",
               "method_name": "get_min_deposit", "args_base64": ""}),
    )
    .await;
    assert_eq!(
        view["result"]["result"],
        json!(br#""100000000000000000000000""#.to_vec())
    );
    assert!(view["result"]["block_hash"].is_string());

    let outcome = within(alice.function_call(
        &registry_id(),
        call(
            "register_coordinator",
            serde_json::to_value(coordinator()).unwrap(),
        ),
    ))
    .await
    .unwrap();
    let hash = outcome.transaction_hash.unwrap().to_base58();
    let (_, legacy) = raw(&devnet, "tx", json!([hash, "alice.devnet"])).await;
    let result = &legacy["result"];
    assert_eq!(result["final_execution_status"], "FINAL");
    assert_eq!(result["transaction"]["hash"], json!(hash));
    assert_eq!(result["transaction"]["signer_id"], "alice.devnet");
    assert_eq!(
        result["transaction"]["actions"][0]["FunctionCall"]["method_name"],
        "register_coordinator"
    );
    assert_eq!(result["transaction_outcome"]["id"], json!(hash));
    assert_eq!(
        result["receipts_outcome"][0]["outcome"]["status"],
        result["status"]
    );
    let unknown = within(rpc.tx_status(
        &delibera_near::CryptoHash([5; 32]),
        &account("alice.devnet"),
        TxExecutionStatus::ExecutedOptimistic,
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(unknown, Error::UnknownTransaction { .. }),
        "{unknown}"
    );

    let (_, status) = raw(&devnet, "status", json!([])).await;
    assert_eq!(status["result"]["chain_id"], "delibera-devnet");
    let (_, gas) = raw(&devnet, "gas_price", json!([null])).await;
    assert_eq!(gas["result"]["gas_price"], "100000000");
    let (status_code, nope) = raw(&devnet, "no_such_method", json!({})).await;
    assert_eq!(status_code, 400);
    assert_eq!(nope["error"]["cause"]["name"], "METHOD_NOT_FOUND");
    within(devnet.stop()).await.unwrap();
}

#[tokio::test]
async fn legacy_broadcast_methods_and_function_call_keys() {
    let (devnet, _dir) = devnet().await;
    let alice = user(&devnet, "alice.devnet");
    let rpc = rpc(&devnet);
    let limited = Keypair::from_seed(&[4; 32]);
    within(alice.send(
        &account("alice.devnet"),
        vec![Action::AddKey {
            public_key: limited.public_key(),
            access_key: delibera_near::AccessKey {
                nonce: 0,
                permission: delibera_near::AccessKeyPermission::FunctionCall {
                    allowance: None,
                    receiver_id: "registry.devnet".into(),
                    method_names: vec!["register_coordinator".into()],
                },
            },
        }],
    ))
    .await
    .unwrap();
    let key = within(rpc.view_access_key(
        &account("alice.devnet"),
        &limited.public_key(),
        &BlockReference::Final,
    ))
    .await
    .unwrap();
    let signer = NearSigner::new(account("alice.devnet"), limited);
    let wrong_method = signer
        .sign(
            registry_id(),
            key.nonce + 1,
            key.block_hash,
            vec![Action::FunctionCall(call(
                "deactivate_worker",
                json!({"worker_did": "did:x"}),
            ))],
        )
        .unwrap();
    let (_, body) = raw(
        &devnet,
        "broadcast_tx_commit",
        json!([wrong_method.to_base64()]),
    )
    .await;
    assert_eq!(
        body["error"]["data"],
        json!({"TxExecutionError": {"InvalidTxError": {"InvalidAccessKeyError": {"MethodNameMismatch": {"method_name": "deactivate_worker"}}}}})
    );
    let allowed = signer
        .sign(
            registry_id(),
            key.nonce + 1,
            key.block_hash,
            vec![Action::FunctionCall(call(
                "register_coordinator",
                serde_json::to_value(coordinator()).unwrap(),
            ))],
        )
        .unwrap();
    let (_, hash) = raw(&devnet, "broadcast_tx_async", json!([allowed.to_base64()])).await;
    assert_eq!(hash["result"], json!(allowed.hash().to_base58()));
    let outcome = within(rpc.tx_status(
        &allowed.hash(),
        &account("alice.devnet"),
        TxExecutionStatus::Final,
    ))
    .await
    .unwrap()
    .into_result()
    .unwrap();
    assert_eq!(outcome.final_execution_status.as_deref(), Some("FINAL"));
    let (_, committed) = raw(&devnet, "broadcast_tx_commit", json!([allowed.to_base64()])).await;
    assert!(committed["result"].get("final_execution_status").is_none());
    assert!(committed["result"]["status"]["SuccessValue"].is_string());
    within(devnet.stop()).await.unwrap();
}
