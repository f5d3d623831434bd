//! Every way an upstream can fail, against our fault upstream. For each: the clients get a
//! clear error (or, for a cached tag, the stale copy), nothing wrong is committed, every
//! client waiting on the same fill fails together (one fill, not one per client), and the
//! first request after the upstream recovers succeeds.

use std::time::Duration;

use crate::support::fault::{Fault, FaultAuth, FaultUpstream};
use crate::support::http::{self, get, Reply};
use crate::support::images::{self, sha256, Blob, Flavor};
use crate::support::pullgate::{Options, Pullgate};

const MIB: usize = 1024 * 1024;

/// Clients sent at once at a failing blob.
const WAITERS: usize = 6;

/// What the clients of a failed fill may see.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// An OCI error before any byte: this status (or one of a range) and code.
    Error(u16, u16, &'static str),
    /// The headers went out before the upstream failed (pullgate streams as it
    /// downloads): a 200 whose body fails, a connection closed before the headers were
    /// written, or an error if the failure came before the headers were due.
    BrokenBody,
}

struct Case {
    name: &'static str,
    fault: Fault,
    expect: Expect,
    /// Upstream GETs the failed fill makes: retries happen only before the first byte,
    /// and only for transient failures.
    upstream_gets: usize,
}

/// A GET whose answer may never come: `None` when pullgate closed the connection before
/// the response headers were out (a fill that failed that early, for a streaming client).
async fn try_get(url: &str) -> Option<Reply> {
    let resp = http::client().get(url).send().await.ok()?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(|e| format!("{e:?}"));
    Some(Reply {
        status,
        headers,
        body,
    })
}

