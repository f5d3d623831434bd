//! Fills and their followers, whichever backend holds the bytes.
//!
//! With the filesystem (the default), a [`Fill`] is an [`Ingest`] and its followers read
//! the growing `tmp/` file, their last byte withheld until the blob is verified, exactly
//! as before; nothing here sits between them and the file.
//!
//! With S3, a fill is an [`S3Upload`] (a multipart upload to the blob's final key, made
//! readable only by its verified commit). Its followers wait for that commit and then
//! read the object from the bucket (ranges included): the simplest thing that is correct,
//! since nothing of an upload is readable before it completes. The cost is latency on a
//! cold blob (the first byte leaves when the last one is in the bucket); no follower ever
//! holds more than one chunk of a body.
//!
//! The per-replica index (records, links, origins, tags) stays in the cache directory;
//! only the origins are also written to the bucket, so another replica's access check can
//! take the upstream's `HEAD` for a blob it did not fill (see `docs/ARCHITECTURE.md`).

use std::sync::Arc;

use bytes::Bytes;
use pullgate_oci::{ByteRange, Digest};
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::backend::s3::S3Upload;
use crate::blob::bucket_stream;
use crate::ingest::FileFollower;
use crate::{Backend, BlobStream, Ingest, Inner, Origin, StoreError, Upload, S3};

/// Writes one blob from an upstream into the store. Dropping it without
/// [`Fill::commit`] aborts it: nothing of it becomes readable.
pub enum Fill {
    /// Into the cache directory.
    Local(Ingest),
    /// Into the bucket (boxed: the filesystem's variant stays small and allocation-free).
    Bucket(Box<BucketFill>),
}

impl Fill {
    /// A reader of this blob while it is written (or, in the bucket, once it is committed).
    pub fn follower(&self) -> Follower {
        match self {
            Fill::Local(i) => i.follower(),
            Fill::Bucket(b) => Follower(Follow::Bucket(b.follower.clone())),
        }
    }

    /// Append chunks that arrived together. Waits when the store is behind.
    pub async fn write_batch(&mut self, chunks: Vec<Bytes>) -> Result<(), StoreError> {
        match self {
            Fill::Local(i) => i.write_batch(chunks).await,
            Fill::Bucket(b) => b.write(chunks).await,
        }
    }

    /// Give up: nothing is committed and every follower's stream fails with `reason`.
    pub fn abort(&mut self, reason: &str) {
        match self {
            Fill::Local(i) => i.abort(reason),
            Fill::Bucket(b) => b.fail(reason),
        }
    }

    /// Verify size and digest; only then make the blob readable, recording `origin`.
    pub async fn commit(self, origin: Option<Origin>) -> Result<u64, StoreError> {
        match self {
            Fill::Local(i) => i.commit(origin).await,
            Fill::Bucket(b) => b.commit(origin).await,
        }
    }
}

/// Reads a blob being filled. Cheap to clone.
#[derive(Clone)]
pub struct Follower(Follow);

#[derive(Clone)]
enum Follow {
    File(FileFollower),
    Bucket(BucketFollower),
}

impl Follower {
    pub(crate) fn file(f: FileFollower) -> Follower {
        Follower(Follow::File(f))
    }

    /// The size announced when the fill began, if any.
    pub fn size(&self) -> Option<u64> {
        match &self.0 {
            Follow::File(f) => f.size(),
            Follow::Bucket(b) => b.expected_size,
        }
    }

    /// The final size: known at once if announced, else when the fill is verified.
    pub async fn wait_size(&self) -> Result<u64, StoreError> {
        match self.size() {
            Some(s) => Ok(s),
            None => self.finished().await,
        }
    }

    /// Wait for the fill to end: the verified size, or why it failed.
    pub async fn finished(&self) -> Result<u64, StoreError> {
        match &self.0 {
            Follow::File(f) => f.finished().await,
            Follow::Bucket(b) => b.committed().await,
        }
    }

    /// Bytes `start..=end` (or to the end). From the file as they land on disk; from the
    /// bucket once the blob is committed there.
    pub fn stream(&self, start: u64, end: Option<u64>) -> BlobStream {
        match &self.0 {
            Follow::File(f) => f.stream(start, end),
            Follow::Bucket(b) => b.stream(start, end),
        }
    }
}

#[derive(Debug, Clone)]
enum BucketState {
    Writing,
    Committed { size: u64 },
    Failed(Arc<str>),
}

#[derive(Clone)]
struct BucketFollower {
    s3: S3,
    digest: Digest,
    expected_size: Option<u64>,
    state: watch::Receiver<BucketState>,
}

impl BucketFollower {
    async fn committed(&self) -> Result<u64, StoreError> {
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| !matches!(s, BucketState::Writing))
            .await
            .map_err(|_| StoreError::IngestFailed("fill vanished".into()))?
            .clone();
        match state {
            BucketState::Committed { size } => Ok(size),
            BucketState::Failed(r) => Err(StoreError::IngestFailed(r.to_string())),
            BucketState::Writing => Err(StoreError::IngestFailed("fill vanished".into())),
        }
    }

    fn stream(&self, start: u64, end: Option<u64>) -> BlobStream {
        let me = self.clone();
        let after_commit = async move {
            let size = match me.committed().await {
                Ok(size) => size,
                Err(e) => return BlobStream::new(futures_util::stream::once(async { Err(e) })),
            };
            let range = match (start, end) {
                (0, None) => None,
                _ if start >= size => {
                    return BlobStream::new(futures_util::stream::empty());
                }
                (_, end) => Some(ByteRange {
                    start,
                    end: end.map_or(size - 1, |e| e.min(size - 1)),
                }),
            };
            bucket_stream(me.s3, me.digest, range)
        };
        use futures_util::StreamExt;
        BlobStream::new(futures_util::stream::once(after_commit).flatten())
    }
}

