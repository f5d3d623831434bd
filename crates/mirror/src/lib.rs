//! The pull-through core of pullgate: given a request already parsed and authorized,
//! answer it from the cache or from the right upstream, caching what passes through.
//!
//! What it does: picks the upstream ([`Mirror::route`]: `?ns=`, path prefix, default),
//! keeps tags fresh (served from the index for `tag_ttl`, then revalidated with a cheap
//! `HEAD`, served stale when the upstream is down), makes exactly one upstream request per
//! missing digest however many clients ask (fills), and checks that a repository may see a
//! cached digest before serving it under that repository's name.
//!
//! What it is not: no HTTP server types (that is `pullgate-server`), no HTTP client (that is
//! `pullgate-upstream`), no file layout (that is `pullgate-store`).
//!
//! Main types: [`Mirror`], [`Target`], [`ManifestResponse`], [`BlobResponse`],
//! [`MirrorError`], [`Stats`].

mod blobs;
mod error;
mod manifests;
mod route;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use pullgate_oci::{Digest, RepoName};
use pullgate_store::{Store, TagKey};
use pullgate_upstream::Upstream;

pub use blobs::BlobResponse;
pub use error::MirrorError;
pub use manifests::ManifestResponse;
pub use pullgate_store::BlobStream;
pub use route::Target;
pub use stats::{Histogram, HistogramSnapshot, Stats};

use error::Wanted;
use pullgate_flights::Flights;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Served from the cache (for tags: fresh, or revalidated unchanged).
    Hit,
    /// Fetched from the upstream.
    Miss,
    /// The upstream could not be asked; the last cached copy of a tag was served.
    Stale,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Hit => "hit",
            Source::Miss => "miss",
            Source::Stale => "stale",
        }
    }
}

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// How long a tag is served from the index before it is revalidated upstream.
    pub tag_ttl: Duration,
}

/// An upstream answer passed through as-is (tags list, referrers).
#[derive(Debug, Clone)]
pub struct PassthroughResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub link: Option<String>,
    /// `OCI-Filters-Applied`, as the upstream sent it.
    pub filters_applied: Option<String>,
    pub body: bytes::Bytes,
}

pub struct Mirror {
    upstreams: Vec<Arc<Upstream>>,
    store: Store,
    config: MirrorConfig,
    stats: Arc<Stats>,
    manifest_flights: Flights<(String, RepoName, Digest), Result<manifests::Stored, MirrorError>>,
    tag_flights: Flights<TagKey, Result<(manifests::Stored, Source), MirrorError>>,
    fills: blobs::Fills,
}

impl Mirror {
    /// `upstreams[0]` is the default upstream.
    pub fn new(upstreams: Vec<Upstream>, store: Store, config: MirrorConfig) -> Self {
        Mirror {
            upstreams: upstreams.into_iter().map(Arc::new).collect(),
            store,
            config,
            stats: Arc::new(Stats::default()),
            manifest_flights: Flights::new(),
            tag_flights: Flights::new(),
            fills: blobs::Fills::default(),
        }
    }

    /// Resolve the upstream for a request: containerd's `ns` query, a host-like first path
    /// component naming a configured upstream, or the default upstream.
    pub fn route(&self, ns: Option<&str>, name: &RepoName) -> Result<Target, MirrorError> {
        route::route(&self.upstreams, ns, name)
    }

    /// The configured upstreams' names, the default first.
    pub fn upstream_names(&self) -> impl Iterator<Item = &str> {
        self.upstreams.iter().map(|u| u.name())
    }

    /// Each upstream's name with its failure counts by kind (`kind` labels are fixed).
    pub fn upstream_errors(&self) -> Vec<(&str, &'static str, u64)> {
        self.upstreams
            .iter()
            .flat_map(|u| {
                u.errors()
                    .snapshot()
                    .map(move |(kind, n)| (u.name(), kind.as_str(), n))
            })
            .collect()
    }

    /// What the cache holds now.
    pub fn cache_usage(&self) -> pullgate_store::Usage {
        self.store.usage()
    }

