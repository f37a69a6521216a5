//! Finishing a job after the wallet step.
//!
//! Production never trusts the wallet's word: the registry must show the
//! record the user signed for, owned by the job's NEAR account and pointing at
//! the deployment we made. Local mode has no chain, so the server registers the
//! agent in the local registry itself (the stand-in for the wallet).

use delibera_ensue::keys::{self, AgentField};
use delibera_near::{AccountId, CoordinatorRegistration, ExecutionStatus, WorkerRegistration};

use crate::AppState;
use crate::config::Mode;
use crate::error::ApiError;
use crate::jobs::Job;
use crate::routes::registry_error;

struct Provisioned<'a> {
    did: &'a str,
    endpoint: &'a str,
    cvm_id: &'a str,
    owner: AccountId,
}

fn provisioned(job: &Job) -> Result<Provisioned<'_>, ApiError> {
    let missing =
        |what: &str| ApiError::internal(format!("job {} has no {what} at the wallet step", job.id));
    Ok(Provisioned {
        did: job
            .agent_did
            .as_deref()
            .ok_or_else(|| missing("agent DID"))?,
        endpoint: job.endpoint.as_deref().ok_or_else(|| missing("endpoint"))?,
        cvm_id: job
            .cvm_id
            .as_deref()
            .ok_or_else(|| missing("deployment id"))?,
        owner: AccountId::parse(&job.near_account).map_err(ApiError::internal)?,
    })
}

fn mismatch(what: &str, did: &str, expected: &str, found: &str) -> ApiError {
    ApiError::Conflict(format!(
        "the registry's record for {did} has {what} {found:?}, expected {expected:?}; sign the registration for this job"
    ))
}

/// The fields every registry record must share with the job: active, owned
/// by the job's account, pointing at the deployment this server made.
fn check_record(
    agent: &Provisioned<'_>,
    kind: &str,
    is_active: bool,
    owner: &AccountId,
    endpoint: &str,
) -> Result<(), ApiError> {
    if !is_active {
        return Err(ApiError::Conflict(format!(
            "{kind} {} is registered but inactive",
            agent.did
        )));
    }
    if *owner != agent.owner {
        return Err(mismatch(
            "owner",
            agent.did,
            agent.owner.as_str(),
            owner.as_str(),
        ));
    }
    if endpoint != agent.endpoint {
        return Err(mismatch("endpoint", agent.did, agent.endpoint, endpoint));
    }
    Ok(())
}

/// Registers (local) or verifies (production) a worker job, then announces it in Ensue.
pub async fn complete_worker(state: &AppState, job: &Job) -> Result<(), ApiError> {
    let agent = provisioned(job)?;
    let coordinator_did = job
        .coordinator_did
        .as_deref()
        .ok_or_else(|| ApiError::internal("worker job without a coordinator"))?;
    let registry = &state.ports.registry;
    match state.ports.settings.mode {
        Mode::Local => {
            let registration = WorkerRegistration {
                coordinator_did: coordinator_did.to_owned(),
                worker_did: agent.did.to_owned(),
                endpoint_url: agent.endpoint.to_owned(),
                cvm_id: agent.cvm_id.to_owned(),
            };
            registry
                .register_worker(&agent.owner, &registration)
                .await
                .map_err(registry_error)?;
        }
        Mode::Production => {
            verify_transaction(state, job, &agent.owner, &[]).await?;
            let record = registry
                .worker_by_did(agent.did)
                .await
                .map_err(registry_error)?
                .ok_or_else(|| {
                    ApiError::Conflict(format!(
                        "worker {} is not on the registry yet: sign the register_worker transaction, then call register again",
                        agent.did
                    ))
                })?;
            check_record(
                &agent,
                "worker",
                record.is_active,
                &record.account_id,
                &record.endpoint_url,
            )?;
            if record.coordinator_did != coordinator_did {
                return Err(mismatch(
                    "coordinator",
                    agent.did,
                    coordinator_did,
                    &record.coordinator_did,
                ));
            }
        }
    }
    let api_key = match state.store.coordinator_org(coordinator_did).await? {
        Some((_, key)) => key,
        None => state.ports.settings.ensue_api_key.clone(),
    };
    announce(
        state,
        &api_key,
        agent.did,
        &job.display_name,
        agent.endpoint,
    )
    .await
}

