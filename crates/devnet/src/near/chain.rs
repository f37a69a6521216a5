//! The chain: blocks, accounts, access keys, transactions and their
//! outcomes in SQLite, and the contracts' state in [`LocalRegistry`]s.
//!
//! - Accounts and access keys are versioned by block height, so any block's
//!   state can be read: `final` simply reads an older height.
//! - Contract state lives in two in-memory [`LocalRegistry`]s per contract,
//!   "optimistic" (every applied call) and "final" (calls at least
//!   `final_lag` blocks old). Every successful state-changing call is logged
//!   in SQLite with its block height, caller and block timestamp; the final
//!   registry replays the log as the head advances, and both are rebuilt
//!   from the log at start. Replaying a call as the same caller with the
//!   same block timestamp gives the same state, so the log is the durable
//!   form of the contracts' state.
//! - Transactions are checked when submitted (as nearcore's RPC does), kept
//!   in a pool, and executed into the next block.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use delibera_identity::{Keypair, PublicKey};
use delibera_near::{
    AccessKeyPermission, AccountId, Action, CryptoHash, LocalRegistry, SignedTransaction,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::contracts::{self, CallError, ContractKind};
use super::wire::RpcFailure;
use crate::{Error, Result};

/// How many blocks after its `block_hash` a transaction stays valid (nearcore's default).
const TX_VALIDITY_PERIOD: u64 = 86_400;
/// nearcore gives a new access key the nonce `(height - 1) * this`, and
/// refuses transaction nonces above `height * this`.
const NONCE_RANGE: u64 = 1_000_000;
/// One NEAR in yoctoNEAR.
pub(crate) const ONE_NEAR: u128 = 1_000_000_000_000_000_000_000_000;
/// What the faucet gives a new account.
pub(crate) const FAUCET_AMOUNT: u128 = 100 * ONE_NEAR;
/// The admin's genesis balance.
const ADMIN_AMOUNT: u128 = 1_000_000 * ONE_NEAR;
/// The genesis balance of the contract accounts.
const CONTRACT_AMOUNT: u128 = 10 * ONE_NEAR;
/// The gas price blocks report (gas is not charged on the devnet).
pub(crate) const GAS_PRICE: &str = "100000000";
/// The protocol version reported by `status` and in errors.
pub(crate) const PROTOCOL_VERSION: u64 = 73;
/// Gas reported as burnt by a transaction's conversion to a receipt.
const TX_GAS_BURNT: u64 = 223_182_562_500;
/// Gas reported as burnt by a receipt.
const RECEIPT_GAS_BURNT: u64 = 2_428_003_729_468;
/// The height used to read the latest state, pending block included.
const LATEST: u64 = u64::MAX;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (
    height       INTEGER PRIMARY KEY,
    hash         TEXT NOT NULL UNIQUE,
    prev_hash    TEXT NOT NULL,
    timestamp_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    account_id TEXT NOT NULL,
    height     INTEGER NOT NULL,
    amount     TEXT NOT NULL,
    contract   TEXT,
    owner      TEXT,
    deleted    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, height)
);
CREATE TABLE IF NOT EXISTS access_keys (
    account_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    height     INTEGER NOT NULL,
    nonce      TEXT NOT NULL,
    permission TEXT NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, public_key, height)
);
CREATE TABLE IF NOT EXISTS transactions (
    hash      TEXT PRIMARY KEY,
    signer_id TEXT NOT NULL,
    height    INTEGER NOT NULL,
    outcome   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS contract_calls (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    height       INTEGER NOT NULL,
    timestamp_ns INTEGER NOT NULL,
    contract     TEXT NOT NULL,
    caller       TEXT NOT NULL,
    method       TEXT NOT NULL,
    args         BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS genesis_keys (
    account_id TEXT PRIMARY KEY,
    secret_key TEXT NOT NULL
);
";

/// The accounts the chain is made with.
#[derive(Debug, Clone)]
pub(crate) struct ChainConfig {
    pub(crate) registry: AccountId,
    pub(crate) roster: AccountId,
    pub(crate) factory: AccountId,
    pub(crate) admin: AccountId,
    pub(crate) final_lag: u64,
}

/// A block header's own fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) height: u64,
    pub(crate) hash: CryptoHash,
    pub(crate) prev_hash: CryptoHash,
    pub(crate) timestamp: u64,
}

impl Block {
    fn new(height: u64, prev_hash: CryptoHash, timestamp: u64) -> Self {
        let mut bytes = b"delibera-devnet block".to_vec();
        bytes.extend_from_slice(&height.to_le_bytes());
        bytes.extend_from_slice(&prev_hash.0);
        bytes.extend_from_slice(&timestamp.to_le_bytes());
        Self {
            height,
            hash: CryptoHash::sha256(&bytes),
            prev_hash,
            timestamp,
        }
    }
}

/// An account at some height.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccountState {
    pub(crate) amount: u128,
    pub(crate) contract: Option<ContractKind>,
    pub(crate) owner: Option<AccountId>,
}

/// An access key at some height; `permission` is nearcore's view JSON.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeyState {
    pub(crate) nonce: u64,
    pub(crate) permission: Value,
}

/// What the chain knows of a transaction.
#[derive(Debug, Clone)]
pub(crate) enum TxState {
    /// Executed in the block at `height`.
    Executed { height: u64, outcome: Value },
    /// In the pool, to be executed in the next block.
    Pending,
    /// Dropped from the pool when it came to execution (its `InvalidTxError`).
    Rejected(Value),
    /// Never seen.
    Unknown,
}

/// A view call's result: the return bytes, or nearcore's legacy error text.
pub(crate) type ViewResult = std::result::Result<Vec<u8>, String>;

/// A contract's two states.
struct ContractState {
    kind: ContractKind,
    optimistic: LocalRegistry,
    final_: LocalRegistry,
}

