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
//! With `DATABASE_URL` the same stores live in PostgreSQL instead
//! (`postgres`), shared by several replicas: every write is its own
//! transaction there, status reads come from the database, a job someone
//! works on is leased to one replica at a time, and one replica (the holder
//! of the leader lock) runs the sweeps. Each store method
//! picks its backend itself, so callers never know which one they hold.
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
mod pg_tls;
mod postgres;
mod view;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, ErrorCode};

pub use deployments::DeploymentStore;
pub use file::DatabaseFile;
pub use jobs::{JobStore, Started, StatusFollower, UnreadableJob};
pub use orgs::OrgKeys;
pub use postgres::{LeaderLock, PostgresConfig};

use postgres::Postgres;
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
    /// PostgreSQL failed, or could not be reached.
    #[error("database {database}: {reason}")]
    Postgres {
        /// The database (its address, never its password).
        database: String,
        /// PostgreSQL's or the driver's reason (never a secret value).
        reason: String,
        /// Whether it may pass by itself (a lost connection, a restart).
        transient: bool,
    },
    /// The database's schema was written by a newer release, or its
    /// migrations could not be applied.
    #[error("database {database}: {reason}")]
    Schema {
        /// The database (its address, never its password).
        database: String,
        /// What is wrong.
        reason: String,
    },
    /// This replica no longer holds the job's lease (it ran out, and
    /// another replica took it or may take it): the write was refused.
    #[error("job {id} is no longer leased to this server; the server holding it carries it on")]
    LeaseLost {
        /// The job.
        id: String,
    },
    /// The operation exists only on the other backend (a SQLite test hook).
    #[error("{operation} is not available on this database backend")]
    Unsupported {
        /// What was asked.
        operation: &'static str,
    },
}

impl StoreError {
    /// Whether the failure passes by itself (a full disk, a busy database,
    /// an I/O error), so the same operation may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Full { .. } => true,
            StoreError::Postgres { transient, .. } => *transient,
            StoreError::Sqlite { source, .. } => sqlite_failure_passes(source),
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
            StoreError::Postgres {
                database,
                reason,
                transient,
            } => StoreError::Postgres {
                database: database.clone(),
                reason: reason.clone(),
                transient: *transient,
            },
            StoreError::Schema { database, reason } => StoreError::Schema {
                database: database.clone(),
                reason: reason.clone(),
            },
            StoreError::Unsupported { operation } => StoreError::Unsupported { operation },
            StoreError::LeaseLost { id } => StoreError::LeaseLost { id: id.clone() },
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

/// Whether a SQLite failure passes by itself: a full disk, a busy or locked
/// database, or an I/O error (a failed write or fsync, a `-shm` file that
/// cannot grow on a full disk), which leaves the database as it was before
/// the transaction. Writes wait for such a disk as for a full one, and one
/// that never recovers keeps them waiting, not failed.
pub fn sqlite_failure_passes(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(
            ErrorCode::DiskFull
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
        )
    )
}

/// Runs `write` until it stores or fails for good: while the store refuses
/// writes for now ([`StoreError::is_transient`]) it waits as `pauses` says,
/// and `waiting` hears the first refusal. For a write a passing fault must
/// not undo or abandon: one recording work done outside, or a new leader's
/// first sweeps.
pub(crate) async fn until_stored<T, Fut>(
    pauses: &delibera_backoff::Backoff,
    mut write: impl FnMut() -> Fut,
    waiting: impl FnOnce(&StoreError),
) -> Result<T, StoreError>
where
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut waiting = Some(waiting);
    let mut retries = 0;
    loop {
        match write().await {
            Err(error) if error.is_transient() => {
                if let Some(waiting) = waiting.take() {
                    waiting(&error);
                }
                retries += 1;
                tokio::time::sleep(pauses.delay(retries)).await;
            }
            other => return other,
        }
    }
}

