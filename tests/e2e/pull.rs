//! Pulls through pullgate with skopeo against CNCF Distribution: identical bytes, outage
//! survival, one upstream GET per blob under concurrency, ranges, and fills that outlive
//! their client.

use std::time::Duration;

use futures_util::StreamExt;

use crate::support::distribution::{Auth, Distribution};
use crate::support::eventually;
use crate::support::http::{self, request};
use crate::support::images::{self, sha256, Flavor, Pusher};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::skopeo;

const MIB: usize = 1024 * 1024;

use skopeo::pull as copy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_identical_content_and_survives_an_upstream_outage() {
    let mut upstream = Distribution::start(Auth::Anonymous);
    let push = Pusher::new(&upstream.url(), None);
    let big = images::image("big", &[64 * MIB, MIB, 300 * 1024], Flavor::Oci, "amd64");
    let docker = images::image("dock", &[MIB, 10 * 1024], Flavor::Docker, "amd64");
    let oci_index = images::index("multi", &[2 * MIB, 100 * 1024], Flavor::Oci);
    let docker_list = images::index("dlist", &[512 * 1024], Flavor::Docker);
    push.image("e2e/big", "v1", &big).await;
    push.image("e2e/dock", "latest", &docker).await;
    push.index("e2e/multi", "v1", &oci_index).await;
    push.index("e2e/deep/nested/dlist", "v1", &docker_list)
        .await;

    let mut opts = Options::new(&upstream.url());
    opts.tag_ttl = "1s".into();
    let pullgate = Pullgate::start(opts);
    let work = tempfile::tempdir().unwrap();

    let cases = [
        ("e2e/big:v1", false, big.manifest.digest.clone()),
        ("e2e/dock:latest", false, docker.manifest.digest.clone()),
        ("e2e/multi:v1", true, oci_index.manifest.digest.clone()),
        (
            "e2e/deep/nested/dlist:v1",
            true,
            docker_list.manifest.digest.clone(),
        ),
        (
            &*format!("e2e/big@{}", big.manifest.digest),
            false,
            big.manifest.digest.clone(),
        ),
    ];
    let mut via_mirror = Vec::new();
    for (i, (reference, all, digest)) in cases.iter().enumerate() {
        let direct = work.path().join(format!("direct-{i}"));
        let mirrored = work.path().join(format!("mirror-{i}"));
        copy(
            format!("{}/{reference}", upstream.host()),
            direct.clone(),
            *all,
        )
        .await
        .unwrap_or_else(|e| panic!("direct copy of {reference}: {e}"));
        copy(
            format!("{}/{reference}", pullgate.host()),
            mirrored.clone(),
            *all,
        )
        .await
        .unwrap_or_else(|e| panic!("copy of {reference} via pullgate: {e}\n{}", pullgate.log()));
        assert_eq!(skopeo::manifest_digest(&mirrored), *digest, "{reference}");
        assert_eq!(
            skopeo::contents(&direct),
            skopeo::contents(&mirrored),
            "{reference}: the mirror's copy differs from the upstream's"
        );
        via_mirror.push(mirrored);
    }
    // Every blob of the big image is in the cache at its digest path.
    for b in big.blobs() {
        assert!(
            pullgate.blob_path(&b.digest).exists(),
            "{} not cached",
            b.digest
        );
    }
    assert_eq!(pullgate.tmp_files(), 0);

    // The upstream goes away; tags have expired (ttl 1s): the cache still serves everything,
    // tags stale, digests as always.
    upstream.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for (i, (reference, all, _)) in cases.iter().enumerate() {
        let again = work.path().join(format!("again-{i}"));
        copy(
            format!("{}/{reference}", pullgate.host()),
            again.clone(),
            *all,
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "copy of {reference} with the upstream down: {e}\n{}",
                pullgate.log()
            )
        });
        assert_eq!(skopeo::contents(&again), skopeo::contents(&via_mirror[i]));
    }
    assert!(
        pullgate.log().contains("stale"),
        "stale serving is not logged:\n{}",
        pullgate.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_pulls_make_one_upstream_get_per_blob() {
    let upstream = Distribution::start(Auth::Anonymous);
    let img = images::image("conc", &[8 * MIB, 4 * MIB, MIB], Flavor::Docker, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("e2e/conc", "v1", &img)
        .await;
    let pullgate = Pullgate::start(Options::new(&upstream.url()));
    let work = tempfile::tempdir().unwrap();

    let pulls: Vec<_> = (0..16)
        .map(|i| {
            let dest = work.path().join(format!("c{i}"));
            let src = format!("{}/e2e/conc:v1", pullgate.host());
            tokio::spawn(copy(src, dest, false))
        })
        .collect();
    for p in pulls {
        p.await
            .unwrap()
            .unwrap_or_else(|e| panic!("concurrent pull: {e}\n{}", pullgate.log()));
    }
    let first = skopeo::contents(&work.path().join("c0"));
    for i in 1..16 {
        assert_eq!(skopeo::contents(&work.path().join(format!("c{i}"))), first);
    }
    for b in img.blobs() {
        let path = format!("/v2/e2e/conc/blobs/{}", b.digest);
        assert_eq!(
            upstream.count("GET", &path),
            1,
            "upstream GETs of {}: {:#?}",
            b.digest,
            upstream.access_log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_raw_gets_of_a_large_missing_blob_share_one_fill() {
    let upstream = Distribution::start(Auth::Anonymous);
    let img = images::image("raw", &[64 * MIB], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("e2e/raw", "v1", &img)
        .await;
    let pullgate = Pullgate::start(Options::new(&upstream.url()));
    let layer = img.layers[0].clone();
    let url = format!("{}/v2/e2e/raw/blobs/{}", pullgate.url(), layer.digest);

    let gets: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let resp = http::client().get(&url).send().await.expect("GET");
                assert_eq!(resp.status().as_u16(), 200);
                let mut hasher = images::StreamHash::default();
                let mut body = resp.bytes_stream();
                while let Some(chunk) = body.next().await {
                    hasher.update(&chunk.expect("body chunk"));
                }
                hasher.finish()
            })
        })
        .collect();
    for g in gets {
        assert_eq!(g.await.unwrap(), layer.digest);
    }
    assert_eq!(
        upstream.count("GET", &format!("/v2/e2e/raw/blobs/{}", layer.digest)),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_on_misses_and_hits_and_head_without_download() {
    let upstream = Distribution::start(Auth::Anonymous);
    let img = images::image("range", &[5 * MIB, MIB], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("e2e/range", "v1", &img)
        .await;
    let pullgate = Pullgate::start(Options::new(&upstream.url()));
    let layer = &img.layers[0];
    let size = layer.bytes.len();
    let url = format!("{}/v2/e2e/range/blobs/{}", pullgate.url(), layer.digest);

    // Miss.
    let r = request("GET", &url, &[("range", "bytes=100-199")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(&*format!("bytes 100-199/{size}"))
    );
    assert_eq!(r.header("content-length"), Some("100"));
    assert_eq!(r.bytes().as_ref(), &layer.bytes[100..200]);
    assert!(eventually(Duration::from_secs(20), || pullgate
        .blob_path(&layer.digest)
        .exists()));

    // Hit.
    let r = request("GET", &url, &[("range", "bytes=-10")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.bytes().as_ref(), &layer.bytes[size - 10..]);
    let r = request("GET", &url, &[("range", &format!("bytes={}-", size - 5))]).await;
    assert_eq!(r.bytes().as_ref(), &layer.bytes[size - 5..]);
    // The unit is case-insensitive (RFC 9110).
    let r = request("GET", &url, &[("range", "Bytes=10-19")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.bytes().as_ref(), &layer.bytes[10..20]);
    let r = request("GET", &url, &[("range", &format!("bytes={size}-"))]).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some(&*format!("bytes */{size}")));
    let r = request("GET", &url, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(sha256(r.bytes()), layer.digest);

    // 416 on a miss too, and a HEAD miss downloads nothing.
    let other = &img.layers[1];
    let other_url = format!("{}/v2/e2e/range/blobs/{}", pullgate.url(), other.digest);
    let r = request("HEAD", &other_url, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(&*other.bytes.len().to_string())
    );
    assert_eq!(r.header("docker-content-digest"), Some(&*other.digest));
    assert!(r.bytes().is_empty());
    let other_path = format!("/v2/e2e/range/blobs/{}", other.digest);
    assert_eq!(
        upstream.count("GET", &other_path),
        0,
        "a HEAD downloaded the blob"
    );
    assert_eq!(
        upstream.count("HEAD", &other_path),
        1,
        "{:#?}",
        upstream.access_log()
    );
    let r = request("GET", &other_url, &[("range", "bytes=99999999-")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.error_code(), "RANGE_INVALID");
    assert_eq!(
        r.header("content-range"),
        Some(&*format!("bytes */{}", other.bytes.len()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_completes_after_its_client_disconnects() {
    let upstream = Distribution::start(Auth::Anonymous);
    let img = images::image("gone", &[32 * MIB], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("e2e/gone", "v1", &img)
        .await;
    let pullgate = Pullgate::start(Options::new(&upstream.url()));
    let layer = &img.layers[0];
    let url = format!("{}/v2/e2e/gone/blobs/{}", pullgate.url(), layer.digest);
    {
        let resp = http::client().get(&url).send().await.unwrap();
        let mut body = resp.bytes_stream();
        let first = body.next().await.unwrap().unwrap();
        assert!(!first.is_empty());
        // The client hangs up after the first chunk.
    }
    assert!(
        eventually(Duration::from_secs(60), || pullgate
            .blob_path(&layer.digest)
            .exists()),
        "the fill did not complete:\n{}",
        pullgate.log()
    );
    let r = http::get(&url).await;
    assert_eq!(sha256(r.bytes()), layer.digest);
    assert_eq!(
        upstream.count("GET", &format!("/v2/e2e/gone/blobs/{}", layer.digest)),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_revalidate_with_head_and_digests_never_go_upstream_again() {
    let upstream = Distribution::start(Auth::Anonymous);
    let push = Pusher::new(&upstream.url(), None);
    let v1 = images::image("reval1", &[1024], Flavor::Oci, "amd64");
    let v2 = images::image("reval2", &[2048], Flavor::Oci, "amd64");
    push.image("e2e/reval", "t", &v1).await;
    let mut opts = Options::new(&upstream.url());
    opts.tag_ttl = "1s".into();
    let pullgate = Pullgate::start(opts);
    let tag_url = format!("{}/v2/e2e/reval/manifests/t", pullgate.url());
    let tag_path = "/v2/e2e/reval/manifests/t";
    let by_digest = |d: &str| format!("/v2/e2e/reval/manifests/{d}");

    let r = get_manifest(&tag_url).await;
    assert_eq!(
        r.header("docker-content-digest"),
        Some(&*v1.manifest.digest)
    );
    // Fresh: served from the index without asking the upstream.
    get_manifest(&tag_url).await;
    assert_eq!(upstream.count("HEAD", tag_path), 1);
    assert_eq!(upstream.count("GET", &by_digest(&v1.manifest.digest)), 1);

    // Expired and unchanged: one HEAD, no GET.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get_manifest(&tag_url).await;
    assert_eq!(
        r.header("docker-content-digest"),
        Some(&*v1.manifest.digest)
    );
    assert_eq!(upstream.count("HEAD", tag_path), 2);
    assert_eq!(upstream.count("GET", tag_path), 0);
    assert_eq!(upstream.count("GET", &by_digest(&v1.manifest.digest)), 1);

    // Moved upstream: the HEAD sees a new digest, which is fetched once.
    push.image("e2e/reval", "t", &v2).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get_manifest(&tag_url).await;
    assert_eq!(
        r.header("docker-content-digest"),
        Some(&*v2.manifest.digest)
    );
    assert_eq!(r.bytes().as_ref(), &v2.manifest.bytes[..]);
    assert_eq!(upstream.count("GET", &by_digest(&v2.manifest.digest)), 1);

    // By digest, cached content never goes upstream again.
    for _ in 0..3 {
        let r = get_manifest(&format!(
            "{}/v2/e2e/reval/manifests/{}",
            pullgate.url(),
            v1.manifest.digest
        ))
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(upstream.count("GET", &by_digest(&v1.manifest.digest)), 1);
    assert_eq!(upstream.count("HEAD", &by_digest(&v1.manifest.digest)), 0);
}

async fn get_manifest(url: &str) -> crate::support::http::Reply {
    let r = request(
        "GET",
        url,
        &[("accept", "application/vnd.oci.image.manifest.v1+json")],
    )
    .await;
    assert_eq!(r.status, 200, "{url}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_blob_is_not_served_under_a_repository_that_lacks_it() {
    let upstream = Distribution::start(Auth::Anonymous);
    let push = Pusher::new(&upstream.url(), None);
    let private = images::image("private", &[MIB], Flavor::Oci, "amd64");
    push.image("e2e/private", "v1", &private).await;
    // Another repository shares a layer with it upstream.
    push.image("e2e/shared", "v1", &private).await;
    let pullgate = Pullgate::start(Options::new(&upstream.url()));
    let layer = &private.layers[0].digest;

    let r = http::get(&format!("{}/v2/e2e/private/blobs/{layer}", pullgate.url())).await;
    assert_eq!(r.status, 200);
    assert!(eventually(Duration::from_secs(10), || pullgate
        .blob_path(layer)
        .exists()));

    // Cached, but e2e/other does not hold it upstream: 404, checked with a HEAD.
    let r = http::get(&format!("{}/v2/e2e/other/blobs/{layer}", pullgate.url())).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
    assert_eq!(
        upstream.count("HEAD", &format!("/v2/e2e/other/blobs/{layer}")),
        1
    );

    // e2e/shared does: served from the cache after one HEAD, and remembered.
    for _ in 0..2 {
        let r = http::get(&format!("{}/v2/e2e/shared/blobs/{layer}", pullgate.url())).await;
        assert_eq!(r.status, 200);
        assert_eq!(sha256(r.bytes()), *layer);
    }
    assert_eq!(
        upstream.count("HEAD", &format!("/v2/e2e/shared/blobs/{layer}")),
        1
    );
    assert_eq!(
        upstream.count("GET", &format!("/v2/e2e/shared/blobs/{layer}")),
        0
    );
}
