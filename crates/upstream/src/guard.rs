//! Where a blob redirect (or a token realm the upstream names but the config does not
//! list) may lead: not into the mirror's own network, unless that is where the upstream is.
//!
//! The attack is a public upstream (compromised, or a proxy that says anything) pointing
//! the mirror at `127.0.0.1`, `169.254.169.254` or `10.x`: the mirror would fetch from
//! there on the upstream's word. An upstream that is itself on such an address already
//! reaches that space, so its redirects there are allowed unless the config says
//! otherwise (`allow_private_redirects`).
//!
//! Names are checked where they are resolved (a reqwest resolver of ours), every address
//! of the answer, and the connection uses exactly the addresses checked: a second answer
//! (DNS rebinding) cannot slip in between check and connect. Literal addresses never reach
//! a resolver, so [`Guard::check_url`] looks at them before a request is sent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// The resolver's refusal, found again by type in reqwest's error chain.
#[derive(Debug)]
pub(crate) struct InternalAddress;

impl std::fmt::Display for InternalAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the name resolves to a loopback, link-local or private address")
    }
}

impl std::error::Error for InternalAddress {}

/// The policy for one upstream, shared by its two clients' resolvers.
pub(crate) struct Guard {
    /// `allow_private_redirects`: `None` decides by where the upstream is.
    allow: Option<bool>,
    /// The upstream's own host name, lowercase (what its resolver is asked for).
    upstream_host: String,
    /// Whether the upstream itself is on an internal address: its URL names one, or its
    /// name has resolved to one. Once seen, kept: the upstream reaches that space anyway.
    upstream_internal: AtomicBool,
    /// Proxy hosts from the environment: with a proxy, the resolver is asked for the
    /// proxy's name (usually internal), not the target's, which the proxy resolves.
    proxies: Vec<String>,
}

impl Guard {
    pub(crate) fn new(base: &Url, allow: Option<bool>) -> Arc<Guard> {
        let upstream_host = base.host_str().unwrap_or("").to_ascii_lowercase();
        let internal = literal_ip(base).is_some_and(is_internal);
        Arc::new(Guard {
            allow,
            upstream_host,
            upstream_internal: AtomicBool::new(internal),
            proxies: proxy_hosts(),
        })
    }

    /// Whether internal targets are refused right now.
    pub(crate) fn refuses_internal(&self) -> bool {
        match self.allow {
            Some(allow) => !allow,
            None => !self.upstream_internal.load(Ordering::Relaxed),
        }
    }

    /// Refuse `url` if its host is a literal internal address (names are the resolver's).
    pub(crate) fn check_url(&self, url: &Url) -> Result<(), InternalAddress> {
        match literal_ip(url) {
            Some(ip) if is_internal(ip) && self.refuses_internal() => Err(InternalAddress),
            _ => Ok(()),
        }
    }

    /// The resolver for the upstream's own origin and the token realms it may use: it
    /// refuses nothing, and notes whether the upstream's name lies in internal space.
    pub(crate) fn recording(self: &Arc<Self>) -> Arc<Resolver> {
        Arc::new(Resolver {
            guard: Arc::clone(self),
            guarded: false,
        })
    }

    /// The resolver for everything else the upstream points us at.
    pub(crate) fn guarded(self: &Arc<Self>) -> Arc<Resolver> {
        Arc::new(Resolver {
            guard: Arc::clone(self),
            guarded: true,
        })
    }
}

