//! The TOML configuration: parsed strictly (`deny_unknown_fields`), then validated into
//! the typed settings each crate takes. The default is `config/pullgate.toml`, embedded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = include_str!("../config/pullgate.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: ServerSection,
    pub cache: CacheSection,
    #[serde(default)]
    pub upstream: Vec<UpstreamSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub listen: String,
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout: String,
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    pub dir: PathBuf,
    #[serde(default = "default_tag_ttl")]
    pub tag_ttl: String,
}

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
    pub header_read_timeout: Duration,
    pub drain_timeout: Duration,
    pub cache_dir: PathBuf,
    pub tag_ttl: Duration,
    pub upstreams: Vec<UpstreamSettings>,
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
        Ok(Settings {
            listen,
            header_read_timeout: duration(
                "server.header_read_timeout",
                &self.server.header_read_timeout,
            )?,
            drain_timeout: duration("server.drain_timeout", &self.server.drain_timeout)?,
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
    fn every_file_in_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                FileConfig::load(Some(&path))
                    .and_then(|c| c.into_settings(Overrides::default()))
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 1);
    }
}
