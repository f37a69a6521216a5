//! Durable state in one SQLite file, split by what it holds: the provisioning
//! jobs and the idempotency keys they were started under ([`JobStore`]), the
//! coordinators' Ensue org keys ([`OrgKeys`]) and the local deployer's
//! journal ([`DeploymentStore`]).
//!
//! Every write is committed (WAL with `synchronous=FULL`, so fsynced) before
//! anyone can read it, because the status route reads from here, never from
//! memory. Secrets are sealed with the server key before they touch disk.

mod deployments;
mod jobs;
mod orgs;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

pub use deployments::DeploymentStore;
pub use jobs::{JobStore, Started};
pub use orgs::OrgKeys;

use crate::seal::{SealError, SecretBox};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("job database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored record could not be decoded.
    #[error("stored record {id} is corrupt: {reason}")]
    Corrupt {
        /// The record (a job id, a DID, a deployment id).
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

/// The database file and the key that seals its secrets.
#[derive(Clone)]
pub struct Database {
    conn: Arc<Mutex<Connection>>,
    secrets: SecretBox,
}

impl Database {
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
            );
            CREATE TABLE IF NOT EXISTS idempotency_keys (
                key_sha256 BLOB PRIMARY KEY,
                job_id TEXT NOT NULL,
                request_sha256 BLOB NOT NULL
            );
            CREATE INDEX IF NOT EXISTS idempotency_keys_job ON idempotency_keys(job_id);",
        )?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            secrets,
        })
    }

    /// The provisioning jobs.
    pub fn jobs(&self) -> JobStore {
        JobStore::new(self.clone())
    }

    /// The coordinators' Ensue org keys.
    pub fn org_keys(&self) -> OrgKeys {
        OrgKeys::new(self.clone())
    }

    /// The local deployer's journal.
    pub fn deployments(&self) -> DeploymentStore {
        DeploymentStore::new(self.clone())
    }

    /// Runs `work` on the connection off the async threads.
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
}
