//! Referrers through pullgate: the answer cached per (upstream, repository, subject,
//! `artifactType`), synthesized from the tag-schema fallback (`sha256-<hex>`) where the
//! upstream has no referrers API (Distribution 2.8), revalidated after the tag TTL, served
//! stale when the upstream is down; and a signed image's signatures and SBOM still listed
//! and pullable with the upstream stopped.

use std::time::Duration;

use serde_json::Value;

use crate::support::distribution::{Auth, Distribution};
use crate::support::fault::{Fault, FaultAuth, FaultUpstream};
use crate::support::http::{self, get};
use crate::support::images::{self, sha256, Flavor, Pusher};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::sign::{self, sig_tag, Attest, Sign, Tools};

const SPDX: &str = "application/spdx+json";

fn json(r: &http::Reply) -> Value {
    serde_json::from_slice(r.bytes()).expect("a JSON body")
}

fn digests(index: &Value) -> Vec<String> {
    let mut d: Vec<String> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|e| e["digest"].as_str().unwrap().to_owned())
        .collect();
    d.sort();
    d
}

/// Every blob a manifest names (config and layers), fetched through `base`.
async fn pull_all(base: &str, repo: &str, digest: &str) -> (Value, Vec<Vec<u8>>) {
    let m = sign::fetch_manifest(base, repo, digest)
        .await
        .unwrap_or_else(|| panic!("{repo}@{digest} through {base}"));
    let mut blobs = Vec::new();
    let named = std::iter::once(&m["config"]).chain(m["layers"].as_array().unwrap().iter());
    for d in named {
        let digest = d["digest"].as_str().unwrap();
        let bytes = sign::fetch_blob(base, repo, digest).await;
        assert_eq!(sha256(&bytes), digest);
        blobs.push(bytes);
    }
    (m, blobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_and_sboms_are_listed_and_pullable_with_the_upstream_stopped() {
    let mut upstream = Distribution::start(Auth::Anonymous);
    let push = Pusher::new(&upstream.url(), None);
    let img = images::image("referred", &[4096], Flavor::Oci, "amd64");
    push.image("team/app", "v1", &img).await;
    // Another repository of the same upstream, which has no referrers of its own.
    push.image("team/other", "v1", &img).await;
    let digest = img.manifest.digest.clone();

    let tools = Tools::new();
    let key = tools.generate_key_pair("release");
    let reference = format!("{}/team/app@{digest}", upstream.host());
    // A `.sig` tag (cosign's classic scheme) and a signature as an OCI 1.1 referrer, which
    // Distribution has no API for: cosign lists it in the `sha256-<hex>` fallback index.
    tools.sign(&key, &reference).expect("cosign sign");
    tools
        .sign_with(
            &key,
            &reference,
            &Sign {
                referrers: true,
                ..Sign::default()
            },
        )
        .expect("cosign sign --registry-referrers-mode=oci-1-1");
    // A sigstore bundle (DSSE) of an attestation: its fallback index entry says the config's
    // type (`application/vnd.oci.empty.v1+json`); the referrers API reports the manifest's
    // `artifactType`, and so must pullgate's synthesized answer.
    let finished = sign::rfc3339_ago(Duration::from_secs(60));
    tools
        .attest_with(
            &key,
            &reference,
            "vuln",
            &sign::vuln_predicate(
                &[sign::finding("CVE-2024-0003", "CRITICAL", "glibc")],
                &finished,
            ),
            &Attest {
                new_bundle: true,
                ..Attest::default()
            },
        )
        .expect("cosign attest --new-bundle-format");
    let sbom = tools
        .oras_attach(
            &reference,
            SPDX,
            br#"{"spdxVersion":"SPDX-2.3","name":"app"}"#,
            SPDX,
            &[("org.example.kind", "sbom")],
        )
        .expect("oras attach");

    let mut opts = Options::new(&upstream.url());
    opts.tag_ttl = "1s".into();
    let pullgate = Pullgate::start(opts);
    let base = pullgate.url();
    let referrers = format!("{base}/v2/team/app/referrers/{digest}");
    let filtered = format!("{referrers}?artifactType=application%2Fspdx%2Bjson");

    // Synthesized from the fallback index: the signature referrer, the bundle and the SBOM.
    let all = get(&referrers).await;
    assert_eq!(
        all.status,
        200,
        "{:?}",
        String::from_utf8_lossy(all.bytes())
    );
    assert_eq!(all.header("content-type"), Some(sign::OCI_INDEX));
    assert_eq!(all.header("oci-filters-applied"), None);
    let all_index = json(&all);
    assert_eq!(all_index["mediaType"], sign::OCI_INDEX);
    let listed = digests(&all_index);
    assert_eq!(listed.len(), 3, "{all_index}");
    assert!(listed.contains(&sbom), "{all_index}");
    let kinds: Vec<&str> = all_index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["artifactType"].as_str())
        .collect();
    for kind in [sign::COSIGN_SIG_ARTIFACT, sign::BUNDLE_V03, SPDX] {
        assert!(kinds.contains(&kind), "{kind}: {all_index}");
    }
    let bundles = get(&format!(
        "{referrers}?artifactType=application%2Fvnd.dev.sigstore.bundle.v0.3%2Bjson"
    ))
    .await;
    assert_eq!(bundles.header("oci-filters-applied"), Some("artifactType"));
    let bundle_index = json(&bundles);
    assert_eq!(digests(&bundle_index).len(), 1, "{bundle_index}");
    let fallback = sign::fetch_manifest(&upstream.url(), "team/app", &sign::referrers_tag(&digest))
        .await
        .expect("the fallback index");
    let raw = fallback["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["digest"] == bundle_index["manifests"][0]["digest"])
        .expect("the bundle in the fallback index");
    assert_eq!(raw["artifactType"], "application/vnd.oci.empty.v1+json");

    let only_sbom = get(&filtered).await;
    assert_eq!(only_sbom.status, 200);
    assert_eq!(
        only_sbom.header("oci-filters-applied"),
        Some("artifactType")
    );
    let sbom_index = json(&only_sbom);
    assert_eq!(digests(&sbom_index), vec![sbom.clone()], "{sbom_index}");
    assert_eq!(
        sbom_index["manifests"][0]["annotations"]["org.example.kind"],
        "sbom"
    );

    // Pulled through pullgate: every referrer, its config and layers; the `.sig` tag too.
    let mut pulled = Vec::new();
    for d in &listed {
        let (m, blobs) = pull_all(&base, "team/app", d).await;
        assert_eq!(m["subject"]["digest"], digest.as_str(), "{m}");
        pulled.push((d.clone(), m, blobs));
    }
    let sig = pull_all(&base, "team/app", &sig_tag(&digest)).await;
    assert_eq!(
        sign::fetch_manifest(&upstream.url(), "team/app", &sig_tag(&digest)).await,
        Some(sig.0.clone())
    );
    // Another repository gets its own answer (none), never this one's.
    let other = get(&format!("{base}/v2/team/other/referrers/{digest}")).await;
    assert_eq!(other.status, 200);
    assert_eq!(digests(&json(&other)), Vec::<String>::new());

    // Past the TTL, the answer is asked for again (Distribution has no API: 404, then the
    // fallback tag is revalidated with a HEAD).
    let asked = upstream.count("GET", &format!("/v2/team/app/referrers/{digest}"));
    assert!(asked >= 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = get(&referrers).await;
    assert_eq!(again.bytes(), all.bytes());
    assert!(upstream.count("GET", &format!("/v2/team/app/referrers/{digest}")) > asked);

    upstream.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // Everything stale now (the TTL is over, the upstream gone): still served.
    let stale = get(&referrers).await;
    assert_eq!(stale.status, 200, "{}", pullgate.log());
    assert_eq!(stale.bytes(), all.bytes());
    let stale_sbom = get(&filtered).await;
    assert_eq!(stale_sbom.status, 200);
    assert_eq!(
        stale_sbom.header("oci-filters-applied"),
        Some("artifactType")
    );
    assert_eq!(stale_sbom.bytes(), only_sbom.bytes());
    for (d, m, blobs) in &pulled {
        let (m2, blobs2) = pull_all(&base, "team/app", d).await;
        assert_eq!(&m2, m);
        assert_eq!(&blobs2, blobs);
    }
    let sig_again = pull_all(&base, "team/app", &sig_tag(&digest)).await;
    assert_eq!(sig_again, sig);
    // The other repository's cached answer is its own; a third repository has none at all.
    let other = get(&format!("{base}/v2/team/other/referrers/{digest}")).await;
    assert_eq!(digests(&json(&other)), Vec::<String>::new());
    let third = get(&format!("{base}/v2/team/third/referrers/{digest}")).await;
    assert_ne!(
        third.status,
        200,
        "{:?}",
        String::from_utf8_lossy(third.bytes())
    );
    assert!(http::metric(&base, "pullgate_stale_served_total").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referrers_api_answer_is_cached_revalidated_and_served_stale() {
    let upstream = FaultUpstream::start(FaultAuth::None);
    let mut opts = Options::new(&upstream.url());
    opts.tag_ttl = "1s".into();
    let pullgate = Pullgate::start(opts);
    let subject = sha256(b"a subject");
    let path = format!("/v2/team/app/referrers/{subject}");
    let url = format!(
        "{}{path}?artifactType=application%2Fspdx%2Bjson",
        pullgate.url()
    );

    let first = get(&url).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(json(&first)["mediaType"], sign::OCI_INDEX);
    assert_eq!(upstream.count("GET", &path), 1);
    // Within the TTL: from the cache.
    let hit = get(&url).await;
    assert_eq!(hit.bytes(), first.bytes());
    assert_eq!(hit.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(upstream.count("GET", &path), 1);
    assert_eq!(
        http::metric(
            &pullgate.url(),
            "pullgate_cache_hits_total{kind=\"referrers\"}"
        )
        .await,
        1.0
    );

    // Past it: asked again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get(&url).await.bytes(), first.bytes());
    assert_eq!(upstream.count("GET", &path), 2);

    // The upstream answers 503: the cached answer, stale, with its header.
    upstream.set_fault("referrers", Fault::Status(503));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stale = get(&url).await;
    assert_eq!(stale.status, 200, "{}", pullgate.log());
    assert_eq!(stale.bytes(), first.bytes());
    assert_eq!(stale.header("oci-filters-applied"), Some("artifactType"));
    assert!(upstream.count("GET", &path) > 2);
    assert!(pullgate
        .log()
        .contains("serving the cached referrers (stale)"));
    // An answer never cached (no filter) has nothing to fall back on.
    let uncached = get(&format!("{}{path}", pullgate.url())).await;
    assert_eq!(
        uncached.status, 502,
        "the upstream's 503, as pullgate answers an unavailable upstream"
    );
}
