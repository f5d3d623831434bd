//! Blobs: served from the store, or filled from the upstream exactly once per digest while
//! every waiting client streams the growing file behind the writer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::{FutureExt, StreamExt};
use pullgate_oci::{ByteRange, Digest, RangeError, RangeSpec, RepoName};
use pullgate_store::{pass_through, BlobStream, Follower, Store, BATCH_BYTES, BATCH_CHUNKS};
use pullgate_upstream::{BlobDownload, Upstream};
use tokio::sync::watch;

use crate::error::{MirrorError, Wanted};
use crate::stats::Stats;
use crate::{Mirror, Source, Target};

/// A blob ready to stream. `body` is `None` for HEAD.
pub struct BlobResponse {
    /// The whole blob's size.
    pub size: u64,
    /// The part being sent, when the request had a satisfiable `Range`.
    pub range: Option<ByteRange>,
    pub body: Option<BlobStream>,
    pub source: Source,
}

impl BlobResponse {
    /// Bytes in the body (the range's length, or the whole size).
    pub fn content_length(&self) -> u64 {
        self.range.map_or(self.size, |r| r.len())
    }
}

/// Where a fill stands, as its waiters see it.
#[derive(Clone)]
enum FillState {
    /// Waiting for the upstream's response headers.
    Pending,
    /// Bytes are flowing into the store; follow them.
    Started(Follower),
    /// The blob was already committed when the fill began: read it from the store.
    Committed,
    /// The cache disk refused the blob: every waiter streams it from the upstream itself.
    Bypass(Arc<Handoff>),
    Failed(MirrorError),
}

/// The fill's own upstream response, for the first waiter that wants it; the others ask
/// the upstream again (uncached, a miss costs one GET per client, as without a mirror).
pub(crate) struct Handoff(Mutex<Option<BlobDownload>>);

