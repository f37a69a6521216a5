//! The three stand-ins together, and the production settings that point a
//! Protocol API at them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use delibera_identity::{AccountId, Keypair};
use delibera_storacha::{Delegator, LocalSpaceDelegator};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::near::{NearDevnet, NearDevnetConfig};
use crate::phala::{PhalaDevnet, PhalaDevnetConfig};
use crate::{Error, Result};

/// The image that boots the Delibera agent runtime inside the devnet's own
/// process: what a devnet's settings name unless it was started with an image
/// archive (see [`crate::phala`] for how a CVM's image boots).
pub const AGENT_IMAGE: &str =
    "delibera-devnet/agent@sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The accounts and contracts of a devnet.
pub mod accounts {
    /// The registry contract.
    pub const REGISTRY: &str = "registry.delibera.devnet";
    /// The shared coordinator contract (the worker roster).
    pub const ROSTER: &str = "coordinator.delibera.devnet";
    /// The factory that makes a coordinator contract per DAO.
    pub const FACTORY: &str = "coord-factory.delibera.devnet";
    /// The Protocol API's own account: admin of the registry and the roster.
    pub const SERVER: &str = "protocol-api.delibera.devnet";
    /// An account playing the user's wallet.
    pub const USER: &str = "alice.devnet";
}

/// Settings of a devnet.
#[derive(Debug, Clone)]
pub struct DevnetConfig {
    /// Where every stand-in keeps its state.
    pub data_dir: PathBuf,
    /// Phala listens on this port, NEAR on the next, Ensue on the one after;
    /// 0 picks free ports.
    pub port_base: u16,
    /// How long a CVM takes to boot.
    pub boot_delay: Duration,
    /// How often NEAR makes a block.
    pub block_time: Duration,
    /// An OCI archive of the agent image (`scripts/build-image.sh`): CVMs
    /// run it as a child process and the settings name it by digest.
    pub image_archive: Option<PathBuf>,
}

impl DevnetConfig {
    /// A devnet in `data_dir` on `port_base`, with a 1.5 s boot and 1 s blocks.
    pub fn new(data_dir: impl Into<PathBuf>, port_base: u16) -> Self {
        Self {
            data_dir: data_dir.into(),
            port_base,
            boot_delay: Duration::from_millis(1500),
            block_time: Duration::from_secs(1),
            image_archive: None,
        }
    }
}

/// An account and its full-access key.
#[derive(Clone, Serialize, Deserialize)]
pub struct DevnetAccount {
    /// The account.
    pub account_id: AccountId,
    /// Its key, `ed25519:…`.
    pub private_key: Zeroizing<String>,
}

/// What a devnet made on its first start and keeps (in `devnet.json`, owner
/// readable only): the keys its settings hand out.
#[derive(Clone, Serialize, Deserialize)]
struct Profile {
    phala_api_key: Zeroizing<String>,
    ensue_api_key: Zeroizing<String>,
    server: DevnetAccount,
    user: DevnetAccount,
    storacha_agent_key: Zeroizing<String>,
    storacha_proof: String,
}

/// A running devnet.
pub struct Devnet {
    phala: PhalaDevnet,
    near: NearDevnet,
    ensue: delibera_ensue_local::LocalEnsue,
    profile: Profile,
}

async fn listener(port_base: u16, offset: u16) -> Result<TcpListener> {
    let port = if port_base == 0 {
        0
    } else {
        port_base + offset
    };
    Ok(TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?)
}

fn account(text: &str) -> Result<AccountId> {
    AccountId::parse(text).map_err(|error| Error::Config {
        reason: error.to_string(),
    })
}

impl Devnet {
    /// Starts the three stand-ins; the first start in `data_dir` creates the
    /// accounts, keys and Storacha space the settings name.
    pub async fn start(config: DevnetConfig) -> Result<Self> {
        // The devnet keeps keys (the profile, the space key) and stand-ins'
        // state: its directory is its owner's only.
        delibera_data_dir::private_dir(&config.data_dir)?;
        let profile_path = config.data_dir.join("devnet.json");
        let existing = read_profile(&profile_path)?;
        let phala_api_key = existing
            .as_ref()
            .map(|profile| profile.phala_api_key.clone())
            .unwrap_or_else(|| Zeroizing::new(format!("phak_devnet_{}", random_hex(16))));
        let ensue_api_key = existing
            .as_ref()
            .map(|profile| profile.ensue_api_key.clone())
            .unwrap_or_else(|| {
                Zeroizing::new(delibera_ensue_local::ApiKey::generate().expose().to_owned())
            });

        let phala = PhalaDevnet::start(
            listener(config.port_base, 0).await?,
            PhalaDevnetConfig {
                data_dir: config.data_dir.join("phala"),
                api_key: phala_api_key.clone(),
                boot_delay: config.boot_delay,
                image_archive: config.image_archive.clone(),
            },
        )
        .await?;
        let near = NearDevnet::start(
            listener(config.port_base, 1).await?,
            NearDevnetConfig {
                data_dir: config.data_dir.join("near"),
                block_time: config.block_time,
                final_lag: 2,
                registry: account(accounts::REGISTRY)?,
                roster: account(accounts::ROSTER)?,
                factory: account(accounts::FACTORY)?,
                admin: account(accounts::SERVER)?,
            },
        )
        .await?;
        let ensue_listener = listener(config.port_base, 2).await?;
        let ensue_addr = ensue_listener.local_addr()?;
        drop(ensue_listener);
        let ensue = delibera_ensue_local::LocalEnsue::start(
            delibera_ensue_local::Config::default()
                .with_addr(ensue_addr)
                .with_data_dir(config.data_dir.join("ensue"))
                .with_bootstrap_key(
                    delibera_ensue_local::ApiKey::new(ensue_api_key.as_str()).map_err(|error| {
                        Error::Config {
                            reason: error.to_string(),
                        }
                    })?,
                )
                .with_claim_policy(delibera_ensue_local::ClaimPolicy::RequireClaim),
        )
        .await
        .map_err(|error| Error::Config {
            reason: format!("cannot start the Ensue stand-in: {error}"),
        })?;

        let profile = match existing {
            Some(profile) => profile,
            None => {
                // The registry's admin exists from genesis, with its key.
                let server = near.admin_key()?;
                let user = near.create_account(&account(accounts::USER)?)?;
                let space = LocalSpaceDelegator::open(config.data_dir.join("storacha")).map_err(
                    |error| Error::Config {
                        reason: error.to_string(),
                    },
                )?;
                let agent = Keypair::generate();
                let proof = space
                    .delegate_space_access(&agent.did())
                    .await
                    .map_err(|error| Error::Config {
                        reason: error.to_string(),
                    })?
                    .proof;
                let profile = Profile {
                    phala_api_key,
                    ensue_api_key,
                    server: DevnetAccount {
                        account_id: server.account_id,
                        private_key: server.secret_key,
                    },
                    user: DevnetAccount {
                        account_id: user.account_id,
                        private_key: user.secret_key,
                    },
                    storacha_agent_key: Zeroizing::new(agent.to_ucanto_string().to_string()),
                    storacha_proof: proof,
                };
                write_private(
                    &profile_path,
                    &serde_json::to_vec_pretty(&profile).map_err(|error| Error::Config {
                        reason: error.to_string(),
                    })?,
                )?;
                profile
            }
        };
        Ok(Self {
            phala,
            near,
            ensue,
            profile,
        })
    }

