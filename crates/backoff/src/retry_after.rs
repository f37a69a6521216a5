//! The `Retry-After` HTTP header.

use std::time::{Duration, SystemTime};

/// Reads a `Retry-After` header value: delta-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, and the two obsolete date forms). A date
/// in the past means "now" ([`Duration::ZERO`]). `None` when the value is
/// neither.
///
/// ```
/// use std::time::Duration;
/// use delibera_backoff::parse_retry_after;
///
/// assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
/// assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
/// assert_eq!(parse_retry_after("soon"), None);
/// ```
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    parse_at(value, SystemTime::now())
}

/// [`parse_retry_after`] as if the time were `now`.
fn parse_at(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        // Too many digits for a u64 still means "longer than anyone waits".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sun, 06 Nov 1994 08:49:37 GMT, the date of RFC 9110's examples.
    fn rfc_now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777)
    }

    #[test]
    fn delta_seconds() {
        assert_eq!(parse_at("0", rfc_now()), Some(Duration::ZERO));
        assert_eq!(parse_at(" 120 ", rfc_now()), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_at("99999999999999999999999", rfc_now()),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in ["", "-1", "1.5", "+3", "ten", "12s"] {
            assert_eq!(parse_at(bad, rfc_now()), None, "{bad:?}");
        }
    }

    #[test]
    fn all_three_http_date_forms() {
        let in_a_minute = Some(Duration::from_secs(60));
        // IMF-fixdate, then the obsolete RFC 850 and asctime forms.
        assert_eq!(
            parse_at("Sun, 06 Nov 1994 08:50:37 GMT", rfc_now()),
            in_a_minute
        );
        assert_eq!(
            parse_at("Sunday, 06-Nov-94 08:50:37 GMT", rfc_now()),
            in_a_minute
        );
        assert_eq!(parse_at("Sun Nov  6 08:50:37 1994", rfc_now()), in_a_minute);
    }

    #[test]
    fn a_past_date_means_now() {
        assert_eq!(
            parse_at("Sun, 06 Nov 1994 08:00:00 GMT", rfc_now()),
            Some(Duration::ZERO)
        );
    }
}
