//! The `Deployer` port on Phala Cloud against wiremock: provision → seal the
//! env (with the public URL the gateway will give the CVM) → commit → poll,
//! the start policy, cleanup, finding a deployment by name, and adopting the
//! CVM a duplicate-name commit points at.

use std::sync::Arc;
use std::time::Duration;

use delibera_deploy::{
    AgentEnv, AgentIdentity, AgentRole, AgentSpec, Deployer, Deployment, DeploymentName,
    DeploymentStatus, vars,
};
use delibera_identity::{AccountId, Keypair};
use delibera_phala::delibera_backoff::Backoff;
use delibera_phala::{
    Error, PhalaClient, PhalaDeployer, PhalaDeployerOptions, StartPolicy, decrypt_env,
    encryption_pubkey_hex, render_compose,
};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const API_KEY: &str = "phak_deploy_test";
const APP_ID: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567";
const VM_UUID: &str = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";
const KMS_PRIVATE_KEY: [u8; 32] = [0x44; 32];
const COMPOSE_HASH: &str = "5c1e9bd8a0ef1c3b2b7a6f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a29181716";
const GATEWAY: &str = "gw.example";

fn spec() -> AgentSpec {
    let identity = AgentIdentity::from_keypair(&Keypair::from_seed(&[3; 32]));
    let mut env = AgentEnv::new(
        AgentRole::Worker,
        identity,
        "Worker Alpha",
        "lmn_secret_key",
    );
    env.owner = Some(AccountId::parse("alice.testnet").unwrap());
    AgentSpec::new(
        DeploymentName::derive(AgentRole::Worker, "Worker Alpha", "0f1e2d3c4b5a6978"),
        env,
    )
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
            public_url_template: Some(format!("https://{{app_id}}-{{port}}.{GATEWAY}")),
            ..PhalaDeployerOptions::default()
        },
    )
}

fn api(http_method: &str, api_path: &str) -> wiremock::MockBuilder {
    Mock::given(method(http_method))
        .and(path(format!("/api/v1{api_path}")))
        .and(header("X-API-Key", API_KEY))
        .and(header("X-Phala-Version", "2025-10-28"))
}

async fn mount_provision(server: &MockServer) {
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
}

/// Mounts provision and commit answering like the API.
async fn mount_provision_and_commit(server: &MockServer) {
    mount_provision(server).await;
    api("POST", "/cvms")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": 77, "name": "n", "status": "creating", "app_id": APP_ID, "vm_uuid": VM_UUID,
        })))
        .expect(1)
        .mount(server)
        .await;
}

/// A deploy whose CVM is committed and then stays `creating`, with no URL.
async fn mount_committed_cvm_that_never_gets_a_url(phala: &MockServer) {
    mount_provision_and_commit(phala).await;
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(cvm("creating", json!([])))
        .mount(phala)
        .await;
}

fn cvm(status: &str, public_urls: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": 77, "name": "n", "status": status, "in_progress": false,
        "app_id": APP_ID, "vm_uuid": VM_UUID, "gateway_domain": null,
        "public_urls": public_urls,
    }))
}

/// A CVM list with nothing in it, looked up `times` times.
async fn mount_empty_list(phala: &MockServer, times: u64) {
    api("GET", "/cvms/paginated")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "items": [], "total": 0, "page": 1, "page_size": 100, "pages": 0,
        })))
        .expect(times)
        .mount(phala)
        .await;
}

/// A CVM list holding one CVM, named as `spec`, looked up once.
async fn mount_listed_under_its_name(phala: &MockServer, spec: &AgentSpec) {
    api("GET", "/cvms/paginated")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "items": [{"id": 77, "vm_uuid": VM_UUID, "name": spec.name.as_str(), "app_id": APP_ID, "status": "running"}],
            "total": 1, "page": 1, "page_size": 100, "pages": 1,
        })))
        .expect(1)
        .mount(phala)
        .await;
}

/// One running CVM listed under `spec`'s name, at `https://adopted-3001.gw.example`:
/// the one an earlier or unanswered deploy made, to be adopted.
async fn mount_running_cvm_named(phala: &MockServer, spec: &AgentSpec) {
    mount_listed_under_its_name(phala, spec).await;
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(cvm(
            "running",
            json!([{"app": "https://adopted-3001.gw.example", "instance": ""}]),
        ))
        .expect(1)
        .mount(phala)
        .await;
}

/// The Phala error behind a port error.
fn phala_error(error: delibera_deploy::Error) -> Error {
    match error {
        delibera_deploy::Error::Backend { source, .. } => *source.downcast::<Error>().unwrap(),
        other => panic!("not a Phala failure: {other}"),
    }
}

