//! Provisioning flows end to end through `app(state)`, over real local parts.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use delibera_ensue::{EnsueClient, EnsueConfig, Memory};
use protocol_api::jobs::{Job, JobStatus};
use serde_json::{Value, json};

use crate::common::{
    GateState, Holds, LosesFirstAnswer, Options, TestApp, TestDeployer, http, until, within,
};

/// Every secret field of the status response.
const SECRET_FIELDS: [&str; 5] = [
    "storachaPrivateKey",
    "storachaDelegation",
    "ensueApiKey",
    "ensueClaimUrl",
    "ensueVerificationCode",
];

/// Every other field of the status response: shown in every status.
const PUBLIC_FIELDS: [&str; 21] = [
    "jobId",
    "role",
    "status",
    "step",
    "workerDid",
    "coordinatorDid",
    "displayName",
    "nearAccount",
    "minWorkers",
    "maxWorkers",
    "contractAddress",
    "ensueOrgName",
    "spaceDid",
    "phalaEndpoint",
    "cvmId",
    "image",
    "dashboardUrl",
    "txHash",
    "error",
    "createdAt",
    "updatedAt",
];

/// The API contract: secrets are revealed once a job reaches
/// `awaiting_near_signature` or `complete`, and in no other status.
const REVEALS_SECRETS: [(&str, bool); 10] = [
    ("generating_identity", false),
    ("creating_space", false),
    ("provisioning_ensue", false),
    ("preparing_phala", false),
    ("deploying_phala", false),
    ("waiting_for_url", false),
    ("awaiting_near_signature", true),
    ("registering", false),
    ("complete", true),
    ("failed", false),
];

fn reveals_secrets(status: &str) -> bool {
    REVEALS_SECRETS
        .iter()
        .find(|(name, _)| *name == status)
        .unwrap_or_else(|| panic!("{status} is missing from REVEALS_SECRETS"))
        .1
}

/// The job's stored secrets, by the status-response field that shows each.
fn stored_secrets(job: &Job) -> [(&'static str, Option<String>); 5] {
    [
        (
            "storachaPrivateKey",
            job.secrets.storacha_private_key.clone(),
        ),
        ("storachaDelegation", job.delegation.clone()),
        ("ensueApiKey", job.secrets.ensue_api_key.clone()),
        ("ensueClaimUrl", job.secrets.ensue_claim_url.clone()),
        (
            "ensueVerificationCode",
            job.secrets.ensue_verification_code.clone(),
        ),
    ]
}

/// `body`, the status response for `job`, shows every secret the job holds
/// exactly when its status reveals secrets, and never one it does not hold.
fn assert_secret_rule(job: &Job, body: &Value) {
    let status = body["status"].as_str().unwrap();
    assert_eq!(status, job.status.as_str(), "{body}");
    let revealed = reveals_secrets(status);
    for (field, stored) in stored_secrets(job) {
        let expected = stored.filter(|_| revealed).map(Value::String);
        assert_eq!(
            body.get(field).cloned(),
            expected,
            "{field} at {status} ({} job)",
            job.role
        );
    }
}

fn assert_no_secrets(body: &Value) {
    for field in SECRET_FIELDS {
        assert!(
            body.get(field).is_none(),
            "{field} revealed at {}: {body}",
            body["status"]
        );
    }
}

/// The status response for `job_id` at `status`: the job already holds
/// `held` (so hiding them means something), and none is shown.
async fn secrets_hidden_at(app: &TestApp, job_id: &str, status: &str, held: &[&str]) -> Value {
    let body = app.wait_for(job_id, &[status]).await;
    let job = app.state.jobs.get(job_id).await.unwrap();
    let holding: Vec<&str> = stored_secrets(&job)
        .into_iter()
        .filter(|(_, value)| value.is_some())
        .map(|(field, _)| field)
        .collect();
    assert_eq!(holding, held, "secrets the job holds at {status}");
    assert_secret_rule(&job, &body);
    assert_no_secrets(&body);
    body
}

async fn provision_coordinator(app: &TestApp) -> (String, Value) {
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/coordinator",
            Some(json!({ "displayName": "My DAO Coordinator", "nearAccount": "mydao.testnet", "minWorkers": 1, "maxWorkers": 5 })),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "provisioning");
    let job_id = body["jobId"].as_str().unwrap().to_owned();
    let ready = app
        .wait_for(&job_id, &["awaiting_near_signature", "failed"])
        .await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    (job_id, ready)
}

