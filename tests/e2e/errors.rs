//! The API's answers to bad or unsupported requests: status, OCI error code, headers.

use crate::support::distribution::{Auth, Distribution};
use crate::support::fault::{FaultAuth, FaultUpstream};
use crate::support::http::{get, request};
use crate::support::images::{self, Flavor, Pusher};
use crate::support::pullgate::{Options, Pullgate};

const ZERO_DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_unsupported_requests_get_oci_errors() {
    let upstream = Distribution::start(Auth::Anonymous);
    let img = images::image("err", &[1024], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("e2e/err", "v1", &img)
        .await;
    let pullgate = Pullgate::start(Options::new(&upstream.url()));
    let base = pullgate.url();

    let r = get(&format!("{base}/v2/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    let cases: &[(&str, String, u16, &str)] = &[
        (
            "GET",
            format!("{base}/v2/Bad_Name/manifests/v1"),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            format!("{base}/v2/e2e/x-/manifests/v1"),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            format!("{base}/v2/e2e//x/manifests/v1"),
            400,
            "NAME_INVALID",
        ),
        // A tag that cannot exist is an unknown manifest, as Distribution answers.
        (
            "GET",
            format!("{base}/v2/e2e/err/manifests/-bad-tag"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "GET",
            format!("{base}/v2/e2e/err/manifests/.INVALID"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "HEAD",
            format!("{base}/v2/e2e/err/manifests/.INVALID"),
            404,
            "",
        ),
        (
            "GET",
            format!("{base}/v2/e2e/err/blobs/sha256:xyz"),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            format!("{base}/v2/e2e/err/blobs/md5:abc"),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            format!("{base}/v2/e2e/err/manifests/nope"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("HEAD", format!("{base}/v2/e2e/err/manifests/nope"), 404, ""),
        (
            "GET",
            format!("{base}/v2/e2e/err/manifests/{ZERO_DIGEST}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "GET",
            format!("{base}/v2/e2e/err/blobs/{ZERO_DIGEST}"),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            "GET",
            format!("{base}/v2/e2e/nothing-here/manifests/v1"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "POST",
            format!("{base}/v2/e2e/err/blobs/uploads/"),
            405,
            "UNSUPPORTED",
        ),
        (
            "PUT",
            format!("{base}/v2/e2e/err/manifests/v2"),
            405,
            "UNSUPPORTED",
        ),
        (
            "DELETE",
            format!("{base}/v2/e2e/err/manifests/{}", img.manifest.digest),
            405,
            "UNSUPPORTED",
        ),
        (
            "DELETE",
            format!("{base}/v2/e2e/err/blobs/{}", img.layers[0].digest),
            405,
            "UNSUPPORTED",
        ),
        (
            "PATCH",
            format!("{base}/v2/e2e/err/blobs/uploads/some-uuid"),
            405,
            "UNSUPPORTED",
        ),
        ("GET", format!("{base}/v2/_catalog"), 405, "UNSUPPORTED"),
    ];
    for (method, url, status, code) in cases {
        let r = request(method, url, &[]).await;
        assert_eq!(r.status, *status, "{method} {url}");
        if !code.is_empty() {
            assert_eq!(r.error_code(), *code, "{method} {url}");
            assert!(
                r.header("content-type")
                    .is_some_and(|c| c.starts_with("application/json")),
                "{method} {url}"
            );
        }
    }
    // Answered here: no upstream is asked about a tag that cannot exist.
    for method in ["GET", "HEAD"] {
        assert_eq!(
            upstream.count(method, "/v2/e2e/err/manifests/.INVALID"),
            0,
            "{method}"
        );
    }
    assert!(!pullgate.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_honour_accept_and_carry_their_exact_headers() {
    let upstream = Distribution::start(Auth::Anonymous);
    let idx = images::index("acc", &[1024], Flavor::Oci);
    Pusher::new(&upstream.url(), None)
        .index("e2e/acc", "v1", &idx)
        .await;
    let pullgate = Pullgate::start(Options::new(&upstream.url()));
    let url = format!("{}/v2/e2e/acc/manifests/v1", pullgate.url());

    // Docker sends Accept as several header lines.
    let r = request(
        "GET",
        &url,
        &[
            (
                "accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            ),
            ("accept", "application/vnd.oci.image.index.v1+json"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes().as_ref(), &idx.manifest.bytes[..]);
    assert_eq!(
        r.header("content-type"),
        Some(idx.manifest.media_type.as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(&*idx.manifest.digest)
    );
    assert_eq!(
        r.header("content-length"),
        Some(&*idx.manifest.bytes.len().to_string())
    );
    assert_eq!(r.header("content-encoding"), None);

    let r = request(
        "HEAD",
        &url,
        &[("accept", "application/vnd.oci.image.index.v1+json")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(&*idx.manifest.digest)
    );
    assert!(r.bytes().is_empty());

    // A client that cannot read an index gets the linux/amd64 manifest.
    let r = request(
        "GET",
        &url,
        &[("accept", "application/vnd.oci.image.manifest.v1+json")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(&*idx.images[0].manifest.digest)
    );
    assert_eq!(r.bytes().as_ref(), &idx.images[0].manifest.bytes[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_and_referrers_pass_through() {
    let upstream = Distribution::start(Auth::Anonymous);
    let img = images::image("tags", &[1024], Flavor::Oci, "amd64");
    let push = Pusher::new(&upstream.url(), None);
    for tag in ["a", "b", "c"] {
        push.image("e2e/tags", tag, &img).await;
    }
    let pullgate = Pullgate::start(Options::new(&upstream.url()));

    let r = get(&format!("{}/v2/e2e/tags/tags/list", pullgate.url())).await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(r.bytes()).unwrap();
    assert_eq!(v["name"], "e2e/tags");
    let mut all: Vec<String> = serde_json::from_value(v["tags"].clone()).unwrap();
    all.sort();
    assert_eq!(all, ["a", "b", "c"]);

    let r = get(&format!("{}/v2/e2e/no-such-repo/tags/list", pullgate.url())).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "NAME_UNKNOWN");

    // Distribution 2.8 paginates no tags and has no referrers API; our own upstream does.
    let fault = FaultUpstream::start(FaultAuth::None);
    for tag in ["a", "b", "c"] {
        fault.add_image("e2e/tags", tag, &img);
    }
    let mut opts = Options::new(&fault.url());
    opts.upstream_name = "fault.example".into();
    let pullgate = Pullgate::start(opts);
    // Through a host-prefixed name, so the upstream's Link must be rewritten back to it.
    let client_name = "fault.example/e2e/tags";
    let r = get(&format!(
        "{}/v2/{client_name}/tags/list?n=2",
        pullgate.url()
    ))
    .await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(r.bytes()).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    let link = r.header("link").expect("a Link to the next page");
    assert_eq!(
        link,
        format!("</v2/{client_name}/tags/list?n=2&last=b>; rel=\"next\"")
    );
    let r = get(&format!(
        "{}/v2/{client_name}/tags/list?n=2&last=b",
        pullgate.url()
    ))
    .await;
    let v: serde_json::Value = serde_json::from_slice(r.bytes()).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["c"]));
    assert_eq!(r.header("link"), None);

    let r = get(&format!(
        "{}/v2/e2e/ref/referrers/{}?artifactType=application%2Fvnd.example.sbom",
        pullgate.url(),
        img.manifest.digest
    ))
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    // The upstream filtered: the client is told so, and does not filter again.
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    let v: serde_json::Value = serde_json::from_slice(r.bytes()).unwrap();
    assert_eq!(v["manifests"], serde_json::json!([]));
    let r = get(&format!(
        "{}/v2/e2e/ref/referrers/{}",
        pullgate.url(),
        img.manifest.digest
    ))
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("oci-filters-applied"),
        None,
        "nothing was filtered"
    );
    let seen = fault.requests_with_query();
    assert!(
        seen.iter().any(|r| r
            == &format!(
                "GET /v2/e2e/ref/referrers/{}?artifactType=application%2Fvnd.example.sbom",
                img.manifest.digest
            )),
        "{seen:#?}"
    );
}
