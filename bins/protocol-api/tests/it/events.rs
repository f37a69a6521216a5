//! `GET /api/provision/status/{jobId}/events`: every committed transition
//! of a job, in order, with the status route's secret rules, resumable with
//! `Last-Event-ID`, with a heartbeat, ending at `complete`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::common::{DEADLINE, GateState, Holds, Options, TestApp, TestDeployer};

/// The fields that only `awaiting_near_signature` and `complete` may show.
const SECRET_FIELDS: [&str; 5] = [
    "storachaPrivateKey",
    "storachaDelegation",
    "ensueApiKey",
    "ensueClaimUrl",
    "ensueVerificationCode",
];

/// One parsed Server-Sent Event (or heartbeat comment).
#[derive(Debug, Clone)]
enum Sse {
    Status { id: String, document: Value },
    Comment,
}

/// An open event stream, read frame by frame.
struct Stream {
    body: Body,
    buffer: String,
}

impl Stream {
    async fn open(app: &TestApp, job_id: &str, last_event_id: Option<&str>) -> Self {
        let mut request = Request::builder()
            .uri(format!("/api/provision/status/{job_id}/events"))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = tower::ServiceExt::oneshot(
            protocol_api::app(app.state.clone()),
            request.body(Body::empty()).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next event; `None` when the server ended the stream.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if block
                    .lines()
                    .filter(|line| !line.is_empty())
                    .all(|line| line.starts_with(':'))
                {
                    return Some(Sse::Comment);
                }
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|line| line.strip_prefix(&format!("{name}:")))
                        .map(|value| value.trim_start().to_owned())
                };
                assert_eq!(field("event").as_deref(), Some("status"), "{block}");
                let document = serde_json::from_str(&field("data").unwrap()).unwrap();
                return Some(Sse::Status {
                    id: field("id").unwrap(),
                    document,
                });
            }
            let frame = tokio::time::timeout(DEADLINE, self.body.frame())
                .await
                .expect("an event within the deadline")?
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next status event, skipping heartbeats.
    async fn status(&mut self) -> Option<(String, Value)> {
        loop {
            match self.next().await? {
                Sse::Status { id, document } => return Some((id, document)),
                Sse::Comment => {}
            }
        }
    }
}

fn status_of(document: &Value) -> &str {
    document["status"].as_str().unwrap()
}

/// The statuses a coordinator job passes through, in order.
const COORDINATOR_PATH: [&str; 8] = [
    "creating_space",
    "provisioning_ensue",
    "preparing_phala",
    "deploying_phala",
    "waiting_for_url",
    "awaiting_near_signature",
    "registering",
    "complete",
];

/// Asserts the secret rule on one pushed document.
fn assert_secret_rule(document: &Value) {
    let reveals = matches!(status_of(document), "awaiting_near_signature" | "complete");
    for field in SECRET_FIELDS {
        if !reveals {
            assert!(
                document.get(field).is_none(),
                "{field} pushed at {}",
                status_of(document)
            );
        }
    }
    if reveals {
        assert!(document["storachaPrivateKey"].is_string(), "{document}");
    }
}

/// A server on `dir` with every outside call held, and a coordinator job
/// held at `creating_space`.
async fn held_coordinator_on(dir: &std::path::Path) -> (TestApp, Holds, String) {
    let holds = Holds::closed();
    let app = TestApp::start(
        dir,
        TestDeployer::healthy(),
        Options {
            holds: holds.clone(),
            ..Options::default()
        },
    )
    .await;
    let job_id = held_coordinator(&app).await;
    (app, holds, job_id)
}

async fn held_coordinator(app: &TestApp) -> String {
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/coordinator",
            Some(json!({ "displayName": "Pushed DAO", "nearAccount": "mydao.testnet", "minWorkers": 1, "maxWorkers": 3 })),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let job_id = body["jobId"].as_str().unwrap().to_owned();
    app.wait_for(&job_id, &["creating_space"]).await;
    job_id
}

