//! A Phala Cloud stand-in: the routes and JSON shapes of the Cloud API that a
//! deploy uses, a KMS that opens each CVM's sealed env with its own X25519
//! key, and CVMs that boot the Delibera agent runtime with exactly that env,
//! reachable through a gateway on the same origin.
//!
//! - `POST /api/v1/cvms/provision` → compose hash, app id, env-encryption key
//! - `POST /api/v1/cvms` (commit, with the encrypted env) → the CVM
//! - `GET /api/v1/cvms/paginated`, `GET /api/v1/cvms/{id}`, in the shape the
//!   `X-Phala-Version` header asks for (`2025-10-28` or `2026-01-21`), and
//!   the older unpaginated `GET /api/v1/cvms` (a bare array of the same items)
//! - `POST /api/v1/cvms/{id}/start|stop`, `DELETE /api/v1/cvms/{id}`
//! - `/gateway/{app_id}-{port}/…` → the CVM's agent
//!
//! Every `/api/v1` call needs `X-API-Key`; errors are FastAPI-shaped
//! (`{"detail": …}`, structured `{"detail": {"error_code", "message"}}`).
//! A CVM boots by its compose file's image: an image loaded from an OCI
//! archive (`PhalaDevnetConfig::image_archive`, matched by digest) runs its
//! entry point as a child process with the opened env; [`NEVER_HEALTHY_IMAGE`]
//! boots a server that never answers its health check; any other image runs
//! the agent runtime in process — unless an archive was loaded, when only its
//! image and [`crate::AGENT_IMAGE`] boot and any other fails as an unknown
//! image would fail to pull.

mod store;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use delibera_agent::Agent;
use delibera_deploy::{AgentEnv, EnvVar};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use self::store::{App, Cvm, Store};
use crate::image::{AgentImage, Confinement, pinned_digest};
use crate::{Error, Result};

/// The image that boots a CVM whose agent never becomes healthy (pinned by
/// digest, as production accepts no other image).
pub const NEVER_HEALTHY_IMAGE: &str = "delibera-devnet/never-healthy@sha256:0000000000000000000000000000000000000000000000000000000000000001";

/// The API version whose shapes are served when a request names none.
const DEFAULT_VERSION: &str = "2025-10-28";

/// Settings of the Phala stand-in.
#[derive(Clone)]
pub struct PhalaDevnetConfig {
    /// Where its state lives (`phala.sqlite`).
    pub data_dir: PathBuf,
    /// The `X-API-Key` every API call must carry.
    pub api_key: Zeroizing<String>,
    /// How long a committed CVM takes to boot.
    pub boot_delay: Duration,
    /// An OCI archive of the agent image (`scripts/build-image.sh`), unpacked
    /// into `data_dir/images` at start; CVMs naming its digest run it.
    pub image_archive: Option<PathBuf>,
}

