//! Patterns over `<upstream>/<repository>` (the `[[auth.rule]]` syntax) and over
//! `<upstream>/<repository>:<tag>` (the `[[cache.tag_rule]]` syntax), matched one way
//! everywhere: `*` inside a component matches any run of characters of that component, a
//! whole `**` component matches any number of components, and the upstream part is a host
//! (Docker Hub's aliases fold; `*.example.com` matches one label).

use std::borrow::Cow;

use crate::registry::{is_docker_hub, DOCKER_HUB};

// These run on every request (auth rules, trust rules, tag rules), so they borrow and
// split in place rather than allocate.

/// [`crate::canonical_host`] without an allocation when the host already is canonical.
fn canonical(host: &str) -> Cow<'_, str> {
    if is_docker_hub(host) {
        Cow::Borrowed(DOCKER_HUB)
    } else if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Does a pattern host (possibly `*.example.com`) name `host`?
pub fn host_matches(pattern_host: &str, host: &str) -> bool {
    let (key, host) = (canonical(pattern_host), canonical(host));
    if key == host {
        return true;
    }
    match (key.strip_prefix("*."), host.split_once('.')) {
        (Some(rest), Some((label, host_rest))) => !label.is_empty() && rest == host_rest,
        _ => false,
    }
}

/// A repository pattern against `<upstream>/<repo>`.
pub fn repo_pattern_matches(pattern: &str, upstream: &str, repo: &str) -> bool {
    let (p_upstream, p_rest) = pattern.split_once('/').unwrap_or((pattern, ""));
    if !host_matches(p_upstream, upstream) {
        return false;
    }
    components_match(p_rest, Some(repo))
}

/// The pattern's next component and the rest; empty components are not components.
fn next_pattern(pat: &str) -> Option<(&str, &str)> {
    let pat = pat.trim_start_matches('/');
    if pat.is_empty() {
        return None;
    }
    Some(pat.split_once('/').unwrap_or((pat, "")))
}

/// The name's next component and the rest (`None`: no components left).
fn next_name(name: Option<&str>) -> Option<(&str, Option<&str>)> {
    let name = name?;
    Some(match name.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    })
}

fn components_match(pat: &str, name: Option<&str>) -> bool {
    match next_pattern(pat) {
        None => name.is_none(),
        Some(("**", rest)) => {
            let mut at = name;
            loop {
                if components_match(rest, at) {
                    return true;
                }
                match next_name(at) {
                    Some((_, after)) => at = after,
                    None => return false,
                }
            }
        }
        Some((p, rest)) => match next_name(name) {
            Some((n, name_rest)) => glob(p, n) && components_match(rest, name_rest),
            None => false,
        },
    }
}

/// `*` matches any run (possibly empty) of `text`; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let Some((first, tail)) = pattern.split_once('*') else {
        return pattern == text;
    };
    // `first*middle*…*last`: the middles are what lies between the first and last `*`.
    let (middles, last) = match tail.rsplit_once('*') {
        Some((middles, last)) => (Some(middles), last),
        None => (None, tail),
    };
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in middles.into_iter().flat_map(|m| m.split('*')) {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// `<upstream>/<repository>[:<tag glob>]`, e.g. `docker.io/library/*:v*`. Without a tag
/// part, every tag matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePattern {
    text: String,
    repo: String,
    tag: String,
}

/// Why a text is not an [`ImagePattern`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("{0:?} must be <upstream>/<repository>[:<tag>], e.g. \"docker.io/library/*:v*\"")]
    Shape(String),
    #[error("{0:?} is longer than {MAX_PATTERN_LEN} characters")]
    TooLong(String),
    #[error("{0:?}: a tag pattern has only letters, digits, '_', '.', '-' and '*'")]
    Tag(String),
}

/// Patterns come from the configuration; this only keeps a typo from being a novel.
pub const MAX_PATTERN_LEN: usize = 512;

