//! Running it for real: several upstreams in one process, TLS from a rotating Kubernetes
//! secret (HTTP/1.1 and HTTP/2), metrics, probes, JSON logs, SIGTERM draining and
//! `check-config`.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::distribution::{Auth, Distribution};
use crate::support::eventually;
use crate::support::http::{fills_settled, get, metric_value, metrics_text, request};
use crate::support::images::{self, sha256, Flavor, Pusher};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::require;
use crate::support::secret::{dockerconfigjson, SecretVolume};
use crate::support::tls::{served_cn, Ca};

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_upstreams_route_by_ns_prefix_and_default_and_share_blobs() {
    let hub = Distribution::start(Auth::Anonymous);
    let ghcr = Distribution::start(Auth::Anonymous);
    // The same image in both registries: the same blobs under two names.
    let img = images::image("multi-upstream", &[300_000, 20_000], Flavor::Oci, "amd64");
    Pusher::new(&hub.url(), None)
        .image("library/app", "1", &img)
        .await;
    Pusher::new(&ghcr.url(), None)
        .image("org/app", "1", &img)
        .await;
    let mut opts = Options::new(&hub.url());
    opts.upstream_name = "docker.io".into();
    opts.extra = format!(
        "[[upstream]]\nname = \"ghcr.io\"\nurl = \"{}\"\n",
        ghcr.url()
    );
    let pullgate = Pullgate::start(opts);
    let base = pullgate.url();
    // A tag is resolved with a HEAD (then fetched by digest): one per upstream visit.
    let manifest_get =
        |u: &Distribution, repo: &str| u.count("HEAD", &format!("/v2/{repo}/manifests/1"));
    let layer = &img.layers[0];

    // Default upstream (Docker Hub semantics: library/ added).
    let r = get(&format!("{base}/v2/app/manifests/1")).await;
    assert_eq!(r.status, 200, "{}", pullgate.log());
    assert_eq!(manifest_get(&hub, "library/app"), 1);
    assert_eq!(manifest_get(&ghcr, "org/app"), 0);

    // A host prefix picks the upstream by name.
    let r = get(&format!("{base}/v2/ghcr.io/org/app/manifests/1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(manifest_get(&ghcr, "org/app"), 1);
    // containerd's ?ns= reaches the same upstream and repository: a cache hit.
    let r = get(&format!("{base}/v2/org/app/manifests/1?ns=ghcr.io")).await;
    assert_eq!(r.status, 200);
    assert_eq!(manifest_get(&ghcr, "org/app"), 1);
    assert_eq!(manifest_get(&hub, "library/app"), 1);

    // A blob fetched through one upstream is served through the other only once that one
    // proves it holds the bytes: a GET that hashes to the digest (a HEAD from an upstream
    // that never served them proves nothing). After that, its repository is linked.
    let blob =
        |prefix: &str, query: &str| format!("{base}/v2/{prefix}/blobs/{}{query}", layer.digest);
    let r = get(&blob("app", "")).await;
    assert_eq!(sha256(r.bytes()), layer.digest);
    fills_settled(&base).await;
    let r = get(&blob("ghcr.io/org/app", "")).await;
    assert_eq!(sha256(r.bytes()), layer.digest);
    let r = get(&blob("org/app", "?ns=ghcr.io")).await;
    assert_eq!(sha256(r.bytes()), layer.digest);
    let path = |repo: &str| format!("/v2/{repo}/blobs/{}", layer.digest);
    assert_eq!(hub.count("GET", &path("library/app")), 1);
    assert_eq!(ghcr.count("GET", &path("org/app")), 1);
    assert_eq!(ghcr.count("HEAD", &path("org/app")), 0);

    // Nothing unconfigured is ever contacted: 404 NAME_UNKNOWN, no upstream request.
    let (hub_before, ghcr_before) = (hub.access_log().len(), ghcr.access_log().len());
    for url in [
        format!("{base}/v2/org/app/manifests/1?ns=quay.io"),
        format!("{base}/v2/quay.io/org/app/manifests/1"),
        format!("{base}/v2/registry.example.com/x/blobs/{}", layer.digest),
    ] {
        let r = get(&url).await;
        assert_eq!(r.status, 404, "{url}");
        assert_eq!(r.error_code(), "NAME_UNKNOWN", "{url}");
    }
    assert_eq!(hub.access_log().len(), hub_before);
    assert_eq!(ghcr.access_log().len(), ghcr_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http1_and_http2_and_rotates_without_dropping_connections() {
    require("curl");
    let upstream = Distribution::start(Auth::Anonymous);
    let img = images::image("tls", &[48 * MIB], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("e2e/tls", "v1", &img)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(&dir.path().join("ca"));
    let first = ca.leaf("pullgate-one");
    let second = ca.leaf("pullgate-two");
    let secret = dir.path().join("tls");
    let mut volume = SecretVolume::with_files(
        &secret,
        &[("tls.crt", &first.cert), ("tls.key", &first.key)],
    );
    let mut opts = Options::new(&upstream.url());
    opts.extra = format!(
        "[server.tls]\ncert = \"{0}/tls.crt\"\nkey = \"{0}/tls.key\"\n",
        secret.display()
    );
    let pullgate = Pullgate::start(opts);
    let base = format!("https://localhost:{}", pullgate.port);
    let ca_file = ca.cert_path();

    // A real client that verifies the chain: skopeo with the CA in its cert dir.
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&ca_file, certs.join("ca.crt")).unwrap();
    let dest = dir.path().join("copy");
    let out = Command::new(require("skopeo"))
        .args(["--insecure-policy", "copy", "--quiet", "--src-no-creds"])
        .arg("--src-cert-dir")
        .arg(&certs)
        .arg(format!("docker://localhost:{}/e2e/tls:v1", pullgate.port))
        .arg(format!("dir:{}", dest.display()))
        .env("REGISTRY_AUTH_FILE", "/dev/null/none")
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        pullgate.log()
    );
    assert_eq!(
        crate::support::skopeo::manifest_digest(&dest),
        img.manifest.digest
    );

    // ALPN: both protocols, negotiated per connection.
    let version = |flag: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_version}", flag])
            .arg("--cacert")
            .arg(&ca_file)
            .arg(format!("{base}/v2/"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(version("--http1.1"), "1.1");
    assert_eq!(version("--http2"), "2");
    // Plain HTTP on the TLS port is refused, not served.
    let plain = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{}/v2/", pullgate.port))
        .status()
        .unwrap();
    assert!(!plain.success());

    // Start a large download and hold it open across a rotation.
    assert_eq!(served_cn(pullgate.port), first.cn);
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&ca_file).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let layer = &img.layers[0];
    let mut resp = client
        .get(format!("{base}/v2/e2e/tls/blobs/{}", layer.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.chunk().await.unwrap().unwrap().to_vec();

    volume.rotate_files(&[("tls.crt", &second.cert), ("tls.key", &second.key)]);
    assert!(
        eventually(Duration::from_secs(10), || served_cn(pullgate.port)
            == second.cn),
        "the rotated certificate is not served:\n{}",
        pullgate.log()
    );
    // The connection opened before the rotation finishes its download.
    while let Some(chunk) = resp.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    assert_eq!(sha256(&body), layer.digest);
    let metrics = || async {
        client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let reloads = |text: &str, result: &str| {
        metric_value(
            text,
            &format!("pullgate_tls_reloads_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(reloads(&metrics().await, "ok"), 1.0);

    // A broken rotation (a key that is not the certificate's) keeps the current pair.
    volume.rotate_files(&[("tls.crt", &first.cert), ("tls.key", &second.key)]);
    assert!(
        eventually(Duration::from_secs(10), || pullgate
            .log()
            .contains("cannot reload the TLS certificate")),
        "{}",
        pullgate.log()
    );
    assert_eq!(served_cn(pullgate.port), second.cn);
    assert_eq!(version("--http2"), "2");
    let text = metrics().await;
    assert_eq!((reloads(&text, "ok"), reloads(&text, "failed")), (1.0, 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_probes_and_json_logs() {
    let mut upstream = Distribution::start(Auth::Anonymous);
    let img = images::image("metrics", &[2 * MIB, 4096], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("e2e/metrics", "v1", &img)
        .await;
    let missing = images::image("metrics-missing", &[1000], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("e2e/metrics", "v2", &missing)
        .await;
    let mut opts = Options::new(&upstream.url());
    opts.args = vec!["--log-format".into(), "json".into()];
    let pullgate = Pullgate::start(opts);
    let base = pullgate.url();

    assert_eq!(get(&format!("{base}/healthz")).await.status, 200);
    assert_eq!(get(&format!("{base}/readyz")).await.status, 200);
    let r = get(&format!("{base}/v2/e2e/metrics/manifests/v1")).await;
    assert_eq!(r.status, 200);
    let manifest_len = r.bytes().len() as f64;
    for layer in &img.layers {
        for _ in 0..2 {
            let r = get(&format!("{base}/v2/e2e/metrics/blobs/{}", layer.digest)).await;
            assert_eq!(sha256(r.bytes()), layer.digest);
            // The second GET is then a hit, not a join of the committing fill.
            fills_settled(&base).await;
        }
    }
    let r = request("HEAD", &format!("{base}/v2/e2e/metrics/manifests/v1"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        get(&format!("{base}/v2/e2e/Bad/manifests/v1")).await.status,
        400
    );
    // The upstream goes away: a miss now fails, and the failure is counted by kind.
    upstream.stop();
    let r = get(&format!(
        "{base}/v2/e2e/metrics/blobs/{}",
        missing.layers[0].digest
    ))
    .await;
    assert!(r.status >= 500, "{}", r.status);

    fills_settled(&base).await;
    let text = metrics_text(&base).await;
    let v = |series: &str| metric_value(&text, series);
    let layers: f64 = img.layers.iter().map(|l| l.bytes.len() as f64).sum();
    assert_eq!(
        v("pullgate_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"}"),
        4.0
    );
    assert_eq!(
        v("pullgate_http_requests_total{route=\"manifest\",method=\"GET\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        v("pullgate_http_requests_total{route=\"manifest\",method=\"HEAD\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        v("pullgate_http_requests_total{route=\"invalid\",method=\"GET\",status=\"400\"}"),
        1.0
    );
    assert_eq!(
        v("pullgate_http_requests_total{route=\"healthz\",method=\"GET\",status=\"200\"}"),
        1.0
    );
    assert!(v("pullgate_http_request_duration_seconds_count{route=\"blob\"}") >= 4.0);
    assert_eq!(v("pullgate_cache_misses_total{kind=\"blob\"}"), 3.0);
    assert_eq!(v("pullgate_cache_hits_total{kind=\"blob\"}"), 2.0);
    assert_eq!(v("pullgate_cache_misses_total{kind=\"manifest\"}"), 1.0);
    assert_eq!(v("pullgate_cache_hits_total{kind=\"manifest\"}"), 1.0);
    assert_eq!(
        v("pullgate_served_bytes_total{kind=\"blob\"}"),
        2.0 * layers
    );
    assert_eq!(
        v("pullgate_served_bytes_total{kind=\"manifest\"}"),
        manifest_len
    );
    assert_eq!(v("pullgate_fetched_bytes_total"), layers);
    assert_eq!(v("pullgate_fills_started_total"), 3.0);
    assert_eq!(v("pullgate_fills_failed_total"), 1.0);
    assert_eq!(v("pullgate_fill_duration_seconds_count"), 3.0);
    assert_eq!(v("pullgate_fill_duration_seconds_bucket{le=\"+Inf\"}"), 3.0);
    assert_eq!(v("pullgate_fills_in_flight"), 0.0);
    let upstream_name = upstream.host();
    assert_eq!(
        v(&format!(
            "pullgate_upstream_errors_total{{upstream=\"{upstream_name}\",kind=\"unreachable\"}}"
        )),
        1.0
    );
    // The manifest is a cached blob too (the config was never asked for).
    assert_eq!(v("pullgate_cache_size_bytes"), layers + manifest_len);
    assert_eq!(v("pullgate_cache_blobs"), 3.0);
    // Labels carry no repository names or other client input.
    assert!(
        !text.contains("e2e/metrics") && !text.contains("Bad"),
        "{text}"
    );

    // Readiness follows the cache: a cache that cannot take a file is not ready.
    let tmp = pullgate.cache_dir().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let r = get(&format!("{base}/readyz")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "UNAVAILABLE");
    assert_eq!(get(&format!("{base}/healthz")).await.status, 200);
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    assert_eq!(get(&format!("{base}/readyz")).await.status, 200);

    // --log-format json: every line is one JSON object with a level and a message.
    let log = pullgate.log();
    let mut access = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        // Audit lines share the output (standard output, here the same file).
        if v.get("outcome").is_some() {
            continue;
        }
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["target"] == "pullgate::access" {
            access += 1;
            assert!(v["status"].is_u64() && v["path"].is_string(), "{line}");
        }
    }
    assert!(access >= 8, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_needs_client_credentials_when_auth_is_required() {
    let upstream = Distribution::start(Auth::Anonymous);
    let dir = tempfile::tempdir().unwrap();
    let mut volume = SecretVolume::new(
        &dir.path().join("clients"),
        dockerconfigjson(&[("127.0.0.1", "ci", "pw")]).as_bytes(),
    );
    let mut opts = Options::new(&upstream.url());
    opts.extra = format!("[auth]\nclient_secrets = [\"{}\"]\n", volume.dir.display());
    let pullgate = Pullgate::start(opts);
    let readyz = format!("{}/readyz", pullgate.url());
    // Probes need no credentials.
    assert_eq!(get(&readyz).await.status, 200);
    volume.rotate(br#"{"auths":{}}"#);
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            get(&readyz).await.status == 503
        })
        .await,
        "{}",
        pullgate.log()
    );
    volume.rotate(dockerconfigjson(&[("127.0.0.1", "ci", "pw2")]).as_bytes());
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            get(&readyz).await.status == 200
        })
        .await
    );
}

async fn eventually_async<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_pulls_and_leaves_the_cache_consistent() {
    let upstream = Distribution::start(Auth::Anonymous);
    let img = images::image("drain", &[64 * MIB], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("e2e/drain", "v1", &img)
        .await;
    let mut opts = Options::new(&upstream.url());
    opts.extra = "".into();
    let mut pullgate = Pullgate::start(opts);
    let layer = &img.layers[0];
    let url = format!("{}/v2/e2e/drain/blobs/{}", pullgate.url(), layer.digest);

    let mut resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.chunk().await.unwrap().unwrap().to_vec();
    let started = Instant::now();
    // SIGTERM while the client has most of the body still to read.
    let port = pullgate.port;
    let stopper = std::thread::spawn(move || {
        let status = pullgate.terminate(Duration::from_secs(25));
        (pullgate, status)
    });
    // New connections are refused once it stops accepting.
    assert!(
        eventually_async(Duration::from_secs(5), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
        })
        .await
    );
    // The pull in flight is read slowly, and still completes.
    while let Some(chunk) = resp.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
        if body.len() % (8 * MIB) < chunk.len() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(body.len(), layer.bytes.len());
    assert_eq!(sha256(&body), layer.digest);
    let (mut pullgate, status) = stopper.join().unwrap();
    assert!(status.success(), "{status}\n{}", pullgate.log());
    assert!(started.elapsed() > Duration::from_millis(500));
    assert!(
        pullgate.log().contains("all connections drained"),
        "{}",
        pullgate.log()
    );

    // After a restart: nothing half-written, the blob is committed and verified, and it is
    // served without asking the upstream again.
    pullgate.restart();
    assert_eq!(pullgate.tmp_files(), 0);
    let committed = std::fs::read(pullgate.blob_path(&layer.digest)).unwrap();
    assert_eq!(sha256(&committed), layer.digest);
    let r = get(&format!(
        "{}/v2/e2e/drain/blobs/{}",
        pullgate.url(),
        layer.digest
    ))
    .await;
    assert_eq!(sha256(r.bytes()), layer.digest);
    assert_eq!(
        upstream.count("GET", &format!("/v2/e2e/drain/blobs/{}", layer.digest)),
        1
    );
}

#[test]
fn check_config_prints_effective_settings_and_never_secret_values() {
    let dir = tempfile::tempdir().unwrap();
    let password = "s3cret-Pa55word";
    let clients = SecretVolume::new(
        &dir.path().join("clients"),
        dockerconfigjson(&[("mirror.example.com", "ci", password)]).as_bytes(),
    );
    let ca = Ca::new(&dir.path().join("ca"));
    let leaf = ca.leaf("check-config");
    let tls = SecretVolume::with_files(
        &dir.path().join("tls"),
        &[("tls.crt", &leaf.cert), ("tls.key", &leaf.key)],
    );
    let config = dir.path().join("pullgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"0.0.0.0:5000\"\n[server.tls]\ncert = \"{tls}/tls.crt\"\nkey = \"{tls}/tls.key\"\n\
             [cache]\ndir = \"/var/lib/pullgate\"\ntag_ttl = \"2m\"\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\ncredentials = \"{clients}\"\n\
             [[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\n\
             [auth]\nclient_secrets = [\"{clients}\"]\n",
            tls = tls.dir.display(),
            clients = clients.dir.display(),
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pullgate"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for want in [
        "listen = \"0.0.0.0:5000\"",
        "[server.tls]",
        "tag_ttl = \"2m\"",
        "name = \"ghcr.io\"",
        "anonymous = false",
        &format!("client_secrets = [\"{}\"]", clients.dir.display()),
    ] {
        assert!(stdout.contains(want), "{want} missing:\n{stdout}");
    }
    assert!(stderr.contains("ok       client secret"), "{stderr}");
    assert!(stderr.contains("ok       TLS certificate"), "{stderr}");
    let leaked = base64_of(&format!("ci:{password}"));
    for text in [&stdout, &stderr] {
        assert!(
            !text.contains(password) && !text.contains(&leaked),
            "{text}"
        );
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }

    // An invalid configuration fails, naming what is wrong.
    std::fs::write(
        &config,
        "[server]\nlisten = \"0.0.0.0:5000\"\n[cache]\ndir = \"d\"\ntag_ttl = \"soon\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n[auth]\nanonymous = true\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pullgate"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cache.tag_ttl"));
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
