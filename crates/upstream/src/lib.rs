//! Talking to one upstream registry over HTTP, as the mirror needs it.
//!
//! What it is: [`Upstream`], built from an [`UpstreamConfig`], with `HEAD`/`GET` of
//! manifests ([`ManifestHead`], [`FetchedManifest`]), blobs (size, or a [`BlobDownload`]
//! streamed chunk by chunk, never buffered) and bounded pass-through of small listings
//! ([`Passthrough`]: tags, referrers). Behind those calls:
//!
//! - authentication: the first request goes anonymous (or with a cached token); a 401's
//!   challenge is answered once, by the Bearer token handshake (tokens cached per scope
//!   until shortly before they expire; concurrent challenges for one scope share one
//!   handshake) or by Basic, with the upstream's credentials looked
//!   up on every use from a [`SecretSource`](pullgate_credentials::SecretSource) so secret
//!   rotation takes effect without a restart;
//! - redirects followed by hand (`transport.rs`), so `Authorization` never leaves the
//!   upstream's origin (blob redirects to a CDN get none); manifests, tags and referrers
//!   follow only same-origin redirects; blob redirects never reach loopback, link-local or
//!   private addresses from an upstream that is not itself on one (`guard.rs`: checked at
//!   resolution, so the addresses checked are the ones connected to);
//! - the upstream's credentials go to its own origin only, or to token realms the config
//!   lists for it; any other realm is asked for an anonymous token;
//! - blobs bounded by the maximum blob size: refused by `Content-Length`, cut off with
//!   [`UpstreamError::BlobTooLarge`] when a chunked body passes it;
//! - retries of connect failures and 502/503/504 before any byte reaches the caller;
//! - decoding of upstream answers into [`UpstreamError`], whose messages never contain
//!   credentials, tokens or signed query strings, and whose [`Cause`] and [`ErrorKind`]
//!   are decided where the failure happens.
//!
//! What it is not: no caching of content, no digest verification (the store verifies as it
//! writes), no knowledge of clients. reqwest lives here and nowhere else in the workspace.

mod auth;
mod error;
mod guard;
mod transport;

pub use error::{Cause, ErrorCounts, ErrorKind, RefusedRedirect, UpstreamError};

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header::{CONTENT_TYPE, LINK};
use http::Method;
use pullgate_credentials::SecretSource;
use pullgate_oci::{media_types, Digest, PullScope, Reference, RepoName, UpstreamId};
use reqwest::Url;

use crate::guard::Guard;
use crate::transport::{content_length, header_text, host_of, read_bounded, Follow};

/// Largest tags list or referrers index passed through.
const PASSTHROUGH_LIMIT: usize = 4 * 1024 * 1024;

/// Longest media type we believe; real ones are under 100 bytes.
const MAX_MEDIA_TYPE_LEN: usize = 256;

/// Longest `Link` header passed on. Pagination links are short; a longer one is refused
/// rather than truncated, since a cut link would silently end a client's listing.
const MAX_LINK_LEN: usize = 8 * 1024;

/// The referrers API's answer to a filtered query.
const FILTERS_APPLIED: &str = "oci-filters-applied";

/// Longest `OCI-Filters-Applied` passed on (the spec defines one filter, `artifactType`).
const MAX_FILTERS_LEN: usize = 256;

/// The default maximum blob size: larger than any layer seen in practice, small enough
/// that an endless body cannot fill a cache disk.
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 32 * 1024 * 1024 * 1024;

/// Docker Hub's token service, which serves the realm of `registry-1.docker.io`.
const DOCKER_HUB_REALM: &str = "https://auth.docker.io";

/// Upper bound for the token handshake as a whole. The configured timeouts bound each
/// connect and read; this one keeps a trickling token server from holding a pull forever.
const MAX_TOKEN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where an upstream is and how to talk to it.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// The upstream's name in the mirror, e.g. `docker.io` or `127.0.0.1:5000`.
    pub name: UpstreamId,
    /// Its base URL: `https://registry-1.docker.io` or `http://127.0.0.1:5000`.
    pub url: String,
    /// Credentials for it, looked up by the URL's host on every request.
    pub credentials: Option<SecretSource>,
    pub connect_timeout: Duration,
    /// Longest wait for any single read (response headers or the next body chunk).
    pub read_timeout: Duration,
    pub user_agent: String,
    /// Token realms besides the upstream's own origin to which its credentials may go
    /// (Basic, in the token handshake), as origins: `https://auth.example.com`. Docker
    /// Hub's `https://auth.docker.io` is allowed for a Docker Hub upstream without being
    /// listed. Any other realm a challenge names is asked for an anonymous token.
    pub token_realms: Vec<String>,
    /// Blob redirects (and unlisted token realms) to loopback, link-local, private or
    /// unspecified addresses: `None` allows them only when the upstream itself is on
    /// such an address, `Some(true)` always, `Some(false)` never.
    pub allow_private_redirects: Option<bool>,
    /// Largest blob fetched, in bytes ([`DEFAULT_MAX_BLOB_SIZE`] unless configured).
    pub max_blob_size: u64,
}

