//! `delibera phala …` end to end, through the built binary.

use delibera_phala::{EnvVar, decrypt_env, encryption_pubkey_hex};

use crate::support::{Finish, delibera};

/// The `single-var` case of the shared phala-env vectors.
const KMS_PRIVATE_KEY: [u8; 32] = [0x11; 32];
const PUBKEY: &str = "7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13";

#[test]
fn encrypt_env_output_decrypts_with_the_kms_key() {
    assert_eq!(encryption_pubkey_hex(&KMS_PRIVATE_KEY), PUBKEY);
    let stdin = r#"[{"key":"API_KEY","value":"secret"},{"key":"NOTE","value":"ünï ✓\n\"q\""}]"#;
    for pubkey in [PUBKEY.to_owned(), format!("0x{PUBKEY}")] {
        let output = delibera()
            .args(["phala", "encrypt-env", "--pubkey", &pubkey])
            .write_stdin(stdin)
            .finish();
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let hex_blob = stdout.strip_suffix('\n').unwrap();
        assert!(
            hex_blob
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        assert_eq!(
            decrypt_env(&KMS_PRIVATE_KEY, hex_blob).unwrap(),
            [
                EnvVar::new("API_KEY", "secret"),
                EnvVar::new("NOTE", "ünï ✓\n\"q\"")
            ]
        );
    }
}

#[test]
fn encrypt_env_rejects_bad_keys_and_bad_input_without_echoing_values() {
    let output = delibera()
        .args(["phala", "encrypt-env", "--pubkey", "abcd"])
        .write_stdin(r#"[{"key":"A","value":"hunter2"}]"#)
        .finish();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("public key"), "{stderr}");

    let output = delibera()
        .args(["phala", "encrypt-env", "--pubkey", PUBKEY])
        .write_stdin(r#"[{"key":"NOT VALID","value":"hunter2"}]"#)
        .finish();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("NOT VALID"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn compose_worker_defaults() {
    let output = delibera()
        .args(["phala", "compose", "worker", "--env", "NEAR_ACCOUNT_ID"])
        .finish();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "services:
  worker:
    image: \"ghcr.io/delibera/delibera-worker:latest\"
    restart: always
    ports:
      - \"3001:3001\"
    volumes:
      - /var/run/dstack.sock:/var/run/dstack.sock
    environment:
      - PORT=3001
      - NEAR_ACCOUNT_ID=${NEAR_ACCOUNT_ID}
"
    );
}

#[test]
fn compose_coordinator_with_a_pinned_image_and_secrets() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let output = delibera()
        .args([
            "phala",
            "compose",
            "coordinator",
            "--image",
            "ghcr.io/acme/coord:2.0",
            "--digest",
            &digest,
            "--env",
            "ENSUE_API_KEY,STORACHA_AGENT_PRIVATE_KEY",
            "--env",
            "NEAR_ACCOUNT_ID",
        ])
        .finish();
    assert!(output.status.success(), "{output:?}");
    let yaml = String::from_utf8(output.stdout).unwrap();
    assert!(yaml.starts_with("services:\n  coordinator:\n"));
    assert!(yaml.contains(&format!("    image: \"ghcr.io/acme/coord:2.0@{digest}\"\n")));
    assert!(yaml.contains("      - \"3000:3000\"\n"));
    assert!(yaml.ends_with(
        "      - PORT=3000
      - ENSUE_API_KEY=${ENSUE_API_KEY}
      - STORACHA_AGENT_PRIVATE_KEY=${STORACHA_AGENT_PRIVATE_KEY}
      - NEAR_ACCOUNT_ID=${NEAR_ACCOUNT_ID}
"
    ));
}

#[test]
fn compose_rejects_a_bad_digest() {
    let output = delibera()
        .args(["phala", "compose", "worker", "--digest", "latest"])
        .finish();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
}