#[tokio::test]
async fn a_follower_sees_every_transition_in_order_and_secrets_only_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let (app, holds, job_id) = held_coordinator_on(dir.path()).await;
    let mut stream = Stream::open(&app, &job_id, None).await;
    let (_, first) = stream.status().await.unwrap();
    assert_eq!(status_of(&first), "creating_space");

    // Released one port at a time, so every status is committed on its own.
    for gate in [&holds.space, &holds.ensue, &holds.deploy] {
        gate.set(GateState::Open);
    }
    let mut seen = vec![first];
    while status_of(seen.last().unwrap()) != "awaiting_near_signature" {
        seen.push(stream.status().await.expect("the stream goes on").1);
    }
    holds.registration.set(GateState::Open);
    let (code, body) = app
        .call(
            "POST",
            "/api/provision/coordinator-register",
            Some(json!({ "jobId": job_id })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    while let Some((_, document)) = stream.status().await {
        seen.push(document);
    }

    let mut statuses: Vec<&str> = seen.iter().map(status_of).collect();
    statuses.dedup();
    assert_eq!(statuses, COORDINATOR_PATH, "every transition, in order");
    for document in &seen {
        assert_secret_rule(document);
        assert_eq!(document["jobId"], job_id.as_str());
    }
    // Each pushed document is what the status route answered at that moment:
    // the last one is what it answers now.
    let (_, now) = app
        .call("GET", &format!("/api/provision/status/{job_id}"), None)
        .await;
    assert_eq!(seen.last().unwrap(), &now);
}

#[tokio::test]
async fn a_follower_that_reconnects_with_last_event_id_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (app, holds, job_id) = held_coordinator_on(dir.path()).await;
    // A follower that never disconnects, to compare with.
    let mut continuous = Stream::open(&app, &job_id, None).await;
    let mut stream = Stream::open(&app, &job_id, None).await;
    let (first_id, first) = stream.status().await.unwrap();
    assert_eq!(status_of(&first), "creating_space");
    holds.space.set(GateState::Open);
    let (second_id, second) = stream.status().await.unwrap();
    assert_eq!(status_of(&second), "provisioning_ensue");
    assert_ne!(first_id, second_id);
    drop(stream);

    // While nobody listens, the job moves on to the wallet step.
    holds.ensue.set(GateState::Open);
    holds.deploy.set(GateState::Open);
    app.wait_for(&job_id, &["awaiting_near_signature"]).await;

    let mut expected = Vec::new();
    loop {
        let (id, document) = continuous.status().await.unwrap();
        let done = status_of(&document) == "awaiting_near_signature";
        expected.push((id, document));
        if done {
            break;
        }
    }
    let after_second = expected
        .iter()
        .position(|(id, _)| *id == second_id)
        .expect("the continuous follower saw the same event");
    let expected = &expected[after_second + 1..];
    let mut resumed = Stream::open(&app, &job_id, Some(&second_id)).await;
    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(resumed.status().await.unwrap());
    }
    assert_eq!(
        got, expected,
        "exactly what a follower that stayed saw after the last event"
    );
    let mut statuses: Vec<&str> = got
        .iter()
        .map(|(_, document)| status_of(document))
        .collect();
    statuses.dedup();
    assert_eq!(statuses.last(), Some(&"awaiting_near_signature"));
    assert!(statuses.contains(&"deploying_phala"), "{statuses:?}");

    // An id this run never gave out (an earlier run's) gets the current
    // document, not a guess.
    let mut stale = Stream::open(&app, &job_id, Some("00000000-3")).await;
    let (_, current) = stale.status().await.unwrap();
    assert_eq!(status_of(&current), "awaiting_near_signature");
}

/// A `Last-Event-ID` of this run naming the largest number there is (no
/// entry has it) gets the current document, as any id not given out does.
#[tokio::test]
async fn a_last_event_id_with_the_largest_number_gets_the_current_document() {
    let dir = tempfile::tempdir().unwrap();
    let (app, holds, job_id) = held_coordinator_on(dir.path()).await;
    let mut stream = Stream::open(&app, &job_id, None).await;
    let (first_id, _) = stream.status().await.unwrap();
    let (run, _) = first_id.split_once('-').unwrap();

    let mut resumed = Stream::open(&app, &job_id, Some(&format!("{run}-{}", u64::MAX))).await;
    let (_, current) = resumed.status().await.unwrap();
    assert_eq!(status_of(&current), "creating_space");
    for gate in [&holds.space, &holds.ensue, &holds.deploy] {
        gate.set(GateState::Open);
    }
}

#[tokio::test]
async fn an_idle_stream_gets_heartbeats_and_an_unknown_job_is_404() {
    let dir = tempfile::tempdir().unwrap();
    let holds = Holds::closed();
    let app = TestApp::start(
        dir.path(),
        TestDeployer::healthy(),
        Options {
            holds: holds.clone(),
            events_heartbeat: Duration::from_millis(50),
            ..Options::default()
        },
    )
    .await;
    let job_id = held_coordinator(&app).await;
    let mut stream = Stream::open(&app, &job_id, None).await;
    assert!(matches!(stream.next().await, Some(Sse::Status { .. })));
    // Held at a port, the job is silent: the stream says it is alive.
    assert!(matches!(stream.next().await, Some(Sse::Comment)));

    let (code, body) = app
        .call(
            "GET",
            "/api/provision/status/00000000-0000-4000-8000-000000000000/events",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].is_string(), "{body}");
    // Let the held job go, so the server stops cleanly.
    for gate in [&holds.space, &holds.ensue, &holds.deploy] {
        gate.set(GateState::Open);
    }
}
