//! Who the replicas are, kept current: a static list, or a headless Service's DNS name
//! resolved at start and every `refresh`; combined with [`Liveness`] and the replica's own
//! address into the one question the mirror asks: whose is this digest?
//!
//! The view is what every replica sees the same way (the list, the DNS answer), never
//! patched locally: a replica not yet in the DNS answer (not ready) does not add itself,
//! so it owns nothing and agrees with the others, who do not send it anything either. An
//! answer that fails or is empty keeps the last good view: a DNS hiccup must not turn
//! every replica into a filler of its own. With no peer at all (DNS never answered),
//! every digest is this replica's, as on one machine.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pullgate_oci::Digest;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{owner, Liveness, Peer, ServiceName};

/// Where the peers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Members {
    /// Exactly these, for the process's life.
    Static(Arc<[Peer]>),
    /// The addresses `name` resolves to, each with its port, looked up every `refresh`.
    Dns {
        name: ServiceName,
        refresh: Duration,
    },
}

/// A resolver of service names, so that tests need no DNS.
pub trait Resolve: Send + Sync + 'static {
    fn resolve<'a>(&'a self, name: &'a ServiceName) -> ResolveFuture<'a>;
}

pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// The system's resolver (tokio's `lookup_host`: getaddrinfo on a blocking thread).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a ServiceName) -> ResolveFuture<'a> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((name.host(), name.port()))
                .await?
                .collect())
        })
    }
}

/// Time, injected so tests of liveness through [`Cluster`] step it by hand.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Whose a digest is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This replica's: it fills it.
    Me,
    /// Another live replica's.
    Peer(Peer),
}

/// The peers as this replica sees them.
pub struct Cluster {
    me: Peer,
    view: watch::Receiver<Arc<[Peer]>>,
    /// The sender of a static view, which nothing sends on.
    _fixed: Option<watch::Sender<Arc<[Peer]>>>,
    liveness: Arc<Mutex<Liveness>>,
    clock: Arc<dyn Clock>,
    /// Owns the DNS refresher; [`Cluster::shutdown`] stops and waits for it.
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("me", &self.me)
            .field("peers", &*self.view.borrow())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// The view from `members`, as `me` (this replica's address as its peers know it). With
    /// DNS, the first answer is awaited (a failure leaves the view empty and is logged, not
    /// returned: the Service may not list this pod before it is ready), then a task owned by
    /// the cluster looks again every `refresh`.
    pub async fn start(
        me: Peer,
        members: Members,
        resolver: Arc<dyn Resolve>,
        clock: Arc<dyn Clock>,
    ) -> Cluster {
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let liveness = Arc::new(Mutex::new(Liveness::default()));
        let mut fixed = None;
        let view = match members {
            Members::Static(peers) => {
                let (tx, rx) = watch::channel(sorted(peers.iter().cloned()));
                // Kept, so that a watcher's `changed` waits (for ever) rather than failing.
                fixed = Some(tx);
                rx
            }
            Members::Dns { name, refresh } => {
                let (tx, rx) = watch::channel(Arc::from([]));
                let refresher = Refresher {
                    timeout: refresh.min(LOOKUP_TIMEOUT),
                    name,
                    resolver,
                    tx,
                    liveness: Arc::clone(&liveness),
                    me: me.clone(),
                };
                refresher.once().await;
                let stop = stop.clone();
                tasks.spawn(async move {
                    let mut every = tokio::time::interval(refresh);
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    every.tick().await;
                    // A lookup under way is dropped at shutdown too: the view changes only
                    // after an answer is in, so nothing is left half done.
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = async {
                                every.tick().await;
                                refresher.once().await;
                            } => {}
                        }
                    }
                });
                rx
            }
        };
        tasks.close();
        Cluster {
            me,
            view,
            _fixed: fixed,
            liveness,
            clock,
            tasks,
            stop,
        }
    }

    /// This replica.
    pub fn me(&self) -> &Peer {
        &self.me
    }

    /// The current view, sorted: every member, live or not.
    pub fn peers(&self) -> Arc<[Peer]> {
        Arc::clone(&self.view.borrow())
    }

    /// A receiver that sees each new view (for the future proxying code and tests).
    pub fn watch(&self) -> watch::Receiver<Arc<[Peer]>> {
        let mut rx = self.view.clone();
        // The view start awaited counts as seen: `changed` means a later one.
        rx.borrow_and_update();
        rx
    }

    /// The owner of `digest` among the live members; this replica when there is none.
    pub fn owner(&self, digest: &Digest) -> Owner {
        let peers = self.peers();
        let now = self.clock.now();
        let live = self.liveness.lock().unwrap_or_else(PoisonError::into_inner);
        match owner(digest, peers.iter().filter(|p| live.is_live(p, now))) {
            Some(p) if *p != self.me => Owner::Peer(p.clone()),
            _ => Owner::Me,
        }
    }

    pub fn is_mine(&self, digest: &Digest) -> bool {
        self.owner(digest) == Owner::Me
    }

    /// A call to `peer` failed: leave it out of ownership for its back-off. This replica
    /// is never left out of its own view.
    pub fn failed(&self, peer: &Peer) {
        if *peer == self.me {
            return;
        }
        let now = self.clock.now();
        let out = self
            .liveness
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failed(peer, now);
        tracing::warn!(%peer, backoff = ?out, "cluster peer down: its digests go to the next live owner");
    }

    /// A call to `peer` succeeded.
    pub fn succeeded(&self, peer: &Peer) {
        self.liveness
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .succeeded(peer);
    }

    /// Stop refreshing and wait for the refresher to end.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Dropped without shutdown (an error path of start-up): the refresher still ends.
        self.stop.cancel();
    }
}

