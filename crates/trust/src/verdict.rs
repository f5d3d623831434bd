//! [`evaluate`]: one rule, one subject, the fetched artifacts and a key snapshot in; a
//! [`Verdict`] out. No I/O, no clock of its own: `now` is a parameter, so it is benchable
//! and its answer is a function of its inputs.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::certs::IdentityMatcher;
use crate::formats::{
    claims_signature, media, verify_bundle, verify_dsse, verify_simple_signing, Artifact,
    ArtifactError, BundleKind, KeyId, SignerSpec, Signers, Subject, VerifiedBundle,
    VerifiedStatement,
};
use crate::keys::{Fingerprint, Keys};
use crate::policy::{parse_time, Action, Mode, Rule, Severity, Unmatched, SBOM_PREDICATES};

/// Most artifacts one evaluation considers; the rest are ignored (the mirror should not
/// fetch more than this either).
pub const MAX_ARTIFACTS: usize = 64;

/// Allow, deny, or deny-but-serve (`mode = "warn"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Allow,
    Deny,
    /// The rule would deny, but it is in `warn` mode: serve, log, count.
    Warn,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Warn => "warn",
        }
    }
}

/// Which rule decided: its index in the file (none for `unmatched`) and its description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub index: Option<usize>,
    pub description: String,
}

/// Why a verdict is what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// `action = "allow"`.
    AllowedByRule,
    /// `action = "deny"`.
    DeniedByRule,
    /// No rule matched; `unmatched` decided.
    Unmatched(Unmatched),
    /// Enough distinct keys signed, and every gate passed.
    Verified,
    /// No signature material, or none that is a signature.
    NoSignature,
    /// Signatures were there, none counted: the most telling failure among them.
    Rejected(ArtifactError),
    /// Fewer distinct keys verified than the threshold.
    ThresholdNotMet {
        verified: usize,
        required: usize,
    },
    /// No verified scan attestation.
    NoScan,
    /// Verified scans were there, but none could be read.
    ScanUnreadable,
    StaleScan {
        age: Duration,
        max: Duration,
    },
    /// The first finding over `max_severity` that no live allow-list entry covers.
    Vulnerability {
        severity: Severity,
        id: String,
        package: String,
    },
    /// An SBOM attestation was required and none verified.
    NoSbom,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::AllowedByRule => f.write_str("allowed by rule"),
            Reason::DeniedByRule => f.write_str("denied by rule"),
            Reason::Unmatched(Unmatched::Allow) => {
                f.write_str("no rule matched; unmatched images are allowed")
            }
            Reason::Unmatched(Unmatched::Deny) => {
                f.write_str("no rule matched; unmatched images are denied")
            }
            Reason::Verified => f.write_str("verified"),
            Reason::NoSignature => f.write_str("no signature"),
            Reason::Rejected(e) => e.fmt(f),
            Reason::ThresholdNotMet { verified, required } => {
                write!(
                    f,
                    "threshold not met: {verified} of {required} distinct keys"
                )
            }
            Reason::NoScan => f.write_str("no verified scan attestation"),
            Reason::ScanUnreadable => f.write_str("the scan attestation cannot be read"),
            Reason::StaleScan { age, max } => write!(
                f,
                "stale scan: {} old, at most {} allowed",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(*max)
            ),
            Reason::Vulnerability {
                severity,
                id,
                package,
            } => write!(f, "{severity} {id} in {package}"),
            Reason::NoSbom => f.write_str("no verified SBOM attestation"),
        }
    }
}

/// What the verified scan said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanSummary {
    pub predicate_type: String,
    pub signed_by: Vec<KeyId>,
    pub scanner: Option<String>,
    pub finished: Option<SystemTime>,
    pub age: Option<Duration>,
    /// Findings by severity, indexed as [`Severity::ALL`].
    pub counts: [usize; 5],
    /// The worst finding not covered by a live allow-list entry.
    pub worst: Option<Severity>,
    /// Allow-list entries that covered a finding over the limit.
    pub allowed: Vec<String>,
}

