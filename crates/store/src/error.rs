use pullgate_oci::Digest;

/// Why the store could not do something. Paths appear here for the log; the mirror never
/// shows these messages to clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("content does not match {expected}: it hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("content size {actual} does not match the announced {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("blob of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: u64, limit: u64 },
    #[error("index: {0}")]
    Index(String),
    /// Another process (a running `pullgate serve`?) has the cache open.
    #[error("the cache at {} is in use by another process (is pullgate serve running on it?)", dir.display())]
    Locked { dir: std::path::PathBuf },
    #[error("cache limits: {0}")]
    InvalidLimits(String),
    /// The object store failed or refused a request (S3 backend). Never holds credentials.
    #[error("object store: {op}: {detail}")]
    Backend { op: &'static str, detail: String },
    /// A backend's configuration cannot work (checked before anything is sent).
    #[error("storage configuration: {0}")]
    Config(String),
    /// The ingest a reader was following failed or was aborted.
    #[error("ingest failed: {0}")]
    IngestFailed(String),
}

impl StoreError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
        move |source| StoreError::Io { op, source }
    }

    /// Whether the disk under the cache refused us: full, over quota, read-only, not
    /// permitted, failing. The bytes were fine; pulls can still be served straight from
    /// the upstream, just not cached.
    pub fn is_disk_trouble(&self) -> bool {
        let StoreError::Io { source, .. } = self else {
            return false;
        };
        matches!(
            source.raw_os_error(),
            Some(
                libc::ENOSPC
                    | libc::EDQUOT
                    | libc::EROFS
                    | libc::EACCES
                    | libc::EPERM
                    | libc::EIO
                    | libc::EFBIG
            )
        ) || source.kind() == std::io::ErrorKind::WriteZero
    }

    /// Whether the disk had no room for the write (full, or over a quota): the one kind of
    /// disk trouble that evicting can cure.
    pub fn is_no_room(&self) -> bool {
        let StoreError::Io { source, .. } = self else {
            return false;
        };
        matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
    }

    /// Whether the content itself was wrong (the source's fault), rather than the store.
    pub fn is_bad_content(&self) -> bool {
        matches!(
            self,
            StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. }
        )
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            // Kept as I/O, so a full or read-only disk under the index is recognised as such.
            sled::Error::Io(source) => StoreError::Io {
                op: "index",
                source,
            },
            e => StoreError::Index(e.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for StoreError {
    fn from(e: tokio::task::JoinError) -> Self {
        StoreError::Io {
            op: "blocking task",
            source: std::io::Error::other(e.to_string()),
        }
    }
}
