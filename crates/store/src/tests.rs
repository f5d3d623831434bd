use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use pullgate_oci::{ByteRange, Digest, RepoName, Tag};

use crate::{BlobStream, Store, StoreError, TagKey, TagRecord, Usage};

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

async fn collect(mut s: BlobStream) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

fn tmp_entries(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("tmp")).unwrap().count()
}

#[tokio::test]
async fn ingest_commits_verified_content_at_its_digest_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bytes = data(1_000_000);
    let digest = Digest::sha256_of(&bytes);
    let mut ingest = store
        .begin_ingest(digest.clone(), Some(bytes.len() as u64))
        .await
        .unwrap();
    for c in bytes.chunks(70_000) {
        ingest.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    assert_eq!(ingest.commit(None).await.unwrap(), bytes.len() as u64);

    let path = dir
        .path()
        .join("blobs/sha256")
        .join(&digest.hex()[..2])
        .join(digest.hex());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(store.stat(&digest).await.unwrap(), Some(bytes.len() as u64));
    assert_eq!(tmp_entries(dir.path()), 0);
    let reader = store.open_blob(&digest).await.unwrap().unwrap();
    assert_eq!(collect(reader.stream(None)).await.unwrap(), bytes);
    let part = reader.stream(Some(ByteRange {
        start: 10,
        end: 299_999,
    }));
    assert_eq!(collect(part).await.unwrap(), &bytes[10..300_000]);
    assert_eq!(store.blob_record(&digest).unwrap().unwrap().size, 1_000_000);
}

#[tokio::test]
async fn follower_streams_while_writing_and_withholds_the_last_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bytes = data(600_000);
    let digest = Digest::sha256_of(&bytes);
    let mut ingest = store
        .begin_ingest(digest.clone(), Some(bytes.len() as u64))
        .await
        .unwrap();
    let follower = ingest.follower();
    let mut stream = follower.stream(0, None);

    ingest
        .write(Bytes::copy_from_slice(&bytes[..300_000]))
        .await
        .unwrap();
    // The first bytes arrive before the ingest ends.
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!first.is_empty());
    let mut got = first.to_vec();

    ingest
        .write(Bytes::copy_from_slice(&bytes[300_000..]))
        .await
        .unwrap();
    // Everything but the final byte may flow; the final byte waits for the commit.
    while got.len() < bytes.len() - 1 {
        got.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    assert_eq!(got.len(), bytes.len() - 1);
    let pending = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    assert!(pending.is_err(), "last byte delivered before verification");

    ingest.commit(None).await.unwrap();
    got.extend_from_slice(&stream.next().await.unwrap().unwrap());
    assert!(stream.next().await.is_none());
    assert_eq!(got, bytes);
    assert_eq!(follower.finished().await.unwrap(), 600_000);
}

#[tokio::test]
async fn digest_mismatch_is_never_committed_and_fails_followers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bytes = data(500_000);
    let claimed = Digest::sha256_of(b"something else");
    let mut ingest = store
        .begin_ingest(claimed.clone(), Some(bytes.len() as u64))
        .await
        .unwrap();
    let whole = ingest.follower().stream(0, None);
    let range = ingest.follower().stream(0, Some(99));
    for c in bytes.chunks(100_000) {
        ingest.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    let err = ingest.commit(None).await.unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    assert!(err.is_bad_content());
    let whole = collect(whole).await;
    assert!(whole.is_err());
    assert!(
        collect(range).await.is_err(),
        "range stream ended cleanly on bad content"
    );
    assert_eq!(store.stat(&claimed).await.unwrap(), None);
    assert!(store.open_blob(&claimed).await.unwrap().is_none());
    assert_eq!(tmp_entries(dir.path()), 0);
}

#[tokio::test]
async fn too_many_bytes_fail_early_and_too_few_fail_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bytes = data(1000);
    let digest = Digest::sha256_of(&bytes);

    let mut ingest = store.begin_ingest(digest.clone(), Some(500)).await.unwrap();
    let follower = ingest.follower();
    let mut failed = None;
    for _ in 0..100 {
        if let Err(e) = ingest.write(Bytes::copy_from_slice(&bytes)).await {
            failed = Some(e);
            break;
        }
    }
    assert!(matches!(failed, Some(StoreError::SizeMismatch { .. })));
    assert!(follower.finished().await.is_err());

    let mut ingest = store
        .begin_ingest(digest.clone(), Some(2000))
        .await
        .unwrap();
    ingest.write(Bytes::copy_from_slice(&bytes)).await.unwrap();
    assert!(matches!(
        ingest.commit(None).await,
        Err(StoreError::SizeMismatch {
            expected: 2000,
            actual: 1000
        })
    ));
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    assert_eq!(tmp_entries(dir.path()), 0);
}

