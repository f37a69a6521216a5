//! The product as `cargo run -p protocol-api` runs it, end to end over real
//! HTTP on port 0: `compose_local` (embedded Ensue, local registry, local
//! Storacha space, in-process agents) and `run`. The README walkthrough, then
//! a crash: the server's runtime is killed, a new one starts on the same data
//! dir, and the registered agents answer again and still deliberate.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use protocol_api::compose::{Composition, compose_local};
use protocol_api::config::Config;
use serde_json::{Value, json};

use crate::common::{http, in_clean_env, within};

/// What the first run leaves for the second to check.
struct Provisioned {
    coordinator_did: String,
    coordinator_url: String,
    worker_url: String,
}

fn config(data_dir: &Path, ensue_addr: SocketAddr) -> Config {
    Config::try_parse_from([
        "protocol-api",
        "--port",
        "0",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--ensue-local-addr",
        &ensue_addr.to_string(),
        "--mode",
        "local",
    ])
    .unwrap()
}

/// Starts the server as `main` does; returns its base URL.
async fn start(config: &Config) -> String {
    let Composition { state, local_ensue } =
        within("composing", compose_local(config)).await.unwrap();
    within("resuming the jobs", state.jobs.resume_all())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ensue = local_ensue; // lives as long as the server
        protocol_api::run(listener, state, std::future::pending()).await
    });
    url
}

