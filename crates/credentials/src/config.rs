use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::CredentialsError;

/// Largest credentials file accepted. Real ones are a few KiB; the limit keeps a wrong mount
/// (say, a disk image) from being read into memory.
pub const MAX_CONFIG_SIZE: usize = 1024 * 1024;

/// Secret file names inside a mounted `kubernetes.io/dockerconfigjson` or
/// `kubernetes.io/dockercfg` secret, in order of preference.
const SECRET_FILE_NAMES: &[&str] = &[".dockerconfigjson", ".dockercfg"];

/// Docker's own tools write `auth` padded, but hand-made secrets often drop the padding.
const AUTH_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A username/password pair.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl Credential {
    /// From `base64(user:password)`: a docker config's `auth` value, and the payload of an
    /// `Authorization: Basic` header (one encoding, decoded in one place). Padding is
    /// optional: Docker's tools pad, hand-made secrets and headers often do not.
    pub fn from_base64(encoded: &str) -> Result<Credential, &'static str> {
        let decoded = AUTH_BASE64
            .decode(encoded.trim())
            .map_err(|_| "\"auth\" is not valid base64")?;
        let decoded = String::from_utf8(decoded).map_err(|_| "\"auth\" is not UTF-8")?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or("\"auth\" is not of the form user:password")?;
        Ok(Credential {
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }

    /// `base64(user:password)`, padded, as Docker writes it and `Basic` carries it.
    pub fn to_base64(&self) -> String {
        AUTH_BASE64.encode(format!("{}:{}", self.username, self.password))
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// An entry [`DockerConfig::parse`] left out because it is unusable: the key as written in
/// the file and why. Never the entry's value, which may hold a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEntry {
    pub registry: String,
    pub reason: &'static str,
}

impl fmt::Display for SkippedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "registry {:?}: {}", self.registry, self.reason)
    }
}

/// One entry of a docker config, its key split into host and repository path prefix.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub host: &'a str,
    pub path: Option<&'a str>,
    pub credential: &'a Credential,
}

/// A parsed docker config: normalized registry host (with port, if any) to the
/// [`Credential`]s written for it.
///
/// Keys are normalized as kubelet does: scheme dropped, host lowercased, port kept, Docker
/// Hub aliases folded into `docker.io`. A key may start with `*.` to match any single label
/// in that place. Two keys that normalize alike (`docker.io` and
/// `https://index.docker.io/v1/`) are two credentials, both kept: `docker login` writes one,
/// an admin adds the other, and each is somebody's login.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    /// Never empty vectors; credentials in key order, each once.
    entries: BTreeMap<String, Vec<Credential>>,
    skipped: Vec<SkippedEntry>,
}

impl DockerConfig {
    /// Parses a `.dockerconfigjson` (`{"auths": {...}}`) or a legacy `.dockercfg` (the map of
    /// registries at the top level).
    ///
    /// Entries holding only an `identitytoken` or `registrytoken` are skipped: tokens are not
    /// supported yet. An unusable entry (a bad key, bad base64, an empty password...) is
    /// left out and listed in [`skipped`](Self::skipped): failing the whole file over one
    /// entry would keep the previous version of a rotated secret, and with it every
    /// credential the rotation revoked. Only a document that is not a docker config at all
    /// is an error.
    pub fn parse(bytes: &[u8]) -> Result<DockerConfig, CredentialsError> {
        if bytes.len() > MAX_CONFIG_SIZE {
            return Err(CredentialsError::TooLarge { path: None });
        }
        // Untyped first: serde's type errors quote the offending value, which may be a secret.
        let document: Value = serde_json::from_slice(bytes).map_err(CredentialsError::Json)?;
        let Value::Object(top) = document else {
            return Err(CredentialsError::Malformed(
                "the top level is not a JSON object",
            ));
        };
        let registries = match top.get("auths") {
            Some(Value::Object(auths)) => auths,
            Some(_) => return Err(CredentialsError::Malformed("\"auths\" is not an object")),
            None => &top,
        };

        // Sorted here rather than trusting the map: serde_json keeps document order when any
        // crate in the build enables its `preserve_order` feature.
        let mut registries: Vec<(&String, &Value)> = registries.iter().collect();
        registries.sort_by(|a, b| a.0.cmp(b.0));

        let mut entries: BTreeMap<String, Vec<Credential>> = BTreeMap::new();
        let mut skipped = Vec::new();
        for (key, entry) in registries {
            let parsed = normalize_key(key).and_then(|n| Ok((n, parse_entry(key, entry)?)));
            let (normalized, credential) = match parsed {
                Ok((normalized, Some(credential))) => (normalized, credential),
                Ok((_, None)) => {
                    tracing::debug!(registry = ?key, "skipping token-only credentials entry");
                    continue;
                }
                Err(CredentialsError::BadEntry { registry, reason }) => {
                    skipped.push(SkippedEntry { registry, reason });
                    continue;
                }
                Err(other) => return Err(other),
            };
            let same_registry = entries.entry(normalized).or_default();
            if !same_registry.contains(&credential) {
                same_registry.push(credential);
            }
        }
        Ok(DockerConfig { entries, skipped })
    }

    /// Reads a credentials file, or a mounted secret directory: then `<dir>/.dockerconfigjson`,
    /// falling back to `<dir>/.dockercfg`.
    pub fn load(path: &Path) -> Result<DockerConfig, CredentialsError> {
        let file = config_file(path)?;
        let (bytes, _) = read_bounded(&file)?;
        DockerConfig::parse(&bytes)
    }

