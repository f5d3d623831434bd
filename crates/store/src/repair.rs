//! Making the index agree with the files, which are the truth: at start-up (after a crash,
//! say), from `pullgate cache gc`, and, re-hashing everything, from `pullgate cache rebuild`.
//!
//! A file under `blobs/` without a record is re-hashed: if it hashes to its name it is
//! indexed, else it is removed. A record without a file is dropped. A file whose name is not
//! a digest, or that sits where no digest would, is removed: nothing unverified stays at a
//! `blobs/` path. These run only where nothing else uses the store (before it serves, or
//! from the command line, which the directory lock keeps apart from a running server).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pullgate_oci::{Algorithm, Digest, Hasher, ManifestInfo, MANIFEST_SIZE_LIMIT};

use crate::progress::{Job, OnProgress, Progress, REPORT_EVERY_BYTES};
use crate::{Inner, Store, StoreError, Usage};

/// How many removed files a report names; the counts are always complete.
pub const REPORT_LIMIT: usize = 1000;

/// What a repair found and fixed (in a dry run: would fix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repair {
    /// Files left in `tmp/` by interrupted ingests and evictions (start-up only).
    pub tmp_removed: u64,
    /// Blob files without a record (or whose record disagreed on the size) that hashed to
    /// their name and were indexed.
    pub orphans_indexed: u64,
    /// Files removed from `blobs/`: content that does not hash to its name, names that are
    /// not digests, files that cannot be read.
    pub bad_removed: u64,
    /// Records whose file is gone, or whose key is not a digest.
    pub records_removed: u64,
    /// Blob files found intact (and, in a rebuild, re-hashed).
    pub kept: u64,
    /// Files hashed, and their bytes.
    pub hashed: u64,
    pub hashed_bytes: u64,
    /// The first [`REPORT_LIMIT`] files removed, with why.
    pub removed: Vec<(PathBuf, String)>,
    /// Where an index sled could not read was moved (start-up only).
    pub index_set_aside: Option<PathBuf>,
}

impl Repair {
    /// Whether there was nothing to fix.
    pub fn is_clean(&self) -> bool {
        self.tmp_removed == 0
            && self.orphans_indexed == 0
            && self.bad_removed == 0
            && self.records_removed == 0
            && self.index_set_aside.is_none()
    }

    fn removed(&mut self, path: &Path, why: impl Into<String>) {
        self.bad_removed += 1;
        if self.removed.len() < REPORT_LIMIT {
            self.removed.push((path.to_path_buf(), why.into()));
        }
    }
}

/// Index records about content the cache no longer holds, dropped by `cache gc`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prune {
    /// Tags pointing at a manifest that is not stored.
    pub tags_removed: u64,
    /// Repository links to digests that are not stored.
    pub links_removed: u64,
}

impl Store {
    /// What the repair at open found (empty when opened for inspection only).
    pub fn repaired_at_open(&self) -> &Repair {
        &self.inner.repaired
    }

    /// Make the index agree with the files (see the module docs). Blocking. Only while
    /// nothing else uses the store: no ingest, no eviction.
    pub fn repair_blocking(&self, dry_run: bool) -> Result<Repair, StoreError> {
        self.repair_reporting(dry_run, &mut |_| {})
    }

    /// [`Store::repair_blocking`], reporting progress as it goes.
    pub fn repair_reporting(
        &self,
        dry_run: bool,
        progress: OnProgress<'_>,
    ) -> Result<Repair, StoreError> {
        let r = self.inner.repair(false, dry_run, progress)?;
        if !dry_run {
            self.inner.remeasure()?;
        }
        Ok(r)
    }

    /// Re-hash every blob file and rebuild the blob records from what they hold: a file
    /// that does not hash to its name is removed. Blocking; same conditions as
    /// [`Store::repair_blocking`].
    pub fn rebuild_blocking(&self) -> Result<Repair, StoreError> {
        self.rebuild_reporting(&mut |_| {})
    }

    /// [`Store::rebuild_blocking`], reporting progress as it goes.
    pub fn rebuild_reporting(&self, progress: OnProgress<'_>) -> Result<Repair, StoreError> {
        let r = self.inner.repair(true, false, progress)?;
        self.inner.remeasure()?;
        Ok(r)
    }

    /// Empty `tmp/`, as start-up does; returns how many entries went. Blocking; same
    /// conditions as [`Store::repair_blocking`]: an ingest in progress writes there.
    pub fn clear_tmp_blocking(&self) -> Result<u64, StoreError> {
        empty_tmp(&self.inner.tmp)
    }

    /// Drop tags and links that point at digests the cache does not hold. Blocking.
    pub fn prune_index_blocking(&self, dry_run: bool) -> Result<Prune, StoreError> {
        self.inner.prune_index(dry_run)
    }
}

