//! The blob hot path, piece by piece: hashing, a verified ingest with a client following
//! it, and streaming a committed blob. Run: `cargo bench --bench hot_path`.
//! Throughput is reported per byte of blob; compare runs as ratios (shared machines).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::StreamExt;
use pullgate_oci::{Algorithm, Digest, Hasher};
use pullgate_store::Store;

const SIZE: usize = 16 * 1024 * 1024;
/// Chunks the size reqwest tends to yield from a socket.
const NET_CHUNK: usize = 64 * 1024;

fn blob() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn hashing(c: &mut Criterion) {
    let data = blob();
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.bench_function("sha256_in_net_chunks", |b| {
        b.iter(|| {
            let mut h = Hasher::new(Algorithm::Sha256);
            for chunk in data.chunks(NET_CHUNK) {
                h.update(chunk);
            }
            h.finish()
        })
    });
    g.finish();
}

fn ingest(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = blob();
    let digest = Digest::sha256_of(&data);
    let chunks: Vec<Bytes> = data.chunks(NET_CHUNK).map(Bytes::copy_from_slice).collect();

    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    for followers in [0usize, 1, 4] {
        g.bench_with_input(
            BenchmarkId::new("ingest_and_follow", followers),
            &followers,
            |b, &followers| {
                b.iter(|| {
                    rt.block_on(async {
                        store.remove(&digest).await.unwrap();
                        let mut ingest = store
                            .begin_ingest(digest.clone(), Some(SIZE as u64))
                            .unwrap();
                        let readers: Vec<_> = (0..followers)
                            .map(|_| {
                                let mut s = ingest.follower().stream(0, None);
                                tokio::spawn(async move {
                                    let mut n = 0;
                                    while let Some(c) = s.next().await {
                                        n += c.unwrap().len();
                                    }
                                    n
                                })
                            })
                            .collect();
                        for c in &chunks {
                            ingest.write(c.clone()).await.unwrap();
                        }
                        ingest.commit().await.unwrap();
                        for r in readers {
                            assert_eq!(r.await.unwrap(), SIZE);
                        }
                    })
                })
            },
        );
    }
    g.bench_function("read_committed", |b| {
        b.iter(|| {
            rt.block_on(async {
                let reader = store.open_blob(&digest).await.unwrap().unwrap();
                let mut s = reader.stream(None);
                let mut n = 0;
                while let Some(c) = s.next().await {
                    n += c.unwrap().len();
                }
                assert_eq!(n, SIZE);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, hashing, ingest);
criterion_main!(benches);
