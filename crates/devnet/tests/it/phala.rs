//! The Phala stand-in driven by our real Phala adapter: a deploy boots the
//! agent with the env the KMS opened, reachable through the gateway; the CVM
//! is found by name, torn down, and booted again after a restart.

use std::time::Duration;

use delibera_deploy::{
    AgentEnv, AgentIdentity, AgentRole, AgentSpec, Deployer, DeploymentName, HealthGate, ImageRef,
};
use delibera_devnet::phala::{NEVER_HEALTHY_IMAGE, PhalaDevnet, PhalaDevnetConfig};
use delibera_ensue_local::LocalEnsue;
use delibera_identity::Keypair;
use delibera_phala::{PhalaClient, PhalaDeployer, PhalaDeployerOptions, StartPolicy};
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::support::{http, within};

const API_KEY: &str = "phak_devnet_test";

async fn start(dir: &std::path::Path, port: u16) -> PhalaDevnet {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    PhalaDevnet::start(
        listener,
        PhalaDevnetConfig {
            data_dir: dir.to_owned(),
            api_key: Zeroizing::new(API_KEY.into()),
            boot_delay: Duration::from_millis(50),
            image_archive: None,
        },
    )
    .await
    .unwrap()
}

pub(crate) fn deployer(phala: &PhalaDevnet, api_key: &str) -> PhalaDeployer {
    PhalaDeployer::with_options(
        PhalaClient::new(&phala.api_url(), api_key).unwrap(),
        PhalaDeployerOptions {
            url_poll_interval: Duration::from_millis(20),
            url_deadline: Duration::from_secs(10),
            start_policy: StartPolicy::Never,
            public_url_template: Some(phala.public_url_template()),
            ..PhalaDeployerOptions::default()
        },
    )
}

pub(crate) fn worker_spec(
    ensue: &LocalEnsue,
    seed: u8,
    image: Option<&str>,
) -> (AgentSpec, Keypair) {
    let keypair = Keypair::from_seed(&[seed; 32]);
    let mut env = AgentEnv::new(
        AgentRole::Worker,
        AgentIdentity::from_keypair(&keypair),
        "Devnet Worker",
        ensue.api_key().expose(),
    );
    env.ensue_url = ensue.url().parse().unwrap();
    env.coordinator_did = Some(Keypair::from_seed(&[99; 32]).did());
    let name = DeploymentName::derive(AgentRole::Worker, "Devnet Worker", &format!("{seed:016x}"));
    let mut spec = AgentSpec::new(name, env);
    if let Some(image) = image {
        spec = spec.with_image(ImageRef::new(image).unwrap());
    }
    (spec, keypair)
}

