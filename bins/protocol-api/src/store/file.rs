//! The database file: made whole or not at all, checked before use, and
//! refused (naming the path and the reason) when it is damaged.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use delibera_data_dir::with_suffix;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Database, StoreError, WorkError};
use crate::seal::SecretBox;

/// Marks a SQLite file as this server's database (`PRAGMA application_id`).
const APPLICATION_ID: i32 = 0x444c_4250; // "DLBP"

/// The layout [`SCHEMA`] creates (`PRAGMA user_version`).
const SCHEMA_VERSION: i32 = 1;

const SCHEMA: &str = "
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        record TEXT NOT NULL,
        secrets BLOB NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX jobs_status ON jobs(status);
    CREATE TABLE coordinator_orgs (
        coordinator_did TEXT PRIMARY KEY,
        org_name TEXT NOT NULL,
        api_key BLOB NOT NULL
    );
    CREATE TABLE local_deployments (
        cvm_id TEXT PRIMARY KEY,
        record BLOB NOT NULL
    );
    CREATE TABLE meta (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE idempotency_keys (
        key_sha256 BLOB PRIMARY KEY,
        job_id TEXT NOT NULL,
        request_sha256 BLOB NOT NULL
    );
    CREATE INDEX idempotency_keys_job ON idempotency_keys(job_id);";

/// Every table of [`SCHEMA`].
const TABLES: [&str; 5] = [
    "jobs",
    "coordinator_orgs",
    "local_deployments",
    "meta",
    "idempotency_keys",
];

/// The tables of the releases before the schema was versioned, which made
/// all three at once.
const UNVERSIONED_TABLES: [&str; 3] = ["jobs", "coordinator_orgs", "local_deployments"];

/// The `meta` row holding a known text sealed with the server key: it tells
/// a wrong key from damaged records.
pub(super) const KEY_CHECK: &str = "key_check";
pub(super) const KEY_CHECK_TEXT: &[u8] = b"protocol-api server key check v1";

/// The first bytes of every SQLite database.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// A database file opened and checked, before the server key is known.
/// Whether it already holds sealed secrets decides whether a missing key
/// file may be made anew ([`DatabaseFile::holds_sealed_data`]).
pub struct DatabaseFile {
    conn: Connection,
    /// The file, for the second connection reads use (`None` in memory).
    file: Option<PathBuf>,
    path: Arc<str>,
}

impl DatabaseFile {
    /// Opens the database at `path`, making it (whole, owner-only) when
    /// missing. Refused, naming the path and why: an unwritable directory or
    /// file; an empty, truncated or otherwise damaged file; a file that is
    /// not this server's database; a missing table.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let shown: Arc<str> = path.display().to_string().into();
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        delibera_data_dir::private_dir(&dir)?;
        delibera_data_dir::check_writable(&dir)?;
        if !path.exists() {
            create(path, &dir).map_err(|error| error.at(&shown))?;
        }
        delibera_data_dir::prepare_sqlite_file(path)?;
        check_header(path, &shown)?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| StoreError::Unwritable {
                path: shown.to_string(),
                source,
            })?;
        let sqlite = |error| StoreError::sqlite(&shown, error);
        let conn = Connection::open(path).map_err(sqlite)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite)?;
        // Checkpoint every 4,000 WAL pages (16 MiB) rather than 1,000: a
        // job's row is rewritten at every step, and a checkpoint copies each
        // page once however often it changed since the last one.
        conn.pragma_update(None, "wal_autocheckpoint", 4000)
            .map_err(sqlite)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite)?;
        verify(&conn, &shown)?;
        Ok(Self {
            conn,
            file: Some(path.to_path_buf()),
            path: shown,
        })
    }

    /// A database in memory only (tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        let path: Arc<str> = ":memory:".into();
        let sqlite = |error| StoreError::sqlite(&path, error);
        let conn = Connection::open_in_memory().map_err(sqlite)?;
        create_schema(&conn).map_err(sqlite)?;
        Ok(Self {
            conn,
            file: None,
            path,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether anything sealed with the server key is stored: then a new
    /// key would make it unreadable.
    pub fn holds_sealed_data(&self) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM meta WHERE name = ?1)
                     OR EXISTS (SELECT 1 FROM jobs)
                     OR EXISTS (SELECT 1 FROM coordinator_orgs)
                     OR EXISTS (SELECT 1 FROM local_deployments)",
                params![KEY_CHECK],
                |row| row.get(0),
            )
            .map_err(|error| StoreError::sqlite(&self.path, error))
    }

    /// Whether any job, coordinator org or local deployment is recorded:
    /// then the registry and the Ensue data beside the database hold their
    /// other half.
    pub fn holds_records(&self) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM jobs)
                     OR EXISTS (SELECT 1 FROM coordinator_orgs)
                     OR EXISTS (SELECT 1 FROM local_deployments)",
                [],
                |row| row.get(0),
            )
            .map_err(|error| StoreError::sqlite(&self.path, error))
    }

    /// The database, once `secrets` is shown to be the key that sealed what
    /// it holds (its key check opens; in a database from before key checks,
    /// at least one sealed value opens). A first key check is stored then.
    pub fn unlock(self, secrets: SecretBox) -> Result<Database, StoreError> {
        let sqlite = |error| StoreError::sqlite(&self.path, error);
        let wrong_key = || StoreError::WrongKey {
            path: self.path.to_string(),
        };
        let check: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE name = ?1",
                params![KEY_CHECK],
                |row| row.get(0),
            )
            .optional()
            .map_err(sqlite)?;
        match check {
            Some(sealed) => match secrets.open(&sealed) {
                Ok(text) if text.as_slice() == KEY_CHECK_TEXT => {}
                _ => return Err(wrong_key()),
            },
            None => {
                if !opens_some_sealed_value(&self.conn, &secrets).map_err(sqlite)? {
                    return Err(wrong_key());
                }
                self.conn
                    .execute(
                        "INSERT INTO meta (name, value) VALUES (?1, ?2)",
                        params![KEY_CHECK, secrets.seal(KEY_CHECK_TEXT)],
                    )
                    .map_err(sqlite)?;
            }
        }
        Database::new(self.conn, self.file.as_deref(), secrets, self.path)
    }
}

