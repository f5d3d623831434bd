//! `ApiError`: the only place where errors become HTTP statuses and OCI error bodies.

use http::{header, HeaderValue, Response, StatusCode};
use pullgate_auth::{AuthError, BASIC_CHALLENGE};
use pullgate_mirror::MirrorError;
use pullgate_oci::{ErrorBody, ErrorCode};

use crate::body::Body;
use crate::route::RouteError;

/// An error on its way to the client. `detail` is shown to the client; `log` only to the log.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub status: StatusCode,
    detail: Option<String>,
    log: Option<String>,
    retry_after: Option<u64>,
    content_range_size: Option<u64>,
    /// `WWW-Authenticate` for a 401.
    challenge: Option<String>,
    /// `detail` replaces the code's fixed message too: for a policy denial, whose words
    /// are what a client must show its user (skopeo, containerd and docker print
    /// `message`, not `detail`). A flag, not a second string: `ApiError` stays small.
    detail_is_message: bool,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<Option<String>>) -> Self {
        ApiError {
            code,
            status: StatusCode::from_u16(code.default_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            detail: detail.into(),
            log: None,
            retry_after: None,
            content_range_size: None,
            challenge: None,
            detail_is_message: false,
        }
    }

    /// 401 with the challenge that tells the client how to log in.
    pub fn unauthorized(challenge: String) -> Self {
        let mut e = ApiError::new(
            ErrorCode::Unauthorized,
            "authentication required".to_owned(),
        );
        e.challenge = Some(challenge);
        e
    }

    /// 503 from `/readyz`: the reason is generic on purpose (details go to the log).
    pub fn not_ready(reason: &str) -> Self {
        ApiError::new(ErrorCode::Unavailable, reason.to_owned())
            .status(StatusCode::SERVICE_UNAVAILABLE)
    }

    /// 500 for a bug: the client learns nothing, the log learns `what`.
    pub fn internal(what: &str) -> Self {
        ApiError::new(ErrorCode::Unknown, "internal error".to_owned()).log(what.to_owned())
    }

    fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// `Retry-After` in whole seconds, at least one (zero would invite a hot retry loop).
    fn retry_after(mut self, after: Option<std::time::Duration>) -> Self {
        self.retry_after = after.map(|d| d.as_secs().max(1));
        self
    }

    fn log(mut self, log: String) -> Self {
        self.log = Some(log);
        self
    }

    /// What the log says about this error: the internal detail if there is one.
    pub fn log_detail(&self) -> Option<&str> {
        self.log.as_deref().or(self.detail.as_deref())
    }

    pub fn into_response(self, head: bool) -> Response<Body> {
        let message = self.detail.clone().filter(|_| self.detail_is_message);
        let mut body = ErrorBody::single(self.code, self.detail);
        if let (Some(m), Some(entry)) = (message, body.errors.first_mut()) {
            entry.message = m;
        }
        let json = body.to_json();
        let len = json.len();
        let mut resp = Response::new(if head { Body::Empty } else { Body::full(json) });
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(c) = &self.challenge {
            if let Ok(v) = HeaderValue::from_str(c) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        if let Some(size) = self.content_range_size {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NameInvalid(d) => ApiError::new(ErrorCode::NameInvalid, d),
            RouteError::DigestInvalid(d) => ApiError::new(ErrorCode::DigestInvalid, d),
            // Distribution answers a malformed tag with 404 MANIFEST_UNKNOWN, and clients
            // treat a 400 on a manifest as a broken registry rather than a missing tag.
            RouteError::TagInvalid(d) => {
                ApiError::new(ErrorCode::ManifestUnknown, d).status(StatusCode::NOT_FOUND)
            }
            RouteError::Unsupported(d) => ApiError::new(ErrorCode::Unsupported, d),
            RouteError::PathTooLong => ApiError::new(ErrorCode::NameInvalid, e.to_string())
                .status(StatusCode::URI_TOO_LONG),
            RouteError::NotFound => {
                ApiError::new(ErrorCode::NameUnknown, "no such endpoint".to_owned())
                    .status(StatusCode::NOT_FOUND)
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            // Callers that can name the access build the challenge themselves.
            AuthError::Unauthorized => ApiError::unauthorized(BASIC_CHALLENGE.to_owned()),
            AuthError::Denied => ApiError::new(
                ErrorCode::Denied,
                "you may not pull this repository through this mirror".to_owned(),
            ),
            AuthError::Throttled { retry_after } => ApiError::new(
                ErrorCode::TooManyRequests,
                "too many failed logins from this address; try again later".to_owned(),
            )
            .retry_after(Some(retry_after)),
            other => ApiError::new(ErrorCode::Unknown, None).log(other.to_string()),
        }
    }
}

impl From<MirrorError> for ApiError {
    fn from(e: MirrorError) -> Self {
        match e {
            MirrorError::NameUnknown(d) => ApiError::new(ErrorCode::NameUnknown, d),
            MirrorError::ManifestUnknown(d) => ApiError::new(ErrorCode::ManifestUnknown, d),
            MirrorError::BlobUnknown => ApiError::new(ErrorCode::BlobUnknown, None),
            MirrorError::RangeNotSatisfiable { size } => {
                let mut e = ApiError::new(ErrorCode::RangeInvalid, None)
                    .status(StatusCode::RANGE_NOT_SATISFIABLE);
                e.content_range_size = Some(size);
                e
            }
            MirrorError::UpstreamDenied => ApiError::new(
                ErrorCode::Denied,
                "the upstream registry refused the mirror's credentials".to_owned(),
            ),
            MirrorError::RateLimited { retry_after } => ApiError::new(
                ErrorCode::TooManyRequests,
                "the upstream registry is rate limiting the mirror".to_owned(),
            )
            .retry_after(retry_after),
            MirrorError::UpstreamUnavailable { detail, timeout } => {
                let status = if timeout {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the upstream registry is unavailable and the content is not cached".to_owned(),
                )
                .status(status)
                .log(detail)
            }
            MirrorError::BlobTooLarge { limit } => ApiError::new(
                ErrorCode::Unknown,
                format!("the blob is larger than this mirror's maximum blob size ({limit} bytes)"),
            )
            .status(StatusCode::BAD_GATEWAY),
            // Never DIGEST_INVALID: that would blame the client for the upstream's bytes.
            MirrorError::UpstreamBadContent(detail) => ApiError::new(
                ErrorCode::Unknown,
                "the upstream registry sent content that failed verification".to_owned(),
            )
            .status(StatusCode::BAD_GATEWAY)
            .log(detail),
            MirrorError::TooManyFills { limit } => ApiError::new(
                ErrorCode::TooManyRequests,
                format!("this client already has {limit} blob downloads under way; retry when they finish"),
            )
            .retry_after(Some(std::time::Duration::from_secs(1))),
            // The rule and the reason are the policy's own words: no secrets, and what the
            // operator of the client needs to know.
            MirrorError::PolicyDenied(decision) => {
                let mut e = ApiError::new(ErrorCode::Denied, decision.to_string());
                e.detail_is_message = true;
                e
            }
            MirrorError::StorageUnavailable(detail) => ApiError::new(
                ErrorCode::Unavailable,
                "the mirror's storage is unavailable; retry later".to_owned(),
            )
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .log(detail),
            MirrorError::Internal(detail) => ApiError::new(ErrorCode::Unknown, None).log(detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Route;
    use http_body_util::BodyExt as _;

    async fn body_json(resp: Response<Body>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// A policy denial is 403 DENIED, and its message (what clients print) names the rule
    /// and the reason.
    #[tokio::test]
    async fn a_policy_denial_is_denied_naming_the_rule_and_the_reason() {
        let decision = pullgate_mirror::PolicyDecision {
            rule_index: Some(0),
            rule: "trust rule 1 (docker.io/team/**)".into(),
            outcome: pullgate_mirror::PolicyOutcome::Deny,
            reason: "no signature".into(),
            keys: Vec::new(),
            scan: None,
            digest: None,
        };
        let e = ApiError::from(MirrorError::PolicyDenied(std::sync::Arc::new(decision)));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::FORBIDDEN, ErrorCode::Denied)
        );
        let v = body_json(e.into_response(false)).await;
        assert_eq!(
            v["errors"][0]["message"],
            "denied by trust rule 1 (docker.io/team/**): no signature"
        );
        assert_eq!(v["errors"][0]["code"], "DENIED");
    }

    /// The bucket failing is 503 UNAVAILABLE with a generic message; what failed goes to
    /// the log only.
    #[tokio::test]
    async fn a_storage_failure_is_unavailable_without_its_detail() {
        let e = ApiError::from(MirrorError::StorageUnavailable(
            "object store: HEAD: connection refused to 127.0.0.1:8333".into(),
        ));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
        );
        let v = body_json(e.into_response(false)).await;
        assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");
        assert!(!v.to_string().contains("8333"), "{v}");
    }

    /// What Distribution answers and clients expect: a tag that cannot exist is an unknown
    /// manifest, for HEAD (no body) and GET alike.
    #[tokio::test]
    async fn a_malformed_tag_is_manifest_unknown() {
        for tag in [".INVALID", "-bad", "a%20b", &"t".repeat(129)] {
            for method in [http::Method::GET, http::Method::HEAD] {
                let path = format!("/v2/library/alpine/manifests/{tag}");
                let e = ApiError::from(Route::parse(&method, &path).unwrap_err());
                assert_eq!(e.status, StatusCode::NOT_FOUND, "{method} {path}");
                assert_eq!(e.code, ErrorCode::ManifestUnknown, "{method} {path}");
                let head = method == http::Method::HEAD;
                let resp = e.into_response(head);
                assert_eq!(resp.status(), StatusCode::NOT_FOUND);
                if !head {
                    let v = body_json(resp).await;
                    assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN", "{path}");
                }
            }
        }
        // A malformed digest is still the client's error.
        let e = ApiError::from(
            Route::parse(&http::Method::GET, "/v2/a/manifests/sha256:zz").unwrap_err(),
        );
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid)
        );
    }
}
