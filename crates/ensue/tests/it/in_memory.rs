//! `InMemory` has the service's semantics, and `upsert` handles every
//! outcome of the update-then-create dance.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use delibera_ensue::{Error, InMemory, Memory, Result};

#[tokio::test]
async fn create_fails_on_an_existing_key_and_update_on_a_missing_one() {
    let memory = InMemory::new();
    memory.create("a", "1").await.unwrap();
    assert!(
        matches!(memory.create("a", "2").await, Err(Error::AlreadyExists { key }) if key == "a")
    );
    assert!(matches!(memory.update("b", "2").await, Err(Error::NotFound { key }) if key == "b"));
    memory.update("a", "3").await.unwrap();
    assert_eq!(memory.get("a").await.unwrap().as_deref(), Some("3"));
    assert_eq!(memory.get("b").await.unwrap(), None);
}

#[tokio::test]
async fn listing_is_by_literal_prefix_in_key_order() {
    let memory = InMemory::new();
    for key in ["t/b/2", "t/a/1", "t_x", "u/1", "t/a/0", "t%/z"] {
        memory.create(key, "v").await.unwrap();
    }
    assert_eq!(
        memory.list_keys("t/").await.unwrap(),
        ["t/a/0", "t/a/1", "t/b/2"]
    );
    assert_eq!(memory.list_keys("t_").await.unwrap(), ["t_x"]);
    assert_eq!(memory.list_keys("t%").await.unwrap(), ["t%/z"]);
    assert_eq!(memory.list_keys("").await.unwrap().len(), 6);
    assert!(memory.list_keys("zzz").await.unwrap().is_empty());
}

#[tokio::test]
async fn get_many_omits_missing_keys_and_delete_is_idempotent() {
    let memory = InMemory::new();
    memory.create("x", "1").await.unwrap();
    let found = memory
        .get_many(&["x".to_owned(), "y".to_owned()])
        .await
        .unwrap();
    assert_eq!(found, HashMap::from([("x".to_owned(), "1".to_owned())]));
    memory.delete("x").await.unwrap();
    memory.delete("x").await.unwrap();
    assert_eq!(memory.get("x").await.unwrap(), None);
}

#[tokio::test]
async fn clones_share_state_and_work_as_arc_dyn_memory() {
    let memory = InMemory::new();
    let shared: Arc<dyn Memory> = Arc::new(memory.clone());
    shared.upsert("k", "first").await.unwrap();
    shared.upsert("k", "second").await.unwrap();
    assert_eq!(
        memory.snapshot().get("k").map(String::as_str),
        Some("second")
    );
}

#[tokio::test]
async fn concurrent_upserts_lose_nothing() {
    let memory: Arc<dyn Memory> = Arc::new(InMemory::new());
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let memory = Arc::clone(&memory);
            tokio::spawn(async move {
                memory.upsert("shared", &i.to_string()).await.unwrap();
                memory.upsert(&format!("own/{i:02}"), "v").await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(memory.list_keys("own/").await.unwrap().len(), 32);
    let last: u32 = memory
        .get("shared")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert!(last < 32);
}

/// A store where another writer always creates the key between our
/// update and our create: the first update misses, the create loses.
struct LosesTheRace {
    inner: InMemory,
    updates: AtomicU32,
}

#[async_trait::async_trait]
impl Memory for LosesTheRace {
    async fn create(&self, key: &str, _value: &str) -> Result<()> {
        self.inner.create(key, "the other writer").await?;
        Err(Error::AlreadyExists {
            key: key.to_owned(),
        })
    }
    async fn update(&self, key: &str, value: &str) -> Result<()> {
        if self.updates.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(Error::NotFound {
                key: key.to_owned(),
            });
        }
        self.inner.update(key, value).await
    }
    async fn get(&self, key: &str) -> Result<Option<String>> {
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> Result<HashMap<String, String>> {
        self.inner.get_many(keys).await
    }
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list_keys(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
}

#[tokio::test]
async fn upsert_that_loses_the_create_race_updates_again() {
    let store = LosesTheRace {
        inner: InMemory::new(),
        updates: AtomicU32::new(0),
    };
    store.upsert("k", "ours").await.unwrap();
    assert_eq!(store.updates.load(Ordering::SeqCst), 2);
    assert_eq!(store.get("k").await.unwrap().as_deref(), Some("ours"));
}
