//! Tokens this mirror issues: compact JWS with HS256 (RFC 7515/7519), the claims of the
//! Docker token spec. Written by hand because it is thirty lines over `hmac`, and a JWT
//! library would bring algorithms (and `alg` confusion) we do not want.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::AuthError;

/// Longest token accepted: ours are well under 2 KiB even with many scopes.
pub(crate) const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Tolerated clock difference between replicas for `nbf`.
const SKEW: u64 = 30;

/// The fixed header: the only algorithm we sign or accept.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    pub access: Vec<AccessClaim>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AccessClaim {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// HMAC accepts keys of any length, so this is `None` only in theory.
fn mac(key: &[u8]) -> Option<Hmac<Sha256>> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).ok()
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn sign(key: &[u8], claims: &Claims) -> Result<String, AuthError> {
    // A short key makes tokens anyone can forge; only a caller's bug passes one.
    if key.len() < crate::MIN_KEY_LEN {
        return Err(AuthError::Signing("the signing key is too short"));
    }
    let payload =
        serde_json::to_vec(claims).map_err(|_| AuthError::Signing("encoding the claims"))?;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mut m = mac(key).ok_or(AuthError::Signing("keying the MAC"))?;
    m.update(signing_input.as_bytes());
    let sig = m.finalize().into_bytes();
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// Why a presented token is not a valid one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not signed by us, malformed, or for another audience: possibly an attack.
    Invalid,
    /// Ours and for us, but outside its validity period (expired, or not yet valid by this
    /// replica's clock): a client that should log in again, not a guess.
    Expired,
}

/// The claims of a token we signed, valid now for `audience`.
pub(crate) fn verify(key: &[u8], token: &str, audience: &str) -> Result<Claims, TokenError> {
    let invalid = TokenError::Invalid;
    if token.len() > MAX_TOKEN_LEN {
        return Err(invalid);
    }
    let (signing_input, sig) = token.rsplit_once('.').ok_or(invalid)?;
    let (header, payload) = signing_input.split_once('.').ok_or(invalid)?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| invalid)?;
    let mut m = mac(key).ok_or(invalid)?;
    m.update(signing_input.as_bytes());
    // Constant time, and before anything else is believed.
    m.verify_slice(&sig).map_err(|_| invalid)?;
    if URL_SAFE_NO_PAD.decode(header).map_err(|_| invalid)? != HEADER.as_bytes() {
        return Err(invalid);
    }
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| invalid)?;
    if claims.aud != audience {
        return Err(invalid);
    }
    let now = now_secs();
    if now >= claims.exp || now + SKEW < claims.nbf {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

pub(crate) fn lifetime_secs(ttl: Duration) -> u64 {
    ttl.as_secs().max(1)
}
