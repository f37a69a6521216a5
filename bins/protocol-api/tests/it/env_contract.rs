//! The env contract end to end: what the server seals into a production
//! deployment (a Phala fake, decrypted with its KMS key) is exactly what the
//! agent reads, it carries the chain and the public URL, and the agent needs
//! nothing it does not get.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use delibera_deploy::{AgentEnv, AgentRole, EnvVar, HealthGate, vars};
use delibera_ensue_local::LocalEnsue;
use delibera_near::{CoordinatorRegistration, LocalRegistry};
use delibera_phala::{
    PhalaClient, PhalaDeployer, PhalaDeployerOptions, decrypt_env, encryption_pubkey_hex,
};
use delibera_storacha::LocalSpaceDelegator;
use protocol_api::AppState;
use protocol_api::ports::{AgentChain, HttpEnsue, Ports, Settings};
use protocol_api::seal::SecretBox;
use protocol_api::store::Database;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};
use zeroize::Zeroizing;

use crate::common::{self, Api, TestApp};

const KMS_KEY: [u8; 32] = [0x21; 32];
const APP_ID: &str = "1f2e3d4c5b6a79880716253443526170ffeeddcc";
const GATEWAY: &str = "gw.phala.example";
const RPC: &str = "https://rpc.testnet.near.org/";
const REGISTRY: &str = "registry.agents-coordinator.testnet";
const ROSTER: &str = "coordinator.agents-coordinator.testnet";
const CONTRACT: &str = "mydao.coord-factory.agents-coordinator.testnet";

const PINNED_WORKER: &str = "ghcr.io/delibera/delibera-worker@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const PINNED_COORDINATOR: &str = "ghcr.io/delibera/delibera-coordinator@sha256:2222222222222222222222222222222222222222222222222222222222222222";

async fn phala_fake() -> MockServer {
    let phala = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/cvms/paginated"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"items": [], "total": 0, "page": 1, "page_size": 100, "pages": 0}),
        ))
        .mount(&phala)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/cvms/provision"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "compose_hash": "ab".repeat(32),
            "app_id": APP_ID,
            "app_env_encrypt_pubkey": encryption_pubkey_hex(&KMS_KEY),
        })))
        .mount(&phala)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/cvms"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": 5, "name": "n", "status": "running", "app_id": APP_ID, "vm_uuid": "vm-5",
        })))
        .mount(&phala)
        .await;
    // Listed at once (on an address that answers nothing, so the health
    // gate fails fast: this test only reads what was sealed).
    Mock::given(method("GET"))
        .and(path("/api/v1/cvms/vm-5"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": 5, "vm_uuid": "vm-5", "status": "running", "app_id": APP_ID,
            "public_urls": [{"app": "http://127.0.0.1:9/", "instance": ""}],
        })))
        .mount(&phala)
        .await;
    phala
}

/// The env of every commit the fake received, decrypted as the CVM's KMS would.
async fn sealed_envs(phala: &MockServer) -> Vec<Vec<EnvVar>> {
    let requests: Vec<Request> = phala.received_requests().await.unwrap();
    requests
        .iter()
        .filter(|request| request.method.as_str() == "POST" && request.url.path() == "/api/v1/cvms")
        .map(|request| {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            decrypt_env(&KMS_KEY, body["encrypted_env"].as_str().unwrap()).unwrap()
        })
        .collect()
}

/// Reads `vars` as the agent does, returning the env and every name it asked for.
fn read_as_the_agent(vars: &[EnvVar]) -> (AgentEnv, BTreeSet<String>) {
    let asked = RefCell::new(BTreeSet::new());
    let env = AgentEnv::from_lookup(|name| {
        asked.borrow_mut().insert(name.to_owned());
        vars.iter()
            .find(|var| var.key == name)
            .map(|var| var.value.to_string())
    })
    .unwrap();
    (env, asked.into_inner())
}

fn check_contract(vars: &[EnvVar]) -> AgentEnv {
    let written: BTreeSet<String> = vars.iter().map(|var| var.key.clone()).collect();
    let (env, read) = read_as_the_agent(vars);
    let unread: Vec<&String> = written.difference(&read).collect();
    assert!(
        unread.is_empty(),
        "written but never read by the agent: {unread:?}"
    );
    for name in vars::REQUIRED {
        assert!(
            written.contains(name),
            "the agent requires {name}, the server did not write it"
        );
    }
    env
}

