//! The agent runtime: its env contract, and a full deliberation through the
//! local deployer (in-process agents, local Ensue, local registry).

use std::sync::Arc;
use std::time::Duration;

use delibera_coordination::{
    AgentConfig, AgentRole, DeploymentJournal, Error, HandlerChoice, LocalDeployer,
    LocalDeploymentRecord, RegistryWorkers,
};
use delibera_ensue::{EnsueClient, EnsueConfig, Memory};
use delibera_ensue_local::{Config, LocalEnsue};
use delibera_identity::Keypair;
use delibera_near::{AccountId, CoordinatorRegistration, LocalRegistry, WorkerRegistration};
use delibera_phala::{AgentSpec, Deployer, EnvVar, wait_healthy};
use serde_json::{Value, json};

fn key(n: u8) -> Keypair {
    Keypair::from_seed(&[n; 32])
}

fn base_env(keypair: &Keypair) -> Vec<(String, String)> {
    vec![
        (
            "STORACHA_AGENT_PRIVATE_KEY".into(),
            keypair.to_ucanto_string().to_string(),
        ),
        ("ENSUE_API_KEY".into(), "lmn_test".into()),
    ]
}

fn lookup(env: &[(String, String)]) -> impl Fn(&str) -> Option<String> + '_ {
    move |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

#[test]
fn config_defaults_follow_the_role() {
    let keypair = key(1);
    let env = base_env(&keypair);
    let worker = AgentConfig::from_lookup(AgentRole::Worker, lookup(&env)).unwrap();
    assert_eq!(worker.did, keypair.did());
    assert_eq!((worker.port, worker.coordinator_did.clone()), (3001, None));
    assert_eq!(worker.poll_interval, Duration::from_secs(3));
    assert!(matches!(worker.handler, HandlerChoice::Rules));
    assert_eq!(worker.display_name, "Delibera worker");

    let coordinator = AgentConfig::from_lookup(AgentRole::Coordinator, lookup(&env)).unwrap();
    assert_eq!(coordinator.port, 3000);
    assert_eq!(coordinator.coordinator_did, Some(keypair.did()));
    assert!(!format!("{coordinator:?}").contains("lmn_test"));
}

#[test]
fn config_reads_every_variable() {
    let keypair = key(1);
    let mut env = base_env(&keypair);
    for (name, value) in [
        ("COORDINATOR_DID", key(2).did().to_string()),
        ("PORT", "8080".into()),
        ("AGENT_DISPLAY_NAME", "Worker Alpha".into()),
        ("AGENT_PUBLIC_URL", "https://alpha.example".into()),
        ("POLL_INTERVAL_MS", "250".into()),
        ("ROUND_DEADLINE_SECS", "30".into()),
        ("TASK_HANDLER", "llm".into()),
        ("LLM_MODEL", "llama3".into()),
        ("ENSUE_URL", "http://127.0.0.1:9/".into()),
    ] {
        env.push((name.into(), value));
    }
    let config = AgentConfig::from_lookup(AgentRole::Worker, lookup(&env)).unwrap();
    assert_eq!(config.coordinator_did, Some(key(2).did()));
    assert_eq!(config.port, 8080);
    assert_eq!(config.display_name, "Worker Alpha");
    assert_eq!(config.public_url.as_deref(), Some("https://alpha.example"));
    assert_eq!(config.poll_interval, Duration::from_millis(250));
    assert_eq!(config.round_deadline, Duration::from_secs(30));
    assert!(matches!(&config.handler, HandlerChoice::Llm(llm) if llm.model == "llama3"));
    assert_eq!(config.ensue.base_url().as_str(), "http://127.0.0.1:9/");
}

