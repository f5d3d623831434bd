//! The end-to-end harness: real upstreams (CNCF Distribution), our fault upstream, real
//! clients (skopeo; dockerd, containerd and podman inside loopback-only network
//! namespaces), and pullgate itself, all started by the tests on loopback.

pub mod clients;
pub mod distribution;
pub mod fault;
pub mod http;
pub mod images;
pub mod netns;
pub mod pullgate;
/// `weed mini`, shared with the store's backend suite.
#[allow(dead_code)]
#[path = "../../../crates/store/tests/support/seaweed.rs"]
pub mod seaweed;
pub mod secret;
pub mod sign;
pub mod skopeo;
pub mod tls;
pub mod tmpfs;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A free loopback port. Another process could take it before we bind it again; the
/// window is tiny and the tests' servers fail loudly if it happens.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Wait until something accepts connections on the port.
pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Where tests/install-trust-tools.sh (run by ./tests/run-all.sh) extracts cosign and oras.
pub fn trust_tools_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/trust-tools/usr/bin")
}

/// The path of a tool the tests need. A missing tool fails the test: end-to-end tests
/// must never pass by skipping (run ./tests/run-all.sh, which installs them). The tools
/// under [`trust_tools_bin`] come first, so a `cargo test` without run-all.sh's PATH
/// finds them too.
pub fn require(tool: &str) -> PathBuf {
    let own = trust_tools_bin().join(tool);
    if own.is_file() {
        return own;
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .expect("running sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && !path.is_empty(),
        "{tool} is not installed: run ./tests/run-all.sh (it installs the test dependencies; tests/install-trust-tools.sh alone installs cosign and oras)"
    );
    PathBuf::from(path)
}

/// Poll `f` until it returns true.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
