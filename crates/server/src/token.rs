//! `GET /token`: the Docker token endpoint. A client trades Basic credentials for a short
//! signed token naming exactly the repositories it asked for and may pull.

use http::{header, HeaderValue, Response};
use pullgate_auth::{
    parse_scope, Access, AuthError, IssuedToken, Principal, Scheme, BASIC_CHALLENGE,
};
use pullgate_mirror::{Mirror, Target};
use pullgate_oci::RepoName;

use crate::app::App;
use crate::body::Body;
use crate::error::ApiError;
use crate::respond::full_ok;
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
    respond(app.auth.issue_token(principal, &wanted))
}

/// The answer to a token request: the token, a Basic challenge if these credentials buy
/// none, or a 500 if it could not be signed (never a 200 without a usable token).
fn respond(issued: Result<IssuedToken, AuthError>) -> Result<Response<Body>, ApiError> {
    let token = match issued {
        Ok(token) => token,
        Err(AuthError::Unauthorized) => {
            return Err(ApiError::unauthorized(BASIC_CHALLENGE.to_owned()))
        }
        Err(e) => return Err(e.into()),
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use http_body_util::BodyExt as _;
    use pullgate_oci::ErrorCode;

    #[tokio::test]
    async fn a_token_that_cannot_be_signed_is_a_500_with_an_oci_body() {
        let Err(e) = respond(Err(AuthError::Signing("the signing key is too short"))) else {
            panic!("a token that could not be signed was answered with success");
        };
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.code, ErrorCode::Unknown);
        // The reason is for the log, not the client.
        assert!(e.log_detail().is_some_and(|d| d.contains("signing")));
        let resp = e.into_response(false);
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "UNKNOWN");
        assert!(v.get("token").is_none());
        assert!(!String::from_utf8_lossy(&body).contains("signing key"));

        let Err(e) = respond(Err(AuthError::Unauthorized)) else {
            panic!("no credentials, yet a token");
        };
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);

        let Ok(ok) = respond(Ok(IssuedToken {
            token: "t.t.t".into(),
            expires_in: 300,
            issued_at: "2026-01-01T00:00:00Z".into(),
        })) else {
            panic!("a signed token was refused");
        };
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[header::CACHE_CONTROL], "no-store");
    }
}
