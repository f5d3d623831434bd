//! A small registry of our own that serves in-memory images and misbehaves on demand:
//! corrupt or truncated blobs, error statuses, resets, lying `Content-Length`s, redirect
//! loops, redirects to another origin, slow answers, wrong manifest digests, a referrers API
//! (an empty index; a status instead with `set_fault("referrers", …)`), and
//! bearer-token auth with its own token endpoint (which can fail too). It runs on its own thread and runtime.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};

use super::images::{Blob, Image};

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Send half the announced `Content-Length`, then close the connection.
    Truncate,
    /// Flip one byte (same length).
    Corrupt,
    /// Answer with this status (and an OCI error body).
    Status(u16),
    /// Send half, then stall without closing.
    Stall,
    /// Close the connection without answering.
    Reset,
    /// Announce one byte less than the blob and send that many: the HTTP exchange is
    /// clean, only the digest can tell.
    ShortLength,
    /// Announce 1,000 bytes more than the blob, send the blob, close.
    LongLength,
    /// Redirect to the same URL, forever.
    RedirectLoop,
    /// A chunked body (no `Content-Length`).
    Chunked,
    /// A chunked body that never ends: 64 KiB chunks of zeros, as fast as they are read.
    Endless,
    /// A chunked body that sends one byte every 200 ms, for ever.
    Trickle,
    /// Redirect (307) to the same path and query on `127.0.0.1:<port>`: another origin.
    RedirectToPort(u16),
}

#[derive(Clone)]
pub enum FaultAuth {
    None,
    Token { user: String, password: String },
}

#[derive(Default)]
struct Content {
    blobs: HashMap<String, Bytes>,
    /// (repo, tag or digest) → (media type, bytes)
    manifests: HashMap<(String, String), (String, Bytes)>,
    faults: HashMap<String, Fault>,
    /// Wait this long before answering for a key (so concurrent clients pile up).
    delays: HashMap<String, Duration>,
    /// Answer token requests with this status instead.
    token_status: Option<u16>,
    /// Answer every blob and manifest `HEAD` with 200, whatever is asked (a lying upstream).
    head_yes: bool,
    /// Blobs held only by these repositories (others answer 404); unlisted blobs are in all.
    blob_repos: HashMap<String, Vec<String>>,
    /// Docker Hub's quota headers on manifest answers: (limit, remaining); a manifest
    /// `GET` uses one up, a `HEAD` does not.
    ratelimit: Option<(u64, u64)>,
    /// Wait this long before answering any blob request.
    blob_delay: Option<Duration>,
    /// (repo, subject digest) → the descriptors the referrers API lists.
    referrers: HashMap<(String, String), Vec<serde_json::Value>>,
}

struct State {
    content: Mutex<Content>,
    auth: FaultAuth,
    requests: Mutex<Vec<String>>,
    full_requests: Mutex<Vec<String>>,
    tokens: Mutex<HashSet<String>>,
    token_requests: AtomicUsize,
    /// Requests being answered now (from arrival until the response body is done), and
    /// the most there ever were at once.
    in_flight: Arc<AtomicUsize>,
    in_flight_peak: AtomicUsize,
    port: u16,
}

