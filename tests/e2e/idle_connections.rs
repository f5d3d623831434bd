//! `server.idle_timeout`: connections that hold a slot without using it are closed — an
//! HTTP/2 connection between requests (hyper's `header_read_timeout` only bounds HTTP/1),
//! and a client that stops reading a response (its write would wait on a full socket
//! forever, the blob pinned) — while a request waiting on a slow upstream, or a client
//! reading slowly but steadily, is left alone.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::distribution::{Auth, Distribution};
use crate::support::fault::{FaultAuth, FaultUpstream};
use crate::support::http::get;
use crate::support::images::{self, sha256, Blob, Pusher};
use crate::support::pullgate::{Options, Pullgate};

const MIB: usize = 1024 * 1024;

fn about_one_second(what: &str, t: Duration) {
    assert!(
        t >= Duration::from_millis(900) && t < Duration::from_secs(4),
        "{what}: closed after {t:?}, want about 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_and_http1_connections_are_closed_after_the_idle_timeout() {
    let registry = Distribution::start(Auth::Anonymous);
    let mut opts = Options::new(&registry.url());
    // The header timeout is long: only idle_timeout can close these in time.
    opts.server_extra = "header_read_timeout = \"30s\"\nidle_timeout = \"1s\"".into();
    let pullgate = Pullgate::start(opts);

    // HTTP/2 with prior knowledge (h2c): one request, then nothing.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", pullgate.port))
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("{}/v2/", pullgate.url()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    resp.into_body().collect().await.unwrap();
    let answered = Instant::now();
    // Closed, not shut down with GOAWAY: the client sees a broken pipe, which is fine
    // with no request in flight.
    let _ = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("pullgate left an idle HTTP/2 connection open");
    about_one_second("idle HTTP/2", answered.elapsed());

    // HTTP/1.1 keep-alive: one request, then nothing.
    let port = pullgate.port;
    let idle = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut answered = None;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    answered.get_or_insert_with(Instant::now);
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("still open: {e}"),
            }
        }
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
        answered.unwrap().elapsed()
    })
    .await
    .unwrap();
    about_one_second("idle HTTP/1.1 keep-alive", idle);

    let r = get(&format!("{}/v2/", pullgate.url())).await;
    assert_eq!(r.status, 200);
}

/// Send a GET for `path`, read the response head and a little of the body.
fn start_reading(port: u16, path: &str) -> (TcpStream, usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the response head");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let head = text.find("\r\n\r\n").unwrap() + 4;
    (s, got.len() - head)
}

/// Read until the connection ends; the bytes read.
fn read_to_end(s: &mut TcpStream) -> usize {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return total,
            Err(e) => panic!("after {total} bytes: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_a_slow_steady_one_is_not() {
    // Far more than loopback's socket buffers hold, so pullgate's writes must wait.
    const SIZE: usize = 48 * MIB;
    let registry = Distribution::start(Auth::Anonymous);
    let blob = Blob::new(
        "application/octet-stream",
        images::noise("stops-reading", SIZE),
    );
    Pusher::new(&registry.url(), None)
        .blob("e2e/stall", &blob)
        .await;
    let mut opts = Options::new(&registry.url());
    opts.server_extra = "idle_timeout = \"1s\"".into();
    let pullgate = Pullgate::start(opts);
    let path = format!("/v2/e2e/stall/blobs/{}", blob.digest);
    let r = get(&format!("{}{path}", pullgate.url())).await;
    assert_eq!(sha256(r.bytes()), blob.digest);

    let port = pullgate.port;
    let p = path.clone();
    let (stalled, steady) = tokio::task::spawn_blocking(move || {
        // Reads the head, then nothing for 3 s: pullgate gives up on it after about 1 s,
        // so what is left to read is what the socket buffers held, not the blob.
        let (mut s, first) = start_reading(port, &p);
        std::thread::sleep(Duration::from_secs(3));
        let stalled = first + read_to_end(&mut s);

        // Reads 2 MiB every 300 ms: slow, but never a second without progress.
        let (mut s, mut steady) = start_reading(port, &p);
        let mut buf = vec![0u8; 2 * MIB];
        while steady < SIZE {
            let mut chunk = 0;
            while chunk < buf.len() && steady + chunk < SIZE {
                let n = s.read(&mut buf[chunk..]).unwrap();
                assert!(n > 0, "cut off after {} bytes", steady + chunk);
                chunk += n;
            }
            steady += chunk;
            std::thread::sleep(Duration::from_millis(300));
        }
        (stalled, steady)
    })
    .await
    .unwrap();
    assert!(
        stalled < SIZE,
        "a client that read nothing for 3 s still got all {SIZE} bytes"
    );
    assert_eq!(steady, SIZE);
    assert!(
        pullgate
            .log()
            .contains("the client has read nothing within the idle timeout"),
        "{}",
        pullgate.log()
    );
    eprintln!("stalled client: {stalled} of {SIZE} bytes before pullgate closed it");

    // Nothing stays pinned or broken: the blob is served whole again.
    let r = get(&format!("{}{path}", pullgate.url())).await;
    assert_eq!(sha256(r.bytes()), blob.digest);
    assert!(!pullgate.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_on_a_slow_upstream_is_not_idle() {
    let fault = FaultUpstream::start(FaultAuth::None);
    let blob = Blob::new(
        "application/octet-stream",
        images::noise("slow-upstream", 512 * 1024),
    );
    fault.add_blob(&blob);
    fault.set_delay(&blob.digest, Duration::from_secs(3));
    let mut opts = Options::new(&fault.url());
    opts.server_extra = "header_read_timeout = \"1s\"\nidle_timeout = \"1s\"".into();
    let pullgate = Pullgate::start(opts);

    let started = Instant::now();
    let r = get(&format!(
        "{}/v2/e2e/slow/blobs/{}",
        pullgate.url(),
        blob.digest
    ))
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(sha256(r.bytes()), blob.digest);
    assert!(started.elapsed() >= Duration::from_secs(3));
}
