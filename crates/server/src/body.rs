//! The one response body type: empty, a small buffer, or a blob streamed from the store.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http_body::{Frame, SizeHint};
use pullgate_mirror::BlobStream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum Body {
    Empty,
    Full(Option<Bytes>),
    /// `remaining` is what the headers promised; a stream that ends short is an error, so
    /// hyper aborts the connection instead of ending the body cleanly.
    Blob {
        stream: BlobStream,
        remaining: u64,
        /// Counts bytes as they go out, so aborted downloads count what was sent.
        served: Arc<AtomicU64>,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("blob stream ended {0} bytes short")]
struct ShortBody(u64);

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(Some(bytes.into()))
    }

    /// `len` bytes of `stream`, each counted in `served` as it goes out.
    pub fn blob(stream: BlobStream, len: u64, served: Arc<AtomicU64>) -> Self {
        Body::Blob {
            stream,
            remaining: len,
            served,
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Blob {
                stream,
                remaining,
                served,
            } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                match Pin::new(stream).poll_next(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Some(Ok(chunk))) => {
                        *remaining = remaining.saturating_sub(chunk.len() as u64);
                        served.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        Poll::Ready(Some(Ok(Frame::data(chunk))))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                    Poll::Ready(None) => Poll::Ready(Some(Err(Box::new(ShortBody(*remaining))))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Blob { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Blob { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}
