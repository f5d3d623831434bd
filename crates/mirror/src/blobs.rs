//! Blobs: served from the store, or filled from the upstream exactly once per digest while
//! every waiting client streams the growing file behind the writer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::{FutureExt, StreamExt};
use pullgate_oci::{ByteRange, Digest, RangeError, RangeSpec, RepoName, UpstreamId};
use pullgate_store::{
    pass_through, BlobPin, BlobStream, Follower, Origin, Store, BATCH_BYTES, BATCH_CHUNKS,
};
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
    /// The blob was already committed when the fill began: read it from the store, after
    /// the same access check as any stored blob.
    Committed,
    /// The cache disk refused the blob: every waiter streams it from the upstream itself.
    Bypass(Arc<Handoff>),
    Failed(MirrorError),
}

/// The fill's own upstream response, for the first waiter of the fill's own target that
/// wants it; the others ask the upstream again (uncached, a miss costs one GET per
/// client, as without a mirror).
pub(crate) struct Handoff {
    download: Mutex<Option<BlobDownload>>,
    upstream: UpstreamId,
    repo: RepoName,
}

impl Handoff {
    fn take(&self) -> Option<BlobDownload> {
        self.download
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn is_for(&self, target: &Target) -> bool {
        &self.upstream == target.upstream_id() && self.repo == target.repo
    }
}

/// What joining a fill found.
enum Joined {
    Follow(Follower),
    /// The blob was committed before the fill could start.
    Committed,
    Bypass(Arc<Handoff>),
    /// A fill started for another (upstream, repository) failed. Its failure says nothing
    /// about this one: the waiter fills for itself.
    ForeignFailed,
}

/// Who asks for a blob, for the cap on the fills one client may have started at once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientId {
    User(String),
    /// An anonymous client, by address.
    Address(IpAddr),
    /// The mirror's own `[[prefetch]]` pulls.
    Prefetch,
}

impl ClientId {
    /// The user if there is one, else the address.
    pub fn new(user: Option<&str>, addr: IpAddr) -> ClientId {
        match user {
            Some(u) => ClientId::User(u.to_owned()),
            None => ClientId::Address(addr),
        }
    }
}

struct FillEntry {
    id: u64,
    state: watch::Receiver<FillState>,
    upstream: UpstreamId,
    repo: RepoName,
}

impl FillEntry {
    fn is_for(&self, target: &Target) -> bool {
        &self.upstream == target.upstream_id() && self.repo == target.repo
    }
}

#[derive(Default)]
struct FillMap {
    /// Fills under way by digest. Usually one per digest; a second one runs only for a
    /// client whose (upstream, repository) differs from the first fill's and whom that
    /// fill failed.
    by_digest: HashMap<Digest, Vec<FillEntry>>,
    /// Fills started by each client and still under way.
    per_client: HashMap<ClientId, usize>,
    next_id: u64,
}

/// The fills under way.
#[derive(Default, Clone)]
pub(crate) struct Fills(Arc<Mutex<FillMap>>);

impl Fills {
    pub(crate) fn len(&self) -> usize {
        self.lock().by_digest.values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FillMap> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Owns one fill's entry in the map and its client's count: dropped however the fill ends
/// (done, failed, panicked, cancelled at shutdown), so no digest is ever stuck behind a
/// fill that is gone.
struct FillGuard {
    fills: Fills,
    digest: Digest,
    id: u64,
    client: ClientId,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        let mut map = self.fills.lock();
        if let Some(entries) = map.by_digest.get_mut(&self.digest) {
            entries.retain(|e| e.id != self.id);
            if entries.is_empty() {
                map.by_digest.remove(&self.digest);
            }
        }
        if let Some(n) = map.per_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.per_client.remove(&self.client);
            }
        }
    }
}

impl Mirror {
    /// `GET|HEAD /v2/<name>/blobs/<digest>`, with an optional single range. In a
    /// repository the trust policy enforces, only blobs of manifests that passed there.
    pub async fn blob(
        &self,
        target: &Target,
        digest: &Digest,
        range: Option<RangeSpec>,
        head: bool,
        client: &ClientId,
    ) -> Result<BlobResponse, MirrorError> {
        self.check_blob(target, digest)?;
        self.blob_unjudged(target, digest, range, head, client)
            .await
    }

