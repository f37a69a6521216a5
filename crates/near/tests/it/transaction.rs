//! The near-api-js known-answer vectors, byte for byte.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use delibera_identity::Keypair;
use delibera_near::{
    AccessKey, AccessKeyPermission, AccountId, Action, CryptoHash, DelegateAction, FunctionCall,
    GlobalContractDeployMode, GlobalContractIdentifier, NearSigner, SignedDelegateAction,
    SignedTransaction, Transaction,
};
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

#[test]
fn every_vector_decodes_to_its_spec_and_back() {
    for vector in vectors() {
        let name = vector["name"].as_str().unwrap();
        let spec = &vector["spec"];
        let wire = BASE64
            .decode(vector["signedTransactionBase64"].as_str().unwrap())
            .unwrap();
        let signed = SignedTransaction::from_borsh(&wire).unwrap();
        let transaction = signed.transaction();
        assert_eq!(
            transaction.signer_id,
            spec["signerId"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            transaction.public_key.to_near_string(),
            vector["publicKey"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(transaction.nonce, number::<u64>(&spec["nonce"]), "{name}");
        assert_eq!(
            transaction.receiver_id,
            spec["receiverId"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            transaction.block_hash.to_base58(),
            spec["blockHash"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(transaction.actions, actions(spec), "{name}");
        assert_eq!(
            signed.hash().to_base58(),
            vector["hashBase58"].as_str().unwrap(),
            "{name}"
        );
        signed.verify_signature().unwrap();
        assert_eq!(signed.to_borsh(), wire, "{name}: re-encoding");
        let from_text =
            SignedTransaction::from_base64(vector["signedTransactionBase64"].as_str().unwrap())
                .unwrap();
        assert_eq!(from_text, signed, "{name}");

        let unsigned = hex::decode(vector["transactionBorshHex"].as_str().unwrap()).unwrap();
        assert_eq!(
            &Transaction::from_borsh(&unsigned).unwrap(),
            transaction,
            "{name}"
        );
    }
}

#[test]
fn trailing_truncated_and_unknown_bytes_are_refused() {
    let vector = &vectors()[0];
    let wire = BASE64
        .decode(vector["signedTransactionBase64"].as_str().unwrap())
        .unwrap();
    let mut trailing = wire.clone();
    trailing.push(0);
    let error = SignedTransaction::from_borsh(&trailing).unwrap_err();
    assert!(error.to_string().contains("1 trailing bytes"), "{error}");
    for cut in [0, 1, 10, wire.len() - 1] {
        assert!(
            SignedTransaction::from_borsh(&wire[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let unsigned = hex::decode(vector["transactionBorshHex"].as_str().unwrap()).unwrap();
    assert!(
        Transaction::from_borsh(&wire).is_err(),
        "a signature is trailing bytes"
    );

    // The only action's tag sits right after the action count.
    let transaction = Transaction::from_borsh(&unsigned).unwrap();
    let tag_at = unsigned.len() - borsh_of_actions(&transaction.actions).len() + 4;
    let mut unknown = unsigned.clone();
    unknown[tag_at] = 42;
    let error = Transaction::from_borsh(&unknown).unwrap_err();
    assert!(
        error.to_string().contains("unknown action tag 42"),
        "{error}"
    );

    let mut secp = wire.clone();
    secp[unsigned.len()] = 1;
    let error = SignedTransaction::from_borsh(&secp).unwrap_err();
    assert!(error.to_string().contains("secp256k1"), "{error}");
}

/// The borsh of `actions` alone (count and items), by difference.
fn borsh_of_actions(actions: &[Action]) -> Vec<u8> {
    let with = sample_transaction(actions.to_vec()).to_borsh().unwrap();
    let without = sample_transaction(Vec::new()).to_borsh().unwrap();
    let mut out = (actions.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&with[without.len()..]);
    out
}

fn sample_transaction(actions: Vec<Action>) -> Transaction {
    Transaction {
        signer_id: "a.testnet".parse().unwrap(),
        public_key: Keypair::from_seed(&[1; 32]).public_key(),
        nonce: 1,
        receiver_id: "b.testnet".parse().unwrap(),
        block_hash: CryptoHash([0; 32]),
        actions,
    }
}

fn account_strategy() -> impl Strategy<Value = AccountId> {
    "[a-z0-9]{2,10}(\\.[a-z0-9]{1,10}){0,2}".prop_map(|text| text.parse().unwrap())
}

fn key_strategy() -> impl Strategy<Value = delibera_identity::PublicKey> {
    any::<[u8; 32]>().prop_map(|seed| Keypair::from_seed(&seed).public_key())
}

fn simple_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::CreateAccount),
        proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|code| Action::DeployContract { code }),
        (
            "[a-z_]{0,20}",
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<u64>(),
            any::<u128>()
        )
            .prop_map(|(method_name, args, gas, deposit)| Action::FunctionCall(
                FunctionCall {
                    method_name,
                    args,
                    gas,
                    deposit
                }
            )),
        any::<u128>().prop_map(|deposit| Action::Transfer { deposit }),
        (any::<u128>(), key_strategy())
            .prop_map(|(stake, public_key)| Action::Stake { stake, public_key }),
        (
            key_strategy(),
            any::<u64>(),
            proptest::option::of((
                proptest::option::of(any::<u128>()),
                "[a-z.]{0,20}",
                proptest::collection::vec("[a-z_]{0,10}", 0..4)
            ))
        )
            .prop_map(|(public_key, nonce, function_call)| Action::AddKey {
                public_key,
                access_key: AccessKey {
                    nonce,
                    permission: match function_call {
                        None => AccessKeyPermission::FullAccess,
                        Some((allowance, receiver_id, method_names)) => {
                            AccessKeyPermission::FunctionCall {
                                allowance,
                                receiver_id,
                                method_names,
                            }
                        }
                    },
                },
            }),
        key_strategy().prop_map(|public_key| Action::DeleteKey { public_key }),
        account_strategy().prop_map(|beneficiary_id| Action::DeleteAccount { beneficiary_id }),
        (proptest::collection::vec(any::<u8>(), 0..64), any::<bool>()).prop_map(
            |(code, by_account)| {
                Action::DeployGlobalContract {
                    code,
                    deploy_mode: if by_account {
                        GlobalContractDeployMode::AccountId
                    } else {
                        GlobalContractDeployMode::CodeHash
                    },
                }
            }
        ),
        any::<[u8; 32]>().prop_map(|hash| Action::UseGlobalContract {
            contract_identifier: GlobalContractIdentifier::CodeHash(CryptoHash(hash))
        }),
        account_strategy().prop_map(|account| Action::UseGlobalContract {
            contract_identifier: GlobalContractIdentifier::AccountId(account)
        }),
    ]
}

fn any_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => simple_action(),
        1 => (
            account_strategy(),
            account_strategy(),
            proptest::collection::vec(simple_action(), 0..3),
            any::<u64>(),
            any::<u64>(),
            any::<[u8; 32]>(),
        )
            .prop_map(|(sender_id, receiver_id, actions, nonce, max_block_height, seed)| {
                let keypair = Keypair::from_seed(&seed);
                Action::Delegate(Box::new(SignedDelegateAction {
                    delegate_action: DelegateAction {
                        sender_id,
                        receiver_id,
                        actions,
                        nonce,
                        max_block_height,
                        public_key: keypair.public_key(),
                    },
                    signature: keypair.sign(b"delegate"),
                }))
            }),
    ]
}

proptest! {
    #[test]
    fn decoding_inverts_encoding(
        seed in any::<[u8; 32]>(),
        signer_id in account_strategy(),
        receiver_id in account_strategy(),
        nonce in any::<u64>(),
        block in any::<[u8; 32]>(),
        actions in proptest::collection::vec(any_action(), 0..5),
    ) {
        let keypair = Keypair::from_seed(&seed);
        let signed = NearSigner::new(signer_id, keypair)
            .sign(receiver_id, nonce, CryptoHash(block), actions)
            .unwrap();
        let borsh = signed.transaction().to_borsh().unwrap();
        prop_assert_eq!(&Transaction::from_borsh(&borsh).unwrap(), signed.transaction());
        let wire = signed.to_borsh();
        let decoded = SignedTransaction::from_borsh(&wire).unwrap();
        prop_assert_eq!(&decoded, &signed);
        prop_assert_eq!(decoded.to_borsh(), wire);
        prop_assert!(decoded.verify_signature().is_ok());
    }
}

#[test]
fn every_action_near_api_js_encodes_decodes_and_reencodes() {
    let path = format!(
        "{}/tests/fixtures/near-tx-actions.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let vector: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let wire = BASE64
        .decode(vector["signedTransactionBase64"].as_str().unwrap())
        .unwrap();
    let signed = SignedTransaction::from_borsh(&wire).unwrap();
    signed.verify_signature().unwrap();
    assert_eq!(
        signed.hash().to_base58(),
        vector["hashBase58"].as_str().unwrap()
    );
    assert_eq!(signed.to_borsh(), wire);
    let transaction = signed.transaction();
    assert_eq!(
        transaction.public_key.to_near_string(),
        vector["publicKey"].as_str().unwrap()
    );
    assert_eq!(transaction.nonce, 77);
    let other =
        delibera_identity::PublicKey::from_near_str(vector["otherPublicKey"].as_str().unwrap())
            .unwrap();
    let function_call_key = |allowance, method_names: &[&str]| Action::AddKey {
        public_key: other,
        access_key: AccessKey {
            nonce: 0,
            permission: AccessKeyPermission::FunctionCall {
                allowance,
                receiver_id: "registry.devnet".into(),
                method_names: method_names.iter().map(|name| name.to_string()).collect(),
            },
        },
    };
    assert_eq!(
        transaction.actions,
        vec![
            Action::CreateAccount,
            Action::DeployContract {
                code: vec![0, 97, 115, 109]
            },
            Action::Transfer { deposit: 5 },
            Action::Stake {
                stake: 7,
                public_key: other
            },
            Action::AddKey {
                public_key: other,
                access_key: AccessKey {
                    nonce: 0,
                    permission: AccessKeyPermission::FullAccess
                },
            },
            function_call_key(
                Some(250_000_000_000_000_000_000_000),
                &["register_worker", "register_coordinator"]
            ),
            function_call_key(None, &[]),
            Action::DeleteKey { public_key: other },
            Action::DeleteAccount {
                beneficiary_id: "beneficiary.testnet".parse().unwrap()
            },
            Action::DeployGlobalContract {
                code: vec![1, 2, 3],
                deploy_mode: GlobalContractDeployMode::AccountId
            },
            Action::UseGlobalContract {
                contract_identifier: GlobalContractIdentifier::AccountId(
                    "global.testnet".parse().unwrap()
                )
            },
            Action::UseGlobalContract {
                contract_identifier: GlobalContractIdentifier::CodeHash(CryptoHash([0x11; 32]))
            },
        ]
    );
}
