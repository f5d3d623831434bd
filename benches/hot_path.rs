//! The blob hot path, piece by piece: hashing (two SHA-256 implementations side by side),
//! a verified ingest with clients following it, a committed blob served through the
//! server's body type, route parsing and index lookups. Run: `cargo bench --bench hot_path`.
//! Each bench checks its result once before it is timed, so a fast wrong answer cannot
//! pass. Throughput is per byte of blob; compare runs as ratios (shared machines).

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use pullgate_oci::{Algorithm, Digest, Hasher, RepoName, Tag};
use pullgate_server::{Body, Metrics, Route};
use pullgate_store::{Store, TagKey, TagRecord, BATCH_BYTES};

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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// SHA-256 as the ingest runs it (`pullgate_oci::Hasher`, over ring) next to the `sha2`
/// crate's, over the network-sized chunks the hasher is fed. Built with
/// `--features sha2/force-soft`, the `sha2` row shows what that crate does on a CPU
/// without SHA-NI.
fn hashing(c: &mut Criterion) {
    use sha2::Digest as _;
    let data = blob();
    let ours = {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(&data);
        h.finish()
    };
    assert_eq!(
        ours.hex(),
        hex::encode(sha2::Sha256::digest(&data)),
        "the two implementations disagree"
    );

    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.bench_function("ring", |b| {
        b.iter(|| {
            let mut h = Hasher::new(Algorithm::Sha256);
            for chunk in data.chunks(NET_CHUNK) {
                h.update(chunk);
            }
            h.finish()
        })
    });
    g.bench_function("sha2", |b| {
        b.iter(|| {
            let mut h = sha2::Sha256::new();
            for chunk in data.chunks(NET_CHUNK) {
                h.update(chunk);
            }
            h.finalize()
        })
    });
    g.finish();
}

/// Network chunks grouped into batches the way the mirror's fill groups them.
fn batches(data: &[u8]) -> Vec<Vec<Bytes>> {
    data.chunks(BATCH_BYTES)
        .map(|batch| {
            batch
                .chunks(NET_CHUNK)
                .map(Bytes::copy_from_slice)
                .collect()
        })
        .collect()
}

fn ingest(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = blob();
    let digest = Digest::sha256_of(&data);
    let batches = batches(&data);

    let run = |followers: usize| {
        rt.block_on(async {
            store.remove(&digest).await.unwrap();
            let mut ingest = store
                .begin_ingest(digest.clone(), Some(SIZE as u64))
                .await
                .unwrap();
            let readers: Vec<_> = (0..followers)
                .map(|_| {
                    let mut s = ingest.follower().stream(0, None);
                    tokio::spawn(async move {
                        let mut h = Hasher::new(Algorithm::Sha256);
                        let mut n = 0;
                        while let Some(c) = s.next().await {
                            let c = c.unwrap();
                            n += c.len();
                            h.update(&c);
                        }
                        (n, h.finish())
                    })
                })
                .collect();
            for b in &batches {
                ingest.write_batch(b.clone()).await.unwrap();
            }
            ingest.commit(None).await.unwrap();
            let mut seen = Vec::new();
            for r in readers {
                seen.push(r.await.unwrap());
            }
            seen
        })
    };
    // Once, checked: the commit lands at the digest and every follower saw the whole blob.
    for (n, d) in run(2) {
        assert_eq!((n, &d), (SIZE, &digest));
    }
    let stored = rt.block_on(store.read_small(&digest, SIZE)).unwrap();
    assert_eq!(stored.map(|b| b.len()), Some(SIZE));

    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    for followers in [0usize, 1, 4] {
        g.bench_with_input(
            BenchmarkId::new("ingest_and_follow", followers),
            &followers,
            |b, &followers| b.iter(|| run(followers)),
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
                n
            })
        })
    });

    // A cache hit as the server sends it: the blob's stream inside the response body type,
    // polled frame by frame the way hyper polls it.
    let metrics = Arc::new(Metrics::default());
    // `check`: hash what is served (once, outside the timing).
    let serve = |check: bool| {
        rt.block_on(async {
            let reader = store.open_blob(&digest).await.unwrap().unwrap();
            let mut body = Body::blob(reader.stream(None), reader.size(), metrics.blob_bytes());
            let mut h = check.then(|| Hasher::new(Algorithm::Sha256));
            let mut n = 0;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    n += data.len();
                    if let Some(h) = &mut h {
                        h.update(&data);
                    }
                }
            }
            (n, h.map(Hasher::finish))
        })
    };
    assert_eq!(serve(true), (SIZE, Some(digest.clone())));
    g.bench_function("serve_cached_blob_body", |b| b.iter(|| serve(false)));
    g.finish();
}

/// What every request pays before any I/O: routing, and the index lookups of a hit.
fn lookups(c: &mut Criterion) {
    let digest = Digest::sha256_of(b"a layer");
    let paths = [
        format!("/v2/library/nginx/blobs/{digest}"),
        "/v2/library/nginx/manifests/1.27-alpine".to_owned(),
        format!("/v2/ghcr.io/org/team/app/manifests/{digest}"),
        "/v2/library/nginx/tags/list".to_owned(),
    ];
    let routes: Vec<_> = paths
        .iter()
        .map(|p| Route::parse(&http::Method::GET, p).unwrap())
        .collect();
    assert!(
        matches!(&routes[0], Route::Blob { digest: d, .. } if *d == digest),
        "{routes:?}"
    );
    assert!(
        matches!(&routes[2], Route::Manifest { name, .. } if name.as_str() == "ghcr.io/org/team/app")
    );

    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(paths.len() as u64));
    g.bench_function("route_parse", |b| {
        b.iter(|| {
            for p in &paths {
                std::hint::black_box(Route::parse(&http::Method::GET, p).unwrap());
            }
        })
    });

    // An index the size of a busy cache: 10,000 blobs, tags and repository links.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let repo = RepoName::parse("library/nginx").unwrap();
    let digests: Vec<Digest> = (0..10_000u32)
        .map(|i| Digest::sha256_of(&i.to_le_bytes()))
        .collect();
    for (i, d) in digests.iter().enumerate() {
        store
            .link(
                &pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
                &repo,
                d,
            )
            .unwrap();
        store.touch(d, 1000);
        let key = TagKey {
            upstream: pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
            repo: repo.clone(),
            tag: Tag::parse(&format!("v{i}")).unwrap(),
        };
        let record = TagRecord {
            digest: d.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 1000,
            fetched_at: std::time::SystemTime::now(),
        };
        store.put_tag(&key, &record).unwrap();
    }
    let key = TagKey {
        upstream: pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
        repo: repo.clone(),
        tag: Tag::parse("v4321").unwrap(),
    };
    let lookup = || {
        let tag = store.tag(&key).unwrap().unwrap();
        let linked = store
            .is_linked(
                &pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
                &repo,
                &tag.digest,
            )
            .unwrap();
        let record = store.blob_record(&tag.digest).unwrap();
        (tag.digest, linked, record.map(|r| r.size))
    };
    assert_eq!(lookup(), (digests[4321].clone(), true, Some(1000)));
    g.throughput(Throughput::Elements(1));
    g.bench_function("index_tag_link_blob", |b| b.iter(lookup));
    g.finish();
}

criterion_group!(benches, hashing, ingest, lookups);
criterion_main!(benches);