impl Inner {
    /// Safe beside a running server: tags and links are written only after their blob is
    /// committed, so one pointing at a missing file is stale (or about a blob served
    /// uncached), and dropping one costs at most a request upstream.
    pub(crate) fn prune_index(&self, dry_run: bool) -> Result<Prune, StoreError> {
        let mut p = Prune::default();
        let index = &self.index;
        for entry in index.tags() {
            let (key, digest) = entry?;
            if !digest.is_some_and(|d| self.blob_exists(&d)) {
                p.tags_removed += 1;
                if !dry_run {
                    index.remove_tag_key(&key)?;
                }
            }
        }
        for entry in index.links() {
            let (key, parts) = entry?;
            if !parts.digest.is_some_and(|d| self.blob_exists(&d)) {
                p.links_removed += 1;
                if !dry_run {
                    index.remove_link_key(&key)?;
                }
            }
        }
        Ok(p)
    }

    fn blob_exists(&self, d: &Digest) -> bool {
        fs::symlink_metadata(self.blob_path(d)).is_ok()
    }

    /// Count the bytes and files under `blobs/` again (after a repair removed some).
    pub(crate) fn remeasure(&self) -> Result<(), StoreError> {
        let usage = measure(&self.blobs).map_err(StoreError::io("measuring blobs/"))?;
        self.usage_bytes
            .store(usage.bytes, std::sync::atomic::Ordering::Relaxed);
        self.usage_blobs
            .store(usage.blobs, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn repair(
        &self,
        rehash_all: bool,
        dry_run: bool,
        progress: OnProgress<'_>,
    ) -> Result<Repair, StoreError> {
        let mut r = Repair::default();
        // A stat walk first, for totals to report against: cheap beside hashing, and only
        // what the job is about to read anyway.
        let total = measure(&self.blobs).map_err(StoreError::io("measuring blobs/"))?;
        let mut at = Progress {
            job: if rehash_all {
                Job::Rebuild
            } else {
                Job::Repair
            },
            files_done: 0,
            files_total: total.blobs,
            bytes_done: 0,
            bytes_total: total.bytes,
            files_hashed: 0,
            bytes_hashed: 0,
        };
        progress(&at);
        walk(&self.blobs, &mut |found| {
            match found {
                Found::Stray(path) => {
                    if !dry_run {
                        remove(&path)?;
                    }
                    r.removed(&path, "not a blob file name");
                }
                Found::Blob {
                    path,
                    digest,
                    len,
                    modified,
                } => {
                    let before = r.hashed;
                    let base = at;
                    let mut within = |read: u64| {
                        at.bytes_done = base.bytes_done + read;
                        at.bytes_hashed = base.bytes_hashed + read;
                        progress(&at);
                    };
                    self.check_blob(
                        &mut r,
                        (&path, &digest, len, modified),
                        rehash_all,
                        dry_run,
                        &mut within,
                    )?;
                    at = base;
                    at.files_done += 1;
                    at.bytes_done += len;
                    if r.hashed > before {
                        at.files_hashed += 1;
                        at.bytes_hashed += len;
                    }
                    progress(&at);
                }
            }
            Ok(())
        })?;
        for entry in self.index.blobs() {
            match entry? {
                Err(key) => {
                    r.records_removed += 1;
                    if !dry_run {
                        self.index.remove_raw_blob_key(&key)?;
                    }
                }
                Ok((digest, _)) if !self.blob_exists(&digest) => {
                    r.records_removed += 1;
                    if !dry_run {
                        self.index.remove_blob(&digest)?;
                    }
                }
                Ok(_) => {}
            }
        }
        Ok(r)
    }

    /// `on_read` hears how many of the file's bytes were hashed so far, as they are.
    fn check_blob(
        &self,
        r: &mut Repair,
        (path, digest, len, modified): (&Path, &Digest, u64, SystemTime),
        rehash_all: bool,
        dry_run: bool,
        on_read: &mut dyn FnMut(u64),
    ) -> Result<(), StoreError> {
        let record = self.index.blob(digest)?;
        let agrees = record.as_ref().is_some_and(|rec| rec.size == len);
        if agrees && !rehash_all {
            r.kept += 1;
            return Ok(());
        }
        r.hashed += 1;
        r.hashed_bytes += len;
        match hash_file(path, digest.algorithm(), len, on_read) {
            Ok((actual, _)) if actual != *digest => {
                if !dry_run {
                    remove(path)?;
                    self.index.remove_blob(digest)?;
                }
                r.removed(path, format!("content hashes to {actual}"));
            }
            Ok((_, small)) => {
                if agrees {
                    r.kept += 1;
                } else {
                    r.orphans_indexed += 1;
                }
                if !dry_run {
                    let media_type = small.as_deref().and_then(manifest_type);
                    self.index
                        .put_found_blob(digest, len, media_type, modified)?;
                }
            }
            Err(e) => {
                if !dry_run {
                    remove(path)?;
                    self.index.remove_blob(digest)?;
                }
                r.removed(path, format!("unreadable: {e}"));
            }
        }
        Ok(())
    }
}

pub(crate) enum Found {
    Blob {
        path: PathBuf,
        digest: Digest,
        len: u64,
        modified: SystemTime,
    },
    /// A file where no blob belongs, or named other than by its digest.
    Stray(PathBuf),
}

/// Visit every file under `blobs/<algorithm>/<2 hex>/`. Directories where none belong are
/// left alone (with a warning): they could be anything; files in them are strays.
pub(crate) fn walk(
    blobs: &Path,
    f: &mut dyn FnMut(Found) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let io = StoreError::io;
    for alg in fs::read_dir(blobs).map_err(io("listing blobs/"))? {
        let alg = alg.map_err(io("listing blobs/"))?;
        let alg_path = alg.path();
        let name = alg.file_name().to_string_lossy().into_owned();
        if !alg.file_type().map_err(io("stat in blobs/"))?.is_dir() {
            f(Found::Stray(alg_path))?;
            continue;
        }
        for fan in fs::read_dir(&alg_path).map_err(io("listing blobs/"))? {
            let fan = fan.map_err(io("listing blobs/"))?;
            let fan_path = fan.path();
            let fan_name = fan.file_name().to_string_lossy().into_owned();
            if !fan.file_type().map_err(io("stat in blobs/"))?.is_dir() {
                f(Found::Stray(fan_path))?;
                continue;
            }
            for file in fs::read_dir(&fan_path).map_err(io("listing blobs/"))? {
                let file = file.map_err(io("listing blobs/"))?;
                let path = file.path();
                let meta = file.metadata().map_err(io("stat in blobs/"))?;
                if meta.is_dir() {
                    tracing::warn!(path = %path.display(), "unexpected directory in the cache's blobs/; left alone");
                    continue;
                }
                let hex = file.file_name().to_string_lossy().into_owned();
                let digest = Digest::parse(&format!("{name}:{hex}"))
                    .ok()
                    .filter(|d| d.hex().get(..2) == Some(fan_name.as_str()));
                match digest {
                    Some(digest) if meta.is_file() => f(Found::Blob {
                        path,
                        digest,
                        len: meta.len(),
                        modified: meta.modified().unwrap_or_else(|_| SystemTime::now()),
                    })?,
                    _ => f(Found::Stray(path))?,
                }
            }
        }
    }
    Ok(())
}

/// Remove everything in `tmp/` (creating it if missing); returns how many entries went.
pub(crate) fn empty_tmp(tmp: &Path) -> Result<u64, StoreError> {
    let mut removed = 0;
    if tmp.exists() {
        removed = fs::read_dir(tmp)
            .map_err(StoreError::io("listing tmp/"))?
            .count() as u64;
        fs::remove_dir_all(tmp).map_err(StoreError::io("emptying tmp/"))?;
    }
    crate::private_dir(tmp).map_err(StoreError::io("creating tmp/"))?;
    Ok(removed)
}

fn remove(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io {
            op: "removing a bad file from blobs/",
            source: e,
        }),
    }
}

