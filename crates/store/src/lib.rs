//! The cache: content-addressed blob files with verified streaming ingest and atomic
//! commit, and the sled index beside them.
//!
//! On disk, under the cache directory:
//! - `blobs/<algorithm>/<2 hex>/<hex>`: committed content, manifests included. A file
//!   exists there only if its bytes hashed to its name; it is never modified afterwards.
//! - `tmp/`: ingests in progress; emptied at start-up.
//! - `index/`: sled (tags, repository→digest links, sizes, media types, access times).
//!
//! Main types: [`Store`], [`Ingest`] (writes one blob), [`Follower`] (reads a blob while it
//! is being written), [`BlobReader`], [`BlobStream`], [`StoreError`].

mod blob;
mod error;
mod index;
mod ingest;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use pullgate_oci::{Digest, RepoName};

pub use blob::{BlobReader, BlobStream};
pub use error::StoreError;
pub use index::{BlobRecord, TagKey, TagRecord};

pub use ingest::{Follower, Ingest, BATCH_BYTES, BATCH_CHUNKS};

use index::Index;

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
}

/// What the cache holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub blobs: u64,
}

impl Store {
    /// Open (creating if needed) the cache at `dir`. Leftovers of ingests interrupted by a
    /// crash are deleted: they were never verified.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let blobs = dir.join("blobs");
        let tmp = dir.join("tmp");
        fs::create_dir_all(&blobs).map_err(StoreError::io("creating blobs/"))?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(StoreError::io("emptying tmp/"))?;
        }
        fs::create_dir_all(&tmp).map_err(StoreError::io("creating tmp/"))?;
        let index = Index::open(&dir.join("index"))?;
        let usage = measure(&blobs).map_err(StoreError::io("measuring blobs/"))?;
        Ok(Store {
            inner: Arc::new(Inner {
                blobs,
                tmp,
                index,
                tmp_seq: AtomicU64::new(0),
                usage_bytes: AtomicU64::new(usage.bytes),
                usage_blobs: AtomicU64::new(usage.blobs),
            }),
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

    /// Where a committed blob lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.blob_path(digest)
    }

    /// The size of a committed blob, if present.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io {
                op: "stat blob",
                source: e,
            }),
        }
    }

    /// Open a committed blob for reading.
    pub async fn open_blob(&self, digest: &Digest) -> Result<Option<BlobReader>, StoreError> {
        let path = self.blob_path(digest);
        tokio::task::spawn_blocking(move || BlobReader::open(&path)).await?
    }

    /// Read a small committed blob (a manifest) whole. Larger than `limit` is an error.
    pub async fn read_small(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> Result<Option<Bytes>, StoreError> {
        let path = self.blob_path(digest);
        tokio::task::spawn_blocking(move || {
            let Some(reader) = BlobReader::open(&path)? else {
                return Ok(None);
            };
            if reader.size() > limit as u64 {
                return Err(StoreError::TooLarge {
                    size: reader.size(),
                    limit: limit as u64,
                });
            }
            reader.read_all().map(Some)
        })
        .await?
    }

    /// Commit content already held whole in memory (manifests), with its media type when it
    /// has one. The bytes are hashed here, the one check they get: nothing unverified is
    /// ever committed.
    pub async fn put_verified(
        &self,
        digest: &Digest,
        bytes: Bytes,
        media_type: Option<&str>,
    ) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        let d = digest.clone();
        let size = bytes.len() as u64;
        tokio::task::spawn_blocking(move || {
            let mut h = pullgate_oci::Hasher::new(d.algorithm());
            h.update(&bytes);
            let actual = h.finish();
            if actual != d {
                return Err(StoreError::DigestMismatch {
                    expected: d,
                    actual,
                });
            }
            let dest = inner.blob_path(&d);
            if dest.exists() {
                return Ok(());
            }
            let tmp = inner.tmp_path(&d);
            let result = (|| {
                let mut f = fs::File::create(&tmp).map_err(StoreError::io("creating tmp file"))?;
                f.write_all(&bytes)
                    .map_err(StoreError::io("writing tmp file"))?;
                inner.commit_file(&f, &tmp, &d)
            })();
            if result.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            result
        })
        .await??;
        self.inner.index.put_blob(digest, size, media_type)
    }

    /// Start writing a blob. Bytes go to `tmp/` as they arrive, are hashed once, and are
    /// renamed into `blobs/` by [`Ingest::commit`] only if size and digest match.
    pub fn begin_ingest(
        &self,
        digest: Digest,
        expected_size: Option<u64>,
    ) -> Result<Ingest, StoreError> {
        Ingest::begin(Arc::clone(&self.inner), digest, expected_size)
    }

    /// Delete a committed blob and its record.
    pub async fn remove(&self, digest: &Digest) -> Result<bool, StoreError> {
        let path = self.blob_path(digest);
        let size = tokio::fs::metadata(&path).await.map(|m| m.len()).ok();
        let removed = match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                if let Some(size) = size {
                    self.inner.usage_bytes.fetch_sub(size, Ordering::Relaxed);
                    self.inner.usage_blobs.fetch_sub(1, Ordering::Relaxed);
                }
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(StoreError::Io {
                    op: "removing blob",
                    source: e,
                })
            }
        };
        self.inner.index.remove_blob(digest)?;
        Ok(removed)
    }

    pub fn tag(&self, key: &TagKey) -> Result<Option<TagRecord>, StoreError> {
        self.inner.index.tag(key)
    }

    pub fn put_tag(&self, key: &TagKey, record: &TagRecord) -> Result<(), StoreError> {
        self.inner.index.put_tag(key, record)
    }

    /// Record that `repo` on `upstream` may see `digest`.
    pub fn link(&self, upstream: &str, repo: &RepoName, digest: &Digest) -> Result<(), StoreError> {
        self.inner.index.link(upstream, repo, digest)
    }

    pub fn is_linked(
        &self,
        upstream: &str,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<bool, StoreError> {
        self.inner.index.is_linked(upstream, repo, digest)
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

    /// Write the index to disk (shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.index.flush()
    }
}

