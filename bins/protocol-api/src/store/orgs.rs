//! The Ensue orgs of the coordinators this server provisioned, so the workers
//! it provisions for them get the org's key. Kept after the job is purged.

use rusqlite::{OptionalExtension, params};

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
        let sealed = self.db.secrets().seal(api_key.as_bytes());
        let (did, name) = (coordinator_did.to_owned(), org_name.to_owned());
        if let Some(postgres) = self.db.postgres() {
            let client = postgres.writer().await?;
            client
                .execute(
                    "INSERT INTO coordinator_orgs (coordinator_did, org_name, api_key)
                     VALUES ($1, $2, $3)
                     ON CONFLICT (coordinator_did) DO UPDATE
                     SET org_name = EXCLUDED.org_name, api_key = EXCLUDED.api_key",
                    &[&did, &name, &sealed],
                )
                .await
                .map_err(|error| postgres.error(error))?;
            return Ok(());
        }
        self.db.write(move |conn, _, _| {
            conn.execute(
                "INSERT OR REPLACE INTO coordinator_orgs (coordinator_did, org_name, api_key) VALUES (?1, ?2, ?3)",
                params![did, name, sealed],
            )?;
            Ok(())
        })
        .await
    }

    /// The Ensue org of a coordinator this server provisioned: `(name, api key)`.
    pub async fn get(
        &self,
        coordinator_did: &str,
    ) -> Result<Option<(String, zeroize::Zeroizing<String>)>, StoreError> {
        let did = coordinator_did.to_owned();
        if let Some(postgres) = self.db.postgres() {
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
        self.db
            .with_conn(move |conn, secrets| {
                let row = conn
                    .query_row(
                        "SELECT org_name, api_key FROM coordinator_orgs WHERE coordinator_did = ?1",
                        params![did],
                        |row| Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?)),
                    )
                    .optional()?;
                row.map(|(name, sealed)| -> Result<_, WorkError> {
                    Ok(open_org_key(&did, name, &sealed, secrets)?)
                })
                .transpose()
            })
            .await
    }
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
