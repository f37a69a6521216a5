//! [`CorsPolicy`]: which web origins may call a server from a browser, parsed
//! from one setting (`CORS_ORIGINS`) the same way by every server.

use axum::http::HeaderValue;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
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
        let allowed = match self {
            CorsPolicy::AnyOrigin => AllowOrigin::any(),
            CorsPolicy::Origins(origins) => AllowOrigin::list(
                origins
                    .iter()
                    .filter_map(|origin| HeaderValue::from_str(origin).ok()),
            ),
            CorsPolicy::SameOriginOnly => return CorsLayer::new(),
        };
        CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods(Any)
            .allow_headers(Any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
