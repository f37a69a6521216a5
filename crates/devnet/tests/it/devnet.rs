//! The devnet as a whole: its settings point a Protocol API at the three
//! stand-ins, name every production variable, and survive a restart.

use std::collections::HashMap;
use std::time::Duration;

use delibera_devnet::{Devnet, DevnetConfig, accounts};

use crate::support::within;

fn config(dir: &std::path::Path) -> DevnetConfig {
    let mut config = DevnetConfig::new(dir, 0);
    config.boot_delay = Duration::from_millis(50);
    config.block_time = Duration::from_millis(50);
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn the_settings_name_every_production_variable_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let devnet = Devnet::start(config(dir.path())).await.unwrap();
    let env: HashMap<&str, String> = devnet.env().into_iter().collect();
    for name in [
        "DELIBERA_MODE",
        "PHALA_API_KEY",
        "PHALA_CLOUD_API_PREFIX",
        "PHALA_PUBLIC_URL_TEMPLATE",
        "ENSUE_URL",
        "ENSUE_API_KEY",
        "NEAR_RPC_URL",
        "NEAR_ACCOUNT_ID",
        "NEAR_PRIVATE_KEY",
        "REGISTRY_CONTRACT_ID",
        "COORDINATOR_CONTRACT_ID",
        "STORACHA_AGENT_PRIVATE_KEY",
        "STORACHA_DELEGATION_PROOF",
        "WORKER_IMAGE",
        "COORDINATOR_IMAGE",
        "DEVNET_FACTORY_CONTRACT_ID",
        "DEVNET_USER_ACCOUNT_ID",
        "DEVNET_USER_PRIVATE_KEY",
    ] {
        assert!(
            env.get(name).is_some_and(|value| !value.is_empty()),
            "{name}"
        );
    }
    assert_eq!(env["DELIBERA_MODE"], "production");
    assert_eq!(env["REGISTRY_CONTRACT_ID"], accounts::REGISTRY);
    // The Storacha settings are accepted by the production delegator.
    delibera_storacha::ConfiguredDelegator::from_strings(
        &env["STORACHA_AGENT_PRIVATE_KEY"],
        &env["STORACHA_DELEGATION_PROOF"],
    )
    .unwrap();
    // The server's key signs for its account on the NEAR stand-in.
    let signer = delibera_near::NearSigner::from_secret_key(
        env["NEAR_ACCOUNT_ID"].parse().unwrap(),
        &env["NEAR_PRIVATE_KEY"],
    )
    .unwrap();
    let rpc = delibera_near::NearRpc::new([env["NEAR_RPC_URL"].as_str()]).unwrap();
    rpc.view_access_key(
        signer.account_id(),
        &signer.public_key(),
        &delibera_near::BlockReference::Final,
    )
    .await
    .unwrap();

    // The env file holds the same, owner-readable only, as is all its state.
    let file = dir.path().join("devnet.env");
    devnet.write_env_file(&file).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(&format!("NEAR_RPC_URL={}\n", env["NEAR_RPC_URL"])));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &str| {
            std::fs::metadata(dir.path().join(path))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        for owner_only_dir in ["", "phala", "near", "ensue", "storacha"] {
            assert_eq!(mode(owner_only_dir), 0o700, "{owner_only_dir}");
        }
        for owner_only_file in [
            "devnet.env",
            "devnet.json",
            "phala/phala.sqlite",
            "near/near.sqlite",
            "ensue/ensue-local.sqlite3",
            "storacha/storacha-space.key",
        ] {
            assert_eq!(mode(owner_only_file), 0o600, "{owner_only_file}");
        }
    }

    // A restart on the same directory hands out the same keys.
    let user_key = devnet.user().private_key.to_string();
    within(devnet.stop()).await.unwrap();
    let again = Devnet::start(config(dir.path())).await.unwrap();
    let env_again: HashMap<&str, String> = again.env().into_iter().collect();
    assert_eq!(again.user().private_key.as_str(), user_key);
    assert_eq!(env_again["PHALA_API_KEY"], env["PHALA_API_KEY"]);
    assert_eq!(env_again["ENSUE_API_KEY"], env["ENSUE_API_KEY"]);
    within(again.stop()).await.unwrap();
}
