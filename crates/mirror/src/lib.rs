//! The pull-through core of pullgate: given a request already parsed and authorized,
//! answer it from the cache or from the right upstream, caching what passes through.
//!
//! What it does: picks the upstream ([`Mirror::route`]: `?ns=`, path prefix, default),
//! keeps tags fresh (served from the index for `tag_ttl` or the first matching tag rule's
//! TTL, pinned tags for ever, then revalidated with a cheap `HEAD`, served stale when the
//! upstream is down), caches referrers answers the same way (synthesized from the
//! `sha256-<hex>` tag where the upstream has no referrers API), makes exactly one upstream request per
//! missing digest however many clients ask (fills), and checks that a repository may see a
//! cached digest before serving it under that repository's name. With `[trust]`, judges
//! every manifest served by the trust policy (`policy.rs`: signatures fetched through the
//! mirror's own cache, verdicts cached per keys generation, index lineage, blobs only of
//! manifests that passed in enforced repositories).
//!
//! What it is not: no HTTP server types (that is `pullgate-server`), no HTTP client (that is
//! `pullgate-upstream`), no file layout (that is `pullgate-store`).
//!
//! Main types: [`Mirror`], [`Target`], [`ManifestResponse`], [`BlobResponse`],
//! [`MirrorError`] (a policy denial is [`MirrorError::PolicyDenied`] with its
//! [`PolicyDecision`]), [`Stats`], [`CacheReport`].

mod access;
mod blobs;
mod error;
mod manifests;
mod negative;
mod policy;
mod prefetch;
mod referrers;
mod route;
mod stats;
mod tag_policy;

use std::sync::Arc;
use std::time::Duration;

use pullgate_oci::{Digest, RepoName, UpstreamId};
use pullgate_store::{ReferrersKey, Store, TagKey};
use pullgate_upstream::Upstream;
use tokio_util::task::TaskTracker;

pub use blobs::{BlobResponse, ClientId};
pub use error::MirrorError;
pub use manifests::ManifestResponse;
pub use policy::{PolicyDecision, VERDICT_MAX_AGE};
pub use prefetch::{
    glob_match, ImagePattern, PatternError, Platforms, PrefetchRule, TagPattern,
    MAX_TAGS_PER_PATTERN,
};
pub use pullgate_store::BlobStream;
pub use pullgate_trust::Outcome as PolicyOutcome;
pub use pullgate_upstream::QuotaSnapshot;
pub use route::Target;
pub use stats::{Histogram, HistogramSnapshot, Stats};
pub use tag_policy::{Decision, TagPolicy, TagRule, TagTtl};

/// What `/metrics` shows of one upstream's load: the requests it was sent, by kind, those
/// in flight and queued under its `max_concurrent_requests`, and its announced quota.
#[derive(Debug, Clone)]
pub struct UpstreamReport<'a> {
    pub name: &'a str,
    /// Every kind (a fixed label set) with its count, zeros included.
    pub requests: Vec<(&'static str, u64)>,
    pub in_flight: usize,
    pub queued: usize,
    pub quota: pullgate_upstream::QuotaSnapshot,
}

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
    /// How long a tag (or a referrers answer) is served from the index before it is
    /// revalidated upstream: the first matching `[[cache.tag_rule]]`, else `tag_ttl`.
    pub tags: TagPolicy,
    /// Fills one client (user, or address when anonymous) may have started and still
    /// under way; joining a fill someone else started does not count.
    pub max_fills_per_client: usize,
    /// How long an upstream's "unknown" for a digest under a repository is remembered
    /// (zero: not at all).
    pub negative_ttl: Duration,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            tags: TagPolicy::uniform(Duration::from_secs(60)),
            max_fills_per_client: DEFAULT_MAX_FILLS_PER_CLIENT,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
        }
    }
}

