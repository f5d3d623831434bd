//! What a credential may pull: grants from secret keys, and rule patterns.

use pullgate_oci::host_matches;

/// Rule patterns are `pullgate-oci`'s, shared with the trust policy.
pub(crate) use pullgate_oci::pattern_matches;

use crate::Access;

/// What one secret entry's key grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Grant {
    /// Keyed by one of the mirror's own host names.
    All,
    /// Keyed by an upstream's host, optionally with a repository prefix.
    Upstream {
        upstream: String,
        prefix: Option<String>,
    },
}

impl Grant {
    pub(crate) fn allows(&self, access: &Access) -> bool {
        match self {
            Grant::All => true,
            Grant::Upstream { upstream, prefix } => {
                access.upstream.is(upstream)
                    && prefix
                        .as_deref()
                        .is_none_or(|p| under(access.repo.as_str(), p))
            }
        }
    }
}

/// `repo` is `prefix` or below it, by whole components (`team-a` does not cover `team-ab`).
fn under(repo: &str, prefix: &str) -> bool {
    repo == prefix
        || repo
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The grant of a secret entry keyed `host[/path]`, if its host is the mirror's or an
/// upstream's; a key naming anything else grants nothing here.
pub(crate) fn grant_for(
    host: &str,
    path: Option<&str>,
    mirror_hosts: &[String],
    upstreams: &[String],
) -> Option<Grant> {
    if mirror_hosts.iter().any(|m| host_matches(host, m)) {
        // `mirror.example.com/ghcr.io/team-a`: the path names an upstream, then a prefix.
        return match path {
            None => Some(Grant::All),
            Some(p) => {
                let (first, rest) = p.split_once('/').unwrap_or((p, ""));
                let upstream = upstreams.iter().find(|u| host_matches(first, u))?;
                Some(Grant::Upstream {
                    upstream: upstream.clone(),
                    prefix: (!rest.is_empty()).then(|| rest.to_owned()),
                })
            }
        };
    }
    let upstream = upstreams.iter().find(|u| host_matches(host, u))?;
    Some(Grant::Upstream {
        upstream: upstream.clone(),
        prefix: path.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(upstream: &str, repo: &str) -> Access {
        Access {
            upstream: pullgate_oci::UpstreamId::parse(upstream).unwrap(),
            repo: pullgate_oci::RepoName::parse(repo).unwrap(),
        }
    }

    #[test]
    fn grants_from_keys() {
        let mirror = vec!["mirror.example.com".to_owned(), "127.0.0.1:5000".to_owned()];
        let ups = vec![
            "docker.io".to_owned(),
            "ghcr.io".to_owned(),
            "127.0.0.1:5001".to_owned(),
        ];
        let g = |h: &str, p: Option<&str>| grant_for(h, p, &mirror, &ups);
        assert_eq!(g("mirror.example.com", None), Some(Grant::All));
        assert_eq!(g("127.0.0.1:5000", None), Some(Grant::All));
        assert_eq!(g("*.example.com", None), Some(Grant::All));
        let hub = g("docker.io", None).unwrap();
        assert!(hub.allows(&access("docker.io", "library/alpine")));
        assert!(!hub.allows(&access("ghcr.io", "library/alpine")));
        assert!(g("index.docker.io", None)
            .unwrap()
            .allows(&access("docker.io", "x/y")));
        let team = g("ghcr.io", Some("team-a")).unwrap();
        assert!(team.allows(&access("ghcr.io", "team-a")));
        assert!(team.allows(&access("ghcr.io", "team-a/app")));
        assert!(team.allows(&access("ghcr.io", "team-a/sub/app")));
        assert!(!team.allows(&access("ghcr.io", "team-ab/app")));
        assert!(!team.allows(&access("ghcr.io", "team-b/app")));
        let via_mirror = g("mirror.example.com", Some("ghcr.io/team-a")).unwrap();
        assert!(via_mirror.allows(&access("ghcr.io", "team-a/app")));
        assert!(!via_mirror.allows(&access("docker.io", "team-a/app")));
        assert_eq!(g("quay.io", None), None);
        assert_eq!(g("127.0.0.1:5002", None), None);
        assert!(g("127.0.0.1:5001", None)
            .unwrap()
            .allows(&access("127.0.0.1:5001", "a")));
    }
}
