//! Responses as the distribution API shapes them: a small body held whole, a manifest with
//! its digest headers, a blob (whole or a range) streamed, an upstream answer passed on.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use pullgate_mirror::{BlobResponse, ManifestResponse, PassthroughResponse};

use crate::body::Body;

/// A 200 with a small body held whole, its type and exact length.
pub(crate) fn full_ok(body: impl Into<bytes::Bytes>, content_type: &'static str) -> Response<Body> {
    let body = body.into();
    let len = body.len();
    let mut resp = Response::new(Body::full(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

pub(crate) fn json_ok(body: &'static [u8]) -> Response<Body> {
    full_ok(body, "application/json")
}

pub(crate) fn text_ok(body: &'static str) -> Response<Body> {
    full_ok(body, "text/plain; charset=utf-8")
}

fn insert_str(h: &mut HeaderMap, name: impl header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

pub(crate) fn manifest_response(m: ManifestResponse, head: bool) -> Response<Body> {
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

pub(crate) fn blob_response(
    b: BlobResponse,
    digest: &str,
    served: &Arc<AtomicU64>,
) -> Response<Body> {
    let len = b.content_length();
    let (status, content_range) = match b.range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, Some(r.content_range(b.size))),
        None => (StatusCode::OK, None),
    };
    let body = match b.body {
        Some(stream) => Body::blob(stream, len, Arc::clone(served)),
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

pub(crate) fn passthrough_response(p: PassthroughResponse) -> Response<Body> {
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
    if let Some(filters) = &p.filters_applied {
        insert_str(
            h,
            header::HeaderName::from_static("oci-filters-applied"),
            filters,
        );
    }
    resp
}
