//! The memory tools, reached two ways: MCP `tools/call` (what the hosted
//! service speaks) and the direct methods (`method` = the tool name).

use serde_json::{Map, Value, json};

use delibera_jsonrpc::ErrorObject;

use crate::http::{AppState, Limits};
use crate::rpc;
use crate::store::{CreateOutcome, NewMemory, OrgId, QuotaExceeded, Record, UpdateOutcome};

/// Items per batch and keys per `list_keys` page, as the hosted service allows.
pub(crate) const MAX_BATCH: usize = 100;

/// The longest key accepted.
const MAX_KEY_BYTES: usize = 1024;

/// The longest description accepted.
const MAX_DESCRIPTION_BYTES: usize = 4096;

/// The MCP protocol versions this server can answer `initialize` with, newest first.
const PROTOCOL_VERSIONS: [&str; 3] = ["2025-06-18", "2025-03-26", "2024-11-05"];

/// The longest `search_memories` query accepted.
const MAX_QUERY_BYTES: usize = 4096;

/// Results of `search_memories` when the call gives no `limit`.
const DEFAULT_SEARCH_LIMIT: i64 = 10;

/// The memory operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Create,
    Update,
    Get,
    List,
    Delete,
    Search,
}

impl Operation {
    fn from_tool(name: &str) -> Option<Operation> {
        Some(match name {
            "create_memory" => Operation::Create,
            "update_memory" => Operation::Update,
            "get_memory" => Operation::Get,
            "list_keys" => Operation::List,
            "delete_memory" => Operation::Delete,
            "search_memories" => Operation::Search,
            _ => return None,
        })
    }

    /// Direct methods also answer to `read_memory`, the name Delibera's docs use.
    fn from_method(name: &str) -> Option<Operation> {
        match name {
            "read_memory" => Some(Operation::Get),
            other => Operation::from_tool(other),
        }
    }
}

/// A tool's outcome: success, or a tool execution error (`result.isError`).
enum Outcome {
    Success(Value),
    Failure {
        message: String,
        structured: Option<Value>,
    },
}

impl Outcome {
    fn into_result(self) -> Value {
        match self {
            Outcome::Success(structured) => rpc::tool_success(structured),
            Outcome::Failure {
                message,
                structured,
            } => rpc::tool_failure(&message, structured),
        }
    }
}

/// Answers one JSON-RPC call for organisation `org`.
pub(crate) async fn dispatch(
    state: &AppState,
    org: OrgId,
    method: &str,
    params: Value,
) -> Result<Value, ErrorObject> {
    match method {
        "initialize" => Ok(initialize(&params)),
        "ping" => Ok(json!({})),
        "tools/list" => Ok(tools_list()),
        "tools/call" => {
            let mut params = object(params, "params")?;
            let name = match params.remove("name") {
                Some(Value::String(name)) => name,
                Some(_) => {
                    return Err(ErrorObject::invalid_params(
                        "`params.name` must be a string",
                    ));
                }
                None => return Err(ErrorObject::invalid_params("`params.name` is missing")),
            };
            tracing::Span::current().record("rpc.tool", name.as_str());
            let operation = Operation::from_tool(&name).ok_or_else(|| {
                ErrorObject::method_not_found(format!(
                    "unknown tool `{name}`: this server has create_memory, get_memory, \
                     update_memory, delete_memory, list_keys and search_memories"
                ))
            })?;
            let arguments = object(
                params.remove("arguments").unwrap_or(Value::Null),
                "params.arguments",
            )?;
            Ok(run_mcp(state, org, operation, &arguments)
                .await?
                .into_result())
        }
        other => {
            let operation = Operation::from_method(other).ok_or_else(|| {
                ErrorObject::method_not_found(format!("unknown method `{other}`"))
            })?;
            let params = object(params, "params")?;
            // MCP arguments sent without the `tools/call` wrapper are served
            // too; everything else (including nothing) is read in the direct dialect's
            // form, so its errors name `params.key`.
            let mcp_arguments = ["items", "key_names", "key_name"]
                .iter()
                .any(|field| params.contains_key(*field));
            let direct = matches!(operation, Operation::List | Operation::Search)
                || params.contains_key("key")
                || !mcp_arguments;
            let outcome = if direct {
                run_direct(state, org, operation, &params).await?
            } else {
                run_mcp(state, org, operation, &params).await?
            };
            Ok(outcome.into_result())
        }
    }
}

