//! The S3 backend: blobs as objects `<prefix>blobs/<algorithm>/<hex>` in an S3-compatible
//! bucket, through `object_store` (0.13: see `docs/ARCHITECTURE.md`, "Storage backends").
//!
//! The verified commit, in S3's terms:
//! - A blob is written as a multipart upload to its final key while it is hashed. Parts
//!   go out as they fill (at most [`S3Config::parts_in_flight`] at once, each exactly
//!   [`S3Config::part_size`] but the last). `CompleteMultipartUpload`, the only call that
//!   makes anything readable under the key, is sent only after size and digest matched;
//!   otherwise, and when the upload is dropped, it is aborted (an owned guard spawns the
//!   abort). Nothing of an upload is visible before its completion.
//! - A blob smaller than one part is never multipart: it is held (it is under a part's
//!   size), hashed, and written with one conditional `PUT` (`If-None-Match: *`), as
//!   [`Backend::put`] writes manifests.
//! - Uploads a crash left are listed (`ListMultipartUploads`, which `object_store` does not
//!   offer: one request signed by its SigV4 signer) and aborted by [`Backend::sweep`].
//!
//! Every request has a deadline ([`S3Config::timeout`]); a body being read must deliver
//! its next chunk within it. Credentials come from a mounted secret (re-read when it
//! changes, as the other secrets are) or the standard AWS environment chain, never from
//! anything else in the environment; they appear in no log, error or `Debug` output.

use std::collections::VecDeque;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{
    AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer, AwsCredential,
};
use object_store::client::{HttpRequest, HttpRequestBody};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    Certificate, ClientOptions, CredentialProvider, GetOptions, GetRange, MultipartId, ObjectStore,
    PutMode, PutOptions, PutPayload, RetryConfig,
};
use pullgate_oci::{ByteRange, Digest, Hasher};
use tokio::task::JoinHandle;

use super::{Backend, Opened, Put, Upload};
use crate::{BlobStream, StoreError};

/// S3's smallest part but the last.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Our largest part: a part is held in memory until it is sent.
pub const MAX_PART_SIZE: usize = 512 * 1024 * 1024;
/// S3's most parts per upload.
pub const MAX_PARTS: usize = 10_000;
/// Parts of one upload in flight at most.
pub const MAX_PARTS_IN_FLIGHT: usize = 16;
/// A `ListMultipartUploads` answer larger than this is refused (1,000 uploads of long
/// keys take about a third of it).
const MAX_LIST_BODY: usize = 4 * 1024 * 1024;
/// Pages of `ListMultipartUploads` one sweep reads at most (1,000 uploads each).
const MAX_LIST_PAGES: usize = 1000;
/// Unfinished uploads older than this are a crash's leftovers, swept by [`S3::open`]: no
/// fill takes a day (32 GiB, the largest blob, at 1 MB/s takes nine hours). The bucket
/// lifecycle rule in `docs/ARCHITECTURE.md` uses the same day.
pub const ORPHAN_AGE: Duration = Duration::from_secs(24 * 3600);
/// How often a credentials secret is looked at, at most.
const CREDENTIALS_RECHECK: Duration = Duration::from_secs(1);

/// Where and how to reach the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Prepended to every key: `""`, or segments ending in `/` (made so if missing).
    pub prefix: String,
    /// `http(s)://host[:port]`; `None`: AWS's endpoint for `region`.
    pub endpoint: Option<String>,
    pub region: String,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// A directory with `access_key_id` and `secret_access_key` files (a mounted Secret),
    /// or one file of `access_key_id = ...` lines; `None`: the standard AWS chain.
    pub credentials: Option<PathBuf>,
    /// PEM file of the CA(s) the endpoint's certificate chains to, besides the system's.
    pub ca_file: Option<PathBuf>,
    pub part_size: usize,
    pub parts_in_flight: usize,
    /// Deadline of one request, and of each chunk of a body being read.
    pub timeout: Duration,
}

