//! Servers on one PostgreSQL database: each accepts jobs, answers for every
//! job, and drives the jobs it holds the lease of; when one dies, another
//! claims its jobs once their leases run out and carries each on from its
//! last committed step without deploying anything twice.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use futures_util::FutureExt;
use serde_json::{Value, json};

use crate::common::{GateState, Holds, Options, TestApp, TestDeployer, until, within};
use crate::store::{TEST_JOB_LEASE, TestDb};

fn coordinator_request(n: usize) -> Value {
    json!({ "displayName": format!("Replica DAO {n}"), "nearAccount": "mydao.testnet", "minWorkers": 1, "maxWorkers": 5 })
}

/// Jobs each replica accepts before the first is killed.
const BEFORE_THE_KILL: usize = 20;
/// Jobs the survivor accepts after it.
const AFTER_THE_KILL: usize = 10;

/// A replica on `database`, its deployments made by a healthy deployer.
async fn replica(dir: &std::path::Path, database: protocol_api::store::Database) -> TestApp {
    TestApp::start(
        dir,
        TestDeployer::healthy(),
        Options {
            database: Some(database),
            ..Options::default()
        },
    )
    .await
}

async fn provision(app: &TestApp, n: usize) -> String {
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/coordinator",
            Some(coordinator_request(n)),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    body["jobId"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_replica_drives_its_jobs_and_a_dead_ones_are_carried_on_without_deploying_twice() {
    let Some(db) = TestDb::postgres(
        "each_replica_drives_its_jobs_and_a_dead_ones_are_carried_on_without_deploying_twice",
    )
    .await
    else {
        return;
    };
    // The "CVMs" outlive the replicas, as real ones do; each deployment the
    // first replica asks for is made, and then its answer is lost: it hangs.
    let deployer = TestDeployer::healthy();
    deployer.hang_after_deploy.store(true, Ordering::SeqCst);
    let (dir_first, dir_second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    // The first replica in a runtime of its own: shutting that runtime down
    // ends every task it runs and closes its connections, as a kill does.
    let first_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (first_jobs_tx, first_jobs) = tokio::sync::oneshot::channel();
    first_runtime.spawn({
        let (deployer, database) = (deployer.clone(), db.open().await);
        let data_dir = dir_first.path().to_owned();
        async move {
            let options = Options {
                database: Some(database),
                ..Options::default()
            };
            let first = TestApp::start(&data_dir, deployer, options).await;
            first.state.jobs.start_claiming();
            let mut ids = Vec::new();
            for n in 0..BEFORE_THE_KILL {
                ids.push(provision(&first, n).await);
            }
            let _ = first_jobs_tx.send(ids);
            // Lives, renewing its leases, until its runtime is shut down.
            std::future::pending::<()>().await;
        }
    });
    let first_ids = within("the first replica to accept its jobs", first_jobs)
        .await
        .unwrap();
    until("the first replica to deploy each of its jobs", || async {
        deployer.deploys.load(Ordering::SeqCst) == BEFORE_THE_KILL
    })
    .await;
    deployer.hang_after_deploy.store(false, Ordering::SeqCst);

    // The second replica drives the jobs it accepts, beside the first.
    let second = TestApp::start(
        dir_second.path(),
        deployer.clone(),
        Options {
            database: Some(db.open().await),
            ..Options::default()
        },
    )
    .await;
    second.state.jobs.start_claiming();
    let mut second_ids = Vec::new();
    for n in BEFORE_THE_KILL..2 * BEFORE_THE_KILL {
        second_ids.push(provision(&second, n).await);
    }
    for id in &second_ids {
        second.wait_for(id, &["awaiting_near_signature"]).await;
    }
    // Longer than a lease: the first replica's jobs stay its own, as it
    // renews their leases, and the second shows them as they stand.
    tokio::time::sleep(TEST_JOB_LEASE + Duration::from_millis(500)).await;
    let mut dids = Vec::new();
    for id in &first_ids {
        let (_, shown) = second
            .call("GET", &format!("/api/provision/status/{id}"), None)
            .await;
        assert_eq!(shown["status"], "deploying_phala", "{shown}");
        dids.push(shown["coordinatorDid"].as_str().unwrap().to_owned());
    }
    assert_eq!(second.state.jobs.jobs_worked_on(), 0);

    first_runtime.shutdown_background();
    let mut ids = first_ids;
    ids.extend(second_ids);
    for n in 2 * BEFORE_THE_KILL..2 * BEFORE_THE_KILL + AFTER_THE_KILL {
        ids.push(provision(&second, n).await);
    }
    for (n, id) in ids.iter().enumerate() {
        let done = second
            .wait_for(id, &["awaiting_near_signature", "failed"])
            .await;
        assert_eq!(done["status"], "awaiting_near_signature", "{done}");
        if let Some(before) = dids.get(n) {
            assert_eq!(
                done["coordinatorDid"],
                before.as_str(),
                "the agent's key is kept"
            );
        }
    }

    // One deployment per job: the ones the dead replica made were adopted.
    let specs = deployer.specs.lock().unwrap().clone();
    assert_eq!(specs.len(), ids.len(), "every job deployed exactly once");
    let names: HashSet<_> = specs.iter().map(|spec| spec.name.to_string()).collect();
    assert_eq!(names.len(), ids.len());
    let deployed_dids: HashSet<String> = specs
        .iter()
        .map(|spec| spec.env.did().to_string())
        .collect();
    for did in &dids {
        assert!(
            deployed_dids.contains(did),
            "the deployed agent is the job's"
        );
    }
}

/// A registration cut off by the death of the replica that took the call
/// is finished by another replica once its lease runs out, instead of
/// staying `registering` for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_registration_left_by_a_dead_replica_is_finished_by_another() {
    let Some(db) =
        TestDb::postgres("a_registration_left_by_a_dead_replica_is_finished_by_another").await
    else {
        return;
    };
    let deployer = TestDeployer::healthy();
    let (dir_survivor, dir_other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let survivor = TestApp::start(
        dir_survivor.path(),
        deployer.clone(),
        Options {
            database: Some(db.open().await),
            ..Options::default()
        },
    )
    .await;
    survivor.state.jobs.start_claiming();
    let id = provision(&survivor, 0).await;
    survivor.wait_for(&id, &["awaiting_near_signature"]).await;

    // The other replica takes the registration call and dies inside it.
    let other_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    other_runtime.spawn({
        let (deployer, database) = (deployer.clone(), db.open().await);
        let data_dir = dir_other.path().to_owned();
        let id = id.clone();
        async move {
            let holds = Holds::open();
            holds.registration.set(GateState::Closed);
            let options = Options {
                database: Some(database),
                holds,
                ..Options::default()
            };
            let other = TestApp::start(&data_dir, deployer, options).await;
            other.state.jobs.start_claiming();
            let body = json!({ "jobId": id, "contractAddress": "mydao.coord-factory.agents-coordinator.testnet" });
            other
                .call("POST", "/api/provision/coordinator-register", Some(body))
                .await;
        }
    });
    survivor.wait_for(&id, &["registering"]).await;
    // Past a lease: the live replica renews it, so it is not taken over.
    tokio::time::sleep(TEST_JOB_LEASE + Duration::from_millis(500)).await;
    assert_eq!(survivor.state.jobs.jobs_worked_on(), 0);
    other_runtime.shutdown_background();

    let done = survivor
        .wait_for(&id, &["complete", "awaiting_near_signature"])
        .await;
    assert_eq!(done["status"], "complete", "{done}");
    let did = done["coordinatorDid"].as_str().unwrap();
    assert!(
        delibera_near::Registry::coordinator_by_did(&*survivor.registry, did)
            .await
            .unwrap()
            .is_some(),
        "the survivor's registrar registered it"
    );
}

/// A replica whose lease of a job another replica took stops working on
/// it at once: the call it was waiting on never goes out, and the job is
/// left as the new holder writes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_stops_working_on_a_job_whose_lease_another_took() {
    let Some(db) =
        TestDb::postgres("a_replica_stops_working_on_a_job_whose_lease_another_took").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let deployer = TestDeployer::healthy();
    let (app, holds, id) = at_the_deploy_gate(dir.path(), db.open().await, &deployer).await;
    assert_eq!(app.state.jobs.jobs_worked_on(), 1);

    db.execute(&format!(
        "UPDATE jobs SET leased_by = 'another-replica', leased_until = now() + interval '1 hour'
         WHERE id = '{id}'"
    ))
    .await;
    until("the replica to stop working on the job", || async {
        app.state.jobs.jobs_worked_on() == 0
    })
    .await;
    holds.deploy.set(GateState::Open);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        deployer.deploys.load(Ordering::SeqCst),
        0,
        "deployed after losing the lease"
    );
    let (_, shown) = app
        .call("GET", &format!("/api/provision/status/{id}"), None)
        .await;
    assert_eq!(shown["status"], "deploying_phala", "{shown}");
}

/// A replica on `database` whose deployment calls wait at a closed gate,
/// claiming jobs, with a job accepted and at its deployment step.
async fn at_the_deploy_gate(
    dir: &std::path::Path,
    database: protocol_api::store::Database,
    deployer: &std::sync::Arc<TestDeployer>,
) -> (TestApp, Holds, String) {
    let holds = Holds::open();
    holds.deploy.set(GateState::Closed);
    let app = TestApp::start(
        dir,
        deployer.clone(),
        Options {
            database: Some(database),
            holds: holds.clone(),
            ..Options::default()
        },
    )
    .await;
    app.state.jobs.start_claiming();
    let id = provision(&app, 0).await;
    app.wait_for(&id, &["deploying_phala"]).await;
    (app, holds, id)
}

/// Two replicas on `db`: one [`at_the_deploy_gate`], and one that runs
/// freely (not claiming yet).
async fn leaving_and_staying(
    db: &TestDb,
    dirs: &(tempfile::TempDir, tempfile::TempDir),
    deployer: &std::sync::Arc<TestDeployer>,
) -> (TestApp, Holds, TestApp, String) {
    let (leaving, holds, id) = at_the_deploy_gate(dirs.0.path(), db.open().await, deployer).await;
    let staying = TestApp::start(
        dirs.1.path(),
        deployer.clone(),
        Options {
            database: Some(db.open().await),
            ..Options::default()
        },
    )
    .await;
    (leaving, holds, staying, id)
}

/// A replica shutting down lets the step in hand finish, then gives the
/// job's lease up, so another replica carries the job on at once from that
/// step, not once the lease runs out; nothing is done twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_shutting_down_hands_its_jobs_over_at_the_end_of_their_step() {
    let Some(db) =
        TestDb::postgres("a_replica_shutting_down_hands_its_jobs_over_at_the_end_of_their_step")
            .await
    else {
        return;
    };
    let deployer = TestDeployer::healthy();
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leaving, holds, staying, id) = leaving_and_staying(&db, &dirs, &deployer).await;
    let job = uuid::Uuid::parse_str(&id).unwrap();

    // Its first poll stops the runner before the step in hand can end;
    // spawned instead, it could run only after the driver began the next.
    let mut stopping = Box::pin(leaving.state.jobs.stop_working());
    assert!(
        (&mut stopping).now_or_never().is_none(),
        "it waits for the step in hand"
    );
    holds.deploy.set(GateState::Open);
    let handed = within("the replica to stop working", stopping)
        .await
        .unwrap();
    assert_eq!(handed, 1);
    let (_, shown) = leaving
        .call("GET", &format!("/api/provision/status/{id}"), None)
        .await;
    assert_eq!(
        shown["status"], "waiting_for_url",
        "the step in hand finished: {shown}"
    );
    assert_eq!(db.lease_holder(job).await, None);

    staying.state.jobs.start_claiming();
    let started = std::time::Instant::now();
    let done = staying
        .wait_for(&id, &["awaiting_near_signature", "failed"])
        .await;
    assert_eq!(done["status"], "awaiting_near_signature", "{done}");
    assert!(started.elapsed() < TEST_JOB_LEASE, "waited for the lease");
    assert_eq!(deployer.deploys.load(Ordering::SeqCst), 1);
}

