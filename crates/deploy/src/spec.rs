//! What to deploy ([`AgentSpec`]), under which name ([`DeploymentName`]) and
//! image ([`ImageRef`]), and what a deployer hands back ([`Deployment`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{AgentEnv, AgentRole, Error, Result};

/// The worker image used when none is configured.
pub const DEFAULT_WORKER_IMAGE: &str = "ghcr.io/delibera/delibera-worker:latest";
/// The coordinator image used when none is configured.
pub const DEFAULT_COORDINATOR_IMAGE: &str = "ghcr.io/delibera/delibera-coordinator:latest";

/// A validated container image reference such as `ghcr.io/org/app:1.2` or
/// `ghcr.io/org/app@sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef(String);

impl ImageRef {
    /// Checks `reference`: registry/path/tag characters only, and a well-formed
    /// `sha256` digest after `@` if there is one.
    pub fn new(reference: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidImage {
            reference: reference.to_owned(),
            reason,
        };
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (reference, None),
        };
        if name.is_empty() || name.len() > 255 {
            return Err(invalid("the name must be 1–255 characters"));
        }
        if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(invalid("the name must start with a letter or digit"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':'))
        {
            return Err(invalid(
                "only letters, digits and . _ - / : are allowed in the name",
            ));
        }
        if let Some(digest) = digest {
            check_digest(digest).map_err(invalid)?;
        }
        Ok(ImageRef(reference.to_owned()))
    }

    /// The image a role runs when none is configured.
    pub fn default_for(role: AgentRole) -> Self {
        ImageRef(
            match role {
                AgentRole::Worker => DEFAULT_WORKER_IMAGE,
                AgentRole::Coordinator => DEFAULT_COORDINATOR_IMAGE,
            }
            .to_owned(),
        )
    }

    /// This image pinned to `digest` (`sha256:<64 hex>`), replacing any digest it had.
    /// The tag, if any, is kept for readability; the digest is what is pulled.
    pub fn pinned(&self, digest: &str) -> Result<Self> {
        check_digest(digest).map_err(|reason| Error::InvalidImage {
            reference: digest.to_owned(),
            reason,
        })?;
        let name = self
            .0
            .split_once('@')
            .map_or(self.0.as_str(), |(name, _)| name);
        Ok(ImageRef(format!("{name}@{digest}")))
    }

    /// Whether the image reference names a digest, so a compose hash pins the exact image.
    pub fn is_pinned(&self) -> bool {
        self.0.contains('@')
    }

    /// The reference as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_digest(digest: &str) -> std::result::Result<(), &'static str> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or("the digest must start with `sha256:`")?;
    if hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        Ok(())
    } else {
        Err("the digest must be `sha256:` and 64 lowercase hex characters")
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ImageRef {
    type Err = Error;

    fn from_str(reference: &str) -> Result<Self> {
        ImageRef::new(reference)
    }
}

impl TryFrom<String> for ImageRef {
    type Error = Error;

    fn try_from(reference: String) -> Result<Self> {
        ImageRef::new(&reference)
    }
}

impl From<ImageRef> for String {
    fn from(image: ImageRef) -> Self {
        image.0
    }
}

/// A deployment's name, derived from what it is for so that it is the
/// idempotency key of a deploy: a deployer asked again for the same name finds
/// the deployment it already made instead of paying for a second one.
///
/// The rules are the strictest of the backends (Phala Cloud's CVM names):
/// 5–63 characters, starting with a letter, only ASCII letters, digits and
/// hyphens, never `--`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeploymentName(String);

const NAME_MIN: usize = 5;
const NAME_MAX: usize = 63;
/// How many characters of the unique key a derived name keeps: 16 hex
/// characters are 64 bits, so two jobs never share a name in practice.
const KEY_CHARS: usize = 16;

impl DeploymentName {
    /// Checks `name` against the rules.
    pub fn new(name: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidName {
            name: name.to_owned(),
            reason,
        };
        if name.len() < NAME_MIN || name.len() > NAME_MAX {
            return Err(invalid("it must be 5 to 63 characters long"));
        }
        if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(invalid("it must start with a letter"));
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(invalid("only letters, digits and hyphens are allowed"));
        }
        if name.contains("--") {
            return Err(invalid("it must not contain `--`"));
        }
        Ok(DeploymentName(name.to_owned()))
    }

    /// `delibera-<role>-<slug of display name>-<key>`: the same inputs always
    /// give the same name. `key` should be unique per deployment (a job id);
    /// its lowercase letters and digits are kept, at most 16 of them.
    ///
    /// ```
    /// use delibera_deploy::{AgentRole, DeploymentName};
    ///
    /// let name = DeploymentName::derive(AgentRole::Worker, "Worker Alpha!", "5f0c29e1d2b34a7f9e8d7c6b5a4f3e2d");
    /// assert_eq!(name.as_str(), "delibera-worker-worker-alpha-5f0c29e1d2b34a7f");
    /// assert_eq!(DeploymentName::new(name.as_str()).ok(), Some(name));
    /// ```
    pub fn derive(role: AgentRole, display_name: &str, key: &str) -> Self {
        let mut key: String = key
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            .take(KEY_CHARS)
            .collect();
        if key.is_empty() {
            key.push('x');
        }
        let prefix = format!("delibera-{role}");
        // Room for `prefix-slug-key` within the limit.
        let room = NAME_MAX - prefix.len() - key.len() - 2;
        let slug = slugify(display_name, room);
        DeploymentName(if slug.is_empty() {
            format!("{prefix}-{key}")
        } else {
            format!("{prefix}-{slug}-{key}")
        })
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lowercase ASCII letters and digits, runs of anything else as one hyphen, no
/// hyphen at either end, at most `max` characters.
fn slugify(text: &str, max: usize) -> String {
    let mut slug = String::new();
    for c in text.chars() {
        if slug.len() >= max {
            break;
        }
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    while slug.ends_with('-') {
        slug.pop();
    }
    slug
}

impl fmt::Display for DeploymentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DeploymentName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        DeploymentName::new(name)
    }
}

impl TryFrom<String> for DeploymentName {
    type Error = Error;

    fn try_from(name: String) -> Result<Self> {
        DeploymentName::new(&name)
    }
}

impl From<DeploymentName> for String {
    fn from(name: DeploymentName) -> Self {
        name.0
    }
}

/// Everything needed to deploy one agent. `Debug` never shows env values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// The deployment's name, and its idempotency key.
    pub name: DeploymentName,
    /// The container image (pin it by digest for reproducible compose hashes).
    pub image: ImageRef,
    /// What the agent reads from its environment; the role and port come from here.
    pub env: AgentEnv,
}

