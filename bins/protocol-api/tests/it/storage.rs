//! Storage faults: what the server does with a damaged record, a lost key,
//! a damaged database, a full disk, a read-only data dir, an empty admin
//! token, and the permissions of what it writes.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use clap::Parser;
use delibera_deploy::AgentRole;
use http_body_util::BodyExt;
use protocol_api::AppState;
use protocol_api::compose::{Composition, compose_local};
use protocol_api::config::Config;
use protocol_api::jobs::{Job, JobStatus, NewJob};
use protocol_api::seal::SecretBox;
use protocol_api::store::Database;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::{Options, TestApp, TestDeployer};

/// The server key the planted records are sealed with.
const KEY: [u8; 32] = [7; 32];

const COORDINATOR_DID: &str = "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH";

fn config(data_dir: &Path, extra: &[&str]) -> Config {
    let mut args = vec![
        "protocol-api",
        "--port",
        "0",
        "--mode",
        "local",
        "--ensue-local-addr",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Config::try_parse_from(args).unwrap()
}

/// A config whose server key is [`KEY`], so the test can seal records too.
fn keyed_config(data_dir: &Path) -> Config {
    config(data_dir, &["--secret-key", &hex::encode(KEY)])
}

/// Why `compose_local` refuses to start, as `main` would print it.
async fn refusal(config: &Config) -> String {
    match compose_local(config).await {
        Ok(_) => panic!("the server started"),
        Err(error) => format!("{error:#}"),
    }
}

/// Starts and stops a server on `config`, leaving its data dir populated.
async fn run_once(config: &Config) {
    let Composition { state, local_ensue } = compose_local(config).await.unwrap();
    drop(state);
    local_ensue.unwrap().stop().await.unwrap();
}

fn worker_job(status: JobStatus) -> Job {
    let mut job = Job::new(
        NewJob {
            role: AgentRole::Worker,
            display_name: "Worker Alpha".into(),
            near_account: "alice.testnet".parse().unwrap(),
            coordinator_did: Some(COORDINATOR_DID.parse().unwrap()),
            min_workers: None,
            max_workers: None,
            contract_address: None,
        },
        chrono::Utc::now(),
    );
    job.status = status;
    job
}

/// Runs `sql` with `params` on the database file, as damage from outside would.
fn tamper(path: &Path, sql: &str, params: impl rusqlite::Params) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute(sql, params).unwrap();
}

/// Flips one bit in the middle of a stored blob.
fn flip_a_bit(path: &Path, table: &str, column: &str, key_column: &str, key: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut blob: Vec<u8> = conn
        .query_row(
            &format!("SELECT {column} FROM {table} WHERE {key_column} = ?1"),
            [key],
            |row| row.get(0),
        )
        .unwrap();
    let middle = blob.len() / 2;
    blob[middle] ^= 0x10;
    conn.execute(
        &format!("UPDATE {table} SET {column} = ?1 WHERE {key_column} = ?2"),
        rusqlite::params![blob, key],
    )
    .unwrap();
}

