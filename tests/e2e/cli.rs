//! The binary as an operator meets it: flags, the embedded default, graceful shutdown.

use std::process::Command;

use crate::support::distribution::{Auth, Distribution};
use crate::support::http::{fills_settled, get};
use crate::support::images::{self, sha256, Flavor, Pusher};
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