/// The MCP form: `items`, `key_names`, `key_name`, `prefix`/`limit`/`offset`.
async fn run_mcp(
    state: &AppState,
    org: OrgId,
    operation: Operation,
    args: &Map<String, Value>,
) -> Result<Outcome, ErrorObject> {
    let limits = state.limits();
    let store = state.store();
    match operation {
        Operation::Create => {
            let items = batch(args, "items")?;
            let mut memories = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let path = format!("items[{index}]");
                let Value::Object(item) = item else {
                    return Err(ErrorObject::invalid_params(format!(
                        "`{path}` must be an object"
                    )));
                };
                if item.get("base64").and_then(Value::as_bool) == Some(true) {
                    return Err(ErrorObject::invalid_params(format!(
                        "`{path}.base64`: base64 values are not supported by the local server"
                    )));
                }
                memories.push(NewMemory {
                    key_name: key(item, "key_name", &path)?,
                    value: value(item, &path, limits)?,
                    description: description(item, &path)?.ok_or_else(|| {
                        ErrorObject::invalid_params(format!("`{path}.description` is missing"))
                    })?,
                });
            }
            let keys: Vec<String> = memories.iter().map(|m| m.key_name.clone()).collect();
            let created = store
                .create_many(org, memories, limits.org_quota())
                .await
                .map_err(internal)?;
            let results = keys
                .into_iter()
                .zip(created)
                .map(|(key_name, created)| match created {
                    CreateOutcome::Created => json!({ "key_name": key_name, "status": "success" }),
                    CreateOutcome::AlreadyExists => {
                        item_failure(&key_name, "already_exists", &already_exists(&key_name))
                    }
                    CreateOutcome::OverQuota(exceeded) => {
                        item_failure(&key_name, QUOTA_EXCEEDED, &quota_exceeded(exceeded))
                    }
                })
                .collect();
            Ok(batch_outcome(results))
        }
        Operation::Update => {
            let (key_name, value, updated) =
                update_one(state, org, args, "key_name", "arguments").await?;
            let (status, message) = match updated {
                UpdateOutcome::Updated => {
                    return Ok(Outcome::Success(json!({
                        "results": [{ "key_name": key_name, "value": value, "status": "success" }],
                    })));
                }
                UpdateOutcome::NotFound => ("not_found", not_found(&key_name)),
                UpdateOutcome::OverQuota(exceeded) => (QUOTA_EXCEEDED, quota_exceeded(exceeded)),
            };
            Ok(Outcome::Failure {
                structured: Some(json!({
                    "results": [item_failure(&key_name, status, &message)],
                })),
                message,
            })
        }
        Operation::Get => {
            let keys = key_list(args, "key_names")?;
            let records = store.get_many(org, keys.clone()).await.map_err(internal)?;
            let results: Vec<Value> = keys
                .iter()
                .zip(records)
                .map(|(key_name, record)| match record {
                    Some(record) => found_item(key_name, &record),
                    None => item_failure(key_name, "not_found", &not_found(key_name)),
                })
                .collect();
            // Never `isError`: a missing key is an item whose status is not
            // `success`, which is how every known client tests for presence.
            Ok(Outcome::Success(json!({ "results": results })))
        }
        Operation::Delete => {
            let keys = key_list(args, "key_names")?;
            let deleted = store
                .delete_many(org, keys.clone())
                .await
                .map_err(internal)?;
            let results = keys
                .iter()
                .zip(deleted)
                .map(|(key_name, deleted)| {
                    if deleted {
                        json!({ "key_name": key_name, "status": "success" })
                    } else {
                        item_failure(key_name, "not_found", &not_found(key_name))
                    }
                })
                .collect();
            Ok(batch_outcome(results))
        }
        Operation::List => {
            let page = list_page(state, org, args).await?;
            let keys: Vec<Value> = page
                .keys
                .iter()
                .map(|info| {
                    json!({
                        "key_name": info.key_name,
                        "description": info.description,
                        "size": info.size,
                        "created_at": info.created_at,
                        "updated_at": info.updated_at,
                    })
                })
                .collect();
            Ok(page.outcome(keys))
        }
        Operation::Search => {
            let results: Vec<Value> = search(state, org, args)
                .await?
                .into_iter()
                .map(|found| {
                    json!({
                        "key_name": found.key_name,
                        "value": found.record.value,
                        "score": score(&found),
                        "description": found.record.description,
                        "created_at": found.record.created_at,
                        "updated_at": found.record.updated_at,
                    })
                })
                .collect();
            Ok(Outcome::Success(
                json!({ "count": results.len(), "results": results }),
            ))
        }
    }
}

