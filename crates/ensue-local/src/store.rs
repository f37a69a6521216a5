//! SQLite persistence: organisations, API key digests, claims and memories.
//!
//! Every call runs on tokio's blocking pool, never on the async workers. Writes
//! go through one connection behind a mutex (SQLite allows one writer at a
//! time anyway); reads of a file database use a small pool of extra
//! connections, which WAL lets run beside the writer.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::api_key::{ApiKey, digest_of};
use crate::claim::{ClaimStatus, ClaimTicket, Claimed, code_digest};
use crate::{Error, Result};

/// The row id of an organisation.
pub(crate) type OrgId = i64;

/// The schema this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 3;

/// How long a statement waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle read connections kept open for reuse.
const MAX_IDLE_READERS: usize = 8;

/// The longest organisation name (the hosted service's rule).
const MAX_ORG_NAME_LEN: usize = 64;

/// Version 0 (an empty file) to 1: organisations, keys and memories.
const SCHEMA_V1: &str = "
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS orgs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_sha256 BLOB PRIMARY KEY,
    org_id INTEGER NOT NULL REFERENCES orgs(id),
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS memories (
    org_id INTEGER NOT NULL REFERENCES orgs(id),
    key_name TEXT NOT NULL,
    value TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, key_name)
) WITHOUT ROWID;
PRAGMA user_version = 1;
COMMIT;
";

/// Version 1 to 2: claims. An organisation with no row here, or with
/// `claimed_at` set, is claimed; one whose row has `claimed_at` NULL waits
/// for a human. Token and code are kept as SHA-256 digests only.
const SCHEMA_V2: &str = "
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS org_claims (
    org_id INTEGER PRIMARY KEY REFERENCES orgs(id),
    token_sha256 BLOB NOT NULL UNIQUE,
    code_sha256 BLOB NOT NULL,
    claimed_at INTEGER
);
PRAGMA user_version = 2;
COMMIT;
";

/// Version 2 to 3: each organisation's usage (keys, and bytes of key names,
/// values and descriptions), for the quotas. Triggers keep it in step with
/// `memories` on every write path, so a quota check is one row read rather
/// than a scan; the migration counts what an older file already holds.
const SCHEMA_V3: &str = "
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS org_usage (
    org_id INTEGER PRIMARY KEY REFERENCES orgs(id),
    key_count INTEGER NOT NULL DEFAULT 0,
    stored_bytes INTEGER NOT NULL DEFAULT 0
);
INSERT OR REPLACE INTO org_usage (org_id, key_count, stored_bytes)
    SELECT org_id, COUNT(*),
        SUM(length(CAST(key_name AS BLOB)) + length(CAST(value AS BLOB))
            + length(CAST(description AS BLOB)))
    FROM memories GROUP BY org_id;
CREATE TRIGGER IF NOT EXISTS memories_usage_insert AFTER INSERT ON memories BEGIN
    INSERT OR IGNORE INTO org_usage (org_id) VALUES (NEW.org_id);
    UPDATE org_usage SET key_count = key_count + 1,
        stored_bytes = stored_bytes + length(CAST(NEW.key_name AS BLOB))
            + length(CAST(NEW.value AS BLOB)) + length(CAST(NEW.description AS BLOB))
    WHERE org_id = NEW.org_id;
END;
CREATE TRIGGER IF NOT EXISTS memories_usage_update AFTER UPDATE ON memories BEGIN
    UPDATE org_usage SET stored_bytes = stored_bytes
        - length(CAST(OLD.key_name AS BLOB)) - length(CAST(OLD.value AS BLOB))
        - length(CAST(OLD.description AS BLOB))
        + length(CAST(NEW.key_name AS BLOB)) + length(CAST(NEW.value AS BLOB))
        + length(CAST(NEW.description AS BLOB))
    WHERE org_id = NEW.org_id;
END;
CREATE TRIGGER IF NOT EXISTS memories_usage_delete AFTER DELETE ON memories BEGIN
    UPDATE org_usage SET key_count = key_count - 1,
        stored_bytes = stored_bytes - length(CAST(OLD.key_name AS BLOB))
            - length(CAST(OLD.value AS BLOB)) - length(CAST(OLD.description AS BLOB))
    WHERE org_id = OLD.org_id;
END;
PRAGMA user_version = 3;
COMMIT;
";

/// The migrations, in order: entry `i` takes version `i` to `i + 1`. Each is
/// idempotent, so two servers opening one old file at once both succeed.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

