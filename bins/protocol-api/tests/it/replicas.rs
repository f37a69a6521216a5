//! Two servers on one PostgreSQL database: both accept jobs and answer for
//! every job, one runs them, and when it dies the other takes over from each
//! job's last committed step without deploying anything twice.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::common::{GateState, Holds, Options, TestApp, TestDeployer, until, within};
use crate::store::TestDb;

fn coordinator_request(n: usize) -> Value {
    json!({ "displayName": format!("Replica DAO {n}"), "nearAccount": "mydao.testnet", "minWorkers": 1, "maxWorkers": 5 })
}

/// Jobs each replica accepts before the runner is killed.
const BEFORE_THE_KILL: usize = 20;
/// Jobs the survivor accepts after it.
const AFTER_THE_KILL: usize = 10;

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
async fn a_replica_that_dies_mid_deploy_is_replaced_and_no_job_is_deployed_twice() {
    let Some(db) =
        TestDb::postgres("a_replica_that_dies_mid_deploy_is_replaced_and_no_job_is_deployed_twice")
            .await
    else {
        return;
    };
    // The "CVMs" outlive the replicas, as real ones do; each deployment is
    // made, and then its answer is lost: the replica that asked hangs.
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
            let (_runner_lock, resumed) = first.state.jobs.lead().await.unwrap();
            assert_eq!(resumed, 0);
            let mut ids = Vec::new();
            for n in 0..BEFORE_THE_KILL {
                ids.push(provision(&first, n).await);
            }
            let _ = first_jobs_tx.send(ids);
            // Lives, holding the runner lock, until its runtime is shut down.
            std::future::pending::<()>().await;
        }
    });
    let mut ids = within("the first replica to accept its jobs", first_jobs)
        .await
        .unwrap();

    // The second replica serves and accepts jobs, waiting for the runner lock.
    let second = TestApp::start(
        dir_second.path(),
        deployer.clone(),
        Options {
            database: Some(db.open().await),
            ..Options::default()
        },
    )
    .await;
    let leading = tokio::spawn({
        let jobs = second.state.jobs.clone();
        async move { jobs.lead().await }
    });
    for n in BEFORE_THE_KILL..2 * BEFORE_THE_KILL {
        ids.push(provision(&second, n).await);
    }

    // The first replica runs every job, its own and the second's, up to the
    // deployment whose answer it never gets; the second shows them all.
    until("every job to be deployed by the first replica", || async {
        deployer.deploys.load(Ordering::SeqCst) == ids.len()
    })
    .await;
    let mut dids = Vec::new();
    for id in &ids {
        let shown = second.wait_for(id, &["deploying_phala"]).await;
        dids.push(shown["coordinatorDid"].as_str().unwrap().to_owned());
    }
    assert!(!leading.is_finished(), "only one replica runs jobs");

    first_runtime.shutdown_background();
    deployer.hang_after_deploy.store(false, Ordering::SeqCst);
    let (_runner_lock, resumed) = within("the second replica to take over", leading)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resumed, ids.len());
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
/// is finished by the replica that runs jobs once it is clearly abandoned,
/// instead of staying `registering` for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_registration_left_by_a_dead_replica_is_finished_by_the_runner() {
    let Some(db) =
        TestDb::postgres("a_registration_left_by_a_dead_replica_is_finished_by_the_runner").await
    else {
        return;
    };
    let deployer = TestDeployer::healthy();
    let (dir_runner, dir_other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let runner = TestApp::start(
        dir_runner.path(),
        deployer.clone(),
        Options {
            database: Some(db.open().await),
            ..Options::default()
        },
    )
    .await;
    let (_runner_lock, _) = runner.state.jobs.lead().await.unwrap();
    let id = provision(&runner, 0).await;
    runner.wait_for(&id, &["awaiting_near_signature"]).await;

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
            let body = json!({ "jobId": id, "contractAddress": "mydao.coord-factory.agents-coordinator.testnet" });
            other
                .call("POST", "/api/provision/coordinator-register", Some(body))
                .await;
        }
    });
    runner.wait_for(&id, &["registering"]).await;
    other_runtime.shutdown_background();

    let done = runner
        .wait_for(&id, &["complete", "awaiting_near_signature"])
        .await;
    assert_eq!(done["status"], "complete", "{done}");
    let did = done["coordinatorDid"].as_str().unwrap();
    assert!(
        delibera_near::Registry::coordinator_by_did(&*runner.registry, did)
            .await
            .unwrap()
            .is_some(),
        "the runner's registrar registered it"
    );
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
async fn replica_binaries_share_jobs_and_hand_the_runner_lock_over() {
    use delibera_identity::Keypair;
    use delibera_storacha::Delegator;

    const KEY_HEX: &str = "7265706c6963612d746573742d7365616c696e672d6b65792d30313233343536";
    const PINNED: &str = "ghcr.io/delibera/delibera-agent@sha256:3333333333333333333333333333333333333333333333333333333333333333";
    let Some(db) =
        TestDb::postgres("replica_binaries_share_jobs_and_hand_the_runner_lock_over").await
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
    first.wait_for_log("this process runs the jobs").await;
    let mut second = Replica::start(dir.path(), "second", &env);
    second.wait_for_log("waiting for the runner lock").await;
    second.wait_for_log("Delibera Protocol API listening").await;
    assert!(!second.log().contains("this process runs the jobs"));

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

    // SIGKILL: the survivor takes the runner lock over.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    second.wait_for_log("this process runs the jobs").await;
    assert_eq!(second.status_of(&id).await, shown_first);

    // A runner that loses its lock stops, saying why, rather than run jobs
    // beside the replica that would take them over.
    assert_eq!(db.end_runner_lock_session().await, 1);
    let status = within("the runner that lost its lock to stop", async {
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
        second.log().contains("lost the runner lock"),
        "{}",
        second.log()
    );
}

/// Only the runner judges stored records: a replica that starts while
/// another runs the jobs (an older release during a rolling upgrade, say)
/// leaves a record it cannot read alone; it fails it once it leads.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_fails_an_unreadable_record_only_once_it_runs_the_jobs() {
    let Some(db) =
        TestDb::postgres("a_standby_fails_an_unreadable_record_only_once_it_runs_the_jobs").await
    else {
        return;
    };
    // Another replica holds the runner lock (and drives nothing here).
    let holder = db.open().await;
    let held = holder
        .try_runner_lock()
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
    let standby = TestApp::start(
        dir.path(),
        TestDeployer::healthy(),
        Options {
            database: Some(db.open().await),
            ..Options::default()
        },
    )
    .await;
    let leading = tokio::spawn({
        let jobs = standby.state.jobs.clone();
        async move { jobs.lead().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
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
