//! wiremock helpers for JSON-RPC.

use delibera_identity::Keypair;
use delibera_near::{AccountId, CryptoHash, NearRpc, NearSigner};
use serde_json::{Value, json};
use wiremock::{Match, Request, ResponseTemplate};

/// Matches a JSON-RPC 2.0 request with exactly this method and params (any id).
pub(crate) struct Rpc {
    method: &'static str,
    params: Value,
}

pub(crate) fn rpc(method: &'static str, params: Value) -> Rpc {
    Rpc { method, params }
}

impl Match for Rpc {
    fn matches(&self, request: &Request) -> bool {
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            return false;
        };
        let Some(object) = body.as_object() else {
            return false;
        };
        object.len() == 4
            && body["jsonrpc"] == "2.0"
            && body["id"].is_string()
            && body["method"] == self.method
            && body["params"] == self.params
            && request.headers.get("content-type").map(|v| v.as_bytes())
                == Some(b"application/json")
    }
}

/// Matches any request of this JSON-RPC method.
pub(crate) struct Method(pub(crate) &'static str);

impl Match for Method {
    fn matches(&self, request: &Request) -> bool {
        serde_json::from_slice::<Value>(&request.body)
            .map(|body| body["method"] == self.0)
            .unwrap_or(false)
    }
}

pub(crate) fn ok(result: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"jsonrpc": "2.0", "id": "1", "result": result}))
}

pub(crate) fn err(status: u16, error: Value) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"jsonrpc": "2.0", "id": "1", "error": error}))
}

/// A structured handler error.
pub(crate) fn handler_error(cause: &str, info: Value) -> Value {
    json!({
        "name": "HANDLER_ERROR",
        "cause": {"name": cause, "info": info},
        "code": -32000,
        "message": "Server error",
        "data": "legacy text"
    })
}

pub(crate) fn client(server: &wiremock::MockServer) -> NearRpc {
    NearRpc::new([server.uri()]).unwrap()
}

/// Bytes as the JSON array of numbers `call_function` returns.
pub(crate) fn byte_array(json: &Value) -> Value {
    Value::Array(json.to_string().bytes().map(Value::from).collect())
}

pub(crate) fn view_result(json: &Value) -> Value {
    json!({"result": byte_array(json), "logs": [], "block_height": 17, "block_hash": block_hash().to_base58()})
}

pub(crate) fn block_hash() -> CryptoHash {
    CryptoHash([0x11; 32])
}

pub(crate) fn signer() -> NearSigner {
    NearSigner::new(account("server.testnet"), Keypair::from_seed(&[7; 32]))
}

pub(crate) fn account(text: &str) -> AccountId {
    text.parse().unwrap()
}

/// The `view_access_key` params for [`signer`].
pub(crate) fn access_key_params() -> Value {
    json!({
        "request_type": "view_access_key",
        "finality": "optimistic",
        "account_id": "server.testnet",
        "public_key": signer().public_key().to_near_string(),
    })
}

pub(crate) fn access_key(nonce: u64) -> ResponseTemplate {
    ok(json!({
        "nonce": nonce,
        "permission": "FullAccess",
        "block_height": 100,
        "block_hash": block_hash().to_base58(),
    }))
}

pub(crate) fn success_outcome(hash: &CryptoHash, value: &[u8]) -> Value {
    use base64::Engine;
    json!({
        "final_execution_status": "EXECUTED_OPTIMISTIC",
        "status": {"SuccessValue": base64::engine::general_purpose::STANDARD.encode(value)},
        "transaction": {"hash": hash.to_base58(), "signer_id": "server.testnet"},
        "transaction_outcome": {"id": hash.to_base58(), "outcome": {"logs": ["tx log"], "status": {"SuccessReceiptId": "x"}}},
        "receipts_outcome": [{"id": "r", "outcome": {"logs": ["receipt log"], "status": {"SuccessValue": ""}}}]
    })
}

pub(crate) fn panic_outcome(message: &str) -> Value {
    json!({
        "final_execution_status": "EXECUTED_OPTIMISTIC",
        "status": {"Failure": {"ActionError": {"index": 0, "kind": {"FunctionCallError": {"ExecutionError": format!("Smart contract panicked: {message}")}}}}},
        "transaction": {"hash": "11111111111111111111111111111111"},
        "transaction_outcome": {"outcome": {"logs": []}},
        "receipts_outcome": []
    })
}
