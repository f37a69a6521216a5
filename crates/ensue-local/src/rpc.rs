//! JSON-RPC 2.0 envelopes and the response framing (one SSE event, or plain JSON).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// -32700: the body is not JSON (or not UTF-8).
pub(crate) const PARSE_ERROR: i64 = -32700;
/// -32600: JSON, but not a valid request object (wrong `jsonrpc`, no `method`, too large).
pub(crate) const INVALID_REQUEST: i64 = -32600;
/// -32601: unknown method or tool.
pub(crate) const METHOD_NOT_FOUND: i64 = -32601;
/// -32602: the method's parameters are missing or wrong.
pub(crate) const INVALID_PARAMS: i64 = -32602;
/// -32603: the server failed (details are logged, not sent).
pub(crate) const INTERNAL_ERROR: i64 = -32603;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RpcError {
    pub(crate) code: i64,
    pub(crate) message: String,
}

impl RpcError {
    pub(crate) fn parse(message: impl Into<String>) -> Self {
        Self::new(PARSE_ERROR, message)
    }

    pub(crate) fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(INVALID_REQUEST, message)
    }

    pub(crate) fn method_not_found(message: impl Into<String>) -> Self {
        Self::new(METHOD_NOT_FOUND, message)
    }

    pub(crate) fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }

    pub(crate) fn internal() -> Self {
        Self::new(INTERNAL_ERROR, "internal error")
    }

    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status a request-level failure is answered with: 400 when the
    /// request could not be understood at all (as MCP servers do), otherwise
    /// 200 with the error in the JSON-RPC body.
    pub(crate) fn http_status(&self) -> StatusCode {
        match self.code {
            PARSE_ERROR | INVALID_REQUEST => StatusCode::BAD_REQUEST,
            _ => StatusCode::OK,
        }
    }
}

/// A request that expects an answer.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) id: Value,
    pub(crate) method: String,
    /// `Value::Null` when the request had no `params`.
    pub(crate) params: Value,
}

/// What a request body turned out to be.
#[derive(Debug)]
pub(crate) enum Incoming {
    Call(Call),
    /// No `id`: answered with 202 and no body, as MCP Streamable HTTP requires.
    Notification {
        method: String,
    },
}

/// A rejected body, with the request id when it could be read.
#[derive(Debug)]
pub(crate) struct Rejected {
    pub(crate) id: Value,
    pub(crate) error: RpcError,
}

fn reject(id: &Value, error: RpcError) -> Rejected {
    Rejected {
        id: id.clone(),
        error,
    }
}

/// Reads one JSON-RPC request object from a body.
pub(crate) fn parse(body: &[u8]) -> Result<Incoming, Rejected> {
    let text = std::str::from_utf8(body).map_err(|error| {
        reject(
            &Value::Null,
            RpcError::parse(format!(
                "the body is not UTF-8 text (invalid byte at offset {})",
                error.valid_up_to()
            )),
        )
    })?;
    let value: Value = serde_json::from_str(text).map_err(|error| {
        reject(
            &Value::Null,
            RpcError::parse(format!("the body is not valid JSON: {error}")),
        )
    })?;
    let mut object = match value {
        Value::Object(object) => object,
        Value::Array(_) => {
            return Err(reject(
                &Value::Null,
                RpcError::invalid_request(
                    "batch requests are not supported: send one JSON-RPC object per request",
                ),
            ));
        }
        _ => {
            return Err(reject(
                &Value::Null,
                RpcError::invalid_request("the body must be a JSON-RPC request object"),
            ));
        }
    };
    let id = match object.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id),
        Some(_) => {
            return Err(reject(
                &Value::Null,
                RpcError::invalid_request("`id` must be a string, a number or null"),
            ));
        }
    };
    let echo = id.clone().unwrap_or(Value::Null);
    match object.get("jsonrpc") {
        Some(Value::String(version)) if version == "2.0" => {}
        Some(other) => {
            return Err(reject(
                &echo,
                RpcError::invalid_request(format!("`jsonrpc` must be \"2.0\", got {other}")),
            ));
        }
        None => {
            return Err(reject(
                &echo,
                RpcError::invalid_request("`jsonrpc` is missing: it must be \"2.0\""),
            ));
        }
    }
    let method = match object.remove("method") {
        Some(Value::String(method)) => method,
        Some(_) => {
            return Err(reject(
                &echo,
                RpcError::invalid_request("`method` must be a string"),
            ));
        }
        None => {
            return Err(reject(
                &echo,
                RpcError::invalid_request("`method` is missing"),
            ));
        }
    };
    let params = object.remove("params").unwrap_or(Value::Null);
    Ok(match id {
        Some(id) => Incoming::Call(Call { id, method, params }),
        None => Incoming::Notification { method },
    })
}

