//! `pullgate cache stats|ls|top|gc|rebuild`: look at and maintain a cache while the server
//! is stopped. The store's directory lock makes each of them fail, saying why, against a
//! cache that a running server has open; none of them ever changes a running server's files.
//!
//! For people: aligned tables with sizes in binary units and ages ("3m", "2d"), sorted and
//! filtered by repository or upstream, and progress on stderr for the long jobs. For
//! machines: `--json`, one document on stdout with stable field names, sizes in bytes and
//! times in RFC 3339.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use pullgate_oci::{Digest, Reference};
use pullgate_store::{Repair, Store, StoreError, StoreOptions};
use serde::Serialize;

use crate::config::Settings;
use crate::progress::{Reporter, Step};
use crate::table::{self, Filter, Pattern, Table};

#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// Blob count, total size, the size limit, oldest and newest access, then a table of
    /// the repositories: their blobs, size, last access and pulls.
    Stats(ListArgs),
    /// Every blob, least recently used (next to be evicted) first: last access, size,
    /// kind, digest, and the repositories it was pulled through.
    Ls(ListArgs),
    /// The most pulled images (as clients named them: a tag or a digest), most first: the
    /// server counts every manifest it serves.
    Top(TopArgs),
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
pub struct FilterArgs {
    /// Only repositories matching PATTERN (as the upstream names them, e.g.
    /// `library/alpine`; `*` matches any characters, `/` included, `?` one).
    #[arg(long, value_name = "PATTERN")]
    pub repo: Option<String>,
    /// Only this upstream (its name in the configuration, e.g. `docker.io`).
    #[arg(long, value_name = "NAME")]
    pub upstream: Option<String>,
    /// One JSON document on stdout instead of a table: sizes in bytes, times in RFC 3339.
    #[arg(long)]
    pub json: bool,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            repo: self.repo.as_deref().map(Pattern::new),
            upstream: self.upstream.clone(),
        }
    }
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Order of the rows: `size` (largest first), `age` (least recently used first, the
    /// order eviction takes), `name` (by repository). Default: `age` for ls, `size` for
    /// stats.
    #[arg(long, value_enum, value_name = "KEY")]
    pub sort: Option<SortKey>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum SortKey {
    Size,
    Age,
    Name,
}

#[derive(clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// How many images to list.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
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
        CacheCommand::Stats(args) => stats(&settings(&args.cache)?, &args),
        CacheCommand::Ls(args) => ls(&settings(&args.cache)?, &args),
        CacheCommand::Top(args) => top(&settings(&args.cache)?, &args),
        CacheCommand::Gc(args) => gc(&settings(&args.cache)?, args.dry_run),
        CacheCommand::Rebuild(args) => rebuild(&settings(&args)?),
    }
}

fn open(
    s: &Settings,
    inspect_only: bool,
    reporter: Option<&mut Reporter>,
) -> Result<Store, StoreError> {
    let options = StoreOptions {
        limits: s.cache_limits,
        inspect_only,
        bucket: None,
    };
    match reporter {
        Some(r) => Store::open_reporting(&s.cache_dir, options, &mut |p| r.update(Step::from(p))),
        None => Store::open_with(&s.cache_dir, options),
    }
}

/// Open a cache that exists (never create one where a path was mistyped).
fn open_existing(
    s: &Settings,
    inspect_only: bool,
    reporter: Option<&mut Reporter>,
) -> Result<Store> {
    let dir = &s.cache_dir;
    if !dir.join("index").is_dir() {
        bail!(
            "no cache at {}: no index/ there (is cache.dir or --cache-dir right?)",
            dir.display()
        );
    }
    open(s, inspect_only, reporter)
        .with_context(|| format!("opening the cache at {}", dir.display()))
}

fn print_json(value: &impl Serialize) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).context("encoding JSON")?
    );
    Ok(())
}

/// Repositories `ls` names per blob in its table; the rest are counted.
const REPOS_SHOWN: usize = 3;
/// Repositories kept per blob for `--json` (and for filtering): a base layer can be in
/// thousands; the count is always complete.
const REPOS_KEPT: usize = 64;

