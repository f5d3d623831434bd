//! The cache is shared by repositories and upstreams, and nothing in it crosses to a user
//! who was not granted it: attacks on that (a flood racing a private commit, an upstream
//! that says yes to every HEAD, a fill failed on purpose under another repository), and
//! the bounds that keep one client from exhausting the mirror (endless bodies, trickling
//! upstreams, unknown digests, fills per client, file modes).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::distribution::{Auth, Distribution};
use crate::support::eventually;
use crate::support::fault::{Fault, FaultAuth, FaultUpstream};
use crate::support::http::{self, basic, get, metric, request};
use crate::support::images::{self, Blob, Flavor, Pusher};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::secret::{dockerconfigjson, SecretVolume};

const MIB: usize = 1024 * 1024;

fn with_secret(mut opts: Options, secrets: &std::path::Path) -> Options {
    opts.extra = format!(
        "{}\n[auth]\nclient_secrets = [\"{}\"]\n",
        opts.extra,
        secrets.display()
    );
    opts
}

/// Item 1 of the hardening issue: a user allowed only on `public/y` of a second upstream
/// floods the blob endpoint with the digests of private manifests and layers while the
/// admin pulls them from the first. The second upstream is in a 429 backoff, so each of
/// the flood's fills fails at once, without a round trip, and a new one starts: many fills
/// begin just as a private commit lands (the "already stored" shortcut's window). Not one
/// request may be answered 200, and nothing may stay linked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_under_another_repository_never_reads_private_content() {
    let upstream = Distribution::start(Auth::Anonymous);
    let push = Pusher::new(&upstream.url(), None);
    let mut private = Vec::new();
    for i in 0..24 {
        let img = images::image(
            &format!("iso-private-{i}"),
            &[700 + i],
            Flavor::Oci,
            "amd64",
        );
        push.image("e2e/private", &format!("v{i}"), &img).await;
        private.push(img);
    }
    let digests: Arc<Vec<String>> = Arc::new(
        private
            .iter()
            .flat_map(|img| [img.manifest.digest.clone(), img.layers[0].digest.clone()])
            .collect(),
    );
    // The public upstream throttles: every answer is a 429 with Retry-After.
    let throttled = FaultUpstream::start(FaultAuth::None);
    for d in digests.iter() {
        throttled.set_fault(d, Fault::Status(429));
    }
    let up = upstream.host();
    let secrets = tempfile::tempdir().unwrap();
    SecretVolume::new(
        &secrets.path().join("c"),
        dockerconfigjson(&[
            (&up, "admin", "admin-pw"),
            (&format!("{}/public/y", throttled.host()), "pub", "pub-pw"),
        ])
        .as_bytes(),
    );
    let mut opts = Options::new(&upstream.url());
    opts.extra = format!(
        "[[upstream]]\nname = \"{}\"\nurl = \"{}\"\n",
        throttled.host(),
        throttled.url()
    );
    let pullgate = Pullgate::start(with_secret(opts, &secrets.path().join("c")));
    let base = pullgate.url();
    let ns = throttled.host();

    let stop = Arc::new(AtomicBool::new(false));
    let leaks = Arc::new(AtomicUsize::new(0));
    let tries = Arc::new(AtomicUsize::new(0));
    let pub_auth = basic("pub", "pub-pw");
    let mut flooders = Vec::new();
    for _ in 0..4 {
        let (stop, leaks, tries, digests, base, auth, ns) = (
            Arc::clone(&stop),
            Arc::clone(&leaks),
            Arc::clone(&tries),
            Arc::clone(&digests),
            base.clone(),
            pub_auth.clone(),
            ns.clone(),
        );
        flooders.push(tokio::spawn(async move {
            let client = http::client();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                for d in digests.iter() {
                    let r = client
                        .get(format!("{base}/v2/public/y/blobs/{d}?ns={ns}"))
                        .header("authorization", &auth)
                        .send()
                        .await;
                    tries.fetch_add(1, Ordering::SeqCst);
                    if r.is_ok_and(|r| r.status().as_u16() == 200) {
                        leaks.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    // The admin pulls every private image while the flood goes on.
    let admin = basic("admin", "admin-pw");
    for (i, img) in private.iter().enumerate() {
        let r = request(
            "GET",
            &format!("{base}/v2/e2e/private/manifests/v{i}"),
            &[
                ("authorization", &admin),
                ("accept", "application/vnd.oci.image.manifest.v1+json"),
            ],
        )
        .await;
        assert_eq!(r.status, 200);
        let layer = &img.layers[0].digest;
        let r = request(
            "GET",
            &format!("{base}/v2/e2e/private/blobs/{layer}"),
            &[("authorization", &admin)],
        )
        .await;
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for f in flooders {
        f.await.unwrap();
    }
    assert!(tries.load(Ordering::SeqCst) > 1000, "the flood hardly ran");
    assert_eq!(
        leaks.load(Ordering::SeqCst),
        0,
        "private content was served under public/y"
    );
    // Nothing was linked to public/y on the way: every digest is still refused.
    for d in digests.iter() {
        let r = request(
            "GET",
            &format!("{base}/v2/public/y/blobs/{d}?ns={ns}"),
            &[("authorization", &pub_auth)],
        )
        .await;
        assert_ne!(r.status, 200, "{d} became readable under public/y");
    }
}

/// Item 2: a second upstream that answers yes to every HEAD unlocks nothing the cache
/// holds from the first. Only serving bytes that hash to the digest proves it holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_says_yes_to_every_head_unlocks_nothing_it_did_not_serve() {
    let upstream = Distribution::start(Auth::Anonymous);
    let push = Pusher::new(&upstream.url(), None);
    let secret_img = images::image("iso-lying", &[64 * 1024], Flavor::Oci, "amd64");
    push.image("e2e/private", "v1", &secret_img).await;
    let liar = FaultUpstream::start(FaultAuth::None);
    liar.set_head_yes(true);

    let secrets = tempfile::tempdir().unwrap();
    SecretVolume::new(
        &secrets.path().join("c"),
        dockerconfigjson(&[
            (&upstream.host(), "admin", "admin-pw"),
            (&liar.host(), "mallory", "mallory-pw"),
        ])
        .as_bytes(),
    );
    let mut opts = Options::new(&upstream.url());
    // Each attempt below must reach the liar, not the memory of its last 404.
    opts.cache_extra = "negative_ttl = \"0s\"".into();
    opts.extra = format!(
        "[[upstream]]\nname = \"{}\"\nurl = \"{}\"\n",
        liar.host(),
        liar.url()
    );
    let pullgate = Pullgate::start(with_secret(opts, &secrets.path().join("c")));
    let base = pullgate.url();
    let admin = basic("admin", "admin-pw");
    let mallory = basic("mallory", "mallory-pw");

    let layer = secret_img.layers[0].digest.clone();
    let manifest = secret_img.manifest.digest.clone();
    let r = request(
        "GET",
        &format!("{base}/v2/e2e/private/manifests/v1"),
        &[
            ("authorization", &admin),
            ("accept", "application/vnd.oci.image.manifest.v1+json"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = request(
        "GET",
        &format!("{base}/v2/e2e/private/blobs/{layer}"),
        &[("authorization", &admin)],
    )
    .await;
    assert_eq!(r.status, 200);

    // Committed (a client may finish a moment before its fill commits): from here on the
    // layer is stored, and a HEAD through the liar is a question about our copy.
    http::fills_settled(&base).await;
    let liar_host = liar.host();
    for method in ["GET", "HEAD"] {
        let r = request(
            method,
            &format!("{base}/v2/any/repo/blobs/{layer}?ns={liar_host}"),
            &[("authorization", &mallory)],
        )
        .await;
        assert_eq!(
            r.status,
            404,
            "{method} of a cached private layer through the liar: {:#?}\n{}",
            liar.requests(),
            pullgate.log()
        );
        let r = request(
            method,
            &format!("{base}/v2/any/repo/manifests/{manifest}?ns={liar_host}"),
            &[
                ("authorization", &mallory),
                ("accept", "application/vnd.oci.image.manifest.v1+json"),
            ],
        )
        .await;
        assert_eq!(
            r.status, 404,
            "{method} of a cached private manifest through the liar"
        );
    }
    // It was asked to prove possession with a GET, and could not.
    assert!(liar.count("GET", &format!("/v2/any/repo/blobs/{layer}")) >= 1);
    assert!(liar.count("GET", &format!("/v2/any/repo/manifests/{manifest}")) >= 1);

    // An upstream that really serves the same bytes proves it, and is then believed.
    let blob = secret_img.layers[0].clone();
    liar.add_blob(&blob);
    let r = request(
        "GET",
        &format!("{base}/v2/any/repo/blobs/{layer}?ns={liar_host}"),
        &[("authorization", &mallory)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(images::sha256(r.bytes()), layer);
    assert!(metric(&base, "pullgate_possession_proofs_total").await >= 3.0);

    // A crowd asking at once for a cached digest this upstream has not proved yet costs it
    // one download: the proofs are shared, not one per request.
    let config = secret_img.config.clone();
    let r = request(
        "GET",
        &format!("{base}/v2/e2e/private/blobs/{}", config.digest),
        &[("authorization", &admin)],
    )
    .await;
    assert_eq!(r.status, 200);
    http::fills_settled(&base).await;
    liar.add_blob(&config);
    liar.set_delay(&config.digest, Duration::from_millis(500));
    let crowd: Vec<_> = (0..8)
        .map(|_| {
            let url = format!("{base}/v2/any/repo/blobs/{}?ns={liar_host}", config.digest);
            let auth = mallory.clone();
            tokio::spawn(async move { request("GET", &url, &[("authorization", &auth)]).await })
        })
        .collect();
    for c in crowd {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(images::sha256(r.bytes()), config.digest);
    }
    assert_eq!(
        liar.count("GET", &format!("/v2/any/repo/blobs/{}", config.digest)),
        1,
        "each waiting request proved possession on its own"
    );
}

/// Item 4: a client of another repository requests a digest where it does not exist,
/// from a slow upstream, so that its fill is still waiting when the victim's request for
/// the same digest arrives. The victim's pull must not inherit that 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_failed_under_another_repository_does_not_fail_the_victim() {
    let up = FaultUpstream::start(FaultAuth::None);
    let layers: Vec<Blob> = (0..3)
        .map(|i| {
            Blob::new(
                "application/octet-stream",
                images::noise(&format!("victim{i}"), 256 * 1024),
            )
        })
        .collect();
    for b in &layers {
        up.add_blob(b);
        up.restrict_blob(&b.digest, &["e2e/victim"]);
        up.set_delay(&b.digest, Duration::from_millis(1500));
    }
    let pullgate = Pullgate::start(Options::new(&up.url()));
    let base = pullgate.url();

    for (round, b) in layers.iter().enumerate() {
        let layer = &b.digest;
        let attacker = {
            let url = format!("{base}/v2/e2e/attacker/blobs/{layer}");
            tokio::spawn(async move { get(&url).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let victim = get(&format!("{base}/v2/e2e/victim/blobs/{layer}")).await;
        assert_eq!(
            victim.status, 200,
            "round {round}: the victim inherited a failure"
        );
        assert_eq!(&images::sha256(victim.bytes()), layer);
        assert_eq!(attacker.await.unwrap().status, 404);
    }
}

/// Item 8: a chunked body that never ends stops at `max_blob_size`, with nothing left in
/// `tmp/`; an announced size over it is refused before a byte is fetched; and a fill whose
/// clients have all gone stops when its upstream only trickles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_and_oversized_bodies_are_bounded_and_an_abandoned_trickle_stops() {
    let up = FaultUpstream::start(FaultAuth::None);
    let endless = Blob::new("application/octet-stream", images::noise("endless", 1024));
    let big = Blob::new("application/octet-stream", images::noise("big", 5 * MIB));
    let trickle = Blob::new("application/octet-stream", images::noise("trickle", 1024));
    for b in [&endless, &big, &trickle] {
        up.add_blob(b);
    }
    up.set_fault(&endless.digest, Fault::Endless);
    up.set_fault(&trickle.digest, Fault::Trickle);
    let mut opts = Options::new(&up.url());
    opts.cache_extra = "max_blob_size = \"4MiB\"".into();
    opts.read_timeout = "1s".into();
    let pullgate = Pullgate::start(opts);
    let base = pullgate.url();

    let r = get(&format!("{base}/v2/e2e/x/blobs/{}", endless.digest)).await;
    assert!(
        r.status >= 500 || r.body.is_err(),
        "an endless body was served: {}",
        r.status
    );
    http::fills_settled(&base).await;
    let tmp = pullgate.cache_dir().join("tmp");
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_dir(&tmp)
            .map(|d| d.count() == 0)
            .unwrap_or(false)),
        "tmp/ kept the endless body"
    );

    let r = get(&format!("{base}/v2/e2e/x/blobs/{}", big.digest)).await;
    assert_eq!(r.status, 502);
    assert!(String::from_utf8_lossy(r.bytes()).contains("maximum blob size"));
    assert!(!pullgate.blob_path(&big.digest).exists());

    // A client that gives up on a trickling blob: the fill must not go on for ever.
    let url = format!("{base}/v2/e2e/x/blobs/{}", trickle.digest);
    let _ = tokio::time::timeout(Duration::from_millis(500), get(&url)).await;
    let started = Instant::now();
    let mut settled = false;
    while started.elapsed() < Duration::from_secs(10) {
        if metric(&base, "pullgate_fills_in_flight").await == 0.0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(settled, "an abandoned trickling fill is still running");
}

/// Item 10: unknown digests are remembered for a moment, per repository; one client may
/// start only so many fills at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_digests_are_remembered_and_fills_per_client_are_capped() {
    let up = FaultUpstream::start(FaultAuth::None);
    let slow: Vec<Blob> = (0..3)
        .map(|i| {
            Blob::new(
                "application/octet-stream",
                images::noise(&format!("slow{i}"), 4096),
            )
        })
        .collect();
    for b in &slow {
        up.add_blob(b);
        up.set_delay(&b.digest, Duration::from_millis(1500));
    }
    let mut opts = Options::new(&up.url());
    opts.cache_extra = "max_fills_per_client = 2\nnegative_ttl = \"30s\"".into();
    let pullgate = Pullgate::start(opts);
    let base = pullgate.url();

    let unknown = format!("sha256:{}", "ab".repeat(32));
    for _ in 0..20 {
        let r = get(&format!("{base}/v2/e2e/x/blobs/{unknown}")).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.error_code(), "BLOB_UNKNOWN");
    }
    assert_eq!(up.count("GET", &format!("/v2/e2e/x/blobs/{unknown}")), 1);
    assert!(metric(&base, "pullgate_negative_cache_hits_total").await >= 19.0);
    // Another repository's answer is its own.
    let r = get(&format!("{base}/v2/e2e/y/blobs/{unknown}")).await;
    assert_eq!(r.status, 404);
    assert_eq!(up.count("GET", &format!("/v2/e2e/y/blobs/{unknown}")), 1);

    let gets: Vec<_> = slow
        .iter()
        .map(|b| {
            let url = format!("{base}/v2/e2e/x/blobs/{}", b.digest);
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for g in gets {
        let r = g.await.unwrap();
        if r.status == 429 {
            assert_eq!(r.error_code(), "TOOMANYREQUESTS");
            assert!(r.header("retry-after").is_some());
        }
        statuses.push(r.status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 200, 429]);
    assert_eq!(metric(&base, "pullgate_fills_refused_total").await, 1.0);
    // Once those are done (committed, not only answered), the refused one goes through.
    http::fills_settled(&base).await;
    for b in &slow {
        let r = get(&format!("{base}/v2/e2e/x/blobs/{}", b.digest)).await;
        assert_eq!(r.status, 200);
    }
}

/// Item 9: what the cache holds is readable by its owner only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_files_and_directories_are_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    let up = FaultUpstream::start(FaultAuth::None);
    let img = images::image("iso-modes", &[4096], Flavor::Oci, "amd64");
    up.add_image("e2e/modes", "v1", &img);
    let pullgate = Pullgate::start(Options::new(&up.url()));
    let base = pullgate.url();
    let r = get(&format!(
        "{base}/v2/e2e/modes/blobs/{}",
        img.layers[0].digest
    ))
    .await;
    assert_eq!(r.status, 200);
    let r = request(
        "GET",
        &format!("{base}/v2/e2e/modes/manifests/v1"),
        &[("accept", "application/vnd.oci.image.manifest.v1+json")],
    )
    .await;
    assert_eq!(r.status, 200);
    http::fills_settled(&base).await;

    let root = pullgate.cache_dir();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700, "the cache directory");
    let mut checked = 0;
    let mut stack = vec![root.join("blobs"), root.join("tmp")];
    while let Some(dir) = stack.pop() {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
                checked += 1;
            }
        }
    }
    assert!(checked >= 2, "no blob files were checked");
}
