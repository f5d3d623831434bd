//! `DockerConfig::parse` on raw bytes and on configs built from the input (which must load
//! and find every entry by host), bad entries that are skipped and whose reports must not
//! show a password, and the base64 `auth` encoding.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use pullgate_credentials::{Credential, DockerConfig};

#[derive(Debug, Arbitrary)]
enum Input {
    Raw(Vec<u8>),
    Built { entries: Vec<Entry>, legacy: bool },
    Leak { entries: Vec<Entry>, bad: Vec<u8> },
    Base64(String),
}

#[derive(Debug, Arbitrary)]
struct Entry {
    host: String,
    port: Option<u16>,
    username: String,
    password: String,
    how: u8,
}

impl Entry {
    /// A registry host the parser must take: lower-case DNS characters, maybe a port.
    fn host(&self, i: usize) -> String {
        let name: String = self
            .host
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-')
            .collect();
        let name = name.trim_start_matches('.');
        let name = if name.is_empty() {
            format!("r{i}.example")
        } else {
            name.to_owned()
        };
        match self.port {
            Some(port) => format!("{name}:{port}"),
            None => name,
        }
    }

    fn credential(&self) -> Credential {
        let mut username = self.username.clone();
        // Inside `auth` the first colon ends the username.
        if self.how % 3 != 2 {
            username.retain(|c| c != ':');
        }
        Credential {
            username: if username.is_empty() {
                "u".into()
            } else {
                username
            },
            password: if self.password.is_empty() {
                "p".into()
            } else {
                self.password.clone()
            },
        }
    }
}

fn key(host: &str, how: u8) -> String {
    match (how / 3) % 5 {
        0 => host.to_owned(),
        1 => format!("https://{host}"),
        2 => format!("http://{}/", host.to_ascii_uppercase()),
        3 => format!("{host}/v1/"),
        _ => format!("HTTPS://{host}/v2/"),
    }
}

fn entry(c: &Credential, how: u8) -> serde_json::Value {
    match how % 3 {
        0 => serde_json::json!({ "auth": c.to_base64() }),
        1 => serde_json::json!({ "auth": c.to_base64().trim_end_matches('='), "email": "" }),
        _ => serde_json::json!({ "username": c.username, "password": c.password }),
    }
}

/// Hosts made unique the way the parser folds them (Hub aliases are one registry).
fn unique(entries: &[Entry]) -> BTreeMap<String, (String, &Entry)> {
    let mut by_host = BTreeMap::new();
    for (i, e) in entries.iter().enumerate().take(32) {
        let host = e.host(i);
        by_host
            .entry(pullgate_oci::canonical_host(&host))
            .or_insert((host, e));
    }
    by_host
}

fuzz_target!(|input: Input| match input {
    Input::Raw(bytes) => {
        let Ok(config) = DockerConfig::parse(&bytes) else {
            return;
        };
        assert_eq!(config.entries().count(), config.len());
        for e in config.all_entries() {
            assert!(!e.host.is_empty());
            assert!(!e.credential.username.is_empty() && !e.credential.password.is_empty());
            if e.path.is_none() {
                // Aliases of one key may hold several credentials; the lookup gives the first.
                let found = config.for_host(e.host).expect(e.host);
                assert!(config.entries().any(|(_, c)| c == found), "{}", e.host);
            }
        }
    }
    Input::Built { entries, legacy } => {
        let by_host = unique(&entries);
        let mut auths = serde_json::Map::new();
        for (host, e) in by_host.values() {
            auths.insert(key(host, e.how), entry(&e.credential(), e.how));
        }
        let doc = if legacy {
            serde_json::Value::Object(auths)
        } else {
            serde_json::json!({ "auths": auths })
        };
        let text = doc.to_string();
        let config =
            DockerConfig::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text} refused: {e}"));
        assert_eq!(config.len(), by_host.len());
        for (host, e) in by_host.values() {
            assert_eq!(
                config.for_host(host),
                Some(&e.credential()),
                "{host} in {text}"
            );
        }
    }
    Input::Leak { entries, bad } => {
        // Passwords no registry key and no message can contain: keys are lower- or
        // upper-case only, and "Sec" is in no error text.
        let secret =
            |e: &Entry| format!("Sec{:02x?}", e.password.as_bytes()).replace([' ', ','], "");
        let by_host = unique(&entries);
        let mut auths = serde_json::Map::new();
        for (i, (host, e)) in by_host.values().enumerate() {
            let password = secret(e);
            let value = match bad.get(i).copied().unwrap_or(0) % 4 {
                0 => serde_json::json!({ "password": password }),
                1 => serde_json::json!({ "auth": password }),
                2 => serde_json::json!({ "username": [password] }),
                _ => serde_json::json!([password]),
            };
            auths.insert(key(host, e.how), value);
        }
        if auths.is_empty() {
            return;
        }
        let written = auths.len();
        let text = serde_json::json!({ "auths": auths }).to_string();
        // Every entry is bad: each is skipped, none is fatal, and no report shows a secret.
        let config = DockerConfig::parse(text.as_bytes()).expect(&text);
        assert!(config.is_empty(), "{text}");
        assert_eq!(config.skipped().len(), written, "{text}");
        let reports: Vec<String> = config.skipped().iter().map(|s| s.to_string()).collect();
        let shown = format!("{config:?} {}", reports.join(" "));
        for (_, e) in by_host.values() {
            assert!(!shown.contains(&secret(e)), "{shown}");
        }
    }
    Input::Base64(s) => {
        if let Ok(c) = Credential::from_base64(&s) {
            assert!(!c.username.contains(':'));
            assert_eq!(Credential::from_base64(&c.to_base64()), Ok(c));
        }
    }
});
