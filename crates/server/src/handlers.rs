//! From a routed request to a response, in three steps: the gate (authenticate once, then
//! authorize each resolved (upstream, repository)), the route's handler, and the record
//! (metrics, one audit line with the decision as a value, one access-log line). Every
//! failure becomes an `ApiError` and is logged once, with the request it belongs to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response};
use pullgate_auth::{Access, AuthError, Principal};
use pullgate_mirror::{ClientId, MirrorError, Target};
use pullgate_oci::{AcceptList, Digest, RangeSpec, Reference, RepoName};

use crate::app::App;
use crate::audit::{AuditEvent, Outcome};
use crate::body::Body;
use crate::error::ApiError;
use crate::realm::{Conn, RealmPolicy};
use crate::respond::{blob_response, json_ok, manifest_response, passthrough_response, text_ok};
use crate::route::{Query, Route};
use crate::token;

const API_VERSION: &str = "registry/2.0";

/// One request as the handlers see it.
struct Incoming<'a, B> {
    req: &'a Request<B>,
    method: &'a Method,
    path: &'a str,
    query: &'a Query,
    conn: &'a Conn,
    realm: &'a RealmPolicy,
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
    /// The decision, as the code that made it says: never read back from a status code.
    outcome: Option<Outcome>,
    /// The trust policy's decision, allowed or not.
    policy: Option<Arc<pullgate_mirror::PolicyDecision>>,
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
    let head = method == Method::HEAD;
    let path = req.uri().path().to_owned();
    let query = Query::parse(req.uri().query());
    let mut ctx = Ctx {
        route: "invalid",
        ..Ctx::default()
    };
    let incoming = Incoming {
        req: &req,
        method: &method,
        path: &path,
        query: &query,
        conn: &conn,
        realm,
    };

    let mut resp = match dispatch(&app, &incoming, &mut ctx).await {
        Ok(resp) => resp,
        Err(e) => {
            log_error(&e, &method, &path, peer);
            ctx.outcome.get_or_insert(Outcome::Error);
            e.into_response(head)
        }
    };
    resp.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static(API_VERSION),
    );
    record(&app, &ctx, &method, &path, peer, &resp, started);
    resp
}

/// Metrics, the audit line (manifest pulls and refusals), the access-log line.
fn record(
    app: &App,
    ctx: &Ctx,
    method: &Method,
    path: &str,
    peer: SocketAddr,
    resp: &Response<Body>,
    started: Instant,
) {
    let head = *method == Method::HEAD;
    let status = resp.status().as_u16();
    app.metrics
        .request(ctx.route, method, resp.status(), started.elapsed());
    if ctx.manifest && !head && resp.status().is_success() {
        app.metrics.manifest_served(ctx.bytes);
    }
    let outcome = ctx.outcome.unwrap_or(Outcome::Ok);
    if ctx.manifest || outcome.is_refusal() {
        app.audit.record(&AuditEvent {
            time: crate::audit::now_rfc3339(),
            user: ctx.user.as_deref(),
            client: peer.ip().to_string(),
            method: method.as_str(),
            upstream: ctx.upstream.as_deref(),
            repository: ctx.repo.as_deref(),
            reference: ctx.reference.as_deref(),
            digest: ctx.digest.clone(),
            outcome: outcome.as_str(),
            status,
            bytes: if head { 0 } else { ctx.bytes },
            policy: ctx.policy.as_deref().map(crate::audit::PolicyAudit::from),
        });
    }
    tracing::info!(
        target: "pullgate::access",
        client = %peer,
        user = ctx.user.as_deref().unwrap_or("-"),
        %method,
        path,
        status,
        source = outcome.source().unwrap_or("-"),
        ms = started.elapsed().as_millis() as u64,
    );
}

fn log_error(e: &ApiError, method: &Method, path: &str, peer: SocketAddr) {
    let detail = e.log_detail().unwrap_or("");
    if e.status.is_server_error() {
        tracing::warn!(client = %peer, %method, path, code = e.code.as_str(), detail, "request failed");
    } else {
        tracing::debug!(client = %peer, %method, path, code = e.code.as_str(), detail, "request refused");
    }
}

async fn dispatch<B>(
    app: &App,
    r: &Incoming<'_, B>,
    ctx: &mut Ctx,
) -> Result<Response<Body>, ApiError> {
    let route = Route::parse(r.method, r.path).inspect_err(|e| ctx.route = e.label())?;
    ctx.route = route.label();
    // Probes and scrapes come from the cluster, without credentials; none says anything
    // about what is cached or who pulls it.
    match route {
        Route::Healthz => return Ok(text_ok("ok\n")),
        Route::Readyz => return readiness(app).await,
        Route::Metrics => return Ok(crate::exposition::render(app)),
        _ => {}
    }
    let gate = Gate::authenticate(app, r, ctx)?;
    match route {
        Route::Healthz | Route::Readyz | Route::Metrics => Err(ApiError::internal(
            "probe routes are answered before authentication",
        )),
        Route::Base => {
            if gate.principal.is_none() && !app.auth.anonymous() {
                return Err(gate.refuse(ctx, None));
            }
            Ok(json_ok(b"{}"))
        }
        Route::Token => token::issue(app, gate.principal.as_ref(), r.query),
        Route::Manifest {
            name,
            reference,
            head,
        } => manifest(app, &gate, r, ctx, &name, &reference, head).await,
        Route::Blob { name, digest, head } => blob(app, &gate, r, ctx, &name, &digest, head).await,
        Route::Tags { name } => {
            let t = gate.target(app, r, ctx, &name)?;
            let p = app.mirror.tags_list(&t, &r.query.forward).await?;
            ctx.outcome = Some(Outcome::Upstream);
            Ok(passthrough_response(p))
        }
        Route::Referrers { name, digest } => {
            let t = gate.target(app, r, ctx, &name)?;
            let p = app.mirror.referrers(&t, &digest, &r.query.forward).await?;
            ctx.outcome = Some(Outcome::Upstream);
            Ok(passthrough_response(p))
        }
    }
}