/// A step that does not end while a replica shuts down is aborted, and its
/// lease left to run out, as after a kill: a call in flight may still land,
/// so no replica may start the step again at once. Then another replica
/// carries the job on, and the aborted call never went out.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_shutting_down_aborts_a_step_that_does_not_end_and_keeps_its_lease() {
    let Some(db) = TestDb::postgres(
        "a_replica_shutting_down_aborts_a_step_that_does_not_end_and_keeps_its_lease",
    )
    .await
    else {
        return;
    };
    let deployer = TestDeployer::healthy();
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leaving, holds, staying, id) = leaving_and_staying(&db, &dirs, &deployer).await;
    let job = uuid::Uuid::parse_str(&id).unwrap();
    let holder = db.lease_holder(job).await;
    assert!(holder.is_some());

    assert_eq!(leaving.state.jobs.stop_working().await.unwrap(), 0);
    assert_eq!(leaving.state.jobs.jobs_worked_on(), 0);
    assert_eq!(
        db.lease_holder(job).await,
        holder,
        "the lease runs out by itself"
    );
    holds.deploy.set(GateState::Open);

    staying.state.jobs.start_claiming();
    let done = staying
        .wait_for(&id, &["awaiting_near_signature", "failed"])
        .await;
    assert_eq!(done["status"], "awaiting_near_signature", "{done}");
    assert_eq!(
        deployer.deploys.load(Ordering::SeqCst),
        1,
        "the aborted call went out"
    );
}

