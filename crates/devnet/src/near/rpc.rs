//! The JSON-RPC methods: nearcore's shapes for what near-api-js 7 and
//! `delibera-near` call, plus the faucet's `devnet_create_account`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use delibera_near::{AccountId, CryptoHash, SignedTransaction};
use serde_json::{Map, Value, json};

use super::Shared;
use super::chain::{Block, Chain, GAS_PRICE, PROTOCOL_VERSION, TxState};
use super::wire::RpcFailure;

type RpcResult = std::result::Result<Value, RpcFailure>;

/// The chain id `status` reports.
const CHAIN_ID: &str = "delibera-devnet";
/// 32 zero bytes in base58: the hash nearcore shows for "none".
const ZERO_HASH: &str = "11111111111111111111111111111111";

/// How long a transaction may be waited for, like nearcore's polling timeout.
fn wait_timeout(shared: &Shared) -> Duration {
    let blocks = u32::try_from(shared.final_lag + 3).unwrap_or(u32::MAX);
    Duration::from_secs(10).max(shared.block_time.saturating_mul(blocks))
}

/// Answers one request.
pub(crate) async fn handle(shared: &Shared, method: &str, params: Value) -> RpcResult {
    match method {
        "query" => shared.with_chain(|chain| query(chain, &params)),
        "block" => shared.with_chain(|chain| block(chain, &params)),
        "send_tx" => {
            let object = object_params(&params)?;
            let signed = signed_transaction(object.get("signed_tx_base64"))?;
            let wait_until = wait_until(object.get("wait_until"))?;
            send(shared, signed, wait_until).await
        }
        "broadcast_tx_commit" => {
            let signed = signed_transaction(positional(&params, 0))?;
            let mut outcome = send(shared, signed, WaitUntil::ExecutedOptimistic).await?;
            if let Some(map) = outcome.as_object_mut() {
                map.remove("final_execution_status");
            }
            Ok(outcome)
        }
        "broadcast_tx_async" => {
            let signed = signed_transaction(positional(&params, 0))?;
            let hash = signed.hash().to_base58();
            shared.with_chain(|chain| chain.submit(signed))?;
            Ok(json!(hash))
        }
        "tx" | "EXPERIMENTAL_tx_status" => {
            let (hash, wait) = tx_params(&params)?;
            let mut outcome = wait_for(shared, &hash, wait).await?;
            if method == "EXPERIMENTAL_tx_status"
                && let Some(map) = outcome.as_object_mut()
            {
                map.insert("receipts".into(), json!([]));
            }
            Ok(outcome)
        }
        "status" => shared.with_chain(|chain| status(shared, chain)),
        "health" => Ok(Value::Null),
        "gas_price" => Ok(json!({ "gas_price": GAS_PRICE })),
        "devnet_create_account" => {
            let object = object_params(&params)?;
            let text = object
                .get("account_id")
                .and_then(Value::as_str)
                .ok_or_else(|| RpcFailure::parse_error("`account_id` (a string) is required"))?;
            let account_id = AccountId::parse(text)
                .map_err(|error| RpcFailure::parse_error(format!("invalid account_id: {error}")))?;
            let keypair = shared.with_chain(|chain| match chain.create_account(&account_id) {
                Ok(keypair) => Ok(keypair),
                Err(crate::Error::AccountExists { .. }) => Err(RpcFailure::handler(
                    "ACCOUNT_ALREADY_EXISTS",
                    json!({ "requested_account_id": account_id.as_str() }),
                    format!("account {account_id} already exists"),
                )),
                Err(other) => Err(other.into()),
            })?;
            Ok(json!({
                "accountId": account_id.as_str(),
                "privateKey": keypair.to_near_secret_string().as_str(),
            }))
        }
        other => Err(RpcFailure::method_not_found(other)),
    }
}

fn object_params(params: &Value) -> std::result::Result<&Map<String, Value>, RpcFailure> {
    params
        .as_object()
        .ok_or_else(|| RpcFailure::parse_error("Failed parsing args: params must be an object"))
}

fn positional(params: &Value, index: usize) -> Option<&Value> {
    params.as_array().and_then(|items| items.get(index))
}

fn signed_transaction(value: Option<&Value>) -> std::result::Result<SignedTransaction, RpcFailure> {
    let text = value.and_then(Value::as_str).ok_or_else(|| {
        RpcFailure::parse_error("Failed parsing args: missing signed transaction")
    })?;
    SignedTransaction::from_base64(text)
        .map_err(|error| RpcFailure::parse_error(format!("Failed to decode transaction: {error}")))
}

/// `wait_until` levels, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum WaitUntil {
    None,
    Included,
    ExecutedOptimistic,
    IncludedFinal,
    Executed,
    Final,
}

