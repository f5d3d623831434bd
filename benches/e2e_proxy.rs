//! pullgate against CNCF Distribution's proxy mode, in one run, on loopback.
//!
//! `cargo bench --bench e2e_proxy` starts a Distribution upstream holding 1 MiB, 64 MiB and
//! 1 GiB blobs, Distribution in proxy mode in front of it, and pullgate in front of it (each
//! mirror once anonymous and once with Basic auth), then measures both mirrors phase by
//! phase and prints a table of pullgate / Distribution ratios, which it also writes into
//! `docs/benchmarks.md` between the `e2e` markers. It needs `docker-registry` and
//! `htpasswd` (`./tests/run-all.sh` installs them) and about 8 GiB of free disk.
//!
//! `PULLGATE_BENCH_QUICK=1` shrinks sizes and durations for a smoke run, and
//! `PULLGATE_BENCH_PHASES=cold,warm,herd,manifest,trust,head` runs only the phases named (while
//! tuning one); neither kind of run is recorded.

#[allow(dead_code)]
#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::distribution::{Auth, Distribution};
use support::images::{self, noise, Blob, Flavor, Pusher};
use support::pullgate::{Options, Pullgate};
use support::secret::{dockerconfigjson, SecretVolume};

const MIB: usize = 1024 * 1024;
const USER: &str = "bench";
/// The bench's own requests carry this, so the upstream's log tells them from the mirrors'.
const BENCH_AGENT: &str = "pullgate-e2e-bench";
const PASSWORD: &str = "bench-password";
/// What pull clients send; Distribution answers an OCI manifest only to a client that
/// accepts it.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

struct Sizes {
    small: usize,
    medium: usize,
    large: usize,
    load_secs: u64,
}

/// One row of the report.
struct Row {
    what: String,
    pullgate: f64,
    distribution: f64,
    unit: &'static str,
    /// Higher is better (throughput) or lower is better (time, memory, requests).
    higher_is_better: bool,
    note: String,
}