/// What a deploy left behind: its name, its id when known, and the Phala
/// error that failed it.
fn left_behind(error: delibera_deploy::Error) -> (String, Option<String>, Error) {
    match error {
        delibera_deploy::Error::LeftBehind { name, id, source } => (name, id, phala_error(*source)),
        other => panic!("not left behind: {other}"),
    }
}

async fn body_of(server: &MockServer, http_method: &str, api_path: &str) -> Value {
    let requests: Vec<Request> = server.received_requests().await.unwrap();
    let request = requests
        .iter()
        .find(|r| r.method.as_str() == http_method && r.url.path() == format!("/api/v1{api_path}"))
        .unwrap();
    serde_json::from_slice(&request.body).unwrap()
}

#[tokio::test]
async fn provision_seal_commit_poll() {
    let phala = MockServer::start().await;
    mount_provision_and_commit(&phala).await;
    let public_url = format!("https://{APP_ID}-3001.{GATEWAY}");
    // The URL is not listed on the first poll.
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(cvm("creating", json!([])))
        .up_to_n_times(1)
        .expect(1)
        .mount(&phala)
        .await;
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(cvm("running", json!([{"app": public_url, "instance": ""}])))
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

    let spec = spec();
    let deployment = deployer(&phala, StartPolicy::IfStopped)
        .deploy(&spec)
        .await
        .unwrap();
    assert_eq!(
        deployment,
        Deployment {
            id: VM_UUID.to_owned(),
            name: spec.name.clone(),
            endpoint_url: public_url.clone(),
            dashboard_url: format!("https://cloud.phala.network/dashboard/cvms/{VM_UUID}"),
        }
    );

    // Provision: the spec's deterministic name, the rendered compose, every
    // env name the agent will get (the public URL's included).
    let provision = body_of(&phala, "POST", "/cvms/provision").await;
    let mut keys: Vec<String> = spec.env.to_vars().into_iter().map(|var| var.key).collect();
    keys.push(vars::PUBLIC_URL.to_owned());
    assert_eq!(
        provision,
        json!({
            "name": spec.name.as_str(),
            "instance_type": "tdx.small",
            "compose_file": {
                "docker_compose_file": render_compose(AgentRole::Worker, &spec.image, 3001, &keys).unwrap(),
                "allowed_envs": keys,
                "name": "",
            },
        })
    );

    // Commit: the provisioned hash and app id, the keys in the compose's
    // order, and an env the KMS key opens to the spec's env plus the public
    // URL, which the agent reads back whole.
    let commit = body_of(&phala, "POST", "/cvms").await;
    assert_eq!(commit["app_id"], APP_ID);
    assert_eq!(commit["compose_hash"], COMPOSE_HASH);
    assert_eq!(commit["env_keys"], json!(keys));
    assert_eq!(commit.as_object().unwrap().len(), 4);
    let sealed = commit["encrypted_env"].as_str().unwrap();
    assert!(!sealed.contains("alice"));
    let opened = decrypt_env(&KMS_PRIVATE_KEY, sealed).unwrap();
    let read = AgentEnv::try_from(opened.as_slice()).unwrap();
    let mut expected = spec.env.clone();
    expected.public_url = Some(public_url.parse().unwrap());
    assert_eq!(read, expected);
}

#[tokio::test]
async fn without_a_template_no_public_url_is_sealed() {
    let phala = MockServer::start().await;
    mount_provision_and_commit(&phala).await;
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(cvm(
            "running",
            json!([{"app": "https://x-3001.gw.example", "instance": ""}]),
        ))
        .mount(&phala)
        .await;
    let client = PhalaClient::new(&format!("{}/api/v1", phala.uri()), API_KEY).unwrap();
    let deployer = PhalaDeployer::with_options(
        client,
        PhalaDeployerOptions {
            public_url_template: None,
            url_poll_interval: Duration::from_millis(5),
            ..PhalaDeployerOptions::default()
        },
    );
    let spec = spec();
    deployer.deploy(&spec).await.unwrap();
    let commit = body_of(&phala, "POST", "/cvms").await;
    let opened = decrypt_env(&KMS_PRIVATE_KEY, commit["encrypted_env"].as_str().unwrap()).unwrap();
    assert_eq!(AgentEnv::try_from(opened.as_slice()).unwrap(), spec.env);
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
    mount_committed_cvm_that_never_gets_a_url(&phala).await;
    api("DELETE", &format!("/cvms/{VM_UUID}"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&phala)
        .await;
    let error = deployer(&phala, StartPolicy::Never)
        .deploy(&spec())
        .await
        .map_err(phala_error)
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
        .map_err(phala_error)
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
        .map_err(phala_error)
        .unwrap_err();
    assert!(matches!(error, Error::Quota(_)), "{error}");
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
            id: VM_UUID.to_owned(),
            status: "running".to_owned(),
            running: true,
            endpoint_url: Some("https://x-3001.gw.example".to_owned()),
        }
    );
    // Already gone counts as torn down.
    deployer.teardown(VM_UUID).await.unwrap();
}

