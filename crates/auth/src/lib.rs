//! Who a pullgate client is, and what it may pull.
//!
//! What it does: checks `Authorization` headers against the union of mounted
//! `kubernetes.io/dockerconfigjson` secrets (followed through kubelet's rotation by
//! [`SecretSource`]), in constant time; derives what each credential may pull from its
//! entry's registry key (the mirror's own host: everything; an upstream host: that upstream;
//! `host/path`: that repository prefix), narrowed by optional per-user [`Rule`]s; issues and
//! verifies the short-lived HS256 tokens of the Docker token flow; and limits guessing
//! (`throttle.rs`): failures counted per address, per user name, per pair of them and over
//! all clients, blocks that refuse unchecked only clients not known by a recent successful
//! login, so nobody's valid credential is refused over someone else's guesses. An expired
//! genuine token is no credential at all, not a failure.
//!
//! What it is not: no HTTP. The server asks [`Authenticator::authenticate`] and
//! [`Authenticator::authorize`] once per request, centrally, and turns [`AuthError`] into
//! 401/403/429.
//!
//! Secrets never leave this crate: not in errors, not in `Debug`, not in logs. A user name
//! is logged only when it names an entry: one that names none may be a password typed into
//! the wrong field.

mod error;
mod grants;
mod throttle;
mod token;

use std::fmt;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use pullgate_credentials::{Credential, SecretSource};
use pullgate_oci::{PullScope, RepoName, UpstreamId};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

pub use error::AuthError;
pub use throttle::ThrottleConfig;

use grants::{grant_for, pattern_matches, Grant};
use throttle::{Throttle, UserKey};
use token::TokenError;

/// Which challenge a 401 carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Basic,
    /// Docker token flow: `Bearer realm=<mirror>/token`.
    Token,
}

/// Extra restriction for one user: what they pull must match one of `patterns`
/// (`docker.io/library/*`, `ghcr.io/team-a/**`, exact names).
#[derive(Debug, Clone)]
pub struct Rule {
    pub user: String,
    pub patterns: Vec<String>,
}

/// What [`Authenticator`] enforces. `Debug` hides the signing key.
#[derive(Clone)]
pub struct AuthConfig {
    pub scheme: Scheme,
    /// Requests without credentials may pull anything.
    pub anonymous: bool,
    /// The mirror's own host names: an entry keyed by one grants every upstream.
    pub mirror_hosts: Vec<String>,
    /// Configured upstream names: an entry keyed by one grants that upstream.
    pub upstreams: Vec<String>,
    pub rules: Vec<Rule>,
    /// Token `aud` and challenge `service`.
    pub service: String,
    pub token_ttl: Duration,
    /// HS256 key; see [`load_or_generate_key`].
    pub signing_key: Vec<u8>,
    pub throttle: ThrottleConfig,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("scheme", &self.scheme)
            .field("anonymous", &self.anonymous)
            .field("mirror_hosts", &self.mirror_hosts)
            .field("upstreams", &self.upstreams)
            .field("rules", &self.rules)
            .field("service", &self.service)
            .field("token_ttl", &self.token_ttl)
            // Anyone holding the key can mint tokens for any repository.
            .field(
                "signing_key",
                &format_args!("<{} bytes>", self.signing_key.len()),
            )
            .field("throttle", &self.throttle)
            .finish()
    }
}

/// Pull `repo` (as the upstream names it) from the upstream `upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub upstream: UpstreamId,
    pub repo: RepoName,
}

impl Access {
    /// `<upstream>/<repo>`: the name our tokens and challenges give the repository.
    fn qualified(&self) -> String {
        format!("{}/{}", self.upstream, self.repo)
    }

    /// The scope of our challenge for this access.
    pub fn scope(&self) -> PullScope {
        PullScope::qualified(&self.upstream, &self.repo)
    }
}

/// An authenticated client.
#[derive(Clone)]
pub struct Principal {
    pub user: String,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// Basic credentials: the union of the matching entries' grants.
    Basic(Vec<Grant>),
    /// A token: exactly the `<upstream>/<repo>` names it carries.
    Token(Vec<String>),
}

