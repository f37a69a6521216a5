//! The NEAR JSON-RPC client: a few methods, typed errors, failover across URLs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use delibera_identity::PublicKey;
use delibera_jsonrpc::{ErrorObject, Id, Request, Response, ResponsePayload};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use url::Url;

use crate::outcome::ExecutionOutcome;
use crate::{AccountId, CryptoHash, Error, Result, SignedTransaction};

/// How long one HTTP request may take; `send_tx` waits for execution, so this is generous.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of an unexpected HTTP body goes into an error.
const BODY_EXCERPT: usize = 200;

/// How long `send_tx` and `tx` wait before answering (`wait_until`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TxExecutionStatus {
    /// Answer at once (like `broadcast_tx_async`); the outcome has no status.
    None,
    /// Once the transaction is in a block.
    Included,
    /// Once it executed in an optimistic block (the default, like `broadcast_tx_commit`).
    #[default]
    ExecutedOptimistic,
    /// Once its block is final.
    IncludedFinal,
    /// Once it executed and all its blocks are final except the last receipts'.
    Executed,
    /// Once everything is final.
    Final,
}

impl TxExecutionStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Included => "INCLUDED",
            Self::ExecutedOptimistic => "EXECUTED_OPTIMISTIC",
            Self::IncludedFinal => "INCLUDED_FINAL",
            Self::Executed => "EXECUTED",
            Self::Final => "FINAL",
        }
    }
}

/// Which block a query or `block` reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BlockReference {
    /// The latest final block (`"finality":"final"`).
    #[default]
    Final,
    /// The latest optimistic block.
    Optimistic,
    /// A block by height.
    Height(u64),
    /// A block by hash.
    Hash(CryptoHash),
}

impl BlockReference {
    fn insert_into(&self, params: &mut serde_json::Map<String, Value>) {
        match self {
            Self::Final => params.insert("finality".into(), "final".into()),
            Self::Optimistic => params.insert("finality".into(), "optimistic".into()),
            Self::Height(height) => params.insert("block_id".into(), (*height).into()),
            Self::Hash(hash) => params.insert("block_id".into(), hash.to_base58().into()),
        };
    }
}

/// `view_access_key`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKeyView {
    /// The key's current nonce; the next transaction uses `nonce + 1`.
    pub nonce: u64,
    /// `"FullAccess"` or `{"FunctionCall": {...}}`, as the node sent it.
    pub permission: Value,
    /// Height of the block the answer was read at.
    pub block_height: u64,
    /// Hash of that block: a recent block hash for a transaction.
    pub block_hash: CryptoHash,
}

/// The header fields of `block` we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeaderView {
    /// Block height.
    pub height: u64,
    /// Block hash.
    pub hash: CryptoHash,
    /// Block timestamp in nanoseconds.
    pub timestamp_nanosec: u64,
}

/// Whether a failed request may be sent to the next URL.
#[derive(Clone, Copy)]
enum Delivery {
    /// A read: any retryable failure moves on.
    Idempotent,
    /// `send_tx`: only when the request certainly never reached a node.
    AtMostOnce,
}

/// A NEAR JSON-RPC client over one or more RPC URLs, tried in order.
///
/// A read moves to the next URL on a transport error, HTTP 429 or 5xx, or a
/// node-internal error. `send_tx` moves on only when the request certainly
/// never arrived (connection refused, 429, 503); otherwise the caller must look
/// the transaction up by hash (see [`crate::TransactionSender`]).
#[derive(Clone)]
pub struct NearRpc {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<Endpoint>,
    http: reqwest::Client,
    next_id: AtomicU64,
}

struct Endpoint {
    url: Url,
    /// Scheme, host and port only: paths and queries may hold API keys.
    origin: String,
}

impl std::fmt::Debug for NearRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origins: Vec<&str> = self
            .inner
            .endpoints
            .iter()
            .map(|e| e.origin.as_str())
            .collect();
        f.debug_struct("NearRpc")
            .field("endpoints", &origins)
            .finish_non_exhaustive()
    }
}

impl NearRpc {
    /// A client for these RPC URLs (tried in order), with [`DEFAULT_TIMEOUT`].
    pub fn new<I, S>(urls: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::with_timeout(urls, DEFAULT_TIMEOUT)
    }

