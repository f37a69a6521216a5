//! Known-answer vectors, property tests and one test per malformed-input class.

use delibera_identity::{Did, Error, Keypair, PublicKey, Signature};
use proptest::prelude::*;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn seed(hex_seed: &str) -> [u8; 32] {
    hex::decode(hex_seed).unwrap().try_into().unwrap()
}

/// `multibase` base58btc text of arbitrary bytes, for building malformed DIDs.
fn did_of_bytes(bytes: &[u8]) -> String {
    format!("did:key:z{}", bs58_encode(bytes))
}

fn bs58_encode(bytes: &[u8]) -> String {
    // Base58 (Bitcoin alphabet), written out so the test does not lean on the
    // crate's own encoder.
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut digits: Vec<u8> = Vec::new();
    for &byte in bytes {
        let mut carry = u32::from(byte);
        for digit in digits.iter_mut() {
            carry += u32::from(*digit) << 8;
            *digit = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    std::iter::repeat_n('1', zeros)
        .chain(digits.iter().rev().map(|&d| ALPHABET[d as usize] as char))
        .collect()
}

fn base64pad(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn ucanto_raw(keypair: &Keypair) -> Vec<u8> {
    let mut raw = vec![0x80, 0x26];
    raw.extend_from_slice(&seed_of(keypair));
    raw.extend_from_slice(&[0xed, 0x01]);
    raw.extend_from_slice(keypair.public_key().as_bytes());
    raw
}

fn seed_of(keypair: &Keypair) -> [u8; 32] {
    // The ucanto string is the only way out for the seed; decode it by hand.
    let text = keypair.to_ucanto_string();
    let decoded = base64_decode(&text[1..]);
    decoded[2..34].try_into().unwrap()
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sextets: Vec<u32> = text
        .bytes()
        .take_while(|&b| b != b'=')
        .map(|b| ALPHABET.iter().position(|&a| a == b).unwrap() as u32)
        .collect();
    let mut out = Vec::new();
    for chunk in sextets.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &s)| acc | (s << (18 - 6 * i)));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

// ---------------------------------------------------------------- vectors

#[test]
fn ucan_vector_keys_parse_format_and_derive_identically() {
    let vectors = fixture("ucan.json");
    let keys = vectors["keys"].as_object().unwrap();
    assert_eq!(keys.len(), 3);
    for (name, key) in keys {
        let private_key = key["privateKey"].as_str().unwrap();
        let did = key["did"].as_str().unwrap();

        let parsed = Keypair::from_ucanto_str(private_key).unwrap();
        assert_eq!(parsed.did().as_str(), did, "{name}: DID");
        assert_eq!(
            parsed.to_ucanto_string().as_str(),
            private_key,
            "{name}: format back"
        );

        let derived = Keypair::from_seed(&seed(key["seedHex"].as_str().unwrap()));
        assert_eq!(
            derived.to_ucanto_string().as_str(),
            private_key,
            "{name}: derive"
        );

        let parsed_did: Did = did.parse().unwrap();
        assert_eq!(parsed_did.to_string(), did, "{name}: DID round trip");
        assert_eq!(parsed_did.public_key(), &derived.public_key());
    }
}

/// W3C CCG did:key Ed25519 vectors:
/// https://github.com/w3c-ccg/did-method-key/blob/main/test-vectors/ed25519-x25519.json
#[test]
fn w3c_did_key_ed25519_vectors() {
    let vectors = fixture("w3c-did-key-ed25519.json");
    let vectors = vectors["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 5);
    for vector in vectors {
        let keypair = Keypair::from_seed(&seed(vector["seed"].as_str().unwrap()));
        let did = vector["did"].as_str().unwrap();
        assert_eq!(keypair.did().as_str(), did);
        assert_eq!(
            bs58_encode(keypair.public_key().as_bytes()),
            vector["publicKeyBase58"].as_str().unwrap()
        );
        let parsed: Did = did.parse().unwrap();
        assert_eq!(parsed.public_key(), &keypair.public_key());
        assert_eq!(
            keypair.public_key().to_near_string(),
            format!("ed25519:{}", vector["publicKeyBase58"].as_str().unwrap())
        );
    }
}

#[test]
fn ucanto_string_has_the_documented_shape() {
    let keypair = Keypair::from_seed(&[7; 32]);
    let text = keypair.to_ucanto_string();
    assert_eq!(text.len(), 93);
    assert!(text.starts_with("Mg"));
    assert!(text.ends_with('='));
    assert_eq!(base64_decode(&text[1..]), ucanto_raw(&keypair));
}

// ---------------------------------------------------------------- properties

proptest! {
    #[test]
    fn random_keys_round_trip_every_text_form(seed in any::<[u8; 32]>(), message in any::<Vec<u8>>()) {
        let keypair = Keypair::from_seed(&seed);

        let ucanto = keypair.to_ucanto_string();
        prop_assert_eq!(Keypair::from_ucanto_str(&ucanto).unwrap(), keypair.clone());

        let near = keypair.to_near_secret_string();
        prop_assert_eq!(Keypair::from_near_secret_str(&near).unwrap(), keypair.clone());
        let near_public = keypair.public_key().to_near_string();
        prop_assert_eq!(PublicKey::from_near_str(&near_public).unwrap(), keypair.public_key());

        let did = keypair.did();
        prop_assert!(did.as_str().starts_with("did:key:z6Mk"));
        prop_assert_eq!(did.as_str().len(), 56);
        prop_assert_eq!(did.as_str().parse::<Did>().unwrap(), did.clone());

        let signature = keypair.sign(&message);
        prop_assert!(did.verify(&message, &signature).is_ok());
        prop_assert!(keypair.verify(&message, &signature).is_ok());
        let mut tampered = message.clone();
        tampered.push(0);
        prop_assert_eq!(did.verify(&tampered, &signature), Err(Error::InvalidSignature));
    }

    #[test]
    fn did_parser_never_panics(text in ".{0,80}") {
        let _ = text.parse::<Did>();
        let _ = Keypair::from_ucanto_str(&text);
        let _ = Keypair::from_near_secret_str(&text);
    }
}

#[test]
fn generated_keys_are_distinct_and_valid() {
    let a = Keypair::generate();
    let b = Keypair::generate();
    assert_ne!(a.did(), b.did());
    let signature = a.sign(b"x");
    assert!(a.did().verify(b"x", &signature).is_ok());
    assert_eq!(
        b.did().verify(b"x", &signature),
        Err(Error::InvalidSignature)
    );
}

// ---------------------------------------------------------------- malformed DIDs

#[test]
fn not_a_did() {
    for input in [
        "",
        "hello",
        "did:",
        "did:key",
        "did:key:",
        "did::abc",
        "DID:key:z6Mk",
        "did:KEY:z6Mk",
    ] {
        assert!(
            matches!(input.parse::<Did>(), Err(Error::NotADid { .. })),
            "{input:?} gave {:?}",
            input.parse::<Did>()
        );
    }
}

#[test]
fn not_did_key_names_the_method() {
    assert_eq!(
        "did:web:up.storacha.network".parse::<Did>(),
        Err(Error::NotDidKey {
            method: "web".into()
        })
    );
    assert_eq!(
        "did:mailto:example.com:alice".parse::<Did>(),
        Err(Error::NotDidKey {
            method: "mailto".into()
        })
    );
}

#[test]
fn wrong_multibase() {
    // base16 ('f') of the same bytes, and an unknown prefix.
    let keypair = Keypair::from_seed(&[1; 32]);
    let hex_form = format!(
        "did:key:f{}",
        hex::encode(keypair.public_key().to_multicodec_bytes())
    );
    assert!(matches!(
        hex_form.parse::<Did>(),
        Err(Error::WrongMultibase { found, .. }) if found.contains("'f'")
    ));
    assert!(matches!(
        "did:key:!abc".parse::<Did>(),
        Err(Error::WrongMultibase { .. })
    ));
}

#[test]
fn invalid_base58() {
    assert!(matches!(
        "did:key:z6Mk0OIl".parse::<Did>(),
        Err(Error::InvalidEncoding {
            encoding: "base58btc",
            ..
        })
    ));
}

#[test]
fn unsupported_key_codec_is_named() {
    // W3C secp256k1 and P-256 did:key vectors.
    assert_eq!(
        "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme".parse::<Did>(),
        Err(Error::UnsupportedKeyCodec {
            code: 0xe7,
            name: "secp256k1-pub"
        })
    );
    assert_eq!(
        "did:key:zDnaerDaTF5BXEavCrfRZEk316dpbLsfPDZ3WJ5hRTPFU2169".parse::<Did>(),
        Err(Error::UnsupportedKeyCodec {
            code: 0x1200,
            name: "p256-pub"
        })
    );
    let message = "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"
        .parse::<Did>()
        .unwrap_err()
        .to_string();
    assert!(message.contains("secp256k1-pub"), "{message}");
}

#[test]
fn wrong_key_length() {
    let mut bytes = vec![0xed, 0x01];
    bytes.extend_from_slice(&[9; 31]);
    assert_eq!(
        did_of_bytes(&bytes).parse::<Did>(),
        Err(Error::WrongLength {
            what: "did:key Ed25519 public key",
            expected: 32,
            actual: 31
        })
    );
    bytes.extend_from_slice(&[9; 2]);
    assert!(matches!(
        did_of_bytes(&bytes).parse::<Did>(),
        Err(Error::WrongLength { actual: 33, .. })
    ));
}

#[test]
fn key_that_is_not_a_curve_point() {
    let not_a_point = (0u8..=255)
        .map(|i| [i; 32])
        .find(|bytes| PublicKey::from_bytes(bytes) == Err(Error::InvalidPublicKey))
        .expect("some constant byte string is not a curve point");
    let mut bytes = vec![0xed, 0x01];
    bytes.extend_from_slice(&not_a_point);
    assert_eq!(
        did_of_bytes(&bytes).parse::<Did>(),
        Err(Error::InvalidPublicKey)
    );
}

#[test]
fn did_serde_is_a_string_and_rejects_bad_input() {
    let did = Keypair::from_seed(&[3; 32]).did();
    let json = serde_json::to_string(&did).unwrap();
    assert_eq!(json, format!("\"{did}\""));
    assert_eq!(serde_json::from_str::<Did>(&json).unwrap(), did);
    let error = serde_json::from_str::<Did>("\"did:web:example.com\"").unwrap_err();
    assert!(error.to_string().contains("did:key"), "{error}");
}

// ---------------------------------------------------------------- malformed private keys

#[test]
fn ucanto_key_wrong_multibase() {
    let keypair = Keypair::from_seed(&[4; 32]);
    let z_form = format!("z{}", bs58_encode(&ucanto_raw(&keypair)));
    assert!(matches!(
        Keypair::from_ucanto_str(&z_form),
        Err(Error::WrongMultibase {
            what: "ucanto private key",
            ..
        })
    ));
}

#[test]
fn ucanto_key_invalid_base64() {
    assert!(matches!(
        Keypair::from_ucanto_str("M!!!not base64!!!"),
        Err(Error::InvalidEncoding {
            encoding: "base64pad",
            ..
        })
    ));
}

#[test]
fn ucanto_key_wrong_length() {
    let keypair = Keypair::from_seed(&[4; 32]);
    let raw = ucanto_raw(&keypair);
    let short = format!("M{}", base64pad(&raw[..67]));
    assert_eq!(
        Keypair::from_ucanto_str(&short),
        Err(Error::WrongLength {
            what: "ucanto private key",
            expected: 68,
            actual: 67
        })
    );
}

#[test]
fn ucanto_key_wrong_tags() {
    let keypair = Keypair::from_seed(&[4; 32]);
    let mut raw = ucanto_raw(&keypair);
    raw[0] = 0xed;
    assert!(matches!(
        Keypair::from_ucanto_str(&format!("M{}", base64pad(&raw))),
        Err(Error::NotUcantoPrivateKey { reason }) if reason.contains("ed25519-priv")
    ));
    let mut raw = ucanto_raw(&keypair);
    raw[34] = 0xe7;
    assert!(matches!(
        Keypair::from_ucanto_str(&format!("M{}", base64pad(&raw))),
        Err(Error::NotUcantoPrivateKey { reason }) if reason.contains("ed25519-pub")
    ));
}

#[test]
fn ucanto_key_whose_public_half_disagrees_is_refused() {
    let keypair = Keypair::from_seed(&[4; 32]);
    let other = Keypair::from_seed(&[5; 32]);
    let mut raw = ucanto_raw(&keypair);
    raw[36..].copy_from_slice(other.public_key().as_bytes());
    assert_eq!(
        Keypair::from_ucanto_str(&format!("M{}", base64pad(&raw))),
        Err(Error::KeyMismatch { format: "ucanto" })
    );
}

#[test]
fn near_keys_malformed() {
    let keypair = Keypair::from_seed(&[6; 32]);
    let seed = seed_of(&keypair);
    assert_eq!(
        Keypair::from_near_secret_str(&format!("secp256k1:{}", bs58_encode(&[1; 64]))),
        Err(Error::UnsupportedNearKeyType {
            key_type: "secp256k1".into()
        })
    );
    assert_eq!(
        Keypair::from_near_secret_str(&format!("ed25519:{}", bs58_encode(&seed))),
        Err(Error::WrongLength {
            what: "NEAR secret key",
            expected: 64,
            actual: 32
        })
    );
    let mut mismatched = seed.to_vec();
    mismatched.extend_from_slice(Keypair::from_seed(&[8; 32]).public_key().as_bytes());
    assert_eq!(
        Keypair::from_near_secret_str(&format!("ed25519:{}", bs58_encode(&mismatched))),
        Err(Error::KeyMismatch { format: "NEAR" })
    );
    assert!(matches!(
        Keypair::from_near_secret_str("ed25519:0OIl"),
        Err(Error::InvalidEncoding {
            encoding: "base58",
            ..
        })
    ));
    assert!(matches!(
        PublicKey::from_near_str("ed25519:abc"),
        Err(Error::WrongLength {
            what: "Ed25519 public key",
            ..
        })
    ));
    // A bare string is read as ed25519, as near-api-js does.
    let mut full = seed.to_vec();
    full.extend_from_slice(keypair.public_key().as_bytes());
    assert_eq!(
        Keypair::from_near_secret_str(&bs58_encode(&full)).unwrap(),
        keypair
    );
}

#[test]
fn signature_length_is_checked() {
    assert_eq!(
        Signature::from_bytes(&[0; 63]),
        Err(Error::WrongLength {
            what: "Ed25519 signature",
            expected: 64,
            actual: 63
        })
    );
}

// ---------------------------------------------------------------- secrecy

#[test]
fn secrets_never_appear_in_debug_or_errors() {
    let keypair = Keypair::from_seed(&[0xab; 32]);
    let debug = format!("{keypair:?}");
    assert!(debug.contains(keypair.did().as_str()));
    assert!(!debug.contains(keypair.to_ucanto_string().as_str()));
    assert!(!debug.contains(&hex::encode([0xab; 32])));
    assert!(!debug.contains("171, 171"), "no raw seed bytes: {debug}");

    let mut raw = ucanto_raw(&keypair);
    raw[36] ^= 1;
    let text = format!("M{}", base64pad(&raw));
    let message = Keypair::from_ucanto_str(&text).unwrap_err().to_string();
    assert!(!message.contains(&text[1..20]), "{message}");
}
