//! The provisioning jobs: one row per job, its non-secret fields as JSON and
//! its secrets sealed beside them.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use uuid::Uuid;

use super::{Database, StoreError, WorkError};
use crate::jobs::{Job, JobSecrets, JobStatus};
use crate::seal::SecretBox;

/// The job table.
#[derive(Clone)]
pub struct JobStore {
    db: Database,
}

/// An unfinished job whose stored record could not be read, now marked failed.
#[derive(Debug, Clone)]
pub struct UnreadableJob {
    /// The job id.
    pub id: String,
    /// What could not be read (never a secret value).
    pub reason: String,
}

impl JobStore {
    pub(super) fn new(db: Database) -> Self {
        Self { db }
    }

    /// Stores a new job.
    pub async fn insert(&self, job: &Job) -> Result<(), StoreError> {
        let row = Row::encode(job, &self.db.secrets)?;
        self.db.write(move |conn, _| {
            conn.execute(
                "INSERT INTO jobs (id, status, record, secrets, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.id, row.status, row.record, row.secrets, row.updated_at],
            )?;
            Ok(())
        })
        .await
    }

    /// Stores a new job under an idempotency key (a digest) in one
    /// transaction, unless the key already names a job: then nothing is
    /// stored and that job's id is returned, with whether it was started by
    /// the same request (`request`, a digest).
    pub async fn insert_idempotent(
        &self,
        job: &Job,
        key: [u8; 32],
        request: [u8; 32],
    ) -> Result<Started, StoreError> {
        let row = Row::encode(job, &self.db.secrets)?;
        self.db
            .write(move |conn, _| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                if let Some(started) = started_under(&tx, &key, &request)? {
                    return Ok(started);
                }
                tx.execute(
                    "INSERT INTO jobs (id, status, record, secrets, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![row.id, row.status, row.record, row.secrets, row.updated_at],
                )?;
                // REPLACE: a key whose job was purged names a new job now.
                tx.execute(
                    "INSERT OR REPLACE INTO idempotency_keys (key_sha256, job_id, request_sha256)
                     VALUES (?1, ?2, ?3)",
                    params![key.as_slice(), row.id, request.as_slice()],
                )?;
                tx.commit()?;
                Ok(Started::New)
            })
            .await
    }

    /// The job an idempotency key (a digest) started, if any, and whether
    /// the same request (a digest) started it.
    pub async fn started_under_key(
        &self,
        key: [u8; 32],
        request: [u8; 32],
    ) -> Result<Option<Started>, StoreError> {
        self.db
            .with_conn(move |conn, _| started_under(conn, &key, &request))
            .await
    }

    /// Replaces a job's stored state.
    pub async fn save(&self, job: &Job) -> Result<(), StoreError> {
        let row = Row::encode(job, &self.db.secrets)?;
        self.db
            .write(move |conn, _| {
                row.update(conn)?;
                Ok(())
            })
            .await
    }

    /// Saves `job` only if the stored status is still `expected`; returns
    /// whether it did. Two concurrent `register` calls cannot both win.
    pub async fn save_if_status(&self, job: &Job, expected: JobStatus) -> Result<bool, StoreError> {
        let row = Row::encode(job, &self.db.secrets)?;
        self.db
            .write(move |conn, _| {
                let changed = conn.execute(
                    "UPDATE jobs SET status = ?2, record = ?3, secrets = ?4, updated_at = ?5
                 WHERE id = ?1 AND status = ?6",
                    params![
                        row.id,
                        row.status,
                        row.record,
                        row.secrets,
                        row.updated_at,
                        expected.as_str()
                    ],
                )?;
                Ok(changed == 1)
            })
            .await
    }

    /// A job by id.
    pub async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        self.db
            .with_conn(move |conn, secrets| {
                let row = conn
                    .query_row(
                        "SELECT record, secrets FROM jobs WHERE id = ?1",
                        params![id.to_string()],
                        |row| Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?)),
                    )
                    .optional()?;
                Ok(row
                    .map(|(record, sealed)| Row::decode(&id.to_string(), &record, &sealed, secrets))
                    .transpose()?)
            })
            .await
    }

    /// Jobs the background runner must carry on after a restart.
    pub async fn resumable(&self) -> Result<Vec<Job>, StoreError> {
        let owned: Vec<JobStatus> = JobStatus::ALL
            .into_iter()
            .filter(|status| status.is_runner_owned())
            .collect();
        self.in_status(owned).await
    }

    /// Every job in one of `statuses`, oldest change first.
    pub async fn in_status(&self, statuses: Vec<JobStatus>) -> Result<Vec<Job>, StoreError> {
        let owned: Vec<&'static str> = statuses.into_iter().map(JobStatus::as_str).collect();
        self.db
            .with_conn(move |conn, secrets| {
                let mut statement = conn
                    .prepare("SELECT id, status, record, secrets FROM jobs ORDER BY updated_at")?;
                let rows = statement.query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Vec<u8>>(3)?,
                    ))
                })?;
                let mut jobs = Vec::new();
                for row in rows {
                    let (id, status, record, sealed) = row?;
                    if owned.contains(&status.as_str()) {
                        jobs.push(Row::decode(&id, &record, &sealed, secrets)?);
                    }
                }
                Ok(jobs)
            })
            .await
    }

    /// Marks `failed` every unfinished job whose stored record cannot be
    /// read, so one damaged record neither stops start-up nor comes back at
    /// every start; returns them. A job whose fields still read but whose
    /// sealed secrets do not keeps its fields and gets the reason as its
    /// error (the secrets are lost either way, and a failed job never shows
    /// them). A job whose fields do not read gets only its status column
    /// changed, and reading it stays an error that names it.
    pub async fn fail_unreadable(&self) -> Result<Vec<UnreadableJob>, StoreError> {
        self.db
            .write(|conn, secrets| {
                let transaction = conn.transaction()?;
                let rows: Vec<(String, String, Vec<u8>)> = transaction
                    .prepare("SELECT id, record, secrets FROM jobs WHERE status != 'failed'")?
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                    .collect::<Result<_, _>>()?;
                let now = Utc::now();
                let mut unreadable = Vec::new();
                for (id, record, sealed) in rows {
                    let reason = match Row::decode(&id, &record, &sealed, secrets) {
                        Ok(_) => continue,
                        Err(StoreError::Corrupt { reason, .. }) => reason,
                        Err(other) => other.to_string(),
                    };
                    match serde_json::from_str::<Job>(&record) {
                        Ok(mut job) => {
                            job.status = JobStatus::Failed;
                            job.progress = None;
                            job.updated_at = now;
                            job.error = Some(format!(
                                "the server cannot read this job's stored secrets ({reason}), so it \
                                 cannot go on; provision the agent again"
                            ));
                            job.secrets = JobSecrets::default();
                            Row::encode(&job, secrets)?.update(&transaction)?;
                        }
                        Err(_) => {
                            transaction.execute(
                                "UPDATE jobs SET status = ?2, updated_at = ?3 WHERE id = ?1",
                                params![id, JobStatus::Failed.as_str(), timestamp(now)],
                            )?;
                        }
                    }
                    unreadable.push(UnreadableJob { id, reason });
                }
                transaction.commit()?;
                Ok(unreadable)
            })
            .await
    }

    /// Deletes finished jobs last changed before `cutoff`, and the
    /// idempotency keys they were started under; returns how many jobs.
    pub async fn purge_finished(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        self.db
            .write(move |conn, _| {
                let cutoff = timestamp(cutoff);
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute(
                    "DELETE FROM idempotency_keys WHERE job_id IN (
                        SELECT id FROM jobs WHERE status IN ('complete', 'failed') AND updated_at < ?1)",
                    params![cutoff],
                )?;
                let purged = tx.execute(
                    "DELETE FROM jobs WHERE status IN ('complete', 'failed') AND updated_at < ?1",
                    params![cutoff],
                )?;
                tx.commit()?;
                Ok(purged)
            })
            .await
    }
}

