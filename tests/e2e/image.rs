//! The container image: built with buildah from the binary these tests run
//! (`docker/build-image.sh`, FROM scratch: no base image can be downloaded here), pushed to
//! a Distribution upstream, pulled back through pullgate, and its binary run from the
//! extracted layers with nothing but what the image ships.

use std::path::Path;
use std::process::Command;

use crate::support::distribution::{Auth, Distribution};
use crate::support::pullgate::{Options, Pullgate};
use crate::support::require;
use crate::support::skopeo::{self, Copy};

const BIN: &str = env!("CARGO_BIN_EXE_pullgate");

/// buildah with all of its state under `dir`: storage, run root, registries, home.
fn isolate<'a>(cmd: &'a mut Command, dir: &Path) -> &'a mut Command {
    cmd.env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
        .env("CONTAINERS_REGISTRIES_CONF", dir.join("registries.conf"))
        .env("BUILDAH_ROOT", dir.join("root"))
        .env("BUILDAH_RUNROOT", dir.join("runroot"))
        .env("REGISTRY_AUTH_FILE", dir.join("auth.json"))
        .env("HOME", dir.join("home"))
        .env("XDG_RUNTIME_DIR", dir.join("xdg"))
        .env("TMPDIR", dir.join("tmp"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn buildah_image_pushed_upstream_and_pulled_back_through_pullgate_runs() {
    require("buildah");
    require("tar");
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path();
    for d in ["root", "runroot", "home", "xdg", "tmp"] {
        std::fs::create_dir_all(w.join(d)).unwrap();
    }
    std::fs::write(
        w.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            w.join("root").display(),
            w.join("runroot").display()
        ),
    )
    .unwrap();
    std::fs::write(w.join("registries.conf"), "").unwrap();
    std::fs::write(w.join("auth.json"), "{}").unwrap();

    let upstream = Distribution::start(Auth::Anonymous);
    let digest_file = w.join("digest");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/build-image.sh");
    run(isolate(&mut Command::new(script), w)
        .arg("--push")
        .arg(format!("{}/e2e/pullgate:dev", upstream.host()))
        .arg("--digestfile")
        .arg(&digest_file)
        .args([BIN, "localhost/pullgate:e2e"]));
    let pushed = std::fs::read_to_string(&digest_file).unwrap();
    let pushed = pushed.trim();
    assert!(pushed.starts_with("sha256:"), "{pushed}");

    // Back through pullgate, byte for byte.
    let pullgate = Pullgate::start(Options::new(&upstream.url()));
    let copy = w.join("copy");
    skopeo::copy(&Copy {
        src: format!("{}/e2e/pullgate:dev", pullgate.host()),
        dest: &copy,
        all: false,
        creds: None,
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pullgate.log()));
    assert_eq!(skopeo::manifest_digest(&copy), pushed);
    let log = pullgate.log();
    assert!(log.contains("/v2/e2e/pullgate/manifests/dev"), "{log}");

    // What the image promises: non-root, port 5000, the cache volume, pullgate first.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join("manifest.json")).unwrap()).unwrap();
    let blob = |d: &serde_json::Value| {
        let hex = d["digest"].as_str().unwrap().trim_start_matches("sha256:");
        copy.join(hex)
    };
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&manifest["config"])).unwrap()).unwrap();
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532", "{config}");
    assert!(c["ExposedPorts"].get("5000/tcp").is_some(), "{config}");
    assert!(c["Volumes"].get("/var/lib/pullgate").is_some(), "{config}");
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/local/bin/pullgate"])
    );
    assert_eq!(c["WorkingDir"], "/var/lib/pullgate");
    assert_eq!(config["os"], "linux");

    // Unpack the layers and run the binary with only the image's files: its libraries,
    // its configuration, its user.
    let rootfs = w.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        run(Command::new("tar")
            .arg("-xf")
            .arg(blob(layer))
            .arg("-C")
            .arg(&rootfs));
    }
    let version = run(Command::new("chroot")
        .arg(&rootfs)
        .args(["/usr/local/bin/pullgate", "--version"]));
    assert!(
        version.starts_with(&format!("pullgate {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    // The shipped configuration is valid, checked as the image's user would run it.
    let checked = run(Command::new("chroot")
        .arg("--userspec=65532:65532")
        .arg(&rootfs)
        .args([
            "/usr/local/bin/pullgate",
            "check-config",
            "--config",
            "/etc/pullgate/pullgate.toml",
        ]));
    assert!(checked.contains("listen = \"0.0.0.0:5000\""), "{checked}");
    assert!(checked.contains("dir = \"/var/lib/pullgate\""), "{checked}");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("pullgate:x:65532:65532:"), "{passwd}");
}
