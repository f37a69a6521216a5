//! The job store's behaviour, one test body per rule run on both backends:
//! the SQLite file and PostgreSQL. The PostgreSQL runs need
//! `TEST_DATABASE_URL` (`.ci/run` starts a throwaway server and sets it);
//! without it they pass after saying on stderr that they were skipped. Each
//! PostgreSQL test works in a schema of its own, so they run in parallel.

use std::io::Write as _;
use std::time::Duration;

use chrono::Utc;
use delibera_agent::{DeploymentJournal, JournalEntry, LocalDeploymentRecord};
use delibera_deploy::{AgentEnv, AgentIdentity, AgentRole, AgentSpec, DeploymentName};
use delibera_identity::Keypair;
use protocol_api::jobs::{Job, JobStatus, NewJob};
use protocol_api::seal::SecretBox;
use protocol_api::store::{Database, PostgresConfig, Started, StoreError};
use uuid::Uuid;

use crate::common::within;

/// The variable naming the PostgreSQL server the tests may use.
pub const TEST_DATABASE_URL: &str = "TEST_DATABASE_URL";

/// Runs each named test body once per backend: `<name>::sqlite` and
/// `<name>::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$name(super::TestDb::sqlite()).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                if let Some(db) = super::TestDb::postgres(stringify!($name)).await {
                    super::$name(db).await;
                }
            }
        }
    )*};
}

on_both_backends!(
    jobs_and_sealed_secrets_survive_reopening,
    a_key_that_did_not_seal_the_database_is_refused,
    only_runner_owned_jobs_resume_and_one_compare_and_set_wins,
    an_idempotency_key_names_one_job_even_when_requests_race,
    purging_removes_old_finished_jobs_and_their_keys,
    status_documents_reveal_secrets_only_from_the_wallet_step,
    a_full_disk_refuses_writes_and_reads_go_on,
    a_follower_gets_the_current_document_then_each_commit,
    unreadable_records_fail_their_jobs_and_hide_no_other,
    org_keys_and_the_deployment_journal_round_trip,
);

/// A fresh, empty database of one backend.
pub enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres {
        /// The store's URL: the test's own schema.
        url: String,
        /// A connection of the test's own, in that schema.
        client: tokio_postgres::Client,
    },
}

/// How long a job's lease lasts in the tests: a replica that dies
/// holds its jobs this long.
pub const TEST_JOB_LEASE: Duration = Duration::from_secs(2);

/// The server key most tests seal with.
const KEY: [u8; 32] = [7; 32];