/// A replica that cannot renew its leases (its database refuses writes)
/// stops working on its jobs before they could run out, so a replica
/// claiming one never finds it still at work; once it can write again, it
/// claims the job like any replica and carries it on, deploying once.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_cannot_renew_stops_before_its_leases_run_out() {
    let Some(db) =
        TestDb::postgres("a_replica_that_cannot_renew_stops_before_its_leases_run_out").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let deployer = TestDeployer::healthy();
    let database = db.open().await;
    let (app, holds, id) = at_the_deploy_gate(dir.path(), database.clone(), &deployer).await;

    database.simulate_full_disk(true);
    let refused_at = std::time::Instant::now();
    until("the replica to stop working on its job", || async {
        app.state.jobs.jobs_worked_on() == 0
    })
    .await;
    assert!(
        refused_at.elapsed() < TEST_JOB_LEASE,
        "stopped only after {:?}: its lease may have run out first",
        refused_at.elapsed()
    );
    holds.deploy.set(GateState::Open);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        deployer.deploys.load(Ordering::SeqCst),
        0,
        "deployed without a lease"
    );

    database.simulate_full_disk(false);
    let done = app
        .wait_for(&id, &["awaiting_near_signature", "failed"])
        .await;
    assert_eq!(done["status"], "awaiting_near_signature", "{done}");
    assert_eq!(deployer.deploys.load(Ordering::SeqCst), 1);
}

