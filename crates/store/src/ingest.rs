//! Writing one blob while others read it.
//!
//! The bytes of an ingest take two paths at once, on two blocking threads: a writer puts
//! them in a `tmp/` file with one vectored `write` per batch, and a hasher hashes them (the
//! only hash of these bytes, ever). Both get the same reference-counted buffers, so nothing
//! is copied between them, and hashing, which costs about as much as the whole loopback
//! transfer, overlaps with the write and with the network instead of following them.
//!
//! The writer publishes how much is on disk through a `watch` channel. Followers read the
//! same open file behind it, woken by that channel: no polling, and a follower never waits
//! for more than the bytes it needs next.
//!
//! A follower's stream withholds its final byte until the whole blob has been verified, so
//! a client can never receive a clean, complete-looking body of bad content: on a mismatch
//! its stream ends in an error instead. Verification, not durability, releases that byte:
//! the commit's `fsync` of a large blob takes as long as writing it, and a client holding
//! verified bytes need not wait for the disk.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use pullgate_oci::{Algorithm, Digest, Hasher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::blob::{chunk_len, read_at_async, BlobStream};
use crate::{Inner, Origin, StoreError};

/// Batches queued to each of the writer and the hasher. Both queues hold the same buffers,
/// so an ingest pins at most about `QUEUE` batches of memory.
const QUEUE: usize = 4;

/// Bytes worth gathering into one batch: large enough that the per-batch costs (two queue
/// hops, one `write`, one wake-up of every follower) vanish against the copy itself.
pub const BATCH_BYTES: usize = 1024 * 1024;

/// Buffers per batch at most: one `writev` takes up to `IOV_MAX` (1024) of them.
pub const BATCH_CHUNKS: usize = 512;

/// The largest blob whose blocks an ingest reserves before the bytes arrive.
const PREALLOCATE_MAX: u64 = 8 * 1024 * 1024 * 1024;

/// Buffers that arrived together and are written with one vectored write.
type Batch = Arc<Vec<Bytes>>;

#[derive(Debug, Clone)]
enum State {
    Writing {
        written: u64,
    },
    /// Every byte is on disk and hashed to the expected digest. The commit (fsync, rename)
    /// may still be under way; readers need not wait for it.
    Verified {
        size: u64,
    },
    Failed(Arc<str>),
}

/// Writes one blob into the store. Dropping it without [`Ingest::commit`] aborts it.
pub struct Ingest {
    inner: Arc<Inner>,
    digest: Digest,
    expected_size: Option<u64>,
    tmp: PathBuf,
    file: Arc<File>,
    senders: Option<(mpsc::Sender<Batch>, mpsc::Sender<Batch>)>,
    writer: Option<JoinHandle<Result<u64, StoreError>>>,
    hasher: Option<JoinHandle<Digest>>,
    state: Arc<watch::Sender<State>>,
    cancelled: Arc<AtomicBool>,
    follower: FileFollower,
    /// What this ingest added to the store's in-flight bytes; given back when it ends.
    inflight: u64,
}

/// Reads a blob while it is being ingested into the cache directory. Cheap to clone.
#[derive(Clone)]
pub(crate) struct FileFollower {
    file: Arc<File>,
    state: watch::Receiver<State>,
    expected_size: Option<u64>,
}

impl Ingest {
    pub(crate) async fn begin(
        inner: Arc<Inner>,
        digest: Digest,
        expected_size: Option<u64>,
    ) -> Result<Ingest, StoreError> {
        let create = Arc::clone(&inner);
        let d = digest.clone();
        let (tmp, file) = tokio::task::spawn_blocking(move || create.create_tmp(&d, expected_size))
            .await?
            .inspect_err(|e| {
                if e.is_disk_trouble() {
                    inner.disk.failed(e, false);
                }
            })?;
        let file = Arc::new(file);
        let (state_tx, state_rx) = watch::channel(State::Writing { written: 0 });
        let state = Arc::new(state_tx);
        let cancelled = Arc::new(AtomicBool::new(false));
        let (write_tx, write_rx) = mpsc::channel(QUEUE);
        let (hash_tx, hash_rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            file: Arc::clone(&file),
            tmp: tmp.clone(),
            expected_size,
            state: Arc::clone(&state),
            cancelled: Arc::clone(&cancelled),
        };
        let writer = tokio::task::spawn_blocking(move || writer.run(write_rx));
        let algorithm = digest.algorithm();
        let hasher = tokio::task::spawn_blocking(move || hash_all(algorithm, hash_rx));
        Ok(Ingest {
            inner,
            digest,
            expected_size,
            tmp,
            file: Arc::clone(&file),
            senders: Some((write_tx, hash_tx)),
            writer: Some(writer),
            hasher: Some(hasher),
            state,
            cancelled,
            follower: FileFollower {
                file,
                state: state_rx,
                expected_size,
            },
            inflight: 0,
        })
    }

