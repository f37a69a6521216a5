//! The server's policies at its edge: every rejection is JSON, nothing is
//! cached, removing nobody is 404, and which browser origins may call it.

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use clap::Parser;
use http_body_util::BodyExt;
use protocol_api::config::{Config, CorsPolicy, Mode, cors_policy};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::{ADMIN_TOKEN, Api, Options, TestApp, TestDeployer};

const DID: &str = "did:key:z6MktnLCM9uGL4j8VSMinpV13BUYwss4R1fjcq2DiLmyjF7M";

/// A response with its headers, for the policies that live in them.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn send(api: &Api, request: Request<Body>) -> Answer {
    let response = protocol_api::app(api.state.clone())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        Value::String(format!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    });
    Answer {
        status,
        headers,
        body,
    }
}

fn request(method: &str, uri: &str, content_type: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"));
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn every_rejection_is_a_json_error_including_undecodable_path_segments() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    const JSON: Option<&str> = Some("application/json");
    let endpoint = r#"{"endpoint":"https://x.example"}"#;
    let register = r#"{"jobId":"6f1c1b9e-3c1d-4e8e-9a53-0d5c8f6b2a10"}"#;
    let too_large = format!("{{\"jobId\":\"{}\"}}", "x".repeat(20_000));
    let agent_endpoint = format!("/api/agents/{DID}/endpoint");
    // (method, path, content type, body, status): each of axum's extractor
    // rejections on every route that has the extractor.
    let cases: Vec<(&str, &str, Option<&str>, &str, StatusCode)> = vec![
        // Path: a segment that is not UTF-8 once percent-decoded.
        (
            "GET",
            "/api/provision/status/%FF",
            None,
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/provision/status/%C3%28",
            None,
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/agents/%FF/endpoint",
            None,
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "PUT",
            "/api/agents/%FF/endpoint",
            JSON,
            endpoint,
            StatusCode::BAD_REQUEST,
        ),
        (
            "DELETE",
            "/api/workers/%FF",
            None,
            "",
            StatusCode::BAD_REQUEST,
        ),
        // Path segments that decode are looked up as usual.
        (
            "GET",
            "/api/provision/status/a%2Fb",
            None,
            "",
            StatusCode::NOT_FOUND,
        ),
        // Query strings: no route reads one, so a malformed one is ignored.
        (
            "GET",
            "/api/provision/status/nope?%FF=%FF&&=",
            None,
            "",
            StatusCode::NOT_FOUND,
        ),
        // Json: no content type, another content type, bad syntax, bad data, too large.
        (
            "POST",
            "/api/provision/register",
            None,
            register,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "POST",
            "/api/provision/register",
            Some("text/plain"),
            register,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "POST",
            "/api/provision/register",
            JSON,
            "{",
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/register",
            JSON,
            r#"{"jobId":7}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/provision/register",
            JSON,
            &too_large,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "POST",
            "/api/provision/coordinator",
            Some("application/x-www-form-urlencoded"),
            "displayName=x",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "PUT",
            &agent_endpoint,
            None,
            endpoint,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "POST",
            "/api/workers/register",
            JSON,
            "[]",
            StatusCode::BAD_REQUEST,
        ),
        // Routing: no such route, or not with this method.
        ("GET", "/no/such/route", None, "", StatusCode::NOT_FOUND),
        (
            "PATCH",
            "/api/provision/status/x",
            None,
            "",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "DELETE",
            "/api/provision/coordinator",
            None,
            "",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (method, path, content_type, body, expected) in cases {
        let answer = send(&app, request(method, path, content_type, body)).await;
        let what = format!("{method} {path} {content_type:?}");
        assert_eq!(answer.status, expected, "{what}: {}", answer.body);
        assert_eq!(answer.headers["content-type"], "application/json", "{what}");
        assert!(
            answer.body["error"]
                .as_str()
                .is_some_and(|text| !text.trim().is_empty()),
            "{what}: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn a_plain_text_error_from_any_layer_is_rewritten_and_5xx_text_is_withheld() {
    use axum::Router;
    use axum::routing::get;

    let router = Router::new()
        .route(
            "/teapot",
            get(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }),
        )
        .route(
            "/broken",
            get(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "db at /var/secret failed",
                )
            }),
        )
        .route("/empty", get(|| async { StatusCode::REQUEST_TIMEOUT }))
        .layer(protocol_api::request_layer::RequestLayer);
    for (path, status, message) in [
        ("/teapot", StatusCode::IM_A_TEAPOT, "short and stout"),
        (
            "/broken",
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal server error",
        ),
        ("/empty", StatusCode::REQUEST_TIMEOUT, "request timeout"),
    ] {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(response.headers()["content-type"], "application/json");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body, json!({ "error": message }), "{path}");
    }
}

