//! Organisation self-registration: `POST {base}/auth/agent-register`.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use url::Url;
use zeroize::Zeroizing;

use crate::error::{excerpt, retry_after_header};
use crate::{Error, Result};

/// The path, relative to the base URL, of the registration endpoint.
const REGISTER_PATH: &str = "auth/agent-register";

/// The longest organisation name accepted.
pub const MAX_ORG_NAME_LENGTH: usize = 64;

/// An Ensue API key (`lmn_…`).
///
/// The service shows it once, at registration; this type can be neither
/// cloned nor printed, and is zeroized on drop. Read it with
/// [`expose_secret`](Self::expose_secret) to store it somewhere safe.
pub struct ApiKey(Zeroizing<String>);

impl ApiKey {
    /// The key itself. Handle with care: it is the org's only credential.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// What a successful registration returns.
///
/// The key is inactive until a human opens `claim_url`, enters
/// `verification_code` and verifies an email; until then calls get 401.
#[derive(Debug)]
#[non_exhaustive]
pub struct OrgRegistration {
    /// The new org's API key, shown only this once.
    pub api_key: ApiKey,
    /// Where a human claims the org.
    pub claim_url: String,
    /// The code to enter at `claim_url`.
    pub verification_code: String,
}

/// Checks an organisation name: 1–64 characters of `[A-Za-z0-9_-]`.
pub fn validate_org_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_ORG_NAME_LENGTH
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidOrgName {
            name: name.chars().take(MAX_ORG_NAME_LENGTH + 16).collect(),
        })
    }
}

#[derive(Deserialize)]
struct Fields {
    api_key: Option<String>,
    claim_url: Option<String>,
    verification_code: Option<String>,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(flatten)]
    top: Fields,
    agent: Option<Fields>,
}

/// Registers a new organisation named `name` at `base_url` (e.g.
/// [`DEFAULT_BASE_URL`](crate::DEFAULT_BASE_URL)). No API key is needed.
///
/// Reads the answer's `api_key`, `claim_url` and `verification_code` at the
/// top level, or nested under `agent` as the TypeScript server expects.
pub async fn register_org(base_url: &str, name: &str) -> Result<OrgRegistration> {
    validate_org_name(name)?;
    let base = Url::parse(base_url).map_err(|error| Error::Config {
        reason: format!("invalid base URL {base_url:?}: {error}"),
    })?;
    // `join` would drop the last path segment of a base without a trailing slash.
    let mut base = base;
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    let url = base.join(REGISTER_PATH).map_err(|error| Error::Config {
        reason: format!("cannot build the registration URL: {error}"),
    })?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|error| Error::Config {
            reason: format!("cannot build the HTTP client: {error}"),
        })?;
    let response = http
        .post(url)
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .map_err(Error::Transport)?;
    let status = response.status().as_u16();
    let retry_after = retry_after_header(response.headers());
    let body = Zeroizing::new(response.bytes().await.map_err(Error::Transport)?.to_vec());
    if status == 409 {
        return Err(Error::OrgNameTaken {
            name: name.to_owned(),
        });
    }
    if !(200..300).contains(&status) {
        // Failure bodies carry no key, so they are safe to keep.
        let body = excerpt(&String::from_utf8_lossy(&body));
        return Err(Error::from_http_status(status, retry_after, body));
    }
    // A success body holds the key: never quote it in an error.
    let malformed = |reason: &str| Error::Malformed {
        reason: reason.to_owned(),
        body: "<withheld: may contain the API key>".to_owned(),
    };
    let answer: Answer = serde_json::from_slice(&body)
        .map_err(|_| malformed("registration answer is not a JSON object"))?;
    let nested = answer.agent.unwrap_or(Fields {
        api_key: None,
        claim_url: None,
        verification_code: None,
    });
    let api_key = answer
        .top
        .api_key
        .or(nested.api_key)
        .filter(|key| !key.is_empty())
        .ok_or_else(|| malformed("registration answer has no api_key"))?;
    Ok(OrgRegistration {
        api_key: ApiKey(Zeroizing::new(api_key)),
        claim_url: answer
            .top
            .claim_url
            .or(nested.claim_url)
            .unwrap_or_default(),
        verification_code: answer
            .top
            .verification_code
            .or(nested.verification_code)
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_names() {
        for good in ["a", "delibera-coord-abc_123", &"x".repeat(64)] {
            assert!(validate_org_name(good).is_ok(), "{good}");
        }
        for bad in ["", "has space", "dot.ted", "ünï", &"x".repeat(65), "a/b"] {
            assert!(
                matches!(validate_org_name(bad), Err(Error::InvalidOrgName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn api_keys_do_not_print() {
        let key = ApiKey(Zeroizing::new("lmn_deadbeef".to_owned()));
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
        assert_eq!(key.expose_secret(), "lmn_deadbeef");
    }
}
