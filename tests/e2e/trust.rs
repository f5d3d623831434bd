//! The trust policy end to end: pullgate in front of a real Distribution 2.8, images signed
//! by cosign 2.5 and by openssl (the harness's second, independent signer, through
//! `push_signatures`), pulled with raw HTTP and with skopeo. Every denial must be 403
//! `DENIED` naming the rule and the reason.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::distribution::{Auth, Distribution};
use crate::support::http::{self, request};
use crate::support::images::{self, Flavor, Image, Pusher};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::secret::SecretVolume;
use crate::support::sign::{self, Algorithm, SigLayer, Sign, Tools};
use crate::support::skopeo;

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// An upstream, and a pusher for it.
fn upstream() -> (Distribution, Pusher) {
    let upstream = Distribution::start(Auth::Anonymous);
    let push = Pusher::new(&upstream.url(), None);
    (upstream, push)
}

/// A small image pushed as `repo:v1`.
async fn pushed(push: &Pusher, repo: &str, seed: &str) -> Image {
    let img = images::image(seed, &[4096], Flavor::Oci, "amd64");
    push.image(repo, "v1", &img).await;
    img
}

/// `[[trust.key]]` tables for (name, path).
fn keys_toml(keys: &[(&str, &Path)]) -> String {
    keys.iter()
        .map(|(name, path)| {
            format!(
                "[[trust.key]]\nname = \"{name}\"\npath = \"{}\"\n\n",
                path.display()
            )
        })
        .collect()
}

/// pullgate over `upstream` with the given `[trust]` TOML (its tag TTL short, so a tag
/// pushed during a test is seen). Its audit lines go to standard output, which the harness
/// writes to the instance's log.
fn mirror(upstream: &Distribution, trust: &str) -> Pullgate {
    let mut opts = Options::new(&upstream.url());
    opts.tag_ttl = "1s".into();
    opts.extra = trust.to_owned();
    Pullgate::start(opts)
}

/// The audit lines so far: the JSON lines of the log (the rest is text).
fn audit_lines(p: &Pullgate) -> Vec<Value> {
    p.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("outcome").is_some())
        .collect()
}

async fn manifest(p: &Pullgate, method: &str, repo: &str, reference: &str) -> http::Reply {
    request(
        method,
        &format!("{}/v2/{repo}/manifests/{reference}", p.url()),
        &[("Accept", ACCEPT)],
    )
    .await
}

async fn blob(p: &Pullgate, repo: &str, digest: &str) -> http::Reply {
    http::get(&format!("{}/v2/{repo}/blobs/{digest}", p.url())).await
}

/// The first error's message of an OCI error body.
fn message(r: &http::Reply) -> String {
    let v: Value = serde_json::from_slice(r.bytes()).expect("error body");
    v["errors"][0]["message"].as_str().unwrap_or("").to_owned()
}

/// A 403 DENIED that names rule 1 and says `reason`.
#[track_caller]
fn assert_denied(r: &http::Reply, reason: &str) {
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.error_code(), "DENIED");
    let m = message(r);
    assert!(m.starts_with("denied by trust rule 1 ("), "{m}");
    assert!(m.contains(reason), "{m:?} does not say {reason:?}");
}

fn verify_rule(upstream: &Distribution, signed_by: &[&str], extra: &str) -> String {
    let names: Vec<String> = signed_by.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[trust.rule]]\nimages = [\"{}/team/**\"]\naction = \"verify\"\nsigned_by = [{}]\n{extra}\n",
        upstream.host(),
        names.join(", ")
    )
}

/// A mirror whose one rule verifies `team/**` against the key `release` (`extra` adds to
/// the rule).
fn release_mirror(upstream: &Distribution, release: &Path, extra: &str) -> Pullgate {
    mirror(
        upstream,
        &format!(
            "{}{}",
            keys_toml(&[("release", release)]),
            verify_rule(upstream, &["release"], extra)
        ),
    )
}

