//! `EnsueClient`: the HTTP adapter of the [`Memory`] port.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use delibera_jsonrpc::{Id, Request, ResponsePayload, read_response};
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

use crate::config::retry_delay;
use crate::error::{excerpt, retry_after_header};
use crate::{Dialect, EnsueConfig, Error, Memory, Result};

/// The most keys the service takes in one batch, and the largest `list_keys` page.
pub const MAX_BATCH: usize = 100;

/// The largest response body read before giving up (values are strings of
/// any size, but a runaway body must not exhaust memory).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The `Accept` header MCP Streamable HTTP requires.
const ACCEPT_BOTH: &str = "application/json, text/event-stream";

/// Tool names (and, in the direct dialect, method names).
mod tool {
    pub(super) const CREATE: &str = "create_memory";
    pub(super) const UPDATE: &str = "update_memory";
    pub(super) const GET: &str = "get_memory";
    pub(super) const LIST: &str = "list_keys";
    pub(super) const DELETE: &str = "delete_memory";
}

/// A client of the Ensue memory service, speaking either [`Dialect`].
///
/// Cheap to clone (clones share the connection pool and the request counter).
#[derive(Debug, Clone)]
pub struct EnsueClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    config: EnsueConfig,
    /// `Bearer <api key>`, built once (marked sensitive: never printed).
    authorization: HeaderValue,
    next_id: AtomicU64,
}

