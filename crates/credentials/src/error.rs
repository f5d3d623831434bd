use std::io;
use std::path::{Path, PathBuf};

use crate::MAX_CONFIG_SIZE;

/// Why credentials could not be read. No variant carries, or prints, a secret value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file or directory could not be read.
    #[error("cannot read credentials at {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The input is larger than [`MAX_CONFIG_SIZE`]; `path` is `None` when parsing bytes.
    #[error("credentials{} are larger than {MAX_CONFIG_SIZE} bytes", at(.path.as_deref()))]
    TooLarge { path: Option<PathBuf> },
    /// The input is not JSON. Only syntax errors end up here (line and column, no content),
    /// because the document is read as an untyped value first.
    #[error("credentials are not valid JSON")]
    Json(#[source] serde_json::Error),
    /// The JSON is not shaped like a docker config at all.
    #[error("credentials are not a docker config: {0}")]
    Malformed(&'static str),
    /// One registry's entry is unusable. `registry` is the key as written in the file.
    #[error("credentials entry for registry {registry:?}: {reason}")]
    BadEntry {
        registry: String,
        reason: &'static str,
    },
    /// Nothing at the path, or a directory holding neither `.dockerconfigjson` nor `.dockercfg`.
    #[error("no credentials found at {}", .0.display())]
    NotFound(PathBuf),
}

fn at(path: Option<&Path>) -> String {
    match path {
        Some(path) => format!(" at {}", path.display()),
        None => String::new(),
    }
}

impl CredentialsError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            Self::NotFound(path.to_path_buf())
        } else {
            Self::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}
