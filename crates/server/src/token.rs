//! `GET /token`: the Docker token endpoint. A client trades Basic credentials for a short
//! signed token naming exactly the repositories it asked for and may pull.

use http::{header, HeaderValue, Response};
use pullgate_auth::{parse_scope, Access, Principal, Scheme, BASIC_CHALLENGE};
use pullgate_mirror::{Mirror, Target};
use pullgate_oci::RepoName;

use crate::body::Body;
use crate::error::ApiError;
use crate::handlers::{full_ok, App};
use crate::route::{Query, RouteError};

pub(crate) fn issue(
    app: &App,
    principal: Option<&Principal>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    if app.auth.scheme() != Scheme::Token {
        return Err(RouteError::NotFound.into());
    }
    // The token endpoint itself takes Basic credentials.
    let refused = || ApiError::unauthorized(BASIC_CHALLENGE.to_owned());
    let principal = principal.ok_or_else(refused)?;
    let wanted: Vec<Access> = query
        .scopes
        .iter()
        .filter_map(|s| parse_scope(s))
        .filter(|(_, actions)| actions.iter().any(|a| a == "pull" || a == "*"))
        .filter_map(|(name, _)| resolve(&app.mirror, &name))
        .collect();
    let token = app
        .auth
        .issue_token(principal, &wanted)
        .map_err(|_| refused())?;
    let body = serde_json::json!({
        "token": token.token,
        "access_token": token.token,
        "expires_in": token.expires_in,
        "issued_at": token.issued_at,
    })
    .to_string();
    let mut resp = full_ok(body, "application/json");
    // A token is a credential: no cache may keep it.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// A scope's repository name, as our challenges write it (`<upstream>/<repo>`, where the
/// upstream name may carry a port) or as a client writes it (routed like a request path).
fn resolve(mirror: &Mirror, name: &str) -> Option<Access> {
    for upstream in mirror.upstream_names() {
        let rest = name
            .strip_prefix(upstream)
            .and_then(|r| r.strip_prefix('/'));
        if let Some(rest) = rest {
            let repo = RepoName::parse(rest).ok()?;
            return mirror.route(Some(upstream), &repo).ok().map(access);
        }
    }
    let repo = RepoName::parse(name).ok()?;
    mirror.route(None, &repo).ok().map(access)
}

fn access(t: Target) -> Access {
    Access {
        upstream: t.upstream.id().clone(),
        repo: t.repo,
    }
}
