//! Authenticating to the upstream: answering its `WWW-Authenticate` challenge (the Bearer
//! token handshake or Basic), and the per-scope token cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue};
use pullgate_credentials::Credential;
use pullgate_oci::{Challenge, PullScope};
use reqwest::Url;

use crate::error::{self, Cause, RefusedRedirect, UpstreamError};
use crate::transport::{host_of, read_bounded};
use crate::Upstream;

/// Distinct scopes cached at once. One per repository pulled recently is plenty; the bound
/// keeps a client that walks many repository names from growing the map without end.
const MAX_TOKENS: usize = 1024;

/// Lifetime the distribution token spec tells clients to assume when `expires_in` is absent.
const DEFAULT_TOKEN_LIFETIME: u64 = 60;

/// Tokens are dropped this long before they expire at the least, so a request never leaves
/// with a token that dies in flight (and so clock granularity never matters).
const MIN_SAFETY_MARGIN: Duration = Duration::from_secs(5);

/// Cap on cached token lifetime: a token server promising a year is not believed.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Largest token response read. JWTs with many claims run to a few KiB; this is generous.
const MAX_TOKEN_BODY: usize = 256 * 1024;

/// `WWW-Authenticate` values longer than this are refused (as `Challenge::parse` does).
const MAX_CHALLENGE_LEN: usize = 8 * 1024;

/// Bearer tokens by scope, each with the instant after which it is not used.
pub(crate) struct TokenCache {
    // A std mutex: it is held only for map operations, never across an await.
    tokens: Mutex<HashMap<PullScope, CachedToken>>,
}

/// The ready `Authorization` value, so a hit costs no formatting. Deliberately not `Debug`.
struct CachedToken {
    header: HeaderValue,
    fresh_until: Instant,
}

