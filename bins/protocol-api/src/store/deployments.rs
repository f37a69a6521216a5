//! The local deployer's journal: local mode's in-process agents, remembered
//! (sealed, like every secret: their env holds their keys) so a restarted
//! server starts them again on their registered endpoints.

use std::time::Duration;

use delibera_agent::{DeploymentJournal, JournalEntry, LocalDeploymentRecord};
use delibera_backoff::Backoff;
use rusqlite::params;

use super::{Database, StoreError};
use crate::seal::SecretBox;

/// The `local_deployments` table.
#[derive(Clone)]
pub struct DeploymentStore {
    db: Database,
}

impl DeploymentStore {
    pub(super) fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl DeploymentJournal for DeploymentStore {
    async fn save(&self, record: &LocalDeploymentRecord) -> delibera_agent::Result<()> {
        let json = zeroize::Zeroizing::new(serde_json::to_vec(record).map_err(journal_error)?);
        let sealed = self.db.secrets().seal(&json);
        // The local deployer stops an agent its journal cannot remember, and
        // the job fails with it: a store that refuses writes only for now (a
        // full disk, an I/O error, a lost connection) is waited out instead.
        super::until_stored(
            &JOURNAL_RETRY,
            || self.save_sealed(&record.id, &sealed),
            |error| {
                tracing::warn!(deployment = %record.id, %error,
                    "the local agent's journal entry waits for its store: it is saved once the store can be written again");
            },
        )
        .await
        .map_err(journal_error)
    }

    async fn remove(&self, id: &str) -> delibera_agent::Result<()> {
        let id = id.to_owned();
        if let Some(postgres) = self.db.postgres() {
            let client = postgres.writer().await.map_err(journal_error)?;
            client
                .execute("DELETE FROM local_deployments WHERE cvm_id = $1", &[&id])
                .await
                .map_err(|error| journal_error(postgres.error(error)))?;
            return Ok(());
        }
        self.db
            .write(move |conn, _, _| {
                conn.execute(
                    "DELETE FROM local_deployments WHERE cvm_id = ?1",
                    params![id],
                )?;
                Ok(())
            })
            .await
            .map_err(journal_error)
    }

    async fn load(&self) -> delibera_agent::Result<Vec<JournalEntry>> {
        if let Some(postgres) = self.db.postgres() {
            let client = postgres.client().await.map_err(journal_error)?;
            let rows = client
                .query("SELECT cvm_id, record FROM local_deployments", &[])
                .await
                .map_err(|error| journal_error(postgres.error(error)))?;
            return Ok(rows
                .into_iter()
                .map(|row| decode_entry(row.get(0), row.get(1), &postgres.secrets))
                .collect());
        }
        self.db
            .with_conn(|conn, secrets| {
                let mut statement = conn.prepare("SELECT cvm_id, record FROM local_deployments")?;
                let rows = statement
                    .query_map([], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                // One damaged entry is that agent's problem, not the journal's.
                Ok(rows
                    .into_iter()
                    .map(|(id, sealed)| decode_entry(id, &sealed, secrets))
                    .collect())
            })
            .await
            .map_err(journal_error)
    }
}

/// A journal entry as stored: the record, or why it does not open.
fn decode_entry(id: String, sealed: &[u8], secrets: &SecretBox) -> JournalEntry {
    let decoded = secrets
        .open(sealed)
        .map_err(|error| error.to_string())
        .and_then(|json| {
            serde_json::from_slice::<LocalDeploymentRecord>(&json).map_err(|error| {
                // serde's own message may quote a value, and
                // values here are keys: say only where.
                format!(
                    "not a deployment record ({:?} error at line {}, column {})",
                    error.classify(),
                    error.line(),
                    error.column()
                )
            })
        });
    match decoded {
        Ok(record) => JournalEntry::Record(Box::new(record)),
        Err(reason) => JournalEntry::Unreadable { id, reason },
    }
}

/// The pauses while the store refuses a journal entry.
const JOURNAL_RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));

impl DeploymentStore {
    /// Writes one sealed entry, once.
    async fn save_sealed(&self, id: &str, sealed: &[u8]) -> Result<(), StoreError> {
        if let Some(postgres) = self.db.postgres() {
            let client = postgres.writer().await?;
            client
                .execute(
                    "INSERT INTO local_deployments (cvm_id, record) VALUES ($1, $2)
                     ON CONFLICT (cvm_id) DO UPDATE SET record = EXCLUDED.record",
                    &[&id, &sealed],
                )
                .await
                .map_err(|error| postgres.error(error))?;
            return Ok(());
        }
        let (id, sealed) = (id.to_owned(), sealed.to_vec());
        self.db
            .write(move |conn, _, _| {
                conn.execute(
                    "INSERT OR REPLACE INTO local_deployments (cvm_id, record) VALUES (?1, ?2)",
                    params![id, sealed],
                )?;
                Ok(())
            })
            .await
    }
}

fn journal_error(error: impl std::fmt::Display) -> delibera_agent::Error {
    delibera_agent::Error::Journal {
        reason: error.to_string(),
    }
}
