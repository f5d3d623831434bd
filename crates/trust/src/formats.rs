//! The signature formats, verified from bytes the mirror already holds.
//!
//! - cosign **simple signing** (a `.sig` manifest's layer, media type
//!   [`media::SIMPLE_SIGNING`]): the signature is the layer annotation
//!   `dev.cosignproject.cosign/signature` (base64) over the layer's bytes, the payload; an
//!   optional `dev.sigstore.cosign/certificate` (PEM leaf) and `…/chain` (PEM) say who
//!   signed. After the signature, `critical.image.docker-manifest-digest` must be the
//!   subject's digest: a payload naming another digest is no signature.
//! - **DSSE** envelopes (`.att` layers, [`media::DSSE_ENVELOPE`]) with in-toto statements,
//!   verified over DSSE's PAE (`DSSEv1 <len> <type> <len> <body>`); the payload type must be
//!   in-toto's and one of the statement's subjects must be the subject's digest.
//! - **sigstore bundles** (v0.1–v0.3, [`media::BUNDLE_V03`]): a `dsseEnvelope` as above, or a
//!   `messageSignature` whose signed artifact is the subject manifest itself
//!   (`messageDigest` must be its digest, and the signature is over its bytes). Key material is
//!   `verificationMaterial.certificate` (or a v0.1/v0.2 `x509CertificateChain`) or, with
//!   `publicKey`, the rule's configured keys (the `hint` is not trusted to pick one: each
//!   allowed key is tried). Transparency-log entries and timestamps are not read: no Rekor yet.

use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use pullgate_oci::{Algorithm, Digest};
use serde::Deserialize;

use crate::certs::{certs_from_pem, IdentityMatcher, MAX_CHAIN};
use crate::error::CertError;
use crate::keys::{Fingerprint, Keys};

/// Media types and annotations of signature material.
pub mod media {
    pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
    pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
    pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
    /// Every bundle media type read (v0.3 in both spellings, v0.1, v0.2).
    pub const BUNDLES: &[&str] = &[
        BUNDLE_V03,
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
    ];
    pub const IN_TOTO: &str = "application/vnd.in-toto+json";
    pub const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
    pub const ANNOTATION_CERTIFICATE: &str = "dev.sigstore.cosign/certificate";
    pub const ANNOTATION_CHAIN: &str = "dev.sigstore.cosign/chain";
    /// The predicate of a DSSE statement that is an image signature (cosign's new bundle
    /// format), rather than an attestation.
    pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
}

/// Largest simple-signing payload read (cosign's are a few hundred bytes).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Largest DSSE envelope or bundle read (a vuln scan of a large image is a few MiB).
pub const MAX_ENVELOPE: usize = 16 * 1024 * 1024;
/// Most signatures read from one envelope.
pub const MAX_SIGNATURES_PER_ENVELOPE: usize = 16;

/// One piece of fetched signature material, as the mirror found it.
#[derive(Debug, Clone)]
pub enum Artifact {
    /// A `.sig` manifest's layer: its bytes (the payload) and its annotations.
    SimpleSigning {
        payload: Bytes,
        annotations: BTreeMap<String, String>,
    },
    /// An `.att` manifest's layer (a DSSE envelope), with its annotations (cosign puts the
    /// certificate there).
    Dsse {
        envelope: Bytes,
        annotations: BTreeMap<String, String>,
    },
    /// A sigstore bundle (a referrer's layer).
    Bundle { bundle: Bytes },
}

impl Artifact {
    /// The artifact a layer of this media type is, if it is signature material at all.
    pub fn from_layer(
        media_type: &str,
        bytes: Bytes,
        annotations: BTreeMap<String, String>,
    ) -> Option<Artifact> {
        match media_type {
            media::SIMPLE_SIGNING => Some(Artifact::SimpleSigning {
                payload: bytes,
                annotations,
            }),
            media::DSSE_ENVELOPE => Some(Artifact::Dsse {
                envelope: bytes,
                annotations,
            }),
            t if media::BUNDLES.contains(&t) => Some(Artifact::Bundle { bundle: bytes }),
            _ => None,
        }
    }
}

/// What is being verified: the manifest's digest and, for bundles whose `messageSignature`
/// signs the manifest itself, its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub digest: &'a Digest,
    pub manifest: Option<&'a [u8]>,
}

impl<'a> Subject<'a> {
    pub fn new(digest: &'a Digest, manifest: &'a [u8]) -> Self {
        Subject {
            digest,
            manifest: Some(manifest),
        }
    }

