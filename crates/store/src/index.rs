//! The sled index: tags, repository→digest links, and per-blob records. Files on disk are
//! the truth for bytes; the index only says what they are and who may see them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use pullgate_oci::{Digest, Reference, RepoName, Tag, UpstreamId};
use serde::{Deserialize, Serialize};

use crate::pulls::{Pending, PullRecord};
use crate::StoreError;

/// A tag of one repository on one upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagKey {
    pub upstream: UpstreamId,
    pub repo: RepoName,
    pub tag: Tag,
}

/// What a tag pointed at when it was last fetched or revalidated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub fetched_at: SystemTime,
}

/// A referrers answer of one repository on one upstream: for a subject digest, with the
/// client's `artifactType` filter (`None`: unfiltered). Each is an answer of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReferrersKey {
    pub upstream: UpstreamId,
    pub repo: RepoName,
    pub subject: Digest,
    pub artifact_type: Option<String>,
}

/// A referrers answer as the upstream gave it (or as it was synthesized from the
/// `sha256-<hex>` tag), and when. The body is the upstream's JSON, not content-addressed,
/// so it is kept here like a tag rather than as a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferrersRecord {
    pub body: bytes::Bytes,
    pub content_type: Option<String>,
    /// `OCI-Filters-Applied`, kept so a cached filtered answer says so again.
    pub filters_applied: Option<String>,
    pub fetched_at: SystemTime,
}

/// Largest referrers body kept: the manifest limit, which an image index also is.
pub const MAX_REFERRERS_BODY: usize = pullgate_oci::MANIFEST_SIZE_LIMIT;
/// Longest `artifactType` filter in a key: media types are short (RFC 6838: 127 + 127).
pub const MAX_ARTIFACT_TYPE_LEN: usize = 255;
/// Referrers answers kept at most; one more replaces the first in key order, which costs
/// that one a refetch and nothing else.
pub const MAX_REFERRERS_RECORDS: usize = 16_384;

#[derive(Serialize, Deserialize)]
struct ReferrersHead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filters_applied: Option<String>,
    fetched_at_ms: u64,
}

/// A repository→digest link as stored: `digest` is `None` if the key does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkParts {
    pub upstream: String,
    pub repo: String,
    pub digest: Option<Digest>,
}

/// What the index knows about one committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    pub size: u64,
    /// Set for manifests.
    pub media_type: Option<String>,
    pub last_access: SystemTime,
    /// The upstreams that served these bytes to us (a GET that hashed to the digest).
    pub origins: Vec<String>,
}

/// Upstreams remembered per blob at most; a mirror has a handful configured.
const MAX_ORIGINS: usize = 32;

#[derive(Serialize, Deserialize)]
struct TagValue {
    digest: String,
    media_type: String,
    size: u64,
    fetched_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct BlobValue {
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    /// Kept beside `last_access_ms` so an older pullgate can still read the record.
    last_access_s: u64,
    /// Milliseconds order blobs committed within the same second for eviction; records
    /// written before it existed have only seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_access_ms: Option<u64>,
    /// Which upstreams proved they hold these bytes by serving them. A record written
    /// before this existed has none, and each upstream must prove itself again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    origins: Vec<String>,
}

impl BlobValue {
    fn new(size: u64, media_type: Option<String>, at_ms: u64, origins: Vec<String>) -> BlobValue {
        BlobValue {
            size,
            media_type,
            last_access_s: at_ms / 1000,
            last_access_ms: Some(at_ms),
            origins,
        }
    }

    fn last_access_ms(&self) -> u64 {
        self.last_access_ms
            .unwrap_or(self.last_access_s.saturating_mul(1000))
    }