impl EnsueClient {
    /// A client for `config`.
    pub fn new(config: EnsueConfig) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("delibera-ensue/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| Error::Config {
                reason: format!("cannot build the HTTP client: {error}"),
            })?;
        let mut authorization =
            HeaderValue::try_from(format!("Bearer {}", config.api_key.as_str())).map_err(|_| {
                Error::Config {
                    reason: "the API key is not a valid HTTP header value".to_owned(),
                }
            })?;
        authorization.set_sensitive(true);
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                config,
                authorization,
                next_id: AtomicU64::new(1),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &EnsueConfig {
        &self.inner.config
    }

    fn dialect(&self) -> Dialect {
        self.inner.config.dialect
    }

    /// Calls `tool` with MCP `arguments` or direct `params`, whichever the
    /// dialect wants, and returns the tool's structured result and how many
    /// attempts it took.
    async fn call_tool(
        &self,
        tool: &str,
        mcp_arguments: Value,
        direct_params: Value,
    ) -> (Result<Value>, u32) {
        self.call_tool_reading(tool, mcp_arguments, direct_params, tool_payload)
            .await
    }

    /// [`call_tool`](Self::call_tool) with the tool's result read by `payload`.
    async fn call_tool_reading(
        &self,
        tool: &str,
        mcp_arguments: Value,
        direct_params: Value,
        payload: fn(Value) -> Result<Value>,
    ) -> (Result<Value>, u32) {
        let (method, params) = match self.dialect() {
            Dialect::Mcp => (
                "tools/call",
                json!({ "name": tool, "arguments": mcp_arguments }),
            ),
            Dialect::Direct => (tool, direct_params),
        };
        let id = Id::from(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let request = Request::new(id, method, params);
        let backoff = &self.inner.config.retry;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = self.send(&request).await;
            let delay = match &outcome {
                // Every call here is safe to repeat: reads, whole-value
                // updates, deletes, and creates (see `Memory::create` below).
                Err(error) => retry_delay(backoff, attempts, error),
                _ => None,
            };
            match delay {
                Some(delay) => {
                    tracing::debug!(tool, attempts, ?delay, "retrying Ensue call");
                    tokio::time::sleep(delay).await;
                }
                None => return (outcome.and_then(payload), attempts),
            }
        }
    }

    /// One HTTP round trip; returns the JSON-RPC `result`.
    async fn send(&self, request: &Request) -> Result<Value> {
        let config = &self.inner.config;
        let response = self
            .inner
            .http
            .post(config.base_url.clone())
            .header(AUTHORIZATION, self.inner.authorization.clone())
            .header(ACCEPT, ACCEPT_BOTH)
            .json(request)
            .send()
            .await
            .map_err(Error::Transport)?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let retry_after = retry_after_header(response.headers());
        let body = read_body(response).await?;
        if !status.is_success() {
            let body = excerpt(&String::from_utf8_lossy(&body));
            return Err(Error::from_http_status(status.as_u16(), retry_after, body));
        }
        let response =
            read_response(&body, content_type.as_deref(), &request.id).map_err(|error| {
                Error::Malformed {
                    reason: error.to_string(),
                    body: error.body().to_owned(),
                }
            })?;
        match response.payload {
            ResponsePayload::Success(result) => Ok(result),
            ResponsePayload::Failure(error) => Err(Error::JsonRpc {
                code: error.code,
                message: error.message,
            }),
        }
    }

    /// Reads one batch. A batch that fails as a whole with "not found"
    /// (rather than per item) is asked again key by key, so that one missing
    /// key cannot hide the others.
    async fn get_chunk(&self, keys: &[String]) -> Result<HashMap<String, String>> {
        if let Some(found) = self.get_chunk_once(keys).await? {
            return Ok(found);
        }
        let mut found = HashMap::new();
        if keys.len() > 1 {
            for key in keys {
                found.extend(
                    self.get_chunk_once(std::slice::from_ref(key))
                        .await?
                        .unwrap_or_default(),
                );
            }
        }
        Ok(found)
    }

    /// One `get_memory` call; `None` when the whole call said "not found".
    async fn get_chunk_once(&self, keys: &[String]) -> Result<Option<HashMap<String, String>>> {
        let direct_key = keys.first().cloned().unwrap_or_default();
        // The hot path of every idle worker: only the dialect's own form is built.
        let (mcp, direct) = match self.dialect() {
            Dialect::Mcp => (json!({ "key_names": keys }), Value::Null),
            Dialect::Direct => (Value::Null, json!({ "key": direct_key })),
        };
        let (payload, _) = self.call_tool(tool::GET, mcp, direct).await;
        let payload = match payload.map_err(|error| classify_error(error, &direct_key)) {
            Err(error) if error.is_not_found() => return Ok(None),
            other => other?,
        };
        let mut found = HashMap::new();
        for (index, item) in results(&payload)?.iter().enumerate() {
            // The direct dialect's single-key answer may omit the key name: it is then
            // the key we asked for, matched by position.
            let only = if keys.len() == 1 {
                keys.first().cloned()
            } else {
                None
            };
            let key = match item_key(item).or(only) {
                Some(key) => key,
                None => keys.get(index).cloned().unwrap_or_default(),
            };
            if !keys.contains(&key) {
                continue;
            }
            // ensue-cli and the TypeScript client treat any status but success as "not there".
            if item_outcome(item, &key).is_err() {
                continue;
            }
            match item.get("value") {
                Some(Value::String(value)) => {
                    found.insert(key, value.clone());
                }
                Some(Value::Null) | None => {}
                Some(other) => {
                    found.insert(key, other.to_string());
                }
            }
        }
        Ok(Some(found))
    }

    /// One `list_keys` page from `offset`. The direct dialect asks for the
    /// first page as a plain `{prefix}`, as its other clients do, and adds
    /// `offset` only for later pages, which a server says exist through
    /// `has_more`.
    async fn list_page(&self, prefix: &str, offset: usize) -> Result<ListedPage> {
        let direct = if offset == 0 {
            json!({ "prefix": prefix })
        } else {
            json!({ "prefix": prefix, "offset": offset })
        };
        let (payload, _) = self
            .call_tool(
                tool::LIST,
                json!({ "prefix": like_escape(prefix), "limit": MAX_BATCH, "offset": offset }),
                direct,
            )
            .await;
        let payload = payload?;
        let keys = payload
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Malformed {
                reason: "list_keys result has no `keys` array".to_owned(),
                body: excerpt(&payload.to_string()),
            })?;
        Ok(ListedPage {
            keys: keys
                .iter()
                .filter_map(|item| match item {
                    Value::String(key) => Some(key.clone()),
                    other => item_key(other),
                })
                .collect(),
            has_more: payload.get("has_more").and_then(Value::as_bool),
            next_offset: payload
                .get("next_offset")
                .and_then(Value::as_u64)
                .and_then(|next| usize::try_from(next).ok()),
        })
    }

    async fn delete_chunk(&self, keys: &[String]) -> Result<()> {
        let direct_key = keys.first().cloned().unwrap_or_default();
        let (payload, _) = self
            .call_tool(
                tool::DELETE,
                json!({ "key_names": keys }),
                json!({ "key": direct_key }),
            )
            .await;
        let payload = match payload.map_err(|error| classify_error(error, &direct_key)) {
            Err(error) if error.is_not_found() => return Ok(()),
            other => other?,
        };
        for item in optional_results(&payload) {
            let key = item_key(item).unwrap_or_else(|| direct_key.clone());
            match item_outcome(item, &key) {
                Err(error) if error.is_not_found() => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Deletes many keys, in batches of at most [`MAX_BATCH`] (one call per
    /// key in the direct dialect). Missing keys are not an error.
    pub async fn delete_many(&self, keys: &[String]) -> Result<()> {
        for chunk in self.chunks(keys) {
            self.delete_chunk(chunk).await?;
        }
        Ok(())
    }

    /// One `create_memory` call of up to [`MAX_BATCH`] items, one outcome per item.
    async fn create_chunk(&self, items: &[(String, String)]) -> Result<Vec<Result<()>>> {
        if let [(key, value)] = items {
            return Ok(vec![self.create(key, value).await]);
        }
        let mcp_items: Vec<Value> = items
            .iter()
            .map(|(key, value)| {
                json!({ "key_name": key, "value": value, "description": format!("Memory at {key}") })
            })
            .collect();
        let (payload, attempts) = self
            .call_tool_reading(
                tool::CREATE,
                json!({ "items": mcp_items }),
                Value::Null,
                batch_payload,
            )
            .await;
        let first_key = items
            .first()
            .map(|(key, _)| key.as_str())
            .unwrap_or_default();
        let payload = match payload.map_err(|error| classify_error(error, first_key)) {
            // A service that refuses the whole batch for one present key says
            // nothing of the others (it may have created some or none): ask
            // item by item, so each gets its own answer.
            Err(error) if error.is_already_exists() => {
                let mut outcomes = Vec::with_capacity(items.len());
                for (key, value) in items {
                    outcomes.push(self.create(key, value).await);
                }
                return Ok(outcomes);
            }
            other => other?,
        };
        let mut by_key: HashMap<String, Result<()>> = HashMap::new();
        for (index, item) in optional_results(&payload).iter().enumerate() {
            let Some(key) = item_key(item).or_else(|| items.get(index).map(|(key, _)| key.clone()))
            else {
                continue;
            };
            let outcome = item_outcome(item, &key);
            by_key.insert(key, outcome);
        }
        // An item the answer does not mention succeeded, as for a single create.
        let mut outcomes: Vec<Result<()>> = items
            .iter()
            .map(|(key, _)| by_key.remove(key).unwrap_or(Ok(())))
            .collect();
        // An earlier attempt may have landed before its answer was lost:
        // finding our own value there means that create succeeded.
        if attempts > 1 {
            let present: Vec<String> = items
                .iter()
                .zip(&outcomes)
                .filter(|(_, outcome)| matches!(outcome, Err(error) if error.is_already_exists()))
                .map(|((key, _), _)| key.clone())
                .collect();
            if !present.is_empty() {
                let stored = self.get_many(&present).await?;
                for ((key, value), outcome) in items.iter().zip(outcomes.iter_mut()) {
                    if outcome.is_err() && stored.get(key) == Some(value) {
                        *outcome = Ok(());
                    }
                }
            }
        }
        Ok(outcomes)
    }

    fn chunks<'a, T>(&self, keys: &'a [T]) -> std::slice::Chunks<'a, T> {
        keys.chunks(Memory::max_batch(self))
    }
}

#[async_trait::async_trait]
impl Memory for EnsueClient {
    async fn create(&self, key: &str, value: &str) -> Result<()> {
        let (payload, attempts) = self
            .call_tool(
                tool::CREATE,
                json!({ "items": [{ "key_name": key, "value": value, "description": format!("Memory at {key}") }] }),
                json!({ "key": key, "value": value }),
            )
            .await;
        let outcome = payload
            .and_then(|payload| check_items(&payload, key))
            .map_err(|error| classify_error(error, key));
        match outcome {
            // An earlier attempt may have landed before its answer was lost:
            // finding our own value there means the create succeeded.
            Err(error) if error.is_already_exists() && attempts > 1 => match self.get(key).await? {
                Some(stored) if stored == value => Ok(()),
                _ => Err(error),
            },
            other => other,
        }
    }

    async fn update(&self, key: &str, value: &str) -> Result<()> {
        let (payload, _) = self
            .call_tool(
                tool::UPDATE,
                json!({ "key_name": key, "value": value }),
                json!({ "key": key, "value": value }),
            )
            .await;
        payload
            .and_then(|payload| check_items(&payload, key))
            .map_err(|error| match error {
                // The reference client reads an HTTP 404 to an update as a
                // missing key, so `upsert` goes on to create it. Read as an
                // expired MCP session instead, the create fails the same
                // way and the 404 is reported: either reading ends right.
                Error::UnexpectedStatus { status: 404, .. } => Error::NotFound {
                    key: key.to_owned(),
                },
                other => classify_error(other, key),
            })
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        let mut found = self.get_chunk(&[key.to_owned()]).await?;
        Ok(found.remove(key))
    }

    async fn get_many(&self, keys: &[String]) -> Result<HashMap<String, String>> {
        let mut found = HashMap::new();
        for chunk in self.chunks(keys) {
            found.extend(self.get_chunk(chunk).await?);
        }
        Ok(found)
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        let mut offset = 0;
        loop {
            let page = self.list_page(prefix, offset).await?;
            let received = page.keys.len();
            let before = seen.len();
            for key in page.keys {
                if seen.insert(key.clone()) {
                    keys.push(key);
                }
            }
            // A server that says whether more follow is believed; otherwise
            // a full MCP page means "ask again" (the hosted service pages by
            // 100), and a direct answer is everything.
            let more = page.has_more.unwrap_or(match self.dialect() {
                Dialect::Mcp => received >= MAX_BATCH,
                Dialect::Direct => false,
            });
            // A page with nothing new means the server ignores `offset`, and
            // asking again would loop forever.
            if !more || seen.len() == before {
                break;
            }
            offset = page
                .next_offset
                .filter(|&next| next > offset)
                .unwrap_or(offset + received);
        }
        // The server matches with LIKE; keep exactly the literal prefix.
        keys.retain(|key| key.starts_with(prefix));
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.delete_chunk(&[key.to_owned()]).await
    }

    /// `create_memory` with up to [`MAX_BATCH`] items per call (one call per
    /// item in the direct dialect).
    async fn create_many(&self, items: &[(String, String)]) -> Result<Vec<Result<()>>> {
        let mut outcomes = Vec::with_capacity(items.len());
        for chunk in self.chunks(items) {
            outcomes.extend(self.create_chunk(chunk).await?);
        }
        Ok(outcomes)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        EnsueClient::delete_many(self, keys).await
    }

    /// [`MAX_BATCH`] in the MCP dialect; 1 in the direct one, whose calls
    /// name one key each.
    fn max_batch(&self) -> usize {
        match self.dialect() {
            Dialect::Mcp => MAX_BATCH,
            Dialect::Direct => 1,
        }
    }
}

/// One page of a `list_keys` answer.
struct ListedPage {
    keys: Vec<String>,
    /// The server's `has_more`, when it sends one.
    has_more: Option<bool>,
    /// The server's `next_offset`, when it sends one.
    next_offset: Option<usize>,
}

/// Reads the whole body, up to [`MAX_BODY_BYTES`].
async fn read_body(response: reqwest::Response) -> Result<Vec<u8>> {
    let mut stream = response.bytes_stream();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Error::Transport)?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(Error::Malformed {
                reason: format!("response body larger than {MAX_BODY_BYTES} bytes"),
                body: String::new(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The tool's structured result: `structuredContent`, else the JSON in
/// `content[0].text`, else (direct servers) the result object itself.
fn tool_payload(mut result: Value) -> Result<Value> {
    if result.get("isError").and_then(Value::as_bool) != Some(true)
        && let Some(structured) = result
            .get_mut("structuredContent")
            .filter(|structured| structured.is_object())
    {
        return Ok(structured.take());
    }
    let text = result
        .get("content")
        .and_then(|content| content.get(0))
        .and_then(|first| first.get("text"))
        .and_then(Value::as_str);
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        return Err(Error::Tool {
            message: text.map_or_else(|| excerpt(&result.to_string()), excerpt),
        });
    }
    if let Some(text) = text {
        return serde_json::from_str(text).map_err(|error| Error::Malformed {
            reason: format!("content[0].text is not JSON: {error}"),
            body: excerpt(text),
        });
    }
    if result.get("results").is_some() || result.get("keys").is_some() {
        return Ok(result);
    }
    Err(Error::Malformed {
        reason: "result has neither structuredContent nor content[0].text".to_owned(),
        body: excerpt(&result.to_string()),
    })
}

/// A batch tool's result: like [`tool_payload`], but a tool error that
/// still carries per-item `results` (every item failed) is read for them.
fn batch_payload(mut result: Value) -> Result<Value> {
    if result.get("isError").and_then(Value::as_bool) == Some(true)
        && let Some(structured) = result
            .get_mut("structuredContent")
            .filter(|structured| structured.get("results").is_some_and(Value::is_array))
    {
        return Ok(structured.take());
    }
    tool_payload(result)
}

/// `results[]`, which must be there.
fn results(payload: &Value) -> Result<&Vec<Value>> {
    payload
        .get("results")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Malformed {
            reason: "result has no `results` array".to_owned(),
            body: excerpt(&payload.to_string()),
        })
}

/// `results[]` where it is optional (writes whose answer nobody reads).
fn optional_results(payload: &Value) -> &[Value] {
    payload
        .get("results")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Fails on the first item of a write's `results[]` that did not succeed.
fn check_items(payload: &Value, key: &str) -> Result<()> {
    for item in optional_results(payload) {
        let item_key = item_key(item).unwrap_or_else(|| key.to_owned());
        item_outcome(item, &item_key)?;
    }
    Ok(())
}

/// `key_name` (MCP) or `key` (the direct dialect) of a result item.
fn item_key(item: &Value) -> Option<String> {
    item.get("key_name")
        .or_else(|| item.get("key"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Whether a result item succeeded. No `status` counts as success (the direct dialect's
/// items have none); any other status is classified by its words.
fn item_outcome(item: &Value, key: &str) -> Result<()> {
    let Some(status) = item.get("status") else {
        return Ok(());
    };
    let status = match status {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let normalized = status.to_ascii_lowercase();
    if matches!(
        normalized.as_str(),
        "success" | "ok" | "created" | "updated" | "deleted"
    ) {
        return Ok(());
    }
    let message = item
        .get("error")
        .or_else(|| item.get("message"))
        .map(|error| match error {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default();
    let words = format!("{normalized} {message}");
    match Reading::of(&words, key) {
        Some(Reading::NotFound) => Err(Error::NotFound {
            key: key.to_owned(),
        }),
        Some(Reading::AlreadyExists) => Err(Error::AlreadyExists {
            key: key.to_owned(),
        }),
        Some(Reading::QuotaExceeded) => Err(Error::QuotaExceeded {
            key: key.to_owned(),
            message: excerpt(&message),
        }),
        None => Err(Error::ItemFailed {
            key: key.to_owned(),
            status,
            message: excerpt(&message),
        }),
    }
}

/// What an error text says about the key, where it says anything.
enum Reading {
    NotFound,
    AlreadyExists,
    QuotaExceeded,
}

impl Reading {
    /// Reads an error message about `key`. The key itself is taken out
    /// first: a key such as `reports/quota-missing` says nothing about
    /// what went wrong.
    fn of(text: &str, key: &str) -> Option<Self> {
        let text = if key.is_empty() {
            text.to_owned()
        } else {
            text.replace(key, " ")
        };
        let text = text.to_ascii_lowercase().replace(['_', '-'], " ");
        const EXISTS: &[&str] = &[
            "already exist",
            "already present",
            "duplicate",
            "unique constraint",
            "conflict",
            "exists",
        ];
        const MISSING: &[&str] = &[
            "not found",
            "notfound",
            "not exist",
            "does not exist",
            "doesn't exist",
            "no such",
            "missing",
        ];
        // A quota message may name keys that exist; it is read first.
        // "does not exist" contains "exist", so missing comes before exists.
        if text.contains("quota") {
            Some(Reading::QuotaExceeded)
        } else if MISSING.iter().any(|words| text.contains(words)) {
            Some(Reading::NotFound)
        } else if EXISTS.iter().any(|words| text.contains(words)) {
            Some(Reading::AlreadyExists)
        } else {
            None
        }
    }
}

/// Turns a JSON-RPC or tool error that says "not found" / "already exists" /
/// "quota" into [`Error::NotFound`] / [`Error::AlreadyExists`] /
/// [`Error::QuotaExceeded`] for `key`.
fn classify_error(error: Error, key: &str) -> Error {
    let text = match &error {
        Error::JsonRpc { message, .. } | Error::Tool { message } => message,
        _ => return error,
    };
    match Reading::of(text, key) {
        Some(Reading::NotFound) => Error::NotFound {
            key: key.to_owned(),
        },
        Some(Reading::AlreadyExists) => Error::AlreadyExists {
            key: key.to_owned(),
        },
        Some(Reading::QuotaExceeded) => Error::QuotaExceeded {
            key: key.to_owned(),
            message: excerpt(text),
        },
        None => error,
    }
}

/// Escapes a literal prefix for the server's SQL `LIKE prefix || '%'`.
pub fn like_escape(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len());
    for character in prefix.chars() {
        if matches!(character, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_escape_escapes_wildcards_and_the_escape() {
        assert_eq!(like_escape("a_b%c\\d/e"), "a\\_b\\%c\\\\d/e");
        assert_eq!(like_escape("coordination/tasks/"), "coordination/tasks/");
    }

    #[test]
    fn readings_of_error_texts() {
        for text in [
            "Key not found",
            "memory does not exist",
            "NOT_FOUND",
            "no such key",
        ] {
            assert!(
                matches!(Reading::of(text, "coordination/x"), Some(Reading::NotFound)),
                "{text}"
            );
        }
        for text in [
            "Key already exists",
            "UNIQUE constraint failed",
            "duplicate key",
            "exists",
        ] {
            assert!(
                matches!(
                    Reading::of(text, "coordination/x"),
                    Some(Reading::AlreadyExists)
                ),
                "{text}"
            );
        }
        assert!(matches!(
            Reading::of(
                "organization quota exceeded: it already holds 10 keys",
                "coordination/x"
            ),
            Some(Reading::QuotaExceeded)
        ));
        assert!(Reading::of("internal error", "coordination/x").is_none());
        // Words inside the key do not decide the reading.
        assert!(matches!(
            Reading::of(
                "key coordination/quota-missing not found",
                "coordination/quota-missing"
            ),
            Some(Reading::NotFound)
        ));
        assert!(matches!(
            Reading::of(
                "key reports/exists-check already exists",
                "reports/exists-check"
            ),
            Some(Reading::AlreadyExists)
        ));
        assert!(
            Reading::of(
                "reports/missing-quota: internal error",
                "reports/missing-quota"
            )
            .is_none()
        );
    }

    #[test]
    fn item_statuses() {
        let key = "k";
        assert!(item_outcome(&json!({"status": "success"}), key).is_ok());
        assert!(item_outcome(&json!({"key": "k", "value": "v"}), key).is_ok());
        assert!(
            item_outcome(&json!({"status": "not_found"}), key)
                .unwrap_err()
                .is_not_found()
        );
        assert!(
            item_outcome(
                &json!({"status": "error", "error": "Key already exists"}),
                key
            )
            .unwrap_err()
            .is_already_exists()
        );
        assert!(matches!(
            item_outcome(
                &json!({"status": "quota_exceeded", "error": "over the limit"}),
                key
            ),
            Err(Error::QuotaExceeded { .. })
        ));
        assert!(matches!(
            item_outcome(&json!({"status": "error", "error": "disk on fire"}), key),
            Err(Error::ItemFailed { .. })
        ));
    }
}
