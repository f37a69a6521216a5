//! Picks the response to a request out of a body that is either plain JSON
//! or a `text/event-stream` (as MCP Streamable HTTP servers answer).

use serde_json::Value;

use crate::error::excerpt;
use crate::{Error, Id, Response, Result};

/// Reads the response to request `id` from a whole response `body`.
///
/// The body is a JSON-RPC message, a batch of them, or an SSE stream whose
/// events carry them in their `data`. `content_type` chooses the parser, but
/// the body is sniffed too, because servers are known to label SSE as JSON and
/// the reverse. Notifications and server-to-client requests are skipped; the
/// response whose id [matches](Id::matches) `id` wins, else the last response.
///
/// ```
/// use delibera_jsonrpc::{Id, read_response};
///
/// let body = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";
/// let response = read_response(body, Some("text/event-stream"), &Id::from(1))?;
/// assert!(response.is_success());
/// # Ok::<(), delibera_jsonrpc::Error>(())
/// ```
pub fn read_response(body: &[u8], content_type: Option<&str>, id: &Id) -> Result<Response> {
    let text = std::str::from_utf8(body).map_err(|error| Error::NotUtf8 {
        valid_up_to: error.valid_up_to(),
        body: excerpt(&String::from_utf8_lossy(body)),
    })?;
    let declared_sse = content_type.is_some_and(|ct| ct.contains("text/event-stream"));
    let looks_like_json = text.trim_start().starts_with(['{', '[']);
    let has_data_line = text
        .split(['\n', '\r'])
        .any(|line| line.starts_with("data:"));
    let mut responses = Vec::new();
    if has_data_line && (declared_sse || !looks_like_json) {
        for data in sse_data(text) {
            if !data.trim().is_empty() {
                collect_responses(&data, &mut responses)?;
            }
        }
    } else {
        collect_responses(text, &mut responses)?;
    }
    let matching = responses
        .iter()
        .rposition(|response| response.id.matches(id));
    match matching {
        Some(index) => Ok(responses.swap_remove(index)),
        None => responses.pop().ok_or_else(|| Error::NoResponse {
            body: excerpt(text),
        }),
    }
}

/// The `data` of every event of an event stream, as the SSE spec assembles
/// it (`data:` lines joined with `\n`; comments and other fields ignored;
/// lines end in CRLF, LF or CR). Unlike a live stream, the last event counts
/// even when the body ends without the blank line that would dispatch it.
fn sse_data(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut events = Vec::new();
    let mut data = String::new();
    let mut dispatch = |data: &mut String| {
        if !data.is_empty() {
            data.pop();
            events.push(std::mem::take(data));
        }
    };
    for line in normalized.split('\n') {
        if line.is_empty() {
            dispatch(&mut data);
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            data.push_str(value);
            data.push('\n');
        }
    }
    dispatch(&mut data);
    events
}

