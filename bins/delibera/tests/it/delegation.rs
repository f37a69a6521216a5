//! `delibera delegation …` end to end, through the built binary, against the
//! shared UCAN vectors (produced by @ucanto/core itself).

use serde_json::Value;

use crate::support::{Finish, delibera};

const SPACE_KEY: &str =
    "MgCYBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAe0Biojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=";
const SPACE_DID: &str = "did:key:z6Mkon3Necd6NkkyfoGoHxid2znGc59LU3K7mubaRcFbLfLX";
const COORDINATOR_KEY: &str =
    "MgCYCAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAu0BgTl3Dqh9F19Wo1Rmw0x+zMuNipG07jeiXfYPW4/Js5Q=";
const COORDINATOR_DID: &str = "did:key:z6Mko9hTggMwjSTEaJaPUfE6tqcy2xvU6BnNq3e3o8qVBiyH";
const WORKER_DID: &str = "did:key:z6MkvRXNYcE7MMduynWTgeKbDaT1iijDSC8pZqXZc8rHPrf2";
/// Inside every vector's validity window.
const NOW: &str = "1800000000";

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crates/storacha/tests/fixtures/ucan.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn stdout_line(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout.clone()).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    text.trim_end().to_owned()
}

fn create(args: &[&str]) -> String {
    let output = delibera()
        .args(["delegation", "create"])
        .args(args)
        .finish();
    stdout_line(&output)
}

fn space_to_coordinator(format: &str) -> String {
    create(&[
        "--issuer-key",
        SPACE_KEY,
        "--audience",
        COORDINATOR_DID,
        "--can",
        "space/blob/add",
        "--can",
        "upload/add",
        "upload/list",
        "space/index/add",
        "--can",
        "space/content/serve/*",
        "--expiration",
        "2000000000",
        "--format",
        format,
    ])
}

#[test]
fn create_reproduces_the_space_to_coordinator_vector_in_both_forms() {
    let fixture = fixture();
    let vector = &fixture["vectors"][0];
    assert_eq!(space_to_coordinator("cid"), vector["identityCid"]);
    assert_eq!(space_to_coordinator("base64"), vector["archiveBase64"]);
}

#[test]
fn create_with_a_proof_reproduces_the_coordinator_to_worker_vector() {
    let fixture = fixture();
    let vector = &fixture["vectors"][1];
    let proof = fixture["vectors"][0]["archiveBase64"].as_str().unwrap();
    let base = [
        "--issuer-key",
        COORDINATOR_KEY,
        "--audience",
        WORKER_DID,
        "--can",
        "space/blob/add",
        "upload/add",
        "space/index/add",
        "--expiration",
        "1990000000",
        "--proof",
        proof,
    ];
    let explicit: Vec<&str> = base.iter().copied().chain(["--with", SPACE_DID]).collect();
    assert_eq!(create(&explicit), vector["identityCid"]);
    // Without --with, the resource comes from the proof.
    assert_eq!(create(&base), vector["identityCid"]);
}

#[test]
fn inspect_prints_the_chain_and_exits_0_when_it_verifies() {
    let fixture = fixture();
    let vector = &fixture["vectors"][1];
    let output = delibera()
        .args(["delegation", "inspect", "--now", NOW])
        .arg(vector["identityCid"].as_str().unwrap())
        .finish();
    let report: Value = serde_json::from_str(&stdout_line(&output)).unwrap();
    let capability = |can: &str| serde_json::json!({ "can": can, "with": SPACE_DID });
    assert_eq!(
        report,
        serde_json::json!({
            "ok": true,
            "cid": vector["rootCid"],
            "issuer": COORDINATOR_DID,
            "audience": WORKER_DID,
            "capabilities": [capability("space/blob/add"), capability("upload/add"), capability("space/index/add")],
            "expiration": 1_990_000_000u64,
            "notBefore": null,
            "proofs": [{
                "cid": fixture["vectors"][0]["rootCid"],
                "issuer": SPACE_DID,
                "audience": COORDINATOR_DID,
                "capabilities": [
                    capability("space/blob/add"), capability("upload/add"), capability("upload/list"),
                    capability("space/index/add"), capability("space/content/serve/*"),
                ],
                "expiration": 2_000_000_000u64,
                "notBefore": null,
                "proofs": [],
            }],
            "errors": [],
        })
    );
}