impl S3Config {
    /// Defaults for everything but where the bucket is.
    pub fn new(bucket: impl Into<String>, region: impl Into<String>) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint: None,
            region: region.into(),
            path_style: false,
            credentials: None,
            ca_file: None,
            part_size: 8 * 1024 * 1024,
            parts_in_flight: 2,
            timeout: Duration::from_secs(60),
        }
    }

    /// Whether this can work, before anything is sent: names, sizes, the endpoint's form.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |why: String| Err(StoreError::Config(why));
        let b = &self.bucket;
        if b.len() < 3
            || b.len() > 63
            || !b
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        {
            return bad(format!("bucket {b:?}: 3 to 63 of a-z, 0-9, '.', '-'"));
        }
        let p = &self.prefix;
        if p.len() > 512
            || p.starts_with('/')
            || p.split('/').any(|s| s == "." || s == "..")
            || !p
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'-' | b'_' | b'.'))
        {
            return bad(format!(
                "prefix {p:?}: at most 512 of A-Z, a-z, 0-9, '/', '-', '_', '.', not starting with '/'"
            ));
        }
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        {
            return bad(format!("region {:?}", self.region));
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.contains('?') {
                return bad(format!("endpoint {e:?}: http(s)://host[:port]"));
            }
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return bad(format!(
                "part size {}: from {MIN_PART_SIZE} to {MAX_PART_SIZE} bytes",
                self.part_size
            ));
        }
        if !(1..=MAX_PARTS_IN_FLIGHT).contains(&self.parts_in_flight) {
            return bad(format!(
                "parts in flight {}: 1 to {MAX_PARTS_IN_FLIGHT}",
                self.parts_in_flight
            ));
        }
        if self.timeout.is_zero() {
            return bad("timeout 0".into());
        }
        Ok(())
    }

    /// The URL objects are under (`…/bucket` or `bucket.…`), and the endpoint to give
    /// `object_store`, which expects the bucket in it for virtual-hosted style.
    fn endpoints(&self) -> (String, String) {
        let (b, r) = (&self.bucket, &self.region);
        match (&self.endpoint, self.path_style) {
            (Some(e), true) => {
                let e = e.trim_end_matches('/');
                (format!("{e}/{b}"), e.to_owned())
            }
            (Some(e), false) => {
                let (scheme, host) = e
                    .trim_end_matches('/')
                    .split_once("://")
                    .unwrap_or(("https", e));
                let v = format!("{scheme}://{b}.{host}");
                (v.clone(), v)
            }
            (None, true) => {
                let e = format!("https://s3.{r}.amazonaws.com");
                (format!("{e}/{b}"), e)
            }
            (None, false) => {
                let v = format!("https://{b}.s3.{r}.amazonaws.com");
                (v.clone(), v)
            }
        }
    }
}

/// An S3-compatible bucket as a [`Backend`]. Cheap to clone.
#[derive(Clone)]
pub struct S3 {
    inner: Arc<Inner>,
}

struct Inner {
    store: AmazonS3,
    /// `<prefix>blobs`.
    blobs: Path,
    /// `<prefix>origins`: who served each blob (see [`S3::mark_origin`]).
    origins: Path,
    /// `<prefix>blobs/`, as keys start.
    key_prefix: String,
    /// Objects are under this URL (for the one request we sign ourselves).
    bucket_url: String,
    region: String,
    http: reqwest::Client,
    part_size: usize,
    parts_in_flight: usize,
    timeout: Duration,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3")
            .field("bucket_url", &self.inner.bucket_url)
            .field("prefix", &self.inner.key_prefix)
            .finish_non_exhaustive()
    }
}

/// The standard chain's variables, and only those: whatever else of `AWS_*` the
/// environment holds (an endpoint, a bucket, a CA bundle) is the configuration's to say.
const CHAIN: [(&str, AmazonS3ConfigKey); 9] = [
    ("AWS_ACCESS_KEY_ID", AmazonS3ConfigKey::AccessKeyId),
    ("AWS_SECRET_ACCESS_KEY", AmazonS3ConfigKey::SecretAccessKey),
    ("AWS_SESSION_TOKEN", AmazonS3ConfigKey::Token),
    (
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        AmazonS3ConfigKey::WebIdentityTokenFile,
    ),
    ("AWS_ROLE_ARN", AmazonS3ConfigKey::RoleArn),
    ("AWS_ROLE_SESSION_NAME", AmazonS3ConfigKey::RoleSessionName),
    (
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        AmazonS3ConfigKey::ContainerCredentialsRelativeUri,
    ),
    (
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        AmazonS3ConfigKey::ContainerCredentialsFullUri,
    ),
    (
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        AmazonS3ConfigKey::ContainerAuthorizationTokenFile,
    ),
];

