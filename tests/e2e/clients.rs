//! Real clients through pullgate, each inside its own loopback-only network namespace
//! (they fall back to the real registry when a mirror fails): dockerd with
//! `registry-mirrors` and `docker login`, containerd's `ctr` with `hosts.toml` and
//! credentials, podman with a `registries.conf` mirror and `podman login`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::distribution::{Auth, Distribution};
use crate::support::images::{self, Flavor, Image, Pusher};
use crate::support::netns::{isolate, Daemon};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::secret::{dockerconfigjson, SecretVolume};
use crate::support::{eventually, free_port, require};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Run a client command; its output, or a panic with everything it said.
fn run(cmd: &mut Command) -> String {
    let out = cmd
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

fn fails(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        !out.status.success(),
        "{cmd:?} succeeded but should not have"
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A Distribution upstream holding `library/<name>:latest`, and pullgate in front of it
/// standing in for Docker Hub (upstream name `docker.io`), requiring the credentials of
/// `entries` (key, user, password) from a kubelet-style secret volume.
struct Setup {
    upstream: Distribution,
    pullgate: Pullgate,
    image: Image,
    _dir: tempfile::TempDir,
}

fn setup(
    rt: &tokio::runtime::Runtime,
    name: &str,
    flavor: Flavor,
    port: u16,
    entries: &[(&str, &str, &str)],
) -> Setup {
    let upstream = Distribution::start(Auth::Anonymous);
    let image = images::image(name, &[256 * 1024, 64 * 1024], flavor, "amd64");
    rt.block_on(Pusher::new(&upstream.url(), None).image(
        &format!("library/{name}"),
        "latest",
        &image,
    ));
    let dir = tempfile::tempdir().unwrap();
    SecretVolume::new(
        &dir.path().join("clients"),
        dockerconfigjson(entries).as_bytes(),
    );
    let mut opts = Options::new(&upstream.url());
    opts.upstream_name = "docker.io".into();
    opts.port = Some(port);
    opts.extra = format!(
        "[auth]\nclient_secrets = [\"{}\"]\n",
        dir.path().join("clients").display()
    );
    let pullgate = Pullgate::start(opts);
    Setup {
        upstream,
        pullgate,
        image,
        _dir: dir,
    }
}

impl Setup {
    /// Every blob of the image was fetched from the upstream by pullgate, once.
    fn assert_pulled_through_pullgate(&self, name: &str) {
        for b in self.image.blobs() {
            let path = format!("/v2/library/{name}/blobs/{}", b.digest);
            assert_eq!(
                self.upstream.count("GET", &path),
                1,
                "{path} was not fetched through pullgate:\n{}",
                self.pullgate.log()
            );
        }
    }
}

#[test]
fn docker_login_and_pull_through_registry_mirrors() {
    if !isolate("clients::docker_login_and_pull_through_registry_mirrors") {
        return;
    }
    require("dockerd");
    // Debian's CLI, the one tested with its dockerd (another may sit earlier on PATH).
    assert!(
        Path::new("/usr/bin/docker").exists(),
        "/usr/bin/docker is missing: run ./tests/run-all.sh (it installs docker.io)"
    );
    let rt = runtime();
    let port = free_port();
    let mirror = format!("127.0.0.1:{port}");
    let s = setup(
        &rt,
        "e2e-docker",
        Flavor::Docker,
        port,
        &[
            // `docker login <mirror>` then pulls by the mirror's name.
            (&mirror, "laptop", "laptop-pw"),
            // registry-mirrors sends the user's Docker Hub credentials.
            ("https://index.docker.io/v1/", "hubuser", "hub-pw"),
        ],
    );
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let sock = w.join("docker.sock");
    std::fs::create_dir_all(w.join("cli")).unwrap();
    let daemon_json = serde_json::json!({
        "registry-mirrors": [format!("http://{mirror}")],
        "insecure-registries": [mirror],
        "storage-driver": "vfs",
        "iptables": false, "ip6tables": false, "ip-masq": false, "ip-forward": false,
        "bridge": "none", "userland-proxy": false,
        "data-root": w.join("root"), "exec-root": w.join("exec"),
        "pidfile": w.join("dockerd.pid"),
        "hosts": [format!("unix://{}", sock.display())],
    });
    std::fs::write(w.join("daemon.json"), daemon_json.to_string()).unwrap();
    let key_json_existed = Path::new("/etc/docker/key.json").exists();
    let log = std::fs::File::create(w.join("dockerd.log")).unwrap();
    let mut dockerd = Daemon::new(
        "dockerd",
        Command::new("dockerd")
            .arg("--config-file")
            .arg(w.join("daemon.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd"),
    );
    let docker = || {
        let mut c = Command::new("/usr/bin/docker");
        c.env("DOCKER_HOST", format!("unix://{}", sock.display()))
            .env("DOCKER_CONFIG", w.join("cli"));
        c
    };
    let dockerd_log = || std::fs::read_to_string(w.join("dockerd.log")).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(60), || docker()
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())),
        "dockerd did not come up:\n{}",
        dockerd_log()
    );
    dockerd.assert_running(&dockerd_log());

    // No credentials: the mirror refuses, and so does the (unreachable) Hub.
    fails(docker().args(["pull", "e2e-docker:latest"]));

    // Docker Hub credentials in the CLI config reach the mirror through registry-mirrors.
    std::fs::write(
        w.join("cli/config.json"),
        dockerconfigjson(&[("https://index.docker.io/v1/", "hubuser", "hub-pw")]),
    )
    .unwrap();
    run(docker().args(["pull", "e2e-docker:latest"]));
    let id = run(docker().args([
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "e2e-docker:latest",
    ]));
    assert_eq!(id.trim(), s.image.config.digest, "{}", s.pullgate.log());
    s.assert_pulled_through_pullgate("e2e-docker");

    // docker login to the mirror itself, then pull by the mirror's name.
    std::fs::write(w.join("cli/config.json"), "{}").unwrap();
    let mut login = docker();
    login
        .args(["login", "-u", "laptop", "--password-stdin", &mirror])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = login.spawn().unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"laptop-pw").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker login: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let by_mirror = format!("{mirror}/library/e2e-docker:latest");
    run(docker().args(["pull", &by_mirror]));
    let id = run(docker().args(["image", "inspect", "--format", "{{.Id}}", &by_mirror]));
    assert_eq!(id.trim(), s.image.config.digest);
    // A wrong password is refused at login.
    let mut bad = docker();
    bad.args(["login", "-u", "laptop", "-p", "wrong", &mirror]);
    fails(&mut bad);

    drop(dockerd);
    if !key_json_existed {
        let _ = std::fs::remove_file("/etc/docker/key.json");
    }
}

