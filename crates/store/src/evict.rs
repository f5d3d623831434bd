//! Eviction: least recently used blobs go when the cache grows past its high watermark,
//! until it is back under its low watermark.
//!
//! Order of removal, for crash safety: the index record first, then the file (renamed into
//! `tmp/`, then deleted). A crash after the first step leaves a file without a record,
//! which start-up repair re-hashes and indexes again; a crash after the rename leaves a
//! file in `tmp/`, which start-up empties. sled writes its log asynchronously, so a crash
//! can also lose the record's removal after the file is gone: a record without a file,
//! which start-up repair drops. Every state in between is one that repair fixes.
//!
//! The work runs on a blocking thread in the background, woken when a commit crosses the
//! high watermark and once a minute; no request ever waits for it.
//!
//! After blobs were evicted (here, or to make room on a full disk), the same task drops the
//! tags and repository links that pointed at them, so the index stays bounded by what the
//! cache holds rather than by everything it ever held. A prune reads the whole index, so it
//! runs at most once per [`PRUNE_GAP`]; what it leaves meanwhile only costs a request
//! upstream.
//!
//! Candidates come from a scan of the index's blob records in bounded batches (the oldest
//! few thousand, no more than the bytes needed), not from a second tree ordered by access
//! time: there is nothing to keep in step on every touch, and a run is rare (it frees the
//! whole band between the watermarks).

use std::collections::BinaryHeap;
use std::fs;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pullgate_oci::Digest;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{Inner, Store, StoreError};

/// How big the cache may grow, and the band eviction keeps it in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    max_bytes: u64,
    high: f64,
    low: f64,
}

impl Limits {
    /// `high` and `low` are fractions of `max_bytes`: eviction starts above `high` and
    /// stops at or below `low`. Needs `0 < low < high <= 1`.
    pub fn new(max_bytes: u64, high: f64, low: f64) -> Result<Limits, StoreError> {
        if max_bytes == 0 {
            return Err(StoreError::InvalidLimits(
                "the maximum size must be above 0".into(),
            ));
        }
        if !(low > 0.0 && low < high && high <= 1.0) {
            return Err(StoreError::InvalidLimits(format!(
                "watermarks must satisfy 0 < low < high <= 1 (low {low}, high {high})"
            )));
        }
        Ok(Limits {
            max_bytes,
            high,
            low,
        })
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn high(&self) -> f64 {
        self.high
    }

    pub fn low(&self) -> f64 {
        self.low
    }

    pub fn high_bytes(&self) -> u64 {
        fraction(self.max_bytes, self.high)
    }

    pub fn low_bytes(&self) -> u64 {
        fraction(self.max_bytes, self.low)
    }
}

fn fraction(n: u64, f: f64) -> u64 {
    // Exact enough: f64 holds 53 bits, and the watermarks are a band, not a byte budget.
    (n as f64 * f) as u64
}

/// Blobs evicted since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evictions {
    pub blobs: u64,
    pub bytes: u64,
}

/// One blob eviction removed (or, in a dry run, would remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    pub digest: Digest,
    pub size: u64,
    pub last_access: SystemTime,
}

/// What one eviction run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvictSummary {
    pub blobs: u64,
    pub bytes: u64,
    /// Bytes in the cache afterwards (in a dry run: what they would be).
    pub usage_after: u64,
    /// Candidates left alone because a request or fill held them.
    pub pinned: u64,
}

/// Candidates gathered per pass over the index: bounds the memory of a pass whatever the
/// cache holds; a cache that needs more evictions than this takes more passes.
const BATCH: usize = 4096;
/// Passes per run: bounds a run over a cache where everything old is pinned.
const MAX_PASSES: usize = 1024;
/// The evictor's periodic look, for usage that crossed the watermark without a commit
/// saying so (a limit lowered by a restart, a failed run).
const PERIOD: Duration = Duration::from_secs(60);
/// Pause after a run that could not get under the high watermark (or failed), so commits
/// over it do not set off one fruitless run each.
const BACKOFF: Duration = Duration::from_secs(1);

/// Least time between two prunes of the index.
const PRUNE_GAP: Duration = Duration::from_secs(60);

/// Position in least-recently-used order: access time, then digest to make it total.
type Cursor = (u64, Digest);

impl Store {
    /// The configured limits, if the cache is bounded.
    pub fn limits(&self) -> Option<Limits> {
        self.inner.limits
    }

    /// Evictions since the store was opened.
    pub fn evictions(&self) -> Evictions {
        Evictions {
            blobs: self.inner.evicted_blobs.load(Ordering::Relaxed),
            bytes: self.inner.evicted_bytes.load(Ordering::Relaxed),
        }
    }

