//! `delibera devnet up` and `delibera devnet account create` as real processes.

use std::process::{Child, Command, Stdio};

use assert_cmd::cargo::cargo_bin;
use serde_json::Value;

use crate::support::{Finish, delibera, first_line};

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn up_writes_the_env_file_and_the_faucet_makes_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("devnet.env");
    let child = Command::new(cargo_bin("delibera"))
        .args([
            "devnet",
            "up",
            "--port-base",
            "0",
            "--block-ms",
            "50",
            "--data-dir",
        ])
        .arg(dir.path().join("state"))
        .arg("--env-file")
        .arg(&env_file)
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let (_running, line) = tokio::task::spawn_blocking(move || {
        let line = first_line(&mut running.0);
        (running, line)
    })
    .await
    .unwrap();
    let ready: Value = serde_json::from_str(&line).unwrap();
    let near = ready["near"].as_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&env_file).unwrap();
    assert!(text.contains("DELIBERA_MODE=production\n"), "{text}");
    assert!(text.contains(&format!("NEAR_RPC_URL={near}\n")), "{text}");
    assert!(text.contains("DEVNET_USER_PRIVATE_KEY=ed25519:"), "{text}");

    let output = tokio::task::spawn_blocking(move || {
        delibera()
            .args(["devnet", "account", "create", "bob.devnet", "--rpc", &near])
            .finish()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let account: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(account["accountId"], "bob.devnet");
    assert!(
        account["privateKey"]
            .as_str()
            .unwrap()
            .starts_with("ed25519:")
    );
}

#[test]
fn up_with_an_image_archive_that_is_not_one_refuses_to_start_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("agent.oci.tar");
    std::fs::write(&junk, b"not an OCI archive").unwrap();
    let output = delibera()
        .args(["devnet", "up", "--port-base", "0", "--data-dir"])
        .arg(dir.path().join("state"))
        .arg("--image-archive")
        .arg(&junk)
        .finish();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("devnet image: a damaged archive"),
        "{stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "no URLs printed for a devnet that did not start"
    );
}
