//! Transaction outcomes (`send_tx` / `tx` results) and their failures.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::rpc::{find_key, invalid_nonce};
use crate::{AccountId, CryptoHash, Error, Result};

const PANIC_PREFIX: &str = "Smart contract panicked: ";

/// The transaction's final status (`FinalExecutionStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExecutionStatus {
    /// It succeeded; the bytes the last call returned (often JSON, often empty).
    SuccessValue(Vec<u8>),
    /// It failed; the `TxExecutionError` as JSON.
    Failure(Value),
    /// Not started yet.
    NotStarted,
    /// Started, not finished.
    Started,
    /// The node sent no status (e.g. `wait_until: NONE`).
    Unknown,
}

/// What `send_tx` or `tx` returned.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionOutcome {
    /// The transaction hash.
    pub transaction_hash: Option<CryptoHash>,
    /// Who signed the transaction (`transaction.signer_id`), when the node says.
    pub signer_id: Option<AccountId>,
    /// The account the transaction was sent to (`transaction.receiver_id`).
    pub receiver_id: Option<AccountId>,
    /// How far the node waited (`final_execution_status`), when it says.
    pub final_execution_status: Option<String>,
    /// The final status.
    pub status: ExecutionStatus,
    /// The logs of the transaction and of its receipts, in order.
    pub logs: Vec<String>,
    /// The whole result, for fields not modelled here.
    pub raw: Value,
}

impl ExecutionOutcome {
    pub(crate) fn from_json(raw: Value, expected_hash: Option<CryptoHash>) -> Result<Self> {
        let status = match raw.get("status") {
            None | Some(Value::Null) => ExecutionStatus::Unknown,
            Some(Value::String(text)) if text == "NotStarted" => ExecutionStatus::NotStarted,
            Some(Value::String(text)) if text == "Started" => ExecutionStatus::Started,
            Some(Value::Object(map)) if map.contains_key("SuccessValue") => {
                let encoded = map
                    .get("SuccessValue")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                ExecutionStatus::SuccessValue(BASE64.decode(encoded).map_err(|error| {
                    Error::invalid_response(
                        "send_tx",
                        format!("SuccessValue is not base64: {error}"),
                    )
                })?)
            }
            Some(Value::Object(map)) if map.contains_key("Failure") => {
                ExecutionStatus::Failure(map.get("Failure").cloned().unwrap_or(Value::Null))
            }
            Some(other) => {
                return Err(Error::invalid_response(
                    "send_tx",
                    format!("unknown status {other}"),
                ));
            }
        };
        let transaction_hash = raw
            .pointer("/transaction/hash")
            .and_then(Value::as_str)
            .and_then(|text| CryptoHash::from_base58(text).ok())
            .or(expected_hash);
        let account = |field: &str| {
            raw.pointer(&format!("/transaction/{field}"))
                .and_then(Value::as_str)
                .and_then(|text| AccountId::parse(text).ok())
        };
        let (signer_id, receiver_id) = (account("signer_id"), account("receiver_id"));
        let mut logs = Vec::new();
        let outcomes = raw
            .pointer("/transaction_outcome/outcome")
            .into_iter()
            .chain(
                raw.get("receipts_outcome")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|receipt| receipt.get("outcome")),
            );
        for outcome in outcomes {
            if let Some(lines) = outcome.get("logs").and_then(Value::as_array) {
                logs.extend(lines.iter().filter_map(Value::as_str).map(str::to_owned));
            }
        }
        Ok(Self {
            transaction_hash,
            signer_id,
            receiver_id,
            final_execution_status: raw
                .get("final_execution_status")
                .and_then(Value::as_str)
                .map(str::to_owned),
            status,
            logs,
            raw,
        })
    }

    /// The outcome if the transaction succeeded, else its failure as a typed
    /// error: a contract panic is [`Error::ContractPanic`] with the panic message.
    /// A transaction that has not finished is [`Error::TransactionPending`].
    pub fn into_result(self) -> Result<Self> {
        match &self.status {
            ExecutionStatus::SuccessValue(_) => Ok(self),
            ExecutionStatus::Failure(failure) => Err(failure_error(failure)),
            ExecutionStatus::NotStarted | ExecutionStatus::Started | ExecutionStatus::Unknown => {
                Err(Error::TransactionPending {
                    tx_hash: self
                        .transaction_hash
                        .map(|hash| hash.to_base58())
                        .unwrap_or_default(),
                })
            }
        }
    }

    /// The success value's bytes, if it succeeded.
    pub fn success_value(&self) -> Option<&[u8]> {
        match &self.status {
            ExecutionStatus::SuccessValue(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// The success value decoded as JSON (a contract method's return value).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        let bytes = self.success_value().ok_or_else(|| {
            Error::invalid_response("send_tx", "the transaction has no success value")
        })?;
        serde_json::from_slice(bytes)
            .map_err(|error| Error::invalid_response("send_tx", format!("return value: {error}")))
    }
}

/// Maps a `TxExecutionError` to a typed error.
fn failure_error(failure: &Value) -> Error {
    if let Some(error) = invalid_nonce(failure) {
        return error;
    }
    if let Some(invalid) = failure.get("InvalidTxError") {
        return Error::InvalidTransaction {
            details: invalid.clone(),
        };
    }
    if let Some(action) = failure.get("ActionError") {
        let index = action.get("index").and_then(Value::as_u64);
        let kind = action.get("kind").cloned().unwrap_or(Value::Null);
        if let Some(message) = panic_message(&kind) {
            return Error::ContractPanic { message };
        }
        return Error::ActionFailed { index, kind };
    }
    Error::ActionFailed {
        index: None,
        kind: failure.clone(),
    }
}

/// The panic text of a `FunctionCallError`: `ExecutionError("Smart contract
/// panicked: …")`, or the older `HostError.GuestPanic.panic_msg`.
fn panic_message(kind: &Value) -> Option<String> {
    let call_error = kind.get("FunctionCallError")?;
    if let Some(text) = call_error.get("ExecutionError").and_then(Value::as_str) {
        // Other execution errors (out of gas, …) are not panics.
        return text.strip_prefix(PANIC_PREFIX).map(str::to_owned);
    }
    find_key(call_error, "panic_msg")
        .and_then(Value::as_str)
        .map(str::to_owned)
}