/// `update_memory` of one key, whichever dialect named it: the key (under
/// `key_field`), the new value and what became of the update.
async fn update_one(
    state: &AppState,
    org: OrgId,
    map: &Map<String, Value>,
    key_field: &str,
    path: &str,
) -> Result<(String, String, UpdateOutcome), ErrorObject> {
    let key_name = key(map, key_field, path)?;
    let value = value(map, path, state.limits())?;
    let description = description(map, path)?;
    let updated = state
        .store()
        .update(
            org,
            key_name.clone(),
            value.clone(),
            description,
            state.limits().org_quota(),
        )
        .await
        .map_err(internal)?;
    Ok((key_name, value, updated))
}

/// The direct form: `{key, value}`, `{key}`, `{prefix}`; results `{key, value}`,
/// keys as plain strings.
async fn run_direct(
    state: &AppState,
    org: OrgId,
    operation: Operation,
    params: &Map<String, Value>,
) -> Result<Outcome, ErrorObject> {
    let limits = state.limits();
    let store = state.store();
    let success = |key: &str, value: Option<&str>| {
        let mut item = json!({ "key": key, "status": "success" });
        if let (Some(value), Some(item)) = (value, item.as_object_mut()) {
            item.insert("value".into(), Value::String(value.to_owned()));
        }
        Outcome::Success(json!({ "results": [item] }))
    };
    let failure = |message: String| Outcome::Failure {
        message,
        structured: None,
    };
    match operation {
        Operation::Create => {
            let key_name = key(params, "key", "params")?;
            let value = value(params, "params", limits)?;
            let memory = NewMemory {
                key_name: key_name.clone(),
                value: value.clone(),
                description: description(params, "params")?.unwrap_or_default(),
            };
            let created = store
                .create_many(org, vec![memory], limits.org_quota())
                .await
                .map_err(internal)?;
            Ok(match created.first() {
                Some(CreateOutcome::Created) => success(&key_name, Some(&value)),
                Some(CreateOutcome::OverQuota(exceeded)) => failure(quota_exceeded(*exceeded)),
                Some(CreateOutcome::AlreadyExists) | None => failure(already_exists(&key_name)),
            })
        }
        Operation::Update => {
            let (key_name, value, updated) =
                update_one(state, org, params, "key", "params").await?;
            Ok(match updated {
                UpdateOutcome::Updated => success(&key_name, Some(&value)),
                UpdateOutcome::NotFound => failure(not_found(&key_name)),
                UpdateOutcome::OverQuota(exceeded) => failure(quota_exceeded(exceeded)),
            })
        }
        Operation::Get => {
            let key_name = key(params, "key", "params")?;
            let mut records = store
                .get_many(org, vec![key_name.clone()])
                .await
                .map_err(internal)?;
            Ok(match records.pop().flatten() {
                Some(record) => success(&key_name, Some(&record.value)),
                None => failure(not_found(&key_name)),
            })
        }
        Operation::Delete => {
            let key_name = key(params, "key", "params")?;
            let deleted = store
                .delete_many(org, vec![key_name.clone()])
                .await
                .map_err(internal)?;
            Ok(if deleted.first() == Some(&true) {
                success(&key_name, None)
            } else {
                failure(not_found(&key_name))
            })
        }
        Operation::List => {
            let page = list_page(state, org, params).await?;
            let keys: Vec<Value> = page
                .keys
                .iter()
                .map(|info| Value::String(info.key_name.clone()))
                .collect();
            Ok(page.outcome(keys))
        }
        Operation::Search => {
            let results: Vec<Value> = search(state, org, params)
                .await?
                .into_iter()
                .map(|found| {
                    json!({
                        "key": found.key_name,
                        "value": found.record.value,
                        "score": score(&found),
                    })
                })
                .collect();
            Ok(Outcome::Success(
                json!({ "count": results.len(), "results": results }),
            ))
        }
    }
}

