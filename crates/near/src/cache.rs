//! A [`Registry`] that answers repeated reads from memory for about one
//! block, with one upstream call per key however many readers miss at once.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use delibera_identity::PublicKey;

use crate::accounts::{Accounts, KeyPermission};
use crate::registrar::{CoordinatorClaim, Registrar, WorkerClaim};
use crate::{
    AccountId, CoordinatorRecord, EndpointUpdate, RegisteredWorker, Registry, Result, WorkerRecord,
};

/// How long a cached answer is served: about one NEAR block.
pub const DEFAULT_REGISTRY_CACHE_TTL: Duration = Duration::from_secs(1);

/// Distinct DIDs remembered per lookup kind before expired answers are
/// dropped (and, if that is not enough, all of them): DIDs come from
/// clients, so the cache must not grow with them.
const MAX_CACHED_DIDS: usize = 4096;

/// One read of one key: the upstream call in flight, then its answer and
/// when the call started (the answer's age is counted from there, so it is
/// never older than it looks). A failed call leaves the cell empty: errors
/// are not cached, and the next reader calls again.
struct Flight<T> {
    answer: OnceCell<(Instant, Arc<T>)>,
}

type Slot<T> = Arc<Flight<T>>;

impl<T> Flight<T> {
    fn new() -> Slot<T> {
        Arc::new(Self {
            answer: OnceCell::new(),
        })
    }

    /// Whether the answer is at least `ttl` old (a call in flight is not).
    fn expired(&self, now: Instant, ttl: Duration) -> bool {
        self.answer
            .get()
            .is_some_and(|(started, _)| now.saturating_duration_since(*started) >= ttl)
    }
}

/// The flight to join for a key: the current one, or a new one in its
/// place if the answer expired.
fn current<T>(slot: &mut Option<Slot<T>>, now: Instant, ttl: Duration) -> Slot<T> {
    match slot {
        Some(flight) if !flight.expired(now, ttl) => flight.clone(),
        _ => slot.insert(Flight::new()).clone(),
    }
}

fn current_by_key<K: Eq + Hash + Clone, T>(
    slots: &mut HashMap<K, Slot<T>>,
    key: &K,
    now: Instant,
    ttl: Duration,
) -> Slot<T> {
    if let Some(flight) = slots.get(key)
        && !flight.expired(now, ttl)
    {
        return flight.clone();
    }
    if slots.len() >= MAX_CACHED_DIDS && !slots.contains_key(key) {
        slots.retain(|_, flight| !flight.expired(now, ttl));
        if slots.len() >= MAX_CACHED_DIDS {
            // Callers already waiting keep their flight; only the sharing goes.
            slots.clear();
        }
    }
    let flight = Flight::new();
    slots.insert(key.clone(), flight.clone());
    flight
}

/// Every cached read; replaced whole when this process writes.
#[derive(Default)]
struct Slots {
    coordinators: Option<Slot<Vec<CoordinatorRecord>>>,
    workers: Option<Slot<Vec<WorkerRecord>>>,
    roster: Option<Slot<Vec<RegisteredWorker>>>,
    coordinator_by_did: HashMap<String, Slot<Option<CoordinatorRecord>>>,
    worker_by_did: HashMap<String, Slot<Option<WorkerRecord>>>,
    /// By `account_id` and `ed25519:` key.
    key_permission: HashMap<(String, String), Slot<Option<KeyPermission>>>,
    roster_owner: Option<Slot<AccountId>>,
}

struct Shared {
    ttl: Duration,
    slots: Mutex<Slots>,
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        // Every critical section leaves the map whole, so a poisoned lock is usable.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets every answer. Reads already in flight finish for the callers
    /// waiting on them, but nobody else is given their answer.
    fn invalidate(&self) {
        *self.slots() = Slots::default();
    }

    async fn read<T, F, Fut>(
        &self,
        pick: impl FnOnce(&mut Slots, Instant, Duration) -> Slot<T>,
        fetch: F,
    ) -> Result<Arc<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let flight = pick(&mut self.slots(), Instant::now(), self.ttl);
        let (_, answer) = flight
            .answer
            .get_or_try_init(|| async {
                let started = Instant::now();
                fetch().await.map(|answer| (started, Arc::new(answer)))
            })
            .await?;
        Ok(answer.clone())
    }
}

/// A [`Registry`] that caches the reads of another for a TTL of about one
/// block ([`DEFAULT_REGISTRY_CACHE_TTL`]):
///
/// - **per key**: each list, and each DID looked up;
/// - **single-flight**: readers that miss the same key together share one
///   upstream call;
/// - **never older than the TTL**: an answer's age counts from when its call
///   started, and an expired one is fetched again, never served;
/// - **errors are not cached**: the next reader calls again;
/// - **own writes invalidate**: every write through this wrapper (or through
///   a registrar wrapped with [`CachedRegistry::invalidating`]) forgets every
///   answer once it returns, so a write then a read sees the write.
///
/// A zero TTL keeps only the sharing of concurrent calls. What needs the
/// chain's state as of now (a registrar confirming a registration) should
/// read the wrapped registry, not this one.
#[derive(Clone)]
pub struct CachedRegistry {
    inner: Arc<dyn Registry>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CachedRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedRegistry")
            .field("ttl", &self.shared.ttl)
            .finish_non_exhaustive()
    }
}