impl ContractState {
    fn new(kind: ContractKind, owner: &AccountId) -> Result<Self> {
        Ok(Self {
            kind,
            optimistic: LocalRegistry::in_memory(owner.clone())?,
            final_: LocalRegistry::in_memory(owner.clone())?,
        })
    }
}

/// A logged contract call.
struct LoggedCall {
    seq: i64,
    height: u64,
    timestamp: u64,
    contract: String,
    caller: String,
    method: String,
    args: Vec<u8>,
}

/// Why an action failed: its `ActionErrorKind`, or a storage fault.
enum Fail {
    Action(Value),
    Storage(Error),
}

impl From<rusqlite::Error> for Fail {
    fn from(error: rusqlite::Error) -> Self {
        Self::Storage(error.into())
    }
}

impl From<Error> for Fail {
    fn from(error: Error) -> Self {
        Self::Storage(error)
    }
}

/// What one transaction's execution has done so far.
#[derive(Default)]
struct Execution {
    /// The receiver was created by this transaction.
    created: bool,
    /// A contract's state (or the set of contracts) changed.
    touched_contracts: bool,
}

/// The whole chain; one lock guards it.
pub(crate) struct Chain {
    db: Connection,
    config: ChainConfig,
    contracts: HashMap<AccountId, ContractState>,
    /// The last logged call replayed into the final states.
    final_seq: i64,
    pool: Vec<SignedTransaction>,
    rejected: HashMap<CryptoHash, Value>,
    head: Block,
    genesis: Block,
}

fn sql_u64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_sql_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::Config {
        reason: format!("the NEAR devnet state holds an unreadable {what}: {detail}"),
    }
}

fn permission_json(permission: &AccessKeyPermission) -> Value {
    match permission {
        AccessKeyPermission::FullAccess => json!("FullAccess"),
        AccessKeyPermission::FunctionCall {
            allowance,
            receiver_id,
            method_names,
        } => json!({"FunctionCall": {
            "allowance": allowance.map(|amount| amount.to_string()),
            "receiver_id": receiver_id,
            "method_names": method_names,
        }}),
    }
}

fn signature_text(bytes: &[u8]) -> String {
    format!("ed25519:{}", bs58::encode(bytes).into_string())
}

/// nearcore's `ActionView` JSON of an action.
pub(crate) fn action_view(action: &Action) -> Value {
    match action {
        Action::CreateAccount => json!("CreateAccount"),
        Action::DeployContract { code } => {
            json!({"DeployContract": {"code": BASE64.encode(CryptoHash::sha256(code).0)}})
        }
        Action::FunctionCall(call) => json!({"FunctionCall": {
            "method_name": call.method_name,
            "args": BASE64.encode(&call.args),
            "gas": call.gas,
            "deposit": call.deposit.to_string(),
        }}),
        Action::Transfer { deposit } => json!({"Transfer": {"deposit": deposit.to_string()}}),
        Action::Stake { stake, public_key } => json!({"Stake": {
            "stake": stake.to_string(),
            "public_key": public_key.to_near_string(),
        }}),
        Action::AddKey {
            public_key,
            access_key,
        } => json!({"AddKey": {
            "public_key": public_key.to_near_string(),
            "access_key": {
                "nonce": access_key.nonce,
                "permission": permission_json(&access_key.permission),
            },
        }}),
        Action::DeleteKey { public_key } => {
            json!({"DeleteKey": {"public_key": public_key.to_near_string()}})
        }
        Action::DeleteAccount { beneficiary_id } => {
            json!({"DeleteAccount": {"beneficiary_id": beneficiary_id.as_str()}})
        }
        Action::Delegate(signed) => {
            let delegate = &signed.delegate_action;
            json!({"Delegate": {
                "delegate_action": {
                    "sender_id": delegate.sender_id.as_str(),
                    "receiver_id": delegate.receiver_id.as_str(),
                    "actions": delegate.actions.iter().map(action_view).collect::<Vec<_>>(),
                    "nonce": delegate.nonce,
                    "max_block_height": delegate.max_block_height,
                    "public_key": delegate.public_key.to_near_string(),
                },
                "signature": signature_text(signed.signature.as_bytes()),
            }})
        }
        Action::DeployGlobalContract { code, .. } => {
            json!({"DeployGlobalContract": {"code": BASE64.encode(CryptoHash::sha256(code).0)}})
        }
        Action::UseGlobalContract { .. } => json!({"UseGlobalContract": {}}),
        _ => json!("Unknown"),
    }
}

fn action_name(action: &Action) -> &'static str {
    match action {
        Action::CreateAccount => "CreateAccount",
        Action::DeployContract { .. } => "DeployContract",
        Action::FunctionCall(_) => "FunctionCall",
        Action::Transfer { .. } => "Transfer",
        Action::Stake { .. } => "Stake",
        Action::AddKey { .. } => "AddKey",
        Action::DeleteKey { .. } => "DeleteKey",
        Action::DeleteAccount { .. } => "DeleteAccount",
        Action::Delegate(_) => "Delegate",
        Action::DeployGlobalContract { .. } => "DeployGlobalContract",
        Action::UseGlobalContract { .. } => "UseGlobalContract",
        _ => "this action",
    }
}

/// The legacy text nearcore puts in `result.error` for a failed view call.
fn legacy_view_error(error: &CallError) -> String {
    let detail = match error {
        CallError::Panic(message) => format!("HostError(GuestPanic {{ panic_msg: {message:?} }})"),
        CallError::MethodNotFound => "MethodResolveError(MethodNotFound)".to_owned(),
        CallError::ProhibitedInView => {
            "HostError(ProhibitedInView { method_name: \"predecessor_account_id\" })".to_owned()
        }
        CallError::Internal(message) => format!("devnet internal error: {message}"),
    };
    format!("wasm execution failed with error: {detail}")
}

