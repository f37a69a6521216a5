//! The `Registrar` port: finishing an agent's registration after the wallet step.
//!
//! On NEAR the user's wallet signs the registration, so the server only
//! verifies it ([`ChainRegistrar`]): a transaction hash, when given, must name
//! a successful transaction signed by the agent's owner to one of our
//! contracts, and the registry must show the record the job expects. The
//! local registry has no wallet, so it registers the record itself.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    AccountId, CoordinatorRecord, CoordinatorRegistration, CryptoHash, Error, ExecutionStatus,
    LocalRegistry, NearRpc, Registry, Result, TxExecutionStatus, WorkerRecord, WorkerRegistration,
};

/// What a job expects the registry to hold for a worker once its owner signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerClaim {
    /// The account that owns the worker and signs its registration.
    pub owner: AccountId,
    /// The record as the job made it.
    pub registration: WorkerRegistration,
    /// The wallet's transaction, when the caller passed one (base58).
    pub tx_hash: Option<String>,
}

/// What a job expects the registry to hold for a coordinator once its owner signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorClaim {
    /// The account that owns the coordinator and signs its registration.
    pub owner: AccountId,
    /// The record as the job made it.
    pub registration: CoordinatorRegistration,
    /// The coordinator's own contract, made by a factory, when known: a
    /// transaction to it or to its factory also counts.
    pub contract: Option<AccountId>,
    /// The wallet's transaction, when the caller passed one (base58).
    pub tx_hash: Option<String>,
}

/// Finishes registrations; held by the server as `Arc<dyn Registrar>`.
#[async_trait]
pub trait Registrar: Send + Sync {
    /// Makes the worker's registration true and returns its record, or says
    /// why it is not ([`Error::Unconfirmed`] for what the owner can fix).
    async fn complete_worker(&self, claim: &WorkerClaim) -> Result<WorkerRecord>;

    /// Makes the coordinator's registration true and returns its record.
    async fn complete_coordinator(&self, claim: &CoordinatorClaim) -> Result<CoordinatorRecord>;
}

/// Why a registration the job expects is not (yet) true. Each case is
/// something the agent's owner can act on, so the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unconfirmed {
    /// The registry has no record of the agent.
    NotRegistered {
        /// `worker` or `coordinator`.
        kind: &'static str,
        /// The agent's DID.
        did: String,
    },
    /// The record exists but is deactivated.
    Inactive {
        /// `worker` or `coordinator`.
        kind: &'static str,
        /// The agent's DID.
        did: String,
    },
    /// The record differs from what the job made.
    Mismatch {
        /// The agent's DID.
        did: String,
        /// Which field, e.g. `owner`.
        field: &'static str,
        /// What the job expects.
        expected: String,
        /// What the registry holds.
        found: String,
    },
    /// No transaction with this hash was sent by the owner.
    UnknownTransaction {
        /// The hash given.
        tx_hash: String,
        /// The account it was looked up under.
        owner: String,
    },
    /// The transaction failed on chain.
    TransactionFailed {
        /// The hash given.
        tx_hash: String,
        /// The chain's `TxExecutionError`, as JSON text.
        failure: String,
    },
    /// The transaction has not executed yet.
    TransactionPending {
        /// The hash given.
        tx_hash: String,
    },
    /// Someone other than the owner signed the transaction.
    WrongSigner {
        /// The hash given.
        tx_hash: String,
        /// Who signed it.
        signer: String,
        /// The owner.
        owner: String,
    },
    /// The transaction went to a contract that is not ours.
    WrongReceiver {
        /// The hash given.
        tx_hash: String,
        /// Where it went.
        receiver: String,
        /// The contracts it may go to.
        accepted: Vec<String>,
    },
}

impl fmt::Display for Unconfirmed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unconfirmed::NotRegistered { kind, did } => {
                let route = match *kind {
                    "coordinator" => "coordinator-register",
                    _ => "register",
                };
                write!(
                    f,
                    "{kind} {did} is not on the registry yet: sign the register_{kind} transaction, then call {route} again"
                )
            }
            Unconfirmed::Inactive { kind, did } => {
                write!(f, "{kind} {did} is registered but inactive")
            }
            Unconfirmed::Mismatch {
                did,
                field,
                expected,
                found,
            } => write!(
                f,
                "the registry's record for {did} has {field} {found:?}, expected {expected:?}; sign the registration for this job"
            ),
            Unconfirmed::UnknownTransaction { tx_hash, owner } => write!(
                f,
                "transaction {tx_hash} signed by {owner} is not on chain; check the hash and the account that signed it"
            ),
            Unconfirmed::TransactionFailed { tx_hash, failure } => {
                write!(f, "transaction {tx_hash} failed on chain: {failure}")
            }
            Unconfirmed::TransactionPending { tx_hash } => {
                write!(
                    f,
                    "transaction {tx_hash} has not executed yet; try again shortly"
                )
            }
            Unconfirmed::WrongSigner {
                tx_hash,
                signer,
                owner,
            } => write!(
                f,
                "transaction {tx_hash} was signed by {signer:?}, not by the job's account {owner}"
            ),
            Unconfirmed::WrongReceiver {
                tx_hash,
                receiver,
                accepted,
            } => write!(
                f,
                "transaction {tx_hash} was sent to {receiver:?}, not to the registry ({})",
                accepted.join(", ")
            ),
        }
    }
}

