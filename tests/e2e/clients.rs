//! Real clients through pullgate, each inside its own loopback-only network namespace
//! (they fall back to the real registry when a mirror fails): dockerd with
//! `registry-mirrors`, containerd's `ctr` with `hosts.toml`, podman with a `registries.conf`
//! mirror; anonymously, and with credentials (`docker login`, `ctr --user`, `podman login`).
//!
//! pullgate stands in for Docker Hub (upstream name `docker.io`, so a one-component name
//! gets `library/`), in front of a Distribution upstream. Every test proves the pull went
//! through pullgate: the upstream's access log shows pullgate fetching each blob once.

use std::io::Write as _;
use std::process::Stdio;

use crate::support::clients::{fails, run, stdout, Containerd, Dockerd, Podman};
use crate::support::distribution::{Auth, Distribution};
use crate::support::free_port;
use crate::support::images::{self, sha256, Blob, Flavor, Image, Index, Pusher};
use crate::support::netns::run_isolated;
use crate::support::pullgate::{Options, Pullgate};
use crate::support::secret::{dockerconfigjson, SecretVolume};

const LAYERS: &[usize] = &[256 * 1024, 64 * 1024];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A Distribution upstream, and pullgate in front of it standing in for Docker Hub.
struct Hub {
    upstream: Distribution,
    pullgate: Pullgate,
    _secrets: tempfile::TempDir,
}

impl Hub {
    /// pullgate without client authentication.
    fn anonymous() -> Hub {
        Hub::start(None, &[])
    }

    /// pullgate on `port`, requiring the credentials of `entries` (key, user, password)
    /// from a kubelet-style secret volume.
    fn with_clients(port: u16, entries: &[(&str, &str, &str)]) -> Hub {
        Hub::start(Some(port), entries)
    }

    fn start(port: Option<u16>, entries: &[(&str, &str, &str)]) -> Hub {
        let upstream = Distribution::start(Auth::Anonymous);
        let secrets = tempfile::tempdir().unwrap();
        let mut opts = Options::new(&upstream.url());
        opts.upstream_name = "docker.io".into();
        opts.port = port;
        if !entries.is_empty() {
            let volume = secrets.path().join("clients");
            SecretVolume::new(&volume, dockerconfigjson(entries).as_bytes());
            opts.extra = format!("[auth]\nclient_secrets = [\"{}\"]\n", volume.display());
        }
        let pullgate = Pullgate::start(opts);
        Hub {
            upstream,
            pullgate,
            _secrets: secrets,
        }
    }

    /// Push `library/<name>:latest` to the upstream.
    fn push_image(&self, name: &str, image: &Image) {
        runtime().block_on(Pusher::new(&self.upstream.url(), None).image(
            &format!("library/{name}"),
            "latest",
            image,
        ));
    }

    fn push_index(&self, name: &str, index: &Index) {
        runtime().block_on(Pusher::new(&self.upstream.url(), None).index(
            &format!("library/{name}"),
            "latest",
            index,
        ));
    }

    /// pullgate fetched each blob from the upstream exactly once.
    fn assert_fetched_once<'a>(&self, name: &str, blobs: impl IntoIterator<Item = &'a Blob>) {
        for b in blobs {
            let path = format!("/v2/library/{name}/blobs/{}", b.digest);
            assert_eq!(
                self.upstream.count("GET", &path),
                1,
                "{path} was not fetched through pullgate once:\n{}",
                self.pullgate.log()
            );
        }
    }

    /// … and never these (another platform's).
    fn assert_never_fetched<'a>(&self, name: &str, blobs: impl IntoIterator<Item = &'a Blob>) {
        for b in blobs {
            let path = format!("/v2/library/{name}/blobs/{}", b.digest);
            assert_eq!(self.upstream.count("GET", &path), 0, "{path} was fetched");
        }
    }
}

/// The diff IDs of an image's (uncompressed) layers, as clients report `RootFS.Layers`.
fn diff_ids(image: &Image) -> String {
    serde_json::to_string(&image.layers.iter().map(|l| &l.digest).collect::<Vec<_>>()).unwrap()
}

