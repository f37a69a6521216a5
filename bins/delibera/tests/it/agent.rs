//! `delibera agent worker|coordinator` as real processes against a local Ensue.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use assert_cmd::cargo::cargo_bin;
use delibera_ensue::{EnsueClient, EnsueConfig, Memory};
use delibera_ensue_local::{Config, LocalEnsue};
use delibera_identity::Keypair;
use serde_json::{Value, json};

use crate::support::{Finish, delibera, first_line, http, within};

/// A child process killed when dropped, so a failing test leaves nothing behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `delibera agent <role> [args]` with `env` and returns it with the
/// JSON line it prints once listening.
async fn start(role: &str, args: &[&str], env: Vec<(&str, String)>) -> (Running, Value) {
    let child = Command::new(cargo_bin("delibera"))
        .arg("agent")
        .arg(role)
        .args(args)
        .env_clear()
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    // Off the runtime: the agent talks to the local Ensue served on it.
    let (running, line) = tokio::task::spawn_blocking(move || {
        let line = first_line(&mut running.0);
        (running, line)
    })
    .await
    .unwrap();
    let ready = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line:?}"));
    (running, ready)
}

fn agent_env(keypair: &Keypair, ensue: &LocalEnsue) -> Vec<(&'static str, String)> {
    vec![
        (
            "STORACHA_AGENT_PRIVATE_KEY",
            keypair.to_ucanto_string().to_string(),
        ),
        ("ENSUE_URL", ensue.url().to_owned()),
        ("ENSUE_API_KEY", ensue.api_key().expose().to_owned()),
        ("PORT", "0".to_owned()),
        ("POLL_INTERVAL_MS", "20".to_owned()),
    ]
}

async fn get(url: &str) -> (u16, Value) {
    let response = http().get(url).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_and_a_coordinator_process_run_a_round() {
    let ensue = within(
        "the local Ensue to start",
        LocalEnsue::start(Config::default()),
    )
    .await
    .unwrap();
    let worker_key = Keypair::from_seed(&[1; 32]);
    let coordinator_key = Keypair::from_seed(&[2; 32]);

    let mut env = agent_env(&worker_key, &ensue);
    env.push(("COORDINATOR_DID", coordinator_key.did().to_string()));
    env.push(("AGENT_DISPLAY_NAME", "Worker Alpha".to_owned()));
    let (_worker, ready) = start("worker", &[], env).await;
    assert_eq!(ready["did"], json!(worker_key.did()));
    assert_eq!(ready["role"], "worker");
    let worker_url = format!("http://127.0.0.1:{}", ready["port"]);
    let (status, health) = get(&worker_url).await;
    assert_eq!(
        (status, &health["message"], &health["did"], &health["role"]),
        (
            200,
            &json!("Delibera worker running"),
            &json!(worker_key.did()),
            &json!("worker")
        )
    );
    let memory = EnsueClient::new(
        EnsueConfig::new(ensue.api_key().expose())
            .with_base_url(ensue.url())
            .unwrap(),
    )
    .unwrap();
    // The agent publishes its name beside serving, so it may land just after.
    let name_key = format!("agent/{}/display_name", worker_key.did());
    let display_name = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(name) = memory.get(&name_key).await.unwrap() {
                return name;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the worker published its name");
    assert_eq!(display_name, "Worker Alpha");

    let mut env = agent_env(&coordinator_key, &ensue);
    env.push(("DELIBERA_WORKERS", worker_key.did().to_string()));
    let (_coordinator, ready) = start("coordinator", &[], env).await;
    let base = format!("http://127.0.0.1:{}", ready["port"]);
    let (status, health) = get(&base).await;
    assert_eq!(
        (status, health["message"].clone()),
        (200, json!("Delibera coordinator running"))
    );

    let started = http()
        .post(format!("{base}/api/coordinate"))
        .json(&json!({"proposalId": "p-cli", "title": "Fund the indexer", "parameters": {"amount": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status().as_u16(), 202);
    let proposal = within("the round to complete", async {
        loop {
            let (status, proposal) = get(&format!("{base}/api/proposals/p-cli")).await;
            if status == 200 && proposal["status"] == "completed" {
                return proposal;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(proposal["tally"]["approved"], 1);
    assert_eq!(proposal["tally"]["decision"], "Approved");
    assert_eq!(
        proposal["tally"]["workers"][0]["workerDid"],
        json!(worker_key.did())
    );
}

#[test]
fn a_missing_key_is_a_one_line_error_naming_the_variable() {
    let output = delibera().args(["agent", "worker"]).finish();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("STORACHA_AGENT_PRIVATE_KEY is not set"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1);
}
