//! [`CorsPolicy`]: which web origins may call a server from a browser, parsed
//! from one setting (`CORS_ORIGINS`) the same way by every server.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, header};
use tower::{Layer, Service};
use url::Url;

use crate::{Error, Result};

/// Which web origins may call a server from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsPolicy {
    /// Any origin (`Access-Control-Allow-Origin: *`).
    AnyOrigin,
    /// Only these origins, each `scheme://host[:port]` exactly as a browser
    /// sends it in `Origin`.
    Origins(Vec<String>),
    /// No cross-origin access: browsers let only pages of the server's own
    /// origin read its answers.
    SameOriginOnly,
}

impl CorsPolicy {
    /// The policy a setting asks for: `*` for any origin, `none` for none,
    /// otherwise a comma-separated list of origins. A setting that
    /// contradicts itself (`*` or `none` beside origins), holds an empty
    /// entry, or names something that is not a bare origin (a path, a
    /// trailing slash, upper case, a default port) is refused, saying what
    /// to write instead, rather than silently matching nothing.
    pub fn parse(setting: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidCorsOrigins { reason };
        if setting.trim().is_empty() {
            return Err(invalid(
                "is empty: set it to the frontend's origin (e.g. https://app.example.com), \
                 `*` for any origin, or `none` for no cross-origin access"
                    .into(),
            ));
        }
        let entries: Vec<&str> = setting.split(',').map(str::trim).collect();
        if entries.iter().any(|entry| entry.is_empty()) {
            return Err(invalid(format!(
                "{setting:?} has an empty entry: separate origins with single commas"
            )));
        }
        let keyword = |word: &str| entries.iter().any(|entry| entry.eq_ignore_ascii_case(word));
        match (keyword("*"), keyword("none")) {
            (true, true) => {
                return Err(invalid(
                    "asks for both `*` (any origin) and `none` (no origin): choose one".into(),
                ));
            }
            (true, false) if entries.len() == 1 => return Ok(CorsPolicy::AnyOrigin),
            (false, true) if entries.len() == 1 => return Ok(CorsPolicy::SameOriginOnly),
            (true, false) => {
                return Err(invalid(format!(
                    "{setting:?} mixes `*` (any origin) with a list of origins: use `*` alone, \
                     or list only the origins to allow"
                )));
            }
            (false, true) => {
                return Err(invalid(format!(
                    "{setting:?} mixes `none` (no origin) with a list of origins: use `none` \
                     alone, or list only the origins to allow"
                )));
            }
            (false, false) => {}
        }
        let mut origins = Vec::with_capacity(entries.len());
        for entry in entries {
            let origin = Url::parse(entry)
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https"))
                .map(|url| url.origin().ascii_serialization())
                .filter(|origin| origin != "null");
            match origin {
                Some(origin) if origin == entry => {
                    if !origins.contains(&origin) {
                        origins.push(origin);
                    }
                }
                Some(origin) => {
                    return Err(invalid(format!(
                        "{entry:?} is not an origin as browsers send it: write {origin:?} \
                         (scheme, host and port only, lower case, no trailing slash)"
                    )));
                }
                None => {
                    return Err(invalid(format!(
                        "{entry:?} is not an origin: write it as https://host[:port]"
                    )));
                }
            }
        }
        Ok(CorsPolicy::Origins(origins))
    }

    /// The setting that [`parse`](Self::parse)s back into this policy.
    pub fn to_setting(&self) -> String {
        match self {
            CorsPolicy::AnyOrigin => "*".to_owned(),
            CorsPolicy::SameOriginOnly => "none".to_owned(),
            CorsPolicy::Origins(origins) => origins.join(","),
        }
    }

    /// The CORS answers for this policy: allowed origins get any method and
    /// header. Without an allowed origin the layer still answers preflights,
    /// with no `Access-Control-Allow-Origin`, so browsers refuse every
    /// cross-origin call.
    pub fn layer(&self) -> CorsLayer {
        let allow_origin = match self {
            CorsPolicy::AnyOrigin => AllowOrigin::Any,
            CorsPolicy::Origins(origins) => AllowOrigin::List(
                origins
                    .iter()
                    .filter_map(|origin| HeaderValue::from_str(origin).ok())
                    .collect(),
            ),
            CorsPolicy::SameOriginOnly => AllowOrigin::None,
        };
        // Allowed origins may use any method and send any header.
        let any_method_and_header = allow_origin != AllowOrigin::None;
        CorsLayer {
            answers: Answers {
                allow_origin,
                any_method_and_header,
                expose_headers: None,
            },
        }
    }
}

