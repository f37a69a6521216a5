//! Who may call the routes that sign with the server's NEAR key: the
//! operator (the admin token) or a NEAR account proving itself with a
//! wallet-signed request (NEP-413); and the per-IP rate limit on
//! provisioning.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use delibera_near::{AccountId, KeyPermission, NEP413_SCHEME, SignedMessage, SignedRequest};

use crate::AppState;
use crate::error::ApiError;
use crate::store::Database;

/// The default `NEP413_RECIPIENT`.
pub const DEFAULT_NEP413_RECIPIENT: &str = "delibera-protocol-api";

/// How old a wallet signature may be (and how far ahead of this server's
/// clock): long enough for a wallet's confirmation dialog, short enough
/// that a captured request is soon worthless.
pub const SIGNATURE_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Who a write on the signing routes comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The operator (the admin token), or anyone while unauthenticated
    /// writes are allowed: may change anything.
    Operator,
    /// A NEAR account whose full-access key signed this very request: may
    /// change what it owns.
    Account(AccountId),
}

impl Caller {
    /// Refuses an account that is not `owner` (403).
    pub fn must_be(&self, owner: &AccountId, what: &str) -> Result<(), ApiError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Account(account) if account == owner => Ok(()),
            Caller::Account(account) => Err(ApiError::NotOwner(format!(
                "{account} does not own {what} (its owner is {owner})"
            ))),
        }
    }

    /// Refuses an account unless it owns the coordinator contract's roster.
    pub async fn must_own_roster(&self, state: &AppState) -> Result<(), ApiError> {
        if *self == Caller::Operator {
            return Ok(());
        }
        let owner = state
            .ports
            .accounts
            .roster_owner()
            .await
            .map_err(|error| ApiError::Upstream(format!("NEAR: {error}")))?;
        self.must_be(&owner, "the coordinator contract's roster")
    }
}

/// Checks wallet-signed requests: the recipient, the request they sign, their
/// age, their signature, and that no nonce is used twice while a signature
/// carrying it is still young enough to be accepted.
pub struct WalletAuth {
    recipient: String,
    /// Nonces spent, with the Unix millisecond after which they may be forgotten.
    nonces: Mutex<SpentNonces>,
    /// Where replicas sharing a store record the nonces each spent.
    shared: Option<Database>,
}

impl WalletAuth {
    /// Accepts signatures addressed to `recipient`.
    pub fn new(recipient: impl Into<String>) -> Self {
        Self {
            recipient: recipient.into(),
            nonces: Mutex::default(),
            shared: None,
        }
    }

    /// Also spends each nonce in `database` when replicas share it, so a
    /// request accepted by one is a replay on every other.
    pub fn shared_through(mut self, database: &Database) -> Self {
        self.shared = database.is_shared().then(|| database.clone());
        self
    }

    /// Everything that needs no chain: `signed` is addressed to this server,
    /// signs `method path` with exactly `body`, is young, carries a good
    /// signature, and its nonce is unused. The nonce is spent only by
    /// [`spend`](Self::spend), once the chain vouches for the key, so
    /// requests signed by keys nobody holds an account with cost no memory.
    pub fn check(
        &self,
        signed: &SignedMessage,
        method: &str,
        path: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<UnspentNonce, ApiError> {
        let refuse = |reason: &str| Err(ApiError::BadSignature(reason.to_owned()));
        if signed.recipient != self.recipient {
            return refuse(&format!(
                "it is addressed to {:?}, not to this server ({:?})",
                signed.recipient, self.recipient
            ));
        }
        let claim = SignedRequest::parse(&signed.message)
            .map_err(|error| ApiError::BadSignature(error.to_string()))?;
        let actual = SignedRequest::new(method, path, body, claim.unix_ms);
        if claim.method != actual.method || claim.path != actual.path {
            return refuse(&format!(
                "it signs {} {}, not this request",
                claim.method, claim.path
            ));
        }
        if claim.body_sha256 != actual.body_sha256 {
            return refuse("the body is not the one that was signed");
        }
        let lifetime = SIGNATURE_LIFETIME.as_millis() as u64;
        if claim.unix_ms.saturating_add(lifetime) < now_ms {
            return refuse("it is more than 5 minutes old; sign the request again");
        }
        if claim.unix_ms > now_ms.saturating_add(lifetime) {
            return refuse("it is dated more than 5 minutes ahead of this server's clock");
        }
        if signed.verify_signature().is_err() {
            return refuse("the signature does not match the message and public key");
        }
        let unspent = UnspentNonce {
            nonce: signed.nonce,
            // Kept until the signature is too old to pass the age check.
            forget_after: claim.unix_ms.saturating_add(lifetime),
        };
        if self.spent(now_ms).by_nonce.contains_key(&unspent.nonce) {
            return refuse("its nonce was used before (a replayed request)");
        }
        Ok(unspent)
    }

    /// Spends a checked nonce, in this process and, where replicas share the
    /// store, for all of them; a request that spent it first, here or on
    /// another replica, makes this one a replay.
    pub async fn spend(&self, unspent: UnspentNonce, now_ms: u64) -> Result<(), ApiError> {
        let replay = || {
            Err(ApiError::BadSignature(
                "its nonce was used before (a replayed request)".into(),
            ))
        };
        // The shared record first: a store that fails for now (503) leaves
        // the nonce unspent everywhere, so the same request may be retried.
        if let Some(database) = &self.shared {
            if self.spent(now_ms).by_nonce.contains_key(&unspent.nonce) {
                return replay();
            }
            if !database
                .spend_wallet_nonce(&unspent.nonce, unspent.forget_after, now_ms)
                .await?
            {
                return replay();
            }
        }
        match self.spent(now_ms).by_nonce.entry(unspent.nonce) {
            std::collections::hash_map::Entry::Occupied(_) => replay(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(unspent.forget_after);
                Ok(())
            }
        }
    }

    /// The spent nonces, those past their lifetime forgotten (at most once
    /// a second, so a request does not pay for scanning them all).
    fn spent(&self, now_ms: u64) -> MutexGuard<'_, SpentNonces> {
        let mut spent = self.nonces.lock().unwrap_or_else(PoisonError::into_inner);
        if now_ms >= spent.next_sweep_ms {
            spent
                .by_nonce
                .retain(|_, forget_after| *forget_after >= now_ms);
            spent.next_sweep_ms = now_ms.saturating_add(1000);
        }
        spent
    }