#[tokio::test]
async fn no_response_may_be_cached_least_of_all_those_carrying_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let mut answers = Vec::new();
    let call = |method: &str, path: &str, body: Option<Value>| {
        let request = request(
            method,
            path,
            body.as_ref().map(|_| "application/json"),
            &body.map(|body| body.to_string()).unwrap_or_default(),
        );
        let api = &app.api;
        let label = format!("{method} {path}");
        async move { (label, send(api, request).await) }
    };

    let started = call(
        "POST",
        "/api/provision/coordinator",
        Some(json!({ "displayName": "Cache DAO", "nearAccount": "cache.testnet" })),
    )
    .await;
    let job = started.1.body["jobId"].as_str().unwrap().to_owned();
    answers.push(started);
    app.wait_for(&job, &["awaiting_near_signature"]).await;
    let status_path = format!("/api/provision/status/{job}");
    // The status with every secret in it.
    let waiting = call("GET", &status_path, None).await;
    assert!(
        waiting.1.body["storachaPrivateKey"].is_string(),
        "{}",
        waiting.1.body
    );
    answers.push(waiting);
    // The registration answer carries the claim URL and code.
    let registered = call(
        "POST",
        "/api/provision/coordinator-register",
        Some(json!({ "jobId": job })),
    )
    .await;
    assert!(
        registered.1.body["ensueClaimUrl"].is_string(),
        "{}",
        registered.1.body
    );
    answers.push(registered);
    answers.push(call("GET", &status_path, None).await);
    // A self-hosted worker's private key.
    let external = call(
        "POST",
        "/api/provision/external-worker",
        Some(json!({ "displayName": "E", "nearAccount": "e.testnet", "endpointUrl": "https://e.example", "coordinatorDid": DID })),
    )
    .await;
    assert!(
        external.1.body["privateKeyString"].is_string(),
        "{}",
        external.1.body
    );
    answers.push(external);
    answers.push(
        call(
            "POST",
            "/api/provision/register",
            Some(json!({ "jobId": "6f1c1b9e-3c1d-4e8e-9a53-0d5c8f6b2a10" })),
        )
        .await,
    );
    for path in [
        "/",
        "/metrics",
        "/api/openapi.json",
        "/api/agents/endpoints",
        "/api/workers/registered",
        "/api/provision/status/nope",
        "/no/such/route",
    ] {
        answers.push(call("GET", path, None).await);
    }
    answers.push(
        call(
            "POST",
            "/api/workers/register",
            Some(json!({ "workerId": DID })),
        )
        .await,
    );
    answers.push(call("DELETE", &format!("/api/workers/{DID}"), None).await);

    assert_eq!(answers.len(), 15);
    for (label, answer) in answers {
        assert_eq!(
            answer
                .headers
                .get("cache-control")
                .map(|v| v.to_str().unwrap()),
            Some("no-store"),
            "{label} → {}",
            answer.status
        );
    }
}

