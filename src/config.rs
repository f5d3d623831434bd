//! The TOML configuration: parsed strictly (`deny_unknown_fields`), then validated into
//! the typed settings each crate takes. The default is `config/pullgate.toml`, embedded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pullgate_auth::{Rule, Scheme, ThrottleConfig};
use pullgate_server::TlsFiles;
use pullgate_store::Limits;
use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = include_str!("../config/pullgate.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: ServerSection,
    pub cache: CacheSection,
    #[serde(default)]
    pub upstream: Vec<UpstreamSection>,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub audit: AuditSection,
}

/// Who may pull. With no `client_secrets` the mirror is anonymous, which is allowed only on
/// a loopback address unless `anonymous = true` says so explicitly.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Mounted `kubernetes.io/dockerconfigjson` secret directories, or files.
    #[serde(default)]
    pub client_secrets: Vec<PathBuf>,
    pub anonymous: Option<bool>,
    /// "basic" or "token".
    pub scheme: Option<String>,
    /// Host names clients use for the mirror; a secret entry keyed by one grants every upstream.
    #[serde(default)]
    pub mirror_hosts: Vec<String>,
    pub service: Option<String>,
    pub token_ttl: Option<String>,
    /// A file (mounted secret) holding the token signing key; generated at start-up if unset.
    pub signing_key: Option<PathBuf>,
    pub max_failures: Option<u32>,
    pub max_user_failures: Option<u32>,
    pub max_global_failures: Option<u32>,
    pub failure_window: Option<String>,
    pub block: Option<String>,
    /// How long a login keeps its (address, user) pair exempt from blocks others earned.
    pub trusted_for: Option<String>,
    /// Addresses, user names and pairs the throttle tracks, each.
    pub max_tracked: Option<usize>,
    #[serde(default)]
    pub rule: Vec<RuleSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    pub user: String,
    /// `docker.io/library/*` (one component), `ghcr.io/team-a/**` (any depth), or exact.
    pub repositories: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Off only when set to false.
    pub enabled: Option<bool>,
    /// Append JSON lines here instead of standard output.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub listen: String,
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout: String,
    /// No request in flight and no bytes moving, or a response the client reads nothing
    /// of, for this long: the connection is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: String,
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: String,
    /// Connections served at once; more wait in the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTPS with these PEM files (a mounted `kubernetes.io/tls` secret); plain HTTP if absent.
    pub tls: Option<TlsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Certificate chain, leaf first (`tls.crt`).
    pub cert: PathBuf,
    /// Its private key (`tls.key`).
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    pub dir: PathBuf,
    #[serde(default = "default_tag_ttl")]
    pub tag_ttl: String,
    /// `"50GiB"`, `"500MB"`: the cache evicts least recently used blobs to stay under it.
    /// Unset: it only grows.
    pub max_size: Option<String>,
    /// Fraction of `max_size` above which eviction starts.
    pub high_watermark: Option<f64>,
    /// Fraction of `max_size` eviction brings usage down to.
    pub low_watermark: Option<f64>,
}

pub const DEFAULT_HIGH_WATERMARK: f64 = 0.95;
pub const DEFAULT_LOW_WATERMARK: f64 = 0.85;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub name: String,
    pub url: String,
    pub credentials: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    #[serde(default = "default_read_timeout")]
    pub read_timeout: String,
}

fn default_header_timeout() -> String {
    "30s".into()
}
fn default_idle_timeout() -> String {
    "60s".into()
}
fn default_max_connections() -> usize {
    4096
}
fn default_drain_timeout() -> String {
    "30s".into()
}
fn default_tag_ttl() -> String {
    "60s".into()
}
fn default_connect_timeout() -> String {
    "10s".into()
}
fn default_read_timeout() -> String {
    "30s".into()
}

/// Settings after validation: every value typed, every rule checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_connections: usize,
    pub cache_dir: PathBuf,
    pub tag_ttl: Duration,
    /// `None`: unbounded.
    pub cache_limits: Option<Limits>,
    pub upstreams: Vec<UpstreamSettings>,
    pub auth: AuthSettings,
    pub audit: AuditSettings,
}

