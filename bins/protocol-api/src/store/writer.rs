//! Group commit: one thread owns the connection that writes, and commits
//! the writes queued while the previous batch was being committed in one
//! transaction, so one fsync (`synchronous=FULL`) serves the whole batch.
//!
//! Each write runs under its own savepoint, so a write that fails is undone
//! alone and its caller gets its own error. A caller's answer is sent only
//! after the batch committed and the status view took the batch's changes;
//! if the commit fails, no change of the batch is applied and every caller
//! whose write had succeeded gets the commit's error instead.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::RefusalCountdown;
use super::view::{StatusView, ViewChange};
use super::{StoreError, WorkError};
use crate::seal::SecretBox;

/// The most writes one transaction commits; the rest wait for the next one.
pub(super) const MAX_BATCH: usize = 256;

/// While writes keep coming (the last batch held more than one), how long
/// after a commit the next one starts at the earliest: the writes arriving
/// meanwhile share its transaction and its fsync, whose cost is mostly per
/// commit, not per write. A write to an idle store is committed at once.
const GATHER: Duration = Duration::from_millis(1);

/// The view changes a write asks for, applied only once its batch committed.
pub(super) type Changes = Vec<ViewChange>;

/// A queued write.
pub(super) type Write = Box<dyn Pending>;

/// A write waiting in the queue, and the caller waiting for its answer.
pub(super) trait Pending: Send {
    /// Runs the write on the open transaction; on failure, returns a copy
    /// of its error (the write keeps the original for its caller).
    fn run(
        &mut self,
        conn: &Connection,
        secrets: &SecretBox,
        changes: &mut Changes,
        path: &str,
    ) -> Option<StoreError>;

    /// The batch did not commit: a write that succeeded answers `error`.
    fn fail(&mut self, error: &StoreError);

    /// Sends the answer.
    fn answer(self: Box<Self>);
}

/// A write of type `T`.
pub(super) struct Op<T, F> {
    work: Option<F>,
    outcome: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Op<T, F> {
    pub(super) fn new(work: F, reply: oneshot::Sender<Result<T, StoreError>>) -> Self {
        Self {
            work: Some(work),
            outcome: None,
            reply,
        }
    }
}

impl<T, F> Pending for Op<T, F>
where
    T: Send,
    F: FnOnce(&Connection, &SecretBox, &mut Changes) -> Result<T, WorkError> + Send,
{
    fn run(
        &mut self,
        conn: &Connection,
        secrets: &SecretBox,
        changes: &mut Changes,
        path: &str,
    ) -> Option<StoreError> {
        let work = self.work.take()?;
        // A panicking write is answered as cancelled; the others go on.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| work(conn, secrets, changes)))
            .unwrap_or_else(|_| Err(WorkError::Store(StoreError::Cancelled)))
            .map_err(|error| error.at(path));
        let copy = outcome.as_ref().err().map(StoreError::duplicate);
        self.outcome = Some(outcome);
        copy
    }

    fn fail(&mut self, error: &StoreError) {
        if !matches!(self.outcome, Some(Err(_))) {
            self.outcome = Some(Err(error.duplicate()));
        }
    }

    fn answer(self: Box<Self>) {
        let outcome = self.outcome.unwrap_or(Err(StoreError::Cancelled));
        // A caller that stopped waiting no longer needs its answer.
        let _ = self.reply.send(outcome);
    }
}

/// What the writer thread works with.
pub(super) struct Writer {
    pub(super) conn: Arc<Mutex<Connection>>,
    pub(super) secrets: SecretBox,
    pub(super) path: Arc<str>,
    pub(super) view: Arc<StatusView>,
    pub(super) simulated_full_disk: Arc<AtomicBool>,
    pub(super) refused_writes: Arc<AtomicU64>,
    pub(super) counts: Arc<WriteCounts>,
    /// How many writes have been answered, for reads to wait on.
    pub(super) answered: tokio::sync::watch::Sender<u64>,
}

/// What the writer has done so far (for tests and diagnostics).
#[derive(Default)]
pub(super) struct WriteCounts {
    /// Writes sent and not yet taken into a batch.
    pub(super) queued: AtomicUsize,
    /// Transactions committed.
    pub(super) commits: AtomicU64,
    /// Transactions to refuse as on a full disk (tests).
    pub(super) refusals: RefusalCountdown,
}

impl Writer {
    /// Starts the writer thread; it ends once every sender is dropped.
    pub(super) fn spawn(self) -> std::io::Result<(Sender<Write>, std::thread::JoinHandle<()>)> {
        let (sender, queue) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("job-store-writer".into())
            .spawn(move || self.run(queue))?;
        Ok((sender, thread))
    }

    fn run(self, queue: Receiver<Write>) {
        let mut last_commit: Option<Instant> = None;
        while let Ok(first) = queue.recv() {
            if let Some(gather_until) = last_commit.map(|end| end + GATHER) {
                // A sleep, not a wait on the queue: the writes arriving meanwhile
                // queue up without waking this thread once each.
                let now = Instant::now();
                if gather_until > now {
                    std::thread::sleep(gather_until - now);
                }
            }
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(write) => batch.push(write),
                    Err(_) => break,
                }
            }
            self.counts.queued.fetch_sub(batch.len(), Ordering::SeqCst);
            let committed = {
                // A panic while holding the lock poisons it; the connection
                // itself is still consistent, so go on.
                let conn = self
                    .conn
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let committed = self.commit(&conn, &mut batch);
                if committed.is_err() && !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                committed
            };
            match committed {
                Ok(changes) => self.view.apply(changes),
                Err(error) => batch.iter_mut().for_each(|write| write.fail(&error)),
            }
            let answered = batch.len() as u64;
            for write in batch {
                write.answer();
            }
            self.answered.send_modify(|count| *count += answered);
            last_commit = (answered > 1).then(Instant::now);
        }
    }

    /// Runs the batch in one transaction and commits it; returns the view
    /// changes of the writes that succeeded.
    fn commit(&self, conn: &Connection, batch: &mut [Write]) -> Result<Changes, StoreError> {
        let sqlite = |error| StoreError::sqlite(&self.path, error);
        if self.counts.refusals.refuses_this_one()
            || self.simulated_full_disk.load(Ordering::SeqCst)
        {
            self.refused_writes
                .fetch_add(batch.len() as u64, Ordering::SeqCst);
            return Err(sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                Some("database or disk is full".into()),
            )));
        }
        run_cached(conn, "BEGIN IMMEDIATE").map_err(sqlite)?;
        let mut changes = Vec::new();
        for write in batch.iter_mut() {
            run_cached(conn, "SAVEPOINT write").map_err(sqlite)?;
            let mark = changes.len();
            match write.run(conn, &self.secrets, &mut changes, &self.path) {
                None => run_cached(conn, "RELEASE write").map_err(sqlite)?,
                Some(error) => {
                    changes.truncate(mark);
                    // Some errors (a full disk, an I/O error) make SQLite roll
                    // the whole transaction back: the batch failed with it.
                    if conn.is_autocommit() {
                        return Err(error);
                    }
                    conn.execute_batch("ROLLBACK TO write; RELEASE write")
                        .map_err(sqlite)?;
                }
            }
        }
        run_cached(conn, "COMMIT").map_err(sqlite)?;
        self.counts.commits.fetch_add(1, Ordering::SeqCst);
        Ok(changes)
    }
}

/// Runs one statement that returns no rows, prepared once per connection:
/// the writer runs the same few for every write.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}
