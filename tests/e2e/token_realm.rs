//! The token realm, where the token scheme has clients send their passwords: `https://`
//! on a TLS listener and the authority the client asked for over HTTP/2 (curl and skopeo
//! here; docker and podman in their network namespaces, logging in and pulling over TLS),
//! a trusted proxy's forwarded scheme and host but nobody else's, the configured
//! `auth.realm` above all, and never `localhost`.
//!
//! "Only over TLS" is checked on the wire's one witness: a client that sent its password
//! to an `http://` realm would have sent it, in clear, to pullgate's TLS port, where the
//! handshake fails and pullgate logs `TLS handshake failed` (each test also makes one such
//! attempt on purpose last, to show the log would have said so).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::clients::{run, stdout, Dockerd, Podman};
use crate::support::distribution::{Auth, Distribution};
use crate::support::http::{metric_value, request, request_from, Reply};
use crate::support::images::{self, Flavor, Pusher};
use crate::support::netns::run_isolated;
use crate::support::pullgate::{Options, Pullgate};
use crate::support::secret::{dockerconfigjson, SecretVolume};
use crate::support::tls::Ca;
use crate::support::{eventually, free_port, require};

const HANDSHAKE_FAILED: &str = "TLS handshake failed";

/// pullgate on TLS with the token scheme, and the CA its certificate chains to.
struct TlsMirror {
    pullgate: Pullgate,
    dir: tempfile::TempDir,
}

impl TlsMirror {
    /// In front of `upstream`, named `upstream_name`, letting in the secret `entries`.
    fn start(
        upstream: &Distribution,
        upstream_name: &str,
        port: Option<u16>,
        entries: &[(&str, &str, &str)],
    ) -> TlsMirror {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(&dir.path().join("ca"));
        let leaf = ca.leaf("pullgate-realm");
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::copy(ca.cert_path(), certs.join("ca.crt")).unwrap();
        let tls = dir.path().join("tls");
        SecretVolume::with_files(&tls, &[("tls.crt", &leaf.cert), ("tls.key", &leaf.key)]);
        let clients = dir.path().join("clients");
        SecretVolume::new(&clients, dockerconfigjson(entries).as_bytes());
        let mut opts = Options::new(&upstream.url());
        opts.upstream_name = upstream_name.to_owned();
        opts.port = port;
        opts.extra = format!(
            "[server.tls]\ncert = \"{}/tls.crt\"\nkey = \"{}/tls.key\"\n\n[auth]\nclient_secrets = [\"{}\"]\nscheme = \"token\"\n",
            tls.display(),
            tls.display(),
            clients.display()
        );
        TlsMirror {
            pullgate: Pullgate::start(opts),
            dir,
        }
    }

    /// A directory holding the CA as `ca.crt` (`--cert-dir` of skopeo and podman).
    fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn ca_file(&self) -> PathBuf {
        self.cert_dir().join("ca.crt")
    }

    fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// `GET /token` answered 200 this often, from `/metrics` over TLS.
    fn tokens_issued(&self) -> f64 {
        let ca = self.ca_file();
        let r = curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            &format!("https://127.0.0.1:{}/metrics", self.pullgate.port),
        ]);
        assert_eq!(r.status, 200);
        let series = "pullgate_http_requests_total{route=\"token\",method=\"GET\",status=\"200\"}";
        if r.body.contains(series) {
            metric_value(&r.body, series)
        } else {
            0.0
        }
    }

    /// Nothing arrived on the TLS port in clear text, and the log would have said so: a
    /// plain-HTTP request sent now is seen as a failed handshake.
    fn assert_nothing_came_in_clear(&self) {
        let log = self.pullgate.log();
        let clear = clear_text_handshakes(&log);
        assert!(
            clear.is_empty(),
            "a client spoke plain HTTP to the TLS port (a password sent to an http:// realm?): {clear:?}\n{log}"
        );
        let _ = Command::new("curl")
            .args(["-s", "--max-time", "5", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{}/token", self.pullgate.port))
            .stderr(std::process::Stdio::null())
            .status();
        assert!(
            eventually(Duration::from_secs(10), || !clear_text_handshakes(
                &self.pullgate.log()
            )
            .is_empty()),
            "a plain-HTTP request to the TLS port is not logged, so its absence proves nothing:\n{}",
            self.pullgate.log()
        );
    }
}

/// Failed handshakes that received bytes: a connection closed without a word (the test
/// harness's port probe) fails with an EOF instead.
fn clear_text_handshakes(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(HANDSHAKE_FAILED) && !l.contains("handshake eof"))
        .collect()
}

/// One curl exchange.
struct Curl {
    version: String,
    status: u16,
    headers: String,
    body: String,
}

