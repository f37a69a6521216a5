//! Local mode's start-up after a crash, through `compose_local` over real
//! HTTP: journaled agents that no live job owns are removed, an agent
//! journaled before its job recorded it is adopted, and the embedded Ensue
//! never takes a port a journaled agent keeps.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use delibera_agent::{DeploymentJournal, JournalEntry};
use protocol_api::compose::{Composition, compose_local};
use protocol_api::config::Config;
use protocol_api::jobs::JobStatus;
use protocol_api::seal::SecretBox;
use protocol_api::store::Database;
use serde_json::{Value, json};

/// The key that seals the test server's secrets (given, not generated).
const SECRET_KEY: &str = "6b6579206f6620746865206c6f63616c2d726573746172742074657374732121";

fn config(data_dir: &Path, ensue_addr: SocketAddr) -> Config {
    Config::try_parse_from([
        "protocol-api",
        "--mode",
        "local",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--ensue-local-addr",
        &ensue_addr.to_string(),
        "--secret-key",
        SECRET_KEY,
        "--admin-token",
        "local-restarts-admin-token",
    ])
    .unwrap()
}

fn database(data_dir: &Path) -> Database {
    let secrets = SecretBox::open_or_create(data_dir, Some(SECRET_KEY), None).unwrap();
    Database::open(&data_dir.join("jobs.sqlite"), secrets).unwrap()
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts the server as `main` does; returns its base URL and what `GET /` says.
async fn start(config: &Config) -> anyhow::Result<(String, Value)> {
    let Composition { state, local_ensue } = compose_local(config).await?;
    state.jobs.resume_all().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ensue = local_ensue; // lives as long as the server
        protocol_api::run(listener, state, std::future::pending()).await
    });
    let health = reqwest::get(format!("{url}/")).await?.json().await?;
    Ok((url, health))
}

async fn post(url: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    response.json().await.unwrap()
}

