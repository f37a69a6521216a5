//! The store on PostgreSQL, for several replicas sharing one database.
//!
//! The tables are the SQLite file's (`migrations/postgres/`), applied at
//! start-up by one replica at a time (a transaction-level advisory lock),
//! each migration in the transaction that records it. Secrets are sealed
//! with the server key as on SQLite, and a sealed key check refuses a
//! replica whose key differs. Every write is its own transaction; a
//! compare-and-set is one conditional `UPDATE`, and an idempotency key is
//! checked and stored under an advisory lock on the key, so replicas
//! racing on one key store one job.
//!
//! A job someone works on (its runner steps, or its registration) is
//! leased to one replica at a time (`leased_by`, `leased_until`, times on
//! the database's clock): the replica that stores a job holds it first,
//! renews the lease while it works, and writes the job only while it holds
//! it (a fenced `UPDATE`). A lease that runs out (its replica died) is
//! claimed by another replica with `FOR UPDATE SKIP LOCKED`, which resumes
//! the job from its last committed step.
//!
//! The sweeps that must not run twice at once (expiry at the wallet step,
//! teardown and announcement retries, judging unreadable records) run on
//! the replica holding the leader lock, a session-level advisory lock on a
//! connection of its own ([`LeaderLock`]); when it dies its session ends,
//! PostgreSQL releases the lock, and a waiting replica takes over.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Pool, Runtime};
use tokio_postgres::error::SqlState;

use super::file::{KEY_CHECK, KEY_CHECK_TEXT};
use super::pg_tls::{self, Tls};
use super::{RefusalCountdown, StoreError};
use crate::seal::SecretBox;

/// The schema migrations this release carries, in order: version, name, SQL.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_jobs",
        include_str!("../../migrations/postgres/0001_jobs.sql"),
    ),
    (
        2,
        "0002_job_leases",
        include_str!("../../migrations/postgres/0002_job_leases.sql"),
    ),
    (
        3,
        "0003_wallet_nonces",
        include_str!("../../migrations/postgres/0003_wallet_nonces.sql"),
    ),
];

/// How much later than its own clock says a replica forgets spent wallet
/// nonces: the clock skew between replicas it tolerates.
const CLOCK_SKEW_MARGIN_MS: i64 = 5 * 60 * 1000;

/// The first key of this server's advisory locks (`"DLBP"`); the second is
/// what the lock guards, within the schema the connection uses.
const LOCK_SPACE: i32 = 0x444c_4250;
/// Guards applying migrations.
const MIGRATION_LOCK: i32 = 1;
/// Held, before job leases, by the one replica that ran every job; a
/// replica of such a release must not run beside one that leases jobs.
const EARLIER_RUNNER_LOCK: i32 = 2;
/// Held by the replica that runs the sweeps.
const LEADER_LOCK: i32 = 3;
/// Guards checking and storing one idempotency key (keyed by its hash).
const IDEMPOTENCY_LOCK_SPACE: i32 = 0x444c_4251;

/// How often the leader lock's connection is checked, and how long a check
/// may take before the lock counts as lost.
const LEADER_LOCK_CHECK: Duration = Duration::from_secs(5);

/// How long a job's lease lasts unless renewed, by default.
const DEFAULT_JOB_LEASE: Duration = Duration::from_secs(30);

/// Where the PostgreSQL database is: `DATABASE_URL`.
// No `Debug`: the URL may carry a password.
#[derive(Clone)]
pub struct PostgresConfig {
    config: tokio_postgres::Config,
    /// The database as logs and errors name it (no password).
    shown: Arc<str>,
    /// The most connections of the pool.
    pool_size: usize,
    /// How long a job's lease lasts unless its holder renews it.
    job_lease: Duration,
    /// Plain, or TLS with the server verified (`sslmode`).
    tls: Tls,
}

