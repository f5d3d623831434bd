//! Which replica owns a digest: rendezvous (highest random weight) hashing, a pure decision
//! apart from the membership and liveness that feed it (`membership.rs`).
//!
//! Each peer scores each digest; the highest score owns it. A peer that joins takes exactly
//! the digests it now outscores everyone on (about 1/(n+1) of them), and a peer that leaves
//! hands on only its own, each to the runner-up: nothing else moves, unlike `hash % n`,
//! which remaps almost everything when n changes. Ownership needs no coordination: every
//! replica with the same list computes the same owner.
//!
//! The score is the first 8 bytes (big-endian) of SHA-256 over
//! `"pullgate-hrw-v1\0" ‖ len(peer) as u32 BE ‖ peer ‖ digest`, peer and digest in their
//! canonical text. Why SHA-256: replicas of different builds (a rolling upgrade) must agree,
//! so the function must be fixed by a standard, not by a library's or compiler's choice
//! (`std`'s `DefaultHasher` may change between Rust releases, and the `Hash` impls it is
//! fed may too); it mixes well enough that the shares are even; it needs no key the
//! replicas would have to share; and ring, which computes it, is already the workspace's.
//! Its cost (well under a microsecond per peer for these few bytes) is nothing beside the
//! network fetch a decision precedes. The length prefix keeps (peer, digest) pairs from
//! running together; the version tag leaves room for a different scheme that could never
//! agree with this one by accident. `owner_is_stable_across_builds` pins known answers,
//! reproduced outside Rust with Python's `hashlib`: they are the formula's, not the code's.

use pullgate_oci::Digest;
use ring::digest::{Context, SHA256};

use crate::Peer;

const DOMAIN: &[u8] = b"pullgate-hrw-v1\0";

