//! Evaluation, end to end within the crate: rules from TOML, keys from ring and openssl,
//! artifacts as the mirror would hand them over.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use pullgate_oci::{Digest, RepoName, UpstreamId};
use ring::rand::SystemRandom;
use serde::Deserialize;

use crate::formats::tests::{digest, envelope, sig_annotations, simple_payload, statement};
use crate::testutil::*;
use crate::*;

const KEYS: &str = r#"
[[trust.key]]
name = "release"
path = "/keys/release.pub"
[[trust.key]]
name = "second"
path = "/keys/second.pub"
[[trust.key]]
name = "scanner"
path = "/keys/scanner.pub"
[[trust.ca]]
name = "corp"
path = "/ca/ca.crt"
"#;

#[derive(Deserialize)]
struct File {
    trust: TrustConfig,
}

fn policy(rules: &str) -> Policy {
    let text = format!("{KEYS}{rules}");
    let config = toml::from_str::<File>(&text).unwrap().trust;
    Policy::from_config(&config).unwrap()
}

fn rule(rules: &str) -> Rule {
    policy(rules).rules()[0].clone()
}

fn sig(signer: &Signer, subject: &Digest) -> Artifact {
    let payload = simple_payload(subject);
    Artifact::SimpleSigning {
        annotations: sig_annotations(&signer.sign(&payload)),
        payload: payload.into(),
    }
}

struct World {
    release: Signer,
    second: Signer,
    scanner: Signer,
    stranger: Signer,
    keys: Keys,
}

fn world() -> World {
    let rng = SystemRandom::new();
    let (release, second, scanner, stranger) = (
        Signer::p256(&rng),
        Signer::ed25519(&rng),
        Signer::p256(&rng),
        Signer::p256(&rng),
    );
    let keys = Keys::new(1)
        .with_key("release", release.public_key())
        .with_key("second", second.public_key())
        .with_key("scanner", scanner.public_key());
    World {
        release,
        second,
        scanner,
        stranger,
        keys,
    }
}

const VERIFY: &str = r#"
[[trust.rule]]
images = ["docker.io/team/**"]
action = "verify"
signed_by = ["release", "second"]
"#;

#[test]
fn image_signatures() {
    let w = world();
    let d = digest(1);
    let subject = Subject::digest_only(&d);
    let now = SystemTime::now();
    let r = rule(VERIFY);
    let two = rule(&VERIFY.replace("action", "threshold = 2\naction"));
    let mut tampered = simple_payload(&d);
    let good_sig = w.release.sign(&tampered);
    tampered[30] ^= 1;
    let no_layer = Artifact::SimpleSigning {
        payload: simple_payload(&d).into(),
        annotations: BTreeMap::new(),
    };
    let cases: Vec<(&str, &Rule, Vec<Artifact>, Outcome, Reason)> = vec![
        (
            "signed by the configured key",
            &r,
            vec![sig(&w.release, &d)],
            Outcome::Allow,
            Reason::Verified,
        ),
        (
            "signed by another key",
            &r,
            vec![sig(&w.stranger, &d)],
            Outcome::Deny,
            Reason::Rejected(ArtifactError::UnknownKey),
        ),
        (
            "a key of the set, not this rule's",
            &r,
            vec![sig(&w.scanner, &d)],
            Outcome::Deny,
            Reason::Rejected(ArtifactError::UnknownKey),
        ),
        (
            "a tampered payload",
            &r,
            vec![Artifact::SimpleSigning {
                payload: tampered.into(),
                annotations: sig_annotations(&good_sig),
            }],
            Outcome::Deny,
            Reason::Rejected(ArtifactError::UnknownKey),
        ),
        (
            "a payload naming another digest",
            &r,
            vec![sig(&w.release, &digest(2))],
            Outcome::Deny,
            Reason::Rejected(ArtifactError::DigestMismatch(digest(2).to_string())),
        ),
        (
            "a .sig with no valid layer",
            &r,
            vec![no_layer],
            Outcome::Deny,
            Reason::NoSignature,
        ),
        (
            "nothing at all",
            &r,
            vec![],
            Outcome::Deny,
            Reason::NoSignature,
        ),
        (
            "one bad and one good signature",
            &r,
            vec![sig(&w.stranger, &d), sig(&w.release, &d)],
            Outcome::Allow,
            Reason::Verified,
        ),
        (
            "two signatures by one key, threshold 2",
            &two,
            vec![sig(&w.release, &d), sig(&w.release, &d)],
            Outcome::Deny,
            Reason::ThresholdNotMet {
                verified: 1,
                required: 2,
            },
        ),
        (
            "two keys, threshold 2",
            &two,
            vec![sig(&w.release, &d), sig(&w.second, &d)],
            Outcome::Allow,
            Reason::Verified,
        ),
    ];
    for (name, rule, artifacts, outcome, reason) in cases {
        let v = evaluate(rule, &subject, &artifacts, &w.keys, now);
        assert_eq!((v.outcome, &v.reason), (outcome, &reason), "{name}");
        assert_eq!(v.rule.index, Some(0));
        if outcome == Outcome::Allow {
            assert!(!v.keys.is_empty(), "{name}");
        }
    }
    let v = evaluate(
        &two,
        &subject,
        &[sig(&w.release, &d), sig(&w.second, &d)],
        &w.keys,
        now,
    );
    let signers: Vec<&str> = v.keys.iter().map(|k| k.signer.as_str()).collect();
    assert_eq!(signers.len(), 2);
    assert!(signers.contains(&"release") && signers.contains(&"second"));
}

