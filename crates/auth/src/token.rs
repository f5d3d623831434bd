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

/// The claims of a token we signed, still valid for `audience`; `None` otherwise.
pub(crate) fn verify(key: &[u8], token: &str, audience: &str) -> Option<Claims> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let (signing_input, sig) = token.rsplit_once('.')?;
    let (header, payload) = signing_input.split_once('.')?;
    let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
    let mut m = mac(key)?;
    m.update(signing_input.as_bytes());
    // Constant time, and before anything else is believed.
    m.verify_slice(&sig).ok()?;
    if URL_SAFE_NO_PAD.decode(header).ok()? != HEADER.as_bytes() {
        return None;
    }
    let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let now = now_secs();
    let valid = claims.aud == audience && now < claims.exp && now + SKEW >= claims.nbf;
    valid.then_some(claims)
}

pub(crate) fn lifetime_secs(ttl: Duration) -> u64 {
    ttl.as_secs().max(1)
}
