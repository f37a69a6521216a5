//! The routes the web dashboards poll, beside the agent's own API: the
//! coordinator's roster, status with the last tally, proposal archive and
//! trigger; the worker's health, task status and identity documents
//! (`agent/{did}/{manifesto,preferences,decisions}`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use delibera_coordination::{Ballot, Proposal, TaskDefinition, TaskHandler};
use delibera_ensue::keys::{self, AgentField, ProposalField, WorkerField};
use delibera_ensue::{MAX_BATCH, Memory};
use delibera_identity::Did;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::runtime::{ApiError, CoordinatorState, begin_round};
use crate::{Error, WorkerListing};

type Answer = std::result::Result<Json<Value>, ApiError>;

/// The current time as the dashboards' clients write it (ISO-8601, ms, `Z`).
pub(crate) fn iso_now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// `get_many` in batches the service accepts.
async fn read_many(
    memory: &dyn Memory,
    keys: Vec<String>,
) -> Result<HashMap<String, String>, Error> {
    let mut values = HashMap::with_capacity(keys.len());
    for batch in keys.chunks(MAX_BATCH) {
        values.extend(memory.get_many(batch).await?);
    }
    Ok(values)
}

/// A stored JSON document, or `None` when it is absent or not JSON (logged).
fn parse_json(values: &HashMap<String, String>, key: &str) -> Option<Value> {
    let text = values.get(key)?;
    serde_json::from_str(text)
        .inspect_err(|error| tracing::warn!(key, %error, "a stored document is not JSON"))
        .ok()
}

/// The coordinator routes the dashboards poll.
pub(crate) fn coordinator_routes() -> Router<Arc<CoordinatorState>> {
    Router::new()
        .route("/api/coordinate/workers", get(workers))
        .route("/api/coordinate/proposals", get(proposals))
        .route("/api/coordinate/proposals/{id}", get(proposal_detail))
        .route("/api/coordinate/trigger", post(trigger))
}

/// The fields of a tally the dashboards show. `aggregatedValue` is the
/// tally's own when it has one, else the approvals (what it means for votes).
pub(crate) fn tally_summary(tally: &Value) -> Value {
    let aggregated = match tally.get("aggregatedValue") {
        Some(value) => value.clone(),
        None => tally["approved"].clone(),
    };
    json!({
        "proposalId": tally["proposalId"],
        "decision": tally["decision"],
        "approved": tally["approved"],
        "rejected": tally["rejected"],
        "workerCount": tally["workerCount"],
        "aggregatedValue": aggregated,
        "timestamp": tally["timestamp"],
    })
}

/// The coordinator's last tally, summarised; `None` before its first round.
pub(crate) fn last_tally(values: &HashMap<String, String>) -> Value {
    parse_json(values, &keys::coordinator_tally())
        .map_or(Value::Null, |tally| tally_summary(&tally))
}

