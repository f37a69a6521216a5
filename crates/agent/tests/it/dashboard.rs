//! The web dashboards' calls, replayed as the frontend sends them against a
//! coordinator and workers running a round on the embedded Ensue; CORS from
//! a browser origin; bad input to the dashboard routes.

use std::sync::Arc;

use delibera_agent::{Agent, CorsPolicy, LocalDeployer, RegistryWorkers};
use delibera_deploy::{AgentRole, Deployer};
use delibera_ensue_local::{Config, LocalEnsue};
use delibera_identity::Did;
use delibera_near::{AccountId, CoordinatorRegistration, WorkerRegistration};
use serde_json::{Value, json};

use crate::runtime::{
    env, get_json, healthy, http, key, local_registry, memory, spec, until, within,
};

/// Where the frontend is served from: another origin than any agent's.
const FRONTEND: &str = "http://localhost:3000";

/// A GET as the browser sends it (with `Origin`): the status, the body, and
/// the `Access-Control-Allow-Origin` the browser checks before letting the
/// page read the body.
async fn browser_get(http: &reqwest::Client, url: &str) -> (u16, Value, Option<String>) {
    let response = http
        .get(url)
        .header("Origin", FRONTEND)
        .send()
        .await
        .unwrap();
    let allowed = allowed_origin(&response);
    (
        response.status().as_u16(),
        response.json().await.unwrap(),
        allowed,
    )
}

async fn browser_post(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
) -> (u16, Value, Option<String>) {
    let response = http
        .post(url)
        .header("Origin", FRONTEND)
        .json(body)
        .send()
        .await
        .unwrap();
    let allowed = allowed_origin(&response);
    (
        response.status().as_u16(),
        response.json().await.unwrap(),
        allowed,
    )
}

fn allowed_origin(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("access-control-allow-origin")
        .map(|value| value.to_str().unwrap().to_owned())
}