impl S3 {
    /// A client for the bucket. Sends nothing: a wrong endpoint or credentials show at the
    /// first request.
    pub fn connect(config: &S3Config) -> Result<S3, StoreError> {
        config.validate()?;
        let (bucket_url, endpoint) = config.endpoints();
        let mut options = ClientOptions::new()
            .with_allow_http(endpoint.starts_with("http://"))
            .with_connect_timeout(Duration::from_secs(5))
            // Our own deadlines (per request, per body chunk): a whole-request one would cut
            // a large blob streaming to a slow client.
            .with_timeout_disabled();
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(config.timeout);
        if let Some(ca) = &config.ca_file {
            let pem =
                std::fs::read(ca).map_err(StoreError::io("reading the S3 endpoint's CA file"))?;
            let certs = Certificate::from_pem_bundle(&pem)
                .map_err(|e| StoreError::Config(format!("CA file {}: {e}", ca.display())))?;
            for c in certs {
                options = options.with_root_certificate(c);
            }
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| StoreError::Config(format!("CA file {}: {e}", ca.display())))?;
            for c in certs {
                http = http.add_root_certificate(c);
            }
        }
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_endpoint(&endpoint)
            .with_virtual_hosted_style_request(!config.path_style)
            .with_client_options(options)
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: config.timeout,
                ..RetryConfig::default()
            });
        match &config.credentials {
            Some(path) => {
                let provider = FileCredentials::new(path.clone());
                // A secret that cannot be read at start is a configuration error, now.
                provider.current().map_err(StoreError::Config)?;
                builder = builder.with_credentials(Arc::new(provider));
            }
            None => {
                for (var, key) in CHAIN {
                    if let Some(v) = std::env::var_os(var).and_then(|v| v.into_string().ok()) {
                        builder = builder.with_config(key, v);
                    }
                }
            }
        }
        let store = builder
            .build()
            .map_err(|e| StoreError::Config(format!("S3 client: {e}")))?;
        let prefix = match config.prefix.as_str() {
            "" => String::new(),
            p if p.ends_with('/') => p.to_owned(),
            p => format!("{p}/"),
        };
        let key_prefix = format!("{prefix}blobs/");
        Ok(S3 {
            inner: Arc::new(Inner {
                store,
                blobs: Path::from(format!("{prefix}blobs")),
                origins: Path::from(format!("{prefix}origins")),
                key_prefix,
                bucket_url,
                region: config.region.clone(),
                http: http
                    .build()
                    .map_err(|e| StoreError::Config(format!("S3 client: {e}")))?,
                part_size: config.part_size,
                parts_in_flight: config.parts_in_flight,
                timeout: config.timeout,
            }),
        })
    }

    /// [`S3::connect`], then abort the multipart uploads under our prefix older than
    /// [`ORPHAN_AGE`]: at start-up, what a crashed process left. Younger ones may be other
    /// replicas' fills under way, and are left alone.
    pub async fn open(config: &S3Config) -> Result<S3, StoreError> {
        let s3 = S3::connect(config)?;
        let swept = s3.sweep(ORPHAN_AGE).await?;
        tracing::info!(
            bucket_url = %s3.inner.bucket_url,
            prefix = %s3.inner.key_prefix,
            swept,
            "S3 store open: unfinished uploads over a day old aborted"
        );
        Ok(s3)
    }

    /// Record in the bucket that `upstream` served the bytes of the committed `digest`: an
    /// empty object `<prefix>origins/<algorithm>/<hex>/<upstream, hex-encoded>`. Other
    /// replicas read it ([`S3::origins`]) so that the access check may take that
    /// upstream's `HEAD` for a repository's possession, as it does for a local fill, instead
    /// of a `GET` proof. Call it only after the blob's commit: a marker never names an
    /// upstream that did not serve bytes that hashed to the digest.
    pub async fn mark_origin(&self, digest: &Digest, upstream: &str) -> Result<(), StoreError> {
        let key = self.inner.origin_dir(digest).join(hex_name(upstream));
        let options = PutOptions {
            mode: PutMode::Overwrite,
            ..PutOptions::default()
        };
        self.inner
            .deadline(
                "PUT origin",
                self.inner.store.put_opts(&key, PutPayload::new(), options),
            )
            .await
            .map(|_| ())
            .map_err(|e| backend("PUT origin", e))
    }

    /// The upstreams recorded by [`S3::mark_origin`] for `digest` (at most
    /// [`MAX_ORIGINS`]; markers whose name does not decode are skipped).
    pub async fn origins(&self, digest: &Digest) -> Result<Vec<String>, StoreError> {
        let dir = self.inner.origin_dir(digest);
        let listed = self
            .inner
            .deadline(
                "LIST origins",
                self.inner.store.list_with_delimiter(Some(&dir)),
            )
            .await
            .map_err(|e| backend("LIST origins", e))?;
        Ok(listed
            .objects
            .iter()
            .filter_map(|m| m.location.filename().and_then(unhex_name))
            .take(MAX_ORIGINS)
            .collect())
    }

    /// Multipart uploads under our prefix not yet completed or aborted: fills under way
    /// (here or on other replicas) and what crashes left.
    pub async fn unfinished_uploads(&self) -> Result<usize, StoreError> {
        Ok(self.inner.list_uploads().await?.len())
    }
}

/// Origins read back per blob, at most (the index keeps as many).
pub const MAX_ORIGINS: usize = 16;

