//! `delibera near …` end to end, through the built binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::thread;

use serde_json::{Value, json};

use crate::support::{DEADLINE, Finish, delibera};

// The `function-call-json-args` and `function-call-large-nonce-deposit`
// known-answer vectors produced with near-api-js 7.2.0.
const SECRET_1: &str = "ed25519:2AXDGYSE4f2sz7tvMMzyHvUfcoJmxudvdhBcmiUSo6iuCXagjUCKEQF21awZnUGxmwD4m9vGXuC3qieHXJQHAcT";
const SIGNED_1: &str = "EwAAAGNvb3JkaW5hdG9yLnRlc3RuZXQAiojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1wBAAAAAAAAABAAAABkZWxpYmVyYS50ZXN0bmV0EREREREREREREREREREREREREREREREREREREREREREBAAAAAg0AAABzdWJtaXRfcmVzdWx0XAAAAHsicHJvcG9zYWxfaWQiOjcsInJlc3VsdF9jaWQiOiJiYWZ5YmVpZ2R5cnp0NXNmcDd1ZG03aHU3NnVoN3kyNm5mM2VmdXlscWFiZjNvY2xndHF5NTVmYnpkaSJ9AOBX60gbAAAAAAAAAAAAAAAAAAAAAAAAAA9zPEBFMSOmPxtUFOFjG63tk3DdEQeIl6GqMzSM4P2GYKgjTtE+nVpEduFiNLvNnfEwXXVUQ6rDBGukw9O4KQA=";
const HASH_1: &str = "EeDT9sxgj6RR25jjixcZHDjbVeHye8fpyC2e9ux2iG69";
const SECRET_2: &str = "ed25519:3L3RY5sT8K4kyEnqhizwaqxLEbcYvpGrGPNEYRwtbCSdSvvMAJawwEEPE3NhshFbVUqmvDV74Ct4vo7MEu7yxJX";
const SIGNED_2: &str = "GQAAAHdvcmtlci0xLmNvb3JkaW5hdG9yLm5lYXIAgTl3Dqh9F19Wo1Rmw0x+zMuNipG07jeiXfYPW4/Js5RO8zCmS5u2AQ0AAABjb250cmFjdC5uZWFyq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6sBAAAAAg8AAAByZWdpc3Rlcl93b3JrZXJbAAAAeyJkaWQiOiJkaWQ6a2V5Ono2TWtqY2hoZlVzRDZtbXZuaThtQ2RYSHcyMTZYcm05YlFlMm1CSDFQNVJEalZKRyIsIm5vdGUiOiLDvG7Dr2PDtmTDqSDinJMifQDAbjHZEAEAAAAAoe3MzhvC0wAAAAAAAACSO2YXhN01XCgxOKARTh3/w8NVySuNMmZkS4yVU2AUfjknuqKtlNUUA583gC4heKRx3SFlNUfIYj9tAC9YTLEB";
const HASH_2: &str = "3e2LsKiSfQ7zWVLXGV9x9U1d9G5bQQ7yLwEbrTNj6Hvy";

fn json_stdout(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap()
}

fn sign_args<'a>(secret: &'a str, args: &'a str) -> Vec<&'a str> {
    vec![
        "near",
        "sign-function-call",
        "--signer",
        "coordinator.testnet",
        "--secret-key",
        secret,
        "--receiver",
        "delibera.testnet",
        "--method",
        "submit_result",
        "--args",
        args,
        "--gas",
        "30000000000000",
        "--deposit",
        "0",
        "--nonce",
        "1",
        "--block-hash",
        "29d2S7vB453rNYFdR5Ycwt7y9haRT5fwVwL9zTmBhfV2",
    ]
}

#[test]
fn sign_function_call_reproduces_the_near_api_js_vector() {
    // Pretty-printed on purpose: the args are re-encoded as JSON.stringify would.
    let args = r#"{ "proposal_id": 7, "result_cid": "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi" }"#;
    let output = delibera().args(sign_args(SECRET_1, args)).finish();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        json_stdout(&output),
        json!({ "signedTransactionBase64": SIGNED_1, "hash": HASH_1 })
    );
}

