//! The agent runtime and the local deployer: a full deliberation through
//! in-process agents (local Ensue, local registry), what an agent publishes,
//! idempotent deploys by name, and agents brought back after a restart.

use std::sync::Arc;
use std::time::Duration;

use delibera_agent::{
    Agent, DeploymentJournal, JournalEntry, LocalDeployer, LocalDeploymentRecord, RegistryWorkers,
};
use delibera_deploy::{
    AgentEnv, AgentIdentity, AgentRole, AgentSpec, Deployer, DeploymentName, HealthGate,
};
use delibera_ensue::{EnsueClient, EnsueConfig, Memory};
use delibera_ensue_local::{Config, LocalEnsue};
use delibera_identity::{Did, Keypair};
use delibera_near::{AccountId, CoordinatorRegistration, LocalRegistry, WorkerRegistration};
use serde_json::{Value, json};

/// Every wait in these tests gives up after this long, so a broken behaviour
/// fails with a message instead of hanging.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

/// Awaits `future`, or fails naming `what` once [`DEADLINE`] has passed.
pub(crate) async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {DEADLINE:?}"))
}

/// Polls `poll` every 20 ms until it returns a value, or fails naming `what`.
pub(crate) async fn until<T, F, Fut>(what: &str, mut poll: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    within(what, async {
        loop {
            if let Some(value) = poll().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// An HTTP client whose every request gives up after [`DEADLINE`].
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .unwrap()
}

pub(crate) fn key(n: u8) -> Keypair {
    Keypair::from_seed(&[n; 32])
}

pub(crate) fn env(role: AgentRole, keypair: &Keypair, name: &str, ensue: &LocalEnsue) -> AgentEnv {
    let mut env = AgentEnv::new(
        role,
        AgentIdentity::from_keypair(keypair),
        name,
        ensue.api_key().expose(),
    );
    env.ensue_url = ensue.url().parse().unwrap();
    env.poll_interval = Duration::from_millis(20);
    env.round_deadline = Duration::from_secs(20);
    env
}

pub(crate) fn spec(env: AgentEnv) -> AgentSpec {
    let name = DeploymentName::derive(env.role, &env.display_name, &env.did().as_str()[8..]);
    AgentSpec::new(name, env)
}

pub(crate) fn memory(ensue: &LocalEnsue) -> Arc<dyn Memory> {
    Arc::new(
        EnsueClient::new(
            EnsueConfig::new(ensue.api_key().expose())
                .with_base_url(ensue.url())
                .unwrap(),
        )
        .unwrap(),
    )
}

pub(crate) fn local_registry() -> Arc<LocalRegistry> {
    Arc::new(LocalRegistry::in_memory("alice.testnet".parse().unwrap()).unwrap())
}

pub(crate) async fn healthy(http: &reqwest::Client, url: &str, did: &Did) -> Value {
    HealthGate::default()
        .wait(http, url, did, Duration::from_secs(10), &mut |_| {})
        .await
        .unwrap()
        .body
}

/// An agent's `display_name` and `endpoint` once it has published both
/// (it publishes beside serving, so a healthy agent may not have yet).
pub(crate) async fn published(
    memory: &Arc<dyn Memory>,
    did: &Did,
) -> std::collections::HashMap<String, String> {
    let fields = ["display_name", "endpoint"];
    let keys: Vec<String> = fields
        .iter()
        .map(|field| format!("agent/{did}/{field}"))
        .collect();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let found = memory.get_many(&keys).await.unwrap();
            if found.len() == keys.len() {
                return fields
                    .iter()
                    .zip(&keys)
                    .map(|(field, key)| (field.to_string(), found[key].clone()))
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the agent published its identity")
}

pub(crate) async fn get_json(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deliberation_through_the_local_deployer() {
    let ensue = within(
        "the local Ensue to start",
        LocalEnsue::start(Config::default()),
    )
    .await
    .unwrap();
    let memory = memory(&ensue);
    let owner: AccountId = "alice.testnet".parse().unwrap();
    let registry = local_registry();
    let deployer = LocalDeployer::new(Arc::new(RegistryWorkers(registry.clone())));
    let http = http();

    let coordinator_key = key(10);
    let coordinator_did = coordinator_key.did();
    let coordinator = deployer
        .deploy(&spec(env(
            AgentRole::Coordinator,
            &coordinator_key,
            "Coord",
            &ensue,
        )))
        .await
        .unwrap();
    let health = healthy(&http, &coordinator.endpoint_url, &coordinator_did).await;
    assert_eq!(
        [&health["message"], &health["did"], &health["role"]],
        [
            &json!("Delibera coordinator running"),
            &json!(coordinator_did),
            &json!("coordinator")
        ]
    );
    registry
        .register_coordinator_as(
            &owner,
            &CoordinatorRegistration {
                coordinator_did: coordinator_did.to_string(),
                endpoint_url: coordinator.endpoint_url.clone(),
                cvm_id: coordinator.id.clone(),
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
        let mut worker_env = env(AgentRole::Worker, &keypair, &format!("Worker {n}"), &ensue);
        worker_env.coordinator_did = Some(coordinator_did.clone());
        let worker = deployer.deploy(&spec(worker_env)).await.unwrap();
        let health = healthy(&http, &worker.endpoint_url, &keypair.did()).await;
        assert_eq!(health["message"], "Delibera worker running");
        assert_eq!(deployer.status(&worker.id).await.unwrap().status, "running");
        let identity = published(&memory, &keypair.did()).await;
        assert_eq!(
            identity.get("display_name").map(String::as_str),
            Some(format!("Worker {n}").as_str())
        );
        assert_eq!(
            identity.get("endpoint").map(String::as_str),
            Some(worker.endpoint_url.as_str())
        );
        registry
            .register_worker_as(
                &owner,
                &WorkerRegistration {
                    coordinator_did: coordinator_did.to_string(),
                    worker_did: keypair.did().to_string(),
                    endpoint_url: worker.endpoint_url.clone(),
                    cvm_id: worker.id.clone(),
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

    let proposal = until("the round to complete", || async {
        let (status, proposal) = get_json(&http, &format!("{base}/api/proposals/p-1")).await;
        (status == 200 && proposal["status"] == "completed").then_some(proposal)
    })
    .await;
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

    // The status endpoint keeps the round's `completed` once its task has finished.
    let status = until("the coordinator to settle", || async {
        let (_, status) = get_json(&http, &format!("{base}/api/coordinate/status")).await;
        (status["running"] == false).then_some(status)
    })
    .await;
    assert_eq!(
        [
            &status["status"],
            &status["proposalId"],
            &status["lastError"],
            &status["tally"]["decision"]
        ],
        [
            &json!("completed"),
            &json!("p-1"),
            &Value::Null,
            &json!("Rejected")
        ]
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
        deployer.teardown(&deployment.id).await.unwrap();
        assert!(deployer.status(&deployment.id).await.is_err());
        // Tearing down twice is fine.
        deployer.teardown(&deployment.id).await.unwrap();
    }
    assert!(
        http.get(base).send().await.is_err(),
        "the coordinator stopped listening"
    );
    within("the local Ensue to stop", ensue.stop())
        .await
        .unwrap();
}

/// A journal in memory, shared by the "before" and "after" deployers of a restart.
#[derive(Default)]
struct MemoryJournal(std::sync::Mutex<Vec<LocalDeploymentRecord>>);

#[async_trait::async_trait]
impl DeploymentJournal for MemoryJournal {
    async fn save(&self, record: &LocalDeploymentRecord) -> delibera_agent::Result<()> {
        let mut records = self.0.lock().unwrap();
        records.retain(|kept| kept.id != record.id);
        records.push(record.clone());
        Ok(())
    }
    async fn remove(&self, id: &str) -> delibera_agent::Result<()> {
        self.0.lock().unwrap().retain(|kept| kept.id != id);
        Ok(())
    }
    async fn load(&self) -> delibera_agent::Result<Vec<JournalEntry>> {
        Ok(self
            .records()
            .into_iter()
            .map(|record| JournalEntry::Record(Box::new(record)))
            .collect())
    }
}

impl MemoryJournal {
    fn records(&self) -> Vec<LocalDeploymentRecord> {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_deployer_brings_its_agents_back_on_the_same_endpoint() {
    let ensue = within(
        "the local Ensue to start",
        LocalEnsue::start(Config::default()),
    )
    .await
    .unwrap();
    let registry = local_registry();
    let journal = Arc::new(MemoryJournal::default());
    let http = http();
    let keypair = key(30);
    let mut worker_env = env(AgentRole::Worker, &keypair, "W", &ensue);
    worker_env.coordinator_did = Some(key(31).did());
    let worker_spec = spec(worker_env);

    let before = LocalDeployer::new(Arc::new(RegistryWorkers(registry.clone())))
        .with_journal(journal.clone());
    let deployment = before.deploy(&worker_spec).await.unwrap();
    healthy(&http, &deployment.endpoint_url, &keypair.did()).await;
    let remembered = journal.records();
    assert_eq!(remembered.len(), 1);
    assert_eq!(remembered[0].id, deployment.id);
    assert!(!format!("{remembered:?}").contains(ensue.api_key().expose()));

    // The process "dies": dropping the deployer stops its agents, the journal stays.
    drop(before);
    until("the agent to let go of its port", || async {
        std::net::TcpListener::bind(("127.0.0.1", remembered[0].port))
            .ok()
            .map(drop)
    })
    .await;

    let after =
        LocalDeployer::new(Arc::new(RegistryWorkers(registry))).with_journal(journal.clone());
    let report = after.restore(|_, _| true).await.unwrap();
    assert_eq!(report.restored, std::slice::from_ref(&deployment.id));
    healthy(&http, &deployment.endpoint_url, &keypair.did()).await;
    assert!(after.status(&deployment.id).await.unwrap().running);
    // The restored agent is found by its name, so a resumed job adopts it.
    assert_eq!(
        after.find(&worker_spec).await.unwrap(),
        Some(deployment.clone())
    );
    // Restoring twice starts nothing new.
    assert!(
        after
            .restore(|_, _| true)
            .await
            .unwrap()
            .restored
            .is_empty()
    );

    after.teardown(&deployment.id).await.unwrap();
    assert!(journal.records().is_empty());
    within("the local Ensue to stop", ensue.stop())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn deploying_the_same_name_twice_returns_the_first_deployment() {
    let ensue = within(
        "the local Ensue to start",
        LocalEnsue::start(Config::default()),
    )
    .await
    .unwrap();
    let deployer = LocalDeployer::new(Arc::new(RegistryWorkers(local_registry())));
    let mut worker_env = env(AgentRole::Worker, &key(40), "Twice", &ensue);
    worker_env.coordinator_did = Some(key(41).did());
    let spec = spec(worker_env);
    assert_eq!(deployer.find(&spec).await.unwrap(), None);
    let first = deployer.deploy(&spec).await.unwrap();
    let second = deployer.deploy(&spec).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(deployer.find(&spec).await.unwrap(), Some(first.clone()));
    deployer.teardown(&first.id).await.unwrap();
    assert_eq!(deployer.find(&spec).await.unwrap(), None);
    within("the local Ensue to stop", ensue.stop())
        .await
        .unwrap();
}

/// A journal whose saves wait until it is opened, as a store that refuses
/// writes for a while makes them wait.
#[derive(Default)]
struct HeldJournal {
    open: std::sync::atomic::AtomicBool,
    kept: MemoryJournal,
}

#[async_trait::async_trait]
impl DeploymentJournal for HeldJournal {
    async fn save(&self, record: &LocalDeploymentRecord) -> delibera_agent::Result<()> {
        while !self.open.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.kept.save(record).await
    }
    async fn remove(&self, id: &str) -> delibera_agent::Result<()> {
        self.kept.remove(id).await
    }
    async fn load(&self) -> delibera_agent::Result<Vec<JournalEntry>> {
        self.kept.load().await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_dropped_while_its_journal_waited_is_journaled_by_the_next() {
    let ensue = within(
        "the local Ensue to start",
        LocalEnsue::start(Config::default()),
    )
    .await
    .unwrap();
    let journal = Arc::new(HeldJournal::default());
    let deployer = LocalDeployer::new(Arc::new(RegistryWorkers(local_registry())))
        .with_journal(journal.clone());
    let mut worker_env = env(AgentRole::Worker, &key(42), "Held", &ensue);
    worker_env.coordinator_did = Some(key(43).did());
    let spec = spec(worker_env);

    // The job's driver gives up on the deploy (its lease is lost, the
    // server stops) while the journal still waits: the agent runs unjournaled.
    let given_up = tokio::time::timeout(Duration::from_millis(200), deployer.deploy(&spec)).await;
    assert!(given_up.is_err(), "the save was still waiting");
    let running = deployer.find(&spec).await.unwrap().expect("the agent runs");
    assert!(journal.kept.records().is_empty());

    // The job carried on deploys again: the same agent, now journaled.
    journal
        .open
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let adopted = deployer.deploy(&spec).await.unwrap();
    assert_eq!(adopted, running);
    let records = journal.kept.records();
    assert_eq!(
        records
            .iter()
            .map(|record| record.id.as_str())
            .collect::<Vec<_>>(),
        [running.id.as_str()]
    );
    assert!(
        running
            .endpoint_url
            .ends_with(&format!(":{}", records[0].port))
    );

    deployer.teardown(&running.id).await.unwrap();
    assert!(journal.kept.records().is_empty());
    within("the local Ensue to stop", ensue.stop())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_publishes_its_endpoint_only_from_its_public_url() {
    let ensue = within(
        "the local Ensue to start",
        LocalEnsue::start(Config::default()),
    )
    .await
    .unwrap();
    let memory = memory(&ensue);
    let http = http();
    for (n, public_url) in [(50u8, None), (51, Some("https://agent-51.example/"))] {
        let keypair = key(n);
        let mut agent_env = env(AgentRole::Worker, &keypair, "Pub", &ensue);
        agent_env.public_url = public_url.map(|url| url.parse().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(Agent::new(agent_env).unwrap().serve(listener, async {
            let _ = stopped.await;
        }));
        healthy(&http, &url, &keypair.did()).await;
        // The identity is published beside serving: wait for what is expected.
        let mut expected = vec![format!("agent/{}/display_name", keypair.did())];
        if public_url.is_some() {
            expected.push(format!("agent/{}/endpoint", keypair.did()));
        }
        tokio::time::timeout(Duration::from_secs(20), async {
            while memory.get_many(&expected).await.unwrap().len() < expected.len() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the agent published its identity");
        let endpoint = memory
            .get(&format!("agent/{}/endpoint", keypair.did()))
            .await
            .unwrap();
        // Never the bound loopback address: only what the env says.
        assert_eq!(
            endpoint.as_deref(),
            public_url.map(|url| url.trim_end_matches('/'))
        );
        assert_eq!(
            memory
                .get(&format!("agent/{}/display_name", keypair.did()))
                .await
                .unwrap()
                .as_deref(),
            Some("Pub")
        );
        stop.send(()).unwrap();
        within("the agent to stop", served).await.unwrap().unwrap();
    }
    within("the local Ensue to stop", ensue.stop())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_coordinator_that_cannot_find_its_workers_refuses_to_start() {
    let ensue = within(
        "the local Ensue to start",
        LocalEnsue::start(Config::default()),
    )
    .await
    .unwrap();
    let agent = Agent::new(env(AgentRole::Coordinator, &key(60), "C", &ensue)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = within(
        "the refusal to start",
        agent.serve(listener, std::future::pending()),
    )
    .await
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("NEAR_RPC_URL") && text.contains("DELIBERA_WORKERS"),
        "{text}"
    );

    // With the registry named in its env it builds its own directory.
    let mut configured = env(AgentRole::Coordinator, &key(60), "C", &ensue);
    configured.near_rpc_urls = vec!["https://rpc.testnet.near.org".parse().unwrap()];
    configured.registry_contract = Some("registry.agents-coordinator.testnet".parse().unwrap());
    let agent = Agent::new(configured).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(agent.serve(listener, async {
        let _ = stopped.await;
    }));
    healthy(&http(), &url, &key(60).did()).await;
    stop.send(()).unwrap();
    within("the agent to stop", served).await.unwrap().unwrap();
    within("the local Ensue to stop", ensue.stop())
        .await
        .unwrap();
}

#[test]
fn a_round_deadline_beyond_a_week_is_refused_naming_the_variable() {
    let mut agent_env = AgentEnv::new(
        AgentRole::Coordinator,
        AgentIdentity::from_keypair(&key(70)),
        "C",
        "lmn_k",
    );
    agent_env.round_deadline = Duration::from_secs(8 * 24 * 3600);
    let error = Agent::new(agent_env).unwrap_err();
    assert!(
        error.to_string().starts_with("ROUND_DEADLINE_SECS"),
        "{error}"
    );
}

#[test]
fn journal_records_of_the_first_release_are_still_read() {
    let keypair = key(80);
    let legacy = json!({
        "cvm_id": "local-0123456789abcdef",
        "port": 40123,
        "role": "worker",
        "env": [
            {"key": "AGENT_ROLE", "value": "worker"},
            {"key": "AGENT_DID", "value": keypair.did().as_str()},
            {"key": "STORACHA_AGENT_PRIVATE_KEY", "value": keypair.to_ucanto_string().to_string()},
            {"key": "ENSUE_URL", "value": "http://127.0.0.1:3006/"},
            {"key": "ENSUE_API_KEY", "value": "lmn_old"},
            {"key": "AGENT_DISPLAY_NAME", "value": "Old Worker"},
            {"key": "NEAR_ACCOUNT_ID", "value": "alice.testnet"},
        ],
    });
    let record: LocalDeploymentRecord = serde_json::from_value(legacy).unwrap();
    assert_eq!(record.id, "local-0123456789abcdef");
    assert_eq!(record.port, 40123);
    assert_eq!(record.spec.env.did(), &keypair.did());
    assert_eq!(record.spec.env.display_name, "Old Worker");
    // And the current form round-trips.
    let again: LocalDeploymentRecord =
        serde_json::from_value(serde_json::to_value(&record).unwrap()).unwrap();
    assert_eq!(again.spec, record.spec);
}

/// A journal holding whatever entries a test plants, unreadable ones included;
/// with `refuse_removals`, every removal fails (a full disk).
#[derive(Default)]
struct PlantedJournal(
    std::sync::Mutex<Vec<JournalEntry>>,
    std::sync::atomic::AtomicBool,
);

impl PlantedJournal {
    fn refuse_removals(&self, refuse: bool) {
        self.1.store(refuse, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl DeploymentJournal for PlantedJournal {
    async fn save(&self, record: &LocalDeploymentRecord) -> delibera_agent::Result<()> {
        self.0
            .lock()
            .unwrap()
            .push(JournalEntry::Record(Box::new(record.clone())));
        Ok(())
    }
    async fn remove(&self, id: &str) -> delibera_agent::Result<()> {
        if self.1.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(delibera_agent::Error::Journal {
                reason: "the disk is full".into(),
            });
        }
        self.0.lock().unwrap().retain(|entry| entry.id() != id);
        Ok(())
    }
    async fn load(&self) -> delibera_agent::Result<Vec<JournalEntry>> {
        Ok(self.0.lock().unwrap().clone())
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_starts_owned_agents_removes_orphans_and_reports_the_lost() {
    let ensue = LocalEnsue::start(Config::default()).await.unwrap();
    let http = reqwest::Client::new();
    let record = |n: u8, port: u16| {
        let mut worker_env = env(AgentRole::Worker, &key(n), &format!("W{n}"), &ensue);
        worker_env.coordinator_did = Some(key(99).did());
        LocalDeploymentRecord {
            id: format!("local-{n}"),
            port,
            spec: spec(worker_env),
        }
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let owned = record(90, free_port());
    let port_taken = record(91, taken.local_addr().unwrap().port());
    let orphan = record(92, free_port());
    let journal = Arc::new(PlantedJournal::default());
    for planted in [&owned, &port_taken, &orphan] {
        journal.save(planted).await.unwrap();
    }
    for id in ["local-damaged-owned", "local-damaged-orphan"] {
        journal.0.lock().unwrap().push(JournalEntry::Unreadable {
            id: id.to_owned(),
            reason: "bad seal".to_owned(),
        });
    }

    let deployer = LocalDeployer::new(Arc::new(RegistryWorkers(local_registry())))
        .with_journal(journal.clone());
    let report = deployer
        .restore(|id, _| id != "local-92" && id != "local-damaged-orphan")
        .await
        .unwrap();

    assert_eq!(report.restored, ["local-90"]);
    assert_eq!(report.removed, ["local-92", "local-damaged-orphan"]);
    let lost: Vec<(&str, Option<&DeploymentName>)> = report
        .lost
        .iter()
        .map(|lost| (lost.id.as_str(), lost.name.as_ref()))
        .collect();
    assert_eq!(
        lost,
        [
            ("local-91", Some(&port_taken.spec.name)),
            ("local-damaged-owned", None)
        ]
    );
    assert!(
        report.lost[0].reason.contains("cannot be bound"),
        "{report:?}"
    );
    assert!(
        report.lost[1].reason.contains("cannot be read"),
        "{report:?}"
    );
    // The orphans are gone from the journal and never ran; the lost stay
    // journaled for their owner to decide.
    let kept: Vec<String> = journal
        .load()
        .await
        .unwrap()
        .iter()
        .map(|entry| entry.id().to_owned())
        .collect();
    assert_eq!(kept, ["local-90", "local-91", "local-damaged-owned"]);
    assert!(
        http.get(format!("http://127.0.0.1:{}/", orphan.port))
            .send()
            .await
            .is_err(),
        "the orphan was not started"
    );
    healthy(
        &http,
        &format!("http://127.0.0.1:{}", owned.port),
        &key(90).did(),
    )
    .await;
    deployer.teardown("local-90").await.unwrap();
    drop(taken);
    ensue.stop().await.unwrap();
}

/// A listener that accepts connections and never answers: an Ensue that hangs.
async fn hanging_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_answers_its_health_check_while_ensue_hangs() {
    let (hanging_url, hanging) = hanging_server().await;
    let keypair = key(95);
    let mut agent_env = AgentEnv::new(
        AgentRole::Worker,
        AgentIdentity::from_keypair(&keypair),
        "Early",
        "lmn_unused",
    );
    agent_env.ensue_url = hanging_url.parse().unwrap();
    agent_env.public_url = Some("https://early.example/".parse().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = tokio::spawn(
        Agent::new(agent_env)
            .unwrap()
            .serve(listener, std::future::pending()),
    );
    // Publishing its identity would block for a minute (4 attempts of 15 s);
    // the health check does not wait for it.
    healthy(&reqwest::Client::new(), &url, &keypair.did()).await;
    // Its worker loop is stuck on the hanging Ensue too; no graceful stop.
    served.abort();
    hanging.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_publishes_its_identity_once_ensue_comes_up() {
    let port = free_port();
    let bootstrap = delibera_ensue_local::ApiKey::new("lmn_late_ensue_key").unwrap();
    let keypair = key(96);
    let mut agent_env = AgentEnv::new(
        AgentRole::Worker,
        AgentIdentity::from_keypair(&keypair),
        "Late",
        bootstrap.expose(),
    );
    agent_env.ensue_url = format!("http://127.0.0.1:{port}/").parse().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(Agent::new(agent_env).unwrap().serve(listener, async {
        let _ = stopped.await;
    }));
    healthy(&reqwest::Client::new(), &url, &keypair.did()).await;

    let ensue = LocalEnsue::start(
        Config::default()
            .with_addr(([127, 0, 0, 1], port).into())
            .with_bootstrap_key(bootstrap),
    )
    .await
    .unwrap();
    let memory = memory(&ensue);
    let name_key = format!("agent/{}/display_name", keypair.did());
    tokio::time::timeout(Duration::from_secs(30), async {
        while memory.get(&name_key).await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the agent published its name once Ensue answered");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    ensue.stop().await.unwrap();
}

/// Waits until the server closes `stream`, discarding what it sends first.
async fn closed_by_server(stream: &mut (impl tokio::io::AsyncRead + Unpin)) {
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = [0u8; 1024];
        while let Ok(read) = stream.read(&mut chunk).await {
            if read == 0 {
                return;
            }
        }
    })
    .await
    .expect("the agent closed the connection");
}

#[tokio::test]
async fn an_agent_closes_a_client_trickling_its_head_and_keeps_answering() {
    use tokio::io::AsyncWriteExt;
    let ensue = LocalEnsue::start(Config::default()).await.unwrap();
    let keypair = key(80);
    let header_timeout = Duration::from_millis(400);
    let agent = Agent::new(env(AgentRole::Worker, &keypair, "Edge", &ensue))
        .unwrap()
        .with_memory(memory(&ensue))
        .with_edges(delibera_agent::Edges::default().with_header_read_timeout(header_timeout));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(agent.serve(listener, async {
        let _ = stopped.await;
    }));

    let (mut reader, mut writer) = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap()
        .into_split();
    let started = tokio::time::Instant::now();
    let slowloris = tokio::spawn(async move {
        if writer
            .write_all(b"GET / HTTP/1.1\r\nx-slow: ")
            .await
            .is_err()
        {
            return;
        }
        while writer.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    closed_by_server(&mut reader).await;
    assert!(started.elapsed() >= header_timeout);
    slowloris.abort();
    healthy(
        &reqwest::Client::new(),
        &format!("http://{addr}"),
        &keypair.did(),
    )
    .await;

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    ensue.stop().await.unwrap();
}

/// An orphan that cannot be removed from the journal is reported and left
/// unstarted; the owned agents come back regardless.
#[tokio::test(flavor = "multi_thread")]
async fn an_orphan_that_cannot_be_forgotten_does_not_stop_the_restore() {
    let ensue = LocalEnsue::start(Config::default()).await.unwrap();
    let http = reqwest::Client::new();
    let record = |n: u8| {
        let mut worker_env = env(AgentRole::Worker, &key(n), &format!("W{n}"), &ensue);
        worker_env.coordinator_did = Some(key(99).did());
        LocalDeploymentRecord {
            id: format!("local-{n}"),
            port: free_port(),
            spec: spec(worker_env),
        }
    };
    let (orphan, owned) = (record(80), record(81));
    let journal = Arc::new(PlantedJournal::default());
    for planted in [&orphan, &owned] {
        journal.save(planted).await.unwrap();
    }
    journal.refuse_removals(true);

    let deployer = LocalDeployer::new(Arc::new(RegistryWorkers(local_registry())))
        .with_journal(journal.clone());
    let report = deployer.restore(|id, _| id == "local-81").await.unwrap();

    assert_eq!(report.restored, ["local-81"]);
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(
        report.not_removed,
        [(
            "local-80".to_owned(),
            "local deployment journal: the disk is full".to_owned()
        )]
    );
    assert!(
        http.get(format!("http://127.0.0.1:{}/", orphan.port))
            .send()
            .await
            .is_err(),
        "the orphan was not started"
    );
    healthy(
        &http,
        &format!("http://127.0.0.1:{}", owned.port),
        &key(81).did(),
    )
    .await;
    journal.refuse_removals(false);
    deployer.teardown("local-81").await.unwrap();
    ensue.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_set_to_the_reference_documents_answers_in_the_typescript_shape() {
    let ensue = within(
        "the local Ensue to start",
        LocalEnsue::start(Config::default()),
    )
    .await
    .unwrap();
    let memory = memory(&ensue);
    let keypair = key(60);
    let did = keypair.did();
    // Configured as an operator would: through the env contract's variable.
    let mut vars = env(AgentRole::Worker, &keypair, "Mixed", &ensue).to_vars();
    vars.push(delibera_deploy::EnvVar::new(
        delibera_agent::vars::DOCUMENTS,
        "reference",
    ));
    let agent_env = AgentEnv::try_from(vars.as_slice()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(Agent::new(agent_env).unwrap().serve(listener, async {
        let _ = stopped.await;
    }));
    healthy(&http(), &url, &did).await;

    // A task of this implementation's own family: the setting alone picks the answer's shape.
    let task = json!({
        "proposalId": "5", "roundId": "round-5", "title": "Fund the indexer",
        "description": "", "parameters": {}, "voting": {},
        "deadline": "2999-01-01T00:00:00Z",
    });
    memory
        .upsert("coordination/config/task_definition", &task.to_string())
        .await
        .unwrap();
    memory
        .upsert(&format!("coordination/tasks/{did}/status"), "pending")
        .await
        .unwrap();
    let result_key = format!("coordination/tasks/{did}/result");
    let result: Value = until("the worker's result", || async {
        memory
            .get(&result_key)
            .await
            .unwrap()
            .map(|text| serde_json::from_str(&text).unwrap())
    })
    .await;
    assert_eq!(result["workerId"], did.as_str());
    assert_eq!(result["taskType"], "vote");
    assert_eq!(result["roundId"], "round-5");
    assert!(result["output"]["vote"].is_string(), "{result}");
    stop.send(()).unwrap();
    within("the agent to stop", served).await.unwrap().unwrap();
    ensue.stop().await.unwrap();
}
