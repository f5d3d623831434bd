//! A cache disk that is full (of bytes or of inodes) or read-only. Where evicting least
//! recently used blobs makes room, it does; otherwise pulls still succeed, streamed straight
//! from the upstream (verified on the way) without caching; a log line and metrics say so;
//! no partial file is left; caching resumes once the disk takes writes again.

use crate::support::fault::{Fault, FaultAuth, FaultUpstream};
use std::time::Duration;

use crate::support::eventually;
use crate::support::http::{self, get, metric, request};
use crate::support::images::{self, sha256, Blob, Flavor};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::skopeo;
use crate::support::tmpfs::Tmpfs;

const MIB: usize = 1024 * 1024;

fn blob(seed: &str, len: usize) -> Blob {
    Blob::new("application/octet-stream", images::noise(seed, len))
}

/// pullgate in front of `fault`, its cache at `cache` (the small filesystem's mount point).
fn start_on(cache: &std::path::Path, fault: &FaultUpstream) -> Pullgate {
    let mut opts = Options::new(&fault.url());
    opts.cache_dir = Some(cache.to_owned());
    Pullgate::start(opts)
}

/// The end of a test: no panic in the log; pullgate stops before its disk is unmounted.
fn finish(pullgate: Pullgate, disk: Tmpfs) {
    let log = pullgate.log();
    assert!(!log.contains("panicked"), "{log}");
    drop(pullgate);
    drop(disk);
}

