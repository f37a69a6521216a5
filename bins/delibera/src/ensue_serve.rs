//! `delibera ensue serve`: a local Ensue-compatible memory server.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use delibera_ensue_local::{
    ApiKey, BOOTSTRAP_ORG, Config, DEFAULT_MAX_BYTES_PER_ORG, DEFAULT_MAX_KEYS_PER_ORG,
    DEFAULT_REGISTRATIONS_PER_MINUTE, Limits, LocalEnsue, RegistrationLimit,
};
use serde_json::json;

use crate::{Outcome, print_json};

/// Serve the Ensue memory protocol (MCP `tools/call` and the direct methods)
/// on SQLite, until Ctrl-C or SIGTERM.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Where to listen (port 0 picks a free port).
    #[arg(long, env = "ENSUE_LOCAL_ADDR", default_value = "127.0.0.1:3006")]
    addr: SocketAddr,
    /// Keep the data in DIR/ensue-local.sqlite3; without it, data lives in memory and is lost on exit.
    #[arg(long, value_name = "DIR", env = "ENSUE_LOCAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The API key of the `local` organization; without it a fresh key is generated and printed.
    #[arg(
        long,
        value_name = "KEY",
        env = "ENSUE_LOCAL_BOOTSTRAP_KEY",
        hide_env_values = true
    )]
    bootstrap_key: Option<String>,
    /// The most keys one organization may hold (0: no limit).
    #[arg(long, value_name = "N", env = "ENSUE_LOCAL_MAX_KEYS_PER_ORG", default_value_t = DEFAULT_MAX_KEYS_PER_ORG)]
    max_keys_per_org: u64,
    /// The most bytes (key names, values, descriptions) one organization may store (0: no limit).
    #[arg(long, value_name = "N", env = "ENSUE_LOCAL_MAX_BYTES_PER_ORG", default_value_t = DEFAULT_MAX_BYTES_PER_ORG)]
    max_bytes_per_org: u64,
    /// Organizations `POST /auth/agent-register` may create per minute, from
    /// all callers together (0: no limit).
    #[arg(
        long,
        value_name = "N",
        env = "ENSUE_LOCAL_REGISTRATIONS_PER_MINUTE",
        default_value_t = DEFAULT_REGISTRATIONS_PER_MINUTE
    )]
    registrations_per_minute: u32,
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<Outcome> {
    crate::block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<Outcome> {
    let mut config = Config::default()
        .with_addr(args.addr)
        .with_limits(
            Limits::default().with_org_quota(args.max_keys_per_org, args.max_bytes_per_org),
        )
        .with_registration_limit(RegistrationLimit::global(args.registrations_per_minute));
    if let Some(dir) = &args.data_dir {
        config = config.with_data_dir(dir);
    }
    let generated = args.bootstrap_key.is_none();
    if let Some(key) = args.bootstrap_key {
        config = config.with_bootstrap_key(ApiKey::new(key).context("invalid --bootstrap-key")?);
    }
    let shutdown = delibera_agent::shutdown_signal();
    let server = LocalEnsue::start(config)
        .await
        .with_context(|| format!("cannot start the Ensue server on {}", args.addr))?;

    // One JSON line once the server listens, so scripts can wait for it and
    // read its URL. A generated key is shown here, once: it is stored only as
    // a digest.
    let mut ready = json!({
        "url": server.url(),
        "org": BOOTSTRAP_ORG,
        "storage": server
            .store()
            .path()
            .map_or_else(|| "memory".to_owned(), |path| path.display().to_string()),
    });
    if generated {
        ready["apiKey"] = json!(server.api_key().expose());
    }
    print_json(&ready);

    shutdown.await;
    server.stop().await.context("the Ensue server failed")?;
    Ok(Outcome::Success)
}
