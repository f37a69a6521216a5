//! What the configuration parses to. Each test runs in a child process with
//! an empty environment (plus what it sets), since every setting is also read
//! from the environment: a developer's exported `DELIBERA_MODE` or
//! `PHALA_API_KEY` must not change the outcome.

use clap::Parser;
use protocol_api::config::{Config, Mode};

use crate::common::in_clean_env;

#[test]
fn defaults_are_local_mode_on_3005() {
    if !in_clean_env(&[]) {
        return;
    }
    let config = Config::try_parse_from(["protocol-api"]).unwrap();
    assert_eq!(config.port, 3005);
    assert_eq!(config.mode, Mode::Local);
    assert_eq!(config.ensue_local_addr.to_string(), "127.0.0.1:3006");
    assert_eq!(config.missing_production_settings().len(), 9);
}

#[test]
fn production_names_every_missing_variable() {
    if !in_clean_env(&[]) {
        return;
    }
    let config = Config::try_parse_from([
        "protocol-api",
        "--mode",
        "production",
        "--phala-api-key",
        "phak_x",
        "--near-rpc-url",
        "https://rpc.testnet.near.org",
    ])
    .unwrap();
    assert_eq!(
        config.missing_production_settings(),
        [
            "ENSUE_API_KEY",
            "NEAR_ACCOUNT_ID",
            "NEAR_PRIVATE_KEY",
            "REGISTRY_CONTRACT_ID",
            "COORDINATOR_CONTRACT_ID",
            "STORACHA_AGENT_PRIVATE_KEY",
            "STORACHA_DELEGATION_PROOF"
        ]
    );
}

#[test]
fn settings_are_read_from_the_environment() {
    if !in_clean_env(&[
        ("DELIBERA_MODE", "production"),
        ("PHALA_API_KEY", "phak_x"),
        ("PORT", "4005"),
        ("NEAR_RPC_URL", "https://a.example,https://b.example"),
    ]) {
        return;
    }
    let config = Config::try_parse_from(["protocol-api"]).unwrap();
    assert_eq!((config.mode, config.port), (Mode::Production, 4005));
    assert_eq!(config.phala_api_key.as_deref(), Some("phak_x"));
    assert_eq!(
        config
            .near_rpc_url
            .iter()
            .map(|url| url.as_str())
            .collect::<Vec<_>>(),
        ["https://a.example/", "https://b.example/"]
    );
    assert!(
        !config
            .missing_production_settings()
            .contains(&"PHALA_API_KEY")
    );
}
