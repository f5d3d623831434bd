//! One in-flight computation per key, shared by every caller who asks meanwhile: the
//! mirror's manifest fetches and tag revalidations, the upstream client's token handshakes.
//!
//! A flight is an entry in a map from key to a `watch` channel that will carry the result.
//! The first caller for a key leads it; callers arriving meanwhile follow and get a clone
//! of the result. The entry is removed before the result is sent, so a caller arriving
//! after that starts a new flight (and should find the result wherever the work put it).
//!
//! Two ways to lead:
//! - [`Flights::spawn`]: the work runs in its own task, so it finishes (and caches what it
//!   fetched) even if every caller has gone away. The work must be `'static`.
//! - [`Flights::run`]: the lead runs the work itself, borrowing what it likes. If the lead
//!   is cancelled, its flight ends without a result and a follower leads a new one.
//!
//! Not here: what the work does, retries, or caching its result.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// A spawned flight's task ended without a result (it panicked, or the runtime is shutting
/// down).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the coalesced work ended without a result")]
pub struct Abandoned;

type Map<K, V> = Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>;

/// Concurrent requests for one key share one run of the work. Cheap to share by reference;
/// the map holds only the flights under way.
pub struct Flights<K, V> {
    map: Map<K, V>,
    /// Owns the tasks [`Flights::spawn`] starts, so shutdown can wait for them.
    tasks: Option<TaskTracker>,
}

/// The lead's side of a flight. Dropped without [`Landing::land`] (the lead was
/// cancelled), it still removes the flight, and its followers see the channel close.
struct Landing<K: Eq + Hash, V> {
    map: Map<K, V>,
    key: Option<K>,
    tx: watch::Sender<Option<V>>,
}

enum Joined<K: Eq + Hash, V> {
    Lead(Landing<K, V>),
    Follow(watch::Receiver<Option<V>>),
}

fn lock<K, V>(map: &Map<K, V>) -> MutexGuard<'_, HashMap<K, watch::Receiver<Option<V>>>> {
    // Single inserts and removes only: a poisoned map is still consistent.
    map.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K: Eq + Hash, V> Landing<K, V> {
    fn land(mut self, v: V) {
        if let Some(key) = self.key.take() {
            lock(&self.map).remove(&key);
        }
        self.tx.send_replace(Some(v));
    }
}

impl<K: Eq + Hash, V> Drop for Landing<K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.map).remove(&key);
        }
    }
}

/// The flight's result, or `None` if its lead ended without one.
async fn outcome<V: Clone>(mut rx: watch::Receiver<Option<V>>) -> Option<V> {
    rx.wait_for(Option::is_some).await.ok()?.clone()
}

impl<K: Eq + Hash + Clone, V: Clone> Flights<K, V> {
    pub fn new() -> Self {
        Flights {
            map: Arc::new(Mutex::new(HashMap::new())),
            tasks: None,
        }
    }

    /// Flights whose spawned work is tracked by `tasks` (its owner waits for it at
    /// shutdown).
    pub fn owned_by(tasks: TaskTracker) -> Self {
        Flights {
            map: Arc::new(Mutex::new(HashMap::new())),
            tasks: Some(tasks),
        }
    }

    fn join(&self, key: K) -> Joined<K, V> {
        let mut map = lock(&self.map);
        if let Some(rx) = map.get(&key) {
            return Joined::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx);
        Joined::Lead(Landing {
            map: Arc::clone(&self.map),
            key: Some(key),
            tx,
        })
    }

    /// Join the flight for `key`, or lead one that runs `work` in a task of its own.
    /// `work` is called (and its future spawned) only when no flight for `key` is under way.
    pub async fn spawn<F, Fut>(&self, key: K, work: F) -> Result<V, Abandoned>
    where
        K: Send + 'static,
        V: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let rx = match self.join(key) {
            Joined::Follow(rx) => rx,
            Joined::Lead(landing) => {
                let rx = landing.tx.subscribe();
                let fut = work();
                let task = async move { landing.land(fut.await) };
                match &self.tasks {
                    Some(tasks) => drop(tasks.spawn(task)),
                    None => drop(tokio::spawn(task)),
                }
                rx
            }
        };
        outcome(rx).await.ok_or(Abandoned)
    }

    /// Join the flight for `key`, or lead one by running `work` here. If the lead is
    /// cancelled before it lands, a follower leads again (calling its own `work`).
    pub async fn run<F, Fut>(&self, key: K, work: F) -> V
    where
        F: Fn() -> Fut,
        Fut: Future<Output = V>,
    {
        loop {
            match self.join(key.clone()) {
                Joined::Lead(landing) => {
                    let v = work().await;
                    landing.land(v.clone());
                    return v;
                }
                Joined::Follow(rx) => {
                    if let Some(v) = outcome(rx).await {
                        return v;
                    }
                }
            }
        }
    }

    /// Flights under way.
    pub fn in_flight(&self) -> usize {
        lock(&self.map).len()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Default for Flights<K, V> {
    fn default() -> Self {
        Flights::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_spawned_run() {
        let flights: Arc<Flights<u32, u32>> = Arc::new(Flights::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..16 {
            let flights = Arc::clone(&flights);
            let runs = Arc::clone(&runs);
            handles.push(tokio::spawn(async move {
                flights
                    .spawn(7, || {
                        let runs = Arc::clone(&runs);
                        async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            42
                        }
                    })
                    .await
            }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap(), Ok(42));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn spawned_work_completes_when_its_caller_goes_away() {
        let flights: Arc<Flights<u32, u32>> = Arc::new(Flights::new());
        let done = Arc::new(AtomicUsize::new(0));
        let d = Arc::clone(&done);
        let caller = tokio::spawn({
            let flights = Arc::clone(&flights);
            async move {
                flights
                    .spawn(1, move || async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        d.fetch_add(1, Ordering::SeqCst);
                        1
                    })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        caller.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_flight_run_here_shares_its_outcome_errors_included_and_survives_a_cancelled_lead() {
        let flights: Flights<&str, Result<u32, String>> = Flights::new();
        let calls = AtomicUsize::new(0);
        let gate = tokio::sync::Notify::new();
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            gate.notified().await;
            Err::<u32, _>("token endpoint down".to_owned())
        };
        let waiters = futures_util::future::join_all((0..5).map(|_| flights.run("s", fetch)));
        let release = async {
            tokio::task::yield_now().await;
            gate.notify_one();
        };
        let (outcomes, ()) = tokio::join!(waiters, release);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        for o in outcomes {
            assert_eq!(o, Err("token endpoint down".to_owned()));
        }
        assert_eq!(flights.in_flight(), 0, "a landed flight is forgotten");

        // The lead is dropped midway: a follower leads a new run.
        let calls = AtomicUsize::new(0);
        let fetch = || async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                std::future::pending::<()>().await;
            }
            Ok(9)
        };
        let mut lead = Box::pin(flights.run("s", fetch));
        let mut follower = Box::pin(flights.run("s", fetch));
        assert!((&mut lead).now_or_never().is_none());
        assert!((&mut follower).now_or_never().is_none());
        drop(lead);
        assert_eq!(follower.await, Ok(9));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(flights.in_flight(), 0);
    }
}