#[tokio::test]
async fn production_deployments_carry_the_chain_and_the_public_url_and_nothing_unread() {
    let dir = tempfile::tempdir().unwrap();
    let phala = phala_fake().await;
    let ensue = LocalEnsue::start(delibera_ensue_local::Config::default())
        .await
        .unwrap();
    let registry = Arc::new(LocalRegistry::in_memory("server.testnet".parse().unwrap()).unwrap());
    let database = Database::in_memory(SecretBox::from_key(&[3; 32])).unwrap();
    let client = PhalaClient::new(&format!("{}/api/v1", phala.uri()), "phak_test").unwrap();
    let ports = Ports {
        delegator: Arc::new(LocalSpaceDelegator::open(dir.path()).unwrap()),
        ensue: Arc::new(HttpEnsue::new(ensue.url().parse().unwrap())),
        deployer: Arc::new(PhalaDeployer::with_options(
            client,
            PhalaDeployerOptions {
                public_url_template: Some(format!("https://{{app_id}}-{{port}}.{GATEWAY}")),
                url_poll_interval: Duration::from_millis(5),
                ..PhalaDeployerOptions::default()
            },
        )),
        health_gate: HealthGate {
            initial_interval: Duration::from_millis(5),
            max_interval: Duration::from_millis(10),
            request_timeout: Duration::from_millis(200),
        },
        registry: registry.clone(),
        accounts: registry.clone(),
        registrar: registry.clone(),
        http: reqwest::Client::new(),
    };
    let mut settings = Settings::new(Zeroizing::new(ensue.api_key().expose().to_owned()));
    settings.health_timeout = Duration::from_millis(50);
    settings.agent_chain = AgentChain {
        near_rpc_urls: vec![RPC.parse().unwrap()],
        registry_contract: Some(REGISTRY.parse().unwrap()),
        coordinator_contract: Some(ROSTER.parse().unwrap()),
    };
    // Production deploys pinned images only (the config refuses others).
    settings.worker_image = Some(PINNED_WORKER.parse().unwrap());
    settings.coordinator_image = Some(PINNED_COORDINATOR.parse().unwrap());
    let state = AppState::builder(&database, ports, settings)
        .mode_label("production")
        .build();
    let app = Api { state };

    let (code, body) = app
        .call(
            "POST",
            "/api/provision/coordinator",
            Some(json!({"displayName": "My DAO", "nearAccount": "mydao.testnet", "contractAddress": CONTRACT})),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    app.wait_for(body["jobId"].as_str().unwrap(), &["failed"])
        .await;

    let coordinator = "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH";
    registry
        .register_coordinator_as(
            &"mydao.testnet".parse().unwrap(),
            &CoordinatorRegistration {
                coordinator_did: coordinator.into(),
                endpoint_url: "https://c.example".into(),
                cvm_id: "c".into(),
                min_workers: 1,
                max_workers: 3,
            },
        )
        .unwrap();
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/worker",
            Some(json!({"coordinatorDid": coordinator, "displayName": "Worker Alpha", "nearAccount": "alice.testnet"})),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    app.wait_for(body["jobId"].as_str().unwrap(), &["failed"])
        .await;

    // Each compose sent to Phala (whose hash the CVM's attestation shows)
    // names its image by digest, and the job's status says which it is.
    let composes: Vec<String> = phala
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|request| request.url.path() == "/api/v1/cvms/provision")
        .map(|request| String::from_utf8_lossy(&request.body).into_owned())
        .collect();
    assert_eq!(composes.len(), 2, "one compose per deployment");
    assert!(composes[0].contains(PINNED_COORDINATOR), "{}", composes[0]);
    assert!(composes[1].contains(PINNED_WORKER), "{}", composes[1]);
    let worker_job = body["jobId"].as_str().unwrap();
    let (_, status) = app
        .call("GET", &format!("/api/provision/status/{worker_job}"), None)
        .await;
    assert_eq!(status["image"], PINNED_WORKER, "{status}");

    let envs = sealed_envs(&phala).await;
    assert_eq!(envs.len(), 2, "one sealed env per deployment");
    for vars in &envs {
        let env = check_contract(vars);
        assert_eq!(env.near_rpc_urls, vec![RPC.parse().unwrap()]);
        assert_eq!(
            env.registry_contract.as_ref().map(|id| id.as_str()),
            Some(REGISTRY)
        );
        assert!(!env.local);
        assert_eq!(
            env.public_url
                .as_ref()
                .map(|url| url.as_str().trim_end_matches('/').to_owned()),
            Some(format!("https://{APP_ID}-{}.{GATEWAY}", env.port))
        );
        match env.role {
            AgentRole::Coordinator => {
                assert_eq!(
                    env.coordinator_contract.as_ref().map(|id| id.as_str()),
                    Some(CONTRACT)
                );
                assert_eq!(
                    env.owner.as_ref().map(|id| id.as_str()),
                    Some("mydao.testnet")
                );
                assert!(env.worker_bounds.is_some());
                // It can find its workers on its own: a directory from the chain.
                assert!(delibera_agent::Agent::new(env).is_ok());
            }
            AgentRole::Worker => {
                assert_eq!(
                    env.coordinator_did.as_ref().map(|did| did.as_str()),
                    Some(coordinator)
                );
                assert_eq!(
                    env.coordinator_contract.as_ref().map(|id| id.as_str()),
                    Some(ROSTER)
                );
                assert!(env.storacha.is_some());
            }
        }
    }
}

#[tokio::test]
async fn local_deployments_keep_the_contract_too() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(
        dir.path(),
        common::TestDeployer::healthy(),
        common::Options::default(),
    )
    .await;
    let (_, body) = app
        .call(
            "POST",
            "/api/provision/coordinator",
            Some(json!({"displayName": "Local", "nearAccount": "l.testnet"})),
        )
        .await;
    app.wait_for(
        body["jobId"].as_str().unwrap(),
        &["awaiting_near_signature"],
    )
    .await;
    let spec = app.deployer.specs.lock().unwrap()[0].clone();
    let env = check_contract(&spec.env.to_vars());
    assert_eq!(env, spec.env);
    // Locally the agents need no chain: the local deployer hands them the registry.
    assert!(env.near_rpc_urls.is_empty());
}