/// A hosted Ensue org made while the database is down for longer than a
/// lease: the run holding its key (shown once) is not stopped with the
/// others, and stores it when the database is back, so the job keeps that
/// org instead of registering a second one.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_ensue_org_key_outlives_a_database_outage_longer_than_a_lease() {
    let Some(db) =
        TestDb::postgres("a_new_ensue_org_key_outlives_a_database_outage_longer_than_a_lease")
            .await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let database = db.open().await;
    let holds = Holds::open();
    holds.ensue.set(GateState::Closed);
    let app = TestApp::start(
        dir.path(),
        TestDeployer::healthy(),
        Options {
            database: Some(database.clone()),
            holds: holds.clone(),
            ..Options::default()
        },
    )
    .await;
    app.state.jobs.start_claiming();
    let id = provision(&app, 0).await;
    until("the first org attempt to be recorded", || async {
        app.state.jobs.get(&id).await.unwrap().ensue_org_attempts == 1
    })
    .await;

    database.simulate_full_disk(true);
    holds.ensue.set(GateState::Open);
    // Long enough for the lease keeper to give up and the lease to run out.
    tokio::time::sleep(TEST_JOB_LEASE + Duration::from_millis(500)).await;
    assert_eq!(
        app.state.jobs.jobs_worked_on(),
        1,
        "the run holding the key goes on"
    );
    database.simulate_full_disk(false);

    let ready = app
        .wait_for(&id, &["awaiting_near_signature", "failed"])
        .await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    app.job_with_its_one_org(&id).await;
}

