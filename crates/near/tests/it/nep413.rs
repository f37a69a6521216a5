//! NEP-413 against near-api-js 7.2.0's own signer (`tests/fixtures/nep413.json`,
//! made by `nep413.mjs` beside it): the same payload hash, the same signature,
//! the same header, and every tampered field refused.

use delibera_identity::Keypair;
use delibera_near::{AccountId, NEP413_TAG, SignedMessage, SignedRequest};
use serde_json::Value;

fn vectors() -> Vec<Value> {
    let path = format!("{}/tests/fixtures/nep413.json", env!("CARGO_MANIFEST_DIR"));
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    file["vectors"].as_array().unwrap().clone()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn near_api_js_signatures_verify_and_ours_are_byte_identical() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 3);
    for vector in vectors {
        let name = vector["name"].as_str().unwrap();
        let header = vector["header"].as_str().unwrap();
        let signed = SignedMessage::from_authorization(header).unwrap();
        assert_eq!(
            hex(&signed.payload_hash()),
            vector["payloadHashHex"],
            "{name}"
        );
        signed.verify_signature().unwrap();

        // The message is the request claim, field for field.
        let claim = SignedRequest::parse(&signed.message).unwrap();
        let body = vector["body"].as_str().unwrap();
        let expected = SignedRequest::new(
            vector["method"].as_str().unwrap(),
            vector["path"].as_str().unwrap(),
            body.as_bytes(),
            vector["unixMs"].as_u64().unwrap(),
        );
        assert_eq!(claim, expected, "{name}");

        // Signing the same message with the same key and nonce gives the
        // same bytes (Ed25519 is deterministic), and the same JSON.
        let key = Keypair::from_near_secret_str(vector["secretKey"].as_str().unwrap()).unwrap();
        let mut ours = SignedMessage::sign(
            &key,
            vector["envelope"]["accountId"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
            expected.message(),
            signed.nonce,
            signed.recipient.clone(),
        );
        ours.callback_url = signed.callback_url.clone();
        ours.signature = key.sign(&ours.payload_hash());
        assert_eq!(ours, signed, "{name}");
        let json: Value = serde_json::from_str(&ours.to_json()).unwrap();
        assert_eq!(json, vector["envelope"], "{name}");
        assert_eq!(ours.to_authorization(), header, "{name}");
    }
}

#[test]
fn a_changed_field_breaks_the_signature() {
    let signed =
        SignedMessage::from_authorization(vectors()[0]["header"].as_str().unwrap()).unwrap();
    let mut cases: Vec<(&str, SignedMessage)> = Vec::new();
    let mut message = signed.clone();
    message.message = message.message.replace("PUT", "POST");
    cases.push(("message", message));
    let mut nonce = signed.clone();
    nonce.nonce[0] ^= 1;
    cases.push(("nonce", nonce));
    let mut recipient = signed.clone();
    recipient.recipient.push('x');
    cases.push(("recipient", recipient));
    let mut callback = signed.clone();
    callback.callback_url = Some("https://evil.example".into());
    cases.push(("callbackUrl", callback));
    let mut key = signed.clone();
    key.public_key = Keypair::generate().public_key();
    cases.push(("publicKey", key));
    for (field, tampered) in cases {
        assert!(tampered.verify_signature().is_err(), "{field}");
    }
    // The account is not in the payload: only the chain can tie the key to it.
    let mut account = signed.clone();
    account.account_id = AccountId::parse("mallory.testnet").unwrap();
    assert!(account.verify_signature().is_ok());
}

#[test]
fn malformed_credentials_are_refused_with_a_reason() {
    let good = vectors()[0]["envelope"].clone();
    let encode = |value: &Value| {
        use base64::Engine;
        format!(
            "NEP413 {}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        )
    };
    let mut cases = vec![
        ("Bearer abc".to_owned(), "scheme"),
        ("NEP413".to_owned(), "expected"),
        ("NEP413 %%%".to_owned(), "base64"),
        ("NEP413 bm90IGpzb24".to_owned(), "JSON"),
    ];
    for (field, value, reason) in [
        ("accountId", "Not An Account", "accountId"),
        ("publicKey", "ed25519:abc", "publicKey"),
        ("signature", "AAAA", "signature"),
        ("nonce", "AAAA", "nonce"),
    ] {
        let mut envelope = good.clone();
        envelope[field] = Value::from(value);
        cases.push((encode(&envelope), reason));
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("recipient");
    cases.push((encode(&missing), "JSON"));
    for (header, reason) in cases {
        let error = SignedMessage::from_authorization(&header)
            .unwrap_err()
            .to_string();
        assert!(error.contains(reason), "{header}: {error}");
        assert!(error.starts_with("invalid NEP-413 credential"), "{error}");
    }
    // Wallets differ in base64 flavour; every one is read.
    let padded = format!("NEP413 {}", {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(good.to_string())
    });
    SignedMessage::from_authorization(&padded)
        .unwrap()
        .verify_signature()
        .unwrap();
    assert_eq!(NEP413_TAG, 2_147_484_061);
}