/// A DID cut short, for a worker that published no name.
fn short_did(did: &Did) -> String {
    let text = did.as_str();
    match text.char_indices().nth(20) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

async fn workers(State(state): State<Arc<CoordinatorState>>) -> Answer {
    let roster: Vec<WorkerListing> = state.directory.roster(&state.did).await?;
    let keys_of = |did: &Did| {
        [
            keys::worker(did, WorkerField::Status),
            keys::agent(did, AgentField::DisplayName),
            keys::agent(did, AgentField::Endpoint),
        ]
    };
    let wanted = roster
        .iter()
        .flat_map(|worker| keys_of(&worker.did))
        .collect();
    let values = read_many(state.memory.as_ref(), wanted).await?;
    let workers: Vec<Value> = roster
        .iter()
        .map(|worker| {
            let [status, name, endpoint] = keys_of(&worker.did).map(|key| values.get(&key));
            let fallback_status = if worker.is_active { "idle" } else { "offline" };
            json!({
                "did": worker.did,
                "display_name": name.cloned().unwrap_or_else(|| short_did(&worker.did)),
                "endpoint_url": worker.endpoint_url.as_ref().or(endpoint),
                "is_active": worker.is_active,
                "registered_at": worker.registered_at_ms,
                "ensue_status": status.map_or(fallback_status, String::as_str),
            })
        })
        .collect();
    Ok(Json(
        json!({"workers": workers, "source": "registry", "timestamp": iso_now()}),
    ))
}

#[derive(Deserialize)]
struct ProposalsQuery {
    #[serde(rename = "workerDid")]
    worker_did: Option<String>,
}

async fn proposals(
    State(state): State<Arc<CoordinatorState>>,
    query: std::result::Result<Query<ProposalsQuery>, QueryRejection>,
) -> Answer {
    let Query(query) = query.map_err(|rejection| bad_request(rejection.body_text()))?;
    let worker = query
        .worker_did
        .map(|did| {
            did.parse::<Did>()
                .map_err(|error| bad_request(format!("workerDid: {error}")))
        })
        .transpose()?;
    let index: Vec<String> = match state
        .memory
        .get(&keys::proposal_index())
        .await
        .map_err(Error::from)?
    {
        Some(text) => serde_json::from_str(&text).unwrap_or_else(|error| {
            tracing::warn!(%error, "the proposal index is not a JSON array of ids");
            Vec::new()
        }),
        None => Vec::new(),
    };
    let keys_of = |id: &str| {
        let mut wanted = vec![
            keys::proposal(id, ProposalField::Status),
            keys::proposal(id, ProposalField::Tally),
        ];
        if let Some(worker) = &worker {
            wanted.push(keys::proposal_worker(id, worker, WorkerField::Result));
        }
        wanted
    };
    let wanted = index.iter().flat_map(|id| keys_of(id)).collect();
    let values = read_many(state.memory.as_ref(), wanted).await?;
    let proposals: Vec<Value> = index
        .iter()
        .filter(|id| match &worker {
            Some(worker) => {
                values.contains_key(&keys::proposal_worker(id, worker, WorkerField::Result))
            }
            None => true,
        })
        .map(|id| {
            let tally = parse_json(&values, &keys::proposal(id, ProposalField::Tally))
                .unwrap_or(Value::Null);
            json!({
                "proposalId": id,
                "status": values.get(&keys::proposal(id, ProposalField::Status)),
                "decision": tally["decision"],
                "approved": tally["approved"],
                "rejected": tally["rejected"],
                "workerCount": tally["workerCount"],
                "timestamp": tally["timestamp"],
            })
        })
        .collect();
    Ok(Json(
        json!({"total": proposals.len(), "proposals": proposals}),
    ))
}

/// The longest proposal id, in bytes. The longest key built from an id (a
/// worker's archived timestamp) adds about 100 bytes to it, and Ensue refuses
/// keys over 1024 bytes; a round whose keys Ensue refuses would fail only
/// after it started.
pub(crate) const MAX_PROPOSAL_ID_BYTES: usize = 256;

/// The one rule for a proposal id, which every route taking one applies
/// before using it in a key: not blank, at most [`MAX_PROPOSAL_ID_BYTES`],
/// no `/` (it would change the key's layout) and no control character
/// (Ensue refuses those in keys).
pub(crate) fn check_proposal_id(id: &str) -> std::result::Result<(), ApiError> {
    if id.trim().is_empty()
        || id.len() > MAX_PROPOSAL_ID_BYTES
        || id.contains('/')
        || id.chars().any(char::is_control)
    {
        return Err(bad_request(format!(
            "a proposal id must be non-blank, at most {MAX_PROPOSAL_ID_BYTES} bytes, \
             with no '/' and no control character"
        )));
    }
    Ok(())
}

/// A worker result as the dashboards read it: as stored, plus `output`
/// (`{value, vote, reasoning}`, value 1 for an approval) when the result
/// carries its vote at the top level.
fn result_view(mut result: Value) -> Value {
    if let Some(fields) = result.as_object_mut()
        && !fields.contains_key("output")
        && let Some(vote) = fields.get("vote").cloned()
    {
        let value = u8::from(vote == "Approved");
        let reasoning = fields.get("reasoning").cloned().unwrap_or(Value::Null);
        fields.insert(
            "output".into(),
            json!({"value": value, "vote": vote, "reasoning": reasoning}),
        );
    }
    result
}

async fn proposal_detail(
    State(state): State<Arc<CoordinatorState>>,
    id: std::result::Result<Path<String>, PathRejection>,
) -> Answer {
    let Path(id) = id?;
    check_proposal_id(&id)?;
    let [config_key, status_key, tally_key] = [
        ProposalField::Config,
        ProposalField::Status,
        ProposalField::Tally,
    ]
    .map(|field| keys::proposal(&id, field));
    let values = read_many(
        state.memory.as_ref(),
        vec![config_key.clone(), status_key.clone(), tally_key.clone()],
    )
    .await?;
    let Some(status) = values.get(&status_key) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("unknown proposal {id}"),
        ));
    };
    let config = values.get(&config_key).map_or(Value::Null, |text| {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
    });
    let archived = state
        .memory
        .list_keys(&keys::proposal_workers_prefix(&id))
        .await
        .map_err(Error::from)?;
    let archived: Vec<String> = archived
        .into_iter()
        .filter(|key| keys::parse_proposal_worker_key(&id, key).is_some())
        .collect();
    let stored = read_many(state.memory.as_ref(), archived.clone()).await?;
    let mut workers: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for key in &archived {
        let (Some((did, field)), Some(text)) =
            (keys::parse_proposal_worker_key(&id, key), stored.get(key))
        else {
            continue;
        };
        let entry = workers.entry(did.to_string()).or_default();
        match field {
            WorkerField::Result => {
                let result = serde_json::from_str(text)
                    .map_or_else(|_| Value::String(text.clone()), result_view);
                entry.insert("result".into(), result);
            }
            _ => {
                entry.insert("timestamp".into(), Value::String(text.clone()));
            }
        }
    }
    Ok(Json(json!({
        "proposalId": id,
        "status": status,
        "config": config,
        "tally": parse_json(&values, &tally_key).unwrap_or(Value::Null),
        "workers": workers,
    })))
}