impl PostgresConfig {
    /// Parses a `postgres://` (or `postgresql://`) URL, or key=value
    /// connection string; `sslmode` and `sslrootcert` say whether and how to
    /// use TLS (see `pg_tls`). The error never repeats the text (it may hold
    /// a password).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (url, tls) = pg_tls::split(url)?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|error| format!("DATABASE_URL is not a PostgreSQL connection URL: {error}"))?;
        if matches!(tls, Tls::Off)
            && config.get_ssl_mode() == tokio_postgres::config::SslMode::Require
        {
            // The driver read an sslmode the options above did not: never
            // let an asked-for TLS turn into plain text.
            return Err(
                "DATABASE_URL's sslmode could not be read: write it as sslmode=verify-full".into(),
            );
        }
        config.ssl_mode(tls.ssl_mode());
        // A replica whose peer vanished without closing (a cut network)
        // notices within a minute rather than the OS's two hours.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("protocol-api");
        }
        let host = config
            .get_hosts()
            .first()
            .map(|host| match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".into());
        if host.contains('@') {
            // The URL split at the first `@` of an unescaped password: the
            // rest of the password would be named as the host in every log.
            return Err(
                "DATABASE_URL's host part holds an '@': percent-encode '@' in the password as %40"
                    .into(),
            );
        }
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let dbname = config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres");
        let shown = format!("postgres://{host}:{port}/{dbname}").into();
        Ok(Self {
            config,
            shown,
            pool_size: 16,
            // Set, with what follows from it, by `with_job_lease`.
            job_lease: Duration::ZERO,
            tls,
        }
        .with_job_lease(DEFAULT_JOB_LEASE))
    }

    /// How long a job's lease lasts unless renewed: a replica that dies
    /// holds its jobs this long (the same on every replica).
    pub fn with_job_lease(mut self, lease: Duration) -> Self {
        self.job_lease = lease;
        // A request the database never acknowledges (a network cut without
        // a reset) ends its connection within a sixth of the lease, in time
        // for a renewal tried again on a fresh one.
        self.config.tcp_user_timeout(lease / 6);
        self
    }

    /// The database as logs name it: host, port and name, no credentials.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// Writes the tests make fail as on a full disk.
#[derive(Default)]
pub(super) struct Faults {
    full: AtomicBool,
    pub(super) refusals: RefusalCountdown,
    refused: AtomicU64,
    /// A job status whose next write commits and then reports a lost
    /// connection, as when the connection drops after `COMMIT`.
    lost_answer: std::sync::Mutex<Option<&'static str>>,
}

impl Faults {
    pub(super) fn simulate_full_disk(&self, full: bool) {
        self.full.store(full, Ordering::SeqCst);
    }

    pub(super) fn refusals(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    pub(super) fn lose_answer_to(&self, status: &'static str) {
        *self
            .lost_answer
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(status);
    }

    /// Whether the answer to this committed write to `status` is lost.
    pub(super) fn loses_answer_to(&self, status: &str) -> bool {
        let mut lost = self
            .lost_answer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if lost.is_some_and(|lost| lost == status) {
            *lost = None;
            return true;
        }
        false
    }

    /// Refuses this write if a simulated full disk says so.
    fn check(&self, database: &str) -> Result<(), StoreError> {
        if self.refusals.refuses_this_one() || self.full.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Full {
                path: database.to_owned(),
            });
        }
        Ok(())
    }
}

/// The PostgreSQL backend: a pool of connections and the server key.
pub(super) struct Postgres {
    pool: Pool,
    /// A connection of its own for renewing job leases, so a busy pool
    /// never delays a renewal past its lease.
    lease_pool: Pool,
    config: PostgresConfig,
    pub(super) secrets: SecretBox,
    pub(super) faults: Faults,
    /// This process as the holder of job leases: unique per connect, so
    /// a restarted replica never mistakes its predecessor's leases for
    /// its own.
    pub(super) replica: Arc<str>,
}

