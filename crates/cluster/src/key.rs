//! The secret replicas share to authenticate to each other. The configuration names only
//! its file; the bytes are read here, kept out of every `Debug`, log line and error.

use std::fmt;
use std::path::Path;

use crate::ClusterError;

/// At least 256 bits: the key will sign replica-to-replica requests (HMAC-SHA-256).
pub const MIN_KEY_LEN: usize = 32;

pub struct SharedKey(Box<[u8]>);

impl SharedKey {
    /// The file's bytes, less a final newline (`echo key > file` and kubectl's `--from-file`
    /// differ on it, and replicas must agree on the key).
    pub fn load(path: &Path) -> Result<Self, ClusterError> {
        let bytes = std::fs::read(path).map_err(|source| ClusterError::KeyRead {
            path: path.to_owned(),
            source,
        })?;
        let key = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(&bytes);
        if key.len() < MIN_KEY_LEN {
            return Err(ClusterError::KeyTooShort {
                path: path.to_owned(),
                min: MIN_KEY_LEN,
            });
        }
        Ok(SharedKey(key.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_without_the_final_newline_and_never_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let secret = "s3cret-".repeat(6);
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        let k = SharedKey::load(&path).unwrap();
        assert_eq!(k.as_bytes(), secret.as_bytes());
        assert!(!format!("{k:?}").contains("s3cret"));

        std::fs::write(&path, "s3cret-short\n").unwrap();
        let e = SharedKey::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("shorter than 32") && !e.contains("s3cret"),
            "{e}"
        );
        let e = SharedKey::load(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none"), "{e}");
    }
}
