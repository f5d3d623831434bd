//! The TOML configuration: laid over the embedded default (`config/pullgate.toml`), parsed
//! strictly (`deny_unknown_fields`), then validated into the typed settings each crate
//! takes.
//!
//! How a file meets the default ([`overlay`]): a table the file has is merged key by key
//! into the default's table of that name, recursively; any other value the file has
//! replaces the default's whole, arrays included, so a file's `[[upstream]]` list replaces
//! the default one (docker.io) rather than adding to it. A key neither sets takes the
//! default its struct field gives below. Flags then override the result.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pullgate_auth::{Rule, Scheme, ThrottleConfig};
use pullgate_cluster::{Members, Peer, ServiceName};
use pullgate_mirror::{Platforms, PrefetchRule, TagPolicy, TagRule, TagTtl};
use pullgate_oci::{ImagePattern, UpstreamId};
use pullgate_server::{IpNet, RealmUrl, TlsFiles};
use pullgate_store::Limits;
use serde::de::{Deserializer, Error as _};
use serde::Deserialize;
use toml::{Table, Value};

use crate::units::{self, ByteSize};

pub const DEFAULT_CONFIG: &str = include_str!("../config/pullgate.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: ServerSection,
    pub cache: CacheSection,
    #[serde(default)]
    pub upstream: Vec<UpstreamSection>,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub audit: AuditSection,
    /// `[trust]`: signature and scan policy (`pullgate-trust`'s own structs).
    #[serde(default)]
    pub trust: pullgate_trust::TrustConfig,
    #[serde(default)]
    pub prefetch: Vec<PrefetchSection>,
    /// `[storage]`: where blob bytes live (the cache directory by default).
    #[serde(default)]
    pub storage: StorageSection,
    /// `[cluster]`: the replicas of one mirror; absent, this process is the only one.
    pub cluster: Option<ClusterSection>,
}

/// `[cluster]` (issue 18): who the other replicas are and how this one is reached. Validated
/// and shown by check-config; serving does not use it yet (docs/ARCHITECTURE.md, "Cluster
/// ownership").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Every replica's internal `host:port`, this one's included. Exactly one of this and
    /// `dns`.
    pub peers: Option<Vec<String>>,
    /// A headless Service's `name:port`: its addresses are the replicas.
    pub dns: Option<String>,
    /// The internal port, for owner-to-owner traffic (default `"0.0.0.0:5001"`).
    #[serde(default = "default_cluster_listen", deserialize_with = "listen_addr")]
    pub listen: SocketAddr,
    /// This replica's address as its peers reach it; unset: `listen`, unless that is an
    /// unspecified address (`0.0.0.0`, `::`).
    pub advertise: Option<String>,
    /// A file (mounted secret) with the key replicas share to authenticate to each other.
    pub key: PathBuf,
    /// How often `dns` is resolved again (default `"10s"`).
    #[serde(default, with = "units::duration::option")]
    pub refresh: Option<Duration>,
}

fn default_cluster_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 5001))
}

/// `cluster.refresh` when unset: well under CoreDNS's 30 s cache, so a replica added or
/// gone is seen about as soon as DNS says so, for one small lookup per replica each time.
pub const DEFAULT_CLUSTER_REFRESH: Duration = Duration::from_secs(10);

/// `[storage]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    #[serde(default)]
    pub backend: BackendKind,
    pub s3: Option<S3Section>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Blobs under `[cache] dir` (the default).
    #[default]
    Filesystem,
    /// Blobs in an S3-compatible bucket (`[storage.s3]`).
    S3,
}

/// `[storage.s3]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    pub bucket: String,
    /// Prepended to every key (`"cache/"`); default none.
    #[serde(default)]
    pub prefix: String,
    /// `http(s)://host[:port]`; unset: AWS's endpoint for `region`.
    pub endpoint: Option<String>,
    /// Default `us-east-1`.
    pub region: Option<String>,
    /// `endpoint/bucket/key` rather than `bucket.endpoint/key` (default false).
    #[serde(default)]
    pub path_style: bool,
    /// A directory (mounted Secret) with `access_key_id` and `secret_access_key`, or one
    /// file of `name = value` lines; re-read when it changes. Unset: the standard chain.
    pub credentials: Option<PathBuf>,
    /// PEM file of CAs for the endpoint, added to the system's.
    pub ca: Option<PathBuf>,
    /// Multipart part size (default `"8MiB"`; 5MiB to 512MiB).
    pub part_size: Option<ByteSize>,
    /// Parts of one upload in flight at most (default 2; 1 to 16).
    pub parts_in_flight: Option<usize>,
    /// Fills into the bucket at once (default 8; more wait). With the two above, bounds
    /// the memory of uploads: `max_uploads × part_size × (parts_in_flight + 1)`.
    pub max_uploads: Option<usize>,
    /// Deadline of one request to the bucket, and of each chunk of a body (default `"60s"`).
    #[serde(default, with = "units::duration::option")]
    pub timeout: Option<Duration>,
}

/// `[[prefetch]]`: images kept warm, pulled through the mirror at start-up and every
/// `interval`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchSection {
    /// `docker.io/library/alpine:3.*` (a tag pattern: `*`, `?`), `ghcr.io/org/app:v1.2.3`,
    /// `name@sha256:…`.
    pub images: Vec<String>,
    /// `os/arch[/variant]`, or `["all"]`.
    #[serde(default = "default_prefetch_platforms")]
    pub platforms: Vec<String>,
    #[serde(default = "default_prefetch_interval", with = "units::duration")]
    pub interval: Duration,
}

fn default_prefetch_platforms() -> Vec<String> {
    vec!["linux/amd64".into()]
}
fn default_prefetch_interval() -> Duration {
    Duration::from_secs(3600)
}

/// Who may pull. With no `client_secrets` the mirror is anonymous, which is allowed only on
/// a loopback address unless `anonymous = true` says so explicitly.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Mounted `kubernetes.io/dockerconfigjson` secret directories, or files.
    #[serde(default)]
    pub client_secrets: Vec<PathBuf>,
    pub anonymous: Option<bool>,
    /// "basic" or "token".
    #[serde(default, deserialize_with = "scheme")]
    pub scheme: Option<Scheme>,
    /// Host names clients use for the mirror; a secret entry keyed by one grants every upstream.
    #[serde(default)]
    pub mirror_hosts: Vec<String>,
    pub service: Option<String>,
    #[serde(default, with = "units::duration::option")]
    pub token_ttl: Option<Duration>,
    /// A file (mounted secret) holding the token signing key; generated at start-up if unset.
    pub signing_key: Option<PathBuf>,
    /// The token realm clients are sent to; unset, each request's own scheme and host.
    pub realm: Option<String>,
    pub max_failures: Option<u32>,
    pub max_user_failures: Option<u32>,
    pub max_global_failures: Option<u32>,
    #[serde(default, with = "units::duration::option")]
    pub failure_window: Option<Duration>,
    #[serde(default, with = "units::duration::option")]
    pub block: Option<Duration>,
    /// How long a login keeps its (address, user) pair exempt from blocks others earned.
    #[serde(default, with = "units::duration::option")]
    pub trusted_for: Option<Duration>,
    /// Addresses, user names and pairs the throttle tracks, each.
    pub max_tracked: Option<usize>,
    #[serde(default)]
    pub rule: Vec<RuleSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    pub user: String,
    /// `docker.io/library/*` (one component), `ghcr.io/team-a/**` (any depth), or exact.
    pub repositories: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Off only when set to false.
    pub enabled: Option<bool>,
    /// Append JSON lines here instead of standard output.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    #[serde(deserialize_with = "listen_addr")]
    pub listen: SocketAddr,
    #[serde(default = "default_header_timeout", with = "units::duration")]
    pub header_read_timeout: Duration,
    /// No request in flight and no bytes moving, or a response the client reads nothing
    /// of, for this long: the connection is closed.
    #[serde(default = "default_idle_timeout", with = "units::duration")]
    pub idle_timeout: Duration,
    #[serde(default = "default_drain_timeout", with = "units::duration")]
    pub drain_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one client address (an IPv6 /64) may hold; more are closed at accept.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Addresses or networks not counted against `max_connections_per_address`.
    #[serde(default = "default_connection_limit_exempt")]
    pub connection_limit_exempt: Vec<String>,
    /// Proxies (addresses or networks) whose `Forwarded` / `X-Forwarded-*` are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// HTTPS with these PEM files (a mounted `kubernetes.io/tls` secret); plain HTTP if absent.
    pub tls: Option<TlsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Certificate chain, leaf first (`tls.crt`).
    pub cert: PathBuf,
    /// Its private key (`tls.key`).
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    pub dir: PathBuf,
    #[serde(default = "default_tag_ttl", with = "units::duration")]
    pub tag_ttl: Duration,
    /// `"50GiB"`, `"500MB"`: the cache evicts least recently used blobs to stay under it.
    /// Unset: it only grows.
    pub max_size: Option<ByteSize>,
    /// Fraction of `max_size` above which eviction starts.
    pub high_watermark: Option<f64>,
    /// Fraction of `max_size` eviction brings usage down to.
    pub low_watermark: Option<f64>,
    /// Largest blob fetched from an upstream (default `"32GiB"`).
    pub max_blob_size: Option<ByteSize>,
    /// Blob downloads one client (user, or address when anonymous) may have started and
    /// still under way (default 64).
    pub max_fills_per_client: Option<usize>,
    /// How long an upstream's "unknown" for a digest is remembered (default `"5s"`; `"0s"`: off).
    #[serde(default, with = "units::duration::option")]
    pub negative_ttl: Option<Duration>,
    /// Per-image tag TTLs, first match wins; `tag_ttl` for tags no rule matches.
    #[serde(default)]
    pub tag_rule: Vec<TagRuleSection>,
}

/// The least `max_bandwidth` accepted, in bytes per second.
const MIN_BANDWIDTH: u64 = 64 * 1024;
/// `[[cache.tag_rule]]`: how long tags matching `images` are trusted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagRuleSection {
    /// `<upstream>/<repository>:<tag>` patterns: `docker.io/library/*:v*`.
    pub images: Vec<String>,
    /// `"never"` (pinned: never revalidated once cached) or a duration.
    #[serde(with = "units::tag_ttl")]
    pub ttl: TagTtl,
}

/// Rules and patterns are read on every tag lookup that misses the fresh path; a few
/// hundred is far more than a hand-written file has.
pub const MAX_TAG_RULES: usize = 256;
pub const MAX_TAG_RULE_PATTERNS: usize = 64;

