//! `EncryptedMemory`: seals values on the way in, unseals them on the way out.

use std::collections::HashMap;

use crate::crypto::{CacheKey, is_sealed};
use crate::{Memory, Result};

/// A [`Memory`] wrapper that stores every value as `aes256gcm:…`.
///
/// Reads decrypt sealed values and pass legacy plaintext values through
/// unchanged; since every write seals, a plaintext entry becomes ciphertext
/// the next time it is written (the TypeScript worker's auto-migration). A value
/// sealed under another key, or tampered with, is an error, never garbage.
///
/// The value string is what is encrypted, byte for byte: the TypeScript worker seals
/// `JSON.stringify(value)`, so write JSON documents when a TypeScript agent must
/// read them back.
#[derive(Debug, Clone)]
pub struct EncryptedMemory<M> {
    inner: M,
    key: CacheKey,
}

impl<M: Memory> EncryptedMemory<M> {
    /// Wraps `inner`, sealing with `key`.
    pub fn new(inner: M, key: CacheKey) -> Self {
        Self { inner, key }
    }

    /// The wrapped store (values there are as stored: sealed or legacy).
    pub fn inner(&self) -> &M {
        &self.inner
    }

    fn open(&self, stored: String) -> Result<String> {
        if is_sealed(&stored) {
            self.key.unseal(&stored)
        } else {
            Ok(stored)
        }
    }

    /// Re-writes `key` sealed if it holds a legacy plaintext value; returns
    /// whether it did.
    pub async fn migrate(&self, key: &str) -> Result<bool> {
        match self.inner.get(key).await? {
            Some(stored) if !is_sealed(&stored) => {
                self.inner.update(key, &self.key.seal(&stored)?).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait::async_trait]
impl<M: Memory> Memory for EncryptedMemory<M> {
    async fn create(&self, key: &str, value: &str) -> Result<()> {
        self.inner.create(key, &self.key.seal(value)?).await
    }

    async fn update(&self, key: &str, value: &str) -> Result<()> {
        self.inner.update(key, &self.key.seal(value)?).await
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        self.inner
            .get(key)
            .await?
            .map(|stored| self.open(stored))
            .transpose()
    }

    async fn get_many(&self, keys: &[String]) -> Result<HashMap<String, String>> {
        self.inner
            .get_many(keys)
            .await?
            .into_iter()
            .map(|(key, stored)| Ok((key, self.open(stored)?)))
            .collect()
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list_keys(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }

    async fn create_many(&self, items: &[(String, String)]) -> Result<Vec<Result<()>>> {
        let sealed = items
            .iter()
            .map(|(key, value)| Ok((key.clone(), self.key.seal(value)?)))
            .collect::<Result<Vec<_>>>()?;
        self.inner.create_many(&sealed).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.inner.delete_many(keys).await
    }

    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }

    async fn upsert(&self, key: &str, value: &str) -> Result<()> {
        // One sealing for all three steps of the inner upsert.
        self.inner.upsert(key, &self.key.seal(value)?).await
    }
}
