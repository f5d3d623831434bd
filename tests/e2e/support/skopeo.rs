//! skopeo, a real client (containers/image), copying images to `dir:` layouts, which keep
//! manifests byte for byte (an `oci:` destination would convert Docker manifests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::images::sha256;
use super::require;

pub struct Copy<'a> {
    pub src: String,
    pub dest: &'a Path,
    pub all: bool,
    pub creds: Option<(&'a str, &'a str)>,
}

/// `skopeo copy docker://<src> dir:<dest>`; Err carries skopeo's stderr.
pub fn copy(c: &Copy<'_>) -> Result<(), String> {
    require("skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--retry-times=0",
    ]);
    if c.all {
        cmd.arg("--all");
    }
    if let Some((u, p)) = c.creds {
        cmd.arg("--src-creds").arg(format!("{u}:{p}"));
    } else {
        cmd.arg("--src-no-creds");
    }
    cmd.arg(format!("docker://{}", c.src))
        .arg(format!("dir:{}", c.dest.display()));
    // Keep the user's registries.conf and auth files out of it.
    cmd.env("REGISTRY_AUTH_FILE", "/dev/null/none")
        .env("HOME", c.dest.parent().unwrap_or(Path::new("/tmp")));
    let out = cmd.output().map_err(|e| format!("running skopeo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Every file of a `dir:` copy with its sha256, except skopeo's `version` file.
pub fn contents(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .expect("read copy dir")
        .map(|e| e.expect("dir entry"))
        .filter(|e| e.file_name() != "version")
        .map(|e| {
            let bytes = std::fs::read(e.path()).expect("read copied file");
            (e.file_name().to_string_lossy().into_owned(), sha256(&bytes))
        })
        .collect()
}

/// The digest of the top-level manifest of a `dir:` copy.
pub fn manifest_digest(dir: &Path) -> String {
    sha256(&std::fs::read(dir.join("manifest.json")).expect("manifest.json"))
}

/// [`copy`] without credentials, off the async runtime's threads.
pub async fn pull(src: String, dest: PathBuf, all: bool) -> Result<(), String> {
    pull_with(src, dest, all, None).await
}

/// [`copy`] off the async runtime's threads, with `--src-creds user:password` if given.
pub async fn pull_with(
    src: String,
    dest: PathBuf,
    all: bool,
    creds: Option<(String, String)>,
) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        copy(&Copy {
            src,
            dest: &dest,
            all,
            creds: creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
        })
    })
    .await
    .map_err(|e| format!("skopeo task: {e}"))?
}
