//! Env lists: names, duplicates, and values kept out of messages and logs.

use delibera_deploy::{EnvVar, Error};

#[test]
fn env_lists_reject_bad_names_and_duplicates_without_echoing_values() {
    for json in [
        r#"[{"key":"1BAD","value":"hunter2"}]"#,
        r#"[{"key":"A-B","value":"hunter2"}]"#,
        r#"[{"key":"","value":"hunter2"}]"#,
        r#"[{"key":"A","value":"hunter2"},{"key":"A","value":"x"}]"#,
        r#"[{"key":"A"}]"#,
        r#"{"key":"A","value":"hunter2"}"#,
    ] {
        let error = EnvVar::list_from_json(json).unwrap_err();
        assert!(matches!(error, Error::InvalidEnv { .. }), "{json}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }
}

#[test]
fn debug_never_shows_values() {
    let var = EnvVar::new("NEAR_PRIVATE_KEY", "ed25519:topsecret");
    let shown = format!("{var:?}");
    assert!(shown.contains("NEAR_PRIVATE_KEY"));
    assert!(!shown.contains("topsecret"));
}
