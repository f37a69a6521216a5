//! `PhalaClient` against wiremock: every call, every error class, both response
//! versions, the URL fallback and the retry counts.

use std::time::Duration;

use delibera_phala::delibera_backoff::{Backoff, Jitter};
use delibera_phala::{
    API_VERSION_2025_10_28, API_VERSION_2026_01_21, CommitRequest, ComposeFile, Error, PhalaClient,
    ProvisionRequest,
};
use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const API_KEY: &str = "phak_test_key_0123";
const APP_ID: &str = "e15b3b7a5c4a4e0f8d2a7f3c1b9e8d7c6a5b4f3e";
const VM_UUID: &str = "4f8e2d1c-0b9a-4c7d-8e6f-5a4b3c2d1e0f";

fn client(server: &MockServer) -> PhalaClient {
    PhalaClient::new(&format!("{}/api/v1", server.uri()), API_KEY)
        .unwrap()
        .with_retry(
            Backoff::new(Duration::from_millis(1), Duration::from_millis(5))
                .with_max_attempts(3)
                .with_jitter(Jitter::None),
        )
}

/// A mock that also insists on the auth and version headers.
fn api(http_method: &str, api_path: &str) -> wiremock::MockBuilder {
    Mock::given(method(http_method))
        .and(path(format!("/api/v1{api_path}")))
        .and(header("X-API-Key", API_KEY))
        .and(header("X-Phala-Version", API_VERSION_2025_10_28))
        .and(header("Accept", "application/json"))
}

fn provision_request() -> ProvisionRequest {
    ProvisionRequest {
        name: "delibera-worker-alpha-ab12cd".to_owned(),
        instance_type: "tdx.small".to_owned(),
        compose_file: ComposeFile {
            docker_compose_file: "services: {}\n".to_owned(),
            allowed_envs: vec!["PORT".to_owned(), "NEAR_ACCOUNT_ID".to_owned()],
            name: String::new(),
        },
        region: None,
        teepod_id: None,
    }
}

fn commit_request() -> CommitRequest {
    CommitRequest {
        app_id: APP_ID.to_owned(),
        compose_hash: "ab".repeat(32),
        encrypted_env: Some("00ff".to_owned()),
        env_keys: vec!["NEAR_ACCOUNT_ID".to_owned()],
    }
}

/// A `GET /cvms/{id}` body in the 2025-10-28 (flat) shape.
fn cvm_v2025(public_urls: Value) -> Value {
    json!({
        "id": 4242, "name": "delibera-worker-alpha-ab12cd", "status": "running",
        "in_progress": false, "app_id": APP_ID, "vm_uuid": VM_UUID,
        "instance_id": "inst-1", "vcpu": 1, "memory": 2048, "disk_size": 20,
        "gateway_domain": "dstack-pha-prod5.phala.network",
        "public_urls": public_urls,
    })
}

/// A `GET /cvms/{id}` body in the 2026-01-21 (nested) shape.
fn cvm_v2026(endpoints: Value) -> Value {
    json!({
        "id": "cvm_3kq9x", "name": "delibera-worker-alpha-ab12cd", "app_id": APP_ID,
        "vm_uuid": VM_UUID, "instance_id": "inst-1", "status": "running",
        "progress": {"target": "running", "started_at": null, "correlation_id": null},
        "resource": {"vcpu": 1}, "node_info": {"name": "prod5"},
        "gateway": {"base_domain": "dstack-base-prod7.phala.network", "cname": null},
        "endpoints": endpoints,
    })
}

#[tokio::test]
async fn provision_sends_the_sdk_body_and_headers_once() {
    let server = MockServer::start().await;
    api("POST", "/cvms/provision")
        .and(header("Content-Type", "application/json"))
        .and(body_json(json!({
            "name": "delibera-worker-alpha-ab12cd",
            "instance_type": "tdx.small",
            "compose_file": {
                "docker_compose_file": "services: {}\n",
                "allowed_envs": ["PORT", "NEAR_ACCOUNT_ID"],
                "name": "",
            },
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "compose_hash": "cd".repeat(32),
            "app_id": APP_ID,
            "app_env_encrypt_pubkey": "7b".repeat(32),
            "kms_id": "kms-1", "fmspc": null, "device_id": "d", "teepod_id": 3,
        })))
        .expect(1)
        .mount(&server)
        .await;

    let provisioned = client(&server)
        .provision(&provision_request())
        .await
        .unwrap();
    assert_eq!(provisioned.compose_hash, "cd".repeat(32));
    assert_eq!(provisioned.app_id.as_deref(), Some(APP_ID));
    assert_eq!(provisioned.app_env_encrypt_pubkey, Some("7b".repeat(32)));
}

