//! The provisioning jobs: one row per job, its non-secret fields as JSON and
//! its secrets sealed beside them.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

mod pg;

use super::view::{StatusEntry, StatusView, ViewChange};
use super::{Database, StoreError, WorkError};
use crate::jobs::{Job, JobSecrets, JobStatus, JobTag};
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

    /// Whether other processes may share the jobs (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.db.is_shared()
    }

    /// Waits for the lock that lets this process lead
    /// ([`Database::leader_lock`]).
    pub async fn leader_lock(&self) -> Result<super::LeaderLock, StoreError> {
        self.db.leader_lock().await
    }

    /// Stores a new job.
    pub async fn insert(&self, job: &Job) -> Result<(), StoreError> {
        if let Some(postgres) = self.db.postgres() {
            return pg::insert(postgres, &Row::encode(job, self.db.secrets())?).await;
        }
        let (row, entry) = Row::encode_with_status(job, self.db.secrets())?;
        self.db
            .write(move |conn, _, changes| {
                row.insert(conn)?;
                changes.push(entry);
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
        if let Some(postgres) = self.db.postgres() {
            let row = Row::encode(job, self.db.secrets())?;
            return pg::insert_idempotent(postgres, &row, key, request).await;
        }
        let (row, entry) = Row::encode_with_status(job, self.db.secrets())?;
        self.db
            .write(move |conn, _, changes| {
                // The writer runs this in one transaction (its savepoint).
                if let Some(started) = started_under(conn, &key, &request)? {
                    return Ok(started);
                }
                row.insert(conn)?;
                // REPLACE: a key whose job was purged names a new job now.
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency_keys (key_sha256, job_id, request_sha256)
                     VALUES (?1, ?2, ?3)",
                    params![key.as_slice(), row.id, request.as_slice()],
                )?;
                changes.push(entry);
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
        if let Some(postgres) = self.db.postgres() {
            return pg::started_under_key(postgres, key, request).await;
        }
        self.db
            .with_conn(move |conn, _| started_under(conn, &key, &request))
            .await
    }

    /// Replaces a job's stored state (a job no longer stored stays gone).
    pub async fn save(&self, job: &Job) -> Result<(), StoreError> {
        if let Some(postgres) = self.db.postgres() {
            let row = Row::encode(job, self.db.secrets())?;
            return pg::update(postgres, &row, None, pg::LeaseRule::Ignore)
                .await
                .map(drop);
        }
        self.save_sqlite(job).await
    }

    /// Saves a job this process works on ([`JobStatus::is_worked_on`]): its
    /// driver's or its registration's write. Where replicas share the
    /// store the write is fenced by the job's lease: once another replica
    /// holds it, the write is refused with [`StoreError::LeaseLost`]. A
    /// job saved in a status nobody works on is leased to nobody after.
    pub async fn save_held(&self, job: &Job) -> Result<(), StoreError> {
        if let Some(postgres) = self.db.postgres() {
            let row = Row::encode(job, self.db.secrets())?;
            return match pg::update(postgres, &row, None, pg::LeaseRule::Held).await? {
                true => Ok(()),
                false => Err(StoreError::LeaseLost {
                    id: job.id.to_string(),
                }),
            };
        }
        self.save_sqlite(job).await
    }

    async fn save_sqlite(&self, job: &Job) -> Result<(), StoreError> {
        let (row, entry) = Row::encode_with_status(job, self.db.secrets())?;
        self.db
            .write(move |conn, _, changes| {
                if row.update(conn)? {
                    changes.push(entry);
                }
                Ok(())
            })
            .await
    }

    /// Saves `job` only if the stored status is still `expected`; returns
    /// whether it did. Two concurrent `register` calls cannot both win.
    pub async fn save_if_status(&self, job: &Job, expected: JobStatus) -> Result<bool, StoreError> {
        self.save_if_status_leasing(job, expected, pg::LeaseRule::Ignore)
            .await
    }

    /// [`Self::save_if_status`], and the job's lease is this process's
    /// from then on (a registration starting).
    pub async fn take_if_status(&self, job: &Job, expected: JobStatus) -> Result<bool, StoreError> {
        self.save_if_status_leasing(job, expected, pg::LeaseRule::Take)
            .await
    }

    async fn save_if_status_leasing(
        &self,
        job: &Job,
        expected: JobStatus,
        lease: pg::LeaseRule,
    ) -> Result<bool, StoreError> {
        if let Some(postgres) = self.db.postgres() {
            let row = Row::encode(job, self.db.secrets())?;
            return pg::update(postgres, &row, Some(expected), lease).await;
        }
        let (row, entry) = Row::encode_with_status(job, self.db.secrets())?;
        self.db
            .write(move |conn, _, changes| {
                let changed = conn.execute(
                    "UPDATE jobs SET status = ?2, record = ?3, secrets = ?4, updated_at = ?5
                 WHERE id = ?1 AND status = ?6",
                    params![
                        row.id,
                        row.status,
                        row.record,
                        &row.secrets[..],
                        row.updated_at,
                        expected.as_str()
                    ],
                )?;
                if changed == 1 {
                    changes.push(entry);
                }
                Ok(changed == 1)
            })
            .await
    }

    /// How long a job's lease lasts unless renewed, where replicas share
    /// the store and lease jobs; `None` where this process owns them all.
    pub fn job_lease(&self) -> Option<std::time::Duration> {
        self.db.postgres().map(|postgres| postgres.job_lease())
    }

    /// Leases to this process up to `limit` jobs in `statuses` that nobody
    /// holds (their lease ran out, or was never taken), and returns them,
    /// oldest change first; replicas claiming at the same instant never
    /// get the same job. Only where replicas share the store.
    pub async fn claim(&self, statuses: &[JobStatus], limit: i64) -> Result<Vec<Job>, StoreError> {
        let postgres = self.db.postgres().ok_or(StoreError::Unsupported {
            operation: "claiming jobs",
        })?;
        pg::claim(postgres, statuses, limit).await
    }

    /// Extends this process's leases of `ids`; returns those of `ids` lost:
    /// another replica holds them now, or they are no longer stored (none
    /// where this process owns every job). A job whose lease nobody holds,
    /// because its own last write cleared it, is not lost.
    pub async fn renew(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        match self.db.postgres() {
            Some(postgres) => pg::renew(postgres, ids).await,
            None => Ok(Vec::new()),
        }
    }

    /// Gives up this process's leases of `ids`, so another replica may
    /// claim those jobs at once (nothing where no replica shares the store).
    pub async fn release(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        match self.db.postgres() {
            Some(postgres) => pg::release(postgres, ids).await,
            None => Ok(()),
        }
    }

    /// A job by id.
    pub async fn get(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        if let Some(postgres) = self.db.postgres() {
            return pg::get(postgres, id).await;
        }
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

    /// The status document (JSON) of a job, as of its last commit; `None`
    /// if no such job is stored. On SQLite read from memory (a document
    /// that reveals secrets is kept sealed and opened here); on PostgreSQL
    /// from the database, so any replica answers for any job. A record that
    /// cannot be read is [`StoreError::Corrupt`] naming the job.
    pub async fn status(&self, id: Uuid) -> Result<Option<axum::body::Bytes>, StoreError> {
        let Some(view) = self.db.view() else {
            let postgres = self.db.postgres().ok_or(StoreError::Unsupported {
                operation: "a status read",
            })?;
            return Ok(pg::status_after(postgres, id, 0)
                .await?
                .flatten()
                .map(|(_, document)| document));
        };
        view.get(&id)
            .map(|entry| self.open_entry(id, entry))
            .transpose()
    }

    /// The status document an entry of job `id` holds.
    fn open_entry(&self, id: Uuid, entry: StatusEntry) -> Result<axum::body::Bytes, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: id.to_string(),
            reason,
        };
        match entry {
            StatusEntry::Document(document) => Ok(document),
            StatusEntry::Sealed(sealed) => {
                let document = self
                    .db
                    .secrets()
                    .open(&sealed)
                    .map_err(|_| corrupt("its sealed status does not open".into()))?;
                Ok(axum::body::Bytes::copy_from_slice(&document))
            }
            StatusEntry::Damaged(reason) => Err(corrupt(reason.to_string())),
        }
    }

    /// Follows job `id`'s status documents as they are committed: first the
    /// current one (or, given the event id of the last one a client saw,
    /// every one since, while this run keeps them), then each new one.
    /// `None` if no such job is stored.
    ///
    /// On PostgreSQL the job's row is read every 250 ms for a new revision
    /// (any replica's commit); event ids are the job's revisions, so a
    /// client resuming on another replica gets the current document unless
    /// it already saw it.
    pub async fn follow(
        &self,
        id: Uuid,
        last_event_id: Option<&str>,
    ) -> Result<Option<StatusFollower>, StoreError> {
        let Some(view) = self.db.view() else {
            let seen = last_event_id.and_then(pg::revision_of).unwrap_or(0);
            let postgres = self.db.postgres().ok_or(StoreError::Unsupported {
                operation: "following a job",
            })?;
            let Some(current) = pg::status_after(postgres, id, 0).await? else {
                return Ok(None);
            };
            let pending = current.filter(|(revision, _)| *revision != seen);
            return Ok(Some(StatusFollower(Following::Polling {
                store: self.clone(),
                id,
                revision: pending.as_ref().map_or(seen, |(revision, _)| *revision),
                pending,
            })));
        };
        let after = last_event_id.and_then(|event_id| view.feeds().number_of(event_id));
        let Some(followed) = view.follow(id, after) else {
            return Ok(None);
        };
        Ok(Some(StatusFollower(Following::Pushed {
            store: self.clone(),
            id,
            pending: followed.entries.into(),
            last: after.unwrap_or(0),
            changed: followed.changed,
        })))
    }

    /// How many jobs the status view holds (as many as are stored; 0 on
    /// PostgreSQL, which keeps no view).
    pub fn status_view_len(&self) -> usize {
        self.db.view().map_or(0, StatusView::len)
    }

    /// Jobs the background runner must carry on after a restart.
    pub async fn resumable(&self) -> Result<Vec<Job>, StoreError> {
        let owned: Vec<JobStatus> = JobStatus::ALL
            .into_iter()
            .filter(|status| status.is_runner_owned())
            .collect();
        self.in_status(owned).await
    }

    /// Every readable job in one of `statuses`, oldest change first. A job
    /// whose stored record cannot be read is left out (and logged by id):
    /// one damaged record must not hide every other job.
    pub async fn in_status(&self, statuses: Vec<JobStatus>) -> Result<Vec<Job>, StoreError> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(postgres) = self.db.postgres() {
            return pg::in_status(postgres, &statuses).await;
        }
        let placeholders = vec!["?"; statuses.len()].join(", ");
        self.db
            .with_conn(move |conn, secrets| {
                let mut statement = conn.prepare(&format!(
                    "SELECT id, record, secrets FROM jobs WHERE status IN ({placeholders})
                     ORDER BY updated_at"
                ))?;
                let rows = statement.query_map(
                    rusqlite::params_from_iter(statuses.iter().map(|status| status.as_str())),
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, Vec<u8>>(2)?,
                        ))
                    },
                )?;
                let mut jobs = Vec::new();
                for row in rows {
                    let (id, record, sealed) = row?;
                    match Row::decode(&id, &record, &sealed, secrets) {
                        Ok(job) => jobs.push(job),
                        Err(_) => tracing::error!(job = %JobTag::of(id),
                            "a stored job cannot be read; it is left out (its status says why)"),
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
    /// changed, and reading it stays an error that names it. A job that
    /// recorded a deployment is marked for its teardown. A `complete` job
    /// is left as it is: its agent is registered and runs without what the
    /// record keeps. Where replicas share the store, so is a job another
    /// replica holds a live lease on (it reads the record, if a newer
    /// release wrote it).
    pub async fn fail_unreadable(&self) -> Result<Vec<UnreadableJob>, StoreError> {
        if let Some(postgres) = self.db.postgres() {
            return pg::fail_unreadable(postgres).await;
        }
        self.db
            .write(|conn, secrets, changes| {
                let rows: Vec<(String, String, Vec<u8>)> = conn
                    .prepare(
                        "SELECT id, record, secrets FROM jobs WHERE status NOT IN ('failed', 'complete')",
                    )?
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
                    match fail_for_unreadable(&record, &reason, now) {
                        Some(job) => {
                            let (row, entry) = Row::encode_with_status(&job, secrets)?;
                            row.update(conn)?;
                            changes.push(entry);
                        }
                        None => {
                            conn.execute(
                                "UPDATE jobs SET status = ?2, updated_at = ?3 WHERE id = ?1",
                                params![id, JobStatus::Failed.as_str(), timestamp(now)],
                            )?;
                        }
                    }
                    unreadable.push(UnreadableJob { id, reason });
                }
                Ok(unreadable)
            })
            .await
    }

    /// Deletes finished jobs last changed before `cutoff`, and the
    /// idempotency keys they were started under; returns how many jobs.
    pub async fn purge_finished(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        if let Some(postgres) = self.db.postgres() {
            return pg::purge_finished(postgres, timestamp(cutoff)).await;
        }
        self.db
            .write(move |conn, _, changes| {
                let cutoff = timestamp(cutoff);
                conn.execute(
                    "DELETE FROM idempotency_keys WHERE job_id IN (
                        SELECT id FROM jobs WHERE status IN ('complete', 'failed') AND updated_at < ?1)",
                    params![cutoff],
                )?;
                let purged: Vec<String> = conn
                    .prepare(
                        "DELETE FROM jobs WHERE status IN ('complete', 'failed') AND updated_at < ?1
                         RETURNING id",
                    )?
                    .query_map(params![cutoff], |row| row.get(0))?
                    .collect::<Result<_, _>>()?;
                changes.extend(
                    purged
                        .iter()
                        .filter_map(|id| Uuid::parse_str(id).ok())
                        .map(ViewChange::Remove),
                );
                Ok(purged.len())
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

/// The status view of every stored job (rebuilding it when the database
/// opens): a record that cannot be read answers as damaged, saying why.
pub(super) fn status_entries(
    conn: &rusqlite::Connection,
    secrets: &SecretBox,
) -> Result<Vec<ViewChange>, WorkError> {
    let mut statement = conn.prepare("SELECT id, record, secrets FROM jobs")?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    let mut entries = Vec::new();
    for row in rows {
        let (id, record, sealed) = row?;
        let Ok(uuid) = Uuid::parse_str(&id) else {
            tracing::error!(job = %JobTag::of(id), "a stored job's id is not a job id; it cannot be shown");
            continue;
        };
        let entry = match Row::decode(&id, &record, &sealed, secrets) {
            Ok(job) => StatusEntry::of(&job, secrets),
            Err(StoreError::Corrupt { reason, .. }) => StatusEntry::Damaged(reason.into()),
            Err(other) => StatusEntry::Damaged(other.to_string().into()),
        };
        entries.push(ViewChange::Put(uuid, entry));
    }
    Ok(entries)
}

/// The job stored as `record` marked failed because its sealed secrets
/// cannot be read (`reason`): it keeps its fields, its error says why, and
/// a recorded deployment is marked for teardown. `None` if the fields do
/// not parse either.
fn fail_for_unreadable(record: &str, reason: &str, now: DateTime<Utc>) -> Option<Job> {
    let mut job = serde_json::from_str::<Job>(record).ok()?;
    job.status = JobStatus::Failed;
    job.progress = None;
    job.updated_at = now;
    job.error = Some(format!(
        "the server cannot read this job's stored secrets ({reason}), so it \
         cannot go on; provision the agent again"
    ));
    job.secrets = JobSecrets::default();
    // Its agent may still run: the expiry sweeper tears it down.
    job.deployment_teardown_pending = job.cvm_id.is_some();
    Some(job)
}

/// Fixed-width UTC text, so SQL string comparison orders by time.
fn timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

struct Row {
    id: String,
    status: &'static str,
    record: String,
    secrets: std::sync::Arc<[u8]>,
    updated_at: String,
    /// Whether someone works on the job in its status (and, where replicas
    /// share the store, holds its lease).
    worked_on: bool,
}

impl Row {
    fn encode(job: &Job, secret_box: &SecretBox) -> Result<Self, StoreError> {
        let corrupt = |error: serde_json::Error| StoreError::Corrupt {
            id: job.id.to_string(),
            reason: error.to_string(),
        };
        let record = serde_json::to_string(job).map_err(corrupt)?;
        let secrets = job
            .sealed_secrets
            .seal(&job.secrets, secret_box, |secrets| {
                serde_json::to_vec(secrets).map(zeroize::Zeroizing::new)
            })
            .map_err(corrupt)?;
        Ok(Self {
            id: job.id.to_string(),
            status: job.status.as_str(),
            record,
            secrets,
            updated_at: timestamp(job.updated_at),
            worked_on: job.status.is_worked_on(),
        })
    }

    /// The row of `job`, and its status view entry as of this write.
    fn encode_with_status(
        job: &Job,
        secret_box: &SecretBox,
    ) -> Result<(Self, ViewChange), StoreError> {
        Ok((
            Self::encode(job, secret_box)?,
            ViewChange::Put(job.id, StatusEntry::of(job, secret_box)),
        ))
    }

    fn insert(&self, conn: &rusqlite::Connection) -> Result<(), WorkError> {
        // Cached: the writer stores jobs over and over.
        conn.prepare_cached(
            "INSERT INTO jobs (id, status, record, secrets, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
                self.id,
                self.status,
                self.record,
                &self.secrets[..],
                self.updated_at
        ])?;
        Ok(())
    }

    /// Replaces the stored row; returns whether the job was stored.
    fn update(&self, conn: &rusqlite::Connection) -> Result<bool, WorkError> {
        let changed = conn
            .prepare_cached(
                "UPDATE jobs SET status = ?2, record = ?3, secrets = ?4, updated_at = ?5 WHERE id = ?1",
            )?
            .execute(params![
                self.id,
                self.status,
                self.record,
                &self.secrets[..],
                self.updated_at
            ])?;
        Ok(changed == 1)
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

/// A job's committed status documents, in commit order, numbered.
pub struct StatusFollower(Following);

/// How a follower learns of commits.
enum Following {
    /// Pushed by the in-memory view (SQLite).
    Pushed {
        store: JobStore,
        id: Uuid,
        pending: std::collections::VecDeque<(u64, StatusEntry)>,
        last: u64,
        changed: tokio::sync::watch::Receiver<u64>,
    },
    /// Read from the database when its revision moves (PostgreSQL, where
    /// another replica may commit).
    Polling {
        store: JobStore,
        id: Uuid,
        pending: Option<(i64, axum::body::Bytes)>,
        revision: i64,
    },
}

impl StatusFollower {
    /// The next document and its event id, waiting for a commit if needed;
    /// `None` once the job is gone.
    pub async fn next(&mut self) -> Option<Result<(String, axum::body::Bytes), StoreError>> {
        match &mut self.0 {
            Following::Pushed {
                store,
                id,
                pending,
                last,
                changed,
            } => loop {
                let view = store.db.view()?;
                if let Some((number, entry)) = pending.pop_front() {
                    *last = number;
                    let event_id = view.feeds().event_id(number);
                    return Some(
                        store
                            .open_entry(*id, entry)
                            .map(|document| (event_id, document)),
                    );
                }
                changed.changed().await.ok()?;
                *pending = view.since(id, *last).into();
            },
            Following::Polling {
                store,
                id,
                pending,
                revision,
            } => loop {
                if let Some((number, document)) = pending.take() {
                    *revision = number;
                    return Some(Ok((pg::event_id(number), document)));
                }
                tokio::time::sleep(pg::FOLLOW_POLL).await;
                let postgres = store.db.postgres()?;
                match pg::status_after(postgres, *id, *revision).await {
                    Ok(None) => return None,
                    Ok(Some(changed)) => *pending = changed,
                    // A lost connection passes; the stream goes on.
                    Err(error) if error.is_transient() => {}
                    Err(error) => return Some(Err(error)),
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
            .write(|conn, _, _| {
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
            .write(move |conn, _, _| {
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

    /// The status a view entry shows.
    fn shown_status(document: Result<Option<axum::body::Bytes>, StoreError>) -> Option<String> {
        let document = document.unwrap()?;
        Some(
            serde_json::from_slice::<serde_json::Value>(&document).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    }

    #[tokio::test]
    async fn a_status_document_that_reveals_secrets_is_kept_sealed_in_memory() {
        let database = Database::in_memory(SecretBox::from_key(&[10; 32])).unwrap();
        let store = database.jobs();
        let mut job = new_job();
        job.secrets.storacha_private_key = Some("MgCYsecret".into());
        store.insert(&job).await.unwrap();
        assert!(matches!(
            database.view().unwrap().get(&job.id),
            Some(StatusEntry::Document(_))
        ));

        job.status = JobStatus::AwaitingNearSignature;
        store.save(&job).await.unwrap();
        let Some(StatusEntry::Sealed(sealed)) = database.view().unwrap().get(&job.id) else {
            panic!("a revealing document is not sealed");
        };
        assert!(!sealed.windows(10).any(|w| w == b"MgCYsecret"));
        let shown: serde_json::Value =
            serde_json::from_slice(&store.status(job.id).await.unwrap().unwrap()).unwrap();
        assert_eq!(shown["storachaPrivateKey"], "MgCYsecret");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn writes_queued_together_commit_together_and_a_failing_one_alone_is_undone() {
        let database = Database::in_memory(SecretBox::from_key(&[5; 32])).unwrap();
        let store = database.jobs();
        let taken = new_job();
        store.insert(&taken).await.unwrap();

        // Hold the writer inside a write, so the next ones queue up.
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = tokio::spawn({
            let database = database.clone();
            async move {
                database
                    .write(move |_, _, _| {
                        let _ = started_tx.send(());
                        let _ = release_rx.recv();
                        Ok(())
                    })
                    .await
            }
        });
        tokio::time::timeout(Duration::from_secs(10), started_rx)
            .await
            .unwrap()
            .unwrap();
        let commits_before = database.commits();

        let jobs: Vec<Job> = (0..20).map(|_| new_job()).collect();
        let mut writes = Vec::new();
        for job in &jobs {
            let (store, job) = (store.clone(), job.clone());
            writes.push(tokio::spawn(async move { store.insert(&job).await }));
        }
        // The same id again: refused by the primary key, inside the batch.
        let duplicate = {
            let store = store.clone();
            let mut again = new_job();
            again.id = taken.id;
            again.display_name = "Someone Else".into();
            tokio::spawn(async move { store.insert(&again).await })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while database.queued_writes() < jobs.len() + 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the writes never queued"
            );
            tokio::task::yield_now().await;
        }
        release_tx.send(()).unwrap();
        holder.await.unwrap().unwrap();
        for write in writes {
            write.await.unwrap().unwrap();
        }
        assert!(
            duplicate.await.unwrap().is_err(),
            "a second job under one id"
        );

        // The held write's transaction, then one for all the queued ones.
        assert_eq!(database.commits(), commits_before + 2);
        for job in &jobs {
            assert!(store.get(job.id).await.unwrap().is_some());
            assert_eq!(
                shown_status(store.status(job.id).await).as_deref(),
                Some("generating_identity")
            );
        }
        let kept = store.get(taken.id).await.unwrap().unwrap();
        assert_eq!(
            kept.display_name, "Worker Alpha",
            "the refused write left no trace"
        );
        assert_eq!(store.status_view_len(), jobs.len() + 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_status_view_shows_committed_state_only_and_is_rebuilt_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        let secret_box = SecretBox::from_key(&[6; 32]);
        let mut job = new_job();
        let mut old_done = new_job();
        old_done.status = JobStatus::Complete;
        old_done.updated_at = Utc::now() - chrono::Duration::days(30);
        {
            let database = Database::open(&path, secret_box.clone()).unwrap();
            let store = database.jobs();
            store.insert(&job).await.unwrap();
            store.insert(&old_done).await.unwrap();
            assert_eq!(shown_status(store.status(Uuid::new_v4()).await), None);

            // A write the disk refuses is never shown.
            database.simulate_full_disk(true);
            job.status = JobStatus::CreatingSpace;
            assert!(store.save(&job).await.is_err());
            assert_eq!(
                shown_status(store.status(job.id).await).as_deref(),
                Some("generating_identity")
            );
            database.simulate_full_disk(false);
            store.save(&job).await.unwrap();
            assert_eq!(
                shown_status(store.status(job.id).await).as_deref(),
                Some("creating_space")
            );
        }
        let database = Database::open(&path, secret_box).unwrap();
        let store = database.jobs();
        assert_eq!(
            shown_status(store.status(job.id).await).as_deref(),
            Some("creating_space")
        );
        assert_eq!(store.status_view_len(), 2);
        // Purged jobs leave the view with their rows.
        let purged = store
            .purge_finished(Utc::now() - chrono::Duration::days(7))
            .await
            .unwrap();
        assert_eq!(purged, 1);
        assert_eq!(shown_status(store.status(old_done.id).await), None);
        assert_eq!(store.status_view_len(), 1);
    }

    #[tokio::test]
    async fn a_record_that_does_not_parse_is_left_out_of_every_list() {
        let database = Database::in_memory(SecretBox::from_key(&[7; 32])).unwrap();
        let store = database.jobs();
        let damaged = new_job();
        let mut waiting = new_job();
        waiting.status = JobStatus::AwaitingNearSignature;
        let mut failed = new_job();
        failed.status = JobStatus::Failed;
        for job in [&damaged, &waiting, &failed] {
            store.insert(job).await.unwrap();
        }
        let id = damaged.id.to_string();
        database
            .write(move |conn, _, _| {
                conn.execute("UPDATE jobs SET record = '{' WHERE id = ?1", params![id])?;
                Ok(())
            })
            .await
            .unwrap();
        let unreadable = store.fail_unreadable().await.unwrap();
        assert_eq!(unreadable.len(), 1);
        assert_eq!(unreadable[0].id, damaged.id.to_string());

        // The damaged one is failed now, and still unreadable.
        let all = store.in_status(JobStatus::ALL.to_vec()).await.unwrap();
        let mut ids: Vec<Uuid> = all.iter().map(|job| job.id).collect();
        ids.sort();
        let mut expected = vec![waiting.id, failed.id];
        expected.sort();
        assert_eq!(ids, expected);
        let failed_ones = store.in_status(vec![JobStatus::Failed]).await.unwrap();
        assert_eq!(
            failed_ones.iter().map(|job| job.id).collect::<Vec<_>>(),
            vec![failed.id]
        );
        assert!(store.get(damaged.id).await.is_err());
    }

    #[tokio::test]
    async fn an_unreadable_job_with_a_deployment_is_marked_for_its_teardown() {
        let database = Database::in_memory(SecretBox::from_key(&[8; 32])).unwrap();
        let store = database.jobs();
        let mut deployed = new_job();
        deployed.status = JobStatus::WaitingForUrl;
        deployed.cvm_id = Some("cvm-9".into());
        let undeployed = new_job();
        for job in [&deployed, &undeployed] {
            store.insert(job).await.unwrap();
        }
        let foreign = SecretBox::from_key(&[9; 32]).seal(b"{}");
        database
            .write(move |conn, _, _| {
                conn.execute("UPDATE jobs SET secrets = ?1", params![foreign])?;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(store.fail_unreadable().await.unwrap().len(), 2);
        let deployed = store.get(deployed.id).await.unwrap().unwrap();
        assert_eq!(deployed.status, JobStatus::Failed);
        assert!(deployed.deployment_teardown_pending);
        assert!(
            deployed
                .error
                .unwrap()
                .contains("cannot read this job's stored secrets")
        );
        assert!(
            !store
                .get(undeployed.id)
                .await
                .unwrap()
                .unwrap()
                .deployment_teardown_pending
        );
        assert_eq!(
            shown_status(store.status(deployed.id).await).as_deref(),
            Some("failed")
        );
    }
}
