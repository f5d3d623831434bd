//! Pins: blobs that eviction must leave alone because someone is reading or writing them.
//!
//! A pin is taken once per request or fill, never per chunk: one map operation when a
//! response starts and one when its stream is dropped. Eviction checks the map under the
//! same lock while it unlinks a blob from the index and moves its file out of `blobs/`, so
//! a blob is either pinned before eviction looks at it (and kept), or already gone when
//! the pin is taken (and the caller finds it missing and refetches it).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use pullgate_oci::Digest;

use crate::{BlobStream, Inner, StoreError};

/// Reference counts by digest. Entries exist only while pinned, so the map is bounded by
/// the requests and fills in flight (themselves bounded by the server's connection limit).
#[derive(Default)]
pub(crate) struct Pins(Mutex<HashMap<Digest, u32>>);

impl Pins {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<Digest, u32>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn is_pinned(&self, d: &Digest) -> bool {
        self.lock().contains_key(d)
    }
}

/// Keeps one blob from being evicted while it lives. Take it before looking the blob up,
/// so that what the lookup finds stays until the pin is dropped.
pub struct BlobPin {
    inner: Arc<Inner>,
    digest: Digest,
}

impl BlobPin {
    pub(crate) fn new(inner: Arc<Inner>, digest: Digest) -> BlobPin {
        *inner.pins.lock().entry(digest.clone()).or_insert(0) += 1;
        BlobPin { inner, digest }
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Pins on the same digest besides this one: whether anyone else (a response being
    /// streamed, a waiting client) still wants the blob.
    pub fn others(&self) -> u32 {
        self.inner
            .pins
            .lock()
            .get(&self.digest)
            .map_or(0, |n| n.saturating_sub(1))
    }
}

impl Drop for BlobPin {
    fn drop(&mut self) {
        let mut pins = self.inner.pins.lock();
        if let Some(n) = pins.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.digest);
            }
        }
    }
}

impl std::fmt::Debug for BlobPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobPin({})", self.digest)
    }
}

impl BlobStream {
    /// This stream, holding `pin` until it is dropped: the blob stays in the cache for as
    /// long as a client is being sent it.
    pub fn pinned(self, pin: BlobPin) -> BlobStream {
        BlobStream::new(Pinned {
            stream: self,
            _pin: pin,
        })
    }
}

struct Pinned {
    stream: BlobStream,
    _pin: BlobPin,
}

impl Stream for Pinned {
    type Item = Result<Bytes, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }
}
