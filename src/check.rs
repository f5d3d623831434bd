//! `pullgate check-config`: validate a configuration and print the settings it yields, as
//! TOML that is itself a valid configuration. Paths of secrets are printed, never what they
//! hold; each mounted file is looked at and its state reported on standard error, without
//! failing the check (a config is usually checked where the secrets are not mounted).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use pullgate_auth::Scheme;
use pullgate_cluster::Members;
use pullgate_credentials::SecretSource;
use pullgate_mirror::TagTtl;
use pullgate_oci::{RepoName, Tag};
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
    cache.insert("tag_ttl".into(), dur(s.tag_policy.default_ttl()).into());
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
    let rules: Vec<Value> = s
        .tag_policy
        .rules()
        .iter()
        .map(|r| {
            let mut t = Table::new();
            let images = r.images.iter().map(|p| Value::from(p.as_str()));
            t.insert("images".into(), Value::Array(images.collect()));
            t.insert("ttl".into(), ttl(r.ttl).into());
            Value::Table(t)
        })
        .collect();
    if !rules.is_empty() {
        cache.insert("tag_rule".into(), Value::Array(rules));
    }
    doc.insert("cache".into(), Value::Table(cache));

    // Where the bucket is and where its credentials are read from: never their values.
    let mut storage = Table::new();
    match &s.storage {
        None => {
            storage.insert("backend".into(), "filesystem".into());
        }
        Some(st) => {
            let c = &st.config;
            storage.insert("backend".into(), "s3".into());
            let mut t = Table::new();
            t.insert("bucket".into(), c.bucket.clone().into());
            t.insert("prefix".into(), c.prefix.clone().into());
            if let Some(e) = &c.endpoint {
                t.insert("endpoint".into(), e.clone().into());
            }
            t.insert("region".into(), c.region.clone().into());
            t.insert("path_style".into(), c.path_style.into());
            // Unset: the standard AWS chain.
            if let Some(p) = &c.credentials {
                t.insert("credentials".into(), path(p));
            }
            if let Some(ca) = &c.ca_file {
                t.insert("ca".into(), path(ca));
            }
            t.insert("part_size".into(), format_size(c.part_size as u64).into());
            t.insert("parts_in_flight".into(), (c.parts_in_flight as i64).into());
            t.insert("max_uploads".into(), (st.max_uploads as i64).into());
            t.insert("timeout".into(), dur(c.timeout).into());
            storage.insert("s3".into(), Value::Table(t));
        }
    }
    doc.insert("storage".into(), Value::Table(storage));

    // The peers or the name they come from, this replica and its port; the key's path only.
    if let Some(c) = &s.cluster {
        let mut t = Table::new();
        match &c.members {
            Members::Static(peers) => {
                let list = peers.iter().map(|p| Value::from(p.as_str()));
                t.insert("peers".into(), Value::Array(list.collect()));
            }
            Members::Dns { name, refresh } => {
                t.insert("dns".into(), name.to_string().into());
                t.insert("refresh".into(), dur(*refresh).into());
            }
        }
        t.insert("listen".into(), c.listen.to_string().into());
        t.insert("advertise".into(), c.me.as_str().into());
        t.insert("key".into(), path(&c.key));
        doc.insert("cluster".into(), Value::Table(t));
    }

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
            if let Some(n) = u.max_concurrent_requests {
                t.insert(
                    "max_concurrent_requests".into(),
                    i64::try_from(n).unwrap_or(i64::MAX).into(),
                );
            }
            if let Some(b) = u.max_bandwidth {
                t.insert("max_bandwidth".into(), format_size(b).into());
            }
            t.insert(
                "ratelimit_warn_below".into(),
                i64::try_from(u.ratelimit_warn_below)
                    .unwrap_or(i64::MAX)
                    .into(),
            );
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

    let prefetch: Vec<Value> = s
        .prefetch
        .iter()
        .map(|r| {
            let mut t = Table::new();
            let images = r.images.iter().map(|i| Value::from(i.written.as_str()));
            t.insert("images".into(), Value::Array(images.collect()));
            let platforms = r.platforms.to_strings().into_iter().map(Value::from);
            t.insert("platforms".into(), Value::Array(platforms.collect()));
            t.insert("interval".into(), dur(r.interval).into());
            Value::Table(t)
        })
        .collect();
    if !prefetch.is_empty() {
        doc.insert("prefetch".into(), Value::Array(prefetch));
    }
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
    if let Some(st) = &s.storage {
        // Reads the credentials secret and the CA file as serving would; sends nothing.
        // Its errors name files and keys, never a value.
        out.push(match pullgate_store::S3::connect(&st.config) {
            Ok(_) => format!(
                "ok       storage.s3 bucket {} (credentials: {})",
                st.config.bucket,
                st.config
                    .credentials
                    .as_ref()
                    .map_or("the standard AWS chain".into(), |p| p.display().to_string())
            ),
            Err(e) => format!("warning  storage.s3: {e}"),
        });
    }
    if let Some(c) = &s.cluster {
        // Read as the internal port will read it; its errors name the file, never a byte.
        out.push(match pullgate_cluster::SharedKey::load(&c.key) {
            Ok(_) => format!("ok       cluster key {}", c.key.display()),
            Err(e) => format!("warning  cluster key: {e}"),
        });
    }
    if let Some(tls) = &s.tls {
        out.push(match Tls::load(tls.clone()) {
            Ok(_) => format!("ok       TLS certificate {}", tls.cert.display()),
            Err(e) => format!("warning  TLS: {e}"),
        });
    }
    out
}