    pub fn digest_only(digest: &'a Digest) -> Self {
        Subject {
            digest,
            manifest: None,
        }
    }
}

/// Who a signature may be by: a configured key name, or a CA (`ca:<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerSpec {
    Key(String),
    Ca(String),
}

impl SignerSpec {
    pub fn parse(s: &str) -> SignerSpec {
        match s.strip_prefix("ca:") {
            Some(ca) => SignerSpec::Ca(ca.to_owned()),
            None => SignerSpec::Key(s.to_owned()),
        }
    }
}

/// A key that verified a signature: the signer it counted as (`release`, `ca:corp`), the
/// key's fingerprint (what "distinct" means), and for a certificate, its SAN.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyId {
    pub signer: String,
    pub fingerprint: Fingerprint,
    pub identity: Option<String>,
    /// For a certificate, when its leaf expires: a verdict resting on it must be rechecked
    /// by then.
    pub expires: Option<SystemTime>,
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.signer, self.fingerprint.short())?;
        if let Some(id) = &self.identity {
            write!(f, " {id}")?;
        }
        Ok(())
    }
}

/// Why one artifact did not count. Ordered by how much it says, so a verdict reports the
/// most telling failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    #[error("no signature")]
    NoSignature,
    #[error("malformed signature material: {0}")]
    Malformed(&'static str),
    #[error("signature material larger than {0} bytes")]
    TooLarge(usize),
    #[error("a message signature needs the manifest's bytes")]
    NeedsManifest,
    #[error("signed by an unknown key")]
    UnknownKey,
    #[error("certificate refused: {0}")]
    Certificate(CertError),
    #[error("certificate identity {san} (issuer {issuer}) does not match")]
    IdentityMismatch { san: String, issuer: String },
    #[error("signed payload names another digest ({0})")]
    DigestMismatch(String),
}

impl ArtifactError {
    /// Higher says more: the failure a denial names.
    pub(crate) fn rank(&self) -> u8 {
        match self {
            ArtifactError::NoSignature => 0,
            ArtifactError::Malformed(_) | ArtifactError::TooLarge(_) => 1,
            ArtifactError::NeedsManifest => 2,
            ArtifactError::UnknownKey => 3,
            ArtifactError::Certificate(_) => 4,
            ArtifactError::IdentityMismatch { .. } => 5,
            ArtifactError::DigestMismatch(_) => 6,
        }
    }
}

/// The keys a rule (or a scan gate) allows, resolved against a snapshot of the key set.
pub(crate) struct Signers<'a> {
    pub specs: &'a [SignerSpec],
    pub identity: Option<&'a IdentityMatcher>,
    pub keys: &'a Keys,
    pub now: SystemTime,
}

/// A certificate that came with a signature: the leaf and the rest of the chain, DER.
pub(crate) struct CertMaterial {
    leaf: Vec<u8>,
    chain: Vec<Vec<u8>>,
}

impl Signers<'_> {
    /// The key among the allowed ones that made `signature` over `message`.
    fn verify(
        &self,
        message: &[u8],
        signature: &[u8],
        cert: Option<&CertMaterial>,
    ) -> Result<KeyId, ArtifactError> {
        // A configured key verifies whatever certificate came along, as `cosign --key` does.
        for spec in self.specs {
            if let SignerSpec::Key(name) = spec {
                for key in self.keys.keys(name) {
                    if key.verify(message, signature) {
                        return Ok(KeyId {
                            signer: name.clone(),
                            fingerprint: key.fingerprint(),
                            identity: None,
                            expires: None,
                        });
                    }
                }
            }
        }
        let mut best = ArtifactError::UnknownKey;
        let Some(cert) = cert else { return Err(best) };
        for spec in self.specs {
            let SignerSpec::Ca(name) = spec else { continue };
            let Some(ca) = self.keys.ca(name) else {
                continue;
            };
            let failure = match ca.verify(&cert.leaf, &cert.chain, self.now) {
                Err(e) => ArtifactError::Certificate(e),
                Ok(verified) => {
                    if !verified.key.verify(message, signature) {
                        ArtifactError::UnknownKey
                    } else if !self.identity.is_some_and(|m| m.matches(&verified.identity)) {
                        ArtifactError::IdentityMismatch {
                            san: verified.identity.san().unwrap_or("(none)").to_owned(),
                            issuer: verified.identity.issuer.clone(),
                        }
                    } else {
                        return Ok(KeyId {
                            signer: format!("ca:{name}"),
                            fingerprint: verified.key.fingerprint(),
                            identity: verified.identity.san().map(str::to_owned),
                            expires: verified.not_after,
                        });
                    }
                }
            };
            if failure.rank() > best.rank() {
                best = failure;
            }
        }
        Err(best)
    }
}

