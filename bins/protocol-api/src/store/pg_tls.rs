//! TLS to PostgreSQL, as `DATABASE_URL`'s `sslmode` and `sslrootcert` ask.
//! The driver knows neither the verifying modes nor root files, so both are
//! read (and taken out of the URL) here.
//!
//! - no `sslmode`, or `disable`: plain TCP or a unix socket, as before;
//! - `require`, `verify-ca`, `verify-full`: TLS, and the server's
//!   certificate is always verified, chain and host name: against the
//!   certificates of `sslrootcert` alone (a PEM file: a provider's or a
//!   private CA), or without it (or with `sslrootcert=system`) the public
//!   web roots. Stricter than libpq's `require` and `verify-ca`, which
//!   accept a certificate they cannot verify (a password sent to a server
//!   nobody verified is a password given away), and than its `verify-ca`,
//!   which ignores the host name;
//! - `prefer` and `allow` are refused: they fall back to plain text without
//!   a word.

use std::sync::Arc;

use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;

/// How connections to the database are made.
#[derive(Clone)]
pub(super) enum Tls {
    /// Plain (TCP or a unix socket).
    Off,
    /// TLS, the server's certificate verified by this connector's
    /// configuration.
    Verified(tokio_postgres_rustls::MakeRustlsConnect),
}

