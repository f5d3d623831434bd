use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pullgate_store::StoreError;
use pullgate_upstream::{ErrorKind, Upstream};

/// Counters the mirror keeps about itself, read by `/metrics` and tests.
#[derive(Debug)]
pub struct Stats {
    pub manifest_hits: AtomicU64,
    pub manifest_misses: AtomicU64,
    /// Tags and referrers answers served stale.
    pub stale_served: AtomicU64,
    /// Referrers answers served from the index while fresh.
    pub referrers_hits: AtomicU64,
    /// Referrers answers asked of the upstream (or synthesized from its fallback tag).
    pub referrers_misses: AtomicU64,
    pub blob_hits: AtomicU64,
    pub blob_misses: AtomicU64,
    pub fills_started: AtomicU64,
    pub fills_failed: AtomicU64,
    /// Fills refused because their client already had `max_fills_per_client` under way.
    pub fills_refused: AtomicU64,
    /// Requests answered "unknown" from the negative cache, without asking the upstream.
    pub negative_hits: AtomicU64,
    /// Stored digests another upstream had to prove it holds (a GET hashed to the digest).
    pub possession_proofs: AtomicU64,
    pub bytes_fetched: AtomicU64,
    /// Images `[[prefetch]]` pulled through the mirror (cached, revalidated or filled).
    pub prefetch_refreshed: AtomicU64,
    /// Prefetch pulls that failed, and patterns whose tags could not be listed.
    pub prefetch_failed: AtomicU64,
    /// How long blob fills take, from the decision to fetch to commit or failure.
    pub fill_durations: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            manifest_hits: AtomicU64::new(0),
            manifest_misses: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
            referrers_hits: AtomicU64::new(0),
            referrers_misses: AtomicU64::new(0),
            blob_hits: AtomicU64::new(0),
            blob_misses: AtomicU64::new(0),
            fills_started: AtomicU64::new(0),
            fills_failed: AtomicU64::new(0),
            fills_refused: AtomicU64::new(0),
            negative_hits: AtomicU64::new(0),
            possession_proofs: AtomicU64::new(0),
            bytes_fetched: AtomicU64::new(0),
            prefetch_refreshed: AtomicU64::new(0),
            prefetch_failed: AtomicU64::new(0),
            fill_durations: Histogram::new(FILL_BUCKETS),
        }
    }
}

/// Seconds: a small layer on a fast upstream takes tens of milliseconds, a large one
/// minutes.
const FILL_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

impl Stats {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Content the store refused is the upstream's failure: count it against the upstream.
pub(crate) fn note_bad_content(upstream: &Upstream, e: &StoreError) {
    let kind = match e {
        StoreError::DigestMismatch { .. } => ErrorKind::DigestMismatch,
        StoreError::SizeMismatch { expected, actual } if actual < expected => ErrorKind::Truncated,
        StoreError::SizeMismatch { .. } | StoreError::TooLarge { .. } => ErrorKind::Invalid,
        _ => return,
    };
    upstream.errors().record(kind);
}

/// A Prometheus histogram over durations: fixed bucket bounds, lock-free observation.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then one for +Inf; not cumulative (each observation counts once).
    counts: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

/// A histogram read at one moment, cumulative as Prometheus wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations at or below it)`, ascending.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    /// `bounds`: ascending upper bounds in seconds.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < secs);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            total += count.load(Ordering::Relaxed);
            buckets.push((*bound, total));
        }
        total += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count: total,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::new(&[0.1, 1.0]);
        for ms in [50, 100, 500, 1000, 5000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.1, 2), (1.0, 4)]);
        assert_eq!(s.count, 5);
        assert!((s.sum_seconds - 6.65).abs() < 1e-9);
    }
}