/// Hash a file; small files (manifest-sized) are also returned whole, to learn whether
/// they are manifests without reading them twice.
fn hash_file(
    path: &Path,
    algorithm: Algorithm,
    len: u64,
    on_read: &mut dyn FnMut(u64),
) -> std::io::Result<(Digest, Option<Vec<u8>>)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Hasher::new(algorithm);
    if len <= MANIFEST_SIZE_LIMIT as u64 {
        let mut all = Vec::new();
        file.read_to_end(&mut all)?;
        hasher.update(&all);
        return Ok((hasher.finish(), Some(all)));
    }
    let mut buf = vec![0u8; 1024 * 1024];
    let (mut read, mut reported) = (0u64, 0u64);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        read += n as u64;
        if read - reported >= REPORT_EVERY_BYTES {
            reported = read;
            on_read(read);
        }
    }
    Ok((hasher.finish(), None))
}

/// The media type of a manifest, for a blob that is one. The index normally learns it from
/// the upstream's `Content-Type`; a rebuilt index learns it from the document.
fn manifest_type(bytes: &[u8]) -> Option<String> {
    let looks_like_one =
        bytes.first() == Some(&b'{') && bytes.windows(15).any(|w| w == b"\"schemaVersion\"");
    if !looks_like_one {
        return None;
    }
    ManifestInfo::parse(bytes, None).ok().map(|i| i.media_type)
}

/// Total size and number of files under `blobs/` (two levels of directories per algorithm).
pub(crate) fn measure(blobs: &Path) -> std::io::Result<Usage> {
    let mut usage = Usage::default();
    let mut dirs = vec![(blobs.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() && depth < 2 {
                dirs.push((entry.path(), depth + 1));
            } else if kind.is_file() && depth == 2 {
                usage.bytes += entry.metadata()?.len();
                usage.blobs += 1;
            }
        }
    }
    Ok(usage)
}