#[tokio::test]
async fn coordinator_then_worker_reach_complete_and_secrets_wait_for_the_wallet_step() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;

    // --- coordinator
    let (job_id, ready) = provision_coordinator(&app).await;
    assert_eq!(ready["role"], "coordinator");
    assert_eq!(ready["step"], "Waiting for NEAR wallet signature");
    let coordinator_did = ready["coordinatorDid"].as_str().unwrap().to_owned();
    assert_eq!(
        ready["workerDid"], coordinator_did,
        "frontends read workerDid"
    );
    let private_key = ready["storachaPrivateKey"].as_str().unwrap();
    let keypair = delibera_identity::Keypair::from_ucanto_str(private_key).unwrap();
    assert_eq!(keypair.did().as_str(), coordinator_did);
    assert!(ready["ensueApiKey"].as_str().is_some());
    assert!(ready["ensueClaimUrl"].as_str().unwrap().starts_with("http"));
    assert!(
        ready["ensueOrgName"]
            .as_str()
            .unwrap()
            .starts_with("delibera-my-dao-coordinator-")
    );
    assert!(
        ready["phalaEndpoint"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    assert_eq!(ready["cvmId"], "test-cvm-0");
    let coordinator_env = app.deployer.last_env();
    assert_eq!(
        coordinator_env["ENSUE_API_KEY"],
        ready["ensueApiKey"].as_str().unwrap()
    );
    assert_eq!(coordinator_env["STORACHA_AGENT_PRIVATE_KEY"], private_key);
    assert!(coordinator_env["STORACHA_DELEGATION_PROOF"].starts_with("mAYIEA"));

    let (code, done) = app
        .call(
            "POST",
            "/api/provision/coordinator-register",
            Some(json!({ "jobId": job_id, "contractAddress": "mydao.coord-factory.agents-coordinator.testnet", "txHash": "DEF456" })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "complete");
    assert_eq!(done["coordinatorDid"], coordinator_did);
    assert_eq!(
        done["contractAddress"],
        "mydao.coord-factory.agents-coordinator.testnet"
    );
    assert_eq!(done["txHash"], "DEF456");
    assert_eq!(done["ensueOrgName"], ready["ensueOrgName"]);
    assert_eq!(
        done["ensueVerificationCode"],
        ready["ensueVerificationCode"]
    );

    // The coordinator is announced in its own Ensue org.
    let org_memory = EnsueClient::new(
        EnsueConfig::new(ready["ensueApiKey"].as_str().unwrap())
            .with_base_url(app.ensue.url())
            .unwrap(),
    )
    .unwrap();
    let did: delibera_identity::Did = coordinator_did.parse().unwrap();
    let display_key =
        delibera_ensue::keys::agent(&did, delibera_ensue::keys::AgentField::DisplayName);
    assert_eq!(
        org_memory.get(&display_key).await.unwrap().as_deref(),
        Some("My DAO Coordinator")
    );

    // --- worker for that coordinator
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/worker",
            Some(json!({ "coordinatorDid": coordinator_did, "displayName": "Worker Alpha", "nearAccount": "alice.testnet" })),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let worker_job = body["jobId"].as_str().unwrap().to_owned();
    let ready = app
        .wait_for(&worker_job, &["awaiting_near_signature", "failed"])
        .await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    assert_eq!(ready["role"], "worker");
    assert_eq!(ready["coordinatorDid"], coordinator_did);
    assert!(
        ready["storachaPrivateKey"]
            .as_str()
            .unwrap()
            .starts_with("Mg")
    );
    assert!(
        ready.get("ensueApiKey").is_none(),
        "workers get no org of their own"
    );
    // The worker runs with its coordinator's Ensue org key.
    assert_eq!(
        app.deployer.last_env()["ENSUE_API_KEY"],
        coordinator_env["ENSUE_API_KEY"]
    );
    assert_eq!(app.deployer.last_env()["COORDINATOR_DID"], coordinator_did);

    let (code, done) = app
        .call(
            "POST",
            "/api/provision/register",
            Some(json!({ "jobId": worker_job, "txHash": "ABC123" })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{done}");
    assert_eq!(
        done,
        json!({
            "status": "complete",
            "workerDid": ready["workerDid"],
            "phalaEndpoint": ready["phalaEndpoint"],
            "txHash": "ABC123",
        })
    );
    let complete = app
        .call("GET", &format!("/api/provision/status/{worker_job}"), None)
        .await
        .1;
    assert_eq!(complete["status"], "complete");
    assert!(
        complete["storachaPrivateKey"].is_string(),
        "secrets stay visible at complete"
    );

    // Registering twice is a conflict, not a second registration.
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/register",
            Some(json!({ "jobId": worker_job })),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");

    // --- registry reads
    let (code, endpoints) = app.call("GET", "/api/agents/endpoints", None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(endpoints["agents"][&coordinator_did]["type"], "coordinator");
    let worker_did = ready["workerDid"].as_str().unwrap();
    assert_eq!(endpoints["agents"][worker_did]["type"], "worker");
    assert_eq!(
        endpoints["agents"][worker_did]["endpoint"],
        ready["phalaEndpoint"]
    );
    assert_eq!(endpoints["agents"][worker_did]["cvmId"], ready["cvmId"]);
    let (code, one) = app
        .call("GET", &format!("/api/agents/{worker_did}/endpoint"), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        one,
        json!({ "agentId": worker_did, "endpoint": ready["phalaEndpoint"], "cvmId": ready["cvmId"] })
    );
}

/// A real coordinator job held at every step a port can hold it: secrets the
/// job already holds stay hidden until `awaiting_near_signature`, show there
/// and at `complete`, and hide again while registering and once failed.
#[tokio::test]
async fn a_job_held_at_each_step_shows_its_secrets_only_at_the_wallet_step_and_when_complete() {
    let dir = tempfile::tempdir().unwrap();
    let deployer = TestDeployer::unhealthy();
    let holds = Holds::closed();
    let options = Options {
        holds: holds.clone(),
        ..Options::default()
    };
    let app = TestApp::start(dir.path(), deployer.clone(), options).await;
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/coordinator",
            Some(json!({ "displayName": "C", "nearAccount": "c.testnet" })),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let job_id = body["jobId"].as_str().unwrap().to_owned();

    secrets_hidden_at(&app, &job_id, "creating_space", &["storachaPrivateKey"]).await;
    holds.space.set(GateState::Open);
    let key_and_grant = ["storachaPrivateKey", "storachaDelegation"];
    secrets_hidden_at(&app, &job_id, "provisioning_ensue", &key_and_grant).await;
    holds.ensue.set(GateState::Open);
    secrets_hidden_at(&app, &job_id, "deploying_phala", &SECRET_FIELDS).await;
    holds.deploy.set(GateState::Open);
    let waiting = secrets_hidden_at(&app, &job_id, "waiting_for_url", &SECRET_FIELDS).await;
    assert_eq!(
        waiting["step"].as_str().unwrap().split(" (").next(),
        Some("Waiting for TEE container to be healthy")
    );
    assert!(
        waiting["coordinatorDid"].is_string(),
        "public facts are shown early"
    );

    deployer.healthy.store(true, Ordering::SeqCst);
    let ready = app.wait_for(&job_id, &["awaiting_near_signature"]).await;
    let job = app.state.jobs.get(&job_id).await.unwrap();
    assert_secret_rule(&job, &ready);
    for field in SECRET_FIELDS {
        assert!(ready[field].is_string(), "{field} shown at the wallet step");
    }

    let registration = tokio::spawn({
        let api = app.api.clone();
        let job_id = job_id.clone();
        async move {
            api.call(
                "POST",
                "/api/provision/coordinator-register",
                Some(json!({ "jobId": job_id })),
            )
            .await
        }
    });
    secrets_hidden_at(&app, &job_id, "registering", &SECRET_FIELDS).await;
    holds.registration.set(GateState::Open);
    let (code, done) = within("the registration", registration).await.unwrap();
    assert_eq!(code, StatusCode::OK, "{done}");
    let complete = app.wait_for(&job_id, &["complete"]).await;
    assert_secret_rule(&app.state.jobs.get(&job_id).await.unwrap(), &complete);
    assert!(complete["storachaDelegation"].is_string());

    // A second job fails at its deploy, holding every secret by then.
    holds.deploy.set(GateState::Failing);
    let (_, body) = app
        .call(
            "POST",
            "/api/provision/coordinator",
            Some(json!({ "displayName": "D", "nearAccount": "d.testnet" })),
        )
        .await;
    let doomed = body["jobId"].as_str().unwrap();
    let failed = secrets_hidden_at(&app, doomed, "failed", &SECRET_FIELDS).await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("no capacity left"),
        "{failed}"
    );
}

/// Every status × every secret field, for both roles, on jobs stored with
/// all their secrets: the status route shows them exactly where the contract
/// says, including the statuses no real job can be held in.
#[tokio::test]
async fn the_secret_rule_holds_for_every_status_and_every_secret_field() {
    let statuses: Vec<&str> = JobStatus::ALL
        .iter()
        .map(|status| status.as_str())
        .collect();
    let ruled: Vec<&str> = REVEALS_SECRETS.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses, ruled, "the rule names every status, in order");

    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    // The status response has exactly these fields: a new one must be sorted
    // into public or secret here.
    let (_, doc) = app.call("GET", "/api/openapi.json", None).await;
    let mut documented: Vec<&str> = doc["components"]["schemas"]["JobStatusView"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    documented.sort_unstable();
    let mut known: Vec<&str> = PUBLIC_FIELDS
        .iter()
        .chain(&SECRET_FIELDS)
        .copied()
        .collect();
    known.sort_unstable();
    assert_eq!(documented, known);

    for role in [
        delibera_deploy::AgentRole::Coordinator,
        delibera_deploy::AgentRole::Worker,
    ] {
        for status in JobStatus::ALL {
            let job = stored_job_with_secrets(role, status);
            app.database.jobs().insert(&job).await.unwrap();
            let (code, body) = app
                .call("GET", &format!("/api/provision/status/{}", job.id), None)
                .await;
            assert_eq!(code, StatusCode::OK, "{body}");
            assert_secret_rule(&job, &body);
        }
    }
}

/// A job in `status` holding every secret its role has: a coordinator all
/// five, a worker its key and delegation (its Ensue key is its coordinator's).
fn stored_job_with_secrets(role: delibera_deploy::AgentRole, status: JobStatus) -> Job {
    use delibera_deploy::AgentRole;
    let keypair = delibera_identity::Keypair::generate();
    let mut job = Job::new(
        protocol_api::jobs::NewJob {
            role,
            display_name: format!("{role} at {}", status.as_str()),
            near_account: "alice.testnet".parse().unwrap(),
            coordinator_did: (role == AgentRole::Worker).then(|| {
                "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH"
                    .parse()
                    .unwrap()
            }),
            min_workers: None,
            max_workers: None,
            contract_address: None,
        },
        chrono::Utc::now(),
    );
    job.status = status;
    job.agent_did = Some(keypair.did());
    if role == AgentRole::Coordinator {
        job.coordinator_did = Some(keypair.did());
        job.ensue_org_name = Some("delibera-org".into());
        job.secrets.ensue_api_key = Some("lmn_org_key_0123456789".into());
        job.secrets.ensue_claim_url = Some("http://127.0.0.1:3006/claim?token=t".into());
        job.secrets.ensue_verification_code = Some("V3R1FY".into());
    }
    job.secrets.storacha_private_key = Some(keypair.to_ucanto_string().to_string());
    job.space_did = Some(delibera_identity::Keypair::generate().did());
    job.delegation = Some("mAYIEAstored-delegation".into());
    job.cvm_id = Some("cvm-1".into());
    job.endpoint = Some("http://127.0.0.1:1".into());
    job
}

#[tokio::test]
async fn an_agent_that_never_becomes_healthy_fails_and_is_torn_down() {
    let dir = tempfile::tempdir().unwrap();
    let deployer = TestDeployer::unhealthy();
    let options = Options {
        health_timeout: Duration::from_millis(400),
        ..Options::default()
    };
    let app = TestApp::start(dir.path(), deployer.clone(), options).await;
    let (_, body) = app
        .call(
            "POST",
            "/api/provision/coordinator",
            Some(json!({ "displayName": "C", "nearAccount": "c.testnet" })),
        )
        .await;
    let job_id = body["jobId"].as_str().unwrap().to_owned();
    let failed = app
        .wait_for(&job_id, &["failed", "awaiting_near_signature"])
        .await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["step"], "Deployment failed");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("never became healthy") && error.contains("torn down"),
        "{error}"
    );
    assert_eq!(
        *deployer.teardowns.lock().unwrap(),
        vec!["test-cvm-0".to_owned()]
    );
    assert_no_secrets(&failed);
    // A failed job cannot be registered.
    let (code, _) = app
        .call(
            "POST",
            "/api/provision/coordinator-register",
            Some(json!({ "jobId": job_id })),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
}

/// Kills the whole server (its runtime) while a job waits for health, starts
/// a new one on the same data dir, and checks the job resumes without a
/// second deployment and with its secret intact.
#[test]
fn a_restart_resumes_the_job_without_redeploying() {
    let dir = tempfile::tempdir().unwrap();
    let deployer = TestDeployer::unhealthy();

    let first = tokio::runtime::Runtime::new().unwrap();
    let (job_id, private_key_before) = first.block_on(async {
        let app = TestApp::start(dir.path(), deployer.clone(), Options::default()).await;
        let (_, body) = app
            .call(
                "POST",
                "/api/provision/coordinator",
                Some(json!({ "displayName": "C", "nearAccount": "c.testnet" })),
            )
            .await;
        let job_id = body["jobId"].as_str().unwrap().to_owned();
        app.wait_for(&job_id, &["waiting_for_url"]).await;
        let stored = app.state.jobs.get(&job_id).await.unwrap();
        (job_id, stored.secrets.storacha_private_key.unwrap())
    });
    // Abandon every task of the first server, as a crash would.
    first.shutdown_timeout(Duration::from_millis(100));
    assert_eq!(deployer.deploys.load(Ordering::SeqCst), 1);

    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let app = TestApp::start(dir.path(), deployer.clone(), Options::default()).await;
        let job = app.state.jobs.get(&job_id).await.unwrap();
        assert_eq!(job.status.as_str(), "waiting_for_url");
        // The CVM outlived the crash; it becomes healthy now.
        deployer.healthy.store(true, Ordering::SeqCst);

        let resumed = app.state.jobs.resume_all().await.unwrap();
        assert_eq!(resumed, 1);
        let ready = app
            .wait_for(&job_id, &["awaiting_near_signature", "failed"])
            .await;
        assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
        assert_eq!(
            ready["storachaPrivateKey"].as_str().unwrap(),
            private_key_before
        );
        assert_eq!(
            deployer.deploys.load(Ordering::SeqCst),
            1,
            "no second deployment"
        );
    });
}

/// A job's first try of its deploy step, made by the run that moved it
/// there, asks the deployer for nothing but the deployment: no earlier try
/// can have left one under its name, so there is nothing to look for.
#[tokio::test]
async fn a_first_deploy_does_not_look_for_an_earlier_one() {
    let dir = tempfile::tempdir().unwrap();
    let deployer = TestDeployer::healthy();
    let app = TestApp::start(dir.path(), deployer.clone(), Options::default()).await;
    provision_coordinator(&app).await;
    assert_eq!(deployer.deploys.load(Ordering::SeqCst), 1);
    assert_eq!(deployer.finds.load(Ordering::SeqCst), 0);
}

/// A burst is carried through a few jobs at a time: with places for two,
/// two jobs are in their first steps while the others wait at
/// `generating_identity`, each goes on as a place frees up, and every one
/// ends where it would alone.
#[tokio::test]
async fn jobs_beyond_the_places_for_beginning_wait_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let holds = Holds::open();
    holds.space.set(GateState::Closed);
    let options = Options {
        holds: holds.clone(),
        jobs_beginning_at_once: 2,
        ..Options::default()
    };
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), options).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        let (code, body) = app
            .call(
                "POST",
                "/api/provision/coordinator",
                Some(json!({ "displayName": format!("Burst DAO {n}"), "nearAccount": "mydao.testnet" })),
            )
            .await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        ids.push(body["jobId"].as_str().unwrap().to_owned());
    }
    let statuses = || async {
        let mut statuses = Vec::new();
        for id in &ids {
            let (_, body) = app
                .call("GET", &format!("/api/provision/status/{id}"), None)
                .await;
            statuses.push(body["status"].as_str().unwrap().to_owned());
        }
        statuses
    };
    let count =
        |statuses: &[String], status: &str| statuses.iter().filter(|s| *s == status).count();
    until("two jobs to reach the held delegation", || async {
        count(&statuses().await, "creating_space") == 2
    })
    .await;
    // Whatever the others would have done by now, they are still waiting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held = statuses().await;
    assert_eq!(count(&held, "creating_space"), 2, "{held:?}");
    assert_eq!(count(&held, "generating_identity"), 2, "{held:?}");

    holds.space.set(GateState::Open);
    for id in &ids {
        let ready = app
            .wait_for(id, &["awaiting_near_signature", "failed"])
            .await;
        assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    }
}

