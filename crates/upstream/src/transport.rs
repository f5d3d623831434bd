//! One logical request to the upstream: authentication (anonymous or cached first, the
//! challenge answered once on 401), retries of transient failures, and redirects followed
//! by hand: credentials never leave the upstream's origin, manifests, tags and referrers
//! never leave it at all, and blobs leave it only for addresses the [`Guard`] allows.
//!
//! [`Guard`]: crate::guard::Guard

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, LOCATION};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use pullgate_oci::PullScope;
use reqwest::{Response, Url};

use crate::error::{self, RefusedRedirect, UpstreamError};
use crate::Upstream;

/// Where a request's redirects may lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Follow {
    /// Only within the upstream's origin: manifests, tags lists, referrers. Their bodies
    /// are cached as the upstream's or handed to clients, so another origin's would be
    /// a read of whatever the upstream points at (a server-side request forgery).
    SameOrigin,
    /// Anywhere the guard allows (registries send blobs to a CDN), without credentials.
    Blob,
}

/// Redirect hops followed per request (registries redirect blobs to a CDN once, maybe twice).
const MAX_REDIRECTS: usize = 5;

/// Pauses before the 2nd and 3rd attempt. Short: a client is waiting, and the caller
/// (stale serving, the client's own retry) has better fallbacks than a long wait here.
const BACKOFF: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(400)];

/// Signed CDN URLs run to a few KiB; anything longer than this is not a redirect we follow.
const MAX_LOCATION_LEN: usize = 16 * 1024;

/// The longest a `Retry-After` keeps us away from an upstream. Longer values are still
/// passed on to clients, but we look again after this: a stale or buggy header must not
/// cut a mirror off for a day.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// An upstream's request to be left alone (429 with `Retry-After`). While it lasts, calls
/// fail at once with the time remaining, without a request: hammering a throttling
/// upstream only extends the throttle (Docker Hub counts refused pulls too), and clients
/// get the same answer sooner. Tags are then served stale by the mirror.
#[derive(Default)]
pub(crate) struct Backoff(Mutex<Option<Instant>>);

impl Backoff {
    fn remaining(&self) -> Option<Duration> {
        let mut until = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let left = until.and_then(|u| u.checked_duration_since(Instant::now()));
        if left.is_none() {
            *until = None;
        }
        left.filter(|d| !d.is_zero())
    }

    fn note(&self, error: &UpstreamError) {
        if let UpstreamError::RateLimited {
            retry_after: Some(after),
        } = error
        {
            let until = Instant::now() + (*after).min(MAX_BACKOFF);
            let mut current = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if current.is_none_or(|c| c < until) {
                *current = Some(until);
            }
        }
    }
}

/// A failed attempt, and whether trying again could help.
struct Failure {
    error: UpstreamError,
    retryable: bool,
}

impl From<UpstreamError> for Failure {
    fn from(error: UpstreamError) -> Self {
        Failure {
            error,
            retryable: false,
        }
    }
}

impl Upstream {
    /// GET or HEAD `url` and return its 2xx response with the body unread, or the mapped
    /// error. `scope` is the token scope the request needs.
    pub(crate) async fn request(
        &self,
        method: Method,
        url: Url,
        accept: Option<&str>,
        scope: &PullScope,
        follow: Follow,
    ) -> Result<Response, UpstreamError> {
        if let Some(left) = self.backoff.remaining() {
            // Whole seconds, rounded up: `Retry-After: 0` would invite an immediate retry.
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Err(UpstreamError::RateLimited {
                retry_after: Some(Duration::from_secs(secs)),
            });
        }
        let result = self.request_now(method, url, accept, scope, follow).await;
        if let Err(e) = &result {
            self.backoff.note(e);
        }
        result
    }

    async fn request_now(
        &self,
        method: Method,
        url: Url,
        accept: Option<&str>,
        scope: &PullScope,
        follow: Follow,
    ) -> Result<Response, UpstreamError> {
        let mut auth = self.proactive_auth(scope)?;
        let mut answered = false;
        loop {
            let response = self
                .send_retrying(&method, &url, accept, auth.as_ref(), follow)
                .await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !answered {
                // Anonymous, or our cached token went stale early: do the handshake once.
                answered = true;
                auth = Some(
                    self.answer_challenge(response.headers(), scope, auth.as_ref())
                        .await?,
                );
                continue;
            }
            if status.is_success() {
                return Ok(response);
            }
            return Err(error::from_status(status, response.headers()));
        }
    }