    /// A client whose every HTTP request gives up after `timeout`.
    pub fn with_timeout<I, S>(urls: I, timeout: Duration) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|error| Error::InvalidInput {
                what: "HTTP client configuration",
                reason: error.without_url().to_string(),
            })?;
        Self::with_http_client(urls, http)
    }

    /// A client that sends through `http` (its timeout and TLS settings apply).
    pub fn with_http_client<I, S>(urls: I, http: reqwest::Client) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut endpoints = Vec::new();
        for text in urls {
            let url = Url::parse(text.as_ref()).map_err(|error| Error::InvalidInput {
                what: "RPC URL",
                reason: error.to_string(),
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(Error::InvalidInput {
                    what: "RPC URL",
                    reason: format!("scheme {:?} is not http or https", url.scheme()),
                });
            }
            let origin = url.origin().ascii_serialization();
            endpoints.push(Endpoint { url, origin });
        }
        if endpoints.is_empty() {
            return Err(Error::InvalidInput {
                what: "RPC URL list",
                reason: "at least one URL is required".to_owned(),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                endpoints,
                http,
                next_id: AtomicU64::new(1),
            }),
        })
    }

    /// Calls a contract view method and returns the raw result bytes.
    ///
    /// Both the structured `error` and the legacy in-result `result.error`
    /// string are errors; a panic becomes [`Error::ContractPanic`].
    pub async fn call_function(
        &self,
        contract_id: &AccountId,
        method_name: &str,
        args: &[u8],
        block: &BlockReference,
    ) -> Result<Vec<u8>> {
        let mut params = serde_json::Map::new();
        params.insert("request_type".into(), "call_function".into());
        block.insert_into(&mut params);
        params.insert("account_id".into(), contract_id.as_str().into());
        params.insert("method_name".into(), method_name.into());
        params.insert("args_base64".into(), BASE64.encode(args).into());
        let result = self
            .request("query", Value::Object(params), Delivery::Idempotent)
            .await?;
        legacy_query_error(&result)?;
        #[derive(Deserialize)]
        struct CallResult {
            result: Vec<u8>,
        }
        let call: CallResult = serde_json::from_value(result)
            .map_err(|error| Error::invalid_response("query call_function", error))?;
        Ok(call.result)
    }

    /// Calls a view method with JSON arguments on the final block and decodes
    /// its JSON result.
    pub async fn view<T: DeserializeOwned>(
        &self,
        contract_id: &AccountId,
        method_name: &str,
        args: &Value,
    ) -> Result<T> {
        self.view_at(contract_id, method_name, args, &BlockReference::Final)
            .await
    }

    /// [`NearRpc::view`] of the state at `block`.
    pub async fn view_at<T: DeserializeOwned>(
        &self,
        contract_id: &AccountId,
        method_name: &str,
        args: &Value,
        block: &BlockReference,
    ) -> Result<T> {
        let bytes = self
            .call_function(contract_id, method_name, args.to_string().as_bytes(), block)
            .await?;
        serde_json::from_slice(&bytes).map_err(|error| {
            Error::invalid_response(
                method_name,
                format!("result is not the expected JSON: {error}"),
            )
        })
    }

    /// Reads an access key's nonce and permission.
    pub async fn view_access_key(
        &self,
        account_id: &AccountId,
        public_key: &PublicKey,
        block: &BlockReference,
    ) -> Result<AccessKeyView> {
        let mut params = serde_json::Map::new();
        params.insert("request_type".into(), "view_access_key".into());
        block.insert_into(&mut params);
        params.insert("account_id".into(), account_id.as_str().into());
        params.insert("public_key".into(), public_key.to_near_string().into());
        let result = self
            .request("query", Value::Object(params), Delivery::Idempotent)
            .await?;
        legacy_query_error(&result).map_err(|error| match error {
            Error::ViewFailed { message } if message.contains("does not exist") => {
                Error::UnknownAccessKey {
                    public_key: public_key.to_near_string(),
                }
            }
            other => other,
        })?;
        #[derive(Deserialize)]
        struct Raw {
            nonce: u64,
            permission: Value,
            block_height: u64,
            block_hash: String,
        }
        let raw: Raw = serde_json::from_value(result)
            .map_err(|error| Error::invalid_response("query view_access_key", error))?;
        Ok(AccessKeyView {
            nonce: raw.nonce,
            permission: raw.permission,
            block_height: raw.block_height,
            block_hash: CryptoHash::from_base58(&raw.block_hash)
                .map_err(|error| Error::invalid_response("query view_access_key", error))?,
        })
    }

    /// Reads a block header.
    pub async fn block(&self, block: &BlockReference) -> Result<BlockHeaderView> {
        let mut params = serde_json::Map::new();
        block.insert_into(&mut params);
        let result = self
            .request("block", Value::Object(params), Delivery::Idempotent)
            .await?;
        #[derive(Deserialize)]
        struct Raw {
            header: RawHeader,
        }
        #[derive(Deserialize)]
        struct RawHeader {
            height: u64,
            hash: String,
            #[serde(default, deserialize_with = "crate::serde_u64::option")]
            timestamp_nanosec: Option<u64>,
            #[serde(default)]
            timestamp: Option<u64>,
        }
        let raw: Raw = serde_json::from_value(result)
            .map_err(|error| Error::invalid_response("block", error))?;
        Ok(BlockHeaderView {
            height: raw.header.height,
            hash: CryptoHash::from_base58(&raw.header.hash)
                .map_err(|error| Error::invalid_response("block", error))?,
            timestamp_nanosec: raw
                .header
                .timestamp_nanosec
                .or(raw.header.timestamp)
                .unwrap_or_default(),
        })
    }

    /// Sends a signed transaction (`send_tx`) and returns the node's outcome as
    /// is: a failed execution is still `Ok` here (see [`ExecutionOutcome::into_result`]).
    ///
    /// Fails over to the next URL only when the request certainly never arrived.
    pub async fn send_tx(
        &self,
        signed: &SignedTransaction,
        wait_until: TxExecutionStatus,
    ) -> Result<ExecutionOutcome> {
        let params = json!({
            "signed_tx_base64": signed.to_base64(),
            "wait_until": wait_until.as_str(),
        });
        let result = self
            .request("send_tx", params, Delivery::AtMostOnce)
            .await?;
        ExecutionOutcome::from_json(result, Some(signed.hash()))
    }

    /// Looks a transaction up by hash (`tx`).
    pub async fn tx_status(
        &self,
        tx_hash: &CryptoHash,
        sender_account_id: &AccountId,
        wait_until: TxExecutionStatus,
    ) -> Result<ExecutionOutcome> {
        let params = json!({
            "tx_hash": tx_hash.to_base58(),
            "sender_account_id": sender_account_id.as_str(),
            "wait_until": wait_until.as_str(),
        });
        let result = self
            .request("tx", params, Delivery::Idempotent)
            .await
            .map_err(|error| match error {
                Error::UnknownTransaction { tx_hash: found } if found.is_empty() => {
                    Error::UnknownTransaction {
                        tx_hash: tx_hash.to_base58(),
                    }
                }
                other => other,
            })?;
        ExecutionOutcome::from_json(result, Some(*tx_hash))
    }

    /// Sends one JSON-RPC request, trying each URL in turn as `delivery` allows.
    async fn request(&self, method: &str, params: Value, delivery: Delivery) -> Result<Value> {
        let id = Id::from(
            self.inner
                .next_id
                .fetch_add(1, Ordering::Relaxed)
                .to_string(),
        );
        let request = Request::new(id, method, params);
        let mut last_error = None;
        for endpoint in &self.inner.endpoints {
            match self.request_once(endpoint, &request).await {
                Ok(result) => return Ok(result),
                Err(error) => {
                    let move_on = match delivery {
                        Delivery::Idempotent => error.is_retryable(),
                        Delivery::AtMostOnce => error.is_not_delivered(),
                    };
                    if !move_on {
                        return Err(error);
                    }
                    tracing::warn!(
                        endpoint = %endpoint.origin,
                        %method,
                        %error,
                        "NEAR RPC request failed; trying the next endpoint if any"
                    );
                    last_error = Some(error);
                }
            }
        }
        // The constructor guarantees at least one endpoint, so this is the
        // last endpoint's error.
        Err(last_error.unwrap_or_else(|| Error::invalid_response(method, "no RPC endpoint")))
    }

    async fn request_once(&self, endpoint: &Endpoint, request: &Request) -> Result<Value> {
        let transport = |error: reqwest::Error| Error::Transport {
            endpoint: endpoint.origin.clone(),
            timed_out: error.is_timeout(),
            connect: error.is_connect(),
            message: error.without_url().to_string(),
        };
        let response = self
            .inner
            .http
            .post(endpoint.url.clone())
            .json(request)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport)?;
        // nearcore puts JSON-RPC errors on non-200 statuses too (408 timeout,
        // 400 validation, 500 internal): the body decides when it parses.
        if let Ok(response) = serde_json::from_slice::<Response>(&bytes) {
            match response.payload {
                ResponsePayload::Failure(error) => return Err(rpc_error(&error)),
                ResponsePayload::Success(result) if status.is_success() && !result.is_null() => {
                    return Ok(result);
                }
                ResponsePayload::Success(_) => {}
            }
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(Error::HttpStatus {
                endpoint: endpoint.origin.clone(),
                status: status.as_u16(),
                body: text.chars().take(BODY_EXCERPT).collect(),
            });
        }
        Err(Error::invalid_response(
            &request.method,
            "neither `result` nor `error` in the JSON-RPC response",
        ))
    }
}