fn wait_until(value: Option<&Value>) -> std::result::Result<WaitUntil, RpcFailure> {
    Ok(match value.and_then(Value::as_str) {
        None => WaitUntil::ExecutedOptimistic,
        Some("NONE") => WaitUntil::None,
        Some("INCLUDED") => WaitUntil::Included,
        Some("EXECUTED_OPTIMISTIC") => WaitUntil::ExecutedOptimistic,
        Some("INCLUDED_FINAL") => WaitUntil::IncludedFinal,
        Some("EXECUTED") => WaitUntil::Executed,
        Some("FINAL") => WaitUntil::Final,
        Some(other) => {
            return Err(RpcFailure::parse_error(format!(
                "Failed parsing args: unknown variant `{other}`, expected one of `NONE`, `INCLUDED`, `EXECUTED_OPTIMISTIC`, `INCLUDED_FINAL`, `EXECUTED`, `FINAL`"
            )));
        }
    })
}

fn tx_params(params: &Value) -> std::result::Result<(CryptoHash, WaitUntil), RpcFailure> {
    let (hash, wait) = match params {
        Value::Array(items) => (items.first(), None),
        Value::Object(map) => (map.get("tx_hash"), map.get("wait_until")),
        _ => (None, None),
    };
    let hash = hash
        .and_then(Value::as_str)
        .ok_or_else(|| RpcFailure::parse_error("Failed parsing args: missing `tx_hash`"))?;
    let hash = CryptoHash::from_base58(hash)
        .map_err(|error| RpcFailure::parse_error(format!("Failed parsing args: {error}")))?;
    Ok((hash, wait_until(wait)?))
}

async fn send(shared: &Shared, signed: SignedTransaction, wait: WaitUntil) -> RpcResult {
    let hash = signed.hash();
    shared.with_chain(|chain| chain.submit(signed))?;
    if wait == WaitUntil::None {
        return Ok(json!({ "final_execution_status": "NONE" }));
    }
    wait_for(shared, &hash, wait).await
}

/// Waits until the transaction reaches `wait`, as nearcore does for
/// `send_tx` and `tx`; `TIMEOUT_ERROR` if it does not in time.
async fn wait_for(shared: &Shared, hash: &CryptoHash, wait: WaitUntil) -> RpcResult {
    let mut heads = shared.head.subscribe();
    let deadline = tokio::time::Instant::now() + wait_timeout(shared);
    loop {
        let answer =
            shared.with_chain(|chain| -> std::result::Result<Option<Value>, RpcFailure> {
                match chain.tx_state(hash)? {
                    TxState::Unknown => Err(RpcFailure::unknown_transaction(&hash.to_base58())),
                    TxState::Rejected(error) => Err(RpcFailure::invalid_transaction(error)),
                    TxState::Pending => Ok(None),
                    TxState::Executed {
                        height,
                        mut outcome,
                    } => {
                        let is_final = height + chain.final_lag() <= chain.head().height;
                        if wait >= WaitUntil::IncludedFinal && !is_final {
                            return Ok(None);
                        }
                        if let Some(map) = outcome.as_object_mut() {
                            let status = if is_final {
                                "FINAL"
                            } else {
                                "EXECUTED_OPTIMISTIC"
                            };
                            map.insert("final_execution_status".into(), status.into());
                        }
                        Ok(Some(outcome))
                    }
                }
            })?;
        if let Some(outcome) = answer {
            return Ok(outcome);
        }
        match tokio::time::timeout_at(deadline, heads.changed()).await {
            Ok(Ok(())) => {}
            // The chain stopped, or the deadline passed.
            Ok(Err(_)) | Err(_) => return Err(RpcFailure::timeout()),
        }
    }
}