/// Adds the responses in `text` (one message or a batch) to `responses`,
/// skipping notifications, server-to-client requests and objects that carry
/// neither `result` nor `error`.
fn collect_responses(text: &str, responses: &mut Vec<Response>) -> Result<()> {
    let value: Value = serde_json::from_str(text.trim()).map_err(|source| Error::NotJson {
        source,
        body: excerpt(text),
    })?;
    let items = match value {
        Value::Array(items) => items,
        single => vec![single],
    };
    for item in items {
        if let Value::Object(object) = &item {
            let present = |member: &str| object.get(member).is_some_and(|value| !value.is_null());
            let is_request = present("method");
            let has_outcome = object.contains_key("result") || present("error");
            if is_request || !has_outcome {
                continue;
            }
        }
        let response = serde_json::from_value(item).map_err(|source| Error::NotAMessage {
            source,
            body: excerpt(text),
        })?;
        responses.push(response);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const RESPONSE: &str = r#"{"jsonrpc":"2.0","id":7,"result":{"ok":true}}"#;

    fn parse(body: &str, content_type: Option<&str>) -> Result<Response> {
        read_response(body.as_bytes(), content_type, &Id::from(7))
    }

    fn assert_ok(response: &Response) {
        assert_eq!(response.id, Id::from(7));
        assert_eq!(response.result(), Some(&json!({"ok": true})));
    }

    #[test]
    fn an_mcp_event_stream_yields_the_response_after_a_notification() {
        let body = concat!(
            ": keep-alive\r\n",
            "\r\n",
            "event: message\r\n",
            "id: 0\r\n",
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\r\n",
            "\r\n",
            "event: message\r\n",
            "id: 1\r\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":\"7\",\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"{}\"}],\"isError\":false}}\r\n",
            "\r\n",
        );
        let response = parse(body, Some("text/event-stream")).unwrap();
        assert_eq!(response.id, Id::from("7"));
        assert_eq!(response.result().unwrap()["isError"], json!(false));
    }

    #[test]
    fn every_line_ending_and_field_parses_the_same() {
        let lf = format!(": keep-alive\nevent: message\nid: 1\nretry: 10\ndata: {RESPONSE}\n\n");
        for body in [lf.clone(), lf.replace('\n', "\r\n"), lf.replace('\n', "\r")] {
            assert_ok(&parse(&body, Some("text/event-stream")).unwrap());
        }
        let with_bom = format!("\u{feff}{lf}");
        assert_ok(&parse(&with_bom, Some("text/event-stream")).unwrap());
        let no_space = format!("data:{RESPONSE}\n\n");
        assert_ok(&parse(&no_space, Some("text/event-stream")).unwrap());
    }

    #[test]
    fn data_split_over_several_lines_is_joined() {
        let body = "data: {\"jsonrpc\":\"2.0\",\ndata: \"id\":7,\"result\":{\"ok\":true}}\n\n";
        assert_ok(&parse(body, Some("text/event-stream")).unwrap());
    }

    #[test]
    fn a_stream_without_the_final_blank_line_still_yields_its_event() {
        assert_ok(&parse(&format!("data: {RESPONSE}"), Some("text/event-stream")).unwrap());
        assert_ok(&parse(&format!("data: {RESPONSE}\n"), Some("text/event-stream")).unwrap());
    }

    #[test]
    fn the_matching_id_wins_over_a_later_response() {
        let body = format!(
            "data: {RESPONSE}\n\ndata: {{\"jsonrpc\":\"2.0\",\"id\":8,\"result\":{{}}}}\n\n"
        );
        assert_ok(&parse(&body, None).unwrap());
    }

    #[test]
    fn without_a_matching_id_the_last_response_wins() {
        let body = "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":1}\n\n\
                    data: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":2}\n\n";
        let response = parse(body, None).unwrap();
        assert_eq!(response.result(), Some(&json!(2)));
    }

    #[test]
    fn a_json_batch_is_searched_by_id() {
        let body = format!("[{{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":0}},{RESPONSE}]");
        assert_ok(&parse(&body, Some("application/json")).unwrap());
    }

    #[test]
    fn a_lying_content_type_is_sniffed() {
        let sse = format!("data: {RESPONSE}\n\n");
        assert_ok(&parse(&sse, Some("application/json")).unwrap());
        assert_ok(&parse(RESPONSE, Some("text/event-stream")).unwrap());
    }

    #[test]
    fn an_error_response_is_a_response() {
        let body = r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32601,"message":"Unknown tool"}}"#;
        let response = parse(body, None).unwrap();
        assert_eq!(response.error().map(|error| error.code), Some(-32601));
    }

    #[test]
    fn garbage_is_an_error_that_keeps_the_text() {
        for body in [
            "",
            "<html>oops</html>",
            "data: not json\n\n",
            "{\"id\":7}",
            "5",
        ] {
            match parse(body, Some("text/event-stream")) {
                Err(error) => assert!(
                    body.contains(error.body().trim_end_matches('…')),
                    "{body:?} kept {:?}",
                    error.body()
                ),
                Ok(response) => panic!("{body:?} gave {response:?}"),
            }
        }
        assert!(matches!(
            parse("{\"id\":7}", None),
            Err(Error::NoResponse { .. })
        ));
        assert!(matches!(parse("[1]", None), Err(Error::NotAMessage { .. })));
        assert!(matches!(
            parse("data: nope\n\n", None),
            Err(Error::NotJson { .. })
        ));
        let huge = "x".repeat(10_000);
        let error = parse(&huge, None).unwrap_err();
        assert!(error.body().len() < 1_000);
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let error = read_response(&[0xff, 0xfe, b'{'], None, &Id::from(7)).unwrap_err();
        assert!(
            matches!(error, Error::NotUtf8 { valid_up_to: 0, .. }),
            "{error:?}"
        );
    }
}
