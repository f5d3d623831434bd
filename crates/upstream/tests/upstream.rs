//! Real upstreams on loopback (small hyper servers emulating a registry, its token endpoint
//! and a CDN), talked to by a real `Upstream`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use pullgate_credentials::SecretSource;
use pullgate_oci::{media_types, Digest, Reference, RepoName};
use pullgate_upstream::{Cause, RefusedRedirect, Upstream, UpstreamConfig, UpstreamError};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: String,
    authorization: Option<String>,
    accept: Option<String>,
}

impl Seen {
    fn param(&self, name: &str) -> Vec<String> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
            .collect()
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A server on `127.0.0.1:0`; bind first so handlers can know their own address.
async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Serves `handler` on `listener` until the test's runtime ends; returns the request log.
fn serve<F>(listener: TcpListener, handler: F) -> Log
where
    F: Fn(&Seen) -> Response<Body> + Send + Sync + 'static,
{
    serve_slow_tokens(listener, Duration::ZERO, handler)
}

/// As [`serve`], answering `/token` only after `token_delay`.
fn serve_slow_tokens<F>(listener: TcpListener, token_delay: Duration, handler: F) -> Log
where
    F: Fn(&Seen) -> Response<Body> + Send + Sync + 'static,
{
    let log: Log = Arc::default();
    let handler = Arc::new(handler);
    let server_log = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            let log = server_log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .map(|v| v.to_str().unwrap().to_owned())
                    };
                    let seen = Seen {
                        method: req.method().to_string(),
                        path: req.uri().path().to_owned(),
                        query: req.uri().query().unwrap_or("").to_owned(),
                        authorization: header("authorization"),
                        accept: header("accept"),
                    };
                    log.lock().unwrap().push(seen.clone());
                    let response = handler(&seen);
                    let delay = if seen.path == "/token" {
                        token_delay
                    } else {
                        Duration::ZERO
                    };
                    async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    log
}

fn response(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Full::new(body.into()).boxed()).unwrap()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn basic(user: &str, pass: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {encoded}")
}

/// What the emulated registries hold.
struct Fixture {
    manifest: Bytes,
    manifest_digest: Digest,
    blob: Bytes,
    blob_digest: Digest,
}

fn fixture() -> Fixture {
    let blob = Bytes::from("layer bytes ".repeat(1000));
    let blob_digest = Digest::sha256_of(&blob);
    let manifest = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{blob_digest}","size":{}}},"layers":[]}}"#,
        media_types::OCI_MANIFEST,
        blob.len()
    ));
    Fixture {
        manifest_digest: Digest::sha256_of(&manifest),
        manifest,
        blob,
        blob_digest,
    }
}

const REPOS: &[&str] = &["library/alpine", "team/app"];

/// The repository a `/v2/<repo>/<kind>/...` path names, and the rest after it.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v2/")?;
    for marker in ["/manifests/", "/blobs/", "/tags/"] {
        if let Some(i) = rest.find(marker) {
            return Some((&rest[..i], &rest[i + 1..]));
        }
    }
    None
}