    /// A blob, access-checked but not judged: the trust policy's own fetches of
    /// signature layers come here.
    pub(crate) async fn blob_unjudged(
        &self,
        target: &Target,
        digest: &Digest,
        range: Option<RangeSpec>,
        head: bool,
        client: &ClientId,
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
        self.negative.check(target, digest, Wanted::Blob)?;

        if head {
            // A HEAD needs only the size: ask the upstream, download nothing. Its answer
            // links nothing: a HEAD proves no bytes, and the cache may later hold these
            // from another upstream.
            let size = target
                .upstream
                .head_blob(&target.repo, digest)
                .await
                .map_err(|e| self.note_unknown(target, digest, e, Wanted::Blob))?;
            return respond(size, range, Source::Miss, |_| None);
        }

        Stats::inc(&self.stats.blob_misses);
        let mut joined = self.join_fill(target, digest, client, true).await;
        if matches!(joined, Ok(Joined::ForeignFailed)) {
            joined = self.join_fill(target, digest, client, false).await;
        }
        let follower = match joined? {
            Joined::Follow(f) => f,
            Joined::Committed => {
                // Committed between our store lookup and the fill: the fill asked no
                // upstream, so this is a stored blob like any other, checked like one.
                let reader = self
                    .store
                    .open_blob(digest)
                    .await?
                    .ok_or_else(|| MirrorError::internal("committed blob vanished"))?;
                self.ensure_access(target, digest, Wanted::Blob).await?;
                return respond(reader.size(), range, Source::Hit, |r| {
                    Some(reader.stream(r).pinned(pin))
                });
            }
            Joined::Bypass(handoff) => return self.bypass(target, digest, range, &handoff).await,
            Joined::ForeignFailed => {
                return Err(MirrorError::internal(
                    "a fill of our own was led by another",
                ))
            }
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
        // The fill's own response came from the fill's target, which may not be ours.
        let download = match handoff.is_for(target).then(|| handoff.take()).flatten() {
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

    /// Join the fill for `digest`, or start it. With `foreign_ok`, a fill started for
    /// another (upstream, repository) is joined too, once this target may see the digest;
    /// if that fill fails, the answer is [`Joined::ForeignFailed`] and the caller asks
    /// again without `foreign_ok`, starting (or joining) a fill of its own target.
    async fn join_fill(
        &self,
        target: &Target,
        digest: &Digest,
        client: &ClientId,
        foreign_ok: bool,
    ) -> Result<Joined, MirrorError> {
        let (mut rx, foreign) = {
            let mut map = self.fills.lock();
            let entries = map.by_digest.get(digest);
            let own = entries.and_then(|v| v.iter().find(|e| e.is_for(target)));
            let other = entries
                .filter(|_| foreign_ok)
                .and_then(|v| v.first())
                .map(|e| (e.state.clone(), e.upstream.clone()));
            match (own, other) {
                (Some(e), _) => (e.state.clone(), None),
                (None, Some((state, upstream))) => (state, Some(upstream)),
                (None, None) => (self.start_fill(&mut map, target, digest, client)?, None),
            }
        };
        // A fill started for another repository proves nothing about this one.
        if let Some(fill_upstream) = &foreign {
            self.may_follow(target, digest, fill_upstream).await?;
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
            FillState::Failed(_) if foreign.is_some() => Ok(Joined::ForeignFailed),
            FillState::Failed(e) => {
                self.negative.note(target, digest, &e);
                Err(e)
            }
            FillState::Pending => Err(MirrorError::internal("fill still pending")),
        }
    }

    /// Register a fill of `digest` for `target` and spawn it, if `client` is under its cap.
    fn start_fill(
        &self,
        map: &mut FillMap,
        target: &Target,
        digest: &Digest,
        client: &ClientId,
    ) -> Result<watch::Receiver<FillState>, MirrorError> {
        let led = map.per_client.get(client).copied().unwrap_or(0);
        if led >= self.config.max_fills_per_client {
            Stats::inc(&self.stats.fills_refused);
            return Err(MirrorError::TooManyFills {
                limit: self.config.max_fills_per_client,
            });
        }
        *map.per_client.entry(client.clone()).or_insert(0) += 1;
        let id = map.next_id;
        map.next_id += 1;
        let (tx, rx) = watch::channel(FillState::Pending);
        map.by_digest
            .entry(digest.clone())
            .or_default()
            .push(FillEntry {
                id,
                state: rx.clone(),
                upstream: target.upstream_id().clone(),
                repo: target.repo.clone(),
            });
        let guard = FillGuard {
            fills: self.fills.clone(),
            digest: digest.clone(),
            id,
            client: client.clone(),
        };
        Stats::inc(&self.stats.fills_started);
        let job = FillJob {
            store: self.store.clone(),
            upstream: Arc::clone(&target.upstream),
            repo: target.repo.clone(),
            digest: digest.clone(),
            stats: Arc::clone(&self.stats),
        };
        self.tasks.spawn(job.run(tx, guard));
        Ok(rx)
    }
}

/// One fill: the upstream GET for a digest, into the store.
struct FillJob {
    store: Store,
    upstream: Arc<Upstream>,
    repo: RepoName,
    digest: Digest,
    stats: Arc<Stats>,
}

/// With no client left, a fill must still move at least this much per upstream read
/// timeout, or it is given up: a trickling upstream cannot hold a fill open for ever.
const UNATTENDED_MIN_BYTES: u64 = 64 * 1024;

impl FillJob {
    /// Runs in its own task: it completes and commits even when the client that started
    /// it has disconnected. `guard` takes the fill out of the map however this ends.
    async fn run(self, tx: watch::Sender<FillState>, guard: FillGuard) {
        let started = std::time::Instant::now();
        // Held to the end, so the blob cannot be evicted between its commit and its link
        // even when every client has gone.
        let pin = self.store.pin(&self.digest);
        let outcome = self.fill(&tx, &pin).await;
        drop(pin);
        self.stats.fill_durations.observe(started.elapsed());
        if let Err(e) = &outcome {
            Stats::inc(&self.stats.fills_failed);
            tracing::warn!(upstream = self.upstream.name(), repository = %self.repo, digest = %self.digest, error = %e, "fill failed");
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
        drop(guard);
    }

    async fn fill(&self, tx: &watch::Sender<FillState>, pin: &BlobPin) -> Result<(), MirrorError> {
        let (store, upstream, repo, digest) =
            (&self.store, &self.upstream, &self.repo, &self.digest);
        if store.stat(digest).await?.is_some() {
            // Linking here would let whoever asked see bytes no upstream vouched for to
            // them: the waiters check access as for any stored blob.
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
            match store.begin_fill(digest.clone(), download.size).await {
                Ok(ingest) => Some(ingest),
                Err(e) if e.is_disk_trouble() => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        let Some(mut ingest) = ingest else {
            let handoff = Handoff {
                download: Mutex::new(Some(download)),
                upstream: upstream.id().clone(),
                repo: repo.clone(),
            };
            let _ = tx.send(FillState::Bypass(Arc::new(handoff)));
            return Ok(());
        };
        let _ = tx.send(FillState::Started(ingest.follower()));

        let mut stream = download.stream;
        let window = upstream.read_timeout();
        let mut window_start = tokio::time::Instant::now();
        let mut window_bytes: u64 = 0;
        loop {
            let batch = match tokio::time::timeout(window, next_batch(&mut stream)).await {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                // A read timeout of its own: the upstream's client ends the body too; this
                // only makes the unattended check below run without a chunk.
                Err(_) => Ok(Vec::new()),
            };
            match batch {
                Ok(chunks) => {
                    // The upstream client ends a body that runs past `max_blob_size`.
                    let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                    window_bytes += len;
                    self.stats
                        .bytes_fetched
                        .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                    if !chunks.is_empty() {
                        ingest.write_batch(chunks).await?;
                    }
                }
                Err(e) => {
                    let e = MirrorError::from_upstream(e, Wanted::Blob);
                    ingest.abort(&e.to_string());
                    return Err(e);
                }
            }
            if window_start.elapsed() >= window {
                if pin.others() == 0 && window_bytes < UNATTENDED_MIN_BYTES {
                    let e = MirrorError::UpstreamUnavailable {
                        detail: "the upstream stalled and no client is waiting".into(),
                        timeout: true,
                    };
                    ingest.abort(&e.to_string());
                    return Err(e);
                }
                window_start = tokio::time::Instant::now();
                window_bytes = 0;
            }
        }
        // A size or digest mismatch maps to UpstreamBadContent (502); a disk error to Internal.
        let origin = Origin {
            upstream: upstream.id().clone(),
            repo: repo.clone(),
        };
        ingest
            .commit(Some(origin))
            .await
            .inspect_err(|e| crate::stats::note_bad_content(upstream, e))?;
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(map: &Fills, digest: &Digest, client: &ClientId) -> FillGuard {
        let mut m = map.lock();
        let id = m.next_id;
        m.next_id += 1;
        let (_tx, rx) = watch::channel(FillState::Pending);
        m.by_digest
            .entry(digest.clone())
            .or_default()
            .push(FillEntry {
                id,
                state: rx,
                upstream: UpstreamId::parse("docker.io").unwrap(),
                repo: RepoName::parse("library/x").unwrap(),
            });
        *m.per_client.entry(client.clone()).or_insert(0) += 1;
        FillGuard {
            fills: map.clone(),
            digest: digest.clone(),
            id,
            client: client.clone(),
        }
    }

    /// A fill task that panics (or is cancelled at shutdown) still leaves the map: its
    /// digest can be filled again, and its client's count goes back down.
    #[tokio::test]
    async fn a_fill_that_panics_leaves_no_entry_behind() {
        let fills = Fills::default();
        let digest = Digest::sha256_of(b"layer");
        let client = ClientId::Address(IpAddr::from([127, 0, 0, 1]));
        let kept = entry(&fills, &digest, &client);
        let guard = entry(&fills, &digest, &client);
        assert_eq!(fills.len(), 2);
        let task = tokio::spawn(async move {
            let _guard = guard;
            panic!("a bug in a fill");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(fills.len(), 1);
        assert_eq!(fills.lock().per_client.get(&client), Some(&1));

        // A cancelled one too, and the last one out removes the digest and the client.
        let never = tokio::spawn(async move {
            let _kept = kept;
            std::future::pending::<()>().await;
        });
        never.abort();
        assert!(never.await.unwrap_err().is_cancelled());
        assert_eq!(fills.len(), 0);
        let map = fills.lock();
        assert!(map.by_digest.is_empty() && map.per_client.is_empty());
    }
}
