//! `pullgate check-config`: validate a configuration and print the settings it yields, as
//! TOML that is itself a valid configuration. Paths of secrets are printed, never what they
//! hold; each mounted file is looked at and its state reported on standard error, without
//! failing the check (a config is usually checked where the secrets are not mounted).

use std::path::Path;
use std::time::Duration;

use pullgate_auth::Scheme;
use pullgate_credentials::SecretSource;
use pullgate_server::Tls;
use pullgate_trust::KeySet;
use toml::{Table, Value};

use crate::config::Settings;
use crate::units::format_size;

/// The effective settings as a TOML document.
pub fn render(s: &Settings) -> String {
    let mut doc = Table::new();

    let mut server = Table::new();
    server.insert("listen".into(), s.listen.to_string().into());
    server.insert(
        "header_read_timeout".into(),
        dur(s.header_read_timeout).into(),
    );
    server.insert("idle_timeout".into(), dur(s.idle_timeout).into());
    server.insert("drain_timeout".into(), dur(s.drain_timeout).into());
    server.insert(
        "max_connections".into(),
        i64::try_from(s.max_connections).unwrap_or(i64::MAX).into(),
    );
    server.insert(
        "max_connections_per_address".into(),
        i64::try_from(s.max_connections_per_address)
            .unwrap_or(i64::MAX)
            .into(),
    );
    server.insert(
        "connection_limit_exempt".into(),
        nets(&s.connection_limit_exempt),
    );
    server.insert("trusted_proxies".into(), nets(&s.trusted_proxies));
    if let Some(tls) = &s.tls {
        let mut t = Table::new();
        t.insert("cert".into(), path(&tls.cert));
        t.insert("key".into(), path(&tls.key));
        server.insert("tls".into(), Value::Table(t));
    }
    doc.insert("server".into(), Value::Table(server));

    let mut cache = Table::new();
    cache.insert("dir".into(), path(&s.cache_dir));
    cache.insert("tag_ttl".into(), dur(s.tag_ttl).into());
    if let Some(l) = &s.cache_limits {
        cache.insert("max_size".into(), format_size(l.max_bytes()).into());
        cache.insert("high_watermark".into(), l.high().into());
        cache.insert("low_watermark".into(), l.low().into());
    }
    cache.insert("max_blob_size".into(), format_size(s.max_blob_size).into());
    cache.insert(
        "max_fills_per_client".into(),
        (s.max_fills_per_client as i64).into(),
    );
    cache.insert("negative_ttl".into(), dur(s.negative_ttl).into());
    doc.insert("cache".into(), Value::Table(cache));

    let upstreams = s
        .upstreams
        .iter()
        .map(|u| {
            let mut t = Table::new();
            t.insert("name".into(), u.name.to_string().into());
            t.insert("url".into(), u.url.clone().into());
            if let Some(c) = &u.credentials {
                t.insert("credentials".into(), path(c));
            }
            t.insert("connect_timeout".into(), dur(u.connect_timeout).into());
            t.insert("read_timeout".into(), dur(u.read_timeout).into());
            let realms = u.token_realms.iter().map(|r| Value::from(r.as_str()));
            t.insert("token_realms".into(), Value::Array(realms.collect()));
            if let Some(allow) = u.allow_private_redirects {
                t.insert("allow_private_redirects".into(), allow.into());
            }
            Value::Table(t)
        })
        .collect();
    doc.insert("upstream".into(), Value::Array(upstreams));

    let a = &s.auth;
    let mut auth = Table::new();
    auth.insert(
        "client_secrets".into(),
        Value::Array(a.client_secrets.iter().map(|p| path(p)).collect()),
    );
    auth.insert("anonymous".into(), a.anonymous.into());
    auth.insert(
        "scheme".into(),
        match a.scheme {
            Scheme::Basic => "basic",
            Scheme::Token => "token",
        }
        .into(),
    );
    auth.insert(
        "mirror_hosts".into(),
        Value::Array(a.mirror_hosts.iter().map(|h| h.clone().into()).collect()),
    );
    auth.insert("service".into(), a.service.clone().into());
    auth.insert("token_ttl".into(), dur(a.token_ttl).into());
    if let Some(k) = &a.signing_key {
        auth.insert("signing_key".into(), path(k));
    }
    if let Some(r) = &a.realm {
        auth.insert("realm".into(), r.as_str().into());
    }
    auth.insert(
        "max_failures".into(),
        i64::from(a.throttle.max_failures).into(),
    );
    auth.insert(
        "max_user_failures".into(),
        i64::from(a.throttle.max_user_failures).into(),
    );
    auth.insert(
        "max_global_failures".into(),
        i64::from(a.throttle.max_global_failures).into(),
    );
    auth.insert("failure_window".into(), dur(a.throttle.window).into());
    auth.insert("block".into(), dur(a.throttle.block).into());
    auth.insert("trusted_for".into(), dur(a.throttle.trusted_for).into());
    auth.insert(
        "max_tracked".into(),
        i64::try_from(a.throttle.max_tracked)
            .unwrap_or(i64::MAX)
            .into(),
    );
    let rules: Vec<Value> = a
        .rules
        .iter()
        .map(|r| {
            let mut t = Table::new();
            t.insert("user".into(), r.user.clone().into());
            t.insert(
                "repositories".into(),
                Value::Array(r.patterns.iter().map(|p| p.clone().into()).collect()),
            );
            Value::Table(t)
        })
        .collect();
    if !rules.is_empty() {
        auth.insert("rule".into(), Value::Array(rules));
    }
    doc.insert("auth".into(), Value::Table(auth));

    let mut audit = Table::new();
    audit.insert("enabled".into(), s.audit.enabled.into());
    if let Some(p) = &s.audit.path {
        audit.insert("path".into(), path(p));
    }
    doc.insert("audit".into(), Value::Table(audit));

    // The trust section as written, rules in file order (first match wins): it is already
    // plain data, and printing it back keeps this output a valid configuration.
    match Value::try_from(&s.trust.config) {
        Ok(Value::Table(trust)) => {
            doc.insert("trust".into(), Value::Table(trust));
        }
        _ => {
            doc.insert("trust".into(), Value::Table(Table::new()));
        }
    }

    toml::to_string(&doc).unwrap_or_else(|e| format!("# cannot render the settings: {e}\n"))
}