pub const DEFAULT_HIGH_WATERMARK: f64 = 0.95;
pub const DEFAULT_LOW_WATERMARK: f64 = 0.85;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    #[serde(deserialize_with = "upstream_id")]
    pub name: UpstreamId,
    pub url: String,
    pub credentials: Option<PathBuf>,
    #[serde(default = "default_connect_timeout", with = "units::duration")]
    pub connect_timeout: Duration,
    #[serde(default = "default_read_timeout", with = "units::duration")]
    pub read_timeout: Duration,
    /// Token realms (origins) besides the upstream's own that may receive its credentials.
    #[serde(default)]
    pub token_realms: Vec<String>,
    /// Blob redirects to loopback, link-local or private addresses; unset: only when the
    /// upstream itself is on one.
    pub allow_private_redirects: Option<bool>,
    /// Requests in flight to this upstream at once; unset: no cap.
    pub max_concurrent_requests: Option<usize>,
    /// Bytes per second for blob bodies from this upstream (`"100MiB"`); unset: no cap.
    pub max_bandwidth: Option<ByteSize>,
    /// Warn when the upstream's `RateLimit-Remaining` falls below this (default 10; 0: never).
    pub ratelimit_warn_below: Option<u64>,
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_connections_per_address() -> usize {
    64
}
fn default_connection_limit_exempt() -> Vec<String> {
    vec!["127.0.0.1".into(), "::1".into()]
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_tag_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(30)
}

// Values read once, where the file is deserialized. Each error quotes the value; the TOML
// layer adds the key (`in `server.listen``).

fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        D::Error::custom(format!(
            "{text:?} is not an address:port such as \"127.0.0.1:5000\""
        ))
    })
}

fn upstream_id<'de, D: Deserializer<'de>>(d: D) -> Result<UpstreamId, D::Error> {
    let text = String::deserialize(d)?;
    UpstreamId::parse(&text).map_err(|e| D::Error::custom(format!("{text:?}: {e}")))
}

#[derive(Deserialize)]
#[serde(remote = "Scheme", rename_all = "lowercase")]
enum SchemeDef {
    Basic,
    Token,
}

fn scheme<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Scheme>, D::Error> {
    SchemeDef::deserialize(d).map(Some)
}

/// Settings after validation: every value typed, every rule checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub connection_limit_exempt: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    pub cache_dir: PathBuf,
    /// `cache.tag_ttl` with the `[[cache.tag_rule]]`s.
    pub tag_policy: TagPolicy,
    /// `None`: unbounded.
    pub cache_limits: Option<Limits>,
    pub max_blob_size: u64,
    pub max_fills_per_client: usize,
    pub negative_ttl: Duration,
    pub upstreams: Vec<UpstreamSettings>,
    pub auth: AuthSettings,
    pub audit: AuditSettings,
    pub prefetch: Vec<PrefetchRule>,
    pub trust: TrustSettings,
    /// `None`: blobs in `cache_dir` (the filesystem backend).
    pub storage: Option<S3Storage>,
    /// `None`: one replica.
    pub cluster: Option<ClusterSettings>,
}

/// `[cluster]`, validated into the cluster crate's types.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub members: Members,
    /// This replica, as its peers (and the owner hash) know it.
    pub me: Peer,
    pub listen: SocketAddr,
    /// The shared key's file: its path only, read where it is used.
    pub key: PathBuf,
}

fn cluster_settings(c: ClusterSection, server: SocketAddr) -> Result<ClusterSettings> {
    if c.listen.port() == 0 {
        bail!("cluster.listen: {} has no port", c.listen);
    }
    // The same port on an address the server's listener also covers would fail to bind.
    let overlaps = c.listen.ip() == server.ip()
        || c.listen.ip().is_unspecified()
        || server.ip().is_unspecified();
    if c.listen.port() == server.port() && overlaps {
        bail!(
            "cluster.listen {} and server.listen {server} would share a port: give the cluster's internal port its own",
            c.listen
        );
    }
    let me = match &c.advertise {
        Some(text) => Peer::parse(text).context("cluster.advertise")?,
        None if c.listen.ip().is_unspecified() => bail!(
            "cluster.advertise is required when cluster.listen is {} (every address): set it to \
             this replica's address as its peers reach it (the pod's IP and the port)",
            c.listen
        ),
        None => Peer::from(c.listen),
    };
    let members = match (c.peers, c.dns, c.refresh) {
        (Some(_), Some(_), _) => bail!("[cluster]: set cluster.peers or cluster.dns, not both"),
        (None, None, _) => {
            bail!("[cluster] needs cluster.peers = [\"host:port\", ...] or cluster.dns = \"name:port\"")
        }
        (Some(_), None, Some(_)) => {
            bail!("cluster.refresh is how often cluster.dns is resolved: it has no meaning with cluster.peers")
        }
        (Some(list), None, None) => {
            if list.is_empty() {
                bail!("cluster.peers is empty: list every replica, this one included");
            }
            let mut peers: Vec<Peer> = Vec::with_capacity(list.len());
            for text in &list {
                let p = Peer::parse(text).context("cluster.peers")?;
                if peers.contains(&p) {
                    bail!("cluster.peers: {p} is listed twice");
                }
                peers.push(p);
            }
            // Otherwise this replica would own nothing while others send it requests for
            // digests they think it owns, or the reverse: every replica's list must be
            // the same, and each must find itself in it.
            if !peers.contains(&me) {
                bail!(
                    "cluster.advertise {me} is not one of cluster.peers ({}): list this replica, written the same way",
                    peers.iter().map(Peer::as_str).collect::<Vec<_>>().join(", ")
                );
            }
            Members::Static(peers.into())
        }
        (None, Some(dns), refresh) => {
            let name = ServiceName::parse(&dns).context("cluster.dns")?;
            let refresh = refresh.unwrap_or(DEFAULT_CLUSTER_REFRESH);
            if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&refresh) {
                bail!("cluster.refresh: {refresh:?} is not from 1s to 1h");
            }
            // The peers are the name's addresses with its port: this replica is among
            // them only as an IP with that port.
            if me.socket_addr().is_none_or(|a| a.port() != name.port()) {
                bail!(
                    "cluster.advertise {me}: with cluster.dns it must be this replica's IP address and the port of {name}, as the name resolves to it"
                );
            }
            Members::Dns { name, refresh }
        }
    };
    Ok(ClusterSettings {
        members,
        me,
        listen: c.listen,
        key: c.key,
    })
}

/// `[storage] backend = "s3"`, validated.
#[derive(Debug, Clone)]
pub struct S3Storage {
    pub config: pullgate_store::S3Config,
    pub max_uploads: usize,
}

/// Most `max_uploads` accepted.
const MAX_UPLOADS: usize = 256;

fn storage_settings(s: StorageSection, cache: &CacheSection) -> Result<Option<S3Storage>> {
    let section = match (s.backend, s.s3) {
        (BackendKind::Filesystem, None) => return Ok(None),
        (BackendKind::Filesystem, Some(_)) => {
            bail!("[storage.s3] is set but storage.backend is \"filesystem\": set backend = \"s3\" or remove it")
        }
        (BackendKind::S3, None) => bail!("storage.backend = \"s3\" needs a [storage.s3] table"),
        (BackendKind::S3, Some(section)) => section,
    };
    if cache.max_size.is_some() {
        bail!("cache.max_size bounds the cache directory; with storage.backend = \"s3\" the bucket is not bounded yet: remove cache.max_size");
    }
    let mut config = pullgate_store::S3Config::new(
        section.bucket,
        section.region.unwrap_or_else(|| "us-east-1".into()),
    );
    config.prefix = section.prefix;
    config.endpoint = section.endpoint;
    config.path_style = section.path_style;
    config.credentials = section.credentials;
    config.ca_file = section.ca;
    if let Some(p) = section.part_size {
        config.part_size = usize::try_from(p.bytes()).context("storage.s3.part_size")?;
    }
    if let Some(n) = section.parts_in_flight {
        config.parts_in_flight = n;
    }
    if let Some(t) = section.timeout {
        config.timeout = t;
    }
    config.validate().context("[storage.s3]")?;
    let max_uploads = section.max_uploads.unwrap_or(8);
    if !(1..=MAX_UPLOADS).contains(&max_uploads) {
        bail!("storage.s3.max_uploads: {max_uploads} is not from 1 to {MAX_UPLOADS}");
    }
    Ok(Some(S3Storage {
        config,
        max_uploads,
    }))
}

/// `[trust]`: the file's section as written (check-config prints it back) and the policy
/// validated from it. The keys and CAs load at start (`KeySet::open`), not here: a config
/// is often checked where they are not mounted.
#[derive(Debug, Clone)]
pub struct TrustSettings {
    pub config: pullgate_trust::TrustConfig,
    pub policy: pullgate_trust::Policy,
}

impl TrustSettings {
    /// Whether anything is configured: no rules and `unmatched = "allow"` judges nothing,
    /// so the mirror skips the policy entirely.
    pub fn is_active(&self) -> bool {
        !self.config.rule.is_empty() || self.config.unmatched != pullgate_trust::Unmatched::Allow
    }
}

/// `[auth]`, validated, in `pullgate-auth`'s own types where it has them.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub client_secrets: Vec<PathBuf>,
    pub anonymous: bool,
    pub scheme: Scheme,
    pub mirror_hosts: Vec<String>,
    pub service: String,
    pub token_ttl: Duration,
    pub signing_key: Option<PathBuf>,
    pub realm: Option<RealmUrl>,
    pub throttle: ThrottleConfig,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub enabled: bool,
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub name: UpstreamId,
    pub url: String,
    pub credentials: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub token_realms: Vec<String>,
    pub allow_private_redirects: Option<bool>,
    pub max_concurrent_requests: Option<usize>,
    /// Bytes per second.
    pub max_bandwidth: Option<u64>,
    pub ratelimit_warn_below: u64,
}

/// Command-line values that override the file.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub cache_dir: Option<PathBuf>,
    pub upstream: Option<String>,
}

