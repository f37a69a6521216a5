//! The health gate: what counts as healthy, backoff polling and progress reports.

use std::time::Duration;

use delibera_deploy::{Error, HealthGate, HealthProgress};
use delibera_identity::{Did, Keypair};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn did() -> Did {
    Keypair::from_seed(&[5; 32]).did()
}

fn gate() -> HealthGate {
    HealthGate {
        initial_interval: Duration::from_millis(2),
        max_interval: Duration::from_millis(10),
        request_timeout: Duration::from_millis(200),
    }
}

async fn wait(
    url: &str,
    deadline: Duration,
) -> (
    delibera_deploy::Result<delibera_deploy::HealthReport>,
    Vec<HealthProgress>,
) {
    let mut progress = Vec::new();
    let result = gate()
        .wait(
            &reqwest::Client::new(),
            url,
            &did(),
            deadline,
            &mut |p: &HealthProgress| progress.push(p.clone()),
        )
        .await;
    (result, progress)
}

#[tokio::test]
async fn a_running_body_with_the_expected_did_is_accepted_at_once() {
    let agent = MockServer::start().await;
    let body = json!({"message": "Worker agent is Running", "did": did().as_str(), "uptime": 3});
    Mock::given(method("GET"))
        .and(path("/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body.clone()))
        .expect(1)
        .mount(&agent)
        .await;
    let (result, progress) = wait(&format!("{}/", agent.uri()), Duration::from_secs(2)).await;
    let report = result.unwrap();
    assert_eq!(report.attempts, 1);
    assert_eq!(report.body, body);
    assert!(progress.is_empty());
}

#[tokio::test]
async fn every_unhealthy_answer_is_rejected_with_its_reason() {
    let wrong_did = Keypair::from_seed(&[6; 32]).did();
    let cases = [
        (ResponseTemplate::new(503), "HTTP 503".to_owned()),
        (
            ResponseTemplate::new(200).set_body_string("OK"),
            "the body is not JSON".to_owned(),
        ),
        (
            ResponseTemplate::new(200)
                .set_body_json(json!({"message": "starting", "did": did().as_str()})),
            "message \"starting\" does not say running".to_owned(),
        ),
        (
            ResponseTemplate::new(200).set_body_json(json!({"message": "running"})),
            "the body names no did".to_owned(),
        ),
        (
            ResponseTemplate::new(200)
                .set_body_json(json!({"message": "running", "did": wrong_did.as_str()})),
            format!("it serves {wrong_did}, not the expected {}", did()),
        ),
    ];
    for (response, reason) in cases {
        let agent = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(response)
            .mount(&agent)
            .await;
        let (result, progress) = wait(&agent.uri(), Duration::from_millis(250)).await;
        let Err(Error::HealthTimeout {
            last_problem, url, ..
        }) = result
        else {
            panic!("accepted although {reason}");
        };
        assert_eq!(last_problem, reason);
        assert_eq!(url, agent.uri());
        assert!(!progress.is_empty());
    }
}

#[tokio::test]
async fn progress_counts_attempts_and_elapsed_time_until_healthy() {
    let agent = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(3)
        .expect(3)
        .mount(&agent)
        .await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"message": "running", "did": did().as_str()})),
        )
        .expect(1)
        .mount(&agent)
        .await;
    let (result, progress) = wait(&agent.uri(), Duration::from_secs(5)).await;
    assert_eq!(result.unwrap().attempts, 4);
    let attempts: Vec<u32> = progress.iter().map(|p| p.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(progress.windows(2).all(|w| w[0].elapsed <= w[1].elapsed));
}

#[tokio::test]
async fn a_hanging_agent_times_out_per_probe() {
    let agent = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"message": "running", "did": did().as_str()}))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&agent)
        .await;
    let (result, _) = wait(&agent.uri(), Duration::from_millis(50)).await;
    let Err(Error::HealthTimeout { last_problem, .. }) = result else {
        panic!("a hanging agent was accepted");
    };
    assert!(
        last_problem.starts_with("no answer within"),
        "{last_problem}"
    );
}
