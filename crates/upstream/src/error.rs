//! [`UpstreamError`] and the mapping of upstream statuses and transport failures onto it.
//!
//! Every failure is classified where it happens (the status we read, reqwest's
//! `is_timeout()`/`is_connect()`, our own redirect and size checks) into a [`Cause`] or a
//! variant; nothing downstream ever looks at an error's text to decide what it was.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

/// What went wrong talking to the upstream, in this crate's words.
///
/// Messages name at most a host (and sometimes a path): never credentials, tokens or query
/// strings, because redirect targets carry signatures in their queries and these messages
/// end up in logs and client-facing error details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream does not know the repository, manifest or blob (404).
    #[error("not found upstream")]
    NotFound,
    /// The upstream refused us even with our configured credentials (401 after the
    /// handshake, or 403).
    #[error("upstream denied access")]
    Denied,
    /// The upstream throttles us (429); `retry_after` is its `Retry-After` in seconds.
    #[error("upstream rate limit")]
    RateLimited { retry_after: Option<Duration> },
    /// The upstream cannot be reached or answered 5xx; `cause` says which, `detail` says
    /// it in words for logs (a host at most).
    #[error("upstream unavailable: {detail}")]
    Unavailable { cause: Cause, detail: String },
    /// The response is larger than the caller's limit.
    #[error("upstream response exceeds the size limit")]
    TooLarge,
    /// A blob larger than the configured maximum blob size: refused by its
    /// `Content-Length`, or cut off once that many bytes arrived.
    #[error("the blob is larger than the maximum blob size of {limit} bytes")]
    BlobTooLarge { limit: u64 },
    /// A redirect (or a token realm the config does not list) we do not follow.
    #[error("upstream redirect refused: {0}")]
    Redirect(RefusedRedirect),
    /// The upstream answered something we cannot use.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
}

/// Why the upstream is unavailable, decided where the failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Connecting failed: refused, reset during connect, DNS, TLS.
    Connect,
    /// Connecting or waiting for the answer (or the next body chunk) took too long.
    Timeout,
    /// The registry answered this 5xx status.
    Status(u16),
    /// The token endpoint answered this 5xx status.
    TokenEndpoint(u16),
    /// The body broke off after the answer had started.
    Body,
    /// Any other transport failure before the answer (a connection closed early).
    Transport,
}

impl Cause {
    pub fn is_timeout(self) -> bool {
        self == Cause::Timeout
    }
}

/// Why a redirect was not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefusedRedirect {
    /// Manifests, tags and referrers are only followed within the upstream's origin: their
    /// bodies reach clients, and a redirect elsewhere would read whatever is there.
    #[error("a manifest, tags or referrers redirect leaves the upstream's origin")]
    CrossOrigin,
    /// A blob redirect (or an unlisted token realm) to a loopback, link-local, private or
    /// unspecified address, from an upstream that may not point into the mirror's network.
    #[error("the upstream pointed at a loopback, link-local or private address")]
    InternalAddress,
}

/// What kind of failure an [`UpstreamError`] is, for the `upstream_errors_total` metric:
/// a fixed set of labels, so a metric never carries an upstream's free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connection refused or reset before an answer, DNS, TLS.
    Unreachable,
    Timeout,
    RateLimited,
    /// A 5xx answer.
    ServerError,
    /// 401 after the handshake, or 403: our credentials are not good enough.
    Denied,
    /// An answer we cannot use: bad headers, oversized (a blob past the maximum blob size
    /// too), unexpected status, a redirect we refuse.
    Invalid,
    /// The bytes did not hash to the digest they were asked for (reported by the mirror).
    DigestMismatch,
    /// The body ended early or broke off mid-stream.
    Truncated,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Unreachable,
        ErrorKind::Timeout,
        ErrorKind::RateLimited,
        ErrorKind::ServerError,
        ErrorKind::Denied,
        ErrorKind::Invalid,
        ErrorKind::DigestMismatch,
        ErrorKind::Truncated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::ServerError => "server_error",
            ErrorKind::Denied => "denied",
            ErrorKind::Invalid => "invalid",
            ErrorKind::DigestMismatch => "digest_mismatch",
            ErrorKind::Truncated => "truncated",
        }
    }
}

