//! Which upstream a request is for, and the repository name as that upstream knows it.

use std::sync::Arc;

use pullgate_oci::RepoName;
use pullgate_upstream::Upstream;

use crate::error::MirrorError;

/// A request resolved to one configured upstream.
#[derive(Clone)]
pub struct Target {
    pub upstream: Arc<Upstream>,
    /// The repository as the upstream names it (Docker Hub's `library/` added).
    pub repo: RepoName,
    /// The name as the client asked for it, for rewriting upstream `Link` headers.
    pub client_name: RepoName,
}

impl Target {
    pub fn upstream_name(&self) -> &str {
        self.upstream.name()
    }

    pub fn upstream_id(&self) -> &pullgate_oci::UpstreamId {
        self.upstream.id()
    }
}

/// Picks an upstream, in order: containerd's `?ns=<host>`; a path prefix naming a
/// configured upstream (`ghcr.io/org/app`); the default (first) upstream.
///
/// Only configured upstreams are ever chosen: an unknown `ns`, or a first path component
/// that is a host no upstream is configured for, is `NAME_UNKNOWN`, so the mirror can never
/// be used as an open proxy.
pub(crate) fn route(
    upstreams: &[Arc<Upstream>],
    ns: Option<&str>,
    name: &RepoName,
) -> Result<Target, MirrorError> {
    let default = upstreams
        .first()
        .ok_or_else(|| MirrorError::NameUnknown("no upstream configured".into()))?;
    let by_host = |host: &str| {
        upstreams
            .iter()
            .find(|u| u.name().eq_ignore_ascii_case(host) || is_hub_alias(u, host))
    };

    let (upstream, repo) = if let Some(ns) = ns {
        let upstream = by_host(ns)
            .ok_or_else(|| MirrorError::NameUnknown(format!("no upstream for ns={ns}")))?;
        (upstream, name.clone())
    } else {
        let mut parts = name.as_str().splitn(2, '/');
        let first = parts.next().unwrap_or_default();
        match (parts.next(), by_host(first)) {
            // A first component can only be a host when it looks like one; `library/x`
            // must never match an upstream called `library`.
            (Some(rest), Some(u)) if looks_like_host(first) => {
                let repo =
                    RepoName::parse(rest).map_err(|e| MirrorError::NameUnknown(e.to_string()))?;
                (u, repo)
            }
            // A host nobody configured: refuse rather than ask the default upstream for
            // `quay.io/...`, which would answer for the wrong registry.
            (Some(_), None) if looks_like_host(first) => {
                return Err(MirrorError::NameUnknown(format!(
                    "no upstream is configured for {first}"
                )))
            }
            _ => (default, name.clone()),
        }
    };

    let repo = if upstream.is_docker_hub() && repo.is_single_component() {
        repo.with_prefix("library")
            .map_err(|e| MirrorError::NameUnknown(e.to_string()))?
    } else {
        repo
    };
    Ok(Target {
        upstream: Arc::clone(upstream),
        repo,
        client_name: name.clone(),
    })
}

fn looks_like_host(s: &str) -> bool {
    s.contains('.') || s.contains(':') || s == "localhost"
}

fn is_hub_alias(u: &Upstream, host: &str) -> bool {
    u.is_docker_hub() && pullgate_oci::is_docker_hub(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pullgate_upstream::UpstreamConfig;
    use std::time::Duration;

    fn upstream(name: &str, url: &str) -> Arc<Upstream> {
        Arc::new(
            Upstream::new(UpstreamConfig {
                name: pullgate_oci::UpstreamId::parse(name).unwrap(),
                url: url.into(),
                credentials: None,
                connect_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(1),
                user_agent: "test".into(),
                token_realms: Vec::new(),
                allow_private_redirects: None,
                max_blob_size: pullgate_upstream::DEFAULT_MAX_BLOB_SIZE,
            })
            .unwrap(),
        )
    }

    fn all() -> Vec<Arc<Upstream>> {
        vec![
            upstream("docker.io", "https://registry-1.docker.io"),
            upstream("ghcr.io", "https://ghcr.io"),
            upstream("registry.local:5000", "http://127.0.0.1:5001"),
        ]
    }

    fn go(ns: Option<&str>, name: &str) -> Result<(String, String), MirrorError> {
        let t = route(&all(), ns, &RepoName::parse(name).unwrap())?;
        assert_eq!(t.client_name.as_str(), name);
        Ok((t.upstream_name().to_owned(), t.repo.as_str().to_owned()))
    }

    fn ok(u: &str, r: &str) -> Result<(String, String), MirrorError> {
        Ok((u.to_owned(), r.to_owned()))
    }

    #[test]
    fn default_upstream_and_library_prefix() {
        assert_eq!(
            go(None, "alpine").ok(),
            ok("docker.io", "library/alpine").ok()
        );
        assert_eq!(
            go(None, "library/alpine").ok(),
            ok("docker.io", "library/alpine").ok()
        );
        assert_eq!(
            go(None, "bitnami/redis").ok(),
            ok("docker.io", "bitnami/redis").ok()
        );
        // `library` is not a host: never an upstream prefix.
        assert_eq!(go(None, "a/b/c").ok(), ok("docker.io", "a/b/c").ok());
    }

    #[test]
    fn ns_picks_a_configured_upstream_or_nothing() {
        assert_eq!(
            go(Some("ghcr.io"), "org/app").ok(),
            ok("ghcr.io", "org/app").ok()
        );
        assert_eq!(
            go(Some("docker.io"), "nginx").ok(),
            ok("docker.io", "library/nginx").ok()
        );
        assert_eq!(
            go(Some("index.docker.io"), "nginx").ok(),
            ok("docker.io", "library/nginx").ok()
        );
        assert_eq!(
            go(Some("registry.local:5000"), "team/app").ok(),
            ok("registry.local:5000", "team/app").ok()
        );
        // Not a single-component rewrite for other registries.
        assert_eq!(go(Some("ghcr.io"), "app").ok(), ok("ghcr.io", "app").ok());
        assert!(matches!(
            go(Some("quay.io"), "x/y"),
            Err(MirrorError::NameUnknown(_))
        ));
    }

    #[test]
    fn host_like_first_component_routes_by_prefix() {
        assert_eq!(
            go(None, "ghcr.io/org/app").ok(),
            ok("ghcr.io", "org/app").ok()
        );
        assert_eq!(
            go(None, "docker.io/alpine").ok(),
            ok("docker.io", "library/alpine").ok()
        );
        // A host nobody configured is refused, never asked of the default upstream.
        for name in ["quay.io/x/y", "localhost/x", "registry.other/team/app"] {
            assert!(
                matches!(go(None, name), Err(MirrorError::NameUnknown(_))),
                "{name}"
            );
        }
        // With ns, the path is the repository as is.
        assert_eq!(
            go(Some("ghcr.io"), "ghcr.io/org/app").ok(),
            ok("ghcr.io", "ghcr.io/org/app").ok()
        );
    }
}