/// One request being answered: counted in flight until its response body is dropped.
struct Answering(Arc<AtomicUsize>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct FaultUpstream {
    pub port: u16,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultUpstream {
    pub fn start(auth: FaultAuth) -> FaultUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(State {
            content: Mutex::new(Content::default()),
            auth,
            requests: Mutex::new(Vec::new()),
            full_requests: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashSet::new()),
            token_requests: AtomicUsize::new(0),
            in_flight: Arc::default(),
            in_flight_peak: AtomicUsize::new(0),
            port,
        });
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
        let st = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, peer)) = accepted else { continue };
                            let st = Arc::clone(&st);
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| {
                                    let st = Arc::clone(&st);
                                    let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                                    st.in_flight_peak.fetch_max(now, Ordering::SeqCst);
                                    let answering = Answering(Arc::clone(&st.in_flight));
                                    async move {
                                        let key = fault_key(req.uri().path());
                                        let (delay, fault) = {
                                            let c = st.content.lock().unwrap();
                                            let blob_delay = c
                                                .blob_delay
                                                .filter(|_| req.uri().path().contains("/blobs/"));
                                            (
                                                c.delays.get(&key).copied().or(blob_delay),
                                                c.faults.get(&key).copied(),
                                            )
                                        };
                                        if let Some(d) = delay {
                                            tokio::time::sleep(d).await;
                                        }
                                        if let Some(Fault::RedirectToPort(port)) = fault {
                                            record(&st, &req);
                                            let to = format!(
                                                "http://127.0.0.1:{port}{}",
                                                req.uri().path_and_query().map_or("", |p| p.as_str())
                                            );
                                            return Ok(Response::builder()
                                                .status(307)
                                                .header("location", to)
                                                .body(full(Bytes::new()))
                                                .unwrap());
                                        }
                                        if matches!(fault, Some(Fault::Reset)) {
                                            record(&st, &req);
                                            // A service error makes hyper drop the connection
                                            // without a response.
                                            return Err(std::io::Error::other("fault: reset"));
                                        }
                                        let response = handle(&st, req, peer);
                                        // Counted in flight until the body is sent (or dropped).
                                        Ok::<_, std::io::Error>(response.map(|body| {
                                            body.map_frame(move |f| {
                                                let _answering = &answering;
                                                f
                                            })
                                            .boxed()
                                        }))
                                    }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        FaultUpstream {
            port,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn add_blob(&self, blob: &Blob) {
        let mut c = self.state.content.lock().unwrap();
        c.blobs
            .insert(blob.digest.clone(), Bytes::from(blob.bytes.clone()));
    }

    pub fn add_manifest(&self, repo: &str, reference: &str, m: &Blob) {
        let mut c = self.state.content.lock().unwrap();
        c.manifests.insert(
            (repo.to_owned(), reference.to_owned()),
            (m.media_type.clone(), Bytes::from(m.bytes.clone())),
        );
    }

    pub fn add_image(&self, repo: &str, tag: &str, img: &Image) {
        for b in img.blobs() {
            self.add_blob(b);
        }
        self.add_manifest(repo, &img.manifest.digest, &img.manifest);
        self.add_manifest(repo, tag, &img.manifest);
    }

    /// List `descriptor` (JSON) in the referrers API's answer for `subject` in `repo`: this
    /// upstream has the API that Distribution 2.8 lacks.
    pub fn add_referrer(&self, repo: &str, subject: &str, descriptor: serde_json::Value) {
        let mut c = self.state.content.lock().unwrap();
        c.referrers
            .entry((repo.to_owned(), subject.to_owned()))
            .or_default()
            .push(descriptor);
    }

    /// Misbehave when serving `key`: a blob digest, or a manifest reference (tag or digest).
    pub fn set_fault(&self, key: &str, fault: Fault) {
        self.state
            .content
            .lock()
            .unwrap()
            .faults
            .insert(key.to_owned(), fault);
    }

    pub fn clear_fault(&self, key: &str) {
        self.state.content.lock().unwrap().faults.remove(key);
    }

    /// Answer requests for `key` (a blob digest, or a manifest reference) only after `d`.
    pub fn set_delay(&self, key: &str, d: Duration) {
        self.state
            .content
            .lock()
            .unwrap()
            .delays
            .insert(key.to_owned(), d);
    }

    /// Hold blob `digest` only in `repos`: requests under any other repository get 404.
    pub fn restrict_blob(&self, digest: &str, repos: &[&str]) {
        self.state.content.lock().unwrap().blob_repos.insert(
            digest.to_owned(),
            repos.iter().map(|r| (*r).to_owned()).collect(),
        );
    }

    /// Answer every blob and manifest `HEAD` with 200 and the asked-for digest, held or not.
    pub fn set_head_yes(&self, yes: bool) {
        self.state.content.lock().unwrap().head_yes = yes;
    }

    /// Make the token endpoint answer `status` (`None`: work again).
    pub fn set_token_status(&self, status: Option<u16>) {
        self.state.content.lock().unwrap().token_status = status;
    }

    /// Requests seen, as `METHOD /path` (query dropped).
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Requests seen, as `METHOD /path?query`.
    pub fn requests_with_query(&self) -> Vec<String> {
        self.state.full_requests.lock().unwrap().clone()
    }

    pub fn count(&self, method: &str, path: &str) -> usize {
        let needle = format!("{method} {path}");
        self.requests().iter().filter(|r| **r == needle).count()
    }

    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Send Docker Hub's `RateLimit-Limit: <limit>;w=21600`, `RateLimit-Remaining` and
    /// `docker-ratelimit-source` on manifest answers, `remaining` counting down by one
    /// per manifest `GET` (`None`: send none).
    pub fn set_ratelimit(&self, quota: Option<(u64, u64)>) {
        self.state.content.lock().unwrap().ratelimit = quota;
    }

    /// Answer every blob request only after `d`.
    pub fn set_blob_delay(&self, d: Option<Duration>) {
        self.state.content.lock().unwrap().blob_delay = d;
    }

    /// The most requests it was answering at once (from arrival to the end of the body).
    pub fn in_flight_peak(&self) -> usize {
        self.state.in_flight_peak.load(Ordering::SeqCst)
    }
}

impl Drop for FaultUpstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed()
}