async fn send(
    state: &AppState,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = protocol_api::app(state.clone())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn job_status(state: &AppState, id: &str) -> (StatusCode, Value) {
    let request = Request::get(format!("/api/provision/status/{id}"))
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(state, request).await;
    (status, body)
}

/// Polls until `done` holds (or fails the test after 30 s).
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_job_record_fails_that_job_and_the_others_resume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite");
    let intact = worker_job(JobStatus::GeneratingIdentity);
    let bad_json = worker_job(JobStatus::CreatingSpace);
    let bad_secrets = worker_job(JobStatus::DeployingPhala);
    run_once(&keyed_config(dir.path())).await;
    {
        let jobs = Database::open(&path, SecretBox::from_key(&KEY))
            .unwrap()
            .jobs();
        for job in [&intact, &bad_json, &bad_secrets] {
            jobs.insert(job).await.unwrap();
        }
    }
    tamper(
        &path,
        "UPDATE jobs SET record = '{\"id\": \"trunc' WHERE id = ?1",
        [bad_json.id.to_string()],
    );
    flip_a_bit(&path, "jobs", "secrets", "id", &bad_secrets.id.to_string());

    let Composition {
        state,
        local_ensue: _ensue,
    } = compose_local(&keyed_config(dir.path())).await.unwrap();
    assert_eq!(
        state.jobs.resume_all().await.unwrap(),
        1,
        "only the intact job resumes"
    );

    // A record whose secrets do not open keeps its fields and says why it failed.
    let (code, body) = job_status(&state, &bad_secrets.id.to_string()).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "failed");
    let reason = body["error"].as_str().unwrap();
    assert!(
        reason.contains("cannot read this job's stored secrets"),
        "{reason}"
    );

    // A record that does not parse is an error naming the job, not a 404.
    let (code, body) = job_status(&state, &bad_json.id.to_string()).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    let message = body["error"].as_str().unwrap();
    assert!(message.contains(&bad_json.id.to_string()), "{message}");
    assert!(message.contains("damaged"), "{message}");
    let status: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT status FROM jobs WHERE id = ?1",
            [bad_json.id.to_string()],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(status, "failed", "it is not resumed at the next start");

    // The intact job goes on to the wallet step.
    let id = intact.id.to_string();
    eventually("the intact job reaches the wallet step", || async {
        let (_, body) = job_status(&state, &id).await;
        assert_ne!(body["status"], "failed", "{body}");
        body["status"] == "awaiting_near_signature"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_keys_are_refused_by_name_never_made_anew() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &[]);
    run_once(&config).await;

    // The server key: the database holds secrets sealed with it.
    let key_file = dir.path().join("server-secret.key");
    let key = std::fs::read(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    let message = refusal(&config).await;
    assert!(
        message.contains(&format!(
            "server key file {} is missing",
            key_file.display()
        )),
        "{message}"
    );
    assert!(
        message.contains(&dir.path().join("jobs.sqlite").display().to_string()),
        "{message}"
    );
    assert!(!key_file.exists(), "no new key was made");

    // Another key in its place opens none of them.
    std::fs::write(&key_file, "11".repeat(32)).unwrap();
    let message = refusal(&config).await;
    assert!(
        message.contains("the server key does not open the secrets sealed in"),
        "{message}"
    );
    std::fs::write(&key_file, key).unwrap();

    // The local Storacha space key: the data dir recorded its space.
    let space_key = dir.path().join("storacha-space.key");
    let space = std::fs::read(&space_key).unwrap();
    std::fs::remove_file(&space_key).unwrap();
    let message = refusal(&config).await;
    assert!(
        message.contains(&format!(
            "the local space key {} is missing",
            space_key.display()
        )),
        "{message}"
    );
    assert!(!space_key.exists(), "no new space was made");
    std::fs::write(&space_key, space).unwrap();

    // An emptied admin token file would lock the signing routes.
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "").unwrap();
    let message = refusal(&config).await;
    assert!(
        message.contains(&format!("{} is empty", token.display())),
        "{message}"
    );
    std::fs::remove_file(&token).unwrap();

    run_once(&config).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_or_missing_database_is_refused_and_a_fresh_dir_starts() {
    let fresh = tempfile::tempdir().unwrap();
    run_once(&config(&fresh.path().join("new"), &[])).await;

    // Empty.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite");
    std::fs::write(&path, b"").unwrap();
    let message = refusal(&config(dir.path(), &[])).await;
    assert!(
        message.contains(&format!(
            "database {} cannot be used: the file is empty (0 bytes)",
            path.display()
        )),
        "{message}"
    );

    // Truncated: half its pages gone.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite");
    {
        let jobs = Database::open(&path, SecretBox::from_key(&KEY))
            .unwrap()
            .jobs();
        for _ in 0..40 {
            let mut job = worker_job(JobStatus::AwaitingNearSignature);
            job.delegation = Some("x".repeat(2000));
            jobs.insert(&job).await.unwrap();
        }
    }
    let length = std::fs::metadata(&path).unwrap().len();
    assert!(length > 8 * 4096, "{length}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(length / 2)
        .unwrap();
    let message = refusal(&keyed_config(dir.path())).await;
    assert!(
        message.contains(&format!("database {} cannot be used", path.display())),
        "{message}"
    );

    // A table dropped.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.sqlite");
    run_once(&config(dir.path(), &[])).await;
    tamper(&path, "DROP TABLE local_deployments", []);
    let message = refusal(&config(dir.path(), &[])).await;
    assert!(
        message.contains("its `local_deployments` table is missing"),
        "{message}"
    );

    // Deleted, beside the rest of a data dir.
    std::fs::remove_file(&path).unwrap();
    let message = refusal(&config(dir.path(), &[])).await;
    assert!(
        message.contains(&format!("but no job database {}", path.display())),
        "{message}"
    );
    assert!(!path.exists(), "no empty database was made");
}

/// A registry or Ensue store deleted or emptied beside a job database that
/// holds jobs is refused by name; with no jobs yet, they are simply made.
#[tokio::test]
async fn a_lost_registry_or_ensue_store_beside_jobs_is_refused() {
    for (store, emptied) in [
        ("registry.sqlite", false),
        ("registry.sqlite", true),
        ("ensue/ensue-local.sqlite3", false),
        ("ensue/ensue-local.sqlite3", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path();
        let path = data_dir.join(store);
        run_once(&keyed_config(data_dir)).await;
        // Nothing recorded yet: a lost store is made anew.
        std::fs::remove_file(&path).unwrap();
        run_once(&keyed_config(data_dir)).await;
        assert!(path.exists(), "{store} was made anew");

        Database::open(&data_dir.join("jobs.sqlite"), SecretBox::from_key(&KEY))
            .unwrap()
            .jobs()
            .insert(&worker_job(JobStatus::Complete))
            .await
            .unwrap();
        if emptied {
            std::fs::write(&path, b"").unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        let message = refusal(&keyed_config(data_dir)).await;
        assert!(
            message.contains(&format!("but {} is missing or empty", path.display())),
            "{store}: {message}"
        );
        let length = std::fs::metadata(&path).map(|metadata| metadata.len());
        assert!(
            length.is_err() || length.is_ok_and(|length| length == 0),
            "{store} was left as it was"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_503_and_accepted_jobs_finish_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let deployer = TestDeployer::unhealthy();
    let app = TestApp::start(dir.path(), deployer.clone(), Options::default()).await;
    app.registry
        .register_coordinator_as(
            &"mydao.testnet".parse().unwrap(),
            &delibera_near::CoordinatorRegistration {
                coordinator_did: COORDINATOR_DID.into(),
                endpoint_url: "https://coordinator.example".into(),
                cvm_id: "cvm-coordinator".into(),
                min_workers: 1,
                max_workers: 3,
            },
        )
        .unwrap();
    let provision = || {
        Request::post("/api/provision/worker")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"coordinatorDid": COORDINATOR_DID, "displayName": "Worker Alpha", "nearAccount": "alice.testnet"})
                    .to_string(),
            ))
            .unwrap()
    };
    let mut accepted = Vec::new();
    for _ in 0..2 {
        let (code, _, body) = send(&app.state, provision()).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        let id = body["jobId"].as_str().unwrap().to_owned();
        app.wait_for(&id, &["waiting_for_url"]).await;
        accepted.push(id);
    }

    app.database.simulate_full_disk(true);
    let (code, headers, body) = send(&app.state, provision()).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers[header::RETRY_AFTER], "30");
    assert!(
        body["error"].as_str().unwrap().contains("retry in 30 s"),
        "{body}"
    );

    // The agents become healthy while nothing can be saved: the runners keep
    // trying rather than stop.
    let refused_before = app.database.simulated_refusals();
    deployer.healthy.store(true, Ordering::SeqCst);
    eventually("both runners retried their transition", || async {
        app.database.simulated_refusals() >= refused_before + 4
    })
    .await;
    for id in &accepted {
        let (code, body) = job_status(&app.state, id).await;
        assert_eq!(code, StatusCode::OK, "reads go on: {body}");
        assert_eq!(body["status"], "waiting_for_url");
    }

    // Space returns: both jobs go on, with no restart.
    app.database.simulate_full_disk(false);
    for id in &accepted {
        let ready = app
            .wait_for(id, &["awaiting_near_signature", "failed"])
            .await;
        assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    }
    let (code, _, body) = send(&app.state, provision()).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
}

#[cfg(unix)]
fn chown_all(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_all(&entry.unwrap().path(), uid);
        }
    }
}