/// The repositories a blob is linked to, as far as kept.
#[derive(Default)]
struct Repos {
    names: Vec<(String, String)>,
    count: usize,
    /// Whether one of them (kept or not) matches the filter.
    matched: bool,
}

/// Every link, grouped by digest.
fn repos_by_digest(store: &Store, filter: &Filter) -> Result<HashMap<Digest, Repos>> {
    let mut repos: HashMap<Digest, Repos> = HashMap::new();
    for link in store.links() {
        let (upstream, repo, digest) = link?;
        let r = repos.entry(digest).or_default();
        r.count += 1;
        let matches = filter.matches(&upstream, &repo);
        r.matched |= matches;
        // With a filter, the matching names are the ones worth keeping.
        if r.names.len() < REPOS_KEPT && (matches || !filter.is_set()) {
            r.names.push((upstream, repo));
        }
    }
    Ok(repos)
}

fn kind(media_type: Option<&str>) -> &'static str {
    match media_type {
        Some(m) if m.contains("index") || m.contains("list") => "index",
        Some(_) => "manifest",
        None => "blob",
    }
}

#[derive(Serialize)]
struct LsJson {
    cache_dir: String,
    blobs: Vec<BlobJson>,
    /// What is listed (after filters), and all the index holds.
    count: usize,
    bytes: u64,
    total_count: usize,
    total_bytes: u64,
}

#[derive(Serialize)]
struct BlobJson {
    digest: String,
    size: u64,
    kind: &'static str,
    media_type: Option<String>,
    last_access: String,
    repositories: Vec<RepoRef>,
    repository_count: usize,
}

#[derive(Serialize, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RepoRef {
    upstream: String,
    repository: String,
}

struct BlobRow {
    digest: Digest,
    record: pullgate_store::BlobRecord,
    repos: Repos,
}

impl BlobRow {
    fn first_repo(&self) -> Option<&(String, String)> {
        self.repos.names.iter().min()
    }
}

fn sort_blobs(rows: &mut [BlobRow], key: SortKey) {
    match key {
        SortKey::Size => {
            rows.sort_by(|a, b| (b.record.size, &a.digest).cmp(&(a.record.size, &b.digest)))
        }
        SortKey::Age => rows.sort_by(|a, b| {
            (a.record.last_access, &a.digest).cmp(&(b.record.last_access, &b.digest))
        }),
        // Blobs no repository is linked to (a rebuilt index) come last.
        SortKey::Name => rows.sort_by(|a, b| {
            let name = |r: &BlobRow| (r.first_repo().is_none(), r.first_repo().cloned());
            (name(a), &a.digest).cmp(&(name(b), &b.digest))
        }),
    }
}

fn ls(s: &Settings, args: &ListArgs) -> Result<()> {
    let store = open_existing(s, true, None)?;
    let filter = args.filter.filter();
    let mut repos = repos_by_digest(&store, &filter)?;
    let (mut total_count, mut total_bytes) = (0, 0);
    let mut rows = Vec::new();
    for entry in store.records() {
        let (digest, record) = entry?;
        total_count += 1;
        total_bytes += record.size;
        let r = repos.remove(&digest).unwrap_or_default();
        if filter.is_set() && !r.matched {
            continue;
        }
        rows.push(BlobRow {
            digest,
            record,
            repos: r,
        });
    }
    sort_blobs(&mut rows, args.sort.unwrap_or(SortKey::Age));
    let bytes: u64 = rows.iter().map(|r| r.record.size).sum();
    if args.filter.json {
        return print_json(&LsJson {
            cache_dir: s.cache_dir.display().to_string(),
            count: rows.len(),
            bytes,
            total_count,
            total_bytes,
            blobs: rows
                .into_iter()
                .map(|r| BlobJson {
                    digest: r.digest.to_string(),
                    size: r.record.size,
                    kind: kind(r.record.media_type.as_deref()),
                    last_access: table::rfc3339(r.record.last_access),
                    media_type: r.record.media_type,
                    repository_count: r.repos.count,
                    repositories: r
                        .repos
                        .names
                        .into_iter()
                        .map(|(upstream, repository)| RepoRef {
                            upstream,
                            repository,
                        })
                        .collect(),
                })
                .collect(),
        });
    }
    let now = SystemTime::now();
    let mut t = Table::new(&["LAST ACCESS>", "SIZE>", "KIND", "DIGEST", "REPOSITORIES"]);
    for r in &rows {
        let mut names: Vec<String> = r
            .repos
            .names
            .iter()
            .take(REPOS_SHOWN)
            .map(|(u, n)| format!("{u}/{n}"))
            .collect();
        let more = r.repos.count.saturating_sub(names.len());
        if more > 0 && !filter.is_set() {
            names.push(format!("+{more}"));
        }
        t.row(vec![
            format!("{} ago", table::age(r.record.last_access, now)),
            table::size(r.record.size),
            kind(r.record.media_type.as_deref()).to_owned(),
            r.digest.to_string(),
            names.join(", "),
        ]);
    }
    print!("{}", t.render());
    if filter.is_set() {
        println!(
            "{} of {} blobs, {} of {}",
            rows.len(),
            total_count,
            table::size(bytes),
            table::size(total_bytes)
        );
    } else {
        println!("{} blobs, {}", rows.len(), table::size(bytes));
    }
    Ok(())
}