/// How long a child agent has to print the line that says where it listens.
const CHILD_START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Phala stand-in.
pub struct PhalaDevnet {
    inner: Arc<Inner>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

struct Inner {
    store: Store,
    api_key: Zeroizing<String>,
    boot_delay: Duration,
    origin: String,
    running: Mutex<HashMap<i64, Running>>,
    http: reqwest::Client,
    /// Where unpacked images live.
    images: PathBuf,
    /// The image loaded from the archive, if one was given.
    loaded: Option<AgentImage>,
}

/// What a CVM's image boots.
enum Boot {
    NeverHealthy,
    InProcess,
    Child(AgentImage),
}

/// A booted CVM: its agent (in process or a child process), or the
/// never-healthy server, on a loopback port.
struct Running {
    port: u16,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl PhalaDevnet {
    /// Serves on `listener` and boots again every CVM that was running
    /// before (its env is still sealed in the store, as a real CVM's would be).
    pub async fn start(listener: TcpListener, config: PhalaDevnetConfig) -> Result<Self> {
        delibera_data_dir::private_dir(&config.data_dir)?;
        let store = Store::open(&config.data_dir.join("phala.sqlite"))?;
        let images = config.data_dir.join("images");
        let loaded = match config.image_archive.clone() {
            // Hashing and unpacking megabytes: off the async threads.
            Some(archive) => {
                let store = images.clone();
                let unpacked =
                    tokio::task::spawn_blocking(move || AgentImage::unpack(&archive, &store))
                        .await
                        .map_err(|error| Error::Task {
                            reason: error.to_string(),
                        })??;
                Some(unpacked)
            }
            None => None,
        };
        let address = listener.local_addr()?;
        let inner = Arc::new(Inner {
            store,
            api_key: config.api_key,
            boot_delay: config.boot_delay,
            origin: format!("http://{address}"),
            running: Mutex::new(HashMap::new()),
            http: reqwest::Client::new(),
            images,
            loaded,
        });
        for cvm in inner.store.cvms()? {
            if matches!(cvm.status.as_str(), "running" | "starting") {
                inner.set_status(cvm.id, "starting", None)?;
                Inner::schedule_boot(&inner, cvm.id);
            }
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(inner.clone());
        let server = tokio::spawn(async move {
            delibera_serve::Server::new(app)
                .run(listener, async {
                    let _ = stopped.await;
                })
                .await
                .map_err(std::io::Error::from)
        });
        Ok(Self {
            inner,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// The origin, e.g. `http://127.0.0.1:8100`.
    pub fn url(&self) -> &str {
        &self.inner.origin
    }

    /// The API base (`PHALA_CLOUD_API_PREFIX`).
    pub fn api_url(&self) -> String {
        format!("{}/api/v1", self.inner.origin)
    }

    /// How this stand-in's gateway names a CVM's public URL
    /// (`PHALA_PUBLIC_URL_TEMPLATE`).
    pub fn public_url_template(&self) -> String {
        format!("{}/gateway/{{app_id}}-{{port}}", self.inner.origin)
    }

    /// The image loaded from `image_archive`, if one was given.
    pub fn loaded_image(&self) -> Option<&AgentImage> {
        self.inner.loaded.as_ref()
    }

    /// How many CVMs exist, with their names (for tests and the CLI).
    pub fn cvm_names(&self) -> Result<Vec<String>> {
        Ok(self
            .inner
            .store
            .cvms()?
            .into_iter()
            .map(|cvm| cvm.name)
            .collect())
    }

    /// Stops serving and stops every booted CVM.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown().await
    }

    async fn shutdown(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .map_err(|error| Error::Io(std::io::Error::other(error)))??;
        }
        let running: Vec<Running> = self.inner.running().drain().map(|(_, run)| run).collect();
        for run in running {
            let _ = run.stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(15), run.task).await;
        }
        Ok(())
    }
}

impl Drop for PhalaDevnet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for (_, run) in self.inner.running().drain() {
            let _ = run.stop.send(());
        }
    }
}

impl Inner {
    fn running(&self) -> MutexGuard<'_, HashMap<i64, Running>> {
        // One map operation per critical section: a poisoned map is whole.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_status(&self, id: i64, status: &str, error: Option<&str>) -> Result<()> {
        self.store.set_status(id, status, error)
    }

