//! A Kubernetes secret volume as kubelet lays it out, rotated the way kubelet rotates it:
//! `<dir>/..<timestamp>/.dockerconfigjson`, `<dir>/..data -> ..<timestamp>`, and
//! `<dir>/.dockerconfigjson -> ..data/.dockerconfigjson`; a rotation writes a new
//! timestamped directory, swaps `..data` atomically (symlink + rename) and removes the old.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use base64::Engine;

pub struct SecretVolume {
    pub dir: PathBuf,
    generation: u32,
    current: Option<PathBuf>,
}

/// `{"auths": {key: {"auth": base64(user:password)}}}` for each entry.
pub fn dockerconfigjson(entries: &[(&str, &str, &str)]) -> String {
    let mut auths = serde_json::Map::new();
    for (key, user, password) in entries {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        auths.insert((*key).to_owned(), serde_json::json!({ "auth": auth }));
    }
    serde_json::json!({ "auths": auths }).to_string()
}

impl SecretVolume {
    /// A `kubernetes.io/dockerconfigjson` secret.
    pub fn new(dir: &Path, content: &[u8]) -> SecretVolume {
        SecretVolume::with_files(dir, &[(".dockerconfigjson", content)])
    }

    /// A secret with these keys (e.g. `tls.crt` and `tls.key` of a `kubernetes.io/tls`).
    pub fn with_files(dir: &Path, files: &[(&str, &[u8])]) -> SecretVolume {
        std::fs::create_dir_all(dir).expect("secret dir");
        let mut v = SecretVolume {
            dir: dir.to_owned(),
            generation: 0,
            current: None,
        };
        v.rotate_files(files);
        for (name, _) in files {
            symlink(format!("..data/{name}"), dir.join(name)).expect("symlink");
        }
        v
    }

    /// Publish new dockerconfigjson content as kubelet does.
    pub fn rotate(&mut self, content: &[u8]) {
        self.rotate_files(&[(".dockerconfigjson", content)]);
    }

    /// Publish new content for every key at once, as kubelet does: one `..data` swap.
    pub fn rotate_files(&mut self, files: &[(&str, &[u8])]) {
        self.generation += 1;
        let name = format!(
            "..2026_11_22_00_00_{:02}.{:09}",
            self.generation % 60,
            self.generation
        );
        let ts = self.dir.join(&name);
        std::fs::create_dir(&ts).expect("timestamp dir");
        for (file, content) in files {
            std::fs::write(ts.join(file), content).expect("write secret");
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(&name, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        if let Some(old) = self.current.replace(ts) {
            std::fs::remove_dir_all(old).expect("remove old timestamp dir");
        }
    }
}