#[test]
fn actions_modes_and_messages() {
    let w = world();
    let d = digest(1);
    let subject = Subject::digest_only(&d);
    let now = SystemTime::now();
    let p = policy(&format!(
        "{}\n[[trust.rule]]\nimages = [\"docker.io/library/*\"]\naction = \"allow\"\n[[trust.rule]]\nimages = [\"docker.io/evil/*\"]\naction = \"deny\"\n[[trust.rule]]\nimages = [\"ghcr.io/**\"]\naction = \"verify\"\nmode = \"warn\"\nsigned_by = [\"release\"]\n[trust]\nunmatched = \"deny\"\n",
        VERIFY
    ));
    let up = |s: &str| UpstreamId::parse(s).unwrap();
    let repo = |s: &str| RepoName::parse(s).unwrap();
    let eval = |u: &str, r: &str, artifacts: &[Artifact]| {
        p.evaluate(&up(u), &repo(r), &subject, artifacts, &w.keys, now)
    };

    let v = eval("docker.io", "team/app", &[]);
    assert_eq!(v.outcome, Outcome::Deny);
    assert!(!v.serves());
    assert_eq!(
        v.to_string(),
        "denied by trust rule 1 (docker.io/team/**): no signature"
    );
    let v = eval("docker.io", "team/app", &[sig(&w.release, &digest(2))]);
    assert_eq!(
        v.to_string(),
        format!(
            "denied by trust rule 1 (docker.io/team/**): signed payload names another digest ({})",
            digest(2)
        )
    );
    let v = eval("docker.io", "library/alpine", &[]);
    assert_eq!(
        (v.outcome, v.reason),
        (Outcome::Allow, Reason::AllowedByRule)
    );
    let v = eval("docker.io", "evil/x", &[sig(&w.release, &d)]);
    assert_eq!((v.outcome, v.reason), (Outcome::Deny, Reason::DeniedByRule));
    let v = eval("ghcr.io", "a/b", &[]);
    assert_eq!(
        (v.outcome, v.serves(), v.rule.index),
        (Outcome::Warn, true, Some(3))
    );
    assert_eq!(
        v.to_string(),
        "would be denied (warn only) by trust rule 4 (ghcr.io/**): no signature"
    );
    let v = eval("ghcr.io", "a/b", &[sig(&w.release, &d)]);
    assert_eq!(v.outcome, Outcome::Allow);
    let v = eval("quay.io", "x/y", &[sig(&w.release, &d)]);
    assert_eq!((v.outcome, v.rule.index), (Outcome::Deny, None));
    assert_eq!(
        v.to_string(),
        "denied by trust.unmatched: no rule matched; unmatched images are denied"
    );
}

