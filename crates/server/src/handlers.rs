//! From a routed request to a response. Every failure becomes an `ApiError` here and is
//! logged once, with the request it belongs to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use pullgate_mirror::{BlobResponse, ManifestResponse, Mirror, PassthroughResponse};
use pullgate_oci::{AcceptList, RangeSpec, RepoName};

use crate::body::Body;
use crate::error::ApiError;
use crate::route::{Query, Route};

const API_VERSION: &str = "registry/2.0";

/// Everything a request handler needs.
pub struct App {
    pub mirror: Arc<Mirror>,
}

pub(crate) async fn handle<B>(app: Arc<App>, req: Request<B>, peer: SocketAddr) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let head = method == http::Method::HEAD;
    let path = req.uri().path().to_owned();
    let query = Query::parse(req.uri().query());

    let (mut resp, source) = match dispatch(&app, &req, &method, &path, &query).await {
        Ok(ok) => ok,
        Err(e) => {
            log_error(&e, &method, &path, peer);
            (e.into_response(head), None)
        }
    };
    resp.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static(API_VERSION),
    );
    tracing::info!(
        target: "pullgate::access",
        client = %peer,
        %method,
        path,
        status = resp.status().as_u16(),
        source = source.unwrap_or("-"),
        ms = started.elapsed().as_millis() as u64,
    );
    resp
}

fn log_error(e: &ApiError, method: &http::Method, path: &str, peer: SocketAddr) {
    let detail = e.log_detail().unwrap_or("");
    if e.status.is_server_error() {
        tracing::warn!(client = %peer, %method, path, code = e.code.as_str(), detail, "request failed");
    } else {
        tracing::debug!(client = %peer, %method, path, code = e.code.as_str(), detail, "request refused");
    }
}

type Handled = (Response<Body>, Option<&'static str>);

async fn dispatch<B>(
    app: &App,
    req: &Request<B>,
    method: &http::Method,
    path: &str,
    query: &Query,
) -> Result<Handled, ApiError> {
    let route = Route::parse(method, path)?;
    let mirror = &app.mirror;
    let target = |name: &RepoName| mirror.route(query.ns.as_deref(), name);
    match route {
        Route::Base => Ok((json_ok(b"{}"), None)),
        Route::Healthz => Ok((text_ok("ok\n"), None)),
        Route::Manifest {
            name,
            reference,
            head,
        } => {
            let accept = AcceptList::from_headers(
                req.headers()
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            let m = mirror
                .manifest(&target(&name)?, &reference, &accept)
                .await?;
            let source = m.source.as_str();
            Ok((manifest_response(m, head), Some(source)))
        }
        Route::Blob { name, digest, head } => {
            let range = req
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| RangeSpec::parse(v).ok());
            let b = mirror.blob(&target(&name)?, &digest, range, head).await?;
            let source = b.source.as_str();
            Ok((blob_response(b, &digest.to_string()), Some(source)))
        }
        Route::Tags { name } => {
            let p = mirror.tags_list(&target(&name)?, &query.forward).await?;
            Ok((passthrough_response(p), Some("upstream")))
        }
        Route::Referrers { name, digest } => {
            let p = mirror
                .referrers(&target(&name)?, &digest, &query.forward)
                .await?;
            Ok((passthrough_response(p), Some("upstream")))
        }
    }
}

fn json_ok(body: &'static [u8]) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    resp
}

fn text_ok(body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn insert_str(h: &mut HeaderMap, name: impl header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn manifest_response(m: ManifestResponse, head: bool) -> Response<Body> {
    let len = m.bytes.len();
    let mut resp = Response::new(if head {
        Body::Empty
    } else {
        Body::full(m.bytes)
    });
    let h = resp.headers_mut();
    insert_str(h, header::CONTENT_TYPE, &m.media_type);
    insert_str(h, "Docker-Content-Digest", &m.digest.to_string());
    insert_str(h, header::ETAG, &format!("\"{}\"", m.digest));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn blob_response(b: BlobResponse, digest: &str) -> Response<Body> {
    let len = b.content_length();
    let (status, content_range) = match b.range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, Some(r.content_range(b.size))),
        None => (StatusCode::OK, None),
    };
    let body = match b.body {
        Some(stream) => Body::Blob {
            stream,
            remaining: len,
        },
        None => Body::Empty,
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    insert_str(h, "Docker-Content-Digest", digest);
    insert_str(h, header::ETAG, &format!("\"{digest}\""));
    if let Some(cr) = content_range {
        insert_str(h, header::CONTENT_RANGE, &cr);
    }
    resp
}

fn passthrough_response(p: PassthroughResponse) -> Response<Body> {
    let len = p.body.len();
    let mut resp = Response::new(Body::full(p.body));
    *resp.status_mut() = StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    insert_str(
        h,
        header::CONTENT_TYPE,
        p.content_type.as_deref().unwrap_or("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(link) = &p.link {
        insert_str(h, header::LINK, link);
    }
    resp
}
