//! The cache: content-addressed blob files with verified streaming ingest and atomic
//! commit, the sled index beside them, least-recently-used eviction, and the repair that
//! makes the two agree after a crash.
//!
//! On disk, under the cache directory:
//! - `blobs/<algorithm>/<2 hex>/<hex>`: committed content, manifests included. A file
//!   exists there only if its bytes hashed to its name; it is never modified afterwards.
//! - `tmp/`: ingests in progress, and evicted files on their way out; emptied at start-up.
//! - `index/`: sled (tags, repository→digest links, sizes, media types, access times).
//! - `lock`: held (flock) by the one process using the cache.
//!
//! Blob bytes sit behind the [`Backend`] trait (`backend/`): [`Filesystem`] is the
//! directory above, [`S3`] an S3-compatible bucket. No path to a blob crosses the crate's
//! boundary: blobs are named by digest only.
//!
//! With a bucket ([`StoreOptions::bucket`]), blob bytes are there instead: stat, reads
//! (ranges too), fills and manifests go to [`S3`]; the index, the lock and `tmp/` stay in
//! the directory, per replica (see `remote.rs`).
//!
//! Main types: [`Store`], [`Ingest`] (writes one blob to the directory), [`Fill`] (writes
//! one blob to whichever backend the store uses), [`Follower`] (reads a blob while it
//! is being written), [`BlobReader`], [`BlobStream`], [`BlobPin`] (keeps a blob from being
//! evicted), [`Limits`], [`Repair`], [`StoreError`], [`Backend`] and [`Upload`].

mod backend;
mod blob;
mod disk;
mod error;
mod evict;
mod index;
mod ingest;
mod passthrough;
mod pins;
mod progress;
mod pulls;
mod remote;
mod repair;
mod room;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use pullgate_oci::{Digest, RepoName, UpstreamId};
use tokio::sync::Notify;

pub use backend::{s3, Backend, Filesystem, Opened, Put, S3Config, Upload, S3};
pub use blob::{BlobReader, BlobStream};
pub use disk::{DiskHealth, PAUSE_AFTER_WRITE_FAILURE};
pub use error::StoreError;
pub use evict::{EvictSummary, Evicted, Evictions, Limits};
pub use index::{
    BlobRecord, ReferrersKey, ReferrersRecord, TagKey, TagRecord, MAX_ARTIFACT_TYPE_LEN,
    MAX_REFERRERS_BODY, MAX_REFERRERS_RECORDS,
};
pub use passthrough::pass_through;
pub use pins::BlobPin;
pub use progress::{Job, OnProgress, Progress};
pub use pulls::PullRecord;
pub use repair::{Prune, Repair, REPORT_LIMIT};

pub use ingest::{Ingest, BATCH_BYTES, BATCH_CHUNKS};
pub use remote::{BucketFill, Fill, Follower};

use index::Index;
use pins::Pins;

/// Who vouched for content being committed: the upstream that served it, for the
/// repository it was fetched for.
#[derive(Debug, Clone)]
pub struct Origin {
    pub upstream: UpstreamId,
    pub repo: RepoName,
}

/// Handle to the cache. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    blobs: PathBuf,
    tmp: PathBuf,
    index: Index,
    tmp_seq: AtomicU64,
    /// Bytes and files under `blobs/`, counted at open and kept as blobs come and go.
    usage_bytes: AtomicU64,
    usage_blobs: AtomicU64,
    /// Bytes written to `tmp/` by ingests under way: they count against the bound too, so
    /// fills cannot take the disk past `max_size` before they commit.
    inflight_bytes: AtomicU64,
    limits: Option<Limits>,
    pins: Pins,
    /// Wakes the evictor when a commit takes usage over the high watermark.
    wake: Arc<Notify>,
    evicted_blobs: AtomicU64,
    evicted_bytes: AtomicU64,
    repaired: Repair,
    disk: DiskHealth,
    room: room::Room,
    /// Manifest pulls counted in memory, written in batches (`pulls.rs`).
    pulls: pulls::PullCounter,
    /// Where blob bytes are, when not in `blobs/`.
    bucket: Option<Bucket>,
    /// Held for the store's life: one process per cache directory.
    _lock: fs::File,
}

struct Bucket {
    s3: S3,
    /// Fills into the bucket at once, at most: each holds up to
    /// `part_size × (parts_in_flight + 1)` bytes of parts.
    slots: Arc<tokio::sync::Semaphore>,
}

/// Keep blob bytes in an S3 bucket rather than the cache directory.
#[derive(Debug, Clone)]
pub struct BucketOptions {
    pub s3: S3,
    /// Fills into the bucket at once, at most (more wait for a slot). At least 1.
    pub max_uploads: usize,
}

