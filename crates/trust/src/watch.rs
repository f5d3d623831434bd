//! Following mounted files (a file, or a Kubernetes Secret/ConfigMap volume) as they rotate.
//!
//! The same rules as `pullgate-credentials`' `SecretSource`, which is typed to one
//! dockerconfigjson file: kubelet swaps `..data` to a new timestamped directory, so each
//! check resolves every symlink and compares (resolved path, mtime, length) of every file
//! with what was last read. Here a path may hold several files (every key in a Secret), so
//! the stamp is the sorted list of the files' stamps.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::LoadError;

/// Most files one configured path may hold.
pub(crate) const MAX_FILES: usize = 64;
/// Largest file read: a PEM key is under 1 KiB, a CA bundle rarely over 300 KiB.
pub(crate) const MAX_FILE_SIZE: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    resolved: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
}

/// The files `path` stands for: itself if it is a file; in a directory, every visible
/// regular file (symlinks followed) whose name ends in one of `extensions`, or, if none
/// does, the only file there (a Secret's single key under any name).
pub(crate) fn files_at(path: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>, LoadError> {
    let meta = fs::metadata(path).map_err(|e| LoadError::io(path, e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut all = Vec::new();
    for entry in fs::read_dir(path).map_err(|e| LoadError::io(path, e))? {
        let entry = entry.map_err(|e| LoadError::io(path, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // `..data`, `..2026_…`: kubelet's own; dot files are nobody's keys.
        if name.starts_with('.') {
            continue;
        }
        let file = entry.path();
        match fs::metadata(&file) {
            Ok(m) if m.is_file() => all.push((name.to_owned(), file)),
            Ok(_) => {}
            // A dangling link: kubelet has swapped `..data` and not yet removed the link of a
            // key that left the secret. That key is gone; the others are not.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LoadError::io(&file, e)),
        }
        if all.len() > MAX_FILES {
            return Err(LoadError::TooManyFiles {
                path: path.to_path_buf(),
                limit: MAX_FILES,
            });
        }
    }
    all.sort();
    let matching: Vec<PathBuf> = all
        .iter()
        .filter(|(name, _)| extensions.iter().any(|ext| name.ends_with(ext)))
        .map(|(_, file)| file.clone())
        .collect();
    match (matching.is_empty(), all.len()) {
        (false, _) => Ok(matching),
        (true, 1) => Ok(all.into_iter().map(|(_, file)| file).collect()),
        (true, _) => Err(LoadError::NoFiles {
            path: path.to_path_buf(),
            extensions: extensions.join(", "),
        }),
    }
}

/// Where `path` currently leads, without reading the files.
pub(crate) fn probe(path: &Path, extensions: &[&str]) -> Result<Vec<Stamp>, LoadError> {
    files_at(path, extensions)?
        .iter()
        .map(|file| {
            let resolved = fs::canonicalize(file).map_err(|e| LoadError::io(file, e))?;
            let meta = fs::metadata(&resolved).map_err(|e| LoadError::io(&resolved, e))?;
            Ok(Stamp {
                resolved,
                modified: meta.modified().ok(),
                len: meta.len(),
            })
        })
        .collect()
}

/// Every file at `path` with its bytes, and the stamps of exactly what was read (each
/// resolved path is opened directly, so a rotation midway cannot pair one version's stamp
/// with another's bytes).
pub(crate) type Read = (Vec<(PathBuf, Vec<u8>)>, Vec<Stamp>);

pub(crate) fn read_all(path: &Path, extensions: &[&str]) -> Result<Read, LoadError> {
    let mut files = Vec::new();
    let mut stamps = Vec::new();
    for file in files_at(path, extensions)? {
        let resolved = fs::canonicalize(&file).map_err(|e| LoadError::io(&file, e))?;
        let handle = fs::File::open(&resolved).map_err(|e| LoadError::io(&resolved, e))?;
        let meta = handle.metadata().map_err(|e| LoadError::io(&resolved, e))?;
        if meta.len() > MAX_FILE_SIZE {
            return Err(LoadError::TooLarge {
                path: file,
                limit: MAX_FILE_SIZE,
            });
        }
        let mut bytes = Vec::new();
        handle
            .take(MAX_FILE_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| LoadError::io(&resolved, e))?;
        if bytes.len() as u64 > MAX_FILE_SIZE {
            return Err(LoadError::TooLarge {
                path: file,
                limit: MAX_FILE_SIZE,
            });
        }
        stamps.push(Stamp {
            resolved,
            modified: meta.modified().ok(),
            len: meta.len(),
        });
        files.push((file, bytes));
    }
    Ok((files, stamps))
}

/// The error and its causes on one line, for logs that show only the message.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_files_a_path_stands_for() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let exts = &[".pub", ".pem"];
        fs::write(d.join("only-key"), "x").unwrap();
        assert_eq!(files_at(d, exts).unwrap(), vec![d.join("only-key")]);
        fs::write(d.join("b.pub"), "x").unwrap();
        fs::write(d.join("a.pem"), "x").unwrap();
        fs::create_dir(d.join("..2026_01_01")).unwrap();
        fs::write(d.join(".hidden.pub"), "x").unwrap();
        assert_eq!(
            files_at(d, exts).unwrap(),
            vec![d.join("a.pem"), d.join("b.pub")]
        );
        assert_eq!(
            files_at(&d.join("b.pub"), exts).unwrap(),
            vec![d.join("b.pub")]
        );
        fs::write(d.join("other"), "x").unwrap();
        fs::remove_file(d.join("a.pem")).unwrap();
        fs::remove_file(d.join("b.pub")).unwrap();
        assert!(matches!(files_at(d, exts), Err(LoadError::NoFiles { .. })));
        std::os::unix::fs::symlink("..data/gone.pub", d.join("gone.pub")).unwrap();
        assert!(matches!(files_at(d, exts), Err(LoadError::NoFiles { .. })));
        fs::write(d.join("c.pub"), "x").unwrap();
        assert_eq!(files_at(d, exts).unwrap(), vec![d.join("c.pub")]);
        assert!(matches!(
            files_at(&d.join("missing"), exts),
            Err(LoadError::Io { .. })
        ));
    }

    #[test]
    fn refuses_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.pem");
        fs::write(&file, vec![b'a'; MAX_FILE_SIZE as usize + 1]).unwrap();
        assert!(matches!(
            read_all(&file, &[".pem"]),
            Err(LoadError::TooLarge { .. })
        ));
    }
}