#[tokio::test]
async fn find_pages_through_the_list_in_both_shapes() {
    let phala = MockServer::start().await;
    let spec = spec();
    let public_url = format!("https://{APP_ID}-3001.{GATEWAY}");
    // Page 1 (2025-10-28 list shape: the VM under `hosted`) has other CVMs.
    api("GET", "/cvms/paginated")
        .and(query_param("page", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "items": [{"hosted": {"id": "other-uuid", "name": "delibera-worker-other-1", "app_id": "ab"},
                       "name": "delibera-worker-other-1", "status": "running", "public_urls": []}],
            "total": 2, "page": 1, "page_size": 100, "pages": 2,
        })))
        .expect(1)
        .mount(&phala)
        .await;
    // Page 2 (2026-01-21 shape) has ours.
    api("GET", "/cvms/paginated")
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "items": [{"id": "hashed", "vm_uuid": VM_UUID, "name": spec.name.as_str(), "app_id": APP_ID,
                       "status": "running", "gateway": {"base_domain": GATEWAY}, "endpoints": []}],
            "total": 2, "page": 2, "page_size": 100, "pages": 2,
        })))
        .expect(1)
        .mount(&phala)
        .await;
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "hashed", "vm_uuid": VM_UUID, "name": spec.name.as_str(), "app_id": APP_ID,
            "status": "running", "gateway": {"base_domain": GATEWAY}, "endpoints": [{"app": public_url, "instance": ""}],
        })))
        .expect(1)
        .mount(&phala)
        .await;
    let found = deployer(&phala, StartPolicy::Never)
        .find(&spec)
        .await
        .unwrap();
    assert_eq!(
        found,
        Some(Deployment {
            id: VM_UUID.to_owned(),
            name: spec.name.clone(),
            endpoint_url: public_url,
            dashboard_url: format!("https://cloud.phala.network/dashboard/cvms/{VM_UUID}"),
        })
    );
}