/// The CORS layer of a [`CorsPolicy`] ([`CorsPolicy::layer`]).
///
/// It answers as `tower_http`'s `CorsLayer` configured the same way would
/// (a test compares the two), with every header value built once: every
/// response gets `Vary: origin, access-control-request-method,
/// access-control-request-headers` (appended to the handler's own) and
/// `Access-Control-Allow-Origin` for an allowed origin (`*` for any);
/// every `OPTIONS` request is a preflight answered here, 200 with no body,
/// and other requests get `Access-Control-Expose-Headers` if any are set.
/// Its services share one copy of these answers per distinct configuration
/// for the life of the process, so cloning one (which a router does for
/// every request) copies a pointer and touches no shared counter.
#[derive(Debug, Clone)]
pub struct CorsLayer {
    answers: Answers,
}

impl CorsLayer {
    /// Lets a browser script read these response headers too (they are
    /// exposed to allowed origins only, but sent on every answer).
    pub fn expose_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        let names: Vec<HeaderName> = headers.into_iter().collect();
        let joined = names
            .iter()
            .map(HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(",");
        self.answers.expose_headers = (!names.is_empty())
            .then(|| HeaderValue::from_str(&joined).ok())
            .flatten();
        self
    }
}

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Cors<S> {
        Cors {
            inner,
            answers: Answers::interned(&self.answers),
        }
    }
}

/// Which origins a [`CorsLayer`] names in `Access-Control-Allow-Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowOrigin {
    /// `*`, whatever the request's `Origin`.
    Any,
    /// The request's `Origin`, echoed, when it is one of these.
    List(Vec<HeaderValue>),
    /// None.
    None,
}

/// What a [`CorsLayer`] adds to answers, built once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answers {
    allow_origin: AllowOrigin,
    /// Preflights answer `*` for methods and headers.
    any_method_and_header: bool,
    expose_headers: Option<HeaderValue>,
}

/// The request headers a CORS answer depends on.
const VARY: HeaderValue = HeaderValue::from_static(
    "origin, access-control-request-method, access-control-request-headers",
);
const WILDCARD: HeaderValue = HeaderValue::from_static("*");

impl Answers {
    /// The process's one copy of `answers`: a server builds its router from
    /// a handful of configurations, so the copies are bounded by those.
    fn interned(answers: &Answers) -> &'static Answers {
        static INTERNED: Mutex<Vec<&'static Answers>> = Mutex::new(Vec::new());
        let mut interned = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = interned.iter().find(|known| **known == answers) {
            return known;
        }
        let mut answers = answers.clone();
        // Backed by static bytes, a header value is copied without
        // counting references.
        answers.expose_headers = answers.expose_headers.map(|value| {
            let text: &'static [u8] = Box::leak(value.as_bytes().into());
            HeaderValue::from_maybe_shared(Bytes::from_static(text)).unwrap_or(value)
        });
        let leaked: &'static Answers = Box::leak(Box::new(answers));
        interned.push(leaked);
        leaked
    }

    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match &self.allow_origin {
            AllowOrigin::Any => Some(WILDCARD),
            AllowOrigin::List(allowed) => origin.filter(|origin| allowed.contains(origin)).cloned(),
            AllowOrigin::None => None,
        }
    }

    fn preflight<B: Default>(&self, origin: Option<HeaderValue>) -> Response<B> {
        let mut response = Response::new(B::default());
        let headers = response.headers_mut();
        if let Some(origin) = origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        headers.insert(header::VARY, VARY);
        if self.any_method_and_header {
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, WILDCARD);
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, WILDCARD);
        }
        response
    }

    fn complete<B>(&self, response: &mut Response<B>, origin: Option<HeaderValue>) {
        let headers = response.headers_mut();
        // The handler may have a `Vary` of its own: keep it.
        headers.append(header::VARY, VARY);
        if let Some(origin) = origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        if let Some(exposed) = &self.expose_headers {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, exposed.clone());
        }
    }
}