/// The decision on one manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub rule: RuleRef,
    pub reason: Reason,
    /// Distinct keys whose image signatures verified.
    pub keys: Vec<KeyId>,
    pub scan: Option<ScanSummary>,
    /// The earliest time this verdict may change by the clock alone: the scan reaching
    /// `max_age`, an allow-list entry that covered a finding expiring, or a verifying
    /// certificate's leaf expiring. A verdict cache must not serve it past then.
    pub recheck_at: Option<SystemTime>,
}

impl Verdict {
    /// Whether the content may be served (allowed, or denied in `warn` mode).
    pub fn serves(&self) -> bool {
        self.outcome != Outcome::Deny
    }

    /// The verdict of an unmatched name.
    pub fn unmatched(unmatched: Unmatched) -> Verdict {
        Verdict {
            outcome: match unmatched {
                Unmatched::Allow => Outcome::Allow,
                Unmatched::Deny => Outcome::Deny,
            },
            rule: RuleRef {
                index: None,
                description: "trust.unmatched".to_owned(),
            },
            reason: Reason::Unmatched(unmatched),
            keys: Vec::new(),
            scan: None,
            recheck_at: None,
        }
    }
}

/// A 403 message: `denied by trust rule 1 (docker.io/team/**): no signature`.
impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self.outcome {
            Outcome::Allow => "allowed",
            Outcome::Deny => "denied",
            Outcome::Warn => "would be denied (warn only)",
        };
        write!(f, "{word} by {}: {}", self.rule.description, self.reason)
    }
}

/// Evaluates `rule` for `subject` over the fetched `artifacts` (at most [`MAX_ARTIFACTS`]
/// are considered), with the keys and CAs of `keys`, certificates and scan ages judged at
/// `now`.
pub fn evaluate(
    rule: &Rule,
    subject: &Subject<'_>,
    artifacts: &[Artifact],
    keys: &Keys,
    now: SystemTime,
) -> Verdict {
    let mut verdict = Verdict {
        outcome: Outcome::Allow,
        rule: RuleRef {
            index: Some(rule.index()),
            description: rule.description(),
        },
        reason: Reason::AllowedByRule,
        keys: Vec::new(),
        scan: None,
        recheck_at: None,
    };
    let denial = match rule.action() {
        Action::Allow => None,
        Action::Deny => Some(Reason::DeniedByRule),
        Action::Verify => check(
            rule,
            subject,
            &artifacts[..artifacts.len().min(MAX_ARTIFACTS)],
            keys,
            now,
            &mut verdict,
        ),
    };
    if let Some(reason) = denial {
        verdict.reason = reason;
        verdict.outcome = match rule.mode() {
            Mode::Enforce => Outcome::Deny,
            Mode::Warn => Outcome::Warn,
        };
    }
    verdict
}