    /// The credential for a registry host such as `ghcr.io` or `127.0.0.1:5000`. An exact
    /// key beats a wildcard key, and keys without a repository path beat keys with one.
    ///
    /// When the only keys for the host carry a path (`ghcr.io/team-a`), the first of them in
    /// key order is returned: for upstream credentials the admin picked this secret for this
    /// upstream, and ignoring its only entry would silently pull anonymously instead. Of
    /// several credentials under one key (aliases), the first in key order.
    pub fn for_host(&self, host: &str) -> Option<&Credential> {
        let host = normalize_host(host);
        if let Some(credential) = self.entries.get(host.as_str()).and_then(|c| c.first()) {
            return Some(credential);
        }
        if let Some(credential) = self.wildcard_for(&host) {
            return Some(credential);
        }
        // Keys sharing the prefix `host/` are contiguous in the sorted map, starting at it.
        let prefix = format!("{host}/");
        self.entries
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .find_map(|(_, credentials)| credentials.first())
    }

    /// The path-less wildcard key covering `host`. One label only, as kubelet's glob does:
    /// `*.example.com` covers `a.example.com` but neither `example.com` nor `a.b.example.com`.
    fn wildcard_for(&self, host: &str) -> Option<&Credential> {
        let (label, rest) = host.split_once('.')?;
        if label.is_empty() || label == "*" || rest.is_empty() {
            return None;
        }
        self.entries
            .get(format!("*.{rest}").as_str())
            .and_then(|c| c.first())
    }

    /// Every entry with its host and repository path prefix (`ghcr.io/team-a` gives host
    /// `ghcr.io`, path `team-a`; Docker Hub's API-version paths `/v1/` and `/v2/` are no
    /// path).
    pub fn all_entries(&self) -> impl Iterator<Item = Entry<'_>> {
        self.entries().map(|(key, credential)| {
            let (host, path) = match key.split_once('/') {
                Some((h, p)) => (h, Some(p)),
                None => (key, None),
            };
            Entry {
                host,
                path,
                credential,
            }
        })
    }

    /// Every entry, by normalized key (`host` or `host/path`), in key order; a key written
    /// under several aliases once per distinct credential.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Credential)> {
        self.entries.iter().flat_map(|(key, credentials)| {
            credentials
                .iter()
                .map(move |credential| (key.as_str(), credential))
        })
    }

    /// The entries [`parse`](Self::parse) left out, in key order.
    pub fn skipped(&self) -> &[SkippedEntry] {
        &self.skipped
    }

    /// Credentials loaded (not counting [`skipped`](Self::skipped) entries).
    pub fn len(&self) -> usize {
        self.entries.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Scheme and path dropped, lowercased, port kept, Hub aliases folded. Total: any input gives
/// some string, so lookups can normalize whatever they are handed.
fn normalize_host(raw: &str) -> String {
    let raw = raw.trim();
    let without_scheme = strip_prefix_ignore_case(raw, "https://")
        .or_else(|| strip_prefix_ignore_case(raw, "http://"))
        .unwrap_or(raw);
    let host = without_scheme
        .split_once('/')
        .map_or(without_scheme, |(host, _)| host);
    pullgate_oci::canonical_host(host)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Like [`normalize_host`], but refuses keys that could never match, so that a typo fails at
/// load time instead of as a puzzling 401 later.
fn normalize_key(raw: &str) -> Result<String, CredentialsError> {
    let bad = |reason| CredentialsError::BadEntry {
        registry: raw.to_owned(),
        reason,
    };
    let host = normalize_host(raw);
    if host.is_empty() {
        return Err(bad("the registry key has no host"));
    }
    let path = key_path(raw);
    let plain = host.strip_prefix("*.").unwrap_or(&host);
    if plain.contains('*') {
        return Err(bad("only a leading \"*.\" wildcard is supported"));
    }
    if plain.is_empty() || plain.starts_with('.') || plain.starts_with(':') {
        return Err(bad("the wildcard has no domain after it"));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("the registry key contains whitespace"));
    }
    match path {
        None => Ok(host),
        Some(p) if p.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            Err(bad("the registry key contains whitespace"))
        }
        Some(p) => Ok(format!("{host}/{p}")),
    }
}

/// The repository path of a key (`ghcr.io/team-a/` gives `team-a`); none for a bare host or
/// Docker Hub's API-version path (`https://index.docker.io/v1/`). Elsewhere `v1` and `v2`
/// are repository prefixes like any other, as kubelet reads them: `ghcr.io/v2/` is
/// `ghcr.io/v2/...`, not all of ghcr.io.
fn key_path(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let without_scheme = strip_prefix_ignore_case(raw, "https://")
        .or_else(|| strip_prefix_ignore_case(raw, "http://"))
        .unwrap_or(raw);
    let (host, path) = without_scheme.split_once('/')?;
    let path = path.trim_matches('/');
    let api_version = matches!(path, "v1" | "v2") && pullgate_oci::is_docker_hub(host);
    if path.is_empty() || api_version {
        return None;
    }
    Some(path.to_owned())
}

