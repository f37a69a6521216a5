//! The `Deployer` port: `PhalaDeployer` end to end against wiremock
//! (provision → encrypt → commit → poll → healthy), the start policy, cleanup,
//! and the caller's teardown-on-unhealthy policy.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use delibera_identity::{Did, Keypair};
use delibera_phala::delibera_backoff::Backoff;
use delibera_phala::{
    AgentRole, AgentSpec, CvmName, Deployer, Deployment, DeploymentStatus, EnvVar, Error,
    HealthGate, HealthProgress, PhalaClient, PhalaDeployer, PhalaDeployerOptions, StartPolicy,
    decrypt_env, deploy_until_healthy, encryption_pubkey_hex, render_compose,
};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const API_KEY: &str = "phak_deploy_test";
const APP_ID: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567";
const VM_UUID: &str = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";
const KMS_PRIVATE_KEY: [u8; 32] = [0x44; 32];
const COMPOSE_HASH: &str = "5c1e9bd8a0ef1c3b2b7a6f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a29181716";

fn agent_did() -> Did {
    Keypair::from_seed(&[3; 32]).did()
}

fn spec() -> AgentSpec {
    AgentSpec::new(AgentRole::Worker, "Worker Alpha").with_env(vec![
        EnvVar::new("STORACHA_AGENT_PRIVATE_KEY", "MgCY-secret"),
        EnvVar::new("NEAR_ACCOUNT_ID", "alice.testnet"),
    ])
}

fn fast_gate() -> HealthGate {
    HealthGate {
        initial_interval: Duration::from_millis(5),
        max_interval: Duration::from_millis(20),
        request_timeout: Duration::from_millis(500),
    }
}

fn deployer(server: &MockServer, start_policy: StartPolicy) -> PhalaDeployer {
    let client = PhalaClient::new(&format!("{}/api/v1", server.uri()), API_KEY)
        .unwrap()
        .with_retry(
            Backoff::new(Duration::from_millis(1), Duration::from_millis(2)).with_max_attempts(2),
        );
    PhalaDeployer::with_options(
        client,
        PhalaDeployerOptions {
            url_poll_interval: Duration::from_millis(5),
            url_deadline: Duration::from_millis(300),
            start_policy,
            dashboard_base: "https://cloud.phala.network/dashboard/cvms".to_owned(),
        },
    )
}

fn api(http_method: &str, api_path: &str) -> wiremock::MockBuilder {
    Mock::given(method(http_method))
        .and(path(format!("/api/v1{api_path}")))
        .and(header("X-API-Key", API_KEY))
        .and(header("X-Phala-Version", "2025-10-28"))
}

/// Mounts provision and commit answering like the API.
async fn mount_provision_and_commit(server: &MockServer) {
    api("POST", "/cvms/provision")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "compose_hash": COMPOSE_HASH,
            "app_id": APP_ID,
            "app_env_encrypt_pubkey": encryption_pubkey_hex(&KMS_PRIVATE_KEY),
            "kms_id": "kms-base", "instance_type": "tdx.small", "teepod_id": 3,
        })))
        .expect(1)
        .mount(server)
        .await;
    api("POST", "/cvms")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": 77, "name": "n", "status": "creating", "app_id": APP_ID, "vm_uuid": VM_UUID,
        })))
        .expect(1)
        .mount(server)
        .await;
}

fn cvm(status: &str, public_urls: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": 77, "name": "n", "status": status, "in_progress": false,
        "app_id": APP_ID, "vm_uuid": VM_UUID, "gateway_domain": null,
        "public_urls": public_urls,
    }))
}

async fn body_of(server: &MockServer, http_method: &str, api_path: &str) -> Value {
    let requests: Vec<Request> = server.received_requests().await.unwrap();
    let request = requests
        .iter()
        .find(|r| r.method.as_str() == http_method && r.url.path() == format!("/api/v1{api_path}"))
        .unwrap();
    serde_json::from_slice(&request.body).unwrap()
}

