//! The S3 backend end to end: pullgate between skopeo and a real Distribution, its blobs
//! in a SeaweedFS bucket (`weed mini`, started by the test on loopback). Two replicas on
//! one bucket, a restart, and the bucket going away and coming back.

use std::time::Duration;

use pullgate_store::{Backend, S3Config, S3};

use crate::support::distribution::{Auth, Distribution};
use crate::support::http::request;
use crate::support::images::{self, Flavor, Image, Pusher};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::seaweed::{Seaweed, BUCKET};
use crate::support::skopeo;

const MIB: usize = 1024 * 1024;
const REPO: &str = "e2e/s3";
const PREFIX: &str = "e2e/";

/// A replica of pullgate in front of `upstream`, its blobs in `weed`'s bucket, its index
/// in a cache directory of its own.
fn replica(upstream: &Distribution, weed: &Seaweed) -> Pullgate {
    let mut opts = Options::new(&upstream.url());
    opts.extra = format!(
        "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"{BUCKET}\"\nprefix = \"{PREFIX}\"\n\
         endpoint = \"{}\"\npath_style = true\ncredentials = \"{}\"\ntimeout = \"10s\"\n",
        weed.endpoint(),
        weed.credentials_dir().display()
    );
    Pullgate::start(opts)
}

/// The bucket as the tests see it, through the same client pullgate uses.
fn bucket(weed: &Seaweed) -> S3 {
    let mut c = S3Config::new(BUCKET, "us-east-1");
    c.prefix = PREFIX.into();
    c.endpoint = Some(weed.endpoint());
    c.path_style = true;
    c.credentials = Some(weed.credentials_dir());
    S3::connect(&c).expect("S3 client")
}

/// A SeaweedFS whose bucket answers: the gateway opens its port before the bucket made
/// at start-up is there.
async fn start_weed() -> Seaweed {
    let weed = tokio::task::spawn_blocking(Seaweed::start)
        .await
        .expect("start weed");
    bucket_answers(&weed).await;
    weed
}

