//! What the end-to-end tests on devnet share: the Protocol API as a child
//! process (so it can be killed with SIGKILL), the frontend's calls, the
//! user's wallet, and the production flow from the DAO's contract to a
//! finished round, with this test playing the frontend and the wallet.

// Each test binary uses what it needs of this module.
#![allow(dead_code)]

pub(crate) mod image;
pub(crate) mod postgres;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use delibera::devnet::{Devnet, accounts};
use delibera::near::{
    AccountId, CoordinatorRegistration, FunctionCall, NearRpc, NearSigner, RegistryContract,
    TransactionSender, WorkerRegistration,
};
use serde_json::{Value, json};

/// The environment variable that turns this test binary into the server.
pub(crate) const SERVER_ENV: &str = "DELIBERA_DEVNET_E2E_SERVER";

/// The server half of an end-to-end test binary: each binary declares an
/// ignored `#[test] fn protocol_api_process` calling this, which
/// [`Server::start`] runs in a child process. There it serves the Protocol
/// API, configured from its environment, until killed, printing
/// `listening <url>` once bound; anywhere else it returns at once.
pub(crate) fn protocol_api_process() {
    if std::env::var_os(SERVER_ENV).is_none() {
        return;
    }
    // The parent holds this process's stdin: when the parent ends, however
    // it ends, stdin closes and the server goes with it.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use clap::Parser;
        let config = protocol_api::config::Config::try_parse_from(["protocol-api"]).unwrap();
        let composition = protocol_api::compose::compose(&config).await.unwrap();
        // As the binary does: the jobs run here (on a shared store, those
        // this process leases), the sweeps once it holds the store's leader
        // lock (at once, unless replicas share the store), and the process
        // ends if it loses it.
        let jobs = composition.state.jobs.clone();
        let retention = std::time::Duration::from_secs(config.job_retention_hours * 3600);
        tokio::spawn(async move {
            let reason = jobs.run_while_leading(retention).await.unwrap();
            eprintln!("protocol-api test server: lost the leader lock ({reason})");
            std::process::exit(3);
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening http://{}", listener.local_addr().unwrap());
        protocol_api::run(listener, composition.state, std::future::pending())
            .await
            .unwrap();
    });
}

/// The Protocol API as a child process, killed (SIGKILL) when dropped.
pub(crate) struct Server {
    child: Child,
    /// Where it serves, `http://127.0.0.1:<port>`.
    pub(crate) url: String,
}

impl Server {
    /// Starts it with the devnet's settings, `DATA_DIR` and `extra`.
    pub(crate) fn start(
        devnet: &Devnet,
        data_dir: &std::path::Path,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "protocol_api_process",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            // Only the devnet's settings: nothing the developer exported.
            .env_clear()
            .env(SERVER_ENV, "1")
            .env("DATA_DIR", data_dir)
            .env("RUST_LOG", "protocol_api=info")
            .envs(devnet.env())
            .envs(extra.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (found, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The test harness may have printed the test's name on this line.
                if let Some((_, url)) = line.split_once("listening ") {
                    let _ = found.send(url.trim().to_owned());
                }
            }
        });
        let url = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the Protocol API started");
        Server { child, url }
    }

    /// SIGKILL: no shutdown, no flush, as a crash or an OOM kill.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP call; the status and the JSON body (null when not JSON).