    /// Boots CVM `id` after the boot delay, unless it was deleted or stopped meanwhile.
    fn schedule_boot(inner: &Arc<Inner>, id: i64) {
        let inner = inner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(inner.boot_delay).await;
            let outcome = match inner.store.find_cvm(&id.to_string()) {
                Ok(Some(cvm)) if cvm.status == "starting" => inner.boot(&cvm).await,
                Ok(_) => return,
                Err(error) => Err(error.to_string()),
            };
            let (status, error) = match &outcome {
                Ok(()) => ("running", None),
                Err(reason) => ("error", Some(reason.as_str())),
            };
            if let Err(store_error) = inner.set_status(id, status, error) {
                tracing::warn!(%store_error, cvm = id, "could not record a CVM's boot");
            }
        });
    }

    /// What `image` boots, or why it cannot boot.
    fn boot_kind(&self, image: &str) -> std::result::Result<Boot, String> {
        if image.starts_with(NEVER_HEALTHY_IMAGE) {
            return Ok(Boot::NeverHealthy);
        }
        if let Some(digest) = pinned_digest(image)
            && let Some(stored) =
                AgentImage::open(&self.images, digest).map_err(|error| error.to_string())?
        {
            return Ok(Boot::Child(stored));
        }
        match &self.loaded {
            Some(loaded) if pinned_digest(image) != pinned_digest(crate::AGENT_IMAGE) => {
                Err(format!(
                    "cannot pull {image}: the devnet holds {} (and its in-process runtime)",
                    loaded.reference()
                ))
            }
            _ => Ok(Boot::InProcess),
        }
    }

    /// Opens the sealed env with the app's key and starts its agent.
    async fn boot(&self, cvm: &Cvm) -> std::result::Result<(), String> {
        let kind = self.boot_kind(&cvm.image)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (port, task) = match kind {
            Boot::NeverHealthy => {
                let (listener, port) = loopback_listener().await?;
                (port, tokio::spawn(serve_never_healthy(listener, stopped)))
            }
            Boot::InProcess => {
                let env = AgentEnv::try_from(self.open_env(cvm)?.as_slice())
                    .map_err(|error| format!("the agent refused its env: {error}"))?;
                let agent =
                    Agent::new(env).map_err(|error| format!("the agent cannot start: {error}"))?;
                let (listener, port) = loopback_listener().await?;
                let name = cvm.name.clone();
                let task = tokio::spawn(async move {
                    if let Err(error) = agent
                        .serve(listener, async {
                            let _ = stopped.await;
                        })
                        .await
                    {
                        tracing::warn!(cvm = %name, %error, "a devnet CVM's agent stopped");
                    }
                });
                (port, task)
            }
            Boot::Child(image) => {
                let vars = self.open_env(cvm)?;
                start_child(&image, &vars, &cvm.name, stopped).await?
            }
        };
        tracing::info!(cvm = %cvm.name, port, image = %cvm.image, "devnet CVM booted");
        if let Some(old) = self.running().insert(cvm.id, Running { port, stop, task }) {
            let _ = old.stop.send(());
        }
        Ok(())
    }

    /// The CVM's env, opened with its app's key as the KMS would.
    fn open_env(&self, cvm: &Cvm) -> std::result::Result<Vec<EnvVar>, String> {
        let app = self
            .store
            .app(&cvm.app_id)
            .map_err(|error| error.to_string())?
            .ok_or("the CVM's app is gone")?;
        let sealed = cvm.encrypted_env.as_deref().unwrap_or_default();
        delibera_phala::decrypt_env(&app.kms_secret, sealed)
            .map_err(|error| format!("the KMS cannot open the env: {error}"))
    }

    fn halt(&self, id: i64) {
        if let Some(run) = self.running().remove(&id) {
            let _ = run.stop.send(());
            run.task.abort();
        }
    }

    fn port_of(&self, id: i64) -> Option<u16> {
        self.running().get(&id).map(|run| run.port)
    }

    fn public_url(&self, cvm: &Cvm) -> String {
        format!("{}/gateway/{}-{}", self.origin, cvm.app_id, cvm.port)
    }
}

async fn loopback_listener() -> std::result::Result<(TcpListener, u16), String> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .map_err(|error| format!("cannot bind the CVM's port: {error}"))?;
    let port = listener
        .local_addr()
        .map_err(|error| error.to_string())?
        .port();
    Ok((listener, port))
}