/// containerd's snapshot key for the image's top layer (the OCI chain ID).
fn chain_id(image: &Image) -> String {
    image
        .layers
        .iter()
        .map(|l| l.digest.clone())
        .reduce(|chain, diff| sha256(format!("{chain} {diff}").as_bytes()))
        .expect("layers")
}

#[test]
fn docker_pull_through_registry_mirrors() {
    run_isolated("clients::docker_pull_through_registry_mirrors", || {
        let hub = Hub::anonymous();
        // A Docker manifest list, as most Docker Hub images are; dockerd picks linux/amd64.
        let list = images::index("e2e-docker", LAYERS, Flavor::Docker);
        hub.push_index("e2e-docker", &list);
        let dockerd = Dockerd::start(&hub.pullgate.host());

        // A Docker Hub name: only registry-mirrors can serve it here.
        run(dockerd.docker().args(["pull", "e2e-docker:latest"]));
        let inspect = |format: &str| {
            stdout(dockerd.docker().args([
                "image",
                "inspect",
                "--format",
                format,
                "e2e-docker:latest",
            ]))
        };
        let amd64 = &list.images[0];
        // Schema 2: the image ID is the config's digest.
        assert_eq!(inspect("{{.Id}}"), amd64.config.digest, "{}", dockerd.log());
        assert_eq!(
            inspect("{{json .RepoDigests}}"),
            format!("[\"e2e-docker@{}\"]", list.manifest.digest)
        );
        assert_eq!(inspect("{{json .RootFS.Layers}}"), diff_ids(amd64));
        hub.assert_fetched_once("e2e-docker", amd64.blobs());
        hub.assert_never_fetched("e2e-docker", list.images[1].blobs());

        // The other platform, asked for by name.
        run(dockerd
            .docker()
            .args(["pull", "--platform", "linux/arm64", "e2e-docker:latest"]));
        let arm64 = &list.images[1];
        assert_eq!(inspect("{{.Architecture}}"), "arm64");
        assert_eq!(inspect("{{.Id}}"), arm64.config.digest);
        assert_eq!(inspect("{{json .RootFS.Layers}}"), diff_ids(arm64));
        hub.assert_fetched_once("e2e-docker", list.images.iter().flat_map(Image::blobs));
        let log = hub.pullgate.log();
        assert!(
            log.contains("/v2/library/e2e-docker/manifests/latest"),
            "{log}"
        );
    });
}

#[test]
fn containerd_ctr_pull_with_hosts_toml() {
    run_isolated("clients::containerd_ctr_pull_with_hosts_toml", || {
        let hub = Hub::anonymous();
        let index = images::index("e2e-containerd", LAYERS, Flavor::Oci);
        hub.push_index("e2e-containerd", &index);
        let containerd = Containerd::start();
        containerd.mirror(
            "docker.io",
            "https://registry-1.docker.io",
            &hub.pullgate.url(),
        );

        let reference = "docker.io/library/e2e-containerd:latest";
        run(&mut containerd.pull(&[], reference));
        let list = run(containerd.ctr().args(["images", "ls"]));
        assert!(
            list.lines()
                .any(|l| l.starts_with(reference) && l.contains(&index.manifest.digest)),
            "{list}\n{}",
            hub.pullgate.log()
        );
        // Unpacked: the top layer's snapshot exists.
        let amd64 = &index.images[0];
        run(containerd
            .ctr()
            .args(["snapshots", "--snapshotter", "native", "info"])
            .arg(chain_id(amd64)));
        hub.assert_fetched_once("e2e-containerd", amd64.blobs());
        hub.assert_never_fetched("e2e-containerd", index.images[1].blobs());

        // The other platform, asked for by name, fetched and unpacked too.
        let arm64 = &index.images[1];
        run(&mut containerd.pull(&["--platform", "linux/arm64"], reference));
        run(containerd
            .ctr()
            .args(["snapshots", "--snapshotter", "native", "info"])
            .arg(chain_id(arm64)));
        hub.assert_fetched_once("e2e-containerd", index.images.iter().flat_map(Image::blobs));
        // containerd names the registry it mirrors.
        let log = hub.pullgate.log();
        assert!(log.contains("/v2/library/e2e-containerd/"), "{log}");
    });
}