/// How a tag rule's TTL is written in the file.
fn ttl(t: TagTtl) -> String {
    match t {
        TagTtl::Never => crate::units::tag_ttl::NEVER.to_owned(),
        TagTtl::After(d) => dur(d),
    }
}

fn ttl_words(t: TagTtl) -> String {
    match t {
        TagTtl::Never => "never revalidated (pinned)".to_owned(),
        TagTtl::After(d) => format!("revalidated after {}", dur(d)),
    }
}

/// An image as a user names it to the mirror (`alpine:3.20`, `ghcr.io/org/app:1.0`,
/// `registry.local:5000/x/y`), resolved as the mirror routes a request (`route.rs`): a
/// host-like first component naming a configured upstream, else the default upstream,
/// with Docker Hub's `library/`; no tag means `latest`. Returns (upstream, repository, tag).
pub fn resolve_image(s: &Settings, image: &str) -> Result<(String, String, String)> {
    let (name, tag) = match image.rsplit_once('/') {
        Some((head, last)) => match last.split_once(':') {
            Some((l, t)) => (format!("{head}/{l}"), t),
            None => (image.to_owned(), "latest"),
        },
        None => match image.split_once(':') {
            Some((n, t)) => (n.to_owned(), t),
            None => (image.to_owned(), "latest"),
        },
    };
    if name.contains('@') {
        bail!("{image:?}: a digest reference has no tag to decide for");
    }
    let tag = Tag::parse(tag).map_err(|e| anyhow!("{image:?}: tag {tag:?}: {e}"))?;
    let default = s
        .upstreams
        .first()
        .ok_or_else(|| anyhow!("no upstream is configured"))?;
    let (first, rest) = name.split_once('/').unwrap_or((&name, ""));
    let host_like = first.contains('.') || first.contains(':') || first == "localhost";
    let is_hub = |u: &crate::config::UpstreamSettings| {
        u.name.is(pullgate_oci::DOCKER_HUB)
            || u.url
                .split("://")
                .nth(1)
                .and_then(|r| r.split(['/', ':']).next())
                .is_some_and(pullgate_oci::is_docker_hub)
    };
    let (upstream, repo) = if host_like && !rest.is_empty() {
        let u = s
            .upstreams
            .iter()
            .find(|u| u.name.is(first) || (is_hub(u) && pullgate_oci::is_docker_hub(first)))
            .ok_or_else(|| anyhow!("{image:?}: no upstream is configured for {first}"))?;
        (
            u,
            RepoName::parse(rest).map_err(|e| anyhow!("{image:?}: {e}"))?,
        )
    } else {
        let repo = RepoName::parse(&name).map_err(|e| anyhow!("{image:?}: {e}"))?;
        (default, repo)
    };
    let repo = if is_hub(upstream) && repo.is_single_component() {
        repo.with_prefix("library")
            .map_err(|e| anyhow!("{image:?}: {e}"))?
    } else {
        repo
    };
    Ok((
        upstream.name.to_string(),
        repo.as_str().to_owned(),
        tag.as_str().to_owned(),
    ))
}