#[derive(Serialize)]
struct StatsJson {
    cache_dir: String,
    blobs: u64,
    index_records: usize,
    bytes: u64,
    max_size_bytes: Option<u64>,
    high_watermark: Option<f64>,
    high_watermark_bytes: Option<u64>,
    low_watermark: Option<f64>,
    low_watermark_bytes: Option<u64>,
    oldest_access: Option<String>,
    newest_access: Option<String>,
    tmp_files: usize,
    /// After filters: repositories, distinct blobs linked to them, and their bytes.
    matching: Matching,
    repositories: Vec<RepoStatsJson>,
}

#[derive(Serialize)]
struct Matching {
    repositories: usize,
    blobs: usize,
    bytes: u64,
}

#[derive(Serialize)]
struct RepoStatsJson {
    upstream: String,
    repository: String,
    blobs: u64,
    bytes: u64,
    last_access: Option<String>,
    pulls: u64,
}

/// One repository's share of the cache. A blob linked to several counts in each.
#[derive(Default)]
struct RepoStats {
    blobs: u64,
    bytes: u64,
    last_access: Option<SystemTime>,
    pulls: u64,
}

type RepoRow = ((String, String), RepoStats);

fn sort_repos(repos: &mut [RepoRow], key: SortKey) {
    match key {
        SortKey::Size => repos.sort_by(|a, b| (b.1.bytes, &a.0).cmp(&(a.1.bytes, &b.0))),
        SortKey::Age => repos.sort_by(|a, b| (a.1.last_access, &a.0).cmp(&(b.1.last_access, &b.0))),
        SortKey::Name => repos.sort_by(|a, b| a.0.cmp(&b.0)),
    }
}