    /// A reader of this blob as it is written.
    pub fn follower(&self) -> crate::Follower {
        crate::Follower::file(self.follower.clone())
    }

    /// Queue one chunk. See [`Ingest::write_batch`].
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.write_batch(vec![chunk]).await
    }

    /// Queue chunks that arrived together (at most [`BATCH_CHUNKS`] of them; more are
    /// split). Waits when the disk or the hash is behind: backpressure to the network.
    pub async fn write_batch(&mut self, mut chunks: Vec<Bytes>) -> Result<(), StoreError> {
        while chunks.len() > BATCH_CHUNKS {
            let rest = chunks.split_off(BATCH_CHUNKS);
            self.send(chunks).await?;
            chunks = rest;
        }
        self.send(chunks).await
    }

    async fn send(&mut self, chunks: Vec<Bytes>) -> Result<(), StoreError> {
        let Some((write_tx, hash_tx)) = &self.senders else {
            return Err(StoreError::IngestFailed("ingest already finished".into()));
        };
        let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        self.inflight += len;
        self.inner.inflight_bytes.fetch_add(len, Ordering::Relaxed);
        let batch = Arc::new(chunks);
        if write_tx.send(Arc::clone(&batch)).await.is_ok() && hash_tx.send(batch).await.is_ok() {
            return Ok(());
        }
        // The writer stopped early (disk error, too many bytes): report why.
        self.senders = None;
        match self.writer.take() {
            Some(h) => match h.await? {
                Err(e) => {
                    if e.is_disk_trouble() {
                        self.inner.disk.failed(&e, true);
                    }
                    Err(e)
                }
                Ok(_) => Err(StoreError::IngestFailed("ingest ended early".into())),
            },
            None => Err(StoreError::IngestFailed("ingest already finished".into())),
        }
    }

    /// Finish: check size and digest (followers may read the last byte from then on),
    /// fsync, rename into `blobs/`. Returns the size.
    ///
    /// With an `origin`, the upstream that served the bytes and the repository they were
    /// fetched for are recorded (origin and link) *before* the file appears under
    /// `blobs/`: nobody finds the blob without also finding who vouched for it.
    pub async fn commit(mut self, origin: Option<Origin>) -> Result<u64, StoreError> {
        self.senders = None;
        let (Some(writer), Some(hasher)) = (self.writer.take(), self.hasher.take()) else {
            return Err(StoreError::IngestFailed("ingest already finished".into()));
        };
        let written = writer.await;
        let actual = hasher.await;
        let verified = match (written, actual) {
            (Ok(Ok(written)), Ok(actual)) => self.verify(written, actual),
            (Ok(Err(e)), _) => {
                if e.is_disk_trouble() {
                    self.inner.disk.failed(&e, true);
                }
                return Err(e);
            }
            (Err(e), _) | (_, Err(e)) => Err(StoreError::from(e)),
        };
        let size = match verified {
            Ok(size) => size,
            Err(e) => {
                self.fail(&e.to_string());
                let tmp = self.tmp.clone();
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(tmp)).await;
                return Err(e);
            }
        };
        self.state.send_replace(State::Verified { size });
        // The commit counts these bytes as usage: they must not count twice meanwhile.
        self.release_inflight();

        let (inner, file, tmp, digest) = (
            Arc::clone(&self.inner),
            Arc::clone(&self.file),
            self.tmp.clone(),
            self.digest.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let result = inner
                .index
                .put_blob(&digest, size, None)
                .and_then(|()| inner.record_origin(&digest, origin.as_ref()))
                .and_then(|()| inner.commit_file(&file, &tmp, &digest));
            match &result {
                Ok(()) => inner.disk.succeeded(),
                Err(e) => {
                    // Readers already hold verified bytes; only the cache loses this blob.
                    let _ = std::fs::remove_file(&tmp);
                    if !inner.blob_path(&digest).exists() {
                        let _ = inner.index.remove_blob(&digest);
                    }
                    if e.is_disk_trouble() {
                        inner.disk.failed(e, false);
                    }
                }
            }
            result
        })
        .await??;
        Ok(size)
    }

    fn verify(&self, written: u64, actual: Digest) -> Result<u64, StoreError> {
        if self.cancelled.load(Ordering::SeqCst) {
            return Err(StoreError::IngestFailed("aborted".into()));
        }
        if let Some(expected) = self.expected_size {
            if written != expected {
                return Err(StoreError::SizeMismatch {
                    expected,
                    actual: written,
                });
            }
        }
        if actual != self.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        Ok(written)
    }

    fn fail(&self, reason: &str) {
        self.state.send_if_modified(|s| match s {
            State::Writing { .. } => {
                *s = State::Failed(reason.into());
                true
            }
            _ => false,
        });
    }

    /// Give up: the tmp file is deleted and every follower's stream fails with `reason`.
    pub fn abort(&mut self, reason: &str) {
        if self.senders.is_none() && self.writer.is_none() {
            return;
        }
        // Order matters: the writer checks the flag once its queue closes, so it must be
        // set before the senders are dropped, or the writer would keep the tmp file.
        self.cancelled.store(true, Ordering::SeqCst);
        self.fail(reason);
        self.senders = None;
        self.writer = None;
        self.hasher = None;
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if self.senders.is_some() {
            self.abort("ingest abandoned");
        }
        self.release_inflight();
    }
}

