//! CA bundles, certificate chains and signer identities, for signatures made with
//! `cosign sign --certificate … --certificate-chain …` from a private PKI.
//!
//! **Crates compared.** `rustls-webpki` (already in the tree through rustls) builds and
//! verifies the path from the leaf through the given intermediates to a configured CA,
//! checks validity periods, basic constraints, name constraints and, with
//! `KeyUsage::required`, the code-signing EKU (`1.3.6.1.5.5.7.3.3`). It does not expose a
//! certificate's email SANs or arbitrary extensions. `x509-parser` would read those, but it
//! adds about a dozen crates (nom, asn1-rs, der-parser, oid-registry, time, …) that are not
//! in the tree to read three fields of a certificate webpki has already parsed and verified.
//! So webpki verifies, and a bounded reader of our own (`der.rs`) reads the leaf's SAN
//! (rfc822Name and URI), the Fulcio issuer extensions and the issuer DN. (`sigstore`, the
//! crate, fetches through its own OCI client and brings ~359 crates; see issue 17.)
//!
//! **When the chain must be valid: now**, the time [`evaluate`](crate::evaluate) is given.
//! Without Rekor, cosign's signature carries no trusted timestamp, and the signer's own
//! claim of when it signed proves nothing; so an expired (or not yet valid) leaf or CA no
//! longer verifies. Private-PKI code-signing certificates live for months, which this suits.
//! Keyless Fulcio certificates live ten minutes and will need Rekor's integrated time (or an
//! RFC 3161 timestamp) as the verification time: [`CaBundle::verify`] takes the time as a
//! parameter for that step.
//!
//! **The issuer an identity matcher sees:** the Fulcio OIDC-issuer extension if present
//! (`1.3.6.1.4.1.57264.1.8`, a DER UTF8String, else the deprecated `…1.1`, raw bytes), else
//! the leaf's issuer DN in RFC 4514 order (`CN=Corp Signing CA,O=Corp`).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use crate::der::{oid_to_string, tag, Reader};
use crate::error::CertError;
use crate::keys::PublicKey;

/// Most certificates a CA bundle, or a signature's chain, may hold.
pub const MAX_CERTS: usize = 256;
/// Most intermediates considered from one signature's chain.
pub const MAX_CHAIN: usize = 8;

/// id-kp-codeSigning, 1.3.6.1.5.5.7.3.3.
const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
const OID_EKU: &[u8] = &[0x55, 0x1d, 0x25];
const OID_FULCIO_ISSUER_V1: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xbf, 0x30, 0x01, 0x01];
const OID_FULCIO_ISSUER_V2: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xbf, 0x30, 0x01, 0x08];

static SIGNATURE_ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// The CA certificates of one `[[trust.ca]]`, as trust anchors.
#[derive(Clone)]
pub struct CaBundle {
    anchors: Vec<TrustAnchor<'static>>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaBundle({} certificates)", self.anchors.len())
    }
}