#[tokio::test]
async fn unknown_size_is_learned_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bytes = data(1234);
    let digest = Digest::sha256_of(&bytes);
    let mut ingest = store.begin_ingest(digest.clone(), None).await.unwrap();
    let follower = ingest.follower();
    assert_eq!(follower.size(), None);
    let size = tokio::spawn(async move { follower.wait_size().await });
    ingest.write(Bytes::copy_from_slice(&bytes)).await.unwrap();
    ingest.commit(None).await.unwrap();
    assert_eq!(size.await.unwrap().unwrap(), 1234);
}

#[tokio::test]
async fn abort_and_drop_discard_the_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bytes = data(10_000);
    let digest = Digest::sha256_of(&bytes);

    let mut ingest = store
        .begin_ingest(digest.clone(), Some(10_000))
        .await
        .unwrap();
    let stream = ingest.follower().stream(0, None);
    ingest
        .write(Bytes::copy_from_slice(&bytes[..5000]))
        .await
        .unwrap();
    ingest.abort("upstream connection reset");
    let err = collect(stream).await.unwrap_err();
    assert!(err.to_string().contains("upstream connection reset"));

    let mut ingest = store
        .begin_ingest(digest.clone(), Some(10_000))
        .await
        .unwrap();
    let follower = ingest.follower();
    ingest.write(Bytes::copy_from_slice(&bytes)).await.unwrap();
    drop(ingest);
    assert!(follower.finished().await.is_err());
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    // The workers clean up asynchronously.
    for _ in 0..100 {
        if tmp_entries(dir.path()) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(tmp_entries(dir.path()), 0);
}

#[tokio::test]
async fn put_verified_rejects_wrong_bytes_and_read_small_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let manifest = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let digest = Digest::sha256_of(&manifest);
    let wrong = Digest::sha256_of(b"x");
    assert!(matches!(
        store
            .put_verified(&wrong, manifest.clone(), None, None)
            .await,
        Err(StoreError::DigestMismatch { .. })
    ));
    assert_eq!(store.stat(&wrong).await.unwrap(), None);
    store
        .put_verified(
            &digest,
            manifest.clone(),
            Some("application/vnd.oci.image.manifest.v1+json"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        store.read_small(&digest, 1024).await.unwrap().unwrap(),
        manifest
    );
    assert!(matches!(
        store.read_small(&digest, 4).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(store.read_small(&wrong, 1024).await.unwrap(), None);
    assert_eq!(
        store.manifest_media_type(&digest).unwrap().as_deref(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    assert!(store.remove(&digest).await.unwrap());
    assert_eq!(store.stat(&digest).await.unwrap(), None);
}

#[tokio::test]
async fn index_survives_reopen_and_tmp_is_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let key = TagKey {
        upstream: pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
        repo: RepoName::parse("library/alpine").unwrap(),
        tag: Tag::parse("3.20").unwrap(),
    };
    let digest = Digest::sha256_of(b"m");
    let fetched_at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    {
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.tag(&key).unwrap(), None);
        store
            .put_tag(
                &key,
                &TagRecord {
                    digest: digest.clone(),
                    media_type: "application/vnd.oci.image.index.v1+json".into(),
                    size: 1,
                    fetched_at,
                },
            )
            .unwrap();
        store
            .link(
                &pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
                &key.repo,
                &digest,
            )
            .unwrap();
        store.flush().unwrap();
        std::fs::write(dir.path().join("tmp/leftover"), b"partial").unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(tmp_entries(dir.path()), 0);
    let rec = store.tag(&key).unwrap().unwrap();
    assert_eq!(rec.digest, digest);
    assert_eq!(rec.fetched_at, fetched_at);
    assert!(store
        .is_linked(
            &pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
            &key.repo,
            &digest
        )
        .unwrap());
    let other = RepoName::parse("library/busybox").unwrap();
    assert!(!store
        .is_linked(
            &pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
            &other,
            &digest
        )
        .unwrap());
    assert!(!store
        .is_linked(
            &pullgate_oci::UpstreamId::parse("ghcr.io").unwrap(),
            &key.repo,
            &digest
        )
        .unwrap());
}

#[tokio::test]
async fn usage_counts_committed_blobs_across_reopen_and_removal() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.usage(), Usage::default());
    let a = data(1000);
    let b = data(2500);
    for bytes in [&a, &b, &a] {
        let d = Digest::sha256_of(bytes);
        store
            .put_verified(&d, Bytes::copy_from_slice(bytes), None, None)
            .await
            .unwrap();
    }
    let mut ingest = store
        .begin_ingest(Digest::sha256_of(&data(10)), Some(10))
        .await
        .unwrap();
    ingest.write(Bytes::from(data(10))).await.unwrap();
    ingest.commit(None).await.unwrap();
    let want = Usage {
        bytes: 3510,
        blobs: 3,
    };
    assert_eq!(store.usage(), want);
    store.check_writable().await.unwrap();
    assert_eq!(tmp_entries(dir.path()), 0);
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.usage(), want);
    assert!(store.remove(&Digest::sha256_of(&b)).await.unwrap());
    assert!(!store.remove(&Digest::sha256_of(&b)).await.unwrap());
    assert_eq!(
        store.usage(),
        Usage {
            bytes: 1010,
            blobs: 2
        }
    );
}