impl ImagePattern {
    pub fn parse(text: &str) -> Result<ImagePattern, PatternError> {
        if text.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong(text.chars().take(64).collect()));
        }
        let shape = || PatternError::Shape(text.to_owned());
        // The tag is after the last ':' of the last component: the host may have a port.
        let (head, last) = text.rsplit_once('/').ok_or_else(shape)?;
        let (last, tag) = match last.split_once(':') {
            Some((name, tag)) => (name, tag),
            None => (last, "*"),
        };
        let tag_ok = !tag.is_empty()
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-*".contains(&b));
        if !tag_ok {
            return Err(PatternError::Tag(text.to_owned()));
        }
        let (host, _) = head.split_once('/').unwrap_or((head, ""));
        let bad = |s: &str| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == ':');
        if host.is_empty() || bad(last) || head.split('/').skip(1).any(bad) {
            return Err(shape());
        }
        Ok(ImagePattern {
            text: text.to_owned(),
            repo: format!("{head}/{last}"),
            tag: tag.to_owned(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The `<upstream>` part, as written.
    pub fn upstream(&self) -> &str {
        self.repo.split('/').next().unwrap_or("")
    }

    pub fn matches(&self, upstream: &str, repo: &str, tag: &str) -> bool {
        glob(&self.tag, tag) && repo_pattern_matches(&self.repo, upstream, repo)
    }
}

impl std::fmt::Display for ImagePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_patterns_match_upstream_repository_and_tag() {
        // (pattern, upstream, repository, tag, matches)
        let cases = [
            (
                "docker.io/library/*:v*",
                "docker.io",
                "library/alpine",
                "v1.2",
                true,
            ),
            (
                "docker.io/library/*:v*",
                "docker.io",
                "library/alpine",
                "3.20",
                false,
            ),
            (
                "docker.io/library/*:v*",
                "docker.io",
                "team/alpine",
                "v1",
                false,
            ),
            (
                "docker.io/library/*:v*",
                "docker.io",
                "library/a/b",
                "v1",
                false,
            ),
            // Docker Hub's aliases are one registry.
            (
                "index.docker.io/library/*:v*",
                "docker.io",
                "library/x",
                "v1",
                true,
            ),
            ("ghcr.io/org/**:*", "ghcr.io", "org/a/b/c", "latest", true),
            ("ghcr.io/org/**", "ghcr.io", "org/app", "anything", true),
            ("ghcr.io/org/app:1.*.*", "ghcr.io", "org/app", "1.2.3", true),
            ("ghcr.io/org/app:1.*.*", "ghcr.io", "org/app", "1.2", false),
            (
                "ghcr.io/org/app:v1.2.3",
                "ghcr.io",
                "org/app",
                "v1.2.3",
                true,
            ),
            (
                "ghcr.io/org/app:v1.2.3",
                "ghcr.io",
                "org/app",
                "v1.2.30",
                false,
            ),
            ("ghcr.io/org/app:v1", "quay.io", "org/app", "v1", false),
            // A host with a port keeps it; the tag is after the last component's ':'.
            (
                "127.0.0.1:5000/x/*:sha256-*",
                "127.0.0.1:5000",
                "x/y",
                "sha256-ab",
                true,
            ),
            ("127.0.0.1:5000/x/*", "127.0.0.1:5000", "x/y", "v1", true),
            ("127.0.0.1:5000/x/*", "127.0.0.1:5001", "x/y", "v1", false),
        ];
        for (p, u, r, t, want) in cases {
            let pat = ImagePattern::parse(p).unwrap_or_else(|e| panic!("{p}: {e}"));
            assert_eq!(pat.matches(u, r, t), want, "{p} against {u}/{r}:{t}");
        }
    }

    #[test]
    fn malformed_image_patterns_are_refused() {
        for bad in [
            "",
            "alpine",
            "docker.io/",
            "docker.io/library/alpine:",
            "docker.io/library/alpine:v 1",
            "docker.io/library/alpine:a/b",
            "/library/alpine",
            "docker.io//alpine",
            "docker.io/li:b/alpine",
        ] {
            assert!(ImagePattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("docker.io/{}", "a".repeat(MAX_PATTERN_LEN));
        assert!(matches!(
            ImagePattern::parse(&long),
            Err(PatternError::TooLong(_))
        ));
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "", true),
            ("v*", "v1", true),
            ("v*", "1v", false),
            ("*-rc*", "1.0-rc2", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
        ] {
            assert_eq!(glob(p, t), want, "{p} {t}");
        }
    }

    /// The allocating matchers these replaced, kept as the reference the borrowing ones
    /// must agree with.
    mod reference {
        pub fn glob(pattern: &str, text: &str) -> bool {
            let parts: Vec<&str> = pattern.split('*').collect();
            if parts.len() == 1 {
                return pattern == text;
            }
            let (first, last) = (parts[0], parts[parts.len() - 1]);
            if !text.starts_with(first)
                || text.len() < first.len() + last.len()
                || !text.ends_with(last)
            {
                return false;
            }
            let mut rest = &text[first.len()..text.len() - last.len()];
            for middle in &parts[1..parts.len() - 1] {
                match rest.find(middle) {
                    Some(i) => rest = &rest[i + middle.len()..],
                    None => return false,
                }
            }
            true
        }

        pub fn components(pattern: &str, repo: &str) -> bool {
            let pat: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
            let name: Vec<&str> = repo.split('/').collect();
            matches(&pat, &name)
        }

        fn matches(pat: &[&str], name: &[&str]) -> bool {
            match pat.split_first() {
                None => name.is_empty(),
                Some((&"**", rest)) => (0..=name.len()).any(|skip| matches(rest, &name[skip..])),
                Some((p, rest)) => match name.split_first() {
                    Some((n, name_rest)) => glob(p, n) && matches(rest, name_rest),
                    None => false,
                },
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn globs_agree_with_the_reference(pattern in "[ab*-]{0,8}", text in "[ab-]{0,8}") {
            proptest::prop_assert_eq!(glob(&pattern, &text), reference::glob(&pattern, &text));
        }

        #[test]
        fn repository_patterns_agree_with_the_reference(
            pattern in "(/|\\*\\*|a\\*|\\*|a|b){0,6}",
            repo in "[ab]{1,2}(/[ab]{1,2}){0,4}",
        ) {
            proptest::prop_assert_eq!(
                components_match(&pattern, Some(&repo)),
                reference::components(&pattern, &repo)
            );
        }
    }
}