impl std::error::Error for Unconfirmed {}

/// The local registry stands in for the wallet: it registers the record on
/// the owner's behalf (any transaction hash is only echoed by the caller).
#[async_trait]
impl Registrar for LocalRegistry {
    async fn complete_worker(&self, claim: &WorkerClaim) -> Result<WorkerRecord> {
        self.register_worker_as(&claim.owner, &claim.registration)
    }

    async fn complete_coordinator(&self, claim: &CoordinatorClaim) -> Result<CoordinatorRecord> {
        self.register_coordinator_as(&claim.owner, &claim.registration)
    }
}

/// [`Registrar`] on NEAR: verifies what the owner's wallet signed, never
/// registers on their behalf.
#[derive(Clone)]
pub struct ChainRegistrar {
    registry: Arc<dyn Registry>,
    rpc: NearRpc,
    contracts: Vec<AccountId>,
    settle_time: Duration,
}

/// How long a record that is not (yet) as expected is read again before the
/// answer stands: a wallet reports a transaction once it executed, and an RPC
/// node may show the change a block or two later.
pub const DEFAULT_SETTLE_TIME: Duration = Duration::from_secs(5);

/// The pause between two reads of a record that has not settled.
const SETTLE_POLL: Duration = Duration::from_millis(250);

impl fmt::Debug for ChainRegistrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainRegistrar")
            .field("rpc", &self.rpc)
            .field("contracts", &self.contracts)
            .finish_non_exhaustive()
    }
}

impl ChainRegistrar {
    /// Reads records from `registry`, looks transactions up at `rpc`, and
    /// accepts transactions to `contracts` (the registry and the roster).
    ///
    /// Read the registry at the state a wallet's transaction reaches first
    /// (`RegistryContract::reading_at(BlockReference::Optimistic)`), so a
    /// registration that just executed is seen at once.
    pub fn new(registry: Arc<dyn Registry>, rpc: NearRpc, contracts: Vec<AccountId>) -> Self {
        Self {
            registry,
            rpc,
            contracts,
            settle_time: DEFAULT_SETTLE_TIME,
        }
    }

    /// Reads a record that is not as expected again for up to `settle_time`
    /// (default [`DEFAULT_SETTLE_TIME`]) before refusing.
    pub fn with_settle_time(mut self, settle_time: Duration) -> Self {
        self.settle_time = settle_time;
        self
    }

