//! `LocalRegistry`: every contract rule, with the contract's message.

use delibera_near::{
    AccountId, CoordinatorClaim, CoordinatorRegistration, EndpointUpdate, Error, LocalRegistry,
    Registrar, Registry, WorkerClaim, WorkerRegistration, messages,
};

const COORDINATOR: &str = "did:key:z6MkCoordinator1";
const WORKER: &str = "did:key:z6MkWorker1";

fn id(text: &str) -> AccountId {
    text.parse().unwrap()
}

fn admin() -> AccountId {
    id("admin.testnet")
}

fn alice() -> AccountId {
    id("alice.testnet")
}

fn mallory() -> AccountId {
    id("mallory.testnet")
}

fn registry() -> LocalRegistry {
    LocalRegistry::in_memory(admin()).unwrap()
}

fn coordinator(min_workers: u8, max_workers: u8) -> CoordinatorRegistration {
    CoordinatorRegistration {
        coordinator_did: COORDINATOR.into(),
        endpoint_url: "https://coordinator.example".into(),
        cvm_id: "cvm-c".into(),
        min_workers,
        max_workers,
    }
}

fn worker() -> WorkerRegistration {
    WorkerRegistration {
        coordinator_did: COORDINATOR.into(),
        worker_did: WORKER.into(),
        endpoint_url: "https://worker.example".into(),
        cvm_id: "cvm-w".into(),
    }
}

/// A registry with alice's coordinator and alice's worker.
fn populated() -> LocalRegistry {
    let registry = registry();
    registry
        .register_coordinator_as(&alice(), &coordinator(1, 5))
        .unwrap();
    registry.register_worker_as(&alice(), &worker()).unwrap();
    registry
}

fn message(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::ContractPanic { message }) => message,
        other => panic!("expected a contract panic, got {other:?}"),
    }
}

#[test]
fn coordinator_did_must_start_with_did() {
    let mut registration = coordinator(1, 5);
    registration.coordinator_did = "not-a-did".into();
    assert_eq!(
        message(registry().register_coordinator_as(&alice(), &registration)),
        messages::COORDINATOR_DID_PREFIX
    );
    assert_eq!(
        messages::COORDINATOR_DID_PREFIX,
        "coordinator_did must start with 'did:'"
    );
}

#[test]
fn min_workers_must_not_exceed_max_workers() {
    assert_eq!(
        message(registry().register_coordinator_as(&alice(), &coordinator(4, 3))),
        "min_workers must be <= max_workers"
    );
}

#[test]
fn max_workers_must_be_positive() {
    assert_eq!(
        message(registry().register_coordinator_as(&alice(), &coordinator(0, 0))),
        "max_workers must be > 0"
    );
}

#[test]
fn worker_dids_must_start_with_did() {
    let registry = populated();
    let mut registration = worker();
    registration.worker_did = "not-a-did".into();
    assert_eq!(
        message(registry.register_worker_as(&alice(), &registration)),
        "worker_did must start with 'did:'"
    );
    let mut registration = worker();
    registration.coordinator_did = "nope".into();
    assert_eq!(
        message(registry.register_worker_as(&alice(), &registration)),
        messages::COORDINATOR_DID_PREFIX
    );
}

#[test]
fn a_workers_coordinator_must_exist() {
    assert_eq!(
        message(registry().register_worker_as(&alice(), &worker())),
        "Coordinator not found"
    );
}

#[test]
fn a_workers_coordinator_must_be_active() {
    let registry = registry();
    registry
        .register_coordinator_as(&alice(), &coordinator(1, 5))
        .unwrap();
    registry
        .deactivate_coordinator_as(&alice(), COORDINATOR)
        .unwrap();
    assert_eq!(
        message(registry.register_worker_as(&alice(), &worker())),
        "Coordinator is not active"
    );
}

