//! The known-answer vectors of `tests/fixtures/ucan.json` (copied from
//! `shared/vectors/ucan.json`, produced by @ucanto/core 10.4.6 itself).

use std::collections::{BTreeMap, HashMap};

use delibera_identity::Keypair;
use delibera_storacha::{Capability, Cid, Delegation, Principal, Value};
use serde_json::Value as Json;

/// Inside every vector's validity window (vector 4 has nbf 1.7e9, the earliest exp is 1.99e9).
const NOW: u64 = 1_800_000_000;

fn fixture() -> Json {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ucan.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The DAG-JSON reading of a vector's JSON input (links are `{"/": cid}`).
fn ipld(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(flag) => Value::Bool(*flag),
        Json::Number(number) => Value::Integer(number.as_i64().unwrap().into()),
        Json::String(text) => Value::Text(text.clone()),
        Json::Array(items) => Value::Array(items.iter().map(ipld).collect()),
        Json::Object(map) => match map.get("/") {
            Some(Json::String(cid)) if map.len() == 1 => Value::Link(Cid::parse(cid).unwrap()),
            _ => Value::Map(map.iter().map(|(k, v)| (k.clone(), ipld(v))).collect()),
        },
    }
}

fn ipld_map(json: &Json) -> BTreeMap<String, Value> {
    match ipld(json) {
        Value::Map(map) => map,
        other => panic!("not a map: {other:?}"),
    }
}

/// Builds every vector with our writer, in file order (later vectors use earlier ones as proofs).
fn build_all(fixture: &Json) -> Vec<(Json, Delegation)> {
    let mut built: HashMap<String, Delegation> = HashMap::new();
    let mut out = Vec::new();
    for vector in fixture["vectors"].as_array().unwrap() {
        let input = &vector["input"];
        let issuer = Keypair::from_ucanto_str(input["issuer"].as_str().unwrap()).unwrap();
        let with = input["with"]
            .as_str()
            .map_or_else(|| issuer.did().to_string(), str::to_owned);
        let capabilities = input["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|capability| match capability {
                Json::String(can) => Capability::new(can.as_str(), with.as_str()).unwrap(),
                object => {
                    let capability = Capability::new(
                        object["can"].as_str().unwrap(),
                        object["with"].as_str().unwrap_or(&with),
                    )
                    .unwrap();
                    match object.get("nb") {
                        Some(nb) => capability.with_caveats(ipld_map(nb)),
                        None => capability,
                    }
                }
            })
            .collect();
        let audience = Principal::parse(input["audience"].as_str().unwrap()).unwrap();
        let mut builder =
            Delegation::builder(audience, capabilities).expiration(input["expiration"].as_u64());
        if let Some(not_before) = input["notBefore"].as_u64() {
            builder = builder.not_before(not_before);
        }
        if let Some(nonce) = input["nonce"].as_str() {
            builder = builder.nonce(nonce);
        }
        for fact in input["facts"].as_array().into_iter().flatten() {
            builder = builder.fact(ipld_map(fact));
        }
        for name in input["proofNames"].as_array().unwrap() {
            builder = builder.proof(built[name.as_str().unwrap()].clone());
        }
        let delegation = builder.sign(&issuer).unwrap();
        built.insert(
            vector["name"].as_str().unwrap().to_owned(),
            delegation.clone(),
        );
        out.push((vector.clone(), delegation));
    }
    out
}

#[test]
fn the_fixture_has_the_four_documented_vectors() {
    let names: Vec<_> = fixture()["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vector| vector["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "space-to-coordinator",
            "coordinator-to-worker",
            "space-decrypt-with-nb-no-expiry",
            "optional-fields-nbf-nonce-facts"
        ]
    );
}