/// The first five of issue 17's cases, and the blob gate: signed by the configured key
/// (by tag and by digest, GET and HEAD), unsigned, signed by another key, an unmatched
/// repository; the decisions on the audit line and in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosign_signed_images_pass_and_unsigned_or_foreign_ones_are_denied() {
    let (upstream, push) = upstream();
    let signed = pushed(&push, "team/signed", "t-signed").await;
    let unsigned = pushed(&push, "team/unsigned", "t-unsigned").await;
    let foreign = pushed(&push, "team/foreign", "t-foreign").await;
    let open = pushed(&push, "library/open", "t-open").await;
    let tools = Tools::new();
    let release = tools.generate_key_pair("release");
    let other = tools.generate_key_pair("other");
    let host = upstream.host();
    tools
        .sign(
            &release,
            &format!("{host}/team/signed@{}", signed.manifest.digest),
        )
        .expect("cosign sign");
    tools
        .sign(
            &other,
            &format!("{host}/team/foreign@{}", foreign.manifest.digest),
        )
        .expect("cosign sign");

    let p = release_mirror(&upstream, &release.public, "");

    for (method, reference) in [
        ("GET", "v1"),
        ("HEAD", "v1"),
        ("GET", signed.manifest.digest.as_str()),
        ("HEAD", signed.manifest.digest.as_str()),
    ] {
        let r = manifest(&p, method, "team/signed", reference).await;
        assert_eq!(r.status, 200, "{method} {reference}: {:?}", r.body);
    }
    for b in signed.blobs() {
        let r = blob(&p, "team/signed", &b.digest).await;
        assert_eq!(r.status, 200, "a blob of a signed image");
        assert_eq!(r.bytes().as_ref(), b.bytes.as_slice());
    }

    for (method, reference) in [
        ("GET", "v1"),
        ("HEAD", "v1"),
        ("GET", unsigned.manifest.digest.as_str()),
    ] {
        let r = manifest(&p, method, "team/unsigned", reference).await;
        assert_eq!(r.status, 403, "{method} {reference}");
        if method == "GET" {
            assert_denied(&r, "no signature");
        }
    }
    // Asking for the layers by digest does not side-step the policy.
    for b in unsigned.blobs() {
        let r = blob(&p, "team/unsigned", &b.digest).await;
        assert_denied(&r, "no manifest that passed");
    }
    let r = manifest(&p, "GET", "team/foreign", "v1").await;
    assert_denied(&r, "unknown key");
    // Nor does asking for a signed image's blob under a denied repository.
    let r = blob(&p, "team/unsigned", &signed.layers[0].digest).await;
    assert_eq!(r.status, 403);

    let r = manifest(&p, "GET", "library/open", "v1").await;
    assert_eq!(r.status, 200, "unmatched images are allowed");
    let r = blob(&p, "library/open", &open.layers[0].digest).await;
    assert_eq!(r.status, 200);

    let metrics = http::metrics_text(&p.url()).await;
    assert!(
        http::metric_value(
            &metrics,
            "pullgate_policy_decisions_total{rule=\"0\",outcome=\"allow\"}"
        ) >= 4.0
    );
    assert!(
        http::metric_value(
            &metrics,
            "pullgate_policy_decisions_total{rule=\"0\",outcome=\"deny\"}"
        ) >= 4.0
    );
    assert!(
        http::metric_value(
            &metrics,
            "pullgate_policy_decisions_total{rule=\"unmatched\",outcome=\"allow\"}"
        ) >= 1.0
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    let (allowed, denied) = loop {
        let lines = audit_lines(&p);
        let allowed = lines
            .iter()
            .find(|l| l["repository"] == "team/signed" && l["policy"]["outcome"] == "allow")
            .cloned();
        let denied = lines
            .iter()
            .find(|l| l["repository"] == "team/unsigned" && l["policy"]["outcome"] == "deny")
            .cloned();
        if let (Some(a), Some(d)) = (&allowed, &denied) {
            break (a.clone(), d.clone());
        }
        assert!(Instant::now() < deadline, "audit lines: {lines:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(allowed["policy"]["reason"], "verified");
    let keys = allowed["policy"]["keys"].as_array().expect("keys");
    assert!(
        keys[0].as_str().unwrap_or("").starts_with("release ("),
        "{keys:?}"
    );
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["policy"]["reason"], "no signature");
    // Denied by tag, and the line still says which digest the tag named.
    assert_eq!(denied["digest"], unsigned.manifest.digest.as_str());
    assert!(denied["policy"]["rule"]
        .as_str()
        .unwrap_or("")
        .starts_with("trust rule 1 ("));
}

/// Signatures crafted with openssl: a good one passes; a tampered payload, a payload that
/// names another digest, and a `.sig` with no valid layer are each denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_crafted_signatures_tampered_or_for_another_digest_are_denied() {
    let (upstream, push) = upstream();
    let tools = Tools::new();
    let key = tools.openssl_key("release", Algorithm::EcdsaP256);
    let host = upstream.host();
    let cases = ["good", "tampered", "other-digest", "no-valid-layer"];
    let mut imgs = Vec::new();
    for case in cases {
        let repo = format!("team/{case}");
        let img = pushed(&push, &repo, &format!("os-{case}")).await;
        let digest = img.manifest.digest.clone();
        let reference = format!("{host}/{repo}");
        let layer = match case {
            "good" => SigLayer::signed_by(&key, &reference, &digest),
            "tampered" => {
                let mut l = SigLayer::signed_by(&key, &reference, &digest);
                // One byte of the signed payload changed after signing.
                let at = l.payload.iter().position(|b| *b == b'c').expect("a c");
                l.payload[at] = b'C';
                l
            }
            "other-digest" => SigLayer::signed_by(&key, &reference, &imgs_other_digest()),
            _ => SigLayer {
                media_type: "application/octet-stream".into(),
                payload: b"not a signature".to_vec(),
                annotations: Vec::new(),
            },
        };
        sign::push_signatures(&push, &repo, &digest, &[layer]).await;
        imgs.push(img);
    }
    let p = release_mirror(&upstream, &key.public, "");
    let r = manifest(&p, "GET", "team/good", "v1").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = manifest(&p, "GET", "team/tampered", "v1").await;
    assert_denied(&r, "unknown key");
    let r = manifest(&p, "GET", "team/other-digest", "v1").await;
    assert_denied(&r, "names another digest");
    let r = manifest(&p, "GET", "team/no-valid-layer", "v1").await;
    assert_denied(&r, "no signature");
}

/// A digest no image has, for a payload that names another one.
fn imgs_other_digest() -> String {
    format!("sha256:{}", "ab".repeat(32))
}