fn error(status: u16, code: &str, extra: &[(&str, String)]) -> Response<Body> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in extra {
        r = r.header(*k, v);
    }
    r.body(full(format!(
        r#"{{"errors":[{{"code":"{code}","message":"fault upstream says {code}"}}]}}"#
    )))
    .unwrap()
}

fn basic_ok(req: &Request<hyper::body::Incoming>, user: &str, password: &str) -> bool {
    let Some(v) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(b64) = v.strip_prefix("Basic ") else {
        return false;
    };
    let want = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    b64 == want
}

/// What faults and delays are keyed by: the last path segment (a digest or a tag).
fn fault_key(path: &str) -> String {
    path.rsplit('/').next().unwrap_or("").to_owned()
}

fn record(st: &State, req: &Request<hyper::body::Incoming>) {
    let method = req.method().as_str();
    st.requests
        .lock()
        .unwrap()
        .push(format!("{method} {}", req.uri().path()));
    st.full_requests.lock().unwrap().push(format!(
        "{method} {}",
        req.uri().path_and_query().map_or("", |p| p.as_str())
    ));
}

fn handle(st: &State, req: Request<hyper::body::Incoming>, _peer: SocketAddr) -> Response<Body> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    record(st, &req);

    if path == "/token" {
        st.token_requests.fetch_add(1, Ordering::SeqCst);
        if let Some(status) = st.content.lock().unwrap().token_status {
            return error(status, "UNAVAILABLE", &[]);
        }
        let FaultAuth::Token { user, password } = &st.auth else {
            return error(404, "NOT_FOUND", &[]);
        };
        if !basic_ok(&req, user, password) {
            return error(401, "UNAUTHORIZED", &[]);
        }
        let n = st.token_requests.load(Ordering::SeqCst);
        let token = format!("tok-{n}-{}", req.uri().query().unwrap_or("").len());
        st.tokens.lock().unwrap().insert(token.clone());
        return Response::builder()
            .header("content-type", "application/json")
            .body(full(format!(
                r#"{{"token":"{token}","expires_in":300,"issued_at":"2026-11-22T00:00:00Z"}}"#
            )))
            .unwrap();
    }

    let Some(rest) = path.strip_prefix("/v2/") else {
        return error(404, "NOT_FOUND", &[]);
    };
    match &st.auth {
        FaultAuth::None => {}
        FaultAuth::Token { .. } => {
            let ok = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| st.tokens.lock().unwrap().contains(t));
            if !ok {
                let repo = rest
                    .rsplit_once("/manifests/")
                    .or_else(|| rest.rsplit_once("/blobs/"))
                    .map_or("", |(r, _)| r);
                let challenge = format!(
                    r#"Bearer realm="http://127.0.0.1:{}/token",service="fault",scope="repository:{repo}:pull""#,
                    st.port
                );
                return error(401, "UNAUTHORIZED", &[("www-authenticate", challenge)]);
            }
        }
    }
    if rest.is_empty() {
        return Response::builder()
            .header("content-type", "application/json")
            .body(full("{}"))
            .unwrap();
    }

    if let Some((repo, digest)) = rest.rsplit_once("/referrers/") {
        // `set_fault("referrers", Fault::Status(503))` makes every referrers answer fail.
        let fault = st.content.lock().unwrap().faults.get("referrers").copied();
        if let Some(Fault::Status(s)) = fault {
            return error(s, "UNAVAILABLE", &[]);
        }
        let filtered = req
            .uri()
            .query()
            .is_some_and(|q| q.contains("artifactType="));
        let mut r =
            Response::builder().header("content-type", "application/vnd.oci.image.index.v1+json");
        if filtered {
            r = r.header("oci-filters-applied", "artifactType");
        }
        let listed = st
            .content
            .lock()
            .unwrap()
            .referrers
            .get(&(repo.to_owned(), digest.to_owned()))
            .cloned()
            .unwrap_or_default();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": listed,
        });
        return r.body(full(index.to_string())).unwrap();
    }

    if let Some(repo) = rest.strip_suffix("/tags/list") {
        return tags_list(st, repo, req.uri().query().unwrap_or(""));
    }

    let head = method == "HEAD";
    let content = st.content.lock().unwrap();
    if head && content.head_yes && (rest.contains("/manifests/") || rest.contains("/blobs/")) {
        let digest = fault_key(&path);
        return Response::builder()
            .header("content-length", 1234)
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .header("docker-content-digest", digest)
            .body(full(Bytes::new()))
            .unwrap();
    }
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        let fault = content.faults.get(reference).copied();
        let Some((mt, bytes)) = content
            .manifests
            .get(&(repo.to_owned(), reference.to_owned()))
            .cloned()
        else {
            return error(404, "MANIFEST_UNKNOWN", &[]);
        };
        drop(content);
        let quota = {
            let mut c = st.content.lock().unwrap();
            if let (Some((_, remaining)), false) = (&mut c.ratelimit, head) {
                *remaining = remaining.saturating_sub(1);
            }
            c.ratelimit
        };
        let digest = super::images::sha256(&bytes);
        let mut r = serve(bytes, &mt, Some(&digest), fault, head, &path);
        if let Some((limit, remaining)) = quota {
            let h = r.headers_mut();
            h.insert(
                "ratelimit-limit",
                format!("{limit};w=21600").parse().unwrap(),
            );
            h.insert(
                "ratelimit-remaining",
                format!("{remaining};w=21600").parse().unwrap(),
            );
            h.insert("docker-ratelimit-source", "192.0.2.44".parse().unwrap());
        }
        return r;
    }
    if let Some((repo, digest)) = rest.rsplit_once("/blobs/") {
        if content
            .blob_repos
            .get(digest)
            .is_some_and(|repos| !repos.iter().any(|r| r == repo))
        {
            return error(404, "BLOB_UNKNOWN", &[]);
        }
        let fault = content.faults.get(digest).copied();
        let Some(bytes) = content.blobs.get(digest).cloned() else {
            return error(404, "BLOB_UNKNOWN", &[]);
        };
        drop(content);
        return serve(
            bytes,
            "application/octet-stream",
            Some(digest),
            fault,
            head,
            &path,
        );
    }
    error(404, "NAME_UNKNOWN", &[])
}