impl CachedRegistry {
    /// Caches the reads of `inner` for `ttl`.
    pub fn new(inner: Arc<dyn Registry>, ttl: Duration) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                ttl,
                slots: Mutex::default(),
            }),
        }
    }

    /// How long an answer is served.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// Forgets every cached answer.
    pub fn invalidate(&self) {
        self.shared.invalidate();
    }

    /// `registrar`, forgetting this cache's answers after each registration
    /// it completes (or fails to: a failed one may still have written).
    pub fn invalidating(&self, registrar: Arc<dyn Registrar>) -> InvalidatingRegistrar {
        InvalidatingRegistrar {
            inner: registrar,
            shared: self.shared.clone(),
        }
    }

    /// `accounts`, its reads cached like this registry's (same TTL, same
    /// single flight, forgotten with this cache's answers).
    pub fn caching_accounts(&self, accounts: Arc<dyn Accounts>) -> CachedAccounts {
        CachedAccounts {
            inner: accounts,
            shared: self.shared.clone(),
        }
    }

    /// Runs a write, then forgets every answer, whether it succeeded or not.
    async fn write<T>(&self, write: impl Future<Output = Result<T>>) -> Result<T> {
        let written = write.await;
        self.shared.invalidate();
        written
    }

    fn unshared<T: Clone>(answer: Arc<T>) -> T {
        Arc::unwrap_or_clone(answer)
    }
}

#[async_trait]
impl Registry for CachedRegistry {
    async fn list_active_coordinators(&self) -> Result<Vec<CoordinatorRecord>> {
        self.active_coordinators_shared().await.map(Self::unshared)
    }

    async fn list_active_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.active_workers_shared().await.map(Self::unshared)
    }

    async fn coordinator_by_did(&self, coordinator_did: &str) -> Result<Option<CoordinatorRecord>> {
        let key = coordinator_did.to_owned();
        self.shared
            .read(
                |slots, now, ttl| current_by_key(&mut slots.coordinator_by_did, &key, now, ttl),
                || self.inner.coordinator_by_did(coordinator_did),
            )
            .await
            .map(Self::unshared)
    }

    async fn worker_by_did(&self, worker_did: &str) -> Result<Option<WorkerRecord>> {
        let key = worker_did.to_owned();
        self.shared
            .read(
                |slots, now, ttl| current_by_key(&mut slots.worker_by_did, &key, now, ttl),
                || self.inner.worker_by_did(worker_did),
            )
            .await
            .map(Self::unshared)
    }

    async fn update_worker_endpoint(&self, update: &EndpointUpdate) -> Result<()> {
        self.write(self.inner.update_worker_endpoint(update)).await
    }

    async fn update_coordinator_endpoint(&self, update: &EndpointUpdate) -> Result<()> {
        self.write(self.inner.update_coordinator_endpoint(update))
            .await
    }

    async fn roster(&self) -> Result<Vec<RegisteredWorker>> {
        self.roster_shared().await.map(Self::unshared)
    }

    async fn roster_register(&self, worker_id: &str, account_id: Option<&AccountId>) -> Result<()> {
        self.write(self.inner.roster_register(worker_id, account_id))
            .await
    }

    async fn roster_remove(&self, worker_id: &str) -> Result<()> {
        self.write(self.inner.roster_remove(worker_id)).await
    }

    async fn active_coordinators_shared(&self) -> Result<Arc<Vec<CoordinatorRecord>>> {
        self.shared
            .read(
                |slots, now, ttl| current(&mut slots.coordinators, now, ttl),
                || self.inner.list_active_coordinators(),
            )
            .await
    }

    async fn active_workers_shared(&self) -> Result<Arc<Vec<WorkerRecord>>> {
        self.shared
            .read(
                |slots, now, ttl| current(&mut slots.workers, now, ttl),
                || self.inner.list_active_workers(),
            )
            .await
    }

    async fn roster_shared(&self) -> Result<Arc<Vec<RegisteredWorker>>> {
        self.shared
            .read(
                |slots, now, ttl| current(&mut slots.roster, now, ttl),
                || self.inner.roster(),
            )
            .await
    }
}

/// A [`Registrar`] that forgets a [`CachedRegistry`]'s answers after each
/// registration it completes; see [`CachedRegistry::invalidating`].
pub struct InvalidatingRegistrar {
    inner: Arc<dyn Registrar>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InvalidatingRegistrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvalidatingRegistrar")
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Registrar for InvalidatingRegistrar {
    async fn complete_worker(&self, claim: &WorkerClaim) -> Result<WorkerRecord> {
        let completed = self.inner.complete_worker(claim).await;
        self.shared.invalidate();
        completed
    }

    async fn complete_coordinator(&self, claim: &CoordinatorClaim) -> Result<CoordinatorRecord> {
        let completed = self.inner.complete_coordinator(claim).await;
        self.shared.invalidate();
        completed
    }
}

/// [`Accounts`] read through a [`CachedRegistry`]'s cache (see
/// [`CachedRegistry::caching_accounts`]): a wallet-signed request checks its
/// key and the roster owner at most once per TTL.
#[derive(Clone)]
pub struct CachedAccounts {
    inner: Arc<dyn Accounts>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CachedAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedAccounts")
            .field("ttl", &self.shared.ttl)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Accounts for CachedAccounts {
    async fn key_permission(
        &self,
        account_id: &AccountId,
        public_key: &PublicKey,
    ) -> Result<Option<KeyPermission>> {
        let key = (account_id.to_string(), public_key.to_near_string());
        self.shared
            .read(
                |slots, now, ttl| current_by_key(&mut slots.key_permission, &key, now, ttl),
                || self.inner.key_permission(account_id, public_key),
            )
            .await
            .map(|answer| *answer)
    }

    async fn roster_owner(&self) -> Result<AccountId> {
        self.shared
            .read(
                |slots, now, ttl| current(&mut slots.roster_owner, now, ttl),
                || self.inner.roster_owner(),
            )
            .await
            .map(Arc::unwrap_or_clone)
    }
}
