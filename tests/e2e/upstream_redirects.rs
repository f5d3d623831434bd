//! Redirects an upstream sends, as an attacker in the upstream's place would: manifests and
//! tags lists pointed at another origin (a read of whatever is there, handed to the client),
//! and blobs pointed into the mirror's own network.
//!
//! Everything runs on 127.0.0.1, so "another origin" is another port, and an upstream that
//! stands in for a public one is told so with `allow_private_redirects = false` (by default
//! an upstream that is itself on loopback may redirect there).

use crate::support::fault::{Fault, FaultAuth, FaultUpstream};
use crate::support::http::get;
use crate::support::images::{self, sha256, Flavor};
use crate::support::pullgate::{Options, Pullgate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_and_tags_redirects_to_another_origin_are_refused() {
    let upstream = FaultUpstream::start(FaultAuth::None);
    let img = images::image("redir", &[4096], Flavor::Oci, "amd64");
    upstream.add_image("e2e/redir", "v1", &img);
    // What sits at the other origin: a service the client must not read through us.
    let internal = FaultUpstream::start(FaultAuth::None);
    let secret = images::image("secret", &[1024], Flavor::Oci, "amd64");
    internal.add_image("e2e/redir", "internal-secret", &secret);
    internal.add_image("e2e/redir", "v1", &secret);
    upstream.set_fault("list", Fault::RedirectToPort(internal.port));
    upstream.set_fault("v1", Fault::RedirectToPort(internal.port));
    let pullgate = Pullgate::start(Options::new(&upstream.url()));

    let r = get(&format!("{}/v2/e2e/redir/tags/list", pullgate.url())).await;
    assert_eq!(r.status, 502, "{}", pullgate.log());
    assert!(
        !r.bytes().windows(15).any(|w| w == b"internal-secret"),
        "the redirect target's body reached the client"
    );
    let r = get(&format!("{}/v2/e2e/redir/manifests/v1", pullgate.url())).await;
    assert_eq!(r.status, 502, "{}", pullgate.log());
    assert!(
        internal.requests().is_empty(),
        "the other origin was asked: {:?}",
        internal.requests()
    );

    // Content by digest, not redirected, still comes through.
    let by_digest = format!(
        "{}/v2/e2e/redir/manifests/{}",
        pullgate.url(),
        img.manifest.digest
    );
    let r = get(&by_digest).await;
    assert_eq!(r.status, 200, "{}", pullgate.log());
    assert_eq!(sha256(r.bytes()), img.manifest.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirects_into_private_addresses_are_refused_unless_allowed() {
    let upstream = FaultUpstream::start(FaultAuth::None);
    let img = images::image("cdn", &[8192], Flavor::Oci, "amd64");
    upstream.add_image("e2e/cdn", "v1", &img);
    // A "CDN" on loopback holding the same blobs.
    let cdn = FaultUpstream::start(FaultAuth::None);
    cdn.add_image("e2e/cdn", "v1", &img);
    let layer = &img.layers[0].digest;
    upstream.set_fault(layer, Fault::RedirectToPort(cdn.port));
    let blob_url = |p: &Pullgate| format!("{}/v2/e2e/cdn/blobs/{layer}", p.url());

    let mut opts = Options::new(&upstream.url());
    opts.extra = "allow_private_redirects = false\n".into();
    let strict = Pullgate::start(opts);
    let r = get(&blob_url(&strict)).await;
    assert_eq!(r.status, 502, "{}", strict.log());
    assert!(cdn.requests().is_empty(), "{:?}", cdn.requests());
    // The upstream's own origin is not affected.
    let r = get(&format!("{}/v2/e2e/cdn/manifests/v1", strict.url())).await;
    assert_eq!(r.status, 200, "{}", strict.log());

    // By default an upstream on loopback may send blobs to loopback: it is inside already.
    let default = Pullgate::start(Options::new(&upstream.url()));
    let r = get(&blob_url(&default)).await;
    assert_eq!(r.status, 200, "{}", default.log());
    assert!(r.body.is_ok(), "{:?}\n{}", r.body, default.log());
    assert_eq!(&sha256(r.bytes()), layer);
    assert_eq!(cdn.count("GET", &format!("/v2/e2e/cdn/blobs/{layer}")), 1);
}