/// A success response.
pub(crate) fn success(id: &Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// An error response.
pub(crate) fn failure(id: &Value, error: &RpcError) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": error.code, "message": error.message },
    })
}

/// An MCP tool result: `structuredContent` plus the same JSON as text.
pub(crate) fn tool_success(structured: Value) -> Value {
    let text = structured.to_string();
    json!({
        "content": [{ "type": "text", "text": text }],
        "structuredContent": structured,
        "isError": false,
    })
}

/// An MCP tool execution error: `isError` with the message as text, and the
/// per-item results (if any) still in `structuredContent`.
pub(crate) fn tool_failure(message: &str, structured: Option<Value>) -> Value {
    let mut result = Map::new();
    result.insert(
        "content".into(),
        json!([{ "type": "text", "text": message }]),
    );
    if let Some(structured) = structured {
        result.insert("structuredContent".into(), structured);
    }
    result.insert("isError".into(), Value::Bool(true));
    Value::Object(result)
}

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `text/event-stream` with one `data:` event: what the hosted service sends.
    Sse,
    /// `application/json`, for clients whose `Accept` lists JSON but not SSE.
    Json,
}

impl Framing {
    /// SSE unless `Accept` asks for JSON only (no `text/event-stream`,
    /// `text/*` or `*/*`; a `q=0` entry does not count).
    pub(crate) fn from_accept(headers: &HeaderMap) -> Framing {
        let mut json = false;
        let mut sse = false;
        for value in headers.get_all(header::ACCEPT) {
            let Ok(value) = value.to_str() else { continue };
            for entry in value.split(',') {
                let mut parts = entry.split(';');
                let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
                let refused = parts.any(|param| {
                    let param = param.trim().to_ascii_lowercase();
                    param
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                if refused {
                    continue;
                }
                match media.as_str() {
                    "application/json" | "application/*" => json = true,
                    "text/event-stream" | "text/*" | "*/*" => sse = true,
                    _ => {}
                }
            }
        }
        if json && !sse {
            Framing::Json
        } else {
            Framing::Sse
        }
    }

    /// The HTTP response carrying `message`.
    pub(crate) fn respond(self, status: StatusCode, message: &Value) -> Response {
        match self {
            Framing::Sse => {
                // One event, one `data:` line: the vendor's own clients strip a
                // leading `data: ` and parse the rest, so no `event:`/`id:` lines.
                let body = format!("data: {message}\n\n");
                (
                    status,
                    [
                        (
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/event-stream"),
                        ),
                        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                    ],
                    body,
                )
                    .into_response()
            }
            Framing::Json => json_response(status, message),
        }
    }
}

/// A plain JSON response.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Framing {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        Framing::from_accept(&headers)
    }

    #[test]
    fn sse_unless_only_json_is_accepted() {
        assert_eq!(Framing::from_accept(&HeaderMap::new()), Framing::Sse);
        assert_eq!(accept("*/*"), Framing::Sse);
        assert_eq!(accept("application/json, text/event-stream"), Framing::Sse);
        assert_eq!(accept("application/json"), Framing::Json);
        assert_eq!(accept("application/json; charset=utf-8"), Framing::Json);
        assert_eq!(
            accept("application/json, text/event-stream;q=0"),
            Framing::Json
        );
    }

    #[test]
    fn requests_are_checked_in_order() {
        let code = |body: &[u8]| parse(body).unwrap_err().error.code;
        assert_eq!(code(b"\xff\xfe"), PARSE_ERROR);
        assert_eq!(code(b"{"), PARSE_ERROR);
        assert_eq!(code(b"[]"), INVALID_REQUEST);
        assert_eq!(code(b"7"), INVALID_REQUEST);
        assert_eq!(
            code(br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#),
            INVALID_REQUEST
        );
        assert_eq!(code(br#"{"jsonrpc":"2.0","id":1}"#), INVALID_REQUEST);
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#),
            INVALID_REQUEST
        );
    }

    #[test]
    fn the_id_is_echoed_even_when_the_request_is_invalid() {
        let rejected = parse(br#"{"jsonrpc":"1.0","id":"abc","method":"ping"}"#).unwrap_err();
        assert_eq!(rejected.id, json!("abc"));
    }

    #[test]
    fn a_request_without_id_is_a_notification() {
        let incoming = parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert!(matches!(incoming, Ok(Incoming::Notification { .. })));
    }
}