/// Resolves `finality` / `block_id` params to a block.
fn resolve_block(
    chain: &Chain,
    params: &Map<String, Value>,
) -> std::result::Result<Block, RpcFailure> {
    if let Some(block_id) = params.get("block_id").filter(|value| !value.is_null()) {
        let found = match block_id {
            Value::Number(number) => match number.as_u64() {
                Some(height) => chain.block_at(height)?,
                None => None,
            },
            Value::String(text) => match text.parse::<u64>() {
                Ok(height) => chain.block_at(height)?,
                Err(_) => match CryptoHash::from_base58(text) {
                    Ok(hash) => chain.block_by_hash(&hash)?,
                    Err(error) => {
                        return Err(RpcFailure::parse_error(format!(
                            "Failed parsing args: invalid block_id: {error}"
                        )));
                    }
                },
            },
            other => {
                return Err(RpcFailure::parse_error(format!(
                    "Failed parsing args: invalid block_id {other}"
                )));
            }
        };
        return found.ok_or_else(|| RpcFailure::unknown_block(block_id));
    }
    if let Some(checkpoint) = params.get("sync_checkpoint").and_then(Value::as_str) {
        return match checkpoint {
            "genesis" | "earliest_available" => Ok(chain.genesis()),
            other => Err(RpcFailure::parse_error(format!(
                "Failed parsing args: unknown sync_checkpoint `{other}`"
            ))),
        };
    }
    match params.get("finality").and_then(Value::as_str) {
        Some("optimistic") => Ok(chain.head()),
        Some("near-final") => Ok(chain
            .block_at(chain.head().height.saturating_sub(1))?
            .unwrap_or_else(|| chain.genesis())),
        Some("final") => Ok(chain.final_block()?),
        Some(other) => Err(RpcFailure::parse_error(format!(
            "Failed parsing args: unknown variant `{other}`, expected one of `optimistic`, `near-final`, `final`"
        ))),
        None => Err(RpcFailure::parse_error(
            "Failed parsing args: one of `finality`, `block_id` or `sync_checkpoint` is required",
        )),
    }
}

fn string_param<'a>(
    params: &'a Map<String, Value>,
    name: &str,
) -> std::result::Result<&'a str, RpcFailure> {
    params.get(name).and_then(Value::as_str).ok_or_else(|| {
        RpcFailure::parse_error(format!("Failed parsing args: missing field `{name}`"))
    })
}

fn with_block(mut value: Value, block: &Block) -> Value {
    if let Some(map) = value.as_object_mut() {
        map.insert("block_height".into(), block.height.into());
        map.insert("block_hash".into(), block.hash.to_base58().into());
    }
    value
}

fn query(chain: &Chain, params: &Value) -> RpcResult {
    let params = object_params(params)?;
    let request_type = string_param(params, "request_type")?;
    let block = resolve_block(chain, params)?;
    let block_hash = block.hash.to_base58();
    match request_type {
        "view_account" => {
            let account_id = string_param(params, "account_id")?;
            let account = chain.account_at(account_id, block.height)?.ok_or_else(|| {
                RpcFailure::unknown_account(account_id, block.height, &block_hash)
            })?;
            let code_hash = match account.contract {
                Some(kind) => CryptoHash::sha256(kind.as_str().as_bytes()).to_base58(),
                None => ZERO_HASH.to_owned(),
            };
            Ok(with_block(
                json!({
                    "amount": account.amount.to_string(),
                    "locked": "0",
                    "code_hash": code_hash,
                    "storage_usage": 182,
                    "storage_paid_at": 0,
                }),
                &block,
            ))
        }
        "view_access_key" => {
            let account_id = string_param(params, "account_id")?;
            let public_key = string_param(params, "public_key")?;
            Ok(match chain.key_at(account_id, public_key, block.height)? {
                Some(key) => with_block(
                    json!({ "nonce": key.nonce, "permission": key.permission }),
                    &block,
                ),
                // nearcore's legacy form: an `error` inside a successful result.
                None => with_block(
                    json!({
                        "error": format!("access key {public_key} does not exist while viewing"),
                        "logs": [],
                    }),
                    &block,
                ),
            })
        }
        "view_access_key_list" => {
            let account_id = string_param(params, "account_id")?;
            if chain.account_at(account_id, block.height)?.is_none() {
                return Err(RpcFailure::unknown_account(
                    account_id,
                    block.height,
                    &block_hash,
                ));
            }
            let keys: Vec<Value> = chain
                .keys_at(account_id, block.height)?
                .into_iter()
                .map(|(public_key, key)| {
                    json!({
                        "public_key": public_key,
                        "access_key": { "nonce": key.nonce, "permission": key.permission },
                    })
                })
                .collect();
            Ok(with_block(json!({ "keys": keys }), &block))
        }
        "call_function" => {
            let account_id = string_param(params, "account_id")?;
            let method_name = string_param(params, "method_name")?;
            let args = BASE64
                .decode(
                    params
                        .get("args_base64")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                )
                .map_err(|error| {
                    RpcFailure::parse_error(format!("Failed parsing args: args_base64: {error}"))
                })?;
            Ok(
                match chain.view_call(account_id, method_name, &args, &block)? {
                    Ok(bytes) => with_block(json!({ "result": bytes, "logs": [] }), &block),
                    Err(text) => with_block(json!({ "error": text, "logs": [] }), &block),
                },
            )
        }
        other => Err(RpcFailure::parse_error(format!(
            "Failed parsing args: request_type `{other}` is not supported by the Delibera devnet (view_account, view_access_key, view_access_key_list, call_function)"
        ))),
    }
}