#[tokio::test]
async fn provision_optional_placement_fields_are_sent_when_set() {
    let server = MockServer::start().await;
    let mut request = provision_request();
    request.region = Some("us-west".to_owned());
    request.teepod_id = Some(7);
    let mut expected = serde_json::to_value(provision_request()).unwrap();
    expected["region"] = json!("us-west");
    expected["teepod_id"] = json!(7);
    api("POST", "/cvms/provision")
        .and(body_json(expected))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"compose_hash": "ab"})))
        .expect(1)
        .mount(&server)
        .await;
    client(&server).provision(&request).await.unwrap();
}

#[tokio::test]
async fn commit_sends_the_exact_body_and_reads_the_vm_uuid() {
    let server = MockServer::start().await;
    api("POST", "/cvms")
        .and(header("Content-Type", "application/json"))
        .and(body_json(json!({
            "app_id": APP_ID,
            "compose_hash": "ab".repeat(32),
            "encrypted_env": "00ff",
            "env_keys": ["NEAR_ACCOUNT_ID"],
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": 4242, "name": "delibera-worker-alpha-ab12cd", "status": "creating",
            "teepod_id": 3, "teepod": {"id": 3, "name": "prod5"}, "user_id": null,
            "app_id": APP_ID, "vm_uuid": VM_UUID, "instance_id": null, "app_url": null,
            "vcpu": 1, "memory": 2048, "disk_size": 20, "created_at": "2026-11-23T10:00:00Z",
        })))
        .expect(1)
        .mount(&server)
        .await;

    let cvm = client(&server).commit(&commit_request()).await.unwrap();
    assert_eq!(cvm.id, "4242");
    assert_eq!(cvm.cvm_id(), VM_UUID);
    assert_eq!(cvm.status.as_deref(), Some("creating"));
}

#[tokio::test]
async fn commit_without_env_sends_null() {
    let server = MockServer::start().await;
    let mut request = commit_request();
    request.encrypted_env = None;
    request.env_keys.clear();
    api("POST", "/cvms")
        .and(body_json(json!({
            "app_id": APP_ID, "compose_hash": "ab".repeat(32),
            "encrypted_env": null, "env_keys": [],
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 1})))
        .expect(1)
        .mount(&server)
        .await;
    let cvm = client(&server).commit(&request).await.unwrap();
    assert_eq!(cvm.cvm_id(), "1");
}

#[tokio::test]
async fn commit_is_retried_after_a_server_error_because_it_is_idempotent() {
    let server = MockServer::start().await;
    api("POST", "/cvms")
        .and(body_json(serde_json::to_value(commit_request()).unwrap()))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(2)
        .expect(2)
        .mount(&server)
        .await;
    api("POST", "/cvms")
        .and(body_json(serde_json::to_value(commit_request()).unwrap()))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"id": 9, "vm_uuid": VM_UUID})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let cvm = client(&server).commit(&commit_request()).await.unwrap();
    assert_eq!(cvm.cvm_id(), VM_UUID);
}

#[tokio::test]
async fn get_cvm_reads_the_2025_10_28_shape() {
    let server = MockServer::start().await;
    api("GET", &format!("/cvms/{VM_UUID}"))
        .respond_with(ResponseTemplate::new(200).set_body_json(cvm_v2025(json!([
            {"app": format!("https://{APP_ID}-3001.dstack-pha-prod5.phala.network"), "instance": "https://i-3001.x"},
        ]))))
        .expect(1)
        .mount(&server)
        .await;
    let cvm = client(&server).get_cvm(VM_UUID).await.unwrap();
    assert_eq!(cvm.id, "4242");
    assert!(cvm.is_running());
    assert_eq!(cvm.in_progress, Some(false));
    assert_eq!(
        cvm.gateway_domain.as_deref(),
        Some("dstack-pha-prod5.phala.network")
    );
    assert_eq!(
        cvm.endpoint_url(3001).as_deref(),
        Some(format!("https://{APP_ID}-3001.dstack-pha-prod5.phala.network").as_str())
    );
}

