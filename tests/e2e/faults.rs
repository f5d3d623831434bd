//! A misbehaving upstream (our fault upstream): bad bytes are never committed and never
//! reach a client as a clean body; failures are reported with the right status.

use std::time::Duration;

use futures_util::StreamExt;

use crate::support::eventually;
use crate::support::fault::{Fault, FaultAuth, FaultUpstream};
use crate::support::http::{self, get};
use crate::support::images::{self, sha256, Blob, Flavor};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::skopeo;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_truncated_blobs_are_never_committed_nor_served_clean() {
    let fault = FaultUpstream::start(FaultAuth::None);
    let img = images::image("faulty", &[2 * MIB, MIB], Flavor::Oci, "amd64");
    fault.add_image("e2e/faulty", "v1", &img);
    let pullgate = Pullgate::start(Options::new(&fault.url()));
    let corrupt = &img.layers[0];
    let truncated = &img.layers[1];
    fault.set_fault(&corrupt.digest, Fault::Corrupt);
    fault.set_fault(&truncated.digest, Fault::Truncate);

    for blob in [corrupt, truncated] {
        let url = format!("{}/v2/e2e/faulty/blobs/{}", pullgate.url(), blob.digest);
        for attempt in 0..2 {
            let r = get(&url).await;
            // Either refused before the body, or the body fails: never a clean 200.
            if r.status == 200 {
                assert!(
                    r.body.is_err(),
                    "attempt {attempt}: {} served a clean body of bad content",
                    blob.digest
                );
            } else {
                assert_eq!(r.status, 502, "attempt {attempt}");
            }
            assert!(!pullgate.blob_path(&blob.digest).exists());
        }
    }
    assert!(eventually(Duration::from_secs(5), || pullgate.tmp_files() == 0));
    // Each attempt went upstream again: nothing bad was kept.
    assert_eq!(
        fault.count("GET", &format!("/v2/e2e/faulty/blobs/{}", corrupt.digest)),
        2
    );

    // A real client fails the pull rather than accepting a broken layer.
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("broken");
    let src = format!("{}/e2e/faulty:v1", pullgate.host());
    let result = skopeo::pull(src, dest, false).await;
    assert!(result.is_err(), "skopeo accepted a corrupt layer");

    // Once the upstream is healthy the same blobs are fetched, verified and cached.
    fault.clear_fault(&corrupt.digest);
    fault.clear_fault(&truncated.digest);
    for blob in [corrupt, truncated] {
        let r = get(&format!(
            "{}/v2/e2e/faulty/blobs/{}",
            pullgate.url(),
            blob.digest
        ))
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(sha256(r.bytes()), blob.digest);
        assert!(eventually(Duration::from_secs(5), || pullgate
            .blob_path(&blob.digest)
            .exists()));
    }
    assert!(!pullgate.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_that_does_not_match_its_digest_is_refused() {
    let fault = FaultUpstream::start(FaultAuth::None);
    let img = images::image("lying", &[1024], Flavor::Oci, "amd64");
    // The upstream serves the manifest under a digest it does not hash to.
    let wrong = sha256(b"not this manifest");
    fault.add_manifest("e2e/lying", &wrong, &img.manifest);
    fault.add_manifest("e2e/lying", "v1", &img.manifest);
    fault.add_manifest("e2e/lying", &img.manifest.digest, &img.manifest);
    // And one whose bytes arrive corrupted (one byte flipped) when fetched by digest.
    let img2 = images::image("lying2", &[1024], Flavor::Oci, "amd64");
    fault.add_image("e2e/lying", "v2", &img2);
    fault.set_fault(&img2.manifest.digest, Fault::Corrupt);
    let pullgate = Pullgate::start(Options::new(&fault.url()));

    let r = get(&format!(
        "{}/v2/e2e/lying/manifests/{wrong}",
        pullgate.url()
    ))
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "UNKNOWN");
    assert!(!pullgate.blob_path(&wrong).exists());

    // By tag: the digest the upstream names for the tag is the claim the bytes must meet.
    let r = get(&format!("{}/v2/e2e/lying/manifests/v2", pullgate.url())).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "UNKNOWN");
    assert!(!pullgate.blob_path(&img2.manifest.digest).exists());

    let r = get(&format!("{}/v2/e2e/lying/manifests/v1", pullgate.url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes().as_ref(), &img.manifest.bytes[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_map_to_oci_errors() {
    let fault = FaultUpstream::start(FaultAuth::None);
    let img = images::image("errs", &[1024, 2048], Flavor::Oci, "amd64");
    fault.add_image("e2e/errs", "v1", &img);
    fault.set_fault(&img.layers[0].digest, Fault::Status(503));
    fault.set_fault(&img.layers[1].digest, Fault::Status(429));
    let pullgate = Pullgate::start(Options::new(&fault.url()));
    let base = format!("{}/v2/e2e/errs", pullgate.url());

    let r = get(&format!("{base}/blobs/{}", img.layers[0].digest)).await;
    assert!(matches!(r.status, 502 | 503), "{}", r.status);
    assert_eq!(r.error_code(), "UNAVAILABLE");
    let unknown = sha256(b"unknown blob");
    let r = get(&format!("{base}/blobs/{unknown}")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
    // Last of these: for its Retry-After, pullgate leaves the upstream alone.
    let r = get(&format!("{base}/blobs/{}", img.layers[1].digest)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    assert_eq!(r.header("retry-after"), Some("1"));

    // An upstream that cannot be reached at all (once the Retry-After is over).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    drop(fault);
    let r = get(&format!("{base}/manifests/v1")).await;
    assert!(matches!(r.status, 502..=504), "{}", r.status);
    assert_eq!(r.error_code(), "UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_stream_a_miss_while_it_downloads() {
    let fault = FaultUpstream::start(FaultAuth::None);
    let blob = Blob::new("application/octet-stream", images::noise("stall", 4 * MIB));
    fault.add_blob(&blob);
    // The upstream sends half, then stalls: a client can only see bytes now if pullgate
    // streams them as they arrive.
    fault.set_fault(&blob.digest, Fault::Stall);
    let mut opts = Options::new(&fault.url());
    opts.read_timeout = "3s".into();
    let pullgate = Pullgate::start(opts);
    let url = format!("{}/v2/e2e/stall/blobs/{}", pullgate.url(), blob.digest);

    let resp = http::client().get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let mut got = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => got.extend_from_slice(&c),
                Err(_) => return false,
            }
        }
        true
    })
    .await
    .expect("the stalled fill must end in an error, not hang");
    assert!(!outcome, "the body ended cleanly");
    assert!(
        got.len() >= MIB,
        "only {} bytes streamed before the stall",
        got.len()
    );
    assert_eq!(&got[..], &blob.bytes[..got.len()]);
    assert!(!pullgate.blob_path(&blob.digest).exists());
}