/// `threshold = 2` counts distinct keys: two signatures by one key are one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_of_two_needs_two_distinct_keys() {
    let (upstream, push) = upstream();
    let tools = Tools::new();
    let a = tools.openssl_key("a", Algorithm::EcdsaP256);
    let b = tools.openssl_key("b", Algorithm::Ed25519);
    let host = upstream.host();
    let one = pushed(&push, "team/one-key", "th-one").await;
    let two = pushed(&push, "team/two-keys", "th-two").await;
    let r1 = format!("{host}/team/one-key");
    let r2 = format!("{host}/team/two-keys");
    // Two layers by the same key (ECDSA signatures differ each time).
    sign::push_signatures(
        &push,
        "team/one-key",
        &one.manifest.digest,
        &[
            SigLayer::signed_by(&a, &r1, &one.manifest.digest),
            SigLayer::signed_by(&a, &r1, &one.manifest.digest),
        ],
    )
    .await;
    sign::push_signatures(
        &push,
        "team/two-keys",
        &two.manifest.digest,
        &[
            SigLayer::signed_by(&a, &r2, &two.manifest.digest),
            SigLayer::signed_by(&b, &r2, &two.manifest.digest),
        ],
    )
    .await;
    let p = mirror(
        &upstream,
        &format!(
            "{}{}",
            keys_toml(&[("a", &a.public), ("b", &b.public)]),
            verify_rule(&upstream, &["a", "b"], "threshold = 2")
        ),
    );
    let r = manifest(&p, "GET", "team/one-key", "v1").await;
    assert_denied(&r, "threshold not met: 1 of 2");
    let r = manifest(&p, "GET", "team/two-keys", "v1").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// The key is a mounted Secret; replacing it (kubelet's `..data` swap) refuses the old
/// key's signatures within 5 s, even though the verdict was cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_refuses_the_old_signatures_within_five_seconds() {
    let (upstream, push) = upstream();
    let tools = Tools::new();
    let old = tools.generate_key_pair("old");
    let new = tools.generate_key_pair("new");
    let img = pushed(&push, "team/app", "rot").await;
    tools
        .sign(
            &old,
            &format!("{}/team/app@{}", upstream.host(), img.manifest.digest),
        )
        .expect("cosign sign");
    let work = tempfile::tempdir().unwrap();
    let mut volume = SecretVolume::with_files(
        &work.path().join("keys"),
        &[("release.pub", old.public_pem().as_bytes())],
    );
    let p = mirror(
        &upstream,
        &format!(
            "{}{}",
            keys_toml(&[("release", &volume.dir)]),
            verify_rule(&upstream, &["release"], "")
        ),
    );
    let r = manifest(&p, "GET", "team/app", "v1").await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    volume.rotate_files(&[("release.pub", new.public_pem().as_bytes())]);
    let rotated = Instant::now();
    loop {
        let r = manifest(&p, "GET", "team/app", img.manifest.digest.as_str()).await;
        if r.status == 403 {
            assert_denied(&r, "unknown key");
            break;
        }
        assert_eq!(r.status, 200);
        assert!(
            rotated.elapsed() < Duration::from_secs(5),
            "the old key still verifies 5 s after the rotation"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Blobs the old verdict allowed are refused too: the allowance was for the old keys.
    let r = blob(&p, "team/app", &img.layers[0].digest).await;
    assert_eq!(r.status, 403);
}

/// With the image and its signatures cached, a restarted mirror whose upstream is down
/// verifies again from its cache and serves; an unsigned image stays denied, and so does a
/// signed manifest whose cache file was tampered with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_cached_verify_with_the_upstream_down() {
    let (mut upstream, push) = upstream();
    let tools = Tools::new();
    let release = tools.generate_key_pair("release");
    let img = pushed(&push, "team/app", "down").await;
    let unsigned = pushed(&push, "team/plain", "down-plain").await;
    tools
        .sign(
            &release,
            &format!("{}/team/app@{}", upstream.host(), img.manifest.digest),
        )
        .expect("cosign sign");
    let mut p = release_mirror(&upstream, &release.public, "");
    assert_eq!(manifest(&p, "GET", "team/app", "v1").await.status, 200);
    assert_eq!(manifest(&p, "GET", "team/plain", "v1").await.status, 403);
    for b in img.blobs() {
        assert_eq!(blob(&p, "team/app", &b.digest).await.status, 200);
    }

    upstream.stop();
    // A restart forgets every verdict and allowance: this is a verification from the
    // cache alone.
    p.terminate(Duration::from_secs(10));
    p.restart();
    // Blobs are refused until a manifest that references them passes again.
    assert_eq!(
        blob(&p, "team/app", &img.layers[0].digest).await.status,
        403
    );
    for reference in ["v1", img.manifest.digest.as_str()] {
        let r = manifest(&p, "GET", "team/app", reference).await;
        assert_eq!(r.status, 200, "{reference}: {:?}\n{}", r.body, p.log());
    }
    for b in img.blobs() {
        let r = blob(&p, "team/app", &b.digest).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.bytes().as_ref(), b.bytes.as_slice());
    }
    let r = manifest(&p, "GET", "team/plain", "v1").await;
    assert_denied(&r, "no signature");
    let _ = unsigned;

    // A cache file changed behind the mirror's back: the signature vouches for the digest,
    // and the bytes no longer are that digest's.
    let file = p.blob_path(&img.manifest.digest);
    let mut bytes = std::fs::read(&file).expect("the cached manifest");
    let at = bytes.iter().position(|b| *b == b'2').expect("a 2");
    bytes[at] = b'3';
    std::fs::write(&file, bytes).expect("tamper");
    let r = manifest(&p, "GET", "team/app", img.manifest.digest.as_str()).await;
    assert_denied(&r, "do not match its digest");
}