/// One upstream registry. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Upstream {
    name: UpstreamId,
    /// The validated base URL, kept for its origin (where credentials may go).
    base: Url,
    /// `base` as text without a trailing slash, to which `/v2/...` paths are appended.
    base_text: String,
    /// Host (with port if not default) under which credentials are looked up.
    cred_host: String,
    docker_hub: bool,
    credentials: Option<SecretSource>,
    /// Origins besides `base` whose token realms get our credentials.
    token_realms: Vec<Url>,
    /// For the upstream's own origin and its allowed token realms.
    client: reqwest::Client,
    /// For every other host the upstream points us at (blob redirects, unlisted realms):
    /// its resolver refuses internal addresses while `guard` says so.
    guarded_client: reqwest::Client,
    guard: Arc<Guard>,
    max_blob_size: u64,
    tokens: auth::TokenCache,
    /// Token handshakes in flight, by scope.
    token_flights: pullgate_flights::Flights<PullScope, Result<http::HeaderValue, UpstreamError>>,
    /// Set once the upstream answered a Basic challenge, so later requests send Basic
    /// up front instead of paying a 401 each.
    wants_basic: AtomicBool,
    token_timeout: Duration,
    read_timeout: Duration,
    /// Final failures of calls (after retries), by kind.
    errors: Arc<ErrorCounts>,
    /// Until when the upstream asked us (429 with `Retry-After`) to leave it alone.
    backoff: transport::Backoff,
}

/// What a manifest `HEAD` tells: enough to see whether a cached tag is still current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    /// From `Docker-Content-Digest`; `None` if missing or unparseable.
    pub digest: Option<Digest>,
    /// From `Content-Type`, without parameters.
    pub media_type: Option<String>,
    /// From `Content-Length`.
    pub size: Option<u64>,
}

/// A manifest's bytes as the upstream sent them (unverified).
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    /// From `Content-Type`, without parameters.
    pub media_type: Option<String>,
    /// From `Docker-Content-Digest`, if present and parseable.
    pub digest: Option<Digest>,
}

/// A blob's body as it arrives.
pub struct BlobDownload {
    /// From `Content-Length`; `None` when the upstream sends the body chunked.
    pub size: Option<u64>,
    pub stream: BlobBody,
}

/// Chunks of a blob as they arrive. An error ends it; a body cut short by the upstream
/// ends in an error too (hyper checks `Content-Length`), never in a clean short stream.
pub type BlobBody =
    Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, UpstreamError>> + Send + 'static>>;

/// A small upstream answer handed to the client as is (tags list, referrers).
#[derive(Debug, Clone)]
pub struct Passthrough {
    pub status: u16,
    pub content_type: Option<String>,
    /// The pagination `Link` header, naming the upstream's repository path.
    pub link: Option<String>,
    /// `OCI-Filters-Applied` (referrers): which query filters the upstream applied, so the
    /// client knows not to filter again.
    pub filters_applied: Option<String>,
    pub body: Bytes,
}