struct Mirror<'a> {
    url: String,
    pid: u32,
    upstream: &'a Distribution,
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let quick = std::env::var_os("PULLGATE_BENCH_QUICK").is_some();
    let sizes = if quick {
        Sizes {
            small: MIB,
            medium: 8 * MIB,
            large: 64 * MIB,
            load_secs: 1,
        }
    } else {
        Sizes {
            small: MIB,
            medium: 64 * MIB,
            large: 1024 * MIB,
            load_secs: 4,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let phases = std::env::var("PULLGATE_BENCH_PHASES").ok();
    let report = rt.block_on(run(&sizes, phases.as_deref()));
    println!("{report}");
    if !quick && phases.is_none() {
        record(&report);
    }
}

async fn run(sizes: &Sizes, phases: Option<&str>) -> String {
    let phase = |name: &str| phases.is_none_or(|p| p.split(',').any(|p| p.trim() == name));
    let upstream = Distribution::start(Auth::Anonymous);
    let push = Pusher::new(&upstream.url(), None);
    let repo = "bench/blobs";
    // Separate blobs per mirror for the cold phases, so each mirror starts cold on its own.
    let blob = |seed: &str, len: usize| Blob::new("application/octet-stream", noise(seed, len));
    let mut cold = Vec::new();
    for len in [sizes.small, sizes.medium, sizes.large] {
        let label = human(len);
        let b = blob(&format!("cold-{label}"), len);
        push.blob(repo, &b).await;
        cold.push((label, b.digest.clone(), len));
    }
    let herd = [
        blob("herd-pullgate", sizes.large),
        blob("herd-distribution", sizes.large),
    ];
    for b in &herd {
        push.blob(repo, b).await;
    }
    let herd: Vec<String> = herd.iter().map(|b| b.digest.clone()).collect();
    let image = images::image("bench-manifest", &[4096], Flavor::Oci, "amd64");
    push.image(repo, "v1", &image).await;

    // The mirrors: each anonymous and with Basic auth.
    let dir = tempfile::tempdir().expect("tempdir");
    // An entry keyed by the mirror's own address may pull from every upstream.
    let auth_port = support::free_port();
    let secret = SecretVolume::new(
        &dir.path().join("clients"),
        dockerconfigjson(&[(&format!("127.0.0.1:{auth_port}"), USER, PASSWORD)]).as_bytes(),
    );
    let pullgate_opts = |auth: bool| {
        let mut o = Options::new(&upstream.url());
        o.log_filter = "info".into();
        // The brief's target is measured within tag_ttl.
        o.tag_ttl = "10m".into();
        if auth {
            o.port = Some(auth_port);
            o.extra = format!("[auth]\nclient_secrets = [\"{}\"]\n", secret.dir.display());
        }
        o
    };
    let upstream_pid = upstream.pid().expect("upstream pid");
    let pullgate = Pullgate::start(pullgate_opts(false));
    let pullgate_auth = Pullgate::start(pullgate_opts(true));
    let proxy = Distribution::proxy(&upstream.url(), Auth::Anonymous);
    let proxy_auth = Distribution::proxy(
        &upstream.url(),
        Auth::Basic {
            user: USER.into(),
            password: PASSWORD.into(),
        },
    );
    let mirrors = [
        Mirror {
            url: pullgate.url(),
            pid: pullgate.pid().expect("pid"),
            upstream: &upstream,
        },
        Mirror {
            url: proxy.url(),
            pid: proxy.pid().expect("pid"),
            upstream: &upstream,
        },
    ];
    let client = reqwest::Client::builder()
        .user_agent(BENCH_AGENT)
        .pool_max_idle_per_host(128)
        .build()
        .expect("client");
    let mut rows: Vec<Row> = Vec::new();
    let mut direct_rows: Vec<String> = Vec::new();
    let mut peak = [0f64; 2];

    // Cold pulls: throughput and time to first byte, against the upstream read directly.
    for (label, digest, len) in cold.iter().filter(|_| phase("cold")) {
        let path = format!("/v2/{repo}/blobs/{digest}");
        // What the direct pull alone costs the machine: the upstream's CPU and this
        // process's (the client's).
        let used = || cpu_secs(upstream_pid) + cpu_secs(std::process::id());
        let before = used();
        let direct = timed_get(&client, &format!("{}{path}", upstream.url()), None).await;
        let direct_cpu = used() - before;
        let mut got = [(0.0, 0.0); 2];
        let mut cpu = [0.0; 2];
        for (i, m) in mirrors.iter().enumerate() {
            reset_peak(m.pid);
            let before = cpu_secs(m.pid);
            got[i] = timed_get(&client, &format!("{}{path}", m.url), None).await;
            if i == 0 {
                // The client is done once the blob is verified; the commit's fsync follows.
                // Let it finish before the other mirror is timed.
                support::http::fills_settled(&m.url).await;
            }
            // Distribution stores the blob from a second upstream GET in the background:
            // its CPU counts once that work is done too.
            cpu[i] = cpu_settled(m.pid).await - before;
            peak[i] = peak[i].max(peak_rss_mib(m.pid));
        }
        let mibs = |secs: f64| *len as f64 / MIB as f64 / secs;
        rows.push(Row {
            what: format!("cold GET {label}: throughput"),
            pullgate: mibs(got[0].1),
            distribution: mibs(got[1].1),
            unit: "MiB/s",
            higher_is_better: true,
            note: format!(
                "upstream direct {:.0} MiB/s; pullgate {:.2}× direct, Distribution {:.2}×; mirror CPU {:.2} s / {:.2} s",
                mibs(direct.1),
                direct.1 / got[0].1,
                direct.1 / got[1].1,
                cpu[0],
                cpu[1]
            ),
        });
        rows.push(Row {
            what: format!("cold GET {label}: time to first byte"),
            pullgate: got[0].0 * 1e3,
            distribution: got[1].0 * 1e3,
            unit: "ms",
            higher_is_better: false,
            note: format!("upstream direct {:.1} ms", direct.0 * 1e3),
        });
        direct_rows.push(format!(
            "{label}: {:.0} MiB/s, TTFB {:.1} ms, upstream + client CPU {:.2} s in {:.2} s",
            mibs(direct.1),
            direct.0 * 1e3,
            direct_cpu,
            direct.1
        ));
    }

    // Warm GETs of the 64 MiB blob (cached by the cold phase) with 1, 8 and 32 clients.
    let (_, warm_digest, warm_len) = &cold[1];
    if !phase("cold") {
        // The warm and HEAD phases read what the cold phase cached.
        for m in &mirrors {
            let url = format!("{}/v2/{repo}/blobs/{warm_digest}", m.url);
            timed_get(&client, &url, None).await;
        }
    }
    // The mirrors take turns in short rounds, so a load that comes and goes on the shared
    // machine falls on both alike.
    const ROUNDS: u32 = 4;
    let round = Duration::from_secs(sizes.load_secs) / ROUNDS;
    for clients in [1usize, 8, 32].into_iter().filter(|_| phase("warm")) {
        let mut bytes = [0u64; 2];
        let mut cpu = [0.0; 2];
        for m in &mirrors {
            reset_peak(m.pid);
        }
        for r in 0..ROUNDS {
            for k in 0..2 {
                let i = if r % 2 == 0 { k } else { 1 - k };
                let url = format!("{}/v2/{repo}/blobs/{warm_digest}", mirrors[i].url);
                let before = cpu_secs(mirrors[i].pid);
                bytes[i] += load(&client, &url, None, clients, round, false).await.1;
                cpu[i] += cpu_secs(mirrors[i].pid) - before;
            }
        }
        let gib = |i: usize| bytes[i] as f64 / (1024.0 * MIB as f64);
        let mut rate = [0.0; 2];
        for (i, m) in mirrors.iter().enumerate() {
            rate[i] = bytes[i] as f64 / MIB as f64 / sizes.load_secs as f64;
            peak[i] = peak[i].max(peak_rss_mib(m.pid));
        }
        rows.push(Row {
            what: format!("warm GET {}: {clients} clients", human(*warm_len)),
            pullgate: rate[0],
            distribution: rate[1],
            unit: "MiB/s",
            higher_is_better: true,
            note: format!(
                "mirror CPU per GiB served: {:.2} s / {:.2} s",
                cpu[0] / gib(0),
                cpu[1] / gib(1)
            ),
        });
    }

    // A thundering herd: 32 clients ask for the same cold 1 GiB blob at once.
    if phase("herd") {
        let herd_direct = {
            let url = format!("{}/v2/{repo}/blobs/{}", upstream.url(), herd[0]);
            let started = Instant::now();
            concurrent_gets(&client, &url, 32).await;
            started.elapsed().as_secs_f64()
        };
        let mut herd_wall = [0.0; 2];
        let mut herd_gets = [0.0; 2];
        let mut herd_cpu = [0.0; 2];
        for (i, m) in mirrors.iter().enumerate() {
            reset_peak(m.pid);
            let path = format!("/v2/{repo}/blobs/{}", herd[i]);
            let before = cpu_secs(m.pid);
            let started = Instant::now();
            concurrent_gets(&client, &format!("{}{path}", m.url), 32).await;
            herd_wall[i] = started.elapsed().as_secs_f64();
            if i == 0 {
                // Its commit (fsync) counts in its CPU and must not overlap the next phase.
                support::http::fills_settled(&m.url).await;
            }
            herd_cpu[i] = cpu_settled(m.pid).await - before;
            herd_gets[i] = settled_upstream_gets(m.upstream, &path).await as f64;
            peak[i] = peak[i].max(peak_rss_mib(m.pid));
        }
        rows.push(Row {
        what: format!("32 concurrent cold GETs of {}: wall", human(sizes.large)),
        pullgate: herd_wall[0],
        distribution: herd_wall[1],
        unit: "s",
        higher_is_better: false,
        note: format!(
            "32 direct GETs {herd_direct:.2} s; pullgate {:.2}× direct, Distribution {:.2}×; mirror CPU {:.1} s / {:.1} s",
            herd_wall[0] / herd_direct,
            herd_wall[1] / herd_direct,
            herd_cpu[0],
            herd_cpu[1]
        ),
    });
        rows.push(Row {
            what: "… upstream GETs caused".into(),
            pullgate: herd_gets[0],
            distribution: herd_gets[1],
            unit: "GETs",
            higher_is_better: false,
            note: String::new(),
        });
    }

    // Manifests at 64 connections: by digest and by tag, without and with Basic auth.
    let by_digest = format!("/v2/{repo}/manifests/{}", image.manifest.digest);
    let by_tag = format!("/v2/{repo}/manifests/v1");
    let auth_header = support::http::basic(USER, PASSWORD);
    let upstream_rate = if !phase("manifest") {
        0.0
    } else {
        let url = format!("{}{by_digest}", upstream.url());
        load(
            &client,
            &url,
            None,
            64,
            Duration::from_secs(sizes.load_secs),
            true,
        )
        .await
        .0 as f64
            / sizes.load_secs as f64
    };
    let auth_mirrors = [
        (pullgate_auth.url(), pullgate_auth.pid().expect("pid")),
        (proxy_auth.url(), proxy_auth.pid().expect("pid")),
    ];
    let manifest_phases = if phase("manifest") {
        &[("by digest", &by_digest), ("by tag", &by_tag)][..]
    } else {
        &[]
    };
    for &(label, path) in manifest_phases {
        for auth in [false, true] {
            let mut rate = [0.0; 2];
            let mut upstream_requests = [0usize; 2];
            for i in 0..2 {
                let (url, pid) = if auth {
                    (auth_mirrors[i].0.clone(), auth_mirrors[i].1)
                } else {
                    (mirrors[i].url.clone(), mirrors[i].pid)
                };
                let header = auth.then_some(auth_header.as_str());
                // Warm the mirror's cache first: this phase measures hits.
                let _ = timed_get(&client, &format!("{url}{path}"), header).await;
                reset_peak(pid);
                let before = upstream.access_log().len();
                let n = load(
                    &client,
                    &format!("{url}{path}"),
                    header,
                    64,
                    Duration::from_secs(sizes.load_secs),
                    true,
                )
                .await
                .0;
                upstream_requests[i] = upstream.access_log().len() - before;
                rate[i] = n as f64 / sizes.load_secs as f64;
                peak[i] = peak[i].max(peak_rss_mib(pid));
            }
            rows.push(Row {
                what: format!(
                    "manifest GET {label}, 64 conns, {}",
                    if auth { "Basic auth" } else { "anonymous" }
                ),
                pullgate: rate[0],
                distribution: rate[1],
                unit: "req/s",
                higher_is_better: true,
                note: format!(
                    "upstream direct (anonymous) {upstream_rate:.0} req/s; pullgate {:.2}× it, Distribution {:.2}×; upstream requests during the run: {} / {}",
                    rate[0] / upstream_rate,
                    rate[1] / upstream_rate,
                    upstream_requests[0],
                    upstream_requests[1]
                ),
            });
        }
    }

    // The trust policy's cost on a hit: manifest GETs by digest at 64 connections through
    // a pullgate with a `verify` rule (the image signed by an openssl key, the verdict
    // cached after the first request) against the plain pullgate above, in the same run.
    if phase("trust") {
        let tools = support::sign::Tools::new();
        let key = tools.openssl_key("bench", support::sign::Algorithm::EcdsaP256);
        let up = upstream.host();
        let layer = support::sign::SigLayer::signed_by(
            &key,
            &format!("{up}/{repo}"),
            &image.manifest.digest,
        );
        support::sign::push_signatures(&push, repo, &image.manifest.digest, &[layer]).await;
        let mut o = pullgate_opts(false);
        o.extra = format!(
            "[[trust.key]]\nname = \"bench\"\npath = \"{}\"\n\n[[trust.rule]]\nimages = [\"{up}/**\"]\naction = \"verify\"\nsigned_by = [\"bench\"]\n",
            key.public.display()
        );
        let trusted = Pullgate::start(o);
        let urls = [trusted.url(), pullgate.url()].map(|base| format!("{base}{by_digest}"));
        let pids = [trusted.pid().expect("pid"), pullgate.pid().expect("pid")];
        for url in &urls {
            // The first GET reaches the verdict; every later one is a hit.
            timed_get(&client, url, None).await;
        }
        // Both take turns in short rounds, as in the warm phase, so a load that comes and
        // goes on the shared machine falls on both alike; CPU per request is the second
        // view of the same cost, less sensitive to what else runs.
        // The cost measured is a few per cent, below the noise of one short round on a
        // shared machine: more and longer rounds than the other phases, and the spread of
        // the per-pair ratios reported beside their total.
        const TRUST_ROUNDS: u32 = 10;
        let trust_round = Duration::from_secs(sizes.load_secs) / 4;
        let mut served = [0u64; 2];
        let mut cpu = [0.0; 2];
        let mut pair_ratios = Vec::new();
        for r in 0..TRUST_ROUNDS {
            let mut pair = [0u64; 2];
            for k in 0..2 {
                let i = if r % 2 == 0 { k } else { 1 - k };
                let before = cpu_secs(pids[i]);
                pair[i] = load(&client, &urls[i], None, 64, trust_round, true).await.0;
                cpu[i] += cpu_secs(pids[i]) - before;
                served[i] += pair[i];
            }
            pair_ratios.push(pair[0] as f64 / pair[1].max(1) as f64);
        }
        pair_ratios.sort_by(f64::total_cmp);
        let secs = trust_round.as_secs_f64() * TRUST_ROUNDS as f64;
        let rate = served.map(|n| n as f64 / secs);
        let us_per_request = [0, 1].map(|i| cpu[i] * 1e6 / served[i].max(1) as f64);
        direct_rows.push(format!(
            "trust policy, manifest GET by digest at 64 conns: with a cached verdict {:.0} req/s, without a policy {:.0} req/s: {:.3}× (the issue's floor: 0.95×), {TRUST_ROUNDS} alternating rounds of {:.2} s, per-round ratios {:.3}–{:.3} (median {:.3}); mirror CPU per request {:.1} µs / {:.1} µs",
            rate[0],
            rate[1],
            rate[0] / rate[1],
            trust_round.as_secs_f64(),
            pair_ratios[0],
            pair_ratios[pair_ratios.len() - 1],
            pair_ratios[pair_ratios.len() / 2],
            us_per_request[0],
            us_per_request[1]
        ));
    }

    // HEAD latency on a cached blob, one request at a time.
    let mut head_ms = [0.0; 2];
    for (i, m) in mirrors.iter().enumerate().filter(|_| phase("head")) {
        let url = format!("{}/v2/{repo}/blobs/{warm_digest}", m.url);
        let mut times = Vec::new();
        for _ in 0..200 {
            let started = Instant::now();
            let r = client.head(&url).send().await.expect("HEAD");
            assert!(r.status().is_success(), "HEAD {url}: {}", r.status());
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        head_ms[i] = times[times.len() / 2];
    }
    rows.push(Row {
        what: "HEAD cached blob: median latency".into(),
        pullgate: head_ms[0],
        distribution: head_ms[1],
        unit: "ms",
        higher_is_better: false,
        note: String::new(),
    });
    rows.push(Row {
        what: "peak RSS over the phases above".into(),
        pullgate: peak[0],
        distribution: peak[1],
        unit: "MiB",
        higher_is_better: false,
        note: "VmHWM, reset before each phase".into(),
    });

    render(&rows, &direct_rows, sizes)
}

fn human(len: usize) -> String {
    if len >= 1024 * MIB {
        format!("{} GiB", len / (1024 * MIB))
    } else {
        format!("{} MiB", len / MIB)
    }
}

/// GET a URL once, reading the whole body: (seconds to the first body byte, seconds total).
async fn timed_get(client: &reqwest::Client, url: &str, auth: Option<&str>) -> (f64, f64) {
    let started = Instant::now();
    let mut req = client.get(url).header("accept", ACCEPT);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let mut resp = req.send().await.expect("GET");
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let mut first = None;
    while let Some(chunk) = resp.chunk().await.expect("body") {
        if first.is_none() && !chunk.is_empty() {
            first = Some(started.elapsed().as_secs_f64());
        }
    }
    let total = started.elapsed().as_secs_f64();
    (first.unwrap_or(total), total)
}

/// `n` clients GET the same URL at once; every body is read to the end.
async fn concurrent_gets(client: &reqwest::Client, url: &str, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_owned());
            tokio::spawn(async move { timed_get(&client, &url, None).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
}

/// `conns` clients GET `url` in a loop for `length`: (requests completed, body bytes).
async fn load(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    conns: usize,
    length: Duration,
    small: bool,
) -> (u64, u64) {
    let requests = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + length;
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_owned());
            let auth = auth.map(str::to_owned);
            let (requests, bytes) = (Arc::clone(&requests), Arc::clone(&bytes));
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let mut req = client.get(&url).header("accept", ACCEPT);
                    if let Some(a) = &auth {
                        req = req.header("authorization", a);
                    }
                    let mut resp = req.send().await.expect("GET");
                    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
                    let mut n = 0;
                    if small {
                        n = resp.bytes().await.expect("body").len() as u64;
                    } else {
                        while let Some(c) = resp.chunk().await.expect("body") {
                            n += c.len() as u64;
                            // A bulk transfer counts what arrived within the window.
                            if Instant::now() >= deadline {
                                break;
                            }
                        }
                    }
                    requests.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(n, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("load task");
    }
    (
        requests.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
    )
}

/// GETs of `path` a mirror made upstream (the bench's own are told apart by their user
/// agent; each herd blob is asked of one mirror only), once the count has stopped moving:
/// a mirror may still be finishing its copies after the clients are served.
async fn settled_upstream_gets(upstream: &Distribution, path: &str) -> usize {
    let needle = format!("\"GET {path} HTTP/1.1\"");
    let count = || {
        upstream
            .access_log()
            .iter()
            .filter(|l| l.contains(&needle) && !l.contains(BENCH_AGENT))
            .count()
    };
    let mut last = count();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = count();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// A process's CPU time once it has gone quiet (less than 20 ms used over 500 ms).
async fn cpu_settled(pid: u32) -> f64 {
    let mut last = cpu_secs(pid);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = cpu_secs(pid);
        if now - last < 0.02 {
            return now;
        }
        last = now;
    }
}

/// CPU time (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Reset the kernel's peak-RSS mark (VmHWM) of a process.
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn render(rows: &[Row], direct: &[String], sizes: &Sizes) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "`cargo bench --bench e2e_proxy`, {} (blobs of {}, {} and {}; load phases {} s each).\n",
        today(),
        human(sizes.small),
        human(sizes.medium),
        human(sizes.large),
        sizes.load_secs
    );
    let _ = writeln!(
        out,
        "| measurement | pullgate | Distribution proxy | pullgate / Distribution | notes |\n|---|---|---|---|---|"
    );
    for r in rows {
        let ratio = if r.distribution > 0.0 {
            r.pullgate / r.distribution
        } else {
            f64::NAN
        };
        let better = if (ratio > 1.0) == r.higher_is_better {
            "better"
        } else {
            "worse"
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} {} | {:.1} {} | {ratio:.2}× ({better}) | {} |",
            r.what, r.pullgate, r.unit, r.distribution, r.unit, r.note
        );
    }
    let _ = writeln!(out, "\nUpstream read directly: {}.", direct.join("; "));
    out
}

fn today() -> String {
    let out = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    out
}

/// Replace the text between the e2e markers of docs/benchmarks.md.
fn record(report: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md");
    let Ok(doc) = std::fs::read_to_string(path) else {
        return;
    };
    let (begin, end) = ("<!-- e2e:begin -->", "<!-- e2e:end -->");
    let (Some(b), Some(e)) = (doc.find(begin), doc.find(end)) else {
        eprintln!("docs/benchmarks.md has no e2e markers; not recorded");
        return;
    };
    let updated = format!("{}{begin}\n{report}\n{}", &doc[..b], &doc[e..]);
    if let Err(e) = std::fs::write(path, updated) {
        eprintln!("cannot write {path}: {e}");
    }
}