/// Runs the `protocol-api` binary as `uid` (when the test runs as root, for
/// whom no permission is denied) with `env` only; returns its stderr once it
/// exits, which it must do with a failure.
#[cfg(unix)]
async fn binary_refuses(args: &[&str], env: &[(&str, &str)], uid: Option<u32>) -> String {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // Another user may not reach the build's binary (a checkout under a
    // private directory): it runs a copy in a directory anyone can enter.
    let reachable = tempfile::tempdir().unwrap();
    let binary = reachable.path().join("protocol-api");
    std::fs::copy(env!("CARGO_BIN_EXE_protocol-api"), &binary).unwrap();
    std::fs::set_permissions(reachable.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = std::process::Command::new(&binary);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    let mut child = command.spawn().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the server started instead of refusing");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    stderr
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_data_dir_is_named_with_the_cause() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let data_dir: PathBuf = dir.path().join("data");
    run_once(&config(&data_dir, &[])).await;

    // Root may write anywhere, so the server then runs as an unprivileged user.
    let as_user = (std::fs::metadata(dir.path()).unwrap().uid() == 0).then_some(65534);
    if let Some(uid) = as_user {
        chown_all(dir.path(), uid);
    }
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o500)).unwrap();
    let data = data_dir.to_str().unwrap();
    let stderr = binary_refuses(
        &[
            "--data-dir",
            data,
            "--port",
            "0",
            "--ensue-local-addr",
            "127.0.0.1:0",
        ],
        &[],
        as_user,
    )
    .await;
    assert!(
        stderr.contains(&format!("{data} is not writable: Permission denied")),
        "{stderr}"
    );
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn the_binary_refuses_an_empty_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let stderr = binary_refuses(
        &["--data-dir", data.to_str().unwrap(), "--port", "0"],
        &[("PROTOCOL_API_ADMIN_TOKEN", "")],
        None,
    )
    .await;
    assert!(stderr.contains("the admin token is empty"), "{stderr}");
    assert!(!data.exists(), "nothing was started");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn data_files_are_owner_only_and_looser_ones_are_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = config(&data_dir, &[]);
    let Composition { state, local_ensue } = compose_local(&config).await.unwrap();
    let mode = |name: &str| {
        std::fs::metadata(data_dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    let dirs = ["", "ensue"];
    let files = [
        "jobs.sqlite",
        "jobs.sqlite-wal",
        "jobs.sqlite-shm",
        "server-secret.key",
        "admin-token",
        "ensue-bootstrap.key",
        "registry.sqlite",
        "storacha-space.key",
        "storacha-space.did",
        "ensue/ensue-local.sqlite3",
    ];
    for name in dirs {
        assert_eq!(mode(name), 0o700, "{name:?}");
    }
    for name in files {
        assert_eq!(mode(name), 0o600, "{name}");
    }
    drop(state);
    local_ensue.unwrap().stop().await.unwrap();

    // What an earlier release left readable is tightened at the next start.
    for name in dirs {
        std::fs::set_permissions(data_dir.join(name), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    for name in files.iter().filter(|name| data_dir.join(name).exists()) {
        std::fs::set_permissions(data_dir.join(name), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    let Composition { state, local_ensue } = compose_local(&config).await.unwrap();
    for name in dirs {
        assert_eq!(mode(name), 0o700, "{name:?}");
    }
    for name in files.iter().filter(|name| data_dir.join(name).exists()) {
        assert_eq!(mode(name), 0o600, "{name}");
    }
    drop(state);
    local_ensue.unwrap().stop().await.unwrap();
}

/// A failure inside the embedded Ensue store reaches the job (and so its
/// client) as a plain sentence; the cause stays in the server log.
#[tokio::test]
async fn an_embedded_ensue_store_failure_tells_the_client_no_internals() {
    use protocol_api::ports::{EmbeddedEnsue, EnsueAccess};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(delibera_ensue_local::DATABASE_FILE);
    let store = delibera_ensue_local::Store::open(&path).unwrap();
    tamper(&path, "DROP TABLE api_keys", []);
    let ensue = EmbeddedEnsue::new("http://127.0.0.1:1/".parse().unwrap(), store);
    let chosen = ensue.choose_org_credentials().unwrap();

    let error = ensue
        .register_org("delibera-team", Some(&chosen))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("the server log has the cause"), "{error}");
    for internal in [
        "api_keys",
        "no such table",
        "sqlite",
        dir.path().to_str().unwrap(),
    ] {
        assert!(!error.contains(internal), "{internal} in {error}");
    }
}

/// A record that does not parse, failed at start-up, is left out of the
/// lists the sweeper and the start-up read: expiring other jobs and failing
/// lost deployments go on.
#[tokio::test(flavor = "multi_thread")]
async fn an_unparseable_record_stops_neither_the_expiry_sweep_nor_lost_deployments() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let jobs = app.database.jobs();
    let damaged = worker_job(JobStatus::WaitingForUrl);
    let mut overdue = worker_job(JobStatus::AwaitingNearSignature);
    overdue.updated_at = chrono::Utc::now() - chrono::Duration::days(3);
    for job in [&damaged, &overdue] {
        jobs.insert(job).await.unwrap();
    }
    tamper(
        &dir.path().join("jobs.sqlite"),
        "UPDATE jobs SET record = '{\"id\": \"trunc' WHERE id = ?1",
        [damaged.id.to_string()],
    );
    assert_eq!(jobs.fail_unreadable().await.unwrap().len(), 1);

    app.state.jobs.expire_due().await.unwrap();
    let (code, body) = job_status(&app.state, &overdue.id.to_string()).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "failed", "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("expired: "),
        "{body}"
    );
    app.state
        .jobs
        .fail_lost_deployment("cvm-nobody-owns", None, "it is gone")
        .await
        .unwrap();
}

/// A registration whose last transition meets a full disk answers 503
/// after a bounded wait, and completes by itself once space returns.
#[tokio::test(flavor = "multi_thread")]
async fn a_registration_meeting_a_full_disk_answers_503_and_completes_later() {
    let dir = tempfile::tempdir().unwrap();
    let holds = crate::common::Holds::open();
    holds.registration.set(crate::common::GateState::Closed);
    let options = Options {
        holds: holds.clone(),
        ..Options::default()
    };
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), options).await;
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/coordinator",
            Some(json!({ "displayName": "Full Disk DAO", "nearAccount": "mydao.testnet" })),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let job_id = body["jobId"].as_str().unwrap().to_owned();
    app.wait_for(&job_id, &["awaiting_near_signature"]).await;

    let registration = tokio::spawn({
        let api = app.api.clone();
        let job_id = job_id.clone();
        async move {
            api.call_with(
                "POST",
                "/api/provision/coordinator-register",
                Some(json!({ "jobId": job_id })),
                None,
            )
            .await
        }
    });
    app.wait_for(&job_id, &["registering"]).await;
    app.database.simulate_full_disk(true);
    holds.registration.set(crate::common::GateState::Open);
    let (code, body) = crate::common::within("the registration's answer", registration)
        .await
        .unwrap();
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("retry in 30 s"),
        "{body}"
    );
    let (_, shown) = job_status(&app.state, &job_id).await;
    assert_eq!(
        shown["status"], "registering",
        "nothing uncommitted is shown"
    );

    app.database.simulate_full_disk(false);
    app.wait_for(&job_id, &["complete"]).await;
}

