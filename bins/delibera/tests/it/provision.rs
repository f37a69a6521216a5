//! `delibera provision … --wait` against a scripted protocol-api (wiremock).

use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{Finish, delibera};

const JOB: &str = "a1b2c3d4-e5f6-4890-abcd-ef1234567890";

fn status(status: &str) -> Value {
    json!({ "jobId": JOB, "role": "coordinator", "status": status, "step": "step text" })
}

async fn server(final_status: Value) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/provision/coordinator"))
        .and(body_json(
            json!({ "displayName": "My DAO", "nearAccount": "mydao.testnet", "maxWorkers": 5 }),
        ))
        .respond_with(
            ResponseTemplate::new(202)
                .set_body_json(json!({ "jobId": JOB, "status": "provisioning" })),
        )
        .expect(1)
        .mount(&server)
        .await;
    // Two polls in progress, then the final answer.
    Mock::given(method("GET"))
        .and(path(format!("/api/provision/status/{JOB}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(status("deploying_phala")))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/api/provision/status/{JOB}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(final_status))
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

fn provision(api: &str) -> std::process::Output {
    delibera()
        .args([
            "provision",
            "coordinator",
            "--display-name",
            "My DAO",
            "--near-account",
            "mydao.testnet",
            "--max-workers",
            "5",
            "--wait",
            "--api",
            api,
        ])
        .finish()
}

/// `event: status` events as the server pushes them, with their ids.
fn events(statuses: &[(&str, Value)]) -> ResponseTemplate {
    let body: String = statuses
        .iter()
        .map(|(id, document)| format!("event: status\nid: {id}\ndata: {document}\n\n"))
        .collect();
    ResponseTemplate::new(200).set_body_raw(body, "text/event-stream")
}

/// Only the start call: the job's status comes from its event stream.
async fn pushing_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/provision/coordinator"))
        .respond_with(
            ResponseTemplate::new(202)
                .set_body_json(json!({ "jobId": JOB, "status": "provisioning" })),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/api/provision/status/{JOB}")))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    server
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_follows_the_pushed_events_and_resumes_after_the_last_one() {
    let server = pushing_server().await;
    let mut ready = status("awaiting_near_signature");
    ready["storachaPrivateKey"] = json!("MgCY…");
    let events_path = format!("/api/provision/status/{JOB}/events");
    // The first connection ends after two events, as a dropped one would.
    Mock::given(method("GET"))
        .and(path(events_path.clone()))
        .respond_with(events(&[
            ("run-1", status("creating_space")),
            ("run-2", status("deploying_phala")),
        ]))
        .expect(1)
        .with_priority(2)
        .mount(&server)
        .await;
    // The reconnection names the last event seen and gets the rest.
    Mock::given(method("GET"))
        .and(path(events_path))
        .and(header("last-event-id", "run-2"))
        .and(header("accept", "text/event-stream"))
        .respond_with(events(&[("run-3", ready.clone())]))
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    let uri = server.uri();
    let output = tokio::task::spawn_blocking(move || provision(&uri))
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, ready);
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pushed_failure_exits_1_with_its_reason() {
    let server = pushing_server().await;
    let mut failed = status("failed");
    failed["error"] = json!("the deployment was refused");
    Mock::given(method("GET"))
        .and(path(format!("/api/provision/status/{JOB}/events")))
        .respond_with(events(&[
            ("run-1", status("deploying_phala")),
            ("run-2", failed),
        ]))
        .mount(&server)
        .await;
    let uri = server.uri();
    let output = tokio::task::spawn_blocking(move || provision(&uri))
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the deployment was refused"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_follows_the_job_to_the_wallet_step() {
    let mut ready = status("awaiting_near_signature");
    ready["storachaPrivateKey"] = json!("MgCY…");
    let server = server(ready.clone()).await;
    let uri = server.uri();
    let output = tokio::task::spawn_blocking(move || provision(&uri))
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, ready);
    let polls = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|request| request.url.path() == format!("/api/provision/status/{JOB}"))
        .count();
    assert_eq!(polls, 3, "two in-progress polls, then the final one");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_job_exits_1_with_its_reason() {
    let mut failed = status("failed");
    failed["error"] = json!("the agent never became healthy");
    let server = server(failed).await;
    let uri = server.uri();
    let output = tokio::task::spawn_blocking(move || provision(&uri))
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("never became healthy"), "{stderr}");
}

#[test]
fn an_api_error_is_one_line_with_the_servers_message() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server =
        runtime.block_on(async {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .respond_with(ResponseTemplate::new(400).set_body_json(
                    json!({ "error": "nearAccount is not a valid NEAR account id" }),
                ))
                .mount(&server)
                .await;
            server
        });
    let output = provision(&server.uri());
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("400") && stderr.contains("not a valid NEAR account id"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1);
}