#[tokio::test]
async fn removing_a_worker_that_is_not_on_the_roster_is_404() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let path = format!("/api/workers/{DID}");

    let (code, body) = app.admin("DELETE", &path, None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body,
        json!({ "error": format!("worker {DID} is not on the roster") })
    );

    let (code, _) = app
        .admin(
            "POST",
            "/api/workers/register",
            Some(json!({ "workerId": DID })),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, body) = app.admin("DELETE", &path, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "message": format!("Worker {DID} removed") }));
    // Gone now: removing it again is 404 too.
    let (code, _) = app.admin("DELETE", &path, None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[test]
fn cors_settings_are_parsed_or_refused_with_what_to_write() {
    let origins =
        |list: &[&str]| CorsPolicy::Origins(list.iter().map(|o| (*o).to_owned()).collect());
    let accepted: [(Option<&str>, Mode, CorsPolicy); 8] = [
        (None, Mode::Local, CorsPolicy::AnyOrigin),
        (None, Mode::Production, CorsPolicy::SameOriginOnly),
        (Some("*"), Mode::Production, CorsPolicy::AnyOrigin),
        (Some(" none "), Mode::Local, CorsPolicy::SameOriginOnly),
        (Some("NONE"), Mode::Production, CorsPolicy::SameOriginOnly),
        (
            Some("https://app.example.com"),
            Mode::Production,
            origins(&["https://app.example.com"]),
        ),
        (
            Some("https://app.example.com, http://localhost:3000,https://app.example.com"),
            Mode::Production,
            origins(&["https://app.example.com", "http://localhost:3000"]),
        ),
        (
            Some("http://127.0.0.1:8080"),
            Mode::Local,
            origins(&["http://127.0.0.1:8080"]),
        ),
    ];
    for (setting, mode, expected) in accepted {
        assert_eq!(
            cors_policy(setting, mode).unwrap(),
            expected,
            "{setting:?} in {mode:?}"
        );
    }
    let refused = [
        (
            "*,https://app.example.com",
            "mixes `*` (any origin) with a list of origins",
        ),
        ("https://app.example.com, *", "mixes `*`"),
        (
            "none,https://app.example.com",
            "mixes `none` (no origin) with a list of origins",
        ),
        ("*,none", "both `*` (any origin) and `none`"),
        ("", "is empty: set it to the frontend's origin"),
        ("  ", "is empty"),
        ("https://a.example,,https://b.example", "has an empty entry"),
        ("https://a.example,", "has an empty entry"),
        (
            "https://app.example.com/",
            r#"write "https://app.example.com""#,
        ),
        (
            "https://App.Example.com",
            r#"write "https://app.example.com""#,
        ),
        (
            "https://app.example.com:443",
            r#"write "https://app.example.com""#,
        ),
        (
            "https://app.example.com/buy",
            r#"write "https://app.example.com""#,
        ),
        (
            "app.example.com",
            "is not an origin: write it as https://host[:port]",
        ),
        ("ftp://app.example.com", "is not an origin"),
        ("null", "is not an origin"),
    ];
    for (setting, reason) in refused {
        for mode in [Mode::Local, Mode::Production] {
            let error = cors_policy(Some(setting), mode)
                .expect_err(setting)
                .to_string();
            assert!(
                error.starts_with("CORS_ORIGINS: ") && error.contains(reason),
                "{setting:?}: {error:?} does not say {reason:?}"
            );
        }
    }
}

#[tokio::test]
async fn browsers_get_cross_origin_access_only_as_the_policy_says() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let frontend = "https://app.example.com";
    let preflight = |origin: &str| {
        Request::builder()
            .method("OPTIONS")
            .uri("/api/provision/coordinator")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .body(Body::empty())
            .unwrap()
    };
    let read = |origin: &str| {
        Request::get("/api/agents/endpoints")
            .header("origin", origin)
            .body(Body::empty())
            .unwrap()
    };
    let allowed = |answer: &Answer| {
        answer
            .headers
            .get("access-control-allow-origin")
            .map(|value| value.to_str().unwrap().to_owned())
    };

    // (policy, origin, what the browser is told it may do)
    let cases = [
        (CorsPolicy::SameOriginOnly, frontend, None),
        (
            CorsPolicy::Origins(vec![frontend.to_owned()]),
            frontend,
            Some(frontend),
        ),
        (
            CorsPolicy::Origins(vec![frontend.to_owned()]),
            "https://evil.example",
            None,
        ),
        (CorsPolicy::AnyOrigin, "https://evil.example", Some("*")),
    ];
    for (policy, origin, expected) in cases {
        app.api.state.cors = policy.clone();
        let answer = send(&app.api, preflight(origin)).await;
        assert_eq!(
            allowed(&answer).as_deref(),
            expected,
            "{policy:?} preflight from {origin}"
        );
        let answer = send(&app.api, read(origin)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            allowed(&answer).as_deref(),
            expected,
            "{policy:?} read from {origin}"
        );
        if expected.is_some() {
            // Scripts may read the request id and whether a retry was replayed.
            let exposed = answer
                .headers
                .get("access-control-expose-headers")
                .map(|value| value.to_str().unwrap().to_owned());
            assert_eq!(
                exposed.as_deref(),
                Some("x-request-id,idempotent-replayed"),
                "{policy:?} read from {origin}"
            );
        }
    }
}

#[tokio::test]
async fn a_contradictory_cors_setting_stops_the_start_before_anything_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = Config::try_parse_from([
        "protocol-api",
        "--mode",
        "local",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--ensue-local-addr",
        "127.0.0.1:0",
        "--cors-origins",
        "*,https://app.example.com",
    ])
    .unwrap();
    let error = match protocol_api::compose::compose(&config).await {
        Ok(_) => panic!("a contradictory CORS_ORIGINS must refuse to start"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("CORS_ORIGINS") && error.contains("mixes `*`"),
        "{error}"
    );
    assert!(
        !data_dir.exists(),
        "nothing may be created before the refusal"
    );
}

