//! The job table on PostgreSQL: the same rows, rules and answers as on
//! SQLite. Status reads come from the database, so any replica answers for
//! any job as of its last commit.

use std::time::Duration;

use axum::body::Bytes;
use uuid::Uuid;

use super::{Row, Started, UnreadableJob, fail_for_unreadable, timestamp};
use crate::api_types::JobStatusView;
use crate::jobs::{Job, JobStatus, JobTag};
use crate::store::StoreError;
use crate::store::postgres::Postgres;

/// How often a followed job's row is read for a new revision.
pub(super) const FOLLOW_POLL: Duration = Duration::from_millis(250);

pub(super) async fn insert(pg: &Postgres, row: &Row) -> Result<(), StoreError> {
    let client = pg.writer().await?;
    insert_on(pg, &**client, row).await
}

/// Inserts `row`; a job someone must work on is leased to this replica,
/// which starts driving it at once.
async fn insert_on(
    pg: &Postgres,
    client: &impl tokio_postgres::GenericClient,
    row: &Row,
) -> Result<(), StoreError> {
    let holder = row.worked_on.then_some(&*pg.replica);
    client
        .execute(
            "INSERT INTO jobs (id, status, record, secrets, updated_at, leased_by, leased_until)
             VALUES ($1, $2, $3, $4, $5, $6,
                     CASE WHEN $6::TEXT IS NULL THEN NULL ELSE statement_timestamp() + make_interval(secs => $7) END)",
            &[
                &row.id,
                &row.status,
                &row.record,
                &&row.secrets[..],
                &row.updated_at,
                &holder,
                &pg.job_lease().as_secs_f64(),
            ],
        )
        .await
        .map_err(|error| pg.error(error))?;
    Ok(())
}

pub(super) async fn insert_idempotent(
    pg: &Postgres,
    row: &Row,
    key: [u8; 32],
    request: [u8; 32],
) -> Result<Started, StoreError> {
    let mut client = pg.writer().await?;
    let transaction = client
        .transaction()
        .await
        .map_err(|error| pg.error(error))?;
    // Replicas racing on one key take turns here, so one job is stored.
    pg.lock_idempotency_key(&transaction, &key).await?;
    if let Some(started) = started_under(pg, &*transaction, &key, &request).await? {
        return Ok(started);
    }
    insert_on(pg, &*transaction, row).await?;
    // A key whose job was purged names a new job now.
    transaction
        .execute(
            "INSERT INTO idempotency_keys (key_sha256, job_id, request_sha256) VALUES ($1, $2, $3)
             ON CONFLICT (key_sha256) DO UPDATE
             SET job_id = EXCLUDED.job_id, request_sha256 = EXCLUDED.request_sha256",
            &[&key.as_slice(), &row.id, &request.as_slice()],
        )
        .await
        .map_err(|error| pg.error(error))?;
    transaction
        .commit()
        .await
        .map_err(|error| pg.error(error))?;
    Ok(Started::New)
}

pub(super) async fn started_under_key(
    pg: &Postgres,
    key: [u8; 32],
    request: [u8; 32],
) -> Result<Option<Started>, StoreError> {
    let client = pg.client().await?;
    started_under(pg, &**client, &key, &request).await
}

async fn started_under(
    pg: &Postgres,
    client: &impl tokio_postgres::GenericClient,
    key: &[u8; 32],
    request: &[u8; 32],
) -> Result<Option<Started>, StoreError> {
    let found = client
        .query_opt(
            "SELECT k.job_id, k.request_sha256 FROM idempotency_keys k
             JOIN jobs j ON j.id = k.job_id WHERE k.key_sha256 = $1",
            &[&key.as_slice()],
        )
        .await
        .map_err(|error| pg.error(error))?;
    found
        .map(|row| {
            let id: String = row.get(0);
            let stored_request: &[u8] = row.get(1);
            let job_id = Uuid::parse_str(&id).map_err(|error| StoreError::Corrupt {
                id: id.clone(),
                reason: error.to_string(),
            })?;
            Ok(Started::Earlier {
                job_id,
                same_request: stored_request == request.as_slice(),
            })
        })
        .transpose()
}