#[tokio::test]
async fn registration_is_an_upsert_by_did() {
    let registry = populated();
    let mut moved = coordinator(2, 10);
    moved.endpoint_url = "https://moved.example".into();
    let record = registry.register_coordinator_as(&alice(), &moved).unwrap();
    assert_eq!((record.min_workers, record.max_workers), (2, 10));
    let mut moved_worker = worker();
    moved_worker.endpoint_url = "https://worker2.example".into();
    registry
        .register_worker_as(&alice(), &moved_worker)
        .unwrap();

    let coordinators = registry.list_active_coordinators().await.unwrap();
    assert_eq!(coordinators.len(), 1);
    assert_eq!(coordinators[0].endpoint_url, "https://moved.example");
    let workers = registry.list_active_workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].endpoint_url, "https://worker2.example");
}

#[test]
fn only_the_registrant_or_admin_may_upsert() {
    let registry = populated();
    assert_eq!(
        message(registry.register_coordinator_as(&mallory(), &coordinator(1, 5))),
        "Only the original registrant or admin can update"
    );
    assert_eq!(
        message(registry.register_worker_as(&mallory(), &worker())),
        messages::ONLY_REGISTRANT_OR_ADMIN
    );
    // The admin may, and (as on chain) becomes the record's account.
    let record = registry.register_worker_as(&admin(), &worker()).unwrap();
    assert_eq!(record.account_id, admin());
}

#[tokio::test]
async fn only_the_owner_or_admin_may_update_a_worker_endpoint() {
    let registry = populated();
    assert_eq!(
        message(registry.update_worker_endpoint_as(&mallory(), WORKER, "https://evil.example")),
        "Only worker owner or admin can update endpoint"
    );
    registry
        .update_worker_endpoint_as(&alice(), WORKER, "https://a.example")
        .unwrap();
    registry
        .update_worker_endpoint_as(&admin(), WORKER, "https://b.example")
        .unwrap();
    let record = registry.worker_by_did(WORKER).await.unwrap().unwrap();
    assert_eq!(
        (record.endpoint_url.as_str(), record.account_id),
        ("https://b.example", alice())
    );
}

#[test]
fn updating_a_missing_worker_is_worker_not_found() {
    assert_eq!(
        message(registry().update_worker_endpoint_as(&admin(), WORKER, "https://x")),
        "Worker not found"
    );
    assert_eq!(
        message(registry().deactivate_worker_as(&admin(), WORKER)),
        "Worker not found"
    );
    assert_eq!(
        message(registry().deactivate_coordinator_as(&admin(), COORDINATOR)),
        "Coordinator not found"
    );
}

