//! A registry in SQLite with the contracts' rules, for the embedded default.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};

use delibera_identity::PublicKey;

use crate::accounts::{Accounts, KeyPermission, implicit_account};
use crate::registry::{EndpointUpdate, Registry};
use crate::{
    AccountId, CoordinatorRecord, CoordinatorRegistration, Error, RegisteredWorker, RegistryStats,
    Result, WorkerRecord, WorkerRegistration, messages,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS coordinators (
    coordinator_did TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    endpoint_url    TEXT NOT NULL,
    cvm_id          TEXT NOT NULL,
    min_workers     INTEGER NOT NULL,
    max_workers     INTEGER NOT NULL,
    registered_at   INTEGER NOT NULL,
    is_active       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    worker_did      TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    coordinator_did TEXT NOT NULL,
    endpoint_url    TEXT NOT NULL,
    cvm_id          TEXT NOT NULL,
    registered_at   INTEGER NOT NULL,
    is_active       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS roster (
    worker_id     TEXT PRIMARY KEY,
    account_id    TEXT,
    registered_at INTEGER NOT NULL,
    registered_by TEXT NOT NULL,
    active        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS roster_coordinators (
    account_id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS account_keys (
    account_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    full_access INTEGER NOT NULL,
    PRIMARY KEY (account_id, public_key)
);
";

const COORDINATOR_COLUMNS: &str = "account_id, coordinator_did, endpoint_url, cvm_id, min_workers, max_workers, registered_at, is_active";
const WORKER_COLUMNS: &str =
    "account_id, coordinator_did, worker_did, endpoint_url, cvm_id, registered_at, is_active";

/// The registry and the worker roster in one SQLite database, enforcing the
/// contracts' rules with their exact panic texts ([`crate::messages`]).
///
/// `admin` plays the registry contract's admin and the coordinator
/// contract's owner; the [`Registry`] methods act as `admin` (the server),
/// except registrations, which act as the given owner. The inherent methods
/// take the caller explicitly, like `predecessor_account_id` on chain.
///
/// Queries run inline under a mutex: they are sub-millisecond on a local
/// file, cheaper than a hop to a blocking thread.
pub struct LocalRegistry {
    connection: Mutex<Connection>,
    admin: AccountId,
}

impl std::fmt::Debug for LocalRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRegistry")
            .field("admin", &self.admin.as_str())
            .finish_non_exhaustive()
    }
}

fn panic(message: impl Into<String>) -> Error {
    Error::ContractPanic {
        message: message.into(),
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// SQLite integers are i64; block timestamps fit until 2262.
fn to_sql_nanos(nanos: u64) -> i64 {
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

fn account_column(row: &Row<'_>, index: usize) -> rusqlite::Result<AccountId> {
    let text: String = row.get(index)?;
    AccountId::try_from(text).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            Box::new(error),
        )
    })
}

fn nanos_column(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(index)?;
    u64::try_from(value).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Integer,
            Box::new(error),
        )
    })
}

fn coordinator_row(row: &Row<'_>) -> rusqlite::Result<CoordinatorRecord> {
    Ok(CoordinatorRecord {
        account_id: account_column(row, 0)?,
        coordinator_did: row.get(1)?,
        endpoint_url: row.get(2)?,
        cvm_id: row.get(3)?,
        min_workers: row.get(4)?,
        max_workers: row.get(5)?,
        registered_at: nanos_column(row, 6)?,
        is_active: row.get(7)?,
    })
}

fn worker_row(row: &Row<'_>) -> rusqlite::Result<WorkerRecord> {
    Ok(WorkerRecord {
        account_id: account_column(row, 0)?,
        coordinator_did: row.get(1)?,
        worker_did: row.get(2)?,
        endpoint_url: row.get(3)?,
        cvm_id: row.get(4)?,
        registered_at: nanos_column(row, 5)?,
        is_active: row.get(6)?,
    })
}

fn roster_row(row: &Row<'_>) -> rusqlite::Result<RegisteredWorker> {
    let account: Option<String> = row.get(1)?;
    Ok(RegisteredWorker {
        worker_id: row.get(0)?,
        account_id: account
            .map(AccountId::try_from)
            .transpose()
            .map_err(|error| {
                rusqlite::Error::FromSqlConversionFailure(
                    1,
                    rusqlite::types::Type::Text,
                    Box::new(error),
                )
            })?,
        registered_at: nanos_column(row, 2)?,
        registered_by: account_column(row, 3)?,
        active: row.get(4)?,
    })
}

