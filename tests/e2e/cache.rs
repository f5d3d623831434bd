//! The bounded cache: least-recently-used eviction between the watermarks, refetching what
//! was evicted, crash safety under SIGKILL (during fills and during eviction), and the
//! `pullgate cache` subcommands on a stopped server's cache; an index sled cannot open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;

use crate::support::distribution::{Auth, Distribution};
use crate::support::eventually;
use crate::support::fault::{Fault, FaultAuth, FaultUpstream};
use crate::support::http::{self, get, metric_value, metrics_text};
use crate::support::images::{self, sha256, Blob, Flavor, Pusher};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::skopeo;

const MIB: usize = 1024 * 1024;

/// Every file under `blobs/`, by the digest its path names.
fn blob_files(cache: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let root = cache.join("blobs/sha256");
    let Ok(fans) = std::fs::read_dir(&root) else {
        return out;
    };
    for fan in fans {
        for file in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let hex = path.file_name().unwrap().to_string_lossy().into_owned();
            out.insert(format!("sha256:{hex}"), path);
        }
    }
    out
}

/// The invariant a crash must not break: every file at a blob path hashes to its name.
/// (A running server may evict a file while this looks: gone is fine, wrong is not.)
fn assert_every_file_verified(cache: &Path) {
    for (digest, path) in blob_files(cache) {
        match std::fs::read(&path) {
            Ok(bytes) => assert_eq!(
                sha256(&bytes),
                digest,
                "{} holds other bytes",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `pullgate cache <args>` on the stopped server's cache; it must succeed.
fn cache_ok(pullgate: &Pullgate, args: &[&str]) -> String {
    let out = pullgate.cache_command(args);
    assert!(
        out.status.success(),
        "pullgate cache {args:?} failed:\n{}\n{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// `key: value` from `pullgate cache stats`, the value's first word.
fn stat(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("{key} missing from:\n{text}"))
        .to_owned()
}

/// The digests `pullgate cache ls` lists, in its order.
fn listed(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|d| d.starts_with("sha256:"))
        .map(str::to_owned)
        .collect()
}

/// The index agrees with the files: stop the server cleanly, then compare `cache ls` with
/// what is on disk.
fn assert_index_agrees(pullgate: &mut Pullgate) {
    let status = pullgate.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", pullgate.log());
    let files: Vec<String> = blob_files(&pullgate.cache_dir()).into_keys().collect();
    let mut ls = listed(&cache_ok(pullgate, &["ls"]));
    ls.sort();
    assert_eq!(ls, files, "the index and the files disagree");
    let stats = cache_ok(pullgate, &["stats"]);
    assert_eq!(stat(&stats, "blobs"), files.len().to_string(), "{stats}");
    assert_eq!(
        stat(&stats, "index_records"),
        files.len().to_string(),
        "{stats}"
    );
    assert_eq!(stat(&stats, "tmp_files"), "0", "{stats}");
}

/// The start-up check's log line from the first restart.
fn restart_check_line(pullgate: &Pullgate) -> String {
    let log = pullgate.log();
    log.lines()
        .filter(|l| l.contains("cache start-up check"))
        .nth(1)
        .unwrap_or_else(|| panic!("no start-up line after the restart:\n{log}"))
        .to_owned()
}

async fn pull(pullgate: &Pullgate, repo_tag: &str) -> Result<(), String> {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("copy");
    skopeo::pull(format!("{}/{repo_tag}", pullgate.host()), dest, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_usage_between_the_watermarks_and_refetches_what_it_evicted() {
    let upstream = Distribution::start(Auth::Anonymous);
    let pusher = Pusher::new(&upstream.url(), None);
    let imgs: Vec<_> = (0..6)
        .map(|i| images::image(&format!("evict-{i}"), &[3 * MIB], Flavor::Oci, "amd64"))
        .collect();
    for (i, img) in imgs.iter().enumerate() {
        pusher.image(&format!("e2e/evict{i}"), "v1", img).await;
    }
    let mut opts = Options::new(&upstream.url());
    // 10 MiB: evict above 8 MiB down to 5 MiB; each image is a little over 3 MiB.
    opts.cache_extra = "max_size = \"10MiB\"\nhigh_watermark = 0.8\nlow_watermark = 0.5\n".into();
    let pullgate = Pullgate::start(opts);
    let base = pullgate.url();
    let (max, high, low) = (10 * MIB as u64, 8 * MIB as u64, 5 * MIB as u64);
    let usage = || async { metric_value(&metrics_text(&base).await, "pullgate_cache_size_bytes") };

    for i in 0..imgs.len() {
        pull(&pullgate, &format!("e2e/evict{i}:v1")).await.unwrap();
        // The last blob's commit lands just after its client has every byte.
        http::fills_settled(&base).await;
        // Eviction runs in the background, soon after the commit that crossed the mark.
        let mut settled = false;
        for _ in 0..100 {
            if usage().await <= high as f64 {
                settled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            settled,
            "usage stayed above the high watermark:\n{}",
            pullgate.log()
        );
    }
    let text = metrics_text(&base).await;
    let v = |series: &str| metric_value(&text, series);
    assert_eq!(v("pullgate_cache_max_size_bytes"), max as f64);
    assert_eq!(v("pullgate_cache_high_watermark_bytes"), high as f64);
    assert_eq!(v("pullgate_cache_low_watermark_bytes"), low as f64);
    assert!(v("pullgate_cache_evictions_total") >= 9.0, "{text}");
    let size = v("pullgate_cache_size_bytes");
    assert!(size > 0.0 && size <= high as f64, "{size}");
    // Everything pulled minus what was evicted is what is left.
    let pulled: usize = imgs
        .iter()
        .map(|i| i.manifest.bytes.len() + i.blobs().map(|b| b.bytes.len()).sum::<usize>())
        .sum();
    assert_eq!(
        v("pullgate_cache_evicted_bytes_total") + size,
        pulled as f64,
        "{text}"
    );
    assert!(
        pullgate
            .log()
            .contains("cache evicted down to its low watermark"),
        "{}",
        pullgate.log()
    );
    // Least recently used went first: the first image's layer, not the last one's.
    let first = &imgs[0].layers[0];
    let last = &imgs[imgs.len() - 1].layers[0];
    assert!(!pullgate.blob_path(&first.digest).exists());
    assert!(pullgate.blob_path(&last.digest).exists());

    // A later pull fetches what was evicted again, and succeeds.
    let layer_path = format!("/v2/e2e/evict0/blobs/{}", first.digest);
    assert_eq!(upstream.count("GET", &layer_path), 1);
    pull(&pullgate, "e2e/evict0:v1").await.unwrap();
    assert_eq!(upstream.count("GET", &layer_path), 2);
    let r = get(&format!("{base}/v2/e2e/evict0/blobs/{}", first.digest)).await;
    assert_eq!(sha256(r.bytes()), first.digest);
    assert!(!pullgate.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_subcommands_report_and_maintain_a_stopped_cache() {
    let upstream = Distribution::start(Auth::Anonymous);
    let pusher = Pusher::new(&upstream.url(), None);
    let imgs: Vec<_> = (0..3)
        .map(|i| images::image(&format!("sub-{i}"), &[MIB], Flavor::Oci, "amd64"))
        .collect();
    for (i, img) in imgs.iter().enumerate() {
        pusher.image(&format!("e2e/sub{i}"), "v1", img).await;
    }
    let mut opts = Options::new(&upstream.url());
    opts.cache_extra = "max_size = \"100MiB\"\n".into();
    let mut pullgate = Pullgate::start(opts);
    for i in 0..imgs.len() {
        pull(&pullgate, &format!("e2e/sub{i}:v1")).await.unwrap();
    }

    // A running server holds the cache: the commands refuse, saying why.
    let out = pullgate.cache_command(&["stats"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another process"), "{err}");
    let status = pullgate.terminate(Duration::from_secs(20));
    assert!(status.success());
    let cache = pullgate.cache_dir();
    let files = blob_files(&cache);
    // Per image: manifest, config, layer.
    assert_eq!(files.len(), 9);
    let bytes: u64 = files
        .values()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();

    let stats = cache_ok(&pullgate, &["stats"]);
    assert_eq!(stat(&stats, "blobs"), "9", "{stats}");
    assert_eq!(stat(&stats, "index_records"), "9", "{stats}");
    assert_eq!(stat(&stats, "bytes"), bytes.to_string(), "{stats}");
    assert_eq!(stat(&stats, "max_size"), (100 * MIB).to_string(), "{stats}");
    assert_eq!(stat(&stats, "high_watermark"), "0.95", "{stats}");
    assert!(stat(&stats, "oldest_access").starts_with("20"), "{stats}");
    assert!(stat(&stats, "newest_access").starts_with("20"), "{stats}");

    let ls = cache_ok(&pullgate, &["ls"]);
    let digests = listed(&ls);
    assert_eq!(digests.len(), 9, "{ls}");
    let mut sorted = digests.clone();
    sorted.sort();
    assert_eq!(sorted, files.keys().cloned().collect::<Vec<_>>());
    // Least recently used first: the first image pulled comes before the last.
    let pos = |d: &str| digests.iter().position(|x| x == d).unwrap();
    assert!(
        pos(&imgs[0].layers[0].digest) < pos(&imgs[2].layers[0].digest),
        "{ls}"
    );
    let row = |d: &str| ls.lines().find(|l| l.contains(d)).unwrap().to_owned();
    let manifest_row = row(&imgs[1].manifest.digest);
    assert!(manifest_row.contains("manifest"), "{manifest_row}");
    assert!(manifest_row.contains("/e2e/sub1"), "{manifest_row}");
    assert!(row(&imgs[1].layers[0].digest).contains(" blob "), "{ls}");

    // Damage a stopped cache the ways a crash or a person could: an unindexed file that is
    // fine, one that is not what its name says, a file deleted behind the index's back.
    let orphan = Blob::new("application/octet-stream", images::noise("orphan", 4096));
    let orphan_path = pullgate.blob_path(&orphan.digest);
    std::fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
    std::fs::write(&orphan_path, &orphan.bytes).unwrap();
    let liar = sha256(b"a name this file does not hash to");
    let liar_path = pullgate.blob_path(&liar);
    std::fs::create_dir_all(liar_path.parent().unwrap()).unwrap();
    std::fs::write(&liar_path, b"other bytes").unwrap();
    let deleted = &imgs[2].config.digest;
    std::fs::remove_file(pullgate.blob_path(deleted)).unwrap();

    // gc with a smaller limit than serve's: 2 MiB, evict down to 1 MiB.
    let small = pullgate.cache_dir().join("../small.toml");
    let text = std::fs::read_to_string(pullgate.config_path())
        .unwrap()
        .replace(
            "max_size = \"100MiB\"",
            "max_size = \"2MiB\"\nhigh_watermark = 0.9\nlow_watermark = 0.5",
        );
    std::fs::write(&small, text).unwrap();
    let small = small.to_str().unwrap();
    let dry = cache_ok(&pullgate, &["gc", "--dry-run", "--config", small]);
    for want in [
        "would index 1 orphan files",
        "would remove 1 bad files",
        "would drop 1 records without a file",
        "would evict sha256:",
    ] {
        assert!(dry.contains(want), "{want} missing:\n{dry}");
    }
    assert!(
        liar_path.exists() && orphan_path.exists(),
        "a dry run changed files"
    );
    assert_eq!(stat(&cache_ok(&pullgate, &["stats"]), "index_records"), "9");

    let done = cache_ok(&pullgate, &["gc", "--config", small]);
    assert!(done.contains("index 1 orphan files"), "{done}");
    assert!(done.contains("remove 1 bad files"), "{done}");
    assert!(done.contains(&liar_path.display().to_string()), "{done}");
    assert!(done.contains("drop 1 records without a file"), "{done}");
    assert!(!done.contains("would"), "{done}");
    let evicted: Vec<&str> = done
        .lines()
        .filter_map(|l| l.strip_prefix("evict "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!evicted.is_empty(), "{done}");
    // The oldest went first: the first image's blobs, not the orphan (indexed just now).
    assert!(
        evicted.contains(&imgs[0].layers[0].digest.as_str()),
        "{done}"
    );
    assert!(!liar_path.exists());
    let stats = cache_ok(&pullgate, &["stats", "--config", small]);
    let left: u64 = stat(&stats, "bytes").parse().unwrap();
    assert!(left <= MIB as u64, "{stats}");
    assert_eq!(
        stat(&stats, "blobs"),
        stat(&stats, "index_records"),
        "{stats}"
    );
    for d in evicted {
        assert!(!pullgate.blob_path(d).exists());
    }

    // rebuild re-hashes every file: one altered in place (same size) is found and removed.
    let survivors = blob_files(&cache);
    let (victim, victim_path) = survivors
        .iter()
        .find(|(_, p)| std::fs::metadata(p).unwrap().len() > 100)
        .expect("a blob is left");
    let mut bytes = std::fs::read(victim_path).unwrap();
    bytes[50] ^= 0xff;
    std::fs::write(victim_path, &bytes).unwrap();
    let rebuilt = cache_ok(&pullgate, &["rebuild"]);
    assert!(
        rebuilt.contains(&format!("{} blob files hashed", survivors.len())),
        "{rebuilt}"
    );
    assert!(rebuilt.contains("1 files removed"), "{rebuilt}");
    assert!(
        rebuilt.contains(&format!(
            "removed {}: content hashes to",
            victim_path.display()
        )),
        "{rebuilt}"
    );
    assert!(!victim_path.exists(), "{victim}");
    assert_every_file_verified(&cache);
    let stats = cache_ok(&pullgate, &["stats"]);
    assert_eq!(stat(&stats, "blobs"), (survivors.len() - 1).to_string());
    assert_eq!(
        stat(&stats, "index_records"),
        (survivors.len() - 1).to_string()
    );

    // The server starts on the maintained cache and every image pulls again.
    pullgate.restart();
    for i in 0..imgs.len() {
        pull(&pullgate, &format!("e2e/sub{i}:v1")).await.unwrap();
    }
    let log = pullgate.log();
    let last_check = log
        .lines()
        .rev()
        .find(|l| l.contains("cache start-up check"));
    assert!(
        last_check.is_some_and(|l| l.contains("nothing to repair")),
        "{log}"
    );
    assert_index_agrees(&mut pullgate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_fill_leaves_only_tmp_which_start_up_empties() {
    let fault = FaultUpstream::start(FaultAuth::None);
    let blob = Blob::new(
        "application/octet-stream",
        images::noise("killed", 64 * MIB),
    );
    fault.add_blob(&blob);
    // Half the body, then nothing: the fill is mid-way when the process dies.
    fault.set_fault(&blob.digest, Fault::Stall);
    let mut pullgate = Pullgate::start(Options::new(&fault.url()));
    let url = format!("{}/v2/e2e/killed/blobs/{}", pullgate.url(), blob.digest);
    let resp = http::client().get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let mut got = 0;
    while got < 8 * MIB {
        got += body.next().await.unwrap().unwrap().len();
    }
    assert!(pullgate.tmp_files() >= 1, "the fill is not in tmp/");
    pullgate.kill();
    drop(body);
    assert!(!pullgate.blob_path(&blob.digest).exists());
    assert_every_file_verified(&pullgate.cache_dir());

    fault.clear_fault(&blob.digest);
    pullgate.restart();
    assert_eq!(pullgate.tmp_files(), 0);
    let line = restart_check_line(&pullgate);
    assert!(
        line.contains("repaired") && line.contains("tmp_removed=1"),
        "{line}"
    );
    let r = get(&url).await;
    assert_eq!(r.status, 200);
    assert_eq!(sha256(r.bytes()), blob.digest);
    assert!(eventually(Duration::from_secs(5), || pullgate
        .blob_path(&blob.digest)
        .exists()));
    assert_index_agrees(&mut pullgate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_fills_and_evictions_leaves_a_cache_that_repairs_itself() {
    let upstream = Distribution::start(Auth::Anonymous);
    let pusher = Pusher::new(&upstream.url(), None);
    let blobs: Vec<Blob> = (0..24)
        .map(|i| {
            Blob::new(
                "application/octet-stream",
                images::noise(&format!("churn-{i}"), MIB + i * 4096),
            )
        })
        .collect();
    for b in &blobs {
        pusher.blob("e2e/churn", b).await;
    }
    let mut opts = Options::new(&upstream.url());
    // Room for about four blobs: nearly every commit sets off an eviction.
    opts.cache_extra = "max_size = \"6MiB\"\nhigh_watermark = 0.6\nlow_watermark = 0.3\n".into();
    let mut pullgate = Pullgate::start(opts);
    let cache = pullgate.cache_dir();

    for (round, delay_ms) in [200_u64, 450, 700, 1000].into_iter().enumerate() {
        // Two clients pull blobs round and round, from different places, until the
        // process dies under them.
        let base = pullgate.url();
        let mut clients = Vec::new();
        for c in 0..2 {
            let base = base.clone();
            let digests: Vec<String> = blobs.iter().map(|b| b.digest.clone()).collect();
            let start = round * 5 + c * 12;
            clients.push(tokio::spawn(async move {
                for d in digests.iter().cycle().skip(start) {
                    let r = http::client()
                        .get(format!("{base}/v2/e2e/churn/blobs/{d}"))
                        .send()
                        .await;
                    let Ok(r) = r else { return };
                    assert_eq!(r.status().as_u16(), 200, "{d}");
                    match r.bytes().await {
                        // Cut short by the kill: an error, never a short clean body.
                        Err(_) => return,
                        Ok(body) => assert_eq!(&sha256(&body), d, "a clean body of bad bytes"),
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        pullgate.kill();
        for c in clients {
            c.await.unwrap();
        }
        // Whatever the moment, nothing unverified is at a blob path.
        assert_every_file_verified(&cache);

        pullgate.restart();
        assert_eq!(pullgate.tmp_files(), 0, "round {round}");
        assert_every_file_verified(&cache);
        let log = pullgate.log();
        assert_eq!(
            log.matches("cache start-up check").count(),
            round + 2,
            "{log}"
        );
    }
    let text = metrics_text(&pullgate.url()).await;
    assert!(metric_value(&text, "pullgate_cache_size_bytes") <= (6 * MIB) as f64);
    assert_index_agrees(&mut pullgate);

    // After all that, every blob pulls whole.
    pullgate.restart();
    for b in &blobs {
        let r = get(&format!(
            "{}/v2/e2e/churn/blobs/{}",
            pullgate.url(),
            b.digest
        ))
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(sha256(r.bytes()), b.digest);
    }
    // Commits land just after their clients finish, and eviction follows in the background.
    http::fills_settled(&pullgate.url()).await;
    let mut evicted = false;
    for _ in 0..100 {
        let text = metrics_text(&pullgate.url()).await;
        if metric_value(&text, "pullgate_cache_evictions_total") > 0.0 {
            evicted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(evicted, "nothing was evicted:\n{}", pullgate.log());
    assert!(!pullgate.log().contains("panicked"), "{}", pullgate.log());
    assert_index_agrees(&mut pullgate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_index_is_set_aside_at_start_and_the_files_still_serve() {
    let fault = FaultUpstream::start(FaultAuth::None);
    let img = images::image("broken-index", &[MIB, 4096], Flavor::Oci, "amd64");
    fault.add_image("e2e/broken", "v1", &img);
    let mut pullgate = Pullgate::start(Options::new(&fault.url()));
    pull(&pullgate, "e2e/broken:v1").await.unwrap();
    http::fills_settled(&pullgate.url()).await;
    let cached = blob_files(&pullgate.cache_dir());
    assert_eq!(cached.len(), 4, "manifest, config and two layers");
    let status = pullgate.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", pullgate.log());

    // A bit flipped in sled's config: sled refuses to open the index at all.
    let conf = pullgate.cache_dir().join("index/conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&conf, bytes).unwrap();
    let upstream_gets = |fault: &FaultUpstream| {
        fault
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET ") && r.contains("/blobs/"))
            .count()
    };
    let gets_before = upstream_gets(&fault);

    // The server starts anyway: the index is set aside and rebuilt from the files.
    pullgate.restart();
    let log = pullgate.log();
    assert!(
        log.contains("the cache index is unreadable: set it aside"),
        "{log}"
    );
    let line = restart_check_line(&pullgate);
    assert!(
        line.contains("index_rebuilt=true") && line.contains("orphans_indexed=4"),
        "{line}"
    );
    let asides: Vec<_> = std::fs::read_dir(pullgate.cache_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("index.broken-"))
        .collect();
    assert_eq!(asides.len(), 1, "{asides:?}");

    // Every blob is served from its file. The index that knew which upstream served each
    // one is gone, so the upstream proves once that it holds each (a GET that hashes to the
    // digest; a HEAD would be anyone's word); after that nothing is asked again.
    let blobs: Vec<_> = img.layers.iter().chain([&img.config]).collect();
    for layer in &blobs {
        let url = format!("{}/v2/e2e/broken/blobs/{}", pullgate.url(), layer.digest);
        let r = get(&url).await;
        assert_eq!(r.status, 200, "{}", pullgate.log());
        assert_eq!(sha256(r.bytes()), layer.digest);
    }
    let proved = upstream_gets(&fault);
    assert_eq!(proved, gets_before + blobs.len(), "{:#?}", fault.requests());
    pull(&pullgate, "e2e/broken:v1").await.unwrap();
    assert_eq!(upstream_gets(&fault), proved, "{:#?}", fault.requests());
    assert_index_agrees(&mut pullgate);
}
