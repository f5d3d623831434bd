//! From a routed request to a response. Every failure becomes an `ApiError` here and is
//! logged once, with the request it belongs to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use pullgate_auth::{Access, AuthError, Authenticator};
use pullgate_mirror::{
    BlobResponse, ClientId, ManifestResponse, Mirror, PassthroughResponse, Target,
};
use pullgate_oci::{AcceptList, RangeSpec, RepoName};

use crate::audit::{Audit, AuditEvent};
use crate::metrics::Metrics;
use crate::realm::{Conn, RealmPolicy};
use crate::token;

use crate::body::Body;
use crate::error::ApiError;
use crate::route::{Query, Route};

const API_VERSION: &str = "registry/2.0";

/// Everything a request handler needs.
pub struct App {
    pub mirror: Arc<Mirror>,
    /// Who may pull: checked once, centrally, before any handler runs.
    pub auth: Authenticator,
    pub audit: Audit,
    pub(crate) metrics: Arc<Metrics>,
}

impl App {
    pub fn new(mirror: Arc<Mirror>, auth: Authenticator, audit: Audit) -> App {
        App {
            mirror,
            auth,
            audit,
            metrics: Arc::default(),
        }
    }
}

/// What the audit line and the access log say about a request, filled in as it is handled.
#[derive(Default)]
struct Ctx {
    user: Option<String>,
    upstream: Option<String>,
    repo: Option<String>,
    reference: Option<String>,
    digest: Option<String>,
    /// Manifest pulls are audited whatever their outcome.
    manifest: bool,
    /// The metrics label of the route, once known.
    route: &'static str,
    source: Option<&'static str>,
    bytes: u64,
}