/// The service of a [`CorsLayer`].
#[derive(Debug, Clone)]
pub struct Cors<S> {
    inner: S,
    answers: &'static Answers,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cors<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = CorsFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let origin = self
            .answers
            .allow_origin(request.headers().get(header::ORIGIN));
        if request.method() == Method::OPTIONS {
            return CorsFuture {
                state: State::Preflight {
                    response: Some(self.answers.preflight(origin)),
                },
            };
        }
        CorsFuture {
            state: State::Call {
                answer: self.inner.call(request),
                answers: self.answers,
                origin,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a [`Cors`] service.
    pub struct CorsFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProjection]
    enum State<F, B> {
        Preflight { response: Option<Response<B>> },
        Call {
            #[pin]
            answer: F,
            answers: &'static Answers,
            origin: Option<HeaderValue>,
        },
    }
}

impl<F, B, E> Future for CorsFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            // Taken once: a future is not polled again after it is ready.
            StateProjection::Preflight { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_default()))
            }
            StateProjection::Call {
                answer,
                answers,
                origin,
            } => {
                let mut response = ready!(answer.poll(cx))?;
                answers.complete(&mut response, origin.take());
                Poll::Ready(Ok(response))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    /// What a browser can see of an answer: status, body and the headers.
    async fn seen(router: Router, request: Request<Body>) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let response = router.oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let mut headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap()
            .to_vec();
        (status, headers, body)
    }

    /// The reference: `tower_http`'s layer configured as this crate did
    /// before it had its own.
    fn tower_http_layer(policy: &CorsPolicy, expose: &[HeaderName]) -> tower_http::cors::CorsLayer {
        use tower_http::cors::{AllowOrigin, Any, CorsLayer};
        let layer = match policy {
            CorsPolicy::AnyOrigin => CorsLayer::new().allow_origin(AllowOrigin::any()),
            CorsPolicy::Origins(origins) => CorsLayer::new().allow_origin(AllowOrigin::list(
                origins
                    .iter()
                    .map(|origin| HeaderValue::from_str(origin).unwrap()),
            )),
            CorsPolicy::SameOriginOnly => return CorsLayer::new(),
        };
        let layer = layer.allow_methods(Any).allow_headers(Any);
        if expose.is_empty() {
            layer
        } else {
            layer.expose_headers(expose.to_vec())
        }
    }

    #[tokio::test]
    async fn answers_as_tower_http_configured_the_same_way() {
        let routes = || {
            Router::new()
                .route("/", get(|| async { "ok" }).post(|| async { "posted" }))
                .route(
                    "/varies",
                    get(|| async { ([(header::VARY, "accept-encoding")], "ok") }),
                )
        };
        let expose = [HeaderName::from_static("x-request-id")];
        let policies = [
            CorsPolicy::AnyOrigin,
            CorsPolicy::SameOriginOnly,
            CorsPolicy::Origins(vec!["https://app.example.com".into()]),
        ];
        let mut compared = 0;
        for policy in &policies {
            for exposed in [&expose[..], &[]] {
                if *policy == CorsPolicy::SameOriginOnly && !exposed.is_empty() {
                    continue; // never configured that way
                }
                for method in [Method::GET, Method::POST, Method::OPTIONS, Method::DELETE] {
                    for path in ["/", "/varies", "/missing"] {
                        for origin in [
                            None,
                            Some("https://app.example.com"),
                            Some("https://evil.example"),
                        ] {
                            for preflight_headers in [false, true] {
                                let request = || {
                                    let mut request =
                                        Request::builder().method(method.clone()).uri(path);
                                    if let Some(origin) = origin {
                                        request = request.header(header::ORIGIN, origin);
                                    }
                                    if preflight_headers {
                                        request = request
                                            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
                                            .header(
                                                header::ACCESS_CONTROL_REQUEST_HEADERS,
                                                "content-type",
                                            );
                                    }
                                    request.body(Body::empty()).unwrap()
                                };
                                let ours = policy.layer().expose_headers(exposed.iter().cloned());
                                let ours = seen(routes().layer(ours), request()).await;
                                let reference = tower_http_layer(policy, exposed);
                                let reference = seen(routes().layer(reference), request()).await;
                                assert_eq!(
                                    ours, reference,
                                    "{policy:?} exposing {exposed:?}: {method} {path} from {origin:?}"
                                );
                                compared += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(compared, 5 * 4 * 3 * 3 * 2);
    }

    #[test]
    fn every_policy_round_trips_through_its_setting() {
        for policy in [
            CorsPolicy::AnyOrigin,
            CorsPolicy::SameOriginOnly,
            CorsPolicy::Origins(vec![
                "https://app.example.com".into(),
                "http://localhost:3000".into(),
            ]),
        ] {
            assert_eq!(CorsPolicy::parse(&policy.to_setting()).unwrap(), policy);
        }
    }
}