/// What an idempotency key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// Nothing yet: the job was stored now.
    New,
    /// The job an earlier request started under the key.
    Earlier {
        /// That job.
        job_id: Uuid,
        /// Whether that request was the same as this one.
        same_request: bool,
    },
}

fn started_under(
    conn: &rusqlite::Connection,
    key: &[u8; 32],
    request: &[u8; 32],
) -> Result<Option<Started>, WorkError> {
    let found = conn
        .query_row(
            "SELECT k.job_id, k.request_sha256 FROM idempotency_keys k
             JOIN jobs j ON j.id = k.job_id WHERE k.key_sha256 = ?1",
            params![key.as_slice()],
            |row| Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?)),
        )
        .optional()?;
    found
        .map(|(id, stored_request)| {
            let job_id = Uuid::parse_str(&id).map_err(|error| {
                WorkError::Store(StoreError::Corrupt {
                    id: id.clone(),
                    reason: error.to_string(),
                })
            })?;
            Ok(Started::Earlier {
                job_id,
                same_request: stored_request.as_slice() == request.as_slice(),
            })
        })
        .transpose()
}

/// Fixed-width UTC text, so SQL string comparison orders by time.
fn timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

struct Row {
    id: String,
    status: &'static str,
    record: String,
    secrets: Vec<u8>,
    updated_at: String,
}

