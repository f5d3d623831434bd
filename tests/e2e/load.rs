//! Load: 1,000 clients at once, each on its own connection, pulling a mix of cached and
//! uncached images (manifest by tag, then config and layers, every digest checked) through
//! pullgate in front of Distribution. Zero errors, one upstream GET per uncached blob, and
//! pullgate's peak memory bounded. The figures are printed and recorded in
//! `docs/benchmarks.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::support::distribution::{Auth, Distribution};
use crate::support::http;
use crate::support::images::{self, sha256, Flavor, Image, Pusher};
use crate::support::pullgate::{Options, Pullgate};

const CLIENTS: usize = 1000;
const IMAGES: usize = 20;
/// Images 0..CACHED are pulled once before the crowd arrives.
const CACHED: usize = 10;
/// Pullgate's peak resident memory may not exceed this (debug build).
const RSS_LIMIT_KIB: u64 = 256 * 1024;

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

fn repo(i: usize) -> String {
    format!("e2e/load{}", i % 4)
}

/// Pull image `i` the way a client does; the bytes received, or what went wrong.
async fn pull(client: &reqwest::Client, base: &str, i: usize, img: &Image) -> Result<u64, String> {
    let mut bytes = 0u64;
    let m = client
        .get(format!("{base}/v2/{}/manifests/v{i}", repo(i)))
        .header("accept", img.manifest.media_type.as_str())
        .send()
        .await
        .map_err(|e| format!("manifest: {e}"))?;
    if m.status() != 200 {
        return Err(format!("manifest: {}", m.status()));
    }
    let body = m.bytes().await.map_err(|e| format!("manifest body: {e}"))?;
    if sha256(&body) != img.manifest.digest {
        return Err("manifest digest".into());
    }
    bytes += body.len() as u64;
    let manifest: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let digests = std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().into_iter().flatten())
        .map(|d| d["digest"].as_str().unwrap_or("").to_owned());
    for digest in digests {
        let r = client
            .get(format!("{base}/v2/{}/blobs/{digest}", repo(i)))
            .send()
            .await
            .map_err(|e| format!("blob: {e}"))?;
        if r.status() != 200 {
            return Err(format!("blob {digest}: {}", r.status()));
        }
        let body = r.bytes().await.map_err(|e| format!("blob body: {e}"))?;
        if sha256(&body) != digest {
            return Err(format!("blob {digest}: wrong bytes"));
        }
        bytes += body.len() as u64;
    }
    Ok(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_pull_cached_and_uncached_images_without_an_error() {
    crowd("load", [16 * 1024, 64 * 1024, 256 * 1024]).await;
}

/// The same crowd with layers of 64 KiB, 512 KiB and 2 MiB: 2.5 GiB through pullgate,
/// most of it streamed to many followers of one fill or from one cached file at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_pull_megabyte_layers_without_an_error() {
    crowd("load-mib", [64 * 1024, 512 * 1024, 2 * 1024 * 1024]).await;
}

/// 1,000 clients pull [`IMAGES`] images of three layers of about `layer_sizes` bytes
/// (image `i` adds `i` bytes to each, so no two blobs are alike), [`CACHED`] of them
/// pulled once beforehand; print the figures.
async fn crowd(seed: &str, layer_sizes: [usize; 3]) {
    let upstream = Distribution::start(Auth::Anonymous);
    let push = Pusher::new(&upstream.url(), None);
    let imgs: Vec<Image> = (0..IMAGES)
        .map(|i| {
            images::image(
                &format!("{seed}-{i}"),
                &layer_sizes.map(|n| n + i),
                Flavor::Oci,
                "amd64",
            )
        })
        .collect();
    for (i, img) in imgs.iter().enumerate() {
        push.image(&repo(i), &format!("v{i}"), img).await;
    }
    let pullgate = Pullgate::start(Options::new(&upstream.url()));
    let base = pullgate.url();
    let warm = http::client();
    for (i, img) in imgs.iter().enumerate().take(CACHED) {
        pull(&warm, &base, i, img).await.unwrap();
    }
    http::fills_settled(&base).await;

    let imgs = Arc::new(imgs);
    // How many connections pullgate holds at once: proof the crowd was concurrent.
    let pid = pullgate.pid().unwrap();
    let peak_fds = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak_fds, sampling) = (Arc::clone(&peak_fds), Arc::clone(&sampling));
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let n = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
                peak_fds.fetch_max(n as u64, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let requests = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (imgs, base, requests) = (Arc::clone(&imgs), base.clone(), Arc::clone(&requests));
            tokio::spawn(async move {
                // Its own client, so its own connection, as 1,000 nodes would have.
                let client = http::client();
                let i = c % IMAGES;
                let r = pull(&client, &base, i, &imgs[i]).await;
                requests.fetch_add(1 + 1 + imgs[i].layers.len() as u64, Ordering::Relaxed);
                r
            })
        })
        .collect();
    let mut errors = Vec::new();
    let mut bytes = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(b) => bytes += b,
            Err(e) => errors.push(e),
        }
    }
    let wall = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak_fds = peak_fds.load(Ordering::Relaxed);
    let rss = peak_rss_kib(pullgate.pid().unwrap());
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );

    http::fills_settled(&base).await;
    // Cached or not, every blob went upstream exactly once: at warm-up, or once for the
    // whole crowd.
    let mut upstream_gets = 0;
    for (i, img) in imgs.iter().enumerate() {
        for b in img.blobs() {
            let path = format!("/v2/{}/blobs/{}", repo(i), b.digest);
            assert_eq!(upstream.count("GET", &path), 1, "image {i}, {}", b.digest);
            upstream_gets += 1;
        }
    }
    assert!(
        rss < RSS_LIMIT_KIB,
        "pullgate's peak RSS was {} MiB",
        rss / 1024
    );
    assert!(
        peak_fds > CLIENTS as u64 / 4,
        "only {peak_fds} descriptors open at the peak: the clients did not overlap"
    );
    let requests = requests.load(Ordering::Relaxed);
    let layers_kib = layer_sizes.map(|n| n / 1024);
    eprintln!(
        "load: {CLIENTS} clients ({CACHED} of {IMAGES} images cached, layers {layers_kib:?} KiB), {requests} requests, \
         {:.1} MiB in {:.2?}: {:.0} requests/s, {:.0} MiB/s; pullgate peak RSS {:.1} MiB, peak open descriptors {peak_fds}",
        bytes as f64 / 1048576.0,
        wall,
        requests as f64 / wall.as_secs_f64(),
        bytes as f64 / 1048576.0 / wall.as_secs_f64(),
        rss as f64 / 1024.0
    );
    eprintln!("load: upstream blob GETs {upstream_gets}, one per blob (warm-up and crowd)");
}
