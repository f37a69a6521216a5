//! The `Delegator` port: giving a coordinator or worker access to a Storacha space.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use delibera_identity::{Did, Keypair, Zeroizing};

use crate::delegation::{base64_text, identity_cid_text};
use crate::{Capability, Delegation, Error, Principal, Result};

/// The abilities the TypeScript server delegates to every new agent, in its order.
pub const SPACE_ACCESS_ABILITIES: [&str; 6] = [
    "space/blob/add",
    "space/index/add",
    "upload/add",
    "upload/list",
    "space/content/serve/*",
    "space/content/decrypt",
];
/// How long an agent's delegation lasts: 365 days, as the TypeScript server grants.
pub const SPACE_ACCESS_LIFETIME_SECS: u64 = 365 * 24 * 60 * 60;
/// The file, inside the data directory, holding the local space key.
pub const LOCAL_SPACE_KEY_FILE: &str = "storacha-space.key";
/// The file, beside the key, recording the local space's DID: proof that a
/// space exists here, so a lost key is reported instead of replaced.
pub const LOCAL_SPACE_DID_FILE: &str = "storacha-space.did";

/// Unix time in seconds, injectable so expiries can be tested.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        // A clock before 1970 is a broken host; 0 then makes every expiry "far away".
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs())
    }
}

/// A clock stopped at one instant (for tests and reproducible output).
#[derive(Clone, Copy, Debug)]
pub struct FixedClock(pub u64);

impl Clock for FixedClock {
    fn now(&self) -> u64 {
        self.0
    }
}

/// A delegation of space access to one agent, in the forms agents consume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceDelegation {
    /// The space the agent may now use.
    pub space_did: Did,
    /// The `mAYIEA…` identity-CID form (what `@storacha/client/proof` parses).
    pub proof: String,
    /// The padded base64 archive (the TypeScript server's form).
    pub proof_base64: String,
}

impl SpaceDelegation {
    fn new(space_did: Did, delegation: &Delegation) -> Self {
        // Both forms from one archive: writing it is half of what each costs.
        let archive = delegation.archive();
        Self {
            space_did,
            proof: identity_cid_text(&archive),
            proof_base64: base64_text(&archive),
        }
    }
}

/// Grants agents access to the coordinator's Storacha space.
#[async_trait]
pub trait Delegator: Send + Sync {
    /// Delegates [`SPACE_ACCESS_ABILITIES`] on the space to `agent` for one year.
    async fn delegate_space_access(&self, agent: &Did) -> Result<SpaceDelegation>;
}

fn space_capabilities(space: &Did) -> Result<Vec<Capability>> {
    SPACE_ACCESS_ABILITIES
        .iter()
        .map(|can| Capability::new(*can, space.as_str()))
        .collect()
}

/// Re-delegates from a configured Storacha agent key and the proof that gives
/// that agent access to a space (what `storacha delegation create` produced).
///
/// The proof is embedded in every new delegation, so the chain verifies from the
/// space down to the new agent. The chain is not verified here: proofs issued
/// through a Storacha account (`did:mailto`) cannot be checked by this crate,
/// yet Storacha accepts them.
#[derive(Clone)]
pub struct ConfiguredDelegator {
    agent_key: Keypair,
    space_proof: Delegation,
    space_did: Did,
    /// [`SPACE_ACCESS_ABILITIES`] on the space, made once: every delegation
    /// grants the same.
    capabilities: Vec<Capability>,
    clock: Arc<dyn Clock>,
}

impl ConfiguredDelegator {
    /// Checks that `space_proof` is delegated to `agent_key` and names a
    /// did:key space in a capability's `with` (the first one is used).
    pub fn new(agent_key: Keypair, space_proof: Delegation) -> Result<Self> {
        if space_proof.audience() != &Principal::from(agent_key.did()) {
            return Err(Error::UnusableSpaceProof {
                reason: format!(
                    "it is delegated to {}, not to the agent {}",
                    space_proof.audience(),
                    agent_key.did()
                ),
            });
        }
        let space_did = space_proof
            .capabilities()
            .iter()
            .find_map(|capability| Did::parse(capability.with()).ok())
            .ok_or_else(|| Error::UnusableSpaceProof {
                reason: "no capability is on a did:key space".to_owned(),
            })?;
        Ok(Self {
            agent_key,
            space_proof,
            capabilities: space_capabilities(&space_did)?,
            space_did,
            clock: Arc::new(SystemClock),
        })
    }