/// `Ok(None)` for an entry that only holds tokens.
fn parse_entry(registry: &str, entry: &Value) -> Result<Option<Credential>, CredentialsError> {
    let bad = |reason| CredentialsError::BadEntry {
        registry: registry.to_owned(),
        reason,
    };
    let Value::Object(entry) = entry else {
        return Err(bad("the entry is not an object"));
    };

    // Docker and kubelet both let a non-empty `auth` override `username`/`password`.
    let credential = match string_field(entry, "auth").map_err(bad)? {
        Some(auth) => Credential::from_base64(auth).map_err(bad)?,
        None => {
            let username = string_field(entry, "username").map_err(bad)?;
            let password = string_field(entry, "password").map_err(bad)?;
            match (username, password) {
                (Some(username), Some(password)) => Credential {
                    username: username.to_owned(),
                    password: password.to_owned(),
                },
                (Some(_), None) => return Err(bad("\"username\" without \"password\"")),
                (None, Some(_)) => return Err(bad("\"password\" without \"username\"")),
                (None, None) => {
                    let has_token = ["identitytoken", "registrytoken"].iter().any(
                        |name| matches!(entry.get(*name), Some(Value::String(s)) if !s.is_empty()),
                    );
                    if has_token {
                        return Ok(None);
                    }
                    return Err(bad("neither \"auth\" nor \"username\" and \"password\""));
                }
            }
        }
    };

    if credential.username.is_empty() {
        return Err(bad("the username is empty"));
    }
    // An empty password would let anyone who knows the username in.
    if credential.password.is_empty() {
        return Err(bad("the password is empty"));
    }
    Ok(Some(credential))
}

/// A present, non-empty string field. Docker writes absent fields as `""`, so empty counts as
/// absent.
fn string_field<'a>(
    entry: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, &'static str> {
    match entry.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(match name {
            "auth" => "\"auth\" is not a string",
            "username" => "\"username\" is not a string",
            "password" => "\"password\" is not a string",
            _ => "a field is not a string",
        }),
    }
}

/// The file to read for `path`: `path` itself, or the secret file inside a mounted secret
/// directory.
pub(crate) fn config_file(path: &Path) -> Result<PathBuf, CredentialsError> {
    let meta = fs::metadata(path).map_err(|e| CredentialsError::io(path, e))?;
    if !meta.is_dir() {
        return Ok(path.to_path_buf());
    }
    for name in SECRET_FILE_NAMES {
        let candidate = path.join(name);
        match fs::metadata(&candidate) {
            Ok(_) => return Ok(candidate),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CredentialsError::io(&candidate, e)),
        }
    }
    Err(CredentialsError::NotFound(path.to_path_buf()))
}