    /// The background evictor, for its owner to spawn (and wait for at shutdown). It holds
    /// the store only weakly and ends when the store is dropped or `stop` is cancelled
    /// (after the run under way, if any). An unbounded cache needs it too: a full disk
    /// makes room by evicting, and the index is pruned after.
    pub fn evictor(&self, stop: CancellationToken) -> impl std::future::Future<Output = ()> {
        let weak = Arc::downgrade(&self.inner);
        let wake = Arc::clone(&self.inner.wake);
        evictor(weak, wake, stop)
    }

    /// Evict least recently used, unpinned blobs until usage is at or below the low
    /// watermark (`target` overrides it). Blocking: call it from a blocking thread.
    /// `on_evict` sees each blob as it goes; with `dry_run` nothing is removed and it sees
    /// what would be.
    pub fn evict_blocking(
        &self,
        target: Option<u64>,
        dry_run: bool,
        on_evict: &mut dyn FnMut(&Evicted),
    ) -> Result<EvictSummary, StoreError> {
        let target = match (target, self.inner.limits) {
            (Some(t), _) => t,
            (None, Some(l)) => l.low_bytes(),
            (None, None) => u64::MAX,
        };
        self.inner.evict(target, dry_run, on_evict)
    }
}

async fn evictor(weak: Weak<Inner>, wake: Arc<Notify>, stop: CancellationToken) {
    // The first look is at once: a cache can start above its mark (a crash before an
    // eviction ran, a lowered max_size).
    let mut first = true;
    let mut last_prune: Option<tokio::time::Instant> = None;
    // Evictions counted at the last prune: a prune is due when the count has moved.
    let mut pruned_at = 0;
    loop {
        if !first {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(PERIOD) => {}
                _ = stop.cancelled() => return,
            }
        }
        first = false;
        // The store is held only while there is work, never across a wait: dropping it
        // ends this task.
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let over = inner
            .limits
            .filter(|l| inner.accounted_bytes() > l.high_bytes());
        if let Some(limits) = over {
            evict_in_background(inner, limits).await;
        } else {
            drop(inner);
        }
        if last_prune.is_some_and(|t| t.elapsed() < PRUNE_GAP) {
            continue;
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let evicted = inner.evicted_blobs.load(Ordering::Relaxed);
        if evicted == pruned_at {
            continue;
        }
        pruned_at = evicted;
        last_prune = Some(tokio::time::Instant::now());
        match tokio::task::spawn_blocking(move || inner.prune_index(false)).await {
            Ok(Ok(p)) if p.tags_removed + p.links_removed > 0 => tracing::info!(
                tags_removed = p.tags_removed,
                links_removed = p.links_removed,
                "cache index pruned of tags and links to evicted blobs"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning the cache index failed"),
            Err(e) => tracing::warn!(error = %e, "pruning the cache index task failed"),
        }
    }
}

/// One eviction run down to the low watermark, with its log line; a run that could not
/// get under the high watermark (or failed) is followed by a pause.
async fn evict_in_background(run: Arc<Inner>, limits: Limits) {
    let outcome =
        tokio::task::spawn_blocking(move || run.evict(limits.low_bytes(), false, &mut |_| {}))
            .await;
    match outcome {
        // Commits land while a run goes on; only ending above the high mark means it
        // could not keep up (everything left is pinned, or being filled).
        Ok(Ok(s)) if s.usage_after > limits.high_bytes() => {
            tracing::warn!(
                evicted = s.blobs,
                evicted_bytes = s.bytes,
                pinned = s.pinned,
                usage = s.usage_after,
                high_watermark = limits.high_bytes(),
                "cache still above its high watermark after eviction: what is left is in use"
            );
            // Nothing more to take now: wait before trying again rather than spin on
            // every commit.
            tokio::time::sleep(BACKOFF).await;
        }
        Ok(Ok(s)) => tracing::info!(
            evicted = s.blobs,
            evicted_bytes = s.bytes,
            usage = s.usage_after,
            "cache evicted down to its low watermark"
        ),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cache eviction failed");
            tokio::time::sleep(BACKOFF).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "cache eviction task failed");
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The evictor holds the store weakly: wake it to find the store gone and end.
        self.wake.notify_one();
        // Counts not yet written would be lost with the process; sled writes them out
        // when the last handle on the index goes, just after this.
        let pending = self.pulls.take();
        if !pending.is_empty() {
            self.write_pulls(pending);
        }
    }
}

impl Inner {
    /// A commit added bytes: wake the evictor if they took usage over the high watermark.
    pub(crate) fn note_growth(&self) {
        if let Some(l) = &self.limits {
            if self.accounted_bytes() > l.high_bytes() {
                self.wake.notify_one();
            }
        }
    }

    /// Committed bytes plus those ingests under way have written to `tmp/`.
    pub(crate) fn accounted_bytes(&self) -> u64 {
        self.usage_bytes
            .load(Ordering::Relaxed)
            .saturating_add(self.inflight_bytes.load(Ordering::Relaxed))
    }

