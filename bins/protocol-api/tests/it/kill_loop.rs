//! `kill -9` of the real binary in local mode: at random instants across
//! every provisioning step, and with an agent that cannot come back.
//!
//! [`run`] is shared with `benches/kill_loop.rs`, which runs it for hundreds
//! of kills and checks that they landed in every step; the test here runs
//! it for 40 (a few seconds) and prints where they landed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use delibera_agent::{DeploymentJournal, JournalEntry};
use protocol_api::jobs::JobStatus;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::process::{ServerProcess, client};

/// How long a kill loop runs, and how many jobs it provisions.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// SIGKILLs of the server.
    pub kills: usize,
    /// Coordinator jobs.
    pub coordinators: usize,
    /// Worker jobs (for the coordinators once registered).
    pub workers: usize,
}

/// What the status route shows once a job reveals it, which no restart may change.
const STABLE_FIELDS: [&str; 8] = [
    "storachaPrivateKey",
    "storachaDelegation",
    "ensueApiKey",
    "ensueClaimUrl",
    "ensueVerificationCode",
    "ensueOrgName",
    "cvmId",
    "phalaEndpoint",
];

/// A job as the client (the frontend) knows it.
#[derive(Clone)]
struct Tracked {
    path: &'static str,
    body: Value,
    idempotency_key: String,
    id: Option<String>,
    status: String,
    agent_did: Option<String>,
    revealed: Option<BTreeMap<&'static str, Value>>,
}

impl Tracked {
    fn new(path: &'static str, body: Value) -> Self {
        Self {
            path,
            body,
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            id: None,
            status: "unknown".into(),
            agent_did: None,
            revealed: None,
        }
    }

    fn is_coordinator(&self) -> bool {
        self.path.ends_with("/coordinator")
    }
}

/// What the client does before a kill.
enum Action {
    Provision(usize),
    Register(usize),
    Nothing,
}

/// Why a POST gave no job id.
#[derive(Debug)]
enum PostFailure {
    /// No complete answer: the kill cut the request off.
    Cut(String),
    /// The server answered, but not with 202: always a bug.
    Refused(u16, Value),
}

impl std::fmt::Display for PostFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostFailure::Cut(reason) => write!(f, "no answer: {reason}"),
            PostFailure::Refused(code, body) => write!(f, "answered {code} {body}"),
        }
    }
}

/// Sends the job's POST (again): with its idempotency key, a retry after a
/// kill gets the job the first attempt made, if the server stored it.
async fn post_job(http: &reqwest::Client, api: &str, job: &Tracked) -> Result<String, PostFailure> {
    let cut = |error: reqwest::Error| PostFailure::Cut(error.to_string());
    let response = http
        .post(format!("{api}{}", job.path))
        .header("idempotency-key", &job.idempotency_key)
        .json(&job.body)
        .send()
        .await
        .map_err(cut)?;
    let code = response.status().as_u16();
    let body: Value = response.json().await.map_err(cut)?;
    match body["jobId"].as_str() {
        Some(id) if code == 202 => Ok(id.to_owned()),
        _ => Err(PostFailure::Refused(code, body)),
    }
}

async fn register(http: &reqwest::Client, api: &str, job: &Tracked) {
    let (path, body) = if job.is_coordinator() {
        ("coordinator-register", json!({ "jobId": job.id }))
    } else {
        ("register", json!({ "jobId": job.id, "txHash": "KILLED" }))
    };
    // Any answer will do: a kill may cut it off, and the status tells the rest.
    let _ = http
        .post(format!("{api}/api/provision/{path}"))
        .json(&body)
        .send()
        .await;
}

/// After a (re)start: learns the ids of POSTs a kill cut off, reads every
/// job's status, and checks that nothing it revealed has changed.
async fn reconcile(http: &reqwest::Client, server: &ServerProcess, jobs: &mut [Tracked]) {
    for job in jobs.iter_mut() {
        if job.id.is_none() {
            job.id = Some(
                post_job(http, &server.api, job)
                    .await
                    .unwrap_or_else(|error| {
                        panic!(
                            "the POST failed on a running server: {error}\n{}",
                            server.log_tail()
                        )
                    }),
            );
        }
        let id = job.id.as_deref().unwrap();
        let status: Value = http
            .get(format!("{}/api/provision/status/{id}", server.api))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        job.status = status["status"].as_str().unwrap().to_owned();
        assert_ne!(
            job.status,
            "failed",
            "a job failed: {status}\n{}",
            server.log_tail()
        );
        // Both roles' DID is `workerDid`, as frontends read it.
        job.agent_did = status["workerDid"].as_str().map(str::to_owned);
        if matches!(job.status.as_str(), "awaiting_near_signature" | "complete") {
            let shown: BTreeMap<&'static str, Value> = STABLE_FIELDS
                .iter()
                .filter(|field| job.is_coordinator() || !field.starts_with("ensue"))
                .map(|field| (*field, status[*field].clone()))
                .collect();
            assert!(shown.values().all(|value| value.is_string()), "{status}");
            match &job.revealed {
                None => job.revealed = Some(shown),
                Some(first) => assert_eq!(first, &shown, "a revealed value changed: {id}"),
            }
        }
    }
}

