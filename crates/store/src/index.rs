//! The sled index: tags, repository→digest links, and per-blob records. Files on disk are
//! the truth for bytes; the index only says what they are and who may see them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pullgate_oci::{Digest, RepoName, Tag};
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// A tag of one repository on one upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagKey {
    pub upstream: String,
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

/// What the index knows about one committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    pub size: u64,
    /// Set for manifests.
    pub media_type: Option<String>,
    pub last_access: SystemTime,
}

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
    last_access_s: u64,
}

/// Access times are coarse on purpose: a hit rewrites its record at most this often.
const TOUCH_GRANULARITY: Duration = Duration::from_secs(60);

pub(crate) struct Index {
    db: sled::Db,
    tags: sled::Tree,
    links: sled::Tree,
    blobs: sled::Tree,
}

// `\0` cannot occur in upstream names, repository names, tags or digests, so joined keys
// are unambiguous.
fn key(parts: &[&str]) -> Vec<u8> {
    parts.join("\0").into_bytes()
}

fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
        Ok(Index {
            tags: db.open_tree("tags")?,
            links: db.open_tree("links")?,
            blobs: db.open_tree("blobs")?,
            db,
        })
    }

    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    pub(crate) fn tag(&self, k: &TagKey) -> Result<Option<TagRecord>, StoreError> {
        let Some(v) = self
            .tags
            .get(key(&[&k.upstream, k.repo.as_str(), k.tag.as_str()]))?
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
        self.tags
            .insert(key(&[&k.upstream, k.repo.as_str(), k.tag.as_str()]), v)?;
        Ok(())
    }

    pub(crate) fn link(
        &self,
        upstream: &str,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<(), StoreError> {
        let k = key(&[upstream, repo.as_str(), &d.to_string()]);
        if !self.links.contains_key(&k)? {
            self.links.insert(k, &[])?;
        }
        Ok(())
    }

    pub(crate) fn is_linked(
        &self,
        upstream: &str,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<bool, StoreError> {
        Ok(self
            .links
            .contains_key(key(&[upstream, repo.as_str(), &d.to_string()]))?)
    }

    pub(crate) fn blob(&self, d: &Digest) -> Result<Option<BlobRecord>, StoreError> {
        let Some(v) = self.blobs.get(d.to_string())? else {
            return Ok(None);
        };
        let v: BlobValue = decode(&v)?;
        Ok(Some(BlobRecord {
            size: v.size,
            media_type: v.media_type,
            last_access: UNIX_EPOCH + Duration::from_secs(v.last_access_s),
        }))
    }

    /// Record a newly committed blob, with its media type if it is a manifest (`None` keeps
    /// one already recorded).
    pub(crate) fn put_blob(
        &self,
        d: &Digest,
        size: u64,
        media_type: Option<&str>,
    ) -> Result<(), StoreError> {
        self.update_blob(d, |old| BlobValue {
            size,
            media_type: media_type
                .map(str::to_owned)
                .or_else(|| old.and_then(|o| o.media_type)),
            last_access_s: now_s(),
        })
    }

    pub(crate) fn touch(&self, d: &Digest, size: u64) -> Result<(), StoreError> {
        let now = now_s();
        if let Some(v) = self.blobs.get(d.to_string())? {
            let v: BlobValue = decode(&v)?;
            if now.saturating_sub(v.last_access_s) < TOUCH_GRANULARITY.as_secs() {
                return Ok(());
            }
        }
        self.update_blob(d, |old| BlobValue {
            size: old.as_ref().map_or(size, |o| o.size),
            media_type: old.and_then(|o| o.media_type),
            last_access_s: now,
        })
    }

    pub(crate) fn remove_blob(&self, d: &Digest) -> Result<(), StoreError> {
        self.blobs.remove(d.to_string())?;
        Ok(())
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
