//! The `[trust]` configuration (plain serde structs the binary embeds) and the validated
//! [`Policy`]: rules in file order on `<upstream>/<repository>` patterns, first match wins.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pullgate_oci::{repo_pattern_matches, RepoName, UpstreamId};
use serde::{Deserialize, Serialize};

use crate::certs::{IdentityMatcher, Matcher};
use crate::error::{PolicyError, RuleProblem};
use crate::formats::SignerSpec;

/// Most distinct keys a threshold may ask for.
pub const MAX_THRESHOLD: u32 = 16;

/// cosign's vuln attestation predicate, and the same without the scheme (cosign has written
/// both).
pub const VULN_PREDICATES: &[&str] = &[
    "https://cosign.sigstore.dev/attestation/vuln/v1",
    "cosign.sigstore.dev/attestation/vuln/v1",
];

/// SBOM predicate types: SPDX and CycloneDX, as cosign and Syft write them (a versioned
/// suffix such as `/v2.3` or `/v1.5` also counts).
pub const SBOM_PREDICATES: &[&str] = &["https://spdx.dev/Document", "https://cyclonedx.org/bom"];

/// `[trust]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    #[serde(default)]
    pub key: Vec<KeyConfig>,
    #[serde(default)]
    pub ca: Vec<CaConfig>,
    #[serde(default)]
    pub rule: Vec<RuleConfig>,
    #[serde(default)]
    pub unmatched: Unmatched,
}

/// `[[trust.key]]`: a PEM public key file, or a mounted directory of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub name: String,
    pub path: PathBuf,
}

/// `[[trust.ca]]`: a PEM CA bundle, or a mounted directory of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    pub name: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    Verify,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Warn,
}

/// `[[trust.rule]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub images: Vec<String>,
    pub action: Action,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signed_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sbom: Option<SbomConfig>,
    /// Where the `.sig`/`.att` tags live, `<upstream>/<repository>` (cosign's
    /// `COSIGN_REPOSITORY`), instead of the image's own repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatures: Option<String>,
}

/// Who a certificate must name: `san` or `san_regex` (any email or URI SAN), and optionally
/// `issuer` or `issuer_regex`. Regexes must match the whole text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_regex: Option<String>,
}

/// A rule's scan gate. `signed_by` empty means the rule's own signers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicate_type: Option<String>,
    #[serde(default)]
    pub signed_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfig>,
    pub max_severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_cves: Vec<AllowCveConfig>,
}

/// One allowed CVE, until `expires` (`YYYY-MM-DD`, the start of that day in UTC, or an
/// RFC 3339 time; quoted or as a TOML date).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowCveConfig {
    pub id: String,
    #[serde(deserialize_with = "string_or_toml_datetime")]
    pub expires: String,
}

/// A rule's SBOM requirement. `signed_by` empty means the rule's own signers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SbomConfig {
    #[serde(default)]
    pub signed_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfig>,
}

/// A finding's severity, Trivy's scale. `UNKNOWN` ranks lowest: a finding nobody rated
/// cannot deny under `max_severity = "LOW"` or above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Unknown,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// Trivy's spelling, case-insensitively; anything else is `UNKNOWN`.
    pub fn parse(s: &str) -> Severity {
        Severity::ALL
            .into_iter()
            .find(|sev| sev.as_str().eq_ignore_ascii_case(s))
            .unwrap_or(Severity::Unknown)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "UNKNOWN",
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    unmatched: Unmatched,
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) index: usize,
    pub(crate) images: Vec<String>,
    pub(crate) action: Action,
    pub(crate) mode: Mode,
    pub(crate) signers: Vec<SignerSpec>,
    pub(crate) threshold: usize,
    pub(crate) identity: Option<IdentityMatcher>,
    pub(crate) scan: Option<ScanGate>,
    pub(crate) sbom: Option<SbomGate>,
    pub(crate) signatures: Option<(String, RepoName)>,
}

