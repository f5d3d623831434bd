//! `GET /metrics`: Prometheus' text format, written by hand. Every label value comes from a
//! fixed set (routes, methods, status codes, error kinds, configured upstream names), never
//! from a client's input or a secret, so series stay bounded and nothing leaks.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, Response, StatusCode};
use pullgate_mirror::{Histogram, HistogramSnapshot, Stats};

use crate::body::Body;
use crate::handlers::{full_ok, App};
use crate::route::ROUTE_LABELS;

const METHODS: [&str; 3] = ["GET", "HEAD", "other"];

/// Status codes the server answers with; anything else is counted as "other".
const STATUSES: [u16; 15] = [
    200, 206, 301, 400, 401, 403, 404, 405, 416, 429, 500, 502, 503, 504, 505,
];
const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// Request durations are time to response headers: for a streamed blob, time to first byte.
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What the server counts itself; the mirror, auth and audit count the rest.
pub struct Metrics {
    /// By route × method × status, flattened.
    requests: Box<[AtomicU64]>,
    /// By route.
    durations: Vec<Histogram>,
    served_manifest_bytes: AtomicU64,
    pub(crate) served_blob_bytes: AtomicU64,
    tls_reloads_ok: AtomicU64,
    tls_reloads_failed: AtomicU64,
    over_address_limit: AtomicU64,
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
            served_blob_bytes: AtomicU64::new(0),
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

struct Out(String);

impl Out {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn value(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                // Values are fixed labels or configured host names: no quoting needed, but
                // escape anyway so a surprise can never break the format.
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.header(name, kind, help);
        self.value(name, &[], value);
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for (le, count) in &h.buckets {
            let le = le.to_string();
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.value(&bucket, &l, count);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.value(&bucket, &l, h.count);
        self.value(&format!("{name}_sum"), labels, h.sum_seconds);
        self.value(&format!("{name}_count"), labels, h.count);
    }
}

pub(crate) fn render(app: &App) -> Response<Body> {
    let m = &app.metrics;
    let s = app.mirror.stats();
    let get = Stats::get;
    let mut out = Out(String::with_capacity(16 * 1024));

    out.header(
        "pullgate_http_requests_total",
        "counter",
        "Requests answered, by route, method and status.",
    );
    for (r, route) in ROUTE_LABELS.iter().enumerate() {
        for (mi, method) in METHODS.iter().enumerate() {
            for si in 0..STATUS_SLOTS {
                let n = m.requests[(r * METHODS.len() + mi) * STATUS_SLOTS + si]
                    .load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let status = STATUSES
                    .get(si)
                    .map_or_else(|| "other".to_owned(), u16::to_string);
                out.value(
                    "pullgate_http_requests_total",
                    &[("route", route), ("method", method), ("status", &status)],
                    n,
                );
            }
        }
    }
    out.header(
        "pullgate_http_request_duration_seconds",
        "histogram",
        "Time to response headers (for a streamed blob, to its first byte), by route.",
    );
    for (route, h) in ROUTE_LABELS.iter().zip(&m.durations) {
        let snap = h.snapshot();
        if snap.count > 0 {
            out.histogram(
                "pullgate_http_request_duration_seconds",
                &[("route", route)],
                &snap,
            );
        }
    }

    out.header(
        "pullgate_cache_hits_total",
        "counter",
        "Requests served from the cache, by kind.",
    );
    out.value(
        "pullgate_cache_hits_total",
        &[("kind", "manifest")],
        get(&s.manifest_hits),
    );
    out.value(
        "pullgate_cache_hits_total",
        &[("kind", "blob")],
        get(&s.blob_hits),
    );
    out.header(
        "pullgate_cache_misses_total",
        "counter",
        "Requests that went upstream (blobs: joined or started a fill), by kind.",
    );
    out.value(
        "pullgate_cache_misses_total",
        &[("kind", "manifest")],
        get(&s.manifest_misses),
    );
    out.value(
        "pullgate_cache_misses_total",
        &[("kind", "blob")],
        get(&s.blob_misses),
    );
    out.single(
        "pullgate_stale_served_total",
        "counter",
        "Tags served stale because the upstream could not be asked.",
        get(&s.stale_served),
    );

    out.header(
        "pullgate_served_bytes_total",
        "counter",
        "Body bytes sent to clients, by kind.",
    );
    out.value(
        "pullgate_served_bytes_total",
        &[("kind", "manifest")],
        m.served_manifest_bytes.load(Ordering::Relaxed),
    );
    out.value(
        "pullgate_served_bytes_total",
        &[("kind", "blob")],
        m.served_blob_bytes.load(Ordering::Relaxed),
    );
    out.single(
        "pullgate_fetched_bytes_total",
        "counter",
        "Blob bytes received from upstreams.",
        get(&s.bytes_fetched),
    );

    out.header(
        "pullgate_fill_duration_seconds",
        "histogram",
        "Upstream blob downloads, start to commit or failure.",
    );
    out.histogram(
        "pullgate_fill_duration_seconds",
        &[],
        &s.fill_durations.snapshot(),
    );
    out.single(
        "pullgate_fills_started_total",
        "counter",
        "Upstream blob downloads started.",
        get(&s.fills_started),
    );
    out.single(
        "pullgate_fills_failed_total",
        "counter",
        "Upstream blob downloads that failed or did not verify.",
        get(&s.fills_failed),
    );
    out.single(
        "pullgate_fills_refused_total",
        "counter",
        "Blob downloads refused because the client already had max_fills_per_client under way.",
        get(&s.fills_refused),
    );
    out.single(
        "pullgate_negative_cache_hits_total",
        "counter",
        "Requests for a digest the upstream recently called unknown, answered without asking it again.",
        get(&s.negative_hits),
    );
    out.single(
        "pullgate_possession_proofs_total",
        "counter",
        "Cached digests another upstream proved it holds by serving bytes that hash to them.",
        get(&s.possession_proofs),
    );
    out.single(
        "pullgate_fills_in_flight",
        "gauge",
        "Upstream blob downloads under way.",
        app.mirror.fills_in_flight() as u64,
    );

    out.header(
        "pullgate_upstream_errors_total",
        "counter",
        "Failed upstream calls (after retries) and rejected upstream content, by upstream and kind.",
    );
    for (upstream, kind, n) in app.mirror.upstream_errors() {
        out.value(
            "pullgate_upstream_errors_total",
            &[("upstream", upstream), ("kind", kind)],
            n,
        );
    }

    let disk = app.mirror.cache_disk();
    out.single(
        "pullgate_cache_writable",
        "gauge",
        "1 while the cache disk takes writes; 0 after it refused one (full, read-only, failing) until a write succeeds.",
        u64::from(disk.writable()),
    );
    out.single(
        "pullgate_cache_write_errors_total",
        "counter",
        "Writes the cache disk refused (full, over quota, read-only, failing).",
        disk.write_errors(),
    );
    out.single(
        "pullgate_cache_bypassed_total",
        "counter",
        "Blobs and manifests served straight from the upstream, uncached, because the cache disk refused them.",
        disk.bypassed(),
    );

    let usage = app.mirror.cache_usage();
    out.single(
        "pullgate_cache_size_bytes",
        "gauge",
        "Bytes of committed blobs in the cache.",
        usage.bytes,
    );
    out.single(
        "pullgate_cache_blobs",
        "gauge",
        "Committed blobs (layers, configs, manifests) in the cache.",
        usage.blobs,
    );
    // The families are declared either way, so dashboards and alerts see the same set;
    // an unbounded cache has no value for them.
    let limits = app.mirror.cache_limits();
    for (name, help, value) in [
        (
            "pullgate_cache_max_size_bytes",
            "The cache's configured maximum size (cache.max_size); absent when unbounded.",
            limits.map(|l| l.max_bytes()),
        ),
        (
            "pullgate_cache_high_watermark_bytes",
            "Usage above which least recently used blobs are evicted.",
            limits.map(|l| l.high_bytes()),
        ),
        (
            "pullgate_cache_low_watermark_bytes",
            "Usage eviction brings the cache down to.",
            limits.map(|l| l.low_bytes()),
        ),
    ] {
        out.header(name, "gauge", help);
        if let Some(v) = value {
            out.value(name, &[], v);
        }
    }
    let evictions = app.mirror.cache_evictions();
    out.single(
        "pullgate_cache_evictions_total",
        "counter",
        "Blobs evicted from the cache to keep it under its size limit.",
        evictions.blobs,
    );
    out.single(
        "pullgate_cache_evicted_bytes_total",
        "counter",
        "Bytes of blobs evicted from the cache.",
        evictions.bytes,
    );

    out.single(
        "pullgate_auth_failures_total",
        "counter",
        "Requests with credentials that did not check out.",
        app.auth.failures(),
    );
    out.single(
        "pullgate_secret_reload_failures_total",
        "counter",
        "Client secret reloads that failed (the last good set was kept).",
        app.auth.reload_failures(),
    );
    out.single(
        "pullgate_secret_entries_skipped_total",
        "counter",
        "Unusable client secret entries left out of the versions loaded (the rest applied).",
        app.auth.skipped_secret_entries(),
    );
    out.single(
        "pullgate_audit_lines_dropped_total",
        "counter",
        "Audit lines lost because the writer fell behind.",
        app.audit.dropped(),
    );
    out.header(
        "pullgate_tls_reloads_total",
        "counter",
        "Certificate reloads after the mounted files changed, by result.",
    );
    out.value(
        "pullgate_tls_reloads_total",
        &[("result", "ok")],
        m.tls_reloads_ok.load(Ordering::Relaxed),
    );
    out.value(
        "pullgate_tls_reloads_total",
        &[("result", "failed")],
        m.tls_reloads_failed.load(Ordering::Relaxed),
    );
    out.single(
        "pullgate_connections_over_address_limit_total",
        "counter",
        "Connections closed at accept because their client address already held server.max_connections_per_address.",
        m.over_address_limit.load(Ordering::Relaxed),
    );
    full_ok(out.0, "text/plain; version=0.0.4; charset=utf-8")
}
