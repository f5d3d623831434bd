//! What the mirror asks of one upstream, and what the upstream says it may ask: requests
//! counted by kind ([`RequestKind`]), the upstream's `RateLimit-*` headers ([`Quota`]), the
//! cap on requests in flight with its queue ([`Slots`]), and the bandwidth cap on blob
//! bodies ([`Bandwidth`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::HeaderMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Cause, UpstreamError};

/// What a request to the upstream is for: a fixed set, for the requests metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    ManifestHead,
    ManifestGet,
    BlobHead,
    BlobGet,
    Tags,
    Referrers,
    /// The bearer-token handshake (to the upstream's token realm).
    Token,
}

impl RequestKind {
    pub const ALL: [RequestKind; 7] = [
        RequestKind::ManifestHead,
        RequestKind::ManifestGet,
        RequestKind::BlobHead,
        RequestKind::BlobGet,
        RequestKind::Tags,
        RequestKind::Referrers,
        RequestKind::Token,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::ManifestHead => "manifest_head",
            RequestKind::ManifestGet => "manifest_get",
            RequestKind::BlobHead => "blob_head",
            RequestKind::BlobGet => "blob_get",
            RequestKind::Tags => "tags",
            RequestKind::Referrers => "referrers",
            RequestKind::Token => "token",
        }
    }
}

/// HTTP requests sent, by kind: every attempt, a retry, a request answered 401 and a
/// redirect hop included, since each is a request the upstream (or its CDN) sees.
#[derive(Debug, Default)]
pub struct RequestCounts([AtomicU64; RequestKind::ALL.len()]);

impl RequestCounts {
    pub(crate) fn record(&self, kind: RequestKind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every kind with its count, zeros included.
    pub fn snapshot(&self) -> impl Iterator<Item = (RequestKind, u64)> + '_ {
        RequestKind::ALL
            .iter()
            .map(|&k| (k, self.0[k as usize].load(Ordering::Relaxed)))
    }
}

/// One quota policy as `RateLimit-Limit` / `RateLimit-Remaining` write it: a count,
/// optionally with the window in seconds (`100;w=21600`, Docker Hub's form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) count: u64,
    pub(crate) window: Option<u64>,
}

/// Longest `RateLimit-*` value read; Docker Hub's are under 20 bytes.
const MAX_RATELIMIT_LEN: usize = 256;

/// The first policy of a `RateLimit-Limit` or `RateLimit-Remaining` value: `100`,
/// `100;w=21600`, or a list (`100;w=21600, 1000;w=86400`) of which the first is taken.
pub(crate) fn parse_policy(value: &str) -> Option<Policy> {
    if value.len() > MAX_RATELIMIT_LEN {
        return None;
    }
    let first = value.split(',').next()?.trim();
    let mut parts = first.split(';');
    let count = parts.next()?.trim().parse().ok()?;
    let window = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("w"))
            .then(|| v.trim().trim_matches('"').parse().ok())
            .flatten()
    });
    Some(Policy { count, window })
}

/// Not yet seen: the gauges then have no value.
const UNKNOWN: u64 = u64::MAX;

/// The upstream's pull quota as its last response told it (Docker Hub sends `RateLimit-*`
/// on manifest GETs and HEADs), and the warning when little is left.
#[derive(Debug)]
pub struct Quota {
    limit: AtomicU64,
    remaining: AtomicU64,
    window: AtomicU64,
    /// Warn when `remaining` falls below this; 0: never.
    warn_below: u64,
    /// Below the threshold now: the warning is logged once per crossing.
    below: AtomicBool,
    /// `docker-ratelimit-source` was logged (once, at debug: it is an address).
    source_logged: AtomicBool,
}

/// The quota as `/metrics` shows it; `None` until the upstream sent the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaSnapshot {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub window_seconds: Option<u64>,
}

impl Quota {
    pub(crate) fn new(warn_below: u64) -> Quota {
        Quota {
            limit: AtomicU64::new(UNKNOWN),
            remaining: AtomicU64::new(UNKNOWN),
            window: AtomicU64::new(UNKNOWN),
            warn_below,
            below: AtomicBool::new(false),
            source_logged: AtomicBool::new(false),
        }
    }