#[test]
fn the_vector_keys_derive_the_recorded_dids() {
    let fixture = fixture();
    for (name, key) in fixture["keys"].as_object().unwrap() {
        let seed: [u8; 32] = hex::decode(key["seedHex"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let keypair = Keypair::from_seed(&seed);
        assert_eq!(keypair.did().as_str(), key["did"], "{name}");
    }
}

#[test]
fn our_writer_reproduces_every_vector_byte_for_byte() {
    for (vector, delegation) in build_all(&fixture()) {
        let name = vector["name"].as_str().unwrap();
        assert_eq!(
            delegation.signed_payload(),
            vector["signedPayload"],
            "{name}: signed payload"
        );
        assert_eq!(
            hex::encode(delegation.signature_bytes()),
            format!("eda10340{}", vector["signatureHex"].as_str().unwrap()),
            "{name}: varsig signature"
        );
        let jwt = vector["libraryJwt"].as_str().unwrap();
        assert_eq!(
            jwt.rsplit_once('.').unwrap().0,
            delegation.signed_payload(),
            "{name}: JWT"
        );
        assert_eq!(
            delegation.cid().to_string(),
            vector["rootCid"],
            "{name}: root CID"
        );
        let recorded_blocks = vector["blocks"].as_array().unwrap();
        let own_block = recorded_blocks
            .iter()
            .find(|block| block["cid"] == vector["rootCid"])
            .unwrap();
        assert_eq!(
            hex::encode(delegation.block_bytes()),
            own_block["hex"],
            "{name}: UCAN block"
        );
        assert_eq!(
            delegation.to_base64(),
            vector["archiveBase64"],
            "{name}: base64"
        );
        assert_eq!(
            delegation.to_identity_cid(),
            vector["identityCid"],
            "{name}: identity CID"
        );
    }
}

#[test]
fn the_archives_hold_the_recorded_blocks_in_order() {
    for (vector, delegation) in build_all(&fixture()) {
        let name = vector["name"].as_str().unwrap();
        let car = delibera_storacha::Car::from_bytes(&delegation.archive()).unwrap();
        let roots: Vec<String> = car.roots.iter().map(Cid::to_string).collect();
        assert_eq!(Json::from(roots), vector["carRoots"], "{name}");
        let blocks: Vec<Json> = car
            .blocks
            .iter()
            .map(|block| {
                serde_json::json!({ "cid": block.cid.to_string(), "hex": hex::encode(&block.bytes) })
            })
            .collect();
        assert_eq!(Json::from(blocks), vector["blocks"], "{name}");
    }
}

#[test]
fn our_reader_parses_and_verifies_both_text_forms_of_every_vector() {
    let fixture = fixture();
    for vector in fixture["vectors"].as_array().unwrap() {
        let name = vector["name"].as_str().unwrap();
        for form in ["archiveBase64", "identityCid"] {
            let text = format!("\n  {}\t\n", vector[form].as_str().unwrap());
            let delegation = Delegation::parse(&text).unwrap();
            assert_eq!(
                delegation.cid().to_string(),
                vector["rootCid"],
                "{name} {form}"
            );
            assert_eq!(
                delegation.signed_payload(),
                vector["signedPayload"],
                "{name}"
            );
            assert_eq!(delegation.audience().as_str(), vector["input"]["audience"]);
            delegation
                .verify(NOW)
                .unwrap_or_else(|error| panic!("{name} {form}: {error}"));
            // Re-archiving what was read gives the same bytes back.
            assert_eq!(delegation.to_base64(), vector["archiveBase64"], "{name}");
            assert_eq!(
                delegation.to_identity_cid(),
                vector["identityCid"],
                "{name}"
            );
        }
    }
}

#[test]
fn line_wrapped_base64_parses_as_node_reads_it() {
    let fixture = fixture();
    let base64 = fixture["vectors"][1]["archiveBase64"].as_str().unwrap();
    let wrapped: Vec<&str> = base64
        .as_bytes()
        .chunks(76)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    let delegation = Delegation::parse(&wrapped.join("\n")).unwrap();
    assert_eq!(
        delegation.cid().to_string(),
        fixture["vectors"][1]["rootCid"]
    );
}

#[test]
fn parsed_fields_match_the_vector_inputs() {
    let fixture = fixture();
    let vectors = fixture["vectors"].as_array().unwrap();

    let worker = Delegation::parse(vectors[1]["identityCid"].as_str().unwrap()).unwrap();
    assert_eq!(worker.expiration(), Some(1_990_000_000));
    assert_eq!(worker.proofs().len(), 1);
    assert_eq!(worker.proof_links(), [worker.proofs()[0].cid().clone()]);
    assert_eq!(worker.proofs()[0].cid().to_string(), vectors[0]["rootCid"]);

    let decrypt = Delegation::parse(vectors[2]["archiveBase64"].as_str().unwrap()).unwrap();
    assert_eq!(decrypt.expiration(), None);
    let nb = decrypt.capabilities()[0].nb().unwrap();
    assert_eq!(
        nb["resource"],
        Value::Link(
            Cid::parse("bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi").unwrap()
        )
    );

    let optional = Delegation::parse(vectors[3]["identityCid"].as_str().unwrap()).unwrap();
    assert_eq!(optional.audience().as_str(), "did:web:up.storacha.network");
    assert!(optional.audience().ed25519().is_none());
    assert_eq!(optional.not_before(), Some(1_700_000_000));
    assert_eq!(optional.nonce(), Some("n-1"));
    assert_eq!(
        optional.facts(),
        [ipld_map(&serde_json::json!({"purpose": "conformance"}))]
    );
}
