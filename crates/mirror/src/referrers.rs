//! `GET /v2/<name>/referrers/<digest>`, cached like a tag: the answer is kept in the index
//! per (upstream, repository, subject digest, `artifactType` filter), served for the tag
//! TTL that the fallback tag `sha256-<hex>` gets (the global `tag_ttl`, or the first
//! matching `[[cache.tag_rule]]`), then asked for again; served stale when the upstream is
//! down, as a tag is.
//!
//! An upstream without the referrers API (Distribution 2.8 answers 404) gets the answer the
//! distribution spec lets a client build itself: the image index tagged `<alg>-<hex>`
//! (where cosign and oras put referrers on such registries), filtered by `artifactType` if
//! asked. That index is fetched through the mirror's own manifest-by-tag path, so it is
//! cached, revalidated and served stale like any tag, and linked to this repository only;
//! each entry's `artifactType` is its manifest's (read by digest, access-checked), as the
//! referrers API would report it.
//!
//! Only the plain and the `artifactType`-filtered answers are cached; a request with `n`
//! or `last` (pagination), or an answer that is paged (a `Link`), passes through as before.
//!
//! Isolation: the key holds the (upstream, repository), so an answer is never served under
//! another repository; and a referrers list names digests only: pulling one by digest runs
//! the access check like any other manifest.

use std::time::SystemTime;

use bytes::Bytes;
use pullgate_oci::{media_types, Digest, Tag};
use pullgate_store::{ReferrersKey, ReferrersRecord, MAX_ARTIFACT_TYPE_LEN};
use pullgate_upstream::UpstreamError;

use crate::error::{MirrorError, Wanted};
use crate::stats::Stats;
use crate::{Mirror, PassthroughResponse, Source, Target};

/// The header value that says the `artifactType` filter was applied.
const ARTIFACT_TYPE_FILTER: &str = "artifactType";

/// A referrers answer the flight produced, and whether it may be kept.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    record: ReferrersRecord,
    /// The upstream's pagination `Link` (already pointing at the client's name): a paged
    /// answer is served but not kept, since the pages after it would not be.
    link: Option<String>,
    source: Source,
}

/// The cache key's filter for a forwarded query: `Some(None)` for no query, `Some(Some(t))`
/// for exactly one well-formed `artifactType=t`; `None` when the answer is not cached.
fn cacheable_filter(query: &str) -> Option<Option<String>> {
    if query.is_empty() {
        return Some(None);
    }
    let value = query.strip_prefix("artifactType=")?;
    if value.contains('&') {
        return None;
    }
    let decoded = percent_decode(value)?;
    let ok = !decoded.is_empty()
        && decoded.len() <= MAX_ARTIFACT_TYPE_LEN
        && decoded.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(Some(decoded))
}

/// `%XX` decoded (Go clients escape `/` and `+` in a media type); `None` if malformed.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The tag schema's fallback tag for a subject: `<alg>-<hex>`, at most 128 characters.
pub(crate) fn fallback_tag(subject: &Digest) -> Result<Tag, MirrorError> {
    let text: String = format!("{}-{}", subject.algorithm().as_str(), subject.hex())
        .chars()
        .take(128)
        .collect();
    Tag::parse(&text).map_err(|e| MirrorError::internal(format!("fallback tag {text}: {e}")))
}

/// The descriptors a fallback index lists (none if it has no `manifests` array).
fn fallback_descriptors(bytes: &[u8]) -> Result<Vec<serde_json::Value>, MirrorError> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        MirrorError::UpstreamBadContent(format!("the referrers fallback index: {e}"))
    })?;
    Ok(match doc.get("manifests") {
        Some(serde_json::Value::Array(list)) => list.clone(),
        _ => Vec::new(),
    })
}

/// A referrer manifest's artifact type as the referrers API reports it: its
/// `artifactType`, else its config's media type.
fn artifact_type_of(manifest: &[u8]) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    doc.get("artifactType")
        .or_else(|| doc.get("config").and_then(|c| c.get("mediaType")))
        .and_then(|t| t.as_str())
        .map(str::to_owned)
}