#[tokio::test]
async fn get_cvm_reads_the_2026_01_21_shape_with_that_version_header() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/api/v1/cvms/{VM_UUID}")))
        .and(header("X-API-Key", API_KEY))
        .and(header("X-Phala-Version", API_VERSION_2026_01_21))
        .respond_with(ResponseTemplate::new(200).set_body_json(cvm_v2026(json!([
            {"app": format!("https://{APP_ID}-8080.dstack-base-prod7.phala.network"), "instance": ""},
            {"app": format!("https://{APP_ID}-3000.dstack-base-prod7.phala.network"), "instance": ""},
        ]))))
        .expect(1)
        .mount(&server)
        .await;
    let cvm = client(&server)
        .with_api_version(API_VERSION_2026_01_21)
        .get_cvm(VM_UUID)
        .await
        .unwrap();
    assert_eq!(cvm.id, "cvm_3kq9x");
    assert_eq!(cvm.progress_target.as_deref(), Some("running"));
    assert_eq!(
        cvm.gateway_domain.as_deref(),
        Some("dstack-base-prod7.phala.network")
    );
    // Of several listed URLs, the one for the agent's port.
    assert_eq!(
        cvm.endpoint_url(3000).as_deref(),
        Some(format!("https://{APP_ID}-3000.dstack-base-prod7.phala.network").as_str())
    );
}

#[tokio::test]
async fn the_url_is_built_from_the_gateway_domain_only_when_none_is_listed() {
    let server = MockServer::start().await;
    api("GET", "/cvms/flat")
        .respond_with(ResponseTemplate::new(200).set_body_json(cvm_v2025(json!([]))))
        .expect(1)
        .mount(&server)
        .await;
    api("GET", "/cvms/nested")
        .respond_with(ResponseTemplate::new(200).set_body_json(cvm_v2026(json!([]))))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server);
    let flat = client.get_cvm("flat").await.unwrap();
    assert_eq!(
        flat.endpoint_url(3001).as_deref(),
        Some(format!("https://{APP_ID}-3001.dstack-pha-prod5.phala.network").as_str())
    );
    let nested = client.get_cvm("nested").await.unwrap();
    assert_eq!(
        nested.endpoint_url(3000).as_deref(),
        Some(format!("https://{APP_ID}-3000.dstack-base-prod7.phala.network").as_str())
    );
}

#[tokio::test]
async fn no_url_and_no_domain_means_no_endpoint_yet() {
    let server = MockServer::start().await;
    api("GET", "/cvms/new")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": 1, "status": "creating", "in_progress": true, "app_id": APP_ID,
            "public_urls": null, "gateway_domain": null,
        })))
        .expect(1)
        .mount(&server)
        .await;
    let cvm = client(&server).get_cvm("new").await.unwrap();
    assert_eq!(cvm.endpoint_url(3001), None);
    assert!(!cvm.is_stopped());
}

#[tokio::test]
async fn get_cvm_recovers_after_a_rate_limit() {
    let server = MockServer::start().await;
    api("GET", "/cvms/abc")
        .respond_with(ResponseTemplate::new(429).set_body_json(json!({"detail": "slow down"})))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    api("GET", "/cvms/abc")
        .respond_with(ResponseTemplate::new(200).set_body_json(cvm_v2025(json!([]))))
        .expect(1)
        .mount(&server)
        .await;
    assert!(client(&server).get_cvm("abc").await.is_ok());
}

