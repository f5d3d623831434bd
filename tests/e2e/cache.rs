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

/// `pullgate cache <args> --json`, parsed.
fn cache_json(pullgate: &Pullgate, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let text = cache_ok(pullgate, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: not JSON:\n{text}"))
}

/// A number from `pullgate cache stats --json`.
fn stat(pullgate: &Pullgate, args: &[&str], key: &str) -> u64 {
    let mut all = vec!["stats"];
    all.extend_from_slice(args);
    let v = cache_json(pullgate, &all);
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing from:\n{v:#}"))
}

/// The digests `pullgate cache ls --json` lists, in its order.
fn listed(pullgate: &Pullgate, args: &[&str]) -> Vec<String> {
    let mut all = vec!["ls"];
    all.extend_from_slice(args);
    cache_json(pullgate, &all)["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// The index agrees with the files: stop the server cleanly, then compare `cache ls` with
/// what is on disk.
fn assert_index_agrees(pullgate: &mut Pullgate) {
    let status = pullgate.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", pullgate.log());
    let files: Vec<String> = blob_files(&pullgate.cache_dir()).into_keys().collect();
    let mut ls = listed(pullgate, &[]);
    ls.sort();
    assert_eq!(ls, files, "the index and the files disagree");
    let stats = cache_json(pullgate, &["stats"]);
    assert_eq!(stats["blobs"], files.len(), "{stats:#}");
    assert_eq!(stats["index_records"], files.len(), "{stats:#}");
    assert_eq!(stats["tmp_files"], 0, "{stats:#}");
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

    let stats = cache_json(&pullgate, &["stats"]);
    assert_eq!(stats["blobs"], 9, "{stats:#}");
    assert_eq!(stats["index_records"], 9, "{stats:#}");
    assert_eq!(stats["bytes"], bytes, "{stats:#}");
    assert_eq!(stats["max_size_bytes"], 100 * MIB, "{stats:#}");
    assert_eq!(stats["high_watermark"], 0.95, "{stats:#}");
    for key in ["oldest_access", "newest_access"] {
        let t = stats[key].as_str().unwrap();
        assert!(t.starts_with("20") && t.ends_with('Z'), "{stats:#}");
    }

    let ls = cache_ok(&pullgate, &["ls"]);
    let digests = listed(&pullgate, &[]);
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
    assert_eq!(stat(&pullgate, &[], "index_records"), 9);

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
    let stats = cache_json(&pullgate, &["stats", "--config", small]);
    let left = stats["bytes"].as_u64().unwrap();
    assert!(left <= MIB as u64, "{stats:#}");
    assert_eq!(stats["blobs"], stats["index_records"], "{stats:#}");
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
    assert_eq!(stat(&pullgate, &[], "blobs"), survivors.len() as u64 - 1);
    assert_eq!(
        stat(&pullgate, &[], "index_records"),
        survivors.len() as u64 - 1
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
        // tmp/ was emptied at start-up; the evictor, which starts at once over a full
        // cache, passes each file it evicts through tmp/ on its way out.
        assert!(
            eventually(Duration::from_secs(10), || pullgate.tmp_files() == 0),
            "round {round}"
        );
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

/// `pullgate cache <args>` without a configuration file: the embedded default, the cache
/// named by `--cache-dir`; `env` added. Returns the output, whatever the status.
fn cache_on_dir(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pullgate"))
        .arg("cache")
        .args(args)
        .arg("--cache-dir")
        .arg(dir)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .output()
        .expect("running pullgate cache")
}

/// Blob files laid out by hand, as a cache whose index was lost has them: `n` files of
/// `size` bytes, each named by its digest. Returns their total size.
fn lay_out_blob_files(cache: &Path, seed: &str, n: usize, size: usize) -> u64 {
    for i in 0..n {
        let bytes = images::noise(&format!("{seed}-{i}"), size);
        let hex = sha256(&bytes).trim_start_matches("sha256:").to_owned();
        let dir = cache.join("blobs/sha256").join(&hex[..2]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&hex), &bytes).unwrap();
    }
    (n * size) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_ls_stats_and_top_print_tables_and_json_sorted_and_filtered() {
    let upstream = Distribution::start(Auth::Anonymous);
    let pusher = Pusher::new(&upstream.url(), None);
    let a = images::image("top-a", &[2 * MIB], Flavor::Oci, "amd64");
    let b = images::image("top-b", &[64 * 1024], Flavor::Oci, "amd64");
    let c = images::image("top-c", &[4096], Flavor::Oci, "amd64");
    pusher.image("e2e/a", "v1", &a).await;
    pusher.image("e2e/b", "v1", &b).await;
    pusher.image("other/c", "v1", &c).await;
    let mut pullgate = Pullgate::start(Options::new(&upstream.url()));
    for _ in 0..3 {
        pull(&pullgate, "e2e/a:v1").await.unwrap();
    }
    pull(&pullgate, "e2e/b:v1").await.unwrap();
    pull(&pullgate, "other/c:v1").await.unwrap();
    http::fills_settled(&pullgate.url()).await;
    // The counts still in memory are written at shutdown.
    let status = pullgate.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", pullgate.log());
    // The upstream's name in the configuration (its host and port).
    let host = upstream
        .url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let files = blob_files(&pullgate.cache_dir());
    let size_of = |d: &str| std::fs::metadata(&files[d]).unwrap().len();
    let digests = |img: &images::Image| -> Vec<String> {
        let mut d: Vec<String> = img.blobs().map(|b| b.digest.clone()).collect();
        d.push(img.manifest.digest.clone());
        d.sort();
        d
    };

    // ls --json: every blob, its size, kind and repository, as pulled.
    let ls = cache_json(&pullgate, &["ls"]);
    let blobs = ls["blobs"].as_array().unwrap();
    assert_eq!(blobs.len(), files.len(), "{ls:#}");
    assert_eq!(blobs.len(), 9);
    for blob in blobs {
        let d = blob["digest"].as_str().unwrap();
        assert_eq!(blob["size"], size_of(d), "{blob:#}");
        assert!(files.contains_key(d));
        let t = blob["last_access"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(t).is_ok(), "{t}");
        assert_eq!(
            blob["repositories"][0]["upstream"],
            host.as_str(),
            "{blob:#}"
        );
    }
    let manifest = blobs
        .iter()
        .find(|b| b["digest"] == a.manifest.digest.as_str())
        .unwrap();
    assert_eq!(manifest["kind"], "manifest");
    assert_eq!(manifest["repositories"][0]["repository"], "e2e/a");
    assert_eq!(
        ls["total_bytes"],
        files.keys().map(|d| size_of(d)).sum::<u64>()
    );

    // Filters: by repository pattern, by upstream.
    let mut e2e = listed(&pullgate, &["--repo", "e2e/*"]);
    e2e.sort();
    let mut want = [digests(&a), digests(&b)].concat();
    want.sort();
    assert_eq!(e2e, want);
    let mut only_c = listed(&pullgate, &["--repo", "*/c"]);
    only_c.sort();
    assert_eq!(only_c, digests(&c));
    assert_eq!(listed(&pullgate, &["--upstream", &host]).len(), 9);
    assert!(listed(&pullgate, &["--upstream", "elsewhere.example"]).is_empty());
    // Sorted by size, largest first: the 2 MiB layer leads.
    let by_size = listed(&pullgate, &["--sort", "size"]);
    assert_eq!(by_size[0], a.layers[0].digest);
    let sizes: Vec<u64> = by_size.iter().map(|d| size_of(d)).collect();
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");

    // The table, for people: aligned, human sizes and ages.
    let text = cache_ok(&pullgate, &["ls", "--sort", "size"]);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("LAST ACCESS"), "{text}");
    let first = lines.next().unwrap();
    assert!(first.contains("2.0 MiB"), "{text}");
    assert!(first.contains(" ago"), "{text}");
    assert!(first.contains(&format!("{host}/e2e/a")), "{text}");
    let digest_col = header.find("DIGEST").unwrap();
    assert_eq!(
        first.find("sha256:"),
        Some(digest_col),
        "not aligned:\n{text}"
    );
    assert!(text.trim_end().ends_with("9 blobs, 2.1 MiB"), "{text}");

    // stats --json: the totals and a row per repository, with its pulls.
    let stats = cache_json(&pullgate, &["stats"]);
    assert_eq!(stats["blobs"], 9, "{stats:#}");
    let repos = stats["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 3, "{stats:#}");
    assert_eq!(repos[0]["repository"], "e2e/a", "largest first: {stats:#}");
    let a_bytes: u64 = digests(&a).iter().map(|d| size_of(d)).sum();
    assert_eq!(repos[0]["bytes"], a_bytes);
    assert_eq!(repos[0]["blobs"], 3);
    assert_eq!(repos[0]["pulls"], 3);
    let filtered = cache_json(&pullgate, &["stats", "--repo", "e2e/b"]);
    assert_eq!(filtered["matching"]["repositories"], 1, "{filtered:#}");
    assert_eq!(filtered["matching"]["blobs"], 3);
    assert_eq!(filtered["repositories"][0]["pulls"], 1);
    let by_name = cache_json(&pullgate, &["stats", "--sort", "name"]);
    let names: Vec<&str> = by_name["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["repository"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["e2e/a", "e2e/b", "other/c"]);
    let text = cache_ok(&pullgate, &["stats"]);
    assert!(text.contains("REPOSITORY"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("size ") && l.contains("MiB")),
        "{text}"
    );

    // top: A, pulled three times, first.
    let top = cache_json(&pullgate, &["top"]);
    let images = top["images"].as_array().unwrap();
    assert_eq!(images.len(), 3, "{top:#}");
    assert_eq!(images[0]["image"], format!("{host}/e2e/a:v1"), "{top:#}");
    assert_eq!(images[0]["pulls"], 3);
    assert_eq!(images[0]["reference"], "v1");
    assert!(images[1..].iter().all(|i| i["pulls"] == 1), "{top:#}");
    let limited = cache_json(&pullgate, &["top", "--limit", "1"]);
    assert_eq!(limited["images"].as_array().unwrap().len(), 1);
    assert_eq!(limited["total_images"], 3);
    let other = cache_json(&pullgate, &["top", "--repo", "other/*"]);
    assert_eq!(other["images"][0]["image"], format!("{host}/other/c:v1"));
    let text = cache_ok(&pullgate, &["top"]);
    let row = text.lines().nth(1).unwrap();
    assert!(row.starts_with(&format!("{host}/e2e/a:v1")), "{text}");
    assert!(row.split_whitespace().nth(1) == Some("3"), "{text}");

    // A restart keeps the counts and adds to them.
    pullgate.restart();
    pull(&pullgate, "e2e/b:v1").await.unwrap();
    let status = pullgate.terminate(Duration::from_secs(20));
    assert!(status.success(), "{}", pullgate.log());
    let top = cache_json(&pullgate, &["top"]);
    let b_row = top["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"] == format!("{host}/e2e/b:v1"))
        .cloned()
        .unwrap();
    assert_eq!(b_row["pulls"], 2, "{top:#}");
}

#[test]
fn cache_rebuild_draws_a_bar_on_a_terminal_and_plain_lines_in_a_pipe() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let total = lay_out_blob_files(&cache, "rebuild-progress", 12, 2 * MIB);

    // In a pipe (as in CI): plain lines on stderr, often enough to see with a small interval.
    let out = cache_on_dir(&cache, &["rebuild"], &[("PULLGATE_PROGRESS_EVERY", "1ms")]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("rebuild: ")).collect();
    assert!(lines.len() >= 2, "{err}");
    let done = lines.last().unwrap();
    assert!(
        done.contains("done in")
            && done.contains("12/12 files")
            && done.contains("12 hashed (24.0 MiB)"),
        "{err}"
    );
    assert!(lines.iter().all(|l| l.contains("/s, ETA")), "{err}");
    assert!(
        !err.contains('\r') && !err.contains('\u{1b}'),
        "no drawing in a pipe: {err}"
    );
    assert!(
        stdout(&out).contains("12 blob files hashed"),
        "{}",
        stdout(&out)
    );
    assert_eq!(total, 24 * MIB as u64);

    // On a terminal: the bar, drawn by indicatif, ending full.
    let cmd = format!(
        "{} cache rebuild --cache-dir {}",
        env!("CARGO_BIN_EXE_pullgate"),
        cache.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("NO_COLOR", "1")
        .output()
        .expect("script (util-linux) runs the command under a pseudo-terminal");
    assert!(out.status.success(), "{out:?}");
    let screen = stdout(&out);
    assert!(
        screen.contains("rebuild: 12/12 files, 12 hashed [=="),
        "{screen}"
    );
    assert!(
        screen.contains("==] 24.00 MiB/24.00 MiB"),
        "a full bar: {screen}"
    );
    assert!(screen.contains("iB/s ETA"), "{screen}");
    assert!(screen.contains("12 blob files hashed"), "{screen}");
    assert!(
        !screen.contains("rebuild: done in"),
        "plain lines on a terminal: {screen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_start_up_repair_logs_its_progress() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    // A cache whose index is gone: every file is an orphan, re-hashed before serving.
    lay_out_blob_files(&cache, "repair-progress", 40, 2 * MIB);
    let mut opts = Options::new("http://127.0.0.1:9");
    opts.cache_dir = Some(cache.clone());
    // "A few seconds" (5 s) is the default; a small interval makes a short repair long.
    opts.env = vec![("PULLGATE_PROGRESS_EVERY".into(), "10ms".into())];
    let pullgate = Pullgate::start(opts);
    let log = pullgate.log();
    let progress: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cache start-up repair in progress"))
        .collect();
    assert!(!progress.is_empty(), "{log}");
    for line in &progress {
        for field in [
            "files_done=",
            "files_total=40",
            "bytes_done=",
            "bytes_per_second=",
            "eta_seconds=",
        ] {
            assert!(line.contains(field), "{field} missing: {line}");
        }
        assert!(line.contains("/s, ETA"), "{line}");
    }
    let done = log
        .lines()
        .find(|l| l.contains("cache start-up repair done"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(done.contains("files_hashed=40"), "{done}");
    assert!(done.contains("40/40 files"), "{done}");
    let check = log
        .lines()
        .find(|l| l.contains("cache start-up check"))
        .unwrap();
    assert!(check.contains("orphans_indexed=40"), "{check}");

    // A quick one, at the default interval, logs nothing of the kind.
    drop(pullgate);
    let mut opts = Options::new("http://127.0.0.1:9");
    opts.cache_dir = Some(cache);
    let again = Pullgate::start(opts);
    assert!(
        !again.log().contains("cache start-up repair"),
        "{}",
        again.log()
    );
}
