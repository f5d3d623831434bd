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

use crate::{EvictSummary, Inner, StoreError};

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
/// At least a hundredth of the cache goes (up to [`HEADROOM_MAX`]): on a disk that stays
/// full, each fill would otherwise make room for itself alone, and each such eviction
/// reads the whole index to find the oldest blobs.
pub(crate) fn bytes_to_free(size: u64, available: u64, evictable: u64) -> Option<u64> {
    let need = size.saturating_add(SLACK).saturating_sub(available);
    if need == 0 || need > evictable {
        return None;
    }
    Some(need.max((evictable / 100).min(HEADROOM_MAX)))
}

impl Inner {
    /// The disk refused `size` bytes for lack of room: evict least recently used, unpinned
    /// blobs until they fit. Returns what was evicted, or `None` if nothing could help (the
    /// blob is bigger than the cache could ever free, or everything old is in use), in
    /// which case the caller goes on without caching. Blocking.
    pub(crate) fn make_room(&self, size: u64) -> Result<Option<EvictSummary>, StoreError> {
        let _one = self
            .room
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Measured under the lock: another fill may just have made the room.
        let available = available(&self.tmp)?;
        let usage = self.usage_bytes.load(Ordering::Relaxed);
        let Some(need) = bytes_to_free(size, available, usage) else {
            return Ok(None);
        };
        let summary = self.evict(usage - need, false, &mut |_| {})?;
        if summary.bytes == 0 {
            return Ok(None);
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
        Ok(Some(summary))
    }

    /// Run `write`; if the disk has no room for its `size` bytes, make room and run it
    /// once more. Other errors, and a second "no room", are returned as they are.
    pub(crate) fn with_room<T>(
        &self,
        size: u64,
        mut write: impl FnMut() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match write() {
            Err(e) if e.is_no_room() => match self.make_room(size) {
                Ok(Some(_)) => write(),
                Ok(None) => Err(e),
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
        assert_eq!(bytes_to_free(4 * MIB, 100 * MIB, 50 * MIB), None, "it fits");
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
}