fn stats(s: &Settings, args: &ListArgs) -> Result<()> {
    let store = open_existing(s, true, None)?;
    let filter = args.filter.filter();
    let usage = store.usage();
    let mut oldest: Option<(SystemTime, Digest)> = None;
    let mut newest: Option<(SystemTime, Digest)> = None;
    let mut records = HashMap::new();
    for entry in store.records() {
        let (digest, record) = entry?;
        let at = record.last_access;
        if !matches!(&oldest, Some((t, _)) if *t <= at) {
            oldest = Some((at, digest.clone()));
        }
        if !matches!(&newest, Some((t, _)) if *t >= at) {
            newest = Some((at, digest.clone()));
        }
        records.insert(digest, (record.size, at));
    }
    let mut per_repo: BTreeMap<(String, String), RepoStats> = BTreeMap::new();
    let mut matching_blobs: HashSet<Digest> = HashSet::new();
    for link in store.links() {
        let (upstream, repo, digest) = link?;
        if !filter.matches(&upstream, &repo) {
            continue;
        }
        // A link to a blob no longer stored is the index's leftover, not cache content.
        let Some(&(size, at)) = records.get(&digest) else {
            continue;
        };
        let r = per_repo.entry((upstream, repo)).or_default();
        r.blobs += 1;
        r.bytes += size;
        r.last_access = r.last_access.max(Some(at));
        matching_blobs.insert(digest);
    }
    for p in store.pulls()? {
        let k = (p.upstream.to_string(), p.repo.to_string());
        if let Some(r) = per_repo.get_mut(&k) {
            r.pulls += p.pulls;
        }
    }
    let matching_bytes: u64 = matching_blobs
        .iter()
        .filter_map(|d| records.get(d).map(|r| r.0))
        .sum();
    let mut repos: Vec<RepoRow> = per_repo.into_iter().collect();
    sort_repos(&mut repos, args.sort.unwrap_or(SortKey::Size));
    let tmp_files = std::fs::read_dir(s.cache_dir.join("tmp")).map_or(0, |d| d.count());
    let limits = store.limits();
    if args.filter.json {
        return print_json(&StatsJson {
            cache_dir: s.cache_dir.display().to_string(),
            blobs: usage.blobs,
            index_records: store.record_count(),
            bytes: usage.bytes,
            max_size_bytes: limits.map(|l| l.max_bytes()),
            high_watermark: limits.map(|l| l.high()),
            high_watermark_bytes: limits.map(|l| l.high_bytes()),
            low_watermark: limits.map(|l| l.low()),
            low_watermark_bytes: limits.map(|l| l.low_bytes()),
            oldest_access: oldest.as_ref().map(|o| table::rfc3339(o.0)),
            newest_access: newest.as_ref().map(|o| table::rfc3339(o.0)),
            tmp_files,
            matching: Matching {
                repositories: repos.len(),
                blobs: matching_blobs.len(),
                bytes: matching_bytes,
            },
            repositories: repos
                .into_iter()
                .map(|((upstream, repository), r)| RepoStatsJson {
                    upstream,
                    repository,
                    blobs: r.blobs,
                    bytes: r.bytes,
                    last_access: r.last_access.map(table::rfc3339),
                    pulls: r.pulls,
                })
                .collect(),
        });
    }
    let now = SystemTime::now();
    let mut summary: Vec<(&str, String)> = vec![("cache", s.cache_dir.display().to_string())];
    summary.push((
        "blobs",
        format!("{} ({} index records)", usage.blobs, store.record_count()),
    ));
    let size = match limits {
        Some(l) => format!(
            "{} of {} ({:.1}%)",
            table::size(usage.bytes),
            table::size(l.max_bytes()),
            usage.bytes as f64 * 100.0 / l.max_bytes() as f64
        ),
        None => format!(
            "{} (no cache.max_size: unbounded)",
            table::size(usage.bytes)
        ),
    };
    summary.push(("size", size));
    if let Some(l) = limits {
        summary.push((
            "watermarks",
            format!(
                "evict above {} ({}) down to {} ({})",
                table::size(l.high_bytes()),
                l.high(),
                table::size(l.low_bytes()),
                l.low()
            ),
        ));
    }
    for (name, at) in [("oldest access", &oldest), ("newest access", &newest)] {
        let text = match at {
            Some((t, d)) => format!("{} ago ({d})", table::age(*t, now)),
            None => "-".into(),
        };
        summary.push((name, text));
    }
    summary.push(("tmp files", tmp_files.to_string()));
    for (key, value) in &summary {
        println!("{key:<14} {value}");
    }
    if usage.blobs != store.record_count() as u64 {
        println!(
            "note: files and index records differ; `pullgate cache gc` (or the next start) repairs the index"
        );
    }
    println!();
    let mut t = Table::new(&[
        "UPSTREAM",
        "REPOSITORY",
        "BLOBS>",
        "SIZE>",
        "LAST ACCESS>",
        "PULLS>",
    ]);
    let shown = repos.len();
    for ((upstream, repo), r) in repos {
        t.row(vec![
            upstream,
            repo,
            r.blobs.to_string(),
            table::size(r.bytes),
            r.last_access
                .map_or_else(|| "-".into(), |at| format!("{} ago", table::age(at, now))),
            r.pulls.to_string(),
        ]);
    }
    print!("{}", t.render());
    println!(
        "{shown} repositories, {} distinct blobs, {} (a blob in several repositories counts in each row)",
        matching_blobs.len(),
        table::size(matching_bytes)
    );
    Ok(())
}

