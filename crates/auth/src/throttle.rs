//! Failed logins per client address: after `max_failures` within `window`, the address is
//! refused for `block`. Other addresses are never affected, so a guesser cannot lock out
//! valid users elsewhere.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    pub max_failures: u32,
    pub window: Duration,
    pub block: Duration,
    /// Addresses tracked at once; the oldest are forgotten beyond this.
    pub max_tracked: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            max_failures: 10,
            window: Duration::from_secs(60),
            block: Duration::from_secs(60),
            max_tracked: 10_000,
        }
    }
}

struct Record {
    failures: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
}

pub(crate) struct Throttle {
    config: ThrottleConfig,
    peers: Mutex<HashMap<IpAddr, Record>>,
}

impl Throttle {
    pub(crate) fn new(config: ThrottleConfig) -> Self {
        Throttle {
            config,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// How long `peer` must still wait, if it is blocked.
    pub(crate) fn blocked(&self, peer: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let until = peers.get(&peer)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    pub(crate) fn fail(&self, peer: IpAddr) {
        let now = Instant::now();
        let c = &self.config;
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if !peers.contains_key(&peer) && peers.len() >= c.max_tracked {
            let expired = |r: &Record| {
                now.duration_since(r.window_start) > c.window
                    && r.blocked_until.is_none_or(|u| u <= now)
            };
            peers.retain(|_, r| !expired(r));
            if peers.len() >= c.max_tracked {
                // Unblocked addresses go first: otherwise a guesser could spray failures from
                // many addresses (cheap with IPv6) to push its own block out of the map.
                if let Some(oldest) = peers
                    .iter()
                    .min_by_key(|(_, r)| (r.blocked_until.is_some_and(|u| u > now), r.window_start))
                    .map(|(ip, _)| *ip)
                {
                    peers.remove(&oldest);
                }
            }
        }
        let r = peers.entry(peer).or_insert(Record {
            failures: 0,
            window_start: now,
            blocked_until: None,
        });
        if now.duration_since(r.window_start) > c.window {
            r.failures = 0;
            r.window_start = now;
        }
        r.failures += 1;
        if r.failures >= c.max_failures {
            r.blocked_until = Some(now + c.block);
            r.failures = 0;
            r.window_start = now;
            tracing::warn!(client = %peer, block = ?c.block, "too many failed logins; blocking the address");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_one_address_only_and_stays_bounded() {
        let t = Throttle::new(ThrottleConfig {
            max_failures: 3,
            window: Duration::from_secs(60),
            block: Duration::from_secs(30),
            max_tracked: 4,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        t.fail(a);
        t.fail(a);
        assert!(t.blocked(a).is_none());
        t.fail(a);
        let wait = t.blocked(a).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        assert!(t.blocked(b).is_none());
        for i in 0..100u8 {
            t.fail(IpAddr::from([10, 1, 0, i]));
        }
        assert!(t.peers.lock().unwrap().len() <= 4);
        // Spraying single failures from other addresses does not evict the block.
        assert!(t.blocked(a).is_some());
    }

    #[test]
    fn failures_count_within_one_window_only() {
        let t = Throttle::new(ThrottleConfig {
            max_failures: 2,
            window: Duration::from_millis(50),
            block: Duration::from_secs(30),
            max_tracked: 16,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // Two failures in separate windows never block.
        t.fail(a);
        std::thread::sleep(Duration::from_millis(80));
        t.fail(a);
        assert!(t.blocked(a).is_none());
        t.fail(a);
        assert!(t.blocked(a).is_some());
        assert!(t.blocked(b).is_none());
    }
}
