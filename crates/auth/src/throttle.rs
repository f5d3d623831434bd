//! Failed logins, counted so that guessing is limited without handing anyone a way to lock
//! other users out.
//!
//! Failures are counted per client address, per user name (from any address), per (address,
//! user name) pair, and over everything, each in fixed windows of `window`. A count that
//! reaches its limit blocks that key for `block`.
//!
//! Who a block stops: a block cannot tell the guesser from the user behind the same NAT
//! address, or from the owner of the user name being guessed, so it must not refuse a valid
//! credential from someone known. A pair that logged in successfully within `trusted_for` is
//! *known*: its credentials are always checked, and a right one passes whatever address,
//! user or global block others earned, until the pair itself fails `max_failures` times.
//! Only attempts from unknown pairs are refused unchecked (429) while a block covers them.
//! They must be: a block that checks every attempt and lets the right one through limits
//! nothing, since the guesser learns from the 200 exactly what the 401 would have told it.
//!
//! Tokens are not throttled before they are checked: a token cannot be guessed, and a
//! genuine one was bought with a password that was right. Expired genuine tokens are not
//! failures at all (the caller does not count them).
//!
//! Every map is bounded by `max_tracked`; an attacker spraying addresses or user names
//! pushes out unblocked keys before blocked ones, and never known pairs, which only a
//! successful login adds.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures from one address (and from one address for one user name) per window.
    pub max_failures: u32,
    /// Failures for one user name, from any address, per window.
    pub max_user_failures: u32,
    /// Failures over every client per window: the ceiling for guesses spread over many
    /// addresses and user names.
    pub max_global_failures: u32,
    pub window: Duration,
    pub block: Duration,
    /// How long a successful login keeps its (address, user name) pair exempt from blocks
    /// others earned.
    pub trusted_for: Duration,
    /// Addresses, user names, pairs and known pairs tracked, each; the oldest are
    /// forgotten beyond this.
    pub max_tracked: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            max_failures: 10,
            max_user_failures: 10,
            max_global_failures: 1000,
            window: Duration::from_secs(60),
            block: Duration::from_secs(60),
            trusted_for: Duration::from_secs(24 * 3600),
            max_tracked: 10_000,
        }
    }
}

/// A user name as the throttle knows it: hashed, because a password typed into the user
/// name field should not sit in memory in clear any longer than the request.
pub(crate) type UserKey = [u8; 32];

type Pair = (IpAddr, UserKey);

/// A full map forgets this fraction of itself at once.
const EVICT_FRACTION: usize = 64;

#[derive(Clone, Copy)]
struct Record {
    failures: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
}

impl Record {
    fn new(now: Instant) -> Self {
        Record {
            failures: 0,
            window_start: now,
            blocked_until: None,
        }
    }

    fn blocked(&self, now: Instant) -> Option<Duration> {
        let until = self.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts one failure; true when this one starts a block.
    fn fail(&mut self, now: Instant, max: u32, window: Duration, block: Duration) -> bool {
        if now.duration_since(self.window_start) > window {
            self.failures = 0;
            self.window_start = now;
        }
        self.failures += 1;
        if self.failures >= max.max(1) {
            self.blocked_until = Some(now + block);
            self.failures = 0;
            self.window_start = now;
            return true;
        }
        false
    }
}

/// Failure records by key, at most `max` of them.
struct Counters<K> {
    records: HashMap<K, Record>,
}

impl<K: Hash + Eq + Copy> Counters<K> {
    fn new() -> Self {
        Counters {
            records: HashMap::new(),
        }
    }

    fn blocked(&self, key: &K, now: Instant) -> Option<Duration> {
        self.records.get(key)?.blocked(now)
    }

    fn fail(&mut self, key: K, now: Instant, max: u32, c: &ThrottleConfig) -> bool {
        if !self.records.contains_key(&key) && self.records.len() >= c.max_tracked {
            self.make_room(now, c);
        }
        self.records
            .entry(key)
            .or_insert_with(|| Record::new(now))
            .fail(now, max, c.window, c.block)
    }