fn is_iso_time(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|text| chrono::DateTime::parse_from_rfc3339(text).is_ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_call_is_answered_by_a_coordinator_and_workers_running_a_round() {
    let ensue = within(
        "the local Ensue to start",
        LocalEnsue::start(Config::default()),
    )
    .await
    .unwrap();
    let owner: AccountId = "alice.testnet".parse().unwrap();
    let registry = local_registry();
    let deployer = LocalDeployer::new(Arc::new(RegistryWorkers(registry.clone())));
    let http = http();

    let coordinator_key = key(60);
    let coordinator_did = coordinator_key.did();
    let mut coordinator_env = env(AgentRole::Coordinator, &coordinator_key, "Coord", &ensue);
    coordinator_env.coordinator_contract = Some("mydao.coord-factory.testnet".parse().unwrap());
    let coordinator = deployer.deploy(&spec(coordinator_env)).await.unwrap();
    healthy(&http, &coordinator.endpoint_url, &coordinator_did).await;
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
    let mut workers = Vec::new();
    for n in [61u8, 62] {
        let keypair = key(n);
        let mut worker_env = env(AgentRole::Worker, &keypair, &format!("Worker {n}"), &ensue);
        worker_env.coordinator_did = Some(coordinator_did.clone());
        let worker = deployer.deploy(&spec(worker_env)).await.unwrap();
        healthy(&http, &worker.endpoint_url, &keypair.did()).await;
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
        workers.push((keypair.did(), worker));
    }
    let base = coordinator.endpoint_url.clone();
    let (first_did, first) = &workers[0];
    let worker_base = first.endpoint_url.clone();

    // C GET `/`: online, and the contract the dashboard reads NEAR views from.
    let (code, root, allowed) = browser_get(&http, &format!("{base}/")).await;
    assert_eq!((code, allowed.as_deref()), (200, Some("*")));
    assert_eq!(root["contractId"], "mydao.coord-factory.testnet");
    assert_eq!(
        (&root["status"], &root["mode"]),
        (&json!("healthy"), &json!("local"))
    );
    assert!(is_iso_time(&root["timestamp"]), "{root}");

    // C GET /api/coordinate/status before any round.
    let (code, status, allowed) =
        browser_get(&http, &format!("{base}/api/coordinate/status")).await;
    assert_eq!((code, allowed.as_deref()), (200, Some("*")));
    assert_eq!(
        (&status["status"], &status["proposalId"], &status["tally"]),
        (&json!("idle"), &Value::Null, &Value::Null)
    );

    // C GET /api/coordinate/workers: the registry's workers with their published names.
    let roster = until("both workers listed with their names", || async {
        let (_, roster, _) = browser_get(&http, &format!("{base}/api/coordinate/workers")).await;
        let named = roster["workers"].as_array().is_some_and(|workers| {
            workers.len() == 2
                && workers
                    .iter()
                    .all(|w| w["display_name"].as_str().unwrap().starts_with("Worker "))
        });
        named.then_some(roster)
    })
    .await;
    assert_eq!(roster["source"], "registry");
    assert!(is_iso_time(&roster["timestamp"]));
    for listed in roster["workers"].as_array().unwrap() {
        let (did, deployment) = workers
            .iter()
            .find(|(did, _)| listed["did"] == did.as_str())
            .expect("a registered worker");
        assert_eq!(
            listed["display_name"],
            format!("Worker {}", if did == first_did { 61 } else { 62 })
        );
        assert_eq!(listed["endpoint_url"], deployment.endpoint_url.as_str());
        assert_eq!(listed["is_active"], true);
        assert!(
            listed["registered_at"]
                .as_u64()
                .is_some_and(|ms| ms > 1_600_000_000_000),
            "{listed}"
        );
        let status = listed["ensue_status"].as_str().unwrap();
        assert!(
            ["idle", "pending", "processing", "completed"].contains(&status),
            "{status}"
        );
    }

    // C GET /api/coordinate/proposals: nothing archived yet.
    let (code, history, _) = browser_get(&http, &format!("{base}/api/coordinate/proposals")).await;
    assert_eq!((code, history), (200, json!({"proposals": [], "total": 0})));

    // W GET /api/task/health and the defaults of its identity.
    let (code, health, allowed) =
        browser_get(&http, &format!("{worker_base}/api/task/health")).await;
    assert_eq!((code, allowed.as_deref()), (200, Some("*")));
    assert_eq!(
        (&health["healthy"], &health["worker"]),
        (&json!(true), &json!(first_did))
    );
    let (code, identity, _) =
        browser_get(&http, &format!("{worker_base}/api/knowledge/identity")).await;
    assert_eq!(code, 200);
    assert_eq!(
        (
            &identity["manifesto"]["name"],
            &identity["manifesto"]["role"],
            &identity["manifesto"]["values"]
        ),
        (&json!("Worker 61"), &json!("worker"), &json!([]))
    );
    assert_eq!(identity["preferences"]["votingWeights"], json!({}));
    assert_eq!(identity["preferences"]["knowledgeNotes"], json!([]));
    assert_eq!(identity["recentDecisions"], json!([]));
    assert_eq!(
        identity["storacha"],
        json!({"configured": false, "agentDid": first_did, "spaceDid": null})
    );

    // W POST /api/knowledge/feed and /manifesto with the frontend's bodies.
    let (code, fed, _) = browser_post(
        &http,
        &format!("{worker_base}/api/knowledge/feed"),
        &json!({"notes": ["Prefer audited teams", "Hosting costs about 800 USDC a month"]}),
    )
    .await;
    assert_eq!(
        (code, &fed["message"]),
        (200, &json!("Knowledge fed: 2 notes"))
    );
    let (code, _, _) = browser_post(
        &http,
        &format!("{worker_base}/api/knowledge/feed"),
        &json!({"votingWeights": {"security": 0.8}}),
    )
    .await;
    assert_eq!(code, 200);
    let manifesto = json!({"name": "Alpha", "role": "Treasury reviewer",
        "guidelines": "Fund only what is audited.", "values": ["transparency", "thrift"]});
    let (code, edited, _) = browser_post(
        &http,
        &format!("{worker_base}/api/knowledge/manifesto"),
        &manifesto,
    )
    .await;
    assert_eq!(
        (code, &edited["message"]),
        (200, &json!("Manifesto updated"))
    );
    let (_, identity, _) =
        browser_get(&http, &format!("{worker_base}/api/knowledge/identity")).await;
    for field in ["name", "role", "guidelines", "values"] {
        assert_eq!(identity["manifesto"][field], manifesto[field], "{field}");
    }
    assert_eq!(
        identity["preferences"]["knowledgeNotes"],
        json!([
            "Prefer audited teams",
            "Hosting costs about 800 USDC a month"
        ])
    );
    assert_eq!(
        identity["preferences"]["votingWeights"],
        json!({"security": 0.8})
    );
    assert!(
        identity["formatted"]
            .as_str()
            .unwrap()
            .contains("Name: Alpha")
    );
    // Stored sealed with the worker's key, as the TypeScript worker stores them.
    let stored = memory(&ensue)
        .get(&format!("agent/{first_did}/manifesto"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        stored.starts_with("aes256gcm:") && !stored.contains("Alpha"),
        "{stored}"
    );

    // C POST /api/coordinate/trigger: the "submit proposal" button's body.
    let task = json!({"type": "vote", "parameters": {"proposal": "Fund the indexer with 5000 USDC"}, "timeout": 30000});
    let (code, triggered, allowed) = browser_post(
        &http,
        &format!("{base}/api/coordinate/trigger"),
        &json!({"taskConfig": task}),
    )
    .await;
    assert_eq!((code, allowed.as_deref()), (200, Some("*")));
    assert_eq!(triggered["message"], "Coordination triggered");
    assert_eq!(
        serde_json::from_str::<Value>(triggered["taskConfig"].as_str().unwrap()).unwrap(),
        task
    );
    let proposal_id = triggered["proposalId"].as_str().unwrap().to_owned();
    assert!(proposal_id.starts_with("local-"), "{proposal_id}");

    // The status stays `completed`, with the tally, once the round is done.
    let status = until("the round to complete", || async {
        let (_, status, _) = browser_get(&http, &format!("{base}/api/coordinate/status")).await;
        (status["status"] == "completed" && status["running"] == false).then_some(status)
    })
    .await;
    assert_eq!(status["proposalId"], proposal_id.as_str());
    let tally = &status["tally"];
    assert_eq!(tally["workerCount"], 2);
    assert_eq!(
        tally["approved"].as_u64().unwrap() + tally["rejected"].as_u64().unwrap(),
        2
    );
    assert_eq!(tally["aggregatedValue"], tally["approved"]);
    assert!(["Approved", "Rejected"].contains(&tally["decision"].as_str().unwrap()));
    assert!(is_iso_time(&tally["timestamp"]) && is_iso_time(&status["timestamp"]));
    let (_, again, _) = browser_get(&http, &format!("{base}/api/coordinate/status")).await;
    assert_eq!(
        again["status"], "completed",
        "completed stays until the next round"
    );

    // C GET /api/coordinate/proposals[?workerDid=]: the archived round.
    let (code, history, _) = browser_get(&http, &format!("{base}/api/coordinate/proposals")).await;
    assert_eq!((code, &history["total"]), (200, &json!(1)));
    let row = &history["proposals"][0];
    assert_eq!(
        (&row["proposalId"], &row["status"]),
        (&json!(proposal_id), &json!("completed"))
    );
    for field in ["decision", "approved", "rejected", "workerCount"] {
        assert_eq!(row[field], tally[field], "{field}");
    }
    let (_, mine, _) = browser_get(
        &http,
        &format!("{base}/api/coordinate/proposals?workerDid={first_did}"),
    )
    .await;
    assert_eq!(mine["proposals"][0]["proposalId"], proposal_id.as_str());
    let outsider: Did = key(69).did();
    let (_, none, _) = browser_get(
        &http,
        &format!("{base}/api/coordinate/proposals?workerDid={outsider}"),
    )
    .await;
    assert_eq!(none, json!({"proposals": [], "total": 0}));

    // C GET /api/coordinate/proposals/{id}: config, tally and each worker's vote.
    let (code, detail, _) = browser_get(
        &http,
        &format!("{base}/api/coordinate/proposals/{proposal_id}"),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        (&detail["proposalId"], &detail["status"]),
        (&json!(proposal_id), &json!("completed"))
    );
    assert_eq!(
        detail["config"]["description"],
        "Fund the indexer with 5000 USDC"
    );
    for field in ["decision", "approved", "rejected", "workerCount"] {
        assert_eq!(detail["tally"][field], tally[field], "{field}");
    }
    for (did, _) in &workers {
        let archived = &detail["workers"][did.as_str()];
        let vote = archived["result"]["output"]["vote"].as_str().unwrap();
        assert!(["Approved", "Rejected"].contains(&vote), "{archived}");
        assert!(is_iso_time(&archived["timestamp"]), "{archived}");
    }

    // The roster shows the workers' statuses after the round; the worker
    // records its decision and reports its task.
    let (_, roster, _) = browser_get(&http, &format!("{base}/api/coordinate/workers")).await;
    for listed in roster["workers"].as_array().unwrap() {
        assert_eq!(listed["ensue_status"], "completed", "{listed}");
    }
    let identity = until("the decision to be recorded", || async {
        let (_, identity, _) =
            browser_get(&http, &format!("{worker_base}/api/knowledge/identity")).await;
        (identity["recentDecisions"].as_array()?.len() == 1).then_some(identity)
    })
    .await;
    let decision = &identity["recentDecisions"][0];
    assert_eq!(decision["proposal"], "Fund the indexer with 5000 USDC");
    assert_eq!(decision["proposalId"], proposal_id.as_str());
    assert_eq!(
        decision["vote"],
        detail["workers"][first_did.as_str()]["result"]["output"]["vote"]
    );
    let (code, task_status, _) =
        browser_get(&http, &format!("{worker_base}/api/task/status")).await;
    assert_eq!(
        (code, &task_status["status"], &task_status["workerId"]),
        (200, &json!("completed"), &json!(first_did))
    );
    assert!(
        task_status["timestamp"]
            .as_i64()
            .is_some_and(|ms| ms > 1_600_000_000_000),
        "{task_status}"
    );

    // A taskConfig sent as a JSON string starts the next round the same way,
    // which replaces the previous `completed`.
    let (code, triggered, _) = browser_post(
        &http,
        &format!("{base}/api/coordinate/trigger"),
        &json!({"taskConfig": task.to_string()}),
    )
    .await;
    assert_eq!(code, 200, "{triggered}");
    let second_id = triggered["proposalId"].as_str().unwrap().to_owned();
    assert_ne!(second_id, proposal_id);
    until("the second round to complete", || async {
        let (_, status, _) = browser_get(&http, &format!("{base}/api/coordinate/status")).await;
        (status["status"] == "completed" && status["tally"]["proposalId"] == second_id.as_str())
            .then_some(())
    })
    .await;
    let (_, history, _) = browser_get(&http, &format!("{base}/api/coordinate/proposals")).await;
    assert_eq!(history["total"], 2);
    assert_eq!(history["proposals"][1]["proposalId"], second_id.as_str());

    for deployment in std::iter::once(&coordinator).chain(workers.iter().map(|(_, w)| w)) {
        deployer.teardown(&deployment.id).await.unwrap();
    }
    within("the local Ensue to stop", ensue.stop())
        .await
        .unwrap();
}

/// A local Ensue, a coordinator (agent key `seed`, one static worker of key
/// `seed + 1` that is not served) and a worker (key `seed + 2`), served and
/// healthy.
struct CoordinatorAndWorker {
    ensue: LocalEnsue,
    coordinator_base: String,
    worker_base: String,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    served: Vec<(
        &'static str,
        tokio::task::JoinHandle<delibera_agent::Result<()>>,
    )>,
}

impl CoordinatorAndWorker {
    async fn start(seed: u8) -> Self {
        let ensue = within(
            "the local Ensue to start",
            LocalEnsue::start(Config::default()),
        )
        .await
        .unwrap();
        let http = http();
        let coordinator_key = key(seed);
        let mut coordinator_env = env(AgentRole::Coordinator, &coordinator_key, "Coord", &ensue);
        coordinator_env.static_workers = vec![key(seed + 1).did()];
        let (coordinator_base, stop_coordinator, coordinator) =
            serve(Agent::new(coordinator_env).unwrap()).await;
        let worker_key = key(seed + 2);
        let (worker_base, stop_worker, worker) =
            serve(Agent::new(env(AgentRole::Worker, &worker_key, "Worker", &ensue)).unwrap()).await;
        healthy(&http, &coordinator_base, &coordinator_key.did()).await;
        healthy(&http, &worker_base, &worker_key.did()).await;
        Self {
            ensue,
            coordinator_base,
            worker_base,
            stops: vec![stop_coordinator, stop_worker],
            served: vec![("the coordinator", coordinator), ("the worker", worker)],
        }
    }

    /// Stops both agents and the Ensue, each within the deadline.
    async fn stop(self) {
        drop(self.stops);
        for (agent, served) in self.served {
            within(&format!("{agent} to stop"), served)
                .await
                .unwrap()
                .unwrap();
        }
        within("the local Ensue to stop", self.ensue.stop())
            .await
            .unwrap();
    }
}

/// Serves `env` on a loopback port until the returned sender is dropped.
async fn serve(
    agent: Agent,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<delibera_agent::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(agent.serve(listener, async {
        let _ = stopped.await;
    }));
    (url, stop, served)
}

async fn preflight(http: &reqwest::Client, url: &str, origin: &str) -> reqwest::Response {
    http.request(reqwest::Method::OPTIONS, url)
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_preflight_to_an_agent_succeeds_for_the_origins_it_allows() {
    let ensue = within(
        "the local Ensue to start",
        LocalEnsue::start(Config::default()),
    )
    .await
    .unwrap();
    let http = http();

    // The default: any origin, as the dashboards need.
    let coordinator_key = key(70);
    let mut coordinator_env = env(AgentRole::Coordinator, &coordinator_key, "Coord", &ensue);
    coordinator_env.static_workers = vec![key(71).did()];
    let (base, stop, served) = serve(Agent::new(coordinator_env).unwrap()).await;
    healthy(&http, &base, &coordinator_key.did()).await;
    let answer = preflight(&http, &format!("{base}/api/coordinate/trigger"), FRONTEND).await;
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(allowed_origin(&answer).as_deref(), Some("*"));
    let methods = answer.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods == "*" || methods.contains("POST"), "{methods}");
    let headers = answer.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        headers == "*" || headers.contains("content-type"),
        "{headers}"
    );
    drop(stop);
    within("the coordinator to stop", served)
        .await
        .unwrap()
        .unwrap();

    // A configured list: only the origins it names.
    let worker_key = key(72);
    let mut worker_env = env(AgentRole::Worker, &worker_key, "Worker", &ensue);
    worker_env.cors = CorsPolicy::Origins(vec!["https://app.example.com".into()]);
    let (base, stop, served) = serve(Agent::new(worker_env).unwrap()).await;
    healthy(&http, &base, &worker_key.did()).await;
    let allowed = preflight(
        &http,
        &format!("{base}/api/knowledge/feed"),
        "https://app.example.com",
    )
    .await;
    assert!(allowed.status().is_success());
    assert_eq!(
        allowed_origin(&allowed).as_deref(),
        Some("https://app.example.com")
    );
    let other = preflight(
        &http,
        &format!("{base}/api/knowledge/feed"),
        "https://evil.example",
    )
    .await;
    assert_eq!(
        allowed_origin(&other),
        None,
        "an origin not listed gets no access"
    );
    drop(stop);
    within("the worker to stop", served).await.unwrap().unwrap();
    within("the local Ensue to stop", ensue.stop())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_to_the_dashboard_routes_is_a_clear_400() {
    let pair = CoordinatorAndWorker::start(80).await;
    let http = http();
    let (base, worker_base) = (pair.coordinator_base.clone(), pair.worker_base.clone());

    let posts: [(&str, &str, Value, &str); 16] = [
        (
            &base,
            "/api/coordinate/trigger",
            json!({}),
            "taskConfig is required",
        ),
        (
            &base,
            "/api/coordinate/trigger",
            json!({"taskConfig": "{not json"}),
            "taskConfig is not JSON",
        ),
        (
            &base,
            "/api/coordinate/trigger",
            json!({"taskConfig": 7}),
            "an object or a JSON string",
        ),
        (
            &base,
            "/api/coordinate/trigger",
            json!({"taskConfig": "[1]"}),
            "must be a JSON object",
        ),
        (
            &base,
            "/api/coordinate/trigger",
            json!({"taskConfig": {"type": "random"}}),
            "must be \"vote\"",
        ),
        (
            &base,
            "/api/coordinate/trigger",
            json!({"taskConfig": {"type": "vote", "parameters": {}}}),
            "parameters.proposal",
        ),
        (
            &base,
            "/api/coordinate/trigger",
            json!({"taskConfig": {"type": "vote", "parameters": {"proposal": "  "}}}),
            "parameters.proposal",
        ),
        (&worker_base, "/api/knowledge/feed", json!({}), "send notes"),
        (
            &worker_base,
            "/api/knowledge/feed",
            json!({"notes": "one"}),
            "notes",
        ),
        (
            &worker_base,
            "/api/knowledge/feed",
            json!({"notes": ["ok", " "]}),
            "each of notes must not be blank",
        ),
        (
            &worker_base,
            "/api/knowledge/feed",
            json!({"votingWeights": {"security": "high"}}),
            "votingWeights.security must be a number",
        ),
        (
            &worker_base,
            "/api/knowledge/feed",
            json!({"note": ["typo"]}),
            "unknown field",
        ),
        (
            &worker_base,
            "/api/knowledge/manifesto",
            json!({}),
            "at least one of",
        ),
        (
            &worker_base,
            "/api/knowledge/manifesto",
            json!({"name": " "}),
            "name must not be blank",
        ),
        (
            &worker_base,
            "/api/knowledge/manifesto",
            json!({"values": ["a".repeat(201)]}),
            "longer than 200",
        ),
        (
            &worker_base,
            "/api/knowledge/manifesto",
            json!({"role": 3}),
            "role",
        ),
    ];
    for (agent, path, body, reason) in posts {
        let (code, answer, _) = browser_post(&http, &format!("{agent}{path}"), &body).await;
        let error = answer["error"].as_str().unwrap_or_default();
        assert_eq!(code, 400, "{path} {body}: {answer}");
        assert!(
            error.contains(reason),
            "{path} {body}: {error:?} does not say {reason:?}"
        );
        assert_eq!(answer.as_object().unwrap().len(), 1, "{answer}");
    }
    let not_json = http
        .post(format!("{worker_base}/api/knowledge/manifesto"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status().as_u16(), 400);
    assert!(not_json.json::<Value>().await.unwrap()["error"].is_string());

    let (code, answer) = get_json(
        &http,
        &format!("{base}/api/coordinate/proposals?workerDid=nobody"),
    )
    .await;
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().starts_with("workerDid: "),
        "{answer}"
    );
    let (code, answer) =
        get_json(&http, &format!("{base}/api/coordinate/proposals/never-run")).await;
    assert_eq!(
        (code, answer),
        (404, json!({"error": "unknown proposal never-run"}))
    );
    let (code, answer) = get_json(&http, &format!("{base}/api/coordinate/proposals/a%2Fb")).await;
    assert_eq!(code, 400, "{answer}");
    // Nothing bad input asked for was stored.
    let (_, identity, _) =
        browser_get(&http, &format!("{worker_base}/api/knowledge/identity")).await;
    assert_eq!(identity["manifesto"]["name"], "Worker");
    assert_eq!(identity["preferences"]["knowledgeNotes"], json!([]));

    pair.stop().await;
}

/// A proposal id Ensue cannot take as part of a key (over its key length, or
/// with a control character) is refused by every route that takes one, before
/// anything reaches Ensue or a round starts.
#[tokio::test(flavor = "multi_thread")]
async fn a_proposal_id_ensue_cannot_store_is_a_400_on_every_route() {
    let pair = CoordinatorAndWorker::start(86).await;
    let http = http();
    let base = pair.coordinator_base.clone();

    let too_long = "a".repeat(1100);
    for path in [
        format!("/api/proposals/{too_long}"),
        "/api/proposals/a%0Ab".to_owned(),
        format!("/api/coordinate/proposals/{too_long}"),
        "/api/coordinate/proposals/a%0Ab".to_owned(),
    ] {
        let (code, answer) = get_json(&http, &format!("{base}{path}")).await;
        let shown = &path[..path.len().min(40)];
        assert_eq!(code, 400, "{shown}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.contains("at most 256 bytes") && error.contains("control character"),
            "{shown}: {error:?} does not name the rule"
        );
    }
    for proposal_id in ["b".repeat(2000), "a\nb".to_owned()] {
        let started = http
            .post(format!("{base}/api/coordinate"))
            .json(&json!({"proposalId": proposal_id, "title": "Fund the indexer"}))
            .send()
            .await
            .unwrap();
        assert_eq!(started.status().as_u16(), 400, "no round starts");
        let error = started.json::<Value>().await.unwrap()["error"].clone();
        assert!(error.as_str().unwrap().contains("proposalId"), "{error}");
    }
    let (_, status) = get_json(&http, &format!("{base}/api/coordinate/status")).await;
    assert_eq!(status["running"], false, "{status}");

    pair.stop().await;
}

/// What axum would refuse by itself (a path segment that is not UTF-8, an
/// unknown route, a method a route lacks, a body too large or not declared
/// JSON) is answered with the agent's `{"error"}` shape and the status that
/// says what was wrong, by coordinators and workers alike.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_refuses_bad_requests_in_its_json_error_shape() {
    let pair = CoordinatorAndWorker::start(88).await;
    let http = http();
    let (base, worker_base) = (pair.coordinator_base.clone(), pair.worker_base.clone());

    let too_large = format!("{{\"proposalId\": \"{}\"}}", "a".repeat(3 << 20));
    let requests = [
        (
            http.get(format!("{base}/api/coordinate/proposals/%FF")),
            400,
        ),
        (http.get(format!("{base}/api/proposals/%FF")), 400),
        (http.get(format!("{base}/api/nothing-here")), 404),
        (http.get(format!("{worker_base}/api/nothing-here")), 404),
        (http.delete(format!("{base}/api/coordinate")), 405),
        (http.get(format!("{worker_base}/api/knowledge/feed")), 405),
        (
            http.post(format!("{base}/api/coordinate"))
                .header("content-type", "application/json")
                .body(too_large.clone()),
            413,
        ),
        (
            http.post(format!("{worker_base}/api/knowledge/feed"))
                .header("content-type", "application/json")
                .body(too_large),
            413,
        ),
        (
            http.post(format!("{base}/api/coordinate"))
                .body(r#"{"proposalId": "p-1", "title": "t"}"#),
            415,
        ),
        (
            http.post(format!("{base}/api/coordinate/trigger"))
                .body(r#"{"taskConfig": {}}"#),
            415,
        ),
        (
            http.post(format!("{worker_base}/api/knowledge/manifesto"))
                .body(r#"{"name": "n"}"#),
            415,
        ),
    ];
    for (request, expected) in requests {
        let request = request.build().unwrap();
        let shown = format!("{} {}", request.method(), request.url().path());
        let response = http.execute(request).await.unwrap();
        let code = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|value| value.to_str().unwrap().to_owned());
        let allow = response.headers().get("allow").cloned();
        let body = response.text().await.unwrap();
        assert_eq!(code, expected, "{shown}: {body}");
        assert_eq!(
            allow.is_some(),
            code == 405,
            "{shown}: Allow says what would do"
        );
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "{shown}: {body}"
        );
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|error| !error.is_empty()),
            "{shown}: {answer}"
        );
        assert_eq!(answer.as_object().unwrap().len(), 1, "{shown}: {answer}");
    }

    pair.stop().await;
}