/// Starts `image`'s entry point with the CVM's env on a port of its choosing
/// (`PORT=0`: many CVMs share this host, where each real CVM has its own),
/// learnt from the line the agent prints once listening; the task stops it
/// (SIGKILL, as a halted VM) when `stopped` fires or the task is dropped.
async fn start_child(
    image: &AgentImage,
    vars: &[EnvVar],
    name: &str,
    stopped: oneshot::Receiver<()>,
) -> std::result::Result<(u16, JoinHandle<()>), String> {
    let env = vars
        .iter()
        .filter(|var| var.key != "PORT")
        .map(|var| (var.key.as_str(), var.value.as_str()))
        .chain([("PORT", "0")]);
    let mut command = image
        .command(Confinement::for_this_process(), env)
        .map_err(|error| error.to_string())?;
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = command
        .spawn()
        .map_err(|error| format!("cannot start {}: {error}", image.reference()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or("the agent's stdout is not piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = match tokio::time::timeout(CHILD_START_TIMEOUT, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) | Ok(Err(_)) => {
            let status = child.wait().await.map_err(|error| error.to_string())?;
            return Err(format!("the image's agent exited at start ({status})"));
        }
        Err(_) => {
            return Err(format!(
                "the image's agent did not listen within {} s",
                CHILD_START_TIMEOUT.as_secs()
            ));
        }
    };
    let port = serde_json::from_str::<Value>(&first)
        .ok()
        .and_then(|line| line["port"].as_u64())
        .and_then(|port| u16::try_from(port).ok())
        .ok_or_else(|| format!("the image's agent printed {first:?}, not where it listens"))?;
    let name = name.to_owned();
    let task = tokio::spawn(async move {
        // Read on, whatever it prints, so the agent never blocks on a full pipe.
        let mut rest = lines.into_inner();
        let drain = async {
            let _ = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
        };
        tokio::select! {
            _ = stopped => {}
            status = async { drain.await; child.wait().await } => {
                tracing::warn!(cvm = %name, ?status, "a devnet CVM's agent process exited");
                return;
            }
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
    });
    Ok((port, task))
}

/// Answers 503 on every request, forever.
async fn serve_never_healthy(listener: TcpListener, stopped: oneshot::Receiver<()>) {
    let app = Router::new().fallback(|| async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"message": "starting"})),
        )
    });
    let _ = delibera_serve::Server::new(app)
        .run(listener, async {
            let _ = stopped.await;
        })
        .await;
}

fn router(inner: Arc<Inner>) -> Router {
    let api = Router::new()
        .route("/cvms/provision", post(provision))
        .route("/cvms", post(commit).get(list_all))
        .route("/cvms/paginated", get(list))
        .route("/cvms/{id}", get(read).delete(delete))
        .route("/cvms/{id}/start", post(start))
        .route("/cvms/{id}/stop", post(stop))
        .route_layer(middleware::from_fn_with_state(inner.clone(), authenticate));
    Router::new()
        .nest("/api/v1", api)
        .route("/gateway/{target}", any(gateway_root))
        .route("/gateway/{target}/{*rest}", any(gateway))
        .with_state(inner)
}

/// An API error in FastAPI's shape.
struct ApiError(StatusCode, Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "detail": self.1 }))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        tracing::warn!(%error, "devnet Phala failed");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, json!("internal error"))
    }
}

fn structured(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
    ApiError(
        status,
        json!({"error_code": code, "message": message.into(), "details": [], "suggestions": [], "links": []}),
    )
}

fn validation(field: &str, message: impl Into<String>) -> ApiError {
    ApiError(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!([{"loc": ["body", field], "msg": message.into(), "type": "value_error"}]),
    )
}

/// A query string that does not parse at all, in FastAPI's 422 shape.
fn query_validation(message: impl Into<String>) -> ApiError {
    ApiError(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!([{"loc": ["query"], "msg": message.into(), "type": "value_error"}]),
    )
}

fn cvm_not_found(id: &str) -> ApiError {
    structured(
        StatusCode::NOT_FOUND,
        "ERR-03-001",
        format!("CVM {id} not found"),
    )
}

async fn authenticate(
    State(inner): State<Arc<Inner>>,
    request: Request,
    next: Next,
) -> std::result::Result<Response, ApiError> {
    let presented = request
        .headers()
        .get("x-api-key")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !constant_time_eq(presented.as_bytes(), inner.api_key.as_bytes()) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            json!("Invalid or missing API key"),
        ));
    }
    Ok(next.run(request).await)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn version(headers: &HeaderMap) -> &str {
    headers
        .get("x-phala-version")
        .and_then(|value| value.to_str().ok())
        .unwrap_or(DEFAULT_VERSION)
}

/// Phala's CVM name rules: 5–63 characters, a letter first, letters, digits
/// and hyphens only, never `--`.
fn check_name(name: &str) -> std::result::Result<(), ApiError> {
    let valid = (5..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(validation(
            "name",
            "must be 5-63 characters: a letter first, then letters, digits or single hyphens",
        ))
    }
}

