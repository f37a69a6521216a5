//! `PhalaClient`: the handful of Phala Cloud API calls a deploy needs.

use std::time::Duration;

use delibera_backoff::{Backoff, Jitter, parse_retry_after};
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;
use url::Url;
use zeroize::Zeroizing;

use crate::error::{ApiError, Error, Result};

/// The API every current SDK defaults to.
pub const DEFAULT_BASE_URL: &str = "https://cloud-api.phala.com/api/v1";

/// API version with the flat CVM shape (`public_urls`, `gateway_domain`).
pub const API_VERSION_2025_10_28: &str = "2025-10-28";
/// API version with the nested CVM shape (`endpoints`, `gateway.base_domain`).
pub const API_VERSION_2026_01_21: &str = "2026-01-21";
/// The `X-Phala-Version` sent unless configured: `2025-10-28`, the one version
/// both SDK generations support (so the least likely to be retired) and the
/// shape the TypeScript server parses. Both shapes are read whatever is sent.
pub const DEFAULT_API_VERSION: &str = API_VERSION_2025_10_28;

/// The instance type the SDK adds when none is given.
pub const DEFAULT_INSTANCE_TYPE: &str = "tdx.small";

/// The SDK's request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The retry schedule of a new [`PhalaClient`]: 3 attempts, 500 ms doubling
/// up to 5 s, no jitter; a `Retry-After` over 5 s is not waited for.
pub const DEFAULT_RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5))
    .with_max_attempts(3)
    .with_jitter(Jitter::None);

/// A client of the Phala Cloud API (`X-API-Key` auth, explicit `X-Phala-Version`).
///
/// Retries: `GET`s, `POST /cvms` (the API returns the existing CVM for the same
/// `app_id` + `compose_hash`) and `DELETE` (404 means already gone) are repeated
/// on 5xx, 429, timeouts and connection failures, after the wait a 429 or 503
/// asks for in `Retry-After` (giving up when that is beyond the backoff's
/// cap). `provision`, `start` and `stop` are sent once.
#[derive(Clone)]
pub struct PhalaClient {
    http: reqwest::Client,
    base_url: Url,
    api_key: HeaderValue,
    api_version: String,
    retry: Backoff,
}

impl std::fmt::Debug for PhalaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhalaClient")
            .field("base_url", &self.base_url.as_str())
            .field("api_key", &"<redacted>")
            .field("api_version", &self.api_version)
            .field("retry", &self.retry)
            .finish()
    }
}

/// `compose_file` of a provision request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComposeFile {
    /// The docker compose YAML.
    pub docker_compose_file: String,
    /// The env names the CVM may receive (part of the compose hash).
    pub allowed_envs: Vec<String>,
    /// The SDK always sends a name, `""` when none is set.
    pub name: String,
}

/// `POST /cvms/provision`: phase one of a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProvisionRequest {
    /// The CVM name (see [`DeploymentName`](delibera_deploy::DeploymentName)).
    pub name: String,
    /// E.g. `tdx.small`.
    pub instance_type: String,
    /// The compose and its allowed env names.
    pub compose_file: ComposeFile,
    /// A region to place the CVM in; the server picks when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A node to place the CVM on (`node_id` in the SDK, `teepod_id` on the wire).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teepod_id: Option<u64>,
}

/// What provision answers: the hash to commit and the key to seal the env to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The compose hash to commit.
    pub compose_hash: String,
    /// The app id (40 hex); present with the default PHALA KMS.
    pub app_id: Option<String>,
    /// The X25519 key to encrypt the env to, as hex.
    pub app_env_encrypt_pubkey: Option<String>,
}

/// `POST /cvms`: phase two of a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommitRequest {
    /// From provision.
    pub app_id: String,
    /// From provision.
    pub compose_hash: String,
    /// The sealed env (see [`encrypt_env`](crate::encrypt_env)); `None` sends `null`.
    pub encrypted_env: Option<String>,
    /// The env names, in the order they were encrypted.
    pub env_keys: Vec<String>,
}

/// One listed public URL of a CVM (`endpoints[]` or `public_urls[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CvmUrl {
    /// The app URL, `https://{app_id}-{port}.{domain}`.
    pub app: String,
    /// The per-instance URL, possibly empty.
    pub instance: String,
}

/// One page of `GET /cvms/paginated`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CvmPage {
    /// The CVMs on this page.
    pub items: Vec<Cvm>,
    /// How many pages there are.
    pub pages: u32,
}

