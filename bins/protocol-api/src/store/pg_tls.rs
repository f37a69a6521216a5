//! TLS to PostgreSQL, as `DATABASE_URL`'s `sslmode` and `sslrootcert` ask.
//! The driver knows neither the verifying modes nor root files, so both are
//! read (and taken out of the URL) here.
//!
//! - no `sslmode`, or `disable`: plain TCP or a unix socket, as before;
//! - `require`, `verify-ca`, `verify-full`: TLS, and the server's
//!   certificate is always verified, chain and host name, against the
//!   public web roots and the certificates of `sslrootcert` (a PEM file,
//!   for a provider's or a private CA). Stricter than libpq's `require` and
//!   `verify-ca`, which accept a certificate they cannot verify: a password
//!   sent to a server nobody verified is a password given away;
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
    /// TLS, the server's certificate verified by this configuration.
    Verified(Arc<rustls::ClientConfig>),
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
        Some("require" | "verify-ca" | "verify-full") => {
            Tls::Verified(Arc::new(client_config(root_file.as_deref())?))
        }
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
/// connection string.
fn take_options(url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let (mut mode, mut root_file) = (None, None);
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            mode = Some(value);
            true
        }
        "sslrootcert" => {
            root_file = Some(value);
            true
        }
        _ => false,
    };
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if !is_url {
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|pair| match pair.split_once('=') {
                Some((key, value)) => !take(key.trim(), value.trim_matches('\'').to_owned()),
                None => true,
            })
            .collect();
        return Ok((kept.join(" "), mode, root_file));
    }
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None, None));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value: String = url::form_urlencoded::parse(format!("v={value}").as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        if !take(key, value) {
            kept.push(pair);
        }
    }
    let rest = match kept.is_empty() {
        true => base.to_owned(),
        false => format!("{base}?{}", kept.join("&")),
    };
    Ok((rest, mode, root_file))
}

/// Verifies against the public web roots, and those of `root_file`.
fn client_config(root_file: Option<&str>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = root_file {
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
            Tls::Verified(tls) => deadpool_postgres::Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone()),
                recycling,
            ),
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
                let connector = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                let (client, connection) = config.connect(connector).await?;
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
            options("host=db user=u sslmode=require sslrootcert=/ca.pem dbname=jobs"),
            (
                "host=db user=u dbname=jobs".into(),
                Some("require".into()),
                Some("/ca.pem".into())
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