/// The legacy error nearcore reports inside a successful `query` result.
fn legacy_query_error(result: &Value) -> Result<()> {
    match result.get("error") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(text)) => Err(view_failure(text)),
        Some(other) => Err(view_failure(&other.to_string())),
    }
}

/// Classifies a view-call failure text (legacy `result.error` or a
/// `CONTRACT_EXECUTION_ERROR` `vm_error`).
fn view_failure(text: &str) -> Error {
    if let Some(message) = guest_panic_message(text) {
        return Error::ContractPanic { message };
    }
    if let Some(message) = text.split("Smart contract panicked: ").nth(1) {
        return Error::ContractPanic {
            message: message.to_owned(),
        };
    }
    Error::ViewFailed {
        message: text.to_owned(),
    }
}

/// Extracts `panic_msg` from `…GuestPanic { panic_msg: "…" }…` (Rust `Debug` text).
fn guest_panic_message(text: &str) -> Option<String> {
    let start = text.find("panic_msg: \"")? + "panic_msg: \"".len();
    let rest = text.get(start..)?;
    let mut message = String::new();
    let mut chars = rest.chars();
    while let Some(character) = chars.next() {
        match character {
            '"' => return Some(message),
            '\\' => match chars.next()? {
                'n' => message.push('\n'),
                't' => message.push('\t'),
                other => message.push(other),
            },
            other => message.push(other),
        }
    }
    None
}