/// The `ActionErrorKind` of a failed function call.
fn call_failure(error: CallError) -> Value {
    match error {
        CallError::Panic(message) => json!({"FunctionCallError": {
            "ExecutionError": format!("Smart contract panicked: {message}")
        }}),
        CallError::MethodNotFound | CallError::ProhibitedInView => {
            json!({"FunctionCallError": {"MethodResolveError": "MethodNotFound"}})
        }
        CallError::Internal(message) => json!({"FunctionCallError": {
            "ExecutionError": format!("devnet internal error: {message}")
        }}),
    }
}

/// Whether `child` is a direct sub-account of `parent` (`a.parent`).
fn is_direct_sub_account(child: &AccountId, parent: &AccountId) -> bool {
    child
        .as_str()
        .strip_suffix(parent.as_str())
        .and_then(|prefix| prefix.strip_suffix('.'))
        .is_some_and(|name| !name.is_empty() && !name.contains('.'))
}

impl Chain {
    /// Opens (or makes, with its genesis) the chain in `dir`.
    pub(crate) fn open(dir: &Path, config: ChainConfig, now: u64) -> Result<Self> {
        delibera_data_dir::private_dir(dir)?;
        let path = dir.join("near.sqlite");
        delibera_data_dir::prepare_sqlite_file(&path)?;
        let db = Connection::open(path)?;
        db.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        db.execute_batch(SCHEMA)?;
        let placeholder = Block::new(0, CryptoHash([0; 32]), now);
        let mut chain = Self {
            db,
            config,
            contracts: HashMap::new(),
            final_seq: 0,
            pool: Vec::new(),
            rejected: HashMap::new(),
            head: placeholder,
            genesis: placeholder,
        };
        match chain.block_at(0)? {
            None => chain.make_genesis(now)?,
            Some(genesis) => {
                chain.genesis = genesis;
                chain.check_config()?;
            }
        }
        chain.head = chain.latest_block()?;
        chain.rebuild_contracts()?;
        Ok(chain)
    }