fn block(chain: &Chain, params: &Value) -> RpcResult {
    let params = match params {
        Value::Array(items) => {
            let mut map = Map::new();
            if let Some(block_id) = items.first() {
                map.insert("block_id".into(), block_id.clone());
            }
            map
        }
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    let block = resolve_block(chain, &params)?;
    block_view(chain, &block)
}

/// nearcore's `BlockView`, with one chunk.
fn block_view(chain: &Chain, block: &Block) -> RpcResult {
    let hash = block.hash.to_base58();
    let last_final = chain
        .block_at(block.height.saturating_sub(chain.final_lag()))?
        .unwrap_or_else(|| chain.genesis());
    let last_ds_final = chain
        .block_at(block.height.saturating_sub(1))?
        .unwrap_or_else(|| chain.genesis());
    let signature = format!("ed25519:{}", bs58::encode([0u8; 64]).into_string());
    Ok(json!({
        "author": "devnet",
        "header": {
            "height": block.height,
            "prev_height": block.height.checked_sub(1),
            "epoch_id": ZERO_HASH,
            "next_epoch_id": ZERO_HASH,
            "hash": hash,
            "prev_hash": block.prev_hash.to_base58(),
            "prev_state_root": ZERO_HASH,
            "block_body_hash": ZERO_HASH,
            "chunk_receipts_root": ZERO_HASH,
            "chunk_headers_root": ZERO_HASH,
            "chunk_tx_root": ZERO_HASH,
            "outcome_root": ZERO_HASH,
            "chunks_included": 1,
            "challenges_root": ZERO_HASH,
            "timestamp": block.timestamp,
            "timestamp_nanosec": block.timestamp.to_string(),
            "random_value": ZERO_HASH,
            "validator_proposals": [],
            "chunk_mask": [true],
            "gas_price": GAS_PRICE,
            "block_ordinal": block.height + 1,
            "rent_paid": "0",
            "validator_reward": "0",
            "total_supply": "0",
            "challenges_result": [],
            "last_final_block": last_final.hash.to_base58(),
            "last_ds_final_block": last_ds_final.hash.to_base58(),
            "next_bp_hash": ZERO_HASH,
            "block_merkle_root": ZERO_HASH,
            "epoch_sync_data_hash": null,
            "approvals": [],
            "signature": signature,
            "latest_protocol_version": PROTOCOL_VERSION,
        },
        "chunks": [{
            "chunk_hash": hash,
            "prev_block_hash": block.prev_hash.to_base58(),
            "outcome_root": ZERO_HASH,
            "prev_state_root": ZERO_HASH,
            "encoded_merkle_root": ZERO_HASH,
            "encoded_length": 0,
            "height_created": block.height,
            "height_included": block.height,
            "shard_id": 0,
            "gas_used": 0,
            "gas_limit": 1_000_000_000_000_000u64,
            "rent_paid": "0",
            "validator_reward": "0",
            "balance_burnt": "0",
            "outgoing_receipts_root": ZERO_HASH,
            "tx_root": ZERO_HASH,
            "validator_proposals": [],
            "signature": signature,
        }],
    }))
}

fn rfc3339(nanos: u64) -> String {
    let nanos = i64::try_from(nanos).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_nanos(nanos)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn status(shared: &Shared, chain: &Chain) -> RpcResult {
    let head = chain.head();
    let genesis = chain.genesis();
    Ok(json!({
        "chain_id": CHAIN_ID,
        "genesis_hash": genesis.hash.to_base58(),
        "latest_protocol_version": PROTOCOL_VERSION,
        "protocol_version": PROTOCOL_VERSION,
        "node_key": null,
        "node_public_key": format!("ed25519:{ZERO_HASH}"),
        "rpc_addr": shared.addr.to_string(),
        "sync_info": {
            "latest_block_hash": head.hash.to_base58(),
            "latest_block_height": head.height,
            "latest_state_root": ZERO_HASH,
            "latest_block_time": rfc3339(head.timestamp),
            "syncing": false,
            "earliest_block_hash": genesis.hash.to_base58(),
            "earliest_block_height": genesis.height,
            "earliest_block_time": rfc3339(genesis.timestamp),
            "epoch_id": ZERO_HASH,
            "epoch_start_height": 0,
        },
        "uptime_sec": shared.started.elapsed().as_secs(),
        "validator_account_id": null,
        "validator_public_key": null,
        "validators": [],
        "version": {
            "version": env!("CARGO_PKG_VERSION"),
            "build": "delibera-devnet",
            "rustc_version": "",
        },
    }))
}