#[test]
fn podman_pull_with_registries_conf_mirror() {
    run_isolated("clients::podman_pull_with_registries_conf_mirror", || {
        let hub = Hub::anonymous();
        let index = images::index("e2e-podman", LAYERS, Flavor::Oci);
        hub.push_index("e2e-podman", &index);
        let podman = Podman::mirroring_docker_io(&hub.pullgate.host());

        let reference = "docker.io/library/e2e-podman:latest";
        run(podman.podman().args(["pull", reference]));
        let inspect = |format: &str| {
            stdout(
                podman
                    .podman()
                    .args(["image", "inspect", "--format", format, reference]),
            )
        };
        let amd64 = &index.images[0];
        assert_eq!(
            inspect("{{.Digest}}"),
            index.manifest.digest,
            "{}",
            hub.pullgate.log()
        );
        assert_eq!(
            format!("sha256:{}", inspect("{{.Id}}")),
            amd64.config.digest
        );
        assert_eq!(inspect("{{json .RootFS.Layers}}"), diff_ids(amd64));
        hub.assert_fetched_once("e2e-podman", amd64.blobs());
        hub.assert_never_fetched("e2e-podman", index.images[1].blobs());

        // The other platform, asked for by name.
        let arm64 = &index.images[1];
        run(podman.podman().args(["pull", "--arch", "arm64", reference]));
        assert_eq!(inspect("{{.Architecture}}"), "arm64");
        assert_eq!(
            format!("sha256:{}", inspect("{{.Id}}")),
            arm64.config.digest
        );
        hub.assert_fetched_once("e2e-podman", index.images.iter().flat_map(Image::blobs));
        let log = hub.pullgate.log();
        assert!(
            log.contains("/v2/library/e2e-podman/manifests/latest"),
            "{log}"
        );
    });
}

#[test]
fn skopeo_copy_through_a_registries_conf_mirror() {
    run_isolated(
        "clients::skopeo_copy_through_a_registries_conf_mirror",
        || {
            let hub = Hub::anonymous();
            let index = images::index("e2e-skopeo", LAYERS, Flavor::Docker);
            hub.push_index("e2e-skopeo", &index);
            let client = Podman::mirroring_docker_io(&hub.pullgate.host());
            let reference = "docker://docker.io/library/e2e-skopeo:latest";

            // One platform, chosen by name: only its manifest and blobs are fetched.
            let arm64_dir = client.scratch("arm64");
            run(client
                .skopeo()
                .args(["copy", "--quiet", "--override-arch", "arm64", reference])
                .arg(format!("dir:{}", arm64_dir.display())));
            let arm64 = &index.images[1];
            assert_eq!(
                crate::support::skopeo::manifest_digest(&arm64_dir),
                arm64.manifest.digest
            );
            hub.assert_fetched_once("e2e-skopeo", arm64.blobs());
            hub.assert_never_fetched("e2e-skopeo", index.images[0].blobs());

            // The whole list, byte for byte.
            let all_dir = client.scratch("all");
            run(client
                .skopeo()
                .args(["copy", "--quiet", "--all", reference])
                .arg(format!("dir:{}", all_dir.display())));
            assert_eq!(
                crate::support::skopeo::manifest_digest(&all_dir),
                index.manifest.digest
            );
            hub.assert_fetched_once("e2e-skopeo", index.images.iter().flat_map(Image::blobs));
            let log = hub.pullgate.log();
            assert!(log.contains("skopeo/"), "{log}");
        },
    );
}

