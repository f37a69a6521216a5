//! The server's side: what a request body is, and what to answer when it is
//! not a valid request.

use serde_json::Value;

use crate::{ErrorObject, Id, Notification, Request, Response, VERSION};

/// What one request body turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A request that expects a [`Response`].
    Call(Request),
    /// A request without an id, which gets no response.
    Notification(Notification),
    /// Not a valid request; answer with [`Rejection::into_response`].
    Rejected(Rejection),
}

/// A body that is not a valid request, with the error to answer with and the
/// request's id when it could be read ([`Id::Null`] otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The id to echo.
    pub id: Id,
    /// A [`PARSE_ERROR`](ErrorObject::PARSE_ERROR) or an
    /// [`INVALID_REQUEST`](ErrorObject::INVALID_REQUEST).
    pub error: ErrorObject,
}

impl Rejection {
    /// The error response to send back.
    pub fn into_response(self) -> Response {
        Response::failure(self.id, self.error)
    }
}

fn rejected(id: Id, error: ErrorObject) -> Incoming {
    Incoming::Rejected(Rejection { id, error })
}

/// Reads one JSON-RPC request object from a request body.
///
/// Checked in order: UTF-8 and JSON (else a parse error), then a single
/// object (batches are not supported), a valid `id`, `"jsonrpc": "2.0"` and a
/// string `method` (else an invalid request). `params` may be absent (it is
/// then `null`); a missing `id` makes a notification.
///
/// ```
/// use delibera_jsonrpc::{Incoming, parse_request};
///
/// let body = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
/// assert!(matches!(parse_request(body), Incoming::Call(call) if call.method == "ping"));
/// ```
pub fn parse_request(body: &[u8]) -> Incoming {
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(error) => {
            return rejected(
                Id::Null,
                ErrorObject::parse_error(format!(
                    "the body is not UTF-8 text (invalid byte at offset {})",
                    error.valid_up_to()
                )),
            );
        }
    };
    match serde_json::from_str(text) {
        Ok(value) => classify(value),
        Err(error) => rejected(
            Id::Null,
            ErrorObject::parse_error(format!("the body is not valid JSON: {error}")),
        ),
    }
}

/// [`parse_request`] after the JSON is read.
pub(crate) fn classify(value: Value) -> Incoming {
    let mut object = match value {
        Value::Object(object) => object,
        Value::Array(_) => {
            return rejected(
                Id::Null,
                ErrorObject::invalid_request(
                    "batch requests are not supported: send one JSON-RPC object per request",
                ),
            );
        }
        _ => {
            return rejected(
                Id::Null,
                ErrorObject::invalid_request("the body must be a JSON-RPC request object"),
            );
        }
    };
    let id = match object.remove("id").map(Id::from_value) {
        None => None,
        Some(Some(id)) => Some(id),
        Some(None) => {
            return rejected(
                Id::Null,
                ErrorObject::invalid_request("`id` must be a string, a number or null"),
            );
        }
    };
    let echo = id.clone().unwrap_or(Id::Null);
    match object.get("jsonrpc") {
        Some(Value::String(version)) if version == VERSION => {}
        Some(other) => {
            return rejected(
                echo,
                ErrorObject::invalid_request(format!(
                    "`jsonrpc` must be \"{VERSION}\", got {other}"
                )),
            );
        }
        None => {
            return rejected(
                echo,
                ErrorObject::invalid_request(format!(
                    "`jsonrpc` is missing: it must be \"{VERSION}\""
                )),
            );
        }
    }
    let method = match object.remove("method") {
        Some(Value::String(method)) => method,
        Some(_) => {
            return rejected(
                echo,
                ErrorObject::invalid_request("`method` must be a string"),
            );
        }
        None => return rejected(echo, ErrorObject::invalid_request("`method` is missing")),
    };
    let params = object.remove("params").unwrap_or(Value::Null);
    match id {
        Some(id) => Incoming::Call(Request { method, id, params }),
        None => Incoming::Notification(Notification { method, params }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn code(body: &[u8]) -> i64 {
        match parse_request(body) {
            Incoming::Rejected(rejection) => rejection.error.code,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_are_checked_in_order() {
        assert_eq!(code(b"\xff\xfe"), ErrorObject::PARSE_ERROR);
        assert_eq!(code(b"{"), ErrorObject::PARSE_ERROR);
        assert_eq!(code(b"[]"), ErrorObject::INVALID_REQUEST);
        assert_eq!(code(b"7"), ErrorObject::INVALID_REQUEST);
        assert_eq!(
            code(br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#),
            ErrorObject::INVALID_REQUEST
        );
        assert_eq!(
            code(br#"{"id":1,"method":"ping"}"#),
            ErrorObject::INVALID_REQUEST
        );
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":1}"#),
            ErrorObject::INVALID_REQUEST
        );
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":1,"method":7}"#),
            ErrorObject::INVALID_REQUEST
        );
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#),
            ErrorObject::INVALID_REQUEST
        );
    }

    #[test]
    fn the_id_is_echoed_even_when_the_request_is_invalid() {
        let Incoming::Rejected(rejection) =
            parse_request(br#"{"jsonrpc":"1.0","id":"abc","method":"ping"}"#)
        else {
            panic!("accepted a 1.0 request");
        };
        assert_eq!(rejection.id, Id::from("abc"));
        assert_eq!(
            rejection.into_response().to_value(),
            json!({
                "jsonrpc": "2.0",
                "id": "abc",
                "error": {"code": -32600, "message": "`jsonrpc` must be \"2.0\", got \"1.0\""},
            })
        );
    }

    #[test]
    fn a_request_without_id_is_a_notification() {
        let incoming = parse_request(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(
            incoming,
            Incoming::Notification(Notification::new("notifications/initialized", Value::Null))
        );
    }

    #[test]
    fn a_call_keeps_its_id_and_params() {
        let incoming = parse_request(
            br#"{"jsonrpc":"2.0","id":-4,"method":"tools/call","params":{"name":"list_keys"}}"#,
        );
        let Incoming::Call(call) = incoming else {
            panic!("{incoming:?}");
        };
        assert_eq!(call.id.to_value(), json!(-4));
        assert_eq!(call.params, json!({"name": "list_keys"}));
        let null_id = parse_request(br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#);
        assert!(matches!(
            null_id,
            Incoming::Call(Request { id: Id::Null, .. })
        ));
    }

    #[test]
    fn a_server_answers_with_the_call_id() {
        let Incoming::Call(call) =
            parse_request(br#"{"jsonrpc":"2.0","id":"req-1","method":"ping"}"#)
        else {
            panic!("not a call");
        };
        let answer = Response::success(call.id, json!({}));
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"jsonrpc":"2.0","id":"req-1","result":{}}"#
        );
    }
}
