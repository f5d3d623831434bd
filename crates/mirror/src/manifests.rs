//! Manifests: by digest from the store (or one upstream GET), by tag through the index
//! with freshness, revalidation and stale serving.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use pullgate_oci::{
    media_types, AcceptList, Digest, ManifestInfo, Reference, RepoName, Tag, MANIFEST_SIZE_LIMIT,
};
use pullgate_store::{Origin, Store, TagKey, TagRecord};
use pullgate_upstream::{ErrorKind, Upstream};

use crate::error::{MirrorError, Wanted};
use crate::policy::PolicyDecision;
use crate::stats::Stats;
use crate::{Mirror, Source, Target};

/// A manifest ready to serve: its exact bytes, as the upstream sent them.
#[derive(Debug, Clone)]
pub struct ManifestResponse {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
    pub source: Source,
    /// What the trust policy decided (`None` without `[trust]`).
    pub policy: Option<std::sync::Arc<PolicyDecision>>,
}

/// A manifest in the store, with its bytes as read or fetched: the answer is built from
/// these, never from a second read that eviction could have raced.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    digest: Digest,
    media_type: String,
    bytes: Bytes,
}

impl Stored {
    fn respond(self, source: Source) -> ManifestResponse {
        ManifestResponse {
            bytes: self.bytes,
            media_type: self.media_type,
            digest: self.digest,
            source,
            policy: None,
        }
    }
}

impl Mirror {
    /// `GET|HEAD /v2/<name>/manifests/<reference>`: the manifest, judged by the trust
    /// policy after the access check (a denial is `PolicyDenied`).
    pub async fn manifest(
        &self,
        target: &Target,
        reference: &Reference,
        accept: &AcceptList,
    ) -> Result<ManifestResponse, MirrorError> {
        let mut found = match reference {
            Reference::Digest(d) => self.manifest_by_digest(target, d).await?,
            Reference::Tag(t) => self.manifest_by_tag(target, t).await?,
        };
        found.policy = self.judge(target, &found).await?;
        // A manifest served counts as a pull of what the client named (`pullgate cache
        // top`): in memory, written in batches by the store.
        let served = || {
            self.store
                .count_pull(target.upstream_id(), &target.repo, reference)
        };
        if accept.accepts(&found.media_type) {
            served();
            return Ok(found);
        }
        // A client that cannot read an index gets the linux/amd64 image, as Distribution
        // does for manifest lists; anything else it cannot read is unknown to it. The
        // child is fetched through the index, which has passed: its lineage is recorded.
        if media_types::is_index(&found.media_type) {
            let info = ManifestInfo::parse(&found.bytes, Some(&found.media_type))
                .map_err(|e| MirrorError::UpstreamBadContent(e.to_string()))?;
            if let Some(child) = info.platform_manifest("linux", "amd64") {
                if accept.accepts(&child.media_type) {
                    let mut child = self.manifest_by_digest(target, &child.digest).await?;
                    if accept.accepts(&child.media_type) {
                        child.policy = self.judge(target, &child).await?;
                        served();
                        return Ok(child);
                    }
                }
            }
        }
        Err(MirrorError::ManifestUnknown(format!(
            "the manifest is {}, which the request's Accept header does not allow",
            found.media_type
        )))
    }

    /// A manifest by digest, access-checked but not judged: the trust policy's own
    /// fetches of signature artifacts come here.
    pub(crate) async fn manifest_by_digest(
        &self,
        target: &Target,
        digest: &Digest,
    ) -> Result<ManifestResponse, MirrorError> {
        if let Some(found) = self.cached_manifest(digest, Source::Hit).await? {
            self.ensure_access(target, digest, Wanted::Manifest).await?;
            Stats::inc(&self.stats.manifest_hits);
            return Ok(found);
        }
        self.negative.check(target, digest, Wanted::Manifest)?;
        Stats::inc(&self.stats.manifest_misses);
        let key = (
            target.upstream_id().clone(),
            target.repo.clone(),
            digest.clone(),
        );
        let (upstream, store, repo, d) = (
            Arc::clone(&target.upstream),
            self.store.clone(),
            target.repo.clone(),
            digest.clone(),
        );
        let stored = self
            .manifest_flights
            .spawn(key, move || async move {
                fetch_manifest(
                    &upstream,
                    &store,
                    &repo,
                    &Reference::Digest(d.clone()),
                    Some(&d),
                )
                .await
            })
            .await?
            .inspect_err(|e| self.negative.note(target, digest, e))?;
        Ok(stored.respond(Source::Miss))
    }

