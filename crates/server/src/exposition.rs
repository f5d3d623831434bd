//! `GET /metrics`: Prometheus' text format, written by hand from the server's own counters,
//! the mirror's report and the authenticator's. Every label value comes from a fixed set
//! (routes, methods, status codes, error kinds, configured upstream names), never from a
//! client's input or a secret, so series stay bounded and nothing leaks.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use http::Response;
use pullgate_mirror::{CacheReport, HistogramSnapshot, Stats};

use crate::app::App;
use crate::body::Body;
use crate::metrics::{Metrics, METHODS, STATUSES, STATUS_SLOTS};
use crate::respond::full_ok;
use crate::route::ROUTE_LABELS;

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
    let mut out = Out(String::with_capacity(16 * 1024));
    requests(&mut out, &app.metrics);
    mirror(&mut out, app);
    cache(&mut out, &app.mirror.cache_report());
    policy(&mut out, app);
    auth_and_server(&mut out, app);
    full_ok(out.0, "text/plain; version=0.0.4; charset=utf-8")
}

/// Trust policy decisions on manifests, by rule (its index in the file, or `unmatched`: a
/// fixed set) and outcome (allow, deny, warn). Every configured rule's series exist from
/// the start.
fn policy(out: &mut Out, app: &App) {
    // Without `[trust]` the families are declared with no series: dashboards and alerts
    // see the same names on every mirror.
    let labels = app.mirror.policy_rule_labels();
    let counts = app.mirror.policy_decisions();
    out.header(
        "pullgate_policy_decisions_total",
        "counter",
        "Trust policy decisions on manifests served, by rule index and outcome.",
    );
    for rule in &labels {
        for outcome in ["allow", "deny", "warn"] {
            let n = counts
                .iter()
                .find(|(r, o, _)| r == rule && *o == outcome)
                .map_or(0, |(_, _, n)| *n);
            out.value(
                "pullgate_policy_decisions_total",
                &[("rule", rule), ("outcome", outcome)],
                n,
            );
        }
    }
    out.single(
        "pullgate_policy_allowed_blobs",
        "gauge",
        "Blobs remembered as referenced by a manifest that passed the trust policy.",
        app.mirror.policy_allowed_blobs() as u64,
    );
}

/// Requests answered, by route, method and status, and how long they took.
fn requests(out: &mut Out, m: &Metrics) {
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
}

/// What the mirror served and fetched: hits, misses, bytes, fills, upstream failures.
fn mirror(out: &mut Out, app: &App) {
    let m = &app.metrics;
    let s = app.mirror.stats();
    let get = Stats::get;
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
    out.value(
        "pullgate_cache_hits_total",
        &[("kind", "referrers")],
        get(&s.referrers_hits),
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
    out.value(
        "pullgate_cache_misses_total",
        &[("kind", "referrers")],
        get(&s.referrers_misses),
    );
    out.single(
        "pullgate_stale_served_total",
        "counter",
        "Tags and referrers answers served stale because the upstream could not be asked.",
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
        "pullgate_prefetch_refreshed_total",
        "counter",
        "Images [[prefetch]] pulled through the mirror (cached, revalidated or filled).",
        get(&s.prefetch_refreshed),
    );
    out.single(
        "pullgate_prefetch_failed_total",
        "counter",
        "Prefetch pulls that failed, and tag patterns whose tags could not be listed.",
        get(&s.prefetch_failed),
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
    upstreams(out, app);
}

/// Each upstream's requests by kind, its slots, and the quota it announces.
fn upstreams(out: &mut Out, app: &App) {
    let reports = app.mirror.upstream_reports();
    out.header(
        "pullgate_upstream_requests_total",
        "counter",
        "HTTP requests sent to the upstream (its token realm and blob redirects included), by upstream and kind.",
    );
    for r in &reports {
        for (kind, n) in &r.requests {
            out.value(
                "pullgate_upstream_requests_total",
                &[("upstream", r.name), ("kind", kind)],
                n,
            );
        }
    }
    out.header(
        "pullgate_upstream_requests_in_flight",
        "gauge",
        "Requests holding one of the upstream's slots (a blob GET until its body ends).",
    );
    for r in &reports {
        out.value(
            "pullgate_upstream_requests_in_flight",
            &[("upstream", r.name)],
            r.in_flight,
        );
    }
    out.header(
        "pullgate_upstream_requests_queued",
        "gauge",
        "Requests waiting for one of the upstream's max_concurrent_requests slots.",
    );
    for r in &reports {
        out.value(
            "pullgate_upstream_requests_queued",
            &[("upstream", r.name)],
            r.queued,
        );
    }
    // Declared either way; a value only once the upstream sent its RateLimit-* headers.
    for (name, help, get) in [
        (
            "pullgate_upstream_ratelimit_limit",
            "The upstream's pull quota per window, from its last RateLimit-Limit header.",
            (|q| q.limit) as fn(&pullgate_mirror::QuotaSnapshot) -> Option<u64>,
        ),
        (
            "pullgate_upstream_ratelimit_remaining",
            "Pulls left in the upstream's current window, from its last RateLimit-Remaining header.",
            |q| q.remaining,
        ),
        (
            "pullgate_upstream_ratelimit_window_seconds",
            "The upstream's quota window in seconds (the w= of its RateLimit headers).",
            |q| q.window_seconds,
        ),
    ] {
        out.header(name, "gauge", help);
        for r in &reports {
            if let Some(v) = get(&r.quota) {
                out.value(name, &[("upstream", r.name)], v);
            }
        }
    }
}

/// The cache: its disk, its size and limits, evictions.
fn cache(out: &mut Out, r: &CacheReport) {
    out.single(
        "pullgate_cache_writable",
        "gauge",
        "1 while the cache disk takes writes; 0 after it refused one (full, read-only, failing) until a write succeeds.",
        u64::from(r.writable),
    );
    out.single(
        "pullgate_cache_write_errors_total",
        "counter",
        "Writes the cache disk refused (full, over quota, read-only, failing).",
        r.write_errors,
    );
    out.single(
        "pullgate_cache_bypassed_total",
        "counter",
        "Blobs and manifests served straight from the upstream, uncached, because the cache disk refused them.",
        r.bypassed,
    );

    let usage = r.usage;
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
    let limits = r.limits;
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
    let evictions = r.evictions;
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
}

/// Authentication, secrets, audit, TLS and connections.
fn auth_and_server(out: &mut Out, app: &App) {
    let m = &app.metrics;
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
}