fn b64(s: &str) -> Result<Vec<u8>, ArtifactError> {
    STANDARD
        .decode(s.trim())
        .map_err(|_| ArtifactError::Malformed("bad base64"))
}

fn cert_from_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<CertMaterial>, ArtifactError> {
    let Some(leaf) = annotations.get(media::ANNOTATION_CERTIFICATE) else {
        return Ok(None);
    };
    if leaf.trim().is_empty() {
        return Ok(None);
    }
    let leaf = certs_from_pem(leaf.as_bytes(), 1)
        .map_err(ArtifactError::Certificate)?
        .pop()
        .ok_or(ArtifactError::Certificate(CertError::NoCertificate))?;
    let chain = match annotations.get(media::ANNOTATION_CHAIN) {
        Some(chain) => {
            certs_from_pem(chain.as_bytes(), MAX_CHAIN).map_err(ArtifactError::Certificate)?
        }
        None => Vec::new(),
    };
    Ok(Some(CertMaterial { leaf, chain }))
}

#[derive(Deserialize)]
struct SimpleSigningPayload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: CriticalImage,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct CriticalImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// A simple-signing layer: the key that signed it for `subject`.
pub(crate) fn verify_simple_signing(
    payload: &[u8],
    annotations: &BTreeMap<String, String>,
    subject: &Subject<'_>,
    signers: &Signers<'_>,
) -> Result<KeyId, ArtifactError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(ArtifactError::TooLarge(MAX_PAYLOAD));
    }
    let signature = match annotations.get(media::ANNOTATION_SIGNATURE) {
        Some(s) if !s.trim().is_empty() => b64(s)?,
        _ => return Err(ArtifactError::NoSignature),
    };
    let cert = cert_from_annotations(annotations)?;
    let key = signers.verify(payload, &signature, cert.as_ref())?;
    let parsed: SimpleSigningPayload = serde_json::from_slice(payload)
        .map_err(|_| ArtifactError::Malformed("simple-signing payload is not the expected JSON"))?;
    if !matches!(
        parsed.critical.kind.as_str(),
        "cosign container image signature"
            | "atomic container signature"
            | media::COSIGN_SIGN_PREDICATE
    ) {
        return Err(ArtifactError::Malformed(
            "simple-signing payload of another type",
        ));
    }
    let named = parsed.critical.image.docker_manifest_digest;
    if named != subject.digest.to_string() {
        return Err(ArtifactError::DigestMismatch(named));
    }
    Ok(key)
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

#[derive(Deserialize)]
struct Statement {
    subject: Vec<StatementSubject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    #[serde(default)]
    predicate: serde_json::Value,
}

#[derive(Deserialize)]
struct StatementSubject {
    #[serde(default)]
    digest: BTreeMap<String, String>,
}

/// An in-toto statement about the subject, and the distinct keys that signed it.
#[derive(Debug, Clone)]
pub struct VerifiedStatement {
    pub keys: Vec<KeyId>,
    pub predicate_type: String,
    pub predicate: serde_json::Value,
}

