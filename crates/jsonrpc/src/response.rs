//! Responses: a result or an error object, for a request id.

use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::{ErrorObject, Id, VERSION};

/// A JSON-RPC response: the id of the request it answers, and its outcome.
///
/// Serializes with `"jsonrpc":"2.0"`. Reading is lenient: the `jsonrpc`
/// member is not required, a missing `id` reads as [`Id::Null`], a `null`
/// `error` counts as absent, and an `error` wins over a `result`. A message
/// with neither `result` nor `error` is not a response and does not read.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The id of the request this answers.
    pub id: Id,
    /// The result or the error.
    pub payload: ResponsePayload,
}

/// What a [`Response`] carries.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponsePayload {
    /// `result`: the call succeeded (the result may be `null`).
    Success(Value),
    /// `error`: the call failed.
    Failure(ErrorObject),
}

impl Response {
    /// A successful response.
    pub fn success(id: Id, result: Value) -> Self {
        Self {
            id,
            payload: ResponsePayload::Success(result),
        }
    }

    /// A failed response.
    pub fn failure(id: Id, error: ErrorObject) -> Self {
        Self {
            id,
            payload: ResponsePayload::Failure(error),
        }
    }

    /// Whether the call succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self.payload, ResponsePayload::Success(_))
    }

    /// The result, on success.
    pub fn result(&self) -> Option<&Value> {
        match &self.payload {
            ResponsePayload::Success(result) => Some(result),
            ResponsePayload::Failure(_) => None,
        }
    }

    /// The error, on failure.
    pub fn error(&self) -> Option<&ErrorObject> {
        match &self.payload {
            ResponsePayload::Success(_) => None,
            ResponsePayload::Failure(error) => Some(error),
        }
    }

    /// The result, or the error object.
    pub fn into_result(self) -> Result<Value, ErrorObject> {
        match self.payload {
            ResponsePayload::Success(result) => Ok(result),
            ResponsePayload::Failure(error) => Err(error),
        }
    }

    /// The response as JSON, exactly as it serializes.
    pub fn to_value(&self) -> Value {
        let mut object = Map::new();
        object.insert("jsonrpc".to_owned(), VERSION.into());
        object.insert("id".to_owned(), self.id.to_value());
        match &self.payload {
            ResponsePayload::Success(result) => object.insert("result".to_owned(), result.clone()),
            ResponsePayload::Failure(error) => object.insert("error".to_owned(), error.to_value()),
        };
        Value::Object(object)
    }

    /// Reads a response from a JSON value (see the type's docs for what is
    /// accepted); the text says what is wrong otherwise.
    pub(crate) fn from_value(value: Value) -> Result<Self, String> {
        let Value::Object(mut object) = value else {
            return Err(format!("a response must be an object, got {value}"));
        };
        let id = match object.remove("id") {
            None => Id::Null,
            Some(id) => Id::from_value(id)
                .ok_or_else(|| "`id` must be a number, a string or null".to_owned())?,
        };
        let payload = match (object.remove("error"), object.remove("result")) {
            (Some(error), _) if !error.is_null() => {
                ResponsePayload::Failure(ErrorObject::from_value(error))
            }
            (_, Some(result)) => ResponsePayload::Success(result),
            _ => return Err("a response needs `result` or `error`".to_owned()),
        };
        Ok(Self { id, payload })
    }
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("jsonrpc", VERSION)?;
        map.serialize_entry("id", &self.id)?;
        match &self.payload {
            ResponsePayload::Success(result) => map.serialize_entry("result", result)?,
            ResponsePayload::Failure(error) => map.serialize_entry("error", error)?,
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::from_value(Value::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn success_and_failure_round_trip() {
        let success = Response::success(Id::from(7), json!({"ok": true}));
        let wire = serde_json::to_value(&success).unwrap();
        assert_eq!(
            wire,
            json!({"jsonrpc": "2.0", "id": 7, "result": {"ok": true}})
        );
        assert_eq!(success.to_value(), wire);
        assert_eq!(serde_json::from_value::<Response>(wire).unwrap(), success);

        let failure = Response::failure(Id::from("m"), ErrorObject::method_not_found("no"));
        let wire = serde_json::to_value(&failure).unwrap();
        assert_eq!(
            wire,
            json!({"jsonrpc": "2.0", "id": "m", "error": {"code": -32601, "message": "no"}})
        );
        assert_eq!(failure.to_value(), wire);
        assert_eq!(serde_json::from_value::<Response>(wire).unwrap(), failure);

        let null = Response::success(Id::Null, Value::Null);
        let text = serde_json::to_string(&null).unwrap();
        assert_eq!(text, r#"{"jsonrpc":"2.0","id":null,"result":null}"#);
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), null);
    }

    #[test]
    fn a_near_error_envelope_reads_with_its_extra_members() {
        let wire = json!({
            "jsonrpc": "2.0",
            "id": "1",
            "error": {
                "name": "HANDLER_ERROR",
                "cause": {"name": "INVALID_TRANSACTION", "info": {}},
                "code": -32000,
                "message": "Server error",
                "data": {"TxExecutionError": {"InvalidTxError": {"InvalidNonce": {"tx_nonce": 5, "ak_nonce": 7}}}}
            }
        });
        let response: Response = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(response.id, Id::from("1"));
        let error = response.error().unwrap();
        assert_eq!(error.code, -32000);
        assert_eq!(error.get("name"), Some(&json!("HANDLER_ERROR")));
        assert_eq!(
            error.get("cause").and_then(|cause| cause.get("name")),
            Some(&json!("INVALID_TRANSACTION"))
        );
        assert_eq!(
            error.data.as_ref().and_then(
                |data| data.pointer("/TxExecutionError/InvalidTxError/InvalidNonce/ak_nonce")
            ),
            Some(&json!(7))
        );
        assert_eq!(serde_json::to_value(&response).unwrap(), wire);
    }

    #[test]
    fn reading_is_lenient_but_needs_an_outcome() {
        let no_version: Response = serde_json::from_value(json!({"id": 1, "result": 2})).unwrap();
        assert_eq!(no_version.result(), Some(&json!(2)));
        let no_id: Response = serde_json::from_value(json!({"error": {"code": -32700}})).unwrap();
        assert_eq!(no_id.id, Id::Null);
        let both: Response = serde_json::from_value(
            json!({"id": 1, "result": 1, "error": {"code": 3, "message": "m"}}),
        )
        .unwrap();
        assert_eq!(both.error().map(|error| error.code), Some(3));
        let null_error: Response =
            serde_json::from_value(json!({"id": 1, "result": 1, "error": null})).unwrap();
        assert!(null_error.is_success());
        assert_eq!(null_error.into_result(), Ok(json!(1)));
        for bad in [
            json!({"id": 7}),
            json!({"id": {}, "result": 1}),
            json!(5),
            json!([]),
        ] {
            assert!(
                serde_json::from_value::<Response>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
