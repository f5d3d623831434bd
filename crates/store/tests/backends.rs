//! One suite of cases for every blob [`Backend`], run against each: what the trait promises
//! (nothing unverified is ever readable under a digest, an abandoned upload leaves nothing,
//! exactly one of racing writers creates a key) must hold whatever stores the bytes.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use pullgate_oci::{ByteRange, Digest};
use pullgate_store::{Backend, Put, StoreError, Upload};

use support::Fixture;

/// Content of `len` bytes that differs per `seed`, so no two cases share a digest.
fn content(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// `bytes` in chunks of at most 1 MiB, as a fill hands them over.
fn chunks(bytes: &Bytes) -> Vec<Bytes> {
    (0..bytes.len())
        .step_by(1 << 20)
        .map(|at| bytes.slice(at..bytes.len().min(at + (1 << 20))))
        .collect()
}

async fn read_all<B: Backend>(b: &B, d: &Digest, range: Option<ByteRange>) -> Option<Bytes> {
    let opened = b.read(d, range).await.expect("read")?;
    let parts: Vec<Bytes> = opened.body.try_collect().await.expect("body");
    Some(parts.concat().into())
}

async fn ingest<B: Backend>(
    b: &B,
    d: &Digest,
    bytes: &Bytes,
    expected: Option<u64>,
) -> Result<u64, StoreError> {
    let mut up = b.ingest(d, expected).await?;
    for c in chunks(bytes) {
        up.write(vec![c]).await?;
    }
    up.commit().await
}

/// Wait (bounded) until `f` holds: some backends clean up behind a dropped upload in the
/// background.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still not so after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn nothing_under<B: Backend>(b: &B, d: &Digest) -> bool {
    b.stat(d).await.expect("stat").is_none() && b.read(d, None).await.expect("read").is_none()
}