#[test]
fn an_independent_signer_and_formats_side_by_side() {
    // openssl signs a simple-signing payload and a DSSE statement; ring never sees its key.
    let dir = tempfile::tempdir().unwrap();
    let key = OpensslKey::generate(
        dir.path(),
        "release",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
    );
    let public = PublicKey::from_pem(&std::fs::read(key.public()).unwrap())
        .unwrap()
        .remove(0);
    let keys = Keys::new(1).with_key("release", public.clone());
    let manifest =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let d = Digest::sha256_of(manifest);
    let subject = Subject::new(&d, manifest);
    let r = rule(VERIFY);
    let now = SystemTime::now();

    let payload = simple_payload(&d);
    let simple = Artifact::SimpleSigning {
        annotations: sig_annotations(&key.sign_bytes(&payload)),
        payload: payload.into(),
    };
    let body = statement(&d, media::COSIGN_SIGN_PREDICATE, serde_json::json!({}));
    let dsse = Artifact::Dsse {
        envelope: envelope(&body, &[key.sign_bytes(&pae(media::IN_TOTO, &body))]).into(),
        annotations: BTreeMap::new(),
    };
    let message = Artifact::Bundle {
        bundle: serde_json::to_vec(&serde_json::json!({
            "mediaType": media::BUNDLE_V03,
            "verificationMaterial": {"publicKey": {"hint": "release"}},
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": STANDARD.encode(hex::decode(d.hex()).unwrap())},
                "signature": STANDARD.encode(key.sign_bytes(manifest)),
            },
        }))
        .unwrap()
        .into(),
    };
    for (name, artifact) in [
        ("simple signing", simple),
        ("dsse", dsse),
        ("bundle", message),
    ] {
        let v = evaluate(&r, &subject, &[artifact], &keys, now);
        assert_eq!(v.outcome, Outcome::Allow, "{name}: {v}");
        assert_eq!(v.keys[0].fingerprint, public.fingerprint(), "{name}");
    }
}

#[test]
fn key_rotation_refuses_old_signatures() {
    let rng = SystemRandom::new();
    let (old, new) = (Signer::p256(&rng), Signer::p256(&rng));
    let mut volume = Volume::new(&[("release.pub", old.public_pem())]);
    let set = KeySet::open(
        &[KeyConfig {
            name: "release".into(),
            path: volume.path().to_path_buf(),
        }],
        &[],
    )
    .unwrap()
    .with_check_interval(Duration::ZERO);
    let r = rule("[[trust.rule]]\nimages = [\"docker.io/**\"]\naction = \"verify\"\nsigned_by = [\"release\"]\n");
    let d = digest(1);
    let subject = Subject::digest_only(&d);
    let now = SystemTime::now();
    let before = set.current();
    assert_eq!(
        evaluate(&r, &subject, &[sig(&old, &d)], &before, now).outcome,
        Outcome::Allow
    );
    volume.rotate(&[("release.pub", new.public_pem())]);
    let after = set.current();
    assert_ne!(after.generation(), before.generation());
    assert_eq!(
        evaluate(&r, &subject, &[sig(&old, &d)], &after, now).reason,
        Reason::Rejected(ArtifactError::UnknownKey)
    );
    assert_eq!(
        evaluate(&r, &subject, &[sig(&new, &d)], &after, now).outcome,
        Outcome::Allow
    );
}