/// One line per file the settings name: loaded, or why not. Never the contents.
pub fn files(s: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    let mut secret = |what: &str, p: &Path| {
        out.push(match SecretSource::open(p) {
            Ok(src) => {
                let current = src.current();
                let mut line = format!(
                    "ok       {what} {}: {} registries",
                    p.display(),
                    current.len()
                );
                // The key and the reason only, as in the log: never the entry's value.
                for entry in current.skipped() {
                    line.push_str(&format!(
                        "\nwarning  {what} {}: skipped {entry}",
                        p.display()
                    ));
                }
                line
            }
            Err(e) => format!("warning  {what} {}: {e}", p.display()),
        })
    };
    for p in &s.auth.client_secrets {
        secret("client secret", p);
    }
    for u in &s.upstreams {
        if let Some(p) = &u.credentials {
            secret(&format!("upstream {} credentials", u.name), p);
        }
    }
    if let Some(k) = &s.auth.signing_key {
        out.push(match std::fs::metadata(k) {
            Ok(m) if m.is_file() => format!("ok       signing key {}", k.display()),
            Ok(_) => format!("warning  signing key {}: not a file", k.display()),
            Err(e) => format!("warning  signing key {}: {e}", k.display()),
        });
    }
    trust_files(s, &mut out);
    if let Some(tls) = &s.tls {
        out.push(match Tls::load(tls.clone()) {
            Ok(_) => format!("ok       TLS certificate {}", tls.cert.display()),
            Err(e) => format!("warning  TLS: {e}"),
        });
    }
    out
}

/// The trust rules in order, then each key and CA: loaded (name, algorithm, fingerprint;
/// never the key itself) or why not.
fn trust_files(s: &Settings, out: &mut Vec<String>) {
    for rule in s.trust.policy.rules() {
        out.push(format!(
            "rule     {}: {:?}, {:?}",
            rule.description(),
            rule.action(),
            rule.mode()
        ));
    }
    if s.trust.is_active() {
        out.push(format!(
            "rule     trust.unmatched: {:?}",
            s.trust.policy.unmatched()
        ));
    }
    for k in &s.trust.config.key {
        match KeySet::open(std::slice::from_ref(k), &[]) {
            Ok(set) => {
                let keys = set.current();
                let loaded = keys.keys(&k.name);
                if loaded.is_empty() {
                    out.push(format!(
                        "warning  trust key {} {}: no key",
                        k.name,
                        k.path.display()
                    ));
                }
                for key in loaded {
                    out.push(format!(
                        "ok       trust key {} {}: {:?} {}",
                        k.name,
                        k.path.display(),
                        key.algorithm(),
                        key.fingerprint()
                    ));
                }
            }
            Err(e) => out.push(format!(
                "warning  trust key {} {}: {e}",
                k.name,
                k.path.display()
            )),
        }
    }
    for c in &s.trust.config.ca {
        out.push(match KeySet::open(&[], std::slice::from_ref(c)) {
            Ok(set) => format!(
                "ok       trust CA {} {}: {} certificates",
                c.name,
                c.path.display(),
                set.current().ca(&c.name).map_or(0, |ca| ca.len())
            ),
            Err(e) => format!("warning  trust CA {} {}: {e}", c.name, c.path.display()),
        });
    }
}

fn dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn nets(n: &[pullgate_server::IpNet]) -> Value {
    Value::Array(n.iter().map(|n| n.to_string().into()).collect())
}

fn path(p: &Path) -> Value {
    p.display().to_string().into()
}