/// Lays `file` over `base`: a table merges key by key, recursively; any other value, an
/// array of tables (`[[upstream]]`) included, replaces the base's whole. Lists replace
/// rather than append so that a file can say exactly which upstreams (or secrets, or
/// rules) there are, with no way to inherit one it did not write.
fn overlay(base: &mut Table, file: Table) {
    for (key, value) in file {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(f)) => overlay(b, f),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

impl FileConfig {
    /// `text` laid over the embedded default. A syntax error points at the line of `text`;
    /// a wrong value names its key (`in `cache.tag_ttl``) and the value.
    pub fn parse(text: &str) -> Result<Self> {
        let file: Table = text.parse().context("invalid configuration")?;
        let mut merged: Table = DEFAULT_CONFIG
            .parse()
            .context("the embedded default configuration")?;
        overlay(&mut merged, file);
        merged.try_into().context("invalid configuration")
    }

    pub fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            None => Self::parse("").context("the embedded default configuration"),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                Self::parse(&text).with_context(|| format!("in {}", p.display()))
            }
        }
    }

    pub fn into_settings(self, o: Overrides) -> Result<Settings> {
        let listen = o.listen.unwrap_or(self.server.listen);
        let mut upstreams = self
            .upstream
            .into_iter()
            .map(UpstreamSettings::try_from)
            .collect::<Result<Vec<_>>>()?;
        // Only a file that writes `upstream = []` gets here with none: the embedded default
        // has one, and `--upstream` re-points the first rather than inventing a name.
        if upstreams.is_empty() {
            bail!("at least one [[upstream]] is required (`upstream = []` leaves none)");
        }
        if let Some(url) = o.upstream {
            check_url(&url).context("--upstream")?;
            upstreams[0].url = url.trim_end_matches('/').to_owned();
        }
        for (i, u) in upstreams.iter().enumerate() {
            // UpstreamId is lowercased, so `Docker.io` and `docker.io` are one name.
            if upstreams[..i].iter().any(|v| v.name == u.name) {
                bail!("upstream name {:?} is configured twice", u.name.as_str());
            }
        }
        let auth = auth_settings(self.auth, listen, &upstreams)?;
        let prefetch = self
            .prefetch
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                prefetch_rule(p, &upstreams).with_context(|| format!("[[prefetch]] #{}", i + 1))
            })
            .collect::<Result<Vec<_>>>()?;
        let cache_limits = cache_limits(&self.cache)?;
        let storage = storage_settings(self.storage, &self.cache)?;
        let cluster = self
            .cluster
            .map(|c| cluster_settings(c, listen))
            .transpose()?;
        let tag_policy = tag_policy(self.cache.tag_ttl, self.cache.tag_rule, &upstreams)?;
        let policy = pullgate_trust::Policy::from_config(&self.trust).context("[trust]")?;
        for rule in policy.rules() {
            if let Some((host, _)) = rule.signatures() {
                if !upstreams
                    .iter()
                    .any(|u| u.name.as_str().eq_ignore_ascii_case(host))
                {
                    bail!(
                        "[trust] {}: signatures = {host:?}/…: no upstream of that name",
                        rule.description()
                    );
                }
            }
            for pattern in rule.images() {
                let host = pattern.split('/').next().unwrap_or_default();
                // A rule whose host is a typo would never match, leaving its images to
                // `unmatched`: refuse it here instead.
                if !upstreams
                    .iter()
                    .any(|u| pullgate_oci::host_matches(host, u.name.as_str()))
                {
                    bail!(
                        "[trust] {}: {pattern:?} names no configured upstream",
                        rule.description()
                    );
                }
            }
        }
        Ok(Settings {
            trust: TrustSettings {
                config: self.trust,
                policy,
            },
            cache_limits,
            storage,
            cluster,
            auth,
            audit: AuditSettings {
                enabled: self.audit.enabled.unwrap_or(true),
                path: self.audit.path,
            },
            listen,
            tls: self.server.tls.map(|t| TlsFiles {
                cert: t.cert,
                key: t.key,
            }),
            header_read_timeout: self.server.header_read_timeout,
            idle_timeout: match self.server.idle_timeout {
                d if d >= Duration::from_millis(100) => d,
                d => bail!("server.idle_timeout: {d:?} is too short; 100ms at least"),
            },
            drain_timeout: self.server.drain_timeout,
            max_connections: match self.server.max_connections {
                n @ 1..=1_000_000 => n,
                n => bail!("server.max_connections: {n} is not between 1 and 1000000"),
            },
            max_connections_per_address: match self.server.max_connections_per_address {
                n @ 1..=1_000_000 => n,
                n => bail!("server.max_connections_per_address: {n} is not between 1 and 1000000"),
            },
            connection_limit_exempt: networks(
                "server.connection_limit_exempt",
                &self.server.connection_limit_exempt,
            )?,
            trusted_proxies: networks("server.trusted_proxies", &self.server.trusted_proxies)?,
            cache_dir: o.cache_dir.unwrap_or(self.cache.dir),
            tag_policy,
            max_blob_size: match self.cache.max_blob_size.map(ByteSize::bytes) {
                None => pullgate_upstream::DEFAULT_MAX_BLOB_SIZE,
                Some(0) => bail!("cache.max_blob_size must be more than 0"),
                Some(n) => n,
            },
            max_fills_per_client: match self.cache.max_fills_per_client {
                None => pullgate_mirror::DEFAULT_MAX_FILLS_PER_CLIENT,
                Some(n @ 1..=100_000) => n,
                Some(n) => bail!("cache.max_fills_per_client: {n} is not between 1 and 100000"),
            },
            negative_ttl: match self.cache.negative_ttl {
                None => pullgate_mirror::DEFAULT_NEGATIVE_TTL,
                Some(d) if d <= Duration::from_secs(3600) => d,
                Some(d) => bail!("cache.negative_ttl: {d:?} is too long; at most 1h"),
            },
            upstreams,
            prefetch,
        })
    }
}

fn prefetch_rule(p: PrefetchSection, upstreams: &[UpstreamSettings]) -> Result<PrefetchRule> {
    if p.images.is_empty() {
        bail!("images: name at least one image");
    }
    let images = p
        .images
        .iter()
        .map(|i| pullgate_mirror::ImagePattern::parse(i).context("images"))
        .collect::<Result<Vec<_>>>()?;
    for i in &images {
        // As a request would be routed: a host must be a configured upstream.
        if let Some(host) = &i.host {
            let known = upstreams.iter().any(|u| {
                u.name.is(host)
                    || (pullgate_oci::is_docker_hub(host)
                        && pullgate_oci::is_docker_hub(u.name.as_str()))
            });
            if !known {
                bail!("images: {:?}: no [[upstream]] is named {host}", i.written);
            }
        }
    }
    let platforms = Platforms::parse(&p.platforms).context("platforms")?;
    if p.interval < Duration::from_secs(1) {
        bail!("interval: {:?} is too short; 1s at least", p.interval);
    }
    Ok(PrefetchRule {
        images,
        platforms,
        interval: p.interval,
    })
}

impl TryFrom<UpstreamSection> for UpstreamSettings {
    type Error = anyhow::Error;
    fn try_from(u: UpstreamSection) -> Result<Self> {
        check_url(&u.url).with_context(|| format!("upstream {}", u.name))?;
        for realm in &u.token_realms {
            check_url(realm).with_context(|| format!("upstream {}: token_realms", u.name))?;
            if u.url.starts_with("https://") && !realm.starts_with("https://") {
                bail!(
                    "upstream {}: token_realms: {realm:?} is plain http for an https upstream; \
                     its credentials would travel unencrypted",
                    u.name
                );
            }
        }
        let max = pullgate_upstream::MAX_CONCURRENT_REQUESTS;
        let max_concurrent_requests = match u.max_concurrent_requests {
            None => None,
            Some(n) if (1..=max).contains(&n) => Some(n),
            Some(n) => bail!(
                "upstream {}: max_concurrent_requests: {n} is not between 1 and {max}",
                u.name
            ),
        };
        Ok(UpstreamSettings {
            max_concurrent_requests,
            max_bandwidth: match u.max_bandwidth.map(ByteSize::bytes) {
                // A fill nobody waits for must move 64 KiB per read_timeout; far below
                // this, every unattended fill would be given up.
                Some(b) if b < MIN_BANDWIDTH => bail!(
                    "upstream {}: max_bandwidth: {b} bytes per second is below the minimum of 64KiB",
                    u.name
                ),
                other => other,
            },
            ratelimit_warn_below: match u.ratelimit_warn_below {
                None => pullgate_upstream::DEFAULT_RATELIMIT_WARN_BELOW,
                Some(n) if n <= 1_000_000_000 => n,
                Some(n) => bail!(
                    "upstream {}: ratelimit_warn_below: {n} is more than 1000000000",
                    u.name
                ),
            },
            connect_timeout: u.connect_timeout,
            read_timeout: u.read_timeout,
            name: u.name,
            url: u.url.trim_end_matches('/').to_owned(),
            credentials: u.credentials,
            token_realms: u.token_realms,
            allow_private_redirects: u.allow_private_redirects,
        })
    }
}

fn auth_settings(
    a: AuthSection,
    listen: SocketAddr,
    upstreams: &[UpstreamSettings],
) -> Result<AuthSettings> {
    let anonymous = match (a.anonymous, a.client_secrets.is_empty()) {
        (Some(explicit), _) => explicit,
        // No secrets: nobody could ever log in, so the mirror is open; that is a safe
        // default only where nobody else can reach it.
        (None, true) if listen.ip().is_loopback() => true,
        (None, true) => bail!(
            "refusing to serve anonymously on {listen}, which is not a loopback address: \
             set [auth] client_secrets to require credentials, or [auth] anonymous = true \
             to let anyone who can reach it pull"
        ),
        (None, false) => false,
    };
    if !anonymous && a.client_secrets.is_empty() {
        bail!("[auth] anonymous = false needs at least one path in [auth] client_secrets");
    }
    let scheme = a.scheme.unwrap_or(Scheme::Basic);
    let mut rules = Vec::new();
    for r in a.rule {
        if r.user.is_empty() || r.repositories.is_empty() {
            bail!("[[auth.rule]] needs a user and at least one repository pattern");
        }
        for p in &r.repositories {
            let first = p.split('/').next().unwrap_or("");
            let known = upstreams.iter().any(|u| u.name.is(first));
            if !known {
                bail!(
                    "[[auth.rule]] for {:?}: pattern {p:?} must start with a configured upstream name",
                    r.user
                );
            }
        }
        rules.push(Rule {
            user: r.user,
            patterns: r.repositories,
        });
    }
    let mut mirror_hosts = a.mirror_hosts;
    // Whatever address clients connect to is one of the mirror's names.
    mirror_hosts.push(listen.to_string());
    if listen.ip().is_loopback() {
        mirror_hosts.push(format!("localhost:{}", listen.port()));
    }
    let mut seen = std::collections::HashSet::new();
    mirror_hosts.retain(|h| seen.insert(h.to_ascii_lowercase()));
    Ok(AuthSettings {
        client_secrets: a.client_secrets,
        anonymous,
        scheme,
        mirror_hosts,
        service: a.service.unwrap_or_else(|| "pullgate".into()),
        token_ttl: a.token_ttl.unwrap_or(Duration::from_secs(5 * 60)),
        signing_key: a.signing_key,
        realm: a
            .realm
            .as_deref()
            .map(RealmUrl::parse)
            .transpose()
            .context("auth.realm")?,
        throttle: ThrottleConfig {
            max_failures: a.max_failures.unwrap_or(10).max(1),
            window: a.failure_window.unwrap_or(Duration::from_secs(60)),
            block: a.block.unwrap_or(Duration::from_secs(60)),
            max_user_failures: a.max_user_failures.unwrap_or(10).max(1),
            max_global_failures: a.max_global_failures.unwrap_or(1000).max(1),
            trusted_for: a.trusted_for.unwrap_or(Duration::from_secs(24 * 3600)),
            max_tracked: a.max_tracked.unwrap_or(10_000).max(1),
        },
        rules,
    })
}