async fn call(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method.parse().unwrap(), url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn wait_status(http: &reqwest::Client, api: &str, job: &str, want: &str) -> Value {
    for _ in 0..300 {
        let (_, body) = call(
            http,
            "GET",
            &format!("{api}/api/provision/status/{job}"),
            None,
        )
        .await;
        if body["status"] == want {
            return body;
        }
        assert_ne!(body["status"], "failed", "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {job} never reached {want}");
}

/// Runs a round on the coordinator and waits for its tally.
async fn deliberate(http: &reqwest::Client, coordinator_url: &str, proposal_id: &str) -> Value {
    let (code, body) = call(
        http,
        "POST",
        &format!("{coordinator_url}/api/coordinate"),
        Some(json!({
            "proposalId": proposal_id,
            "title": "Fund the grants program",
            "description": "5000 USDC with quarterly milestones",
            "parameters": {"amount": 5000}
        })),
    )
    .await;
    assert!(code < 300, "{code} {body}");
    for _ in 0..600 {
        let (_, body) = call(
            http,
            "GET",
            &format!("{coordinator_url}/api/proposals/{proposal_id}"),
            None,
        )
        .await;
        if body["status"] == "completed" {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("proposal {proposal_id} never completed");
}

async fn first_run(config: &Config) -> Provisioned {
    let api = start(config).await;
    let http = http();

    let response = http.get(format!("{api}/")).send().await.unwrap();
    assert!(response.headers().contains_key("x-request-id"));
    let health: Value = response.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["mode"], "local");
    assert!(
        health["ensueUrl"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );

    // Coordinator.
    let (code, body) = call(
        &http,
        "POST",
        &format!("{api}/api/provision/coordinator"),
        Some(json!({"displayName": "My DAO Coordinator", "nearAccount": "mydao.testnet", "minWorkers": 1, "maxWorkers": 10})),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let job = body["jobId"].as_str().unwrap().to_owned();
    let ready = wait_status(&http, &api, &job, "awaiting_near_signature").await;
    assert!(ready["ensueApiKey"].as_str().is_some());
    let (code, done) = call(
        &http,
        "POST",
        &format!("{api}/api/provision/coordinator-register"),
        Some(json!({"jobId": job, "txHash": "DEF456"})),
    )
    .await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["status"], "complete");
    let coordinator_did = ready["coordinatorDid"].as_str().unwrap().to_owned();
    let coordinator_url = ready["phalaEndpoint"].as_str().unwrap().to_owned();

    // Worker.
    let (code, body) = call(
        &http,
        "POST",
        &format!("{api}/api/provision/worker"),
        Some(json!({"coordinatorDid": coordinator_did, "displayName": "Worker Alpha", "nearAccount": "alice.testnet"})),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let wjob = body["jobId"].as_str().unwrap().to_owned();
    let wready = wait_status(&http, &api, &wjob, "awaiting_near_signature").await;
    let (code, done) = call(
        &http,
        "POST",
        &format!("{api}/api/provision/register"),
        Some(json!({"jobId": wjob, "txHash": "ABC123"})),
    )
    .await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["txHash"], "ABC123");
    let worker_did = wready["workerDid"].as_str().unwrap().to_owned();
    let worker_url = wready["phalaEndpoint"].as_str().unwrap().to_owned();

    let (_, endpoints) = call(&http, "GET", &format!("{api}/api/agents/endpoints"), None).await;
    assert_eq!(endpoints["agents"][&coordinator_did]["type"], "coordinator");
    assert_eq!(endpoints["agents"][&worker_did]["endpoint"], worker_url);

    // The roster, with the admin token local mode wrote into the data dir.
    let token = std::fs::read_to_string(config.data_dir.join("admin-token")).unwrap();
    let response = http
        .post(format!("{api}/api/workers/register"))
        .bearer_auth(token.trim())
        .json(&json!({"workerId": worker_did, "accountId": "alice.testnet"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (_, roster) = call(&http, "GET", &format!("{api}/api/workers/registered"), None).await;
    assert_eq!(roster["activeCount"], 1, "{roster}");

    // The agents are real: a round through Ensue.
    let result = deliberate(&http, &coordinator_url, "prop-42").await;
    assert_eq!(result["tally"]["workerCount"], 1, "{result}");
    assert_eq!(result["tally"]["decision"], "Approved", "{result}");

    Provisioned {
        coordinator_did,
        coordinator_url,
        worker_url,
    }
}

async fn second_run(config: &Config, before: &Provisioned) {
    let api = start(config).await;
    let http = http();
    let (_, endpoints) = call(&http, "GET", &format!("{api}/api/agents/endpoints"), None).await;
    assert_eq!(
        endpoints["agents"].as_object().unwrap().len(),
        2,
        "{endpoints}"
    );

    // The same endpoints answer, with the same identities.
    let (code, health) = call(&http, "GET", &format!("{}/", before.coordinator_url), None).await;
    assert_eq!(code, 200);
    assert_eq!(health["did"], before.coordinator_did, "{health}");
    let (code, _) = call(&http, "GET", &format!("{}/", before.worker_url), None).await;
    assert_eq!(code, 200);

    let result = deliberate(&http, &before.coordinator_url, "prop-43").await;
    assert_eq!(result["tally"]["workerCount"], 1, "{result}");
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn the_walkthrough_works_and_survives_a_crash() {
    // The config is parsed as `main` parses it: from the environment too.
    if !in_clean_env(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A fixed Ensue address across both runs: the agents' env points at it.
    let config = config(dir.path(), free_port());

    let crashed = tokio::runtime::Runtime::new().unwrap();
    let before = crashed.block_on(first_run(&config));
    // A crash: every task of the first server (its agents included) stops at once.
    crashed.shutdown_timeout(Duration::from_secs(5));

    let restarted = tokio::runtime::Runtime::new().unwrap();
    restarted.block_on(second_run(&config, &before));
    restarted.shutdown_timeout(Duration::from_secs(5));
}

/// The composed server reads the registry through its cache (a TTL far
/// longer than the test), and sees its own writes at once: the roster after
/// an admin write, the endpoints after a change of endpoint.
#[test]
fn the_composed_registry_cache_shows_the_servers_own_writes_at_once() {
    if !in_clean_env(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), free_port());
    config.registry_cache_ttl_ms = 3_600_000;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let api = start(&config).await;
        let http = http();
        let token = std::fs::read_to_string(config.data_dir.join("admin-token")).unwrap();
        let worker = "did:key:z6MktnLCM9uGL4j8VSMinpV13BUYwss4R1fjcq2DiLmyjF7M";

        let (code, roster) =
            call(&http, "GET", &format!("{api}/api/workers/registered"), None).await;
        assert_eq!((code, &roster["activeCount"]), (200, &json!(0)), "{roster}");
        let response = http
            .post(format!("{api}/api/workers/register"))
            .bearer_auth(token.trim())
            .json(&json!({"workerId": worker}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let (_, roster) = call(&http, "GET", &format!("{api}/api/workers/registered"), None).await;
        assert_eq!(roster["activeCount"], 1, "{roster}");
        assert_eq!(roster["workers"][0]["worker_did"], worker, "{roster}");

        let response = http
            .delete(format!("{api}/api/workers/{worker}"))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let (_, roster) = call(&http, "GET", &format!("{api}/api/workers/registered"), None).await;
        assert_eq!(roster["activeCount"], 0, "{roster}");
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
}