impl Curl {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn curl(args: &[&str]) -> Curl {
    let dir = tempfile::tempdir().unwrap();
    let (headers, body) = (dir.path().join("headers"), dir.path().join("body"));
    let out = Command::new(require("curl"))
        .args(["-sS", "--max-time", "30", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_version} %{http_code}"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    let (version, status) = w.split_once(' ').expect("version and status");
    Curl {
        version: version.to_owned(),
        status: status.parse().expect("a status"),
        headers: std::fs::read_to_string(headers).unwrap_or_default(),
        body: std::fs::read_to_string(body).unwrap_or_default(),
    }
}

/// The realm of a `Bearer` challenge.
fn realm(challenge: &str) -> &str {
    challenge
        .strip_prefix("Bearer realm=\"")
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("not a Bearer challenge with a realm: {challenge}"))
}

fn realm_of(r: &Reply) -> String {
    assert_eq!(r.status, 401);
    realm(r.header("www-authenticate").expect("a challenge")).to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_flow_over_tls_and_http2_sends_passwords_only_over_tls() {
    let upstream = Distribution::start(Auth::Anonymous);
    let img = images::image("realm-tls", &[64 * 1024, 1024], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("e2e/app", "v1", &img)
        .await;
    let up = upstream.host();
    let m = TlsMirror::start(&upstream, &up, None, &[(&up, "tok", "tok-pw")]);
    let port = m.pullgate.port;
    let ca = m.ca_file();
    let ca = ca.to_str().unwrap();
    let base = format!("https://localhost:{port}");
    let manifest = format!("{base}/v2/e2e/app/manifests/v1");

    // HTTP/1.1 names the mirror in Host, HTTP/2 only in :authority: https either way.
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let r = curl(&[flag, "--cacert", ca, &manifest]);
        assert_eq!((r.version.as_str(), r.status), (version, 401), "{flag}");
        let challenge = r.header("www-authenticate").expect("a challenge");
        assert_eq!(
            realm(challenge),
            format!("https://localhost:{port}/token"),
            "{flag}"
        );
    }

    // The whole flow over HTTP/2: password for a token at the realm, token for the manifest.
    let token_url = format!(
        "https://localhost:{port}/token?service=pullgate&scope=repository:{up}/e2e/app:pull"
    );
    let r = curl(&["--http2", "--cacert", ca, "-u", "tok:tok-pw", &token_url]);
    assert_eq!((r.version.as_str(), r.status), ("2", 200), "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let token = v["token"].as_str().unwrap();
    let r = curl(&[
        "--http2",
        "--cacert",
        ca,
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &manifest,
    ]);
    assert_eq!((r.version.as_str(), r.status), ("2", 200));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(img.manifest.digest.as_str())
    );

    // skopeo follows the challenge to the realm with its password: over TLS, or it fails.
    let dest = m.scratch().join("copy");
    let out = Command::new(require("skopeo"))
        .args(["--insecure-policy", "copy", "--quiet", "--retry-times=0"])
        .arg("--src-cert-dir")
        .arg(m.cert_dir())
        .args(["--src-creds", "tok:tok-pw"])
        .arg(format!("docker://localhost:{port}/e2e/app:v1"))
        .arg(format!("dir:{}", dest.display()))
        .env("REGISTRY_AUTH_FILE", "/dev/null/none")
        .env("HOME", m.scratch())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.pullgate.log()
    );
    assert_eq!(
        crate::support::skopeo::manifest_digest(&dest),
        img.manifest.digest
    );
    assert!(m.tokens_issued() >= 2.0, "{}", m.pullgate.log());
    assert!(!m.pullgate.log().contains(token));
    m.assert_nothing_came_in_clear();
}

#[test]
fn docker_pulls_through_a_tls_mirror_with_a_token() {
    run_isolated(
        "token_realm::docker_pulls_through_a_tls_mirror_with_a_token",
        || {
            let upstream = Distribution::start(Auth::Anonymous);
            let image = images::image("e2e-realm-docker", &[64 * 1024], Flavor::Docker, "amd64");
            runtime().block_on(Pusher::new(&upstream.url(), None).image(
                "library/e2e-realm-docker",
                "latest",
                &image,
            ));
            // registry-mirrors sends the user's Docker Hub credentials to the mirror.
            let hub = [("https://index.docker.io/v1/", "hubuser", "hub-pw")];
            let m = TlsMirror::start(&upstream, "docker.io", None, &hub);
            let dockerd = Dockerd::start_https(&m.pullgate.host());
            std::fs::write(dockerd.cli_config(), dockerconfigjson(&hub)).unwrap();

            run(dockerd.docker().args(["pull", "e2e-realm-docker:latest"]));
            let id = stdout(dockerd.docker().args([
                "image",
                "inspect",
                "--format",
                "{{.Id}}",
                "e2e-realm-docker:latest",
            ]));
            assert_eq!(id, image.config.digest, "{}", dockerd.log());
            for b in image.blobs() {
                let path = format!("/v2/library/e2e-realm-docker/blobs/{}", b.digest);
                assert_eq!(upstream.count("GET", &path), 1, "{path}");
            }
            assert!(
                m.tokens_issued() >= 1.0,
                "docker did not use the token flow:\n{}",
                m.pullgate.log()
            );
            m.assert_nothing_came_in_clear();
        },
    );
}

#[test]
fn podman_logs_in_and_pulls_through_a_tls_mirror_with_a_token() {
    run_isolated(
        "token_realm::podman_logs_in_and_pulls_through_a_tls_mirror_with_a_token",
        || {
            let port = free_port();
            let mirror = format!("127.0.0.1:{port}");
            let upstream = Distribution::start(Auth::Anonymous);
            let image = images::image("e2e-realm-podman", &[64 * 1024], Flavor::Oci, "amd64");
            runtime().block_on(Pusher::new(&upstream.url(), None).image(
                "library/e2e-realm-podman",
                "latest",
                &image,
            ));
            // podman looks the mirror's credentials up by the mirror's host:port.
            let m = TlsMirror::start(
                &upstream,
                "docker.io",
                Some(port),
                &[(&mirror, "dev", "dev-pw")],
            );
            // A TLS mirror (no `insecure`): the chain is verified against --cert-dir.
            let podman = Podman::new(&format!(
                "unqualified-search-registries = [\"docker.io\"]\n\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"registry-1.docker.io\"\n\n[[registry.mirror]]\nlocation = \"{mirror}\"\n"
            ));
            let certs = m.cert_dir();
            let certs = certs.to_str().unwrap();
            run(podman.podman().args([
                "login",
                "--cert-dir",
                certs,
                "-u",
                "dev",
                "-p",
                "dev-pw",
                &mirror,
            ]));
            let reference = "docker.io/library/e2e-realm-podman:latest";
            run(podman
                .podman()
                .args(["pull", "--cert-dir", certs, reference]));
            let digest = stdout(podman.podman().args([
                "image",
                "inspect",
                "--format",
                "{{.Digest}}",
                reference,
            ]));
            assert_eq!(digest, image.manifest.digest, "{}", m.pullgate.log());
            for b in image.blobs() {
                let path = format!("/v2/library/e2e-realm-podman/blobs/{}", b.digest);
                assert_eq!(upstream.count("GET", &path), 1, "{path}");
            }
            // One token for the login, at least one for the pull.
            assert!(m.tokens_issued() >= 2.0, "{}", m.pullgate.log());
            m.assert_nothing_came_in_clear();
        },
    );
}

/// The challenge of a request sent as raw HTTP/1.0 bytes, without a `Host` header.
fn challenge_without_host(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").unwrap();
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    got.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("www-authenticate")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no challenge in:\n{got}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_choose_the_realm_only_from_trusted_proxies_and_never_localhost() {
    let upstream = Distribution::start(Auth::Anonymous);
    let secrets = tempfile::tempdir().unwrap();
    let clients = secrets.path().join("clients");
    SecretVolume::new(
        &clients,
        dockerconfigjson(&[(&upstream.host(), "tok", "tok-pw")]).as_bytes(),
    );
    let start = |auth_extra: &str| {
        let mut opts = Options::new(&upstream.url());
        opts.server_extra = "trusted_proxies = [\"127.0.0.2\"]".into();
        opts.extra = format!(
            "[auth]\nclient_secrets = [\"{}\"]\nscheme = \"token\"\n{auth_extra}\n",
            clients.display()
        );
        Pullgate::start(opts)
    };
    let pullgate = start("");
    let host = pullgate.host();
    let url = format!("{}/v2/", pullgate.url());
    let proxy = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let forged = [
        ("x-forwarded-proto", "https"),
        ("forwarded", "proto=https;host=evil.example"),
    ];

    // Anyone else's forwarded headers are ignored.
    let r = request("GET", &url, &forged).await;
    assert_eq!(realm_of(&r), format!("http://{host}/token"));
    // The trusted proxy's count: the scheme, the host, its own (last) element.
    let r = request_from(proxy, "GET", &url, &[("x-forwarded-proto", "https")]).await;
    assert_eq!(realm_of(&r), format!("https://{host}/token"));
    let r = request_from(
        proxy,
        "GET",
        &url,
        &[(
            "forwarded",
            "proto=http;host=evil.example, for=192.0.2.1;proto=https;host=mirror.example.com",
        )],
    )
    .await;
    assert_eq!(realm_of(&r), "https://mirror.example.com/token");

    // HTTP/2 without TLS (prior knowledge): no Host, the :authority names the mirror.
    let c = curl(&["--http2-prior-knowledge", &url]);
    assert_eq!((c.version.as_str(), c.status), ("2", 401));
    assert_eq!(
        realm(c.header("www-authenticate").unwrap()),
        format!("http://{host}/token")
    );
    // No authority at all: the address the client reached, not localhost.
    let port = pullgate.port;
    let challenge = tokio::task::spawn_blocking(move || challenge_without_host(port))
        .await
        .unwrap();
    assert_eq!(realm(&challenge), format!("http://{host}/token"));

    // A configured realm wins over all of it.
    let configured = start("realm = \"https://auth.example.com/token\"");
    let url = format!("{}/v2/", configured.url());
    for r in [
        request("GET", &url, &[]).await,
        request_from(proxy, "GET", &url, &forged).await,
    ] {
        assert_eq!(realm_of(&r), "https://auth.example.com/token");
    }
}
