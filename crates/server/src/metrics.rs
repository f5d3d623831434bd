//! `GET /metrics`: the counters in Prometheus' text format. Hand-written: a dozen lines of
//! `# TYPE` and values do not need a metrics framework. Labels never carry user input or
//! secrets.

use std::fmt::Write;

use http::Response;
use pullgate_mirror::Stats;

use crate::body::Body;
use crate::handlers::{full_ok, App};

pub(crate) fn render(app: &App) -> Response<Body> {
    let s = app.mirror.stats();
    let get = Stats::get;
    let metrics: [(&str, &str, &str, u64); 12] = [
        (
            "pullgate_manifest_hits_total",
            "counter",
            "Manifests served from the cache.",
            get(&s.manifest_hits),
        ),
        (
            "pullgate_manifest_misses_total",
            "counter",
            "Manifests fetched from an upstream.",
            get(&s.manifest_misses),
        ),
        (
            "pullgate_stale_served_total",
            "counter",
            "Tags served stale because the upstream could not be asked.",
            get(&s.stale_served),
        ),
        (
            "pullgate_blob_hits_total",
            "counter",
            "Blobs served from the cache.",
            get(&s.blob_hits),
        ),
        (
            "pullgate_blob_misses_total",
            "counter",
            "Blob requests that joined or started a fill.",
            get(&s.blob_misses),
        ),
        (
            "pullgate_fills_started_total",
            "counter",
            "Upstream blob downloads started.",
            get(&s.fills_started),
        ),
        (
            "pullgate_fills_failed_total",
            "counter",
            "Upstream blob downloads that failed or did not verify.",
            get(&s.fills_failed),
        ),
        (
            "pullgate_upstream_bytes_fetched_total",
            "counter",
            "Blob bytes received from upstreams.",
            get(&s.bytes_fetched),
        ),
        (
            "pullgate_fills_in_flight",
            "gauge",
            "Upstream blob downloads under way.",
            app.mirror.fills_in_flight() as u64,
        ),
        (
            "pullgate_auth_failures_total",
            "counter",
            "Requests with credentials that did not check out.",
            app.auth.failures(),
        ),
        (
            "pullgate_secret_reload_failures_total",
            "counter",
            "Client secret reloads that failed (the last good set was kept).",
            app.auth.reload_failures(),
        ),
        (
            "pullgate_audit_lines_dropped_total",
            "counter",
            "Audit lines lost because the writer fell behind.",
            app.audit.dropped(),
        ),
    ];
    let mut out = String::with_capacity(2048);
    for (name, kind, help, value) in metrics {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    full_ok(out, "text/plain; version=0.0.4; charset=utf-8")
}
