//! u64 fields that near-sdk writes as a JSON number, or as a decimal string
//! when wrapped in `U64`: accept both, write a number.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(u64),
    String(String),
}

fn convert<E: serde::de::Error>(value: NumberOrString) -> Result<u64, E> {
    match value {
        NumberOrString::Number(number) => Ok(number),
        NumberOrString::String(text) => text.parse().map_err(|_| {
            E::custom(format!(
                "expected a u64 as a number or decimal string, got {text:?}"
            ))
        }),
    }
}

/// Deserializes a u64 given as a JSON number or a decimal string.
pub(crate) fn number_or_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<u64, D::Error> {
    convert(NumberOrString::deserialize(deserializer)?)
}

/// The same for an optional field.
pub(crate) fn option<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    Option::<NumberOrString>::deserialize(deserializer)?
        .map(convert)
        .transpose()
}

/// Reads a u64 from a JSON number or decimal string.
pub(crate) fn from_value(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
}
