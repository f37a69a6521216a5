//! Durable state in one SQLite file, split by what it holds: the provisioning
//! jobs and the idempotency keys they were started under ([`JobStore`]), the
//! coordinators' Ensue org keys ([`OrgKeys`]) and the local deployer's
//! journal ([`DeploymentStore`]).
//!
//! Every write is committed (WAL with `synchronous=FULL`, so fsynced) before
//! anyone can read it. One writer thread owns the connection that writes and
//! commits the writes that queued up meanwhile in one transaction (group
//! commit, see `writer`); each caller gets its answer only once its batch
//! committed. The status route and the coordinators' org keys read an
//! in-memory view of committed state ([`JobStore::status`],
//! [`OrgKeys::get`]), which the writer updates after each commit; everything
//! else reads through a second connection, after every write sent before
//! the read was answered (so a read sees what was written before it, as with
//! one connection), without holding up the writer or waiting for its fsync
//! when nothing is pending.
//! Secrets are sealed with the server key before they touch disk.
//!
//! A damaged file is refused, never taken for a fresh one: a new database is
//! built beside its final name and renamed into place, so an empty or
//! headerless file is never a half-made one, and every database carries this
//! server's application id and schema version, so a missing table is damage.

mod deployments;
mod feed;
mod file;
mod jobs;
mod orgs;
mod view;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, ErrorCode};

pub use deployments::DeploymentStore;
pub use file::DatabaseFile;
pub use jobs::{JobStore, Started, StatusFollower, UnreadableJob};
pub use orgs::OrgKeys;

use view::StatusView;
use writer::{Changes, Op, Write, WriteCounts, Writer};

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

    /// The same error again, for each caller of a batch that failed with it.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            StoreError::Sqlite { path, source } => StoreError::Sqlite {
                path: path.clone(),
                source: match source {
                    rusqlite::Error::SqliteFailure(code, message) => {
                        rusqlite::Error::SqliteFailure(*code, message.clone())
                    }
                    other => rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                        Some(other.to_string()),
                    ),
                },
            },
            StoreError::Full { path } => StoreError::Full { path: path.clone() },
            StoreError::Damaged { path, reason } => StoreError::Damaged {
                path: path.clone(),
                reason: reason.clone(),
            },
            StoreError::Unwritable { path, source } => StoreError::Unwritable {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            StoreError::WrongKey { path } => StoreError::WrongKey { path: path.clone() },
            StoreError::Corrupt { id, reason } => StoreError::Corrupt {
                id: id.clone(),
                reason: reason.clone(),
            },
            StoreError::DataDir(_) | StoreError::Seal(_) | StoreError::Cancelled => {
                StoreError::Sqlite {
                    path: String::new(),
                    source: rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                        Some(self.to_string()),
                    ),
                }
            }
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
    shared: Arc<Shared>,
}

/// What every handle on one database shares.
struct Shared {
    /// Where writes queue for the writer thread, and how many were sent
    /// (counted under the lock, so the queue holds them in that order);
    /// `None` once dropping.
    writes: Mutex<Queue>,
    /// How many writes the writer has answered, in queue order.
    answered: tokio::sync::watch::Receiver<u64>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// The connection reads use (the writer's own for an in-memory database).
    reader: Arc<Mutex<Connection>>,
    secrets: SecretBox,
    path: Arc<str>,
    view: Arc<StatusView>,
    simulated_full_disk: Arc<AtomicBool>,
    refused_writes: Arc<AtomicU64>,
    counts: Arc<WriteCounts>,
}

/// The writer's queue, and how many writes were sent into it.
struct Queue {
    sender: Option<std::sync::mpsc::Sender<Write>>,
    sent: u64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The writer ends once its queue closes: wait for it, so the file is
        // closed when the last handle is gone, as it was before the writer.
        drop(
            self.writes
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .sender
                .take(),
        );
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
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