impl Handoff {
    fn take(&self) -> Option<BlobDownload> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// What joining a fill found.
enum Joined {
    Follow(Follower),
    /// The blob was committed before the fill could start.
    Committed,
    Bypass(Arc<Handoff>),
}

struct FillEntry {
    state: watch::Receiver<FillState>,
    upstream: String,
    repo: RepoName,
}

/// The fills under way, by digest.
#[derive(Default, Clone)]
pub(crate) struct Fills(Arc<Mutex<HashMap<Digest, FillEntry>>>);

impl Fills {
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, FillEntry>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Mirror {
    /// `GET|HEAD /v2/<name>/blobs/<digest>`, with an optional single range.
    pub async fn blob(
        &self,
        target: &Target,
        digest: &Digest,
        range: Option<RangeSpec>,
        head: bool,
    ) -> Result<BlobResponse, MirrorError> {
        // Before the lookup: whatever it finds stays in the cache until the response ends.
        let pin = self.store.pin(digest);
        if let Some(reader) = self.store.open_blob(digest).await? {
            self.ensure_access(target, digest, Wanted::Blob).await?;
            Stats::inc(&self.stats.blob_hits);
            self.store.touch(digest, reader.size());
            return respond(reader.size(), range, Source::Hit, |r| {
                (!head).then(|| reader.stream(r).pinned(pin))
            });
        }

        if head {
            // A HEAD needs only the size: ask the upstream, download nothing.
            let size = target
                .upstream
                .head_blob(&target.repo, digest)
                .await
                .map_err(|e| MirrorError::from_upstream(e, Wanted::Blob))?;
            crate::tolerate_disk(
                self.store
                    .link(target.upstream_name(), &target.repo, digest),
            )?;
            return respond(size, range, Source::Miss, |_| None);
        }

        Stats::inc(&self.stats.blob_misses);
        let follower = match self.join_fill(target, digest).await? {
            Joined::Follow(f) => f,
            Joined::Committed => {
                // Committed between our store lookup and the fill: serve it from the store.
                let reader = self
                    .store
                    .open_blob(digest)
                    .await?
                    .ok_or_else(|| MirrorError::internal("committed blob vanished"))?;
                return respond(reader.size(), range, Source::Hit, |r| {
                    Some(reader.stream(r).pinned(pin))
                });
            }
            Joined::Bypass(handoff) => return self.bypass(target, digest, range, &handoff).await,
        };
        // Without a Content-Length upstream, the size is known only when the fill ends.
        let size = follower.wait_size().await?;
        respond(size, range, Source::Miss, |r| {
            let stream = match r {
                Some(r) => follower.stream(r.start, Some(r.end)),
                None => follower.stream(0, None),
            };
            Some(stream.pinned(pin))
        })
    }

    /// Stream a blob the cache cannot hold straight from the upstream, verified as it
    /// passes ([`pass_through`]).
    async fn bypass(
        &self,
        target: &Target,
        digest: &Digest,
        range: Option<RangeSpec>,
        handoff: &Handoff,
    ) -> Result<BlobResponse, MirrorError> {
        let download = match handoff.take() {
            Some(d) => d,
            None => target
                .upstream
                .get_blob(&target.repo, digest)
                .await
                .map_err(|e| MirrorError::from_upstream(e, Wanted::Blob))?,
        };
        // Without the cache there is nowhere to learn the size before sending it.
        let size = download.size.ok_or_else(|| {
            MirrorError::UpstreamBadContent(
                "the upstream sent no Content-Length, and the cache cannot hold the blob".into(),
            )
        })?;
        self.store.disk().note_bypass();
        let digest = digest.clone();
        respond(size, range, Source::Miss, move |r| {
            Some(pass_through(download.stream, digest, size, r))
        })
    }

    /// Join the fill for `digest`, or start it.
    async fn join_fill(&self, target: &Target, digest: &Digest) -> Result<Joined, MirrorError> {
        let (mut rx, other_repo) = {
            let mut fills = self.fills.lock();
            match fills.get(digest) {
                Some(entry) => {
                    let other =
                        entry.upstream != target.upstream_name() || entry.repo != target.repo;
                    (entry.state.clone(), other)
                }
                None => {
                    let (tx, rx) = watch::channel(FillState::Pending);
                    fills.insert(
                        digest.clone(),
                        FillEntry {
                            state: rx.clone(),
                            upstream: target.upstream_name().to_owned(),
                            repo: target.repo.clone(),
                        },
                    );
                    Stats::inc(&self.stats.fills_started);
                    tokio::spawn(run_fill(
                        self.fills.clone(),
                        self.store.clone(),
                        Arc::clone(&target.upstream),
                        target.repo.clone(),
                        digest.clone(),
                        tx,
                        Arc::clone(&self.stats),
                    ));
                    (rx, false)
                }
            }
        };
        // A fill started for another repository proves nothing about this one.
        if other_repo {
            self.ensure_access(target, digest, Wanted::Blob).await?;
        }
        let state = rx
            .wait_for(|s| !matches!(s, FillState::Pending))
            .await
            .map_err(|_| MirrorError::internal("fill ended without a result"))?
            .clone();
        match state {
            FillState::Started(f) => Ok(Joined::Follow(f)),
            FillState::Committed => Ok(Joined::Committed),
            FillState::Bypass(h) => Ok(Joined::Bypass(h)),
            FillState::Failed(e) => Err(e),
            FillState::Pending => Err(MirrorError::internal("fill still pending")),
        }
    }
}

/// The one upstream GET for a digest. Runs in its own task: it completes and commits even
/// when the client that started it has disconnected.
async fn run_fill(
    fills: Fills,
    store: Store,
    upstream: Arc<Upstream>,
    repo: RepoName,
    digest: Digest,
    tx: watch::Sender<FillState>,
    stats: Arc<Stats>,
) {
    let started = std::time::Instant::now();
    // Held to the end, so the blob cannot be evicted between its commit and its link even
    // when every client has gone.
    let pin = store.pin(&digest);
    let outcome = fill(&store, &upstream, &repo, &digest, &tx, &stats).await;
    drop(pin);
    stats.fill_durations.observe(started.elapsed());
    if let Err(e) = &outcome {
        Stats::inc(&stats.fills_failed);
        tracing::warn!(upstream = upstream.name(), repository = %repo, %digest, error = %e, "fill failed");
        // Waiters still pending learn why; those already streaming see their stream fail.
        tx.send_if_modified(|s| {
            if matches!(s, FillState::Pending) {
                *s = FillState::Failed(e.clone());
                true
            } else {
                false
            }
        });
    }
    // Leave the map only once the blob is committed (or the fill has failed), so a new
    // request finds either the fill or the committed file.
    fills.lock().remove(&digest);
}

async fn fill(
    store: &Store,
    upstream: &Upstream,
    repo: &RepoName,
    digest: &Digest,
    tx: &watch::Sender<FillState>,
    stats: &Stats,
) -> Result<(), MirrorError> {
    if store.stat(digest).await?.is_some() {
        crate::tolerate_disk(store.link(upstream.name(), repo, digest))?;
        let _ = tx.send(FillState::Committed);
        return Ok(());
    }
    let download = upstream
        .get_blob(repo, digest)
        .await
        .map_err(|e| MirrorError::from_upstream(e, Wanted::Blob))?;
    // The store notes disk trouble (log line, metrics) itself; here it only means that this
    // blob goes to its clients uncached.
    let ingest = if store.disk().should_try() {
        match store.begin_ingest(digest.clone(), download.size).await {
            Ok(ingest) => Some(ingest),
            Err(e) if e.is_disk_trouble() => None,
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let Some(mut ingest) = ingest else {
        let handoff = Handoff(Mutex::new(Some(download)));
        let _ = tx.send(FillState::Bypass(Arc::new(handoff)));
        return Ok(());
    };
    let _ = tx.send(FillState::Started(ingest.follower()));

    let mut stream = download.stream;
    while let Some(batch) = next_batch(&mut stream).await {
        match batch {
            Ok(chunks) => {
                let len: usize = chunks.iter().map(|c| c.len()).sum();
                stats
                    .bytes_fetched
                    .fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
                ingest.write_batch(chunks).await?;
            }
            Err(e) => {
                let e = MirrorError::from_upstream(e, Wanted::Blob);
                ingest.abort(&e.to_string());
                return Err(e);
            }
        }
    }
    // A size or digest mismatch maps to UpstreamBadContent (502); a disk error to Internal.
    ingest
        .commit()
        .await
        .inspect_err(|e| crate::stats::note_bad_content(upstream, e))?;
    crate::tolerate_disk(store.link(upstream.name(), repo, digest))?;
    Ok(())
}

/// The next chunk from the network and every further one already there, up to a batch: a
/// fast upstream delivers tens of small chunks per wake-up, and the store's per-batch costs
/// are paid once for all of them. Never waits for more than the first chunk, so a slow
/// upstream's bytes reach the followers as soon as they arrive.
async fn next_batch<S, E>(stream: &mut S) -> Option<Result<Vec<bytes::Bytes>, E>>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    let first = match stream.next().await? {
        Ok(c) => c,
        Err(e) => return Some(Err(e)),
    };
    let mut len = first.len();
    let mut chunks = vec![first];
    while len < BATCH_BYTES && chunks.len() < BATCH_CHUNKS {
        match stream.next().now_or_never() {
            Some(Some(Ok(c))) => {
                len += c.len();
                chunks.push(c);
            }
            // An error fails the whole fill: the chunks gathered before it need not be written.
            Some(Some(Err(e))) => return Some(Err(e)),
            Some(None) | None => break,
        }
    }
    Some(Ok(chunks))
}

/// The response for a blob of `size` bytes: the range resolved against it (416 when it
/// cannot be satisfied), and the body for that range.
fn respond(
    size: u64,
    range: Option<RangeSpec>,
    source: Source,
    body: impl FnOnce(Option<ByteRange>) -> Option<BlobStream>,
) -> Result<BlobResponse, MirrorError> {
    let range = resolve(range, size)?;
    Ok(BlobResponse {
        size,
        range,
        body: body(range),
        source,
    })
}

fn resolve(range: Option<RangeSpec>, size: u64) -> Result<Option<ByteRange>, MirrorError> {
    match range.map(|r| r.resolve(size)) {
        None => Ok(None),
        Some(Ok(r)) => Ok(Some(r)),
        Some(Err(RangeError::Ignored)) => Ok(None),
        Some(Err(RangeError::Unsatisfiable)) => Err(MirrorError::RangeNotSatisfiable { size }),
    }
}