fn choose(jobs: &mut Vec<Tracked>, plan: Plan, rng: &mut StdRng) -> Action {
    let coordinators = jobs.iter().filter(|job| job.is_coordinator()).count();
    let workers = jobs.len() - coordinators;
    let registered: Vec<String> = jobs
        .iter()
        .filter(|job| job.is_coordinator() && job.status == "complete")
        .filter_map(|job| job.agent_did.clone())
        .collect();
    let awaiting: Vec<usize> = (0..jobs.len())
        .filter(|&index| jobs[index].status == "awaiting_near_signature")
        .collect();
    let n = jobs.len() + 1;
    if !awaiting.is_empty() && rng.gen_bool(0.5) {
        return Action::Register(awaiting[rng.gen_range(0..awaiting.len())]);
    }
    if workers < plan.workers && !registered.is_empty() && rng.gen_bool(0.6) {
        let coordinator = &registered[rng.gen_range(0..registered.len())];
        jobs.push(Tracked::new(
            "/api/provision/worker",
            json!({ "coordinatorDid": coordinator, "displayName": format!("Kill Worker {n}"), "nearAccount": "alice.testnet" }),
        ));
        return Action::Provision(jobs.len() - 1);
    }
    if coordinators < plan.coordinators {
        jobs.push(Tracked::new(
            "/api/provision/coordinator",
            json!({ "displayName": format!("Kill DAO {n}"), "nearAccount": "mydao.testnet", "minWorkers": 1, "maxWorkers": 5 }),
        ));
        return Action::Provision(jobs.len() - 1);
    }
    match awaiting.first() {
        Some(&index) => Action::Register(index),
        None => Action::Nothing,
    }
}

/// Every job's status in the database of a killed server: where the kill
/// found each job in flight.
async fn statuses_at_kill(server: &ServerProcess) -> Vec<JobStatus> {
    server
        .database()
        .jobs()
        .in_status(JobStatus::ALL.to_vec())
        .await
        .unwrap()
        .into_iter()
        .map(|job| job.status)
        .filter(|status| !status.is_terminal() && *status != JobStatus::AwaitingNearSignature)
        .collect()
}