fn config_error(env: &[(String, String)]) -> String {
    match AgentConfig::from_lookup(AgentRole::Worker, lookup(env)) {
        Err(error @ Error::Config { .. }) => error.to_string(),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn config_errors_name_the_variable_but_never_echo_the_key() {
    assert!(config_error(&[]).contains("STORACHA_AGENT_PRIVATE_KEY is not set"));
    let bad_key = vec![
        (
            "STORACHA_AGENT_PRIVATE_KEY".to_owned(),
            "MgSECRETSECRET".to_owned(),
        ),
        ("ENSUE_API_KEY".to_owned(), "k".to_owned()),
    ];
    let message = config_error(&bad_key);
    assert!(
        message.contains("STORACHA_AGENT_PRIVATE_KEY is not a ucanto"),
        "{message}"
    );
    assert!(!message.contains("SECRET"));

    let mut env = base_env(&key(1));
    env.retain(|(k, _)| k != "ENSUE_API_KEY");
    assert!(config_error(&env).contains("ENSUE_API_KEY is not set"));

    for (name, value, expected) in [
        ("PORT", "70000", "PORT 70000 is out of range"),
        (
            "POLL_INTERVAL_MS",
            "soon",
            "POLL_INTERVAL_MS must be a whole number",
        ),
        (
            "TASK_HANDLER",
            "magic",
            "TASK_HANDLER must be `rules` or `llm`",
        ),
        ("COORDINATOR_DID", "did:web:example.com", "COORDINATOR_DID"),
        ("TASK_HANDLER", "llm", "LLM_MODEL is required"),
        (
            "POLL_INTERVAL_MS",
            "3600001",
            "POLL_INTERVAL_MS must be at most one hour",
        ),
        (
            "ROUND_DEADLINE_SECS",
            "18446744073709551615",
            "ROUND_DEADLINE_SECS must be at most one week",
        ),
    ] {
        let mut env = base_env(&key(1));
        env.push((name.into(), value.into()));
        let message = config_error(&env);
        assert!(message.contains(expected), "{name}: {message}");
    }
}

fn spec(role: AgentRole, name: &str, env: Vec<(String, String)>) -> AgentSpec {
    AgentSpec::new(role, name).with_env(env.into_iter().map(|(k, v)| EnvVar::new(k, v)).collect())
}

async fn get_json(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deliberation_through_the_local_deployer() {
    let ensue = LocalEnsue::start(Config::default()).await.unwrap();
    let memory: Arc<dyn Memory> = Arc::new(
        EnsueClient::new(
            EnsueConfig::new(ensue.api_key().expose())
                .with_base_url(ensue.url())
                .unwrap(),
        )
        .unwrap(),
    );
    let owner: AccountId = "alice.testnet".parse().unwrap();
    let registry = Arc::new(LocalRegistry::in_memory(owner.clone()).unwrap());
    let deployer = LocalDeployer::new(Arc::new(RegistryWorkers(registry.clone())));
    let http = reqwest::Client::new();

    let coordinator_key = key(10);
    let coordinator_did = coordinator_key.did();
    let agent_env = |keypair: &Keypair| {
        vec![
            (
                "STORACHA_AGENT_PRIVATE_KEY".to_owned(),
                keypair.to_ucanto_string().to_string(),
            ),
            ("ENSUE_URL".to_owned(), ensue.url().to_owned()),
            (
                "ENSUE_API_KEY".to_owned(),
                ensue.api_key().expose().to_owned(),
            ),
            ("COORDINATOR_DID".to_owned(), coordinator_did.to_string()),
            ("POLL_INTERVAL_MS".to_owned(), "20".to_owned()),
            ("ROUND_DEADLINE_SECS".to_owned(), "20".to_owned()),
        ]
    };

    let coordinator = deployer
        .deploy(&spec(
            AgentRole::Coordinator,
            "Coord",
            agent_env(&coordinator_key),
        ))
        .await
        .unwrap();
    let health = wait_healthy(
        &http,
        &coordinator.endpoint_url,
        &coordinator_did,
        Duration::from_secs(10),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        health.body,
        json!({"message": "Delibera coordinator running", "did": coordinator_did, "role": "coordinator"})
    );
    registry
        .register_coordinator_as(
            &owner,
            &CoordinatorRegistration {
                coordinator_did: coordinator_did.to_string(),
                endpoint_url: coordinator.endpoint_url.clone(),
                cvm_id: coordinator.cvm_id.clone(),
                min_workers: 1,
                max_workers: 10,
            },
        )
        .unwrap();

    // No workers registered yet: nothing to coordinate.
    let started = http
        .post(format!("{}/api/coordinate", coordinator.endpoint_url))
        .json(&json!({"proposalId": "p-1", "title": "Fund the indexer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status().as_u16(), 409);

    let mut deployments = vec![coordinator.clone()];
    for n in 1..=3u8 {
        let keypair = key(n);
        let mut env = agent_env(&keypair);
        env.push(("AGENT_DISPLAY_NAME".into(), format!("Worker {n}")));
        let worker = deployer
            .deploy(&spec(AgentRole::Worker, &format!("Worker {n}"), env))
            .await
            .unwrap();
        let health = wait_healthy(
            &http,
            &worker.endpoint_url,
            &keypair.did(),
            Duration::from_secs(10),
            &mut |_| {},
        )
        .await
        .unwrap();
        assert_eq!(health.body["message"], "Delibera worker running");
        assert_eq!(
            deployer.status(&worker.cvm_id).await.unwrap().status,
            "running"
        );
        assert_eq!(
            memory
                .get(&format!("agent/{}/display_name", keypair.did()))
                .await
                .unwrap()
                .as_deref(),
            Some(format!("Worker {n}").as_str())
        );
        assert_eq!(
            memory
                .get(&format!("agent/{}/endpoint", keypair.did()))
                .await
                .unwrap()
                .as_deref(),
            Some(worker.endpoint_url.as_str())
        );
        registry
            .register_worker_as(
                &owner,
                &WorkerRegistration {
                    coordinator_did: coordinator_did.to_string(),
                    worker_did: keypair.did().to_string(),
                    endpoint_url: worker.endpoint_url.clone(),
                    cvm_id: worker.cvm_id.clone(),
                },
            )
            .unwrap();
        deployments.push(worker);
    }

    let base = &coordinator.endpoint_url;
    let body = json!({
        "proposalId": "p-1",
        "title": "Fund the indexer",
        "description": "Six months of hosting.",
        "parameters": {"amount": 20000, "rules": {"thresholds": [{"field": "amount", "max": 10000}]}}
    });
    let started = http
        .post(format!("{base}/api/coordinate"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status().as_u16(), 202);
    assert_eq!(
        started.json::<Value>().await.unwrap(),
        json!({"proposalId": "p-1", "status": "coordinating"})
    );
    let again = http
        .post(format!("{base}/api/coordinate"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 409);

    let proposal = loop {
        let (status, proposal) = get_json(&http, &format!("{base}/api/proposals/p-1")).await;
        if status == 200 && proposal["status"] == "completed" {
            break proposal;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let tally = &proposal["tally"];
    assert_eq!(proposal["proposalId"], "p-1");
    assert_eq!(
        (tally["approved"].clone(), tally["rejected"].clone()),
        (json!(0), json!(3))
    );
    assert_eq!(tally["decision"], "Rejected");
    assert_eq!(tally["workerCount"], 3);
    assert_eq!(tally["results"].as_array().unwrap().len(), 3);
    assert!(
        tally["results"][0]["reasoning"]
            .as_str()
            .unwrap()
            .contains("amount 20000 exceeds max 10000")
    );

    // The status endpoint settles to idle once the round's task has finished.
    let status = loop {
        let (_, status) = get_json(&http, &format!("{base}/api/coordinate/status")).await;
        if status["running"] == false {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        status,
        json!({"status": "idle", "proposalId": "p-1", "running": false, "lastError": null})
    );
    let (status, missing) = get_json(&http, &format!("{base}/api/proposals/nope")).await;
    assert_eq!(
        (status, missing),
        (404, json!({"error": "unknown proposal nope"}))
    );
    let bad = http
        .post(format!("{base}/api/coordinate"))
        .json(&json!({"title": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    for deployment in &deployments {
        deployer.teardown(&deployment.cvm_id).await.unwrap();
        assert!(deployer.status(&deployment.cvm_id).await.is_err());
        // Tearing down twice is fine.
        deployer.teardown(&deployment.cvm_id).await.unwrap();
    }
    assert!(
        http.get(base).send().await.is_err(),
        "the coordinator stopped listening"
    );
    ensue.stop().await.unwrap();
}

#[tokio::test]
async fn deploying_with_a_bad_env_fails_without_starting_anything() {
    let registry: Arc<dyn delibera_near::Registry> =
        Arc::new(LocalRegistry::in_memory("admin.testnet".parse().unwrap()).unwrap());
    let deployer = LocalDeployer::new(Arc::new(RegistryWorkers(registry)));
    let error = deployer
        .deploy(&spec(AgentRole::Worker, "W", vec![]))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("STORACHA_AGENT_PRIVATE_KEY is not set"),
        "{error}"
    );
}

/// A journal in memory, shared by the "before" and "after" deployers of a restart.
#[derive(Default)]
struct MemoryJournal(std::sync::Mutex<Vec<LocalDeploymentRecord>>);

#[async_trait::async_trait]
impl DeploymentJournal for MemoryJournal {
    async fn save(&self, record: &LocalDeploymentRecord) -> delibera_coordination::Result<()> {
        let mut records = self.0.lock().unwrap();
        records.retain(|kept| kept.cvm_id != record.cvm_id);
        records.push(record.clone());
        Ok(())
    }
    async fn remove(&self, cvm_id: &str) -> delibera_coordination::Result<()> {
        self.0.lock().unwrap().retain(|kept| kept.cvm_id != cvm_id);
        Ok(())
    }
    async fn load(&self) -> delibera_coordination::Result<Vec<LocalDeploymentRecord>> {
        Ok(self.0.lock().unwrap().clone())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_deployer_brings_its_agents_back_on_the_same_endpoint() {
    let ensue = LocalEnsue::start(Config::default()).await.unwrap();
    let registry: Arc<dyn delibera_near::Registry> =
        Arc::new(LocalRegistry::in_memory("admin.testnet".parse().unwrap()).unwrap());
    let journal = Arc::new(MemoryJournal::default());
    let http = reqwest::Client::new();
    let keypair = key(30);
    let mut env = base_env(&keypair);
    env.push(("ENSUE_URL".into(), ensue.url().to_owned()));
    env.push(("COORDINATOR_DID".into(), key(31).did().to_string()));

    let before = LocalDeployer::new(Arc::new(RegistryWorkers(registry.clone())))
        .with_journal(journal.clone());
    let deployment = before
        .deploy(&spec(AgentRole::Worker, "W", env))
        .await
        .unwrap();
    wait_healthy(
        &http,
        &deployment.endpoint_url,
        &keypair.did(),
        Duration::from_secs(10),
        &mut |_| {},
    )
    .await
    .unwrap();
    let remembered = journal.load().await.unwrap();
    assert_eq!(remembered.len(), 1);
    assert_eq!(remembered[0].cvm_id, deployment.cvm_id);
    assert!(!format!("{remembered:?}").contains("lmn_test"));

    // The process "dies": dropping the deployer stops its agents, the journal stays.
    drop(before);
    let port_free = async {
        while std::net::TcpListener::bind(("127.0.0.1", remembered[0].port)).is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), port_free)
        .await
        .expect("the agent let go of its port");

    let after =
        LocalDeployer::new(Arc::new(RegistryWorkers(registry))).with_journal(journal.clone());
    assert_eq!(after.restore().await.unwrap(), 1);
    wait_healthy(
        &http,
        &deployment.endpoint_url,
        &keypair.did(),
        Duration::from_secs(10),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert!(after.status(&deployment.cvm_id).await.unwrap().running);
    // Restoring twice starts nothing new.
    assert_eq!(after.restore().await.unwrap(), 0);

    after.teardown(&deployment.cvm_id).await.unwrap();
    assert!(journal.load().await.unwrap().is_empty());
    ensue.stop().await.unwrap();
}
