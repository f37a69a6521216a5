//! nearcore's JSON-RPC error shapes (verror style: `name`, `cause {name,
//! info}`, and the legacy `code`, `message` and `data`), and the HTTP status
//! nearcore puts them on.

use axum::http::StatusCode;
use delibera_jsonrpc::ErrorObject;
use serde_json::{Value, json};

/// A JSON-RPC error answer.
#[derive(Debug, Clone)]
pub(crate) struct RpcFailure {
    pub(crate) error: ErrorObject,
}

impl RpcFailure {
    fn verror(name: &str, code: i64, message: &str, cause: &str, info: Value, data: Value) -> Self {
        let mut error = ErrorObject::new(code, message).with_data(data);
        error.extra.insert("name".into(), name.into());
        error
            .extra
            .insert("cause".into(), json!({"name": cause, "info": info}));
        Self { error }
    }

    /// A `HANDLER_ERROR` with this cause.
    pub(crate) fn handler(cause: &str, info: Value, data: impl Into<Value>) -> Self {
        Self::verror(
            "HANDLER_ERROR",
            -32000,
            "Server error",
            cause,
            info,
            data.into(),
        )
    }

    /// `REQUEST_VALIDATION_ERROR` / `PARSE_ERROR`: the params do not read.
    pub(crate) fn parse_error(message: impl Into<String>) -> Self {
        let message = message.into();
        Self::verror(
            "REQUEST_VALIDATION_ERROR",
            ErrorObject::PARSE_ERROR,
            "Parse error",
            "PARSE_ERROR",
            json!({ "error_message": message }),
            message.into(),
        )
    }

    /// `REQUEST_VALIDATION_ERROR` / `METHOD_NOT_FOUND`.
    pub(crate) fn method_not_found(method: &str) -> Self {
        Self::verror(
            "REQUEST_VALIDATION_ERROR",
            ErrorObject::METHOD_NOT_FOUND,
            "Method not found",
            "METHOD_NOT_FOUND",
            json!({ "method_name": method }),
            method.into(),
        )
    }

    /// `INTERNAL_ERROR`: the stand-in itself failed.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        Self::verror(
            "INTERNAL_ERROR",
            -32000,
            "Server error",
            "INTERNAL_ERROR",
            json!({ "error_message": message }),
            message.into(),
        )
    }

    /// `INVALID_TRANSACTION`: nearcore leaves `info` empty and puts the
    /// `InvalidTxError` in the legacy `data`.
    pub(crate) fn invalid_transaction(invalid_tx_error: Value) -> Self {
        Self::handler(
            "INVALID_TRANSACTION",
            json!({}),
            json!({"TxExecutionError": {"InvalidTxError": invalid_tx_error}}),
        )
    }

    /// `TIMEOUT_ERROR`: the transaction did not reach the awaited status in time.
    pub(crate) fn timeout() -> Self {
        Self::handler("TIMEOUT_ERROR", json!({}), "Timeout")
    }

    /// `UNKNOWN_TRANSACTION`.
    pub(crate) fn unknown_transaction(hash: &str) -> Self {
        Self::handler(
            "UNKNOWN_TRANSACTION",
            json!({ "requested_transaction_hash": hash }),
            format!("Transaction {hash} doesn't exist"),
        )
    }

    /// `UNKNOWN_ACCOUNT`, as views of a missing account answer.
    pub(crate) fn unknown_account(account_id: &str, block_height: u64, block_hash: &str) -> Self {
        Self::handler(
            "UNKNOWN_ACCOUNT",
            json!({
                "requested_account_id": account_id,
                "block_height": block_height,
                "block_hash": block_hash,
            }),
            format!("account {account_id} does not exist while viewing"),
        )
    }

    /// `UNKNOWN_BLOCK` for a `block_id` the chain does not have.
    pub(crate) fn unknown_block(block_id: &Value) -> Self {
        let data = match block_id {
            Value::Number(height) => {
                format!("DB Not Found Error: BLOCK HEIGHT: {height} \n Cause: Unknown")
            }
            Value::String(hash) => format!("DB Not Found Error: BLOCK HEADER: {hash}"),
            other => format!("DB Not Found Error: BLOCK: {other}"),
        };
        Self::handler(
            "UNKNOWN_BLOCK",
            json!({ "block_reference": { "block_id": block_id } }),
            data,
        )
    }

    /// The HTTP status nearcore answers this error with: 400 for request
    /// validation, 408 for a timeout, 500 for internal errors, 200 otherwise.
    pub(crate) fn status(&self) -> StatusCode {
        let name = self.error.get("name").and_then(Value::as_str);
        let cause = self
            .error
            .get("cause")
            .and_then(|cause| cause.get("name"))
            .and_then(Value::as_str);
        match (name, cause) {
            (Some("REQUEST_VALIDATION_ERROR"), _) => StatusCode::BAD_REQUEST,
            (Some("INTERNAL_ERROR"), _) => StatusCode::INTERNAL_SERVER_ERROR,
            (_, Some("TIMEOUT_ERROR")) => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::OK,
        }
    }
}

impl From<crate::Error> for RpcFailure {
    fn from(error: crate::Error) -> Self {
        Self::internal(error.to_string())
    }
}

impl From<rusqlite::Error> for RpcFailure {
    fn from(error: rusqlite::Error) -> Self {
        Self::internal(format!("devnet state: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_transaction_keeps_its_details_in_legacy_data() {
        let failure = RpcFailure::invalid_transaction(
            json!({"InvalidNonce": {"tx_nonce": 5, "ak_nonce": 7}}),
        );
        assert_eq!(
            failure.error.to_value(),
            json!({
                "name": "HANDLER_ERROR",
                "cause": {"name": "INVALID_TRANSACTION", "info": {}},
                "code": -32000,
                "message": "Server error",
                "data": {"TxExecutionError": {"InvalidTxError": {"InvalidNonce": {"tx_nonce": 5, "ak_nonce": 7}}}}
            })
        );
        assert_eq!(failure.status(), StatusCode::OK);
        assert_eq!(RpcFailure::timeout().status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(
            RpcFailure::parse_error("x").status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            RpcFailure::internal("x").status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
