//! `delibera ensue …`: seal and unseal values as the TypeScript worker does,
//! and read and write an Ensue memory service.

use std::io::Read;

use anyhow::Context;
use clap::{Args, Subcommand};
use delibera_deploy::vars;
use delibera_ensue::{CacheKey, DEFAULT_BASE_URL, Dialect, EnsueClient, EnsueConfig, Memory};
use serde_json::json;

use crate::{Outcome, arg_or_stdin, block_on, print_json};

#[derive(Subcommand)]
pub(crate) enum EnsueCommand {
    /// Encrypt a JSON value (read from stdin); prints `aes256gcm:…`.
    Seal(KeyArgs),
    /// Decrypt an `aes256gcm:…` value (read from stdin); prints the JSON.
    Unseal(KeyArgs),
    /// Read a key; prints `{"key", "value"}`, exits 1 when the key is missing.
    Get {
        /// The key, e.g. `coordination/coordinator/status`.
        key: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Write a key, creating it if needed; prints `{"key", "written": true}`.
    Put {
        /// The key.
        key: String,
        /// The value, or `-` for stdin.
        value: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// List the keys under a prefix (all pages); prints `{"keys": [...]}`.
    List {
        /// The literal prefix, e.g. `coordination/tasks/`.
        #[arg(default_value = "")]
        prefix: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Delete a key (a missing key is not an error); prints `{"key", "deleted": true}`.
    Delete {
        /// The key.
        key: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Serve a local Ensue-compatible memory server on SQLite (until Ctrl-C).
    Serve(crate::ensue_serve::ServeArgs),
}

#[derive(Args)]
pub(crate) struct KeyArgs {
    /// The agent's private key (`Mg…`), as in `STORACHA_AGENT_PRIVATE_KEY`.
    #[arg(long = "key", env = vars::PRIVATE_KEY, hide_env_values = true)]
    private_key: String,
}

#[derive(Args)]
pub(crate) struct Connection {
    /// The memory service's URL.
    #[arg(long, env = vars::ENSUE_URL, default_value = DEFAULT_BASE_URL)]
    url: String,
    /// The API key (`lmn_…`).
    #[arg(long, env = vars::ENSUE_API_KEY, hide_env_values = true)]
    api_key: String,
    /// The wire dialect: `mcp` (the hosted service) or `direct` (the plain form).
    #[arg(long, default_value = "mcp")]
    dialect: Dialect,
}

impl Connection {
    fn client(&self) -> anyhow::Result<EnsueClient> {
        let config = EnsueConfig::new(self.api_key.trim())
            .with_base_url(&self.url)?
            .with_dialect(self.dialect);
        Ok(EnsueClient::new(config)?)
    }
}

pub(crate) fn run(command: EnsueCommand) -> anyhow::Result<Outcome> {
    match command {
        EnsueCommand::Serve(args) => return crate::ensue_serve::run(args),
        EnsueCommand::Seal(args) => {
            let key = cache_key(&args)?;
            let value = read_stdin()?;
            serde_json::from_str::<serde_json::Value>(&value)
                .context("stdin is not a JSON value")?;
            // The text is sealed as given, so `unseal` returns it byte for byte.
            println!("{}", key.seal(&value)?);
        }
        EnsueCommand::Unseal(args) => {
            let key = cache_key(&args)?;
            let sealed = read_stdin()?;
            println!(
                "{}",
                key.unseal(&sealed).context("cannot unseal the value")?
            );
        }
        EnsueCommand::Get { key, connection } => {
            let client = connection.client()?;
            let value = block_on(client.get(&key))?;
            print_json(&json!({ "key": key, "value": value }));
            if value.is_none() {
                return Ok(Outcome::Exit(1));
            }
        }
        EnsueCommand::Put {
            key,
            value,
            connection,
        } => {
            let client = connection.client()?;
            let value = arg_or_stdin(&value)?;
            block_on(client.upsert(&key, &value))?;
            print_json(&json!({ "key": key, "written": true }));
        }
        EnsueCommand::List { prefix, connection } => {
            let client = connection.client()?;
            let keys = block_on(client.list_keys(&prefix))?;
            print_json(&json!({ "keys": keys }));
        }
        EnsueCommand::Delete { key, connection } => {
            let client = connection.client()?;
            block_on(client.delete(&key))?;
            print_json(&json!({ "key": key, "deleted": true }));
        }
    }
    Ok(Outcome::Success)
}

fn cache_key(args: &KeyArgs) -> anyhow::Result<CacheKey> {
    CacheKey::from_private_key(args.private_key.trim()).context("unusable encryption key")
}

/// All of stdin, without surrounding whitespace.
fn read_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read stdin")?;
    Ok(text.trim().to_owned())
}
