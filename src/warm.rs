//! `pullgate warm`: pull images through a running mirror the way a client would, so they
//! are cached before a rollout needs them. Manifest or index, the selected platforms'
//! manifests, then every config and layer, each read whole, hashed as it streams and
//! discarded. The mirror's `X-Pullgate-Source` header says whether it already held each.

use std::collections::HashSet;
use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{stream, StreamExt};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use pullgate_credentials::{Credential, DockerConfig};
use pullgate_mirror::Platforms;
use pullgate_oci::{
    Challenge, Digest, Hasher, ManifestInfo, Reference, RepoName, Tag, MANIFEST_SIZE_LIMIT,
};
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};

/// The largest token response read (as the upstream client bounds it).
const TOKEN_RESPONSE_LIMIT: usize = 256 * 1024;
/// What `--platform` selects when it is not given.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";

#[derive(clap::Args)]
pub struct WarmArgs {
    /// The mirror's URL, e.g. https://mirror.example.com:5000.
    #[arg(long, value_name = "URL")]
    mirror: String,
    /// A docker config.json whose `auths` entry for the mirror's host holds the credentials.
    #[arg(long, value_name = "FILE", conflicts_with = "user")]
    docker_config: Option<PathBuf>,
    /// Credentials as user:password (visible to other local users in the process list:
    /// prefer --docker-config).
    #[arg(long, value_name = "USER:PASSWORD")]
    user: Option<String>,
    /// Platforms of an index to pull, comma-separated (os/arch or os/arch/variant), or
    /// `all` for every child manifest.
    #[arg(long, value_name = "PLATFORMS", default_value = DEFAULT_PLATFORM)]
    platform: String,
    /// A file listing images, one per line; `#` starts a comment.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Blobs downloaded at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    concurrency: usize,
    /// Images as you would name them to the mirror: `alpine:3.20`, `ghcr.io/org/app:1.0`,
    /// `name@sha256:…`.
    #[arg(value_name = "IMAGE")]
    images: Vec<String>,
}