pub(crate) async fn handle<B>(
    app: Arc<App>,
    req: Request<B>,
    conn: Conn,
    realm: &RealmPolicy,
) -> Response<Body> {
    let peer = conn.peer;
    let started = Instant::now();
    let method = req.method().clone();
    let head = method == http::Method::HEAD;
    let path = req.uri().path().to_owned();
    let query = Query::parse(req.uri().query());
    let mut ctx = Ctx {
        route: "invalid",
        ..Ctx::default()
    };

    let mut resp = match dispatch(&app, &req, &method, &path, &query, &conn, realm, &mut ctx).await
    {
        Ok(resp) => resp,
        Err(e) => {
            log_error(&e, &method, &path, peer);
            e.into_response(head)
        }
    };
    resp.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static(API_VERSION),
    );
    app.metrics
        .request(ctx.route, &method, resp.status(), started.elapsed());
    if ctx.manifest && !head && resp.status().is_success() {
        app.metrics.manifest_served(ctx.bytes);
    }
    let status = resp.status().as_u16();
    let refused = match status {
        401 => Some("unauthorized"),
        403 => Some("denied"),
        429 if ctx.user.is_none() || ctx.upstream.is_none() => Some("throttled"),
        _ => None,
    };
    if ctx.manifest || refused.is_some() {
        let outcome = refused
            .or(ctx.source)
            .unwrap_or(if status < 400 { "ok" } else { "error" });
        app.audit.record(&AuditEvent {
            time: crate::audit::now_rfc3339(),
            user: ctx.user.as_deref(),
            client: peer.ip().to_string(),
            method: method.as_str(),
            upstream: ctx.upstream.as_deref(),
            repository: ctx.repo.as_deref(),
            reference: ctx.reference.as_deref(),
            digest: ctx.digest.clone(),
            outcome,
            status,
            bytes: if head { 0 } else { ctx.bytes },
        });
    }
    tracing::info!(
        target: "pullgate::access",
        client = %peer,
        user = ctx.user.as_deref().unwrap_or("-"),
        %method,
        path,
        status,
        source = ctx.source.unwrap_or("-"),
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

#[allow(clippy::too_many_arguments)]
async fn dispatch<B>(
    app: &App,
    req: &Request<B>,
    method: &http::Method,
    path: &str,
    query: &Query,
    conn: &Conn,
    realm: &RealmPolicy,
    ctx: &mut Ctx,
) -> Result<Response<Body>, ApiError> {
    let peer = conn.peer;
    let route = Route::parse(method, path).inspect_err(|e| ctx.route = e.label())?;
    ctx.route = route.label();
    // Probes and scrapes come from the cluster, without credentials; none says anything
    // about what is cached or who pulls it.
    match route {
        Route::Healthz => return Ok(text_ok("ok\n")),
        Route::Readyz => return readiness(app).await,
        Route::Metrics => return Ok(crate::metrics::render(app)),
        _ => {}
    }
    let auth = &app.auth;
    let unauthorized = |access: Option<&Access>| {
        ApiError::unauthorized(auth.challenge(&realm.url(req, conn), access))
    };

    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = match auth.authenticate(authorization, peer.ip()) {
        Ok(p) => p,
        Err(AuthError::Unauthorized) => return Err(unauthorized(None)),
        Err(e) => return Err(e.into()),
    };
    ctx.user = principal.as_ref().map(|p| p.user.clone());

    let mirror = &app.mirror;
    // Resolve the upstream, then check this principal may pull from it: once, here.
    let target = |name: &RepoName, ctx: &mut Ctx| -> Result<Target, ApiError> {
        let t = mirror.route(query.ns.as_deref(), name)?;
        ctx.upstream = Some(t.upstream_name().to_owned());
        ctx.repo = Some(t.repo.to_string());
        let access = Access {
            upstream: t.upstream.id().clone(),
            repo: t.repo.clone(),
        };
        match auth.authorize(principal.as_ref(), &access) {
            Ok(()) => Ok(t),
            Err(AuthError::Unauthorized) => Err(unauthorized(Some(&access))),
            Err(e) => Err(e.into()),
        }
    };

    match route {
        Route::Healthz | Route::Readyz | Route::Metrics => Err(ApiError::internal(
            "probe routes are answered before authentication",
        )),
        Route::Base => {
            if principal.is_none() && !auth.anonymous() {
                return Err(unauthorized(None));
            }
            Ok(json_ok(b"{}"))
        }
        Route::Token => token::issue(app, principal.as_ref(), query),
        Route::Manifest {
            name,
            reference,
            head,
        } => {
            ctx.manifest = true;
            ctx.reference = Some(reference.to_string());
            let t = target(&name, ctx)?;
            let accept = AcceptList::from_headers(
                req.headers()
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            let m = mirror.manifest(&t, &reference, &accept).await?;
            ctx.source = Some(m.source.as_str());
            ctx.digest = Some(m.digest.to_string());
            ctx.bytes = m.bytes.len() as u64;
            Ok(manifest_response(m, head))
        }
        Route::Blob { name, digest, head } => {
            let t = target(&name, ctx)?;
            let range = req
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| RangeSpec::parse(v).ok());
            let client = ClientId::new(ctx.user.as_deref(), peer.ip());
            let b = mirror.blob(&t, &digest, range, head, &client).await?;
            ctx.source = Some(b.source.as_str());
            Ok(blob_response(b, &digest.to_string(), &app.metrics))
        }
        Route::Tags { name } => {
            let t = target(&name, ctx)?;
            let p = mirror.tags_list(&t, &query.forward).await?;
            ctx.source = Some("upstream");
            Ok(passthrough_response(p))
        }
        Route::Referrers { name, digest } => {
            let t = target(&name, ctx)?;
            let p = mirror.referrers(&t, &digest, &query.forward).await?;
            ctx.source = Some("upstream");
            Ok(passthrough_response(p))
        }
    }
}

/// `/readyz`: 200 when a pull could succeed here, else 503 with the reason (no secrets,
/// no paths: the details are in the log).
async fn readiness(app: &App) -> Result<Response<Body>, ApiError> {
    if let Err(e) = app.mirror.check_cache_writable().await {
        tracing::warn!(error = %e, "not ready: the cache is not writable");
        return Err(ApiError::not_ready("the cache is not writable"));
    }
    if !app.auth.anonymous() && app.auth.credentials_loaded() == 0 {
        tracing::warn!("not ready: the client secrets hold no credentials");
        return Err(ApiError::not_ready("no client credentials are loaded"));
    }
    Ok(text_ok("ready\n"))
}

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

fn json_ok(body: &'static [u8]) -> Response<Body> {
    full_ok(body, "application/json")
}

fn text_ok(body: &'static str) -> Response<Body> {
    full_ok(body, "text/plain; charset=utf-8")
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

fn blob_response(b: BlobResponse, digest: &str, metrics: &Arc<Metrics>) -> Response<Body> {
    let len = b.content_length();
    let (status, content_range) = match b.range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, Some(r.content_range(b.size))),
        None => (StatusCode::OK, None),
    };
    let body = match b.body {
        Some(stream) => Body::Blob {
            stream,
            remaining: len,
            metrics: Arc::clone(metrics),
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
    if let Some(filters) = &p.filters_applied {
        insert_str(
            h,
            header::HeaderName::from_static("oci-filters-applied"),
            filters,
        );
    }
    resp
}