/// Every case, in order, each on content of its own.
pub async fn suite<F: Fixture>(f: &F) {
    let b = f.backend();
    let big = f.big_size();

    // Commit, with the size announced and without; small and large (several parts).
    for (seed, len, announce) in [
        (1, big, true),
        (2, big, false),
        (3, 1000, true),
        (4, 1000, false),
    ] {
        let bytes = content(seed, len);
        let d = Digest::sha256_of(&bytes);
        let size = ingest(b, &d, &bytes, announce.then_some(len as u64)).await;
        assert_eq!(size.expect("commit"), len as u64, "commit {seed}");
        assert_eq!(b.stat(&d).await.expect("stat"), Some(len as u64));
        assert_eq!(
            read_all(b, &d, None).await.as_ref(),
            Some(&bytes),
            "content {seed}"
        );
    }
    assert_eq!(
        f.leftovers().await,
        0,
        "a committed upload leaves nothing behind"
    );

    // Refused at commit: wrong digest, short body, long body. Nothing becomes readable.
    for len in [big, 1000] {
        let bytes = content(10 + len as u64, len);
        let wrong = Digest::sha256_of(b"something else");
        let e = ingest(b, &wrong, &bytes, Some(len as u64))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
        assert!(
            nothing_under(b, &wrong).await,
            "a wrong digest left something readable"
        );

        let d = Digest::sha256_of(&bytes);
        let e = ingest(b, &d, &bytes, Some(len as u64 + 1))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::SizeMismatch { .. }), "short: {e}");
        let e = ingest(b, &d, &bytes, Some(len as u64 - 1))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::SizeMismatch { .. }), "long: {e}");
        assert!(
            nothing_under(b, &d).await,
            "a wrong size left something readable"
        );
    }
    eventually("refused uploads cleaned up", || async {
        f.leftovers().await == 0
    })
    .await;

    // Dropped halfway: aborted, nothing readable, nothing left.
    let bytes = content(20, big);
    let d = Digest::sha256_of(&bytes);
    let mut up = b.ingest(&d, Some(big as u64)).await.expect("ingest");
    let mut parts = chunks(&bytes);
    parts.pop();
    for c in parts {
        up.write(vec![c]).await.expect("write");
    }
    assert!(
        f.leftovers().await >= 1,
        "the upload is under way somewhere"
    );
    assert!(
        nothing_under(b, &d).await,
        "an upload under way is readable"
    );
    drop(up);
    eventually("a dropped upload aborted", || async {
        f.leftovers().await == 0
    })
    .await;
    assert!(
        nothing_under(b, &d).await,
        "a dropped upload left something readable"
    );

    // Put-if-absent: 16 writers of one key, exactly one creates it.
    let bytes = content(30, 4096);
    let d = Digest::sha256_of(&bytes);
    let puts = futures_util::future::join_all((0..16).map(|_| b.put(&d, bytes.clone()))).await;
    let created = puts
        .iter()
        .filter(|p| matches!(p, Ok(Put::Created)))
        .count();
    let existed = puts
        .iter()
        .filter(|p| matches!(p, Ok(Put::Existed)))
        .count();
    assert_eq!((created, existed), (1, 15), "{puts:?}");
    assert_eq!(read_all(b, &d, None).await.as_ref(), Some(&bytes));
    let e = b
        .put(&Digest::sha256_of(b"x"), bytes.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
    assert!(nothing_under(b, &Digest::sha256_of(b"x")).await);

    // Ranges: inside, to the end, past the end (clamped), across part boundaries.
    let bytes = content(40, big);
    let d = Digest::sha256_of(&bytes);
    ingest(b, &d, &bytes, Some(big as u64))
        .await
        .expect("commit");
    let last = big as u64 - 1;
    for (start, end) in [
        (0, 0),
        (10, 99),
        (1 << 20, (5 << 20) + 7),
        (last - 5, last),
        (last - 5, last + 1000),
    ] {
        let got = read_all(b, &d, Some(ByteRange { start, end }))
            .await
            .expect("range");
        let want = &bytes[start as usize..=(end.min(last) as usize)];
        assert_eq!(&got[..], want, "range {start}-{end}");
        let opened = b
            .read(&d, Some(ByteRange { start, end }))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(opened.size, big as u64, "size is the whole blob's");
    }

    // Stat and read of what is not there.
    let absent = Digest::sha256_of(b"never stored");
    assert!(nothing_under(b, &absent).await);

    // List sees what is stored, with sizes; remove takes it away once.
    let listed: Vec<(Digest, u64)> = b.list().try_collect().await.expect("list");
    assert!(listed.contains(&(d.clone(), big as u64)), "{listed:?}");
    let small = Digest::sha256_of(&content(3, 1000));
    assert!(listed.contains(&(small.clone(), 1000)));
    assert_eq!(listed.len(), 6, "{listed:?}");
    assert!(b.remove(&d).await.expect("remove"));
    assert!(!b.remove(&d).await.expect("remove again"));
    assert!(nothing_under(b, &d).await);
    let listed: Vec<(Digest, u64)> = b.list().try_collect().await.expect("list");
    assert!(!listed.iter().any(|(x, _)| x == &d));
    // A listing given up on early costs nothing further.
    assert!(b.list().next().await.is_some());

    // Orphans of a crash are swept; young ones are left alone.
    let orphan = Digest::sha256_of(b"orphan");
    f.make_orphan(&orphan).await;
    assert!(f.leftovers().await >= 1);
    assert_eq!(b.sweep(Duration::from_secs(3600)).await.expect("sweep"), 0);
    assert!(f.leftovers().await >= 1, "a young upload was swept");
    assert!(b.sweep(Duration::ZERO).await.expect("sweep") >= 1);
    assert_eq!(f.leftovers().await, 0);
    assert!(nothing_under(b, &orphan).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_backend_suite() {
    let f = support::FsFixture::new();
    suite(&f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_suite_on_seaweedfs() {
    let f = support::S3Fixture::new("suite/").await;
    suite(&f).await;
    // Neither the client's Debug nor a refusal shows the secret it signs with.
    assert!(!format!("{:?}", f.backend()).contains(support::seaweed::SECRET_KEY));
    let wrong = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        wrong.path().join("access_key_id"),
        support::seaweed::ACCESS_KEY,
    )
    .unwrap();
    std::fs::write(wrong.path().join("secret_access_key"), "wrong-secret-4242").unwrap();
    let mut config = f.config.clone();
    config.credentials = Some(wrong.path().to_path_buf());
    let refused = pullgate_store::S3::connect(&config).expect("connect");
    let e = refused.stat(&Digest::sha256_of(b"x")).await.unwrap_err();
    let shown = format!("{e} {e:?}");
    assert!(
        !shown.contains("wrong-secret-4242") && !shown.contains(support::seaweed::SECRET_KEY),
        "{shown}"
    );
}

/// A [`Store`](pullgate_store::Store) with a bucket, as `[storage] backend = "s3"` makes it:
/// fills go to the bucket and their followers read it once committed; bad or abandoned
/// fills leave nothing readable; a second replica (its own directory, the same bucket)
/// learns who served a blob from the bucket, but no repository link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_a_bucket_fills_there_and_replicas_learn_origins_not_links() {
    use pullgate_oci::{RepoName, UpstreamId};
    use pullgate_store::{BucketOptions, Origin, Store, StoreOptions, S3};

    let f = support::S3Fixture::new("store/").await;
    let open = |dir: &std::path::Path| {
        Store::open_with(
            dir,
            StoreOptions {
                limits: None,
                inspect_only: false,
                bucket: Some(BucketOptions {
                    s3: S3::connect(&f.config).expect("connect"),
                    max_uploads: 2,
                }),
            },
        )
        .expect("open store")
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(dir_a.path()), open(dir_b.path()));
    let up = UpstreamId::parse("registry.example:5000").unwrap();
    let repo = RepoName::parse("team/app").unwrap();
    let origin = || Origin {
        upstream: up.clone(),
        repo: repo.clone(),
    };
    let collect = |s: pullgate_store::BlobStream| async move {
        s.try_collect::<Vec<Bytes>>().await.map(|v| v.concat())
    };

    // Followers that joined before the commit get every byte (and a range across a part
    // boundary) after it, and nothing is readable before.
    let bytes = content(101, f.big_size());
    let d = Digest::sha256_of(&bytes);
    let len = bytes.len() as u64;
    let mut fill = a.begin_fill(d.clone(), Some(len)).await.unwrap();
    let follower = fill.follower();
    assert_eq!(follower.size(), Some(len));
    let part = pullgate_store::s3::MIN_PART_SIZE as u64;
    let whole = tokio::spawn(collect(follower.stream(0, None)));
    let range = tokio::spawn(collect(follower.stream(part - 10, Some(part + 9))));
    for c in chunks(&bytes) {
        fill.write_batch(vec![c]).await.unwrap();
    }
    assert_eq!(
        a.stat(&d).await.unwrap(),
        None,
        "readable before its commit"
    );
    assert!(!whole.is_finished());
    assert_eq!(fill.commit(Some(origin())).await.unwrap(), len);
    assert_eq!(whole.await.unwrap().unwrap(), bytes.to_vec());
    assert_eq!(
        range.await.unwrap().unwrap(),
        bytes[part as usize - 10..=part as usize + 9].to_vec()
    );
    assert_eq!(follower.finished().await.unwrap(), len);
    assert!(a.is_linked(&up, &repo, &d).unwrap() && a.has_origin(&d, &up).unwrap());

    // Replica B: the origin from the bucket once it has seen the blob; never a link, and
    // never an upstream that did not serve it.
    assert!(!b.has_origin(&d, &up).unwrap());
    let reader = b.open_blob(&d).await.unwrap().expect("in the bucket");
    assert_eq!(reader.size(), len);
    assert!(b.has_origin(&d, &up).unwrap());
    assert!(!b.is_linked(&up, &repo, &d).unwrap());
    let other = UpstreamId::parse("other.example").unwrap();
    assert!(!b.has_origin(&d, &other).unwrap());
    let r = ByteRange { start: 5, end: 9 };
    assert_eq!(
        collect(reader.stream(Some(r))).await.unwrap(),
        bytes[5..10].to_vec()
    );

    // Bytes that do not hash to the digest: refused, followers fail, nothing stored.
    let good = content(102, 1000);
    let d2 = Digest::sha256_of(&good);
    let mut fill = a.begin_fill(d2.clone(), Some(1000)).await.unwrap();
    let f2 = fill.follower();
    fill.write_batch(vec![content(103, 1000)]).await.unwrap();
    assert!(matches!(
        fill.commit(Some(origin())).await,
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(collect(f2.stream(0, None)).await.is_err());
    assert_eq!(a.stat(&d2).await.unwrap(), None);
    assert!(!a.is_linked(&up, &repo, &d2).unwrap());

    // Dropped after its multipart upload began: followers fail, the upload is aborted.
    let big = content(104, f.big_size());
    let d3 = Digest::sha256_of(&big);
    let mut fill = a
        .begin_fill(d3.clone(), Some(big.len() as u64))
        .await
        .unwrap();
    let f3 = fill.follower();
    let first: Vec<Bytes> = chunks(&big).into_iter().take(6).collect();
    fill.write_batch(first).await.unwrap();
    drop(fill);
    assert!(f3.finished().await.is_err());
    eventually("the dropped fill's upload aborted", || async {
        f.leftovers().await == 0
    })
    .await;
    assert_eq!(a.stat(&d3).await.unwrap(), None);

    // A manifest: put into the bucket, read whole by the other replica, bounded.
    let m = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let dm = Digest::sha256_of(&m);
    let media = "application/vnd.oci.image.manifest.v1+json";
    a.put_verified(&dm, m.clone(), Some(media), Some(origin()))
        .await
        .unwrap();
    assert_eq!(a.manifest_media_type(&dm).unwrap().as_deref(), Some(media));
    assert_eq!(b.read_small(&dm, 1 << 20).await.unwrap(), Some(m));
    assert!(matches!(
        b.read_small(&dm, 4).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert!(b.has_origin(&dm, &up).unwrap());

    // No blob file in either directory: the bytes are in the bucket only.
    for dir in [dir_a.path(), dir_b.path()] {
        let files = std::fs::read_dir(dir.join("blobs"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(files, 0, "{}", dir.display());
    }
}
