//! The near-api-js known-answer vectors, byte for byte.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use delibera_identity::Keypair;
use delibera_near::{AccountId, Action, CryptoHash, FunctionCall, NearSigner, Transaction};
use proptest::prelude::*;
use serde_json::Value;

fn vectors() -> Vec<Value> {
    let path = format!("{}/tests/fixtures/near-tx.json", env!("CARGO_MANIFEST_DIR"));
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    file["vectors"].as_array().unwrap().clone()
}

/// A u64/u128 given as a JSON number or decimal string.
fn number<T: std::str::FromStr>(value: &Value) -> T
where
    T::Err: std::fmt::Debug,
{
    match value {
        Value::String(text) => text.parse().unwrap(),
        other => other.to_string().parse().unwrap(),
    }
}

fn actions(spec: &Value) -> Vec<Action> {
    spec["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|action| {
            if let Some(call) = action.get("functionCall") {
                let args = match call.get("argsBase64") {
                    Some(encoded) => BASE64.decode(encoded.as_str().unwrap()).unwrap(),
                    // serde_json writes keys sorted; the vectors' keys are
                    // already in that order, so this is JSON.stringify's text.
                    None => call["args"].to_string().into_bytes(),
                };
                Action::FunctionCall(FunctionCall {
                    method_name: call["methodName"].as_str().unwrap().to_owned(),
                    args,
                    gas: number(&call["gas"]),
                    deposit: number(&call["deposit"]),
                })
            } else {
                Action::Transfer {
                    deposit: number(&action["transfer"]["deposit"]),
                }
            }
        })
        .collect()
}

#[test]
fn every_vector_is_reproduced_byte_for_byte() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 4);
    for vector in vectors {
        let name = vector["name"].as_str().unwrap();
        let spec = &vector["spec"];
        let signer = NearSigner::from_secret_key(
            spec["signerId"].as_str().unwrap().parse().unwrap(),
            spec["secretKey"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(
            signer.public_key().to_near_string(),
            vector["publicKey"].as_str().unwrap(),
            "{name}: public key"
        );
        let signed = signer
            .sign(
                spec["receiverId"].as_str().unwrap().parse().unwrap(),
                number(&spec["nonce"]),
                spec["blockHash"].as_str().unwrap().parse().unwrap(),
                actions(spec),
            )
            .unwrap();

        let borsh = signed.transaction().to_borsh().unwrap();
        assert_eq!(
            hex::encode(&borsh),
            vector["transactionBorshHex"].as_str().unwrap(),
            "{name}: borsh"
        );
        assert_eq!(
            BASE64.encode(&borsh),
            vector["transactionBorshBase64"].as_str().unwrap(),
            "{name}: borsh base64"
        );
        assert_eq!(
            signed.hash().to_base58(),
            vector["hashBase58"].as_str().unwrap(),
            "{name}: hash"
        );
        assert_eq!(
            bs58::encode(signed.signature().as_bytes()).into_string(),
            vector["signatureBase58"].as_str().unwrap(),
            "{name}: signature"
        );
        assert_eq!(
            signed.to_base64(),
            vector["signedTransactionBase64"].as_str().unwrap(),
            "{name}: signed transaction"
        );
    }
}

#[test]
fn signing_with_another_key_than_the_transactions_is_refused() {
    let key = Keypair::from_seed(&[1; 32]);
    let other = Keypair::from_seed(&[2; 32]);
    let transaction = Transaction {
        signer_id: "a.testnet".parse().unwrap(),
        public_key: key.public_key(),
        nonce: 1,
        receiver_id: "b.testnet".parse().unwrap(),
        block_hash: CryptoHash([0; 32]),
        actions: vec![Action::Transfer { deposit: 1 }],
    };
    let error = transaction.sign(&other).unwrap_err();
    assert!(error.to_string().contains("signing key"), "{error}");
}

#[test]
fn block_hashes_must_be_32_bytes_of_base58() {
    assert!("0OIl".parse::<CryptoHash>().is_err());
    let error = "1111".parse::<CryptoHash>().unwrap_err();
    assert!(
        error.to_string().contains("expected 32 bytes, got 4"),
        "{error}"
    );
}

proptest! {
    #[test]
    fn the_signature_verifies_over_the_hash_and_the_layout_holds(
        seed in any::<[u8; 32]>(),
        nonce in any::<u64>(),
        block in any::<[u8; 32]>(),
        method in "[a-z_]{1,20}",
        args in proptest::collection::vec(any::<u8>(), 0..200),
        gas in any::<u64>(),
        deposit in any::<u128>(),
    ) {
        let keypair = Keypair::from_seed(&seed);
        let signer = NearSigner::new("signer.testnet".parse::<AccountId>().unwrap(), keypair.clone());
        let signed = signer
            .sign(
                "receiver.testnet".parse().unwrap(),
                nonce,
                CryptoHash(block),
                vec![Action::FunctionCall(FunctionCall { method_name: method, args, gas, deposit })],
            )
            .unwrap();
        let borsh = signed.transaction().to_borsh().unwrap();
        let digest = CryptoHash::sha256(&borsh);
        prop_assert_eq!(signed.hash(), digest);
        prop_assert!(keypair.verify(&digest.0, signed.signature()).is_ok());
        let full = signed.to_borsh();
        prop_assert_eq!(&full[..borsh.len()], &borsh[..]);
        prop_assert_eq!(full[borsh.len()], 0);
        prop_assert_eq!(&full[borsh.len() + 1..], &signed.signature().as_bytes()[..]);
    }
}