fn tag_policy(
    tag_ttl: Duration,
    rules: Vec<TagRuleSection>,
    upstreams: &[UpstreamSettings],
) -> Result<TagPolicy> {
    if rules.len() > MAX_TAG_RULES {
        bail!(
            "[[cache.tag_rule]]: {} rules; at most {MAX_TAG_RULES}",
            rules.len()
        );
    }
    let mut out = Vec::with_capacity(rules.len());
    for (i, r) in rules.into_iter().enumerate() {
        let n = i + 1;
        if r.images.is_empty() || r.images.len() > MAX_TAG_RULE_PATTERNS {
            bail!(
                "[[cache.tag_rule]] {n}: images needs between 1 and {MAX_TAG_RULE_PATTERNS} patterns"
            );
        }
        let mut images = Vec::with_capacity(r.images.len());
        for p in &r.images {
            let pattern = ImagePattern::parse(p)
                .with_context(|| format!("[[cache.tag_rule]] {n}: images"))?;
            if !upstreams
                .iter()
                .any(|u| pullgate_oci::host_matches(pattern.upstream(), u.name.as_str()))
            {
                bail!(
                    "[[cache.tag_rule]] {n}: pattern {p:?} must start with a configured upstream name"
                );
            }
            images.push(pattern);
        }
        out.push(TagRule { images, ttl: r.ttl });
    }
    Ok(TagPolicy::new(tag_ttl, out))
}

fn cache_limits(c: &CacheSection) -> Result<Option<Limits>> {
    let Some(max) = c.max_size else {
        if c.high_watermark.is_some() || c.low_watermark.is_some() {
            bail!("cache.high_watermark and cache.low_watermark need cache.max_size");
        }
        return Ok(None);
    };
    let high = c.high_watermark.unwrap_or(DEFAULT_HIGH_WATERMARK);
    let low = c.low_watermark.unwrap_or(DEFAULT_LOW_WATERMARK);
    Limits::new(max.bytes(), high, low)
        .map(Some)
        .context("cache.high_watermark, cache.low_watermark")
}