/// An upstream's name as one key segment: lowercase hex of its bytes, so that no
/// character of it (`:` of a port) is ever escaped or refused by a store.
fn hex_name(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex_name(segment: &str) -> Option<String> {
    if segment.len() & 1 == 1 || segment.len() > 512 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..segment.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(segment.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl Inner {
    fn origin_dir(&self, d: &Digest) -> Path {
        self.origins
            .clone()
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn key(&self, d: &Digest) -> Path {
        self.blobs
            .clone()
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    async fn deadline<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T, object_store::Error> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(object_store::Error::Generic {
                store: "S3",
                source: format!("{op}: no answer within {:?}", self.timeout).into(),
            }),
        }
    }

    async fn head(&self, key: &Path) -> Result<Option<u64>, StoreError> {
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self
            .deadline("HEAD", self.store.get_opts(key, options))
            .await
        {
            Ok(r) => Ok(Some(r.meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(backend("HEAD", e)),
        }
    }

    /// One `PUT` that writes only if the key is free. A "conflict" (another conditional
    /// write racing) is believed only if the object is then there.
    async fn put_if_absent(&self, key: &Path, payload: PutPayload) -> Result<Put, StoreError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .deadline("PUT", self.store.put_opts(key, payload, options))
            .await
        {
            Ok(_) => Ok(Put::Created),
            Err(object_store::Error::AlreadyExists { .. }) => match self.head(key).await? {
                Some(_) => Ok(Put::Existed),
                None => Err(StoreError::Backend {
                    op: "PUT",
                    detail: "a conditional write conflicted and nothing was stored".into(),
                }),
            },
            Err(e) => Err(backend("PUT", e)),
        }
    }

    /// Every unfinished multipart upload under our prefix: (key, upload id, initiated).
    async fn list_uploads(&self) -> Result<Vec<(String, String, Option<SystemTime>)>, StoreError> {
        let mut found = Vec::new();
        let mut markers: Option<(String, String)> = None;
        for _ in 0..MAX_LIST_PAGES {
            let page = self.list_uploads_page(markers.as_ref()).await?;
            for u in page.upload {
                if u.key.starts_with(&self.key_prefix) {
                    let initiated = chrono::DateTime::parse_from_rfc3339(&u.initiated)
                        .ok()
                        .map(SystemTime::from);
                    found.push((u.key, u.upload_id, initiated));
                }
            }
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(k), Some(u))
                    if Some((&k, &u)) != markers.as_ref().map(|(a, b)| (a, b)) =>
                {
                    markers = Some((k, u));
                }
                _ => return Ok(found),
            }
        }
        Ok(found)
    }

    async fn list_uploads_page(
        &self,
        markers: Option<&(String, String)>,
    ) -> Result<ListUploads, StoreError> {
        let err = |detail: String| StoreError::Backend {
            op: "ListMultipartUploads",
            detail,
        };
        let mut url = format!(
            "{}?prefix={}&uploads=",
            self.bucket_url,
            query_escape(&self.key_prefix)
        );
        if let Some((key, id)) = markers {
            url.push_str(&format!(
                "&key-marker={}&upload-id-marker={}",
                query_escape(key),
                query_escape(id)
            ));
        }
        let credential = self
            .store
            .credentials()
            .get_credential()
            .await
            .map_err(|e| err(format!("credentials: {e}")))?;
        let mut request: HttpRequest = http::Request::builder()
            .method(http::Method::GET)
            .uri(&url)
            .body(HttpRequestBody::empty())
            .map_err(|e| err(e.to_string()))?;
        AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut request, None);
        let mut response = self
            .http
            .get(&url)
            .headers(request.headers().clone())
            .send()
            .await
            .map_err(|e| err(e.without_url().to_string()))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| err(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_LIST_BODY {
                return Err(err(format!("answer over {MAX_LIST_BODY} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let body = String::from_utf8_lossy(&body);
        if !status.is_success() {
            let code = body
                .split_once("<Code>")
                .and_then(|(_, r)| r.split_once("</Code>"))
                .map_or("", |(c, _)| c);
            return Err(err(format!(
                "status {status} {}",
                code.chars().take(64).collect::<String>()
            )));
        }
        quick_xml::de::from_str(&body).map_err(|e| err(format!("unreadable answer: {e}")))
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListUploads {
    #[serde(default)]
    upload: Vec<ListedUpload>,
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedUpload {
    key: String,
    upload_id: String,
    #[serde(default)]
    initiated: String,
}

/// Percent-encode everything but S3's unreserved characters (what SigV4 signs).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn backend(op: &'static str, e: object_store::Error) -> StoreError {
    StoreError::Backend {
        op,
        detail: e.to_string(),
    }
}

impl Backend for S3 {
    type Upload = S3Upload;

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        self.inner.head(&self.inner.key(digest)).await
    }

    async fn read(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Option<Opened>, StoreError> {
        let key = self.inner.key(digest);
        let options = GetOptions {
            range: range.map(|r| GetRange::Bounded(r.start..r.end.max(r.start).saturating_add(1))),
            ..GetOptions::default()
        };
        let result = match self
            .inner
            .deadline("GET", self.inner.store.get_opts(&key, options))
            .await
        {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => {
                // A range starting at or past the end is refused by S3; it is an empty
                // body of a blob that is there.
                if let (Some(r), Some(size)) = (range, self.inner.head(&key).await?) {
                    if r.start >= size {
                        return Ok(Some(Opened {
                            size,
                            body: BlobStream::new(futures_util::stream::empty()),
                        }));
                    }
                }
                return Err(backend("GET", e));
            }
        };
        let size = result.meta.size;
        let want = result.range.end.saturating_sub(result.range.start);
        let body = stream_body(result.into_stream(), want, self.inner.timeout);
        Ok(Some(Opened { size, body }))
    }

    async fn ingest(
        &self,
        digest: &Digest,
        expected_size: Option<u64>,
    ) -> Result<S3Upload, StoreError> {
        let limit = (self.inner.part_size as u64).saturating_mul(MAX_PARTS as u64);
        if let Some(size) = expected_size.filter(|&s| s > limit) {
            return Err(StoreError::TooLarge { size, limit });
        }
        Ok(S3Upload {
            s3: Arc::clone(&self.inner),
            key: self.inner.key(digest),
            digest: digest.clone(),
            expected: expected_size,
            hasher: Some(Hasher::new(digest.algorithm())),
            written: 0,
            pending: VecDeque::new(),
            pending_len: 0,
            multipart: None,
            failed: false,
        })
    }

    async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<Put, StoreError> {
        let actual = {
            let mut h = Hasher::new(digest.algorithm());
            h.update(&bytes);
            h.finish()
        };
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        self.inner
            .put_if_absent(&self.inner.key(digest), PutPayload::from(bytes))
            .await
    }

    async fn remove(&self, digest: &Digest) -> Result<bool, StoreError> {
        let key = self.inner.key(digest);
        if self.inner.head(&key).await?.is_none() {
            return Ok(false);
        }
        let mut deleted = self
            .inner
            .store
            .delete_stream(futures_util::stream::once(async move { Ok(key) }).boxed());
        match tokio::time::timeout(self.inner.timeout, deleted.next()).await {
            Ok(Some(Ok(_))) | Ok(None) => Ok(true),
            Ok(Some(Err(object_store::Error::NotFound { .. }))) => Ok(false),
            Ok(Some(Err(e))) => Err(backend("DELETE", e)),
            Err(_) => Err(StoreError::Backend {
                op: "DELETE",
                detail: "no answer in time".into(),
            }),
        }
    }

    fn list(&self) -> BoxStream<'static, Result<(Digest, u64), StoreError>> {
        self.inner
            .store
            .list(Some(&self.inner.blobs))
            .map_err(|e| backend("LIST", e))
            .try_filter_map(|meta| async move {
                let parts: Vec<_> = meta.location.parts().collect();
                let digest = match parts.as_slice() {
                    [.., alg, hex] => {
                        Digest::parse(&format!("{}:{}", alg.as_ref(), hex.as_ref())).ok()
                    }
                    _ => None,
                };
                Ok(digest.map(|d| (d, meta.size)))
            })
            .boxed()
    }

    async fn sweep(&self, older_than: Duration) -> Result<u64, StoreError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut aborted = 0;
        for (key, id, initiated) in self.inner.list_uploads().await? {
            // No readable start time: old enough (a crash's leftover is what we look for).
            if initiated.is_some_and(|t| t > cutoff) {
                continue;
            }
            let Ok(path) = Path::parse(&key) else {
                continue;
            };
            self.inner
                .deadline(
                    "AbortMultipartUpload",
                    self.inner.store.abort_multipart(&path, &id),
                )
                .await
                .map_err(|e| backend("AbortMultipartUpload", e))?;
            aborted += 1;
        }
        Ok(aborted)
    }
}

/// A body that must deliver exactly `want` bytes, each chunk within `timeout`.
fn stream_body(
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    want: u64,
    timeout: Duration,
) -> BlobStream {
    BlobStream::new(futures_util::stream::unfold(
        Some((stream, 0u64)),
        move |state| async move {
            let (mut stream, got) = state?;
            let fail =
                |detail: String| Some((Err(StoreError::Backend { op: "GET", detail }), None));
            match tokio::time::timeout(timeout, stream.next()).await {
                Err(_) => fail(format!("no bytes for {timeout:?}")),
                Ok(None) if got == want => None,
                Ok(None) => fail(format!("body ended after {got} of {want} bytes")),
                Ok(Some(Err(e))) => fail(e.to_string()),
                Ok(Some(Ok(chunk))) => {
                    let got = got + chunk.len() as u64;
                    if got > want {
                        return fail(format!("body longer than the {want} bytes asked for"));
                    }
                    Some((Ok(chunk), Some((stream, got))))
                }
            }
        },
    ))
}

/// One blob being written to S3. See the module's documentation for the protocol.
pub struct S3Upload {
    s3: Arc<Inner>,
    key: Path,
    digest: Digest,
    expected: Option<u64>,
    hasher: Option<Hasher>,
    written: u64,
    /// Bytes not yet sent: less than one part, except for the moment a part is cut.
    pending: VecDeque<Bytes>,
    pending_len: usize,
    /// Started when the first part is full; a blob smaller than a part never has one.
    multipart: Option<Multipart>,
    failed: bool,
}

struct Multipart {
    /// Aborts the upload when dropped armed.
    guard: AbortGuard,
    in_flight: VecDeque<JoinHandle<Result<PartId, StoreError>>>,
    done: Vec<PartId>,
    next: usize,
}

impl Drop for Multipart {
    fn drop(&mut self) {
        // Parts still going out would land after the abort and linger, unlisted by the
        // object as it is never completed: stop them first.
        for part in &self.in_flight {
            part.abort();
        }
    }
}

struct AbortGuard {
    s3: Arc<Inner>,
    key: Path,
    id: MultipartId,
    armed: bool,
}

impl AbortGuard {
    async fn abort_now(mut self) {
        self.armed = false;
        if let Err(e) = self
            .s3
            .deadline(
                "AbortMultipartUpload",
                self.s3.store.abort_multipart(&self.key, &self.id),
            )
            .await
        {
            // The start-up sweep and the bucket's lifecycle rule catch what this misses.
            tracing::warn!(key = %self.key, error = %e, "could not abort a multipart upload");
        }
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (s3, key, id) = (Arc::clone(&self.s3), self.key.clone(), self.id.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    AbortGuard {
                        s3,
                        key,
                        id,
                        armed: false,
                    }
                    .abort_now()
                    .await
                });
            }
            Err(_) => {
                tracing::warn!(key = %key, "multipart upload left for the sweep: no runtime to abort it")
            }
        }
    }
}

impl S3Upload {
    fn part_limit(&self) -> u64 {
        (self.s3.part_size as u64).saturating_mul(MAX_PARTS as u64)
    }

    /// Stop: the multipart upload (if any) is aborted before this returns.
    async fn give_up(&mut self, e: StoreError) -> StoreError {
        self.failed = true;
        self.pending.clear();
        self.pending_len = 0;
        if let Some(mut m) = self.multipart.take() {
            for part in m.in_flight.drain(..) {
                part.abort();
            }
            let guard = AbortGuard {
                s3: Arc::clone(&m.guard.s3),
                key: m.guard.key.clone(),
                id: m.guard.id.clone(),
                armed: false,
            };
            m.guard.armed = false;
            guard.abort_now().await;
        }
        e
    }

    /// The first `n` pending bytes, as they are (the chunk at the boundary is split).
    fn cut(&mut self, n: usize) -> Vec<Bytes> {
        let mut part = Vec::new();
        let mut need = n;
        while need > 0 {
            let Some(front) = self.pending.front_mut() else {
                break;
            };
            if front.len() <= need {
                need -= front.len();
                if let Some(c) = self.pending.pop_front() {
                    part.push(c);
                }
            } else {
                part.push(front.split_to(need));
                need = 0;
            }
        }
        self.pending_len -= n - need;
        part
    }

    async fn send_part(&mut self, part: Vec<Bytes>) -> Result<(), StoreError> {
        if self.multipart.is_none() {
            let id = self
                .s3
                .deadline(
                    "CreateMultipartUpload",
                    self.s3.store.create_multipart(&self.key),
                )
                .await
                .map_err(|e| backend("CreateMultipartUpload", e))?;
            self.multipart = Some(Multipart {
                guard: AbortGuard {
                    s3: Arc::clone(&self.s3),
                    key: self.key.clone(),
                    id,
                    armed: true,
                },
                in_flight: VecDeque::new(),
                done: Vec::new(),
                next: 0,
            });
        }
        let Some(m) = self.multipart.as_mut() else {
            return Err(StoreError::IngestFailed("multipart upload vanished".into()));
        };
        if m.next >= MAX_PARTS {
            return Err(StoreError::TooLarge {
                size: self.written,
                limit: (self.s3.part_size as u64).saturating_mul(MAX_PARTS as u64),
            });
        }
        while m.in_flight.len() >= self.s3.parts_in_flight {
            if let Some(first) = m.in_flight.pop_front() {
                m.done.push(joined(first).await?);
            }
        }
        let (s3, key, id, index) = (
            Arc::clone(&self.s3),
            self.key.clone(),
            m.guard.id.clone(),
            m.next,
        );
        m.next += 1;
        m.in_flight.push_back(tokio::spawn(async move {
            let payload = PutPayload::from_iter(part);
            s3.deadline("UploadPart", s3.store.put_part(&key, &id, index, payload))
                .await
                .map_err(|e| backend("UploadPart", e))
        }));
        Ok(())
    }

    async fn write_inner(&mut self, chunks: Vec<Bytes>) -> Result<(), StoreError> {
        for chunk in chunks {
            let next = self.written + chunk.len() as u64;
            if let Some(expected) = self.expected.filter(|&e| next > e) {
                return Err(StoreError::SizeMismatch {
                    expected,
                    actual: next,
                });
            }
            if next > self.part_limit() {
                return Err(StoreError::TooLarge {
                    size: next,
                    limit: self.part_limit(),
                });
            }
            if let Some(h) = self.hasher.as_mut() {
                h.update(&chunk);
            }
            self.written = next;
            self.pending_len += chunk.len();
            self.pending.push_back(chunk);
            while self.pending_len >= self.s3.part_size {
                let part = self.cut(self.s3.part_size);
                self.send_part(part).await?;
            }
        }
        Ok(())
    }

    async fn commit_inner(&mut self) -> Result<u64, StoreError> {
        let actual = self
            .hasher
            .take()
            .ok_or_else(|| StoreError::IngestFailed("upload already finished".into()))?
            .finish();
        let size = self.written;
        if let Some(expected) = self.expected.filter(|&e| e != size) {
            return Err(StoreError::SizeMismatch {
                expected,
                actual: size,
            });
        }
        if actual != self.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        if self.multipart.is_none() {
            let rest: Vec<Bytes> = self.pending.drain(..).collect();
            self.pending_len = 0;
            self.s3
                .put_if_absent(&self.key, PutPayload::from_iter(rest))
                .await?;
            return Ok(size);
        }
        if self.pending_len > 0 {
            let rest = self.cut(self.pending_len);
            self.send_part(rest).await?;
        }
        let Some(m) = self.multipart.as_mut() else {
            return Err(StoreError::IngestFailed("multipart upload vanished".into()));
        };
        while let Some(part) = m.in_flight.pop_front() {
            m.done.push(joined(part).await?);
        }
        let parts = std::mem::take(&mut m.done);
        self.s3
            .deadline(
                "CompleteMultipartUpload",
                self.s3
                    .store
                    .complete_multipart(&self.key, &m.guard.id, parts),
            )
            .await
            .map_err(|e| backend("CompleteMultipartUpload", e))?;
        m.guard.armed = false;
        Ok(size)
    }
}

async fn joined(part: JoinHandle<Result<PartId, StoreError>>) -> Result<PartId, StoreError> {
    part.await.map_err(StoreError::from)?
}

impl Upload for S3Upload {
    async fn write(&mut self, chunks: Vec<Bytes>) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::IngestFailed("upload already failed".into()));
        }
        // A write cancelled at an await (its future dropped) has hashed bytes whose part
        // may be lost; a later commit would then pass the digest check and complete the
        // upload without them. So the upload counts as failed until this write returns.
        self.failed = true;
        match self.write_inner(chunks).await {
            Ok(()) => {
                self.failed = false;
                Ok(())
            }
            Err(e) => Err(self.give_up(e).await),
        }
    }

    async fn commit(mut self) -> Result<u64, StoreError> {
        if self.failed {
            return Err(StoreError::IngestFailed("upload already failed".into()));
        }
        match self.commit_inner().await {
            Ok(size) => Ok(size),
            Err(e) => Err(self.give_up(e).await),
        }
    }
}