#[derive(Debug, Clone)]
pub(crate) struct ScanGate {
    pub predicate_types: Vec<String>,
    pub signers: Vec<SignerSpec>,
    pub identity: Option<IdentityMatcher>,
    pub max_severity: Severity,
    pub max_age: Option<Duration>,
    pub allow_cves: Vec<(String, SystemTime)>,
}

#[derive(Debug, Clone)]
pub(crate) struct SbomGate {
    pub signers: Vec<SignerSpec>,
    pub identity: Option<IdentityMatcher>,
}

impl Rule {
    /// The rule's position in the file, from 0.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn action(&self) -> Action {
        self.action
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn images(&self) -> &[String] {
        &self.images
    }

    /// `trust rule 1 (docker.io/team/**)`, counting from 1 as people do.
    pub fn description(&self) -> String {
        format!("trust rule {} ({})", self.index + 1, self.images.join(", "))
    }

    /// The configured signatures repository, as (upstream name, repository), if any.
    pub fn signatures(&self) -> Option<(&str, &RepoName)> {
        self.signatures.as_ref().map(|(u, r)| (u.as_str(), r))
    }

    pub fn matches(&self, upstream: &UpstreamId, repo: &RepoName) -> bool {
        self.images
            .iter()
            .any(|p| repo_pattern_matches(p, upstream.as_str(), repo.as_str()))
    }
}

impl Policy {
    pub fn from_config(config: &TrustConfig) -> Result<Policy, PolicyError> {
        let mut key_names: Vec<&str> = Vec::new();
        for (index, key) in config.key.iter().enumerate() {
            if key.name.is_empty()
                || key.name.starts_with("ca:")
                || key_names.contains(&key.name.as_str())
            {
                return Err(PolicyError::KeyName {
                    index,
                    name: key.name.clone(),
                });
            }
            key_names.push(&key.name);
        }
        let mut ca_names: Vec<&str> = Vec::new();
        for (index, ca) in config.ca.iter().enumerate() {
            if ca.name.is_empty() || ca_names.contains(&ca.name.as_str()) {
                return Err(PolicyError::CaName {
                    index,
                    name: ca.name.clone(),
                });
            }
            ca_names.push(&ca.name);
        }
        let rules = config
            .rule
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                validate_rule(index, rule, &key_names, &ca_names).map_err(|problem| {
                    PolicyError::Rule {
                        rule: index,
                        problem,
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            rules,
            unmatched: config.unmatched,
        })
    }

    /// The first rule whose patterns match, if any.
    pub fn rule_for(&self, upstream: &UpstreamId, repo: &RepoName) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(upstream, repo))
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn unmatched(&self) -> Unmatched {
        self.unmatched
    }

    /// Whether any rule may need signature material for this repository: the mirror need
    /// not fetch `.sig`/`.att` for an `allow`/`deny` rule or an unmatched name.
    pub fn needs_artifacts(&self, upstream: &UpstreamId, repo: &RepoName) -> bool {
        self.rule_for(upstream, repo)
            .is_some_and(|r| r.action == Action::Verify)
    }
}

