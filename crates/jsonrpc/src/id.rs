//! The request id.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Number, Value};

/// A request id: the spec allows a number, a string or `null`.
///
/// Numbers are kept as JSON numbers, so a server echoes whatever a client
/// sent (negative or fractional ids included).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Id {
    /// A numeric id.
    Number(Number),
    /// A string id.
    String(String),
    /// `null`: what a server answers with when it could not read the id.
    Null,
}

impl Id {
    /// Whether `other` names the same request, treating `1` and `"1"` alike
    /// (servers are not consistent about echoing the type).
    ///
    /// ```
    /// use delibera_jsonrpc::Id;
    ///
    /// assert!(Id::from(7).matches(&Id::from("7")));
    /// assert!(!Id::from(7).matches(&Id::from(8)));
    /// ```
    pub fn matches(&self, other: &Id) -> bool {
        match (self, other) {
            (Id::Number(a), Id::Number(b)) => numbers_equal(a, b),
            (Id::String(a), Id::String(b)) => a == b,
            (Id::Number(number), Id::String(text)) | (Id::String(text), Id::Number(number)) => {
                number_matches_text(number, text)
            }
            (Id::Null, Id::Null) => true,
            _ => false,
        }
    }

    /// The id as a JSON value.
    pub fn to_value(&self) -> Value {
        match self {
            Id::Number(number) => Value::Number(number.clone()),
            Id::String(text) => Value::String(text.clone()),
            Id::Null => Value::Null,
        }
    }

    /// Reads an id from a JSON value; `None` for anything but a number, a
    /// string or `null`.
    pub fn from_value(value: Value) -> Option<Id> {
        match value {
            Value::Number(number) => Some(Id::Number(number)),
            Value::String(text) => Some(Id::String(text)),
            Value::Null => Some(Id::Null),
            _ => None,
        }
    }
}

fn numbers_equal(a: &Number, b: &Number) -> bool {
    a == b || a.as_f64().is_some_and(|a| b.as_f64() == Some(a))
}

fn number_matches_text(number: &Number, text: &str) -> bool {
    if let Ok(parsed) = text.parse::<u64>() {
        return number.as_u64() == Some(parsed);
    }
    if let Ok(parsed) = text.parse::<i64>() {
        return number.as_i64() == Some(parsed);
    }
    false
}

impl From<u64> for Id {
    fn from(number: u64) -> Self {
        Id::Number(number.into())
    }
}

impl From<String> for Id {
    fn from(text: String) -> Self {
        Id::String(text)
    }
}

impl From<&str> for Id {
    fn from(text: &str) -> Self {
        Id::String(text.to_owned())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Number(number) => write!(f, "{number}"),
            Id::String(text) => f.write_str(text),
            Id::Null => f.write_str("null"),
        }
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Id::Number(number) => number.serialize(serializer),
            Id::String(text) => serializer.serialize_str(text),
            Id::Null => serializer.serialize_unit(),
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Id::from_value(value)
            .ok_or_else(|| D::Error::custom("an id must be a number, a string or null"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_strings_match_leniently() {
        assert!(Id::from(1).matches(&Id::from("1")));
        assert!(Id::from("1").matches(&Id::from(1)));
        assert!(Id::from("007").matches(&Id::from(7)));
        assert!(!Id::from("x").matches(&Id::from(1)));
        assert!(!Id::from(1).matches(&Id::Null));
        assert!(Id::Null.matches(&Id::Null));
        let negative: Id = serde_json::from_str("-3").unwrap();
        assert!(negative.matches(&Id::from("-3")));
        let float: Id = serde_json::from_str("2.0").unwrap();
        assert!(float.matches(&Id::from(2)));
    }

    #[test]
    fn ids_round_trip_through_json() {
        for text in ["7", "-1", "1.5", "\"abc\"", "null"] {
            let id: Id = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&id).unwrap(), text);
            assert_eq!(id.to_value(), serde_json::from_str::<Value>(text).unwrap());
        }
        assert!(serde_json::from_str::<Id>("{}").is_err());
        assert!(serde_json::from_str::<Id>("[1]").is_err());
        assert!(serde_json::from_str::<Id>("true").is_err());
    }

    #[test]
    fn display_is_the_bare_id() {
        assert_eq!(Id::from(3).to_string(), "3");
        assert_eq!(Id::from("a").to_string(), "a");
        assert_eq!(Id::Null.to_string(), "null");
    }
}