    pub fn snapshot(&self) -> QuotaSnapshot {
        let get = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|v| *v != UNKNOWN);
        QuotaSnapshot {
            limit: get(&self.limit),
            remaining: get(&self.remaining),
            window_seconds: get(&self.window),
        }
    }

    /// Read the quota headers of a response from the upstream's origin, if it sent them.
    pub(crate) fn observe(&self, upstream: &str, headers: &HeaderMap) {
        let policy = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_policy)
        };
        let limit = policy("ratelimit-limit");
        let remaining = policy("ratelimit-remaining");
        if limit.is_none() && remaining.is_none() {
            return;
        }
        if let Some(l) = limit {
            self.limit
                .store(l.count.min(UNKNOWN - 1), Ordering::Relaxed);
        }
        if let Some(w) = limit
            .and_then(|l| l.window)
            .or(remaining.and_then(|r| r.window))
        {
            self.window.store(w.min(UNKNOWN - 1), Ordering::Relaxed);
        }
        if headers.contains_key("docker-ratelimit-source")
            && !self.source_logged.swap(true, Ordering::Relaxed)
        {
            // The address the upstream counts our pulls against: never a label, logged once.
            let source = headers
                .get("docker-ratelimit-source")
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 64)
                .unwrap_or("?");
            tracing::debug!(
                upstream,
                source,
                "the upstream counts our pulls against this source"
            );
        }
        let Some(r) = remaining else { return };
        self.remaining
            .store(r.count.min(UNKNOWN - 1), Ordering::Relaxed);
        let below = r.count < self.warn_below;
        if below != self.below.swap(below, Ordering::Relaxed) {
            let limit = limit.map(|l| l.count);
            if below {
                tracing::warn!(
                    upstream,
                    remaining = r.count,
                    limit,
                    window_seconds = self.snapshot().window_seconds,
                    warn_below = self.warn_below,
                    "the upstream's pull quota is running out"
                );
            } else {
                tracing::info!(
                    upstream,
                    remaining = r.count,
                    limit,
                    "the upstream's pull quota is above the warning threshold again"
                );
            }
        }
    }
}

/// The cap on requests in flight to one upstream (`max_concurrent_requests`), and the
/// gauges of what is in flight and what waits for a slot.
#[derive(Debug)]
pub(crate) struct Slots {
    semaphore: Option<Arc<Semaphore>>,
    /// The cap, for messages.
    cap: usize,
    /// Longest wait for a slot: the upstream's connect plus read timeout, the most a
    /// request would wait on the upstream itself.
    max_wait: Duration,
    in_flight: Arc<AtomicUsize>,
    queued: AtomicUsize,
}

/// A request's slot: held until its response is read, or its body stream is done or
/// dropped. Counted in flight while it lives.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decrements the queue gauge however the wait ends (a slot, a timeout, a client gone).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Most requests in flight at once that a cap may name (tokio's semaphore allows more;
/// no upstream wants more).
pub const MAX_CONCURRENT_REQUESTS: usize = 100_000;

impl Slots {
    pub(crate) fn new(max: Option<usize>, max_wait: Duration) -> Slots {
        let cap = max.map_or(0, |n| n.clamp(1, MAX_CONCURRENT_REQUESTS));
        Slots {
            semaphore: max.map(|_| Arc::new(Semaphore::new(cap))),
            cap,
            max_wait,
            in_flight: Arc::default(),
            queued: AtomicUsize::new(0),
        }
    }

    /// A slot, at once when the upstream has no cap or a free slot, else after a wait in
    /// the queue (first come, first served) of at most `max_wait`.
    pub(crate) async fn acquire(&self) -> Result<Slot, UpstreamError> {
        let permit = match &self.semaphore {
            None => None,
            Some(s) => match Arc::clone(s).try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    self.queued.fetch_add(1, Ordering::Relaxed);
                    let _waiting = Waiting(&self.queued);
                    match tokio::time::timeout(self.max_wait, Arc::clone(s).acquire_owned()).await {
                        Ok(Ok(p)) => Some(p),
                        // The semaphore is never closed; treat it as a full queue anyway.
                        Ok(Err(_)) | Err(_) => {
                            return Err(UpstreamError::unavailable(
                                Cause::Queue,
                                format!(
                                    "waited {:?} for one of the upstream's {} request slots",
                                    self.max_wait, self.cap
                                ),
                            ))
                        }
                    }
                }
            },
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            _permit: permit,
            in_flight: Arc::clone(&self.in_flight),
        })
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// A token bucket shared by every blob body of one upstream (`max_bandwidth`): each chunk
/// is let through when the bytes before it have had their time at the configured rate.
/// A tenth of a second's worth may pass at once, so reads stay large without bursting.
#[derive(Debug)]
pub(crate) struct Bandwidth {
    bytes_per_second: u64,
    /// When the bytes admitted so far will have passed at the rate (the bucket's debt).
    next: Mutex<Option<Instant>>,
}

const BURST: Duration = Duration::from_millis(100);

impl Bandwidth {
    pub(crate) fn new(bytes_per_second: u64) -> Arc<Bandwidth> {
        Arc::new(Bandwidth {
            bytes_per_second: bytes_per_second.max(1),
            next: Mutex::new(None),
        })
    }

