//! A replica's internal address, parsed once where it enters (configuration, DNS answers)
//! into its canonical text. That text is what the owner hash reads, so every replica must
//! spell one peer the same way: IPs go through `SocketAddr`'s own formatting (IPv6
//! compressed, in brackets), names are lower-cased.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use crate::ClusterError;

/// One replica, as its peers reach it: `10.0.0.1:5001`, `[fd00::1]:5001`, or
/// `pullgate-0.pullgate-peers.pullgate.svc:5001`. Ordered, compared and hashed by its
/// canonical text.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer(Arc<str>);

impl Peer {
    pub fn parse(text: &str) -> Result<Self, ClusterError> {
        let bad = |why| ClusterError::Peer {
            text: text.to_owned(),
            why,
        };
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(bad("port 0"));
            }
            return Ok(Peer::from(addr));
        }
        let (host, port) = split_host_port(text).map_err(bad)?;
        // An IP that did not parse with its port above is malformed, not a name.
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return Err(bad("an IPv6 address needs brackets: [addr]:port"));
        }
        check_dns_name(host).map_err(bad)?;
        Ok(Peer(format!("{}:{port}", host.to_ascii_lowercase()).into()))
    }

    /// The canonical text, as hashed and as printed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address, when the peer is written as one (DNS answers always are).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.0.parse().ok()
    }
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Self {
        // An IPv4 address seen through a dual-stack socket (::ffff:a.b.c.d) is the same
        // replica as a.b.c.d: one spelling for both, or they would hash apart.
        let addr = match addr.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
                None => addr,
            },
            IpAddr::V4(_) => addr,
        };
        Peer(addr.to_string().into())
    }
}

impl FromStr for Peer {
    type Err = ClusterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Peer::parse(s)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A DNS name with a port, whose addresses are the peers: a headless Service, which
/// answers with one A/AAAA record per ready pod.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceName {
    host: Arc<str>,
    port: u16,
}

impl ServiceName {
    pub fn parse(text: &str) -> Result<Self, ClusterError> {
        let bad = |why| ClusterError::Service {
            text: text.to_owned(),
            why,
        };
        let (host, port) = split_host_port(text).map_err(bad)?;
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            return Err(bad("an address is not a name to resolve: list it in peers"));
        }
        check_dns_name(host).map_err(bad)?;
        Ok(ServiceName {
            host: host.to_ascii_lowercase().into(),
            port,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn split_host_port(text: &str) -> Result<(&str, u16), &'static str> {
    let (host, port) = text.rsplit_once(':').ok_or("no port")?;
    if host.is_empty() {
        return Err("no host");
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the port is not a number");
    }
    match port.parse::<u16>() {
        Ok(0) => Err("port 0"),
        Ok(p) => Ok((host, p)),
        Err(_) => Err("the port is above 65535"),
    }
}

/// RFC 1123 host names: what a Service or a pod's hostname can be.
fn check_dns_name(host: &str) -> Result<(), &'static str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.len() > 253 {
        return Err("the name is longer than 253 characters");
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("a label of the name is empty or longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err("the name has characters other than letters, digits, '-' and '.'");
        }
    }
    // `10.0.0.01` is no IP (std refuses the leading zero), and as a name it would be a
    // second spelling of a peer others write as an address.
    if host
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the name ends in a number, like an address, but is no valid address");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_canonical() {
        for (text, canonical) in [
            ("10.0.0.1:5001", "10.0.0.1:5001"),
            ("[fd00:0::1]:5001", "[fd00::1]:5001"),
            ("[::ffff:10.0.0.1]:5001", "10.0.0.1:5001"),
            ("Pullgate-0.Peers.svc:5001", "pullgate-0.peers.svc:5001"),
            ("localhost:1", "localhost:1"),
        ] {
            assert_eq!(Peer::parse(text).unwrap().as_str(), canonical, "{text}");
        }
        assert_eq!(
            Peer::parse("10.0.0.1:5001").unwrap().socket_addr(),
            Some(([10, 0, 0, 1], 5001).into())
        );
        assert_eq!(Peer::parse("a.b:1").unwrap().socket_addr(), None);
        for bad in [
            "",
            "10.0.0.1",
            "10.0.0.1:0",
            "10.0.0.1:70000",
            ":5001",
            "fd00::1:5001x",
            "fd00::1",
            "http://10.0.0.1:5001",
            "a_b:5001",
            "-a:5001",
            "a..b:5001",
            "a b:5001",
            "10.0.0.1:+1",
            "10.0.0.01:5001",
            "256.0.0.1:5001",
        ] {
            assert!(Peer::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn service_names_are_names_with_a_port() {
        let s = ServiceName::parse("Pullgate-Peers.pullgate.svc.cluster.local:5001").unwrap();
        assert_eq!(
            (s.host(), s.port()),
            ("pullgate-peers.pullgate.svc.cluster.local", 5001)
        );
        assert_eq!(
            s.to_string(),
            "pullgate-peers.pullgate.svc.cluster.local:5001"
        );
        for bad in ["peers", "peers:", "10.0.0.1:5001", "[::1]:5001", "pe_ers:1"] {
            assert!(ServiceName::parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