    /// A manifest by tag, not judged (see [`Mirror::manifest_by_digest`]).
    pub(crate) async fn manifest_by_tag(
        &self,
        target: &Target,
        tag: &Tag,
    ) -> Result<ManifestResponse, MirrorError> {
        let key = TagKey {
            upstream: target.upstream_id().clone(),
            repo: target.repo.clone(),
            tag: tag.clone(),
        };
        let record = self.store.tag(&key)?;
        if let Some(rec) = &record {
            let fresh = self.config.tags.is_fresh(
                target.upstream_name(),
                target.repo.as_str(),
                tag.as_str(),
                rec.fetched_at,
                SystemTime::now(),
            );
            if fresh {
                if let Some(found) = self.cached_manifest(&rec.digest, Source::Hit).await? {
                    Stats::inc(&self.stats.manifest_hits);
                    return Ok(found);
                }
            }
        }

        let known = record.as_ref().map(|r| r.digest.clone());
        let (upstream, store, repo, t) = (
            Arc::clone(&target.upstream),
            self.store.clone(),
            target.repo.clone(),
            tag.clone(),
        );
        let k = key.clone();
        let outcome = self
            .tag_flights
            .spawn(key, move || async move {
                revalidate(&upstream, &store, &k, &repo, &t, known).await
            })
            .await?;

        match outcome {
            Ok((stored, source)) => {
                let counter = match source {
                    Source::Miss => &self.stats.manifest_misses,
                    _ => &self.stats.manifest_hits,
                };
                Stats::inc(counter);
                Ok(stored.respond(source))
            }
            Err(e) if e.allows_stale() => {
                let stale = match &record {
                    Some(rec) => self.cached_manifest(&rec.digest, Source::Stale).await?,
                    None => None,
                };
                match stale {
                    Some(found) => {
                        Stats::inc(&self.stats.stale_served);
                        tracing::warn!(
                            upstream = target.upstream_name(),
                            repository = %target.repo,
                            tag = %tag,
                            error = %e,
                            "upstream unavailable; serving the cached tag (stale)"
                        );
                        Ok(found)
                    }
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A signature tag (`.sig`, `.att`, a referrers fallback index) for the trust policy:
    /// like any tag once the index holds it; its first fetch is a single GET by tag rather
    /// than a HEAD and then a GET, since such material is usually new or absent. Not judged.
    pub(crate) async fn artifact_tag(
        &self,
        target: &Target,
        tag: &Tag,
    ) -> Result<ManifestResponse, MirrorError> {
        let key = TagKey {
            upstream: target.upstream_id().clone(),
            repo: target.repo.clone(),
            tag: tag.clone(),
        };
        if self.store.tag(&key)?.is_some() {
            return self.manifest_by_tag(target, tag).await;
        }
        let (upstream, store, repo, t) = (
            Arc::clone(&target.upstream),
            self.store.clone(),
            target.repo.clone(),
            tag.clone(),
        );
        let k = key.clone();
        let (stored, source) = self
            .tag_flights
            .spawn(key, move || async move {
                let stored =
                    fetch_manifest(&upstream, &store, &repo, &Reference::Tag(t), None).await?;
                record_tag(&store, &k, &stored)?;
                Ok((stored, Source::Miss))
            })
            .await??;
        Stats::inc(&self.stats.manifest_misses);
        Ok(stored.respond(source))
    }

    async fn cached_manifest(
        &self,
        digest: &Digest,
        source: Source,
    ) -> Result<Option<ManifestResponse>, MirrorError> {
        let Some(bytes) = self.store.read_small(digest, MANIFEST_SIZE_LIMIT).await? else {
            return Ok(None);
        };
        let media_type = match self.store.manifest_media_type(digest)? {
            Some(m) => m,
            // The index can be rebuilt from the files; the document then says what it is.
            None => ManifestInfo::parse(&bytes, None)
                .map(|i| i.media_type)
                .unwrap_or_else(|_| media_types::OCI_MANIFEST.to_owned()),
        };
        self.store.touch(digest, bytes.len() as u64);
        Ok(Some(ManifestResponse {
            bytes,
            media_type,
            digest: digest.clone(),
            source,
            policy: None,
        }))
    }
}

/// Ask the upstream what the tag points at now (HEAD: cheap, and not counted against
/// Docker Hub's pull limit); fetch only a digest we do not hold.
async fn revalidate(
    upstream: &Upstream,
    store: &Store,
    key: &TagKey,
    repo: &RepoName,
    tag: &Tag,
    known: Option<Digest>,
) -> Result<(Stored, Source), MirrorError> {
    let reference = Reference::Tag(tag.clone());
    let head = upstream
        .head_manifest(repo, &reference)
        .await
        .map_err(|e| MirrorError::from_upstream(e, Wanted::Manifest))?;

    // A stored copy answers the tag only if this upstream served those bytes before: its
    // HEAD naming a digest another upstream's content has is no proof it holds them.
    let reusable = match &head.digest {
        Some(d) if store.has_origin(d, upstream.id())? => stored_manifest(store, d).await?,
        _ => None,
    };
    let (stored, source) = match head.digest {
        Some(d) => match reusable {
            Some(stored) => {
                let source = if known.as_ref() == Some(&d) {
                    Source::Hit
                } else {
                    Source::Miss
                };
                crate::tolerate_disk(store.link(upstream.id(), repo, &d))?;
                (stored, source)
            }
            None => (
                fetch_manifest(
                    upstream,
                    store,
                    repo,
                    &Reference::Digest(d.clone()),
                    Some(&d),
                )
                .await?,
                Source::Miss,
            ),
        },
        // Some registries answer HEAD without a digest: fetch by tag and hash it ourselves.
        None => (
            fetch_manifest(upstream, store, repo, &reference, None).await?,
            Source::Miss,
        ),
    };
    record_tag(store, key, &stored)?;
    Ok((stored, source))
}

/// The tag now points at `stored`, as of now.
fn record_tag(store: &Store, key: &TagKey, stored: &Stored) -> Result<(), MirrorError> {
    crate::tolerate_disk(store.put_tag(
        key,
        &TagRecord {
            digest: stored.digest.clone(),
            media_type: stored.media_type.clone(),
            size: stored.bytes.len() as u64,
            fetched_at: SystemTime::now(),
        },
    ))?;
    Ok(())
}

/// The manifest if the store holds it with a known media type (else it is fetched again).
async fn stored_manifest(store: &Store, digest: &Digest) -> Result<Option<Stored>, MirrorError> {
    let Some(media_type) = store.manifest_media_type(digest)? else {
        return Ok(None);
    };
    let Some(bytes) = store.read_small(digest, MANIFEST_SIZE_LIMIT).await? else {
        return Ok(None);
    };
    store.touch(digest, bytes.len() as u64);
    Ok(Some(Stored {
        digest: digest.clone(),
        media_type,
        bytes,
    }))
}

/// GET a manifest whole (bounded), verify it, commit it, link it to the repository.
async fn fetch_manifest(
    upstream: &Upstream,
    store: &Store,
    repo: &RepoName,
    reference: &Reference,
    expected: Option<&Digest>,
) -> Result<Stored, MirrorError> {
    let m = upstream
        .get_manifest(repo, reference, MANIFEST_SIZE_LIMIT)
        .await
        .map_err(|e| MirrorError::from_upstream(e, Wanted::Manifest))?;

    // The digest we were asked for, else the one the upstream claims, else our own hash;
    // whichever it is, the store checks the bytes against it as it commits them.
    let digest = match (expected, &m.digest) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => Digest::sha256_of(&m.bytes),
    };
    let info = ManifestInfo::parse(&m.bytes, m.media_type.as_deref()).map_err(|e| {
        upstream.errors().record(ErrorKind::Invalid);
        MirrorError::UpstreamBadContent(format!("upstream manifest: {e}"))
    })?;
    // Serve the Content-Type the upstream sent (parameters already dropped) when it is a
    // manifest type: clients compare it.
    let media_type = m
        .media_type
        .filter(|t| media_types::ALL_MANIFESTS.contains(&t.as_str()))
        .unwrap_or(info.media_type);
    // A mismatch is the store's DigestMismatch, which is the upstream's fault: 502. The
    // bytes are hashed before anything is written, so a disk that refuses them has still
    // let them be verified: they are served from memory, uncached.
    let origin = Origin {
        upstream: upstream.id().clone(),
        repo: repo.clone(),
    };
    match store
        .put_verified(&digest, m.bytes.clone(), Some(&media_type), Some(origin))
        .await
    {
        Err(e) if e.is_disk_trouble() => store.disk().note_bypass(),
        other => other.inspect_err(|e| crate::stats::note_bad_content(upstream, e))?,
    }
    Ok(Stored {
        digest,
        media_type,
        bytes: m.bytes,
    })
}