    /// How many nonces are held (spent and not yet forgotten).
    pub fn nonces_held(&self) -> usize {
        self.nonces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_nonce
            .len()
    }
}

/// A nonce that passed [`WalletAuth::check`], to be spent once the key is
/// known to speak for its account.
#[derive(Debug)]
pub struct UnspentNonce {
    nonce: [u8; 32],
    forget_after: u64,
}

/// Spent nonces, with the Unix millisecond after which each may be forgotten.
#[derive(Default)]
struct SpentNonces {
    by_nonce: HashMap<[u8; 32], u64>,
    next_sweep_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Middleware of the routes that sign with the server's NEAR key:
/// `Authorization: Bearer <PROTOCOL_API_ADMIN_TOKEN>` (the operator) or
/// `Authorization: NEP413 <base64url JSON>` (a wallet-signed request; its
/// key must be a full-access key of its account on chain). The handler gets
/// the [`Caller`] and checks what it owns. 401 for a missing or refused
/// credential; 403 for a bearer token when the server has none configured.
pub async fn authenticate_write(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.unauthenticated_writes {
        let mut request = request;
        request.extensions_mut().insert(Caller::Operator);
        return Ok(next.run(request).await);
    }
    let credential = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().split_once(' '))
        .map(|(scheme, rest)| (scheme.to_owned(), rest.trim().to_owned()));
    let Some((scheme, credential)) = credential else {
        return Err(ApiError::Unauthorized);
    };
    // The scheme is case-insensitive (RFC 9110 §11.1).
    if scheme.eq_ignore_ascii_case("bearer") {
        let Some(expected) = state.admin_token.as_deref() else {
            return Err(ApiError::Forbidden);
        };
        if !constant_time_eq(credential.as_bytes(), expected.as_bytes()) {
            return Err(ApiError::Unauthorized);
        }
        let mut request = request;
        request.extensions_mut().insert(Caller::Operator);
        return Ok(next.run(request).await);
    }
    if !scheme.eq_ignore_ascii_case(NEP413_SCHEME) {
        return Err(ApiError::Unauthorized);
    }
    let signed = SignedMessage::from_authorization(&format!("{NEP413_SCHEME} {credential}"))
        .map_err(|error| ApiError::BadSignature(error.to_string()))?;
    // The signature covers the body, so it is read here (within the body
    // limit) and handed on unchanged.
    let (mut parts, body) = request.into_parts();
    let body = Bytes::from_request(Request::from_parts(parts.clone(), body), &())
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest(rejection.body_text())
            }
        })?;
    let unspent = state.wallet_auth.check(
        &signed,
        parts.method.as_str(),
        parts.uri.path(),
        &body,
        now_ms(),
    )?;
    let permission = state
        .ports
        .accounts
        .key_permission(&signed.account_id, &signed.public_key)
        .await
        .map_err(|error| ApiError::Upstream(format!("NEAR: {error}")))?;
    match permission {
        Some(KeyPermission::FullAccess) => {}
        Some(KeyPermission::FunctionCall) => {
            return Err(ApiError::BadSignature(format!(
                "{} is a function-call key of {}; only a full-access key speaks for the account",
                signed.public_key.to_near_string(),
                signed.account_id
            )));
        }
        None => {
            return Err(ApiError::BadSignature(format!(
                "{} is not an access key of {}",
                signed.public_key.to_near_string(),
                signed.account_id
            )));
        }
    }
    state.wallet_auth.spend(unspent, now_ms()).await?;
    tracing::debug!(account = %signed.account_id, "wallet-signed write");
    parts.extensions.insert(Caller::Account(signed.account_id));
    Ok(next.run(Request::from_parts(parts, Body::from(body))).await)
}

/// Compares without an early exit, so timing does not reveal a prefix match.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware for the provisioning POSTs.
pub async fn rate_limit(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let ip = delibera_serve::client_ip(request.headers(), peer, state.trusted_proxy_hops);
    state
        .rate_limiter
        .check(ip)
        .map_err(|retry_after| ApiError::RateLimited {
            retry_after_secs: retry_after.as_secs(),
        })?;
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
