//! The filesystem backend: blob files under the cache directory's `blobs/`, written
//! through `tmp/` by [`Ingest`] (which is this backend's [`Upload`]).
//!
//! Its blobs are also recorded in the cache's index (size, access time, origins), which
//! eviction and usage accounting read; so commits and removals here keep the record in
//! step with the file, exactly as [`Store`](crate::Store) always did. Paths stay in here and
//! in the modules of the store that manage the directory (repair, eviction): none leaves
//! the crate.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use pullgate_oci::{ByteRange, Digest};
use tokio::sync::mpsc;

use super::{Backend, Opened, Put, Upload};
use crate::{BlobReader, Ingest, Inner, StoreError};

/// Listed entries queued between the directory walk and the stream's reader.
const LIST_QUEUE: usize = 256;

/// The cache directory as a [`Backend`]. Cheap to clone; obtained from
/// [`Store::filesystem`](crate::Store::filesystem).
#[derive(Clone)]
pub struct Filesystem {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Filesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Filesystem")
    }
}

impl Filesystem {
    /// A committed blob, open: its size and a reader for any part of it. Unlike
    /// [`Backend::read`], the caller learns the size before choosing a range.
    pub async fn open(&self, digest: &Digest) -> Result<Option<BlobReader>, StoreError> {
        let path = self.inner.blob_path(digest);
        tokio::task::spawn_blocking(move || BlobReader::open(&path)).await?
    }

    /// Read a small committed blob (a manifest) whole. Larger than `limit` is an error.
    pub async fn read_small(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> Result<Option<Bytes>, StoreError> {
        let path = self.inner.blob_path(digest);
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
}

impl Backend for Filesystem {
    type Upload = Ingest;

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        match tokio::fs::metadata(self.inner.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io {
                op: "stat blob",
                source: e,
            }),
        }
    }

    async fn read(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Option<Opened>, StoreError> {
        Ok(self.open(digest).await?.map(|reader| Opened {
            size: reader.size(),
            body: reader.stream(range),
        }))
    }

    async fn ingest(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
    ) -> Result<Ingest, StoreError> {
        Ingest::begin(Arc::clone(&self.inner), digest.clone(), expected_size).await
    }

    async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<Put, StoreError> {
        self.inner.put_bytes(digest, bytes, None, None).await
    }

    async fn remove(&self, digest: &Digest) -> Result<bool, StoreError> {
        // The record first, as eviction does: a crash between the two leaves a file
        // without a record, which start-up repair indexes again or removes.
        self.inner.index.remove_blob(digest)?;
        let path = self.inner.blob_path(digest);
        let size = tokio::fs::metadata(&path).await.map(|m| m.len()).ok();
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                if let Some(size) = size {
                    self.inner.usage_bytes.fetch_sub(size, Ordering::Relaxed);
                    self.inner.usage_blobs.fetch_sub(1, Ordering::Relaxed);
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io {
                op: "removing blob",
                source: e,
            }),
        }
    }

    fn list(&self) -> BoxStream<'static, Result<(Digest, u64), StoreError>> {
        let (tx, rx) = mpsc::channel(LIST_QUEUE);
        let blobs = self.inner.blobs.clone();
        tokio::task::spawn_blocking(move || {
            let walked = crate::repair::walk(&blobs, &mut |found| {
                let crate::repair::Found::Blob { digest, len, .. } = found else {
                    return Ok(());
                };
                // The reader went away: stop walking (the error only ends the walk).
                tx.blocking_send(Ok((digest, len)))
                    .map_err(|_| StoreError::IngestFailed("listing abandoned".into()))
            });
            if let Err(e) = walked {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }

    async fn sweep(&self, older_than: Duration) -> Result<u64, StoreError> {
        let tmp = self.inner.tmp.clone();
        tokio::task::spawn_blocking(move || sweep_tmp(&tmp, older_than)).await?
    }
}

impl Upload for Ingest {
    async fn write(&mut self, chunks: Vec<Bytes>) -> Result<(), StoreError> {
        self.write_batch(chunks).await
    }

    async fn commit(self) -> Result<u64, StoreError> {
        Ingest::commit(self, None).await
    }
}

/// Remove files in `tmp/` last modified more than `older_than` ago.
fn sweep_tmp(tmp: &Path, older_than: Duration) -> Result<u64, StoreError> {
    let cutoff = SystemTime::now()
        .checked_sub(older_than)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut removed = 0;
    for entry in fs::read_dir(tmp).map_err(StoreError::io("listing tmp/"))? {
        let entry = entry.map_err(StoreError::io("listing tmp/"))?;
        let Ok(meta) = entry.metadata() else { continue };
        // A file whose time cannot be read is older than any cutoff: it is ours to clean.
        if meta.is_file() && meta.modified().map_or(true, |m| m <= cutoff) {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::Io {
                        op: "removing a file from tmp/",
                        source: e,
                    })
                }
            }
        }
    }
    Ok(removed)
}