    /// Runs `check` until it passes, fails for a reason that will not change
    /// by waiting, or the settle time is over.
    async fn settled<T, F, Fut>(&self, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let started = tokio::time::Instant::now();
        loop {
            match check().await {
                Err(Error::Unconfirmed(reason)) if started.elapsed() < self.settle_time => {
                    tracing::debug!(%reason, "registry record not settled yet; reading again");
                    tokio::time::sleep(SETTLE_POLL).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// When a hash is given: the transaction succeeded, was signed by `owner`
    /// and went to one of our contracts or to one of `also_accepted`.
    async fn verify_transaction(
        &self,
        tx_hash: Option<&str>,
        owner: &AccountId,
        also_accepted: &[AccountId],
    ) -> Result<()> {
        let Some(text) = tx_hash.map(str::trim).filter(|text| !text.is_empty()) else {
            return Ok(());
        };
        let hash = CryptoHash::from_base58(text).map_err(|error| Error::InvalidInput {
            what: "txHash",
            reason: format!("not a NEAR transaction hash (base58 of 32 bytes): {error}"),
        })?;
        let tx_hash = text.to_owned();
        let outcome = self
            .rpc
            .tx_status(&hash, owner, TxExecutionStatus::ExecutedOptimistic)
            .await
            .map_err(|error| match error {
                Error::UnknownTransaction { .. } => Unconfirmed::UnknownTransaction {
                    tx_hash: tx_hash.clone(),
                    owner: owner.to_string(),
                }
                .into(),
                other => other,
            })?;
        match &outcome.status {
            ExecutionStatus::SuccessValue(_) => {}
            ExecutionStatus::Failure(failure) => {
                return Err(Unconfirmed::TransactionFailed {
                    tx_hash,
                    failure: failure.to_string(),
                }
                .into());
            }
            _ => return Err(Unconfirmed::TransactionPending { tx_hash }.into()),
        }
        let signer = outcome.signer_id.as_ref().map_or("", AccountId::as_str);
        if signer != owner.as_str() {
            return Err(Unconfirmed::WrongSigner {
                tx_hash,
                signer: signer.to_owned(),
                owner: owner.to_string(),
            }
            .into());
        }
        let accepted: Vec<&AccountId> = self.contracts.iter().chain(also_accepted).collect();
        if !accepted
            .iter()
            .any(|contract| Some(*contract) == outcome.receiver_id.as_ref())
        {
            return Err(Unconfirmed::WrongReceiver {
                tx_hash,
                receiver: outcome
                    .receiver_id
                    .as_ref()
                    .map(AccountId::to_string)
                    .unwrap_or_default(),
                accepted: accepted
                    .iter()
                    .map(|contract| contract.to_string())
                    .collect(),
            }
            .into());
        }
        Ok(())
    }
}

/// The fields every record must share with the job: active, owned by the
/// job's account, pointing at the deployment the job made.
fn check_record(
    kind: &'static str,
    did: &str,
    expected: (&AccountId, &str),
    found: (bool, &AccountId, &str),
) -> Result<()> {
    let (owner, endpoint) = expected;
    let (is_active, found_owner, found_endpoint) = found;
    if !is_active {
        return Err(Unconfirmed::Inactive {
            kind,
            did: did.to_owned(),
        }
        .into());
    }
    let mismatch = |field, expected: &str, found: &str| -> Error {
        Unconfirmed::Mismatch {
            did: did.to_owned(),
            field,
            expected: expected.to_owned(),
            found: found.to_owned(),
        }
        .into()
    };
    if found_owner != owner {
        return Err(mismatch("owner", owner.as_str(), found_owner.as_str()));
    }
    if found_endpoint != endpoint {
        return Err(mismatch("endpoint", endpoint, found_endpoint));
    }
    Ok(())
}

#[async_trait]
impl Registrar for ChainRegistrar {
    async fn complete_worker(&self, claim: &WorkerClaim) -> Result<WorkerRecord> {
        let expected = &claim.registration;
        self.verify_transaction(claim.tx_hash.as_deref(), &claim.owner, &[])
            .await?;
        self.settled(|| async {
            let record = self
                .registry
                .worker_by_did(&expected.worker_did)
                .await?
                .ok_or_else(|| Unconfirmed::NotRegistered {
                    kind: "worker",
                    did: expected.worker_did.clone(),
                })?;
            check_record(
                "worker",
                &expected.worker_did,
                (&claim.owner, &expected.endpoint_url),
                (record.is_active, &record.account_id, &record.endpoint_url),
            )?;
            if record.coordinator_did != expected.coordinator_did {
                return Err(Unconfirmed::Mismatch {
                    did: expected.worker_did.clone(),
                    field: "coordinator",
                    expected: expected.coordinator_did.clone(),
                    found: record.coordinator_did,
                }
                .into());
            }
            Ok(record)
        })
        .await
    }

    async fn complete_coordinator(&self, claim: &CoordinatorClaim) -> Result<CoordinatorRecord> {
        let expected = &claim.registration;
        // The factory deploy is one of the transactions the owner signs; a
        // factory is the contract's parent (never a top-level account, which
        // would accept any transaction).
        let factory_and_contract: Vec<AccountId> = claim
            .contract
            .iter()
            .flat_map(|contract| std::iter::once(contract.clone()).chain(contract.parent()))
            .collect();
        self.verify_transaction(
            claim.tx_hash.as_deref(),
            &claim.owner,
            &factory_and_contract,
        )
        .await?;
        self.settled(|| async {
            let record = self
                .registry
                .coordinator_by_did(&expected.coordinator_did)
                .await?
                .ok_or_else(|| Unconfirmed::NotRegistered {
                    kind: "coordinator",
                    did: expected.coordinator_did.clone(),
                })?;
            check_record(
                "coordinator",
                &expected.coordinator_did,
                (&claim.owner, &expected.endpoint_url),
                (record.is_active, &record.account_id, &record.endpoint_url),
            )?;
            Ok(record)
        })
        .await
    }
}