    /// Parses the agent key (`Mg…`) and the proof (either text form).
    pub fn from_strings(agent_key: &str, space_proof: &str) -> Result<Self> {
        let agent_key = Keypair::from_ucanto_str(agent_key.trim())?;
        Self::new(agent_key, Delegation::parse(space_proof)?)
    }

    /// Uses `clock` for expiries instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The space the proof grants.
    pub fn space_did(&self) -> &Did {
        &self.space_did
    }
}

#[async_trait]
impl Delegator for ConfiguredDelegator {
    async fn delegate_space_access(&self, agent: &Did) -> Result<SpaceDelegation> {
        let expiration = self.clock.now().saturating_add(SPACE_ACCESS_LIFETIME_SECS);
        let delegation =
            Delegation::builder(Principal::from(agent.clone()), self.capabilities.clone())
                .expiration(Some(expiration))
                .proof(self.space_proof.clone())
                .sign(&self.agent_key)?;
        Ok(SpaceDelegation::new(self.space_did.clone(), &delegation))
    }
}

/// A local space for development and self-hosting: the space key lives in the
/// data directory and the space delegates to agents directly (it is the issuer
/// and the `with`), so no Storacha account is needed to produce valid proofs.
#[derive(Clone)]
pub struct LocalSpaceDelegator {
    space_key: Keypair,
    /// The space's DID and [`SPACE_ACCESS_ABILITIES`] on it, made once:
    /// every delegation grants the same.
    space_did: Did,
    capabilities: Vec<Capability>,
    clock: Arc<dyn Clock>,
}

impl LocalSpaceDelegator {
    /// Loads `data_dir/storacha-space.key`, creating it (mode 0600, a ucanto
    /// private key string) with a fresh key on first use, and records the
    /// space's DID beside it (`storacha-space.did`). A key that is missing
    /// while the DID file shows a space existed is refused, never replaced:
    /// the delegations already handed out name that space.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self> {
        let data_dir = data_dir.as_ref();
        let key_path = data_dir.join(LOCAL_SPACE_KEY_FILE);
        let did_path = data_dir.join(LOCAL_SPACE_DID_FILE);
        let io_error = |path: &PathBuf| {
            let path = path.clone();
            move |source| Error::Io { path, source }
        };
        delibera_data_dir::private_dir(data_dir)?;
        let recorded = match fs::read_to_string(&did_path) {
            Ok(text) => {
                delibera_data_dir::tighten_file(&did_path)?;
                Some(text.trim().to_owned())
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(io_error(&did_path)(error)),
        };
        let space_key = match fs::read_to_string(&key_path) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                delibera_data_dir::tighten_file(&key_path)?;
                Keypair::from_ucanto_str(text.trim()).map_err(|error| Error::SpaceKeyDamaged {
                    path: key_path.clone(),
                    reason: error.to_string(),
                })?
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if let Some(space_did) = recorded {
                    return Err(Error::SpaceKeyMissing {
                        path: key_path,
                        space_did,
                    });
                }
                let key = Keypair::generate();
                let text = Zeroizing::new(format!("{}\n", key.to_ucanto_string().as_str()));
                delibera_data_dir::write_private_file(&key_path, text.as_bytes())?;
                key
            }
            Err(error) => return Err(io_error(&key_path)(error)),
        };
        let space_did = space_key.did();
        match recorded {
            Some(recorded) if recorded != space_did.as_str() => {
                return Err(Error::SpaceKeyMismatch {
                    path: key_path,
                    recorded,
                    found: space_did.to_string(),
                });
            }
            Some(_) => {}
            None => delibera_data_dir::write_private_file(
                &did_path,
                format!("{space_did}\n").as_bytes(),
            )?,
        }
        Ok(Self {
            space_key,
            capabilities: space_capabilities(&space_did)?,
            space_did,
            clock: Arc::new(SystemClock),
        })
    }

    /// Uses `clock` for expiries instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The local space's DID.
    pub fn space_did(&self) -> Did {
        self.space_did.clone()
    }
}

#[async_trait]
impl Delegator for LocalSpaceDelegator {
    async fn delegate_space_access(&self, agent: &Did) -> Result<SpaceDelegation> {
        let expiration = self.clock.now().saturating_add(SPACE_ACCESS_LIFETIME_SECS);
        let delegation =
            Delegation::builder(Principal::from(agent.clone()), self.capabilities.clone())
                .expiration(Some(expiration))
                .sign(&self.space_key)?;
        Ok(SpaceDelegation::new(self.space_did.clone(), &delegation))
    }
}