/// skopeo pulls a signed image through the mirror, and fails on an unsigned one with the
/// rule in its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_a_signed_image_and_reports_the_rule_for_an_unsigned_one() {
    let (upstream, push) = upstream();
    let tools = Tools::new();
    let release = tools.generate_key_pair("release");
    let img = pushed(&push, "team/app", "sk-signed").await;
    pushed(&push, "team/plain", "sk-plain").await;
    tools
        .sign(
            &release,
            &format!("{}/team/app@{}", upstream.host(), img.manifest.digest),
        )
        .expect("cosign sign");
    let p = release_mirror(&upstream, &release.public, "");
    let work = tempfile::tempdir().unwrap();
    skopeo::pull(
        format!("{}/team/app:v1", p.host()),
        work.path().join("signed"),
        false,
    )
    .await
    .expect("skopeo pulls the signed image");
    assert_eq!(
        skopeo::manifest_digest(&work.path().join("signed")),
        img.manifest.digest
    );
    let err = skopeo::pull(
        format!("{}/team/plain:v1", p.host()),
        work.path().join("plain"),
        false,
    )
    .await
    .expect_err("skopeo must fail on an unsigned image");
    assert!(err.contains("trust rule 1"), "{err}");
    assert!(err.contains("no signature"), "{err}");
}

/// `mode = "warn"` serves what it would deny, and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_mode_serves_and_counts() {
    let (upstream, push) = upstream();
    let tools = Tools::new();
    let release = tools.generate_key_pair("release");
    let img = pushed(&push, "team/plain", "warn").await;
    let p = release_mirror(&upstream, &release.public, "mode = \"warn\"");
    assert_eq!(manifest(&p, "GET", "team/plain", "v1").await.status, 200);
    assert_eq!(
        blob(&p, "team/plain", &img.layers[0].digest).await.status,
        200
    );
    assert_eq!(
        http::metric(
            &p.url(),
            "pullgate_policy_decisions_total{rule=\"0\",outcome=\"warn\"}"
        )
        .await,
        1.0
    );
}

/// A signed index: its children are allowed when fetched through it (lineage), refused
/// when fetched directly and unsigned, allowed directly when signed with `--recursive`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_children_pass_through_a_verified_index_or_by_their_own_signature() {
    let (upstream, push) = upstream();
    let tools = Tools::new();
    let release = tools.generate_key_pair("release");
    let host = upstream.host();
    let flat = images::index("idx-flat", &[2048], Flavor::Oci);
    let deep = images::index("idx-deep", &[2048], Flavor::Oci);
    push.index("team/flat", "v1", &flat).await;
    push.index("team/deep", "v1", &deep).await;
    tools
        .sign(
            &release,
            &format!("{host}/team/flat@{}", flat.manifest.digest),
        )
        .expect("cosign sign");
    tools
        .sign_with(
            &release,
            &format!("{host}/team/deep@{}", deep.manifest.digest),
            &Sign {
                recursive: true,
                ..Sign::default()
            },
        )
        .expect("cosign sign --recursive");
    let trust = format!(
        "{}{}",
        keys_toml(&[("release", &release.public)]),
        verify_rule(&upstream, &["release"], "")
    );

    // Directly, with no index pulled first: only the recursively signed child passes.
    let p = mirror(&upstream, &trust);
    let child = flat.images[0].manifest.digest.as_str();
    let r = manifest(&p, "GET", "team/flat", child).await;
    assert_denied(&r, "no signature");
    let r = manifest(&p, "GET", "team/deep", &deep.images[0].manifest.digest).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Through the verified index: its children, and then their blobs.
    let r = manifest(&p, "GET", "team/flat", "v1").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for img in &flat.images {
        let r = manifest(&p, "GET", "team/flat", &img.manifest.digest).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        for b in img.blobs() {
            assert_eq!(blob(&p, "team/flat", &b.digest).await.status, 200);
        }
    }

    // skopeo --all pulls the whole signed index.
    let work = tempfile::tempdir().unwrap();
    skopeo::pull(
        format!("{}/team/flat:v1", p.host()),
        work.path().join("flat"),
        true,
    )
    .await
    .expect("skopeo --all through a verified index");
}

/// The first error message of a 403 DENIED.
#[track_caller]
fn denied_message(r: &http::Reply) -> String {
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.error_code(), "DENIED");
    message(r)
}

/// Certificates from a private CA: a chain to the configured CA with the rule's identity
/// passes; another identity, or a chain to another CA, is denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_chain_passes_only_with_the_rules_identity() {
    let (upstream, push) = upstream();
    let tools = Tools::new();
    let corp = tools.pki("corp");
    let stranger = tools.pki("stranger");
    let key = tools.generate_key_pair("ci");
    let good = corp.issue(
        "release",
        &key,
        "release@example.com",
        Some("https://ci.example.com"),
    );
    let other_id = corp.issue(
        "intern",
        &key,
        "intern@example.com",
        Some("https://ci.example.com"),
    );
    let foreign = stranger.issue(
        "release",
        &key,
        "release@example.com",
        Some("https://ci.example.com"),
    );
    let host = upstream.host();
    for (repo, cert) in [
        ("team/good", &good),
        ("team/intern", &other_id),
        ("team/stranger", &foreign),
    ] {
        let img = pushed(&push, repo, &format!("ca-{repo}")).await;
        tools
            .sign_with(
                &key,
                &format!("{host}/{repo}@{}", img.manifest.digest),
                &Sign {
                    cert: Some(cert),
                    ..Sign::default()
                },
            )
            .expect("cosign sign --certificate");
    }
    let p = mirror(
        &upstream,
        &format!(
            "[[trust.ca]]\nname = \"corp\"\npath = \"{}\"\n\n{}",
            corp.root().display(),
            verify_rule(
                &upstream,
                &["ca:corp"],
                "identity = { san = \"release@example.com\", issuer = \"https://ci.example.com\" }"
            )
        ),
    );
    let r = manifest(&p, "GET", "team/good", "v1").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let m = denied_message(&manifest(&p, "GET", "team/intern", "v1").await);
    assert!(
        m.contains("intern@example.com") && m.contains("does not match"),
        "{m}"
    );
    let m = denied_message(&manifest(&p, "GET", "team/stranger", "v1").await);
    assert!(m.contains("certificate refused"), "{m}");
}