/// `[auth]`, validated, in `pullgate-auth`'s own types where it has them.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub client_secrets: Vec<PathBuf>,
    pub anonymous: bool,
    pub scheme: Scheme,
    pub mirror_hosts: Vec<String>,
    pub service: String,
    pub token_ttl: Duration,
    pub signing_key: Option<PathBuf>,
    pub throttle: ThrottleConfig,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub enabled: bool,
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub name: String,
    pub url: String,
    pub credentials: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

/// Command-line values that override the file.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub upstream: Option<String>,
}

impl FileConfig {
    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).context("invalid configuration")
    }

    pub fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            None => Self::parse(DEFAULT_CONFIG).context("the embedded default configuration"),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                Self::parse(&text).with_context(|| format!("in {}", p.display()))
            }
        }
    }

    pub fn into_settings(self, o: Overrides) -> Result<Settings> {
        let listen_text = o.listen.unwrap_or(self.server.listen);
        let listen: SocketAddr = listen_text
            .parse()
            .with_context(|| format!("server.listen: {listen_text:?} is not an address:port"))?;
        let mut upstreams = self
            .upstream
            .into_iter()
            .map(UpstreamSettings::try_from)
            .collect::<Result<Vec<_>>>()?;
        if let Some(url) = o.upstream {
            check_url(&url).context("--upstream")?;
            match upstreams.first_mut() {
                Some(first) => first.url = url,
                None => upstreams.push(UpstreamSettings {
                    name: "docker.io".into(),
                    url,
                    credentials: None,
                    connect_timeout: Duration::from_secs(10),
                    read_timeout: Duration::from_secs(30),
                }),
            }
        }
        if upstreams.is_empty() {
            bail!("at least one [[upstream]] is required");
        }
        for (i, u) in upstreams.iter().enumerate() {
            if upstreams[..i]
                .iter()
                .any(|v| v.name.eq_ignore_ascii_case(&u.name))
            {
                bail!("upstream name {:?} is configured twice", u.name);
            }
        }
        let auth = auth_settings(self.auth, listen, &upstreams)?;
        let cache_limits = cache_limits(&self.cache)?;
        Ok(Settings {
            cache_limits,
            auth,
            audit: AuditSettings {
                enabled: self.audit.enabled.unwrap_or(true),
                path: self.audit.path,
            },
            listen,
            tls: self.server.tls.map(|t| TlsFiles {
                cert: t.cert,
                key: t.key,
            }),
            header_read_timeout: duration(
                "server.header_read_timeout",
                &self.server.header_read_timeout,
            )?,
            idle_timeout: match duration("server.idle_timeout", &self.server.idle_timeout)? {
                d if d >= Duration::from_millis(100) => d,
                d => bail!("server.idle_timeout: {d:?} is too short; 100ms at least"),
            },
            drain_timeout: duration("server.drain_timeout", &self.server.drain_timeout)?,
            max_connections: match self.server.max_connections {
                n @ 1..=1_000_000 => n,
                n => bail!("server.max_connections: {n} is not between 1 and 1000000"),
            },
            cache_dir: o.cache_dir.unwrap_or(self.cache.dir),
            tag_ttl: duration("cache.tag_ttl", &self.cache.tag_ttl)?,
            upstreams,
        })
    }
}

impl TryFrom<UpstreamSection> for UpstreamSettings {
    type Error = anyhow::Error;
    fn try_from(u: UpstreamSection) -> Result<Self> {
        let valid_name = !u.name.is_empty()
            && u.name.len() <= 253
            && u.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
        if !valid_name {
            bail!(
                "upstream name {:?} must be a registry host such as docker.io",
                u.name
            );
        }
        check_url(&u.url).with_context(|| format!("upstream {}", u.name))?;
        Ok(UpstreamSettings {
            connect_timeout: duration("upstream.connect_timeout", &u.connect_timeout)?,
            read_timeout: duration("upstream.read_timeout", &u.read_timeout)?,
            name: u.name,
            url: u.url.trim_end_matches('/').to_owned(),
            credentials: u.credentials,
        })
    }
}