fn validate_rule(
    index: usize,
    rule: &RuleConfig,
    keys: &[&str],
    cas: &[&str],
) -> Result<Rule, RuleProblem> {
    if rule.images.is_empty() {
        return Err(RuleProblem::NoImages);
    }
    for pattern in &rule.images {
        let (host, _) = pattern.split_once('/').unwrap_or((pattern, ""));
        if host.is_empty() || pattern.contains(char::is_whitespace) {
            return Err(RuleProblem::BadPattern(pattern.clone()));
        }
    }
    let verify = rule.action == Action::Verify;
    if !verify {
        for (set, what) in [
            (!rule.signed_by.is_empty(), "signed_by"),
            (rule.threshold.is_some(), "threshold"),
            (rule.identity.is_some(), "identity"),
            (rule.scan.is_some(), "scan"),
            (rule.sbom.is_some(), "sbom"),
            (rule.signatures.is_some(), "signatures"),
        ] {
            if set {
                return Err(RuleProblem::NotVerify(what));
            }
        }
    }
    if verify && rule.signed_by.is_empty() {
        return Err(RuleProblem::NoSigners);
    }
    let signers = signer_specs(&rule.signed_by, keys, cas)?;
    let identity = identity_for(&signers, rule.identity.as_ref())?;
    let threshold = rule.threshold.unwrap_or(1);
    if threshold == 0 || threshold > MAX_THRESHOLD {
        return Err(RuleProblem::Threshold {
            got: threshold,
            max: MAX_THRESHOLD,
        });
    }
    let scan = match &rule.scan {
        None => None,
        Some(scan) => {
            let (signers, identity) = if scan.signed_by.is_empty() {
                (signers.clone(), identity.clone())
            } else {
                let s = signer_specs(&scan.signed_by, keys, cas)?;
                let id = identity_for(&s, scan.identity.as_ref().or(rule.identity.as_ref()))?;
                (s, id)
            };
            let predicate_types = match &scan.predicate_type {
                Some(t) => vec![t.clone()],
                None => VULN_PREDICATES.iter().map(|s| (*s).to_owned()).collect(),
            };
            let max_age = scan
                .max_age
                .as_ref()
                .map(|s| humantime::parse_duration(s).map_err(|_| RuleProblem::Duration(s.clone())))
                .transpose()?;
            let allow_cves = scan
                .allow_cves
                .iter()
                .map(|c| {
                    parse_time(&c.expires)
                        .map(|t| (c.id.clone(), t))
                        .ok_or_else(|| RuleProblem::Expiry(c.expires.clone()))
                })
                .collect::<Result<_, _>>()?;
            Some(ScanGate {
                predicate_types,
                signers,
                identity,
                max_severity: scan.max_severity,
                max_age,
                allow_cves,
            })
        }
    };
    let sbom = match &rule.sbom {
        None => None,
        Some(sbom) if sbom.signed_by.is_empty() => Some(SbomGate {
            signers: signers.clone(),
            identity: identity.clone(),
        }),
        Some(sbom) => {
            let s = signer_specs(&sbom.signed_by, keys, cas)?;
            let id = identity_for(&s, sbom.identity.as_ref().or(rule.identity.as_ref()))?;
            Some(SbomGate {
                signers: s,
                identity: id,
            })
        }
    };
    let signatures = match &rule.signatures {
        None => None,
        Some(at) => match at.split_once('/') {
            Some((host, repo)) if !host.is_empty() => RepoName::parse(repo)
                .map(|r| Some((host.to_owned(), r)))
                .map_err(|_| RuleProblem::BadSignatures(at.clone()))?,
            _ => return Err(RuleProblem::BadSignatures(at.clone())),
        },
    };
    Ok(Rule {
        index,
        images: rule.images.clone(),
        action: rule.action,
        mode: rule.mode,
        signers,
        threshold: threshold as usize,
        identity,
        scan,
        sbom,
        signatures,
    })
}

fn signer_specs(
    names: &[String],
    keys: &[&str],
    cas: &[&str],
) -> Result<Vec<SignerSpec>, RuleProblem> {
    names
        .iter()
        .map(|n| match SignerSpec::parse(n) {
            SignerSpec::Key(k) if !keys.contains(&k.as_str()) => Err(RuleProblem::UnknownKey(k)),
            SignerSpec::Ca(c) if !cas.contains(&c.as_str()) => Err(RuleProblem::UnknownCa(c)),
            spec => Ok(spec),
        })
        .collect()
}