#[derive(Serialize)]
struct TopJson {
    images: Vec<ImageJson>,
    /// Images with a count (after filters), of which `images` are the first `--limit`.
    total_images: usize,
}

#[derive(Serialize)]
struct ImageJson {
    image: String,
    upstream: String,
    repository: String,
    reference: String,
    pulls: u64,
    last_pulled: String,
}

/// `upstream/repo:tag`, or `upstream/repo@digest`: how a client would name it.
fn image_name(p: &pullgate_store::PullRecord) -> String {
    match &p.reference {
        Reference::Tag(t) => format!("{}/{}:{t}", p.upstream, p.repo),
        Reference::Digest(d) => format!("{}/{}@{d}", p.upstream, p.repo),
    }
}

/// Most pulled first; among equals the most recently pulled, then by name.
fn sort_top(pulls: &mut [(String, pullgate_store::PullRecord)]) {
    pulls.sort_by(|(an, a), (bn, b)| {
        (b.pulls, b.last_pulled, an).cmp(&(a.pulls, a.last_pulled, bn))
    });
}

fn top(s: &Settings, args: &TopArgs) -> Result<()> {
    let store = open_existing(s, true, None)?;
    let filter = args.filter.filter();
    let mut pulls: Vec<_> = store
        .pulls()?
        .into_iter()
        .filter(|p| filter.matches(p.upstream.as_str(), p.repo.as_str()))
        .map(|p| (image_name(&p), p))
        .collect();
    sort_top(&mut pulls);
    let total = pulls.len();
    pulls.truncate(args.limit);
    if args.filter.json {
        return print_json(&TopJson {
            total_images: total,
            images: pulls
                .into_iter()
                .map(|(image, p)| ImageJson {
                    image,
                    upstream: p.upstream.to_string(),
                    repository: p.repo.to_string(),
                    reference: p.reference.to_string(),
                    pulls: p.pulls,
                    last_pulled: table::rfc3339(p.last_pulled),
                })
                .collect(),
        });
    }
    let now = SystemTime::now();
    let mut t = Table::new(&["IMAGE", "PULLS>", "LAST PULLED>"]);
    let shown = pulls.len();
    for (image, p) in pulls {
        t.row(vec![
            image,
            p.pulls.to_string(),
            format!("{} ago", table::age(p.last_pulled, now)),
        ]);
    }
    print!("{}", t.render());
    println!("{shown} of {total} images");
    Ok(())
}