#[test]
fn containerd_ctr_pull_with_hosts_toml_and_credentials() {
    if !isolate("clients::containerd_ctr_pull_with_hosts_toml_and_credentials") {
        return;
    }
    require("containerd");
    require("ctr");
    let rt = runtime();
    let port = free_port();
    // kubelet hands containerd the pod's secret entry for the image's own registry.
    let s = setup(
        &rt,
        "e2e-ctr",
        Flavor::Oci,
        port,
        &[("docker.io", "kube", "kube-pw")],
    );
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let sock = w.join("containerd.sock");
    std::fs::write(
        w.join("config.toml"),
        format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}.ttrpc\"\n",
            w.join("root").display(),
            w.join("state").display(),
            sock.display(),
            sock.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(w.join("certs.d/docker.io")).unwrap();
    std::fs::write(
        w.join("certs.d/docker.io/hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n[host.\"http://127.0.0.1:{port}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(w.join("containerd.log")).unwrap();
    let mut containerd = Daemon::new(
        "containerd",
        Command::new("containerd")
            .arg("--config")
            .arg(w.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd"),
    );
    let ctr = || {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&sock).args(["-n", "e2e"]);
        c
    };
    let clog = || std::fs::read_to_string(w.join("containerd.log")).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(30), || ctr()
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())),
        "containerd did not come up:\n{}",
        clog()
    );
    containerd.assert_running(&clog());
    let pull = |user: Option<&str>| {
        let mut c = ctr();
        c.args(["images", "pull", "--snapshotter", "native", "--hosts-dir"])
            .arg(w.join("certs.d"));
        if let Some(u) = user {
            c.args(["--user", u]);
        }
        c.arg("docker.io/library/e2e-ctr:latest");
        c
    };
    fails(&mut pull(None));
    fails(&mut pull(Some("kube:wrong")));
    run(&mut pull(Some("kube:kube-pw")));
    let list = run(ctr().args(["images", "ls"]));
    assert!(
        list.contains(&s.image.manifest.digest),
        "{list}\n{}",
        s.pullgate.log()
    );
    s.assert_pulled_through_pullgate("e2e-ctr");
}

#[test]
fn podman_login_and_pull_with_a_registries_conf_mirror() {
    if !isolate("clients::podman_login_and_pull_with_a_registries_conf_mirror") {
        return;
    }
    require("podman");
    let rt = runtime();
    let port = free_port();
    let mirror = format!("127.0.0.1:{port}");
    let s = setup(
        &rt,
        "e2e-podman",
        Flavor::Oci,
        port,
        &[(&mirror, "dev", "dev-pw")],
    );
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(
        w.join("registries.conf"),
        format!(
            "unqualified-search-registries = [\"docker.io\"]\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"registry-1.docker.io\"\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"
        ),
    )
    .unwrap();
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
    let podman = || {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_REGISTRIES_CONF", w.join("registries.conf"))
            .env("CONTAINERS_STORAGE_CONF", w.join("storage.conf"))
            .env("REGISTRY_AUTH_FILE", w.join("auth.json"))
            .env("XDG_RUNTIME_DIR", w.join("xdg"))
            .env("HOME", w)
            .args(["--root"])
            .arg(w.join("root"))
            .arg("--runroot")
            .arg(w.join("runroot"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ]);
        c
    };
    std::fs::create_dir_all(w.join("xdg")).unwrap();
    fails(podman().args(["pull", "docker.io/library/e2e-podman:latest"]));
    run(podman().args([
        "login",
        "--tls-verify=false",
        "-u",
        "dev",
        "-p",
        "dev-pw",
        &mirror,
    ]));
    run(podman().args(["pull", "docker.io/library/e2e-podman:latest"]));
    let digest = run(podman().args([
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        "docker.io/library/e2e-podman:latest",
    ]));
    assert_eq!(
        digest.trim(),
        s.image.manifest.digest,
        "{}",
        s.pullgate.log()
    );
    s.assert_pulled_through_pullgate("e2e-podman");
}