/// `search_memories`: a plain text match of `query` (required, ASCII case
/// ignored) against keys and values, among the keys under `prefix` (as in
/// `list_keys`); at most `limit` results (default 10, at most [`MAX_BATCH`]),
/// keys that match before values that do, then in key order.
async fn search(
    state: &AppState,
    org: OrgId,
    args: &Map<String, Value>,
) -> Result<Vec<crate::store::Found>, ErrorObject> {
    let query = match args.get("query") {
        Some(Value::String(query)) if !query.is_empty() => query.clone(),
        Some(Value::String(_)) => {
            return Err(ErrorObject::invalid_params("`query` must not be empty"));
        }
        Some(_) => return Err(ErrorObject::invalid_params("`query` must be a string")),
        None => return Err(ErrorObject::invalid_params("`query` is missing")),
    };
    if query.len() > MAX_QUERY_BYTES {
        return Err(ErrorObject::invalid_params(format!(
            "`query` is longer than {MAX_QUERY_BYTES} bytes"
        )));
    }
    let pattern = like_prefix(args)?;
    let limit = integer(args, "limit", DEFAULT_SEARCH_LIMIT)?;
    if limit < 1 {
        return Err(ErrorObject::invalid_params(format!(
            "`limit` must be at least 1, got {limit}"
        )));
    }
    state
        .store()
        .search(org, query, pattern, limit.min(MAX_BATCH as i64))
        .await
        .map_err(internal)
}

/// A match in the key scores 1, a match in the value only 0.5 (the hosted
/// service's scores are semantic; these only order the results the same way).
fn score(found: &crate::store::Found) -> f64 {
    if found.in_key { 1.0 } else { 0.5 }
}

struct ListPage {
    keys: Vec<crate::store::KeyInfo>,
    total: i64,
    offset: i64,
    limit: i64,
}

impl ListPage {
    /// The `list_keys` result: `keys` (each dialect's form of this page's
    /// keys) with the page's counts, and where the next page starts.
    fn outcome(&self, keys: Vec<Value>) -> Outcome {
        let next_offset = self.offset + keys.len() as i64;
        let has_more = next_offset < self.total;
        Outcome::Success(json!({
            "count": keys.len(),
            "keys": keys,
            "total": self.total,
            "offset": self.offset,
            "limit": self.limit,
            "has_more": has_more,
            "next_offset": has_more.then_some(next_offset),
        }))
    }
}

/// `prefix` (a SQL LIKE prefix: `%` and `_` are wildcards unless escaped with
/// `\`), `limit` (default and at most [`MAX_BATCH`], the hosted service's
/// page size: a larger one gets a full page and `has_more`), `offset`
/// (default 0). Both dialects page the same way, so no call returns more than
/// one page however many keys match.
async fn list_page(
    state: &AppState,
    org: OrgId,
    args: &Map<String, Value>,
) -> Result<ListPage, ErrorObject> {
    let pattern = like_prefix(args)?;
    let limit = integer(args, "limit", MAX_BATCH as i64)?;
    if limit < 1 {
        return Err(ErrorObject::invalid_params(format!(
            "`limit` must be at least 1, got {limit}"
        )));
    }
    let limit = limit.min(MAX_BATCH as i64);
    let offset = integer(args, "offset", 0)?;
    if offset < 0 {
        return Err(ErrorObject::invalid_params(format!(
            "`offset` must not be negative, got {offset}"
        )));
    }
    let page = state
        .store()
        .list(org, pattern, limit, offset)
        .await
        .map_err(internal)?;
    Ok(ListPage {
        keys: page.keys,
        total: page.total,
        offset,
        limit,
    })
}

