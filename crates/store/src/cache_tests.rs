//! Eviction, pins, start-up repair, rebuild and the directory lock.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use pullgate_oci::{Digest, RepoName, Tag};

use crate::{Limits, Store, StoreError, StoreOptions, TagKey, TagRecord, Usage};

fn blob(seed: u8, n: usize) -> (Digest, Bytes) {
    let bytes: Vec<u8> = (0..n)
        .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
        .collect();
    (Digest::sha256_of(&bytes), Bytes::from(bytes))
}

fn bounded(dir: &Path, max: u64, high: f64, low: f64) -> Store {
    Store::open_with(
        dir,
        StoreOptions {
            limits: Some(Limits::new(max, high, low).unwrap()),
            inspect_only: false,
            bucket: None,
        },
    )
    .unwrap()
}

/// Commit in order, a few milliseconds apart so access times order them.
async fn put_all(store: &Store, blobs: &[&(Digest, Bytes)]) {
    for (d, b) in blobs {
        store.put_verified(d, b.clone(), None, None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

fn present(store: &Store, d: &Digest) -> bool {
    store.blob_path(d).exists() && store.blob_record(d).unwrap().is_some()
}

fn evict(store: &Store, dry_run: bool) -> (crate::EvictSummary, Vec<Digest>) {
    let mut seen = Vec::new();
    let s = store
        .evict_blocking(None, dry_run, &mut |e| seen.push(e.digest.clone()))
        .unwrap();
    (s, seen)
}

#[test]
fn limits_need_a_size_and_an_ordered_band() {
    assert!(Limits::new(0, 0.9, 0.5).is_err());
    assert!(Limits::new(100, 0.5, 0.9).is_err());
    assert!(Limits::new(100, 0.5, 0.5).is_err());
    assert!(Limits::new(100, 1.1, 0.5).is_err());
    assert!(Limits::new(100, 0.9, 0.0).is_err());
    assert!(Limits::new(100, f64::NAN, 0.5).is_err());
    let l = Limits::new(1000, 0.95, 0.85).unwrap();
    assert_eq!((l.high_bytes(), l.low_bytes()), (950, 850));
}

#[tokio::test]
async fn evicts_least_recently_used_down_to_the_low_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let store = bounded(dir.path(), 10_000, 0.8, 0.5);
    let [a, b, c, d, e] = [1, 2, 3, 4, 5].map(|s| blob(s, 2000));
    put_all(&store, &[&a, &b, &c, &d]).await;
    // Committing `a` again counts as using it: it is now the most recent.
    put_all(&store, &[&a, &e]).await;
    assert_eq!(store.usage().bytes, 10_000);

    let (dry, would) = evict(&store, true);
    assert_eq!(would, vec![b.0.clone(), c.0.clone(), d.0.clone()]);
    assert_eq!(dry.usage_after, 4000);
    assert!(present(&store, &b.0), "a dry run removed something");
    assert_eq!(store.usage().bytes, 10_000);

    let (s, gone) = evict(&store, false);
    assert_eq!(gone, would);
    assert_eq!((s.blobs, s.bytes, s.usage_after), (3, 6000, 4000));
    for x in [&b, &c, &d] {
        assert!(!store.blob_path(&x.0).exists());
        assert_eq!(store.blob_record(&x.0).unwrap(), None);
    }
    assert!(present(&store, &a.0) && present(&store, &e.0));
    assert_eq!(
        store.usage(),
        Usage {
            bytes: 4000,
            blobs: 2
        }
    );
    assert_eq!(
        store.evictions(),
        crate::Evictions {
            blobs: 3,
            bytes: 6000
        }
    );
    // Evicted files pass through tmp/ and are gone from it.
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    // Under the low watermark there is nothing to do.
    assert_eq!(evict(&store, false).0.blobs, 0);
}

#[tokio::test]
async fn pinned_and_streaming_blobs_are_never_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let store = bounded(dir.path(), 8000, 0.9, 0.1);
    let [a, b, c, d] = [1, 2, 3, 4].map(|s| blob(s, 2000));
    put_all(&store, &[&a, &b, &c, &d]).await;

    let pin_b = store.pin(&b.0);
    let pin_c = store.pin(&c.0);
    let reader = store.open_blob(&c.0).await.unwrap().unwrap();
    let mut stream = reader.stream(None).pinned(pin_c);
    let (s, gone) = evict(&store, false);
    assert_eq!(gone, vec![a.0.clone(), d.0.clone()]);
    assert!(s.pinned == 0, "pinned blobs are not even candidates");
    assert!(present(&store, &b.0) && present(&store, &c.0));

    // The stream still reads its blob whole, and holds it until dropped.
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, c.1);
    assert_eq!(evict(&store, false).1, Vec::<Digest>::new());
    drop(stream);
    assert_eq!(evict(&store, false).1, vec![c.0.clone()]);
    // Two pins on one digest: it stays until both are gone.
    let again = store.pin(&b.0);
    drop(pin_b);
    assert!(evict(&store, false).1.is_empty());
    drop(again);
    assert_eq!(evict(&store, false).1, vec![b.0.clone()]);
    assert!(store.inner.pins.lock().is_empty());
}