/// The score of `peer` for `digest`: the higher, the likelier the owner.
pub fn score(peer: &Peer, digest: &Digest) -> u64 {
    let mut h = Context::new(&SHA256);
    h.update(DOMAIN);
    let id = peer.as_str().as_bytes();
    // Peer texts are short (parsed host:port); a longer one would still hash, truncated
    // length or not, the same on every replica.
    h.update(&u32::try_from(id.len()).unwrap_or(u32::MAX).to_be_bytes());
    h.update(id);
    h.update(digest.algorithm().as_str().as_bytes());
    h.update(b":");
    h.update(digest.hex().as_bytes());
    let out = h.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// The owner of `digest` among `live` peers: the highest score, a tie (1 in 2^64) going to
/// the greater peer text, so the answer never depends on the order of the list. `None`
/// only for an empty list. A peer listed twice counts once.
pub fn owner<'a>(digest: &Digest, live: impl IntoIterator<Item = &'a Peer>) -> Option<&'a Peer> {
    live.into_iter()
        .map(|p| (score(p, digest), p))
        .max_by(|(a, pa), (b, pb)| a.cmp(b).then_with(|| pa.cmp(pb)))
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn digest(i: u64) -> Digest {
        Digest::sha256_of(&i.to_be_bytes())
    }

    fn peers(n: usize) -> Vec<Peer> {
        (0..n)
            .map(|i| Peer::parse(&format!("10.0.{}.{}:5001", i / 250, i % 250 + 1)).unwrap())
            .collect()
    }

    fn peer_set() -> impl Strategy<Value = Vec<Peer>> {
        // Distinct peers: IPs and names, as configurations and DNS give them.
        proptest::collection::btree_set(
            prop_oneof![
                (any::<[u8; 4]>(), 1..=u16::MAX)
                    .prop_map(|(ip, port)| Peer::from(std::net::SocketAddr::from((ip, port)))),
                ("[a-z][a-z0-9-]{0,10}[a-z0-9]", 1..=u16::MAX)
                    .prop_map(|(h, port)| Peer::parse(&format!("{h}.peers:{port}")).unwrap()),
            ],
            1..12,
        )
        .prop_map(|s| s.into_iter().collect())
    }

    fn any_digest() -> impl Strategy<Value = Digest> {
        any::<[u8; 16]>().prop_map(|b| Digest::sha256_of(&b))
    }

    proptest! {
        #[test]
        fn exactly_one_owner_among_the_live(peers in peer_set(), d in any_digest()) {
            let o = owner(&d, &peers).unwrap();
            prop_assert!(peers.contains(o));
            // It alone beats every other peer.
            let beats = |p: &Peer| peers.iter().all(|q| q == p || (score(p, &d), p) > (score(q, &d), q));
            prop_assert_eq!(peers.iter().filter(|p| beats(p)).collect::<Vec<_>>(), vec![o]);
        }

        #[test]
        fn the_order_of_the_list_does_not_matter(
            (peers, shuffled) in peer_set().prop_flat_map(|p| (Just(p.clone()), Just(p).prop_shuffle())),
            d in any_digest(),
        ) {
            prop_assert_eq!(owner(&d, &peers), owner(&d, &shuffled));
            let mut reversed = peers.clone();
            reversed.reverse();
            prop_assert_eq!(owner(&d, &peers), owner(&d, &reversed));
            // Listed twice counts once.
            let twice: Vec<Peer> = peers.iter().chain(&peers).cloned().collect();
            prop_assert_eq!(owner(&d, &peers), owner(&d, &twice));
        }

        #[test]
        fn adding_a_peer_moves_digests_only_to_it(
            peers in peer_set(),
            new in "[a-z]{1,8}",
            ds in proptest::collection::vec(any_digest(), 1..64),
        ) {
            let new = Peer::parse(&format!("{new}.joined:5001")).unwrap();
            let mut more = peers.clone();
            more.push(new.clone());
            for d in &ds {
                let before = owner(d, &peers).unwrap();
                let after = owner(d, &more).unwrap();
                prop_assert!(after == before || *after == new, "{d}: {before} -> {after}");
            }
        }

        #[test]
        fn removing_a_peer_moves_only_its_digests(
            peers in peer_set(),
            gone in any::<prop::sample::Index>(),
            ds in proptest::collection::vec(any_digest(), 1..64),
        ) {
            let gone = gone.get(&peers).clone();
            let fewer: Vec<Peer> = peers.iter().filter(|p| **p != gone).cloned().collect();
            for d in &ds {
                let before = owner(d, &peers).unwrap();
                match owner(d, &fewer) {
                    None => prop_assert_eq!(before, &gone),
                    Some(after) if *before == gone => prop_assert_ne!(after, &gone),
                    Some(after) => prop_assert_eq!(after, before),
                }
            }
        }
    }

    #[test]
    fn no_owner_without_peers() {
        assert_eq!(owner(&digest(0), &[] as &[Peer]), None);
    }

    /// 10,000 digests over n peers, then one peer more: the new peer takes about 1/(n+1)
    /// of them, every peer holds about 1/n before. The digests are fixed, so this cannot
    /// flake; the bounds (±0.03 of the whole: six standard deviations of a binomial at
    /// this size for n = 1, more for larger n) catch a skewed hash, not noise.
    #[test]
    fn adding_a_peer_moves_about_one_in_n_plus_one() {
        const N: u64 = 10_000;
        let ds: Vec<Digest> = (0..N).map(digest).collect();
        for n in 1..=9 {
            let all = peers(n + 1);
            let (old, _) = all.split_at(n);
            let mut held = vec![0u64; n];
            let mut moved = 0u64;
            for d in &ds {
                let before = owner(d, old).unwrap();
                held[old.iter().position(|p| p == before).unwrap()] += 1;
                let after = owner(d, &all).unwrap();
                if after != before {
                    assert_eq!(after, &all[n]);
                    moved += 1;
                }
            }
            let share = moved as f64 / N as f64;
            let want = 1.0 / (n as f64 + 1.0);
            assert!(
                (share - want).abs() < 0.03,
                "{n} -> {}: moved {share}, want {want}",
                n + 1
            );
            for (i, h) in held.iter().enumerate() {
                let share = *h as f64 / N as f64;
                assert!(
                    (share - 1.0 / n as f64).abs() < 0.03,
                    "{n} peers: peer {i} holds {share}"
                );
            }
        }
    }

    /// Known answers: a change to the score function fails here, before replicas of two
    /// builds disagree on owners in a rolling upgrade.
    #[test]
    fn owner_is_stable_across_builds() {
        let d = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        let p = Peer::parse("10.0.0.1:5001").unwrap();
        assert_eq!(score(&p, &d), GOLDEN_SCORE);
        let ps = peers(5);
        let owners: Vec<usize> = (0..8)
            .map(|i| {
                let o = owner(&digest(i), &ps).unwrap();
                ps.iter().position(|p| p == o).unwrap()
            })
            .collect();
        assert_eq!(owners, GOLDEN_OWNERS);
        let set: BTreeSet<usize> = owners.into_iter().collect();
        assert!(set.len() > 1);
    }

    const GOLDEN_SCORE: u64 = 8457136696824757485;
    const GOLDEN_OWNERS: [usize; 8] = [2, 2, 4, 3, 3, 0, 4, 4];
}
