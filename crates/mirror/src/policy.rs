//! The trust policy at the mirror: every manifest served is judged by `pullgate-trust`
//! after the access check, from signature artifacts the mirror fetches through its own
//! cache with the upstream's credentials (never the client's); every blob of an enforced
//! repository is served only when a manifest that passed there references it.
//!
//! - **Finding signatures:** the tag scheme (`sha256-<hex>.sig`, `.att`) in the image's
//!   repository, and sigstore bundles from the referrers API or, where the upstream has
//!   none (Distribution 2.8), the tag-schema fallback index `sha256-<hex>`. Tags and
//!   manifests go through the mirror's internal manifest paths and layers through the
//!   internal blob path: cached like any content, so a cached image with cached signatures
//!   still verifies when the upstream is down, and checked by `ensure_access` like any
//!   content. Those internal paths are not themselves judged (no recursion).
//! - **Verdicts** are cached per (keys generation, upstream, repository, digest), at most
//!   [`VERDICT_MAX_AGE`] (a newly pushed signature is seen that soon) and never past the
//!   verdict's `recheck_at` (a scan ageing out). A key rotation changes the generation,
//!   hence the key, hence the answer.
//! - **Index children** fetched through an index that passed are allowed by lineage,
//!   recorded when the index passes (same keys generation, same lifetime as its verdict).
//! - **Blobs:** in memory, bounded, per (upstream, repository). After a restart the set is
//!   empty: a blob of an enforced repository is refused until a manifest that references
//!   it is pulled again (clients always pull the manifest first, so a pull just works).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use pullgate_flights::Flights;
use pullgate_oci::{media_types, Digest, ManifestInfo, RepoName, Tag, UpstreamId};
use pullgate_trust::{
    media, Action, Artifact, KeySet, Keys, Mode, Outcome, Policy, Rule, Subject, Verdict,
};
use serde::Deserialize;

use crate::blobs::ClientId;
use crate::error::MirrorError;
use crate::manifests::ManifestResponse;
use crate::{Mirror, Target};

/// How long a verdict is reused: a signature pushed after a denial is seen this soon.
pub const VERDICT_MAX_AGE: Duration = Duration::from_secs(60);
/// Manifest digests whose verdicts are remembered, each for at most
/// [`MAX_VERDICTS_PER_DIGEST`] (upstream, repository) pairs.
pub const MAX_VERDICTS: usize = 10_000;
/// (upstream, repository) pairs remembered per manifest digest; the oldest goes first.
pub const MAX_VERDICTS_PER_DIGEST: usize = 8;
/// Most bytes of verified manifests kept beside their verdicts, all verdicts together: a hit
/// whose bytes equal the kept ones needs no second hash (see [`Verified`]). Past it, new
/// verdicts keep none and their hits hash instead.
pub const MAX_VERIFIED_BYTES: usize = 16 * 1024 * 1024;
/// (upstream, repository, blob) allowances remembered; the oldest go first.
pub const MAX_ALLOWED_BLOBS: usize = 100_000;
/// Index children allowed by lineage, remembered.
pub const MAX_LINEAGE: usize = 100_000;
/// How long a blob stays allowed after the manifest that references it passed.
pub const BLOB_ALLOWANCE: Duration = Duration::from_secs(3600);
/// Largest signature artifact layer fetched: the trust crate's largest envelope (a `.sig`
/// layer is a few hundred bytes; a vuln or SBOM attestation of a large image some MiB).
pub const MAX_ARTIFACT_LAYER: u64 = pullgate_trust::MAX_ENVELOPE as u64;
/// Most bytes of signature material held for one verification (verifications of one
/// digest are coalesced, so this bounds memory per image being verified).
pub const MAX_ARTIFACT_BYTES: u64 = 32 * 1024 * 1024;
/// Most layers read from one signature manifest.
pub const MAX_ARTIFACT_LAYERS: usize = 64;
/// How long an upstream's 404 from the referrers API (it has none) is believed; the
/// fallback tag is asked for meanwhile, and an upgraded registry is noticed after this.
pub const NO_REFERRERS_API_FOR: Duration = Duration::from_secs(600);
/// Most referrers (bundles) read for one digest.
pub const MAX_REFERRERS: usize = 16;

/// The identity internal fetches count their fills against.
const TRUST_CLIENT: &str = "pullgate:trust";

/// What the policy decided about one request, as the audit line and metrics take it. No
/// secrets: key names and fingerprints, the rule as written, the reason's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    /// The rule's index in the file (from 0), `None` for `trust.unmatched`.
    pub rule_index: Option<usize>,
    /// `trust rule 1 (docker.io/team/**)`.
    pub rule: String,
    pub outcome: Outcome,
    pub reason: String,
    /// `release (0123456789ab)` for each distinct key that verified.
    pub keys: Vec<String>,
    /// `worst=HIGH critical=0 high=2 ... age=3h` when a scan was judged.
    pub scan: Option<String>,
    /// What was judged: the manifest (or, for a blob refused, the blob), for the audit
    /// line of a refusal, which has no response to take it from.
    pub digest: Option<Digest>,
}

