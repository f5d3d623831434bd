//! Shared by the fuzz targets: the OCI distribution spec's own regular expressions, as an
//! independent second opinion on pullgate's hand-written parsers, and small input helpers.

use std::sync::LazyLock;

use regex::Regex;

/// The spec's repository name grammar (the length limit is checked separately).
pub static NAME: LazyLock<Regex> = LazyLock::new(|| {
    let component = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*";
    Regex::new(&format!("^{component}(?:/{component})*$")).unwrap()
});

/// The spec's tag grammar.
pub static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").unwrap());

/// Digests pullgate serves: the registered algorithms, lower-case hex of the right length.
pub static DIGEST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$").unwrap());

/// Longest repository name pullgate accepts (Distribution's limit).
pub const MAX_NAME_LEN: usize = 255;

/// RFC 9110 token characters.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `s` with everything but token characters dropped; `fallback` if nothing is left.
pub fn token(s: &str, fallback: &str) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii() && is_token_byte(*c as u8))
        .collect();
    if t.is_empty() {
        fallback.to_owned()
    } else {
        t
    }
}