    /// The Phala stand-in.
    pub fn phala(&self) -> &PhalaDevnet {
        &self.phala
    }

    /// The NEAR stand-in.
    pub fn near(&self) -> &NearDevnet {
        &self.near
    }

    /// The hosted-Ensue stand-in.
    pub fn ensue(&self) -> &delibera_ensue_local::LocalEnsue {
        &self.ensue
    }

    /// The account playing the user's wallet.
    pub fn user(&self) -> &DevnetAccount {
        &self.profile.user
    }

    /// The Protocol API's account.
    pub fn server(&self) -> &DevnetAccount {
        &self.profile.server
    }

    /// The image its settings name: the archive's (`name@sha256:…`) when one
    /// was given, else [`AGENT_IMAGE`].
    pub fn agent_image(&self) -> String {
        self.phala
            .loaded_image()
            .map(|image| image.reference())
            .unwrap_or_else(|| AGENT_IMAGE.to_owned())
    }

    /// Every setting a Protocol API needs in production mode to use this
    /// devnet, plus `DEVNET_FACTORY_CONTRACT_ID`, `DEVNET_USER_ACCOUNT_ID` and
    /// `DEVNET_USER_PRIVATE_KEY` for whoever plays the user.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let profile = &self.profile;
        let image = self.agent_image();
        vec![
            ("DELIBERA_MODE", "production".to_owned()),
            ("PHALA_API_KEY", profile.phala_api_key.to_string()),
            ("PHALA_CLOUD_API_PREFIX", self.phala.api_url()),
            (
                "PHALA_PUBLIC_URL_TEMPLATE",
                self.phala.public_url_template(),
            ),
            ("ENSUE_URL", self.ensue.url().to_owned()),
            ("ENSUE_API_KEY", profile.ensue_api_key.to_string()),
            ("NEAR_RPC_URL", self.near.url()),
            ("NEAR_ACCOUNT_ID", profile.server.account_id.to_string()),
            ("NEAR_PRIVATE_KEY", profile.server.private_key.to_string()),
            ("REGISTRY_CONTRACT_ID", accounts::REGISTRY.to_owned()),
            ("COORDINATOR_CONTRACT_ID", accounts::ROSTER.to_owned()),
            (
                "STORACHA_AGENT_PRIVATE_KEY",
                profile.storacha_agent_key.to_string(),
            ),
            ("STORACHA_DELEGATION_PROOF", profile.storacha_proof.clone()),
            ("WORKER_IMAGE", image.clone()),
            ("COORDINATOR_IMAGE", image),
            ("DEVNET_FACTORY_CONTRACT_ID", accounts::FACTORY.to_owned()),
            (
                "DEVNET_USER_ACCOUNT_ID",
                profile.user.account_id.to_string(),
            ),
            (
                "DEVNET_USER_PRIVATE_KEY",
                profile.user.private_key.to_string(),
            ),
        ]
    }

    /// Writes [`Devnet::env`] as `KEY=VALUE` lines (owner readable only: it
    /// holds keys).
    pub fn write_env_file(&self, path: &Path) -> Result<()> {
        let mut text = String::from(
            "# Written by `delibera devnet up`: a Protocol API in production mode against this devnet.\n",
        );
        for (key, value) in self.env() {
            text.push_str(&format!("{key}={value}\n"));
        }
        let text = Zeroizing::new(text);
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        write_private(path, text.as_bytes())
    }

    /// Stops the three stand-ins (and every CVM's agent).
    pub async fn stop(self) -> Result<()> {
        self.phala.stop().await?;
        self.near.stop().await?;
        self.ensue.stop().await.map_err(|error| Error::Config {
            reason: format!("stopping the Ensue stand-in: {error}"),
        })
    }
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buffer = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buffer);
    hex::encode(buffer)
}

fn read_profile(path: &Path) -> Result<Option<Profile>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| Error::Config {
                    reason: format!("{} is not a devnet profile: {error}", path.display()),
                })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Writes a new file only its owner can read.
fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    Ok(delibera_data_dir::write_private_file(path, contents)?)
}
