//! Sealed env: the shared known-answer vectors, round trips and malformed input.

use delibera_phala::{
    EnvVar, Error, decrypt_env, encrypt_env, encrypt_env_with, encryption_pubkey_hex, env_plaintext,
};
use proptest::prelude::*;
use serde_json::Value;

fn vectors() -> Vec<Value> {
    let path = format!(
        "{}/tests/fixtures/phala-env.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["vectors"].as_array().unwrap().clone()
}

fn bytes<const N: usize>(value: &Value) -> [u8; N] {
    hex::decode(value.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn env_of(vector: &Value) -> Vec<EnvVar> {
    EnvVar::list_from_json(&vector["env"].to_string()).unwrap()
}

#[test]
fn every_vector_is_reproduced_byte_exactly() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 3);
    for vector in &vectors {
        let name = vector["name"].as_str().unwrap();
        let encrypted = encrypt_env_with(
            vector["app_env_encrypt_pubkey"].as_str().unwrap(),
            &env_of(vector),
            bytes(&vector["ephemeralPrivateKeyHex"]),
            bytes(&vector["ivHex"]),
        )
        .unwrap();
        assert_eq!(
            encrypted,
            vector["encryptedEnv"].as_str().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn plaintext_is_json_stringify_output() {
    for vector in vectors() {
        let plaintext = env_plaintext(&env_of(&vector));
        assert_eq!(
            std::str::from_utf8(&plaintext).unwrap(),
            vector["plaintextJson"].as_str().unwrap(),
            "{}",
            vector["name"]
        );
    }
}

#[test]
fn plaintext_escapes_like_json_stringify() {
    // JSON.stringify: short escapes for \b \f \n \r \t, other C0 controls as
    // lowercase \u00xx, DEL, U+2028 and non-ASCII raw, `/` unescaped.
    let env = [EnvVar::new(
        "K",
        "\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f}\"\\/\u{2028}é😀",
    )];
    let expected = "{\"env\":[{\"key\":\"K\",\"value\":\"\\b\\f\\n\\r\\t\\u0001\\u001f\u{7f}\\\"\\\\/\u{2028}é😀\"}]}";
    assert_eq!(std::str::from_utf8(&env_plaintext(&env)).unwrap(), expected);
}

#[test]
fn the_kms_public_key_of_every_vector_derives_from_its_private_key() {
    for vector in vectors() {
        let private: [u8; 32] = bytes(&vector["kmsPrivateKeyHex"]);
        assert_eq!(
            encryption_pubkey_hex(&private),
            vector["app_env_encrypt_pubkey"].as_str().unwrap()
        );
    }
}

#[test]
fn fresh_encryption_decrypts_with_the_kms_private_key() {
    for vector in vectors() {
        let private: [u8; 32] = bytes(&vector["kmsPrivateKeyHex"]);
        let env = env_of(&vector);
        let blob = encrypt_env(vector["app_env_encrypt_pubkey"].as_str().unwrap(), &env).unwrap();
        assert_eq!(decrypt_env(&private, &blob).unwrap(), env);
    }
}

#[test]
fn two_encryptions_of_the_same_env_differ() {
    let pubkey = encryption_pubkey_hex(&[7; 32]);
    let env = [EnvVar::new("A", "b")];
    let first = encrypt_env(&pubkey, &env).unwrap();
    let second = encrypt_env(&pubkey, &env).unwrap();
    // Fresh ephemeral key and IV each time.
    assert_ne!(first[..64], second[..64]);
    assert_ne!(first[64..88], second[64..88]);
}

#[test]
fn output_is_lowercase_hex_and_a_0x_pubkey_is_accepted() {
    let vector = &vectors()[0];
    let pubkey = vector["app_env_encrypt_pubkey"].as_str().unwrap();
    let with_prefix = encrypt_env_with(
        &format!("0x{}", pubkey.to_uppercase()),
        &env_of(vector),
        bytes(&vector["ephemeralPrivateKeyHex"]),
        bytes(&vector["ivHex"]),
    )
    .unwrap();
    assert_eq!(with_prefix, vector["encryptedEnv"].as_str().unwrap());
    assert!(
        with_prefix
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    );
}

#[test]
fn bad_public_keys_are_typed_errors() {
    let env = [EnvVar::new("A", "b")];
    for bad in ["", "zz", "abcd", &"00".repeat(33)] {
        assert!(
            matches!(
                encrypt_env(bad, &env),
                Err(Error::InvalidEncryptionKey { .. })
            ),
            "{bad:?}"
        );
    }
    // The all-zero point has low order: the shared secret would be all zeros.
    assert!(matches!(
        encrypt_env(&"00".repeat(32), &env),
        Err(Error::InvalidEncryptionKey { .. })
    ));
}

#[test]
fn tampered_truncated_or_foreign_blobs_do_not_decrypt() {
    let private = [9u8; 32];
    let blob = encrypt_env(
        &encryption_pubkey_hex(&private),
        &[EnvVar::new("A", "secret")],
    )
    .unwrap();

    let mut tampered = blob.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [tampered.as_str(), &blob[..100], "not hex"] {
        assert!(
            matches!(decrypt_env(&private, bad), Err(Error::Decrypt { .. })),
            "{bad:?}"
        );
    }
    assert!(matches!(
        decrypt_env(&[8u8; 32], &blob),
        Err(Error::Decrypt { .. })
    ));
}

proptest! {
    #[test]
    fn any_env_round_trips(values in proptest::collection::vec(".*", 0..5), secret in any::<[u8; 32]>()) {
        let env: Vec<EnvVar> = values
            .iter()
            .enumerate()
            .map(|(index, value)| EnvVar::new(format!("KEY_{index}"), value.clone()))
            .collect();
        // Low-order keys are rejected by design; a clamped random key is not low order.
        let pubkey = encryption_pubkey_hex(&secret);
        let blob = encrypt_env(&pubkey, &env).unwrap();
        prop_assert_eq!(blob.len(), 2 * (60 + env_plaintext(&env).len()));
        prop_assert_eq!(decrypt_env(&secret, &blob).unwrap(), env);
    }
}
