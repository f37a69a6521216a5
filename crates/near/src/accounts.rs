//! Who an account is on NEAR: which keys may act for it, and who owns the
//! coordinator contract. A wallet-signed request proves its key; these
//! answers tie the key to an account and the account to what it may change.

use async_trait::async_trait;
use delibera_identity::PublicKey;
use serde_json::Value;

use crate::{AccountId, BlockReference, CoordinatorContract, Error, NearRpc, Result};

/// What an access key may do for its account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPermission {
    /// Anything: only such a key speaks for the account.
    FullAccess,
    /// Only calls of one contract's methods.
    FunctionCall,
}

/// Account facts the server checks before acting on a wallet-signed request.
#[async_trait]
pub trait Accounts: Send + Sync {
    /// What `public_key` may do for `account_id`; `None` when it is not one
    /// of its access keys (or the account does not exist).
    async fn key_permission(
        &self,
        account_id: &AccountId,
        public_key: &PublicKey,
    ) -> Result<Option<KeyPermission>>;

    /// The coordinator contract's owner (its `get_owner`): the account that
    /// may change the worker roster.
    async fn roster_owner(&self) -> Result<AccountId>;
}

/// [`Accounts`] over NEAR RPC: `view_access_key` at the final block, and
/// the coordinator contract's `get_owner`.
#[derive(Debug, Clone)]
pub struct RpcAccounts {
    rpc: NearRpc,
    coordinator: CoordinatorContract,
}

impl RpcAccounts {
    /// Accounts read through `rpc`; the roster is `coordinator`'s.
    pub fn new(rpc: NearRpc, coordinator: CoordinatorContract) -> Self {
        Self { rpc, coordinator }
    }
}

/// Reads `view_access_key`'s permission: `"FullAccess"` or an object whose
/// key names the limited kind (`FunctionCall`, and newer limited kinds).
pub(crate) fn permission_of(permission: &Value) -> Result<KeyPermission> {
    match permission {
        Value::String(kind) if kind == "FullAccess" => Ok(KeyPermission::FullAccess),
        Value::Object(kinds) if !kinds.is_empty() => Ok(KeyPermission::FunctionCall),
        other => Err(Error::invalid_response(
            "query view_access_key",
            format!("unknown permission {other}"),
        )),
    }
}

#[async_trait]
impl Accounts for RpcAccounts {
    async fn key_permission(
        &self,
        account_id: &AccountId,
        public_key: &PublicKey,
    ) -> Result<Option<KeyPermission>> {
        match self
            .rpc
            .view_access_key(account_id, public_key, &BlockReference::Final)
            .await
        {
            Ok(view) => permission_of(&view.permission).map(Some),
            Err(Error::UnknownAccessKey { .. } | Error::UnknownAccount { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn roster_owner(&self) -> Result<AccountId> {
        self.coordinator.get_owner().await
    }
}

/// The implicit account of `public_key`: 64 lowercase hex characters, an
/// account every full-access key has without being registered anywhere.
pub fn implicit_account(public_key: &PublicKey) -> AccountId {
    let hex: String = public_key
        .as_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    AccountId::parse(&hex).expect("64 lowercase hex characters are an account id")
}