    pub(crate) fn evict(
        &self,
        target: u64,
        dry_run: bool,
        on_evict: &mut dyn FnMut(&Evicted),
    ) -> Result<EvictSummary, StoreError> {
        let mut summary = EvictSummary::default();
        let mut usage = self.accounted_bytes();
        let mut cursor: Option<Cursor> = None;
        for _ in 0..MAX_PASSES {
            if !dry_run {
                usage = self.accounted_bytes();
            }
            if usage <= target {
                break;
            }
            let batch = self.oldest(cursor.as_ref(), usage - target)?;
            let Some(last) = batch.last() else {
                break;
            };
            cursor = Some((last.0, last.1.clone()));
            for (at_ms, digest, size) in batch {
                if usage <= target {
                    break;
                }
                let gone = if dry_run {
                    if self.pins.is_pinned(&digest) {
                        None
                    } else {
                        Some(size)
                    }
                } else {
                    self.evict_one(&digest, at_ms)?
                };
                match gone {
                    Some(freed) => {
                        usage = if dry_run {
                            usage.saturating_sub(freed)
                        } else {
                            // Fills commit while a run goes on: keep up with them.
                            self.accounted_bytes()
                        };
                        summary.blobs += 1;
                        summary.bytes += freed;
                        on_evict(&Evicted {
                            digest,
                            size: freed,
                            last_access: UNIX_EPOCH + Duration::from_millis(at_ms),
                        });
                    }
                    None => summary.pinned += 1,
                }
            }
        }
        summary.usage_after = if dry_run {
            usage
        } else {
            self.accounted_bytes()
        };
        Ok(summary)
    }

    /// The least recently used records after `cursor`, unpinned, oldest first: at most
    /// [`BATCH`], and no more than it takes to free `need` bytes.
    fn oldest(
        &self,
        cursor: Option<&Cursor>,
        need: u64,
    ) -> Result<Vec<(u64, Digest, u64)>, StoreError> {
        // A max-heap on access time: the newest candidate is on top, ready to be dropped
        // when older ones already cover what is needed.
        let mut heap: BinaryHeap<(u64, Digest, u64)> = BinaryHeap::new();
        let mut held: u64 = 0;
        for entry in self.index.blobs() {
            let Ok((digest, record)) = entry? else {
                continue;
            };
            let at = crate::index::to_ms(record.last_access);
            if let Some((c_at, c_digest)) = cursor {
                if (at, &digest) <= (*c_at, c_digest) {
                    continue;
                }
            }
            if self.pins.is_pinned(&digest) {
                continue;
            }
            heap.push((at, digest, record.size));
            held += record.size;
            while heap.len() > BATCH
                || heap
                    .peek()
                    .is_some_and(|top| held.saturating_sub(top.2) >= need)
            {
                if let Some(top) = heap.pop() {
                    held -= top.2;
                }
            }
        }
        Ok(heap.into_sorted_vec())
    }

    /// Evict one blob unless it is pinned or was used since the candidate list was made
    /// (its access time is no longer `at_ms`). Returns the bytes freed, or `None` if it was
    /// kept.
    pub(crate) fn evict_one(&self, digest: &Digest, at_ms: u64) -> Result<Option<u64>, StoreError> {
        let path = self.blob_path(digest);
        let trash = self.tmp.join(format!(
            "evict-{}-{}-{}",
            &digest.hex()[..16],
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let size = {
            // Under the pin lock, so no request can pin this blob between the check and
            // the moment its file leaves blobs/. Only the record removal and a rename
            // happen under it; the unlink, which can take a while for a large file, does
            // not.
            let pins = self.pins.lock();
            if pins.contains_key(digest) {
                return Ok(None);
            }
            match self.index.blob(digest)? {
                Some(r) if crate::index::to_ms(r.last_access) == at_ms => {}
                _ => return Ok(None),
            }
            self.index.remove_blob(digest)?;
            let size = match fs::metadata(&path) {
                Ok(m) => m.len(),
                // A record without a file: the record was all there was to remove.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(0)),
                Err(e) => {
                    return Err(StoreError::Io {
                        op: "stat blob to evict",
                        source: e,
                    })
                }
            };
            fs::rename(&path, &trash).map_err(StoreError::io("moving an evicted blob to tmp/"))?;
            size
        };
        if let Err(e) = fs::remove_file(&trash) {
            // tmp/ is emptied at the next start; the bytes are only late to be freed.
            tracing::warn!(path = %trash.display(), error = %e, "could not delete an evicted blob");
        }
        self.usage_bytes.fetch_sub(size, Ordering::Relaxed);
        self.usage_blobs.fetch_sub(1, Ordering::Relaxed);
        self.evicted_blobs.fetch_add(1, Ordering::Relaxed);
        self.evicted_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(Some(size))
    }
}
