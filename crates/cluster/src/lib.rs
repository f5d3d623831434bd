//! The replicas of one mirror, as each sees them: who they are, which one owns a digest,
//! which are up. It decides; it does not proxy (issue 18's next step, in the mirror and
//! server crates, will ask it before filling a cold blob).
//!
//! - `peer.rs`: [`Peer`], a replica's internal address in its one canonical spelling, and
//!   [`ServiceName`], a headless Service's `name:port`, both parsed where they enter.
//! - `owner.rs`: [`owner`], rendezvous hashing of a digest over the live peers, and its
//!   [`score`] (SHA-256 based, the same on every build: the module says why). Pure.
//! - `liveness.rs`: [`Liveness`], peers down after a failed call for a doubling back-off.
//!   Pure: it is handed the time.
//! - `membership.rs`: [`Cluster`], the view from a static list ([`Members::Static`]) or
//!   DNS re-resolved on an interval ([`Members::Dns`], through the [`Resolve`] trait), with
//!   this replica's own address, liveness and an injected [`Clock`]: [`Cluster::owner`]
//!   and [`Cluster::is_mine`]. Its one task (the DNS refresher) is owned by a
//!   `TaskTracker` that [`Cluster::shutdown`] waits for.
//! - `key.rs`: [`SharedKey`], the replicas' shared secret, read from a file and never shown.
//!
//! Not here: HTTP, the internal listener, authentication of calls (the next step).

mod error;
mod key;
mod liveness;
mod membership;
mod owner;
mod peer;

pub use error::ClusterError;
pub use key::{SharedKey, MIN_KEY_LEN};
pub use liveness::{backoff, Liveness, BACKOFF_FIRST, BACKOFF_MAX};
pub use membership::{
    Clock, Cluster, Members, Owner, Resolve, ResolveFuture, SystemClock, SystemResolver,
};
pub use owner::{owner, score};
pub use peer::{Peer, ServiceName};
