//! One environment variable of a deployed agent, whose value is a secret.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// One environment variable. The value is zeroized on drop and never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    // Field order is the wire order of sealed envs: `{"key":…,"value":…}`.
    /// The variable name, e.g. `NEAR_ACCOUNT_ID`.
    pub key: String,
    /// The value.
    #[serde(with = "zeroizing_string")]
    pub value: Zeroizing<String>,
}

impl EnvVar {
    /// A variable with this name and value.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        EnvVar {
            key: key.into(),
            value: Zeroizing::new(value.into()),
        }
    }

    /// Parses the JSON array `[{"key": …, "value": …}, …]`; keys must be valid
    /// env names (see [`validate_env_key`]) and unique.
    pub fn list_from_json(json: &str) -> Result<Vec<EnvVar>> {
        let vars: Vec<EnvVar> = serde_json::from_str(json).map_err(|error| Error::InvalidEnv {
            // serde_json's message names the position and the expected type, never the value.
            reason: format!(
                "expected a JSON array of {{\"key\",\"value\"}} objects (line {}, column {})",
                error.line(),
                error.column()
            ),
        })?;
        validate_env_list(&vars)?;
        Ok(vars)
    }
}

impl std::fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvVar")
            .field("key", &self.key)
            .field("value", &"<redacted>")
            .finish()
    }
}

mod zeroizing_string {
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub(super) fn serialize<S: Serializer>(
        value: &Zeroizing<String>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(value)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Zeroizing<String>, D::Error> {
        String::deserialize(deserializer).map(Zeroizing::new)
    }
}

/// Checks that `key` is a POSIX-style env name: `[A-Za-z_][A-Za-z0-9_]*`, at most 256 bytes.
///
/// Compose files reference every key as `${KEY}`, so this is also what keeps a
/// key from injecting YAML.
pub fn validate_env_key(key: &str) -> Result<()> {
    let mut chars = key.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let valid_rest = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid_start && valid_rest && key.len() <= 256 {
        Ok(())
    } else {
        Err(Error::InvalidEnv {
            reason: format!(
                "{key:?} is not an env name (letters, digits and `_`, not starting with a digit)"
            ),
        })
    }
}

/// Checks every key with [`validate_env_key`] and rejects duplicates.
pub fn validate_env_list(vars: &[EnvVar]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for var in vars {
        validate_env_key(&var.key)?;
        if !seen.insert(var.key.as_str()) {
            return Err(Error::InvalidEnv {
                reason: format!("{:?} appears twice", var.key),
            });
        }
    }
    Ok(())
}

/// The names of `vars`, in order.
pub fn env_keys(vars: &[EnvVar]) -> Vec<String> {
    vars.iter().map(|var| var.key.clone()).collect()
}
