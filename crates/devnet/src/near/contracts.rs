//! The Delibera contracts the chain runs natively: the registry and worker
//! rosters over [`LocalRegistry`] (which holds their rules and panic texts),
//! and the coordinator factory's argument rules.

use delibera_near::{
    AccountId, CoordinatorRegistration, Error as NearError, LocalRegistry, WorkerRegistration,
    messages,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The yoctoNEAR the registry reports as its minimum deposit (0.1 NEAR).
/// The devnet does not enforce it: attached deposits are simply moved.
pub(crate) const MIN_DEPOSIT: u128 = 100_000_000_000_000_000_000_000;

/// near-sdk's panic when a method's JSON arguments do not deserialize.
const BAD_ARGS: &str = "Failed to deserialize input from JSON.";

/// Which contract an account runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContractKind {
    /// The agent registry (admin: the configured admin).
    Registry,
    /// A coordinator contract's worker roster (owner: its owner).
    Roster,
    /// The coordinator factory.
    Factory,
}

impl ContractKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Registry => "registry",
            Self::Roster => "roster",
            Self::Factory => "factory",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "registry" => Some(Self::Registry),
            "roster" => Some(Self::Roster),
            "factory" => Some(Self::Factory),
            _ => None,
        }
    }

    /// Whether the contract keeps state in a [`LocalRegistry`].
    pub(crate) fn has_state(self) -> bool {
        !matches!(self, Self::Factory)
    }
}

/// Why a contract call failed, in the terms nearcore reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// The contract panicked (`require!`) with this message.
    Panic(String),
    /// No such method (`MethodResolveError(MethodNotFound)`).
    MethodNotFound,
    /// A change method called in a view (`ProhibitedInView`).
    ProhibitedInView,
    /// The devnet's own storage failed.
    Internal(String),
}

impl From<NearError> for CallError {
    fn from(error: NearError) -> Self {
        match error {
            NearError::ContractPanic { message } => Self::Panic(message),
            other => Self::Internal(other.to_string()),
        }
    }
}