#[tokio::test]
async fn a_blob_used_after_the_candidates_were_chosen_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = bounded(dir.path(), 4000, 0.9, 0.1);
    let [a, b] = [1, 2].map(|s| blob(s, 2000));
    put_all(&store, &[&a, &b]).await;
    let at = crate::index::to_ms(store.blob_record(&a.0).unwrap().unwrap().last_access);
    tokio::time::sleep(Duration::from_millis(3)).await;
    put_all(&store, &[&a]).await;
    // The candidate list said `a` at its old access time: it was used since.
    assert_eq!(store.inner.evict_one(&a.0, at).unwrap(), None);
    assert!(present(&store, &a.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_evictor_runs_when_commits_cross_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let store = bounded(dir.path(), 10_000, 0.7, 0.4);
    let evictor = tokio::spawn(store.evictor(tokio_util::sync::CancellationToken::new()));
    let blobs: Vec<_> = (1..=6).map(|s| blob(s, 2000)).collect();
    let repo = RepoName::parse("library/x").unwrap();
    let tag = |i: usize| TagKey {
        upstream: pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
        repo: repo.clone(),
        tag: Tag::parse(&i.to_string()).unwrap(),
    };
    for (i, (d, b)) in blobs.iter().enumerate() {
        let mut ingest = store.begin_ingest(d.clone(), Some(2000)).await.unwrap();
        ingest.write(b.clone()).await.unwrap();
        ingest.commit(None).await.unwrap();
        // As the mirror does, after the commit.
        store
            .link(
                &pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
                &repo,
                d,
            )
            .unwrap();
        let record = TagRecord {
            digest: d.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 2000,
            fetched_at: std::time::SystemTime::now(),
        };
        store.put_tag(&tag(i), &record).unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
        if i == 3 || i == 5 {
            // 8000 > 7000: woken by the commit, not the periodic look.
            for _ in 0..300 {
                if store.usage().bytes <= 4000 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(store.usage().bytes, 4000);
            assert!(!present(&store, &blobs[i - 2].0) && present(&store, &blobs[i].0));
        }
    }
    assert_eq!(store.evictions().blobs, 4);
    // Tags and links to what was evicted go too, and only those (the first run's prune;
    // the second run's waits out the gap between prunes).
    for _ in 0..300 {
        if !store
            .is_linked(
                &pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
                &repo,
                &blobs[0].0,
            )
            .unwrap()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (i, (d, _)) in blobs.iter().enumerate() {
        let evicted_first = i < 2;
        assert_eq!(
            store
                .is_linked(
                    &pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
                    &repo,
                    d
                )
                .unwrap(),
            !evicted_first,
            "{i}"
        );
        assert_eq!(store.tag(&tag(i)).unwrap().is_some(), !evicted_first, "{i}");
    }
    // It holds the store weakly: dropping the store ends it.
    drop(store);
    tokio::time::timeout(Duration::from_secs(5), evictor)
        .await
        .expect("the evictor ends with its store")
        .unwrap();
}

#[tokio::test]
async fn start_up_repairs_what_a_crash_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c, d] = [1, 2, 3, 4].map(|s| blob(s, 3000));
    let manifest = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#,
    );
    let m = Digest::sha256_of(&manifest);
    {
        let store = Store::open(dir.path()).unwrap();
        assert!(store.repaired_at_open().is_clean());
        put_all(&store, &[&a, &b, &c, &d]).await;
        store
            .put_verified(
                &m,
                manifest.clone(),
                Some("application/vnd.oci.image.manifest.v1+json"),
                None,
            )
            .await
            .unwrap();
        let index = &store.inner.index;
        // A crash between eviction's two steps: the record gone, the file still there.
        index.remove_blob(&a.0).unwrap();
        index.remove_blob(&m).unwrap();
        // Bytes that are not what their name says, with no record.
        index.remove_blob(&b.0).unwrap();
        std::fs::write(store.blob_path(&b.0), b"garbage").unwrap();
        // A record whose file is gone (sled lost the record's removal).
        std::fs::remove_file(store.blob_path(&c.0)).unwrap();
        store.flush().unwrap();
    }
    let stray = dir.path().join("blobs/sha256/zz/not-a-digest");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"?").unwrap();
    std::fs::write(dir.path().join("tmp/evict-0123"), b"on its way out").unwrap();

    let store = Store::open(dir.path()).unwrap();
    let r = store.repaired_at_open().clone();
    assert_eq!(r.tmp_removed, 1);
    assert_eq!(r.orphans_indexed, 2);
    assert_eq!(r.bad_removed, 2, "{r:?}");
    assert_eq!(r.records_removed, 1);
    assert_eq!(r.kept, 1);
    assert_eq!(r.hashed, 3);
    assert!(!r.is_clean());
    assert!(r
        .removed
        .iter()
        .any(|(p, why)| p == &stray && why.contains("name")));
    assert!(present(&store, &a.0) && present(&store, &d.0));
    assert!(!store.blob_path(&b.0).exists() && store.blob_record(&b.0).unwrap().is_none());
    assert!(store.blob_record(&c.0).unwrap().is_none());
    assert!(!stray.exists());
    // A manifest indexed again knows its media type from the document.
    assert_eq!(
        store.manifest_media_type(&m).unwrap().as_deref(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    assert_eq!(store.record_count(), 3);
    assert_eq!(
        store.usage(),
        Usage {
            bytes: 6000 + manifest.len() as u64,
            blobs: 3
        }
    );
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert!(
        store.repaired_at_open().is_clean(),
        "{:?}",
        store.repaired_at_open()
    );
}

#[tokio::test]
async fn rebuild_rehashes_everything_and_gc_prunes_dangling_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let [a, b] = [1, 2].map(|s| blob(s, 5000));
    put_all(&store, &[&a, &b]).await;
    // Same size, other bytes: only a full re-hash can tell.
    let mut bad = b.1.to_vec();
    bad[10] ^= 1;
    std::fs::write(store.blob_path(&b.0), &bad).unwrap();
    let key = TagKey {
        upstream: pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
        repo: RepoName::parse("library/x").unwrap(),
        tag: Tag::parse("1").unwrap(),
    };
    let record = |digest: &Digest| TagRecord {
        digest: digest.clone(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        size: 1,
        fetched_at: std::time::SystemTime::now(),
    };
    store.put_tag(&key, &record(&b.0)).unwrap();
    store
        .link(
            &pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
            &key.repo,
            &a.0,
        )
        .unwrap();
    store
        .link(
            &pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
            &key.repo,
            &b.0,
        )
        .unwrap();

    assert!(store.repair_blocking(false).unwrap().is_clean());
    let r = store.rebuild_blocking().unwrap();
    assert_eq!((r.hashed, r.kept, r.bad_removed), (2, 1, 1));
    assert!(r.removed[0].1.contains("hashes to"), "{r:?}");
    assert!(!store.blob_path(&b.0).exists());
    assert_eq!(store.usage().blobs, 1);

    let dry = store.prune_index_blocking(true).unwrap();
    assert_eq!((dry.tags_removed, dry.links_removed), (1, 1));
    assert!(store.tag(&key).unwrap().is_some());
    store.prune_index_blocking(false).unwrap();
    assert!(store.tag(&key).unwrap().is_none());
    assert!(store
        .is_linked(
            &pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
            &key.repo,
            &a.0
        )
        .unwrap());
    assert!(!store
        .is_linked(
            &pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
            &key.repo,
            &b.0
        )
        .unwrap());
    let links: Vec<_> = store.links().map(Result::unwrap).collect();
    assert_eq!(
        links,
        vec![("docker.io".into(), "library/x".into(), a.0.clone())]
    );
}

#[tokio::test]
async fn one_process_per_cache_and_inspection_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path())
        .err()
        .expect("a second open must fail");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    let a = blob(1, 100);
    put_all(&store, &[&a]).await;
    drop(store);

    std::fs::write(dir.path().join("tmp/partial"), b"x").unwrap();
    let inspect = StoreOptions {
        limits: None,
        inspect_only: true,
        bucket: None,
    };
    let store = Store::open_with(dir.path(), inspect.clone()).unwrap();
    assert!(dir.path().join("tmp/partial").exists());
    assert_eq!(store.usage().blobs, 1);
    let records: Vec<_> = store.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].0, a.0);
    assert_eq!(records[0].1.size, 100);
    // A dry-run repair reports without changing.
    std::fs::remove_file(store.blob_path(&a.0)).unwrap();
    let r = store.repair_blocking(true).unwrap();
    assert_eq!(r.records_removed, 1);
    assert_eq!(store.record_count(), 1);
}