#[test]
fn docker_login_and_pull_through_registry_mirrors() {
    run_isolated(
        "clients::docker_login_and_pull_through_registry_mirrors",
        || {
            let port = free_port();
            let mirror = format!("127.0.0.1:{port}");
            let hub = Hub::with_clients(
                port,
                &[
                    // `docker login <mirror>` then pulls by the mirror's name.
                    (&mirror, "laptop", "laptop-pw"),
                    // registry-mirrors sends the user's Docker Hub credentials.
                    ("https://index.docker.io/v1/", "hubuser", "hub-pw"),
                ],
            );
            let image = images::image("e2e-docker", LAYERS, Flavor::Docker, "amd64");
            hub.push_image("e2e-docker", &image);
            let dockerd = Dockerd::start(&mirror);

            // No credentials: the mirror refuses, and so does the (unreachable) Hub.
            fails(dockerd.docker().args(["pull", "e2e-docker:latest"]));

            // Docker Hub credentials in the CLI config reach the mirror through
            // registry-mirrors.
            std::fs::write(
                dockerd.cli_config(),
                dockerconfigjson(&[("https://index.docker.io/v1/", "hubuser", "hub-pw")]),
            )
            .unwrap();
            run(dockerd.docker().args(["pull", "e2e-docker:latest"]));
            let id = stdout(dockerd.docker().args([
                "image",
                "inspect",
                "--format",
                "{{.Id}}",
                "e2e-docker:latest",
            ]));
            assert_eq!(id, image.config.digest, "{}", hub.pullgate.log());
            hub.assert_fetched_once("e2e-docker", image.blobs());

            // docker login to the mirror itself, then pull by the mirror's name.
            std::fs::write(dockerd.cli_config(), "{}").unwrap();
            let mut login = dockerd
                .docker()
                .args(["login", "-u", "laptop", "--password-stdin", &mirror])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            login.stdin.take().unwrap().write_all(b"laptop-pw").unwrap();
            let out = login.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "docker login: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let by_mirror = format!("{mirror}/library/e2e-docker:latest");
            run(dockerd.docker().args(["pull", &by_mirror]));
            let id = stdout(
                dockerd
                    .docker()
                    .args(["image", "inspect", "--format", "{{.Id}}", &by_mirror]),
            );
            assert_eq!(id, image.config.digest);
            // A wrong password is refused at login.
            fails(
                dockerd
                    .docker()
                    .args(["login", "-u", "laptop", "-p", "wrong", &mirror]),
            );
        },
    );
}

#[test]
fn containerd_ctr_pull_with_hosts_toml_and_credentials() {
    run_isolated(
        "clients::containerd_ctr_pull_with_hosts_toml_and_credentials",
        || {
            // kubelet hands containerd the pod's secret entry for the image's own registry.
            let hub = Hub::with_clients(free_port(), &[("docker.io", "kube", "kube-pw")]);
            let image = images::image("e2e-ctr", LAYERS, Flavor::Oci, "amd64");
            hub.push_image("e2e-ctr", &image);
            let containerd = Containerd::start();
            containerd.mirror(
                "docker.io",
                "https://registry-1.docker.io",
                &hub.pullgate.url(),
            );

            let reference = "docker.io/library/e2e-ctr:latest";
            fails(&mut containerd.pull(&[], reference));
            fails(&mut containerd.pull(&["--user", "kube:wrong"], reference));
            run(&mut containerd.pull(&["--user", "kube:kube-pw"], reference));
            let list = run(containerd.ctr().args(["images", "ls"]));
            assert!(
                list.contains(&image.manifest.digest),
                "{list}\n{}",
                hub.pullgate.log()
            );
            hub.assert_fetched_once("e2e-ctr", image.blobs());
        },
    );
}

#[test]
fn podman_login_and_pull_with_a_registries_conf_mirror() {
    run_isolated(
        "clients::podman_login_and_pull_with_a_registries_conf_mirror",
        || {
            let port = free_port();
            let mirror = format!("127.0.0.1:{port}");
            let hub = Hub::with_clients(port, &[(&mirror, "dev", "dev-pw")]);
            let image = images::image("e2e-podman", LAYERS, Flavor::Oci, "amd64");
            hub.push_image("e2e-podman", &image);
            let podman = Podman::mirroring_docker_io(&mirror);

            let reference = "docker.io/library/e2e-podman:latest";
            fails(podman.podman().args(["pull", reference]));
            run(podman.podman().args([
                "login",
                "--tls-verify=false",
                "-u",
                "dev",
                "-p",
                "dev-pw",
                &mirror,
            ]));
            let auth = std::fs::read_to_string(podman.auth_file()).unwrap();
            assert!(auth.contains(&mirror), "{auth}");
            run(podman.podman().args(["pull", reference]));
            let digest = stdout(podman.podman().args([
                "image",
                "inspect",
                "--format",
                "{{.Digest}}",
                reference,
            ]));
            assert_eq!(digest, image.manifest.digest, "{}", hub.pullgate.log());
            hub.assert_fetched_once("e2e-podman", image.blobs());
        },
    );
}