impl Principal {
    /// Whether this client presented one of our tokens rather than a password.
    pub fn via_token(&self) -> bool {
        matches!(self.kind, Kind::Token(_))
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let via = match &self.kind {
            Kind::Basic(g) => format!("basic ({} grants)", g.len()),
            Kind::Token(a) => format!("token ({} repositories)", a.len()),
        };
        f.debug_struct("Principal")
            .field("user", &self.user)
            .field("via", &via)
            .finish()
    }
}

/// A token for the client. `Debug` hides the token itself.
pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
    /// RFC 3339, UTC.
    pub issued_at: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("issued_at", &self.issued_at)
            .finish()
    }
}

/// The challenge for Basic credentials (also the token endpoint's own).
pub const BASIC_CHALLENGE: &str = "Basic realm=\"pullgate\"";

/// `Basic` values longer than this are refused unread.
const MAX_BASIC_LEN: usize = 4096;

/// Largest signing key file read: keys are 32 to 64 bytes; more means a wrong mount.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Signing keys shorter than this are refused: HS256 wants 256 bits.
const MIN_KEY_LEN: usize = 32;

pub struct Authenticator {
    config: AuthConfig,
    secrets: Vec<SecretSource>,
    throttle: Throttle,
    failures: AtomicU64,
}

impl Authenticator {
    pub fn new(config: AuthConfig, secrets: Vec<SecretSource>) -> Self {
        Authenticator {
            throttle: Throttle::new(config.throttle.clone()),
            config,
            secrets,
            failures: AtomicU64::new(0),
        }
    }

    pub fn scheme(&self) -> Scheme {
        self.config.scheme
    }

    pub fn anonymous(&self) -> bool {
        self.config.anonymous
    }

