//! `pullgate cache stats|ls|gc|rebuild`: look at and maintain a cache while the server is
//! stopped. The store's directory lock makes each of them fail, saying why, against a cache
//! that a running server has open; none of them ever changes a running server's files.

use std::collections::HashMap;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use pullgate_oci::Digest;
use pullgate_store::{Repair, Store, StoreError, StoreOptions};

use crate::config::Settings;

#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// Blob count, total bytes, the size limit, oldest and newest access.
    Stats(CacheArgs),
    /// Every blob, least recently used (next to be evicted) first: last access, size,
    /// digest, kind, and the repositories it was pulled through.
    Ls(CacheArgs),
    /// Evict down to the low watermark now, and drop what no longer belongs: files without
    /// a record (re-hashed and indexed, or removed if bad), records without a file, tags
    /// and links to content no longer stored. Prints what it did.
    Gc(GcArgs),
    /// Rebuild the index from the blob files, re-hashing every one: the files are the
    /// truth. A file whose content does not hash to its name is removed and listed.
    Rebuild(CacheArgs),
}

#[derive(clap::Args)]
pub struct CacheArgs {
    /// The configuration `pullgate serve` runs with (default: the embedded one).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Cache directory (overrides cache.dir).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Say what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(
    command: CacheCommand,
    settings: impl FnOnce(&CacheArgs) -> Result<Settings>,
) -> Result<()> {
    match command {
        CacheCommand::Stats(args) => stats(&settings(&args)?),
        CacheCommand::Ls(args) => ls(&settings(&args)?),
        CacheCommand::Gc(args) => gc(&settings(&args.cache)?, args.dry_run),
        CacheCommand::Rebuild(args) => rebuild(&settings(&args)?),
    }
}

fn open(s: &Settings, inspect_only: bool) -> Result<Store, StoreError> {
    Store::open_with(
        &s.cache_dir,
        StoreOptions {
            limits: s.cache_limits,
            inspect_only,
        },
    )
}

/// Open a cache that exists (never create one where a path was mistyped).
fn open_existing(s: &Settings, inspect_only: bool) -> Result<Store> {
    let dir = &s.cache_dir;
    if !dir.join("index").is_dir() {
        bail!(
            "no cache at {}: no index/ there (is cache.dir or --cache-dir right?)",
            dir.display()
        );
    }
    open(s, inspect_only).with_context(|| format!("opening the cache at {}", dir.display()))
}

fn stats(s: &Settings) -> Result<()> {
    let store = open_existing(s, true)?;
    let usage = store.usage();
    let mut oldest: Option<(SystemTime, Digest)> = None;
    let mut newest: Option<(SystemTime, Digest)> = None;
    for entry in store.records() {
        let (digest, record) = entry?;
        let at = record.last_access;
        if !matches!(&oldest, Some((t, _)) if *t <= at) {
            oldest = Some((at, digest.clone()));
        }
        if !matches!(&newest, Some((t, _)) if *t >= at) {
            newest = Some((at, digest));
        }
    }
    println!("cache: {}", s.cache_dir.display());
    println!("blobs: {}", usage.blobs);
    println!("index_records: {}", store.record_count());
    println!("bytes: {} ({})", usage.bytes, human(usage.bytes));
    match store.limits() {
        Some(l) => {
            println!("max_size: {} ({})", l.max_bytes(), human(l.max_bytes()));
            println!("high_watermark: {} ({} bytes)", l.high(), l.high_bytes());
            println!("low_watermark: {} ({} bytes)", l.low(), l.low_bytes());
            println!(
                "used: {:.1}% of max_size",
                usage.bytes as f64 * 100.0 / l.max_bytes() as f64
            );
        }
        None => println!("max_size: unbounded (cache.max_size is not set)"),
    }
    for (name, at) in [("oldest_access", &oldest), ("newest_access", &newest)] {
        match at {
            Some((t, d)) => println!("{name}: {} {d}", time(*t)),
            None => println!("{name}: -"),
        }
    }
    let tmp = std::fs::read_dir(s.cache_dir.join("tmp")).map_or(0, |d| d.count());
    println!("tmp_files: {tmp}");
    if usage.blobs != store.record_count() as u64 {
        println!(
            "note: files and index records differ; `pullgate cache gc` (or the next start) repairs the index"
        );
    }
    Ok(())
}

/// How many repositories `ls` names per blob; the rest are counted.
const REPOS_SHOWN: usize = 3;