impl PolicyDecision {
    fn of(verdict: &Verdict, digest: &Digest) -> PolicyDecision {
        PolicyDecision {
            rule_index: verdict.rule.index,
            rule: verdict.rule.description.clone(),
            outcome: verdict.outcome,
            reason: verdict.reason.to_string(),
            keys: verdict.keys.iter().map(ToString::to_string).collect(),
            scan: verdict.scan.as_ref().map(|s| {
                let mut out = format!(
                    "worst={} critical={} high={} medium={} low={} unknown={}",
                    s.worst.map_or("none", |w| w.as_str()),
                    s.counts[4],
                    s.counts[3],
                    s.counts[2],
                    s.counts[1],
                    s.counts[0]
                );
                if let Some(age) = s.age {
                    out.push_str(&format!(
                        " age={}",
                        humantime::format_duration(Duration::from_secs(age.as_secs()))
                    ));
                }
                out
            }),
            digest: Some(digest.clone()),
        }
    }

    /// Whether the content is served (allowed, or denied in `warn` mode).
    pub fn serves(&self) -> bool {
        self.outcome != Outcome::Deny
    }

    /// The metrics label of the rule: its index, or `unmatched`.
    pub fn rule_label(&self) -> String {
        self.rule_index
            .map_or_else(|| "unmatched".to_owned(), |i| i.to_string())
    }
}

impl std::fmt::Display for PolicyDecision {
    /// The 403 message: `denied by trust rule 1 (docker.io/team/**): no signature`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = match self.outcome {
            Outcome::Allow => "allowed",
            Outcome::Warn => "would be denied (warn only)",
            Outcome::Deny => "denied",
        };
        write!(f, "{word} by {}: {}", self.rule, self.reason)
    }
}

/// A map that forgets its oldest entries past `cap`: insertion order, refreshed on
/// re-insert. Small and dumb on purpose: the keys are cheap to re-derive (a manifest pull
/// records them again).
struct Bounded<K, V> {
    cap: usize,
    map: HashMap<K, (V, u64)>,
    order: VecDeque<(K, u64)>,
    seq: u64,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    fn new(cap: usize) -> Self {
        Bounded {
            cap,
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
        }
    }

    fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    fn insert(&mut self, k: K, v: V) {
        self.seq += 1;
        self.map.insert(k.clone(), (v, self.seq));
        self.order.push_back((k, self.seq));
        while self.map.len() > self.cap {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|(_, s)| *s == seq) {
                self.map.remove(&old);
            }
        }
        // Re-inserts leave stale entries in `order`; keep it within twice the map.
        if self.order.len() > 2 * self.cap.max(1) {
            let map = &self.map;
            self.order
                .retain(|(k, seq)| map.get(k).is_some_and(|(_, s)| s == seq));
        }
    }

    fn take(&mut self, k: &K) -> Option<V> {
        // Its `order` entry goes stale, as a re-insert's does.
        self.map.remove(k).map(|(v, _)| v)
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

type RepoKey = (UpstreamId, RepoName, Digest);

/// A verdict remembered: the decision as served (built once, shared by every hit), until
/// when it may be reused, and the bytes it was reached on when the budget allowed.
struct Remembered {
    decision: Arc<PolicyDecision>,
    until: Instant,
    verified: Option<Verified>,
}

/// A manifest's bytes as they were when they hashed to their digest and were judged. A
/// later read of the cache file that is byte-for-byte equal is the same content, so the
/// tamper check of a hit is a comparison, not a SHA-256; a read that differs is hashed.
/// Counted against [`MAX_VERIFIED_BYTES`] for as long as it lives.
struct Verified {
    bytes: Bytes,
    budget: Arc<AtomicUsize>,
}

impl Verified {
    /// Keeps `bytes` if the budget has room for them.
    fn keep(bytes: &Bytes, budget: &Arc<AtomicUsize>) -> Option<Verified> {
        let len = bytes.len();
        let before = budget.fetch_add(len, Ordering::Relaxed);
        if before + len > MAX_VERIFIED_BYTES {
            budget.fetch_sub(len, Ordering::Relaxed);
            return None;
        }
        Some(Verified {
            bytes: bytes.clone(),
            budget: Arc::clone(budget),
        })
    }
}

impl Drop for Verified {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.bytes.len(), Ordering::Relaxed);
    }
}
/// (keys generation, upstream, repository, manifest digest).
type VerdictKey = (u64, UpstreamId, RepoName, Digest);

/// Remembered verdicts, by manifest digest: a hit looks its digest up by reference (no key
/// built, one string hashed), then finds its (keys generation, upstream, repository) among
/// the few entries of that digest.
struct Verdicts {
    by_digest: Bounded<Digest, Vec<(Whose, Remembered)>>,
}