fn gc(s: &Settings, dry_run: bool) -> Result<()> {
    let would = if dry_run { "would " } else { "" };
    // Opening for real repairs at once (as a server's start does): that is the long part.
    let mut reporter = Reporter::for_command("repair");
    let store = open_existing(s, dry_run, (!dry_run).then_some(&mut reporter))?;
    let repair = if dry_run {
        let mut r = store.repair_reporting(true, &mut |p| reporter.update(Step::from(p)))?;
        r.tmp_removed = std::fs::read_dir(s.cache_dir.join("tmp")).map_or(0, |d| d.count() as u64);
        r
    } else {
        store.repaired_at_open().clone()
    };
    reporter.finish();
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
    let mut reporter = Reporter::for_command("evict");
    let mut step = Step {
        files: 0,
        files_total: None,
        bytes: 0,
        bytes_total: before.saturating_sub(limits.low_bytes()),
        hashed: None,
    };
    let summary = store.evict_blocking(None, dry_run, &mut |e| {
        step.files += 1;
        step.bytes += e.size;
        reporter.update(step);
        reporter.println(&format!(
            "{would}evict {} {} bytes (last access {})",
            e.digest,
            e.size,
            table::rfc3339(e.last_access)
        ));
    })?;
    reporter.finish();
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
    let store = match open(s, true, None) {
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
            open(s, true, None)
                .with_context(|| format!("opening the cache at {}", dir.display()))?
        }
        Err(e) => return Err(e).with_context(|| format!("opening the cache at {}", dir.display())),
    };
    let tmp = store.clear_tmp_blocking()?;
    let mut reporter = Reporter::for_command("rebuild");
    let r = store.rebuild_reporting(&mut |p| reporter.update(Step::from(p)))?;
    reporter.finish();
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use pullgate_oci::{RepoName, UpstreamId};
    use pullgate_store::{BlobRecord, PullRecord};

    use super::*;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn blob(seed: &str, size: u64, last: u64, repo: Option<&str>) -> BlobRow {
        BlobRow {
            digest: Digest::sha256_of(seed.as_bytes()),
            record: BlobRecord {
                size,
                media_type: None,
                last_access: at(last),
                origins: Vec::new(),
            },
            repos: Repos {
                names: repo
                    .map(|r| vec![("docker.io".to_owned(), r.to_owned())])
                    .unwrap_or_default(),
                count: usize::from(repo.is_some()),
                matched: true,
            },
        }
    }

    #[test]
    fn blobs_sort_by_size_age_and_name() {
        let mut rows = vec![
            blob("a", 10, 300, Some("z/app")),
            blob("b", 30, 100, None),
            blob("c", 20, 200, Some("a/app")),
        ];
        let order = |rows: &[BlobRow]| rows.iter().map(|r| r.record.size).collect::<Vec<_>>();
        sort_blobs(&mut rows, SortKey::Size);
        assert_eq!(order(&rows), [30, 20, 10]);
        sort_blobs(&mut rows, SortKey::Age);
        assert_eq!(order(&rows), [30, 20, 10], "least recently used first");
        sort_blobs(&mut rows, SortKey::Name);
        assert_eq!(order(&rows), [20, 10, 30], "by repository, unlinked last");
    }

    #[test]
    fn repositories_sort_by_size_age_and_name() {
        let row = |name: &str, bytes: u64, last: u64| {
            (
                ("docker.io".to_owned(), name.to_owned()),
                RepoStats {
                    blobs: 1,
                    bytes,
                    last_access: Some(at(last)),
                    pulls: 0,
                },
            )
        };
        let mut repos = vec![row("b", 5, 10), row("a", 1, 30), row("c", 9, 20)];
        let names = |r: &[RepoRow]| r.iter().map(|x| x.0 .1.clone()).collect::<Vec<_>>();
        sort_repos(&mut repos, SortKey::Size);
        assert_eq!(names(&repos), ["c", "b", "a"]);
        sort_repos(&mut repos, SortKey::Age);
        assert_eq!(names(&repos), ["b", "c", "a"]);
        sort_repos(&mut repos, SortKey::Name);
        assert_eq!(names(&repos), ["a", "b", "c"]);
    }

    #[test]
    fn top_puts_the_most_pulled_first_then_the_latest() {
        let rec = |repo: &str, pulls: u64, last: u64| {
            let p = PullRecord {
                upstream: UpstreamId::parse("docker.io").unwrap(),
                repo: RepoName::parse(repo).unwrap(),
                reference: Reference::parse("v1").unwrap(),
                pulls,
                last_pulled: at(last),
            };
            (image_name(&p), p)
        };
        let mut pulls = vec![
            rec("e2e/b", 1, 50),
            rec("e2e/a", 3, 10),
            rec("e2e/c", 1, 90),
        ];
        sort_top(&mut pulls);
        let names: Vec<&str> = pulls.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "docker.io/e2e/a:v1",
                "docker.io/e2e/c:v1",
                "docker.io/e2e/b:v1"
            ]
        );
        let filter = Filter {
            repo: Some(Pattern::new("*/b")),
            upstream: None,
        };
        let kept: Vec<_> = pulls
            .iter()
            .filter(|(_, p)| filter.matches(p.upstream.as_str(), p.repo.as_str()))
            .collect();
        assert_eq!(kept.len(), 1);
    }
}
