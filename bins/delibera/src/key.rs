//! `delibera key …`: identity commands compatible with `storacha key create`.

use anyhow::Context;
use clap::Subcommand;
use delibera_identity::{Did, Keypair, Signature};
use serde_json::json;

use crate::{Outcome, arg_or_stdin, print_json};

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a key pair; prints `{"did", "privateKey"}` (the ucanto string).
    New,
    /// Show the DID of a ucanto private key (`-` reads it from stdin).
    Did {
        /// The private key (`Mg…`), or `-` for stdin.
        private_key: String,
    },
    /// Sign hex-encoded bytes; prints the 64-byte raw signature as hex.
    Sign {
        /// The private key (`Mg…`), or `-` for stdin.
        private_key: String,
        /// The message, hex-encoded.
        message_hex: String,
    },
    /// Verify a signature; exits 0 and prints `{"ok": true}` when valid, else exits 1.
    Verify {
        /// The signer's did:key.
        did: String,
        /// The message, hex-encoded.
        message_hex: String,
        /// The 64-byte signature, hex-encoded.
        signature_hex: String,
    },
}

pub(crate) fn run(command: KeyCommand) -> anyhow::Result<Outcome> {
    match command {
        KeyCommand::New => {
            let keypair = Keypair::generate();
            print_json(&json!({
                "did": keypair.did(),
                "privateKey": keypair.to_ucanto_string().as_str(),
            }));
        }
        KeyCommand::Did { private_key } => {
            let keypair = parse_private_key(&private_key)?;
            print_json(&json!({ "did": keypair.did() }));
        }
        KeyCommand::Sign {
            private_key,
            message_hex,
        } => {
            let keypair = parse_private_key(&private_key)?;
            let message =
                hex::decode(message_hex.trim()).context("the message is not valid hex")?;
            let signature = keypair.sign(&message);
            print_json(&json!({ "signature": hex::encode(signature.as_bytes()) }));
        }
        KeyCommand::Verify {
            did,
            message_hex,
            signature_hex,
        } => {
            let did: Did = did.trim().parse().context("invalid DID")?;
            let message =
                hex::decode(message_hex.trim()).context("the message is not valid hex")?;
            let signature_bytes =
                hex::decode(signature_hex.trim()).context("the signature is not valid hex")?;
            let signature = Signature::from_bytes(&signature_bytes).context("invalid signature")?;
            let ok = did.verify(&message, &signature).is_ok();
            print_json(&json!({ "ok": ok }));
            if !ok {
                return Ok(Outcome::Exit(1));
            }
        }
    }
    Ok(Outcome::Success)
}

fn parse_private_key(arg: &str) -> anyhow::Result<Keypair> {
    let text = arg_or_stdin(arg)?;
    Keypair::from_ucanto_str(&text).context("invalid private key")
}