#[derive(Deserialize)]
struct ProvisionBody {
    name: String,
    #[serde(default)]
    instance_type: Option<String>,
    compose_file: ComposeFileBody,
}

#[derive(Deserialize, serde::Serialize)]
struct ComposeFileBody {
    docker_compose_file: String,
    #[serde(default)]
    allowed_envs: Vec<String>,
    #[serde(default)]
    name: String,
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buffer);
    hex::encode(buffer)
}

async fn provision(
    State(inner): State<Arc<Inner>>,
    body: std::result::Result<Json<ProvisionBody>, axum::extract::rejection::JsonRejection>,
) -> std::result::Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(|rejection| validation("body", rejection.body_text()))?;
    check_name(&body.name)?;
    if body.compose_file.docker_compose_file.trim().is_empty() {
        return Err(structured(
            StatusCode::BAD_REQUEST,
            "ERR-01-002",
            "compose file required",
        ));
    }
    if inner.store.name_taken(&body.name)? {
        return Err(structured(
            StatusCode::CONFLICT,
            "ERR-01-004",
            format!("a CVM named {} already exists", body.name),
        ));
    }
    // A stable hash of the compose as provisioned: sorted keys, compact JSON.
    let canonical = serde_json::to_value(&body.compose_file)
        .map(|value| value.to_string())
        .unwrap_or_default();
    let compose_hash = hex::encode(Sha256::digest(canonical.as_bytes()));
    let mut kms_secret = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(kms_secret.as_mut());
    let app = App {
        app_id: random_hex(20),
        name: body.name,
        compose_file: body.compose_file.docker_compose_file,
        compose_hash: compose_hash.clone(),
        allowed_envs: body.compose_file.allowed_envs,
        kms_secret,
    };
    inner.store.insert_app(&app)?;
    Ok(Json(json!({
        "compose_hash": compose_hash,
        "app_id": app.app_id,
        "app_env_encrypt_pubkey": delibera_phala::encryption_pubkey_hex(&app.kms_secret),
        "kms_id": "devnet-kms",
        "instance_type": body.instance_type.unwrap_or_else(|| "tdx.small".to_owned()),
        "teepod_id": 1,
        "node_id": 1,
        "fmspc": null,
        "device_id": null,
        "os_image_hash": null,
    })))
}

#[derive(Deserialize)]
struct CommitBody {
    app_id: String,
    compose_hash: String,
    #[serde(default)]
    encrypted_env: Option<String>,
    #[serde(default)]
    env_keys: Vec<String>,
}

/// The image and port a compose file runs (`image: "…"`, `- "port:port"`).
fn image_and_port(compose: &str) -> (String, u16) {
    let mut image = String::new();
    let mut port = 0;
    for line in compose.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("image:") {
            image = value.trim().trim_matches('"').to_owned();
        } else if let Some(mapping) = line.strip_prefix("- \"")
            && let Some((_, inner_port)) = mapping.trim_end_matches('"').split_once(':')
            && let Ok(parsed) = inner_port.parse()
        {
            port = parsed;
        }
    }
    (image, port)
}