#[tokio::test]
async fn a_retry_after_within_the_cap_is_waited_for() {
    let server = MockServer::start().await;
    api("GET", "/cvms/abc")
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    api("GET", "/cvms/abc")
        .respond_with(ResponseTemplate::new(200).set_body_json(cvm_v2025(json!([]))))
        .expect(1)
        .mount(&server)
        .await;
    // The backoff alone would wait 1 ms; the server asked for a second.
    let client = client(&server).with_retry(
        Backoff::new(Duration::from_millis(1), Duration::from_secs(2))
            .with_max_attempts(3)
            .with_jitter(Jitter::None),
    );
    let started = std::time::Instant::now();
    client.get_cvm("abc").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// A Phala Cloud call, as a table case names it.
#[derive(Clone, Copy)]
enum Call {
    Provision,
    Commit,
    GetCvm,
    Stop,
    Delete,
}

impl Call {
    /// The method and path (under `/api/v1`) the call asks, for CVM `abc`.
    fn route(self) -> (&'static str, &'static str) {
        match self {
            Call::Provision => ("POST", "/cvms/provision"),
            Call::Commit => ("POST", "/cvms"),
            Call::GetCvm => ("GET", "/cvms/abc"),
            Call::Stop => ("POST", "/cvms/abc/stop"),
            Call::Delete => ("DELETE", "/cvms/abc"),
        }
    }

    /// Makes the call; only its error matters to the table.
    async fn error(self, client: &PhalaClient) -> Option<Error> {
        match self {
            Call::Provision => client.provision(&provision_request()).await.err(),
            Call::Commit => client.commit(&commit_request()).await.err(),
            Call::GetCvm => client.get_cvm("abc").await.err(),
            Call::Stop => client.stop("abc").await.err(),
            Call::Delete => client.delete("abc").await.err(),
        }
    }
}

/// Every error answer of every call: the error it becomes, and how many
/// times the call is made (only idempotent calls are retried, and only on
/// transient answers).
#[tokio::test]
async fn every_error_answer_is_classified() {
    struct Case {
        name: &'static str,
        call: Call,
        answer: ResponseTemplate,
        calls: u64,
        expected: fn(&Error) -> bool,
    }
    let quota = |status: u16, code: &str| {
        ResponseTemplate::new(status).set_body_json(json!({"detail": {
            "error_code": code, "message": "limit reached", "suggestions": ["Top up"],
        }}))
    };
    fn is_quota(error: &Error, code: &str) -> bool {
        matches!(error, Error::Quota(_))
            && error.error_code() == Some(code)
            && !error.is_retryable()
    }
    let unauthorized = |status: u16| {
        ResponseTemplate::new(status).set_body_json(json!({"detail": "Invalid or expired token"}))
    };
    fn is_unauthorized(error: &Error, status: u16) -> bool {
        matches!(error, Error::Unauthorized(api) if api.status == status && api.message == "Invalid or expired token")
            && !error.to_string().contains(API_KEY)
            && !format!("{error:?}").contains(API_KEY)
    }
    let cases = [
        Case {
            name: "provision, 503: a server error, never retried",
            call: Call::Provision,
            answer: ResponseTemplate::new(503).set_body_string("upstream down"),
            calls: 1,
            expected: |error| {
                matches!(error, Error::Server(api) if api.status == 503 && api.message == "upstream down")
            },
        },
        Case {
            name: "provision, 200 without compose_hash: an unexpected response",
            call: Call::Provision,
            answer: ResponseTemplate::new(200).set_body_json(json!({"app_id": APP_ID})),
            calls: 1,
            expected: |error| matches!(error, Error::UnexpectedResponse { .. }),
        },
        Case {
            name: "provision, 422: a validation error keeping every field and message",
            call: Call::Provision,
            answer: ResponseTemplate::new(422).set_body_json(json!({"detail": [
                {"loc": ["body", "name"], "msg": "String should match pattern", "type": "string_pattern_mismatch", "ctx": {"pattern": "^[a-zA-Z]"}},
                {"loc": ["body", "compose_file", "docker_compose_file"], "msg": "Field required", "type": "missing"},
            ]})),
            calls: 1,
            expected: |error| {
                let Error::Validation(api) = error else {
                    return false;
                };
                api.status == 422
                    && api.details.len() == 2
                    && api.details[0].field == "body.name"
                    && api.details[0].message == "String should match pattern"
                    && api.details[0].kind.as_deref() == Some("string_pattern_mismatch")
                    && api.details[1].field == "body.compose_file.docker_compose_file"
                    && error
                        .to_string()
                        .contains("body.name: String should match pattern")
            },
        },
        Case {
            name: "provision, 400 with a top-level structured error: rejected",
            call: Call::Provision,
            answer: ResponseTemplate::new(400).set_body_json(json!({
                "error_code": "ERR-02-003", "message": "Insufficient vCPU on the node",
                "details": [], "suggestions": ["Pick a smaller instance type"],
            })),
            calls: 1,
            expected: |error| {
                matches!(error, Error::Rejected(_))
                    && error.error_code() == Some("ERR-02-003")
                    && error.api_error().is_some_and(|api| {
                        api.message == "Insufficient vCPU on the node"
                            && api.suggestions == ["Pick a smaller instance type"]
                    })
            },
        },
        Case {
            name: "provision, 409 duplicate name: a conflict",
            call: Call::Provision,
            answer: ResponseTemplate::new(409).set_body_json(json!({"detail": {
                "error_code": "ERR-01-004", "message": "A CVM with this name already exists",
            }})),
            calls: 1,
            expected: |error| error.is_conflict() && error.error_code() == Some("ERR-01-004"),
        },
        Case {
            name: "provision, 402 ERR-04-001: a quota error",
            call: Call::Provision,
            answer: quota(402, "ERR-04-001"),
            calls: 1,
            expected: |error| is_quota(error, "ERR-04-001"),
        },
        Case {
            name: "provision, 403 ERR-04-002: a quota error",
            call: Call::Provision,
            answer: quota(403, "ERR-04-002"),
            calls: 1,
            expected: |error| is_quota(error, "ERR-04-002"),
        },
        Case {
            name: "provision, 400 ERR-02-015: a quota error",
            call: Call::Provision,
            answer: quota(400, "ERR-02-015"),
            calls: 1,
            expected: |error| is_quota(error, "ERR-02-015"),
        },
        Case {
            name: "provision, 400 ERR-05-002 token limit: rate limited",
            call: Call::Provision,
            answer: ResponseTemplate::new(400).set_body_json(json!({"detail": {
                "error_code": "ERR-05-002", "message": "Token rate limit",
            }})),
            calls: 1,
            expected: |error| matches!(error, Error::RateLimited(_)),
        },
        Case {
            name: "commit, 409 app id conflict: a conflict with its details, not retried",
            call: Call::Commit,
            answer: ResponseTemplate::new(409).set_body_json(json!({"detail": {
                "error_code": "ERR-03-007",
                "message": "App ID already exists with a different compose hash",
                "details": [{"field": "compose_hash", "value": "ab", "message": "differs"}],
                "suggestions": ["Use a new app_id", "Update the existing CVM"],
                "links": [{"label": "docs", "url": "https://docs.phala.com"}],
            }})),
            calls: 1,
            expected: |error| {
                error.is_conflict()
                    && error.error_code() == Some("ERR-03-007")
                    && error.api_error().is_some_and(|api| {
                        api.status == 409
                            && api.message == "App ID already exists with a different compose hash"
                            && api.details[0].field == "compose_hash"
                            && api.details[0].message == "differs"
                            && api.suggestions == ["Use a new app_id", "Update the existing CVM"]
                    })
            },
        },
        Case {
            name: "get, 500: retried up to the policy, then a retryable server error",
            call: Call::GetCvm,
            answer: ResponseTemplate::new(500).set_body_json(json!({"detail": "boom"})),
            calls: 3,
            expected: |error| {
                matches!(error, Error::Server(api) if api.message == "boom") && error.is_retryable()
            },
        },
        Case {
            name: "get, 429 with Retry-After beyond the cap: no more retries",
            call: Call::GetCvm,
            answer: ResponseTemplate::new(429)
                .insert_header("Retry-After", "120")
                .set_body_json(json!({"detail": "slow down"})),
            calls: 1,
            expected: |error| {
                matches!(error, Error::RateLimited(api) if api.message == "slow down")
                    && error.retry_after() == Some(Duration::from_secs(120))
            },
        },
        Case {
            name: "get, 503 with a Retry-After date in the past: retried at once",
            call: Call::GetCvm,
            answer: ResponseTemplate::new(503)
                .insert_header("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"),
            calls: 3,
            expected: |error| error.retry_after() == Some(Duration::ZERO),
        },
        Case {
            name: "get, 500 with Retry-After: only 429 and 503 carry one",
            call: Call::GetCvm,
            answer: ResponseTemplate::new(500).insert_header("Retry-After", "120"),
            calls: 3,
            expected: |error| error.retry_after().is_none(),
        },
        Case {
            name: "get, 404: not found, not retried",
            call: Call::GetCvm,
            answer: ResponseTemplate::new(404).set_body_json(json!({"detail": {
                "error_code": "ERR-03-001", "message": "CVM not found", "suggestions": [],
            }})),
            calls: 1,
            expected: |error| {
                error.is_not_found() && !error.is_retryable() && error.error_code() == Some("ERR-03-001")
            },
        },
        Case {
            name: "get, 401: unauthorized, never echoing the key",
            call: Call::GetCvm,
            answer: unauthorized(401),
            calls: 1,
            expected: |error| is_unauthorized(error, 401),
        },
        Case {
            name: "get, 403: unauthorized, never echoing the key",
            call: Call::GetCvm,
            answer: unauthorized(403),
            calls: 1,
            expected: |error| is_unauthorized(error, 403),
        },
        Case {
            name: "get, 200 with an HTML page: an unexpected response",
            call: Call::GetCvm,
            answer: ResponseTemplate::new(200).set_body_string("<html>nginx</html>"),
            calls: 1,
            expected: |error| matches!(error, Error::UnexpectedResponse { .. }),
        },
        Case {
            name: "stop, 500: a server error, never retried",
            call: Call::Stop,
            answer: ResponseTemplate::new(500),
            calls: 1,
            expected: |error| matches!(error, Error::Server(api) if api.status == 500),
        },
        Case {
            name: "delete, 503: retried, then a server error",
            call: Call::Delete,
            answer: ResponseTemplate::new(503),
            calls: 3,
            expected: |error| matches!(error, Error::Server(api) if api.status == 503),
        },
    ];
    for case in cases {
        let server = MockServer::start().await;
        let (http_method, api_path) = case.call.route();
        api(http_method, api_path)
            .respond_with(case.answer)
            .expect(case.calls)
            .named(case.name)
            .mount(&server)
            .await;
        match case.call.error(&client(&server)).await {
            Some(error) => assert!((case.expected)(&error), "{}: got {error:?}", case.name),
            None => panic!("{}: succeeded", case.name),
        }
        // Checks the number of calls, naming the case.
        server.verify().await;
    }
}

#[test]
fn a_retry_after_is_kept_in_whole_seconds_rounded_up() {
    let mut api = delibera_phala::ApiError::from_body(429, b"{}");
    assert_eq!(api.retry_after(), None);
    api.set_retry_after(Duration::from_millis(1_500));
    assert_eq!(api.retry_after(), Some(Duration::from_secs(2)));
    api.set_retry_after(Duration::from_secs(3));
    assert_eq!(api.retry_after_secs, Some(3));
    api.set_retry_after(Duration::MAX);
    assert_eq!(api.retry_after_secs, Some(u32::MAX));
    assert_eq!(
        api.into_error().retry_after(),
        Some(Duration::from_secs(u64::from(u32::MAX)))
    );
}

#[tokio::test]
async fn start_posts_once_and_reads_the_cvm() {
    let server = MockServer::start().await;
    api("POST", "/cvms/abc/start")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": 5, "name": "n", "status": "starting", "teepod_id": 3, "app_id": APP_ID, "vm_uuid": "abc",
        })))
        .expect(1)
        .mount(&server)
        .await;
    let started = client(&server).start("abc").await.unwrap().unwrap();
    assert_eq!(started.status.as_deref(), Some("starting"));
}

