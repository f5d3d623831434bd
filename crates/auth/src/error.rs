use std::path::PathBuf;
use std::time::Duration;

/// Why a request may not go on. Messages never carry a credential.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials where they are required, or credentials that do not check out.
    #[error("authentication required")]
    Unauthorized,
    /// Authenticated, but not allowed this repository.
    #[error("access denied")]
    Denied,
    /// Too many failed attempts from this address.
    #[error("too many failed attempts; retry in {retry_after:?}")]
    Throttled { retry_after: Duration },
    #[error("signing key {}: {reason}", path.display())]
    KeyFile { path: PathBuf, reason: String },
    #[error("generating a signing key: {0}")]
    KeyGeneration(String),
    /// A token could not be signed: the request fails rather than get an empty token.
    #[error("signing a token: {0}")]
    Signing(&'static str),
}