/// A scan gate with `max_severity = "HIGH"` and `max_age = "1d"`: a HIGH finding passes, a
/// CRITICAL one is denied naming it, a scan three days old is stale, none is no scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vuln_attestations_high_passes_critical_and_stale_and_none_are_denied() {
    let (upstream, push) = upstream();
    let tools = Tools::new();
    let release = tools.generate_key_pair("release");
    let scanner = tools.generate_key_pair("scanner");
    let host = upstream.host();
    let fresh = sign::rfc3339_ago(Duration::from_secs(3600));
    let old = sign::rfc3339_ago(Duration::from_secs(3 * 24 * 3600));
    let cases: [(&str, Option<(&str, &str)>); 4] = [
        ("team/high", Some(("HIGH", fresh.as_str()))),
        ("team/critical", Some(("CRITICAL", fresh.as_str()))),
        ("team/stale", Some(("HIGH", old.as_str()))),
        ("team/unscanned", None),
    ];
    for (repo, scan) in cases {
        let img = pushed(&push, repo, &format!("scan-{repo}")).await;
        let reference = format!("{host}/{repo}@{}", img.manifest.digest);
        tools.sign(&release, &reference).expect("cosign sign");
        if let Some((severity, finished)) = scan {
            tools
                .attest_vuln(
                    &scanner,
                    &reference,
                    &[
                        sign::finding("CVE-2024-1111", severity, "glibc"),
                        sign::finding("CVE-2024-2222", "LOW", "zlib"),
                    ],
                    finished,
                )
                .expect("cosign attest --type vuln");
        }
    }
    let p = mirror(
        &upstream,
        &format!(
            "{}{}",
            keys_toml(&[("release", &release.public), ("scanner", &scanner.public)]),
            verify_rule(
                &upstream,
                &["release"],
                "scan = { signed_by = [\"scanner\"], max_severity = \"HIGH\", max_age = \"1d\" }"
            )
        ),
    );
    let r = manifest(&p, "GET", "team/high", "v1").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = manifest(&p, "GET", "team/critical", "v1").await;
    assert_denied(&r, "CRITICAL CVE-2024-1111 in glibc");
    let r = manifest(&p, "GET", "team/stale", "v1").await;
    assert_denied(&r, "stale scan");
    let r = manifest(&p, "GET", "team/unscanned", "v1").await;
    assert_denied(&r, "no verified scan attestation");

    // The audit line carries the scan summary.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = audit_lines(&p);
        if let Some(l) = lines
            .iter()
            .find(|l| l["repository"] == "team/high" && l["policy"]["scan"].is_string())
        {
            let scan = l["policy"]["scan"].as_str().unwrap_or("");
            assert!(
                scan.contains("worst=HIGH") && scan.contains("high=1"),
                "{scan}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "audit lines: {lines:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A sigstore bundle (`messageSignature` over the manifest) attached as a referrer on a
/// registry without the referrers API: found through the tag-schema fallback index, by
/// the referrer manifest's own `artifactType`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_referrer_verifies_through_the_fallback_index() {
    let (upstream, push) = upstream();
    let tools = Tools::new();
    let release = tools.generate_key_pair("release");
    let other = tools.generate_key_pair("other");
    let host = upstream.host();
    let img = pushed(&push, "team/bundled", "bundle-ok").await;
    let bundle = tools
        .sign_blob_bundle(&release, &img.manifest.bytes)
        .expect("cosign sign-blob --new-bundle-format");
    tools
        .attach_bundle(
            &format!("{host}/team/bundled@{}", img.manifest.digest),
            &bundle,
        )
        .expect("attach the bundle");
    let foreign = pushed(&push, "team/foreign", "bundle-foreign").await;
    let bundle = tools
        .sign_blob_bundle(&other, &foreign.manifest.bytes)
        .expect("cosign sign-blob --new-bundle-format");
    tools
        .attach_bundle(
            &format!("{host}/team/foreign@{}", foreign.manifest.digest),
            &bundle,
        )
        .expect("attach the bundle");
    let p = release_mirror(&upstream, &release.public, "");
    let r = manifest(&p, "GET", "team/bundled", "v1").await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, p.log());
    let r = manifest(&p, "GET", "team/foreign", "v1").await;
    assert_denied(&r, "unknown key");
    // Distribution 2.8's 404 for the referrers API is remembered: asked once, not per image.
    let asked = upstream.count(
        "GET",
        &format!("/v2/team/bundled/referrers/{}", img.manifest.digest),
    ) + upstream.count(
        "GET",
        &format!("/v2/team/foreign/referrers/{}", foreign.manifest.digest),
    );
    assert_eq!(asked, 1, "{:?}", upstream.access_log());
}

/// `pullgate policy check IMAGE` with the mirror's configuration: exit 0 and why for a
/// signed image, exit 1 naming the rule and the reason for an unsigned one, exit 2 for an
/// image that does not exist; `check-config` lists the rules and the keys loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_check_explains_with_an_exit_code_and_check_config_lists_keys() {
    let (upstream, push) = upstream();
    let tools = Tools::new();
    let release = tools.generate_key_pair("release");
    let img = pushed(&push, "team/app", "cli-signed").await;
    pushed(&push, "team/plain", "cli-plain").await;
    tools
        .sign(
            &release,
            &format!("{}/team/app@{}", upstream.host(), img.manifest.digest),
        )
        .expect("cosign sign");
    let p = release_mirror(&upstream, &release.public, "");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pullgate"))
            .args(args)
            .arg("--config")
            .arg(p.config_path())
            .env("RUST_LOG", "warn")
            .output()
            .expect("running pullgate")
    };
    let host = upstream.host();
    let out = run(&["policy", "check", &format!("{host}/team/app:v1")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&img.manifest.digest), "{stdout}");
    assert!(stdout.contains("allowed by trust rule 1 ("), "{stdout}");
    assert!(stdout.contains("key       release ("), "{stdout}");

    let out = run(&["policy", "check", &format!("{host}/team/plain:v1")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("denied by trust rule 1 (") && stdout.contains("no signature"),
        "{stdout}"
    );
    let out = run(&["policy", "check", &format!("{host}/team/none:v1")]);
    assert_eq!(out.status.code(), Some(2));

    let out = run(&["check-config"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rule     trust rule 1 ("), "{stderr}");
    assert!(stderr.contains("ok       trust key release"), "{stderr}");
    assert!(stderr.contains("EcdsaP256 sha256:"), "{stderr}");
    assert!(!stderr.contains("BEGIN PUBLIC KEY"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[[trust.rule]]"), "{stdout}");
}

/// The same bundle on an upstream that has the referrers API (our fault upstream): found
/// through `/v2/<name>/referrers/<digest>`, its manifest and layer through the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_referrer_verifies_through_the_referrers_api() {
    use crate::support::fault::{FaultAuth, FaultUpstream};
    use crate::support::images::Blob;

    let fault = FaultUpstream::start(FaultAuth::None);
    let tools = Tools::new();
    let release = tools.generate_key_pair("release");
    let img = images::image("api-bundle", &[2048], Flavor::Oci, "amd64");
    fault.add_image("team/app", "v1", &img);
    let plain = images::image("api-plain", &[2048], Flavor::Oci, "amd64");
    fault.add_image("team/plain", "v1", &plain);

    let bundle = tools
        .sign_blob_bundle(&release, &img.manifest.bytes)
        .expect("cosign sign-blob --new-bundle-format");
    let layer = Blob::new(sign::BUNDLE_V03, serde_json::to_vec(&bundle).unwrap());
    let empty = Blob::new("application/vnd.oci.empty.v1+json", b"{}".to_vec());
    let referrer = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": sign::OCI_MANIFEST,
        "artifactType": sign::BUNDLE_V03,
        "config": {"mediaType": empty.media_type, "digest": empty.digest, "size": empty.bytes.len()},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.bytes.len()}],
        "subject": {"mediaType": sign::OCI_MANIFEST, "digest": img.manifest.digest, "size": img.manifest.bytes.len()},
    });
    let referrer = Blob::new(sign::OCI_MANIFEST, serde_json::to_vec(&referrer).unwrap());
    fault.add_blob(&layer);
    fault.add_blob(&empty);
    fault.add_manifest("team/app", &referrer.digest, &referrer);
    fault.add_referrer(
        "team/app",
        &img.manifest.digest,
        serde_json::json!({
            "mediaType": sign::OCI_MANIFEST,
            "digest": referrer.digest,
            "size": referrer.bytes.len(),
            "artifactType": sign::BUNDLE_V03,
        }),
    );

    let mut opts = Options::new(&fault.url());
    opts.extra = format!(
        "{}[[trust.rule]]\nimages = [\"{}/team/**\"]\naction = \"verify\"\nsigned_by = [\"release\"]\n",
        keys_toml(&[("release", &release.public)]),
        fault.host()
    );
    let p = Pullgate::start(opts);
    let r = manifest(&p, "GET", "team/app", "v1").await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, p.log());
    assert!(
        fault.count(
            "GET",
            &format!("/v2/team/app/referrers/{}", img.manifest.digest)
        ) >= 1,
        "{:?}",
        fault.requests()
    );
    let r = manifest(&p, "GET", "team/plain", "v1").await;
    assert_denied(&r, "no signature");
}