    /// Who is asking, checked before anything else about the request.
    ///
    /// `Ok(None)`: no credentials (no header, or `Basic` with an empty user and password,
    /// which podman and skopeo send), or a token of ours that has expired: a plain 401 and
    /// a challenge, so the client logs in again; not a failure. A valid credential always
    /// passes, unless its own (address, user name) pair is blocked, or a block covers it and
    /// that pair has not logged in lately (see `throttle.rs`): then `Throttled`, unchecked.
    /// Wrong credentials count against `peer`, the user name and everyone, and are
    /// `Unauthorized`, or `Throttled` once a limit is reached.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        peer: IpAddr,
    ) -> Result<Option<Principal>, AuthError> {
        let Some(value) = authorization.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let Some(c) = decode_basic(rest) else {
                tracing::debug!(client = %peer, "malformed Basic credentials");
                return self.failed(peer, None);
            };
            if c.username.is_empty() && c.password.is_empty() {
                return Ok(None);
            }
            let user = user_key(&c.username);
            if let Some(retry_after) = self.throttle.gate(peer, &user) {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client = %peer, "login refused unchecked: too many failed logins");
                return Err(AuthError::Throttled { retry_after });
            }
            let (principal, user_known) = self.check_basic(&c.username, &c.password);
            if let Some(p) = principal {
                self.throttle.succeed(peer, &user);
                return Ok(Some(p));
            }
            if user_known {
                // Debug-quoted so a crafted name cannot forge log lines; never the password.
                tracing::debug!(client = %peer, user = ?c.username, "wrong password");
            } else {
                // No name: one that matches no entry may be a password in the wrong field.
                tracing::debug!(client = %peer, "unknown user name or wrong password");
            }
            return self.failed(peer, Some(&user));
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            // Never the token itself in a log: it is a working credential until it expires.
            return match self.check_token(rest) {
                Ok(p) => Ok(Some(p)),
                Err(TokenError::Expired) => {
                    tracing::debug!(client = %peer, "expired bearer token");
                    Ok(None)
                }
                Err(TokenError::Invalid) => {
                    tracing::debug!(client = %peer, "invalid or foreign bearer token");
                    self.failed(peer, None)
                }
            };
        }
        tracing::debug!(client = %peer, "unsupported authorization scheme");
        self.failed(peer, None)
    }

    fn failed(&self, peer: IpAddr, user: Option<&UserKey>) -> Result<Option<Principal>, AuthError> {
        self.failures.fetch_add(1, Ordering::Relaxed);
        match self.throttle.fail(peer, user) {
            Some(retry_after) => Err(AuthError::Throttled { retry_after }),
            None => Err(AuthError::Unauthorized),
        }
    }

    /// The principal, if the pair matches an entry; and whether the user name alone
    /// matches one (only then may it be logged). Every entry of every secret is compared,
    /// whatever matches early, so the time taken says nothing about which entry (or how
    /// much of a password) was right.
    fn check_basic(&self, user: &str, password: &str) -> (Option<Principal>, bool) {
        let presented = credential_digest(user, password);
        let presented_user = user_key(user);
        let mut grants = Vec::new();
        let mut matched = subtle::Choice::from(0);
        let mut user_known = subtle::Choice::from(0);
        for source in &self.secrets {
            let config = source.current();
            for entry in config.all_entries() {
                let stored =
                    credential_digest(&entry.credential.username, &entry.credential.password);
                user_known |= user_key(&entry.credential.username).ct_eq(&presented_user);
                let eq = stored.ct_eq(&presented);
                matched |= eq;
                if bool::from(eq) {
                    if let Some(g) = grant_for(
                        entry.host,
                        entry.path,
                        &self.config.mirror_hosts,
                        &self.config.upstreams,
                    ) {
                        grants.push(g);
                    }
                }
            }
        }
        let principal = bool::from(matched).then(|| Principal {
            user: user.to_owned(),
            kind: Kind::Basic(grants),
        });
        (principal, bool::from(user_known))
    }

    fn check_token(&self, token: &str) -> Result<Principal, TokenError> {
        let claims = token::verify(&self.config.signing_key, token, &self.config.service)?;
        let access = claims
            .access
            .into_iter()
            .filter(|a| a.kind == "repository" && a.actions.iter().any(|x| x == "pull"))
            .map(|a| a.name)
            .collect();
        Ok(Principal {
            user: claims.sub,
            kind: Kind::Token(access),
        })
    }

    /// May this client pull `access`? `Unauthorized`: it must log in; `Denied`: it may not.
    pub fn authorize(
        &self,
        principal: Option<&Principal>,
        access: &Access,
    ) -> Result<(), AuthError> {
        if self.config.anonymous {
            // Anyone may pull; credentials cannot take that away.
            return Ok(());
        }
        let Some(p) = principal else {
            return Err(AuthError::Unauthorized);
        };
        let granted = match &p.kind {
            Kind::Basic(grants) => {
                grants.iter().any(|g| g.allows(access)) && self.rules_allow(&p.user, access)
            }
            // Scope and rules were checked when the token was issued.
            Kind::Token(names) => names.contains(&access.qualified()),
        };
        if granted {
            Ok(())
        } else {
            Err(AuthError::Denied)
        }
    }

    fn rules_allow(&self, user: &str, access: &Access) -> bool {
        let mut rules = self
            .config
            .rules
            .iter()
            .filter(|r| r.user == user)
            .peekable();
        if rules.peek().is_none() {
            return true;
        }
        rules
            .flat_map(|r| r.patterns.iter())
            .any(|p| pattern_matches(p, access.upstream.as_str(), access.repo.as_str()))
    }

    /// A token for the requested accesses this principal may have; the others are left out
    /// silently, as the Docker token spec asks. Only a password buys a token: a token
    /// traded for a new one could be renewed forever, outliving the password it came from.
    /// A token that cannot be signed is `Err(Signing)`, never an empty token.
    pub fn issue_token(
        &self,
        principal: &Principal,
        wanted: &[Access],
    ) -> Result<IssuedToken, AuthError> {
        if principal.via_token() {
            return Err(AuthError::Unauthorized);
        }
        let now = token::now_secs();
        let ttl = token::lifetime_secs(self.config.token_ttl);
        let mut access: Vec<token::AccessClaim> = Vec::new();
        for a in wanted {
            let name = a.qualified();
            if self.authorize(Some(principal), a).is_ok() && !access.iter().any(|x| x.name == name)
            {
                access.push(token::AccessClaim {
                    kind: "repository".into(),
                    name,
                    actions: vec!["pull".into()],
                });
            }
        }
        let claims = token::Claims {
            iss: self.config.service.clone(),
            sub: principal.user.clone(),
            aud: self.config.service.clone(),
            exp: now + ttl,
            nbf: now,
            iat: now,
            jti: random_id(),
            access,
        };
        Ok(IssuedToken {
            token: token::sign(&self.config.signing_key, &claims)?,
            expires_in: ttl,
            issued_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        })
    }

    /// `WWW-Authenticate` for a 401.
    pub fn challenge(&self, realm_url: &str, access: Option<&Access>) -> String {
        match self.config.scheme {
            Scheme::Basic => BASIC_CHALLENGE.to_owned(),
            Scheme::Token => {
                let mut c = format!(
                    "Bearer realm=\"{}\",service=\"{}\"",
                    quote_safe(realm_url),
                    quote_safe(&self.config.service)
                );
                if let Some(a) = access {
                    c.push_str(&format!(",scope=\"{}\"", quote_safe(a.scope().as_str())));
                }
                c
            }
        }
    }

    /// Requests whose credentials did not check out, or that a block refused unchecked,
    /// since start. Expired tokens of ours are not among them.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Client credentials loaded now, over every secret. Readiness: a mirror that requires
    /// credentials but holds none can only refuse.
    pub fn credentials_loaded(&self) -> usize {
        self.secrets.iter().map(|s| s.current().len()).sum()
    }

    /// Failed secret reloads, summed over every client secret.
    pub fn reload_failures(&self) -> u64 {
        self.secrets.iter().map(SecretSource::reload_failures).sum()
    }

    /// Unusable entries left out of the client secrets' versions loaded since start.
    pub fn skipped_secret_entries(&self) -> u64 {
        self.secrets.iter().map(SecretSource::skipped_entries).sum()
    }
}