/// A fill into the bucket: the upload, and what its followers are told.
pub struct BucketFill {
    inner: Arc<Inner>,
    s3: S3,
    digest: Digest,
    upload: Option<S3Upload>,
    state: watch::Sender<BucketState>,
    follower: BucketFollower,
    /// One of the store's upload slots: bounds the memory all fills' parts hold at once.
    _slot: OwnedSemaphorePermit,
}

impl BucketFill {
    pub(crate) async fn begin(
        inner: Arc<Inner>,
        s3: S3,
        slots: Arc<tokio::sync::Semaphore>,
        digest: Digest,
        expected_size: Option<u64>,
    ) -> Result<BucketFill, StoreError> {
        let slot = slots
            .acquire_owned()
            .await
            .map_err(|_| StoreError::IngestFailed("the store is closing".into()))?;
        let upload = s3.ingest(&digest, expected_size).await?;
        let (tx, rx) = watch::channel(BucketState::Writing);
        Ok(BucketFill {
            follower: BucketFollower {
                s3: s3.clone(),
                digest: digest.clone(),
                expected_size,
                state: rx,
            },
            inner,
            s3,
            digest,
            upload: Some(upload),
            state: tx,
            _slot: slot,
        })
    }

    async fn write(&mut self, chunks: Vec<Bytes>) -> Result<(), StoreError> {
        let Some(upload) = self.upload.as_mut() else {
            return Err(StoreError::IngestFailed("fill already finished".into()));
        };
        let written = upload.write(chunks).await;
        if let Err(e) = &written {
            self.fail(&e.to_string());
        }
        written
    }

    /// Followers fail with `reason`; the upload, dropped, is aborted.
    fn fail(&mut self, reason: &str) {
        self.upload = None;
        self.state.send_if_modified(|s| {
            if matches!(s, BucketState::Writing) {
                *s = BucketState::Failed(reason.into());
                true
            } else {
                false
            }
        });
    }

    async fn commit(mut self, origin: Option<Origin>) -> Result<u64, StoreError> {
        let Some(upload) = self.upload.take() else {
            return Err(StoreError::IngestFailed("fill already finished".into()));
        };
        let size = match upload.commit().await {
            Ok(size) => size,
            Err(e) => {
                self.fail(&e.to_string());
                return Err(e);
            }
        };
        // Verified and readable in the bucket: followers may read it now.
        self.state.send_replace(BucketState::Committed { size });
        record(&self.inner, &self.s3, &self.digest, size, None, origin).await?;
        Ok(size)
    }
}

impl Drop for BucketFill {
    fn drop(&mut self) {
        if self.upload.is_some() {
            self.fail("fill abandoned");
        }
    }
}

/// After a blob is committed in the bucket: its record, origin and link in this
/// replica's index, then its origin in the bucket for the others. A marker that cannot
/// be written costs the other replicas a proof (a `GET`), never grants access: logged,
/// not fatal.
pub(crate) async fn record(
    inner: &Arc<Inner>,
    s3: &S3,
    digest: &Digest,
    size: u64,
    media_type: Option<&str>,
    origin: Option<Origin>,
) -> Result<(), StoreError> {
    let (i, d, m, o) = (
        Arc::clone(inner),
        digest.clone(),
        media_type.map(str::to_owned),
        origin.clone(),
    );
    tokio::task::spawn_blocking(move || {
        i.index.put_blob(&d, size, m.as_deref())?;
        i.record_origin(&d, o.as_ref())
    })
    .await??;
    if let Some(o) = origin {
        if let Err(e) = s3.mark_origin(digest, o.upstream.as_str()).await {
            tracing::warn!(%digest, upstream = %o.upstream.as_str(), error = %e, "could not record the blob's origin in the bucket");
        }
    }
    Ok(())
}

/// A blob found in the bucket that this replica's index has no record of (another
/// replica filled it, or the index is new): record its size and the origins the bucket
/// names, so that the access check can confirm a repository's possession with a `HEAD`
/// to one of them. Best effort: without them the check asks for a proof instead.
pub(crate) async fn learn(inner: &Arc<Inner>, s3: &S3, digest: &Digest, size: u64) {
    match inner.index.blob(digest) {
        Ok(Some(_)) => return,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(%digest, error = %e, "reading a blob record");
            return;
        }
    }
    let origins = match s3.origins(digest).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(%digest, error = %e, "could not read the blob's origins from the bucket");
            Vec::new()
        }
    };
    let (i, d) = (Arc::clone(inner), digest.clone());
    let learned = tokio::task::spawn_blocking(move || {
        i.index.put_blob(&d, size, None)?;
        for o in origins {
            if let Ok(u) = pullgate_oci::UpstreamId::parse(&o) {
                i.index.add_origin(&d, &u)?;
            }
        }
        Ok::<_, StoreError>(())
    })
    .await
    .map_err(StoreError::from)
    .and_then(|r| r);
    if let Err(e) = learned {
        tracing::warn!(%digest, error = %e, "could not record a blob found in the bucket");
    }
}