impl Upstream {
    /// Validate the URL and the token realms, and build the two HTTP clients. Fails on a URL
    /// that is not plain `http(s)://host[:port][/path]` (credentials in the URL are
    /// refused: they belong in the secret, and would otherwise show up wherever the URL is
    /// logged), and on a realm that is not an http(s) origin or would downgrade https.
    pub fn new(config: UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let base = parse_base(&config.url)?;
        let host = base.host_str().unwrap_or("");
        let hub_host = pullgate_oci::is_docker_hub(host);
        let docker_hub = hub_host || config.name.is(pullgate_oci::DOCKER_HUB);
        // Docker Hub's credentials are filed under `docker.io` whichever alias the URL uses.
        let cred_host = if hub_host {
            pullgate_oci::DOCKER_HUB.to_owned()
        } else {
            host_of(&base)
        };
        let token_realms = allowed_realms(&base, hub_host, &config.token_realms)?;
        let guard = Guard::new(&base, config.allow_private_redirects);
        let client = build_client(&config, guard.recording())?;
        let guarded_client = build_client(&config, guard.guarded())?;
        let token_timeout = (config.connect_timeout + config.read_timeout).min(MAX_TOKEN_TIMEOUT);
        let base_text = base.as_str().trim_end_matches('/').to_owned();
        Ok(Upstream {
            name: config.name,
            base,
            base_text,
            cred_host,
            docker_hub,
            credentials: config.credentials,
            token_realms,
            client,
            guarded_client,
            guard,
            max_blob_size: config.max_blob_size,
            tokens: auth::TokenCache::new(),
            token_flights: pullgate_flights::Flights::new(),
            wants_basic: AtomicBool::new(false),
            token_timeout,
            read_timeout: config.read_timeout,
            errors: Arc::default(),
            backoff: transport::Backoff::default(),
        })
    }

    /// The upstream's name in the mirror, as text (log fields, metric labels).
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// Longest wait for any single read from this upstream.
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// The upstream's identity: what the cache records content as coming from.
    pub fn id(&self) -> &UpstreamId {
        &self.name
    }

    /// Failures talking to this upstream, by kind. The mirror adds the ones only it can
    /// see (content that does not match its digest).
    pub fn errors(&self) -> &ErrorCounts {
        &self.errors
    }

    /// Count a call's failure, if it failed.
    fn counted<T>(&self, r: Result<T, UpstreamError>) -> Result<T, UpstreamError> {
        if let Err(e) = &r {
            self.errors.record_error(e);
        }
        r
    }

    /// Whether this is Docker Hub (which puts single-component names under `library/`).
    pub fn is_docker_hub(&self) -> bool {
        self.docker_hub
    }

