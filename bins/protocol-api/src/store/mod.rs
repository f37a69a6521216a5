//! Durable state in one SQLite file, split by what it holds: the provisioning
//! jobs and the idempotency keys they were started under ([`JobStore`]), the
//! coordinators' Ensue org keys ([`OrgKeys`]) and the local deployer's
//! journal ([`DeploymentStore`]).
//!
//! Every write is committed (WAL with `synchronous=FULL`, so fsynced) before
//! anyone can read it, because the status route reads from here, never from
//! memory. Secrets are sealed with the server key before they touch disk.
//!
//! A damaged file is refused, never taken for a fresh one: a new database is
//! built beside its final name and renamed into place, so an empty or
//! headerless file is never a half-made one, and every database carries this
//! server's application id and schema version, so a missing table is damage.

mod deployments;
mod file;
mod jobs;
mod orgs;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, ErrorCode};

pub use deployments::DeploymentStore;
pub use file::DatabaseFile;
pub use jobs::{JobStore, Started, UnreadableJob};
pub use orgs::OrgKeys;

use crate::seal::{SealError, SecretBox};

/// Why the store failed. Every variant about the file names its path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed on the database.
    #[error("database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: String,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The disk holding the database is full; writes fail until space returns.
    #[error("database {path}: the disk is full")]
    Full {
        /// The database file.
        path: String,
    },
    /// The file is damaged, or is not this server's database.
    #[error(
        "database {path} cannot be used: {reason}; restore it from a backup, or move it away \
         to start with no jobs"
    )]
    Damaged {
        /// The database file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The database file exists but this process cannot write it.
    #[error("database {path} is not writable: {source}")]
    Unwritable {
        /// The database file.
        path: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The server key is not the key that sealed the database's secrets.
    #[error(
        "the server key does not open the secrets sealed in {path}: PROTOCOL_API_SECRET_KEY \
         (or server-secret.key) must be the key that sealed them"
    )]
    WrongKey {
        /// The database file.
        path: String,
    },
    /// The data dir could not be prepared, or is not writable.
    #[error(transparent)]
    DataDir(#[from] delibera_data_dir::Error),
    /// A stored record could not be decoded.
    #[error("stored record {id} is corrupt: {reason}")]
    Corrupt {
        /// The record (a job id, a DID, a deployment id).
        id: String,
        /// What is wrong with it (never a secret value).
        reason: String,
    },
    /// The sealed secrets could not be opened.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The blocking task was cancelled (the runtime is shutting down).
    #[error("job store task was cancelled")]
    Cancelled,
}

impl StoreError {
    /// Whether the failure passes by itself (a full disk, a busy database),
    /// so the same operation may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Full { .. } => true,
            StoreError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }

    /// SQLite's `error` on the database at `path`, classified.
    fn sqlite(path: &str, error: rusqlite::Error) -> Self {
        let path = path.to_owned();
        match error.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::Full { path },
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Damaged {
                path,
                reason: error.to_string(),
            },
            _ => StoreError::Sqlite {
                path,
                source: error,
            },
        }
    }
}

/// What a unit of work on the connection fails with; SQLite's errors get the
/// database's path on the way out.
enum WorkError {
    Sqlite(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for WorkError {
    fn from(error: rusqlite::Error) -> Self {
        WorkError::Sqlite(error)
    }
}

impl From<StoreError> for WorkError {
    fn from(error: StoreError) -> Self {
        WorkError::Store(error)
    }
}

impl From<SealError> for WorkError {
    fn from(error: SealError) -> Self {
        WorkError::Store(StoreError::Seal(error))
    }
}

impl From<delibera_data_dir::Error> for WorkError {
    fn from(error: delibera_data_dir::Error) -> Self {
        WorkError::Store(StoreError::DataDir(error))
    }
}

impl WorkError {
    /// The store's error, SQLite's classified for the database at `path`.
    fn at(self, path: &str) -> StoreError {
        match self {
            WorkError::Sqlite(error) => StoreError::sqlite(path, error),
            WorkError::Store(error) => error,
        }
    }
}

/// The database and the key that seals its secrets.
#[derive(Clone)]
pub struct Database {
    conn: Arc<Mutex<Connection>>,
    secrets: SecretBox,
    path: Arc<str>,
    simulated_full_disk: Arc<AtomicBool>,
    refused_writes: Arc<AtomicU64>,
}

impl Database {
    /// Opens the database file at `path`, creating it when missing; a
    /// damaged file, or one whose secrets `secrets` does not open, is refused.
    pub fn open(path: &std::path::Path, secrets: SecretBox) -> Result<Self, StoreError> {
        DatabaseFile::open(path)?.unlock(secrets)
    }

    /// A database that lives only as long as the value (tests).
    pub fn in_memory(secrets: SecretBox) -> Result<Self, StoreError> {
        DatabaseFile::in_memory()?.unlock(secrets)
    }

    fn new(conn: Connection, secrets: SecretBox, path: Arc<str>) -> Self {
        Self {
            conn: Arc::new(Mutex::new(conn)),
            secrets,
            path,
            simulated_full_disk: Arc::new(AtomicBool::new(false)),
            refused_writes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The database file's path.
    pub fn path(&self) -> &str {
        &self.path
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

    /// While `full` is true, every write fails exactly as SQLite fails on a
    /// full disk (`SQLITE_FULL`), through the same error path; reads go on.
    /// This is how the tests show what a full disk does without filling one.
    pub fn simulate_full_disk(&self, full: bool) {
        self.simulated_full_disk.store(full, Ordering::SeqCst);
    }

    /// How many writes the simulated full disk has refused so far.
    pub fn simulated_refusals(&self) -> u64 {
        self.refused_writes.load(Ordering::SeqCst)
    }

    /// Runs `work`, which only reads, on the connection off the async threads.
    async fn with_conn<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection, &SecretBox) -> Result<T, WorkError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        let secrets = self.secrets.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock poisons it; the connection itself is
            // still consistent (SQLite rolls back the open transaction), so go on.
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut guard, &secrets).map_err(|error| error.at(&path))
        })
        .await
        .map_err(|_| StoreError::Cancelled)?
    }

    /// Runs `work`, which writes, on the connection.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection, &SecretBox) -> Result<T, WorkError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let simulated_full_disk = self.simulated_full_disk.clone();
        let refused_writes = self.refused_writes.clone();
        self.with_conn(move |conn, secrets| {
            if simulated_full_disk.load(Ordering::SeqCst) {
                refused_writes.fetch_add(1, Ordering::SeqCst);
                return Err(WorkError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                    Some("database or disk is full".into()),
                )));
            }
            work(conn, secrets)
        })
        .await
    }
}