/// The denial reason, if any; fills in the keys and the scan summary as it goes.
fn check(
    rule: &Rule,
    subject: &Subject<'_>,
    artifacts: &[Artifact],
    keys: &Keys,
    now: SystemTime,
    verdict: &mut Verdict,
) -> Option<Reason> {
    verdict.reason = Reason::Verified;
    let signers = Signers {
        specs: &rule.signers,
        identity: rule.identity.as_ref(),
        keys,
        now,
    };
    let mut verified: BTreeMap<Fingerprint, KeyId> = BTreeMap::new();
    let mut best: Option<ArtifactError> = None;
    let note = |e: ArtifactError, best: &mut Option<ArtifactError>| {
        if best.as_ref().is_none_or(|b| e.rank() > b.rank()) {
            *best = Some(e);
        }
    };
    for artifact in artifacts {
        let found: Vec<KeyId> = match artifact {
            Artifact::SimpleSigning {
                payload,
                annotations,
            } => match verify_simple_signing(payload, annotations, subject, &signers) {
                Ok(key) => vec![key],
                Err(e) => {
                    note(e, &mut best);
                    continue;
                }
            },
            // Attestations (by whoever) are not image signatures; only cosign's signing
            // predicate in DSSE counts, and other signers' attestations are no failure.
            Artifact::Dsse {
                envelope,
                annotations,
            } => match verify_dsse(envelope, annotations, subject, &signers) {
                Ok(st) if st.predicate_type == media::COSIGN_SIGN_PREDICATE => st.keys,
                Ok(_) => continue,
                Err(e) => {
                    if claims_signature(artifact) {
                        note(e, &mut best);
                    }
                    continue;
                }
            },
            Artifact::Bundle { bundle } => match verify_bundle(bundle, subject, &signers) {
                Ok(VerifiedBundle::Message(key)) => vec![key],
                Ok(VerifiedBundle::Statement(st))
                    if st.predicate_type == media::COSIGN_SIGN_PREDICATE =>
                {
                    st.keys
                }
                Ok(VerifiedBundle::Statement(_)) => continue,
                Err((BundleKind::Dsse, e)) => {
                    if claims_signature(artifact) {
                        note(e, &mut best);
                    }
                    continue;
                }
                Err((BundleKind::Message, e)) => {
                    note(e, &mut best);
                    continue;
                }
            },
        };
        for key in found {
            verified.entry(key.fingerprint).or_insert(key);
        }
    }
    verdict.keys = verified.into_values().collect();
    for expires in verdict.keys.iter().filter_map(|k| k.expires) {
        recheck(&mut verdict.recheck_at, expires);
    }
    if verdict.keys.is_empty() {
        return Some(match best {
            None | Some(ArtifactError::NoSignature) => Reason::NoSignature,
            Some(e) => Reason::Rejected(e),
        });
    }
    if verdict.keys.len() < rule.threshold {
        return Some(Reason::ThresholdNotMet {
            verified: verdict.keys.len(),
            required: rule.threshold,
        });
    }
    if let Some(gate) = &rule.scan {
        let statements = statements(
            artifacts,
            subject,
            &gate.signers,
            gate.identity.as_ref(),
            keys,
            now,
            |t| gate.predicate_types.iter().any(|p| p == t),
        );
        if statements.is_empty() {
            return Some(Reason::NoScan);
        }
        let scans: Vec<(SystemTime, VulnPredicate, &VerifiedStatement)> = statements
            .iter()
            .filter_map(|st| {
                let predicate = VulnPredicate::deserialize(&st.predicate).ok()?;
                let finished =
                    parse_time(predicate.metadata.as_ref()?.scan_finished_on.as_deref()?)?;
                Some((finished, predicate, st))
            })
            .collect();
        let Some((finished, predicate, statement)) = scans.into_iter().max_by_key(|(t, _, _)| *t)
        else {
            return Some(Reason::ScanUnreadable);
        };
        let age = now.duration_since(finished).unwrap_or_default();
        let mut summary =
            ScanSummary {
                predicate_type: statement.predicate_type.clone(),
                signed_by: statement.keys.clone(),
                scanner: predicate.scanner.uri.clone().map(|uri| {
                    match &predicate.scanner.version {
                        Some(v) => format!("{uri}@{v}"),
                        None => uri,
                    }
                }),
                finished: Some(finished),
                age: Some(age),
                ..ScanSummary::default()
            };
        let mut over: Option<(Severity, &Vuln)> = None;
        for vuln in predicate.vulnerabilities() {
            let severity = Severity::parse(&vuln.severity);
            summary.counts[severity as usize] += 1;
            let over_limit = severity > gate.max_severity;
            if over_limit
                && gate
                    .allow_cves
                    .iter()
                    .any(|(id, expires)| *id == vuln.id && now < *expires)
            {
                if !summary.allowed.contains(&vuln.id) {
                    summary.allowed.push(vuln.id.clone());
                }
                for (id, expires) in &gate.allow_cves {
                    if *id == vuln.id && now < *expires {
                        recheck(&mut verdict.recheck_at, *expires);
                    }
                }
                continue;
            }
            summary.worst = summary.worst.max(Some(severity));
            if over_limit && over.is_none_or(|(worst, _)| severity > worst) {
                over = Some((severity, vuln));
            }
        }
        verdict.scan = Some(summary);
        if let Some(max) = gate.max_age {
            if age > max {
                return Some(Reason::StaleScan { age, max });
            }
            if let Some(stale_at) = finished.checked_add(max) {
                recheck(&mut verdict.recheck_at, stale_at);
            }
        }
        if let Some((severity, vuln)) = over {
            return Some(Reason::Vulnerability {
                severity,
                id: vuln.id.clone(),
                package: if vuln.package.is_empty() {
                    "an unnamed package".into()
                } else {
                    vuln.package.clone()
                },
            });
        }
    }
    if let Some(gate) = &rule.sbom {
        let sboms = statements(
            artifacts,
            subject,
            &gate.signers,
            gate.identity.as_ref(),
            keys,
            now,
            |t| {
                SBOM_PREDICATES
                    .iter()
                    .any(|p| t == *p || t.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
            },
        );
        if sboms.is_empty() {
            return Some(Reason::NoSbom);
        }
    }
    None
}

fn recheck(at: &mut Option<SystemTime>, when: SystemTime) {
    if at.is_none_or(|t| when < t) {
        *at = Some(when);
    }
}

/// Every attestation about the subject that `specs` signed and `wanted` accepts the
/// predicate type of.
fn statements(
    artifacts: &[Artifact],
    subject: &Subject<'_>,
    specs: &[SignerSpec],
    identity: Option<&IdentityMatcher>,
    keys: &Keys,
    now: SystemTime,
    wanted: impl Fn(&str) -> bool,
) -> Vec<VerifiedStatement> {
    let signers = Signers {
        specs,
        identity,
        keys,
        now,
    };
    artifacts
        .iter()
        .filter_map(|artifact| match artifact {
            Artifact::Dsse {
                envelope,
                annotations,
            } => verify_dsse(envelope, annotations, subject, &signers).ok(),
            Artifact::Bundle { bundle } => match verify_bundle(bundle, subject, &signers) {
                Ok(VerifiedBundle::Statement(st)) => Some(st),
                _ => None,
            },
            Artifact::SimpleSigning { .. } => None,
        })
        .filter(|st| wanted(&st.predicate_type))
        .collect()
}

/// cosign's vuln predicate with Trivy's result (`cosign attest --type vuln` of
/// `trivy --format cosign-vuln`).
#[derive(Deserialize)]
struct VulnPredicate {
    scanner: Scanner,
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct Scanner {
    uri: Option<String>,
    version: Option<String>,
    result: Option<TrivyReport>,
}

#[derive(Deserialize)]
struct TrivyReport {
    #[serde(rename = "Results", default)]
    results: Option<Vec<TrivyResult>>,
}

#[derive(Deserialize)]
struct TrivyResult {
    #[serde(rename = "Vulnerabilities", default)]
    vulnerabilities: Option<Vec<Vuln>>,
}

#[derive(Deserialize)]
struct Vuln {
    #[serde(rename = "VulnerabilityID")]
    id: String,
    #[serde(rename = "Severity", default)]
    severity: String,
    #[serde(rename = "PkgName", default)]
    package: String,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(rename = "scanFinishedOn")]
    scan_finished_on: Option<String>,
}

impl VulnPredicate {
    fn vulnerabilities(&self) -> impl Iterator<Item = &Vuln> {
        self.scanner
            .result
            .iter()
            .flat_map(|r| r.results.iter().flatten())
            .flat_map(|r| r.vulnerabilities.iter().flatten())
    }
}
