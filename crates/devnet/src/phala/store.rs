//! The Phala stand-in's state: provisioned apps (with their env-encryption
//! keys) and committed CVMs (with their env still sealed), in SQLite.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, OptionalExtension, Row, params};
use zeroize::Zeroizing;

use crate::Result;

/// A provisioned app: the compose it was provisioned with and the X25519 key
/// its env is sealed to.
#[derive(Clone)]
pub(crate) struct App {
    pub(crate) app_id: String,
    pub(crate) name: String,
    pub(crate) compose_file: String,
    pub(crate) compose_hash: String,
    pub(crate) allowed_envs: Vec<String>,
    pub(crate) kms_secret: Zeroizing<[u8; 32]>,
}

/// A committed CVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cvm {
    pub(crate) id: i64,
    pub(crate) vm_uuid: String,
    pub(crate) name: String,
    pub(crate) app_id: String,
    pub(crate) compose_hash: String,
    pub(crate) image: String,
    pub(crate) port: u16,
    /// The `encrypted_env` exactly as committed (hex); opened only to boot.
    pub(crate) encrypted_env: Option<String>,
    pub(crate) status: String,
    pub(crate) error: Option<String>,
    pub(crate) created_at: String,
}

pub(crate) struct Store {
    db: Mutex<Connection>,
}

const CVM_COLUMNS: &str = "id, vm_uuid, name, app_id, compose_hash, image, port, encrypted_env, status, error, created_at";

fn cvm_row(row: &Row<'_>) -> rusqlite::Result<Cvm> {
    Ok(Cvm {
        id: row.get(0)?,
        vm_uuid: row.get(1)?,
        name: row.get(2)?,
        app_id: row.get(3)?,
        compose_hash: row.get(4)?,
        image: row.get(5)?,
        port: row.get(6)?,
        encrypted_env: row.get(7)?,
        status: row.get(8)?,
        error: row.get(9)?,
        created_at: row.get(10)?,
    })
}

impl Store {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        delibera_data_dir::prepare_sqlite_file(path)?;
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS apps (
                app_id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                compose_file TEXT NOT NULL,
                compose_hash TEXT NOT NULL,
                allowed_envs TEXT NOT NULL,
                kms_secret TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS cvms (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                vm_uuid TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL UNIQUE,
                app_id TEXT NOT NULL,
                compose_hash TEXT NOT NULL,
                image TEXT NOT NULL,
                port INTEGER NOT NULL,
                encrypted_env TEXT,
                status TEXT NOT NULL,
                error TEXT,
                created_at TEXT NOT NULL
            );",
        )?;
        Ok(Self { db: Mutex::new(db) })
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        // Every critical section is one statement; a poisoned lock holds a whole connection.
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn insert_app(&self, app: &App) -> Result<()> {
        self.db().execute(
            "INSERT INTO apps (app_id, name, compose_file, compose_hash, allowed_envs, kms_secret)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                app.app_id,
                app.name,
                app.compose_file,
                app.compose_hash,
                serde_json::to_string(&app.allowed_envs).unwrap_or_else(|_| "[]".to_owned()),
                hex::encode(app.kms_secret.as_ref()),
            ],
        )?;
        Ok(())
    }

    pub(crate) fn app(&self, app_id: &str) -> Result<Option<App>> {
        let row = self
            .db()
            .query_row(
                "SELECT app_id, name, compose_file, compose_hash, allowed_envs, kms_secret FROM apps WHERE app_id = ?1",
                params![app_id],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        Zeroizing::new(row.get::<_, String>(5)?),
                    ))
                },
            )
            .optional()?;
        Ok(row.and_then(
            |(app_id, name, compose_file, compose_hash, allowed, secret)| {
                let bytes = Zeroizing::new(hex::decode(secret.as_str()).ok()?);
                let kms_secret: [u8; 32] = bytes.as_slice().try_into().ok()?;
                Some(App {
                    app_id,
                    name,
                    compose_file,
                    compose_hash,
                    allowed_envs: serde_json::from_str(&allowed).unwrap_or_default(),
                    kms_secret: Zeroizing::new(kms_secret),
                })
            },
        ))
    }

    pub(crate) fn insert_cvm(&self, cvm: &Cvm) -> Result<i64> {
        let db = self.db();
        db.execute(
            "INSERT INTO cvms (vm_uuid, name, app_id, compose_hash, image, port, encrypted_env, status, error, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                cvm.vm_uuid,
                cvm.name,
                cvm.app_id,
                cvm.compose_hash,
                cvm.image,
                cvm.port,
                cvm.encrypted_env,
                cvm.status,
                cvm.error,
                cvm.created_at
            ],
        )?;
        Ok(db.last_insert_rowid())
    }

    pub(crate) fn set_status(&self, id: i64, status: &str, error: Option<&str>) -> Result<()> {
        self.db().execute(
            "UPDATE cvms SET status = ?2, error = ?3 WHERE id = ?1",
            params![id, status, error],
        )?;
        Ok(())
    }

    pub(crate) fn delete_cvm(&self, id: i64) -> Result<()> {
        self.db()
            .execute("DELETE FROM cvms WHERE id = ?1", params![id])?;
        Ok(())
    }

    pub(crate) fn cvms(&self) -> Result<Vec<Cvm>> {
        let db = self.db();
        let mut statement = db.prepare(&format!("SELECT {CVM_COLUMNS} FROM cvms ORDER BY id"))?;
        let rows = statement.query_map([], cvm_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A CVM by any of the ids the API accepts: its number, its VM UUID (with
    /// or without dashes), `app_<app id>`, its app id, or its name.
    pub(crate) fn find_cvm(&self, id: &str) -> Result<Option<Cvm>> {
        let plain = id.replace('-', "");
        let app = id.strip_prefix("app_").unwrap_or(id);
        let db = self.db();
        Ok(db
            .query_row(
                &format!(
                    "SELECT {CVM_COLUMNS} FROM cvms
                     WHERE CAST(id AS TEXT) = ?1 OR vm_uuid = ?1 OR REPLACE(vm_uuid, '-', '') = ?2
                        OR app_id = ?3 OR name = ?1
                     ORDER BY id LIMIT 1"
                ),
                params![id, plain, app],
                cvm_row,
            )
            .optional()?)
    }

    pub(crate) fn cvm_by_app(&self, app_id: &str) -> Result<Option<Cvm>> {
        let db = self.db();
        Ok(db
            .query_row(
                &format!("SELECT {CVM_COLUMNS} FROM cvms WHERE app_id = ?1"),
                params![app_id],
                cvm_row,
            )
            .optional()?)
    }

    pub(crate) fn name_taken(&self, name: &str) -> Result<bool> {
        Ok(self
            .db()
            .query_row("SELECT 1 FROM cvms WHERE name = ?1", params![name], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }
}