/// What the tag rules decide, as comment lines (the output stays a valid configuration):
/// each rule with its patterns and an example each pattern matches, saying when an earlier
/// rule takes that example first (the pattern is shadowed there); then, for each `--tag`
/// image, the rule that matches it and the TTL it gets.
pub fn tag_policy_report(s: &Settings, images: &[String]) -> Result<String> {
    let policy = &s.tag_policy;
    let mut out = String::new();
    let default = format!(
        "cache.tag_ttl, {}",
        ttl_words(TagTtl::After(policy.default_ttl()))
    );
    if !policy.rules().is_empty() {
        out.push_str(&format!(
            "# [[cache.tag_rule]], first match wins; a tag no rule matches: {default}\n"
        ));
    }
    for (i, rule) in policy.rules().iter().enumerate() {
        out.push_str(&format!("# rule {}: {}\n", i + 1, ttl_words(rule.ttl)));
        for p in &rule.images {
            let example = p.as_str().replace("**", "x").replace('*', "x");
            let mut line = format!("#   {p}  (e.g. {example}");
            if let Some((u, r, t)) = split_reference(&example) {
                if let Some((j, by)) = policy.decide(u, r, t).rule {
                    if j != i {
                        line.push_str(&format!(
                            ": taken first by rule {} ({by}), so {}",
                            j + 1,
                            ttl_words(policy.rules()[j].ttl)
                        ));
                    }
                }
            }
            line.push_str(")\n");
            out.push_str(&line);
        }
    }
    for image in images {
        let (u, r, t) = resolve_image(s, image)?;
        let d = policy.decide(&u, &r, &t);
        let why = match d.rule {
            Some((j, p)) => format!("rule {} ({p}), {}", j + 1, ttl_words(d.ttl)),
            None => format!("no rule matches: {default}"),
        };
        out.push_str(&format!("# --tag {image} is {u}/{r}:{t}: {why}\n"));
    }
    Ok(out)
}