#[tokio::test]
async fn an_index_sled_cannot_read_is_set_aside_and_rebuilt_from_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<_> = (1..=5).map(|s| blob(s, 3000)).collect();
    let repo = RepoName::parse("library/x").unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        for (d, b) in &blobs {
            store.put_verified(d, b.clone(), None, None).await.unwrap();
            store
                .link(
                    &pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
                    &repo,
                    d,
                )
                .unwrap();
        }
        store.flush().unwrap();
    }
    let asides = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("index.broken-"))
            .count()
    };
    for round in 0..2 {
        // sled's config file is what it refuses to open past (a corrupt log it truncates).
        let conf = dir.path().join("index/conf");
        let mut bytes = std::fs::read(&conf).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&conf, bytes).unwrap();
        let inspect = StoreOptions {
            limits: None,
            inspect_only: true,
            bucket: None,
        };
        assert!(matches!(
            Store::open_with(dir.path(), inspect),
            Err(StoreError::Index(_))
        ));

        let store = Store::open(dir.path()).unwrap();
        let r = store.repaired_at_open();
        assert!(r.index_set_aside.is_some() && !r.is_clean(), "{r:?}");
        assert_eq!(r.orphans_indexed, 5, "round {round}");
        assert_eq!(store.usage().blobs, 5);
        for (d, _) in &blobs {
            assert!(present(&store, d));
            // Links are not in the files: they are asked of the upstream again.
            assert!(!store
                .is_linked(
                    &pullgate_oci::UpstreamId::parse("docker.io").unwrap(),
                    &repo,
                    d
                )
                .unwrap());
        }
        assert_eq!(asides(), 1, "only the newest broken index is kept");
        store.flush().unwrap();
        drop(store);
        // A second later, so the next one gets another name.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(Store::open(dir.path())
        .unwrap()
        .repaired_at_open()
        .is_clean());
}

