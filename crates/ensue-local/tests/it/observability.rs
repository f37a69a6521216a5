//! A span per request with the JSON-RPC method and tool, and no secret in any
//! log line.
//!
//! The one test here installs the global subscriber, so it also sees the logs
//! of the other tests running in this binary at the same time. The spans it
//! looks for are the ones on its own thread (see below); the secrets it looks
//! for must be absent from every line of every thread.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use reqwest::StatusCode;
use serde_json::Value;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::common::{create, http, post_raw, start, stop};

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test]
async fn requests_are_traced_without_secrets() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(FmtSpan::CLOSE)
        .with_thread_ids(true)
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    // `#[tokio::test]` runs a current-thread runtime: the server's accept loop
    // and connection tasks, hence its request spans, run on this thread, and
    // each line says which thread wrote it.
    let this_thread = format!("{:?}", std::thread::current().id());

    let server = start().await;
    let bootstrap = server.api_key().expose().to_owned();
    create(&server, &bootstrap, "agent/w1/secret", "the-stored-value").await;

    let registered = http()
        .post(format!("{}auth/agent-register", server.url()))
        .body(r#"{"name":"traced-org"}"#)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let new_key = registered["api_key"].as_str().unwrap().to_owned();
    let claim_token = registered["claim_url"]
        .as_str()
        .unwrap()
        .split("token=")
        .nth(1)
        .unwrap()
        .to_owned();
    let denied = post_raw(
        server.url(),
        Some("lmn_presented_but_wrong"),
        None,
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    stop(server).await;

    let logs = capture.text();
    let ours = logs
        .lines()
        .filter(|line| line.contains(&this_thread))
        .collect::<Vec<_>>()
        .join("\n");
    let traced_call = ours
        .lines()
        .find(|line| line.contains("request{") && line.contains("create_memory"))
        .unwrap_or_else(|| panic!("no span for the tools/call:\n{ours}"));
    assert!(traced_call.contains("tools/call"), "{traced_call}");
    assert!(traced_call.contains("http.path=/"), "{traced_call}");
    assert!(ours.contains("/auth/agent-register"), "{ours}");
    for secret in [
        bootstrap.as_str(),
        new_key.as_str(),
        claim_token.as_str(),
        "lmn_presented_but_wrong",
        "the-stored-value",
    ] {
        let leaks = logs
            .lines()
            .filter(|line| line.contains(secret))
            .collect::<Vec<_>>();
        assert!(
            leaks.is_empty(),
            "{secret} was logged:\n{}",
            leaks.join("\n")
        );
    }
}