/// Starts a server on `dir` in a runtime of its own, provisions a
/// coordinator named `name`, and kills the whole server (shuts the runtime
/// down) inside its deploy call, once `deployer` has made the deployment;
/// returns the job's id.
fn killed_inside_its_deploy(
    dir: &std::path::Path,
    deployer: &std::sync::Arc<TestDeployer>,
    name: &str,
) -> String {
    deployer.hang_after_deploy.store(true, Ordering::SeqCst);
    let first = tokio::runtime::Runtime::new().unwrap();
    let job_id = first.block_on(async {
        let app = TestApp::start(dir, deployer.clone(), Options::default()).await;
        let (_, body) = app
            .call(
                "POST",
                "/api/provision/coordinator",
                Some(json!({ "displayName": name, "nearAccount": "c.testnet" })),
            )
            .await;
        let job_id = body["jobId"].as_str().unwrap().to_owned();
        app.wait_for(&job_id, &["deploying_phala"]).await;
        until("the deploy to start", || async {
            deployer.deploys.load(Ordering::SeqCst) > 0
        })
        .await;
        job_id
    });
    first.shutdown_timeout(Duration::from_millis(100));
    job_id
}

/// Kills the whole server inside the deploy call (the deployment exists, the
/// server never saw the answer), restarts it on the same data dir, and checks
/// the job finds its deployment by name and goes on: one deploy in all.
#[test]
fn a_job_killed_inside_its_deploy_adopts_the_deployment_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let deployer = TestDeployer::healthy();
    let job_id = killed_inside_its_deploy(dir.path(), &deployer, "Killed Mid Deploy");
    let deployed = deployer.specs.lock().unwrap()[0].clone();

    deployer.hang_after_deploy.store(false, Ordering::SeqCst);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let app = TestApp::start(dir.path(), deployer.clone(), Options::default()).await;
        assert_eq!(
            app.state.jobs.get(&job_id).await.unwrap().status.as_str(),
            "deploying_phala"
        );
        assert_eq!(app.state.jobs.resume_all().await.unwrap(), 1);
        let ready = app
            .wait_for(&job_id, &["awaiting_near_signature", "failed"])
            .await;
        assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
        assert_eq!(
            deployer.deploys.load(Ordering::SeqCst),
            1,
            "no second deploy"
        );
        // The resumed try looked for it by name; the first, made by the
        // run that moved the job into the step, had nothing to look for.
        assert_eq!(
            deployer.finds.load(Ordering::SeqCst),
            1,
            "looked for it by name once"
        );
        assert_eq!(ready["cvmId"], "test-cvm-0");
        // The spec deployed is the one the job stored, name and env alike.
        let job = app.state.jobs.get(&job_id).await.unwrap();
        assert_eq!(job.secrets.spec.as_ref(), Some(&deployed));
    });
}