/// Provisions and registers `plan`'s jobs while SIGKILLing the server
/// `plan.kills` times at random instants, then lets every job finish, and
/// checks: no job failed, no revealed value changed across restarts, no job
/// exists that the client does not hold (idempotency keys), every journaled
/// agent belongs to a job and answers, and every Ensue org belongs to a job.
/// Returns how many kills found a job in each in-flight status.
pub async fn run(plan: Plan) -> BTreeMap<&'static str, usize> {
    let seed: u64 = rand::random();
    println!("kill loop seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::new(&dir.path().join("data"));
    server.start().await;
    let http = client();
    let mut jobs: Vec<Tracked> = Vec::new();
    let mut hit: BTreeMap<&'static str, usize> = BTreeMap::new();

    for _ in 0..plan.kills {
        reconcile(&http, &server, &mut jobs).await;
        // The action runs while the kill comes, at a random instant: inside
        // the request, inside a step it started, or inside a resumed one.
        // Local steps take about a millisecond each, hence short windows
        // drawn to the microsecond: a provisioning POST's steps all run
        // within a few milliseconds of its answer.
        let (action, window_us) = match choose(&mut jobs, plan, &mut rng) {
            Action::Provision(index) => {
                let (http, api, job) = (http.clone(), server.api.clone(), jobs[index].clone());
                let task = tokio::spawn(async move {
                    // A kill may cut the request off; a wrong answer is a bug,
                    // reported by the loop (a panic here would be swallowed).
                    match post_job(&http, &api, &job).await {
                        Err(refused @ PostFailure::Refused(..)) => Some(refused.to_string()),
                        _ => None,
                    }
                });
                (task, 12_000)
            }
            Action::Register(index) => {
                let (http, api, job) = (http.clone(), server.api.clone(), jobs[index].clone());
                (
                    tokio::spawn(async move {
                        register(&http, &api, &job).await;
                        None
                    }),
                    60_000,
                )
            }
            Action::Nothing => (tokio::spawn(async { None }), 200_000),
        };
        tokio::time::sleep(Duration::from_micros(rng.gen_range(0..window_us))).await;
        server.kill();
        if let Some(answer) = action.await.expect("the client's action does not panic") {
            panic!("a provisioning POST was {answer}");
        }
        for status in statuses_at_kill(&server).await {
            *hit.entry(status.as_str()).or_default() += 1;
        }
        server.start().await;
    }
    println!("kills found jobs at: {hit:?}");

    // The last run: every job goes on to `complete`.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        reconcile(&http, &server, &mut jobs).await;
        if jobs.iter().all(|job| job.status == "complete") {
            break;
        }
        for job in jobs
            .iter()
            .filter(|job| job.status == "awaiting_near_signature")
        {
            register(&http, &server.api, job).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs never completed: {:?}",
            jobs.iter().map(|job| &job.status).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every agent answers, as itself.
    for job in &jobs {
        let revealed = job.revealed.as_ref().unwrap();
        let health: Value = http
            .get(format!("{}/", revealed["phalaEndpoint"].as_str().unwrap()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["did"], job.agent_did.as_deref().unwrap(), "{health}");
    }
    server.kill();

    // No ghost job, no orphan agent, no leaked org.
    let database = server.database();
    let stored = database
        .jobs()
        .in_status(JobStatus::ALL.to_vec())
        .await
        .unwrap();
    assert_eq!(stored.len(), jobs.len(), "a job nobody holds the id of");
    assert!(stored.iter().all(|job| job.status == JobStatus::Complete));
    let deployments: BTreeSet<String> =
        stored.iter().filter_map(|job| job.cvm_id.clone()).collect();
    assert_eq!(deployments.len(), jobs.len(), "one deployment per job");
    let journal: BTreeSet<String> = database
        .deployments()
        .load()
        .await
        .unwrap()
        .iter()
        .map(|entry| {
            assert!(matches!(entry, JournalEntry::Record(_)), "{entry:?}");
            entry.id().to_owned()
        })
        .collect();
    assert_eq!(
        journal, deployments,
        "journaled agents are exactly the jobs' agents"
    );
    let mut orgs: BTreeSet<String> = stored
        .iter()
        .filter_map(|job| job.ensue_org_name.clone())
        .collect();
    assert_eq!(orgs.len(), plan.coordinators);
    orgs.insert(delibera_ensue_local::BOOTSTRAP_ORG.to_owned());
    let in_ensue: BTreeSet<String> = server
        .ensue_store()
        .org_names()
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(in_ensue, orgs, "every org in Ensue belongs to a job");
    hit
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_minus_nine_at_random_instants_fails_no_job_and_leaks_nothing() {
    let hit = run(Plan {
        kills: 40,
        coordinators: 4,
        workers: 8,
    })
    .await;
    assert!(!hit.is_empty(), "no kill found a job in flight");
}

/// After a kill, another program takes a local agent's port: the agent
/// cannot come back, its job fails saying why, and the default log filter
/// shows the warning.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_cannot_come_back_fails_its_job_with_a_visible_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::new(&dir.path().join("data"));
    server.start().await;
    let http = client();
    let mut job = Tracked::new(
        "/api/provision/coordinator",
        json!({ "displayName": "Evicted DAO", "nearAccount": "mydao.testnet" }),
    );
    let id = post_job(&http, &server.api, &job).await.unwrap();
    job.id = Some(id.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while job.status != "awaiting_near_signature" {
        reconcile(&http, &server, std::slice::from_mut(&mut job)).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck at {}",
            job.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let endpoint = job.revealed.as_ref().unwrap()["phalaEndpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    server.kill();

    let squatter = std::net::TcpListener::bind(endpoint.trim_start_matches("http://")).unwrap();
    server.start().await;
    let status: Value = http
        .get(format!("{}/api/provision/status/{id}", server.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "failed", "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("could not be started again") && error.contains("cannot be bound"),
        "{error}"
    );
    let log = server.log();
    assert!(
        log.lines().any(|line| line.contains("WARN")
            && line.contains("protocol_api")
            && line.contains("the job fails")),
        "no warning at the default filter:\n{}",
        server.log_tail()
    );
    server.kill();
    assert!(
        server
            .database()
            .deployments()
            .load()
            .await
            .unwrap()
            .is_empty(),
        "the lost agent was torn down"
    );
    drop(squatter);
}
