//! Who may see a stored digest under a repository's name: the one check every path that
//! serves stored content runs (hits, blobs committed while a fill started, fills of other
//! repositories joined, manifests by digest).
//!
//! The cache is shared by repositories and upstreams. A digest is visible under
//! (upstream, repository) when:
//! - the index links them: that upstream served it for that repository, or confirmed it
//!   as below; or
//! - the upstream is one that served these bytes before (an *origin*), and a `HEAD` with
//!   the repository's scope confirms the repository holds them; or
//! - any other upstream proves possession: a `GET` whose body hashes to the digest. A
//!   `HEAD` from an upstream that never served the bytes proves nothing: one that answers
//!   yes to everything would otherwise unlock every other upstream's private content.

use futures_util::StreamExt;
use pullgate_oci::{Digest, Hasher, Reference, UpstreamId, MANIFEST_SIZE_LIMIT};

use crate::error::{MirrorError, Wanted};
use crate::stats::Stats;
use crate::{tolerate_disk, Mirror, Target};

impl Mirror {
    /// May this target's repository see the stored `digest`? Records the answer (a link)
    /// when the upstream vouched for it.
    pub(crate) async fn ensure_access(
        &self,
        target: &Target,
        digest: &Digest,
        wanted: Wanted,
    ) -> Result<(), MirrorError> {
        let upstream = target.upstream_id();
        if self.store.is_linked(upstream, &target.repo, digest)? {
            return Ok(());
        }
        self.negative.check(target, digest, wanted)?;
        if self.store.has_origin(digest, upstream)? {
            self.confirm_by_head(target, digest, wanted).await?;
        } else {
            self.prove_possession(target, digest, wanted).await?;
            tolerate_disk(self.store.record_origin(digest, upstream))?;
        }
        tolerate_disk(self.store.link(upstream, &target.repo, digest))?;
        Ok(())
    }

    /// May this target follow a fill of `digest` that another (upstream, repository)
    /// started from `fill_upstream`? Nothing is linked: the bytes are not stored yet, and
    /// the next request checks them as stored content.
    pub(crate) async fn may_follow(
        &self,
        target: &Target,
        digest: &Digest,
        fill_upstream: &UpstreamId,
    ) -> Result<(), MirrorError> {
        let upstream = target.upstream_id();
        if self.store.is_linked(upstream, &target.repo, digest)? {
            return Ok(());
        }
        self.negative.check(target, digest, Wanted::Blob)?;
        if fill_upstream == upstream {
            // The bytes come from this very upstream; it says this repository holds them.
            self.confirm_by_head(target, digest, Wanted::Blob).await
        } else {
            self.prove_possession(target, digest, Wanted::Blob).await
        }
    }

    async fn confirm_by_head(
        &self,
        target: &Target,
        digest: &Digest,
        wanted: Wanted,
    ) -> Result<(), MirrorError> {
        let confirmed = match wanted {
            Wanted::Blob => target
                .upstream
                .head_blob(&target.repo, digest)
                .await
                .map(|_| ()),
            _ => target
                .upstream
                .head_manifest(&target.repo, &Reference::Digest(digest.clone()))
                .await
                .map(|_| ()),
        };
        confirmed.map_err(|e| self.note_unknown(target, digest, e, wanted))
    }

    /// The upstream serves bytes that hash to `digest` under this repository: the only
    /// word taken from an upstream that never served them to us. Costs one download of
    /// the content (bounded by the upstream's `max_blob_size`), read and dropped as it is
    /// hashed.
    async fn prove_possession(
        &self,
        target: &Target,
        digest: &Digest,
        wanted: Wanted,
    ) -> Result<(), MirrorError> {
        let key = (
            target.upstream_id().clone(),
            target.repo.clone(),
            digest.clone(),
            matches!(wanted, Wanted::Blob),
        );
        self.proofs
            .run(key, || self.prove_possession_once(target, digest, wanted))
            .await
    }

    async fn prove_possession_once(
        &self,
        target: &Target,
        digest: &Digest,
        wanted: Wanted,
    ) -> Result<(), MirrorError> {
        Stats::inc(&self.stats.possession_proofs);
        let mut hasher = Hasher::new(digest.algorithm());
        match wanted {
            Wanted::Blob => {
                let download = target
                    .upstream
                    .get_blob(&target.repo, digest)
                    .await
                    .map_err(|e| self.note_unknown(target, digest, e, wanted))?;
                // The upstream client bounds the body by `max_blob_size`.
                let mut stream = download.stream;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| MirrorError::from_upstream(e, wanted))?;
                    hasher.update(&chunk);
                }
            }
            _ => {
                let m = target
                    .upstream
                    .get_manifest(
                        &target.repo,
                        &Reference::Digest(digest.clone()),
                        MANIFEST_SIZE_LIMIT,
                    )
                    .await
                    .map_err(|e| self.note_unknown(target, digest, e, wanted))?;
                hasher.update(&m.bytes);
            }
        }
        if &hasher.finish() != digest {
            target
                .upstream
                .errors()
                .record(pullgate_upstream::ErrorKind::Invalid);
            tracing::warn!(
                upstream = target.upstream_name(),
                repository = %target.repo,
                %digest,
                "the upstream's content for a cached digest does not hash to it; access refused"
            );
            return Err(MirrorError::UpstreamBadContent(
                "the upstream's content does not match its digest".into(),
            ));
        }
        Ok(())
    }

    /// An upstream error for `digest` under `target`, remembered for a moment if the
    /// upstream called the digest unknown.
    pub(crate) fn note_unknown(
        &self,
        target: &Target,
        digest: &Digest,
        e: pullgate_upstream::UpstreamError,
        wanted: Wanted,
    ) -> MirrorError {
        let e = MirrorError::from_upstream(e, wanted);
        self.negative.note(target, digest, &e);
        e
    }
}