/// The same kill, but after the restart the lookup by name fails: the job
/// fails, and the deployment the killed try made is not left running (the
/// sweeper finds it by name once the lookup works).
#[test]
fn a_resumed_deploy_whose_lookup_fails_tears_the_earlier_deployment_down() {
    let dir = tempfile::tempdir().unwrap();
    let deployer = TestDeployer::healthy();
    let job_id = killed_inside_its_deploy(dir.path(), &deployer, "Killed Then Unlisted");
    deployer.hang_after_deploy.store(false, Ordering::SeqCst);
    deployer.failing_finds.store(true, Ordering::SeqCst);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let app = TestApp::start(dir.path(), deployer.clone(), Options::default()).await;
        assert_eq!(app.state.jobs.resume_all().await.unwrap(), 1);
        let failed = app.wait_for(&job_id, &["failed"]).await;
        let error = failed["error"].as_str().unwrap();
        assert!(
            error.starts_with("looking for an earlier deployment failed"),
            "{failed}"
        );
        assert!(error.contains("is being torn down"), "{failed}");
        assert_eq!(
            deployer.deploys.load(Ordering::SeqCst),
            1,
            "no second deploy"
        );
        until("the earlier deployment to be torn down", || async {
            deployer
                .teardowns
                .lock()
                .unwrap()
                .contains(&"test-cvm-0".to_owned())
        })
        .await;
    });
}

