//! `Challenge::parse` on raw header values, and on well-formed ones built from the input:
//! those must parse, and give back the scheme and every parameter as written.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use pullgate_fuzz::{is_token_byte, token};
use pullgate_oci::{Challenge, ChallengeError};

/// `Challenge::parse` refuses longer values, and reads at most this many parameters.
const MAX_LEN: usize = 8 * 1024;
const MAX_PARAMS: usize = 16;

#[derive(Debug, Arbitrary)]
enum Input {
    Raw(String),
    Built { first: Built, next: Option<Built> },
}

#[derive(Debug, Arbitrary)]
struct Built {
    scheme: String,
    params: Vec<Param>,
}

#[derive(Debug, Arbitrary)]
struct Param {
    key: String,
    value: String,
    bare: bool,
    escape_all: bool,
    space_around_eq: bool,
    space_after_comma: bool,
}

impl Built {
    /// The header text, and the value each key must give (the first one written).
    fn render(&self) -> (String, Vec<(String, String)>) {
        let mut text = token(&self.scheme, "Bearer");
        let mut expected: Vec<(String, String)> = Vec::new();
        for (i, p) in self.params.iter().take(MAX_PARAMS).enumerate() {
            text.push_str(if i == 0 { " " } else { "," });
            if p.space_after_comma {
                text.push(' ');
            }
            let key = token(&p.key, "k");
            text.push_str(&key);
            text.push_str(if p.space_around_eq { " = " } else { "=" });
            if p.bare && !p.value.is_empty() && p.value.bytes().all(is_token_byte) {
                text.push_str(&p.value);
            } else {
                text.push('"');
                for c in p.value.chars() {
                    if p.escape_all || c == '"' || c == '\\' {
                        text.push('\\');
                    }
                    text.push(c);
                }
                text.push('"');
            }
            if !expected.iter().any(|(k, _)| k.eq_ignore_ascii_case(&key)) {
                expected.push((key, p.value.clone()));
            }
        }
        (text, expected)
    }
}

fuzz_target!(|input: Input| match input {
    Input::Raw(s) => {
        if let Ok(c) = Challenge::parse(&s) {
            assert!(!c.scheme.is_empty() && c.scheme.bytes().all(is_token_byte));
            assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
            for name in ["realm", "service", "scope", "error"] {
                assert_eq!(c.param(name), c.param(&name.to_ascii_uppercase()));
            }
        }
    }
    Input::Built { first, next } => {
        let (text, expected) = first.render();
        let parsed = Challenge::parse(&text);
        if text.len() > MAX_LEN {
            assert_eq!(parsed, Err(ChallengeError::TooLong));
            return;
        }
        let c = parsed.unwrap_or_else(|e| panic!("{text:?} refused: {e}"));
        assert_eq!(
            c.scheme,
            token(&first.scheme, "Bearer").to_ascii_lowercase()
        );
        for (key, value) in &expected {
            assert_eq!(c.param(key), Some(value.as_str()), "{key} in {text:?}");
        }
        // Another challenge after it in the same value changes nothing.
        if let Some(next) = next {
            let both = format!("{text}, {}", next.render().0);
            if both.len() <= MAX_LEN {
                assert_eq!(Challenge::parse(&both).as_ref(), Ok(&c), "{both:?}");
            }
        }
    }
});
