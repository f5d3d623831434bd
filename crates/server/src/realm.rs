//! The realm of token challenges: where a client sends its Basic credentials for a token.
//!
//! In order, the first that gives an answer:
//! 1. the configured `auth.realm`, verbatim;
//! 2. a trusted proxy's word (the peer is in `server.trusted_proxies`): the last element
//!    of `Forwarded` (`proto=`, `host=`), else the last value of `X-Forwarded-Proto` /
//!    `X-Forwarded-Host` (the last one is what that proxy itself added; earlier ones came
//!    from whoever connected to it);
//! 3. the connection itself: `https` when this listener speaks TLS, and the authority the
//!    client asked for (HTTP/2's `:authority`, an absolute URI's, else `Host`);
//! 4. with no usable authority, the address the client connected to (never `localhost`,
//!    which would send the credentials to the client's own machine).

use std::net::{Ipv6Addr, SocketAddr};

use http::{header, HeaderMap, Request};

use crate::net::IpNet;

/// Longest realm URL accepted in the configuration.
const MAX_REALM_LEN: usize = 1024;

/// A configured realm: an absolute `http(s)` URL that can be quoted in a challenge as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealmUrl(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RealmUrlError {
    #[error("the realm must be an absolute URL starting with https:// (or http://)")]
    Scheme,
    #[error("the realm URL must name a host, without user info")]
    Host,
    #[error("the realm URL holds a character that cannot be sent in a challenge")]
    Character,
    #[error("the realm URL is longer than {MAX_REALM_LEN} bytes")]
    TooLong,
}

impl RealmUrl {
    pub fn parse(url: &str) -> Result<RealmUrl, RealmUrlError> {
        if url.len() > MAX_REALM_LEN {
            return Err(RealmUrlError::TooLong);
        }
        // Visible ASCII without the characters a quoted-string or a URL cannot hold.
        if !url
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"\\<>^`{|}".contains(&b))
        {
            return Err(RealmUrlError::Character);
        }
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or(RealmUrlError::Scheme)?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if !valid_authority(authority) {
            return Err(RealmUrlError::Host);
        }
        Ok(RealmUrl(url.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Credentials sent to it travel in clear text.
    pub fn is_plain_http(&self) -> bool {
        self.0.starts_with("http://")
    }
}

/// What the realm is built from, fixed for the server's life.
#[derive(Debug, Clone, Default)]
pub(crate) struct RealmPolicy {
    pub configured: Option<RealmUrl>,
    pub trusted_proxies: Vec<IpNet>,
}

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conn {
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    pub tls: bool,
}

impl RealmPolicy {
    pub(crate) fn url<B>(&self, req: &Request<B>, conn: &Conn) -> String {
        if let Some(realm) = &self.configured {
            return realm.0.clone();
        }
        let mut scheme = if conn.tls { "https" } else { "http" };
        let mut authority = request_authority(req);
        if self
            .trusted_proxies
            .iter()
            .any(|n| n.contains(conn.peer.ip()))
        {
            let (proto, host) = forwarded(req.headers());
            scheme = proto.unwrap_or(scheme);
            authority = host.or(authority);
        }
        match authority {
            Some(a) => format!("{scheme}://{a}/token"),
            None => format!("{scheme}://{}/token", conn.local),
        }
    }
}

/// The authority the client asked for: HTTP/2's `:authority` (hyper puts it in the URI;
/// there is no `Host`) or an absolute-form URI's, else the `Host` header.
fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .filter(|a| valid_authority(a))
}

/// `(proto, host)` from a trusted proxy's headers; either may be missing.
fn forwarded(headers: &HeaderMap) -> (Option<&'static str>, Option<&str>) {
    let (mut proto, mut host) = (None, None);
    // The last element of the last line: what the proxy that connected to us added.
    if let Some(element) = last_line(headers, "forwarded").and_then(|l| split_quoted(l, ',').pop())
    {
        for pair in split_quoted(element, ';') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let v = unquote(v.trim());
            match k.trim().to_ascii_lowercase().as_str() {
                "proto" => proto = scheme(v),
                "host" => host = v.filter(|h| valid_authority(h)),
                _ => {}
            }
        }
    }
    let last_value = |name| {
        last_line(headers, name)
            .and_then(|l| l.rsplit(',').next())
            .map(str::trim)
    };
    let proto = proto.or_else(|| scheme(last_value("x-forwarded-proto")));
    let host = host.or_else(|| last_value("x-forwarded-host").filter(|h| valid_authority(h)));
    (proto, host)
}

