//! How long a tag (or a referrers answer) is served from the index before it is asked for
//! again: the first `[[cache.tag_rule]]` whose pattern matches decides, else the global
//! `tag_ttl`. A pure decision: no clock of its own, no I/O, so it is tested by table.

use std::time::{Duration, SystemTime};

use pullgate_oci::ImagePattern;

/// How long a cached tag is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagTtl {
    /// Revalidated upstream once it is this old.
    After(Duration),
    /// Pinned: once cached, never revalidated. A tag that moves upstream is not followed.
    Never,
}

/// One `[[cache.tag_rule]]`: patterns and what they get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRule {
    pub images: Vec<ImagePattern>,
    pub ttl: TagTtl,
}

/// The rules in order, and the global TTL for tags no rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPolicy {
    default: Duration,
    rules: Vec<TagRule>,
}

/// What decided a tag's TTL: a rule (its index and the pattern that matched) or the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    pub ttl: TagTtl,
    /// `(index into the rules, the matching pattern)`; `None`: the global `tag_ttl`.
    pub rule: Option<(usize, &'a ImagePattern)>,
}

impl TagPolicy {
    pub fn new(default: Duration, rules: Vec<TagRule>) -> TagPolicy {
        TagPolicy { default, rules }
    }

    /// Every tag gets `ttl`.
    pub fn uniform(ttl: Duration) -> TagPolicy {
        TagPolicy::new(ttl, Vec::new())
    }

    pub fn default_ttl(&self) -> Duration {
        self.default
    }

    pub fn rules(&self) -> &[TagRule] {
        &self.rules
    }

    /// The first rule with a pattern matching `<upstream>/<repo>:<tag>` decides.
    pub fn decide(&self, upstream: &str, repo: &str, tag: &str) -> Decision<'_> {
        for (i, rule) in self.rules.iter().enumerate() {
            if let Some(p) = rule.images.iter().find(|p| p.matches(upstream, repo, tag)) {
                return Decision {
                    ttl: rule.ttl,
                    rule: Some((i, p)),
                };
            }
        }
        Decision {
            ttl: TagTtl::After(self.default),
            rule: None,
        }
    }

    /// Whether a tag fetched (or revalidated) at `fetched_at` may be served without asking
    /// the upstream at `now`. A `fetched_at` in the future (the clock moved back) is not
    /// fresh under a TTL: asking once more is the safe side.
    pub fn is_fresh(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
        fetched_at: SystemTime,
        now: SystemTime,
    ) -> bool {
        match self.decide(upstream, repo, tag).ttl {
            TagTtl::Never => true,
            TagTtl::After(ttl) => now
                .duration_since(fetched_at)
                .map(|age| age < ttl)
                .unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(images: &[&str], ttl: TagTtl) -> TagRule {
        TagRule {
            images: images
                .iter()
                .map(|p| ImagePattern::parse(p).unwrap())
                .collect(),
            ttl,
        }
    }

    fn policy() -> TagPolicy {
        TagPolicy::new(
            Duration::from_secs(60),
            vec![
                rule(&["docker.io/library/*:v*"], TagTtl::Never),
                rule(
                    &["ghcr.io/org/app:latest", "ghcr.io/org/**:*-rc*"],
                    TagTtl::After(Duration::from_secs(10)),
                ),
                // Never reached for docker.io/library/*:v*: the first match wins.
                rule(&["docker.io/**"], TagTtl::After(Duration::from_secs(3600))),
            ],
        )
    }

    #[test]
    fn the_first_matching_rule_decides_else_the_global_ttl() {
        let p = policy();
        let s = Duration::from_secs;
        // (upstream, repository, tag, ttl, rule index)
        let cases = [
            (
                "docker.io",
                "library/alpine",
                "v3.20",
                TagTtl::Never,
                Some(0),
            ),
            (
                "docker.io",
                "library/alpine",
                "3.20",
                TagTtl::After(s(3600)),
                Some(2),
            ),
            (
                "docker.io",
                "team/app",
                "v1",
                TagTtl::After(s(3600)),
                Some(2),
            ),
            (
                "ghcr.io",
                "org/app",
                "latest",
                TagTtl::After(s(10)),
                Some(1),
            ),
            (
                "ghcr.io",
                "org/a/b",
                "2.0-rc1",
                TagTtl::After(s(10)),
                Some(1),
            ),
            ("ghcr.io", "org/app", "2.0", TagTtl::After(s(60)), None),
            (
                "quay.io",
                "library/alpine",
                "v1",
                TagTtl::After(s(60)),
                None,
            ),
        ];
        for (u, r, t, ttl, idx) in cases {
            let d = p.decide(u, r, t);
            assert_eq!(d.ttl, ttl, "{u}/{r}:{t}");
            assert_eq!(d.rule.map(|(i, _)| i), idx, "{u}/{r}:{t}");
        }
        let d = p.decide("ghcr.io", "org/a/b", "2.0-rc1");
        assert_eq!(
            d.rule.map(|(_, pat)| pat.as_str()),
            Some("ghcr.io/org/**:*-rc*")
        );
    }

    #[test]
    fn freshness_by_age_and_pinning() {
        let p = policy();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = Duration::from_secs;
        // (upstream, repository, tag, age (negative: fetched in the future), fresh)
        let cases: [(&str, &str, &str, i64, bool); 8] = [
            ("quay.io", "x/y", "1", 0, true),
            ("quay.io", "x/y", "1", 59, true),
            ("quay.io", "x/y", "1", 60, false),
            ("quay.io", "x/y", "1", -5, false),
            // Pinned: fresh however old, and whatever the clock did.
            ("docker.io", "library/alpine", "v1", 10 * 365 * 86_400, true),
            ("docker.io", "library/alpine", "v1", -5, true),
            ("ghcr.io", "org/app", "latest", 9, true),
            ("ghcr.io", "org/app", "latest", 10, false),
        ];
        for (u, r, t, age, fresh) in cases {
            let fetched = if age >= 0 {
                t0
            } else {
                t0 + s(age.unsigned_abs())
            };
            let now = if age >= 0 { t0 + s(age as u64) } else { t0 };
            assert_eq!(
                p.is_fresh(u, r, t, fetched, now),
                fresh,
                "{u}/{r}:{t} age {age}"
            );
        }
    }

    #[test]
    fn no_rules_is_the_global_ttl() {
        let p = TagPolicy::uniform(Duration::from_secs(5));
        let d = p.decide("docker.io", "library/alpine", "v1");
        assert_eq!(
            d,
            Decision {
                ttl: TagTtl::After(Duration::from_secs(5)),
                rule: None
            }
        );
    }
}