impl Postgres {
    /// Connects, migrates and checks the key (see the module's docs).
    pub(super) async fn connect(
        config: &PostgresConfig,
        secrets: SecretBox,
    ) -> Result<Self, StoreError> {
        let pool = |size: usize| {
            Pool::builder(config.tls.manager(config.config.clone()))
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(Duration::from_secs(30)))
                .create_timeout(Some(Duration::from_secs(10)))
                .build()
                .map_err(|error| StoreError::Postgres {
                    database: config.shown.to_string(),
                    reason: error.to_string(),
                    transient: false,
                })
        };
        let postgres = Self {
            pool: pool(config.pool_size)?,
            lease_pool: pool(1)?,
            config: config.clone(),
            secrets,
            faults: Faults::default(),
            replica: uuid::Uuid::new_v4().to_string().into(),
        };
        postgres.migrate_and_check_key().await?;
        Ok(postgres)
    }

    /// How long a job's lease lasts unless renewed.
    pub(super) fn job_lease(&self) -> Duration {
        self.config.job_lease
    }

    /// The database as errors name it.
    pub(super) fn database(&self) -> &str {
        &self.config.shown
    }

    /// PostgreSQL's `error`, classified: a full disk is [`StoreError::Full`];
    /// a lost connection, a restarting server or a serialization conflict
    /// pass by themselves.
    pub(super) fn error(&self, error: tokio_postgres::Error) -> StoreError {
        let database = self.database().to_owned();
        match error.as_db_error() {
            Some(db) if *db.code() == SqlState::DISK_FULL => StoreError::Full { path: database },
            Some(db) => {
                let code = db.code().code();
                let transient = code.starts_with("08") // connection exceptions
                    || code.starts_with("53") // insufficient resources
                    || code.starts_with("57P") // the server shutting down or starting
                    || code == "40001" // serialization failure
                    || code == "40P01"; // deadlock
                StoreError::Postgres {
                    database,
                    reason: format!("{} ({code})", db.message()),
                    transient,
                }
            }
            None => {
                // Not a database's answer: a lost or failed connection passes
                // by itself; a row or type mismatch is a bug, retried in vain.
                let io = std::error::Error::source(&error)
                    .is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some());
                // The driver's own text is generic ("error performing TLS
                // handshake"); what went wrong is in its sources.
                let mut reason = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    reason = format!("{reason}: {cause}");
                    source = cause.source();
                }
                StoreError::Postgres {
                    database,
                    transient: error.is_closed() || io,
                    reason,
                }
            }
        }
    }

    /// A connection of the pool.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.connection_of(&self.pool).await
    }

    /// The connection that renews job leases: refused first when a
    /// simulated full disk says so, as a write.
    pub(super) async fn lease_keeper(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.faults.check(self.database())?;
        self.connection_of(&self.lease_pool).await
    }

    /// A connection of `pool`; waiting in vain for one passes by itself.
    async fn connection_of(&self, pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
        pool.get().await.map_err(|error| match error {
            deadpool_postgres::PoolError::Backend(error) => self.error(error),
            other => StoreError::Postgres {
                database: self.database().to_owned(),
                reason: other.to_string(),
                transient: true,
            },
        })
    }

    /// Records `nonce` as spent until `forget_after_ms`; false when some
    /// replica spent it already. Rows past their time go on the way, five
    /// minutes late: each replica judges a signature's age by its own clock,
    /// and one running fast must not forget a nonce another still accepts.
    pub(super) async fn spend_wallet_nonce(
        &self,
        nonce: &[u8],
        forget_after_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let client = self.writer().await?;
        let pg = |error| self.error(error);
        client
            .execute(
                "DELETE FROM wallet_nonces WHERE forget_after < $1",
                &[&now_ms.saturating_sub(CLOCK_SKEW_MARGIN_MS)],
            )
            .await
            .map_err(pg)?;
        let inserted = client
            .execute(
                "INSERT INTO wallet_nonces (nonce, forget_after) VALUES ($1, $2)
                 ON CONFLICT (nonce) DO NOTHING",
                &[&nonce, &forget_after_ms],
            )
            .await
            .map_err(pg)?;
        Ok(inserted == 1)
    }

    /// A connection for a write: refused first when a simulated full disk
    /// says so.
    pub(super) async fn writer(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.faults.check(self.database())?;
        self.client().await
    }

    /// Takes the advisory lock on idempotency key `key` for the rest of
    /// `transaction`.
    pub(super) async fn lock_idempotency_key(
        &self,
        transaction: &deadpool_postgres::Transaction<'_>,
        key: &[u8],
    ) -> Result<(), StoreError> {
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock($1, hashtext(encode($2, 'hex')))",
                &[&IDEMPOTENCY_LOCK_SPACE, &key],
            )
            .await
            .map_err(|error| self.error(error))?;
        Ok(())
    }

    /// Applies the migrations the database lacks and checks the server key,
    /// in one transaction under the migration lock.
    async fn migrate_and_check_key(&self) -> Result<(), StoreError> {
        let pg = |error| self.error(error);
        let schema = |reason: String| StoreError::Schema {
            database: self.database().to_owned(),
            reason,
        };
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(pg)?;
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock($1, $2 # hashtext(coalesce(current_schema(), '')))",
                &[&LOCK_SPACE, &MIGRATION_LOCK],
            )
            .await
            .map_err(pg)?;
        // A release from before job leases drives every job it finds,
        // leased or not: none of its replicas may run beside this one.
        let earlier: i64 = transaction
            .query_one(
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND objsubid = 2
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                     AND classid::bigint = $1
                     AND objid::bigint = ($2 # hashtext(coalesce(current_schema(), '')))::bigint
                         & 4294967295",
                &[&i64::from(LOCK_SPACE), &EARLIER_RUNNER_LOCK],
            )
            .await
            .map_err(pg)?
            .get(0);
        if earlier > 0 {
            return Err(schema(
                "replicas of an earlier release, which run every job without leases, are \
                 running on it: stop all of them, then start this release on every replica"
                    .into(),
            ));
        }
        transaction
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version INTEGER PRIMARY KEY,
                    name TEXT NOT NULL,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )",
            )
            .await
            .map_err(pg)?;
        let applied: Option<i32> = transaction
            .query_one("SELECT max(version) FROM schema_migrations", &[])
            .await
            .map_err(pg)?
            .get(0);
        let applied = applied.unwrap_or(0);
        let known = MIGRATIONS.last().map_or(0, |(version, _, _)| *version);
        if applied > known {
            return Err(schema(format!(
                "its schema version {applied} is newer than this release's ({known}); a newer \
                 release migrated it, so run that release"
            )));
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|(version, ..)| *version > applied) {
            transaction
                .batch_execute(sql)
                .await
                .map_err(|error| schema(format!("migration {name} failed: {}", pg(error))))?;
            transaction
                .execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    &[version, name],
                )
                .await
                .map_err(pg)?;
            tracing::info!(
                database = self.database(),
                migration = name,
                "applied a schema migration"
            );
        }
        let check = transaction
            .query_opt("SELECT value FROM meta WHERE name = $1", &[&KEY_CHECK])
            .await
            .map_err(pg)?;
        let wrong_key = || StoreError::WrongKey {
            path: self.database().to_owned(),
        };
        match check {
            Some(row) => match self.secrets.open(row.get::<_, &[u8]>(0)) {
                Ok(text) if text.as_slice() == KEY_CHECK_TEXT => {}
                _ => return Err(wrong_key()),
            },
            None => {
                // Nothing is sealed before the first key check is stored,
                // but a table filled by hand must not be taken over.
                let sealed = transaction
                    .query(
                        "(SELECT secrets FROM jobs LIMIT 1)
                         UNION ALL (SELECT api_key FROM coordinator_orgs LIMIT 1)
                         UNION ALL (SELECT record FROM local_deployments LIMIT 1)",
                        &[],
                    )
                    .await
                    .map_err(pg)?;
                if !sealed.is_empty()
                    && !sealed
                        .iter()
                        .any(|row| self.secrets.open(row.get::<_, &[u8]>(0)).is_ok())
                {
                    return Err(wrong_key());
                }
                transaction
                    .execute(
                        "INSERT INTO meta (name, value) VALUES ($1, $2)",
                        &[&KEY_CHECK, &self.secrets.seal(KEY_CHECK_TEXT)],
                    )
                    .await
                    .map_err(pg)?;
            }
        }
        transaction.commit().await.map_err(pg)?;
        Ok(())
    }

    /// A connection of its own for the leader lock (the lock lives as
    /// long as the session).
    async fn lock_session(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError> {
        let (client, connection) = self
            .config
            .tls
            .connect(&self.config.config)
            .await
            .map_err(|error| self.error(error))?;
        let database = self.database().to_owned();
        let connection = tokio::spawn(async move {
            if let Ok(Err(error)) = connection.await {
                tracing::warn!(%database, %error, "the leader lock's connection ended");
            }
        });
        Ok((client, connection))
    }

    /// The leader lock if no other replica holds it now.
    pub(super) async fn try_leader_lock(&self) -> Result<Option<LeaderLock>, StoreError> {
        let (client, connection) = self.lock_session().await?;
        let taken: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2 # hashtext(coalesce(current_schema(), '')))",
                &[&LOCK_SPACE, &LEADER_LOCK],
            )
            .await
            .map_err(|error| self.error(error))?
            .get(0);
        if !taken {
            connection.abort();
            return Ok(None);
        }
        Ok(Some(LeaderLock::held(client, connection)))
    }

    /// Waits for the leader lock; a connection lost while waiting is made
    /// again.
    pub(super) async fn wait_leader_lock(&self) -> Result<LeaderLock, StoreError> {
        let mut attempt = 0;
        loop {
            let taken = async {
                let (client, connection) = self.lock_session().await?;
                // A role's or database's statement or lock timeout would
                // cancel the wait (and end this replica): not on this session.
                client
                    .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
                    .await
                    .map_err(|error| self.error(error))?;
                client
                    .execute(
                        "SELECT pg_advisory_lock($1, $2 # hashtext(coalesce(current_schema(), '')))",
                        &[&LOCK_SPACE, &LEADER_LOCK],
                    )
                    .await
                    .map_err(|error| self.error(error))?;
                Ok::<_, StoreError>(LeaderLock::held(client, connection))
            }
            .await;
            match taken {
                Ok(lock) => return Ok(lock),
                Err(error) if error.is_transient() => {
                    attempt += 1;
                    tracing::warn!(%error, "waiting for the leader lock failed; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * attempt.min(25))).await;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// Says this process leads: it runs the sweeps (and, on SQLite, every
/// job). On SQLite it is the process's by
/// owning the file; on PostgreSQL it is a session-level advisory lock,
/// held while its connection lives: [`LeaderLock::lost`] says when it no
/// longer is, and dropping the lock releases it.
pub struct LeaderLock {
    /// Whether other processes share the store.
    shared: bool,
    /// Answers once the lock is lost, with why (PostgreSQL only).
    lost: Option<tokio::sync::oneshot::Receiver<String>>,
    /// Why it was lost, once it was.
    reason: Option<String>,
    /// Keeps the lock's connection and checks it; aborted on drop.
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl LeaderLock {
    /// The lock of a process that owns its store alone.
    pub(super) fn exclusive() -> Self {
        Self {
            shared: false,
            lost: None,
            reason: None,
            keeper: None,
        }
    }

    /// A lock held by the session of `client`.
    fn held(client: tokio_postgres::Client, mut connection: tokio::task::JoinHandle<()>) -> Self {
        let (tell, lost) = tokio::sync::oneshot::channel();
        let keeper = tokio::spawn(async move {
            let reason = loop {
                tokio::select! {
                    _ = &mut connection => break "its connection to the database ended".to_owned(),
                    () = tokio::time::sleep(LEADER_LOCK_CHECK) => {}
                }
                match tokio::time::timeout(LEADER_LOCK_CHECK, client.simple_query("SELECT 1")).await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => break format!("its connection failed: {error}"),
                    Err(_) => {
                        break format!(
                            "its connection did not answer within {} s",
                            LEADER_LOCK_CHECK.as_secs()
                        );
                    }
                }
            };
            connection.abort();
            let _ = tell.send(reason);
        });
        Self {
            shared: true,
            lost: Some(lost),
            reason: None,
            keeper: Some(keeper),
        }
    }

    /// Whether other processes share the store (and wait for this lock).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Waits until the lock is lost and says why; never, for a process
    /// that owns its store alone. A process whose lock is lost must stop
    /// running jobs at once: another replica takes them over.
    pub async fn lost(&mut self) -> String {
        if let Some(reason) = &self.reason {
            return reason.clone();
        }
        let Some(lost) = self.lost.as_mut() else {
            return std::future::pending().await;
        };
        let reason = lost
            .await
            .unwrap_or_else(|_| "its keeper stopped".to_owned());
        self.lost = None;
        self.reason = Some(reason.clone());
        reason
    }
}

impl Drop for LeaderLock {
    fn drop(&mut self) {
        // The keeper owns the session: ending it releases the lock.
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
    }
}