fn last_line<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(name)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
}

fn scheme(v: Option<&str>) -> Option<&'static str> {
    match v?.to_ascii_lowercase().as_str() {
        "https" => Some("https"),
        "http" => Some("http"),
        _ => None,
    }
}

/// A token or a quoted-string's content (one without escapes: a host never needs them).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(inner) => inner.strip_suffix('"').filter(|s| !s.contains(['"', '\\'])),
        None => Some(v),
    }
}

/// `s` split on `sep` outside double quotes.
fn split_quoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `host[:port]`: a DNS name or IPv4 address, or a bracketed IPv6 address; no user info.
fn valid_authority(a: &str) -> bool {
    if a.is_empty() || a.len() > 255 {
        return false;
    }
    let (host_ok, port) = match a.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) => (
                v6.parse::<Ipv6Addr>().is_ok(),
                match after {
                    "" => None,
                    p => match p.strip_prefix(':') {
                        Some(p) => Some(p),
                        None => return false,
                    },
                },
            ),
            None => return false,
        },
        None => {
            let (host, port) = match a.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (a, None),
            };
            (
                !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
                port,
            )
        }
    };
    host_ok
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(peer: &str, tls: bool) -> Conn {
        Conn {
            peer: peer.parse().unwrap(),
            local: "10.0.0.5:5000".parse().unwrap(),
            tls,
        }
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn h2(authority: &str) -> Request<()> {
        Request::get(format!("https://{authority}/v2/"))
            .version(http::Version::HTTP_2)
            .body(())
            .unwrap()
    }

    fn policy(trusted: &[&str]) -> RealmPolicy {
        RealmPolicy {
            configured: None,
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn the_listeners_scheme_and_the_clients_authority() {
        let p = policy(&[]);
        let client = conn("192.0.2.9:40000", true);
        let host = req("/v2/", &[("host", "mirror.example.com:5000")]);
        assert_eq!(
            p.url(&host, &client),
            "https://mirror.example.com:5000/token"
        );
        assert_eq!(
            p.url(&host, &conn("192.0.2.9:40000", false)),
            "http://mirror.example.com:5000/token"
        );
        // HTTP/2: no Host, the :authority is in the URI.
        assert_eq!(
            p.url(&h2("localhost:5443"), &client),
            "https://localhost:5443/token"
        );
        assert_eq!(
            p.url(&h2("[::1]:5443"), &client),
            "https://[::1]:5443/token"
        );
        // Nothing usable: the address the client reached, never localhost.
        for bad in [
            req("/v2/", &[]),
            req("/v2/", &[("host", "")]),
            req("/v2/", &[("host", "a b")]),
            req("/v2/", &[("host", "user@evil")]),
            req("/v2/", &[("host", "evil/x")]),
            req("/v2/", &[("host", "\"evil")]),
            req("/v2/", &[("host", ":5000")]),
            req("/v2/", &[("host", "[::1")]),
            req("/v2/", &[("host", "h:99999999")]),
        ] {
            assert_eq!(
                p.url(&bad, &client),
                "https://10.0.0.5:5000/token",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_configured_realm_wins() {
        let p = RealmPolicy {
            configured: Some(RealmUrl::parse("https://auth.example.com/token").unwrap()),
            trusted_proxies: vec!["0.0.0.0/0".parse().unwrap()],
        };
        let r = req(
            "/v2/",
            &[
                ("host", "x"),
                ("x-forwarded-proto", "http"),
                ("forwarded", "host=y"),
            ],
        );
        assert_eq!(
            p.url(&r, &conn("192.0.2.1:1", false)),
            "https://auth.example.com/token"
        );
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let p = policy(&["10.9.0.0/16"]);
        let proxy = conn("10.9.1.1:3333", false);
        let stranger = conn("192.0.2.1:3333", false);
        let r = req(
            "/v2/",
            &[("host", "pullgate:5000"), ("x-forwarded-proto", "https")],
        );
        assert_eq!(p.url(&r, &proxy), "https://pullgate:5000/token");
        assert_eq!(p.url(&r, &stranger), "http://pullgate:5000/token");

        let r = req(
            "/v2/",
            &[
                ("host", "pullgate:5000"),
                (
                    "forwarded",
                    "for=192.0.2.60;proto=https;host=\"mirror.example.com\"",
                ),
            ],
        );
        assert_eq!(p.url(&r, &proxy), "https://mirror.example.com/token");
        assert_eq!(p.url(&r, &stranger), "http://pullgate:5000/token");

        // A client's own Forwarded element comes first; the proxy's is the last.
        let r = req(
            "/v2/",
            &[
                ("host", "pullgate:5000"),
                ("forwarded", "proto=http;host=evil.example, for=\"[2001:db8::1]:4711\";Proto=HTTPS;Host=mirror.example.com:443"),
            ],
        );
        assert_eq!(p.url(&r, &proxy), "https://mirror.example.com:443/token");
        let r = req(
            "/v2/",
            &[
                ("host", "pullgate:5000"),
                ("x-forwarded-proto", "http, https"),
                ("x-forwarded-host", "evil.example, mirror.example.com"),
            ],
        );
        assert_eq!(p.url(&r, &proxy), "https://mirror.example.com/token");
        // Forwarded before X-Forwarded-*, field by field.
        let r = req(
            "/v2/",
            &[
                ("host", "pullgate:5000"),
                ("forwarded", "host=a.example"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "b.example"),
            ],
        );
        assert_eq!(p.url(&r, &proxy), "https://a.example/token");
        // Nonsense from the proxy is ignored, not passed on.
        let r = req(
            "/v2/",
            &[
                ("host", "pullgate:5000"),
                ("forwarded", "proto=gopher;host=\"a\\\"b\""),
                ("x-forwarded-host", "x y"),
            ],
        );
        assert_eq!(p.url(&r, &proxy), "http://pullgate:5000/token");
    }

    #[test]
    fn configured_realms_are_absolute_urls_safe_to_quote() {
        for ok in [
            "https://mirror.example.com/token",
            "https://mirror.example.com:8443/auth/token?x=1",
            "http://127.0.0.1:5000/token",
            "https://[::1]:5000/token",
        ] {
            assert_eq!(RealmUrl::parse(ok).unwrap().as_str(), ok);
        }
        assert!(RealmUrl::parse("http://h/token").unwrap().is_plain_http());
        assert!(!RealmUrl::parse("https://h/token").unwrap().is_plain_http());
        for (bad, why) in [
            ("mirror.example.com/token", RealmUrlError::Scheme),
            ("ftp://h/token", RealmUrlError::Scheme),
            ("https:///token", RealmUrlError::Host),
            ("https://u:p@h/token", RealmUrlError::Host),
            ("https://h/to ken", RealmUrlError::Character),
            ("https://h/\"token", RealmUrlError::Character),
            ("https://h/token\r\nX: y", RealmUrlError::Character),
        ] {
            assert_eq!(RealmUrl::parse(bad), Err(why), "{bad:?}");
        }
        let long = format!("https://h/{}", "a".repeat(MAX_REALM_LEN));
        assert_eq!(RealmUrl::parse(&long), Err(RealmUrlError::TooLong));
    }
}