/// The durable home of every organisation, API key and memory.
///
/// Cheap to clone (all clones share the connections). [`Store::open`] keeps
/// everything in one SQLite file in WAL mode with `synchronous = FULL`: WAL
/// lets reads run beside the writer, and FULL syncs the log on every commit,
/// so a write the server has acknowledged survives a crash *and* a power loss
/// (NORMAL would only guarantee the former). API keys, claim tokens and
/// verification codes are stored as SHA-256 digests, never in clear.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    /// `None` in memory, where the writer connection is the only one that sees the data.
    readers: Option<Readers>,
    /// Key digest → organisation. Keys are never revoked, so entries never go stale.
    key_cache: RwLock<HashMap<[u8; 32], OrgId>>,
    /// Organisations known to be claimed. A claim is never undone, so
    /// entries never go stale; unclaimed ones are looked up every time, so a
    /// claim made through another server on the same file is seen at once.
    claimed_cache: RwLock<HashSet<OrgId>>,
    path: Option<PathBuf>,
}

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// A memory to create.
#[derive(Debug, Clone)]
pub(crate) struct NewMemory {
    pub(crate) key_name: String,
    pub(crate) value: String,
    pub(crate) description: String,
}

impl NewMemory {
    /// What it adds to its organisation's stored bytes.
    fn stored_bytes(&self) -> u64 {
        stored_bytes(&self.key_name, &self.value, &self.description)
    }
}

/// The bytes a memory counts against its organisation's quota: its key name,
/// value and description, in UTF-8.
fn stored_bytes(key_name: &str, value: &str, description: &str) -> u64 {
    (key_name.len() + value.len() + description.len()) as u64
}

/// How much one organisation may store; `0` leaves a dimension unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OrgQuota {
    pub(crate) max_keys: u64,
    pub(crate) max_bytes: u64,
}

impl OrgQuota {
    /// The quota a write would break if the organisation then held `keys`
    /// keys and `bytes` bytes.
    fn exceeded_by(&self, keys: u64, bytes: u64) -> Option<QuotaExceeded> {
        if self.max_keys != 0 && keys > self.max_keys {
            Some(QuotaExceeded::Keys {
                limit: self.max_keys,
            })
        } else if self.max_bytes != 0 && bytes > self.max_bytes {
            Some(QuotaExceeded::Bytes {
                limit: self.max_bytes,
                would_be: bytes,
            })
        } else {
            None
        }
    }
}

/// Which of an organisation's quotas a write would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuotaExceeded {
    /// The organisation already holds `limit` keys.
    Keys { limit: u64 },
    /// The write would take the organisation's stored bytes to `would_be`.
    Bytes { limit: u64, would_be: u64 },
}

/// What became of one item of a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CreateOutcome {
    Created,
    AlreadyExists,
    OverQuota(QuotaExceeded),
}

/// What became of an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpdateOutcome {
    Updated,
    NotFound,
    OverQuota(QuotaExceeded),
}

/// A stored memory, as `get_memory` returns it.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) value: String,
    pub(crate) description: String,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

/// A key as `list_keys` returns it.
#[derive(Debug, Clone)]
pub(crate) struct KeyInfo {
    pub(crate) key_name: String,
    pub(crate) description: String,
    pub(crate) size: i64,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

/// One memory found by `search_memories`.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub(crate) key_name: String,
    pub(crate) record: Record,
    /// Whether the key (not only the value) contains the query.
    pub(crate) in_key: bool,
}

/// One page of `list_keys`, with the number of keys matching in all.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub(crate) keys: Vec<KeyInfo>,
    pub(crate) total: i64,
}

