use std::sync::atomic::{AtomicU64, Ordering};

/// Counters the mirror keeps about itself. Read by `/metrics` (a later issue) and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub manifest_hits: AtomicU64,
    pub manifest_misses: AtomicU64,
    pub stale_served: AtomicU64,
    pub blob_hits: AtomicU64,
    pub blob_misses: AtomicU64,
    pub fills_started: AtomicU64,
    pub fills_failed: AtomicU64,
    pub bytes_fetched: AtomicU64,
}

impl Stats {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