fn auth_settings(
    a: AuthSection,
    listen: SocketAddr,
    upstreams: &[UpstreamSettings],
) -> Result<AuthSettings> {
    let anonymous = match (a.anonymous, a.client_secrets.is_empty()) {
        (Some(explicit), _) => explicit,
        // No secrets: nobody could ever log in, so the mirror is open; that is a safe
        // default only where nobody else can reach it.
        (None, true) if listen.ip().is_loopback() => true,
        (None, true) => bail!(
            "refusing to serve anonymously on {listen}, which is not a loopback address: \
             set [auth] client_secrets to require credentials, or [auth] anonymous = true \
             to let anyone who can reach it pull"
        ),
        (None, false) => false,
    };
    if !anonymous && a.client_secrets.is_empty() {
        bail!("[auth] anonymous = false needs at least one path in [auth] client_secrets");
    }
    let scheme = match a.scheme.as_deref().unwrap_or("basic") {
        "basic" => Scheme::Basic,
        "token" => Scheme::Token,
        other => bail!("[auth] scheme = {other:?}: use \"basic\" or \"token\""),
    };
    let mut rules = Vec::new();
    for r in a.rule {
        if r.user.is_empty() || r.repositories.is_empty() {
            bail!("[[auth.rule]] needs a user and at least one repository pattern");
        }
        for p in &r.repositories {
            let first = p.split('/').next().unwrap_or("");
            let known = upstreams.iter().any(|u| u.name.eq_ignore_ascii_case(first));
            if !known {
                bail!(
                    "[[auth.rule]] for {:?}: pattern {p:?} must start with a configured upstream name",
                    r.user
                );
            }
        }
        rules.push(Rule {
            user: r.user,
            patterns: r.repositories,
        });
    }
    let mut mirror_hosts = a.mirror_hosts;
    // Whatever address clients connect to is one of the mirror's names.
    mirror_hosts.push(listen.to_string());
    if listen.ip().is_loopback() {
        mirror_hosts.push(format!("localhost:{}", listen.port()));
    }
    let mut seen = std::collections::HashSet::new();
    mirror_hosts.retain(|h| seen.insert(h.to_ascii_lowercase()));
    Ok(AuthSettings {
        client_secrets: a.client_secrets,
        anonymous,
        scheme,
        mirror_hosts,
        service: a.service.unwrap_or_else(|| "pullgate".into()),
        token_ttl: duration("auth.token_ttl", a.token_ttl.as_deref().unwrap_or("5m"))?,
        signing_key: a.signing_key,
        throttle: ThrottleConfig {
            max_failures: a.max_failures.unwrap_or(10).max(1),
            window: duration(
                "auth.failure_window",
                a.failure_window.as_deref().unwrap_or("60s"),
            )?,
            block: duration("auth.block", a.block.as_deref().unwrap_or("60s"))?,
            max_user_failures: a.max_user_failures.unwrap_or(10).max(1),
            max_global_failures: a.max_global_failures.unwrap_or(1000).max(1),
            trusted_for: duration(
                "auth.trusted_for",
                a.trusted_for.as_deref().unwrap_or("24h"),
            )?,
            max_tracked: a.max_tracked.unwrap_or(10_000).max(1),
        },
        rules,
    })
}

fn cache_limits(c: &CacheSection) -> Result<Option<Limits>> {
    let Some(text) = &c.max_size else {
        if c.high_watermark.is_some() || c.low_watermark.is_some() {
            bail!("cache.high_watermark and cache.low_watermark need cache.max_size");
        }
        return Ok(None);
    };
    let max = parse_size(text)
        .with_context(|| format!("cache.max_size: {text:?} is not a size like \"50GiB\""))?;
    let high = c.high_watermark.unwrap_or(DEFAULT_HIGH_WATERMARK);
    let low = c.low_watermark.unwrap_or(DEFAULT_LOW_WATERMARK);
    Limits::new(max, high, low)
        .map(Some)
        .context("cache.high_watermark, cache.low_watermark")
}

