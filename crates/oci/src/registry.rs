//! Registry host names: Docker Hub answers to several, and every crate that compares hosts
//! (credential keys, client grants, upstream routing) must fold them the same way.

/// The name every Docker Hub alias stands for.
pub const DOCKER_HUB: &str = "docker.io";

/// Docker writes Hub's key as `https://index.docker.io/v1/`, pulls go to
/// `registry-1.docker.io`, and users write `docker.io`: all are one registry.
const DOCKER_HUB_ALIASES: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// Whether `host` (no scheme, no path) is one of Docker Hub's names.
pub fn is_docker_hub(host: &str) -> bool {
    DOCKER_HUB_ALIASES
        .iter()
        .any(|alias| alias.eq_ignore_ascii_case(host))
}

/// `host` lowercased, with Docker Hub's aliases folded into [`DOCKER_HUB`].
pub fn canonical_host(host: &str) -> String {
    if is_docker_hub(host) {
        DOCKER_HUB.to_owned()
    } else {
        host.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_aliases_fold() {
        for alias in [
            "docker.io",
            "Index.Docker.io",
            "registry-1.docker.io",
            "registry.hub.docker.com",
        ] {
            assert!(is_docker_hub(alias));
            assert_eq!(canonical_host(alias), "docker.io");
        }
        assert!(!is_docker_hub("docker.io.evil.com"));
        assert_eq!(canonical_host("GHCR.io:443"), "ghcr.io:443");
    }
}
