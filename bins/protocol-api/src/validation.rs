//! Input validation shared by the routes. Each check returns the message the
//! caller sees in `{"error": …}`.

use delibera_identity::{AccountId, Did};

use crate::error::ApiError;

/// Longest display name, in characters. Every place a name reaches (the CVM
/// name, the Ensue org name) takes a slug of it cut to fit, so the bound only
/// keeps abuse out: a coordinator's owner has signed the factory transaction
/// before this name arrives, and must not be refused for a long one.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;

/// Control characters, and the invisible format characters that can disguise a
/// name (zero-width, bidirectional overrides, line/paragraph separators, BOM).
fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
        || ('\u{E000}'..='\u{F8FF}').contains(&c)
}

/// A display name: 1–256 printable characters, surrounding spaces trimmed.
pub fn display_name(field: &str, value: &str) -> Result<String, ApiError> {
    let trimmed = value.trim();
    let count = trimmed.chars().count();
    if count == 0 {
        return Err(ApiError::BadRequest(format!("{field} must not be empty")));
    }
    if count > MAX_DISPLAY_NAME_CHARS {
        return Err(ApiError::BadRequest(format!(
            "{field} must be at most {MAX_DISPLAY_NAME_CHARS} characters (got {count})"
        )));
    }
    if trimmed.chars().any(is_invisible) {
        return Err(ApiError::BadRequest(format!(
            "{field} must contain only printable characters"
        )));
    }
    Ok(trimmed.to_owned())
}

/// A `did:key` Ed25519 DID.
pub fn did(field: &str, value: &str) -> Result<Did, ApiError> {
    value
        .trim()
        .parse::<Did>()
        .map_err(|error| ApiError::BadRequest(format!("{field} is not a valid did:key: {error}")))
}

/// A NEAR account id by NEAR's rules.
pub fn near_account(field: &str, value: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(value.trim()).map_err(|error| {
        ApiError::BadRequest(format!("{field} is not a valid NEAR account id: {error}"))
    })
}

/// A public endpoint URL: `https`, or in local mode also `http` on a loopback host.
pub fn endpoint_url(
    field: &str,
    value: &str,
    allow_loopback_http: bool,
) -> Result<String, ApiError> {
    let value = value.trim();
    let parsed = url::Url::parse(value)
        .map_err(|error| ApiError::BadRequest(format!("{field} is not a valid URL: {error}")))?;
    let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match parsed.scheme() {
        "https" if parsed.host_str().is_some() => Ok(value.trim_end_matches('/').to_owned()),
        "http" if allow_loopback_http && loopback => Ok(value.trim_end_matches('/').to_owned()),
        "http" if loopback => Err(ApiError::BadRequest(format!(
            "{field} must be an https URL (http on localhost is accepted only in local mode)"
        ))),
        _ => Err(ApiError::BadRequest(format!(
            "{field} must be an https URL"
        ))),
    }
}

/// `1 ≤ minWorkers ≤ maxWorkers ≤ 255`, with the defaults 1 and 10.
pub fn worker_bounds(min: Option<i64>, max: Option<i64>) -> Result<(u8, u8), ApiError> {
    let min = min.unwrap_or(1);
    let max = max.unwrap_or(10);
    if !(1..=255).contains(&min) {
        return Err(ApiError::BadRequest(
            "minWorkers must be between 1 and 255".into(),
        ));
    }
    if !(1..=255).contains(&max) {
        return Err(ApiError::BadRequest(
            "maxWorkers must be between 1 and 255".into(),
        ));
    }
    if min > max {
        return Err(ApiError::BadRequest(format!(
            "minWorkers ({min}) must not exceed maxWorkers ({max})"
        )));
    }
    Ok((min as u8, max as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names() {
        assert_eq!(
            display_name("displayName", "  Worker Alpha ").unwrap(),
            "Worker Alpha"
        );
        assert!(display_name("displayName", " ").is_err());
        assert!(display_name("displayName", &"é".repeat(MAX_DISPLAY_NAME_CHARS)).is_ok());
        assert!(display_name("displayName", &"é".repeat(MAX_DISPLAY_NAME_CHARS + 1)).is_err());
        assert!(display_name("displayName", "bad\u{7}name").is_err());
    }

    #[test]
    fn endpoint_urls() {
        assert_eq!(
            endpoint_url("e", "https://a.example/", false).unwrap(),
            "https://a.example"
        );
        assert!(endpoint_url("e", "http://a.example", true).is_err());
        assert!(endpoint_url("e", "http://127.0.0.1:4000", false).is_err());
        assert_eq!(
            endpoint_url("e", "http://127.0.0.1:4000", true).unwrap(),
            "http://127.0.0.1:4000"
        );
        assert!(endpoint_url("e", "ftp://a.example", true).is_err());
        assert!(endpoint_url("e", "not a url", true).is_err());
    }

    #[test]
    fn bounds() {
        assert_eq!(worker_bounds(None, None).unwrap(), (1, 10));
        assert_eq!(worker_bounds(Some(3), Some(3)).unwrap(), (3, 3));
        assert!(worker_bounds(Some(0), None).is_err());
        assert!(worker_bounds(Some(5), Some(4)).is_err());
        assert!(worker_bounds(None, Some(256)).is_err());
        assert!(worker_bounds(Some(-1), None).is_err());
    }

    #[test]
    fn accounts_and_dids() {
        assert_eq!(
            near_account("nearAccount", "alice.testnet")
                .unwrap()
                .as_str(),
            "alice.testnet"
        );
        assert!(near_account("nearAccount", "Alice.testnet").is_err());
        assert!(near_account("nearAccount", "a..b").is_err());
        assert!(
            did(
                "coordinatorDid",
                "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH"
            )
            .is_ok()
        );
        assert!(did("coordinatorDid", "did:web:example.com").is_err());
    }
}