/// A size in bytes from `"50GiB"`, `"1.5 GiB"`, `"500MB"`, `"4096"`: binary units (KiB,
/// MiB, GiB, TiB) are powers of 1024, decimal ones (KB, MB, GB, TB, and K, M, G, T) powers
/// of 1000, `B` or no unit bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000_u64.pow(2),
        "g" | "gb" => 1000_u64.pow(3),
        "t" | "tb" => 1000_u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => bail!("unknown unit {other:?}"),
    };
    let bytes = match number.split_once('.') {
        None => number.parse::<u64>().ok().and_then(|n| n.checked_mul(unit)),
        Some((whole, frac)) if !frac.is_empty() && frac.len() <= 9 => {
            let whole: u64 = if whole.is_empty() { 0 } else { whole.parse()? };
            let scale = 10_u64.pow(frac.len() as u32);
            let frac: u64 = frac.parse()?;
            whole.checked_mul(unit).and_then(|w| {
                // unit * frac fits: unit <= 2^40 and frac < 10^9 < 2^30.
                w.checked_add(unit * frac / scale)
            })
        }
        Some(_) => None,
    };
    match bytes {
        Some(b) if b > 0 => Ok(b),
        Some(_) => bail!("the size must be above zero"),
        None => bail!("not a number of bytes"),
    }
}

/// The exact size in the largest binary unit that divides it: `parse_size` reads it back.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

