//! NEAR transactions in borsh, hand-written: encoding and decoding.
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
/// borsh `PublicKey` / `Signature` enum index of secp256k1 (not supported).
const KEY_TYPE_SECP256K1: u8 = 1;

// borsh `Action` variant indexes, in nearcore's (and near-api-js's) order.
const ACTION_CREATE_ACCOUNT: u8 = 0;
const ACTION_DEPLOY_CONTRACT: u8 = 1;
const ACTION_FUNCTION_CALL: u8 = 2;
const ACTION_TRANSFER: u8 = 3;
const ACTION_STAKE: u8 = 4;
const ACTION_ADD_KEY: u8 = 5;
const ACTION_DELETE_KEY: u8 = 6;
const ACTION_DELETE_ACCOUNT: u8 = 7;
const ACTION_DELEGATE: u8 = 8;
const ACTION_DEPLOY_GLOBAL_CONTRACT: u8 = 9;
const ACTION_USE_GLOBAL_CONTRACT: u8 = 10;

/// borsh `AccessKeyPermission` variant indexes.
const PERMISSION_FUNCTION_CALL: u8 = 0;
const PERMISSION_FULL_ACCESS: u8 = 1;

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

/// A transaction action: every variant near-api-js 7 encodes, in nearcore's
/// borsh layout (the variant index is the position in this list).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Create the receiver account (a sub-account of the signer).
    CreateAccount,
    /// Deploy this wasm code on the receiver.
    DeployContract {
        /// The wasm bytes.
        code: Vec<u8>,
    },
    /// Call a contract method.
    FunctionCall(FunctionCall),
    /// Send NEAR to the receiver.
    Transfer {
        /// Amount in yoctoNEAR.
        deposit: u128,
    },
    /// Stake (or unstake, with 0) as a validator.
    Stake {
        /// Amount in yoctoNEAR.
        stake: u128,
        /// The validator key.
        public_key: PublicKey,
    },
    /// Add an access key to the receiver.
    AddKey {
        /// The new key.
        public_key: PublicKey,
        /// Its nonce and permission.
        access_key: AccessKey,
    },
    /// Delete an access key of the receiver.
    DeleteKey {
        /// The key to delete.
        public_key: PublicKey,
    },
    /// Delete the receiver, sending its balance to the beneficiary.
    DeleteAccount {
        /// Who gets the remaining balance.
        beneficiary_id: AccountId,
    },
    /// A meta transaction: actions signed by another account, relayed.
    Delegate(Box<SignedDelegateAction>),
    /// Deploy code that other accounts can use.
    DeployGlobalContract {
        /// The wasm bytes.
        code: Vec<u8>,
        /// How the code is found later.
        deploy_mode: GlobalContractDeployMode,
    },
    /// Use a global contract as the receiver's code.
    UseGlobalContract {
        /// Which global contract.
        contract_identifier: GlobalContractIdentifier,
    },
}

/// An access key as `AddKey` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    /// The key's starting nonce (nearcore replaces it with one derived from the block height).
    pub nonce: u64,
    /// What the key may sign.
    pub permission: AccessKeyPermission,
}

/// What an access key may sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessKeyPermission {
    /// Only calls of `receiver_id`'s methods, without deposit.
    FunctionCall {
        /// Gas fees the key may still spend, in yoctoNEAR (`None`: unlimited).
        allowance: Option<u128>,
        /// The only contract it may call (a plain string in nearcore's layout).
        receiver_id: String,
        /// The methods it may call; empty means any.
        method_names: Vec<String>,
    },
    /// Anything.
    FullAccess,
}

/// A delegate action (NEP-366): what a relayer submits for its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegateAction {
    /// The account that signed the inner actions.
    pub sender_id: AccountId,
    /// The account the inner actions apply to.
    pub receiver_id: AccountId,
    /// The inner actions (never another delegate action).
    pub actions: Vec<Action>,
    /// The sender key's nonce for this action.
    pub nonce: u64,
    /// The last block height at which it is valid.
    pub max_block_height: u64,
    /// The sender's key.
    pub public_key: PublicKey,
}

/// A delegate action with the sender's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDelegateAction {
    /// The action.
    pub delegate_action: DelegateAction,
    /// The sender's signature over its NEP-461 prefixed hash.
    pub signature: Signature,
}

/// How a global contract is addressed after `DeployGlobalContract`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalContractDeployMode {
    /// By the hash of its code (immutable).
    CodeHash,
    /// By the deploying account (updatable).
    AccountId,
}