/// The longest proposal text a trigger takes.
const MAX_PROPOSAL_CHARS: usize = 10_000;
/// The longest title made from a proposal's first line.
const MAX_TITLE_CHARS: usize = 120;

/// `POST /api/coordinate/trigger {"taskConfig": {"type": "vote", "parameters":
/// {"proposal": "…"}, "timeout"?}}` (an object, or the same as a JSON string):
/// a round on the proposal text, under a fresh `local-{epochMs}` id.
async fn trigger(
    State(state): State<Arc<CoordinatorState>>,
    body: std::result::Result<Json<Value>, JsonRejection>,
) -> Answer {
    let Json(body) = body?;
    let config = match body.get("taskConfig") {
        Some(Value::String(text)) => serde_json::from_str::<Value>(text)
            .map_err(|error| bad_request(format!("taskConfig is not JSON: {error}")))?,
        Some(config @ Value::Object(_)) => config.clone(),
        Some(_) => return Err(bad_request("taskConfig must be an object or a JSON string")),
        None => {
            return Err(bad_request(
                "taskConfig is required: {\"type\": \"vote\", \"parameters\": {\"proposal\": \"…\"}}",
            ));
        }
    };
    if !config.is_object() {
        return Err(bad_request("taskConfig must be a JSON object"));
    }
    match config.get("type") {
        None => {}
        Some(Value::String(kind)) if kind == "vote" => {}
        Some(_) => {
            return Err(bad_request(
                "taskConfig.type must be \"vote\": agents only vote",
            ));
        }
    }
    let parameters = config.get("parameters").cloned().unwrap_or(Value::Null);
    let text = match parameters.get("proposal") {
        Some(Value::String(text)) if !text.trim().is_empty() => text.trim().to_owned(),
        _ => {
            return Err(bad_request(
                "taskConfig.parameters.proposal must be the proposal's text",
            ));
        }
    };
    if text.chars().count() > MAX_PROPOSAL_CHARS {
        return Err(bad_request(format!(
            "taskConfig.parameters.proposal is longer than {MAX_PROPOSAL_CHARS} characters"
        )));
    }
    let first_line = text.lines().next().unwrap_or_default();
    let mut title: String = first_line.chars().take(MAX_TITLE_CHARS).collect();
    if title.len() < first_line.len() {
        title.push('…');
    }
    let proposal_id = format!("local-{}", Utc::now().timestamp_millis());
    let proposal = Proposal::new(proposal_id.clone(), title)
        .with_description(text)
        .with_parameters(parameters);
    begin_round(&state, proposal).await?;
    Ok(Json(json!({
        "message": "Coordination triggered",
        "taskConfig": config.to_string(),
        "proposalId": proposal_id,
        "timestamp": iso_now(),
    })))
}