/// Starts a coordinator job and waits until its first Ensue org attempt is
/// recorded (the test holds the org's registration at its gate).
async fn coordinator_at_its_first_org_attempt(app: &TestApp, display_name: &str) -> String {
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/coordinator",
            Some(json!({ "displayName": display_name, "nearAccount": "mydao.testnet" })),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let job_id = body["jobId"].as_str().unwrap().to_owned();
    eventually("the first org attempt is recorded", || async {
        app.state
            .jobs
            .get(&job_id)
            .await
            .unwrap()
            .ensue_org_attempts
            == 1
    })
    .await;
    job_id
}

/// A store write that fails while a coordinator's Ensue org is being
/// registered is no failure of the job: it is driven again and goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_fault_while_registering_an_ensue_org_does_not_fail_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let holds = crate::common::Holds::open();
    holds.ensue.set(crate::common::GateState::Closed);
    let options = Options {
        holds: holds.clone(),
        // Hosted-style registration whose first answer is lost: the next
        // attempt records itself first, and that record meets the fault.
        wrap_ensue: Some(Box::new(crate::common::LosesFirstAnswer::wrap)),
        ..Options::default()
    };
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), options).await;
    let job_id = coordinator_at_its_first_org_attempt(&app, "Org Under Pressure").await;

    let refused_before = app.database.simulated_refusals();
    app.database.simulate_full_disk_briefly(1);
    holds.ensue.set(crate::common::GateState::Open);
    let ready = app
        .wait_for(&job_id, &["awaiting_near_signature", "failed"])
        .await;
    assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
    assert_eq!(app.database.simulated_refusals(), refused_before + 1);
}