impl Inner {
    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.blobs
            .join(d.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn tmp_path(&self, d: &Digest) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.tmp
            .join(format!("{}-{}-{n}", &d.hex()[..16], std::process::id()))
    }

    /// fsync the file, rename it into place, fsync the directory: after this returns, the
    /// blob survives a crash, and before it no reader can see it under its digest.
    fn commit_file(&self, f: &fs::File, tmp: &Path, d: &Digest) -> Result<(), StoreError> {
        f.sync_all().map_err(StoreError::io("fsync tmp file"))?;
        let dest = self.blob_path(d);
        let dir = dest
            .parent()
            .ok_or_else(|| StoreError::Index("blob path has no parent".into()))?;
        fs::create_dir_all(dir).map_err(StoreError::io("creating blob directory"))?;
        let size = f.metadata().map_err(StoreError::io("stat tmp file"))?.len();
        let replaced = dest.exists();
        fs::rename(tmp, &dest).map_err(StoreError::io("renaming into blobs/"))?;
        if !replaced {
            self.usage_bytes.fetch_add(size, Ordering::Relaxed);
            self.usage_blobs.fetch_add(1, Ordering::Relaxed);
        }
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StoreError::io("fsync blob directory"))?;
        Ok(())
    }
}

/// Total size and number of files under `blobs/` (two levels of directories per algorithm).
fn measure(blobs: &Path) -> std::io::Result<Usage> {
    let mut usage = Usage::default();
    let mut dirs = vec![(blobs.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() && depth < 2 {
                dirs.push((entry.path(), depth + 1));
            } else if kind.is_file() && depth == 2 {
                usage.bytes += entry.metadata()?.len();
                usage.blobs += 1;
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests;