    /// Whether the cache disk takes writes, and what was served uncached because it did not.
    pub fn cache_disk(&self) -> &pullgate_store::DiskHealth {
        self.store.disk()
    }

    /// The cache's size limit, if it has one.
    pub fn cache_limits(&self) -> Option<pullgate_store::Limits> {
        self.store.limits()
    }

    /// Blobs evicted from the cache since start.
    pub fn cache_evictions(&self) -> pullgate_store::Evictions {
        self.store.evictions()
    }

    /// Readiness: can the cache take a new blob? Err says why not.
    pub async fn check_cache_writable(&self) -> Result<(), MirrorError> {
        Ok(self.store.check_writable().await?)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Fills under way now.
    pub fn fills_in_flight(&self) -> usize {
        self.fills.len()
    }

    /// `GET /v2/<name>/tags/list`, passed to the upstream (tags are the upstream's truth).
    pub async fn tags_list(
        &self,
        target: &Target,
        query: &str,
    ) -> Result<PassthroughResponse, MirrorError> {
        let suffix = with_query("tags/list", query);
        self.passthrough(target, &suffix, None, Wanted::Repository)
            .await
    }

    /// `GET /v2/<name>/referrers/<digest>`, passed to the upstream.
    pub async fn referrers(
        &self,
        target: &Target,
        digest: &Digest,
        query: &str,
    ) -> Result<PassthroughResponse, MirrorError> {
        let suffix = with_query(&format!("referrers/{digest}"), query);
        self.passthrough(
            target,
            &suffix,
            Some(pullgate_oci::media_types::OCI_INDEX),
            Wanted::Manifest,
        )
        .await
    }

    async fn passthrough(
        &self,
        target: &Target,
        suffix: &str,
        accept: Option<&str>,
        wanted: Wanted,
    ) -> Result<PassthroughResponse, MirrorError> {
        let p = target
            .upstream
            .get_passthrough(&target.repo, suffix, accept)
            .await
            .map_err(|e| MirrorError::from_upstream(e, wanted))?;
        // The upstream's Link names its own repository path; point it back at the name the
        // client used, so the next page goes through the same route.
        let link = p.link.map(|l| {
            l.replace(
                &format!("/v2/{}/", target.repo),
                &format!("/v2/{}/", target.client_name),
            )
        });
        Ok(PassthroughResponse {
            status: p.status,
            content_type: p.content_type,
            link,
            filters_applied: p.filters_applied,
            body: p.body,
        })
    }

    /// May this target's repository see `digest`? Yes if the index links them, or if the
    /// upstream confirms it (a HEAD with this repository's scope), which is then recorded.
    /// A private image's layers therefore never leak through another repository's name.
    async fn ensure_access(
        &self,
        target: &Target,
        digest: &Digest,
        wanted: Wanted,
    ) -> Result<(), MirrorError> {
        let upstream = target.upstream_name();
        if self.store.is_linked(upstream, &target.repo, digest)? {
            return Ok(());
        }
        let confirmed = match wanted {
            Wanted::Blob => target
                .upstream
                .head_blob(&target.repo, digest)
                .await
                .map(|_| ()),
            _ => target
                .upstream
                .head_manifest(
                    &target.repo,
                    &pullgate_oci::Reference::Digest(digest.clone()),
                )
                .await
                .map(|_| ()),
        };
        confirmed.map_err(|e| MirrorError::from_upstream(e, wanted))?;
        tolerate_disk(self.store.link(upstream, &target.repo, digest))?;
        Ok(())
    }
}

/// A write the cache disk refused is no reason to fail a pull: the store has logged and
/// counted it, and the content is served uncached. Other store errors still fail.
pub(crate) fn tolerate_disk(
    result: Result<(), pullgate_store::StoreError>,
) -> Result<(), pullgate_store::StoreError> {
    match result {
        Err(e) if e.is_disk_trouble() => Ok(()),
        other => other,
    }
}

fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}
