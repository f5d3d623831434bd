//! `[cluster]` before the proxying step (issue 18, third increment): `check-config` shows
//! the section and looks at the key file without printing it; `serve` accepts it, says
//! out loud that it is not used yet, and opens no internal port.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::free_port;
use crate::support::pullgate::{Options, Pullgate};

const SECRET: &str = "cluster-key-that-must-never-show-0123456789";

#[test]
fn check_config_shows_the_cluster_and_never_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, format!("{SECRET}\n")).unwrap();
    let config = dir.path().join("pullgate.toml");
    let check = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pullgate"))
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let text = format!(
        "[cluster]\ndns = \"pullgate-peers.pullgate.svc.cluster.local:5001\"\n\
         advertise = \"10.0.0.7:5001\"\nkey = \"{}\"\n",
        key.display()
    );
    let (ok, stdout, stderr) = check(&text);
    assert!(ok, "{stdout}\n{stderr}");
    for want in [
        "[cluster]",
        "dns = \"pullgate-peers.pullgate.svc.cluster.local:5001\"",
        "advertise = \"10.0.0.7:5001\"",
        "listen = \"0.0.0.0:5001\"",
        "refresh = \"10s\"",
        &format!("key = \"{}\"", key.display()),
    ] {
        assert!(stdout.contains(want), "{want} missing:\n{stdout}");
    }
    assert!(
        stderr.contains(&format!("ok       cluster key {}", key.display())),
        "{stderr}"
    );
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));

    // A key that cannot be read is a warning, not a failure: a config is often checked
    // where secrets are not mounted.
    std::fs::remove_file(&key).unwrap();
    let (ok, _, stderr) = check(&text);
    assert!(ok && stderr.contains("warning  cluster key"), "{stderr}");

    // A replica missing from its own static list is refused, naming the key.
    let (ok, _, stderr) = check(&format!(
        "[cluster]\npeers = [\"10.0.0.1:5001\"]\nadvertise = \"10.0.0.2:5001\"\nkey = \"{}\"\n",
        key.display()
    ));
    assert!(
        !ok && stderr.contains("not one of cluster.peers"),
        "{stderr}"
    );
}

#[test]
fn serve_accepts_a_cluster_says_it_is_unused_and_opens_no_internal_port() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, SECRET).unwrap();
    let internal = free_port();
    // No upstream is contacted: the test pulls nothing.
    let mut opts = Options::new("http://127.0.0.1:9");
    opts.extra = format!(
        "[cluster]\npeers = [\"127.0.0.1:{internal}\", \"127.0.0.2:{internal}\"]\n\
         listen = \"127.0.0.1:{internal}\"\nkey = \"{}\"\n",
        key.display()
    );
    let p = Pullgate::start(opts);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.log().contains("[cluster] is validated but not used yet") {
        assert!(Instant::now() < deadline, "no warning; log:\n{}", p.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", internal)).is_err(),
        "the internal port is open"
    );
    assert!(!p.log().contains(SECRET));
}
