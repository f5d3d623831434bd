//! Repository patterns against `<upstream>/<repository>`, one syntax for every rule that
//! names images: the client access rules (`[[auth.rule]]`) and the trust policy
//! (`[[trust.rule]]`).

use crate::registry::canonical_host;

/// Does a key host (or a pattern's host, possibly `*.example.com`) name `host`?
pub fn host_matches(key_host: &str, host: &str) -> bool {
    let (key, host) = (canonical_host(key_host), canonical_host(host));
    if key == host {
        return true;
    }
    match (key.strip_prefix("*."), host.split_once('.')) {
        (Some(rest), Some((label, host_rest))) => !label.is_empty() && rest == host_rest,
        _ => false,
    }
}

/// A rule pattern against `<upstream>/<repo>`: `*` inside a component matches any run of
/// characters of that component, a whole `**` component matches any number of components.
pub fn pattern_matches(pattern: &str, upstream: &str, repo: &str) -> bool {
    let (p_upstream, p_rest) = pattern.split_once('/').unwrap_or((pattern, ""));
    if !host_matches(p_upstream, upstream) {
        return false;
    }
    let pat: Vec<&str> = p_rest.split('/').filter(|s| !s.is_empty()).collect();
    let name: Vec<&str> = repo.split('/').collect();
    components_match(&pat, &name)
}

fn components_match(pat: &[&str], name: &[&str]) -> bool {
    match pat.split_first() {
        None => name.is_empty(),
        Some((&"**", rest)) => (0..=name.len()).any(|skip| components_match(rest, &name[skip..])),
        Some((p, rest)) => match name.split_first() {
            Some((n, name_rest)) => glob(p, n) && components_match(rest, name_rest),
            None => false,
        },
    }
}

/// `*` matches any run (possibly empty) within one component.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_patterns() {
        let m = pattern_matches;
        assert!(m("docker.io/library/*", "docker.io", "library/alpine"));
        assert!(!m("docker.io/library/*", "docker.io", "library/a/b"));
        assert!(!m("docker.io/library/*", "ghcr.io", "library/alpine"));
        assert!(m("ghcr.io/team-a/**", "ghcr.io", "team-a/x/y/z"));
        assert!(m("ghcr.io/team-a/**", "ghcr.io", "team-a"));
        assert!(!m("ghcr.io/team-a/**", "ghcr.io", "team-ab/x"));
        assert!(m("ghcr.io/org/app", "ghcr.io", "org/app"));
        assert!(!m("ghcr.io/org/app", "ghcr.io", "org/app2"));
        assert!(m("127.0.0.1:5001/e2e/oth*", "127.0.0.1:5001", "e2e/other"));
        assert!(m("ghcr.io/**/app", "ghcr.io", "a/b/app"));
        assert!(m("ghcr.io/*-svc", "ghcr.io", "billing-svc"));
        assert!(!m("ghcr.io/*-svc", "ghcr.io", "billing-svc/x"));
        assert!(m("index.docker.io/library/*", "docker.io", "library/nginx"));
    }
}
