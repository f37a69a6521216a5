//! The `Memory` port: what coordinators and workers need from Ensue.

use std::collections::HashMap;
use std::sync::Arc;

use crate::Result;

/// A string key-value store with Ensue's semantics.
///
/// Held as `Arc<dyn Memory>`; [`EnsueClient`](crate::EnsueClient) talks to the
/// service, [`InMemory`](crate::InMemory) keeps everything in the process and
/// [`EncryptedMemory`](crate::EncryptedMemory) seals values on top of either.
#[async_trait::async_trait]
pub trait Memory: Send + Sync {
    /// Creates `key`; [`Error::AlreadyExists`](crate::Error::AlreadyExists) if it is present.
    async fn create(&self, key: &str, value: &str) -> Result<()>;

    /// Replaces the value of `key`; [`Error::NotFound`](crate::Error::NotFound) if it is missing.
    async fn update(&self, key: &str, value: &str) -> Result<()>;

    /// Reads `key`; `Ok(None)` when it is missing.
    async fn get(&self, key: &str) -> Result<Option<String>>;

    /// Reads several keys at once; missing keys are absent from the map.
    async fn get_many(&self, keys: &[String]) -> Result<HashMap<String, String>>;

    /// Every key starting with `prefix` (taken literally), all pages, in key order.
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>>;

    /// Deletes `key`; deleting a missing key is `Ok`.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Creates every `(key, value)` pair, as few requests as the store allows
    /// (the service takes [`MAX_BATCH`](crate::MAX_BATCH) items per call).
    ///
    /// Answers one outcome per item, in order: a key that is present fails
    /// alone with [`Error::AlreadyExists`](crate::Error::AlreadyExists) while
    /// the others are created. `Err` means a call failed as a whole: items of
    /// earlier calls may have been created, so a retry must expect
    /// `AlreadyExists` for them. The default creates the items one by one.
    async fn create_many(&self, items: &[(String, String)]) -> Result<Vec<Result<()>>> {
        let mut outcomes = Vec::with_capacity(items.len());
        for (key, value) in items {
            outcomes.push(self.create(key, value).await);
        }
        Ok(outcomes)
    }

    /// The most items one call of [`create_many`](Self::create_many) or
    /// [`delete_many`](Self::delete_many) sends together: 1 (the default)
    /// when every item costs a call of its own, so a caller rewriting many
    /// keys is better off updating them one by one.
    fn max_batch(&self) -> usize {
        1
    }

    /// Deletes every key, as few requests as the store allows; missing keys
    /// are not an error. The default deletes them one by one.
    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            self.delete(key).await?;
        }
        Ok(())
    }

    /// Writes `key` whether or not it exists.
    ///
    /// Updates first (the common case), creates on not-found as the service
    /// requires, and when that create loses a race to another writer, updates again.
    async fn upsert(&self, key: &str, value: &str) -> Result<()> {
        match self.update(key, value).await {
            Err(error) if error.is_not_found() => match self.create(key, value).await {
                Err(error) if error.is_already_exists() => self.update(key, value).await,
                other => other,
            },
            other => other,
        }
    }
}

#[async_trait::async_trait]
impl<M: Memory + ?Sized> Memory for Arc<M> {
    async fn create(&self, key: &str, value: &str) -> Result<()> {
        (**self).create(key, value).await
    }
    async fn update(&self, key: &str, value: &str) -> Result<()> {
        (**self).update(key, value).await
    }
    async fn get(&self, key: &str) -> Result<Option<String>> {
        (**self).get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> Result<HashMap<String, String>> {
        (**self).get_many(keys).await
    }
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        (**self).list_keys(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        (**self).delete(key).await
    }
    async fn create_many(&self, items: &[(String, String)]) -> Result<Vec<Result<()>>> {
        (**self).create_many(items).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        (**self).delete_many(keys).await
    }
    fn max_batch(&self) -> usize {
        (**self).max_batch()
    }
    async fn upsert(&self, key: &str, value: &str) -> Result<()> {
        (**self).upsert(key, value).await
    }
}