#[tokio::test]
async fn delete_accepts_200_204_and_404() {
    let server = MockServer::start().await;
    api("DELETE", "/cvms/with-body")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .expect(1)
        .mount(&server)
        .await;
    api("DELETE", "/cvms/no-content")
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    api("DELETE", "/cvms/gone")
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"detail": "CVM not found"})))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server);
    client.delete("with-body").await.unwrap();
    client.delete("no-content").await.unwrap();
    client.delete("gone").await.unwrap();
}

#[tokio::test]
async fn timeouts_are_typed_and_retried_for_gets() {
    let server = MockServer::start().await;
    api("GET", "/cvms/slow")
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(cvm_v2025(json!([])))
                .set_delay(Duration::from_secs(2)),
        )
        .expect(3)
        .mount(&server)
        .await;
    let error = client(&server)
        .with_timeout(Duration::from_millis(50))
        .unwrap()
        .get_cvm("slow")
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Timeout { ref operation } if operation == "GET /cvms/{id}"),
        "{error}"
    );
}

#[tokio::test]
async fn a_redirect_is_reported_and_never_followed_with_the_api_key() {
    let elsewhere = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .expect(0)
        .mount(&elsewhere)
        .await;
    let server = MockServer::start().await;
    let location = format!(
        "{}/api/v1/cvms/provision?token=s3cret#frag",
        elsewhere.uri().replacen("://", "://user:pass@", 1)
    );
    api("POST", "/cvms/provision")
        .respond_with(ResponseTemplate::new(307).insert_header("Location", location.as_str()))
        .expect(1)
        .mount(&server)
        .await;

    let error = client(&server)
        .provision(&provision_request())
        .await
        .unwrap_err();
    let Error::Redirected {
        operation,
        status,
        location,
    } = &error
    else {
        panic!("expected a redirect error, got {error:?}");
    };
    assert_eq!(operation, "POST /cvms/provision");
    assert_eq!(*status, 307);
    assert_eq!(
        *location,
        format!("{}/api/v1/cvms/provision", elsewhere.uri())
    );
    assert!(!error.is_retryable());
    let message = error.to_string();
    assert!(message.contains("redirect (HTTP 307)"), "{message}");
    for secret in ["s3cret", "pass", API_KEY] {
        assert!(!message.contains(secret), "{message}");
    }
    // `elsewhere` expects no request: dropping it checks that none came.
}