    /// How long to hold a chunk of `len` bytes before passing it on.
    fn reserve(&self, len: usize, now: Instant) -> Duration {
        let cost = Duration::from_secs_f64(len as f64 / self.bytes_per_second as f64);
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let start = next.filter(|n| *n > now).unwrap_or(now);
        let done = start + cost;
        *next = Some(done);
        done.saturating_duration_since(now + BURST)
    }

    /// Wait until `len` more bytes may pass.
    pub(crate) async fn take(&self, len: usize) {
        let wait = self.reserve(len, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        type Want = Option<(u64, Option<u64>)>;
        let cases: &[(&str, Want)] = &[
            ("100;w=21600", Some((100, Some(21600)))),
            ("76;w=21600", Some((76, Some(21600)))),
            (" 100 ", Some((100, None))),
            ("100, 1000;w=86400", Some((100, None))),
            ("5000;w=3600, 100;w=60", Some((5000, Some(3600)))),
            ("10;W=\"60\";comment=\"x\"", Some((10, Some(60)))),
            ("10;w=soon", Some((10, None))),
            ("", None),
            ("many", None),
            ("-1;w=1", None),
        ];
        for (value, want) in cases {
            let got = parse_policy(value).map(|p| (p.count, p.window));
            assert_eq!(got, *want, "{value:?}");
        }
        assert_eq!(parse_policy(&"1".repeat(300)), None);
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn quota_follows_the_headers_and_crossings() {
        let q = Quota::new(10);
        assert_eq!(q.snapshot(), QuotaSnapshot::default());
        q.observe("hub", &headers(&[("content-type", "x")]));
        assert_eq!(q.snapshot(), QuotaSnapshot::default());
        q.observe(
            "hub",
            &headers(&[
                ("ratelimit-limit", "100;w=21600"),
                ("ratelimit-remaining", "76;w=21600"),
                ("docker-ratelimit-source", "192.0.2.1"),
            ]),
        );
        let want = QuotaSnapshot {
            limit: Some(100),
            remaining: Some(76),
            window_seconds: Some(21600),
        };
        assert_eq!(q.snapshot(), want);
        assert!(!q.below.load(Ordering::Relaxed));
        q.observe("hub", &headers(&[("ratelimit-remaining", "9;w=21600")]));
        assert!(q.below.load(Ordering::Relaxed));
        assert_eq!(q.snapshot().remaining, Some(9));
        assert_eq!(q.snapshot().limit, Some(100), "kept from before");
        q.observe("hub", &headers(&[("ratelimit-remaining", "50")]));
        assert!(!q.below.load(Ordering::Relaxed));
        // 0 never warns.
        let off = Quota::new(0);
        off.observe("hub", &headers(&[("ratelimit-remaining", "0")]));
        assert!(!off.below.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn slots_cap_queue_and_time_out() {
        let slots = Arc::new(Slots::new(Some(2), Duration::from_millis(200)));
        let a = slots.acquire().await.unwrap();
        let _b = slots.acquire().await.unwrap();
        assert_eq!((slots.in_flight(), slots.queued()), (2, 0));
        let s = Arc::clone(&slots);
        let waiter = tokio::spawn(async move { s.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(slots.queued(), 1);
        drop(a);
        waiter.await.unwrap().unwrap();
        assert_eq!(slots.queued(), 0);
        // Full, nobody lets go: the wait ends with a queue timeout.
        let _c = slots.acquire().await.unwrap();
        let e = slots.acquire().await.unwrap_err();
        assert!(
            matches!(
                e,
                UpstreamError::Unavailable {
                    cause: Cause::Queue,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("2 request slots"), "{e}");
        assert_eq!(slots.queued(), 0);
        // Without a cap nothing waits, and in-flight is still counted.
        let free = Slots::new(None, Duration::ZERO);
        let held: Vec<_> = futures_util::future::join_all((0..50).map(|_| free.acquire())).await;
        assert_eq!(free.in_flight(), 50);
        drop(held);
        assert_eq!(free.in_flight(), 0);
    }

    #[test]
    fn bandwidth_spaces_chunks_at_the_rate() {
        let b = Bandwidth::new(1_000_000);
        let t0 = Instant::now();
        // The first 100 ms worth pass at once; after that each 100 kB waits 100 ms more.
        assert_eq!(b.reserve(100_000, t0), Duration::ZERO);
        let w = b.reserve(100_000, t0);
        assert_eq!(w, Duration::from_millis(100));
        let w = b.reserve(200_000, t0);
        assert_eq!(w, Duration::from_millis(300));
        // Idle time is not saved up beyond the burst.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.reserve(100_000, later), Duration::ZERO);
        assert_eq!(b.reserve(100_000, later), Duration::from_millis(100));
    }
}