/// Registers (local) or verifies (production) a coordinator job, then announces it in Ensue.
pub async fn complete_coordinator(state: &AppState, job: &Job) -> Result<(), ApiError> {
    let agent = provisioned(job)?;
    let (min_workers, max_workers) = (job.min_workers.unwrap_or(1), job.max_workers.unwrap_or(10));
    let registry = &state.ports.registry;
    match state.ports.settings.mode {
        Mode::Local => {
            let registration = CoordinatorRegistration {
                coordinator_did: agent.did.to_owned(),
                endpoint_url: agent.endpoint.to_owned(),
                cvm_id: agent.cvm_id.to_owned(),
                min_workers,
                max_workers,
            };
            registry
                .register_coordinator(&agent.owner, &registration)
                .await
                .map_err(registry_error)?;
        }
        Mode::Production => {
            verify_transaction(state, job, &agent.owner, &coordinator_contracts(job)).await?;
            let record = registry
                .coordinator_by_did(agent.did)
                .await
                .map_err(registry_error)?
                .ok_or_else(|| {
                    ApiError::Conflict(format!(
                        "coordinator {} is not on the registry yet: sign the register_coordinator transaction, then call coordinator-register again",
                        agent.did
                    ))
                })?;
            check_record(
                &agent,
                "coordinator",
                record.is_active,
                &record.account_id,
                &record.endpoint_url,
            )?;
        }
    }
    let api_key = job
        .secrets
        .ensue_api_key
        .clone()
        .ok_or_else(|| ApiError::internal("coordinator job without an Ensue key"))?;
    announce(
        state,
        &api_key,
        agent.did,
        &job.display_name,
        agent.endpoint,
    )
    .await
}

/// The coordinator's own contract (`contractAddress`) and the factory that
/// deployed it (its parent account), when the caller named one.
fn coordinator_contracts(job: &Job) -> Vec<AccountId> {
    let Some(address) = job
        .contract_address
        .as_deref()
        .and_then(|text| AccountId::parse(text).ok())
    else {
        return Vec::new();
    };
    // A factory is itself a named account (`coord-factory.….testnet`), never a
    // top-level one such as `testnet`, which would accept any transaction.
    let factory = address
        .as_str()
        .split_once('.')
        .filter(|(_, parent)| parent.contains('.'))
        .and_then(|(_, parent)| AccountId::parse(parent).ok());
    std::iter::once(address).chain(factory).collect()
}

/// Production: a `txHash`, when given, must name a transaction that succeeded,
/// was signed by the job's account, and went to one of our contracts (the
/// registry or roster, or `also_accepted`). For a coordinator the seed has the
/// wallet sign two transactions (factory deploy, registry register) without
/// saying which hash the frontend sends, so either is accepted. The registry
/// record is checked after this in any case: it, not the hash, is the truth.
async fn verify_transaction(
    state: &AppState,
    job: &Job,
    owner: &AccountId,
    also_accepted: &[AccountId],
) -> Result<(), ApiError> {
    let (Some(lookup), Some(text)) = (&state.ports.transactions, job.tx_hash.as_deref()) else {
        return Ok(());
    };
    let hash = crate::validation::tx_hash("txHash", text)?;
    let outcome = lookup
        .transaction(&hash, owner)
        .await
        .map_err(|error| match error {
            delibera_near::Error::UnknownTransaction { .. } => ApiError::Conflict(format!(
                "transaction {text} signed by {owner} is not on chain; check the hash and the account that signed it"
            )),
            other => ApiError::Upstream(format!("NEAR transaction lookup: {other}")),
        })?;
    match &outcome.status {
        ExecutionStatus::SuccessValue(_) => {}
        ExecutionStatus::Failure(failure) => {
            return Err(ApiError::Conflict(format!(
                "transaction {text} failed on chain: {failure}"
            )));
        }
        _ => {
            return Err(ApiError::Conflict(format!(
                "transaction {text} has not executed yet; try again shortly"
            )));
        }
    }
    let field = |name: &str| {
        outcome
            .raw
            .pointer(&format!("/transaction/{name}"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let signer = field("signer_id");
    if signer != owner.as_str() {
        return Err(ApiError::Conflict(format!(
            "transaction {text} was signed by {signer:?}, not by the job's account {owner}"
        )));
    }
    let receiver = field("receiver_id");
    let accepted = state
        .ports
        .settings
        .registry_contracts
        .iter()
        .chain(also_accepted);
    if !accepted
        .clone()
        .any(|contract| contract.as_str() == receiver)
    {
        let names: Vec<&str> = accepted.map(AccountId::as_str).collect();
        return Err(ApiError::Conflict(format!(
            "transaction {text} was sent to {receiver:?}, not to the registry ({})",
            names.join(", ")
        )));
    }
    Ok(())
}

/// Writes `agent/{did}/display_name` and `agent/{did}/endpoint`.
async fn announce(
    state: &AppState,
    api_key: &str,
    did: &str,
    display_name: &str,
    endpoint: &str,
) -> Result<(), ApiError> {
    let did: delibera_identity::Did = did.parse().map_err(ApiError::internal)?;
    let memory = state.ports.ensue.memory(api_key);
    let upstream = |error: delibera_ensue::Error| ApiError::Upstream(format!("Ensue: {error}"));
    memory
        .upsert(&keys::agent(&did, AgentField::DisplayName), display_name)
        .await
        .map_err(upstream)?;
    memory
        .upsert(&keys::agent(&did, AgentField::Endpoint), endpoint)
        .await
        .map_err(upstream)?;
    Ok(())
}
