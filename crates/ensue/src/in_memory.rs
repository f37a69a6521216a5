//! An in-process `Memory` with the service's semantics, for tests and examples.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Error, Memory, Result};

/// A [`Memory`] held in the process.
///
/// Same semantics as the service: `create` fails on an existing key, `update`
/// on a missing one, and listing is by literal prefix in key order. Clones
/// share the same entries, so one can be handed to a worker and inspected
/// from the test.
#[derive(Debug, Clone, Default)]
pub struct InMemory {
    entries: Arc<Mutex<BTreeMap<String, String>>>,
}

impl InMemory {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every entry, in key order.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, String>> {
        // A panic while holding the lock cannot leave the map half-written
        // (every operation is a single map call), so a poisoned lock is safe to reuse.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Memory for InMemory {
    async fn create(&self, key: &str, value: &str) -> Result<()> {
        let mut entries = self.lock();
        if entries.contains_key(key) {
            return Err(Error::AlreadyExists {
                key: key.to_owned(),
            });
        }
        entries.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    async fn update(&self, key: &str, value: &str) -> Result<()> {
        match self.lock().get_mut(key) {
            Some(slot) => {
                value.clone_into(slot);
                Ok(())
            }
            None => Err(Error::NotFound {
                key: key.to_owned(),
            }),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        Ok(self.lock().get(key).cloned())
    }

    async fn get_many(&self, keys: &[String]) -> Result<HashMap<String, String>> {
        let entries = self.lock();
        Ok(keys
            .iter()
            .filter_map(|key| entries.get(key).map(|value| (key.clone(), value.clone())))
            .collect())
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, _)| key.clone())
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.lock().remove(key);
        Ok(())
    }

    /// As the service's: callers batch for it as they would for Ensue.
    fn max_batch(&self) -> usize {
        crate::MAX_BATCH
    }
}