async fn commit(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: std::result::Result<Json<CommitBody>, axum::extract::rejection::JsonRejection>,
) -> std::result::Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(|rejection| validation("body", rejection.body_text()))?;
    let app = inner.store.app(&body.app_id)?.ok_or_else(|| {
        structured(
            StatusCode::NOT_FOUND,
            "ERR-03-001",
            format!("app {} was never provisioned", body.app_id),
        )
    })?;
    if let Some(existing) = inner.store.cvm_by_app(&app.app_id)? {
        // The same app and compose again returns the CVM that exists.
        if existing.compose_hash == body.compose_hash {
            return Ok(Json(vm_object(&inner, &existing, version(&headers))));
        }
        return Err(structured(
            StatusCode::CONFLICT,
            "ERR-03-007",
            "this app id already runs another compose",
        ));
    }
    if body.compose_hash != app.compose_hash {
        return Err(structured(
            StatusCode::BAD_REQUEST,
            "ERR-01-003",
            "the compose hash is not the one provisioned",
        ));
    }
    // Only what the provisioned compose allows may be sealed, and the KMS must open it.
    if let Some(key) = body
        .env_keys
        .iter()
        .find(|key| !app.allowed_envs.contains(key))
    {
        return Err(validation(
            "env_keys",
            format!("{key} is not among the compose's allowed envs"),
        ));
    }
    if let Some(sealed) = &body.encrypted_env {
        let vars = delibera_phala::decrypt_env(&app.kms_secret, sealed).map_err(|error| {
            validation("encrypted_env", format!("the KMS cannot open it: {error}"))
        })?;
        let opened: Vec<&str> = vars.iter().map(|var| var.key.as_str()).collect();
        if opened != body.env_keys.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(validation(
                "env_keys",
                "the keys do not match the encrypted env",
            ));
        }
    }
    if inner.store.name_taken(&app.name)? {
        return Err(structured(
            StatusCode::CONFLICT,
            "ERR-01-004",
            format!("a CVM named {} already exists", app.name),
        ));
    }
    let (image, port) = image_and_port(&app.compose_file);
    let mut cvm = Cvm {
        id: 0,
        vm_uuid: uuid::Uuid::new_v4().to_string(),
        name: app.name.clone(),
        app_id: app.app_id.clone(),
        compose_hash: app.compose_hash.clone(),
        image,
        port,
        encrypted_env: body.encrypted_env,
        status: "starting".to_owned(),
        error: None,
        created_at: chrono_now(),
    };
    cvm.id = inner.store.insert_cvm(&cvm)?;
    Inner::schedule_boot(&inner, cvm.id);
    Ok(Json(vm_object(&inner, &cvm, version(&headers))))
}

/// The paging parameters as sent: parsed by [`query_integer`], so a bad one
/// is answered in FastAPI's shape rather than axum's.
#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    page: Option<String>,
    #[serde(default)]
    page_size: Option<String>,
}

/// Query parameter `field` as an integer, or FastAPI's 422 for it.
fn query_integer(field: &str, input: Option<&str>) -> std::result::Result<Option<usize>, ApiError> {
    input
        .map(|text| {
            text.parse().map_err(|_| {
                ApiError(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!([{
                        "type": "int_parsing",
                        "loc": ["query", field],
                        "msg": "Input should be a valid integer, unable to parse string as an integer",
                        "input": text,
                    }]),
                )
            })
        })
        .transpose()
}

async fn list(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    page: std::result::Result<Query<Page>, QueryRejection>,
) -> std::result::Result<Json<Value>, ApiError> {
    let Query(page) = page.map_err(|rejection| query_validation(rejection.body_text()))?;
    let page_size = query_integer("page_size", page.page_size.as_deref())?
        .unwrap_or(100)
        .clamp(1, 1000);
    let number = query_integer("page", page.page.as_deref())?
        .unwrap_or(1)
        .max(1);
    let cvms = inner.store.cvms()?;
    let pages = cvms.len().div_ceil(page_size);
    let items: Vec<Value> = cvms
        .iter()
        // Saturating: a page number past the last (up to the largest) is empty.
        .skip((number - 1).saturating_mul(page_size))
        .take(page_size)
        .map(|cvm| list_item(&inner, cvm, version(&headers)))
        .collect();
    Ok(Json(json!({
        "items": items,
        "total": cvms.len(),
        "page": number,
        "page_size": page_size,
        "pages": pages,
    })))
}

/// `GET /cvms`: the list before pagination existed, still answered by the
/// service and read by older clients: every item, as a bare array.
async fn list_all(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
) -> std::result::Result<Json<Value>, ApiError> {
    let cvms = inner.store.cvms()?;
    Ok(Json(Value::Array(
        cvms.iter()
            .map(|cvm| list_item(&inner, cvm, version(&headers)))
            .collect(),
    )))
}