/// Tags with `n`/`last` pagination and a `Link` to the next page, as the spec describes.
fn tags_list(st: &State, repo: &str, query: &str) -> Response<Body> {
    let content = st.content.lock().unwrap();
    let mut tags: Vec<&str> = content
        .manifests
        .keys()
        .filter(|(r, reference)| r == repo && !reference.contains(':'))
        .map(|(_, t)| t.as_str())
        .collect();
    if tags.is_empty() {
        return error(404, "NAME_UNKNOWN", &[]);
    }
    tags.sort_unstable();
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
    };
    if let Some(last) = param("last") {
        tags.retain(|t| *t > last);
    }
    let mut link = None;
    if let Some(n) = param("n").and_then(|n| n.parse::<usize>().ok()) {
        if tags.len() > n {
            tags.truncate(n);
            link = Some(format!(
                "</v2/{repo}/tags/list?n={n}&last={}>; rel=\"next\"",
                tags[n - 1]
            ));
        }
    }
    let body = serde_json::json!({"name": repo, "tags": tags}).to_string();
    let mut r = Response::builder().header("content-type", "application/json");
    if let Some(l) = link {
        r = r.header("link", l);
    }
    r.body(full(body)).unwrap()
}

fn serve(
    bytes: Bytes,
    content_type: &str,
    digest: Option<&str>,
    fault: Option<Fault>,
    head: bool,
    path: &str,
) -> Response<Body> {
    match fault {
        Some(Fault::Status(s)) => {
            return error(s, "UNAVAILABLE", &[("retry-after", "1".to_owned())]);
        }
        Some(Fault::RedirectLoop) => {
            return Response::builder()
                .status(307)
                .header("location", path)
                .body(full(Bytes::new()))
                .unwrap();
        }
        _ => {}
    }
    let announced = match fault {
        Some(Fault::ShortLength) => bytes.len().saturating_sub(1),
        Some(Fault::LongLength) => bytes.len() + 1000,
        _ => bytes.len(),
    };
    let mut r = Response::builder().header("content-type", content_type);
    if !matches!(
        fault,
        Some(Fault::Chunked | Fault::Endless | Fault::Trickle)
    ) {
        r = r.header("content-length", announced);
    }
    if let Some(d) = digest {
        r = r.header("docker-content-digest", d);
    }
    if head {
        return r.body(full(Bytes::new())).unwrap();
    }
    let body = match fault {
        Some(Fault::Corrupt) => {
            let mut v = bytes.to_vec();
            let i = v.len() / 2;
            v[i] ^= 0xff;
            full(v)
        }
        Some(Fault::Truncate) => {
            // Half the bytes, then an error: hyper closes the connection mid-body.
            let half = bytes.slice(..bytes.len() / 2);
            let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                Ok(Frame::data(half)),
                Err(std::io::Error::other("fault: truncated")),
            ];
            BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
        }
        Some(Fault::Stall) => {
            let half = bytes.slice(..bytes.len() / 2);
            let s = futures_util::stream::once(async move { Ok(Frame::data(half)) }).chain(
                futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Err(std::io::Error::other("fault: stalled"))
                }),
            );
            BodyExt::boxed(StreamBody::new(s))
        }
        Some(Fault::ShortLength) => full(bytes.slice(..announced)),
        Some(Fault::LongLength) => {
            // All the bytes, then an error: hyper closes the connection short of the
            // announced length.
            let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                Ok(Frame::data(bytes)),
                Err(std::io::Error::other("fault: shorter than announced")),
            ];
            BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
        }
        Some(Fault::Chunked) => {
            let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = bytes
                .chunks(64 * 1024)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            BodyExt::boxed(StreamBody::new(futures_util::stream::iter(chunks)))
        }
        Some(Fault::Endless) => {
            let zeros = Bytes::from(vec![0u8; 64 * 1024]);
            let s = futures_util::stream::repeat_with(move || Ok(Frame::data(zeros.clone())));
            BodyExt::boxed(StreamBody::new(s))
        }
        Some(Fault::Trickle) => {
            let s = futures_util::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Some((Ok(Frame::data(Bytes::from_static(b"x"))), ()))
            });
            BodyExt::boxed(StreamBody::new(s))
        }
        _ => full(bytes),
    };
    r.body(body).unwrap()
}

use futures_util::StreamExt as _;