#[derive(Deserialize)]
struct ClaimedStatement {
    #[serde(rename = "predicateType")]
    predicate_type: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimedBundle {
    dsse_envelope: Option<Envelope>,
}

/// Whether DSSE material (an envelope, or a bundle holding one) that did not verify *claims*
/// to be an image signature (cosign's signing predicate). It decides only whether its
/// failure is reported as a failed signature rather than ignored as someone else's
/// attestation; nothing else is read from unverified bytes.
pub(crate) fn claims_signature(artifact: &Artifact) -> bool {
    let envelope = match artifact {
        Artifact::Dsse { envelope, .. } if envelope.len() <= MAX_ENVELOPE => {
            serde_json::from_slice::<Envelope>(envelope).ok()
        }
        Artifact::Bundle { bundle } if bundle.len() <= MAX_ENVELOPE => {
            serde_json::from_slice::<ClaimedBundle>(bundle)
                .ok()
                .and_then(|b| b.dsse_envelope)
        }
        _ => None,
    };
    envelope
        .and_then(|e| b64(&e.payload).ok())
        .and_then(|payload| serde_json::from_slice::<ClaimedStatement>(&payload).ok())
        .is_some_and(|st| st.predicate_type == media::COSIGN_SIGN_PREDICATE)
}

/// DSSE's pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

fn verify_envelope(
    envelope: Envelope,
    cert: Option<&CertMaterial>,
    subject: &Subject<'_>,
    signers: &Signers<'_>,
) -> Result<VerifiedStatement, ArtifactError> {
    if envelope.signatures.is_empty() {
        return Err(ArtifactError::NoSignature);
    }
    let payload = b64(&envelope.payload)?;
    let message = pae(&envelope.payload_type, &payload);
    let mut keys: Vec<KeyId> = Vec::new();
    let mut best = ArtifactError::NoSignature;
    for sig in envelope.signatures.iter().take(MAX_SIGNATURES_PER_ENVELOPE) {
        match b64(&sig.sig).and_then(|sig| signers.verify(&message, &sig, cert)) {
            Ok(key) => {
                if !keys.iter().any(|k| k.fingerprint == key.fingerprint) {
                    keys.push(key);
                }
            }
            Err(e) if e.rank() > best.rank() => best = e,
            Err(_) => {}
        }
    }
    if keys.is_empty() {
        return Err(best);
    }
    if envelope.payload_type != media::IN_TOTO {
        return Err(ArtifactError::Malformed(
            "DSSE payload is not an in-toto statement",
        ));
    }
    let statement: Statement = serde_json::from_slice(&payload)
        .map_err(|_| ArtifactError::Malformed("in-toto statement is not the expected JSON"))?;
    let alg = match subject.digest.algorithm() {
        Algorithm::Sha256 => "sha256",
        Algorithm::Sha512 => "sha512",
    };
    let ours = subject.digest.hex();
    if !statement.subject.iter().any(|s| {
        s.digest
            .get(alg)
            .is_some_and(|d| d.eq_ignore_ascii_case(ours))
    }) {
        let named = statement
            .subject
            .iter()
            .find_map(|s| s.digest.iter().next().map(|(a, d)| format!("{a}:{d}")))
            .unwrap_or_else(|| "no subject".to_owned());
        return Err(ArtifactError::DigestMismatch(named));
    }
    Ok(VerifiedStatement {
        keys,
        predicate_type: statement.predicate_type,
        predicate: statement.predicate,
    })
}

/// A DSSE envelope layer.
pub(crate) fn verify_dsse(
    envelope: &[u8],
    annotations: &BTreeMap<String, String>,
    subject: &Subject<'_>,
    signers: &Signers<'_>,
) -> Result<VerifiedStatement, ArtifactError> {
    if envelope.len() > MAX_ENVELOPE {
        return Err(ArtifactError::TooLarge(MAX_ENVELOPE));
    }
    let parsed: Envelope = serde_json::from_slice(envelope)
        .map_err(|_| ArtifactError::Malformed("DSSE envelope is not the expected JSON"))?;
    let cert = cert_from_annotations(annotations)?;
    verify_envelope(parsed, cert.as_ref(), subject, signers)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    verification_material: Material,
    message_signature: Option<MessageSignature>,
    dsse_envelope: Option<Envelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Material {
    certificate: Option<RawBytes>,
    x509_certificate_chain: Option<CertChain>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct CertChain {
    certificates: Vec<RawBytes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageSignature {
    message_digest: MessageDigest,
    signature: String,
}

#[derive(Deserialize)]
struct MessageDigest {
    algorithm: String,
    digest: String,
}

/// What a bundle held, verified.
pub(crate) enum VerifiedBundle {
    /// A `messageSignature` over the subject manifest.
    Message(KeyId),
    Statement(VerifiedStatement),
}

/// Which of the two a bundle held, so a failure can be told apart: a `dsseEnvelope` may be an
/// attestation by another signer, which is no failed image signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BundleKind {
    Message,
    Dsse,
}

pub(crate) fn verify_bundle(
    bytes: &[u8],
    subject: &Subject<'_>,
    signers: &Signers<'_>,
) -> Result<VerifiedBundle, (BundleKind, ArtifactError)> {
    let m = |e| (BundleKind::Message, e);
    if bytes.len() > MAX_ENVELOPE {
        return Err(m(ArtifactError::TooLarge(MAX_ENVELOPE)));
    }
    let bundle: Bundle = serde_json::from_slice(bytes).map_err(|_| {
        m(ArtifactError::Malformed(
            "sigstore bundle is not the expected JSON",
        ))
    })?;
    if !media::BUNDLES.contains(&bundle.media_type.as_str()) {
        return Err(m(ArtifactError::Malformed(
            "unknown sigstore bundle version",
        )));
    }
    let mut ders = match (
        bundle.verification_material.certificate,
        bundle.verification_material.x509_certificate_chain,
    ) {
        (Some(cert), _) => vec![b64(&cert.raw_bytes).map_err(m)?],
        (None, Some(chain)) => chain
            .certificates
            .iter()
            .take(MAX_CHAIN + 1)
            .map(|c| b64(&c.raw_bytes))
            .collect::<Result<_, _>>()
            .map_err(m)?,
        (None, None) => Vec::new(),
    };
    let cert = (!ders.is_empty()).then(|| {
        let leaf = ders.remove(0);
        CertMaterial { leaf, chain: ders }
    });
    match (bundle.message_signature, bundle.dsse_envelope) {
        (Some(message), None) => {
            verify_message(message, cert.as_ref(), subject, signers).map_err(m)
        }
        (None, Some(envelope)) => verify_envelope(envelope, cert.as_ref(), subject, signers)
            .map(VerifiedBundle::Statement)
            .map_err(|e| (BundleKind::Dsse, e)),
        _ => Err(m(ArtifactError::Malformed(
            "a bundle holds exactly one of messageSignature and dsseEnvelope",
        ))),
    }
}

fn verify_message(
    message: MessageSignature,
    cert: Option<&CertMaterial>,
    subject: &Subject<'_>,
    signers: &Signers<'_>,
) -> Result<VerifiedBundle, ArtifactError> {
    let named = match message.message_digest.algorithm.as_str() {
        "SHA2_256" => format!(
            "sha256:{}",
            hex::encode(b64(&message.message_digest.digest)?)
        ),
        "SHA2_512" => format!(
            "sha512:{}",
            hex::encode(b64(&message.message_digest.digest)?)
        ),
        _ => return Err(ArtifactError::Malformed("unknown message digest algorithm")),
    };
    let manifest = subject.manifest.ok_or(ArtifactError::NeedsManifest)?;
    if !subject.digest.matches(manifest) {
        return Err(ArtifactError::NeedsManifest);
    }
    let signature = b64(&message.signature)?;
    let key = signers.verify(manifest, &signature, cert)?;
    if named != subject.digest.to_string() {
        return Err(ArtifactError::DigestMismatch(named));
    }
    Ok(VerifiedBundle::Message(key))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::{Keys, PublicKey};
    use crate::testutil::*;

    pub fn digest(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    pub fn simple_payload(digest: &Digest) -> Vec<u8> {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"docker.io/team/app"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
        )
        .into_bytes()
    }

    pub fn sig_annotations(signature: &[u8]) -> BTreeMap<String, String> {
        BTreeMap::from([(
            media::ANNOTATION_SIGNATURE.to_owned(),
            STANDARD.encode(signature),
        )])
    }

    pub fn statement(
        digest: &Digest,
        predicate_type: &str,
        predicate: serde_json::Value,
    ) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "docker.io/team/app", "digest": {"sha256": digest.hex()}}],
            "predicateType": predicate_type,
            "predicate": predicate,
        }))
        .unwrap()
    }

    pub fn envelope(payload: &[u8], sigs: &[Vec<u8>]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "payloadType": media::IN_TOTO,
            "payload": STANDARD.encode(payload),
            "signatures": sigs.iter().map(|s| serde_json::json!({"keyid": "", "sig": STANDARD.encode(s)})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn signers<'a>(
        specs: &'a [SignerSpec],
        keys: &'a Keys,
        identity: Option<&'a IdentityMatcher>,
    ) -> Signers<'a> {
        Signers {
            specs,
            identity,
            keys,
            now: SystemTime::now(),
        }
    }

    #[test]
    fn pae_is_dsse_v1() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
    }

    #[test]
    fn simple_signing_cases() {
        let rng = ring::rand::SystemRandom::new();
        let (release, other) = (Signer::p256(&rng), Signer::ed25519(&rng));
        let keys = Keys::new(1).with_key("release", release.public_key());
        let specs = [SignerSpec::Key("release".into())];
        let s = signers(&specs, &keys, None);
        let subject_digest = digest(1);
        let subject = Subject::digest_only(&subject_digest);
        let good = simple_payload(&subject_digest);
        let elsewhere = simple_payload(&digest(2));
        let mut tampered = good.clone();
        tampered[20] ^= 1;
        type Case<'a> = (
            &'a str,
            Vec<u8>,
            BTreeMap<String, String>,
            Result<(), ArtifactError>,
        );
        let cases: Vec<Case> = vec![
            (
                "good",
                good.clone(),
                sig_annotations(&release.sign(&good)),
                Ok(()),
            ),
            (
                "another key",
                good.clone(),
                sig_annotations(&other.sign(&good)),
                Err(ArtifactError::UnknownKey),
            ),
            (
                "tampered",
                tampered,
                sig_annotations(&release.sign(&good)),
                Err(ArtifactError::UnknownKey),
            ),
            (
                "another digest",
                elsewhere.clone(),
                sig_annotations(&release.sign(&elsewhere)),
                Err(ArtifactError::DigestMismatch(digest(2).to_string())),
            ),
            (
                "no annotation",
                good.clone(),
                BTreeMap::new(),
                Err(ArtifactError::NoSignature),
            ),
            (
                "bad base64",
                good.clone(),
                BTreeMap::from([(media::ANNOTATION_SIGNATURE.to_owned(), "!!".to_owned())]),
                Err(ArtifactError::Malformed("bad base64")),
            ),
            (
                "too large",
                vec![b' '; MAX_PAYLOAD + 1],
                sig_annotations(b"x"),
                Err(ArtifactError::TooLarge(MAX_PAYLOAD)),
            ),
        ];
        for (name, payload, annotations, expected) in cases {
            let got = verify_simple_signing(&payload, &annotations, &subject, &s).map(|k| {
                assert_eq!(k.fingerprint, release.fingerprint());
                assert_eq!(k.signer, "release");
            });
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn simple_signing_by_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let key = OpensslKey::generate(
            dir.path(),
            "cosign",
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
        let keys = Keys::new(1).with_key("release", public);
        let specs = [SignerSpec::Key("release".into())];
        let d = digest(7);
        let payload = simple_payload(&d);
        let sig = key.sign_bytes(&payload);
        let key_id = verify_simple_signing(
            &payload,
            &sig_annotations(&sig),
            &Subject::digest_only(&d),
            &signers(&specs, &keys, None),
        )
        .unwrap();
        assert_eq!(key_id.signer, "release");
    }

    #[test]
    fn certificate_signatures_and_identities() {
        let pki = Pki::new();
        let keys = Keys::new(1).with_ca(
            "corp",
            crate::certs::CaBundle::from_pem(&pki.root_pem()).unwrap(),
        );
        let specs = [SignerSpec::Ca("corp".into())];
        let d = digest(3);
        let payload = simple_payload(&d);
        let mut annotations = sig_annotations(&pki.sign("leaf", &payload));
        annotations.insert(
            media::ANNOTATION_CERTIFICATE.into(),
            String::from_utf8(pki.pem("leaf")).unwrap(),
        );
        annotations.insert(
            media::ANNOTATION_CHAIN.into(),
            String::from_utf8([pki.pem("intermediate"), pki.root_pem()].concat()).unwrap(),
        );
        let matcher = |san: &str, issuer: Option<&str>| IdentityMatcher {
            san: crate::certs::Matcher::Exact(san.into()),
            issuer: issuer.map(|i| crate::certs::Matcher::Exact(i.into())),
        };
        let ok = matcher("release@example.com", None);
        let wrong = matcher("someone@example.com", None);
        let wrong_issuer = matcher("release@example.com", Some("https://ci.example.com"));
        let subject = Subject::digest_only(&d);
        let got = verify_simple_signing(
            &payload,
            &annotations,
            &subject,
            &signers(&specs, &keys, Some(&ok)),
        )
        .unwrap();
        assert_eq!(got.signer, "ca:corp");
        assert_eq!(got.identity.as_deref(), Some("release@example.com"));
        for m in [&wrong, &wrong_issuer] {
            assert!(matches!(
                verify_simple_signing(
                    &payload,
                    &annotations,
                    &subject,
                    &signers(&specs, &keys, Some(m))
                ),
                Err(ArtifactError::IdentityMismatch { .. })
            ));
        }
        // A certificate from elsewhere, or none at all.
        let mut foreign = sig_annotations(&pki.sign("other_leaf", &payload));
        foreign.insert(
            media::ANNOTATION_CERTIFICATE.into(),
            String::from_utf8(pki.pem("other_leaf")).unwrap(),
        );
        assert!(matches!(
            verify_simple_signing(
                &payload,
                &foreign,
                &subject,
                &signers(&specs, &keys, Some(&ok))
            ),
            Err(ArtifactError::Certificate(CertError::Chain(_)))
        ));
        let bare = sig_annotations(&pki.sign("leaf", &payload));
        assert_eq!(
            verify_simple_signing(
                &payload,
                &bare,
                &subject,
                &signers(&specs, &keys, Some(&ok))
            ),
            Err(ArtifactError::UnknownKey)
        );
    }

    #[test]
    fn dsse_cases() {
        let rng = ring::rand::SystemRandom::new();
        let (release, other) = (Signer::p256(&rng), Signer::ed25519(&rng));
        let keys = Keys::new(1)
            .with_key("release", release.public_key())
            .with_key("other", other.public_key());
        let specs = [SignerSpec::Key("release".into())];
        let s = signers(&specs, &keys, None);
        let d = digest(4);
        let subject = Subject::digest_only(&d);
        let body = statement(&d, "https://example.com/p", serde_json::json!({"x": 1}));
        let good_sig = release.sign(&pae(media::IN_TOTO, &body));
        let elsewhere = statement(&digest(5), "https://example.com/p", serde_json::json!({}));
        let none = BTreeMap::new();
        let got = verify_dsse(
            &envelope(&body, &[good_sig.clone(), good_sig.clone()]),
            &none,
            &subject,
            &s,
        )
        .unwrap();
        assert_eq!(got.keys.len(), 1, "one key signing twice is one key");
        assert_eq!(got.predicate_type, "https://example.com/p");
        assert_eq!(got.predicate["x"], 1);
        let cases: Vec<(&str, Vec<u8>, ArtifactError)> = vec![
            (
                "over the body, not the PAE",
                envelope(&body, &[release.sign(&body)]),
                ArtifactError::UnknownKey,
            ),
            (
                "another key",
                envelope(&body, &[other.sign(&pae(media::IN_TOTO, &body))]),
                ArtifactError::UnknownKey,
            ),
            (
                "no signatures",
                envelope(&body, &[]),
                ArtifactError::NoSignature,
            ),
            (
                "another subject",
                envelope(
                    &elsewhere,
                    &[release.sign(&pae(media::IN_TOTO, &elsewhere))],
                ),
                ArtifactError::DigestMismatch(format!("sha256:{}", digest(5).hex())),
            ),
            (
                "not json",
                b"{".to_vec(),
                ArtifactError::Malformed("DSSE envelope is not the expected JSON"),
            ),
        ];
        for (name, env, expected) in cases {
            assert_eq!(
                verify_dsse(&env, &none, &subject, &s).unwrap_err(),
                expected,
                "{name}"
            );
        }
    }

    fn bundle_json(material: serde_json::Value, content: (&str, serde_json::Value)) -> Vec<u8> {
        let mut b = serde_json::json!({
            "mediaType": media::BUNDLE_V03,
            "verificationMaterial": material,
        });
        b[content.0] = content.1;
        serde_json::to_vec(&b).unwrap()
    }

    #[test]
    fn bundle_cases() {
        let rng = ring::rand::SystemRandom::new();
        let release = Signer::p256(&rng);
        let keys = Keys::new(1).with_key("release", release.public_key());
        let specs = [SignerSpec::Key("release".into())];
        let s = signers(&specs, &keys, None);
        let manifest = br#"{"schemaVersion":2}"#;
        let d = Digest::sha256_of(manifest);
        let hint = serde_json::json!({"publicKey": {"hint": "anything"}});
        let message = |digest: &Digest, sig: &[u8]| {
            (
                "messageSignature",
                serde_json::json!({
                    "messageDigest": {"algorithm": "SHA2_256", "digest": STANDARD.encode(hex::decode(digest.hex()).unwrap())},
                    "signature": STANDARD.encode(sig),
                }),
            )
        };
        let good = bundle_json(hint.clone(), message(&d, &release.sign(manifest)));
        assert!(matches!(
            verify_bundle(&good, &Subject::new(&d, manifest), &s),
            Ok(VerifiedBundle::Message(_))
        ));
        assert_eq!(
            verify_bundle(&good, &Subject::digest_only(&d), &s)
                .err()
                .map(|e| e.1),
            Some(ArtifactError::NeedsManifest)
        );
        let other_digest = bundle_json(hint.clone(), message(&digest(9), &release.sign(manifest)));
        assert_eq!(
            verify_bundle(&other_digest, &Subject::new(&d, manifest), &s)
                .err()
                .map(|e| e.1),
            Some(ArtifactError::DigestMismatch(digest(9).to_string()))
        );
        let bad_sig = bundle_json(hint.clone(), message(&d, &release.sign(b"other")));
        assert_eq!(
            verify_bundle(&bad_sig, &Subject::new(&d, manifest), &s)
                .err()
                .map(|e| e.1),
            Some(ArtifactError::UnknownKey)
        );

        let body = statement(&d, media::COSIGN_SIGN_PREDICATE, serde_json::json!({}));
        let env: serde_json::Value = serde_json::from_slice(&envelope(
            &body,
            &[release.sign(&pae(media::IN_TOTO, &body))],
        ))
        .unwrap();
        let dsse = bundle_json(hint.clone(), ("dsseEnvelope", env.clone()));
        match verify_bundle(&dsse, &Subject::digest_only(&d), &s) {
            Ok(VerifiedBundle::Statement(st)) => {
                assert_eq!(st.predicate_type, media::COSIGN_SIGN_PREDICATE)
            }
            _ => panic!("dsse bundle"),
        }
        let mut both: serde_json::Value = serde_json::from_slice(&good).unwrap();
        both["dsseEnvelope"] = env;
        assert!(matches!(
            verify_bundle(
                &serde_json::to_vec(&both).unwrap(),
                &Subject::new(&d, manifest),
                &s
            ),
            Err((BundleKind::Message, ArtifactError::Malformed(_)))
        ));
        let mut old: serde_json::Value = serde_json::from_slice(&good).unwrap();
        old["mediaType"] = "application/vnd.dev.sigstore.bundle.v9+json".into();
        assert!(matches!(
            verify_bundle(
                &serde_json::to_vec(&old).unwrap(),
                &Subject::new(&d, manifest),
                &s
            ),
            Err((_, ArtifactError::Malformed(_)))
        ));
    }

    #[test]
    fn bundle_with_a_certificate() {
        let pki = Pki::new();
        let keys = Keys::new(1).with_ca(
            "corp",
            crate::certs::CaBundle::from_pem(&pki.root_pem()).unwrap(),
        );
        let specs = [SignerSpec::Ca("corp".into())];
        let m = IdentityMatcher {
            san: crate::certs::Matcher::regex(r".*@example\.com").unwrap(),
            issuer: None,
        };
        let s = signers(&specs, &keys, Some(&m));
        let manifest = br#"{"schemaVersion":2,"x":1}"#;
        let d = Digest::sha256_of(manifest);
        // v0.1/0.2 shape: the whole chain in the bundle.
        let material = serde_json::json!({"x509CertificateChain": {"certificates": [
            {"rawBytes": STANDARD.encode(pki.der("leaf"))},
            {"rawBytes": STANDARD.encode(pki.der("intermediate"))},
        ]}});
        let content = (
            "messageSignature",
            serde_json::json!({
                "messageDigest": {"algorithm": "SHA2_256", "digest": STANDARD.encode(hex::decode(d.hex()).unwrap())},
                "signature": STANDARD.encode(pki.sign("leaf", manifest)),
            }),
        );
        let b = bundle_json(material, content.clone());
        match verify_bundle(&b, &Subject::new(&d, manifest), &s) {
            Ok(VerifiedBundle::Message(k)) => assert_eq!(k.signer, "ca:corp"),
            other => panic!("{:?}", other.err().map(|e| e.1)),
        }
        // v0.3: the leaf only, so the intermediate is missing and the chain does not verify.
        let leaf_only = bundle_json(
            serde_json::json!({"certificate": {"rawBytes": STANDARD.encode(pki.der("leaf"))}}),
            content,
        );
        assert!(matches!(
            verify_bundle(&leaf_only, &Subject::new(&d, manifest), &s),
            Err((BundleKind::Message, ArtifactError::Certificate(_)))
        ));
    }

    #[test]
    fn layers_by_media_type() {
        let none = BTreeMap::new;
        assert!(matches!(
            Artifact::from_layer(media::SIMPLE_SIGNING, Bytes::new(), none()),
            Some(Artifact::SimpleSigning { .. })
        ));
        assert!(matches!(
            Artifact::from_layer(media::DSSE_ENVELOPE, Bytes::new(), none()),
            Some(Artifact::Dsse { .. })
        ));
        assert!(matches!(
            Artifact::from_layer(media::BUNDLE_V03, Bytes::new(), none()),
            Some(Artifact::Bundle { .. })
        ));
        assert!(Artifact::from_layer(
            "application/vnd.oci.image.layer.v1.tar",
            Bytes::new(),
            none()
        )
        .is_none());
    }
}
