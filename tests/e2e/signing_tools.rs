//! The signing harness (`support/sign.rs`) against a real CNCF Distribution 2.8, with no
//! pullgate in between: cosign 2.5 signs, attests and verifies; oras 1.2 attaches referrers;
//! openssl signs payloads the harness pushes, and cosign verifies those too, so the crafted
//! format is checked by an independent implementation (and the crafted bad cases are really
//! bad).

use base64::Engine as _;
use serde_json::Value;

use crate::support::distribution::{Auth, Distribution};
use crate::support::images::{self, Flavor, Pusher};
use crate::support::sign::{
    self, att_tag, finding, referrers_tag, sig_tag, Algorithm, Attest, SigLayer, Sign, Tools,
};

/// An upstream holding one small image under `repo:v1`; returns it with the image's digest.
async fn upstream_with(repo: &str, seed: &str) -> (Distribution, Pusher, String) {
    let upstream = Distribution::start(Auth::Anonymous);
    let push = Pusher::new(&upstream.url(), None);
    let img = images::image(seed, &[2048], Flavor::Oci, "amd64");
    push.image(repo, "v1", &img).await;
    (upstream, push, img.manifest.digest)
}

fn layers(m: &Value) -> &Vec<Value> {
    m["layers"].as_array().expect("layers")
}

fn annotation<'a>(layer: &'a Value, key: &str) -> Option<&'a str> {
    layer["annotations"][key].as_str()
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

#[tokio::test]
async fn cosign_signs_by_key_on_the_tag_scheme_and_verifies_against_distribution() {
    let (upstream, _push, digest) = upstream_with("team/app", "sign-key").await;
    let tools = Tools::new();
    let key = tools.generate_key_pair("release");
    let other = tools.generate_key_pair("other");
    let reference = format!("{}/team/app@{digest}", upstream.host());

    tools.sign(&key, &reference).expect("cosign sign");
    tools
        .verify(&key.public, &reference)
        .expect("cosign verify with the signing key");
    let err = tools
        .verify(&other.public, &reference)
        .expect_err("another key must not verify");
    assert!(err.contains("no matching signatures"), "{err}");

    assert!(sign::tags(&upstream.url(), "team/app")
        .await
        .contains(&sig_tag(&digest)));
    let m = sign::fetch_manifest(&upstream.url(), "team/app", &sig_tag(&digest))
        .await
        .expect("the .sig manifest");
    assert_eq!(m["mediaType"], sign::OCI_MANIFEST);
    let l = &layers(&m)[0];
    assert_eq!(l["mediaType"], sign::SIMPLE_SIGNING);
    let sig = annotation(l, sign::SIGNATURE_ANNOTATION).expect("signature annotation");
    assert!(!b64(sig).is_empty());
    // cosign's payload is byte for byte what the harness crafts for the openssl signer.
    let payload =
        sign::fetch_blob(&upstream.url(), "team/app", l["digest"].as_str().unwrap()).await;
    assert_eq!(
        String::from_utf8(payload).unwrap(),
        String::from_utf8(sign::simple_signing_payload(
            &format!("{}/team/app", upstream.host()),
            &digest
        ))
        .unwrap()
    );

    // cosign does not sign again what the key already signed (its dupe detector verifies the
    // existing layers); a second signature by the same key over another payload (an extra
    // annotation) is a second layer under the same tag.
    tools.sign(&key, &reference).expect("cosign sign again");
    let m = sign::fetch_manifest(&upstream.url(), "team/app", &sig_tag(&digest))
        .await
        .unwrap();
    assert_eq!(layers(&m).len(), 1, "{m}");
    tools
        .sign_with(
            &key,
            &reference,
            &Sign {
                annotations: vec![("run".into(), "2".into())],
                ..Sign::default()
            },
        )
        .expect("second cosign sign");
    let m = sign::fetch_manifest(&upstream.url(), "team/app", &sig_tag(&digest))
        .await
        .unwrap();
    assert_eq!(layers(&m).len(), 2, "{m}");
}