/// Every `CERTIFICATE` block of a PEM text, DER-decoded, at most `limit`.
pub(crate) fn certs_from_pem(bytes: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, CertError> {
    let mut certs = Vec::new();
    for item in pem::SliceIter::<(pem::SectionKind, Vec<u8>)>::new(bytes) {
        let (kind, der) = item.map_err(|e| CertError::Pem(e.to_string()))?;
        if kind == pem::SectionKind::Certificate {
            if certs.len() == limit {
                return Err(CertError::TooMany(limit));
            }
            certs.push(der);
        }
    }
    Ok(certs)
}

impl CaBundle {
    /// Every certificate of a PEM bundle (at least one).
    pub fn from_pem(bytes: &[u8]) -> Result<Self, CertError> {
        let certs = certs_from_pem(bytes, MAX_CERTS)?;
        if certs.is_empty() {
            return Err(CertError::NoCertificate);
        }
        let anchors = certs
            .into_iter()
            .map(|der| {
                let der = CertificateDer::from(der);
                webpki::anchor_from_trusted_cert(&der)
                    .map(|a| a.to_owned())
                    .map_err(|e| CertError::Anchor(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(CaBundle { anchors })
    }

    /// How many CA certificates the bundle holds.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Verifies `leaf` (DER) through `intermediates` (DER; extra ones, such as the root the
    /// chain annotation repeats, are harmless) up to one of this bundle's CAs, valid at
    /// `at`, with the code-signing EKU. Returns the leaf's key and identity.
    pub fn verify(
        &self,
        leaf: &[u8],
        intermediates: &[Vec<u8>],
        at: SystemTime,
    ) -> Result<VerifiedCert, CertError> {
        let leaf_der = CertificateDer::from(leaf);
        let ee = EndEntityCert::try_from(&leaf_der).map_err(|_| CertError::Malformed)?;
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .take(MAX_CHAIN)
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        ee.verify_for_usage(
            SIGNATURE_ALGS,
            &self.anchors,
            &intermediates,
            UnixTime::since_unix_epoch(since_epoch),
            // Applied to every certificate of the path: intermediates may leave EKU out.
            // The leaf must carry it, which is checked below.
            KeyUsage::required_if_present(EKU_CODE_SIGNING),
            None,
            None,
        )
        .map_err(|e| CertError::Chain(e.to_string()))?;
        let key = PublicKey::from_spki_der(ee.subject_public_key_info().as_ref())?;
        let (identity, code_signing, not_after) = read_leaf(leaf).ok_or(CertError::Malformed)?;
        if !code_signing {
            return Err(CertError::NotCodeSigning);
        }
        Ok(VerifiedCert {
            key,
            identity,
            not_after,
        })
    }
}

/// A leaf that verified: its key, and who it says it is.
#[derive(Debug, Clone)]
pub struct VerifiedCert {
    pub key: PublicKey,
    pub identity: CertIdentity,
    /// When the leaf expires (if its validity could be read).
    pub not_after: Option<SystemTime>,
}

/// A certificate's signer identity, as identity matchers see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertIdentity {
    /// rfc822Name entries of the SAN.
    pub emails: Vec<String>,
    /// uniformResourceIdentifier entries of the SAN.
    pub uris: Vec<String>,
    /// The Fulcio issuer extension if present, else the issuer DN (RFC 4514).
    pub issuer: String,
}

impl CertIdentity {
    /// The first SAN, for messages and the audit line.
    pub fn san(&self) -> Option<&str> {
        self.emails
            .first()
            .or(self.uris.first())
            .map(String::as_str)
    }

    /// Reads the identity of a DER certificate.
    pub fn of_leaf(der: &[u8]) -> Option<CertIdentity> {
        read_leaf(der).map(|(identity, _, _)| identity)
    }
}

/// A leaf's identity, whether its EKU extension names code signing, and its `notAfter`.
fn read_leaf(der: &[u8]) -> Option<(CertIdentity, bool, Option<SystemTime>)> {
    let mut cert = Reader::new(Reader::new(der).take(tag::SEQUENCE)?);
    let mut tbs = Reader::new(cert.take(tag::SEQUENCE)?);
    tbs.optional(tag::CONTEXT_0);
    tbs.take(tag::INTEGER)?;
    tbs.take(tag::SEQUENCE)?;
    let issuer_dn = render_dn(tbs.take(tag::SEQUENCE)?)?;
    let mut validity = Reader::new(tbs.take(tag::SEQUENCE)?);
    validity.next()?;
    let not_after = validity.next().and_then(|(t, v)| asn1_time(t, v));
    tbs.take(tag::SEQUENCE)?; // subject
    tbs.take(tag::SEQUENCE)?; // spki
    let mut identity = CertIdentity::default();
    let mut code_signing = false;
    let (mut fulcio_v1, mut fulcio_v2) = (None, None);
    while let Some((t, contents)) = tbs.next() {
        if t != tag::CONTEXT_3 {
            continue;
        }
        let mut exts = Reader::new(Reader::new(contents).take(tag::SEQUENCE)?);
        while !exts.is_empty() {
            let mut ext = Reader::new(exts.take(tag::SEQUENCE)?);
            let oid = ext.take(tag::OID)?;
            ext.optional(tag::BOOLEAN);
            let value = ext.take(tag::OCTET_STRING)?;
            match oid {
                OID_SAN => read_san(value, &mut identity)?,
                OID_EKU => {
                    let mut ekus = Reader::new(Reader::new(value).take(tag::SEQUENCE)?);
                    while let Some(eku) = ekus.take(tag::OID) {
                        code_signing |= eku == EKU_CODE_SIGNING;
                    }
                }
                OID_FULCIO_ISSUER_V1 => {
                    fulcio_v1 = Some(String::from_utf8_lossy(value).into_owned())
                }
                OID_FULCIO_ISSUER_V2 => {
                    fulcio_v2 = Some(decode_string(
                        Reader::new(value).take(tag::UTF8_STRING)?,
                        tag::UTF8_STRING,
                    )?)
                }
                _ => {}
            }
        }
    }
    identity.issuer = fulcio_v2.or(fulcio_v1).unwrap_or(issuer_dn);
    Some((identity, code_signing, not_after))
}

/// An X.509 `Time`: UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`).
fn asn1_time(t: u8, v: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(v).ok()?;
    let full = match (t, text.len()) {
        (tag::UTC_TIME, 13) => {
            let yy: u32 = text.get(..2)?.parse().ok()?;
            format!("{}{text}", if yy < 50 { "20" } else { "19" })
        }
        (tag::GENERALIZED_TIME, 15) => text.to_owned(),
        _ => return None,
    };
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        full.get(..4)?,
        full.get(4..6)?,
        full.get(6..8)?,
        full.get(8..10)?,
        full.get(10..12)?,
        full.get(12..14)?
    );
    if !full.ends_with('Z') {
        return None;
    }
    crate::policy::parse_time(&rfc3339)
}

fn read_san(value: &[u8], identity: &mut CertIdentity) -> Option<()> {
    let mut names = Reader::new(Reader::new(value).take(tag::SEQUENCE)?);
    while let Some((t, contents)) = names.next() {
        let list = match t {
            tag::SAN_EMAIL => &mut identity.emails,
            tag::SAN_URI => &mut identity.uris,
            _ => continue,
        };
        if list.len() < 64 {
            list.push(std::str::from_utf8(contents).ok()?.to_owned());
        }
    }
    Some(())
}

fn decode_string(contents: &[u8], t: u8) -> Option<String> {
    match t {
        tag::UTF8_STRING | tag::PRINTABLE_STRING | tag::IA5_STRING => {
            std::str::from_utf8(contents).ok().map(str::to_owned)
        }
        tag::T61_STRING => Some(contents.iter().map(|&b| char::from(b)).collect()),
        tag::BMP_STRING => {
            let units: Vec<u16> = contents
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// An X.509 Name in RFC 4514 order: last RDN first, `+` within an RDN, `,` between.
fn render_dn(name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    let mut reader = Reader::new(name);
    while !reader.is_empty() {
        let mut set = Reader::new(reader.take(tag::SET)?);
        let mut parts = Vec::new();
        while !set.is_empty() {
            let mut atv = Reader::new(set.take(tag::SEQUENCE)?);
            let oid = atv.take(tag::OID)?;
            let (t, value) = atv.next()?;
            let key = match oid {
                [0x55, 0x04, 0x03] => "CN".to_owned(),
                [0x55, 0x04, 0x06] => "C".to_owned(),
                [0x55, 0x04, 0x07] => "L".to_owned(),
                [0x55, 0x04, 0x08] => "ST".to_owned(),
                [0x55, 0x04, 0x0a] => "O".to_owned(),
                [0x55, 0x04, 0x0b] => "OU".to_owned(),
                [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress".to_owned(),
                other => oid_to_string(other)?,
            };
            let value =
                decode_string(value, t).unwrap_or_else(|| format!("#{}", hex::encode(value)));
            parts.push(format!("{key}={}", escape_dn_value(&value)));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && matches!(c, '#' | ' '))
        {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Most bytes of an identity regex, and of what it compiles to.
pub const MAX_REGEX_LEN: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// One side of an identity matcher: exact text, or a regex that must match all of it.
#[derive(Debug, Clone)]
pub enum Matcher {
    Exact(String),
    Regex(regex::Regex),
}

impl Matcher {
    /// A regex anchored at both ends (`release@.*` does not match `x-release@…`, unlike
    /// cosign's unanchored `--certificate-identity-regexp`).
    pub fn regex(pattern: &str) -> Result<Matcher, String> {
        if pattern.len() > MAX_REGEX_LEN {
            return Err(format!("longer than {MAX_REGEX_LEN} bytes"));
        }
        regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(Matcher::Regex)
            .map_err(|e| e.to_string())
    }

    pub fn matches(&self, text: &str) -> bool {
        match self {
            Matcher::Exact(exact) => exact == text,
            Matcher::Regex(re) => re.is_match(text),
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Exact(exact) => f.write_str(exact),
            Matcher::Regex(re) => write!(f, "/{}/", re.as_str()),
        }
    }
}

/// Who a certificate must name: a SAN (any email or URI entry) and optionally an issuer.
#[derive(Debug, Clone)]
pub struct IdentityMatcher {
    pub san: Matcher,
    pub issuer: Option<Matcher>,
}

impl IdentityMatcher {
    pub fn matches(&self, identity: &CertIdentity) -> bool {
        let san = identity
            .emails
            .iter()
            .chain(&identity.uris)
            .any(|name| self.san.matches(name));
        san && self
            .issuer
            .as_ref()
            .is_none_or(|issuer| issuer.matches(&identity.issuer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn verifies_an_openssl_chain_with_code_signing() {
        let pki = Pki::new();
        let ca = CaBundle::from_pem(&pki.root_pem()).unwrap();
        let now = SystemTime::now();
        type Check = fn(&Result<VerifiedCert, CertError>) -> bool;
        let cases: &[(&str, &[&str], Check)] = &[
            ("leaf", &["intermediate"], |r| r.is_ok()),
            // The chain annotation often repeats the root: harmless.
            ("leaf", &["intermediate", "root"], |r| r.is_ok()),
            ("leaf", &[], |r| matches!(r, Err(CertError::Chain(_)))),
            ("server", &["intermediate"], |r| {
                matches!(r, Err(CertError::Chain(_)))
            }),
            ("other_leaf", &["other_root"], |r| {
                matches!(r, Err(CertError::Chain(_)))
            }),
        ];
        for (leaf, chain, expected) in cases {
            let chain: Vec<Vec<u8>> = chain.iter().map(|c| pki.der(c)).collect();
            let result = ca.verify(&pki.der(leaf), &chain, now);
            assert!(
                expected(&result),
                "{leaf} via {chain:?}: {result:?}",
                chain = chain.len()
            );
        }
        let verified = ca
            .verify(&pki.der("leaf"), &[pki.der("intermediate")], now)
            .unwrap();
        assert_eq!(
            verified.identity.emails,
            vec!["release@example.com".to_owned()]
        );
        assert_eq!(
            verified.identity.uris,
            vec!["https://ci.example.com/release".to_owned()]
        );
        assert_eq!(
            verified.identity.issuer,
            "CN=Test Intermediate,O=Test, Inc.".replace(", ", "\\, ")
        );
        assert_eq!(verified.key.fingerprint(), pki.leaf_fingerprint());
        let not_after = verified.not_after.unwrap();
        let day = std::time::Duration::from_secs(86400);
        assert!(
            not_after > now + day - std::time::Duration::from_secs(120)
                && not_after <= now + day + std::time::Duration::from_secs(1)
        );

        // Past the leaf's validity: no longer verifies (the time is now, not signing time).
        let later = now + std::time::Duration::from_secs(3 * 86400);
        assert!(matches!(
            ca.verify(&pki.der("leaf"), &[pki.der("intermediate")], later),
            Err(CertError::Chain(_))
        ));
        assert!(matches!(
            ca.verify(b"junk", &[], now),
            Err(CertError::Malformed)
        ));
    }

    #[test]
    fn certificate_times() {
        let at = |secs: u64| Some(UNIX_EPOCH + std::time::Duration::from_secs(secs));
        let cases: &[(u8, &str, Option<SystemTime>)] = &[
            (tag::UTC_TIME, "240229120000Z", at(1_709_208_000)),
            (tag::UTC_TIME, "700101000000Z", at(0)),
            (tag::GENERALIZED_TIME, "20240229120000Z", at(1_709_208_000)),
            (tag::UTC_TIME, "20240229120000Z", None),
            (tag::GENERALIZED_TIME, "20240229120000+", None),
            (tag::INTEGER, "240229120000Z", None),
        ];
        for (t, text, expected) in cases {
            assert_eq!(asn1_time(*t, text.as_bytes()), *expected, "{text}");
        }
    }

    #[test]
    fn identity_matchers() {
        let id = CertIdentity {
            emails: vec!["release@example.com".into()],
            uris: vec![
                "https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main".into(),
            ],
            issuer: "https://ci.example.com".into(),
        };
        let exact = |s: &str| Matcher::Exact(s.into());
        let re = |s: &str| Matcher::regex(s).unwrap();
        let cases = [
            (exact("release@example.com"), None, true),
            (
                exact("release@example.com"),
                Some(exact("https://ci.example.com")),
                true,
            ),
            (
                exact("release@example.com"),
                Some(exact("https://other")),
                false,
            ),
            (exact("Release@example.com"), None, false),
            (re(r"https://github\.com/org/.*"), None, true),
            (re(r"github\.com/org/.*"), None, false),
            (re(r".*@example\.com"), Some(re(r"https://ci\..*")), true),
            (re(r".*@example\.org"), None, false),
        ];
        for (san, issuer, expected) in cases {
            let m = IdentityMatcher { san, issuer };
            assert_eq!(m.matches(&id), expected, "{m:?}");
        }
        assert!(Matcher::regex(&"a".repeat(MAX_REGEX_LEN + 1)).is_err());
        assert!(Matcher::regex("(").is_err());
        assert!(Matcher::regex("a{1000}{1000}").is_err());
    }

    #[test]
    fn fulcio_issuer_extension_wins_over_the_dn() {
        let pki = Pki::new();
        let id = CertIdentity::of_leaf(&pki.der("fulcio_leaf")).unwrap();
        assert_eq!(id.issuer, "https://token.actions.githubusercontent.com");
        assert_eq!(id.uris, vec!["https://github.com/org/repo".to_owned()]);
    }

    #[test]
    fn bundles_need_certificates() {
        assert!(matches!(
            CaBundle::from_pem(b""),
            Err(CertError::NoCertificate)
        ));
        let pki = Pki::new();
        let two = [pki.root_pem(), pki.pem("intermediate")].concat();
        assert_eq!(CaBundle::from_pem(&two).unwrap().len(), 2);
    }
}
