//! The PostgreSQL server the replica tests may use: `TEST_DATABASE_URL`
//! (`.ci/run` starts a throwaway one and sets it).

use std::io::Write as _;

/// The server's URL, or `None` after saying on the real stderr that `test`
/// is skipped without it.
pub(crate) fn test_database_url(test: &str) -> Option<String> {
    let url = std::env::var("TEST_DATABASE_URL").ok();
    if url.is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {test}: TEST_DATABASE_URL is not set (.ci/run starts a throwaway server \
             and sets it)"
        );
    }
    url
}

/// A schema of its own on the server at `base`, as a URL that selects it,
/// and a connection to it.
pub(crate) async fn fresh_schema(base: &str) -> (String, tokio_postgres::Client) {
    let connect = |url: String| async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("TEST_DATABASE_URL's server answers");
        tokio::spawn(connection);
        client
    };
    let schema = format!("e2e_{}", hex::encode(rand::random::<[u8; 8]>()));
    connect(base.to_owned())
        .await
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    (url.clone(), connect(url).await)
}
