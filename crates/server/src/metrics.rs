//! What the server counts itself: requests by route, method and status, their durations,
//! bytes served, certificate reloads, connections refused per address. Lock-free
//! counters; `exposition.rs` writes them out with everything else `/metrics` shows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use pullgate_mirror::Histogram;

use crate::route::ROUTE_LABELS;

pub(crate) const METHODS: [&str; 3] = ["GET", "HEAD", "other"];

/// Status codes the server answers with; anything else is counted as "other".
pub(crate) const STATUSES: [u16; 15] = [
    200, 206, 301, 400, 401, 403, 404, 405, 416, 429, 500, 502, 503, 504, 505,
];
pub(crate) const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// Request durations are time to response headers: for a streamed blob, time to first byte.
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What the server counts itself; the mirror, auth and audit count the rest.
pub struct Metrics {
    /// By route × method × status, flattened.
    pub(crate) requests: Box<[AtomicU64]>,
    /// By route.
    pub(crate) durations: Vec<Histogram>,
    pub(crate) served_manifest_bytes: AtomicU64,
    /// Shared with every blob [`crate::Body`] being sent.
    pub(crate) served_blob_bytes: Arc<AtomicU64>,
    pub(crate) tls_reloads_ok: AtomicU64,
    pub(crate) tls_reloads_failed: AtomicU64,
    pub(crate) over_address_limit: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: (0..ROUTE_LABELS.len() * METHODS.len() * STATUS_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            durations: ROUTE_LABELS
                .iter()
                .map(|_| Histogram::new(REQUEST_BUCKETS))
                .collect(),
            served_manifest_bytes: AtomicU64::new(0),
            served_blob_bytes: Arc::new(AtomicU64::new(0)),
            tls_reloads_ok: AtomicU64::new(0),
            tls_reloads_failed: AtomicU64::new(0),
            over_address_limit: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub(crate) fn request(
        &self,
        route: &'static str,
        method: &Method,
        status: StatusCode,
        took: Duration,
    ) {
        let r = ROUTE_LABELS
            .iter()
            .position(|l| *l == route)
            .unwrap_or(ROUTE_LABELS.len() - 1);
        let m = match *method {
            Method::GET => 0,
            Method::HEAD => 1,
            _ => 2,
        };
        let s = STATUSES
            .iter()
            .position(|c| *c == status.as_u16())
            .unwrap_or(STATUSES.len());
        self.requests[(r * METHODS.len() + m) * STATUS_SLOTS + s].fetch_add(1, Ordering::Relaxed);
        self.durations[r].observe(took);
    }

    /// The counter a blob body adds its bytes to as they go out.
    pub fn blob_bytes(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.served_blob_bytes)
    }

    pub(crate) fn manifest_served(&self, bytes: u64) {
        self.served_manifest_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn connection_over_address_limit(&self) {
        self.over_address_limit.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tls_reloaded(&self, ok: bool) {
        let c = if ok {
            &self.tls_reloads_ok
        } else {
            &self.tls_reloads_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}
