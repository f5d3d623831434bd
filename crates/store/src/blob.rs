//! Reading committed blobs as bounded-chunk streams.

use std::fs::File;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use pullgate_oci::ByteRange;

use crate::StoreError;

/// How much one read hands to the client: large enough to amortise the blocking-pool hop,
/// small enough that a slow client pins little memory.
pub(crate) const CHUNK: usize = 512 * 1024;

/// A stream of a blob's bytes. Ends early with an error (never cleanly) if the content
/// turns out to be bad or the file cannot be read.
pub struct BlobStream {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>,
}

impl BlobStream {
    pub(crate) fn new(s: impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static) -> Self {
        BlobStream { inner: Box::pin(s) }
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlobStream")
    }
}

/// A committed blob, open for reading. The file stays readable even if the blob is
/// removed meanwhile (eviction unlinks; open descriptors keep the data). With the S3
/// backend it is the object's size and where to read it: each [`BlobReader::stream`] is
/// one `GET` (of its range), sent when the stream is first polled.
#[derive(Clone)]
pub struct BlobReader {
    at: At,
    size: u64,
}

#[derive(Clone)]
enum At {
    File(Arc<File>),
    Bucket(crate::S3, pullgate_oci::Digest),
}

impl BlobReader {
    pub(crate) fn open(path: &Path) -> Result<Option<BlobReader>, StoreError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StoreError::Io {
                    op: "opening blob",
                    source: e,
                })
            }
        };
        let size = file
            .metadata()
            .map_err(StoreError::io("stat open blob"))?
            .len();
        Ok(Some(BlobReader {
            at: At::File(Arc::new(file)),
            size,
        }))
    }

    /// A committed object of `size` bytes in the bucket.
    pub(crate) fn in_bucket(s3: crate::S3, digest: pullgate_oci::Digest, size: u64) -> Self {
        BlobReader {
            at: At::Bucket(s3, digest),
            size,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The whole blob of a reader over a file (the filesystem backend's `read_small`).
    pub(crate) fn read_all(&self) -> Result<Bytes, StoreError> {
        let At::File(file) = &self.at else {
            return Err(StoreError::IngestFailed(
                "read_all of a blob in the bucket".into(),
            ));
        };
        let len = usize::try_from(self.size).map_err(|_| StoreError::TooLarge {
            size: self.size,
            limit: usize::MAX as u64,
        })?;
        read_at(file, 0, len)
    }

    /// The whole blob, or the inclusive `range` of it.
    pub fn stream(&self, range: Option<ByteRange>) -> BlobStream {
        let (start, end) = match range {
            Some(r) => (r.start, r.end.saturating_add(1).min(self.size)),
            None => (0, self.size),
        };
        let file = match &self.at {
            At::File(file) => Arc::clone(file),
            At::Bucket(s3, digest) => return bucket_stream(s3.clone(), digest.clone(), range),
        };
        BlobStream::new(futures_util::stream::unfold(
            (file, start),
            move |(file, pos)| async move {
                if pos >= end {
                    return None;
                }
                match read_at_async(&file, pos, chunk_len(pos, end)).await {
                    // A committed blob never shrinks; reading short means something outside
                    // pullgate changed the file. End the stream with an error, not short.
                    Ok(b) if b.is_empty() => Some((
                        Err(StoreError::IngestFailed(
                            "blob file shorter than recorded".into(),
                        )),
                        (file, end),
                    )),
                    Ok(b) => {
                        let next = pos + b.len() as u64;
                        Some((Ok(b), (file, next)))
                    }
                    Err(e) => Some((Err(e), (file, end))),
                }
            },
        ))
    }
}

/// One `GET` of `digest` (or its `range`), sent at the first poll; a blob gone from the
/// bucket meanwhile ends the stream in an error, never cleanly.
pub(crate) fn bucket_stream(
    s3: crate::S3,
    digest: pullgate_oci::Digest,
    range: Option<ByteRange>,
) -> BlobStream {
    use crate::Backend;
    use futures_util::StreamExt;
    let opened = async move { s3.read(&digest, range).await };
    BlobStream::new(
        futures_util::stream::once(opened).flat_map(|result| match result {
            Ok(Some(opened)) => opened.body,
            Ok(None) => BlobStream::new(futures_util::stream::once(async {
                Err(StoreError::Backend {
                    op: "GET",
                    detail: "the blob is no longer in the bucket".into(),
                })
            })),
            Err(e) => BlobStream::new(futures_util::stream::once(async { Err(e) })),
        }),
    )
}

pub(crate) fn chunk_len(pos: u64, end: u64) -> usize {
    usize::try_from(end - pos).map_or(CHUNK, |n| n.min(CHUNK))
}

/// Up to `len` bytes at `offset`, from the calling task when the page cache holds them
/// (the common case: a blob just written, or served recently), else from the blocking
/// pool. Shorter than `len` only at the end of the file, or when only part was cached.
pub(crate) async fn read_at_async(
    file: &Arc<File>,
    offset: u64,
    len: usize,
) -> Result<Bytes, StoreError> {
    match sys::read_cached(file, offset, len) {
        Ok(Some(b)) if !b.is_empty() => return Ok(b),
        Ok(_) => {}
        Err(e) => {
            return Err(StoreError::Io {
                op: "reading blob",
                source: e,
            })
        }
    }
    let f = Arc::clone(file);
    tokio::task::spawn_blocking(move || read_at(&f, offset, len)).await?
}

/// `pread` up to `len` bytes at `offset`, waiting for the disk; shorter only at end of file.
pub(crate) fn read_at(file: &File, offset: u64, len: usize) -> Result<Bytes, StoreError> {
    sys::read_full(file, offset, len)
        .map(Bytes::from)
        .map_err(|source| StoreError::Io {
            op: "reading blob",
            source,
        })
}

/// Reads into fresh buffers without zeroing them first: a blob is read once per client per
/// byte, so a `memset` before every `pread` would be a third of the copying.
#[cfg(target_os = "linux")]
mod sys {
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;

    /// Cleared when the kernel or filesystem refuses `RWF_NOWAIT`; every read then takes
    /// the blocking pool.
    static NOWAIT: AtomicBool = AtomicBool::new(true);

    /// What the page cache holds at `offset` (up to `len`), without blocking on the disk.
    /// `None`: nothing there now, or the kernel cannot say; read it the blocking way.
    pub(super) fn read_cached(file: &File, offset: u64, len: usize) -> io::Result<Option<Bytes>> {
        if !NOWAIT.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let mut buf = Vec::with_capacity(len);
        match pread_into(file, &mut buf, offset, libc::RWF_NOWAIT) {
            Ok(_) => Ok(Some(Bytes::from(buf))),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(None),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS)
                ) =>
            {
                NOWAIT.store(false, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn read_full(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let at = offset + buf.len() as u64;
            match pread_into(file, &mut buf, at, 0) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(buf)
    }

    /// One `preadv2` into `buf`'s spare capacity, appending what was read.
    fn pread_into(
        file: &File,
        buf: &mut Vec<u8>,
        offset: u64,
        flags: libc::c_int,
    ) -> io::Result<usize> {
        let spare = buf.spare_capacity_mut();
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        };
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `iov` covers exactly the vector's spare capacity, which stays allocated
        // and unaliased for the call; the kernel writes at most `iov_len` bytes into it.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, flags) };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        // SAFETY: the kernel initialised the first `n <= iov_len` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
        Ok(n)
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::fs::File;
    use std::io;

    use bytes::Bytes;

    pub(super) fn read_cached(_: &File, _: u64, _: usize) -> io::Result<Option<Bytes>> {
        Ok(None)
    }

    pub(super) fn read_full(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        let mut filled = 0;
        while filled < len {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }
}
