//! Durable job storage in SQLite.
//!
//! Every transition is written (and fsynced: WAL with `synchronous=FULL`)
//! before anyone can read it, because the status route reads from here, never
//! from memory. Secrets are sealed with the server key before they touch disk.

use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use delibera_coordination::{DeploymentJournal, LocalDeploymentRecord};

use super::model::{Job, JobSecrets, JobStatus};
use crate::seal::{SealError, SecretBox};

/// Why the job store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("job database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored record could not be decoded.
    #[error("job record {id} is corrupt: {reason}")]
    Corrupt {
        /// The job.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The sealed secrets could not be opened.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The blocking task was cancelled (the runtime is shutting down).
    #[error("job store task was cancelled")]
    Cancelled,
}

/// The job table.
#[derive(Clone)]
pub struct JobStore {
    conn: Arc<Mutex<Connection>>,
    secrets: SecretBox,
}

impl JobStore {
    /// Opens (creating if needed) the database file.
    pub fn open(path: &Path, secrets: SecretBox) -> Result<Self, StoreError> {
        Self::init(Connection::open(path)?, secrets)
    }

    /// A database that lives only as long as the value (tests).
    pub fn in_memory(secrets: SecretBox) -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?, secrets)
    }

    fn init(conn: Connection, secrets: SecretBox) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY,
                status TEXT NOT NULL,
                record TEXT NOT NULL,
                secrets BLOB NOT NULL,
                updated_at TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
            CREATE TABLE IF NOT EXISTS coordinator_orgs (
                coordinator_did TEXT PRIMARY KEY,
                org_name TEXT NOT NULL,
                api_key BLOB NOT NULL
            );
            CREATE TABLE IF NOT EXISTS local_deployments (
                cvm_id TEXT PRIMARY KEY,
                record BLOB NOT NULL
            );",
        )?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            secrets,
        })
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection, &SecretBox) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        let secrets = self.secrets.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock poisons it; the connection itself is
            // still consistent (SQLite rolls back the open transaction), so go on.
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut guard, &secrets)
        })
        .await
        .map_err(|_| StoreError::Cancelled)?
    }

    /// Stores a new job.
    pub async fn insert(&self, job: &Job) -> Result<(), StoreError> {
        let row = Row::encode(job, &self.secrets)?;
        self.with_conn(move |conn, _| {
            conn.execute(
                "INSERT INTO jobs (id, status, record, secrets, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![row.id, row.status, row.record, row.secrets, row.updated_at],
            )?;
            Ok(())
        })
        .await
    }

    /// Replaces a job's stored state.
    pub async fn save(&self, job: &Job) -> Result<(), StoreError> {
        let row = Row::encode(job, &self.secrets)?;
        self.with_conn(move |conn, _| {
            conn.execute(
                "UPDATE jobs SET status = ?2, record = ?3, secrets = ?4, updated_at = ?5 WHERE id = ?1",
                params![row.id, row.status, row.record, row.secrets, row.updated_at],
            )?;
            Ok(())
        })
        .await
    }

    /// Saves `job` only if the stored status is still `expected`; returns
    /// whether it did. Two concurrent `register` calls cannot both win.
    pub async fn save_if_status(&self, job: &Job, expected: JobStatus) -> Result<bool, StoreError> {
        let row = Row::encode(job, &self.secrets)?;
        self.with_conn(move |conn, _| {
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
        self.with_conn(move |conn, secrets| {
            let row = conn
                .query_row(
                    "SELECT record, secrets FROM jobs WHERE id = ?1",
                    params![id.to_string()],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?)),
                )
                .optional()?;
            row.map(|(record, sealed)| Row::decode(&id.to_string(), &record, &sealed, secrets))
                .transpose()
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
        self.with_conn(move |conn, secrets| {
            let mut statement =
                conn.prepare("SELECT id, status, record, secrets FROM jobs ORDER BY updated_at")?;
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

    /// Remembers a coordinator's Ensue org so the workers provisioned for it
    /// get its key (sealed, like every secret; kept after the job is purged).
    pub async fn put_coordinator_org(
        &self,
        coordinator_did: &str,
        org_name: &str,
        api_key: &str,
    ) -> Result<(), StoreError> {
        let sealed = self.secrets.seal(api_key.as_bytes());
        let (did, name) = (coordinator_did.to_owned(), org_name.to_owned());
        self.with_conn(move |conn, _| {
            conn.execute(
                "INSERT OR REPLACE INTO coordinator_orgs (coordinator_did, org_name, api_key) VALUES (?1, ?2, ?3)",
                params![did, name, sealed],
            )?;
            Ok(())
        })
        .await
    }

    /// The Ensue org of a coordinator this server provisioned: `(name, api key)`.
    pub async fn coordinator_org(
        &self,
        coordinator_did: &str,
    ) -> Result<Option<(String, zeroize::Zeroizing<String>)>, StoreError> {
        let did = coordinator_did.to_owned();
        self.with_conn(move |conn, secrets| {
            let row = conn
                .query_row(
                    "SELECT org_name, api_key FROM coordinator_orgs WHERE coordinator_did = ?1",
                    params![did],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?)),
                )
                .optional()?;
            row.map(|(name, sealed)| {
                let key = secrets.open(&sealed)?;
                let key = String::from_utf8(key.to_vec()).map_err(|_| StoreError::Corrupt {
                    id: did.clone(),
                    reason: "coordinator org key is not UTF-8".into(),
                })?;
                Ok((name, zeroize::Zeroizing::new(key)))
            })
            .transpose()
        })
        .await
    }

    /// Deletes finished jobs last changed before `cutoff`; returns how many.
    pub async fn purge_finished(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        self.with_conn(move |conn, _| {
            Ok(conn.execute(
                "DELETE FROM jobs WHERE status IN ('complete', 'failed') AND updated_at < ?1",
                params![cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)],
            )?)
        })
        .await
    }
}

/// Local mode's in-process agents, remembered (env sealed, like every secret)
/// so a restarted server starts them again on their registered endpoints.
#[async_trait::async_trait]
impl DeploymentJournal for JobStore {
    async fn save(&self, record: &LocalDeploymentRecord) -> delibera_coordination::Result<()> {
        let json = zeroize::Zeroizing::new(serde_json::to_vec(record).map_err(journal_error)?);
        let sealed = self.secrets.seal(&json);
        let cvm_id = record.cvm_id.clone();
        self.with_conn(move |conn, _| {
            conn.execute(
                "INSERT OR REPLACE INTO local_deployments (cvm_id, record) VALUES (?1, ?2)",
                params![cvm_id, sealed],
            )?;
            Ok(())
        })
        .await
        .map_err(journal_error)
    }

    async fn remove(&self, cvm_id: &str) -> delibera_coordination::Result<()> {
        let cvm_id = cvm_id.to_owned();
        self.with_conn(move |conn, _| {
            conn.execute(
                "DELETE FROM local_deployments WHERE cvm_id = ?1",
                params![cvm_id],
            )?;
            Ok(())
        })
        .await
        .map_err(journal_error)
    }

    async fn load(&self) -> delibera_coordination::Result<Vec<LocalDeploymentRecord>> {
        self.with_conn(|conn, secrets| {
            let mut statement = conn.prepare("SELECT cvm_id, record FROM local_deployments")?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter()
                .map(|(cvm_id, sealed)| {
                    let json = secrets.open(&sealed)?;
                    serde_json::from_slice(&json).map_err(|error| StoreError::Corrupt {
                        id: cvm_id,
                        reason: error.to_string(),
                    })
                })
                .collect()
        })
        .await
        .map_err(journal_error)
    }
}

fn journal_error(error: impl std::fmt::Display) -> delibera_coordination::Error {
    delibera_coordination::Error::Journal {
        reason: error.to_string(),
    }
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
            // Fixed-width UTC text so SQL string comparison orders by time.
            updated_at: job
                .updated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        })
    }

    fn decode(
        id: &str,
        record: &str,
        sealed: &[u8],
        secret_box: &SecretBox,
    ) -> Result<Job, StoreError> {
        let corrupt = |error: serde_json::Error| StoreError::Corrupt {
            id: id.to_owned(),
            reason: error.to_string(),
        };
        let mut job: Job = serde_json::from_str(record).map_err(corrupt)?;
        let opened = secret_box.open(sealed)?;
        job.secrets = serde_json::from_slice::<JobSecrets>(&opened).map_err(corrupt)?;
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::model::{NewJob, Role};

    fn new_job() -> Job {
        Job::new(
            NewJob {
                role: Role::Worker,
                display_name: "Worker Alpha".into(),
                near_account: "alice.testnet".into(),
                coordinator_did: Some(
                    "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH".into(),
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
            let store = JobStore::open(&path, secret_box.clone()).unwrap();
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
        let reopened = JobStore::open(&path, secret_box).unwrap();
        let loaded = reopened.get(job.id).await.unwrap().unwrap();
        assert_eq!(loaded.status, JobStatus::AwaitingNearSignature);
        assert_eq!(
            loaded.secrets.storacha_private_key.as_deref(),
            Some("MgCYsecret")
        );
    }

    #[tokio::test]
    async fn only_runner_owned_jobs_resume_and_cas_allows_one_winner() {
        let store = JobStore::in_memory(SecretBox::from_key(&[2; 32])).unwrap();
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
        let store = JobStore::in_memory(SecretBox::from_key(&[3; 32])).unwrap();
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
    async fn a_secret_sealed_under_another_key_is_an_error_not_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        let job = new_job();
        JobStore::open(&path, SecretBox::from_key(&[1; 32]))
            .unwrap()
            .insert(&job)
            .await
            .unwrap();
        let other = JobStore::open(&path, SecretBox::from_key(&[9; 32])).unwrap();
        assert!(matches!(
            other.get(job.id).await,
            Err(StoreError::Seal(SealError::Open))
        ));
    }
}
