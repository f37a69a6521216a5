//! `delibera key …` end to end, through the built binary.

use serde_json::Value;

use crate::support::{Finish, delibera};

const COORDINATOR_KEY: &str =
    "MgCYCAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAu0BgTl3Dqh9F19Wo1Rmw0x+zMuNipG07jeiXfYPW4/Js5Q=";
const COORDINATOR_DID: &str = "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH";

fn json_stdout(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn key_new_prints_exactly_did_and_private_key() {
    let output = delibera().args(["key", "new"]).finish();
    assert!(output.status.success());
    let json = json_stdout(&output);
    let object = json.as_object().unwrap();
    let mut fields: Vec<_> = object.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(fields, ["did", "privateKey"]);

    let private_key = json["privateKey"].as_str().unwrap();
    assert!(private_key.starts_with("Mg") && private_key.len() == 93);
    // The printed key names the printed DID.
    let again = delibera().args(["key", "did", private_key]).finish();
    assert_eq!(json_stdout(&again)["did"], json["did"]);
}

#[test]
fn key_did_reads_an_argument_or_stdin() {
    let output = delibera().args(["key", "did", COORDINATOR_KEY]).finish();
    assert!(output.status.success());
    assert_eq!(
        json_stdout(&output),
        serde_json::json!({ "did": COORDINATOR_DID })
    );

    let output = delibera()
        .args(["key", "did", "-"])
        .write_stdin(format!("{COORDINATOR_KEY}\n"))
        .finish();
    assert!(output.status.success());
    assert_eq!(json_stdout(&output)["did"], COORDINATOR_DID);
}

#[test]
fn sign_then_verify_and_a_tampered_signature_exits_1() {
    let output = delibera()
        .args(["key", "sign", COORDINATOR_KEY, "68656c6c6f"])
        .finish();
    assert!(output.status.success());
    let signature = json_stdout(&output)["signature"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(signature.len(), 128);

    let output = delibera()
        .args(["key", "verify", COORDINATOR_DID, "68656c6c6f", &signature])
        .finish();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(json_stdout(&output), serde_json::json!({ "ok": true }));

    let output = delibera()
        .args(["key", "verify", COORDINATOR_DID, "68656c6c6e", &signature])
        .finish();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(json_stdout(&output), serde_json::json!({ "ok": false }));
}

#[test]
fn errors_are_one_line_on_stderr_with_a_nonzero_exit() {
    let cases: [&[&str]; 4] = [
        &["key", "did", "not-a-key"],
        &["key", "sign", COORDINATOR_KEY, "zz"],
        &["key", "verify", "did:web:example.com", "00", "00"],
        &["key", "verify", COORDINATOR_DID, "00", "abcd"],
    ];
    for args in cases {
        let output = delibera().args(args).finish();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("delibera: "), "{stderr}");
    }
}

#[test]
fn a_rejected_private_key_is_not_echoed() {
    let mut bad = COORDINATOR_KEY.to_owned();
    bad.replace_range(60..61, "A");
    let output = delibera().args(["key", "did", &bad]).finish();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("does not match its seed"), "{stderr}");
    assert!(!stderr.contains(&bad[1..40]), "{stderr}");
}