/// What the worker's dashboard routes read and edit.
pub(crate) struct WorkerDashboard {
    pub(crate) did: Did,
    pub(crate) display_name: String,
    /// Coordination keys (the task status), as stored.
    pub(crate) memory: Arc<dyn Memory>,
    /// The identity documents, sealed with the agent's key as the TypeScript worker seals them.
    pub(crate) documents: Arc<dyn Memory>,
    pub(crate) space_did: Option<Did>,
    /// Serialises the read-merge-write of the identity documents.
    pub(crate) edits: Arc<tokio::sync::Mutex<()>>,
}

/// The worker routes the dashboards poll.
pub(crate) fn worker_routes(state: Arc<WorkerDashboard>) -> Router {
    Router::new()
        .route("/api/task/health", get(task_health))
        .route("/api/task/status", get(task_status))
        .route("/api/knowledge/identity", get(identity))
        .route("/api/knowledge/feed", post(feed))
        .route("/api/knowledge/manifesto", post(edit_manifesto))
        .with_state(state)
}

async fn task_health(State(state): State<Arc<WorkerDashboard>>) -> Json<Value> {
    Json(json!({"healthy": true, "worker": state.did, "timestamp": iso_now()}))
}

/// Epoch milliseconds of a stored timestamp (ISO-8601, or already milliseconds).
fn epoch_ms(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp_millis())
        .ok()
        .or_else(|| text.trim().parse().ok())
}

async fn task_status(State(state): State<Arc<WorkerDashboard>>) -> Answer {
    let [status_key, timestamp_key, error_key] = [
        WorkerField::Status,
        WorkerField::Timestamp,
        WorkerField::Error,
    ]
    .map(|field| keys::worker(&state.did, field));
    let values = read_many(
        state.memory.as_ref(),
        vec![status_key.clone(), timestamp_key.clone(), error_key.clone()],
    )
    .await?;
    let status = values.get(&status_key).map_or("idle", String::as_str);
    let mut answer = json!({"workerId": state.did, "status": status});
    if let Some(ms) = values.get(&timestamp_key).and_then(|text| epoch_ms(text)) {
        answer["timestamp"] = json!(ms);
    }
    if status == "failed"
        && let Some(error) = values.get(&error_key)
    {
        answer["error"] = json!(error);
    }
    Ok(Json(answer))
}

/// The most notes `preferences.knowledgeNotes` keeps (the oldest drop out).
const MAX_NOTES: usize = 200;
/// The most decisions `agent/{did}/decisions` keeps (the oldest drop out).
pub(crate) const MAX_DECISIONS: usize = 50;
/// How many decisions the identity shows.
const RECENT_DECISIONS: usize = 5;

/// The identity documents, with defaults for what is absent.
struct Identity {
    manifesto: Map<String, Value>,
    preferences: Map<String, Value>,
    decisions: Vec<Value>,
}

impl WorkerDashboard {
    fn document_keys(&self) -> [String; 3] {
        [
            AgentField::Manifesto,
            AgentField::Preferences,
            AgentField::Decisions,
        ]
        .map(|field| keys::agent(&self.did, field))
    }