#[tokio::test]
async fn find_answers_none_when_no_cvm_has_the_name() {
    let phala = MockServer::start().await;
    mount_empty_list(&phala, 1).await;
    assert_eq!(
        deployer(&phala, StartPolicy::Never)
            .find(&spec())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_commit_refused_for_a_duplicate_name_adopts_the_existing_cvm() {
    let phala = MockServer::start().await;
    let spec = spec();
    mount_provision(&phala).await;
    api("POST", "/cvms")
        .respond_with(ResponseTemplate::new(409).set_body_json(json!({"detail": {
            "error_code": "ERR-01-004", "message": "A CVM with this name already exists",
        }})))
        .expect(1)
        .mount(&phala)
        .await;
    mount_running_cvm_named(&phala, &spec).await;
    let deployment = deployer(&phala, StartPolicy::Never)
        .deploy(&spec)
        .await
        .unwrap();
    assert_eq!(deployment.id, VM_UUID);
    assert_eq!(deployment.endpoint_url, "https://adopted-3001.gw.example");
}

#[tokio::test]
async fn a_commit_whose_answers_were_all_lost_adopts_the_cvm_it_made() {
    let phala = MockServer::start().await;
    let spec = spec();
    mount_provision(&phala).await;
    // Every try of the commit (the client retries twice) gets a 502; the
    // first one made the CVM all the same.
    api("POST", "/cvms")
        .respond_with(ResponseTemplate::new(502))
        .expect(2)
        .mount(&phala)
        .await;
    mount_running_cvm_named(&phala, &spec).await;
    let deployment = deployer(&phala, StartPolicy::Never)
        .deploy(&spec)
        .await
        .unwrap();
    assert_eq!(deployment.id, VM_UUID);
}

#[tokio::test]
async fn a_commit_that_kept_failing_with_nothing_listed_yet_is_reported_left_behind_by_name() {
    let phala = MockServer::start().await;
    mount_provision(&phala).await;
    api("POST", "/cvms")
        .respond_with(ResponseTemplate::new(503).set_body_json(json!({"detail": "maintenance"})))
        .expect(2)
        .mount(&phala)
        .await;
    // Looked up a few times (a CVM whose commit timed out may be listed a
    // little later); since it may still appear, the commit's own error says
    // what to tear down, by name.
    mount_empty_list(&phala, u64::from(delibera_phala::COMMIT_SETTLE_LOOKUPS)).await;
    let spec = spec();
    let (name, id, error) = left_behind(
        deployer(&phala, StartPolicy::Never)
            .deploy(&spec)
            .await
            .unwrap_err(),
    );
    assert_eq!((name.as_str(), id), (spec.name.as_str(), None));
    assert!(
        matches!(&error, Error::Server(api) if api.message == "maintenance"),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_cvm_whose_url_never_appears_and_that_cannot_be_deleted_is_reported_left_behind() {
    let phala = MockServer::start().await;
    mount_committed_cvm_that_never_gets_a_url(&phala).await;
    api("DELETE", &format!("/cvms/{VM_UUID}"))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({"detail": "down"})))
        .expect(2)
        .mount(&phala)
        .await;
    let spec = spec();
    let (name, id, error) = left_behind(
        deployer(&phala, StartPolicy::Never)
            .deploy(&spec)
            .await
            .unwrap_err(),
    );
    assert_eq!(name, spec.name.as_str());
    assert_eq!(id.as_deref(), Some(VM_UUID));
    assert!(
        matches!(error, Error::NoEndpoint { ref cvm_id, .. } if cvm_id == VM_UUID),
        "{error}"
    );
}

#[tokio::test]
async fn teardown_named_deletes_the_cvm_listed_under_the_name() {
    let phala = MockServer::start().await;
    let spec = spec();
    mount_listed_under_its_name(&phala, &spec).await;
    api("DELETE", &format!("/cvms/{VM_UUID}"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&phala)
        .await;
    let deployer = deployer(&phala, StartPolicy::Never);
    assert!(deployer.teardown_named(&spec.name).await.unwrap());
}

#[tokio::test]
async fn teardown_named_finds_nothing_when_no_cvm_has_the_name() {
    let phala = MockServer::start().await;
    mount_empty_list(&phala, 1).await;
    api("DELETE", &format!("/cvms/{VM_UUID}"))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&phala)
        .await;
    let deployer = deployer(&phala, StartPolicy::Never);
    assert!(!deployer.teardown_named(&spec().name).await.unwrap());
}

#[test]
fn errors_reach_the_port_with_their_retry_advice() {
    let port_error: delibera_deploy::Error = Error::Timeout {
        operation: "GET /cvms/{id}".into(),
    }
    .into();
    assert!(port_error.is_retryable());
    assert!(
        port_error.to_string().starts_with("Phala Cloud: "),
        "{port_error}"
    );
    let refused: delibera_deploy::Error = Error::Config { reason: "x".into() }.into();
    assert!(!refused.is_retryable());
}

#[test]
fn agent_specs_never_debug_print_secrets() {
    let spec = spec();
    let shown = format!("{spec:?}");
    assert!(shown.contains("Worker Alpha"));
    assert!(!shown.contains("lmn_secret_key"));
    assert!(!shown.contains(spec.env.identity.private_key()));
}

#[tokio::test]
async fn a_gateway_on_this_machine_seals_local_mode_with_its_url() {
    let phala = MockServer::start().await;
    mount_provision_and_commit(&phala).await;
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(cvm(
            "running",
            json!([{"app": "http://127.0.0.1:9/gw/x-3001", "instance": ""}]),
        ))
        .mount(&phala)
        .await;
    let client = PhalaClient::new(&format!("{}/api/v1", phala.uri()), API_KEY).unwrap();
    let deployer = PhalaDeployer::with_options(
        client,
        PhalaDeployerOptions {
            public_url_template: Some("http://127.0.0.1:9/gw/{app_id}-{port}".into()),
            url_poll_interval: Duration::from_millis(5),
            ..PhalaDeployerOptions::default()
        },
    );
    deployer.deploy(&spec()).await.unwrap();
    let commit = body_of(&phala, "POST", "/cvms").await;
    let opened = decrypt_env(&KMS_PRIVATE_KEY, commit["encrypted_env"].as_str().unwrap()).unwrap();
    let env = AgentEnv::try_from(opened.as_slice()).unwrap();
    assert!(
        env.local,
        "a loopback gateway means a rehearsal on this machine"
    );
    assert_eq!(
        env.public_url.unwrap().as_str(),
        format!("http://127.0.0.1:9/gw/{APP_ID}-3001")
    );
}

#[tokio::test]
async fn a_preflight_refusing_a_duplicate_name_adopts_the_existing_cvm() {
    let phala = MockServer::start().await;
    let spec = spec();
    api("POST", "/cvms/provision")
        .respond_with(ResponseTemplate::new(409).set_body_json(json!({"detail": {
            "error_code": "ERR-01-004", "message": "DUPLICATE_CVM_NAME",
        }})))
        .expect(1)
        .mount(&phala)
        .await;
    api("POST", "/cvms")
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&phala)
        .await;
    mount_running_cvm_named(&phala, &spec).await;
    let deployment = deployer(&phala, StartPolicy::Never)
        .deploy(&spec)
        .await
        .unwrap();
    assert_eq!(deployment.id, VM_UUID);
}