async fn mount_healthy_agent(agent: &MockServer, did: &Did) {
    // Not ready on the first probe, healthy after.
    Mock::given(method("GET"))
        .and(path("/"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .expect(1)
        .mount(agent)
        .await;
    Mock::given(method("GET"))
        .and(path("/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "message": "Worker agent is running", "did": did.as_str(),
        })))
        .expect(1)
        .mount(agent)
        .await;
}

#[tokio::test]
async fn provision_encrypt_commit_poll_healthy() {
    let phala = MockServer::start().await;
    let agent = MockServer::start().await;
    mount_provision_and_commit(&phala).await;
    // The URL is not listed on the first poll.
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(cvm("creating", json!([])))
        .up_to_n_times(1)
        .expect(1)
        .mount(&phala)
        .await;
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(cvm(
            "running",
            json!([{"app": format!("{}/", agent.uri()), "instance": ""}]),
        ))
        .expect(1)
        .mount(&phala)
        .await;
    api("POST", &format!("/cvms/{VM_UUID}/start"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&phala)
        .await;
    api("DELETE", &format!("/cvms/{VM_UUID}"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&phala)
        .await;
    let did = agent_did();
    mount_healthy_agent(&agent, &did).await;

    let deployer = deployer(&phala, StartPolicy::IfStopped);
    let spec = spec();
    let mut progress: Vec<HealthProgress> = Vec::new();
    let mut record = |p: &HealthProgress| progress.push(p.clone());
    let deployment = deploy_until_healthy(
        &deployer,
        &spec,
        &fast_gate(),
        &reqwest::Client::new(),
        &did,
        Duration::from_secs(5),
        &mut record,
    )
    .await
    .unwrap();

    assert_eq!(
        deployment,
        Deployment {
            cvm_id: VM_UUID.to_owned(),
            app_id: APP_ID.to_owned(),
            endpoint_url: format!("{}/", agent.uri()),
            dashboard_url: format!("https://cloud.phala.network/dashboard/cvms/{VM_UUID}"),
        }
    );
    assert_eq!(progress.len(), 1);
    assert_eq!(progress[0].attempt, 1);
    assert_eq!(progress[0].last_problem, "HTTP 502");

    // Provision: a valid unique name, the rendered compose, the secret names.
    let provision = body_of(&phala, "POST", "/cvms/provision").await;
    let name = provision["name"].as_str().unwrap();
    assert!(name.starts_with("delibera-worker-worker-alpha-"), "{name}");
    assert!(CvmName::new(name).is_ok());
    let keys = ["STORACHA_AGENT_PRIVATE_KEY", "NEAR_ACCOUNT_ID"];
    assert_eq!(
        provision,
        json!({
            "name": name,
            "instance_type": "tdx.small",
            "compose_file": {
                "docker_compose_file": render_compose(AgentRole::Worker, &spec.image, 3001, &keys).unwrap(),
                "allowed_envs": keys,
                "name": "",
            },
        })
    );

    // Commit: the provisioned hash and app id, the keys in order, and an env
    // that the KMS key decrypts back to the spec's secrets.
    let commit = body_of(&phala, "POST", "/cvms").await;
    assert_eq!(commit["app_id"], APP_ID);
    assert_eq!(commit["compose_hash"], COMPOSE_HASH);
    assert_eq!(commit["env_keys"], json!(keys));
    assert_eq!(commit.as_object().unwrap().len(), 4);
    let sealed = commit["encrypted_env"].as_str().unwrap();
    assert_eq!(decrypt_env(&KMS_PRIVATE_KEY, sealed).unwrap(), spec.env);
    assert!(!sealed.contains("alice"));
}

#[tokio::test]
async fn a_health_timeout_makes_the_caller_tear_the_deployment_down() {
    let phala = MockServer::start().await;
    let agent = MockServer::start().await;
    mount_provision_and_commit(&phala).await;
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(cvm(
            "running",
            json!([{"app": format!("{}/", agent.uri()), "instance": ""}]),
        ))
        .expect(1)
        .mount(&phala)
        .await;
    api("DELETE", &format!("/cvms/{VM_UUID}"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&phala)
        .await;
    // Running, but someone else's agent.
    let stranger = Keypair::from_seed(&[9; 32]).did();
    Mock::given(method("GET"))
        .and(path("/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "message": "running", "did": stranger.as_str(),
        })))
        .mount(&agent)
        .await;

    let mut calls = 0;
    let mut count = |_: &HealthProgress| calls += 1;
    let error = deploy_until_healthy(
        &deployer(&phala, StartPolicy::IfStopped),
        &spec(),
        &fast_gate(),
        &reqwest::Client::new(),
        &agent_did(),
        Duration::from_millis(150),
        &mut count,
    )
    .await
    .unwrap_err();
    let Error::HealthTimeout { last_problem, .. } = &error else {
        panic!("not a health timeout: {error}");
    };
    assert!(last_problem.contains(stranger.as_str()), "{last_problem}");
    assert!(calls >= 1);
}

#[tokio::test]
async fn a_cvm_that_stays_stopped_is_started_once() {
    let phala = MockServer::start().await;
    mount_provision_and_commit(&phala).await;
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(cvm("stopped", json!([])))
        .up_to_n_times(1)
        .expect(1)
        .mount(&phala)
        .await;
    api("POST", &format!("/cvms/{VM_UUID}/start"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"id": 77, "status": "starting"})),
        )
        .expect(1)
        .mount(&phala)
        .await;
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(cvm(
            "running",
            json!([{"app": format!("https://{APP_ID}-3001.gw.example"), "instance": ""}]),
        ))
        .expect(1)
        .mount(&phala)
        .await;
    let deployment = deployer(&phala, StartPolicy::IfStopped)
        .deploy(&spec())
        .await
        .unwrap();
    assert_eq!(
        deployment.endpoint_url,
        format!("https://{APP_ID}-3001.gw.example")
    );
}

