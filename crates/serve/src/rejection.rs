//! What the edge answers by itself, without the router.

use std::fmt;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A request the edge answers itself: the router never sees it (or its
/// answer is replaced). A server renders these through
/// [`Server::with_rejection_response`](crate::Server::with_rejection_response),
/// so they share its error shape; the default is [`json_rejection`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The declared `Content-Length` is over [`Edges::max_body_bytes`](crate::Edges::max_body_bytes);
    /// answered before the body is read.
    BodyTooLarge {
        /// The declared length.
        declared: u64,
        /// The largest accepted body.
        limit: usize,
    },
    /// The body did not arrive within [`Edges::body_read_timeout`](crate::Edges::body_read_timeout).
    BodyTimeout {
        /// The timeout that passed.
        after: Duration,
    },
    /// Every connection slot is busy with a request in flight.
    AtCapacity,
}

impl Rejection {
    /// 413, 408 or 503.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Rejection::AtCapacity => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Seconds a client should wait before retrying, where waiting helps.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Rejection::AtCapacity => Some(1),
            _ => None,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::BodyTooLarge { limit, .. } => {
                write!(f, "request body too large: the limit is {limit} bytes")
            }
            Rejection::BodyTimeout { after } => {
                write!(f, "request body not received within {}", describe(*after))
            }
            Rejection::AtCapacity => {
                f.write_str("the server is at its connection limit; retry shortly")
            }
        }
    }
}

/// `30 s`, or `250 ms` below a whole second.
fn describe(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

/// The default rendering: the rejection's status, `{"error": "…"}`, and
/// `Retry-After` where waiting helps.
pub fn json_rejection(rejection: Rejection) -> Response {
    let mut response = (
        rejection.status(),
        Json(serde_json::json!({ "error": rejection.to_string() })),
    )
        .into_response();
    if let Some(seconds) = rejection.retry_after_secs() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_happened() {
        let timeout = Rejection::BodyTimeout {
            after: Duration::from_millis(250),
        };
        assert_eq!(
            timeout.to_string(),
            "request body not received within 250 ms"
        );
        let timeout = Rejection::BodyTimeout {
            after: Duration::from_secs(30),
        };
        assert_eq!(timeout.to_string(), "request body not received within 30 s");
        let large = Rejection::BodyTooLarge {
            declared: 10,
            limit: 4,
        };
        assert_eq!(large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(Rejection::AtCapacity.retry_after_secs(), Some(1));
    }
}
