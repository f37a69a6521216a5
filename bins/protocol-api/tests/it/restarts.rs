//! What a retry, a lost answer, a dead agent, an abandoned job or a restart
//! in the middle of a step leaves behind: the same job, the same org, no
//! registration of a dead agent, and no deployment left running.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use protocol_api::jobs::JobStatus;
use serde_json::{Value, json};

use crate::common::{LosesFirstAnswer, Options, TestApp, TestDeployer, until};

const KEY: &str = "0b6f6c1e-6a9f-4d63-9d57-5f3b7f6e2a10";

fn coordinator_request(name: &str) -> Value {
    json!({ "displayName": name, "nearAccount": "mydao.testnet", "minWorkers": 1, "maxWorkers": 5 })
}

async fn provision(app: &TestApp, path: &str, body: Value, key: &str) -> (StatusCode, bool, Value) {
    let (code, headers, body) = app
        .post_with_headers(path, body, &[("idempotency-key", key)])
        .await;
    let replayed = headers
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true");
    (code, replayed, body)
}

async fn all_jobs(app: &TestApp) -> Vec<protocol_api::jobs::Job> {
    app.database
        .jobs()
        .in_status(JobStatus::ALL.to_vec())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_gets_the_same_job_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // The "CVMs" outlive the server, as real ones do.
    let deployer = TestDeployer::healthy();
    let app = TestApp::start(dir.path(), deployer.clone(), Options::default()).await;
    let path = "/api/provision/coordinator";
    let (code, replayed, first) =
        provision(&app, path, coordinator_request("Keyed DAO"), KEY).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{first}");
    assert!(!replayed);
    let job_id = first["jobId"].as_str().unwrap().to_owned();

    // The same request, spelled differently, is the same request.
    let respelled = json!({ "maxWorkers": 5, "minWorkers": 1, "nearAccount": " mydao.testnet", "displayName": "Keyed DAO  " });
    let (code, replayed, again) = provision(&app, path, respelled, KEY).await;
    assert_eq!((code, replayed), (StatusCode::ACCEPTED, true), "{again}");
    assert_eq!(again, first, "the same answer");

    // Another request under the key is refused, and starts nothing.
    let (code, _, refused) = provision(&app, path, coordinator_request("Other DAO"), KEY).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{refused}"
    );
    assert!(!refused.to_string().contains(&job_id), "no job id leaks");
    assert_eq!(all_jobs(&app).await.len(), 1);

    // The key is durable: a restarted server answers the retry the same way.
    let ready = app
        .wait_for(&job_id, &["awaiting_near_signature", "failed"])
        .await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    drop(app);
    let restarted = TestApp::start(dir.path(), deployer, Options::default()).await;
    let (code, replayed, after) =
        provision(&restarted, path, coordinator_request("Keyed DAO"), KEY).await;
    assert_eq!((code, replayed), (StatusCode::ACCEPTED, true), "{after}");
    assert_eq!(after["jobId"], job_id);
    assert_eq!(all_jobs(&restarted).await.len(), 1);

    // A worker's key works the same way, and a different coordinator is a
    // different request.
    let (code, done) = restarted
        .call(
            "POST",
            "/api/provision/coordinator-register",
            Some(json!({ "jobId": job_id })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{done}");
    let worker = json!({ "coordinatorDid": ready["coordinatorDid"], "displayName": "Keyed Worker", "nearAccount": "alice.testnet" });
    let worker_key = "worker-key-0123456789abcdef";
    let (code, replayed, first_worker) = provision(
        &restarted,
        "/api/provision/worker",
        worker.clone(),
        worker_key,
    )
    .await;
    assert_eq!(
        (code, replayed),
        (StatusCode::ACCEPTED, false),
        "{first_worker}"
    );
    let (code, replayed, again_worker) =
        provision(&restarted, "/api/provision/worker", worker, worker_key).await;
    assert_eq!(
        (code, replayed),
        (StatusCode::ACCEPTED, true),
        "{again_worker}"
    );
    assert_eq!(again_worker["jobId"], first_worker["jobId"]);
    let other = json!({ "coordinatorDid": delibera_identity::Keypair::generate().did().to_string(), "displayName": "Keyed Worker", "nearAccount": "alice.testnet" });
    let (code, _, refused) =
        provision(&restarted, "/api/provision/worker", other, worker_key).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
}

#[tokio::test]
async fn a_guessable_or_malformed_idempotency_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let long = "k".repeat(256);
    for key in [
        "1",
        "short-key",
        "has a space in the key!",
        long.as_str(),
        "aaaaaaaaaaaaaaaaaaaaaaaa",
        "0000000000000000",
        "abababababababababababab",
        "12345671234567123456712",
    ] {
        let (code, _, body) = provision(
            &app,
            "/api/provision/coordinator",
            coordinator_request("Keyed DAO"),
            key,
        )
        .await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{key}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("Idempotency-Key"),
            "{body}"
        );
    }
    assert!(all_jobs(&app).await.is_empty());
}