/// An image as a user names it to the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// As written, for messages.
    pub written: String,
    /// The repository in the request path: the name as written, a registry host without a
    /// port included (`ghcr.io/org/app`: the mirror routes by that prefix).
    pub name: RepoName,
    /// A registry host with a port (`registry.local:5000`), which no repository name can
    /// hold: sent as `?ns=`, as containerd does.
    pub ns: Option<String>,
    pub reference: Reference,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef> {
        let written = s.trim();
        let (rest, digest) = match written.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (written, None),
        };
        // A tag is after the last `:` that follows the last `/` (a port comes before it).
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        let reference = match (digest, tag) {
            (Some(d), _) => Reference::Digest(
                Digest::parse(d).map_err(|e| anyhow!("{written:?}: digest {d:?}: {e}"))?,
            ),
            (None, Some(t)) => {
                Reference::Tag(Tag::parse(t).map_err(|e| anyhow!("{written:?}: {e}"))?)
            }
            (None, None) => Reference::Tag(Tag::parse("latest")?),
        };
        let (ns, name) = match path.split_once('/') {
            Some((host, repo)) if host.contains(':') => (Some(host.to_owned()), repo),
            _ => (None, path),
        };
        let name = RepoName::parse(name).map_err(|e| anyhow!("{written:?}: {e}"))?;
        Ok(ImageRef {
            written: written.to_owned(),
            name,
            ns,
            reference,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

/// `--platform`: a comma-separated list, or `all`; read as `[[prefetch]]` reads its list.
fn parse_platforms(s: &str) -> Result<Platforms> {
    let list: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    Platforms::parse(&list).map_err(|e| anyhow!("--platform: {e}"))
}

/// Images from the command line and from `--file`, in that order, each once.
fn image_list(args: &WarmArgs) -> Result<Vec<ImageRef>> {
    let mut written: Vec<String> = args.images.clone();
    if let Some(file) = &args.file {
        written.extend(read_list(file)?);
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for w in written {
        if seen.insert(w.clone()) {
            out.push(ImageRef::parse(&w)?);
        }
    }
    if out.is_empty() {
        bail!("no image to warm: name some, or --file a list");
    }
    Ok(out)
}

fn read_list(file: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Credentials for the mirror: `--user`, or the docker config's entry for its host.
fn credential(args: &WarmArgs, mirror: &Url) -> Result<Option<Credential>> {
    if let Some(u) = &args.user {
        let (username, password) = u
            .split_once(':')
            .ok_or_else(|| anyhow!("--user must be user:password"))?;
        return Ok(Some(Credential {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    let Some(path) = &args.docker_config else {
        return Ok(None);
    };
    let config =
        DockerConfig::load(path).with_context(|| format!("--docker-config {}", path.display()))?;
    let host = match (mirror.host_str(), mirror.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => bail!("--mirror has no host"),
    };
    match config.for_host(&host) {
        Some(c) => Ok(Some(c.clone())),
        None => {
            eprintln!(
                "warning: {} has no credentials for {host}; pulling anonymously",
                path.display()
            );
            Ok(None)
        }
    }
}

/// How the mirror wants to be authenticated, learnt from its first challenge.
#[derive(Clone)]
enum Auth {
    Unknown,
    Basic,
    /// Tokens by scope.
    Bearer(Vec<(String, String)>),
}

/// The mirror, as a registry client sees it.
struct Registry {
    http: reqwest::Client,
    base: Url,
    credential: Option<Credential>,
    auth: Mutex<Auth>,
}

impl Registry {
    fn url(&self, image: &ImageRef, suffix: &str) -> Result<Url> {
        let mut url = self
            .base
            .join(&format!("v2/{}/{suffix}", image.name))
            .context("building a request URL")?;
        if let Some(ns) = &image.ns {
            url.query_pairs_mut().append_pair("ns", ns);
        }
        Ok(url)
    }

    /// GET `url`; a 401 is answered once, with Basic or a token as its challenge asks.
    async fn get(&self, url: Url, accept: Option<&str>) -> Result<reqwest::Response> {
        let mut answered = false;
        loop {
            let mut req = self.http.get(url.clone());
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(h) = self.authorization() {
                req = req.header(AUTHORIZATION, h);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| anyhow!("GET {}: {}", url.path(), e.without_url()))?;
            if resp.status() != StatusCode::UNAUTHORIZED || answered {
                return Ok(resp);
            }
            answered = true;
            self.answer(resp.headers()).await?;
        }
    }

    fn authorization(&self) -> Option<String> {
        let c = self.credential.as_ref();
        match &*self.auth.lock().unwrap_or_else(PoisonError::into_inner) {
            Auth::Unknown => None,
            Auth::Basic => c.map(|c| format!("Basic {}", c.to_base64())),
            // The latest token: the mirror's tokens name the scopes they were asked for, and
            // a request for another repository is answered with a challenge for its own.
            Auth::Bearer(tokens) => tokens.last().map(|(_, t)| format!("Bearer {t}")),
        }
    }

    async fn answer(&self, headers: &HeaderMap) -> Result<()> {
        let header = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("the mirror answered 401 without a challenge"))?;
        let challenge =
            Challenge::parse(header).map_err(|e| anyhow!("the mirror's challenge: {e}"))?;
        match challenge.scheme.as_str() {
            "basic" => {
                if self.credential.is_none() {
                    bail!("the mirror wants credentials: --docker-config or --user");
                }
                *self.auth.lock().unwrap_or_else(PoisonError::into_inner) = Auth::Basic;
                Ok(())
            }
            "bearer" => {
                let token = self.token(&challenge).await?;
                let scope = challenge.param("scope").unwrap_or("").to_owned();
                let mut auth = self.auth.lock().unwrap_or_else(PoisonError::into_inner);
                let mut tokens = match &*auth {
                    Auth::Bearer(t) => t.clone(),
                    _ => Vec::new(),
                };
                tokens.retain(|(s, _)| *s != scope);
                tokens.push((scope, token));
                *auth = Auth::Bearer(tokens);
                Ok(())
            }
            other => bail!("the mirror asks for the {other} scheme, which warm does not speak"),
        }
    }

    /// The token flow: GET the realm with the service and scope, Basic if we have it.
    async fn token(&self, c: &Challenge) -> Result<String> {
        let realm = c
            .param("realm")
            .ok_or_else(|| anyhow!("the mirror's Bearer challenge has no realm"))?;
        let mut url = Url::parse(realm).map_err(|e| anyhow!("the token realm {realm:?}: {e}"))?;
        if url.scheme() == "http" && self.base.scheme() == "https" {
            bail!("the mirror's token realm {realm} is plain http; not sending credentials there");
        }
        {
            let mut q = url.query_pairs_mut();
            for name in ["service", "scope"] {
                if let Some(v) = c.param(name) {
                    q.append_pair(name, v);
                }
            }
        }
        let mut req = self.http.get(url);
        if let Some(cred) = &self.credential {
            req = req.basic_auth(&cred.username, Some(&cred.password));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow!("the token request: {}", e.without_url()))?;
        let status = resp.status();
        if !status.is_success() {
            bail!("the token request was refused: {status}");
        }
        let body = read_limited(resp, TOKEN_RESPONSE_LIMIT).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| anyhow!("the token response is not JSON"))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the token response holds no token"))
    }
}

/// The whole body, refusing one over `limit` bytes before reading past it.
async fn read_limited(resp: reqwest::Response, limit: usize) -> Result<Vec<u8>> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        bail!("the response is larger than {limit} bytes");
    }
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| anyhow!("reading a response: {}", e.without_url()))?;
        if out.len() + chunk.len() > limit {
            bail!("the response is larger than {limit} bytes");
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Where the mirror said an answer came from.
fn cached(headers: &HeaderMap) -> bool {
    headers
        .get("x-pullgate-source")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| s == "hit")
}

/// An error status as a short reason: the OCI error code if the body has one.
async fn status_error(what: &str, resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let code = read_limited(resp, 64 * 1024)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned));
    match code {
        Some(code) => anyhow!("{what}: {status} {code}"),
        None => anyhow!("{what}: {status}"),
    }
}

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

struct Manifest {
    info: ManifestInfo,
    cached: bool,
}

/// GET a manifest (bounded), checked against the digest asked for or the one the mirror
/// names in `Docker-Content-Digest`.
async fn manifest(reg: &Registry, image: &ImageRef, reference: &Reference) -> Result<Manifest> {
    let url = reg.url(image, &format!("manifests/{reference}"))?;
    let resp = reg.get(url, Some(ACCEPT_MANIFESTS)).await?;
    if !resp.status().is_success() {
        return Err(status_error(&format!("manifest {reference}"), resp).await);
    }
    let is_cached = cached(resp.headers());
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let claimed = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(Digest::parse)
        .transpose()
        .map_err(|e| anyhow!("manifest {reference}: Docker-Content-Digest: {e}"))?;
    let bytes = read_limited(resp, MANIFEST_SIZE_LIMIT).await?;
    let expected = match reference {
        Reference::Digest(d) => Some(d.clone()),
        Reference::Tag(_) => claimed,
    };
    if let Some(d) = &expected {
        if !d.matches(&bytes) {
            bail!("manifest {reference}: the bytes do not hash to {d}");
        }
    }
    let info = ManifestInfo::parse(&bytes, content_type.as_deref())
        .map_err(|e| anyhow!("manifest {reference}: {e}"))?;
    Ok(Manifest {
        info,
        cached: is_cached,
    })
}

/// One image's tally.
#[derive(Default, Clone)]
struct Tally {
    manifests: usize,
    platforms: usize,
    blobs: usize,
    bytes: u64,
    cached_blobs: usize,
    cached_bytes: u64,
}

/// What happened to one image.
struct Outcome {
    image: ImageRef,
    tally: Tally,
    took: Duration,
    error: Option<anyhow::Error>,
}

/// How progress is shown: bars on a terminal, one line per step elsewhere.
#[derive(Clone)]
enum Progress {
    Bars(MultiProgress),
    Lines,
}

impl Progress {
    fn line(&self, msg: String) {
        match self {
            Progress::Bars(m) => {
                let _ = m.println(msg);
            }
            Progress::Lines => eprintln!("{msg}"),
        }
    }
}

fn image_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

fn layer_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "  {prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("#- ")
}

fn short(d: &Digest) -> String {
    format!(
        "{}:{}",
        d.algorithm().as_str(),
        &d.hex()[..12.min(d.hex().len())]
    )
}

async fn warm_one(
    reg: &Registry,
    image: &ImageRef,
    platforms: &Platforms,
    concurrency: usize,
    progress: &Progress,
    tally: &Mutex<Tally>,
) -> Result<()> {
    let top = manifest(reg, image, &image.reference).await?;
    let mut images = Vec::new();
    {
        let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
        t.manifests += 1;
    }
    if top.info.is_index() {
        let children: Vec<_> = top
            .info
            .descriptors
            .iter()
            .filter(|d| platforms.selects(d.platform.as_ref()))
            .collect();
        if children.is_empty() {
            let has: Vec<String> = top
                .info
                .descriptors
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect();
            bail!(
                "the index has no manifest for the platforms asked for (it has {})",
                has.join(", ")
            );
        }
        progress.line(format!(
            "{image}: index, {} of {} platforms selected{}",
            children.len(),
            top.info.descriptors.len(),
            if top.cached { " (cached)" } else { "" }
        ));
        for child in children {
            let m = manifest(reg, image, &Reference::Digest(child.digest.clone())).await?;
            if m.info.is_index() {
                bail!("manifest {}: an index inside an index", child.digest);
            }
            let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
            t.manifests += 1;
            t.platforms += 1;
            images.push(m.info);
        }
    } else {
        progress.line(format!(
            "{image}: image manifest{}",
            if top.cached { " (cached)" } else { "" }
        ));
        tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .platforms += 1;
        images.push(top.info);
    }

    let mut seen = HashSet::new();
    let blobs: Vec<(Digest, u64)> = images
        .iter()
        .flat_map(|m| m.descriptors.iter())
        .filter(|d| seen.insert(d.digest.clone()))
        .map(|d| (d.digest.clone(), d.size))
        .collect();
    let total: u64 = blobs.iter().map(|(_, s)| s).sum();
    let bar = match progress {
        Progress::Bars(m) => {
            let b = m.add(ProgressBar::new(total));
            b.set_style(image_style());
            b.set_prefix(image.to_string());
            Some(b)
        }
        Progress::Lines => None,
    };
    let results: Vec<Result<()>> = stream::iter(blobs)
        .map(|(digest, size)| {
            let bar = bar.clone();
            async move { blob(reg, image, &digest, size, progress, bar.as_ref(), tally).await }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let failed = results.into_iter().find_map(Result::err);
    if let Some(b) = bar {
        let t = tally.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let msg = match &failed {
            None => format!("done: {} blobs, {} cached", t.blobs, t.cached_blobs),
            Some(_) => "failed".to_owned(),
        };
        b.finish_with_message(msg);
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// GET one blob, hash it as it streams, count it, discard it.
async fn blob(
    reg: &Registry,
    image: &ImageRef,
    digest: &Digest,
    size: u64,
    progress: &Progress,
    image_bar: Option<&ProgressBar>,
    tally: &Mutex<Tally>,
) -> Result<()> {
    let url = reg.url(image, &format!("blobs/{digest}"))?;
    let resp = reg.get(url, None).await?;
    if !resp.status().is_success() {
        return Err(status_error(&format!("blob {digest}"), resp).await);
    }
    let hit = cached(resp.headers());
    let bar = match progress {
        Progress::Bars(m) => {
            let b = m.add(ProgressBar::new(size));
            b.set_style(layer_style());
            b.set_prefix(short(digest));
            Some(b)
        }
        Progress::Lines => None,
    };
    let mut hasher = Hasher::new(digest.algorithm());
    let mut read: u64 = 0;
    let mut body = resp.bytes_stream();
    let outcome = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| anyhow!("blob {digest}: {}", e.without_url()))?;
            read += chunk.len() as u64;
            if read > size {
                bail!("blob {digest}: more than the {size} bytes its manifest says");
            }
            hasher.update(&chunk);
            if let Some(b) = &bar {
                b.inc(chunk.len() as u64);
            }
            if let Some(b) = image_bar {
                b.inc(chunk.len() as u64);
            }
        }
        if read != size {
            bail!("blob {digest}: {read} bytes, its manifest says {size}");
        }
        let got = hasher.finish();
        if got != *digest {
            bail!("blob {digest}: the bytes hash to {got}");
        }
        Ok(())
    }
    .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    outcome?;
    let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
    t.blobs += 1;
    t.bytes += size;
    if hit {
        t.cached_blobs += 1;
        t.cached_bytes += size;
    }
    drop(t);
    if matches!(progress, Progress::Lines) {
        progress.line(format!(
            "{image}: blob {} {} {}",
            short(digest),
            HumanBytes(size),
            if hit { "cached" } else { "fetched" }
        ));
    }
    Ok(())
}

pub fn run(args: WarmArgs) -> Result<()> {
    let base = Url::parse(args.mirror.trim_end_matches('/'))
        .and_then(|u| u.join("/"))
        .map_err(|e| anyhow!("--mirror {:?}: {e}", args.mirror))?;
    if !matches!(base.scheme(), "http" | "https") {
        bail!("--mirror must be an http:// or https:// URL");
    }
    if !base.username().is_empty() || base.password().is_some() {
        bail!("--mirror must not hold credentials: use --docker-config or --user");
    }
    let platforms = parse_platforms(&args.platform)?;
    let images = image_list(&args)?;
    let credential = credential(&args, &base)?;
    let http = reqwest::Client::builder()
        .user_agent(format!("pullgate-warm/{}", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120))
        .build()
        .context("building the HTTP client")?;
    let reg = Registry {
        http,
        base,
        credential,
        auth: Mutex::new(Auth::Unknown),
    };
    let progress = if std::io::stderr().is_terminal() {
        Progress::Bars(MultiProgress::new())
    } else {
        Progress::Lines
    };
    let started = Instant::now();
    let outcomes = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            let mut outcomes = Vec::new();
            for image in images {
                let t0 = Instant::now();
                let tally = Arc::new(Mutex::new(Tally::default()));
                let result = warm_one(
                    &reg,
                    &image,
                    &platforms,
                    args.concurrency,
                    &progress,
                    &tally,
                )
                .await;
                let tally = tally.lock().unwrap_or_else(PoisonError::into_inner).clone();
                match &result {
                    Ok(()) => progress.line(format!(
                        "{image}: done, {} blobs ({}), {} cached, in {:.1?}",
                        tally.blobs,
                        HumanBytes(tally.bytes),
                        tally.cached_blobs,
                        t0.elapsed()
                    )),
                    Err(e) => progress.line(format!("{image}: FAILED: {e:#}")),
                }
                outcomes.push(Outcome {
                    image,
                    tally,
                    took: t0.elapsed(),
                    error: result.err(),
                });
            }
            outcomes
        });
    if let Progress::Bars(m) = &progress {
        let _ = m.clear();
    }
    print!("{}", summary(&outcomes, started.elapsed()));
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.error.as_ref().map(|e| format!("{} ({e:#})", o.image)))
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} images failed: {}",
            failed.len(),
            outcomes.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