/// Credentials from a mounted secret, re-read when it changes (looked at most once a
/// second); a version that cannot be read keeps the last good one.
struct FileCredentials {
    source: PathBuf,
    state: Mutex<CredentialState>,
}

#[derive(Default)]
struct CredentialState {
    checked: Option<Instant>,
    /// (resolved path, modified, length) of each file read.
    stamp: Vec<(PathBuf, Option<SystemTime>, u64)>,
    current: Option<Arc<AwsCredential>>,
}

impl std::fmt::Debug for FileCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCredentials")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl FileCredentials {
    fn new(source: PathBuf) -> FileCredentials {
        FileCredentials {
            source,
            state: Mutex::default(),
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        if self.source.is_dir() {
            ["access_key_id", "secret_access_key", "session_token"]
                .iter()
                .map(|n| self.source.join(n))
                .filter(|p| p.exists() || !p.ends_with("session_token"))
                .collect()
        } else {
            vec![self.source.clone()]
        }
    }

    fn current(&self) -> Result<Arc<AwsCredential>, String> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let (Some(at), Some(c)) = (state.checked, &state.current) {
            if at.elapsed() < CREDENTIALS_RECHECK {
                return Ok(Arc::clone(c));
            }
        }
        state.checked = Some(Instant::now());
        let files = self.files();
        let stamp: Vec<_> = files
            .iter()
            .map(|p| {
                let resolved = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                let meta = std::fs::metadata(&resolved).ok();
                (
                    resolved,
                    meta.as_ref().and_then(|m| m.modified().ok()),
                    meta.map_or(0, |m| m.len()),
                )
            })
            .collect();
        if let Some(c) = &state.current {
            if stamp == state.stamp {
                return Ok(Arc::clone(c));
            }
        }
        match read_credentials(&self.source) {
            Ok(c) => {
                if state.current.is_some() {
                    tracing::info!(source = %self.source.display(), "S3 credentials changed: using the new ones");
                }
                let c = Arc::new(c);
                state.current = Some(Arc::clone(&c));
                state.stamp = stamp;
                Ok(c)
            }
            Err(why) => match state.current.clone() {
                Some(c) => {
                    tracing::error!(source = %self.source.display(), error = %why, "S3 credentials unreadable: keeping the last good ones");
                    state.stamp = stamp;
                    Ok(c)
                }
                None => Err(format!("S3 credentials {}: {why}", self.source.display())),
            },
        }
    }
}