fn identity_for(
    signers: &[SignerSpec],
    config: Option<&IdentityConfig>,
) -> Result<Option<IdentityMatcher>, RuleProblem> {
    let needs = signers.iter().any(|s| matches!(s, SignerSpec::Ca(_)));
    let Some(config) = config else {
        return if needs {
            Err(RuleProblem::NoIdentity)
        } else {
            Ok(None)
        };
    };
    let matcher = |exact: &Option<String>, regex: &Option<String>, what| match (exact, regex) {
        (Some(_), Some(_)) => Err(RuleProblem::IdentityTwice(what)),
        (Some(e), None) => Ok(Some(Matcher::Exact(e.clone()))),
        (None, Some(r)) => Matcher::regex(r)
            .map(Some)
            .map_err(|reason| RuleProblem::Regex {
                pattern: r.clone(),
                reason,
            }),
        (None, None) => Ok(None),
    };
    let san = matcher(&config.san, &config.san_regex, "san")?.ok_or(RuleProblem::NoIdentity)?;
    let issuer = matcher(&config.issuer, &config.issuer_regex, "issuer")?;
    Ok(Some(IdentityMatcher { san, issuer }))
}

/// `YYYY-MM-DD` (the start of that day, UTC) or RFC 3339 (`…T…Z`, `…T…+02:00`, with or
/// without fractional seconds).
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok())?
    };
    let date = s.get(..10)?;
    let (y, m, d) = (
        num(date.get(..4)?)?,
        num(date.get(5..7)?)?,
        num(date.get(8..10)?)?,
    );
    if date.as_bytes().get(4) != Some(&b'-')
        || date.as_bytes().get(7) != Some(&b'-')
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
    {
        return None;
    }
    let days = days_from_civil(y, m, d);
    let mut secs = days * 86400;
    let rest = &s[10..];
    if !rest.is_empty() {
        let rest = rest.strip_prefix(['T', 't', ' '])?;
        let (hh, mm, ss) = (
            num(rest.get(..2)?)?,
            num(rest.get(3..5)?)?,
            num(rest.get(6..8)?)?,
        );
        if rest.as_bytes().get(2) != Some(&b':')
            || rest.as_bytes().get(5) != Some(&b':')
            || hh > 23
            || mm > 59
            || ss > 60
        {
            return None;
        }
        secs += hh * 3600 + mm * 60 + ss;
        let mut zone = &rest[8..];
        if let Some(frac) = zone.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            zone = &frac[digits..];
        }
        match zone {
            "Z" | "z" => {}
            _ => {
                let sign = match zone.as_bytes().first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let (oh, om) = (num(zone.get(1..3)?)?, num(zone.get(4..6)?)?);
                if zone.len() != 6 || zone.as_bytes().get(3) != Some(&b':') {
                    return None;
                }
                secs -= sign * (oh * 3600 + om * 60);
            }
        }
    }
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A string, or a TOML date/datetime (which the toml crate hands serde as a one-entry map).
fn string_or_toml_datetime<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a date (YYYY-MM-DD) or an RFC 3339 time")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
            match map.next_entry::<String, String>()? {
                Some((_, value)) => Ok(value),
                None => Err(serde::de::Error::custom("an empty table is not a date")),
            }
        }
    }
    d.deserialize_any(Visitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"
[[trust.key]]
name = "release"
path = "/var/run/secrets/pullgate/keys/release.pub"

[[trust.key]]
name = "scanner"
path = "/var/run/secrets/pullgate/keys/scanner.pub"

[[trust.ca]]
name = "corp"
path = "/var/run/secrets/pullgate/ca/ca.crt"

[[trust.rule]]
images = ["docker.io/team/**"]
action = "verify"
mode = "enforce"
signed_by = ["release"]
threshold = 1
identity = { san = "release@example.com", issuer = "https://ci.example.com" }
scan = { signed_by = ["scanner"], max_severity = "HIGH", max_age = "7d", allow_cves = [{ id = "CVE-2024-1", expires = 2030-01-01 }, { id = "CVE-2024-2", expires = "2020-01-01T00:00:00Z" }] }

[[trust.rule]]
images = ["ghcr.io/corp/*"]
action = "verify"
mode = "warn"
signed_by = ["ca:corp", "release"]
threshold = 2
identity = { san_regex = ".*@example\\.com" }
sbom = {}

[[trust.rule]]
images = ["docker.io/library/*"]
action = "allow"

[trust]
unmatched = "deny"
"#;

    #[derive(Deserialize)]
    struct File {
        trust: TrustConfig,
    }

    fn parse(text: &str) -> TrustConfig {
        toml::from_str::<File>(text).unwrap().trust
    }

    #[test]
    fn the_issues_shape_parses_and_validates() {
        let config = parse(ISSUE_EXAMPLE);
        assert_eq!(config.key.len(), 2);
        assert_eq!(config.unmatched, Unmatched::Deny);
        let policy = Policy::from_config(&config).unwrap();
        let up = |s: &str| UpstreamId::parse(s).unwrap();
        let repo = |s: &str| RepoName::parse(s).unwrap();
        let rule = policy
            .rule_for(&up("docker.io"), &repo("team/app"))
            .unwrap();
        assert_eq!(rule.index(), 0);
        assert_eq!(rule.description(), "trust rule 1 (docker.io/team/**)");
        let scan = rule.scan.as_ref().unwrap();
        assert_eq!(scan.max_age, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(scan.max_severity, Severity::High);
        assert_eq!(scan.predicate_types.len(), 2);
        assert_eq!(scan.allow_cves[0].1, parse_time("2030-01-01").unwrap());
        let corp = policy.rule_for(&up("ghcr.io"), &repo("corp/app")).unwrap();
        assert_eq!(
            (corp.index(), corp.mode(), corp.threshold),
            (1, Mode::Warn, 2)
        );
        assert!(corp.sbom.is_some());
        assert_eq!(
            policy
                .rule_for(&up("docker.io"), &repo("library/alpine"))
                .unwrap()
                .action(),
            Action::Allow
        );
        assert!(policy.rule_for(&up("quay.io"), &repo("x/y")).is_none());
        assert!(policy.needs_artifacts(&up("docker.io"), &repo("team/x/y")));
        assert!(!policy.needs_artifacts(&up("docker.io"), &repo("library/alpine")));
        // It prints back as an equivalent configuration.
        let again: TrustConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn invalid_configurations() {
        let base = |rule: &str| {
            format!("[[trust.key]]\nname = \"k\"\npath = \"/k\"\n[[trust.ca]]\nname = \"c\"\npath = \"/c\"\n[[trust.rule]]\n{rule}\n")
        };
        type Check = fn(&RuleProblem) -> bool;
        let cases: &[(&str, Check)] = &[
            ("images = []\naction = \"allow\"", |p| matches!(p, RuleProblem::NoImages)),
            ("images = [\"/x\"]\naction = \"allow\"", |p| matches!(p, RuleProblem::BadPattern(_))),
            ("images = [\"a/b\"]\naction = \"verify\"", |p| matches!(p, RuleProblem::NoSigners)),
            ("images = [\"a/b\"]\naction = \"allow\"\nsigned_by = [\"k\"]", |p| matches!(p, RuleProblem::NotVerify("signed_by"))),
            ("images = [\"a/b\"]\naction = \"verify\"\nsigned_by = [\"nope\"]", |p| matches!(p, RuleProblem::UnknownKey(_))),
            ("images = [\"a/b\"]\naction = \"verify\"\nsigned_by = [\"ca:nope\"]", |p| matches!(p, RuleProblem::UnknownCa(_))),
            ("images = [\"a/b\"]\naction = \"verify\"\nsigned_by = [\"ca:c\"]", |p| matches!(p, RuleProblem::NoIdentity)),
            ("images = [\"a/b\"]\naction = \"verify\"\nsigned_by = [\"ca:c\"]\nidentity = { issuer = \"x\" }", |p| matches!(p, RuleProblem::NoIdentity)),
            ("images = [\"a/b\"]\naction = \"verify\"\nsigned_by = [\"ca:c\"]\nidentity = { san = \"a\", san_regex = \"b\" }", |p| matches!(p, RuleProblem::IdentityTwice("san"))),
            ("images = [\"a/b\"]\naction = \"verify\"\nsigned_by = [\"ca:c\"]\nidentity = { san_regex = \"(\" }", |p| matches!(p, RuleProblem::Regex { .. })),
            ("images = [\"a/b\"]\naction = \"verify\"\nsigned_by = [\"k\"]\nthreshold = 0", |p| matches!(p, RuleProblem::Threshold { .. })),
            ("images = [\"a/b\"]\naction = \"verify\"\nsigned_by = [\"k\"]\nscan = { max_severity = \"HIGH\", max_age = \"soon\" }", |p| matches!(p, RuleProblem::Duration(_))),
            ("images = [\"a/b\"]\naction = \"verify\"\nsigned_by = [\"k\"]\nscan = { max_severity = \"HIGH\", allow_cves = [{ id = \"x\", expires = \"tomorrow\" }] }", |p| matches!(p, RuleProblem::Expiry(_))),
        ];
        for (rule, expected) in cases {
            match Policy::from_config(&parse(&base(rule))) {
                Err(PolicyError::Rule { rule: 0, problem }) => {
                    assert!(expected(&problem), "{rule}: {problem:?}")
                }
                other => panic!("{rule}: {other:?}"),
            }
        }
        let dup = "[[trust.key]]\nname = \"k\"\npath = \"/a\"\n[[trust.key]]\nname = \"k\"\npath = \"/b\"\n";
        assert!(matches!(
            Policy::from_config(&parse(dup)),
            Err(PolicyError::KeyName { index: 1, .. })
        ));
        assert!(toml::from_str::<File>("[trust]\nunknown = 1\n").is_err());
        assert!(
            toml::from_str::<File>("[[trust.rule]]\nimages = [\"a/b\"]\naction = \"maybe\"\n")
                .is_err()
        );
    }

    #[test]
    fn times() {
        let at = |secs: u64| Some(UNIX_EPOCH + Duration::from_secs(secs));
        let cases = [
            ("1970-01-01", at(0)),
            ("2024-02-29", at(1_709_164_800)),
            ("2024-02-29T12:00:00Z", at(1_709_208_000)),
            ("2024-02-29T12:00:00.123456789Z", at(1_709_208_000)),
            ("2024-02-29T14:00:00+02:00", at(1_709_208_000)),
            ("2024-02-29T10:30:00-01:30", at(1_709_208_000)),
            ("2024-13-01", None),
            ("2024-02-29T12:00:00", None),
            ("2024-02-29T12:00:00.Z", None),
            ("yesterday", None),
            ("2024-02-29T12:00:00+0200", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_time(text), expected, "{text}");
        }
    }

    #[test]
    fn severities() {
        assert!(Severity::Critical > Severity::High && Severity::Low > Severity::Unknown);
        assert_eq!(Severity::parse("critical"), Severity::Critical);
        assert_eq!(Severity::parse("NEGLIGIBLE"), Severity::Unknown);
    }
}

#[cfg(test)]
mod signatures_tests {
    use super::*;

    fn rule(signatures: &str, action: &str) -> Result<Policy, PolicyError> {
        let config: TrustConfig = toml::from_str(&format!(
            "[[key]]\nname = \"k\"\npath = \"/k\"\n[[rule]]\nimages = [\"docker.io/team/**\"]\naction = \"{action}\"\n{}signatures = \"{signatures}\"\n",
            if action == "verify" { "signed_by = [\"k\"]\n" } else { "" }
        ))
        .unwrap();
        Policy::from_config(&config)
    }

    #[test]
    fn a_signatures_repository_is_an_upstream_and_a_repository_of_a_verify_rule() {
        let p = rule("docker.io/team/signatures", "verify").unwrap();
        let (host, repo) = p.rules()[0].signatures().unwrap();
        assert_eq!((host, repo.as_str()), ("docker.io", "team/signatures"));
        for bad in ["team", "/team/sigs", "docker.io/Team Sigs"] {
            let e = rule(bad, "verify").unwrap_err();
            assert!(e.to_string().contains("signatures"), "{bad}: {e}");
        }
        assert!(rule("docker.io/team/signatures", "allow").is_err());
    }
}