/// The longest one lookup may take; more counts as a failure. getaddrinfo's own retries
/// can take far longer, and start-up waits for the first answer.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

struct Refresher {
    /// [`LOOKUP_TIMEOUT`], or `refresh` if shorter: an answer later than the next lookup
    /// is not worth waiting for.
    timeout: Duration,
    name: ServiceName,
    resolver: Arc<dyn Resolve>,
    tx: watch::Sender<Arc<[Peer]>>,
    liveness: Arc<Mutex<Liveness>>,
    me: Peer,
}

impl Refresher {
    async fn once(&self) {
        let answer = tokio::time::timeout(self.timeout, self.resolver.resolve(&self.name))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time")));
        // A dual-stack Service answers each pod's IPv4 and IPv6 address: one replica would
        // be two peers, with two shares. Only the family this replica advertises counts.
        let family = self.me.socket_addr().map(|a| a.is_ipv4());
        let answer = answer.map(|addrs| {
            addrs
                .into_iter()
                .map(Peer::from)
                .filter(|p| p.socket_addr().map(|a| a.is_ipv4()) == family)
                .collect::<Vec<_>>()
        });
        let peers = match answer {
            Ok(addrs) if !addrs.is_empty() => sorted(addrs.into_iter()),
            Ok(_) => {
                tracing::warn!(name = %self.name, "cluster DNS answered no address: keeping the last view");
                return;
            }
            Err(e) => {
                tracing::warn!(name = %self.name, error = %e, "cluster DNS lookup failed: keeping the last view");
                return;
            }
        };
        if *self.tx.borrow() == peers {
            return;
        }
        if !peers.contains(&self.me) {
            tracing::warn!(name = %self.name, me = %self.me, "this replica is not in the cluster's DNS answer (not ready yet, or cluster.advertise is not its address): it owns no digest");
        }
        tracing::info!(name = %self.name, peers = ?peers, "cluster membership changed");
        self.liveness
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(&peers);
        self.tx.send_replace(peers);
    }
}