    /// The identity documents that can be read: one whose stored value
    /// does not open (tampered, sealed under another key) counts as absent,
    /// as the TypeScript worker reads it, so the next save replaces it
    /// instead of every read failing for good.
    async fn readable_documents(&self, keys: &[String]) -> Result<HashMap<String, String>, Error> {
        match self.documents.get_many(keys).await {
            Err(error) if error.is_unreadable_value() => {}
            other => return Ok(other?),
        }
        let mut values = HashMap::with_capacity(keys.len());
        for key in keys {
            match self.documents.get(key).await {
                Ok(Some(value)) => {
                    values.insert(key.clone(), value);
                }
                Ok(None) => {}
                Err(error) if error.is_unreadable_value() => {
                    tracing::warn!(key, %error, "an identity document cannot be read; it counts as absent until it is saved again");
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(values)
    }

    async fn identity(&self) -> Result<Identity, Error> {
        let [manifesto_key, preferences_key, decisions_key] = self.document_keys();
        let values = self
            .readable_documents(&[
                manifesto_key.clone(),
                preferences_key.clone(),
                decisions_key.clone(),
            ])
            .await?;
        let object = |key: &str| match parse_json(&values, key) {
            Some(Value::Object(fields)) => fields,
            _ => Map::new(),
        };
        let mut manifesto = object(&manifesto_key);
        for (field, default) in [
            ("agentId", json!(self.did)),
            ("name", json!(self.display_name)),
            ("role", json!("worker")),
            ("values", json!([])),
            ("guidelines", json!("")),
        ] {
            manifesto.entry(field).or_insert(default);
        }
        let mut preferences = object(&preferences_key);
        for (field, default) in [
            ("agentId", json!(self.did)),
            ("votingWeights", json!({})),
            ("knowledgeNotes", json!([])),
            ("updatedAt", Value::Null),
        ] {
            preferences.entry(field).or_insert(default);
        }
        let decisions = match parse_json(&values, &decisions_key) {
            Some(Value::Array(decisions)) => decisions,
            _ => Vec::new(),
        };
        Ok(Identity {
            manifesto,
            preferences,
            decisions,
        })
    }

    async fn save(&self, field: AgentField, document: &Value) -> Result<(), Error> {
        self.documents
            .upsert(&keys::agent(&self.did, field), &document.to_string())
            .await?;
        Ok(())
    }
}

/// The identity as one text, for a prompt or a quick read.
fn formatted(identity: &Identity) -> String {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    let list = |value: &Value| {
        value
            .as_array()
            .map(|items| items.iter().map(text).collect::<Vec<_>>().join("; "))
            .unwrap_or_default()
    };
    let weights = identity.preferences["votingWeights"]
        .as_object()
        .map(|weights| {
            weights
                .iter()
                .map(|(name, weight)| format!("{name}={weight}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    format!(
        "Name: {}\nRole: {}\nValues: {}\nGuidelines: {}\nVoting weights: {}\nKnowledge: {}",
        text(&identity.manifesto["name"]),
        text(&identity.manifesto["role"]),
        list(&identity.manifesto["values"]),
        text(&identity.manifesto["guidelines"]),
        weights,
        list(&identity.preferences["knowledgeNotes"]),
    )
}

async fn identity(State(state): State<Arc<WorkerDashboard>>) -> Answer {
    let identity = state.identity().await?;
    let recent: Vec<&Value> = identity
        .decisions
        .iter()
        .skip(identity.decisions.len().saturating_sub(RECENT_DECISIONS))
        .collect();
    Ok(Json(json!({
        "manifesto": identity.manifesto,
        "preferences": identity.preferences,
        "recentDecisions": recent,
        "formatted": formatted(&identity),
        "storacha": {
            "configured": state.space_did.is_some(),
            "agentDid": state.did,
            "spaceDid": state.space_did,
        },
    })))
}

/// Checks a free-text field: trimmed, non-empty, at most `max` characters.
fn text_field(name: &str, value: &str, max: usize) -> std::result::Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(bad_request(format!("{name} must not be blank")));
    }
    if value.chars().count() > max {
        return Err(bad_request(format!(
            "{name} is longer than {max} characters"
        )));
    }
    Ok(value.to_owned())
}

/// Checks a list of short texts: at most `max_items`, each as [`text_field`].
fn text_list(
    name: &str,
    items: &[String],
    max_items: usize,
    max_chars: usize,
) -> std::result::Result<Vec<String>, ApiError> {
    if items.len() > max_items {
        return Err(bad_request(format!(
            "{name} has more than {max_items} entries"
        )));
    }
    items
        .iter()
        .map(|item| text_field(&format!("each of {name}"), item, max_chars))
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Feed {
    notes: Option<Vec<String>>,
    voting_weights: Option<Map<String, Value>>,
}

async fn feed(
    State(state): State<Arc<WorkerDashboard>>,
    body: std::result::Result<Json<Feed>, JsonRejection>,
) -> Answer {
    let Json(feed) = body?;
    if feed.notes.is_none() && feed.voting_weights.is_none() {
        return Err(bad_request("send notes (a list of texts) or votingWeights"));
    }
    let notes = text_list(
        "notes",
        feed.notes.as_deref().unwrap_or_default(),
        100,
        2_000,
    )?;
    let weights = feed.voting_weights.unwrap_or_default();
    if weights.len() > 100 {
        return Err(bad_request("votingWeights has more than 100 entries"));
    }
    for (name, weight) in &weights {
        text_field("each votingWeights name", name, 100)?;
        if !weight.as_f64().is_some_and(f64::is_finite) {
            return Err(bad_request(format!(
                "votingWeights.{name} must be a number"
            )));
        }
    }
    let _edit = state.edits.lock().await;
    let mut preferences = state.identity().await?.preferences;
    if let Some(Value::Object(current)) = preferences.get_mut("votingWeights") {
        current.extend(weights);
    }
    if let Some(Value::Array(current)) = preferences.get_mut("knowledgeNotes") {
        current.extend(notes.iter().cloned().map(Value::String));
        let excess = current.len().saturating_sub(MAX_NOTES);
        current.drain(..excess);
    }
    preferences.insert("updatedAt".into(), json!(iso_now()));
    let preferences = Value::Object(preferences);
    state.save(AgentField::Preferences, &preferences).await?;
    Ok(Json(json!({
        "message": format!("Knowledge fed: {} notes", notes.len()),
        "preferences": preferences,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestoEdit {
    name: Option<String>,
    role: Option<String>,
    guidelines: Option<String>,
    values: Option<Vec<String>>,
}

async fn edit_manifesto(
    State(state): State<Arc<WorkerDashboard>>,
    body: std::result::Result<Json<ManifestoEdit>, JsonRejection>,
) -> Answer {
    let Json(edit) = body?;
    let mut changes = Map::new();
    if let Some(name) = &edit.name {
        changes.insert("name".into(), json!(text_field("name", name, 100)?));
    }
    if let Some(role) = &edit.role {
        changes.insert("role".into(), json!(text_field("role", role, 100)?));
    }
    if let Some(guidelines) = &edit.guidelines {
        if guidelines.chars().count() > 10_000 {
            return Err(bad_request("guidelines is longer than 10000 characters"));
        }
        changes.insert("guidelines".into(), json!(guidelines.trim()));
    }
    if let Some(values) = &edit.values {
        changes.insert(
            "values".into(),
            json!(text_list("values", values, 50, 200)?),
        );
    }
    if changes.is_empty() {
        return Err(bad_request(
            "send at least one of name, role, guidelines, values",
        ));
    }
    let _edit = state.edits.lock().await;
    let mut manifesto = state.identity().await?.manifesto;
    manifesto.extend(changes);
    let manifesto = Value::Object(manifesto);
    state.save(AgentField::Manifesto, &manifesto).await?;
    Ok(Json(
        json!({"message": "Manifesto updated", "manifesto": manifesto}),
    ))
}

/// A [`TaskHandler`] that records each vote it makes in
/// `agent/{did}/decisions` (the newest [`MAX_DECISIONS`]), for the identity
/// the dashboard shows. Recording runs beside the vote and never fails it.
pub(crate) struct RecordDecisions {
    pub(crate) inner: Arc<dyn TaskHandler>,
    pub(crate) dashboard: Arc<WorkerDashboard>,
}

#[async_trait::async_trait]
impl TaskHandler for RecordDecisions {
    async fn handle(&self, task: &TaskDefinition) -> delibera_coordination::Result<Ballot> {
        let ballot = self.inner.handle(task).await?;
        let decision = json!({
            "proposalId": task.proposal_id,
            "proposal": task.title,
            "vote": ballot.vote.to_string(),
            "reasoning": ballot.reasoning,
            "timestamp": iso_now(),
        });
        let dashboard = Arc::clone(&self.dashboard);
        tokio::spawn(async move {
            let _edit = dashboard.edits.lock().await;
            let recorded = async {
                let mut decisions = dashboard.identity().await?.decisions;
                decisions.push(decision);
                let excess = decisions.len().saturating_sub(MAX_DECISIONS);
                decisions.drain(..excess);
                dashboard
                    .save(AgentField::Decisions, &Value::Array(decisions))
                    .await
            };
            if let Err(error) = recorded.await {
                tracing::warn!(%error, "could not record the decision");
            }
        });
        Ok(ballot)
    }
}
