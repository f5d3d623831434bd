//! Misbehaving clients: connections that send nothing, send headers a byte at a time or sit
//! idle; oversized headers and URIs; a thousand idle connections at once; dripping sockets
//! from one address against the per-address cap; thousands of Range requests. pullgate bounds what each costs and keeps serving everyone else. (A
//! client that disconnects mid-blob: `pull.rs`, `a_fill_completes_after_its_client_disconnects`.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::support::fault::{FaultAuth, FaultUpstream};
use crate::support::http::{self, get};
use crate::support::images::{self, sha256, Blob};
use crate::support::pullgate::{Options, Pullgate};

const MIB: usize = 1024 * 1024;

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Read until pullgate closes the connection; how long that took, and what it sent.
fn until_closed(mut s: TcpStream) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (started.elapsed(), got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (started.elapsed(), got)
            }
            Err(e) => panic!("still open after {:?}: {e}", started.elapsed()),
        }
    }
}

/// Send raw bytes, return the response's status line and the rest of what came back.
fn raw_exchange(port: u16, request: &[u8]) -> (String, String) {
    let mut s = connect(port);
    // The server may answer and close before reading it all: a failed write is fine.
    let _ = s.write_all(request);
    let (_, got) = until_closed_or_answered(s);
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.lines().next().unwrap_or("").to_owned();
    (status, text)
}

fn until_closed_or_answered(mut s: TcpStream) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (started.elapsed(), got),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        return (started.elapsed(), got);
                    }
                }
            }
        }
    }
}