    /// Up to three attempts while the failure is transient: connect errors, a connection
    /// closed or reset before the response headers, 502/503/504. Every request here is a
    /// GET or HEAD, and only the headers have been received when this returns, so a retry
    /// is idempotent and never repeats bytes a caller has seen. Not retried: timeouts (a
    /// client is already waiting that long), 429 (the upstream asked us to back off).
    async fn send_retrying(
        &self,
        method: &Method,
        url: &Url,
        accept: Option<&str>,
        auth: Option<&HeaderValue>,
        follow: Follow,
    ) -> Result<Response, UpstreamError> {
        let mut attempt = 0;
        loop {
            let outcome = self.send_following(method, url, accept, auth, follow).await;
            let retry = match &outcome {
                Ok(r) => matches!(r.status().as_u16(), 502..=504),
                Err(f) => f.retryable,
            };
            let Some(pause) = BACKOFF.get(attempt).filter(|_| retry) else {
                return outcome.map_err(|f| f.error);
            };
            tracing::debug!(
                upstream = %self.name,
                attempt = attempt + 1,
                "transient upstream failure; retrying"
            );
            drop(outcome);
            tokio::time::sleep(*pause).await;
            attempt += 1;
        }
    }

    /// One attempt, following redirects as `follow` allows. `Authorization` goes only to
    /// the upstream's own origin: a blob redirect to a CDN (or anywhere else) gets none,
    /// and goes through the guarded client, whose resolver refuses internal addresses.
    async fn send_following(
        &self,
        method: &Method,
        start: &Url,
        accept: Option<&str>,
        auth: Option<&HeaderValue>,
        follow: Follow,
    ) -> Result<Response, Failure> {
        let mut url = start.clone();
        for hop in 0..=MAX_REDIRECTS {
            let host = host_of(&url);
            let own_origin = url.origin() == self.base.origin();
            let client = if own_origin {
                &self.client
            } else {
                if self.guard.check_url(&url).is_err() {
                    tracing::warn!(upstream = %self.name, to = %host, "{}", RefusedRedirect::InternalAddress);
                    return Err(UpstreamError::Redirect(RefusedRedirect::InternalAddress).into());
                }
                &self.guarded_client
            };
            let mut request = client.request(method.clone(), url.clone());
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(auth) = auth.filter(|_| own_origin) {
                request = request.header(AUTHORIZATION, auth.clone());
            }
            let response = request.send().await.map_err(|e| {
                // Connect failures, and anything before the answer but a timeout; never an
                // address the guard refused (it would refuse it again).
                let refused = error::refused_by_resolver(&e);
                if refused {
                    tracing::warn!(upstream = %self.name, to = %host, "{}", RefusedRedirect::InternalAddress);
                }
                let retryable = (e.is_connect() || !e.is_timeout()) && !refused;
                Failure {
                    retryable,
                    error: error::from_reqwest(e, &host),
                }
            })?;
            let status = response.status();
            // The query is left out: on CDN redirects it holds signatures.
            tracing::debug!(
                upstream = %self.name,
                method = %method,
                host = %host,
                path = url.path(),
                status = status.as_u16(),
                "upstream request"
            );
            if !is_redirect(status) {
                return Ok(response);
            }
            if hop == MAX_REDIRECTS {
                break;
            }
            let target = redirect_target(&url, response.headers())?;
            if follow == Follow::SameOrigin && target.origin() != self.base.origin() {
                tracing::warn!(
                    upstream = %self.name,
                    to = %host_of(&target),
                    "refused a manifest, tags or referrers redirect to another origin"
                );
                return Err(UpstreamError::Redirect(RefusedRedirect::CrossOrigin).into());
            }
            url = target;
        }
        Err(UpstreamError::Protocol("upstream redirected too many times".into()).into())
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Where a redirect points, resolved against the URL that answered it.
fn redirect_target(current: &Url, headers: &HeaderMap) -> Result<Url, UpstreamError> {
    let location = headers
        .get(LOCATION)
        .ok_or_else(|| UpstreamError::Protocol("redirect without a Location".into()))?;
    if location.len() > MAX_LOCATION_LEN {
        return Err(UpstreamError::Protocol(
            "redirect Location is too long".into(),
        ));
    }
    let location = location
        .to_str()
        .map_err(|_| UpstreamError::Protocol("redirect Location is not text".into()))?;
    let target = current
        .join(location)
        .map_err(|_| UpstreamError::Protocol("redirect Location is not a URL".into()))?;
    if !matches!(target.scheme(), "http" | "https") || target.host_str().is_none() {
        return Err(UpstreamError::Protocol(
            "redirect to a non-http(s) URL".into(),
        ));
    }
    Ok(target)
}

/// `host` or `host:port` (port only when not the scheme's default): what error messages
/// and logs may name.
pub(crate) fn host_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// `Content-Length`, if present and a number. Read from the header, not from reqwest's
/// `content_length()`, which reports 0 for a HEAD response.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_text(headers, CONTENT_LENGTH, 20)?
        .trim()
        .parse()
        .ok()
}

/// A header's value as text, if present, valid and at most `max` bytes long.
pub(crate) fn header_text(
    headers: &HeaderMap,
    name: impl http::header::AsHeaderName,
    max: usize,
) -> Option<&str> {
    let value = headers.get(name)?;
    if value.len() > max {
        return None;
    }
    value.to_str().ok()
}

/// The whole body, refusing one longer than `limit` bytes: up front by `Content-Length`,
/// else as soon as the bytes received pass the limit.
pub(crate) async fn read_bounded(
    mut response: Response,
    limit: usize,
    host: &str,
) -> Result<Bytes, UpstreamError> {
    let declared = content_length(response.headers());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(UpstreamError::TooLarge);
    }
    // Within the limit by the check above, so this allocation is bounded too.
    let capacity = declared.map_or(0, |len| len as usize);
    let mut buf = BytesMut::with_capacity(capacity);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| error::from_reqwest(e, host))?
    {
        if buf.len() + chunk.len() > limit {
            return Err(UpstreamError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_retry_after_capped() {
        let b = Backoff::default();
        assert_eq!(b.remaining(), None);
        // Only a 429 that says how long sets it.
        b.note(&UpstreamError::RateLimited { retry_after: None });
        b.note(&UpstreamError::unavailable(
            crate::error::Cause::Status(503),
            "upstream answered 503".into(),
        ));
        assert_eq!(b.remaining(), None);
        b.note(&UpstreamError::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
        });
        let left = b.remaining().unwrap();
        assert!(left > Duration::from_secs(29) && left <= Duration::from_secs(30));
        // A shorter one does not cut a longer one short; a day is capped.
        b.note(&UpstreamError::RateLimited {
            retry_after: Some(Duration::from_secs(1)),
        });
        assert!(b.remaining().unwrap() > Duration::from_secs(29));
        b.note(&UpstreamError::RateLimited {
            retry_after: Some(Duration::from_secs(86_400)),
        });
        assert!(b.remaining().unwrap() <= MAX_BACKOFF);
        assert!(b.remaining().unwrap() > MAX_BACKOFF - Duration::from_secs(1));
    }

    #[test]
    fn redirect_targets() {
        let current = Url::parse("http://127.0.0.1:5000/v2/a/blobs/sha256:x").unwrap();
        let cases: &[(&str, Option<&str>)] = &[
            (
                "https://cdn.example/b?sig=1",
                Some("https://cdn.example/b?sig=1"),
            ),
            ("/other/path", Some("http://127.0.0.1:5000/other/path")),
            ("rel", Some("http://127.0.0.1:5000/v2/a/blobs/rel")),
            ("//cdn.example/x", Some("http://cdn.example/x")),
            ("ftp://cdn.example/x", None),
            ("file:///etc/passwd", None),
            ("http://[bad", None),
        ];
        for (location, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(LOCATION, HeaderValue::from_str(location).unwrap());
            let got = redirect_target(&current, &h).ok().map(|u| u.to_string());
            assert_eq!(got.as_deref(), *want, "{location}");
        }
        assert!(redirect_target(&current, &HeaderMap::new()).is_err());
    }

    #[test]
    fn hosts() {
        let cases = [
            ("https://registry-1.docker.io/v2/", "registry-1.docker.io"),
            (
                "https://registry-1.docker.io:443/v2/",
                "registry-1.docker.io",
            ),
            ("http://127.0.0.1:5000", "127.0.0.1:5000"),
            ("http://[::1]:5000/x?secret=1", "[::1]:5000"),
        ];
        for (url, want) in cases {
            assert_eq!(host_of(&Url::parse(url).unwrap()), want, "{url}");
        }
    }

    #[test]
    fn content_lengths() {
        let cases: &[(&str, Option<u64>)] = &[
            ("12", Some(12)),
            ("0", Some(0)),
            ("-1", None),
            ("abc", None),
            ("123456789012345678901234", None),
        ];
        for (value, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_LENGTH, HeaderValue::from_str(value).unwrap());
            assert_eq!(content_length(&h), *want, "{value}");
        }
    }
}
