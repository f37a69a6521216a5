//! How an [`EnsueClient`](crate::EnsueClient) reaches the service.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use delibera_backoff::Backoff;
use url::Url;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The hosted service's memory endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.ensue-network.ai/";

/// Which JSON-RPC form the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// What the hosted service speaks: `tools/call` with `{name, arguments}` and
    /// the real argument names (`items`, `key_names`, `key_name`, `prefix/limit/offset`).
    #[default]
    Mcp,
    /// The plain form of the memory API: `method` is the tool name and `params`
    /// are `{key, value}`, `{key}` or `{prefix}`.
    Direct,
}

impl Dialect {
    /// `mcp` or `direct`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Mcp => "mcp",
            Dialect::Direct => "direct",
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Dialect {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "mcp" => Ok(Dialect::Mcp),
            "direct" => Ok(Dialect::Direct),
            _ => Err(Error::Config {
                reason: format!("unknown dialect {text:?}: expected `mcp` or `direct`"),
            }),
        }
    }
}

/// The retry schedule of a new [`EnsueConfig`]: 4 attempts, 200 ms doubling
/// up to 5 s with equal jitter; a `Retry-After` over 5 s is not waited for.
pub const DEFAULT_RETRY: Backoff =
    Backoff::new(Duration::from_millis(200), Duration::from_secs(5)).with_max_attempts(4);

/// The wait before the next attempt of a call that failed with `error` after
/// `attempts` attempts, or `None` to return the error.
///
/// Only failures for which [`Error::is_retryable`] holds are retried
/// (transport errors, 429, 5xx), waiting what the service asked for in
/// `Retry-After` when it did (and giving up when that is beyond the cap).
pub(crate) fn retry_delay(backoff: &Backoff, attempts: u32, error: &Error) -> Option<Duration> {
    if !error.is_retryable() {
        return None;
    }
    backoff.retry_delay(attempts, error.retry_after())
}

/// Everything an [`EnsueClient`](crate::EnsueClient) needs. The API key is
/// zeroized on drop and never printed.
#[derive(Clone)]
pub struct EnsueConfig {
    pub(crate) base_url: Url,
    pub(crate) api_key: Zeroizing<String>,
    pub(crate) dialect: Dialect,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) retry: Backoff,
}

impl EnsueConfig {
    /// The hosted service with this API key, the MCP dialect, a 15 s timeout
    /// (the TypeScript client's) and [`DEFAULT_RETRY`].
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            base_url: default_base_url(),
            api_key: Zeroizing::new(api_key.into()),
            dialect: Dialect::default(),
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            retry: DEFAULT_RETRY,
        }
    }

    /// Talks to `base_url` instead of the hosted service (e.g. a local server).
    pub fn with_base_url(mut self, base_url: &str) -> Result<Self> {
        let url = Url::parse(base_url).map_err(|error| Error::Config {
            reason: format!("invalid base URL {base_url:?}: {error}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::Config {
                reason: format!("base URL {base_url:?} is not http(s)"),
            });
        }
        self.base_url = url;
        Ok(self)
    }

    /// Chooses the wire dialect.
    pub fn with_dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// The whole-request timeout (connect, send, read the body).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The connection timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// When failed calls are tried again ([`Backoff::none`] never retries).
    /// Every call the client makes is safe to repeat; only retryable errors
    /// are retried, and a `Retry-After` beyond the cap ends the retries.
    pub fn with_retry(mut self, retry: Backoff) -> Self {
        self.retry = retry;
        self
    }

    /// The URL requests are posted to.
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// The wire dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }
}

impl fmt::Debug for EnsueConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnsueConfig")
            .field("base_url", &self.base_url.as_str())
            .field("api_key", &"<redacted>")
            .field("dialect", &self.dialect)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

pub(crate) fn default_base_url() -> Url {
    // A constant, not outside input; a unit test proves it parses.
    Url::parse(DEFAULT_BASE_URL).expect("DEFAULT_BASE_URL is a valid URL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_debug_redaction() {
        let config = EnsueConfig::new("lmn_secret");
        assert_eq!(config.base_url().as_str(), DEFAULT_BASE_URL);
        assert_eq!(config.dialect(), Dialect::Mcp);
        assert!(!format!("{config:?}").contains("lmn_secret"));
    }

    #[test]
    fn dialects_parse_and_bad_urls_are_rejected() {
        assert_eq!("MCP".parse::<Dialect>().unwrap(), Dialect::Mcp);
        assert_eq!("direct".parse::<Dialect>().unwrap(), Dialect::Direct);
        assert!("grpc".parse::<Dialect>().is_err());
        assert!(EnsueConfig::new("k").with_base_url("not a url").is_err());
        assert!(EnsueConfig::new("k").with_base_url("ftp://x/").is_err());
    }

    #[test]
    fn only_retryable_errors_are_retried_and_retry_after_is_honoured() {
        let backoff =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).with_max_attempts(4);
        let server = Error::Server {
            status: 503,
            body: String::new(),
        };
        for attempts in 1..4 {
            let step = backoff.step(attempts);
            let delay = retry_delay(&backoff, attempts, &server).unwrap();
            assert!(delay >= step / 2 && delay <= step, "{attempts}: {delay:?}");
        }
        assert_eq!(retry_delay(&backoff, 4, &server), None);
        let asked = Error::RateLimited {
            retry_after: Some(Duration::from_millis(300)),
        };
        assert_eq!(
            retry_delay(&backoff, 1, &asked),
            Some(Duration::from_millis(300))
        );
        let too_long = Error::RateLimited {
            retry_after: Some(Duration::from_secs(60)),
        };
        assert_eq!(retry_delay(&backoff, 1, &too_long), None);
        let not_found = Error::NotFound { key: "k".into() };
        assert_eq!(retry_delay(&backoff, 1, &not_found), None);
    }

    #[test]
    fn the_default_retry_makes_four_attempts() {
        let config = EnsueConfig::new("k");
        assert_eq!(config.retry, DEFAULT_RETRY);
        assert_eq!(DEFAULT_RETRY.max_attempts(), 4);
        assert_eq!(DEFAULT_RETRY.initial(), Duration::from_millis(200));
        assert_eq!(DEFAULT_RETRY.cap(), Duration::from_secs(5));
    }
}
