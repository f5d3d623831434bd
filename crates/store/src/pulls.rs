//! Pull counters: how often each manifest was served, per (upstream, repository, tag or
//! digest as the client asked), for `pullgate cache top`.
//!
//! Counting must cost a request next to nothing: a hit is a mutex, a hash-map increment and
//! a key built from three short strings, with no sled write. Counts gather in memory and go
//! to the index's `pulls` tree in one pass, by the request that finds the gathered counts
//! [`FLUSH_EVERY`] old or [`MAX_PENDING`] keys big (so at most one request in that time, or
//! in that many new keys, pays a batch of in-memory sled updates), and at [`Store::flush`]
//! (shutdown). A crash loses at most [`FLUSH_EVERY`] of counts: they are statistics, not
//! accounts.
//!
//! The tree is bounded too ([`MAX_RECORDS`]): past it, the least recently pulled records
//! are dropped, so a CI pulling a fresh tag per build cannot grow the index without end.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pullgate_oci::{Reference, RepoName, UpstreamId};

use crate::{Store, StoreError};

/// Longest time counts wait in memory before a request writes them.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// Distinct keys gathered in memory at most; the request that reaches it writes them.
pub const MAX_PENDING: usize = 1024;
/// Pull records kept in the index at most; past it the least recently pulled go.
pub const MAX_RECORDS: u64 = 65_536;
/// What a trim keeps of [`MAX_RECORDS`]: trimming a little further than the bound means a
/// scan of the tree happens once per many new keys, not once per key.
const TRIM_TO: u64 = MAX_RECORDS / 8 * 7;

/// How often one image (as the client named it) was pulled, and when last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRecord {
    pub upstream: UpstreamId,
    pub repo: RepoName,
    /// The tag or digest the client asked for.
    pub reference: Reference,
    pub pulls: u64,
    pub last_pulled: SystemTime,
}

/// A count gathered in memory: pulls since the last write, and the latest one (ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pending {
    pub pulls: u64,
    pub last_ms: u64,
}

pub(crate) struct PullCounter {
    pending: Mutex<Gathered>,
}

struct Gathered {
    counts: HashMap<Vec<u8>, Pending>,
    /// When the counts were last taken to be written.
    since: Instant,
}

impl Default for PullCounter {
    fn default() -> Self {
        PullCounter {
            pending: Mutex::new(Gathered {
                counts: HashMap::new(),
                since: Instant::now(),
            }),
        }
    }
}

impl PullCounter {
    fn lock(&self) -> MutexGuard<'_, Gathered> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Count one pull; returns the gathered counts when they are due to be written.
    pub(crate) fn add(&self, key: Vec<u8>, at_ms: u64) -> Option<HashMap<Vec<u8>, Pending>> {
        let mut g = self.lock();
        let e = g.counts.entry(key).or_default();
        e.pulls += 1;
        e.last_ms = e.last_ms.max(at_ms);
        if g.counts.len() >= MAX_PENDING || g.since.elapsed() >= FLUSH_EVERY {
            g.since = Instant::now();
            return Some(std::mem::take(&mut g.counts));
        }
        None
    }

    /// Everything gathered, whether due or not (flush, shutdown).
    pub(crate) fn take(&self) -> HashMap<Vec<u8>, Pending> {
        let mut g = self.lock();
        g.since = Instant::now();
        std::mem::take(&mut g.counts)
    }
}

pub(crate) fn trim_to() -> u64 {
    TRIM_TO
}

impl Store {
    /// Count a manifest served for `reference` (the tag or digest the client asked for) of
    /// `repo` on `upstream`. Cheap; best effort: a failure to write the counts is logged,
    /// never fatal. See the module docs for when they reach the index.
    pub fn count_pull(&self, upstream: &UpstreamId, repo: &RepoName, reference: &Reference) {
        let key = crate::index::pull_key(upstream, repo, reference);
        let at = crate::index::to_ms(SystemTime::now());
        if let Some(due) = self.inner.pulls.add(key, at) {
            self.inner.write_pulls(due);
        }
    }