/// A CVM as any of the API versions describes it; missing fields are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cvm {
    /// `id`: a number (2025-10-28) or a hashed string (2026-01-21), as text.
    pub id: String,
    /// The CVM name.
    pub name: Option<String>,
    /// Free text such as `running`, `stopped`, `starting`.
    pub status: Option<String>,
    /// Whether an operation is under way (2025-10-28 shape).
    pub in_progress: Option<bool>,
    /// `progress.target` (2026-01-21 shape), e.g. `running`.
    pub progress_target: Option<String>,
    /// The app id (40 hex).
    pub app_id: Option<String>,
    /// The VM UUID, the id the TypeScript server uses.
    pub vm_uuid: Option<String>,
    /// The instance id.
    pub instance_id: Option<String>,
    /// The listed public URLs (`endpoints` or `public_urls`, whichever came).
    pub urls: Vec<CvmUrl>,
    /// The gateway domain (`gateway.base_domain` or `gateway_domain`).
    pub gateway_domain: Option<String>,
    /// A top-level `error` the API reported for this CVM.
    pub error: Option<String>,
}

impl Cvm {
    /// Reads a CVM object of either API version. Fails only when it has no id at all.
    pub fn from_json(json: &Value) -> Option<Cvm> {
        // List items of the 2025-10-28 shape keep the VM's own fields under `hosted`.
        let hosted = json.get("hosted");
        let text =
            |key: &str| non_empty_text(json.get(key)).or_else(|| non_empty_text(hosted?.get(key)));
        let id = text("id").or_else(|| text("vm_uuid"))?;
        let listed = json
            .get("endpoints")
            .filter(|value| value.as_array().is_some_and(|list| !list.is_empty()))
            .or_else(|| json.get("public_urls"));
        let urls = listed
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| {
                        Some(CvmUrl {
                            app: non_empty_text(item.get("app"))?,
                            instance: non_empty_text(item.get("instance")).unwrap_or_default(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let gateway_domain = non_empty_text(json.get("gateway").and_then(|g| g.get("base_domain")))
            .or_else(|| text("gateway_domain"));
        Some(Cvm {
            id,
            name: text("name"),
            status: text("status"),
            in_progress: json.get("in_progress").and_then(Value::as_bool),
            progress_target: non_empty_text(json.get("progress").and_then(|p| p.get("target"))),
            app_id: text("app_id"),
            vm_uuid: text("vm_uuid"),
            instance_id: text("instance_id"),
            urls,
            gateway_domain,
            error: text("error"),
        })
    }

    /// The id to address this CVM by: `vm_uuid`, else `id` (the TypeScript server's choice).
    pub fn cvm_id(&self) -> &str {
        self.vm_uuid.as_deref().unwrap_or(&self.id)
    }

    /// The public URL of `port`: a listed URL (one for this port if several are
    /// listed), else `https://{app_id}-{port}.{gateway_domain}` when both are known.
    pub fn endpoint_url(&self, port: u16) -> Option<String> {
        let port_marker = format!("-{port}.");
        self.urls
            .iter()
            .find(|url| url.app.contains(&port_marker))
            .or_else(|| self.urls.first())
            .map(|url| url.app.clone())
            .or_else(|| {
                let app_id = self.app_id.as_deref()?;
                let app_id = app_id.strip_prefix("0x").unwrap_or(app_id);
                let domain = self.gateway_domain.as_deref()?;
                Some(format!("https://{app_id}-{port}.{domain}"))
            })
    }

    /// Whether the status says `running`.
    pub fn is_running(&self) -> bool {
        self.status
            .as_deref()
            .is_some_and(|status| status.eq_ignore_ascii_case("running"))
    }

    /// Whether the status says `stopped` and nothing is under way.
    pub fn is_stopped(&self) -> bool {
        let stopped = self
            .status
            .as_deref()
            .is_some_and(|status| status.eq_ignore_ascii_case("stopped"));
        let busy = self.in_progress == Some(true)
            || self
                .progress_target
                .as_deref()
                .is_some_and(|target| !target.eq_ignore_ascii_case("stopped"));
        stopped && !busy
    }
}

/// Text of a JSON string or number; `None` for null, empty or other types.
fn non_empty_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Whether a failed request may be sent again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Idempotent {
    Yes,
    No,
}

impl PhalaClient {
    /// A client of the API at `base_url` (e.g. [`DEFAULT_BASE_URL`]) with this API key.
    pub fn new(base_url: &str, api_key: impl Into<String>) -> Result<Self> {
        let api_key = Zeroizing::new(api_key.into());
        if api_key.trim().is_empty() {
            return Err(Error::Config {
                reason: "the API key is empty".to_owned(),
            });
        }
        let mut api_key = HeaderValue::from_str(&api_key).map_err(|_| Error::Config {
            reason: "the API key has characters a header cannot carry".to_owned(),
        })?;
        // Keeps the key out of reqwest's and hyper's debug output.
        api_key.set_sensitive(true);
        let base_url = Url::parse(base_url).map_err(|error| Error::Config {
            reason: format!("bad base URL {base_url:?}: {error}"),
        })?;
        if base_url.cannot_be_a_base() || !matches!(base_url.scheme(), "http" | "https") {
            return Err(Error::Config {
                reason: format!("bad base URL {base_url}: it must be http(s)"),
            });
        }
        Ok(PhalaClient {
            http: build_http(DEFAULT_TIMEOUT)?,
            base_url,
            api_key,
            api_version: DEFAULT_API_VERSION.to_owned(),
            retry: DEFAULT_RETRY,
        })
    }

    /// A client configured like the SDK: `PHALA_API_KEY` (required) and
    /// `PHALA_CLOUD_API_PREFIX` (the base URL, optional).
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`PhalaClient::from_env`] reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let api_key = lookup("PHALA_API_KEY")
            .filter(|key| !key.trim().is_empty())
            .ok_or_else(|| Error::Config {
                reason: "PHALA_API_KEY is not set".to_owned(),
            })?;
        let base_url = lookup("PHALA_CLOUD_API_PREFIX")
            .filter(|url| !url.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        Self::new(base_url.trim(), api_key.trim())
    }

    /// Sends `version` as `X-Phala-Version` (e.g. [`API_VERSION_2026_01_21`]).
    pub fn with_api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = version.into();
        self
    }

    /// Gives up on any single request after `timeout` (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Result<Self> {
        self.http = build_http(timeout)?;
        Ok(self)
    }

    /// When the safe calls are tried again (default [`DEFAULT_RETRY`];
    /// [`Backoff::none`] never retries).
    pub fn with_retry(mut self, retry: Backoff) -> Self {
        self.retry = retry;
        self
    }

    /// The API base URL.
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// The `X-Phala-Version` this client sends.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// `POST /cvms/provision`: validates the compose and returns its hash, the
    /// app id and the env-encryption key. Sent once.
    pub async fn provision(&self, request: &ProvisionRequest) -> Result<Provisioned> {
        let operation = "POST /cvms/provision";
        let body = to_json(request)?;
        let json = self
            .request(
                Method::POST,
                &["cvms", "provision"],
                Some(&body),
                Idempotent::No,
            )
            .await?;
        let compose_hash =
            non_empty_text(json.get("compose_hash")).ok_or_else(|| Error::UnexpectedResponse {
                operation: operation.to_owned(),
                reason: "no compose_hash".to_owned(),
            })?;
        Ok(Provisioned {
            compose_hash,
            app_id: non_empty_text(json.get("app_id")),
            app_env_encrypt_pubkey: non_empty_text(json.get("app_env_encrypt_pubkey")),
        })
    }

    /// `POST /cvms`: creates the CVM. Retried: the same `app_id` and
    /// `compose_hash` return the existing CVM instead of a second one.
    pub async fn commit(&self, request: &CommitRequest) -> Result<Cvm> {
        let body = to_json(request)?;
        let json = self
            .request(Method::POST, &["cvms"], Some(&body), Idempotent::Yes)
            .await?;
        cvm_of("POST /cvms", &json)
    }

    /// `GET /cvms/{id}`: status, URLs and gateway domain, in either response shape.
    pub async fn get_cvm(&self, cvm_id: &str) -> Result<Cvm> {
        let json = self
            .request(Method::GET, &["cvms", cvm_id], None, Idempotent::Yes)
            .await?;
        cvm_of("GET /cvms/{id}", &json)
    }

    /// `GET /cvms/paginated`: one page of the workspace's CVMs (pages count from 1).
    pub async fn list_cvms(&self, page: u32, page_size: u32) -> Result<CvmPage> {
        let operation = "GET /cvms/paginated";
        let query = format!("page={page}&page_size={page_size}");
        let json = self
            .request_with_query(
                Method::GET,
                &["cvms", "paginated"],
                Some(&query),
                None,
                Idempotent::Yes,
            )
            .await?;
        let items = json
            .get("items")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::UnexpectedResponse {
                operation: operation.to_owned(),
                reason: "no items list".to_owned(),
            })?
            .iter()
            .filter_map(Cvm::from_json)
            .collect();
        let pages = json
            .get("pages")
            .and_then(Value::as_u64)
            .and_then(|pages| u32::try_from(pages).ok())
            .unwrap_or(1);
        Ok(CvmPage { items, pages })
    }