#[test]
fn a_job_interrupted_inside_a_deploy_of_the_first_release_fails_instead_of_paying_twice() {
    let dir = tempfile::tempdir().unwrap();
    let deployer = TestDeployer::healthy();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let app = TestApp::start(dir.path(), deployer.clone(), Options::default()).await;
        // As the first release left such a job: marked before its deploy call,
        // with a random CVM name no lookup by name can find, and no CVM id.
        let mut job = protocol_api::jobs::Job::new(
            protocol_api::jobs::NewJob {
                role: delibera_deploy::AgentRole::Worker,
                display_name: "W".into(),
                near_account: "w.testnet".parse().unwrap(),
                coordinator_did: Some(
                    "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH"
                        .parse()
                        .unwrap(),
                ),
                min_workers: None,
                max_workers: None,
                contract_address: None,
            },
            chrono::Utc::now(),
        );
        job.status = protocol_api::jobs::JobStatus::DeployingPhala;
        job.agent_did = Some(
            "did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2"
                .parse()
                .unwrap(),
        );
        job.legacy_deployment_mark = Some("W (interrupted)".into());
        app.database.jobs().insert(&job).await.unwrap();
        app.state.jobs.resume_all().await.unwrap();
        let failed = app.wait_for(&job.id.to_string(), &["failed"]).await;
        assert!(
            failed["error"].as_str().unwrap().contains("not redeployed"),
            "{failed}"
        );
        assert_eq!(deployer.deploys.load(Ordering::SeqCst), 0);
    });
}