/// The table printed at the end: one row per image, then the totals.
fn summary(outcomes: &[Outcome], took: Duration) -> String {
    let head = [
        "IMAGE",
        "PLATFORMS",
        "BLOBS",
        "BYTES",
        "CACHED",
        "FETCHED",
        "TIME",
        "RESULT",
    ];
    let mut rows: Vec<[String; 8]> = Vec::new();
    let mut total = Tally::default();
    for o in outcomes {
        let t = &o.tally;
        total.platforms += t.platforms;
        total.blobs += t.blobs;
        total.bytes += t.bytes;
        total.cached_blobs += t.cached_blobs;
        total.cached_bytes += t.cached_bytes;
        rows.push(row(
            o.image.to_string(),
            t,
            o.took,
            match &o.error {
                None => "ok".to_owned(),
                Some(_) => "FAILED".to_owned(),
            },
        ));
    }
    let ok = outcomes.iter().filter(|o| o.error.is_none()).count();
    rows.push(row(
        format!("total: {} images", outcomes.len()),
        &total,
        took,
        format!("{ok} ok, {} failed", outcomes.len() - ok),
    ));
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i == 0 || i == cells.len() - 1 {
                l.push_str(&format!("{c:<w$}  "));
            } else {
                l.push_str(&format!("{c:>w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&head.map(str::to_owned));
    for r in &rows {
        line(r);
    }
    out
}

fn row(name: String, t: &Tally, took: Duration, result: String) -> [String; 8] {
    [
        name,
        t.platforms.to_string(),
        format!("{} ({} cached)", t.blobs, t.cached_blobs),
        HumanBytes(t.bytes).to_string(),
        HumanBytes(t.cached_bytes).to_string(),
        HumanBytes(t.bytes - t.cached_bytes.min(t.bytes)).to_string(),
        format!("{:.1}s", took.as_secs_f64()),
        result,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_as_users_write_them() {
        let r = ImageRef::parse("alpine:3.20").unwrap();
        assert_eq!((r.name.as_str(), r.ns.as_deref()), ("alpine", None));
        assert_eq!(r.reference.to_string(), "3.20");
        let r = ImageRef::parse("ghcr.io/org/app:1.0").unwrap();
        assert_eq!(
            (r.name.as_str(), r.ns.as_deref()),
            ("ghcr.io/org/app", None)
        );
        let r = ImageRef::parse("registry.local:5000/team/app").unwrap();
        assert_eq!(
            (r.name.as_str(), r.ns.as_deref()),
            ("team/app", Some("registry.local:5000"))
        );
        assert_eq!(r.reference.to_string(), "latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("library/alpine@{d}")).unwrap();
        assert_eq!(r.reference, Reference::Digest(Digest::parse(&d).unwrap()));
        let r = ImageRef::parse(&format!("127.0.0.1:5000/x:v1@{d}")).unwrap();
        assert_eq!(r.ns.as_deref(), Some("127.0.0.1:5000"));
        assert!(r.reference.as_digest().is_some());
        for bad in [
            "",
            "Alpine",
            "alpine:",
            "alpine@sha256:12",
            "a//b",
            "x:-tag",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn platforms() {
        assert_eq!(parse_platforms("all").unwrap(), Platforms::All);
        let p = parse_platforms("linux/amd64, linux/arm64/v8").unwrap();
        assert_eq!(p.to_strings(), ["linux/amd64", "linux/arm64/v8"]);
        for bad in ["", ",", "linux", "linux/", "a/b/c/d", "li nux/amd64"] {
            assert!(parse_platforms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn list_files_skip_comments_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("images.txt");
        std::fs::write(
            &f,
            "# rollout 42\nalpine:3.20\n\n  ghcr.io/org/app:1.0  # the app\n",
        )
        .unwrap();
        assert_eq!(
            read_list(&f).unwrap(),
            ["alpine:3.20", "ghcr.io/org/app:1.0"]
        );
    }

    #[test]
    fn summary_is_aligned_with_totals() {
        let o = |name: &str, blobs, bytes, cached, failed: bool| Outcome {
            image: ImageRef::parse(name).unwrap(),
            tally: Tally {
                manifests: 1,
                platforms: 1,
                blobs,
                bytes,
                cached_blobs: cached,
                cached_bytes: if cached > 0 { bytes } else { 0 },
            },
            took: Duration::from_millis(1500),
            error: failed.then(|| anyhow!("manifest 1: 404 MANIFEST_UNKNOWN")),
        };
        let s = summary(
            &[
                o("alpine:3.20", 3, 3 << 20, 3, false),
                o("nope:1", 0, 0, 0, true),
            ],
            Duration::from_secs(2),
        );
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 4, "{s}");
        assert!(
            lines[0].starts_with("IMAGE") && lines[0].contains("CACHED"),
            "{s}"
        );
        assert!(
            lines[1].contains("3.00 MiB") && lines[1].ends_with("ok"),
            "{s}"
        );
        assert!(lines[2].ends_with("FAILED"), "{s}");
        assert!(
            lines[3].contains("total: 2 images") && lines[3].ends_with("1 ok, 1 failed"),
            "{s}"
        );
        let col = lines[0].find("BYTES").unwrap() + "BYTES".len();
        assert!(lines.iter().all(|l| l.len() >= col), "{s}");
    }
}
