//! A short memory of digests an upstream called unknown, per (upstream, repository,
//! digest): a client asking for thousands of digests that do not exist costs the upstream
//! one request each per `negative_ttl`, not one per request.
//!
//! Keyed by the full target, so one client's 404s under its repository never answer
//! another repository's requests. Bounded: when full, expired entries go, and if none
//! have expired the whole memory is dropped (the worst case is asking the upstream again).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use pullgate_oci::{Digest, RepoName, UpstreamId};

use crate::error::{MirrorError, Wanted};
use crate::Target;

/// Entries remembered at most.
const CAPACITY: usize = 16 * 1024;

type Key = (UpstreamId, RepoName, Digest);

pub(crate) struct Negative {
    ttl: Duration,
    map: Mutex<HashMap<Key, Instant>>,
    stats: std::sync::Arc<crate::Stats>,
}

impl Negative {
    pub(crate) fn new(ttl: Duration, stats: std::sync::Arc<crate::Stats>) -> Self {
        Negative {
            ttl,
            map: Mutex::new(HashMap::new()),
            stats,
        }
    }

    fn key(target: &Target, digest: &Digest) -> Key {
        (
            target.upstream_id().clone(),
            target.repo.clone(),
            digest.clone(),
        )
    }

    /// Err with the unknown error if the upstream said so within `ttl`.
    pub(crate) fn check(
        &self,
        target: &Target,
        digest: &Digest,
        wanted: Wanted,
    ) -> Result<(), MirrorError> {
        if self.ttl.is_zero() {
            return Ok(());
        }
        let key = Self::key(target, digest);
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(&key) {
            Some(until) if *until > Instant::now() => {
                crate::Stats::inc(&self.stats.negative_hits);
                Err(match wanted {
                    Wanted::Blob => MirrorError::BlobUnknown,
                    _ => MirrorError::ManifestUnknown("unknown to the upstream".into()),
                })
            }
            Some(_) => {
                map.remove(&key);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Remember `e` if it says the digest is unknown under this target.
    pub(crate) fn note(&self, target: &Target, digest: &Digest, e: &MirrorError) {
        if self.ttl.is_zero()
            || !matches!(
                e,
                MirrorError::BlobUnknown | MirrorError::ManifestUnknown(_)
            )
        {
            return;
        }
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= CAPACITY {
            map.retain(|_, until| *until > now);
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        map.insert(Self::key(target, digest), now + self.ttl);
    }
}
