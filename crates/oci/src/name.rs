use std::fmt;

use crate::digest::{Digest, DigestError};

/// Repository names longer than this are refused (Distribution's limit).
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A repository name such as `library/alpine` or `team/app/api`: any depth of path
/// components, each matching the distribution spec's component grammar.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

/// A tag such as `latest` or `1.2.3-alpine`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

/// What a manifest request names: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("repository name component {0:?} is invalid")]
    BadComponent(String),
    #[error("tag is invalid")]
    BadTag,
    #[error("invalid digest: {0}")]
    BadDigest(#[from] DigestError),
}

impl RepoName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        for component in s.split('/') {
            if !valid_component(component) {
                return Err(NameError::BadComponent(truncate(component)));
            }
        }
        Ok(RepoName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Path components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Whether the name has a single component (`alpine`, not `library/alpine`).
    pub fn is_single_component(&self) -> bool {
        !self.0.contains('/')
    }

    /// `prefix/self`, for Docker Hub's implicit `library/` namespace.
    pub fn with_prefix(&self, prefix: &str) -> Result<Self, NameError> {
        RepoName::parse(&format!("{prefix}/{}", self.0))
    }
}

/// Only for names already split by the router; component validation still applies.
fn valid_component(c: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

impl Tag {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let b = s.as_bytes();
        let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
        if b.is_empty()
            || b.len() > MAX_TAG_LEN
            || !word(b[0])
            || !b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
        {
            return Err(NameError::BadTag);
        }
        Ok(Tag(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Reference {
    /// A reference with a `:` is a digest, anything else a tag (tags cannot hold `:`).
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.contains(':') {
            Ok(Reference::Digest(Digest::parse(s)?))
        } else {
            Ok(Reference::Tag(Tag::parse(s)?))
        }
    }

    pub fn as_digest(&self) -> Option<&Digest> {
        match self {
            Reference::Digest(d) => Some(d),
            Reference::Tag(_) => None,
        }
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    )*};
}
display_as_str!(RepoName, Tag);

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => fmt::Display::fmt(t, f),
            Reference::Digest(d) => fmt::Display::fmt(d, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repo_names() {
        let good = [
            "alpine",
            "library/alpine",
            "a/b/c/d/e",
            "my-org/my_app",
            "a__b",
            "a---b",
            "a.b",
            "0/9",
        ];
        let bad = [
            "", "Alpine", "a//b", "/a", "a/", "-a", "a-", "a___b", "a..b", "a._b", "a b", "a/../b",
            "..", "a/.b", "é",
        ];
        for g in good {
            assert!(RepoName::parse(g).is_ok(), "{g}");
        }
        for b in bad {
            assert!(RepoName::parse(b).is_err(), "{b:?}");
        }
        assert_eq!(RepoName::parse(&"a".repeat(256)), Err(NameError::TooLong));
    }

    #[test]
    fn tags_and_references() {
        for good in ["latest", "1.2.3", "_x", "A-b.c_d"] {
            assert!(
                matches!(Reference::parse(good), Ok(Reference::Tag(_))),
                "{good}"
            );
        }
        for bad in ["", ".x", "-x", "a/b", "a b", &"a".repeat(129)] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
        let d = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(Reference::parse(&d), Ok(Reference::Digest(_))));
        assert!(matches!(
            Reference::parse("sha256:zz"),
            Err(NameError::BadDigest(_))
        ));
    }

    /// One component of the spec's grammar: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,3}"
    }

    /// A valid repository name: one to six components, within the length limit.
    fn name() -> impl Strategy<Value = String> {
        proptest::collection::vec(component(), 1..6)
            .prop_map(|c| c.join("/"))
            .prop_filter("within the length limit", |n| n.len() <= MAX_NAME_LEN)
    }

    fn tag() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
    }

    /// Edits that make any valid name invalid, wherever they land.
    fn break_name(name: &str, at: usize, how: u8, junk: char) -> String {
        let at = (0..=at.min(name.len()))
            .rev()
            .find(|&i| name.is_char_boundary(i))
            .unwrap_or(0);
        let (head, tail) = name.split_at(at);
        match how % 8 {
            // No separator run of dots is valid, and a component cannot start or end with one.
            0 => format!("{head}..{tail}"),
            1 => format!("{head}//{tail}"),
            2 => format!("{head}___{tail}"),
            3 => format!("{head}X{tail}"),
            4 => format!("/{name}"),
            5 => format!("{name}-"),
            6 => format!("{head}{junk}{tail}"),
            _ => format!("{name}/{}", "a".repeat(MAX_NAME_LEN)),
        }
    }

    proptest! {
        #[test]
        fn name_parse_total(s in "[a-zA-Z0-9._/-]{0,80}|\\PC{0,80}") {
            if let Ok(n) = RepoName::parse(&s) {
                prop_assert_eq!(n.as_str(), s.as_str());
                prop_assert!(s.len() <= MAX_NAME_LEN);
                prop_assert!(!s.contains("..") && !s.contains("//"));
                prop_assert!(!s.starts_with('/') && !s.ends_with('/'));
                prop_assert!(s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/')));
            }
        }

        #[test]
        fn valid_names_are_accepted_as_written(s in name()) {
            let n = RepoName::parse(&s).unwrap();
            prop_assert_eq!(n.to_string(), s.clone());
            prop_assert_eq!(n.components().collect::<Vec<_>>(), s.split('/').collect::<Vec<_>>());
            prop_assert_eq!(n.is_single_component(), !s.contains('/'));
            prop_assert_eq!(RepoName::parse(n.as_str()), Ok(n.clone()));
            let prefixed = n.with_prefix("library");
            prop_assert_eq!(prefixed.is_ok(), s.len() + "library/".len() <= MAX_NAME_LEN);
        }

        #[test]
        fn broken_names_are_rejected(
            s in name(),
            at in 0usize..300,
            how in any::<u8>(),
            junk in "[^a-z0-9._/-]",
        ) {
            let broken = break_name(&s, at, how, junk.chars().next().unwrap());
            prop_assert!(RepoName::parse(&broken).is_err(), "{broken:?} was accepted");
        }

        #[test]
        fn valid_tags_are_tags(t in tag()) {
            let parsed = Tag::parse(&t).unwrap();
            prop_assert_eq!(parsed.as_str(), t.as_str());
            let r = Reference::parse(&t).unwrap();
            prop_assert_eq!(&r, &Reference::Tag(parsed));
            prop_assert_eq!(r.to_string(), t.clone());
            prop_assert!(r.as_digest().is_none());
        }

        #[test]
        fn broken_tags_are_rejected(t in tag(), lead in "[.-]", junk in "[^A-Za-z0-9_.-]") {
            let overlong = format!("{t}{}", "a".repeat(MAX_TAG_LEN));
            for bad in [format!("{lead}{t}"), format!("{t}{junk}"), overlong] {
                prop_assert!(Tag::parse(&bad).is_err(), "{bad:?} was accepted");
            }
        }

        #[test]
        fn digests_are_digest_references(hex in "[0-9a-f]{64}") {
            let s = format!("sha256:{hex}");
            let r = Reference::parse(&s).unwrap();
            prop_assert_eq!(r.as_digest(), Some(&Digest::parse(&s).unwrap()));
            prop_assert_eq!(r.to_string(), s);
        }

        #[test]
        fn reference_parse_total(s in ".{0,150}") {
            match Reference::parse(&s) {
                // A colon makes a digest: a tag can never be mistaken for one, or the reverse.
                Ok(Reference::Tag(t)) => {
                    prop_assert!(!s.contains(':'));
                    prop_assert_eq!(t.as_str(), s.as_str());
                }
                Ok(Reference::Digest(d)) => prop_assert_eq!(d.to_string(), s),
                Err(_) => prop_assert!(Tag::parse(&s).is_err() && Digest::parse(&s).is_err()),
            }
        }
    }
}