/// The SQL `LIKE` pattern of the `prefix` argument: the prefix, then `%`.
fn like_prefix(args: &Map<String, Value>) -> Result<String, ErrorObject> {
    let prefix = match args.get("prefix") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(prefix)) => prefix.clone(),
        Some(_) => return Err(ErrorObject::invalid_params("`prefix` must be a string")),
    };
    if prefix.len() > MAX_KEY_BYTES {
        return Err(ErrorObject::invalid_params(format!(
            "`prefix` is longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    // An odd run of trailing backslashes would escape the `%` appended below.
    let trailing_escapes = prefix.bytes().rev().take_while(|&b| b == b'\\').count();
    if trailing_escapes % 2 == 1 {
        return Err(ErrorObject::invalid_params(
            "`prefix` ends with an unfinished `\\` escape",
        ));
    }
    Ok(format!("{prefix}%"))
}

/// A batch where every item failed is a tool error too, so that clients that
/// only look at `isError` (like the TypeScript client) still see the failure; the
/// per-item results stay in `structuredContent`.
fn batch_outcome(results: Vec<Value>) -> Outcome {
    let first_error = results
        .iter()
        .all(|item| item.get("status").and_then(Value::as_str) != Some("success"))
        .then(|| {
            results
                .first()
                .and_then(|item| item.get("error"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .flatten();
    let structured = json!({ "results": results });
    match first_error {
        Some(message) => Outcome::Failure {
            message,
            structured: Some(structured),
        },
        None => Outcome::Success(structured),
    }
}

fn found_item(key_name: &str, record: &Record) -> Value {
    json!({
        "key_name": key_name,
        "status": "success",
        "value": record.value,
        "description": record.description,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    })
}

fn item_failure(key_name: &str, status: &str, message: &str) -> Value {
    json!({ "key_name": key_name, "status": status, "error": message })
}

fn not_found(key: &str) -> String {
    format!("key not found: {key}")
}

fn already_exists(key: &str) -> String {
    format!("key already exists: {key}")
}

/// The item `status` of a write refused by an organisation quota.
const QUOTA_EXCEEDED: &str = "quota_exceeded";

/// Says which quota a write would break and what to do; starts with
/// "organization quota exceeded" so clients can tell it apart.
fn quota_exceeded(exceeded: QuotaExceeded) -> String {
    match exceeded {
        QuotaExceeded::Keys { limit } => format!(
            "organization quota exceeded: it already holds {limit} keys, the most allowed; \
             delete keys to make room"
        ),
        QuotaExceeded::Bytes { limit, would_be } => format!(
            "organization quota exceeded: this write would store {would_be} bytes, over the \
             limit of {limit} bytes; delete or shrink values to make room"
        ),
    }
}

fn internal(error: crate::Error) -> ErrorObject {
    tracing::error!(%error, "storage failed");
    ErrorObject::internal_error("internal error")
}

/// `params` as an object; absent params count as an empty object.
fn object(value: Value, path: &str) -> Result<Map<String, Value>, ErrorObject> {
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        _ => Err(ErrorObject::invalid_params(format!(
            "`{path}` must be an object"
        ))),
    }
}

fn string<'a>(
    map: &'a Map<String, Value>,
    field: &str,
    path: &str,
) -> Result<Option<&'a str>, ErrorObject> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ErrorObject::invalid_params(format!(
            "`{path}.{field}` must be a string"
        ))),
    }
}

fn key(map: &Map<String, Value>, field: &str, path: &str) -> Result<String, ErrorObject> {
    let key = string(map, field, path)?
        .ok_or_else(|| ErrorObject::invalid_params(format!("`{path}.{field}` is missing")))?;
    check_key(key, &format!("{path}.{field}"))?;
    Ok(key.to_owned())
}

fn check_key(key: &str, path: &str) -> Result<(), ErrorObject> {
    if key.is_empty() {
        return Err(ErrorObject::invalid_params(format!("`{path}` is empty")));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ErrorObject::invalid_params(format!(
            "`{path}` is longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(ErrorObject::invalid_params(format!(
            "`{path}` contains a control character"
        )));
    }
    if key.starts_with('@') {
        return Err(ErrorObject::invalid_params(format!(
            "`{path}`: cross-organization keys (`@org/...`) are not supported by the local server"
        )));
    }
    Ok(())
}

fn value(map: &Map<String, Value>, path: &str, limits: &Limits) -> Result<String, ErrorObject> {
    let value = string(map, "value", path)?
        .ok_or_else(|| ErrorObject::invalid_params(format!("`{path}.value` is missing")))?;
    if value.len() > limits.max_value_bytes {
        return Err(ErrorObject::invalid_params(format!(
            "`{path}.value` is {} bytes, over the limit of {} bytes",
            value.len(),
            limits.max_value_bytes
        )));
    }
    Ok(value.to_owned())
}