async fn healthy(url: &str, keypair: &Keypair, deadline: Duration) -> Result<(), String> {
    HealthGate {
        initial_interval: Duration::from_millis(20),
        max_interval: Duration::from_millis(100),
        request_timeout: Duration::from_secs(2),
    }
    .wait(&http(), url, &keypair.did(), deadline, &mut |_| {})
    .await
    .map(drop)
    .map_err(|error| error.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_boots_the_sealed_agent_behind_the_gateway_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ensue = LocalEnsue::start(delibera_ensue_local::Config::default())
        .await
        .unwrap();
    let phala = start(dir.path(), 0).await;
    let port: u16 = phala.url().rsplit(':').next().unwrap().parse().unwrap();
    let deployer = deployer(&phala, API_KEY);
    let (spec, keypair) = worker_spec(&ensue, 1, None);

    let deployment = deployer.deploy(&spec).await.unwrap();
    assert!(
        deployment
            .endpoint_url
            .starts_with(&format!("{}/gateway/", phala.url())),
        "{}",
        deployment.endpoint_url
    );
    // The agent answers through the gateway, naming the DID of the env the KMS opened.
    healthy(&deployment.endpoint_url, &keypair, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        deployer.find(&spec).await.unwrap(),
        Some(deployment.clone())
    );
    assert!(deployer.status(&deployment.id).await.unwrap().running);
    // Deploying the same name again adopts it instead of making a second CVM.
    assert_eq!(deployer.deploy(&spec).await.unwrap().id, deployment.id);
    assert_eq!(phala.cvm_names().unwrap().len(), 1);
    // Older clients list with the unpaginated `GET /cvms`: the same items, as an array.
    let listed = |path: &'static str| {
        let url = format!("{}{path}", phala.api_url());
        async move {
            let (code, answer) = get_with_the_key(url).await;
            assert_eq!(code, 200, "{path}");
            answer
        }
    };
    let page = listed("/cvms/paginated").await;
    assert_eq!(page["total"], 1);
    assert_eq!(listed("/cvms").await, page["items"]);

    // A restart on the same state boots the CVM again.
    within(phala.stop()).await.unwrap();
    let phala = start(dir.path(), port).await;
    healthy(&deployment.endpoint_url, &keypair, Duration::from_secs(10))
        .await
        .unwrap();

    deployer.teardown(&deployment.id).await.unwrap();
    assert_eq!(deployer.find(&spec).await.unwrap(), None);
    let gone = http().get(&deployment.endpoint_url).send().await.unwrap();
    assert_eq!(gone.status().as_u16(), 502);
    within(phala.stop()).await.unwrap();
    within(ensue.stop()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_never_healthy_image_never_passes_the_health_gate() {
    let dir = tempfile::tempdir().unwrap();
    let ensue = LocalEnsue::start(delibera_ensue_local::Config::default())
        .await
        .unwrap();
    let phala = start(dir.path(), 0).await;
    let (spec, keypair) = worker_spec(&ensue, 2, Some(NEVER_HEALTHY_IMAGE));
    let deployment = deployer(&phala, API_KEY).deploy(&spec).await.unwrap();
    let refused = healthy(
        &deployment.endpoint_url,
        &keypair,
        Duration::from_millis(300),
    )
    .await;
    assert!(refused.unwrap_err().contains("HTTP 503"));
    within(phala.stop()).await.unwrap();
    within(ensue.stop()).await.unwrap();
}

#[tokio::test]
async fn a_wrong_api_key_is_refused_with_401() {
    let dir = tempfile::tempdir().unwrap();
    let phala = start(dir.path(), 0).await;
    let client = PhalaClient::new(&phala.api_url(), "phak_wrong").unwrap();
    let error = client.list_cvms(1, 10).await.unwrap_err();
    assert_eq!(error.status(), Some(401), "{error}");
    assert!(
        matches!(error, delibera_phala::Error::Unauthorized(_)),
        "{error}"
    );
    within(phala.stop()).await.unwrap();
}

/// Paging as FastAPI does: a page past the last is empty (the largest page
/// number too), and a page or page size that is not an integer is a 422
/// naming the query parameter.
#[tokio::test]
async fn paging_past_the_end_is_empty_and_a_non_integer_page_is_a_422() {
    let dir = tempfile::tempdir().unwrap();
    let phala = start(dir.path(), 0).await;
    let list =
        |query: String| get_with_the_key(format!("{}/cvms/paginated?{query}", phala.api_url()));

    let (code, page) = list(format!("page={}", u64::MAX)).await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["items"], serde_json::json!([]));
    assert_eq!(page["page"], u64::MAX);

    for (query, field) in [("page=abc", "page"), ("page_size=1.5", "page_size")] {
        let (code, answer) = list(query.to_owned()).await;
        assert_eq!(code, 422, "{query}: {answer}");
        let problem = &answer["detail"][0];
        assert_eq!(
            problem["loc"],
            serde_json::json!(["query", field]),
            "{query}: {answer}"
        );
        assert_eq!(problem["type"], "int_parsing", "{query}: {answer}");
        assert!(problem["msg"].is_string(), "{query}: {answer}");
    }
    within(phala.stop()).await.unwrap();
}

/// `GET url` with the stand-in's API key: the status and the JSON answer.
async fn get_with_the_key(url: String) -> (u16, serde_json::Value) {
    let response = http()
        .get(url)
        .header("X-API-Key", API_KEY)
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    (code, response.json().await.unwrap())
}
