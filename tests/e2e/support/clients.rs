//! Real container clients that fall back to the real registry when a mirror fails:
//! dockerd + the docker CLI, containerd + `ctr`, and podman. Start them only inside a
//! loopback-only network namespace ([`super::netns::run_isolated`]); each constructor
//! panics otherwise.
//!
//! Each one keeps its whole state (data roots, exec/run roots, sockets, pid files, locks,
//! configs, `HOME`, `DOCKER_CONFIG`, temporary files) in its own temporary directory, never
//! in the host's /var/lib/docker, /var/lib/containerd, /run/libpod, /etc/docker ... The
//! daemons are stopped and reaped when their guard is dropped, even when the test panics.
//!
//! What still touches fixed host paths, because the daemons hard-code them and only a
//! mount namespace could hide them: dockerd creates an empty /run/docker/plugins, and
//! podman an empty /run/containers/networks and reads /etc/containers/policy.json.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::netns::{self, Daemon};
use super::{eventually, require};

/// Run a client command: its stdout and stderr, or a panic with everything it said.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Run a client command that must fail: what it said.
pub fn fails(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "{cmd:?} succeeded but should not have:\n{text}"
    );
    text
}

/// Only stdout, trimmed (for `--format` queries).
pub fn stdout(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn spawn_logged(program: &Path, args: &[&std::ffi::OsStr], log: &Path) -> std::process::Child {
    let file = std::fs::File::create(log).expect("daemon log");
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log fd"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()))
}

/// Whether `daemon` is still running and `probe`, a CLI call against it, succeeds.
fn answers(daemon: &mut Daemon, mut probe: Command) -> bool {
    daemon.exited().is_none()
        && probe
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// The docker CLI tested against Debian's dockerd 20.10 (the docker.io package). Another,
/// newer CLI may come earlier on PATH; name Debian's.
const DOCKER_CLI: &str = "/usr/bin/docker";

/// dockerd with `registry-mirrors` (and `insecure-registries`) set to a mirror, plain HTTP
/// or TLS, vfs storage, no bridge, no iptables, listening only on a unix socket in its
/// directory, on a containerd of its own (else it would use the host's /run/containerd if
/// one runs).
pub struct Dockerd {
    // Dropped in this order: dockerd, then its containerd, then the directory.
    daemon: Daemon,
    _containerd: Containerd,
    dir: tempfile::TempDir,
}

impl Dockerd {
    /// `mirror` is `host:port`.
    pub fn start(mirror: &str) -> Dockerd {
        Dockerd::start_mirror(&format!("http://{mirror}"), mirror)
    }

    /// A mirror speaking TLS at `mirror` (`host:port`). dockerd would trust a CA only from
    /// the host's /etc/docker/certs.d, so the mirror is also in `insecure-registries`,
    /// which keeps TLS but skips verifying the chain.
    pub fn start_https(mirror: &str) -> Dockerd {
        Dockerd::start_mirror(&format!("https://{mirror}"), mirror)
    }

    fn start_mirror(url: &str, mirror: &str) -> Dockerd {
        netns::assert_isolated();
        let dockerd = require("dockerd");
        assert!(
            Path::new(DOCKER_CLI).exists(),
            "{DOCKER_CLI} is missing: run ./tests/run-all.sh (it installs docker.io)"
        );
        let containerd = Containerd::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let w = dir.path();
        std::fs::create_dir_all(w.join("cli")).unwrap();
        std::fs::create_dir_all(w.join("home")).unwrap();
        let config = serde_json::json!({
            "registry-mirrors": [url],
            "insecure-registries": [mirror],
            "storage-driver": "vfs",
            "iptables": false, "ip6tables": false, "ip-masq": false, "ip-forward": false,
            "bridge": "none", "userland-proxy": false,
            "data-root": w.join("root"), "exec-root": w.join("exec"),
            "pidfile": w.join("dockerd.pid"),
            "hosts": [format!("unix://{}", w.join("docker.sock").display())],
            "containerd": containerd.socket(),
            // dockerd 20.10 otherwise writes /etc/docker/key.json.
            "deprecated-key-path": w.join("key.json"),
            "debug": true,
        });
        std::fs::write(w.join("daemon.json"), config.to_string()).unwrap();
        let child = spawn_logged(
            &dockerd,
            &["--config-file".as_ref(), w.join("daemon.json").as_os_str()],
            &w.join("dockerd.log"),
        );
        let mut d = Dockerd {
            daemon: Daemon::new(child),
            _containerd: containerd,
            dir,
        };
        let up = eventually(Duration::from_secs(30), || {
            let mut probe = d.docker();
            probe.arg("version");
            answers(&mut d.daemon, probe)
        });
        assert!(up, "dockerd did not come up:\n{}", d.log());
        d
    }

    /// The docker CLI, talking to this daemon, with its own config directory and HOME.
    pub fn docker(&self) -> Command {
        let w = self.dir.path();
        let mut c = Command::new(DOCKER_CLI);
        c.env(
            "DOCKER_HOST",
            format!("unix://{}", w.join("docker.sock").display()),
        )
        .env("DOCKER_CONFIG", w.join("cli"))
        .env("HOME", w.join("home"));
        c
    }

    /// The CLI's config.json (credentials for `registry-mirrors` go under
    /// `https://index.docker.io/v1/`).
    pub fn cli_config(&self) -> PathBuf {
        self.dir.path().join("cli/config.json")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

/// containerd with its own root, state and sockets, the CRI plugin off, and a hosts
/// directory (`certs.d`) for `ctr images pull --hosts-dir`.
pub struct Containerd {
    daemon: Daemon,
    dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> Containerd {
        netns::assert_isolated();
        let containerd = require("containerd");
        require("ctr");
        let dir = tempfile::tempdir().expect("tempdir");
        let w = dir.path();
        let sock = w.join("containerd.sock");
        std::fs::write(
            w.join("config.toml"),
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n[grpc]\n  address = \"{}\"\n\n[ttrpc]\n  address = \"{}.ttrpc\"\n",
                w.join("root").display(),
                w.join("state").display(),
                sock.display(),
                sock.display(),
            ),
        )
        .unwrap();
        std::fs::create_dir_all(w.join("certs.d")).unwrap();
        let child = spawn_logged(
            &containerd,
            &["--config".as_ref(), w.join("config.toml").as_os_str()],
            &w.join("containerd.log"),
        );
        let mut d = Containerd {
            daemon: Daemon::new(child),
            dir,
        };
        let up = eventually(Duration::from_secs(30), || {
            let mut probe = d.ctr();
            probe.arg("version");
            answers(&mut d.daemon, probe)
        });
        assert!(up, "containerd did not come up:\n{}", d.log());
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// `ctr --address <sock> -n e2e`.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["-n", "e2e"])
            .env("HOME", self.dir.path());
        c
    }

    /// `<hosts dir>/<registry>/hosts.toml`: pull and resolve `registry` through
    /// `mirror_url` first (the `server` is only a fallback, unreachable in the namespace).
    pub fn mirror(&self, registry: &str, server: &str, mirror_url: &str) {
        let d = self.hosts_dir().join(registry);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("hosts.toml"),
            format!(
                "server = \"{server}\"\n\n[host.\"{mirror_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .unwrap();
    }

    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    /// `ctr images pull --hosts-dir <dir> <reference>` (unpacked with the native
    /// snapshotter), with more arguments (`--user u:p`) before the reference.
    pub fn pull(&self, extra: &[&str], reference: &str) -> Command {
        let mut c = self.ctr();
        c.args(["images", "pull", "--snapshotter", "native", "--hosts-dir"])
            .arg(self.hosts_dir())
            .args(extra)
            .arg(reference);
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

/// podman (no daemon) with vfs storage, its own containers.conf, storage.conf,
/// registries.conf and auth file, locks and temporary files in its directory, no systemd.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    /// `registries_conf` is the whole registries.conf (v2).
    pub fn new(registries_conf: &str) -> Podman {
        netns::assert_isolated();
        require("podman");
        let dir = tempfile::tempdir().expect("tempdir");
        let w = dir.path();
        for d in ["xdg", "tmp", "home"] {
            std::fs::create_dir_all(w.join(d)).unwrap();
        }
        std::fs::write(w.join("registries.conf"), registries_conf).unwrap();
        std::fs::write(w.join("auth.json"), "{}").unwrap();
        std::fs::write(
            w.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                w.join("runroot").display(),
                w.join("root").display()
            ),
        )
        .unwrap();
        // Without these, root's podman uses /run/libpod, /dev/shm/libpod_lock,
        // /etc/containers/networks and /var/tmp.
        std::fs::write(
            w.join("containers.conf"),
            format!(
                "[engine]\ntmp_dir = \"{tmp}\"\nstatic_dir = \"{root}/libpod\"\nvolume_path = \"{root}/volumes\"\nlock_type = \"file\"\nevents_logger = \"file\"\nevents_logfile_path = \"{tmp}/events.log\"\ncgroup_manager = \"cgroupfs\"\nimage_copy_tmp_dir = \"{bigtmp}\"\n\n[network]\nnetwork_config_dir = \"{w}/networks\"\n",
                tmp = w.join("libpod").display(),
                root = w.join("root").display(),
                bigtmp = w.join("tmp").display(),
                w = w.display(),
            ),
        )
        .unwrap();
        Podman { dir }
    }

    /// A registries.conf sending `docker.io` to a plain-HTTP mirror at `mirror`
    /// (`host:port`) before the real Docker Hub.
    pub fn mirroring_docker_io(mirror: &str) -> Podman {
        Podman::new(&format!(
            "unqualified-search-registries = [\"docker.io\"]\n\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"registry-1.docker.io\"\n\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"
        ))
    }

    pub fn podman(&self) -> Command {
        let w = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", w.join("containers.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", w.join("registries.conf"))
            .env("CONTAINERS_STORAGE_CONF", w.join("storage.conf"))
            .env("REGISTRY_AUTH_FILE", w.join("auth.json"))
            .env("XDG_RUNTIME_DIR", w.join("xdg"))
            .env("TMPDIR", w.join("tmp"))
            .env("HOME", w.join("home"))
            .arg("--root")
            .arg(w.join("root"))
            .arg("--runroot")
            .arg(w.join("runroot"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    /// skopeo with the same registries.conf, storage and auth file. skopeo ignores
    /// `CONTAINERS_REGISTRIES_CONF`, so the file is passed with `--registries-conf`.
    pub fn skopeo(&self) -> Command {
        require("skopeo");
        let w = self.dir.path();
        let mut c = Command::new("skopeo");
        c.env("CONTAINERS_CONF", w.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", w.join("storage.conf"))
            .env("REGISTRY_AUTH_FILE", w.join("auth.json"))
            .env("XDG_RUNTIME_DIR", w.join("xdg"))
            .env("TMPDIR", w.join("tmp"))
            .env("HOME", w.join("home"))
            .arg("--registries-conf")
            .arg(w.join("registries.conf"))
            .arg("--insecure-policy");
        c
    }

    /// A scratch directory of this client's.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The auth file podman reads and `podman login` writes.
    pub fn auth_file(&self) -> PathBuf {
        self.dir.path().join("auth.json")
    }
}
