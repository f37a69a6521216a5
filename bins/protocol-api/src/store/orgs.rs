//! The Ensue orgs of the coordinators this server provisioned, so the workers
//! it provisions for them get the org's key. Kept after the job is purged.

use rusqlite::{OptionalExtension, params};

use super::{Database, StoreError, WorkError};

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
                    let corrupt = |reason: &str| StoreError::Corrupt {
                        id: did.clone(),
                        reason: reason.into(),
                    };
                    let key = secrets
                        .open(&sealed)
                        .map_err(|_| corrupt("its sealed coordinator org key does not open"))?;
                    let key = String::from_utf8(key.to_vec())
                        .map_err(|_| corrupt("its coordinator org key is not UTF-8"))?;
                    Ok((name, zeroize::Zeroizing::new(key)))
                })
                .transpose()
            })
            .await
    }
}
