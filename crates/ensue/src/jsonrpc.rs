//! JSON-RPC 2.0 envelope types, with no I/O.
//!
//! Shaped after the spec: a [`Request`] with a named [`Id`], and a [`Response`]
//! that carries either a `result` or an [`ErrorPayload`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version every message carries.
pub const VERSION: &str = "2.0";

/// A request id: the spec allows a number or a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    /// A numeric id (what this client sends).
    Number(u64),
    /// A string id.
    String(String),
}

impl Id {
    /// Whether `other` names the same request, treating `1` and `"1"` alike
    /// (servers are not consistent about echoing the type).
    pub fn matches(&self, other: &Id) -> bool {
        match (self, other) {
            (Id::Number(a), Id::Number(b)) => a == b,
            (Id::String(a), Id::String(b)) => a == b,
            (Id::Number(n), Id::String(s)) | (Id::String(s), Id::Number(n)) => {
                s.parse::<u64>().is_ok_and(|parsed| parsed == *n)
            }
        }
    }
}

/// A JSON-RPC request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Always [`VERSION`].
    pub jsonrpc: String,
    /// Echoed by the server in its response.
    pub id: Id,
    /// The method name, e.g. `tools/call`.
    pub method: String,
    /// The method's parameters.
    pub params: Value,
}

impl Request {
    /// A request with the protocol version filled in.
    pub fn new(id: Id, method: impl Into<String>, params: Value) -> Self {
        Self {
            jsonrpc: VERSION.to_owned(),
            id,
            method: method.into(),
            params,
        }
    }
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorPayload {
    /// The error code.
    pub code: i64,
    /// A short description.
    #[serde(default)]
    pub message: String,
    /// Extra information, if the server sent any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ErrorPayload {
    /// -32700: the server could not parse the JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// -32600: not a valid request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// -32601: the method (or tool) does not exist.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// -32602: invalid method parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// -32603: internal JSON-RPC error.
    pub const INTERNAL_ERROR: i64 = -32603;
}

/// A JSON-RPC message as received: a response (`id` with `result` or
/// `error`) or, on an SSE stream, a notification (`method`, no `id`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Response {
    /// The id of the request this answers; absent on notifications.
    #[serde(default)]
    pub id: Option<Id>,
    /// Set on notifications and server-to-client requests.
    #[serde(default)]
    pub method: Option<String>,
    /// The result, on success.
    #[serde(default)]
    pub result: Option<Value>,
    /// The error, on failure.
    #[serde(default)]
    pub error: Option<ErrorPayload>,
}

impl Response {
    /// Whether this message answers a request (as opposed to a notification).
    pub fn is_response(&self) -> bool {
        self.method.is_none() && (self.result.is_some() || self.error.is_some())
    }
}
