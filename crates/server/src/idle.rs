//! Connections that hold one of `max_connections` without using it are closed.
//!
//! hyper bounds an HTTP/1 connection while it waits for request headers
//! (`header_read_timeout`), but not:
//! - an HTTP/2 connection between requests: it can sit idle forever;
//! - a response the client stops reading: the write waits on a full socket forever, and
//!   keeps the blob it streams pinned in the cache.
//!
//! [`Watched`] wraps the TCP stream (below TLS) and notes when bytes move and when a write
//! is stuck; [`Activity::request`] notes requests in flight (until their response body is
//! dropped). [`watch`] runs a connection and closes it when, for `idle_timeout`, it has had
//! no request in flight and no bytes moving, or a write has been stuck. A request waiting
//! on the mirror (an upstream fetch, a fill not yet at its range) is not idle: the
//! upstream's own timeouts bound it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Marks "not stuck" in [`Activity::write_stuck_since`].
const NOT_STUCK: u64 = u64::MAX;

/// What one connection has been doing, in milliseconds since it was accepted.
#[derive(Debug)]
pub(crate) struct Activity {
    accepted: Instant,
    /// The last time a byte was read or written, or a response ended.
    last_progress: AtomicU64,
    /// Since when a write has been waiting on a full socket; [`NOT_STUCK`] if none is.
    write_stuck_since: AtomicU64,
    /// Requests whose response (body included) is not finished.
    in_flight: AtomicUsize,
    /// Requests seen on this connection so far.
    requests: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            accepted: Instant::now(),
            last_progress: AtomicU64::new(0),
            write_stuck_since: AtomicU64::new(NOT_STUCK),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn progress(&self) {
        self.last_progress.store(self.now(), Ordering::Relaxed);
    }

    /// A request has arrived; the connection counts it in flight until the guard (moved
    /// into the response body) is dropped.
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Why the connection should be closed now, or how long until it might be.
    fn verdict(&self, limits: &Limits) -> Result<Duration, &'static str> {
        self.verdict_at(self.now(), limits)
    }

    fn verdict_at(&self, now: u64, limits: &Limits) -> Result<Duration, &'static str> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4);
        let idle = ms(limits.idle);
        // Whatever happens without us hearing of it (a write getting stuck, the last
        // response ending) is looked at again within a quarter of the limit.
        let mut next = (idle / 4).max(10);
        if self.requests.load(Ordering::Relaxed) == 0 {
            let first = ms(limits.first_request);
            if now >= first {
                return Err("no request within the header timeout");
            }
            next = next.min(first - now);
        }
        let stuck = self.write_stuck_since.load(Ordering::Relaxed);
        if stuck != NOT_STUCK {
            let deadline = stuck.saturating_add(idle);
            if now >= deadline {
                return Err("the client has read nothing within the idle timeout");
            }
            next = next.min(deadline - now);
        }
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let deadline = self
                .last_progress
                .load(Ordering::Relaxed)
                .saturating_add(idle);
            if now >= deadline {
                return Err("idle for the idle timeout");
            }
            next = next.min(deadline - now);
        }
        Ok(Duration::from_millis(next))
    }
}

/// One request in flight; dropped with its response body.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.progress();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in flight until hyper drops it.
pub(crate) struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        Tracked {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B> HttpBody for Tracked<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's stream, noting progress and stuck writes in its [`Activity`].
pub(crate) struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }

    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        let a = &self.activity;
        match result {
            Poll::Pending => {
                let _ = a.write_stuck_since.compare_exchange(
                    NOT_STUCK,
                    a.now(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Poll::Ready(r) => {
                a.write_stuck_since.store(NOT_STUCK, Ordering::Relaxed);
                if matches!(r, Ok(n) if *n > 0) {
                    a.progress();
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.progress();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long a connection may go without a request, and without using its slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// From the accept, for the first request (including the TLS handshake).
    pub(crate) first_request: Duration,
    /// No request in flight and no bytes moving; or a write stuck on a full socket.
    pub(crate) idle: Duration,
}

/// Run `conn` (or a TLS handshake) until it ends or [`Activity::verdict`] closes it: `None`
/// if it was closed.
pub(crate) async fn watch<F: Future>(
    conn: F,
    activity: &Activity,
    limits: Limits,
    peer: std::net::SocketAddr,
) -> Option<F::Output> {
    tokio::pin!(conn);
    loop {
        let wait = match activity.verdict(&limits) {
            Ok(wait) => wait,
            Err(why) => {
                tracing::debug!(client = %peer, why, "closing the connection");
                return None;
            }
        };
        tokio::select! {
            output = &mut conn => return Some(output),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    fn limits() -> Limits {
        Limits {
            first_request: Duration::from_secs(1),
            idle: Duration::from_secs(4),
        }
    }

    #[test]
    fn a_connection_without_a_request_closes_after_the_first_request_limit() {
        let a = Activity::new();
        assert_eq!(a.verdict_at(0, &limits()), Ok(Duration::from_secs(1)));
        assert_eq!(a.verdict_at(999, &limits()), Ok(Duration::from_millis(1)));
        assert!(a.verdict_at(S, &limits()).is_err());
    }

    #[test]
    fn a_request_in_flight_is_never_idle_but_a_stuck_write_is() {
        let a = Activity::new();
        let guard = a.request();
        assert_eq!(
            a.verdict_at(3600 * S, &limits()),
            Ok(Duration::from_secs(1))
        );

        a.write_stuck_since.store(3600 * S, Ordering::Relaxed);
        assert_eq!(
            a.verdict_at(3600 * S + 3999, &limits()),
            Ok(Duration::from_millis(1))
        );
        assert!(a.verdict_at(3604 * S, &limits()).is_err());

        a.write_stuck_since.store(NOT_STUCK, Ordering::Relaxed);
        drop(guard);
        assert_eq!(a.in_flight.load(Ordering::Relaxed), 0);
        // Idle counts from the end of the last response.
        a.last_progress.store(3604 * S, Ordering::Relaxed);
        assert_eq!(
            a.verdict_at(3604 * S, &limits()),
            Ok(Duration::from_secs(1))
        );
        assert_eq!(
            a.verdict_at(3608 * S - 1, &limits()),
            Ok(Duration::from_millis(1))
        );
        assert!(a.verdict_at(3608 * S, &limits()).is_err());
    }

    #[test]
    fn bytes_moving_keep_a_connection_open() {
        let a = Activity::new();
        drop(a.request());
        for t in 1..10 {
            a.last_progress.store(t * 3 * S, Ordering::Relaxed);
            assert!(a.verdict_at(t * 3 * S + 3 * S, &limits()).is_ok());
        }
        assert!(a.verdict_at(27 * S + 4 * S, &limits()).is_err());
    }
}