impl Row {
    fn encode(job: &Job, secret_box: &SecretBox) -> Result<Self, StoreError> {
        let corrupt = |error: serde_json::Error| StoreError::Corrupt {
            id: job.id.to_string(),
            reason: error.to_string(),
        };
        let record = serde_json::to_string(job).map_err(corrupt)?;
        let secrets = zeroize::Zeroizing::new(serde_json::to_vec(&job.secrets).map_err(corrupt)?);
        Ok(Self {
            id: job.id.to_string(),
            status: job.status.as_str(),
            record,
            secrets: secret_box.seal(&secrets),
            updated_at: timestamp(job.updated_at),
        })
    }

    fn update(&self, conn: &rusqlite::Connection) -> Result<(), WorkError> {
        conn.execute(
            "UPDATE jobs SET status = ?2, record = ?3, secrets = ?4, updated_at = ?5 WHERE id = ?1",
            params![
                self.id,
                self.status,
                self.record,
                self.secrets,
                self.updated_at
            ],
        )?;
        Ok(())
    }

    /// The job stored in a row; every failure is [`StoreError::Corrupt`]
    /// naming the job.
    fn decode(
        id: &str,
        record: &str,
        sealed: &[u8],
        secret_box: &SecretBox,
    ) -> Result<Job, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: id.to_owned(),
            reason,
        };
        let mut job: Job = serde_json::from_str(record)
            .map_err(|error| corrupt(format!("its record does not parse: {error}")))?;
        let opened = secret_box
            .open(sealed)
            .map_err(|_| corrupt("its sealed secrets do not open".into()))?;
        // serde's message could quote a secret; say only where it failed.
        job.secrets = serde_json::from_slice::<JobSecrets>(&opened).map_err(|error| {
            corrupt(format!(
                "its secrets do not parse (line {}, column {})",
                error.line(),
                error.column()
            ))
        })?;
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::NewJob;
    use delibera_deploy::AgentRole;

    fn new_job() -> Job {
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

    #[tokio::test]
    async fn jobs_and_sealed_secrets_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        let secret_box = SecretBox::from_key(&[1; 32]);
        let mut job = new_job();
        {
            let store = Database::open(&path, secret_box.clone()).unwrap().jobs();
            store.insert(&job).await.unwrap();
            job.status = JobStatus::AwaitingNearSignature;
            job.secrets.storacha_private_key = Some("MgCYsecret".into());
            store.save(&job).await.unwrap();
        }
        let raw = std::fs::read(&path).unwrap();
        let wal = std::fs::read(dir.path().join("jobs.sqlite-wal")).unwrap_or_default();
        for bytes in [&raw, &wal] {
            assert!(
                !bytes.windows(10).any(|w| w == b"MgCYsecret"),
                "secret on disk in the clear"
            );
        }
        let reopened = Database::open(&path, secret_box).unwrap().jobs();
        let loaded = reopened.get(job.id).await.unwrap().unwrap();
        assert_eq!(loaded.status, JobStatus::AwaitingNearSignature);
        assert_eq!(
            loaded.secrets.storacha_private_key.as_deref(),
            Some("MgCYsecret")
        );
    }

    #[tokio::test]
    async fn only_runner_owned_jobs_resume_and_cas_allows_one_winner() {
        let store = Database::in_memory(SecretBox::from_key(&[2; 32]))
            .unwrap()
            .jobs();
        let mut running = new_job();
        running.status = JobStatus::WaitingForUrl;
        let mut waiting = new_job();
        waiting.status = JobStatus::AwaitingNearSignature;
        store.insert(&running).await.unwrap();
        store.insert(&waiting).await.unwrap();
        let resumable = store.resumable().await.unwrap();
        assert_eq!(
            resumable.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![running.id]
        );

        waiting.status = JobStatus::Registering;
        assert!(
            store
                .save_if_status(&waiting, JobStatus::AwaitingNearSignature)
                .await
                .unwrap()
        );
        assert!(
            !store
                .save_if_status(&waiting, JobStatus::AwaitingNearSignature)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn purge_removes_only_old_finished_jobs() {
        let store = Database::in_memory(SecretBox::from_key(&[3; 32]))
            .unwrap()
            .jobs();
        let mut old_done = new_job();
        old_done.status = JobStatus::Complete;
        old_done.updated_at = Utc::now() - chrono::Duration::days(30);
        let mut old_running = new_job();
        old_running.updated_at = old_done.updated_at;
        let fresh_done = {
            let mut job = new_job();
            job.status = JobStatus::Failed;
            job
        };
        for job in [&old_done, &old_running, &fresh_done] {
            store.insert(job).await.unwrap();
        }
        let purged = store
            .purge_finished(Utc::now() - chrono::Duration::days(7))
            .await
            .unwrap();
        assert_eq!(purged, 1);
        assert!(store.get(old_done.id).await.unwrap().is_none());
        assert!(store.get(old_running.id).await.unwrap().is_some());
        assert!(store.get(fresh_done.id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn sqlite_full_is_a_transient_full_disk_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        let database = Database::open(&path, SecretBox::from_key(&[4; 32])).unwrap();
        // SQLite's own page limit fails a growing write exactly as a full disk does.
        database
            .with_conn(|conn, _| {
                let pages: i64 = conn.query_row("PRAGMA page_count", [], |row| row.get(0))?;
                conn.pragma_update(None, "max_page_count", pages)?;
                Ok(())
            })
            .await
            .unwrap();
        let mut job = new_job();
        job.delegation = Some("x".repeat(64 * 1024));
        let error = database.jobs().insert(&job).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::Full { path: shown } if *shown == path.display().to_string()),
            "{error:?}"
        );
        assert!(error.is_transient());
        assert!(
            !StoreError::Corrupt {
                id: "x".into(),
                reason: "y".into()
            }
            .is_transient()
        );
    }

    #[tokio::test]
    async fn a_database_refuses_a_key_that_did_not_seal_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        Database::open(&path, SecretBox::from_key(&[1; 32]))
            .unwrap()
            .jobs()
            .insert(&new_job())
            .await
            .unwrap();
        let refused = Database::open(&path, SecretBox::from_key(&[9; 32])).err();
        assert!(
            matches!(&refused, Some(StoreError::WrongKey { path: shown }) if *shown == path.display().to_string()),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_secret_sealed_under_another_key_is_an_error_naming_the_job() {
        let database = Database::in_memory(SecretBox::from_key(&[1; 32])).unwrap();
        let job = new_job();
        database.jobs().insert(&job).await.unwrap();
        let foreign = SecretBox::from_key(&[9; 32]).seal(b"{}");
        let id = job.id.to_string();
        database
            .write(move |conn, _| {
                conn.execute(
                    "UPDATE jobs SET secrets = ?2 WHERE id = ?1",
                    params![id, foreign],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        match database.jobs().get(job.id).await {
            Err(StoreError::Corrupt { id, reason }) => {
                assert_eq!(id, job.id.to_string());
                assert_eq!(reason, "its sealed secrets do not open");
            }
            other => panic!("{other:?}"),
        }
    }
}