impl Ingest {
    /// Committed (and counted as usage by the commit) or discarded: no longer in flight.
    fn release_inflight(&mut self) {
        let n = std::mem::take(&mut self.inflight);
        self.inner.inflight_bytes.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Hashes every batch; the digest of whatever arrived once the queue closes.
fn hash_all(algorithm: Algorithm, mut rx: mpsc::Receiver<Batch>) -> Digest {
    let mut hasher = Hasher::new(algorithm);
    while let Some(batch) = rx.blocking_recv() {
        for chunk in batch.iter() {
            hasher.update(chunk);
        }
    }
    hasher.finish()
}

struct Writer {
    file: Arc<File>,
    tmp: PathBuf,
    expected_size: Option<u64>,
    state: Arc<watch::Sender<State>>,
    cancelled: Arc<AtomicBool>,
}

impl Writer {
    fn run(self, mut rx: mpsc::Receiver<Batch>) -> Result<u64, StoreError> {
        let result = self.write_all(&mut rx);
        if let Err(e) = &result {
            let _ = std::fs::remove_file(&self.tmp);
            self.state.send_if_modified(|s| match s {
                State::Writing { .. } => {
                    *s = State::Failed(e.to_string().into());
                    true
                }
                _ => false,
            });
        }
        result
    }

    fn write_all(&self, rx: &mut mpsc::Receiver<Batch>) -> Result<u64, StoreError> {
        let mut written: u64 = 0;
        // Only this thread writes, through the file's own position; followers use `pread`,
        // which leaves it alone.
        let mut file: &File = &self.file;
        while let Some(batch) = rx.blocking_recv() {
            if self.cancelled.load(Ordering::SeqCst) {
                return Err(StoreError::IngestFailed("aborted".into()));
            }
            let len: u64 = batch.iter().map(|c| c.len() as u64).sum();
            let next = written + len;
            if let Some(expected) = self.expected_size {
                if next > expected {
                    return Err(StoreError::SizeMismatch {
                        expected,
                        actual: next,
                    });
                }
            }
            let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|c| IoSlice::new(c)).collect();
            let mut slices = &mut slices[..];
            while !slices.is_empty() {
                match file.write_vectored(slices) {
                    Ok(0) => {
                        return Err(StoreError::Io {
                            op: "writing tmp file",
                            source: std::io::ErrorKind::WriteZero.into(),
                        })
                    }
                    Ok(n) => IoSlice::advance_slices(&mut slices, n),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(StoreError::Io {
                            op: "writing tmp file",
                            source: e,
                        })
                    }
                }
            }
            written = next;
            self.state.send_if_modified(|s| match s {
                State::Writing { written: w } => {
                    *w = written;
                    true
                }
                _ => false,
            });
        }
        if self.cancelled.load(Ordering::SeqCst) {
            return Err(StoreError::IngestFailed("aborted".into()));
        }
        Ok(written)
    }
}

impl Inner {
    /// Create `d`'s tmp file and reserve its `size` (see [`create_reserved`]), making room
    /// if the disk has none ([`Inner::with_room`]). The blob's directory is made now, not at
    /// the commit: on a disk out of inodes that is refused before any byte is fetched (and
    /// room can be made for it), not after every byte was. Blocking.
    pub(crate) fn create_tmp(
        &self,
        d: &Digest,
        size: Option<u64>,
    ) -> Result<(PathBuf, File), StoreError> {
        let tmp = self.tmp_path(d);
        let dir = self.blob_dir(d);
        let create = || {
            crate::private_dir(&dir).map_err(StoreError::io("creating blob directory"))?;
            create_reserved(&tmp, size)
        };
        let file = match size {
            // Only an announced size can be made room for before the bytes arrive.
            Some(size) => self.with_room(size, create),
            None => create(),
        }?;
        Ok((tmp, file))
    }
}