/// The tests' brief full disk, the same on both backends: `passed` more
/// writes go through, then `count` are refused.
#[derive(Default)]
pub(super) struct RefusalCountdown {
    pass_first: AtomicU64,
    refuse_next: AtomicU64,
}

impl RefusalCountdown {
    fn set(&self, passed: u64, count: u64) {
        // In this order: a write between the two stores passes.
        self.pass_first.store(passed, Ordering::SeqCst);
        self.refuse_next.store(count, Ordering::SeqCst);
    }

    /// Counts one write; whether it is to be refused.
    pub(super) fn refuses_this_one(&self) -> bool {
        let take_one = |count: &AtomicU64| {
            count
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok()
        };
        !take_one(&self.pass_first) && take_one(&self.refuse_next)
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

/// The database and the key that seals its secrets: one SQLite file
/// (the default), or a PostgreSQL database that several replicas share.
#[derive(Clone)]
pub struct Database {
    backend: Backend,
}

/// Where the state lives. Only the store looks at this: every store
/// method answers the same on both.
#[derive(Clone)]
enum Backend {
    Sqlite(Arc<Shared>),
    Postgres(Arc<Postgres>),
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
            backend: Backend::Sqlite(Arc::new(Shared {
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
            })),
        })
    }

    /// Connects to the PostgreSQL database `config` names, applies the
    /// schema migrations it lacks (in one transaction under an advisory
    /// lock, so replicas starting together migrate once), and checks that
    /// `secrets` is the key that sealed what it holds (storing a key check
    /// the first time).
    pub async fn connect_postgres(
        config: &PostgresConfig,
        secrets: SecretBox,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Postgres(Arc::new(Postgres::connect(config, secrets).await?)),
        })
    }

    /// Whether other processes may share this database (PostgreSQL): then
    /// jobs are worked on under leases, and only the holder of the leader
    /// lock runs the sweeps.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Spends a wallet-signed request's nonce for every replica sharing
    /// this store, until `forget_after_ms` (Unix ms); false when one spent
    /// it already (a replay). On SQLite, which one process owns, the
    /// process's own record is the whole record: always true.
    pub async fn spend_wallet_nonce(
        &self,
        nonce: &[u8; 32],
        forget_after_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(true),
            Backend::Postgres(postgres) => {
                let millis = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX);
                postgres
                    .spend_wallet_nonce(nonce, millis(forget_after_ms), millis(now_ms))
                    .await
            }
        }
    }

    /// Waits until this process may run the sweeps (and, on SQLite, the
    /// jobs) and returns the lock that says so: at once on SQLite, whose
    /// file one process owns; on
    /// PostgreSQL once no other replica holds the leader lock. The lock is
    /// held until it is dropped or its connection is lost
    /// ([`LeaderLock::lost`]).
    pub async fn leader_lock(&self) -> Result<LeaderLock, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(LeaderLock::exclusive()),
            Backend::Postgres(postgres) => postgres.wait_leader_lock().await,
        }
    }

    /// The leader lock if no other process holds it now.
    pub async fn try_leader_lock(&self) -> Result<Option<LeaderLock>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Some(LeaderLock::exclusive())),
            Backend::Postgres(postgres) => postgres.try_leader_lock().await,
        }
    }

    /// The SQLite internals, for the SQLite code paths.
    fn sqlite(&self, operation: &'static str) -> Result<&Arc<Shared>, StoreError> {
        match &self.backend {
            Backend::Sqlite(shared) => Ok(shared),
            Backend::Postgres(_) => Err(StoreError::Unsupported { operation }),
        }
    }

    /// The PostgreSQL backend, when that is where the state lives.
    fn postgres(&self) -> Option<&Arc<Postgres>> {
        match &self.backend {
            Backend::Postgres(postgres) => Some(postgres),
            Backend::Sqlite(_) => None,
        }
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

    /// While `full` is true, every write fails exactly as it fails on a
    /// full disk (`SQLITE_FULL`; PostgreSQL's `disk_full`), through the same
    /// error path; reads go on. This is how the tests show what a full disk
    /// does without filling one.
    pub fn simulate_full_disk(&self, full: bool) {
        match &self.backend {
            Backend::Sqlite(shared) => shared.simulated_full_disk.store(full, Ordering::SeqCst),
            Backend::Postgres(postgres) => postgres.faults.simulate_full_disk(full),
        }
    }

    /// On PostgreSQL, the next write that moves a job to `status` commits
    /// and then fails as a dropped connection does, its answer lost. (A
    /// SQLite write happens in process: no answer is lost there.)
    pub fn simulate_lost_answer_to(&self, status: crate::jobs::JobStatus) {
        if let Backend::Postgres(postgres) = &self.backend {
            postgres.faults.lose_answer_to(status.as_str());
        }
    }

    /// The next `count` transactions the writer tries fail as on a full
    /// disk, then writes go on: a fault that passes by itself.
    pub fn simulate_full_disk_briefly(&self, count: u64) {
        self.simulate_full_disk_after(0, count);
    }

    /// [`Self::simulate_full_disk_briefly`] once `passed` more transactions
    /// have gone through: a fault that begins in the middle of a step.
    pub fn simulate_full_disk_after(&self, passed: u64, count: u64) {
        match &self.backend {
            Backend::Sqlite(shared) => shared.counts.refusals.set(passed, count),
            Backend::Postgres(postgres) => postgres.faults.refusals.set(passed, count),
        }
    }

    /// How many writes the simulated full disk has refused so far.
    pub fn simulated_refusals(&self) -> u64 {
        match &self.backend {
            Backend::Sqlite(shared) => shared.refused_writes.load(Ordering::SeqCst),
            Backend::Postgres(postgres) => postgres.faults.refusals(),
        }
    }

    /// How many transactions the writer has committed: with writes
    /// arriving together, fewer than the writes (group commit). PostgreSQL
    /// commits each write in its own transaction: 0 there.
    pub fn commits(&self) -> u64 {
        self.sqlite("counting commits")
            .map_or(0, |shared| shared.counts.commits.load(Ordering::SeqCst))
    }

    /// How many writes wait for the writer, not yet in a transaction (0 on
    /// PostgreSQL, which has no writer queue).
    pub fn queued_writes(&self) -> usize {
        self.sqlite("counting queued writes")
            .map_or(0, |shared| shared.counts.queued.load(Ordering::SeqCst))
    }

    fn secrets(&self) -> &SecretBox {
        match &self.backend {
            Backend::Sqlite(shared) => &shared.secrets,
            Backend::Postgres(postgres) => &postgres.secrets,
        }
    }

    /// The in-memory status view (SQLite; PostgreSQL answers from the
    /// database, so every replica sees every job).
    fn view(&self) -> Option<&StatusView> {
        match &self.backend {
            Backend::Sqlite(shared) => Some(&shared.view),
            Backend::Postgres(_) => None,
        }
    }

    /// Runs `work`, which only reads, on the reading connection off the
    /// async threads.
    async fn with_conn<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection, &SecretBox) -> Result<T, WorkError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = self.sqlite("a SQLite read")?.clone();
        let sent = lock_writes(&shared).sent;
        if *shared.answered.borrow() < sent {
            let mut answered = shared.answered.clone();
            answered
                .wait_for(|answered| *answered >= sent)
                .await
                .map_err(|_| StoreError::Cancelled)?;
        }
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
        let shared = self.sqlite("a SQLite write")?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let counts = &shared.counts;
        counts.queued.fetch_add(1, Ordering::SeqCst);
        let queued = {
            let mut writes = lock_writes(shared);
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

fn lock_writes(shared: &Shared) -> std::sync::MutexGuard<'_, Queue> {
    shared
        .writes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