#[test]
fn inspect_shows_caveats_and_reads_stdin() {
    let fixture = fixture();
    let vector = &fixture["vectors"][2];
    let output = delibera()
        .args(["delegation", "inspect", "-", "--now", NOW])
        .write_stdin(format!("{}\n", vector["archiveBase64"].as_str().unwrap()))
        .finish();
    let report: Value = serde_json::from_str(&stdout_line(&output)).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["expiration"], Value::Null);
    assert_eq!(
        report["capabilities"][0]["nb"],
        serde_json::json!({ "resource": { "/": "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi" } })
    );
}

#[test]
fn inspect_exits_1_with_the_errors_when_a_check_fails() {
    let fixture = fixture();
    let proof = fixture["vectors"][1]["identityCid"].as_str().unwrap();
    let output = delibera()
        .args(["delegation", "inspect", proof, "--now", "2000000001"])
        .finish();
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let errors = report["errors"].as_array().unwrap();
    // The worker's delegation expired, and so did the proof each of its three
    // capabilities rests on.
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors[0]
            .as_str()
            .unwrap()
            .contains("expired at 1990000000"),
        "{errors:?}"
    );
    for error in &errors[1..] {
        assert!(
            error.as_str().unwrap().contains("expired at 2000000000"),
            "{errors:?}"
        );
    }
}

#[test]
fn a_fresh_space_coordinator_worker_chain_made_by_the_cli_verifies() {
    let new_key = || -> (String, String) {
        let output = delibera().args(["key", "new"]).finish();
        let json: Value = serde_json::from_str(&stdout_line(&output)).unwrap();
        (
            json["privateKey"].as_str().unwrap().to_owned(),
            json["did"].as_str().unwrap().to_owned(),
        )
    };
    let (space_key, space_did) = new_key();
    let (coordinator_key, coordinator_did) = new_key();
    let (_, worker_did) = new_key();

    let to_coordinator = create(&[
        "--issuer-key",
        &space_key,
        "--audience",
        &coordinator_did,
        "--can",
        "space/*",
        "upload/*",
        "--expiration",
        "2000000000",
    ]);
    let to_worker = create(&[
        "--issuer-key",
        &coordinator_key,
        "--audience",
        &worker_did,
        "--can",
        "space/blob/add",
        "upload/add",
        "space/content/serve/*",
        "--with",
        &space_did,
        "--expiration",
        "1990000000",
        "--proof",
        &to_coordinator,
    ]);
    let output = delibera()
        .args(["delegation", "inspect", &to_worker, "--now", NOW])
        .finish();
    let report: Value = serde_json::from_str(&stdout_line(&output)).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["proofs"][0]["issuer"], space_did.as_str());

    // The worker cannot be given what the coordinator never received.
    let escalated = create(&[
        "--issuer-key",
        &coordinator_key,
        "--audience",
        &worker_did,
        "--can",
        "access/delegate",
        "--with",
        &space_did,
        "--proof",
        &to_coordinator,
    ]);
    let output = delibera()
        .args(["delegation", "inspect", &escalated, "--now", NOW])
        .finish();
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        report["errors"][0]
            .as_str()
            .unwrap()
            .contains("which none of its proofs grants")
    );
}

#[test]
fn bad_input_is_one_line_on_stderr_with_exit_2_and_keys_are_not_echoed() {
    let cases: [&[&str]; 5] = [
        &[
            "delegation",
            "create",
            "--issuer-key",
            "MgCYnope",
            "--audience",
            WORKER_DID,
            "--can",
            "upload/add",
        ],
        &[
            "delegation",
            "create",
            "--issuer-key",
            SPACE_KEY,
            "--audience",
            "worker",
            "--can",
            "upload/add",
        ],
        &[
            "delegation",
            "create",
            "--issuer-key",
            SPACE_KEY,
            "--audience",
            WORKER_DID,
            "--can",
            "Upload/Add",
        ],
        &[
            "delegation",
            "create",
            "--issuer-key",
            SPACE_KEY,
            "--audience",
            WORKER_DID,
            "--can",
            "upload/add",
            "--expiration",
            "soon",
        ],
        &["delegation", "inspect", "mAYIEAnot-a-proof"],
    ];
    for args in cases {
        let output = delibera().args(args).finish();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("delibera: "), "{stderr}");
        assert!(!stderr.contains(&SPACE_KEY[1..40]), "{stderr}");
    }
}
