//! The crate's errors, each an enum to match on; none is ever classified by its message.

use std::io;
use std::path::{Path, PathBuf};

/// A public key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not PEM: {0}")]
    Pem(String),
    #[error("no PUBLIC KEY block")]
    NoPublicKey,
    #[error("malformed SubjectPublicKeyInfo")]
    Malformed,
    #[error("unsupported key algorithm {0} (ECDSA P-256/P-384, Ed25519 and RSA are)")]
    Unsupported(String),
}

/// A certificate or CA bundle that cannot be used, or a chain that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("not PEM: {0}")]
    Pem(String),
    #[error("no CERTIFICATE block")]
    NoCertificate,
    #[error("too many certificates (more than {0})")]
    TooMany(usize),
    #[error("malformed certificate")]
    Malformed,
    #[error("cannot use the certificate as a trust anchor: {0}")]
    Anchor(String),
    /// webpki's verdict on the chain, in its words (expired, unknown issuer, no code-signing
    /// EKU, …).
    #[error("the certificate chain does not verify: {0}")]
    Chain(String),
    #[error("the certificate is not for code signing (no extendedKeyUsage codeSigning)")]
    NotCodeSigning,
    #[error("the certificate's key: {0}")]
    Key(#[from] KeyError),
}

/// A configured key or CA path that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} holds no file ending in {extensions}, and not exactly one file", path.display())]
    NoFiles { path: PathBuf, extensions: String },
    #[error("{} holds more than {limit} files", path.display())]
    TooManyFiles { path: PathBuf, limit: usize },
    #[error("{} is larger than {limit} bytes", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{}: {source}", path.display())]
    Key { path: PathBuf, source: KeyError },
    #[error("{}: {source}", path.display())]
    Cert { path: PathBuf, source: CertError },
}

impl LoadError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        LoadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A `[trust]` configuration that does not validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "trust.key[{index}]: the name {name:?} is used twice (or is empty, or starts with \"ca:\")"
    )]
    KeyName { index: usize, name: String },
    #[error("trust.ca[{index}]: the name {name:?} is used twice (or is empty)")]
    CaName { index: usize, name: String },
    #[error("trust.rule[{rule}]: {problem}")]
    Rule { rule: usize, problem: RuleProblem },
}

/// What is wrong with one rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleProblem {
    #[error("`images` is empty")]
    NoImages,
    #[error("bad image pattern {0:?}: <upstream>/<repository pattern>, with * and **")]
    BadPattern(String),
    #[error("action = \"verify\" needs `signed_by`")]
    NoSigners,
    #[error("`{0}` only applies to action = \"verify\"")]
    NotVerify(&'static str),
    #[error("unknown key {0:?} (not in [[trust.key]])")]
    UnknownKey(String),
    #[error("unknown CA {0:?} (not in [[trust.ca]])")]
    UnknownCa(String),
    #[error("a \"ca:\" signer needs an `identity` with `san` or `san_regex`")]
    NoIdentity,
    #[error("`identity` sets both {0} and {0}_regex")]
    IdentityTwice(&'static str),
    #[error("threshold must be 1 to {max}, got {got}")]
    Threshold { got: u32, max: u32 },
    #[error("bad regex {pattern:?}: {reason}")]
    Regex { pattern: String, reason: String },
    #[error("bad duration {0:?} (e.g. \"7d\", \"36h\")")]
    Duration(String),
    #[error("bad expiry {0:?} for an allowed CVE (YYYY-MM-DD or RFC 3339)")]
    Expiry(String),
    #[error("bad signatures repository {0:?}: <upstream>/<repository>")]
    BadSignatures(String),
}