    fn make_genesis(&mut self, now: u64) -> Result<()> {
        let genesis = Block::new(0, CryptoHash([0; 32]), now);
        // One SQLite transaction: a genesis is written whole or not at all.
        let tx = self.db.unchecked_transaction()?;
        self.db.execute(
            "INSERT INTO blocks (height, hash, prev_hash, timestamp_ns) VALUES (0, ?1, ?2, ?3)",
            params![
                genesis.hash.to_base58(),
                genesis.prev_hash.to_base58(),
                sql_u64(now)
            ],
        )?;
        for (key, value) in self.config_pairs() {
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )?;
        }
        self.genesis = genesis;
        self.head = genesis;
        let admin = self.config.admin.clone();
        let accounts = [
            (admin.clone(), ADMIN_AMOUNT, None),
            (
                self.config.registry.clone(),
                CONTRACT_AMOUNT,
                Some(ContractKind::Registry),
            ),
            (
                self.config.roster.clone(),
                CONTRACT_AMOUNT,
                Some(ContractKind::Roster),
            ),
            (
                self.config.factory.clone(),
                CONTRACT_AMOUNT,
                Some(ContractKind::Factory),
            ),
        ];
        for (account_id, amount, contract) in accounts {
            self.put_account(
                &account_id,
                0,
                Some(&AccountState {
                    amount,
                    contract,
                    owner: contract.map(|_| admin.clone()),
                }),
            )?;
        }
        let keypair = Keypair::generate();
        self.put_key(
            &admin,
            &keypair.public_key(),
            0,
            Some(&KeyState {
                nonce: 0,
                permission: json!("FullAccess"),
            }),
        )?;
        self.db.execute(
            "INSERT INTO genesis_keys (account_id, secret_key) VALUES (?1, ?2)",
            params![admin.as_str(), keypair.to_near_secret_string().as_str()],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn config_pairs(&self) -> [(&'static str, String); 4] {
        [
            ("admin", self.config.admin.to_string()),
            ("registry", self.config.registry.to_string()),
            ("roster", self.config.roster.to_string()),
            ("factory", self.config.factory.to_string()),
        ]
    }

    /// A chain made with other accounts cannot be reused under this configuration.
    fn check_config(&self) -> Result<()> {
        for (key, expected) in self.config_pairs() {
            let found: Option<String> = self
                .db
                .query_row(
                    "SELECT value FROM meta WHERE key = ?1",
                    params![key],
                    |row| row.get(0),
                )
                .optional()?;
            if found.as_deref() != Some(expected.as_str()) {
                return Err(Error::Config {
                    reason: format!(
                        "the NEAR devnet in this data directory was made with {key} {}, not {expected}; use another directory",
                        found.unwrap_or_else(|| "(none)".to_owned())
                    ),
                });
            }
        }
        Ok(())
    }

    // --- blocks ---

    fn block_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, String, i64)> {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
    }

    fn to_block(raw: (i64, String, String, i64)) -> Result<Block> {
        let (height, hash, prev_hash, timestamp) = raw;
        Ok(Block {
            height: from_sql_u64(height),
            hash: CryptoHash::from_base58(&hash).map_err(|error| corrupt("block hash", error))?,
            prev_hash: CryptoHash::from_base58(&prev_hash)
                .map_err(|error| corrupt("block hash", error))?,
            timestamp: from_sql_u64(timestamp),
        })
    }

    /// The block at `height`, if the chain has it.
    pub(crate) fn block_at(&self, height: u64) -> Result<Option<Block>> {
        self.db
            .query_row(
                "SELECT height, hash, prev_hash, timestamp_ns FROM blocks WHERE height = ?1",
                params![sql_u64(height)],
                Self::block_from_row,
            )
            .optional()?
            .map(Self::to_block)
            .transpose()
    }

    /// The block with this hash, if the chain has it.
    pub(crate) fn block_by_hash(&self, hash: &CryptoHash) -> Result<Option<Block>> {
        self.db
            .query_row(
                "SELECT height, hash, prev_hash, timestamp_ns FROM blocks WHERE hash = ?1",
                params![hash.to_base58()],
                Self::block_from_row,
            )
            .optional()?
            .map(Self::to_block)
            .transpose()
    }

    fn latest_block(&self) -> Result<Block> {
        let raw = self.db.query_row(
            "SELECT height, hash, prev_hash, timestamp_ns FROM blocks ORDER BY height DESC LIMIT 1",
            [],
            Self::block_from_row,
        )?;
        Self::to_block(raw)
    }

    /// The optimistic head.
    pub(crate) fn head(&self) -> Block {
        self.head
    }

    /// The genesis block.
    pub(crate) fn genesis(&self) -> Block {
        self.genesis
    }

    /// How many blocks `final` lags behind the head.
    pub(crate) fn final_lag(&self) -> u64 {
        self.config.final_lag
    }

    /// The height of the latest final block.
    pub(crate) fn final_height(&self) -> u64 {
        self.head.height.saturating_sub(self.config.final_lag)
    }

    /// The latest final block.
    pub(crate) fn final_block(&self) -> Result<Block> {
        Ok(self.block_at(self.final_height())?.unwrap_or(self.genesis))
    }

    // --- accounts and keys, versioned by height ---

    /// The account as of block `height`.
    pub(crate) fn account_at(&self, account_id: &str, height: u64) -> Result<Option<AccountState>> {
        let row: Option<(String, Option<String>, Option<String>, bool)> = self
            .db
            .query_row(
                "SELECT amount, contract, owner, deleted FROM accounts
                 WHERE account_id = ?1 AND height <= ?2 ORDER BY height DESC LIMIT 1",
                params![account_id, sql_u64(height)],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()?;
        let Some((amount, contract, owner, deleted)) = row else {
            return Ok(None);
        };
        if deleted {
            return Ok(None);
        }
        Ok(Some(AccountState {
            amount: amount.parse().map_err(|error| corrupt("balance", error))?,
            contract: contract.as_deref().and_then(ContractKind::parse),
            owner: owner
                .map(AccountId::try_from)
                .transpose()
                .map_err(|error| corrupt("account owner", error))?,
        }))
    }

    fn put_account(
        &self,
        account_id: &AccountId,
        height: u64,
        state: Option<&AccountState>,
    ) -> Result<()> {
        self.db.execute(
            "INSERT OR REPLACE INTO accounts (account_id, height, amount, contract, owner, deleted)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                account_id.as_str(),
                sql_u64(height),
                state.map_or_else(|| "0".to_owned(), |state| state.amount.to_string()),
                state.and_then(|state| state.contract.map(ContractKind::as_str)),
                state.and_then(|state| state.owner.as_ref().map(AccountId::as_str)),
                state.is_none(),
            ],
        )?;
        Ok(())
    }

    fn key_from_row(nonce: String, permission: String) -> Result<KeyState> {
        Ok(KeyState {
            nonce: nonce.parse().map_err(|error| corrupt("nonce", error))?,
            permission: serde_json::from_str(&permission)
                .map_err(|error| corrupt("permission", error))?,
        })
    }

    /// The access key as of block `height`.
    pub(crate) fn key_at(
        &self,
        account_id: &str,
        public_key: &str,
        height: u64,
    ) -> Result<Option<KeyState>> {
        let row: Option<(String, String, bool)> = self
            .db
            .query_row(
                "SELECT nonce, permission, deleted FROM access_keys
                 WHERE account_id = ?1 AND public_key = ?2 AND height <= ?3
                 ORDER BY height DESC LIMIT 1",
                params![account_id, public_key, sql_u64(height)],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        match row {
            Some((nonce, permission, false)) => Ok(Some(Self::key_from_row(nonce, permission)?)),
            _ => Ok(None),
        }
    }

    /// Every access key of the account as of block `height`.
    pub(crate) fn keys_at(&self, account_id: &str, height: u64) -> Result<Vec<(String, KeyState)>> {
        let mut statement = self.db.prepare(
            "SELECT public_key, nonce, permission FROM access_keys AS k
             WHERE account_id = ?1 AND deleted = 0 AND height = (
                 SELECT MAX(height) FROM access_keys
                 WHERE account_id = k.account_id AND public_key = k.public_key AND height <= ?2)
             ORDER BY public_key",
        )?;
        let rows = statement.query_map(params![account_id, sql_u64(height)], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut keys = Vec::new();
        for row in rows {
            let (public_key, nonce, permission) = row?;
            keys.push((public_key, Self::key_from_row(nonce, permission)?));
        }
        Ok(keys)
    }

    fn put_key(
        &self,
        account_id: &AccountId,
        public_key: &PublicKey,
        height: u64,
        state: Option<&KeyState>,
    ) -> Result<()> {
        self.db.execute(
            "INSERT OR REPLACE INTO access_keys (account_id, public_key, height, nonce, permission, deleted)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                account_id.as_str(),
                public_key.to_near_string(),
                sql_u64(height),
                state.map_or(0, |state| state.nonce).to_string(),
                state.map_or(Value::Null, |state| state.permission.clone()).to_string(),
                state.is_none(),
            ],
        )?;
        Ok(())
    }

    // --- faucet ---

    /// Makes `account_id` with a fresh full-access key and the faucet's
    /// balance. It is written at the final height, so both `final` and
    /// `optimistic` see it at once.
    pub(crate) fn create_account(&mut self, account_id: &AccountId) -> Result<Keypair> {
        if self.account_at(account_id.as_str(), LATEST)?.is_some() {
            return Err(Error::AccountExists {
                account_id: account_id.to_string(),
            });
        }
        let height = self.final_height();
        let keypair = Keypair::generate();
        let tx = self.db.unchecked_transaction()?;
        self.put_account(
            account_id,
            height,
            Some(&AccountState {
                amount: FAUCET_AMOUNT,
                contract: None,
                owner: None,
            }),
        )?;
        self.put_key(
            account_id,
            &keypair.public_key(),
            height,
            Some(&KeyState {
                nonce: height.saturating_sub(1) * NONCE_RANGE,
                permission: json!("FullAccess"),
            }),
        )?;
        tx.commit()?;
        Ok(keypair)
    }

    /// The admin's genesis secret key (`ed25519:…`).
    pub(crate) fn admin_secret(&self) -> Result<Zeroizing<String>> {
        let secret: String = self.db.query_row(
            "SELECT secret_key FROM genesis_keys WHERE account_id = ?1",
            params![self.config.admin.as_str()],
            |row| row.get(0),
        )?;
        Ok(Zeroizing::new(secret))
    }

    /// The admin account.
    pub(crate) fn admin(&self) -> &AccountId {
        &self.config.admin
    }

    // --- contract state ---

    /// Rebuilds every contract's optimistic and final state from the call log.
    fn rebuild_contracts(&mut self) -> Result<()> {
        let mut statement = self.db.prepare(
            "SELECT account_id, contract, owner FROM accounts AS a
             WHERE deleted = 0 AND contract IS NOT NULL AND height = (
                 SELECT MAX(height) FROM accounts WHERE account_id = a.account_id)",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
            ))
        })?;
        let mut contracts = HashMap::new();
        for row in rows {
            let (account_id, contract, owner) = row?;
            let Some(kind) = ContractKind::parse(&contract).filter(|kind| kind.has_state()) else {
                continue;
            };
            let account_id =
                AccountId::try_from(account_id).map_err(|error| corrupt("account id", error))?;
            let owner = owner
                .map(AccountId::try_from)
                .transpose()
                .map_err(|error| corrupt("account owner", error))?
                .unwrap_or_else(|| self.config.admin.clone());
            contracts.insert(account_id, ContractState::new(kind, &owner)?);
        }
        drop(statement);
        self.contracts = contracts;
        self.final_seq = 0;
        let final_height = self.final_height();
        for call in self.logged_calls(0, u64::MAX)? {
            let is_final = call.height <= final_height;
            self.replay(&call, false);
            if is_final {
                self.replay(&call, true);
                self.final_seq = call.seq;
            }
        }
        Ok(())
    }

    fn logged_calls(&self, after_seq: i64, up_to_height: u64) -> Result<Vec<LoggedCall>> {
        let mut statement = self.db.prepare(
            "SELECT seq, height, timestamp_ns, contract, caller, method, args FROM contract_calls
             WHERE seq > ?1 AND height <= ?2 ORDER BY seq",
        )?;
        let rows = statement.query_map(params![after_seq, sql_u64(up_to_height)], |row| {
            Ok(LoggedCall {
                seq: row.get(0)?,
                height: from_sql_u64(row.get(1)?),
                timestamp: from_sql_u64(row.get(2)?),
                contract: row.get(3)?,
                caller: row.get(4)?,
                method: row.get(5)?,
                args: row.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Applies a logged call to a contract's optimistic or final state. Only
    /// successful calls are logged, so a failure here means the log and the
    /// contracts disagree: it is reported, not fatal.
    fn replay(&self, call: &LoggedCall, to_final: bool) {
        let Some(state) = AccountId::parse(&call.contract)
            .ok()
            .and_then(|contract| self.contracts.get(&contract))
        else {
            tracing::warn!(contract = %call.contract, seq = call.seq, "logged call to an unknown contract");
            return;
        };
        let Ok(caller) = AccountId::parse(&call.caller) else {
            tracing::warn!(seq = call.seq, "logged call with an invalid caller");
            return;
        };
        let registry = if to_final {
            &state.final_
        } else {
            &state.optimistic
        };
        if let Err(error) = contracts::change(
            state.kind,
            registry,
            &caller,
            &call.method,
            &call.args,
            call.timestamp,
        ) {
            tracing::warn!(
                seq = call.seq,
                ?error,
                "a logged contract call failed on replay"
            );
        }
    }

    /// Replays into the final states the calls that became final.
    fn advance_final(&mut self) -> Result<()> {
        for call in self.logged_calls(self.final_seq, self.final_height())? {
            self.replay(&call, true);
            self.final_seq = call.seq;
        }
        Ok(())
    }

    /// A view call of `method` on `account_id` as of `block`. Contract state
    /// comes from whichever of the optimistic and final states is nearer.
    pub(crate) fn view_call(
        &self,
        account_id: &str,
        method: &str,
        args: &[u8],
        block: &Block,
    ) -> std::result::Result<ViewResult, RpcFailure> {
        let Some(account) = self.account_at(account_id, block.height)? else {
            return Err(RpcFailure::unknown_account(
                account_id,
                block.height,
                &block.hash.to_base58(),
            ));
        };
        let Some(kind) = account.contract else {
            return Ok(Err(format!(
                "wasm execution failed with error: CompilationError(CodeDoesNotExist {{ account_id: {account_id:?} }})"
            )));
        };
        let state = AccountId::parse(account_id)
            .ok()
            .and_then(|id| self.contracts.get(&id))
            .map(|state| {
                let from_head = self.head.height.saturating_sub(block.height);
                let from_final = block.height.saturating_sub(self.final_height());
                if block.height > self.final_height() && from_head <= from_final {
                    &state.optimistic
                } else {
                    &state.final_
                }
            });
        match contracts::view(kind, state, method, args) {
            Ok(bytes) => Ok(Ok(bytes)),
            Err(CallError::Internal(message)) => Err(RpcFailure::internal(message)),
            Err(error) => Ok(Err(legacy_view_error(&error))),
        }
    }

    // --- transactions ---

    /// Whether transactions wait for the next block.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pool.is_empty()
    }

    /// What the chain knows of the transaction.
    pub(crate) fn tx_state(&self, hash: &CryptoHash) -> Result<TxState> {
        let row: Option<(i64, String)> = self
            .db
            .query_row(
                "SELECT height, outcome FROM transactions WHERE hash = ?1",
                params![hash.to_base58()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        if let Some((height, outcome)) = row {
            return Ok(TxState::Executed {
                height: from_sql_u64(height),
                outcome: serde_json::from_str(&outcome)
                    .map_err(|error| corrupt("transaction outcome", error))?,
            });
        }
        if self.pool.iter().any(|signed| &signed.hash() == hash) {
            return Ok(TxState::Pending);
        }
        Ok(match self.rejected.get(hash) {
            Some(error) => TxState::Rejected(error.clone()),
            None => TxState::Unknown,
        })
    }

    /// Checks a transaction as nearcore does when it arrives, and pools it
    /// for the next block. A transaction already known is left as it is
    /// (sending the same bytes again is harmless).
    pub(crate) fn submit(
        &mut self,
        signed: SignedTransaction,
    ) -> std::result::Result<(), RpcFailure> {
        match self.tx_state(&signed.hash())? {
            TxState::Executed { .. } | TxState::Pending => return Ok(()),
            TxState::Rejected(_) | TxState::Unknown => {}
        }
        self.check(&signed, true)?
            .map_err(RpcFailure::invalid_transaction)?;
        self.rejected.remove(&signed.hash());
        self.pool.push(signed);
        Ok(())
    }

    /// nearcore's transaction checks, in its order; the inner error is the
    /// `InvalidTxError` JSON. With `with_pool`, pooled transactions count as
    /// having used their nonces.
    fn check(
        &self,
        signed: &SignedTransaction,
        with_pool: bool,
    ) -> Result<std::result::Result<(), Value>> {
        let tx = signed.transaction();
        match self.block_by_hash(&tx.block_hash)? {
            Some(block) if self.head.height.saturating_sub(block.height) <= TX_VALIDITY_PERIOD => {}
            _ => return Ok(Err(json!("Expired"))),
        }
        if signed.verify_signature().is_err() {
            return Ok(Err(json!("InvalidSignature")));
        }
        let signer_id = tx.signer_id.as_str();
        let Some(signer) = self.account_at(signer_id, LATEST)? else {
            return Ok(Err(json!({"SignerDoesNotExist": {"signer_id": signer_id}})));
        };
        let public_key = tx.public_key.to_near_string();
        let Some(key) = self.key_at(signer_id, &public_key, LATEST)? else {
            return Ok(Err(json!({"InvalidAccessKeyError": {"AccessKeyNotFound": {
                "account_id": signer_id,
                "public_key": public_key,
            }}})));
        };
        let mut ak_nonce = key.nonce;
        if with_pool {
            for pooled in &self.pool {
                let pooled = pooled.transaction();
                if pooled.signer_id == tx.signer_id && pooled.public_key == tx.public_key {
                    ak_nonce = ak_nonce.max(pooled.nonce);
                }
            }
        }
        if tx.nonce <= ak_nonce {
            return Ok(Err(
                json!({"InvalidNonce": {"tx_nonce": tx.nonce, "ak_nonce": ak_nonce}}),
            ));
        }
        let upper_bound = (self.head.height + 1).saturating_mul(NONCE_RANGE);
        if tx.nonce > upper_bound {
            return Ok(Err(json!({"NonceTooLarge": {
                "tx_nonce": tx.nonce,
                "upper_bound": upper_bound,
            }})));
        }
        let mut cost: u128 = 0;
        for action in &tx.actions {
            let deposit = match action {
                Action::Transfer { deposit } => *deposit,
                Action::FunctionCall(call) => call.deposit,
                _ => 0,
            };
            let Some(sum) = cost.checked_add(deposit) else {
                return Ok(Err(json!("CostOverflow")));
            };
            cost = sum;
        }
        if cost > signer.amount {
            return Ok(Err(json!({"NotEnoughBalance": {
                "signer_id": signer_id,
                "balance": signer.amount.to_string(),
                "cost": cost.to_string(),
            }})));
        }
        if let Some(permission) = key.permission.get("FunctionCall") {
            let denied = |reason: Value| Ok(Err(json!({"InvalidAccessKeyError": reason})));
            let [Action::FunctionCall(call)] = tx.actions.as_slice() else {
                return denied(json!("RequiresFullAccess"));
            };
            if call.deposit > 0 {
                return denied(json!("DepositWithFunctionCall"));
            }
            let ak_receiver = permission
                .get("receiver_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if tx.receiver_id.as_str() != ak_receiver {
                return denied(json!({"ReceiverMismatch": {
                    "tx_receiver": tx.receiver_id.as_str(),
                    "ak_receiver": ak_receiver,
                }}));
            }
            let methods = permission
                .get("method_names")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !methods.is_empty()
                && !methods
                    .iter()
                    .any(|name| name.as_str() == Some(call.method_name.as_str()))
            {
                return denied(json!({"MethodNameMismatch": {"method_name": call.method_name}}));
            }
        }
        Ok(Ok(()))
    }

    /// Produces the next block at `timestamp`: executes the pooled
    /// transactions into it, then replays into the final states what
    /// became final.
    pub(crate) fn produce_block(&mut self, timestamp: u64) -> Result<Block> {
        let timestamp = timestamp.max(self.head.timestamp + 1);
        let block = Block::new(self.head.height + 1, self.head.hash, timestamp);
        let pool = std::mem::take(&mut self.pool);
        self.db.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| -> Result<()> {
            for signed in pool {
                self.execute(signed, &block)?;
            }
            self.db.execute(
                "INSERT INTO blocks (height, hash, prev_hash, timestamp_ns) VALUES (?1, ?2, ?3, ?4)",
                params![
                    sql_u64(block.height),
                    block.hash.to_base58(),
                    block.prev_hash.to_base58(),
                    sql_u64(block.timestamp)
                ],
            )?;
            Ok(())
        })();
        match result {
            Ok(()) => self.db.execute_batch("COMMIT")?,
            Err(error) => {
                // Nothing of this block is kept: the contracts go back to the log.
                let _ = self.db.execute_batch("ROLLBACK");
                self.rebuild_contracts()?;
                return Err(error);
            }
        }
        self.head = block;
        self.advance_final()?;
        Ok(block)
    }

    /// Executes one pooled transaction in `block`, or drops it if it is no
    /// longer valid (another transaction took its nonce or its balance).
    fn execute(&mut self, signed: SignedTransaction, block: &Block) -> Result<()> {
        if let Err(invalid) = self.check(&signed, false)? {
            self.rejected.insert(signed.hash(), invalid);
            return Ok(());
        }
        let tx = signed.transaction();
        // The nonce is used even if an action fails.
        if let Some(mut key) = self.key_at(
            tx.signer_id.as_str(),
            &tx.public_key.to_near_string(),
            LATEST,
        )? {
            key.nonce = tx.nonce;
            self.put_key(&tx.signer_id, &tx.public_key, block.height, Some(&key))?;
        }
        self.db.execute_batch("SAVEPOINT actions")?;
        let mut execution = Execution::default();
        let mut value = Vec::new();
        let mut failure = None;
        for (index, action) in tx.actions.iter().enumerate() {
            match self.apply(&signed, action, block, &mut execution) {
                Ok(returned) => value = returned,
                Err(Fail::Action(kind)) => {
                    failure = Some(json!({"ActionError": {"index": index, "kind": kind}}));
                    break;
                }
                Err(Fail::Storage(error)) => return Err(error),
            }
        }
        let status = match failure {
            Some(failure) => {
                // As on chain, a failed receipt changes nothing but the nonce.
                self.db
                    .execute_batch("ROLLBACK TO SAVEPOINT actions; RELEASE SAVEPOINT actions")?;
                if execution.touched_contracts {
                    self.rebuild_contracts()?;
                }
                json!({ "Failure": failure })
            }
            None => {
                self.db.execute_batch("RELEASE SAVEPOINT actions")?;
                json!({ "SuccessValue": BASE64.encode(&value) })
            }
        };
        let outcome = outcome_json(&signed, block, status);
        self.db.execute(
            "INSERT INTO transactions (hash, signer_id, height, outcome) VALUES (?1, ?2, ?3, ?4)",
            params![
                signed.hash().to_base58(),
                tx.signer_id.as_str(),
                sql_u64(block.height),
                outcome.to_string()
            ],
        )?;
        Ok(())
    }

    fn apply(
        &mut self,
        signed: &SignedTransaction,
        action: &Action,
        block: &Block,
        execution: &mut Execution,
    ) -> std::result::Result<Vec<u8>, Fail> {
        let tx = signed.transaction();
        let (signer, receiver) = (&tx.signer_id, &tx.receiver_id);
        let receiver_exists = |chain: &Self| -> std::result::Result<AccountState, Fail> {
            chain.account_at(receiver.as_str(), LATEST)?.ok_or_else(|| {
                Fail::Action(json!({"AccountDoesNotExist": {"account_id": receiver.as_str()}}))
            })
        };
        let actor_allowed = |execution: &Execution| -> std::result::Result<(), Fail> {
            if receiver == signer || execution.created {
                Ok(())
            } else {
                Err(Fail::Action(json!({"ActorNoPermission": {
                    "account_id": receiver.as_str(),
                    "actor_id": signer.as_str(),
                }})))
            }
        };
        match action {
            Action::CreateAccount => {
                if self.account_at(receiver.as_str(), LATEST)?.is_some() {
                    return Err(Fail::Action(
                        json!({"AccountAlreadyExists": {"account_id": receiver.as_str()}}),
                    ));
                }
                if !is_direct_sub_account(receiver, signer) {
                    return Err(Fail::Action(json!({"CreateAccountNotAllowed": {
                        "account_id": receiver.as_str(),
                        "predecessor_id": signer.as_str(),
                    }})));
                }
                self.put_account(
                    receiver,
                    block.height,
                    Some(&AccountState {
                        amount: 0,
                        contract: None,
                        owner: None,
                    }),
                )?;
                execution.created = true;
                Ok(Vec::new())
            }
            Action::Transfer { deposit } => {
                receiver_exists(self)?;
                self.move_balance(signer, receiver, *deposit, block.height)?;
                Ok(Vec::new())
            }
            Action::FunctionCall(call) => {
                let account = receiver_exists(self)?;
                self.move_balance(signer, receiver, call.deposit, block.height)?;
                let Some(kind) = account.contract else {
                    return Err(Fail::Action(
                        json!({"FunctionCallError": {"CompilationError": {
                            "CodeDoesNotExist": {"account_id": receiver.as_str()}
                        }}}),
                    ));
                };
                if kind == ContractKind::Factory && call.method_name == "create_coordinator" {
                    return self.create_coordinator(signer, receiver, call, block, execution);
                }
                let result = match self.contracts.get(receiver) {
                    Some(state) => contracts::change(
                        kind,
                        &state.optimistic,
                        signer,
                        &call.method_name,
                        &call.args,
                        block.timestamp,
                    ),
                    None => contracts::view(kind, None, &call.method_name, &call.args),
                };
                let value = result.map_err(|error| Fail::Action(call_failure(error)))?;
                if kind.has_state() && contracts::is_change_method(kind, &call.method_name) {
                    execution.touched_contracts = true;
                    self.db.execute(
                        "INSERT INTO contract_calls (height, timestamp_ns, contract, caller, method, args)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![
                            sql_u64(block.height),
                            sql_u64(block.timestamp),
                            receiver.as_str(),
                            signer.as_str(),
                            call.method_name,
                            call.args
                        ],
                    )?;
                }
                Ok(value)
            }
            Action::AddKey {
                public_key,
                access_key,
            } => {
                receiver_exists(self)?;
                actor_allowed(execution)?;
                let key = public_key.to_near_string();
                if self.key_at(receiver.as_str(), &key, LATEST)?.is_some() {
                    return Err(Fail::Action(json!({"AddKeyAlreadyExists": {
                        "account_id": receiver.as_str(),
                        "public_key": key,
                    }})));
                }
                self.put_key(
                    receiver,
                    public_key,
                    block.height,
                    Some(&KeyState {
                        nonce: block.height.saturating_sub(1) * NONCE_RANGE,
                        permission: permission_json(&access_key.permission),
                    }),
                )?;
                Ok(Vec::new())
            }
            Action::DeleteKey { public_key } => {
                receiver_exists(self)?;
                actor_allowed(execution)?;
                let key = public_key.to_near_string();
                if self.key_at(receiver.as_str(), &key, LATEST)?.is_none() {
                    return Err(Fail::Action(json!({"DeleteKeyDoesNotExist": {
                        "account_id": receiver.as_str(),
                        "public_key": key,
                    }})));
                }
                self.put_key(receiver, public_key, block.height, None)?;
                Ok(Vec::new())
            }
            other => Err(Fail::Action(json!({"UnsupportedProtocolFeature": {
                "protocol_feature": format!("{} actions are not supported by the Delibera devnet", action_name(other)),
                "version": PROTOCOL_VERSION,
            }}))),
        }
    }

    fn move_balance(
        &self,
        from: &AccountId,
        to: &AccountId,
        amount: u128,
        height: u64,
    ) -> std::result::Result<(), Fail> {
        if amount == 0 || from == to {
            return Ok(());
        }
        let missing = |id: &AccountId| {
            Fail::Action(json!({"AccountDoesNotExist": {"account_id": id.as_str()}}))
        };
        let mut source = self
            .account_at(from.as_str(), LATEST)?
            .ok_or_else(|| missing(from))?;
        let mut target = self
            .account_at(to.as_str(), LATEST)?
            .ok_or_else(|| missing(to))?;
        source.amount = source.amount.checked_sub(amount).ok_or_else(|| {
            Fail::Action(json!({"LackBalanceForState": {
                "account_id": from.as_str(),
                "amount": amount.to_string(),
            }}))
        })?;
        target.amount = target.amount.saturating_add(amount);
        self.put_account(from, height, Some(&source))?;
        self.put_account(to, height, Some(&target))?;
        Ok(())
    }

    /// The factory's `create_coordinator`: makes `{prefix}.{factory}`, a
    /// roster owned by the caller, funded with the attached deposit.
    fn create_coordinator(
        &mut self,
        caller: &AccountId,
        factory: &AccountId,
        call: &delibera_near::FunctionCall,
        block: &Block,
        execution: &mut Execution,
    ) -> std::result::Result<Vec<u8>, Fail> {
        let (account, _bounds) = contracts::coordinator_account(factory, &call.args)
            .map_err(|error| Fail::Action(call_failure(error)))?;
        if self.account_at(account.as_str(), LATEST)?.is_some() {
            return Err(Fail::Action(call_failure(CallError::Panic(format!(
                "Account {account} already exists"
            )))));
        }
        self.put_account(
            &account,
            block.height,
            Some(&AccountState {
                amount: 0,
                contract: Some(ContractKind::Roster),
                owner: Some(caller.clone()),
            }),
        )?;
        self.move_balance(factory, &account, call.deposit, block.height)?;
        self.contracts.insert(
            account.clone(),
            ContractState::new(ContractKind::Roster, caller)?,
        );
        execution.touched_contracts = true;
        serde_json::to_vec(account.as_str())
            .map_err(|error| Fail::Storage(corrupt("return value", error)))
    }
}

/// nearcore's `FinalExecutionOutcomeView` of an executed transaction (one
/// receipt, executed in the same block), without `final_execution_status`.
fn outcome_json(signed: &SignedTransaction, block: &Block, status: Value) -> Value {
    let tx = signed.transaction();
    let hash = signed.hash().to_base58();
    let mut receipt_seed = signed.hash().0.to_vec();
    receipt_seed.extend_from_slice(b"receipt");
    let receipt_id = CryptoHash::sha256(&receipt_seed).to_base58();
    let block_hash = block.hash.to_base58();
    json!({
        "status": status,
        "transaction": {
            "signer_id": tx.signer_id.as_str(),
            "public_key": tx.public_key.to_near_string(),
            "nonce": tx.nonce,
            "receiver_id": tx.receiver_id.as_str(),
            "actions": tx.actions.iter().map(action_view).collect::<Vec<_>>(),
            "priority_fee": 0,
            "signature": signature_text(signed.signature().as_bytes()),
            "hash": hash,
        },
        "transaction_outcome": {
            "proof": [],
            "block_hash": block_hash,
            "id": hash,
            "outcome": {
                "logs": [],
                "receipt_ids": [receipt_id],
                "gas_burnt": TX_GAS_BURNT,
                "tokens_burnt": "0",
                "executor_id": tx.signer_id.as_str(),
                "status": {"SuccessReceiptId": receipt_id},
                "metadata": {"version": 1, "gas_profile": null},
            },
        },
        "receipts_outcome": [{
            "proof": [],
            "block_hash": block_hash,
            "id": receipt_id,
            "outcome": {
                "logs": [],
                "receipt_ids": [],
                "gas_burnt": RECEIPT_GAS_BURNT,
                "tokens_burnt": "0",
                "executor_id": tx.receiver_id.as_str(),
                "status": status,
                "metadata": {"version": 3, "gas_profile": []},
            },
        }],
    })
}
