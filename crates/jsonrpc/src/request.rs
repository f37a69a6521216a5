//! Requests (which expect an answer) and notifications (which do not).

use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::server::{Incoming, classify};
use crate::{Id, VERSION};

/// A JSON-RPC request. Serializes with `"jsonrpc":"2.0"`; `params` is left
/// out when it is `null`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The method name, e.g. `tools/call`.
    pub method: String,
    /// Echoed by the server in its response.
    pub id: Id,
    /// The method's parameters (`null` for none).
    pub params: Value,
}

impl Request {
    /// A request for `method` with `params`.
    pub fn new(id: impl Into<Id>, method: impl Into<String>, params: Value) -> Self {
        Self {
            method: method.into(),
            id: id.into(),
            params,
        }
    }
}

/// A JSON-RPC notification: a request without an id, which gets no answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The method name, e.g. `notifications/initialized`.
    pub method: String,
    /// The method's parameters (`null` for none).
    pub params: Value,
}

impl Notification {
    /// A notification of `method` with `params`.
    pub fn new(method: impl Into<String>, params: Value) -> Self {
        Self {
            method: method.into(),
            params,
        }
    }
}

fn serialize_call<S: Serializer>(
    serializer: S,
    id: Option<&Id>,
    method: &str,
    params: &Value,
) -> Result<S::Ok, S::Error> {
    let members = 2 + usize::from(id.is_some()) + usize::from(!params.is_null());
    let mut map = serializer.serialize_map(Some(members))?;
    map.serialize_entry("jsonrpc", VERSION)?;
    if let Some(id) = id {
        map.serialize_entry("id", id)?;
    }
    map.serialize_entry("method", method)?;
    if !params.is_null() {
        map.serialize_entry("params", params)?;
    }
    map.end()
}

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_call(serializer, Some(&self.id), &self.method, &self.params)
    }
}

impl Serialize for Notification {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_call(serializer, None, &self.method, &self.params)
    }
}

/// Reading checks what a server checks (see [`parse_request`](crate::parse_request)).
impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match classify(Value::deserialize(deserializer)?) {
            Incoming::Call(request) => Ok(request),
            Incoming::Notification(_) => Err(D::Error::custom(
                "a notification (no `id`) where a request was expected",
            )),
            Incoming::Rejected(rejection) => Err(D::Error::custom(rejection.error.message)),
        }
    }
}

/// Reading checks what a server checks (see [`parse_request`](crate::parse_request)).
impl<'de> Deserialize<'de> for Notification {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match classify(Value::deserialize(deserializer)?) {
            Incoming::Notification(notification) => Ok(notification),
            Incoming::Call(_) => Err(D::Error::custom(
                "a request (with an `id`) where a notification was expected",
            )),
            Incoming::Rejected(rejection) => Err(D::Error::custom(rejection.error.message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_request_carries_the_version_and_round_trips() {
        let request = Request::new(7, "tools/call", json!({"name": "get_memory"}));
        let wire = serde_json::to_value(&request).unwrap();
        assert_eq!(
            wire,
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "get_memory"}})
        );
        assert_eq!(serde_json::from_value::<Request>(wire).unwrap(), request);
        let string_id = Request::new("1", "block", json!({"finality": "final"}));
        let text = serde_json::to_string(&string_id).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), string_id);
    }

    #[test]
    fn null_params_are_left_out() {
        let request = Request::new(1, "ping", Value::Null);
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})
        );
        let notification = Notification::new("notifications/initialized", Value::Null);
        let wire = serde_json::to_value(&notification).unwrap();
        assert_eq!(
            wire,
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
        );
        assert_eq!(
            serde_json::from_value::<Notification>(wire).unwrap(),
            notification
        );
    }

    #[test]
    fn reading_rejects_what_a_server_rejects() {
        for bad in [
            json!({"id": 1, "method": "ping"}),
            json!({"jsonrpc": "1.0", "id": 1, "method": "ping"}),
            json!({"jsonrpc": "2.0", "id": 1}),
            json!({"jsonrpc": "2.0", "method": "ping"}),
            json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]),
        ] {
            assert!(
                serde_json::from_value::<Request>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        assert!(
            serde_json::from_value::<Notification>(
                json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})
            )
            .is_err()
        );
    }
}