#[tokio::test]
async fn a_worker_for_an_unknown_coordinator_is_refused_before_any_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/worker",
            Some(json!({ "coordinatorDid": "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH", "displayName": "W", "nearAccount": "w.testnet" })),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not registered"));
    assert_eq!(app.deployer.deploys.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn external_worker_identity_is_returned_once_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let request = json!({
        "displayName": "My Custom Worker",
        "nearAccount": "bob.testnet",
        "endpointUrl": "https://my-worker.example.com",
        "coordinatorDid": "did:key:z6MktnLCM9uGL4j8VSMinpV13BUYwss4R1fjcq2DiLmyjF7M",
    });
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/external-worker",
            Some(request.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let object = body.as_object().unwrap();
    assert_eq!(object.len(), 2);
    let keypair =
        delibera_identity::Keypair::from_ucanto_str(body["privateKeyString"].as_str().unwrap())
            .unwrap();
    assert_eq!(keypair.did().as_str(), body["workerDid"]);
    // A second call mints a different identity: nothing was kept to hand out again.
    let (_, again) = app
        .call("POST", "/api/provision/external-worker", Some(request))
        .await;
    assert_ne!(again["workerDid"], body["workerDid"]);
    assert!(app.database.jobs().resumable().await.unwrap().is_empty());
    let db = std::fs::read(dir.path().join("jobs.sqlite")).unwrap();
    let secret = body["privateKeyString"].as_str().unwrap();
    assert!(
        !db.windows(secret.len())
            .any(|window| window == secret.as_bytes())
    );
}

#[tokio::test]
async fn a_registration_cut_off_by_a_restart_finishes_on_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let (job_id, ready) = provision_coordinator(&app).await;
    // As a crash during `coordinator-register` leaves it.
    let mut job = app.state.jobs.get(&job_id).await.unwrap();
    job.status = protocol_api::jobs::JobStatus::Registering;
    job.tx_hash = Some("DEF456".into());
    app.database.jobs().save(&job).await.unwrap();
    let (code, _) = app
        .call(
            "POST",
            "/api/provision/coordinator-register",
            Some(json!({ "jobId": job_id })),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "stuck until the restart");

    app.state.jobs.resume_all().await.unwrap();
    let done = app
        .wait_for(&job_id, &["complete", "awaiting_near_signature"])
        .await;
    assert_eq!(done["status"], "complete", "{done}");
    assert_eq!(done["txHash"], "DEF456");
    let record = delibera_near::Registry::coordinator_by_did(
        app.registry.as_ref(),
        ready["coordinatorDid"].as_str().unwrap(),
    )
    .await
    .unwrap()
    .expect("registered");
    assert_eq!(
        Some(record.endpoint_url.as_str()),
        ready["phalaEndpoint"].as_str()
    );
}

