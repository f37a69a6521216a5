//! Turns a response body (SSE stream or plain JSON) into the JSON-RPC
//! response that answers our request.

use std::convert::Infallible;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;

use crate::error::excerpt;
use crate::jsonrpc::{Id, Response};
use crate::{Error, Result};

/// Picks the response to request `id` out of a body received in `chunks`.
///
/// `content_type` chooses the parser, but the body is sniffed too, because
/// servers are known to label SSE as JSON and the reverse.
pub(crate) async fn parse_response(
    chunks: Vec<Vec<u8>>,
    content_type: Option<&str>,
    id: &Id,
) -> Result<Response> {
    let whole: Vec<u8> = chunks
        .iter()
        .flat_map(|chunk| chunk.iter().copied())
        .collect();
    let text = std::str::from_utf8(&whole).map_err(|_| Error::Malformed {
        reason: "body is not UTF-8".to_owned(),
        body: excerpt(&String::from_utf8_lossy(&whole)),
    })?;
    let declared_sse = content_type.is_some_and(|ct| ct.contains("text/event-stream"));
    let looks_like_json = text.trim_start().starts_with(['{', '[']);
    let has_data_line = text
        .lines()
        .any(|line| line.trim_end_matches('\r').starts_with("data:"));
    let messages = if has_data_line && (declared_sse || !looks_like_json) {
        sse_messages(chunks, text).await?
    } else {
        json_messages(text)?
    };
    pick(messages, id, text)
}

/// Every JSON-RPC message carried by the `data` of an SSE stream.
async fn sse_messages(mut chunks: Vec<Vec<u8>>, text: &str) -> Result<Vec<Response>> {
    // A stream that ends without the blank line that dispatches its last
    // event would otherwise lose that event.
    chunks.push(b"\n\n".to_vec());
    let mut events =
        futures_util::stream::iter(chunks.into_iter().map(Ok::<_, Infallible>)).eventsource();
    let mut messages = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.map_err(|error| Error::Malformed {
            reason: format!("invalid event stream: {error}"),
            body: excerpt(text),
        })?;
        if event.data.trim().is_empty() {
            continue;
        }
        messages.extend(json_messages(&event.data)?);
    }
    Ok(messages)
}

/// One JSON-RPC message, or a batch of them.
fn json_messages(text: &str) -> Result<Vec<Response>> {
    let malformed = |reason: String| Error::Malformed {
        reason,
        body: excerpt(text),
    };
    let value: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|error| malformed(format!("not JSON: {error}")))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        single => vec![single],
    };
    items
        .into_iter()
        .map(|item| {
            serde_json::from_value(item)
                .map_err(|error| malformed(format!("not a JSON-RPC message: {error}")))
        })
        .collect()
}

/// The response whose id matches, else the last response.
fn pick(messages: Vec<Response>, id: &Id, text: &str) -> Result<Response> {
    let mut responses: Vec<Response> = messages.into_iter().filter(Response::is_response).collect();
    let matching = responses
        .iter()
        .rposition(|response| response.id.as_ref().is_some_and(|got| got.matches(id)));
    match matching {
        Some(index) => Ok(responses.swap_remove(index)),
        None => responses.pop().ok_or_else(|| Error::Malformed {
            reason: "no JSON-RPC response in the body".to_owned(),
            body: excerpt(text),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONSE: &str = r#"{"jsonrpc":"2.0","id":7,"result":{"ok":true}}"#;

    fn chunks(parts: &[&str]) -> Vec<Vec<u8>> {
        parts.iter().map(|part| part.as_bytes().to_vec()).collect()
    }

    async fn parse(parts: &[&str], content_type: Option<&str>) -> Result<Response> {
        parse_response(chunks(parts), content_type, &Id::Number(7)).await
    }

    fn assert_ok(response: &Response) {
        assert_eq!(response.id, Some(Id::Number(7)));
        assert_eq!(response.result, Some(serde_json::json!({"ok": true})));
    }

    #[tokio::test]
    async fn a_body_split_at_every_byte_position_parses_the_same() {
        let body = format!(": keep-alive\r\nevent: message\r\nid: 1\r\ndata: {RESPONSE}\r\n\r\n");
        for cut in 0..=body.len() {
            let (head, tail) = body.split_at(cut);
            let response = parse(&[head, tail], Some("text/event-stream"))
                .await
                .unwrap();
            assert_ok(&response);
        }
        // And one byte per chunk.
        let bytes: Vec<String> = body.chars().map(String::from).collect();
        let parts: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_ok(&parse(&parts, Some("text/event-stream")).await.unwrap());
    }

    #[tokio::test]
    async fn data_split_over_several_lines_is_joined() {
        let body = "data: {\"jsonrpc\":\"2.0\",\ndata: \"id\":7,\"result\":{\"ok\":true}}\n\n";
        assert_ok(&parse(&[body], Some("text/event-stream")).await.unwrap());
    }

    #[tokio::test]
    async fn a_stream_without_the_final_blank_line_still_yields_its_event() {
        let body = format!("data: {RESPONSE}");
        assert_ok(&parse(&[&body], Some("text/event-stream")).await.unwrap());
    }

    #[tokio::test]
    async fn the_matching_id_wins_over_a_later_response() {
        let body = format!(
            "data: {RESPONSE}\n\ndata: {{\"jsonrpc\":\"2.0\",\"id\":8,\"result\":{{}}}}\n\n"
        );
        assert_ok(&parse(&[&body], None).await.unwrap());
    }

    #[tokio::test]
    async fn without_a_matching_id_the_last_response_wins() {
        let body = "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":1}\n\n\
                    data: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":2}\n\n";
        let response = parse(&[body], None).await.unwrap();
        assert_eq!(response.result, Some(serde_json::json!(2)));
    }

    #[tokio::test]
    async fn a_json_batch_is_searched_by_id() {
        let body = format!("[{{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":0}},{RESPONSE}]");
        assert_ok(&parse(&[&body], Some("application/json")).await.unwrap());
    }

    #[tokio::test]
    async fn a_lying_content_type_is_sniffed() {
        let sse = format!("data: {RESPONSE}\n\n");
        assert_ok(&parse(&[&sse], Some("application/json")).await.unwrap());
        assert_ok(&parse(&[RESPONSE], Some("text/event-stream")).await.unwrap());
    }

    #[tokio::test]
    async fn garbage_is_malformed_and_keeps_the_text() {
        for body in ["", "<html>oops</html>", "data: not json\n\n", "{\"id\":7}"] {
            match parse(&[body], Some("text/event-stream")).await {
                Err(Error::Malformed { body: kept, .. }) => {
                    assert!(body.contains(kept.trim_end_matches('…')))
                }
                other => panic!("{body:?} gave {other:?}"),
            }
        }
        let huge = "x".repeat(10_000);
        match parse(&[&huge], None).await {
            Err(Error::Malformed { body, .. }) => assert!(body.len() < 1_000),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn invalid_utf8_is_malformed() {
        let result = parse_response(vec![vec![0xff, 0xfe, b'{']], None, &Id::Number(7)).await;
        assert!(matches!(result, Err(Error::Malformed { .. })));
    }
}
