//! The local deployer's journal: local mode's in-process agents, remembered
//! (sealed, like every secret: their env holds their keys) so a restarted
//! server starts them again on their registered endpoints.

use delibera_agent::{DeploymentJournal, LocalDeploymentRecord};
use rusqlite::params;

use super::Database;

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
        let sealed = self.db.secrets.seal(&json);
        let id = record.id.clone();
        self.db
            .write(move |conn, _| {
                conn.execute(
                    "INSERT OR REPLACE INTO local_deployments (cvm_id, record) VALUES (?1, ?2)",
                    params![id, sealed],
                )?;
                Ok(())
            })
            .await
            .map_err(journal_error)
    }

    async fn remove(&self, id: &str) -> delibera_agent::Result<()> {
        let id = id.to_owned();
        self.db
            .write(move |conn, _| {
                conn.execute(
                    "DELETE FROM local_deployments WHERE cvm_id = ?1",
                    params![id],
                )?;
                Ok(())
            })
            .await
            .map_err(journal_error)
    }

    async fn load(
        &self,
    ) -> delibera_agent::Result<Vec<delibera_agent::Result<LocalDeploymentRecord>>> {
        self.db
            .with_conn(|conn, secrets| {
                let mut statement = conn.prepare("SELECT cvm_id, record FROM local_deployments")?;
                let rows = statement
                    .query_map([], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows
                    .into_iter()
                    .map(|(id, sealed)| {
                        let unreadable =
                            |reason: String| delibera_agent::Error::UnreadableJournalEntry {
                                id: id.clone(),
                                reason,
                            };
                        let json = secrets
                            .open(&sealed)
                            .map_err(|_| unreadable("its sealed record does not open".into()))?;
                        // serde's message could quote the agent's keys; say only where.
                        serde_json::from_slice(&json).map_err(|error| {
                            unreadable(format!(
                                "its record does not parse (line {}, column {})",
                                error.line(),
                                error.column()
                            ))
                        })
                    })
                    .collect())
            })
            .await
            .map_err(journal_error)
    }
}

fn journal_error(error: impl std::fmt::Display) -> delibera_agent::Error {
    delibera_agent::Error::Journal {
        reason: error.to_string(),
    }
}
