//! Whether the cache's disk takes writes. A full, read-only or failing disk must not fail
//! pulls: the mirror then streams blobs straight through ([`crate::pass_through`]) and
//! serves manifests from memory, and says so once in the log and always in the metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::StoreError;

/// After a write fails partway through a blob, fills skip the cache for this long. Failing
/// before the first byte (no room to reserve the blob, a read-only directory) costs a
/// system call, so those are simply tried again on the next fill; failing halfway costs
/// every client of that fill its download, and must not repeat on each retry.
pub const PAUSE_AFTER_WRITE_FAILURE: Duration = Duration::from_secs(30);

/// The health of the cache disk, as writes find it.
#[derive(Debug)]
pub struct DiskHealth {
    writable: AtomicBool,
    paused_until: Mutex<Option<Instant>>,
    write_errors: AtomicU64,
    bypassed: AtomicU64,
}

impl Default for DiskHealth {
    fn default() -> Self {
        DiskHealth {
            writable: AtomicBool::new(true),
            paused_until: Mutex::new(None),
            write_errors: AtomicU64::new(0),
            bypassed: AtomicU64::new(0),
        }
    }
}

impl DiskHealth {
    /// Whether the last write succeeded (the `pullgate_cache_writable` gauge).
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    /// Writes the disk refused, since start.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    /// Responses served without being cached because the disk refused, since start.
    pub fn bypassed(&self) -> u64 {
        self.bypassed.load(Ordering::Relaxed)
    }

    /// Whether a fill should try to cache now; false during the pause after a failure
    /// partway through a blob.
    pub fn should_try(&self) -> bool {
        let mut until = self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match *until {
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                *until = None;
                true
            }
            None => true,
        }
    }

    /// A write was refused with `error` (a [`StoreError::is_disk_trouble`] one). `midway`:
    /// it failed partway through a blob, so fills skip the cache for a while.
    pub fn failed(&self, error: &StoreError, midway: bool) {
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        if midway {
            self.pause();
        }
        if self.writable.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                %error,
                "cache disk is full or unwritable: pulls are served straight from the \
                 upstream without caching until a write succeeds again"
            );
        } else {
            tracing::debug!(%error, "cache write refused");
        }
    }

    /// Skip the cache for [`PAUSE_AFTER_WRITE_FAILURE`] (room was made, and the disk still
    /// refused).
    pub(crate) fn pause(&self) {
        *self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some(Instant::now() + PAUSE_AFTER_WRITE_FAILURE);
    }

    /// One response was served without being cached.
    pub fn note_bypass(&self) {
        self.bypassed.fetch_add(1, Ordering::Relaxed);
    }

    /// A write succeeded.
    pub fn succeeded(&self) {
        if !self.writable.swap(true, Ordering::Relaxed) {
            tracing::info!("cache disk takes writes again: caching resumed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enospc() -> StoreError {
        StoreError::Io {
            op: "writing tmp file",
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        }
    }

    #[test]
    fn failures_flip_the_gauge_and_only_midway_ones_pause() {
        let d = DiskHealth::default();
        assert!(d.writable() && d.should_try());
        d.failed(&enospc(), false);
        assert!(!d.writable());
        assert!(
            d.should_try(),
            "a failure before the first byte does not pause"
        );
        d.failed(&enospc(), true);
        assert!(!d.should_try(), "a failure midway pauses");
        assert_eq!(d.write_errors(), 2);
        d.succeeded();
        assert!(d.writable());
        *d.paused_until.lock().unwrap() = Some(Instant::now());
        assert!(d.should_try(), "the pause ends");
    }

    #[test]
    fn disk_trouble_is_told_apart_from_bad_content() {
        assert!(enospc().is_disk_trouble());
        for errno in [libc::EROFS, libc::EDQUOT, libc::EACCES, libc::EIO] {
            let e = StoreError::Io {
                op: "x",
                source: std::io::Error::from_raw_os_error(errno),
            };
            assert!(e.is_disk_trouble(), "{errno}");
        }
        let not_found = StoreError::Io {
            op: "x",
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert!(!not_found.is_disk_trouble());
        assert!(!StoreError::IngestFailed("aborted".into()).is_disk_trouble());
    }
}