/// A kill after a hosted Ensue org was made and its first write went
/// through, with every write after it refused: the job, resumed on the same
/// data dir, keeps that org (no second org under the next name), and the
/// coordinator's workers find that org's key.
#[test]
fn a_kill_after_an_ensue_org_is_made_and_stored_keeps_that_org() {
    let dir = tempfile::tempdir().unwrap();
    let deployer = TestDeployer::healthy();
    let first = tokio::runtime::Runtime::new().unwrap();
    let job_id = first.block_on(async {
        let holds = crate::common::Holds::open();
        holds.ensue.set(crate::common::GateState::Closed);
        let options = Options {
            holds: holds.clone(),
            ..Options::default()
        };
        let app = TestApp::start(dir.path(), deployer.clone(), options).await;
        let job_id = coordinator_at_its_first_org_attempt(&app, "Killed After Its Org").await;
        let refused_before = app.database.simulated_refusals();
        app.database.simulate_full_disk_after(1, u64::MAX);
        holds.ensue.set(crate::common::GateState::Open);
        eventually("a write after the org's to be refused", || async {
            app.database.simulated_refusals() > refused_before
        })
        .await;
        job_id
    });
    first.shutdown_timeout(Duration::from_millis(100));

    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let app = TestApp::start(dir.path(), deployer.clone(), Options::default()).await;
        app.state.jobs.resume_all().await.unwrap();
        let ready = app
            .wait_for(&job_id, &["awaiting_near_signature", "failed"])
            .await;
        assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
        let job = app.job_with_its_one_org(&job_id).await;
        let org = job.ensue_org_name.clone().unwrap();
        let did = job.agent_did.as_ref().unwrap().to_string();
        let (stored_org, stored_key) = app.database.org_keys().get(&did).await.unwrap().unwrap();
        assert_eq!(stored_org, org);
        assert_eq!(
            Some(stored_key.as_str()),
            job.secrets.ensue_api_key.as_deref()
        );
    });
}