/// The frontend has the owner sign the factory transaction before it sends
/// the coordinator's name, and sets no limit on it: a long name must not be
/// refused after the owner has paid.
#[tokio::test]
async fn a_long_coordinator_name_is_accepted_and_provisioned() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let name =
        "The Very Long Name Of A Decentralised Autonomous Organisation Coordinator For Grants 2026";
    assert!(name.chars().count() > 64);
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/coordinator",
            Some(json!({ "displayName": name, "nearAccount": "dao.testnet", "contractAddress": "dao.coord-factory.agents-coordinator.testnet" })),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let ready = app
        .wait_for(
            body["jobId"].as_str().unwrap(),
            &["awaiting_near_signature", "failed"],
        )
        .await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    assert_eq!(ready["displayName"], name);
    assert!(ready["ensueOrgName"].as_str().unwrap().len() <= 64);
}

#[tokio::test]
async fn an_ensue_org_whose_answer_was_lost_is_registered_again_under_a_new_name() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        wrap_ensue: Some(Box::new(LosesFirstAnswer::wrap)),
        ..Options::default()
    };
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), options).await;
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/coordinator",
            Some(json!({ "displayName": "Lost Answer", "nearAccount": "c.testnet" })),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let ready = app
        .wait_for(
            body["jobId"].as_str().unwrap(),
            &["awaiting_near_signature", "failed"],
        )
        .await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    // The first name's org exists, but its key was never seen: the job
    // registered a second org and uses that one's key.
    let org = ready["ensueOrgName"].as_str().unwrap();
    assert!(org.ends_with("-2"), "{org}");
    let job = app
        .state
        .jobs
        .get(body["jobId"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(job.ensue_org_attempts, 2);
}

/// Hosted Ensue refuses a new org's key until a person claims the org, and
/// the owner only sees where to claim it once registration succeeded: so
/// registration must stand without Ensue, and the agent is announced later.
#[tokio::test]
async fn a_coordinator_of_an_unclaimed_org_registers_and_is_announced_once_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        ensue_config: |config| {
            config.with_claim_policy(delibera_ensue_local::ClaimPolicy::RequireClaim)
        },
        ..Options::default()
    };
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), options).await;
    let (job_id, _) = provision_coordinator(&app).await;
    let (code, done) = app
        .call(
            "POST",
            "/api/provision/coordinator-register",
            Some(json!({ "jobId": job_id })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "complete");
    let job = app.state.jobs.get(&job_id).await.unwrap();
    assert!(
        job.announce_pending,
        "Ensue refused the unclaimed org's key"
    );

    // The owner claims the org with what the answer showed them.
    let claimed = http()
        .post(done["ensueClaimUrl"].as_str().unwrap())
        .json(&json!({ "verification_code": done["ensueVerificationCode"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(claimed.status().as_u16(), 200);

    // The announcement lands in the background.
    let memory = app
        .state
        .ports
        .ensue
        .memory(job.secrets.ensue_api_key.as_deref().unwrap())
        .unwrap();
    let did = job.agent_did.clone().unwrap();
    let key = format!("agent/{did}/endpoint");
    until("the agent to be announced", || async {
        matches!(memory.get(&key).await, Ok(Some(_)))
    })
    .await;
    assert_eq!(
        memory.get(&key).await.unwrap().as_deref(),
        job.endpoint.as_deref()
    );
    until("the job to stop saying the announce is pending", || async {
        !app.state.jobs.get(&job_id).await.unwrap().announce_pending
    })
    .await;
}
