//! The coordinator's requests: batched writes and sweeps, counted per call.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use delibera_coordination::{Coordinator, Proposal, Vote, WorkerResult};
use delibera_ensue::{Error, InMemory, MAX_BATCH, Memory};
use delibera_identity::{Did, Keypair};

use crate::common::*;

/// Counts every call as one request (as each is against Ensue, once the
/// coordinator keeps batches within [`MAX_BATCH`]) and remembers the
/// largest batch.
struct Counting<M> {
    inner: M,
    requests: AtomicUsize,
    largest_batch: AtomicUsize,
}

impl<M> Counting<M> {
    fn new(inner: M) -> Self {
        Self {
            inner,
            requests: AtomicUsize::new(0),
            largest_batch: AtomicUsize::new(0),
        }
    }

    fn count(&self, keys: usize) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.largest_batch.fetch_max(keys, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl<M: Memory> Memory for Counting<M> {
    async fn create(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.count(1);
        self.inner.create(key, value).await
    }
    async fn update(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.count(1);
        self.inner.update(key, value).await
    }
    async fn get(&self, key: &str) -> delibera_ensue::Result<Option<String>> {
        self.count(1);
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> delibera_ensue::Result<HashMap<String, String>> {
        self.count(keys.len());
        self.inner.get_many(keys).await
    }
    async fn list_keys(&self, prefix: &str) -> delibera_ensue::Result<Vec<String>> {
        self.count(1);
        self.inner.list_keys(prefix).await
    }
    async fn delete(&self, key: &str) -> delibera_ensue::Result<()> {
        self.count(1);
        self.inner.delete(key).await
    }
    async fn create_many(
        &self,
        items: &[(String, String)],
    ) -> delibera_ensue::Result<Vec<delibera_ensue::Result<()>>> {
        self.count(items.len());
        self.inner.create_many(items).await
    }
    async fn delete_many(&self, keys: &[String]) -> delibera_ensue::Result<()> {
        self.count(keys.len());
        self.inner.delete_many(keys).await
    }
    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }
}

/// A deterministic DID for worker `n` of a large round.
fn nth_did(n: usize) -> Did {
    let mut seed = [0x5a; 32];
    seed[..8].copy_from_slice(&(n as u64).to_le_bytes());
    Keypair::from_seed(&seed).did()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_round_costs_at_most_1_2_requests_per_worker_in_pages_of_100() {
    const WORKERS: usize = 250;
    let store = InMemory::new();
    let dids: Vec<Did> = (0..WORKERS).map(nth_did).collect();
    // Each sweep of the statuses waits until every worker has answered, so
    // the count does not depend on how fast this machine runs the workers.
    let counted = Arc::new(Counting::new(SweepsAfterAnswers {
        inner: store.clone(),
        answering: dids.clone(),
    }));
    let workers: Vec<_> = dids
        .iter()
        .map(|did| {
            spawn_worker(
                did.clone(),
                Arc::new(store.clone()),
                Arc::new(Fixed(Vote::Approved)),
                fast_worker_config(),
            )
        })
        .collect();
    let coordinator = Coordinator::with_config(counted.clone(), fast_coordinator_config());

    for round in ["p-1", "p-2"] {
        counted.requests.store(0, Ordering::SeqCst);
        let tally = within(
            "the round",
            coordinator.run_round(&Proposal::new(round, "t"), &dids, Duration::from_secs(30)),
        )
        .await
        .unwrap();
        assert_eq!(tally.approved as usize, WORKERS, "{round}");
        let requests = counted.requests.load(Ordering::SeqCst);
        assert!(
            requests * 10 <= WORKERS * 12,
            "{round}: {requests} coordinator requests for {WORKERS} workers"
        );
    }
    assert!(counted.largest_batch.load(Ordering::SeqCst) <= MAX_BATCH);
    for worker in workers {
        worker.stop().await;
    }
}

/// Fails the first `create_many` as a whole; afterwards refuses, once each,
/// the items of `taken` (another writer creates them first, with `taken`'s
/// value) and of `refused` (a per-item error, nothing written).
struct PartialBatches<M> {
    inner: M,
    whole_failures: AtomicUsize,
    taken: Mutex<HashMap<String, String>>,
    refused: Mutex<HashSet<String>>,
}

#[async_trait::async_trait]
impl<M: Memory> Memory for PartialBatches<M> {
    async fn create(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.inner.create(key, value).await
    }
    async fn update(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.inner.update(key, value).await
    }
    async fn get(&self, key: &str) -> delibera_ensue::Result<Option<String>> {
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> delibera_ensue::Result<HashMap<String, String>> {
        self.inner.get_many(keys).await
    }
    async fn list_keys(&self, prefix: &str) -> delibera_ensue::Result<Vec<String>> {
        self.inner.list_keys(prefix).await
    }
    async fn delete(&self, key: &str) -> delibera_ensue::Result<()> {
        self.inner.delete(key).await
    }
    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }
    async fn create_many(
        &self,
        items: &[(String, String)],
    ) -> delibera_ensue::Result<Vec<delibera_ensue::Result<()>>> {
        let failed_whole = self
            .whole_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failed_whole {
            return Err(Error::Server {
                status: 503,
                body: "try again".into(),
            });
        }
        let mut outcomes = Vec::with_capacity(items.len());
        for (key, value) in items {
            let taken = self
                .taken
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(key);
            let refused = self
                .refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(key);
            outcomes.push(if let Some(other) = taken {
                self.inner.create(key, &other).await?;
                Err(Error::AlreadyExists { key: key.clone() })
            } else if refused {
                Err(Error::ItemFailed {
                    key: key.clone(),
                    status: "error".into(),
                    message: "write conflict".into(),
                })
            } else {
                self.inner.create(key, value).await
            });
        }
        Ok(outcomes)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn items_a_batch_refused_are_written_alone_and_a_failed_batch_is_retried() {
    let store = InMemory::new();
    let dids: Vec<Did> = (1..=3).map(did).collect();
    // Worker 1's `pending` meets a key another writer just created with
    // `completed`; worker 2's archived result is refused once.
    let taken_status = format!("coordination/tasks/{}/status", dids[0]);
    let refused_result = format!("coordination/proposals/p-1/workers/{}/result", dids[1]);
    let memory = Arc::new(PartialBatches {
        inner: store.clone(),
        whole_failures: AtomicUsize::new(1),
        taken: Mutex::new(HashMap::from([(taken_status.clone(), "completed".into())])),
        refused: Mutex::new(HashSet::from([refused_result.clone()])),
    });
    let workers: Vec<_> = dids
        .iter()
        .map(|did| {
            spawn_worker(
                did.clone(),
                Arc::new(store.clone()),
                Arc::new(Fixed(Vote::Approved)),
                fast_worker_config(),
            )
        })
        .collect();
    let coordinator = Coordinator::with_config(memory.clone(), fast_coordinator_config());
    let tally = within(
        "the round",
        coordinator.run_round(&Proposal::new("p-1", "t"), &dids, Duration::from_secs(30)),
    )
    .await
    .unwrap();
    for worker in workers {
        worker.stop().await;
    }

    // Worker 1 was set `pending` despite the other writer, so it voted.
    assert_eq!(tally.approved, 3);
    assert!(memory.taken.lock().unwrap().is_empty());
    assert!(memory.refused.lock().unwrap().is_empty());
    for did in &dids {
        let archived = store
            .get(&format!("coordination/proposals/p-1/workers/{did}/result"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("the archived result of {did}"));
        let archived: WorkerResult = serde_json::from_str(&archived).unwrap();
        assert_eq!(archived.round_id, tally.round_id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_without_batches_has_the_pending_statuses_updated_not_deleted() {
    // A store whose every item costs a call (`max_batch` 1, as Ensue's direct
    // dialect): a delete and a create per worker would double the calls.
    let store = InMemory::new();
    let unbatched = Arc::new(Unbatched::new(store.clone()));
    let dids: Vec<Did> = (1..=3).map(did).collect();
    let workers: Vec<_> = dids
        .iter()
        .map(|did| {
            spawn_worker(
                did.clone(),
                Arc::new(store.clone()),
                Arc::new(Fixed(Vote::Approved)),
                fast_worker_config(),
            )
        })
        .collect();
    let coordinator = Coordinator::with_config(unbatched.clone(), fast_coordinator_config());
    for round in ["p-1", "p-2"] {
        let tally = within(
            "the round",
            coordinator.run_round(&Proposal::new(round, "t"), &dids, Duration::from_secs(30)),
        )
        .await
        .unwrap();
        assert_eq!(tally.approved, 3, "{round}");
    }
    for worker in workers {
        worker.stop().await;
    }
    assert_eq!(unbatched.deletes.load(Ordering::SeqCst), 0);
}

/// An in-memory store without batches (`max_batch` is the default 1) that
/// counts its deletes.
struct Unbatched {
    store: InMemory,
    deletes: AtomicUsize,
}

impl Unbatched {
    fn new(store: InMemory) -> Self {
        Self {
            store,
            deletes: AtomicUsize::new(0),
        }
    }
}

#[async_trait::async_trait]
impl Memory for Unbatched {
    async fn create(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.store.create(key, value).await
    }
    async fn update(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.store.update(key, value).await
    }
    async fn get(&self, key: &str) -> delibera_ensue::Result<Option<String>> {
        self.store.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> delibera_ensue::Result<HashMap<String, String>> {
        self.store.get_many(keys).await
    }
    async fn list_keys(&self, prefix: &str) -> delibera_ensue::Result<Vec<String>> {
        self.store.list_keys(prefix).await
    }
    async fn delete(&self, key: &str) -> delibera_ensue::Result<()> {
        self.deletes.fetch_add(1, Ordering::SeqCst);
        self.store.delete(key).await
    }
}

/// Reads of several keys (or, with `single_reads`, of one) are refused as
/// rate limited, asking for a wait of 30 s; everything else goes to the store.
struct RateLimitedSweeps {
    store: InMemory,
    sweeps: AtomicUsize,
    single_reads: bool,
}

#[async_trait::async_trait]
impl Memory for RateLimitedSweeps {
    async fn create(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.store.create(key, value).await
    }
    async fn update(&self, key: &str, value: &str) -> delibera_ensue::Result<()> {
        self.store.update(key, value).await
    }
    async fn get(&self, key: &str) -> delibera_ensue::Result<Option<String>> {
        if self.single_reads {
            self.sweeps.fetch_add(1, Ordering::SeqCst);
            return Err(Error::RateLimited {
                retry_after: Some(Duration::from_secs(30)),
            });
        }
        self.store.get(key).await
    }
    async fn get_many(&self, _keys: &[String]) -> delibera_ensue::Result<HashMap<String, String>> {
        self.sweeps.fetch_add(1, Ordering::SeqCst);
        Err(Error::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
        })
    }
    async fn list_keys(&self, prefix: &str) -> delibera_ensue::Result<Vec<String>> {
        self.store.list_keys(prefix).await
    }
    async fn delete(&self, key: &str) -> delibera_ensue::Result<()> {
        self.store.delete(key).await
    }
}

#[tokio::test]
async fn a_rate_limited_sweep_waits_as_long_as_it_was_asked() {
    let memory = Arc::new(RateLimitedSweeps {
        store: InMemory::new(),
        sweeps: AtomicUsize::new(0),
        single_reads: false,
    });
    let coordinator = Coordinator::with_config(memory.clone(), fast_coordinator_config());
    let dids = vec![nth_did(0), nth_did(1)];
    // Sweeping every 10 ms for the round's 400 ms would be about 40 reads;
    // asked to wait 30 s, the coordinator reads once, waits out the round
    // and reads a last time at its deadline.
    let tally = within(
        "the round",
        coordinator.run_round(
            &Proposal::new("p-limited", "t"),
            &dids,
            Duration::from_millis(400),
        ),
    )
    .await
    .unwrap();
    assert_eq!(tally.abstained, 2);
    assert_eq!(memory.sweeps.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_rate_limited_worker_polls_again_only_when_it_was_asked() {
    let memory = Arc::new(RateLimitedSweeps {
        store: InMemory::new(),
        sweeps: AtomicUsize::new(0),
        single_reads: true,
    });
    // Polling every 10 ms, backing off to 50 ms: about ten polls in 400 ms
    // without the service's answer; asked to wait 30 s, one.
    let worker = spawn_worker(
        nth_did(0),
        memory.clone(),
        Arc::new(Fixed(Vote::Approved)),
        fast_worker_config(),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    worker.stop().await;
    assert_eq!(memory.sweeps.load(Ordering::SeqCst), 1);
}