    /// Every pull record, counts still in memory included (they are written first). At
    /// most [`MAX_RECORDS`] and whatever arrived since the last trim; records whose key
    /// does not parse are skipped.
    pub fn pulls(&self) -> Result<Vec<PullRecord>, StoreError> {
        self.inner.index.add_pulls(self.inner.pulls.take())?;
        self.inner.index.pulls().collect()
    }
}

impl crate::Inner {
    pub(crate) fn write_pulls(&self, due: HashMap<Vec<u8>, Pending>) {
        if let Err(e) = self.index.add_pulls(due) {
            tracing::warn!(error = %e, "could not record manifest pull counts");
        }
    }
}

pub(crate) fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use pullgate_oci::{Digest, Reference, RepoName, Tag, UpstreamId};

    use super::{Pending, MAX_PENDING};
    use crate::Store;

    fn target(repo: &str) -> (UpstreamId, RepoName) {
        (
            UpstreamId::parse("docker.io").unwrap(),
            RepoName::parse(repo).unwrap(),
        )
    }

    fn tag(t: &str) -> Reference {
        Reference::Tag(Tag::parse(t).unwrap())
    }

    /// What the index holds, without writing what is gathered in memory first.
    fn written(store: &Store) -> Vec<(String, u64)> {
        store
            .inner
            .index
            .pulls()
            .map(|r| {
                let r = r.unwrap();
                (format!("{}:{}", r.repo, r.reference), r.pulls)
            })
            .collect()
    }

    #[test]
    fn pulls_gather_in_memory_and_reach_the_index_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (up, a) = target("library/a");
        let (_, b) = target("library/b");
        let digest = Reference::Digest(Digest::sha256_of(b"m"));
        for _ in 0..3 {
            store.count_pull(&up, &a, &tag("v1"));
        }
        store.count_pull(&up, &b, &tag("v1"));
        store.count_pull(&up, &a, &digest);
        // Nothing was written per request: the counts are still in memory.
        assert!(written(&store).is_empty());

        let mut all = store.pulls().unwrap();
        all.sort_by_key(|r| std::cmp::Reverse(r.pulls));
        assert_eq!(all.len(), 3);
        assert_eq!((all[0].repo.as_str(), all[0].pulls), ("library/a", 3));
        assert_eq!(all[0].reference, tag("v1"));
        assert!(all[0].last_pulled.elapsed().unwrap().as_secs() < 60);
        assert!(all.iter().any(|r| r.reference == digest && r.pulls == 1));
        assert_eq!(written(&store).len(), 3);

        // Counts add up across writes and survive a restart (dropping the store writes
        // what is left in memory).
        store.count_pull(&up, &a, &tag("v1"));
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let a1 = written(&store)
            .into_iter()
            .find(|(k, _)| k == "library/a:v1")
            .unwrap();
        assert_eq!(a1.1, 4);
    }

    #[test]
    fn the_request_that_fills_the_map_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (up, repo) = target("library/many");
        for i in 0..MAX_PENDING - 1 {
            store.count_pull(&up, &repo, &tag(&format!("t{i}")));
        }
        assert!(written(&store).is_empty());
        store.count_pull(&up, &repo, &tag("last"));
        assert_eq!(written(&store).len(), MAX_PENDING);
        assert!(store.inner.pulls.take().is_empty());
    }

    #[test]
    fn a_trim_keeps_the_most_recently_pulled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (up, repo) = target("library/trim");
        let counts: HashMap<Vec<u8>, Pending> = (0..100u64)
            .map(|i| {
                let key = crate::index::pull_key(&up, &repo, &tag(&format!("t{i}")));
                (
                    key,
                    Pending {
                        pulls: 1,
                        last_ms: 1_000 + i,
                    },
                )
            })
            .collect();
        store.inner.index.add_pulls(counts).unwrap();
        store.inner.index.trim_pulls(10).unwrap();
        let mut left: Vec<String> = written(&store).into_iter().map(|(k, _)| k).collect();
        left.sort();
        let mut want: Vec<String> = (90..100).map(|i| format!("library/trim:t{i}")).collect();
        want.sort();
        assert_eq!(left, want);
    }
}
