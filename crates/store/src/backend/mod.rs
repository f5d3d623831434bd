//! Where blob bytes live: the one boundary between the cache's logic and its storage.
//!
//! A [`Backend`] holds content-addressed blobs and nothing else: no index, no tags, no
//! paths. Whatever it hands out was verified on the way in: an [`Upload`] hashes the bytes
//! as they pass and makes them readable under their digest only in [`Upload::commit`], after
//! size and digest matched; dropped, it leaves nothing behind that a reader could find.
//! [`Backend::put`] is the small-object path (manifests), hashed in memory and written only
//! if absent, so that of many writers racing for one key exactly one creates it.
//!
//! Implementations: [`Filesystem`] (the cache directory, `fs.rs`) and [`S3`] (an
//! S3-compatible bucket, `s3.rs`). The generic suite in `crates/store/tests/backends.rs`
//! runs the same cases against both, the S3 one on a SeaweedFS it starts.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use pullgate_oci::{ByteRange, Digest};

use crate::{BlobStream, StoreError};

pub mod fs;
pub mod s3;

pub use fs::Filesystem;
pub use s3::{S3Config, S3};

/// A committed blob, open for reading.
#[derive(Debug)]
pub struct Opened {
    /// The whole blob's size, whatever part `body` carries.
    pub size: u64,
    /// The requested bytes, streamed in bounded chunks. Ends in an error, never cleanly
    /// short, if the backend delivers fewer bytes than asked for.
    pub body: BlobStream,
}

/// What [`Backend::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// These bytes are now stored under their digest, written by this call.
    Created,
    /// The digest was already stored (by someone else: the bytes are the same, since they
    /// hash to the key); nothing was written.
    Existed,
}

/// Blob storage. Every method is keyed by digest; nothing else crosses this boundary.
pub trait Backend: Send + Sync + 'static {
    type Upload: Upload;

    /// The size of a committed blob, or `None` if there is none.
    fn stat(&self, digest: &Digest)
        -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// A committed blob, whole or the inclusive `range` of it (clamped to its end).
    fn read(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> impl Future<Output = Result<Option<Opened>, StoreError>> + Send;

    /// Start writing `digest`. With `expected_size`, a body of any other length fails.
    fn ingest(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
    ) -> impl Future<Output = Result<Self::Upload, StoreError>> + Send;

    /// Store bytes held whole in memory, if nothing is stored under `digest` yet. They are
    /// hashed first: bytes that do not match are refused ([`StoreError::DigestMismatch`]).
    fn put(
        &self,
        digest: &Digest,
        bytes: Bytes,
    ) -> impl Future<Output = Result<Put, StoreError>> + Send;

    /// Delete a committed blob. `false`: there was none.
    fn remove(&self, digest: &Digest) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every committed blob with its size, in no particular order, without holding the
    /// whole listing in memory. Entries whose name is not a digest are skipped.
    fn list(&self) -> BoxStream<'static, Result<(Digest, u64), StoreError>>;

    /// Delete what uploads that never finished left behind (a crash, a killed process),
    /// started more than `older_than` ago. Returns how many were removed. Uploads under
    /// way that are older are removed too: call it with an age longer than any fill.
    fn sweep(&self, older_than: Duration) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// One blob being written. Dropping it without [`Upload::commit`] aborts it.
pub trait Upload: Send {
    /// Append chunks, hashing them on the way. Waits when the backend is behind.
    fn write(&mut self, chunks: Vec<Bytes>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Check size and digest; only if both match, make the blob readable under its digest.
    /// Returns its size. On a mismatch nothing becomes readable and the upload is aborted.
    fn commit(self) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