#[test]
fn sign_function_call_handles_unicode_a_big_nonce_and_a_deposit() {
    let output = delibera()
        .args([
            "near",
            "sign-function-call",
            "--signer",
            "worker-1.coordinator.near",
            "--secret-key",
            "-",
            "--receiver",
            "contract.near",
            "--method",
            "register_worker",
            "--args",
            "{\"did\":\"did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG\",\"note\":\"\\u00fcn\\u00efc\\u00f6d\\u00e9 \u{2713}\"}",
            "--gas",
            "300000000000000",
            "--deposit",
            "1000000000000000000000000",
            "--nonce",
            "123456789012345678",
            "--block-hash",
            "CZ8YUVdk7znjrUmnb5n7kgySk9yRAsQDYmyCxzfSky9t",
        ])
        .write_stdin(format!("{SECRET_2}\n"))
        .finish();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        json_stdout(&output),
        json!({ "signedTransactionBase64": SIGNED_2, "hash": HASH_2 })
    );
}

#[test]
fn bad_input_exits_2_without_echoing_the_secret() {
    let mut args = sign_args(SECRET_1, "{}");
    args[3] = "Coordinator.testnet";
    let output = delibera().args(&args).finish();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid signer account"), "{stderr}");
    assert!(
        !stderr.contains(SECRET_1.trim_start_matches("ed25519:")),
        "{stderr}"
    );

    let output = delibera().args(sign_args("ed25519:1111", "{}")).finish();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid secret key"));

    let output = delibera().args(sign_args(SECRET_1, "{nope")).finish();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid --args"));
}

/// Serves one HTTP request with `response_body`; the request body comes
/// back through the receiver.
fn one_shot_server(response_body: String) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
            response_body.len(),
            response_body
        )
        .unwrap();
        let _ = sender.send(String::from_utf8(body).unwrap());
    });
    (url, receiver)
}

/// The request the one-shot server received; fails after [`DEADLINE`].
fn received(server: &mpsc::Receiver<String>) -> String {
    server
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("the one-shot server got no request within {DEADLINE:?}"))
}

#[test]
fn view_sends_a_final_call_function_query_and_prints_the_result() {
    let answer: Vec<u8> = br#"{"total_workers":3}"#.to_vec();
    let response = json!({"jsonrpc": "2.0", "id": "1", "result": {"result": answer, "logs": [], "block_height": 1, "block_hash": "x"}});
    let (url, server) = one_shot_server(response.to_string());
    let output = delibera()
        .args([
            "near",
            "view",
            "--rpc",
            &url,
            "registry.testnet",
            "get_stats",
            r#"{"a": 1}"#,
        ])
        .finish();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(json_stdout(&output), json!({"total_workers": 3}));

    let request: Value = serde_json::from_str(&received(&server)).unwrap();
    assert_eq!(request["method"], "query");
    assert_eq!(
        request["params"],
        json!({
            "request_type": "call_function",
            "finality": "final",
            "account_id": "registry.testnet",
            "method_name": "get_stats",
            "args_base64": "eyJhIjoxfQ==",
        })
    );
}

#[test]
fn view_reports_a_contract_panic() {
    let response = json!({"jsonrpc": "2.0", "id": "1", "result": {
        "error": "wasm execution failed with error: HostError(GuestPanic { panic_msg: \"Worker not found\" })",
        "logs": [], "block_height": 1, "block_hash": "x"}});
    let (url, server) = one_shot_server(response.to_string());
    let output = delibera()
        .args([
            "near",
            "view",
            "--rpc",
            &url,
            "registry.testnet",
            "get_worker_by_did",
        ])
        .finish();
    received(&server);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("contract panicked: Worker not found"),
        "{stderr}"
    );
}