/// Create the tmp file and reserve the blob's blocks up front. The filesystem then
/// allocates one extent instead of one per page as they are written (a third less kernel
/// time per GiB here), and a disk without room for the blob says so now (`ENOSPC`), before
/// any byte is fetched or shown to a client, instead of halfway through the write.
fn create_reserved(path: &std::path::Path, size: Option<u64>) -> Result<File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .mode(0o600)
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(StoreError::io("creating tmp file"))?;
    if let Some(size) = size {
        if let Err(source) = preallocate(&file, size) {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(StoreError::Io {
                op: "reserving space for the blob",
                source,
            });
        }
    }
    Ok(file)
}

/// Reserve `size` bytes of blocks, leaving the file's size alone. Only "no room" is an
/// error; where reserving is not supported, writing proceeds as it would have anyway. Only
/// sizes up to [`PREALLOCATE_MAX`]: an upstream announcing a huge blob it never sends must
/// not hold that much disk for as long as the fill lasts.
#[cfg(target_os = "linux")]
fn preallocate(file: &File, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let Ok(len) = libc::off_t::try_from(size) else {
        return Ok(());
    };
    if len == 0 || size > PREALLOCATE_MAX {
        return Ok(());
    }
    // SAFETY: a plain system call on a descriptor this ingest owns; no memory is passed.
    if unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(not(target_os = "linux"))]
fn preallocate(_: &File, _: u64) -> std::io::Result<()> {
    Ok(())
}

impl FileFollower {
    /// The size announced when the ingest began, if any.
    pub fn size(&self) -> Option<u64> {
        self.expected_size
    }

    /// Wait for the ingest to end: the verified size, or why it failed.
    pub async fn finished(&self) -> Result<u64, StoreError> {
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| !matches!(s, State::Writing { .. }))
            .await
            .map_err(|_| StoreError::IngestFailed("ingest vanished".into()))?
            .clone();
        match state {
            State::Verified { size } => Ok(size),
            State::Failed(r) => Err(StoreError::IngestFailed(r.to_string())),
            State::Writing { .. } => Err(StoreError::IngestFailed("ingest vanished".into())),
        }
    }

    /// Bytes `start..=end` (or to the end), as they land on disk.
    pub fn stream(&self, start: u64, end: Option<u64>) -> BlobStream {
        // With no explicit end, the announced size is the end: its last byte is withheld too.
        let want_end = end.map(|e| e.saturating_add(1)).or(self.expected_size);
        let file = Arc::clone(&self.file);
        let rx = self.state.clone();
        BlobStream::new(futures_util::stream::unfold(
            Some((rx, file, start)),
            move |st| async move {
                let (mut rx, file, pos) = st?;
                match next_chunk(&mut rx, &file, pos, want_end).await {
                    Ok(Some(b)) => {
                        let next = pos + b.len() as u64;
                        Some((Ok(b), Some((rx, file, next))))
                    }
                    Ok(None) => None,
                    Err(e) => Some((Err(e), None)),
                }
            },
        ))
    }
}

/// The next chunk at `pos`, waiting for the writer as needed. `Ok(None)`: the stream is done.
async fn next_chunk(
    rx: &mut watch::Receiver<State>,
    file: &Arc<File>,
    pos: u64,
    want_end: Option<u64>,
) -> Result<Option<Bytes>, StoreError> {
    loop {
        let state = rx.borrow_and_update().clone();
        let limit = match state {
            State::Failed(r) => return Err(StoreError::IngestFailed(r.to_string())),
            State::Verified { size } => {
                let end = want_end.map_or(size, |e| e.min(size));
                if pos >= end {
                    return Ok(None);
                }
                end
            }
            // Everything written so far, except the stream's final byte: that one waits for
            // verification.
            State::Writing { written } => match want_end {
                Some(e) if written >= e => e - 1,
                _ => written,
            },
        };
        if pos < limit {
            let b = read_at_async(file, pos, chunk_len(pos, limit)).await?;
            if b.is_empty() {
                return Err(StoreError::IngestFailed(
                    "tmp file shorter than written".into(),
                ));
            }
            return Ok(Some(b));
        }
        if rx.changed().await.is_err() {
            // Every sender is gone: only after a final state, so look once more.
            let state = rx.borrow().clone();
            if matches!(state, State::Writing { .. }) {
                return Err(StoreError::IngestFailed("ingest vanished".into()));
            }
        }
    }
}