fn check_url(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .with_context(|| format!("{url:?} must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains('@') {
        bail!("{url:?} must name a host (and no user info: use a credentials secret)");
    }
    Ok(())
}

fn duration(field: &str, text: &str) -> Result<Duration> {
    humantime::parse_duration(text)
        .with_context(|| format!("{field}: {text:?} is not a duration like \"60s\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_what_the_issue_says() {
        let s = FileConfig::load(None)
            .unwrap()
            .into_settings(Overrides::default())
            .unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(s.cache_dir, PathBuf::from("./pullgate-data"));
        assert_eq!(s.tag_ttl, Duration::from_secs(60));
        assert_eq!(s.upstreams.len(), 1);
        assert_eq!(s.upstreams[0].name, "docker.io");
        assert_eq!(s.upstreams[0].url, "https://registry-1.docker.io");
    }

    #[test]
    fn flags_override_the_file() {
        let s = FileConfig::load(None)
            .unwrap()
            .into_settings(Overrides {
                listen: Some("127.0.0.1:0".into()),
                cache_dir: Some("/tmp/x".into()),
                upstream: Some("http://127.0.0.1:5001/".into()),
            })
            .unwrap();
        assert_eq!(s.listen.port(), 0);
        assert_eq!(s.cache_dir, PathBuf::from("/tmp/x"));
        assert_eq!(s.upstreams[0].url, "http://127.0.0.1:5001/");
    }

    #[test]
    fn rejects_bad_configs() {
        let base = "[server]\nlisten = \"127.0.0.1:5000\"\n[cache]\ndir = \"d\"\n";
        let bad = [
            format!("{base}[[upstream]]\nname = \"a\"\nurl = \"ftp://x\"\n"),
            format!("{base}[[upstream]]\nname = \"a\"\nurl = \"https://u:p@x\"\n"),
            format!("{base}[[upstream]]\nname = \"a b\"\nurl = \"https://x\"\n"),
            format!("{base}[[upstream]]\nname = \"a\"\nurl = \"https://x\"\n[[upstream]]\nname = \"A\"\nurl = \"https://y\"\n"),
            format!("{base}[[upstream]]\nname = \"a\"\nurl = \"https://x\"\nbogus = 1\n"),
            base.to_string(),
            format!("{base}tag_ttl = \"soon\"\n[[upstream]]\nname = \"a\"\nurl = \"https://x\"\n"),
        ];
        for text in bad {
            let r = FileConfig::parse(&text).and_then(|c| c.into_settings(Overrides::default()));
            assert!(r.is_err(), "accepted:\n{text}");
        }
    }

    #[test]
    fn sizes_and_cache_limits() {
        let gib = 1 << 30;
        for (text, want) in [
            ("50GiB", 50 * gib),
            ("50 GiB", 50 * gib),
            ("1.5GiB", 3 * gib / 2),
            ("500MB", 500_000_000),
            ("2M", 2_000_000),
            ("4096", 4096),
            ("10B", 10),
            ("64kib", 65536),
            ("1TiB", 1 << 40),
        ] {
            assert_eq!(parse_size(text).unwrap(), want, "{text}");
        }
        for bad in [
            "",
            "GiB",
            "0",
            "0GiB",
            "1.GiB",
            "-1GiB",
            "1PB",
            "1e9",
            "99999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        for n in [1, 1023, 1024, 3 << 29, 50 * gib, 1 << 40, 12345] {
            assert_eq!(
                parse_size(&format_size(n)).unwrap(),
                n,
                "{}",
                format_size(n)
            );
        }
        assert_eq!(format_size(50 * gib), "50GiB");
        assert_eq!(format_size(1536), "1536B");

        let cache = |extra: &str| {
            FileConfig::parse(&format!(
                "[server]\nlisten = \"127.0.0.1:5000\"\n[cache]\ndir = \"d\"\n{extra}\n[[upstream]]\nname = \"a\"\nurl = \"https://x\"\n"
            ))
            .and_then(|c| c.into_settings(Overrides::default()))
        };
        assert_eq!(cache("").unwrap().cache_limits, None);
        let l = cache("max_size = \"10GiB\"").unwrap().cache_limits.unwrap();
        assert_eq!(l.max_bytes(), 10 * gib);
        assert_eq!((l.high(), l.low()), (0.95, 0.85));
        let l = cache("max_size = \"100MB\"\nhigh_watermark = 0.9\nlow_watermark = 0.5")
            .unwrap()
            .cache_limits
            .unwrap();
        assert_eq!((l.high_bytes(), l.low_bytes()), (90_000_000, 50_000_000));
        for bad in [
            "max_size = \"lots\"",
            "max_size = \"1GiB\"\nhigh_watermark = 0.5\nlow_watermark = 0.6",
            "max_size = \"1GiB\"\nhigh_watermark = 1.5",
            "max_size = \"1GiB\"\nlow_watermark = 0.99",
            "high_watermark = 0.9",
        ] {
            assert!(cache(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn anonymous_only_on_loopback_unless_explicit() {
        let cfg = |listen: &str, auth: &str| {
            FileConfig::parse(&format!(
                "[server]\nlisten = \"{listen}\"\n[cache]\ndir = \"d\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n[auth]\n{auth}"
            ))
            .and_then(|c| c.into_settings(Overrides::default()))
        };
        assert!(cfg("127.0.0.1:5000", "").unwrap().auth.anonymous);
        let err = cfg("0.0.0.0:5000", "").unwrap_err().to_string();
        assert!(
            err.contains("client_secrets") && err.contains("anonymous = true"),
            "{err}"
        );
        assert!(
            cfg("0.0.0.0:5000", "anonymous = true")
                .unwrap()
                .auth
                .anonymous
        );
        let s = cfg("0.0.0.0:5000", "client_secrets = [\"/s\"]").unwrap();
        assert!(!s.auth.anonymous);
        assert!(s.auth.mirror_hosts.contains(&"0.0.0.0:5000".to_owned()));
        assert!(cfg("0.0.0.0:5000", "anonymous = false").is_err());
        assert!(cfg("127.0.0.1:5000", "scheme = \"digest\"").is_err());
        assert!(cfg(
            "127.0.0.1:5000",
            "[[auth.rule]]\nuser = \"ci\"\nrepositories = [\"quay.io/x/*\"]"
        )
        .is_err());
        let s = cfg(
            "127.0.0.1:5000",
            "scheme = \"token\"\ntoken_ttl = \"2m\"\n[[auth.rule]]\nuser = \"ci\"\nrepositories = [\"docker.io/library/*\"]",
        )
        .unwrap();
        assert_eq!(s.auth.scheme, Scheme::Token);
        assert_eq!(s.auth.token_ttl, Duration::from_secs(120));
        assert_eq!(s.auth.rules.len(), 1);
    }

    /// `check-config` prints TOML that is a configuration yielding the same settings.
    #[test]
    fn effective_settings_round_trip() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for path in [
            root.join("pullgate.toml"),
            root.join("examples/pullgate-auth.toml"),
        ] {
            let settings = FileConfig::load(Some(&path))
                .and_then(|c| c.into_settings(Overrides::default()))
                .unwrap();
            let printed = crate::check::render(&settings);
            let again = FileConfig::parse(&printed)
                .and_then(|c| c.into_settings(Overrides::default()))
                .unwrap_or_else(|e| panic!("{}: {e:#}\n{printed}", path.display()));
            assert_eq!(crate::check::render(&again), printed, "{}", path.display());
            assert_eq!(format!("{again:?}"), format!("{settings:?}"));
        }
        let tls = FileConfig::parse(
            "[server]\nlisten = \"127.0.0.1:1\"\n[server.tls]\ncert = \"/c\"\nkey = \"/k\"\n[cache]\ndir = \"d\"\n[[upstream]]\nname = \"a\"\nurl = \"https://x\"\n",
        )
        .and_then(|c| c.into_settings(Overrides::default()))
        .unwrap();
        assert!(crate::check::render(&tls).contains("[server.tls]\ncert = \"/c\"\nkey = \"/k\""));
    }

    /// docs/configuration.md documents exactly the keys the structs accept, and its full
    /// example is a valid configuration.
    #[test]
    fn reference_documents_every_key() {
        use serde_aux::serde_introspection::serde_introspect;
        let doc = include_str!("../docs/configuration.md");
        let accepted: Vec<String> = [
            ("server", serde_introspect::<ServerSection>()),
            ("server.tls", serde_introspect::<TlsSection>()),
            ("cache", serde_introspect::<CacheSection>()),
            ("upstream", serde_introspect::<UpstreamSection>()),
            ("auth", serde_introspect::<AuthSection>()),
            ("auth.rule", serde_introspect::<RuleSection>()),
            ("audit", serde_introspect::<AuditSection>()),
        ]
        .iter()
        .flat_map(|(section, fields)| fields.iter().map(move |f| format!("{section}.{f}")))
        // Sub-tables are documented as sections of their own.
        .filter(|k| k != "server.tls" && k != "auth.rule")
        .collect();
        let top: Vec<&str> = serde_introspect::<FileConfig>().to_vec();
        assert_eq!(top, ["server", "cache", "upstream", "auth", "audit"]);

        let documented: Vec<String> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
            .map(str::to_owned)
            .collect();
        for key in &accepted {
            assert!(documented.contains(key), "{key} is not documented");
        }
        for key in &documented {
            assert!(
                accepted.contains(key),
                "{key} is documented but not accepted"
            );
        }
        assert_eq!(
            documented.len(),
            accepted.len(),
            "a key is documented twice"
        );

        let example = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("the complete example");
        let file: toml::Table = toml::from_str(example).unwrap();
        let s = FileConfig::parse(example)
            .and_then(|c| c.into_settings(Overrides::default()))
            .unwrap();
        assert!(s.tls.is_some() && s.audit.path.is_some() && !s.auth.anonymous);
        // The example sets every key.
        let mut set = Vec::new();
        for (section, value) in &file {
            let tables = match value {
                toml::Value::Array(a) => a.iter().filter_map(|v| v.as_table()).collect(),
                toml::Value::Table(t) => vec![t],
                _ => vec![],
            };
            for t in tables {
                for (k, v) in t {
                    match v {
                        toml::Value::Table(sub) => {
                            set.extend(sub.keys().map(|s| format!("{section}.{k}.{s}")))
                        }
                        toml::Value::Array(a)
                            if a.iter().all(|v| v.is_table()) && !a.is_empty() =>
                        {
                            for sub in a.iter().filter_map(|v| v.as_table()) {
                                set.extend(sub.keys().map(|s| format!("{section}.{k}.{s}")))
                            }
                        }
                        _ => set.push(format!("{section}.{k}")),
                    }
                }
            }
        }
        for key in &accepted {
            assert!(set.contains(key), "the complete example lacks {key}");
        }
    }

    #[test]
    fn every_file_in_config_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = 0;
        for dir in [root.clone(), root.join("examples")] {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                match path.extension().and_then(|e| e.to_str()) {
                    Some("toml") => {
                        FileConfig::load(Some(&path))
                            .and_then(|c| c.into_settings(Overrides::default()))
                            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                    }
                    Some("dockerconfigjson") => {
                        let c = pullgate_credentials::DockerConfig::load(&path)
                            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                        assert!(!c.is_empty());
                    }
                    _ => continue,
                }
                seen += 1;
            }
        }
        assert!(seen >= 4);
    }
}