/// The system resolver (getaddrinfo on the blocking pool, as reqwest's own), checked.
pub(crate) struct Resolver {
    guard: Arc<Guard>,
    guarded: bool,
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = Arc::clone(&self.guard);
        let guarded = self.guarded;
        let host = name.as_str().to_ascii_lowercase();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let internal = addrs.iter().any(|a| is_internal(a.ip()));
            if !guarded {
                if internal && host == guard.upstream_host {
                    guard.upstream_internal.store(true, Ordering::Relaxed);
                }
            } else if internal && guard.refuses_internal() && !guard.proxies.contains(&host) {
                // Every address, not just the first: a mixed answer is refused whole.
                return Err(Box::new(InternalAddress) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The URL's host as an address, if it is one.
fn literal_ip(url: &Url) -> Option<IpAddr> {
    // `host_str` writes an IPv6 address in brackets; a domain never parses as an address
    // (the URL parser already turned `0x7f.1` and friends into dotted IPv4).
    url.host_str()?.trim_matches(['[', ']']).parse().ok()
}

/// Loopback, private, link-local (the cloud metadata address among them), shared (CGNAT),
/// unspecified or broadcast: addresses of the mirror's own network, not of a CDN.
pub(crate) fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_internal_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_internal_v4(v4),
            None => is_internal_v6(ip),
        },
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        // 0.0.0.0/8, "this network": 0.0.0.0 reaches the local host on Linux.
        || a == 0
        // 100.64.0.0/10, shared address space (carrier NAT, many overlay networks).
        || (a == 100 && (b & 0xc0) == 64)
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        // fec0::/10, the deprecated site-local range, still routed inside some networks.
        || (first & 0xffc0) == 0xfec0
}

/// The hosts of the proxies reqwest takes from the environment.
fn proxy_hosts() -> Vec<String> {
    let mut hosts = Vec::new();
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        let Ok(value) = std::env::var(var) else {
            continue;
        };
        let value = value.trim();
        let parsed = Url::parse(value).or_else(|_| Url::parse(&format!("http://{value}")));
        if let Some(host) = parsed.ok().as_ref().and_then(Url::host_str) {
            hosts.push(host.trim_matches(['[', ']']).to_ascii_lowercase());
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        let cases: &[(&str, bool)] = &[
            ("127.0.0.1", true),
            ("127.1.2.3", true),
            ("10.0.0.5", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("100.64.0.1", true),
            ("100.127.255.255", true),
            ("0.0.0.0", true),
            ("255.255.255.255", true),
            ("::1", true),
            ("::", true),
            ("fd00::1", true),
            ("fe80::1", true),
            ("fec0::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:169.254.169.254", true),
            ("8.8.8.8", false),
            ("100.128.0.1", false),
            ("172.32.0.1", false),
            ("104.16.0.1", false),
            ("2606:4700::1111", false),
            ("::ffff:8.8.8.8", false),
        ];
        for (text, want) in cases {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(is_internal(ip), *want, "{text}");
        }
    }

    #[test]
    fn policy() {
        let public = Url::parse("https://registry.example").unwrap();
        let local = Url::parse("http://127.0.0.1:5000").unwrap();
        let internal = Url::parse("http://169.254.169.254/latest").unwrap();
        let named = Url::parse("http://localhost:9/x").unwrap();
        let cdn = Url::parse("https://104.16.0.1/x").unwrap();

        // A public upstream may not point into the mirror's network...
        let g = Guard::new(&public, None);
        assert!(g.refuses_internal());
        assert!(g.check_url(&internal).is_err());
        assert!(g.check_url(&local).is_err());
        assert!(g.check_url(&cdn).is_ok());
        assert!(
            g.check_url(&named).is_ok(),
            "names are the resolver's to check"
        );
        // ...unless the config allows it.
        assert!(Guard::new(&public, Some(true)).check_url(&internal).is_ok());
        // An upstream on an internal address reaches that space already...
        let g = Guard::new(&local, None);
        assert!(!g.refuses_internal());
        assert!(g.check_url(&internal).is_ok());
        // ...unless the config forbids it.
        assert!(Guard::new(&local, Some(false))
            .check_url(&internal)
            .is_err());
        // A name: decided once it has resolved to an internal address.
        let g = Guard::new(&Url::parse("http://registry.internal").unwrap(), None);
        assert!(g.refuses_internal());
        g.upstream_internal.store(true, Ordering::Relaxed);
        assert!(!g.refuses_internal());
    }

    #[tokio::test]
    async fn the_guarded_resolver_refuses_internal_names() {
        let public = Url::parse("https://registry.example").unwrap();
        let g = Guard::new(&public, None);
        let name = |s: &str| s.parse::<Name>().unwrap();
        let err = g.guarded().resolve(name("localhost")).await.err().unwrap();
        assert!(err.is::<InternalAddress>());
        // The upstream's own client resolves anything, and notes an internal upstream.
        assert!(g.recording().resolve(name("localhost")).await.is_ok());
        assert!(
            g.refuses_internal(),
            "localhost is not this upstream's name"
        );
        let g = Guard::new(&Url::parse("http://localhost:5000").unwrap(), None);
        assert!(g.refuses_internal());
        assert!(g.recording().resolve(name("localhost")).await.is_ok());
        assert!(!g.refuses_internal(), "the upstream resolved to loopback");
        assert!(g.guarded().resolve(name("localhost")).await.is_ok());
    }
}