fn args<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CallError> {
    serde_json::from_slice(bytes).map_err(|_| CallError::Panic(BAD_ARGS.to_owned()))
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CallError> {
    serde_json::to_vec(value).map_err(|error| CallError::Internal(error.to_string()))
}

#[derive(Deserialize)]
struct CoordinatorDid {
    coordinator_did: String,
}

#[derive(Deserialize)]
struct WorkerDid {
    worker_did: String,
}

#[derive(Deserialize)]
struct EndpointArgs {
    worker_did: String,
    endpoint_url: String,
}

#[derive(Deserialize)]
struct RosterRegisterArgs {
    worker_id: String,
    #[serde(default)]
    account_id: Option<AccountId>,
}

#[derive(Deserialize)]
struct WorkerId {
    worker_id: String,
}

/// The factory's `create_coordinator` arguments.
#[derive(Debug, Deserialize)]
pub(crate) struct CreateCoordinatorArgs {
    pub(crate) prefix: String,
    pub(crate) min_workers: u8,
    pub(crate) max_workers: u8,
}

/// Whether `method` of a `kind` contract changes state (and so is logged and replayed).
pub(crate) fn is_change_method(kind: ContractKind, method: &str) -> bool {
    match kind {
        ContractKind::Registry => matches!(
            method,
            "register_coordinator"
                | "register_worker"
                | "update_worker_endpoint"
                | "deactivate_worker"
                | "deactivate_coordinator"
        ),
        ContractKind::Roster => matches!(method, "register_worker" | "remove_worker"),
        ContractKind::Factory => method == "create_coordinator",
    }
}

/// A view method: reads `state`, returns the JSON bytes near-sdk would.
pub(crate) fn view(
    kind: ContractKind,
    state: Option<&LocalRegistry>,
    method: &str,
    input: &[u8],
) -> Result<Vec<u8>, CallError> {
    if is_change_method(kind, method) {
        return Err(CallError::ProhibitedInView);
    }
    let Some(state) = state else {
        return Err(CallError::MethodNotFound);
    };
    match (kind, method) {
        (ContractKind::Registry, "get_coordinator_by_did") => {
            let CoordinatorDid { coordinator_did } = args(input)?;
            json(&state.coordinator(&coordinator_did)?)
        }
        (ContractKind::Registry, "get_worker_by_did") => {
            let WorkerDid { worker_did } = args(input)?;
            json(&state.worker(&worker_did)?)
        }
        (ContractKind::Registry, "get_workers_for_coordinator") => {
            let CoordinatorDid { coordinator_did } = args(input)?;
            json(&state.workers_for_coordinator(&coordinator_did)?)
        }
        (ContractKind::Registry, "list_active_workers") => json(&state.list_workers()?),
        (ContractKind::Registry, "list_active_coordinators") => json(&state.list_coordinators()?),
        (ContractKind::Registry, "get_stats") => json(&state.stats()?),
        // near-sdk contracts return u128 amounts as decimal strings (U128).
        (ContractKind::Registry, "get_min_deposit") => json(&MIN_DEPOSIT.to_string()),
        (ContractKind::Roster, "get_registered_workers") => json(&state.list_roster()?),
        (ContractKind::Roster, "get_worker_count") => json(&state.roster_count()?),
        _ => Err(CallError::MethodNotFound),
    }
}

/// A change method of a contract with state, as `caller`, in a block with
/// this timestamp. View methods may be called in transactions too.
pub(crate) fn change(
    kind: ContractKind,
    state: &LocalRegistry,
    caller: &AccountId,
    method: &str,
    input: &[u8],
    block_timestamp: u64,
) -> Result<Vec<u8>, CallError> {
    match (kind, method) {
        (ContractKind::Registry, "register_coordinator") => {
            let registration: CoordinatorRegistration = args(input)?;
            json(&state.register_coordinator_at(caller, &registration, block_timestamp)?)
        }
        (ContractKind::Registry, "register_worker") => {
            let registration: WorkerRegistration = args(input)?;
            json(&state.register_worker_at(caller, &registration, block_timestamp)?)
        }
        (ContractKind::Registry, "update_worker_endpoint") => {
            let EndpointArgs {
                worker_did,
                endpoint_url,
            } = args(input)?;
            state.update_worker_endpoint_as(caller, &worker_did, &endpoint_url)?;
            Ok(Vec::new())
        }
        (ContractKind::Registry, "deactivate_worker") => {
            let WorkerDid { worker_did } = args(input)?;
            state.deactivate_worker_as(caller, &worker_did)?;
            Ok(Vec::new())
        }
        (ContractKind::Registry, "deactivate_coordinator") => {
            let CoordinatorDid { coordinator_did } = args(input)?;
            state.deactivate_coordinator_as(caller, &coordinator_did)?;
            Ok(Vec::new())
        }
        (ContractKind::Roster, "register_worker") => {
            let RosterRegisterArgs {
                worker_id,
                account_id,
            } = args(input)?;
            state.roster_register_at(caller, &worker_id, account_id.as_ref(), block_timestamp)?;
            Ok(Vec::new())
        }
        (ContractKind::Roster, "remove_worker") => {
            let WorkerId { worker_id } = args(input)?;
            state.roster_remove_as(caller, &worker_id)?;
            Ok(Vec::new())
        }
        _ => view(kind, Some(state), method, input),
    }
}

/// The factory's rules for `create_coordinator`: the arguments read, the
/// worker bounds hold, and `{prefix}.{factory}` is a valid account id.
pub(crate) fn coordinator_account(
    factory: &AccountId,
    input: &[u8],
) -> Result<(AccountId, CreateCoordinatorArgs), CallError> {
    let parsed: CreateCoordinatorArgs = args(input)?;
    if parsed.min_workers > parsed.max_workers {
        return Err(CallError::Panic(messages::MIN_ABOVE_MAX.to_owned()));
    }
    if parsed.max_workers == 0 {
        return Err(CallError::Panic(messages::MAX_WORKERS_ZERO.to_owned()));
    }
    if parsed.prefix.is_empty() || parsed.prefix.contains('.') {
        return Err(CallError::Panic(format!(
            "Invalid prefix {:?}: it must be one non-empty account id segment, without dots",
            parsed.prefix
        )));
    }
    let full = format!("{}.{}", parsed.prefix, factory);
    let account = AccountId::parse(&full).map_err(|error| {
        CallError::Panic(format!(
            "Invalid prefix {:?}: {full:?} is not a valid account id: {error}",
            parsed.prefix
        ))
    })?;
    Ok((account, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factory() -> AccountId {
        "factory.devnet".parse().unwrap()
    }

    #[test]
    fn the_factory_refuses_bad_prefixes_and_bounds() {
        let ok = coordinator_account(
            &factory(),
            br#"{"prefix":"dao","min_workers":1,"max_workers":3}"#,
        )
        .unwrap();
        assert_eq!(ok.0.as_str(), "dao.factory.devnet");
        for (input, expected) in [
            (&br#"{"prefix":"a.b","min_workers":1,"max_workers":3}"#[..], "without dots"),
            (br#"{"prefix":"","min_workers":1,"max_workers":3}"#, "non-empty"),
            (br#"{"prefix":"Dao","min_workers":1,"max_workers":3}"#, "not a valid account id"),
            (
                br#"{"prefix":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","min_workers":1,"max_workers":3}"#,
                "at most 64",
            ),
            (br#"{"prefix":"dao","min_workers":4,"max_workers":3}"#, messages::MIN_ABOVE_MAX),
            (br#"{"prefix":"dao","min_workers":0,"max_workers":0}"#, messages::MAX_WORKERS_ZERO),
            (br#"{"prefix":"dao"}"#, BAD_ARGS),
        ] {
            match coordinator_account(&factory(), input) {
                Err(CallError::Panic(message)) => {
                    assert!(message.contains(expected), "{message} lacks {expected}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn change_methods_are_prohibited_in_views_and_unknown_methods_are_not_found() {
        let admin: AccountId = "admin.devnet".parse().unwrap();
        let state = LocalRegistry::in_memory(admin).unwrap();
        assert_eq!(
            view(
                ContractKind::Registry,
                Some(&state),
                "register_worker",
                b"{}"
            ),
            Err(CallError::ProhibitedInView)
        );
        assert_eq!(
            view(ContractKind::Registry, Some(&state), "nope", b"{}"),
            Err(CallError::MethodNotFound)
        );
        assert_eq!(
            view(ContractKind::Registry, Some(&state), "get_min_deposit", b""),
            Ok(br#""100000000000000000000000""#.to_vec())
        );
    }
}
