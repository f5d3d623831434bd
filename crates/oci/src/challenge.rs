/// A parsed `WWW-Authenticate` challenge: `Bearer realm="…",service="…",scope="…"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lower-cased (`bearer`, `basic`).
    pub scheme: String,
    params: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("challenge has no scheme")]
    NoScheme,
    #[error("challenge parameter is malformed")]
    BadParam,
    #[error("challenge header is too long")]
    TooLong,
}

/// Upstreams send short challenges; anything longer is refused before parsing.
const MAX_CHALLENGE_LEN: usize = 8 * 1024;
const MAX_PARAMS: usize = 16;

impl Challenge {
    /// Parse the first challenge of a header value.
    pub fn parse(header: &str) -> Result<Self, ChallengeError> {
        if header.len() > MAX_CHALLENGE_LEN {
            return Err(ChallengeError::TooLong);
        }
        let header = header.trim();
        let (scheme, mut rest) = match header.find(|c: char| c.is_ascii_whitespace()) {
            Some(i) => (&header[..i], header[i..].trim_start()),
            None => (header, ""),
        };
        if scheme.is_empty() || !scheme.bytes().all(is_token_byte) {
            return Err(ChallengeError::NoScheme);
        }
        let mut params = Vec::new();
        while !rest.is_empty() {
            let eq = rest.find('=').ok_or(ChallengeError::BadParam)?;
            let key = rest[..eq].trim();
            if key.is_empty() || !key.bytes().all(is_token_byte) {
                return Err(ChallengeError::BadParam);
            }
            rest = rest[eq + 1..].trim_start();
            let value;
            if let Some(quoted) = rest.strip_prefix('"') {
                let mut out = String::new();
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some((_, e)) => out.push(e),
                            None => return Err(ChallengeError::BadParam),
                        },
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        c => out.push(c),
                    }
                }
                let end = end.ok_or(ChallengeError::BadParam)?;
                value = out;
                rest = &quoted[end + 1..];
            } else {
                let end = rest.find(',').unwrap_or(rest.len());
                value = rest[..end].trim().to_owned();
                rest = &rest[end..];
            }
            if params.len() >= MAX_PARAMS {
                return Err(ChallengeError::BadParam);
            }
            params.push((key.to_ascii_lowercase(), value));
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r.trim_start();
            } else if !rest.is_empty() {
                return Err(ChallengeError::BadParam);
            }
        }
        Ok(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }

    /// A parameter's value (names are case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn docker_hub_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("Service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/alpine:pull"));
    }

    #[test]
    fn table() {
        let cases: &[(&str, bool)] = &[
            (r#"Basic realm="x""#, true),
            ("Basic", true),
            (r#"Bearer realm=unquoted,service="a\"b""#, true),
            (r#"Bearer realm="open"#, false),
            ("", false),
            ("Bearer =x", false),
            (r#"Bearer realm="a" junk"#, false),
        ];
        for (input, ok) in cases {
            assert_eq!(Challenge::parse(input).is_ok(), *ok, "{input}");
        }
        assert_eq!(
            Challenge::parse(r#"Bearer service="a\"b""#)
                .unwrap()
                .param("service"),
            Some("a\"b")
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,300}") {
            let _ = Challenge::parse(&s);
        }
    }
}