impl UpstreamError {
    /// The kind of failure; `None` for a 404, which is an answer, not a failure.
    pub fn kind(&self) -> Option<ErrorKind> {
        Some(match self {
            UpstreamError::NotFound => return None,
            UpstreamError::Denied => ErrorKind::Denied,
            UpstreamError::RateLimited { .. } => ErrorKind::RateLimited,
            UpstreamError::Unavailable { cause, .. } => match cause {
                Cause::Connect | Cause::Transport => ErrorKind::Unreachable,
                Cause::Timeout => ErrorKind::Timeout,
                // The token endpoint is part of the upstream: its 5xx is the upstream's
                // server error, not a network problem.
                Cause::Status(_) | Cause::TokenEndpoint(_) => ErrorKind::ServerError,
                Cause::Body => ErrorKind::Truncated,
            },
            UpstreamError::TooLarge
            | UpstreamError::BlobTooLarge { .. }
            | UpstreamError::Redirect(_)
            | UpstreamError::Protocol(_) => ErrorKind::Invalid,
        })
    }

    /// Whether the failure is a timeout (the mirror answers 504 rather than 502).
    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::Unavailable { cause, .. } if cause.is_timeout())
    }

    pub(crate) fn unavailable(cause: Cause, detail: String) -> UpstreamError {
        UpstreamError::Unavailable { cause, detail }
    }
}

/// Failures counted by kind, for one upstream.
#[derive(Debug, Default)]
pub struct ErrorCounts([std::sync::atomic::AtomicU64; ErrorKind::ALL.len()]);

