//! The server's side of JSON-RPC (envelopes from `delibera-jsonrpc`), MCP
//! tool results, and the response framing (one SSE event, or plain JSON).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use delibera_jsonrpc::{ErrorObject, Id};
use serde_json::{Map, Value, json};

/// The HTTP status a request-level failure is answered with: 400 when the
/// request could not be understood at all (as MCP servers do), otherwise 200
/// with the error in the JSON-RPC body.
pub(crate) fn http_status(error: &ErrorObject) -> StatusCode {
    match error.code {
        ErrorObject::PARSE_ERROR | ErrorObject::INVALID_REQUEST => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    }
}

/// A success response to request `id`: the envelope `Response::to_value`
/// builds, with `result` moved in rather than copied (it holds every value
/// the call read).
pub(crate) fn success(id: Id, result: Value) -> Value {
    let mut envelope = Map::new();
    envelope.insert("jsonrpc".into(), delibera_jsonrpc::VERSION.into());
    envelope.insert("id".into(), id.to_value());
    envelope.insert("result".into(), result);
    Value::Object(envelope)
}

/// An error response to request `id`.
pub(crate) fn failure(id: Id, error: ErrorObject) -> Value {
    delibera_jsonrpc::Response::failure(id, error).to_value()
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
    fn success_is_the_envelope_the_jsonrpc_crate_builds() {
        let result = json!({ "results": [{ "key_name": "k", "value": "v", "status": "success" }] });
        for id in [Id::from(7u64), Id::String("req-1".into()), Id::Null] {
            assert_eq!(
                success(id.clone(), result.clone()),
                delibera_jsonrpc::Response::success(id, result.clone()).to_value()
            );
        }
    }

    #[test]
    fn only_unreadable_requests_get_a_400() {
        assert_eq!(
            http_status(&ErrorObject::parse_error("x")),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            http_status(&ErrorObject::invalid_request("x")),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            http_status(&ErrorObject::method_not_found("x")),
            StatusCode::OK
        );
        assert_eq!(
            http_status(&ErrorObject::internal_error("x")),
            StatusCode::OK
        );
    }
}
