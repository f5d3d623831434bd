//! Making room when the disk fills before the cache reaches its own limit: the limit was
//! set above what the volume holds, other files share the volume, or no limit was set at
//! all. Without this, a full disk would stop the cache from taking anything new for good,
//! while it keeps serving blobs nobody has asked for in weeks. Instead, a write the disk
//! refuses for lack of room evicts the least recently used blobs (as the evictor would)
//! and is tried once more; only when eviction cannot free enough does the pull go straight
//! through uncached ([`crate::pass_through`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::{Inner, StoreError};

/// Left free beyond the blob itself: the index's log and the filesystem's own metadata
/// need room to grow too, and a disk filled to the last block fails those writes instead.
pub(crate) const SLACK: u64 = 1024 * 1024;

#[derive(Debug, Default)]
pub(crate) struct Room {
    /// One eviction for room at a time: fills that hit a full disk together would
    /// otherwise each evict what only one of them needed, before any of them can tell.
    busy: Mutex<()>,
    warned: AtomicBool,
}

/// Cap on what one eviction for room frees when the write itself needs less.
const HEADROOM_MAX: u64 = 256 * 1024 * 1024;

/// Bytes to evict so that `size` more (plus [`SLACK`]) fit beside `available` free ones,
/// or `None` if evicting every byte the cache holds (`evictable`) would not be enough.
///
/// If the free bytes say the blob fits, the disk refused for a reason `statvfs` does not
/// give in bytes (no inodes left, a quota), which evicting cures as well: room is made for
/// the blob as if nothing were free, as far as the cache can.
///
/// At least a hundredth of the cache goes (up to [`HEADROOM_MAX`]): on a disk that stays
/// full, each fill would otherwise make room for itself alone, and each such eviction
/// reads the whole index to find the oldest blobs.
pub(crate) fn bytes_to_free(size: u64, available: u64, evictable: u64) -> Option<u64> {
    let want = size.saturating_add(SLACK);
    let need = match want.saturating_sub(available) {
        0 => want.min(evictable),
        need if need > evictable => return None,
        need => need,
    };
    (need > 0).then(|| need.max((evictable / 100).min(HEADROOM_MAX)))
}

impl Inner {
    /// The disk refused `size` bytes for lack of room: evict least recently used, unpinned
    /// blobs until they fit. Returns whether anything was evicted: not if nothing could help
    /// (the blob is bigger than the cache could ever free, or everything old is in use), in
    /// which case the caller goes on without caching. Blocking.
    pub(crate) fn make_room(&self, size: u64) -> Result<bool, StoreError> {
        let _one = self
            .room
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Measured under the lock: another fill may just have made the room.
        let available = available(&self.tmp)?;
        let usage = self.usage_bytes.load(Ordering::Relaxed);
        let Some(need) = bytes_to_free(size, available, usage) else {
            return Ok(false);
        };
        let summary = self.evict(usage - need, false, &mut |_| {})?;
        if summary.bytes == 0 {
            return Ok(false);
        }
        // For the evictor to prune the index of what went.
        self.wake.notify_one();
        if self.room.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(
                evicted = summary.blobs,
                evicted_bytes = summary.bytes,
                "cache disk full: evicted to make room"
            );
        } else {
            tracing::warn!(
                evicted = summary.blobs,
                evicted_bytes = summary.bytes,
                usage = summary.usage_after,
                limit = self.limits.map(|l| l.max_bytes()),
                "cache disk filled up before the cache reached its limit: evicting least \
                 recently used blobs to make room (set cache.max_size below the disk's size \
                 to keep it from filling)"
            );
        }
        Ok(true)
    }

    /// Run `write`; if the disk has no room for its `size` bytes, make room and run it
    /// once more. Other errors, and a second "no room", are returned as they are; after a
    /// second "no room" fills skip the cache for a while, so a disk that eviction does not
    /// help is not emptied one fill at a time.
    pub(crate) fn with_room<T>(
        &self,
        size: u64,
        mut write: impl FnMut() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match write() {
            Err(e) if e.is_no_room() => match self.make_room(size) {
                Ok(true) => write().inspect_err(|e| {
                    if e.is_no_room() {
                        self.disk.pause();
                    }
                }),
                Ok(false) => Err(e),
                Err(evict) => {
                    tracing::warn!(error = %evict, "could not evict to make room on the cache disk");
                    Err(e)
                }
            },
            other => other,
        }
    }
}

fn available(dir: &Path) -> Result<u64, StoreError> {
    fs2::available_space(dir).map_err(StoreError::io("measuring free space on the cache disk"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn frees_only_what_is_missing_and_only_when_it_can() {
        assert_eq!(
            bytes_to_free(4 * MIB, 100 * MIB, 50 * MIB),
            Some(5 * MIB),
            "the bytes fit: inodes or a quota ran out"
        );
        assert_eq!(bytes_to_free(4 * MIB, 100 * MIB, 2 * MIB), Some(2 * MIB));
        assert_eq!(
            bytes_to_free(4 * MIB, 100 * MIB, 0),
            None,
            "nothing to evict"
        );
        assert_eq!(bytes_to_free(4 * MIB, 2 * MIB, 50 * MIB), Some(3 * MIB));
        assert_eq!(bytes_to_free(4 * MIB, 0, 5 * MIB), Some(5 * MIB));
        assert_eq!(
            bytes_to_free(6 * MIB, 0, 5 * MIB),
            None,
            "evicting everything would not be enough"
        );
        assert_eq!(bytes_to_free(u64::MAX, 0, u64::MAX), Some(u64::MAX));
        assert_eq!(
            bytes_to_free(4 * MIB, 2 * MIB, 1000 * MIB),
            Some(10 * MIB),
            "a hundredth of the cache"
        );
        assert_eq!(
            bytes_to_free(4 * MIB, 2 * MIB, 1 << 40),
            Some(HEADROOM_MAX),
            "capped at HEADROOM_MAX"
        );
    }

    fn no_room() -> StoreError {
        StoreError::Io {
            op: "reserving space for the blob",
            source: std::io::Error::from_raw_os_error(libc::EDQUOT),
        }
    }

    #[tokio::test]
    async fn a_refusal_eviction_does_not_cure_evicts_once_then_pauses_caching() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let blobs: Vec<_> = (0..4u8)
            .map(|i| bytes::Bytes::from(vec![i; 600 * 1024]))
            .collect();
        for b in &blobs {
            let d = pullgate_oci::Digest::sha256_of(b);
            store.put_verified(&d, b.clone(), None, None).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
        // A quota statvfs does not show: the disk looks roomy, and refuses every write.
        let mut calls = 0;
        let r: Result<(), _> = store.inner.with_room(100 * 1024, || {
            calls += 1;
            Err(no_room())
        });
        assert!(r.is_err_and(|e| e.is_no_room()));
        assert_eq!(calls, 2, "tried again once, after making room");
        // Room for the blob and the slack: the two oldest blobs (1.2 MiB) went.
        assert_eq!(store.evictions().blobs, 2);
        assert!(!store.disk().should_try(), "caching pauses");

        // A refusal that room cures: the retry succeeds, and nothing pauses.
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let d = pullgate_oci::Digest::sha256_of(&blobs[0]);
        store
            .put_verified(&d, blobs[0].clone(), None, None)
            .await
            .unwrap();
        let mut calls = 0;
        let r = store.inner.with_room(1, || {
            calls += 1;
            if calls == 1 {
                Err(no_room())
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r.unwrap(), 2);
        assert_eq!(store.evictions().blobs, 1);
        assert!(store.disk().should_try());
    }
}
