//! The hosted mode (`ClaimPolicy::RequireClaim`): a registered organisation's
//! key gets 401 until a human claims the organisation at its `claim_url`
//! with its `verification_code`; claims persist; the default mode is unchanged.
//!
//! Every test runs under a deadline, and every HTTP client has a timeout.

use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use delibera_ensue::{Dialect, EnsueClient, EnsueConfig, Error, Memory, register_org};
use delibera_ensue_local::axum::{self, extract::Request, middleware::Next};
use delibera_ensue_local::{
    ApiKey, AppState, ClaimPolicy, Config, DATABASE_FILE, LocalEnsue, Store, app,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::common::{create, direct, get, post_raw, tool};

/// The longest any test here may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// The longest one HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const DIALECTS: [Dialect; 2] = [Dialect::Mcp, Dialect::Direct];

/// Runs `test` to completion, or fails once [`DEADLINE`] has passed.
async fn within<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, test)
        .await
        .expect("the test did not finish before its deadline")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

fn hosted() -> Config {
    Config::default().with_claim_policy(ClaimPolicy::RequireClaim)
}

/// `POST /auth/agent-register {"name"}`, checked to succeed.
async fn register(server: &LocalEnsue, name: &str) -> Value {
    let response = http()
        .post(format!("{}auth/agent-register", server.url()))
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn field<'a>(registration: &'a Value, name: &str) -> &'a str {
    registration[name].as_str().unwrap()
}

