//! Writing one blob while others read it.
//!
//! One blocking worker per ingest writes chunks to a `tmp/` file at their offsets, hashes
//! them (the only hash of these bytes, ever), and publishes how much is on disk through a
//! `watch` channel. Followers read the same open file behind it, woken by that channel: no
//! polling, and a follower never waits for more than the bytes it needs next.
//!
//! A follower's stream withholds its final byte until the whole blob has been verified and
//! committed, so a client can never receive a clean, complete-looking body of bad content:
//! on a mismatch its stream ends in an error instead.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use pullgate_oci::{Digest, Hasher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::blob::{chunk_len, read_at, BlobStream};
use crate::{Inner, StoreError};

/// Chunks queued between the network and the disk: bounds an ingest's memory.
const QUEUE: usize = 16;

#[derive(Debug, Clone)]
enum State {
    Writing { written: u64 },
    Complete { size: u64 },
    Failed(Arc<str>),
}

/// Writes one blob into the store. Dropping it without [`Ingest::commit`] aborts it.
pub struct Ingest {
    tx: Option<mpsc::Sender<Bytes>>,
    worker: Option<JoinHandle<Result<u64, StoreError>>>,
    state: Arc<watch::Sender<State>>,
    cancelled: Arc<AtomicBool>,
    follower: Follower,
}

/// Reads a blob while it is being ingested. Cheap to clone.
#[derive(Clone)]
pub struct Follower {
    file: Arc<File>,
    state: watch::Receiver<State>,
    expected_size: Option<u64>,
}

struct Worker {
    inner: Arc<Inner>,
    file: Arc<File>,
    tmp: PathBuf,
    digest: Digest,
    expected_size: Option<u64>,
    state: Arc<watch::Sender<State>>,
    cancelled: Arc<AtomicBool>,
}

impl Ingest {
    pub(crate) fn begin(
        inner: Arc<Inner>,
        digest: Digest,
        expected_size: Option<u64>,
    ) -> Result<Ingest, StoreError> {
        let tmp = inner.tmp_path(&digest);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(StoreError::io("creating tmp file"))?;
        let file = Arc::new(file);
        let (state_tx, state_rx) = watch::channel(State::Writing { written: 0 });
        let state = Arc::new(state_tx);
        let cancelled = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(QUEUE);
        let worker = Worker {
            inner,
            file: Arc::clone(&file),
            tmp,
            digest,
            expected_size,
            state: Arc::clone(&state),
            cancelled: Arc::clone(&cancelled),
        };
        let handle = tokio::task::spawn_blocking(move || worker.run(rx));
        Ok(Ingest {
            tx: Some(tx),
            worker: Some(handle),
            state,
            cancelled,
            follower: Follower {
                file,
                state: state_rx,
                expected_size,
            },
        })
    }

    /// A reader of this blob as it is written.
    pub fn follower(&self) -> Follower {
        self.follower.clone()
    }

    /// Queue the next chunk. Waits when the disk is behind (backpressure to the network).
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        let Some(tx) = &self.tx else {
            return Err(StoreError::IngestFailed("ingest already finished".into()));
        };
        if tx.send(chunk).await.is_ok() {
            return Ok(());
        }
        // The worker stopped early (disk error, too many bytes): report why.
        self.tx = None;
        match self.worker.take() {
            Some(h) => match h.await? {
                Err(e) => Err(e),
                Ok(_) => Err(StoreError::IngestFailed("ingest ended early".into())),
            },
            None => Err(StoreError::IngestFailed("ingest already finished".into())),
        }
    }

    /// Finish: check size and digest, fsync, rename into `blobs/`. Returns the size.
    pub async fn commit(mut self) -> Result<u64, StoreError> {
        self.tx = None;
        match self.worker.take() {
            Some(h) => h.await?,
            None => Err(StoreError::IngestFailed("ingest already finished".into())),
        }
    }

    /// Give up: the tmp file is deleted and every follower's stream fails with `reason`.
    pub fn abort(&mut self, reason: &str) {
        if self.tx.is_none() && self.worker.is_none() {
            return;
        }
        // Order matters: the worker checks the flag once the channel closes, so it must be
        // set before the sender is dropped, or the worker could commit.
        self.cancelled.store(true, Ordering::SeqCst);
        self.state.send_replace(State::Failed(reason.into()));
        self.tx = None;
        self.worker = None;
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.abort("ingest abandoned");
        }
    }
}

impl Worker {
    fn run(self, mut rx: mpsc::Receiver<Bytes>) -> Result<u64, StoreError> {
        let result = self.write_all(&mut rx);
        match &result {
            Ok(size) => {
                self.state.send_replace(State::Complete { size: *size });
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.tmp);
                self.state.send_if_modified(|s| match s {
                    State::Failed(_) => false,
                    _ => {
                        *s = State::Failed(e.to_string().into());
                        true
                    }
                });
            }
        }
        result
    }

    fn write_all(&self, rx: &mut mpsc::Receiver<Bytes>) -> Result<u64, StoreError> {
        let mut hasher = Hasher::new(self.digest.algorithm());
        let mut written: u64 = 0;
        while let Some(chunk) = rx.blocking_recv() {
            if self.cancelled.load(Ordering::SeqCst) {
                return Err(StoreError::IngestFailed("aborted".into()));
            }
            let next = written + chunk.len() as u64;
            if let Some(expected) = self.expected_size {
                if next > expected {
                    return Err(StoreError::SizeMismatch {
                        expected,
                        actual: next,
                    });
                }
            }
            self.file
                .write_all_at(&chunk, written)
                .map_err(StoreError::io("writing tmp file"))?;
            hasher.update(&chunk);
            written = next;
            self.state.send_replace(State::Writing { written });
        }
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
        let actual = hasher.finish();
        if actual != self.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        self.inner
            .commit_file(&self.file, &self.tmp, &self.digest)?;
        self.inner.index.put_blob(&self.digest, written, None)?;
        Ok(written)
    }
}

impl Follower {
    /// The size announced when the ingest began, if any.
    pub fn size(&self) -> Option<u64> {
        self.expected_size
    }

    /// The final size: known at once if announced, else when the ingest completes.
    pub async fn wait_size(&self) -> Result<u64, StoreError> {
        match self.expected_size {
            Some(s) => Ok(s),
            None => self.finished().await,
        }
    }

    /// Wait for the ingest to end: the committed size, or why it failed.
    pub async fn finished(&self) -> Result<u64, StoreError> {
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| !matches!(s, State::Writing { .. }))
            .await
            .map_err(|_| StoreError::IngestFailed("ingest vanished".into()))?
            .clone();
        match state {
            State::Complete { size } => Ok(size),
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
            State::Complete { size } => {
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
            let len = chunk_len(pos, limit);
            let f = Arc::clone(file);
            let b = tokio::task::spawn_blocking(move || read_at(&f, pos, len)).await??;
            if b.is_empty() {
                return Err(StoreError::IngestFailed(
                    "tmp file shorter than written".into(),
                ));
            }
            return Ok(Some(b));
        }
        if rx.changed().await.is_err() {
            // The worker dropped its sender: only after publishing a final state, so look once more.
            let state = rx.borrow().clone();
            if matches!(state, State::Writing { .. }) {
                return Err(StoreError::IngestFailed("ingest vanished".into()));
            }
        }
    }
}