#[tokio::test]
async fn only_the_owner_or_admin_may_deactivate_a_worker() {
    let registry = populated();
    assert_eq!(
        message(registry.deactivate_worker_as(&mallory(), WORKER)),
        "Only worker owner or admin can deactivate"
    );
    registry.deactivate_worker_as(&alice(), WORKER).unwrap();
    assert!(registry.list_active_workers().await.unwrap().is_empty());
    // Deactivated, not deleted.
    assert!(
        !registry
            .worker_by_did(WORKER)
            .await
            .unwrap()
            .unwrap()
            .is_active
    );
    assert!(
        registry
            .workers_for_coordinator(COORDINATOR)
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn only_the_owner_or_admin_may_deactivate_a_coordinator() {
    let registry = populated();
    assert_eq!(
        message(registry.deactivate_coordinator_as(&mallory(), COORDINATOR)),
        "Only coordinator owner or admin can deactivate"
    );
    registry
        .deactivate_coordinator_as(&admin(), COORDINATOR)
        .unwrap();
    assert!(
        registry
            .list_active_coordinators()
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !registry
            .coordinator_by_did(COORDINATOR)
            .await
            .unwrap()
            .unwrap()
            .is_active
    );
}

#[test]
fn only_the_roster_owner_may_remove_a_worker() {
    let registry = registry();
    registry
        .roster_register_as(&admin(), WORKER, Some(&alice()))
        .unwrap();
    assert_eq!(
        message(registry.roster_remove_as(&mallory(), WORKER)),
        "Only owner can call this function. Owner: admin.testnet, Caller: mallory.testnet"
    );
    registry.roster_remove_as(&admin(), WORKER).unwrap();
    assert_eq!(registry.roster_count().unwrap(), 0);
}

#[tokio::test]
async fn only_the_owner_or_a_roster_coordinator_may_register_roster_workers() {
    let registry = registry();
    assert_eq!(
        message(registry.roster_register_as(&mallory(), WORKER, None)),
        "Only owner or registered coordinator can register workers"
    );
    assert_eq!(
        message(registry.add_roster_coordinator_as(&mallory(), &mallory())),
        messages::only_owner("admin.testnet", "mallory.testnet")
    );
    registry
        .add_roster_coordinator_as(&admin(), &alice())
        .unwrap();
    registry.roster_register_as(&alice(), WORKER, None).unwrap();
    let roster = registry.roster().await.unwrap();
    assert_eq!(roster.len(), 1);
    assert_eq!(
        (
            roster[0].registered_by.clone(),
            roster[0].account_id.clone(),
            roster[0].active
        ),
        (alice(), None, true)
    );
    assert!(roster[0].registered_at > 0);
}

#[tokio::test]
async fn the_ports_act_as_admin_and_register_on_behalf_of_users() {
    let registry = registry();
    let port: &dyn Registry = &registry;
    let registrar: &dyn Registrar = &registry;
    registrar
        .complete_coordinator(&CoordinatorClaim {
            owner: alice(),
            registration: coordinator(1, 3),
            contract: None,
            tx_hash: Some("anything: there is no chain".into()),
        })
        .await
        .unwrap();
    let record = registrar
        .complete_worker(&WorkerClaim {
            owner: id("bob.testnet"),
            registration: worker(),
            tx_hash: None,
        })
        .await
        .unwrap();
    assert_eq!(record.account_id, id("bob.testnet"));
    assert!(record.registered_at > 0);

    port.update_worker_endpoint(&EndpointUpdate {
        did: WORKER.into(),
        endpoint_url: "https://new.example".into(),
        cvm_id: None,
    })
    .await
    .unwrap();
    // The registry changes a coordinator's endpoint only by registering it
    // again, which as the admin would make the admin alice's coordinator's
    // owner: refused, and the record stays as it was.
    let before = port.coordinator_by_did(COORDINATOR).await.unwrap().unwrap();
    let refused = port
        .update_coordinator_endpoint(&EndpointUpdate {
            did: COORDINATOR.into(),
            endpoint_url: "https://c2.example".into(),
            cvm_id: Some("cvm-2".into()),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, delibera_near::Error::WouldReregister { reason, .. }
            if reason.contains("alice.testnet")),
        "{refused:?}"
    );
    assert_eq!(
        port.coordinator_by_did(COORDINATOR).await.unwrap().unwrap(),
        before
    );
    let worker_record = port.worker_by_did(WORKER).await.unwrap().unwrap();
    assert_eq!(worker_record.endpoint_url, "https://new.example");
    assert_eq!(worker_record.account_id, id("bob.testnet"));
    // A worker update naming its current CVM id changes the endpoint in
    // place, the owner kept; a new CVM id would need registering it again.
    port.update_worker_endpoint(&EndpointUpdate {
        did: WORKER.into(),
        endpoint_url: "https://newer.example".into(),
        cvm_id: Some(worker_record.cvm_id.clone()),
    })
    .await
    .unwrap();
    let moved = port.worker_by_did(WORKER).await.unwrap().unwrap();
    assert_eq!(
        (moved.endpoint_url.as_str(), &moved.account_id),
        ("https://newer.example", &id("bob.testnet"))
    );
    let refused = port
        .update_worker_endpoint(&EndpointUpdate {
            did: WORKER.into(),
            endpoint_url: "https://newest.example".into(),
            cvm_id: Some("another-cvm".into()),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(refused, delibera_near::Error::WouldReregister { .. }),
        "{refused:?}"
    );

    let missing = port
        .update_worker_endpoint(&EndpointUpdate {
            did: "did:key:z6MkNobody".into(),
            endpoint_url: "https://x".into(),
            cvm_id: Some("c".into()),
        })
        .await;
    assert_eq!(message(missing), messages::WORKER_NOT_FOUND);

    port.roster_register(WORKER, Some(&id("bob.testnet")))
        .await
        .unwrap();
    port.roster_register(WORKER, None).await.unwrap();
    assert_eq!(port.roster().await.unwrap().len(), 1);
    port.roster_remove(WORKER).await.unwrap();
    assert!(port.roster().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_database_file_survives_reopening() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("registry.sqlite");
    {
        let registry = LocalRegistry::open(&path, admin()).unwrap();
        registry
            .register_coordinator_as(&alice(), &coordinator(1, 5))
            .unwrap();
        registry.register_worker_as(&alice(), &worker()).unwrap();
        registry
            .roster_register_as(&admin(), WORKER, Some(&alice()))
            .unwrap();
    }
    let registry = LocalRegistry::open(&path, admin()).unwrap();
    assert_eq!(registry.list_active_coordinators().await.unwrap().len(), 1);
    assert_eq!(
        registry
            .worker_by_did(WORKER)
            .await
            .unwrap()
            .unwrap()
            .account_id,
        alice()
    );
    assert_eq!(
        registry.roster().await.unwrap()[0].account_id,
        Some(alice())
    );
}

#[cfg(unix)]
#[test]
fn the_database_file_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("registry.sqlite");
    let registry = LocalRegistry::open(&path, admin()).unwrap();
    registry
        .register_coordinator_as(&alice(), &coordinator(1, 5))
        .unwrap();
    drop(registry);
    assert_eq!(mode(&path), 0o600);

    // A file left readable by an earlier release is tightened on open.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    LocalRegistry::open(&path, admin()).unwrap();
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn a_block_timestamp_makes_a_replay_give_the_same_records_and_stats_count() {
    let replays = [registry(), registry()];
    for registry in &replays {
        registry
            .register_coordinator_at(&alice(), &coordinator(1, 5), 1_000)
            .unwrap();
        registry
            .register_worker_at(&alice(), &worker(), 2_000)
            .unwrap();
        registry
            .roster_register_at(&admin(), WORKER, Some(&alice()), 3_000)
            .unwrap();
    }
    let [first, second] = &replays;
    assert_eq!(
        first.list_coordinators().unwrap(),
        second.list_coordinators().unwrap()
    );
    assert_eq!(
        first.list_workers().unwrap(),
        second.list_workers().unwrap()
    );
    assert_eq!(first.list_roster().unwrap(), second.list_roster().unwrap());
    assert_eq!(
        first
            .coordinator(COORDINATOR)
            .unwrap()
            .unwrap()
            .registered_at,
        1_000
    );
    assert_eq!(first.worker(WORKER).unwrap().unwrap().registered_at, 2_000);
    assert_eq!(first.list_roster().unwrap()[0].registered_at, 3_000);

    first.deactivate_worker_as(&alice(), WORKER).unwrap();
    let stats = first.stats().unwrap();
    assert_eq!(
        (
            stats.total_coordinators,
            stats.active_coordinators,
            stats.total_workers,
            stats.active_workers
        ),
        (1, 1, 1, 0)
    );
}

#[tokio::test]
async fn the_admin_moves_its_own_coordinator_but_never_switches_one_back_on() {
    let registry = registry();
    registry
        .register_coordinator_as(&admin(), &coordinator(1, 5))
        .unwrap();
    let port: &dyn Registry = &registry;
    let moved = EndpointUpdate {
        did: COORDINATOR.into(),
        endpoint_url: "https://c2.example".into(),
        cvm_id: Some("cvm-2".into()),
    };
    port.update_coordinator_endpoint(&moved).await.unwrap();
    let record = port.coordinator_by_did(COORDINATOR).await.unwrap().unwrap();
    assert_eq!(
        (
            record.endpoint_url.as_str(),
            record.cvm_id.as_str(),
            &record.account_id,
            record.min_workers,
            record.max_workers
        ),
        ("https://c2.example", "cvm-2", &admin(), 1, 5)
    );

    registry
        .deactivate_coordinator_as(&admin(), COORDINATOR)
        .unwrap();
    let refused = port.update_coordinator_endpoint(&moved).await.unwrap_err();
    assert!(
        matches!(&refused, Error::WouldReregister { reason, .. } if reason.contains("deactivated")),
        "{refused:?}"
    );
    assert!(
        !port
            .coordinator_by_did(COORDINATOR)
            .await
            .unwrap()
            .unwrap()
            .is_active
    );
}
