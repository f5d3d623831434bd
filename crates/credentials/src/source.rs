use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{config_file, read_bounded};
use crate::{CredentialsError, DockerConfig};

/// How often [`SecretSource::current`] looks at the file by default. Kubelet syncs secret
/// volumes every minute or so; a second is plenty and keeps `stat` off the request path.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Credentials read from a file or mounted secret directory, reloaded when it changes.
///
/// Kubelet rotates a secret volume by atomically swapping the `..data` symlink to a new
/// timestamped directory, so the file's path never changes while its target does. Each check
/// therefore resolves every symlink and compares (resolved path, mtime, length) with what was
/// last read. A rotation that cannot be read, or is not a docker config at all, keeps the
/// last good config: a bad secret should not lock everyone out of a mirror that was working.
/// A rotation with some unusable entries is applied without them, removals included: keeping
/// the old set would keep every credential the rotation meant to revoke. Each skipped entry
/// is logged (key and reason, never its value) and counted.
///
/// Cloning is cheap and clones share the loaded config and the failure count.
#[derive(Clone)]
pub struct SecretSource {
    inner: Arc<Inner>,
    check_interval: Duration,
}

struct Inner {
    path: PathBuf,
    config: RwLock<Arc<DockerConfig>>,
    watch: Mutex<Watch>,
    reload_failures: AtomicU64,
    skipped_entries: AtomicU64,
}

struct Watch {
    last_check: Instant,
    /// What the last attempt looked at, good or bad; `None` when the file could not even be
    /// found. Recording bad versions too means a broken rotation is reported once, not on
    /// every check until it is fixed.
    last_seen: Option<Stamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    resolved: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
}

impl Stamp {
    fn new(resolved: PathBuf, meta: &fs::Metadata) -> Self {
        Stamp {
            resolved,
            modified: meta.modified().ok(),
            len: meta.len(),
        }
    }
}