/// Local mode registers orgs in the embedded store: a registration whose
/// answer was lost is repeated under the same name and adopts its org,
/// leaving no org behind.
#[tokio::test]
async fn an_embedded_ensue_org_whose_answer_was_lost_is_adopted_not_leaked() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        embedded_org_registration: true,
        wrap_ensue: Some(Box::new(LosesFirstAnswer::wrap)),
        ..Options::default()
    };
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), options).await;
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/coordinator",
            Some(coordinator_request("Lost Answer")),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let job_id = body["jobId"].as_str().unwrap();
    let ready = app
        .wait_for(job_id, &["awaiting_near_signature", "failed"])
        .await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    let org = ready["ensueOrgName"].as_str().unwrap();
    assert!(!org.ends_with("-2"), "the same name: {org}");
    assert_eq!(
        app.state.jobs.get(job_id).await.unwrap().ensue_org_attempts,
        1
    );
    let mut expected = vec![delibera_ensue_local::BOOTSTRAP_ORG, org];
    expected.sort_unstable();
    assert_eq!(
        app.ensue.store().org_names().await.unwrap(),
        expected,
        "exactly one org for the job"
    );
    // The key the job shows is the org's.
    let memory = app
        .state
        .ports
        .ensue
        .memory(ready["ensueApiKey"].as_str().unwrap())
        .unwrap();
    memory.upsert("probe", "ok").await.unwrap();
}