fn start(server_extra: &str) -> (FaultUpstream, Blob, Pullgate) {
    let fault = FaultUpstream::start(FaultAuth::None);
    let blob = Blob::new(
        "application/octet-stream",
        images::noise("client-faults", 256 * 1024),
    );
    fault.add_blob(&blob);
    let mut opts = Options::new(&fault.url());
    opts.server_extra = server_extra.to_owned();
    let pullgate = Pullgate::start(opts);
    (fault, blob, pullgate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_connections_are_bounded_closed_and_starve_no_one() {
    const MAX: usize = 100;
    const SILENT: usize = 1000;
    let (_fault, blob, pullgate) = start(&format!(
        "header_read_timeout = \"1s\"\nmax_connections = {MAX}"
    ));
    let pid = pullgate.pid().unwrap();
    let baseline = fd_count(pid);
    let port = pullgate.port;
    let silent: Vec<TcpStream> =
        tokio::task::spawn_blocking(move || (0..SILENT).map(|_| connect(port)).collect())
            .await
            .unwrap();

    // A real client, queued behind all of them, still gets its blob.
    let url = format!("{}/v2/e2e/idle/blobs/{}", pullgate.url(), blob.digest);
    let started = Instant::now();
    let real = tokio::spawn(async move { get(&url).await });
    let mut peak = 0;
    while !real.is_finished() {
        peak = peak.max(fd_count(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = real.await.unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(sha256(r.bytes()), blob.digest);
    // Descriptors: the listener's backlog holds the rest, not pullgate.
    assert!(
        peak <= baseline + MAX + 16,
        "{peak} descriptors open (baseline {baseline}, max_connections {MAX})"
    );

    // pullgate closes every one of them, a hundred per header timeout.
    let closed = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        for s in silent {
            let (_, got) = until_closed(s);
            assert!(
                got.is_empty(),
                "a silent connection was sent {} bytes",
                got.len()
            );
        }
        started.elapsed()
    })
    .await
    .unwrap();
    // The client has every byte before the fill commits (fsync, rename, index), and an
    // fsync on a disk busy with other writes (a build beside CI) can take seconds: a fill
    // that is finishing is given time, one that leaked never reaches 0.
    let started = Instant::now();
    while http::metric(&pullgate.url(), "pullgate_fills_in_flight").await != 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a fill is still in flight a minute after its client got every byte"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        fd_count(pid) <= baseline + 8,
        "{} descriptors left open (baseline {baseline})",
        fd_count(pid)
    );
    let log = pullgate.log();
    assert!(!log.contains("accept failed"), "{log}");
    assert!(!log.contains("panicked"));
    eprintln!(
        "{SILENT} silent connections, max_connections {MAX}: peak {peak} fds (baseline \
         {baseline}); the real client waited {waited:?}; all closed {closed:?} later"
    );
}

/// A connection to pullgate from the loopback address `local`.
async fn connect_from(local: std::net::IpAddr, port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((local, 0).into()).unwrap();
    socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect")
}

/// Whether pullgate has closed (or reset) this socket; `false` while it is open.
fn closed(s: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.try_read(&mut buf) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// 60 sockets dripping header bytes from one address against 50 connection slots used to
/// delay every other client by `header_read_timeout`. The per-address cap keeps that
/// address to its share, closing its excess at accept, and others are served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dripping_sockets_from_one_address_cannot_starve_other_clients() {
    const SLOTS: usize = 50;
    const PER_ADDRESS: usize = 10;
    const DRIPPING: usize = 60;
    let (_fault, blob, pullgate) = start(&format!(
        "header_read_timeout = \"8s\"\nmax_connections = {SLOTS}\nmax_connections_per_address = {PER_ADDRESS}"
    ));
    let port = pullgate.port;
    let attacker = std::net::IpAddr::from([127, 0, 0, 2]);
    let mut sockets = Vec::new();
    for _ in 0..DRIPPING {
        sockets.push(connect_from(attacker, port).await);
    }
    let sockets = std::sync::Arc::new(sockets);
    let drip = {
        let sockets = std::sync::Arc::clone(&sockets);
        tokio::spawn(async move {
            for b in b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Drip: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                for s in sockets.iter() {
                    // A socket pullgate closed refuses the byte: that is the point.
                    let _ = s.try_write(&[*b]);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    // Let pullgate accept (or close) every one of them before the real client comes.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let url = format!("{}/v2/e2e/drip/blobs/{}", pullgate.url(), blob.digest);
    let started = Instant::now();
    let r = get(&url).await;
    let waited = started.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(sha256(r.bytes()), blob.digest);
    assert!(
        waited < Duration::from_secs(3),
        "a client from another address waited {waited:?} behind {DRIPPING} dripping sockets"
    );
    // The attacker kept its share; the rest was closed at accept, long before the
    // header timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open = sockets.iter().filter(|s| !closed(s)).count();
    assert_eq!(open, PER_ADDRESS, "dripping sockets still open");
    let refused = http::metric(
        &pullgate.url(),
        "pullgate_connections_over_address_limit_total",
    )
    .await;
    assert_eq!(refused, (DRIPPING - PER_ADDRESS) as f64);
    drip.abort();
    eprintln!(
        "{DRIPPING} dripping sockets from {attacker}, {PER_ADDRESS} per address, {SLOTS} slots: \
         another client waited {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_keep_alive_connections_are_cut_off() {
    let (_fault, _blob, pullgate) = start("header_read_timeout = \"1s\"");
    let port = pullgate.port;
    let results = tokio::task::spawn_blocking(move || {
        // Headers begun, never finished.
        let mut slow = connect(port);
        slow.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
        let slow = until_closed(slow).0;

        // Headers dripped a byte every 200 ms: still cut off at the timeout, though
        // bytes keep coming.
        let drip = connect(port);
        let mut writer = drip.try_clone().unwrap();
        let dripper = std::thread::spawn(move || {
            for b in b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n" {
                if writer.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let drip_time = until_closed(drip).0;
        let _ = dripper.join();

        // One request answered, then silence.
        let mut idle = connect(port);
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (idle_time, got) = until_closed(idle);
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
        (slow, drip_time, idle_time)
    })
    .await
    .unwrap();
    let (slow, drip, idle) = results;
    for (what, t) in [
        ("slow headers", slow),
        ("dripped headers", drip),
        ("idle keep-alive", idle),
    ] {
        assert!(
            t >= Duration::from_millis(900) && t < Duration::from_secs(4),
            "{what}: closed after {t:?}, want about 1 s"
        );
    }
    let r = get(&format!("{}/v2/", pullgate.url())).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_uris_get_a_clear_4xx() {
    let (_fault, _blob, pullgate) = start("");
    let port = pullgate.port;
    tokio::task::spawn_blocking(move || {
        // One header larger than the 64 KiB pullgate reads.
        let big = format!(
            "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(100_000)
        );
        let (status, _) = raw_exchange(port, big.as_bytes());
        assert!(status.starts_with("HTTP/1.1 431"), "{status}");
        // More headers than anyone sends.
        let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
        let (status, _) = raw_exchange(
            port,
            format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
        );
        assert!(status.starts_with("HTTP/1.1 431"), "{status}");
        // A URI larger than the whole header buffer.
        let huge = format!(
            "GET /v2/{}/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(70_000)
        );
        let (status, _) = raw_exchange(port, huge.as_bytes());
        assert!(
            status.starts_with("HTTP/1.1 414") || status.starts_with("HTTP/1.1 431"),
            "{status}"
        );
        // A URI that fits the buffer but no valid request is that long: 414, OCI body.
        let long = format!(
            "GET /v2/{}/manifests/x HTTP/1.1\r\nHost: x\r\n\r\n",
            "a/".repeat(2_000)
        );
        let (status, text) = raw_exchange(port, long.as_bytes());
        assert!(status.starts_with("HTTP/1.1 414"), "{status}");
        assert!(text.contains(r#""code":"NAME_INVALID""#), "{text}");
    })
    .await
    .unwrap();
    let r = get(&format!("{}/v2/", pullgate.url())).await;
    assert_eq!(r.status, 200);
    assert!(!pullgate.log().contains("panicked"));
}

/// A `Range` header, the status it must get, and the inclusive bytes (none for a 416).
type RangeCase = (String, u16, Option<(usize, usize)>);

/// A deterministic spread of Range headers over a blob of `size` bytes.
fn ranges(size: usize, count: usize, seed: u64) -> Vec<RangeCase> {
    let mut x = seed;
    let mut next = move |n: usize| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) as usize) % n.max(1)
    };
    (0..count)
        .map(|i| match i % 5 {
            0 | 1 => {
                let a = next(size);
                let b = a + next(size - a);
                (format!("bytes={a}-{b}"), 206, Some((a, b)))
            }
            2 => {
                let a = next(size);
                (format!("bytes={a}-"), 206, Some((a, size - 1)))
            }
            3 => {
                let n = 1 + next(size);
                (format!("bytes=-{n}"), 206, Some((size - n, size - 1)))
            }
            _ => {
                let a = size + next(1000);
                (format!("bytes={a}-"), 416, None)
            }
        })
        .collect()
}

async fn check_ranges(url: &str, blob: &Blob, count: usize, seed: u64, parallel: usize) {
    let client = http::client();
    let size = blob.bytes.len();
    futures_util::stream::iter(ranges(size, count, seed))
        .map(|(header, status, want)| {
            let client = client.clone();
            async move {
                let resp = client
                    .get(url)
                    .header("range", &header)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), status, "{header}");
                let content_range = resp
                    .headers()
                    .get("content-range")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = resp.bytes().await.unwrap();
                match want {
                    Some((a, b)) => {
                        assert_eq!(content_range, Some(format!("bytes {a}-{b}/{size}")));
                        assert!(body[..] == blob.bytes[a..=b], "{header}: wrong bytes");
                    }
                    None => assert_eq!(content_range, Some(format!("bytes */{size}"))),
                }
            }
        })
        .buffer_unordered(parallel)
        .collect::<Vec<()>>()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_range_requests_are_byte_exact_on_hits_and_fills() {
    let fault = FaultUpstream::start(FaultAuth::None);
    let cached = Blob::new(
        "application/octet-stream",
        images::noise("ranges-hit", 4 * MIB),
    );
    let filling = Blob::new(
        "application/octet-stream",
        images::noise("ranges-fill", 8 * MIB),
    );
    fault.add_blob(&cached);
    fault.add_blob(&filling);
    let pullgate = Pullgate::start(Options::new(&fault.url()));
    let base = format!("{}/v2/e2e/ranges/blobs", pullgate.url());
    let hit = format!("{base}/{}", cached.digest);
    assert_eq!(sha256(get(&hit).await.bytes()), cached.digest);
    http::fills_settled(&pullgate.url()).await;

    check_ranges(&hit, &cached, 2000, 7, 64).await;

    // 300 ranges at once on a blob nobody has fetched: they all join one fill.
    fault.set_delay(&filling.digest, Duration::from_millis(300));
    let miss = format!("{base}/{}", filling.digest);
    check_ranges(&miss, &filling, 300, 11, 300).await;
    assert_eq!(
        fault.count("GET", &format!("/v2/e2e/ranges/blobs/{}", filling.digest)),
        1
    );
    assert!(!pullgate.log().contains("panicked"));
}