impl LocalRegistry {
    /// Opens (or creates) the database at `path`, owner-only (0600; a looser
    /// existing file is tightened).
    pub fn open(path: impl AsRef<Path>, admin: AccountId) -> Result<Self> {
        let path = path.as_ref();
        delibera_data_dir::prepare_sqlite_file(path)?;
        Self::with_connection(Connection::open(path)?, admin)
    }

    /// A registry that lives in memory only (tests, throw-away servers).
    pub fn in_memory(admin: AccountId) -> Result<Self> {
        Self::with_connection(Connection::open_in_memory()?, admin)
    }

    fn with_connection(connection: Connection, admin: AccountId) -> Result<Self> {
        connection.execute_batch(SCHEMA)?;
        Ok(Self {
            connection: Mutex::new(connection),
            admin,
        })
    }

    /// The admin (and roster owner) account.
    pub fn admin(&self) -> &AccountId {
        &self.admin
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-applied change:
        // every change is one statement.
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn is_admin(&self, caller: &AccountId) -> bool {
        caller == &self.admin
    }

    /// `register_coordinator` as `caller` (an upsert keyed by the DID).
    pub fn register_coordinator_as(
        &self,
        caller: &AccountId,
        registration: &CoordinatorRegistration,
    ) -> Result<CoordinatorRecord> {
        self.register_coordinator_at(caller, registration, now_nanos())
    }

    /// [`register_coordinator_as`](Self::register_coordinator_as) in a block
    /// whose timestamp is `block_timestamp` (nanoseconds): the record's
    /// `registered_at`, as on chain. Replaying a call with its block's
    /// timestamp gives the same record.
    pub fn register_coordinator_at(
        &self,
        caller: &AccountId,
        registration: &CoordinatorRegistration,
        block_timestamp: u64,
    ) -> Result<CoordinatorRecord> {
        if !registration.coordinator_did.starts_with("did:") {
            return Err(panic(messages::COORDINATOR_DID_PREFIX));
        }
        if registration.min_workers > registration.max_workers {
            return Err(panic(messages::MIN_ABOVE_MAX));
        }
        if registration.max_workers == 0 {
            return Err(panic(messages::MAX_WORKERS_ZERO));
        }
        let db = self.db();
        if let Some(existing) = get_coordinator(&db, &registration.coordinator_did)?
            && &existing.account_id != caller
            && !self.is_admin(caller)
        {
            return Err(panic(messages::ONLY_REGISTRANT_OR_ADMIN));
        }
        let record = CoordinatorRecord {
            account_id: caller.clone(),
            coordinator_did: registration.coordinator_did.clone(),
            endpoint_url: registration.endpoint_url.clone(),
            cvm_id: registration.cvm_id.clone(),
            min_workers: registration.min_workers,
            max_workers: registration.max_workers,
            registered_at: block_timestamp,
            is_active: true,
        };
        // ON CONFLICT keeps the row (and its place in listings), as the
        // contract's IterableMap keeps an updated key in place.
        db.execute(
            "INSERT INTO coordinators (account_id, coordinator_did, endpoint_url, cvm_id, min_workers, max_workers, registered_at, is_active)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1)
             ON CONFLICT (coordinator_did) DO UPDATE SET account_id = ?1, endpoint_url = ?3, cvm_id = ?4,
                 min_workers = ?5, max_workers = ?6, registered_at = ?7, is_active = 1",
            params![
                record.account_id.as_str(),
                record.coordinator_did,
                record.endpoint_url,
                record.cvm_id,
                record.min_workers,
                record.max_workers,
                to_sql_nanos(record.registered_at),
            ],
        )?;
        Ok(record)
    }

    /// `register_worker` as `caller` (an upsert keyed by the worker DID).
    pub fn register_worker_as(
        &self,
        caller: &AccountId,
        registration: &WorkerRegistration,
    ) -> Result<WorkerRecord> {
        self.register_worker_at(caller, registration, now_nanos())
    }

    /// [`register_worker_as`](Self::register_worker_as) in a block whose
    /// timestamp is `block_timestamp` (nanoseconds).
    pub fn register_worker_at(
        &self,
        caller: &AccountId,
        registration: &WorkerRegistration,
        block_timestamp: u64,
    ) -> Result<WorkerRecord> {
        if !registration.coordinator_did.starts_with("did:") {
            return Err(panic(messages::COORDINATOR_DID_PREFIX));
        }
        if !registration.worker_did.starts_with("did:") {
            return Err(panic(messages::WORKER_DID_PREFIX));
        }
        let db = self.db();
        let coordinator = get_coordinator(&db, &registration.coordinator_did)?
            .ok_or_else(|| panic(messages::COORDINATOR_NOT_FOUND))?;
        if !coordinator.is_active {
            return Err(panic(messages::COORDINATOR_NOT_ACTIVE));
        }
        if let Some(existing) = get_worker(&db, &registration.worker_did)?
            && &existing.account_id != caller
            && !self.is_admin(caller)
        {
            return Err(panic(messages::ONLY_REGISTRANT_OR_ADMIN));
        }
        let record = WorkerRecord {
            account_id: caller.clone(),
            coordinator_did: registration.coordinator_did.clone(),
            worker_did: registration.worker_did.clone(),
            endpoint_url: registration.endpoint_url.clone(),
            cvm_id: registration.cvm_id.clone(),
            registered_at: block_timestamp,
            is_active: true,
        };
        db.execute(
            "INSERT INTO workers (account_id, coordinator_did, worker_did, endpoint_url, cvm_id, registered_at, is_active)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)
             ON CONFLICT (worker_did) DO UPDATE SET account_id = ?1, coordinator_did = ?2,
                 endpoint_url = ?4, cvm_id = ?5, registered_at = ?6, is_active = 1",
            params![
                record.account_id.as_str(),
                record.coordinator_did,
                record.worker_did,
                record.endpoint_url,
                record.cvm_id,
                to_sql_nanos(record.registered_at),
            ],
        )?;
        Ok(record)
    }

    /// `update_worker_endpoint` as `caller`.
    pub fn update_worker_endpoint_as(
        &self,
        caller: &AccountId,
        worker_did: &str,
        endpoint_url: &str,
    ) -> Result<()> {
        let db = self.db();
        let worker =
            get_worker(&db, worker_did)?.ok_or_else(|| panic(messages::WORKER_NOT_FOUND))?;
        if &worker.account_id != caller && !self.is_admin(caller) {
            return Err(panic(messages::ONLY_WORKER_OWNER_UPDATE));
        }
        db.execute(
            "UPDATE workers SET endpoint_url = ?2 WHERE worker_did = ?1",
            params![worker_did, endpoint_url],
        )?;
        Ok(())
    }

    /// `deactivate_worker` as `caller`.
    pub fn deactivate_worker_as(&self, caller: &AccountId, worker_did: &str) -> Result<()> {
        let db = self.db();
        let worker =
            get_worker(&db, worker_did)?.ok_or_else(|| panic(messages::WORKER_NOT_FOUND))?;
        if &worker.account_id != caller && !self.is_admin(caller) {
            return Err(panic(messages::ONLY_WORKER_OWNER_DEACTIVATE));
        }
        db.execute(
            "UPDATE workers SET is_active = 0 WHERE worker_did = ?1",
            params![worker_did],
        )?;
        Ok(())
    }

    /// `deactivate_coordinator` as `caller`.
    pub fn deactivate_coordinator_as(
        &self,
        caller: &AccountId,
        coordinator_did: &str,
    ) -> Result<()> {
        let db = self.db();
        let coordinator = get_coordinator(&db, coordinator_did)?
            .ok_or_else(|| panic(messages::COORDINATOR_NOT_FOUND))?;
        if &coordinator.account_id != caller && !self.is_admin(caller) {
            return Err(panic(messages::ONLY_COORDINATOR_OWNER_DEACTIVATE));
        }
        db.execute(
            "UPDATE coordinators SET is_active = 0 WHERE coordinator_did = ?1",
            params![coordinator_did],
        )?;
        Ok(())
    }

    /// `get_workers_for_coordinator`: its active workers.
    pub fn workers_for_coordinator(&self, coordinator_did: &str) -> Result<Vec<WorkerRecord>> {
        let db = self.db();
        let mut statement = db.prepare(&format!(
            "SELECT {WORKER_COLUMNS} FROM workers WHERE is_active = 1 AND coordinator_did = ?1 ORDER BY rowid"
        ))?;
        let rows = statement.query_map(params![coordinator_did], worker_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Lets `account` add workers to the roster (the coordinator contract's
    /// `register_coordinator`, owner only; attestation is out of scope locally).
    pub fn add_roster_coordinator_as(&self, caller: &AccountId, account: &AccountId) -> Result<()> {
        if !self.is_admin(caller) {
            return Err(panic(messages::only_owner(
                self.admin.as_str(),
                caller.as_str(),
            )));
        }
        self.db().execute(
            "INSERT OR IGNORE INTO roster_coordinators (account_id) VALUES (?1)",
            params![account.as_str()],
        )?;
        Ok(())
    }

    /// Gives `account` the access key `public_key` (`AddKey` locally): what
    /// lets a wallet holding that key sign requests for the account.
    pub fn add_access_key(
        &self,
        account: &AccountId,
        public_key: &PublicKey,
        permission: KeyPermission,
    ) -> Result<()> {
        self.db().execute(
            "INSERT OR REPLACE INTO account_keys (account_id, public_key, full_access) VALUES (?1, ?2, ?3)",
            params![
                account.as_str(),
                public_key.to_near_string(),
                permission == KeyPermission::FullAccess
            ],
        )?;
        Ok(())
    }

    /// Roster `register_worker` as `caller` (the owner or a roster coordinator);
    /// replaces an existing entry, as the contract's map insert does.
    pub fn roster_register_as(
        &self,
        caller: &AccountId,
        worker_id: &str,
        account_id: Option<&AccountId>,
    ) -> Result<()> {
        self.roster_register_at(caller, worker_id, account_id, now_nanos())
    }

    /// [`roster_register_as`](Self::roster_register_as) in a block whose
    /// timestamp is `block_timestamp` (nanoseconds).
    pub fn roster_register_at(
        &self,
        caller: &AccountId,
        worker_id: &str,
        account_id: Option<&AccountId>,
        block_timestamp: u64,
    ) -> Result<()> {
        let db = self.db();
        let coordinator: Option<String> = db
            .query_row(
                "SELECT account_id FROM roster_coordinators WHERE account_id = ?1",
                params![caller.as_str()],
                |row| row.get(0),
            )
            .optional()?;
        if !self.is_admin(caller) && coordinator.is_none() {
            return Err(panic(messages::ONLY_OWNER_OR_COORDINATOR_REGISTERS));
        }
        db.execute(
            "INSERT INTO roster (worker_id, account_id, registered_at, registered_by, active)
             VALUES (?1, ?2, ?3, ?4, 1)
             ON CONFLICT (worker_id) DO UPDATE SET account_id = ?2, registered_at = ?3,
                 registered_by = ?4, active = 1",
            params![
                worker_id,
                account_id.map(AccountId::as_str),
                to_sql_nanos(block_timestamp),
                caller.as_str(),
            ],
        )?;
        Ok(())
    }

    /// Roster `remove_worker` as `caller` (the owner only). Removing an absent
    /// worker succeeds, as on chain.
    pub fn roster_remove_as(&self, caller: &AccountId, worker_id: &str) -> Result<()> {
        if !self.is_admin(caller) {
            return Err(panic(messages::only_owner(
                self.admin.as_str(),
                caller.as_str(),
            )));
        }
        self.db().execute(
            "DELETE FROM roster WHERE worker_id = ?1",
            params![worker_id],
        )?;
        Ok(())
    }

    /// Roster `get_worker_count`: active workers on the roster.
    pub fn roster_count(&self) -> Result<u32> {
        Ok(self
            .db()
            .query_row("SELECT COUNT(*) FROM roster WHERE active = 1", [], |row| {
                row.get(0)
            })?)
    }

    /// `get_coordinator_by_did`, without the async [`Registry`] detour.
    pub fn coordinator(&self, coordinator_did: &str) -> Result<Option<CoordinatorRecord>> {
        get_coordinator(&self.db(), coordinator_did)
    }

    /// `get_worker_by_did`, without the async [`Registry`] detour.
    pub fn worker(&self, worker_did: &str) -> Result<Option<WorkerRecord>> {
        get_worker(&self.db(), worker_did)
    }

    /// `get_stats`: coordinators and workers ever registered, and those active.
    pub fn stats(&self) -> Result<RegistryStats> {
        let db = self.db();
        let count = |sql: &str| -> Result<u64> {
            let count: i64 = db.query_row(sql, [], |row| row.get(0))?;
            Ok(u64::try_from(count).unwrap_or_default())
        };
        Ok(RegistryStats {
            total_coordinators: count("SELECT COUNT(*) FROM coordinators")?,
            active_coordinators: count("SELECT COUNT(*) FROM coordinators WHERE is_active = 1")?,
            total_workers: count("SELECT COUNT(*) FROM workers")?,
            active_workers: count("SELECT COUNT(*) FROM workers WHERE is_active = 1")?,
        })
    }

    /// `list_active_coordinators`, in registration order.
    pub fn list_coordinators(&self) -> Result<Vec<CoordinatorRecord>> {
        let db = self.db();
        let mut statement = db.prepare(&format!(
            "SELECT {COORDINATOR_COLUMNS} FROM coordinators WHERE is_active = 1 ORDER BY rowid"
        ))?;
        let rows = statement.query_map([], coordinator_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// `list_active_workers`, in registration order.
    pub fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        let db = self.db();
        let mut statement = db.prepare(&format!(
            "SELECT {WORKER_COLUMNS} FROM workers WHERE is_active = 1 ORDER BY rowid"
        ))?;
        let rows = statement.query_map([], worker_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Roster `get_registered_workers`: the whole roster, active or not.
    pub fn list_roster(&self) -> Result<Vec<RegisteredWorker>> {
        let db = self.db();
        let mut statement = db.prepare(
            "SELECT worker_id, account_id, registered_at, registered_by, active FROM roster ORDER BY rowid",
        )?;
        let rows = statement.query_map([], roster_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

fn get_coordinator(db: &Connection, did: &str) -> Result<Option<CoordinatorRecord>> {
    Ok(db
        .query_row(
            &format!("SELECT {COORDINATOR_COLUMNS} FROM coordinators WHERE coordinator_did = ?1"),
            params![did],
            coordinator_row,
        )
        .optional()?)
}

fn get_worker(db: &Connection, did: &str) -> Result<Option<WorkerRecord>> {
    Ok(db
        .query_row(
            &format!("SELECT {WORKER_COLUMNS} FROM workers WHERE worker_did = ?1"),
            params![did],
            worker_row,
        )
        .optional()?)
}

/// Local accounts hold the keys given with [`LocalRegistry::add_access_key`],
/// and every key is a full-access key of its implicit account, as on chain.
/// The roster's owner is the admin.
#[async_trait]
impl Accounts for LocalRegistry {
    async fn key_permission(
        &self,
        account_id: &AccountId,
        public_key: &PublicKey,
    ) -> Result<Option<KeyPermission>> {
        if *account_id == implicit_account(public_key) {
            return Ok(Some(KeyPermission::FullAccess));
        }
        let full_access: Option<bool> = self
            .db()
            .query_row(
                "SELECT full_access FROM account_keys WHERE account_id = ?1 AND public_key = ?2",
                params![account_id.as_str(), public_key.to_near_string()],
                |row| row.get(0),
            )
            .optional()?;
        Ok(full_access.map(|full| {
            if full {
                KeyPermission::FullAccess
            } else {
                KeyPermission::FunctionCall
            }
        }))
    }

    async fn roster_owner(&self) -> Result<AccountId> {
        Ok(self.admin.clone())
    }
}

#[async_trait]
impl Registry for LocalRegistry {
    async fn list_active_coordinators(&self) -> Result<Vec<CoordinatorRecord>> {
        self.list_coordinators()
    }

    async fn list_active_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.list_workers()
    }

    async fn coordinator_by_did(&self, coordinator_did: &str) -> Result<Option<CoordinatorRecord>> {
        get_coordinator(&self.db(), coordinator_did)
    }

    async fn worker_by_did(&self, worker_did: &str) -> Result<Option<WorkerRecord>> {
        get_worker(&self.db(), worker_did)
    }

    async fn update_worker_endpoint(&self, update: &EndpointUpdate) -> Result<()> {
        let admin = &self.admin;
        if update.cvm_id.is_some() {
            let current = get_worker(&self.db(), &update.did)?
                .ok_or_else(|| panic(messages::WORKER_NOT_FOUND))?;
            if let Some(cvm_id) = update.new_worker_cvm(&current) {
                let registration = update.reregister_worker(current, cvm_id, admin)?;
                return self.register_worker_as(admin, &registration).map(drop);
            }
        }
        self.update_worker_endpoint_as(admin, &update.did, &update.endpoint_url)
    }

    async fn update_coordinator_endpoint(&self, update: &EndpointUpdate) -> Result<()> {
        let current = get_coordinator(&self.db(), &update.did)?
            .ok_or_else(|| panic(messages::COORDINATOR_NOT_FOUND))?;
        let registration = update.reregister_coordinator(current, &self.admin)?;
        self.register_coordinator_as(&self.admin, &registration)
            .map(drop)
    }

    async fn roster(&self) -> Result<Vec<RegisteredWorker>> {
        self.list_roster()
    }

    async fn roster_register(&self, worker_id: &str, account_id: Option<&AccountId>) -> Result<()> {
        self.roster_register_as(&self.admin, worker_id, account_id)
    }

    async fn roster_remove(&self, worker_id: &str) -> Result<()> {
        self.roster_remove_as(&self.admin, worker_id)
    }
}