#[tokio::test]
async fn the_embedded_ensue_gets_its_quotas_and_registration_limit_from_the_config() {
    use delibera_ensue::{EnsueClient, EnsueConfig, Memory};

    let dir = tempfile::tempdir().unwrap();
    let config = Config::try_parse_from([
        "protocol-api",
        "--mode",
        "local",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--ensue-local-addr",
        "127.0.0.1:0",
        "--cors-origins",
        "*",
        "--ensue-local-max-keys-per-org",
        "2",
        "--ensue-local-max-bytes-per-org",
        "0",
        "--ensue-local-registrations-per-minute",
        "1",
    ])
    .unwrap();
    let composition = protocol_api::compose::compose(&config).await.unwrap();
    assert_eq!(composition.state.cors, CorsPolicy::AnyOrigin);
    let ensue = composition.local_ensue.as_ref().unwrap();
    let memory = EnsueClient::new(
        EnsueConfig::new(ensue.api_key().expose())
            .with_base_url(ensue.url())
            .unwrap(),
    )
    .unwrap();
    memory.create("a", "1").await.unwrap();
    memory.create("b", &"x".repeat(100_000)).await.unwrap();
    let third = memory.create("c", "3").await.unwrap_err();
    assert!(third.is_quota_exceeded(), "{third:?}");

    delibera_ensue::register_org(ensue.url(), "first-org")
        .await
        .unwrap();
    let second = delibera_ensue::register_org(ensue.url(), "second-org")
        .await
        .unwrap_err();
    assert!(
        matches!(second, delibera_ensue::Error::RateLimited { .. }),
        "{second:?}"
    );
}

/// What the server logged: the level and message of each event, and how
/// many `request` spans were made.
#[derive(Clone, Default)]
struct Logged {
    events: std::sync::Arc<std::sync::Mutex<Vec<(tracing::Level, String)>>>,
    request_spans: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logged {
    fn on_new_span(
        &self,
        attributes: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attributes.metadata().name() == "request" {
            self.request_spans
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let metadata = event.metadata();
        self.events.lock().unwrap().push((
            *metadata.level(),
            format!("{} {}", metadata.target(), metadata.name()),
        ));
    }
}

#[tokio::test]
async fn client_errors_are_not_logged_as_warnings_and_each_request_has_one_span() {
    use tracing_subscriber::layer::SubscriberExt;

    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(dir.path(), TestDeployer::healthy(), Options::default()).await;
    let logged = Logged::default();
    // Other tests' requests meet the request span's callsite on threads with
    // no subscriber. While a single dispatcher exists, tracing asks the
    // thread that meets a callsite first, not that dispatcher, and caches
    // "never" for good. A global one that listens (and keeps nothing) makes
    // every callsite ask all dispatchers, this test's included.
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    // This test's runtime has one thread: everything the requests do is seen.
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(logged.clone()));
    // A callsite met before this test listened keeps what it cached then.
    tracing::callsite::rebuild_interest_cache();
    const JSON: Option<&str> = Some("application/json");
    let requests = [
        request("GET", "/no/such/route", None, ""),
        request(
            "GET",
            "/api/provision/status/6f1c1b9e-3c1d-4e8e-9a53-0d5c8f6b2a10",
            None,
            "",
        ),
        request("DELETE", "/", None, ""),
        request("POST", "/api/provision/worker", JSON, "{not json"),
        request("POST", "/api/provision/worker", None, "{}"),
        request(
            "POST",
            "/api/provision/worker",
            JSON,
            r#"{"displayName":""}"#,
        ),
        Request::builder()
            .method("POST")
            .uri("/api/workers/register")
            .header("content-type", "application/json")
            .body(Body::from(format!(r#"{{"workerId":"{DID}"}}"#)))
            .unwrap(),
    ];
    let count = requests.len();
    for request in requests {
        let answer = send(&app.api, request).await;
        assert!(answer.status.is_client_error(), "{}", answer.status);
    }
    let warnings: Vec<_> = logged
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|(level, _)| *level <= tracing::Level::WARN)
        .cloned()
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        logged
            .request_spans
            .load(std::sync::atomic::Ordering::SeqCst),
        count
    );
}
