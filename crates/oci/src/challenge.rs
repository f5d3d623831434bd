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
    /// Parse the first challenge of a header value. One value may hold several challenges
    /// (`Bearer realm="a", Basic realm="b"`, RFC 9110 section 11.6.1); the rest are skipped.
    pub fn parse(header: &str) -> Result<Self, ChallengeError> {
        if header.len() > MAX_CHALLENGE_LEN {
            return Err(ChallengeError::TooLong);
        }
        let header = header.trim();
        let (scheme, mut rest) = split_token(header);
        if scheme.is_empty() {
            return Err(ChallengeError::NoScheme);
        }
        if rest.starts_with(',') {
            // A challenge without parameters, and another one after it.
            rest = "";
        } else if rest.starts_with(|c: char| c.is_ascii_whitespace()) {
            rest = rest.trim_start();
        } else if !rest.is_empty() {
            return Err(ChallengeError::NoScheme);
        }
        let mut params = Vec::new();
        let mut after_comma = false;
        while !rest.is_empty() {
            let (key, after_key) = split_token(rest);
            let Some(value_text) = after_key.trim_start().strip_prefix('=') else {
                // After a comma, a token not followed by `=` is the next challenge's scheme.
                if after_comma && !key.is_empty() {
                    break;
                }
                return Err(ChallengeError::BadParam);
            };
            if key.is_empty() {
                return Err(ChallengeError::BadParam);
            }
            rest = value_text.trim_start();
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
                after_comma = true;
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

/// The leading run of token characters, and what follows it.
fn split_token(s: &str) -> (&str, &str) {
    let end = s.bytes().position(|b| !is_token_byte(b)).unwrap_or(s.len());
    s.split_at(end)
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

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
    }

    /// Optional whitespace, as RFC 9110 allows around `=` and `,`.
    fn ows() -> impl Strategy<Value = String> {
        "[ \t]{0,2}"
    }

    /// One parameter as a sender may write it: quoted (escaping `"` and `\`, and any other
    /// character when `escape_all`), or bare when the value is a token and `bare` is set.
    fn render(key: &str, value: &str, bare: bool, escape_all: bool, ows: &str) -> String {
        if bare && !value.is_empty() && value.bytes().all(is_token_byte) {
            return format!("{key}{ows}={ows}{value}");
        }
        let mut out = format!("{key}{ows}={ows}\"");
        for c in value.chars() {
            if escape_all || c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }

    /// A well-formed challenge: its text, its scheme, and the value each key must yield
    /// (the first one given, as [`Challenge::param`] promises).
    fn challenge() -> impl Strategy<Value = (String, String, Vec<(String, String)>)> {
        let param = (
            token(),
            "\\PC{0,40}",
            any::<bool>(),
            any::<bool>(),
            ows(),
            ows(),
        );
        (token(), proptest::collection::vec(param, 0..=MAX_PARAMS)).prop_map(|(scheme, params)| {
            let mut text = scheme.clone();
            let mut expected: Vec<(String, String)> = Vec::new();
            for (i, (key, value, bare, escape_all, ows, sep)) in params.iter().enumerate() {
                text.push_str(if i == 0 { " " } else { "," });
                text.push_str(sep);
                text.push_str(&render(key, value, *bare, *escape_all, ows));
                if !expected.iter().any(|(k, _)| k.eq_ignore_ascii_case(key)) {
                    expected.push((key.clone(), value.clone()));
                }
            }
            (text, scheme, expected)
        })
    }

    /// Regression: a value holding several challenges used to be refused as a whole.
    #[test]
    fn first_of_several_challenges() {
        let c = Challenge::parse(r#"Bearer realm="https://a/token",service=a, Basic realm="b""#)
            .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://a/token"));
        assert_eq!(c.param("service"), Some("a"));
        let c = Challenge::parse(r#"Basic, Bearer realm="x""#).unwrap();
        assert_eq!((c.scheme.as_str(), c.param("realm")), ("basic", None));
        let c = Challenge::parse(r#"Basic realm=x , Negotiate"#).unwrap();
        assert_eq!(c.param("realm"), Some("x"));
        // Only after a comma can a new challenge start.
        assert_eq!(
            Challenge::parse(r#"Bearer Basic realm="x""#),
            Err(ChallengeError::BadParam)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,300}") {
            if let Ok(c) = Challenge::parse(&s) {
                prop_assert!(!c.scheme.is_empty() && c.scheme.bytes().all(is_token_byte));
                prop_assert_eq!(c.scheme.to_ascii_lowercase(), c.scheme.clone());
                prop_assert!(c.params.len() <= MAX_PARAMS);
            }
        }

        #[test]
        fn well_formed_challenges_parse((text, scheme, expected) in challenge()) {
            let c = Challenge::parse(&text).unwrap();
            prop_assert_eq!(c.scheme.clone(), scheme.to_ascii_lowercase());
            for (key, value) in &expected {
                prop_assert_eq!(c.param(key), Some(value.as_str()));
                prop_assert_eq!(c.param(&key.to_ascii_uppercase()), Some(value.as_str()));
            }
        }

        #[test]
        fn registry_challenges_yield_realm_service_scope(
            host in "[a-z0-9-]{1,20}(\\.[a-z0-9-]{1,10}){0,3}(:[0-9]{1,5})?",
            service in "[a-z0-9.:-]{1,30}",
            scopes in proptest::collection::vec("repository:[a-z0-9/._-]{1,30}:(pull|push|pull,push|\\*)", 1..4),
            order in Just([0usize, 1, 2]).prop_shuffle(),
            scheme in "(?i)bearer",
        ) {
            let realm = format!("https://{host}/token?x=\"y\"");
            let scope = scopes.join(" ");
            let values = [("realm", &realm), ("service", &service), ("scope", &scope)];
            let params: Vec<String> =
                order.iter().map(|&i| render(values[i].0, values[i].1, false, false, "")).collect();
            let c = Challenge::parse(&format!("{scheme} {}", params.join(","))).unwrap();
            prop_assert_eq!(c.scheme.as_str(), "bearer");
            prop_assert_eq!(c.param("realm"), Some(realm.as_str()));
            prop_assert_eq!(c.param("service"), Some(service.as_str()));
            prop_assert_eq!(c.param("scope"), Some(scope.as_str()));
        }

        #[test]
        fn only_the_first_of_several_challenges_is_read(
            (first, _, _) in challenge(),
            (second, _, _) in challenge(),
            sep in ows(),
        ) {
            let alone = Challenge::parse(&first).unwrap();
            prop_assert_eq!(Challenge::parse(&format!("{first},{sep}{second}")), Ok(alone));
        }

        #[test]
        fn too_many_params_or_bytes_are_refused(extra in 1usize..8, pad in 0usize..64) {
            let params: Vec<String> = (0..MAX_PARAMS + extra).map(|i| format!("k{i}=v")).collect();
            prop_assert_eq!(
                Challenge::parse(&format!("Bearer {}", params.join(","))),
                Err(ChallengeError::BadParam)
            );
            let long = format!("Bearer realm=\"{}\"", "x".repeat(MAX_CHALLENGE_LEN + pad));
            prop_assert_eq!(Challenge::parse(&long), Err(ChallengeError::TooLong));
        }
    }
}