/// Which global contract `UseGlobalContract` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalContractIdentifier {
    /// The code with this hash.
    CodeHash(CryptoHash),
    /// The code deployed by this account.
    AccountId(AccountId),
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
        write_public_key(&mut out, &self.public_key);
        out.extend_from_slice(&self.nonce.to_le_bytes());
        write_string(&mut out, self.receiver_id.as_str())?;
        out.extend_from_slice(&self.block_hash.0);
        write_actions(&mut out, &self.actions)?;
        Ok(out)
    }

    /// Reads a transaction from its borsh bytes: the exact inverse of
    /// [`Transaction::to_borsh`]. Trailing bytes, unknown enum tags and
    /// non-Ed25519 keys are refused.
    pub fn from_borsh(bytes: &[u8]) -> Result<Self> {
        let mut reader = Reader::new(bytes);
        let transaction = reader.transaction()?;
        reader.finish()?;
        Ok(transaction)
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
        write_signature(&mut out, &self.signature);
        out
    }

    /// Standard base64 of the borsh bytes: `send_tx`'s `signed_tx_base64`.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.to_borsh())
    }

    /// Reads a signed transaction from its borsh bytes: the exact inverse of
    /// [`SignedTransaction::to_borsh`]. The signature is not checked here
    /// (see [`SignedTransaction::verify_signature`]).
    pub fn from_borsh(bytes: &[u8]) -> Result<Self> {
        let mut reader = Reader::new(bytes);
        let transaction = reader.transaction()?;
        let borsh = bytes[..reader.position].to_vec();
        let signature = reader.signature()?;
        reader.finish()?;
        let hash = CryptoHash::sha256(&borsh);
        Ok(Self {
            transaction,
            borsh,
            hash,
            signature,
        })
    }

    /// Reads `send_tx`'s `signed_tx_base64`.
    pub fn from_base64(text: &str) -> Result<Self> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|error| Error::InvalidInput {
                what: "signed transaction",
                reason: format!("not base64: {error}"),
            })?;
        Self::from_borsh(&bytes)
    }

    /// Checks that the signature is the transaction's `public_key` signing its hash.
    pub fn verify_signature(&self) -> Result<()> {
        self.transaction
            .public_key
            .verify(&self.hash.0, &self.signature)
            .map_err(Error::from)
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
    write_bytes(out, text.as_bytes(), "string")
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8], what: &'static str) -> Result<()> {
    write_len(out, bytes.len(), what)?;
    out.extend_from_slice(bytes);
    Ok(())
}

fn write_public_key(out: &mut Vec<u8>, key: &PublicKey) {
    out.push(KEY_TYPE_ED25519);
    out.extend_from_slice(key.as_bytes());
}

fn write_signature(out: &mut Vec<u8>, signature: &Signature) {
    out.push(KEY_TYPE_ED25519);
    out.extend_from_slice(signature.as_bytes());
}

fn write_actions(out: &mut Vec<u8>, actions: &[Action]) -> Result<()> {
    write_len(out, actions.len(), "actions")?;
    actions
        .iter()
        .try_for_each(|action| write_action(out, action))
}

fn write_action(out: &mut Vec<u8>, action: &Action) -> Result<()> {
    match action {
        Action::CreateAccount => out.push(ACTION_CREATE_ACCOUNT),
        Action::DeployContract { code } => {
            out.push(ACTION_DEPLOY_CONTRACT);
            write_bytes(out, code, "contract code")?;
        }
        Action::FunctionCall(call) => {
            out.push(ACTION_FUNCTION_CALL);
            write_string(out, &call.method_name)?;
            write_bytes(out, &call.args, "function call args")?;
            out.extend_from_slice(&call.gas.to_le_bytes());
            out.extend_from_slice(&call.deposit.to_le_bytes());
        }
        Action::Transfer { deposit } => {
            out.push(ACTION_TRANSFER);
            out.extend_from_slice(&deposit.to_le_bytes());
        }
        Action::Stake { stake, public_key } => {
            out.push(ACTION_STAKE);
            out.extend_from_slice(&stake.to_le_bytes());
            write_public_key(out, public_key);
        }
        Action::AddKey {
            public_key,
            access_key,
        } => {
            out.push(ACTION_ADD_KEY);
            write_public_key(out, public_key);
            out.extend_from_slice(&access_key.nonce.to_le_bytes());
            match &access_key.permission {
                AccessKeyPermission::FunctionCall {
                    allowance,
                    receiver_id,
                    method_names,
                } => {
                    out.push(PERMISSION_FUNCTION_CALL);
                    match allowance {
                        None => out.push(0),
                        Some(amount) => {
                            out.push(1);
                            out.extend_from_slice(&amount.to_le_bytes());
                        }
                    }
                    write_string(out, receiver_id)?;
                    write_len(out, method_names.len(), "method names")?;
                    for name in method_names {
                        write_string(out, name)?;
                    }
                }
                AccessKeyPermission::FullAccess => out.push(PERMISSION_FULL_ACCESS),
            }
        }
        Action::DeleteKey { public_key } => {
            out.push(ACTION_DELETE_KEY);
            write_public_key(out, public_key);
        }
        Action::DeleteAccount { beneficiary_id } => {
            out.push(ACTION_DELETE_ACCOUNT);
            write_string(out, beneficiary_id.as_str())?;
        }
        Action::Delegate(signed) => {
            out.push(ACTION_DELEGATE);
            let delegate = &signed.delegate_action;
            write_string(out, delegate.sender_id.as_str())?;
            write_string(out, delegate.receiver_id.as_str())?;
            write_actions(out, &delegate.actions)?;
            out.extend_from_slice(&delegate.nonce.to_le_bytes());
            out.extend_from_slice(&delegate.max_block_height.to_le_bytes());
            write_public_key(out, &delegate.public_key);
            write_signature(out, &signed.signature);
        }
        Action::DeployGlobalContract { code, deploy_mode } => {
            out.push(ACTION_DEPLOY_GLOBAL_CONTRACT);
            write_bytes(out, code, "contract code")?;
            out.push(match deploy_mode {
                GlobalContractDeployMode::CodeHash => 0,
                GlobalContractDeployMode::AccountId => 1,
            });
        }
        Action::UseGlobalContract {
            contract_identifier,
        } => {
            out.push(ACTION_USE_GLOBAL_CONTRACT);
            match contract_identifier {
                GlobalContractIdentifier::CodeHash(hash) => {
                    out.push(0);
                    out.extend_from_slice(&hash.0);
                }
                GlobalContractIdentifier::AccountId(account_id) => {
                    out.push(1);
                    write_string(out, account_id.as_str())?;
                }
            }
        }
    }
    Ok(())
}