#[tokio::test]
async fn repair_and_rebuild_report_progress_against_the_totals() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let small = blob(3, 1000);
    // Over the store's in-file report step, so it is reported while it is being hashed.
    let big = blob(5, 40 * 1024 * 1024);
    put_all(&store, &[&small, &big]).await;
    let total = 1000 + 40 * 1024 * 1024;

    let mut seen = Vec::new();
    let r = store.rebuild_reporting(&mut |p| seen.push(*p)).unwrap();
    assert_eq!(r.hashed, 2);
    let last = *seen.last().unwrap();
    assert_eq!(last.job, crate::Job::Rebuild);
    assert_eq!((last.files_done, last.files_total), (2, 2));
    assert_eq!((last.bytes_done, last.bytes_total), (total, total));
    assert_eq!((last.files_hashed, last.bytes_hashed), (2, total));
    assert!(seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done));
    // Within the big file, before it was done.
    assert!(
        seen.iter()
            .any(|p| p.files_done < 2 && p.bytes_done > 1000 && p.bytes_done < total),
        "{seen:?}"
    );

    // A repair hashes only what the index does not know: here, nothing.
    let mut seen = Vec::new();
    store
        .repair_reporting(false, &mut |p| seen.push(*p))
        .unwrap();
    let last = *seen.last().unwrap();
    assert_eq!(last.job, crate::Job::Repair);
    assert_eq!((last.files_done, last.bytes_done), (2, total));
    assert_eq!((last.files_hashed, last.bytes_hashed), (0, 0));

    // At open, an orphan file is hashed and reported.
    drop(store);
    let orphan = blob(7, 5000);
    let path = dir.path().join(format!(
        "blobs/sha256/{}/{}",
        &orphan.0.hex()[..2],
        orphan.0.hex()
    ));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &orphan.1).unwrap();
    let mut seen = Vec::new();
    let store =
        Store::open_reporting(dir.path(), StoreOptions::default(), &mut |p| seen.push(*p)).unwrap();
    let last = *seen.last().unwrap();
    assert_eq!((last.files_done, last.files_total), (3, 3));
    assert_eq!((last.files_hashed, last.bytes_hashed), (1, 5000));
    assert_eq!(store.repaired_at_open().orphans_indexed, 1);
}