/// A hosted Ensue shows a new org's key once: a store that refuses the
/// writes after the org was made (its key, then the job's next step) is
/// waited out, and the job keeps that org instead of registering another.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_fault_after_an_ensue_org_is_made_keeps_that_org() {
    // (writes let through, writes refused): the key's, then the commit's.
    for (passed, refused) in [(0, 1), (0, 3), (1, 1), (1, 3)] {
        let dir = tempfile::tempdir().unwrap();
        let holds = crate::common::Holds::open();
        holds.ensue.set(crate::common::GateState::Closed);
        let options = Options {
            holds: holds.clone(),
            ..Options::default()
        };
        let app = TestApp::start(dir.path(), TestDeployer::healthy(), options).await;
        let job_id = coordinator_at_its_first_org_attempt(&app, "Kept Org DAO").await;

        // The attempt's record is written; the org's registration is held.
        let refused_before = app.database.simulated_refusals();
        app.database.simulate_full_disk_after(passed, refused);
        holds.ensue.set(crate::common::GateState::Open);
        let ready = app
            .wait_for(&job_id, &["awaiting_near_signature", "failed"])
            .await;
        assert_eq!(ready["status"], "awaiting_near_signature", "{ready}");
        assert_eq!(
            app.database.simulated_refusals(),
            refused_before + refused,
            "the fault was met"
        );
        let job = app.state.jobs.get(&job_id).await.unwrap();
        assert_eq!(job.ensue_org_attempts, 1, "one org registered");
        let org = job.ensue_org_name.clone().unwrap();
        assert!(!org.ends_with("-2"), "{org}");
        assert_eq!(ready["ensueOrgName"], org.as_str());
        assert!(ready["ensueClaimUrl"].as_str().is_some(), "{ready}");
    }
}
