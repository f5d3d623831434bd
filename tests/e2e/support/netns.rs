//! Loopback-only network namespaces for clients that fall back to the real registry when a
//! mirror fails (dockerd, containerd, podman): inside one, a fallback fails locally and
//! nothing can leave the machine.
//!
//! A test wraps its body in [`run_isolated`]. Outside a namespace, that re-runs this test
//! binary, with only that test, under `unshare --net`, waits, and fails if the child failed;
//! inside, it checks that only `lo` exists and runs the body. Everything the test needs
//! (upstream, pullgate, the daemon) is then started inside the namespace.

use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use super::require;

const ENV: &str = "PULLGATE_E2E_NETNS";

/// Run `body` inside a fresh loopback-only network namespace. `test` is the test's path
/// in this binary (`clients::docker_pull_through_registry_mirrors`): the namespace runs
/// the binary again with `--exact <test>`.
pub fn run_isolated(test: &str, body: impl FnOnce()) {
    if isolate(test) {
        body();
    }
}

/// `true`: we are inside the namespace; run the body. `false`: the body ran in a child,
/// which passed.
pub fn isolate(test: &str) -> bool {
    if std::env::var_os(ENV).is_some() {
        assert_isolated();
        return true;
    }
    require("unshare");
    require("ip");
    let exe = std::env::current_exe().expect("current test binary");
    // --kill-child: if this process dies, so does the test in the namespace.
    let out = Command::new("unshare")
        .args(["--net", "--fork", "--kill-child", "--", "sh", "-c"])
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
    // "1 passed": a misspelt test path would run nothing and pass.
    assert!(
        out.status.success() && text.contains("test result: ok. 1 passed"),
        "{test} failed inside its network namespace:\n{text}"
    );
    false
}

/// Panics unless this process is in a namespace [`isolate`] made, with only `lo`.
pub fn assert_isolated() {
    assert!(
        std::env::var_os(ENV).is_some(),
        "start real clients only inside netns::run_isolated"
    );
    // /proc/self/net/dev lists this namespace's interfaces; /sys/class/net would still show
    // the host's (sysfs keeps the network namespace it was mounted in).
    let dev = std::fs::read_to_string("/proc/self/net/dev").expect("read /proc/self/net/dev");
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "not a loopback-only namespace: {ifaces:?}");
}

/// A daemon the test started: stopped (TERM, then KILL) and reaped when dropped, even
/// when the test panics.
pub struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    pub fn new(child: Child) -> Daemon {
        Daemon { child: Some(child) }
    }

    /// How it exited, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
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
        // It did not stop: kill it and what it started (dockerd's own containerd).
        let tree = descendants(c.id());
        let _ = c.kill();
        let _ = c.wait();
        for pid in tree {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// The processes descended from `root`, from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == p)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    out.remove(0);
    out
}