impl AgentSpec {
    /// A spec of `env` under `name`, with the role's default image.
    pub fn new(name: DeploymentName, env: AgentEnv) -> Self {
        AgentSpec {
            name,
            image: ImageRef::default_for(env.role),
            env,
        }
    }

    /// The same spec with this image.
    pub fn with_image(mut self, image: ImageRef) -> Self {
        self.image = image;
        self
    }

    /// The agent's role.
    pub fn role(&self) -> AgentRole {
        self.env.role
    }
}

/// A deployed agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The backend's id, for [`Deployer::status`](crate::Deployer::status) and
    /// [`Deployer::teardown`](crate::Deployer::teardown) (a Phala CVM id).
    pub id: String,
    /// The name it was deployed under.
    pub name: DeploymentName,
    /// Where the agent answers (not yet known to be healthy: see [`HealthGate`](crate::HealthGate)).
    pub endpoint_url: String,
    /// Where a human can watch it.
    pub dashboard_url: String,
}

/// What [`Deployer::status`](crate::Deployer::status) reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentStatus {
    /// The deployment.
    pub id: String,
    /// The backend's status text, e.g. `running`, `stopped`, `starting`.
    pub status: String,
    /// Whether the status is `running`.
    pub running: bool,
    /// A listed public URL, when the backend lists one.
    pub endpoint_url: Option<String>,
}