pub(crate) async fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut request = client.request(method.parse().unwrap(), url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls a job as the frontend does, until one of `statuses`.
pub(crate) async fn wait_for(server: &Server, job_id: &str, statuses: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = call(
            "GET",
            &format!("{}/api/provision/status/{job_id}", server.url),
            None,
        )
        .await;
        if code == 200 && statuses.contains(&body["status"].as_str().unwrap_or_default()) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job stuck at {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The user's wallet: signs with the user's own key.
pub(crate) fn wallet(devnet: &Devnet) -> TransactionSender {
    let user = devnet.user();
    let signer = NearSigner::from_secret_key(user.account_id.clone(), &user.private_key).unwrap();
    TransactionSender::new(NearRpc::new([devnet.near().url()]).unwrap(), signer)
}

/// The registry contract, called with the wallet's key.
pub(crate) fn registry(wallet: &TransactionSender) -> RegistryContract {
    RegistryContract::with_sender(wallet.clone(), accounts::REGISTRY.parse().unwrap())
}

/// Starts a provisioning job; its id.
pub(crate) async fn provision(server: &Server, path: &str, body: Value) -> String {
    let (code, accepted) = call("POST", &format!("{}{path}", server.url), Some(body)).await;
    assert_eq!(code, 202, "{accepted}");
    accepted["jobId"].as_str().unwrap().to_owned()
}

/// What the production flow leaves on the devnet.
pub(crate) struct Deliberated {
    /// The coordinator the flow deployed and registered.
    pub(crate) coordinator_did: String,
    /// Its one worker.
    pub(crate) worker_did: String,
    /// The user's account.
    pub(crate) user: String,
    /// The worker's job status when it awaited the wallet's signature.
    pub(crate) worker_status: Value,
}

/// The production flow: the factory makes the DAO's contract, a coordinator
/// and a worker are provisioned, signed for by the wallet and registered, and
/// a round through the deployed agents ends with the worker's vote counted.
pub(crate) async fn run_production_flow(devnet: &Devnet, server: &Server) -> Deliberated {
    let wallet = wallet(devnet);
    let user = devnet.user().account_id.to_string();

    // The frontend's first wallet transaction: the factory makes the DAO's contract.
    let created = wallet
        .function_call(
            &accounts::FACTORY.parse().unwrap(),
            FunctionCall::json(
                "create_coordinator",
                &json!({"prefix": "mydao", "min_workers": 1, "max_workers": 5}),
                delibera::near::CHANGE_CALL_GAS,
                0,
            ),
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    let contract: AccountId = created.json().unwrap();
    assert_eq!(contract.as_str(), format!("mydao.{}", accounts::FACTORY));

    // The coordinator's job, polled until the wallet step.
    let job = provision(
        server,
        "/api/provision/coordinator",
        json!({"displayName": "My DAO Coordinator", "nearAccount": user, "minWorkers": 1, "maxWorkers": 5, "contractAddress": contract}),
    )
    .await;
    let ready = wait_for(server, &job, &["awaiting_near_signature", "failed"]).await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    let coordinator_did = ready["coordinatorDid"].as_str().unwrap().to_owned();
    let coordinator_url = ready["phalaEndpoint"].as_str().unwrap().to_owned();
    assert!(coordinator_url.starts_with(&format!("{}/gateway/", devnet.phala().url())));

    // The wallet signs register_coordinator; the frontend calls at once, without txHash.
    registry(&wallet)
        .register_coordinator(&CoordinatorRegistration {
            coordinator_did: coordinator_did.clone(),
            endpoint_url: coordinator_url.clone(),
            cvm_id: ready["cvmId"].as_str().unwrap().to_owned(),
            min_workers: 1,
            max_workers: 5,
        })
        .await
        .unwrap();
    let (code, done) = call(
        "POST",
        &format!("{}/api/provision/coordinator-register", server.url),
        Some(json!({"jobId": job, "contractAddress": contract})),
    )
    .await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["status"], "complete");

    // The owner claims the coordinator's Ensue org with what the answer showed.
    let claimed = reqwest::Client::new()
        .post(done["ensueClaimUrl"].as_str().unwrap())
        .json(&json!({"verification_code": done["ensueVerificationCode"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(claimed.status().as_u16(), 200);

    // A worker for it, registered with the wallet's txHash.
    let worker_job = provision(
        server,
        "/api/provision/worker",
        json!({"coordinatorDid": coordinator_did, "displayName": "Worker Alpha", "nearAccount": user}),
    )
    .await;
    let worker = wait_for(server, &worker_job, &["awaiting_near_signature", "failed"]).await;
    assert_eq!(worker["status"], "awaiting_near_signature", "{worker}");
    let worker_did = worker["workerDid"].as_str().unwrap().to_owned();
    // Signed as a wallet does it, keeping the hash it hands the frontend.
    let registration = WorkerRegistration {
        coordinator_did: coordinator_did.clone(),
        worker_did: worker_did.clone(),
        endpoint_url: worker["phalaEndpoint"].as_str().unwrap().to_owned(),
        cvm_id: worker["cvmId"].as_str().unwrap().to_owned(),
    };
    let deposit = registry(&wallet).get_min_deposit().await.unwrap();
    let outcome = wallet
        .function_call(
            &accounts::REGISTRY.parse().unwrap(),
            FunctionCall::json(
                "register_worker",
                &serde_json::to_value(&registration).unwrap(),
                delibera::near::CHANGE_CALL_GAS,
                deposit,
            ),
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    let tx_hash = outcome.transaction_hash.unwrap().to_base58();
    let (code, done) = call(
        "POST",
        &format!("{}/api/provision/register", server.url),
        Some(json!({"jobId": worker_job, "txHash": tx_hash})),
    )
    .await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["status"], "complete");

    // The registry, through the API, shows both CVMs' URLs.
    let (_, endpoints) = call("GET", &format!("{}/api/agents/endpoints", server.url), None).await;
    assert_eq!(
        endpoints["agents"][&coordinator_did]["endpoint"],
        coordinator_url
    );
    assert_eq!(endpoints["agents"][&worker_did]["type"], "worker");

    // A round through the deployed agents: the coordinator reads its workers
    // from the registry (at final), the worker votes through Ensue.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = call(
            "POST",
            &format!("{coordinator_url}/api/coordinate"),
            Some(json!({"proposalId": "prop-devnet", "title": "Fund the grants program", "parameters": {"amount": 5000}})),
        )
        .await;
        if code == 202 {
            break;
        }
        assert_eq!(code, 409, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the round never started: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let tally = loop {
        let (code, body) = call(
            "GET",
            &format!("{coordinator_url}/api/proposals/prop-devnet"),
            None,
        )
        .await;
        if code == 200 && body["status"] == "completed" {
            break body["tally"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the round never finished: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(tally["workerCount"], 1, "{tally}");
    assert_eq!(tally["approved"], 1, "{tally}");
    assert_eq!(tally["results"][0]["workerDid"], worker_did);
    Deliberated {
        coordinator_did,
        worker_did,
        user,
        worker_status: worker,
    }
}