/// A cursor over borsh bytes; every error names the byte offset it stopped at.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    fn error(&self, reason: impl fmt::Display) -> Error {
        Error::InvalidInput {
            what: "borsh transaction",
            reason: format!("{reason} (at byte {})", self.position),
        }
    }

    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .position
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| {
                self.error(format!(
                    "{what} needs {len} bytes, {} left",
                    self.bytes.len() - self.position
                ))
            })?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(N, what)?);
        Ok(array)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn u128(&mut self, what: &str) -> Result<u128> {
        Ok(u128::from_le_bytes(self.array(what)?))
    }

    fn len(&mut self, what: &str) -> Result<usize> {
        let len = self.u32(what)?;
        usize::try_from(len).map_err(|_| self.error(format!("{what} length {len} is too large")))
    }

    fn bytes(&mut self, what: &str) -> Result<Vec<u8>> {
        let len = self.len(what)?;
        Ok(self.take(len, what)?.to_vec())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let start = self.position;
        let bytes = self.bytes(what)?;
        String::from_utf8(bytes).map_err(|error| {
            self.position = start;
            self.error(format!("{what} is not UTF-8: {error}"))
        })
    }

    fn account_id(&mut self, what: &str) -> Result<AccountId> {
        let start = self.position;
        let text = self.string(what)?;
        AccountId::parse(&text).map_err(|error| {
            self.position = start;
            self.error(format!("{what}: {error}"))
        })
    }

    fn key_type(&mut self, what: &str) -> Result<()> {
        match self.u8(what)? {
            KEY_TYPE_ED25519 => Ok(()),
            KEY_TYPE_SECP256K1 => {
                self.position -= 1;
                Err(self.error(format!("{what}: secp256k1 keys are not supported")))
            }
            other => {
                self.position -= 1;
                Err(self.error(format!("{what}: unknown key type tag {other}")))
            }
        }
    }

    fn public_key(&mut self, what: &str) -> Result<PublicKey> {
        self.key_type(what)?;
        let start = self.position;
        let bytes: [u8; 32] = self.array(what)?;
        PublicKey::from_bytes(&bytes).map_err(|error| {
            self.position = start;
            self.error(format!("{what}: {error}"))
        })
    }

    fn signature(&mut self) -> Result<Signature> {
        self.key_type("signature")?;
        let bytes: [u8; 64] = self.array("signature")?;
        Signature::from_bytes(&bytes).map_err(|error| self.error(format!("signature: {error}")))
    }

    fn transaction(&mut self) -> Result<Transaction> {
        Ok(Transaction {
            signer_id: self.account_id("signer_id")?,
            public_key: self.public_key("public_key")?,
            nonce: self.u64("nonce")?,
            receiver_id: self.account_id("receiver_id")?,
            block_hash: CryptoHash(self.array("block_hash")?),
            actions: self.actions(true)?,
        })
    }

    /// A `Vec<Action>`; a delegate action may not hold another one.
    fn actions(&mut self, allow_delegate: bool) -> Result<Vec<Action>> {
        let count = self.len("actions")?;
        // No capacity from the untrusted count: each action takes at least a
        // byte, so a lying count runs out of input instead of memory.
        let mut actions = Vec::new();
        for _ in 0..count {
            actions.push(self.action(allow_delegate)?);
        }
        Ok(actions)
    }

    fn action(&mut self, allow_delegate: bool) -> Result<Action> {
        let tag = self.u8("action tag")?;
        Ok(match tag {
            ACTION_CREATE_ACCOUNT => Action::CreateAccount,
            ACTION_DEPLOY_CONTRACT => Action::DeployContract {
                code: self.bytes("contract code")?,
            },
            ACTION_FUNCTION_CALL => Action::FunctionCall(FunctionCall {
                method_name: self.string("method_name")?,
                args: self.bytes("function call args")?,
                gas: self.u64("gas")?,
                deposit: self.u128("deposit")?,
            }),
            ACTION_TRANSFER => Action::Transfer {
                deposit: self.u128("deposit")?,
            },
            ACTION_STAKE => Action::Stake {
                stake: self.u128("stake")?,
                public_key: self.public_key("stake public_key")?,
            },
            ACTION_ADD_KEY => Action::AddKey {
                public_key: self.public_key("add_key public_key")?,
                access_key: self.access_key()?,
            },
            ACTION_DELETE_KEY => Action::DeleteKey {
                public_key: self.public_key("delete_key public_key")?,
            },
            ACTION_DELETE_ACCOUNT => Action::DeleteAccount {
                beneficiary_id: self.account_id("beneficiary_id")?,
            },
            ACTION_DELEGATE if allow_delegate => {
                let delegate_action = DelegateAction {
                    sender_id: self.account_id("delegate sender_id")?,
                    receiver_id: self.account_id("delegate receiver_id")?,
                    actions: self.actions(false)?,
                    nonce: self.u64("delegate nonce")?,
                    max_block_height: self.u64("delegate max_block_height")?,
                    public_key: self.public_key("delegate public_key")?,
                };
                Action::Delegate(Box::new(SignedDelegateAction {
                    delegate_action,
                    signature: self.signature()?,
                }))
            }
            ACTION_DELEGATE => {
                self.position -= 1;
                return Err(self.error("a delegate action may not contain another delegate action"));
            }
            ACTION_DEPLOY_GLOBAL_CONTRACT => Action::DeployGlobalContract {
                code: self.bytes("contract code")?,
                deploy_mode: match self.u8("global contract deploy mode")? {
                    0 => GlobalContractDeployMode::CodeHash,
                    1 => GlobalContractDeployMode::AccountId,
                    other => {
                        self.position -= 1;
                        return Err(
                            self.error(format!("unknown global contract deploy mode tag {other}"))
                        );
                    }
                },
            },
            ACTION_USE_GLOBAL_CONTRACT => Action::UseGlobalContract {
                contract_identifier: match self.u8("global contract identifier")? {
                    0 => GlobalContractIdentifier::CodeHash(CryptoHash(self.array("code hash")?)),
                    1 => GlobalContractIdentifier::AccountId(
                        self.account_id("global contract account_id")?,
                    ),
                    other => {
                        self.position -= 1;
                        return Err(
                            self.error(format!("unknown global contract identifier tag {other}"))
                        );
                    }
                },
            },
            other => {
                self.position -= 1;
                return Err(self.error(format!("unknown action tag {other}")));
            }
        })
    }

    fn access_key(&mut self) -> Result<AccessKey> {
        let nonce = self.u64("access key nonce")?;
        let permission = match self.u8("access key permission")? {
            PERMISSION_FUNCTION_CALL => {
                let allowance = match self.u8("allowance option")? {
                    0 => None,
                    1 => Some(self.u128("allowance")?),
                    other => {
                        self.position -= 1;
                        return Err(self.error(format!("invalid option tag {other}")));
                    }
                };
                let receiver_id = self.string("permission receiver_id")?;
                let count = self.len("method names")?;
                let mut method_names = Vec::new();
                for _ in 0..count {
                    method_names.push(self.string("method name")?);
                }
                AccessKeyPermission::FunctionCall {
                    allowance,
                    receiver_id,
                    method_names,
                }
            }
            PERMISSION_FULL_ACCESS => AccessKeyPermission::FullAccess,
            other => {
                self.position -= 1;
                return Err(self.error(format!("unknown access key permission tag {other}")));
            }
        };
        Ok(AccessKey { nonce, permission })
    }

    fn finish(&self) -> Result<()> {
        match self.bytes.len() - self.position {
            0 => Ok(()),
            left => Err(self.error(format!("{left} trailing bytes after the transaction"))),
        }
    }
}