    /// `POST /cvms/{id}/start`. Sent once.
    pub async fn start(&self, cvm_id: &str) -> Result<Option<Cvm>> {
        let json = self
            .request(
                Method::POST,
                &["cvms", cvm_id, "start"],
                None,
                Idempotent::No,
            )
            .await?;
        Ok(Cvm::from_json(&json))
    }

    /// `POST /cvms/{id}/stop`. Sent once.
    pub async fn stop(&self, cvm_id: &str) -> Result<Option<Cvm>> {
        let json = self
            .request(
                Method::POST,
                &["cvms", cvm_id, "stop"],
                None,
                Idempotent::No,
            )
            .await?;
        Ok(Cvm::from_json(&json))
    }

    /// `DELETE /cvms/{id}`. A CVM that is already gone (404) counts as deleted.
    pub async fn delete(&self, cvm_id: &str) -> Result<()> {
        match self
            .request(Method::DELETE, &["cvms", cvm_id], None, Idempotent::Yes)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn request(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&Value>,
        idempotent: Idempotent,
    ) -> Result<Value> {
        self.request_with_query(method, segments, None, body, idempotent)
            .await
    }

    async fn request_with_query(
        &self,
        method: Method,
        segments: &[&str],
        query: Option<&str>,
        body: Option<&Value>,
        idempotent: Idempotent,
    ) -> Result<Value> {
        let backoff = match idempotent {
            Idempotent::Yes => self.retry,
            Idempotent::No => Backoff::none(),
        };
        let mut attempt = 1;
        loop {
            let result = self.send_once(&method, segments, query, body).await;
            let delay = match &result {
                Err(error) if error.is_retryable() => {
                    backoff.retry_delay(attempt, error.retry_after())
                }
                _ => None,
            };
            match delay {
                Some(delay) => {
                    if let Err(error) = &result {
                        tracing::debug!(%error, attempt, ?delay, "retrying Phala request");
                    }
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                None => return result,
            }
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        segments: &[&str],
        query: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value> {
        let operation = operation_name(method, segments);
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .map_err(|()| Error::Config {
                reason: "the base URL cannot take a path".to_owned(),
            })?
            .pop_if_empty()
            .extend(segments);
        url.set_query(query);

        let mut request = self
            .http
            .request(method.clone(), url)
            .header("X-API-Key", self.api_key.clone())
            .header("X-Phala-Version", &self.api_version)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|error| transport(&operation, &error))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(Error::Redirected {
                operation,
                status: status.as_u16(),
                location: redirect_target(response.url(), response.headers()),
            });
        }
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(parse_retry_after),
            _ => None,
        };
        let bytes = response
            .bytes()
            .await
            .map_err(|error| transport(&operation, &error))?;
        if !status.is_success() {
            let mut api_error = ApiError::from_body(status.as_u16(), &bytes);
            if let Some(wait) = retry_after {
                api_error.set_retry_after(wait);
            }
            let error = api_error.into_error();
            tracing::debug!(%operation, %error, "Phala request failed");
            return Err(error);
        }
        if bytes.iter().all(u8::is_ascii_whitespace) || status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|error| Error::UnexpectedResponse {
            operation,
            reason: format!("the body is not JSON: {error}"),
        })
    }
}