fn sorted(peers: impl Iterator<Item = Peer>) -> Arc<[Peer]> {
    let mut v: Vec<Peer> = peers.collect();
    v.sort();
    v.dedup();
    v.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Answers in order, the last one again once they run out.
    struct Script(Mutex<VecDeque<io::Result<Vec<SocketAddr>>>>);

    impl Script {
        fn new(answers: Vec<io::Result<Vec<SocketAddr>>>) -> Arc<Self> {
            Arc::new(Script(Mutex::new(answers.into())))
        }
    }

    impl Resolve for Script {
        fn resolve<'a>(&'a self, _: &'a ServiceName) -> ResolveFuture<'a> {
            let mut q = self.0.lock().unwrap();
            let answer = if q.len() > 1 {
                q.pop_front().unwrap()
            } else {
                match q.front().unwrap() {
                    Ok(v) => Ok(v.clone()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                }
            };
            Box::pin(async move { answer })
        }
    }

    struct Manual(Mutex<Instant>);

    impl Clock for Manual {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    impl Manual {
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    /// The owner as a peer, whoever asks.
    fn who(c: &Cluster, d: &Digest) -> Peer {
        match c.owner(d) {
            Owner::Me => c.me().clone(),
            Owner::Peer(p) => p,
        }
    }

    fn addr(i: u8) -> SocketAddr {
        ([10, 0, 0, i], 5001).into()
    }

    fn dns(refresh: Duration) -> Members {
        Members::Dns {
            name: ServiceName::parse("peers.pullgate.svc:5001").unwrap(),
            refresh,
        }
    }

    #[tokio::test]
    async fn static_members_own_their_share_and_a_down_peer_is_skipped_for_its_backoff() {
        let peers: Vec<Peer> = (1..=3).map(|i| Peer::from(addr(i))).collect();
        let clock = Arc::new(Manual(Mutex::new(Instant::now())));
        let views: Vec<Cluster> = {
            let mut v = Vec::new();
            for p in &peers {
                v.push(
                    Cluster::start(
                        p.clone(),
                        // Each configured in another order: the owners agree all the same.
                        Members::Static(peers.iter().rev().cloned().collect()),
                        Arc::new(SystemResolver),
                        clock.clone(),
                    )
                    .await,
                );
            }
            v
        };
        let ds: Vec<Digest> = (0..300u32)
            .map(|i| Digest::sha256_of(&i.to_be_bytes()))
            .collect();
        let mut mine = [0; 3];
        for d in &ds {
            let owners: Vec<usize> = views
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_mine(d))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(owners.len(), 1, "{d}: exactly one replica calls it its own");
            mine[owners[0]] += 1;
            for c in &views {
                let want = if c.me() == &peers[owners[0]] {
                    Owner::Me
                } else {
                    Owner::Peer(peers[owners[0]].clone())
                };
                assert_eq!(c.owner(d), want);
            }
        }
        assert!(mine.iter().all(|&n| n > 50), "{mine:?}");
        // A static view never changes, and says so by never reporting a change.
        let mut w = views[0].watch();
        assert!(tokio::time::timeout(Duration::from_millis(20), w.changed())
            .await
            .is_err());

        // Replica 0 finds replica 2 down: 2's digests go to their runner-up, for 0 only.
        let (c0, p2) = (&views[0], &peers[2]);
        let of2: Vec<&Digest> = ds.iter().filter(|d| views[2].is_mine(d)).collect();
        c0.failed(p2);
        for d in &ds {
            let o = c0.owner(d);
            assert_ne!(o, Owner::Peer(p2.clone()));
            if !of2.contains(&d) {
                assert_eq!(
                    who(c0, d),
                    who(&views[1], d),
                    "{d} moved though 2 did not own it"
                );
            }
        }
        assert_eq!(views[1].owner(of2[0]), Owner::Peer(p2.clone()));
        // Itself is never left out.
        c0.failed(c0.me());
        assert!(ds.iter().any(|d| c0.is_mine(d)));
        clock.advance(crate::liveness::BACKOFF_FIRST);
        assert_eq!(
            c0.owner(of2[0]),
            Owner::Peer(p2.clone()),
            "used again after the back-off"
        );
        for c in &views {
            c.shutdown().await;
        }
    }

    #[tokio::test]
    async fn dns_members_are_resolved_refreshed_and_kept_over_a_failure() {
        let me = Peer::from(addr(1));
        let script = Script::new(vec![
            // Dual stack: the IPv6 addresses are the same pods again.
            Ok(vec![
                addr(2),
                addr(1),
                addr(2),
                "[fd00::2]:5001".parse().unwrap(),
            ]),
            Err(io::Error::other("SERVFAIL")),
            Ok(vec![]),
            Ok(vec!["[fd00::3]:5001".parse().unwrap()]),
            Ok(vec![addr(3), addr(1)]),
        ]);
        let c = Cluster::start(
            me.clone(),
            dns(Duration::from_millis(10)),
            script,
            Arc::new(SystemClock),
        )
        .await;
        // The first answer, awaited by start: sorted, deduplicated.
        assert_eq!(&*c.peers(), [Peer::from(addr(1)), Peer::from(addr(2))]);
        // A failure and an empty answer (or one of the other family only) keep it; the
        // next answer replaces it.
        let mut w = c.watch();
        tokio::time::timeout(Duration::from_secs(30), w.changed())
            .await
            .expect("refreshed within 30s")
            .unwrap();
        assert_eq!(&*c.peers(), [Peer::from(addr(1)), Peer::from(addr(3))]);
        c.shutdown().await;
        assert!(c.tasks.is_empty(), "the refresher ended");
    }

    #[tokio::test]
    async fn without_any_answer_every_digest_is_mine_and_absent_from_it_none_is() {
        let d = Digest::sha256_of(b"x");
        let c = Cluster::start(
            Peer::from(addr(1)),
            dns(Duration::from_secs(3600)),
            Script::new(vec![Err(io::Error::other("NXDOMAIN"))]),
            Arc::new(SystemClock),
        )
        .await;
        assert!(c.peers().is_empty() && c.is_mine(&d));
        c.shutdown().await;

        // Not yet in the answer: the others own everything, as they themselves think.
        let c = Cluster::start(
            Peer::from(addr(1)),
            dns(Duration::from_secs(3600)),
            Script::new(vec![Ok(vec![addr(2), addr(3)])]),
            Arc::new(SystemClock),
        )
        .await;
        assert!((0..100u32).all(|i| !c.is_mine(&Digest::sha256_of(&i.to_be_bytes()))));
        drop(c);
    }

    struct Silent;

    impl Resolve for Silent {
        fn resolve<'a>(&'a self, _: &'a ServiceName) -> ResolveFuture<'a> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn a_lookup_that_never_answers_does_not_hold_up_the_start() {
        let c = Cluster::start(
            Peer::from(addr(1)),
            dns(Duration::from_millis(50)),
            Arc::new(Silent),
            Arc::new(SystemClock),
        )
        .await;
        assert!(c.peers().is_empty());
        // Nor the refresher's shutdown, whose lookups hang too (each given up after the
        // refresh interval, or dropped by the shutdown itself).
        tokio::time::sleep(Duration::from_millis(120)).await;
        tokio::time::timeout(Duration::from_secs(30), c.shutdown())
            .await
            .expect("shut down");
    }

    #[test]
    fn the_system_resolver_resolves_an_address_without_a_network() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let name = ServiceName::parse("localhost:5001").unwrap();
        let addrs = rt.block_on(SystemResolver.resolve(&name)).unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.port() == 5001 && a.ip().is_loopback()),
            "{addrs:?}"
        );
    }
}
