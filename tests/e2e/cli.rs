//! The binary as an operator meets it: flags, the embedded default, graceful shutdown.

use std::process::Command;

use crate::support::distribution::{Auth, Distribution};
use crate::support::http::{basic, fills_settled, get, request};
use crate::support::images::{self, sha256, Flavor, Pusher};
use crate::support::secret::{dockerconfigjson, SecretVolume};
use crate::support::skopeo;
use crate::support::{free_port, wait_port};

const BIN: &str = env!("CARGO_BIN_EXE_pullgate");

#[test]
fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("pullgate {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--listen", "--cache-dir", "--upstream"] {
        assert!(help.contains(flag), "serve --help lacks {flag}:\n{help}");
    }
    let out = Command::new(BIN)
        .args(["serve", "--upstream", "ftp://example"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http"));
}

/// The embedded default with only the listen address, cache and upstream overridden by
/// flags; SIGTERM stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_embedded_default() {
    let upstream = Distribution::start(Auth::Anonymous);
    let img = images::image("cli", &[4096], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("e2e/cli", "v1", &img)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["--upstream", &upstream.url()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_port(port, std::time::Duration::from_secs(20)));
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(get(&format!("{base}/v2/")).await.status, 200);
    let r = get(&format!("{base}/v2/e2e/cli/blobs/{}", img.layers[0].digest)).await;
    assert_eq!(r.status, 200);
    assert_eq!(sha256(r.bytes()), img.layers[0].digest);
    fills_settled(&base).await;
    assert!(dir.path().join("cache/blobs/sha256").is_dir());

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "pullgate exited with {status} on SIGTERM");
}

/// Tried as a new user would: a file saying only who may pull (`[auth]`) and from where
/// (`[[upstream]]`), with the listen address and the cache directory given as flags. The
/// rest is the embedded default's, and a real client pulls an image through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_only_auth_and_upstreams_serves_with_listen_and_cache_dir_flags() {
    let upstream = Distribution::start(Auth::Anonymous);
    let img = images::image("partial", &[4096, 70_000], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("e2e/partial", "v1", &img)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let secret = SecretVolume::new(
        &dir.path().join("clients"),
        dockerconfigjson(&[(&upstream.host(), "alice", "alice-pw")]).as_bytes(),
    );
    let config = dir.path().join("pullgate.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nclient_secrets = [\"{}\"]\n\n[[upstream]]\nname = \"{}\"\nurl = \"{}\"\n",
            secret.dir.display(),
            upstream.host(),
            upstream.url()
        ),
    )
    .unwrap();
    let port = free_port();
    let log_path = dir.path().join("pullgate.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .env("NO_COLOR", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    if !wait_port(port, std::time::Duration::from_secs(20)) {
        let _ = child.kill();
        panic!("pullgate did not listen:\n{}", log());
    }
    let host = format!("127.0.0.1:{port}");

    // The file's [auth] holds: credentials are required, and the secret's are accepted.
    let base = format!("http://{host}");
    assert_eq!(get(&format!("{base}/v2/")).await.status, 401);
    let alice = basic("alice", "alice-pw");
    let r = request("GET", &format!("{base}/v2/"), &[("authorization", &alice)]).await;
    assert_eq!(r.status, 200, "{}", log());

    let work = tempfile::tempdir().unwrap();
    skopeo::pull_with(
        format!("{host}/e2e/partial:v1"),
        work.path().join("copy"),
        false,
        Some(("alice".into(), "alice-pw".into())),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", log()));
    assert_eq!(
        skopeo::manifest_digest(&work.path().join("copy")),
        img.manifest.digest
    );
    let copied = skopeo::contents(&work.path().join("copy"));
    for blob in img.blobs() {
        let hex = blob.digest.trim_start_matches("sha256:");
        assert_eq!(copied.get(hex), Some(&blob.digest), "{}", blob.digest);
    }
    // Into the cache the flag named.
    fills_settled(&base).await;
    let hex = img.layers[1].digest.trim_start_matches("sha256:");
    assert!(
        dir.path()
            .join("cache/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .is_file(),
        "{}",
        log()
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "pullgate exited with {status}:\n{}",
        log()
    );
}

/// Tried as a new user would: a file with only a size bound, run with `--upstream`, which
/// re-points the embedded default's docker.io (so one-component names get `library/`).
/// The listen address and the cache directory are flags only so that the test shares
/// nothing with others on this machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_only_max_size_serves_with_the_upstream_flag() {
    let upstream = Distribution::start(Auth::Anonymous);
    let img = images::image("bounded", &[4096], Flavor::Oci, "amd64");
    Pusher::new(&upstream.url(), None)
        .image("library/bounded", "v1", &img)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pullgate.toml");
    std::fs::write(&config, "[cache]\nmax_size = \"64MiB\"\n").unwrap();
    let port = free_port();
    let log_path = dir.path().join("pullgate.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--upstream", &upstream.url()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .env("NO_COLOR", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    if !wait_port(port, std::time::Duration::from_secs(20)) {
        let _ = child.kill();
        panic!("pullgate did not listen:\n{}", log());
    }
    let base = format!("http://127.0.0.1:{port}");
    // Docker Hub's rules still apply to the re-pointed docker.io: `bounded` is
    // `library/bounded`, and so is `?ns=docker.io`.
    let r = get(&format!("{base}/v2/bounded/blobs/{}", img.layers[0].digest)).await;
    assert_eq!(r.status, 200, "{}", log());
    assert_eq!(sha256(r.bytes()), img.layers[0].digest);
    let r = get(&format!("{base}/v2/bounded/manifests/v1?ns=docker.io")).await;
    assert_eq!(r.status, 200, "{}", log());
    assert_eq!(sha256(r.bytes()), img.manifest.digest);
    fills_settled(&base).await;
    let started = log();
    assert!(
        started.contains(&format!("cache_max_size={}", 64 << 20)),
        "{started}"
    );
    assert!(
        started.contains(&format!("docker.io={}", upstream.url())),
        "{started}"
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "pullgate exited with {status}:\n{}",
        log()
    );
}
