//! Blobs the cache cannot hold (its disk is full, read-only or failing) still reach their
//! clients: streamed straight from the upstream, hashed as they pass, never written.
//!
//! The same promise as a cached blob's stream holds: the last piece is withheld until the
//! whole blob has hashed to its digest and matched its size, so bad content arrives as a
//! failed stream, never as a clean body. A range is cut from the passing bytes, and the
//! rest is still read, to hash the whole.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use pullgate_oci::{ByteRange, Digest, Hasher};

use crate::blob::BlobStream;
use crate::StoreError;

/// Stream `source`, which must be the blob `digest` of `size` bytes, verifying it on the
/// way; only the inclusive `range` of it is emitted, when given.
pub fn pass_through<S, E>(
    source: S,
    digest: Digest,
    size: u64,
    range: Option<ByteRange>,
) -> BlobStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    let (from, to) = match range {
        Some(r) => (r.start, r.end.saturating_add(1).min(size)),
        None => (0, size),
    };
    let state = Passing {
        source,
        hasher: Hasher::new(digest.algorithm()),
        digest,
        size,
        from,
        to,
        pos: 0,
        held: None,
        done: false,
    };
    BlobStream::new(futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let item = st.next().await;
        if !matches!(item, Some(Ok(_))) {
            st.done = true;
        }
        item.map(|i| (i, st))
    }))
}

struct Passing<S> {
    source: S,
    hasher: Hasher,
    digest: Digest,
    size: u64,
    /// The emitted part of the blob: `[from, to)`.
    from: u64,
    to: u64,
    /// Bytes of the blob seen so far.
    pos: u64,
    /// The latest piece to emit, held back until a next one (or the verdict) arrives.
    held: Option<Bytes>,
    done: bool,
}

impl<S, E> Passing<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    /// The next piece for the client; `None` once everything, verified, has been sent.
    async fn next(&mut self) -> Option<Result<Bytes, StoreError>> {
        loop {
            match self.source.next().await {
                Some(Ok(chunk)) => {
                    let start = self.pos;
                    self.pos += chunk.len() as u64;
                    if self.pos > self.size {
                        return Some(Err(StoreError::SizeMismatch {
                            expected: self.size,
                            actual: self.pos,
                        }));
                    }
                    self.hasher.update(&chunk);
                    let lo = self.from.max(start);
                    let hi = self.to.min(self.pos);
                    if lo < hi {
                        let piece = chunk.slice((lo - start) as usize..(hi - start) as usize);
                        if let Some(previous) = self.held.replace(piece) {
                            return Some(Ok(previous));
                        }
                    }
                }
                Some(Err(e)) => {
                    return Some(Err(StoreError::IngestFailed(format!(
                        "upstream stream failed: {e}"
                    ))))
                }
                None => {
                    // Whatever the verdict, this is the end of the stream.
                    self.done = true;
                    if self.pos != self.size {
                        return Some(Err(StoreError::SizeMismatch {
                            expected: self.size,
                            actual: self.pos,
                        }));
                    }
                    let hasher =
                        std::mem::replace(&mut self.hasher, Hasher::new(self.digest.algorithm()));
                    let actual = hasher.finish();
                    if actual != self.digest {
                        return Some(Err(StoreError::DigestMismatch {
                            expected: self.digest.clone(),
                            actual,
                        }));
                    }
                    return self.held.take().map(Ok);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn source(bytes: &[u8], chunk: usize) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        let chunks: Vec<Result<Bytes, String>> = bytes
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(chunks)
    }

    async fn collect(mut s: BlobStream) -> (Vec<u8>, Option<StoreError>) {
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn good_bytes_pass_whole_or_ranged() {
        let bytes = data(100_000);
        let digest = Digest::sha256_of(&bytes);
        let size = bytes.len() as u64;
        let (out, err) = collect(pass_through(
            source(&bytes, 7_000),
            digest.clone(),
            size,
            None,
        ))
        .await;
        assert!(err.is_none());
        assert_eq!(out, bytes);
        for (start, end) in [
            (0, 0),
            (5, 6_999),
            (6_999, 7_000),
            (50_000, 99_999),
            (99_999, 99_999),
        ] {
            let range = ByteRange { start, end };
            let (out, err) = collect(pass_through(
                source(&bytes, 7_000),
                digest.clone(),
                size,
                Some(range),
            ))
            .await;
            assert!(err.is_none());
            assert_eq!(out, &bytes[start as usize..=end as usize], "{start}-{end}");
        }
    }

    #[tokio::test]
    async fn bad_bytes_never_end_cleanly() {
        let bytes = data(50_000);
        let digest = Digest::sha256_of(&bytes);
        let size = bytes.len() as u64;
        let mut corrupt = bytes.clone();
        corrupt[49_999] ^= 1;
        let short = &bytes[..40_000];
        let mut long = bytes.clone();
        long.push(0);
        type Case<'a> = (&'a [u8], fn(&StoreError) -> bool);
        let cases: [Case<'_>; 3] = [
            (&corrupt, |e| matches!(e, StoreError::DigestMismatch { .. })),
            (short, |e| matches!(e, StoreError::SizeMismatch { .. })),
            (&long, |e| matches!(e, StoreError::SizeMismatch { .. })),
        ];
        for (input, expected) in cases {
            let (out, err) = collect(pass_through(
                source(input, 4_096),
                digest.clone(),
                size,
                None,
            ))
            .await;
            let err = err.expect("bad content must fail the stream");
            assert!(expected(&err), "{err}");
            // The last piece was held back: the client never has all the bytes.
            assert!(out.len() < bytes.len());
        }
        // A ranged read of bad content fails too, though its own bytes were fine.
        let range = ByteRange { start: 0, end: 99 };
        let (_, err) = collect(pass_through(
            source(&corrupt, 4_096),
            digest.clone(),
            size,
            Some(range),
        ))
        .await;
        assert!(err.is_some());
        // And an upstream error ends it with an error.
        let broken = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err("connection reset".to_owned()),
        ]);
        let (_, err) = collect(pass_through(broken, digest, size, None)).await;
        assert!(matches!(err, Some(StoreError::IngestFailed(_))));
    }
}
