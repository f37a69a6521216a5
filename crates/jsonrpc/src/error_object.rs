//! The `error` member of a failed response.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// A JSON-RPC error object: `code`, `message`, optional `data`, and any other
/// members a server adds (NEAR adds `name` and `cause`), kept in `extra`.
///
/// Reading is lenient, because servers are: a missing or non-numeric `code`
/// reads as `0`, a numeric string (`"-32000"`) as its number, a missing
/// `message` as empty, and an error that is a bare string (or any other
/// non-object) as that text in `message`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorObject {
    /// The error code, e.g. [`ErrorObject::METHOD_NOT_FOUND`].
    pub code: i64,
    /// A short description.
    pub message: String,
    /// Extra information, if the server sent any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// Members beyond the spec's three, as the server sent them.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ErrorObject {
    /// -32700: the server could not parse the JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// -32600: not a valid request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// -32601: the method does not exist.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// -32602: invalid method parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// -32603: internal JSON-RPC error.
    pub const INTERNAL_ERROR: i64 = -32603;

    /// An error with this code and message, no `data` and no extra members.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
            extra: Map::new(),
        }
    }

    /// A [`PARSE_ERROR`](Self::PARSE_ERROR).
    pub fn parse_error(message: impl Into<String>) -> Self {
        Self::new(Self::PARSE_ERROR, message)
    }

    /// An [`INVALID_REQUEST`](Self::INVALID_REQUEST).
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(Self::INVALID_REQUEST, message)
    }

    /// A [`METHOD_NOT_FOUND`](Self::METHOD_NOT_FOUND).
    pub fn method_not_found(message: impl Into<String>) -> Self {
        Self::new(Self::METHOD_NOT_FOUND, message)
    }

    /// An [`INVALID_PARAMS`](Self::INVALID_PARAMS).
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(Self::INVALID_PARAMS, message)
    }

    /// An [`INTERNAL_ERROR`](Self::INTERNAL_ERROR).
    pub fn internal_error(message: impl Into<String>) -> Self {
        Self::new(Self::INTERNAL_ERROR, message)
    }

    /// The same error with `data` set.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// A member beyond `code`, `message` and `data`, e.g. NEAR's `name`.
    pub fn get(&self, member: &str) -> Option<&Value> {
        self.extra.get(member)
    }

    /// The error object as JSON, exactly as it serializes.
    pub fn to_value(&self) -> Value {
        let mut object = Map::new();
        object.insert("code".to_owned(), self.code.into());
        object.insert("message".to_owned(), self.message.clone().into());
        if let Some(data) = &self.data {
            object.insert("data".to_owned(), data.clone());
        }
        for (member, value) in &self.extra {
            object
                .entry(member.clone())
                .or_insert_with(|| value.clone());
        }
        Value::Object(object)
    }

    /// Reads an error object from any JSON value, leniently (see the type's docs).
    pub fn from_value(value: Value) -> Self {
        let mut object = match value {
            Value::Object(object) => object,
            Value::String(text) => return Self::new(0, text),
            other => return Self::new(0, other.to_string()),
        };
        let code = object.remove("code").as_ref().map_or(0, lenient_code);
        let message = match object.remove("message") {
            Some(Value::String(text)) => text,
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        let data = object.remove("data").filter(|data| !data.is_null());
        Self {
            code,
            message,
            data,
            extra: object,
        }
    }
}

/// An integer code, or one written as a string or an integral float; else 0.
fn lenient_code(code: &Value) -> i64 {
    match code {
        Value::Number(number) => number.as_i64().or_else(|| {
            number
                .as_f64()
                .filter(|float| float.fract() == 0.0 && float.abs() <= i64::MAX as f64)
                .map(|float| float as i64)
        }),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
    .unwrap_or(0)
}

impl<'de> Deserialize<'de> for ErrorObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Self::from_value)
    }
}

impl fmt::Display for ErrorObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JSON-RPC error {}: {}", self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_spec_codes() {
        assert_eq!(ErrorObject::parse_error("x").code, -32700);
        assert_eq!(ErrorObject::invalid_request("x").code, -32600);
        assert_eq!(ErrorObject::method_not_found("x").code, -32601);
        assert_eq!(ErrorObject::invalid_params("x").code, -32602);
        assert_eq!(ErrorObject::internal_error("x").code, -32603);
    }

    #[test]
    fn a_near_error_keeps_name_and_cause() {
        let wire = json!({
            "name": "HANDLER_ERROR",
            "cause": {"name": "UNKNOWN_ACCOUNT", "info": {"requested_account_id": "a.testnet"}},
            "code": -32000,
            "message": "Server error",
            "data": "legacy text"
        });
        let error: ErrorObject = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(error.code, -32000);
        assert_eq!(error.message, "Server error");
        assert_eq!(error.data, Some(json!("legacy text")));
        assert_eq!(error.get("name"), Some(&json!("HANDLER_ERROR")));
        assert_eq!(
            error
                .get("cause")
                .and_then(|cause| cause.pointer("/info/requested_account_id")),
            Some(&json!("a.testnet"))
        );
        assert_eq!(serde_json::to_value(&error).unwrap(), wire);
        assert_eq!(error.to_value(), wire);
    }

    #[test]
    fn reading_is_lenient() {
        let missing: ErrorObject =
            serde_json::from_value(json!({"name": "INTERNAL_ERROR"})).unwrap();
        assert_eq!((missing.code, missing.message.as_str()), (0, ""));
        let text: ErrorObject =
            serde_json::from_value(json!({"code": "-32601", "message": "no"})).unwrap();
        assert_eq!(text.code, -32601);
        let float: ErrorObject = serde_json::from_value(json!({"code": -32000.0})).unwrap();
        assert_eq!(float.code, -32000);
        let bare: ErrorObject = serde_json::from_value(json!("boom")).unwrap();
        assert_eq!((bare.code, bare.message.as_str()), (0, "boom"));
        let null_data: ErrorObject =
            serde_json::from_value(json!({"code": 1, "message": "m", "data": null})).unwrap();
        assert_eq!(null_data.data, None);
    }

    #[test]
    fn a_built_error_serializes_the_spec_members_only() {
        let error =
            ErrorObject::invalid_params("`key` is missing").with_data(json!({"field": "key"}));
        assert_eq!(
            serde_json::to_value(&error).unwrap(),
            json!({"code": -32602, "message": "`key` is missing", "data": {"field": "key"}})
        );
        assert_eq!(error.to_string(), "JSON-RPC error -32602: `key` is missing");
    }
}