fn ls(s: &Settings) -> Result<()> {
    let store = open_existing(s, true)?;
    let mut records = store.records().collect::<Result<Vec<_>, _>>()?;
    records.sort_by(|(da, a), (db, b)| (a.last_access, da).cmp(&(b.last_access, db)));
    let mut repos: HashMap<Digest, Vec<String>> = HashMap::new();
    for link in store.links() {
        let (upstream, repo, digest) = link?;
        let names = repos.entry(digest).or_default();
        if names.len() <= REPOS_SHOWN {
            names.push(format!("{upstream}/{repo}"));
        }
    }
    println!(
        "{:<20}  {:>12}  {:<71}  {:<9}  REPOSITORIES",
        "LAST ACCESS", "SIZE", "DIGEST", "KIND"
    );
    for (digest, record) in &records {
        let kind = match &record.media_type {
            Some(m) if m.contains("index") || m.contains("list") => "index",
            Some(_) => "manifest",
            None => "blob",
        };
        let names = repos.get(digest).map_or_else(String::new, |n| {
            let mut text = n
                .iter()
                .take(REPOS_SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(",");
            if n.len() > REPOS_SHOWN {
                text.push_str(",...");
            }
            text
        });
        println!(
            "{:<20}  {:>12}  {:<71}  {:<9}  {names}",
            time(record.last_access),
            record.size,
            digest.to_string(),
            kind
        );
    }
    let total: u64 = records.iter().map(|(_, r)| r.size).sum();
    println!(
        "{} blobs, {} bytes ({})",
        records.len(),
        total,
        human(total)
    );
    Ok(())
}

fn gc(s: &Settings, dry_run: bool) -> Result<()> {
    let store = open_existing(s, dry_run)?;
    let would = if dry_run { "would " } else { "" };
    let repair = if dry_run {
        let mut r = store.repair_blocking(true)?;
        r.tmp_removed = std::fs::read_dir(s.cache_dir.join("tmp")).map_or(0, |d| d.count() as u64);
        r
    } else {
        store.repaired_at_open().clone()
    };
    print_repair(&repair, would);
    let pruned = store.prune_index_blocking(dry_run)?;
    println!(
        "index: {would}drop {} tags and {} links to content no longer stored",
        pruned.tags_removed, pruned.links_removed
    );
    let Some(limits) = store.limits() else {
        println!(
            "eviction: none (cache.max_size is not set); {} bytes cached",
            store.usage().bytes
        );
        return Ok(());
    };
    let before = store.usage().bytes;
    let summary = store.evict_blocking(None, dry_run, &mut |e| {
        println!(
            "{would}evict {} {} bytes (last access {})",
            e.digest,
            e.size,
            time(e.last_access)
        );
    })?;
    println!(
        "eviction: {would}evict {} blobs, {} bytes; usage {} -> {} bytes (low watermark {}, max_size {})",
        summary.blobs,
        summary.bytes,
        before,
        summary.usage_after,
        limits.low_bytes(),
        limits.max_bytes()
    );
    if !dry_run {
        store.flush()?;
    }
    Ok(())
}

fn rebuild(s: &Settings) -> Result<()> {
    let dir = &s.cache_dir;
    if !dir.join("blobs").is_dir() {
        bail!("no cache at {}: no blobs/ there", dir.display());
    }
    let store = match open(s, true) {
        Ok(store) => store,
        // The index itself is what is broken: keep it aside for a post-mortem and start
        // from the files.
        Err(StoreError::Index(why)) => {
            let aside = pullgate_store::set_aside_broken_index(dir)
                .context("moving the broken index aside")?;
            println!(
                "the index did not open ({why}); moved it to {} and starting a new one",
                aside.display()
            );
            open(s, true).with_context(|| format!("opening the cache at {}", dir.display()))?
        }
        Err(e) => return Err(e).with_context(|| format!("opening the cache at {}", dir.display())),
    };
    let tmp = store.clear_tmp_blocking()?;
    let r = store.rebuild_blocking()?;
    let pruned = store.prune_index_blocking(false)?;
    store.flush()?;
    println!(
        "rebuilt the index: {} blob files hashed ({} bytes): {} intact, {} indexed anew, {} files removed, {} records without a file dropped, {} tmp files removed",
        r.hashed,
        r.hashed_bytes,
        r.kept,
        r.orphans_indexed,
        r.bad_removed,
        r.records_removed,
        tmp
    );
    for (path, why) in &r.removed {
        println!("removed {}: {why}", path.display());
    }
    if r.bad_removed as usize > r.removed.len() {
        println!("... and {} more", r.bad_removed as usize - r.removed.len());
    }
    println!(
        "index: dropped {} tags and {} links to content no longer stored",
        pruned.tags_removed, pruned.links_removed
    );
    println!(
        "blobs: {}, bytes: {}",
        store.usage().blobs,
        store.usage().bytes
    );
    Ok(())
}

fn print_repair(r: &Repair, would: &str) {
    println!(
        "repair: {would}remove {} tmp files, {would}index {} orphan files, {would}remove {} bad files, {would}drop {} records without a file",
        r.tmp_removed, r.orphans_indexed, r.bad_removed, r.records_removed
    );
    for (path, why) in &r.removed {
        println!("{would}remove {}: {why}", path.display());
    }
}

fn human(bytes: u64) -> String {
    let mut v = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if v < 1024.0 || unit == "TiB" {
            return if unit == "B" {
                format!("{bytes} B")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    format!("{bytes} B")
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