/// How a write treats the job's lease. Whatever the rule, a job written
/// in a status nobody works on (the wallet step, or the end) is leased to
/// nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeaseRule {
    /// Writes whoever holds the lease, and leaves it as it is: the writes
    /// of statuses nobody holds (expiry, announcing, teardown).
    Ignore,
    /// Writes only while this replica holds the lease (a fenced write of
    /// the job's driver or registration), and keeps it.
    Held,
    /// Takes the lease for this replica (a registration starting).
    Take,
}

/// Replaces the stored row, if `expected` is its status (or whatever it is,
/// without one) and `lease` allows it; returns whether it did.
pub(super) async fn update(
    pg: &Postgres,
    row: &Row,
    expected: Option<JobStatus>,
    lease: LeaseRule,
) -> Result<bool, StoreError> {
    let client = pg.writer().await?;
    let changed = client
        .execute(
            "UPDATE jobs SET status = $2, record = $3, secrets = $4, updated_at = $5,
                 revision = revision + 1,
                 leased_by = CASE WHEN NOT $7 THEN NULL WHEN $8 THEN $9 ELSE leased_by END,
                 leased_until = CASE WHEN NOT $7 THEN NULL
                     WHEN $8 THEN statement_timestamp() + make_interval(secs => $10) ELSE leased_until END
             WHERE id = $1 AND ($6::TEXT IS NULL OR status = $6)
                 AND (NOT $11 OR leased_by = $9)",
            &[
                &row.id,
                &row.status,
                &row.record,
                &&row.secrets[..],
                &row.updated_at,
                &expected.map(JobStatus::as_str),
                &row.worked_on,
                &(lease == LeaseRule::Take),
                &&*pg.replica,
                &pg.job_lease().as_secs_f64(),
                &(lease == LeaseRule::Held),
            ],
        )
        .await
        .map_err(|error| pg.error(error))?;
    if changed == 1 && pg.faults.loses_answer_to(row.status) {
        return Err(StoreError::Postgres {
            database: pg.database().to_owned(),
            reason: "the connection was lost after COMMIT (simulated)".into(),
            transient: true,
        });
    }
    Ok(changed == 1)
}

/// Leases to this replica up to `limit` jobs in `statuses` whose lease
/// has run out (or that nobody ever held), oldest change first, and
/// returns them. Rows another replica is claiming at the same instant are
/// skipped, so two claims never return one job. A job whose record cannot
/// be read is logged and stays leased until its lease runs out, for a
/// replica that can read it.
pub(super) async fn claim(
    pg: &Postgres,
    statuses: &[JobStatus],
    limit: i64,
) -> Result<Vec<Job>, StoreError> {
    let client = pg.writer().await?;
    let names: Vec<&str> = statuses.iter().map(|status| status.as_str()).collect();
    let rows = client
        .query(
            // The picked rows are locked once (MATERIALIZED), and rows
            // another replica is locking are skipped, not waited for.
            "WITH picked AS MATERIALIZED (
                 SELECT id FROM jobs
                 WHERE status = ANY($3)
                     AND (leased_until IS NULL OR leased_until < statement_timestamp())
                 ORDER BY updated_at LIMIT $4
                 FOR UPDATE SKIP LOCKED)
             UPDATE jobs SET leased_by = $1,
                 leased_until = statement_timestamp() + make_interval(secs => $2)
             FROM picked WHERE jobs.id = picked.id
             RETURNING jobs.id, jobs.record, jobs.secrets",
            &[&&*pg.replica, &pg.job_lease().as_secs_f64(), &names, &limit],
        )
        .await
        .map_err(|error| pg.error(error))?;
    let mut jobs = readable(
        pg,
        rows,
        "a claimed job cannot be read here; it is left for a replica that can read it",
    );
    jobs.sort_by_key(|job| job.updated_at);
    Ok(jobs)
}