#[tokio::test]
async fn a_relative_redirect_names_its_target_on_the_same_host() {
    let server = MockServer::start().await;
    api("GET", "/cvms/abc")
        .respond_with(ResponseTemplate::new(301).insert_header("Location", "/api/v2/cvms/abc"))
        .expect(1)
        .mount(&server)
        .await;
    let error = client(&server).get_cvm("abc").await.unwrap_err();
    assert!(
        matches!(&error, Error::Redirected { status: 301, location, .. }
            if *location == format!("{}/api/v2/cvms/abc", server.uri())),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_unreachable_host_is_a_transport_error() {
    // Bind then drop a listener to get a loopback port nobody serves.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = PhalaClient::new(&format!("http://127.0.0.1:{port}/api/v1"), API_KEY)
        .unwrap()
        .with_retry(Backoff::none());
    let error = client.get_cvm("abc").await.unwrap_err();
    assert!(matches!(error, Error::Transport { .. }), "{error}");
    assert!(error.is_retryable());
}

#[test]
fn configuration_comes_from_the_environment_like_the_sdk() {
    let lookup = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    };
    let default = PhalaClient::from_lookup(lookup(&[("PHALA_API_KEY", "phak_x")])).unwrap();
    assert_eq!(
        default.base_url().as_str(),
        "https://cloud-api.phala.com/api/v1"
    );
    assert_eq!(default.api_version(), "2025-10-28");
    let custom = PhalaClient::from_lookup(lookup(&[
        ("PHALA_API_KEY", "phak_x"),
        ("PHALA_CLOUD_API_PREFIX", "http://127.0.0.1:9/api/v1"),
    ]))
    .unwrap();
    assert_eq!(custom.base_url().as_str(), "http://127.0.0.1:9/api/v1");
    assert!(matches!(
        PhalaClient::from_lookup(lookup(&[])),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        PhalaClient::new("not a url", "k"),
        Err(Error::Config { .. })
    ));
    assert!(!format!("{default:?}").contains("phak_x"));
}