#[tokio::test]
async fn register_refuses_an_agent_that_fails_its_health_check() {
    let dir = tempfile::tempdir().unwrap();
    let deployer = TestDeployer::healthy();
    let app = TestApp::start(dir.path(), deployer.clone(), Options::default()).await;
    let (_, _, body) = provision(
        &app,
        "/api/provision/coordinator",
        coordinator_request("Dying DAO"),
        KEY,
    )
    .await;
    let job_id = body["jobId"].as_str().unwrap().to_owned();
    let ready = app
        .wait_for(&job_id, &["awaiting_near_signature", "failed"])
        .await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");

    deployer
        .healthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (code, refused) = app
        .call(
            "POST",
            "/api/provision/coordinator-register",
            Some(json!({ "jobId": job_id })),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("health check"),
        "{refused}"
    );
    let (_, status) = app
        .call("GET", &format!("/api/provision/status/{job_id}"), None)
        .await;
    assert_eq!(status["status"], "awaiting_near_signature");
    let did = ready["coordinatorDid"].as_str().unwrap();
    assert!(
        delibera_near::Registry::coordinator_by_did(app.registry.as_ref(), did)
            .await
            .unwrap()
            .is_none(),
        "nothing was registered"
    );

    // Healthy again: the same call completes.
    deployer
        .healthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (code, done) = app
        .call(
            "POST",
            "/api/provision/coordinator-register",
            Some(json!({ "jobId": job_id })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "complete");
}

#[tokio::test]
async fn a_job_nobody_registers_expires_and_its_deployment_is_torn_down() {
    let dir = tempfile::tempdir().unwrap();
    let deployer = TestDeployer::healthy();
    let options = Options {
        job_expiry: Duration::from_secs(1),
        ..Options::default()
    };
    let app = TestApp::start(dir.path(), deployer.clone(), options).await;
    app.state.jobs.resume_all().await.unwrap();
    let (_, _, body) = provision(
        &app,
        "/api/provision/coordinator",
        coordinator_request("Abandoned DAO"),
        KEY,
    )
    .await;
    let job_id = body["jobId"].as_str().unwrap().to_owned();
    let ready = app
        .wait_for(&job_id, &["awaiting_near_signature", "failed"])
        .await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    let cvm_id = ready["cvmId"].as_str().unwrap().to_owned();

    let expired = app.wait_for(&job_id, &["failed"]).await;
    let error = expired["error"].as_str().unwrap();
    assert!(
        error.starts_with("expired: the agent was not registered within 1s"),
        "{expired}"
    );
    assert!(error.contains("torn down"), "{expired}");
    assert!(
        expired.get("storachaPrivateKey").is_none(),
        "secrets hidden again"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !deployer.teardowns.lock().unwrap().contains(&cvm_id) {
        assert!(tokio::time::Instant::now() < deadline, "never torn down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let job = app.state.jobs.get(&job_id).await.unwrap();
    assert!(!job.deployment_teardown_pending);
    assert!(error.ends_with("provision again to start over"), "{error}");

    // Too late to register.
    let (code, refused) = app
        .call(
            "POST",
            "/api/provision/coordinator-register",
            Some(json!({ "jobId": job_id })),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("failed"),
        "{refused}"
    );
}

/// A kill after an expired job said so, before its deployment was torn
/// down: the sweeper, started again with the server, finishes the teardown.
#[tokio::test]
async fn a_teardown_cut_off_by_a_restart_is_finished_on_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let deployer = TestDeployer::healthy();
    let app = TestApp::start(dir.path(), deployer.clone(), Options::default()).await;
    let (_, _, body) = provision(
        &app,
        "/api/provision/coordinator",
        coordinator_request("Half Expired"),
        KEY,
    )
    .await;
    let job_id = body["jobId"].as_str().unwrap().to_owned();
    app.wait_for(&job_id, &["awaiting_near_signature"]).await;
    let mut job = app.state.jobs.get(&job_id).await.unwrap();
    job.status = JobStatus::Failed;
    job.error = Some("expired: … its deployment is being torn down".into());
    job.deployment_teardown_pending = true;
    app.database.jobs().save(&job).await.unwrap();
    let cvm_id = job.cvm_id.clone().unwrap();
    assert!(!deployer.teardowns.lock().unwrap().contains(&cvm_id));

    app.state.jobs.resume_all().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app
        .state
        .jobs
        .get(&job_id)
        .await
        .unwrap()
        .deployment_teardown_pending
    {
        assert!(tokio::time::Instant::now() < deadline, "never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(deployer.teardowns.lock().unwrap().contains(&cvm_id));
    let (_, status) = app
        .call("GET", &format!("/api/provision/status/{job_id}"), None)
        .await;
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("its deployment was torn down"),
        "{status}"
    );
}

/// An agent that never became healthy and whose teardown failed too: the
/// failed job says so and is marked, and the sweeper tears the agent down
/// later, keeping the job's error.
#[tokio::test]
async fn a_failed_teardown_after_the_health_gate_is_finished_by_the_sweeper() {
    let dir = tempfile::tempdir().unwrap();
    let deployer = TestDeployer::unhealthy();
    deployer
        .failing_teardowns
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let options = Options {
        health_timeout: Duration::from_millis(200),
        ..Options::default()
    };
    let app = TestApp::start(dir.path(), deployer.clone(), options).await;
    let (code, _, body) = provision(
        &app,
        "/api/provision/coordinator",
        coordinator_request("Never Healthy"),
        KEY,
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let job_id = body["jobId"].as_str().unwrap().to_owned();
    let failed = app.wait_for(&job_id, &["failed"]).await;
    let error = failed["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("tearing the deployment down also failed"),
        "{failed}"
    );
    let job = app.state.jobs.get(&job_id).await.unwrap();
    assert!(job.deployment_teardown_pending);
    let cvm_id = job.cvm_id.unwrap();

    deployer
        .failing_teardowns
        .store(false, std::sync::atomic::Ordering::SeqCst);
    app.state.jobs.expire_due().await.unwrap();
    assert!(deployer.teardowns.lock().unwrap().contains(&cvm_id));
    let job = app.state.jobs.get(&job_id).await.unwrap();
    assert!(!job.deployment_teardown_pending);
    assert_eq!(
        job.error.as_deref(),
        Some(error.as_str()),
        "its error is kept"
    );
}

/// Provisions a coordinator on `app`, whose deployer fails each deploy
/// after making its deployment (see `TestDeployer::leaves_behind`), and
/// returns the job's id once it has failed.
async fn failed_by_a_deploy_that_left_one_behind(app: &TestApp, name: &str) -> String {
    app.deployer.leaves_behind.store(true, Ordering::SeqCst);
    let (code, _, body) = provision(
        app,
        "/api/provision/coordinator",
        coordinator_request(name),
        KEY,
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let job_id = body["jobId"].as_str().unwrap().to_owned();
    let failed = app.wait_for(&job_id, &["failed"]).await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("the commit was never answered"), "{failed}");
    assert!(error.contains("is being torn down"), "{failed}");
    job_id
}

/// Sweeps once, and checks that the sweep tore the job's deployment down
/// and cleared its mark.
async fn a_sweep_tears_it_down(app: &TestApp, job_id: &str) {
    app.state.jobs.expire_due().await.unwrap();
    assert_eq!(*app.deployer.teardowns.lock().unwrap(), ["test-cvm-0"]);
    let job = app.state.jobs.get(job_id).await.unwrap();
    assert!(!job.deployment_teardown_pending);
}

/// A deploy that failed after it may have made its deployment (the
/// commit's answer was lost): the failed job is marked, and its deployment
/// is found by its name and torn down at once.
#[tokio::test]
async fn a_deployment_a_failed_deploy_left_behind_is_torn_down_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let job_id = failed_by_a_deploy_that_left_one_behind(&app, "Lost Commit").await;
    until("the deployment to be torn down", || async {
        app.deployer
            .teardowns
            .lock()
            .unwrap()
            .contains(&"test-cvm-0".to_owned())
    })
    .await;
    // The flag is cleared by the save that follows the teardown.
    until("the job's mark to be cleared", || async {
        !app.state
            .jobs
            .get(&job_id)
            .await
            .unwrap()
            .deployment_teardown_pending
    })
    .await;
    let job = app.state.jobs.get(&job_id).await.unwrap();
    assert!(job.cvm_id.is_none(), "its id was never known");
}

/// The same, with the backend still failing when the job fails: the job
/// stays marked, and a later sweep tears the deployment down by name.
#[tokio::test]
async fn a_left_behind_deployment_whose_teardown_failed_is_torn_down_later() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    app.deployer.failing_teardowns.store(true, Ordering::SeqCst);
    let job_id = failed_by_a_deploy_that_left_one_behind(&app, "Lost Commit Twice").await;
    assert!(
        app.state
            .jobs
            .get(&job_id)
            .await
            .unwrap()
            .deployment_teardown_pending
    );
    assert!(app.deployer.teardowns.lock().unwrap().is_empty());

    app.deployer
        .failing_teardowns
        .store(false, Ordering::SeqCst);
    a_sweep_tears_it_down(&app, &job_id).await;
}

/// A deployment left behind that the backend lists only later: a sweep
/// that finds nothing under the name keeps the job marked, and a later one
/// tears it down once it is listed.
#[tokio::test]
async fn a_left_behind_deployment_listed_only_later_is_still_torn_down() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    app.deployer
        .unlisted_left_behind
        .store(true, Ordering::SeqCst);
    let job_id = failed_by_a_deploy_that_left_one_behind(&app, "Listed Late").await;

    app.state.jobs.expire_due().await.unwrap();
    assert!(app.deployer.teardowns.lock().unwrap().is_empty());
    let job = app.state.jobs.get(&job_id).await.unwrap();
    assert!(job.deployment_teardown_pending, "still looked for");

    app.deployer.list_unlisted();
    a_sweep_tears_it_down(&app, &job_id).await;
}