impl ErrorCounts {
    pub fn record(&self, kind: ErrorKind) {
        self.0[kind as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn record_error(&self, e: &UpstreamError) {
        if let Some(kind) = e.kind() {
            self.record(kind);
        }
    }

    /// Every kind with its count, zeros included (so dashboards see the series).
    pub fn snapshot(&self) -> impl Iterator<Item = (ErrorKind, u64)> + '_ {
        ErrorKind::ALL.iter().map(|&k| {
            (
                k,
                self.0[k as usize].load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }
}

/// Longest `Retry-After` we pass on; a larger value is more likely a bug than a plan.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// The error for a non-2xx status of a registry request.
pub(crate) fn from_status(status: StatusCode, headers: &HeaderMap) -> UpstreamError {
    match status.as_u16() {
        404 => UpstreamError::NotFound,
        // A 401 reaching here means the handshake already ran: our credentials (or lack
        // of them) are not good enough, and the client cannot fix that.
        401 | 403 => UpstreamError::Denied,
        429 => UpstreamError::RateLimited {
            retry_after: retry_after(headers),
        },
        code @ 500..=599 => {
            UpstreamError::unavailable(Cause::Status(code), format!("upstream answered {code}"))
        }
        code => UpstreamError::Protocol(format!("upstream answered unexpected status {code}")),
    }
}

/// `Retry-After` in delta-seconds. The HTTP-date form is rare from registries and not
/// worth a date parser; it yields `None`, which callers treat as "unknown".
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if value.is_empty() || value.len() > 20 {
        return None;
    }
    let secs: u64 = value.parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// The error for a transport failure talking to `host`.
///
/// The URL is stripped first: reqwest's `Display` includes it, query string and all.
pub(crate) fn from_reqwest(e: reqwest::Error, host: &str) -> UpstreamError {
    let e = e.without_url();
    if refused_by_resolver(&e) {
        return UpstreamError::Redirect(RefusedRedirect::InternalAddress);
    }
    let (cause, message) = if e.is_timeout() {
        let message = if e.is_connect() {
            format!("connecting to {host} timed out")
        } else {
            format!("request to {host} timed out")
        };
        (Cause::Timeout, message)
    } else if e.is_connect() {
        (
            Cause::Connect,
            format!("cannot connect to {host}: {}", root_cause(&e)),
        )
    } else if e.is_body() || e.is_decode() {
        (
            Cause::Body,
            format!(
                "reading the response from {host} failed: {}",
                root_cause(&e)
            ),
        )
    } else {
        (
            Cause::Transport,
            format!("request to {host} failed: {}", root_cause(&e)),
        )
    };
    UpstreamError::unavailable(cause, message)
}

/// Whether the guarded resolver refused the name's addresses: its error, found in the
/// source chain by type.
pub(crate) fn refused_by_resolver(e: &reqwest::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<crate::guard::InternalAddress>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The innermost error's text: the useful part ("Connection refused") without the layers
/// of wrapping, none of which carries a URL.
fn root_cause(e: &reqwest::Error) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn status_table() {
        let empty = HeaderMap::new();
        let cases: &[(u16, UpstreamError)] = &[
            (404, UpstreamError::NotFound),
            (401, UpstreamError::Denied),
            (403, UpstreamError::Denied),
            (429, UpstreamError::RateLimited { retry_after: None }),
            (
                500,
                UpstreamError::unavailable(Cause::Status(500), "upstream answered 500".into()),
            ),
            (
                503,
                UpstreamError::unavailable(Cause::Status(503), "upstream answered 503".into()),
            ),
            (
                418,
                UpstreamError::Protocol("upstream answered unexpected status 418".into()),
            ),
            (
                304,
                UpstreamError::Protocol("upstream answered unexpected status 304".into()),
            ),
        ];
        for (code, want) in cases {
            let status = StatusCode::from_u16(*code).unwrap();
            assert_eq!(&from_status(status, &empty), want, "{code}");
        }
    }

    #[test]
    fn kinds() {
        let cases: &[(UpstreamError, Option<ErrorKind>)] = &[
            (UpstreamError::NotFound, None),
            (UpstreamError::Denied, Some(ErrorKind::Denied)),
            (
                UpstreamError::RateLimited { retry_after: None },
                Some(ErrorKind::RateLimited),
            ),
            (
                from_status(StatusCode::BAD_GATEWAY, &HeaderMap::new()),
                Some(ErrorKind::ServerError),
            ),
            // The words no longer matter: a cause decides, and a message that merely says
            // "timed out" is not a timeout.
            (
                UpstreamError::unavailable(Cause::Timeout, "x".into()),
                Some(ErrorKind::Timeout),
            ),
            (
                UpstreamError::unavailable(Cause::Connect, "timed out".into()),
                Some(ErrorKind::Unreachable),
            ),
            (
                UpstreamError::unavailable(Cause::Transport, "closed".into()),
                Some(ErrorKind::Unreachable),
            ),
            (
                UpstreamError::unavailable(Cause::Body, "reset".into()),
                Some(ErrorKind::Truncated),
            ),
            (
                UpstreamError::unavailable(Cause::TokenEndpoint(503), "x".into()),
                Some(ErrorKind::ServerError),
            ),
            (UpstreamError::TooLarge, Some(ErrorKind::Invalid)),
            (
                UpstreamError::BlobTooLarge { limit: 1 },
                Some(ErrorKind::Invalid),
            ),
            (
                UpstreamError::Redirect(RefusedRedirect::InternalAddress),
                Some(ErrorKind::Invalid),
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.kind(), *want, "{e}");
            assert_eq!(e.is_timeout(), *want == Some(ErrorKind::Timeout), "{e}");
        }
        let counts = ErrorCounts::default();
        counts.record_error(&UpstreamError::Denied);
        counts.record_error(&UpstreamError::NotFound);
        let got: Vec<_> = counts.snapshot().filter(|(_, n)| *n > 0).collect();
        assert_eq!(got, vec![(ErrorKind::Denied, 1)]);
    }

    #[test]
    fn retry_after_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("7", Some(7)),
            (" 30 ", Some(30)),
            ("0", Some(0)),
            ("999999999", Some(24 * 60 * 60)),
            ("Wed, 21 Oct 2015 07:28:00 GMT", None),
            ("-1", None),
            ("", None),
            ("1.5", None),
        ];
        for (value, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from_str(value).unwrap(),
            );
            assert_eq!(retry_after(&h), want.map(Duration::from_secs), "{value:?}");
        }
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
