//! The Ensue orgs of the coordinators this server provisioned, so the workers
//! it provisions for them get the org's key. Kept after the job is purged.

use std::sync::Arc;

use rusqlite::params;

use super::view::{SealedOrg, ViewChange};
use super::{Database, StoreError, WorkError};
use crate::seal::SecretBox;

/// Coordinator DID → Ensue org name and API key (sealed).
#[derive(Clone)]
pub struct OrgKeys {
    db: Database,
}

impl OrgKeys {
    pub(super) fn new(db: Database) -> Self {
        Self { db }
    }

    /// Remembers a coordinator's Ensue org so the workers provisioned for it
    /// get its key (sealed, like every secret; kept after the job is purged).
    pub async fn put(
        &self,
        coordinator_did: &str,
        org_name: &str,
        api_key: &str,
    ) -> Result<(), StoreError> {
        let sealed: Arc<[u8]> = self.db.secrets().seal(api_key.as_bytes()).into();
        let (did, name) = (coordinator_did.to_owned(), org_name.to_owned());
        if let Some(postgres) = self.db.postgres() {
            let client = postgres.writer().await?;
            client
                .execute(
                    "INSERT INTO coordinator_orgs (coordinator_did, org_name, api_key)
                     VALUES ($1, $2, $3)
                     ON CONFLICT (coordinator_did) DO UPDATE
                     SET org_name = EXCLUDED.org_name, api_key = EXCLUDED.api_key",
                    &[&did, &name, &&sealed[..]],
                )
                .await
                .map_err(|error| postgres.error(error))?;
            return Ok(());
        }
        self.db.write(move |conn, _, changes| {
            conn.execute(
                "INSERT OR REPLACE INTO coordinator_orgs (coordinator_did, org_name, api_key) VALUES (?1, ?2, ?3)",
                params![did, name, &sealed[..]],
            )?;
            changes.push(ViewChange::Org {
                coordinator_did: did,
                org: SealedOrg { name, api_key: sealed },
            });
            Ok(())
        })
        .await
    }

    /// The Ensue org of a coordinator this server provisioned: `(name, api key)`.
    /// Read from the committed state held in memory (from the database on
    /// PostgreSQL, which other replicas write).
    pub async fn get(
        &self,
        coordinator_did: &str,
    ) -> Result<Option<(String, zeroize::Zeroizing<String>)>, StoreError> {
        if let Some(postgres) = self.db.postgres() {
            let did = coordinator_did.to_owned();
            let client = postgres.client().await?;
            let row = client
                .query_opt(
                    "SELECT org_name, api_key FROM coordinator_orgs WHERE coordinator_did = $1",
                    &[&did],
                )
                .await
                .map_err(|error| postgres.error(error))?;
            return row
                .map(|row| open_org_key(&did, row.get(0), row.get(1), &postgres.secrets))
                .transpose();
        }
        let Some(org) = self.db.view().and_then(|view| view.org(coordinator_did)) else {
            return Ok(None);
        };
        open_org_key(coordinator_did, org.name, &org.api_key, self.db.secrets()).map(Some)
    }
}

/// Every stored coordinator org, for the view of committed state (rebuilding
/// it when the database opens).
pub(super) fn org_entries(conn: &rusqlite::Connection) -> Result<Vec<ViewChange>, WorkError> {
    let mut statement =
        conn.prepare("SELECT coordinator_did, org_name, api_key FROM coordinator_orgs")?;
    let rows = statement.query_map([], |row| {
        Ok(ViewChange::Org {
            coordinator_did: row.get(0)?,
            org: SealedOrg {
                name: row.get(1)?,
                api_key: row.get::<_, Vec<u8>>(2)?.into(),
            },
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A coordinator's org as stored: its name and its key, opened.
fn open_org_key(
    did: &str,
    name: String,
    sealed: &[u8],
    secrets: &SecretBox,
) -> Result<(String, zeroize::Zeroizing<String>), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        id: did.to_owned(),
        reason: reason.into(),
    };
    let key = secrets
        .open(sealed)
        .map_err(|_| corrupt("its sealed coordinator org key does not open"))?;
    let key = String::from_utf8(key.to_vec())
        .map_err(|_| corrupt("its coordinator org key is not UTF-8"))?;
    Ok((name, zeroize::Zeroizing::new(key)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::SecretBox;

    #[tokio::test]
    async fn an_org_key_is_read_from_memory_once_committed_and_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.sqlite");
        let secret_box = SecretBox::from_key(&[11; 32]);
        {
            let orgs = Database::open(&path, secret_box.clone())
                .unwrap()
                .org_keys();
            assert!(orgs.get("did:key:z6MkCoordinator").await.unwrap().is_none());
            orgs.put(
                "did:key:z6MkCoordinator",
                "delibera-dao-abcd",
                "lmn_org_key",
            )
            .await
            .unwrap();
            let (name, key) = orgs.get("did:key:z6MkCoordinator").await.unwrap().unwrap();
            assert_eq!(
                (name.as_str(), key.as_str()),
                ("delibera-dao-abcd", "lmn_org_key")
            );
        }
        let raw = std::fs::read(&path).unwrap();
        let wal = std::fs::read(dir.path().join("jobs.sqlite-wal")).unwrap_or_default();
        for bytes in [&raw, &wal] {
            assert!(
                !bytes.windows(11).any(|w| w == b"lmn_org_key"),
                "an org key on disk in the clear"
            );
        }
        let reopened = Database::open(&path, secret_box).unwrap().org_keys();
        let (name, key) = reopened
            .get("did:key:z6MkCoordinator")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (name.as_str(), key.as_str()),
            ("delibera-dao-abcd", "lmn_org_key")
        );
    }
}
