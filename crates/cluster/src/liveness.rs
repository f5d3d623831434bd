//! Which peers to leave out of ownership for a while: a peer whose call failed (a refused
//! connection, a timeout; decided by the caller, the proxying code) is down for a back-off
//! period, then tried again. A pure state machine over the instants it is given: no clock of
//! its own, so tests step time by hand.
//!
//! Leaving a down peer out moves only its digests, each to its runner-up (`owner.rs`), so
//! a dead owner costs its share one local fill each rather than a wait on every request.
//! Views of liveness differ between replicas (each sees its own failures); the price of
//! two views is at most one extra upstream fetch of a digest per replica, never a wrong byte.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Peer;

/// A first failure keeps a peer out this long; each failure on coming back doubles it.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(2);
/// The longest a peer is kept out at a time: a replica back from a restart is used again
/// within this, whatever its history.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Down {
    until: Instant,
    /// Failures since the last success, this one included.
    failures: u32,
}

/// Peers marked down, and until when. A peer not here is up.
#[derive(Debug, Default)]
pub struct Liveness {
    down: HashMap<Peer, Down>,
}

impl Liveness {
    /// Whether `peer` may own digests at `now`: never marked down, or its back-off is over.
    pub fn is_live(&self, peer: &Peer, now: Instant) -> bool {
        self.down.get(peer).is_none_or(|d| now >= d.until)
    }

    /// A call to `peer` failed at `now`. A peer already down (calls that were under way
    /// when it went) is not pushed further out: only a failure after it came back is one
    /// more. Returns how long it is out.
    pub fn failed(&mut self, peer: &Peer, now: Instant) -> Duration {
        let failures = match self.down.get(peer) {
            Some(d) if now < d.until => return d.until - now,
            Some(d) => d.failures.saturating_add(1),
            None => 1,
        };
        let backoff = backoff(failures);
        self.down.insert(
            peer.clone(),
            Down {
                until: now + backoff,
                failures,
            },
        );
        backoff
    }

    /// A call to `peer` succeeded: it is up, and its next failure starts from
    /// [`BACKOFF_FIRST`] again.
    pub fn succeeded(&mut self, peer: &Peer) {
        self.down.remove(peer);
    }

    /// Forget peers no longer in the membership, so churn (a new pod address per restart)
    /// does not grow this for ever.
    pub fn retain(&mut self, members: &[Peer]) {
        self.down.retain(|p, _| members.contains(p));
    }

    /// Peers out at `now`.
    pub fn down_at(&self, now: Instant) -> impl Iterator<Item = &Peer> {
        self.down
            .iter()
            .filter(move |(_, d)| now < d.until)
            .map(|(p, _)| p)
    }
}

/// The back-off after the `failures`th failure in a row.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> Peer {
        Peer::parse(s).unwrap()
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let secs: Vec<u64> = (1..=8).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
        assert_eq!(backoff(0), BACKOFF_FIRST);
    }

    #[test]
    fn down_for_the_backoff_then_used_again() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let (a, b) = (peer("10.0.0.1:5001"), peer("10.0.0.2:5001"));
        let mut l = Liveness::default();
        assert!(l.is_live(&a, t0) && l.is_live(&b, t0));

        assert_eq!(l.failed(&a, t0), Duration::from_secs(2));
        assert!(!l.is_live(&a, t0) && !l.is_live(&a, s(1)));
        assert!(l.is_live(&b, s(1)), "one peer's failure is its own");
        assert_eq!(l.down_at(s(1)).collect::<Vec<_>>(), [&a]);
        // Calls that were under way when it went down fail too: not held against it.
        assert_eq!(l.failed(&a, s(1)), Duration::from_secs(1));
        assert!(l.is_live(&a, s(2)), "back after the back-off");
        assert_eq!(l.down_at(s(2)).count(), 0);

        // It fails again once back: out twice as long.
        assert_eq!(l.failed(&a, s(3)), Duration::from_secs(4));
        assert!(!l.is_live(&a, s(6)) && l.is_live(&a, s(7)));
        assert_eq!(l.failed(&a, s(7)), Duration::from_secs(8));

        // A success resets it: the next failure starts from the first back-off again.
        l.succeeded(&a);
        assert!(l.is_live(&a, s(8)));
        assert_eq!(l.failed(&a, s(8)), Duration::from_secs(2));

        // A peer that left the membership is forgotten.
        l.failed(&b, s(8));
        l.retain(std::slice::from_ref(&b));
        assert!(l.is_live(&a, s(8)) && !l.is_live(&b, s(8)));
    }
}