fn description(map: &Map<String, Value>, path: &str) -> Result<Option<String>, ErrorObject> {
    let description = string(map, "description", path)?;
    if let Some(description) = description
        && description.len() > MAX_DESCRIPTION_BYTES
    {
        return Err(ErrorObject::invalid_params(format!(
            "`{path}.description` is longer than {MAX_DESCRIPTION_BYTES} bytes"
        )));
    }
    Ok(description.map(str::to_owned))
}

/// A 1–100 element array argument.
fn batch<'a>(map: &'a Map<String, Value>, field: &str) -> Result<&'a [Value], ErrorObject> {
    let items = match map.get(field) {
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ErrorObject::invalid_params(format!(
                "`{field}` must be an array"
            )));
        }
        None => return Err(ErrorObject::invalid_params(format!("`{field}` is missing"))),
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ErrorObject::invalid_params(format!(
            "`{field}` must hold 1 to {MAX_BATCH} entries, got {}",
            items.len()
        )));
    }
    Ok(items)
}

fn key_list(map: &Map<String, Value>, field: &str) -> Result<Vec<String>, ErrorObject> {
    batch(map, field)?
        .iter()
        .enumerate()
        .map(|(index, key)| {
            let path = format!("{field}[{index}]");
            let Value::String(key) = key else {
                return Err(ErrorObject::invalid_params(format!(
                    "`{path}` must be a string"
                )));
            };
            check_key(key, &path)?;
            Ok(key.clone())
        })
        .collect()
}

fn integer(map: &Map<String, Value>, field: &str, default: i64) -> Result<i64, ErrorObject> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(number)) => number.as_i64().ok_or_else(|| {
            ErrorObject::invalid_params(format!("`{field}` must be a whole number"))
        }),
        Some(_) => Err(ErrorObject::invalid_params(format!(
            "`{field}` must be a number"
        ))),
    }
}

/// MCP `initialize`: this server is stateless, so no session id is issued.
fn initialize(params: &Value) -> Value {
    let requested = params.get("protocolVersion").and_then(Value::as_str);
    let version = requested
        .filter(|version| PROTOCOL_VERSIONS.contains(version))
        .unwrap_or(PROTOCOL_VERSIONS[0]);
    json!({
        "protocolVersion": version,
        "capabilities": { "tools": { "listChanged": false } },
        "serverInfo": { "name": "delibera-ensue-local", "version": env!("CARGO_PKG_VERSION") },
    })
}

/// MCP `tools/list`: the memory tools and their arguments.
fn tools_list() -> Value {
    let key_names = json!({
        "type": "object",
        "properties": {
            "key_names": { "type": "array", "items": { "type": "string" }, "minItems": 1, "maxItems": MAX_BATCH },
        },
        "required": ["key_names"],
    });
    json!({ "tools": [
        {
            "name": "create_memory",
            "description": "Create memories; each key must not exist yet.",
            "inputSchema": {
                "type": "object",
                "properties": { "items": {
                    "type": "array", "minItems": 1, "maxItems": MAX_BATCH,
                    "items": {
                        "type": "object",
                        "properties": {
                            "key_name": { "type": "string" },
                            "value": { "type": "string" },
                            "description": { "type": "string" },
                        },
                        "required": ["key_name", "value", "description"],
                    },
                }},
                "required": ["items"],
            },
        },
        {
            "name": "get_memory",
            "description": "Read memories by key.",
            "inputSchema": key_names,
        },
        {
            "name": "update_memory",
            "description": "Replace the value of an existing key.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "key_name": { "type": "string" },
                    "value": { "type": "string" },
                    "description": { "type": "string" },
                },
                "required": ["key_name", "value"],
            },
        },
        {
            "name": "delete_memory",
            "description": "Delete memories by key.",
            "inputSchema": key_names,
        },
        {
            "name": "list_keys",
            "description": "List keys matching a SQL LIKE prefix (escape % and _ with \\), one page at a time.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "prefix": { "type": "string" },
                    "limit": { "type": "integer", "minimum": 1, "maximum": MAX_BATCH },
                    "offset": { "type": "integer", "minimum": 0 },
                },
            },
        },
        {
            "name": "search_memories",
            "description": "Find memories whose key or value contains the query (plain text, ASCII case ignored).",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "query": { "type": "string", "minLength": 1 },
                    "limit": { "type": "integer", "minimum": 1, "maximum": MAX_BATCH },
                    "prefix": { "type": "string" },
                },
                "required": ["query"],
            },
        },
    ]})
}