/// containerd, in a loopback-only namespace: with the registry itself as `server` in
/// `hosts.toml`, a mirror's 403 sends it there and the unsigned image is pulled anyway;
/// with the mirror as `server` too, there is nowhere else to go and it reports the denial.
/// A signed image pulls either way.
#[test]
fn containerd_reports_the_denial_when_the_mirror_is_its_only_path() {
    use crate::support::clients::{fails, run, Containerd};
    use crate::support::netns::run_isolated;

    run_isolated(
        "trust::containerd_reports_the_denial_when_the_mirror_is_its_only_path",
        || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let (upstream, push) = upstream();
            let tools = Tools::new();
            let key = tools.openssl_key("release", Algorithm::EcdsaP256);
            let signed = rt.block_on(async {
                let signed = pushed(&push, "library/signed", "ctr-signed").await;
                push.image("library/signed", "latest", &signed).await;
                let layer =
                    SigLayer::signed_by(&key, "docker.io/library/signed", &signed.manifest.digest);
                sign::push_signatures(&push, "library/signed", &signed.manifest.digest, &[layer])
                    .await;
                for name in ["bypassed", "refused"] {
                    let img =
                        pushed(&push, &format!("library/{name}"), &format!("ctr-{name}")).await;
                    push.image(&format!("library/{name}"), "latest", &img).await;
                }
                signed
            });
            let mut opts = Options::new(&upstream.url());
            opts.upstream_name = "docker.io".into();
            opts.extra = format!(
                "{}[[trust.rule]]\nimages = [\"docker.io/library/**\"]\naction = \"verify\"\nsigned_by = [\"release\"]\n",
                keys_toml(&[("release", &key.public)])
            );
            let p = Pullgate::start(opts);
            let containerd = Containerd::start();

            // The registry as `server`: the 403 is routed around.
            containerd.mirror("docker.io", &upstream.url(), &p.url());
            run(&mut containerd.pull(&[], "docker.io/library/bypassed:latest"));

            // The mirror as `server` too: the denial is the answer.
            containerd.mirror("docker.io", &p.url(), &p.url());
            let err = fails(&mut containerd.pull(&[], "docker.io/library/refused:latest"));
            assert!(err.contains("403"), "{err}\n{}", p.log());
            run(&mut containerd.pull(&[], "docker.io/library/signed:latest"));
            let list = run(containerd.ctr().args(["images", "ls"]));
            assert!(list.contains(&signed.manifest.digest), "{list}");
            assert!(!list.contains("library/refused"), "{list}");
        },
    );
}

