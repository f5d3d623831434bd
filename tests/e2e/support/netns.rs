//! Loopback-only network namespaces for clients that fall back to the real registry when a
//! mirror fails (dockerd, containerd, podman): inside one, a fallback fails locally and
//! nothing can leave the machine.
//!
//! A test calls [`isolate`] first. Outside a namespace, it re-runs this test binary, with
//! only that test, under `unshare --net`, waits, and fails if the child failed; inside, it
//! checks that only `lo` exists and lets the test body run. Everything the test needs
//! (upstream, pullgate, the daemon) is then started inside the namespace.

use std::process::{Child, Command};
use std::time::Duration;

use super::require;

const ENV: &str = "PULLGATE_E2E_NETNS";

/// `true`: we are inside the namespace; run the body. `false`: the body ran in a child,
/// which passed.
pub fn isolate(test: &str) -> bool {
    if std::env::var_os(ENV).is_some() {
        // /proc/self/net/dev lists this namespace's interfaces (sysfs would show the host's).
        let dev = std::fs::read_to_string("/proc/self/net/dev").expect("read /proc/self/net/dev");
        let ifaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(ifaces, ["lo"], "not a loopback-only namespace: {ifaces:?}");
        return true;
    }
    require("unshare");
    require("ip");
    let exe = std::env::current_exe().expect("current test binary");
    let out = Command::new("unshare")
        .args(["--net", "--fork", "--", "sh", "-c"])
        .arg("ip link set lo up && exec \"$0\" \"$@\"")
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ENV, "1")
        .output()
        .expect("running unshare");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Shown with --nocapture, or when the test fails.
    eprintln!("--- {test}, inside its network namespace:\n{text}");
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{test} failed inside its network namespace:\n{text}"
    );
    false
}

/// A daemon the test started: stopped (TERM, then KILL) and reaped when dropped, even
/// when the test panics.
pub struct Daemon {
    pub name: &'static str,
    child: Option<Child>,
}

impl Daemon {
    pub fn new(name: &'static str, child: Child) -> Daemon {
        Daemon {
            name,
            child: Some(child),
        }
    }

    /// Panics if the daemon has already exited.
    pub fn assert_running(&mut self, log: &str) {
        if let Some(c) = &mut self.child {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("{} exited ({status}):\n{log}", self.name);
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}
