//! Committed status changes, pushed to whoever follows a job (the status
//! route's Server-Sent Events). The view publishes each entry it applies,
//! so a follower sees exactly the committed states, in commit order.
//!
//! Only followed jobs have a feed. Entries are numbered from one counter for
//! the whole process run, and a feed keeps its last few, so a follower that
//! reconnects with the number it saw last gets what it missed. A feed nobody
//! has followed for [`UNFOLLOWED_GRACE`] is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use uuid::Uuid;

use super::view::StatusEntry;

/// Entries a feed keeps for followers that reconnect: more than a job has
/// statuses, so a reconnect within a job's life misses nothing.
const KEPT_ENTRIES: usize = 16;

/// How long a feed outlives its last follower, for a client that
/// reconnects (a browser retries within seconds).
pub(super) const UNFOLLOWED_GRACE: Duration = Duration::from_secs(10 * 60);

/// One followed job's committed entries.
struct Feed {
    /// The last [`KEPT_ENTRIES`] entries, oldest first, with their numbers.
    recent: VecDeque<(u64, StatusEntry)>,
    /// Tells followers the newest number.
    changed: watch::Sender<u64>,
    /// Since when nobody follows it.
    unfollowed_since: Option<Instant>,
}

impl Feed {
    fn newest(&self) -> u64 {
        self.recent.back().map_or(0, |(number, _)| *number)
    }

    /// The kept entries numbered after `after`, oldest first.
    fn after(&self, after: u64) -> Vec<(u64, StatusEntry)> {
        self.recent
            .iter()
            .filter(|(number, _)| *number > after)
            .cloned()
            .collect()
    }
}

/// What a follower gets: the entries to send now, and a receiver that
/// wakes when more are committed.
pub(super) struct Followed {
    /// Entries after the follower's last one (or the current entry alone),
    /// with their numbers, oldest first.
    pub(super) entries: Vec<(u64, StatusEntry)>,
    /// Wakes on each commit.
    pub(super) changed: watch::Receiver<u64>,
}

/// Every followed job's feed.
pub(super) struct JobFeeds {
    feeds: Mutex<Feeds>,
    /// Names this process run in event ids, so an id from an earlier run
    /// (whose numbers this run reuses) is never taken for one of ours.
    run: u32,
}

impl Default for JobFeeds {
    fn default() -> Self {
        Self {
            feeds: Mutex::default(),
            run: rand::random(),
        }
    }
}

#[derive(Default)]
struct Feeds {
    by_job: HashMap<Uuid, Feed>,
    /// The last number given out.
    counter: u64,
}

impl Feeds {
    fn next_number(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// Drops feeds nobody has followed for [`UNFOLLOWED_GRACE`].
    fn forget_unfollowed(&mut self, now: Instant) {
        self.by_job.retain(|_, feed| {
            if feed.changed.receiver_count() > 0 {
                feed.unfollowed_since = None;
                return true;
            }
            let since = *feed.unfollowed_since.get_or_insert(now);
            now.duration_since(since) < UNFOLLOWED_GRACE
        });
    }
}

impl JobFeeds {
    /// The event id of entry `number`: `<run>-<number>`.
    pub(super) fn event_id(&self, number: u64) -> String {
        format!("{:08x}-{number}", self.run)
    }

    /// The entry number an event id of this run names.
    pub(super) fn number_of(&self, event_id: &str) -> Option<u64> {
        let (run, number) = event_id.trim().split_once('-')?;
        (u32::from_str_radix(run, 16).ok()? == self.run)
            .then(|| number.parse().ok())
            .flatten()
    }

    /// Starts (or joins) following job `id`, whose entry is `current`. After
    /// `after` (a number this run gave out) only the entries since then are
    /// returned; otherwise the current entry alone.
    pub(super) fn follow(&self, id: Uuid, current: StatusEntry, after: Option<u64>) -> Followed {
        let mut feeds = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        feeds.forget_unfollowed(Instant::now());
        if !feeds.by_job.contains_key(&id) {
            let number = feeds.next_number();
            feeds.by_job.insert(
                id,
                Feed {
                    recent: VecDeque::from([(number, current)]),
                    changed: watch::channel(number).0,
                    unfollowed_since: None,
                },
            );
        }
        let feed = &feeds.by_job[&id];
        let oldest = feed.recent.front().map_or(0, |(number, _)| *number);
        let entries = match after {
            // Everything after `after` is still kept: nothing is lost.
            // Saturating: `after` comes from the client's `Last-Event-ID`.
            Some(after) if after.saturating_add(1) >= oldest && after <= feed.newest() => {
                feed.after(after)
            }
            _ => feed.recent.back().cloned().into_iter().collect(),
        };
        Followed {
            entries,
            changed: feed.changed.subscribe(),
        }
    }

    /// The entries of job `id` numbered after `after`.
    pub(super) fn since(&self, id: &Uuid, after: u64) -> Vec<(u64, StatusEntry)> {
        let feeds = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        feeds
            .by_job
            .get(id)
            .map_or_else(Vec::new, |feed| feed.after(after))
    }

    /// Records a committed entry of job `id` (`None`: the job is gone), if
    /// anyone follows it.
    pub(super) fn publish(&self, id: &Uuid, entry: Option<&StatusEntry>) {
        let mut guard = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        let feeds = &mut *guard;
        if feeds.by_job.is_empty() {
            return;
        }
        match entry {
            Some(entry) => {
                if let Some(feed) = feeds.by_job.get_mut(id) {
                    feeds.counter += 1;
                    feed.recent.push_back((feeds.counter, entry.clone()));
                    if feed.recent.len() > KEPT_ENTRIES {
                        feed.recent.pop_front();
                    }
                    feed.changed.send_replace(feeds.counter);
                }
            }
            // A purged job's followers see their channel close.
            None => {
                feeds.by_job.remove(id);
            }
        }
        feeds.forget_unfollowed(Instant::now());
    }
}
