//! The production flow end to end on `delibera devnet`: a Protocol API in
//! production mode (a child process, so it can be killed with SIGKILL) drives
//! the Phala, NEAR and hosted-Ensue stand-ins through its real adapters,
//! while this test plays the frontend and the user's wallet.

mod common;

use std::time::Duration;

use delibera::deploy::{AgentRole, DeploymentName};
use delibera::devnet::{Devnet, DevnetConfig};
use serde_json::json;

use common::{Server, call, provision, run_production_flow, wait_for};

#[test]
#[ignore = "the server half of the end-to-end tests; started by them"]
fn protocol_api_process() {
    common::protocol_api_process();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_production_flow_runs_end_to_end_on_devnet() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DevnetConfig::new(dir.path().join("devnet"), 0);
    config.boot_delay = Duration::from_millis(300);
    config.block_time = Duration::from_millis(100);
    let devnet = Devnet::start(config).await.unwrap();
    let server = Server::start(&devnet, &dir.path().join("api"), &[]);
    let common::Deliberated {
        coordinator_did,
        user,
        ..
    } = run_production_flow(&devnet, &server).await;

    // A server killed inside the deploy call: on restart the job finds its
    // CVM by name, and the stand-in holds exactly one CVM for it.
    let killed_job = provision(
        &server,
        "/api/provision/worker",
        json!({"coordinatorDid": coordinator_did, "displayName": "Worker Beta", "nearAccount": user}),
    )
    .await;
    let name = DeploymentName::derive(
        AgentRole::Worker,
        "Worker Beta",
        &killed_job.replace('-', ""),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !devnet
        .phala()
        .cvm_names()
        .unwrap()
        .contains(&name.to_string())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the CVM was never committed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, status) = call(
        "GET",
        &format!("{}/api/provision/status/{killed_job}", server.url),
        None,
    )
    .await;
    assert_eq!(
        status["status"], "deploying_phala",
        "killed inside the deploy call"
    );
    server.kill();
    let server = Server::start(&devnet, &dir.path().join("api"), &[]);
    let resumed = wait_for(&server, &killed_job, &["awaiting_near_signature", "failed"]).await;
    assert_eq!(resumed["status"], "awaiting_near_signature", "{resumed}");
    let copies = devnet
        .phala()
        .cvm_names()
        .unwrap()
        .into_iter()
        .filter(|cvm| *cvm == name.to_string())
        .count();
    assert_eq!(copies, 1, "exactly one CVM for the job");
    server.kill();

    // An agent that never becomes healthy: the job fails and its CVM is deleted.
    let server = Server::start(
        &devnet,
        &dir.path().join("api"),
        &[
            ("WORKER_IMAGE", delibera::devnet::phala::NEVER_HEALTHY_IMAGE),
            ("HEALTH_TIMEOUT_SECS", "1"),
        ],
    );
    let doomed = provision(
        &server,
        "/api/provision/worker",
        json!({"coordinatorDid": coordinator_did, "displayName": "Worker Doomed", "nearAccount": user}),
    )
    .await;
    let failed = wait_for(&server, &doomed, &["failed", "awaiting_near_signature"]).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("never became healthy"),
        "{failed}"
    );
    let doomed_name =
        DeploymentName::derive(AgentRole::Worker, "Worker Doomed", &doomed.replace('-', ""));
    assert!(
        !devnet
            .phala()
            .cvm_names()
            .unwrap()
            .contains(&doomed_name.to_string())
    );
    server.kill();
    tokio::time::timeout(Duration::from_secs(60), devnet.stop())
        .await
        .expect("the devnet stopped")
        .unwrap();
}