/// Whose verdict: (keys generation, upstream, repository).
type Whose = (u64, UpstreamId, RepoName);

impl Verdicts {
    fn new() -> Verdicts {
        Verdicts {
            by_digest: Bounded::new(MAX_VERDICTS),
        }
    }

    fn get(
        &self,
        generation: u64,
        upstream: &UpstreamId,
        repo: &RepoName,
        digest: &Digest,
    ) -> Option<&Remembered> {
        self.by_digest
            .get(digest)?
            .iter()
            .find(|((g, u, r), _)| *g == generation && u == upstream && r == repo)
            .map(|(_, remembered)| remembered)
    }

    fn insert(&mut self, key: VerdictKey, remembered: Remembered, now: Instant) {
        let (generation, upstream, repo, digest) = key;
        let mut entries = self.by_digest.take(&digest).unwrap_or_default();
        // What another keys generation decided is dead, and so is what has expired.
        entries.retain(|((g, u, r), old)| {
            *g == generation && now < old.until && !(*u == upstream && *r == repo)
        });
        if entries.len() >= MAX_VERDICTS_PER_DIGEST {
            entries.remove(0);
        }
        entries.push(((generation, upstream, repo), remembered));
        self.by_digest.insert(digest, entries);
    }
}

/// A remembered allowance: valid for one keys generation, until `until`.
#[derive(Clone, Copy)]
struct Allowance {
    generation: u64,
    until: Instant,
}

impl Allowance {
    fn valid(&self, generation: u64, now: Instant) -> bool {
        self.generation == generation && now < self.until
    }
}

/// The policy, its keys, and what the mirror remembers of its decisions.
pub(crate) struct Trust {
    policy: Policy,
    keys: KeySet,
    verdicts: Mutex<Verdicts>,
    /// Bytes held by the verdicts' [`Verified`] copies.
    verified_bytes: Arc<AtomicUsize>,
    lineage: Mutex<Bounded<RepoKey, Allowance>>,
    blobs: Mutex<Bounded<RepoKey, Allowance>>,
    /// Decisions by rule (by index, then `unmatched` last) and outcome: fixed counters, so
    /// a hit counts without a lock or an allocation.
    decisions: Vec<[AtomicU64; OUTCOMES.len()]>,
    /// Upstreams whose referrers API answered 404 (none), until when that is believed.
    no_referrers_api: Mutex<HashMap<UpstreamId, Instant>>,
    /// Verifications under way, by verdict key.
    verifying: Flights<VerdictKey, Result<(Verdict, bool), MirrorError>>,
}

/// Every outcome, in the order of the decision counters.
const OUTCOMES: [Outcome; 3] = [Outcome::Allow, Outcome::Warn, Outcome::Deny];