/// How to open a cache.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Bound the cache (see [`Store::evictor`]); `None`: it only grows.
    pub limits: Option<Limits>,
    /// Leave the directory as found: `tmp/` is not emptied and nothing is repaired. For
    /// looking at a cache without changing it.
    pub inspect_only: bool,
    /// Blob bytes in this bucket; `None`: in the directory's `blobs/`. With a bucket the
    /// start-up repair of `blobs/` is skipped (the records describe the bucket's
    /// objects, which a read finds present or absent), and `limits` must be `None`.
    pub bucket: Option<BucketOptions>,
}

/// What the cache holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub blobs: u64,
}

impl Store {
    /// Open (creating if needed) the unbounded cache at `dir`, repairing it as
    /// [`Store::open_with`] does.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, StoreOptions::default())
    }

    /// Open (creating if needed) the cache at `dir`. Fails with [`StoreError::Locked`] if
    /// another process has it open. Unless `inspect_only`: leftovers of interrupted ingests
    /// and evictions are deleted (they were never verified, or are on their way out), and
    /// the index is made to agree with the files ([`Repair`]); one log line says what was
    /// found.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        Store::open_reporting(dir, options, &mut |_| {})
    }

    /// [`Store::open_with`], reporting the repair's progress to `progress` as it goes (a
    /// large cache with many files the index does not know takes a while to hash).
    pub fn open_reporting(
        dir: &Path,
        options: StoreOptions,
        progress: OnProgress<'_>,
    ) -> Result<Store, StoreError> {
        private_dir(dir).map_err(StoreError::io("creating the cache directory"))?;
        // A cache made by an older pullgate (0755): private content must not be readable
        // by other users of the node. The files inside are then out of their reach too.
        restrict(dir);
        // Before anything is touched: a running server's tmp/ is not ours to empty.
        let lock = lock(dir)?;
        let blobs = dir.join("blobs");
        let tmp = dir.join("tmp");
        private_dir(&blobs).map_err(StoreError::io("creating blobs/"))?;
        let tmp_removed = if options.inspect_only {
            0
        } else {
            repair::empty_tmp(&tmp)?
        };
        let mut index_set_aside = None;
        let index = match Index::open(&dir.join("index")) {
            Ok(index) => index,
            // The index only records what the files say. One sled cannot read must not
            // keep the mirror from starting (in a Deployment, nobody is there to run
            // `cache rebuild`): it is set aside and the repair below indexes the files anew.
            Err(StoreError::Index(why)) if !options.inspect_only => {
                let aside = set_aside_broken_index(dir)?;
                tracing::warn!(
                    error = %why,
                    set_aside = %aside.display(),
                    "the cache index is unreadable: set it aside; re-indexing the blob files"
                );
                index_set_aside = Some(aside);
                Index::open(&dir.join("index"))?
            }
            Err(e) => return Err(e),
        };
        let mut inner = Inner {
            blobs,
            tmp,
            index,
            tmp_seq: AtomicU64::new(0),
            usage_bytes: AtomicU64::new(0),
            usage_blobs: AtomicU64::new(0),
            inflight_bytes: AtomicU64::new(0),
            limits: options.limits,
            pins: Pins::default(),
            wake: Arc::new(Notify::new()),
            evicted_blobs: AtomicU64::new(0),
            evicted_bytes: AtomicU64::new(0),
            repaired: Repair::default(),
            disk: DiskHealth::default(),
            room: room::Room::default(),
            pulls: pulls::PullCounter::default(),
            bucket: None,
            _lock: lock,
        };
        if let Some(b) = options.bucket {
            if inner.limits.is_some() {
                return Err(StoreError::InvalidLimits(
                    "a bucket is not bounded yet: no max_size with the S3 backend".into(),
                ));
            }
            inner.bucket = Some(Bucket {
                s3: b.s3,
                slots: Arc::new(tokio::sync::Semaphore::new(b.max_uploads.max(1))),
            });
        }
        if !options.inspect_only && inner.bucket.is_none() {
            let mut r = inner.repair(false, false, progress)?;
            r.tmp_removed = tmp_removed;
            r.index_set_aside = index_set_aside;
            let log = |r: &Repair| {
                tracing::info!(
                    tmp_removed = r.tmp_removed,
                    orphans_indexed = r.orphans_indexed,
                    bad_removed = r.bad_removed,
                    records_removed = r.records_removed,
                    index_rebuilt = r.index_set_aside.is_some(),
                    blobs = r.kept + r.orphans_indexed,
                    "cache start-up check: {}",
                    if r.is_clean() {
                        "nothing to repair"
                    } else {
                        "repaired"
                    }
                )
            };
            log(&r);
            for (path, why) in &r.removed {
                tracing::warn!(path = %path.display(), reason = %why, "removed a bad file from the cache");
            }
            inner.repaired = r;
        }
        inner.remeasure()?;
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// Keep `digest` from being evicted until the pin is dropped. Take it before looking
    /// the blob up.
    pub fn pin(&self, digest: &Digest) -> BlobPin {
        BlobPin::new(Arc::clone(&self.inner), digest.clone())
    }

    /// Every blob record, in digest order (records whose key does not parse are skipped;
    /// repair drops them).
    pub fn records(&self) -> impl Iterator<Item = Result<(Digest, BlobRecord), StoreError>> + '_ {
        self.inner.index.blobs().filter_map(|r| match r {
            Ok(Ok(pair)) => Some(Ok(pair)),
            Ok(Err(_)) => None,
            Err(e) => Some(Err(e)),
        })
    }

    /// Records in the index (which agrees with the files after a repair).
    pub fn record_count(&self) -> usize {
        self.inner.index.blob_count()
    }

    /// Every repository→digest link, as `(upstream, repository, digest)`.
    pub fn links(&self) -> impl Iterator<Item = Result<(String, String, Digest), StoreError>> + '_ {
        self.inner.index.links().filter_map(|r| match r {
            Ok((_, p)) => p.digest.map(|d| Ok((p.upstream, p.repo, d))),
            Err(e) => Some(Err(e)),
        })
    }

    /// Bytes and blob files in the cache now.
    pub fn usage(&self) -> Usage {
        Usage {
            bytes: self.inner.usage_bytes.load(Ordering::Relaxed),
            blobs: self.inner.usage_blobs.load(Ordering::Relaxed),
        }
    }

    /// Whether a new file can be written where ingests write (readiness): a full or
    /// read-only disk fails here before it fails a pull.
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        let path = self.inner.tmp.join(format!(
            "ready-{}-{}",
            std::process::id(),
            self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        tokio::task::spawn_blocking(move || {
            let result = fs::File::create(&path)
                .and_then(|mut f| f.write_all(b"ok"))
                .map_err(StoreError::io("writing a probe file in tmp/"));
            let _ = fs::remove_file(&path);
            result
        })
        .await?
    }

    /// Whether the cache's disk takes writes, as the latest writes found.
    pub fn disk(&self) -> &DiskHealth {
        &self.inner.disk
    }

    /// The cache directory as a [`Backend`].
    pub fn filesystem(&self) -> Filesystem {
        Filesystem {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Where a committed blob lives: for tests that damage files on purpose.
    #[cfg(test)]
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.blob_path(digest)
    }

    /// The bucket blob bytes are in, if not the directory.
    pub fn bucket(&self) -> Option<&S3> {
        self.inner.bucket.as_ref().map(|b| &b.s3)
    }

    /// The size of a committed blob, if present.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        match &self.inner.bucket {
            None => self.filesystem().stat(digest).await,
            Some(b) => b.s3.stat(digest).await,
        }
    }

    /// Open a committed blob for reading.
    pub async fn open_blob(&self, digest: &Digest) -> Result<Option<BlobReader>, StoreError> {
        let Some(b) = &self.inner.bucket else {
            return self.filesystem().open(digest).await;
        };
        let Some(size) = b.s3.stat(digest).await? else {
            return Ok(None);
        };
        remote::learn(&self.inner, &b.s3, digest, size).await;
        Ok(Some(BlobReader::in_bucket(
            b.s3.clone(),
            digest.clone(),
            size,
        )))
    }

    /// Read a small committed blob (a manifest) whole. Larger than `limit` is an error.
    pub async fn read_small(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> Result<Option<Bytes>, StoreError> {
        let Some(b) = &self.inner.bucket else {
            return self.filesystem().read_small(digest, limit).await;
        };
        // One GET: its answer carries the size, checked before any of the body is read.
        let Some(opened) = b.s3.read(digest, None).await? else {
            return Ok(None);
        };
        if opened.size > limit as u64 {
            return Err(StoreError::TooLarge {
                size: opened.size,
                limit: limit as u64,
            });
        }
        remote::learn(&self.inner, &b.s3, digest, opened.size).await;
        // The body delivers exactly the object's length or fails; bounded by `limit` too.
        let mut body = opened.body;
        let mut bytes = Vec::with_capacity(opened.size.min(limit as u64) as usize);
        while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
            let chunk = chunk?;
            if bytes.len() + chunk.len() > limit {
                return Err(StoreError::TooLarge {
                    size: (bytes.len() + chunk.len()) as u64,
                    limit: limit as u64,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some(Bytes::from(bytes)))
    }

    /// Commit content already held whole in memory (manifests), with its media type when it
    /// has one. The bytes are hashed here, the one check they get: nothing unverified is
    /// ever committed.
    /// With an `origin`, it is recorded (origin and link) before the file is in place, as
    /// [`Ingest::commit`] does.
    pub async fn put_verified(
        &self,
        digest: &Digest,
        bytes: Bytes,
        media_type: Option<&str>,
        origin: Option<Origin>,
    ) -> Result<(), StoreError> {
        let Some(b) = &self.inner.bucket else {
            return self
                .inner
                .put_bytes(digest, bytes, media_type, origin)
                .await
                .map(|_| ());
        };
        let size = bytes.len() as u64;
        // Hashed first: bytes that do not match are refused before anything is sent.
        b.s3.put(digest, bytes).await?;
        remote::record(&self.inner, &b.s3, digest, size, media_type, origin).await
    }

    /// Start filling a blob from an upstream, into the directory ([`Store::begin_ingest`])
    /// or the bucket (a [`BucketFill`], which first waits for one of the store's upload
    /// slots).
    pub async fn begin_fill(
        &self,
        digest: Digest,
        expected_size: Option<u64>,
    ) -> Result<Fill, StoreError> {
        match &self.inner.bucket {
            None => self
                .begin_ingest(digest, expected_size)
                .await
                .map(Fill::Local),
            Some(b) => BucketFill::begin(
                Arc::clone(&self.inner),
                b.s3.clone(),
                Arc::clone(&b.slots),
                digest,
                expected_size,
            )
            .await
            .map(|b| Fill::Bucket(Box::new(b))),
        }
    }

    fn note_write_error(&self, e: &StoreError) {
        if e.is_disk_trouble() {
            self.inner.disk.failed(e, false);
        }
    }

    /// Start writing a blob. Bytes go to `tmp/` as they arrive, are hashed once, and are
    /// renamed into `blobs/` by [`Ingest::commit`] only if size and digest match.
    ///
    /// An announced size is reserved on disk first, so a disk too full for the blob fails
    /// here ([`StoreError::is_disk_trouble`]), before any client has seen a byte, rather
    /// than halfway through.
    pub async fn begin_ingest(
        &self,
        digest: Digest,
        expected_size: Option<u64>,
    ) -> Result<Ingest, StoreError> {
        Ingest::begin(Arc::clone(&self.inner), digest, expected_size).await
    }

    /// Delete a committed blob and its record (the record first, as eviction does).
    pub async fn remove(&self, digest: &Digest) -> Result<bool, StoreError> {
        match &self.inner.bucket {
            None => self.filesystem().remove(digest).await,
            Some(b) => {
                self.inner.index.remove_blob(digest)?;
                b.s3.remove(digest).await
            }
        }
    }

    pub fn tag(&self, key: &TagKey) -> Result<Option<TagRecord>, StoreError> {
        self.inner.index.tag(key)
    }

    pub fn put_tag(&self, key: &TagKey, record: &TagRecord) -> Result<(), StoreError> {
        self.inner
            .index
            .put_tag(key, record)
            .inspect_err(|e| self.note_write_error(e))
    }

    /// The cached referrers answer for `key`, if any. Keyed by (upstream, repository): an
    /// answer is never found under another repository's key.
    pub fn referrers(&self, key: &ReferrersKey) -> Result<Option<ReferrersRecord>, StoreError> {
        self.inner.index.referrers(key)
    }

    /// Keep a referrers answer (at most [`MAX_REFERRERS_BODY`] bytes; at most
    /// [`MAX_REFERRERS_RECORDS`] answers are kept).
    pub fn put_referrers(
        &self,
        key: &ReferrersKey,
        record: &ReferrersRecord,
    ) -> Result<(), StoreError> {
        self.inner
            .index
            .put_referrers(key, record)
            .inspect_err(|e| self.note_write_error(e))
    }

    /// Referrers answers kept now.
    pub fn referrers_count(&self) -> usize {
        self.inner.index.referrers_count()
    }

    /// Record that `repo` on `upstream` may see `digest`. Only after that upstream said so
    /// for that repository (it served the content, or confirmed it holds content it had
    /// already served us).
    pub fn link(
        &self,
        upstream: &UpstreamId,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(), StoreError> {
        self.inner
            .index
            .link(upstream, repo, digest)
            .inspect_err(|e| self.note_write_error(e))
    }

    pub fn is_linked(
        &self,
        upstream: &UpstreamId,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<bool, StoreError> {
        self.inner.index.is_linked(upstream, repo, digest)
    }

    /// Remember that `upstream` served `digest`'s bytes (they hashed to it). Call it after
    /// the blob is committed.
    pub fn record_origin(&self, digest: &Digest, upstream: &UpstreamId) -> Result<(), StoreError> {
        self.inner
            .index
            .add_origin(digest, upstream)
            .inspect_err(|e| self.note_write_error(e))
    }

    /// Whether `upstream` ever served `digest`'s bytes to us. Only such an upstream's word
    /// (a HEAD) is taken that another of its repositories holds them; any other upstream
    /// must prove it by serving bytes that hash to the digest.
    pub fn has_origin(&self, digest: &Digest, upstream: &UpstreamId) -> Result<bool, StoreError> {
        self.inner.index.has_origin(digest, upstream)
    }

    pub fn manifest_media_type(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        Ok(self.inner.index.blob(digest)?.and_then(|r| r.media_type))
    }

    pub fn blob_record(&self, digest: &Digest) -> Result<Option<BlobRecord>, StoreError> {
        self.inner.index.blob(digest)
    }

    /// Note an access to a blob of `size` bytes (for eviction). Best effort: a failure is
    /// logged, never fatal.
    pub fn touch(&self, digest: &Digest, size: u64) {
        if let Err(e) = self.inner.index.touch(digest, size) {
            tracing::warn!(%digest, error = %e, "could not record a blob access");
        }
    }

    /// Write the index to disk (shutdown), pull counts still in memory first.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.index.add_pulls(self.inner.pulls.take())?;
        self.inner.index.flush()
    }
}

impl Inner {
    fn tmp_path(&self, d: &Digest) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.tmp
            .join(format!("{}-{}-{n}", &d.hex()[..16], std::process::id()))
    }

    /// fsync the file, rename it into place, fsync the directory: after this returns, the
    /// blob survives a crash, and before it no reader can see it under its digest.
    /// Record who vouched for `d` (its origin, and the link of its repository).
    fn record_origin(&self, d: &Digest, origin: Option<&Origin>) -> Result<(), StoreError> {
        let Some(o) = origin else { return Ok(()) };
        self.index.add_origin(d, &o.upstream)?;
        self.index.link(&o.upstream, &o.repo, d)
    }

    fn commit_file(&self, f: &fs::File, tmp: &Path, d: &Digest) -> Result<(), StoreError> {
        f.sync_all().map_err(StoreError::io("fsync tmp file"))?;
        let dest = self.blob_path(d);
        // Made with the tmp file (`create_tmp`), and never removed.
        let dir = self.blob_dir(d);
        let size = f.metadata().map_err(StoreError::io("stat tmp file"))?.len();
        let replaced = dest.exists();
        fs::rename(tmp, &dest).map_err(StoreError::io("renaming into blobs/"))?;
        if !replaced {
            self.usage_bytes.fetch_add(size, Ordering::Relaxed);
            self.usage_blobs.fetch_add(1, Ordering::Relaxed);
            self.note_growth();
        }
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(StoreError::io("fsync blob directory"))?;
        Ok(())
    }
}

/// Move the cache's unreadable index out of the way (to `index.broken-<unix seconds>`, for
/// a post-mortem), so a new one can be opened and filled from the blob files. Only the
/// newest broken index is kept: an index that keeps breaking must not fill the disk.
/// Call it only with the cache's lock held, or from a process that is about to take it.
pub fn set_aside_broken_index(dir: &Path) -> Result<PathBuf, StoreError> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("index.broken-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = dir.join(format!("index.broken-{secs}"));
    fs::rename(dir.join("index"), &aside)
        .map_err(StoreError::io("setting the unreadable index aside"))?;
    Ok(aside)
}

/// Create `path` and its missing parents readable by the owner only (0700): the cache
/// holds private images.
pub(crate) fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Make an existing directory 0700, or say why not (a volume we do not own, say).
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(0o700)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot make the cache directory private (0700)");
    }
}

/// Take the cache directory's lock file, or say who has it.
fn lock(dir: &Path) -> Result<fs::File, StoreError> {
    use fs2::FileExt;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .mode(0o600)
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(StoreError::io("opening the cache lock file"))?;
    match file.try_lock_exclusive() {
        Ok(()) => Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(11) => {
            Err(StoreError::Locked {
                dir: dir.to_path_buf(),
            })
        }
        Err(e) => Err(StoreError::Io {
            op: "locking the cache directory",
            source: e,
        }),
    }
}

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod tests;