/// `repository:<name>:<actions>`; the name may hold a `host:port` prefix, so the actions
/// are after the last colon.
pub fn parse_scope(scope: &str) -> Option<(String, Vec<String>)> {
    let rest = scope.strip_prefix("repository:")?;
    let (name, actions) = rest.rsplit_once(':')?;
    if name.is_empty() {
        return None;
    }
    Some((
        name.to_owned(),
        actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
    ))
}

/// The token signing key: from a file (a mounted secret, shared by replicas so each
/// honours the others' tokens) or freshly random.
pub fn load_or_generate_key(path: Option<&Path>) -> Result<Vec<u8>, AuthError> {
    let Some(path) = path else {
        let mut key = vec![0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| AuthError::KeyGeneration(e.to_string()))?;
        return Ok(key);
    };
    let bad = |reason: String| AuthError::KeyFile {
        path: path.to_owned(),
        reason,
    };
    // Bounded by the read itself, not a size checked beforehand: a wrong mount may be a
    // device or a file that grows.
    let file = std::fs::File::open(path).map_err(|e| bad(e.kind().to_string()))?;
    let mut key = Vec::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut key)
        .map_err(|e| bad(e.kind().to_string()))?;
    if key.len() as u64 > MAX_KEY_FILE {
        return Err(bad("larger than 64 KiB".into()));
    }
    while key.last().is_some_and(|b| b.is_ascii_whitespace()) {
        key.pop();
    }
    if key.len() < MIN_KEY_LEN {
        return Err(bad(format!("shorter than {MIN_KEY_LEN} bytes")));
    }
    Ok(key)
}

fn decode_basic(b64: &str) -> Option<Credential> {
    if b64.len() > MAX_BASIC_LEN {
        return None;
    }
    Credential::from_base64(b64).ok()
}

fn user_key(user: &str) -> UserKey {
    Sha256::digest(user.as_bytes()).into()
}

fn credential_digest(user: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update([0u8]);
    h.update(password.as_bytes());
    h.finalize().into()
}

fn random_id() -> String {
    let mut b = [0u8; 12];
    if getrandom::getrandom(&mut b).is_err() {
        return "0".into();
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Challenge parameters are quoted strings: drop what would break out of the quotes.
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests;