/// `url` without its `sslmode` and `sslrootcert` options, and the TLS they
/// ask for. Errors name the option, never the URL (it may hold a password).
pub(super) fn split(url: &str) -> Result<(String, Tls), String> {
    let (rest, mode, root_file) = take_options(url)?;
    let tls = match mode.as_deref() {
        None | Some("disable") => {
            if root_file.is_some() {
                return Err(
                    "DATABASE_URL names an sslrootcert but no sslmode: add sslmode=verify-full"
                        .into(),
                );
            }
            Tls::Off
        }
        Some("require" | "verify-ca" | "verify-full") => Tls::Verified(
            tokio_postgres_rustls::MakeRustlsConnect::new(client_config(root_file.as_deref())?),
        ),
        Some(mode @ ("prefer" | "allow")) => {
            return Err(format!(
                "DATABASE_URL's sslmode={mode} would fall back to plain text without a word: use \
                 sslmode=verify-full (TLS, the server verified), or sslmode=disable"
            ));
        }
        Some(other) => {
            return Err(format!(
                "DATABASE_URL's sslmode={other:?} is not one of disable, require, verify-ca, \
                 verify-full"
            ));
        }
    };
    Ok((rest, tls))
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query or a key=value
/// connection string, leaving every other byte as written.
fn take_options(url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let options = if is_url {
        url_options(url)
    } else {
        key_value_options(url)?
    };
    let (mut mode, mut root_file, mut rest) = (None, None, String::new());
    let mut kept_from = 0;
    for (key, value, range) in options {
        let slot = match key.as_str() {
            "sslmode" => &mut mode,
            "sslrootcert" => &mut root_file,
            _ => continue,
        };
        *slot = Some(value);
        rest.push_str(&url[kept_from..range.start]);
        kept_from = range.end;
    }
    rest.push_str(&url[kept_from..]);
    if is_url {
        // An option taken out may leave `?&`, `&&` or a trailing `&` or `?`.
        while let Some(at) = rest.find("&&") {
            rest.remove(at);
        }
        rest = rest.replace("?&", "?");
        while rest.ends_with('&') || rest.ends_with('?') {
            rest.pop();
        }
    }
    Ok((rest, mode, root_file))
}

/// The options of a URL's query: key and value percent-decoded (as the
/// driver decodes them), and the byte range of each `key=value` pair.
fn url_options(url: &str) -> Vec<(String, String, std::ops::Range<usize>)> {
    let Some(query_at) = url.find('?') else {
        return Vec::new();
    };
    let mut options = Vec::new();
    let mut start = query_at + 1;
    for pair in url[query_at + 1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        options.push((
            percent_decoded(key),
            percent_decoded(value),
            start..start + pair.len(),
        ));
        start += pair.len() + 1;
    }
    options
}

/// `text` with `%XX` escapes decoded (a malformed one is kept as written).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = |byte: u8| (byte as char).to_digit(16);
        match (bytes[at], bytes.get(at + 1), bytes.get(at + 2)) {
            (b'%', Some(&high), Some(&low)) if hex(high).is_some() && hex(low).is_some() => {
                out.push((hex(high).unwrap_or(0) * 16 + hex(low).unwrap_or(0)) as u8);
                at += 3;
            }
            (byte, ..) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The options of a key=value connection string, read as the driver reads
/// them (spaces around `=`, single-quoted values with `\` escapes), with the
/// byte range of each.
fn key_value_options(text: &str) -> Result<Vec<(String, String, std::ops::Range<usize>)>, String> {
    let bytes = text.as_bytes();
    let mut options = Vec::new();
    let mut at = 0;
    let skip_spaces = |mut at: usize| {
        while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        at
    };
    loop {
        at = skip_spaces(at);
        if at >= bytes.len() {
            return Ok(options);
        }
        let start = at;
        while bytes
            .get(at)
            .is_some_and(|byte| *byte != b'=' && !byte.is_ascii_whitespace())
        {
            at += 1;
        }
        let key = text[start..at].to_owned();
        at = skip_spaces(at);
        if bytes.get(at) != Some(&b'=') {
            return Err(format!("DATABASE_URL: the option {key:?} has no '='"));
        }
        at = skip_spaces(at + 1);
        let mut value = String::new();
        if bytes.get(at) == Some(&b'\'') {
            at += 1;
            loop {
                match bytes.get(at) {
                    None => {
                        return Err(format!("DATABASE_URL: the value of {key:?} is not closed"));
                    }
                    Some(b'\'') => {
                        at += 1;
                        break;
                    }
                    Some(b'\\') if at + 1 < bytes.len() => {
                        value.push(bytes[at + 1] as char);
                        at += 2;
                    }
                    Some(_) => {
                        let ch = text[at..].chars().next().unwrap_or_default();
                        value.push(ch);
                        at += ch.len_utf8();
                    }
                }
            }
        } else {
            let value_start = at;
            while bytes
                .get(at)
                .is_some_and(|byte| !byte.is_ascii_whitespace())
            {
                at += 1;
            }
            value.push_str(&text[value_start..at]);
        }
        options.push((key, value, start..at));
    }
}

/// Verifies against the certificates of `root_file` alone, as libpq does,
/// or, without one (or with `system`), the public web roots.
fn client_config(root_file: Option<&str>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    match root_file {
        None | Some("system") => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|certificates| certificates.collect())
                .map_err(|error| format!("DATABASE_URL's sslrootcert {path}: {error}"))?;
            if certificates.is_empty() {
                return Err(format!(
                    "DATABASE_URL's sslrootcert {path} holds no PEM certificate"
                ));
            }
            for certificate in certificates {
                roots
                    .add(certificate)
                    .map_err(|error| format!("DATABASE_URL's sslrootcert {path}: {error}"))?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS to PostgreSQL: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Tls {
    /// What `tokio_postgres` is told: TLS required, or not tried.
    pub(super) fn ssl_mode(&self) -> SslMode {
        match self {
            Tls::Off => SslMode::Disable,
            Tls::Verified(_) => SslMode::Require,
        }
    }

    /// The pool's connection manager for `config`.
    pub(super) fn manager(&self, config: tokio_postgres::Config) -> deadpool_postgres::Manager {
        let recycling = deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        };
        match self {
            Tls::Off => deadpool_postgres::Manager::from_config(config, NoTls, recycling),
            Tls::Verified(tls) => {
                deadpool_postgres::Manager::from_config(config, tls.clone(), recycling)
            }
        }
    }

    /// A connection of its own (outside the pool), its driving task
    /// spawned; the task ends, with the connection's error if any, when
    /// the connection does.
    pub(super) async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
        ),
        tokio_postgres::Error,
    > {
        match self {
            Tls::Off => {
                let (client, connection) = config.connect(NoTls).await?;
                Ok((client, tokio::spawn(connection)))
            }
            Tls::Verified(tls) => {
                let (client, connection) = config.connect(tls.clone()).await?;
                Ok((client, tokio::spawn(connection)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str) -> (String, Option<String>, Option<String>) {
        take_options(url).unwrap()
    }

    #[test]
    fn the_tls_options_are_taken_out_of_a_url_and_the_rest_kept_as_written() {
        assert_eq!(
            options(
                "postgres://u:p%40ss@db:5432/jobs?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x"
            ),
            (
                "postgres://u:p%40ss@db:5432/jobs?application_name=x".into(),
                Some("verify-full".into()),
                Some("/etc/ca.pem".into())
            )
        );
        assert_eq!(
            options("postgres://db/jobs?sslmode=disable"),
            ("postgres://db/jobs".into(), Some("disable".into()), None)
        );
        assert_eq!(
            options("postgres://db/jobs?a=1&sslmode=require&b=2"),
            (
                "postgres://db/jobs?a=1&b=2".into(),
                Some("require".into()),
                None
            )
        );
        assert_eq!(
            options(
                "host=db user=u sslmode = require sslrootcert='/my ca.pem' password='a  b\\'c'"
            ),
            (
                "host=db user=u   password='a  b\\'c'".into(),
                Some("require".into()),
                Some("/my ca.pem".into())
            )
        );
        assert_eq!(
            options("postgres://db/jobs?ssl%6Dode=verify-full&x=a+b"),
            (
                "postgres://db/jobs?x=a+b".into(),
                Some("verify-full".into()),
                None
            )
        );
        assert_eq!(
            options("postgres://db/jobs"),
            ("postgres://db/jobs".into(), None, None)
        );
    }

    #[test]
    fn modes_that_fall_back_to_plain_text_or_are_unknown_are_refused() {
        for url in [
            "postgres://db/jobs?sslmode=prefer",
            "postgres://db/jobs?sslmode=allow",
            "postgres://db/jobs?sslmode=sometimes",
            "postgres://db/jobs?sslrootcert=/ca.pem",
        ] {
            let error = split(url).err().unwrap_or_else(|| panic!("{url} accepted"));
            assert!(error.contains("ssl"), "{error}");
        }
        let error = split("postgres://db/jobs?sslmode=verify-full&sslrootcert=/nonexistent.pem")
            .err()
            .unwrap();
        assert!(error.contains("/nonexistent.pem"), "{error}");
        assert!(matches!(
            split("postgres://db/jobs?sslmode=verify-full"),
            Ok((_, Tls::Verified(_)))
        ));
    }
}
