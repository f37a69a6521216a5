//! Two servers on one PostgreSQL database: both accept jobs and answer for
//! every job, one runs them, and when it dies the other takes over from each
//! job's last committed step without deploying anything twice.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::common::{Options, TestApp, TestDeployer, until, within};
use crate::store::TestDb;

fn coordinator_request(n: usize) -> Value {
    json!({ "displayName": format!("Replica DAO {n}"), "nearAccount": "mydao.testnet", "minWorkers": 1, "maxWorkers": 5 })
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
            for n in 0..4 {
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
    for n in 4..8 {
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
    for n in 8..10 {
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
