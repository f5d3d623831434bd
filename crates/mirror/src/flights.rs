//! One in-flight computation per key, shared by every caller who asks meanwhile.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::error::MirrorError;

/// Coalesces concurrent requests for the same key into one run of the work.
///
/// The work runs in its own task, so it finishes (and caches what it fetched) even when
/// every client that asked for it has gone away.
pub(crate) struct Flights<K, V> {
    inner: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
}

impl<K, V> Flights<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn new() -> Self {
        Flights {
            inner: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Join the flight for `key`, or start `work` as the flight. `work` is only called
    /// (and its future only spawned) when no flight for `key` is under way.
    pub(crate) async fn run<F, Fut>(&self, key: K, work: F) -> Result<V, MirrorError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let mut rx = {
            let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            match map.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx.clone());
                    let fut = work();
                    let inner = Arc::clone(&self.inner);
                    tokio::spawn(async move {
                        let v = fut.await;
                        // Remove first: a caller arriving after this point must see the
                        // result in the store, not a finished flight.
                        inner
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&key);
                        let _ = tx.send(Some(v));
                    });
                    rx
                }
            }
        };
        let result = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| MirrorError::internal("coalesced task ended without a result"))?;
        match &*result {
            Some(v) => Ok(v.clone()),
            None => Err(MirrorError::internal(
                "coalesced task ended without a result",
            )),
        }
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights: Arc<Flights<u32, u32>> = Arc::new(Flights::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..16 {
            let flights = Arc::clone(&flights);
            let runs = Arc::clone(&runs);
            handles.push(tokio::spawn(async move {
                flights
                    .run(7, || {
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
            assert_eq!(h.await.unwrap().unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn work_completes_when_caller_goes_away() {
        let flights: Arc<Flights<u32, u32>> = Arc::new(Flights::new());
        let done = Arc::new(AtomicUsize::new(0));
        let d = Arc::clone(&done);
        let caller = tokio::spawn({
            let flights = Arc::clone(&flights);
            async move {
                flights
                    .run(1, move || async move {
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
}