/// Posts `body` as JSON to `url` (a claim URL or `{base}claim`).
async fn claim_json(url: &str, body: Value) -> (StatusCode, Value) {
    let response = http().post(url).json(&body).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// Posts form fields to `{base}claim`, as the claim page's form does.
async fn claim_form(server: &LocalEnsue, fields: &[(&str, &str)]) -> (StatusCode, String) {
    let body = fields
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&");
    let response = http()
        .post(format!("{}claim", server.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.text().await.unwrap())
}

/// The HTTP status a JSON-RPC `ping` authenticated with `key` gets.
async fn status_of(server: &LocalEnsue, key: &str) -> StatusCode {
    let ping = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#.to_vec();
    post_raw(server.url(), Some(key), None, ping).await.status
}

/// The 401 body of an unclaimed organisation's key.
fn not_claimed(server: &LocalEnsue, org: &str) -> Value {
    json!({
        "error": "organization not claimed",
        "org": org,
        "claim_url": format!("{}claim", server.url()),
        "message": "this API key works once a human claims the organization: open the claim_url returned by POST /auth/agent-register and enter its verification_code",
    })
}

#[tokio::test]
async fn an_unclaimed_key_gets_401_for_every_method_in_both_dialects() {
    within(async {
        let server = LocalEnsue::start(hosted()).await.unwrap();
        let registration = register(&server, "hosted-org").await;
        assert_eq!(registration["status"], "unclaimed");
        let key = field(&registration, "api_key");
        assert!(key.starts_with("lmn_"));
        let claim_url = field(&registration, "claim_url");
        let token = claim_url
            .strip_prefix(&format!("{}claim?token=", server.url()))
            .unwrap_or_else(|| panic!("{claim_url}"));
        assert_eq!(token.len(), 32);
        let code = field(&registration, "verification_code");
        assert_eq!(code.len(), 8);
        // The same shape as in the default mode: top level and under `agent`.
        assert_eq!(registration["agent"]["api_key"], key);
        assert_eq!(registration["agent"]["claim_url"], claim_url);
        assert_eq!(registration["agent"]["verification_code"], code);
        assert_eq!(registration["agent"]["name"], "hosted-org");

        let item = json!({ "key_name": "k", "value": "v", "description": "d" });
        let calls = [
            ("tools/call", json!({ "name": "create_memory", "arguments": { "items": [item] } })),
            ("tools/call", json!({ "name": "get_memory", "arguments": { "key_names": ["k"] } })),
            ("tools/call", json!({ "name": "update_memory", "arguments": { "key_name": "k", "value": "w" } })),
            ("tools/call", json!({ "name": "delete_memory", "arguments": { "key_names": ["k"] } })),
            ("tools/call", json!({ "name": "list_keys", "arguments": {} })),
            ("tools/list", json!({})),
            ("initialize", json!({ "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } })),
            ("ping", json!({})),
            ("create_memory", json!({ "key": "k", "value": "v" })),
            ("get_memory", json!({ "key": "k" })),
            ("read_memory", json!({ "key": "k" })),
            ("update_memory", json!({ "key": "k", "value": "w" })),
            ("delete_memory", json!({ "key": "k" })),
            ("list_keys", json!({ "prefix": "" })),
        ];
        for (method, params) in calls {
            let body = json!({ "jsonrpc": "2.0", "id": 3, "method": method, "params": params });
            for accept in [Some("application/json, text/event-stream"), None] {
                let answer =
                    post_raw(server.url(), Some(key), accept, body.to_string().into_bytes()).await;
                assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{method} {params}");
                assert_eq!(answer.content_type, "application/json");
                assert_eq!(answer.message(), not_claimed(&server, "hosted-org"));
            }
        }
        // A notification is refused too, and the challenge header is sent.
        let response = http()
            .post(server.url())
            .bearer_auth(key)
            .json(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert!(!response.text().await.unwrap().contains(key));

        // The bootstrap organisation, and organisations the operator adds
        // through the store, need no claim.
        assert_eq!(status_of(&server, server.api_key().expose()).await, StatusCode::OK);
        let added = server.store().register_org("added-by-operator").await.unwrap();
        assert_eq!(status_of(&server, added.expose()).await, StatusCode::OK);

        // None of the refused calls wrote anything.
        let (status, _) = claim_json(claim_url, json!({ "verification_code": code })).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(get(&server, key, "k").await, None);
        server.stop().await.unwrap();
    })
    .await;
}

/// A server over `state` on a free loopback port that counts the requests it
/// receives, so a test can tell whether a client retried.
struct Counted {
    url: String,
    requests: Arc<AtomicUsize>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Counted {
    async fn start(state: AppState) -> Counted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        let router = app(state.with_public_url(url.clone())).layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                counter.fetch_add(1, Ordering::SeqCst);
                next.run(request)
            },
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Counted {
            url,
            requests,
            stop,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// The client's default retry schedule, so a retried 401 would show in the count.
fn client(url: &str, api_key: &str, dialect: Dialect) -> EnsueClient {
    let config = EnsueConfig::new(api_key)
        .with_base_url(url)
        .unwrap()
        .with_dialect(dialect)
        .with_timeout(REQUEST_TIMEOUT);
    EnsueClient::new(config).unwrap()
}

/// `error` is the client's `Unauthorized` for an unclaimed organisation, and
/// it cost exactly one request.
fn assert_refused_once(error: Error, server: &Counted, before: usize, what: &str) {
    match &error {
        Error::Unauthorized { status: 401, body } => {
            assert!(body.contains("organization not claimed"), "{what}: {body}");
        }
        other => panic!("{what}: expected Unauthorized, got {other:?}"),
    }
    assert!(error.is_unauthorized(), "{what}");
    assert!(!error.is_retryable(), "{what}");
    assert_eq!(server.requests() - before, 1, "{what} was retried");
}

#[tokio::test]
async fn the_client_gets_unauthorized_without_retrying_then_works_once_claimed() {
    within(async {
        let store = Store::in_memory().unwrap();
        let server =
            Counted::start(AppState::new(store).with_claim_policy(ClaimPolicy::RequireClaim)).await;

        // Our real registration client reads everything a claim needs.
        let registration = register_org(&server.url, "delibera-coord-hosted")
            .await
            .unwrap();
        assert!(
            registration
                .claim_url
                .starts_with(&format!("{}claim?token=", server.url))
        );
        assert_eq!(registration.verification_code.len(), 8);
        let key = registration.api_key.expose_secret();

        for dialect in DIALECTS {
            let memory = client(&server.url, key, dialect);
            let keys = ["coordination/coordinator/status".to_owned()];
            let what = |op: &str| format!("{dialect} {op}");

            let before = server.requests();
            let error = memory.create(&keys[0], "idle").await.unwrap_err();
            assert_refused_once(error, &server, before, &what("create"));
            let before = server.requests();
            let error = memory.update(&keys[0], "idle").await.unwrap_err();
            assert_refused_once(error, &server, before, &what("update"));
            let before = server.requests();
            let error = memory.upsert(&keys[0], "idle").await.unwrap_err();
            assert_refused_once(error, &server, before, &what("upsert"));
            let before = server.requests();
            let error = memory.get(&keys[0]).await.unwrap_err();
            assert_refused_once(error, &server, before, &what("get"));
            let before = server.requests();
            let error = memory.get_many(&keys).await.unwrap_err();
            assert_refused_once(error, &server, before, &what("get_many"));
            let before = server.requests();
            let error = memory.list_keys("coordination/").await.unwrap_err();
            assert_refused_once(error, &server, before, &what("list_keys"));
            let before = server.requests();
            let error = memory.delete(&keys[0]).await.unwrap_err();
            assert_refused_once(error, &server, before, &what("delete"));
        }

        // The claim needs nothing but what registration returned: post the
        // code to the claim URL itself.
        let (status, body) = claim_json(
            &registration.claim_url,
            json!({ "verification_code": registration.verification_code }),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({ "claimed": true, "org": "delibera-coord-hosted" })
        );

        for dialect in DIALECTS {
            let memory = client(&server.url, key, dialect);
            let status = format!("coordination/tasks/{dialect}/status");
            memory.create(&status, "idle").await.unwrap();
            assert_eq!(memory.get(&status).await.unwrap().as_deref(), Some("idle"));
            memory.upsert(&status, "pending").await.unwrap();
            assert_eq!(
                memory.get(&status).await.unwrap().as_deref(),
                Some("pending")
            );
            assert_eq!(
                memory
                    .list_keys(&format!("coordination/tasks/{dialect}/"))
                    .await
                    .unwrap(),
                [status]
            );
        }
        server.stop().await;
    })
    .await;
}

/// Collects what a scoped tracing subscriber writes.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

impl Write for Logs {
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

#[tokio::test]
async fn the_claim_page_refuses_wrong_codes_and_claims_with_the_right_one() {
    // The server's tasks run on this test's thread (a current-thread
    // runtime), so a thread-scoped subscriber sees their logs.
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _scoped = tracing::subscriber::set_default(subscriber);
    // tracing decides once per callsite, when it is first hit, whether
    // anyone listens. While a single dispatcher exists it asks only the
    // hitting thread's default, which for another test's thread is nobody,
    // and the callsite would then stay silent here too. With a second live
    // dispatcher it asks every dispatcher instead.
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());

    let (key, token, code) = within(async {
        let server = LocalEnsue::start(hosted()).await.unwrap();
        let registration = register(&server, "claim-me").await;
        let key = field(&registration, "api_key").to_owned();
        let claim_url = field(&registration, "claim_url").to_owned();
        let code = field(&registration, "verification_code").to_owned();
        let token = claim_url.split("token=").nth(1).unwrap().to_owned();

        // The page names the organisation and holds the form.
        let page = http().get(&claim_url).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(page.headers()["cache-control"], "no-store");
        assert_eq!(page.headers()["referrer-policy"], "no-referrer");
        let page = page.text().await.unwrap();
        assert!(page.contains("<strong>claim-me</strong>"), "{page}");
        assert!(
            page.contains(r#"<form method="post" action="claim">"#),
            "{page}"
        );
        assert!(page.contains(&format!(
            r#"<input type="hidden" name="token" value="{token}">"#
        )));
        assert!(page.contains(r#"name="verification_code""#), "{page}");
        assert!(!page.contains(&code));

        // An unknown token is a 404 page; no token at all asks for one.
        let unknown = http()
            .get(format!("{}claim?token=0123", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            unknown.headers()["content-type"],
            "text/html; charset=utf-8"
        );
        assert!(unknown.text().await.unwrap().contains("Unknown claim link"));
        let blank = http()
            .get(format!("{}claim", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(blank.status(), StatusCode::OK);
        assert!(
            blank
                .text()
                .await
                .unwrap()
                .contains(r#"<input name="token""#)
        );

        // Wrong codes, unknown tokens and malformed claims are refused.
        let claim_endpoint = format!("{}claim", server.url());
        let (status, body) = claim_json(
            &claim_endpoint,
            json!({ "token": token, "verification_code": "zzzzzzzz" }),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body, json!({ "error": "wrong verification code" }));
        assert_eq!(status_of(&server, &key).await, StatusCode::UNAUTHORIZED);
        let (status, body) = claim_json(
            &claim_endpoint,
            json!({ "token": "0123", "verification_code": code }),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, json!({ "error": "unknown claim token" }));
        for malformed in [
            json!({ "token": token }),
            json!({ "verification_code": code }),
            json!({ "token": token, "verification_code": 7 }),
            json!(["not", "an", "object"]),
        ] {
            let (status, body) = claim_json(&claim_endpoint, malformed.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{malformed}");
            assert!(body["error"].is_string());
        }
        let plain = http()
            .post(&claim_endpoint)
            .header("content-type", "text/plain")
            .body(format!("{token} {code}"))
            .send()
            .await
            .unwrap();
        assert_eq!(plain.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

        // The browser's form: a wrong code shows the form again...
        let (status, page) = claim_form(
            &server,
            &[("token", &token), ("verification_code", "00000000")],
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(page.contains("not right"), "{page}");
        assert!(page.contains(&format!(r#"value="{token}""#)));
        assert_eq!(status_of(&server, &key).await, StatusCode::UNAUTHORIZED);

        // ...and the right one, typed as a human might, claims the organisation.
        let typed = format!("+{}+", code.to_uppercase());
        let (status, page) =
            claim_form(&server, &[("token", &token), ("verification_code", &typed)]).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(
            page.contains("<strong>claim-me</strong> is claimed"),
            "{page}"
        );

        // A second claim succeeds again; a wrong code still does not.
        let (status, body) = claim_json(&claim_url, json!({ "verification_code": code })).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({ "claimed": true, "org": "claim-me" }));
        let (status, _) = claim_json(&claim_url, json!({ "verification_code": "00000000" })).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let page = http()
            .get(&claim_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("is already claimed"), "{page}");

        // The key now works for create, get and list, in both dialects.
        let created = create(&server, &key, "agent/w1/display_name", "Worker 1").await;
        assert_eq!(created["isError"], false);
        assert_eq!(
            get(&server, &key, "agent/w1/display_name").await.as_deref(),
            Some("Worker 1")
        );
        let listed = tool(&server, &key, "list_keys", json!({ "prefix": "agent/" })).await;
        assert_eq!(listed["structuredContent"]["total"], 1);
        let created = direct(
            &server,
            &key,
            "create_memory",
            json!({ "key": "d/1", "value": "x" }),
        )
        .await;
        assert_eq!(created["isError"], false);
        let read = direct(&server, &key, "get_memory", json!({ "key": "d/1" })).await;
        assert_eq!(read["structuredContent"]["results"][0]["value"], "x");
        let listed = direct(&server, &key, "list_keys", json!({ "prefix": "d/" })).await;
        assert_eq!(listed["structuredContent"]["keys"], json!(["d/1"]));
        server.stop().await.unwrap();
        (key, token, code)
    })
    .await;

    let logs = logs.text();
    assert!(logs.contains("organization claimed"), "{logs}");
    assert!(logs.contains("claim refused"), "{logs}");
    for secret in [&key, &token, &code, &code.to_uppercase()] {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret was logged:\n{logs}"
        );
    }
}

#[tokio::test]
async fn claims_and_pending_claims_survive_a_restart() {
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let bootstrap = ApiKey::new("lmn_claims_restart_test").unwrap();
        let config = || {
            hosted()
                .with_data_dir(dir.path())
                .with_bootstrap_key(bootstrap.clone())
        };

        let server = LocalEnsue::start(config()).await.unwrap();
        let first_url = server.url().to_owned();
        let claimed = register(&server, "claimed-before").await;
        let pending = register(&server, "pending-across").await;
        let (status, _) = claim_json(
            field(&claimed, "claim_url"),
            json!({ "verification_code": field(&claimed, "verification_code") }),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        create(&server, field(&claimed, "api_key"), "kept", "yes").await;
        server.stop().await.unwrap();

        // Keys, tokens and codes are on disk only as digests.
        let mut on_disk = std::fs::read(dir.path().join(DATABASE_FILE)).unwrap();
        if let Ok(wal) = std::fs::read(dir.path().join(format!("{DATABASE_FILE}-wal"))) {
            on_disk.extend(wal);
        }
        for registration in [&claimed, &pending] {
            let token = field(registration, "claim_url")
                .split("token=")
                .nth(1)
                .unwrap();
            for secret in [
                field(registration, "api_key"),
                token,
                field(registration, "verification_code"),
            ] {
                let found = on_disk
                    .windows(secret.len())
                    .any(|window| window == secret.as_bytes());
                assert!(!found, "a secret is stored in clear");
            }
        }

        let server = LocalEnsue::start(config()).await.unwrap();
        let claimed_key = field(&claimed, "api_key");
        assert_eq!(
            get(&server, claimed_key, "kept").await.as_deref(),
            Some("yes")
        );
        let pending_key = field(&pending, "api_key");
        assert_eq!(
            status_of(&server, pending_key).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status_of(&server, bootstrap.expose()).await, StatusCode::OK);
        // The pending claim's token and code still work after the restart
        // (on the new port: the server listens on a free one each time).
        let claim_url = field(&pending, "claim_url").replace(&first_url, server.url());
        let page = http().get(&claim_url).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert!(page.text().await.unwrap().contains("pending-across"));
        let (status, body) = claim_json(
            &claim_url,
            json!({ "verification_code": field(&pending, "verification_code") }),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["org"], "pending-across");
        assert_eq!(status_of(&server, pending_key).await, StatusCode::OK);
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn the_default_mode_still_activates_keys_at_once() {
    within(async {
        let server = LocalEnsue::start(Config::default()).await.unwrap();
        assert_eq!(Config::default().claim_policy, ClaimPolicy::Immediate);
        let registration = register(&server, "immediate").await;
        assert_eq!(registration["status"], "active");
        assert_eq!(
            status_of(&server, field(&registration, "api_key")).await,
            StatusCode::OK
        );
        // There is nothing to claim, so nothing to post.
        let posted = http()
            .post(field(&registration, "claim_url"))
            .json(&json!({ "verification_code": field(&registration, "verification_code") }))
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), StatusCode::METHOD_NOT_ALLOWED);
        server.stop().await.unwrap();
    })
    .await;
}