/// Files anywhere under the cache's `blobs/`.
fn committed_files(pullgate: &Pullgate) -> usize {
    walk(&pullgate.cache_dir().join("blobs"))
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_disk_streams_pulls_through_uncached() {
    let work = tempfile::tempdir().unwrap();
    // 4 MiB: room for the index and small blobs, not for a 6 MiB layer.
    let disk = Tmpfs::mount(&work.path().join("cache"), "4m");
    let fault = FaultUpstream::start(FaultAuth::None);
    let img = images::image("full-disk", &[6 * MIB, 64 * 1024], Flavor::Oci, "amd64");
    fault.add_image("e2e/full", "v1", &img);
    let big = &img.layers[0];
    let small = &img.layers[1];
    let corrupt = blob("full-corrupt", 6 * MIB);
    let chunked = blob("full-chunked", 6 * MIB);
    fault.add_blob(&corrupt);
    fault.add_blob(&chunked);
    fault.set_fault(&corrupt.digest, Fault::Corrupt);
    fault.set_fault(&chunked.digest, Fault::Chunked);
    let pullgate = start_on(&work.path().join("cache"), &fault);
    let base = format!("{}/v2/e2e/full/blobs", pullgate.url());

    // Too big for the disk: every client still gets it whole, verified, uncached.
    let url = format!("{base}/{}", big.digest);
    let replies = futures_util::future::join_all((0..4).map(|_| get(&url))).await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", pullgate.log());
        assert_eq!(
            r.header("content-length"),
            Some(&*big.bytes.len().to_string())
        );
        assert_eq!(sha256(r.bytes()), big.digest);
    }
    let r = request("GET", &url, &[("range", "bytes=100-199")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.bytes().as_ref(), &big.bytes[100..200]);
    http::fills_settled(&pullgate.url()).await;
    let pg = pullgate.url();
    assert!(metric(&pg, "pullgate_cache_bypassed_total").await >= 5.0);
    assert!(metric(&pg, "pullgate_cache_write_errors_total").await >= 1.0);
    assert_eq!(metric(&pg, "pullgate_cache_writable").await, 0.0);
    assert!(pullgate
        .log()
        .contains("cache disk is full or unwritable: pulls are served straight from the upstream"));
    assert!(!pullgate.blob_path(&big.digest).exists());
    assert_eq!(pullgate.tmp_files(), 0);

    // Uncached is not unverified: bad bytes still fail the stream.
    let r = get(&format!("{base}/{}", corrupt.digest)).await;
    assert!(
        r.status != 200 || r.body.is_err(),
        "a clean body of bad bytes"
    );
    assert!(!pullgate.blob_path(&corrupt.digest).exists());

    // What fits is cached, and the disk is reported writable again.
    let r = get(&format!("{base}/{}", small.digest)).await;
    assert_eq!(sha256(r.bytes()), small.digest);
    http::fills_settled(&pg).await;
    assert!(pullgate.blob_path(&small.digest).exists());
    assert_eq!(metric(&pg, "pullgate_cache_writable").await, 1.0);
    assert!(pullgate.log().contains("caching resumed"));

    // A real client pulls the whole image through the full disk.
    let dest = work.path().join("pulled");
    skopeo::pull(
        format!("{}/e2e/full:v1", pullgate.host()),
        dest.clone(),
        false,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pullgate.log()));
    assert_eq!(skopeo::manifest_digest(&dest), img.manifest.digest);

    // No size announced: nothing to reserve, so the disk fills up midway. That fill's
    // client fails, its partial file is deleted, and for a while fills do not even try to
    // cache (so a retry does not fail the same way).
    let r = get(&format!("{base}/{}", chunked.digest)).await;
    assert!(r.status != 200 || r.body.is_err());
    http::fills_settled(&pg).await;
    assert_eq!(pullgate.tmp_files(), 0);
    assert!(!pullgate.blob_path(&chunked.digest).exists());
    assert_eq!(metric(&pg, "pullgate_cache_writable").await, 0.0);
    let errors = metric(&pg, "pullgate_cache_write_errors_total").await;
    let other = blob("full-other", 32 * 1024);
    fault.add_blob(&other);
    let r = get(&format!("{base}/{}", other.digest)).await;
    assert_eq!(sha256(r.bytes()), other.digest);
    http::fills_settled(&pg).await;
    assert!(
        !pullgate.blob_path(&other.digest).exists(),
        "cached during the pause"
    );
    assert_eq!(
        metric(&pg, "pullgate_cache_write_errors_total").await,
        errors
    );

    finish(pullgate, disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_cache_disk_serves_uncached_until_it_is_writable_again() {
    let work = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&work.path().join("cache"), "64m");
    let fault = FaultUpstream::start(FaultAuth::None);
    let before = images::image("ro-before", &[MIB], Flavor::Oci, "amd64");
    let during = images::image("ro-during", &[2 * MIB], Flavor::Oci, "amd64");
    let after = images::image("ro-after", &[MIB + 1], Flavor::Oci, "amd64");
    fault.add_image("e2e/ro", "before", &before);
    fault.add_image("e2e/ro", "during", &during);
    fault.add_image("e2e/ro", "after", &after);
    let pullgate = start_on(&work.path().join("cache"), &fault);
    let pg = pullgate.url();
    let pull = |tag: &'static str| {
        let dest = work.path().join(tag);
        let src = format!("{}/e2e/ro:{tag}", pullgate.host());
        async move {
            skopeo::pull(src, dest.clone(), false)
                .await
                .unwrap_or_else(|e| panic!("{tag}: {e}"));
            skopeo::manifest_digest(&dest)
        }
    };

    assert_eq!(pull("before").await, before.manifest.digest);
    http::fills_settled(&pg).await;
    let cached_files = committed_files(&pullgate);
    assert!(pullgate.blob_path(&before.layers[0].digest).exists());

    // Where new content is written (tmp/, then renamed into blobs/) refuses writes: EROFS.
    let frozen = disk.read_only("tmp");
    // New content comes straight from the upstream; cached content is still served.
    assert_eq!(pull("during").await, during.manifest.digest);
    let r = get(&format!("{pg}/v2/e2e/ro/blobs/{}", before.layers[0].digest)).await;
    assert_eq!(sha256(r.bytes()), before.layers[0].digest);
    http::fills_settled(&pg).await;
    assert_eq!(committed_files(&pullgate), cached_files);
    assert_eq!(metric(&pg, "pullgate_cache_writable").await, 0.0);
    // The manifest and both blobs of the new image, at least.
    assert!(metric(&pg, "pullgate_cache_bypassed_total").await >= 3.0);
    assert!(pullgate.log().contains("cache disk is full or unwritable"));

    drop(frozen);
    assert_eq!(pull("after").await, after.manifest.digest);
    http::fills_settled(&pg).await;
    assert!(pullgate.blob_path(&after.layers[0].digest).exists());
    assert_eq!(metric(&pg, "pullgate_cache_writable").await, 1.0);
    assert_eq!(pullgate.tmp_files(), 0);
    finish(pullgate, disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_disk_that_fills_up_evicts_the_least_recently_used_to_make_room() {
    let work = tempfile::tempdir().unwrap();
    // No cache.max_size at all: the disk is the only limit.
    let disk = Tmpfs::mount(&work.path().join("cache"), "16m");
    let fault = FaultUpstream::start(FaultAuth::None);
    let old: Vec<Blob> = (0..3)
        .map(|i| blob(&format!("room-{i}"), 3 * MIB))
        .collect();
    for b in &old {
        fault.add_blob(b);
    }
    let pullgate = start_on(&work.path().join("cache"), &fault);
    let pg = pullgate.url();
    let base = format!("{pg}/v2/e2e/room/blobs");
    let fetch = |b: &Blob| {
        let url = format!("{base}/{}", b.digest);
        let digest = b.digest.clone();
        async move {
            let r = get(&url).await;
            assert_eq!(r.status, 200);
            assert_eq!(sha256(r.bytes()), digest);
        }
    };
    // Oldest first: their access times order them for eviction.
    for b in &old {
        fetch(b).await;
        http::fills_settled(&pg).await;
        assert!(pullgate.blob_path(&b.digest).exists());
    }

    // A blob that needs about 1.5 MiB more than is free: the oldest blob makes room.
    let free = disk.free_bytes() as usize;
    let new = blob("room-new", free + MIB / 2);
    fault.add_blob(&new);
    fetch(&new).await;
    http::fills_settled(&pg).await;
    assert!(
        pullgate.blob_path(&new.digest).exists(),
        "not cached\n{}",
        pullgate.log()
    );
    assert!(!pullgate.blob_path(&old[0].digest).exists(), "oldest kept");
    assert!(
        pullgate.blob_path(&old[1].digest).exists(),
        "evicted more than needed"
    );
    assert!(
        pullgate.blob_path(&old[2].digest).exists(),
        "newest evicted"
    );
    assert_eq!(metric(&pg, "pullgate_cache_evictions_total").await, 1.0);
    assert_eq!(metric(&pg, "pullgate_cache_writable").await, 1.0);
    assert_eq!(metric(&pg, "pullgate_cache_write_errors_total").await, 0.0);
    assert_eq!(metric(&pg, "pullgate_cache_bypassed_total").await, 0.0);
    assert!(pullgate
        .log()
        .contains("evicting least recently used blobs to make room"));
    assert_eq!(pullgate.tmp_files(), 0);
    // The index forgets the repository's link to what was evicted.
    assert!(
        eventually(Duration::from_secs(10), || pullgate.log().contains(
            "cache index pruned of tags and links to evicted blobs tags_removed=0 links_removed=1"
        )),
        "{}",
        pullgate.log()
    );

    // What was evicted is fetched again, and makes room in its turn.
    fetch(&old[0]).await;
    http::fills_settled(&pg).await;
    assert!(pullgate.blob_path(&old[0].digest).exists());
    assert!(!pullgate.blob_path(&old[1].digest).exists());

    // A blob bigger than the whole disk evicts nothing: it streams through uncached, and
    // the cache keeps what it has.
    let evictions = metric(&pg, "pullgate_cache_evictions_total").await;
    let huge = blob("room-huge", 20 * MIB);
    fault.add_blob(&huge);
    fetch(&huge).await;
    http::fills_settled(&pg).await;
    assert!(!pullgate.blob_path(&huge.digest).exists());
    assert_eq!(
        metric(&pg, "pullgate_cache_evictions_total").await,
        evictions
    );
    for b in [&old[0], &old[2], &new] {
        assert!(pullgate.blob_path(&b.digest).exists());
    }
    assert!(metric(&pg, "pullgate_cache_bypassed_total").await >= 1.0);
    assert_eq!(pullgate.tmp_files(), 0);

    finish(pullgate, disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_disk_out_of_inodes_evicts_to_make_room() {
    let work = tempfile::tempdir().unwrap();
    // Bytes to spare, few inodes: statvfs shows room, and creating a file fails (ENOSPC).
    let disk = Tmpfs::mount_with(&work.path().join("cache"), "size=64m,nr_inodes=64");
    let fault = FaultUpstream::start(FaultAuth::None);
    let pullgate = start_on(&work.path().join("cache"), &fault);
    let pg = pullgate.url();
    let free = disk.free_inodes();
    // Each blob takes a file and, mostly, a directory of its own: more than fit.
    let blobs: Vec<Blob> = (0..free)
        .map(|i| blob(&format!("inode-{i}"), 64 * 1024))
        .collect();
    for b in &blobs {
        fault.add_blob(b);
    }
    let mut cached = 0;
    for b in &blobs {
        let r = get(&format!("{pg}/v2/e2e/inodes/blobs/{}", b.digest)).await;
        assert_eq!(r.status, 200, "{}", pullgate.log());
        assert_eq!(sha256(r.bytes()), b.digest);
        http::fills_settled(&pg).await;
        if pullgate.blob_path(&b.digest).exists() {
            cached += 1;
        }
    }
    assert!(disk.free_inodes() < 8, "the inodes never ran out");
    assert_eq!(cached, blobs.len(), "{}", pullgate.log());
    assert!(metric(&pg, "pullgate_cache_evictions_total").await >= 1.0);
    assert_eq!(metric(&pg, "pullgate_cache_bypassed_total").await, 0.0);
    assert_eq!(metric(&pg, "pullgate_cache_write_errors_total").await, 0.0);
    assert!(pullgate.blob_path(&blobs[blobs.len() - 1].digest).exists());
    assert!(
        !pullgate.blob_path(&blobs[0].digest).exists(),
        "the oldest was kept"
    );
    assert_eq!(pullgate.tmp_files(), 0);
    finish(pullgate, disk);
}