/// Reads at most [`MAX_CONFIG_SIZE`] bytes, and returns the metadata of the very file read, so
/// a caller can tell later whether what it read has changed.
pub(crate) fn read_bounded(path: &Path) -> Result<(Vec<u8>, fs::Metadata), CredentialsError> {
    let too_large = || CredentialsError::TooLarge {
        path: Some(path.to_path_buf()),
    };
    let file = File::open(path).map_err(|e| CredentialsError::io(path, e))?;
    let meta = file.metadata().map_err(|e| CredentialsError::io(path, e))?;
    let limit = MAX_CONFIG_SIZE as u64;
    if meta.len() > limit {
        return Err(too_large());
    }
    // The length check above is only a shortcut: the file may grow, or not report a size.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CredentialsError::io(path, e))?;
    if bytes.len() > MAX_CONFIG_SIZE {
        return Err(too_large());
    }
    Ok((bytes, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use proptest::prelude::*;

    fn cred(username: &str, password: &str) -> Credential {
        Credential {
            username: username.to_owned(),
            password: password.to_owned(),
        }
    }

    fn auth(username: &str, password: &str) -> String {
        STANDARD.encode(format!("{username}:{password}"))
    }

    fn parse(json: &str) -> Result<DockerConfig, CredentialsError> {
        DockerConfig::parse(json.as_bytes())
    }

    #[test]
    fn dockerconfigjson_with_auth() {
        let json = format!(
            r#"{{"auths":{{"ghcr.io":{{"auth":"{}","email":"x@example.com"}}}}}}"#,
            auth("alice", "s3cret:with:colons")
        );
        let config = parse(&json).unwrap();
        assert_eq!(config.len(), 1);
        assert_eq!(
            config.for_host("ghcr.io"),
            Some(&cred("alice", "s3cret:with:colons"))
        );
        assert_eq!(config.for_host("quay.io"), None);
    }

    #[test]
    fn auth_without_padding() {
        // "a:bc" encodes to 6 characters plus "==" when padded.
        let unpadded = STANDARD_NO_PAD.encode("a:bc");
        assert!(!unpadded.ends_with('='));
        let json = format!(r#"{{"auths":{{"ghcr.io":{{"auth":"{unpadded}"}}}}}}"#);
        assert_eq!(
            parse(&json).unwrap().for_host("ghcr.io"),
            Some(&cred("a", "bc"))
        );
    }

    #[test]
    fn dockerconfigjson_with_username_and_password() {
        let json = r#"{"auths":{"quay.io":{"username":"bob","password":"hunter2"}}}"#;
        let config = parse(json).unwrap();
        assert_eq!(config.for_host("quay.io"), Some(&cred("bob", "hunter2")));
    }

    #[test]
    fn auth_overrides_username_and_password() {
        let json = format!(
            r#"{{"auths":{{"quay.io":{{"auth":"{}","username":"x","password":"y"}}}}}}"#,
            auth("bob", "pw")
        );
        assert_eq!(
            parse(&json).unwrap().for_host("quay.io"),
            Some(&cred("bob", "pw"))
        );
    }

    #[test]
    fn legacy_dockercfg() {
        let json = format!(
            r#"{{"https://index.docker.io/v1/":{{"auth":"{}","email":"a@b.c"}},
                 "registry.example.com":{{"username":"u","password":"p"}}}}"#,
            auth("hubuser", "hubpass")
        );
        let config = parse(&json).unwrap();
        assert_eq!(config.len(), 2);
        assert_eq!(
            config.for_host("docker.io"),
            Some(&cred("hubuser", "hubpass"))
        );
        assert_eq!(
            config.for_host("registry.example.com"),
            Some(&cred("u", "p"))
        );
    }

    #[test]
    fn docker_hub_aliases_all_match_each_other() {
        let keys = [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "docker.io",
            "registry-1.docker.io",
            "registry.hub.docker.com",
            "HTTPS://Index.Docker.IO/v1/",
        ];
        for key in keys {
            let json = format!(r#"{{"auths":{{"{key}":{{"auth":"{}"}}}}}}"#, auth("u", "p"));
            let config = parse(&json).unwrap();
            assert_eq!(
                config.entries().map(|(k, _)| k).collect::<Vec<_>>(),
                ["docker.io"]
            );
            for host in keys {
                assert_eq!(
                    config.for_host(host),
                    Some(&cred("u", "p")),
                    "{key} vs {host}"
                );
            }
            assert_eq!(config.for_host("docker.io.evil.com"), None);
        }
    }

    #[test]
    fn key_normalization() {
        let cases = [
            (
                "https://Registry.Example.com/v2/",
                "registry.example.com/v2",
            ),
            ("http://127.0.0.1:5000", "127.0.0.1:5000"),
            ("localhost:5000/v1/", "localhost:5000/v1"),
            ("https://index.docker.io/v1/", "docker.io"),
            ("Registry-1.Docker.io/v2/", "docker.io"),
            ("docker.io/v3/", "docker.io/v3"),
            ("  ghcr.io  ", "ghcr.io"),
            (
                "registry.example.com/some/path/",
                "registry.example.com/some/path",
            ),
            ("*.Example.com", "*.example.com"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_key(raw).unwrap(), want, "{raw}");
        }
        for bad in [
            "",
            "https://",
            "/v1/",
            "a*.example.com",
            "*.*.example.com",
            "*.",
            "a b.com",
        ] {
            assert!(
                matches!(normalize_key(bad), Err(CredentialsError::BadEntry { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn hosts_with_ports() {
        let json = format!(
            r#"{{"auths":{{"http://127.0.0.1:5000/v2/":{{"auth":"{}"}},"127.0.0.1":{{"auth":"{}"}}}}}}"#,
            auth("withport", "p1"),
            auth("noport", "p2")
        );
        let config = parse(&json).unwrap();
        assert_eq!(
            config.for_host("127.0.0.1:5000"),
            Some(&cred("withport", "p1"))
        );
        assert_eq!(config.for_host("127.0.0.1"), Some(&cred("noport", "p2")));
        assert_eq!(config.for_host("127.0.0.1:5001"), None);
    }

    #[test]
    fn wildcard_matches_one_label_and_exact_wins() {
        let json = format!(
            r#"{{"auths":{{"*.example.com":{{"auth":"{}"}},"special.example.com":{{"auth":"{}"}},
                "*.ports.test:5000":{{"auth":"{}"}}}}}}"#,
            auth("wild", "p1"),
            auth("exact", "p2"),
            auth("wildport", "p3")
        );
        let config = parse(&json).unwrap();
        assert_eq!(config.for_host("a.example.com"), Some(&cred("wild", "p1")));
        assert_eq!(config.for_host("A.Example.COM"), Some(&cred("wild", "p1")));
        assert_eq!(
            config.for_host("special.example.com"),
            Some(&cred("exact", "p2"))
        );
        assert_eq!(config.for_host("example.com"), None);
        assert_eq!(config.for_host("a.b.example.com"), None);
        assert_eq!(config.for_host(".example.com"), None);
        assert_eq!(config.for_host("a.example.com:443"), None);
        assert_eq!(
            config.for_host("r.ports.test:5000"),
            Some(&cred("wildport", "p3"))
        );
        assert_eq!(config.for_host("r.ports.test"), None);
    }

    /// `docker login` writes `https://index.docker.io/v1/`, an admin adds `docker.io`: two
    /// users of one registry, and both must be able to log in.
    #[test]
    fn alias_keys_are_two_credentials() {
        let json = format!(
            r#"{{"auths":{{"registry-1.docker.io":{{"auth":"{}"}},"https://index.docker.io/v1/":{{"auth":"{}"}},
                "docker.io":{{"auth":"{}"}}}}}}"#,
            auth("second", "p2"),
            auth("first", "p1"),
            auth("first", "p1")
        );
        let config = parse(&json).unwrap();
        // The same credential under two aliases is one.
        assert_eq!(config.len(), 2);
        assert!(config.skipped().is_empty());
        let all: Vec<(&str, Option<&str>, &str)> = config
            .all_entries()
            .map(|e| (e.host, e.path, e.credential.username.as_str()))
            .collect();
        assert_eq!(
            all,
            [("docker.io", None, "first"), ("docker.io", None, "second")]
        );
        assert_eq!(config.entries().count(), 2);
        // An upstream needs one: the first in key order.
        assert_eq!(config.for_host("docker.io"), Some(&cred("first", "p1")));
    }

    /// `/v1/` and `/v2/` are API versions only in Docker Hub's keys; elsewhere they are
    /// repository prefixes, or `ghcr.io/v2/` would grant all of ghcr.io.
    #[test]
    fn api_version_paths_are_docker_hub_only() {
        let json = serde_json::json!({ "auths": {
            "https://index.docker.io/v1/": { "username": "hub1", "password": "p" },
            "registry-1.docker.io/v2/": { "username": "hub2", "password": "p" },
            "ghcr.io/v2/": { "username": "gh", "password": "p" },
            "https://quay.io/v1/": { "username": "quay", "password": "p" },
            "ghcr.io/v2/team": { "username": "deep", "password": "p" },
        }});
        let config = DockerConfig::parse(json.to_string().as_bytes()).unwrap();
        let mut seen: Vec<(String, Option<String>, String)> = config
            .all_entries()
            .map(|e| {
                (
                    e.host.to_owned(),
                    e.path.map(str::to_owned),
                    e.credential.username.clone(),
                )
            })
            .collect();
        seen.sort();
        let row =
            |h: &str, p: Option<&str>, u: &str| (h.to_owned(), p.map(str::to_owned), u.to_owned());
        assert_eq!(
            seen,
            [
                row("docker.io", None, "hub1"),
                row("docker.io", None, "hub2"),
                row("ghcr.io", Some("v2"), "gh"),
                row("ghcr.io", Some("v2/team"), "deep"),
                row("quay.io", Some("v1"), "quay"),
            ]
        );
        // Upstream credentials still find a path key when it is the only one.
        assert_eq!(config.for_host("quay.io").unwrap().username, "quay");
    }

    #[test]
    fn token_only_entries_are_skipped_and_tokens_ignored() {
        let json = format!(
            r#"{{"auths":{{"a.io":{{"identitytoken":"tok"}},"b.io":{{"registrytoken":"tok"}},
                "c.io":{{"auth":"{}","identitytoken":"tok"}}}}}}"#,
            auth("u", "p")
        );
        let config = parse(&json).unwrap();
        assert_eq!(
            config.entries().map(|(k, _)| k).collect::<Vec<_>>(),
            ["c.io"]
        );
        assert_eq!(config.for_host("c.io"), Some(&cred("u", "p")));
    }

    #[test]
    fn empty_config_and_other_docker_cli_fields() {
        assert!(parse(r#"{"auths":{}}"#).unwrap().is_empty());
        assert!(parse("{}").unwrap().is_empty());
        let json = r#"{"auths":{},"credsStore":"desktop","HttpHeaders":{"User-Agent":"x"}}"#;
        assert!(parse(json).unwrap().is_empty());
    }

    /// Every bad entry is skipped, named by its registry and reason, never by the secret it
    /// was given; the good entries beside it are kept.
    #[test]
    fn bad_entries_are_skipped_without_secrets() {
        const SECRET: &str = "TOPSECRETVALUE";
        let no_colon = STANDARD.encode(SECRET);
        let cases = [
            (format!(r#"{{"auth":"{SECRET}!!"}}"#), "base64"),
            (format!(r#"{{"auth":"{no_colon}"}}"#), "user:password"),
            (
                format!(r#"{{"auth":"{}"}}"#, STANDARD.encode(b"\xff\xfe:x")),
                "UTF-8",
            ),
            (
                format!(r#"{{"auth":"{}"}}"#, auth("", SECRET)),
                "username is empty",
            ),
            (
                format!(r#"{{"auth":"{}"}}"#, auth(SECRET, "")),
                "password is empty",
            ),
            (
                format!(r#"{{"auth":["{SECRET}"]}}"#),
                "\"auth\" is not a string",
            ),
            (
                r#"{"username":"u","password":7}"#.to_owned(),
                "\"password\" is not a string",
            ),
            (
                format!(r#"{{"username":"{SECRET}"}}"#),
                "without \"password\"",
            ),
            (
                format!(r#"{{"password":"{SECRET}"}}"#),
                "without \"username\"",
            ),
            (r#"{"email":"a@b.c"}"#.to_owned(), "neither"),
            (format!(r#""{SECRET}""#), "not an object"),
        ];
        for (entry, reason_part) in cases {
            let json = format!(
                r#"{{"auths":{{"ghcr.io":{entry},"quay.io":{{"auth":"{}"}}}}}}"#,
                auth("good", "pw")
            );
            let config = parse(&json).unwrap();
            assert_eq!(config.len(), 1, "{entry}");
            assert_eq!(config.for_host("quay.io"), Some(&cred("good", "pw")));
            assert_eq!(config.for_host("ghcr.io"), None);
            let [skipped] = config.skipped() else {
                panic!(
                    "{entry}: expected one skipped entry, got {:?}",
                    config.skipped()
                );
            };
            assert_eq!(skipped.registry, "ghcr.io");
            assert!(skipped.reason.contains(reason_part), "{entry}: {skipped}");
            let shown = format!("{skipped} {skipped:?} {config:?}");
            assert!(shown.contains("ghcr.io"), "{shown}");
            assert!(!shown.contains(SECRET), "secret leaked: {shown}");
            assert!(!shown.contains(&no_colon), "secret leaked: {shown}");
        }
        // A bad key is an entry like any other.
        let config = parse(r#"{"auths":{"a*.example.com":{"auth":"dTpw"}}}"#).unwrap();
        assert!(config.is_empty());
        assert_eq!(config.skipped()[0].registry, "a*.example.com");
    }

    #[test]
    fn malformed_documents() {
        assert!(matches!(parse("not json"), Err(CredentialsError::Json(_))));
        assert!(matches!(parse("[]"), Err(CredentialsError::Malformed(_))));
        assert!(matches!(
            parse(r#"{"auths":[]}"#),
            Err(CredentialsError::Malformed(_))
        ));
        // A JSON syntax error must not echo the document either.
        let error = parse(r#"{"auths":{"ghcr.io":{"auth":"TOPSECRET"#).unwrap_err();
        assert!(!format!("{error} {error:?}").contains("TOPSECRET"));
    }

    #[test]
    fn debug_redacts_the_password() {
        let credential = cred("alice", "hunter2");
        let shown = format!("{credential:?} {credential:#?}");
        assert!(shown.contains("alice"));
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains("hunter2"));

        let json = format!(
            r#"{{"auths":{{"ghcr.io":{{"auth":"{}"}}}}}}"#,
            auth("alice", "hunter2")
        );
        let config = parse(&json).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn size_limit() {
        let mut big = format!(
            r#"{{"auths":{{"ghcr.io":{{"auth":"{}"}}}},"pad":""#,
            auth("u", "p")
        );
        let close = "\"}";
        big.push_str(&"x".repeat(MAX_CONFIG_SIZE - big.len() - close.len()));
        big.push_str(close);
        assert_eq!(big.len(), MAX_CONFIG_SIZE);
        assert_eq!(parse(&big).unwrap().len(), 1);

        big.insert(big.len() - close.len(), 'x');
        assert!(matches!(
            parse(&big),
            Err(CredentialsError::TooLarge { path: None })
        ));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, &big).unwrap();
        match DockerConfig::load(&path) {
            Err(CredentialsError::TooLarge { path: Some(p) }) => assert_eq!(p, path),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn load_file_and_secret_directories() {
        let dir = tempfile::tempdir().unwrap();
        let json = |user: &str| {
            format!(
                r#"{{"auths":{{"ghcr.io":{{"auth":"{}"}}}}}}"#,
                auth(user, "p")
            )
        };

        let file = dir.path().join("config.json");
        fs::write(&file, json("file")).unwrap();
        assert_eq!(
            DockerConfig::load(&file).unwrap().for_host("ghcr.io"),
            Some(&cred("file", "p"))
        );

        let secret = dir.path().join("secret");
        fs::create_dir(&secret).unwrap();
        assert!(
            matches!(DockerConfig::load(&secret), Err(CredentialsError::NotFound(p)) if p == secret)
        );

        // Legacy secret type: only .dockercfg, which is a bare map.
        let legacy = format!(r#"{{"ghcr.io":{{"auth":"{}"}}}}"#, auth("legacy", "p"));
        fs::write(secret.join(".dockercfg"), legacy).unwrap();
        assert_eq!(
            DockerConfig::load(&secret).unwrap().for_host("ghcr.io"),
            Some(&cred("legacy", "p"))
        );

        // .dockerconfigjson is preferred when both are present.
        fs::write(secret.join(".dockerconfigjson"), json("modern")).unwrap();
        assert_eq!(
            DockerConfig::load(&secret).unwrap().for_host("ghcr.io"),
            Some(&cred("modern", "p"))
        );

        let missing = dir.path().join("missing");
        assert!(
            matches!(DockerConfig::load(&missing), Err(CredentialsError::NotFound(p)) if p == missing)
        );
    }

    #[test]
    fn keys_with_repository_paths_are_separate_entries() {
        let json = serde_json::json!({ "auths": {
            "ghcr.io": { "username": "org", "password": "p1" },
            "https://ghcr.io/team-a/": { "username": "a", "password": "p2" },
            "ghcr.io/team-b/sub": { "username": "b", "password": "p3" },
            "https://index.docker.io/v1/": { "username": "hub", "password": "p4" },
        }});
        let config = DockerConfig::parse(json.to_string().as_bytes()).unwrap();
        assert_eq!(config.len(), 4);
        assert_eq!(config.for_host("ghcr.io").unwrap().username, "org");
        assert_eq!(config.for_host("docker.io").unwrap().username, "hub");
        assert_eq!(config.for_host("https://ghcr.io/").unwrap().username, "org");
        let mut seen: Vec<(String, Option<String>, String)> = config
            .all_entries()
            .map(|e| {
                (
                    e.host.to_owned(),
                    e.path.map(str::to_owned),
                    e.credential.username.clone(),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("docker.io".to_owned(), None, "hub".to_owned()),
                ("ghcr.io".to_owned(), None, "org".to_owned()),
                (
                    "ghcr.io".to_owned(),
                    Some("team-a".to_owned()),
                    "a".to_owned()
                ),
                (
                    "ghcr.io".to_owned(),
                    Some("team-b/sub".to_owned()),
                    "b".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn for_host_prefers_path_less_keys_and_falls_back_to_path_keys() {
        let json = serde_json::json!({ "auths": {
            "ghcr.io/team-b": { "username": "b", "password": "p1" },
            "ghcr.io/team-a": { "username": "a", "password": "p2" },
            "ghcr.io.evil.example/x": { "username": "evil", "password": "p3" },
            "*.example.com": { "username": "wild", "password": "p4" },
            "registry.example.com/team": { "username": "team", "password": "p5" },
            "https://index.docker.io/v2/": { "username": "hub", "password": "p6" },
        }});
        let config = DockerConfig::parse(json.to_string().as_bytes()).unwrap();
        // Only path keys for ghcr.io: the first in key order.
        assert_eq!(config.for_host("ghcr.io").unwrap().username, "a");
        // Another host sharing the text prefix is not taken for it.
        assert!(config.for_host("ghcr.i").is_none());
        assert!(config.for_host("quay.io").is_none());
        // A path-less wildcard beats a path key on the exact host.
        assert_eq!(
            config.for_host("registry.example.com").unwrap().username,
            "wild"
        );
        // `/v2/` is an API version, not a path.
        assert_eq!(config.for_host("docker.io").unwrap().username, "hub");
        let hub = config
            .all_entries()
            .find(|e| e.host == "docker.io")
            .unwrap();
        assert_eq!(hub.path, None);
    }

    /// A registry host that is not one of Docker Hub's names, with an optional port.
    fn host() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9-]{0,8}(\\.[a-z0-9-]{1,8}){1,2}(:[0-9]{1,5})?"
            .prop_filter("not Docker Hub", |h| !pullgate_oci::is_docker_hub(h))
    }

    /// How a key for `host` may be written: scheme, case, API-version path.
    fn write_key(host: &str, how: u8) -> String {
        match how % 6 {
            0 => host.to_owned(),
            1 => format!("https://{host}"),
            2 => format!("http://{}/", host.to_ascii_uppercase()),
            3 => format!("{host}/v1/"),
            4 => format!("HTTPS://{host}/v2/"),
            _ => format!("  {host}  "),
        }
    }

    /// A JSON entry for `c`: as `auth` (padded or not), or as `username` and `password`.
    fn write_entry(c: &Credential, how: u8) -> serde_json::Value {
        let raw = format!("{}:{}", c.username, c.password);
        match how % 3 {
            0 => serde_json::json!({ "auth": STANDARD.encode(&raw), "email": "" }),
            1 => serde_json::json!({ "auth": STANDARD_NO_PAD.encode(&raw), "username": "" }),
            _ => serde_json::json!({ "username": c.username, "password": c.password }),
        }
    }

    fn credential() -> impl Strategy<Value = Credential> {
        ("[A-Za-z0-9._@+-]{1,16}", "\\PC{1,24}").prop_map(|(u, p)| cred(&u, &p))
    }

    /// Arbitrary JSON, shaped enough like a docker config to get past the first checks.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
            credential().prop_map(|c| Value::from(c.to_base64())),
        ];
        let key = prop_oneof![
            Just("auths".to_owned()),
            Just("auth".to_owned()),
            Just("username".to_owned()),
            Just("password".to_owned()),
            Just("identitytoken".to_owned()),
            host(),
            "\\PC{0,12}",
        ];
        let object = |key: BoxedStrategy<String>, value: BoxedStrategy<Value>, max| {
            proptest::collection::btree_map(key, value, 0..max)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        };
        let any_json = {
            let key = key.clone().boxed();
            leaf.clone().prop_recursive(4, 48, 6, move |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    object(key.clone(), inner.boxed(), 6),
                ]
            })
        };
        // Mostly registries mapped to entries of the right field names, so that some parse.
        let entry = object(key.clone().boxed(), leaf.boxed(), 5);
        let registries = object(
            prop_oneof![host(), "\\PC{0,16}"].boxed(),
            prop_oneof![4 => entry, 1 => any_json.clone()].boxed(),
            5,
        );
        prop_oneof![
            2 => registries.clone().prop_map(|r| serde_json::json!({ "auths": r })),
            1 => registries,
            1 => any_json,
        ]
    }

    proptest! {
        #[test]
        fn generated_configs_are_found_by_host(
            entries in proptest::collection::btree_map(host(), (credential(), any::<u8>(), any::<u8>()), 1..6),
            legacy in any::<bool>(),
        ) {
            let mut auths = serde_json::Map::new();
            for (host, (c, key_how, entry_how)) in &entries {
                auths.insert(write_key(host, *key_how), write_entry(c, *entry_how));
            }
            let doc = match legacy {
                true => serde_json::Value::Object(auths),
                false => serde_json::json!({ "auths": auths }),
            };
            let config = DockerConfig::parse(doc.to_string().as_bytes()).unwrap();
            prop_assert_eq!(config.len(), entries.len());
            for (host, (c, _, _)) in &entries {
                prop_assert_eq!(config.for_host(host), Some(c));
                prop_assert_eq!(config.for_host(&host.to_ascii_uppercase()), Some(c));
                prop_assert_eq!(config.for_host(&format!("https://{host}/v2/")), Some(c));
            }
            for entry in config.all_entries() {
                prop_assert!(entries.contains_key(entry.host));
                // Only an API-version-looking path, which is a prefix off Docker Hub.
                prop_assert!(matches!(entry.path, None | Some("v1" | "v2")), "{:?}", entry.path);
            }
        }

        #[test]
        fn wildcards_cover_one_label(
            domain in host(),
            label in "[a-z0-9-]{1,10}",
            c in credential(),
            exact in credential(),
        ) {
            let doc = serde_json::json!({ "auths": {
                format!("*.{domain}"): write_entry(&c, 2),
                format!("exact.{domain}"): write_entry(&exact, 2),
            }});
            let config = DockerConfig::parse(doc.to_string().as_bytes()).unwrap();
            let expected = if label == "exact" { &exact } else { &c };
            prop_assert_eq!(config.for_host(&format!("{label}.{domain}")), Some(expected));
            prop_assert_eq!(config.for_host(&domain), None);
            prop_assert_eq!(config.for_host(&format!("a.{label}.{domain}")), None);
        }

        #[test]
        fn credentials_round_trip_through_base64(
            c in ("[^:]{1,20}", "\\PC{0,40}").prop_map(|(u, p)| cred(&u, &p)),
            junk in "\\PC{0,40}",
        ) {
            prop_assert_eq!(Credential::from_base64(&c.to_base64()), Ok(c));
            // Whatever decodes re-encodes to the same pair.
            if let Ok(d) = Credential::from_base64(&junk) {
                prop_assert!(!d.username.contains(':'));
                prop_assert_eq!(Credential::from_base64(&d.to_base64()), Ok(d));
            }
        }

        #[test]
        fn accepted_entries_are_usable(doc in json()) {
            let Ok(config) = DockerConfig::parse(doc.to_string().as_bytes()) else {
                return Ok(());
            };
            for entry in config.all_entries() {
                prop_assert!(!entry.credential.username.is_empty());
                prop_assert!(!entry.credential.password.is_empty());
                prop_assert!(!entry.host.is_empty());
                if entry.path.is_none() {
                    // Of several credentials under aliases of one key, the first.
                    prop_assert!(config.for_host(entry.host).is_some());
                }
            }
            for skipped in config.skipped() {
                prop_assert!(!skipped.reason.is_empty());
            }
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = DockerConfig::parse(&bytes);
        }

        #[test]
        fn malformed_entries_fail_cleanly_without_echoing_values(
            secret in "[A-Za-z0-9]{16,32}",
            shape in 0usize..7,
        ) {
            // Wrong types, bad base64, missing halves: each is an error (or skipped), never
            // a panic, and the message never repeats the value.
            let entry = match shape {
                0 => serde_json::json!({ "auth": 12345 }),
                1 => serde_json::json!({ "auth": format!("!{secret}!") }),
                2 => serde_json::json!({ "auth": STANDARD.encode(&secret) }), // no colon
                3 => serde_json::json!({ "username": secret.clone() }),
                4 => serde_json::json!({ "username": ["x"], "password": secret.clone() }),
                5 => serde_json::json!([secret.clone()]),
                _ => serde_json::json!({ "auths": secret.clone() }),
            };
            let json = if shape == 6 { entry } else { serde_json::json!({ "auths": { "r.io": entry } }) };
            match DockerConfig::parse(json.to_string().as_bytes()) {
                Ok(c) => {
                    prop_assert!(c.for_host("r.io").is_none());
                    let shown = format!("{c:?} {:?}", c.skipped());
                    prop_assert!(!shown.contains(&secret));
                }
                Err(e) => {
                    let shown = format!("{e} {e:?}");
                    prop_assert!(!shown.contains(&secret));
                }
            }
        }

        #[test]
        fn parse_never_panics_on_config_shaped_input(
            key in "\\PC{0,24}",
            field in prop_oneof![Just("auth"), Just("username"), Just("password"), Just("identitytoken")],
            value in "\\PC{0,32}",
        ) {
            let json = serde_json::json!({ "auths": { key.clone(): { field: value.clone() } } });
            let _ = DockerConfig::parse(json.to_string().as_bytes());
            let legacy = serde_json::json!({ key: { "auth": value } });
            let _ = DockerConfig::parse(legacy.to_string().as_bytes());
        }

        #[test]
        fn auth_round_trips(
            username in "[^:\\x00]{1,20}",
            password in "\\PC{1,40}",
            padded in any::<bool>(),
        ) {
            let raw = format!("{username}:{password}");
            let encoded = if padded { STANDARD.encode(&raw) } else { STANDARD_NO_PAD.encode(&raw) };
            let json = serde_json::json!({ "auths": { "ghcr.io": { "auth": encoded } } });
            let config = DockerConfig::parse(json.to_string().as_bytes()).unwrap();
            prop_assert_eq!(config.for_host("ghcr.io"), Some(&cred(&username, &password)));
        }

        #[test]
        fn errors_never_show_the_password(password in "[A-Za-z0-9]{12,40}") {
            // A password-only entry is skipped; its report must not echo the password.
            let json = serde_json::json!({ "auths": { "ghcr.io": { "password": password.clone() } } });
            let config = DockerConfig::parse(json.to_string().as_bytes()).unwrap();
            prop_assert!(config.is_empty());
            prop_assert_eq!(config.skipped().len(), 1);
            let shown = format!("{} {:?} {config:?}", config.skipped()[0], config.skipped()[0]);
            prop_assert!(!shown.contains(&password));
        }
    }
}