    fn record(self) -> BlobRecord {
        BlobRecord {
            size: self.size,
            last_access: UNIX_EPOCH + Duration::from_millis(self.last_access_ms()),
            media_type: self.media_type,
            origins: self.origins,
        }
    }
}

/// Access times are coarse on purpose: a hit rewrites its record at most this often, so
/// eviction's order is least recently used to within this.
const TOUCH_GRANULARITY_MS: u64 = 60_000;

pub(crate) struct Index {
    db: sled::Db,
    tags: sled::Tree,
    links: sled::Tree,
    blobs: sled::Tree,
    /// Manifest pulls per (upstream, repository, reference): see `pulls.rs`.
    pulls: sled::Tree,
    /// Records in `pulls`, counted at open and kept as records come and go (sled's `len`
    /// walks the tree).
    pull_records: AtomicU64,
    /// Referrers answers per (upstream, repository, subject, artifactType filter).
    referrers: sled::Tree,
}

#[derive(Serialize, Deserialize)]
struct PullValue {
    pulls: u64,
    last_ms: u64,
}

/// The key of a pull counter. A reference with a `:` is a digest (tags cannot hold one).
pub(crate) fn pull_key(upstream: &UpstreamId, repo: &RepoName, reference: &Reference) -> Vec<u8> {
    key(&[upstream.as_str(), repo.as_str(), &reference.to_string()])
}

fn parse_pull(k: &[u8], v: &[u8]) -> Option<PullRecord> {
    let text = std::str::from_utf8(k).ok()?;
    let mut parts = text.splitn(3, '\0');
    let upstream = UpstreamId::parse(parts.next()?).ok()?;
    let repo = RepoName::parse(parts.next()?).ok()?;
    let reference = Reference::parse(parts.next()?).ok()?;
    let v: PullValue = decode(v).ok()?;
    Some(PullRecord {
        upstream,
        repo,
        reference,
        pulls: v.pulls,
        last_pulled: crate::pulls::time(v.last_ms),
    })
}

// `\0` cannot occur in upstream names, repository names, tags or digests, so joined keys
// are unambiguous.
fn key(parts: &[&str]) -> Vec<u8> {
    parts.join("\0").into_bytes()
}

pub(crate) fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

fn decode<T: for<'de> Deserialize<'de>>(v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Index(format!("bad record: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Index(format!("encoding a record: {e}")))
}

impl Index {
    pub(crate) fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(16 * 1024 * 1024)
            .open()?;
        let pulls = db.open_tree("pulls")?;
        Ok(Index {
            tags: db.open_tree("tags")?,
            links: db.open_tree("links")?,
            blobs: db.open_tree("blobs")?,
            pull_records: AtomicU64::new(pulls.len() as u64),
            pulls,
            referrers: db.open_tree("referrers")?,
            db,
        })
    }

    /// Add gathered pull counts to their records (made if new), then trim the tree back
    /// under its bound if it grew past it.
    pub(crate) fn add_pulls(&self, counts: HashMap<Vec<u8>, Pending>) -> Result<(), StoreError> {
        for (k, add) in counts {
            // An atomic read-modify-write per key: two writers (a due flush racing a
            // shutdown flush) never lose each other's counts.
            let mut fresh = false;
            self.pulls.update_and_fetch(&k, |old| {
                let old = old.and_then(|v| decode::<PullValue>(v).ok());
                fresh = old.is_none();
                let (pulls, last_ms) = old.map_or((0, 0), |o| (o.pulls, o.last_ms));
                encode(&PullValue {
                    pulls: pulls.saturating_add(add.pulls),
                    last_ms: last_ms.max(add.last_ms),
                })
                .ok()
            })?;
            if fresh {
                self.pull_records.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.pull_records.load(Ordering::Relaxed) > crate::pulls::MAX_RECORDS {
            self.trim_pulls(crate::pulls::trim_to())?;
        }
        Ok(())
    }

    /// Drop the least recently pulled records until `keep` are left.
    pub(crate) fn trim_pulls(&self, keep: u64) -> Result<(), StoreError> {
        let mut all = Vec::new();
        for kv in self.pulls.iter() {
            let (k, v) = kv?;
            let last = decode::<PullValue>(&v).map_or(0, |v| v.last_ms);
            all.push((last, k));
        }
        let drop = all.len().saturating_sub(keep as usize);
        if drop > 0 {
            all.select_nth_unstable_by_key(drop - 1, |(last, _)| *last);
            for (_, k) in &all[..drop] {
                self.pulls.remove(k)?;
            }
        }
        self.pull_records
            .store(all.len().min(keep as usize) as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Every pull record, in key order; records that do not parse are skipped.
    pub(crate) fn pulls(&self) -> impl Iterator<Item = Result<PullRecord, StoreError>> + '_ {
        self.pulls.iter().filter_map(|kv| match kv {
            Ok((k, v)) => parse_pull(&k, &v).map(Ok),
            Err(e) => Some(Err(e.into())),
        })
    }

    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    pub(crate) fn tag(&self, k: &TagKey) -> Result<Option<TagRecord>, StoreError> {
        let Some(v) =
            self.tags
                .get(key(&[k.upstream.as_str(), k.repo.as_str(), k.tag.as_str()]))?
        else {
            return Ok(None);
        };
        let v: TagValue = decode(&v)?;
        let Ok(digest) = Digest::parse(&v.digest) else {
            return Ok(None);
        };
        Ok(Some(TagRecord {
            digest,
            media_type: v.media_type,
            size: v.size,
            fetched_at: UNIX_EPOCH + Duration::from_millis(v.fetched_at_ms),
        }))
    }

    pub(crate) fn put_tag(&self, k: &TagKey, r: &TagRecord) -> Result<(), StoreError> {
        let v = encode(&TagValue {
            digest: r.digest.to_string(),
            media_type: r.media_type.clone(),
            size: r.size,
            fetched_at_ms: to_ms(r.fetched_at),
        })?;
        self.tags.insert(
            key(&[k.upstream.as_str(), k.repo.as_str(), k.tag.as_str()]),
            v,
        )?;
        Ok(())
    }

    fn referrers_key(k: &ReferrersKey) -> Result<Vec<u8>, StoreError> {
        let filter = k.artifact_type.as_deref().unwrap_or("");
        if filter.len() > MAX_ARTIFACT_TYPE_LEN || filter.contains('\0') {
            return Err(StoreError::Index(
                "an artifactType filter must be a short media type".into(),
            ));
        }
        Ok(key(&[
            k.upstream.as_str(),
            k.repo.as_str(),
            &k.subject.to_string(),
            filter,
        ]))
    }

    pub(crate) fn referrers(
        &self,
        k: &ReferrersKey,
    ) -> Result<Option<ReferrersRecord>, StoreError> {
        let Some(v) = self.referrers.get(Self::referrers_key(k)?)? else {
            return Ok(None);
        };
        // [u32 LE length of the head][head JSON][body]: the body is stored as it came,
        // not escaped into a JSON string.
        let bad = || StoreError::Index("bad referrers record".into());
        let head_len = v
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .ok_or_else(bad)? as usize;
        let head = v.get(4..4 + head_len).ok_or_else(bad)?;
        let head: ReferrersHead = decode(head)?;
        Ok(Some(ReferrersRecord {
            body: bytes::Bytes::copy_from_slice(&v[4 + head_len..]),
            content_type: head.content_type,
            filters_applied: head.filters_applied,
            fetched_at: UNIX_EPOCH + Duration::from_millis(head.fetched_at_ms),
        }))
    }

    pub(crate) fn put_referrers(
        &self,
        k: &ReferrersKey,
        r: &ReferrersRecord,
    ) -> Result<(), StoreError> {
        if r.body.len() > MAX_REFERRERS_BODY {
            return Err(StoreError::TooLarge {
                size: r.body.len() as u64,
                limit: MAX_REFERRERS_BODY as u64,
            });
        }
        let head = encode(&ReferrersHead {
            content_type: r.content_type.clone(),
            filters_applied: r.filters_applied.clone(),
            fetched_at_ms: to_ms(r.fetched_at),
        })?;
        let head_len = u32::try_from(head.len())
            .map_err(|_| StoreError::Index("referrers record head too long".into()))?;
        let mut v = Vec::with_capacity(4 + head.len() + r.body.len());
        v.extend_from_slice(&head_len.to_le_bytes());
        v.extend_from_slice(&head);
        v.extend_from_slice(&r.body);
        let k = Self::referrers_key(k)?;
        if self.referrers.len() >= MAX_REFERRERS_RECORDS && !self.referrers.contains_key(&k)? {
            if let Some((first, _)) = self.referrers.first()? {
                self.referrers.remove(first)?;
            }
        }
        self.referrers.insert(k, v)?;
        Ok(())
    }

    pub(crate) fn referrers_count(&self) -> usize {
        self.referrers.len()
    }

    pub(crate) fn link(
        &self,
        upstream: &UpstreamId,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<(), StoreError> {
        let k = key(&[upstream.as_str(), repo.as_str(), &d.to_string()]);
        if !self.links.contains_key(&k)? {
            self.links.insert(k, &[])?;
        }
        Ok(())
    }

    pub(crate) fn is_linked(
        &self,
        upstream: &UpstreamId,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<bool, StoreError> {
        Ok(self
            .links
            .contains_key(key(&[upstream.as_str(), repo.as_str(), &d.to_string()]))?)
    }

    /// Remember that `upstream` served the bytes of `d`. A blob with no record yet (its
    /// commit is still being indexed, or it was just evicted) is left alone: the origin
    /// is then simply not known, which only ever costs a proof, never grants access.
    pub(crate) fn add_origin(&self, d: &Digest, upstream: &UpstreamId) -> Result<(), StoreError> {
        let k = d.to_string();
        loop {
            let Some(old) = self.blobs.get(&k)? else {
                return Ok(());
            };
            let mut v: BlobValue = decode(&old)?;
            if v.origins.iter().any(|o| o == upstream.as_str()) || v.origins.len() >= MAX_ORIGINS {
                return Ok(());
            }
            v.origins.push(upstream.as_str().to_owned());
            match self
                .blobs
                .compare_and_swap(&k, Some(old), Some(encode(&v)?))?
            {
                Ok(()) => return Ok(()),
                Err(_) => continue,
            }
        }
    }

    pub(crate) fn has_origin(&self, d: &Digest, upstream: &UpstreamId) -> Result<bool, StoreError> {
        let Some(v) = self.blobs.get(d.to_string())? else {
            return Ok(false);
        };
        Ok(decode::<BlobValue>(&v)?
            .origins
            .iter()
            .any(|o| o == upstream.as_str()))
    }

    pub(crate) fn blob(&self, d: &Digest) -> Result<Option<BlobRecord>, StoreError> {
        let Some(v) = self.blobs.get(d.to_string())? else {
            return Ok(None);
        };
        Ok(Some(decode::<BlobValue>(&v)?.record()))
    }

    /// Every blob record, in digest order. A key that is not a digest, or a record that does
    /// not decode, comes back as `Err(key)` so repair can drop it.
    pub(crate) fn blobs(
        &self,
    ) -> impl Iterator<Item = Result<Result<(Digest, BlobRecord), String>, StoreError>> + '_ {
        self.blobs.iter().map(|kv| {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let parsed = Digest::parse(&key).ok().zip(decode::<BlobValue>(&v).ok());
            Ok(match parsed {
                Some((d, v)) => Ok((d, v.record())),
                None => Err(key),
            })
        })
    }

    pub(crate) fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// Drop a record whose key is not a digest (found by [`Index::blobs`]).
    pub(crate) fn remove_raw_blob_key(&self, key: &str) -> Result<(), StoreError> {
        self.blobs.remove(key.as_bytes())?;
        Ok(())
    }

    /// Every tag, as (key parts joined, digest it points at); unreadable tags have no digest.
    pub(crate) fn tags(
        &self,
    ) -> impl Iterator<Item = Result<(sled::IVec, Option<Digest>), StoreError>> + '_ {
        self.tags.iter().map(|kv| {
            let (k, v) = kv?;
            let digest = decode::<TagValue>(&v)
                .ok()
                .and_then(|t| Digest::parse(&t.digest).ok());
            Ok((k, digest))
        })
    }

    pub(crate) fn remove_tag_key(&self, key: &[u8]) -> Result<(), StoreError> {
        self.tags.remove(key)?;
        Ok(())
    }

    /// Every link as (upstream, repository, digest) text, with its raw key.
    pub(crate) fn links(
        &self,
    ) -> impl Iterator<Item = Result<(sled::IVec, LinkParts), StoreError>> + '_ {
        self.links.iter().map(|kv| {
            let (k, _) = kv?;
            let text = String::from_utf8_lossy(&k).into_owned();
            let mut parts = text.splitn(3, '\0').map(str::to_owned);
            let parts = LinkParts {
                upstream: parts.next().unwrap_or_default(),
                repo: parts.next().unwrap_or_default(),
                digest: parts.next().and_then(|d| Digest::parse(&d).ok()),
            };
            Ok((k, parts))
        })
    }

    pub(crate) fn remove_link_key(&self, key: &[u8]) -> Result<(), StoreError> {
        self.links.remove(key)?;
        Ok(())
    }

    /// Record a newly committed blob, with its media type if it is a manifest (`None` keeps
    /// one already recorded).
    pub(crate) fn put_blob(
        &self,
        d: &Digest,
        size: u64,
        media_type: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.update_blob(d, |old| {
            let (old_type, origins) = old.map_or((None, Vec::new()), |o| (o.media_type, o.origins));
            BlobValue::new(
                size,
                media_type.map(str::to_owned).or(old_type),
                now,
                origins,
            )
        })
    }

    /// Record a blob found on disk without a record (repair, rebuild): its size, its media
    /// type if it is a manifest, and when it was last used as far as anyone can tell.
    pub(crate) fn put_found_blob(
        &self,
        d: &Digest,
        size: u64,
        media_type: Option<String>,
        last_access: SystemTime,
    ) -> Result<(), StoreError> {
        let at = to_ms(last_access);
        self.update_blob(d, |old| {
            let (media_type, at, origins) = match old {
                // What the index already knew beats what a file can tell.
                Some(o) => (
                    o.media_type.clone().or(media_type.clone()),
                    o.last_access_ms(),
                    o.origins,
                ),
                None => (media_type.clone(), at, Vec::new()),
            };
            BlobValue::new(size, media_type, at, origins)
        })
    }

    pub(crate) fn touch(&self, d: &Digest, size: u64) -> Result<(), StoreError> {
        let now = now_ms();
        if let Some(v) = self.blobs.get(d.to_string())? {
            let v: BlobValue = decode(&v)?;
            if now.saturating_sub(v.last_access_ms()) < TOUCH_GRANULARITY_MS {
                return Ok(());
            }
        }
        self.update_blob(d, |old| match old {
            Some(o) => BlobValue::new(o.size, o.media_type, now, o.origins),
            None => BlobValue::new(size, None, now, Vec::new()),
        })
    }

    /// Whether there was a record to remove.
    pub(crate) fn remove_blob(&self, d: &Digest) -> Result<bool, StoreError> {
        Ok(self.blobs.remove(d.to_string())?.is_some())
    }

    fn update_blob(
        &self,
        d: &Digest,
        f: impl Fn(Option<BlobValue>) -> BlobValue,
    ) -> Result<(), StoreError> {
        let k = d.to_string();
        // Compare-and-swap so concurrent updates (a touch racing a media-type write) never
        // lose each other's field.
        loop {
            let old = self.blobs.get(&k)?;
            let decoded = old.as_deref().map(decode::<BlobValue>).transpose()?;
            let new = encode(&f(decoded))?;
            match self.blobs.compare_and_swap(&k, old, Some(new))? {
                Ok(()) => return Ok(()),
                Err(_) => continue,
            }
        }
    }
}