#[async_trait::async_trait]
impl CredentialProvider for FileCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        self.current().map_err(|why| object_store::Error::Generic {
            store: "S3",
            source: why.into(),
        })
    }
}

/// Read `access_key_id`, `secret_access_key` and an optional `session_token`: files of a
/// directory, or `name = value` lines of one file. Errors name keys, never values.
fn read_credentials(source: &FsPath) -> Result<AwsCredential, String> {
    const MAX: u64 = 64 * 1024;
    let read = |p: &FsPath| -> Result<String, String> {
        let len = std::fs::metadata(p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .len();
        if len > MAX {
            return Err(format!("{}: over {MAX} bytes", p.display()));
        }
        std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let (mut key, mut secret, mut token) = (None, None, None);
    if source.is_dir() {
        key = Some(read(&source.join("access_key_id"))?.trim().to_owned());
        secret = Some(read(&source.join("secret_access_key"))?.trim().to_owned());
        let t = source.join("session_token");
        if t.exists() {
            token = Some(read(&t)?.trim().to_owned());
        }
    } else {
        for (n, line) in read(source)?.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                return Err(format!("line {}: not `name = value`", n + 1));
            };
            let value = value.trim().trim_matches('"').to_owned();
            let slot = match name.trim() {
                "access_key_id" => &mut key,
                "secret_access_key" => &mut secret,
                "session_token" => &mut token,
                other => return Err(format!("line {}: unknown name {other:?}", n + 1)),
            };
            *slot = Some(value);
        }
    }
    match (key, secret) {
        (Some(key_id), Some(secret_key)) if !key_id.is_empty() && !secret_key.is_empty() => {
            Ok(AwsCredential {
                key_id,
                secret_key,
                token: token.filter(|t| !t.is_empty()),
            })
        }
        _ => Err("access_key_id and secret_access_key are both needed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_a_file_or_a_directory_and_errors_name_no_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s3");
        std::fs::write(
            &file,
            "# s3\naccess_key_id = AKID\nsecret_access_key = \"s3cr3t\"\n",
        )
        .unwrap();
        let c = read_credentials(&file).unwrap();
        assert_eq!(
            (c.key_id.as_str(), c.secret_key.as_str(), c.token.as_deref()),
            ("AKID", "s3cr3t", None)
        );
        assert!(!format!("{c:?}").contains("s3cr3t"));

        std::fs::write(&file, "access_key_id = AKID\nsecret = s3cr3t\n").unwrap();
        let e = read_credentials(&file).unwrap_err();
        assert!(e.contains("unknown name") && !e.contains("s3cr3t"), "{e}");

        let secret = dir.path().join("secret");
        std::fs::create_dir(&secret).unwrap();
        std::fs::write(secret.join("access_key_id"), "AKID\n").unwrap();
        std::fs::write(secret.join("secret_access_key"), "s3cr3t\n").unwrap();
        let c = read_credentials(&secret).unwrap();
        assert_eq!(
            (c.key_id.as_str(), c.secret_key.as_str()),
            ("AKID", "s3cr3t")
        );

        // Rotated: the new pair once the files change; a broken version keeps the last.
        let provider = FileCredentials::new(secret.clone());
        assert_eq!(provider.current().unwrap().secret_key, "s3cr3t");
        std::fs::write(secret.join("secret_access_key"), "n3w-s3cr3t\n").unwrap();
        provider.state.lock().unwrap().checked = None;
        assert_eq!(provider.current().unwrap().secret_key, "n3w-s3cr3t");
        std::fs::remove_file(secret.join("access_key_id")).unwrap();
        provider.state.lock().unwrap().checked = None;
        assert_eq!(provider.current().unwrap().secret_key, "n3w-s3cr3t");
        assert!(!format!("{provider:?}").contains("s3cr3t"));
    }

    #[test]
    fn config_is_checked_and_endpoints_follow_the_style() {
        let mut c = S3Config::new("pullgate", "us-east-1");
        c.endpoint = Some("http://127.0.0.1:8333".into());
        c.path_style = true;
        assert!(c.validate().is_ok());
        assert_eq!(c.endpoints().0, "http://127.0.0.1:8333/pullgate");
        c.path_style = false;
        assert_eq!(c.endpoints().0, "http://pullgate.127.0.0.1:8333");
        c.endpoint = None;
        assert_eq!(
            c.endpoints().0,
            "https://pullgate.s3.us-east-1.amazonaws.com"
        );
        for bad in [
            S3Config {
                bucket: "UP".into(),
                ..c.clone()
            },
            S3Config {
                prefix: "../x".into(),
                ..c.clone()
            },
            S3Config {
                prefix: "/x".into(),
                ..c.clone()
            },
            S3Config {
                part_size: 1024,
                ..c.clone()
            },
            S3Config {
                parts_in_flight: 0,
                ..c.clone()
            },
            S3Config {
                endpoint: Some("ftp://x".into()),
                ..c.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(StoreError::Config(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn upstream_names_round_trip_as_key_segments() {
        for name in ["docker.io", "127.0.0.1:5000", "ghcr.io"] {
            let h = hex_name(name);
            assert!(h.bytes().all(|c| c.is_ascii_hexdigit()), "{h}");
            assert_eq!(unhex_name(&h).as_deref(), Some(name));
        }
        assert_eq!(unhex_name("zz"), None);
        assert_eq!(unhex_name("abc"), None);
    }

    #[test]
    fn queries_are_escaped_as_sigv4_signs_them() {
        assert_eq!(
            query_escape("cache/blobs/a-b_c.d~"),
            "cache%2Fblobs%2Fa-b_c.d~"
        );
    }
}