impl SecretSource {
    /// Loads the credentials at `path` (a file or a mounted secret directory). Fails when the
    /// first load fails: starting with no credentials would fail closed anyway, but later and
    /// less clearly.
    pub fn open(path: &Path) -> Result<SecretSource, CredentialsError> {
        let (config, stamp) = read_stamped(path).map_err(|(_, error)| error)?;
        let source = SecretSource {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                config: RwLock::new(Arc::new(DockerConfig::default())),
                watch: Mutex::new(Watch {
                    last_check: Instant::now(),
                    last_seen: Some(stamp),
                }),
                reload_failures: AtomicU64::new(0),
                skipped_entries: AtomicU64::new(0),
            }),
            check_interval: DEFAULT_CHECK_INTERVAL,
        };
        source.report_skipped(&config);
        source.install(config);
        Ok(source)
    }

    /// Sets how often [`current`](Self::current) may look at the file
    /// (default [`DEFAULT_CHECK_INTERVAL`]); `Duration::ZERO` checks on every call.
    pub fn with_check_interval(mut self, interval: Duration) -> SecretSource {
        self.check_interval = interval;
        self
    }

    /// The current credentials, reloaded first if the interval has passed and the file has
    /// changed.
    pub fn current(&self) -> Arc<DockerConfig> {
        self.check();
        let config = match self.inner.config.read() {
            Ok(config) => config,
            // Writers only swap an Arc, so a poisoned lock still holds a whole config.
            Err(poisoned) => poisoned.into_inner(),
        };
        Arc::clone(&config)
    }

    /// How many reloads have failed since [`open`](Self::open). Each bad version of the file
    /// counts once.
    pub fn reload_failures(&self) -> u64 {
        self.inner.reload_failures.load(Ordering::Relaxed)
    }

    /// Entries left out of the versions loaded since [`open`](Self::open) (that one
    /// included) because they were unusable; each version's counted once.
    pub fn skipped_entries(&self) -> u64 {
        self.inner.skipped_entries.load(Ordering::Relaxed)
    }

    /// The path this source was opened with.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn check(&self) {
        let mut watch = match self.inner.watch.try_lock() {
            Ok(watch) => watch,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // Someone else is checking right now; serve what is loaded rather than queue
            // requests behind their I/O.
            Err(TryLockError::WouldBlock) => return,
        };
        if watch.last_check.elapsed() < self.check_interval {
            return;
        }
        watch.last_check = Instant::now();

        let probed = match probe(&self.inner.path) {
            Ok(stamp) => stamp,
            Err(error) => {
                // Reported once when it goes missing, not every interval while it stays so.
                if watch.last_seen.take().is_some() {
                    self.record_failure(&error);
                } else {
                    tracing::debug!(
                        path = %self.inner.path.display(),
                        error = %chain(&error),
                        "credentials still unreadable"
                    );
                }
                return;
            }
        };
        if watch.last_seen.as_ref() == Some(&probed) {
            return;
        }

        match read_stamped(&self.inner.path) {
            Ok((config, stamp)) => {
                self.report_skipped(&config);
                tracing::info!(
                    path = %self.inner.path.display(),
                    registries = config.len(),
                    skipped = config.skipped().len(),
                    "reloaded credentials"
                );
                self.install(config);
                watch.last_seen = Some(stamp);
            }
            Err((stamp, error)) => {
                self.record_failure(&error);
                watch.last_seen = Some(stamp.unwrap_or(probed));
            }
        }
    }

    fn install(&self, config: DockerConfig) {
        let config = Arc::new(config);
        match self.inner.config.write() {
            Ok(mut current) => *current = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }

    fn report_skipped(&self, config: &DockerConfig) {
        let skipped = config.skipped();
        self.inner
            .skipped_entries
            .fetch_add(skipped.len() as u64, Ordering::Relaxed);
        for entry in skipped {
            // An error: somebody's login in this secret does not work. The key and the
            // reason only; the value may be a password.
            tracing::error!(
                path = %self.inner.path.display(),
                registry = ?entry.registry,
                reason = entry.reason,
                "skipping an unusable credentials entry; the rest of the secret applies"
            );
        }
    }

    fn record_failure(&self, error: &CredentialsError) {
        self.inner.reload_failures.fetch_add(1, Ordering::Relaxed);
        // An error, not a warning: whoever rotated the secret believes it took effect.
        tracing::error!(
            path = %self.inner.path.display(),
            error = %chain(error),
            "cannot reload credentials; keeping the last good set"
        );
    }
}

/// Where the credentials at `path` currently lead, without reading them.
fn probe(path: &Path) -> Result<Stamp, CredentialsError> {
    let file = config_file(path)?;
    let resolved = fs::canonicalize(&file).map_err(|e| CredentialsError::io(&file, e))?;
    let meta = fs::metadata(&resolved).map_err(|e| CredentialsError::io(&resolved, e))?;
    Ok(Stamp::new(resolved, &meta))
}

/// Reads and parses, returning the stamp of exactly what was read: the resolved path is
/// opened directly, so a rotation midway cannot pair one version's stamp with another's bytes.
/// On failure, the stamp of what was read if it got that far.
fn read_stamped(path: &Path) -> Result<(DockerConfig, Stamp), (Option<Stamp>, CredentialsError)> {
    let file = config_file(path).map_err(|e| (None, e))?;
    let resolved = fs::canonicalize(&file).map_err(|e| (None, CredentialsError::io(&file, e)))?;
    let (bytes, meta) = read_bounded(&resolved).map_err(|e| (None, e))?;
    let stamp = Stamp::new(resolved, &meta);
    match DockerConfig::parse(&bytes) {
        Ok(config) => Ok((config, stamp)),
        Err(error) => Err((Some(stamp), error)),
    }
}