/// The one check every request but the probes passes: who is asking (once), and whether
/// they may pull each (upstream, repository) the request resolves to.
struct Gate<'a> {
    app: &'a App,
    challenge_realm: String,
    principal: Option<Principal>,
}

impl<'a> Gate<'a> {
    fn authenticate<B>(app: &'a App, r: &Incoming<'_, B>, ctx: &mut Ctx) -> Result<Self, ApiError> {
        let mut gate = Gate {
            app,
            challenge_realm: r.realm.url(r.req, r.conn),
            principal: None,
        };
        let authorization = r
            .req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match app.auth.authenticate(authorization, r.conn.peer.ip()) {
            Ok(p) => gate.principal = p,
            Err(AuthError::Unauthorized) => return Err(gate.refuse(ctx, None)),
            Err(e @ AuthError::Throttled { .. }) => {
                ctx.outcome = Some(Outcome::Throttled);
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        }
        ctx.user = gate.principal.as_ref().map(|p| p.user.clone());
        Ok(gate)
    }

    /// 401 with the challenge that names the scope the client needs.
    fn refuse(&self, ctx: &mut Ctx, access: Option<&Access>) -> ApiError {
        ctx.outcome = Some(Outcome::Unauthorized);
        ApiError::unauthorized(self.app.auth.challenge(&self.challenge_realm, access))
    }

    /// Resolve the upstream, then check this principal may pull from it: once, here.
    fn target<B>(
        &self,
        app: &App,
        r: &Incoming<'_, B>,
        ctx: &mut Ctx,
        name: &RepoName,
    ) -> Result<Target, ApiError> {
        let t = app.mirror.route(r.query.ns.as_deref(), name)?;
        ctx.upstream = Some(t.upstream_name().to_owned());
        ctx.repo = Some(t.repo.to_string());
        let access = Access {
            upstream: t.upstream.id().clone(),
            repo: t.repo.clone(),
        };
        match app.auth.authorize(self.principal.as_ref(), &access) {
            Ok(()) => Ok(t),
            Err(AuthError::Unauthorized) => Err(self.refuse(ctx, Some(&access))),
            Err(e) => {
                ctx.outcome = Some(Outcome::Denied);
                Err(e.into())
            }
        }
    }
}

async fn manifest<B>(
    app: &App,
    gate: &Gate<'_>,
    r: &Incoming<'_, B>,
    ctx: &mut Ctx,
    name: &RepoName,
    reference: &Reference,
    head: bool,
) -> Result<Response<Body>, ApiError> {
    ctx.manifest = true;
    ctx.reference = Some(reference.to_string());
    let t = gate.target(app, r, ctx, name)?;
    let accept = AcceptList::from_headers(
        r.req
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let m = app
        .mirror
        .manifest(&t, reference, &accept)
        .await
        .inspect_err(|e| policy_refusal(ctx, e))?;
    ctx.policy = m.policy.clone();
    ctx.outcome = Some(Outcome::from(m.source));
    ctx.digest = Some(m.digest.to_string());
    ctx.bytes = m.bytes.len() as u64;
    Ok(manifest_response(m, head))
}

async fn blob<B>(
    app: &App,
    gate: &Gate<'_>,
    r: &Incoming<'_, B>,
    ctx: &mut Ctx,
    name: &RepoName,
    digest: &Digest,
    head: bool,
) -> Result<Response<Body>, ApiError> {
    let t = gate.target(app, r, ctx, name)?;
    let range = r
        .req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| RangeSpec::parse(v).ok());
    let client = ClientId::new(
        ctx.user.as_deref(),
        crate::net::client_address(r.conn.peer.ip()),
    );
    let b = app
        .mirror
        .blob(&t, digest, range, head, &client)
        .await
        .inspect_err(|e| policy_refusal(ctx, e))?;
    ctx.outcome = Some(Outcome::from(b.source));
    Ok(blob_response(
        b,
        &digest.to_string(),
        &app.metrics.blob_bytes(),
    ))
}

/// A trust policy denial is a refusal, audited with its decision.
fn policy_refusal(ctx: &mut Ctx, e: &MirrorError) {
    if let MirrorError::PolicyDenied(d) = e {
        ctx.outcome = Some(Outcome::Denied);
        if let Some(digest) = &d.digest {
            ctx.digest = Some(digest.to_string());
        }
        ctx.policy = Some(Arc::clone(d));
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