#[tokio::test]
async fn cosign_attests_vuln_and_sbom_predicates_on_the_att_tag() {
    let (upstream, _push, digest) = upstream_with("team/scanned", "attest").await;
    let tools = Tools::new();
    let scanner = tools.generate_key_pair("scanner");
    let reference = format!("{}/team/scanned@{digest}", upstream.host());
    let finished = sign::rfc3339_ago(std::time::Duration::from_secs(3600));

    tools
        .attest_vuln(
            &scanner,
            &reference,
            &[
                finding("CVE-2024-0001", "HIGH", "openssl"),
                finding("CVE-2024-0002", "LOW", "zlib"),
            ],
            &finished,
        )
        .expect("cosign attest --type vuln");
    tools
        .attest_sbom(&scanner, &reference)
        .expect("cosign attest --type spdxjson");
    tools
        .verify_attestation(&scanner.public, &reference, "vuln", false)
        .expect("cosign verify-attestation --type vuln");

    assert!(sign::tags(&upstream.url(), "team/scanned")
        .await
        .contains(&att_tag(&digest)));
    let m = sign::fetch_manifest(&upstream.url(), "team/scanned", &att_tag(&digest))
        .await
        .expect("the .att manifest");
    let ls = layers(&m);
    assert_eq!(ls.len(), 2, "{m}");
    let types: Vec<_> = ls.iter().map(|l| annotation(l, "predicateType")).collect();
    assert_eq!(
        types,
        [Some(sign::VULN_PREDICATE), Some(sign::SPDX_PREDICATE)],
        "{m}"
    );
    for l in ls {
        assert_eq!(l["mediaType"], sign::DSSE);
    }
    // The DSSE envelope holds an in-toto statement about the digest with Trivy's shape.
    let env: Value = serde_json::from_slice(
        &sign::fetch_blob(
            &upstream.url(),
            "team/scanned",
            ls[0]["digest"].as_str().unwrap(),
        )
        .await,
    )
    .unwrap();
    assert_eq!(env["payloadType"], "application/vnd.in-toto+json");
    assert!(env["signatures"][0]["sig"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    let statement: Value = serde_json::from_slice(&b64(env["payload"].as_str().unwrap())).unwrap();
    assert_eq!(statement["predicateType"], sign::VULN_PREDICATE);
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        digest.trim_start_matches("sha256:")
    );
    let p = &statement["predicate"];
    assert_eq!(p["metadata"]["scanFinishedOn"], finished.as_str());
    let v = &p["scanner"]["result"]["Results"][0]["Vulnerabilities"];
    assert_eq!(v[0]["VulnerabilityID"], "CVE-2024-0001");
    assert_eq!(v[0]["Severity"], "HIGH");
    assert_eq!(v[0]["PkgName"], "openssl");
    assert_eq!(v[1]["Severity"], "LOW");
}

#[tokio::test]
async fn cosign_signs_with_a_private_ca_certificate_chain_and_verifies_offline() {
    let (upstream, _push, digest) = upstream_with("team/pki", "cert-chain").await;
    let tools = Tools::new();
    let corp = tools.pki("corp");
    let stranger = tools.pki("stranger");
    let key = tools.generate_key_pair("ci");
    let cert = corp.issue(
        "release",
        &key,
        "release@example.com",
        Some("https://ci.example.com"),
    );
    let reference = format!("{}/team/pki@{digest}", upstream.host());

    tools
        .sign_with(
            &key,
            &reference,
            &Sign {
                cert: Some(&cert),
                ..Sign::default()
            },
        )
        .expect("cosign sign --certificate --certificate-chain");

    let m = sign::fetch_manifest(&upstream.url(), "team/pki", &sig_tag(&digest))
        .await
        .unwrap();
    let l = &layers(&m)[0];
    assert!(annotation(l, sign::CERTIFICATE_ANNOTATION)
        .is_some_and(|c| c.starts_with("-----BEGIN CERTIFICATE-----")));
    assert_eq!(
        annotation(l, sign::CHAIN_ANNOTATION).map(|c| c.matches("BEGIN CERTIFICATE").count()),
        Some(2),
        "intermediate and root"
    );

    let (id, issuer) = ("release@example.com", "https://ci.example.com");
    tools
        .verify_certificate(&reference, &corp.root(), id, issuer)
        .expect("verify with --ca-roots");
    tools
        .verify_certificate_chain(&reference, &corp.chain(), id, issuer)
        .expect("verify with --certificate-chain");
    let err = tools
        .verify_certificate(&reference, &corp.root(), "mallory@example.com", issuer)
        .expect_err("another identity");
    assert!(
        err.contains("none of the expected identities matched"),
        "{err}"
    );
    let err = tools
        .verify_certificate(&reference, &corp.root(), id, "https://other.example.com")
        .expect_err("another issuer");
    assert!(
        err.contains("none of the expected identities matched"),
        "{err}"
    );
    let err = tools
        .verify_certificate(&reference, &stranger.root(), id, issuer)
        .expect_err("another CA");
    assert!(
        err.contains("certificate signed by unknown authority"),
        "{err}"
    );
}

#[tokio::test]
async fn openssl_signatures_pushed_by_the_harness_verify_with_cosign() {
    let (upstream, push, digest) = upstream_with("team/openssl", "openssl").await;
    let other = images::image("openssl-other", &[1024], Flavor::Oci, "amd64");
    push.image("team/openssl", "other", &other).await;
    let tools = Tools::new();
    let docker_ref = format!("{}/team/openssl", upstream.host());
    let reference = format!("{docker_ref}@{digest}");
    let url = upstream.url();

    for alg in [
        Algorithm::EcdsaP256,
        Algorithm::EcdsaP384,
        Algorithm::Rsa2048,
        Algorithm::Ed25519,
    ] {
        let key = tools.openssl_key(&format!("{alg:?}"), alg);
        let layer = SigLayer::signed_by(&key, &docker_ref, &digest);
        sign::push_signatures(&push, "team/openssl", &digest, &[layer]).await;
        tools
            .verify(&key.public, &reference)
            .unwrap_or_else(|e| panic!("cosign verifies an openssl {alg:?} signature: {e}"));
    }

    let key = tools.openssl_key("p256", Algorithm::EcdsaP256);
    let good = SigLayer::signed_by(&key, &docker_ref, &digest);

    // A tampered payload: the signature is over other bytes.
    let mut tampered = good.clone();
    tampered.payload = sign::simple_signing_payload("example.com/tampered", &digest);
    // A payload naming another digest, validly signed.
    let elsewhere = SigLayer::signed_by(&key, &docker_ref, &other.manifest.digest);
    // No valid layer: no signature annotation, and a signature on a layer of another type.
    let mut bare = good.clone();
    bare.annotations.clear();
    let mut wrong_type = good.clone();
    wrong_type.media_type = "application/octet-stream".into();
    let mut garbage = good.clone();
    garbage.annotations = vec![(
        sign::SIGNATURE_ANNOTATION.into(),
        "bm90IGEgc2lnbmF0dXJl".into(),
    )];

    for (name, layers) in [
        ("tampered payload", vec![tampered]),
        ("payload naming another digest", vec![elsewhere]),
        ("no signature annotation", vec![bare]),
        ("garbage signature", vec![garbage]),
    ] {
        sign::push_signatures(&push, "team/openssl", &digest, &layers).await;
        let err = tools
            .verify(&key.public, &reference)
            .expect_err(&format!("cosign must refuse a {name}"));
        assert!(
            err.contains("no matching signatures") || err.contains("no signatures found"),
            "{name}: {err}"
        );
    }
    // cosign reads only the layers' annotations, not their media type: it accepts a valid
    // signature on a layer of another type. A verifier that insists on the simple-signing
    // type is stricter than cosign here.
    sign::push_signatures(&push, "team/openssl", &digest, &[wrong_type]).await;
    tools
        .verify(&key.public, &reference)
        .expect("cosign ignores the layer's media type");

    // One good layer among bad ones verifies.
    let mut bad = good.clone();
    bad.payload = b"{}".to_vec();
    sign::push_signatures(&push, "team/openssl", &digest, &[bad, good]).await;
    tools
        .verify(&key.public, &reference)
        .expect("a good layer after a bad one");
    let m = sign::fetch_manifest(&url, "team/openssl", &sig_tag(&digest))
        .await
        .unwrap();
    assert_eq!(layers(&m).len(), 2);
}

#[tokio::test]
async fn cosign_signs_an_index_with_and_without_recursive() {
    let upstream = Distribution::start(Auth::Anonymous);
    let push = Pusher::new(&upstream.url(), None);
    let flat = images::index("idx-flat", &[1024], Flavor::Oci);
    let deep = images::index("idx-deep", &[1024], Flavor::Oci);
    push.index("team/multi", "flat", &flat).await;
    push.index("team/multi", "deep", &deep).await;
    let tools = Tools::new();
    let key = tools.generate_key_pair("release");
    let host = upstream.host();

    tools
        .sign(&key, &format!("{host}/team/multi@{}", flat.manifest.digest))
        .expect("sign the index only");
    tools
        .sign_with(
            &key,
            &format!("{host}/team/multi@{}", deep.manifest.digest),
            &Sign {
                recursive: true,
                ..Sign::default()
            },
        )
        .expect("sign --recursive");

    let tags = sign::tags(&upstream.url(), "team/multi").await;
    assert!(tags.contains(&sig_tag(&flat.manifest.digest)));
    assert!(tags.contains(&sig_tag(&deep.manifest.digest)));
    for child in &flat.images {
        assert!(!tags.contains(&sig_tag(&child.manifest.digest)), "{tags:?}");
        let err = tools
            .verify(
                &key.public,
                &format!("{host}/team/multi@{}", child.manifest.digest),
            )
            .expect_err("an unsigned child");
        assert!(err.contains("no signatures found"), "{err}");
    }
    for child in &deep.images {
        assert!(tags.contains(&sig_tag(&child.manifest.digest)), "{tags:?}");
        tools
            .verify(
                &key.public,
                &format!("{host}/team/multi@{}", child.manifest.digest),
            )
            .expect("a child signed by --recursive");
    }
}

#[tokio::test]
async fn bundles_and_referrers_fall_back_to_the_tag_schema_on_distribution() {
    let (upstream, _push, digest) = upstream_with("team/refs", "referrers").await;
    let url = upstream.url();
    // Distribution 2.8 has no referrers API.
    let r = crate::support::http::get(&format!("{url}/v2/team/refs/referrers/{digest}")).await;
    assert_eq!(r.status, 404);

    let tools = Tools::new();
    let key = tools.generate_key_pair("release");
    let reference = format!("{}/team/refs@{digest}", upstream.host());
    let finished = sign::rfc3339_ago(std::time::Duration::from_secs(60));

    // A sigstore bundle v0.3 (DSSE) of a vuln attestation.
    tools
        .attest_with(
            &key,
            &reference,
            "vuln",
            &sign::vuln_predicate(&[finding("CVE-2024-0003", "CRITICAL", "glibc")], &finished),
            &Attest {
                new_bundle: true,
                ..Attest::default()
            },
        )
        .expect("cosign attest --new-bundle-format");
    tools
        .verify_attestation(&key.public, &reference, "vuln", true)
        .expect("cosign verify-attestation --new-bundle-format");
    // A simple-signing signature as a referrer.
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
    tools
        .verify_referrers(&key.public, &reference)
        .expect("cosign verify --experimental-oci11");
    let err = tools
        .verify(&key.public, &reference)
        .expect_err("plain cosign verify reads only the .sig tag");
    assert!(err.contains("no signatures found"), "{err}");
    // An arbitrary referrer.
    let oras = tools
        .oras_attach(
            &reference,
            "application/vnd.example.report+json",
            b"{\"ok\":true}",
            "application/json",
            &[("org.example.kind", "report")],
        )
        .expect("oras attach");

    let tags = sign::tags(&url, "team/refs").await;
    assert!(tags.contains(&referrers_tag(&digest)), "{tags:?}");
    assert!(!tags.contains(&sig_tag(&digest)), "{tags:?}");
    assert!(!tags.contains(&att_tag(&digest)), "{tags:?}");
    let index = sign::fetch_manifest(&url, "team/refs", &referrers_tag(&digest))
        .await
        .expect("the fallback index");
    assert_eq!(index["mediaType"], sign::OCI_INDEX);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{index}");

    let mut seen = Vec::new();
    for e in entries {
        let d = e["digest"].as_str().unwrap();
        let m = sign::fetch_manifest(&url, "team/refs", d).await.unwrap();
        assert_eq!(m["subject"]["digest"], digest.as_str(), "{m}");
        let kind = m["artifactType"]
            .as_str()
            .or(m["config"]["mediaType"].as_str())
            .unwrap()
            .to_owned();
        match kind.as_str() {
            sign::BUNDLE_V03 => {
                // go-containerregistry's fallback index names the config's type instead.
                assert_eq!(e["artifactType"], "application/vnd.oci.empty.v1+json");
                let l = &layers(&m)[0];
                assert_eq!(l["mediaType"], sign::BUNDLE_V03);
                assert_eq!(
                    m["annotations"]["dev.sigstore.bundle.predicateType"],
                    sign::VULN_PREDICATE
                );
                let bundle: Value = serde_json::from_slice(
                    &sign::fetch_blob(&url, "team/refs", l["digest"].as_str().unwrap()).await,
                )
                .unwrap();
                assert_eq!(bundle["mediaType"], sign::BUNDLE_V03);
                assert!(bundle["verificationMaterial"]["publicKey"]["hint"].is_string());
                assert_eq!(
                    bundle["dsseEnvelope"]["payloadType"],
                    "application/vnd.in-toto+json"
                );
            }
            sign::COSIGN_SIG_ARTIFACT => {
                assert_eq!(e["artifactType"], sign::COSIGN_SIG_ARTIFACT);
                let l = &layers(&m)[0];
                assert_eq!(l["mediaType"], sign::SIMPLE_SIGNING);
                assert!(annotation(l, sign::SIGNATURE_ANNOTATION).is_some());
            }
            "application/vnd.example.report+json" => {
                assert_eq!(d, oras);
                assert_eq!(e["artifactType"], kind.as_str());
                assert_eq!(m["annotations"]["org.example.kind"], "report");
                assert_eq!(layers(&m)[0]["mediaType"], "application/json");
            }
            other => panic!("unexpected referrer {other}: {m}"),
        }
        seen.push(kind);
    }
    seen.sort();
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn cosign_and_oras_with_basic_credentials_and_a_signature_repository() {
    let upstream = Distribution::start(Auth::Basic {
        user: "signer".into(),
        password: "s3cret".into(),
    });
    let creds = upstream.auth.clone();
    let push = Pusher::new(&upstream.url(), creds.clone());
    let img = images::image("sigrepo", &[1024], Flavor::Docker, "amd64");
    push.image("team/private", "v1", &img).await;
    let digest = &img.manifest.digest;
    let host = upstream.host();
    let authed = format!("http://signer:s3cret@{host}");
    let tools = Tools::new()
        .with_creds("signer", "s3cret")
        .with_signature_repository(&format!("{host}/team/signatures"));
    let key = tools.generate_key_pair("release");
    let reference = format!("{host}/team/private@{digest}");

    tools
        .sign(&key, &reference)
        .expect("cosign sign with credentials");
    tools
        .attest_cyclonedx(&key, &reference)
        .expect("cosign attest --type cyclonedx");
    tools
        .verify(&key.public, &reference)
        .expect("cosign verify reads the signature repository");
    tools
        .verify_attestation(&key.public, &reference, "cyclonedx", false)
        .expect("cosign verify-attestation --type cyclonedx");

    // Signatures and attestations are in the signature repository, not the image's.
    let sigs = sign::tags(&authed, "team/signatures").await;
    assert!(sigs.contains(&sig_tag(digest)), "{sigs:?}");
    assert!(sigs.contains(&att_tag(digest)), "{sigs:?}");
    assert_eq!(sign::tags(&authed, "team/private").await, ["v1"]);
    let att = sign::fetch_manifest(&authed, "team/signatures", &att_tag(digest))
        .await
        .unwrap();
    assert_eq!(
        annotation(&layers(&att)[0], "predicateType"),
        Some(sign::CYCLONEDX_PREDICATE)
    );
    // Anonymous reads are refused: the credentials did the work.
    let r = crate::support::http::get(&format!("{}/v2/team/signatures/tags/list", upstream.url()))
        .await;
    assert_eq!(r.status, 401);

    let oras = tools
        .oras_attach(
            &reference,
            "application/vnd.example.note",
            b"note",
            "text/plain",
            &[],
        )
        .expect("oras attach with credentials");
    let index = sign::fetch_manifest(&authed, "team/private", &referrers_tag(digest))
        .await
        .expect("oras's fallback index in the image's repository");
    assert_eq!(index["manifests"][0]["digest"], oras.as_str());
}

#[tokio::test]
async fn a_message_signature_bundle_over_the_manifest_attaches_as_a_referrer() {
    let upstream = Distribution::start(Auth::Anonymous);
    let push = Pusher::new(&upstream.url(), None);
    let img = images::image("msgsig", &[1024], Flavor::Oci, "amd64");
    push.image("team/bundle", "v1", &img).await;
    let digest = &img.manifest.digest;
    let url = upstream.url();
    let tools = Tools::new();
    let key = tools.generate_key_pair("release");
    let reference = format!("{}/team/bundle@{digest}", upstream.host());

    let bundle = tools
        .sign_blob_bundle(&key, &img.manifest.bytes)
        .expect("cosign sign-blob --new-bundle-format");
    assert_eq!(bundle["mediaType"], sign::BUNDLE_V03);
    let md = &bundle["messageSignature"]["messageDigest"];
    assert_eq!(md["algorithm"], "SHA2_256");
    assert_eq!(
        hex::encode(b64(md["digest"].as_str().unwrap())),
        digest.trim_start_matches("sha256:"),
        "the message digest is the image's digest"
    );
    tools
        .verify_blob_bundle(&key.public, &bundle, &img.manifest.bytes)
        .expect("cosign verify-blob --bundle");
    tools
        .verify_blob_bundle(&key.public, &bundle, b"other bytes")
        .expect_err("the bundle is over the manifest's bytes only");

    let referrer = tools.attach_bundle(&reference, &bundle).expect("attach");
    let index = sign::fetch_manifest(&url, "team/bundle", &referrers_tag(digest))
        .await
        .expect("the fallback index");
    assert_eq!(index["manifests"][0]["digest"], referrer.as_str());
    assert_eq!(index["manifests"][0]["artifactType"], sign::BUNDLE_V03);
    let m = sign::fetch_manifest(&url, "team/bundle", &referrer)
        .await
        .unwrap();
    assert_eq!(m["artifactType"], sign::BUNDLE_V03);
    assert_eq!(m["subject"]["digest"], digest.as_str());
    assert_eq!(
        m["annotations"]["dev.sigstore.bundle.content"],
        "message-signature"
    );
    let stored: Value = serde_json::from_slice(
        &sign::fetch_blob(
            &url,
            "team/bundle",
            m["layers"][0]["digest"].as_str().unwrap(),
        )
        .await,
    )
    .unwrap();
    assert_eq!(stored, bundle);
}