/// A client pulling an image starts a fill per layer, a handful at a time.
pub const DEFAULT_MAX_FILLS_PER_CLIENT: usize = 64;
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// The cache as `/metrics` reports it.
#[derive(Debug, Clone, Copy)]
pub struct CacheReport {
    pub usage: pullgate_store::Usage,
    /// `None`: unbounded.
    pub limits: Option<pullgate_store::Limits>,
    pub evictions: pullgate_store::Evictions,
    /// Whether the cache disk takes writes now.
    pub writable: bool,
    /// Writes the disk refused since start.
    pub write_errors: u64,
    /// Responses served uncached because the disk refused them.
    pub bypassed: u64,
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
    manifest_flights:
        Flights<(UpstreamId, RepoName, Digest), Result<manifests::Stored, MirrorError>>,
    tag_flights: Flights<TagKey, Result<(manifests::Stored, Source), MirrorError>>,
    referrers_flights: Flights<ReferrersKey, Result<referrers::Fetched, MirrorError>>,
    /// Possession proofs under way, by (upstream, repository, digest, blob?): a crowd
    /// asking for one unproven digest costs the upstream one download, not one each.
    proofs: Flights<(UpstreamId, RepoName, Digest, bool), Result<(), MirrorError>>,
    fills: blobs::Fills,
    negative: negative::Negative,
    /// The trust policy, when `[trust]` is configured.
    trust: Option<policy::Trust>,
    /// Owns fills and manifest fetches (they outlive the request that started them).
    tasks: TaskTracker,
}

impl Mirror {
    /// `upstreams[0]` is the default upstream.
    pub fn new(upstreams: Vec<Upstream>, store: Store, config: MirrorConfig) -> Self {
        let tasks = TaskTracker::new();
        let stats = Arc::new(Stats::default());
        Mirror {
            upstreams: upstreams.into_iter().map(Arc::new).collect(),
            store,
            negative: negative::Negative::new(config.negative_ttl, Arc::clone(&stats)),
            config,
            stats,
            manifest_flights: Flights::owned_by(tasks.clone()),
            tag_flights: Flights::owned_by(tasks.clone()),
            referrers_flights: Flights::new(),
            proofs: Flights::new(),
            fills: blobs::Fills::default(),
            trust: None,
            tasks,
        }
    }

    /// Judge every manifest served by `policy`, with the keys and CAs of `keys`, and serve
    /// blobs of enforced repositories only for manifests that passed.
    pub fn with_trust(
        mut self,
        policy: pullgate_trust::Policy,
        keys: pullgate_trust::KeySet,
    ) -> Self {
        self.trust = Some(policy::Trust::new(policy, keys));
        self
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

    /// Each upstream's requests, slots and quota, the default first.
    pub fn upstream_reports(&self) -> Vec<UpstreamReport<'_>> {
        self.upstreams
            .iter()
            .map(|u| UpstreamReport {
                name: u.name(),
                requests: u
                    .requests()
                    .snapshot()
                    .map(|(kind, n)| (kind.as_str(), n))
                    .collect(),
                in_flight: u.requests_in_flight(),
                queued: u.requests_queued(),
                quota: u.quota(),
            })
            .collect()
    }

    /// What `/metrics` shows of the cache, in one value: the store stays behind the mirror.
    pub fn cache_report(&self) -> CacheReport {
        let disk = self.store.disk();
        CacheReport {
            usage: self.store.usage(),
            limits: self.store.limits(),
            evictions: self.store.evictions(),
            writable: disk.writable(),
            write_errors: disk.write_errors(),
            bypassed: disk.bypassed(),
        }
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

    async fn passthrough(
        &self,
        target: &Target,
        suffix: &str,
        accept: Option<&str>,
        wanted: Wanted,
    ) -> Result<PassthroughResponse, MirrorError> {
        self.passthrough_upstream(target, suffix, accept)
            .await
            .map_err(|e| MirrorError::from_upstream(e, wanted))
    }

    /// The upstream's answer with its error as the upstream crate classified it.
    pub(crate) async fn passthrough_upstream(
        &self,
        target: &Target,
        suffix: &str,
        accept: Option<&str>,
    ) -> Result<PassthroughResponse, pullgate_upstream::UpstreamError> {
        let p = target
            .upstream
            .get_passthrough(&target.repo, suffix, accept)
            .await?;
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

    /// Stop taking new background work and wait, until `deadline`, for the fills and
    /// manifest fetches under way to finish (they commit what they fetched). Returns how
    /// many were still running at the deadline; their partial files are discarded.
    pub async fn shutdown(&self, deadline: tokio::time::Instant) -> usize {
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            return self.tasks.len();
        }
        0
    }

    /// The tracker that owns every task the mirror spawns; the store's evictor is spawned
    /// into it too, so one shutdown waits for all of them.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
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