/// A `protocol-api` binary in production mode on the test's PostgreSQL
/// database; its outside services are unreachable (nothing here calls them).
struct Replica {
    child: std::process::Child,
    log: std::path::PathBuf,
    api: String,
}

impl Replica {
    fn start(dir: &std::path::Path, name: &str, env: &[(&str, String)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_protocol-api"))
            // Only what is set here: the caller's environment must not leak in.
            .env_clear()
            .envs(env.iter().map(|(name, value)| (name, value)))
            .env("DATA_DIR", dir.join(name))
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(file.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(file))
            .spawn()
            .unwrap();
        Self {
            child,
            log,
            api: format!("http://127.0.0.1:{port}"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log says `line`, failing with the log if the
    /// process exits first.
    async fn wait_for_log(&mut self, line: &str) {
        within(&format!("the replica to log {line:?}"), async {
            loop {
                if self.log().contains(line) {
                    return;
                }
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!("the replica exited ({status}):\n{}", self.log());
                }
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
        })
        .await;
    }

    async fn status_of(&self, job_id: &str) -> (u16, Value) {
        let response = reqwest::get(format!("{}/api/provision/status/{job_id}", self.api))
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_binaries_share_jobs_and_hand_the_leader_lock_over() {
    use delibera_identity::Keypair;
    use delibera_storacha::Delegator;

    const KEY_HEX: &str = "7265706c6963612d746573742d7365616c696e672d6b65792d30313233343536";
    const PINNED: &str = "ghcr.io/delibera/delibera-agent@sha256:3333333333333333333333333333333333333333333333333333333333333333";
    let Some(db) =
        TestDb::postgres("replica_binaries_share_jobs_and_hand_the_leader_lock_over").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let space = delibera_storacha::LocalSpaceDelegator::open(dir.path().join("space")).unwrap();
    let agent = Keypair::generate();
    let proof = space
        .delegate_space_access(&agent.did())
        .await
        .unwrap()
        .proof;
    // Port 1 on loopback: no outside service answers, and none is called.
    let nowhere = "http://127.0.0.1:1";
    let env = [
        ("DELIBERA_MODE", "production".to_owned()),
        ("DATABASE_URL", db.url().unwrap().to_owned()),
        ("PROTOCOL_API_SECRET_KEY", KEY_HEX.to_owned()),
        ("PHALA_API_KEY", "phak_x".to_owned()),
        ("PHALA_CLOUD_API_PREFIX", format!("{nowhere}/api/v1")),
        ("ENSUE_URL", format!("{nowhere}/")),
        ("ENSUE_API_KEY", "lmn_x".to_owned()),
        ("NEAR_RPC_URL", format!("{nowhere}/")),
        ("NEAR_ACCOUNT_ID", "server.testnet".to_owned()),
        (
            "NEAR_PRIVATE_KEY",
            Keypair::generate().to_near_secret_string().to_string(),
        ),
        ("REGISTRY_CONTRACT_ID", "registry.testnet".to_owned()),
        ("COORDINATOR_CONTRACT_ID", "coordinator.testnet".to_owned()),
        (
            "STORACHA_AGENT_PRIVATE_KEY",
            agent.to_ucanto_string().to_string(),
        ),
        ("STORACHA_DELEGATION_PROOF", proof),
        ("WORKER_IMAGE", PINNED.to_owned()),
        ("COORDINATOR_IMAGE", PINNED.to_owned()),
    ];

    let mut first = Replica::start(dir.path(), "first", &env);
    first.wait_for_log("this replica leads").await;
    let mut second = Replica::start(dir.path(), "second", &env);
    second.wait_for_log("waiting for the leader lock").await;
    second.wait_for_log("Delibera Protocol API listening").await;
    assert!(!second.log().contains("this replica leads"));

    // A job one replica holds at the wallet step is shown, secrets and all,
    // by both.
    let key: [u8; 32] = hex::decode(KEY_HEX).unwrap().try_into().unwrap();
    let mut job = crate::store::new_job();
    job.status = protocol_api::jobs::JobStatus::AwaitingNearSignature;
    job.secrets.storacha_private_key = Some("MgCYsecret".into());
    db.open_with(&key)
        .await
        .unwrap()
        .jobs()
        .insert(&job)
        .await
        .unwrap();
    let id = job.id.to_string();
    let (shown_first, shown_second) = (first.status_of(&id).await, second.status_of(&id).await);
    assert_eq!(shown_first.0, 200, "{}", shown_first.1);
    assert_eq!(shown_first, shown_second);
    assert_eq!(shown_first.1["storachaPrivateKey"], "MgCYsecret");

    // SIGKILL: the survivor takes the leader lock over.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    second.wait_for_log("this replica leads").await;
    assert_eq!(second.status_of(&id).await, shown_first);

    // A leader that loses its lock stops, saying why, rather than sweep
    // beside the replica that leads next.
    assert_eq!(db.end_leader_lock_session().await, 1);
    let status = within("the leader that lost its lock to stop", async {
        loop {
            if let Some(status) = second.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    })
    .await;
    assert!(!status.success());
    assert!(
        second.log().contains("lost the leader lock"),
        "{}",
        second.log()
    );
}

/// Only the leader judges stored records: a replica that starts while
/// another leads (an older release during a rolling upgrade, say) leaves a
/// record it cannot read alone, even once it claims it; it fails it once
/// it leads.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_fails_an_unreadable_record_only_once_it_leads() {
    let Some(db) =
        TestDb::postgres("a_replica_fails_an_unreadable_record_only_once_it_leads").await
    else {
        return;
    };
    // Another replica holds the leader lock (and drives nothing here).
    let holder = db.open().await;
    let held = holder
        .try_leader_lock()
        .await
        .unwrap()
        .expect("a free lock");
    let mut job = crate::store::new_job();
    job.status = protocol_api::jobs::JobStatus::WaitingForUrl;
    job.cvm_id = Some("cvm-1".into());
    holder.jobs().insert(&job).await.unwrap();
    // Its secrets sealed by another key: unreadable, its fields intact.
    db.set_secrets(
        job.id,
        &protocol_api::seal::SecretBox::from_key(&[9; 32]).seal(b"{}"),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let standby = replica(dir.path(), db.open().await).await;
    standby.state.jobs.start_claiming();
    let leading = tokio::spawn({
        let jobs = standby.state.jobs.clone();
        async move { jobs.lead().await }
    });
    // Past the lease its first holder took: the standby claims it, and
    // cannot read it.
    let first_holder = db.lease_holder(job.id).await;
    db.expire_leases().await;
    until("the standby to claim the job", || async {
        db.lease_holder(job.id).await != first_holder
    })
    .await;
    let status = format!("/api/provision/status/{}", job.id);
    let (_, shown) = standby.call("GET", &status, None).await;
    assert_ne!(shown["status"], "failed", "failed by a standby: {shown}");

    drop(held);
    let (_standby_lock, _) = within("the standby to lead", leading)
        .await
        .unwrap()
        .unwrap();
    let (code, failed) = standby.call("GET", &status, None).await;
    assert_eq!(code, StatusCode::OK, "{failed}");
    assert_eq!(failed["status"], "failed", "{failed}");
}

/// A store fault just as a replica takes the leader lock is waited out:
/// the replica leads (it does not stop, which would drop its requests), and
/// its first sweeps run once the store takes writes again.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_leader_waits_out_a_store_fault_before_its_first_sweeps() {
    let Some(db) =
        TestDb::postgres("a_new_leader_waits_out_a_store_fault_before_its_first_sweeps").await
    else {
        return;
    };
    let mut job = crate::store::new_job();
    job.status = protocol_api::jobs::JobStatus::WaitingForUrl;
    db.open().await.jobs().insert(&job).await.unwrap();
    db.set_secrets(
        job.id,
        &protocol_api::seal::SecretBox::from_key(&[9; 32]).seal(b"{}"),
    )
    .await;
    // Its inserting replica is gone: a live lease would keep it unjudged.
    db.expire_leases().await;
    // This one another replica still holds: it may read what this one
    // cannot (a newer release during a rolling upgrade).
    let mut held = crate::store::new_job();
    held.status = protocol_api::jobs::JobStatus::WaitingForUrl;
    let holder = db.open().await;
    holder.jobs().insert(&held).await.unwrap();
    db.set_secrets(
        held.id,
        &protocol_api::seal::SecretBox::from_key(&[9; 32]).seal(b"{}"),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let database = db.open().await;
    let leader = replica(dir.path(), database.clone()).await;
    let refused_before = database.simulated_refusals();
    database.simulate_full_disk_briefly(2);
    let (_lock, _) = within("the replica to lead", leader.state.jobs.lead())
        .await
        .unwrap();
    assert_eq!(database.simulated_refusals(), refused_before + 2);
    let (_, shown) = leader
        .call("GET", &format!("/api/provision/status/{}", job.id), None)
        .await;
    assert_eq!(
        shown["status"], "failed",
        "judged once the store was back: {shown}"
    );
    let (_, held) = leader
        .call("GET", &format!("/api/provision/status/{}", held.id), None)
        .await;
    assert_ne!(
        held["status"], "failed",
        "failed under another's lease: {held}"
    );
}

/// The registration's last write commits and its answer is lost (the
/// connection drops after `COMMIT`): the retry finds the job complete, as
/// written, and the registration answers so, not with a conflict.
#[tokio::test(flavor = "multi_thread")]
async fn a_registration_whose_last_commit_lost_its_answer_still_completes() {
    let Some(db) =
        TestDb::postgres("a_registration_whose_last_commit_lost_its_answer_still_completes").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let database = db.open().await;
    let app = replica(dir.path(), database.clone()).await;
    app.state.jobs.start_claiming();
    let id = provision(&app, 0).await;
    let ready = app
        .wait_for(&id, &["awaiting_near_signature", "failed"])
        .await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");

    database.simulate_lost_answer_to(protocol_api::jobs::JobStatus::Complete);
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/coordinator-register",
            Some(json!({ "jobId": id })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (_, shown) = app
        .call("GET", &format!("/api/provision/status/{id}"), None)
        .await;
    assert_eq!(shown["status"], "complete", "{shown}");
}

/// A wallet-signed request is good for five minutes on any replica: its
/// nonce, spent by the replica that accepted it, is a replay on every other,
/// and one a failing store could not record is not spent at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_wallet_signed_request_is_accepted_by_one_replica_only() {
    let Some(db) =
        TestDb::postgres("a_wallet_signed_request_is_accepted_by_one_replica_only").await
    else {
        return;
    };
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut replicas = Vec::new();
    for dir in [&dirs.0, &dirs.1] {
        replicas.push(replica(dir.path(), db.open().await).await);
    }
    // The roster's owner holds a key each replica's chain knows.
    let owner = delibera_identity::Keypair::from_seed(&[7; 32]);
    let account =
        delibera_near::AccountId::parse(protocol_api::compose::LOCAL_SERVER_ACCOUNT).unwrap();
    for replica in &replicas {
        replica
            .registry
            .add_access_key(
                &account,
                &owner.public_key(),
                delibera_near::KeyPermission::FullAccess,
            )
            .unwrap();
    }
    let body = json!({ "workerId": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK" })
        .to_string();
    let now = chrono::Utc::now().timestamp_millis() as u64;
    let message =
        delibera_near::SignedRequest::new("POST", "/api/workers/register", body.as_bytes(), now)
            .message();
    let authorization = delibera_near::SignedMessage::sign(
        &owner,
        account,
        message,
        [9; 32],
        "delibera-protocol-api",
    )
    .to_authorization();
    let send = |replica: &TestApp| {
        let request = axum::http::Request::builder()
            .method("POST")
            .uri("/api/workers/register")
            .header("authorization", authorization.as_str())
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.clone()))
            .unwrap();
        let api = replica.api.clone();
        async move { api.send(request).await }
    };
    // A store that refuses the nonce's write for now spends it nowhere: the
    // same request, sent again, is accepted.
    replicas[0].database.simulate_full_disk_briefly(1);
    let (code, answer) = send(&replicas[0]).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let (code, answer) = send(&replicas[0]).await;
    assert!(code.is_success(), "{code} {answer}");
    let (code, answer) = send(&replicas[1]).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("used before"),
        "{answer}"
    );
}