/// Extends this replica's leases of `ids`; returns those of `ids` that
/// another replica holds now, or that are no longer stored. A job whose
/// lease nobody holds (its own last write cleared it) is in neither.
pub(super) async fn renew(pg: &Postgres, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
    let client = pg.lease_keeper().await?;
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let rows = client
        .query(
            // The SELECT sees the rows as they were before the UPDATE, which
            // only touches this replica's own leases.
            "WITH renewed AS (
                 UPDATE jobs SET leased_until = statement_timestamp() + make_interval(secs => $2)
                 WHERE leased_by = $1 AND id = ANY($3) RETURNING id)
             SELECT wanted.id FROM unnest($3::TEXT[]) AS wanted(id)
             LEFT JOIN jobs ON jobs.id = wanted.id
             WHERE jobs.id IS NULL OR (jobs.leased_by IS NOT NULL AND jobs.leased_by <> $1)",
            &[&&*pg.replica, &pg.job_lease().as_secs_f64(), &ids],
        )
        .await
        .map_err(|error| pg.error(error))?;
    Ok(rows
        .iter()
        .filter_map(|row| Uuid::parse_str(row.get(0)).ok())
        .collect())
}

/// Gives up this replica's leases of `ids`, so another replica may claim
/// those jobs at once.
pub(super) async fn release(pg: &Postgres, ids: &[Uuid]) -> Result<(), StoreError> {
    let client = pg.writer().await?;
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    client
        .execute(
            "UPDATE jobs SET leased_by = NULL, leased_until = NULL
             WHERE leased_by = $1 AND id = ANY($2)",
            &[&&*pg.replica, &ids],
        )
        .await
        .map_err(|error| pg.error(error))?;
    Ok(())
}

pub(super) async fn get(pg: &Postgres, id: Uuid) -> Result<Option<Job>, StoreError> {
    let client = pg.client().await?;
    let id = id.to_string();
    let row = client
        .query_opt("SELECT record, secrets FROM jobs WHERE id = $1", &[&id])
        .await
        .map_err(|error| pg.error(error))?;
    row.map(|row| Row::decode(&id, row.get(0), row.get(1), &pg.secrets))
        .transpose()
}

/// A job's status document and revision, if its revision is past `after`:
/// `None` if the job is not stored, `Some(None)` if it has not changed.
pub(super) async fn status_after(
    pg: &Postgres,
    id: Uuid,
    after: i64,
) -> Result<Option<Option<(i64, Bytes)>>, StoreError> {
    let client = pg.client().await?;
    let text_id = id.to_string();
    let row = client
        .query_opt(
            "SELECT revision,
                    CASE WHEN revision > $2 THEN record END,
                    CASE WHEN revision > $2 THEN secrets END
             FROM jobs WHERE id = $1",
            &[&text_id, &after],
        )
        .await
        .map_err(|error| pg.error(error))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let revision: i64 = row.get(0);
    let (Some(record), Some(sealed)) = (
        row.get::<_, Option<&str>>(1),
        row.get::<_, Option<&[u8]>>(2),
    ) else {
        return Ok(Some(None));
    };
    let job = Row::decode(&text_id, record, sealed, &pg.secrets)?;
    // Rendered as the SQLite view renders it, so the same secret rules hold.
    let document =
        serde_json::to_vec(&JobStatusView::of(&job)).map_err(|error| StoreError::Corrupt {
            id: text_id,
            reason: format!("its status does not render: {error}"),
        })?;
    Ok(Some(Some((revision, Bytes::from(document)))))
}

pub(super) async fn in_status(
    pg: &Postgres,
    statuses: &[JobStatus],
) -> Result<Vec<Job>, StoreError> {
    let client = pg.client().await?;
    let names: Vec<&str> = statuses.iter().map(|status| status.as_str()).collect();
    let rows = client
        .query(
            "SELECT id, record, secrets FROM jobs WHERE status = ANY($1) ORDER BY updated_at",
            &[&names],
        )
        .await
        .map_err(|error| pg.error(error))?;
    Ok(readable(
        pg,
        rows,
        "a stored job cannot be read; it is left out (its status says why)",
    ))
}