/// Maps a JSON-RPC `error` member to a typed error, by `cause.name` first and
/// the legacy `data` second (nearcore adds `name` and `cause` to the spec's members).
fn rpc_error(error: &ErrorObject) -> Error {
    let name = error
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let cause = error
        .get("cause")
        .and_then(|cause| cause.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let info = error
        .get("cause")
        .and_then(|cause| cause.get("info"))
        .unwrap_or(&Value::Null);
    let data = error.data.as_ref().unwrap_or(&Value::Null);
    let info_str = |key: &str| {
        info.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };

    // InvalidNonce hides in legacy `data` (the cause's info is empty), or in
    // `info` on nodes that do serialize it: look in both, whatever the cause.
    if let Some(error) = invalid_nonce(data).or_else(|| invalid_nonce(info)) {
        return error;
    }
    match cause {
        "UNKNOWN_ACCOUNT" => Error::UnknownAccount {
            account_id: info_str("requested_account_id"),
        },
        "UNKNOWN_ACCESS_KEY" => Error::UnknownAccessKey {
            public_key: info_str("public_key"),
        },
        "INVALID_TRANSACTION" => Error::InvalidTransaction {
            details: if data.is_null() {
                info.clone()
            } else {
                data.clone()
            },
        },
        "TIMEOUT_ERROR" => Error::Timeout,
        "UNKNOWN_TRANSACTION" => Error::UnknownTransaction {
            tx_hash: info_str("requested_transaction_hash"),
        },
        "CONTRACT_EXECUTION_ERROR" => view_failure(&info_str("vm_error")),
        _ => {
            let message = info
                .get("error_message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| data.as_str().map(str::to_owned))
                .or_else(|| (!error.message.is_empty()).then(|| error.message.clone()))
                .unwrap_or_else(|| error.to_value().to_string());
            Error::Rpc {
                name: name.to_owned(),
                cause: cause.to_owned(),
                message,
            }
        }
    }
}

/// `InvalidNonce {tx_nonce, ak_nonce}` found anywhere in `value`, as an error.
pub(crate) fn invalid_nonce(value: &Value) -> Option<Error> {
    let nonce = find_key(value, "InvalidNonce")?;
    Some(Error::InvalidNonce {
        tx_nonce: nonce
            .get("tx_nonce")
            .and_then(crate::serde_u64::from_value)?,
        ak_nonce: nonce
            .get("ak_nonce")
            .and_then(crate::serde_u64::from_value)?,
    })
}

/// Depth-first search for an object member named `key`.
pub(crate) fn find_key<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|inner| find_key(inner, key))),
        Value::Array(items) => items.iter().find_map(|inner| find_key(inner, key)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_panic_text_yields_the_message() {
        let text = r#"wasm execution failed with error: HostError(GuestPanic { panic_msg: "say \"no\"" })"#;
        assert_eq!(guest_panic_message(text).as_deref(), Some(r#"say "no""#));
    }

    #[test]
    fn unterminated_panic_text_is_not_a_panic_message() {
        assert_eq!(guest_panic_message(r#"GuestPanic { panic_msg: "cut"#), None);
    }
}