/// True when no sealed value is stored, or when `secrets` opens one of them.
fn opens_some_sealed_value(conn: &Connection, secrets: &SecretBox) -> rusqlite::Result<bool> {
    let mut statement = conn.prepare(
        "SELECT secrets FROM jobs
         UNION ALL SELECT api_key FROM coordinator_orgs
         UNION ALL SELECT record FROM local_deployments",
    )?;
    let mut rows = statement.query([])?;
    let mut any = false;
    while let Some(row) = rows.next()? {
        any = true;
        if secrets.open(&row.get::<_, Vec<u8>>(0)?).is_ok() {
            return Ok(true);
        }
    }
    Ok(!any)
}

/// Makes the database beside `path` and renames it into place, so a crash
/// leaves either no database or a whole one, never an empty file.
fn create(path: &Path, dir: &Path) -> Result<(), WorkError> {
    let building = with_suffix(path, ".creating");
    for leftover in ["", "-journal", "-wal", "-shm"] {
        match std::fs::remove_file(with_suffix(&building, leftover)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_error("remove", &building, error));
            }
            _ => {}
        }
    }
    // Owner-only from the start: SQLite gives its -wal and -shm files the
    // database's mode.
    drop(delibera_data_dir::create_private_file(&building)?);
    let conn = Connection::open(&building)?;
    create_schema(&conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.close().map_err(|(_, error)| error)?;
    let sync = |target: &Path| std::fs::File::open(target).and_then(|file| file.sync_all());
    sync(&building).map_err(|error| io_error("flush", &building, error))?;
    std::fs::rename(&building, path).map_err(|error| io_error("rename", &building, error))?;
    sync(dir).map_err(|error| io_error("flush", dir, error))?;
    tracing::info!(path = %path.display(), "created a new job database");
    Ok(())
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> WorkError {
    delibera_data_dir::Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
    .into()
}

fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "BEGIN;
         {SCHEMA}
         PRAGMA application_id = {APPLICATION_ID};
         PRAGMA user_version = {SCHEMA_VERSION};
         COMMIT;"
    ))
}

/// Refuses a file that cannot be a SQLite database: empty, or without the header.
fn check_header(path: &Path, shown: &str) -> Result<(), StoreError> {
    let damaged = |reason: String| StoreError::Damaged {
        path: shown.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|source| {
        StoreError::DataDir(delibera_data_dir::Error::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })
    })?;
    // The header is the first 100 bytes.
    let mut header = Vec::with_capacity(100);
    file.take(100)
        .read_to_end(&mut header)
        .map_err(|error| damaged(error.to_string()))?;
    match header.len() {
        0 => Err(damaged("the file is empty (0 bytes)".into())),
        n if n < 100 || !header.starts_with(SQLITE_HEADER) => Err(damaged(
            "it is not a SQLite database (its header is missing or wrong)".into(),
        )),
        _ => Ok(()),
    }
}