    /// A database over `conn`, the connection the writer thread takes; reads
    /// get their own connection to `file`, or share `conn` in memory. The
    /// status view is rebuilt from the stored jobs.
    fn new(
        conn: Connection,
        file: Option<&std::path::Path>,
        secrets: SecretBox,
        path: Arc<str>,
    ) -> Result<Self, StoreError> {
        let sqlite = |error| StoreError::sqlite(&path, error);
        let conn = Arc::new(Mutex::new(conn));
        let reader = match file {
            Some(file) => {
                let reader = Connection::open(file).map_err(sqlite)?;
                reader
                    .busy_timeout(std::time::Duration::from_secs(5))
                    .map_err(sqlite)?;
                reader
                    .pragma_update(None, "query_only", true)
                    .map_err(sqlite)?;
                Arc::new(Mutex::new(reader))
            }
            None => conn.clone(),
        };
        let view = Arc::new(StatusView::default());
        {
            let reader = reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            view.apply(jobs::status_entries(&reader, &secrets).map_err(|error| error.at(&path))?);
            view.apply(orgs::org_entries(&reader).map_err(|error| error.at(&path))?);
        }
        let simulated_full_disk = Arc::new(AtomicBool::new(false));
        let refused_writes = Arc::new(AtomicU64::new(0));
        let counts = Arc::new(WriteCounts::default());
        let (answered_tx, answered) = tokio::sync::watch::channel(0);
        let (writes, writer) = Writer {
            conn,
            secrets: secrets.clone(),
            path: path.clone(),
            view: view.clone(),
            simulated_full_disk: simulated_full_disk.clone(),
            refused_writes: refused_writes.clone(),
            counts: counts.clone(),
            answered: answered_tx,
        }
        .spawn()
        .map_err(|source| StoreError::Unwritable {
            path: path.to_string(),
            source,
        })?;
        Ok(Self {
            shared: Arc::new(Shared {
                writes: Mutex::new(Queue {
                    sender: Some(writes),
                    sent: 0,
                }),
                answered,
                writer: Some(writer),
                reader,
                secrets,
                path,
                view,
                simulated_full_disk,
                refused_writes,
                counts,
            }),
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

    /// While `full` is true, every write fails exactly as SQLite fails on a
    /// full disk (`SQLITE_FULL`), through the same error path; reads go on.
    /// This is how the tests show what a full disk does without filling one.
    pub fn simulate_full_disk(&self, full: bool) {
        self.shared
            .simulated_full_disk
            .store(full, Ordering::SeqCst);
    }

    /// The next `count` transactions the writer tries fail as on a full
    /// disk, then writes go on: a fault that passes by itself.
    pub fn simulate_full_disk_briefly(&self, count: u64) {
        self.shared
            .counts
            .refuse_next
            .store(count, Ordering::SeqCst);
    }

    /// How many writes the simulated full disk has refused so far.
    pub fn simulated_refusals(&self) -> u64 {
        self.shared.refused_writes.load(Ordering::SeqCst)
    }

    /// How many transactions the writer has committed: with writes
    /// arriving together, fewer than the writes (group commit).
    pub fn commits(&self) -> u64 {
        self.shared.counts.commits.load(Ordering::SeqCst)
    }

    /// How many writes wait for the writer, not yet in a transaction.
    pub fn queued_writes(&self) -> usize {
        self.shared.counts.queued.load(Ordering::SeqCst)
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared
            .writes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn secrets(&self) -> &SecretBox {
        &self.shared.secrets
    }

    fn view(&self) -> &StatusView {
        &self.shared.view
    }

    /// Runs `work`, which only reads, on the reading connection off the
    /// async threads.
    async fn with_conn<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection, &SecretBox) -> Result<T, WorkError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let sent = self.lock_writes().sent;
        if *self.shared.answered.borrow() < sent {
            let mut answered = self.shared.answered.clone();
            answered
                .wait_for(|answered| *answered >= sent)
                .await
                .map_err(|_| StoreError::Cancelled)?;
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock poisons it; the connection itself is
            // still consistent (SQLite rolls back the open transaction), so go on.
            let mut guard = shared
                .reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut guard, &shared.secrets).map_err(|error| error.at(&shared.path))
        })
        .await
        .map_err(|_| StoreError::Cancelled)?
    }

    /// Queues `work`, which writes, for the writer thread and waits until
    /// the transaction that ran it committed (or failed). `work` runs inside
    /// that transaction, under its own savepoint, and asks for the view
    /// changes to apply once it committed.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &SecretBox, &mut Changes) -> Result<T, WorkError>
        + Send
        + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let counts = &self.shared.counts;
        counts.queued.fetch_add(1, Ordering::SeqCst);
        let queued = {
            let mut writes = self.lock_writes();
            let queued = writes
                .sender
                .as_ref()
                .is_some_and(|queue| queue.send(Box::new(Op::new(work, reply))).is_ok());
            writes.sent += u64::from(queued);
            queued
        };
        if !queued {
            counts.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::Cancelled);
        }
        answer.await.map_err(|_| StoreError::Cancelled)?
    }
}