fn outcome_slot(o: Outcome) -> usize {
    match o {
        Outcome::Allow => 0,
        Outcome::Warn => 1,
        Outcome::Deny => 2,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Trust {
    pub(crate) fn new(policy: Policy, keys: KeySet) -> Trust {
        let decisions = (0..=policy.rules().len())
            .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            .collect();
        Trust {
            policy,
            keys,
            verdicts: Mutex::new(Verdicts::new()),
            verified_bytes: Arc::new(AtomicUsize::new(0)),
            lineage: Mutex::new(Bounded::new(MAX_LINEAGE)),
            blobs: Mutex::new(Bounded::new(MAX_ALLOWED_BLOBS)),
            decisions,
            no_referrers_api: Mutex::new(HashMap::new()),
            verifying: Flights::new(),
        }
    }

    /// Whether blobs of this repository need a manifest that passed: an enforced
    /// `verify` or `deny` rule (or `unmatched = "deny"`).
    fn guards_blobs(&self, rule: Option<&Rule>) -> bool {
        match rule {
            Some(rule) => rule.mode() == Mode::Enforce && rule.action() != Action::Allow,
            None => self.policy.unmatched() == pullgate_trust::Unmatched::Deny,
        }
    }

    /// A decision the mirror makes itself about `digest`, under `rule` (the one for the
    /// request's upstream and repository).
    fn decision(
        &self,
        rule: Option<&Rule>,
        outcome: Outcome,
        reason: &str,
        digest: &Digest,
    ) -> PolicyDecision {
        PolicyDecision {
            rule_index: rule.map(|r| r.index()),
            rule: rule.map_or_else(|| "trust.unmatched".to_owned(), |r| r.description()),
            outcome,
            reason: reason.to_owned(),
            keys: Vec::new(),
            scan: None,
            digest: Some(digest.clone()),
        }
    }

    fn count(&self, d: &PolicyDecision) {
        let row = d
            .rule_index
            .filter(|&i| i < self.policy.rules().len())
            .unwrap_or(self.policy.rules().len());
        if let Some(row) = self.decisions.get(row) {
            row[outcome_slot(d.outcome)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Mirror {
    /// Judge `m` (already access-checked under `target`) by the trust policy. `Ok(None)`
    /// when no `[trust]` is configured; `Err(PolicyDenied)` when an enforced rule denies.
    pub(crate) async fn judge(
        &self,
        target: &Target,
        m: &ManifestResponse,
    ) -> Result<Option<Arc<PolicyDecision>>, MirrorError> {
        let Some(trust) = &self.trust else {
            return Ok(None);
        };
        let upstream = target.upstream_id();
        // The rule is found once: a hit is on every manifest pull's path.
        let rule = trust.policy.rule_for(upstream, &target.repo);
        let verifies = rule.is_some_and(|r| r.action() == Action::Verify);
        let keys = trust.keys.current();
        let generation = keys.generation();
        let now = Instant::now();
        // (decision, until, whether `m.bytes` are the very bytes it was reached on)
        let cached = lock(&trust.verdicts)
            .get(generation, upstream, &target.repo, &m.digest)
            .filter(|r| now < r.until)
            .map(|r| {
                let same = r.verified.as_ref().is_some_and(|v| v.bytes == m.bytes);
                (Arc::clone(&r.decision), r.until, same)
            });
        // A signature vouches for a digest; the bytes served must be that digest's. The
        // store verified them once, on the way in: a cache file changed since (a tampered
        // disk) is caught here, where it matters, for every rule that verifies. Bytes equal
        // to those a cached verdict was reached on (which hashed to the digest then) need
        // no second hash.
        let untouched = cached.as_ref().is_some_and(|(_, _, same)| *same);
        if verifies && !untouched && !m.digest.matches(&m.bytes) {
            tracing::error!(
                upstream = target.upstream_name(),
                repository = %target.repo,
                digest = %m.digest,
                "a cached manifest does not hash to its digest; refused"
            );
            let d = trust.decision(
                rule,
                Outcome::Deny,
                "the manifest's bytes do not match its digest",
                &m.digest,
            );
            trust.count(&d);
            return Err(MirrorError::PolicyDenied(Arc::new(d)));
        }
        let cached = cached.map(|(d, until, _)| (d, until));
        // A verdict that allowed, from the cache, is the whole answer: what its manifest
        // allows was recorded when it was reached (the allowances outlive the verdict), and
        // lineage could only allow too. This is the hit path; it builds nothing.
        if let Some((d, _)) = cached.as_ref().filter(|(d, _)| d.outcome == Outcome::Allow) {
            trust.count(d);
            return Ok(Some(Arc::clone(d)));
        }
        // Lineage before a cached denial: a child denied when fetched directly (and cached
        // so) is still allowed once it is fetched through an index that passed.
        let lineage = verifies
            && lock(&trust.lineage)
                .get(&(upstream.clone(), target.repo.clone(), m.digest.clone()))
                .is_some_and(|a| a.valid(generation, now));
        let from_cache = cached.is_some() && !lineage;
        let (decision, until) = match cached {
            _ if lineage => {
                let d = trust.decision(
                    rule,
                    Outcome::Allow,
                    "a child of an index that passed",
                    &m.digest,
                );
                (Arc::new(d), None)
            }
            Some((d, until)) => (d, Some(until)),
            None => {
                let key = (
                    generation,
                    upstream.clone(),
                    target.repo.clone(),
                    m.digest.clone(),
                );
                // One verification per key at a time: a hundred clients pulling the same
                // new image share one gathering of its signatures and one evaluation.
                let (verdict, incomplete) = trust
                    .verifying
                    .run(key.clone(), || {
                        self.verify(trust, target, m, &keys, verifies)
                    })
                    .await?;
                let mut until = now + VERDICT_MAX_AGE;
                if let Some(at) = verdict.recheck_at {
                    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                    until = until.min(now + left);
                }
                let decision = Arc::new(PolicyDecision::of(&verdict, &m.digest));
                // Only verifications are worth remembering (allow, deny and unmatched cost
                // nothing to decide again), and not a denial for want of material the
                // upstream could not give.
                if verifies && (verdict.serves() || !incomplete) {
                    // Only bytes that hash to the digest get here (checked above, or
                    // fetched and verified by the store just now).
                    let remembered = Remembered {
                        decision: Arc::clone(&decision),
                        until,
                        verified: Verified::keep(&m.bytes, &trust.verified_bytes),
                    };
                    lock(&trust.verdicts).insert(key, remembered, now);
                }
                (decision, Some(until))
            }
        };
        trust.count(&decision);
        match decision.outcome {
            Outcome::Warn => tracing::warn!(
                upstream = target.upstream_name(),
                repository = %target.repo,
                digest = %m.digest,
                rule = %decision.rule,
                reason = %decision.reason,
                "trust policy would deny this manifest (warn mode): served"
            ),
            Outcome::Deny => tracing::info!(
                upstream = target.upstream_name(),
                repository = %target.repo,
                digest = %m.digest,
                rule = %decision.rule,
                reason = %decision.reason,
                "trust policy denied a manifest"
            ),
            Outcome::Allow => tracing::debug!(
                upstream = target.upstream_name(),
                repository = %target.repo,
                digest = %m.digest,
                rule = %decision.rule,
                keys = ?decision.keys,
                "trust policy allowed a manifest"
            ),
        }
        if !decision.serves() {
            return Err(MirrorError::PolicyDenied(decision));
        }
        // Only what passed outright is remembered (a warn-mode pass guards nothing), and
        // only where it is needed: allowances of unguarded repositories would push those of
        // enforced ones out of the bounded maps.
        if decision.outcome == Outcome::Allow && !from_cache {
            self.remember_passed(
                trust,
                target,
                rule,
                m,
                generation,
                until.unwrap_or(now + VERDICT_MAX_AGE),
            );
        }
        Ok(Some(decision))
    }

    /// Gather `m`'s signature artifacts (when the rule verifies) and evaluate the policy;
    /// also says whether some material could not be fetched.
    async fn verify(
        &self,
        trust: &Trust,
        target: &Target,
        m: &ManifestResponse,
        keys: &Keys,
        verifies: bool,
    ) -> Result<(Verdict, bool), MirrorError> {
        let upstream = target.upstream_id();
        let incomplete = AtomicBool::new(false);
        let artifacts = if verifies {
            // `.sig`/`.att` from the rule's signatures repository if it names one
            // (COSIGN_REPOSITORY), fetched there with that upstream's credentials.
            let elsewhere = match trust
                .policy
                .rule_for(upstream, &target.repo)
                .and_then(|r| r.signatures())
            {
                Some((host, repo)) => Some(self.route(Some(host), repo)?),
                None => None,
            };
            let tags_at = elsewhere.as_ref().unwrap_or(target);
            self.gather(target, tags_at, &m.digest, &incomplete).await?
        } else {
            Vec::new()
        };
        let verdict = trust.policy.evaluate(
            upstream,
            &target.repo,
            &Subject::new(&m.digest, &m.bytes),
            &artifacts,
            keys,
            SystemTime::now(),
        );
        Ok((verdict, incomplete.load(Ordering::Relaxed)))
    }

    /// A manifest passed: its blobs become servable in this repository, and an index's
    /// children are allowed by lineage for as long as the index's verdict lasts.
    fn remember_passed(
        &self,
        trust: &Trust,
        target: &Target,
        rule: Option<&Rule>,
        m: &ManifestResponse,
        generation: u64,
        lineage_until: Instant,
    ) {
        let Ok(info) = ManifestInfo::parse(&m.bytes, Some(&m.media_type)) else {
            return;
        };
        let upstream = target.upstream_id();
        if media_types::is_index(&info.media_type) {
            if !rule.is_some_and(|r| r.action() == Action::Verify) {
                return;
            }
            let mut lineage = lock(&trust.lineage);
            for child in &info.descriptors {
                lineage.insert(
                    (upstream.clone(), target.repo.clone(), child.digest.clone()),
                    Allowance {
                        generation,
                        until: lineage_until,
                    },
                );
            }
        } else {
            if !trust.guards_blobs(rule) {
                return;
            }
            let until = Instant::now() + BLOB_ALLOWANCE;
            let mut blobs = lock(&trust.blobs);
            for blob in &info.descriptors {
                blobs.insert(
                    (upstream.clone(), target.repo.clone(), blob.digest.clone()),
                    Allowance { generation, until },
                );
            }
        }
    }

    /// In an enforced repository, may this blob be served? Only if a manifest that passed
    /// there (under the current keys) references it.
    pub(crate) fn check_blob(&self, target: &Target, digest: &Digest) -> Result<(), MirrorError> {
        let Some(trust) = &self.trust else {
            return Ok(());
        };
        let upstream = target.upstream_id();
        let rule = trust.policy.rule_for(upstream, &target.repo);
        if !trust.guards_blobs(rule) {
            return Ok(());
        }
        let generation = trust.keys.current().generation();
        let allowed = lock(&trust.blobs)
            .get(&(upstream.clone(), target.repo.clone(), digest.clone()))
            .is_some_and(|a| a.valid(generation, Instant::now()));
        if allowed {
            return Ok(());
        }
        Err(MirrorError::PolicyDenied(Arc::new(trust.decision(
            rule,
            Outcome::Deny,
            "no manifest that passed the policy references this blob",
            digest,
        ))))
    }

    /// Policy decisions since start by (rule label, outcome), for `/metrics`.
    pub fn policy_decisions(&self) -> Vec<(String, &'static str, u64)> {
        match &self.trust {
            None => Vec::new(),
            Some(t) => {
                let rules = t.policy.rules().len();
                let mut out = Vec::new();
                for (row, counts) in t.decisions.iter().enumerate() {
                    let label = if row < rules {
                        row.to_string()
                    } else {
                        "unmatched".to_owned()
                    };
                    for (outcome, n) in OUTCOMES.iter().zip(counts) {
                        let n = n.load(Ordering::Relaxed);
                        if n > 0 {
                            out.push((label.clone(), outcome.as_str(), n));
                        }
                    }
                }
                out
            }
        }
    }

    /// The configured rules' metrics labels (their indexes, then `unmatched`), so every
    /// series exists from the start.
    pub fn policy_rule_labels(&self) -> Vec<String> {
        match &self.trust {
            None => Vec::new(),
            Some(t) => (0..t.policy.rules().len())
                .map(|i| i.to_string())
                .chain(["unmatched".to_owned()])
                .collect(),
        }
    }

    /// Blob allowances remembered now.
    pub fn policy_allowed_blobs(&self) -> usize {
        self.trust.as_ref().map_or(0, |t| lock(&t.blobs).len())
    }

    /// Every signature artifact of `digest`, through the cache: the `.sig`/`.att` tags in
    /// `tags_at` (the image's repository, or the rule's signatures repository), bundle
    /// referrers in the image's.
    /// `incomplete` is set when some material could not be fetched (upstream down, not
    /// cached).
    async fn gather(
        &self,
        target: &Target,
        tags_at: &Target,
        digest: &Digest,
        incomplete: &AtomicBool,
    ) -> Result<Vec<Artifact>, MirrorError> {
        let mut out = Vec::new();
        let mut budget = MAX_ARTIFACT_BYTES;
        for suffix in [".sig", ".att"] {
            let Some(m) = self
                .artifact_manifest(
                    tags_at,
                    &format!("sha256-{}{suffix}", digest.hex()),
                    incomplete,
                )
                .await?
            else {
                continue;
            };
            let Ok(doc) = serde_json::from_slice::<ArtifactManifest>(&m.bytes) else {
                continue;
            };
            for layer in doc.layers.into_iter().take(MAX_ARTIFACT_LAYERS) {
                if out.len() >= pullgate_trust::MAX_ARTIFACTS {
                    return Ok(out);
                }
                let Some(bytes) = self.artifact_layer(tags_at, &layer, &mut budget).await? else {
                    continue;
                };
                if let Some(a) = Artifact::from_layer(&layer.media_type, bytes, layer.annotations) {
                    out.push(a);
                }
            }
        }
        for referrer in self.bundle_referrers(target, digest, incomplete).await? {
            if out.len() >= pullgate_trust::MAX_ARTIFACTS {
                break;
            }
            let Some(m) = self.internal_manifest_by_digest(target, &referrer).await? else {
                continue;
            };
            let Ok(doc) = serde_json::from_slice::<ArtifactManifest>(&m.bytes) else {
                continue;
            };
            // cosign lists bundles in the fallback index with another artifactType: the
            // manifest's own says what it is.
            if !doc
                .artifact_type
                .as_deref()
                .is_some_and(|t| media::BUNDLES.contains(&t))
            {
                continue;
            }
            for layer in doc.layers.into_iter().take(MAX_ARTIFACT_LAYERS) {
                if !media::BUNDLES.contains(&layer.media_type.as_str()) {
                    continue;
                }
                if let Some(bytes) = self.artifact_layer(target, &layer, &mut budget).await? {
                    out.push(Artifact::Bundle { bundle: bytes });
                }
            }
        }
        Ok(out)
    }

    /// A signature tag's manifest through the internal tag path; `None` if there is none.
    async fn artifact_manifest(
        &self,
        target: &Target,
        tag: &str,
        incomplete: &AtomicBool,
    ) -> Result<Option<ManifestResponse>, MirrorError> {
        let Ok(tag) = Tag::parse(tag) else {
            return Ok(None);
        };
        match self.artifact_tag(target, &tag).await {
            Ok(m) => Ok(Some(m)),
            Err(MirrorError::ManifestUnknown(_) | MirrorError::NameUnknown(_)) => Ok(None),
            // Material the upstream cannot be asked for and the cache does not hold is
            // material we do not have: missing material can only deny, never allow. The
            // verdict is then not cached, so it is judged again once the upstream is back.
            Err(e) if e.allows_stale() => {
                tracing::debug!(
                    upstream = target.upstream_name(),
                    repository = %target.repo,
                    %tag,
                    error = %e,
                    "signature tag unavailable upstream and not cached"
                );
                incomplete.store(true, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn internal_manifest_by_digest(
        &self,
        target: &Target,
        digest: &Digest,
    ) -> Result<Option<ManifestResponse>, MirrorError> {
        match self.manifest_by_digest(target, digest).await {
            Ok(m) => Ok(Some(m)),
            Err(MirrorError::ManifestUnknown(_) | MirrorError::NameUnknown(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The digests of bundle referrers of `digest`: from the referrers API if the
    /// upstream answers it, else from the tag-schema fallback index (through the cache).
    async fn bundle_referrers(
        &self,
        target: &Target,
        digest: &Digest,
        incomplete: &AtomicBool,
    ) -> Result<Vec<Digest>, MirrorError> {
        let upstream = target.upstream_id();
        let known_without = self.trust.as_ref().is_some_and(|t| {
            lock(&t.no_referrers_api)
                .get(upstream)
                .is_some_and(|until| Instant::now() < *until)
        });
        let listed = if known_without {
            None
        } else {
            match target
                .upstream
                .get_passthrough(
                    &target.repo,
                    &format!("referrers/{digest}"),
                    Some(media_types::OCI_INDEX),
                )
                .await
            {
                Ok(p) if p.status == 200 => Some(p.body),
                // No API (Distribution 2.8 says 404): remembered for a while, so each
                // verification costs one round trip less.
                Ok(p) if p.status == 404 => {
                    self.note_no_referrers_api(upstream);
                    None
                }
                Err(pullgate_upstream::UpstreamError::NotFound) => {
                    self.note_no_referrers_api(upstream);
                    None
                }
                // Down, or refusing: the fallback tag, which the cache may hold.
                _ => None,
            }
        };
        let body = match listed {
            Some(b) => b,
            None => match self
                .artifact_manifest(target, &format!("sha256-{}", digest.hex()), incomplete)
                .await?
            {
                Some(m) => m.bytes,
                None => return Ok(Vec::new()),
            },
        };
        let Ok(index) = serde_json::from_slice::<ReferrersIndex>(&body) else {
            return Ok(Vec::new());
        };
        Ok(index
            .manifests
            .into_iter()
            .filter_map(|d| Digest::parse(&d.digest).ok())
            .take(MAX_REFERRERS)
            .collect())
    }

    fn note_no_referrers_api(&self, upstream: &UpstreamId) {
        if let Some(t) = &self.trust {
            // One entry per configured upstream at most: bounded by the configuration.
            lock(&t.no_referrers_api)
                .insert(upstream.clone(), Instant::now() + NO_REFERRERS_API_FOR);
        }
    }

    /// A signature layer's bytes through the internal blob path (cached, access-checked,
    /// never judged), if it is small enough to be signature material and fits what is
    /// left of this verification's `budget` (which it then uses up).
    async fn artifact_layer(
        &self,
        target: &Target,
        layer: &ArtifactLayer,
        budget: &mut u64,
    ) -> Result<Option<Bytes>, MirrorError> {
        let limit = MAX_ARTIFACT_LAYER.min(*budget);
        if layer.size > limit {
            return Ok(None);
        }
        let Ok(digest) = Digest::parse(&layer.digest) else {
            return Ok(None);
        };
        let client = ClientId::User(TRUST_CLIENT.to_owned());
        let resp = match self
            .blob_unjudged(target, &digest, None, false, &client)
            .await
        {
            Ok(r) => r,
            Err(MirrorError::BlobUnknown) => return Ok(None),
            Err(e) => return Err(e),
        };
        if resp.size > limit {
            return Ok(None);
        }
        let Some(mut body) = resp.body else {
            return Ok(None);
        };
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            if (buf.len() + chunk.len()) as u64 > limit {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk);
        }
        *budget -= buf.len() as u64;
        Ok(Some(buf.freeze()))
    }
}

/// The parts of a signature manifest read here.
#[derive(Deserialize)]
struct ArtifactManifest {
    #[serde(default, rename = "artifactType")]
    artifact_type: Option<String>,
    #[serde(default)]
    layers: Vec<ArtifactLayer>,
}

#[derive(Deserialize)]
struct ArtifactLayer {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ReferrersIndex {
    #[serde(default)]
    manifests: Vec<ReferrerDescriptor>,
}

#[derive(Deserialize)]
struct ReferrerDescriptor {
    digest: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remembered(
        reason: &str,
        until: Instant,
        bytes: &[u8],
        budget: &Arc<AtomicUsize>,
    ) -> Remembered {
        Remembered {
            decision: Arc::new(PolicyDecision {
                rule_index: Some(0),
                rule: "trust rule 1 (docker.io/team/**)".to_owned(),
                outcome: Outcome::Allow,
                reason: reason.to_owned(),
                keys: Vec::new(),
                scan: None,
                digest: None,
            }),
            until,
            verified: Verified::keep(&Bytes::copy_from_slice(bytes), budget),
        }
    }

    #[test]
    fn verdicts_are_found_by_generation_upstream_and_repository_and_bounded_per_digest() {
        let budget = Arc::new(AtomicUsize::new(0));
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let up = UpstreamId::parse("docker.io").expect("upstream");
        let other_up = UpstreamId::parse("ghcr.io").expect("upstream");
        let repo = |i: usize| RepoName::parse(&format!("team/app{i}")).expect("repo");
        let digest = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).expect("digest");
        let mut v = Verdicts::new();
        v.insert(
            (1, up.clone(), repo(0), digest.clone()),
            remembered("a", later, b"xy", &budget),
            now,
        );
        let found = |v: &Verdicts, g, u: &UpstreamId, r: &RepoName| {
            v.get(g, u, r, &digest).map(|r| r.decision.reason.clone())
        };
        assert_eq!(found(&v, 1, &up, &repo(0)).as_deref(), Some("a"));
        assert_eq!(found(&v, 2, &up, &repo(0)), None, "another keys generation");
        assert_eq!(found(&v, 1, &other_up, &repo(0)), None, "another upstream");
        assert_eq!(found(&v, 1, &up, &repo(1)), None, "another repository");
        // The same (upstream, repository) again replaces its entry.
        v.insert(
            (1, up.clone(), repo(0), digest.clone()),
            remembered("b", later, b"xy", &budget),
            now,
        );
        assert_eq!(found(&v, 1, &up, &repo(0)).as_deref(), Some("b"));
        assert_eq!(
            budget.load(Ordering::Relaxed),
            2,
            "the replaced copy gave its bytes back"
        );
        // Past the per-digest bound, the oldest repository goes first.
        for i in 1..=MAX_VERDICTS_PER_DIGEST {
            v.insert(
                (1, up.clone(), repo(i), digest.clone()),
                remembered("c", later, b"xy", &budget),
                now,
            );
        }
        assert_eq!(found(&v, 1, &up, &repo(0)), None);
        assert_eq!(
            found(&v, 1, &up, &repo(MAX_VERDICTS_PER_DIGEST)).as_deref(),
            Some("c")
        );
        assert_eq!(budget.load(Ordering::Relaxed), 2 * MAX_VERDICTS_PER_DIGEST);
        // A new keys generation drops the old generation's entries of that digest.
        v.insert(
            (2, up.clone(), repo(0), digest.clone()),
            remembered("d", later, b"xy", &budget),
            now,
        );
        assert_eq!(found(&v, 1, &up, &repo(1)), None);
        assert_eq!(found(&v, 2, &up, &repo(0)).as_deref(), Some("d"));
        assert_eq!(budget.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn verified_copies_stay_within_their_budget() {
        let budget = Arc::new(AtomicUsize::new(MAX_VERIFIED_BYTES - 3));
        let big = Bytes::from_static(b"four");
        assert!(Verified::keep(&big, &budget).is_none());
        assert_eq!(budget.load(Ordering::Relaxed), MAX_VERIFIED_BYTES - 3);
        let kept = Verified::keep(&Bytes::from_static(b"abc"), &budget);
        assert!(kept.is_some());
        assert_eq!(budget.load(Ordering::Relaxed), MAX_VERIFIED_BYTES);
        drop(kept);
        assert_eq!(budget.load(Ordering::Relaxed), MAX_VERIFIED_BYTES - 3);
    }

    #[test]
    fn decisions_read_as_the_403_message_and_label_their_rule_by_index() {
        let d = |index, outcome, reason: &str| PolicyDecision {
            rule_index: index,
            rule: index.map_or("trust.unmatched".to_owned(), |i: usize| {
                format!("trust rule {} (docker.io/team/**)", i + 1)
            }),
            outcome,
            reason: reason.to_owned(),
            keys: Vec::new(),
            scan: None,
            digest: None,
        };
        let cases = [
            (
                d(Some(0), Outcome::Deny, "no signature"),
                "denied by trust rule 1 (docker.io/team/**): no signature",
                "0",
            ),
            (
                d(Some(2), Outcome::Warn, "signed by an unknown key"),
                "would be denied (warn only) by trust rule 3 (docker.io/team/**): signed by an unknown key",
                "2",
            ),
            (
                d(None, Outcome::Allow, "no rule matched"),
                "allowed by trust.unmatched: no rule matched",
                "unmatched",
            ),
        ];
        for (decision, text, label) in cases {
            assert_eq!(decision.to_string(), text);
            assert_eq!(decision.rule_label(), label);
        }
    }

    #[test]
    fn bounded_forgets_the_oldest_and_refreshes_on_reinsert() {
        let mut b = Bounded::new(3);
        for i in 0..3 {
            b.insert(i, i);
        }
        b.insert(0, 10); // refresh 0: 1 is now the oldest
        b.insert(3, 3);
        assert_eq!(b.len(), 3);
        assert!(b.get(&1).is_none());
        assert_eq!(b.get(&0), Some(&10));
        for i in 0..1000 {
            b.insert(4, i);
        }
        assert!(b.order.len() <= 6, "{}", b.order.len());
        assert_eq!(b.get(&4), Some(&999));
    }
}