#[tokio::test]
async fn the_always_policy_starts_right_after_commit_and_never_skips_it() {
    let phala = MockServer::start().await;
    mount_provision_and_commit(&phala).await;
    api("POST", &format!("/cvms/{VM_UUID}/start"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"id": 77, "status": "starting"})),
        )
        .expect(1)
        .mount(&phala)
        .await;
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "hashed", "vm_uuid": VM_UUID, "app_id": APP_ID, "status": "starting",
            "gateway": {"base_domain": "gw.example"}, "endpoints": [],
        })))
        .expect(1)
        .mount(&phala)
        .await;
    let deployment = deployer(&phala, StartPolicy::Always)
        .deploy(&spec())
        .await
        .unwrap();
    // No URL listed: built from the gateway domain.
    assert_eq!(
        deployment.endpoint_url,
        format!("https://{APP_ID}-3001.gw.example")
    );
}

#[tokio::test]
async fn a_cvm_whose_url_never_appears_is_deleted_by_deploy() {
    let phala = MockServer::start().await;
    mount_provision_and_commit(&phala).await;
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(cvm("creating", json!([])))
        .mount(&phala)
        .await;
    api("DELETE", &format!("/cvms/{VM_UUID}"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&phala)
        .await;
    let error = deployer(&phala, StartPolicy::Never)
        .deploy(&spec())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::NoEndpoint { ref cvm_id, .. } if cvm_id == VM_UUID),
        "{error}"
    );
}

#[tokio::test]
async fn a_cvm_reporting_an_error_fails_the_deploy_and_is_deleted() {
    let phala = MockServer::start().await;
    mount_provision_and_commit(&phala).await;
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": 77, "vm_uuid": VM_UUID, "status": "error", "error": "image pull failed",
        })))
        .expect(1)
        .mount(&phala)
        .await;
    api("DELETE", &format!("/cvms/{VM_UUID}"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&phala)
        .await;
    let error = deployer(&phala, StartPolicy::IfStopped)
        .deploy(&spec())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::CvmFailed { ref reason, .. } if reason == "image pull failed"),
        "{error}"
    );
}

#[tokio::test]
async fn a_failed_provision_commits_and_deletes_nothing() {
    let phala = MockServer::start().await;
    api("POST", "/cvms/provision")
        .respond_with(ResponseTemplate::new(402).set_body_json(json!({"detail": {
            "error_code": "ERR-04-001", "message": "Insufficient balance",
        }})))
        .expect(1)
        .mount(&phala)
        .await;
    api("POST", "/cvms")
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&phala)
        .await;
    let error = deployer(&phala, StartPolicy::IfStopped)
        .deploy(&spec())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Quota(_)), "{error}");
}