/// A Distribution-like answer to a registry request that has passed any auth check.
fn content(seen: &Seen, fx: &Fixture) -> Response<Body> {
    let unknown = |code: &str| {
        response(
            404,
            &[("content-type", "application/json")],
            format!(r#"{{"errors":[{{"code":"{code}","message":"unknown"}}]}}"#),
        )
    };
    let Some((repo, rest)) = split_path(&seen.path) else {
        return unknown("NAME_UNKNOWN");
    };
    if !REPOS.contains(&repo) {
        return unknown("NAME_UNKNOWN");
    }
    if let Some(reference) = rest.strip_prefix("manifests/") {
        if reference == "latest" || reference == fx.manifest_digest.to_string() {
            let len = fx.manifest.len().to_string();
            let digest = fx.manifest_digest.to_string();
            return response(
                200,
                &[
                    ("content-type", media_types::OCI_MANIFEST),
                    ("docker-content-digest", &digest),
                    ("content-length", &len),
                ],
                fx.manifest.clone(),
            );
        }
        return unknown("MANIFEST_UNKNOWN");
    }
    if let Some(digest) = rest.strip_prefix("blobs/") {
        if digest == fx.blob_digest.to_string() {
            let len = fx.blob.len().to_string();
            return response(
                200,
                &[
                    ("content-type", "application/octet-stream"),
                    ("content-length", &len),
                ],
                fx.blob.clone(),
            );
        }
        return unknown("BLOB_UNKNOWN");
    }
    if rest == "tags/list" {
        let link = format!(r#"</v2/{repo}/tags/list?n=2&last=b>; rel="next""#);
        return response(
            200,
            &[("content-type", "application/json"), ("link", &link)],
            format!(r#"{{"name":"{repo}","tags":["a","b"]}}"#),
        );
    }
    unknown("NAME_UNKNOWN")
}

fn config(addr: SocketAddr, credentials: Option<SecretSource>) -> UpstreamConfig {
    UpstreamConfig {
        name: pullgate_oci::UpstreamId::parse(&addr.to_string()).unwrap(),
        url: format!("http://{addr}"),
        credentials,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
        user_agent: "pullgate-test".into(),
        token_realms: Vec::new(),
        allow_private_redirects: None,
        max_blob_size: pullgate_upstream::DEFAULT_MAX_BLOB_SIZE,
    }
}

fn upstream(addr: SocketAddr, credentials: Option<SecretSource>) -> Upstream {
    Upstream::new(config(addr, credentials)).unwrap()
}

/// A dockerconfigjson for `host` in a temp dir (kept alive by the returned guard).
fn credentials(host: &str, user: &str, pass: &str) -> (tempfile::TempDir, SecretSource) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    std::fs::write(
        &path,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let source = SecretSource::open(&path).unwrap();
    (dir, source)
}

fn repo(name: &str) -> RepoName {
    RepoName::parse(name).unwrap()
}

fn latest() -> Reference {
    Reference::parse("latest").unwrap()
}

async fn collect(download: pullgate_upstream::BlobDownload) -> Result<Vec<u8>, UpstreamError> {
    let mut out = Vec::new();
    let mut stream = download.stream;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[tokio::test]
async fn anonymous_manifests_and_blobs() {
    let fx = Arc::new(fixture());
    let (listener, addr) = bind().await;
    let server_fx = fx.clone();
    let log = serve(listener, move |seen| content(seen, &server_fx));
    let up = upstream(addr, None);
    let alpine = repo("library/alpine");

    let head = up.head_manifest(&alpine, &latest()).await.unwrap();
    assert_eq!(head.digest.as_ref(), Some(&fx.manifest_digest));
    assert_eq!(head.media_type.as_deref(), Some(media_types::OCI_MANIFEST));
    assert_eq!(head.size, Some(fx.manifest.len() as u64));

    let by_digest = Reference::Digest(fx.manifest_digest.clone());
    let got = up.get_manifest(&alpine, &by_digest, 4096).await.unwrap();
    assert_eq!(got.bytes, fx.manifest);
    assert_eq!(got.digest.as_ref(), Some(&fx.manifest_digest));
    assert_eq!(got.media_type.as_deref(), Some(media_types::OCI_MANIFEST));

    assert_eq!(
        up.head_blob(&alpine, &fx.blob_digest).await.unwrap(),
        fx.blob.len() as u64
    );
    let download = up.get_blob(&alpine, &fx.blob_digest).await.unwrap();
    assert_eq!(download.size, Some(fx.blob.len() as u64));
    assert_eq!(collect(download).await.unwrap(), fx.blob);

    let log = log.lock().unwrap();
    assert_eq!(log.len(), 4);
    assert!(log.iter().all(|s| s.authorization.is_none()));
    assert_eq!(log[0].method, "HEAD");
    for seen in &log[..2] {
        let accept = seen.accept.as_deref().unwrap();
        for t in media_types::ALL_MANIFESTS {
            assert!(accept.contains(t), "{t} missing from {accept}");
        }
    }
}

#[tokio::test]
async fn unknown_things_are_not_found() {
    let fx = Arc::new(fixture());
    let (listener, addr) = bind().await;
    let server_fx = fx.clone();
    serve(listener, move |seen| content(seen, &server_fx));
    let up = upstream(addr, None);

    let missing_tag = Reference::parse("nope").unwrap();
    let err = up
        .get_manifest(&repo("library/alpine"), &missing_tag, 4096)
        .await;
    assert_eq!(err.unwrap_err(), UpstreamError::NotFound);
    let err = up.head_manifest(&repo("no/such"), &latest()).await;
    assert_eq!(err.unwrap_err(), UpstreamError::NotFound);
    let other = Digest::sha256_of(b"other");
    let err = up.get_blob(&repo("library/alpine"), &other).await;
    assert_eq!(err.unwrap_err(), UpstreamError::NotFound);
    let err = up.head_blob(&repo("library/alpine"), &other).await;
    assert_eq!(err.unwrap_err(), UpstreamError::NotFound);
}

/// A registry behind a Bearer token endpoint (on the same server) that wants Basic
/// `user:pass` for tokens and checks each token's scope.
fn bearer_registry(listener: TcpListener, addr: SocketAddr, fx: Arc<Fixture>) -> Log {
    slow_bearer_registry(listener, addr, fx, Duration::ZERO)
}

/// As [`bearer_registry`], its token endpoint answering only after `token_delay`.
fn slow_bearer_registry(
    listener: TcpListener,
    addr: SocketAddr,
    fx: Arc<Fixture>,
    token_delay: Duration,
) -> Log {
    let issued: Mutex<HashMap<String, String>> = Mutex::default();
    serve_slow_tokens(listener, token_delay, move |seen| {
        if seen.path == "/token" {
            if seen.authorization.as_deref() != Some(basic("user", "pass").as_str()) {
                return response(401, &[], "");
            }
            let mut issued = issued.lock().unwrap();
            let token = format!("tok{}", issued.len());
            issued.insert(token.clone(), seen.param("scope").join(" "));
            return response(
                200,
                &[("content-type", "application/json")],
                format!(
                    r#"{{"token":"{token}","expires_in":300,"issued_at":"2024-01-01T00:00:00Z"}}"#
                ),
            );
        }
        let repo = split_path(&seen.path).map_or("", |(r, _)| r);
        let scope = format!("repository:{repo}:pull");
        let authorized = seen
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| issued.lock().unwrap().get(t) == Some(&scope));
        if !authorized {
            let challenge = format!(
                r#"Bearer realm="http://{addr}/token",service="test-registry",scope="{scope}""#
            );
            return response(
                401,
                &[
                    ("www-authenticate", &challenge),
                    ("content-type", "application/json"),
                ],
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
        }
        content(seen, &fx)
    })
}

#[tokio::test]
async fn bearer_tokens_are_fetched_once_per_scope() {
    let fx = Arc::new(fixture());
    let (listener, addr) = bind().await;
    let log = bearer_registry(listener, addr, fx.clone());
    let (_dir, creds) = credentials(&addr.to_string(), "user", "pass");
    let up = upstream(addr, Some(creds));
    let alpine = repo("library/alpine");

    let first = up.get_manifest(&alpine, &latest(), 4096).await.unwrap();
    assert_eq!(first.bytes, fx.manifest);
    let head = up.head_manifest(&alpine, &latest()).await.unwrap();
    assert_eq!(head.digest.as_ref(), Some(&fx.manifest_digest));
    let blob = up.get_blob(&alpine, &fx.blob_digest).await.unwrap();
    assert_eq!(collect(blob).await.unwrap(), fx.blob);

    let tokens = |log: &Log| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == "/token")
            .cloned()
            .collect::<Vec<_>>()
    };
    let fetched = tokens(&log);
    assert_eq!(fetched.len(), 1, "one token for one scope");
    assert_eq!(fetched[0].param("service"), ["test-registry"]);
    assert_eq!(
        fetched[0].param("scope"),
        ["repository:library/alpine:pull"]
    );
    // 401, retry with the token, then two requests with the cached token.
    assert_eq!(log.lock().unwrap().len(), 1 + 2 + 2);

    up.head_manifest(&repo("team/app"), &latest())
        .await
        .unwrap();
    let fetched = tokens(&log);
    assert_eq!(fetched.len(), 2, "a second scope needs a second token");
    assert_eq!(fetched[1].param("scope"), ["repository:team/app:pull"]);
    up.head_manifest(&alpine, &latest()).await.unwrap();
    assert_eq!(
        tokens(&log).len(),
        2,
        "the first scope's token is still cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_challenges_for_one_scope_share_one_token_handshake() {
    let fx = Arc::new(fixture());
    let (listener, addr) = bind().await;
    // A slow token server: every call is challenged before the first token arrives.
    let log = slow_bearer_registry(listener, addr, fx.clone(), Duration::from_millis(300));
    let (_dir, creds) = credentials(&addr.to_string(), "user", "pass");
    let up = Arc::new(upstream(addr, Some(creds)));
    // A cold pull: the manifest and many blobs asked for at once, each answered 401.
    let calls = (0..32).map(|i| {
        let up = Arc::clone(&up);
        let fx = Arc::clone(&fx);
        tokio::spawn(async move {
            let alpine = repo("library/alpine");
            if i % 2 == 0 {
                let blob = up.get_blob(&alpine, &fx.blob_digest).await?;
                assert_eq!(collect(blob).await?, fx.blob);
            } else {
                up.head_manifest(&alpine, &latest()).await?;
            }
            Ok::<_, UpstreamError>(())
        })
    });
    for r in futures_util::future::join_all(calls).await {
        r.unwrap().unwrap();
    }
    let log = log.lock().unwrap();
    let tokens = log.iter().filter(|s| s.path == "/token").count();
    assert_eq!(tokens, 1, "one handshake for one scope");
    let challenged = log
        .iter()
        .filter(|s| s.path != "/token" && s.authorization.is_none())
        .count();
    assert!(challenged > 1, "the requests did not overlap: {challenged}");
}

#[tokio::test]
async fn bearer_with_wrong_or_no_credentials_is_denied() {
    let fx = Arc::new(fixture());
    let (listener, addr) = bind().await;
    let log = bearer_registry(listener, addr, fx);
    let (_dir, creds) = credentials(&addr.to_string(), "user", "wrong");
    let up = upstream(addr, Some(creds));
    let err = up.head_manifest(&repo("library/alpine"), &latest()).await;
    assert_eq!(err.unwrap_err(), UpstreamError::Denied);

    let anonymous = upstream(addr, None);
    let err = anonymous
        .get_manifest(&repo("library/alpine"), &latest(), 4096)
        .await;
    assert_eq!(err.unwrap_err(), UpstreamError::Denied);
    let log = log.lock().unwrap();
    let token_requests: Vec<_> = log.iter().filter(|s| s.path == "/token").collect();
    assert_eq!(token_requests.len(), 2);
    assert_eq!(
        token_requests[0].authorization.as_deref(),
        Some(basic("user", "wrong").as_str())
    );
    assert_eq!(token_requests[1].authorization, None);
}

/// A registry wanting Basic `user:pass` on every request.
fn basic_registry(listener: TcpListener, fx: Arc<Fixture>, cdn: Option<SocketAddr>) -> Log {
    serve(listener, move |seen| {
        if seen.authorization.as_deref() != Some(basic("user", "pass").as_str()) {
            return response(
                401,
                &[("www-authenticate", r#"Basic realm="registry""#)],
                "",
            );
        }
        if let (Some(cdn), Some((_, rest))) = (cdn, split_path(&seen.path)) {
            if rest.starts_with("blobs/") {
                let to = format!("http://{cdn}/cdn{}?sig=secret", seen.path);
                return response(307, &[("location", &to)], "");
            }
        }
        if seen.path.starts_with("/same-origin/") {
            return content(
                &Seen {
                    path: seen.path.trim_start_matches("/same-origin").to_owned(),
                    ..seen.clone()
                },
                &fx,
            );
        }
        if let Some((_, "manifests/moved")) = split_path(&seen.path) {
            return response(
                302,
                &[(
                    "location",
                    "/same-origin/v2/library/alpine/manifests/latest",
                )],
                "",
            );
        }
        content(seen, &fx)
    })
}

#[tokio::test]
async fn basic_auth_is_remembered() {
    let fx = Arc::new(fixture());
    let (listener, addr) = bind().await;
    let log = basic_registry(listener, fx.clone(), None);
    let (_dir, creds) = credentials(&addr.to_string(), "user", "pass");
    let up = upstream(addr, Some(creds));
    let alpine = repo("library/alpine");

    up.head_manifest(&alpine, &latest()).await.unwrap();
    assert_eq!(log.lock().unwrap().len(), 2, "401, then Basic");
    let got = up.get_manifest(&alpine, &latest(), 4096).await.unwrap();
    assert_eq!(got.bytes, fx.manifest);
    let log_now = log.lock().unwrap().clone();
    assert_eq!(
        log_now.len(),
        3,
        "Basic sent up front once the upstream asked for it"
    );
    assert_eq!(
        log_now[2].authorization.as_deref(),
        Some(basic("user", "pass").as_str())
    );

    // A same-origin redirect keeps the credentials.
    let moved = Reference::parse("moved").unwrap();
    let got = up.get_manifest(&alpine, &moved, 4096).await.unwrap();
    assert_eq!(got.bytes, fx.manifest);
    let last = log.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.path, "/same-origin/v2/library/alpine/manifests/latest");
    assert_eq!(
        last.authorization.as_deref(),
        Some(basic("user", "pass").as_str())
    );

    let (_dir2, wrong) = credentials(&addr.to_string(), "user", "wrong");
    let err = upstream(addr, Some(wrong))
        .head_manifest(&alpine, &latest())
        .await;
    assert_eq!(err.unwrap_err(), UpstreamError::Denied);
    let err = upstream(addr, None).head_manifest(&alpine, &latest()).await;
    assert_eq!(err.unwrap_err(), UpstreamError::Denied);
}

#[tokio::test]
async fn redirects_to_another_origin_carry_no_credentials() {
    let fx = Arc::new(fixture());
    let (cdn_listener, cdn_addr) = bind().await;
    let cdn_blob = fx.blob.clone();
    let cdn_log = serve(cdn_listener, move |_| {
        let len = cdn_blob.len().to_string();
        response(200, &[("content-length", &len)], cdn_blob.clone())
    });
    let (listener, addr) = bind().await;
    let log = basic_registry(listener, fx.clone(), Some(cdn_addr));
    let (_dir, creds) = credentials(&addr.to_string(), "user", "pass");
    let up = upstream(addr, Some(creds));

    let download = up
        .get_blob(&repo("library/alpine"), &fx.blob_digest)
        .await
        .unwrap();
    assert_eq!(download.size, Some(fx.blob.len() as u64));
    assert_eq!(collect(download).await.unwrap(), fx.blob);

    let registry_log = log.lock().unwrap();
    assert_eq!(
        registry_log.last().unwrap().authorization.as_deref(),
        Some(basic("user", "pass").as_str())
    );
    let cdn_log = cdn_log.lock().unwrap();
    assert_eq!(cdn_log.len(), 1);
    assert_eq!(
        cdn_log[0].authorization, None,
        "credentials leaked to the CDN"
    );
    assert_eq!(cdn_log[0].query, "sig=secret");
    assert!(cdn_log[0].path.starts_with("/cdn/v2/library/alpine/blobs/"));
}

#[tokio::test]
async fn rate_limits_are_reported_not_retried() {
    let (listener, addr) = bind().await;
    let log = serve(listener, |_| {
        response(
            429,
            &[("retry-after", "7")],
            r#"{"errors":[{"code":"TOOMANYREQUESTS"}]}"#,
        )
    });
    let err = upstream(addr, None)
        .head_manifest(&repo("library/alpine"), &latest())
        .await;
    assert_eq!(
        err.unwrap_err(),
        UpstreamError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn transient_5xx_is_retried() {
    let fx = Arc::new(fixture());
    let (listener, addr) = bind().await;
    let server_fx = fx.clone();
    let failures = Mutex::new(0);
    let log = serve(listener, move |seen| {
        let mut failures = failures.lock().unwrap();
        if *failures < 2 {
            *failures += 1;
            return response(503, &[], "busy");
        }
        content(seen, &server_fx)
    });
    let up = upstream(addr, None);
    let got = up
        .get_manifest(&repo("library/alpine"), &latest(), 4096)
        .await
        .unwrap();
    assert_eq!(got.bytes, fx.manifest);
    assert_eq!(log.lock().unwrap().len(), 3);

    let (listener, addr) = bind().await;
    let log = serve(listener, |_| response(503, &[], ""));
    let err = upstream(addr, None)
        .head_blob(&repo("library/alpine"), &fx.blob_digest)
        .await;
    assert_eq!(
        err.unwrap_err(),
        UpstreamError::Unavailable {
            cause: Cause::Status(503),
            detail: "upstream answered 503".into()
        }
    );
    assert_eq!(log.lock().unwrap().len(), 3, "three attempts in all");
}

#[tokio::test]
async fn closed_port_is_unavailable() {
    let (listener, addr) = bind().await;
    drop(listener);
    let err = upstream(addr, None)
        .head_manifest(&repo("library/alpine"), &latest())
        .await
        .unwrap_err();
    match err {
        UpstreamError::Unavailable {
            cause: Cause::Connect,
            detail,
        } => assert!(!detail.contains("http://"), "{detail}"),
        other => panic!("expected a connect failure, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_manifests_are_refused() {
    let (listener, addr) = bind().await;
    serve(listener, |seen| {
        let big = Bytes::from(vec![b'x'; 10_000]);
        if seen.path.ends_with("/chunked") {
            // No Content-Length: the limit must hold as the bytes arrive.
            let chunks =
                (0..10).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 1000]))));
            let body =
                http_body_util::BodyExt::boxed(StreamBody::new(futures_util::stream::iter(chunks)));
            return Response::builder().status(200).body(body).unwrap();
        }
        response(200, &[("content-type", media_types::OCI_MANIFEST)], big)
    });
    let up = upstream(addr, None);
    let alpine = repo("library/alpine");
    let err = up.get_manifest(&alpine, &latest(), 4096).await;
    assert_eq!(err.unwrap_err(), UpstreamError::TooLarge);
    let chunked = Reference::parse("chunked").unwrap();
    let err = up.get_manifest(&alpine, &chunked, 4096).await;
    assert_eq!(err.unwrap_err(), UpstreamError::TooLarge);
    // Within the limit, the same answers are fine.
    assert_eq!(
        up.get_manifest(&alpine, &chunked, 10_000)
            .await
            .unwrap()
            .bytes
            .len(),
        10_000
    );
}

#[tokio::test]
async fn tags_list_passes_through_with_link() {
    let fx = Arc::new(fixture());
    let (listener, addr) = bind().await;
    let log = serve(listener, move |seen| content(seen, &fx));
    let up = upstream(addr, None);
    let p = up
        .get_passthrough(&repo("team/app"), "tags/list?n=2&last=a", None)
        .await
        .unwrap();
    assert_eq!(p.status, 200);
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        p.link.as_deref(),
        Some(r#"</v2/team/app/tags/list?n=2&last=b>; rel="next""#)
    );
    assert_eq!(&p.body[..], br#"{"name":"team/app","tags":["a","b"]}"#);
    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(seen.path, "/v2/team/app/tags/list");
    assert_eq!(seen.query, "n=2&last=a");

    let err = up
        .get_passthrough(&repo("no/such"), "tags/list", None)
        .await;
    assert_eq!(err.unwrap_err(), UpstreamError::NotFound);
    let err = up
        .get_passthrough(&repo("team/app"), "../../other/tags/list", None)
        .await;
    assert!(matches!(err, Err(UpstreamError::Protocol(_))));
}

#[tokio::test]
async fn stalled_blob_body_times_out() {
    let (listener, addr) = bind().await;
    serve(listener, |_| {
        // Ten bytes of a promised thousand, then silence.
        let first = futures_util::stream::iter([Ok::<_, Infallible>(Frame::data(
            Bytes::from_static(b"0123456789"),
        ))]);
        let body = http_body_util::BodyExt::boxed(StreamBody::new(
            first.chain(futures_util::stream::pending()),
        ));
        Response::builder()
            .status(200)
            .header("content-length", "1000")
            .body(body)
            .unwrap()
    });
    let up = Upstream::new(UpstreamConfig {
        read_timeout: Duration::from_millis(300),
        ..config(addr, None)
    })
    .unwrap();
    let download = up
        .get_blob(&repo("library/alpine"), &Digest::sha256_of(b"x"))
        .await
        .unwrap();
    assert_eq!(download.size, Some(1000));
    let mut stream = download.stream;
    let mut received = 0;
    let err = loop {
        match stream.next().await {
            Some(Ok(chunk)) => received += chunk.len(),
            Some(Err(e)) => break e,
            None => panic!("a stalled body must not end cleanly"),
        }
    };
    assert_eq!(received, 10);
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.kind(), Some(pullgate_upstream::ErrorKind::Timeout));
}

#[tokio::test]
async fn a_token_endpoint_5xx_is_a_server_error_not_unreachable() {
    let (listener, addr) = bind().await;
    serve(listener, move |seen| {
        if seen.path == "/token" {
            return response(503, &[], "down");
        }
        let challenge = format!(r#"Bearer realm="http://{addr}/token",service="s""#);
        response(401, &[("www-authenticate", &challenge)], "")
    });
    let up = upstream(addr, None);
    let err = up
        .head_manifest(&repo("library/alpine"), &latest())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            UpstreamError::Unavailable {
                cause: Cause::TokenEndpoint(503),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_timeout());
    let counted: Vec<_> = up.errors().snapshot().filter(|(_, n)| *n > 0).collect();
    assert_eq!(counted, [(pullgate_upstream::ErrorKind::ServerError, 1)]);
}

/// A registry at `addr` whose challenges name a token realm on another origin (`realm`,
/// another port), which hands out `Bearer authed` for `user:pass` and `Bearer anon` to
/// anyone. The registry takes either.
fn registry_with_foreign_realm(listener: TcpListener, realm: SocketAddr, fx: Arc<Fixture>) -> Log {
    serve(listener, move |seen| {
        let token = seen
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "));
        if !matches!(token, Some("authed" | "anon")) {
            let challenge = format!(r#"Bearer realm="http://{realm}/token",service="s""#);
            return response(401, &[("www-authenticate", &challenge)], "");
        }
        content(seen, &fx)
    })
}

fn foreign_realm(listener: TcpListener) -> Log {
    serve(listener, |seen| {
        let token = if seen.authorization.as_deref() == Some(basic("user", "pass").as_str()) {
            "authed"
        } else {
            "anon"
        };
        response(
            200,
            &[("content-type", "application/json")],
            format!(r#"{{"token":"{token}","expires_in":300}}"#),
        )
    })
}

#[tokio::test]
async fn a_realm_on_another_origin_never_sees_the_credentials() {
    let fx = Arc::new(fixture());
    let (realm_listener, realm_addr) = bind().await;
    let realm_log = foreign_realm(realm_listener);
    let (listener, addr) = bind().await;
    registry_with_foreign_realm(listener, realm_addr, fx.clone());
    let (_dir, creds) = credentials(&addr.to_string(), "user", "pass");

    // Not listed: an anonymous token, which is all a public image needs.
    let up = upstream(addr, Some(creds.clone()));
    let got = up
        .get_manifest(&repo("library/alpine"), &latest(), 4096)
        .await
        .unwrap();
    assert_eq!(got.bytes, fx.manifest);
    {
        let log = realm_log.lock().unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(
            log[0].authorization, None,
            "credentials sent to a foreign realm"
        );
    }

    // Listed for this upstream: the credentials go there.
    let listed = Upstream::new(UpstreamConfig {
        token_realms: vec![format!("http://{realm_addr}")],
        ..config(addr, Some(creds))
    })
    .unwrap();
    listed
        .head_manifest(&repo("team/app"), &latest())
        .await
        .unwrap();
    let log = realm_log.lock().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(
        log[1].authorization.as_deref(),
        Some(basic("user", "pass").as_str())
    );
}

/// A registry that redirects manifests, tags lists and referrers to `elsewhere`, and
/// blobs to `blob_target` (a URL prefix), and serves its own content under `/own/`.
fn redirecting_registry(
    listener: TcpListener,
    elsewhere: SocketAddr,
    blob_target: String,
    fx: Arc<Fixture>,
) -> Log {
    serve(listener, move |seen| {
        if let Some(path) = seen.path.strip_prefix("/own") {
            return content(
                &Seen {
                    path: path.to_owned(),
                    ..seen.clone()
                },
                &fx,
            );
        }
        let rest = split_path(&seen.path).map_or("", |(_, rest)| rest);
        let to = if rest.starts_with("blobs/") {
            format!("{blob_target}{}", seen.path)
        } else if rest == "manifests/same" {
            "/own/v2/library/alpine/manifests/latest".to_owned()
        } else {
            format!("http://{elsewhere}{}", seen.path)
        };
        response(307, &[("location", &to)], "")
    })
}

/// Whatever is asked: a tags list, a manifest, a blob; it logs what reaches it.
fn internal_service(listener: TcpListener, fx: Arc<Fixture>) -> Log {
    serve(listener, move |seen| {
        if seen.path.contains("/blobs/") {
            let len = fx.blob.len().to_string();
            return response(200, &[("content-length", &len)], fx.blob.clone());
        }
        response(
            200,
            &[("content-type", "application/json")],
            r#"{"name":"library/alpine","tags":["internal-secret"]}"#,
        )
    })
}

#[tokio::test]
async fn manifests_tags_and_referrers_follow_only_same_origin_redirects() {
    let fx = Arc::new(fixture());
    let (inner, inner_addr) = bind().await;
    let inner_log = internal_service(inner, fx.clone());
    let (listener, addr) = bind().await;
    redirecting_registry(
        listener,
        inner_addr,
        format!("http://{inner_addr}"),
        fx.clone(),
    );
    // Allowed to redirect blobs anywhere: only the kind of request decides here.
    let up = Upstream::new(UpstreamConfig {
        allow_private_redirects: Some(true),
        ..config(addr, None)
    })
    .unwrap();
    let alpine = repo("library/alpine");
    let refused = UpstreamError::Redirect(RefusedRedirect::CrossOrigin);

    assert_eq!(
        up.get_passthrough(&alpine, "tags/list", None)
            .await
            .unwrap_err(),
        refused
    );
    let referrers = format!("referrers/{}", fx.manifest_digest);
    assert_eq!(
        up.get_passthrough(&alpine, &referrers, None)
            .await
            .unwrap_err(),
        refused
    );
    assert_eq!(
        up.get_manifest(&alpine, &latest(), 4096).await.unwrap_err(),
        refused
    );
    assert_eq!(
        up.head_manifest(&alpine, &latest()).await.unwrap_err(),
        refused
    );
    assert!(
        inner_log.lock().unwrap().is_empty(),
        "{:?}",
        inner_log.lock().unwrap()
    );

    // Within the origin, a redirect is followed; a blob may leave it.
    let same = Reference::parse("same").unwrap();
    assert_eq!(
        up.get_manifest(&alpine, &same, 4096).await.unwrap().bytes,
        fx.manifest
    );
    let blob = up.get_blob(&alpine, &fx.blob_digest).await.unwrap();
    assert_eq!(collect(blob).await.unwrap(), fx.blob);
    assert_eq!(inner_log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn blob_redirects_into_internal_addresses_are_refused() {
    let fx = Arc::new(fixture());
    let (inner, inner_addr) = bind().await;
    let inner_log = internal_service(inner, fx.clone());
    let alpine = repo("library/alpine");
    // Tests stay on 127.0.0.1, so the upstream is itself internal and, by default, may
    // redirect there; `allow_private_redirects = false` makes it stand in for a public one.
    for target in [
        format!("http://{inner_addr}"),
        format!("http://localhost:{}", inner_addr.port()),
    ] {
        let (listener, addr) = bind().await;
        redirecting_registry(listener, inner_addr, target.clone(), fx.clone());
        let strict = Upstream::new(UpstreamConfig {
            allow_private_redirects: Some(false),
            ..config(addr, None)
        })
        .unwrap();
        let err = strict.get_blob(&alpine, &fx.blob_digest).await.unwrap_err();
        assert_eq!(
            err,
            UpstreamError::Redirect(RefusedRedirect::InternalAddress),
            "{target}"
        );
        let err = strict
            .head_blob(&alpine, &fx.blob_digest)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            UpstreamError::Redirect(RefusedRedirect::InternalAddress),
            "{target}"
        );
        assert!(inner_log.lock().unwrap().is_empty(), "{target} was reached");
        // The upstream's own origin is still reachable, redirects within it too.
        let same = Reference::parse("same").unwrap();
        assert_eq!(
            strict
                .get_manifest(&alpine, &same, 4096)
                .await
                .unwrap()
                .bytes,
            fx.manifest
        );
    }

    // The default: an upstream on loopback may send its blobs to loopback.
    let (listener, addr) = bind().await;
    redirecting_registry(
        listener,
        inner_addr,
        format!("http://{inner_addr}"),
        fx.clone(),
    );
    let blob = upstream(addr, None)
        .get_blob(&alpine, &fx.blob_digest)
        .await
        .unwrap();
    assert_eq!(collect(blob).await.unwrap(), fx.blob);
    assert_eq!(inner_log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn blobs_over_the_maximum_size_are_refused_and_cut_off() {
    let endless = Digest::sha256_of(b"endless");
    let endless_path = format!("/v2/library/alpine/blobs/{endless}");
    let (listener, addr) = bind().await;
    serve(listener, move |seen| {
        if seen.path == endless_path {
            // No Content-Length and no end: only the limit stops it.
            let chunks = futures_util::stream::repeat_with(|| {
                Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 1000])))
            });
            let body = http_body_util::BodyExt::boxed(StreamBody::new(chunks));
            return Response::builder().status(200).body(body).unwrap();
        }
        response(200, &[("content-length", "10000")], vec![b'x'; 10_000])
    });
    let limited = Upstream::new(UpstreamConfig {
        max_blob_size: 4096,
        ..config(addr, None)
    })
    .unwrap();
    let alpine = repo("library/alpine");
    // Refused up front by its Content-Length: no stream at all.
    let err = limited
        .get_blob(&alpine, &Digest::sha256_of(b"any"))
        .await
        .unwrap_err();
    assert_eq!(err, UpstreamError::BlobTooLarge { limit: 4096 });

    // Chunked and endless: the stream fails once it passes the limit, and then ends.
    let download = limited.get_blob(&alpine, &endless).await.unwrap();
    assert_eq!(download.size, None);
    let mut stream = download.stream;
    let mut received = 0;
    let read = async {
        loop {
            match stream.next().await {
                Some(Ok(chunk)) => received += chunk.len(),
                Some(Err(e)) => break e,
                None => panic!("an endless body ended cleanly"),
            }
        }
    };
    let err = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an endless body is read without bound");
    assert_eq!(err, UpstreamError::BlobTooLarge { limit: 4096 });
    assert!(
        received <= 4096,
        "{received} bytes passed a 4096-byte limit"
    );
    for _ in 0..3 {
        // Polled again after its end, as a fill's batching does: still the end, no panic.
        assert!(
            stream.next().await.is_none(),
            "the stream goes on after its limit"
        );
    }
    let counted: Vec<_> = limited
        .errors()
        .snapshot()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(counted, [(pullgate_upstream::ErrorKind::Invalid, 2)]);

    // Within the limit, the same answer is fine.
    let roomy = Upstream::new(UpstreamConfig {
        max_blob_size: 10_000,
        ..config(addr, None)
    })
    .unwrap();
    let mut blob = roomy
        .get_blob(&alpine, &Digest::sha256_of(b"any"))
        .await
        .unwrap()
        .stream;
    let mut len = 0;
    while let Some(chunk) = blob.next().await {
        len += chunk.unwrap().len();
    }
    assert_eq!(len, 10_000);
    assert!(blob.next().await.is_none(), "polled after its end");
}