async fn wait_status(api: &str, job: &str, want: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body: Value = reqwest::get(format!("{api}/api/provision/status/{job}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["status"] == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job} stuck at {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Provisions a coordinator up to the wallet step; returns its job id and status.
async fn coordinator(api: &str, name: &str) -> (String, Value) {
    let accepted = post(
        &format!("{api}/api/provision/coordinator"),
        json!({ "displayName": name, "nearAccount": "mydao.testnet" }),
    )
    .await;
    let job = accepted["jobId"].as_str().unwrap().to_owned();
    let ready = wait_status(api, &job, "awaiting_near_signature").await;
    (job, ready)
}

async fn answers(endpoint: &str) -> bool {
    reqwest::get(format!("{endpoint}/")).await.is_ok()
}

async fn journal_ids(data_dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = database(data_dir)
        .deployments()
        .load()
        .await
        .unwrap()
        .iter()
        .map(|entry| entry.id().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Runs `work` on a runtime of its own, then drops every task of it at once,
/// as a crash does (the in-process agents included).
fn crash_after<T>(work: impl std::future::Future<Output = T>) -> T {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let out = runtime.block_on(work);
    runtime.shutdown_timeout(Duration::from_secs(5));
    out
}

#[test]
fn start_up_removes_orphan_agents_and_adopts_one_its_job_had_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), free_addr());
    let [failed, purged, unrecorded] = crash_after(async {
        let (api, _) = start(&config).await.unwrap();
        let mut jobs = Vec::new();
        for name in ["Failed DAO", "Purged DAO", "Unrecorded DAO"] {
            jobs.push(coordinator(&api, name).await);
        }
        <[(String, Value); 3]>::try_from(jobs).unwrap()
    });

    // What the crash and the time before it left: one job failed (or
    // expired), one purged, one killed after the deployer journaled its
    // agent but before the job recorded it.
    crash_after(async {
        let jobs = database(dir.path()).jobs();
        let mut purge = jobs.get(purged.0.parse().unwrap()).await.unwrap().unwrap();
        purge.status = JobStatus::Complete;
        jobs.save(&purge).await.unwrap();
        let purged_count = jobs
            .purge_finished(chrono::Utc::now() + chrono::Duration::hours(1))
            .await
            .unwrap();
        assert_eq!(purged_count, 1);
        let mut fail = jobs.get(failed.0.parse().unwrap()).await.unwrap().unwrap();
        fail.status = JobStatus::Failed;
        jobs.save(&fail).await.unwrap();
        let mut unrecord = jobs
            .get(unrecorded.0.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        unrecord.status = JobStatus::DeployingPhala;
        unrecord.cvm_id = None;
        unrecord.endpoint = None;
        unrecord.dashboard_url = None;
        jobs.save(&unrecord).await.unwrap();
        assert_eq!(journal_ids(dir.path()).await.len(), 3);
    });

    crash_after(async {
        let (api, _) = start(&config).await.unwrap();
        // The unrecorded agent was kept and the job adopted it: same id, same endpoint.
        let adopted = wait_status(&api, &unrecorded.0, "awaiting_near_signature").await;
        assert_eq!(adopted["cvmId"], unrecorded.1["cvmId"]);
        assert_eq!(adopted["phalaEndpoint"], unrecorded.1["phalaEndpoint"]);
        assert!(answers(adopted["phalaEndpoint"].as_str().unwrap()).await);
        // The orphans were neither started nor kept.
        for (_, orphan) in [&failed, &purged] {
            assert!(!answers(orphan["phalaEndpoint"].as_str().unwrap()).await);
        }
        assert_eq!(
            journal_ids(dir.path()).await,
            [unrecorded.1["cvmId"].as_str().unwrap()]
        );
    });
}

#[test]
fn the_embedded_ensue_never_takes_a_port_a_journaled_agent_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ready) = crash_after(async {
        let (api, _) = start(&config(dir.path(), free_addr())).await.unwrap();
        coordinator(&api, "Port Keeper").await
    });
    let endpoint = ready["phalaEndpoint"].as_str().unwrap().to_owned();
    let agent_addr: SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();

    // Asked to take the agent's port, the server refuses to start and says
    // why, even while another process holds that port for now.
    // (Bound as tokio binds, reusing the address its last connections left.)
    let squatting = tokio::runtime::Runtime::new().unwrap();
    let squatter = squatting
        .block_on(tokio::net::TcpListener::bind(agent_addr))
        .unwrap();
    let refused = crash_after(async { start(&config(dir.path(), agent_addr)).await.unwrap_err() });
    drop(squatter);
    drop(squatting);
    let message = format!("{refused:#}");
    assert!(
        message.contains("ENSUE_LOCAL_ADDR") && message.contains(ready["cvmId"].as_str().unwrap()),
        "{message}"
    );

    // On a free port of the kernel's choosing, Ensue binds after the agent
    // took its port back.
    crash_after(async {
        let zero: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (_, health) = start(&config(dir.path(), zero)).await.unwrap();
        let ensue_url = health["ensueUrl"].as_str().unwrap();
        assert!(
            !ensue_url.contains(&format!(":{}/", agent_addr.port())),
            "{ensue_url}"
        );
        let agent: Value = reqwest::get(format!("{endpoint}/"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(agent["did"], ready["coordinatorDid"]);
    });
}

#[test]
fn an_unreadable_journal_entry_fails_only_its_own_job() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), free_addr());
    let (damaged, healthy) = crash_after(async {
        let (api, _) = start(&config).await.unwrap();
        (
            coordinator(&api, "Damaged DAO").await,
            coordinator(&api, "Healthy DAO").await,
        )
    });
    // One flipped bit in the damaged agent's sealed record.
    let connection = rusqlite::Connection::open(dir.path().join("jobs.sqlite")).unwrap();
    let id = damaged.1["cvmId"].as_str().unwrap();
    let mut record: Vec<u8> = connection
        .query_row(
            "SELECT record FROM local_deployments WHERE cvm_id = ?1",
            [id],
            |row| row.get(0),
        )
        .unwrap();
    record[20] ^= 0x01;
    connection
        .execute(
            "UPDATE local_deployments SET record = ?2 WHERE cvm_id = ?1",
            rusqlite::params![id, record],
        )
        .unwrap();
    drop(connection);

    crash_after(async {
        let (api, _) = start(&config).await.unwrap();
        let failed = wait_status(&api, &damaged.0, "failed").await;
        let error = failed["error"].as_str().unwrap();
        assert!(
            error.contains("could not be started again") && error.contains("cannot be read"),
            "{failed}"
        );
        let alive = wait_status(&api, &healthy.0, "awaiting_near_signature").await;
        assert!(answers(alive["phalaEndpoint"].as_str().unwrap()).await);
        assert_eq!(
            journal_ids(dir.path()).await,
            [healthy.1["cvmId"].as_str().unwrap()]
        );
        let entries = database(dir.path()).deployments().load().await.unwrap();
        assert!(matches!(entries[0], JournalEntry::Record(_)));
    });
}