#[tokio::test]
async fn bad_env_names_fail_before_any_call() {
    let phala = MockServer::start().await;
    let spec = spec().with_env(vec![EnvVar::new("BAD NAME", "x")]);
    let error = deployer(&phala, StartPolicy::IfStopped)
        .deploy(&spec)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidEnv { .. }), "{error}");
    assert!(phala.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn status_and_teardown() {
    let phala = MockServer::start().await;
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(cvm(
            "running",
            json!([{"app": "https://x-3001.gw.example", "instance": ""}]),
        ))
        .expect(1)
        .mount(&phala)
        .await;
    api("DELETE", &format!("/cvms/{VM_UUID}"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"detail": "not found"})))
        .expect(1)
        .mount(&phala)
        .await;
    let deployer: Arc<dyn Deployer> = Arc::new(deployer(&phala, StartPolicy::IfStopped));
    assert_eq!(
        deployer.status(VM_UUID).await.unwrap(),
        DeploymentStatus {
            cvm_id: VM_UUID.to_owned(),
            status: "running".to_owned(),
            running: true,
            endpoint_url: Some("https://x-3001.gw.example".to_owned()),
        }
    );
    // Already gone counts as torn down.
    deployer.teardown(VM_UUID).await.unwrap();
}

/// A deployer that records teardowns, to test the policy on the port alone.
struct RecordingDeployer {
    endpoint_url: String,
    torn_down: Mutex<Vec<String>>,
}

#[async_trait]
impl Deployer for RecordingDeployer {
    async fn deploy(&self, _spec: &AgentSpec) -> delibera_phala::Result<Deployment> {
        Ok(Deployment {
            cvm_id: "local-1".to_owned(),
            app_id: "local".to_owned(),
            endpoint_url: self.endpoint_url.clone(),
            dashboard_url: String::new(),
        })
    }

    async fn status(&self, cvm_id: &str) -> delibera_phala::Result<DeploymentStatus> {
        Err(Error::Deployer {
            message: format!("{cvm_id}: no status"),
        })
    }

    async fn teardown(&self, cvm_id: &str) -> delibera_phala::Result<()> {
        self.torn_down.lock().unwrap().push(cvm_id.to_owned());
        Ok(())
    }
}

#[tokio::test]
async fn the_policy_tears_down_only_unhealthy_deployments() {
    let agent = MockServer::start().await;
    let did = agent_did();
    Mock::given(method("GET"))
        .and(path("/healthy"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "message": "Coordinator is RUNNING", "did": did.as_str(),
        })))
        .mount(&agent)
        .await;
    Mock::given(method("GET"))
        .and(path("/sick"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&agent)
        .await;

    for (route, healthy) in [("healthy", true), ("sick", false)] {
        let deployer = RecordingDeployer {
            endpoint_url: format!("{}/{route}", agent.uri()),
            torn_down: Mutex::new(Vec::new()),
        };
        let result = deploy_until_healthy(
            &deployer,
            &AgentSpec::new(AgentRole::Coordinator, "c"),
            &fast_gate(),
            &reqwest::Client::new(),
            &did,
            Duration::from_millis(100),
            &mut |_: &HealthProgress| {},
        )
        .await;
        assert_eq!(result.is_ok(), healthy, "{route}");
        let torn_down = deployer.torn_down.lock().unwrap().clone();
        let expected: Vec<String> = if healthy {
            vec![]
        } else {
            vec!["local-1".to_owned()]
        };
        assert_eq!(torn_down, expected, "{route}");
    }
}

#[test]
fn agent_specs_never_debug_print_secrets() {
    let shown = format!("{:?}", spec());
    assert!(shown.contains("STORACHA_AGENT_PRIVATE_KEY"));
    assert!(!shown.contains("MgCY-secret"));
    assert!(!shown.contains("alice.testnet"));
}