/// An identity document whose stored value does not open (tampered, or
/// sealed under another key) counts as absent, as the TypeScript worker
/// reads it: the routes answer and the next save replaces it.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_identity_document_is_replaced_by_the_next_save() {
    let ensue = within(
        "the local Ensue to start",
        LocalEnsue::start(Config::default()),
    )
    .await
    .unwrap();
    let http = http();
    let worker_key = key(84);
    let (worker_base, stop_worker, worker) =
        serve(Agent::new(env(AgentRole::Worker, &worker_key, "Worker", &ensue)).unwrap()).await;
    healthy(&http, &worker_base, &worker_key.did()).await;
    let preferences = format!("agent/{}/preferences", worker_key.did());
    memory(&ensue)
        .upsert(
            &preferences,
            "aes256gcm:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .await
        .unwrap();

    let (code, identity, _) =
        browser_get(&http, &format!("{worker_base}/api/knowledge/identity")).await;
    assert_eq!(code, 200, "{identity}");
    let (code, fed, _) = browser_post(
        &http,
        &format!("{worker_base}/api/knowledge/feed"),
        &json!({"notes": ["kept"]}),
    )
    .await;
    assert_eq!(code, 200, "{fed}");
    let (_, identity, _) =
        browser_get(&http, &format!("{worker_base}/api/knowledge/identity")).await;
    assert_eq!(identity["preferences"]["knowledgeNotes"], json!(["kept"]));
    let stored = memory(&ensue).get(&preferences).await.unwrap().unwrap();
    assert!(stored.starts_with("aes256gcm:"), "sealed again");
    assert_ne!(stored, "aes256gcm:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");

    drop(stop_worker);
    worker.await.unwrap().unwrap();
    within("the local Ensue to stop", ensue.stop())
        .await
        .unwrap();
}
