use std::time::Duration;

use pullgate_store::StoreError;
use pullgate_upstream::UpstreamError;

/// Why the mirror could not answer, in the mirror's words. Cheap to clone, because one
/// failed fill or revalidation answers every client that was waiting on it.
///
/// `detail` strings are safe to show a client (no secrets, no paths); `Internal` keeps its
/// detail for the log only.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MirrorError {
    #[error("no upstream serves {0}")]
    NameUnknown(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("blob unknown")]
    BlobUnknown,
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    /// The upstream refused the mirror's own credentials; the client cannot fix this.
    #[error("upstream denied access")]
    UpstreamDenied,
    #[error("upstream rate limit")]
    RateLimited { retry_after: Option<Duration> },
    #[error("upstream unavailable: {detail}")]
    UpstreamUnavailable { detail: String, timeout: bool },
    /// The blob is larger than the mirror's maximum blob size (by its `Content-Length`, or
    /// as it streamed): the upstream's to serve, not ours to cache.
    #[error("the blob is larger than the maximum blob size of {limit} bytes")]
    BlobTooLarge { limit: u64 },
    /// The upstream sent something we will not pass on: wrong digest, oversized or
    /// malformed manifest, broken protocol.
    #[error("bad upstream response: {0}")]
    UpstreamBadContent(String),
    /// This client already has as many fills under way as it may start.
    #[error("too many blob downloads under way for this client (at most {limit})")]
    TooManyFills { limit: usize },
    /// The trust policy refused the content; the decision names the rule and the reason.
    #[error("{0}")]
    PolicyDenied(std::sync::Arc<crate::policy::PolicyDecision>),
    /// The store holding blob bytes (the S3 bucket) failed or did not answer. The detail
    /// is for the log.
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What the request was after, to name a 404 from the upstream correctly.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wanted {
    Manifest,
    Blob,
    Repository,
}

impl MirrorError {
    pub(crate) fn internal(detail: impl Into<String>) -> Self {
        MirrorError::Internal(detail.into())
    }

    pub(crate) fn from_upstream(e: UpstreamError, wanted: Wanted) -> Self {
        match e {
            UpstreamError::NotFound => match wanted {
                Wanted::Manifest => MirrorError::ManifestUnknown("unknown to the upstream".into()),
                Wanted::Blob => MirrorError::BlobUnknown,
                Wanted::Repository => MirrorError::NameUnknown("unknown to the upstream".into()),
            },
            UpstreamError::Denied => MirrorError::UpstreamDenied,
            UpstreamError::RateLimited { retry_after } => MirrorError::RateLimited { retry_after },
            // The upstream crate decided the cause where it failed; its words are for logs.
            UpstreamError::Unavailable { cause, detail } => MirrorError::UpstreamUnavailable {
                detail,
                timeout: cause.is_timeout(),
            },
            UpstreamError::TooLarge => {
                MirrorError::UpstreamBadContent("upstream response exceeds the size limit".into())
            }
            UpstreamError::BlobTooLarge { limit } => MirrorError::BlobTooLarge { limit },
            e @ UpstreamError::Redirect(_) => MirrorError::UpstreamBadContent(e.to_string()),
            UpstreamError::Protocol(detail) => MirrorError::UpstreamBadContent(detail),
        }
    }

    /// Whether a cached tag may be served instead (the upstream is down or throttling us).
    pub(crate) fn allows_stale(&self) -> bool {
        matches!(
            self,
            MirrorError::UpstreamUnavailable { .. } | MirrorError::RateLimited { .. }
        )
    }
}

impl From<StoreError> for MirrorError {
    fn from(e: StoreError) -> Self {
        // Bytes that do not match their digest or size are the upstream's fault (502), not
        // ours (500).
        if e.is_bad_content() {
            MirrorError::UpstreamBadContent(format!("upstream content rejected: {e}"))
        } else if matches!(e, StoreError::Backend { .. }) {
            MirrorError::StorageUnavailable(e.to_string())
        } else {
            MirrorError::Internal(format!("store: {e}"))
        }
    }
}

impl From<pullgate_flights::Abandoned> for MirrorError {
    fn from(e: pullgate_flights::Abandoned) -> Self {
        MirrorError::internal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pullgate_upstream::Cause;

    #[test]
    fn upstream_causes_decide_not_their_words() {
        let unavailable = |cause, detail: &str| {
            MirrorError::from_upstream(
                UpstreamError::Unavailable {
                    cause,
                    detail: detail.into(),
                },
                Wanted::Blob,
            )
        };
        let cases = [
            (unavailable(Cause::Timeout, "request to h failed"), true),
            // A refused connection whose text happens to say "timeout" is not one.
            (
                unavailable(Cause::Connect, "cannot connect to timeout.example"),
                false,
            ),
            (
                unavailable(Cause::TokenEndpoint(503), "token endpoint answered 503"),
                false,
            ),
        ];
        for (e, want) in cases {
            match e {
                MirrorError::UpstreamUnavailable { timeout, .. } => assert_eq!(timeout, want),
                other => panic!("{other:?}"),
            }
        }
        // The bucket failing is the storage's unavailability, not an internal error.
        let e = MirrorError::from(StoreError::Backend {
            op: "GET",
            detail: "no answer".into(),
        });
        assert!(matches!(e, MirrorError::StorageUnavailable(_)), "{e:?}");
        let e = MirrorError::from_upstream(UpstreamError::BlobTooLarge { limit: 7 }, Wanted::Blob);
        assert!(matches!(e, MirrorError::BlobTooLarge { limit: 7 }), "{e:?}");
    }
}