/// `sbom = {}`: an SPDX or CycloneDX attestation by the rule's signers is required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sbom_requirement_needs_a_signed_sbom_attestation() {
    let (upstream, push) = upstream();
    let tools = Tools::new();
    let release = tools.generate_key_pair("release");
    let host = upstream.host();
    for repo in ["team/spdx", "team/cyclonedx", "team/bare"] {
        let img = pushed(&push, repo, &format!("sbom-{repo}")).await;
        let reference = format!("{host}/{repo}@{}", img.manifest.digest);
        tools.sign(&release, &reference).expect("cosign sign");
        match repo {
            "team/spdx" => tools.attest_sbom(&release, &reference).map(|_| ()),
            "team/cyclonedx" => tools.attest_cyclonedx(&release, &reference).map(|_| ()),
            _ => Ok(()),
        }
        .expect("cosign attest");
    }
    let p = release_mirror(&upstream, &release.public, "sbom = {}");
    for repo in ["team/spdx", "team/cyclonedx"] {
        let r = manifest(&p, "GET", repo, "v1").await;
        assert_eq!(r.status, 200, "{repo}: {:?}", r.body);
    }
    let r = manifest(&p, "GET", "team/bare", "v1").await;
    assert_denied(&r, "no verified SBOM attestation");
}

/// pullgate standing in for Docker Hub with a verify rule on `docker.io/library/**`, over a
/// Distribution upstream holding `library/signed:latest` (signed with openssl, by the
/// configured key) and `library/plain:latest` (unsigned). For the client tests, which run
/// in their own network namespace.
fn hub_with_policy(rt: &tokio::runtime::Runtime) -> (Distribution, Pullgate, Image, Tools) {
    let (upstream, push) = upstream();
    let tools = Tools::new();
    let key = tools.openssl_key("release", Algorithm::EcdsaP256);
    let signed = rt.block_on(async {
        let signed = pushed(&push, "library/signed", "cl-signed").await;
        push.image("library/signed", "latest", &signed).await;
        let layer = SigLayer::signed_by(&key, "docker.io/library/signed", &signed.manifest.digest);
        sign::push_signatures(&push, "library/signed", &signed.manifest.digest, &[layer]).await;
        let plain = pushed(&push, "library/plain", "cl-plain").await;
        push.image("library/plain", "latest", &plain).await;
        signed
    });
    let mut opts = Options::new(&upstream.url());
    opts.upstream_name = "docker.io".into();
    opts.extra = format!(
        "{}[[trust.rule]]\nimages = [\"docker.io/library/**\"]\naction = \"verify\"\nsigned_by = [\"release\"]\n",
        keys_toml(&[("release", &key.public)])
    );
    let p = Pullgate::start(opts);
    (upstream, p, signed, tools)
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// podman with a registries.conf mirror: the unsigned image fails naming the rule and the
/// reason; the signed one pulls.
#[test]
fn podman_reports_the_rule_for_an_unsigned_image_and_pulls_a_signed_one() {
    use crate::support::clients::{fails, run, Podman};
    use crate::support::netns::run_isolated;

    run_isolated(
        "trust::podman_reports_the_rule_for_an_unsigned_image_and_pulls_a_signed_one",
        || {
            let rt = client_runtime();
            let (_upstream, p, _signed, _tools) = hub_with_policy(&rt);
            let podman = Podman::mirroring_docker_io(&p.host());
            let err = fails(
                podman
                    .podman()
                    .args(["pull", "docker.io/library/plain:latest"]),
            );
            assert!(
                err.contains("denied by trust rule 1 (docker.io/library/**): no signature"),
                "{err}"
            );
            run(podman
                .podman()
                .args(["pull", "docker.io/library/signed:latest"]));
        },
    );
}

/// dockerd with `registry-mirrors` goes to the registry itself after a mirror's 403 (its
/// error is the registry's, unreachable here, not the mirror's): only an egress rule, as
/// this namespace has, keeps it from pulling the unsigned image. pullgate logs the denial
/// with its rule. The signed image pulls. Pulled by the mirror's own name, the denial is
/// what docker reports.
#[test]
fn docker_falls_back_past_a_denial_so_only_egress_rules_stop_it() {
    use crate::support::clients::{fails, run, Dockerd};
    use crate::support::netns::run_isolated;

    run_isolated(
        "trust::docker_falls_back_past_a_denial_so_only_egress_rules_stop_it",
        || {
            let rt = client_runtime();
            let (_upstream, p, _signed, _tools) = hub_with_policy(&rt);
            let dockerd = Dockerd::start(&p.host());
            let err = fails(dockerd.docker().args(["pull", "plain:latest"]));
            assert!(err.contains("registry-1.docker.io"), "{err}");
            let log = p.log();
            assert!(
                log.lines()
                    .any(|l| l.contains("trust policy denied a manifest")
                        && l.contains("trust rule 1 (docker.io/library/**)")
                        && l.contains("library/plain")),
                "{log}"
            );
            run(dockerd.docker().args(["pull", "signed:latest"]));
            // Named through the mirror itself (the mirror as the only path, as egress rules
            // make it), docker has nowhere else to go and reports the denial with its rule.
            let err = fails(
                dockerd
                    .docker()
                    .args(["pull", &format!("{}/library/plain:latest", p.host())]),
            );
            assert!(
                err.contains("denied by trust rule 1 (docker.io/library/**)"),
                "{err}"
            );
            run(dockerd
                .docker()
                .args(["pull", &format!("{}/library/signed:latest", p.host())]));
        },
    );
}

/// Signatures in another repository (`COSIGN_REPOSITORY`): found there when the rule names
/// it; without it, the image's own repository holds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_in_a_configured_signatures_repository() {
    let (upstream, push) = upstream();
    let host = upstream.host();
    let tools = Tools::new().with_signature_repository(&format!("{host}/sigs/store"));
    let release = tools.generate_key_pair("release");
    let img = pushed(&push, "team/app", "sigrepo").await;
    tools
        .sign(
            &release,
            &format!("{host}/team/app@{}", img.manifest.digest),
        )
        .expect("cosign sign with COSIGN_REPOSITORY");
    assert!(sign::tags(&upstream.url(), "sigs/store")
        .await
        .contains(&sign::sig_tag(&img.manifest.digest)));

    let keys = keys_toml(&[("release", &release.public)]);
    let p = mirror(
        &upstream,
        &format!(
            "{keys}{}",
            verify_rule(
                &upstream,
                &["release"],
                &format!("signatures = \"{host}/sigs/store\"")
            )
        ),
    );
    let r = manifest(&p, "GET", "team/app", "v1").await;
    assert_eq!(r.status, 200, "{:?}\n{}", r.body, p.log());
    for b in img.blobs() {
        assert_eq!(blob(&p, "team/app", &b.digest).await.status, 200);
    }

    let p = mirror(
        &upstream,
        &format!("{keys}{}", verify_rule(&upstream, &["release"], "")),
    );
    let r = manifest(&p, "GET", "team/app", "v1").await;
    assert_denied(&r, "no signature");
}