/// `<upstream>/<repository>:<tag>` split as a tag rule pattern is.
fn split_reference(text: &str) -> Option<(&str, &str, &str)> {
    let (head, last) = text.rsplit_once('/')?;
    let (upstream, _) = head.split_once('/').unwrap_or((head, ""));
    let colon = head.len() + 1 + last.find(':')?;
    let repo = text.get(upstream.len() + 1..colon)?;
    Some((upstream, repo, text.get(colon + 1..)?))
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

#[cfg(test)]
mod tests {
    use crate::config::{FileConfig, Overrides};

    fn settings(text: &str) -> crate::config::Settings {
        FileConfig::parse(text)
            .and_then(|c| c.into_settings(Overrides::default()))
            .unwrap()
    }

    const RULES: &str = "[cache]\ntag_ttl = \"1m\"\n\
        [[cache.tag_rule]]\nimages = [\"docker.io/library/*:v*\"]\nttl = \"never\"\n\
        [[cache.tag_rule]]\nimages = [\"docker.io/library/alpine:*\", \"ghcr.io/org/**\"]\nttl = \"10m\"\n\
        [[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n\
        [[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\n\
        [[upstream]]\nname = \"registry.local:5000\"\nurl = \"http://127.0.0.1:5001\"\n";

    #[test]
    fn images_resolve_as_the_mirror_routes_them() {
        let s = settings(RULES);
        for (image, want) in [
            ("alpine", ("docker.io", "library/alpine", "latest")),
            ("alpine:3.20", ("docker.io", "library/alpine", "3.20")),
            ("docker.io/alpine:v1", ("docker.io", "library/alpine", "v1")),
            ("index.docker.io/team/app:1", ("docker.io", "team/app", "1")),
            ("ghcr.io/org/app:1.0", ("ghcr.io", "org/app", "1.0")),
            (
                "registry.local:5000/x/y:v2",
                ("registry.local:5000", "x/y", "v2"),
            ),
            (
                "registry.local:5000/x/y",
                ("registry.local:5000", "x/y", "latest"),
            ),
            ("team/app:v1", ("docker.io", "team/app", "v1")),
        ] {
            let (u, r, t) = super::resolve_image(&s, image).unwrap();
            assert_eq!((u.as_str(), r.as_str(), t.as_str()), want, "{image}");
        }
        for bad in ["quay.io/x/y:1", "alpine:", "Alpine:1", "alpine@sha256:00"] {
            assert!(super::resolve_image(&s, bad).is_err(), "{bad}");
        }
    }

    /// Which rule decides each `--tag` image, and a pattern an earlier rule shadows.
    #[test]
    fn the_report_names_the_rule_for_each_image() {
        let s = settings(RULES);
        let images: Vec<String> = [
            "alpine:v3.20",
            "alpine:3.20",
            "ghcr.io/org/a/b:x",
            "nginx:1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let report = super::tag_policy_report(&s, &images).unwrap();
        let want = [
            "# [[cache.tag_rule]], first match wins; a tag no rule matches: cache.tag_ttl, revalidated after 1m",
            "# rule 1: never revalidated (pinned)",
            "#   docker.io/library/*:v*  (e.g. docker.io/library/x:vx)",
            "# rule 2: revalidated after 10m",
            "#   docker.io/library/alpine:*  (e.g. docker.io/library/alpine:x)",
            "#   ghcr.io/org/**  (e.g. ghcr.io/org/x)",
            "# --tag alpine:v3.20 is docker.io/library/alpine:v3.20: rule 1 (docker.io/library/*:v*), never revalidated (pinned)",
            "# --tag alpine:3.20 is docker.io/library/alpine:3.20: rule 2 (docker.io/library/alpine:*), revalidated after 10m",
            "# --tag ghcr.io/org/a/b:x is ghcr.io/org/a/b:x: rule 2 (ghcr.io/org/**), revalidated after 10m",
            "# --tag nginx:1 is docker.io/library/nginx:1: no rule matches: cache.tag_ttl, revalidated after 1m",
        ];
        assert_eq!(report.lines().collect::<Vec<_>>(), want, "{report}");

        // A pattern whose example an earlier rule takes first says so.
        let shadowed = settings(
            "[[cache.tag_rule]]\nimages = [\"docker.io/**\"]\nttl = \"1h\"\n\
             [[cache.tag_rule]]\nimages = [\"docker.io/library/*:v*\"]\nttl = \"never\"\n",
        );
        let report = super::tag_policy_report(&shadowed, &[]).unwrap();
        assert!(
            report.contains(
                "#   docker.io/library/*:v*  (e.g. docker.io/library/x:vx: taken first by rule 1 (docker.io/**), so revalidated after 1h)"
            ),
            "{report}"
        );
        // No rules, no tags: nothing to say.
        assert_eq!(super::tag_policy_report(&settings(""), &[]).unwrap(), "");
        assert!(super::tag_policy_report(&s, &["quay.io/x:1".into()]).is_err());
    }
}