/// The referrers index built from `descriptors`, keeping those of `filter`'s artifact type
/// when there is one. Descriptors are passed on as the client that pushed them wrote them
/// (annotations included), with the artifact type their manifest says.
fn synthesize(
    descriptors: Vec<serde_json::Value>,
    filter: Option<&str>,
) -> Result<Bytes, MirrorError> {
    let manifests: Vec<serde_json::Value> = descriptors
        .into_iter()
        .filter(|d| {
            filter.is_none_or(|f| d.get("artifactType").and_then(|t| t.as_str()) == Some(f))
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_INDEX,
        "manifests": manifests,
    });
    serde_json::to_vec(&index)
        .map(Bytes::from)
        .map_err(|e| MirrorError::internal(format!("encoding a referrers index: {e}")))
}

/// Referrer manifests read to learn their artifact type, per synthesized answer; any beyond
/// keep the type the fallback index gives them. A subject has a handful of referrers.
const MAX_ARTIFACT_TYPE_LOOKUPS: usize = 64;

impl Mirror {
    /// `GET /v2/<name>/referrers/<digest>`: from the index while fresh, else from the
    /// upstream's referrers API, else synthesized from the `sha256-<hex>` tag; stale when
    /// the upstream is down.
    pub async fn referrers(
        &self,
        target: &Target,
        digest: &Digest,
        query: &str,
    ) -> Result<PassthroughResponse, MirrorError> {
        let Some(filter) = cacheable_filter(query) else {
            let suffix = crate::with_query(&format!("referrers/{digest}"), query);
            return self
                .passthrough(
                    target,
                    &suffix,
                    Some(media_types::OCI_INDEX),
                    Wanted::Manifest,
                )
                .await;
        };
        let key = ReferrersKey {
            upstream: target.upstream_id().clone(),
            repo: target.repo.clone(),
            subject: digest.clone(),
            artifact_type: filter,
        };
        let tag = fallback_tag(digest)?;
        let cached = self.store.referrers(&key)?;
        if let Some(rec) = &cached {
            let fresh = self.config.tags.is_fresh(
                target.upstream_name(),
                target.repo.as_str(),
                tag.as_str(),
                rec.fetched_at,
                SystemTime::now(),
            );
            if fresh {
                Stats::inc(&self.stats.referrers_hits);
                return Ok(respond(rec.clone(), None));
            }
        }

        // Led here, not in a task of its own: the fallback goes through `self`'s manifest
        // path. A follower leads again if the leader's client goes away.
        let outcome = self
            .referrers_flights
            .run(key.clone(), || self.fetch_referrers(target, &key, &tag))
            .await;
        match outcome {
            Ok(f) => {
                let counter = match f.source {
                    Source::Stale => &self.stats.stale_served,
                    _ => &self.stats.referrers_misses,
                };
                Stats::inc(counter);
                Ok(respond(f.record, f.link))
            }
            Err(e) if e.allows_stale() => match cached {
                Some(rec) => {
                    Stats::inc(&self.stats.stale_served);
                    tracing::warn!(
                        upstream = target.upstream_name(),
                        repository = %target.repo,
                        subject = %digest,
                        error = %e,
                        "upstream unavailable; serving the cached referrers (stale)"
                    );
                    Ok(respond(rec, None))
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Ask the upstream's referrers API; on its 404 (no such API), build the answer from the
    /// fallback tag. Keeps what may be kept.
    async fn fetch_referrers(
        &self,
        target: &Target,
        key: &ReferrersKey,
        tag: &Tag,
    ) -> Result<Fetched, MirrorError> {
        let filter = key.artifact_type.as_deref();
        let mut suffix = format!("referrers/{}", key.subject);
        if let Some(f) = filter {
            suffix.push_str("?artifactType=");
            suffix.push_str(&encode_query_value(f));
        }
        let fetched = match self
            .passthrough_upstream(target, &suffix, Some(media_types::OCI_INDEX))
            .await
            .map_err(|e| PassthroughFailed::from((e, Wanted::Manifest)))
        {
            Ok(p) => {
                // Whatever we keep and serve again must at least be an image index.
                let info = pullgate_oci::ManifestInfo::parse(&p.body, Some(media_types::OCI_INDEX))
                    .map_err(|e| {
                        MirrorError::UpstreamBadContent(format!("upstream referrers: {e}"))
                    })?;
                if !media_types::is_index(&info.media_type) {
                    return Err(MirrorError::UpstreamBadContent(
                        "upstream referrers answer is not an image index".into(),
                    ));
                }
                Fetched {
                    record: ReferrersRecord {
                        body: p.body,
                        content_type: p.content_type,
                        filters_applied: p.filters_applied,
                        fetched_at: SystemTime::now(),
                    },
                    link: p.link,
                    source: Source::Miss,
                }
            }
            Err(PassthroughFailed::NotFound) => {
                self.synthesize_referrers(target, tag, filter).await?
            }
            Err(PassthroughFailed::Other(e)) => return Err(e),
        };
        if fetched.link.is_none() && fetched.source != Source::Stale {
            crate::tolerate_disk(self.store.put_referrers(key, &fetched.record))?;
        }
        Ok(fetched)
    }

    /// The answer from the fallback tag, read through the manifest-by-tag path (cached,
    /// revalidated, access-checked). A tag the upstream does not have is an empty list.
    async fn synthesize_referrers(
        &self,
        target: &Target,
        tag: &Tag,
        filter: Option<&str>,
    ) -> Result<Fetched, MirrorError> {
        let (fallback, source) = match self.manifest_by_tag(target, tag).await {
            Ok(m) if media_types::is_index(&m.media_type) => (Some(m.bytes), m.source),
            Ok(m) => {
                tracing::warn!(
                    upstream = target.upstream_name(),
                    repository = %target.repo,
                    tag = %tag,
                    media_type = %m.media_type,
                    "the referrers fallback tag is not an image index; no referrers listed"
                );
                (None, m.source)
            }
            Err(MirrorError::ManifestUnknown(_)) => (None, Source::Miss),
            Err(e) => return Err(e),
        };
        let descriptors = match fallback {
            Some(bytes) => {
                self.with_artifact_types(target, fallback_descriptors(&bytes)?)
                    .await?
            }
            None => Vec::new(),
        };
        Ok(Fetched {
            record: ReferrersRecord {
                body: synthesize(descriptors, filter)?,
                content_type: Some(media_types::OCI_INDEX.to_owned()),
                filters_applied: filter.map(|_| ARTIFACT_TYPE_FILTER.to_owned()),
                fetched_at: SystemTime::now(),
            },
            link: None,
            // A stale fallback tag makes a stale answer: served, not kept as fresh.
            source: match source {
                Source::Stale => Source::Stale,
                _ => Source::Miss,
            },
        })
    }
}

impl Mirror {
    /// Each descriptor's `artifactType` as its manifest says: the referrers API reports the
    /// manifest's `artifactType` (else its config's media type), and the fallback index's
    /// entry may differ (go-containerregistry writes the config's media type for a sigstore
    /// bundle). Read by digest through the mirror's own path: cached, access-checked.
    async fn with_artifact_types(
        &self,
        target: &Target,
        mut descriptors: Vec<serde_json::Value>,
    ) -> Result<Vec<serde_json::Value>, MirrorError> {
        for d in descriptors.iter_mut().take(MAX_ARTIFACT_TYPE_LOOKUPS) {
            let is_manifest = d
                .get("mediaType")
                .and_then(|t| t.as_str())
                .is_some_and(|t| !media_types::is_index(t));
            let digest = d
                .get("digest")
                .and_then(|v| v.as_str())
                .and_then(|v| Digest::parse(v).ok());
            let (true, Some(digest)) = (is_manifest, digest) else {
                continue;
            };
            let found = match self.manifest_by_digest(target, &digest).await {
                Ok(m) => artifact_type_of(&m.bytes),
                // Listed but gone: the entry stays as the index wrote it.
                Err(MirrorError::ManifestUnknown(_)) => None,
                Err(e) => return Err(e),
            };
            if let (Some(t), Some(obj)) = (found, d.as_object_mut()) {
                obj.insert("artifactType".into(), serde_json::Value::String(t));
            }
        }
        Ok(descriptors)
    }
}

/// Why a passthrough failed, with the upstream's 404 kept apart: for referrers it means
/// "no referrers API here", not "unknown".
pub(crate) enum PassthroughFailed {
    NotFound,
    Other(MirrorError),
}

impl From<(UpstreamError, Wanted)> for PassthroughFailed {
    fn from((e, wanted): (UpstreamError, Wanted)) -> Self {
        match e {
            UpstreamError::NotFound => PassthroughFailed::NotFound,
            e => PassthroughFailed::Other(MirrorError::from_upstream(e, wanted)),
        }
    }
}

/// A media type as a query value: unreserved characters as they are, the rest escaped.
fn encode_query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn respond(rec: ReferrersRecord, link: Option<String>) -> PassthroughResponse {
    PassthroughResponse {
        status: 200,
        content_type: rec
            .content_type
            .or_else(|| Some(media_types::OCI_INDEX.to_owned())),
        link,
        filters_applied: rec.filters_applied,
        body: rec.body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_and_artifact_type_queries_are_cached() {
        let cases = [
            ("", Some(None)),
            (
                "artifactType=application%2Fvnd.dev.cosign.simplesigning.v1%2Bjson",
                Some(Some(
                    "application/vnd.dev.cosign.simplesigning.v1+json".to_owned(),
                )),
            ),
            (
                "artifactType=application/spdx+json",
                Some(Some("application/spdx+json".into())),
            ),
            ("artifactType=", None),
            ("artifactType=a%2", None),
            ("artifactType=a%20b", None),
            ("n=10", None),
            ("artifactType=a&n=1", None),
            ("n=1&artifactType=a", None),
        ];
        for (q, want) in cases {
            assert_eq!(cacheable_filter(q), want, "{q:?}");
        }
        let long = format!("artifactType={}", "a".repeat(MAX_ARTIFACT_TYPE_LEN + 1));
        assert_eq!(cacheable_filter(&long), None);
        assert_eq!(
            encode_query_value("application/vnd.x+json"),
            "application%2Fvnd.x%2Bjson"
        );
    }

    #[test]
    fn the_fallback_tag_is_the_tag_schema() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(
            fallback_tag(&d).unwrap().as_str(),
            format!("sha256-{}", d.hex())
        );
    }

    #[test]
    fn synthesized_answers_filter_by_artifact_type() {
        let fallback = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"artifactType":"application/spdx+json","annotations":{"k":"v"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":2,"artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json"},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:cc","size":3}
        ]}"#;
        let all: serde_json::Value = serde_json::from_slice(
            &synthesize(fallback_descriptors(fallback).unwrap(), None).unwrap(),
        )
        .unwrap();
        assert_eq!(all["mediaType"], media_types::OCI_INDEX);
        assert_eq!(all["manifests"].as_array().unwrap().len(), 3);
        assert_eq!(all["manifests"][0]["annotations"]["k"], "v");
        let sboms: serde_json::Value = serde_json::from_slice(
            &synthesize(
                fallback_descriptors(fallback).unwrap(),
                Some("application/spdx+json"),
            )
            .unwrap(),
        )
        .unwrap();
        let list = sboms["manifests"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["digest"], "sha256:aa");
        let none: serde_json::Value =
            serde_json::from_slice(&synthesize(Vec::new(), Some("x/y")).unwrap()).unwrap();
        assert_eq!(none["manifests"], serde_json::json!([]));
        assert!(fallback_descriptors(b"not json").is_err());
        assert_eq!(
            fallback_descriptors(b"{}").unwrap(),
            Vec::<serde_json::Value>::new()
        );
        assert_eq!(
            artifact_type_of(br#"{"artifactType":"a/b","config":{"mediaType":"c/d"}}"#).as_deref(),
            Some("a/b")
        );
        assert_eq!(
            artifact_type_of(br#"{"config":{"mediaType":"c/d"}}"#).as_deref(),
            Some("c/d")
        );
        assert_eq!(artifact_type_of(b"[]"), None);
    }
}
