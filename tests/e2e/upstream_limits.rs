//! What pullgate asks of an upstream: the exact requests a pull costs (token auth, the tag
//! TTL passed, a second repository holding the same content), the quota Docker Hub
//! announces in `RateLimit-*` headers, `max_concurrent_requests` under 200 cold pulls, and
//! `max_bandwidth`. The fault upstream sends the headers Distribution does not.

use std::time::{Duration, Instant};

use crate::support::fault::{FaultAuth, FaultUpstream};
use crate::support::http::{get, metric_value, metrics_text};
use crate::support::images::{self, Flavor};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::secret::dockerconfigjson;
use crate::support::skopeo;

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The requests the upstream saw since `from`.
fn since(fault: &FaultUpstream, from: usize) -> Vec<String> {
    sorted(fault.requests()[from..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_costs_one_head_per_tag_one_get_per_digest_and_one_token_per_scope() {
    let fault = FaultUpstream::start(FaultAuth::Token {
        user: "robot".into(),
        password: "t0ken-pass".into(),
    });
    let index = images::index("mix", &[64 * 1024, 2048], Flavor::Oci);
    for repo in ["e2e/mix", "e2e/mix2"] {
        for img in &index.images {
            for b in img.blobs() {
                fault.add_blob(b);
            }
            fault.add_manifest(repo, &img.manifest.digest, &img.manifest);
        }
        fault.add_manifest(repo, &index.manifest.digest, &index.manifest);
        fault.add_manifest(repo, "v1", &index.manifest);
    }
    let secrets = tempfile::tempdir().unwrap();
    let creds = secrets.path().join("config.json");
    std::fs::write(
        &creds,
        dockerconfigjson(&[(&fault.host(), "robot", "t0ken-pass")]),
    )
    .unwrap();
    let mut opts = Options::new(&fault.url());
    opts.credentials = Some(creds);
    opts.tag_ttl = "1s".into();
    let pullgate = Pullgate::start(opts);
    let work = tempfile::tempdir().unwrap();
    let pullgate = &pullgate;
    let pull = |repo: &str, dir: &str| {
        let src = format!("{}/{repo}:v1", pullgate.host());
        let dest = work.path().join(dir);
        async move {
            skopeo::pull(src, dest, false)
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", pullgate.log()));
        }
    };

    pull("e2e/mix", "first").await;
    // skopeo picked the platform it runs on: its manifest is one of the index's.
    let chosen = skopeo::manifest_digest(&work.path().join("first"));
    let img = index
        .images
        .iter()
        .find(|i| i.manifest.digest == chosen)
        .expect("skopeo copied one of the index's images");
    let path = |repo: &str, what: &str, r: &str| format!("/v2/{repo}/{what}/{r}");
    let mut want = vec![
        // The upstream's first request ever goes anonymous: its 401 names the token realm.
        format!("HEAD {}", path("e2e/mix", "manifests", "v1")),
        "GET /token".to_owned(),
        format!("HEAD {}", path("e2e/mix", "manifests", "v1")),
        format!(
            "GET {}",
            path("e2e/mix", "manifests", &index.manifest.digest)
        ),
        format!("GET {}", path("e2e/mix", "manifests", &img.manifest.digest)),
    ];
    want.extend(
        img.blobs()
            .map(|b| format!("GET {}", path("e2e/mix", "blobs", &b.digest))),
    );
    let first = since(&fault, 0);
    assert_eq!(first, sorted(want), "{}", pullgate.log());
    let seen = fault.requests().len();

    // After the tag TTL: one HEAD with the token still cached; everything else is stored.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    pull("e2e/mix", "second").await;
    assert_eq!(
        since(&fault, seen),
        [format!("HEAD {}", path("e2e/mix", "manifests", "v1"))],
        "{}",
        pullgate.log()
    );
    let seen = fault.requests().len();

    // Another repository with the same content: its token is fetched before its first
    // request (no 401), and this upstream served every digest before, so a HEAD with
    // the new repository's scope confirms each one; nothing is downloaded again.
    pull("e2e/mix2", "other").await;
    let mut want = vec![
        "GET /token".to_owned(),
        format!("HEAD {}", path("e2e/mix2", "manifests", "v1")),
        format!(
            "HEAD {}",
            path("e2e/mix2", "manifests", &img.manifest.digest)
        ),
    ];
    want.extend(
        img.blobs()
            .map(|b| format!("HEAD {}", path("e2e/mix2", "blobs", &b.digest))),
    );
    assert_eq!(since(&fault, seen), sorted(want), "{}", pullgate.log());
    assert_eq!(fault.token_requests(), 2);

    // /metrics counts the same requests by kind.
    let text = metrics_text(&pullgate.url()).await;
    let all = fault.requests();
    let count = |method: &str, part: &str| {
        all.iter()
            .filter(|r| r.starts_with(method) && r.contains(part))
            .count() as f64
    };
    let series = |kind: &str| {
        metric_value(
            &text,
            &format!(
                "pullgate_upstream_requests_total{{upstream=\"{}\",kind=\"{kind}\"}}",
                fault.host()
            ),
        )
    };
    assert_eq!(series("manifest_head"), count("HEAD ", "/manifests/"));
    assert_eq!(series("manifest_get"), count("GET ", "/manifests/"));
    assert_eq!(series("blob_head"), count("HEAD ", "/blobs/"));
    assert_eq!(series("blob_get"), count("GET ", "/blobs/"));
    assert_eq!(series("token"), 2.0);
    assert_eq!(series("tags"), 0.0);
    assert_eq!(series("referrers"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_hub_quota_is_exported_and_warned_about_once_per_crossing() {
    let fault = FaultUpstream::start(FaultAuth::None);
    let imgs: Vec<_> = (0..6)
        .map(|i| images::image(&format!("quota{i}"), &[1024], Flavor::Oci, "amd64"))
        .collect();
    for (i, img) in imgs.iter().enumerate() {
        fault.add_image("e2e/quota", &format!("t{i}"), img);
    }
    let pullgate = Pullgate::start(Options::new(&fault.url()));
    let text = metrics_text(&pullgate.url()).await;
    assert!(text.contains("# TYPE pullgate_upstream_ratelimit_remaining gauge"));
    assert!(
        !text.contains("pullgate_upstream_ratelimit_remaining{"),
        "no value before the upstream said anything:\n{text}"
    );
    let manifest = |i: usize| {
        let url = format!("{}/v2/e2e/quota/manifests/t{i}", pullgate.url());
        async move {
            let r = get(&url).await;
            assert_eq!(r.status, 200);
        }
    };
    let warnings = |log: &str| {
        log.lines()
            .filter(|l| l.contains("pull quota is running out"))
            .count()
    };
    // Each new tag: a HEAD (free) and a GET (one pull), so 12 → 11, 10, 9 (warn), 8.
    fault.set_ratelimit(Some((100, 12)));
    for i in 0..4 {
        manifest(i).await;
    }
    assert_eq!(warnings(&pullgate.log()), 1, "{}", pullgate.log());
    let host = fault.host();
    let gauge = |text: &str, name: &str| {
        metric_value(
            text,
            &format!("pullgate_upstream_ratelimit_{name}{{upstream=\"{host}\"}}"),
        )
    };
    let text = metrics_text(&pullgate.url()).await;
    assert_eq!(gauge(&text, "limit"), 100.0);
    assert_eq!(gauge(&text, "remaining"), 8.0);
    assert_eq!(gauge(&text, "window_seconds"), 21600.0);
    // The source is an address: never a label.
    assert!(!text.contains("192.0.2.44"), "{text}");

    // The window rolls over: back above, one info line; falling again, one more warning.
    fault.set_ratelimit(Some((100, 51)));
    manifest(4).await;
    assert!(pullgate.log().contains("above the warning threshold again"));
    fault.set_ratelimit(Some((100, 5)));
    manifest(5).await;
    assert_eq!(warnings(&pullgate.log()), 2, "{}", pullgate.log());
    let text = metrics_text(&pullgate.url()).await;
    assert_eq!(gauge(&text, "remaining"), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cold_pulls_never_exceed_max_concurrent_requests() {
    let fault = FaultUpstream::start(FaultAuth::None);
    let blobs: Vec<_> = (0..200)
        .map(|i| {
            images::Blob::new(
                "application/octet-stream",
                images::noise(&format!("b{i}"), 4096),
            )
        })
        .collect();
    for b in &blobs {
        fault.add_blob(b);
    }
    fault.set_blob_delay(Some(Duration::from_millis(40)));
    let mut opts = Options::new(&fault.url());
    opts.extra = "max_concurrent_requests = 4\n".into();
    // One client (anonymous, from 127.0.0.1) starting 200 fills at once.
    opts.cache_extra = "max_fills_per_client = 1000\n".into();
    let pullgate = Pullgate::start(opts);

    let pulls = futures_util::future::join_all(blobs.iter().map(|b| {
        let url = format!("{}/v2/e2e/many/blobs/{}", pullgate.url(), b.digest);
        async move { (get(&url).await, b.digest.clone()) }
    }));
    let watch = async {
        let mut peak_queued = 0.0f64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let text = metrics_text(&pullgate.url()).await;
            let series = |name: &str| {
                metric_value(&text, &format!("{name}{{upstream=\"{}\"}}", fault.host()))
            };
            let queued = series("pullgate_upstream_requests_queued");
            assert!(
                series("pullgate_upstream_requests_in_flight") <= 4.0,
                "{text}"
            );
            peak_queued = peak_queued.max(queued);
            if peak_queued > 0.0 && queued == 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak_queued
    };
    let (results, peak_queued) = tokio::join!(pulls, watch);
    for (r, digest) in &results {
        assert_eq!(r.status, 200, "{}", pullgate.log());
        assert_eq!(&images::sha256(r.bytes()), digest);
    }
    assert!(peak_queued > 0.0, "nothing ever waited for a slot");
    let peak = fault.in_flight_peak();
    assert!(peak <= 4, "the upstream saw {peak} requests at once");
    assert_eq!(peak, 4, "the cap is also used in full");
    assert_eq!(fault.requests().len(), 200);
    let text = metrics_text(&pullgate.url()).await;
    let host = fault.host();
    assert_eq!(
        metric_value(
            &text,
            &format!("pullgate_upstream_requests_queued{{upstream=\"{host}\"}}")
        ),
        0.0
    );
    assert_eq!(
        metric_value(
            &text,
            &format!("pullgate_upstream_requests_total{{upstream=\"{host}\",kind=\"blob_get\"}}")
        ),
        200.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_bandwidth_paces_a_fill() {
    let fault = FaultUpstream::start(FaultAuth::None);
    let blob = images::Blob::new(
        "application/octet-stream",
        images::noise("bandwidth", 4 * 1024 * 1024),
    );
    fault.add_blob(&blob);
    let mut opts = Options::new(&fault.url());
    opts.extra = "max_bandwidth = \"2MiB\"\n".into();
    let pullgate = Pullgate::start(opts);
    let started = Instant::now();
    let r = get(&format!(
        "{}/v2/e2e/slow/blobs/{}",
        pullgate.url(),
        blob.digest
    ))
    .await;
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(images::sha256(r.bytes()), blob.digest);
    // 4 MiB at 2 MiB/s: two seconds, less the tenth of a second that may pass at once.
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // A hit is not paced: the cap is on what comes from the upstream.
    let started = Instant::now();
    let r = get(&format!(
        "{}/v2/e2e/slow/blobs/{}",
        pullgate.url(),
        blob.digest
    ))
    .await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waits_too_long_for_a_slot_fails_with_504_unsent() {
    use crate::support::fault::Fault;
    let fault = FaultUpstream::start(FaultAuth::None);
    let slow = images::Blob::new("application/octet-stream", images::noise("hog", 4096));
    let other = images::Blob::new("application/octet-stream", images::noise("next", 4096));
    fault.add_blob(&slow);
    fault.add_blob(&other);
    // One byte every 200 ms: never a read timeout, never done.
    fault.set_fault(&slow.digest, Fault::Trickle);
    let mut opts = Options::new(&fault.url());
    opts.extra = "max_concurrent_requests = 1\n".into();
    opts.read_timeout = "1s".into();
    let pullgate = Pullgate::start(opts);
    let url = |b: &images::Blob| format!("{}/v2/e2e/hog/blobs/{}", pullgate.url(), b.digest);

    // A client waits on the trickling fill, which holds the only slot.
    let hog_url = url(&slow);
    let hog = tokio::spawn(async move { get(&hog_url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The next request waits connect_timeout (2s) + read_timeout (1s), then gives up unsent.
    let started = Instant::now();
    let r = get(&url(&other)).await;
    assert_eq!(r.status, 504, "{}", pullgate.log());
    assert!(started.elapsed() >= Duration::from_millis(2900));
    assert_eq!(
        fault.count("GET", &format!("/v2/e2e/hog/blobs/{}", other.digest)),
        0
    );
    let text = metrics_text(&pullgate.url()).await;
    let host = fault.host();
    assert_eq!(
        metric_value(
            &text,
            &format!(
                "pullgate_upstream_errors_total{{upstream=\"{host}\",kind=\"queue_timeout\"}}"
            )
        ),
        1.0
    );
    // Its client gone, the trickling fill is given up and its slot comes back.
    hog.abort();
    let _ = hog.await;
    let r = get(&url(&other)).await;
    assert_eq!(r.status, 200, "{}", pullgate.log());
    assert_eq!(images::sha256(r.bytes()), other.digest);
}