fn check(case: &Case, r: Option<&Reply>) {
    let Some(r) = r else {
        assert!(
            matches!(case.expect, Expect::BrokenBody),
            "{}: the connection closed without an error answer",
            case.name
        );
        return;
    };
    match case.expect {
        Expect::Error(lo, hi, code) => {
            assert!(
                (lo..=hi).contains(&r.status),
                "{}: status {} not in {lo}..={hi}",
                case.name,
                r.status
            );
            assert_eq!(r.error_code(), code, "{}", case.name);
        }
        Expect::BrokenBody => {
            if r.status == 200 {
                assert!(r.body.is_err(), "{}: a clean 200 of bad content", case.name);
            } else {
                assert_eq!(r.status, 502, "{}", case.name);
                assert_eq!(r.error_code(), "UNKNOWN", "{}", case.name);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_blob_fault_fails_its_waiters_together_commits_nothing_and_recovers() {
    let cases = [
        Case {
            name: "truncated body",
            fault: Fault::Truncate,
            expect: Expect::BrokenBody,
            upstream_gets: 1,
        },
        Case {
            name: "wrong bytes",
            fault: Fault::Corrupt,
            expect: Expect::BrokenBody,
            upstream_gets: 1,
        },
        Case {
            name: "stall mid-body",
            fault: Fault::Stall,
            expect: Expect::BrokenBody,
            upstream_gets: 1,
        },
        Case {
            name: "Content-Length one short (clean HTTP, wrong digest)",
            fault: Fault::ShortLength,
            expect: Expect::BrokenBody,
            upstream_gets: 1,
        },
        Case {
            name: "Content-Length 1000 long",
            fault: Fault::LongLength,
            expect: Expect::BrokenBody,
            upstream_gets: 1,
        },
        Case {
            name: "connection reset before the answer",
            fault: Fault::Reset,
            expect: Expect::Error(502, 503, "UNAVAILABLE"),
            upstream_gets: 3,
        },
        Case {
            name: "500",
            fault: Fault::Status(500),
            expect: Expect::Error(502, 503, "UNAVAILABLE"),
            upstream_gets: 1,
        },
        Case {
            name: "502",
            fault: Fault::Status(502),
            expect: Expect::Error(502, 503, "UNAVAILABLE"),
            upstream_gets: 3,
        },
        Case {
            name: "503",
            fault: Fault::Status(503),
            expect: Expect::Error(502, 503, "UNAVAILABLE"),
            upstream_gets: 3,
        },
        Case {
            name: "redirect loop",
            fault: Fault::RedirectLoop,
            expect: Expect::Error(502, 502, "UNKNOWN"),
            // The first URL and five hops, once: a loop is not transient.
            upstream_gets: 6,
        },
        // Last: it makes pullgate leave the upstream alone for the Retry-After.
        Case {
            name: "429 with Retry-After",
            fault: Fault::Status(429),
            expect: Expect::Error(429, 429, "TOOMANYREQUESTS"),
            upstream_gets: 1,
        },
    ];

    let fault = FaultUpstream::start(FaultAuth::None);
    let blobs: Vec<Blob> = cases
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let b = Blob::new(
                "application/octet-stream",
                images::noise(&format!("fault-{i}"), MIB + i),
            );
            fault.add_blob(&b);
            b
        })
        .collect();
    let mut opts = Options::new(&fault.url());
    // The stall case waits out this idle timeout.
    opts.read_timeout = "2s".into();
    let pullgate = Pullgate::start(opts);
    let base = format!("{}/v2/e2e/faults", pullgate.url());

    for (case, blob) in cases.iter().zip(&blobs) {
        fault.set_fault(&blob.digest, case.fault);
        // The upstream answers late, so every client joins the one fill before it fails.
        fault.set_delay(&blob.digest, Duration::from_millis(400));
        let url = format!("{base}/blobs/{}", blob.digest);
        let replies = futures_util::future::join_all((0..WAITERS).map(|_| try_get(&url))).await;
        for r in &replies {
            check(case, r.as_ref());
        }
        http::fills_settled(&pullgate.url()).await;
        let path = format!("/v2/e2e/faults/blobs/{}", blob.digest);
        assert_eq!(
            fault.count("GET", &path),
            case.upstream_gets,
            "{}: {WAITERS} clients, one fill",
            case.name
        );
        assert!(!pullgate.blob_path(&blob.digest).exists(), "{}", case.name);
        assert_eq!(pullgate.tmp_files(), 0, "{}", case.name);
    }

    // While the 429's Retry-After lasts, pullgate does not ask the upstream at all, and
    // says how long is left.
    let last = blobs.last().unwrap();
    let r = get(&format!("{base}/blobs/{}", blobs[0].digest)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        fault.count("GET", &format!("/v2/e2e/faults/blobs/{}", blobs[0].digest)),
        1
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The upstream recovers: the next request for each blob succeeds and commits it.
    for blob in &blobs {
        fault.clear_fault(&blob.digest);
    }
    for (case, blob) in cases.iter().zip(&blobs) {
        let r = get(&format!("{base}/blobs/{}", blob.digest)).await;
        assert_eq!(r.status, 200, "{} after recovery", case.name);
        assert_eq!(sha256(r.bytes()), blob.digest, "{}", case.name);
    }
    http::fills_settled(&pullgate.url()).await;
    for blob in &blobs {
        assert!(pullgate.blob_path(&blob.digest).exists());
    }
    assert!(pullgate.blob_path(&last.digest).exists());
    let log = pullgate.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_faults_serve_stale_tags_and_clear_errors() {
    let fault = FaultUpstream::start(FaultAuth::None);
    let cached = images::image("m-cached", &[1024], Flavor::Oci, "amd64");
    fault.add_image("e2e/m", "cached", &cached);
    let mut opts = Options::new(&fault.url());
    // Every request for a tag asks the upstream again.
    opts.tag_ttl = "0s".into();
    opts.read_timeout = "2s".into();
    let pullgate = Pullgate::start(opts);
    let base = format!("{}/v2/e2e/m/manifests", pullgate.url());
    let r = get(&format!("{base}/cached")).await;
    assert_eq!(r.status, 200);

    let stale_faults = [
        ("500", Fault::Status(500)),
        ("503", Fault::Status(503)),
        ("reset", Fault::Reset),
        ("stall", Fault::Stall),
    ];
    for (i, (name, f)) in stale_faults.iter().enumerate() {
        fault.set_fault("cached", *f);
        // A tag the mirror holds: the stale copy, for every waiter.
        let url = format!("{base}/cached");
        let replies = futures_util::future::join_all((0..WAITERS).map(|_| get(&url))).await;
        for r in &replies {
            assert_eq!(r.status, 200, "{name}");
            assert_eq!(r.bytes().as_ref(), &cached.manifest.bytes[..], "{name}");
        }
        // A tag it never saw: a clear error, nothing stored.
        let fresh = images::image(&format!("m-fresh-{i}"), &[1024], Flavor::Oci, "amd64");
        let tag = format!("fresh{i}");
        fault.add_image("e2e/m", &tag, &fresh);
        fault.set_fault(&tag, *f);
        fault.set_fault(&fresh.manifest.digest, *f);
        let r = get(&format!("{base}/{tag}")).await;
        assert!(matches!(r.status, 502..=504), "{name}: {}", r.status);
        assert_eq!(r.error_code(), "UNAVAILABLE", "{name}");
        assert!(!pullgate.blob_path(&fresh.manifest.digest).exists());
        // It recovers.
        fault.clear_fault(&tag);
        fault.clear_fault(&fresh.manifest.digest);
        let r = get(&format!("{base}/{tag}")).await;
        assert_eq!(r.status, 200, "{name} after recovery");
        assert_eq!(r.bytes().as_ref(), &fresh.manifest.bytes[..]);
        fault.clear_fault("cached");
    }
    // A stall hits only bodies: the cached tag's HEAD revalidation still succeeds, so three
    // faults served it stale, to every waiter.
    assert_eq!(
        http::metric(&pullgate.url(), "pullgate_stale_served_total").await,
        3.0 * WAITERS as f64
    );

    // A manifest over the 4 MiB limit: refused, never stored, the client told why.
    let huge = Blob::new(
        "application/vnd.oci.image.manifest.v1+json",
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[],"annotations":{{"pad":"{}"}}}}"#,
            sha256(b"{}"),
            "x".repeat(5 * MIB)
        )
        .into_bytes(),
    );
    fault.add_manifest("e2e/m", "huge", &huge);
    fault.add_manifest("e2e/m", &huge.digest, &huge);
    let r = get(&format!("{base}/huge")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "UNKNOWN");
    let r = get(&format!("{base}/{}", huge.digest)).await;
    assert_eq!(r.status, 502);
    assert!(!pullgate.blob_path(&huge.digest).exists());

    // 429: the stale tag, and for the next second no upstream request at all.
    fault.set_fault("cached", Fault::Status(429));
    let r = get(&format!("{base}/cached")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes().as_ref(), &cached.manifest.bytes[..]);
    let before = fault.requests().len();
    fault.clear_fault("cached");
    let r = get(&format!("{base}/cached")).await;
    assert_eq!(r.status, 200);
    let r = get(&format!("{base}/never-seen")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        fault.requests().len(),
        before,
        "asked a throttling upstream"
    );
    // Once it is over, tags are revalidated upstream again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get(&format!("{base}/cached")).await;
    assert_eq!(r.status, 200);
    assert!(fault.requests().len() > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_endpoint_gives_a_clear_error_and_recovers() {
    let fault = FaultUpstream::start(FaultAuth::Token {
        user: "mirror".into(),
        password: "token-pass".into(),
    });
    let img = images::image("tokfail", &[64 * 1024], Flavor::Oci, "amd64");
    fault.add_image("e2e/tok", "v1", &img);
    let secrets = tempfile::tempdir().unwrap();
    let creds = secrets.path().join("config.json");
    std::fs::write(
        &creds,
        crate::support::secret::dockerconfigjson(&[(&fault.host(), "mirror", "token-pass")]),
    )
    .unwrap();
    let mut opts = Options::new(&fault.url());
    opts.credentials = Some(creds);
    opts.tag_ttl = "0s".into();
    let pullgate = Pullgate::start(opts);
    let base = format!("{}/v2/e2e/tok", pullgate.url());
    let r = get(&format!("{base}/manifests/v1")).await;
    assert_eq!(r.status, 200);

    // Tokens are per scope: another repository needs a new one, and the endpoint fails.
    fault.set_token_status(Some(500));
    fault.add_image("e2e/tok2", "v1", &img);
    let layer = &img.layers[0].digest;
    let url = format!("{}/v2/e2e/tok2/blobs/{layer}", pullgate.url());
    let replies = futures_util::future::join_all((0..WAITERS).map(|_| get(&url))).await;
    for r in &replies {
        assert!(matches!(r.status, 502..=503), "{}", r.status);
        assert_eq!(r.error_code(), "UNAVAILABLE");
        // The client learns nothing about the mirror's own credentials.
        assert!(!String::from_utf8_lossy(r.bytes()).contains("token-pass"));
    }
    assert!(!pullgate.blob_path(layer).exists());

    fault.set_token_status(None);
    let r = get(&format!("{}/v2/e2e/tok2/blobs/{layer}", pullgate.url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(sha256(r.bytes()), *layer);
    assert!(!pullgate.log().contains("token-pass"));
}