/// Whoever finds a committed blob also finds who vouched for it: origin and link are
/// written with the record, before the file is in place; an origin survives touches and
/// is kept per upstream; a failed commit leaves no record behind.
#[tokio::test]
async fn a_commit_records_its_origin_and_link_with_the_blob() {
    use crate::Origin;
    use pullgate_oci::UpstreamId;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let hub = UpstreamId::parse("docker.io").unwrap();
    let ghcr = UpstreamId::parse("ghcr.io").unwrap();
    let repo = RepoName::parse("library/x").unwrap();
    let origin = Origin {
        upstream: hub.clone(),
        repo: repo.clone(),
    };

    let bytes = data(100_000);
    let digest = Digest::sha256_of(&bytes);
    let mut ingest = store
        .begin_ingest(digest.clone(), Some(bytes.len() as u64))
        .await
        .unwrap();
    ingest.write(Bytes::from(bytes.clone())).await.unwrap();
    ingest.commit(Some(origin.clone())).await.unwrap();
    assert!(store.is_linked(&hub, &repo, &digest).unwrap());
    assert!(store.has_origin(&digest, &hub).unwrap());
    assert!(!store.has_origin(&digest, &ghcr).unwrap());
    store.touch(&digest, bytes.len() as u64);
    store.record_origin(&digest, &ghcr).unwrap();
    assert!(store.has_origin(&digest, &hub).unwrap());
    assert!(store.has_origin(&digest, &ghcr).unwrap());
    assert!(!store.is_linked(&ghcr, &repo, &digest).unwrap());

    let manifest = Bytes::from_static(b"{\"schemaVersion\":2}");
    let m = Digest::sha256_of(&manifest);
    store
        .put_verified(&m, manifest, Some("application/json"), Some(origin))
        .await
        .unwrap();
    assert!(store.is_linked(&hub, &repo, &m).unwrap());
    assert!(store.has_origin(&m, &hub).unwrap());

    // A blob whose bytes do not verify gets neither a record nor an origin.
    let wrong = Digest::sha256_of(b"something else");
    let mut ingest = store.begin_ingest(wrong.clone(), None).await.unwrap();
    ingest.write(Bytes::from(bytes)).await.unwrap();
    assert!(ingest.commit(None).await.is_err());
    assert!(store.blob_record(&wrong).unwrap().is_none());
    assert!(!store.has_origin(&wrong, &hub).unwrap());
}

/// A referrers answer comes back as it was put, under its own key only: another
/// repository, upstream or filter finds nothing; the size is bounded; it survives a reopen.
#[test]
fn referrers_answers_are_kept_per_repository_and_filter() {
    use crate::{ReferrersKey, ReferrersRecord, MAX_REFERRERS_BODY};
    let dir = tempfile::tempdir().unwrap();
    let subject = Digest::sha256_of(b"subject");
    let k = |up: &str, repo: &str, filter: Option<&str>| ReferrersKey {
        upstream: pullgate_oci::UpstreamId::parse(up).unwrap(),
        repo: RepoName::parse(repo).unwrap(),
        subject: subject.clone(),
        artifact_type: filter.map(str::to_owned),
    };
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let rec = ReferrersRecord {
        body: Bytes::from_static(b"{\"schemaVersion\":2,\"manifests\":[]}"),
        content_type: Some("application/vnd.oci.image.index.v1+json".into()),
        filters_applied: Some("artifactType".into()),
        fetched_at: at,
    };
    {
        let store = Store::open(dir.path()).unwrap();
        let key = k("a.example", "team/app", Some("application/x"));
        store.put_referrers(&key, &rec).unwrap();
        assert_eq!(store.referrers(&key).unwrap().as_ref(), Some(&rec));
        for other in [
            k("a.example", "team/other", Some("application/x")),
            k("b.example", "team/app", Some("application/x")),
            k("a.example", "team/app", None),
            k("a.example", "team/app", Some("application/y")),
        ] {
            assert_eq!(store.referrers(&other).unwrap(), None, "{other:?}");
        }
        let big = ReferrersRecord {
            body: Bytes::from(vec![b' '; MAX_REFERRERS_BODY + 1]),
            ..rec.clone()
        };
        assert!(matches!(
            store.put_referrers(&k("a.example", "team/app", None), &big),
            Err(StoreError::TooLarge { .. })
        ));
        assert!(store
            .put_referrers(&k("a.example", "team/app", Some("a\0b")), &rec)
            .is_err());
        assert_eq!(store.referrers_count(), 1);
        store.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let got = store
        .referrers(&k("a.example", "team/app", Some("application/x")))
        .unwrap();
    assert_eq!(got, Some(rec));
}
