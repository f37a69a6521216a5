//! Signing and sending transactions without ever paying twice.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use delibera_identity::{Keypair, PublicKey};

use crate::rpc::{BlockReference, TxExecutionStatus};
use crate::{
    AccountId, Action, Error, ExecutionOutcome, FunctionCall, NearRpc, Result, SignedTransaction,
    Transaction,
};

/// A NEAR account and one of its full-access (or suitable function-call) keys.
///
/// `Debug` shows the account and public key, never the secret.
#[derive(Clone)]
pub struct NearSigner {
    account_id: AccountId,
    keypair: Keypair,
}

impl NearSigner {
    /// A signer for `account_id` holding `keypair`.
    pub fn new(account_id: AccountId, keypair: Keypair) -> Self {
        Self {
            account_id,
            keypair,
        }
    }

    /// A signer from a NEAR secret key string (`ed25519:<base58 of 64 bytes>`).
    pub fn from_secret_key(account_id: AccountId, secret_key: &str) -> Result<Self> {
        Ok(Self::new(
            account_id,
            Keypair::from_near_secret_str(secret_key)?,
        ))
    }

    /// The signing account.
    pub fn account_id(&self) -> &AccountId {
        &self.account_id
    }

    /// The access key's public key.
    pub fn public_key(&self) -> PublicKey {
        self.keypair.public_key()
    }

    /// Builds and signs a transaction with an explicit nonce and block hash.
    pub fn sign(
        &self,
        receiver_id: AccountId,
        nonce: u64,
        block_hash: crate::CryptoHash,
        actions: Vec<Action>,
    ) -> Result<SignedTransaction> {
        Transaction {
            signer_id: self.account_id.clone(),
            public_key: self.keypair.public_key(),
            nonce,
            receiver_id,
            block_hash,
            actions,
        }
        .sign(&self.keypair)
    }
}

impl fmt::Debug for NearSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NearSigner")
            .field("account_id", &self.account_id.as_str())
            .field("public_key", &self.keypair.public_key().to_near_string())
            .finish_non_exhaustive()
    }
}

/// Signs transactions in-process and sends them through a [`NearRpc`].
///
/// - The nonce is the access key's nonce + 1, or one past the last nonce
///   this sender (or a clone) signed with if that is higher: calls made at
///   once read the same key nonce, and a node keeps only one transaction per
///   nonce. The block hash is the one the key was read at.
/// - On `InvalidNonce` (another transaction took the nonce) it reads the key
///   again and retries once with a fresh transaction.
/// - When the node or the client times out, the transaction may be in flight:
///   it is looked up by hash first. Only if the node does not know it is the
///   *identical* signed transaction resent (same nonce, so it applies at most
///   once); it is never re-signed. If its fate stays unknown the result is
///   [`Error::TransactionPending`] with the hash to look up later. (Once a
///   later transaction of this key executes, a pending one with a lower
///   nonce can no longer land: looked up, it is then known not to have.)
#[derive(Debug, Clone)]
pub struct TransactionSender {
    rpc: NearRpc,
    signer: NearSigner,
    wait_until: TxExecutionStatus,
    /// The last nonce signed with, shared by clones.
    last_nonce: Arc<Mutex<u64>>,
}

impl TransactionSender {
    /// A sender that waits for `EXECUTED_OPTIMISTIC`, as near-api-js does.
    pub fn new(rpc: NearRpc, signer: NearSigner) -> Self {
        Self {
            rpc,
            signer,
            wait_until: TxExecutionStatus::ExecutedOptimistic,
            last_nonce: Arc::default(),
        }
    }

    /// Waits for another execution status instead.
    pub fn with_wait_until(mut self, wait_until: TxExecutionStatus) -> Self {
        self.wait_until = wait_until;
        self
    }

    /// The signing account.
    pub fn signer(&self) -> &NearSigner {
        &self.signer
    }

    /// The RPC client.
    pub fn rpc(&self) -> &NearRpc {
        &self.rpc
    }

    /// Calls a contract method in a transaction; a failed execution is an error
    /// (a contract panic is [`Error::ContractPanic`] with its message).
    pub async fn function_call(
        &self,
        receiver_id: &AccountId,
        call: FunctionCall,
    ) -> Result<ExecutionOutcome> {
        self.send(receiver_id, vec![Action::FunctionCall(call)])
            .await
    }

    /// Signs and sends `actions` to `receiver_id`; a failed execution is an error.
    pub async fn send(
        &self,
        receiver_id: &AccountId,
        actions: Vec<Action>,
    ) -> Result<ExecutionOutcome> {
        let mut nonce_retried = false;
        loop {
            // The nonce as the latest executed transaction left it: read at
            // `final`, a second transaction sent within a block or two of the
            // first would reuse its nonce.
            let key = self
                .rpc
                .view_access_key(
                    self.signer.account_id(),
                    &self.signer.public_key(),
                    &BlockReference::Optimistic,
                )
                .await?;
            let nonce = self.next_nonce(key.nonce)?;
            let signed =
                self.signer
                    .sign(receiver_id.clone(), nonce, key.block_hash, actions.clone())?;
            match self
                .submit(&signed)
                .await
                .and_then(ExecutionOutcome::into_result)
            {
                Err(error) if error.is_invalid_nonce() && !nonce_retried => {
                    tracing::info!(%error, "nonce taken; refreshing the access key and retrying once");
                    nonce_retried = true;
                }
                other => return other,
            }
        }
    }

    /// The nonce to sign with next, given the access key's: one past it, or
    /// past the last one signed here if that is higher.
    fn next_nonce(&self, key_nonce: u64) -> Result<u64> {
        let mut last = self
            .last_nonce
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let nonce = key_nonce.max(*last).checked_add(1).ok_or_else(|| {
            Error::invalid_response("query view_access_key", "the access key nonce is u64::MAX")
        })?;
        *last = nonce;
        Ok(nonce)
    }

    /// Sends one signed transaction; on an ambiguous failure, looks it up by
    /// hash before resending the same bytes at most once.
    async fn submit(&self, signed: &SignedTransaction) -> Result<ExecutionOutcome> {
        let error = match self.rpc.send_tx(signed, self.wait_until).await {
            Ok(outcome) => return Ok(outcome),
            Err(error) if is_ambiguous(&error) => error,
            Err(error) => return Err(error),
        };
        let tx_hash = signed.hash();
        tracing::warn!(%error, %tx_hash, "send_tx outcome unknown; looking the transaction up by hash");
        let pending = || Error::TransactionPending {
            tx_hash: tx_hash.to_base58(),
        };
        match self
            .rpc
            .tx_status(&tx_hash, self.signer.account_id(), self.wait_until)
            .await
        {
            Ok(outcome) => Ok(outcome),
            Err(Error::UnknownTransaction { .. }) => {
                // No node has it, so resending these exact bytes cannot charge
                // twice: the same nonce applies at most once.
                match self.rpc.send_tx(signed, self.wait_until).await {
                    Ok(outcome) => Ok(outcome),
                    Err(error) if is_ambiguous(&error) => Err(pending()),
                    Err(error) => Err(error),
                }
            }
            Err(lookup_error) => {
                tracing::warn!(%lookup_error, %tx_hash, "transaction lookup failed");
                Err(pending())
            }
        }
    }
}

/// A failure after which the transaction may or may not have been delivered.
fn is_ambiguous(error: &Error) -> bool {
    error.is_timeout() || (error.is_retryable() && !error.is_not_delivered())
}
