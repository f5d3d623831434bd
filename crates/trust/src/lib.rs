//! pullgate's trust policy: which manifests may be served, decided from signatures and scan
//! attestations the mirror already holds. Bytes in, verdict out; no network.
//!
//! What it is:
//! - **Configuration** ([`TrustConfig`], `policy.rs`): the `[trust]` table as plain serde
//!   structs (`[[trust.key]]`, `[[trust.ca]]`, `[[trust.rule]]`, `unmatched`), validated into
//!   a [`Policy`] of [`Rule`]s matched in file order on `<upstream>/<repository>` patterns
//!   (`pullgate_oci::pattern_matches`, the syntax `[[auth.rule]]` uses); first match wins.
//! - **Keys and CAs** ([`KeySet`], `keys.rs`; `watch.rs`): named PEM public keys (ECDSA
//!   P-256/P-384, Ed25519, RSA PKCS#1 v1.5/PSS) and CA bundles from files or mounted
//!   directories, followed through kubelet's `..data` swap (stat at most once a second;
//!   a broken version keeps the last good one; a removed file takes its keys away).
//!   [`KeySet::current`] hands out an immutable [`Keys`] snapshot with a
//!   [`generation`](Keys::generation) that changes whenever the material does.
//! - **Certificates** (`certs.rs`): chains verified by webpki up to a configured CA with the
//!   code-signing EKU, at evaluation time, and [`IdentityMatcher`]s on the leaf's SAN and
//!   issuer. Its module docs record the crates compared and the choices made.
//! - **Formats** (`formats.rs`): cosign simple signing, DSSE with in-toto statements (over
//!   PAE), sigstore bundles (v0.1–v0.3, `dsseEnvelope` and `messageSignature`), each bounded.
//! - **Evaluation** ([`evaluate`], `verdict.rs`): a rule, a [`Subject`], the [`Artifact`]s
//!   and a [`Keys`] snapshot in, a [`Verdict`] out: [`Outcome`], the [`RuleRef`], a
//!   [`Reason`] (an enum; its `Display` is the 403 message), the distinct [`KeyId`]s that
//!   verified, a [`ScanSummary`], and `recheck_at` (when the clock alone may change it: a
//!   scan aging out, an allowed CVE or a certificate expiring). No I/O and no clock: `now` is
//!   a parameter.
//!
//! What it is not: it fetches nothing (the mirror finds `.sig`/`.att` tags and referrers,
//! through its own cache, and hands over the bytes), caches no verdicts (the mirror keys its
//! cache on [`Keys::generation`] and the manifest digest), and knows no HTTP. No Rekor,
//! Fulcio trust root or RFC 3161 timestamps yet: keyless public-good sigstore is the next
//! step, and the verifier takes the verification time as a parameter for it.

mod certs;
mod der;
mod error;
mod formats;
mod keys;
mod policy;
mod verdict;
mod watch;

#[cfg(test)]
mod testutil;

pub use certs::{
    CaBundle, CertIdentity, IdentityMatcher, Matcher, VerifiedCert, MAX_CERTS, MAX_CHAIN,
    MAX_REGEX_LEN,
};
pub use error::{CertError, KeyError, LoadError, PolicyError, RuleProblem};
pub use formats::{
    media, pae, Artifact, ArtifactError, KeyId, SignerSpec, Subject, VerifiedStatement,
    MAX_ENVELOPE, MAX_PAYLOAD, MAX_SIGNATURES_PER_ENVELOPE,
};
pub use keys::{
    Fingerprint, KeyAlgorithm, KeySet, Keys, PublicKey, DEFAULT_CHECK_INTERVAL, MAX_KEYS_PER_NAME,
};
pub use policy::{
    parse_time, Action, AllowCveConfig, CaConfig, IdentityConfig, KeyConfig, Mode, Policy, Rule,
    RuleConfig, SbomConfig, ScanConfig, Severity, TrustConfig, Unmatched, MAX_THRESHOLD,
    SBOM_PREDICATES, VULN_PREDICATES,
};
pub use verdict::{evaluate, Outcome, Reason, RuleRef, ScanSummary, Verdict, MAX_ARTIFACTS};

use std::time::SystemTime;

use pullgate_oci::{RepoName, UpstreamId};

impl Policy {
    /// The rule for `(upstream, repo)` evaluated, or the `unmatched` verdict.
    pub fn evaluate(
        &self,
        upstream: &UpstreamId,
        repo: &RepoName,
        subject: &Subject<'_>,
        artifacts: &[Artifact],
        keys: &Keys,
        now: SystemTime,
    ) -> Verdict {
        match self.rule_for(upstream, repo) {
            Some(rule) => evaluate(rule, subject, artifacts, keys, now),
            None => Verdict::unmatched(self.unmatched()),
        }
    }
}

#[cfg(test)]
mod tests;
