//! Value encryption: the reference's known-answer vectors
//! (`fixtures/ensue-crypto.json`, produced by Node 20), typed failures, and
//! `EncryptedMemory` over `InMemory` including the plaintext migration.

use delibera_ensue::{
    CacheKey, ENCRYPTED_PREFIX, EncryptedMemory, Error, InMemory, Memory, is_sealed, key_material,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Vector {
    name: String,
    private_key: String,
    key_decoding: String,
    key_bytes_hex: String,
    aes_key_hex: String,
    iv_hex: String,
    plaintext_json: String,
    ciphertext: String,
}

#[derive(Deserialize)]
struct Fixture {
    vectors: Vec<Vector>,
}

fn vectors() -> Vec<Vector> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ensue-crypto.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let fixture: Fixture = serde_json::from_str(&text).unwrap();
    assert_eq!(fixture.vectors.len(), 6);
    fixture.vectors
}

fn iv(vector: &Vector) -> [u8; 12] {
    hex::decode(&vector.iv_hex).unwrap().try_into().unwrap()
}

#[test]
fn key_material_is_nodes_lenient_base64_or_the_hex_fallback() {
    for vector in vectors() {
        let bytes = key_material(&vector.private_key);
        assert_eq!(
            hex::encode(&*bytes),
            vector.key_bytes_hex,
            "{}",
            vector.name
        );
        let expected_len = if vector.key_decoding == "hex-fallback" {
            6
        } else {
            69
        };
        assert_eq!(bytes.len(), expected_len, "{}", vector.name);
    }
}

#[test]
fn aes_keys_match_the_reference() {
    for vector in vectors() {
        let key = CacheKey::from_private_key(&vector.private_key).unwrap();
        assert_eq!(
            hex::encode(key.aes_key_bytes()),
            vector.aes_key_hex,
            "{}",
            vector.name
        );
    }
}

#[test]
fn sealing_with_the_recorded_iv_reproduces_every_ciphertext() {
    for vector in vectors() {
        let key = CacheKey::from_private_key(&vector.private_key).unwrap();
        let sealed = key
            .seal_with_iv(&vector.plaintext_json, iv(&vector))
            .unwrap();
        assert_eq!(sealed, vector.ciphertext, "{}", vector.name);
    }
}

#[test]
fn every_vector_unseals_to_its_plaintext() {
    for vector in vectors() {
        let key = CacheKey::from_private_key(&vector.private_key).unwrap();
        assert_eq!(
            key.unseal(&vector.ciphertext).unwrap(),
            vector.plaintext_json,
            "{}",
            vector.name
        );
    }
}

#[test]
fn non_canonical_base64_is_read_as_node_reads_it() {
    for vector in vectors() {
        let key = CacheKey::from_private_key(&vector.private_key).unwrap();
        let payload = vector.ciphertext.strip_prefix(ENCRYPTED_PREFIX).unwrap();
        // URL-safe alphabet, a line break, no padding: Node decodes the same bytes.
        let (head, tail) = payload.split_at(payload.len() / 2);
        let lenient = format!("{head}\n{tail}")
            .replace('+', "-")
            .replace('/', "_")
            .trim_end_matches('=')
            .to_owned();
        let unsealed = key.unseal(&format!("{ENCRYPTED_PREFIX}{lenient}")).unwrap();
        assert_eq!(unsealed, vector.plaintext_json, "{}", vector.name);
    }
}

#[test]
fn seal_uses_a_fresh_iv_and_round_trips() {
    let vector = &vectors()[0];
    let key = CacheKey::from_private_key(&vector.private_key).unwrap();
    let first = key.seal(&vector.plaintext_json).unwrap();
    let second = key.seal(&vector.plaintext_json).unwrap();
    assert!(first.starts_with(ENCRYPTED_PREFIX) && is_sealed(&first));
    assert_ne!(first, second);
    assert_eq!(key.unseal(&first).unwrap(), vector.plaintext_json);
    assert_eq!(key.unseal(&second).unwrap(), vector.plaintext_json);
}

#[test]
fn a_value_sealed_under_another_key_fails_to_unseal() {
    let all = vectors();
    let other = CacheKey::from_private_key(&all[1].private_key).unwrap();
    assert!(matches!(
        other.unseal(&all[0].ciphertext),
        Err(Error::DecryptionFailed)
    ));
}

#[test]
fn a_tampered_value_fails_to_unseal() {
    let vector = &vectors()[0];
    let key = CacheKey::from_private_key(&vector.private_key).unwrap();
    let payload = vector.ciphertext.strip_prefix(ENCRYPTED_PREFIX).unwrap();
    // Flip one character in every position of the payload before the padding.
    for position in 0..payload.trim_end_matches('=').len() {
        let mut characters: Vec<char> = payload.chars().collect();
        characters[position] = if characters[position] == 'A' {
            'B'
        } else {
            'A'
        };
        let tampered: String = characters.into_iter().collect();
        let result = key.unseal(&format!("{ENCRYPTED_PREFIX}{tampered}"));
        assert!(
            matches!(result, Err(Error::DecryptionFailed)),
            "position {position}: {result:?}"
        );
    }
}

