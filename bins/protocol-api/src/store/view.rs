//! What the status route answers, held in memory: one entry per stored
//! job, replaced by the writer only after the transaction that changed the
//! job committed, so a status read never sees an uncommitted transition and
//! never touches SQLite. Rebuilt from the database when it is opened;
//! purged jobs leave it with their rows. The coordinators' org keys are
//! held the same way (sealed), since every worker job reads one.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use uuid::Uuid;

use crate::api_types::JobStatusView;
use crate::jobs::Job;
use crate::seal::SecretBox;

use super::feed::{Followed, JobFeeds};

/// The status route's answer for one job, as of its last commit: the
/// status document (JSON) rendered by [`JobStatusView::of`], so it reveals
/// exactly what the status route reveals for the job.
#[derive(Clone)]
pub(super) enum StatusEntry {
    /// A document that reveals no secret (the job's status hides them).
    Document(Bytes),
    /// A document that reveals the job's secrets, sealed with the server
    /// key like every stored secret; opened only to answer a request.
    Sealed(Arc<[u8]>),
    /// The stored record cannot be read; why (never a secret value).
    Damaged(Arc<str>),
}

impl StatusEntry {
    /// The entry of `job` as stored now.
    pub(super) fn of(job: &Job, secrets: &SecretBox) -> Self {
        match serde_json::to_vec(&JobStatusView::of(job)) {
            Ok(json) if job.status.reveals_secrets() => {
                let json = zeroize::Zeroizing::new(json);
                StatusEntry::Sealed(secrets.seal(&json).into())
            }
            Ok(json) => StatusEntry::Document(Bytes::from(json)),
            Err(error) => {
                StatusEntry::Damaged(format!("its status does not render: {error}").into())
            }
        }
    }
}

/// A change to the view, made by a write and applied once it committed.
pub(super) enum ViewChange {
    /// The job's entry is now this.
    Put(Uuid, StatusEntry),
    /// The job is gone.
    Remove(Uuid),
    /// A coordinator's Ensue org is now this one.
    Org {
        /// The coordinator's DID.
        coordinator_did: String,
        /// The org, its API key sealed.
        org: SealedOrg,
    },
}

/// A coordinator's Ensue org as stored: its name and its sealed API key.
#[derive(Clone)]
pub(super) struct SealedOrg {
    /// The org's name.
    pub(super) name: String,
    /// The org's API key, sealed with the server key.
    pub(super) api_key: Arc<[u8]>,
}

/// Every stored job's status entry, and the feeds of followed jobs.
#[derive(Default)]
pub(super) struct StatusView {
    entries: RwLock<HashMap<Uuid, StatusEntry>>,
    feeds: JobFeeds,
    orgs: RwLock<HashMap<String, SealedOrg>>,
}

impl StatusView {
    /// The entry of job `id`, if the job is stored.
    pub(super) fn get(&self, id: &Uuid) -> Option<StatusEntry> {
        self.entries
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(id)
            .cloned()
    }

    /// Applies committed changes, in commit order.
    pub(super) fn apply(&self, changes: Vec<ViewChange>) {
        if changes.is_empty() {
            return;
        }
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for change in changes {
            // Published under the entries' lock, so a follower that starts
            // from an entry it read sees every later one.
            match change {
                ViewChange::Put(id, entry) => {
                    self.feeds.publish(&id, Some(&entry));
                    entries.insert(id, entry);
                }
                ViewChange::Remove(id) => {
                    self.feeds.publish(&id, None);
                    entries.remove(&id);
                }
                ViewChange::Org {
                    coordinator_did,
                    org,
                } => {
                    self.orgs
                        .write()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .insert(coordinator_did, org);
                }
            }
        }
    }

    /// The Ensue org of coordinator `did`, if this server provisioned it.
    pub(super) fn org(&self, did: &str) -> Option<SealedOrg> {
        self.orgs
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(did)
            .cloned()
    }

    /// Follows job `id` from its current entry (or after entry number
    /// `after`); `None` if the job is not stored.
    pub(super) fn follow(&self, id: Uuid, after: Option<u64>) -> Option<Followed> {
        // The entries' read lock keeps the writer from applying a change
        // between reading the current entry and joining the feed.
        let entries = self
            .entries
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = entries.get(&id)?.clone();
        Some(self.feeds.follow(id, current, after))
    }

    /// The feeds' event ids (see [`JobFeeds::event_id`]).
    pub(super) fn feeds(&self) -> &JobFeeds {
        &self.feeds
    }

    /// The entries of followed job `id` numbered after `after`.
    pub(super) fn since(&self, id: &Uuid, after: u64) -> Vec<(u64, StatusEntry)> {
        self.feeds.since(id, after)
    }

    /// How many jobs the view holds.
    pub(super) fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}