impl TokenCache {
    pub(crate) fn new() -> Self {
        TokenCache {
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PullScope, CachedToken>> {
        // A panic while holding the lock leaves a map that is still consistent (every
        // operation is a single insert/remove), so poisoning is ignored.
        self.tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached `Authorization` value for `scope`, if still fresh.
    pub(crate) fn get(&self, scope: &PullScope) -> Option<HeaderValue> {
        let now = Instant::now();
        let mut tokens = self.lock();
        match tokens.get(scope) {
            Some(t) if t.fresh_until > now => Some(t.header.clone()),
            Some(_) => {
                tokens.remove(scope);
                None
            }
            None => None,
        }
    }

    pub(crate) fn insert(&self, scope: &PullScope, header: HeaderValue, lifetime: Duration) {
        let now = Instant::now();
        let Some(fresh_until) = now.checked_add(lifetime) else {
            return;
        };
        let mut tokens = self.lock();
        if tokens.len() >= MAX_TOKENS && !tokens.contains_key(scope) {
            tokens.retain(|_, t| t.fresh_until > now);
            if tokens.len() >= MAX_TOKENS {
                // Still full of live tokens: give up the one closest to expiring, which
                // is the cheapest to fetch again soon anyway.
                let soonest = tokens
                    .iter()
                    .min_by_key(|(_, t)| t.fresh_until)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    tokens.remove(&k);
                }
            }
        }
        tokens.insert(
            scope.clone(),
            CachedToken {
                header,
                fresh_until,
            },
        );
    }

    /// The upstream refused `rejected` for `scope` before its time: forget it, unless the
    /// cache already holds another (fetched by a concurrent request meanwhile).
    pub(crate) fn forget(&self, scope: &PullScope, rejected: Option<&HeaderValue>) {
        let mut tokens = self.lock();
        if tokens
            .get(scope)
            .is_some_and(|t| Some(&t.header) == rejected)
        {
            tokens.remove(scope);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// How long to use a token the server says lives `expires_in` seconds: its lifetime minus
/// 10% (at least [`MIN_SAFETY_MARGIN`]). `None`: too short-lived to be worth caching.
///
/// `issued_at` is ignored on purpose: the token server's clock and ours may disagree, and
/// counting from when we received the token is off only by the network delay.
pub(crate) fn cache_lifetime(expires_in: Option<u64>) -> Option<Duration> {
    let lifetime = Duration::from_secs(expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME));
    let margin = (lifetime / 10).max(MIN_SAFETY_MARGIN);
    lifetime
        .checked_sub(margin)
        .filter(|d| !d.is_zero())
        .map(|d| d.min(MAX_TOKEN_LIFETIME))
}

/// `Basic base64(user:pass)`, marked sensitive so no `Debug` of a request shows it.
pub(crate) fn basic_header(cred: &Credential) -> Result<HeaderValue, UpstreamError> {
    sensitive(format!("Basic {}", cred.to_base64()))
        // Base64 is always a valid header value; this is unreachable in practice.
        .ok_or_else(|| UpstreamError::Protocol("cannot encode credentials".into()))
}

/// `Bearer <token>`, refusing tokens that are not valid header text.
pub(crate) fn bearer_header(token: &str) -> Result<HeaderValue, UpstreamError> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(UpstreamError::Protocol(
            "token endpoint returned an unusable token".into(),
        ));
    }
    sensitive(format!("Bearer {token}"))
        .ok_or_else(|| UpstreamError::Protocol("token endpoint returned an unusable token".into()))
}

fn sensitive(value: String) -> Option<HeaderValue> {
    let mut v = HeaderValue::try_from(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// The challenge to answer among a 401's `WWW-Authenticate` headers: Bearer if offered
/// (it works with or without credentials), else the first one that parses.
/// `Ok(None)`: no usable challenge at all.
pub(crate) fn pick_challenge(headers: &HeaderMap) -> Result<Option<Challenge>, UpstreamError> {
    let mut first = None;
    for value in headers.get_all(WWW_AUTHENTICATE) {
        if value.len() > MAX_CHALLENGE_LEN {
            return Err(UpstreamError::Protocol(
                "WWW-Authenticate header is too long".into(),
            ));
        }
        let Ok(text) = value.to_str() else { continue };
        let Ok(challenge) = Challenge::parse(text) else {
            continue;
        };
        if challenge.scheme == "bearer" {
            return Ok(Some(challenge));
        }
        first.get_or_insert(challenge);
    }
    Ok(first)
}

/// The fields of a token response we use. Not `Debug`: it holds the token.
#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// The token and its `expires_in` from a token endpoint's JSON. Both `token` and
/// `access_token` are in the wild (the spec allows either; OAuth2 servers send the latter).
pub(crate) fn parse_token_response(body: &[u8]) -> Result<(String, Option<u64>), UpstreamError> {
    let parsed: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| UpstreamError::Protocol("token endpoint returned malformed JSON".into()))?;
    let token = parsed
        .token
        .filter(|t| !t.is_empty())
        .or(parsed.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| UpstreamError::Protocol("token endpoint returned no token".into()))?;
    Ok((token, parsed.expires_in))
}

impl Upstream {
    /// The credential configured for this upstream right now (secrets rotate, so this is
    /// looked up on every use).
    pub(crate) fn credential(&self) -> Option<Credential> {
        let source = self.credentials.as_ref()?;
        let config = source.current();
        config.for_host(&self.cred_host).cloned()
    }

    /// What to send before any challenge: a cached token for the scope, or Basic when the
    /// upstream asked for Basic before. Otherwise nothing: the first request is anonymous.
    pub(crate) fn proactive_auth(
        &self,
        scope: &PullScope,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        if let Some(token) = self.tokens.get(scope) {
            return Ok(Some(token));
        }
        if self.wants_basic.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(cred) = self.credential() {
                return basic_header(&cred).map(Some);
            }
        }
        Ok(None)
    }

    /// The `Authorization` to retry with after a 401 carrying `headers`, for a request
    /// that was sent with `rejected`.
    pub(crate) async fn answer_challenge(
        &self,
        headers: &HeaderMap,
        scope: &PullScope,
        rejected: Option<&HeaderValue>,
    ) -> Result<HeaderValue, UpstreamError> {
        self.tokens.forget(scope, rejected);
        let Some(challenge) = pick_challenge(headers)? else {
            tracing::debug!(upstream = %self.name, "401 without a usable challenge");
            return Err(UpstreamError::Denied);
        };
        match challenge.scheme.as_str() {
            "bearer" => {
                // A cold pull asks for a manifest and a dozen layers at once, each answered
                // 401: they share one handshake instead of each asking the token server
                // (which rate-limits, on Docker Hub) for the same token.
                self.token_flights
                    .run(scope.clone(), || async {
                        // A concurrent request may have fetched a token since this one was
                        // sent. Looked at by the lead, after the last flight has landed (it
                        // caches before it lands), so one scope costs one handshake.
                        if let Some(token) = self.tokens.get(scope) {
                            return Ok(token);
                        }
                        let cred = self.credential();
                        let (token, expires_in) =
                            self.fetch_token(&challenge, scope, cred.as_ref()).await?;
                        let header = bearer_header(&token)?;
                        if let Some(lifetime) = cache_lifetime(expires_in) {
                            self.tokens.insert(scope, header.clone(), lifetime);
                        }
                        Ok(header)
                    })
                    .await
            }
            "basic" => {
                let Some(cred) = self.credential() else {
                    return Err(UpstreamError::Denied);
                };
                // Remember, so later requests send it up front instead of paying a 401.
                self.wants_basic
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                basic_header(&cred)
            }
            other => {
                tracing::debug!(upstream = %self.name, scheme = other, "unsupported challenge scheme");
                Err(UpstreamError::Denied)
            }
        }
    }

    /// Whether the upstream's credentials may go to `realm`: its own origin (scheme, host
    /// and port, so never a plain-http downgrade), or a realm configured for it.
    pub(crate) fn realm_allowed(&self, realm: &Url) -> bool {
        let origin = realm.origin();
        origin == self.base.origin() || self.token_realms.iter().any(|r| r.origin() == origin)
    }

    /// The token handshake: GET `realm?service=…&scope=…`, with our credentials if we have
    /// them and may send them there.
    async fn fetch_token(
        &self,
        challenge: &Challenge,
        default_scope: &PullScope,
        cred: Option<&Credential>,
    ) -> Result<(String, Option<u64>), UpstreamError> {
        let realm = challenge
            .param("realm")
            .ok_or_else(|| UpstreamError::Protocol("bearer challenge has no realm".into()))?;
        let mut url = Url::parse(realm)
            .map_err(|_| UpstreamError::Protocol("bearer realm is not a URL".into()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(UpstreamError::Protocol(
                "bearer realm is not an http(s) URL".into(),
            ));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = challenge.param("service") {
                query.append_pair("service", service);
            }
            let scope = challenge
                .param("scope")
                .filter(|s| !s.trim().is_empty())
                .unwrap_or(default_scope.as_str());
            // A challenge may name several scopes separated by spaces; the token spec
            // wants one `scope` parameter each.
            for s in scope.split(' ').filter(|s| !s.is_empty()) {
                query.append_pair("scope", s);
            }
        }
        let realm_host = host_of(&url);
        let allowed = self.realm_allowed(&url);
        // A realm the upstream names but nobody vouched for is a host of the upstream's
        // choosing: asked anonymously (what Docker does, and enough for public images),
        // and through the guarded client, so it cannot be an address in our own network.
        let client = if allowed {
            &self.client
        } else {
            self.guard
                .check_url(&url)
                .map_err(|_| UpstreamError::Redirect(RefusedRedirect::InternalAddress))?;
            &self.guarded_client
        };
        let mut request = client
            .get(url.clone())
            .timeout(self.token_timeout)
            .header(ACCEPT, "application/json");
        if let Some(cred) = cred {
            if allowed {
                request = request.header(AUTHORIZATION, basic_header(cred)?);
            } else {
                tracing::warn!(
                    upstream = %self.name,
                    realm = %realm_host,
                    "token realm is neither the upstream's origin nor listed in its token_realms; \
                     asking for a token anonymously"
                );
            }
        }
        let response = request
            .send()
            .await
            .map_err(|e| error::from_reqwest(e, &realm_host))?;
        let status = response.status();
        tracing::debug!(
            upstream = %self.name,
            method = "GET",
            host = %realm_host,
            path = url.path(),
            status = status.as_u16(),
            "token request"
        );
        match status.as_u16() {
            200..=299 => {}
            401 | 403 => return Err(UpstreamError::Denied),
            429 => {
                return Err(UpstreamError::RateLimited {
                    retry_after: error::retry_after(response.headers()),
                })
            }
            code @ 500..=599 => {
                return Err(UpstreamError::unavailable(
                    Cause::TokenEndpoint(code),
                    format!("token endpoint answered {code}"),
                ))
            }
            code => {
                return Err(UpstreamError::Protocol(format!(
                    "token endpoint answered unexpected status {code}"
                )))
            }
        }
        let body = read_bounded(response, MAX_TOKEN_BODY, &realm_host)
            .await
            .map_err(|e| match e {
                UpstreamError::TooLarge => {
                    UpstreamError::Protocol("token response is too large".into())
                }
                other => other,
            })?;
        parse_token_response(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        let cases: &[(Option<u64>, Option<u64>)] = &[
            (None, Some(54)),
            (Some(60), Some(54)),
            (Some(300), Some(270)),
            (Some(30), Some(25)),
            (Some(5), None),
            (Some(0), None),
            (Some(u64::MAX / 4), Some(24 * 60 * 60)),
        ];
        for (expires_in, want) in cases {
            assert_eq!(
                cache_lifetime(*expires_in),
                want.map(Duration::from_secs),
                "{expires_in:?}"
            );
        }
    }

    #[test]
    fn token_responses() {
        let ok: &[(&str, &str, Option<u64>)] = &[
            (r#"{"token":"a","expires_in":300}"#, "a", Some(300)),
            (r#"{"access_token":"b"}"#, "b", None),
            (r#"{"token":"","access_token":"c"}"#, "c", None),
            (
                r#"{"token":"d","access_token":"d","issued_at":"2020-01-01T00:00:00Z"}"#,
                "d",
                None,
            ),
        ];
        for (body, token, exp) in ok {
            let (t, e) = parse_token_response(body.as_bytes()).unwrap();
            assert_eq!((t.as_str(), e), (*token, *exp), "{body}");
        }
        for bad in [r#"{}"#, "not json", r#"{"token":""}"#, r#"{"token":5}"#] {
            assert!(parse_token_response(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn bearer_headers() {
        assert!(bearer_header("abc.def-ghi_=").unwrap().is_sensitive());
        for bad in ["", "a b", "a\nb", "é"] {
            assert!(bearer_header(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn challenge_choice() {
        let mut h = HeaderMap::new();
        assert_eq!(pick_challenge(&h).unwrap(), None);
        h.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="r""#),
        );
        h.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="https://a/token""#),
        );
        assert_eq!(pick_challenge(&h).unwrap().unwrap().scheme, "bearer");

        let mut h = HeaderMap::new();
        h.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="open"#),
        );
        h.append(WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
        assert_eq!(pick_challenge(&h).unwrap().unwrap().scheme, "basic");

        let mut h = HeaderMap::new();
        let long = format!(r#"Bearer realm="{}""#, "a".repeat(9000));
        h.append(WWW_AUTHENTICATE, HeaderValue::from_str(&long).unwrap());
        assert!(matches!(
            pick_challenge(&h),
            Err(UpstreamError::Protocol(_))
        ));
    }

    #[test]
    fn cache_expiry_and_bound() {
        let scope =
            |name: &str| PullScope::repository(&pullgate_oci::RepoName::parse(name).unwrap());
        let cache = TokenCache::new();
        let v = HeaderValue::from_static("Bearer x");
        cache.insert(&scope("s"), v.clone(), Duration::from_secs(60));
        assert_eq!(cache.get(&scope("s")), Some(v.clone()));
        cache.insert(&scope("gone"), v.clone(), Duration::ZERO);
        assert_eq!(cache.get(&scope("gone")), None);
        cache.forget(&scope("s"), Some(&HeaderValue::from_static("other")));
        assert_eq!(
            cache.get(&scope("s")),
            Some(v.clone()),
            "another token is kept"
        );
        cache.forget(&scope("s"), Some(&v));
        assert_eq!(cache.get(&scope("s")), None);

        for i in 0..MAX_TOKENS + 10 {
            cache.insert(
                &scope(&format!("scope{i}")),
                v.clone(),
                Duration::from_secs(60 + i as u64),
            );
        }
        assert_eq!(cache.len(), MAX_TOKENS);
        // The newest survives; the soonest-expiring were evicted.
        assert!(cache
            .get(&scope(&format!("scope{}", MAX_TOKENS + 9)))
            .is_some());
        assert!(cache.get(&scope("scope0")).is_none());
    }
}