#[test]
fn certificate_identities() {
    let pki = Pki::new();
    let keys = Keys::new(1).with_ca("corp", CaBundle::from_pem(&pki.root_pem()).unwrap());
    let d = digest(1);
    let subject = Subject::digest_only(&d);
    let payload = simple_payload(&d);
    let mut annotations = sig_annotations(&pki.sign("leaf", &payload));
    annotations.insert(
        media::ANNOTATION_CERTIFICATE.into(),
        String::from_utf8(pki.pem("leaf")).unwrap(),
    );
    annotations.insert(
        media::ANNOTATION_CHAIN.into(),
        String::from_utf8(pki.pem("intermediate")).unwrap(),
    );
    let artifact = Artifact::SimpleSigning {
        payload: payload.into(),
        annotations,
    };
    let rule_with = |identity: &str| {
        rule(&format!(
            "[[trust.rule]]\nimages = [\"docker.io/**\"]\naction = \"verify\"\nsigned_by = [\"ca:corp\"]\nidentity = {identity}\n"
        ))
    };
    let dn = "CN=Test Intermediate,O=Test\\\\, Inc.";
    let cases = [
        (
            r#"{ san = "release@example.com" }"#.to_owned(),
            Outcome::Allow,
        ),
        (
            format!(r#"{{ san = "release@example.com", issuer = "{dn}" }}"#),
            Outcome::Allow,
        ),
        (
            r#"{ san_regex = "https://ci\\.example\\.com/.*" }"#.to_owned(),
            Outcome::Allow,
        ),
        (
            r#"{ san = "mallory@example.com" }"#.to_owned(),
            Outcome::Deny,
        ),
        (
            r#"{ san = "release@example.com", issuer = "https://ci.example.com" }"#.to_owned(),
            Outcome::Deny,
        ),
    ];
    for (identity, expected) in cases {
        let v = evaluate(
            &rule_with(&identity),
            &subject,
            std::slice::from_ref(&artifact),
            &keys,
            SystemTime::now(),
        );
        assert_eq!(v.outcome, expected, "{identity}: {v}");
        if expected == Outcome::Deny {
            assert!(
                matches!(
                    v.reason,
                    Reason::Rejected(ArtifactError::IdentityMismatch { .. })
                ),
                "{v}"
            );
        } else {
            assert_eq!(v.keys[0].identity.as_deref(), Some("release@example.com"));
            // The leaf lives a day: a cached verdict must be rechecked by then.
            assert!(v
                .recheck_at
                .is_some_and(|t| t <= SystemTime::now() + Duration::from_secs(86400)));
        }
    }
}

fn vuln_predicate(findings: &[(&str, &str, &str)], finished: SystemTime) -> serde_json::Value {
    let finished = humantime::format_rfc3339(finished).to_string();
    serde_json::json!({
        "invocation": {"uri": "", "event_id": "", "builder.id": ""},
        "scanner": {
            "uri": "pkg:github/aquasecurity/trivy@v0.58.0",
            "version": "0.58.0",
            "db": {"uri": "", "version": ""},
            "result": {
                "SchemaVersion": 2,
                "ArtifactName": "docker.io/team/app",
                "Results": [
                    {"Target": "debian 12", "Class": "os-pkgs", "Vulnerabilities": findings.iter().map(|(id, sev, pkg)| serde_json::json!({
                        "VulnerabilityID": id, "PkgName": pkg, "InstalledVersion": "1", "Severity": sev,
                    })).collect::<Vec<_>>()},
                    {"Target": "app", "Class": "lang-pkgs", "Vulnerabilities": null},
                ],
            },
        },
        "metadata": {"scanStartedOn": finished, "scanFinishedOn": finished},
    })
}

fn attestation(
    signer: &Signer,
    d: &Digest,
    predicate_type: &str,
    predicate: serde_json::Value,
) -> Artifact {
    let body = statement(d, predicate_type, predicate);
    Artifact::Dsse {
        envelope: Bytes::from(envelope(&body, &[signer.sign(&pae(media::IN_TOTO, &body))])),
        annotations: BTreeMap::from([("predicateType".to_owned(), predicate_type.to_owned())]),
    }
}

#[test]
fn scan_gate() {
    let w = world();
    let d = digest(1);
    let subject = Subject::digest_only(&d);
    let now = SystemTime::now();
    let day = Duration::from_secs(86400);
    let r = rule(
        r#"
[[trust.rule]]
images = ["docker.io/team/**"]
action = "verify"
signed_by = ["release"]
scan = { signed_by = ["scanner"], max_severity = "HIGH", max_age = "7d", allow_cves = [{ id = "CVE-2024-0002", expires = "2999-01-01" }, { id = "CVE-2024-0003", expires = 2020-01-01 }] }
"#,
    );
    let vuln = VULN_PREDICATES[0];
    let scan =
        |findings: &[(&str, &str, &str)], age: Duration, predicate_type: &str, by: &Signer| {
            attestation(by, &d, predicate_type, vuln_predicate(findings, now - age))
        };
    let signed = sig(&w.release, &d);
    let critical = Reason::Vulnerability {
        severity: Severity::Critical,
        id: "CVE-2024-0001".into(),
        package: "openssl".into(),
    };
    let cases: Vec<(&str, Vec<Artifact>, Outcome, Reason)> = vec![
        (
            "no findings",
            vec![scan(&[], day, vuln, &w.scanner)],
            Outcome::Allow,
            Reason::Verified,
        ),
        (
            "worst is HIGH",
            vec![scan(
                &[("CVE-1", "HIGH", "zlib"), ("CVE-2", "LOW", "tar")],
                day,
                vuln,
                &w.scanner,
            )],
            Outcome::Allow,
            Reason::Verified,
        ),
        (
            "a CRITICAL",
            vec![scan(
                &[
                    ("CVE-1", "HIGH", "zlib"),
                    ("CVE-2024-0001", "CRITICAL", "openssl"),
                ],
                day,
                vuln,
                &w.scanner,
            )],
            Outcome::Deny,
            critical.clone(),
        ),
        ("no scan", vec![], Outcome::Deny, Reason::NoScan),
        (
            "scanned by the wrong key",
            vec![scan(&[], day, vuln, &w.stranger)],
            Outcome::Deny,
            Reason::NoScan,
        ),
        (
            "another predicate",
            vec![scan(&[], day, "https://example.com/other", &w.scanner)],
            Outcome::Deny,
            Reason::NoScan,
        ),
        (
            "the schemeless predicate",
            vec![scan(&[], day, VULN_PREDICATES[1], &w.scanner)],
            Outcome::Allow,
            Reason::Verified,
        ),
        (
            "a stale scan",
            vec![scan(&[], 8 * day, vuln, &w.scanner)],
            Outcome::Deny,
            Reason::StaleScan {
                age: 8 * day,
                max: 7 * day,
            },
        ),
        (
            "a stale scan and a fresh one: the freshest counts",
            vec![
                scan(
                    &[("CVE-2024-0001", "CRITICAL", "openssl")],
                    8 * day,
                    vuln,
                    &w.scanner,
                ),
                scan(&[], day, vuln, &w.scanner),
            ],
            Outcome::Allow,
            Reason::Verified,
        ),
        (
            "an allowed CVE that has not expired",
            vec![scan(
                &[("CVE-2024-0002", "CRITICAL", "glibc")],
                day,
                vuln,
                &w.scanner,
            )],
            Outcome::Allow,
            Reason::Verified,
        ),
        (
            "an allowed CVE that expired",
            vec![scan(
                &[("CVE-2024-0003", "CRITICAL", "glibc")],
                day,
                vuln,
                &w.scanner,
            )],
            Outcome::Deny,
            Reason::Vulnerability {
                severity: Severity::Critical,
                id: "CVE-2024-0003".into(),
                package: "glibc".into(),
            },
        ),
        (
            "a scan for another digest",
            vec![attestation(
                &w.scanner,
                &digest(2),
                vuln,
                vuln_predicate(&[], now - day),
            )],
            Outcome::Deny,
            Reason::NoScan,
        ),
    ];
    for (name, mut artifacts, outcome, reason) in cases {
        artifacts.insert(0, signed.clone());
        let v = evaluate(&r, &subject, &artifacts, &w.keys, now);
        let reason = match (&v.reason, reason) {
            // Ages are measured from an RFC 3339 time with whole seconds.
            (Reason::StaleScan { age, .. }, Reason::StaleScan { max, .. }) => {
                Reason::StaleScan { age: *age, max }
            }
            (_, reason) => reason,
        };
        assert_eq!((v.outcome, &v.reason), (outcome, &reason), "{name}");
        if outcome == Outcome::Allow {
            let scan = v.scan.as_ref().unwrap();
            assert_eq!(scan.signed_by[0].signer, "scanner", "{name}");
        }
    }
    let v = evaluate(
        &r,
        &subject,
        &[
            signed.clone(),
            scan(
                &[
                    ("CVE-2024-0001", "CRITICAL", "openssl"),
                    ("CVE-2024-0002", "CRITICAL", "glibc"),
                    ("CVE-9", "HIGH", "zlib"),
                ],
                day,
                vuln,
                &w.scanner,
            ),
        ],
        &w.keys,
        now,
    );
    assert_eq!(
        v.to_string(),
        "denied by trust rule 1 (docker.io/team/**): CRITICAL CVE-2024-0001 in openssl"
    );
    let summary = v.scan.unwrap();
    assert_eq!(summary.counts, [0, 0, 0, 1, 2]);
    assert_eq!(summary.worst, Some(Severity::Critical));
    assert_eq!(summary.allowed, vec!["CVE-2024-0002".to_owned()]);
    assert_eq!(
        summary.scanner.as_deref(),
        Some("pkg:github/aquasecurity/trivy@v0.58.0@0.58.0")
    );
    // A passing verdict says when the scan will age out; an allowed CVE's later expiry does not
    // move that earlier.
    let fresh = evaluate(
        &r,
        &subject,
        &[
            signed.clone(),
            scan(
                &[("CVE-2024-0002", "CRITICAL", "glibc")],
                day,
                vuln,
                &w.scanner,
            ),
        ],
        &w.keys,
        now,
    );
    assert_eq!(fresh.outcome, Outcome::Allow);
    let recheck = fresh.recheck_at.unwrap();
    assert!(
        recheck <= now + 6 * day && recheck + Duration::from_secs(2) > now + 6 * day,
        "{recheck:?}"
    );
    let stale = evaluate(
        &r,
        &subject,
        &[signed, scan(&[], 9 * day, vuln, &w.scanner)],
        &w.keys,
        now,
    );
    assert!(
        stale
            .to_string()
            .starts_with("denied by trust rule 1 (docker.io/team/**): stale scan: 9days"),
        "{stale}"
    );
}

#[test]
fn cosign_v3_bundles_and_attestations_by_others() {
    let w = world();
    let d = digest(1);
    let subject = Subject::digest_only(&d);
    let r = rule(VERIFY);
    let now = SystemTime::now();
    let bundle = |signer: &Signer, predicate_type: &str| {
        let body = statement(&d, predicate_type, serde_json::json!({}));
        let env: serde_json::Value = serde_json::from_slice(&envelope(
            &body,
            &[signer.sign(&pae(media::IN_TOTO, &body))],
        ))
        .unwrap();
        Artifact::Bundle {
            bundle: serde_json::to_vec(&serde_json::json!({
                "mediaType": media::BUNDLE_V03,
                "verificationMaterial": {"publicKey": {"hint": ""}},
                "dsseEnvelope": env,
            }))
            .unwrap()
            .into(),
        }
    };
    let sign = media::COSIGN_SIGN_PREDICATE;
    let cases = [
        (
            "a cosign v3 signature",
            vec![bundle(&w.release, sign)],
            Outcome::Allow,
            Reason::Verified,
        ),
        (
            "a cosign v3 signature by a stranger",
            vec![bundle(&w.stranger, sign)],
            Outcome::Deny,
            Reason::Rejected(ArtifactError::UnknownKey),
        ),
        (
            "an attestation is no signature, and the scanner's is no failure",
            vec![
                bundle(&w.release, "https://slsa.dev/provenance/v1"),
                attestation(&w.scanner, &d, VULN_PREDICATES[0], serde_json::json!({})),
            ],
            Outcome::Deny,
            Reason::NoSignature,
        ),
    ];
    for (name, artifacts, outcome, reason) in cases {
        let v = evaluate(&r, &subject, &artifacts, &w.keys, now);
        assert_eq!((v.outcome, v.reason), (outcome, reason), "{name}");
    }
}

#[test]
fn sbom_requirement() {
    let w = world();
    let d = digest(1);
    let subject = Subject::digest_only(&d);
    let r = rule("[[trust.rule]]\nimages = [\"docker.io/**\"]\naction = \"verify\"\nsigned_by = [\"release\"]\nsbom = { signed_by = [\"scanner\"] }\n");
    let now = SystemTime::now();
    let signed = sig(&w.release, &d);
    for (name, predicate_type, expected) in [
        ("spdx", "https://spdx.dev/Document", Outcome::Allow),
        (
            "spdx versioned",
            "https://spdx.dev/Document/v2.3",
            Outcome::Allow,
        ),
        ("cyclonedx", "https://cyclonedx.org/bom", Outcome::Allow),
        (
            "a look-alike",
            "https://spdx.dev/Documentary",
            Outcome::Deny,
        ),
    ] {
        let sbom = attestation(&w.scanner, &d, predicate_type, serde_json::json!({}));
        let v = evaluate(&r, &subject, &[signed.clone(), sbom], &w.keys, now);
        assert_eq!(v.outcome, expected, "{name}");
    }
    assert_eq!(
        evaluate(&r, &subject, &[signed], &w.keys, now).reason,
        Reason::NoSbom
    );
    let _ = &w.second;
}

#[test]
fn artifacts_beyond_the_bound_are_not_read() {
    let w = world();
    let d = digest(1);
    let r = rule(VERIFY);
    let mut artifacts = vec![sig(&w.stranger, &d); MAX_ARTIFACTS];
    artifacts.push(sig(&w.release, &d));
    let v = evaluate(
        &r,
        &Subject::digest_only(&d),
        &artifacts,
        &w.keys,
        SystemTime::now(),
    );
    assert_eq!(v.reason, Reason::Rejected(ArtifactError::UnknownKey));
}