fn check_url(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .with_context(|| format!("{url:?} must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains('@') {
        bail!("{url:?} must name a host (and no user info: use a credentials secret)");
    }
    Ok(())
}

fn networks(field: &str, texts: &[String]) -> Result<Vec<IpNet>> {
    texts
        .iter()
        .map(|t| t.parse().with_context(|| field.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_what_the_issue_says() {
        let s = FileConfig::load(None)
            .unwrap()
            .into_settings(Overrides::default())
            .unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(s.cache_dir, PathBuf::from("./pullgate-data"));
        assert_eq!(s.tag_policy.default_ttl(), Duration::from_secs(60));
        assert_eq!(s.upstreams.len(), 1);
        assert_eq!(s.upstreams[0].name.as_str(), "docker.io");
        assert_eq!(s.upstreams[0].url, "https://registry-1.docker.io");
    }

    /// `[trust]` in the issue's shape: validated into rules in file order, printed back by
    /// check-config; a rule naming an unknown key, or a pattern naming no upstream, or an
    /// unknown field, refused with the key that is wrong.
    #[test]
    fn trust_in_the_issues_shape_and_its_errors() {
        let base = "[[trust.key]]\nname = \"release\"\npath = \"/k/release.pub\"\n\n[[trust.ca]]\nname = \"corp\"\npath = \"/ca/ca.crt\"\n\n";
        let rule = "[[trust.rule]]\nimages = [\"docker.io/team/**\"]\naction = \"verify\"\nmode = \"enforce\"\nsigned_by = [\"release\", \"ca:corp\"]\nthreshold = 1\nidentity = { san = \"release@example.com\", issuer = \"https://ci.example.com\" }\nscan = { signed_by = [\"release\"], max_severity = \"HIGH\", max_age = \"7d\", allow_cves = [] }\n\n[[trust.rule]]\nimages = [\"docker.io/library/*\"]\naction = \"allow\"\n\n[trust]\nunmatched = \"deny\"\n";
        let s = settings(&format!("{base}{rule}"), Overrides::default()).unwrap();
        assert!(s.trust.is_active());
        let rules = s.trust.policy.rules();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].description(), "trust rule 1 (docker.io/team/**)");
        assert_eq!(rules[1].action(), pullgate_trust::Action::Allow);
        let shown = crate::check::render(&s);
        let again = settings(&shown, Overrides::default()).unwrap();
        assert_eq!(again.trust.config, s.trust.config, "{shown}");
        let first = shown.find("docker.io/team/**").unwrap();
        assert!(
            first < shown.find("docker.io/library/*").unwrap(),
            "{shown}"
        );

        // Nothing configured: nothing judged.
        assert!(!settings("", Overrides::default())
            .unwrap()
            .trust
            .is_active());

        for (bad, says) in [
            (
                rule.replace("\"release\", \"ca:corp\"", "\"nobody\""),
                "nobody",
            ),
            (
                rule.replace("docker.io/team", "dockr.io/team"),
                "dockr.io/team/**",
            ),
            (
                rule.replace("threshold = 1", "threshold = 1\ncolour = 1"),
                "colour",
            ),
            (rule.replace("\"verify\"", "\"maybe\""), "maybe"),
        ] {
            let e = settings(&format!("{base}{bad}"), Overrides::default()).unwrap_err();
            assert!(format!("{e:#}").contains(says), "{e:#}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let s = FileConfig::load(None)
            .unwrap()
            .into_settings(Overrides {
                listen: Some(([127, 0, 0, 1], 0).into()),
                cache_dir: Some("/tmp/x".into()),
                upstream: Some("http://127.0.0.1:5001/".into()),
            })
            .unwrap();
        assert_eq!(s.listen.port(), 0);
        assert_eq!(s.cache_dir, PathBuf::from("/tmp/x"));
        // Trimmed like a file's URL.
        assert_eq!(s.upstreams[0].url, "http://127.0.0.1:5001");
    }

    #[test]
    fn rejects_bad_configs() {
        let base = "[server]\nlisten = \"127.0.0.1:5000\"\n[cache]\ndir = \"d\"\n";
        let bad = [
            format!("{base}[[upstream]]\nname = \"a\"\nurl = \"ftp://x\"\n"),
            format!("{base}[[upstream]]\nname = \"a\"\nurl = \"https://u:p@x\"\n"),
            format!("{base}[[upstream]]\nname = \"a b\"\nurl = \"https://x\"\n"),
            format!("{base}[[upstream]]\nname = \"a\"\nurl = \"https://x\"\n[[upstream]]\nname = \"A\"\nurl = \"https://y\"\n"),
            format!("{base}[[upstream]]\nname = \"a\"\nurl = \"https://x\"\nbogus = 1\n"),
            "upstream = []\n".to_string(),
            "[server]\nbogus = 1\n".to_string(),
            "[surver]\nlisten = \"127.0.0.1:5000\"\n".to_string(),
            format!("{base}tag_ttl = \"soon\"\n[[upstream]]\nname = \"a\"\nurl = \"https://x\"\n"),
        ];
        for text in bad {
            let r = FileConfig::parse(&text).and_then(|c| c.into_settings(Overrides::default()));
            assert!(r.is_err(), "accepted:\n{text}");
        }
    }

    fn settings(text: &str, o: Overrides) -> Result<Settings> {
        FileConfig::parse(text).and_then(|c| c.into_settings(o))
    }

    #[test]
    fn storage_is_the_filesystem_by_default_and_s3_is_checked() {
        let s = settings("", Overrides::default()).unwrap();
        assert!(s.storage.is_none());
        let render = crate::check::render(&s);
        assert!(
            render.contains("[storage]\nbackend = \"filesystem\""),
            "{render}"
        );

        let s3 = "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"pullgate\"\nprefix = \"cache/\"\n\
                  endpoint = \"http://127.0.0.1:8333\"\nregion = \"eu-west-1\"\npath_style = true\n\
                  credentials = \"/var/run/secrets/pullgate/s3\"\nca = \"/etc/ca.pem\"\n\
                  part_size = \"16MiB\"\nparts_in_flight = 4\nmax_uploads = 3\ntimeout = \"30s\"\n";
        let s = settings(s3, Overrides::default()).unwrap();
        let st = s.storage.clone().unwrap();
        let c = &st.config;
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str(), c.region.as_str()),
            ("pullgate", "cache/", "eu-west-1")
        );
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert!(c.path_style);
        assert_eq!(
            c.credentials.as_deref(),
            Some(Path::new("/var/run/secrets/pullgate/s3"))
        );
        assert_eq!(c.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!((c.part_size, c.parts_in_flight), (16 << 20, 4));
        assert_eq!((st.max_uploads, c.timeout), (3, Duration::from_secs(30)));
        let render = crate::check::render(&s);
        for want in [
            "backend = \"s3\"",
            "bucket = \"pullgate\"",
            "credentials = \"/var/run/secrets/pullgate/s3\"",
            "part_size = \"16MiB\"",
        ] {
            assert!(render.contains(want), "{want} in\n{render}");
        }
        // What check-config prints is a configuration that parses to the same.
        assert!(FileConfig::parse(&render).is_ok(), "{render}");

        // Defaults: region us-east-1, no prefix, virtual-hosted style, the standard chain.
        let s = settings(
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"pullgate\"\n",
            Overrides::default(),
        )
        .unwrap();
        let st = s.storage.unwrap();
        assert_eq!(st.config.region, "us-east-1");
        assert!(!st.config.path_style && st.config.credentials.is_none());
        assert_eq!(st.max_uploads, 8);

        for (bad, why) in [
            ("[storage]\nbackend = \"s3\"\n", "needs a [storage.s3]"),
            ("[storage]\nbackend = \"gcs\"\n", "unknown variant"),
            ("[storage.s3]\nbucket = \"pullgate\"\n", "backend is \"filesystem\""),
            (
                "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"pullgate\"\nsecret = \"x\"\n",
                "unknown field",
            ),
            (
                "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"Bad_Bucket\"\n",
                "bucket",
            ),
            (
                "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"pullgate\"\npart_size = \"1MiB\"\n",
                "part size",
            ),
            (
                "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"pullgate\"\nmax_uploads = 0\n",
                "max_uploads",
            ),
            (
                "[cache]\nmax_size = \"1GiB\"\n[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"pullgate\"\n",
                "cache.max_size",
            ),
        ] {
            let e = format!("{:#}", settings(bad, Overrides::default()).unwrap_err());
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// `[cluster]`: absent by default; a static list or a DNS name, this replica among the
    /// peers, checked into the cluster crate's types and printed back by check-config with
    /// the key's path (its state on stderr), never the key.
    #[test]
    fn cluster_is_off_by_default_and_checked() {
        let s = settings("", Overrides::default()).unwrap();
        assert!(s.cluster.is_none());
        assert!(!crate::check::render(&s).contains("[cluster]"));

        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let secret = "cluster-secret-".repeat(3);
        std::fs::write(&key, &secret).unwrap();
        let stat = format!(
            "[cluster]\npeers = [\"10.0.0.2:5001\", \"10.0.0.1:5001\", \"Pullgate-2.Peers:5001\"]\n\
             listen = \"10.0.0.1:5001\"\nkey = \"{}\"\n",
            key.display()
        );
        let s = settings(&stat, Overrides::default()).unwrap_or_else(|e| panic!("{e:#}"));
        let c = s.cluster.clone().unwrap();
        let peer = |t: &str| Peer::parse(t).unwrap();
        assert_eq!(c.me, peer("10.0.0.1:5001"), "advertise from listen");
        assert_eq!(c.listen, "10.0.0.1:5001".parse::<SocketAddr>().unwrap());
        assert_eq!(c.key, key);
        assert_eq!(
            c.members,
            Members::Static(
                [
                    peer("10.0.0.2:5001"),
                    peer("10.0.0.1:5001"),
                    peer("pullgate-2.peers:5001")
                ]
                .into()
            )
        );
        let shown = crate::check::render(&s);
        for want in [
            "[cluster]",
            "peers = [\"10.0.0.2:5001\", \"10.0.0.1:5001\", \"pullgate-2.peers:5001\"]",
            "advertise = \"10.0.0.1:5001\"",
            "listen = \"10.0.0.1:5001\"",
            &format!("key = \"{}\"", key.display()),
        ] {
            assert!(shown.contains(want), "{want} in\n{shown}");
        }
        let again = settings(&shown, Overrides::default()).unwrap();
        assert_eq!(format!("{:?}", again.cluster), format!("{:?}", s.cluster));
        // The key is looked at, never shown.
        let files = crate::check::files(&s).join("\n");
        assert!(
            files.contains(&format!("ok       cluster key {}", key.display())),
            "{files}"
        );
        std::fs::write(&key, "short").unwrap();
        let files = crate::check::files(&s).join("\n");
        assert!(
            files.contains("warning  cluster key") && files.contains("shorter"),
            "{files}"
        );
        std::fs::remove_file(&key).unwrap();
        let files = crate::check::files(&s).join("\n");
        assert!(files.contains("warning  cluster key"), "{files}");
        assert!(!shown.contains("cluster-secret") && !files.contains("short\n"));

        // DNS: refresh defaults, advertise required with an unspecified listen.
        let s = settings(
            "[cluster]\ndns = \"pullgate-peers.pullgate.svc.cluster.local:5001\"\n\
             advertise = \"10.1.2.3:5001\"\nkey = \"/k\"\n",
            Overrides::default(),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let c = s.cluster.clone().unwrap();
        assert_eq!(
            c.members,
            Members::Dns {
                name: ServiceName::parse("pullgate-peers.pullgate.svc.cluster.local:5001").unwrap(),
                refresh: Duration::from_secs(10),
            }
        );
        assert_eq!(
            (c.me, c.listen),
            (peer("10.1.2.3:5001"), default_cluster_listen())
        );
        let shown = crate::check::render(&s);
        assert!(shown.contains("dns = \"pullgate-peers.pullgate.svc.cluster.local:5001\""));
        assert!(shown.contains("refresh = \"10s\""), "{shown}");
        let again = settings(&shown, Overrides::default()).unwrap();
        assert_eq!(format!("{:?}", again.cluster), format!("{:?}", s.cluster));

        let dns = "dns = \"peers.ns.svc:5001\"\nkey = \"/k\"";
        for (bad, why) in [
            ("key = \"/k\"\nadvertise = \"10.0.0.1:5001\"", "needs cluster.peers"),
            (
                "peers = [\"10.0.0.1:5001\"]\ndns = \"p.svc:5001\"\nkey = \"/k\"\nadvertise = \"10.0.0.1:5001\"",
                "not both",
            ),
            (dns, "cluster.advertise is required"),
            ("peers = [\"10.0.0.1:5001\"]\nadvertise = \"10.0.0.1:5001\"", "missing field `key`"),
            ("peers = []\nkey = \"/k\"\nadvertise = \"10.0.0.1:5001\"", "empty"),
            (
                "peers = [\"10.0.0.1:5001\", \"10.0.0.01:5001\"]\nkey = \"/k\"\nadvertise = \"10.0.0.1:5001\"",
                "cluster.peers",
            ),
            (
                "peers = [\"10.0.0.1:5001\", \"[::ffff:10.0.0.1]:5001\"]\nkey = \"/k\"\nadvertise = \"10.0.0.1:5001\"",
                "listed twice",
            ),
            (
                "peers = [\"10.0.0.2:5001\"]\nkey = \"/k\"\nadvertise = \"10.0.0.1:5001\"",
                "not one of cluster.peers",
            ),
            (
                "peers = [\"10.0.0.1:5001\"]\nkey = \"/k\"\nadvertise = \"10.0.0.1:5001\"\nrefresh = \"5s\"",
                "no meaning with cluster.peers",
            ),
            (&format!("{dns}\nadvertise = \"10.0.0.1:5002\""), "port of peers.ns.svc:5001"),
            (&format!("{dns}\nadvertise = \"pullgate-0:5001\""), "IP address"),
            (&format!("{dns}\nadvertise = \"10.0.0.1:5001\"\nrefresh = \"0s\""), "cluster.refresh"),
            (&format!("{dns}\nadvertise = \"10.0.0.1:5001\"\nrefresh = \"2h\""), "1s to 1h"),
            ("dns = \"10.0.0.1:5001\"\nkey = \"/k\"\nadvertise = \"10.0.0.1:5001\"", "list it in peers"),
            ("dns = \"peers.svc\"\nkey = \"/k\"\nadvertise = \"10.0.0.1:5001\"", "no port"),
            (
                "peers = [\"127.0.0.1:5000\"]\nlisten = \"0.0.0.0:5000\"\nkey = \"/k\"\nadvertise = \"127.0.0.1:5000\"",
                "share a port",
            ),
            ("peers = [\"10.0.0.1:5001\"]\nkey = \"/k\"\nadvertise = \"10.0.0.1\"", "cluster.advertise"),
            ("peers = [\"10.0.0.1:5001\"]\nkey = \"/k\"\nadvertise = \"10.0.0.1:5001\"\nsecret = \"x\"", "unknown field"),
        ] {
            let e = format!(
                "{:#}",
                settings(&format!("[cluster]\n{bad}\n"), Overrides::default()).unwrap_err()
            );
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn prefetch_rules_with_defaults_checked_and_shown() {
        let up = "[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n[[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\n";
        let s = settings(
            &format!("{up}[[prefetch]]\nimages = [\"docker.io/library/alpine:3.*\", \"alpine:3.20\"]\n[[prefetch]]\nimages = [\"ghcr.io/org/app:v1.2.3\"]\nplatforms = [\"all\"]\ninterval = \"10m\"\n"),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.prefetch.len(), 2);
        let (a, b) = (&s.prefetch[0], &s.prefetch[1]);
        assert_eq!(a.interval, Duration::from_secs(3600));
        assert_eq!(a.platforms.to_strings(), ["linux/amd64"]);
        assert_eq!(a.images[0].host.as_deref(), Some("docker.io"));
        assert_eq!(b.platforms, Platforms::All);
        assert_eq!(b.interval, Duration::from_secs(600));
        // check-config shows them, as a configuration that yields the same.
        let printed = crate::check::render(&s);
        assert!(printed.contains("[[prefetch]]"), "{printed}");
        let again = settings(&printed, Overrides::default()).unwrap();
        assert_eq!(format!("{again:?}"), format!("{s:?}"), "{printed}");
        assert!(settings("", Overrides::default())
            .unwrap()
            .prefetch
            .is_empty());
        for (bad, says) in [
            ("images = []", "at least one"),
            ("images = [\"alpine\"]", "tag"),
            (
                "images = [\"quay.io/x/y:1\"]",
                "no [[upstream]] is named quay.io",
            ),
            ("images = [\"a:1\"]\nplatforms = [\"linux\"]", "platform"),
            ("images = [\"a:1\"]\nplatforms = []", "platform"),
            ("images = [\"a:1\"]\ninterval = \"0s\"", "1s at least"),
            ("images = [\"a:1\"]\ncron = \"x\"", "cron"),
        ] {
            let err = settings(&format!("{up}[[prefetch]]\n{bad}\n"), Overrides::default())
                .map(|_| ())
                .unwrap_err();
            let err = format!("{err:#}");
            assert!(
                err.contains(says) && err.contains("prefetch"),
                "{bad}: {err}"
            );
        }
    }

    /// docs/operations.md's pre-warming example is a configuration pullgate accepts.
    #[test]
    fn the_guides_prefetch_example_is_valid() {
        let guide = include_str!("../docs/operations.md");
        let section = guide
            .split("## Pre-warming before a rollout")
            .nth(1)
            .expect("the pre-warming section");
        let example = section
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("its [[prefetch]] example");
        let up = "[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n[[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\n";
        let s = settings(&format!("{up}{example}"), Overrides::default()).unwrap();
        assert_eq!(s.prefetch.len(), 2, "{example}");
    }

    /// Tried as a new user would: who may pull and from where, the rest from flags.
    #[test]
    fn only_auth_and_upstreams_with_listen_and_cache_dir_flags() {
        let text = "[auth]\nclient_secrets = [\"/run/secrets/clients\"]\n\n\
                    [[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\n";
        let s = settings(
            text,
            Overrides {
                listen: Some(([0, 0, 0, 0], 5000).into()),
                cache_dir: Some("/var/cache/pullgate".into()),
                upstream: None,
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(s.listen.to_string(), "0.0.0.0:5000");
        assert_eq!(s.cache_dir, PathBuf::from("/var/cache/pullgate"));
        assert_eq!(
            s.auth.client_secrets,
            [PathBuf::from("/run/secrets/clients")]
        );
        assert!(!s.auth.anonymous);
        // The file's list replaces the default one: docker.io is not inherited.
        let names: Vec<_> = s.upstreams.iter().map(|u| u.name.to_string()).collect();
        assert_eq!(names, ["ghcr.io"]);
        // Everything else is the embedded default's.
        assert_eq!(s.tag_policy.default_ttl(), Duration::from_secs(60));
        assert_eq!(s.header_read_timeout, Duration::from_secs(30));

        // Without the flags, the embedded default's listen address and cache directory.
        let s = settings(text, Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(s.cache_dir, PathBuf::from("./pullgate-data"));
    }

    /// Tried as a new user would: a size bound, and `--upstream` re-pointing the embedded
    /// default's upstream (docker.io keeps its name).
    #[test]
    fn only_max_size_with_the_upstream_flag() {
        let s = settings(
            "[cache]\nmax_size = \"10GiB\"\n",
            Overrides {
                upstream: Some("http://127.0.0.1:5001".into()),
                ..Overrides::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(s.cache_limits.map(|l| l.max_bytes()), Some(10 << 30));
        assert_eq!(s.cache_dir, PathBuf::from("./pullgate-data"));
        assert_eq!(s.tag_policy.default_ttl(), Duration::from_secs(60));
        assert_eq!(s.upstreams.len(), 1);
        assert_eq!(s.upstreams[0].name.to_string(), "docker.io");
        assert_eq!(s.upstreams[0].url, "http://127.0.0.1:5001");
        assert!(s.auth.anonymous, "loopback without secrets");
    }

    /// Each absent section and key takes the embedded default's value; a present table
    /// merges key by key; a list replaces the default's.
    #[test]
    fn a_partial_file_is_laid_over_the_embedded_default() {
        let default = settings("", Overrides::default()).unwrap();
        let embedded = FileConfig::load(None)
            .and_then(|c| c.into_settings(Overrides::default()))
            .unwrap();
        assert_eq!(format!("{default:?}"), format!("{embedded:?}"));
        assert_eq!(default.listen.to_string(), "127.0.0.1:5000");

        // A table the file has keeps the default's other keys.
        let s = settings("[server]\nmax_connections = 10\n", Overrides::default()).unwrap();
        assert_eq!(s.max_connections, 10);
        assert_eq!(s.listen.to_string(), "127.0.0.1:5000");
        let s = settings("[cache]\ntag_ttl = \"5m\"\n", Overrides::default()).unwrap();
        assert_eq!(s.tag_policy.default_ttl(), Duration::from_secs(300));
        assert_eq!(s.cache_dir, PathBuf::from("./pullgate-data"));
        // A file's own value wins over the embedded default's.
        let s = settings("[cache]\ndir = \"/c\"\n", Overrides::default()).unwrap();
        assert_eq!(
            (s.cache_dir, s.tag_policy.default_ttl()),
            ("/c".into(), Duration::from_secs(60))
        );
        // Sub-tables merge too: TLS alone keeps the default listen address.
        let s = settings(
            "[server.tls]\ncert = \"/c\"\nkey = \"/k\"\n",
            Overrides::default(),
        )
        .unwrap();
        assert!(s.tls.is_some());
        assert_eq!(s.listen.to_string(), "127.0.0.1:5000");
        // Two upstreams in the file are exactly the upstreams.
        let s = settings(
            "[[upstream]]\nname = \"quay.io\"\nurl = \"https://quay.io\"\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"https://mirror.gcr.io\"\n",
            Overrides::default(),
        )
        .unwrap();
        let names: Vec<_> = s.upstreams.iter().map(|u| u.name.to_string()).collect();
        assert_eq!(names, ["quay.io", "docker.io"]);
        assert_eq!(s.upstreams[1].url, "https://mirror.gcr.io");
        // A file can still leave no upstream only by saying so, and that is refused,
        // with the flag too: it re-points an upstream, it does not make one up.
        for o in [
            Overrides::default(),
            Overrides {
                upstream: Some("http://127.0.0.1:5001".into()),
                ..Overrides::default()
            },
        ] {
            let err = settings("upstream = []\n", o).unwrap_err();
            assert!(
                format!("{err:#}").contains("at least one [[upstream]]"),
                "{err:#}"
            );
        }
    }

    /// Durations, sizes, addresses, upstream names and the scheme are read once into their
    /// types; a bad one is refused naming the key and quoting the value.
    #[test]
    fn typed_values_and_errors_that_name_the_key_and_the_value() {
        let s = settings(
            "[server]\nlisten = \"[::1]:5001\"\nidle_timeout = \"1h 30m\"\n\
             [cache]\nmax_size = 1048576\ntag_ttl = \"90s\"\n\
             [[upstream]]\nname = \"Docker.IO\"\nurl = \"https://x/\"\nread_timeout = \"2m\"\n\
             [auth]\nscheme = \"token\"\ntoken_ttl = \"1h\"\nblock = \"10m\"\n",
            Overrides::default(),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(s.listen, "[::1]:5001".parse::<SocketAddr>().unwrap());
        assert_eq!(s.idle_timeout, Duration::from_secs(5400));
        assert_eq!(s.cache_limits.map(|l| l.max_bytes()), Some(1 << 20));
        assert_eq!(s.tag_policy.default_ttl(), Duration::from_secs(90));
        assert_eq!(s.upstreams[0].name, UpstreamId::parse("docker.io").unwrap());
        assert_eq!(s.upstreams[0].url, "https://x");
        assert_eq!(s.upstreams[0].read_timeout, Duration::from_secs(120));
        assert_eq!(s.auth.scheme, Scheme::Token);
        assert_eq!(s.auth.token_ttl, Duration::from_secs(3600));
        assert_eq!(s.auth.throttle.block, Duration::from_secs(600));

        for (text, key, value) in [
            (
                "[server]\nlisten = \"localhost\"",
                "server.listen",
                "\"localhost\"",
            ),
            ("[server]\nlisten = 5000", "server.listen", "5000"),
            (
                "[server]\ndrain_timeout = \"soon\"",
                "server.drain_timeout",
                "\"soon\"",
            ),
            ("[server]\nidle_timeout = 60", "server.idle_timeout", "60"),
            (
                "[server]\nidle_timeout = \"10ms\"",
                "server.idle_timeout",
                "10ms",
            ),
            (
                "[cache]\ntag_ttl = \"1 fortnight\"",
                "cache.tag_ttl",
                "\"1 fortnight\"",
            ),
            ("[cache]\nmax_size = \"lots\"", "cache.max_size", "\"lots\""),
            ("[cache]\nmax_size = \"1PB\"", "cache.max_size", "\"1PB\""),
            ("[cache]\nmax_size = 0", "cache.max_size", "0"),
            (
                "[[upstream]]\nname = \"a b\"\nurl = \"https://x\"",
                "upstream.name",
                "\"a b\"",
            ),
            (
                "[[upstream]]\nname = \"a\"\nurl = \"https://x\"\nconnect_timeout = \"x\"",
                "upstream.connect_timeout",
                "\"x\"",
            ),
            ("[auth]\nscheme = \"digest\"", "auth.scheme", "digest"),
            (
                "[auth]\ntoken_ttl = \"forever\"",
                "auth.token_ttl",
                "\"forever\"",
            ),
            (
                "[auth]\nfailure_window = \"\"",
                "auth.failure_window",
                "\"\"",
            ),
        ] {
            let err = format!("{:#}", settings(text, Overrides::default()).unwrap_err());
            assert!(err.contains(key), "{text}: {err} does not name {key}");
            assert!(err.contains(value), "{text}: {err} does not quote {value}");
        }
    }

    #[test]
    fn upstream_token_realms_and_private_redirects() {
        let load = |url: &str, extra: &str| {
            FileConfig::parse(&format!(
                "[server]\nlisten = \"127.0.0.1:5000\"\n[cache]\ndir = \"d\"\n[[upstream]]\nname = \"a\"\nurl = \"{url}\"\n{extra}\n"
            ))
            .and_then(|c| c.into_settings(Overrides::default()))
        };
        let u = &load("https://x", "").unwrap().upstreams[0];
        assert!(u.token_realms.is_empty());
        assert_eq!(u.allow_private_redirects, None);
        let s = load(
            "https://registry.gitlab.com",
            "token_realms = [\"https://gitlab.com\"]\nallow_private_redirects = false",
        )
        .unwrap();
        assert_eq!(s.upstreams[0].token_realms, ["https://gitlab.com"]);
        assert_eq!(s.upstreams[0].allow_private_redirects, Some(false));
        // A plain-http realm would carry an https upstream's password in clear text.
        let err = load("https://x", "token_realms = [\"http://auth.x\"]").unwrap_err();
        assert!(format!("{err:#}").contains("plain http"), "{err:#}");
        assert!(load(
            "http://127.0.0.1:1",
            "token_realms = [\"http://127.0.0.1:2\"]"
        )
        .is_ok());
        assert!(load("https://x", "token_realms = [\"auth.x\"]").is_err());
    }

    #[test]
    fn upstream_caps_and_quota_warning() {
        let load = |extra: &str| {
            FileConfig::parse(&format!(
                "[server]\nlisten = \"127.0.0.1:5000\"\n[cache]\ndir = \"d\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n{extra}\n"
            ))
            .and_then(|c| c.into_settings(Overrides::default()))
        };
        let u = load("").unwrap().upstreams.remove(0);
        assert_eq!(u.max_concurrent_requests, None);
        assert_eq!(u.max_bandwidth, None);
        assert_eq!(u.ratelimit_warn_below, 10);
        let s = load(
            "max_concurrent_requests = 16\nmax_bandwidth = \"100MiB\"\nratelimit_warn_below = 0",
        )
        .unwrap();
        let u = &s.upstreams[0];
        assert_eq!(u.max_concurrent_requests, Some(16));
        assert_eq!(u.max_bandwidth, Some(100 << 20));
        assert_eq!(u.ratelimit_warn_below, 0);
        let printed = crate::check::render(&s);
        assert!(
            printed.contains("max_concurrent_requests = 16")
                && printed.contains("max_bandwidth = \"100MiB\"")
                && printed.contains("ratelimit_warn_below = 0"),
            "{printed}"
        );
        let again = FileConfig::parse(&printed)
            .and_then(|c| c.into_settings(Overrides::default()))
            .unwrap();
        assert_eq!(format!("{again:?}"), format!("{s:?}"));
        for bad in [
            "max_concurrent_requests = 0",
            "max_concurrent_requests = 1000000",
            "max_bandwidth = \"0\"",
            "max_bandwidth = \"60KiB\"",
            "max_bandwidth = \"fast\"",
            "ratelimit_warn_below = -1",
            "ratelimit_warn_below = 9999999999",
        ] {
            assert!(load(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn sizes_and_cache_limits() {
        let gib = 1 << 30;
        let cache = |extra: &str| {
            FileConfig::parse(&format!(
                "[server]\nlisten = \"127.0.0.1:5000\"\n[cache]\ndir = \"d\"\n{extra}\n[[upstream]]\nname = \"a\"\nurl = \"https://x\"\n"
            ))
            .and_then(|c| c.into_settings(Overrides::default()))
        };
        assert_eq!(cache("").unwrap().cache_limits, None);
        let l = cache("max_size = \"10GiB\"").unwrap().cache_limits.unwrap();
        assert_eq!(l.max_bytes(), 10 * gib);
        assert_eq!((l.high(), l.low()), (0.95, 0.85));
        let l = cache("max_size = \"100MB\"\nhigh_watermark = 0.9\nlow_watermark = 0.5")
            .unwrap()
            .cache_limits
            .unwrap();
        assert_eq!((l.high_bytes(), l.low_bytes()), (90_000_000, 50_000_000));
        for bad in [
            "max_size = \"lots\"",
            "max_size = \"1GiB\"\nhigh_watermark = 0.5\nlow_watermark = 0.6",
            "max_size = \"1GiB\"\nhigh_watermark = 1.5",
            "max_size = \"1GiB\"\nlow_watermark = 0.99",
            "high_watermark = 0.9",
        ] {
            assert!(cache(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn anonymous_only_on_loopback_unless_explicit() {
        let cfg = |listen: &str, auth: &str| {
            FileConfig::parse(&format!(
                "[server]\nlisten = \"{listen}\"\n[cache]\ndir = \"d\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n[auth]\n{auth}"
            ))
            .and_then(|c| c.into_settings(Overrides::default()))
        };
        assert!(cfg("127.0.0.1:5000", "").unwrap().auth.anonymous);
        let err = cfg("0.0.0.0:5000", "").unwrap_err().to_string();
        assert!(
            err.contains("client_secrets") && err.contains("anonymous = true"),
            "{err}"
        );
        assert!(
            cfg("0.0.0.0:5000", "anonymous = true")
                .unwrap()
                .auth
                .anonymous
        );
        let s = cfg("0.0.0.0:5000", "client_secrets = [\"/s\"]").unwrap();
        assert!(!s.auth.anonymous);
        assert!(s.auth.mirror_hosts.contains(&"0.0.0.0:5000".to_owned()));
        assert!(cfg("0.0.0.0:5000", "anonymous = false").is_err());
        assert!(cfg("127.0.0.1:5000", "scheme = \"digest\"").is_err());
        assert!(cfg(
            "127.0.0.1:5000",
            "[[auth.rule]]\nuser = \"ci\"\nrepositories = [\"quay.io/x/*\"]"
        )
        .is_err());
        let s = cfg(
            "127.0.0.1:5000",
            "scheme = \"token\"\ntoken_ttl = \"2m\"\n[[auth.rule]]\nuser = \"ci\"\nrepositories = [\"docker.io/library/*\"]",
        )
        .unwrap();
        assert_eq!(s.auth.scheme, Scheme::Token);
        assert_eq!(s.auth.token_ttl, Duration::from_secs(120));
        assert_eq!(s.auth.rules.len(), 1);
    }

    /// `check-config` prints TOML that is a configuration yielding the same settings.
    #[test]
    fn effective_settings_round_trip() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for path in [
            root.join("pullgate.toml"),
            root.join("examples/pullgate-auth.toml"),
        ] {
            let settings = FileConfig::load(Some(&path))
                .and_then(|c| c.into_settings(Overrides::default()))
                .unwrap();
            let printed = crate::check::render(&settings);
            let again = FileConfig::parse(&printed)
                .and_then(|c| c.into_settings(Overrides::default()))
                .unwrap_or_else(|e| panic!("{}: {e:#}\n{printed}", path.display()));
            assert_eq!(crate::check::render(&again), printed, "{}", path.display());
            assert_eq!(format!("{again:?}"), format!("{settings:?}"));
        }
        let tls = FileConfig::parse(
            "[server]\nlisten = \"127.0.0.1:1\"\n[server.tls]\ncert = \"/c\"\nkey = \"/k\"\n[cache]\ndir = \"d\"\n[[upstream]]\nname = \"a\"\nurl = \"https://x\"\n",
        )
        .and_then(|c| c.into_settings(Overrides::default()))
        .unwrap();
        assert!(crate::check::render(&tls).contains("[server.tls]\ncert = \"/c\"\nkey = \"/k\""));
    }

    /// docs/configuration.md documents exactly the keys the structs accept, and its full
    /// example is a valid configuration.
    #[test]
    fn reference_documents_every_key() {
        use serde_aux::serde_introspection::serde_introspect;
        let doc = include_str!("../docs/configuration.md");
        let accepted: Vec<String> = [
            ("server", serde_introspect::<ServerSection>()),
            ("server.tls", serde_introspect::<TlsSection>()),
            ("cache", serde_introspect::<CacheSection>()),
            ("upstream", serde_introspect::<UpstreamSection>()),
            ("auth", serde_introspect::<AuthSection>()),
            ("auth.rule", serde_introspect::<RuleSection>()),
            ("cache.tag_rule", serde_introspect::<TagRuleSection>()),
            ("audit", serde_introspect::<AuditSection>()),
            ("prefetch", serde_introspect::<PrefetchSection>()),
            ("trust", serde_introspect::<pullgate_trust::TrustConfig>()),
            ("trust.key", serde_introspect::<pullgate_trust::KeyConfig>()),
            ("trust.ca", serde_introspect::<pullgate_trust::CaConfig>()),
            (
                "trust.rule",
                serde_introspect::<pullgate_trust::RuleConfig>(),
            ),
            ("storage", serde_introspect::<StorageSection>()),
            ("storage.s3", serde_introspect::<S3Section>()),
            ("cluster", serde_introspect::<ClusterSection>()),
        ]
        .iter()
        .flat_map(|(section, fields)| fields.iter().map(move |f| format!("{section}.{f}")))
        // Sub-tables are documented as sections of their own.
        .filter(|k| {
            ![
                "server.tls",
                "auth.rule",
                "cache.tag_rule",
                "trust.key",
                "trust.ca",
                "trust.rule",
                "storage.s3",
            ]
            .contains(&k.as_str())
        })
        .collect();
        let top: Vec<&str> = serde_introspect::<FileConfig>().to_vec();
        assert_eq!(
            top,
            [
                "server", "cache", "upstream", "auth", "audit", "trust", "prefetch", "storage",
                "cluster"
            ]
        );

        let documented: Vec<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
            .map(str::to_owned)
            .collect();
        for key in &accepted {
            assert!(documented.contains(key), "{key} is not documented");
        }
        for key in &documented {
            assert!(
                accepted.contains(key),
                "{key} is documented but not accepted"
            );
        }
        assert_eq!(
            documented.len(),
            accepted.len(),
            "a key is documented twice"
        );

        let example = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("the complete example");
        let file: toml::Table = toml::from_str(example).unwrap();
        let s = FileConfig::parse(example)
            .and_then(|c| c.into_settings(Overrides::default()))
            .unwrap();
        assert!(s.tls.is_some() && s.audit.path.is_some() && !s.auth.anonymous);
        // The example sets every key.
        let mut set = Vec::new();
        for (section, value) in &file {
            let tables = match value {
                toml::Value::Array(a) => a.iter().filter_map(|v| v.as_table()).collect(),
                toml::Value::Table(t) => vec![t],
                _ => vec![],
            };
            for t in tables {
                for (k, v) in t {
                    match v {
                        toml::Value::Table(sub) => {
                            set.extend(sub.keys().map(|s| format!("{section}.{k}.{s}")))
                        }
                        toml::Value::Array(a)
                            if a.iter().all(|v| v.is_table()) && !a.is_empty() =>
                        {
                            for sub in a.iter().filter_map(|v| v.as_table()) {
                                set.extend(sub.keys().map(|s| format!("{section}.{k}.{s}")))
                            }
                        }
                        _ => set.push(format!("{section}.{k}")),
                    }
                }
            }
        }
        // `[storage.s3]` cannot share the complete example (a bucket is not bounded by
        // `cache.max_size` yet): the S3 example after it sets every storage key; a cluster
        // shares the bucket, so `[cluster]` is there too (with `dns`), and `peers`, which
        // excludes `dns`, in a third example.
        for key in accepted
            .iter()
            .filter(|k| !k.starts_with("storage.") && !k.starts_with("cluster."))
        {
            assert!(set.contains(key), "the complete example lacks {key}");
        }
        let example = doc
            .split("```toml\n")
            .nth(2)
            .and_then(|rest| rest.split("```").next())
            .expect("the S3 example");
        let s = FileConfig::parse(example)
            .and_then(|c| c.into_settings(Overrides::default()))
            .unwrap();
        assert!(s.storage.is_some());
        let file: toml::Table = toml::from_str(example).unwrap();
        let storage = file["storage"].as_table().unwrap();
        let mut set: Vec<String> = storage
            .iter()
            .filter(|(_, v)| !v.is_table())
            .map(|(k, _)| format!("storage.{k}"))
            .collect();
        set.extend(
            storage["s3"]
                .as_table()
                .unwrap()
                .keys()
                .map(|k| format!("storage.s3.{k}")),
        );
        for key in accepted.iter().filter(|k| k.starts_with("storage.")) {
            assert!(set.contains(key), "the S3 example lacks {key}");
        }
        assert!(s.cluster.is_some());
        let mut cluster: Vec<String> = file["cluster"]
            .as_table()
            .unwrap()
            .keys()
            .map(|k| format!("cluster.{k}"))
            .collect();
        let example = doc
            .split("```toml\n")
            .nth(3)
            .and_then(|rest| rest.split("```").next())
            .expect("the static peers example");
        let s = FileConfig::parse(example)
            .and_then(|c| c.into_settings(Overrides::default()))
            .unwrap();
        assert!(matches!(
            s.cluster.map(|c| c.members),
            Some(Members::Static(_))
        ));
        let file: toml::Table = toml::from_str(example).unwrap();
        cluster.extend(
            file["cluster"]
                .as_table()
                .unwrap()
                .keys()
                .map(|k| format!("cluster.{k}")),
        );
        for key in accepted.iter().filter(|k| k.starts_with("cluster.")) {
            assert!(cluster.contains(key), "no cluster example sets {key}");
        }
    }

    /// Every default docs/configuration.md writes as a value (`"30s"`, `4096`, `[]`) is the
    /// one in effect when a file leaves the key out, as `check-config` shows it. Defaults
    /// written as prose ("required", "none (unbounded)") are not values to compare.
    #[test]
    fn documented_defaults_are_the_effective_ones() {
        let doc = include_str!("../docs/configuration.md");
        // max_size has no default; set, it makes the watermarks' defaults show.
        let s = settings("[cache]\nmax_size = \"1GiB\"\n", Overrides::default()).unwrap();
        let shown: Table = crate::check::render(&s).parse().unwrap();
        // `[storage.s3]` shows only with the S3 backend: its defaults from a bucket alone.
        let s3 = settings(
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"pullgate\"\n",
            Overrides::default(),
        )
        .unwrap();
        let shown_s3: Table = crate::check::render(&s3).parse().unwrap();
        // `[cluster]` shows only when configured: with DNS, so that `refresh` shows too.
        let cluster = settings(
            "[cluster]\ndns = \"peers.svc:5001\"\nadvertise = \"10.0.0.1:5001\"\nkey = \"/k\"\n",
            Overrides::default(),
        )
        .unwrap();
        let shown_cluster: Table = crate::check::render(&cluster).parse().unwrap();
        // Durations are compared as durations: the doc says "60s", check-config "1m".
        let same = |a: &Value, b: &Value| match (a.as_str(), b.as_str()) {
            (Some(x), Some(y)) => {
                match (humantime::parse_duration(x), humantime::parse_duration(y)) {
                    (Ok(x), Ok(y)) => x == y,
                    _ => x == y,
                }
            }
            _ => a == b,
        };
        let mut checked = Vec::new();
        for line in doc.lines() {
            let Some(row) = line.strip_prefix("| `") else {
                continue;
            };
            let cells: Vec<&str> = row.split(" | ").collect();
            let key = cells[0].trim_end_matches('`');
            let Some(literal) = cells[2].strip_prefix('`').and_then(|d| d.split('`').next()) else {
                continue;
            };
            let want = format!("v = {literal}")
                .parse::<Table>()
                .unwrap_or_else(|e| panic!("{key}: default {literal} is not a TOML value: {e}"))
                .remove("v")
                .unwrap();
            let mut parts = key.split('.');
            let table = if key.starts_with("storage.s3.") {
                &shown_s3
            } else if key.starts_with("cluster.") {
                &shown_cluster
            } else {
                &shown
            };
            let mut at = &table[parts.next().unwrap()];
            for part in parts {
                // [[upstream]]: the embedded default's one.
                if let Value::Array(list) = at {
                    at = &list[0];
                }
                at = at
                    .get(part)
                    .unwrap_or_else(|| panic!("check-config does not show {key}"));
            }
            assert!(
                same(at, &want),
                "{key}: documented default {literal}, in effect {at}"
            );
            checked.push(key);
        }
        assert!(checked.len() >= 20, "{checked:?}");
    }

    #[test]
    fn tag_rules_in_order_with_never_or_a_duration() {
        let s = settings(
            "[cache]\ntag_ttl = \"2m\"\n\
             [[cache.tag_rule]]\nimages = [\"docker.io/library/*:v*\"]\nttl = \"never\"\n\
             [[cache.tag_rule]]\nimages = [\"docker.io/**:latest\", \"index.docker.io/team/*\"]\nttl = \"10s\"\n",
            Overrides::default(),
        )
        .unwrap();
        let p = &s.tag_policy;
        assert_eq!(p.default_ttl(), Duration::from_secs(120));
        assert_eq!(p.rules().len(), 2);
        assert_eq!(p.rules()[0].ttl, TagTtl::Never);
        assert_eq!(p.rules()[1].ttl, TagTtl::After(Duration::from_secs(10)));
        assert_eq!(
            p.decide("docker.io", "library/alpine", "v3").ttl,
            TagTtl::Never
        );
        assert_eq!(
            p.decide("docker.io", "team/app", "1.0").ttl,
            TagTtl::After(Duration::from_secs(10))
        );
        assert_eq!(
            p.decide("docker.io", "library/alpine", "3.20").ttl,
            TagTtl::After(Duration::from_secs(120))
        );
        // check-config prints them back as rules that read the same.
        let printed = crate::check::render(&s);
        assert!(printed.contains("[[cache.tag_rule]]"), "{printed}");
        let again = FileConfig::parse(&printed)
            .and_then(|c| c.into_settings(Overrides::default()))
            .unwrap();
        assert_eq!(again.tag_policy, s.tag_policy);

        for (bad, says) in [
            (
                "images = [\"docker.io/library/*\"]\nttl = \"forever\"",
                "neither \"never\"",
            ),
            ("images = []\nttl = \"never\"", "between 1 and"),
            (
                "images = [\"quay.io/x/*\"]\nttl = \"never\"",
                "configured upstream",
            ),
            (
                "images = [\"alpine:v1\"]\nttl = \"never\"",
                "<upstream>/<repository>",
            ),
            (
                "images = [\"docker.io/x:a/b\"]\nttl = \"1h\"",
                "docker.io/x:a/b",
            ),
            ("image = [\"docker.io/x\"]\nttl = \"1h\"", "unknown field"),
            ("images = [\"docker.io/x\"]", "missing field `ttl`"),
        ] {
            let e = settings(
                &format!("[[cache.tag_rule]]\n{bad}\n"),
                Overrides::default(),
            )
            .expect_err(bad);
            assert!(format!("{e:#}").contains(says), "{bad}: {e:#}");
        }
    }

    /// The "Pinning tags" example of docs/operations.md is a valid configuration (with the
    /// upstreams its patterns name) and does what the text says.
    #[test]
    fn the_pinning_example_in_operations_is_valid() {
        let doc = include_str!("../docs/operations.md");
        let example = doc
            .split("### Pinning tags")
            .nth(1)
            .and_then(|rest| rest.split("```toml\n").nth(1))
            .and_then(|rest| rest.split("```").next())
            .expect("the pinning example");
        let s = settings(
            &format!(
                "{example}\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n\
                 [[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\n"
            ),
            Overrides::default(),
        )
        .unwrap();
        let p = &s.tag_policy;
        assert_eq!(
            p.decide("docker.io", "library/alpine", "v3.20").ttl,
            TagTtl::Never
        );
        assert_eq!(
            p.decide("ghcr.io", "org/team/app", "v1.2.3").ttl,
            TagTtl::Never
        );
        assert_eq!(
            p.decide("ghcr.io", "org/app", "latest").ttl,
            TagTtl::After(Duration::from_secs(10))
        );
        assert_eq!(
            p.decide("docker.io", "library/alpine", "3.20").ttl,
            TagTtl::After(Duration::from_secs(60))
        );
    }

    #[test]
    fn every_file_in_config_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = 0;
        for dir in [root.clone(), root.join("examples")] {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                match path.extension().and_then(|e| e.to_str()) {
                    Some("toml") => {
                        FileConfig::load(Some(&path))
                            .and_then(|c| c.into_settings(Overrides::default()))
                            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                    }
                    Some("dockerconfigjson") => {
                        let c = pullgate_credentials::DockerConfig::load(&path)
                            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                        assert!(!c.is_empty());
                    }
                    _ => continue,
                }
                seen += 1;
            }
        }
        assert!(seen >= 4);
    }

    #[test]
    fn connection_caps_proxies_and_realm() {
        let cfg = |server: &str, auth: &str| {
            FileConfig::parse(&format!(
                "[server]\nlisten = \"127.0.0.1:5000\"\n{server}\n[cache]\ndir = \"d\"\n[[upstream]]\nname = \"a\"\nurl = \"https://x\"\n[auth]\n{auth}"
            ))
            .and_then(|c| c.into_settings(Overrides::default()))
        };
        let s = cfg("", "").unwrap();
        assert_eq!(s.max_connections_per_address, 64);
        let exempt: Vec<String> = s
            .connection_limit_exempt
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(exempt, ["127.0.0.1", "::1"]);
        assert!(s.trusted_proxies.is_empty() && s.auth.realm.is_none());

        let s = cfg(
            "max_connections_per_address = 8\nconnection_limit_exempt = []\ntrusted_proxies = [\"10.0.0.0/8\", \"fd00::1\"]",
            "scheme = \"token\"\nrealm = \"https://mirror.example.com/token\"",
        )
        .unwrap();
        assert_eq!(s.max_connections_per_address, 8);
        assert!(s.connection_limit_exempt.is_empty());
        assert!(s.trusted_proxies[0].contains("10.2.3.4".parse().unwrap()));
        assert_eq!(
            s.auth.realm.as_ref().map(|r| r.as_str()),
            Some("https://mirror.example.com/token")
        );
        // check-config prints them back as a configuration that yields the same.
        let printed = crate::check::render(&s);
        let again = FileConfig::parse(&printed)
            .and_then(|c| c.into_settings(Overrides::default()))
            .unwrap();
        assert_eq!(format!("{again:?}"), format!("{s:?}"), "{printed}");
        for (server, auth) in [
            ("max_connections_per_address = 0", ""),
            ("trusted_proxies = [\"10.0.0.0/40\"]", ""),
            ("trusted_proxies = [\"proxy.example\"]", ""),
            ("connection_limit_exempt = [\"\"]", ""),
            ("", "realm = \"mirror.example.com/token\""),
            ("", "realm = \"https://h/\\\"x\""),
        ] {
            assert!(cfg(server, auth).is_err(), "accepted {server:?} {auth:?}");
        }
    }
}