impl TestDb {
    pub fn sqlite() -> Self {
        TestDb::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A schema of its own on `TEST_DATABASE_URL`'s server, or `None`
    /// (saying so on the real stderr) when it is not set.
    pub async fn postgres(test: &str) -> Option<Self> {
        let Ok(base) = std::env::var(TEST_DATABASE_URL) else {
            let _ = writeln!(
                std::io::stderr(),
                "skipped {test} on PostgreSQL: {TEST_DATABASE_URL} is not set (.ci/run starts a \
                 throwaway server and sets it)"
            );
            return None;
        };
        let schema = format!("test_{}", Uuid::new_v4().simple());
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
        let (admin, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|error| panic!("connecting to {TEST_DATABASE_URL}: {error}"));
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        Some(TestDb::Postgres { url, client })
    }

    /// The database, opened (or opened again) with `key`.
    pub async fn open_with(&self, key: &[u8; 32]) -> Result<Database, StoreError> {
        let secrets = SecretBox::from_key(key);
        match self {
            TestDb::Sqlite(dir) => Database::open(&dir.path().join("jobs.sqlite"), secrets),
            TestDb::Postgres { url, .. } => {
                let config = PostgresConfig::parse(url)
                    .unwrap()
                    .with_job_lease(TEST_JOB_LEASE);
                Database::connect_postgres(&config, secrets).await
            }
        }
    }

    /// The URL a server on this database is given (PostgreSQL only).
    pub fn url(&self) -> Option<&str> {
        match self {
            TestDb::Sqlite(_) => None,
            TestDb::Postgres { url, .. } => Some(url),
        }
    }

    /// Ends the session holding the leader lock of this database, as a
    /// restarted database or a cut connection would; returns how many.
    pub async fn end_leader_lock_session(&self) -> i64 {
        let TestDb::Postgres { client, .. } = self else {
            return 0;
        };
        client
            .query_one(
                // The leader lock of this schema: (0x444c4250, 3 # hashtext(schema)).
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
                 WHERE locktype = 'advisory' AND granted AND database = (
                       SELECT oid FROM pg_database WHERE datname = current_database())
                   AND classid = 1145848400
                   AND objid::bigint = (3 # hashtext(current_schema()))::bigint & 4294967295",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn open(&self) -> Database {
        self.open_with(&KEY).await.unwrap()
    }

    /// Runs `sql` (no parameters) on the database behind the store's back.
    pub async fn execute(&self, sql: &str) {
        match self {
            TestDb::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.path().join("jobs.sqlite")).unwrap();
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                conn.execute_batch(sql).unwrap();
            }
            TestDb::Postgres { client, .. } => client.batch_execute(sql).await.unwrap(),
        }
    }

    /// Makes every job lease run out now (PostgreSQL).
    pub async fn expire_leases(&self) {
        self.execute(
            "UPDATE jobs SET leased_until = now() - interval '1 second'
             WHERE leased_until IS NOT NULL",
        )
        .await
    }

    /// Who holds job `id`'s lease (PostgreSQL): `None` if nobody does.
    pub async fn lease_holder(&self, id: Uuid) -> Option<String> {
        let TestDb::Postgres { client, .. } = self else {
            return None;
        };
        client
            .query_one(
                "SELECT leased_by FROM jobs WHERE id = $1",
                &[&id.to_string()],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Replaces a job's sealed secrets with `sealed` behind the store's back.
    pub async fn set_secrets(&self, id: Uuid, sealed: &[u8]) {
        let hex = hex::encode(sealed);
        match self {
            TestDb::Sqlite(_) => {
                self.execute(&format!(
                    "UPDATE jobs SET secrets = X'{hex}' WHERE id = '{id}'"
                ))
                .await
            }
            TestDb::Postgres { .. } => {
                self.execute(&format!(
                    "UPDATE jobs SET secrets = decode('{hex}', 'hex') WHERE id = '{id}'"
                ))
                .await
            }
        }
    }

    /// Everything stored, as bytes: the files, or every job row's columns.
    pub async fn stored_bytes(&self) -> Vec<u8> {
        match self {
            TestDb::Sqlite(dir) => {
                let mut bytes = std::fs::read(dir.path().join("jobs.sqlite")).unwrap();
                bytes.extend(std::fs::read(dir.path().join("jobs.sqlite-wal")).unwrap_or_default());
                bytes
            }
            TestDb::Postgres { client, .. } => {
                let mut bytes = Vec::new();
                for row in client
                    .query("SELECT record, secrets FROM jobs", &[])
                    .await
                    .unwrap()
                {
                    bytes.extend(row.get::<_, &str>(0).as_bytes());
                    bytes.extend(row.get::<_, &[u8]>(1));
                }
                bytes
            }
        }
    }
}

pub fn new_job() -> Job {
    Job::new(
        NewJob {
            role: AgentRole::Worker,
            display_name: "Worker Alpha".into(),
            near_account: "alice.testnet".parse().unwrap(),
            coordinator_did: Some(
                "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH"
                    .parse()
                    .unwrap(),
            ),
            min_workers: None,
            max_workers: None,
            contract_address: None,
        },
        Utc::now(),
    )
}

/// The JSON of a status document.
fn document(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

async fn shown_status(database: &Database, id: Uuid) -> Option<String> {
    let bytes = database.jobs().status(id).await.unwrap()?;
    Some(document(&bytes)["status"].as_str().unwrap().to_owned())
}

async fn jobs_and_sealed_secrets_survive_reopening(db: TestDb) {
    let mut job = new_job();
    {
        let store = db.open().await.jobs();
        store.insert(&job).await.unwrap();
        job.status = JobStatus::AwaitingNearSignature;
        job.secrets.storacha_private_key = Some("MgCYsecret".into());
        store.save(&job).await.unwrap();
    }
    let stored = db.stored_bytes().await;
    assert!(
        !stored.windows(10).any(|w| w == b"MgCYsecret"),
        "a secret is stored in the clear"
    );
    let loaded = db.open().await.jobs().get(job.id).await.unwrap().unwrap();
    assert_eq!(loaded.status, JobStatus::AwaitingNearSignature);
    assert_eq!(
        loaded.secrets.storacha_private_key.as_deref(),
        Some("MgCYsecret")
    );
}

async fn a_key_that_did_not_seal_the_database_is_refused(db: TestDb) {
    db.open().await.jobs().insert(&new_job()).await.unwrap();
    let refused = db.open_with(&[9; 32]).await.err();
    assert!(
        matches!(refused, Some(StoreError::WrongKey { .. })),
        "{refused:?}"
    );
    // The right key still opens it.
    db.open().await;
}

async fn only_runner_owned_jobs_resume_and_one_compare_and_set_wins(db: TestDb) {
    let store = db.open().await.jobs();
    let mut running = new_job();
    running.status = JobStatus::WaitingForUrl;
    let mut waiting = new_job();
    waiting.status = JobStatus::AwaitingNearSignature;
    store.insert(&running).await.unwrap();
    store.insert(&waiting).await.unwrap();
    let resumable = store.resumable().await.unwrap();
    assert_eq!(
        resumable.iter().map(|job| job.id).collect::<Vec<_>>(),
        vec![running.id]
    );

    waiting.status = JobStatus::Registering;
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let (store, job) = (store.clone(), waiting.clone());
            tokio::spawn(async move {
                store
                    .save_if_status(&job, JobStatus::AwaitingNearSignature)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut won = 0;
    for attempt in attempts {
        won += usize::from(within("a compare-and-set", attempt).await.unwrap());
    }
    assert_eq!(won, 1, "exactly one compare-and-set wins");
    assert_eq!(
        store.get(waiting.id).await.unwrap().unwrap().status,
        JobStatus::Registering
    );
}

async fn an_idempotency_key_names_one_job_even_when_requests_race(db: TestDb) {
    let store = db.open().await.jobs();
    let (key, request) = ([1; 32], [2; 32]);
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let job = new_job();
            tokio::spawn(async move {
                let started = store.insert_idempotent(&job, key, request).await.unwrap();
                (job.id, started)
            })
        })
        .collect();
    let mut new = Vec::new();
    let mut earlier = Vec::new();
    for racer in racers {
        match within("an idempotent insert", racer).await.unwrap() {
            (id, Started::New) => new.push(id),
            (
                _,
                Started::Earlier {
                    job_id,
                    same_request,
                },
            ) => {
                assert!(same_request);
                earlier.push(job_id);
            }
        }
    }
    assert_eq!(new.len(), 1, "one job under one key");
    assert!(earlier.iter().all(|id| *id == new[0]));
    assert_eq!(
        store
            .in_status(JobStatus::ALL.to_vec())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store.started_under_key(key, [3; 32]).await.unwrap(),
        Some(Started::Earlier {
            job_id: new[0],
            same_request: false
        })
    );
    assert_eq!(
        store.started_under_key([4; 32], request).await.unwrap(),
        None
    );
}

async fn purging_removes_old_finished_jobs_and_their_keys(db: TestDb) {
    let database = db.open().await;
    let store = database.jobs();
    let mut old_done = new_job();
    old_done.status = JobStatus::Complete;
    old_done.updated_at = Utc::now() - chrono::Duration::days(30);
    let mut old_running = new_job();
    old_running.updated_at = old_done.updated_at;
    let mut fresh_failed = new_job();
    fresh_failed.status = JobStatus::Failed;
    store
        .insert_idempotent(&old_done, [5; 32], [6; 32])
        .await
        .unwrap();
    for job in [&old_running, &fresh_failed] {
        store.insert(job).await.unwrap();
    }
    let purged = store
        .purge_finished(Utc::now() - chrono::Duration::days(7))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert!(store.get(old_done.id).await.unwrap().is_none());
    assert_eq!(shown_status(&database, old_done.id).await, None);
    assert!(store.get(old_running.id).await.unwrap().is_some());
    assert!(store.get(fresh_failed.id).await.unwrap().is_some());
    // The key went with its job: it names a new one now.
    assert_eq!(
        store.started_under_key([5; 32], [6; 32]).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .insert_idempotent(&new_job(), [5; 32], [6; 32])
            .await
            .unwrap(),
        Started::New
    );
}

async fn status_documents_reveal_secrets_only_from_the_wallet_step(db: TestDb) {
    let database = db.open().await;
    let store = database.jobs();
    assert_eq!(shown_status(&database, Uuid::new_v4()).await, None);
    let mut job = new_job();
    job.secrets.storacha_private_key = Some("MgCYsecret".into());
    store.insert(&job).await.unwrap();
    let hidden = document(&store.status(job.id).await.unwrap().unwrap());
    assert_eq!(hidden["status"], "generating_identity");
    assert!(
        hidden
            .get("storachaPrivateKey")
            .is_none_or(|key| key.is_null())
    );

    job.status = JobStatus::AwaitingNearSignature;
    store.save(&job).await.unwrap();
    let shown = document(&store.status(job.id).await.unwrap().unwrap());
    assert_eq!(shown["status"], "awaiting_near_signature");
    assert_eq!(shown["storachaPrivateKey"], "MgCYsecret");
}

async fn a_full_disk_refuses_writes_and_reads_go_on(db: TestDb) {
    let database = db.open().await;
    let store = database.jobs();
    let mut job = new_job();
    store.insert(&job).await.unwrap();

    database.simulate_full_disk(true);
    job.status = JobStatus::CreatingSpace;
    let refused = store.save(&job).await.unwrap_err();
    assert!(matches!(refused, StoreError::Full { .. }), "{refused:?}");
    assert!(refused.is_transient());
    assert!(store.insert(&new_job()).await.is_err());
    assert!(database.simulated_refusals() >= 2);
    // Nothing refused is shown, and reads go on.
    assert_eq!(
        shown_status(&database, job.id).await.as_deref(),
        Some("generating_identity")
    );
    assert_eq!(
        store.get(job.id).await.unwrap().unwrap().status,
        JobStatus::GeneratingIdentity
    );

    database.simulate_full_disk(false);
    store.save(&job).await.unwrap();
    assert_eq!(
        shown_status(&database, job.id).await.as_deref(),
        Some("creating_space")
    );
}

/// The next event of `follower`: its id and the document's status.
async fn next(follower: &mut protocol_api::store::StatusFollower) -> (String, serde_json::Value) {
    let (event_id, document_bytes) = within("the next status event", follower.next())
        .await
        .unwrap()
        .unwrap();
    (event_id, document(&document_bytes)["status"].clone())
}

async fn a_follower_gets_the_current_document_then_each_commit(db: TestDb) {
    let database = db.open().await;
    let store = database.jobs();
    let mut job = new_job();
    store.insert(&job).await.unwrap();
    assert!(store.follow(Uuid::new_v4(), None).await.unwrap().is_none());

    let mut follower = store.follow(job.id, None).await.unwrap().unwrap();
    let (_, status) = next(&mut follower).await;
    assert_eq!(status, "generating_identity");
    for status in [JobStatus::CreatingSpace, JobStatus::AwaitingNearSignature] {
        job.status = status;
        store.save(&job).await.unwrap();
        let (_, shown) = next(&mut follower).await;
        assert_eq!(shown, status.as_str());
    }

    // A client that saw the last event and comes back gets only what follows.
    let (seen, _) = {
        let mut again = store.follow(job.id, None).await.unwrap().unwrap();
        next(&mut again).await
    };
    let mut resumed = store.follow(job.id, Some(&seen)).await.unwrap().unwrap();
    job.status = JobStatus::Registering;
    store.save(&job).await.unwrap();
    let (_, shown) = next(&mut resumed).await;
    assert_eq!(shown, "registering");
    // An id it does not know gets the current document.
    let mut stranger = store
        .follow(job.id, Some("not-an-event"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next(&mut stranger).await.1, "registering");
}

async fn unreadable_records_fail_their_jobs_and_hide_no_other(db: TestDb) {
    let database = db.open().await;
    let store = database.jobs();
    let damaged = new_job();
    let mut deployed = new_job();
    deployed.status = JobStatus::WaitingForUrl;
    deployed.cvm_id = Some("cvm-9".into());
    let mut waiting = new_job();
    waiting.status = JobStatus::AwaitingNearSignature;
    let mut failed = new_job();
    failed.status = JobStatus::Failed;
    // Registered and running: its agent needs nothing the record keeps.
    let mut registered = new_job();
    registered.status = JobStatus::Complete;
    registered.cvm_id = Some("cvm-10".into());
    for job in [&damaged, &deployed, &waiting, &failed, &registered] {
        store.insert(job).await.unwrap();
    }
    db.set_secrets(registered.id, &SecretBox::from_key(&[9; 32]).seal(b"{}"))
        .await;
    db.execute(&format!(
        "UPDATE jobs SET record = '{{' WHERE id = '{}'",
        damaged.id
    ))
    .await;
    db.set_secrets(deployed.id, &SecretBox::from_key(&[9; 32]).seal(b"{}"))
        .await;
    match store.get(deployed.id).await {
        Err(StoreError::Corrupt { id, reason }) => {
            assert_eq!(id, deployed.id.to_string());
            assert_eq!(reason, "its sealed secrets do not open");
        }
        other => panic!("{other:?}"),
    }

    let mut unreadable: Vec<String> = store
        .fail_unreadable()
        .await
        .unwrap()
        .into_iter()
        .map(|job| job.id)
        .collect();
    unreadable.sort();
    let mut expected = vec![damaged.id.to_string(), deployed.id.to_string()];
    expected.sort();
    assert_eq!(unreadable, expected);

    let mut listed: Vec<Uuid> = store
        .in_status(JobStatus::ALL.to_vec())
        .await
        .unwrap()
        .iter()
        .map(|job| job.id)
        .collect();
    listed.sort();
    let mut readable = vec![deployed.id, waiting.id, failed.id];
    readable.sort();
    assert_eq!(listed, readable, "the damaged record hides no other job");
    assert!(store.get(damaged.id).await.is_err());

    let deployed = store.get(deployed.id).await.unwrap().unwrap();
    assert_eq!(deployed.status, JobStatus::Failed);
    assert!(deployed.deployment_teardown_pending);
    assert!(
        deployed
            .error
            .unwrap()
            .contains("cannot read this job's stored secrets")
    );
    assert_eq!(
        shown_status(&database, deployed.id).await.as_deref(),
        Some("failed")
    );
    assert!(store.fail_unreadable().await.unwrap().is_empty());

    // Once the store is opened again, the damaged job's status says so.
    drop((store, database));
    let reopened = db.open().await;
    assert!(matches!(
        reopened.jobs().status(damaged.id).await,
        Err(StoreError::Corrupt { id, .. }) if id == damaged.id.to_string()
    ));
}

async fn org_keys_and_the_deployment_journal_round_trip(db: TestDb) {
    let database = db.open().await;
    let orgs = database.org_keys();
    let did = "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH";
    assert!(orgs.get(did).await.unwrap().is_none());
    orgs.put(did, "delibera-org", "key-1").await.unwrap();
    orgs.put(did, "delibera-org-2", "key-2").await.unwrap();
    let (name, key) = orgs.get(did).await.unwrap().unwrap();
    assert_eq!((name.as_str(), key.as_str()), ("delibera-org-2", "key-2"));

    let journal = database.deployments();
    let env = AgentEnv::new(
        AgentRole::Worker,
        AgentIdentity::from_keypair(&Keypair::generate()),
        "Worker Alpha",
        "ensue-key",
    );
    let record = LocalDeploymentRecord {
        id: "local-1".into(),
        port: 4100,
        spec: AgentSpec::new(
            DeploymentName::new("delibera-worker-alpha-0011223344556677").unwrap(),
            env,
        ),
    };
    // A store that refuses a write only for now is waited out: the local
    // deployer would stop an agent its journal could not remember.
    let refused = database.simulated_refusals();
    database.simulate_full_disk_briefly(1);
    journal.save(&record).await.unwrap();
    assert_eq!(database.simulated_refusals(), refused + 1);
    let loaded = journal.load().await.unwrap();
    assert!(matches!(
        loaded.as_slice(),
        [JournalEntry::Record(entry)] if entry.id == "local-1" && entry.port == 4100
    ));
    journal.remove("local-1").await.unwrap();
    assert!(journal.load().await.unwrap().is_empty());

    let reopened = db.open().await;
    let (_, key) = reopened.org_keys().get(did).await.unwrap().unwrap();
    assert_eq!(key.as_str(), "key-2");
}

/// Replicas on one PostgreSQL database: what one commits, another reads at
/// once; only one holds the leader lock, and another takes it when the
/// holder lets go (its process ends).
#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_jobs_and_one_at_a_time_leads() {
    let Some(db) = TestDb::postgres("replicas_share_jobs_and_one_at_a_time_leads").await else {
        return;
    };
    let (first, second) = (db.open().await, db.open().await);
    assert!(first.is_shared());
    let mut job = new_job();
    first.jobs().insert(&job).await.unwrap();
    assert_eq!(
        shown_status(&second, job.id).await.as_deref(),
        Some("generating_identity")
    );
    job.status = JobStatus::CreatingSpace;
    second.jobs().save(&job).await.unwrap();
    assert_eq!(
        first.jobs().get(job.id).await.unwrap().unwrap().status,
        JobStatus::CreatingSpace
    );

    let held = first.try_leader_lock().await.unwrap().expect("a free lock");
    assert!(held.is_shared());
    assert!(second.try_leader_lock().await.unwrap().is_none());
    let waiting = tokio::spawn(async move { second.leader_lock().await });
    drop(held);
    let mut taken = within("the second replica to take the leader lock", waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(first.try_leader_lock().await.unwrap().is_none());
    // The lock is held, not lost.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), taken.lost())
            .await
            .is_err()
    );
}

/// A job is leased to the replica that stores it; another can claim it
/// only once the lease runs out, and from then on the first one's writes
/// are refused and its renewals come back empty. A job saved in a status
/// nobody works on is leased to nobody.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_is_claimed_only_once_it_runs_out_and_fences_its_old_holder() {
    let Some(db) =
        TestDb::postgres("a_lease_is_claimed_only_once_it_runs_out_and_fences_its_old_holder")
            .await
    else {
        return;
    };
    let (first, second) = (db.open().await.jobs(), db.open().await.jobs());
    let driven: Vec<JobStatus> = JobStatus::ALL
        .into_iter()
        .filter(|status| status.is_runner_owned())
        .collect();
    let mut job = new_job();
    first.insert(&job).await.unwrap();
    let holder = db.lease_holder(job.id).await.expect("leased when stored");
    assert!(second.claim(&driven, 10).await.unwrap().is_empty());
    assert!(
        first.renew(&[job.id]).await.unwrap().is_empty(),
        "held, not lost"
    );
    job.status = JobStatus::CreatingSpace;
    first.save_held(&job).await.unwrap();

    db.expire_leases().await;
    let claimed = second.claim(&driven, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].status, JobStatus::CreatingSpace);
    let new_holder = db.lease_holder(job.id).await.unwrap();
    assert_ne!(new_holder, holder);
    assert!(second.claim(&driven, 10).await.unwrap().is_empty());

    job.status = JobStatus::PreparingPhala;
    match first.save_held(&job).await {
        Err(StoreError::LeaseLost { id }) => assert_eq!(id, job.id.to_string()),
        other => panic!("the old holder wrote: {other:?}"),
    }
    assert_eq!(first.renew(&[job.id]).await.unwrap(), vec![job.id], "lost");
    assert_eq!(
        first.get(job.id).await.unwrap().unwrap().status,
        JobStatus::CreatingSpace
    );

    // Its new holder brings it to the wallet step: nobody holds it there,
    // and a registration starting takes it.
    job.status = JobStatus::AwaitingNearSignature;
    second.save_held(&job).await.unwrap();
    assert_eq!(db.lease_holder(job.id).await, None);
    // Cleared by its holder's own write: not lost to anyone.
    assert!(second.renew(&[job.id]).await.unwrap().is_empty());
    job.status = JobStatus::Registering;
    assert!(
        first
            .take_if_status(&job, JobStatus::AwaitingNearSignature)
            .await
            .unwrap()
    );
    assert_eq!(db.lease_holder(job.id).await.as_deref(), Some(&*holder));
    assert!(
        second
            .claim(&[JobStatus::Registering], 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(first.renew(&[job.id]).await.unwrap().is_empty());
    first.save_held(&job).await.unwrap();
    db.expire_leases().await;
    assert_eq!(
        second
            .claim(&[JobStatus::Registering], 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// Replicas claiming at the same instant never get the same job, and
/// together they get every job whose lease ran out.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_claiming_together_split_the_jobs() {
    let Some(db) = TestDb::postgres("replicas_claiming_together_split_the_jobs").await else {
        return;
    };
    let stored = db.open().await.jobs();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..60 {
        let job = new_job();
        stored.insert(&job).await.unwrap();
        ids.insert(job.id);
    }
    db.expire_leases().await;
    let mut claims = Vec::new();
    for _ in 0..4 {
        let jobs = db.open().await.jobs();
        claims.push(tokio::spawn(async move {
            let mut claimed = Vec::new();
            loop {
                let batch = jobs
                    .claim(&[JobStatus::GeneratingIdentity], 7)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return claimed;
                }
                claimed.extend(batch.into_iter().map(|job| job.id));
            }
        }));
    }
    let mut claimed = Vec::new();
    for claim in claims {
        claimed.extend(claim.await.unwrap());
    }
    let distinct: std::collections::HashSet<Uuid> = claimed.iter().copied().collect();
    assert_eq!(distinct.len(), claimed.len(), "a job was claimed twice");
    assert_eq!(distinct, ids);
}

/// A standby whose sessions carry a statement timeout (set for a role or a
/// database, as operators do) waits for the leader lock past it instead of
/// failing, which would end the replica.
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_timeout_does_not_end_the_wait_for_the_leader_lock() {
    let Some(db) =
        TestDb::postgres("a_statement_timeout_does_not_end_the_wait_for_the_leader_lock").await
    else {
        return;
    };
    let first = db.open().await;
    let url = db.url().unwrap().replace(
        "options=-c%20search_path",
        "options=-c%20statement_timeout%3D100%20-c%20search_path",
    );
    let impatient = Database::connect_postgres(
        &PostgresConfig::parse(&url).unwrap(),
        SecretBox::from_key(&KEY),
    )
    .await
    .unwrap();
    let held = first.try_leader_lock().await.unwrap().expect("a free lock");
    let waiting = tokio::spawn(async move { impatient.leader_lock().await });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !waiting.is_finished(),
        "the wait ended while the lock was held"
    );
    drop(held);
    within("the standby to take the leader lock", waiting)
        .await
        .unwrap()
        .unwrap();
}

/// A replica does not start beside replicas of a release from before job
/// leases (which drive every job they find): the earlier release's runner
/// lock, held or awaited, refuses it, naming why.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_refuses_to_run_beside_a_release_without_leases() {
    let Some(db) =
        TestDb::postgres("a_replica_refuses_to_run_beside_a_release_without_leases").await
    else {
        return;
    };
    // What an earlier release's runner holds: (0x444c4250, 2 # hashtext(schema)).
    db.execute("SELECT pg_advisory_lock(1145848400, 2 # hashtext(current_schema()))")
        .await;
    match db.open_with(&KEY).await {
        Err(StoreError::Schema { reason, .. }) => {
            assert!(reason.contains("earlier release"), "{reason}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("started beside an earlier release"),
    }
    db.execute("SELECT pg_advisory_unlock(1145848400, 2 # hashtext(current_schema()))")
        .await;
    db.open().await;
}

/// Over TLS the server's certificate is verified: with the CA that issued
/// it (`sslrootcert`) the store connects, and its sessions are encrypted;
/// without it (the public roots only) the start is refused, naming why.
/// Needs `TEST_DATABASE_TLS_URL` (`.ci/run` sets it where openssl is found).
#[tokio::test(flavor = "multi_thread")]
async fn over_tls_the_database_server_is_verified() {
    let Some(db) = TestDb::postgres("over_tls_the_database_server_is_verified").await else {
        return;
    };
    let Ok(tls_url) = std::env::var("TEST_DATABASE_TLS_URL") else {
        let _ = writeln!(
            std::io::stderr(),
            "skipped over_tls_the_database_server_is_verified: TEST_DATABASE_TLS_URL is not set"
        );
        return;
    };
    // The test's own schema, over TLS this time.
    let search_path = &db.url().unwrap()[db.url().unwrap().find("options=").unwrap()..];
    let url = format!("{tls_url}&{search_path}");
    let config = PostgresConfig::parse(&url).unwrap();
    let database = Database::connect_postgres(&config, SecretBox::from_key(&KEY))
        .await
        .unwrap();
    let job = new_job();
    database.jobs().insert(&job).await.unwrap();
    assert!(database.jobs().get(job.id).await.unwrap().is_some());
    let TestDb::Postgres { client, .. } = &db else {
        unreachable!()
    };
    let encrypted: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE s.ssl AND a.application_name = 'protocol-api'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted > 0, "no encrypted session of the store");

    let (without_root, _) = url.split_once("&sslrootcert=").unwrap();
    let unverified = format!("{without_root}&{search_path}");
    let config = PostgresConfig::parse(&unverified).unwrap();
    match Database::connect_postgres(&config, SecretBox::from_key(&KEY)).await {
        Err(error) => {
            let error = error.to_string();
            assert!(
                error.contains("certificate") || error.contains("Issuer"),
                "{error}"
            );
        }
        Ok(_) => panic!("connected to a server it could not verify"),
    }
}

/// A database a newer release migrated is refused, naming why.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_migrated_by_a_newer_release_is_refused() {
    let Some(db) = TestDb::postgres("a_database_migrated_by_a_newer_release_is_refused").await
    else {
        return;
    };
    db.open().await;
    db.execute("INSERT INTO schema_migrations (version, name) VALUES (999, '0999_future')")
        .await;
    match db.open_with(&KEY).await {
        Err(StoreError::Schema { reason, .. }) => {
            assert!(reason.contains("newer"), "{reason}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("opened"),
    }
}

/// A leader whose lock's session is ended from outside (a database
/// restart, a cut connection) hears that it lost the lock, so it can stop
/// before another replica takes the sweeps over.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_hears_when_its_lock_is_lost() {
    let Some(db) = TestDb::postgres("a_leader_hears_when_its_lock_is_lost").await else {
        return;
    };
    let (first, second) = (db.open().await, db.open().await);
    let mut held = first.try_leader_lock().await.unwrap().expect("a free lock");
    let ended = db.end_leader_lock_session().await;
    assert!(ended >= 1, "the lock's session was found");
    let reason = within("the leader to hear its lock is lost", held.lost()).await;
    assert!(reason.contains("connection"), "{reason}");
    within("the other replica to take the lock", second.leader_lock())
        .await
        .unwrap();
}

/// A shared database that cannot be reached for a while is a 503 with
/// `Retry-After`, as a full disk is; its reason stays in the log.
#[test]
fn an_unreachable_database_is_a_retry_later_not_an_internal_error() {
    use protocol_api::error::ApiError;

    let unreachable = ApiError::from(StoreError::Postgres {
        database: "postgres://db:5432/jobs".into(),
        reason: "connection refused".into(),
        transient: true,
    });
    assert_eq!(unreachable.status_code().as_u16(), 503);
    assert!(!unreachable.to_string().contains("connection refused"));
    let failed = ApiError::from(StoreError::Postgres {
        database: "postgres://db:5432/jobs".into(),
        reason: "relation \"jobs\" does not exist (42P01)".into(),
        transient: false,
    });
    assert_eq!(failed.status_code().as_u16(), 500);
}