fn build_http(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        // A followed redirect would take `X-API-Key` along to wherever it
        // points; a 3xx is reported as `Error::Redirected` instead.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("delibera-phala/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| Error::Config {
            reason: format!("cannot build the HTTP client: {error}"),
        })
}

/// Where a 3xx answer to `request` points, as an origin and a path: its
/// user info, query and fragment are left out, since they may hold a secret.
fn redirect_target(request: &Url, headers: &reqwest::header::HeaderMap) -> String {
    let Some(location) = headers
        .get(reqwest::header::LOCATION)
        .and_then(|value| value.to_str().ok())
    else {
        return "no location".to_owned();
    };
    match request.join(location) {
        Ok(mut target) => {
            // Both only fail for URLs that cannot carry them, which have none.
            let _ = target.set_username("");
            let _ = target.set_password(None);
            target.set_query(None);
            target.set_fragment(None);
            target.to_string()
        }
        Err(_) => "an unreadable location".to_owned(),
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|error| Error::Config {
        reason: format!("cannot encode the request: {error}"),
    })
}

fn cvm_of(operation: &str, json: &Value) -> Result<Cvm> {
    Cvm::from_json(json).ok_or_else(|| Error::UnexpectedResponse {
        operation: operation.to_owned(),
        reason: "no id or vm_uuid in the CVM object".to_owned(),
    })
}

/// `GET /cvms/{id}`-style label: ids are replaced by placeholders so logs and
/// errors group by call.
fn operation_name(method: &Method, segments: &[&str]) -> String {
    let path: Vec<&str> = segments
        .iter()
        .enumerate()
        .map(|(index, segment)| {
            if index == 1 && !matches!(*segment, "provision" | "paginated") {
                "{id}"
            } else {
                segment
            }
        })
        .collect();
    format!("{method} /{}", path.join("/"))
}

fn transport(operation: &str, error: &reqwest::Error) -> Error {
    if error.is_timeout() {
        Error::Timeout {
            operation: operation.to_owned(),
        }
    } else {
        Error::Transport {
            operation: operation.to_owned(),
            // reqwest's text names the URL, never the headers (so never the key).
            message: error.to_string(),
        }
    }
}
