//! `delibera phala …`: sealed env blobs and compose files for Phala Cloud CVMs.

use std::io::Read;

use anyhow::Context;
use clap::Subcommand;
use delibera_deploy::{AgentRole, EnvVar, ImageRef};
use delibera_identity::Zeroizing;
use delibera_phala::{encrypt_env, render_compose};

use crate::Outcome;

#[derive(Subcommand)]
pub(crate) enum PhalaCommand {
    /// Encrypt env vars for a CVM: reads `[{"key","value"}…]` JSON on stdin and
    /// prints the `encrypted_env` hex (`@phala/dstack-sdk` encryptEnvVars format).
    EncryptEnv {
        /// The app's X25519 env-encryption public key (`app_env_encrypt_pubkey`),
        /// 64 hex characters, with or without `0x`.
        #[arg(long)]
        pubkey: String,
    },
    /// Print the docker compose file of an agent.
    Compose {
        /// Which agent: `worker` (port 3001) or `coordinator` (port 3000).
        role: AgentRole,
        /// The image reference (default: the role's Delibera image).
        #[arg(long)]
        image: Option<String>,
        /// Pin the image to this digest (`sha256:<64 hex>`).
        #[arg(long)]
        digest: Option<String>,
        /// The port to listen on and expose (default: worker 3001, coordinator 3000).
        #[arg(long)]
        port: Option<u16>,
        /// A secret env name to pass through as `KEY=${KEY}` (repeat, or separate with commas).
        #[arg(long = "env", value_name = "KEY", value_delimiter = ',')]
        env: Vec<String>,
    },
}

pub(crate) fn run(command: PhalaCommand) -> anyhow::Result<Outcome> {
    match command {
        PhalaCommand::EncryptEnv { pubkey } => {
            let mut input = Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut input)
                .context("cannot read the env JSON from stdin")?;
            let vars = EnvVar::list_from_json(&input)?;
            println!("{}", encrypt_env(&pubkey, &vars)?);
        }
        PhalaCommand::Compose {
            role,
            image,
            digest,
            port,
            env,
        } => {
            let mut image = match image {
                Some(reference) => ImageRef::new(&reference)?,
                None => ImageRef::default_for(role),
            };
            if let Some(digest) = digest {
                image = image.pinned(&digest)?;
            }
            let port = port.unwrap_or_else(|| role.default_port());
            print!("{}", render_compose(role, &image, port, &env)?);
        }
    }
    Ok(Outcome::Success)
}