/// The jobs of `rows` (id, record, secrets) that can be read; each one that
/// cannot is logged by id, saying `left_out`, so it hides no other.
fn readable(pg: &Postgres, rows: Vec<tokio_postgres::Row>, left_out: &str) -> Vec<Job> {
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        let id: &str = row.get(0);
        match Row::decode(id, row.get(1), row.get(2), &pg.secrets) {
            Ok(job) => jobs.push(job),
            Err(error) => tracing::error!(job = %JobTag::of(id), %error, "{left_out}"),
        }
    }
    jobs
}

pub(super) async fn fail_unreadable(pg: &Postgres) -> Result<Vec<UnreadableJob>, StoreError> {
    let mut client = pg.writer().await?;
    let transaction = client
        .transaction()
        .await
        .map_err(|error| pg.error(error))?;
    let rows = transaction
        .query(
            // Rows locked in a steady order; a deadlock with another
            // statement is transient, and the new leader tries again.
            "SELECT id, record, secrets FROM jobs
             WHERE status NOT IN ('failed', 'complete')
                 AND (leased_by IS NULL OR leased_by = $1 OR leased_until < statement_timestamp())
             ORDER BY id FOR UPDATE",
            &[&&*pg.replica],
        )
        .await
        .map_err(|error| pg.error(error))?;
    let now = chrono::Utc::now();
    let mut unreadable = Vec::new();
    for row in rows {
        let (id, record, sealed): (String, String, &[u8]) = (row.get(0), row.get(1), row.get(2));
        let reason = match Row::decode(&id, &record, sealed, &pg.secrets) {
            Ok(_) => continue,
            Err(StoreError::Corrupt { reason, .. }) => reason,
            Err(other) => other.to_string(),
        };
        match fail_for_unreadable(&record, &reason, now) {
            Some(job) => {
                let failed = Row::encode(&job, &pg.secrets)?;
                transaction
                    .execute(
                        "UPDATE jobs SET status = $2, record = $3, secrets = $4, updated_at = $5,
                             revision = revision + 1, leased_by = NULL, leased_until = NULL
                         WHERE id = $1",
                        &[
                            &failed.id,
                            &failed.status,
                            &failed.record,
                            &&failed.secrets[..],
                            &failed.updated_at,
                        ],
                    )
                    .await
                    .map_err(|error| pg.error(error))?;
            }
            None => {
                transaction
                    .execute(
                        "UPDATE jobs SET status = $2, updated_at = $3, revision = revision + 1,
                             leased_by = NULL, leased_until = NULL
                         WHERE id = $1",
                        &[&id, &JobStatus::Failed.as_str(), &timestamp(now)],
                    )
                    .await
                    .map_err(|error| pg.error(error))?;
            }
        }
        unreadable.push(UnreadableJob { id, reason });
    }
    transaction
        .commit()
        .await
        .map_err(|error| pg.error(error))?;
    Ok(unreadable)
}

pub(super) async fn purge_finished(pg: &Postgres, cutoff: String) -> Result<usize, StoreError> {
    let mut client = pg.writer().await?;
    let transaction = client
        .transaction()
        .await
        .map_err(|error| pg.error(error))?;
    transaction
        .execute(
            "DELETE FROM idempotency_keys WHERE job_id IN (
                SELECT id FROM jobs WHERE status IN ('complete', 'failed') AND updated_at < $1)",
            &[&cutoff],
        )
        .await
        .map_err(|error| pg.error(error))?;
    let purged = transaction
        .execute(
            "DELETE FROM jobs WHERE status IN ('complete', 'failed') AND updated_at < $1",
            &[&cutoff],
        )
        .await
        .map_err(|error| pg.error(error))?;
    transaction
        .commit()
        .await
        .map_err(|error| pg.error(error))?;
    Ok(usize::try_from(purged).unwrap_or(usize::MAX))
}

/// The event id of a job's `revision`.
pub(super) fn event_id(revision: i64) -> String {
    format!("rev-{revision}")
}

/// The revision an event id of [`event_id`] names.
pub(super) fn revision_of(event_id: &str) -> Option<i64> {
    event_id.trim().strip_prefix("rev-")?.parse().ok()
}
