//! Client authentication from mounted dockerconfigjson secrets: fail closed, scopes from the
//! secret's keys, rules, rotation without restart, the token flow, throttling, audit, and
//! no secret in any log.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::support::distribution::{Auth, Distribution};
use crate::support::http::{self, basic, get, metric, request, request_from};
use crate::support::images::{self, sha256, Flavor, Image, Pusher};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::secret::{dockerconfigjson, SecretVolume};
use crate::support::skopeo;
use crate::support::{eventually, free_port};

const MIB: usize = 1024 * 1024;

/// An upstream holding `e2e/app:v1` and `e2e/other:v1`.
async fn upstream_with_images() -> (Distribution, Image, Image) {
    let upstream = Distribution::start(Auth::Anonymous);
    let app = images::image("auth-app", &[2 * MIB, 1024], Flavor::Oci, "amd64");
    let other = images::image("auth-other", &[1024], Flavor::Oci, "amd64");
    let push = Pusher::new(&upstream.url(), None);
    push.image("e2e/app", "v1", &app).await;
    push.image("e2e/other", "v1", &other).await;
    (upstream, app, other)
}

fn auth_opts(upstream: &Distribution, secrets: &Path, extra: &str) -> Options {
    let mut opts = Options::new(&upstream.url());
    opts.extra = format!(
        "[auth]\nclient_secrets = [\"{}\"]\n{extra}\n",
        secrets.display()
    );
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_closed_and_grants_by_secret_key() {
    let (upstream, app, _) = upstream_with_images().await;
    let port = free_port();
    let secrets = tempfile::tempdir().unwrap();
    SecretVolume::new(
        &secrets.path().join("clients"),
        dockerconfigjson(&[
            // The mirror's own host: every upstream.
            (&format!("127.0.0.1:{port}"), "admin", "admin-pw-1"),
            // The upstream's host: that upstream.
            (&upstream.host(), "reader", "reader-pw-2"),
            // Another registry entirely: nothing here.
            ("ghcr.io", "stranger", "stranger-pw-3"),
        ])
        .as_bytes(),
    );
    let mut opts = auth_opts(&upstream, &secrets.path().join("clients"), "");
    opts.port = Some(port);
    let pullgate = Pullgate::start(opts);
    let base = pullgate.url();
    let manifest = format!("{base}/v2/e2e/app/manifests/v1");

    // No credentials, and podman's empty Basic, are both "no credentials": 401 + challenge.
    for headers in [vec![], vec![("authorization", "Basic Og==")]] {
        for url in [format!("{base}/v2/"), manifest.clone()] {
            let r = request("GET", &url, &headers).await;
            assert_eq!(r.status, 401, "{url} {headers:?}");
            assert_eq!(r.error_code(), "UNAUTHORIZED");
            let challenge = r.header("www-authenticate").expect("a challenge");
            assert!(challenge.starts_with("Basic realm="), "{challenge}");
        }
    }
    let wrong = basic("admin", "not-it");
    let r = request("GET", &manifest, &[("authorization", &wrong)]).await;
    assert_eq!(r.status, 401);

    for (user, pw) in [("admin", "admin-pw-1"), ("reader", "reader-pw-2")] {
        let auth = basic(user, pw);
        let r = request("GET", &format!("{base}/v2/"), &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{user}");
        let r = request("GET", &manifest, &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{user}");
    }
    let stranger = basic("stranger", "stranger-pw-3");
    let r = request("GET", &manifest, &[("authorization", &stranger)]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "DENIED");

    // A real client: skopeo with and without --src-creds.
    let work = tempfile::tempdir().unwrap();
    let src = format!("{}/e2e/app:v1", pullgate.host());
    assert!(skopeo::pull(src.clone(), work.path().join("anon"), false)
        .await
        .is_err());
    skopeo::pull_with(
        src,
        work.path().join("reader"),
        false,
        Some(("reader".into(), "reader-pw-2".into())),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pullgate.log()));
    assert_eq!(
        skopeo::manifest_digest(&work.path().join("reader")),
        app.manifest.digest
    );

    // The client's credentials never reach the upstream.
    let log = upstream.access_log().join("\n");
    for secret in ["reader-pw-2", &basic("reader", "reader-pw-2")[6..]] {
        assert!(!log.contains(secret));
        assert!(
            !pullgate.log().contains(secret),
            "a secret is in pullgate's log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_path_scoped_keys_limit_repositories_and_blobs_do_not_leak() {
    let (upstream, app, other) = upstream_with_images().await;
    let secrets = tempfile::tempdir().unwrap();
    let up = upstream.host();
    SecretVolume::new(
        &secrets.path().join("c"),
        dockerconfigjson(&[
            (&up, "admin", "admin-pw"),
            (&format!("{up}/e2e/other"), "team", "team-pw"),
            (&format!("{up}/e2e"), "ci", "ci-pw"),
        ])
        .as_bytes(),
    );
    let rule = format!(
        "[[auth.rule]]\nuser = \"ci\"\nrepositories = [\"{up}/e2e/oth*\", \"{up}/e2e/other\"]\n"
    );
    let pullgate = Pullgate::start(auth_opts(&upstream, &secrets.path().join("c"), &rule));
    let base = pullgate.url();
    let get_as = |user: &'static str, pw: &'static str, path: String| {
        let url = format!("{base}{path}");
        async move { request("GET", &url, &[("authorization", &basic(user, pw))]).await }
    };

    // The admin pulls e2e/app: its layer is now cached.
    let layer = &app.layers[0].digest;
    let r = get_as("admin", "admin-pw", format!("/v2/e2e/app/blobs/{layer}")).await;
    assert_eq!(r.status, 200);
    assert!(eventually(Duration::from_secs(10), || pullgate
        .blob_path(layer)
        .exists()));

    // team's key is scoped to e2e/other: e2e/app is denied, e2e/other allowed.
    let r = get_as("team", "team-pw", "/v2/e2e/app/manifests/v1".into()).await;
    assert_eq!(r.status, 403);
    let r = get_as("team", "team-pw", "/v2/e2e/other/manifests/v1".into()).await;
    assert_eq!(r.status, 200);
    // ... and the cached private layer is not served under e2e/other, which lacks it.
    let r = get_as("team", "team-pw", format!("/v2/e2e/other/blobs/{layer}")).await;
    assert_eq!(r.status, 404, "a cached layer leaked across repositories");
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
    let own = &other.layers[0].digest;
    let r = get_as("team", "team-pw", format!("/v2/e2e/other/blobs/{own}")).await;
    assert_eq!(r.status, 200);

    // ci's key grants the whole upstream, but its rule only e2e/other.
    let r = get_as("ci", "ci-pw", "/v2/e2e/app/manifests/v1".into()).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "DENIED");
    let r = get_as("ci", "ci-pw", "/v2/e2e/other/manifests/v1".into()).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_rotation_is_followed_without_restart_or_dropped_pulls() {
    let upstream = Distribution::start(Auth::Anonymous);
    let big = images::image("rotate", &[48 * MIB], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("e2e/rotate", "v1", &big)
        .await;
    let secrets = tempfile::tempdir().unwrap();
    let dir = secrets.path().join("clients");
    let up = upstream.host();
    let mut volume = SecretVolume::new(
        &dir,
        dockerconfigjson(&[(&up, "alice", "alice-pw")]).as_bytes(),
    );
    // Until the reload, bob's attempts fail; do not let the throttle get in the way.
    let pullgate = Pullgate::start(auth_opts(&upstream, &dir, "max_failures = 1000"));
    let blob_url = format!(
        "{}/v2/e2e/rotate/blobs/{}",
        pullgate.url(),
        big.layers[0].digest
    );
    let manifest_url = format!("{}/v2/e2e/rotate/manifests/v1", pullgate.url());
    let alice = basic("alice", "alice-pw");
    let bob = basic("bob", "bob-pw");

    // A pull under way with alice's credentials...
    let resp = http::client()
        .get(&blob_url)
        .header("authorization", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let mut hasher = images::StreamHash::default();
    let first = body.next().await.unwrap().unwrap();
    hasher.update(&first);

    // ... while kubelet swaps the secret to bob only.
    volume.rotate(dockerconfigjson(&[(&up, "bob", "bob-pw")]).as_bytes());
    let rotated = Instant::now();
    let mut switched = false;
    let mut seen = (0, 0);
    while rotated.elapsed() < Duration::from_secs(5) {
        let a = request("GET", &manifest_url, &[("authorization", &alice)]).await;
        let b = request("GET", &manifest_url, &[("authorization", &bob)]).await;
        seen = (a.status, b.status);
        if a.status == 401 && b.status == 200 {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        switched,
        "rotation not followed within 5 s: alice {}, bob {}\n{}",
        seen.0,
        seen.1,
        pullgate.log()
    );

    // The pull that began before the rotation completes.
    while let Some(chunk) = body.next().await {
        hasher.update(&chunk.expect("in-flight pull was dropped"));
    }
    assert_eq!(hasher.finish(), big.layers[0].digest);

    // A broken rotation (not JSON, not UTF-8, partial, too big) keeps the last good set.
    let partial = dockerconfigjson(&[(&up, "mallory", "m-pw")]);
    let broken: [&[u8]; 4] = [
        b"{ this is not json",
        &[0xff, 0xfe, 0x00, 0x7b],
        &partial.as_bytes()[..partial.len() / 2],
        &vec![b' '; 2 * MIB],
    ];
    for bad in broken {
        volume.rotate(bad);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let b = request("GET", &manifest_url, &[("authorization", &bob)]).await;
        assert_eq!(b.status, 200);
    }
    assert!(
        metric(&pullgate.url(), "pullgate_secret_reload_failures_total").await >= 4.0
            && pullgate.log().matches("ERROR").count() >= 4
            && pullgate.log().contains("cannot reload credentials"),
        "a failed reload is not logged:\n{}",
        pullgate.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_scheme_issues_scoped_tokens() {
    let (upstream, app, _) = upstream_with_images().await;
    let secrets = tempfile::tempdir().unwrap();
    let up = upstream.host();
    SecretVolume::new(
        &secrets.path().join("c"),
        dockerconfigjson(&[(&format!("{up}/e2e/app"), "tok", "tok-pw")]).as_bytes(),
    );
    let pullgate = Pullgate::start(auth_opts(
        &upstream,
        &secrets.path().join("c"),
        "scheme = \"token\"\ntoken_ttl = \"2m\"\n",
    ));
    let base = pullgate.url();

    let r = get(&format!("{base}/v2/e2e/app/manifests/v1")).await;
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap().to_owned();
    assert!(
        challenge.starts_with(&format!(
            "Bearer realm=\"http://{}/token\"",
            pullgate.host()
        )),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!("scope=\"repository:{up}/e2e/app:pull\"")),
        "{challenge}"
    );

    // The token endpoint wants Basic credentials.
    let token_url = format!(
        "{base}/token?service=pullgate&scope=repository:{up}/e2e/app:pull&scope=repository:e2e/other:pull"
    );
    assert_eq!(get(&token_url).await.status, 401);
    let r = request(
        "GET",
        &token_url,
        &[("authorization", &basic("tok", "wrong"))],
    )
    .await;
    assert_eq!(r.status, 401);
    let r = request(
        "GET",
        &token_url,
        &[("authorization", &basic("tok", "tok-pw"))],
    )
    .await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(r.bytes()).unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    assert_eq!(v["expires_in"], 120);
    let bearer = format!("Bearer {token}");

    let r = request(
        "GET",
        &format!("{base}/v2/e2e/app/manifests/v1"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(&*app.manifest.digest)
    );
    // e2e/other was asked for but not granted: the token does not carry it.
    let r = request(
        "GET",
        &format!("{base}/v2/e2e/other/manifests/v1"),
        &[("authorization", &bearer)],
    )
    .await;
    assert!(matches!(r.status, 401 | 403), "{}", r.status);
    // A token cannot buy a fresh token: it would outlive a rotated-out password.
    let r = request("GET", &token_url, &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 401);
    // A tampered token is refused.
    let mut bad = token.clone();
    bad.pop();
    bad.push(if token.ends_with('A') { 'B' } else { 'A' });
    let r = request(
        "GET",
        &format!("{base}/v2/e2e/app/manifests/v1"),
        &[("authorization", &format!("Bearer {bad}"))],
    )
    .await;
    assert_eq!(r.status, 401);

    // skopeo follows the bearer flow on its own.
    let work = tempfile::tempdir().unwrap();
    skopeo::pull_with(
        format!("{}/e2e/app:v1", pullgate.host()),
        work.path().join("t"),
        false,
        Some(("tok".into(), "tok-pw".into())),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pullgate.log()));
    assert!(!pullgate.log().contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_address_and_audited_without_secrets() {
    let (upstream, app, _) = upstream_with_images().await;
    let secrets = tempfile::tempdir().unwrap();
    let up = upstream.host();
    SecretVolume::new(
        &secrets.path().join("c"),
        dockerconfigjson(&[
            (&up, "alice", "correct-horse"),
            ("ghcr.io", "eve", "eve-pw"),
        ])
        .as_bytes(),
    );
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = audit_dir.path().join("audit.jsonl");
    let extra = format!(
        "max_failures = 5\nblock = \"30s\"\n[audit]\npath = \"{}\"\n",
        audit.display()
    );
    let pullgate = Pullgate::start(auth_opts(&upstream, &secrets.path().join("c"), &extra));
    let manifest = format!("{}/v2/e2e/app/manifests/v1", pullgate.url());
    let alice = basic("alice", "correct-horse");

    let r = request("GET", &manifest, &[("authorization", &alice)]).await;
    assert_eq!(r.status, 200);
    let r = request("GET", &manifest, &[("authorization", &alice)]).await;
    assert_eq!(r.status, 200);
    let r = request(
        "GET",
        &manifest,
        &[("authorization", &basic("eve", "eve-pw"))],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = get(&manifest).await;
    assert_eq!(r.status, 401);

    // An attacker guessing from 127.0.0.3 ...
    let attacker = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    let mut throttled = None;
    for i in 0..20 {
        let guess = basic("alice", &format!("guess-{i}"));
        let r = request_from(attacker, "GET", &manifest, &[("authorization", &guess)]).await;
        if r.status == 429 {
            throttled = Some(r);
            break;
        }
        assert_eq!(r.status, 401);
    }
    let r = throttled.expect("failed logins were never throttled");
    assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    assert!(r.header("retry-after").is_some());
    // ... is blocked even with the right password, as alice never logged in from there
    // (letting an unknown pair through would let the guesser through), while alice
    // elsewhere is not.
    let r = request_from(attacker, "GET", &manifest, &[("authorization", &alice)]).await;
    assert_eq!(r.status, 429);
    let elsewhere = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let r = request_from(elsewhere, "GET", &manifest, &[("authorization", &alice)]).await;
    assert_eq!(r.status, 200);

    assert!(metric(&pullgate.url(), "pullgate_auth_failures_total").await >= 5.0);

    // The audit log: JSON lines, one per manifest pull and per refusal.
    let mut lines = Vec::new();
    assert!(eventually(Duration::from_secs(5), || {
        lines = std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("audit line is JSON"))
            .collect();
        lines.iter().any(|l| l["outcome"] == "throttled")
    }));
    let find = |outcome: &str| {
        lines
            .iter()
            .find(|l| l["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {outcome} line in {lines:#?}"))
    };
    let miss = find("miss");
    assert_eq!(miss["user"], "alice");
    assert_eq!(miss["repository"], "e2e/app");
    assert_eq!(miss["reference"], "v1");
    assert_eq!(miss["digest"], app.manifest.digest.as_str());
    assert_eq!(miss["upstream"], up.as_str());
    assert_eq!(miss["client"], "127.0.0.1");
    assert!(miss["bytes"].as_u64().unwrap() > 0);
    assert!(miss["time"].as_str().unwrap().starts_with("20"));
    assert_eq!(find("hit")["user"], "alice");
    assert_eq!(find("denied")["user"], "eve");
    assert_eq!(find("unauthorized")["user"], serde_json::Value::Null);
    assert_eq!(find("throttled")["client"], "127.0.0.3");

    // No password, auth value or guess in any log.
    let everything = format!(
        "{}\n{}",
        pullgate.log(),
        std::fs::read_to_string(&audit).unwrap()
    );
    for secret in ["correct-horse", "eve-pw", "guess-", &alice[6..]] {
        assert!(!everything.contains(secret), "{secret} appears in a log");
    }
}

#[test]
fn refuses_to_start_open_on_a_public_address_or_with_a_bad_secret() {
    let bin = env!("CARGO_BIN_EXE_pullgate");
    let out = Command::new(bin)
        .args(["serve", "--listen", &format!("0.0.0.0:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("client_secrets") && err.contains("anonymous = true"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n[cache]\ndir = \"{}\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n[auth]\nclient_secrets = [\"{}\"]\n",
            free_port(),
            dir.path().join("cache").display(),
            dir.path().join("missing-secret").display()
        ),
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing-secret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_content_survives_auth_checks() {
    // Auth sits in front of the hot path; a large blob still streams whole and verified.
    let upstream = Distribution::start(Auth::Anonymous);
    let img = images::image("authblob", &[16 * MIB], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("e2e/authblob", "v1", &img)
        .await;
    let secrets = tempfile::tempdir().unwrap();
    SecretVolume::new(
        &secrets.path().join("c"),
        dockerconfigjson(&[(&upstream.host(), "u", "p")]).as_bytes(),
    );
    let pullgate = Pullgate::start(auth_opts(&upstream, &secrets.path().join("c"), ""));
    let url = format!(
        "{}/v2/e2e/authblob/blobs/{}",
        pullgate.url(),
        img.layers[0].digest
    );
    let r = request("GET", &url, &[("authorization", &basic("u", "p"))]).await;
    assert_eq!(r.status, 200);
    assert_eq!(sha256(r.bytes()), img.layers[0].digest);
}

/// `n` logins at `url` from 127.0.`net`.x, one address each, as `user(i)`:`password(i)`;
/// the statuses.
async fn logins_from_many_addresses(
    url: &str,
    net: u8,
    n: u8,
    user: impl Fn(u8) -> String,
    password: impl Fn(u8) -> String,
) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let from = Some(IpAddr::V4(Ipv4Addr::new(127, 0, net, i + 1)));
        let auth = basic(&user(i), &password(i));
        statuses.push(
            request_from(from, "GET", url, &[("authorization", &auth)])
                .await
                .status,
        );
    }
    statuses
}

/// A pod pulls ten layers at once with a token that has just expired. Each request is a
/// 401 with a challenge naming its scope, none a failed login; its re-login at `/token`,
/// and its neighbours' at the same node address, pass, and skopeo pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_pulls_with_a_just_expired_token_are_401_and_the_relogin_passes() {
    let (upstream, app, _) = upstream_with_images().await;
    let secrets = tempfile::tempdir().unwrap();
    let up = upstream.host();
    SecretVolume::new(
        &secrets.path().join("c"),
        // One JSON key each: a second entry under one key would overwrite the first.
        dockerconfigjson(&[
            (&up, "pod", "pod-pw"),
            (&format!("http://{up}/"), "neighbour", "nb-pw"),
        ])
        .as_bytes(),
    );
    // Three failures would block the address: the ten expired tokens must not count.
    let pullgate = Pullgate::start(auth_opts(
        &upstream,
        &secrets.path().join("c"),
        // Expiry is in whole seconds: a 1 s token may be dead before its first use.
        "scheme = \"token\"\ntoken_ttl = \"3s\"\nmax_failures = 3\n",
    ));
    let base = pullgate.url();
    let token_url = format!("{base}/token?service=pullgate&scope=repository:{up}/e2e/app:pull");
    let login = |user: &'static str, pw: &'static str| {
        let url = token_url.clone();
        async move {
            let r = request("GET", &url, &[("authorization", &basic(user, pw))]).await;
            assert_eq!(r.status, 200, "{user}'s login at /token");
            let v: serde_json::Value = serde_json::from_slice(r.bytes()).unwrap();
            format!("Bearer {}", v["token"].as_str().unwrap())
        }
    };
    let bearer = login("pod", "pod-pw").await;
    let manifest = format!("{base}/v2/e2e/app/manifests/v1");
    let r = request("GET", &manifest, &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200);

    tokio::time::sleep(Duration::from_millis(4200)).await;
    let pulls = (0..10).map(|i| {
        let url = format!(
            "{base}/v2/e2e/app/blobs/{}",
            app.layers[i % app.layers.len()].digest
        );
        let bearer = bearer.clone();
        async move { request("GET", &url, &[("authorization", &bearer)]).await }
    });
    for r in futures_util::future::join_all(pulls).await {
        assert_eq!(r.status, 401, "an expired token was throttled or accepted");
        assert_eq!(r.error_code(), "UNAUTHORIZED");
        let challenge = r.header("www-authenticate").expect("a challenge");
        assert!(challenge.starts_with("Bearer realm="), "{challenge}");
        assert!(
            challenge.contains(&format!("scope=\"repository:{up}/e2e/app:pull\"")),
            "{challenge}"
        );
    }
    assert_eq!(
        metric(&base, "pullgate_auth_failures_total").await,
        0.0,
        "expired tokens were counted as failed logins"
    );

    let fresh = login("pod", "pod-pw").await;
    login("neighbour", "nb-pw").await;
    let r = request("GET", &manifest, &[("authorization", &fresh)]).await;
    assert_eq!(r.status, 200);
    let work = tempfile::tempdir().unwrap();
    skopeo::pull_with(
        format!("{}/e2e/app:v1", pullgate.host()),
        work.path().join("p"),
        false,
        Some(("pod".into(), "pod-pw".into())),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pullgate.log()));
    assert_eq!(
        skopeo::manifest_digest(&work.path().join("p")),
        app.manifest.digest
    );
}

/// Alice pulls from a shared address (a node, a NAT); mallory then guesses from it until
/// it is blocked. Alice's next pull, by skopeo, still works. Bob, who never logged in from
/// there, waits the block out: letting an unknown (address, user) through would let the
/// guesser through. Nobody's user name that matches no entry reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_login_passes_a_block_another_user_earned() {
    let (upstream, app, _) = upstream_with_images().await;
    let secrets = tempfile::tempdir().unwrap();
    let up = upstream.host();
    SecretVolume::new(
        &secrets.path().join("c"),
        dockerconfigjson(&[
            (&up, "alice", "alice-pw"),
            (&format!("http://{up}/"), "bob", "bob-pw"),
        ])
        .as_bytes(),
    );
    let pullgate = Pullgate::start(auth_opts(
        &upstream,
        &secrets.path().join("c"),
        "max_failures = 5\nblock = \"120s\"\n",
    ));
    let base = pullgate.url();
    let src = format!("{}/e2e/app:v1", pullgate.host());
    let work = tempfile::tempdir().unwrap();
    let alice = || Some(("alice".to_owned(), "alice-pw".to_owned()));
    skopeo::pull_with(src.clone(), work.path().join("1"), false, alice())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pullgate.log()));

    // A password typed into the user name field, then guesses, all from 127.0.0.1.
    let manifest = format!("{base}/v2/e2e/app/manifests/v1");
    let typed = basic("Typed-Into-The-User-Field-7", "");
    let r = request("GET", &manifest, &[("authorization", &typed)]).await;
    assert_eq!(r.status, 401);
    let mut blocked = false;
    for i in 0..10 {
        let guess = basic("mallory", &format!("guess-{i}"));
        let r = request("GET", &manifest, &[("authorization", &guess)]).await;
        if r.status == 429 {
            blocked = true;
            break;
        }
        assert_eq!(r.status, 401);
    }
    assert!(blocked, "mallory's guesses were never throttled");

    let r = request(
        "GET",
        &manifest,
        &[("authorization", &basic("alice", "alice-pw"))],
    )
    .await;
    assert_eq!(r.status, 200, "alice was refused by mallory's block");
    // skopeo would wait out a 429: it must not have had to.
    let started = Instant::now();
    skopeo::pull_with(src, work.path().join("2"), false, alice())
        .await
        .unwrap_or_else(|e| panic!("alice was locked out: {e}\n{}", pullgate.log()));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        skopeo::manifest_digest(&work.path().join("2")),
        app.manifest.digest
    );
    let bob = basic("bob", "bob-pw");
    let r = request("GET", &manifest, &[("authorization", &bob)]).await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    let elsewhere = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let r = request_from(elsewhere, "GET", &manifest, &[("authorization", &bob)]).await;
    assert_eq!(r.status, 200);

    let log = pullgate.log();
    for secret in [
        "Typed-Into-The-User-Field-7",
        "guess-",
        "alice-pw",
        "bob-pw",
    ] {
        assert!(!log.contains(secret), "{secret} appears in the log:\n{log}");
    }
}

/// Guesses at alice from 30 addresses, one each, reach the per-user limit; then names
/// sprayed from 40 more addresses reach the global ceiling. Each time the right password
/// from an unknown address is refused unchecked, and alice, from where she logs in, is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_from_many_addresses_and_at_many_names_are_limited() {
    let upstream = Distribution::start(Auth::Anonymous);
    let secrets = tempfile::tempdir().unwrap();
    let up = upstream.host();
    SecretVolume::new(
        &secrets.path().join("c"),
        dockerconfigjson(&[
            (&up, "alice", "alice-pw"),
            (&format!("http://{up}/"), "bob", "bob-pw"),
        ])
        .as_bytes(),
    );
    let pullgate = Pullgate::start(auth_opts(
        &upstream,
        &secrets.path().join("c"),
        "max_failures = 5\nmax_user_failures = 5\nmax_global_failures = 40\n",
    ));
    let url = format!("{}/v2/", pullgate.url());
    let alice = basic("alice", "alice-pw");
    let home = || async {
        request("GET", &url, &[("authorization", &alice)])
            .await
            .status
    };
    assert_eq!(home().await, 200);

    let statuses =
        logins_from_many_addresses(&url, 1, 30, |_| "alice".into(), |i| format!("guess-{i}")).await;
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        limited >= 25,
        "only {limited} of 30 guesses limited: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| matches!(s, 401 | 429)),
        "{statuses:?}"
    );
    let right_from_elsewhere =
        logins_from_many_addresses(&url, 9, 1, |_| "alice".into(), |_| "alice-pw".into()).await;
    assert_eq!(right_from_elsewhere, [429]);
    assert_eq!(home().await, 200);

    // No address, no name near its limit: only the ceiling stops these.
    let statuses =
        logins_from_many_addresses(&url, 2, 40, |i| format!("user-{i}"), |_| "guess".into()).await;
    let first_refused = statuses.iter().position(|s| *s == 429);
    assert!(
        first_refused.is_some_and(|i| i < 40),
        "the global ceiling never held: {statuses:?}"
    );
    let bob_from_elsewhere =
        logins_from_many_addresses(&url, 3, 1, |_| "bob".into(), |_| "bob-pw".into()).await;
    assert_eq!(bob_from_elsewhere, [429]);
    assert_eq!(home().await, 200);
}

/// One rotation revokes bob and adds carol with an empty password. Carol's entry is
/// skipped and reported (key and reason, no secret); bob's revocation takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_with_a_bad_entry_applies_the_rest_and_its_revocation() {
    let upstream = Distribution::start(Auth::Anonymous);
    let secrets = tempfile::tempdir().unwrap();
    let dir = secrets.path().join("c");
    let up = upstream.host();
    let mut volume = SecretVolume::new(
        &dir,
        dockerconfigjson(&[
            (&up, "alice", "alice-pw"),
            (&format!("{up}/e2e"), "bob", "bob-pw"),
        ])
        .as_bytes(),
    );
    let pullgate = Pullgate::start(auth_opts(&upstream, &dir, "max_failures = 1000"));
    let url = format!("{}/v2/", pullgate.url());
    let (alice, bob) = (basic("alice", "alice-pw"), basic("bob", "bob-pw"));
    assert_eq!(
        request("GET", &url, &[("authorization", &bob)])
            .await
            .status,
        200
    );

    let carol_key = format!("{up}/e2e/carol");
    let rotated = dockerconfigjson(&[(&up, "alice", "alice-pw"), (&carol_key, "carol", "")]);
    volume.rotate(rotated.as_bytes());
    let started = Instant::now();
    let mut seen = (0, 0);
    while started.elapsed() < Duration::from_secs(5) {
        let a = request("GET", &url, &[("authorization", &alice)])
            .await
            .status;
        let b = request("GET", &url, &[("authorization", &bob)])
            .await
            .status;
        seen = (a, b);
        if seen == (200, 401) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        seen,
        (200, 401),
        "bob's revocation was lost (alice, bob)\n{}",
        pullgate.log()
    );
    let base = pullgate.url();
    assert_eq!(
        metric(&base, "pullgate_secret_entries_skipped_total").await,
        1.0
    );
    assert_eq!(
        metric(&base, "pullgate_secret_reload_failures_total").await,
        0.0
    );
    let log = pullgate.log();
    assert!(
        log.contains("skipping an unusable credentials entry") && log.contains(&carol_key),
        "{log}"
    );
    let carol_auth = &basic("carol", "")[6..];
    assert!(
        !log.contains(carol_auth),
        "carol's auth value is in the log"
    );
}

/// `docker login` writes `https://index.docker.io/v1/`, an admin adds `docker.io`: two
/// users, both log in. And `host/v2/` off Docker Hub is the repository prefix `v2`, not the
/// whole registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_keys_are_two_users_and_v2_is_a_prefix_off_docker_hub() {
    let (upstream, _, other) = upstream_with_images().await;
    Pusher::new(&upstream.url(), None)
        .image("v2/app", "v1", &other)
        .await;
    let secrets = tempfile::tempdir().unwrap();
    let up = upstream.host();

    // The local Distribution stands in for Docker Hub.
    SecretVolume::new(
        &secrets.path().join("hub"),
        dockerconfigjson(&[
            ("docker.io", "admin", "admin-pw"),
            ("https://index.docker.io/v1/", "dev", "dev-pw"),
        ])
        .as_bytes(),
    );
    let mut opts = auth_opts(&upstream, &secrets.path().join("hub"), "");
    opts.upstream_name = "docker.io".into();
    let hub = Pullgate::start(opts);
    let manifest = format!("{}/v2/e2e/app/manifests/v1", hub.url());
    for (user, pw) in [("admin", "admin-pw"), ("dev", "dev-pw")] {
        let r = request("GET", &manifest, &[("authorization", &basic(user, pw))]).await;
        assert_eq!(r.status, 200, "{user} cannot log in\n{}", hub.log());
    }

    SecretVolume::new(
        &secrets.path().join("v2"),
        dockerconfigjson(&[(&format!("https://{up}/v2/"), "v2user", "v2-pw")]).as_bytes(),
    );
    let pullgate = Pullgate::start(auth_opts(&upstream, &secrets.path().join("v2"), ""));
    let auth = basic("v2user", "v2-pw");
    let r = request(
        "GET",
        &format!("{}/v2/e2e/app/manifests/v1", pullgate.url()),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 403, "{up}/v2/ granted the whole registry");
    assert_eq!(r.error_code(), "DENIED");
    let r = request(
        "GET",
        &format!("{}/v2/v2/app/manifests/v1", pullgate.url()),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 200);
}
