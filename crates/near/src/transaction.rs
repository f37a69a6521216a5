//! NEAR transactions in borsh, hand-written for the few types we send.
//!
//! Layout (near-api-js `lib/transactions/schema.js`): integers little-endian,
//! `string` and `Vec` are a u32 LE length then the items, enums a u8 variant
//! index then the fields. See `wire-formats.md` §5.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use delibera_identity::{Keypair, PublicKey, Signature};
use sha2::{Digest, Sha256};

use crate::{AccountId, Error, Result};

/// borsh `PublicKey` / `Signature` enum index of Ed25519.
const KEY_TYPE_ED25519: u8 = 0;
/// borsh `Action` variant index of `FunctionCall`.
const ACTION_FUNCTION_CALL: u8 = 2;
/// borsh `Action` variant index of `Transfer`.
const ACTION_TRANSFER: u8 = 3;

/// A 32-byte hash: a block hash or a transaction hash, base58 as text.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CryptoHash(pub [u8; 32]);

impl CryptoHash {
    /// The sha256 of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Parses the base58 text form.
    pub fn from_base58(text: &str) -> Result<Self> {
        let bytes = bs58::decode(text.trim())
            .into_vec()
            .map_err(|error| Error::InvalidInput {
                what: "hash",
                reason: format!("not base58: {error}"),
            })?;
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|bytes: Vec<u8>| Error::InvalidInput {
                what: "hash",
                reason: format!("expected 32 bytes, got {}", bytes.len()),
            })?;
        Ok(Self(array))
    }

    /// The base58 text form.
    pub fn to_base58(&self) -> String {
        bs58::encode(self.0).into_string()
    }
}

impl fmt::Display for CryptoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base58())
    }
}

impl fmt::Debug for CryptoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CryptoHash({})", self.to_base58())
    }
}

impl FromStr for CryptoHash {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::from_base58(text)
    }
}

/// A call of a contract method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall {
    /// The method name.
    pub method_name: String,
    /// The argument bytes (JSON for near-sdk contracts).
    pub args: Vec<u8>,
    /// Prepaid gas.
    pub gas: u64,
    /// Attached deposit in yoctoNEAR.
    pub deposit: u128,
}

impl FunctionCall {
    /// A call whose arguments are the compact JSON of `args`, as near-api-js
    /// sends a JS object (`JSON.stringify`).
    pub fn json(
        method_name: impl Into<String>,
        args: &serde_json::Value,
        gas: u64,
        deposit: u128,
    ) -> Self {
        Self {
            method_name: method_name.into(),
            args: args.to_string().into_bytes(),
            gas,
            deposit,
        }
    }

    /// A call whose arguments are given as JSON text, encoded byte for byte
    /// as near-api-js encodes the parsed object (see [`crate::js_json_stringify`]).
    pub fn json_text(
        method_name: impl Into<String>,
        args_json: &str,
        gas: u64,
        deposit: u128,
    ) -> Result<Self> {
        Ok(Self {
            method_name: method_name.into(),
            args: crate::js_json_stringify(args_json)?.into_bytes(),
            gas,
            deposit,
        })
    }
}

/// The transaction actions we build.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Call a contract method.
    FunctionCall(FunctionCall),
    /// Send NEAR to the receiver.
    Transfer {
        /// Amount in yoctoNEAR.
        deposit: u128,
    },
}

/// An unsigned NEAR transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The account that signs and pays.
    pub signer_id: AccountId,
    /// The signer's access key.
    pub public_key: PublicKey,
    /// The access key's nonce plus one (or more).
    pub nonce: u64,
    /// The account the actions apply to.
    pub receiver_id: AccountId,
    /// A recent block hash; the transaction expires some blocks after it.
    pub block_hash: CryptoHash,
    /// What to do.
    pub actions: Vec<Action>,
}

impl Transaction {
    /// The borsh bytes near-api-js would produce.
    pub fn to_borsh(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(256);
        write_string(&mut out, self.signer_id.as_str())?;
        out.push(KEY_TYPE_ED25519);
        out.extend_from_slice(self.public_key.as_bytes());
        out.extend_from_slice(&self.nonce.to_le_bytes());
        write_string(&mut out, self.receiver_id.as_str())?;
        out.extend_from_slice(&self.block_hash.0);
        write_len(&mut out, self.actions.len(), "actions")?;
        for action in &self.actions {
            match action {
                Action::FunctionCall(call) => {
                    out.push(ACTION_FUNCTION_CALL);
                    write_string(&mut out, &call.method_name)?;
                    write_len(&mut out, call.args.len(), "function call args")?;
                    out.extend_from_slice(&call.args);
                    out.extend_from_slice(&call.gas.to_le_bytes());
                    out.extend_from_slice(&call.deposit.to_le_bytes());
                }
                Action::Transfer { deposit } => {
                    out.push(ACTION_TRANSFER);
                    out.extend_from_slice(&deposit.to_le_bytes());
                }
            }
        }
        Ok(out)
    }

    /// The transaction hash: sha256 of the borsh bytes.
    pub fn hash(&self) -> Result<CryptoHash> {
        Ok(CryptoHash::sha256(&self.to_borsh()?))
    }

    /// Signs the transaction hash with `keypair`, which must hold `public_key`.
    pub fn sign(self, keypair: &Keypair) -> Result<SignedTransaction> {
        if keypair.public_key() != self.public_key {
            return Err(Error::InvalidInput {
                what: "signing key",
                reason: format!(
                    "the key pair's public key {} is not the transaction's {}",
                    keypair.public_key().to_near_string(),
                    self.public_key.to_near_string()
                ),
            });
        }
        let borsh = self.to_borsh()?;
        let hash = CryptoHash::sha256(&borsh);
        let signature = keypair.sign(&hash.0);
        Ok(SignedTransaction {
            transaction: self,
            borsh,
            hash,
            signature,
        })
    }
}

/// A signed transaction, ready for `send_tx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTransaction {
    transaction: Transaction,
    borsh: Vec<u8>,
    hash: CryptoHash,
    signature: Signature,
}

impl SignedTransaction {
    /// The transaction that was signed.
    pub fn transaction(&self) -> &Transaction {
        &self.transaction
    }

    /// The transaction hash (what explorers and `tx` show).
    pub fn hash(&self) -> CryptoHash {
        self.hash
    }

    /// The Ed25519 signature over the hash.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// borsh(Transaction) ‖ `00` ‖ 64-byte signature.
    pub fn to_borsh(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.borsh.len() + 65);
        out.extend_from_slice(&self.borsh);
        out.push(KEY_TYPE_ED25519);
        out.extend_from_slice(self.signature.as_bytes());
        out
    }

    /// Standard base64 of the borsh bytes: `send_tx`'s `signed_tx_base64`.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.to_borsh())
    }
}

fn write_len(out: &mut Vec<u8>, len: usize, what: &'static str) -> Result<()> {
    let len = u32::try_from(len).map_err(|_| Error::InvalidInput {
        what,
        reason: "longer than 2^32 - 1".to_owned(),
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

fn write_string(out: &mut Vec<u8>, text: &str) -> Result<()> {
    write_len(out, text.len(), "string")?;
    out.extend_from_slice(text.as_bytes());
    Ok(())
}