    fn make_room(&mut self, now: Instant, c: &ThrottleConfig) {
        let expired =
            |r: &Record| now.duration_since(r.window_start) > c.window && r.blocked(now).is_none();
        self.records.retain(|_, r| !expired(r));
        if self.records.len() < c.max_tracked {
            return;
        }
        // Unblocked keys go first: otherwise a guesser could spray failures from many
        // addresses (cheap with IPv6) or names to push its own block out of the map. A
        // batch at a time, so a full map under a spray costs one scan per batch, not one
        // per failure.
        let mut order: Vec<(bool, Instant, K)> = self
            .records
            .iter()
            .map(|(k, r)| (r.blocked(now).is_some(), r.window_start, *k))
            .collect();
        let batch = (c.max_tracked / EVICT_FRACTION).clamp(1, order.len());
        order.select_nth_unstable_by_key(batch - 1, |(blocked, start, _)| (*blocked, *start));
        for (_, _, k) in &order[..batch] {
            self.records.remove(k);
        }
    }
}

struct State {
    addresses: Counters<IpAddr>,
    users: Counters<UserKey>,
    pairs: Counters<Pair>,
    global: Record,
    /// Known pairs: until when each is trusted.
    known: HashMap<Pair, Instant>,
}

pub(crate) struct Throttle {
    config: ThrottleConfig,
    state: Mutex<State>,
}

impl Throttle {
    pub(crate) fn new(config: ThrottleConfig) -> Self {
        Throttle {
            config,
            state: Mutex::new(State {
                addresses: Counters::new(),
                users: Counters::new(),
                pairs: Counters::new(),
                global: Record::new(Instant::now()),
                known: HashMap::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the maps whole, so a panic elsewhere cannot leave them torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Before a Basic credential is checked: how long this attempt must wait, if a block
    /// covers it and its pair is not known.
    pub(crate) fn gate(&self, peer: IpAddr, user: &UserKey) -> Option<Duration> {
        let now = Instant::now();
        let s = self.state();
        let pair = (peer, *user);
        let pair_block = s.pairs.blocked(&pair, now);
        let known = s.known.get(&pair).is_some_and(|until| *until > now);
        if known && pair_block.is_none() {
            return None;
        }
        [
            pair_block,
            s.addresses.blocked(&peer, now),
            s.users.blocked(user, now),
            s.global.blocked(now),
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// Counts a failed attempt (`user`: the name a Basic attempt gave). How long this
    /// client must now wait, if a block covers it: its answer is then 429, not 401.
    pub(crate) fn fail(&self, peer: IpAddr, user: Option<&UserKey>) -> Option<Duration> {
        let now = Instant::now();
        let c = &self.config;
        let mut s = self.state();
        let s = &mut *s;
        if s.addresses.fail(peer, now, c.max_failures, c) {
            tracing::warn!(client = %peer, block = ?c.block, "too many failed logins from one address; unknown clients there are refused");
        }
        if s.global.fail(now, c.max_global_failures, c.window, c.block) {
            tracing::warn!(block = ?c.block, "too many failed logins over all clients; unknown clients are refused");
        }
        let mut waits = vec![s.addresses.blocked(&peer, now), s.global.blocked(now)];
        if let Some(user) = user {
            // Never the name: it matched no entry, or it would not be guessed at.
            if s.users.fail(*user, now, c.max_user_failures, c) {
                tracing::warn!(block = ?c.block, "too many failed logins for one user name; unknown clients are refused it");
            }
            let pair = (peer, *user);
            if s.pairs.fail(pair, now, c.max_failures, c) {
                tracing::debug!(client = %peer, "too many failed logins for one user name from one address");
            }
            waits.push(s.users.blocked(user, now));
            waits.push(s.pairs.blocked(&pair, now));
        }
        waits.into_iter().flatten().max()
    }

    /// A successful login: its pair is known for `trusted_for`.
    pub(crate) fn succeed(&self, peer: IpAddr, user: &UserKey) {
        let now = Instant::now();
        let c = &self.config;
        let mut s = self.state();
        let pair = (peer, *user);
        if !s.known.contains_key(&pair) && s.known.len() >= c.max_tracked {
            s.known.retain(|_, until| *until > now);
            if s.known.len() >= c.max_tracked {
                let mut order: Vec<(Instant, Pair)> =
                    s.known.iter().map(|(p, until)| (*until, *p)).collect();
                let batch = (c.max_tracked / EVICT_FRACTION).clamp(1, order.len());
                order.select_nth_unstable_by_key(batch - 1, |(until, _)| *until);
                for (_, p) in &order[..batch] {
                    s.known.remove(p);
                }
            }
        }
        s.known.insert(pair, now + c.trusted_for);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            max_failures: 3,
            max_user_failures: 5,
            max_global_failures: 1000,
            window: Duration::from_secs(60),
            block: Duration::from_secs(30),
            trusted_for: Duration::from_secs(3600),
            max_tracked: 4,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn user(n: u8) -> UserKey {
        [n; 32]
    }

    fn len(t: &Throttle) -> [usize; 4] {
        let s = t.state();
        [
            s.addresses.records.len(),
            s.users.records.len(),
            s.pairs.records.len(),
            s.known.len(),
        ]
    }

    #[test]
    fn an_address_block_refuses_unknown_pairs_only_and_stays_bounded() {
        let t = Throttle::new(config());
        let (a, b) = (ip(1), ip(2));
        t.succeed(a, &user(1));
        for i in 0..2 {
            assert!(t.fail(a, Some(&user(10 + i))).is_none());
        }
        let wait = t
            .fail(a, Some(&user(12)))
            .expect("the third failure blocks");
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        // Someone new at that address waits; user 1, known there, is still checked.
        assert!(t.gate(a, &user(2)).is_some());
        assert!(t.gate(a, &user(1)).is_none());
        // Elsewhere, nobody is affected.
        assert!(t.gate(b, &user(2)).is_none());
        for i in 0..100u8 {
            t.fail(IpAddr::from([10, 1, 0, i]), Some(&user(100 + i)));
        }
        assert!(len(&t).iter().all(|n| *n <= 4), "{:?}", len(&t));
        // Spraying single failures from other addresses does not evict the block.
        assert!(t.gate(a, &user(2)).is_some());
        assert!(t.gate(a, &user(1)).is_none());
    }

    #[test]
    fn guesses_at_one_user_from_many_addresses_are_limited() {
        let t = Throttle::new(ThrottleConfig {
            max_tracked: 100,
            ..config()
        });
        let victim = user(7);
        t.succeed(ip(200), &victim);
        // One guess each from five addresses: no address is near its limit...
        for n in 0..4 {
            assert!(t.fail(ip(n), Some(&victim)).is_none());
        }
        assert!(t.fail(ip(4), Some(&victim)).is_some());
        // ... but the name is blocked for every unknown pair, on any address,
        assert!(t.gate(ip(50), &victim).is_some());
        assert!(t.gate(ip(0), &victim).is_some());
        // not for its owner where it logs in from,
        assert!(t.gate(ip(200), &victim).is_none());
        // and not for other names.
        assert!(t.gate(ip(50), &user(8)).is_none());
    }

    #[test]
    fn a_known_pair_loses_its_exemption_by_its_own_failures() {
        let t = Throttle::new(config());
        let a = ip(1);
        t.succeed(a, &user(1));
        for _ in 0..2 {
            assert!(t.fail(a, Some(&user(1))).is_none());
            assert!(t.gate(a, &user(1)).is_none());
        }
        assert!(t.fail(a, Some(&user(1))).is_some());
        assert!(t.gate(a, &user(1)).is_some());
    }

    #[test]
    fn the_global_ceiling_refuses_unknown_pairs_everywhere() {
        let t = Throttle::new(ThrottleConfig {
            max_global_failures: 6,
            max_tracked: 100,
            ..config()
        });
        t.succeed(ip(99), &user(99));
        // Distinct addresses and names: no other limit is reached.
        for n in 0..5 {
            assert!(t.fail(ip(n), Some(&user(n))).is_none());
        }
        assert!(t.fail(ip(5), None).is_some());
        assert!(t.gate(ip(60), &user(60)).is_some());
        assert!(t.gate(ip(99), &user(99)).is_none());
    }

    #[test]
    fn failures_count_within_one_window_only() {
        let t = Throttle::new(ThrottleConfig {
            max_failures: 2,
            window: Duration::from_millis(50),
            ..config()
        });
        let (a, b) = (ip(1), ip(2));
        // Two failures in separate windows never block.
        t.fail(a, None);
        std::thread::sleep(Duration::from_millis(80));
        t.fail(a, None);
        assert!(t.gate(a, &user(1)).is_none());
        t.fail(a, None);
        assert!(t.gate(a, &user(1)).is_some());
        assert!(t.gate(b, &user(1)).is_none());
    }

    #[test]
    fn trust_expires_and_known_pairs_stay_bounded() {
        let t = Throttle::new(ThrottleConfig {
            trusted_for: Duration::from_millis(30),
            ..config()
        });
        let a = ip(1);
        t.succeed(a, &user(1));
        for i in 0..3 {
            t.fail(a, Some(&user(20 + i)));
        }
        assert!(t.gate(a, &user(1)).is_none());
        std::thread::sleep(Duration::from_millis(50));
        assert!(t.gate(a, &user(1)).is_some());
        for n in 0..50 {
            t.succeed(ip(n), &user(n));
        }
        assert!(len(&t)[3] <= 4);
    }
}
