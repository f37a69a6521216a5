//! Function-call arguments byte-for-byte as near-api-js encodes a JS object.
//!
//! near-api-js sends `JSON.stringify(args)`. For arguments given as JSON text
//! that is `JSON.stringify(JSON.parse(text))`: members in the text's order
//! (array-index keys first, as JavaScript orders them), no whitespace, every
//! number a double printed by `Number.prototype.toString`.

use std::fmt::Write as _;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::{Error, Result};

/// A JSON value as JavaScript holds it after `JSON.parse`: object members in
/// order, every number an f64.
enum JsValue {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<JsValue>),
    Object(Vec<(String, JsValue)>),
}

impl<'de> Deserialize<'de> for JsValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsValueVisitor)
    }
}

struct JsValueVisitor;

impl<'de> Visitor<'de> for JsValueVisitor {
    type Value = JsValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_unit<E>(self) -> Result<JsValue, E> {
        Ok(JsValue::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<JsValue, E> {
        Ok(JsValue::Bool(value))
    }

    // JavaScript numbers are doubles: big integers round, as JSON.parse rounds them.
    fn visit_u64<E>(self, value: u64) -> Result<JsValue, E> {
        Ok(JsValue::Number(value as f64))
    }

    fn visit_i64<E>(self, value: i64) -> Result<JsValue, E> {
        Ok(JsValue::Number(value as f64))
    }

    fn visit_f64<E>(self, value: f64) -> Result<JsValue, E> {
        Ok(JsValue::Number(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<JsValue, E> {
        Ok(JsValue::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<JsValue, E> {
        Ok(JsValue::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(JsValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsValue, A::Error> {
        let mut members: Vec<(String, JsValue)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, JsValue>()? {
            // A repeated key keeps its first position and takes the last value.
            match members.iter_mut().find(|(existing, _)| *existing == key) {
                Some(member) => member.1 = value,
                None => members.push((key, value)),
            }
        }
        // JavaScript lists array-index keys first, in numeric order.
        let (mut indices, names): (Vec<_>, Vec<_>) = members
            .into_iter()
            .partition(|(key, _)| array_index(key).is_some());
        indices.sort_by_key(|(key, _)| array_index(key));
        indices.extend(names);
        Ok(JsValue::Object(indices))
    }
}

/// A canonical array index (`0`, `17`, not `017`), below 2^32 - 1.
fn array_index(key: &str) -> Option<u32> {
    let index: u32 = key.parse().ok()?;
    (index != u32::MAX && index.to_string() == key).then_some(index)
}

/// `JSON.stringify(JSON.parse(text))`: the bytes near-api-js sends for an
/// arguments object written as `text`.
pub fn js_json_stringify(text: &str) -> Result<String> {
    let value: JsValue = serde_json::from_str(text).map_err(|error| Error::InvalidInput {
        what: "JSON arguments",
        reason: error.to_string(),
    })?;
    let mut out = String::new();
    write_js(&value, &mut out);
    Ok(out)
}

/// A JSON string literal escaped as JSON.stringify escapes it: `"` and `\`,
/// the five short control escapes, other controls as lowercase `\u00xx`,
/// everything else raw UTF-8.
fn write_string(text: &str, out: &mut String) {
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            control if u32::from(control) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(control));
            }
            other => out.push(other),
        }
    }
    out.push('"');
}

fn write_js(value: &JsValue, out: &mut String) {
    match value {
        JsValue::Null => out.push_str("null"),
        JsValue::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
        JsValue::Number(number) => out.push_str(&js_number(*number)),
        JsValue::String(text) => write_string(text, out),
        JsValue::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_js(item, out);
            }
            out.push(']');
        }
        JsValue::Object(members) => {
            out.push('{');
            for (index, (key, item)) in members.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_js(item, out);
            }
            out.push('}');
        }
    }
}

/// `Number.prototype.toString()` (ECMA-262 Number::toString, radix 10).
fn js_number(number: f64) -> String {
    if number == 0.0 {
        return "0".to_owned();
    }
    if !number.is_finite() {
        // JSON.stringify writes null for these; JSON input cannot produce them.
        return "null".to_owned();
    }
    let sign = if number < 0.0 { "-" } else { "" };
    // Rust's `{:e}` gives the shortest round-trip digits: "d.ddde±x".
    let scientific = format!("{:e}", number.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exponent: i64 = exponent.parse().unwrap_or_default();
    let k = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    let n = exponent + 1; // value = 0.digits × 10^n
    let mut out = String::from(sign);
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n(
            '0',
            usize::try_from(n - k).unwrap_or(0),
        ));
    } else if 0 < n && n <= 21 {
        let (whole, fraction) = digits.split_at(usize::try_from(n).unwrap_or(0));
        let _ = write!(out, "{whole}.{fraction}");
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', usize::try_from(-n).unwrap_or(0)));
        out.push_str(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let exponent = n - 1;
        let _ = write!(
            out,
            "e{}{}",
            if exponent < 0 { '-' } else { '+' },
            exponent.abs()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_javascript_prints_them() {
        for (number, text) in [
            (7.0, "7"),
            (-7.0, "-7"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (123456789012345678.0, "123456789012345680"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (1e20, "100000000000000000000"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (-2.5e-8, "-2.5e-8"),
            (0.0, "0"),
        ] {
            assert_eq!(js_number(number), text, "{number}");
        }
    }

    #[test]
    fn floats_parse_correctly_rounded_as_json_parse_does() {
        // Each once came back one digit off from near-api-js without
        // serde_json's `float_roundtrip`.
        for text in [
            "951704.0637979461",
            "106375.70989761525",
            "956661.0938016953",
        ] {
            assert_eq!(js_json_stringify(text).unwrap(), text);
        }
        assert_eq!(
            js_json_stringify("123456789012345678").unwrap(),
            "123456789012345680"
        );
    }

    #[test]
    fn stringify_keeps_member_order_drops_whitespace_and_lists_indices_first() {
        let text =
            r#"{ "b": [1, 2.50, "é\n"], "a": null, "2": true, "10": false, "01": 0, "b": "last" }"#;
        assert_eq!(
            js_json_stringify(text).unwrap(),
            r#"{"2":true,"10":false,"b":"last","a":null,"01":0}"#
        );
        assert_eq!(
            js_json_stringify(r#"["é\n\u0001", 1e2]"#).unwrap(),
            "[\"é\\n\\u0001\",100]"
        );
    }
}