/// Checks the file's integrity and that it is this server's database with
/// every table; brings a database from before versioning up to date.
fn verify(conn: &Connection, path: &str) -> Result<(), StoreError> {
    let sqlite = |error| StoreError::sqlite(path, error);
    let damaged = |reason: String| StoreError::Damaged {
        path: path.to_owned(),
        reason,
    };
    let problems: Vec<String> = conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut statement| {
            statement
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<_, _>>()
        })
        .map_err(sqlite)?;
    if problems != ["ok"] {
        return Err(damaged(format!(
            "SQLite's integrity check failed ({})",
            problems.join("; ")
        )));
    }
    let application_id: i32 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(sqlite)?;
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite)?;
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut statement| {
            statement
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<_, _>>()
        })
        .map_err(sqlite)?;
    let require = |names: &[&str]| match names
        .iter()
        .find(|name| !tables.iter().any(|table| table == *name))
    {
        Some(missing) => Err(damaged(format!("its `{missing}` table is missing"))),
        None => Ok(()),
    };
    match (application_id, version) {
        (APPLICATION_ID, SCHEMA_VERSION) => require(&TABLES),
        (APPLICATION_ID, version) => Err(damaged(format!(
            "its schema version {version} is not one this server knows (it reads {SCHEMA_VERSION}); \
             a newer release may have written it"
        ))),
        (0, 0) if tables.is_empty() => Err(damaged("it holds none of the server's tables".into())),
        (0, 0) => {
            require(&UNVERSIONED_TABLES)?;
            conn.execute_batch(&format!(
                "BEGIN;
                 CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
                 CREATE TABLE idempotency_keys (key_sha256 BLOB PRIMARY KEY, job_id TEXT NOT NULL,
                                                request_sha256 BLOB NOT NULL);
                 CREATE INDEX idempotency_keys_job ON idempotency_keys(job_id);
                 PRAGMA application_id = {APPLICATION_ID};
                 PRAGMA user_version = {SCHEMA_VERSION};
                 COMMIT;"
            ))
            .map_err(sqlite)?;
            tracing::info!(
                path,
                version = SCHEMA_VERSION,
                "job database marked with its schema version"
            );
            Ok(())
        }
        (other, _) => Err(damaged(format!(
            "it is not a protocol-api database (its application id is {other:#x})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema the releases before versioning wrote.
    const UNVERSIONED_SCHEMA: &str = "
        CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, record TEXT NOT NULL,
            secrets BLOB NOT NULL, updated_at TEXT NOT NULL);
        CREATE INDEX jobs_status ON jobs(status);
        CREATE TABLE coordinator_orgs (coordinator_did TEXT PRIMARY KEY, org_name TEXT NOT NULL,
            api_key BLOB NOT NULL);
        CREATE TABLE local_deployments (cvm_id TEXT PRIMARY KEY, record BLOB NOT NULL);";

    fn reason(result: Result<DatabaseFile, StoreError>) -> String {
        match result {
            Err(StoreError::Damaged { reason, .. }) => reason,
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("opened"),
        }
    }

    #[test]
    fn a_database_of_an_earlier_release_is_adopted_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        let key = SecretBox::from_key(&[5; 32]);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(UNVERSIONED_SCHEMA).unwrap();
            conn.execute(
                "INSERT INTO coordinator_orgs VALUES ('did:key:z6Mk', 'org', ?1)",
                params![key.seal(b"org key")],
            )
            .unwrap();
        }
        // A key that opens none of its secrets is refused, and stores no key check.
        let wrong = DatabaseFile::open(&path)
            .unwrap()
            .unlock(SecretBox::from_key(&[6; 32]));
        assert!(matches!(wrong, Err(StoreError::WrongKey { .. })));

        let database = Database::open(&path, key.clone()).unwrap();
        drop(database);
        let conn = Connection::open(&path).unwrap();
        let stamp: (i32, i32) = conn
            .query_row(
                "SELECT (SELECT application_id FROM pragma_application_id),
                        (SELECT user_version FROM pragma_user_version)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!(stamp, (APPLICATION_ID, SCHEMA_VERSION));
        Database::open(&path, key).unwrap();
    }

    #[test]
    fn foreign_headerless_and_incomplete_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");

        std::fs::write(&path, b"{\"jobs\": []}").unwrap();
        assert!(reason(DatabaseFile::open(&path)).contains("not a SQLite database"));

        std::fs::remove_file(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA application_id = 42; CREATE TABLE other (x);")
            .unwrap();
        assert!(reason(DatabaseFile::open(&path)).contains("not a protocol-api database"));

        std::fs::remove_file(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE jobs (id TEXT PRIMARY KEY);")
            .unwrap();
        assert_eq!(
            reason(DatabaseFile::open(&path)),
            "its `coordinator_orgs` table is missing"
        );

        std::fs::remove_file(&path).unwrap();
        DatabaseFile::open(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute_batch(&format!("PRAGMA user_version = {};", SCHEMA_VERSION + 1))
            .unwrap();
        assert!(reason(DatabaseFile::open(&path)).contains("a newer release may have written it"));
    }

    #[test]
    fn a_database_is_never_left_half_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        // What a crash while creating leaves behind is cleared away.
        std::fs::write(with_suffix(&path, ".creating"), b"").unwrap();
        DatabaseFile::open(&path).unwrap();
        assert!(!with_suffix(&path, ".creating").exists());
        assert!(std::fs::metadata(&path).unwrap().len() > 0);
    }
}