/// Rename `from` to `to` unless `to` exists (`AlreadyExists` then), atomically where the
/// filesystem can (`renameat2(RENAME_NOREPLACE)`): of several writers of one blob exactly
/// one creates it. Where it cannot, a look before the rename: writers of one cache are
/// threads of the one process holding its lock, writing the same bytes, so losing that
/// race only writes the file twice.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
        };
        let (cf, ct) = (c(from)?, c(to)?);
        // SAFETY: two NUL-terminated paths that live across the call; no memory is kept.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cf.as_ptr(),
                libc::AT_FDCWD,
                ct.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if !matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
        ) {
            return Err(e);
        }
    }
    if to.exists() {
        return Err(std::io::ErrorKind::AlreadyExists.into());
    }
    fs::rename(from, to)
}

impl Inner {
    /// Bytes held whole in memory (manifests): hashed, then, with their record (and, with
    /// an `origin`, who vouched for them) written first, put in place unless present.
    pub(crate) async fn put_bytes(
        self: &Arc<Self>,
        digest: &Digest,
        bytes: Bytes,
        media_type: Option<&str>,
        origin: Option<crate::Origin>,
    ) -> Result<Put, StoreError> {
        let inner = Arc::clone(self);
        let d = digest.clone();
        let media = media_type.map(str::to_owned);
        let size = bytes.len() as u64;
        // Between finding the file present and recording it, eviction must not remove it.
        let _pin = crate::BlobPin::new(Arc::clone(self), digest.clone());
        let put = tokio::task::spawn_blocking(move || {
            let mut h = pullgate_oci::Hasher::new(d.algorithm());
            h.update(&bytes);
            let actual = h.finish();
            if actual != d {
                return Err(StoreError::DigestMismatch {
                    expected: d,
                    actual,
                });
            }
            inner.index.put_blob(&d, size, media.as_deref())?;
            inner.record_origin(&d, origin.as_ref())?;
            if inner.blob_path(&d).exists() {
                return Ok(Put::Existed);
            }
            let result = inner.create_tmp(&d, Some(size)).and_then(|(tmp, mut f)| {
                use std::io::Write;
                let written = f
                    .write_all(&bytes)
                    .map_err(StoreError::io("writing tmp file"))
                    .and_then(|()| inner.commit_new_file(&f, &tmp, &d));
                if written.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                written
            });
            if result.is_err() && !inner.blob_path(&d).exists() {
                // No file: no record either (the links stay; they say who holds what).
                let _ = inner.index.remove_blob(&d);
            }
            result
        })
        .await?
        .inspect_err(|e| {
            if e.is_disk_trouble() {
                self.disk.failed(e, false);
            }
        })?;
        self.disk.succeeded();
        Ok(put)
    }

    /// [`Inner::commit_file`] that never replaces a blob already there: the tmp file is
    /// deleted instead, and the answer says which happened.
    fn commit_new_file(&self, f: &fs::File, tmp: &Path, d: &Digest) -> Result<Put, StoreError> {
        f.sync_all().map_err(StoreError::io("fsync tmp file"))?;
        let size = f.metadata().map_err(StoreError::io("stat tmp file"))?.len();
        match rename_noreplace(tmp, &self.blob_path(d)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = fs::remove_file(tmp);
                return Ok(Put::Existed);
            }
            Err(e) => {
                return Err(StoreError::Io {
                    op: "renaming into blobs/",
                    source: e,
                })
            }
        }
        self.usage_bytes.fetch_add(size, Ordering::Relaxed);
        self.usage_blobs.fetch_add(1, Ordering::Relaxed);
        self.note_growth();
        fs::File::open(self.blob_dir(d))
            .and_then(|d| d.sync_all())
            .map_err(StoreError::io("fsync blob directory"))?;
        Ok(Put::Created)
    }

    /// Where a committed blob lives.
    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blob_dir(d).join(d.hex())
    }

    /// The directory `d`'s file goes in (`blobs/<alg>/<2 hex>`). Never removed once made.
    pub(crate) fn blob_dir(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.algorithm().as_str()).join(&d.hex()[..2])
    }
}
