//! Client addresses: the networks the configuration names ([`IpNet`]: trusted proxies,
//! addresses exempt from the per-address cap) and the count of open connections per
//! address ([`PerAddress`]) that closes the excess at accept.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// An address (`10.1.2.3`, `::1`) or a network (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// With the host bits cleared.
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    #[error("{0:?} is not an IP address or a network such as 10.0.0.0/8")]
    Invalid(String),
    #[error("{0:?}: the prefix length is longer than the address")]
    Prefix(String),
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<IpNet, IpNetError> {
        let invalid = || IpNetError::Invalid(s.chars().take(64).collect());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = canonical(addr.parse::<IpAddr>().map_err(|_| invalid())?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| IpNetError::Prefix(s.chars().take(64).collect()))?,
            Some(_) => return Err(invalid()),
        };
        Ok(IpNet {
            addr: masked(addr, prefix),
            prefix,
        })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == whole {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl From<IpAddr> for IpNet {
    fn from(addr: IpAddr) -> IpNet {
        let addr = canonical(addr);
        IpNet {
            addr,
            prefix: if addr.is_ipv4() { 32 } else { 128 },
        }
    }
}

impl From<Ipv4Addr> for IpNet {
    fn from(addr: Ipv4Addr) -> IpNet {
        IpNet::from(IpAddr::V4(addr))
    }
}

impl From<Ipv6Addr> for IpNet {
    fn from(addr: Ipv6Addr) -> IpNet {
        IpNet::from(IpAddr::V6(addr))
    }
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && masked(ip, self.prefix) == self.addr
    }
}

/// An IPv4 address mapped into IPv6 (a dual-stack listener's view of an IPv4 client) is
/// that IPv4 address: one client, one count, one match.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

/// The address an anonymous client is known by for per-client limits (the mirror's fills
/// per client): as [`Client`] counts connections, an IPv4 address or an IPv6 /64, so one
/// host cannot multiply its share by using the addresses of its own prefix.
pub(crate) fn client_address(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        v6 @ IpAddr::V6(_) => masked(v6, 64),
        v4 => v4,
    }
}

/// Who a connection is counted against: an IPv4 address, or an IPv6 /64, which is what
/// one subscriber or host is usually given (counting single IPv6 addresses would let one
/// client open 2^64 slots' worth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    V4(Ipv4Addr),
    V6(u64),
}

impl Client {
    fn of(ip: IpAddr) -> Client {
        match canonical(ip) {
            IpAddr::V4(a) => Client::V4(a),
            IpAddr::V6(a) => Client::V6((u128::from(a) >> 64) as u64),
        }
    }
}

/// Open connections per client, so that a few silent or dripping sockets from one place
/// cannot hold all of `max_connections`. The map holds only clients with a connection
/// open, so it is never larger than `max_connections`.
pub(crate) struct PerAddress {
    limit: usize,
    exempt: Vec<IpNet>,
    open: Mutex<HashMap<Client, usize>>,
}

/// One admitted connection; dropping it gives its client's slot back.
pub(crate) struct AddressSlot {
    counted: Option<(Arc<PerAddress>, Client)>,
}

impl PerAddress {
    pub(crate) fn new(limit: usize, exempt: Vec<IpNet>) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            limit,
            exempt,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `ip`, or `None` if its client already holds `limit`.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        if self.exempt.iter().any(|n| n.contains(ip)) {
            return Some(AddressSlot { counted: None });
        }
        let client = Client::of(ip);
        // Held for a map lookup only; a panic elsewhere cannot leave the counts wrong.
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.get(&client).copied().unwrap_or(0);
        if n >= self.limit {
            // Refused without an entry: a client with nothing open is never in the map.
            return None;
        }
        open.insert(client, n + 1);
        Some(AddressSlot {
            counted: Some((Arc::clone(self), client)),
        })
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some((owner, client)) = self.counted.take() else {
            return;
        };
        let mut open = owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_match_and_print_back() {
        for (text, inside, outside) in [
            ("10.0.0.0/8", "10.200.3.4", "11.0.0.1"),
            ("10.1.2.3", "10.1.2.3", "10.1.2.4"),
            ("10.1.2.3/24", "10.1.2.200", "10.1.3.1"),
            ("0.0.0.0/0", "192.0.2.1", "::1"),
            ("fd00::/8", "fd12::1", "fe80::1"),
            ("::1", "::1", "::2"),
            // A mapped IPv4 client is the IPv4 address, either way round.
            ("192.0.2.0/24", "::ffff:192.0.2.7", "::ffff:192.0.3.7"),
            ("::ffff:127.0.0.1", "127.0.0.1", "127.0.0.2"),
        ] {
            let net: IpNet = text.parse().unwrap();
            assert!(net.contains(ip(inside)), "{text} should hold {inside}");
            assert!(
                !net.contains(ip(outside)),
                "{text} should not hold {outside}"
            );
            let again: IpNet = net.to_string().parse().unwrap();
            assert_eq!(again, net, "{text} printed as {net}");
        }
        assert_eq!(
            "10.1.2.3/24".parse::<IpNet>().unwrap().to_string(),
            "10.1.2.0/24"
        );
        assert_eq!(
            "127.0.0.1".parse::<IpNet>().unwrap().to_string(),
            "127.0.0.1"
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "localhost",
            "10.0.0.0/8/8",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_ipv6_prefix_is_one_client_for_per_client_limits() {
        assert_eq!(
            client_address(ip("2001:db8:1:2::1")),
            client_address(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            client_address(ip("2001:db8:1:2::1")),
            client_address(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_address(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_address(ip("192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn a_refused_client_leaves_nothing_behind() {
        let none = PerAddress::new(0, vec![]);
        for i in 0..100u8 {
            assert!(none.admit(IpAddr::from([192, 0, 2, i])).is_none());
        }
        assert_eq!(none.clients(), 0);
    }

    #[test]
    fn each_client_gets_at_most_its_limit_and_gets_it_back() {
        let cap = PerAddress::new(2, vec!["127.0.0.1".parse().unwrap()]);
        let a1 = cap.admit(ip("192.0.2.1")).unwrap();
        let a2 = cap.admit(ip("192.0.2.1")).unwrap();
        assert!(cap.admit(ip("192.0.2.1")).is_none());
        // The same client seen through a dual-stack socket.
        assert!(cap.admit(ip("::ffff:192.0.2.1")).is_none());
        // Others are not affected.
        let _b = cap.admit(ip("192.0.2.2")).unwrap();
        // One IPv6 /64 is one client.
        let _c1 = cap.admit(ip("2001:db8:1:2::1")).unwrap();
        let _c2 = cap.admit(ip("2001:db8:1:2::ffff")).unwrap();
        assert!(cap.admit(ip("2001:db8:1:2:abcd::9")).is_none());
        let _d = cap.admit(ip("2001:db8:1:3::1")).unwrap();
        // Exempt addresses are never counted.
        let exempt: Vec<_> = (0..10)
            .map(|_| cap.admit(ip("127.0.0.1")).unwrap())
            .collect();
        assert_eq!(cap.clients(), 4);

        drop(a1);
        let a3 = cap.admit(ip("192.0.2.1")).unwrap();
        drop((a2, a3, exempt));
        assert_eq!(cap.clients(), 3, "a client with nothing open is forgotten");
    }
}