/// Sixteen clients pulling a newly signed image at once share one verification: the
/// upstream is asked once for each piece of signature material, in one round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_share_one_verification() {
    let (upstream, push) = upstream();
    let tools = Tools::new();
    let release = tools.generate_key_pair("release");
    let img = pushed(&push, "team/app", "coalesce").await;
    let digest = img.manifest.digest.clone();
    tools
        .sign(&release, &format!("{}/team/app@{digest}", upstream.host()))
        .expect("cosign sign");
    let p = release_mirror(&upstream, &release.public, "");
    let pulls = (0..16).map(|_| manifest(&p, "GET", "team/app", &digest));
    for r in futures_util::future::join_all(pulls).await {
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    // And a first verification costs one round trip per piece: a GET of each signature
    // tag (no HEAD first), one of the referrers API, one of the fallback tag.
    let sig = format!("/v2/team/app/manifests/{}", sign::sig_tag(&digest));
    let att = format!("/v2/team/app/manifests/{}", sign::att_tag(&digest));
    let fallback = format!("/v2/team/app/manifests/{}", sign::referrers_tag(&digest));
    for (method, path, n) in [
        ("GET", format!("/v2/team/app/referrers/{digest}"), 1),
        ("GET", sig.clone(), 1),
        ("HEAD", sig, 0),
        ("GET", att.clone(), 1),
        ("HEAD", att, 0),
        ("GET", fallback.clone(), 1),
        ("HEAD", fallback, 0),
    ] {
        assert_eq!(upstream.count(method, &path), n, "{method} {path}");
    }
}

/// A cache file changed after its manifest passed (a tampered disk) is refused on the next
/// hit, though its verdict is cached: a hit compares the bytes with those the verdict was
/// reached on, and hashes them when they differ. Put back, the file is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_file_changed_under_a_cached_verdict_is_refused() {
    let (upstream, push) = upstream();
    let tools = Tools::new();
    let key = tools.openssl_key("release", Algorithm::EcdsaP256);
    let repo = "team/app";
    let img = pushed(&push, repo, "tamper-on-disk").await;
    let digest = img.manifest.digest.clone();
    let layer = SigLayer::signed_by(&key, &format!("{}/{repo}", upstream.host()), &digest);
    sign::push_signatures(&push, repo, &digest, &[layer]).await;
    let p = release_mirror(&upstream, &key.public, "");
    for _ in 0..2 {
        let r = manifest(&p, "GET", repo, &digest).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    // One hex digit of a layer's digest changed in place: the same size, still JSON.
    let path = p.blob_path(&digest);
    let original = std::fs::read(&path).expect("the cached manifest");
    let mut changed = original.clone();
    let at = changed
        .windows(7)
        .position(|w| w == b"sha256:")
        .expect("a digest in the manifest")
        + 7;
    changed[at] = if changed[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&path, &changed).expect("tamper");
    for reference in [digest.as_str(), "v1"] {
        let r = manifest(&p, "GET", repo, reference).await;
        assert_denied(&r, "do not match its digest");
    }
    std::fs::write(&path, &original).expect("restore");
    let r = manifest(&p, "GET", repo, &digest).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.bytes(), &original[..]);
}