impl Store {
    /// Opens (creating if needed) the SQLite file at `path`, and its parent
    /// directory, owner-only: the store holds values in the clear.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        delibera_data_dir::prepare_sqlite_file(&path)?;
        let writer = Connection::open(&path)?;
        configure(&writer)?;
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        tracing::debug!(journal_mode = %mode, path = %path.display(), "opened store");
        writer.pragma_update(None, "synchronous", "FULL")?;
        migrate(&writer)?;
        Ok(Store::from_parts(
            writer,
            Some(Readers {
                path: path.clone(),
                idle: Mutex::new(Vec::new()),
            }),
            Some(path),
        ))
    }

    /// A store that lives in this process only, for tests.
    pub fn in_memory() -> Result<Store> {
        let writer = Connection::open_in_memory()?;
        configure(&writer)?;
        migrate(&writer)?;
        Ok(Store::from_parts(writer, None, None))
    }

    fn from_parts(writer: Connection, readers: Option<Readers>, path: Option<PathBuf>) -> Store {
        Store {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers,
                key_cache: RwLock::new(HashMap::new()),
                claimed_cache: RwLock::new(HashSet::new()),
                path,
            }),
        }
    }

    /// The database file, or `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Creates the organisation `name` with a fresh API key, and returns the
    /// key. The key works at once: the organisation needs no claim.
    ///
    /// [`Error::InvalidOrgName`] unless the name is 1–64 characters of
    /// `[A-Za-z0-9_-]`; [`Error::OrgNameTaken`] if it exists.
    pub async fn register_org(&self, name: &str) -> Result<ApiKey> {
        let key = ApiKey::generate();
        self.insert_org(name, &key, None).await?;
        Ok(key)
    }

    /// Creates the organisation `name` with a fresh API key that a server
    /// under [`ClaimPolicy::RequireClaim`](crate::ClaimPolicy::RequireClaim)
    /// refuses until the organisation is claimed with the returned ticket
    /// (over HTTP, or with [`Store::claim_org`]).
    ///
    /// The same errors as [`Store::register_org`].
    pub async fn register_unclaimed_org(&self, name: &str) -> Result<(ApiKey, ClaimTicket)> {
        let key = ApiKey::generate();
        let ticket = ClaimTicket::generate();
        self.insert_org(name, &key, Some(&ticket)).await?;
        Ok((key, ticket))
    }

    /// Creates the organisation `name` with `key` as its key, or, when an
    /// organisation of that name exists and `key` already acts for it,
    /// leaves it as it is. Returns whether it was created now.
    ///
    /// A caller that chooses the key before registering can register again
    /// after losing the first answer (a crash, a dropped connection) and
    /// adopt the organisation it made, instead of leaving it behind and
    /// taking a new name. The key works at once, as with
    /// [`Store::register_org`].
    ///
    /// [`Error::OrgNameTaken`] when the name belongs to an organisation
    /// `key` does not act for; [`Error::InvalidOrgName`] as for
    /// [`Store::register_org`].
    pub async fn register_org_with_key(&self, name: &str, key: &ApiKey) -> Result<bool> {
        validate_org_name(name)?;
        let owned_name = name.to_owned();
        let digest = key.digest();
        let adopted = self
            .read(move |conn| {
                let org: Option<OrgId> = conn
                    .prepare_cached("SELECT id FROM orgs WHERE name = ?1")?
                    .query_row([&owned_name], |row| row.get(0))
                    .optional()?;
                let Some(org) = org else {
                    return Ok(false);
                };
                let keyed: Option<OrgId> = conn
                    .prepare_cached("SELECT org_id FROM api_keys WHERE key_sha256 = ?1")?
                    .query_row([digest.as_slice()], |row| row.get(0))
                    .optional()?;
                if keyed == Some(org) {
                    Ok(true)
                } else {
                    Err(Error::OrgNameTaken { name: owned_name })
                }
            })
            .await?;
        if adopted {
            return Ok(false);
        }
        match self.insert_org(name, key, None).await {
            Ok(()) => Ok(true),
            // Another registration with the same key may have won the race.
            Err(Error::OrgNameTaken { .. })
                if self.org_for_token(key.expose()).await?.is_some() =>
            {
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// The name of every organisation, in name order (the bootstrap one
    /// included).
    pub async fn org_names(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            conn.prepare_cached("SELECT name FROM orgs ORDER BY name")?
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(Error::from)
        })
        .await
    }

    /// Inserts an organisation, its key and, when given, its pending claim, in
    /// one transaction.
    async fn insert_org(
        &self,
        name: &str,
        key: &ApiKey,
        claim: Option<&ClaimTicket>,
    ) -> Result<()> {
        validate_org_name(name)?;
        let name = name.to_owned();
        let digest = key.digest();
        let claim = claim.map(|ticket| (ticket.token_digest(), ticket.code_digest()));
        self.write(move |conn| {
            let now = now_secs();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let inserted = tx.execute(
                "INSERT INTO orgs (name, created_at) VALUES (?1, ?2)",
                params![name, now],
            );
            match inserted {
                Err(error) if is_unique_violation(&error) => {
                    return Err(Error::OrgNameTaken { name });
                }
                other => other?,
            };
            let org = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO api_keys (key_sha256, org_id, created_at) VALUES (?1, ?2, ?3)",
                params![digest.as_slice(), org, now],
            )?;
            if let Some((token, code)) = claim {
                tx.execute(
                    "INSERT INTO org_claims (org_id, token_sha256, code_sha256) VALUES (?1, ?2, ?3)",
                    params![org, token.as_slice(), code.as_slice()],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Lets `key` act for the organisation `org_name`, creating the
    /// organisation if it does not exist. A key already in use keeps the
    /// organisation it has.
    ///
    /// A key configured this way is the operator's word, so the organisation
    /// counts as claimed from now on (the bootstrap organisation always is).
    pub async fn add_key(&self, org_name: &str, key: &ApiKey) -> Result<()> {
        validate_org_name(org_name)?;
        let name = org_name.to_owned();
        let digest = key.digest();
        self.write(move |conn| {
            let now = now_secs();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO orgs (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![name, now],
            )?;
            let org: OrgId =
                tx.query_row("SELECT id FROM orgs WHERE name = ?1", [&name], |row| {
                    row.get(0)
                })?;
            tx.execute(
                "INSERT INTO api_keys (key_sha256, org_id, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key_sha256) DO NOTHING",
                params![digest.as_slice(), org, now],
            )?;
            tx.execute(
                "UPDATE org_claims SET claimed_at = ?2 WHERE org_id = ?1 AND claimed_at IS NULL",
                params![org, now],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The organisation a presented bearer token acts for, if any.
    pub(crate) async fn org_for_token(&self, token: &str) -> Result<Option<OrgId>> {
        let digest = digest_of(token);
        if let Some(org) = self.cached_org(&digest) {
            return Ok(Some(org));
        }
        let org = self
            .read(move |conn| {
                conn.prepare_cached("SELECT org_id FROM api_keys WHERE key_sha256 = ?1")?
                    .query_row([digest.as_slice()], |row| row.get::<_, OrgId>(0))
                    .optional()
                    .map_err(Error::from)
            })
            .await?;
        if let Some(org) = org {
            self.inner
                .key_cache
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(digest, org);
        }
        Ok(org)
    }

    /// The name of organisation `org` while it waits to be claimed; `None`
    /// once it is claimed (or never needed a claim).
    pub(crate) async fn unclaimed_org_name(&self, org: OrgId) -> Result<Option<String>> {
        let cached = self
            .inner
            .claimed_cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&org);
        if cached {
            return Ok(None);
        }
        let name = self
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT o.name FROM org_claims c JOIN orgs o ON o.id = c.org_id
                     WHERE c.org_id = ?1 AND c.claimed_at IS NULL",
                )?
                .query_row([org], |row| row.get::<_, String>(0))
                .optional()
                .map_err(Error::from)
            })
            .await?;
        if name.is_none() {
            self.inner
                .claimed_cache
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(org);
        }
        Ok(name)
    }

    /// The organisation the claim token `token` belongs to, and whether it
    /// is claimed; `None` for a token no organisation has.
    pub async fn claim_status(&self, token: &str) -> Result<Option<ClaimStatus>> {
        let digest = digest_of(token);
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT o.name, c.claimed_at IS NOT NULL FROM org_claims c
                 JOIN orgs o ON o.id = c.org_id WHERE c.token_sha256 = ?1",
            )?
            .query_row([digest.as_slice()], |row| {
                Ok(ClaimStatus {
                    org: row.get(0)?,
                    claimed: row.get(1)?,
                })
            })
            .optional()
            .map_err(Error::from)
        })
        .await
    }

    /// Claims the organisation of claim token `token`, if `verification_code`
    /// is its code (ASCII case and surrounding whitespace are ignored).
    ///
    /// Claiming again with the right code succeeds again, with
    /// [`Claimed::already_claimed`] set. [`Error::UnknownClaimToken`] when no
    /// organisation has the token; [`Error::WrongVerificationCode`] when the
    /// code does not match, claimed or not.
    pub async fn claim_org(&self, token: &str, verification_code: &str) -> Result<Claimed> {
        let token_digest = digest_of(token);
        let code = code_digest(token, verification_code);
        let claimed = self
            .write(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let found = tx
                    .query_row(
                        "SELECT c.org_id, o.name, c.code_sha256, c.claimed_at IS NOT NULL
                         FROM org_claims c JOIN orgs o ON o.id = c.org_id
                         WHERE c.token_sha256 = ?1",
                        [token_digest.as_slice()],
                        |row| {
                            Ok((
                                row.get::<_, OrgId>(0)?,
                                row.get::<_, String>(1)?,
                                row.get::<_, Vec<u8>>(2)?,
                                row.get::<_, bool>(3)?,
                            ))
                        },
                    )
                    .optional()?;
                let Some((org, name, stored_code, already_claimed)) = found else {
                    return Err(Error::UnknownClaimToken);
                };
                if stored_code != code {
                    return Err(Error::WrongVerificationCode { org: name });
                }
                if !already_claimed {
                    tx.execute(
                        "UPDATE org_claims SET claimed_at = ?2 WHERE org_id = ?1",
                        params![org, now_secs()],
                    )?;
                }
                tx.commit()?;
                Ok((
                    org,
                    Claimed {
                        org: name,
                        already_claimed,
                    },
                ))
            })
            .await?;
        let (org, claimed) = claimed;
        self.inner
            .claimed_cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(org);
        Ok(claimed)
    }

    fn cached_org(&self, digest: &[u8; 32]) -> Option<OrgId> {
        self.inner
            .key_cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .copied()
    }

    /// Checks the database answers.
    pub(crate) async fn ping(&self) -> Result<()> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))?;
            Ok(())
        })
        .await
    }

    /// Creates each item unless its key exists or the organisation's quota
    /// would be broken; one outcome per item.
    ///
    /// One transaction: a key repeated within the batch is created once, and
    /// the quota is checked against the usage the transaction sees, so
    /// concurrent writers cannot overshoot it together.
    pub(crate) async fn create_many(
        &self,
        org: OrgId,
        items: Vec<NewMemory>,
        quota: OrgQuota,
    ) -> Result<Vec<CreateOutcome>> {
        self.write(move |conn| {
            let now = now_secs();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (mut keys, mut bytes) = usage(&tx, org)?;
            let mut outcomes = Vec::with_capacity(items.len());
            {
                // No OR REPLACE: the primary key makes create-if-absent atomic.
                let mut insert = tx.prepare_cached(
                    "INSERT INTO memories (org_id, key_name, value, description, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                )?;
                let mut exists = tx.prepare_cached(
                    "SELECT 1 FROM memories WHERE org_id = ?1 AND key_name = ?2",
                )?;
                for item in &items {
                    // An existing key is reported as such even when the
                    // organisation is full: that answer does not depend on room.
                    if exists.exists(params![org, item.key_name])? {
                        outcomes.push(CreateOutcome::AlreadyExists);
                        continue;
                    }
                    let item_bytes = item.stored_bytes();
                    if let Some(exceeded) = quota.exceeded_by(keys + 1, bytes + item_bytes) {
                        outcomes.push(CreateOutcome::OverQuota(exceeded));
                        continue;
                    }
                    match insert.execute(params![
                        org,
                        item.key_name,
                        item.value,
                        item.description,
                        now
                    ]) {
                        Ok(_) => {
                            keys += 1;
                            bytes += item_bytes;
                            outcomes.push(CreateOutcome::Created);
                        }
                        Err(error) if is_primary_key_violation(&error) => {
                            outcomes.push(CreateOutcome::AlreadyExists);
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
            }
            tx.commit()?;
            Ok(outcomes)
        })
        .await
    }

    /// Replaces the value (and the description, when given) of an existing
    /// key, unless the organisation's byte quota would be broken.
    pub(crate) async fn update(
        &self,
        org: OrgId,
        key_name: String,
        value: String,
        description: Option<String>,
        quota: OrgQuota,
    ) -> Result<UpdateOutcome> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<(String, i64)> = tx
                .prepare_cached(
                    "SELECT description, length(CAST(key_name AS BLOB))
                         + length(CAST(value AS BLOB)) + length(CAST(description AS BLOB))
                     FROM memories WHERE org_id = ?1 AND key_name = ?2",
                )?
                .query_row(params![org, key_name], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let Some((current_description, old_bytes)) = current else {
                return Ok(UpdateOutcome::NotFound);
            };
            let old_bytes = u64::try_from(old_bytes).unwrap_or(0);
            let new_bytes = stored_bytes(
                &key_name,
                &value,
                description.as_deref().unwrap_or(&current_description),
            );
            let (keys, bytes) = usage(&tx, org)?;
            // Shrinking is always allowed, so an organisation over a lowered
            // quota can still make room.
            if new_bytes > old_bytes
                && let Some(exceeded) = quota.exceeded_by(keys, bytes + new_bytes - old_bytes)
            {
                return Ok(UpdateOutcome::OverQuota(exceeded));
            }
            tx.prepare_cached(
                "UPDATE memories
                 SET value = ?3, description = COALESCE(?4, description), updated_at = ?5
                 WHERE org_id = ?1 AND key_name = ?2",
            )?
            .execute(params![org, key_name, value, description, now_secs()])?;
            tx.commit()?;
            Ok(UpdateOutcome::Updated)
        })
        .await
    }

    /// How many keys and stored bytes organisation `org` holds.
    #[cfg(test)]
    pub(crate) async fn org_usage(&self, org: OrgId) -> Result<(u64, u64)> {
        self.read(move |conn| usage(conn, org)).await
    }

    /// Reads each key; `None` for the missing ones.
    pub(crate) async fn get_many(
        &self,
        org: OrgId,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Record>>> {
        self.read(move |conn| {
            let mut select = conn.prepare_cached(
                "SELECT value, description, created_at, updated_at FROM memories
                 WHERE org_id = ?1 AND key_name = ?2",
            )?;
            let mut records = Vec::with_capacity(keys.len());
            for key in &keys {
                let record = select
                    .query_row(params![org, key], |row| {
                        Ok(Record {
                            value: row.get(0)?,
                            description: row.get(1)?,
                            created_at: row.get(2)?,
                            updated_at: row.get(3)?,
                        })
                    })
                    .optional()?;
                records.push(record);
            }
            Ok(records)
        })
        .await
    }

    /// Deletes each key; `true` per key that existed.
    pub(crate) async fn delete_many(&self, org: OrgId, keys: Vec<String>) -> Result<Vec<bool>> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut deleted = Vec::with_capacity(keys.len());
            {
                let mut delete =
                    tx.prepare_cached("DELETE FROM memories WHERE org_id = ?1 AND key_name = ?2")?;
                for key in &keys {
                    deleted.push(delete.execute(params![org, key])? == 1);
                }
            }
            tx.commit()?;
            Ok(deleted)
        })
        .await
    }

    /// Keys matching the SQL `LIKE` pattern `pattern` (escape character `\`),
    /// in key order, one page.
    pub(crate) async fn list(
        &self,
        org: OrgId,
        pattern: String,
        limit: i64,
        offset: i64,
    ) -> Result<Page> {
        self.read(move |conn| {
            // One read transaction, so the page and the total agree.
            let tx = conn.unchecked_transaction()?;
            let keys = tx
                .prepare_cached(
                    "SELECT key_name, description, length(CAST(value AS BLOB)), created_at, updated_at
                     FROM memories WHERE org_id = ?1 AND key_name LIKE ?2 ESCAPE '\\'
                     ORDER BY key_name LIMIT ?3 OFFSET ?4",
                )?
                .query_map(params![org, pattern, limit, offset], |row| {
                    Ok(KeyInfo {
                        key_name: row.get(0)?,
                        description: row.get(1)?,
                        size: row.get(2)?,
                        created_at: row.get(3)?,
                        updated_at: row.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let total = tx
                .prepare_cached(
                    "SELECT COUNT(*) FROM memories WHERE org_id = ?1 AND key_name LIKE ?2 ESCAPE '\\'",
                )?
                .query_row(params![org, pattern], |row| row.get(0))?;
            tx.commit()?;
            Ok(Page { keys, total })
        })
        .await
    }

    /// Memories whose key or value contains `query` (ASCII letters in any
    /// case), among the keys matching the SQL `LIKE` pattern `pattern`; those
    /// whose key matches first, then in key order; at most `limit`.
    pub(crate) async fn search(
        &self,
        org: OrgId,
        query: String,
        pattern: String,
        limit: i64,
    ) -> Result<Vec<Found>> {
        self.read(move |conn| {
            let found = conn
                .prepare_cached(
                    "SELECT key_name, value, description, created_at, updated_at,
                            instr(lower(key_name), lower(?2)) > 0 AS in_key
                     FROM memories
                     WHERE org_id = ?1 AND key_name LIKE ?3 ESCAPE '\\'
                       AND (instr(lower(key_name), lower(?2)) > 0
                            OR instr(lower(value), lower(?2)) > 0)
                     ORDER BY in_key DESC, key_name LIMIT ?4",
                )?
                .query_map(params![org, query, pattern, limit], |row| {
                    Ok(Found {
                        key_name: row.get(0)?,
                        record: Record {
                            value: row.get(1)?,
                            description: row.get(2)?,
                            created_at: row.get(3)?,
                            updated_at: row.get(4)?,
                        },
                        in_key: row.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(found)
        })
        .await
    }

    async fn write<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves the connection usable:
            // an unfinished transaction rolls back when it is dropped.
            let mut conn = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            job(&mut conn)
        })
        .await?
    }

    async fn read<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.with_reader(job)).await?
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn with_reader<T>(&self, job: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let Some(readers) = &self.readers else {
            let conn = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            return job(&conn);
        };
        let idle = readers
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_reader(&readers.path)?,
        };
        let result = job(&conn);
        let mut idle = readers.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // The hosted service matches prefixes with case-sensitive SQL LIKE;
    // SQLite's LIKE ignores ASCII case unless told otherwise.
    conn.pragma_update(None, "case_sensitive_like", true)?;
    Ok(())
}

fn migrate(conn: &Connection) -> Result<()> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let Some(pending) = usize::try_from(found)
        .ok()
        .and_then(|version| MIGRATIONS.get(version..))
    else {
        return Err(Error::UnsupportedSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    };
    for migration in pending {
        conn.execute_batch(migration)?;
    }
    Ok(())
}

/// Organisation `org`'s key count and stored bytes, as the triggers keep them.
fn usage(conn: &Connection, org: OrgId) -> Result<(u64, u64)> {
    let row: Option<(i64, i64)> = conn
        .prepare_cached("SELECT key_count, stored_bytes FROM org_usage WHERE org_id = ?1")?
        .query_row([org], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let (keys, bytes) = row.unwrap_or((0, 0));
    Ok((
        u64::try_from(keys).unwrap_or(0),
        u64::try_from(bytes).unwrap_or(0),
    ))
}

/// Checks the hosted service's organisation name rule.
pub(crate) fn validate_org_name(name: &str) -> Result<()> {
    let valid = (1..=MAX_ORG_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidOrgName {
            name: name.to_owned(),
        })
    }
}

fn is_primary_key_violation(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(failure, _)
        if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(failure, _)
        if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

/// Unix seconds, the unit the hosted service uses for timestamps.
fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, value: &str) -> NewMemory {
        NewMemory {
            key_name: key.to_owned(),
            value: value.to_owned(),
            description: String::new(),
        }
    }

    const UNLIMITED: OrgQuota = OrgQuota {
        max_keys: 0,
        max_bytes: 0,
    };

    async fn org(store: &Store, name: &str) -> OrgId {
        let key = store.register_org(name).await.unwrap();
        store.org_for_token(key.expose()).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn create_is_create_if_absent_even_within_one_batch() {
        let store = Store::in_memory().unwrap();
        let org = org(&store, "a").await;
        let created = store
            .create_many(
                org,
                vec![item("k", "1"), item("k", "2"), item("j", "3")],
                UNLIMITED,
            )
            .await
            .unwrap();
        assert_eq!(
            created,
            [
                CreateOutcome::Created,
                CreateOutcome::AlreadyExists,
                CreateOutcome::Created
            ]
        );
        let records = store.get_many(org, vec!["k".into()]).await.unwrap();
        assert_eq!(records[0].as_ref().map(|r| r.value.as_str()), Some("1"));
    }

    #[tokio::test]
    async fn like_is_case_sensitive_and_honours_escapes() {
        let store = Store::in_memory().unwrap();
        let org = org(&store, "a").await;
        store
            .create_many(
                org,
                vec![item("a_b/1", ""), item("axb/2", ""), item("A_b/3", "")],
                UNLIMITED,
            )
            .await
            .unwrap();
        let names = |page: Page| {
            page.keys
                .into_iter()
                .map(|k| k.key_name)
                .collect::<Vec<_>>()
        };
        let wildcard = store.list(org, "a_b%".into(), 100, 0).await.unwrap();
        assert_eq!(names(wildcard), ["a_b/1", "axb/2"]);
        let escaped = store.list(org, "a\\_b%".into(), 100, 0).await.unwrap();
        assert_eq!(names(escaped), ["a_b/1"]);
    }

    #[tokio::test]
    async fn usage_follows_every_write_and_quotas_hold() {
        let store = Store::in_memory().unwrap();
        let org = org(&store, "a").await;
        let other = self::org(&store, "b").await;
        let quota = OrgQuota {
            max_keys: 2,
            max_bytes: 20,
        };
        // "k1" + "12345" = 7 bytes; "k2" + "1234567890" = 12 bytes.
        let created = store
            .create_many(
                org,
                vec![item("k1", "12345"), item("k2", "1234567890")],
                quota,
            )
            .await
            .unwrap();
        assert_eq!(created, [CreateOutcome::Created, CreateOutcome::Created]);
        assert_eq!(store.org_usage(org).await.unwrap(), (2, 19));
        let third = store
            .create_many(org, vec![item("k3", ""), item("k1", "x")], quota)
            .await
            .unwrap();
        assert_eq!(
            third,
            [
                CreateOutcome::OverQuota(QuotaExceeded::Keys { limit: 2 }),
                CreateOutcome::AlreadyExists
            ]
        );
        let grown = store
            .update(org, "k1".into(), "1234567".into(), None, quota)
            .await
            .unwrap();
        assert_eq!(
            grown,
            UpdateOutcome::OverQuota(QuotaExceeded::Bytes {
                limit: 20,
                would_be: 21
            })
        );
        let shrunk = store
            .update(org, "k2".into(), "1".into(), Some("d".into()), quota)
            .await
            .unwrap();
        assert_eq!(shrunk, UpdateOutcome::Updated);
        assert_eq!(store.org_usage(org).await.unwrap(), (2, 11));
        assert_eq!(
            store
                .update(org, "nope".into(), "v".into(), None, quota)
                .await
                .unwrap(),
            UpdateOutcome::NotFound
        );
        store.delete_many(org, vec!["k1".into()]).await.unwrap();
        assert_eq!(store.org_usage(org).await.unwrap(), (1, 4));
        // Another organisation's usage is its own.
        assert_eq!(store.org_usage(other).await.unwrap(), (0, 0));
    }

    #[tokio::test]
    async fn org_names_are_unique_and_checked() {
        let store = Store::in_memory().unwrap();
        store.register_org("team-1").await.unwrap();
        let again = store.register_org("team-1").await.unwrap_err();
        assert!(again.is_org_name_taken());
        for bad in ["", "has space", "ünï", &"x".repeat(65)] {
            let error = store.register_org(bad).await.unwrap_err();
            assert!(matches!(error, Error::InvalidOrgName { .. }), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn claims_need_the_token_and_its_code_and_are_idempotent() {
        let store = Store::in_memory().unwrap();
        let (key, ticket) = store.register_unclaimed_org("team-c").await.unwrap();
        let org = store.org_for_token(key.expose()).await.unwrap().unwrap();
        assert_eq!(
            store.unclaimed_org_name(org).await.unwrap().as_deref(),
            Some("team-c")
        );
        let status = store.claim_status(ticket.token()).await.unwrap().unwrap();
        assert_eq!((status.org.as_str(), status.claimed), ("team-c", false));
        assert_eq!(store.claim_status("nope").await.unwrap(), None);

        let unknown = store
            .claim_org("nope", ticket.verification_code())
            .await
            .unwrap_err();
        assert!(matches!(unknown, Error::UnknownClaimToken), "{unknown}");
        let wrong = store.claim_org(ticket.token(), "00000000").await;
        assert!(
            matches!(&wrong, Err(Error::WrongVerificationCode { org }) if org == "team-c"),
            "{wrong:?}"
        );
        assert!(store.unclaimed_org_name(org).await.unwrap().is_some());

        let typed = format!(" {} ", ticket.verification_code().to_uppercase());
        let claimed = store.claim_org(ticket.token(), &typed).await.unwrap();
        assert_eq!(
            (claimed.org.as_str(), claimed.already_claimed),
            ("team-c", false)
        );
        assert_eq!(store.unclaimed_org_name(org).await.unwrap(), None);
        let again = store
            .claim_org(ticket.token(), ticket.verification_code())
            .await
            .unwrap();
        assert!(again.already_claimed);
        assert!(
            store
                .claim_status(ticket.token())
                .await
                .unwrap()
                .unwrap()
                .claimed
        );
        // The right token with a wrong code stays refused after the claim.
        assert!(store.claim_org(ticket.token(), "x").await.is_err());
    }

    #[tokio::test]
    async fn only_registration_for_claim_leaves_an_org_unclaimed() {
        let store = Store::in_memory().unwrap();
        let active = org(&store, "active").await;
        assert_eq!(store.unclaimed_org_name(active).await.unwrap(), None);

        // A configured key is the operator's word: it claims the organisation.
        let (key, _ticket) = store.register_unclaimed_org("pending").await.unwrap();
        let pending = store.org_for_token(key.expose()).await.unwrap().unwrap();
        store
            .add_key("pending", &ApiKey::new("lmn_configured").unwrap())
            .await
            .unwrap();
        assert_eq!(store.unclaimed_org_name(pending).await.unwrap(), None);
    }

    #[test]
    fn a_version_1_file_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite3");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.execute("INSERT INTO orgs (name, created_at) VALUES ('old', 1)", [])
                .unwrap();
            conn.execute(
                "INSERT INTO memories VALUES (1, 'k', 'value', 'd', 1, 1), (1, 'é', '', '', 1, 1)",
                [],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        // What the file held before the usage table existed is counted.
        let usage = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(store.org_usage(1))
            .unwrap();
        assert_eq!(usage, (2, 7 + 2));
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let claims: i64 = conn
            .query_row("SELECT COUNT(*) FROM org_claims", [], |row| row.get(0))
            .unwrap();
        assert_eq!(claims, 0);

        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let newer = Store::open(&path).unwrap_err();
        assert!(
            matches!(newer, Error::UnsupportedSchema { found: 4, .. }),
            "{newer}"
        );
    }

    #[tokio::test]
    async fn unknown_tokens_act_for_no_org() {
        let store = Store::in_memory().unwrap();
        store.register_org("a").await.unwrap();
        assert_eq!(store.org_for_token("lmn_nobody").await.unwrap(), None);
    }
}
