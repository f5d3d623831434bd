//! The trust verifier, as the mirror calls it on a verdict-cache miss: one rule, the
//! signature material of one manifest, a key snapshot, `evaluate` → `Verdict`. Cases: one
//! cosign simple-signing layer by a P-256 key and by an Ed25519 key; a threshold of two
//! distinct keys over eight layers; a DSSE vulnerability attestation through the scan gate.
//! Run: `cargo bench --bench trust_verify`. Each case checks its verdict once before it is
//! timed, so a fast wrong answer cannot pass. Compare runs as ratios (shared machines).

use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use pullgate_oci::Digest;
use pullgate_trust::{
    evaluate, media, pae, Artifact, Keys, Outcome, Policy, PublicKey, Rule, Subject, TrustConfig,
};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};

/// SPKI DER prefixes: ring hands out raw public keys, the trust crate reads SPKI.
const P256_SPKI: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const ED25519_SPKI: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

enum Signer {
    P256(EcdsaKeyPair, SystemRandom),
    Ed25519(Ed25519KeyPair),
}

impl Signer {
    fn p256(rng: &SystemRandom) -> Signer {
        let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, rng).unwrap();
        Signer::P256(
            EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), rng).unwrap(),
            rng.clone(),
        )
    }

    fn ed25519(rng: &SystemRandom) -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(rng).unwrap();
        Signer::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }

    fn public_key(&self) -> PublicKey {
        let der = match self {
            Signer::P256(pair, _) => [&P256_SPKI[..], pair.public_key().as_ref()].concat(),
            Signer::Ed25519(pair) => [&ED25519_SPKI[..], pair.public_key().as_ref()].concat(),
        };
        PublicKey::from_spki_der(&der).unwrap()
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Signer::P256(pair, rng) => pair.sign(rng, message).unwrap().as_ref().to_vec(),
            Signer::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
        }
    }
}

/// A cosign simple-signing layer over `digest`, as `cosign sign` writes it.
fn simple_signing(signer: &Signer, digest: &Digest, nonce: usize) -> Artifact {
    let payload = format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"docker.io/team/app"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":{{"n":{nonce}}}}}"#
    )
    .into_bytes();
    let annotations = BTreeMap::from([(
        media::ANNOTATION_SIGNATURE.to_owned(),
        STANDARD.encode(signer.sign(&payload)),
    )]);
    Artifact::SimpleSigning {
        payload: payload.into(),
        annotations,
    }
}

/// A DSSE envelope holding cosign's vuln predicate (Trivy's result shape) over `digest`.
fn vuln_attestation(signer: &Signer, digest: &Digest, findings: usize) -> Artifact {
    let finished = humantime::format_rfc3339(SystemTime::now()).to_string();
    let vulns: Vec<_> = (0..findings)
        .map(|i| {
            serde_json::json!({
                "VulnerabilityID": format!("CVE-2026-{i:05}"),
                "PkgName": format!("pkg{i}"),
                "InstalledVersion": "1",
                "Severity": if i % 3 == 0 { "HIGH" } else { "MEDIUM" },
            })
        })
        .collect();
    let predicate_type = "https://cosign.sigstore.dev/attestation/vuln/v1";
    let statement = serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "docker.io/team/app", "digest": {"sha256": digest.hex()}}],
        "predicateType": predicate_type,
        "predicate": {
            "scanner": {"uri": "pkg:github/aquasecurity/trivy", "version": "0.58.0",
                "result": {"Results": [{"Target": "debian 12", "Vulnerabilities": vulns}]}},
            "metadata": {"scanStartedOn": finished, "scanFinishedOn": finished},
        },
    }))
    .unwrap();
    let sig = signer.sign(&pae(media::IN_TOTO, &statement));
    let envelope = serde_json::to_vec(&serde_json::json!({
        "payloadType": media::IN_TOTO,
        "payload": STANDARD.encode(&statement),
        "signatures": [{"keyid": "", "sig": STANDARD.encode(sig)}],
    }))
    .unwrap();
    Artifact::Dsse {
        envelope: Bytes::from(envelope),
        annotations: BTreeMap::from([("predicateType".to_owned(), predicate_type.to_owned())]),
    }
}

fn rule(toml_text: &str) -> Rule {
    #[derive(serde::Deserialize)]
    struct File {
        trust: TrustConfig,
    }
    let keys = r#"
[[trust.key]]
name = "release"
path = "/keys/release.pub"
[[trust.key]]
name = "second"
path = "/keys/second.pub"
[[trust.key]]
name = "scanner"
path = "/keys/scanner.pub"
"#;
    let config = toml::from_str::<File>(&format!("{keys}{toml_text}"))
        .unwrap()
        .trust;
    Policy::from_config(&config).unwrap().rules()[0].clone()
}

fn verifier(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let (release, second, scanner) = (
        Signer::p256(&rng),
        Signer::ed25519(&rng),
        Signer::p256(&rng),
    );
    let keys = Keys::new(1)
        .with_key("release", release.public_key())
        .with_key("second", second.public_key())
        .with_key("scanner", scanner.public_key());
    let digest = Digest::sha256_of(b"a manifest");
    let subject = Subject::digest_only(&digest);
    let now = SystemTime::now();

    let one_key = rule(
        "[[trust.rule]]\nimages = [\"docker.io/team/**\"]\naction = \"verify\"\nsigned_by = [\"release\", \"second\"]\n",
    );
    let two_keys = rule(
        "[[trust.rule]]\nimages = [\"docker.io/team/**\"]\naction = \"verify\"\nsigned_by = [\"release\", \"second\"]\nthreshold = 2\n",
    );
    let scanned = rule(
        "[[trust.rule]]\nimages = [\"docker.io/team/**\"]\naction = \"verify\"\nsigned_by = [\"release\"]\nscan = { signed_by = [\"scanner\"], max_severity = \"HIGH\", max_age = \"7d\" }\n",
    );

    let p256 = vec![simple_signing(&release, &digest, 0)];
    let ed25519 = vec![simple_signing(&second, &digest, 0)];
    // Eight layers, as an image signed over months collects them; two distinct keys.
    let eight: Vec<Artifact> = (0..8)
        .map(|i| {
            let signer = if i % 2 == 0 { &release } else { &second };
            simple_signing(signer, &digest, i)
        })
        .collect();
    let with_scan = vec![
        simple_signing(&release, &digest, 0),
        vuln_attestation(&scanner, &digest, 200),
    ];

    let cases: [(&str, &Rule, &[Artifact]); 4] = [
        ("simple_signing_p256", &one_key, &p256),
        ("simple_signing_ed25519", &one_key, &ed25519),
        ("threshold_2_of_8_layers", &two_keys, &eight),
        ("signature_and_vuln_scan_200_findings", &scanned, &with_scan),
    ];
    let mut group = c.benchmark_group("trust_evaluate");
    for (name, rule, artifacts) in cases {
        let verdict = evaluate(rule, &subject, artifacts, &keys, now);
        assert_eq!(verdict.outcome, Outcome::Allow, "{name}: {verdict}");
        group.bench_function(name, |b| {
            b.iter(|| evaluate(rule, &subject, artifacts, &keys, now))
        });
    }
    group.finish();
}

criterion_group!(benches, verifier);
criterion_main!(benches);