    /// `HEAD` a manifest: its digest, type and size, without the body. Docker Hub does not
    /// count these against the pull rate limit.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestHead, UpstreamError> {
        self.counted(
            async {
                let url = self.url(repo, &format!("manifests/{reference}"))?;
                let response = self
                    .request(
                        Method::HEAD,
                        url,
                        Some(&manifest_accept()),
                        &PullScope::repository(repo),
                        Follow::SameOrigin,
                    )
                    .await?;
                let headers = response.headers();
                Ok(ManifestHead {
                    digest: docker_content_digest(headers),
                    media_type: media_type(headers),
                    size: content_length(headers),
                })
            }
            .await,
        )
    }

    /// `GET` a manifest, refusing one larger than `limit` bytes.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        limit: usize,
    ) -> Result<FetchedManifest, UpstreamError> {
        self.counted(
            async {
                let url = self.url(repo, &format!("manifests/{reference}"))?;
                let response = self
                    .request(
                        Method::GET,
                        url,
                        Some(&manifest_accept()),
                        &PullScope::repository(repo),
                        Follow::SameOrigin,
                    )
                    .await?;
                let digest = docker_content_digest(response.headers());
                let media_type = media_type(response.headers());
                let host = host_of(response.url());
                let bytes = read_bounded(response, limit, &host).await?;
                Ok(FetchedManifest {
                    bytes,
                    media_type,
                    digest,
                })
            }
            .await,
        )
    }

    /// `HEAD` a blob: its size. An answer without `Content-Length` is a protocol error,
    /// since the size is all this is asked for.
    pub async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64, UpstreamError> {
        self.counted(
            async {
                let url = self.url(repo, &format!("blobs/{digest}"))?;
                let response = self
                    .request(
                        Method::HEAD,
                        url,
                        None,
                        &PullScope::repository(repo),
                        Follow::Blob,
                    )
                    .await?;
                content_length(response.headers()).ok_or_else(|| {
                    UpstreamError::Protocol("blob HEAD answered without a Content-Length".into())
                })
            }
            .await,
        )
    }

    /// `GET` a blob as a stream. Transient failures are retried until the response headers
    /// arrive; once this returns, errors reach the caller through the stream.
    pub async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobDownload, UpstreamError> {
        self.counted(
            async {
                let url = self.url(repo, &format!("blobs/{digest}"))?;
                let response = self
                    .request(
                        Method::GET,
                        url,
                        None,
                        &PullScope::repository(repo),
                        Follow::Blob,
                    )
                    .await?;
                let size = content_length(response.headers());
                let limit = self.max_blob_size;
                if size.is_some_and(|s| s > limit) {
                    return Err(UpstreamError::BlobTooLarge { limit });
                }
                // Name the host that serves the bytes (the CDN after a redirect), never its query.
                let host = host_of(response.url());
                let errors = Arc::clone(&self.errors);
                // A body without `Content-Length` is counted as it arrives: past the limit,
                // the stream fails and ends (dropping the connection), so no fill writes
                // more than `limit` bytes.
                let body = response.bytes_stream();
                let stream = futures_util::stream::unfold(Some((body, 0u64)), move |state| {
                    let host = host.clone();
                    let errors = Arc::clone(&errors);
                    async move {
                        let (mut body, so_far) = state?;
                        let (item, next) = match body.next().await? {
                            Err(e) => (Err(error::from_reqwest(e, &host)), Some((body, so_far))),
                            Ok(chunk) => {
                                let total = so_far.saturating_add(chunk.len() as u64);
                                if total > limit {
                                    (Err(UpstreamError::BlobTooLarge { limit }), None)
                                } else {
                                    (Ok(chunk), Some((body, total)))
                                }
                            }
                        };
                        if let Err(e) = &item {
                            errors.record_error(e);
                        }
                        Some((item, next))
                    }
                });
                Ok(BlobDownload {
                    size,
                    // Fused: callers may poll again after the end, which `unfold` forbids.
                    stream: Box::pin(stream.fuse()),
                })
            }
            .await,
        )
    }

    /// `GET {url}/v2/{repo}/{suffix_and_query}` (e.g. `tags/list?n=2&last=a`) and return
    /// the 2xx answer for the client, body bounded to 4 MiB. Non-2xx answers are errors.
    pub async fn get_passthrough(
        &self,
        repo: &RepoName,
        suffix_and_query: &str,
        accept: Option<&str>,
    ) -> Result<Passthrough, UpstreamError> {
        self.counted(
            async {
                check_suffix(suffix_and_query)?;
                let url = self.url(repo, suffix_and_query)?;
                let response = self
                    .request(
                        Method::GET,
                        url,
                        accept,
                        &PullScope::repository(repo),
                        Follow::SameOrigin,
                    )
                    .await?;
                let status = response.status().as_u16();
                let headers = response.headers();
                let content_type =
                    header_text(headers, CONTENT_TYPE, MAX_MEDIA_TYPE_LEN).map(str::to_owned);
                let link = match headers.get(LINK) {
                    None => None,
                    Some(v) if v.len() > MAX_LINK_LEN => {
                        return Err(UpstreamError::Protocol("Link header is too long".into()))
                    }
                    Some(v) => Some(
                        v.to_str()
                            .map_err(|_| UpstreamError::Protocol("Link header is not text".into()))?
                            .to_owned(),
                    ),
                };
                // A list of filter names: a longer or odd value is dropped, not passed on.
                let filters_applied = header_text(headers, FILTERS_APPLIED, MAX_FILTERS_LEN)
                    .filter(|v| {
                        v.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b" ,-_.".contains(&b))
                    })
                    .map(str::to_owned);
                let host = host_of(response.url());
                let body = read_bounded(response, PASSTHROUGH_LIMIT, &host).await?;
                Ok(Passthrough {
                    status,
                    content_type,
                    link,
                    filters_applied,
                    body,
                })
            }
            .await,
        )
    }

    fn url(&self, repo: &RepoName, suffix: &str) -> Result<Url, UpstreamError> {
        Url::parse(&format!("{}/v2/{repo}/{suffix}", self.base_text))
            .map_err(|_| UpstreamError::Protocol("cannot build the upstream URL".into()))
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("url", &self.base_text)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for BlobDownload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobDownload")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// One of the upstream's two HTTP clients, alike but for the resolver.
fn build_client(
    config: &UpstreamConfig,
    resolver: Arc<guard::Resolver>,
) -> Result<reqwest::Client, UpstreamError> {
    reqwest::Client::builder()
        // Followed by hand in `transport`, to drop `Authorization` on cross-origin hops
        // and to keep manifests, tags and referrers within the origin.
        .redirect(reqwest::redirect::Policy::none())
        // Bytes must arrive exactly as the upstream stored them: digests cover them.
        .no_gzip()
        .no_brotli()
        .no_deflate()
        .no_zstd()
        .dns_resolver(resolver)
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.read_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(32)
        .tcp_keepalive(Duration::from_secs(60))
        .user_agent(config.user_agent.clone())
        .build()
        .map_err(|e| {
            UpstreamError::Protocol(format!("cannot build the HTTP client: {}", e.without_url()))
        })
}

/// The token realms, besides the upstream's own origin, that may receive its credentials:
/// the configured ones, and Docker Hub's token service when the URL is Docker Hub's (not
/// for a mirror standing in under the name `docker.io`: its credentials are not Hub's). A plain `http`
/// realm for an `https` upstream is refused: it would downgrade the credentials' transport.
fn allowed_realms(
    base: &Url,
    hub_host: bool,
    configured: &[String],
) -> Result<Vec<Url>, UpstreamError> {
    let invalid = |why: String| UpstreamError::Protocol(format!("invalid token realm: {why}"));
    let mut realms = Vec::with_capacity(configured.len() + 1);
    if hub_host {
        realms.push(Url::parse(DOCKER_HUB_REALM).map_err(|_| invalid(DOCKER_HUB_REALM.into()))?);
    }
    for text in configured {
        let url = Url::parse(text).map_err(|_| invalid(format!("{text:?} is not a URL")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(invalid(format!("{text:?} is not an http(s) origin")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(format!("{text:?} holds credentials")));
        }
        if base.scheme() == "https" && url.scheme() != "https" {
            return Err(invalid(format!(
                "{text:?} is plain http for an https upstream"
            )));
        }
        realms.push(url);
    }
    Ok(realms)
}

/// The configured base URL, checked.
fn parse_base(text: &str) -> Result<Url, UpstreamError> {
    let invalid = |why: &str| UpstreamError::Protocol(format!("invalid upstream url: {why}"));
    let url = Url::parse(text).map_err(|_| invalid("not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "credentials belong in the credentials secret, not the URL",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("no query or fragment allowed"));
    }
    Ok(url)
}

/// The pass-through suffix is built by the mirror, but its query comes from a client:
/// refuse anything that could make the URL leave `/v2/<repo>/` (dot segments would be
/// normalised away by URL parsing) or carry a fragment.
fn check_suffix(suffix_and_query: &str) -> Result<(), UpstreamError> {
    let path = suffix_and_query
        .split_once('?')
        .map_or(suffix_and_query, |(p, _)| p);
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path
            .split('/')
            .any(|seg| seg == "." || seg == ".." || seg.contains('%'))
        || suffix_and_query.contains('#');
    if bad {
        return Err(UpstreamError::Protocol("invalid pass-through path".into()));
    }
    Ok(())
}

/// Every manifest type, so the upstream answers with what it has and one cached copy
/// serves all clients (the mirror negotiates with clients itself).
fn manifest_accept() -> String {
    media_types::ALL_MANIFESTS.join(", ")
}

fn docker_content_digest(headers: &http::HeaderMap) -> Option<Digest> {
    // sha512 hex is 128 characters; a valid value is never longer than this.
    header_text(headers, "docker-content-digest", 200).and_then(|v| Digest::parse(v.trim()).ok())
}

/// `Content-Type` without parameters (`application/json; charset=utf-8` → `application/json`).
fn media_type(headers: &http::HeaderMap) -> Option<String> {
    let value = header_text(headers, CONTENT_TYPE, MAX_MEDIA_TYPE_LEN)?;
    let essence = value.split(';').next().unwrap_or("").trim();
    (!essence.is_empty()).then(|| essence.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, url: &str) -> UpstreamConfig {
        UpstreamConfig {
            name: UpstreamId::parse(name).unwrap(),
            url: url.into(),
            credentials: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            user_agent: "test".into(),
            token_realms: Vec::new(),
            allow_private_redirects: None,
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
        }
    }

    #[test]
    fn urls() {
        let cases: &[(&str, bool)] = &[
            ("https://registry-1.docker.io", true),
            ("http://127.0.0.1:5000", true),
            ("http://127.0.0.1:5000/", true),
            ("https://example.com/prefix/", true),
            ("ftp://example.com", false),
            ("example.com", false),
            ("https://user:pw@example.com", false),
            ("https://example.com/?a=b", false),
            ("https://example.com/#x", false),
            ("", false),
        ];
        for (url, ok) in cases {
            assert_eq!(Upstream::new(config("x", url)).is_ok(), *ok, "{url}");
        }
        let u = Upstream::new(config("x", "https://example.com/prefix/")).unwrap();
        let repo = RepoName::parse("a/b").unwrap();
        assert_eq!(
            u.url(&repo, "tags/list?n=1").unwrap().as_str(),
            "https://example.com/prefix/v2/a/b/tags/list?n=1"
        );
    }

    #[test]
    fn docker_hub() {
        let cases: &[(&str, &str, bool, &str)] = &[
            (
                "docker.io",
                "https://registry-1.docker.io",
                true,
                "docker.io",
            ),
            ("hub", "https://index.docker.io", true, "docker.io"),
            ("hub", "https://docker.io/", true, "docker.io"),
            ("docker.io", "https://mirror.gcr.io", true, "mirror.gcr.io"),
            ("ghcr.io", "https://ghcr.io", false, "ghcr.io"),
            ("local", "http://127.0.0.1:5000", false, "127.0.0.1:5000"),
        ];
        for (name, url, hub, cred_host) in cases {
            let u = Upstream::new(config(name, url)).unwrap();
            assert_eq!(u.is_docker_hub(), *hub, "{name} {url}");
            assert_eq!(u.cred_host, *cred_host, "{name} {url}");
            assert_eq!(u.name(), *name);
        }
    }

    #[test]
    fn credentials_go_only_to_the_origin_or_listed_realms() {
        let with = |name: &str, url: &str, realms: &[&str]| {
            Upstream::new(UpstreamConfig {
                token_realms: realms.iter().map(|r| r.to_string()).collect(),
                ..config(name, url)
            })
        };
        let u = with("ghcr.io", "https://ghcr.io", &["https://auth.example.com"]).unwrap();
        let cases: &[(&str, bool)] = &[
            ("https://ghcr.io/token", true),
            ("https://ghcr.io:443/token?x=1", true),
            ("https://GHCR.io/token", true),
            // A scheme downgrade on the same host, another port, another host.
            ("http://ghcr.io/token", false),
            ("https://ghcr.io:8443/token", false),
            ("https://evil.example/token", false),
            ("https://auth.example.com/oauth/token", true),
            ("http://auth.example.com/oauth/token", false),
            ("https://auth.docker.io/token", false),
        ];
        for (realm, want) in cases {
            assert_eq!(
                u.realm_allowed(&Url::parse(realm).unwrap()),
                *want,
                "{realm}"
            );
        }
        // Docker Hub's token service, for Docker Hub only (not a mirror under its name).
        let hub = with("docker.io", "https://registry-1.docker.io", &[]).unwrap();
        assert!(hub.realm_allowed(&Url::parse("https://auth.docker.io/token").unwrap()));
        assert!(!hub.realm_allowed(&Url::parse("http://auth.docker.io/token").unwrap()));
        let stand_in = with("docker.io", "https://mirror.example", &[]).unwrap();
        assert!(!stand_in.realm_allowed(&Url::parse("https://auth.docker.io/token").unwrap()));
        // A listed realm must not downgrade an https upstream, nor be anything but http(s).
        for bad in [
            "http://auth.example.com",
            "ftp://x",
            "not a url",
            "https://u:p@x",
        ] {
            assert!(with("ghcr.io", "https://ghcr.io", &[bad]).is_err(), "{bad}");
        }
        assert!(with("l", "http://127.0.0.1:5000", &["http://127.0.0.1:5001"]).is_ok());
    }

    #[test]
    fn suffixes() {
        let cases: &[(&str, bool)] = &[
            ("tags/list", true),
            ("tags/list?n=2&last=a", true),
            ("referrers/sha256:abc?artifactType=x/y", true),
            ("tags/list?last=../../x", true),
            ("../other/tags/list", false),
            ("tags/./list", false),
            ("/tags/list", false),
            ("tags/%2e%2e/list", false),
            ("tags/list#frag", false),
            ("", false),
        ];
        for (suffix, ok) in cases {
            assert_eq!(check_suffix(suffix).is_ok(), *ok, "{suffix}");
        }
    }

    #[test]
    fn media_types_and_digests() {
        let mut h = http::HeaderMap::new();
        assert_eq!(media_type(&h), None);
        h.insert(
            CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(media_type(&h).as_deref(), Some("application/json"));
        h.insert("docker-content-digest", "sha256:nothex".parse().unwrap());
        assert_eq!(docker_content_digest(&h), None);
        let d = Digest::sha256_of(b"x");
        h.insert("docker-content-digest", d.to_string().parse().unwrap());
        assert_eq!(docker_content_digest(&h), Some(d));
        assert!(manifest_accept().contains(media_types::OCI_INDEX));
    }
}