/// The error and its causes on one line, for logs that show only the message.
fn chain(error: &dyn std::error::Error) -> String {
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
    use crate::Credential;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;

    fn config_json(username: &str) -> String {
        let auth = STANDARD.encode(format!("{username}:pw"));
        format!(r#"{{"auths":{{"ghcr.io":{{"auth":"{auth}"}}}}}}"#)
    }

    fn user(source: &SecretSource) -> Option<String> {
        source
            .current()
            .for_host("ghcr.io")
            .map(|c: &Credential| c.username.clone())
    }

    /// Kubelet's secret volume layout, and its atomic rotation.
    #[cfg(unix)]
    mod kubelet {
        use super::*;
        use std::os::unix::fs::symlink;

        pub struct Volume {
            pub dir: tempfile::TempDir,
            generation: u32,
        }

        impl Volume {
            /// `<dir>/..2026_01_01_00_00_00.000/.dockerconfigjson`, `<dir>/..data` pointing at
            /// it, and `<dir>/.dockerconfigjson -> ..data/.dockerconfigjson`.
            pub fn new(contents: &str) -> Volume {
                let dir = tempfile::tempdir().unwrap();
                let mut volume = Volume { dir, generation: 0 };
                let first = volume.write_generation(contents);
                symlink(&first, volume.dir.path().join("..data")).unwrap();
                symlink(
                    "..data/.dockerconfigjson",
                    volume.dir.path().join(".dockerconfigjson"),
                )
                .unwrap();
                volume
            }

            fn write_generation(&mut self, contents: &str) -> String {
                let name = format!("..2026_01_01_00_00_{:02}.000", self.generation);
                self.generation += 1;
                let generation = self.dir.path().join(&name);
                fs::create_dir(&generation).unwrap();
                fs::write(generation.join(".dockerconfigjson"), contents).unwrap();
                name
            }

            /// A new timestamped directory, then a temporary symlink renamed over `..data`.
            pub fn rotate(&mut self, contents: &str) {
                let old = fs::read_link(self.dir.path().join("..data")).unwrap();
                let name = self.write_generation(contents);
                let tmp = self.dir.path().join("..data_tmp");
                symlink(&name, &tmp).unwrap();
                fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
                fs::remove_dir_all(self.dir.path().join(old)).unwrap();
            }

            pub fn path(&self) -> &Path {
                self.dir.path()
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn loads_a_kubelet_volume_and_follows_rotation() {
        let mut volume = kubelet::Volume::new(&config_json("first"));
        let source = SecretSource::open(volume.path())
            .unwrap()
            .with_check_interval(Duration::ZERO);
        assert_eq!(source.path(), volume.path());
        assert_eq!(user(&source).as_deref(), Some("first"));

        // Same length and maybe the same mtime: only the resolved path tells them apart.
        volume.rotate(&config_json("secnd"));
        assert_eq!(user(&source).as_deref(), Some("secnd"));

        volume.rotate(&config_json("third"));
        let clone = source.clone();
        assert_eq!(user(&clone).as_deref(), Some("third"));
        assert_eq!(user(&source).as_deref(), Some("third"));
        assert_eq!(source.reload_failures(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn a_bad_rotation_keeps_the_last_good_set() {
        let mut volume = kubelet::Volume::new(&config_json("good"));
        let source = SecretSource::open(volume.path())
            .unwrap()
            .with_check_interval(Duration::ZERO);
        assert_eq!(user(&source).as_deref(), Some("good"));

        volume.rotate("{ not json");
        assert_eq!(user(&source).as_deref(), Some("good"));
        assert_eq!(source.reload_failures(), 1);
        // The same bad version is reported once, not on every check.
        assert_eq!(user(&source).as_deref(), Some("good"));
        assert_eq!(source.reload_failures(), 1);

        // JSON, but not a docker config.
        volume.rotate(r#"{"auths":["ghcr.io"]}"#);
        assert_eq!(user(&source).as_deref(), Some("good"));
        assert_eq!(source.reload_failures(), 2);

        volume.rotate(&config_json("fixed"));
        assert_eq!(user(&source).as_deref(), Some("fixed"));
        assert_eq!(source.reload_failures(), 2);
        assert_eq!(source.skipped_entries(), 0);
    }

    /// One rotation revokes bob and adds carol with an empty password. Rejecting the whole
    /// rotation over carol's entry would keep bob's revoked credential working.
    #[cfg(unix)]
    #[test]
    fn a_rotation_with_a_bad_entry_applies_the_rest_and_its_removals() {
        let users = |source: &SecretSource| -> Vec<String> {
            source
                .current()
                .entries()
                .map(|(_, c)| c.username.clone())
                .collect()
        };
        let mut volume = kubelet::Volume::new(
            r#"{"auths":{"ghcr.io":{"username":"alice","password":"a-pw"},
                "quay.io":{"username":"bob","password":"b-pw"}}}"#,
        );
        let source = SecretSource::open(volume.path())
            .unwrap()
            .with_check_interval(Duration::ZERO);
        assert_eq!(users(&source), ["alice", "bob"]);

        volume.rotate(
            r#"{"auths":{"ghcr.io":{"username":"alice","password":"a-pw"},
                "registry.example.com":{"username":"carol","password":""}}}"#,
        );
        assert_eq!(users(&source), ["alice"], "bob's revocation was lost");
        assert_eq!(source.reload_failures(), 0);
        assert_eq!(source.skipped_entries(), 1);
        let current = source.current();
        assert_eq!(current.skipped()[0].registry, "registry.example.com");
        // Counted once per version, not per look.
        assert_eq!(users(&source), ["alice"]);
        assert_eq!(source.skipped_entries(), 1);
    }

    #[test]
    fn skipped_entries_at_open_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(
            &path,
            r#"{"auths":{"a.io":{"auth":"!!"},"b.io":{"username":"u","password":"p"}}}"#,
        )
        .unwrap();
        let source = SecretSource::open(&path).unwrap();
        assert_eq!(source.current().len(), 1);
        assert_eq!(source.skipped_entries(), 1);
    }

    #[test]
    fn a_plain_file_rewritten_in_place_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, config_json("one")).unwrap();
        let source = SecretSource::open(&path)
            .unwrap()
            .with_check_interval(Duration::ZERO);
        assert_eq!(user(&source).as_deref(), Some("one"));

        // A different length, so the change shows even where mtime is coarse.
        fs::write(&path, config_json("two-two")).unwrap();
        assert_eq!(user(&source).as_deref(), Some("two-two"));

        // Gone: the last good set stays, and the disappearance counts once.
        fs::remove_file(&path).unwrap();
        assert_eq!(user(&source).as_deref(), Some("two-two"));
        assert_eq!(user(&source).as_deref(), Some("two-two"));
        assert_eq!(source.reload_failures(), 1);

        fs::write(&path, config_json("three")).unwrap();
        assert_eq!(user(&source).as_deref(), Some("three"));
    }

    #[test]
    fn checks_no_more_often_than_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, config_json("one")).unwrap();
        let source = SecretSource::open(&path)
            .unwrap()
            .with_check_interval(Duration::from_secs(3600));
        fs::write(&path, config_json("two-two")).unwrap();
        assert_eq!(user(&source).as_deref(), Some("one"));
    }

    #[test]
    fn open_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert!(matches!(
            SecretSource::open(&path),
            Err(CredentialsError::NotFound(_))
        ));
        fs::write(&path, "{ not json").unwrap();
        assert!(matches!(
            SecretSource::open(&path),
            Err(CredentialsError::Json(_))
        ));
        assert!(matches!(
            SecretSource::open(dir.path()),
            Err(CredentialsError::NotFound(_))
        ));
    }

    #[test]
    fn error_chain_is_one_line() {
        let error = CredentialsError::io(
            Path::new("/x"),
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied"),
        );
        assert_eq!(chain(&error), "cannot read credentials at /x: denied");
    }
}
