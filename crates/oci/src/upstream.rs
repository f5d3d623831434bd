//! Who an upstream is, and what a token for one of its repositories is for.
//!
//! [`UpstreamId`] is the configured name of one upstream registry (`docker.io`, `ghcr.io`,
//! `127.0.0.1:5001`): the key under which the cache remembers where content came from, so
//! one upstream's word can never unlock another's content. [`PullScope`] is the one way a
//! `repository:<name>:pull` scope is written, for our own challenges and the upstream's.

use std::fmt;

use crate::name::RepoName;

/// Longest host name DNS allows; upstream names are host names (with an optional port).
const MAX_UPSTREAM_LEN: usize = 253;

/// The configured name of an upstream registry. Compared case-insensitively: it is
/// stored lowercased, so `Docker.io` and `docker.io` are one upstream.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamIdError {
    #[error("upstream name is empty")]
    Empty,
    #[error("upstream name is longer than {MAX_UPSTREAM_LEN} characters")]
    TooLong,
    #[error(
        "upstream name must be a registry host such as docker.io (letters, digits, '-', '.', ':')"
    )]
    BadChar,
}

impl UpstreamId {
    pub fn parse(s: &str) -> Result<Self, UpstreamIdError> {
        if s.is_empty() {
            return Err(UpstreamIdError::Empty);
        }
        if s.len() > MAX_UPSTREAM_LEN {
            return Err(UpstreamIdError::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
        {
            return Err(UpstreamIdError::BadChar);
        }
        Ok(UpstreamId(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `host` names this upstream (case-insensitively).
    pub fn is(&self, host: &str) -> bool {
        self.0.eq_ignore_ascii_case(host)
    }
}

impl fmt::Display for UpstreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UpstreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UpstreamId({})", self.0)
    }
}

impl AsRef<str> for UpstreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Pull access to one repository, as a token scope: `repository:<name>:pull`. The name is
/// whatever the token's audience calls the repository: the upstream's own name for the
/// upstream's tokens, `<upstream>/<repository>` for the mirror's.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PullScope(String);

impl PullScope {
    /// The scope an upstream's token needs for `repo`.
    pub fn repository(repo: &RepoName) -> Self {
        PullScope(format!("repository:{repo}:pull"))
    }

    /// The scope of the mirror's own token for `repo` reached through `upstream`.
    pub fn qualified(upstream: &UpstreamId, repo: &RepoName) -> Self {
        PullScope(format!("repository:{upstream}/{repo}:pull"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PullScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PullScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PullScope({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_ids_parse_and_fold_case() {
        let a = UpstreamId::parse("Docker.IO").unwrap();
        assert_eq!(a.as_str(), "docker.io");
        assert_eq!(a, UpstreamId::parse("docker.io").unwrap());
        assert!(a.is("DOCKER.io"));
        assert_eq!(
            UpstreamId::parse("127.0.0.1:5001").unwrap().as_str(),
            "127.0.0.1:5001"
        );
        assert_eq!(UpstreamId::parse(""), Err(UpstreamIdError::Empty));
        assert_eq!(UpstreamId::parse("a b"), Err(UpstreamIdError::BadChar));
        assert_eq!(UpstreamId::parse("a/b"), Err(UpstreamIdError::BadChar));
        assert_eq!(
            UpstreamId::parse(&"a".repeat(254)),
            Err(UpstreamIdError::TooLong)
        );
    }

    #[test]
    fn scopes_are_written_one_way() {
        let repo = RepoName::parse("library/alpine").unwrap();
        let up = UpstreamId::parse("127.0.0.1:5001").unwrap();
        assert_eq!(
            PullScope::repository(&repo).as_str(),
            "repository:library/alpine:pull"
        );
        assert_eq!(
            PullScope::qualified(&up, &repo).to_string(),
            "repository:127.0.0.1:5001/library/alpine:pull"
        );
    }
}