#[test]
fn malformed_sealed_values_are_typed_errors() {
    let key = CacheKey::from_private_key(&vectors()[0].private_key).unwrap();
    assert!(matches!(key.unseal("plain"), Err(Error::NotSealed)));
    assert!(matches!(
        key.unseal("aes256gcm:not*base64!"),
        Err(Error::CiphertextNotBase64)
    ));
    assert!(matches!(
        key.unseal("aes256gcm:"),
        Err(Error::CiphertextTooShort { len: 0 })
    ));
    assert!(matches!(
        key.unseal("aes256gcm:AAAA"),
        Err(Error::CiphertextTooShort { len: 3 })
    ));
    assert!(matches!(
        key.unseal("aes256gcm:ünïcode"),
        Err(Error::CiphertextNotBase64)
    ));
}

#[test]
fn errors_never_echo_key_material() {
    let vector = &vectors()[0];
    let key = CacheKey::from_private_key(&vector.private_key).unwrap();
    let printed = format!("{key:?} {}", key.unseal("aes256gcm:AAAA").unwrap_err());
    assert!(!printed.contains(&vector.private_key[..20]));
    assert!(!printed.contains(&vector.aes_key_hex[..16]));
}

#[tokio::test]
async fn encrypted_memory_seals_writes_and_unseals_reads() {
    let vector = &vectors()[1];
    let plain = InMemory::new();
    let memory = EncryptedMemory::new(
        plain.clone(),
        CacheKey::from_private_key(&vector.private_key).unwrap(),
    );
    memory
        .create("agent/notes", &vector.plaintext_json)
        .await
        .unwrap();
    let stored = plain.get("agent/notes").await.unwrap().unwrap();
    assert!(is_sealed(&stored));
    assert!(!stored.contains("garden"));
    assert_eq!(
        memory.get("agent/notes").await.unwrap().as_deref(),
        Some(vector.plaintext_json.as_str())
    );

    // The reference's own ciphertext reads back too.
    plain
        .create("agent/reference", &vector.ciphertext)
        .await
        .unwrap();
    let both = memory
        .get_many(&[
            "agent/notes".to_owned(),
            "agent/reference".to_owned(),
            "absent".to_owned(),
        ])
        .await
        .unwrap();
    assert_eq!(both.len(), 2);
    assert_eq!(both["agent/reference"], vector.plaintext_json);

    // Creating an existing key still fails, sealed or not.
    assert!(
        memory
            .create("agent/notes", "{}")
            .await
            .unwrap_err()
            .is_already_exists()
    );
    assert_eq!(
        memory.list_keys("agent/").await.unwrap(),
        ["agent/notes", "agent/reference"]
    );
    memory.delete("agent/notes").await.unwrap();
    assert_eq!(memory.get("agent/notes").await.unwrap(), None);
}

#[tokio::test]
async fn legacy_plaintext_is_read_as_is_and_sealed_on_the_next_write() {
    let vector = &vectors()[0];
    let plain = InMemory::new();
    plain
        .create("agent/memory", r#"{"legacy":true}"#)
        .await
        .unwrap();
    let memory = EncryptedMemory::new(
        plain.clone(),
        CacheKey::from_private_key(&vector.private_key).unwrap(),
    );

    assert_eq!(
        memory.get("agent/memory").await.unwrap().as_deref(),
        Some(r#"{"legacy":true}"#)
    );
    assert_eq!(
        plain.get("agent/memory").await.unwrap().as_deref(),
        Some(r#"{"legacy":true}"#)
    );

    memory
        .upsert("agent/memory", r#"{"legacy":false}"#)
        .await
        .unwrap();
    let stored = plain.get("agent/memory").await.unwrap().unwrap();
    assert!(is_sealed(&stored), "{stored}");
    assert_eq!(
        memory.get("agent/memory").await.unwrap().as_deref(),
        Some(r#"{"legacy":false}"#)
    );

    // `migrate` seals in place without a new value; a second call has nothing to do.
    plain.create("agent/other", "[1,2]").await.unwrap();
    assert!(memory.migrate("agent/other").await.unwrap());
    assert!(!memory.migrate("agent/other").await.unwrap());
    assert!(is_sealed(&plain.get("agent/other").await.unwrap().unwrap()));
    assert_eq!(
        memory.get("agent/other").await.unwrap().as_deref(),
        Some("[1,2]")
    );
}

#[tokio::test]
async fn a_value_sealed_under_another_key_is_an_error_on_read() {
    let all = vectors();
    let plain = InMemory::new();
    plain.create("k", &all[0].ciphertext).await.unwrap();
    let memory = EncryptedMemory::new(
        plain,
        CacheKey::from_private_key(&all[2].private_key).unwrap(),
    );
    assert!(matches!(
        memory.get("k").await,
        Err(Error::DecryptionFailed)
    ));
}