async fn bucket_answers(weed: &Seaweed) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let s3 = bucket(weed);
    while let Err(e) = s3.unfinished_uploads().await {
        assert!(
            std::time::Instant::now() < deadline,
            "bucket never answered: {e}\n{}",
            weed.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn upstream_with_image(seed: &str) -> (Distribution, Image) {
    let upstream = Distribution::start(Auth::Anonymous);
    // One layer of several parts (8 MiB each), one under a part, and the config.
    let img = images::image(seed, &[20 * MIB, 300 * 1024], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image(REPO, "v1", &img)
        .await;
    (upstream, img)
}

fn blob_gets(upstream: &Distribution, img: &Image) -> usize {
    img.blobs()
        .map(|b| upstream.count("GET", &format!("/v2/{REPO}/blobs/{}", b.digest)))
        .sum()
}

fn blob_heads(upstream: &Distribution, img: &Image) -> usize {
    img.blobs()
        .map(|b| upstream.count("HEAD", &format!("/v2/{REPO}/blobs/{}", b.digest)))
        .sum()
}

/// skopeo's copy of the image through `p`, checked against the image's digests.
async fn pull_and_check(p: &Pullgate, img: &Image, dest: std::path::PathBuf) {
    skopeo::pull(format!("{}/{REPO}:v1", p.host()), dest.clone(), false)
        .await
        .unwrap_or_else(|e| panic!("copy through pullgate: {e}\n{}", p.log()));
    assert_eq!(skopeo::manifest_digest(&dest), img.manifest.digest);
    let files = skopeo::contents(&dest);
    for b in img.blobs() {
        let hex = b.digest.trim_start_matches("sha256:");
        assert_eq!(files.get(hex), Some(&b.digest), "{}", b.digest);
    }
}

fn digest(d: &str) -> pullgate_oci::Digest {
    pullgate_oci::Digest::parse(d).expect("digest")
}

fn no_blob_files(p: &Pullgate) -> bool {
    walk_files(&p.cache_dir().join("blobs")) == 0
}

fn walk_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    walk_files(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_through_the_s3_backend_and_the_blobs_are_in_the_bucket() {
    let weed = start_weed().await;
    let (upstream, img) = upstream_with_image("s3-pull").await;
    let p = replica(&upstream, &weed);
    let work = tempfile::tempdir().unwrap();
    pull_and_check(&p, &img, work.path().join("copy")).await;
    assert_eq!(blob_gets(&upstream, &img), img.blobs().count());

    // Every blob and the manifest are objects of the bucket, of their sizes; nothing of
    // them is in the cache directory, and no upload is left unfinished.
    let s3 = bucket(&weed);
    for b in img.blobs().chain(std::iter::once(&img.manifest)) {
        assert_eq!(
            s3.stat(&digest(&b.digest)).await.unwrap(),
            Some(b.bytes.len() as u64),
            "{} in the bucket",
            b.digest
        );
    }
    assert!(no_blob_files(&p), "blob files in the cache directory");
    assert_eq!(s3.unfinished_uploads().await.unwrap(), 0);

    // A range of the large layer, served from the bucket, across a part boundary.
    let layer = &img.layers[0];
    let (start, end) = (8 * MIB - 100, 8 * MIB + 99);
    let r = request(
        "GET",
        &format!("{}/v2/{REPO}/blobs/{}", p.url(), layer.digest),
        &[("Range", &format!("bytes={start}-{end}"))],
    )
    .await;
    assert_eq!(r.status, 206, "{}", p.log());
    assert_eq!(&r.bytes()[..], &layer.bytes[start..=end]);
    assert_eq!(blob_gets(&upstream, &img), img.blobs().count());
}

/// Replica B serves what A filled with no blob GET (a HEAD per blob: the access check),
/// refuses it under a repository the upstream says lacks it, and restarted starts warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_serves_what_another_filled_and_a_restarted_one_starts_warm() {
    let weed = start_weed().await;
    let (upstream, img) = upstream_with_image("s3-replicas").await;
    let a = replica(&upstream, &weed);
    let mut b = replica(&upstream, &weed);
    let work = tempfile::tempdir().unwrap();

    pull_and_check(&a, &img, work.path().join("a")).await;
    let gets = blob_gets(&upstream, &img);
    assert_eq!(gets, img.blobs().count());
    let heads = blob_heads(&upstream, &img);

    // Isolation holds across replicas: a repository of the same upstream that does not
    // hold a blob A filled is refused it by B (the upstream's HEAD says 404), without a GET.
    let other = images::image("s3-other", &[1000], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("e2e/other", "v1", &other)
        .await;
    let layer = &img.layers[1];
    let r = request(
        "GET",
        &format!("{}/v2/e2e/other/blobs/{}", b.url(), layer.digest),
        &[],
    )
    .await;
    assert_eq!(r.status, 404, "{}", b.log());
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
    let path = format!("/v2/e2e/other/blobs/{}", layer.digest);
    assert_eq!(upstream.count("GET", &path), 0);
    assert_eq!(upstream.count("HEAD", &path), 1);

    // B has its own (empty) index: it finds the blobs in the bucket, and the access
    // check confirms with a HEAD per blob that the repository holds them: no GET.
    pull_and_check(&b, &img, work.path().join("b")).await;
    assert_eq!(blob_gets(&upstream, &img), gets, "B fetched blobs again");
    assert_eq!(
        blob_heads(&upstream, &img),
        heads + img.blobs().count(),
        "B's access check"
    );
    assert!(no_blob_files(&b));

    // Restarted, B starts warm: no blob GET, and its links spare it the HEADs too.
    b.terminate(Duration::from_secs(20));
    b.restart();
    pull_and_check(&b, &img, work.path().join("b-again")).await;
    assert_eq!(
        blob_gets(&upstream, &img),
        gets,
        "restarted B fetched blobs"
    );
    assert_eq!(blob_heads(&upstream, &img), heads + img.blobs().count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bucket_is_a_503_unavailable_and_then_recovers() {
    let mut weed = start_weed().await;
    let (upstream, img) = upstream_with_image("s3-outage").await;
    let p = replica(&upstream, &weed);
    let work = tempfile::tempdir().unwrap();
    pull_and_check(&p, &img, work.path().join("before")).await;

    let layer = &img.layers[1];
    let url = format!("{}/v2/{REPO}/blobs/{}", p.url(), layer.digest);
    weed.stop();
    for method in ["GET", "HEAD"] {
        let r = request(method, &url, &[]).await;
        assert_eq!(r.status, 503, "{method}: {}", p.log());
        if method == "GET" {
            assert_eq!(r.error_code(), "UNAVAILABLE");
        }
    }
    // A blob the mirror never saw: the fill cannot look in the bucket either.
    let cold = images::Blob::new("application/octet-stream", images::noise("cold", 1000));
    Pusher::new(&upstream.url(), None).blob(REPO, &cold).await;
    let r = request(
        "GET",
        &format!("{}/v2/{REPO}/blobs/{}", p.url(), cold.digest),
        &[],
    )
    .await;
    assert_eq!(r.status, 503, "{}", p.log());
    assert_eq!(r.error_code(), "UNAVAILABLE");

    weed.run();
    bucket_answers(&weed).await;
    let r = request("GET", &url, &[]).await;
    assert_eq!(r.status, 200, "{}", p.log());
    assert_eq!(&r.bytes()[..], &layer.bytes[..]);
    pull_and_check(&p, &img, work.path().join("after")).await;
    let log = p.log();
    assert!(!log.contains("panicked"), "{log}");
    // No credential in anything pullgate wrote.
    assert!(!log.contains(crate::support::seaweed::SECRET_KEY));
}
