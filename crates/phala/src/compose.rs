//! Docker compose files for the two agent roles, image references and CVM names.

use std::fmt;

use rand::Rng;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

use crate::env::validate_env_key;
use crate::error::{Error, Result};

/// Which agent a CVM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentRole {
    /// A worker: deliberates and votes (port 3001 by default).
    Worker,
    /// A coordinator: runs the proposal rounds (port 3000 by default).
    Coordinator,
}

impl AgentRole {
    /// `worker` or `coordinator`: the compose service name and part of the CVM name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentRole::Worker => "worker",
            AgentRole::Coordinator => "coordinator",
        }
    }

    /// The port the agent listens on unless told otherwise (the reference's choice).
    pub fn default_port(self) -> u16 {
        match self {
            AgentRole::Worker => 3001,
            AgentRole::Coordinator => 3000,
        }
    }

    /// The image used when none is configured.
    pub fn default_image(self) -> ImageRef {
        let reference = match self {
            AgentRole::Worker => DEFAULT_WORKER_IMAGE,
            AgentRole::Coordinator => DEFAULT_COORDINATOR_IMAGE,
        };
        ImageRef(reference.to_owned())
    }
}

impl fmt::Display for AgentRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The worker image used when none is configured.
pub const DEFAULT_WORKER_IMAGE: &str = "ghcr.io/delibera/delibera-worker:latest";
/// The coordinator image used when none is configured.
pub const DEFAULT_COORDINATOR_IMAGE: &str = "ghcr.io/delibera/delibera-coordinator:latest";

/// A validated container image reference such as `ghcr.io/org/app:1.2` or
/// `ghcr.io/org/app@sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

    /// This image pinned to `digest` (`sha256:<64 hex>`), replacing any digest it had.
    /// The tag, if any, is kept for readability; the digest is what Docker pulls.
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

    /// Whether the reference names a digest, so the CVM's compose hash pins the exact image.
    pub fn is_pinned(&self) -> bool {
        self.0.contains('@')
    }

    /// The reference as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ImageRef {
    type Err = Error;

    fn from_str(reference: &str) -> Result<Self> {
        ImageRef::new(reference)
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

/// The path of the dstack guest-agent socket, mounted into every agent container.
pub const DSTACK_SOCKET: &str = "/var/run/dstack.sock";

/// Renders the compose file of one agent: the role's service with `image`, the
/// port published as `port:port`, the dstack socket mounted, `restart: always`,
/// `PORT` set, and every name in `secret_keys` passed through as `KEY=${KEY}`
/// so the sealed env reaches the container.
///
/// ```
/// use delibera_phala::{AgentRole, render_compose};
///
/// # fn main() -> delibera_phala::Result<()> {
/// let role = AgentRole::Worker;
/// let yaml = render_compose(role, &role.default_image(), role.default_port(), &["NEAR_ACCOUNT_ID"])?;
/// assert!(yaml.contains("      - NEAR_ACCOUNT_ID=${NEAR_ACCOUNT_ID}\n"));
/// assert!(yaml.contains("      - \"3001:3001\"\n"));
/// # Ok(())
/// # }
/// ```
pub fn render_compose<S: AsRef<str>>(
    role: AgentRole,
    image: &ImageRef,
    port: u16,
    secret_keys: &[S],
) -> Result<String> {
    if port == 0 {
        return Err(Error::InvalidEnv {
            reason: "the port must not be 0".to_owned(),
        });
    }
    for key in secret_keys {
        validate_env_key(key.as_ref())?;
    }
    let service = role.as_str();
    let mut yaml = format!(
        "services:\n  {service}:\n    image: \"{image}\"\n    restart: always\n    ports:\n      - \"{port}:{port}\"\n    volumes:\n      - {DSTACK_SOCKET}:{DSTACK_SOCKET}\n    environment:\n"
    );
    // A sealed PORT wins over the literal one, so the two never disagree.
    if !secret_keys.iter().any(|key| key.as_ref() == "PORT") {
        yaml.push_str(&format!("      - PORT={port}\n"));
    }
    for key in secret_keys {
        let key = key.as_ref();
        yaml.push_str(&format!("      - {key}=${{{key}}}\n"));
    }
    Ok(yaml)
}

/// A CVM name that Phala accepts: 5–63 characters, starting with a letter,
/// only ASCII letters, digits and hyphens, never `--`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CvmName(String);

const NAME_MIN: usize = 5;
const NAME_MAX: usize = 63;
const SUFFIX_LENGTH: usize = 6;

impl CvmName {
    /// Checks `name` against Phala's rules.
    pub fn new(name: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidCvmName {
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
        Ok(CvmName(name.to_owned()))
    }

    /// A fresh name `delibera-<role>-<slug of display name>-<6 random [a-z0-9]>`,
    /// so redeploying the same agent never collides with a name Phala still holds.
    ///
    /// ```
    /// use delibera_phala::{AgentRole, CvmName};
    ///
    /// let name = CvmName::unique(AgentRole::Worker, "Worker Alpha!");
    /// assert!(name.as_str().starts_with("delibera-worker-worker-alpha-"));
    /// assert_eq!(CvmName::new(name.as_str()).ok(), Some(name));
    /// ```
    pub fn unique(role: AgentRole, display_name: &str) -> Self {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let suffix: String = (0..SUFFIX_LENGTH)
            .map(|_| char::from(ALPHABET[OsRng.gen_range(0..ALPHABET.len())]))
            .collect();
        Self::with_suffix(role, display_name, &suffix)
    }

    /// [`CvmName::unique`] with the suffix given; any character that is not a
    /// lowercase letter or digit is dropped from it, and an empty suffix is `x`.
    pub fn with_suffix(role: AgentRole, display_name: &str, suffix: &str) -> Self {
        let mut suffix: String = suffix
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            .take(SUFFIX_LENGTH * 2)
            .collect();
        if suffix.is_empty() {
            suffix.push('x');
        }
        let prefix = format!("delibera-{role}");
        // Room for `prefix-slug-suffix` within the limit.
        let room = NAME_MAX - prefix.len() - suffix.len() - 2;
        let slug = slugify(display_name, room);
        let name = if slug.is_empty() {
            format!("{prefix}-{suffix}")
        } else {
            format!("{prefix}-{slug}-{suffix}")
        };
        CvmName(name)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CvmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for CvmName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        CvmName::new(name)
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
