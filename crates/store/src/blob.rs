//! Reading committed blobs as bounded-chunk streams.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use pullgate_oci::ByteRange;

use crate::StoreError;

/// How much one read hands to the client: large enough to amortise the blocking-pool hop,
/// small enough that a slow client pins little memory.
pub(crate) const CHUNK: usize = 256 * 1024;

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
/// removed meanwhile (eviction unlinks; open descriptors keep the data).
#[derive(Clone)]
pub struct BlobReader {
    file: Arc<File>,
    size: u64,
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
            file: Arc::new(file),
            size,
        }))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn read_all(&self) -> Result<Bytes, StoreError> {
        let len = usize::try_from(self.size).map_err(|_| StoreError::TooLarge {
            size: self.size,
            limit: usize::MAX as u64,
        })?;
        read_at(&self.file, 0, len)
    }

    /// The whole blob, or the inclusive `range` of it.
    pub fn stream(&self, range: Option<ByteRange>) -> BlobStream {
        let (start, end) = match range {
            Some(r) => (r.start, r.end.saturating_add(1).min(self.size)),
            None => (0, self.size),
        };
        let file = Arc::clone(&self.file);
        BlobStream::new(futures_util::stream::unfold(
            (file, start),
            move |(file, pos)| async move {
                if pos >= end {
                    return None;
                }
                let want = chunk_len(pos, end);
                let f = Arc::clone(&file);
                let read = tokio::task::spawn_blocking(move || read_at(&f, pos, want))
                    .await
                    .map_err(StoreError::from)
                    .and_then(|r| r);
                match read {
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

pub(crate) fn chunk_len(pos: u64, end: u64) -> usize {
    usize::try_from(end - pos).map_or(CHUNK, |n| n.min(CHUNK))
}

/// `pread` up to `len` bytes at `offset`; shorter only at end of file.
pub(crate) fn read_at(file: &File, offset: u64, len: usize) -> Result<Bytes, StoreError> {
    let mut buf = BytesMut::zeroed(len);
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(StoreError::Io {
                    op: "reading blob",
                    source: e,
                })
            }
        }
    }
    buf.truncate(filled);
    Ok(buf.freeze())
}