async fn read(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> std::result::Result<Json<Value>, ApiError> {
    let cvm = inner
        .store
        .find_cvm(&id)?
        .ok_or_else(|| cvm_not_found(&id))?;
    Ok(Json(detail(&inner, &cvm, version(&headers))))
}

async fn start(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> std::result::Result<Json<Value>, ApiError> {
    let cvm = inner
        .store
        .find_cvm(&id)?
        .ok_or_else(|| cvm_not_found(&id))?;
    if cvm.status != "running" {
        inner.set_status(cvm.id, "starting", None)?;
        Inner::schedule_boot(&inner, cvm.id);
    }
    let cvm = inner
        .store
        .find_cvm(&id)?
        .ok_or_else(|| cvm_not_found(&id))?;
    Ok(Json(vm_object(&inner, &cvm, version(&headers))))
}

async fn stop(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> std::result::Result<Json<Value>, ApiError> {
    let cvm = inner
        .store
        .find_cvm(&id)?
        .ok_or_else(|| cvm_not_found(&id))?;
    inner.halt(cvm.id);
    inner.set_status(cvm.id, "stopped", None)?;
    let cvm = inner
        .store
        .find_cvm(&id)?
        .ok_or_else(|| cvm_not_found(&id))?;
    Ok(Json(vm_object(&inner, &cvm, version(&headers))))
}

async fn delete(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
) -> std::result::Result<StatusCode, ApiError> {
    let cvm = inner
        .store
        .find_cvm(&id)?
        .ok_or_else(|| cvm_not_found(&id))?;
    inner.halt(cvm.id);
    inner.store.delete_cvm(cvm.id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The listed public URLs: the gateway's, once the CVM runs.
fn urls(inner: &Inner, cvm: &Cvm) -> Value {
    if cvm.status == "running" {
        json!([{"app": inner.public_url(cvm), "instance": ""}])
    } else {
        json!([])
    }
}

/// The gateway here routes by path, not by a domain per app, so no gateway
/// domain is reported: clients read the listed URLs instead.
fn gateway_domain(_inner: &Inner) -> Option<String> {
    None
}

/// The object `POST /cvms`, start and stop answer.
fn vm_object(inner: &Inner, cvm: &Cvm, _version: &str) -> Value {
    json!({
        "id": cvm.id,
        "name": cvm.name,
        "status": cvm.status,
        "teepod_id": 1,
        "teepod": {"id": 1, "name": "devnet-node"},
        "user_id": 1,
        "app_id": cvm.app_id,
        "vm_uuid": cvm.vm_uuid,
        "instance_id": null,
        "app_url": null,
        "base_image": "dstack-devnet",
        "vcpu": 1,
        "memory": 2048,
        "disk_size": 20,
        "manifest_version": 2,
        "version": "1.0.0",
        "runner": "docker-compose",
        "docker_compose_file": null,
        "features": ["kms", "tproxy-net"],
        "created_at": cvm.created_at,
        "encrypted_env_pubkey": null,
        "public_urls": urls(inner, cvm),
        "error": cvm.error,
    })
}

/// `GET /cvms/{id}` in the requested version's shape.
fn detail(inner: &Inner, cvm: &Cvm, version: &str) -> Value {
    let in_progress = cvm.status == "starting";
    if version == "2025-10-28" {
        json!({
            "id": cvm.id,
            "name": cvm.name,
            "status": cvm.status,
            "in_progress": in_progress,
            "teepod_id": 1,
            "teepod": {"id": 1, "name": "devnet-node", "region_identifier": "local"},
            "app_id": cvm.app_id,
            "vm_uuid": cvm.vm_uuid,
            "instance_id": null,
            "vcpu": 1,
            "memory": 2048,
            "disk_size": 20,
            "base_image": "dstack-devnet",
            "encrypted_env_pubkey": null,
            "listed": false,
            "instance_type": "tdx.small",
            "public_urls": urls(inner, cvm),
            "gateway_domain": gateway_domain(inner),
            "error": cvm.error,
        })
    } else {
        let mut value = list_item(inner, cvm, version);
        if let Some(object) = value.as_object_mut() {
            object.insert("compose_file".into(), Value::Null);
        }
        value
    }
}

/// One `GET /cvms/paginated` item in the requested version's shape.
fn list_item(inner: &Inner, cvm: &Cvm, version: &str) -> Value {
    let in_progress = cvm.status == "starting";
    if version == "2025-10-28" {
        json!({
            "hosted": {
                "id": cvm.vm_uuid,
                "name": cvm.name,
                "status": cvm.status,
                "uptime": "",
                "app_url": null,
                "app_id": cvm.app_id,
                "instance_id": null,
                "exited_at": null,
                "boot_progress": null,
                "boot_error": cvm.error,
                "shutdown_progress": null,
                "image_version": null,
            },
            "name": cvm.name,
            "managed_user": null,
            "node": {"id": 1, "name": "devnet-node", "region_identifier": "local"},
            "listed": false,
            "status": cvm.status,
            "in_progress": in_progress,
            "dapp_dashboard_url": null,
            "syslog_endpoint": null,
            "allow_upgrade": false,
            "project_id": null,
            "project_type": null,
            "billing_period": null,
            "kms_info": null,
            "vcpu": 1,
            "memory": 2048,
            "disk_size": 20,
            "gateway_domain": gateway_domain(inner),
            "public_urls": urls(inner, cvm),
        })
    } else {
        json!({
            "id": format!("cvm_{}", cvm.vm_uuid.replace('-', "")),
            "name": cvm.name,
            "app_id": cvm.app_id,
            "vm_uuid": cvm.vm_uuid,
            "instance_id": null,
            "resource": {"instance_type": "tdx.small", "vcpu": 1, "memory_in_gb": 2.0, "disk_in_gb": 20},
            "node_info": {"object_type": "node", "id": 1, "name": "devnet-node", "region": "local"},
            "status": cvm.status,
            "progress": {"target": if in_progress { Some("running") } else { None }},
            "compose_hash": cvm.compose_hash,
            "gateway": {"base_domain": gateway_domain(inner), "cname": null},
            "services": [],
            "endpoints": urls(inner, cvm),
            "listed": false,
            "error": cvm.error,
        })
    }
}

async fn gateway_root(
    state: State<Arc<Inner>>,
    Path(target): Path<String>,
    request: Request,
) -> Response {
    forward(state, target, String::new(), request).await
}

async fn gateway(
    state: State<Arc<Inner>>,
    Path((target, rest)): Path<(String, String)>,
    request: Request,
) -> Response {
    forward(state, target, rest, request).await
}

/// Proxies a request to the agent of the CVM `{app_id}-{port}` names.
async fn forward(
    State(inner): State<Arc<Inner>>,
    target: String,
    rest: String,
    request: Request,
) -> Response {
    let unavailable =
        |message: &str| (StatusCode::BAD_GATEWAY, Json(json!({"error": message}))).into_response();
    let Some((app_id, _port)) = target.rsplit_once('-') else {
        return unavailable("no such CVM");
    };
    let Ok(Some(cvm)) = inner.store.cvm_by_app(app_id) else {
        return unavailable("no such CVM");
    };
    let Some(port) = inner.port_of(cvm.id) else {
        return unavailable("the CVM is not running");
    };
    let query = request
        .uri()
        .query()
        .map(|query| format!("?{query}"))
        .unwrap_or_default();
    let url = format!("http://127.0.0.1:{port}/{rest}{query}");
    let method = request.method().clone();
    let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
    let Ok(body) = axum::body::to_bytes(request.into_body(), 1024 * 1024).await else {
        return unavailable("the request body is too large");
    };
    let mut outgoing = inner
        .http
        .request(reqwest_method(&method), url)
        .body(body.to_vec());
    if let Some(content_type) =
        content_type.and_then(|value| value.to_str().ok().map(str::to_owned))
    {
        outgoing = outgoing.header(reqwest::header::CONTENT_TYPE, content_type);
    }
    match outgoing.send().await {
        Ok(answer) => {
            let status =
                StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let content_type = answer
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let bytes: Bytes = answer.bytes().await.unwrap_or_default();
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            if let Some(content_type) = content_type
                && let Ok(value) = content_type.parse()
            {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
        Err(_) => unavailable("the CVM's agent did not answer"),
    }
}

fn reqwest_method(method: &Method) -> reqwest::Method {
    reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET)
}

/// An ISO-8601 UTC time, as the API writes `created_at`.
fn chrono_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
