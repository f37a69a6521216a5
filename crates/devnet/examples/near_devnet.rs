//! Runs a NEAR devnet until Ctrl-C.
//!
//! `cargo run -p delibera-devnet --example near_devnet -- DATA_DIR [PORT]`
//! serves JSON-RPC on 127.0.0.1:PORT (8332 by default); make accounts with
//! the `devnet_create_account` method.

use std::time::Duration;

use delibera_devnet::near::{NearDevnet, NearDevnetConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "delibera_devnet=debug".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let data_dir = args.next().ok_or("usage: near_devnet DATA_DIR [PORT]")?;
    let port: u16 = args
        .next()
        .map(|port| port.parse())
        .transpose()?
        .unwrap_or(8332);
    let mut config = NearDevnetConfig::new(data_dir)?;
    config.block_time = Duration::from_millis(500);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let devnet = NearDevnet::start(listener, config).await?;
    println!(
        "NEAR devnet at {} (height {})",
        devnet.url(),
        devnet.height()
    );
    tokio::signal::ctrl_c().await?;
    devnet.stop().await?;
    Ok(())
}
