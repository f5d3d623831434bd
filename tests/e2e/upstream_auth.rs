//! Upstreams that want credentials: Distribution with htpasswd (Basic) and our fault
//! upstream with a bearer-token endpoint. The mirror's own upstream credentials come from
//! a dockerconfigjson file.

use std::path::PathBuf;

use crate::support::distribution::{Auth, Distribution};
use crate::support::fault::{FaultAuth, FaultUpstream};
use crate::support::http::get;
use crate::support::images::{self, Flavor, Pusher};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::secret::dockerconfigjson;
use crate::support::skopeo;

/// A dockerconfigjson file holding one entry, as a mounted upstream secret would.
fn dockerconfig(dir: &std::path::Path, host: &str, user: &str, password: &str) -> PathBuf {
    let path = dir.join("config.json");
    std::fs::write(&path, dockerconfigjson(&[(host, user, password)])).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_upstream_with_credentials_from_a_dockerconfigjson() {
    let upstream = Distribution::start(Auth::Basic {
        user: "mirror".into(),
        password: "s3cret-pass".into(),
    });
    let img = images::image("basic", &[MIB, 1024], Flavor::Docker, "amd64");
    Pusher::new(&upstream.url(), upstream.auth.clone())
        .image("e2e/basic", "v1", &img)
        .await;
    let secrets = tempfile::tempdir().unwrap();

    let mut opts = Options::new(&upstream.url());
    opts.credentials = Some(dockerconfig(
        secrets.path(),
        &upstream.host(),
        "mirror",
        "s3cret-pass",
    ));
    let pullgate = Pullgate::start(opts);
    let work = tempfile::tempdir().unwrap();
    skopeo::pull(
        format!("{}/e2e/basic:v1", pullgate.host()),
        work.path().join("a"),
        false,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pullgate.log()));
    assert_eq!(
        skopeo::manifest_digest(&work.path().join("a")),
        img.manifest.digest
    );
    assert!(!pullgate.log().contains("s3cret-pass"));

    // Without credentials, or with wrong ones, the upstream refuses the mirror: 403 DENIED,
    // and no challenge (the client cannot fix the mirror's credentials).
    let none = Pullgate::start(Options::new(&upstream.url()));
    let wrong_dir = tempfile::tempdir().unwrap();
    let mut opts = Options::new(&upstream.url());
    opts.credentials = Some(dockerconfig(
        wrong_dir.path(),
        &upstream.host(),
        "mirror",
        "nope",
    ));
    let wrong = Pullgate::start(opts);
    for p in [&none, &wrong] {
        let r = get(&format!("{}/v2/e2e/basic/manifests/v1", p.url())).await;
        assert_eq!(r.status, 403, "{}", p.log());
        assert_eq!(r.error_code(), "DENIED");
        assert_eq!(r.header("www-authenticate"), None);
        assert!(!r.bytes().windows(4).any(|w| w == b"nope"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_upstream_with_a_cached_token() {
    let fault = FaultUpstream::start(FaultAuth::Token {
        user: "robot".into(),
        password: "t0ken-pass".into(),
    });
    let img = images::image("token", &[MIB, 2048, 1024], Flavor::Oci, "amd64");
    fault.add_image("e2e/token", "v1", &img);
    let secrets = tempfile::tempdir().unwrap();
    let mut opts = Options::new(&fault.url());
    opts.credentials = Some(dockerconfig(
        secrets.path(),
        &fault.host(),
        "robot",
        "t0ken-pass",
    ));
    let pullgate = Pullgate::start(opts);

    let work = tempfile::tempdir().unwrap();
    skopeo::pull(
        format!("{}/e2e/token:v1", pullgate.host()),
        work.path().join("t"),
        false,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pullgate.log()));
    assert_eq!(
        skopeo::manifest_digest(&work.path().join("t")),
        img.manifest.digest
    );
    // One token for the repository's pull scope, reused for the manifest and every blob.
    assert_eq!(fault.token_requests(), 1, "{:#?}", fault.requests());
    assert!(!pullgate.log().contains("t0ken-pass"));
    assert!(!pullgate.log().contains("tok-"));

    // A repository not seen before, its blobs asked for all at once (no manifest first to
    // fetch the token): the upstream's challenge is known by now, so every fill asks for
    // the new scope's token before its first request, and they share one handshake.
    let many = images::image("token-many", &[4096; 8], Flavor::Oci, "amd64");
    fault.add_image("e2e/token-many", "v1", &many);
    // A slow token server: every fill wants the token before the first one arrives.
    fault.set_delay("token", std::time::Duration::from_millis(300));
    let gets = many.layers.iter().map(|l| {
        let url = format!("{}/v2/e2e/token-many/blobs/{}", pullgate.url(), l.digest);
        async move { (get(&url).await, l.digest.clone()) }
    });
    for (r, digest) in futures_util::future::join_all(gets).await {
        assert_eq!(r.status, 200, "{}", pullgate.log());
        assert_eq!(images::sha256(r.bytes()), digest);
    }
    assert_eq!(fault.token_requests(), 2, "{:#?}", fault.requests());

    // Wrong credentials: the token endpoint refuses, the client sees DENIED.
    let other = tempfile::tempdir().unwrap();
    let mut opts = Options::new(&fault.url());
    opts.credentials = Some(dockerconfig(other.path(), &fault.host(), "robot", "wrong"));
    let wrong = Pullgate::start(opts);
    let r = get(&format!("{}/v2/e2e/token/manifests/v1", wrong.url())).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "DENIED");
}

const MIB: usize = 1024 * 1024;
